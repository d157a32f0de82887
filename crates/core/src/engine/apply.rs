//! Rebuilding archived objects in a target cluster, level by level in restore-plan order: the
//! control plane on promote, the member's detached owners on rollback.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use futures::StreamExt;
use serde_json::{Value, json};

use super::inventory::{Bodies, Inventory, not_archived, stamp, stamped_by};
use super::live::json_of;
use super::live::{LiveCluster, LiveError};
use super::wait::{Awaited, Poll, Progress, on_conflict, until};
use super::{EngineError, EngineOptions, ProgressFn, Report, SharedJournal, lock, progress};
use crate::plan::order::{Level, RestorePlan, WaitPoint, is_builtin_group};
use crate::plan::transform::{Prepared, Target, TransformContext, adoption_patch, prepare};
use crate::plan::twin::{MARK_LABELS, admission_changes, archived_marks, unmark_patch};
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::{ObjectRecord, OwnerReference};

/// What adopting one dependent adds to it.
#[derive(Debug)]
struct Adopting {
    /// Its archived references to the owner, with the owner's archived UID.
    refs: Vec<OwnerReference>,
    /// For a member pod on rollback, the marks its archived self carried ([`archived_marks`]):
    /// the patch pointing it at its re-created owner takes detach's marks off too, one request
    /// instead of two. `None` for every other dependent.
    unmark: Option<Value>,
}

impl Adopting {
    /// `pointing` (the strategic adoption patch, if any reference is to add) with the unmarking
    /// of `live` merged in, and whether it unmarks. Only pods are unmarked, and they always take
    /// a strategic patch, under `live`'s UID; a `live` without one is not unmarked here.
    fn with_unmark(&self, live: &Value, pointing: Option<Value>) -> (Option<Value>, bool) {
        let unmark = self
            .unmark
            .as_ref()
            .and_then(|archived| unmark_patch(archived, live));
        // Without the UID to send as its precondition, the unmarking is left to rollback's own.
        let (Some(unmark), Some(uid)) = (unmark, live.pointer("/metadata/uid")) else {
            return (pointing, false);
        };
        let mut patch = pointing.unwrap_or_else(|| json!({ "metadata": { "uid": uid } }));
        if let (Some(metadata), Some(Value::Object(marks))) = (
            patch.get_mut("metadata").and_then(Value::as_object_mut),
            unmark.get("metadata"),
        ) {
            metadata.extend(marks.clone());
        }
        (Some(patch), true)
    }
}

/// Journal step that points a dependent's ownerReference at its re-created owner.
pub(crate) const STEP_ADOPT: &str = "adopt";

/// How many dependents of one type in one namespace make a LIST cheaper than a GET each.
const PREFETCH_MIN: usize = 8;

/// How many objects of a level are restored at once (the level finishes before the next).
const RESTORE_BATCH: usize = 512;

/// How many dependents are adopted (and prefetched) at once.
const ADOPT_BATCH: usize = 1024;

/// The journal name of pointing `dependent` at `owner`.
fn adoption_name(dependent: &ObjectKey, owner: &ObjectKey) -> String {
    format!("{dependent}<-{owner}")
}

