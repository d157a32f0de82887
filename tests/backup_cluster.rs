//! Backups of a real cluster: a namespace holding every common kind is archived exactly (the
//! archive's keys are what the API lists), with its cluster-scoped dependencies and their
//! reasons, and nothing of a neighbouring namespace.
//!
//! Needs the test environment binaries (`tests/testenv/build.sh`).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc, clippy::too_many_lines)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use kpromote_archive::{ArchiveReader, Inclusion, IndexRecord};
use kpromote_core::backup::{self, BackupRequest, BackupWarning, CollectedDependency, SkipReason};
use kpromote_core::resources::{ApiSurface, DEFAULT_EXCLUDED_RESOURCES};
use kpromote_model::ObjectKey;
use kpromote_testenv::{Cluster, FakeKubelet};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use serde_json::json;
use support::{apps, wait_for};

const NS: &str = "shop";
const OTHER: &str = "other";
const SETTLE: Duration = Duration::from_secs(90);

fn created_at() -> jiff::Timestamp {
    "2026-11-24T10:49:07Z".parse().unwrap()
}

/// What `rich_namespace` lacks: the remaining common kinds, classes in use, RBAC towards
/// cluster roles (one missing), an object being deleted, and a second namespace whose
/// ClusterRoleBinding must stay out.
async fn complete_the_namespace(client: &Client, kubelet: &FakeKubelet) {
    for obj in [
        json!({ "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": { "name": "kpromote-high" }, "value": 1000 }),
        json!({ "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                "metadata": { "name": "kpromote-runc" }, "handler": "runc" }),
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": { "name": "kpromote-nginx" }, "spec": { "controller": "example.com/ingress-nginx" } }),
        // Not used by anything in the backup: must stay out.
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": { "name": "kpromote-unused" }, "spec": { "controller": "example.com/other" } }),
        json!({ "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": { "name": "kpromote-unused" }, "value": 10 }),
    ] {
        apps::create(client, obj).await;
    }
    let container = json!([{ "name": "main", "image": "busybox:1.36", "command": ["sleep", "infinity"] }]);
    for obj in [
        json!({ "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": { "name": "agent", "namespace": NS },
                "spec": { "selector": { "matchLabels": { "app": "agent" } },
                          "template": { "metadata": { "labels": { "app": "agent" } },
                                        // The test node keeps its not-ready taint (no node
                                        // lifecycle controller); agents tolerate everything.
                                        "spec": { "tolerations": [{ "operator": "Exists" }],
                                                  "containers": container } } } }),
        json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "migrate", "namespace": NS },
                "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": container } } } }),
        json!({ "apiVersion": "batch/v1", "kind": "CronJob", "metadata": { "name": "nightly", "namespace": NS },
                "spec": { "schedule": "0 0 1 1 *", "suspend": true,
                          "jobTemplate": { "spec": { "template": { "spec": {
                              "restartPolicy": "Never", "runtimeClassName": "kpromote-runc", "containers": container } } } } } }),
        json!({ "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": { "name": "web", "namespace": NS },
                "spec": { "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "web" },
                          "minReplicas": 1, "maxReplicas": 5,
                          "metrics": [{ "type": "Resource", "resource": { "name": "cpu",
                                        "target": { "type": "Utilization", "averageUtilization": 80 } } }] } }),
        json!({ "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": { "name": "web", "namespace": NS },
                "spec": { "minAvailable": 1, "selector": { "matchLabels": { "app": "web" } } } }),
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": { "name": "db-from-web", "namespace": NS },
                "spec": { "podSelector": { "matchLabels": { "app": "db" } }, "policyTypes": ["Ingress"],
                          "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "web" } } }] }] } }),
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "web", "namespace": NS },
                "spec": { "ingressClassName": "kpromote-nginx",
                          "rules": [{ "host": "shop.example.com", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
                              "backend": { "service": { "name": "web-nodeport", "port": { "number": 80 } } } }] } }] } }),
        // A class named only by the legacy annotation, which need not exist.
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": { "name": "legacy", "namespace": NS,
                    "annotations": { "kubernetes.io/ingress.class": "missing-class" } },
                "spec": { "defaultBackend": { "service": { "name": "web-nodeport", "port": { "number": 80 } } } } }),
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "prio", "namespace": NS, "labels": { "app": "prio" } },
                "spec": { "priorityClassName": "kpromote-high", "containers": container } }),
        // Excluded by default: must not be archived.
        json!({ "apiVersion": "v1", "kind": "Endpoints", "metadata": { "name": "manual", "namespace": NS }, "subsets": [] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": { "name": "shop-view", "namespace": NS },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view" },
                "subjects": [{ "kind": "ServiceAccount", "name": "app", "namespace": NS }] }),
        // RBAC allows binding a role that does not exist (yet): a warning, not a failure.
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": { "name": "dangling", "namespace": NS },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kpromote-nonexistent" },
                "subjects": [{ "kind": "ServiceAccount", "name": "app", "namespace": NS }] }),
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "doomed", "namespace": NS,
                    "finalizers": ["example.com/hold"] }, "data": { "x": "y" } }),
    ] {
        apps::create(client, obj).await;
    }
    apps::run_pods(client, kubelet, NS, "app=prio", 1).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
    wait_for("the Job's and the DaemonSet's pods", SETTLE, || async {
        let n = |sel: &str| {
            let pods = pods.clone();
            let sel = sel.to_owned();
            async move {
                pods.list(&ListParams::default().labels(&sel))
                    .await
                    .unwrap()
                    .items
                    .len()
            }
        };
        (n("job-name=migrate").await == 1 && n("app=agent").await == 1).then_some(())
    })
    .await;
    // Created after the controllers made their pods: a default request could make the
    // DaemonSet's pod not fit the node (which reports no capacity), and without the quota
    // controller the quota's status stays unknown, so its admission would refuse new pods.
    apps::create(
        client,
        json!({ "apiVersion": "v1", "kind": "LimitRange", "metadata": { "name": "defaults", "namespace": NS },
                "spec": { "limits": [{ "type": "Container", "defaultRequest": { "cpu": "100m" } }] } }),
    )
    .await;
    apps::create(
        client,
        json!({ "apiVersion": "v1", "kind": "ResourceQuota", "metadata": { "name": "pods", "namespace": NS },
                "spec": { "hard": { "pods": "100" } } }),
    )
    .await;
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), NS);
    configmaps
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();

    // The neighbour.
    for obj in [
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": OTHER } }),
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "robot", "namespace": OTHER } }),
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "settings", "namespace": OTHER } }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": { "name": "kpromote-other-reader" },
                "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["get"] }] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": { "name": "other-robot-reader" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kpromote-other-reader" },
                "subjects": [{ "kind": "ServiceAccount", "name": "robot", "namespace": OTHER }] }),
    ] {
        apps::create(client, obj).await;
    }
}

