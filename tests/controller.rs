//! The controller end to end: the design's PromotePolicy, applied verbatim with `kubectl`, is
//! driven by a separate `kpromote controller` process to `Completed` and — with the design's
//! `rollback: "true"` — to `RolledBack`, without a pod restarting; the status, conditions,
//! events, `kubectl describe` and `/metrics` say what happened.
#![allow(clippy::unwrap_used)]

mod controller_env;
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kpromote_core::policy::{CONDITION_READY, CONDITION_ROLLED_BACK, Phase};
use kube::Api;
use support::apps;

use controller_env::{DESIGN_POLICY, DESIGN_POLICY_NAME, Env, design_rollback_policy};

#[tokio::test]
async fn the_designs_policy_is_promoted_and_rolled_back_by_the_controller_without_a_restart() {
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;
    assert_eq!(original.pods.len(), 1);
    let controller = env.controller("solo", &[], &[]);

    // Promote: the design's YAML, verbatim.
    let started = Instant::now();
    let policy = env.apply_design(&controller, Phase::Completed, 120).await;
    let to_completed = started.elapsed();
    eprintln!("design policy applied -> Completed in {to_completed:.1?}");

    let status = policy.status.clone().unwrap();
    let archive = status.backedup_file.clone().unwrap();
    let file_name = std::path::Path::new(&archive)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(archive.starts_with(&env.backup_dir.path().display().to_string()));
    assert!(
        file_name.starts_with("promote-policy-example20") && std::path::Path::new(&archive).is_file(),
        "{archive}"
    );
    assert!(status.start_timestamp.is_some() && status.completion_timestamp.is_some());
    assert!(status.start_timestamp.as_ref().unwrap().0 <= status.completion_timestamp.as_ref().unwrap().0);
    assert_eq!(status.observed_generation, policy.metadata.generation);
    assert!(status.failure_reason.is_none() && status.precheck_errors.is_empty());
    let progress = status.progress.clone().unwrap();
    assert_eq!(progress.step, "restore");
    assert_eq!(progress.items_done, progress.items_total);
    let ready = status.condition(CONDITION_READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Completed")
    );
    assert_eq!(
        status.condition(CONDITION_ROLLED_BACK).unwrap().reason,
        "NotRequested"
    );
    assert_eq!(
        policy.metadata.finalizers.as_deref(),
        Some(&["kpromote.kosmos.io/finalizer".to_owned()][..])
    );

    // Nothing restarted; the control plane holds the same objects, on the virtual node.
    support::controllers_caught_up(&[(&env.member, "nginx-test"), (&env.cp, "nginx-test")]).await;
    let member_after = apps::snapshot(&env.member, "nginx-test").await;
    assert_eq!(
        member_after.pods, original.pods,
        "same pods, same UIDs, no restarts"
    );
    assert!(member_after.replicasets.is_empty());
    let cp_snap = apps::snapshot(&env.cp, "nginx-test").await;
    cp_snap.assert_promoted_from(&original, "Completed");
    for name in original.pods.keys() {
        let pod = Api::<Pod>::namespaced(env.cp.clone(), "nginx-test")
            .get(name)
            .await
            .unwrap();
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("kosmos-member"));
    }

    // What a user sees.
    let out = env.kubectl_cp(&["get", "promotepolicy"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Completed") && table.contains("member") && table.contains(&archive),
        "{table}"
    );
    let described = describe(&env);
    assert!(
        described.contains("Phase:") && described.contains("Completed"),
        "{described}"
    );
    assert!(described.contains("Backedup File:"), "{described}");
    for reason in ["Prechecking", "Backuping", "Detaching", "Restoring", "Completed"] {
        assert!(
            described
                .lines()
                .any(|l| l.contains("Normal") && l.contains(reason)),
            "event {reason} missing from describe:\n{described}"
        );
    }
    println!("{described}");

    // Rollback: the design's YAML with rollback: "true".
    let started = Instant::now();
    env.apply(&design_rollback_policy());
    let policy = env.wait_design(&controller, Phase::RolledBack, 120).await;
    let to_rolled_back = started.elapsed();
    eprintln!("rollback applied -> RolledBack in {to_rolled_back:.1?}");
    let status = policy.status.clone().unwrap();
    assert_eq!(status.backedup_file.as_deref(), Some(archive.as_str()));
    let rolled = status.condition(CONDITION_ROLLED_BACK).unwrap();
    assert_eq!(
        (rolled.status.as_str(), rolled.reason.as_str()),
        ("True", "RollbackRequested")
    );
    assert_eq!(status.condition(CONDITION_READY).unwrap().status, "False");
    assert!(status.failure_reason.is_none());

    support::controllers_caught_up(&[(&env.member, "nginx-test")]).await;
    apps::snapshot(&env.member, "nginx-test")
        .await
        .assert_rolled_back_to(&original, "RolledBack");
    support::wait_namespace_gone(&env.cp, "nginx-test").await;
    let described = describe(&env);
    assert!(described.contains("RolledBack"), "{described}");
    assert!(described.contains("RollingBack"), "{described}");

    // Metrics and probes.
    let (code, metrics) = controller.http_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    for line in [
        r#"kpromote_phase_transitions_total{from="Restoring",to="Completed"} 1"#,
        r#"kpromote_phase_transitions_total{from="RollingBack",to="RolledBack"} 1"#,
        r#"kpromote_step_duration_seconds_count{step="promote",outcome="ok"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert_eq!(controller.http_get("/healthz").await.unwrap().0, 200);
    assert_eq!(controller.http_get("/readyz").await.unwrap().0, 200);

    // Deleting a finished policy releases it at once and changes nothing.
    let out = env.kubectl_cp(&["delete", "promotepolicy", DESIGN_POLICY_NAME, "--timeout=30s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );
    println!(
        "measured: applied -> Completed {to_completed:.1?}; rollback applied -> RolledBack {to_rolled_back:.1?}"
    );
}

fn describe(env: &Env) -> String {
    let out = env.kubectl_cp(&["describe", "promotepolicy", DESIGN_POLICY_NAME]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_controller_promotes_and_rolls_back_with_the_real_clustertree_finding_nothing_to_change() {
    use kpromote_testenv::{Clustertree, KosmosKit};
    let env = Env::start().await;
    let kit = KosmosKit::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut kosmos = Clustertree::start(
        &kit,
        env.env.cluster("control-plane"),
        env.env.cluster("member"),
        "member",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let original = apps::snapshot(&env.member, "nginx-test").await;
    let controller = env.controller("kosmos", &[], &[]);

    env.apply(DESIGN_POLICY);
    env.wait_design(&controller, Phase::Completed, 120).await;
    let cp_pods: Api<Pod> = Api::namespaced(env.cp.clone(), "nginx-test");
    support::wait_for(
        "the promoted pod Running in the control plane",
        Duration::from_secs(30),
        || async {
            cp_pods
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(())
        },
    )
    .await;
    // clustertree retries a refused member update every 10 s: a longer quiet window.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(kosmos.update_attempts(0), Vec::<String>::new());
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );

    let log_start = kosmos.log().len();
    env.apply(&design_rollback_policy());
    env.wait_design(&controller, Phase::RolledBack, 120).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(kosmos.update_attempts(log_start), Vec::<String>::new());
    apps::snapshot(&env.member, "nginx-test")
        .await
        .assert_rolled_back_to(&original, "controller rollback under clustertree");
    kosmos.check_running().unwrap();
}

/// An age key pair made by the reference `age-keygen`: the identity file and its public key.
fn age_keygen(file: &std::path::Path) -> String {
    let made = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("the reference `age-keygen` is needed (Debian package `age`): {e}"));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let public = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8(public.stdout).unwrap().trim().to_owned()
}

/// Issue 23: a policy's `spec.encryptTo` reaches the backup: the controller seals the Secrets
/// to that key and its own (`--age-identity`), promotes and rolls back from the sealed archive.
#[tokio::test]
async fn a_policy_with_encrypt_to_is_sealed_promoted_and_rolled_back_by_the_controller() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    const MARKER: &str = "kpromote-sealed-controller-marker-21fb";
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;
    let mut secret = Secret::default();
    secret.metadata.name = Some("api-token".to_owned());
    secret.data = Some([("token".to_owned(), ByteString(MARKER.as_bytes().to_vec()))].into());
    Api::<Secret>::namespaced(env.member.clone(), "nginx-test")
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let own = age_keygen(&keys.path().join("controller.txt"));
    let operator = age_keygen(&keys.path().join("operator.txt"));
    let identity = keys.path().join("controller.txt").display().to_string();
    let controller = env.controller("sealing", &["--age-identity", &identity], &[]);

    env.apply(&DESIGN_POLICY.replacen("spec:\n", &format!("spec:\n  encryptTo: [{operator}]\n"), 1));
    let policy = env.wait_design(&controller, Phase::Completed, 120).await;
    let archive = policy.status.unwrap().backedup_file.unwrap();
    let reader = kpromote_archive::ArchiveReader::open(&archive).unwrap();
    let mut expected = vec![own, operator.clone()];
    expected.sort();
    assert_eq!(reader.encryption().unwrap().recipients, expected);
    let restored = Api::<Secret>::namespaced(env.cp.clone(), "nginx-test")
        .get("api-token")
        .await
        .unwrap();
    assert_eq!(restored.data.unwrap()["token"].0, MARKER.as_bytes());
    // The operator's key alone opens the archive too.
    let mut by_operator = kpromote_archive::ArchiveReader::open(&archive).unwrap();
    by_operator
        .unseal_with(&kpromote_archive::Identities::from_file(&keys.path().join("operator.txt")).unwrap())
        .unwrap();
    let sealed = by_operator
        .get("resources/secrets/namespaces/nginx-test/api-token.json")
        .unwrap();
    assert!(sealed.record.encryption.is_some());
    assert!(String::from_utf8(sealed.json).unwrap().contains("api-token"));

    env.apply(&design_rollback_policy().replacen(
        "spec:\n",
        &format!("spec:\n  encryptTo: [{operator}]\n"),
        1,
    ));
    env.wait_design(&controller, Phase::RolledBack, 120).await;
    support::controllers_caught_up(&[(&env.member, "nginx-test")]).await;
    apps::snapshot(&env.member, "nginx-test")
        .await
        .assert_rolled_back_to(&original, "RolledBack");
    support::wait_namespace_gone(&env.cp, "nginx-test").await;
}