/// What adopting a dependent reads of its live state ([`adoption_patch`], [`stamped_by`],
/// [`unmark_patch`]): its UID, ownerReferences, resourceVersion, archive stamp and — when the
/// adoption `unmarks` (rollback's) — its Kosmos mark labels. A prefetched level of thousands of
/// pods keeps this much of each, not the pods.
fn adoption_view(live: kube::api::DynamicObject, unmarks: bool) -> Value {
    use kpromote_model::kosmos::STAMP_ANNOTATION;
    let stamp = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STAMP_ANNOTATION));
    let mut metadata = serde_json::Map::new();
    if let Some(labels) = live.metadata.labels.as_ref().filter(|_| unmarks) {
        let marks: serde_json::Map<String, Value> = MARK_LABELS
            .into_iter()
            .filter_map(|key| Some((key.to_owned(), Value::String(labels.get(key)?.clone()))))
            .collect();
        if !marks.is_empty() {
            metadata.insert("labels".to_owned(), Value::Object(marks));
        }
    }
    if let Some(refs) = &live.metadata.owner_references {
        metadata.insert(
            "ownerReferences".to_owned(),
            serde_json::to_value(refs).unwrap_or(Value::Null),
        );
    }
    if let Some(rv) = &live.metadata.resource_version {
        metadata.insert("resourceVersion".to_owned(), Value::String(rv.clone()));
    }
    if let Some(uid) = &live.metadata.uid {
        metadata.insert("uid".to_owned(), Value::String(uid.clone()));
    }
    if let Some(stamp) = stamp {
        metadata.insert("annotations".to_owned(), json!({ STAMP_ANNOTATION: stamp }));
    }
    json!({ "metadata": metadata })
}

/// The live state of many `dependents` at once in `target`, as `view` keeps it: one LIST per
/// type and namespace where at least [`PREFETCH_MIN`] dependents share them, instead of a GET
/// each (a level of 100 ReplicaSets has 1,000 pods to check). `None` inside: listed, and not in
/// the target; a dependent left out was not listed (too few of its type), to be read alone.
///
/// # Errors
/// Refusals and unavailability.
pub(super) async fn prefetch<'k>(
    target: &LiveCluster,
    dependents: impl Iterator<Item = &'k ObjectRecord>,
    view: impl Fn(kube::api::DynamicObject) -> Value,
) -> Result<HashMap<ObjectKey, Option<Value>>, EngineError> {
    let mut by_list: BTreeMap<(&str, &str, Option<&str>), Vec<&ObjectRecord>> = BTreeMap::new();
    for record in dependents {
        let key = &record.key;
        by_list
            .entry((&key.group, &key.resource, key.namespace.as_deref()))
            .or_default()
            .push(record);
    }
    let mut views = HashMap::new();
    for records in by_list.into_values().filter(|r| r.len() >= PREFETCH_MIN) {
        let first = &records[0].key;
        let api = target.api(first, &records[0].api_version, &records[0].kind);
        let wanted: BTreeSet<&str> = records.iter().map(|r| r.key.name.as_str()).collect();
        let mut listed = target
            .list_kept(&api, first, None, |live| {
                live.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| wanted.contains(n))
                    .then(|| view(live))
            })
            .await?;
        for record in records {
            views.insert(record.key.clone(), listed.remove(&record.key.name));
        }
    }
    Ok(views)
}

/// How an object ended up in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Created by this run (or by an earlier attempt of it: it carries the stamp).
    Created(String),
    /// Was there already; left untouched, but owns like any other object.
    Existed(String),
    /// Merged into the target's own object.
    Merged(String),
    /// Not restored.
    Skipped,
}

/// What a [`Restorer`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The plan's objects only (rollback's re-created owners).
    Planned,
    /// Every archived object (promote): the plan's, and, with each level of height 0, the
    /// archive's objects of its tier outside the inventory's graph, streamed kind by kind
    /// ([`Inventory::outside_in`]).
    Archive,
}

/// Restores objects of an [`Inventory`] into one target cluster: the control plane on promote
/// ([`Restorer::into_control_plane`]), the member on rollback ([`Restorer::into_member`]).
#[derive(Debug)]
pub struct Restorer<'a> {
    cluster: &'a LiveCluster,
    inv: &'a Inventory,
    target: Target,
    journal: &'a SharedJournal,
    opts: &'a EngineOptions,
}

