//! Detach: delete the workload owners in the member top-down, and take their dependents off
//! them — the pods in the same patch that marks them Kosmos-managed — then wait for the owners to
//! go. The pods keep running: nothing but their ownerReferences and marks changes.
//!
//! # Why detach orphans the dependents itself, and holds each owner while it does
//! With orphan propagation the garbage collector removes the owner's reference from each
//! dependent, one request per dependent at the controller manager's client rate (20 requests/s
//! by default: 8,300 pods take seven minutes). Detach sends the same change itself, at its own
//! concurrency, folded into the mark it sends each pod anyway — and only once the owner carries
//! its deletionTimestamp: from then on its controller neither adopts nor creates (the ReplicaSet,
//! StatefulSet and DaemonSet controllers manage replicas only of owners not being deleted, and
//! re-check the owner with a live read before adopting an orphan), exactly as when the garbage
//! collector does it.
//!
//! Deleted with orphan propagation at once, the owner would set the collector to orphan every
//! dependent it knows at that moment, racing detach and patching each a second time. So an owner
//! is deleted in three moves:
//! 1. **held**: [`HOLD_FINALIZER`] is put on it, then it is deleted with background propagation
//!    — it is being deleted (its controller stops), yet the collector does nothing while it
//!    exists;
//! 2. its dependents are taken off it by detach;
//! 3. **released** ([`release`]): deleted again, with orphan propagation, which puts the
//!    collector's `orphan` finalizer on it — a dependent the archive does not know (a pod made
//!    after the backup) is still orphaned by the collector — and only then is the hold taken off.
//!    The collector lets the owner go once it finds nothing left to orphan.
//!
//! The hold is never taken off an owner being deleted before the `orphan` finalizer is on it: an
//! owner gone under background propagation would take every dependent still referencing it along.
//! A crashed detach leaves owners held; the next attempt, or rollback, releases them.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use kube::api::DeleteParams;
use serde_json::{Value, json};

use super::inventory::{Archived, Inventory, stamp};
use super::live::json_of;
use super::live::{LiveCluster, LiveError};
use super::wait::{Awaited, Poll, Progress, on_conflict, until};
use super::{EngineError, EngineOptions, ProgressFn, Report, SharedJournal, lock, progress};
use crate::plan::order::{DetachPlan, is_builtin_group};
use crate::plan::transform::{Prepared, Target, TransformContext, prepare};
use crate::plan::twin::{clustertree_differences, member_mark_patch};
use kpromote_model::object_key::ObjectKey;

/// Journal step of one owner's deletion.
pub(crate) const STEP_DETACH: &str = "detach";
/// Journal step of one pod's Kosmos mark.
pub(crate) const STEP_MARK: &str = "mark";

/// Deletes every owner of `plan`, level by level (highest first), each with
/// `propagationPolicy: Orphan` and its archived UID as precondition; right after each level,
/// takes the level's archived dependents off it (marking the pods the restore re-creates, see
/// [`mark_pods`]); then waits until the garbage collector has let every owner go.
///
/// # Errors
/// [`EngineError::ChangedSinceBackup`] when an owner's spec changed or it was replaced since the
/// backup (nothing further is deleted), or a pod differs from its archived copy; API and journal
/// errors.
pub async fn detach(
    member: &LiveCluster,
    twins: &TwinFactory<'_>,
    plan: &DetachPlan,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
    on_progress: Option<&ProgressFn>,
) -> Result<(), EngineError> {
    let inv = twins.inv;
    let total = plan.objects().count() as u64;
    progress(on_progress, "detach", 0, total);
    refuse_owners_with_finalizers(member, inv, plan, journal).await?;
    let detached: BTreeSet<&ObjectKey> = plan.objects().collect();
    let mut deleted: BTreeSet<&ObjectKey> = BTreeSet::new();
    let mut deleted_uids: HashSet<String> = HashSet::new();
    for (index, level) in plan.levels.iter().enumerate() {
        let started = std::time::Instant::now();
        let keys: Vec<&ObjectKey> = level.objects.iter().collect();
        let mut states = owner_states(member, inv, &keys).await?;
        let deletes = keys
            .into_iter()
            .map(|key| {
                let live = states.remove(key).flatten();
                delete_owner(member, inv, key, live, journal)
            })
            .collect();
        super::every(STEP_DETACH, deletes, opts.concurrency).await?;
        lock(journal).sync()?;
        let deleted_at = started.elapsed();
        deleted.extend(level.objects.iter());
        deleted_uids.extend(level.objects.iter().filter_map(|k| inv.uid(k)).map(str::to_owned));
        // The dependents every detached owner of which is now being deleted.
        let dependents: BTreeSet<&ObjectKey> = level
            .objects
            .iter()
            .flat_map(|owner| inv.graph().dependents(owner))
            .filter(|d| {
                inv.graph()
                    .owners(d)
                    .filter(|o| detached.contains(o))
                    .all(|o| deleted.contains(o))
            })
            .collect();
        orphan_dependents(member, twins, &dependents, &deleted_uids, journal, opts, report).await?;
        let orphaned_at = started.elapsed();
        // The pods outside the inventory's graph stream from the archive.
        let level_owners: BTreeSet<&ObjectKey> = level.objects.iter().collect();
        let orphaned = |pod: &Archived| {
            let owners: Vec<&ObjectKey> = inv.graph().owners_of(&pod.record).collect();
            owners.iter().any(|o| level_owners.contains(*o))
                && owners
                    .iter()
                    .filter(|o| detached.contains(**o))
                    .all(|o| deleted.contains(*o))
        };
        let mut pods = inv.outside_of_kind("", "pods")?;
        while let Some(batch) = pods.next_batch(MARK_BATCH)? {
            let batch: Vec<Archived> = batch.into_iter().filter(|p| orphaned(p)).collect();
            mark_batch(member, twins, &batch, &deleted_uids, journal, opts, report).await?;
        }
        let marked_at = started.elapsed();
        // Their dependents off them, the level's owners are let go.
        release_held(member, inv, &level.objects, opts).await?;
        tracing::debug!(
            level = index,
            owners = level.objects.len(),
            dependents = dependents.len(),
            delete_ms = deleted_at.as_millis() as u64,
            orphan_ms = (orphaned_at - deleted_at).as_millis() as u64,
            mark_ms = (marked_at - orphaned_at).as_millis() as u64,
            release_ms = (started.elapsed() - marked_at).as_millis() as u64,
            "level detached"
        );
    }
    // The garbage collector removes each owner's `orphan` finalizer once it finds no dependent
    // left to orphan.
    let started = std::time::Instant::now();
    await_owners_gone(member, inv, plan, journal, opts, report, on_progress).await?;
    tracing::debug!(
        gc_ms = started.elapsed().as_millis() as u64,
        "detached owners gone"
    );
    lock(journal).sync()?;
    Ok(())
}

