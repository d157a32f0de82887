//! Backup throughput and memory against a real local cluster.
//!
//! ```sh
//! cargo test --release --bench backup -- --ignored --nocapture
//! ```
//!
//! A namespace of `KPROMOTE_BENCH_OBJECTS` objects (default 10,000: ConfigMaps, Secrets,
//! headless Services and Pods) is created concurrently; then, in the same run and on the same
//! data, `KPROMOTE_BENCH_ROUNDS` rounds (default 3) of:
//!
//! - `kpromote backup` (the release binary, defaults: 6 lists at once, pages of 500, zstd 3),
//!   wall time of the whole process and its peak resident memory (VmHWM, sampled from
//!   `/proc/<pid>/status` every 5 ms; the high-water mark is monotonic, so only the last few
//!   milliseconds before exit can escape it);
//! - a serial `kubectl get <type> -n <ns> -o json` dump of the same types into files;
//! - a raw paginated LIST of the same types (`limit=500`, body read and its items counted, not
//!   decoded into objects), one type after another, and with the backup's concurrency.
//!
//! The median of each is printed as a Markdown table for `benches/RESULTS.md`.
//!
//! It is a `#[test]` marked `#[ignore]` rather than a `harness = false` bench so that it needs no
//! entry in `Cargo.toml`; `cargo bench` lists it as ignored.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kpromote::resources::{ApiSurface, DEFAULT_EXCLUDED_RESOURCES, ServedResource};
use kpromote::testenv::{Binaries, Cluster};
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

const NS: &str = "bench";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A few hundred bytes of text that varies from object to object, like real configuration.
fn payload(i: usize, len: usize) -> String {
    let mut seed = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let words = [
        "replicas", "timeout", "endpoint", "enabled", "level", "retry", "cache", "region",
    ];
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let word = words[(seed % words.len() as u64) as usize];
        out.push_str(&format!("{word}={}\n", seed % 10_000));
    }
    out
}

fn object(i: usize, total: usize) -> Value {
    // 40% ConfigMaps, 25% Secrets, 15% headless Services, 20% Pods.
    let share = i * 100 / total.max(1);
    let name = format!("obj-{i:05}");
    if share < 40 {
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name, "namespace": NS,
                "labels": { "app": format!("app-{}", i % 50), "tier": "config" } },
                "data": { "app.properties": payload(i, 700) } })
    } else if share < 65 {
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name, "namespace": NS,
                "labels": { "app": format!("app-{}", i % 50) } },
                "type": "Opaque", "stringData": { "password": payload(i, 48), "token": payload(i + 7, 96) } })
    } else if share < 80 {
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": NS,
                "labels": { "app": format!("app-{}", i % 50) } },
                "spec": { "clusterIP": "None", "selector": { "app": format!("app-{}", i % 50) },
                          "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] } })
    } else {
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": NS,
                "labels": { "app": format!("app-{}", i % 50) } },
                "spec": { "containers": [{ "name": "main", "image": "nginx:1.25",
                    "ports": [{ "containerPort": 8080 }],
                    "env": [{ "name": "MODE", "value": "production" }, { "name": "INDEX", "value": i.to_string() }],
                    "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] } })
    }
}

async fn create_all(client: &Client, total: usize) {
    let resources: Vec<(String, kube::api::ApiResource)> = ["ConfigMap", "Secret", "Service", "Pod"]
        .iter()
        .map(|kind| {
            let gvk = kube::api::GroupVersionKind::gvk("", "v1", kind);
            let plural = match *kind {
                "ConfigMap" => "configmaps",
                "Secret" => "secrets",
                "Service" => "services",
                _ => "pods",
            };
            (
                (*kind).to_owned(),
                kube::api::ApiResource::from_gvk_with_plural(&gvk, plural),
            )
        })
        .collect();
    let resources = &resources;
    let started = Instant::now();
    stream::iter(0..total)
        .map(|i| async move {
            let value = object(i, total);
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let (_, ar) = resources.iter().find(|(k, _)| *k == kind).unwrap();
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, ar);
            let obj: DynamicObject = serde_json::from_value(value).unwrap();
            api.create(&PostParams::default(), &obj).await.map(|_| ())
        })
        .buffer_unordered(48)
        .try_collect::<()>()
        .await
        .unwrap();
    eprintln!(
        "created {total} objects in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn list_path(served: &ServedResource) -> String {
    let gr = &served.group_resource;
    if gr.is_core() {
        format!("/api/{}/namespaces/{NS}/{}", served.version, gr.resource())
    } else {
        format!(
            "/apis/{}/{}/namespaces/{NS}/{}",
            gr.group(),
            served.version,
            gr.resource()
        )
    }
}

#[derive(serde::Deserialize)]
struct Page {
    metadata: kube::core::ListMeta,
    items: Vec<serde::de::IgnoredAny>,
}

/// One type, every page of 500: (objects, bytes).
async fn raw_list(client: &Client, path: &str) -> (u64, u64) {
    let (mut objects, mut bytes) = (0u64, 0u64);
    let mut token: Option<String> = None;
    loop {
        let url = match &token {
            Some(t) => format!("{path}?limit=500&continue={t}"),
            None => format!("{path}?limit=500"),
        };
        let request = http::Request::get(url).body(Vec::new()).unwrap();
        let text = client.request_text(request).await.unwrap();
        bytes += text.len() as u64;
        let page: Page = serde_json::from_str(&text).unwrap();
        objects += page.items.len() as u64;
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return (objects, bytes);
        }
    }
}

