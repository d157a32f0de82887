//! Rollback: the member back to its original state, and the control plane rid of exactly what
//! promote created — from the archive and live state alone.
//!
//! Order, and why:
//! 1. **Re-create** the detached owners in the member, bottom-up, and point the pods (and other
//!    dependents) at them: the member's controllers manage the same pods again. The patch that
//!    points a pod at its owner also takes detach's marks off it.
//! 2. **Unmark** every member pod still marked (a pod whose owner was not re-created, or that a
//!    controller adopted first): Kosmos deletes a member pod with its control-plane twin only
//!    while the pod carries `kosmos-io/pod=true`, so no pod may carry it at teardown — nor once
//!    rollback stops: this runs even when re-creation failed.
//! 3. **Tear down** in the control plane every object stamped with this archive: a namespace
//!    promote created goes whole (its pods with grace period 0: no kubelet answers for a virtual
//!    node), with no request per object inside it; elsewhere owners top-down with orphan
//!    propagation, pods, the rest, then CRDs promote created. Nothing unstamped is touched.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt};
use kube::api::DeleteParams;
use serde_json::{Value, json};

use super::apply::{Restorer, Scope};
use super::detach::detached_owners;
use super::drift::{Created, Promoted};
use super::inventory::{Archived, Bodies, Inventory, stamped_by};
use super::live::LiveCluster;
use super::live::json_of;
use super::wait::{Awaited, Poll, Progress, Throttled, on_conflict, until};
use super::{EngineError, EngineOptions, ProgressFn, Report, Run, SharedJournal, lock, progress};
use crate::plan::order::{RestorePlan, TeardownPlan, TeardownStep};
use crate::plan::twin::{kosmos_managed, unmark_patch};
use kpromote_model::kosmos;
use kpromote_model::object_key::ObjectKey;

/// Journal step of one member pod's unmarking.
pub(crate) const STEP_UNMARK: &str = "unmark";
/// Journal step of one re-created member owner.
pub(crate) const STEP_RECREATE: &str = "recreate";
/// The Secret Kosmos makes in a namespace when it converts a pod's service-account volume.
const KOSMOS_TOKEN_SECRET: &str = "kosmos-default-token";
/// Journal step of the check for changes made in the control plane since promote.
pub(crate) const STEP_DRIFT: &str = "drift";
/// Journal step of one control-plane deletion.
pub(crate) const STEP_TEARDOWN: &str = "teardown";

/// Rolls the promotion of `inv` back.
///
/// # Errors
/// API and journal errors; the rollback can be run again and continues where it stopped.
pub async fn rollback(run: &Run<'_>, journal: &SharedJournal) -> Result<Report, EngineError> {
    let (member, control_plane, inv) = (run.member, run.control_plane, run.inventory);
    let (cluster_name, opts, on_progress) = (run.cluster_name, run.options, run.on_progress);
    let report = Mutex::new(Report::default());
    let ours = Ours {
        inv,
        virtual_node: kosmos::virtual_node_name(cluster_name),
        cluster_name,
    };
    check_drift(control_plane, &ours, journal, opts, &report).await?;
    let recreated = recreate_owners(run, journal, &report).await;
    // Whether or not every owner came back, no member pod stays marked once rollback stops: a
    // control-plane twin deleted later (by hand, by an eviction) would take a marked member pod
    // along. A failed re-creation leaves the pods unmarked, as they were when unmarking came
    // first; both failures are reported.
    let unmarked = unmark_member_pods(member, inv, journal, opts, &report).await;
    let failures: Vec<EngineError> = [recreated.err(), unmarked.err()].into_iter().flatten().collect();
    super::all_failures(STEP_RECREATE, failures)?;
    lock(journal).sync()?;
    progress(on_progress, "unmark", 1, 1);

    teardown(control_plane, &ours, journal, opts, &report, on_progress).await?;
    lock(&report).retried_calls = member.retried() + control_plane.retried();
    lock(journal).close(super::ROLLED_BACK)?;
    Ok(Report::finish(report))
}

/// Re-creates the owners detach deleted, bottom-up, and points their dependents at them; a
/// member pod's adoption also takes detach's marks off it.
async fn recreate_owners(
    run: &Run<'_>,
    journal: &SharedJournal,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let (member, inv, opts) = (run.member, run.inventory, run.options);
    let detach_plan = inv.detach_plan();
    let mut recreate = detached_owners(member, inv, &detach_plan, opts).await?;
    // An owner whose entry is damaged cannot be re-created; everything else still can.
    for (key, why) in inv.unreadable() {
        if recreate.remove(key) {
            tracing::error!(object = %key, reason = %why, "archived owner unreadable; not re-created");
            lock(report).unreadable.push(format!(
                "{key} was not re-created: {why}; its pods run on in the member without it, re-create it from \
                 its manifest"
            ));
        }
    }
    let plan = RestorePlan::build_for(inv.graph(), recreate.iter())?;
    let uids = inv.graph().keys().filter_map(|k| Some((k, inv.uid(k)?)));
    let mut ctx = inv.facts().for_member_from(uids, &recreate);
    let restorer = Restorer::into_member(member, inv, journal, opts);
    restorer
        .run(&plan, Scope::Planned, &mut ctx, report, run.on_progress)
        .await
}

