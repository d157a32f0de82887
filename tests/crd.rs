//! The committed CRD YAML is what the Rust types generate.

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = kpromote_core::policy::crds_yaml().expect("CRDs serialize");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds.yaml"))
        .expect("deploy/crds.yaml exists");
    assert!(
        generated == committed,
        "deploy/crds.yaml is stale; regenerate it with `cargo run -- crd > deploy/crds.yaml`"
    );
}

mod support;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kpromote_core::policy::PromotePolicy;
use kpromote_testenv::Cluster;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use support::CRDS;

/// Installs the committed CRDs the way a user would (`kubectl apply -f deploy/crds.yaml`) and
/// waits until they are Established.
async fn install_crds(cluster: &Cluster) -> kube::Client {
    let out = cluster.kubectl(&["apply", "-f", CRDS]).expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = cluster.client().await.expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["promotepolicies.kosmos.io", "clusters.kosmos.io"] {
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("watch works");
    }
    client
}

#[tokio::test]
async fn the_api_server_accepts_the_designs_policy_and_rejects_invalid_ones() {
    let cluster = Cluster::start("crd").await.expect("cluster starts");
    let client = install_crds(&cluster).await;
    let policies: Api<PromotePolicy> = Api::all(client);

    let design: PromotePolicy =
        serde_saphyr::from_str(include_str!("../deploy/examples/promote-policy.yaml")).expect("parses");
    let created = policies
        .create(&PostParams::default(), &design)
        .await
        .expect("the design's YAML is accepted");
    assert_eq!(created.spec, design.spec);

    let invalid = [
        (
            "empty-namespaces",
            serde_json::json!({ "includedNamespaces": [], "clusterName": "member" }),
        ),
        (
            "bad-namespace",
            serde_json::json!({ "includedNamespaces": ["Not_A_Namespace"], "clusterName": "member" }),
        ),
        (
            "no-cluster",
            serde_json::json!({ "includedNamespaces": ["a"], "clusterName": "" }),
        ),
        (
            "bad-rollback",
            serde_json::json!({ "includedNamespaces": ["a"], "clusterName": "m", "rollback": "yes" }),
        ),
    ];
    for (name, spec) in invalid {
        let policy: PromotePolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "kosmos.io/v1alpha1", "kind": "PromotePolicy", "metadata": { "name": name }, "spec": spec,
        }))
        .expect("deserializes");
        let err = policies
            .create(&PostParams::default(), &policy)
            .await
            .expect_err(name);
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{name}: {err}"
        );
    }

    // `kubectl get` shows the printer columns.
    let out = cluster
        .kubectl(&["get", "promotepolicies"])
        .expect("kubectl runs");
    let header = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["NAME", "PHASE", "CLUSTER", "BACKUP", "AGE"]);
}
