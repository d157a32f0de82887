//! Detach: delete the workload owners in the member top-down with orphan propagation, then mark
//! the pods as Kosmos-managed. The pods are never touched otherwise: the garbage collector only
//! strips their ownerReferences, and they keep running.

use std::sync::Mutex;

use futures::TryStreamExt;
use kube::api::DeleteParams;
use serde_json::{Value, json};

use super::inventory::{Inventory, stamp};
use super::live::LiveCluster;
use super::wait::on_conflict;
use super::{EngineError, EngineOptions, ProgressFn, Report, SharedJournal, lock, progress};
use crate::plan::order::DetachPlan;
use crate::plan::transform::{Prepared, Target, TransformContext, prepare};
use crate::plan::twin::{clustertree_differences, member_mark_patch};
use kpromote_model::object_key::ObjectKey;

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
    refuse_owners_with_finalizers(member, inv, plan, journal).await?;
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

/// Finalizers the garbage collector itself handles; any other finalizer on an owner belongs to a
/// controller (an operator) that runs its own cleanup when the owner is deleted.
const GC_FINALIZERS: &[&str] = &["orphan", "foregroundDeletion"];

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
    let mut held = Vec::new();
    for key in plan.objects() {
        if lock(journal).is_done(STEP_DETACH, &key.to_string()) {
            continue;
        }
        let api = inv.api(member, key)?;
        let Some(live) = member.get_opt(&api, key).await? else {
            continue;
        };
        let foreign: Vec<String> = live
            .metadata
            .finalizers
            .unwrap_or_default()
            .into_iter()
            .filter(|f| !GC_FINALIZERS.contains(&f.as_str()))
            .collect();
        if !foreign.is_empty() && live.metadata.deletion_timestamp.is_none() {
            held.push(format!("{key} ({})", foreign.join(", ")));
        }
    }
    if held.is_empty() {
        Ok(())
    } else {
        Err(EngineError::OwnerFinalizers { owners: held })
    }
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
                    opts.gc_stall,
                    "the garbage collector to orphan its dependents",
                    &dependent_apis(member, inv, key),
                )
                .await?;
        }
    }
    lock(journal).done(STEP_DETACH, &name, json!({ "uid": uid }))?;
    lock_report(report).detached.push(name);
    Ok(())
}

/// Marks every archived pod the restore re-creates as Kosmos-managed: the Kosmos label, the
/// archive stamp and the virtual node's toleration ([`member_mark_patch`]), so the member pod
/// equals the control-plane twin the restore will create in every field Kosmos clustertree
/// compares. A pod that differs from its archived copy there (changed since the backup) stops the
/// run before anything is created in the control plane: clustertree would try to update it
/// forever. A pod that disappeared since the backup is reported, not an error: its owner was
/// detached, and its control-plane twin is not created (see the report's warnings).
///
/// # Errors
/// [`EngineError::ChangedSinceBackup`]; API and journal errors.
pub async fn mark_pods(
    member: &LiveCluster,
    twins: &TwinFactory<'_>,
    skipped: &std::collections::BTreeSet<ObjectKey>,
    journal: &SharedJournal,
    opts: &EngineOptions,
    report: &Mutex<Report>,
    on_progress: Option<&ProgressFn>,
) -> Result<(), EngineError> {
    let inv = twins.inv;
    let pods: Vec<(&ObjectKey, &Value)> = inv.pods().filter(|(k, _)| !skipped.contains(*k)).collect();
    let total = pods.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    futures::stream::iter(pods.into_iter().map(Ok::<_, EngineError>))
        .try_for_each_concurrent(opts.concurrency, |(key, archived)| {
            let done = &done;
            async move {
                let name = key.to_string();
                if !lock(journal).is_done(STEP_MARK, &name) {
                    if mark_one(member, inv, key, archived, twins).await? {
                        lock_report(report).marked.push(name.clone());
                    } else {
                        lock_report(report).warnings.push(format!(
                            "pod {name} is gone from the member since the backup; not marked"
                        ));
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

/// Marks one member pod; `false` when it is gone (or replaced) since the backup.
async fn mark_one(
    member: &LiveCluster,
    inv: &Inventory,
    key: &ObjectKey,
    archived: &Value,
    twins: &TwinFactory<'_>,
) -> Result<bool, EngineError> {
    let api = member.api_for(key, archived)?;
    // The patch replaces the toleration list under the pod's resourceVersion: a concurrent
    // change (the kubelet's status is another subresource, but labels may move) is read again.
    let api = &api;
    on_conflict(&member.role, key, "mark it", |_| async move {
        let Some(live) = member.get_opt(api, key).await? else {
            return Ok(false);
        };
        if live.metadata.uid.as_deref() != inv.uid(key) {
            return Ok(false);
        }
        let live = serde_json::to_value(&live).unwrap_or(Value::Null);
        let patch = member_mark_patch(&live, &inv.archive_id).map_err(|source| EngineError::Transform {
            key: key.clone(),
            source,
        })?;
        let marked = match patch {
            None => live,
            Some(patch) => {
                serde_json::to_value(member.merge_patch(api, key, &patch).await?).unwrap_or(Value::Null)
            }
        };
        let twin = twins.twin(key, archived)?;
        let differences = clustertree_differences(&marked, &twin);
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
    })
    .await
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
    for dependent in inv.graph.dependents(owner) {
        if let Some(record) = inv.graph.record(dependent)
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
            ctx: TransformContext::for_control_plane(inv.objects.values()),
        }
    }

    /// The control-plane pod the restore creates for `archived`, stamped.
    ///
    /// # Errors
    /// [`EngineError::Transform`] when the pod cannot be prepared.
    pub fn twin(&self, key: &ObjectKey, archived: &Value) -> Result<Value, EngineError> {
        let transform = |source| EngineError::Transform {
            key: key.clone(),
            source,
        };
        match prepare(archived, &self.target, &self.ctx).map_err(transform)? {
            Prepared::Create(creation) => {
                let mut object = creation.object;
                stamp(&mut object, &self.inv.archive_id);
                Ok(object)
            }
            // Not created in the control plane: nothing there to differ from.
            _ => Ok(archived.clone()),
        }
    }
}

pub(super) fn lock_report(report: &Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
    report.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Owners listed in the archive that are absent from the member: what detach deleted (or what
/// someone else removed), and so what rollback re-creates. An owner still being deleted — the
/// garbage collector has not finished orphaning its dependents — is waited for until it is gone:
/// counted as present, it would not be re-created, then disappear, and its pods would run with no
/// controller.
///
/// # Errors
/// API errors; [`super::LiveError::Stalled`] when a deletion stops advancing for `opts.gc_stall`.
pub async fn detached_owners(
    member: &LiveCluster,
    inv: &Inventory,
    plan: &DetachPlan,
    opts: &EngineOptions,
) -> Result<std::collections::BTreeSet<ObjectKey>, EngineError> {
    let mut absent = std::collections::BTreeSet::new();
    for key in plan.objects() {
        let api = inv.api(member, key)?;
        match member.get_opt(&api, key).await? {
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
