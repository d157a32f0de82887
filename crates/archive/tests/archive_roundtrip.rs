//! Write → read round trips, determinism, atomicity, and interoperability with the real `tar`,
//! `zstd` and `gzip` binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archive_support;

use archive_support::{configmap, facts, nginx_objects};
use kpromote_archive::{
    ArchiveError, ArchiveKind, ArchiveReader, ArchiveWriter, Codec, Inclusion, NewObject, ReaderOptions,
    WriterOptions, layout, verify_stream,
};
use kpromote_model::ObjectKey;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

fn write(dir: &Path, name: &str, objects: Vec<NewObject>, options: WriterOptions) -> PathBuf {
    let path = dir.join(name);
    let mut writer = ArchiveWriter::create(&path, facts(), options).expect("create");
    for object in objects {
        writer.add(object).expect("add");
    }
    let written = writer.finish().expect("finish");
    assert_eq!(written.path, path);
    path
}

/// The independent tools these tests read archives with must be there: a test that cannot
/// find them fails, naming them, rather than passing without having checked anything.
fn require_tools(names: &[&str]) {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| {
            !Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} not found on PATH: install them (Debian/Ubuntu: apt-get install {}) to run this test",
        missing.join(", "),
        missing.join(" ")
    );
}

#[test]
fn nginx_round_trip_both_codecs() {
    let dir = tempfile::tempdir().unwrap();
    for (codec, options) in [
        (Codec::Zstd, WriterOptions::zstd()),
        (Codec::Gzip, WriterOptions::gzip()),
    ] {
        let path = write(
            dir.path(),
            &format!("nginx{}", codec.extension()),
            nginx_objects(),
            options,
        );
        let reader = ArchiveReader::open(&path).expect("open");
        assert_eq!(reader.codec(), codec);
        assert_eq!(reader.kind(), ArchiveKind::Kpromote);
        assert!(reader.is_anchored());
        assert!(reader.warnings().is_empty());
        let manifest = reader.manifest().expect("manifest");
        assert_eq!(manifest.format_version, kpromote_archive::UNSEALED_FORMAT_VERSION);
        assert_eq!(manifest.facts, facts());
        assert_eq!(manifest.summary.objects, 5);
        assert_eq!(manifest.summary.by_namespace[""].objects, 1);
        assert_eq!(manifest.summary.by_namespace["nginx-test"].objects, 4);
        assert_eq!(manifest.summary.by_resource["deployments.apps"].objects, 1);

        let records: Vec<_> = reader
            .records()
            .expect("records")
            .map(|r| r.expect("record"))
            .collect();
        let paths: Vec<&str> = records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "resources/deployments.apps/namespaces/nginx-test/nginx.json",
                "resources/namespaces/cluster/nginx-test.json",
                "resources/pods/namespaces/nginx-test/nginx-7c5ddbdf54-x8k2p.json",
                "resources/replicasets.apps/namespaces/nginx-test/nginx-7c5ddbdf54.json",
                "resources/services/namespaces/nginx-test/nginx-service.json",
            ]
        );
        let pod = &records[2];
        assert_eq!(pod.kind, "Pod");
        assert_eq!(pod.owner_references[0].kind, "ReplicaSet");
        assert_eq!(pod.owner_references[0].controller, Some(true));
        assert_eq!(records[1].inclusion, Inclusion::Namespace);

        let originals = nginx_objects();
        let objects: Vec<_> = reader
            .objects()
            .expect("objects")
            .map(|o| o.expect("object"))
            .collect();
        assert_eq!(objects.len(), 5);
        for object in &objects {
            let original = originals
                .iter()
                .find(|o| o.name == object.record.name && o.resource == object.record.resource)
                .expect("original");
            assert_eq!(object.json, original.json);
            assert_eq!(object.value().unwrap()["kind"], object.record.kind.as_str());
            let again = reader.get(&object.record.path).expect("get");
            assert_eq!(again.json, object.json);
        }
        let deployments: Vec<_> = reader
            .objects_of("deployments", "apps")
            .expect("objects_of")
            .map(|o| o.expect("object").record.name)
            .collect();
        assert_eq!(deployments, ["nginx"]);
        assert!(
            reader
                .objects_of("statefulsets", "apps")
                .expect("objects_of")
                .next()
                .is_none()
        );
        assert!(matches!(
            reader.get("resources/pods/namespaces/nginx-test/absent.json"),
            Err(ArchiveError::NotFound { .. })
        ));
        assert!(matches!(
            reader.get("../etc/passwd"),
            Err(ArchiveError::InvalidPath { .. })
        ));

        let report = reader.verify();
        assert!(report.is_fully_verified(), "{report:?}");
        assert_eq!(report.entries_checked, 6);
    }
}

