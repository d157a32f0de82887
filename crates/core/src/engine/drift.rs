//! What changed in the control plane since promote, found before rollback deletes anything:
//! objects users created in the promoted namespaces, and objects promote created whose spec they
//! edited. Rolling back deletes the first and re-creates the member's owners from the archive,
//! reverting the second (an edited pod template would even roll out new pods in the member), so
//! rollback refuses unless told to discard them.

use std::collections::{BTreeSet, HashSet};

use futures::{StreamExt, TryStreamExt};
use kube::api::DynamicObject;
use serde_json::Value;

use super::live::LiveCluster;
use super::live::json_of;
use super::{EngineError, LiveError};
use crate::resources::{ApiSurface, DEFAULT_EXCLUDED_RESOURCES, GroupResource};
use kpromote_model::object_key::ObjectKey;

/// Kinds whose objects a controller makes from another object's spec: one made since promote
/// from an object promote created is derived, not user work — except these, which mean new pods
/// or a rollout in the member.
const REPORTED_EVEN_WHEN_DERIVED: &[(&str, &str)] = &[
    ("", "pods"),
    ("apps", "replicasets"),
    ("apps", "controllerrevisions"),
];

/// What drift needs of the objects promote created, gathered one at a time as rollback reads
/// them from the control plane: those whose spec was edited since, and every UID — as 128 bits,
/// not strings, so that a rollback of many objects holds little of each.
#[derive(Debug, Default)]
pub(crate) struct Promoted {
    edited: Vec<(ObjectKey, i64)>,
    uids: HashSet<u128>,
}

/// What drift needs of one object promote created, read from the control plane: the rest of
/// the live object is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Created {
    /// Its UID there.
    pub uid: Option<String>,
    /// Its generation: above 1, its spec was edited since promote.
    pub generation: Option<i64>,
}

impl Created {
    /// The summary of `live`.
    #[must_use]
    pub(crate) fn of(live: &Value) -> Self {
        Self {
            uid: live
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            generation: live.pointer("/metadata/generation").and_then(Value::as_i64),
        }
    }
}

impl Promoted {
    /// Adds `created`, the control plane's object of `key`, which promote created.
    pub(crate) fn add(&mut self, key: &ObjectKey, created: Created) {
        if let Some(uid) = &created.uid {
            self.uids.insert(uid_bits(uid));
        }
        if let Some(generation) = created.generation
            && generation > 1
        {
            self.edited.push((key.clone(), generation));
        }
    }

    /// Adds what `other` gathered.
    fn merge(&mut self, other: Self) {
        self.edited.extend(other.edited);
        self.uids.extend(other.uids);
    }
}

/// A UID as 128 bits: its value when it is a UUID (what Kubernetes assigns), else two
/// independent 64-bit hashes of it.
fn uid_bits(uid: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let hex: String = uid.chars().filter(|c| *c != '-').collect();
    if uid.len() == 36
        && hex.len() == 32
        && let Ok(bits) = u128::from_str_radix(&hex, 16)
    {
        return bits;
    }
    let half = |salt: u8| {
        let mut hasher = std::hash::DefaultHasher::new();
        (salt, uid).hash(&mut hasher);
        u128::from(hasher.finish())
    };
    (half(0) << 64) | half(1)
}

/// Changes found; empty when the control plane holds exactly what promote made.
#[derive(Debug, Default)]
pub(crate) struct Drift {
    /// Objects created since promote in the promoted namespaces.
    pub added: Vec<ObjectKey>,
    /// Objects promote created whose spec changed since (generation above 1).
    pub edited: Vec<(ObjectKey, i64)>,
    /// Types this process may not list, so not checked for added objects.
    pub unchecked: Vec<String>,
}

impl Drift {
    /// Whether nothing changed.
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.edited.is_empty()
    }

    /// One line per change.
    #[must_use]
    pub(crate) fn describe(&self) -> Vec<String> {
        self.added
            .iter()
            .map(|k| format!("{k} was created in the control plane after promote"))
            .chain(
                self.edited.iter().map(|(k, g)| {
                    format!("{k} was edited in the control plane after promote (generation {g})")
                }),
            )
            .collect()
    }
}

