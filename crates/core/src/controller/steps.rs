//! The working steps of the state machine: precheck, backup, promote, rollback — each ending
//! in a status transition — and the supervision that patches progress while the engine runs
//! and stops a promotion whose policy is being deleted.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use tokio::sync::watch;

use super::machine::{self, later_promote_phase, promote_phase_of_step};
use super::reconcile::{Flow, ReconcileError, Reconciliation, chain};
use crate::backup::{BackupProgress, BackupRequest};
use crate::engine::{self, Inventory, LiveCluster, ProgressFn, Report};
use crate::policy::{Phase, Progress, REASON_ROLLBACK_FAILED, RollbackTrigger};
use crate::precheck::{PrecheckRequest, precheck};
use crate::resources::DEFAULT_EXCLUDED_RESOURCES;
use crate::storage::{ArchiveLocation, BackupLocation};

/// How often a running step's progress and the policy's deletion are looked at.
const TICK: Duration = Duration::from_millis(250);

/// What is being supervised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Backup,
    Promote,
    Rollback,
}

impl Mode {
    /// A deleted policy stops backup and promote (its cleanup rolls back); a rollback finishes.
    fn stops_on_delete(self) -> bool {
        self != Self::Rollback
    }
}

/// How a supervised step ended.
enum Supervised<T> {
    Done(T),
    Deleted,
}

impl Reconciliation {
    /// `Prechecking` → `Backuping` or `FailedPrecheck`.
    pub(super) async fn precheck(&mut self) -> Result<Flow, ReconcileError> {
        let ctx = self.ctx.clone();
        // One precheck at a time, and the winner's `Backuping` is written before the next one
        // lists the policies: two overlapping policies never both pass.
        let _serial = ctx.precheck_lock.lock().await;
        let spec = self.policy.spec.clone();
        let mut errors = Vec::new();
        if spec.rollback_requested() {
            errors.push(
                "spec.rollback is \"true\" but this policy has not promoted anything, so there is nothing to roll \
                 back; remove it to promote"
                    .to_owned(),
            );
        }
        if let Err(e) = sealing(&spec, &ctx.config) {
            errors.push(e);
        }
        let all = ctx.policies.list(&ListParams::default()).await?;
        let busy = machine::busy_namespaces(&self.name, &all.items);
        match ctx.member(&spec.cluster_name).await {
            Ok(member) => {
                let request = PrecheckRequest {
                    namespaces: spec.included_namespaces.clone(),
                    excluded: exclusions(&spec.excluded_namespace_scoped_resources),
                    cluster_name: spec.cluster_name.clone(),
                    forbidden_namespaces: ctx.config.forbidden_namespaces.clone(),
                    busy_namespaces: busy,
                    allowed_escalating_bindings: spec.allow_escalating_bindings.clone(),
                };
                if let Err(failed) = precheck(&member.client, &ctx.client, &request).await {
                    errors.extend(failed.errors);
                }
            }
            Err(e) => {
                errors.push(e.to_string());
                let node = kpromote_model::kosmos::virtual_node_name(&spec.cluster_name);
                if Api::<Node>::all(ctx.client.clone())
                    .get_opt(&node)
                    .await?
                    .is_none()
                {
                    errors.push(format!(
                        "the control plane has no virtual node {node}: is member cluster {:?} registered with Kosmos?",
                        spec.cluster_name
                    ));
                }
            }
        }
        if errors.is_empty() {
            let location = self
                .backup_location()
                .map_or_else(|e| e, |location| location.to_string());
            let message = format!(
                "precheck passed; backing up {} into {location}",
                spec.included_namespaces.join(", "),
            );
            self.transition(Phase::Backuping, &message, None, |s| {
                s.precheck_errors.clear();
                s.failure_reason = None;
            })
            .await?;
        } else {
            let reason = format!(
                "precheck failed ({} problem{}), nothing was changed: {}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                errors.join("; ")
            );
            self.transition(Phase::FailedPrecheck, &reason, None, |s| {
                s.precheck_errors = errors;
                s.failure_reason = Some(reason.clone());
            })
            .await?;
        }
        Ok(Flow::Continue)
    }

