//! Promote and rollback with the real Kosmos clustertree running beside the two clusters: it
//! mirrors the promoted control-plane pods onto the member's and copies status back. The promise
//! holds only if clustertree finds nothing to change — no in-place update of a running pod (its
//! log), no `kosmos-default-token` Secret, no annotated `kube-root-ca.crt` — and, after rollback,
//! deletes and changes nothing in the member.
//!
//! Also the namespaces real clusters hold: a LimitRange and a ResourceQuota added after their
//! pods, a ConfigMap with a finalizer no control-plane controller handles, a PriorityClass that
//! differs between the clusters.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kpromote_core::engine::{EngineError, EngineOptions};
use kpromote_core::plan::twin::clustertree_differences;
use kpromote_model::kosmos::STAMP_ANNOTATION;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use support::pair::Pair;
use support::promotion::Promotion;
use support::{apps, wait_for, wait_namespace_gone};

/// clustertree retries a failed member update every 10 s: a quiet window longer than that shows
/// it found nothing to do.
const QUIET: Duration = Duration::from_secs(12);

/// Every pod of `ns` in both clusters is equal where clustertree compares.
async fn assert_twins_equal(pair: &Pair, ns: &str) {
    let member: Api<Pod> = Api::namespaced(pair.member.clone(), ns);
    let cp: Api<Pod> = Api::namespaced(pair.cp.clone(), ns);
    for pod in cp.list(&ListParams::default()).await.unwrap() {
        let name = pod.metadata.name.clone().unwrap();
        let twin = member.get(&name).await.unwrap();
        let differences = clustertree_differences(
            &serde_json::to_value(&twin).unwrap(),
            &serde_json::to_value(&pod).unwrap(),
        );
        assert!(
            differences.is_empty(),
            "pod {ns}/{name}: the two views differ in {differences:?}"
        );
    }
}

/// What clustertree leaves behind when it tries to update a member pod: a Secret
/// `kosmos-default-token`, an annotated `kube-root-ca.crt`, a `master-root-ca.crt` in the member.
async fn assert_no_kosmos_side_effects(pair: &Pair, ns: &str) {
    for (client, cluster) in [(&pair.cp, "control plane"), (&pair.member, "member")] {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        assert!(
            secrets.get_opt("kosmos-default-token").await.unwrap().is_none(),
            "clustertree created kosmos-default-token in the {cluster}"
        );
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        assert!(
            configmaps.get_opt("master-root-ca.crt").await.unwrap().is_none(),
            "clustertree created master-root-ca.crt in the {cluster}"
        );
        if let Some(ca) = configmaps.get_opt("kube-root-ca.crt").await.unwrap() {
            let annotations = ca.metadata.annotations.unwrap_or_default();
            assert!(
                !annotations.contains_key("kosmos-io/cluster-owners"),
                "clustertree annotated kube-root-ca.crt in the {cluster}: {annotations:?}"
            );
        }
    }
}

/// Every pod of `ns` in the control plane reports phase `Running`.
async fn wait_control_plane_pods_running(pair: &Pair, ns: &str, expect: usize) {
    let cp: Api<Pod> = Api::namespaced(pair.cp.clone(), ns);
    wait_for(
        &format!("{expect} Running pods in {ns} in the control plane"),
        Duration::from_secs(30),
        || async {
            let running = cp
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == expect).then_some(())
        },
    )
    .await;
}

/// Member pods of `ns` by name → resourceVersion: any write by anyone changes it.
async fn member_pod_versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.metadata.name.unwrap(), p.metadata.resource_version.unwrap()))
        .collect()
}

/// A member pod's status changes (as a kubelet's probe would make it): clustertree copies the
/// member pod — its labels and annotations too — onto the control-plane twin.
async fn touch_member_status_and_wait_for_the_copy(pair: &Pair, ns: &str, name: &str) {
    let member: Api<Pod> = Api::namespaced(pair.member.clone(), ns);
    let mut conditions = member
        .get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "example.com/Touched");
    let mut conditions = serde_json::to_value(conditions).unwrap();
    conditions
        .as_array_mut()
        .unwrap()
        .push(json!({ "type": "example.com/Touched", "status": "True" }));
    member
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": { "conditions": conditions } })),
        )
        .await
        .unwrap();
    let cp: Api<Pod> = Api::namespaced(pair.cp.clone(), ns);
    wait_for(
        &format!("clustertree to copy the status of {ns}/{name}"),
        Duration::from_secs(30),
        || async {
            let pod = cp.get(name).await.unwrap();
            pod.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "example.com/Touched")
                .then_some(())
        },
    )
    .await;
}

