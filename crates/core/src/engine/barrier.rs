//! The restore's barrier before a level of owners: proof, observed in the target cluster, that
//! its kube-controller-manager has seen every pod, ReplicaSet and ControllerRevision created so
//! far. A ReplicaSet, StatefulSet or Deployment created before its controller's cache holds the
//! objects it should adopt makes its controller create new ones — new pods, which Kosmos turns
//! into new pods in the member.
//!
//! # Why the signal implies the caches hold the objects
//! kube-controller-manager's controllers read from shared informers: one cache per resource type,
//! fed by one watch whose events arrive in resourceVersion order. So once any controller has acted
//! on an object created *after* ours, the shared cache of that type holds ours too. The barrier
//! creates such sentinels, after everything restored so far, and waits for a controller to act on
//! them:
//!
//! - a **sentinel pod** (bound to a node that does not exist, so no scheduler, kubelet or Kosmos
//!   acts on it) and a **sentinel ReplicaSet** with zero replicas selecting it: the ReplicaSet
//!   controller claims the pod (ownerReference) or deletes it (scale to zero) only once its pod
//!   cache holds the sentinel — and so every pod before it — and its ReplicaSet cache the
//!   sentinel ReplicaSet — and so every ReplicaSet before it;
//! - when the next level holds StatefulSets or DaemonSets, a **sentinel ControllerRevision** and
//!   a **sentinel StatefulSet** with zero replicas selecting it: the StatefulSet controller claims
//!   the revision only once its revision cache holds it;
//! - when the next level holds Deployments, a **sentinel ReplicaSet** and a **sentinel
//!   Deployment** with zero replicas and the same template: the Deployment controller claims the
//!   ReplicaSet only once its ReplicaSet cache holds it. A level of Deployments needs nothing
//!   else (their ReplicaSets' pods were proven seen before the ReplicaSets were created), and
//!   asking the Deployment controller rather than the ReplicaSet controller matters for speed:
//!   just after a level of ReplicaSets, the ReplicaSet controller's queue is busy adopting their
//!   pods, and a sentinel queued behind that work waited seconds for it (6 s of a 15 s restore of
//!   1,000 pods) although the shared cache had caught up long before.
//!
//! With zero replicas the sentinel owners can never create anything. The sentinels are deleted
//! before the level is created; they carry [`SENTINEL_LABEL`], so a crashed run's leftovers are
//! recognisable (and removed by the next barrier of that namespace, and never taken for user work).

use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject};
use serde_json::{Value, json};

use super::EngineError;
use super::live::{LiveCluster, LiveError};
use super::wait::{Awaited, Poll, Progress, Throttled, until};
use kpromote_model::object_key::ObjectKey;

/// Label every sentinel carries, with the barrier's id as value.
pub const SENTINEL_LABEL: &str = "kpromote.kosmos.io/barrier";
/// Prefix of sentinel names.
pub(crate) const SENTINEL_PREFIX: &str = "kpromote-barrier-";
/// The node sentinel pods are bound to: it does not exist, so nothing runs them.
const NOWHERE: &str = "kpromote-barrier-no-such-node";

/// Which caches a barrier must prove caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Pods and ReplicaSets (owners of pods), proven by the ReplicaSet controller.
    pub pods_and_replicasets: bool,
    /// ControllerRevisions (StatefulSets, DaemonSets).
    pub revisions: bool,
    /// ReplicaSets (Deployments), proven by the Deployment controller.
    pub replicasets: bool,
}

impl Needs {
    /// What creating `keys` needs the controllers to have seen.
    #[must_use]
    pub fn of<'a>(keys: impl IntoIterator<Item = &'a ObjectKey>) -> Self {
        let mut needs = Self::default();
        for key in keys {
            match (key.group.as_str(), key.resource.as_str()) {
                ("apps", "replicasets") | ("", "replicationcontrollers") | ("batch", "jobs") => {
                    needs.pods_and_replicasets = true;
                }
                ("apps", "deployments") => needs.replicasets = true,
                ("apps", "statefulsets" | "daemonsets") => {
                    needs.pods_and_replicasets = true;
                    needs.revisions = true;
                }
                _ => {}
            }
        }
        needs
    }

    /// Whether nothing is needed.
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        !self.pods_and_replicasets && !self.revisions && !self.replicasets
    }
}