    /// `Backuping` → `Detaching` (with `backedupFile`) or `FailedBackup`.
    pub(super) async fn backup(&mut self) -> Result<Flow, ReconcileError> {
        let ctx = self.ctx.clone();
        let spec = self.policy.spec.clone();
        let created_at = self
            .status
            .start_timestamp
            .as_ref()
            .map_or_else(jiff::Timestamp::now, |t| t.0);
        let (tx, rx) = watch::channel(None);
        let lists = Arc::new(AtomicU64::new(0));
        let on_progress = Arc::new(move |event: &BackupProgress| {
            let (done, total) = match event {
                BackupProgress::Planned { lists: n } => {
                    lists.store(*n as u64, Ordering::Relaxed);
                    (0, *n as u64)
                }
                BackupProgress::Listed { done, .. } => (*done as u64, lists.load(Ordering::Relaxed)),
                BackupProgress::Writing => {
                    let n = lists.load(Ordering::Relaxed);
                    (n, n)
                }
                _ => return,
            };
            tx.send_replace(Some(progress("backup", done, total)));
        });
        let settings = sealing(&spec, &ctx.config).and_then(|r| Ok((r, self.backup_location()?)));
        let (recipients, location) = match settings {
            Ok(settings) => settings,
            Err(reason) => {
                let reason = format!("backup failed, nothing was changed in either cluster: {reason}");
                self.transition(Phase::FailedBackup, &reason, None, |s| {
                    s.failure_reason = Some(reason.clone());
                })
                .await?;
                return Ok(Flow::Continue);
            }
        };
        let request = BackupRequest::new(self.name.clone(), spec.included_namespaces.clone())
            .archive_options(kpromote_archive::WriterOptions::zstd().encrypt_to(recipients))
            .excluded(exclusions(&spec.excluded_namespace_scoped_resources))
            .location(location)
            .cluster_name(spec.cluster_name.clone())
            .created_at(created_at)
            .progress(on_progress);
        // The name depends only on the policy and its start time, and backup renames a finished
        // archive into place: one that exists is this run's, complete.
        let path = request.path_at(created_at);
        if let ArchiveLocation::Object(url) = request.archive_at(created_at) {
            // An object appears only complete and verified: one that exists is this run's.
            match crate::storage::remote::exists(&url).await {
                Ok(true) => {
                    tracing::info!(policy = %self.name, archive = %url, "adopting the archive a killed run finished");
                    return self.backed_up(&path, None).await;
                }
                Ok(false) => {}
                Err(e) => {
                    let reason = format!("backup failed, nothing was changed in either cluster: {e}");
                    self.transition(Phase::FailedBackup, &reason, None, |s| {
                        s.failure_reason = Some(reason.clone());
                    })
                    .await?;
                    return Ok(Flow::Continue);
                }
            }
        } else if path.symlink_metadata().is_ok() {
            if let Err(e) = crate::backup::trusted::owned_regular_file(&path) {
                let reason = format!("backup failed, nothing was changed in either cluster: {e}");
                self.transition(Phase::FailedBackup, &reason, None, |s| {
                    s.failure_reason = Some(reason.clone());
                })
                .await?;
                return Ok(Flow::Continue);
            }
            tracing::info!(policy = %self.name, archive = %path.display(), "adopting the archive a killed run finished");
            return self.backed_up(&path, None).await;
        }
        let member = ctx.member(&spec.cluster_name).await?;
        let started = Instant::now();
        let outcome = self
            .supervise(crate::backup::run(&member.client, &request), rx, Mode::Backup)
            .await;
        match outcome {
            Supervised::Deleted => {
                ctx.metrics.step("backup", "interrupted", started.elapsed());
                Ok(Flow::Interrupted)
            }
            Supervised::Done(Ok(report)) => {
                super::failpoint("backup:written");
                ctx.metrics.step("backup", "ok", started.elapsed());
                self.backed_up(&report.path, Some(report.collected.total_objects()))
                    .await
            }
            Supervised::Done(Err(e)) => {
                ctx.metrics.step("backup", "failed", started.elapsed());
                let reason = format!(
                    "backup failed, nothing was changed in either cluster: {}",
                    chain(&e)
                );
                self.transition(Phase::FailedBackup, &reason, None, |s| {
                    s.failure_reason = Some(reason.clone());
                })
                .await?;
                Ok(Flow::Continue)
            }
        }
    }

    async fn backed_up(&mut self, path: &Path, objects: Option<u64>) -> Result<Flow, ReconcileError> {
        let file = path.display().to_string();
        let message = format!(
            "archive {file} written{}; detaching the owners in the member top-down",
            objects.map(|n| format!(" ({n} objects)")).unwrap_or_default()
        );
        self.transition(Phase::Detaching, &message, None, |s| {
            s.backedup_file = Some(file.clone());
            s.progress = None;
        })
        .await?;
        Ok(Flow::Continue)
    }

