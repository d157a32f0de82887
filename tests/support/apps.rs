//! Applications the cluster tests promote, built the way users build them (through the API,
//! with the real controllers creating ReplicaSets, Pods, ControllerRevisions and PVC bindings),
//! and snapshots that prove nothing restarted.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kpromote_testenv::FakeKubelet;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::wait_for;

const SETTLE: Duration = Duration::from_secs(90);

/// Creates any object from JSON through the dynamic API (kind → resource by discovery).
pub async fn create(client: &Client, object: Value) -> DynamicObject {
    let obj: DynamicObject = serde_json::from_value(object).unwrap();
    let types = obj.types.clone().unwrap();
    let gvk = GroupVersionKind::try_from(&types).unwrap();
    // Discovery lags a freshly Established CRD by a moment.
    let mut attempt = 0;
    let (ar, caps) = loop {
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(found) => break found,
            Err(e) if attempt < 50 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("discovery of {gvk:?}: {e}"),
        }
    };
    let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {types:?} {:?}: {e}", obj.metadata.name))
}

fn deployment(ns: &str, name: &str, replicas: i32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": name } },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "serviceAccountName": "default",
                    "tolerations": [{ "key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule" }],
                    "containers": [{ "name": "main", "image": image, "ports": [{ "containerPort": 80 }] }],
                },
            },
        },
    })
}

/// The design's nginx example (namespace `nginx-test`), with its pod running.
pub async fn nginx_example(client: &Client, kubelet: &FakeKubelet) {
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(include_str!("../../deploy/examples/nginx.yaml")).unwrap();
    for doc in docs {
        create(client, doc).await;
    }
    run_pods(client, kubelet, "nginx-test", "", 1).await;
}

/// Waits until `count` pods matching `selector` exist, then makes them run.
pub async fn run_pods(client: &Client, kubelet: &FakeKubelet, ns: &str, selector: &str, count: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("{count} pods in {ns} matching {selector:?}"),
        SETTLE,
        || async {
            (pods
                .list(&ListParams::default().labels(selector))
                .await
                .unwrap()
                .items
                .len()
                >= count)
                .then_some(())
        },
    )
    .await;
    kubelet.start_pods(ns, selector).await.unwrap();
}

/// Creates namespace `ns` and waits for its `default` ServiceAccount (pods need it).
pub async fn namespace(client: &Client, ns: &str) {
    create(
        client,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
    )
    .await;
    wait_for("default ServiceAccount", SETTLE, || async {
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
            .get_opt("default")
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
}

/// The cluster-scoped objects [`rich_namespace`] `ns` depends on, as a backup collects them
/// (its StorageClass aside, which the test creates when it needs it): (group, resource, name).
pub fn rich_namespace_dependencies(ns: &str) -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("", "persistentvolumes", format!("{ns}-db-pv-0")),
        ("", "persistentvolumes", format!("{ns}-db-pv-1")),
        (
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            format!("{ns}-app-shared-reader"),
        ),
        (
            "rbac.authorization.k8s.io",
            "clusterroles",
            "kpromote-test-shared-reader".to_owned(),
        ),
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "webapps.example.kpromote.io".to_owned(),
        ),
    ]
}