/// Waits until the target's controllers have seen everything created so far (see the module
/// docs), using namespace `ns` (one the restore created) for the sentinels.
///
/// # Errors
/// [`LiveError::Stalled`] naming the controller that neither acted nor wrote any owner's status
/// in the namespace for `stall` — is the control plane's kube-controller-manager running? —
/// and API errors.
pub async fn observe(
    target: &LiveCluster,
    ns: &str,
    needs: Needs,
    stall: Duration,
) -> Result<(), EngineError> {
    if needs.is_empty() {
        return Ok(());
    }
    let id = format!("{:08x}", fastrand::u32(..));
    let name = format!("{SENTINEL_PREFIX}{id}");
    let sentinels = Sentinels::new(target, ns);
    sentinels.remove_leftovers().await?;
    let outcome = async {
        if needs.pods_and_replicasets {
            sentinels
                .create(&sentinels.pods, sentinel_pod(&name, &id))
                .await?;
        }
        if needs.pods_and_replicasets || needs.replicasets {
            sentinels
                .create(&sentinels.replicasets, sentinel_replicaset(&name, &id))
                .await?;
        }
        if needs.replicasets {
            sentinels
                .create(&sentinels.deployments, sentinel_deployment(&name, &id))
                .await?;
        }
        if needs.revisions {
            sentinels
                .create(&sentinels.revisions, sentinel_revision(&name, &id))
                .await?;
            sentinels
                .create(&sentinels.statefulsets, sentinel_statefulset(&name, &id))
                .await?;
        }
        if needs.pods_and_replicasets {
            sentinels
                .await_claimed(&sentinels.pods, &name, "ReplicaSet", "pods", stall)
                .await?;
        }
        if needs.replicasets {
            sentinels
                .await_claimed(&sentinels.replicasets, &name, "Deployment", "replicasets", stall)
                .await?;
        }
        if needs.revisions {
            sentinels
                .await_claimed(
                    &sentinels.revisions,
                    &name,
                    "StatefulSet",
                    "controllerrevisions",
                    stall,
                )
                .await?;
        }
        Ok::<_, EngineError>(())
    }
    .await;
    // The StatefulSet controller may still be creating the sentinel's own revision as it is
    // deleted: sweep until none is left, so the restore's namespace holds only what it restored.
    let probe = ObjectKey::cluster("", "namespaces", ns);
    let awaited = Awaited {
        cluster: &target.role,
        key: &probe,
        what: "the barrier's sentinels to be removed",
    };
    let sweep = until(awaited, stall, || async {
        sentinels.remove_leftovers().await?;
        Ok(match sentinels.left().await? {
            0 => Poll::Ready(()),
            left => Poll::Pending(Progress::Left(left)),
        })
    })
    .await;
    outcome?;
    Ok(sweep?)
}

/// The dynamic APIs of the sentinels' kinds in one namespace.
struct Sentinels<'a> {
    target: &'a LiveCluster,
    ns: &'a str,
    pods: Api<DynamicObject>,
    replicasets: Api<DynamicObject>,
    revisions: Api<DynamicObject>,
    statefulsets: Api<DynamicObject>,
    deployments: Api<DynamicObject>,
}

