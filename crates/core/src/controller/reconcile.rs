//! One reconcile: read the policy fresh, run the finalizer helper, and step the state machine
//! until it has nothing more to do. Status writes and events live here; the steps that do the
//! work are in `steps.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::machine::{self, Next, OnDelete};
use super::{Context, FIELD_MANAGER, FINALIZER};
use crate::access::AccessError;
use crate::policy::{
    CONDITION_READY, CONDITION_ROLLED_BACK, Phase, Progress, PromotePolicy, PromotePolicyStatus,
    REASON_NOT_REQUESTED, RollbackTrigger,
};

/// Why a reconcile stopped early; it is retried with backoff and the phase is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ReconcileError {
    /// The control plane refused or did not answer.
    #[error("control plane API: {0}")]
    Kube(#[from] kube::Error),
    /// The member cluster cannot be reached (outside precheck, where it is a precheck error).
    #[error(transparent)]
    Member(#[from] AccessError),
    /// Another process holds the archive (a command-line run): retried with backoff, the phase
    /// unchanged.
    #[error(transparent)]
    Busy(#[from] crate::journal::JournalError),
    /// Adding or removing the finalizer failed, or the step inside failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ReconcileError>>),
    /// The policy is being deleted and its rollback failed: the finalizer stays.
    #[error(
        "PromotePolicy {name} is being deleted but its rollback failed ({reason}); it stays until a rollback \
         succeeds (remove the finalizer {FINALIZER} to give up on it)"
    )]
    RollbackOnDelete {
        /// The policy.
        name: String,
        /// The rollback's failure.
        reason: String,
    },
}

impl ReconcileError {
    /// A short label for metrics.
    #[must_use]
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Member(_) => "member",
            Self::Busy(_) => "busy",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Self::RollbackOnDelete { .. } => "rollback_on_delete",
        }
    }
}

/// How long a policy waits after `retries` consecutive errors: 5 s doubling, at most 5 min.
fn backoff(retries: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << retries.min(6)).min(300))
}

