//! Promote/rollback benchmark against two real local clusters (`cargo bench --bench promote`).
//!
//! A namespace of `KPROMOTE_BENCH_DEPLOYMENTS` Deployments (default 100) with
//! `KPROMOTE_BENCH_REPLICAS` pods each (default 10) is backed up (the real backup), promoted and
//! rolled back, each phase timed with this process's peak RSS. In the same run on the same
//! clusters, the restore's objects per second are compared with the physical limit (the same
//! objects created by a raw client at the same concurrency, [`raw_create`]) and, unless
//! `KPROMOTE_BENCH_SERIAL=0`, with the restore one object at a time. Rollback reads the archive
//! as the CLI does (`Inventory::for_rollback`); the raw run comes last, so that nothing it
//! prepared is in the phases' memory figures. Figures are printed as Markdown tables for
//! `benches/RESULTS.md`. Between the phases (untimed) it checks the promise: the control plane
//! holds the same pods, ReplicaSets and revisions and none a controller made, and after rollback
//! the member's pods are the very same (UIDs, restart counts) — so
//! `KPROMOTE_BENCH_DEPLOYMENTS=1 KPROMOTE_BENCH_REPLICAS=3000 KPROMOTE_BENCH_SERIAL=0
//! KPROMOTE_TESTENV_PROFILE=production cargo bench --bench promote` is the 3,000-replica
//! Deployment detached and re-attached at production rate limits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kpromote_core::engine::apply::{Restorer, Scope};
use kpromote_core::engine::detach::{TwinFactory, detach, mark_pods};
use kpromote_core::engine::{EngineOptions, Inventory, LiveCluster, Report, Run, rollback::rollback};
use kpromote_core::journal::Journal;
use kpromote_core::plan::transform::{Target, TransformContext};
use kpromote_testenv::{FakeKubelet, NodeLease, Profile, TestEnv, register_virtual_node};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

mod common;
use common::{Requests, api_requests, both_between, both_requests, describe, env_usize, requests_between};

#[path = "../tests/support/mod.rs"]
mod support;

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
    support::apps::start_all_pods(client, kubelet, "bench", deployments * replicas).await;
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

/// CPU time this process has used, in clock ticks (utime + stime of `/proc/self/stat`).
fn own_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // utime and stime are fields 14 and 15 of the line; here, after the state (a letter, not
    // parsed) and fields 4..13, at indices 10 and 11.
    fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0)
}

