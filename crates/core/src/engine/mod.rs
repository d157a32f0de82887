//! The promote and rollback engine.
//!
//! Promote: [`detach`](detach::detach) the workload owners in the member top-down with orphan
//! propagation, [mark](detach::mark_pods) the pods as Kosmos-managed, then
//! [rebuild](apply::Restorer) every archived object bottom-up in the control plane, rewriting
//! ownerReferences to the new owners' UIDs. Rollback: take the marks off the member pods,
//! re-create the detached owners in the member bottom-up so they re-adopt the running pods, and
//! remove from the control plane exactly what promote created (the objects stamped with the
//! archive's identity).
//!
//! # Guarantees
//! - No pod is deleted or re-created in the member, and no pod template is changed anywhere.
//! - Every step is journaled before and after it acts, and checks live state before acting, so
//!   a run killed at any moment resumes with the same result.
//! - Rollback needs only the archive: what promote created is recognised by its stamp.

pub mod apply;
pub mod barrier;
pub mod detach;
mod drift;
pub(crate) mod inventory;
pub mod live;
pub mod promote;
pub mod rollback;
pub(crate) mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::journal::{Journal, JournalError};
use crate::plan::order::PlanError;
use crate::plan::transform::TransformError;
pub use inventory::Archived;
pub use inventory::Bodies;
pub use inventory::Inventory;
pub use inventory::InventoryError;
pub use inventory::Scan;
pub use inventory::open_archive;
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::OwnershipError;
pub use live::LiveCluster;
pub(crate) use live::LiveError;

/// One promote or rollback: the two clusters, the archived objects and how to act. The command
/// line, the controller and the tests assemble it the same way and hand it over whole.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// The member cluster.
    pub member: &'a LiveCluster,
    /// The Kosmos control plane.
    pub control_plane: &'a LiveCluster,
    /// The archive's objects.
    pub inventory: &'a Inventory,
    /// The member's name in Kosmos (its virtual node is `kosmos-<name>`).
    pub cluster_name: &'a str,
    /// Knobs.
    pub options: &'a EngineOptions,
    /// Called as steps progress.
    pub on_progress: Option<&'a ProgressFn>,
}

impl<'a> Run<'a> {
    /// A run with no progress callback (see [`Run::reporting`]).
    #[must_use]
    pub fn new(
        member: &'a LiveCluster,
        control_plane: &'a LiveCluster,
        inventory: &'a Inventory,
        cluster_name: &'a str,
        options: &'a EngineOptions,
    ) -> Self {
        Self {
            member,
            control_plane,
            inventory,
            cluster_name,
            options,
            on_progress: None,
        }
    }

    /// The same run, calling `on_progress` as steps progress.
    #[must_use]
    pub fn reporting(self, on_progress: &'a ProgressFn) -> Self {
        Self {
            on_progress: Some(on_progress),
            ..self
        }
    }
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("archive", &self.inventory.archive_id())
            .field("cluster_name", &self.cluster_name)
            .field("options", self.options)
            .finish_non_exhaustive()
    }
}

/// Knobs of a run.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Objects of one level created (or deleted) at once.
    pub concurrency: usize,
    /// A fixed pause before each level of owners instead of the observed barrier
    /// ([`barrier`]): only when non-zero, as an explicit fallback.
    pub settle: Duration,
    /// How long the barrier before a level of owners waits for the target's controllers to show
    /// they have seen what the owners will adopt while they write nothing: a controller working
    /// through a backlog (writing its owners' status) is waited for as long as it writes.
    pub barrier_stall: Duration,
    /// How long the garbage collector may go without orphaning one more of an owner's
    /// dependents before the wait for the owner to go fails — however many it has.
    pub gc_stall: Duration,
    /// How long a namespace being deleted on rollback may go without one object fewer in it
    /// before rollback names what holds it.
    pub namespace_stall: Duration,
    /// How long the restore waits for a single thing the target's controllers make or set (a
    /// namespace's default ServiceAccount, a CRD's Established condition).
    pub object_wait: Duration,
    /// How often promote runs its steps again (resuming from the journal) after a transient
    /// failure — the API server throttling or restarting for longer than one call's retries —
    /// before it rolls back.
    pub step_retries: u32,
    /// Whether rollback may discard what changed in the control plane since promote (objects
    /// users created in the promoted namespaces, owners whose spec they edited). Without it,
    /// rollback refuses and names them.
    pub discard_changes: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            settle: Duration::ZERO,
            barrier_stall: Duration::from_secs(120),
            gc_stall: Duration::from_secs(120),
            namespace_stall: Duration::from_secs(180),
            object_wait: Duration::from_secs(60),
            step_retries: 3,
            discard_changes: false,
        }
    }
}

