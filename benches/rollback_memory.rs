//! Peak memory of `kpromote rollback` against the number of archived objects (issue 11): archives
//! of 10,000 and 100,000 generated objects, each rolled back by the real CLI against two real
//! clusters (`tests/testenv/build.sh`), its peak RSS taken by `/usr/bin/time`. In the same run,
//! on the same archives, each in a process of its own: the inventory as rollback reads it
//! (`Inventory::for_rollback`) and as promote does (`Inventory::for_promote`, which also
//! verifies every entry is readable).
//!
//! `cargo bench --bench rollback_memory` (sizes: `KPROMOTE_BENCH_OBJECTS=10000,100000`). With
//! `KPROMOTE_BENCH_BASELINE=<kpromote binary>` (an earlier build), that binary rolls back the
//! same objects too, into a namespace of its own, for the before/after figures.
//!
//! Every 100 objects are one application: a Deployment and its ReplicaSet (both at zero
//! replicas, so the member's controllers create nothing when rollback re-creates them), ten
//! pods of that ReplicaSet (about 3 KB of JSON each, as the API server returns them), and 88
//! ConfigMaps of about 1 KB. Nothing was promoted: rollback reads the whole archive, looks every
//! object up in the control plane (drift), looks every pod up in the member (unmark), re-creates
//! the 2 % that are owners, and finds nothing to tear down.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;
use common::{kpromote_at, measured};

use k8s_openapi::api::core::v1::Namespace;
use kpromote_archive::{
    ArchiveFacts, ArchiveWriter, Inclusion, NewObject, PolicyFacts, SourceCluster, WriterOptions,
};
use kpromote_core::engine::Inventory;
use kpromote_testenv::TestEnv;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

/// Objects per generated application.
const APP: usize = 100;
/// Pods per application.
const PODS: usize = 10;

fn main() {
    // A child measuring one inventory: `KPROMOTE_BENCH_LOAD=promote|lean:<archive>`.
    if let Ok(spec) = std::env::var("KPROMOTE_BENCH_LOAD") {
        let (how, path) = spec.split_once(':').expect("how:path");
        let objects = match how {
            "promote" => Inventory::for_promote(Path::new(path)).expect("inventory").len(),
            _ => Inventory::for_rollback(Path::new(path))
                .expect("inventory")
                .graph()
                .len(),
        };
        println!("{objects}");
        return;
    }
    let sizes: Vec<usize> = std::env::var("KPROMOTE_BENCH_OBJECTS")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a number of objects"))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let env = runtime
        .block_on(TestEnv::start(&["control-plane", "member"]))
        .expect("clusters");
    let member = env.cluster("member");
    let cp = env.cluster("control-plane");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    let mut baselines = Vec::new();
    for &n in &sizes {
        let ns = format!("gen-{n}");
        create_namespace(&runtime, member, &ns);
        let t = Instant::now();
        let path = generate(dir.path(), &ns, n);
        let bytes = std::fs::metadata(&path).expect("archive").len();
        eprintln!(
            "generated {n} objects ({bytes} bytes) in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let whole = measured(
            Command::new(std::env::current_exe().expect("exe"))
                .env("KPROMOTE_BENCH_LOAD", format!("promote:{}", path.display())),
        );
        let lean = measured(
            Command::new(std::env::current_exe().expect("exe"))
                .env("KPROMOTE_BENCH_LOAD", format!("lean:{}", path.display())),
        );
        let rollback = |binary: &Path, archive: &Path| {
            measured(
                kpromote_at(binary, "rollback", member, cp)
                    .arg("--archive")
                    .arg(archive),
            )
        };
        let rolled = rollback(Path::new(env!("CARGO_BIN_EXE_kpromote")), &path);
        eprintln!("{n}: whole {whole:?}, lean {lean:?}, rollback {rolled:?}");
        if let Some(baseline) = std::env::var_os("KPROMOTE_BENCH_BASELINE") {
            let old_ns = format!("{ns}-baseline");
            create_namespace(&runtime, member, &old_ns);
            let old_path = generate(dir.path(), &old_ns, n);
            let old = rollback(Path::new(&baseline), &old_path);
            eprintln!("{n}: baseline rollback {old:?}");
            baselines.push((n, old));
        }
        rows.push((n, bytes, whole, lean, rolled));
    }
    if !baselines.is_empty() {
        println!("\n| archived objects | baseline `kpromote rollback`: peak MiB, s |");
        println!("|---|---|");
        for (n, old) in &baselines {
            println!("| {n} | {:.0}, {:.1} |", old.0, old.1);
        }
    }
    println!(
        "\n| archived objects | archive MiB | promote inventory: peak MiB, s | rollback inventory: peak MiB, s | `kpromote rollback`: peak MiB, s |"
    );
    println!("|---|---|---|---|---|");
    for (n, bytes, whole, lean, rolled) in &rows {
        println!(
            "| {n} | {:.1} | {:.0}, {:.1} | {:.0}, {:.1} | {:.0}, {:.1} |",
            *bytes as f64 / 1048576.0,
            whole.0,
            whole.1,
            lean.0,
            lean.1,
            rolled.0,
            rolled.1
        );
    }
    if let [(n0, _, _, _, first), .., (n1, _, _, _, last)] = rows.as_slice() {
        println!(
            "\nrollback peak from {n0} to {n1} objects ({:.0}x): {:.2}x ({:.1} KiB per added object)",
            *n1 as f64 / *n0 as f64,
            last.0 / first.0,
            (last.0 - first.0) * 1024.0 / (*n1 - *n0) as f64
        );
    }
}

