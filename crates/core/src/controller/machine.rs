//! The state machine, as pure functions of what is persisted in the policy: which step a
//! reconcile runs next, what a deletion does, which namespaces other policies hold, and which
//! phase an engine step belongs to. No client, no clock: every rule is unit-tested here.

use crate::policy::{Phase, PromotePolicy};

/// What a reconcile of a live (not deleted) policy does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing until the spec changes.
    Idle,
    /// Start (or restart after a failed precheck or backup whose spec was edited): enter
    /// `Prechecking`.
    Start,
    /// Run the prechecks (phase `Prechecking`).
    Precheck,
    /// Write the archive, or adopt the one a killed run finished (phase `Backuping`).
    Backup,
    /// Run or resume promote from its journal (phase `Detaching` or `Restoring`).
    Promote,
    /// Enter `RollingBack` because the user asked.
    BeginRollback,
    /// Run or resume the rollback from its journal (phase `RollingBack`).
    Rollback,
    /// The user asked for a rollback where nothing was ever changed: say so once.
    IgnoreRollback,
}

/// The next step for a policy in `phase`.
///
/// `spec_changed` is `metadata.generation != status.observedGeneration`: the user edited the
/// spec since the controller last wrote the status.
///
/// - `FailedPrecheck` and `FailedBackup` touched nothing, so an edited spec starts over (the
///   user fixed the policy) — unless the edit asks for a rollback, which has nothing to undo.
/// - `Completed`, `FailedDetach` and `FailedRestore` roll back when asked; a failed promotion was
///   already rolled back automatically, so this re-runs an idempotent rollback and ends in
///   `RolledBack`.
/// - `FailedRollback` is retried when the user asks again, i.e. edits the spec with
///   `rollback: "true"` (as upstream: set it again).
/// - `RolledBack` is final: a new promotion needs a new policy.
#[must_use]
pub(crate) fn next(phase: Option<Phase>, rollback_requested: bool, spec_changed: bool) -> Next {
    use Phase::*;
    match phase {
        None => Next::Start,
        Some(Prechecking) => Next::Precheck,
        Some(Backuping) => Next::Backup,
        Some(Detaching | Restoring) => Next::Promote,
        Some(RollingBack) => Next::Rollback,
        Some(Completed | FailedDetach | FailedRestore) if rollback_requested => Next::BeginRollback,
        Some(FailedRollback) if rollback_requested && spec_changed => Next::BeginRollback,
        Some(FailedPrecheck | FailedBackup) if spec_changed && rollback_requested => Next::IgnoreRollback,
        Some(FailedPrecheck | FailedBackup) if spec_changed => Next::Start,
        Some(Completed | FailedDetach | FailedRestore | FailedRollback | FailedPrecheck | FailedBackup) => {
            Next::Idle
        }
        Some(RolledBack) => Next::Idle,
    }
}

/// What deleting a policy does, by the phase it is in when the deletion is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDelete {
    /// Nothing to undo, or nothing that should be undone: let the policy go.
    ///
    /// A `Completed` policy's deletion leaves the promoted state in place: the applications are
    /// now managed from the control plane, and deleting the record of how they got there must
    /// not move them back (the archive stays on the backup volume; `kpromote rollback
    /// --archive` can still roll back from it).
    Release,
    /// A promotion was cut short (or its rollback failed): roll back now, so the member is never
    /// left half detached, then let the policy go.
    RollBack,
    /// A rollback is running: finish it, then let the policy go.
    FinishRollback,
}

/// What deleting a policy in `phase` does.
#[must_use]
pub(crate) fn on_delete(phase: Option<Phase>) -> OnDelete {
    match phase {
        Some(Phase::Detaching | Phase::Restoring | Phase::FailedRollback) => OnDelete::RollBack,
        Some(Phase::RollingBack) => OnDelete::FinishRollback,
        _ => OnDelete::Release,
    }
}

/// Whether a policy in `phase` holds its namespaces against other policies: from the moment it
/// passed precheck until it is rolled back or failed cleanly. A `Completed` policy holds them
/// (the namespaces are promoted, and its rollback will act on them); so does `FailedRollback`
/// (the namespaces are half way back).
#[must_use]
pub(crate) fn holds_namespaces(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        Some(
            Phase::Backuping
                | Phase::Detaching
                | Phase::Restoring
                | Phase::Completed
                | Phase::RollingBack
                | Phase::FailedRollback
        )
    )
}

/// The namespaces `policies` other than `me` hold, each with the holder's name, for precheck.
#[must_use]
pub(crate) fn busy_namespaces(me: &str, policies: &[PromotePolicy]) -> Vec<(String, String)> {
    let mut busy = Vec::new();
    for policy in policies {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        if name == me || !holds_namespaces(policy.status.as_ref().and_then(|s| s.phase)) {
            continue;
        }
        for ns in &policy.spec.included_namespaces {
            busy.push((ns.clone(), name.to_owned()));
        }
    }
    busy.sort();
    busy
}

