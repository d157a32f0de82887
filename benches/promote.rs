//! Promote/rollback benchmark against two real local clusters (`cargo bench --bench promote`).
//!
//! A namespace of `KPROMOTE_BENCH_DEPLOYMENTS` Deployments (default 100) with
//! `KPROMOTE_BENCH_REPLICAS` pods each (default 10) is promoted and rolled back; the restore
//! step's objects per second at the default concurrency is compared with restoring the same
//! objects one at a time (concurrency 1, same settle pauses), in the same run on the same clusters.
//! Figures are printed as a Markdown table for `benches/RESULTS.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kpromote_core::engine::apply::Restorer;
use kpromote_core::engine::detach::{TwinFactory, detach, mark_pods};
use kpromote_core::engine::{EngineOptions, Inventory, LiveCluster, Report, rollback::rollback};
use kpromote_core::journal::Journal;
use kpromote_core::plan::order::{DetachPlan, RestorePlan};
use kpromote_core::plan::transform::{Target, TransformContext};
use kpromote_testenv::{FakeKubelet, TestEnv, register_virtual_node};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

#[path = "../tests/support/mod.rs"]
mod support;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn build_namespace(client: &Client, kubelet: &FakeKubelet, deployments: usize, replicas: usize) {
    support::apps::create(
        client,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "bench" } }),
    )
    .await;
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "bench");
    for i in 0..deployments {
        let d = serde_json::from_value(json!({
            "metadata": { "name": format!("app-{i:03}") },
            "spec": { "replicas": replicas, "selector": { "matchLabels": { "app": format!("app-{i:03}") } },
                      "template": { "metadata": { "labels": { "app": format!("app-{i:03}") } },
                                    "spec": { "containers": [{ "name": "main", "image": "nginx:1.25" }] } } } }))
        .expect("deployment");
        api.create(&PostParams::default(), &d)
            .await
            .expect("create deployment");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let want = deployments * replicas;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n = pods.list(&ListParams::default()).await.expect("list").items.len();
        if n >= want {
            break;
        }
        assert!(Instant::now() < deadline, "only {n}/{want} pods after 10 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kubelet.start_pods("bench", "").await.expect("start pods");
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`: the restore's share of the machine.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// What one promote cost: detach+mark s, restore s, restored objects, machine CPU busy during
/// the restore (0..1), seconds of the restore spent in settle pauses.
struct Timings {
    detach_s: f64,
    restore_s: f64,
    restored: usize,
    restore_busy: f64,
    settle_s: f64,
}

/// Detach + mark + restore, timed separately.
async fn promote_timed(
    member: &LiveCluster,
    cp: &LiveCluster,
    inv: &Inventory,
    opts: &EngineOptions,
    dir: &std::path::Path,
    run: &str,
) -> Timings {
    let journal = Arc::new(Mutex::new(
        Journal::open(&dir.join("promote.journal"), run).expect("journal"),
    ));
    let report = Mutex::new(Report::default());
    let skipped = inv.skipped_by_restore("member");
    let t = Instant::now();
    detach(
        member,
        inv,
        &DetachPlan::build(&inv.graph, &skipped),
        &journal,
        opts,
        &report,
        None,
    )
    .await
    .expect("detach");
    let twins = TwinFactory::new(inv, "member");
    mark_pods(member, &twins, &skipped, &journal, opts, &report, None)
        .await
        .expect("mark");
    let detach_s = t.elapsed().as_secs_f64();
    let plan = RestorePlan::build(&inv.graph);
    let mut ctx = TransformContext::for_control_plane(inv.objects.values());
    let restorer = Restorer {
        target: cp,
        inv,
        kind: Target::ControlPlane {
            cluster_name: "member".into(),
        },
        journal: &journal,
        opts,
        step: "restore",
        stamp: true,
    };
    let settles = plan
        .levels
        .iter()
        .enumerate()
        .filter(|(i, level)| *i > 0 && level.height > 0)
        .count();
    let (busy0, total0) = cpu_jiffies();
    let t = Instant::now();
    restorer
        .run(&plan, &mut ctx, &report, None)
        .await
        .expect("restore");
    let restore_s = t.elapsed().as_secs_f64();
    let (busy1, total1) = cpu_jiffies();
    Timings {
        detach_s,
        restore_s,
        restored: report.into_inner().expect("report").created.len(),
        restore_busy: (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
        settle_s: settles as f64 * opts.settle.as_secs_f64(),
    }
}

fn main() {
    let deployments = env_usize("KPROMOTE_BENCH_DEPLOYMENTS", 100);
    let replicas = env_usize("KPROMOTE_BENCH_REPLICAS", 10);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let env = TestEnv::start(&["control-plane", "member"]).await.expect("clusters");
        let cp_client = env.cluster("control-plane").client().await.expect("client");
        let member_client = env.cluster("member").client().await.expect("client");
        register_virtual_node(&cp_client, "member").await.expect("node");
        let kubelet = FakeKubelet::register(&member_client, "member-node-1").await.expect("kubelet");
        let t = Instant::now();
        build_namespace(&member_client, &kubelet, deployments, replicas).await;
        eprintln!("built {deployments}x{replicas} in {:.1}s", t.elapsed().as_secs_f64());
        let member = LiveCluster::new("member", member_client.clone());
        let cp = LiveCluster::new("control plane", cp_client.clone());
        let mut rows = BTreeMap::new();
        for (label, opts) in [
            ("concurrency 16 (default)", EngineOptions::default()),
            ("one at a time", EngineOptions { concurrency: 1, ..EngineOptions::default() }),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = support::archiving::archive(&member_client, &["bench"], &[], dir.path()).await;
            let inv = Inventory::from_archive(&path).expect("inventory");
            let t = Instant::now();
            let timings = promote_timed(&member, &cp, &inv, &opts, dir.path(), label).await;
            let promote_s = t.elapsed().as_secs_f64();
            let journal = Arc::new(Mutex::new(Journal::open(&dir.path().join("rb.journal"), "rollback").expect("journal")));
            let t = Instant::now();
            rollback(&member, &cp, &inv, "member", &journal, &opts, None).await.expect("rollback");
            let rollback_s = t.elapsed().as_secs_f64();
            rows.insert(label, (inv.objects.len(), timings, promote_s, rollback_s));
            eprintln!("{label}: done");
        }
        println!(
            "| run | archived objects | detach+mark s | restored objects | restore s | restore objects/s | of it settle pauses s | objects/s without them | CPU busy during restore | promote s | rollback s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (label, (objects, t, promote_s, rollback_s)) in &rows {
            println!(
                "| {label} | {objects} | {:.1} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {:.0} % | {promote_s:.1} | {rollback_s:.1} |",
                t.detach_s,
                t.restored,
                t.restore_s,
                t.restored as f64 / t.restore_s,
                t.settle_s,
                t.restored as f64 / (t.restore_s - t.settle_s),
                t.restore_busy * 100.0,
            );
        }
        let rate = |t: &Timings| t.restored as f64 / t.restore_s;
        let rate_working = |t: &Timings| t.restored as f64 / (t.restore_s - t.settle_s);
        let (fast, slow) = (&rows["concurrency 16 (default)"].1, &rows["one at a time"].1);
        println!("\nrestore speed-up: {:.2}x", rate(fast) / rate(slow));
        println!("restore speed-up without the settle pauses: {:.2}x", rate_working(fast) / rate_working(slow));
    });
}