/// Called with (step, items done, items total) as a run progresses.
pub type ProgressFn = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Objects one kind of action touched: how many, and the first [`Tally::SAMPLE`] of their names
/// in key order. A run over a hundred thousand objects would otherwise hold (and print) every
/// name; the journal beside the archive records each one.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Tally {
    count: u64,
    first: BTreeSet<String>,
}

impl Tally {
    /// How many names a tally keeps.
    pub const SAMPLE: usize = 200;

    /// Counts `name`, keeping it if it is among the first [`Tally::SAMPLE`] in key order.
    pub(crate) fn add(&mut self, name: String) {
        self.count += 1;
        if self.first.len() < Self::SAMPLE || self.first.last().is_some_and(|last| name < *last) {
            self.first.insert(name);
            if self.first.len() > Self::SAMPLE {
                self.first.pop_last();
            }
        }
    }

    /// How many objects were counted.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether none was.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The names kept, in key order: every one when [`Tally::len`] is at most [`Tally::SAMPLE`].
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.first.iter().map(String::as_str)
    }

    /// Whether `name` is among the names kept.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.first.contains(name)
    }
}

/// What a run did: per action, how many objects and the first of their names (see [`Tally`]).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// Owners deleted from the member (orphan propagation).
    pub detached: Tally,
    /// Member pods marked Kosmos-managed.
    pub marked: Tally,
    /// Objects created in the target.
    pub created: Tally,
    /// Objects that already existed in the target and were left as they were.
    pub existed: Tally,
    /// Objects merged into the target's own (the `default` ServiceAccount).
    pub merged: Tally,
    /// Objects not restored, with the reason.
    pub skipped: BTreeMap<String, String>,
    /// Dependents whose ownerReferences were pointed at their re-created owners.
    pub adopted: Tally,
    /// Member pods whose Kosmos marks were removed (rollback).
    pub unmarked: Tally,
    /// Objects removed from the control plane (rollback).
    pub deleted: Tally,
    /// Things a user should know that did not stop the run.
    pub warnings: Vec<String>,
    /// API calls that failed transiently (throttled, server error, no answer) and were retried.
    pub retried_calls: u64,
    /// Whole steps run again from the journal after a transient failure, with the failure.
    pub retried_steps: Vec<String>,
    /// Changes made in the control plane since promote that rollback discarded (only with
    /// [`EngineOptions::discard_changes`]).
    pub discarded: Vec<String>,
    /// Owners rollback could not re-create because their archive entry is damaged, with why
    /// ([`Inventory::for_rollback`]); their pods run on in the member without them.
    pub unreadable: Vec<String>,
}

impl Report {
    /// What a user must know of a run beyond that it finished, as a sentence to append to a
    /// message: the changes it discarded, its warnings and its damaged entries (empty when
    /// there is none).
    #[must_use]
    pub(crate) fn notes(&self) -> String {
        let mut notes = String::new();
        for (label, items) in [
            (
                "discarded (changed in the control plane since promote)",
                &self.discarded,
            ),
            ("warnings", &self.warnings),
            ("damaged archive entries", &self.unreadable),
        ] {
            if !items.is_empty() {
                notes.push_str(&format!("; {label}: {}", items.join("; ")));
            }
        }
        notes
    }