/// Compares the control plane with what promote created there in `namespaces` (the namespaces
/// it created), adding to `promoted` (what it created elsewhere, read live) what it finds of its
/// own there; `ours` tells a listed object promote created (its stamp, or the rule for pods).
///
/// Each type of each namespace is listed once, a page at a time: an object of promote's is
/// summarized ([`Created`]), any other keeps its key and owners' UIDs only while the lists
/// run (it is someone's work unless it derives from an object of promote's, known only once
/// every list is in). No object promote created is read on its own.
///
/// # Errors
/// Discovery and API errors.
pub(crate) async fn detect(
    cp: &LiveCluster,
    mut promoted: Promoted,
    namespaces: &BTreeSet<String>,
    ours: impl Fn(&ObjectKey, &Value) -> bool,
) -> Result<Drift, EngineError> {
    if namespaces.is_empty() {
        return Ok(Drift {
            edited: promoted.edited,
            ..Drift::default()
        });
    }
    // Discovery is many requests; like every other call it rides out a busy API server, and
    // fails at once on what retrying cannot change (a 403, a certificate not trusted).
    let probe = ObjectKey::cluster(
        "",
        "namespaces",
        namespaces.iter().next().map_or("", String::as_str),
    );
    let surface = cp
        .retry("discover the types served for", &probe, || async {
            ApiSurface::discover(&cp.client)
                .await
                .map_err(crate::resources::DiscoveryError::into_client_error)
        })
        .await?;
    // Events and the endpoints the control plane derives from Services are nobody's work.
    let excluded = surface
        .resolve_exclusions(
            DEFAULT_EXCLUDED_RESOURCES
                .iter()
                .filter(|n| surface.resolve(n).is_ok()),
        )
        .unwrap_or_default();
    let lists: Vec<(GroupResource, String, kube::Api<DynamicObject>)> = surface
        .resources()
        .iter()
        .filter(|r| r.is_backup_candidate() && !excluded.contains(&r.group_resource))
        .flat_map(|r| {
            namespaces.iter().map(move |ns| {
                (
                    r.group_resource.clone(),
                    ns.clone(),
                    kube::Api::namespaced_with(cp.client.clone(), ns, &r.api_resource()),
                )
            })
        })
        .collect();
    let listed: Vec<Listed> = futures::stream::iter(lists.into_iter().map(|(gr, ns, api)| {
        let ours = &ours;
        async move {
            let probe = ObjectKey::namespaced(gr.group(), gr.resource(), &ns, "");
            let mut found = Listed::default();
            // Promote's objects are folded into `mine` as they are listed (a UID's 128 bits
            // each); only the others are kept, until every list is in.
            let mine = &mut found.promoted;
            let kept = cp
                .list_kept(&api, &probe, None, |object| {
                    let name = object.metadata.name.clone()?;
                    let key = ObjectKey::namespaced(gr.group(), gr.resource(), &ns, &name);
                    // Cannot fail (string keys); a Null would be reported as added, not skipped.
                    let value = json_of(&object);
                    if ours(&key, &value) {
                        mine.add(&key, Created::of(&value));
                        None
                    } else {
                        Candidate::of(key, &value)
                    }
                })
                .await;
            match kept {
                Ok(kept) => found.others.extend(kept.into_values()),
                // A type this process may not list (the controller never lists Secrets, and
                // is granted no custom resources by default): not checked, and said so.
                Err(LiveError::Refused { code: 403, .. }) => {
                    found.unchecked = Some(probe.group_resource().to_string());
                }
                Err(e) => return Err(EngineError::from(e)),
            }
            Ok(found)
        }
    }))
    .buffer_unordered(8)
    .try_collect()
    .await?;
    let mut others = Vec::new();
    let mut unchecked = Vec::new();
    for found in listed {
        promoted.merge(found.promoted);
        others.extend(found.others);
        unchecked.extend(found.unchecked);
    }
    let mut drift = Drift {
        added: others
            .into_iter()
            .filter(|c| c.is_added(&promoted))
            .map(|c| c.key)
            .collect(),
        edited: promoted.edited,
        unchecked,
    };
    drift.added.sort();
    drift.unchecked.sort();
    drift.unchecked.dedup();
    Ok(drift)
}

/// What one type of one namespace holds, as drift keeps it: promote's objects folded into a
/// [`Promoted`], the others that may be someone's work as [`Candidate`]s.
#[derive(Default)]
struct Listed {
    promoted: Promoted,
    others: Vec<Candidate>,
    unchecked: Option<String>,
}

/// An object promote did not create that may be someone's work: its key and its owners' UIDs,
/// until every list is in and it is known whether it derives from an object promote created.
struct Candidate {
    key: ObjectKey,
    owners: Vec<u128>,
}

impl Candidate {
    /// `None` for what the control plane or Kosmos makes in every namespace by itself.
    fn of(key: ObjectKey, object: &Value) -> Option<Self> {
        if made_by_the_cluster(&key, object) {
            return None;
        }
        let owners = object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| r.get("uid").and_then(Value::as_str))
                    .map(uid_bits)
                    .collect()
            })
            .unwrap_or_default();
        Some(Self { key, owners })
    }

    /// Whether it is someone's work: not derived from an object of `promoted`, or of a kind
    /// that means new pods or a rollout in the member even when derived.
    fn is_added(&self, promoted: &Promoted) -> bool {
        let derived = self.owners.iter().any(|o| promoted.uids.contains(o));
        !derived || REPORTED_EVEN_WHEN_DERIVED.iter().any(|(g, r)| self.key.is(g, r))
    }
}

