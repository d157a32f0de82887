//! Reaching clusters: kubeconfig files, Kosmos Cluster objects, and the errors users see.
#![allow(clippy::unwrap_used)]

use kpromote_core::access::{AccessError, ClusterClient, KubeconfigPolicy};
use kpromote_core::kosmos::cluster::{Cluster as KosmosCluster, ClusterSpec};
use kpromote_testenv::TestEnv;

/// The committed CRDs, as a user applies them.
const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds.yaml");
use kube::Api;
use kube::api::PostParams;

#[tokio::test]
async fn a_missing_kubeconfig_and_an_unreachable_server_are_named() {
    let err = ClusterClient::connect("member", Some("/nonexistent/kubeconfig".as_ref()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AccessError::Kubeconfig { path, .. } if path.ends_with("kubeconfig")),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:1\n\
         users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: u\n\
         current-context: gone\n",
    )
    .unwrap();
    let err = ClusterClient::connect("member", Some(&path), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AccessError::Unreachable { server, .. } if server.contains("127.0.0.1:1")),
        "{err}"
    );
    assert!(err.to_string().contains("member"), "{err}");

    let err = ClusterClient::connect("member", Some(&path), Some("no-such-context"))
        .await
        .unwrap_err();
    assert!(matches!(&err, AccessError::Context { .. }), "{err}");
}

#[tokio::test]
async fn the_member_is_reached_through_its_kosmos_cluster_object() {
    let env = TestEnv::start(&["control-plane", "member"]).await.unwrap();
    let cp = env.cluster("control-plane");
    let member = env.cluster("member");
    let out = cp.kubectl(&["apply", "-f", CRDS]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cp_client = cp.client().await.unwrap();

    let err = ClusterClient::from_kosmos_cluster(&cp_client, "member", KubeconfigPolicy::default())
        .await
        .unwrap_err();
    // The CRD may still be settling: either way the error names the Cluster.
    assert!(
        matches!(&err, AccessError::KosmosCluster { name, .. } if name == "member"),
        "{err}"
    );

    let clusters: Api<KosmosCluster> = Api::all(cp_client.clone());
    let object = KosmosCluster::new(
        "member",
        ClusterSpec {
            kubeconfig: Some(k8s_openapi::ByteString(
                member.kubeconfig_yaml().as_bytes().to_vec(),
            )),
        },
    );
    for _ in 0..50 {
        match clusters.create(&PostParams::default(), &object).await {
            Ok(_) => break,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    let reached = ClusterClient::from_kosmos_cluster(&cp_client, "member", KubeconfigPolicy::default())
        .await
        .unwrap();
    assert_eq!(reached.server.trim_end_matches('/'), member.server());
    assert_eq!(reached.role, "member");
}
