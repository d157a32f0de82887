//! Promote and rollback on the rig's production profile (`Profile::Production`): controller
//! managers at their default client rate limits, with the node-lifecycle and taint-eviction
//! controllers on, so a node whose lease goes stale is tainted and its pods evicted — as in a
//! real install, where Kosmos clustertree keeps the virtual node's status and lease.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kpromote_core::engine::EngineOptions;
use kpromote_testenv::{ClusterOptions, Profile};
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::json;
use support::pair::Pair;
use support::promotion::Promotion;
use support::{apps, wait_for};

/// kube-controller-manager's default `--node-monitor-grace-period` (v1.35): a node whose lease is
/// older than this is marked unreachable and tainted `NoExecute`.
const NODE_MONITOR_GRACE: Duration = Duration::from_secs(50);
/// How long the test's pods tolerate an unreachable or not-ready node before the taint-eviction
/// controller evicts them: their own tolerations, as a user may set them (the admission default
/// is 300 s), so that the test outlasts the eviction timeout in minutes, not ten.
const TOLERATION_SECONDS: i64 = 10;
/// Taints the node-lifecycle controller puts on a node whose lease went stale.
const STALE_NODE_TAINTS: &[&str] = &["node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"];

/// A Deployment of `replicas` pods in `ns` whose pods are evicted [`TOLERATION_SECONDS`] after
/// their node goes stale, running.
async fn impatient_app(pair: &Pair, ns: &str, replicas: usize) {
    apps::namespace(&pair.member, ns).await;
    let tolerations: Vec<_> = STALE_NODE_TAINTS
        .iter()
        .map(|key| {
            json!({ "key": key, "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": TOLERATION_SECONDS })
        })
        .collect();
    apps::create(
        &pair.member,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": ns },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": {
                        "tolerations": tolerations,
                        "containers": [{ "name": "main", "image": "nginx:1.27" }],
                    },
                },
            },
        }),
    )
    .await;
    apps::run_pods(&pair.member, &pair.kubelet, ns, "app=web", replicas).await;
}

/// Pod name → UID of the pods of `ns` not being deleted.
async fn live_pods(client: &Client, ns: &str) -> std::collections::BTreeMap<String, String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.metadata.name.unwrap(), p.metadata.uid.unwrap()))
        .collect()
}

/// The taints of node `name` the node-lifecycle controller puts on a stale node.
async fn stale_taints(client: &Client, name: &str) -> Vec<String> {
    let node = Api::<Node>::all(client.clone()).get(name).await.unwrap();
    node.spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| STALE_NODE_TAINTS.contains(&t.key.as_str()))
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect()
}

#[tokio::test]
async fn promoted_pods_outlive_the_eviction_timeouts_while_clustertree_keeps_the_virtual_node() {
    let mut pair = Pair::start_with_kosmos_in(&ClusterOptions::of(Profile::Production)).await;
    let ns = "patient";
    impatient_app(&pair, ns, 3).await;
    let before = apps::snapshot(&pair.member, ns).await;

    let run = Promotion::archive(&pair, &[ns], &[]).await;
    let opts = EngineOptions::default();
    run.promote_with(&opts, false).await.unwrap();
    let promoted = live_pods(&pair.cp, ns).await;
    assert_eq!(promoted.len(), 3, "{promoted:?}");

    // Longer than a stale lease takes to taint the node and the taint to evict these pods.
    tokio::time::sleep(NODE_MONITOR_GRACE + Duration::from_secs(TOLERATION_SECONDS as u64 + 30)).await;
    pair.kosmos_mut().check_running().unwrap();
    let lease = Api::<Lease>::namespaced(pair.cp.clone(), "kube-node-lease")
        .get("kosmos-member")
        .await
        .unwrap();
    let renewed = lease.spec.and_then(|s| s.renew_time).unwrap().0;
    let age = jiff::Timestamp::now().duration_since(renewed);
    assert!(
        age < jiff::SignedDuration::from_secs(30),
        "the virtual node's lease was last renewed {age:?} ago"
    );
    let managers: Vec<String> = lease
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert!(
        !managers.iter().any(|m| m == "kpromote-testenv"),
        "the rig, not clustertree, wrote the virtual node's lease: {managers:?}"
    );
    assert_eq!(
        stale_taints(&pair.cp, "kosmos-member").await,
        Vec::<String>::new()
    );
    assert_eq!(
        live_pods(&pair.cp, ns).await,
        promoted,
        "control-plane pods evicted or replaced"
    );
    let after = apps::snapshot(&pair.member, ns).await;
    assert_eq!(
        after.pods, before.pods,
        "same member pods, same UIDs, no restarts"
    );

    run.rollback("rollback.journal", &opts).await.unwrap();
    pair.assert_rolled_back(ns, &before, "rollback on the production profile")
        .await;

    // The control: without clustertree the virtual node's lease goes stale and the control
    // plane taints it — what the pods above were spared.
    pair.kosmos = None;
    wait_for(
        "the node-lifecycle controller to taint the virtual node once clustertree stopped",
        NODE_MONITOR_GRACE + Duration::from_secs(60),
        || async {
            let taints = stale_taints(&pair.cp, "kosmos-member").await;
            (!taints.is_empty()).then_some(taints)
        },
    )
    .await;
}