impl<'a> Sentinels<'a> {
    fn new(target: &'a LiveCluster, ns: &'a str) -> Self {
        let api = |group: &str, version: &str, kind: &str, plural: &str| {
            let api_version = if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            };
            Api::namespaced_with(
                target.client.clone(),
                ns,
                &ApiResource {
                    group: group.to_owned(),
                    version: version.to_owned(),
                    api_version,
                    kind: kind.to_owned(),
                    plural: plural.to_owned(),
                },
            )
        };
        Self {
            target,
            ns,
            pods: api("", "v1", "Pod", "pods"),
            replicasets: api("apps", "v1", "ReplicaSet", "replicasets"),
            revisions: api("apps", "v1", "ControllerRevision", "controllerrevisions"),
            statefulsets: api("apps", "v1", "StatefulSet", "statefulsets"),
            deployments: api("apps", "v1", "Deployment", "deployments"),
        }
    }

    fn key(&self, api: &Api<DynamicObject>, name: &str) -> ObjectKey {
        let (group, resource) = if std::ptr::eq(api, &self.pods) {
            ("", "pods")
        } else if std::ptr::eq(api, &self.replicasets) {
            ("apps", "replicasets")
        } else if std::ptr::eq(api, &self.revisions) {
            ("apps", "controllerrevisions")
        } else if std::ptr::eq(api, &self.deployments) {
            ("apps", "deployments")
        } else {
            ("apps", "statefulsets")
        };
        ObjectKey::namespaced(group, resource, self.ns, name)
    }

    async fn create(&self, api: &Api<DynamicObject>, object: Value) -> Result<(), EngineError> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let key = self.key(api, &name);
        match self.target.create(api, &key, &object).await {
            // A retried create whose first attempt went through.
            Ok(_) | Err(LiveError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the sentinel `name` of `api` is claimed by a controller of `owner_kind`
    /// (ownerReference) or being deleted by it (scale to zero). The controller manager may be
    /// working through a backlog first: while it writes the status of the namespace's owners,
    /// it is waited for.
    async fn await_claimed(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        owner_kind: &str,
        cache: &str,
        stall: Duration,
    ) -> Result<(), EngineError> {
        let key = self.key(api, name);
        let what = format!(
            "the {owner_kind} controller to claim this sentinel, which proves its {cache} cache holds every \
             object restored so far (is the control plane's kube-controller-manager running?)"
        );
        let awaited = Awaited {
            cluster: &self.target.role,
            key: &key,
            what: &what,
        };
        let written = Throttled::default();
        until(awaited, stall, || async {
            let object = self.target.get_opt(api, &key).await?;
            let claimed = object.is_none_or(|o| {
                o.metadata.deletion_timestamp.is_some()
                    || o.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|r| r.kind == owner_kind)
            });
            if claimed {
                return Ok(Poll::Ready(()));
            }
            let mark = written.get(|| self.owners_written()).await?;
            Ok(Poll::Pending(Progress::Moved(mark)))
        })
        .await?;
        Ok(())
    }

    /// A fingerprint of the namespace's owners as their controllers last wrote them (names and
    /// resourceVersions): it changes while the controller manager works through them.
    async fn owners_written(&self) -> Result<u64, LiveError> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        for api in [&self.replicasets, &self.statefulsets, &self.deployments] {
            let probe = self.key(api, SENTINEL_PREFIX);
            self.target
                .count(std::slice::from_ref(api), &probe, |meta| {
                    (&meta.name, &meta.resource_version).hash(&mut hasher);
                    false
                })
                .await?;
        }
        Ok(hasher.finish())
    }

    /// How many sentinels are left in the namespace.
    async fn left(&self) -> Result<u64, LiveError> {
        let mut left = 0;
        for api in [
            &self.deployments,
            &self.statefulsets,
            &self.replicasets,
            &self.pods,
            &self.revisions,
        ] {
            let probe = self.key(api, SENTINEL_PREFIX);
            left += self
                .target
                .list_selected(api, &probe, Some(SENTINEL_LABEL))
                .await?
                .len() as u64;
        }
        Ok(left)
    }

    /// Deletes every sentinel in the namespace: owners first (the garbage collector takes what
    /// they made, a revision the StatefulSet controller or a ReplicaSet the Deployment controller
    /// created late included), then the pods with grace period 0 (no kubelet serves their node)
    /// and the revisions.
    async fn remove_leftovers(&self) -> Result<(), LiveError> {
        for (api, params) in [
            (&self.deployments, DeleteParams::background()),
            (&self.statefulsets, DeleteParams::background()),
            (&self.replicasets, DeleteParams::background()),
            (
                &self.pods,
                DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            ),
            (&self.revisions, DeleteParams::background()),
        ] {
            let probe = self.key(api, SENTINEL_PREFIX);
            for name in self
                .target
                .list_selected(api, &probe, Some(SENTINEL_LABEL))
                .await?
                .into_keys()
            {
                let key = self.key(api, &name);
                self.target.delete(api, &key, None, params.clone()).await?;
            }
        }
        Ok(())
    }
}

fn labels(id: &str) -> Value {
    json!({ SENTINEL_LABEL: id })
}

fn sentinel_pod(name: &str, id: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": labels(id) },
        "spec": {
            "nodeName": NOWHERE,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{ "name": "sentinel", "image": "kpromote.invalid/barrier-sentinel" }],
        },
    })
}

fn template(id: &str) -> Value {
    json!({
        "metadata": { "labels": labels(id) },
        "spec": {
            "nodeName": NOWHERE,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "sentinel", "image": "kpromote.invalid/barrier-sentinel" }],
        },
    })
}

fn sentinel_replicaset(name: &str, id: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": { "name": name, "labels": labels(id) },
        "spec": { "replicas": 0, "selector": { "matchLabels": labels(id) }, "template": template(id) },
    })
}

/// The same template as the sentinel ReplicaSet's: the Deployment controller takes that
/// ReplicaSet for its current one and creates none of its own.
fn sentinel_deployment(name: &str, id: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "labels": labels(id) },
        "spec": { "replicas": 0, "selector": { "matchLabels": labels(id) }, "template": template(id) },
    })
}

fn sentinel_revision(name: &str, id: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": { "name": name, "labels": labels(id) },
        "data": {},
        "revision": 1,
    })
}

fn sentinel_statefulset(name: &str, id: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": name, "labels": labels(id) },
        "spec": {
            "replicas": 0,
            "serviceName": name,
            "selector": { "matchLabels": labels(id) },
            "template": template(id),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_the_level_kinds() {
        let k = |g: &str, r: &str| ObjectKey::namespaced(g, r, "shop", "x");
        assert!(Needs::of([&k("", "configmaps")]).is_empty());
        assert_eq!(
            Needs::of([&k("apps", "deployments")]),
            Needs {
                replicasets: true,
                ..Needs::default()
            }
        );
        assert_eq!(
            Needs::of([&k("apps", "replicasets")]),
            Needs {
                pods_and_replicasets: true,
                ..Needs::default()
            }
        );
        assert_eq!(
            Needs::of([&k("apps", "statefulsets")]),
            Needs {
                pods_and_replicasets: true,
                revisions: true,
                replicasets: false
            }
        );
        assert_eq!(
            Needs::of([&k("apps", "deployments"), &k("batch", "jobs")]),
            Needs {
                pods_and_replicasets: true,
                revisions: false,
                replicasets: true
            }
        );
    }
}