    /// `Detaching` / `Restoring` → `Completed`, or `RollingBack` after a failure.
    pub(super) async fn promote(&mut self) -> Result<Flow, ReconcileError> {
        let ctx = self.ctx.clone();
        let cluster_name = self.policy.spec.cluster_name.clone();
        let phase = self.phase().unwrap_or(Phase::Detaching);
        let (path, inv) = match self.archive(false).await {
            Ok(found) => found,
            Err(why) => return self.stranded(&why).await,
        };
        let (member, control_plane) = self.engine_clusters(&cluster_name).await?;
        let (on_progress, rx) = engine_progress();
        let opts = ctx.config.engine.clone();
        // Another process on this archive (a command line) is waited out, not failed on.
        let claim = engine::claim_archive(&path)?;
        let work = async {
            let _claim = claim;
            let journal = match engine::open_journal(&path, engine::PROMOTE, &inv) {
                // A restart after the run completed but before the phase said so.
                Err(crate::journal::JournalError::Finished { outcome, .. })
                    if outcome == engine::COMPLETED =>
                {
                    return Ok(engine::Report::default());
                }
                journal => journal?,
            };
            // No rollback journal: on failure the controller itself records `RollingBack`
            // before rolling back, so a crash then resumes the rollback, not the promote.
            let run =
                engine::Run::new(&member, &control_plane, &inv, &cluster_name, &opts).reporting(&on_progress);
            engine::promote::promote(&run, &journal, None).await
        };
        let started = Instant::now();
        match self.supervise(work, rx, Mode::Promote).await {
            Supervised::Deleted => {
                ctx.metrics.step("promote", "interrupted", started.elapsed());
                Ok(Flow::Interrupted)
            }
            Supervised::Done(Ok(report)) => {
                ctx.metrics.step("promote", "ok", started.elapsed());
                let message = completed_message(&report, &cluster_name);
                self.transition(Phase::Completed, &message, None, |s| {
                    s.failure_reason = None;
                    s.failures.clear();
                    s.failed_count = None;
                    s.warnings.clone_from(&report.warnings);
                })
                .await?;
                Ok(Flow::Continue)
            }
            Supervised::Done(Err(e)) => {
                ctx.metrics.step("promote", "failed", started.elapsed());
                let failed_in = self.status.progress.as_ref().map_or(phase, |p| {
                    later_promote_phase(phase, promote_phase_of_step(&p.step))
                });
                let (trigger, verb) = if failed_in == Phase::Restoring {
                    (RollbackTrigger::RestoreFailed, "restore")
                } else {
                    (RollbackTrigger::DetachFailed, "detach")
                };
                let cause = format!("{verb} failed: {}", chain(&e));
                let (failures, failed) = e.failures();
                self.transition(
                    Phase::RollingBack,
                    &format!("{cause}; rolling back automatically"),
                    Some((false, trigger.as_reason())),
                    |s| {
                        s.failure_reason = Some(cause.clone());
                        s.failures = failures;
                        s.failed_count = Some(i64::try_from(failed).unwrap_or(i64::MAX));
                    },
                )
                .await?;
                Ok(Flow::Continue)
            }
        }
    }