#[test]
fn same_objects_any_order_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects: Vec<NewObject> = (0..300)
        .map(|i| configmap(&format!("ns{}", i % 7), &format!("cm-{i}"), 200 + i))
        .collect();
    objects.extend(nginx_objects());
    let a = write(dir.path(), "a.tar.zst", objects.clone(), WriterOptions::zstd());
    objects.reverse();
    let b = write(
        dir.path(),
        "b.tar.zst",
        objects.clone(),
        WriterOptions::zstd().workers(3),
    );
    objects.rotate_left(101);
    // A tiny sort budget: every object spills its own run, and runs are merged in two passes.
    let c = write(
        dir.path(),
        "c.tar.zst",
        objects.clone(),
        WriterOptions::zstd().sort_memory(1),
    );
    let bytes_a = std::fs::read(a).unwrap();
    assert_eq!(bytes_a, std::fs::read(b).unwrap());
    assert_eq!(bytes_a, std::fs::read(c).unwrap());

    let g1 = write(dir.path(), "a.tar.gz", objects.clone(), WriterOptions::gzip());
    objects.reverse();
    let g2 = write(
        dir.path(),
        "b.tar.gz",
        objects,
        WriterOptions::gzip().workers(2).sort_memory(4096),
    );
    assert_eq!(std::fs::read(g1).unwrap(), std::fs::read(g2).unwrap());
}

#[test]
fn duplicates_and_bad_objects_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dup.tar.zst");
    let mut writer = ArchiveWriter::create(&path, facts(), WriterOptions::zstd()).unwrap();
    let objects = nginx_objects();
    writer.add(objects[0].clone()).unwrap();
    writer.add(objects[0].clone()).unwrap();
    match writer.finish() {
        Err(ArchiveError::DuplicatePath { entry }) => {
            assert_eq!(entry, "resources/namespaces/cluster/nginx-test.json");
        }
        other => panic!("expected DuplicatePath, got {other:?}"),
    }
    assert!(!path.exists(), "nothing under the final name after an error");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "temp file removed"
    );

    // Identity errors come from `add` itself; JSON errors come from the prepare thread, through
    // `add` or `finish`, naming the object. Either way nothing appears under the final name.
    let mut writer = ArchiveWriter::create(&path, facts(), WriterOptions::zstd()).unwrap();
    let mut bad_ns = objects[3].clone();
    bad_ns.namespace = Some("Not_A_Label".to_owned());
    assert!(matches!(
        writer.add(bad_ns),
        Err(ArchiveError::InvalidPath { .. })
    ));
    drop(writer);
    let pod = "resources/pods/namespaces/nginx-test/nginx-7c5ddbdf54-x8k2p.json";
    let mut lying = objects[3].clone();
    lying.uid = Some("another-uid".to_owned());
    let mut not_json = objects[3].clone();
    not_json.json = b"[1,2]".to_vec();
    for bad in [lying, not_json] {
        let mut writer = ArchiveWriter::create(&path, facts(), WriterOptions::zstd()).unwrap();
        let mut first_error = writer.add(bad).err();
        for good in nginx_objects().into_iter().take(3) {
            if first_error.is_none() {
                first_error = writer.add(good).err();
            }
        }
        let err = match first_error {
            Some(e) => e,
            None => writer.finish().expect_err("finish reports the bad object"),
        };
        assert!(
            matches!(&err, ArchiveError::InvalidObject { entry, .. } if entry == pod),
            "{err:?}"
        );
        assert!(!path.exists());
    }

    let existing = write(
        dir.path(),
        "exists.tar.zst",
        nginx_objects(),
        WriterOptions::zstd(),
    );
    assert!(matches!(
        ArchiveWriter::create(&existing, facts(), WriterOptions::zstd()),
        Err(ArchiveError::AlreadyExists { .. })
    ));
    assert!(matches!(
        ArchiveWriter::create(dir.path().join("x"), facts(), WriterOptions::zstd().level(22)),
        Err(ArchiveError::InvalidOption { option: "level", .. })
    ));
    let mut bad_facts = facts();
    bad_facts.created_at = "yesterday".to_owned();
    assert!(matches!(
        ArchiveWriter::create(dir.path().join("y"), bad_facts, WriterOptions::zstd()),
        Err(ArchiveError::InvalidOption {
            option: "created_at",
            ..
        })
    ));
}