/// Creates namespace `ns` in `cluster`: rollback re-creates the owners into it.
fn create_namespace(runtime: &tokio::runtime::Runtime, cluster: &kpromote_testenv::Cluster, ns: &str) {
    let client = runtime.block_on(cluster.client()).expect("client");
    let namespace: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("namespace");
    runtime
        .block_on(Api::<Namespace>::all(client).create(&PostParams::default(), &namespace))
        .expect("namespace");
}

/// Writes an archive of `n` generated objects in namespace `ns` (see the module docs).
fn generate(dir: &Path, ns: &str, n: usize) -> PathBuf {
    let facts = ArchiveFacts {
        created_at: "2026-12-02T00:00:00Z".into(),
        source: SourceCluster {
            name: "member".into(),
            server_version: "v1.35.4".into(),
        },
        policy: PolicyFacts {
            name: "bench".into(),
            included_namespaces: vec![ns.to_owned()],
            excluded_resources: Vec::new(),
        },
        list_resource_versions: Default::default(),
    };
    let path = dir.join(format!("{ns}.tar.zst"));
    let mut writer = ArchiveWriter::create(&path, facts, WriterOptions::zstd()).expect("writer");
    let mut add = |resource: &str, group: &str, inclusion: Inclusion, object: Value| {
        let json = serde_json::to_vec(&object).expect("json");
        writer
            .add(NewObject::from_json(resource, group, inclusion, json).expect("object"))
            .expect("add");
    };
    add(
        "namespaces",
        "",
        Inclusion::Namespace,
        json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": ns, "uid": format!("{ns}-uid") } }),
    );
    for app in 0..n / APP {
        let name = format!("app-{app:05}");
        let labels = json!({ "app": name, "pod-template-hash": "5d4f8c7b9" });
        let template = json!({ "metadata": { "labels": labels },
            "spec": { "containers": [{ "name": "main", "image": "registry.example.com/team/app:1.2.3" }] } });
        let (dep_uid, rs_uid) = (format!("{ns}-{name}-dep"), format!("{ns}-{name}-rs"));
        add(
            "deployments",
            "apps",
            Inclusion::Namespaced,
            json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name, "namespace": ns, "uid": dep_uid, "generation": 1,
                "labels": { "app": name } },
            "spec": { "replicas": 0, "selector": { "matchLabels": { "app": name } }, "template": template.clone() } }),
        );
        let rs_name = format!("{name}-5d4f8c7b9");
        add(
            "replicasets",
            "apps",
            Inclusion::Namespaced,
            json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": { "name": rs_name, "namespace": ns, "uid": rs_uid, "generation": 1, "labels": labels,
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                    "uid": dep_uid, "controller": true, "blockOwnerDeletion": true }] },
            "spec": { "replicas": 0, "selector": { "matchLabels": labels }, "template": template } }),
        );
        for p in 0..PODS {
            add(
                "pods",
                "",
                Inclusion::Namespaced,
                pod(ns, &rs_name, &rs_uid, &labels, p),
            );
        }
        for c in 0..APP - 2 - PODS {
            add(
                "configmaps",
                "",
                Inclusion::Namespaced,
                json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": format!("{name}-config-{c:02}"), "namespace": ns,
                    "uid": format!("{ns}-{name}-cm-{c}"), "resourceVersion": "12345",
                    "creationTimestamp": "2026-12-01T10:00:00Z", "labels": { "app": name } },
                "data": { "settings.properties": format!("key.{c}=value\n").repeat(60) } }),
            );
        }
    }
    writer.finish().expect("finish");
    path
}

/// A running pod of ReplicaSet `rs`, about 3 KB of JSON.
fn pod(ns: &str, rs: &str, rs_uid: &str, labels: &Value, p: usize) -> Value {
    let name = format!("{rs}-{p:05}");
    let conditions: Vec<Value> = ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .iter()
        .map(|t| json!({ "type": t, "status": "True", "lastTransitionTime": "2026-12-01T10:00:01Z" }))
        .collect();
    let env: Vec<Value> = (0..8)
        .map(|i| json!({ "name": format!("SETTING_{i}"), "value": format!("value-{i}") }))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "uid": format!("{ns}-{name}-uid"),
            "resourceVersion": "23456", "creationTimestamp": "2026-12-01T10:00:00Z",
            "generateName": format!("{rs}-"), "labels": labels,
            "annotations": { "kubectl.kubernetes.io/restartedAt": "2026-12-01T09:59:00Z" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                "uid": rs_uid, "controller": true, "blockOwnerDeletion": true }] },
        "spec": {
            "nodeName": "member-node-1", "serviceAccountName": "default", "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "containers": [{ "name": "main", "image": "registry.example.com/team/app:1.2.3",
                "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                "env": env,
                "resources": { "requests": { "cpu": "100m", "memory": "128Mi" }, "limits": { "memory": "256Mi" } },
                "volumeMounts": [{ "name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true }],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent" }],
            "volumes": [{ "name": "kube-api-access", "projected": { "defaultMode": 420, "sources": [
                { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } }] } }],
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }] },
        "status": { "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.244.1.10", "qosClass": "Burstable",
            "startTime": "2026-12-01T10:00:00Z",
            "conditions": conditions,
            "containerStatuses": [{ "name": "main", "ready": true, "started": true, "restartCount": 0,
                "image": "registry.example.com/team/app:1.2.3",
                "imageID": "registry.example.com/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "containerID": "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "state": { "running": { "startedAt": "2026-12-01T10:00:01Z" } } }] }
    })
}
