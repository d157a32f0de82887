//! Promote and rollback against two real clusters: zero pod restarts, exact adoption, exact
//! teardown.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kpromote::engine::{EngineOptions, Inventory, LiveCluster, promote::promote, rollback::rollback};
use kpromote::journal::Journal;
use kpromote::testenv::{FakeKubelet, TestEnv, register_virtual_node};
use kube::Api;
use kube::api::ListParams;
use support::{apps, archiving, wait_for};

/// Controllers get this long to react (and so to reveal any pod they would create) before the
/// after-snapshot is taken.
const SETTLE: Duration = Duration::from_secs(5);

fn journal(dir: &std::path::Path, name: &str, run: &str) -> Arc<Mutex<Journal>> {
    Arc::new(Mutex::new(Journal::open(&dir.join(name), run).unwrap()))
}

#[tokio::test]
async fn the_designs_nginx_example_is_promoted_and_rolled_back_without_a_restart() {
    let env = TestEnv::start(&["control-plane", "member"]).await.unwrap();
    let cp_client = env.cluster("control-plane").client().await.unwrap();
    let member_client = env.cluster("member").client().await.unwrap();
    register_virtual_node(&cp_client, "member").await.unwrap();
    let kubelet = FakeKubelet::register(&member_client, "member-node-1")
        .await
        .unwrap();
    apps::nginx_example(&member_client, &kubelet).await;
    let before = apps::snapshot(&member_client, "nginx-test").await;
    assert_eq!(before.pods.len(), 1);

    let dir = tempfile::tempdir().unwrap();
    let path = archiving::archive(&member_client, &["nginx-test"], &[], dir.path()).await;
    let inv = Inventory::from_archive(&path).unwrap();
    let member = LiveCluster::new("member", member_client.clone());
    let cp = LiveCluster::new("control plane", cp_client.clone());
    let opts = EngineOptions::default();

    let report = promote(
        &member,
        &cp,
        &inv,
        "member",
        &journal(dir.path(), "p.journal", "promote"),
        None,
        &opts,
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.detached.len(), 2, "{report:#?}"); // the Deployment, then its ReplicaSet
    tokio::time::sleep(SETTLE).await;

    // Member: the owners are gone, the pod is the same pod, marked for Kosmos.
    let after = apps::snapshot(&member_client, "nginx-test").await;
    assert_eq!(after.pods, before.pods, "same pods, same UIDs, no restarts");
    assert!(after.replicasets.is_empty());
    let (pod_name, _) = before.pods.iter().next().unwrap();
    let member_pod = Api::<Pod>::namespaced(member_client.clone(), "nginx-test")
        .get(pod_name)
        .await
        .unwrap();
    assert_eq!(
        member_pod
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("kosmos-io/pod")
            .map(String::as_str),
        Some("true")
    );
    assert!(
        member_pod
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Control plane: the same objects, adopted bottom-up, none made by a controller.
    let cp_snap = apps::snapshot(&cp_client, "nginx-test").await;
    assert_eq!(
        cp_snap.pods.keys().collect::<Vec<_>>(),
        before.pods.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        cp_snap.replicasets.keys().collect::<Vec<_>>(),
        before.replicasets.keys().collect::<Vec<_>>()
    );
    assert!(
        cp_snap.controller_created.is_empty(),
        "controller-made objects: {:?}",
        cp_snap.controller_created
    );
    let cp_pod = Api::<Pod>::namespaced(cp_client.clone(), "nginx-test")
        .get(pod_name)
        .await
        .unwrap();
    assert_eq!(
        cp_pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("kosmos-member")
    );
    let rs_uid = cp_snap.replicasets.values().next().unwrap();
    let owner = &cp_pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((&owner.uid, owner.controller), (rs_uid, Some(true)));
    let cp_rs = Api::<ReplicaSet>::namespaced(cp_client.clone(), "nginx-test")
        .list(&ListParams::default())
        .await
        .unwrap();
    let cp_deploy = Api::<Deployment>::namespaced(cp_client.clone(), "nginx-test")
        .get("nginx")
        .await
        .unwrap();
    assert_eq!(
        cp_rs.items[0].metadata.owner_references.as_ref().unwrap()[0].uid,
        cp_deploy.metadata.uid.unwrap()
    );
    let svc = Api::<Service>::namespaced(cp_client.clone(), "nginx-test")
        .get("nginx-service")
        .await
        .unwrap();
    assert!(
        svc.spec
            .unwrap()
            .cluster_ip
            .is_some_and(|ip| !ip.is_empty() && ip != "None")
    );

    // Rollback: the member's owners are back and adopt the same pod; the control plane is clean.
    let report = rollback(
        &member,
        &cp,
        &inv,
        "member",
        &journal(dir.path(), "r.journal", "rollback"),
        &opts,
        None,
    )
    .await
    .unwrap();
    assert!(
        report.deleted.iter().any(|d| d == "namespaces/nginx-test"),
        "{report:#?}"
    );
    tokio::time::sleep(SETTLE).await;
    let rolled = apps::snapshot(&member_client, "nginx-test").await;
    assert_eq!(rolled.pods, before.pods, "same pods, same UIDs, no restarts");
    assert_eq!(
        rolled.replicasets.keys().collect::<Vec<_>>(),
        before.replicasets.keys().collect::<Vec<_>>()
    );
    let member_pod = Api::<Pod>::namespaced(member_client.clone(), "nginx-test")
        .get(pod_name)
        .await
        .unwrap();
    assert!(
        member_pod
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("kosmos-io/pod")
            .is_none()
    );
    let new_rs_uid = rolled.replicasets.values().next().unwrap();
    assert_eq!(&member_pod.metadata.owner_references.unwrap()[0].uid, new_rs_uid);
    let deploy = Api::<Deployment>::namespaced(member_client.clone(), "nginx-test")
        .get("nginx")
        .await
        .unwrap();
    let member_rs = Api::<ReplicaSet>::namespaced(member_client.clone(), "nginx-test")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        member_rs.items[0].metadata.owner_references.as_ref().unwrap()[0].uid,
        deploy.metadata.uid.unwrap()
    );
    wait_for(
        "the control plane to hold nothing of nginx-test",
        Duration::from_secs(60),
        || async {
            Api::<Namespace>::all(cp_client.clone())
                .get_opt("nginx-test")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}