/// Before rollback changes anything: refuses (or, with `discard_changes`, records) what changed
/// in the control plane since promote (see [`super::drift`]). Journaled, so a resumed rollback,
/// whose teardown already removed part of what promote made, does not take its own work for
/// someone else's.
async fn check_drift(
    cp: &LiveCluster,
    ours: &Ours<'_>,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    if lock(journal).is_done(STEP_DRIFT, "control-plane") {
        return Ok(());
    }
    let (promoted, namespaces) = promoted_in_control_plane(cp, ours, opts).await?;
    let pods = archived_pods_in(ours.inv, &namespaces)?;
    let drift = super::drift::detect(cp, promoted, &namespaces, |key, live| {
        ours.stamped(live) || (pods.contains(&key_bits(key)) && ours.owns(key, live, &namespaces))
    })
    .await?;
    if !drift.unchecked.is_empty() {
        lock(report).warnings.push(format!(
            "not checked for objects added since promote (not allowed to list them): {}",
            drift.unchecked.join(", ")
        ));
    }
    if !drift.is_empty() {
        if !opts.discard_changes {
            return Err(EngineError::Drift {
                changes: drift.describe(),
            });
        }
        lock(report).discarded.extend(drift.describe());
    }
    lock(journal).done(
        STEP_DRIFT,
        "control-plane",
        json!({ "discarded": drift.describe() }),
    )?;
    lock(journal).sync()?;
    Ok(())
}

/// Unmarks the member's archived pods still marked once their owners are back (adoption took
/// the marks off the others in its patch), a batch at a time as they stream from the archive,
/// then every member pod of the archive's namespaces that still carries the Kosmos mark and this
/// archive's stamp: a pod left marked is deleted by Kosmos with its control-plane twin, so what
/// the archive names is not trusted to be all. A scan that cannot be read stops the step.
///
/// The member's pods are read by one paged LIST per namespace, keeping only the pods that carry
/// a mark (a few fields each), not by a GET per archived pod; each patch carries the listed UID,
/// which the member refuses for another pod of the name, so a pod replaced since is never
/// touched by a patch meant for another. When one was (gone or re-created under its name between
/// the LIST and its patch), the pods are listed again and what carries this promotion's marks is
/// unmarked under its own UID, for up to [`UNMARK_PASSES`] passes; what the last LIST still shows
/// marked stops the step, named.
async fn unmark_member_pods(
    member: &LiveCluster,
    inv: &Inventory,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let mut marked = marked_member_pods(member, inv).await?;
    let replaced = Mutex::new(Vec::new());
    let mut pods = inv.scan(|k| k.is("", "pods"), Bodies::Yes)?;
    while let Some(batch) = pods.next_batch(LOOKUP_BATCH)? {
        // The futures are made before streaming them (see `Restorer::run`).
        let unmarks: Vec<_> = batch
            .iter()
            .map(|archived| {
                // A pod of this name but another UID is not the archived pod: it stays in
                // `marked` for the last pass, which unmarks it if this promotion marked it.
                let live = match marked.get(archived.key()) {
                    Some(live) if uid_of(live) == archived.uid() => marked.remove(archived.key()),
                    _ => None,
                };
                let replaced = &replaced;
                async move {
                    let name = archived.key().to_string();
                    if lock(journal).is_done(STEP_UNMARK, &name) {
                        return Ok(());
                    }
                    if let Some(live) = live
                        && unmark(member, archived.key(), &archived.object, &live, report).await?
                            == Unmarked::NotThisPod
                    {
                        // Not journaled: a resume judges what stands under the name then.
                        lock(replaced).push(archived.key().clone());
                        return Ok(());
                    }
                    lock(journal).done(STEP_UNMARK, &name, Value::Null)?;
                    Ok(())
                }
            })
            .collect();
        super::every(STEP_UNMARK, unmarks, opts.concurrency).await?;
    }
    let mut replaced = replaced
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..UNMARK_PASSES {
        replaced.extend(unmark_unaccounted(member, inv, marked, report).await?);
        if replaced.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            pods = replaced.len(),
            "member pods gone or replaced while being unmarked; listing again"
        );
        replaced.clear();
        marked = marked_member_pods(member, inv).await?;
    }
    let mut left: Vec<ObjectKey> = marked
        .into_iter()
        .filter(|(_, live)| carries_our_mark(live, inv))
        .map(|(key, _)| key)
        .collect();
    left.sort();
    if left.is_empty() {
        return Ok(());
    }
    Err(EngineError::MarkedPodsKeepComing {
        pods: left,
        passes: UNMARK_PASSES,
    })
}

