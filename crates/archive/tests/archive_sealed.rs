//! Sealed Secrets (format 1.1, spec §14): written encrypted to age recipients, verified without a
//! key, opened only with a recipient's identity, absent in clear from the whole stream, and
//! decrypted to the exact archived object by the reference `age` command line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archive_support;

use archive_support::{configmap, facts};
use kpromote_archive::{
    ArchiveError, ArchiveReader, ArchiveWriter, Codec, Identities, Inclusion, NewObject, Recipients,
    SealError, WriterOptions,
};
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Values no other byte of the archive could contain by chance.
const MARKERS: [&str; 3] = [
    "kpromote-sealed-marker-password-4f1c",
    "kpromote-sealed-marker-string-data-93b2",
    "kpromote-sealed-marker-applied-77de",
];

fn base64(text: &str) -> String {
    use base64_impl::encode;
    encode(text.as_bytes())
}

/// Standard base64, written out here so the test does not trust the code under test.
mod base64_impl {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// A Secret carrying the markers in `data` (base64, as the API returns it), `stringData` and
/// the last-applied annotation.
fn secret(ns: &str, name: &str) -> NewObject {
    let applied = json!({"apiVersion": "v1", "kind": "Secret", "stringData": {"password": MARKERS[2]}});
    let value = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied.to_string()},
        },
        "type": "Opaque",
        "data": {"password": base64(MARKERS[0])},
        "stringData": {"note": MARKERS[1]},
    });
    NewObject::from_json(
        "secrets",
        "",
        Inclusion::Namespaced,
        serde_json::to_vec(&value).unwrap(),
    )
    .unwrap()
}

/// An age key pair made by the reference `age-keygen`: (identity file, public key).
fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let made = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("the reference `age-keygen` is needed (Debian package `age`, installed by .ci/run): {e}")
        });
    assert!(
        made.status.success(),
        "age-keygen: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let public = Command::new("age-keygen").arg("-y").arg(&file).output().unwrap();
    assert!(public.status.success());
    (file, String::from_utf8(public.stdout).unwrap().trim().to_owned())
}

fn write(path: &Path, objects: Vec<NewObject>, options: WriterOptions) {
    let mut writer = ArchiveWriter::create(path, facts(), options).unwrap();
    for object in objects {
        writer.add(object).unwrap();
    }
    writer.finish().unwrap();
}

fn objects() -> Vec<NewObject> {
    vec![
        secret("shop", "db"),
        secret("shop", "api"),
        configmap("shop", "settings", 100),
    ]
}

/// The whole tar stream of an archive, decompressed (every frame, as `zstd -dc` / `gzip -dc`).
fn tar_stream(path: &Path, codec: Codec) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    let mut out = Vec::new();
    match codec {
        Codec::Zstd => zstd::stream::read::Decoder::new(file)
            .unwrap()
            .read_to_end(&mut out),
        Codec::Gzip => flate2::read::MultiGzDecoder::new(file).read_to_end(&mut out),
    }
    .unwrap();
    out
}

/// One entry's stored bytes, read with the independent `tar` crate.
fn stored_entry(stream: &[u8], wanted: &str) -> Vec<u8> {
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(wanted) {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            return data;
        }
    }
    panic!("{wanted} is not in the tar stream");
}

#[test]
fn sealed_secrets_verify_without_a_key_and_open_only_with_a_recipients_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, pub_a) = age_keygen(dir.path(), "a.key");
    let (key_b, pub_b) = age_keygen(dir.path(), "b.key");
    let (key_c, _) = age_keygen(dir.path(), "c.key");
    let path = dir.path().join("sealed.tar.zst");
    let recipients = Recipients::parse([pub_a.as_str(), pub_b.as_str()]).unwrap();
    write(&path, objects(), WriterOptions::zstd().encrypt_to(recipients));

    let mut reader = ArchiveReader::open(&path).unwrap();
    assert!(reader.warnings().is_empty(), "{:?}", reader.warnings());
    let manifest = reader.manifest().unwrap();
    assert_eq!(manifest.format_version, "1.1.0");
    let encryption = reader.encryption().unwrap();
    let mut expected = vec![pub_a.clone(), pub_b.clone()];
    expected.sort();
    assert_eq!(encryption.recipients, expected);
    assert_eq!(encryption.resources, ["secrets"]);
    // verify and the index need no key: digests are over the stored bytes.
    let report = reader.verify();
    assert!(report.is_fully_verified(), "{:?}", report.problems);
    let sealed: Vec<(String, Option<String>)> = reader
        .records()
        .unwrap()
        .map(|r| r.unwrap())
        .map(|r| (r.name, r.encryption))
        .collect();
    assert_eq!(
        sealed,
        [
            ("settings".to_owned(), None),
            ("api".to_owned(), Some("age".to_owned())),
            ("db".to_owned(), Some("age".to_owned())),
        ]
    );

    // Without an identity the Secret is an error naming the recipients; the ConfigMap reads.
    let cm = reader
        .get("resources/configmaps/namespaces/shop/settings.json")
        .unwrap();
    assert!(cm.value().is_ok());
    match reader.get("resources/secrets/namespaces/shop/db.json") {
        Err(ArchiveError::Seal(SealError::NoIdentity { recipients })) => assert_eq!(recipients, expected),
        other => panic!("expected NoIdentity, got {other:?}"),
    }
    // A wrong identity is refused before anything is read.
    let wrong = reader
        .unseal_with(&Identities::from_file(&key_c).unwrap())
        .unwrap_err();
    assert!(
        matches!(wrong, ArchiveError::Seal(SealError::WrongIdentity { .. })),
        "{wrong}"
    );
    assert!(wrong.to_string().contains(&pub_a), "{wrong}");
    // Either recipient's identity opens every Secret, to the exact bytes given to the writer.
    for key in [&key_a, &key_b] {
        let mut reader = ArchiveReader::open(&path).unwrap();
        reader.unseal_with(&Identities::from_file(key).unwrap()).unwrap();
        let got: Vec<Vec<u8>> = reader.objects().unwrap().map(|o| o.unwrap().json).collect();
        let mut want: Vec<(String, Vec<u8>)> = objects()
            .into_iter()
            .map(|o| (o.entry_path().unwrap(), o.json))
            .collect();
        want.sort();
        assert_eq!(got, want.into_iter().map(|(_, json)| json).collect::<Vec<_>>());
    }
}