/// The reconcile kube-runtime calls.
pub(super) async fn reconcile(
    policy: Arc<PromotePolicy>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let name = policy.name_any();
    // The watch cache can lag behind this controller's own last status write; a decision made
    // on a stale phase could resume a promote that was already rolled back.
    let Some(fresh) = ctx.policies.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let step_ctx = ctx.clone();
    let outcome = finalizer(&ctx.policies, FINALIZER, Arc::new(fresh), |event| async move {
        match event {
            Finalizer::Apply(policy) => apply(policy, step_ctx).await,
            Finalizer::Cleanup(policy) => cleanup(policy, step_ctx).await,
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    if outcome.is_ok() {
        lock_retries(&ctx).remove(&name);
    }
    outcome
}

/// Logs the error and retries the policy with backoff.
pub(super) fn error_policy(policy: Arc<PromotePolicy>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let name = policy.name_any();
    ctx.metrics.reconcile_error(error.metric_label());
    let retries = {
        let mut map = lock_retries(&ctx);
        let n = map.entry(name.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let wait = backoff(retries - 1);
    tracing::warn!(policy = %name, error = %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

fn lock_retries(ctx: &Context) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u32>> {
    ctx.retries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a step ran to its end or was cut short.
pub(super) enum Flow {
    /// The status moved on; ask the state machine again.
    Continue,
    /// The policy is being deleted: stop, the cleanup reconcile follows.
    Interrupted,
}

/// Steps the state machine of a live policy until it has nothing more to do.
async fn apply(policy: Arc<PromotePolicy>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let mut rec = Reconciliation::new(policy, ctx);
    loop {
        let next = machine::next(
            rec.phase(),
            rec.policy.spec.rollback_requested(),
            rec.spec_changed(),
        );
        let flow = match next {
            Next::Idle => return Ok(Action::await_change()),
            Next::Start => rec.start().await?,
            Next::Precheck => rec.precheck().await?,
            Next::Backup => rec.backup().await?,
            Next::Promote => rec.promote().await?,
            Next::BeginRollback => rec.begin_rollback(RollbackTrigger::Requested).await?,
            Next::Rollback => rec.rollback().await?,
            Next::IgnoreRollback => rec.ignore_rollback().await?,
        };
        if let Flow::Interrupted = flow {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
    }
}

/// The policy is being deleted: see [`machine::OnDelete`].
async fn cleanup(policy: Arc<PromotePolicy>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let mut rec = Reconciliation::new(policy, ctx);
    match machine::on_delete(rec.phase()) {
        OnDelete::Release => {
            if rec.phase() == Some(Phase::Completed) {
                let note = format!(
                    "PromotePolicy deleted; the promoted namespaces stay managed from the control plane{}",
                    rec.status
                        .backedup_file
                        .as_deref()
                        .map(|f| format!(" (archive {f} stays on the backup volume)"))
                        .unwrap_or_default()
                );
                rec.event(EventType::Normal, "Released", "Delete", &note).await;
            }
            return Ok(Action::await_change());
        }
        OnDelete::RollBack => {
            let phase = rec.phase().map_or("new", Phase::as_str);
            let why = format!(
                "the PromotePolicy was deleted while {phase}; rolling back so the member is not left half detached"
            );
            rec.transition(
                Phase::RollingBack,
                &why,
                Some((false, RollbackTrigger::PolicyDeleted.as_reason())),
                |s| s.failure_reason = Some(why.clone()),
            )
            .await?;
        }
        OnDelete::FinishRollback => {}
    }
    rec.rollback().await?;
    if rec.phase() == Some(Phase::FailedRollback) {
        return Err(ReconcileError::RollbackOnDelete {
            name: rec.name.clone(),
            reason: rec.status.failure_reason.clone().unwrap_or_default(),
        });
    }
    Ok(Action::await_change())
}

/// One policy being reconciled: its spec as read, and its status as last written.
pub(super) struct Reconciliation {
    pub(super) ctx: Arc<Context>,
    pub(super) policy: Arc<PromotePolicy>,
    pub(super) name: String,
    generation: Option<i64>,
    pub(super) status: PromotePolicyStatus,
    reference: ObjectReference,
}

impl Reconciliation {
    fn new(policy: Arc<PromotePolicy>, ctx: Arc<Context>) -> Self {
        Self {
            name: policy.name_any(),
            generation: policy.metadata.generation,
            status: policy.status.clone().unwrap_or_default(),
            reference: policy.object_ref(&()),
            policy,
            ctx,
        }
    }

    pub(super) fn phase(&self) -> Option<Phase> {
        self.status.phase
    }

    fn spec_changed(&self) -> bool {
        self.generation != self.status.observed_generation
    }

    /// Moves to `phase`: edits the status, derives the conditions, writes it, publishes an
    /// event and counts the transition. `rolled_back` sets the `RolledBack` condition (status
    /// and reason); `None` keeps it.
    pub(super) async fn transition(
        &mut self,
        phase: Phase,
        message: &str,
        rolled_back: Option<(bool, &str)>,
        edit: impl FnOnce(&mut PromotePolicyStatus),
    ) -> Result<(), ReconcileError> {
        let from = self.status.phase;
        let now = Time(jiff::Timestamp::now());
        let generation = self.generation;
        let mut next = self.status.clone();
        next.phase = Some(phase);
        next.observed_generation = generation;
        next.completion_timestamp = phase.is_terminal().then(|| now.clone());
        edit(&mut next);
        next.set_condition(
            CONDITION_READY,
            phase == Phase::Completed,
            phase.as_str(),
            message,
            generation,
            &now,
        );
        match rolled_back {
            Some((status, reason)) => {
                next.set_condition(CONDITION_ROLLED_BACK, status, reason, message, generation, &now);
            }
            None if next.condition(CONDITION_ROLLED_BACK).is_none() => next.set_condition(
                CONDITION_ROLLED_BACK,
                false,
                REASON_NOT_REQUESTED,
                "no rollback has run",
                generation,
                &now,
            ),
            None => {}
        }
        self.write(next).await?;
        super::failpoint(&format!("phase:{phase}"));
        self.ctx.metrics.transition(from, phase);
        tracing::info!(policy = %self.name, from = from.map_or("New", Phase::as_str), to = %phase, "{message}");
        let automatic = matches!(
            rolled_back.and_then(|(_, reason)| RollbackTrigger::from_reason(reason)),
            Some(RollbackTrigger::DetachFailed | RollbackTrigger::RestoreFailed)
        );
        let kind = if phase.is_failure() || (phase == Phase::RollingBack && automatic) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let action = match phase {
            Phase::RollingBack | Phase::RolledBack | Phase::FailedRollback => "Rollback",
            _ => "Promote",
        };
        self.event(kind, phase.as_str(), action, message).await;
        Ok(())
    }

    /// Writes the progress of the running step, best effort: a failed write must not stop the
    /// engine (the next one carries the same information).
    pub(super) async fn write_progress(&mut self, progress: Progress) {
        let mut next = self.status.clone();
        next.progress = Some(progress);
        if let Err(e) = self.write(next).await {
            tracing::warn!(policy = %self.name, error = %e, "progress not written");
        }
    }

    /// Writes `status` whole with server-side apply, then keeps it as the last written.
    pub(super) async fn write(&mut self, status: PromotePolicyStatus) -> Result<(), kube::Error> {
        let body = json!({
            "apiVersion": PromotePolicy::api_version(&()),
            "kind": PromotePolicy::kind(&()),
            "status": status,
        });
        self.ctx
            .policies
            .patch_status(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        self.status = status;
        Ok(())
    }

    /// Publishes an event about the policy; a failure is logged, never fatal.
    pub(super) async fn event(&self, kind: EventType, reason: &str, action: &str, note: &str) {
        let event = Event {
            type_: kind,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1024)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, &self.reference).await {
            tracing::warn!(policy = %self.name, error = %e, reason, "event not published");
        }
    }

    /// `""` → `Prechecking`: a new run, everything but the conditions cleared.
    async fn start(&mut self) -> Result<Flow, ReconcileError> {
        let spec = &self.policy.spec;
        let message = format!(
            "checking namespaces {} of member cluster {}",
            spec.included_namespaces.join(", "),
            spec.cluster_name
        );
        let now = Time(jiff::Timestamp::now());
        self.transition(Phase::Prechecking, &message, None, |s| {
            *s = PromotePolicyStatus {
                conditions: std::mem::take(&mut s.conditions),
                observed_generation: s.observed_generation,
                phase: s.phase,
                start_timestamp: Some(now),
                ..PromotePolicyStatus::default()
            };
        })
        .await?;
        Ok(Flow::Continue)
    }

    /// `rollback: "true"` accepted: `RollingBack`, a new start time.
    async fn begin_rollback(&mut self, trigger: RollbackTrigger) -> Result<Flow, ReconcileError> {
        let message = "rollback requested: re-creating the member's owners so they adopt the running pods, then \
                       removing what promote created in the control plane";
        let now = Time(jiff::Timestamp::now());
        self.transition(
            Phase::RollingBack,
            message,
            Some((false, trigger.as_reason())),
            |s| {
                s.start_timestamp = Some(now);
                s.failure_reason = None;
                s.progress = None;
            },
        )
        .await?;
        Ok(Flow::Continue)
    }

    /// A rollback asked of a policy that never changed anything: say so once.
    async fn ignore_rollback(&mut self) -> Result<Flow, ReconcileError> {
        let phase = self.phase().map_or("new", Phase::as_str);
        let note = format!(
            "rollback: \"true\" ignored: the policy is {phase} and nothing was changed in either cluster, so there \
             is nothing to roll back"
        );
        self.event(EventType::Warning, "RollbackIgnored", "Rollback", &note)
            .await;
        let mut next = self.status.clone();
        next.observed_generation = self.generation;
        self.write(next).await?;
        Ok(Flow::Continue)
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// An error and its sources, as one line.
pub(super) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(5), Duration::from_secs(160));
        assert_eq!(backoff(6), Duration::from_secs(300));
        assert_eq!(backoff(40), Duration::from_secs(300));
    }

    #[test]
    fn event_notes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(600);
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with("..."));
        assert_eq!(truncate("short", 1024), "short");
    }
}
