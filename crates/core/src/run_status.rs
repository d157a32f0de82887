//! Where a promote or rollback run stands, read from its archive and the journals beside it —
//! an operator's first question after a crash. Nothing here touches a cluster or writes a file.
//!
//! The archive gives the plan (which owners detach, which pods are marked, what is restored);
//! the journals (see [`crate::journal`]) say which of those steps are done, and which were
//! begun and not finished (in flight when the run stopped). Every step is idempotent, so a run
//! that is not finished can always be resumed from the archive, unless a journal is damaged.
//!
//! # Caveats
//! The journals say what a run did, not what the clusters look like now: a run still going
//! looks the same as one that was killed. What rollback re-creates and removes is decided from
//! live state when it runs; here it is estimated from the promote journal (the owners it
//! detached, the objects it created).
//!
//! # JSON
//! [`RunStatus`] serializes (camelCase) as `kpromote status -o json` prints it:
//! `{"archive", "archiveId", "policy", "clusterName", "objects", "state", "resumable", "next"?,
//! "problem"?, "promote": {"journal", "started", "steps": [{"step", "planned"?, "done",
//! "inFlight": [...], "remaining": [...]}]}, "rollback": {…}}`. `state` is one of `NotStarted`,
//! `Promoting`, `Promoted`, `RollingBack`, `RolledBack`, `Damaged`; `planned` is absent for
//! steps with no plan (`adopt`); object names are `ObjectKey`s (`deployments.apps/ns/name`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::apply::STEP_ADOPT;
use crate::engine::detach::{STEP_DETACH, STEP_MARK};
use crate::engine::promote::STEP_RESTORE;
use crate::engine::rollback::{STEP_RECREATE, STEP_TEARDOWN, STEP_UNMARK, goes_with_namespace};
use crate::engine::{Bodies, Inventory, InventoryError, PROMOTE, ROLLBACK, journal_path};
use crate::journal::{self, Record, State};
use crate::plan::order::RestorePlan;
use kpromote_model::object_key::ObjectKey;

/// Errors of reading a run's status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The archive cannot be read or verified.
    #[error("archive {path}: {source}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// Why.
        source: crate::engine::inventory::InventoryError,
    },
    /// The archive does not say which member cluster it came from.
    #[error("archive {path} names no source cluster; pass --cluster-name")]
    NoClusterName {
        /// The archive.
        path: PathBuf,
    },
}

/// Where a run stands, as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RunState {
    /// The archive exists; neither promote nor rollback has recorded a step.
    NotStarted,
    /// Promote recorded steps but not all of them: running, or interrupted.
    Promoting,
    /// Every planned promote step is done.
    Promoted,
    /// Rollback (asked for, or automatic after a failed promote) recorded steps but not all.
    RollingBack,
    /// Every rollback step is done: the member is as it was.
    RolledBack,
    /// A journal is damaged or belongs to another archive: nothing can resume from it.
    Damaged,
}

/// One step kind of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The journal step (`detach`, `mark`, `restore`, `adopt`, `unmark`, `recreate`, `teardown`).
    pub step: String,
    /// How many objects the plan has for this step; `None` for steps with no plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned: Option<usize>,
    /// Objects whose step is done (of the plan, when there is one).
    pub done: usize,
    /// Objects begun and not done: in flight when the run stopped, redone on resume.
    pub in_flight: Vec<String>,
    /// Planned objects with no record at all, in plan order.
    pub remaining: Vec<String>,
}

impl StepStatus {
    fn is_complete(&self) -> bool {
        self.in_flight.is_empty() && self.remaining.is_empty()
    }
}

/// One direction's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionStatus {
    /// The journal file.
    pub journal: PathBuf,
    /// Whether it holds any step (beyond the record naming its run).
    pub started: bool,
    /// Per step kind, in the order the run does them.
    pub steps: Vec<StepStatus>,
}

impl DirectionStatus {
    /// The status of each of `plans` (a step and its planned objects, in the run's order) by
    /// `records`, the journal at `journal`.
    fn of(journal: PathBuf, records: &[Record], plans: [(&str, Option<&[ObjectKey]>); 4]) -> Self {
        Self {
            journal,
            started: started(records),
            steps: plans
                .into_iter()
                .map(|(name, planned)| step(name, planned, records))
                .collect(),
        }
    }

    fn is_complete(&self) -> bool {
        self.steps.iter().all(StepStatus::is_complete)
    }
}