/// Whether an object promote did not create is what the control plane or Kosmos makes in every
/// namespace by itself, or a restore barrier's sentinel a crashed run left behind.
fn made_by_the_cluster(key: &ObjectKey, object: &Value) -> bool {
    let str_at = |p: &str| object.pointer(p).and_then(Value::as_str);
    let by_the_cluster = match (key.group.as_str(), key.resource.as_str()) {
        ("", "configmaps") => key.name == "kube-root-ca.crt",
        ("", "serviceaccounts") => key.name == "default",
        ("", "secrets") => {
            str_at("/type") == Some("kubernetes.io/service-account-token")
                // Kosmos's token copy, made when it converts a pod's service-account volume.
                || key.name == "kosmos-default-token"
        }
        _ => false,
    };
    let sentinel = object
        .pointer(&format!(
            "/metadata/labels/{}",
            super::barrier::SENTINEL_LABEL.replace('/', "~1")
        ))
        .is_some();
    by_the_cluster || sentinel
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_the_cluster_makes_is_not_user_work() {
        let mut promoted = Promoted::default();
        for uid in ["svc-uid", "rs-uid"] {
            let key = ObjectKey::namespaced("", "services", "shop", uid);
            promoted.add(&key, Created::of(&json!({ "metadata": { "uid": uid } })));
        }
        let key = |r: &str, n: &str| ObjectKey::namespaced("", r, "shop", n);
        let added = |key: ObjectKey, object: Value| {
            Candidate::of(key, &object).is_some_and(|c| c.is_added(&promoted))
        };
        assert!(!added(key("configmaps", "kube-root-ca.crt"), json!({})));
        assert!(!added(key("serviceaccounts", "default"), json!({})));
        assert!(!added(
            key("secrets", "t"),
            json!({"type": "kubernetes.io/service-account-token"})
        ));
        let label = super::super::barrier::SENTINEL_LABEL;
        let sentinel = json!({"metadata": {"labels": {label: "x"}}});
        assert!(!added(key("pods", "sentinel"), sentinel));
        let slice = ObjectKey::namespaced("discovery.k8s.io", "endpointslices", "shop", "web-x");
        assert!(!added(
            slice,
            json!({"metadata": {"ownerReferences": [{"uid": "svc-uid"}]}})
        ));
        // A pod a control-plane ReplicaSet made after promote is a new pod in the member.
        assert!(added(
            key("pods", "web-new"),
            json!({"metadata": {"ownerReferences": [{"uid": "rs-uid"}]}})
        ));
        // Derived from an object promote did not make: someone's work.
        let other = ObjectKey::namespaced("discovery.k8s.io", "endpointslices", "shop", "new-x");
        assert!(added(
            other,
            json!({"metadata": {"ownerReferences": [{"uid": "someone-elses"}]}})
        ));
        assert!(added(key("configmaps", "notes"), json!({})));
    }

    fn has(promoted: &Promoted, uid: &str) -> bool {
        promoted.uids.contains(&uid_bits(uid))
    }

    #[test]
    fn promoted_objects_are_known_by_uid_and_edits_by_generation() {
        let mut promoted = Promoted::default();
        let live =
            |uid: &str, generation: i64| json!({ "metadata": { "uid": uid, "generation": generation } });
        let web = ObjectKey::namespaced("apps", "deployments", "shop", "web");
        promoted.add(
            &web,
            Created::of(&live("0b9f1f3e-5d0c-4c55-9d5e-8a1f0c2b7e11", 2)),
        );
        promoted.add(
            &ObjectKey::namespaced("", "configmaps", "shop", "c"),
            Created::of(&live("not-a-uuid", 1)),
        );
        assert!(has(&promoted, "0b9f1f3e-5d0c-4c55-9d5e-8a1f0c2b7e11"));
        assert!(!has(&promoted, "0b9f1f3e-5d0c-4c55-9d5e-8a1f0c2b7e12"));
        assert!(has(&promoted, "not-a-uuid"));
        assert!(!has(&promoted, "not-a-uuie"));
        assert_eq!(promoted.edited, vec![(web, 2)]);
        // A UUID and the string of its bits without hyphens are different UIDs.
        assert_ne!(
            uid_bits("0b9f1f3e-5d0c-4c55-9d5e-8a1f0c2b7e11"),
            uid_bits("0b9f1f3e5d0c4c559d5e8a1f0c2b7e11")
        );
    }
}
