//! Benchmark driver for the archive format (see `benches/archive.sh` and `benches/RESULTS.md`).
//!
//! Each subcommand does one thing and prints one line: what it did, wall time, and peak RSS
//! (`VmHWM` from `/proc/self/status`), so writer and reader memory are measured in separate
//! processes.
//!
//! ```text
//! archive_tool gen-dir DIR N          write N realistic objects as files under DIR
//! archive_tool gen-only N             generate N objects in memory, discard them (baseline)
//! archive_tool write-gen N OUT [gz]   generate N objects (shuffled order) straight into a writer
//! archive_tool write-dir DIR OUT      read the files of DIR (like tar) into a writer
//! archive_tool inspect ARCHIVE        open + summary
//! archive_tool verify ARCHIVE         full verification
//! archive_tool read ARCHIVE           stream every object (what restore does)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/archive_support/mod.rs"]
mod archive_support;

use kpromote_archive::{
    ArchiveFacts, ArchiveReader, ArchiveWriter, Inclusion, NewObject, WriterOptions, layout,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
            .collect()
    }
    fn alnum(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[self.below(27) as usize]))
            .collect()
    }
    fn uid(&mut self) -> String {
        format!(
            "{}-{}-4{}-a{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.hex(3),
            self.hex(12)
        )
    }
    fn words(&mut self, bytes: usize) -> String {
        const WORDS: [&str; 24] = [
            "server",
            "listen",
            "location",
            "proxy_pass",
            "timeout",
            "upstream",
            "worker",
            "log",
            "level",
            "info",
            "true",
            "false",
            "http",
            "port",
            "8080",
            "cache",
            "max",
            "size",
            "retry",
            "backend",
            "api",
            "v1",
            "host",
            "enabled",
        ];
        let mut s = String::with_capacity(bytes + 16);
        while s.len() < bytes {
            s.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
            s.push(if self.below(6) == 0 { '\n' } else { ' ' });
        }
        s
    }
    fn base64(&mut self, bytes: usize) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..bytes * 4 / 3)
            .map(|_| char::from(A[self.below(64) as usize]))
            .collect()
    }
}

fn facts() -> ArchiveFacts {
    let mut facts = archive_support::facts();
    facts.policy.name = "bench".to_owned();
    facts.policy.included_namespaces = (0..50).map(|i| format!("team-{i:02}")).collect();
    facts
}

/// Object `i` of a corpus: a mix of Pods, ConfigMaps, Secrets, Deployments, ReplicaSets,
/// Services and ServiceAccounts of realistic shape, 1-4 KiB each.
fn object(i: u64) -> NewObject {
    let mut r = Rng(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let ns = format!("team-{:02}", i % 50);
    let app = format!("app-{}", r.alnum(5));
    let tier = ["web", "api", "worker"][r.below(3) as usize];
    let labels = serde_json::json!({"app": app, "tier": tier, "team": ns});
    let meta = |r: &mut Rng, name: &str| {
        serde_json::json!({
            "name": name, "namespace": ns, "uid": r.uid(),
            "resourceVersion": (100_000 + r.below(900_000)).to_string(),
            "creationTimestamp": format!("2024-0{}-1{}T1{}:2{}:3{}Z", 1 + r.below(9), r.below(10), r.below(10), r.below(10), r.below(10)),
            "labels": labels,
        })
    };
    let container = |r: &mut Rng| {
        serde_json::json!({
            "name": app, "image": format!("registry.example.com/{app}:{}.{}.{}", r.below(5), r.below(20), r.below(50)),
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"}],
            "env": (0..r.below(6)).map(|k| serde_json::json!({"name": format!("VAR_{k}"), "value": r.alnum(12)})).collect::<Vec<_>>(),
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        })
    };
    let (resource, group, value) = match i % 20 {
        0..=5 => {
            let name = format!("{app}-{}-{}", r.alnum(10), r.alnum(5));
            let mut m = meta(&mut r, &name);
            m["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{}", r.alnum(10)), "uid": r.uid(), "controller": true, "blockOwnerDeletion": true}]);
            let c = container(&mut r);
            let conditions: Vec<serde_json::Value> = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
                .iter()
                .map(|t| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": "2024-03-11T10:41:01Z"}))
                .collect();
            (
                "pods",
                "",
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod", "metadata": m,
                    "spec": {"containers": [c], "nodeName": format!("node-{}", r.below(40)), "serviceAccountName": app,
                              "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                              "volumes": [{"name": "config", "configMap": {"name": format!("{app}-config")}}],
                              "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]},
                    "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", r.below(255), r.below(255), r.below(255)),
                                "hostIP": format!("172.18.0.{}", r.below(255)), "qosClass": "Burstable",
                                "conditions": conditions,
                                "containerStatuses": [{"name": app, "ready": true, "restartCount": r.below(3), "image": "registry.example.com/x", "imageID": format!("docker-pullable://registry.example.com/x@sha256:{}", r.hex(64)), "containerID": format!("containerd://{}", r.hex(64)), "started": true}]}
                }),
            )
        }
        6..=9 => {
            let size = 600 + r.below(3000) as usize;
            let body = r.words(size);
            (
                "configmaps",
                "",
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&mut r, &format!("{app}-config-{i}")), "data": {"app.conf": body}}),
            )
        }
        10..=12 => {
            let size = 300 + r.below(1500) as usize;
            let data = r.base64(size);
            (
                "secrets",
                "",
                serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta(&mut r, &format!("{app}-secret-{i}")), "data": {"password": data, "username": r.base64(12)}}),
            )
        }
        13 | 14 => {
            let c = container(&mut r);
            (
                "deployments",
                "apps",
                serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(&mut r, &format!("{app}-{i}")),
                "spec": {"replicas": 1 + r.below(5), "selector": {"matchLabels": {"app": app}}, "strategy": {"type": "RollingUpdate"},
                          "template": {"metadata": {"labels": labels}, "spec": {"containers": [c], "serviceAccountName": app}}},
                "status": {"replicas": 2, "readyReplicas": 2, "observedGeneration": 3}}),
            )
        }
        15 | 16 => {
            let c = container(&mut r);
            let name = format!("{app}-{}-{i}", r.alnum(10));
            let mut m = meta(&mut r, &name);
            m["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": app, "uid": r.uid(), "controller": true, "blockOwnerDeletion": true}]);
            (
                "replicasets",
                "apps",
                serde_json::json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": m,
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": app}}, "template": {"metadata": {"labels": labels}, "spec": {"containers": [c]}}},
                "status": {"replicas": 2, "readyReplicas": 2}}),
            )
        }
        17 | 18 => (
            "services",
            "",
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(&mut r, &format!("{app}-svc-{i}")),
            "spec": {"type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", r.below(255), r.below(255)), "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                      "selector": {"app": app}, "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"},
            "status": {"loadBalancer": {}}}),
        ),
        _ => (
            "serviceaccounts",
            "",
            serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(&mut r, &format!("{app}-sa-{i}")),
            "secrets": [{"name": format!("{app}-token-{}", r.alnum(5))}], "imagePullSecrets": [{"name": "registry"}]}),
        ),
    };
    archive_support::namespaced(resource, group, &value)
}

