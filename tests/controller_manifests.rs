//! The deploy manifests: every document parses into its k8s-openapi type with no field lost,
//! they agree with each other and with the controller's needs, a real API server accepts them,
//! and the controller running with exactly the RBAC of `deploy/controller/rbac.yaml` (a token
//! of its service account) promotes and rolls back the design's example.
#![allow(clippy::unwrap_used)]

mod controller_env;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use support::apps;

use controller_env::{DESIGN_POLICY_NAME, Env};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/controller");

/// Every manifest, typed.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    claims: Vec<PersistentVolumeClaim>,
    services: Vec<Service>,
    crds: Vec<CustomResourceDefinition>,
}

/// Deserializes `doc` as `T` and checks nothing was lost on the way (a misspelled field would
/// be dropped by serde and show up here).
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, file: &Path) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &back,
        doc,
        "{}: a field did not survive parsing into its type (misspelled or misplaced?)",
        file.display()
    );
    object
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/crds.yaml"
    )));
    files
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    for file in yaml_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_str_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let f = file.as_path();
            match doc["kind"].as_str().unwrap_or_default() {
                "Namespace" => m.namespaces.push(typed(doc, f)),
                "ServiceAccount" => m.service_accounts.push(typed(doc, f)),
                "ClusterRole" => m.cluster_roles.push(typed(doc, f)),
                "ClusterRoleBinding" => m.cluster_role_bindings.push(typed(doc, f)),
                "Role" => m.roles.push(typed(doc, f)),
                "RoleBinding" => m.role_bindings.push(typed(doc, f)),
                "Deployment" => m.deployments.push(typed(doc, f)),
                "PersistentVolumeClaim" => m.claims.push(typed(doc, f)),
                "Service" => m.services.push(typed(doc, f)),
                "CustomResourceDefinition" => m.crds.push(typed(doc, f)),
                other => panic!("{}: unexpected kind {other:?}", file.display()),
            }
        }
    }
    m
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group || g == "*")
            && r.resources.iter().flatten().any(|x| x == resource || x == "*")
            && r.verbs.iter().any(|v| v == verb || v == "*")
    })
}

