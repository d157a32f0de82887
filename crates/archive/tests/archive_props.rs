//! Property tests (write → read round trips, determinism under shuffled insertion) and the
//! corruption sweep: every truncation point and a bit flip in every byte of valid archives must
//! give a clean error or the original content, never a panic and never altered content.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archive_support;
#[path = "../fuzz/fuzz_targets/exercise.rs"]
mod exercise;

use kpromote_archive::{
    ArchiveReader, ArchiveWriter, Codec, NewObject, ReaderOptions, WriterOptions, verify_stream,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// A small object of a few kinds, namespaced or not.
fn object(kind: u8, ns: Option<String>, name: String, filler: usize) -> NewObject {
    let (resource, group, api_version, kind_name) = match kind % 4 {
        0 => ("configmaps", "", "v1", "ConfigMap"),
        1 => ("deployments", "apps", "apps/v1", "Deployment"),
        2 => ("widgets", "example.com", "example.com/v1", "Widget"),
        _ => ("secrets", "", "v1", "Secret"),
    };
    let (resource, group, api_version, kind_name, ns) = if ns.is_none() {
        (
            "clusterroles",
            "rbac.authorization.k8s.io",
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            None,
        )
    } else {
        (resource, group, api_version, kind_name, ns)
    };
    let mut metadata = serde_json::json!({"name": name, "uid": format!("u-{name}")});
    if let Some(ns) = &ns {
        metadata["namespace"] = serde_json::json!(ns);
    }
    let value = serde_json::json!({
        "apiVersion": api_version,
        "kind": kind_name,
        "metadata": metadata,
        "data": {"k": "v".repeat(filler)},
    });
    archive_support::namespaced(resource, group, &value)
}

fn objects_strategy() -> impl Strategy<Value = Vec<NewObject>> {
    let name = "[a-z0-9][a-z0-9.:-]{0,40}[a-z0-9]";
    let ns = prop_oneof![Just(None), "[a-z][a-z0-9-]{0,12}[a-z0-9]".prop_map(Some)];
    proptest::collection::vec((any::<u8>(), ns, name, 0usize..3000), 0..60).prop_map(|items| {
        // Unique paths: later duplicates are dropped.
        let mut by_path = BTreeMap::new();
        for (kind, ns, name, filler) in items {
            let o = object(kind, ns, name, filler);
            let path = o.entry_path().unwrap();
            by_path.entry(path).or_insert(o);
        }
        by_path.into_values().collect()
    })
}

fn write(path: &Path, objects: &[NewObject], options: WriterOptions) {
    let mut writer = ArchiveWriter::create(path, archive_support::facts(), options).unwrap();
    for o in objects {
        writer.add(o.clone()).unwrap();
    }
    writer.finish().unwrap();
}

/// (path, json) of everything the reader hands out.
fn read_all(path: &Path) -> Vec<(String, Vec<u8>)> {
    let reader = ArchiveReader::open(path).unwrap();
    reader
        .objects()
        .unwrap()
        .map(|o| o.unwrap())
        .map(|o| (o.record.path, o.json))
        .collect()
}

fn expected(objects: &[NewObject]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = objects
        .iter()
        .map(|o| (o.entry_path().unwrap(), o.json.clone()))
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn write_then_read_gives_back_every_object(
        objects in objects_strategy(),
        gzip in any::<bool>(),
        sort_memory in 1usize..100_000,
        frame_size in 512usize..20_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let options = WriterOptions::default()
            .codec(if gzip { Codec::Gzip } else { Codec::Zstd })
            .sort_memory(sort_memory)
            .frame_size(frame_size);
        write(&path, &objects, options);
        prop_assert_eq!(read_all(&path), expected(&objects));
        let reader = ArchiveReader::open(&path).unwrap();
        prop_assert_eq!(reader.summary().objects, objects.len() as u64);
        let report = reader.verify();
        prop_assert!(report.is_fully_verified(), "{:?}", report);
        for o in objects.iter().take(3) {
            let p = o.entry_path().unwrap();
            prop_assert_eq!(&reader.get(&p).unwrap().json, &o.json);
        }
    }

    #[test]
    fn insertion_order_does_not_change_the_bytes(
        (objects, shuffled) in objects_strategy().prop_flat_map(|o| (Just(o.clone()), Just(o).prop_shuffle())),
        sort_memory in 1usize..50_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a"), &objects, WriterOptions::zstd());
        write(&dir.path().join("b"), &shuffled, WriterOptions::zstd().sort_memory(sort_memory).workers(2));
        prop_assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), std::fs::read(dir.path().join("b")).unwrap());
    }
}