/// The phase an engine step of promote belongs to: detaching and marking the member's pods is
/// `Detaching`; everything after is `Restoring`.
#[must_use]
pub(crate) fn promote_phase_of_step(step: &str) -> Phase {
    match step {
        "detach" | "mark" => Phase::Detaching,
        _ => Phase::Restoring,
    }
}

/// The later of two promote phases: a resumed run re-reports detach steps it skips, but the
/// phase never goes back.
#[must_use]
pub(crate) fn later_promote_phase(a: Phase, b: Phase) -> Phase {
    if a == Phase::Restoring || b == Phase::Restoring {
        Phase::Restoring
    } else {
        Phase::Detaching
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PromotePolicySpec, PromotePolicyStatus};

    #[test]
    fn a_new_policy_starts_and_working_phases_resume() {
        assert_eq!(next(None, false, true), Next::Start);
        assert_eq!(next(Some(Phase::Prechecking), false, false), Next::Precheck);
        assert_eq!(next(Some(Phase::Backuping), false, false), Next::Backup);
        assert_eq!(next(Some(Phase::Detaching), true, true), Next::Promote);
        assert_eq!(next(Some(Phase::Restoring), false, false), Next::Promote);
        assert_eq!(next(Some(Phase::RollingBack), false, false), Next::Rollback);
    }

    #[test]
    fn rollback_is_accepted_only_where_something_changed() {
        for phase in [Phase::Completed, Phase::FailedDetach, Phase::FailedRestore] {
            assert_eq!(next(Some(phase), true, false), Next::BeginRollback, "{phase}");
            assert_eq!(next(Some(phase), false, true), Next::Idle, "{phase}");
        }
        for phase in [Phase::FailedPrecheck, Phase::FailedBackup] {
            assert_eq!(next(Some(phase), true, true), Next::IgnoreRollback, "{phase}");
            assert_eq!(next(Some(phase), true, false), Next::Idle, "{phase}");
        }
        assert_eq!(next(Some(Phase::RolledBack), true, true), Next::Idle);
    }

    #[test]
    fn a_failed_rollback_is_retried_when_asked_again() {
        assert_eq!(next(Some(Phase::FailedRollback), true, false), Next::Idle);
        assert_eq!(next(Some(Phase::FailedRollback), true, true), Next::BeginRollback);
        assert_eq!(next(Some(Phase::FailedRollback), false, true), Next::Idle);
    }

    #[test]
    fn an_edited_policy_that_failed_before_touching_anything_starts_over() {
        assert_eq!(next(Some(Phase::FailedPrecheck), false, true), Next::Start);
        assert_eq!(next(Some(Phase::FailedBackup), false, true), Next::Start);
        assert_eq!(next(Some(Phase::FailedPrecheck), false, false), Next::Idle);
    }

    #[test]
    fn deletion_never_leaves_the_member_half_detached() {
        assert_eq!(on_delete(Some(Phase::Detaching)), OnDelete::RollBack);
        assert_eq!(on_delete(Some(Phase::Restoring)), OnDelete::RollBack);
        assert_eq!(on_delete(Some(Phase::FailedRollback)), OnDelete::RollBack);
        assert_eq!(on_delete(Some(Phase::RollingBack)), OnDelete::FinishRollback);
        for phase in [
            None,
            Some(Phase::Prechecking),
            Some(Phase::Backuping),
            Some(Phase::Completed),
            Some(Phase::FailedDetach),
            Some(Phase::RolledBack),
        ] {
            assert_eq!(on_delete(phase), OnDelete::Release, "{phase:?}");
        }
    }

    fn policy(name: &str, namespaces: &[&str], phase: Option<Phase>) -> PromotePolicy {
        let mut p = PromotePolicy::new(
            name,
            PromotePolicySpec {
                included_namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
                cluster_name: "member".into(),
                ..PromotePolicySpec::default()
            },
        );
        p.status = Some(PromotePolicyStatus {
            phase,
            ..PromotePolicyStatus::default()
        });
        p
    }

    #[test]
    fn only_policies_past_precheck_and_not_rolled_back_hold_namespaces() {
        let policies = [
            policy("me", &["a"], Some(Phase::Prechecking)),
            policy("running", &["a", "b"], Some(Phase::Restoring)),
            policy("done", &["c"], Some(Phase::Completed)),
            policy("rolled-back", &["d"], Some(Phase::RolledBack)),
            policy("failed-cleanly", &["e"], Some(Phase::FailedRestore)),
            policy("half-way", &["f"], Some(Phase::FailedRollback)),
            policy("waiting", &["g"], Some(Phase::Prechecking)),
            policy("new", &["h"], None),
        ];
        assert_eq!(
            busy_namespaces("me", &policies),
            [
                ("a", "running"),
                ("b", "running"),
                ("c", "done"),
                ("f", "half-way")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn promote_steps_map_to_phases_and_never_go_back() {
        assert_eq!(promote_phase_of_step("detach"), Phase::Detaching);
        assert_eq!(promote_phase_of_step("mark"), Phase::Detaching);
        assert_eq!(promote_phase_of_step("restore"), Phase::Restoring);
        assert_eq!(
            later_promote_phase(Phase::Restoring, promote_phase_of_step("detach")),
            Phase::Restoring
        );
    }
}
