//! A run killed at any step boundary of promote or rollback — or in the middle of detach and
//! restore — resumes and reaches the same end state, with no pod restarted.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::pair::Pair;
use support::{apps, archiving};

/// (promote failpoint, rollback failpoint): each pair is one promote+rollback cycle.
const CYCLES: &[(&str, &str)] = &[
    ("detach:1:begun", "unmark:1"),
    ("detach:1", "recreate:1:begun"),
    ("mark:1", "recreate:1"),
    ("restore:1:begun", "adopt:1"),
    ("restore:4", "teardown:1:begun"),
    ("adopt:1", "teardown:1"),
];

fn kpromote(pair: &Pair, subcommand: &str, archive: &Path, failpoint: Option<&str>) -> std::process::Output {
    let mut cmd = pair.kpromote(subcommand);
    cmd.arg(format!("--archive={}", archive.display()));
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

/// Runs `subcommand` killed at `failpoint`, then again to its end.
fn crash_and_resume(pair: &Pair, subcommand: &str, archive: &Path, failpoint: &str, cycle: usize) {
    assert_crashed(&kpromote(pair, subcommand, archive, Some(failpoint)), failpoint);
    let out = kpromote(pair, subcommand, archive, None);
    assert_ok(
        &out,
        &format!("cycle {cycle}: {subcommand} resumed after {failpoint}"),
    );
}

#[tokio::test]
async fn a_run_killed_at_every_step_boundary_resumes_to_the_same_end_state() {
    let (pair, original) = Pair::start_with_nginx().await;
    let (cp_client, member_client) = (pair.cp.clone(), pair.member.clone());

    for (cycle, (promote_fp, rollback_fp)) in CYCLES.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let archive = archiving::archive(&member_client, &["nginx-test"], &[], dir.path()).await;

        crash_and_resume(&pair, "promote", &archive, promote_fp, cycle);
        support::controllers_caught_up(&[(&member_client, "nginx-test"), (&cp_client, "nginx-test")]).await;
        let member_snap = apps::snapshot(&member_client, "nginx-test").await;
        assert_eq!(
            member_snap.pods, original.pods,
            "cycle {cycle} ({promote_fp}): member pods changed"
        );
        assert!(member_snap.replicasets.is_empty());
        apps::snapshot(&cp_client, "nginx-test")
            .await
            .assert_promoted_from(&original, &format!("cycle {cycle} ({promote_fp})"));
        assert!(support::has_deployment(&cp_client, "nginx-test", "nginx").await);

        crash_and_resume(&pair, "rollback", &archive, rollback_fp, cycle);
        support::controllers_caught_up(&[(&member_client, "nginx-test")]).await;
        apps::snapshot(&member_client, "nginx-test")
            .await
            .assert_rolled_back_to(&original, &format!("cycle {cycle} ({rollback_fp})"));
        assert!(support::has_deployment(&member_client, "nginx-test", "nginx").await);
        support::wait_namespace_gone(&cp_client, "nginx-test").await;
    }
}

/// A promote killed while detach holds the ReplicaSet (being deleted, its pods partly taken off
/// it), then rolled back instead of resumed: rollback lets the held owner go — the garbage
/// collector orphans what still references it first — and re-creates it; nothing in the member
/// is left held, and no pod restarted or was replaced.
#[tokio::test]
async fn a_promote_killed_while_detach_holds_an_owner_rolls_back_cleanly() {
    let (pair, original) = Pair::start_with_nginx().await;
    let member_client = pair.member.clone();
    let dir = tempfile::tempdir().unwrap();
    let archive = archiving::archive(&member_client, &["nginx-test"], &[], dir.path()).await;
    assert_crashed(&kpromote(&pair, "promote", &archive, Some("mark:1")), "mark:1");
    let held = held_in(&member_client, "nginx-test").await;
    assert!(!held.is_empty(), "the killed detach left no owner held");

    assert_ok(
        &kpromote(&pair, "rollback", &archive, None),
        "rollback after a killed promote",
    );
    support::controllers_caught_up(&[(&member_client, "nginx-test")]).await;
    apps::snapshot(&member_client, "nginx-test")
        .await
        .assert_rolled_back_to(&original, "rollback after a promote killed mid-detach");
    assert_eq!(held_in(&member_client, "nginx-test").await, Vec::<String>::new());
}

/// The Deployments and ReplicaSets of `ns` that carry detach's hold finalizer.
async fn held_in(client: &kube::Client, ns: &str) -> Vec<String> {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use kube::api::{Api, ListParams};
    let held = |finalizers: Option<&Vec<String>>| {
        finalizers.is_some_and(|f| f.iter().any(|f| f == "kpromote.io/detach"))
    };
    let mut out = Vec::new();
    for d in Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        if held(d.metadata.finalizers.as_ref()) {
            out.push(format!("deployment {}", d.metadata.name.unwrap_or_default()));
        }
    }
    for rs in Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        if held(rs.metadata.finalizers.as_ref()) {
            out.push(format!("replicaset {}", rs.metadata.name.unwrap_or_default()));
        }
    }
    out
}
