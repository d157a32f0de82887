//! The controller killed (abort, like SIGKILL: no cleanup, no status write) in every working
//! phase — Backuping (before and after the archive exists), Detaching, Restoring, RollingBack —
//! and restarted, finishes: `Completed`, then `RolledBack`, with no pod restarted and one
//! archive per promotion.
#![allow(clippy::unwrap_used)]

mod controller_env;
mod support;

use std::time::Duration;

use kpromote_core::policy::Phase;
use support::{apps, wait_for};

use controller_env::{ControllerProcess, DESIGN_POLICY, Env};

/// One promote + rollback cycle: where each direction is killed, and the phase it is in then.
struct Cycle {
    promote_failpoint: &'static str,
    promote_phase: Phase,
    rollback_failpoint: &'static str,
}

const CYCLES: &[Cycle] = &[
    // Right after `Backuping` is written, before the backup starts.
    Cycle {
        promote_failpoint: "phase:Backuping",
        promote_phase: Phase::Backuping,
        rollback_failpoint: "recreate:1",
    },
    // The archive exists, the status does not name it yet: the restart must adopt it.
    Cycle {
        promote_failpoint: "backup:written",
        promote_phase: Phase::Backuping,
        rollback_failpoint: "phase:RollingBack",
    },
    // One owner detached in the member.
    Cycle {
        promote_failpoint: "detach:1",
        promote_phase: Phase::Detaching,
        rollback_failpoint: "teardown:1",
    },
    // Two objects restored in the control plane.
    Cycle {
        promote_failpoint: "restore:2",
        promote_phase: Phase::Restoring,
        rollback_failpoint: "unmark:1",
    },
];

async fn crash(env: &Env, controller: &mut ControllerProcess, failpoint: &str) {
    let exited = wait_for(
        "the controller to hit its failpoint",
        Duration::from_secs(90),
        || {
            let status = controller.exited();
            async move { status }
        },
    )
    .await;
    assert!(!exited.success(), "{failpoint}: exited cleanly?");
    assert!(
        controller.log().contains("aborting to simulate a crash"),
        "{failpoint}: {}",
        controller.log()
    );
    let _ = env;
}

fn policy_yaml(name: &str, rollback: bool) -> String {
    let yaml = DESIGN_POLICY.replace("name: promote-policy-example", &format!("name: {name}"));
    if rollback {
        yaml.replacen("spec:\n", "spec:\n  rollback: \"true\"\n", 1)
    } else {
        yaml
    }
}

fn phase_of(policy: &kpromote_core::policy::PromotePolicy) -> Option<Phase> {
    policy.status.as_ref().and_then(|s| s.phase)
}

/// Applies policy `name` (`rollback: "true"` when `rollback`) to a controller killed at
/// `failpoint` of its `direction`, and waits until it died there.
async fn apply_killed(env: &Env, name: &str, direction: &str, failpoint: &str, rollback: bool) {
    let mut doomed = env.controller(
        &format!("{name}-{direction}-killed"),
        &[],
        &[(kpromote_core::journal::FAILPOINT_ENV, failpoint)],
    );
    env.apply(&policy_yaml(name, rollback));
    crash(env, &mut doomed, failpoint).await;
}

#[tokio::test]
async fn a_controller_killed_in_every_working_phase_resumes_and_finishes() {
    let env = Env::start().await;
    let original = apps::snapshot(&env.member, "nginx-test").await;

    for (i, cycle) in CYCLES.iter().enumerate() {
        let name = format!("crash-{i}");
        // Promote, killed.
        apply_killed(&env, &name, "promote", cycle.promote_failpoint, false).await;
        let policy = env.policies().get(&name).await.unwrap();
        assert_eq!(
            phase_of(&policy),
            Some(cycle.promote_phase),
            "{}: {:#?}",
            cycle.promote_failpoint,
            policy.status
        );

        // Restarted: finishes.
        let controller = env.controller(&format!("{name}-promote-resumed"), &[], &[]);
        let policy = env.wait_for(&controller, &name, Phase::Completed, 120).await;
        let archives: Vec<_> = std::fs::read_dir(env.backup_dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(&name) && !f.contains(".journal") && !f.contains(".tmp"))
            .collect();
        assert_eq!(
            archives.len(),
            1,
            "{}: one archive per promotion: {archives:?}",
            cycle.promote_failpoint
        );
        assert!(
            policy
                .status
                .as_ref()
                .and_then(|s| s.backedup_file.as_deref())
                .is_some_and(|f| f.ends_with(&archives[0]))
        );
        if cycle.promote_failpoint == "backup:written" {
            assert!(
                controller.log().contains("adopting the archive"),
                "{}",
                controller.log()
            );
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let member = apps::snapshot(&env.member, "nginx-test").await;
        assert_eq!(
            member.pods, original.pods,
            "{}: member pods changed",
            cycle.promote_failpoint
        );
        assert!(member.replicasets.is_empty());
        apps::snapshot(&env.cp, "nginx-test")
            .await
            .assert_promoted_from(&original, cycle.promote_failpoint);
        drop(controller);

        // Rollback, killed.
        apply_killed(&env, &name, "rollback", cycle.rollback_failpoint, true).await;
        let policy = env.policies().get(&name).await.unwrap();
        assert_eq!(
            phase_of(&policy),
            Some(Phase::RollingBack),
            "{}",
            cycle.rollback_failpoint
        );

        // Restarted: finishes.
        let controller = env.controller(&format!("{name}-rollback-resumed"), &[], &[]);
        env.wait_for(&controller, &name, Phase::RolledBack, 120).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        apps::snapshot(&env.member, "nginx-test")
            .await
            .assert_rolled_back_to(&original, cycle.rollback_failpoint);
        support::wait_namespace_gone(&env.cp, "nginx-test").await;
        drop(controller);
    }
}