#[cfg(unix)]
#[test]
fn archive_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.tar.zst", nginx_objects(), WriterOptions::zstd());
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn long_names_and_many_frames() {
    let dir = tempfile::tempdir().unwrap();
    let long = "n".repeat(253);
    let mut objects = vec![configmap("ns-a", &long, 10)];
    for i in 0..500 {
        objects.push(configmap("ns-b", &format!("cm-{i:04}"), 1000));
    }
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns-b"}, "data": {}});
    objects.push(
        NewObject::from_json(
            "secrets",
            "",
            Inclusion::Namespaced,
            serde_json::to_vec(&secret).unwrap(),
        )
        .unwrap(),
    );
    let path = write(
        dir.path(),
        "frames.tar.zst",
        objects,
        WriterOptions::zstd().frame_size(16 * 1024),
    );
    let reader = ArchiveReader::open_with(&path, ReaderOptions::default().decode_thread(true)).unwrap();
    let manifest = reader.manifest().unwrap();
    assert!(manifest.frames.len() > 20, "{} frames", manifest.frames.len());
    assert_eq!(reader.objects().unwrap().count(), 502);
    let long_path = layout::object_path(&ObjectKey::namespaced("", "configmaps", "ns-a", &long)).unwrap();
    assert_eq!(reader.get(&long_path).unwrap().record.name, long);
    let mid = layout::object_path(&ObjectKey::namespaced("", "configmaps", "ns-b", "cm-0321")).unwrap();
    assert_eq!(reader.get(&mid).unwrap().record.name, "cm-0321");
    let secrets: Vec<_> = reader
        .objects_of("secrets", "")
        .unwrap()
        .map(|o| o.unwrap().record.name)
        .collect();
    assert_eq!(secrets, ["s"]);
    assert_eq!(reader.objects_of("configmaps", "").unwrap().count(), 501);
    assert!(reader.verify().is_fully_verified());

    require_tools(&["zstd", "tar"]);
    let names = zstd_tar_listing(&path, "tf");
    assert!(names.lines().any(|l| l == long_path));
    assert_eq!(names.lines().count(), 1 + 502 + 2);
}

#[test]
fn real_tools_read_zstd_archive() {
    require_tools(&["zstd", "tar"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "nginx.tar.zst",
        nginx_objects(),
        WriterOptions::zstd(),
    );
    let test = Command::new("zstd").arg("-tq").arg(&path).output().unwrap();
    assert!(
        test.status.success(),
        "zstd -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let text = zstd_tar_listing(&path, "tvf");
    let names: Vec<&str> = text.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(names[0], "metadata/version");
    assert_eq!(
        names[1],
        "resources/deployments.apps/namespaces/nginx-test/nginx.json"
    );
    assert_eq!(&names[6..], ["kpromote/manifest.json", "kpromote/index.jsonl"]);
    assert!(text.lines().all(|l| l.starts_with("-rw-r--r-- 0/0")), "{text}");
    assert!(text.contains("2024-03-11"), "mtime is createdAt: {text}");

    // Extract with GNU tar and compare bytes: the files are exactly the archived JSON.
    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    let extract = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc {} | tar xf - -C {}",
            path.display(),
            out.display()
        ))
        .output()
        .unwrap();
    assert!(extract.status.success());
    let reader = ArchiveReader::open(&path).unwrap();
    for object in reader.objects().unwrap() {
        let object = object.unwrap();
        assert_eq!(std::fs::read(out.join(&object.record.path)).unwrap(), object.json);
    }
    assert_eq!(std::fs::read(out.join("metadata/version")).unwrap(), b"1.1.0\n");
    let manifest = std::fs::read(out.join("kpromote/manifest.json")).unwrap();
    assert_eq!(
        kpromote_archive::sha256_hex(&manifest),
        reader.manifest_sha256().unwrap()
    );
}

