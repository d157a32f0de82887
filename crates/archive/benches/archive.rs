//! Criterion micro-benchmarks of the archive format on a small corpus (2 000 ConfigMaps and
//! Pods, ~3 MiB of JSON): write, open (inspect), verify, and read all objects. The end-to-end
//! figures at 10k and 100k objects, with the baselines, come from `benches/archive.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kpromote_archive::{
    ArchiveFacts, ArchiveReader, ArchiveWriter, Inclusion, NewObject, PolicyFacts, SourceCluster,
    WriterOptions,
};
use std::collections::BTreeMap;
use std::path::Path;

fn facts() -> ArchiveFacts {
    ArchiveFacts {
        created_at: "2024-03-11T10:49:07Z".to_owned(),
        source: SourceCluster {
            name: "bench".to_owned(),
            server_version: "v1.35.0".to_owned(),
        },
        policy: PolicyFacts {
            name: "bench".to_owned(),
            included_namespaces: vec![],
            excluded_resources: vec![],
        },
        list_resource_versions: BTreeMap::new(),
    }
}

fn corpus() -> Vec<NewObject> {
    (0..2000u32)
        .map(|i| {
            let ns = format!("ns-{}", i % 20);
            let value = if i % 2 == 0 {
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("cm-{i}"), "namespace": ns, "uid": format!("{i:08x}-0000-4000-8000-000000000000")},
                    "data": {"config": format!("key{i} = value{}\n", i * 7).repeat(40)}})
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("pod-{i}"), "namespace": ns, "labels": {"app": format!("app-{}", i % 13)}},
                    "spec": {"containers": [{"name": "c", "image": format!("registry.example.com/app:{}", i % 9),
                              "ports": [{"containerPort": 8080}], "env": (0..8).map(|k| serde_json::json!({"name": format!("E{k}"), "value": format!("{i}-{k}")})).collect::<Vec<_>>()}]},
                    "status": {"phase": "Running", "podIP": format!("10.0.{}.{}", i / 256 % 256, i % 256)}})
            };
            let resource = if i % 2 == 0 { "configmaps" } else { "pods" };
            NewObject::from_json(resource, "", Inclusion::Namespaced, serde_json::to_vec(&value).unwrap()).unwrap()
        })
        .collect()
}

fn write(path: &Path, objects: &[NewObject], options: WriterOptions) {
    let _ = std::fs::remove_file(path);
    let mut w = ArchiveWriter::create(path, facts(), options).unwrap();
    for o in objects.iter().rev() {
        w.add(o.clone()).unwrap();
    }
    w.finish().unwrap();
}

fn archive(c: &mut Criterion) {
    let objects = corpus();
    let bytes: u64 = objects.iter().map(|o| o.json.len() as u64).sum();
    let dir = tempfile::tempdir().unwrap();
    let zst = dir.path().join("b.tar.zst");
    let gz = dir.path().join("b.tar.gz");
    let mut group = c.benchmark_group("archive");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(20);
    group.bench_function("write_zstd3", |b| {
        b.iter(|| write(&zst, &objects, WriterOptions::zstd()))
    });
    group.bench_function("write_gzip6", |b| {
        b.iter(|| write(&gz, &objects, WriterOptions::gzip()))
    });
    write(&zst, &objects, WriterOptions::zstd());
    group.bench_function("open_zstd", |b| {
        b.iter(|| ArchiveReader::open(&zst).unwrap().summary().objects)
    });
    group.bench_function("verify_zstd", |b| {
        let reader = ArchiveReader::open(&zst).unwrap();
        b.iter(|| assert!(reader.verify().is_ok()));
    });
    group.bench_function("read_all_zstd", |b| {
        let reader = ArchiveReader::open(&zst).unwrap();
        b.iter(|| {
            reader
                .objects()
                .unwrap()
                .map(|o| o.unwrap().json.len())
                .sum::<usize>()
        });
    });
    group.finish();
}

/// 2 000 Secrets written and read in clear and sealed to one age recipient: what sealing costs.
fn sealed(c: &mut Criterion) {
    #[allow(deprecated)] // age's X25519 keys: what kpromote seals to (see kpromote_archive::seal).
    let identity = age::x25519::Identity::generate();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.txt");
    std::fs::write(
        &key,
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
        ),
    )
    .unwrap();
    let recipients = kpromote_archive::Recipients::parse([identity.to_public().to_string()]).unwrap();
    let identities = kpromote_archive::Identities::from_file(&key).unwrap();
    let secrets: Vec<NewObject> = (0..2000u32)
        .map(|i| {
            let value = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": format!("s-{i}"), "namespace": format!("ns-{}", i % 20), "uid": format!("{i:08x}-0000-4000-8000-000000000000")},
                "data": {"password": format!("cGFzc3dvcmQt{i:08}"), "tls.crt": "QUJD".repeat(100)}});
            NewObject::from_json("secrets", "", Inclusion::Namespaced, serde_json::to_vec(&value).unwrap()).unwrap()
        })
        .collect();
    let bytes: u64 = secrets.iter().map(|o| o.json.len() as u64).sum();
    let (plain, sealed) = (dir.path().join("p.tar.zst"), dir.path().join("s.tar.zst"));
    let mut group = c.benchmark_group("sealed");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.bench_function("write_2000_secrets_clear", |b| {
        b.iter(|| write(&plain, &secrets, WriterOptions::zstd()))
    });
    group.bench_function("write_2000_secrets_sealed", |b| {
        b.iter(|| {
            write(
                &sealed,
                &secrets,
                WriterOptions::zstd().encrypt_to(recipients.clone()),
            )
        })
    });
    write(&plain, &secrets, WriterOptions::zstd());
    write(
        &sealed,
        &secrets,
        WriterOptions::zstd().encrypt_to(recipients.clone()),
    );
    eprintln!(
        "2000 secrets: clear archive {} bytes, sealed {} bytes",
        std::fs::metadata(&plain).unwrap().len(),
        std::fs::metadata(&sealed).unwrap().len()
    );
    let read_all = |path: &Path| {
        let mut reader = ArchiveReader::open(path).unwrap();
        reader.unseal_with(&identities).unwrap();
        reader
            .objects()
            .unwrap()
            .map(|o| o.unwrap().json.len())
            .sum::<usize>()
    };
    group.bench_function("read_2000_secrets_clear", |b| b.iter(|| read_all(&plain)));
    group.bench_function("read_2000_secrets_sealed", |b| b.iter(|| read_all(&sealed)));
    group.finish();
}

criterion_group!(benches, archive, sealed);
criterion_main!(benches);