    /// The report a run's steps filled.
    fn finish(report: Mutex<Self>) -> Self {
        report
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The cluster refused or did not answer.
    #[error(transparent)]
    Live(#[from] LiveError),
    /// The journal could not be written; the run stopped before acting.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// An archived object cannot be restored.
    #[error("{key}: {source}")]
    Transform {
        /// The object.
        key: ObjectKey,
        /// Why.
        source: TransformError,
    },
    /// The archived objects' ownerReferences are inconsistent.
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    /// The archive could not be read again while the run streamed from it.
    #[error(transparent)]
    Inventory(#[from] inventory::InventoryError),
    /// A plan could not be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A member object changed after the backup; promoting the archive would undo the change.
    #[error(
        "{key} changed in the member after the backup ({detail}); nothing more was detached — run promote again to take a fresh backup"
    )]
    ChangedSinceBackup {
        /// The object.
        key: ObjectKey,
        /// What changed.
        detail: String,
    },
    /// Owners to detach carry finalizers of their own controllers; nothing was detached.
    #[error(
        "cannot detach {}: deleting an owner that carries its controller's finalizer makes that controller (an \
         operator in the member) run its cleanup; nothing was detached — stop the operator or remove the \
         finalizer, or leave the namespace out",
        .owners.join(", ")
    )]
    OwnerFinalizers {
        /// Each owner, with its finalizers.
        owners: Vec<String>,
    },
    /// Admission in the control plane changed a pod kpromote created: it would differ from the
    /// member pod it mirrors, and Kosmos would try to update the running pod forever.
    #[error("{key} was changed by the control plane's admission: {}; promote stopped at this level of the restore", .changes.iter().map(|c| format!("{} ({})", c.field, c.admission)).collect::<Vec<_>>().join("; "))]
    AdmissionChanged {
        /// The pod.
        key: ObjectKey,
        /// What changed, and the admission that likely did it.
        changes: Vec<crate::plan::twin::AdmissionChange>,
    },
    /// The control plane changed since promote; rolling back would lose the changes.
    #[error(
        "the control plane changed since promote, and rolling back would discard it: {}; keep what you need, then roll back with --discard-changes (spec.discardChanges: true)",
        .changes.join("; ")
    )]
    Drift {
        /// Each change, described.
        changes: Vec<String>,
    },
    /// Member pods carrying this promotion's Kosmos mark were still there after rollback's last
    /// pass to unmark them, each pass having met pods gone or re-created under their names.
    #[error(
        "member pods still carry this promotion's Kosmos mark after {passes} passes to unmark them, each meeting \
         pods gone or re-created under their names: {}; stop what re-creates them and run rollback again",
        .pods.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    MarkedPodsKeepComing {
        /// The pods the last LIST showed marked.
        pods: Vec<ObjectKey>,
        /// How many passes were made.
        passes: usize,
    },
    /// A deletion in the control plane waits on something outside kpromote (a finalizer whose
    /// controller does not run there, for one).
    #[error("{key} is not going away: {why}")]
    Stuck {
        /// The object.
        key: ObjectKey,
        /// What the cluster says it waits for.
        why: String,
    },
    /// Several objects of one step's level failed: each is named, up to [`FAILURES_SHOWN`].
    #[error(
        "{count} objects failed in one level of the {step}: {}{}",
        .failures.join("; "),
        if *.count > .failures.len() { format!("; and {} more", .count - .failures.len()) } else { String::new() }
    )]
    Failures {
        /// The step (`restore`, `recreate`, `adopt`).
        step: String,
        /// The first [`FAILURES_SHOWN`] failures, each naming its object.
        failures: Vec<String>,
        /// How many failed.
        count: usize,
        /// Whether every one of them was transient.
        transient: bool,
    },
    /// Promote failed after it had changed the member; the automatic rollback ran.
    #[error("promote failed: {cause}; {}", match .rollback {
        Ok(report) => format!("the automatic rollback restored the member and removed what promote created{}", report.notes()),
        Err(e) => format!("the automatic rollback failed too: {e}"),
    })]
    RolledBack {
        /// Why promote failed.
        cause: Box<EngineError>,
        /// How the rollback went: its report (what it discarded, its warnings), or its error.
        rollback: Result<Box<Report>, Box<EngineError>>,
    },
}

/// How many failures of one level an error names ([`EngineError::Failures`]); its count says
/// how many there were.
pub(crate) const FAILURES_SHOWN: usize = 20;