/// A WebApp (`finalizers` on it) owning a Deployment `name` whose pods run `pod_spec`, running in
/// namespace `ns` of the member: an operator's pattern, with no operator.
async fn webapp_owning_a_deployment(
    pair: &Pair,
    ns: &str,
    name: &str,
    finalizers: &[&str],
    pod_spec: serde_json::Value,
) {
    apps::install_webapp_crd(&pair.member).await;
    let webapp = apps::create(
        &pair.member,
        json!({ "apiVersion": "example.kpromote.io/v1", "kind": "WebApp",
            "metadata": { "name": name, "namespace": ns, "finalizers": finalizers },
            "spec": { "replicas": 1 } }),
    )
    .await;
    apps::create(
        &pair.member,
        json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name, "namespace": ns,
                "ownerReferences": [{ "apiVersion": "example.kpromote.io/v1", "kind": "WebApp", "name": name,
                    "uid": webapp.metadata.uid, "controller": true, "blockOwnerDeletion": true }] },
            "spec": { "replicas": 1, "selector": { "matchLabels": { "app": name } },
                      "template": { "metadata": { "labels": { "app": name } }, "spec": pod_spec } } }),
    )
    .await;
    apps::run_pods(&pair.member, &pair.kubelet, ns, &format!("app={name}"), 1).await;
}

/// [`Promotion::archive`] of `ns` with the WebApp CRD.
async fn archive_with_webapps(pair: &Pair, ns: &str) -> Promotion {
    Promotion::archive(
        pair,
        &[ns],
        &[(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "webapps.example.kpromote.io",
        )],
    )
    .await
}

#[tokio::test]
async fn rich_namespace_promotes_and_rolls_back_with_clustertree_finding_nothing_to_change() {
    let mut pair = Pair::start_with_kosmos().await;
    let ns = "shop";
    apps::create(&pair.cp, apps::shared_reader_cluster_role()).await;
    apps::create(&pair.member, apps::shared_reader_cluster_role()).await;
    apps::rich_namespace(&pair.member, &pair.kubelet, ns, 30481).await;
    let before = apps::snapshot(&pair.member, ns).await;
    let running = before.pods.len() - 1; // the stuck rollout's new pod never runs

    let run = Promotion::archive_rich(&pair, ns).await;
    let opts = EngineOptions::default();
    let log_start = pair.kosmos().log().len();

    run.promote_with(&opts, false).await.unwrap();
    wait_control_plane_pods_running(&pair, ns, running).await;
    // clustertree copies a member pod's labels and annotations over its twin's: the stamp on
    // both views survives that.
    let (lonely, _) = before.pods.iter().find(|(n, _)| n.as_str() == "lonely").unwrap();
    touch_member_status_and_wait_for_the_copy(&pair, ns, lonely).await;
    tokio::time::sleep(QUIET).await;

    assert_eq!(
        pair.kosmos().update_attempts(log_start),
        Vec::<String>::new(),
        "clustertree tried to update promoted pods in place"
    );
    assert_twins_equal(&pair, ns).await;
    assert_no_kosmos_side_effects(&pair, ns).await;
    let cp_lonely = Api::<Pod>::namespaced(pair.cp.clone(), ns)
        .get(lonely)
        .await
        .unwrap();
    assert_eq!(
        cp_lonely
            .metadata
            .annotations
            .unwrap_or_default()
            .get(STAMP_ANNOTATION)
            .map(String::as_str),
        Some(run.inv.archive_id()),
        "the stamp survives clustertree's status copy"
    );
    let after = apps::snapshot(&pair.member, ns).await;
    assert_eq!(
        after.pods, before.pods,
        "same member pods, same UIDs, no restarts"
    );
    apps::snapshot(&pair.cp, ns)
        .await
        .assert_promoted_from(&before, "promote under clustertree");

    let log_start = pair.kosmos().log().len();
    run.rollback("rollback.journal", &opts).await.unwrap();
    wait_namespace_gone(&pair.cp, ns).await;
    let versions = member_pod_versions(&pair.member, ns).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        member_pod_versions(&pair.member, ns).await,
        versions,
        "something changed or deleted member pods after rollback"
    );
    assert_eq!(pair.kosmos().update_attempts(log_start), Vec::<String>::new());
    apps::snapshot(&pair.member, ns)
        .await
        .assert_rolled_back_to(&before, "rollback under clustertree");
    for pod in Api::<Pod>::namespaced(pair.member.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let labels = pod.metadata.labels.unwrap_or_default();
        let annotations = pod.metadata.annotations.unwrap_or_default();
        assert!(!labels.contains_key("kosmos-io/pod"), "{labels:?}");
        assert!(!annotations.contains_key(STAMP_ANNOTATION), "{annotations:?}");
    }
    pair.kosmos_mut().check_running().unwrap();
}