/// The rich namespace of the engine tests, in namespace `ns` of the member:
/// - `web`: Deployment, 3 replicas, running;
/// - `rolling`: Deployment mid-rollout (old ReplicaSet with 2 running pods, new ReplicaSet with one
///   pod that never becomes ready, so the rollout is stuck in both clusters);
/// - `db`: StatefulSet (Parallel) with 2 replicas and a volumeClaimTemplate; each PVC bound to a
///   pre-created PV of StorageClass `kpromote-manual`; a headless Service;
/// - `lonely`: a bare Pod;
/// - `web-nodeport`: a NodePort Service with the fixed port `node_port`;
/// - ConfigMap `settings`, Secret `credentials`, ServiceAccount `app` with Role/RoleBinding, and a
///   ClusterRoleBinding of `app` to ClusterRole `kpromote-test-shared-reader`;
/// - a CRD `webapps.example.kpromote.io` and a WebApp `shop` that owns Deployment `shop`.
pub async fn rich_namespace(client: &Client, kubelet: &FakeKubelet, ns: &str, node_port: u16) {
    namespace(client, ns).await;
    for obj in [
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "settings", "namespace": ns },
                "data": { "mode": "production", "answer": "yes" } }),
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "credentials", "namespace": ns },
                "type": "Opaque", "stringData": { "password": "hunter2" } }),
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "app", "namespace": ns } }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": { "name": "app", "namespace": ns },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": { "name": "app", "namespace": ns },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app" },
                "subjects": [{ "kind": "ServiceAccount", "name": "app", "namespace": ns }] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": format!("{ns}-app-shared-reader") },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kpromote-test-shared-reader" },
                "subjects": [{ "kind": "ServiceAccount", "name": "app", "namespace": ns }] }),
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web-nodeport", "namespace": ns },
                "spec": { "type": "NodePort", "selector": { "app": "web" },
                          "ports": [{ "port": 80, "targetPort": 80, "nodePort": node_port }] } }),
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "db", "namespace": ns },
                "spec": { "clusterIP": "None", "selector": { "app": "db" }, "ports": [{ "port": 5432 }] } }),
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "lonely", "namespace": ns, "labels": { "app": "lonely" } },
                "spec": { "containers": [{ "name": "main", "image": "busybox:1.36", "command": ["sleep", "infinity"] }] } }),
    ] {
        create(client, obj).await;
    }

    // web: a plain running Deployment.
    create(client, deployment(ns, "web", 3, "nginx:1.25")).await;
    run_pods(client, kubelet, ns, "app=web", 3).await;

    // rolling: running at v1, then a rollout to v2 whose new pod never becomes ready.
    create(client, deployment(ns, "rolling", 2, "nginx:1.24")).await;
    run_pods(client, kubelet, ns, "app=rolling", 2).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for("rolling v1 available", SETTLE, || async {
        let d = deployments.get("rolling").await.unwrap();
        (d.status.and_then(|s| s.available_replicas) == Some(2)).then_some(())
    })
    .await;
    let patch = json!({ "spec": { "template": { "spec": { "containers": [{ "name": "main", "image": "nginx:1.26" }] } } } });
    deployments
        .patch("rolling", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for("rolling mid-rollout: 2 ReplicaSets, 3 pods", SETTLE, || async {
        let rs = replicasets
            .list(&ListParams::default().labels("app=rolling"))
            .await
            .unwrap()
            .items
            .len();
        let p = pods
            .list(&ListParams::default().labels("app=rolling"))
            .await
            .unwrap()
            .items
            .len();
        (rs == 2 && p == 3).then_some(())
    })
    .await;
    let new_pod = pods
        .list(&ListParams::default().labels("app=rolling"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
        .unwrap();
    // Bound (scheduled) but never reported running: the rollout waits on it forever.
    let binding = json!({ "apiVersion": "v1", "kind": "Binding",
        "metadata": { "name": new_pod.metadata.name, "namespace": ns },
        "target": { "apiVersion": "v1", "kind": "Node", "name": kubelet.node() } });
    pods.create_subresource::<_, Value>(
        "binding",
        new_pod.metadata.name.as_deref().unwrap(),
        &PostParams::default(),
        &binding,
    )
    .await
    .unwrap();

    // db: StatefulSet with PVCs bound to static PVs.
    for i in 0..2 {
        create(
            client,
            json!({ "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": { "name": format!("{ns}-db-pv-{i}") },
            "spec": { "capacity": { "storage": "1Gi" }, "accessModes": ["ReadWriteOnce"],
                      "storageClassName": "kpromote-manual", "persistentVolumeReclaimPolicy": "Retain",
                      "claimRef": { "namespace": ns, "name": format!("data-db-{i}") },
                      "hostPath": { "path": format!("/tmp/kpromote-{ns}-db-{i}") } } }),
        )
        .await;
    }
    create(client, json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": { "name": "db", "namespace": ns },
        "spec": { "serviceName": "db", "replicas": 2, "podManagementPolicy": "Parallel",
                  "selector": { "matchLabels": { "app": "db" } },
                  "template": { "metadata": { "labels": { "app": "db" } },
                                "spec": { "containers": [{ "name": "pg", "image": "postgres:16",
                                          "volumeMounts": [{ "name": "data", "mountPath": "/var/lib/postgresql" }] }] } },
                  "volumeClaimTemplates": [{ "metadata": { "name": "data" },
                      "spec": { "accessModes": ["ReadWriteOnce"], "storageClassName": "kpromote-manual",
                                "resources": { "requests": { "storage": "1Gi" } } } }] } })).await;
    run_pods(client, kubelet, ns, "app=db", 2).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    wait_for("db PVCs bound", SETTLE, || async {
        let list = pvcs.list(&ListParams::default()).await.unwrap().items;
        (list.len() == 2
            && list
                .iter()
                .all(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")))
        .then_some(())
    })
    .await;

    // shop: a custom resource that owns a Deployment (an operator's pattern, with no operator).
    install_webapp_crd(client).await;
    let webapp = create(
        client,
        json!({ "apiVersion": "example.kpromote.io/v1", "kind": "WebApp",
        "metadata": { "name": "shop", "namespace": ns }, "spec": { "replicas": 1 } }),
    )
    .await;
    let mut shop = deployment(ns, "shop", 1, "nginx:1.25");
    shop["metadata"]["ownerReferences"] = json!([{ "apiVersion": "example.kpromote.io/v1", "kind": "WebApp",
        "name": "shop", "uid": webapp.metadata.uid, "controller": true, "blockOwnerDeletion": true }]);
    create(client, shop).await;
    run_pods(client, kubelet, ns, "app=shop", 1).await;
    run_pods(client, kubelet, ns, "app=lonely", 1).await;
}

/// The ClusterRole the rich namespace's ClusterRoleBinding references; tests create it in both
/// clusters to prove rollback leaves a pre-existing control-plane object alone.
pub fn shared_reader_cluster_role() -> Value {
    json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": "kpromote-test-shared-reader" },
            "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"] }] })
}

