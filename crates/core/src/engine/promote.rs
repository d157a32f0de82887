//! Promote: detach, mark, restore — and, when a step after detach fails, the automatic rollback.

use std::sync::Mutex;

use super::apply::{Restorer, Scope};
use super::detach::{TwinFactory, detach, mark_pods};
use super::{EngineError, EngineOptions, Report, Run, SharedJournal, lock};

/// Journal step of one object's restore in the control plane.
pub(crate) const STEP_RESTORE: &str = "restore";

/// Runs promote for an archive already written. `rollback_journal` receives the automatic
/// rollback's records when a step fails after the member was changed; `None` disables it.
///
/// # Errors
/// The step's error, wrapped in [`EngineError::RolledBack`] when the automatic rollback ran.
pub async fn promote(
    run: &Run<'_>,
    journal: &SharedJournal,
    rollback_journal: Option<&SharedJournal>,
) -> Result<Report, EngineError> {
    let Run {
        member,
        control_plane,
        options: opts,
        ..
    } = *run;
    let report = Mutex::new(Report::default());
    let mut outcome = steps(run, journal, &report).await;
    // A sick API server is no reason to undo the promotion against the same sick server: the
    // steps resume from the journal, so run them again first.
    let mut retried = 0;
    while let Err(cause) = &outcome
        && cause.is_transient()
        && retried < opts.step_retries
    {
        retried += 1;
        tracing::warn!(error = %cause, attempt = retried, "promote step failed transiently; running it again");
        lock(&report)
            .retried_steps
            .push(format!("attempt {retried} after: {cause}"));
        tokio::time::sleep(member.retry.delay(retried, None)).await;
        outcome = steps(run, journal, &report).await;
    }
    let retried_calls = member.retried() + control_plane.retried();
    lock(&report).retried_calls = retried_calls;
    match (outcome, rollback_journal) {
        (Ok(()), _) => {
            lock(journal).close(super::COMPLETED)?;
            Ok(Report::finish(report))
        }
        (Err(cause), Some(rj)) => {
            tracing::error!(error = %cause, "promote failed; rolling back");
            // What the failed run created is not user work: the automatic rollback discards it.
            let opts = EngineOptions {
                discard_changes: true,
                ..opts.clone()
            };
            let rollback = super::rollback::rollback(
                &Run {
                    options: &opts,
                    ..*run
                },
                rj,
            )
            .await
            .map(|report| {
                // What the automatic rollback discarded or warned about belongs to the user.
                for change in &report.discarded {
                    tracing::warn!(change, "the automatic rollback discarded a change");
                }
                for warning in &report.warnings {
                    tracing::warn!(warning, "automatic rollback");
                }
                Box::new(report)
            })
            .map_err(Box::new);
            if rollback.is_ok() {
                lock(journal).close(super::ROLLED_BACK)?;
            }
            Err(EngineError::RolledBack {
                cause: Box::new(cause),
                rollback,
            })
        }
        (Err(cause), None) => Err(cause),
    }
}

async fn steps(run: &Run<'_>, journal: &SharedJournal, report: &Mutex<Report>) -> Result<(), EngineError> {
    let Run {
        member,
        control_plane,
        inventory: inv,
        cluster_name,
        options: opts,
        on_progress,
    } = *run;
    let twins = TwinFactory::new(inv, cluster_name);
    detach(
        member,
        &twins,
        &inv.detach_plan(),
        journal,
        opts,
        report,
        on_progress,
    )
    .await?;
    mark_pods(member, &twins, journal, opts, report, on_progress).await?;

    let plan = inv.restore_plan();
    let mut ctx = inv.control_plane_context();
    // Owners an earlier attempt already created keep their UIDs.
    for record in lock(journal).records(STEP_RESTORE) {
        if let (Ok(key), Some(uid)) = (
            record.key.parse(),
            record.data.get("uid").and_then(serde_json::Value::as_str),
        ) && let Some(old) = inv.uid(&key)
        {
            ctx.record_created(old, uid);
        }
    }
    let restorer = Restorer::into_control_plane(control_plane, cluster_name, inv, journal, opts);
    restorer
        .run(&plan, Scope::Archive, &mut ctx, report, on_progress)
        .await
}
