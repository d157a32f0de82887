//! A run killed at any step boundary of promote or rollback — or in the middle of detach and
//! restore — resumes and reaches the same end state, with no pod restarted.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kpromote::testenv::{Cluster, FakeKubelet, TestEnv, register_virtual_node};
use kube::Api;
use support::{apps, archiving};

/// (promote failpoint, rollback failpoint): each pair is one promote+rollback cycle.
const CYCLES: &[(&str, &str)] = &[
    ("detach:1:begun", "unmark:1"),
    ("detach:1", "recreate:1:begun"),
    ("mark:1", "recreate:1"),
    ("restore:1:begun", "adopt:1"),
    ("restore:4", "teardown:1:begun"),
    ("adopt:1", "teardown:3"),
];

fn kpromote(
    args: &[&str],
    member: &Cluster,
    cp: &Cluster,
    archive: &Path,
    failpoint: Option<&str>,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpromote"));
    cmd.args(args)
        .arg(format!(
            "--member-kubeconfig={}",
            member.kubeconfig_path().display()
        ))
        .arg(format!(
            "--control-plane-kubeconfig={}",
            cp.kubeconfig_path().display()
        ))
        .arg("--cluster-name=member")
        .arg(format!("--archive={}", archive.display()))
        .arg("--settle-seconds=1");
    match failpoint {
        Some(f) => cmd.env("KPROMOTE_FAILPOINT", f),
        None => cmd.env_remove("KPROMOTE_FAILPOINT"),
    };
    cmd.output().unwrap()
}

fn assert_crashed(out: &std::process::Output, failpoint: &str) {
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("KPROMOTE_FAILPOINT reached"),
        "{failpoint}: expected a crash, got {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_run_killed_at_every_step_boundary_resumes_to_the_same_end_state() {
    let env = TestEnv::start(&["control-plane", "member"]).await.unwrap();
    let (cp, member) = (env.cluster("control-plane"), env.cluster("member"));
    let cp_client = cp.client().await.unwrap();
    let member_client = member.client().await.unwrap();
    register_virtual_node(&cp_client, "member").await.unwrap();
    let kubelet = FakeKubelet::register(&member_client, "member-node-1")
        .await
        .unwrap();
    apps::nginx_example(&member_client, &kubelet).await;
    let original = apps::snapshot(&member_client, "nginx-test").await;

    for (cycle, (promote_fp, rollback_fp)) in CYCLES.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let archive = archiving::archive(&member_client, &["nginx-test"], &[], dir.path()).await;

        let out = kpromote(&["promote"], member, cp, &archive, Some(promote_fp));
        assert_crashed(&out, promote_fp);
        let out = kpromote(&["promote"], member, cp, &archive, None);
        assert_ok(
            &out,
            &format!("cycle {cycle}: promote resumed after {promote_fp}"),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let member_snap = apps::snapshot(&member_client, "nginx-test").await;
        assert_eq!(
            member_snap.pods, original.pods,
            "cycle {cycle} ({promote_fp}): member pods changed"
        );
        assert!(member_snap.replicasets.is_empty());
        let cp_snap = apps::snapshot(&cp_client, "nginx-test").await;
        assert_eq!(
            cp_snap.pods.keys().collect::<Vec<_>>(),
            original.pods.keys().collect::<Vec<_>>(),
            "cycle {cycle}"
        );
        assert_eq!(
            cp_snap.replicasets.keys().collect::<Vec<_>>(),
            original.replicasets.keys().collect::<Vec<_>>()
        );
        assert!(
            cp_snap.controller_created.is_empty(),
            "cycle {cycle}: {:?}",
            cp_snap.controller_created
        );
        assert!(
            Api::<Deployment>::namespaced(cp_client.clone(), "nginx-test")
                .get_opt("nginx")
                .await
                .unwrap()
                .is_some()
        );

        let out = kpromote(&["rollback"], member, cp, &archive, Some(rollback_fp));
        assert_crashed(&out, rollback_fp);
        let out = kpromote(&["rollback"], member, cp, &archive, None);
        assert_ok(
            &out,
            &format!("cycle {cycle}: rollback resumed after {rollback_fp}"),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rolled = apps::snapshot(&member_client, "nginx-test").await;
        assert_eq!(
            rolled.pods, original.pods,
            "cycle {cycle} ({rollback_fp}): member pods changed"
        );
        assert_eq!(
            rolled.replicasets.keys().collect::<Vec<_>>(),
            original.replicasets.keys().collect::<Vec<_>>()
        );
        assert!(
            Api::<Deployment>::namespaced(member_client.clone(), "nginx-test")
                .get_opt("nginx")
                .await
                .unwrap()
                .is_some()
        );
        support::wait_namespace_gone(&cp_client, "nginx-test").await;
    }
}
