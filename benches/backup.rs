#![allow(clippy::unwrap_used)]
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
//! `KPROMOTE_BENCH_LOG=kpromote=debug` passes that log filter to the backup and prints its log
//! (phase timings).
//!
//! It is a `#[test]` marked `#[ignore]` rather than a `harness = false` bench so that it needs no
//! entry in `Cargo.toml`; `cargo bench` lists it as ignored.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use kpromote_core::resources::{ApiSurface, DEFAULT_EXCLUDED_RESOURCES, ServedResource};
use kpromote_testenv::{Binaries, Cluster};
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

mod common;
use common::env_usize;

const NS: &str = "bench";

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

/// Milliseconds since the start of `backup::run` at which each phase ended, from the backup's
/// debug log: discovery and checks, lists opened, everything read, archive written.
fn phases(log: &str) -> Vec<(String, f64)> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|entry| {
            let fields = &entry["fields"];
            let ms = fields["elapsed_ms"].as_str()?.parse::<f64>().ok()?;
            Some((fields["message"].as_str()?.to_owned(), ms))
        })
        .collect()
}

fn phase(phases: &[(String, f64)], name: &str) -> f64 {
    phases
        .iter()
        .find(|(n, _)| n == name)
        .map_or(f64::NAN, |(_, ms)| ms / 1000.0)
}