/// The finalizer that holds an owner detach deleted until its dependents are off it (see the
/// module docs).
pub(crate) const HOLD_FINALIZER: &str = "kpromote.io/detach";

/// Finalizers the garbage collector itself handles, and detach's hold; any other finalizer on an
/// owner belongs to a controller (an operator) that runs its own cleanup when the owner is
/// deleted.
const GC_FINALIZERS: &[&str] = &["orphan", "foregroundDeletion", HOLD_FINALIZER];

/// Before anything is deleted: an owner carrying a finalizer of its own controller cannot be
/// detached. Deleting it — even with orphan propagation — makes that controller run its cleanup
/// (an operator dropping the database its custom resource stands for), and the owner would stay
/// Terminating until it finishes. Every such owner is named at once; owners already detached by
/// an earlier attempt are not checked again.
async fn refuse_owners_with_finalizers(
    member: &LiveCluster,
    inv: &Inventory,
    plan: &DetachPlan,
    journal: &SharedJournal,
) -> Result<(), EngineError> {
    let pending: Vec<&ObjectKey> = plan
        .objects()
        .filter(|k| !lock(journal).is_done(STEP_DETACH, &k.to_string()))
        .collect();
    let states = owner_states(member, inv, &pending).await?;
    let mut held = Vec::new();
    for key in pending {
        let Some(Some(live)) = states.get(key) else {
            continue;
        };
        let foreign: Vec<&str> = live["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|f| !GC_FINALIZERS.contains(f))
            .collect();
        if !foreign.is_empty() && live["deleting"] != true {
            held.push(format!("{key} ({})", foreign.join(", ")));
        }
    }
    if held.is_empty() {
        Ok(())
    } else {
        Err(EngineError::OwnerFinalizers { owners: held })
    }
}

/// What detach reads of a live owner: its UID, resourceVersion, generation and finalizers, and
/// whether it is being deleted.
fn owner_view(live: kube::api::DynamicObject) -> Value {
    let meta = live.metadata;
    json!({
        "uid": meta.uid,
        "resourceVersion": meta.resource_version,
        "generation": meta.generation,
        "deleting": meta.deletion_timestamp.is_some(),
        "finalizers": meta.finalizers.unwrap_or_default(),
    })
}

/// The live state of `owners` ([`owner_view`]; `None`: gone): one LIST per type and namespace
/// where enough of them share it (a level of 830 Deployments is one LIST, not 830 GETs), the
/// few others read alone.
async fn owner_states(
    member: &LiveCluster,
    inv: &Inventory,
    owners: &[&ObjectKey],
) -> Result<std::collections::HashMap<ObjectKey, Option<Value>>, EngineError> {
    let records = owners.iter().filter_map(|k| inv.graph().record(k));
    let mut states = super::apply::prefetch(member, records, owner_view).await?;
    for key in owners {
        if !states.contains_key(*key) {
            let api = inv.api(member, key)?;
            let live = member.get_opt(&api, key).await?.map(owner_view);
            states.insert((*key).clone(), live);
        }
    }
    Ok(states)
}

/// Holds and deletes one owner (see the module docs), after checking it is the archived one,
/// unchanged; `live` is its state read with its level ([`owner_states`]). An owner already being
/// deleted (by an earlier attempt) is left to its level's [`release`].
async fn delete_owner(
    member: &LiveCluster,
    inv: &Inventory,
    key: &ObjectKey,
    live: Option<Value>,
    journal: &SharedJournal,
) -> Result<(), EngineError> {
    let name = key.to_string();
    if lock(journal).is_done(STEP_DETACH, &name) {
        return Ok(());
    }
    let archived = inv.body(key).ok_or_else(|| super::inventory::not_archived(key))?;
    let archived = archived.as_ref();
    let uid = inv.uid(key);
    let api = member.api_for(key, archived)?;
    let Some(live) = live else {
        // Gone already: an earlier attempt deleted it and stopped before journaling.
        return Ok(());
    };
    let live_uid = live["uid"].as_str();
    if live_uid != uid {
        return Err(EngineError::ChangedSinceBackup {
            key: key.clone(),
            detail: format!("it was replaced: UID {uid:?} is now {live_uid:?}"),
        });
    }
    // Deleted by an earlier attempt (which raised its generation): the garbage collector is at it.
    if live["deleting"] == true {
        return Ok(());
    }
    let archived_generation = archived.pointer("/metadata/generation").and_then(Value::as_i64);
    let live_generation = live["generation"].as_i64();
    if live_generation.is_some() && live_generation != archived_generation {
        return Err(EngineError::ChangedSinceBackup {
            key: key.clone(),
            detail: format!("generation {archived_generation:?} is now {live_generation:?}"),
        });
    }
    lock(journal).begin(STEP_DETACH, &name, json!({ "uid": uid }))?;
    hold(member, &api, key, &live).await?;
    // The UID precondition refuses an owner replaced since it was read.
    member.delete(&api, key, uid, DeleteParams::background()).await?;
    Ok(())
}

/// Whether the owner `live` (an [`owner_view`]) carries detach's hold.
fn is_held(live: &Value) -> bool {
    live["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == HOLD_FINALIZER))
}

/// Puts [`HOLD_FINALIZER`] on owner `key`, whose state `live` was read: a strategic merge patch
/// under its UID for the types kube-apiserver serves, else the finalizer list under its
/// resourceVersion.
async fn hold(
    member: &LiveCluster,
    api: &kube::Api<kube::api::DynamicObject>,
    key: &ObjectKey,
    live: &Value,
) -> Result<(), EngineError> {
    if is_held(live) {
        return Ok(());
    }
    if is_builtin_group(&key.group) {
        let patch = json!({ "metadata": { "uid": live["uid"], "finalizers": [HOLD_FINALIZER] } });
        member.strategic_patch(api, key, &patch).await?;
    } else {
        let mut finalizers = live["finalizers"].as_array().cloned().unwrap_or_default();
        finalizers.push(json!(HOLD_FINALIZER));
        let patch = json!({ "metadata": {
            "finalizers": finalizers,
            "resourceVersion": live["resourceVersion"],
        } });
        member.merge_patch(api, key, &patch).await?;
    }
    Ok(())
}

/// Releases owner `key` detach held (see the module docs): when it is being deleted, a second
/// DELETE with orphan propagation first puts the garbage collector's `orphan` finalizer on it
/// (whatever still references it, the collector orphans), then the hold comes off. An owner held
/// but not deleted (a detach that stopped in between) only loses the hold. `uid` is the owner's:
/// an object replaced meanwhile is left alone.
///
/// # Errors
/// API errors.
pub(crate) async fn release(
    member: &LiveCluster,
    api: &kube::Api<kube::api::DynamicObject>,
    key: &ObjectKey,
    uid: Option<&str>,
    deleting: bool,
) -> Result<(), EngineError> {
    if deleting {
        member.delete(api, key, uid, DeleteParams::orphan()).await?;
    }
    if is_builtin_group(&key.group) {
        let patch = json!({ "metadata": {
            "uid": uid,
            "$deleteFromPrimitiveList/finalizers": [HOLD_FINALIZER],
        } });
        return match member.strategic_patch(api, key, &patch).await {
            Ok(_) | Err(LiveError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    on_conflict(&member.role, key, "take detach's hold off it", |_| async move {
        let Some(live) = member.get_opt(api, key).await? else {
            return Ok(());
        };
        if live.metadata.uid.as_deref() != uid {
            return Ok(());
        }
        let finalizers = live.metadata.finalizers.clone().unwrap_or_default();
        if !finalizers.iter().any(|f| f == HOLD_FINALIZER) {
            return Ok(());
        }
        let kept: Vec<&String> = finalizers.iter().filter(|f| *f != HOLD_FINALIZER).collect();
        let patch = json!({ "metadata": {
            "finalizers": kept,
            "resourceVersion": live.metadata.resource_version,
        } });
        match member.merge_patch(api, key, &patch).await {
            Ok(_) | Err(LiveError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// Releases every owner of `owners` that carries detach's hold (their state listed a type and
/// namespace at a time), at `opts.concurrency`; every failure is reported.
async fn release_held(
    member: &LiveCluster,
    inv: &Inventory,
    owners: &[ObjectKey],
    opts: &EngineOptions,
) -> Result<(), EngineError> {
    let keys: Vec<&ObjectKey> = owners.iter().collect();
    let states = owner_states(member, inv, &keys).await?;
    let releases = keys
        .into_iter()
        .filter_map(|key| {
            let live = states.get(key)?.as_ref().filter(|live| is_held(live))?;
            let deleting = live["deleting"] == true;
            let uid = live["uid"].as_str().map(str::to_owned);
            Some(async move {
                let api = inv.api(member, key)?;
                release(member, &api, key, uid.as_deref(), deleting).await
            })
        })
        .collect();
    super::every(STEP_DETACH, releases, opts.concurrency).await
}

/// Waits until the garbage collector has let every deleted owner of `plan` go, and journals
/// each detached. One look lists each type of owner in each namespace (metadata only) and counts
/// the owners still there: the wait fails once that count has not dropped for `opts.gc_stall`,
/// however many owners a large namespace holds.
async fn await_owners_gone(
    member: &LiveCluster,
    inv: &Inventory,
    plan: &DetachPlan,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
    on_progress: Option<&ProgressFn>,
) -> Result<(), EngineError> {
    let total = plan.objects().count() as u64;
    let pending: Vec<&ObjectKey> = plan
        .objects()
        .filter(|k| !lock(journal).is_done(STEP_DETACH, &k.to_string()))
        .collect();
    let Some(first) = pending.first() else {
        return Ok(());
    };
    let uids: HashSet<&str> = pending.iter().filter_map(|k| inv.uid(k)).collect();
    let mut apis: std::collections::BTreeMap<
        (&str, &str, Option<&str>),
        kube::Api<kube::api::DynamicObject>,
    > = std::collections::BTreeMap::new();
    for key in &pending {
        if !apis.contains_key(&(
            key.group.as_str(),
            key.resource.as_str(),
            key.namespace.as_deref(),
        )) {
            let api = inv.api(member, key)?;
            apis.insert((&key.group, &key.resource, key.namespace.as_deref()), api);
        }
    }
    let apis: Vec<_> = apis.into_values().collect();
    let awaited = Awaited {
        cluster: &member.role,
        key: first,
        what: "the garbage collector to let the detached owners go",
    };
    until(awaited, opts.gc_stall, || async {
        let left = member
            .count(&apis, first, |meta| {
                meta.uid.as_deref().is_some_and(|u| uids.contains(u))
            })
            .await?;
        progress(on_progress, "detach", total - left.min(total), total);
        Ok(if left == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending(Progress::Left(left))
        })
    })
    .await?;
    for key in pending {
        let name = key.to_string();
        lock(journal).done(STEP_DETACH, &name, json!({ "uid": inv.uid(key) }))?;
        lock(report).detached.add(name);
    }
    Ok(())
}

/// Takes `dependents` off their owners of `owner_uids` (owners being deleted): the pods the
/// restore re-creates are marked in the same patch ([`mark_one`]), the rest only lose the
/// references. Their live state is listed a type and namespace at a time, not read one by one.
async fn orphan_dependents(
    member: &LiveCluster,
    twins: &TwinFactory<'_>,
    dependents: &BTreeSet<&ObjectKey>,
    owner_uids: &HashSet<String>,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let inv = twins.inv;
    let skipped = inv.skipped_by_restore();
    let pending: Vec<&ObjectKey> = dependents
        .iter()
        .copied()
        .filter(|k| !lock(journal).is_done(STEP_MARK, &k.to_string()))
        .collect();
    // One pass over each type and namespace for the whole level: a LIST per batch would
    // serialize the namespace's every pod once per batch.
    let records = pending.iter().filter_map(|k| inv.graph().record(k));
    let mut prefetched = super::apply::prefetch(member, records, mark_view).await?;
    for batch in pending.chunks(MARK_BATCH) {
        // The futures are made before streaming them (see `Restorer::run`).
        let patches: Vec<_> = batch
            .iter()
            .map(|key| {
                let live = prefetched.remove(*key);
                async move {
                    if key.is("", "pods") && !skipped.contains(*key) {
                        let archived = inv.body(key).ok_or_else(|| super::inventory::not_archived(key))?;
                        let uid = inv.uid(key);
                        let known = live.map_or(Known::Unread, Known::Listed);
                        mark_and_report(
                            member, twins, key, uid, &archived, owner_uids, known, journal, report,
                        )
                        .await
                    } else {
                        orphan_one(member, inv, key, owner_uids, live).await
                    }
                }
            })
            .collect();
        super::every(STEP_MARK, patches, opts.concurrency).await?;
        lock(journal).sync()?;
    }
    Ok(())
}

/// How many dependents are patched at once (their futures are made a batch at a time).
const MARK_BATCH: usize = 1024;

/// What marking or orphaning reads of a listed object: its identity, resourceVersion, owners
/// and the fields clustertree compares (labels, annotations and the pod spec's).
fn mark_view(live: kube::api::DynamicObject) -> Value {
    let meta = live.metadata;
    let mut metadata = serde_json::Map::new();
    let fields = [
        ("uid", meta.uid.map(Value::String)),
        ("resourceVersion", meta.resource_version.map(Value::String)),
        ("labels", meta.labels.map(|m| json!(m))),
        ("annotations", meta.annotations.map(|m| json!(m))),
        ("ownerReferences", meta.owner_references.map(|r| json!(r))),
    ];
    for (field, value) in fields {
        if let Some(value) = value {
            metadata.insert(field.to_owned(), value);
        }
    }
    let mut view = json!({ "metadata": metadata });
    if let Some(spec) = live.data.get("spec") {
        let kept: serde_json::Map<String, Value> = [
            "containers",
            "initContainers",
            "activeDeadlineSeconds",
            "tolerations",
        ]
        .iter()
        .filter_map(|f| spec.get(*f).map(|v| ((*f).to_owned(), v.clone())))
        .collect();
        view["spec"] = Value::Object(kept);
    }
    view
}

/// The ownerReferences of `live` without those to `owner_uids`; `None` when it has none of them.
fn without_owners(live: &Value, owner_uids: &HashSet<String>) -> Option<Value> {
    let refs = live.pointer("/metadata/ownerReferences")?.as_array()?;
    let kept: Vec<&Value> = refs
        .iter()
        .filter(|r| !r["uid"].as_str().is_some_and(|u| owner_uids.contains(u)))
        .collect();
    (kept.len() != refs.len()).then(|| json!(kept))
}

/// Strategic-merge directives deleting `live`'s ownerReferences to `owner_uids`, by UID (the
/// list's merge key): a concurrent change to the other references, the garbage collector
/// removing the same ones, merges instead of conflicting. `None` when it has none of them.
fn owner_deletions(live: &Value, owner_uids: &HashSet<String>) -> Option<Value> {
    let deletions: Vec<Value> = live
        .pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .filter_map(|r| r["uid"].as_str())
        .filter(|u| owner_uids.contains(*u))
        .map(|u| json!({ "$patch": "delete", "uid": u }))
        .collect();
    (!deletions.is_empty()).then(|| json!(deletions))
}

/// Takes one dependent that is not marked off its owners of `owner_uids`: a strategic merge
/// patch deleting those references for the types kube-apiserver serves, else (custom resources
/// take no strategic patch) the kept list under its resourceVersion. `prefetched` is its listed
/// state, read again on a conflict.
async fn orphan_one(
    member: &LiveCluster,
    inv: &Inventory,
    key: &ObjectKey,
    owner_uids: &HashSet<String>,
    prefetched: Option<Option<Value>>,
) -> Result<(), EngineError> {
    let api = &inv.api(member, key)?;
    let first = &Mutex::new(prefetched);
    on_conflict(&member.role, key, "take it off its owners", |_| async move {
        let Some(live) = read(member, api, key, first).await? else {
            return Ok(());
        };
        if live.pointer("/metadata/uid").and_then(Value::as_str) != inv.uid(key) {
            return Ok(());
        }
        let patched = if is_builtin_group(&key.group) {
            let Some(deletions) = owner_deletions(&live, owner_uids) else {
                return Ok(());
            };
            member
                .strategic_patch(api, key, &owner_deletion_patch(&live, deletions))
                .await
        } else {
            let Some(kept) = without_owners(&live, owner_uids) else {
                return Ok(());
            };
            let patch = json!({ "metadata": {
                "ownerReferences": kept,
                "resourceVersion": live.pointer("/metadata/resourceVersion"),
            } });
            member.merge_patch(api, key, &patch).await
        };
        match patched {
            Ok(_) | Err(LiveError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// The live state of `key`: its prefetched state the first time (`first`, taken), then read.
async fn read(
    member: &LiveCluster,
    api: &kube::Api<kube::api::DynamicObject>,
    key: &ObjectKey,
    first: &Mutex<Option<Option<Value>>>,
) -> Result<Option<Value>, EngineError> {
    let prefetched = first
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    Ok(match prefetched {
        Some(view) => view,
        None => member.get_opt(api, key).await?.as_ref().map(json_of),
    })
}

/// What detach knows of a member pod's state before marking it.
enum Known {
    /// Listed with its level: its view ([`mark_view`]), `None` when not in the member.
    Listed(Option<Value>),
    /// Nothing read yet: it is read first.
    Unread,
    /// Nothing read, and its archived copy stands in for it: the patch is built from the copy and
    /// pinned to the copy's UID and resourceVersion, so it applies only to the pod exactly as it
    /// was backed up — the case of almost every pod, marked in one request with no LIST of the
    /// namespace's pods. A pod changed in any way since (its tolerations' `tolerationSeconds`, a
    /// label, its status), replaced or gone makes the member refuse it, and the pod is then read
    /// and judged on what it is, as an unread one. A copy without both is read first.
    Archived,
}

/// Marks one member pod, taking it off its owners of `owner_uids` in the same patch, then
/// journals and reports it; `uid` and `archived` are its archived UID and body.
#[allow(clippy::too_many_arguments)]
async fn mark_and_report(
    member: &LiveCluster,
    twins: &TwinFactory<'_>,
    key: &ObjectKey,
    uid: Option<&str>,
    archived: &Value,
    owner_uids: &HashSet<String>,
    known: Known,
    journal: &SharedJournal,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let name = key.to_string();
    let api = &member.api_for(key, archived)?;
    let pinnable = uid.is_some() && archived.pointer("/metadata/resourceVersion").is_some();
    let read_and_mark = |listed: Option<Option<Value>>| async move {
        let first = &Mutex::new(listed);
        on_conflict(&member.role, key, "mark it", |_| async move {
            match read(member, api, key, first).await? {
                Some(live) => {
                    mark_one(member, twins, api, key, uid, archived, owner_uids, &live, false).await
                }
                None => Ok(false),
            }
        })
        .await
    };
    // `false`: gone (or replaced) since the backup.
    let marked: bool = match known {
        Known::Archived if pinnable => {
            match mark_one(member, twins, api, key, uid, archived, owner_uids, archived, true).await {
                Err(EngineError::Live(LiveError::Conflict { .. } | LiveError::Refused { code: 422, .. })) => {
                    read_and_mark(None).await?
                }
                outcome => outcome?,
            }
        }
        Known::Archived | Known::Unread => read_and_mark(None).await?,
        Known::Listed(view) => read_and_mark(Some(view)).await?,
    };
    if marked {
        lock(report).marked.add(name.clone());
    } else {
        lock(report).warnings.push(format!(
            "pod {name} is gone from the member since the backup; not marked"
        ));
    }
    lock(journal).done(STEP_MARK, &name, Value::Null)?;
    Ok(())
}

/// The strategic merge patch making the `deletions` of [`owner_deletions`] to `live`, under its
/// UID.
fn owner_deletion_patch(live: &Value, deletions: Value) -> Value {
    json!({ "metadata": {
        "ownerReferences": deletions,
        "uid": live.pointer("/metadata/uid"),
    } })
}

/// Marks the member pod `key` whose state is `live`, in one strategic merge patch under its UID
/// (see [`member_mark_patch`]) that also deletes its references to `owner_uids` (the garbage
/// collector orphaning it at the same moment deletes the same references), then checks the
/// marked pod against its control-plane twin. `pinned`: `live` is the archived copy, not a read
/// ([`Known::Archived`]) — the patch carries its resourceVersion too, and is sent even when the
/// copy needs no change, so the member checks the pod is still that copy and returns it.
/// `false`: `live` is another pod (replaced since the backup), or the pod is gone.
#[allow(clippy::too_many_arguments)]
async fn mark_one(
    member: &LiveCluster,
    twins: &TwinFactory<'_>,
    api: &kube::Api<kube::api::DynamicObject>,
    key: &ObjectKey,
    uid: Option<&str>,
    archived: &Value,
    owner_uids: &HashSet<String>,
    live: &Value,
    pinned: bool,
) -> Result<bool, EngineError> {
    if live.pointer("/metadata/uid").and_then(Value::as_str) != uid {
        return Ok(false);
    }
    let patch = member_mark_patch(live, twins.inv.archive_id()).map_err(|source| EngineError::Transform {
        key: key.clone(),
        source,
    })?;
    let mut patch = match (patch, owner_deletions(live, owner_uids)) {
        (Some(mut patch), Some(deletions)) => {
            patch["metadata"]["ownerReferences"] = deletions;
            Some(patch)
        }
        (None, Some(deletions)) => Some(owner_deletion_patch(live, deletions)),
        (patch, None) => patch,
    };
    if pinned {
        // Both patches above carry the UID already.
        let mut pin = patch.unwrap_or_else(|| json!({ "metadata": { "uid": uid } }));
        pin["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
        patch = Some(pin);
    }
    let patched;
    let marked = match patch {
        None => live,
        Some(patch) => match member.strategic_patch(api, key, &patch).await {
            Ok(marked) => {
                patched = json_of(&marked);
                &patched
            }
            Err(LiveError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        },
    };
    let twin = twins.twin(key, archived)?;
    let differences = clustertree_differences(marked, &twin);
    if !differences.is_empty() {
        return Err(EngineError::ChangedSinceBackup {
            key: key.clone(),
            detail: format!(
                "it differs from its archived copy in {}, so its control-plane copy would too and \
                 Kosmos would try to update the running pod forever",
                differences.join(", ")
            ),
        });
    }
    Ok(true)
}

/// Marks the pods of `batch` the restore re-creates and no earlier attempt marked, taking each
/// off its owners of `owner_uids` in the same patch; nothing is read first ([`Known::Archived`]).
async fn mark_batch(
    member: &LiveCluster,
    twins: &TwinFactory<'_>,
    batch: &[Archived],
    owner_uids: &HashSet<String>,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let inv = twins.inv;
    let pending: Vec<&Archived> = batch
        .iter()
        .filter(|p| inv.restores(p) && !lock(journal).is_done(STEP_MARK, &p.key().to_string()))
        .collect();
    // The futures are made before streaming them (see `Restorer::run`).
    let marks: Vec<_> = pending
        .iter()
        .map(|pod| {
            mark_and_report(
                member,
                twins,
                pod.key(),
                pod.uid(),
                &pod.object,
                owner_uids,
                Known::Archived,
                journal,
                report,
            )
        })
        .collect();
    super::every(STEP_MARK, marks, opts.concurrency).await?;
    lock(journal).sync()?;
    Ok(())
}

/// Marks every archived pod the restore re-creates as Kosmos-managed that [`detach`] has not
/// marked already (pods no detached owner owns): the Kosmos label, the archive stamp and the
/// virtual node's toleration ([`member_mark_patch`]), so the member pod equals the control-plane
/// twin the restore will create in every field Kosmos clustertree compares. A pod that differs
/// from its archived copy there (changed since the backup) stops the run before anything is
/// created in the control plane: clustertree would try to update it forever. A pod that
/// disappeared since the backup is reported, not an error: its owner was detached, and its
/// control-plane twin is not created (see the report's warnings). The pods stream from the
/// archive a batch at a time.
///
/// # Errors
/// [`EngineError::ChangedSinceBackup`]; API and journal errors.
pub async fn mark_pods(
    member: &LiveCluster,
    twins: &TwinFactory<'_>,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
    on_progress: Option<&ProgressFn>,
) -> Result<(), EngineError> {
    let inv = twins.inv;
    let held: Vec<Archived> = inv
        .graph()
        .keys()
        .filter(|k| k.is("", "pods"))
        .filter_map(|k| inv.archived(k))
        .collect();
    let total = held.len() as u64 + inv.outside_count("", "pods");
    let mut done = 0;
    progress(on_progress, "mark", 0, total);
    let none = HashSet::new();
    let mut outside = inv.outside_of_kind("", "pods")?;
    let mut batch = Some(held);
    while let Some(pods) = batch {
        done += pods.len() as u64;
        mark_batch(member, twins, &pods, &none, journal, opts, report).await?;
        progress(on_progress, "mark", done, total);
        batch = outside.next_batch(MARK_BATCH)?;
    }
    lock(journal).sync()?;
    Ok(())
}

/// The archive being promoted, and the control-plane twin of each of its pods exactly as the
/// restore will create it, so detach can check the marked member pod against it.
#[derive(Debug)]
pub struct TwinFactory<'a> {
    /// The archive being promoted.
    pub inv: &'a Inventory,
    target: Target,
    ctx: TransformContext,
}

impl<'a> TwinFactory<'a> {
    /// The factory for promoting `inv` from member `cluster_name`.
    #[must_use]
    pub fn new(inv: &'a Inventory, cluster_name: &str) -> Self {
        Self {
            inv,
            target: Target::ControlPlane {
                cluster_name: cluster_name.to_owned(),
            },
            ctx: inv.control_plane_context(),
        }
    }

    /// The control-plane pod the restore creates for `archived`, stamped.
    ///
    /// # Errors
    /// [`EngineError::Transform`] when the pod cannot be prepared.
    pub(crate) fn twin(&self, key: &ObjectKey, archived: &Value) -> Result<Value, EngineError> {
        let transform = |source| EngineError::Transform {
            key: key.clone(),
            source,
        };
        match prepare(archived, &self.target, &self.ctx).map_err(transform)? {
            Prepared::Create(creation) => {
                let mut object = creation.object;
                stamp(&mut object, self.inv.archive_id());
                Ok(object)
            }
            // Not created in the control plane: nothing there to differ from.
            _ => Ok(archived.clone()),
        }
    }
}

/// Owners listed in the archive that are absent from the member: what detach deleted (or what
/// someone else removed), and so what rollback re-creates. An owner still being deleted — the
/// garbage collector has not finished orphaning its dependents — is waited for until it is gone:
/// counted as present, it would not be re-created, then disappear, and its pods would run with no
/// controller.
///
/// # Errors
/// API errors; [`super::LiveError::Stalled`] when a deletion stops advancing for `opts.gc_stall`.
pub(crate) async fn detached_owners(
    member: &LiveCluster,
    inv: &Inventory,
    plan: &DetachPlan,
    opts: &EngineOptions,
) -> Result<std::collections::BTreeSet<ObjectKey>, EngineError> {
    let mut absent = std::collections::BTreeSet::new();
    for key in plan.objects() {
        let api = inv.api(member, key)?;
        let mut live = member.get_opt(&api, key).await?;
        // A detach that stopped before letting its owners go left them held: released, an
        // owner being deleted goes (whatever still references it orphaned first), one not yet
        // deleted stays as it is.
        if let Some(held) = live.as_ref().filter(|l| {
            l.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == HOLD_FINALIZER)
        }) {
            let deleting = held.metadata.deletion_timestamp.is_some();
            release(member, &api, key, held.metadata.uid.as_deref(), deleting).await?;
            live = member.get_opt(&api, key).await?;
        }
        match live {
            None => {}
            Some(live) if live.metadata.deletion_timestamp.is_some() => {
                member
                    .wait_gone(
                        &api,
                        key,
                        live.metadata.uid.as_deref(),
                        opts.gc_stall,
                        "the garbage collector to finish deleting it before it is re-created",
                        &dependent_apis(member, inv, key),
                    )
                    .await?;
            }
            Some(_) => continue,
        }
        absent.insert(key.clone());
    }
    Ok(absent)
}

/// The types of the objects `owner` may own, as the garbage collector orphans them: what the
/// archive records it owning, and what its kind's controller makes (the pods of a ReplicaSet,
/// which a rollback's inventory does not hold). Counting those it still owns tells a slow
/// garbage collector from a stuck one.
pub(super) fn dependent_apis(
    cluster: &LiveCluster,
    inv: &Inventory,
    owner: &ObjectKey,
) -> Vec<kube::Api<kube::api::DynamicObject>> {
    let Some(ns) = owner.namespace.as_deref() else {
        return Vec::new();
    };
    let made: &[(&str, &str, &str, &str)] = match (owner.group.as_str(), owner.resource.as_str()) {
        ("apps", "deployments") => &[("apps", "v1", "ReplicaSet", "replicasets")],
        ("batch", "cronjobs") => &[("batch", "v1", "Job", "jobs")],
        ("apps", "statefulsets" | "daemonsets") => &[
            ("", "v1", "Pod", "pods"),
            ("apps", "v1", "ControllerRevision", "controllerrevisions"),
        ],
        ("apps", "replicasets") | ("batch", "jobs") | ("", "replicationcontrollers") => {
            &[("", "v1", "Pod", "pods")]
        }
        _ => &[],
    };
    let mut types: std::collections::BTreeSet<(String, String, String, String)> = made
        .iter()
        .map(|(g, v, k, r)| {
            let api_version = if g.is_empty() {
                (*v).to_owned()
            } else {
                format!("{g}/{v}")
            };
            ((*g).to_owned(), api_version, (*k).to_owned(), (*r).to_owned())
        })
        .collect();
    for dependent in inv.graph().dependents(owner) {
        if let Some(record) = inv.graph().record(dependent)
            && dependent.namespace.as_deref() == Some(ns)
        {
            types.insert((
                dependent.group.clone(),
                record.api_version.clone(),
                record.kind.clone(),
                dependent.resource.clone(),
            ));
        }
    }
    types
        .into_iter()
        .map(|(group, api_version, kind, resource)| {
            cluster.api(
                &ObjectKey::namespaced(&group, &resource, ns, ""),
                &api_version,
                &kind,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_references_to_the_deleted_owners_are_taken_off() {
        let live = json!({ "metadata": { "ownerReferences": [
            { "kind": "ReplicaSet", "name": "web-1", "uid": "rs" },
            { "kind": "WebApp", "name": "shop", "uid": "kept" },
        ] } });
        let deleted: HashSet<String> = ["rs".to_owned(), "elsewhere".to_owned()].into();
        assert_eq!(
            without_owners(&live, &deleted),
            Some(json!([{ "kind": "WebApp", "name": "shop", "uid": "kept" }]))
        );
        let orphaned = json!({ "metadata": { "ownerReferences": [] } });
        assert_eq!(without_owners(&orphaned, &deleted), None);
        assert_eq!(without_owners(&json!({ "metadata": {} }), &deleted), None);
        assert_eq!(without_owners(&live, &HashSet::new()), None);
        // The strategic form names only what goes, by UID.
        assert_eq!(
            owner_deletions(&live, &deleted),
            Some(json!([{ "$patch": "delete", "uid": "rs" }]))
        );
        assert_eq!(owner_deletions(&orphaned, &deleted), None);
        assert_eq!(owner_deletions(&live, &HashSet::new()), None);
    }
}