async fn raw_list_all(client: &Client, paths: &[String], concurrency: usize) -> (u64, u64, Duration) {
    let started = Instant::now();
    let totals: Vec<(u64, u64)> = stream::iter(paths)
        .map(|p| raw_list(client, p))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let (o, b) = totals.iter().fold((0, 0), |(o, b), (x, y)| (o + x, b + y));
    (o, b, started.elapsed())
}

fn kubectl_dump(kubectl: &Path, kubeconfig: &Path, types: &[String], out: &Path) -> Duration {
    let started = Instant::now();
    for (i, t) in types.iter().enumerate() {
        let file = std::fs::File::create(out.join(format!("{i}.json"))).unwrap();
        let status = Command::new(kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["get", t, "-n", NS, "-o", "json"])
            .stdout(file)
            .status()
            .unwrap();
        assert!(status.success(), "kubectl get {t}");
    }
    started.elapsed()
}

/// Runs `kpromote backup`; returns its wall time, peak RSS in KiB, and its stdout.
fn kpromote_backup(kubeconfig: &Path, out: &Path, name: &str) -> (Duration, u64, String) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .args(["backup", "-n", NS, "--name", name, "--output-dir"])
        .arg(out)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let output = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (
        elapsed,
        peak_kib,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --bench backup -- --ignored --nocapture"]
async fn backup_throughput_and_memory() {
    let total = env_usize("KPROMOTE_BENCH_OBJECTS", 10_000);
    let rounds = env_usize("KPROMOTE_BENCH_ROUNDS", 3).max(1);
    let cluster = Cluster::start("bench").await.unwrap();
    let client = cluster.client().await.unwrap();
    let kubeconfig = cluster.kubeconfig_path().to_owned();
    let kubectl = Binaries::locate().unwrap().path("kubectl");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": NS } })).unwrap(),
        )
        .await
        .unwrap();
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), NS);
    while accounts.get_opt("default").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_all(&client, total).await;

    let surface = ApiSurface::discover(&client).await.unwrap();
    let excluded = surface.resolve_exclusions(DEFAULT_EXCLUDED_RESOURCES).unwrap();
    let types = surface.backup_types(&excluded);
    let paths: Vec<String> = types.iter().map(|t| list_path(t)).collect();
    let kubectl_types: Vec<String> = types
        .iter()
        .map(|t| {
            let gr = &t.group_resource;
            if gr.is_core() {
                gr.resource().to_owned()
            } else {
                format!("{}.{}.{}", gr.resource(), t.version, gr.group())
            }
        })
        .collect();

    // Warm-up: every list once (the watch cache, the connection, kubectl's discovery cache).
    let (objects, bytes, _) = raw_list_all(&client, &paths, 1).await;
    let work = tempfile::tempdir().unwrap();
    let dump = work.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    kubectl_dump(&kubectl, &kubeconfig, &kubectl_types, &dump);
    eprintln!(
        "{} types, {objects} objects, {:.1} MiB of list JSON",
        types.len(),
        bytes as f64 / 1048576.0
    );

    let mut backup_s = Vec::new();
    let mut backup_kib = Vec::new();
    let mut kubectl_s = Vec::new();
    let mut raw_serial_s = Vec::new();
    let mut raw_concurrent_s = Vec::new();
    let mut archive_bytes = 0;
    for round in 0..rounds {
        let out = work.path().join(format!("round-{round}"));
        std::fs::create_dir(&out).unwrap();
        let (elapsed, kib, stdout) = kpromote_backup(&kubeconfig, &out, "bench.tar.zst");
        archive_bytes = std::fs::metadata(out.join("bench.tar.zst")).unwrap().len();
        eprintln!(
            "round {round}: backup {:.2}s, VmHWM {} KiB; {}",
            elapsed.as_secs_f64(),
            kib,
            stdout.lines().next().unwrap_or_default()
        );
        backup_s.push(elapsed.as_secs_f64());
        backup_kib.push(kib as f64);

        let elapsed = kubectl_dump(&kubectl, &kubeconfig, &kubectl_types, &dump);
        eprintln!("round {round}: kubectl {:.2}s", elapsed.as_secs_f64());
        kubectl_s.push(elapsed.as_secs_f64());

        let (o, _, elapsed) = raw_list_all(&client, &paths, 1).await;
        assert_eq!(o, objects);
        eprintln!("round {round}: raw LIST serial {:.2}s", elapsed.as_secs_f64());
        raw_serial_s.push(elapsed.as_secs_f64());

        let (o, _, elapsed) = raw_list_all(&client, &paths, kpromote::backup::DEFAULT_CONCURRENCY).await;
        assert_eq!(o, objects);
        eprintln!("round {round}: raw LIST concurrent {:.2}s", elapsed.as_secs_f64());
        raw_concurrent_s.push(elapsed.as_secs_f64());
    }

    let per_s = |s: f64| objects as f64 / s;
    let (b, k, rs, rc) = (
        median(backup_s),
        median(kubectl_s),
        median(raw_serial_s),
        median(raw_concurrent_s),
    );
    let mib = median(backup_kib) / 1024.0;
    println!(
        "\n| What ({objects} objects, {} types, {rounds} rounds, median) | Seconds | Objects/s | Backup is |",
        types.len()
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| `kpromote backup` (whole process, archive {:.1} MiB) | {b:.2} | {:.0} | |",
        archive_bytes as f64 / 1048576.0,
        per_s(b)
    );
    println!(
        "| serial `kubectl get <type> -o json` | {k:.2} | {:.0} | {:.1}× faster |",
        per_s(k),
        k / b
    );
    println!(
        "| raw paginated LIST, one type at a time | {rs:.2} | {:.0} | {:.2}× its speed |",
        per_s(rs),
        rs / b
    );
    println!(
        "| raw paginated LIST, {} at a time | {rc:.2} | {:.0} | {:.2}× its speed |",
        kpromote::backup::DEFAULT_CONCURRENCY,
        per_s(rc),
        rc / b
    );
    println!("\nPeak memory of `kpromote backup` (VmHWM, median): {mib:.1} MiB");
}