/// How many times [`unmark_member_pods`] lists the pods again after meeting one gone or replaced.
const UNMARK_PASSES: usize = 3;

/// Whether listed member pod `live` carries the Kosmos mark and this archive's stamp: what
/// rollback must take off, whichever pod it is.
fn carries_our_mark(live: &Value, inv: &Inventory) -> bool {
    kosmos_managed(live) && stamped_by(live, inv.archive_id())
}

/// Unmarks the pods of `marked` (listed, see [`marked_member_pods`]) that carry the Kosmos mark
/// and this archive's stamp: what no archived pod accounted for — its entry unread, or a pod
/// re-created under an archived pod's name. The ones gone or replaced in turn since listed.
async fn unmark_unaccounted(
    member: &LiveCluster,
    inv: &Inventory,
    marked: std::collections::HashMap<ObjectKey, Value>,
    report: &Mutex<Report>,
) -> Result<Vec<ObjectKey>, EngineError> {
    let mut replaced = Vec::new();
    for (key, live) in marked {
        if !carries_our_mark(&live, inv) {
            continue;
        }
        match unmark(member, &key, &json!({}), &live, report).await? {
            Unmarked::Yes => {
                tracing::warn!(pod = %key, "member pod still marked after the archive's pods were unmarked; unmarked");
                lock(report).warnings.push(format!(
                    "{key} still carried the Kosmos mark and this archive's stamp after the archive's pods were \
                     unmarked (not the archived pod: its entry was not read, or it replaced the archived pod of \
                     its name); unmarked from its live state"
                ));
            }
            Unmarked::NotThisPod => replaced.push(key),
            Unmarked::Nothing => {}
        }
    }
    Ok(replaced)
}

/// The member pods of the archive's namespaces that carry any mark promote sets (the Kosmos
/// labels or a stamp), each as its UID and those fields only: one paged LIST per namespace.
async fn marked_member_pods(
    member: &LiveCluster,
    inv: &Inventory,
) -> Result<std::collections::HashMap<ObjectKey, Value>, EngineError> {
    let mut namespaces = BTreeSet::new();
    let mut scan = inv.scan(|k| k.is("", "pods"), Bodies::No)?;
    while let Some(batch) = scan.next_batch(LOOKUP_BATCH)? {
        namespaces.extend(batch.into_iter().filter_map(|a| a.record.key.namespace));
    }
    let mut marked = std::collections::HashMap::new();
    for ns in namespaces {
        let probe = ObjectKey::namespaced("", "pods", &ns, "");
        let api = member.api(&probe, "v1", "Pod");
        let listed = member.list_kept(&api, &probe, None, mark_view).await?;
        marked.extend(
            listed
                .into_iter()
                .map(|(name, view)| (ObjectKey::namespaced("", "pods", &ns, &name), view)),
        );
    }
    Ok(marked)
}

/// A listed pod's UID and the marks [`unmark_patch`] reads, if it carries any.
fn mark_view(pod: kube::api::DynamicObject) -> Option<Value> {
    let meta = pod.metadata;
    let pick = |map: Option<std::collections::BTreeMap<String, String>>, keys: &[&str]| {
        let map = map.unwrap_or_default();
        keys.iter()
            .filter_map(|k| Some(((*k).to_owned(), Value::String(map.get(*k)?.clone()))))
            .collect::<serde_json::Map<String, Value>>()
    };
    let labels = pick(meta.labels, &[kosmos::POD_LABEL, kosmos::SYNCED_LABEL]);
    let annotations = pick(meta.annotations, &[kosmos::STAMP_ANNOTATION]);
    (!labels.is_empty() || !annotations.is_empty())
        .then(|| json!({ "metadata": { "uid": meta.uid, "labels": labels, "annotations": annotations } }))
}

fn uid_of(live: &Value) -> Option<&str> {
    live.pointer("/metadata/uid").and_then(Value::as_str)
}

/// What [`unmark`] found of a member pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unmarked {
    /// Its marks were taken off.
    Yes,
    /// It carried nothing to take off.
    Nothing,
    /// Gone, or replaced by a pod of the same name with another UID, since it was listed (a 409
    /// counts as that too: the next LIST tells).
    NotThisPod,
}