/// Runs `kpromote backup`; returns its wall time, peak RSS in KiB, CPU seconds, its stdout and
/// its log.
fn kpromote_backup(kubeconfig: &Path, out: &Path, name: &str) -> (Duration, u64, f64, String, String) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .args(["backup", "-n", NS, "--name", name, "--backup-dir"])
        .arg(out)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .env(
            "RUST_LOG",
            std::env::var("KPROMOTE_BENCH_LOG")
                .unwrap_or_else(|_| "warn,kpromote_core::backup=debug".to_owned()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let mut cpu = 0.0f64;
    let status = loop {
        if let Some(c) = cpu_seconds(child.id()) {
            cpu = c;
        }
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
    if std::env::var_os("KPROMOTE_BENCH_LOG").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    (
        elapsed,
        peak_kib,
        cpu,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// User + system CPU seconds of process `pid` so far (`/proc/<pid>/stat`, USER_HZ = 100).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The pid of the cluster's kube-apiserver, found by its certificate directory.
fn apiserver_pid(cluster: &Cluster) -> u32 {
    let cert_dir = format!("--cert-dir={}", cluster.dir().join("pki").display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let args: Vec<String> = raw
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.first().is_some_and(|a| a.ends_with("/kube-apiserver")) && args.contains(&cert_dir)
            })
        })
        .expect("the cluster's kube-apiserver")
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

    let api_pid = apiserver_pid(&cluster);
    let own_pid = std::process::id();
    // Per measurement: wall seconds, kube-apiserver CPU seconds, client CPU seconds.
    let mut backup = Vec::new();
    let mut backup_kib = Vec::new();
    let mut backup_phases: Vec<(f64, f64, f64)> = Vec::new();
    let mut kubectl_runs = Vec::new();
    let mut raw_serial = Vec::new();
    let mut raw_concurrent = Vec::new();
    let mut archive_bytes = 0;
    for round in 0..rounds {
        let out = work.path().join(format!("round-{round}"));
        std::fs::create_dir(&out).unwrap();
        let api_before = cpu_seconds(api_pid).unwrap();
        let (elapsed, kib, cpu, stdout, log) = kpromote_backup(&kubeconfig, &out, "bench.tar.zst");
        let api_cpu = cpu_seconds(api_pid).unwrap() - api_before;
        archive_bytes = std::fs::metadata(out.join("bench.tar.zst")).unwrap().len();
        let steps = phases(&log);
        let (discovered, read, written) = (
            phase(&steps, "discovery and checks done"),
            phase(&steps, "everything read"),
            phase(&steps, "archive written"),
        );
        eprintln!(
            "round {round}: backup {:.2}s (cpu {cpu:.2}s, apiserver cpu {api_cpu:.2}s), VmHWM {kib} KiB; \
             discovery {discovered:.2}s, reading {:.2}s, writing {:.2}s; {}",
            elapsed.as_secs_f64(),
            read - discovered,
            written - read,
            stdout.lines().next().unwrap_or_default()
        );
        backup_phases.push((discovered, read - discovered, written - read));
        backup.push((elapsed.as_secs_f64(), api_cpu, cpu));
        backup_kib.push(kib as f64);

        let api_before = cpu_seconds(api_pid).unwrap();
        let elapsed = kubectl_dump(&kubectl, &kubeconfig, &kubectl_types, &dump);
        let api_cpu = cpu_seconds(api_pid).unwrap() - api_before;
        eprintln!(
            "round {round}: kubectl {:.2}s (apiserver cpu {api_cpu:.2}s)",
            elapsed.as_secs_f64()
        );
        kubectl_runs.push((elapsed.as_secs_f64(), api_cpu, f64::NAN));

        for (concurrency, runs) in [
            (1, &mut raw_serial),
            (kpromote_core::backup::DEFAULT_CONCURRENCY, &mut raw_concurrent),
        ] {
            let (api_before, own_before) = (cpu_seconds(api_pid).unwrap(), cpu_seconds(own_pid).unwrap());
            let (o, _, elapsed) = raw_list_all(&client, &paths, concurrency).await;
            let api_cpu = cpu_seconds(api_pid).unwrap() - api_before;
            let own_cpu = cpu_seconds(own_pid).unwrap() - own_before;
            assert_eq!(o, objects);
            eprintln!(
                "round {round}: raw LIST x{concurrency} {:.2}s (apiserver cpu {api_cpu:.2}s, client cpu {own_cpu:.2}s)",
                elapsed.as_secs_f64()
            );
            runs.push((elapsed.as_secs_f64(), api_cpu, own_cpu));
        }
    }

    let per_s = |s: f64| objects as f64 / s;
    let pick = |runs: &[(f64, f64, f64)], i: usize| median(runs.iter().map(|r| [r.0, r.1, r.2][i]).collect());
    let b = pick(&backup, 0);
    let mib = median(backup_kib) / 1024.0;
    println!(
        "\n| {objects} objects, {} types; median of {rounds} rounds | Wall s | Objects/s | Backup is | apiserver CPU s | client CPU s |",
        types.len()
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| `kpromote backup` (whole process; archive {:.1} MiB) | {b:.2} | {:.0} | | {:.2} | {:.2} |",
        archive_bytes as f64 / 1048576.0,
        per_s(b),
        pick(&backup, 1),
        pick(&backup, 2)
    );
    let reading = pick(&backup_phases, 1);
    println!(
        "| `kpromote backup`, reading only (after discovery, before the archive is written) | {reading:.2} | {:.0} | | | |",
        per_s(reading)
    );
    let k = pick(&kubectl_runs, 0);
    println!(
        "| serial `kubectl get <type> -o json` | {k:.2} | {:.0} | {:.1}× faster | {:.2} | |",
        per_s(k),
        k / b,
        pick(&kubectl_runs, 1)
    );
    for (label, runs) in [
        ("raw paginated LIST, one type at a time".to_owned(), &raw_serial),
        (
            format!(
                "raw paginated LIST, {} types at a time",
                kpromote_core::backup::DEFAULT_CONCURRENCY
            ),
            &raw_concurrent,
        ),
    ] {
        let r = pick(runs, 0);
        println!(
            "| {label} | {r:.2} | {:.0} | {:.2}× its speed | {:.2} | {:.2} |",
            per_s(r),
            r / b,
            pick(runs, 1),
            pick(runs, 2)
        );
    }
    println!("\nPeak memory of `kpromote backup` (VmHWM, median): {mib:.1} MiB");
    println!(
        "Backup phases (median): discovery and checks {:.2}s, reading {reading:.2}s, sorting + compressing + writing {:.2}s; \
         the rest of the wall time is process start, kubeconfig and TLS.",
        pick(&backup_phases, 0),
        pick(&backup_phases, 2)
    );
    let rs = pick(&raw_serial, 0);
    println!(
        "Reading alone runs at {:.2}× one-type-at-a-time raw LIST and {:.2}× the concurrent one.",
        rs / reading,
        pick(&raw_concurrent, 0) / reading
    );
}