/// Every failure of one step's level: `Ok` when there is none, the failure itself when there
/// is one, and [`EngineError::Failures`] naming them all (up to [`FAILURES_SHOWN`]) when there
/// are more — none is dropped for being second.
///
/// # Errors
/// As described.
pub(crate) fn all_failures(step: &str, mut errors: Vec<EngineError>) -> Result<(), EngineError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        count => {
            for e in &errors {
                tracing::error!(step, error = %e, "failed");
            }
            Err(EngineError::Failures {
                step: step.to_owned(),
                transient: errors.iter().all(EngineError::is_transient),
                failures: errors
                    .iter()
                    .take(FAILURES_SHOWN)
                    .map(ToString::to_string)
                    .collect(),
                count,
            })
        }
    }
}

/// Runs `steps` (one future per object, made before streaming them — see `Restorer::run`) at
/// most `concurrency` at once, each to its end, then reports every failure through
/// [`all_failures`]: a failure does not cancel its neighbours half done, nor hide theirs.
///
/// # Errors
/// As [`all_failures`].
pub(crate) async fn every<F>(step: &str, steps: Vec<F>, concurrency: usize) -> Result<(), EngineError>
where
    F: std::future::Future<Output = Result<(), EngineError>>,
{
    use futures::StreamExt;
    let results: Vec<Result<(), EngineError>> = futures::stream::iter(steps)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    all_failures(step, results.into_iter().filter_map(Result::err).collect())
}

impl EngineError {
    /// Whether running the step again may succeed: the cluster did not answer or was
    /// overloaded past one call's retries, or a wait on its controllers ran out.
    #[must_use]
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Live(e) => e.is_transient() || matches!(e, LiveError::Stalled { .. }),
            Self::Failures { transient, .. } => *transient,
            _ => false,
        }
    }

    /// What failed, one line each (up to [`FAILURES_SHOWN`]), and how many failed: the objects
    /// of a level that failed together, or this error itself.
    #[must_use]
    pub fn failures(&self) -> (Vec<String>, usize) {
        match self {
            Self::Failures { failures, count, .. } => (failures.clone(), *count),
            Self::RolledBack { cause, .. } => cause.failures(),
            other => (vec![other.to_string()], 1),
        }
    }

    /// The report of the automatic rollback that ran after this failure, if it completed.
    #[must_use]
    pub fn rollback_report(&self) -> Option<&Report> {
        match self {
            Self::RolledBack {
                rollback: Ok(report), ..
            } => Some(report),
            _ => None,
        }
    }
}

/// The journal as the concurrent steps share it.
pub type SharedJournal = Arc<Mutex<Journal>>;

/// How a closed journal's run finished (see [`Journal::close`]): promote completed.
pub const COMPLETED: &str = "completed";
/// See [`COMPLETED`]: the promotion was rolled back.
pub(crate) const ROLLED_BACK: &str = "rolled back";

/// Journal step directions: one journal file per direction beside the archive.
pub const PROMOTE: &str = "promote";
/// See [`PROMOTE`].
pub const ROLLBACK: &str = "rollback";

/// The journal file of `archive` for `direction` ([`PROMOTE`] or [`ROLLBACK`]): beside the
/// archive, so the command line and the controller resume each other's runs.
#[must_use]
pub fn journal_path(archive: &std::path::Path, direction: &str) -> std::path::PathBuf {
    // A remote archive's journals sit beside its anchor in the local state directory.
    let anchor = crate::storage::ArchiveLocation::of(archive)
        .and_then(|at| at.local_anchor(false))
        .unwrap_or_else(|_| archive.to_owned());
    let mut name = anchor.as_os_str().to_owned();
    name.push(format!(".{direction}.journal"));
    std::path::PathBuf::from(name)
}

/// Opens the journal of `archive` for `direction`; its run is `<direction>:<archive id>`, so a
/// journal is never applied to another archive.
///
/// A journal belongs to one run. A promotion that finished — completed, or rolled back (its
/// rollback journal is closed) — is never resumed: promoting the archive again would skip the
/// detach and mark steps its journal records as done although rollback undid them, and the
/// archive no longer describes the member (rollback re-created its owners). A finished rollback
/// is retired and a new one starts from live state.
///
/// # Errors
/// The journal's I/O errors, damage, a journal of another run, or
/// [`JournalError::Finished`] for a promotion that finished.
pub fn open_journal(
    archive: &std::path::Path,
    direction: &str,
    inv: &Inventory,
) -> Result<SharedJournal, JournalError> {
    let run = format!("{direction}:{}", inv.archive_id());
    let path = journal_path(archive, direction);
    let journal = Journal::open(&path, &run)?;
    if direction == PROMOTE {
        let rolled_back = rollback_closed(archive, inv)?;
        // A rollback after a completed promotion finishes it for good, whatever the promote
        // journal says.
        if let Some(outcome) = rolled_back.or_else(|| journal.closed().map(str::to_owned)) {
            return Err(JournalError::Finished { path, outcome });
        }
    } else if journal.closed().is_some() {
        drop(journal);
        crate::journal::retire(&path)?;
        return Ok(Arc::new(Mutex::new(Journal::open(&path, &run)?)));
    }
    Ok(Arc::new(Mutex::new(journal)))
}