/// The entry paths of every object the API lists in `ns` for the backup's types, leaving out
/// objects being deleted.
async fn listed_paths(client: &Client, surface: &ApiSurface, ns: &str) -> BTreeSet<String> {
    let excluded = surface.resolve_exclusions(DEFAULT_EXCLUDED_RESOURCES).unwrap();
    let mut paths = BTreeSet::new();
    for served in surface.backup_types(&excluded) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &served.api_resource());
        for object in api.list(&ListParams::default()).await.unwrap() {
            if object.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = ObjectKey::typed(
                &served.group_resource,
                Some(ns),
                object.metadata.name.as_deref().unwrap(),
            );
            paths.insert(kpromote_archive::layout::object_path(&key).unwrap());
        }
    }
    paths
}

fn read_records(path: &Path) -> Vec<IndexRecord> {
    let reader = ArchiveReader::open(path).unwrap();
    reader.records().unwrap().map(Result::unwrap).collect()
}

fn dependency<'a>(deps: &'a [CollectedDependency], target: &str) -> &'a CollectedDependency {
    deps.iter()
        .find(|d| d.target.to_string() == target)
        .unwrap_or_else(|| panic!("no dependency {target}"))
}

fn dep_of(of: &str, via: &str) -> Inclusion {
    Inclusion::Dependency {
        of: of.to_owned(),
        via: via.to_owned(),
    }
}