/// What one promote cost: detach+mark s, restore s, restored objects, machine CPU busy during
/// the restore (0..1), this process's share of the machine's busy time during the restore.
struct Timings {
    detach_s: f64,
    /// Requests served during detach + mark by the member's API server and the control plane's.
    detach_requests: (Requests, Requests),
    restore_s: f64,
    restored: usize,
    restore_busy: f64,
    restore_own: f64,
    restore_requests: std::collections::BTreeMap<String, f64>,
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
    let before = both_requests(&member.client, &cp.client).await;
    let t = Instant::now();
    let progress = timeline(t);
    let twins = TwinFactory::new(inv, "member");
    detach(
        member,
        &twins,
        &inv.detach_plan(),
        &journal,
        opts,
        &report,
        Some(&progress),
    )
    .await
    .expect("detach");
    mark_pods(member, &twins, &journal, opts, &report, Some(&progress))
        .await
        .expect("mark");
    let detach_s = t.elapsed().as_secs_f64();
    let detach_requests = both_between(&before, &both_requests(&member.client, &cp.client).await);
    let plan = inv.restore_plan();
    let mut ctx = inv.control_plane_context();
    let restorer = Restorer::into_control_plane(cp, "member", inv, &journal, opts);
    let (busy0, total0) = cpu_jiffies();
    let own0 = own_cpu_ticks();
    let requests0 = api_requests(&cp.client).await;
    let t = Instant::now();
    restorer
        .run(&plan, Scope::Archive, &mut ctx, &report, Some(&progress))
        .await
        .expect("restore");
    let restore_s = t.elapsed().as_secs_f64();
    let (busy1, total1) = cpu_jiffies();
    let own1 = own_cpu_ticks();
    let restore_requests = requests_between(&requests0, &api_requests(&cp.client).await);
    Timings {
        detach_s,
        detach_requests,
        restore_s,
        restored: usize::try_from(report.into_inner().expect("report").created.len()).expect("count"),
        restore_busy: (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
        restore_own: (own1 - own0) as f64 / (busy1 - busy0).max(1) as f64,
        restore_requests,
    }
}

/// A progress callback that prints each step's progress with the seconds since `start`, so a
/// run shows where its time goes (`KPROMOTE_BENCH_TIMELINE=1`; silent otherwise).
fn timeline(start: Instant) -> kpromote_core::engine::ProgressFn {
    let on = std::env::var_os("KPROMOTE_BENCH_TIMELINE").is_some();
    Arc::new(move |step: &str, done: u64, total: u64| {
        if on {
            eprintln!("{:>8.2}s {step} {done}/{total}", start.elapsed().as_secs_f64());
        }
    })
}

/// Peak resident memory of this process since the last [`reset_peak_rss`], in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Resets the peak so the next phase is measured alone (Linux `clear_refs` value 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The physical limit of the restore: the same objects the restore creates (prepared by the same
/// transforms beforehand, untimed), POSTed by a plain client at the same concurrency with no
/// order, no waits, no reads and no journal. The namespace goes first (nothing else can be
/// created before it). The control plane's controller manager is paused meanwhile, so no
/// controller adds work of its own (a Deployment seen before its ReplicaSet would create one).
/// Returns (objects, seconds); the namespace is deleted afterwards.
async fn raw_create(
    cp_cluster: &kpromote_testenv::Cluster,
    cp: &LiveCluster,
    archive: &std::path::Path,
    concurrency: usize,
) -> (usize, f64, std::collections::BTreeMap<String, f64>) {
    use futures::TryStreamExt;
    use kpromote_core::plan::transform::{Prepared, prepare};
    let target = Target::ControlPlane {
        cluster_name: "member".into(),
    };
    // Every body at once: the raw client is timed, not measured for memory.
    let reader = kpromote_archive::ArchiveReader::open(archive).expect("archive");
    let objects: Vec<(kpromote_model::object_key::ObjectKey, serde_json::Value)> = reader
        .objects()
        .expect("objects")
        .map(|o| {
            let o = o.expect("object");
            (o.record.key(), o.value().expect("json"))
        })
        .collect();
    let ctx = TransformContext::for_control_plane(objects.iter().map(|(_, v)| v));
    let mut namespaces = Vec::new();
    let mut rest = Vec::new();
    for (key, archived) in &objects {
        // Pods are admitted only once their ServiceAccount exists, and with the controller
        // manager paused nothing makes `default`: accounts go first, with the namespace.
        if key.is("", "serviceaccounts") {
            let object = json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                                 "metadata": { "name": key.name, "namespace": key.namespace } });
            let api = cp.api_for(key, &object).expect("api");
            namespaces.push((api, serde_json::from_value(object).expect("object")));
            continue;
        }
        if let Ok(Prepared::Create(c)) = prepare(archived, &target, &ctx) {
            let api = cp.api_for(key, &c.object).expect("api");
            let object: kube::api::DynamicObject = serde_json::from_value(c.object).expect("object");
            if key.is("", "namespaces") {
                namespaces.push((api, object));
            } else {
                rest.push((api, object));
            }
        }
    }
    let n = namespaces.len() + rest.len();
    cp_cluster.pause_controller_manager().expect("pause");
    let requests0 = api_requests(&cp.client).await;
    let t = Instant::now();
    for (api, object) in &namespaces {
        api.create(&PostParams::default(), object)
            .await
            .expect("raw create namespace");
    }
    futures::stream::iter(rest.iter().map(Ok::<_, kube::Error>))
        .try_for_each_concurrent(concurrency, |(api, object)| async move {
            api.create(&PostParams::default(), object).await.map(|_| ())
        })
        .await
        .expect("raw create");
    let seconds = t.elapsed().as_secs_f64();
    let requests = requests_between(&requests0, &api_requests(&cp.client).await);
    cp_cluster.resume_controller_manager().expect("resume");
    // The namespace goes first (no controller creates in a terminating namespace); its pods,
    // bound to the virtual node, go only with grace period 0 (no kubelet answers for it), as
    // rollback's teardown deletes them.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.client.clone());
    let now = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    for (_, object) in &namespaces {
        if object.types.as_ref().is_none_or(|t| t.kind != "Namespace") {
            continue;
        }
        let name = object.metadata.name.clone().unwrap_or_default();
        nss.delete(&name, &Default::default())
            .await
            .expect("delete namespace");
        let pods: Api<Pod> = Api::namespaced(cp.client.clone(), &name);
        let deadline = Instant::now() + Duration::from_secs(900);
        while nss.get_opt(&name).await.expect("get namespace").is_some() {
            assert!(
                Instant::now() < deadline,
                "namespace {name} not gone in 15 minutes"
            );
            // One call may outlast the API server's request timeout on thousands of pods.
            let _ = pods.delete_collection(&now, &ListParams::default()).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    (n, seconds, requests)
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let deployments = env_usize("KPROMOTE_BENCH_DEPLOYMENTS", 100);
    let replicas = env_usize("KPROMOTE_BENCH_REPLICAS", 10);
    let serial = env_usize("KPROMOTE_BENCH_SERIAL", 1) == 1;
    // The machine is shared: its load when the run starts goes with the figures.
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let profile = Profile::from_env().expect("profile");
        let env = TestEnv::start(&["control-plane", "member"]).await.expect("clusters");
        let cp_client = env.cluster("control-plane").client().await.expect("client");
        let member_client = env.cluster("member").client().await.expect("client");
        // As in Pair::start: the control plane's own node, the virtual node with its lease kept
        // (no clustertree runs here), the member's node.
        let _cp_node = FakeKubelet::register(&cp_client, "control-plane-node-1").await.expect("node");
        register_virtual_node(&cp_client, "member").await.expect("node");
        let _virtual_lease = NodeLease::keep(&cp_client, "kosmos-member").await.expect("lease");
        let kubelet = FakeKubelet::register(&member_client, "member-node-1").await.expect("kubelet");
        let t = Instant::now();
        build_namespace(&member_client, &kubelet, deployments, replicas).await;
        eprintln!("built {deployments}x{replicas} in {:.1}s", t.elapsed().as_secs_f64());
        let member = LiveCluster::new("member", member_client.clone());
        let cp = LiveCluster::new("control plane", cp_client.clone());
        // The promise, checked untimed between the phases: no pod replaced or restarted.
        let before = support::apps::snapshot(&member_client, "bench").await;

        // The end-to-end promote with its phases: the real backup, the inventory, detach + mark,
        // restore, then rollback; peak RSS of this process per phase (the clusters are other
        // processes).
        let dir = tempfile::tempdir().expect("tempdir");
        reset_peak_rss();
        let requests0 = both_requests(&member.client, &cp.client).await;
        let t = Instant::now();
        let request = kpromote_core::backup::BackupRequest::new("bench", vec!["bench".to_owned()])
            .excluded(kpromote_core::resources::DEFAULT_EXCLUDED_RESOURCES.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>())
            .backup_dir(dir.path())
            .cluster_name("member");
        let backup = kpromote_core::backup::run(&member_client, &request).await.expect("backup");
        let backup_s = t.elapsed().as_secs_f64();
        let backup_requests = both_between(&requests0, &both_requests(&member.client, &cp.client).await);
        let backup_rss = peak_rss_mib();
        reset_peak_rss();
        let t = Instant::now();
        let inv = Inventory::for_promote(&backup.path).expect("inventory");
        let load_s = t.elapsed().as_secs_f64();
        let load_rss = peak_rss_mib();
        let opts = EngineOptions::default();
        reset_peak_rss();
        let timings = promote_timed(&member, &cp, &inv, &opts, dir.path(), "default").await;
        let promote_rss = peak_rss_mib();
        let objects = inv.len();
        let promoted = support::apps::snapshot(&cp_client, "bench").await;
        promoted.assert_promoted_from(&before, "bench promote");
        assert_eq!(
            support::apps::snapshot(&member_client, "bench").await.pods,
            before.pods,
            "bench promote: the member's pods are the same, not restarted"
        );
        // Rollback reads the archive as the CLI and the controller do (streaming), with the
        // promote's inventory gone.
        drop(inv);
        let journal = Arc::new(Mutex::new(Journal::open(&dir.path().join("rb.journal"), "rollback").expect("journal")));
        reset_peak_rss();
        let requests0 = both_requests(&member.client, &cp.client).await;
        let t = Instant::now();
        let lean = Inventory::for_rollback(&backup.path).expect("rollback inventory");
        let progress = timeline(t);
        let run = Run::new(&member, &cp, &lean, "member", &opts).reporting(&progress);
        rollback(&run, &journal).await.expect("rollback");
        let rollback_s = t.elapsed().as_secs_f64();
        let rollback_requests = both_between(&requests0, &both_requests(&member.client, &cp.client).await);
        let rollback_rss = peak_rss_mib();
        drop(lean);
        support::apps::snapshot(&member_client, "bench")
            .await
            .assert_rolled_back_to(&before, "bench rollback");
        eprintln!("zero restarts: {} pods kept their UIDs and restart counts through promote and rollback", before.pods.len());
        // The raw client last, so that what it prepares is not in the phases' memory figures.
        let (raw_n, raw_s, raw_requests) =
            raw_create(env.cluster("control-plane"), &cp, &backup.path, opts.concurrency).await;
        eprintln!("raw: {raw_n} objects in {raw_s:.1}s");
        println!(
            "\n{objects} archived objects ({deployments} Deployments x {replicas} pods), {profile} profile, \
             load average before the run {load}\n"
        );
        println!("| phase | wall s | objects/s | member API requests | control-plane API requests | peak RSS MiB |");
        println!("|---|---|---|---|---|---|");
        let none = (Requests::new(), Requests::new());
        let row = |phase: &str, seconds: f64, n: usize, requests: &(Requests, Requests), rss: f64| {
            println!(
                "| {phase} | {seconds:.1} | {:.0} | {} | {} | {rss:.0} |",
                n as f64 / seconds,
                describe(&requests.0),
                describe(&requests.1)
            );
        };
        row("backup (real, 6 lists at once)", backup_s, objects, &backup_requests, backup_rss);
        row("inventory (read + verify + graph)", load_s, objects, &none, load_rss);
        row("detach + mark", timings.detach_s, objects, &timings.detach_requests, promote_rss);
        let restore_requests = (Requests::new(), timings.restore_requests.clone());
        row("restore", timings.restore_s, timings.restored, &restore_requests, promote_rss);
        let promote_s = backup_s + load_s + timings.detach_s + timings.restore_s;
        row(
            "promote end to end (backup + inventory + detach + restore)",
            promote_s,
            objects,
            &none,
            backup_rss.max(load_rss).max(promote_rss),
        );
        row("rollback", rollback_s, objects, &rollback_requests, rollback_rss);
        let restore_rate = timings.restored as f64 / timings.restore_s;
        let raw_rate = raw_n as f64 / raw_s;
        println!("\n| creation of the restored objects | objects | s | objects/s |");
        println!("|---|---|---|---|");
        println!("| raw client, concurrency {}, no order (physical limit) | {raw_n} | {raw_s:.1} | {raw_rate:.0} |", opts.concurrency);
        println!("| restore, concurrency {} | {} | {:.1} | {restore_rate:.0} |", opts.concurrency, timings.restored, timings.restore_s);
        if serial {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = support::archiving::archive(&member_client, &["bench"], &[], dir.path()).await;
            let inv = Inventory::for_promote(&path).expect("inventory");
            let opts = EngineOptions { concurrency: 1, ..EngineOptions::default() };
            let one = promote_timed(&member, &cp, &inv, &opts, dir.path(), "serial").await;
            let journal = Arc::new(Mutex::new(Journal::open(&dir.path().join("rb.journal"), "rollback").expect("journal")));
            let run = Run::new(&member, &cp, &inv, "member", &opts);
            rollback(&run, &journal).await.expect("rollback");
            let one_rate = one.restored as f64 / one.restore_s;
            println!("| restore, one at a time | {} | {:.1} | {one_rate:.0} |", one.restored, one.restore_s);
            println!("\nrestore ÷ one at a time: {:.2}x", restore_rate / one_rate);
        }
        println!("restore ÷ raw client: {:.2}x", restore_rate / raw_rate);
        println!(
            "promote end to end: {:.1}x the raw client's time; rollback: {:.1}x",
            promote_s / raw_s,
            rollback_s / raw_s
        );
        println!(
            "CPU busy during restore: {:.0} %, of which kpromote {:.0} %",
            timings.restore_busy * 100.0,
            timings.restore_own * 100.0
        );
        // What the control plane's API server did for each created object, every client's
        // requests counted (the raw run's with the controller manager paused).
        println!("\n| control-plane API requests per created object | raw client | restore |");
        println!("|---|---|---|");
        let verbs: std::collections::BTreeSet<&String> =
            raw_requests.keys().chain(timings.restore_requests.keys()).collect();
        let per = |m: &std::collections::BTreeMap<String, f64>, verb: &str, n: usize| {
            m.get(verb).copied().unwrap_or(0.0) / n as f64
        };
        for verb in verbs {
            println!(
                "| {verb} | {:.2} | {:.2} |",
                per(&raw_requests, verb, raw_n),
                per(&timings.restore_requests, verb, timings.restored)
            );
        }
        println!(
            "| all | {:.2} | {:.2} |",
            raw_requests.values().sum::<f64>() / raw_n as f64,
            timings.restore_requests.values().sum::<f64>() / timings.restored as f64
        );
    });
}