/// A process's exclusive claim on an archive, held for a whole promote or rollback run: the
/// command line and the controller (sharing the backup volume) never act on the same archive at
/// once — two runs interleaving their journals and steps could each undo the other's work. An
/// `flock` on the archive file; released when dropped (or when the process dies: the kernel
/// drops `flock` locks with the process).
#[derive(Debug)]
pub struct ArchiveClaim {
    _file: std::fs::File,
}

/// Takes the [`ArchiveClaim`] on `archive`, without waiting.
///
/// # Errors
/// [`JournalError::Claimed`] when another process holds it; I/O errors.
pub fn claim_archive(archive: &std::path::Path) -> Result<ArchiveClaim, JournalError> {
    // A remote archive is locked through its anchor in the local state directory: object
    // storage has no locks, and the runs that share a state directory are the ones to exclude.
    let anchored = match crate::storage::ArchiveLocation::of(archive) {
        Ok(at @ crate::storage::ArchiveLocation::Object(_)) => {
            Some(at.local_anchor(true).map_err(|e| JournalError::Io {
                path: archive.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?)
        }
        _ => None,
    };
    let archive = anchored.as_deref().unwrap_or(archive);
    let file = std::fs::File::open(archive).map_err(|source| JournalError::Io {
        path: archive.to_owned(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(ArchiveClaim { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Claimed {
            path: archive.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(JournalError::Io {
            path: archive.to_owned(),
            source,
        }),
    }
}

/// How the rollback of `archive` finished, if it did (read without creating the journal).
fn rollback_closed(archive: &std::path::Path, inv: &Inventory) -> Result<Option<String>, JournalError> {
    let path = journal_path(archive, ROLLBACK);
    let Some(records) = crate::journal::read(&path)? else {
        return Ok(None);
    };
    if crate::journal::run_of(&records) != Some(format!("{ROLLBACK}:{}", inv.archive_id()).as_str()) {
        return Ok(None);
    }
    Ok(records
        .iter()
        .rev()
        .find(|r| r.step == crate::journal::CLOSED_STEP)
        .and_then(|r| r.data.get("outcome"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned))
}

/// Locks the run's journal or report. A step that panicked while holding it left it whole (each
/// record or count is one call), so the others go on instead of panicking in turn.
fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn progress(progress: Option<&ProgressFn>, step: &str, done: u64, total: u64) {
    if let Some(f) = progress {
        f(step, done, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(n: usize) -> EngineError {
        EngineError::ChangedSinceBackup {
            key: ObjectKey::namespaced("", "pods", "shop", &format!("web-{n}")),
            detail: "replaced".into(),
        }
    }

    #[test]
    fn every_failure_of_a_level_is_named_up_to_a_bound_with_the_count() {
        assert!(all_failures("restore", Vec::new()).is_ok());
        let one = all_failures("restore", vec![failed(0)]).expect_err("one failure");
        assert!(matches!(one, EngineError::ChangedSinceBackup { .. }), "{one}");
        let three = all_failures("restore", (0..3).map(failed).collect()).expect_err("three");
        let text = three.to_string();
        assert!(
            text.starts_with("3 objects failed in one level of the restore"),
            "{text}"
        );
        for n in 0..3 {
            assert!(text.contains(&format!("pods/shop/web-{n} changed")), "{text}");
        }
        let many = all_failures("recreate", (0..25).map(failed).collect()).expect_err("many");
        let (shown, count) = many.failures();
        assert_eq!((shown.len(), count), (FAILURES_SHOWN, 25));
        assert!(many.to_string().ends_with("; and 5 more"), "{many}");
        assert!(!many.is_transient());
    }
}