/// Takes the marks off member pod `key` back to `archived`'s, with its listed UID as the patch's
/// precondition.
async fn unmark(
    member: &LiveCluster,
    key: &ObjectKey,
    archived: &Value,
    live: &Value,
    report: &Mutex<Report>,
) -> Result<Unmarked, EngineError> {
    let Some(mut patch) = unmark_patch(archived, live) else {
        return Ok(Unmarked::Nothing);
    };
    patch["metadata"]["uid"] = json!(uid_of(live));
    let api = member.api(key, "v1", "Pod");
    match member.merge_patch(&api, key, &patch).await {
        Ok(_) => {
            lock(report).unmarked.add(key.to_string());
            Ok(Unmarked::Yes)
        }
        // Gone, or replaced by a pod of the same name (the UID precondition): not this pod.
        Err(super::LiveError::NotFound { .. } | super::LiveError::Conflict { .. }) => {
            Ok(Unmarked::NotThisPod)
        }
        // A UID in the body that is not the pod's is refused as a change of an immutable field
        // (422), not as a conflict: whether that was the cause, a read tells.
        Err(e @ super::LiveError::Refused { code: 422, .. }) => match member.get_opt(&api, key).await? {
            Some(now) if now.metadata.uid.as_deref() == uid_of(live) => Err(e.into()),
            _ => Ok(Unmarked::NotThisPod),
        },
        Err(e) => Err(e.into()),
    }
}

/// What this promotion created in the control plane: the objects carrying the archive's stamp,
/// and the pods of a namespace it created that are bound to the member's virtual node.
///
/// Pods need the second rule: Kosmos copies the member pod's labels and annotations over the
/// control-plane pod's whenever it copies status, so a stamp only survives there while the member
/// pod carries it too (detach stamps both). A namespace promote created held nothing before, and
/// a pod of an archived name bound to the virtual node there is the copy promote made.
#[derive(Debug)]
struct Ours<'a> {
    inv: &'a Inventory,
    cluster_name: &'a str,
    virtual_node: String,
}

impl Ours<'_> {
    fn stamped(&self, live: &Value) -> bool {
        stamped_by(live, self.inv.archive_id())
    }

    /// Whether `live`, the control plane's object of `key`, is this promotion's copy;
    /// `namespaces` are the namespaces it created.
    fn owns(&self, key: &ObjectKey, live: &Value, namespaces: &BTreeSet<String>) -> bool {
        self.stamped(live)
            || (key.is("", "pods")
                && key.namespace.as_ref().is_some_and(|ns| namespaces.contains(ns))
                && live.pointer("/spec/nodeName").and_then(Value::as_str) == Some(self.virtual_node.as_str()))
    }
}

