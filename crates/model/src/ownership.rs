//! The ownership graph of a set of objects, built from their `metadata.ownerReferences`.
//!
//! Promote and rollback both depend on who owns whom, and on nothing kind-specific: a Deployment
//! owns ReplicaSets that own Pods, a StatefulSet owns Pods and ControllerRevisions, an operator's
//! custom resource owns a Deployment. The graph is general over ownerReferences, so a kind nobody
//! listed is ordered correctly too.
//!
//! - Restore creates **dependents before owners** (ascending [`height`](OwnershipGraph::height)):
//!   a controller created after its children adopts them instead of creating new ones.
//! - Detach deletes **owners before dependents** (descending height): an owner deleted after its
//!   children would re-create them.
//!
//! # Resolving a reference
//! An ownerReference resolves to the object in the set with the same UID — the identity the
//! garbage collector uses — when that object also has the reference's kind, API group and name,
//! and sits where an owner may sit: cluster-scoped, or in the dependent's namespace (a
//! cluster-scoped dependent may only have cluster-scoped owners). Anything else is a
//! [`DanglingOwnerReference`]: reported, never fatal, because an object whose owner is outside
//! the set (or broken) is still restorable — it just has no edge here.
//!
//! # Guarantees
//! The graph is acyclic: [`OwnershipGraph::build`] refuses a cycle with
//! [`OwnershipError::Cycle`], naming the objects on it. Every query is deterministic (keys are
//! kept sorted).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::object_key::{ObjectKey, group_of};

