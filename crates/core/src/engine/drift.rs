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
pub struct Promoted {
    edited: Vec<(ObjectKey, i64)>,
    uids: HashSet<u128>,
}

/// What drift needs of one object promote created, read from the control plane: the rest of
/// the live object is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Its UID there.
    pub uid: Option<String>,
    /// Its generation: above 1, its spec was edited since promote.
    pub generation: Option<i64>,
}

impl Created {
    /// The summary of `live`.
    #[must_use]
    pub fn of(live: &Value) -> Self {
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
    pub fn add(&mut self, key: &ObjectKey, created: Created) {
        if let Some(uid) = &created.uid {
            self.uids.insert(uid_bits(uid));
        }
        if let Some(generation) = created.generation
            && generation > 1
        {
            self.edited.push((key.clone(), generation));
        }
    }

    /// Whether promote created the object with `uid`.
    #[must_use]
    pub fn has_uid(&self, uid: &str) -> bool {
        self.uids.contains(&uid_bits(uid))
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
pub struct Drift {
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
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.edited.is_empty()
    }

    /// One line per change.
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
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

/// Compares the control plane with what promote created there (`promoted`, read live) in
/// `namespaces` (the namespaces it created); `stamped` tells a live object promote created.
///
/// # Errors
/// Discovery and API errors.
pub async fn detect(
    cp: &LiveCluster,
    promoted: &Promoted,
    namespaces: &BTreeSet<String>,
    stamped: impl Fn(&Value) -> bool,
) -> Result<Drift, EngineError> {
    let mut drift = Drift {
        edited: promoted.edited.clone(),
        ..Drift::default()
    };
    if namespaces.is_empty() {
        return Ok(drift);
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
    let ours = |uid: &str| promoted.has_uid(uid);
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
    let listed: Vec<(Vec<ObjectKey>, Option<String>)> =
        futures::stream::iter(lists.into_iter().map(|(gr, ns, api)| {
            let (stamped, ours) = (&stamped, &ours);
            async move {
                let probe = ObjectKey::namespaced(gr.group(), gr.resource(), &ns, "");
                // Only the names of added objects are kept, a page at a time: a namespace of
                // thousands of ConfigMaps is never held whole.
                let added = cp
                    .list_kept(&api, &probe, None, |object| {
                        let name = object.metadata.name.clone()?;
                        let key = ObjectKey::namespaced(gr.group(), gr.resource(), &ns, &name);
                        let value = serde_json::to_value(&object).unwrap_or(Value::Null);
                        let uid = value.pointer("/metadata/uid").and_then(Value::as_str);
                        (!uid.is_some_and(ours) && !stamped(&value) && is_user_work(&key, &value, ours))
                            .then_some(key)
                    })
                    .await;
                match added {
                    Ok(added) => Ok::<_, EngineError>((added.into_values().collect::<Vec<_>>(), None)),
                    // A type this process may not list (the controller never lists Secrets, and
                    // is granted no custom resources by default): not checked, and said so.
                    Err(LiveError::Refused { code: 403, .. }) => {
                        Ok((Vec::new(), Some(probe.group_resource().to_string())))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }))
        .buffer_unordered(8)
        .try_collect()
        .await?;
    for (added, unchecked) in listed {
        drift.added.extend(added);
        drift.unchecked.extend(unchecked);
    }
    drift.added.sort();
    drift.unchecked.sort();
    drift.unchecked.dedup();
    Ok(drift)
}

/// Whether an object promote did not create is someone's work rather than what the control
/// plane or Kosmos makes in every namespace by itself.
fn is_user_work(key: &ObjectKey, object: &Value, ours: &dyn Fn(&str) -> bool) -> bool {
    let str_at = |p: &str| object.pointer(p).and_then(Value::as_str);
    let made_by_the_cluster = match (key.group.as_str(), key.resource.as_str()) {
        ("", "configmaps") => key.name == "kube-root-ca.crt",
        ("", "serviceaccounts") => key.name == "default",
        ("", "secrets") => {
            str_at("/type") == Some("kubernetes.io/service-account-token")
                // Kosmos's token copy, made when it converts a pod's service-account volume.
                || key.name == "kosmos-default-token"
        }
        _ => false,
    };
    // A restore barrier's sentinel a crashed run left behind.
    let sentinel = object
        .pointer(&format!(
            "/metadata/labels/{}",
            super::barrier::SENTINEL_LABEL.replace('/', "~1")
        ))
        .is_some();
    if made_by_the_cluster || sentinel {
        return false;
    }
    let derived = object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .any(ours)
        });
    !derived || REPORTED_EVEN_WHEN_DERIVED.iter().any(|(g, r)| key.is(g, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_the_cluster_makes_is_not_user_work() {
        let promoted: BTreeSet<&str> = ["svc-uid", "rs-uid"].into_iter().collect();
        let ours = &|uid: &str| promoted.contains(uid);
        let key = |r: &str, n: &str| ObjectKey::namespaced("", r, "shop", n);
        assert!(!is_user_work(
            &key("configmaps", "kube-root-ca.crt"),
            &json!({}),
            ours
        ));
        assert!(!is_user_work(
            &key("serviceaccounts", "default"),
            &json!({}),
            ours
        ));
        assert!(!is_user_work(
            &key("secrets", "t"),
            &json!({"type": "kubernetes.io/service-account-token"}),
            ours
        ));
        let slice = ObjectKey::namespaced("discovery.k8s.io", "endpointslices", "shop", "web-x");
        assert!(!is_user_work(
            &slice,
            &json!({"metadata": {"ownerReferences": [{"uid": "svc-uid"}]}}),
            ours
        ));
        // A pod a control-plane ReplicaSet made after promote is a new pod in the member.
        assert!(is_user_work(
            &key("pods", "web-new"),
            &json!({"metadata": {"ownerReferences": [{"uid": "rs-uid"}]}}),
            ours
        ));
        assert!(is_user_work(&key("configmaps", "notes"), &json!({}), ours));
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
        assert!(promoted.has_uid("0b9f1f3e-5d0c-4c55-9d5e-8a1f0c2b7e11"));
        assert!(!promoted.has_uid("0b9f1f3e-5d0c-4c55-9d5e-8a1f0c2b7e12"));
        assert!(promoted.has_uid("not-a-uuid"));
        assert!(!promoted.has_uid("not-a-uuie"));
        assert_eq!(promoted.edited, vec![(web, 2)]);
        // A UUID and the string of its bits without hyphens are different UIDs.
        assert_ne!(
            uid_bits("0b9f1f3e-5d0c-4c55-9d5e-8a1f0c2b7e11"),
            uid_bits("0b9f1f3e5d0c4c559d5e8a1f0c2b7e11")
        );
    }
}
