//! Two replicas with leader election never both act: the standby writes nothing (no event, no
//! reconcile) while the leader holds the lease; when the leader dies mid-promotion the standby
//! takes over once the lease expires and finishes the promotion; a leader stopped with SIGTERM
//! releases the lease so the next one takes over at once.
#![allow(clippy::unwrap_used)]

mod controller_env;
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kpromote_core::policy::Phase;
use kube::Api;
use kube::api::ListParams;
use support::{apps, wait_for};

use controller_env::{ControllerProcess, DESIGN_POLICY, DESIGN_POLICY_NAME, Env, design_rollback_policy};

/// Short timings for the test: 6 s lease, 3 s renew deadline, 1 s retry (6 > 3 + 2 × 1).
const ELECTION: &[&str] = &[
    "--leader-elect=true",
    "--leader-election-namespace=default",
    "--lease-duration-seconds=6",
    "--renew-deadline-seconds=3",
    "--retry-period-seconds=1",
];

async fn holder(env: &Env) -> Option<String> {
    Api::<Lease>::namespaced(env.cp.clone(), "default")
        .get_opt("kpromote-controller")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_holder(env: &Env, who: &str, timeout: Duration) {
    wait_for(&format!("{who} to hold the lease"), timeout, || async {
        (holder(env).await.as_deref() == Some(who)).then_some(())
    })
    .await;
}

/// (reason, reporting instance) of every event about the design's policy, oldest first.
async fn events(env: &Env) -> Vec<(String, String)> {
    let mut list: Vec<Event> = Api::<Event>::namespaced(env.cp.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(DESIGN_POLICY_NAME))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list.into_iter()
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.reporting_instance.unwrap_or_default(),
            )
        })
        .collect()
}

async fn leader_gauge(controller: &ControllerProcess) -> Option<String> {
    let (_, body) = controller.http_get("/metrics").await?;
    body.lines()
        .find(|l| l.starts_with("kpromote_leader "))
        .map(|l| l.trim_start_matches("kpromote_leader ").to_owned())
}

#[tokio::test]
async fn two_replicas_never_both_act_and_the_standby_finishes_what_the_leader_started() {
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;

    // `a` leads, and will die after detaching its first owner.
    let a = env.controller(
        "replica-a",
        ELECTION,
        &[(kpromote_core::journal::FAILPOINT_ENV, "detach:1")],
    );
    wait_holder(&env, "replica-a", Duration::from_secs(30)).await;
    let b = env.controller("replica-b", ELECTION, &[]);
    stands_by(&b, "b").await;
    assert_eq!(leader_gauge(&b).await.as_deref(), Some("0"));
    assert_eq!(leader_gauge(&a).await.as_deref(), Some("1"));

    env.apply(DESIGN_POLICY);
    wait_for("a to crash mid-detach", Duration::from_secs(60), || {
        let exited = a.exited();
        async move { exited }
    })
    .await;
    let died = Instant::now();
    let phase = env
        .policies()
        .get(DESIGN_POLICY_NAME)
        .await
        .unwrap()
        .status
        .unwrap()
        .phase;
    assert_eq!(phase, Some(Phase::Detaching));
    // While `a` led, `b` did nothing.
    assert!(!b.log().contains("controller started"), "{}", b.log());
    assert!(events(&env).await.iter().all(|(_, by)| by == "replica-a"));

    // `b` takes over once the lease expires, and finishes the promotion.
    env.wait_design(&b, Phase::Completed, 90).await;
    let takeover = died.elapsed();
    eprintln!("leader killed mid-detach -> standby finished the promotion in {takeover:.1?}");
    assert!(
        takeover >= Duration::from_secs(3),
        "took over before the lease could expire: {takeover:?}"
    );
    assert_eq!(holder(&env).await.as_deref(), Some("replica-b"));
    let log = b.log();
    let acquired = log.find("acquired the leader lease").unwrap();
    let started = log.find("controller started").unwrap();
    assert!(acquired < started, "b acted before it led");
    let seen = events(&env).await;
    let first_b = seen.iter().position(|(_, by)| by == "replica-b").unwrap();
    assert!(
        seen[..first_b].iter().all(|(_, by)| by == "replica-a")
            && seen[first_b..].iter().all(|(_, by)| by == "replica-b"),
        "events interleaved between replicas: {seen:?}"
    );
    assert_eq!(seen.last().map(|(r, _)| r.as_str()), Some("Completed"));
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );

    // `c` stands by; `b` is stopped gracefully and releases the lease: `c` takes over at once.
    let c = env.controller("replica-c", ELECTION, &[]);
    stands_by(&c, "c").await;
    let mut b = b;
    let stopped = Instant::now();
    assert!(b.terminate().success(), "{}", b.log());
    assert!(b.log().contains("released the leader lease"), "{}", b.log());
    wait_holder(&env, "replica-c", Duration::from_secs(10)).await;
    let handover = stopped.elapsed();
    eprintln!("graceful handover in {handover:.1?}");
    assert!(
        handover < Duration::from_secs(5),
        "{handover:?}: the lease was not released"
    );

    env.apply(&design_rollback_policy());
    env.wait_design(&c, Phase::RolledBack, 90).await;
    let seen = events(&env).await;
    let tail: Vec<_> = seen.iter().skip_while(|(r, _)| r != "RollingBack").collect();
    assert!(
        !tail.is_empty() && tail.iter().all(|(_, by)| by == "replica-c"),
        "{seen:?}"
    );
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );
}

/// Waits until replica `name` says another replica leads and it stands by.
async fn stands_by(replica: &ControllerProcess, name: &str) {
    wait_for(
        &format!("{name} to stand by"),
        Duration::from_secs(30),
        || async {
            replica
                .log()
                .contains("another replica leads; standing by")
                .then_some(())
        },
    )
    .await;
}