#[test]
fn real_tools_read_gzip_archive() {
    require_tools(&["gzip", "tar"]);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "nginx.tar.gz", nginx_objects(), WriterOptions::gzip());
    let test = Command::new("gzip").arg("-t").arg(&path).output().unwrap();
    assert!(
        test.status.success(),
        "gzip -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let listing = Command::new("tar").arg("tzf").arg(&path).output().unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let text = String::from_utf8(listing.stdout).unwrap();
    assert_eq!(text.lines().count(), 8);
    assert!(
        text.lines()
            .any(|l| l == "resources/services/namespaces/nginx-test/nginx-service.json")
    );
    assert_eq!(text.lines().last(), Some("kpromote/index.jsonl"));
}

#[test]
fn missing_locator_is_recovered_by_scanning() {
    let dir = tempfile::tempdir().unwrap();
    for codec in [Codec::Zstd, Codec::Gzip] {
        let path = write(
            dir.path(),
            &format!("full{}", codec.extension()),
            nginx_objects(),
            WriterOptions::default().codec(codec),
        );
        let bytes = std::fs::read(&path).unwrap();
        let cut = bytes.len() - kpromote_archive::Locator::encoded_len(codec);
        let short = dir.path().join(format!("short{}", codec.extension()));
        std::fs::write(&short, &bytes[..cut]).unwrap();
        let reader = ArchiveReader::open(&short).expect("opens by scanning");
        assert!(!reader.is_anchored());
        assert!(
            reader.warnings().iter().any(|w| w.contains("no locator")),
            "{:?}",
            reader.warnings()
        );
        assert_eq!(reader.objects().unwrap().count(), 5);
        let report = reader.verify();
        assert!(report.is_ok() && !report.is_fully_verified(), "{report:?}");
    }
}

#[test]
fn streams_verify_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = nginx_objects();
    objects.extend((0..50).map(|i| configmap("ns", &format!("c{i}"), 3000)));
    let path = write(
        dir.path(),
        "s.tar.zst",
        objects,
        WriterOptions::zstd().frame_size(8192),
    );
    let report = verify_stream(std::fs::File::open(&path).unwrap(), &ReaderOptions::default()).unwrap();
    assert!(report.is_fully_verified(), "{report:?}");
    assert_eq!(report.entries_checked, 56);
}

/// Returns 1..=7 bytes per read, to exercise every "read fills the buffer" assumption.
struct ShortReads<R> {
    inner: R,
    step: usize,
}

impl<R: Read> Read for ShortReads<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = self.step % 7 + 1;
        let n = buf.len().min(self.step);
        self.inner.read(&mut buf[..n])
    }
}

#[test]
fn short_reads_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    for options in [WriterOptions::zstd(), WriterOptions::gzip()] {
        let codec = options.compression.codec;
        let path = write(
            dir.path(),
            &format!("short-reads{}", codec.extension()),
            nginx_objects(),
            options,
        );
        let input = ShortReads {
            inner: std::fs::File::open(&path).unwrap(),
            step: 0,
        };
        let report = verify_stream(input, &ReaderOptions::default()).unwrap();
        assert!(report.is_fully_verified(), "{codec}: {report:?}");
    }
}

#[test]
fn small_caps_stop_big_archives() {
    let dir = tempfile::tempdir().unwrap();
    let objects: Vec<_> = (0..20).map(|i| configmap("ns", &format!("c{i}"), 5000)).collect();
    let path = write(dir.path(), "big.tar.zst", objects, WriterOptions::zstd());
    let reader = ArchiveReader::open_with(&path, ReaderOptions::default().max_entry_bytes(1000)).unwrap();
    let report = reader.verify();
    assert_eq!(report.problems.len(), 20);
    assert!(
        report
            .problems
            .iter()
            .all(|p| matches!(p, ArchiveError::EntryTooLarge { limit: 1000, .. }))
    );
    match ArchiveReader::open_with(&path, ReaderOptions::default().max_total_bytes(10_000)) {
        Err(ArchiveError::TotalSizeExceeded { limit: 10_000, .. }) => {}
        other => panic!("expected TotalSizeExceeded, got {other:?}"),
    }
}

