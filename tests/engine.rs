//! Promote and rollback against two real clusters: zero pod restarts, exact adoption, exact
//! teardown.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kpromote_core::engine::EngineOptions;
use kube::Api;
use kube::api::ListParams;
use support::pair::Pair;
use support::promotion::Promotion;
use support::{apps, wait_for};

/// In `client`'s `shop`: the StatefulSet `db` owns its pod, the WebApp owns its Deployment.
/// Returns the StatefulSets' UIDs.
async fn assert_exact_owners(client: &kube::Client) -> std::collections::BTreeMap<String, String> {
    let sts = apps::statefulsets(client, "shop").await;
    let db0 = Api::<Pod>::namespaced(client.clone(), "shop")
        .get("db-0")
        .await
        .unwrap();
    assert_eq!(db0.metadata.owner_references.unwrap()[0].uid, sts["db"]);
    let webapp = apps::webapps(client, "shop").get("shop").await.unwrap();
    let shop = Api::<Deployment>::namespaced(client.clone(), "shop")
        .get("shop")
        .await
        .unwrap();
    assert_eq!(
        shop.metadata.owner_references.unwrap()[0].uid,
        webapp.metadata.uid.unwrap()
    );
    sts
}

#[tokio::test]
async fn the_designs_nginx_example_is_promoted_and_rolled_back_without_a_restart() {
    let (pair, before) = Pair::start_with_nginx().await;
    let (cp_client, member_client) = (pair.cp.clone(), pair.member.clone());
    assert_eq!(before.pods.len(), 1);

    let promotion = Promotion::archive(&pair, &["nginx-test"], &[]).await;
    let opts = EngineOptions::default();

    let report = promotion.promote_with(&opts, false).await.unwrap();
    assert_eq!(report.detached.len(), 2, "{report:#?}"); // the Deployment, then its ReplicaSet
    support::controllers_caught_up(&[(&member_client, "nginx-test"), (&cp_client, "nginx-test")]).await;

    // Member: the owners are gone, the pod is the same pod, marked for Kosmos.
    let after = apps::snapshot(&member_client, "nginx-test").await;
    assert_eq!(after.pods, before.pods, "same pods, same UIDs, no restarts");
    assert!(after.replicasets.is_empty());
    let (pod_name, _) = before.pods.iter().next().unwrap();
    let member_pod = Api::<Pod>::namespaced(member_client.clone(), "nginx-test")
        .get(pod_name)
        .await
        .unwrap();
    assert_eq!(kosmos_label(&member_pod), Some("true"));
    assert!(
        member_pod
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Control plane: the same objects, adopted bottom-up, none made by a controller.
    let cp_snap = apps::snapshot(&cp_client, "nginx-test").await;
    cp_snap.assert_promoted_from(&before, "promote");
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
    let report = promotion.rollback("rollback.journal", &opts).await.unwrap();
    assert!(report.deleted.contains("namespaces/nginx-test"), "{report:#?}");
    support::controllers_caught_up(&[(&member_client, "nginx-test")]).await;
    let rolled = apps::snapshot(&member_client, "nginx-test").await;
    rolled.assert_rolled_back_to(&before, "rollback");
    let member_pod = Api::<Pod>::namespaced(member_client.clone(), "nginx-test")
        .get(pod_name)
        .await
        .unwrap();
    assert_eq!(kosmos_label(&member_pod), None);
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
    support::wait_namespace_gone(&cp_client, "nginx-test").await;
}

#[tokio::test]
async fn a_rich_namespace_is_promoted_and_rolled_back_without_a_restart() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use k8s_openapi::api::storage::v1::StorageClass;

    let pair = Pair::start().await;
    let (cp_client, member_client) = (pair.cp.clone(), pair.member.clone());
    // The shared ClusterRole exists in both clusters before promote.
    apps::create(&member_client, apps::shared_reader_cluster_role()).await;
    let preexisting = apps::create(&cp_client, apps::shared_reader_cluster_role()).await;
    apps::create(
        &member_client,
        serde_json::json!({ "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": { "name": "kpromote-manual" }, "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "Immediate" }),
    )
    .await;
    apps::rich_namespace(&member_client, &pair.kubelet, "shop", 30080).await;
    support::controllers_caught_up(&[(&member_client, "shop")]).await;
    let before = apps::snapshot(&member_client, "shop").await;
    let sts_before = apps::statefulsets(&member_client, "shop").await;

    let cluster_objects = [
        ("", "persistentvolumes", "shop-db-pv-0"),
        ("", "persistentvolumes", "shop-db-pv-1"),
        ("storage.k8s.io", "storageclasses", "kpromote-manual"),
        (
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "shop-app-shared-reader",
        ),
        (
            "rbac.authorization.k8s.io",
            "clusterroles",
            "kpromote-test-shared-reader",
        ),
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "webapps.example.kpromote.io",
        ),
    ];
    let promotion = Promotion::archive(&pair, &["shop"], &cluster_objects).await;
    let opts = EngineOptions::default();

    let report = promotion.promote_with(&opts, false).await.unwrap();
    assert!(
        report
            .existed
            .contains("clusterroles.rbac.authorization.k8s.io/kpromote-test-shared-reader"),
        "{report:#?}"
    );
    support::controllers_caught_up(&[(&member_client, "shop"), (&cp_client, "shop")]).await;

    // Member: every pod is the same pod, no restart; revisions untouched; owners gone.
    let member_after = apps::snapshot(&member_client, "shop").await;
    assert_eq!(member_after.pods, before.pods);
    assert_eq!(member_after.revisions, before.revisions);
    assert!(
        member_after.replicasets.is_empty(),
        "{:?}",
        member_after.replicasets
    );
    assert!(apps::statefulsets(&member_client, "shop").await.is_empty());
    assert!(
        apps::webapps(&member_client, "shop")
            .get_opt("shop")
            .await
            .unwrap()
            .is_none()
    );

    // Control plane: every pod, ReplicaSet and revision is a restored one; none controller-made.
    let cp_snap = apps::snapshot(&cp_client, "shop").await;
    cp_snap.assert_promoted_from(&before, "promote");
    assert!(cp_snap.pods.values().all(|(_, _, node)| node == "kosmos-member"));
    // Exact owners: the StatefulSet owns its pods, the WebApp owns its Deployment.
    assert_exact_owners(&cp_client).await;
    let nodeport = Api::<Service>::namespaced(cp_client.clone(), "shop")
        .get("web-nodeport")
        .await
        .unwrap();
    assert_eq!(nodeport.spec.unwrap().ports.unwrap()[0].node_port, Some(30080));
    wait_for(
        "the restored claims to bind in the control plane",
        Duration::from_secs(60),
        || async {
            let claims = Api::<PersistentVolumeClaim>::namespaced(cp_client.clone(), "shop")
                .list(&ListParams::default())
                .await
                .unwrap();
            claims
                .items
                .iter()
                .all(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .then_some(())
        },
    )
    .await;

    // Rollback.
    promotion.rollback("rollback.journal", &opts).await.unwrap();
    support::controllers_caught_up(&[(&member_client, "shop")]).await;
    let rolled = apps::snapshot(&member_client, "shop").await;
    rolled.assert_rolled_back_to(&before, "rollback");
    assert_eq!(
        rolled.revisions, before.revisions,
        "the StatefulSet's revisions are the original ones"
    );
    let member_sts = assert_exact_owners(&member_client).await;
    assert_ne!(member_sts["db"], sts_before["db"], "re-created");

    // The control plane holds nothing of the namespace; what existed before is still there.
    support::wait_namespace_gone(&cp_client, "shop").await;
    let role = Api::<ClusterRole>::all(cp_client.clone())
        .get("kpromote-test-shared-reader")
        .await
        .unwrap();
    assert_eq!(
        role.metadata.uid, preexisting.metadata.uid,
        "the pre-existing ClusterRole is untouched"
    );
    assert!(
        !support::present(
            Api::<ClusterRoleBinding>::all(cp_client.clone()),
            "shop-app-shared-reader"
        )
        .await
    );
    assert!(!support::present(Api::<StorageClass>::all(cp_client.clone()), "kpromote-manual").await);
}

/// The pod's `kosmos-io/pod` label, which marks a pod Kosmos mirrors.
fn kosmos_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get("kosmos-io/pod")
        .map(String::as_str)
}