    /// `RollingBack` → the trigger's phase (`RolledBack`, `FailedDetach`, `FailedRestore`) or
    /// `FailedRollback`.
    pub(super) async fn rollback(&mut self) -> Result<Flow, ReconcileError> {
        let ctx = self.ctx.clone();
        let cluster_name = self.policy.spec.cluster_name.clone();
        let trigger = self
            .status
            .rollback_trigger()
            .unwrap_or(RollbackTrigger::Requested);
        let (path, inv) = match self.archive(true).await {
            Ok(found) => found,
            Err(why) => return self.stranded(&why).await,
        };
        let (member, control_plane) = self.engine_clusters(&cluster_name).await?;
        let (on_progress, rx) = engine_progress();
        // An automatic rollback undoes a promotion that never completed: what it made is not
        // user work, and nobody could have built on it.
        let opts = crate::engine::EngineOptions {
            discard_changes: self.policy.spec.discard_changes || trigger != RollbackTrigger::Requested,
            ..ctx.config.engine.clone()
        };
        let claim = engine::claim_archive(&path)?;
        let work = async {
            let _claim = claim;
            let journal = engine::open_journal(&path, engine::ROLLBACK, &inv)?;
            let run =
                engine::Run::new(&member, &control_plane, &inv, &cluster_name, &opts).reporting(&on_progress);
            engine::rollback::rollback(&run, &journal).await
        };
        let started = Instant::now();
        let Supervised::Done(outcome) = self.supervise(work, rx, Mode::Rollback).await else {
            return Ok(Flow::Interrupted);
        };
        let cause = self.status.failure_reason.clone();
        match outcome {
            Ok(report) => {
                ctx.metrics.step("rollback", "ok", started.elapsed());
                let mut done = format!(
                    "rolled back: {} owners re-created in the member, {} pods unmarked, {} objects removed from the \
                     control plane",
                    report.created.len(),
                    report.unmarked.len(),
                    report.deleted.len()
                );
                // What the rollback discarded and warned about is the user's to know, whatever
                // made it run.
                let notes = report.notes();
                done.push_str(&notes);
                let (message, failure) = match (trigger, cause) {
                    (RollbackTrigger::DetachFailed | RollbackTrigger::RestoreFailed, Some(cause)) => {
                        let text = format!(
                            "{cause}; rolled back automatically: the member runs as before and the control plane \
                             holds nothing promoted{notes}"
                        );
                        (text.clone(), Some(text))
                    }
                    _ => (done, None),
                };
                let warnings: Vec<String> = report
                    .discarded
                    .iter()
                    .map(|d| format!("discarded: {d}"))
                    .chain(report.warnings.iter().cloned())
                    .chain(report.unreadable.iter().cloned())
                    .collect();
                self.transition(
                    trigger.phase_after(),
                    &message,
                    Some((true, trigger.as_reason())),
                    |s| {
                        s.failure_reason = failure;
                        s.warnings = warnings;
                    },
                )
                .await?;
            }
            Err(e) => {
                ctx.metrics.step("rollback", "failed", started.elapsed());
                let failed = format!(
                    "rollback failed: {}; set rollback: \"true\" again (edit the spec) to retry — it resumes where it \
                     stopped",
                    chain(&e)
                );
                let reason = match cause {
                    Some(cause) => format!("{cause}; {failed}"),
                    None => failed,
                };
                let (failures, count) = e.failures();
                self.status.failures = failures;
                self.status.failed_count = Some(i64::try_from(count).unwrap_or(i64::MAX));
                return self.failed_rollback(&reason).await;
            }
        }
        Ok(Flow::Continue)
    }

    /// The member and the control plane, as the engine acts on them.
    async fn engine_clusters(
        &self,
        cluster_name: &str,
    ) -> Result<(LiveCluster, LiveCluster), ReconcileError> {
        let member = self.ctx.member(cluster_name).await?;
        Ok((
            LiveCluster::new("member", member.client),
            LiveCluster::new("control plane", self.ctx.client.clone()),
        ))
    }

    /// The archive of `backedupFile`, checked to be one the controller wrote in its backup
    /// directory, and verified: whole for promote, as far as it can be read for a rollback
    /// ([`Inventory::for_rollback`]).
    async fn archive(&self, for_rollback: bool) -> Result<(PathBuf, Arc<Inventory>), String> {
        let Some(file) = self.status.backedup_file.clone() else {
            return Err("status.backedupFile names no archive".to_owned());
        };
        // The status subresource is not only the controller's to write: the path is checked to
        // be an archive it wrote in its backup directory (or right under the policy's bucket
        // prefix) before it is opened.
        let path = match ArchiveLocation::of(Path::new(&file)) {
            Ok(ArchiveLocation::Object(url)) => {
                let location = self.backup_location()?;
                if !location.holds(&url) {
                    return Err(format!(
                        "status.backedupFile: {url} is not an archive of this policy's backup location {location}"
                    ));
                }
                PathBuf::from(url.to_string())
            }
            _ => crate::backup::trusted::archive_in(&self.ctx.config.backup_dir, Path::new(&file))
                .map_err(|e| format!("status.backedupFile: {e}"))?,
        };
        let reading = path.clone();
        // Reading verifies every entry's checksum: CPU and disk work, off the async threads.
        let load = if for_rollback {
            Inventory::for_rollback_with
        } else {
            Inventory::for_promote_with
        };
        let identities = self.ctx.config.identities.clone();
        let inv = tokio::task::spawn_blocking(move || load(&reading, &identities))
            .await
            .map_err(|e| format!("reading archive {}: {e}", path.display()))?
            .map_err(|e| format!("archive {}: {}", path.display(), chain(&e)))?;
        Ok((path, Arc::new(inv)))
    }

