//! Rollback: the member back to its original state, and the control plane rid of exactly what
//! promote created — from the archive and live state alone.
//!
//! Order, and why:
//! 1. **Unmark** the member pods: Kosmos deletes a member pod with its control-plane twin only
//!    while the pod carries `kosmos-io/pod=true`, so the mark goes first.
//! 2. **Re-create** the detached owners in the member, bottom-up, and point the pods (and other
//!    dependents) at them: the member's controllers manage the same pods again.
//! 3. **Tear down** in the control plane every object stamped with this archive: owners top-down
//!    with orphan propagation, pods with grace period 0 (no kubelet answers for a virtual
//!    node), the rest, the namespaces, and CRDs promote created. Nothing unstamped is touched.

use std::collections::BTreeSet;
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt};
use kube::api::DeleteParams;
use serde_json::{Value, json};

use super::apply::Restorer;
use super::detach::{detached_owners, lock_report};
use super::inventory::{Inventory, stamped_by};
use super::live::LiveCluster;
use super::{EngineError, EngineOptions, ProgressFn, Report, SharedJournal, lock, progress};
use crate::object::ObjectKey;
use crate::restore::plan::{DetachPlan, RestorePlan, TeardownPlan, TeardownStep};
use crate::restore::transform::{Target, TransformContext, pod_unmark_patch};

/// Journal step of one member pod's unmarking.
pub const STEP_UNMARK: &str = "unmark";
/// Journal step of one re-created member owner.
pub const STEP_RECREATE: &str = "recreate";
/// Journal step of one control-plane deletion.
pub const STEP_TEARDOWN: &str = "teardown";

/// Rolls the promotion of `inv` back.
///
/// # Errors
/// API and journal errors; the rollback can be run again and continues where it stopped.
pub async fn rollback(
    member: &LiveCluster,
    control_plane: &LiveCluster,
    inv: &Inventory,
    cluster_name: &str,
    journal: &SharedJournal,
    opts: &EngineOptions,
    on_progress: Option<&ProgressFn>,
) -> Result<Report, EngineError> {
    let report = Mutex::new(Report::default());
    unmark_member_pods(member, inv, journal, opts, &report).await?;
    lock(journal).sync()?;
    progress(on_progress, "unmark", 1, 1);

    let skipped = inv.skipped_by_restore(cluster_name);
    let detach_plan = DetachPlan::build(&inv.graph, &skipped);
    let recreate = detached_owners(member, inv, &detach_plan).await?;
    let plan = RestorePlan::build_for(&inv.graph, recreate.iter())?;
    let mut ctx = TransformContext::for_member(inv.objects.iter(), &recreate);
    let restorer = Restorer {
        target: member,
        inv,
        kind: Target::Member,
        journal,
        opts,
        step: STEP_RECREATE,
        stamp: false,
    };
    restorer.run(&plan, &mut ctx, &report, on_progress).await?;

    teardown(control_plane, inv, journal, opts, &report, on_progress).await?;
    Ok(Report::finish(report))
}

async fn unmark_member_pods(
    member: &LiveCluster,
    inv: &Inventory,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    futures::stream::iter(inv.pods().map(Ok::<_, EngineError>))
        .try_for_each_concurrent(opts.concurrency, |(key, archived)| async move {
            let name = key.to_string();
            if lock(journal).is_done(STEP_UNMARK, &name) {
                return Ok(());
            }
            let api = member.api_for(key, archived)?;
            if let Some(live) = member.get_opt(&api, key).await?
                && live.metadata.uid.as_deref() == inv.uid(key)
            {
                let live = serde_json::to_value(&live).unwrap_or(Value::Null);
                if let Some(patch) = pod_unmark_patch(archived, &live) {
                    member.merge_patch(&api, key, &patch).await?;
                    lock_report(report).unmarked.push(name.clone());
                }
            }
            lock(journal).done(STEP_UNMARK, &name, Value::Null)?;
            Ok(())
        })
        .await
}

/// The archived objects that exist in the control plane with this archive's stamp.
async fn stamped_in_control_plane(
    cp: &LiveCluster,
    inv: &Inventory,
    opts: &EngineOptions,
) -> Result<BTreeSet<ObjectKey>, EngineError> {
    // The futures are made before streaming them (see `Restorer::run`).
    let lookups: Vec<_> = inv
        .objects
        .iter()
        .map(|(key, archived)| async move {
            let api = cp.api_for(key, archived)?;
            Ok::<_, EngineError>(match cp.get_opt(&api, key).await {
                Ok(Some(live))
                    if stamped_by(
                        &serde_json::to_value(&live).unwrap_or(Value::Null),
                        &inv.archive_id,
                    ) =>
                {
                    Some(key.clone())
                }
                Ok(_) => None,
                // A type the control plane does not serve (its CRD is gone): nothing of it there.
                Err(e) if matches!(&e, super::LiveError::Refused { code: 404, .. }) => None,
                Err(e) => return Err(e.into()),
            })
        })
        .collect();
    let found: Vec<Option<ObjectKey>> = futures::stream::iter(lookups)
        .buffer_unordered(opts.concurrency)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

async fn teardown(
    cp: &LiveCluster,
    inv: &Inventory,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
    on_progress: Option<&ProgressFn>,
) -> Result<(), EngineError> {
    let created = stamped_in_control_plane(cp, inv, opts).await?;
    let plan = TeardownPlan::build(&inv.graph, &created)?;
    let total = created.len() as u64;
    let mut done = 0;
    for level in &plan.levels {
        futures::stream::iter(level.objects.iter().map(Ok::<_, EngineError>))
            .try_for_each_concurrent(opts.concurrency, |key| async move {
                remove(cp, inv, key, level.step, journal, opts, report).await
            })
            .await?;
        done += level.objects.len() as u64;
        lock(journal).sync()?;
        progress(on_progress, "teardown", done, total);
    }
    Ok(())
}

async fn remove(
    cp: &LiveCluster,
    inv: &Inventory,
    key: &ObjectKey,
    step: TeardownStep,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
) -> Result<(), EngineError> {
    let name = key.to_string();
    if lock(journal).is_done(STEP_TEARDOWN, &name) {
        return Ok(());
    }
    let archived = &inv.objects[key];
    let api = cp.api_for(key, archived)?;
    let Some(live) = cp.get_opt(&api, key).await? else {
        lock(journal).done(STEP_TEARDOWN, &name, Value::Null)?;
        return Ok(());
    };
    let uid = live.metadata.uid.clone();
    let live_json = serde_json::to_value(&live).unwrap_or(Value::Null);
    if !stamped_by(&live_json, &inv.archive_id) {
        lock(journal).done(
            STEP_TEARDOWN,
            &name,
            json!({ "kept": "not created by this promotion" }),
        )?;
        return Ok(());
    }
    lock(journal).begin(STEP_TEARDOWN, &name, json!({ "uid": uid }))?;
    match step {
        TeardownStep::Owners => {
            cp.delete(&api, key, uid.as_deref(), DeleteParams::orphan())
                .await?;
            cp.wait_gone(
                &api,
                key,
                uid.as_deref(),
                opts.gc_timeout,
                "the garbage collector to orphan its dependents",
            )
            .await?;
        }
        TeardownStep::Pods => {
            if let Some(patch) = pod_unmark_patch(archived, &live_json) {
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
            cp.wait_gone(
                &api,
                key,
                uid.as_deref(),
                opts.namespace_timeout,
                "the namespace to be deleted",
            )
            .await?;
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
    lock_report(report).deleted.push(name);
    Ok(())
}