#[test]
fn the_manifests_parse_and_agree_with_each_other_and_the_controller() {
    let m = load();
    assert_eq!(m.crds.len(), 2);
    let deployment = &m.deployments[0];
    let pod = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let sa = pod.service_account_name.as_deref().unwrap();
    assert!(
        m.service_accounts
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(sa))
    );
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "controller");
    assert!(args.contains(&"--backup-dir=/data/backup".to_owned()));
    let (_, claim) = support::claim_mounted_at(pod, container, "/data/backup");
    assert!(m.claims.iter().any(|c| c.metadata.name.as_deref() == Some(claim)));
    let env: Vec<&str> = container.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        m.claims[0].spec.as_ref().unwrap().access_modes.as_deref(),
        Some(&["ReadWriteMany".to_owned()][..]),
        "two replicas on different nodes share the archives"
    );

    // The cluster-wide rules cover what the controller does.
    let rules = m.cluster_roles[0].rules.clone().unwrap();
    for (group, resource, verb) in [
        ("kosmos.io", "promotepolicies", "watch"),
        ("kosmos.io", "promotepolicies", "list"),
        ("kosmos.io", "promotepolicies", "patch"),
        ("kosmos.io", "promotepolicies/status", "patch"),
        ("kosmos.io", "promotepolicies/finalizers", "update"),
        ("kosmos.io", "clusters", "get"),
        ("", "nodes", "get"),
        ("", "namespaces", "create"),
        ("", "namespaces", "delete"),
        ("", "pods", "create"),
        ("", "pods/status", "patch"),
        ("", "pods", "delete"),
        ("apps", "replicasets", "patch"),
        ("apps", "deployments", "create"),
        ("rbac.authorization.k8s.io", "rolebindings", "create"),
        ("rbac.authorization.k8s.io", "clusterroles", "bind"),
        ("rbac.authorization.k8s.io", "roles", "escalate"),
        ("", "persistentvolumes", "patch"),
    ] {
        assert!(allows(&rules, group, resource, verb), "{verb} {resource}.{group}");
    }
    assert!(
        !allows(&rules, "kosmos.io", "clusters", "list"),
        "Cluster objects are read by name only"
    );
    assert!(
        !allows(&rules, "", "secrets", "list"),
        "no cluster-wide secret listing"
    );
    // Issue 10: `bind` and `escalate` only where the API server checks them (on roles), and no
    // wildcard anywhere.
    for resource in ["rolebindings", "clusterrolebindings", "pods", "secrets"] {
        for verb in ["bind", "escalate"] {
            assert!(
                !allows(&rules, "rbac.authorization.k8s.io", resource, verb)
                    && !allows(&rules, "", resource, verb),
                "{verb} on {resource}"
            );
        }
    }
    assert!(
        rules.iter().all(|r| !r.verbs.contains(&"*".to_owned())
            && !r.resources.iter().flatten().any(|x| x == "*")
            && !r.api_groups.iter().flatten().any(|x| x == "*")),
        "no wildcards in the controller's rules"
    );
    // Namespaced grants: the lease in the controller's namespace, events in `default`.
    let role = |ns: &str| {
        m.roles
            .iter()
            .find(|r| r.metadata.namespace.as_deref() == Some(ns))
            .unwrap()
            .rules
            .clone()
            .unwrap()
    };
    for verb in ["get", "create", "update"] {
        assert!(allows(
            &role("kosmos-system"),
            "coordination.k8s.io",
            "leases",
            verb
        ));
    }
    for verb in ["create", "patch"] {
        assert!(allows(&role("default"), "events.k8s.io", "events", verb));
    }
    for binding in &m.role_bindings {
        assert!(
            m.roles
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(&binding.role_ref.name)
                    && r.metadata.namespace == binding.metadata.namespace)
        );
    }
}

#[tokio::test]
async fn the_api_server_accepts_the_manifests_and_their_rbac_is_enough_to_promote_and_roll_back() {
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;

    // Server-side validation first, then for real (the namespace must exist for the rest).
    let out = env.kubectl_cp(&[
        "apply",
        "--dry-run=server",
        "-f",
        &format!("{DIR}/namespace.yaml"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.kubectl_cp(&["apply", "-f", &format!("{DIR}/namespace.yaml")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.kubectl_cp(&["apply", "--dry-run=server", "-f", DIR]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.kubectl_cp(&["apply", "-f", DIR]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let applied = String::from_utf8_lossy(&out.stdout);
    for object in [
        "deployment.apps/kpromote-controller",
        "persistentvolumeclaim/kpromote-backup",
        "clusterrole.rbac.authorization.k8s.io/kpromote-controller",
        "service/kpromote-controller-metrics",
    ] {
        assert!(applied.contains(object), "{applied}");
    }

    // The controller as its service account: nothing but rbac.yaml's grants.
    let kubeconfig = env.service_account_kubeconfig("kosmos-system", "kpromote-controller");
    let controller = env.controller(
        "rbac",
        &[
            &format!("--kubeconfig={}", kubeconfig.display()),
            "--leader-elect=true",
            "--leader-election-namespace=kosmos-system",
        ],
        &[],
    );
    env.promote_and_roll_back_design(&controller).await;
    let lease = Api::<Lease>::namespaced(env.cp.clone(), "kosmos-system")
        .get("kpromote-controller")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("rbac"));
    let described = env.kubectl_cp(&["describe", "promotepolicy", DESIGN_POLICY_NAME]);
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("RolledBack") && described.contains("Normal"),
        "{described}"
    );
    assert!(!controller.log().contains("forbidden"), "{}", controller.log());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );
}