/// Index `k` of a pseudo-random permutation of 0..n (n > 0): objects arrive in no useful order.
fn shuffled(k: u64, n: u64) -> u64 {
    let step = 7_919u64; // prime, coprime with every n not a multiple of it
    let step = if n.is_multiple_of(step) { 7_907 } else { step };
    (k * step) % n
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn report(what: &str, start: Instant, extra: &str) {
    println!(
        "{what}: {:.3} s, peak RSS {:.1} MiB{extra}",
        start.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
}

fn writer(out: &Path, gzip: bool) -> ArchiveWriter {
    let _ = std::fs::remove_file(out);
    let options = if gzip {
        WriterOptions::gzip()
    } else {
        WriterOptions::zstd()
    };
    ArchiveWriter::create(out, facts(), options).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let start = Instant::now();
    match arg(0).as_str() {
        "gen-dir" => {
            let dir = PathBuf::from(arg(1));
            let n: u64 = arg(2).parse().unwrap();
            let mut bytes = 0;
            for i in 0..n {
                let o = object(i);
                let path = dir.join(o.entry_path().unwrap());
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                bytes += o.json.len();
                std::fs::write(path, &o.json).unwrap();
            }
            report(
                &format!("gen-dir {n} objects"),
                start,
                &format!(", {bytes} bytes of JSON"),
            );
        }
        "gen-only" => {
            let n: u64 = arg(1).parse().unwrap();
            let mut bytes = 0;
            for k in 0..n {
                bytes += std::hint::black_box(object(shuffled(k, n))).json.len();
            }
            report(
                &format!("gen-only {n} objects"),
                start,
                &format!(", {bytes} bytes of JSON"),
            );
        }
        "write-gen" => {
            let n: u64 = arg(1).parse().unwrap();
            let out = PathBuf::from(arg(2));
            let mut w = writer(&out, arg(3) == "gz");
            for k in 0..n {
                w.add(object(shuffled(k, n))).unwrap();
            }
            let written = w.finish().unwrap();
            report(
                &format!("write-gen {n} objects"),
                start,
                &format!(
                    ", {} -> {} bytes",
                    written.uncompressed_bytes, written.compressed_bytes
                ),
            );
        }
        "write-dir" => {
            let dir = PathBuf::from(arg(1));
            let out = PathBuf::from(arg(2));
            let mut w = writer(&out, arg(3) == "gz");
            let mut stack = vec![dir.clone()];
            let mut n = 0;
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).unwrap() {
                    // The directory entry's type (d_type), like tar: no stat per file.
                    let entry = entry.unwrap();
                    let path = entry.path();
                    if entry.file_type().unwrap().is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let rel = path.strip_prefix(&dir).unwrap().to_str().unwrap().to_owned();
                    let key = layout::parse_object_path(&rel).unwrap();
                    let json = std::fs::read(&path).unwrap();
                    w.add_json(&key.resource, &key.group, Inclusion::Namespaced, json)
                        .unwrap();
                    n += 1;
                }
            }
            let adding = start.elapsed().as_secs_f64();
            let written = w.finish().unwrap();
            report(
                &format!("write-dir {n} objects"),
                start,
                &format!(
                    ", {} -> {} bytes (reading files and add: {adding:.3} s)",
                    written.uncompressed_bytes, written.compressed_bytes
                ),
            );
        }
        "inspect" => {
            let reader = ArchiveReader::open(arg(1)).unwrap();
            let objects = reader.summary().objects;
            report("inspect", start, &format!(", {objects} objects"));
        }
        "verify" => {
            let reader = ArchiveReader::open(arg(1)).unwrap();
            let report_ = reader.verify();
            assert!(report_.is_fully_verified(), "{report_:?}");
            report("verify", start, &format!(", {} entries", report_.entries_checked));
        }
        "read" => {
            let reader = ArchiveReader::open(arg(1)).unwrap();
            let mut n = 0u64;
            let mut bytes = 0usize;
            for o in reader.objects().unwrap() {
                bytes += o.unwrap().json.len();
                n += 1;
            }
            report("read", start, &format!(", {n} objects, {bytes} bytes"));
        }
        _ => {
            eprintln!("usage: see the comment at the top of benches/archive_tool.rs");
            std::process::exit(2);
        }
    }
}
