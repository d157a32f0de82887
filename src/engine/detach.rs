//! Detach: delete the workload owners in the member top-down with orphan propagation, then mark
//! the pods as Kosmos-managed. The pods are never touched otherwise: the garbage collector only
//! strips their ownerReferences, and they keep running.

use std::sync::Mutex;

use futures::TryStreamExt;
use kube::api::DeleteParams;
use serde_json::{Value, json};

use super::inventory::Inventory;
use super::live::LiveCluster;
use super::{EngineError, EngineOptions, ProgressFn, Report, SharedJournal, lock, progress};
use crate::object::ObjectKey;
use crate::restore::plan::DetachPlan;
use crate::restore::transform::pod_mark_patch;

/// Journal step of one owner's deletion.
pub const STEP_DETACH: &str = "detach";
/// Journal step of one pod's Kosmos mark.
pub const STEP_MARK: &str = "mark";

/// Deletes every owner of `plan`, level by level (highest first), each with
/// `propagationPolicy: Orphan` and its archived UID as precondition, and waits until the garbage
/// collector has orphaned its dependents (the owner is gone) before the next level.
///
/// # Errors
/// [`EngineError::ChangedSinceBackup`] when an owner's spec changed or it was replaced since the
/// backup (nothing further is deleted); API and journal errors.
pub async fn detach(
    member: &LiveCluster,
    inv: &Inventory,
    plan: &DetachPlan,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
    on_progress: Option<&ProgressFn>,
) -> Result<(), EngineError> {
    let total = plan.objects().count() as u64;
    let mut done = 0;
    progress(on_progress, "detach", 0, total);
    for level in &plan.levels {
        futures::stream::iter(level.objects.iter().map(Ok::<_, EngineError>))
            .try_for_each_concurrent(opts.concurrency, |key| async move {
                detach_one(member, inv, key, journal, opts, report).await
            })
            .await?;
        done += level.objects.len() as u64;
        lock(journal).sync()?;
        progress(on_progress, "detach", done, total);
    }
    Ok(())
}

async fn detach_one(
    member: &LiveCluster,
    inv: &Inventory,
    key: &ObjectKey,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let name = key.to_string();
    if lock(journal).is_done(STEP_DETACH, &name) {
        return Ok(());
    }
    let archived = &inv.objects[key];
    let uid = inv.uid(key);
    let api = member.api_for(key, archived)?;
    match member.get_opt(&api, key).await? {
        // Gone already: an earlier attempt deleted it and stopped before journaling.
        None => {}
        Some(live) if live.metadata.uid.as_deref() != uid => {
            return Err(EngineError::ChangedSinceBackup {
                key: key.clone(),
                detail: format!("it was replaced: UID {:?} is now {:?}", uid, live.metadata.uid),
            });
        }
        Some(live) => {
            let archived_generation = archived.pointer("/metadata/generation").and_then(Value::as_i64);
            if live.metadata.generation.is_some() && live.metadata.generation != archived_generation {
                return Err(EngineError::ChangedSinceBackup {
                    key: key.clone(),
                    detail: format!(
                        "generation {archived_generation:?} is now {:?}",
                        live.metadata.generation
                    ),
                });
            }
            lock(journal).begin(STEP_DETACH, &name, json!({ "uid": uid }))?;
            member.delete(&api, key, uid, DeleteParams::orphan()).await?;
            member
                .wait_gone(
                    &api,
                    key,
                    uid,
                    opts.gc_timeout,
                    "the garbage collector to orphan its dependents",
                )
                .await?;
        }
    }
    lock(journal).done(STEP_DETACH, &name, json!({ "uid": uid }))?;
    lock_report(report).detached.push(name);
    Ok(())
}

/// Marks every archived pod the restore re-creates as Kosmos-managed (`kosmos-io/pod=true`).
/// A pod that disappeared since the backup is reported, not an error: its owner was detached,
/// and its control-plane twin is not created (see the report's warnings).
///
/// # Errors
/// API and journal errors.
pub async fn mark_pods(
    member: &LiveCluster,
    inv: &Inventory,
    skipped: &std::collections::BTreeSet<ObjectKey>,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
    on_progress: Option<&ProgressFn>,
) -> Result<(), EngineError> {
    let pods: Vec<(&ObjectKey, &Value)> = inv.pods().filter(|(k, _)| !skipped.contains(*k)).collect();
    let total = pods.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    futures::stream::iter(pods.into_iter().map(Ok::<_, EngineError>))
        .try_for_each_concurrent(opts.concurrency, |(key, archived)| {
            let done = &done;
            async move {
                let name = key.to_string();
                if !lock(journal).is_done(STEP_MARK, &name) {
                    let api = member.api_for(key, archived)?;
                    match member.get_opt(&api, key).await? {
                        Some(live) if live.metadata.uid.as_deref() == inv.uid(key) => {
                            let live = serde_json::to_value(&live).unwrap_or(Value::Null);
                            if let Some(patch) = pod_mark_patch(&live) {
                                member.merge_patch(&api, key, &patch).await?;
                            }
                            lock_report(report).marked.push(name.clone());
                        }
                        _ => lock_report(report).warnings.push(format!(
                            "pod {name} is gone from the member since the backup; not marked"
                        )),
                    }
                    lock(journal).done(STEP_MARK, &name, Value::Null)?;
                }
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(on_progress, "mark", n, total);
                Ok(())
            }
        })
        .await?;
    lock(journal).sync()?;
    Ok(())
}

pub(super) fn lock_report(report: &Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
    report.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Owners listed in the archive that are absent from the member: what detach deleted (or what
/// someone else removed), and so what rollback re-creates.
///
/// # Errors
/// API errors.
pub async fn detached_owners(
    member: &LiveCluster,
    inv: &Inventory,
    plan: &DetachPlan,
) -> Result<std::collections::BTreeSet<ObjectKey>, EngineError> {
    let mut absent = std::collections::BTreeSet::new();
    for key in plan.objects() {
        let api = member.api_for(key, &inv.objects[key])?;
        if member.get_opt(&api, key).await?.is_none() {
            absent.insert(key.clone());
        }
    }
    Ok(absent)
}
