//! The committed fixture archives: their generator, and one test per fixture asserting exactly
//! how the reader treats it.
//!
//! `KPROMOTE_REGEN_FIXTURES=1 cargo test --test archive_fixtures` rewrites `fixtures/`;
//! otherwise `fixtures_are_current` fails when the generator's output differs from the committed
//! bytes (a format change, or a zstd/flate2 upgrade that changes compressed bytes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archive_support;

use archive_support::{
    RawArchive, RawEntry, fixture, fixtures_dir, nginx_entries, nginx_objects, nginx_raw_frames,
};
use kpromote_archive::{
    ArchiveError, ArchiveKind, ArchiveReader, ArchiveWriter, Codec, Inclusion, PathError, WriterOptions,
};

const POD: &str = "resources/pods/namespaces/nginx-test/nginx-7c5ddbdf54-x8k2p.json";
const SERVICE: &str = "resources/services/namespaces/nginx-test/nginx-service.json";

/// Every fixture, by relative path.
fn generate() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    for (name, options) in [
        ("nginx.tar.zst", WriterOptions::zstd()),
        ("nginx.tar.gz", WriterOptions::gzip()),
    ] {
        let path = dir.path().join(name);
        let mut writer = ArchiveWriter::create(&path, archive_support::facts(), options).unwrap();
        for object in nginx_objects() {
            writer.add(object).unwrap();
        }
        writer.finish().unwrap();
        out.push((format!("valid/{name}"), std::fs::read(&path).unwrap()));
    }
    let nginx_zst = out[0].1.clone();
    out.push((
        "valid/no-locator.tar.zst".into(),
        nginx_zst[..nginx_zst.len() - kpromote_archive::Locator::encoded_len(Codec::Zstd)].to_vec(),
    ));
    let mut newer = RawArchive::new(Codec::Zstd, nginx_raw_frames());
    newer.minor = 7;
    newer.tweak_manifest = Some(|m| m["fieldFromTheFuture"] = serde_json::json!({"x": 1}));
    out.push(("valid/newer-minor.tar.zst".into(), newer.build()));
    for codec in [Codec::Zstd, Codec::Gzip] {
        let mut split = RawArchive::new(codec, nginx_raw_frames());
        split.split_frame_b = true;
        out.push((format!("valid/split-frame-b{}", codec.extension()), split.build()));
    }
    out.push((
        "velero/nginx-velero.tar.gz".into(),
        archive_support::velero_tarball(&nginx_entries()),
    ));

    let hostile = |name: &str, raw: &RawArchive| (format!("hostile/{name}"), raw.build());
    let with_entry = |entry: RawEntry| {
        let mut frames = nginx_raw_frames();
        frames[1].push(entry);
        frames[1].sort_by(|a, b| a.path.cmp(&b.path));
        RawArchive::new(Codec::Zstd, frames)
    };
    out.push(hostile(
        "path-traversal.tar.zst",
        &with_entry(RawEntry::file(
            "resources/pods/namespaces/nginx-test/../../../../etc/passwd",
            b"root:x:0:0",
        )),
    ));
    let mut absolute = nginx_raw_frames();
    absolute[1].push(RawEntry::file("/etc/passwd", b"root:x:0:0"));
    out.push(hostile(
        "absolute-path.tar.zst",
        &RawArchive::new(Codec::Zstd, absolute),
    ));
    let evil = "resources/pods/namespaces/nginx-test/evil.json";
    out.push(hostile(
        "symlink.tar.zst",
        &with_entry(RawEntry::special(
            evil,
            tar::EntryType::Symlink,
            Some("/etc/passwd"),
        )),
    ));
    out.push(hostile(
        "hardlink.tar.zst",
        &with_entry(RawEntry::special(
            evil,
            tar::EntryType::Link,
            Some("metadata/version"),
        )),
    ));
    out.push(hostile(
        "device.tar.zst",
        &with_entry(RawEntry::special(evil, tar::EntryType::Char, None)),
    ));
    out.push(hostile(
        "fifo.tar.zst",
        &with_entry(RawEntry::special(evil, tar::EntryType::Fifo, None)),
    ));
    out.push(hostile(
        "directory.tar.zst",
        &with_entry(RawEntry::special(
            "resources/pods/namespaces/nginx-test/",
            tar::EntryType::Directory,
            None,
        )),
    ));
    // The pod twice in the stream, once in the index.
    let mut dup = RawArchive::new(Codec::Zstd, {
        let mut frames = nginx_raw_frames();
        let pod = frames[1]
            .iter()
            .find(|e| e.path == POD.as_bytes())
            .unwrap()
            .clone();
        frames[1].push(pod);
        frames[1].sort_by(|a, b| a.path.cmp(&b.path));
        frames
    });
    dup.index.dedup();
    out.push(hostile("duplicate-path.tar.zst", &dup));
    // The service listed in the index, absent from the stream.
    let mut missing = RawArchive::new(Codec::Zstd, nginx_raw_frames());
    missing.frames[1].retain(|e| e.path != SERVICE.as_bytes());
    out.push(hostile("missing-entry.tar.zst", &missing));
    // An entry the index does not list.
    let mut extra = RawArchive::new(Codec::Zstd, nginx_raw_frames());
    extra.frames[1].insert(
        0,
        RawEntry::file(
            "resources/configmaps/namespaces/nginx-test/extra.json",
            br#"{"kind":"ConfigMap"}"#,
        ),
    );
    out.push(hostile("extra-entry.tar.zst", &extra));
    // The service's bytes changed (same length); its record keeps the original digest.
    let mut digest = RawArchive::new(Codec::Zstd, nginx_raw_frames());
    for entry in &mut digest.frames[1] {
        if entry.path == SERVICE.as_bytes() {
            let text = String::from_utf8(entry.data.clone())
                .unwrap()
                .replace("10.96.120.7", "10.96.120.8");
            entry.data = text.into_bytes();
        }
    }
    out.push(hostile("digest-mismatch.tar.zst", &digest));
    // One bit flipped in the middle of the objects frame of the valid archive.
    let mut flipped = nginx_zst.clone();
    let reader = ArchiveReader::open(dir.path().join("nginx.tar.zst")).unwrap();
    let frame = &reader.manifest().unwrap().frames[2];
    flipped[(frame.offset + frame.length / 2) as usize] ^= 0x10;
    out.push(("hostile/bit-flip.tar.zst".into(), flipped));
    out.push((
        "hostile/truncated.tar.zst".into(),
        nginx_zst[..nginx_zst.len() * 6 / 10].to_vec(),
    ));
    // 100 MiB of zeros in one entry: a few KiB compressed.
    let mut bomb = with_entry(RawEntry::file(
        "resources/configmaps/namespaces/nginx-test/bomb.json",
        &vec![0u8; 100 << 20],
    ));
    bomb.level = 1;
    out.push(hostile("decompression-bomb.tar.zst", &bomb));
    let mut major = RawArchive::new(Codec::Zstd, nginx_raw_frames());
    major.major = 2;
    out.push(hostile("unknown-major.tar.zst", &major));
    let mut manifest = RawArchive::new(Codec::Zstd, nginx_raw_frames());
    manifest.wrong_locator_digest = true;
    out.push(hostile("manifest-tampered.tar.zst", &manifest));
    let mut index = RawArchive::new(Codec::Zstd, nginx_raw_frames());
    // Change one hex digit of the last record's digest after the manifest recorded the index's.
    index.tamper_index = Some(|bytes| {
        let at = bytes.len() - 4;
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    });
    out.push(hostile("index-tampered.tar.zst", &index));
    let mut lying = RawArchive::new(Codec::Zstd, nginx_raw_frames());
    for record in &mut lying.index {
        if record["path"] == POD {
            record["name"] = serde_json::json!("someone-else");
        }
    }
    out.push(hostile("lying-record.tar.zst", &lying));
    let mut velero_evil = nginx_entries();
    velero_evil.push((
        "resources/pods/namespaces/nginx-test/../../../../etc/passwd".into(),
        b"x".to_vec(),
    ));
    out.push((
        "hostile/velero-traversal.tar.gz".into(),
        archive_support::velero_tarball(&velero_evil),
    ));
    let mut not_archive = RawEntry::file("hello.txt", b"hello").tar_bytes(true);
    not_archive.extend([0u8; 1024]);
    out.push(("hostile/not-an-archive.tar.gz".into(), {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&not_archive).unwrap();
        enc.finish().unwrap()
    }));
    out.push((
        "hostile/unknown-codec.bin".into(),
        b"PK\x03\x04 this is a zip file".to_vec(),
    ));
    out
}