#[tokio::test]
async fn a_namespace_of_every_common_kind_is_archived_exactly_with_its_dependencies() {
    let member = Cluster::start("member").await.unwrap();
    let client = member.client().await.unwrap();
    let kubelet = FakeKubelet::register(&client, "member-node-1").await.unwrap();
    apps::create(&client, apps::shared_reader_cluster_role()).await;
    apps::create(
        &client,
        json!({ "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": { "name": "kpromote-manual" },
                "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate" }),
    )
    .await;
    apps::rich_namespace(&client, &kubelet, NS, 30080).await;
    complete_the_namespace(&client, &kubelet).await;

    let surface = ApiSurface::discover(&client).await.unwrap();
    let before = listed_paths(&client, &surface, NS).await;
    let dir = tempfile::tempdir().unwrap();
    let request = BackupRequest::new("test-policy", [NS])
        .backup_dir(dir.path())
        .cluster_name("member-1")
        .created_at(created_at())
        .page_size(3);

    // Dry run first: reads everything, writes nothing.
    let plan = backup::plan(&client, &request).await.unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a dry run writes nothing"
    );
    assert_eq!(plan.path, dir.path().join("test-policy20261124-104907.tar.zst"));

    let report = backup::run(&client, &request).await.unwrap();
    let after = listed_paths(&client, &surface, NS).await;
    assert_eq!(
        before, after,
        "the namespace changed during the test; the comparison needs it still"
    );
    assert_eq!(report.path, plan.path);
    assert_eq!(report.collected.objects, plan.collected.objects);
    assert_eq!(report.collected.dependencies, plan.collected.dependencies);
    assert_eq!(report.collected.skipped, plan.collected.skipped);

    // The archive verifies end to end.
    let reader = ArchiveReader::open(&report.path).unwrap();
    let verified = reader.verify();
    assert!(verified.is_fully_verified(), "{:?}", verified.problems);
    let facts = reader.facts().unwrap().clone();
    assert_eq!(facts.source.name, "member-1");
    assert_eq!(facts.source.server_version, "v1.35.4");
    assert_eq!(facts.policy.name, "test-policy");
    assert_eq!(facts.policy.included_namespaces, [NS]);
    assert_eq!(facts.policy.excluded_resources, DEFAULT_EXCLUDED_RESOURCES);
    assert_eq!(facts.created_at, "2026-11-24T10:49:07Z");
    for key in [
        "pods/namespaces/shop",
        "deployments.apps/namespaces/shop",
        "webapps.example.kpromote.io/namespaces/shop",
        "clusterrolebindings.rbac.authorization.k8s.io/cluster",
    ] {
        assert!(
            facts.list_resource_versions.contains_key(key),
            "{key}: {:?}",
            facts.list_resource_versions
        );
    }
    assert_eq!(
        facts.list_resource_versions,
        report.collected.list_resource_versions
    );

    // Exactly the namespaced objects the API lists.
    let records = read_records(&report.path);
    let archived: BTreeSet<String> = records
        .iter()
        .filter(|r| r.inclusion == Inclusion::Namespaced)
        .map(|r| r.path.clone())
        .collect();
    let missing: Vec<_> = after.difference(&archived).collect();
    let extra: Vec<_> = archived.difference(&after).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(records.len() as u64, report.collected.total_objects());
    for kind in [
        "pods",
        "configmaps",
        "secrets",
        "services",
        "serviceaccounts",
        "persistentvolumeclaims",
        "limitranges",
        "resourcequotas",
        "deployments.apps",
        "replicasets.apps",
        "statefulsets.apps",
        "daemonsets.apps",
        "controllerrevisions.apps",
        "jobs.batch",
        "cronjobs.batch",
        "horizontalpodautoscalers.autoscaling",
        "poddisruptionbudgets.policy",
        "networkpolicies.networking.k8s.io",
        "ingresses.networking.k8s.io",
        "roles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "webapps.example.kpromote.io",
    ] {
        assert!(
            records
                .iter()
                .any(|r| r.group_resource() == kind && r.namespace.as_deref() == Some(NS)),
            "no {kind} archived"
        );
    }
    // Nothing of the neighbour, nothing excluded (though the cluster has events and endpoints).
    assert!(records.iter().all(|r| r.namespace.as_deref() != Some(OTHER)));
    let events: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &surface.get(&"events".parse().unwrap()).unwrap().api_resource(),
    );
    assert!(
        !events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    for excluded in [
        "events",
        "events.events.k8s.io",
        "endpoints",
        "endpointslices.discovery.k8s.io",
    ] {
        assert!(
            records.iter().all(|r| r.group_resource() != excluded),
            "{excluded} archived"
        );
        assert!(!report.collected.types.iter().any(|t| t.to_string() == excluded));
    }

    // The object being deleted is left out and reported.
    assert_eq!(
        report.collected.skipped.len(),
        1,
        "{:?}",
        report.collected.skipped
    );
    let skipped = &report.collected.skipped[0];
    assert_eq!(skipped.object.to_string(), "configmaps/shop/doomed");
    assert!(matches!(skipped.reason, SkipReason::BeingDeleted { .. }));
    assert!(!archived.contains("resources/configmaps/namespaces/shop/doomed.json"));

    // Exactly the dependencies really referenced, each with the object that pulled it in.
    let deps = &report.collected.dependencies;
    let targets: BTreeSet<String> = deps.iter().map(|d| d.target.to_string()).collect();
    let expected: BTreeSet<String> = [
        "namespaces/shop",
        "persistentvolumes/shop-db-pv-0",
        "persistentvolumes/shop-db-pv-1",
        "storageclasses.storage.k8s.io/kpromote-manual",
        "priorityclasses.scheduling.k8s.io/kpromote-high",
        "runtimeclasses.node.k8s.io/kpromote-runc",
        "ingressclasses.networking.k8s.io/kpromote-nginx",
        "ingressclasses.networking.k8s.io/missing-class",
        "clusterrolebindings.rbac.authorization.k8s.io/shop-app-shared-reader",
        "clusterroles.rbac.authorization.k8s.io/kpromote-test-shared-reader",
        "clusterroles.rbac.authorization.k8s.io/view",
        "clusterroles.rbac.authorization.k8s.io/kpromote-nonexistent",
        "customresourcedefinitions.apiextensions.k8s.io/webapps.example.kpromote.io",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(targets, expected);
    let absent = dependency(deps, "ingressclasses.networking.k8s.io/missing-class");
    assert!(!absent.present && absent.may_be_absent);
    let dangling = dependency(
        deps,
        "clusterroles.rbac.authorization.k8s.io/kpromote-nonexistent",
    );
    assert!(!dangling.present && !dangling.may_be_absent);
    assert!(
        report.collected.warnings.iter().any(|w| matches!(w,
            BackupWarning::MissingDependency { target, .. } if target.name == "kpromote-nonexistent")),
        "{:?}",
        report.collected.warnings
    );
    assert_eq!(
        report.collected.warnings.len(),
        1,
        "{:?}",
        report.collected.warnings
    );

    let inclusions: BTreeMap<String, Inclusion> = records
        .iter()
        .filter(|r| r.inclusion != Inclusion::Namespaced)
        .map(|r| (r.path.clone(), r.inclusion.clone()))
        .collect();
    let expected_inclusions: BTreeMap<String, Inclusion> = [
        ("resources/namespaces/cluster/shop.json", Inclusion::Namespace),
        (
            "resources/persistentvolumes/cluster/shop-db-pv-0.json",
            dep_of("resources/persistentvolumeclaims/namespaces/shop/data-db-0.json", "spec.volumeName"),
        ),
        (
            "resources/persistentvolumes/cluster/shop-db-pv-1.json",
            dep_of("resources/persistentvolumeclaims/namespaces/shop/data-db-1.json", "spec.volumeName"),
        ),
        (
            "resources/storageclasses.storage.k8s.io/cluster/kpromote-manual.json",
            dep_of("resources/persistentvolumeclaims/namespaces/shop/data-db-0.json", "spec.storageClassName"),
        ),
        (
            "resources/priorityclasses.scheduling.k8s.io/cluster/kpromote-high.json",
            dep_of("resources/pods/namespaces/shop/prio.json", "spec.priorityClassName"),
        ),
        (
            "resources/runtimeclasses.node.k8s.io/cluster/kpromote-runc.json",
            dep_of(
                "resources/cronjobs.batch/namespaces/shop/nightly.json",
                "spec.jobTemplate.spec.template.spec.runtimeClassName",
            ),
        ),
        (
            "resources/ingressclasses.networking.k8s.io/cluster/kpromote-nginx.json",
            dep_of("resources/ingresses.networking.k8s.io/namespaces/shop/web.json", "spec.ingressClassName"),
        ),
        (
            "resources/clusterrolebindings.rbac.authorization.k8s.io/cluster/shop-app-shared-reader.json",
            dep_of("resources/serviceaccounts/namespaces/shop/app.json", "subjects[0]"),
        ),
        (
            "resources/clusterroles.rbac.authorization.k8s.io/cluster/kpromote-test-shared-reader.json",
            dep_of(
                "resources/clusterrolebindings.rbac.authorization.k8s.io/cluster/shop-app-shared-reader.json",
                "roleRef.name",
            ),
        ),
        (
            "resources/clusterroles.rbac.authorization.k8s.io/cluster/view.json",
            dep_of("resources/rolebindings.rbac.authorization.k8s.io/namespaces/shop/shop-view.json", "roleRef.name"),
        ),
        (
            "resources/customresourcedefinitions.apiextensions.k8s.io/cluster/webapps.example.kpromote.io.json",
            dep_of("resources/webapps.example.kpromote.io/namespaces/shop/shop.json", "apiVersion"),
        ),
    ]
    .into_iter()
    .map(|(p, i)| (p.to_owned(), i))
    .collect();
    assert_eq!(inclusions, expected_inclusions);

    // Objects are archived as the server serves them.
    let settings = reader
        .get("resources/configmaps/namespaces/shop/settings.json")
        .unwrap()
        .value()
        .unwrap();
    assert_eq!(settings["apiVersion"], "v1");
    assert_eq!(settings["kind"], "ConfigMap");
    assert_eq!(settings["data"]["mode"], "production");
    let webapp = reader
        .get("resources/webapps.example.kpromote.io/namespaces/shop/shop.json")
        .unwrap()
        .value()
        .unwrap();
    assert_eq!(webapp["apiVersion"], "example.kpromote.io/v1");
    assert_eq!(webapp["spec"]["replicas"], 1);

    // The same cluster gives the same objects and the same reasons (the lists finish in any
    // order; what is recorded does not depend on it).
    let again = backup::run(
        &client,
        &request.clone().file_name("again.tar.zst").concurrency(2),
    )
    .await
    .unwrap();
    let digest = |rs: &[IndexRecord]| -> Vec<(String, String, Inclusion)> {
        rs.iter()
            .map(|r| (r.path.clone(), r.sha256.clone(), r.inclusion.clone()))
            .collect()
    };
    assert_eq!(digest(&read_records(&again.path)), digest(&records));

    // Excluding nothing: events are stored once, under the core group, though the server also
    // serves them as events.events.k8s.io.
    let everything = backup::plan(&client, &request.clone().excluded(Vec::<String>::new()))
        .await
        .unwrap();
    let types: Vec<String> = everything
        .collected
        .types
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(types.contains(&"events".to_owned()) && types.contains(&"endpoints".to_owned()));
    assert!(!types.contains(&"events.events.k8s.io".to_owned()), "{types:?}");
    assert!(everything.collected.objects[&"events".parse().unwrap()] > 0);
    assert_eq!(everything.collected.objects[&"endpoints".parse().unwrap()], 1);

    // Archives are never overwritten.
    let err = backup::run(&client, &request).await.unwrap_err();
    assert!(matches!(err, backup::BackupError::AlreadyExists { .. }), "{err}");
}