/// `metadata.ownerReferences[]`: the fields of Kubernetes' `OwnerReference`, as the archive index
/// records them and as restore writes them back (same JSON shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// Owner's apiVersion.
    pub api_version: String,
    /// Owner's kind.
    pub kind: String,
    /// Owner's name.
    pub name: String,
    /// Owner's uid in the source cluster.
    pub uid: String,
    /// Whether the owner is the managing controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    /// Whether deletion of the owner is blocked until this object is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// What the graph needs to know about one object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRecord {
    /// The object's key.
    pub key: ObjectKey,
    /// `metadata.uid`; `None` when the object has none (it can then own nothing).
    pub uid: Option<String>,
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind`, e.g. `Deployment`.
    pub kind: String,
    /// `metadata.ownerReferences`, as stored.
    pub owner_references: Vec<OwnerReference>,
}

impl ObjectRecord {
    /// Reads the record of `object`, whose key the caller already knows.
    ///
    /// # Errors
    /// [`OwnershipError::Malformed`] when `apiVersion` or `kind` is missing, or
    /// `metadata.ownerReferences` is not a list of well-formed ownerReferences (each needs
    /// `apiVersion`, `kind`, `name` and `uid`).
    pub fn from_object(key: ObjectKey, object: &Value) -> Result<Self, OwnershipError> {
        let text = |field: &'static str| {
            object
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| OwnershipError::Malformed {
                    key: Box::new(key.clone()),
                    reason: format!("no {field}"),
                })
        };
        let api_version = text("apiVersion")?;
        let kind = text("kind")?;
        let uid = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .filter(|uid| !uid.is_empty())
            .map(str::to_owned);
        let owner_references: Vec<OwnerReference> = match object.pointer("/metadata/ownerReferences") {
            None | Some(Value::Null) => Vec::new(),
            Some(refs) => serde_json::from_value(refs.clone()).map_err(|e| OwnershipError::Malformed {
                key: Box::new(key.clone()),
                reason: format!("metadata.ownerReferences: {e}"),
            })?,
        };
        // The API server requires all four; an archive is hostile input and may lack them.
        if let Some(bad) = owner_references
            .iter()
            .find(|r| r.api_version.is_empty() || r.kind.is_empty() || r.name.is_empty() || r.uid.is_empty())
        {
            return Err(OwnershipError::Malformed {
                key: Box::new(key),
                reason: format!(
                    "an ownerReference lacks apiVersion, kind, name or uid: {:?}/{:?} {:?} (uid {:?})",
                    bad.api_version, bad.kind, bad.name, bad.uid
                ),
            });
        }
        Ok(Self {
            key,
            uid,
            api_version,
            kind,
            owner_references,
        })
    }
}

/// An ownerReference that names no object of the set.
#[derive(Debug, Clone, PartialEq)]
pub struct DanglingOwnerReference {
    /// The object carrying the reference.
    pub dependent: ObjectKey,
    /// The reference as stored.
    pub reference: OwnerReference,
    /// Why it does not resolve.
    pub reason: DanglingReason,
}

impl fmt::Display for DanglingOwnerReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.reference;
        write!(
            f,
            "{}: owner {} {} (uid {}) ",
            self.dependent, r.kind, r.name, r.uid
        )?;
        match &self.reason {
            DanglingReason::NotInSet => f.write_str("is not in the set"),
            DanglingReason::NamespaceMismatch { owner } => {
                write!(
                    f,
                    "resolves to {owner}, which may not own an object in another namespace"
                )
            }
            DanglingReason::IdentityMismatch { found } => {
                write!(f, "has the uid of {found}, whose kind or name differs")
            }
        }
    }
}

/// Why an ownerReference is dangling.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DanglingReason {
    /// No object of the set has the UID.
    NotInSet,
    /// The UID belongs to a namespaced object in another namespace, or the dependent is
    /// cluster-scoped and the owner namespaced. The garbage collector treats such a reference as
    /// unresolvable.
    NamespaceMismatch {
        /// The object with the UID.
        owner: ObjectKey,
    },
    /// The UID belongs to an object of another kind, group or name. The garbage collector looks
    /// an owner up by its coordinates and compares UIDs, so such an owner counts as absent.
    IdentityMismatch {
        /// The object with the UID.
        found: ObjectKey,
    },
}

/// Why an ownership graph could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnershipError {
    /// Two records have the same key.
    #[error("{0} appears twice")]
    DuplicateKey(Box<ObjectKey>),
    /// Two records have the same UID; UIDs identify owners, so the graph would be ambiguous.
    #[error("{first} and {second} have the same uid {uid}")]
    DuplicateUid {
        /// The shared UID.
        uid: String,
        /// The first object with it (in key order).
        first: Box<ObjectKey>,
        /// The second object with it.
        second: Box<ObjectKey>,
    },
    /// The ownerReferences form a cycle; no order puts every dependent before its owner.
    #[error("ownership cycle: {}", cycle_text(.objects))]
    Cycle {
        /// The objects on the cycle, each owned by the next; the last is owned by the first.
        objects: Vec<ObjectKey>,
    },
    /// An object lacks a field the graph needs, or its ownerReferences are not well-formed.
    #[error("{key}: {reason}")]
    Malformed {
        /// The object.
        key: Box<ObjectKey>,
        /// What is wrong.
        reason: String,
    },
}

fn cycle_text(objects: &[ObjectKey]) -> String {
    let mut names: Vec<String> = objects.iter().map(ToString::to_string).collect();
    if let Some(first) = objects.first() {
        names.push(first.to_string());
    }
    names.join(" is owned by ")
}

#[derive(Debug)]
struct Node {
    record: ObjectRecord,
    /// Indices of resolved owners, sorted, without duplicates.
    owners: Vec<usize>,
    /// Indices of dependents, sorted, without duplicates.
    dependents: Vec<usize>,
    height: usize,
}

/// Who owns whom among a set of objects. See the [module docs](self).
#[derive(Debug)]
pub struct OwnershipGraph {
    /// Sorted by key (a key is found by binary search: no second copy of every key); indices are
    /// positions here.
    nodes: Vec<Node>,
    by_uid: BTreeMap<String, usize>,
    dangling: Vec<DanglingOwnerReference>,
}

impl OwnershipGraph {
    /// Builds the graph of `records`, resolving every ownerReference and computing heights.
    ///
    /// # Errors
    /// [`OwnershipError::DuplicateKey`], [`OwnershipError::DuplicateUid`], or
    /// [`OwnershipError::Cycle`] naming the objects of one cycle.
    pub fn build(records: impl IntoIterator<Item = ObjectRecord>) -> Result<Self, OwnershipError> {
        Self::build_upper(records, std::iter::empty())
    }

    /// Builds the graph of the upper part of a set: `records` are closed under owners (every
    /// owner of one of them is one of them), `outside` are the set's other objects, streamed past
    /// once. Heights are those of the whole set — an owner of an object outside counts it — so
    /// the part is planned as the whole would be, while only the part is held: a rollback of a
    /// hundred thousand objects keeps their few thousand owners. [`dependents`](Self::dependents)
    /// and [`dangling`](Self::dangling) name objects of the part only; [`owners_of`](Self::owners_of)
    /// resolves an outside object's references.
    ///
    /// # Errors
    /// As [`OwnershipGraph::build`], among `records`.
    pub fn build_upper(
        records: impl IntoIterator<Item = ObjectRecord>,
        outside: impl IntoIterator<Item = ObjectRecord>,
    ) -> Result<Self, OwnershipError> {
        let mut records: Vec<ObjectRecord> = records.into_iter().collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));

        let mut by_uid: BTreeMap<String, usize> = BTreeMap::new();
        for (i, record) in records.iter().enumerate() {
            if i > 0 && records[i - 1].key == record.key {
                return Err(OwnershipError::DuplicateKey(Box::new(record.key.clone())));
            }
            if let Some(uid) = &record.uid
                && let Some(&first) = by_uid.get(uid)
            {
                return Err(OwnershipError::DuplicateUid {
                    uid: uid.clone(),
                    first: Box::new(records[first].key.clone()),
                    second: Box::new(record.key.clone()),
                });
            }
            if let Some(uid) = &record.uid {
                by_uid.insert(uid.clone(), i);
            }
        }

        let mut owners: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); records.len()];
        let mut dependents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); records.len()];
        let mut dangling = Vec::new();
        for (i, record) in records.iter().enumerate() {
            for reference in &record.owner_references {
                match resolve(record, reference, |i| &records[i], &by_uid) {
                    Ok(owner) => {
                        owners[i].insert(owner);
                        dependents[owner].insert(i);
                    }
                    Err(reason) => dangling.push(DanglingOwnerReference {
                        dependent: record.key.clone(),
                        reference: reference.clone(),
                        reason,
                    }),
                }
            }
        }

        // An owner of an outside object is at least one above it (outside objects own nothing
        // of the part, or they would be in it).
        let mut floors = vec![0usize; records.len()];
        for record in outside {
            for reference in &record.owner_references {
                if let Ok(owner) = resolve(&record, reference, |i| &records[i], &by_uid) {
                    floors[owner] = 1;
                }
            }
        }
        let heights = heights(&records, &dependents, &floors)?;
        let nodes = records
            .into_iter()
            .zip(owners)
            .zip(dependents)
            .zip(heights)
            .map(|(((record, owners), dependents), height)| Node {
                record,
                owners: owners.into_iter().collect(),
                dependents: dependents.into_iter().collect(),
                height,
            })
            .collect();
        Ok(Self {
            nodes,
            by_uid,
            dangling,
        })
    }

    /// Builds the graph of `(key, object)` pairs, reading each record with
    /// [`ObjectRecord::from_object`].
    ///
    /// # Errors
    /// As [`ObjectRecord::from_object`] and [`OwnershipGraph::build`].
    pub fn from_objects<'a>(
        objects: impl IntoIterator<Item = (ObjectKey, &'a Value)>,
    ) -> Result<Self, OwnershipError> {
        let records = objects
            .into_iter()
            .map(|(key, object)| ObjectRecord::from_object(key, object))
            .collect::<Result<Vec<_>, _>>()?;
        Self::build(records)
    }

    /// Number of objects.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph has no objects.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `key` is in the graph.
    #[must_use]
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.position(key).is_some()
    }

    /// Every key, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.nodes.iter().map(|n| &n.record.key)
    }

    /// The record of `key`.
    #[must_use]
    pub fn record(&self, key: &ObjectKey) -> Option<&ObjectRecord> {
        self.node(key).map(|n| &n.record)
    }

    /// The key of the object with `uid`.
    #[must_use]
    pub fn key_of_uid(&self, uid: &str) -> Option<&ObjectKey> {
        self.by_uid.get(uid).map(|&i| &self.nodes[i].record.key)
    }

    /// The resolved owners of `key`, in key order; empty for an unknown key.
    pub fn owners(&self, key: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.node(key)
            .map_or(&[][..], |n| &n.owners[..])
            .iter()
            .map(|&i| &self.nodes[i].record.key)
    }

    /// The objects `key` owns, in key order; empty for an unknown key.
    pub fn dependents(&self, key: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.node(key)
            .map_or(&[][..], |n| &n.dependents[..])
            .iter()
            .map(|&i| &self.nodes[i].record.key)
    }

    /// Every direct or indirect owner of `key`, in key order.
    #[must_use]
    pub fn ancestors(&self, key: &ObjectKey) -> BTreeSet<&ObjectKey> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<usize> = self.node(key).map(|n| n.owners.clone()).unwrap_or_default();
        while let Some(i) = todo.pop() {
            if seen.insert(i) {
                todo.extend(&self.nodes[i].owners);
            }
        }
        seen.into_iter().map(|i| &self.nodes[i].record.key).collect()
    }

    /// 0 when `key` owns nothing in the set, else 1 + the greatest height of its dependents.
    /// `None` for an unknown key.
    #[must_use]
    pub fn height(&self, key: &ObjectKey) -> Option<usize> {
        self.node(key).map(|n| n.height)
    }

    /// The ownerReferences that resolve to no object of the set, in key order of their dependent.
    #[must_use]
    pub fn dangling(&self) -> &[DanglingOwnerReference] {
        &self.dangling
    }

    /// The objects of the graph that `outside`, an object not in it, resolves its ownerReferences
    /// to (by the rules of the [module docs](self)), in reference order.
    pub fn owners_of<'a>(&'a self, outside: &'a ObjectRecord) -> impl Iterator<Item = &'a ObjectKey> {
        outside.owner_references.iter().filter_map(move |reference| {
            let owner = resolve(outside, reference, |i| &self.nodes[i].record, &self.by_uid).ok()?;
            Some(&self.nodes[owner].record.key)
        })
    }

    fn node(&self, key: &ObjectKey) -> Option<&Node> {
        self.position(key).map(|i| &self.nodes[i])
    }

    fn position(&self, key: &ObjectKey) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.record.key.cmp(key)).ok()
    }
}

fn resolve<'r>(
    dependent: &ObjectRecord,
    reference: &OwnerReference,
    record_at: impl Fn(usize) -> &'r ObjectRecord,
    by_uid: &BTreeMap<String, usize>,
) -> Result<usize, DanglingReason> {
    let &owner = by_uid.get(&reference.uid).ok_or(DanglingReason::NotInSet)?;
    let found = record_at(owner);
    if found.kind != reference.kind
        || group_of(&found.api_version) != group_of(&reference.api_version)
        || found.key.name != reference.name
    {
        return Err(DanglingReason::IdentityMismatch {
            found: found.key.clone(),
        });
    }
    if let Some(owner_ns) = &found.key.namespace
        && dependent.key.namespace.as_ref() != Some(owner_ns)
    {
        return Err(DanglingReason::NamespaceMismatch {
            owner: found.key.clone(),
        });
    }
    Ok(owner)
}

/// Heights by an iterative depth-first walk over dependents (no recursion: a hostile archive may
/// hold a very long chain). A dependent met while still on the walk's path closes a cycle.
/// `floors` are the least heights (see [`OwnershipGraph::build_upper`]).
fn heights(
    records: &[ObjectRecord],
    dependents: &[BTreeSet<usize>],
    floors: &[usize],
) -> Result<Vec<usize>, OwnershipError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let dependents: Vec<Vec<usize>> = dependents.iter().map(|d| d.iter().copied().collect()).collect();
    let mut mark = vec![Mark::New; records.len()];
    let mut height = vec![0usize; records.len()];
    for root in 0..records.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Each frame: a node and how many of its dependents were visited.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(frame) = path.last_mut() {
            let node = frame.0;
            if let Some(&dep) = dependents[node].get(frame.1) {
                frame.1 += 1;
                match mark[dep] {
                    Mark::Done => {}
                    Mark::New => {
                        mark[dep] = Mark::OnPath;
                        path.push((dep, 0));
                    }
                    Mark::OnPath => {
                        // The path runs owner -> dependent; the cycle is dep .. node.
                        let start = path.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut objects: Vec<ObjectKey> = path[start..]
                            .iter()
                            .map(|&(n, _)| records[n].key.clone())
                            .collect();
                        // Report each object owned by the next: reverse owner -> dependent.
                        objects.reverse();
                        return Err(OwnershipError::Cycle { objects });
                    }
                }
            } else {
                height[node] = dependents[node]
                    .iter()
                    .map(|&d| height[d] + 1)
                    .max()
                    .unwrap_or(0)
                    .max(floors[node]);
                mark[node] = Mark::Done;
                path.pop();
            }
        }
    }
    Ok(height)
}

/// Records for tests of the graph and of the plans built on it (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub mod testing {
    use super::{ObjectKey, ObjectRecord, OwnerReference};

    /// A record of `kind` in group/resource derived from `key`, with `uid` and owners.
    pub fn record(key: &str, kind: &str, uid: &str, owners: &[(&str, &str, &str)]) -> ObjectRecord {
        let key: ObjectKey = key.parse().unwrap_or_else(|e| panic!("test key {key}: {e}"));
        let api_version = if key.group.is_empty() {
            "v1".to_owned()
        } else {
            format!("{}/v1", key.group)
        };
        ObjectRecord {
            key,
            uid: Some(uid.to_owned()),
            api_version,
            kind: kind.to_owned(),
            owner_references: owners
                .iter()
                .map(|(api_version, kind, uid_name)| OwnerReference {
                    api_version: (*api_version).to_owned(),
                    kind: (*kind).to_owned(),
                    name: uid_name.split(':').nth(1).unwrap_or_default().to_owned(),
                    uid: uid_name.split(':').next().unwrap_or_default().to_owned(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::record;
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> ObjectKey {
        s.parse().expect("test key")
    }

    fn deployment_chain() -> OwnershipGraph {
        OwnershipGraph::build([
            record("deployments.apps/shop/web", "Deployment", "d1", &[]),
            record(
                "replicasets.apps/shop/web-1",
                "ReplicaSet",
                "r1",
                &[("apps/v1", "Deployment", "d1:web")],
            ),
            record(
                "replicasets.apps/shop/web-0",
                "ReplicaSet",
                "r0",
                &[("apps/v1", "Deployment", "d1:web")],
            ),
            record(
                "pods/shop/web-1-a",
                "Pod",
                "p1",
                &[("apps/v1", "ReplicaSet", "r1:web-1")],
            ),
            record(
                "pods/shop/web-1-b",
                "Pod",
                "p2",
                &[("apps/v1", "ReplicaSet", "r1:web-1")],
            ),
            record("configmaps/shop/cfg", "ConfigMap", "c1", &[]),
        ])
        .expect("graph")
    }

    #[test]
    fn owners_dependents_and_heights_of_a_deployment() {
        let g = deployment_chain();
        assert_eq!(g.height(&key("pods/shop/web-1-a")), Some(0));
        assert_eq!(g.height(&key("replicasets.apps/shop/web-1")), Some(1));
        assert_eq!(
            g.height(&key("replicasets.apps/shop/web-0")),
            Some(0),
            "an empty ReplicaSet owns nothing"
        );
        assert_eq!(g.height(&key("deployments.apps/shop/web")), Some(2));
        assert_eq!(g.height(&key("configmaps/shop/cfg")), Some(0));
        assert_eq!(g.height(&key("pods/shop/nope")), None);
        assert_eq!(
            g.dependents(&key("deployments.apps/shop/web"))
                .collect::<Vec<_>>(),
            [
                &key("replicasets.apps/shop/web-0"),
                &key("replicasets.apps/shop/web-1")
            ]
        );
        assert_eq!(
            g.owners(&key("pods/shop/web-1-a")).collect::<Vec<_>>(),
            [&key("replicasets.apps/shop/web-1")]
        );
        assert_eq!(
            g.ancestors(&key("pods/shop/web-1-b"))
                .into_iter()
                .collect::<Vec<_>>(),
            [
                &key("deployments.apps/shop/web"),
                &key("replicasets.apps/shop/web-1")
            ]
        );
        assert_eq!(g.key_of_uid("r1"), Some(&key("replicasets.apps/shop/web-1")));
        assert!(g.dangling().is_empty());
    }

    #[test]
    fn custom_resource_owning_a_deployment_is_highest() {
        let g = OwnershipGraph::build([
            record("databases.example.com/shop/db", "Database", "x1", &[]),
            record(
                "statefulsets.apps/shop/db",
                "StatefulSet",
                "s1",
                &[("example.com/v1", "Database", "x1:db")],
            ),
            record(
                "pods/shop/db-0",
                "Pod",
                "p1",
                &[("apps/v1", "StatefulSet", "s1:db")],
            ),
            record(
                "controllerrevisions.apps/shop/db-5f",
                "ControllerRevision",
                "cr1",
                &[("apps/v1", "StatefulSet", "s1:db")],
            ),
        ])
        .expect("graph");
        assert_eq!(g.height(&key("databases.example.com/shop/db")), Some(2));
        assert_eq!(g.height(&key("statefulsets.apps/shop/db")), Some(1));
        assert_eq!(g.height(&key("controllerrevisions.apps/shop/db-5f")), Some(0));
    }

    #[test]
    fn dangling_references_are_reported_not_fatal() {
        let g = OwnershipGraph::build([
            record(
                "pods/shop/orphan",
                "Pod",
                "p1",
                &[("apps/v1", "ReplicaSet", "gone:web-1")],
            ),
            record("replicasets.apps/other/web-1", "ReplicaSet", "r1", &[]),
            record(
                "pods/shop/elsewhere",
                "Pod",
                "p2",
                &[("apps/v1", "ReplicaSet", "r1:web-1")],
            ),
            record(
                "pods/shop/renamed",
                "Pod",
                "p3",
                &[("apps/v1", "ReplicaSet", "r1:web-2")],
            ),
            record(
                "pods/shop/wrong-kind",
                "Pod",
                "p4",
                &[("apps/v1", "Deployment", "r1:web-1")],
            ),
            record(
                "persistentvolumes/pv1",
                "PersistentVolume",
                "v1",
                &[("v1", "Pod", "p1:orphan")],
            ),
        ])
        .expect("graph");
        let reasons: Vec<(String, DanglingReason)> = g
            .dangling()
            .iter()
            .map(|d| (d.dependent.to_string(), d.reason.clone()))
            .collect();
        let rs = key("replicasets.apps/other/web-1");
        assert_eq!(
            reasons,
            [
                (
                    "persistentvolumes/pv1".to_owned(),
                    DanglingReason::NamespaceMismatch {
                        owner: key("pods/shop/orphan")
                    }
                ),
                (
                    "pods/shop/elsewhere".to_owned(),
                    DanglingReason::NamespaceMismatch { owner: rs.clone() }
                ),
                ("pods/shop/orphan".to_owned(), DanglingReason::NotInSet),
                (
                    "pods/shop/renamed".to_owned(),
                    DanglingReason::IdentityMismatch { found: rs.clone() }
                ),
                (
                    "pods/shop/wrong-kind".to_owned(),
                    DanglingReason::IdentityMismatch { found: rs.clone() }
                ),
            ]
        );
        assert_eq!(g.height(&rs), Some(0));
        assert!(
            g.dangling()[2].to_string().contains("is not in the set"),
            "{}",
            g.dangling()[2]
        );
    }

    #[test]
    fn cluster_scoped_owner_of_namespaced_object_resolves() {
        let g = OwnershipGraph::build([
            record("tenants.example.com/acme", "Tenant", "t1", &[]),
            record(
                "deployments.apps/shop/web",
                "Deployment",
                "d1",
                &[("example.com/v1", "Tenant", "t1:acme")],
            ),
        ])
        .expect("graph");
        assert_eq!(g.height(&key("tenants.example.com/acme")), Some(1));
    }

    #[test]
    fn owner_reference_version_may_differ() {
        let g = OwnershipGraph::build([
            record("deployments.apps/shop/web", "Deployment", "d1", &[]),
            record(
                "replicasets.apps/shop/web-1",
                "ReplicaSet",
                "r1",
                &[("apps/v1beta2", "Deployment", "d1:web")],
            ),
        ])
        .expect("graph");
        assert_eq!(g.height(&key("deployments.apps/shop/web")), Some(1));
    }

    #[test]
    fn cycle_is_an_error_naming_its_objects() {
        let err = OwnershipGraph::build([
            record(
                "examples.example.com/ns/a",
                "Example",
                "a",
                &[("example.com/v1", "Example", "b:b")],
            ),
            record(
                "examples.example.com/ns/b",
                "Example",
                "b",
                &[("example.com/v1", "Example", "c:c")],
            ),
            record(
                "examples.example.com/ns/c",
                "Example",
                "c",
                &[("example.com/v1", "Example", "a:a")],
            ),
            record(
                "examples.example.com/ns/d",
                "Example",
                "d",
                &[("example.com/v1", "Example", "a:a")],
            ),
        ])
        .expect_err("cycle");
        let OwnershipError::Cycle { objects } = &err else {
            panic!("{err:?}")
        };
        let mut names: Vec<String> = objects.iter().map(|k| k.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        // Each object on the cycle is owned by the next.
        for (i, k) in objects.iter().enumerate() {
            let next = &objects[(i + 1) % objects.len()];
            let owner_of = |n: &str| match n {
                "a" => "b",
                "b" => "c",
                _ => "a",
            };
            assert_eq!(owner_of(&k.name), next.name);
        }
        assert!(
            err.to_string()
                .starts_with("ownership cycle: examples.example.com/ns/"),
            "{err}"
        );
    }

    #[test]
    fn self_ownership_is_a_cycle() {
        let err = OwnershipGraph::build([record(
            "examples.example.com/ns/a",
            "Example",
            "a",
            &[("example.com/v1", "Example", "a:a")],
        )])
        .expect_err("cycle");
        assert_eq!(
            err,
            OwnershipError::Cycle {
                objects: vec![key("examples.example.com/ns/a")]
            }
        );
    }

    #[test]
    fn duplicates_are_errors() {
        let err = OwnershipGraph::build([
            record("pods/a/x", "Pod", "1", &[]),
            record("pods/a/x", "Pod", "2", &[]),
        ])
        .expect_err("dup key");
        assert_eq!(err, OwnershipError::DuplicateKey(Box::new(key("pods/a/x"))));
        let err = OwnershipGraph::build([
            record("pods/a/x", "Pod", "1", &[]),
            record("pods/a/y", "Pod", "1", &[]),
        ])
        .expect_err("dup uid");
        assert!(matches!(err, OwnershipError::DuplicateUid { .. }), "{err:?}");
    }

    #[test]
    fn long_chain_does_not_overflow_the_stack() {
        let n = 50_000;
        let records = (0..n).map(|i| {
            let owner = format!("{}:o{}", i + 1, i + 1);
            let owners: Vec<(&str, &str, &str)> = if i + 1 < n {
                vec![("example.com/v1", "Example", owner.as_str())]
            } else {
                vec![]
            };
            record(
                &format!("examples.example.com/ns/o{i}"),
                "Example",
                &i.to_string(),
                &owners,
            )
        });
        let g = OwnershipGraph::build(records.collect::<Vec<_>>()).expect("graph");
        assert_eq!(
            g.height(&key(&format!("examples.example.com/ns/o{}", n - 1))),
            Some(n - 1)
        );
    }

    #[test]
    fn from_object_reads_owner_references() {
        let obj = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u0", "controller": true}
            ]}
        });
        let r = ObjectRecord::from_object(key("pods/ns/p"), &obj).expect("record");
        assert_eq!(r.uid.as_deref(), Some("u1"));
        assert_eq!(r.owner_references.len(), 1);
        assert_eq!(r.owner_references[0].uid, "u0");
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "ownerReferences": [{"kind": "ReplicaSet"}]}});
        assert!(matches!(
            ObjectRecord::from_object(key("pods/ns/p"), &bad),
            Err(OwnershipError::Malformed { .. })
        ));
    }

    /// Thirty objects and the ownership `edges` name among them (each pair oriented so that the
    /// owner has the greater index: acyclic); the records, and each object's owners.
    fn random_dag(edges: &[(usize, usize)]) -> (Vec<ObjectRecord>, Vec<Vec<usize>>) {
        let n = 30;
        let mut owners: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &(a, b) in edges {
            let (dep, owner) = match a.cmp(&b) {
                std::cmp::Ordering::Less => (a, b),
                std::cmp::Ordering::Greater => (b, a),
                std::cmp::Ordering::Equal => continue,
            };
            owners[dep].push(owner);
        }
        let names: Vec<String> = (0..n).map(|i| format!("{i}:o{i}")).collect();
        let records = (0..n)
            .map(|i| {
                let refs: Vec<(&str, &str, &str)> = owners[i]
                    .iter()
                    .map(|&o| ("example.com/v1", "Example", names[o].as_str()))
                    .collect();
                record(
                    &format!("examples.example.com/ns/o{i}"),
                    "Example",
                    &i.to_string(),
                    &refs,
                )
            })
            .collect();
        (records, owners)
    }

    proptest! {
        /// Heights obey their definition on random DAGs: an object's height exceeds each
        /// dependent's, and equals 0 exactly when it owns nothing.
        #[test]
        fn heights_follow_definition(edges in proptest::collection::vec((0usize..30, 0usize..30), 0..80)) {
            let (records, _) = random_dag(&edges);
            let g = OwnershipGraph::build(records).expect("acyclic");
            for k in g.keys() {
                let h = g.height(k).expect("height");
                let deps: Vec<_> = g.dependents(k).collect();
                prop_assert_eq!(h == 0, deps.is_empty());
                for d in deps {
                    prop_assert!(g.height(d).expect("height") < h);
                }
                if h > 0 {
                    prop_assert!(g.dependents(k).any(|d| g.height(d) == Some(h - 1)));
                }
            }
        }

        /// The upper part of a random DAG — the objects something owns — built with the rest
        /// streamed past has the whole graph's heights and edges among the part, and resolves
        /// the rest's references to the owners the whole graph gives them.
        #[test]
        fn the_upper_part_is_planned_as_the_whole(edges in proptest::collection::vec((0usize..30, 0usize..30), 0..80)) {
            let (records, owners) = random_dag(&edges);
            let whole = OwnershipGraph::build(records.clone()).expect("acyclic");
            let is_owner = |r: &ObjectRecord| owners.iter().flatten().any(|&o| Some(o.to_string()) == r.uid);
            let (upper, outside): (Vec<ObjectRecord>, Vec<ObjectRecord>) = records.into_iter().partition(is_owner);
            let part = OwnershipGraph::build_upper(upper.clone(), outside.clone()).expect("acyclic");
            prop_assert_eq!(part.len(), upper.len());
            for k in part.keys() {
                prop_assert_eq!(part.height(k), whole.height(k));
                prop_assert_eq!(part.owners(k).collect::<Vec<_>>(), whole.owners(k).collect::<Vec<_>>());
                let inside: Vec<_> = whole.dependents(k).filter(|d| part.contains(d)).collect();
                prop_assert_eq!(part.dependents(k).collect::<Vec<_>>(), inside);
            }
            for record in &outside {
                let mut found: Vec<_> = part.owners_of(record).collect();
                found.sort();
                found.dedup();
                prop_assert_eq!(found, whole.owners(&record.key).collect::<Vec<_>>());
            }
        }
    }
}
