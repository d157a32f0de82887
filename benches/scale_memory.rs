//! Peak memory of the real CLI against the size of one namespace (issue 20): `kpromote backup`,
//! `kpromote promote` and `kpromote rollback`, each a process of its own under `/usr/bin/time`,
//! on namespaces of the same composition at several sizes, against two real clusters
//! (`tests/testenv/build.sh`). Flat means the largest size needs at most 1.5x the smallest's
//! peak.
//!
//! `cargo bench --bench scale_memory` (sizes: `KPROMOTE_BENCH_OBJECTS=2000,20000`; the
//! workloads: `KPROMOTE_BENCH_DEPLOYMENTS=10`, `KPROMOTE_BENCH_STATEFULSETS=0`, each of
//! `KPROMOTE_BENCH_REPLICAS=2` pods). Each phase's API requests on both clusters (every client's,
//! the controller managers' included) are reported per archived object. With
//! `KPROMOTE_BENCH_CONTROLLER=1` each namespace then goes through the controller too: a
//! `kpromote controller` process of its own per size, a PromotePolicy promoting the namespace
//! and then rolling it back, the process's peak RSS read before it is stopped.
//!
//! Each namespace is what a platform team's looks like: mostly ConfigMaps and Secrets of about
//! 2 KiB each (Helm keeps a Secret per release revision), half and half, plus a few Deployments
//! whose pods a fake kubelet runs. The objects are created directly through the member's API
//! server by many concurrent POSTs. Every promote and rollback is checked for the promise: the
//! member's pods keep their UIDs, restart counts and nodes, and no controller made a pod or a
//! ReplicaSet in place of one (`support::apps::Snapshot`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use kpromote_core::policy::Phase;
use kpromote_testenv::{Cluster, FakeKubelet};
use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

mod common;
use common::{Requests, both_between, both_requests, describe, env_usize, kpromote_at, measured};

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/controller_env/mod.rs"]
mod controller_env;

/// About `len` bytes of text that varies from object to object, like real configuration.
fn payload(i: usize, len: usize) -> String {
    let mut seed = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = String::with_capacity(len + 32);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.push_str(&format!("setting.{}={:016x}\n", seed % 97, seed));
    }
    out
}

/// ConfigMap or Secret `i` of namespace `ns`, about 2 KiB.
fn config_object(ns: &str, i: usize) -> (&'static str, Value) {
    let name = format!("cfg-{i:06}");
    let labels = json!({ "app": format!("app-{}", i % 10), "release": format!("r{}", i % 7) });
    if i.is_multiple_of(2) {
        (
            "configmaps",
            json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": name, "namespace": ns, "labels": labels },
                "data": { "application.properties": payload(i, 1900) } }),
        )
    } else {
        (
            "secrets",
            json!({ "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": { "name": name, "namespace": ns, "labels": labels },
                "stringData": { "release": payload(i, 1400) } }),
        )
    }
}

/// Builds namespace `ns` of about `objects` objects in the member (see the module docs) and
/// waits until the fake kubelet runs its pods.
async fn build_namespace(
    client: &Client,
    kubelet: &FakeKubelet,
    ns: &str,
    objects: usize,
    workloads: Workloads,
) {
    let Workloads {
        deployments,
        statefulsets,
        replicas,
    } = workloads;
    support::apps::create(
        client,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
    )
    .await;
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), ns);
    for d in 0..deployments {
        let app = format!("web-{d:02}");
        let deployment = serde_json::from_value(json!({
            "metadata": { "name": app },
            "spec": { "replicas": replicas, "selector": { "matchLabels": { "app": app } },
                      "template": { "metadata": { "labels": { "app": app } },
                                    "spec": { "containers": [{ "name": "main", "image": "nginx:1.25" }] } } } }))
        .expect("deployment");
        api.create(&PostParams::default(), &deployment)
            .await
            .expect("create deployment");
    }
    // Pods started all at once (the fake kubelet makes them ready only when told), each behind
    // a headless Service of its name.
    for s in 0..statefulsets {
        let app = format!("db-{s:02}");
        support::apps::create(
            client,
            json!({ "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": app, "namespace": ns },
                "spec": { "clusterIP": "None", "selector": { "app": app },
                          "ports": [{ "port": 5432 }] } }),
        )
        .await;
        support::apps::create(
            client,
            json!({ "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": { "name": app, "namespace": ns },
                "spec": { "replicas": replicas, "serviceName": app,
                          "podManagementPolicy": "Parallel",
                          "selector": { "matchLabels": { "app": app } },
                          "template": { "metadata": { "labels": { "app": app } },
                                        "spec": { "containers": [{ "name": "main", "image": "postgres:16" }] } } } }),
        )
        .await;
    }
    // The namespace's own ServiceAccount and root CA ConfigMap, each Deployment's ReplicaSet
    // and pods, and each StatefulSet's Service, revision and pods count too.
    let configs = objects.saturating_sub(2 + deployments * (2 + replicas) + statefulsets * (3 + replicas));
    let t = Instant::now();
    let resource = |plural: &str, kind: &str| {
        kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("", "v1", kind),
            plural,
        )
    };
    let (configmaps, secrets) = (resource("configmaps", "ConfigMap"), resource("secrets", "Secret"));
    futures::stream::iter(0..configs)
        .map(|i| {
            let (plural, value) = config_object(ns, i);
            let ar = if plural == "configmaps" {
                &configmaps
            } else {
                &secrets
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
            async move {
                let object: DynamicObject = serde_json::from_value(value).expect("object");
                api.create(&PostParams::default(), &object).await.map(|_| ())
            }
        })
        .buffer_unordered(48)
        .try_collect::<()>()
        .await
        .expect("create configuration");
    eprintln!(
        "{ns}: {configs} ConfigMaps and Secrets in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    support::apps::start_all_pods(client, kubelet, ns, (deployments + statefulsets) * replicas).await;
}

/// The namespace's workloads (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Workloads {
    deployments: usize,
    statefulsets: usize,
    replicas: usize,
}