/// Pods without resources (BestEffort), then a LimitRange with defaults and a ResourceQuota, as
/// they often come after the workloads in a real namespace.
async fn policies_after_pods(client: &Client, kubelet: &kpromote_testenv::FakeKubelet, ns: &str) {
    apps::namespace(client, ns).await;
    apps::create(
        client,
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "cart", "namespace": ns },
            "spec": { "replicas": 2, "selector": { "matchLabels": { "app": "cart" } },
                      "template": { "metadata": { "labels": { "app": "cart" } },
                                    "spec": { "containers": [{ "name": "main", "image": "nginx:1.25" }] } } } }),
    )
    .await;
    apps::run_pods(client, kubelet, ns, "app=cart", 2).await;
    apps::create(
        client,
        json!({ "apiVersion": "v1", "kind": "LimitRange", "metadata": { "name": "defaults", "namespace": ns },
            "spec": { "limits": [{ "type": "Container",
                "default": { "cpu": "500m", "memory": "256Mi" },
                "defaultRequest": { "cpu": "100m", "memory": "64Mi" } }] } }),
    )
    .await;
    apps::create(
        client,
        json!({ "apiVersion": "v1", "kind": "ResourceQuota", "metadata": { "name": "counts", "namespace": ns },
            "spec": { "hard": { "pods": "20", "count/deployments.apps": "5" } } }),
    )
    .await;
}

#[tokio::test]
async fn limit_range_and_quota_added_after_the_pods_change_nothing_under_clustertree() {
    let pair = Pair::start_with_kosmos().await;
    let ns = "cart";
    policies_after_pods(&pair.member, &pair.kubelet, ns).await;
    let before = apps::snapshot(&pair.member, ns).await;
    let pod_names: Vec<String> = before.pods.keys().cloned().collect();

    let run = Promotion::archive(&pair, &[ns], &[]).await;
    let opts = EngineOptions::default();
    let log_start = pair.kosmos().log().len();
    let report = run.promote(&opts).await.unwrap();
    assert!(
        report.created.contains("limitranges/cart/defaults"),
        "{report:#?}"
    );
    assert!(
        report.created.contains("resourcequotas/cart/counts"),
        "{report:#?}"
    );
    wait_control_plane_pods_running(&pair, ns, 2).await;
    tokio::time::sleep(QUIET).await;

    let cp_pods: Api<Pod> = Api::namespaced(pair.cp.clone(), ns);
    for name in &pod_names {
        let pod = cp_pods.get(name).await.unwrap();
        let resources = serde_json::to_value(&pod.spec.unwrap().containers[0].resources).unwrap();
        assert!(
            resources.is_null() || resources == json!({}),
            "{name}: the LimitRange defaulted the copy's resources: {resources}"
        );
        assert_eq!(
            pod.status.and_then(|s| s.qos_class).as_deref(),
            Some("BestEffort")
        );
    }
    assert_eq!(pair.kosmos().update_attempts(log_start), Vec::<String>::new());
    assert_twins_equal(&pair, ns).await;
    assert_no_kosmos_side_effects(&pair, ns).await;
    apps::snapshot(&pair.cp, ns)
        .await
        .assert_promoted_from(&before, "promote");

    run.rollback("rollback.journal", &opts).await.unwrap();
    pair.assert_rolled_back(ns, &before, "rollback").await;
}

