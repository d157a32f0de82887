//! Policies that must not run end in `FailedPrecheck` with every reason in `precheckErrors` and
//! a readable `failureReason`, and nothing changes in either cluster; what the CRD's schema
//! rejects never gets that far. Overlapping policies: the second is refused naming the first,
//! and runs once the first is rolled back and the second's spec is edited.
#![allow(clippy::unwrap_used)]

mod controller_env;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kpromote_core::policy::{Phase, PromotePolicy};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use support::apps;

use controller_env::{DESIGN_POLICY, Env};

fn policy(name: &str, namespaces: &[&str], excluded: &[&str], cluster: &str, rollback: bool) -> String {
    let mut spec = json!({
        "includedNamespaces": namespaces,
        "excludedNamespaceScopedResources": excluded,
        "clusterName": cluster,
    });
    if rollback {
        spec["rollback"] = json!("true");
    }
    serde_json::to_string(&json!({
        "apiVersion": "kosmos.io/v1alpha1", "kind": "PromotePolicy",
        "metadata": { "name": name }, "spec": spec,
    }))
    .unwrap()
}

async fn namespaces(client: &kube::Client) -> BTreeSet<String> {
    Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect()
}

fn errors_of(policy: &PromotePolicy) -> Vec<String> {
    policy.status.as_ref().unwrap().precheck_errors.clone()
}

fn assert_mentions(policy: &PromotePolicy, needles: &[&str]) {
    let status = policy.status.as_ref().unwrap();
    let reason = status.failure_reason.clone().unwrap_or_default();
    assert!(reason.starts_with("precheck failed"), "{reason}");
    for needle in needles {
        assert!(
            status.precheck_errors.iter().any(|e| e.contains(needle)),
            "no precheck error mentions {needle:?}: {:#?}",
            status.precheck_errors
        );
        assert!(
            reason.contains(needle),
            "failureReason lacks {needle:?}: {reason}"
        );
    }
}

#[tokio::test]
async fn invalid_policies_fail_precheck_with_every_reason_and_touch_nothing() {
    let env = Env::start().await;
    // A namespace in both clusters (promote only creates namespaces).
    for client in [&env.member, &env.cp] {
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": "already-there" } })).unwrap(),
            )
            .await
            .unwrap();
    }
    let member_before = apps::snapshot(&env.member, "nginx-test").await;
    let cp_namespaces = namespaces(&env.cp).await;
    let member_namespaces = namespaces(&env.member).await;
    let controller = env.controller("precheck", &[], &[]);

    // What the schema rejects at admission never reaches the controller.
    let empty = policy("empty", &[], &[], "member", false);
    let file = env.backup_dir.path().join("empty.json");
    std::fs::write(&file, empty).unwrap();
    let out = env.kubectl_cp(&["apply", "-f", &file.display().to_string()]);
    assert!(
        !out.status.success(),
        "an empty includedNamespaces must be refused"
    );
    let refusal = String::from_utf8_lossy(&out.stderr);
    assert!(refusal.contains("includedNamespaces"), "{refusal}");

    // What admission lets through, precheck refuses.
    let cases: &[(&str, String, &[&str])] = &[
        (
            "forbidden",
            policy("forbidden", &["kube-system"], &[], "member", false),
            &["kube-system is a system namespace"],
        ),
        (
            "missing",
            policy("missing", &["no-such-namespace"], &[], "member", false),
            &["no-such-namespace does not exist in the member cluster"],
        ),
        (
            "in-control-plane",
            policy("in-control-plane", &["already-there"], &[], "member", false),
            &["already-there already exists in the control plane"],
        ),
        (
            "unknown-cluster",
            policy("unknown-cluster", &["nginx-test"], &[], "nope", false),
            &["Kosmos Cluster \"nope\"", "no virtual node kosmos-nope"],
        ),
        (
            "unknown-exclusion",
            policy(
                "unknown-exclusion",
                &["nginx-test"],
                &["events", "gizmos.example.io"],
                "member",
                false,
            ),
            &["gizmos.example.io"],
        ),
        (
            "rollback-first",
            policy("rollback-first", &["nginx-test"], &[], "member", true),
            &["nothing to roll back"],
        ),
        (
            "everything-wrong",
            policy(
                "everything-wrong",
                &["kube-system", "no-such-namespace", "already-there"],
                &["gizmos.example.io"],
                "member",
                false,
            ),
            &[
                "kube-system is a system namespace",
                "no-such-namespace does not exist",
                "already-there already exists in the control plane",
                "gizmos.example.io",
            ],
        ),
    ];
    for (_, yaml, _) in cases {
        env.apply(yaml);
    }
    for (name, _, needles) in cases {
        let failed = env.wait_for(&controller, name, Phase::FailedPrecheck, 60).await;
        assert_mentions(&failed, needles);
        let status = failed.status.as_ref().unwrap();
        assert!(status.backedup_file.is_none() && status.completion_timestamp.is_some());
        if *name == "everything-wrong" {
            assert!(errors_of(&failed).len() >= 4, "{:#?}", errors_of(&failed));
        }
    }

    // Nothing changed anywhere, and no archive was written.
    assert_eq!(apps::snapshot(&env.member, "nginx-test").await, member_before);
    assert_eq!(namespaces(&env.cp).await, cp_namespaces);
    assert_eq!(namespaces(&env.member).await, member_namespaces);
    assert_eq!(
        std::fs::read_dir(env.backup_dir.path()).unwrap().count(),
        1,
        "only empty.json"
    );

    // A rollback asked of a policy that never changed anything is refused, once, by an event.
    env.apply(&policy("forbidden", &["kube-system"], &[], "member", true));
    let events = wait_for_event(&env, "forbidden", "RollbackIgnored").await;
    assert!(events.contains("nothing to roll back"), "{events}");
    let still = env.policies().get("forbidden").await.unwrap();
    assert_eq!(still.status.unwrap().phase, Some(Phase::FailedPrecheck));
}