/// Where the run of one archive stands.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// The archive.
    pub archive: PathBuf,
    /// Its identity (the stamp on what promote created).
    pub archive_id: String,
    /// The policy (or command-line name) that made it.
    pub policy: String,
    /// The member cluster's name.
    pub cluster_name: String,
    /// Archived objects.
    pub objects: usize,
    /// The run as a whole.
    pub state: RunState,
    /// Whether running the command in [`next`](Self::next) continues from the journal.
    pub resumable: bool,
    /// What to run next, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Why nothing can resume ([`RunState::Damaged`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The promote journal.
    pub promote: DirectionStatus,
    /// The rollback journal.
    pub rollback: DirectionStatus,
}

/// Reads where the run of `archive` stands. `cluster_name` overrides the archive's source
/// cluster (it decides which objects the restore skips); `identities` open its sealed Secrets
/// (which decide some of the skips).
///
/// # Errors
/// The archive cannot be read or verified, or is sealed to none of `identities`. A damaged
/// journal is not an error: it is reported as [`RunState::Damaged`].
pub fn read(
    archive: &Path,
    cluster_name: Option<&str>,
    identities: &kpromote_archive::Identities,
) -> Result<RunStatus, StatusError> {
    let archive_error = |source| StatusError::Archive {
        path: archive.to_owned(),
        source,
    };
    let inv = Inventory::for_promote_with(archive, identities).map_err(archive_error)?;
    let facts = crate::engine::open_archive(archive)
        .ok()
        .and_then(|r| r.facts().cloned());
    let cluster_name = match (cluster_name, &facts) {
        (Some(name), _) => name.to_owned(),
        (None, Some(f)) if !f.source.name.is_empty() => f.source.name.clone(),
        _ => {
            return Err(StatusError::NoClusterName {
                path: archive.to_owned(),
            });
        }
    };
    let policy = facts.map(|f| f.policy.name).unwrap_or_default();

    let mut problems = Vec::new();
    let mut load = |direction: &str| -> (PathBuf, Vec<Record>) {
        let path = journal_path(archive, direction);
        let expected = format!("{direction}:{}", inv.archive_id());
        let records = match journal::read(&path) {
            Ok(None) => Vec::new(),
            Ok(Some(records)) => match journal::run_of(&records) {
                Some(run) if run != expected => {
                    problems.push(format!(
                        "journal {} belongs to run {run:?}, not {expected:?}",
                        path.display()
                    ));
                    Vec::new()
                }
                _ => records,
            },
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        (path, records)
    };
    let (promote_path, promote_records) = load(PROMOTE);
    let (rollback_path, rollback_records) = load(ROLLBACK);

    let promote = promote_status(&inv, promote_path, &promote_records).map_err(archive_error)?;
    let rollback =
        rollback_status(&inv, rollback_path, &promote_records, &rollback_records).map_err(archive_error)?;

    let flags = format!(
        "--archive {} --cluster-name {cluster_name} <kubeconfig flags>",
        archive.display()
    );
    let (state, next) = if !problems.is_empty() {
        (RunState::Damaged, None)
    } else if rollback.started {
        if rollback.is_complete() {
            (RunState::RolledBack, None)
        } else {
            (RunState::RollingBack, Some(format!("kpromote rollback {flags}")))
        }
    } else if promote.started {
        if promote.is_complete() {
            (
                RunState::Promoted,
                Some(format!("kpromote rollback {flags}  # to undo")),
            )
        } else {
            (RunState::Promoting, Some(format!("kpromote promote {flags}")))
        }
    } else {
        (RunState::NotStarted, Some(format!("kpromote promote {flags}")))
    };
    Ok(RunStatus {
        archive: archive.to_owned(),
        archive_id: inv.archive_id().to_owned(),
        policy,
        cluster_name,
        objects: inv.len(),
        state,
        resumable: matches!(
            state,
            RunState::NotStarted | RunState::Promoting | RunState::RollingBack
        ),
        next,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        promote,
        rollback,
    })
}

fn promote_status(
    inv: &Inventory,
    journal: PathBuf,
    records: &[Record],
) -> Result<DirectionStatus, InventoryError> {
    let detach: Vec<ObjectKey> = inv.detach_plan().objects().cloned().collect();
    let mut mark: Vec<ObjectKey> = Vec::new();
    let held = inv
        .graph()
        .keys()
        .filter(|k| k.is("", "pods"))
        .filter_map(|k| inv.archived(k));
    let mut outside = inv.outside_of_kind("", "pods")?;
    let mut batch = Some(held.collect::<Vec<_>>());
    while let Some(pods) = batch {
        mark.extend(pods.into_iter().filter(|p| inv.restores(p)).map(|p| p.record.key));
        batch = outside.next_batch(1024)?;
    }
    let plan = inv.restore_plan();
    let mut restore: Vec<ObjectKey> = Vec::new();
    for level in &plan.levels {
        restore.extend(level.objects.iter().cloned());
        for (group, resource, _) in inv.outside_in(level) {
            restore.extend(keys(inv, |k| k.is(group, resource))?);
        }
    }
    let plans = [
        (STEP_DETACH, Some(&detach[..])),
        (STEP_MARK, Some(&mark[..])),
        (STEP_RESTORE, Some(&restore[..])),
        (STEP_ADOPT, None),
    ];
    Ok(DirectionStatus::of(journal, records, plans))
}

/// The keys of the archived objects `wanted` accepts, read from the index.
fn keys(
    inv: &Inventory,
    wanted: impl Fn(&ObjectKey) -> bool + Clone + Send,
) -> Result<Vec<ObjectKey>, InventoryError> {
    let mut scan = inv.scan(wanted, Bodies::No)?;
    let mut keys = Vec::new();
    while let Some(batch) = scan.next_batch(1024)? {
        keys.extend(batch.into_iter().map(|a| a.record.key));
    }
    Ok(keys)
}

fn rollback_status(
    inv: &Inventory,
    journal: PathBuf,
    promote: &[Record],
    records: &[Record],
) -> Result<DirectionStatus, InventoryError> {
    let unmark: Vec<ObjectKey> = keys(inv, |k| k.is("", "pods"))?;
    // Rollback re-creates the owners promote detached and removes what it created.
    let touched = |step: &str, created_only: bool| -> BTreeSet<String> {
        promote
            .iter()
            .filter(|r| r.step == step)
            .filter(|r| !created_only || r.data.get("outcome").and_then(|o| o.as_str()) == Some("created"))
            .map(|r| r.key.clone())
            .collect()
    };
    let detached = touched(STEP_DETACH, false);
    let recreate: Vec<ObjectKey> = RestorePlan::build(inv.graph())
        .objects()
        .filter(|k| detached.contains(&k.to_string()))
        .cloned()
        .collect();
    let created = touched(STEP_RESTORE, true);
    // A namespace promote created goes whole: what goes with it has no teardown step of its own.
    let namespaces: BTreeSet<String> = created
        .iter()
        .filter_map(|k| k.strip_prefix("namespaces/"))
        .map(str::to_owned)
        .collect();
    let mut scan = inv.scan(move |k| created.contains(&k.to_string()), Bodies::Yes)?;
    let mut teardown: Vec<ObjectKey> = Vec::new();
    while let Some(batch) = scan.next_batch(1024)? {
        teardown.extend(
            batch
                .into_iter()
                .filter(|a| !goes_with_namespace(a, &namespaces))
                .map(|a| a.record.key),
        );
    }
    let plans = [
        (STEP_RECREATE, Some(&recreate[..])),
        (STEP_ADOPT, None),
        (STEP_UNMARK, Some(&unmark[..])),
        (STEP_TEARDOWN, Some(&teardown[..])),
    ];
    Ok(DirectionStatus::of(journal, records, plans))
}

/// Whether a journal holds any step beyond its run record (promote opens the rollback journal
/// up front, for the automatic rollback, so an empty one is common).
fn started(records: &[Record]) -> bool {
    records.iter().any(|r| r.step != journal::RUN_STEP)
}

fn step(name: &str, planned: Option<&[ObjectKey]>, records: &[Record]) -> StepStatus {
    // The latest record of each object wins, as in the journal itself.
    let mut latest = std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| r.step == name) {
        latest.insert(r.key.clone(), r.state);
    }
    let done: BTreeSet<String> = latest
        .iter()
        .filter(|(_, s)| **s == State::Done)
        .map(|(k, _)| k.clone())
        .collect();
    let begun: BTreeSet<String> = latest
        .iter()
        .filter(|(_, s)| **s == State::Begun)
        .map(|(k, _)| k.clone())
        .collect();
    let remaining = planned
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .filter(|k| !done.contains(k) && !begun.contains(k))
        .collect();
    // With a plan, `done` counts its objects, so done + in flight + remaining = planned (the
    // in-flight list keeps any object outside it: that is where a run stopped).
    let done = match planned {
        Some(keys) => keys.iter().filter(|k| done.contains(&k.to_string())).count(),
        None => done.len(),
    };
    StepStatus {
        step: name.to_owned(),
        planned: planned.map(<[ObjectKey]>::len),
        done,
        in_flight: begun.into_iter().collect(),
        remaining,
    }
}
