//! Proof that the test environment is real Kubernetes: the behaviours kpromote relies on come
//! from the upstream controllers, not from anything in this repository.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kpromote_testenv::{Cluster, FakeKubelet, TestEnv, register_virtual_node};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::wait_for;

const SETTLE: Duration = Duration::from_secs(60);

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn nginx_deployment(replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": "nginx" },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": "nginx" } },
            "template": {
                "metadata": { "labels": { "app": "nginx" } },
                "spec": { "containers": [{ "name": "nginx", "image": "nginx:1.14-alpine" }] },
            },
        },
    }))
    .unwrap()
}

/// Pod name → (uid, owner uids, restart count).
async fn pod_state(pods: &Api<Pod>) -> BTreeMap<String, (String, Vec<String>, i32)> {
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| {
            let owners = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .map(|o| o.uid.clone())
                .collect();
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(-1, |cs| cs.iter().map(|c| c.restart_count).sum());
            (
                p.metadata.name.unwrap(),
                (p.metadata.uid.unwrap(), owners, restarts),
            )
        })
        .collect()
}

#[tokio::test]
async fn orphan_delete_keeps_pods_running_through_the_real_garbage_collector() {
    let cluster = Cluster::start("member").await.unwrap();
    let client = cluster.client().await.unwrap();
    create_namespace(&client, "app").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "app");
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), "app");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");

    let deployment = deployments
        .create(&PostParams::default(), &nginx_deployment(3))
        .await
        .unwrap();
    let deployment_uid = deployment.metadata.uid.unwrap();

    // The deployment controller makes a ReplicaSet owned by the Deployment ...
    let rs = wait_for("a ReplicaSet owned by the Deployment", SETTLE, || async {
        let list = replicasets.list(&ListParams::default()).await.unwrap();
        list.items.into_iter().find(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == deployment_uid && o.controller == Some(true))
        })
    })
    .await;
    let rs_uid = rs.metadata.uid.clone().unwrap();
    // ... and the replicaset controller makes three Pods owned by it.
    wait_for("three Pods owned by the ReplicaSet", SETTLE, || async {
        let state = pod_state(&pods).await;
        (state.len() == 3
            && state
                .values()
                .all(|(_, owners, _)| owners == &vec![rs_uid.clone()]))
        .then_some(())
    })
    .await;
    let kubelet = FakeKubelet::register(&client, "member-node-1").await.unwrap();
    assert_eq!(kubelet.start_pods("app", "").await.unwrap(), 3);
    let before = pod_state(&pods).await;
    assert!(
        before.values().all(|(_, _, restarts)| *restarts == 0),
        "{before:?}"
    );

    // Orphan delete of the Deployment completes only if the garbage collector strips the
    // ReplicaSet's ownerReference and removes the orphan finalizer.
    deployments
        .delete("nginx", &DeleteParams::orphan())
        .await
        .unwrap();
    wait_for("the Deployment to be gone", SETTLE, || async {
        deployments
            .get_opt("nginx")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let rs_after = replicasets
        .get(rs.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(rs_after.metadata.uid.as_deref(), Some(rs_uid.as_str()));
    assert!(rs_after.metadata.owner_references.unwrap_or_default().is_empty());
    assert!(rs_after.metadata.finalizers.unwrap_or_default().is_empty());

    // Top-down: now the ReplicaSet, orphaning the Pods.
    replicasets
        .delete(rs.metadata.name.as_deref().unwrap(), &DeleteParams::orphan())
        .await
        .unwrap();
    wait_for("the ReplicaSet to be gone", SETTLE, || async {
        replicasets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let after = wait_for("the Pods to lose their ownerReferences", SETTLE, || async {
        let state = pod_state(&pods).await;
        state
            .values()
            .all(|(_, owners, _)| owners.is_empty())
            .then_some(state)
    })
    .await;
    let uids = |s: &BTreeMap<String, (String, Vec<String>, i32)>| -> Vec<(String, String, i32)> {
        s.iter()
            .map(|(n, (u, _, r))| (n.clone(), u.clone(), *r))
            .collect()
    };
    assert_eq!(uids(&before), uids(&after), "same pods, same UIDs, no restarts");
}

#[tokio::test]
async fn an_owner_reference_to_a_missing_uid_gets_the_object_garbage_collected() {
    let cluster = Cluster::start("gc").await.unwrap();
    let client = cluster.client().await.unwrap();
    create_namespace(&client, "app").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "app");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    let real = deployments
        .create(&PostParams::default(), &nginx_deployment(0))
        .await
        .unwrap();

    let owned_by = |name: &str, uid: &str| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": { "name": name, "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "nginx", "uid": uid,
            }] },
            "data": { "k": "v" },
        }))
        .unwrap()
    };
    // Same owner name, but a UID that no longer exists — what a restore that copied
    // ownerReferences verbatim would produce.
    configmaps
        .create(
            &PostParams::default(),
            &owned_by("dangling", "3f0c7b0e-0000-4000-8000-000000000000"),
        )
        .await
        .unwrap();
    configmaps
        .create(
            &PostParams::default(),
            &owned_by("live", real.metadata.uid.as_deref().unwrap()),
        )
        .await
        .unwrap();

    wait_for(
        "the garbage collector to delete the dangling ConfigMap",
        SETTLE,
        || async {
            configmaps
                .get_opt("dangling")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        configmaps.get_opt("live").await.unwrap().is_some(),
        "an object with a live owner stays"
    );
}

#[tokio::test]
async fn two_clusters_are_independent() {
    let env = TestEnv::start(&["control-plane", "member"]).await.unwrap();
    let cp = env.cluster("control-plane");
    let member = env.cluster("member");
    assert_ne!(cp.server(), member.server());
    let cp_client = cp.client().await.unwrap();
    let member_client = member.client().await.unwrap();
    create_namespace(&member_client, "only-in-member").await;
    let member_ns: Api<Namespace> = Api::all(member_client.clone());
    let cp_ns: Api<Namespace> = Api::all(cp_client.clone());
    assert!(member_ns.get_opt("only-in-member").await.unwrap().is_some());
    assert!(cp_ns.get_opt("only-in-member").await.unwrap().is_none());

    // The Kosmos virtual node exists only where it is registered.
    register_virtual_node(&cp_client, "member").await.unwrap();
    let node = Api::<Node>::all(cp_client.clone())
        .get("kosmos-member")
        .await
        .unwrap();
    assert_eq!(
        node.metadata
            .labels
            .unwrap()
            .get("kosmos.io/node")
            .map(String::as_str),
        Some("true")
    );
    let taint = &node.spec.unwrap().taints.unwrap()[0];
    assert_eq!(
        (taint.key.as_str(), taint.value.as_deref(), taint.effect.as_str()),
        ("kosmos.io/node", Some("true"), "NoSchedule")
    );
    assert!(!support::present(Api::<Node>::all(member_client), "kosmos-member").await);
}

#[tokio::test]
async fn dropping_a_cluster_stops_its_processes_and_frees_its_port() {
    let cluster = Cluster::start("teardown").await.unwrap();
    let port: u16 = cluster.server().rsplit(':').next().unwrap().parse().unwrap();
    let dir = cluster.dir().to_owned();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(cluster);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still served"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    let leftover = std::process::Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}