#[test]
fn no_secret_value_is_in_the_decompressed_stream_plain_or_base64() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = age_keygen(dir.path(), "k.key");
    let mut needles: Vec<String> = MARKERS.iter().map(|m| (*m).to_owned()).collect();
    needles.extend(MARKERS.iter().map(|m| base64(m)));
    for (codec, options) in [
        (Codec::Zstd, WriterOptions::zstd()),
        (Codec::Gzip, WriterOptions::gzip()),
    ] {
        let path = dir.path().join(format!("s{}", codec.extension()));
        // A tiny sort budget makes the writer spill runs to disk, through the same path.
        let options = options
            .sort_memory(1)
            .encrypt_to(Recipients::parse([public.as_str()]).unwrap());
        write(&path, objects(), options);
        let stream = tar_stream(&path, codec);
        assert!(
            stream.windows(b"shop".len()).any(|w| w == b"shop"),
            "the stream was decoded"
        );
        for needle in &needles {
            assert!(
                !stream.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{codec:?}: {needle} is in the archive"
            );
        }
        // The same objects unsealed do carry each value (plain, or base64 in `data`): the
        // search above can find them.
        let plain = dir.path().join(format!("p{}", codec.extension()));
        write(&plain, objects(), WriterOptions::zstd().codec(codec));
        let stream = tar_stream(&plain, codec);
        let holds = |needle: &str| stream.windows(needle.len()).any(|w| w == needle.as_bytes());
        for marker in MARKERS {
            assert!(holds(marker) || holds(&base64(marker)), "{marker}");
        }
    }
}

#[test]
fn the_reference_age_command_line_decrypts_a_sealed_entry_to_the_archived_object() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = age_keygen(dir.path(), "k.key");
    let path = dir.path().join("s.tar.zst");
    write(
        &path,
        objects(),
        WriterOptions::zstd().encrypt_to(Recipients::parse([public.as_str()]).unwrap()),
    );
    let entry = "resources/secrets/namespaces/shop/db.json";
    let stored = stored_entry(&tar_stream(&path, Codec::Zstd), entry);
    assert!(
        stored.starts_with(b"age-encryption.org/v1\n"),
        "a binary age file"
    );
    // What a 1.0 reader would hand out is not JSON: it fails rather than misreads (spec §14.3).
    assert!(serde_json::from_slice::<serde_json::Value>(&stored).is_err());
    let sealed_file = dir.path().join("db.json.age");
    std::fs::write(&sealed_file, &stored).unwrap();
    let decrypted = Command::new("age")
        .arg("--decrypt")
        .arg("-i")
        .arg(&key)
        .arg(&sealed_file)
        .output()
        .unwrap_or_else(|e| {
            panic!("the reference `age` is needed (Debian package `age`, installed by .ci/run): {e}")
        });
    assert!(
        decrypted.status.success(),
        "age -d: {}",
        String::from_utf8_lossy(&decrypted.stderr)
    );
    let original = secret("shop", "db").json;
    assert_eq!(
        decrypted.stdout, original,
        "age -d gives the exact archived object"
    );
    // The README's pipeline, reference tools only.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar xOf - {entry} | age -d -i '{}'",
            path.display(),
            key.display()
        ))
        .output()
        .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(piped.stdout, original);

    // And the other way: what the reference `age` encrypts, the reader's identity opens.
    let ours = Identities::from_file(&key).unwrap();
    let plain_file = dir.path().join("plain.json");
    std::fs::write(&plain_file, &original).unwrap();
    let encrypted = Command::new("age")
        .arg("-r")
        .arg(&public)
        .arg(&plain_file)
        .output()
        .unwrap();
    assert!(encrypted.status.success());
    assert_eq!(ours.open(entry, &encrypted.stdout).unwrap(), original);
}

#[test]
fn an_archive_without_recipients_stays_format_1_0_and_needs_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.tar.zst");
    write(&path, objects(), WriterOptions::zstd());
    let mut reader = ArchiveReader::open(&path).unwrap();
    assert_eq!(reader.manifest().unwrap().format_version, "1.0.0");
    assert!(reader.encryption().is_none());
    // Any identity (or none) is accepted and ignored.
    reader.unseal_with(&Identities::none()).unwrap();
    assert!(reader.objects().unwrap().all(|o| o.is_ok()));
}