    /// Where this policy's archives go: its `spec.backupLocation`, else the controller's default.
    fn backup_location(&self) -> Result<BackupLocation, String> {
        match self.policy.spec.backup_location.as_deref() {
            Some(location) => BackupLocation::parse(location)
                .ok()
                .filter(|l| matches!(l, BackupLocation::Bucket { .. }))
                .ok_or_else(|| format!("spec.backupLocation {location:?} is not s3://BUCKET/PREFIX")),
            None => Ok(self.ctx.config.default_location()),
        }
    }

    /// A working phase without a readable archive cannot go on, nor roll back: say so and
    /// wait for the user (who can put the archive back and ask for a rollback).
    async fn stranded(&mut self, why: &str) -> Result<Flow, ReconcileError> {
        let reason = format!(
            "{why}; promote cannot continue and rollback cannot run without the archive: put it back and set \
             rollback: \"true\""
        );
        self.failed_rollback(&reason).await
    }

    /// `FailedRollback` with `reason` as the message and the failure reason.
    async fn failed_rollback(&mut self, reason: &str) -> Result<Flow, ReconcileError> {
        self.transition(
            Phase::FailedRollback,
            reason,
            Some((false, REASON_ROLLBACK_FAILED)),
            |s| s.failure_reason = Some(reason.to_owned()),
        )
        .await?;
        Ok(Flow::Continue)
    }

    /// Runs `work` while patching its progress (at most every `progress_interval`), and stops
    /// it when the policy is deleted (unless it is a rollback). A promote moving from detach to
    /// restore changes the phase as soon as the restore step announces itself, before the
    /// engine goes on: the phase a crash leaves behind is the step that was running.
    async fn supervise<T>(
        &mut self,
        work: impl Future<Output = T>,
        mut progress: watch::Receiver<Option<Progress>>,
        mode: Mode,
    ) -> Supervised<T> {
        let mut work = std::pin::pin!(work);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let interval = self.ctx.config.progress_interval;
        let mut last_write: Option<Instant> = None;
        let mut reporting = true;
        loop {
            tokio::select! {
                out = &mut work => {
                    // Written with the transition that follows.
                    if let Some(latest) = progress.borrow().clone() {
                        self.status.progress = Some(latest);
                    }
                    return Supervised::Done(out);
                }
                changed = progress.changed(), if reporting && mode == Mode::Promote => {
                    if changed.is_err() {
                        reporting = false;
                        continue;
                    }
                    let Some(latest) = progress.borrow_and_update().clone() else { continue };
                    let Some(current) = self.phase() else { continue };
                    let phase = later_promote_phase(current, promote_phase_of_step(&latest.step));
                    if phase != current {
                        let message = "detached; rebuilding the namespaces in the control plane bottom-up";
                        if let Err(e) = self
                            .transition(phase, message, None, |s| s.progress = Some(latest.clone()))
                            .await
                        {
                            tracing::warn!(policy = %self.name, error = %e, "phase not written; retrying");
                        }
                        last_write = Some(Instant::now());
                    }
                }
                _ = tick.tick() => {
                    if mode.stops_on_delete() && self.ctx.is_deleting(&self.name) {
                        tracing::info!(policy = %self.name, "policy deleted; stopping the running step");
                        return Supervised::Deleted;
                    }
                    let Some(latest) = progress.borrow().clone() else { continue };
                    if self.status.progress.as_ref() == Some(&latest) {
                        continue;
                    }
                    if mode == Mode::Promote
                        && let Some(current) = self.phase()
                        && later_promote_phase(current, promote_phase_of_step(&latest.step)) != current
                    {
                        // The phase write failed above; the `changed` arm retries it.
                        progress.mark_changed();
                        continue;
                    }
                    if last_write.is_none_or(|t| t.elapsed() >= interval) {
                        self.write_progress(latest).await;
                        last_write = Some(Instant::now());
                    }
                }
            }
        }
    }
}