/// The WebApp CRD, Established.
pub async fn install_webapp_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds
        .get_opt("webapps.example.kpromote.io")
        .await
        .unwrap()
        .is_some()
    {
        return;
    }
    create(client, json!({ "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": "webapps.example.kpromote.io" },
        "spec": { "group": "example.kpromote.io", "scope": "Namespaced",
                  "names": { "plural": "webapps", "singular": "webapp", "kind": "WebApp" },
                  "versions": [{ "name": "v1", "served": true, "storage": true,
                                 "schema": { "openAPIV3Schema": { "type": "object",
                                     "properties": { "spec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } } } }] } })).await;
    tokio::time::timeout(
        SETTLE,
        await_condition(
            crds,
            "webapps.example.kpromote.io",
            conditions::is_crd_established(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
}

/// The WebApp API, for tests.
pub fn webapps(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.kpromote.io", "v1", "WebApp"),
        "webapps",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Everything the zero-restart promise is judged on, in one namespace of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Pod name → (uid, total restart count, node name).
    pub pods: BTreeMap<String, (String, i32, String)>,
    /// ReplicaSet name → uid.
    pub replicasets: BTreeMap<String, String>,
    /// ControllerRevision name → uid.
    pub revisions: BTreeMap<String, String>,
    /// Names of Pods, ReplicaSets and ControllerRevisions whose creator (first managedFields
    /// entry with operation Create... or the sole manager) is a controller of
    /// kube-controller-manager rather than a client.
    pub controller_created: Vec<String>,
}

impl Snapshot {
    /// Checks a control-plane snapshot after promoting `member_before`: the same pods,
    /// ReplicaSets and revisions by name (their UIDs are new there) and none made by a
    /// controller, which would mean a controller replaced instead of adopted.
    pub fn assert_promoted_from(&self, member_before: &Snapshot, context: &str) {
        assert_eq!(
            self.pods.keys().collect::<Vec<_>>(),
            member_before.pods.keys().collect::<Vec<_>>(),
            "{context}: pods in the control plane"
        );
        assert_eq!(
            self.replicasets.keys().collect::<Vec<_>>(),
            member_before.replicasets.keys().collect::<Vec<_>>(),
            "{context}: ReplicaSets in the control plane"
        );
        assert_eq!(
            self.revisions.keys().collect::<Vec<_>>(),
            member_before.revisions.keys().collect::<Vec<_>>(),
            "{context}: ControllerRevisions in the control plane"
        );
        assert!(
            self.controller_created.is_empty(),
            "{context}: controller-made objects in the control plane: {:?}",
            self.controller_created
        );
    }

    /// Checks a member snapshot after a rollback to `before`: the very same pods (UIDs,
    /// restart counts, nodes), the owners back under their names, and nothing a controller
    /// made that was not there before.
    pub fn assert_rolled_back_to(&self, before: &Snapshot, context: &str) {
        assert_eq!(
            self.pods, before.pods,
            "{context}: same pods, same UIDs, no restarts"
        );
        assert_eq!(
            self.replicasets.keys().collect::<Vec<_>>(),
            before.replicasets.keys().collect::<Vec<_>>(),
            "{context}: the member's ReplicaSets are back"
        );
        assert!(
            self.controller_created
                .iter()
                .all(|n| before.controller_created.contains(n)),
            "{context}: new controller-made objects: {:?}",
            self.controller_created
        );
    }
}

/// Takes a [`Snapshot`] of namespace `ns`.
pub async fn snapshot(client: &Client, ns: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    for p in Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if created_by_controller(&p.metadata) {
            snap.controller_created
                .push(format!("pod/{}", p.metadata.name.clone().unwrap()));
        }
        snap.pods.insert(
            p.metadata.name.unwrap(),
            (p.metadata.uid.unwrap(), restarts, node),
        );
    }
    for rs in Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        if created_by_controller(&rs.metadata) {
            snap.controller_created
                .push(format!("replicaset/{}", rs.metadata.name.clone().unwrap()));
        }
        snap.replicasets
            .insert(rs.metadata.name.unwrap(), rs.metadata.uid.unwrap());
    }
    for cr in Api::<ControllerRevision>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        if created_by_controller(&cr.metadata) {
            snap.controller_created.push(format!(
                "controllerrevision/{}",
                cr.metadata.name.clone().unwrap()
            ));
        }
        snap.revisions
            .insert(cr.metadata.name.unwrap(), cr.metadata.uid.unwrap());
    }
    snap
}

/// Whether an object was created by kube-controller-manager: its earliest `Update`/`Apply` entry
/// in managedFields belongs to the controller manager (kpromote writes as `kpromote`).
fn created_by_controller(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|f| f.subresource.as_deref().unwrap_or_default().is_empty())
        .min_by_key(|f| f.time.as_ref().map(|t| t.0))
        .is_some_and(|f| f.manager.as_deref() == Some("kube-controller-manager"))
}

/// StatefulSets in `ns`, name → uid (for adoption checks).
pub async fn statefulsets(client: &Client, ns: &str) -> BTreeMap<String, String> {
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.metadata.name.unwrap(), s.metadata.uid.unwrap()))
        .collect()
}

/// Waits (up to 10 minutes) until namespace `ns` has `want` pods, then starts them all: the
/// controllers of a large application take a while to create every pod.
pub async fn start_all_pods(client: &Client, kubelet: &FakeKubelet, ns: &str, want: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let n = pods.list(&ListParams::default()).await.unwrap().items.len();
        if n >= want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {n}/{want} pods after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kubelet.start_pods(ns, "").await.unwrap();
}