/// The kpromote binary with the kubeconfig flags of both clusters.
fn kpromote(subcommand: &str, member: &Cluster, cp: &Cluster) -> Command {
    kpromote_at(Path::new(env!("CARGO_BIN_EXE_kpromote")), subcommand, member, cp)
}

/// The archive promote wrote in `dir`.
fn archive_in(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("backup dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "zst"))
        .expect("an archive")
}

/// How many objects an archive holds (`kpromote archive`'s own count is not needed: the index).
fn archived_objects(path: &Path) -> usize {
    kpromote_archive::ArchiveReader::open(path)
        .expect("archive")
        .records()
        .expect("index")
        .count()
}

/// One size's figures: (peak MiB, seconds) of each command.
struct Row {
    objects: usize,
    backup: (f64, f64),
    promote: (f64, f64),
    rollback: (f64, f64),
    /// The controller process through the policy's promote and rollback: (peak MiB, promote
    /// s, rollback s).
    controller: Option<(f64, f64, f64)>,
    /// Each phase's API requests: (phase, member's, control plane's).
    requests: Vec<(&'static str, Requests, Requests)>,
}

/// A PromotePolicy `name` promoting namespace `ns` of member `member`, or rolling it back.
fn policy(name: &str, ns: &str, rollback: bool) -> String {
    format!(
        "apiVersion: kosmos.io/v1alpha1\nkind: PromotePolicy\nmetadata:\n  name: {name}\nspec:\n  \
         rollback: \"{rollback}\"\n  includedNamespaces: [{ns}]\n  clusterName: member\n  \
         excludedNamespaceScopedResources: [events, events.events.k8s.io, endpoints, \
         endpointslices.discovery.k8s.io]\n"
    )
}

/// Namespace `ns` promoted and rolled back by a controller process of its own, the promise
/// checked after each against `before`: (peak MiB, promote s, rollback s).
async fn through_controller(
    env: &controller_env::Env,
    ns: &str,
    before: &support::apps::Snapshot,
    requests: &mut Vec<(&'static str, Requests, Requests)>,
) -> (f64, f64, f64) {
    let name = format!("policy-{ns}");
    let controller = env.controller(ns, &[], &[]);
    let t = Instant::now();
    let counted = both_requests(&env.member, &env.cp).await;
    env.apply(&policy(&name, ns, false));
    env.wait_for(&controller, &name, Phase::Completed, 7200).await;
    let promote = t.elapsed().as_secs_f64();
    let (member, cp) = both_between(&counted, &both_requests(&env.member, &env.cp).await);
    requests.push(("controller: backup + promote", member, cp));
    let after = support::apps::snapshot(&env.member, ns).await;
    assert_eq!(
        after.pods, before.pods,
        "{ns}: the member's pods after the controller's promote"
    );
    support::apps::snapshot(&env.cp, ns)
        .await
        .assert_promoted_from(before, ns);
    let t = Instant::now();
    let counted = both_requests(&env.member, &env.cp).await;
    env.apply(&policy(&name, ns, true));
    env.wait_for(&controller, &name, Phase::RolledBack, 7200).await;
    let rollback = t.elapsed().as_secs_f64();
    let (member, cp) = both_between(&counted, &both_requests(&env.member, &env.cp).await);
    requests.push(("controller: rollback", member, cp));
    support::apps::snapshot(&env.member, ns)
        .await
        .assert_rolled_back_to(before, ns);
    (controller.peak_rss_mib(), promote, rollback)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("KPROMOTE_BENCH_OBJECTS")
        .unwrap_or_else(|_| "2000,20000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a number of objects"))
        .collect();
    let workloads = Workloads {
        deployments: env_usize("KPROMOTE_BENCH_DEPLOYMENTS", 10),
        statefulsets: env_usize("KPROMOTE_BENCH_STATEFULSETS", 0),
        replicas: env_usize("KPROMOTE_BENCH_REPLICAS", 2),
    };
    let via_controller = std::env::var_os("KPROMOTE_BENCH_CONTROLLER").is_some();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // The controller's environment: the clusters, the virtual node, the CRDs and the member
    // registered as a Kosmos Cluster (the CLI needs only the first two).
    let ctl = runtime.block_on(controller_env::Env::start());
    let (member, cp) = (ctl.env.cluster("member"), ctl.env.cluster("control-plane"));
    let (member_client, cp_client, kubelet) = (&ctl.member, &ctl.cp, &ctl.kubelet);
    let mut rows = Vec::new();
    for &n in &sizes {
        let ns = format!("scale-{n}");
        runtime.block_on(build_namespace(member_client, kubelet, &ns, n, workloads));
        let mut requests = Vec::new();
        let count = || runtime.block_on(both_requests(member_client, cp_client));
        let before = runtime.block_on(support::apps::snapshot(member_client, &ns));
        let dir = tempfile::tempdir().expect("tempdir");

        let (backup_dir, promote_dir) = (dir.path().join("backup"), dir.path().join("promote"));
        for dir in [&backup_dir, &promote_dir] {
            std::fs::create_dir(dir).expect("directory");
        }
        let counted = count();
        let backup = measured(
            Command::new(env!("CARGO_BIN_EXE_kpromote"))
                .arg("backup")
                .arg("--kubeconfig")
                .arg(member.kubeconfig_path())
                .args(["-n", &ns, "--cluster-name", "member", "--output-dir"])
                .arg(&backup_dir),
        );
        let (member_requests, cp_requests) = both_between(&counted, &count());
        requests.push(("backup", member_requests, cp_requests));
        let objects = archived_objects(&archive_in(&backup_dir));
        eprintln!("{ns}: backup of {objects} objects: {backup:?}");

        let counted = count();
        let promote = measured(
            kpromote("promote", member, cp)
                .args(["-n", &ns, "--backup-dir"])
                .arg(&promote_dir),
        );
        let (member_requests, cp_requests) = both_between(&counted, &count());
        requests.push(("backup + promote", member_requests, cp_requests));
        eprintln!("{ns}: promote {promote:?}");
        runtime.block_on(async {
            let after = support::apps::snapshot(member_client, &ns).await;
            assert_eq!(after.pods, before.pods, "{ns}: the member's pods after promote");
            support::apps::snapshot(cp_client, &ns)
                .await
                .assert_promoted_from(&before, &ns);
        });

        let archive = archive_in(&promote_dir);
        let counted = count();
        let rollback = measured(kpromote("rollback", member, cp).arg("--archive").arg(&archive));
        let (member_requests, cp_requests) = both_between(&counted, &count());
        requests.push(("rollback", member_requests, cp_requests));
        eprintln!("{ns}: rollback {rollback:?}");
        runtime.block_on(async {
            support::apps::snapshot(member_client, &ns)
                .await
                .assert_rolled_back_to(&before, &ns);
        });
        let controller = via_controller.then(|| {
            let through = runtime.block_on(through_controller(&ctl, &ns, &before, &mut requests));
            eprintln!("{ns}: controller {through:?}");
            through
        });
        rows.push(Row {
            objects,
            backup,
            promote,
            rollback,
            controller,
            requests,
        });
    }
    let Workloads {
        deployments,
        statefulsets,
        replicas,
    } = workloads;
    println!(
        "\n{deployments} Deployments and {statefulsets} StatefulSets x {replicas} pods, the rest ConfigMaps and \
         Secrets of about 2 KiB\n"
    );
    println!(
        "| archived objects | `kpromote backup`: peak MiB, s | `kpromote promote`: peak MiB, s | `kpromote rollback`: peak MiB, s |"
    );
    println!("|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.0}, {:.1} | {:.0}, {:.1} | {:.0}, {:.1} |",
            row.objects,
            row.backup.0,
            row.backup.1,
            row.promote.0,
            row.promote.1,
            row.rollback.0,
            row.rollback.1
        );
    }
    if via_controller {
        println!(
            "\n| archived objects | `kpromote controller` peak MiB | policy promote s | policy rollback s |"
        );
        println!("|---|---|---|---|");
        for row in &rows {
            if let Some((peak, promote, rollback)) = row.controller {
                println!("| {} | {peak:.0} | {promote:.1} | {rollback:.1} |", row.objects);
            }
        }
    }
    println!(
        "\n| archived objects | phase | member requests | control-plane requests | per archived object |"
    );
    println!("|---|---|---|---|---|");
    for row in &rows {
        for (phase, member, cp) in &row.requests {
            let total: f64 = member.values().chain(cp.values()).sum();
            println!(
                "| {} | {phase} | {} | {} | {:.2} |",
                row.objects,
                describe(member),
                describe(cp),
                total / row.objects as f64
            );
        }
    }
    if let [first, .., last] = rows.as_slice() {
        let ratio = |f: fn(&Row) -> (f64, f64)| f(last).0 / f(first).0;
        println!(
            "\npeak from {} to {} objects: backup {:.2}x, promote {:.2}x, rollback {:.2}x (flat: at most 1.5x)",
            first.objects,
            last.objects,
            ratio(|r| r.backup),
            ratio(|r| r.promote),
            ratio(|r| r.rollback)
        );
        if let (Some(a), Some(b)) = (first.controller, last.controller) {
            println!("controller process: {:.2}x", b.0 / a.0);
        }
    }
}