/// Whatever the reader makes of `bytes`: `None` if it refused somewhere, otherwise everything it
/// handed out. Must never panic. `thorough` also runs both verifications.
fn read_mutant(path: &Path, bytes: &[u8], thorough: bool) -> Option<Vec<(String, Vec<u8>)>> {
    std::fs::write(path, bytes).unwrap();
    let options = ReaderOptions::default()
        .max_total_bytes(1 << 24)
        .decode_thread(thorough);
    if thorough {
        let _ = verify_stream(bytes, &options);
    }
    let reader = ArchiveReader::open_with(path, options).ok()?;
    if thorough {
        let _ = reader.verify();
    }
    let objects: Result<Vec<_>, _> = reader
        .objects()
        .ok()?
        .map(|o| o.map(|o| (o.record.path, o.json)))
        .collect();
    let objects = objects.ok()?;
    let records: Result<Vec<_>, _> = reader.records().ok()?.collect();
    assert_eq!(records.ok()?.len(), objects.len());
    Some(objects)
}

#[test]
fn corruption_never_panics_nor_alters_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = archive_support::nginx_objects();
    objects.push(archive_support::configmap("ns", "c", 300));
    for codec in [Codec::Zstd, Codec::Gzip] {
        let path = dir.path().join(format!("orig{}", codec.extension()));
        write(
            &path,
            &objects,
            WriterOptions::default().codec(codec).frame_size(1024),
        );
        let original = std::fs::read(&path).unwrap();
        let want = expected(&objects);
        assert_eq!(read_all(&path), want);
        let mutant = dir.path().join("mutant");
        let mut accepted_flips = 0;
        for i in 0..original.len() {
            let mut bytes = original.clone();
            bytes[i] ^= 1 << (i % 8);
            if let Some(got) = read_mutant(&mutant, &bytes, i % 7 == 0) {
                assert_eq!(got, want, "{codec}: flip at byte {i} altered content");
                accepted_flips += 1;
            }
        }
        for len in (0..original.len()).step_by(3) {
            if let Some(got) = read_mutant(&mutant, &original[..len], len % 7 == 0) {
                assert_eq!(got, want, "{codec}: truncation at {len} altered content");
            }
        }
        // Only bytes no digest covers (gzip header fields, locator flags, zstd frame-header
        // bits the decoder ignores) may be flipped without an error.
        assert!(
            accepted_flips < original.len() / 10,
            "{codec}: {accepted_flips} flips accepted"
        );
    }
}

/// The fuzz targets' bodies, run on every fixture and on a few thousand cheap mutations of them,
/// so they compile and hold on stable even without cargo-fuzz.
#[test]
fn fuzz_bodies_hold_on_fixtures_and_mutations() {
    let mut inputs = Vec::new();
    for dir in ["valid", "velero", "hostile"] {
        for entry in std::fs::read_dir(archive_support::fixtures_dir().join(dir)).unwrap() {
            inputs.push(std::fs::read(entry.unwrap().path()).unwrap());
        }
    }
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let originals = inputs.clone();
    for original in &originals {
        for _ in 0..40 {
            let mut bytes = original.clone();
            if bytes.is_empty() {
                continue;
            }
            match next() % 3 {
                0 => {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
                1 => bytes.truncate((next() as usize) % bytes.len()),
                _ => {
                    let i = (next() as usize) % bytes.len();
                    let j = (next() as usize) % bytes.len();
                    bytes.swap(i, j);
                }
            }
            inputs.push(bytes);
        }
    }
    for input in &inputs {
        exercise::archive_file(input);
        exercise::archive_stream(input);
    }
}
