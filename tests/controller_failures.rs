//! What the controller does when a promotion cannot finish:
//! - a restore refused by the control plane is rolled back automatically — even when the
//!   controller is killed during that rollback, the restart resumes the *rollback* — and ends
//!   in `FailedRestore` saying so, the member as before;
//! - a policy deleted while `Restoring` is rolled back before it goes away;
//! - a `Completed` policy's deletion leaves the promoted state in place, and the archive it
//!   leaves behind still rolls back with `kpromote rollback`.
#![allow(clippy::unwrap_used)]

mod controller_env;
mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kpromote_core::policy::{CONDITION_ROLLED_BACK, Phase};
use kube::Api;
use serde_json::json;
use support::{apps, wait_for};

use controller_env::{DESIGN_POLICY, DESIGN_POLICY_NAME, Env};

async fn wait_policy_gone(env: &Env, name: &str) {
    wait_for(
        &format!("PromotePolicy {name} to go away"),
        Duration::from_secs(90),
        || async {
            env.policies()
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// A ValidatingAdmissionPolicy that refuses ReplicaSets in nginx-test of the control plane:
/// the restore fails after the member was detached and the pods were restored.
fn refuse_replicasets(env: &Env) {
    let manifest = json!({ "apiVersion": "v1", "kind": "List", "items": [
        { "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
          "metadata": { "name": "refuse-replicasets" },
          "spec": { "failurePolicy": "Fail",
                    "matchConstraints": { "resourceRules": [{ "apiGroups": ["apps"], "apiVersions": ["v1"],
                        "operations": ["CREATE"], "resources": ["replicasets"] }] },
                    "validations": [{ "expression": "false", "message": "test: no ReplicaSets here" }] } },
        { "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
          "metadata": { "name": "refuse-replicasets" },
          "spec": { "policyName": "refuse-replicasets", "validationActions": ["Deny"],
                    "matchResources": { "namespaceSelector": { "matchLabels": {
                        "kubernetes.io/metadata.name": "nginx-test" } } } } },
    ]});
    env.apply(&serde_json::to_string(&manifest).unwrap());
}

#[tokio::test]
async fn a_failed_restore_is_rolled_back_automatically_even_across_a_crash() {
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;
    refuse_replicasets(&env);
    // Admission policies take effect once the API server's informers have them.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Killed right after it recorded that it is rolling back.
    let doomed = env.controller(
        "auto-rollback-killed",
        &[],
        &[(kpromote_core::journal::FAILPOINT_ENV, "phase:RollingBack")],
    );
    env.apply(DESIGN_POLICY);
    wait_for("the controller to crash", Duration::from_secs(90), || {
        let exited = doomed.exited();
        async move { exited }
    })
    .await;
    let policy = env.policies().get(DESIGN_POLICY_NAME).await.unwrap();
    let status = policy.status.unwrap();
    assert_eq!(
        status.phase,
        Some(Phase::RollingBack),
        "{status:#?}\n{}",
        doomed.log()
    );
    assert_eq!(
        status.condition(CONDITION_ROLLED_BACK).unwrap().reason,
        "RestoreFailed"
    );
    // Every failure of the level that failed is in the status, with the count.
    assert_eq!(status.failed_count, Some(1), "{status:#?}");
    assert!(
        status.failures.len() == 1 && status.failures[0].contains("test: no ReplicaSets here"),
        "{status:#?}"
    );

    // Restarted, it finishes the rollback — it does not resume the promote.
    let controller = env.controller("auto-rollback-resumed", &[], &[]);
    let policy = env.wait_design(&controller, Phase::FailedRestore, 120).await;
    let status = policy.status.unwrap();
    let reason = status.failure_reason.clone().unwrap();
    assert!(
        reason.starts_with("restore failed") && reason.contains("test: no ReplicaSets here"),
        "{reason}"
    );
    assert!(reason.contains("rolled back automatically"), "{reason}");
    let rolled = status.condition(CONDITION_ROLLED_BACK).unwrap();
    assert_eq!(
        (rolled.status.as_str(), rolled.reason.as_str()),
        ("True", "RestoreFailed")
    );
    let (_, metrics) = controller.http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"kpromote_step_duration_seconds_count{step="rollback",outcome="ok"} 1"#)
            && !metrics.contains(r#"step="promote""#),
        "the restarted controller must resume the rollback, never the promote:\n{metrics}"
    );

    assert_rolled_back(&env, &original).await;
    let out = env.kubectl_cp(&["describe", "promotepolicy", DESIGN_POLICY_NAME]);
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(
        described
            .lines()
            .any(|l| l.contains("Warning") && l.contains("FailedRestore")),
        "{described}"
    );
    // (The RollingBack event died with the killed controller: events are best effort, the
    // status is the record.)

    // A rollback request on the failed policy is accepted and ends in RolledBack.
    env.apply(&controller_env::design_rollback_policy());
    env.wait_design(&controller, Phase::RolledBack, 60).await;
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );
}

#[tokio::test]
async fn a_policy_deleted_mid_promotion_is_rolled_back_before_it_goes_away() {
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;
    // A long pause between restore levels keeps the promotion in Restoring for a while.
    let controller = env.controller("deleter", &["--settle-seconds=6"], &[]);
    env.apply(DESIGN_POLICY);
    env.wait_any_phase(DESIGN_POLICY_NAME, &[Phase::Restoring], Duration::from_secs(60))
        .await;
    let out = env.kubectl_cp(&["delete", "promotepolicy", DESIGN_POLICY_NAME, "--wait=false"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_policy_gone(&env, DESIGN_POLICY_NAME).await;
    assert!(
        controller
            .log()
            .contains("policy deleted; stopping the running step"),
        "{}",
        controller.log()
    );
    let events = env.kubectl_cp(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        &format!("involvedObject.name={DESIGN_POLICY_NAME}"),
    ]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.contains("RolledBack") && events.contains("deleted while Restoring"),
        "{events}"
    );

    assert_rolled_back(&env, &original).await;
}

#[tokio::test]
async fn deleting_a_completed_policy_leaves_the_promotion_and_its_archive_rolls_back_by_hand() {
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;
    let controller = env.controller("keeper", &[], &[]);
    let policy = env.apply_design(&controller, Phase::Completed, 120).await;
    let archive = policy.status.unwrap().backedup_file.unwrap();
    let out = env.kubectl_cp(&["delete", "promotepolicy", DESIGN_POLICY_NAME, "--timeout=30s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_policy_gone(&env, DESIGN_POLICY_NAME).await;

    // Still promoted: the pods live in the control plane, the member has no owners.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cp_pods = Api::<Pod>::namespaced(env.cp.clone(), "nginx-test")
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(cp_pods.items.len(), original.pods.len());
    let member = apps::snapshot(&env.member, "nginx-test").await;
    assert_eq!(member.pods, original.pods);
    assert!(member.replicasets.is_empty());

    // The archive on the backup volume is enough to roll back from the command line.
    let out = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .arg("rollback")
        .arg(format!(
            "--member-kubeconfig={}",
            env.member_kubeconfig().display()
        ))
        .arg(format!(
            "--control-plane-kubeconfig={}",
            env.cp_kubeconfig().display()
        ))
        .arg("--cluster-name=member")
        .arg(format!("--archive={archive}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_rolled_back(&env, &original).await;
}

/// The member as it was before the policy (once its controllers have seen everything the
/// rollback wrote), and the promoted namespace gone from the control plane.
async fn assert_rolled_back(env: &Env, original: &apps::Snapshot) {
    support::controllers_caught_up(&[(&env.member, "nginx-test")]).await;
    apps::snapshot(&env.member, "nginx-test")
        .await
        .assert_rolled_back_to(original, "rollback");
    support::wait_namespace_gone(&env.cp, "nginx-test").await;
}