/// Issue 10: a small zstd file could expand up to the 64 GiB total cap. 96 MiB of one repeated
/// character compress to a few KiB; with the default limits the reader refuses it, both from the
/// manifest's sizes (a file) and while decoding (a pipe, where no manifest is trusted first).
#[test]
fn a_small_archive_that_expands_far_beyond_the_ratio_is_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let objects: Vec<_> = (0..96)
        .map(|i| configmap("ns", &format!("c{i:02}"), 1 << 20))
        .collect();
    let path = write(dir.path(), "bomb.tar.zst", objects, WriterOptions::zstd());
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 256 << 10, "the test needs a small file, got {size} bytes");

    match ArchiveReader::open(&path) {
        Err(err @ ArchiveError::RatioExceeded { ratio, .. }) => {
            assert_eq!(ratio, kpromote_archive::DEFAULT_MAX_RATIO);
            assert!(err.to_string().contains("decompression bomb"), "{err}");
            assert_eq!(err.code(), "ratio_exceeded");
        }
        other => panic!("expected RatioExceeded, got {other:?}"),
    }
    let streamed = verify_stream(std::fs::File::open(&path).unwrap(), &ReaderOptions::default());
    let refused = match &streamed {
        Err(e) => matches!(e, ArchiveError::RatioExceeded { .. }),
        Ok(report) => report
            .problems
            .iter()
            .any(|p| matches!(p, ArchiveError::RatioExceeded { .. })),
    };
    assert!(refused, "the stream was not refused: {streamed:?}");

    // The same archive reads when the caller trusts it with a higher ratio.
    let trusting = ReaderOptions::default().max_ratio(1_000_000, 64 << 20);
    let reader = ArchiveReader::open_with(&path, trusting).unwrap();
    assert!(reader.verify().is_fully_verified());
}

#[test]
fn add_json_equals_add() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.tar.zst", nginx_objects(), WriterOptions::zstd());
    let b = dir.path().join("b.tar.zst");
    let mut writer = ArchiveWriter::create(&b, facts(), WriterOptions::zstd()).unwrap();
    for o in nginx_objects() {
        writer
            .add_json(&o.resource, &o.group, o.inclusion, o.json)
            .unwrap();
    }
    writer.finish().unwrap();
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(&b).unwrap());

    let c = dir.path().join("c.tar.zst");
    let mut writer = ArchiveWriter::create(&c, facts(), WriterOptions::zstd()).unwrap();
    writer
        .add_json("pods", "", Inclusion::Namespaced, br#"{"kind":"Pod"}"#.to_vec())
        .unwrap();
    assert!(matches!(writer.finish(), Err(ArchiveError::InvalidObject { .. })));
    assert!(!c.exists());
}

#[test]
fn a_lenient_reading_skips_a_damaged_frame_and_names_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar.zst");
    let mut writer = ArchiveWriter::create(&path, facts(), WriterOptions::zstd().frame_size(512)).unwrap();
    for i in 0..20 {
        writer.add(configmap("ns", &format!("cm-{i:02}"), 300)).unwrap();
    }
    writer.finish().unwrap();
    let reader = ArchiveReader::open(&path).unwrap();
    let frame = reader
        .manifest()
        .unwrap()
        .frames
        .iter()
        .find(|f| f.first_path.ends_with("cm-10.json"))
        .cloned()
        .unwrap();
    assert_eq!(frame.entries, 1, "{frame:?}");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[usize::try_from(frame.offset + frame.length / 2).unwrap()] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let reader = ArchiveReader::open(&path).unwrap();
    let strict: Vec<_> = reader.objects().unwrap().collect();
    assert!(
        strict.last().unwrap().is_err(),
        "the strict reading stops at the damage"
    );
    let (good, bad): (Vec<_>, Vec<_>) = reader.objects_lenient().unwrap().partition(Result::is_ok);
    let names: Vec<String> = good.into_iter().map(|o| o.unwrap().record.name).collect();
    let errors: Vec<String> = bad.into_iter().map(|e| e.unwrap_err().to_string()).collect();
    // Frames are independent: the reading resumes at the next frame; only cm-10 is lost.
    let others: Vec<String> = (0..20)
        .filter(|i| *i != 10)
        .map(|i| format!("cm-{i:02}"))
        .collect();
    assert_eq!(names, others, "errors {errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("cm-10.json") && e.contains("missing")),
        "the lost entry is named: {errors:?}"
    );
}

/// What `zstd -dc <path> | tar <flags> -` prints: the archive as the standard tools see it.
fn zstd_tar_listing(path: &std::path::Path, flags: &str) -> String {
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | tar {flags} -", path.display()))
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    String::from_utf8(listing.stdout).unwrap()
}