/// The recipients a policy's archive is sealed to: its `spec.encryptTo`, the controller's
/// `--encrypt-to`, and — when there is any — the controller's own identities, since promote
/// reads the archive back and rollback reads it later. Empty: nothing is sealed.
///
/// # Errors
/// A key of the spec that is not an age X25519 public key; recipients but no identity.
fn sealing(
    spec: &crate::policy::PromotePolicySpec,
    config: &super::ControllerConfig,
) -> Result<kpromote_archive::Recipients, String> {
    let asked = kpromote_archive::Recipients::from_keys(&spec.encrypt_to)
        .map_err(|e| format!("spec.encryptTo: {e}"))?
        .union(&config.encrypt_to);
    if asked.is_empty() {
        return Ok(asked);
    }
    if config.identities.is_empty() {
        return Err(format!(
            "spec.encryptTo (or the controller's --encrypt-to) seals the Secrets to {}, but the controller holds no              age identity to read them back for the promotion and a rollback; give it one (Helm value              encryption.identitySecret, or --age-identity)",
            asked.to_strings().join(", ")
        ));
    }
    Ok(asked.union(&config.identities.recipients()))
}

/// The exclusions in effect: the policy's, or the design's list when it names none.
fn exclusions(names: &[String]) -> Vec<String> {
    if names.is_empty() {
        DEFAULT_EXCLUDED_RESOURCES
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        names.to_vec()
    }
}

/// An engine progress callback, and the receiver [`Reconciliation::supervise`] reads it from.
fn engine_progress() -> (ProgressFn, watch::Receiver<Option<Progress>>) {
    let (tx, rx) = watch::channel(None);
    let on_progress: ProgressFn = Arc::new(move |step: &str, done: u64, total: u64| {
        tx.send_replace(Some(progress(step, done, total)));
    });
    (on_progress, rx)
}

fn progress(step: &str, done: u64, total: u64) -> Progress {
    Progress {
        step: step.to_owned(),
        items_done: i64::try_from(done).unwrap_or(i64::MAX),
        items_total: i64::try_from(total).unwrap_or(i64::MAX),
    }
}

fn completed_message(report: &Report, cluster_name: &str) -> String {
    let mut text = format!(
        "promoted: {} owners detached in the member, {} pods marked, {} objects created in the control plane \
         ({} already there); the pods run on node {}",
        report.detached.len(),
        report.marked.len(),
        report.created.len(),
        report.existed.len(),
        kpromote_model::kosmos::virtual_node_name(cluster_name)
    );
    if !report.warnings.is_empty() {
        text.push_str("; warnings: ");
        text.push_str(&report.warnings.join("; "));
    }
    text
}

#[cfg(test)]
mod tests {
    // age's X25519 keys are what kpromote seals to (see kpromote_archive::seal).
    #![allow(deprecated, clippy::unwrap_used)]
    use super::*;
    use crate::controller::ControllerConfig;
    use crate::policy::PromotePolicySpec;

    fn key() -> (String, String) {
        let identity = age::x25519::Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_owned();
        (secret, identity.to_public().to_string())
    }

    fn config_with_identity(dir: &Path) -> (ControllerConfig, String) {
        let (secret, public) = key();
        let file = dir.join("identity");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let mut config = ControllerConfig::new("test");
        config.identities = kpromote_archive::Identities::from_file(&file).unwrap();
        (config, public)
    }

    #[test]
    fn a_policy_without_encrypt_to_seals_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = config_with_identity(dir.path());
        assert!(
            sealing(&PromotePolicySpec::default(), &config)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_archive_is_sealed_to_the_policys_keys_and_the_controllers_own() {
        let dir = tempfile::tempdir().unwrap();
        let (config, own) = config_with_identity(dir.path());
        let (_, theirs) = key();
        let spec = PromotePolicySpec {
            encrypt_to: vec![theirs.clone()],
            ..PromotePolicySpec::default()
        };
        let mut expected = vec![own, theirs];
        expected.sort();
        assert_eq!(sealing(&spec, &config).unwrap().to_strings(), expected);
    }

    #[test]
    fn sealing_without_an_identity_or_with_a_bad_key_fails_before_anything() {
        let (_, theirs) = key();
        let spec = PromotePolicySpec {
            encrypt_to: vec![theirs.clone()],
            ..PromotePolicySpec::default()
        };
        let err = sealing(&spec, &ControllerConfig::new("test")).unwrap_err();
        assert!(err.contains(&theirs) && err.contains("identitySecret"), "{err}");
        // A spec names keys, never files: a path is a bad key, and is not opened.
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = config_with_identity(dir.path());
        let path = dir.path().join("identity").display().to_string();
        let spec = PromotePolicySpec {
            encrypt_to: vec![path],
            ..PromotePolicySpec::default()
        };
        let err = sealing(&spec, &config).unwrap_err();
        assert!(err.starts_with("spec.encryptTo:"), "{err}");
    }
}