/// The control plane's object of `archived`, if it serves the type and holds one.
async fn look_up(cp: &LiveCluster, archived: &Archived) -> Result<Option<Value>, EngineError> {
    match cp.get_opt(&archived.api(cp), archived.key()).await {
        Ok(live) => Ok(live.as_ref().map(json_of)),
        // A type the control plane does not serve (its CRD is gone): nothing of it there.
        Err(super::LiveError::Refused { code: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The archived namespaces promote created in the control plane (they carry the stamp).
async fn promoted_namespaces(cp: &LiveCluster, ours: &Ours<'_>) -> Result<BTreeSet<String>, EngineError> {
    let mut namespaces = BTreeSet::new();
    let mut scan = ours.inv.scan(|k| k.is("", "namespaces"), Bodies::No)?;
    while let Some(batch) = scan.next_batch(LOOKUP_BATCH)? {
        for archived in batch {
            if look_up(cp, &archived)
                .await?
                .is_some_and(|live| ours.stamped(&live))
            {
                namespaces.insert(archived.record.key.name);
            }
        }
    }
    Ok(namespaces)
}

/// What this promotion created in the control plane (see [`Ours`]), as the little drift needs
/// of it, and the namespaces among it: every archived object looked up, a batch at a time as
/// they stream from the archive.
async fn promoted_in_control_plane(
    cp: &LiveCluster,
    ours: &Ours<'_>,
    opts: &EngineOptions,
) -> Result<(Promoted, BTreeSet<String>), EngineError> {
    // Namespaces first: a pod of a namespace promote created is ours by a rule of its own.
    let namespaces = promoted_namespaces(cp, ours).await?;
    let mut promoted = Promoted::default();
    // What lies in a namespace promote created is read by drift's LIST of that namespace.
    let created = namespaces.clone();
    let elsewhere = move |k: &ObjectKey| k.namespace.as_ref().is_none_or(|ns| !created.contains(ns));
    let mut scan = ours.inv.scan(elsewhere, Bodies::No)?;
    while let Some(batch) = scan.next_batch(LOOKUP_BATCH)? {
        // The futures are made before streaming them (see `Restorer::run`).
        let lookups: Vec<_> = batch
            .iter()
            .map(|archived| {
                let namespaces = &namespaces;
                async move {
                    let live = look_up(cp, archived).await?;
                    // Only what drift reads is kept of each, not the live object.
                    Ok::<_, EngineError>(
                        live.filter(|live| ours.owns(archived.key(), live, namespaces))
                            .map(|live| (archived.key(), Created::of(&live))),
                    )
                }
            })
            .collect();
        let found: Vec<Option<(&ObjectKey, Created)>> = futures::stream::iter(lookups)
            .buffer_unordered(opts.concurrency)
            .try_collect()
            .await?;
        for (key, created) in found.into_iter().flatten() {
            promoted.add(key, created);
        }
    }
    Ok((promoted, namespaces))
}

/// The archived pods of `namespaces`, as 64-bit hashes of their keys ([`key_bits`]): a pod of a
/// namespace promote created is promote's by its name (see [`Ours`]), and the names of
/// thousands of pods are not held as strings.
fn archived_pods_in(inv: &Inventory, namespaces: &BTreeSet<String>) -> Result<HashSet<u64>, EngineError> {
    let mut pods = HashSet::new();
    let mut scan = inv.scan(
        |k| k.is("", "pods") && k.namespace.as_ref().is_some_and(|ns| namespaces.contains(ns)),
        Bodies::No,
    )?;
    while let Some(batch) = scan.next_batch(LOOKUP_BATCH)? {
        pods.extend(batch.iter().map(|a| key_bits(a.key())));
    }
    Ok(pods)
}

fn key_bits(key: &ObjectKey) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// How many archived objects stream past at once (each batch is looked up concurrently).
const LOOKUP_BATCH: usize = 1024;

/// Removes from the control plane what promote created there, step by step of
/// [`TeardownStep::ALL`]: in each, the objects of the graph in plan order, then the others as
/// they stream from the archive. Every archived object is looked up; only this promotion's are
/// removed.
async fn teardown(
    cp: &LiveCluster,
    ours: &Ours<'_>,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
    on_progress: Option<&ProgressFn>,
) -> Result<(), EngineError> {
    let inv = ours.inv;
    let namespaces = promoted_namespaces(cp, ours).await?;
    for ns in &namespaces {
        release_kosmos_copies(cp, ours, ns, report).await?;
    }
    let plan = TeardownPlan::build(inv.graph(), &inv.graph().keys().cloned().collect())?;
    let total = inv.len() as u64;
    let mut done = 0;
    let remove_all = |mut batch: Vec<Archived>, step: TeardownStep| {
        let namespaces = &namespaces;
        async move {
            let n = batch.len() as u64;
            batch.retain(|archived| !goes_with_namespace(archived, namespaces));
            futures::stream::iter(batch.iter().map(Ok::<_, EngineError>))
                .try_for_each_concurrent(opts.concurrency, |archived| async move {
                    remove(cp, ours, namespaces, archived, step, journal, opts, report).await
                })
                .await?;
            lock(journal).sync()?;
            Ok::<_, EngineError>(n)
        }
    };
    for step in TeardownStep::ALL {
        for level in plan.levels.iter().filter(|l| l.step == step) {
            let batch = level.objects.iter().filter_map(|k| inv.archived(k)).collect();
            done += remove_all(batch, step).await?;
            progress(on_progress, "teardown", done, total);
        }
        let mut rest = inv.rest(move |k| TeardownStep::of(k, 0) == step, Bodies::Yes)?;
        while let Some(batch) = rest.next_batch(LOOKUP_BATCH)? {
            done += remove_all(batch, step).await?;
            progress(on_progress, "teardown", done, total);
        }
    }
    Ok(())
}

/// Whether `archived` goes with its namespace, one promote created (`namespaces`): deleting the
/// namespace removes everything in it, with no request per object — and a namespace promote
/// created held nothing before, and drift has shown nothing was added since (or was told to
/// discard it). An object carrying finalizers is still removed on its own, so that the ones
/// kpromote copied are taken off first.
pub(crate) fn goes_with_namespace(archived: &Archived, namespaces: &BTreeSet<String>) -> bool {
    archived
        .key()
        .namespace
        .as_ref()
        .is_some_and(|ns| namespaces.contains(ns))
        && archived
            .object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
}

/// Takes member cluster `cluster` off the `kosmos-io/cluster-owners` annotation of every
/// ConfigMap and Secret in control-plane namespace `ns`. Kosmos deletes the member's object of
/// the same name when an annotated one is deleted in the control plane — whether or not Kosmos
/// made the member's — and tearing down the namespace deletes them all.
async fn release_kosmos_copies(
    cp: &LiveCluster,
    ours: &Ours<'_>,
    ns: &str,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let cluster = ours.cluster_name;
    // ConfigMaps are listed, keeping only the marked ones, a page at a time; Secrets are only
    // ever read by name (the controller may not list them): the archived ones, a batch at a
    // time as they stream from the archive, and the token copy Kosmos makes.
    let probe = ObjectKey::namespaced("", "configmaps", ns, "");
    let configmaps = cp.api(&probe, "v1", "ConfigMap");
    let marked = cp
        .list_kept(&configmaps, &probe, None, |object| {
            KosmosMark::of(&object, cluster)
        })
        .await?;
    for (name, mark) in marked {
        let key = ObjectKey::namespaced("", "configmaps", ns, &name);
        mark.release(cp, &key, cluster, report).await?;
    }
    let token = ObjectKey::namespaced("", "secrets", ns, KOSMOS_TOKEN_SECRET);
    let mut secrets = ours.inv.scan(
        |k| k.is("", "secrets") && k.namespace.as_deref() == Some(ns) && k.name != KOSMOS_TOKEN_SECRET,
        Bodies::No,
    )?;
    let mut batch = Some(vec![token]);
    while let Some(keys) = batch {
        futures::stream::iter(keys.iter().map(Ok::<_, EngineError>))
            .try_for_each_concurrent(LOOKUP_CONCURRENCY, |key| async move {
                let api = cp.api(key, "v1", "Secret");
                if let Some(mark) = cp
                    .get_opt(&api, key)
                    .await?
                    .and_then(|object| KosmosMark::of(&object, cluster))
                {
                    mark.release(cp, key, cluster, report).await?;
                }
                Ok(())
            })
            .await?;
        batch = secrets
            .next_batch(LOOKUP_BATCH)?
            .map(|b| b.into_iter().map(|a| a.record.key).collect());
    }
    Ok(())
}

/// How many Secrets [`release_kosmos_copies`] reads at once.
const LOOKUP_CONCURRENCY: usize = 16;

/// A control-plane ConfigMap or Secret Kosmos marked as copied to a member cluster: what
/// releasing it needs of the live object.
struct KosmosMark {
    /// The [`kosmos::CLUSTER_OWNERS_ANNOTATION`] without the member.
    remaining: String,
    resource_version: Option<String>,
}

impl KosmosMark {
    /// The mark of `object` naming member `cluster`, if it carries one.
    fn of(object: &kube::api::DynamicObject, cluster: &str) -> Option<Self> {
        let owners = object
            .metadata
            .annotations
            .as_ref()?
            .get(kosmos::CLUSTER_OWNERS_ANNOTATION)?;
        Some(Self {
            remaining: kosmos::without_cluster_owner(owners, cluster)?,
            resource_version: object.metadata.resource_version.clone(),
        })
    }

    /// Takes member `cluster` off `key`'s mark.
    async fn release(
        self,
        cp: &LiveCluster,
        key: &ObjectKey,
        cluster: &str,
        report: &Mutex<Report>,
    ) -> Result<(), EngineError> {
        let kind = if key.resource == "secrets" {
            "Secret"
        } else {
            "ConfigMap"
        };
        let api = cp.api(key, "v1", kind);
        let value = if self.remaining.is_empty() {
            Value::Null
        } else {
            Value::String(self.remaining)
        };
        let patch = json!({ "metadata": {
            "annotations": { kosmos::CLUSTER_OWNERS_ANNOTATION: value },
            "resourceVersion": self.resource_version,
        } });
        cp.merge_patch(&api, key, &patch).await?;
        lock(report).warnings.push(format!(
            "{key}: Kosmos had marked it as copied to member {cluster}; the mark was removed so that \
             deleting it in the control plane does not delete the member's"
        ));
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn remove(
    cp: &LiveCluster,
    ours: &Ours<'_>,
    namespaces: &BTreeSet<String>,
    archived: &Archived,
    step: TeardownStep,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let key = archived.key();
    let name = key.to_string();
    if lock(journal).is_done(STEP_TEARDOWN, &name) {
        return Ok(());
    }
    let api = archived.api(cp);
    // Absent, or not this promotion's: nothing to do, and nothing journaled (a run again looks
    // again) — most archived objects of a large rollback are one or the other.
    let Some(live) = cp.get_opt(&api, key).await? else {
        return Ok(());
    };
    let uid = live.metadata.uid.clone();
    let live_json = json_of(&live);
    if !ours.owns(key, &live_json, namespaces) {
        return Ok(());
    }
    let archived = &archived.object;
    lock(journal).begin(STEP_TEARDOWN, &name, json!({ "uid": uid }))?;
    remove_copied_finalizers(cp, &api, key, archived, live_json.clone()).await?;
    match step {
        TeardownStep::Owners => {
            cp.delete(&api, key, uid.as_deref(), DeleteParams::orphan())
                .await?;
            cp.wait_gone(
                &api,
                key,
                uid.as_deref(),
                opts.gc_stall,
                "the garbage collector to orphan its dependents",
                &super::detach::dependent_apis(cp, ours.inv, key),
            )
            .await?;
        }
        TeardownStep::Pods => {
            if let Some(patch) = unmark_patch(archived, &live_json) {
                cp.merge_patch(&api, key, &patch).await?;
            }
            // No kubelet confirms a graceful deletion of a pod bound to a virtual node.
            cp.delete(
                &api,
                key,
                uid.as_deref(),
                DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await?;
        }
        TeardownStep::Namespaces => {
            cp.delete(&api, key, uid.as_deref(), DeleteParams::background())
                .await?;
            // Terminating, the namespace admits no new pod; the namespace controller deletes the
            // rest of its content. Its pods are bound to the virtual node, where no kubelet
            // confirms a graceful deletion (and clustertree leaves the control-plane pod alone
            // once its member pod is unmarked): they go with grace period 0, a DELETE each at
            // this run's concurrency. One deletecollection would do it in one request, but the
            // API server works through it one object at a time (`--delete-collection-workers`
            // is 1 by default): 7 s for 1,000 pods, while the namespace controller, syncing 5 s
            // after the deletion, finds pods left and waits a further 16 s before it looks again.
            let started = std::time::Instant::now();
            delete_pods_now(cp, &key.name, opts).await?;
            let pods_deleted = started.elapsed();
            let types = namespace_types(ours.inv, &key.name)?;
            let apis: Vec<_> = types.values().map(|probe| probe.api(cp)).collect();
            let emptied = Throttled::default();
            let awaited = Awaited {
                cluster: &cp.role,
                key,
                what: "the namespace to be deleted",
            };
            let gone = until(awaited, opts.namespace_stall, || async {
                match cp.get_opt(&api, key).await? {
                    None => return Ok(Poll::Ready(())),
                    Some(ns) if ns.metadata.uid != uid => return Ok(Poll::Ready(())),
                    Some(_) => {}
                }
                let left = emptied.get(|| objects_in(cp, &apis, key)).await?;
                Ok(Poll::Pending(Progress::Left(left)))
            })
            .await;
            tracing::debug!(
                namespace = %key.name,
                pods_ms = pods_deleted.as_millis() as u64,
                namespace_ms = (started.elapsed() - pods_deleted).as_millis() as u64,
                "promoted namespace torn down"
            );
            match gone {
                Ok(()) => {}
                Err(super::LiveError::Stalled { waited, .. }) => {
                    let why = match cp.get_opt(&api, key).await? {
                        Some(ns) => {
                            let mut why = namespace_blockers(&json_of(&ns));
                            let held = held_by_finalizers(cp, &types, &key.name).await?;
                            if !held.is_empty() {
                                why.push_str(&format!("; held by finalizers: {}", held.join(", ")));
                            }
                            why
                        }
                        None => "it is gone now".to_owned(),
                    };
                    return Err(EngineError::Stuck {
                        key: key.clone(),
                        why: format!(
                            "still terminating after {waited}s, nothing removed from it for the last {}s: {why}",
                            opts.namespace_stall.as_secs()
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        _ => {
            if key.is("", "persistentvolumes") {
                // Deleting a control-plane volume must never reach the storage behind it.
                let retain = json!({ "spec": { "persistentVolumeReclaimPolicy": "Retain" } });
                cp.merge_patch(&api, key, &retain).await?;
            }
            cp.delete(&api, key, uid.as_deref(), DeleteParams::background())
                .await?;
        }
    }
    lock(journal).done(STEP_TEARDOWN, &name, Value::Null)?;
    lock(report).deleted.add(name);
    Ok(())
}

/// Deletes every pod of control-plane namespace `ns` with grace period 0 (UID precondition), as
/// one paged LIST of their names and a DELETE each, at `opts.concurrency`; every failure is
/// reported.
async fn delete_pods_now(cp: &LiveCluster, ns: &str, opts: &EngineOptions) -> Result<(), EngineError> {
    let probe = ObjectKey::namespaced("", "pods", ns, "");
    let api = &cp.api(&probe, "v1", "Pod");
    let pods = cp.list_kept(api, &probe, None, |pod| pod.metadata.uid).await?;
    let deletes = pods
        .into_iter()
        .map(|(name, uid)| async move {
            let pod = ObjectKey::namespaced("", "pods", ns, &name);
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            Ok(cp.delete(api, &pod, Some(&uid), now).await?)
        })
        .collect();
    super::every(STEP_TEARDOWN, deletes, opts.concurrency).await
}

/// Takes off the control-plane copy `key` the finalizers kpromote copied from `archived`. The
/// patch carries the resourceVersion it was computed from (the list is replaced whole); when the
/// object changed in between (the volume binder updating a PersistentVolume), it is read again.
async fn remove_copied_finalizers(
    cp: &LiveCluster,
    api: &kube::Api<kube::api::DynamicObject>,
    key: &ObjectKey,
    archived: &Value,
    live: Value,
) -> Result<(), EngineError> {
    let live = &live;
    on_conflict(
        &cp.role,
        key,
        "take off the finalizers kpromote copied",
        |attempt| async move {
            let live = if attempt == 0 {
                live.clone()
            } else {
                match cp.get_opt(api, key).await? {
                    Some(fresh) => json_of(&fresh),
                    None => return Ok(()),
                }
            };
            let Some(patch) = copied_finalizers_patch(archived, &live) else {
                return Ok(());
            };
            match cp.merge_patch(api, key, &patch).await {
                Ok(_) | Err(super::LiveError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await
}

/// The merge patch that takes off a control-plane copy the finalizers kpromote copied from the
/// archive, before kpromote deletes its own copy: the controllers they stand for run in the
/// member (or, in the control plane, have nothing left to protect once the copy goes). A
/// finalizer someone added in the control plane since is kept, and named if it blocks the
/// namespace. `None` when there is none to take off.
fn copied_finalizers_patch(archived: &Value, live: &Value) -> Option<Value> {
    let names = |v: &Value| -> Vec<String> {
        v.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (copied, present) = (names(archived), names(live));
    let kept: Vec<&String> = present.iter().filter(|f| !copied.contains(f)).collect();
    (kept.len() != present.len()).then(|| {
        json!({ "metadata": {
            "finalizers": kept,
            "resourceVersion": live.pointer("/metadata/resourceVersion"),
        } })
    })
}

/// How many objects of `apis` there are, counting only the types this process may list.
async fn objects_in(
    cp: &LiveCluster,
    apis: &[kube::Api<kube::api::DynamicObject>],
    key: &ObjectKey,
) -> Result<u64, super::LiveError> {
    let mut n = 0;
    for api in apis {
        match cp.count(std::slice::from_ref(api), key, |_| true).await {
            Ok(count) => n += count,
            // A type this process may not list (Secrets): the others show the progress.
            Err(super::LiveError::Refused { code: 403, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One archived object of each type the archive holds in namespace `ns`, by (group, resource):
/// what names the type's API there.
fn namespace_types(inv: &Inventory, ns: &str) -> Result<BTreeMap<(String, String), Archived>, EngineError> {
    let mut probes: BTreeMap<(String, String), Archived> = BTreeMap::new();
    let mut scan = inv.scan(|k| k.namespace.as_deref() == Some(ns), Bodies::No)?;
    while let Some(batch) = scan.next_batch(LOOKUP_BATCH)? {
        for archived in batch {
            let kind = (archived.key().group.clone(), archived.key().resource.clone());
            probes.entry(kind).or_insert(archived);
        }
    }
    Ok(probes)
}

/// The objects of control-plane namespace `ns` that a finalizer keeps, as `key (finalizers)`,
/// among the archive's kinds in that namespace (`types`, see [`namespace_types`]): the ones a
/// rollback can name.
async fn held_by_finalizers(
    cp: &LiveCluster,
    types: &BTreeMap<(String, String), Archived>,
    ns: &str,
) -> Result<Vec<String>, EngineError> {
    let mut held = Vec::new();
    for probe in types.values() {
        let api = probe.api(cp);
        let probe = probe.key();
        // Only the objects a finalizer holds are kept, a page at a time.
        let listed = cp
            .list_kept(&api, probe, None, |object| {
                let finalizers = object.metadata.finalizers.unwrap_or_default();
                (object.metadata.deletion_timestamp.is_some() && !finalizers.is_empty()).then_some(finalizers)
            })
            .await;
        let listed = match listed {
            Ok(listed) => listed,
            // A type this process may not list (Secrets): named by the namespace's conditions.
            Err(super::LiveError::Refused { code: 403, .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        for (name, finalizers) in listed {
            let key = ObjectKey::namespaced(&probe.group, &probe.resource, ns, &name);
            held.push(format!("{key} ({})", finalizers.join(", ")));
        }
    }
    Ok(held)
}

/// What a terminating namespace waits for, from its own conditions (the namespace controller
/// names the remaining content and finalizers there).
fn namespace_blockers(namespace: &Value) -> String {
    let reasons: Vec<String> = namespace
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "True")
        .filter_map(|c| {
            let kind = c["type"].as_str()?;
            let message = c["message"].as_str().unwrap_or_default();
            Some(format!("{kind}: {message}"))
        })
        .collect();
    if reasons.is_empty() {
        "the namespace reports no condition yet".to_owned()
    } else {
        reasons.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copied_finalizers_are_taken_off() {
        let archived =
            json!({ "metadata": { "finalizers": ["example.com/keep", "kubernetes.io/pvc-protection"] } });
        let live = json!({ "metadata": { "resourceVersion": "9",
            "finalizers": ["kubernetes.io/pvc-protection", "example.com/added-later"] } });
        assert_eq!(
            copied_finalizers_patch(&archived, &live),
            Some(
                json!({ "metadata": { "finalizers": ["example.com/added-later"], "resourceVersion": "9" } })
            )
        );
        assert_eq!(copied_finalizers_patch(&json!({}), &live), None);
    }

    #[test]
    fn stuck_namespace_names_what_remains() {
        let ns = json!({ "status": { "phase": "Terminating", "conditions": [
            { "type": "NamespaceDeletionDiscoveryFailure", "status": "False", "message": "All resources successfully discovered" },
            { "type": "NamespaceFinalizersRemaining", "status": "True",
              "message": "Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances" },
        ] } });
        assert_eq!(
            namespace_blockers(&ns),
            "NamespaceFinalizersRemaining: Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances"
        );
    }
}