#[test]
fn fixtures_are_current() {
    let regen = std::env::var_os("KPROMOTE_REGEN_FIXTURES").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, bytes) in generate() {
        let path = fixtures_dir().join(&name);
        if regen {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "fixtures differ from the generator: {stale:?}; run KPROMOTE_REGEN_FIXTURES=1 cargo test --test archive_fixtures"
    );
}

/// The first error met reading a fixture: opening, listing records, or reading objects.
fn first_error(name: &str) -> ArchiveError {
    let reader = match ArchiveReader::open(fixture(name)) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let report = reader.verify();
    assert!(!report.is_ok(), "{name}: verify found nothing");
    match reader.objects() {
        Err(e) => e,
        Ok(mut objects) => {
            let err = objects
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("{name}: objects() found nothing"));
            assert_eq!(
                err.code(),
                report.problems[0].code(),
                "{name}: verify and objects() disagree: {report:?}"
            );
            err
        }
    }
}

/// The problems `verify` lists for a fixture.
fn problems(name: &str) -> Vec<ArchiveError> {
    ArchiveReader::open(fixture(name)).unwrap().verify().problems
}

#[test]
fn valid_nginx_archives() {
    for name in ["valid/nginx.tar.zst", "valid/nginx.tar.gz"] {
        let reader = ArchiveReader::open(fixture(name)).unwrap();
        let report = reader.verify();
        assert!(report.is_fully_verified(), "{name}: {report:?}");
        let names: Vec<String> = reader
            .objects()
            .unwrap()
            .map(|o| o.unwrap().record.name)
            .collect();
        assert_eq!(
            names,
            [
                "nginx",
                "nginx-test",
                "nginx-7c5ddbdf54-x8k2p",
                "nginx-7c5ddbdf54",
                "nginx-service"
            ]
        );
        let deployment = reader
            .get("resources/deployments.apps/namespaces/nginx-test/nginx.json")
            .unwrap();
        let value = deployment.value().unwrap();
        assert_eq!(
            value["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.14-alpine"
        );
        assert_eq!(value["spec"]["replicas"], 1);
    }
}

#[test]
fn newer_minor_is_read_with_a_warning() {
    let reader = ArchiveReader::open(fixture("valid/newer-minor.tar.zst")).unwrap();
    assert!(
        reader.warnings().iter().any(|w| w.contains("1.7 is newer")),
        "{:?}",
        reader.warnings()
    );
    assert_eq!(reader.objects().unwrap().count(), 5);
    assert!(reader.verify().is_ok());
}

#[test]
fn frame_b_may_span_several_frames() {
    for name in ["valid/split-frame-b.tar.zst", "valid/split-frame-b.tar.gz"] {
        let reader = ArchiveReader::open(fixture(name)).unwrap();
        assert!(reader.verify().is_fully_verified(), "{name}");
        assert_eq!(reader.records().unwrap().count(), 5);
        // And when the locator is gone, scanning finds frame B across both frames.
        let bytes = std::fs::read(fixture(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut");
        let keep = bytes.len() - kpromote_archive::Locator::encoded_len(reader.codec());
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let scanned = ArchiveReader::open(&cut).unwrap();
        assert_eq!(scanned.objects().unwrap().count(), 5, "{name}");
        assert!(scanned.verify().is_ok(), "{name}");
    }
}

#[test]
fn missing_locator_is_readable_but_unanchored() {
    let reader = ArchiveReader::open(fixture("valid/no-locator.tar.zst")).unwrap();
    assert!(!reader.is_anchored());
    let report = reader.verify();
    assert!(report.is_ok() && !report.anchored);
    assert_eq!(reader.objects().unwrap().count(), 5);
}

#[test]
fn velero_tarball_is_read_unverified() {
    let reader = ArchiveReader::open(fixture("velero/nginx-velero.tar.gz")).unwrap();
    assert_eq!(reader.kind(), ArchiveKind::Velero);
    assert_eq!(reader.codec(), Codec::Gzip);
    assert!(reader.manifest().is_none());
    assert_eq!(reader.summary().objects, 5);
    let objects: Vec<_> = reader.objects().unwrap().map(|o| o.unwrap()).collect();
    let paths: Vec<&str> = objects.iter().map(|o| o.record.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted, "sorted even though the tarball is not");
    assert_eq!(objects[2].record.kind, "Pod");
    assert_eq!(objects[2].record.owner_references[0].name, "nginx-7c5ddbdf54");
    assert_eq!(objects[2].record.inclusion, Inclusion::Unrecorded);
    assert_eq!(reader.get(POD).unwrap().json, objects[2].json);
    let report = reader.verify();
    assert!(report.is_ok() && !report.is_fully_verified(), "{report:?}");
    assert!(report.warnings.iter().any(|w| w.contains("cannot be verified")));
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("1 API-group-version copies skipped"))
    );
}

#[test]
fn hostile_path_traversal() {
    let path = "resources/pods/namespaces/nginx-test/../../../../etc/passwd";
    assert!(matches!(
        first_error("hostile/path-traversal.tar.zst"),
        ArchiveError::UnsafePath { entry, reason: PathError::ParentComponent } if entry == path
    ));
    assert_eq!(problems("hostile/path-traversal.tar.zst").len(), 1);
}

#[test]
fn hostile_absolute_path() {
    assert!(matches!(
        first_error("hostile/absolute-path.tar.zst"),
        ArchiveError::UnsafePath { entry, reason: PathError::Absolute } if entry == "/etc/passwd"
    ));
}

#[test]
fn hostile_links_devices_fifos_directories() {
    for (name, kind) in [
        ("hostile/symlink.tar.zst", "symbolic link"),
        ("hostile/hardlink.tar.zst", "hard link"),
        ("hostile/device.tar.zst", "character device"),
        ("hostile/fifo.tar.zst", "FIFO"),
        ("hostile/directory.tar.zst", "directory"),
    ] {
        let err = first_error(name);
        assert!(
            matches!(&err, ArchiveError::UnsupportedEntryType { kind: k, .. } if *k == kind),
            "{name}: {err:?}"
        );
        assert_eq!(problems(name).len(), 1, "{name}");
    }
}

#[test]
fn hostile_duplicate_path() {
    assert!(
        matches!(first_error("hostile/duplicate-path.tar.zst"), ArchiveError::DuplicatePath { entry } if entry == POD)
    );
    assert_eq!(problems("hostile/duplicate-path.tar.zst").len(), 1);
}

#[test]
fn hostile_missing_entry() {
    assert!(
        matches!(first_error("hostile/missing-entry.tar.zst"), ArchiveError::MissingEntry { entry } if entry == SERVICE)
    );
}

#[test]
fn hostile_extra_entry() {
    assert!(matches!(
        first_error("hostile/extra-entry.tar.zst"),
        ArchiveError::UnexpectedEntry { entry } if entry == "resources/configmaps/namespaces/nginx-test/extra.json"
    ));
}

#[test]
fn hostile_digest_mismatch() {
    assert!(
        matches!(first_error("hostile/digest-mismatch.tar.zst"), ArchiveError::DigestMismatch { entry, .. } if entry == SERVICE)
    );
    assert_eq!(problems("hostile/digest-mismatch.tar.zst").len(), 1);
}

#[test]
fn hostile_bit_flip() {
    // The flipped bit lands in the Namespace's frame (its only entry); zstd's frame checksum
    // fails on the call that decodes the end of the frame, naming the entry being read.
    let err = first_error("hostile/bit-flip.tar.zst");
    assert!(
        matches!(&err, ArchiveError::Decompress { entry, error }
            if entry == "resources/namespaces/cluster/nginx-test.json" && error.to_string().contains("checksum")),
        "{err:?}"
    );
    // Decoding ahead on a thread: still refused.
    let reader = ArchiveReader::open_with(
        fixture("hostile/bit-flip.tar.zst"),
        kpromote_archive::ReaderOptions::default().decode_thread(true),
    )
    .unwrap();
    assert!(reader.objects().unwrap().any(|o| o.is_err()));
}

#[test]
fn hostile_truncated() {
    // No locator, so the file is scanned; the data runs out inside the ReplicaSet's frame.
    let err = first_error("hostile/truncated.tar.zst");
    assert!(
        matches!(&err, ArchiveError::Truncated { entry } if entry == "resources/replicasets.apps/namespaces/nginx-test/nginx-7c5ddbdf54.json"),
        "{err:?}"
    );
}

#[test]
fn hostile_decompression_bomb() {
    // 100 MiB from 5 KiB: the ratio cap refuses it when the archive is opened, from the sizes the
    // manifest declares, before anything is decoded.
    let err = first_error("hostile/decompression-bomb.tar.zst");
    assert!(
        matches!(&err, ArchiveError::RatioExceeded { ratio: 250, .. }),
        "{err:?}"
    );
    // A reader that trusts the ratio still stops at the per-entry cap.
    let trusting = kpromote_archive::ReaderOptions::default().max_ratio(u64::MAX, 0);
    let problems = ArchiveReader::open_with(fixture("hostile/decompression-bomb.tar.zst"), trusting)
        .unwrap()
        .verify()
        .problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        matches!(&problems[0], ArchiveError::EntryTooLarge { entry, size: 104_857_600, limit: 67_108_864 }
            if entry == "resources/configmaps/namespaces/nginx-test/bomb.json"),
        "{problems:?}"
    );
}

