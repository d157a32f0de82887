//! What the fuzz targets do with their input. Shared with `tests/archive_props.rs`, which runs it
//! on the fixtures and on mutated archives with the stable toolchain, so this code is compiled
//! and exercised by `cargo test` even where cargo-fuzz (nightly) is unavailable.
//!
//! The property: whatever the bytes, the reader returns errors rather than panicking, stays within
//! its caps, and never hands out an object whose bytes do not match its record.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use kpromote_archive::{ArchiveReader, ReaderOptions, sha256_hex, verify_stream};

/// Small caps so the fuzzer explores structure rather than waiting on big inputs.
fn options() -> ReaderOptions {
    ReaderOptions::default()
        .max_entry_bytes(1 << 20)
        .max_total_bytes(16 << 20)
}

/// Treats `data` as an archive file.
pub fn archive_file(data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.tar.zst");
    std::fs::write(&path, data).expect("write input");
    let Ok(reader) = ArchiveReader::open_with(&path, options().spill_dir(dir.path())) else {
        return;
    };
    let _ = reader.summary();
    let report = reader.verify();
    let mut handed_out = 0usize;
    if let Ok(objects) = reader.objects() {
        for object in objects {
            let Ok(object) = object else { break };
            assert_eq!(
                sha256_hex(&object.json),
                object.record.sha256,
                "object does not match its record"
            );
            assert_eq!(object.json.len() as u64, object.record.size);
            handed_out += 1;
        }
    }
    if let Ok(records) = reader.records() {
        let listed = records.take_while(Result::is_ok).count();
        if report.is_ok() {
            assert_eq!(
                listed, handed_out,
                "verified archive: records and objects disagree"
            );
        }
    }
    if let Ok(Some(Ok(record))) = reader.records().map(|mut r| r.next()) {
        let _ = reader.get(&record.path);
        let _ = reader
            .objects_of(&record.resource, &record.group)
            .map(|o| o.count());
    }
}

/// Treats `data` as a stream.
pub fn archive_stream(data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let _ = verify_stream(data, &options().spill_dir(dir.path()));
}