#[tokio::test]
async fn an_overlapping_policy_is_refused_naming_the_holder_and_runs_once_it_is_free() {
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;
    let controller = env.controller("overlap", &[], &[]);

    env.apply(DESIGN_POLICY);
    env.wait_for(&controller, "promote-policy-example", Phase::Completed, 120)
        .await;
    env.apply(&policy("second", &["nginx-test"], &["events"], "member", false));
    let refused = env
        .wait_for(&controller, "second", Phase::FailedPrecheck, 60)
        .await;
    assert_mentions(
        &refused,
        &["nginx-test is already being promoted by PromotePolicy promote-policy-example"],
    );

    // The holder rolls back; the second policy, edited, starts over and runs.
    env.apply(&controller_env::design_rollback_policy());
    env.wait_for(&controller, "promote-policy-example", Phase::RolledBack, 120)
        .await;
    wait_gone(&env, "nginx-test").await;
    env.apply(&policy(
        "second",
        &["nginx-test"],
        &["events", "endpoints"],
        "member",
        false,
    ));
    let done = env.wait_for(&controller, "second", Phase::Completed, 120).await;
    let status = done.status.unwrap();
    assert!(status.precheck_errors.is_empty() && status.failure_reason.is_none());
    assert_eq!(status.observed_generation, done.metadata.generation);
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );

    env.apply(&policy(
        "second",
        &["nginx-test"],
        &["events", "endpoints"],
        "member",
        true,
    ));
    env.wait_for(&controller, "second", Phase::RolledBack, 120).await;
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );
}

async fn wait_gone(env: &Env, ns: &str) {
    support::wait_for(
        "namespace gone from the control plane",
        Duration::from_secs(60),
        || async {
            Api::<Namespace>::all(env.cp.clone())
                .get_opt(ns)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// Waits for an event of `reason` about policy `name`; returns `kubectl describe`'s output.
async fn wait_for_event(env: &Env, name: &str, reason: &str) -> String {
    support::wait_for(&format!("event {reason}"), Duration::from_secs(30), || async {
        let out = env.kubectl_cp(&["describe", "promotepolicy", name]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(reason).then_some(text)
    })
    .await
}