impl<'a> Restorer<'a> {
    /// Promote's restore into the Kosmos control plane `cluster`, where member `cluster_name`'s
    /// virtual node stands for the member. Journal step `restore`; every created object carries
    /// the archive's stamp, so rollback removes exactly those.
    #[must_use]
    pub fn into_control_plane(
        cluster: &'a LiveCluster,
        cluster_name: &str,
        inv: &'a Inventory,
        journal: &'a SharedJournal,
        opts: &'a EngineOptions,
    ) -> Self {
        let target = Target::ControlPlane {
            cluster_name: cluster_name.to_owned(),
        };
        Self {
            cluster,
            inv,
            target,
            journal,
            opts,
        }
    }

    /// Rollback's re-creation of the owners detach deleted, in the `member` cluster. Journal step
    /// `recreate`; no stamp (the member's objects are its own again).
    #[must_use]
    pub(crate) fn into_member(
        member: &'a LiveCluster,
        inv: &'a Inventory,
        journal: &'a SharedJournal,
        opts: &'a EngineOptions,
    ) -> Self {
        Self {
            cluster: member,
            inv,
            target: Target::Member,
            journal,
            opts,
        }
    }

    /// Journal step name of one object's restore.
    fn step(&self) -> &'static str {
        match self.target {
            Target::ControlPlane { .. } => super::promote::STEP_RESTORE,
            Target::Member => super::rollback::STEP_RECREATE,
        }
    }

    /// Whether created objects carry the archive's stamp.
    fn stamps(&self) -> bool {
        matches!(self.target, Target::ControlPlane { .. })
    }

    /// Restores every object of `plan` (and, for [`Scope::Archive`], the objects each level
    /// streams in); `ctx` holds the UIDs of owners already in the target and learns each new
    /// one. Right after each level, the dependents of the level's objects get their
    /// ownerReferences pointed at them.
    ///
    /// # Errors
    /// Every object of the level that could not be restored (the level finishes first; see
    /// [`super::all_failures`]), API and journal errors.
    pub async fn run(
        &self,
        plan: &RestorePlan,
        scope: Scope,
        ctx: &mut TransformContext,
        report: &Mutex<Report>,
        on_progress: Option<&ProgressFn>,
    ) -> Result<(), EngineError> {
        let streamed = |level: &Level| match scope {
            Scope::Planned => Vec::new(),
            Scope::Archive => self.inv.outside_in(level),
        };
        let total = plan
            .levels
            .iter()
            .map(|l| l.objects.len() as u64 + streamed(l).iter().map(|(_, _, n)| n).sum::<u64>())
            .sum();
        let mut done = 0;
        // Announce the step before its first level: observers (the controller's phase) must
        // attribute a failure in that level to this step.
        progress(on_progress, self.step(), 0, total);
        for (index, level) in plan.levels.iter().enumerate() {
            let started = Instant::now();
            if index > 0 && level.height > 0 {
                self.barrier(level).await?;
            }
            let barrier = started.elapsed();
            let snapshot = ctx.clone();
            let mut failed = Vec::new();
            // A level may hold thousands of objects, and each prepared future holds kilobytes:
            // a batch at a time, the held objects first, then those streamed in.
            for batch in level.objects.chunks(RESTORE_BATCH) {
                let batch = batch
                    .iter()
                    .map(|key| (key.clone(), None))
                    .collect::<Vec<(ObjectKey, Option<Value>)>>();
                done += self
                    .restore_batch(batch, &snapshot, ctx, &mut failed, report)
                    .await;
                progress(on_progress, self.step(), done, total);
            }
            for (group, resource, _) in streamed(level) {
                let mut objects = self.inv.outside_of_kind(group, resource)?;
                while let Some(batch) = objects.next_batch(RESTORE_BATCH)? {
                    let batch = batch
                        .into_iter()
                        .map(|a| (a.record.key, Some(a.object)))
                        .collect();
                    done += self
                        .restore_batch(batch, &snapshot, ctx, &mut failed, report)
                        .await;
                    progress(on_progress, self.step(), done, total);
                }
            }
            // Every failure of the level is reported, not only the first.
            super::all_failures(self.step(), failed)?;
            if let Some(wait) = level.wait_after {
                self.wait(wait, &level.objects).await?;
            }
            let created = started.elapsed();
            // The level's dependents are pointed at it at once, at this run's concurrency. The
            // target's controllers would adopt pods and ReplicaSets by selector too, but at their
            // client's rate limit (20 requests/s by default), which made a level of 100
            // ReplicaSets wait seconds for the adoption of their 1,000 pods; a controller that
            // finds its dependents already owned has nothing to patch. (Objects streamed in own
            // nothing.)
            self.adopt_dependents(&level.objects, ctx, report).await?;
            lock(self.journal).sync()?;
            tracing::debug!(
                step = self.step(),
                level = index,
                height = level.height,
                objects = level.objects.len(),
                barrier_ms = barrier.as_millis() as u64,
                create_ms = (created - barrier).as_millis() as u64,
                adopt_ms = (started.elapsed() - created).as_millis() as u64,
                "level restored"
            );
        }
        Ok(())
    }

    /// Restores one batch of a level: `objects` with their bodies when streamed (`None`: an
    /// object of the graph, read from the inventory), concurrently, recording each new UID of
    /// an object of the graph in `ctx`, and every failure in `failed`. How many were
    /// attempted.
    async fn restore_batch(
        &self,
        objects: Vec<(ObjectKey, Option<Value>)>,
        snapshot: &TransformContext,
        ctx: &mut TransformContext,
        failed: &mut Vec<EngineError>,
        report: &Mutex<Report>,
    ) -> u64 {
        let attempted = objects.len() as u64;
        // The futures are made before streaming them — a `map` closure kept in the stream
        // across `.await` makes the run fail `Send` for spawned callers (the controller;
        // rust-lang/rust#110338).
        let restores: Vec<_> =
            objects
                .iter()
                .map(|(key, body)| async move {
                    (key, self.restore_one(key, body.as_ref(), snapshot, report).await)
                })
                .collect();
        let results: Vec<(&ObjectKey, Result<Outcome, EngineError>)> = futures::stream::iter(restores)
            .buffer_unordered(self.opts.concurrency)
            .collect()
            .await;
        for (key, result) in results {
            match result {
                Ok(Outcome::Created(uid) | Outcome::Existed(uid) | Outcome::Merged(uid)) => {
                    if let Some(old) = self.inv.uid(key) {
                        ctx.record_created(old, &uid);
                    }
                }
                Ok(Outcome::Skipped) => {}
                Err(e) => {
                    failed.push(e);
                }
            }
        }
        attempted
    }

    /// Before a level of owners: the target's controllers must have seen what they will adopt
    /// (see [`super::barrier`]), or — only when asked for with a non-zero `settle` — a fixed pause.
    async fn barrier(&self, level: &crate::plan::order::Level) -> Result<(), EngineError> {
        if !self.opts.settle.is_zero() {
            tokio::time::sleep(self.opts.settle).await;
            return Ok(());
        }
        let needs = super::barrier::Needs::of(&level.objects);
        let Some(ns) = level.objects.iter().find_map(|k| k.namespace.as_deref()) else {
            return Ok(());
        };
        super::barrier::observe(self.cluster, ns, needs, self.opts.barrier_stall).await
    }

    /// Restores `key`, whose archived body is `streamed` or, for an object of the graph, the
    /// inventory's.
    async fn restore_one(
        &self,
        key: &ObjectKey,
        streamed: Option<&Value>,
        ctx: &TransformContext,
        report: &Mutex<Report>,
    ) -> Result<Outcome, EngineError> {
        let name = key.to_string();
        if let Some(outcome) = self.journaled(&name) {
            return Ok(outcome);
        }
        let archived = match streamed {
            Some(body) => std::borrow::Cow::Borrowed(body),
            None => self.inv.body(key).ok_or_else(|| not_archived(key))?,
        };
        let archived = archived.as_ref();
        let prepared = prepare(archived, &self.target, ctx).map_err(|source| EngineError::Transform {
            key: key.clone(),
            source,
        })?;
        let outcome = match prepared {
            Prepared::Skip(reason) => {
                lock(report)
                    .skipped
                    .insert(name.clone(), reason.reason().to_owned());
                Outcome::Skipped
            }
            Prepared::Merge(merge) => {
                let api = self.cluster.api_for(key, archived)?;
                let live = self.wait_exists(&api, key).await?;
                let uid = live.metadata.uid.clone().unwrap_or_default();
                let live = json_of(&live);
                if let Some(patch) = merge.patch_for(&live) {
                    self.cluster.merge_patch(&api, key, &patch).await?;
                }
                lock(report).merged.add(name.clone());
                Outcome::Merged(uid)
            }
            Prepared::Create(creation) => {
                let mut object = creation.object;
                if self.stamps() {
                    stamp(&mut object, self.inv.archive_id());
                }
                let api = self.cluster.api_for(key, &object)?;
                lock(self.journal).begin(self.step(), &name, Value::Null)?;
                let (outcome, live) =
                    match self.cluster.create(&api, key, &object).await {
                        Ok(created) => (
                            Outcome::Created(created.metadata.uid.clone().unwrap_or_default()),
                            json_of(&created),
                        ),
                        Err(LiveError::AlreadyExists { .. }) => {
                            let live = self.cluster.get_opt(&api, key).await?.ok_or_else(|| {
                                LiveError::NotFound {
                                    cluster: self.cluster.role.clone(),
                                    key: key.clone(),
                                }
                            })?;
                            let uid = live.metadata.uid.clone().unwrap_or_default();
                            let live = json_of(&live);
                            if self.stamps() && stamped_by(&live, self.inv.archive_id()) {
                                (Outcome::Created(uid), live)
                            } else {
                                (Outcome::Existed(uid), live)
                            }
                        }
                        Err(e) => return Err(e.into()),
                    };
                // A pod admission changed would differ from the member pod it mirrors: Kosmos
                // would try to update the running pod forever. Stop before anything else.
                if matches!(outcome, Outcome::Created(_))
                    && matches!(self.target, Target::ControlPlane { .. })
                    && key.is("", "pods")
                {
                    let changes = admission_changes(archived, &object, &live);
                    if !changes.is_empty() {
                        return Err(EngineError::AdmissionChanged {
                            key: key.clone(),
                            changes,
                        });
                    }
                }
                if let (Outcome::Created(_), Some(status)) = (&outcome, &creation.status) {
                    self.cluster
                        .merge_patch_status(&api, key, &json!({ "status": status }))
                        .await?;
                }
                for finalizer in &creation.dropped_finalizers {
                    lock(report).warnings.push(format!(
                        "{name}: finalizer {finalizer} not copied: its controller runs in the member, and nothing \
                         in the control plane would remove it"
                    ));
                }
                for dropped in &creation.owner_references.dropped {
                    lock(report).warnings.push(format!(
                        "{name}: ownerReference to {} {} dropped: the owner is not in the archive",
                        dropped.kind, dropped.name
                    ));
                }
                let mut r = lock(report);
                match &outcome {
                    Outcome::Created(_) => r.created.add(name.clone()),
                    Outcome::Existed(_) => r.existed.add(name.clone()),
                    _ => {}
                }
                outcome
            }
        };
        // Only an object of the graph can be an owner, and so only its new UID is needed again
        // (a resumed run maps its dependents' references with it); the journal keeps little of
        // a record with no more than an outcome.
        let (word, uid) = match &outcome {
            Outcome::Created(uid) => ("created", Some(uid)),
            Outcome::Existed(uid) => ("existed", Some(uid)),
            Outcome::Merged(uid) => ("merged", Some(uid)),
            Outcome::Skipped => ("skipped", None),
        };
        let mut data = json!({ "outcome": word });
        if let Some(uid) = uid.filter(|_| self.inv.graph().contains(key)) {
            data["uid"] = Value::String(uid.clone());
        }
        lock(self.journal).done(self.step(), &name, data)?;
        Ok(outcome)
    }

    /// The outcome an earlier attempt journaled for this object, if it finished.
    fn journaled(&self, name: &str) -> Option<Outcome> {
        let journal = lock(self.journal);
        let record = journal
            .get(self.step(), name)
            .filter(|r| r.state == crate::journal::State::Done)?;
        let uid = record
            .data
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Some(match record.data.get("outcome").and_then(Value::as_str) {
            Some("created") => Outcome::Created(uid),
            Some("existed") => Outcome::Existed(uid),
            Some("merged") => Outcome::Merged(uid),
            _ => Outcome::Skipped,
        })
    }

    /// Points every archived dependent of `owners` at its owner's UID in the target, as the
    /// archive recorded it. The target's controllers adopt by selector too; this makes the
    /// ownership exact for kinds no controller adopts (a custom resource owning a Deployment).
    async fn adopt_dependents(
        &self,
        owners: &[ObjectKey],
        ctx: &TransformContext,
        report: &Mutex<Report>,
    ) -> Result<(), EngineError> {
        let adopting: BTreeSet<ObjectKey> = owners
            .iter()
            .filter(|owner| self.inv.uid(owner).is_some_and(|uid| ctx.new_uid(uid).is_some()))
            .cloned()
            .collect();
        if adopting.is_empty() {
            return Ok(());
        }
        // What is left to adopt, and its live state in one LIST per type and namespace for the
        // whole level (a LIST per batch would serialize a namespace of 8,000 pods eight times);
        // the patches go a batch at a time.
        // Rollback's adoption of a member pod also takes detach's marks off it (see
        // [`Adopting::unmark`]): it reads what the archived pod carried of them.
        let unmarks = matches!(self.target, Target::Member);
        let bodies = if unmarks { Bodies::Yes } else { Bodies::No };
        let mut pairs = Vec::new();
        for pair in self.inv.dependents_of(&adopting, bodies)? {
            let (dependent, owner) = pair?;
            let owner_uid = self.inv.uid(&owner).unwrap_or_default();
            let refs: Vec<OwnerReference> = dependent
                .record
                .owner_references
                .iter()
                .filter(|o| o.uid == owner_uid)
                .cloned()
                .collect();
            if !refs.is_empty()
                && !lock(self.journal).is_done(STEP_ADOPT, &adoption_name(dependent.key(), &owner))
            {
                let adoption = Adopting {
                    refs,
                    unmark: (unmarks && dependent.key().is("", "pods"))
                        .then(|| archived_marks(&dependent.object)),
                };
                pairs.push((dependent.record, owner, adoption));
            }
        }
        let mut prefetched = prefetch(
            self.cluster,
            pairs.iter().map(|(dependent, _, _)| dependent),
            |live| adoption_view(live, unmarks),
        )
        .await?;
        let mut pairs = pairs.into_iter().peekable();
        while pairs.peek().is_some() {
            let adoptions: Vec<_> = pairs
                .by_ref()
                .take(ADOPT_BATCH)
                .map(|(dependent, owner, adoption)| {
                    let live = prefetched.remove(&dependent.key);
                    async move { self.adopt(&dependent, &owner, &adoption, ctx, report, live).await }
                })
                .collect();
            super::every(STEP_ADOPT, adoptions, self.opts.concurrency).await?;
        }
        Ok(())
    }

    /// Points `dependent` at `owner`'s new UID unless it already is, and takes the marks off a
    /// member pod in the same patch; `prefetched` is its live state from [`prefetch`], read
    /// again only if a patch based on it conflicts.
    async fn adopt(
        &self,
        dependent: &ObjectRecord,
        owner: &ObjectKey,
        adoption: &Adopting,
        ctx: &TransformContext,
        report: &Mutex<Report>,
        prefetched: Option<Option<Value>>,
    ) -> Result<(), EngineError> {
        let refs = &adoption.refs[..];
        let api = self
            .cluster
            .api(&dependent.key, &dependent.api_version, &dependent.kind);
        let (api, dependent) = (&api, &dependent.key);
        let name = adoption_name(dependent, owner);
        // Only the first attempt may use the prefetched state: after a conflict it is stale.
        let prefetched = Mutex::new(prefetched);
        let (adopted, conflicts) =
            on_conflict(&self.cluster.role, dependent, "point it at its owner", |_| {
                let prefetched = prefetched
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                async move {
                    let live = match prefetched {
                        Some(view) => view,
                        None => self.cluster.get_opt(api, dependent).await?.as_ref().map(json_of),
                    };
                    // A skipped dependent (a completed pod) is not in the target: nothing to adopt.
                    let Some(live) = live else {
                        return Ok((false, Vec::new()));
                    };
                    if self.stamps() && !stamped_by(&live, self.inv.archive_id()) {
                        // It existed before promote: left as it was.
                        return Ok((false, Vec::new()));
                    }
                    let strategic = is_builtin_group(&dependent.group);
                    let pointing = adoption_patch(&live, refs, ctx, strategic).map_err(|source| {
                        EngineError::Transform {
                            key: dependent.clone(),
                            source,
                        }
                    })?;
                    let adds = pointing.patch.is_some();
                    let (patch, unmarking) = adoption.with_unmark(&live, pointing.patch);
                    let Some(patch) = patch else {
                        return Ok((false, pointing.conflicts));
                    };
                    // A controller adopting it between our read and write merges with the
                    // strategic patch; it makes a custom resource's merge patch conflict, and the
                    // helper reads again.
                    if !strategic {
                        self.cluster.merge_patch(api, dependent, &patch).await?;
                        return Ok((adds, pointing.conflicts));
                    }
                    match self.cluster.strategic_patch(api, dependent, &patch).await {
                        Ok(_) => {}
                        // Another controller adopted it meanwhile: a second controller reference
                        // is invalid. Read again to name the conflict, or fail with the refusal.
                        // Marks left on a member pod here are taken off by rollback's unmarking.
                        Err(refused @ LiveError::Refused { code: 422, .. }) => {
                            let again = self.cluster.get_opt(api, dependent).await?;
                            let again = again.map(|l| json_of(&l));
                            let Some(again) = again else {
                                return Ok((false, Vec::new()));
                            };
                            // Unreadable references fail the step naming them; still something
                            // to add: the refusal stands.
                            let again = adoption_patch(&again, refs, ctx, true).map_err(|source| {
                                EngineError::Transform {
                                    key: dependent.clone(),
                                    source,
                                }
                            })?;
                            return match again.patch {
                                None => Ok((false, again.conflicts)),
                                Some(_) => Err(refused.into()),
                            };
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if unmarking {
                        lock(report).unmarked.add(dependent.to_string());
                    }
                    Ok((adds, pointing.conflicts))
                }
            })
            .await?;
        let mut r = lock(report);
        for conflict in conflicts {
            r.warnings.push(format!(
                "{dependent}: already controlled by another owner; not adding {} {}",
                conflict.kind, conflict.name
            ));
        }
        if adopted {
            r.adopted.add(name.clone());
        }
        drop(r);
        lock(self.journal).done(STEP_ADOPT, &name, Value::Null)?;
        Ok(())
    }

    async fn wait(&self, wait: WaitPoint, objects: &[ObjectKey]) -> Result<(), EngineError> {
        match wait {
            WaitPoint::CrdsEstablished => {
                for key in objects
                    .iter()
                    .filter(|k| k.is("apiextensions.k8s.io", "customresourcedefinitions"))
                {
                    self.wait_for(key, "the CRD to be Established", |obj| {
                        obj.pointer("/status/conditions")
                            .and_then(Value::as_array)
                            .is_some_and(|cs| {
                                cs.iter()
                                    .any(|c| c["type"] == "Established" && c["status"] == "True")
                            })
                    })
                    .await?;
                }
                // The target now serves the new types: the next levels' requests name them directly.
            }
            WaitPoint::DefaultServiceAccounts => {
                for ns in objects.iter().filter(|k| k.is("", "namespaces")) {
                    let sa = ObjectKey::namespaced("", "serviceaccounts", &ns.name, "default");
                    let api = self.cluster.api(&sa, "v1", "ServiceAccount");
                    self.wait_exists(&api, &sa).await?;
                }
            }
        }
        Ok(())
    }

    async fn wait_for(
        &self,
        key: &ObjectKey,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Result<(), EngineError> {
        let api = &self.inv.api(self.cluster, key)?;
        let ready = &ready;
        let awaited = Awaited {
            cluster: &self.cluster.role,
            key,
            what,
        };
        until(awaited, self.opts.object_wait, || async move {
            Ok(match self.cluster.get_opt(api, key).await? {
                Some(obj) if ready(&json_of(&obj)) => Poll::Ready(()),
                _ => Poll::Pending(Progress::Unmeasured),
            })
        })
        .await?;
        Ok(())
    }

    async fn wait_exists(
        &self,
        api: &kube::Api<kube::api::DynamicObject>,
        key: &ObjectKey,
    ) -> Result<kube::api::DynamicObject, EngineError> {
        let awaited = Awaited {
            cluster: &self.cluster.role,
            key,
            what: "the target's controllers to create it",
        };
        Ok(until(awaited, self.opts.object_wait, || async {
            Ok(match self.cluster.get_opt(api, key).await? {
                Some(obj) => Poll::Ready(obj),
                None => Poll::Pending(Progress::Unmeasured),
            })
        })
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpromote_model::kosmos::{POD_LABEL, STAMP_ANNOTATION};

    fn marked_pod() -> Value {
        json!({"metadata": {"uid": "u1", "labels": {"app": "web", POD_LABEL: "true"},
                            "annotations": {STAMP_ANNOTATION: "a1"}}})
    }

    #[test]
    fn a_member_pods_adoption_takes_its_marks_off_in_the_same_patch() {
        let adopting = Adopting {
            refs: Vec::new(),
            unmark: Some(Value::Null),
        };
        let pointing = json!({"metadata": {"uid": "u1", "ownerReferences": [{"uid": "r1"}]}});
        let (patch, unmarks) = adopting.with_unmark(&marked_pod(), Some(pointing));
        assert!(unmarks);
        assert_eq!(
            patch,
            Some(
                json!({"metadata": {"uid": "u1", "ownerReferences": [{"uid": "r1"}],
                                     "labels": {POD_LABEL: null},
                                     "annotations": {STAMP_ANNOTATION: null}}})
            )
        );
        // Already adopted (its controller was first): the unmarking alone, under its UID.
        let (patch, unmarks) = adopting.with_unmark(&marked_pod(), None);
        assert!(unmarks);
        assert_eq!(
            patch,
            Some(json!({"metadata": {"uid": "u1", "labels": {POD_LABEL: null},
                                     "annotations": {STAMP_ANNOTATION: null}}}))
        );
        // Nothing marked: the adoption as it was; not a member pod: never unmarked.
        let plain = json!({"metadata": {"uid": "u1", "labels": {"app": "web"}}});
        assert_eq!(adopting.with_unmark(&plain, None), (None, false));
        let other = Adopting {
            refs: Vec::new(),
            unmark: None,
        };
        assert_eq!(other.with_unmark(&marked_pod(), None), (None, false));
    }
}