#[test]
fn hostile_unknown_major_version() {
    let err = ArchiveReader::open(fixture("hostile/unknown-major.tar.zst")).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::UnsupportedVersion {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn hostile_manifest_tampered() {
    let err = ArchiveReader::open(fixture("hostile/manifest-tampered.tar.zst")).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::DigestMismatch { entry, .. } if entry == "kpromote/manifest.json"),
        "{err:?}"
    );
}

#[test]
fn hostile_index_tampered() {
    let err = first_error("hostile/index-tampered.tar.zst");
    assert!(
        matches!(&err, ArchiveError::DigestMismatch { entry, .. } if entry == "kpromote/index.jsonl"),
        "{err:?}"
    );
    let reader = ArchiveReader::open(fixture("hostile/index-tampered.tar.zst")).unwrap();
    assert!(
        reader.records().is_err(),
        "records are not handed out from an unverified index"
    );
}

#[test]
fn hostile_lying_record() {
    let err = first_error("hostile/lying-record.tar.zst");
    assert!(
        matches!(&err, ArchiveError::InvalidRecord { entry, .. } if entry == POD),
        "{err:?}"
    );
}

#[test]
fn hostile_velero_traversal() {
    let err = first_error("hostile/velero-traversal.tar.gz");
    assert!(
        matches!(
            &err,
            ArchiveError::UnsafePath {
                reason: PathError::ParentComponent,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn hostile_not_an_archive() {
    let err = ArchiveReader::open(fixture("hostile/not-an-archive.tar.gz")).unwrap_err();
    assert!(matches!(err, ArchiveError::NotAnArchive { .. }), "{err:?}");
}

#[test]
fn hostile_unknown_codec() {
    let err = ArchiveReader::open(fixture("hostile/unknown-codec.bin")).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::UnknownCodec { magic, .. } if magic == "504b0304"),
        "{err:?}"
    );
}