#[tokio::test]
async fn a_finalizer_of_a_member_controller_never_hangs_rollback() {
    let pair = Pair::start_with_kosmos().await;
    let ns = "edge";
    apps::namespace(&pair.member, ns).await;
    apps::create(
        &pair.member,
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "routes", "namespace": ns, "finalizers": ["example.com/keep"] },
            "data": { "routes": "a" } }),
    )
    .await;
    webapp_owning_a_deployment(
        &pair,
        ns,
        "edge",
        &[],
        json!({ "containers": [{ "name": "main", "image": "envoy:1.30",
                    "volumeMounts": [{ "name": "routes", "mountPath": "/etc/routes" }] }],
                "volumes": [{ "name": "routes", "configMap": { "name": "routes" } }] }),
    )
    .await;
    let before = apps::snapshot(&pair.member, ns).await;

    let run = archive_with_webapps(&pair, ns).await;
    let opts = EngineOptions::default();
    let report = run.promote(&opts).await.unwrap();
    assert!(
        report.warnings.iter().any(|w| w.contains("example.com/keep")),
        "the dropped finalizer is reported: {report:#?}"
    );
    let cp_routes = Api::<ConfigMap>::namespaced(pair.cp.clone(), ns)
        .get("routes")
        .await
        .unwrap();
    assert!(cp_routes.metadata.finalizers.unwrap_or_default().is_empty());

    // A user's object in the control plane with a finalizer nothing handles there: rollback
    // reports it by name instead of timing out in silence, then completes once it is released.
    apps::create(
        &pair.cp,
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "pinned", "namespace": ns, "finalizers": ["example.com/user-hold"] } }),
    )
    .await;
    let short = EngineOptions {
        namespace_stall: Duration::from_secs(8),
        ..EngineOptions::default()
    };
    let err = run
        .rollback(
            "rollback.journal",
            &EngineOptions {
                discard_changes: true,
                ..short
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Stuck { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("example.com/user-hold"), "{message}");
    assert!(message.contains("namespaces/edge"), "{message}");
    Api::<ConfigMap>::namespaced(pair.cp.clone(), ns)
        .patch(
            "pinned",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .unwrap();
    run.rollback("rollback.journal", &opts).await.unwrap();
    wait_namespace_gone(&pair.cp, ns).await;
    assert!(!support::present(Api::<Namespace>::all(pair.cp.clone()), ns).await);
    apps::snapshot(&pair.member, ns)
        .await
        .assert_rolled_back_to(&before, "rollback");
    let member_routes = Api::<ConfigMap>::namespaced(pair.member.clone(), ns)
        .get("routes")
        .await
        .unwrap();
    assert_eq!(
        member_routes.metadata.finalizers.unwrap_or_default(),
        vec!["example.com/keep".to_owned()],
        "the member's own finalizer is untouched"
    );
}

#[tokio::test]
async fn a_pod_admission_changes_in_the_control_plane_stops_promote_naming_field_and_admission() {
    let pair = Pair::start().await;
    let ns = "batch";
    for (client, value) in [(&pair.member, 2000), (&pair.cp, 1000)] {
        apps::create(
            client,
            json!({ "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": { "name": "reports" }, "value": value }),
        )
        .await;
    }
    apps::namespace(&pair.member, ns).await;
    apps::create(
        &pair.member,
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "reports", "namespace": ns },
            "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "reports" } },
                      "template": { "metadata": { "labels": { "app": "reports" } },
                                    "spec": { "priorityClassName": "reports",
                                              "containers": [{ "name": "main", "image": "busybox:1.36" }] } } } }),
    )
    .await;
    apps::run_pods(&pair.member, &pair.kubelet, ns, "app=reports", 1).await;
    let before = apps::snapshot(&pair.member, ns).await;

    let run = Promotion::archive(&pair, &[ns], &[]).await;
    let err = run.promote(&EngineOptions::default()).await.unwrap_err();
    let EngineError::RolledBack { cause, rollback } = &err else {
        panic!("expected an automatic rollback: {err}");
    };
    assert!(rollback.is_ok(), "{err}");
    assert!(matches!(**cause, EngineError::AdmissionChanged { .. }), "{cause}");
    let message = cause.to_string();
    assert!(
        message.contains("spec.priority") && message.contains("Priority"),
        "{message}"
    );
    pair.assert_rolled_back(ns, &before, "automatic rollback").await;
}

#[tokio::test]
async fn an_owner_with_its_operators_finalizer_is_refused_before_anything_is_detached() {
    let pair = Pair::start().await;
    let ns = "db";
    apps::namespace(&pair.member, ns).await;
    webapp_owning_a_deployment(
        &pair,
        ns,
        "orders",
        &["example.com/drop-database"],
        json!({ "containers": [{ "name": "main", "image": "postgres:16" }] }),
    )
    .await;
    let before = apps::snapshot(&pair.member, ns).await;

    let run = archive_with_webapps(&pair, ns).await;
    let err = run
        .promote_with(&EngineOptions::default(), false)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, EngineError::OwnerFinalizers { .. }), "{message}");
    assert!(
        message.contains("webapps.example.kpromote.io/db/orders (example.com/drop-database)"),
        "{message}"
    );
    // Nothing was detached: the operator's object is not being deleted, the owners are there.
    let live = apps::webapps(&pair.member, ns).get("orders").await.unwrap();
    assert!(live.metadata.deletion_timestamp.is_none());
    assert_eq!(apps::snapshot(&pair.member, ns).await, before);
    assert!(!support::present(Api::<Namespace>::all(pair.cp.clone()), ns).await);
}
