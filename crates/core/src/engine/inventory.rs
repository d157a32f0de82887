//! The archived objects a run works from, with their ownership graph: the single source of
//! truth for promote and rollback.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::live::{LiveCluster, LiveError};
use crate::plan::transform::{TransformContext, restore_skip};
use kpromote_model::kosmos;
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::{ObjectRecord, OwnershipError, OwnershipGraph};

pub use crate::plan::twin::STAMP_ANNOTATION;

/// Why an archive cannot be worked from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// The archive is damaged, altered or of an unknown version.
    #[error(transparent)]
    Archive(#[from] kpromote_archive::ArchiveError),
    /// The archive cannot be verified (no manifest: e.g. a Velero tarball).
    #[error(
        "{path} cannot be verified (no kpromote manifest); promote and rollback only use verified archives"
    )]
    Unverifiable {
        /// The archive.
        path: std::path::PathBuf,
    },
    /// The objects' ownerReferences are inconsistent.
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
}

/// The archived objects of one run.
#[derive(Debug)]
pub struct Inventory {
    /// The archive's identity (SHA-256 of its manifest), written into [`STAMP_ANNOTATION`].
    pub archive_id: String,
    /// The archived objects by key: every one whole, or — from [`Inventory::for_rollback`] — the
    /// owners whole, only what rollback reads of a pod or of an object with finalizers or
    /// Kosmos marks (see [`slim`]), and nothing of the rest (the [`graph`](Self::graph) still
    /// names every object, with its type and uid).
    pub objects: BTreeMap<ObjectKey, Value>,
    /// Who owns whom among them.
    pub graph: OwnershipGraph,
    /// Objects whose archive entry could not be read, with why (only from
    /// [`Inventory::for_rollback`]). Their entry in `objects` is a stub made from the verified
    /// index: kind, name, namespace and uid, no spec.
    pub unreadable: BTreeMap<ObjectKey, String>,
    /// What the transforms need to know of the whole archive (see [`TransformContext::learn`]).
    pub facts: TransformContext,
    /// Objects the control-plane restore skips (see [`Inventory::skipped_by_restore`]).
    skipped: BTreeSet<ObjectKey>,
}

impl Inventory {
    /// Builds the inventory of `objects`.
    ///
    /// # Errors
    /// A malformed object or an ownership cycle.
    pub fn new(archive_id: &str, objects: BTreeMap<ObjectKey, Value>) -> Result<Self, OwnershipError> {
        let graph = OwnershipGraph::from_objects(objects.iter().map(|(k, v)| (k.clone(), v)))?;
        let mut facts = TransformContext::new();
        for object in objects.values() {
            facts.learn(object);
        }
        let skipped = objects
            .iter()
            .filter(|(_, object)| restore_skip(object, &facts).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        Ok(Self {
            archive_id: archive_id.to_owned(),
            objects,
            graph,
            unreadable: BTreeMap::new(),
            facts,
            skipped,
        })
    }

    /// Reads every object of a verified kpromote archive (each entry's SHA-256 is checked as it
    /// is read). A Velero tarball or an archive whose manifest cannot be anchored is refused:
    /// promote and rollback act only on what they can prove unaltered.
    ///
    /// # Errors
    /// Archive errors (corruption, tampering, unsupported version), malformed objects.
    pub fn from_archive(path: &std::path::Path) -> Result<Self, InventoryError> {
        let (reader, archive_id) = open_verified(path)?;
        let mut objects = BTreeMap::new();
        for object in reader.objects()? {
            let object = object?;
            let value = object.value()?;
            objects.insert(object.record.key(), value);
        }
        Ok(Self::new(&archive_id, objects)?)
    }

    /// Reads a verified archive for a rollback, streaming, so that memory grows with the owners
    /// and not with every object:
    ///
    /// - the ownership graph comes from the verified index, not from the bodies;
    /// - a first pass learns the archive facts (Services, Secrets: the only objects parsed);
    /// - a second pass decides what the restore skipped, and keeps whole only the objects rollback
    ///   may re-create (those that own something); of a pod, or an object with finalizers or
    ///   Kosmos marks, it keeps what rollback reads ([`slim`]); of the rest, nothing.
    ///
    /// One damaged entry must not block a rollback: a damaged one (checksum, size, undecodable
    /// frame) is kept as a stub made from its index record — verified through the manifest, it
    /// still names the object's kind and uid, and the graph is whole — and listed in
    /// [`Inventory::unreadable`] with why. Rollback unmarks, adopts and tears down with stubs; it
    /// cannot re-create an unreadable owner, and reports it.
    ///
    /// # Errors
    /// As [`Inventory::from_archive`], except damage confined to entries.
    pub fn for_rollback(path: &std::path::Path) -> Result<Self, InventoryError> {
        let (reader, archive_id) = open_verified(path)?;
        let mut records = Vec::new();
        for record in reader.records()? {
            records.push(object_record(&record?));
        }
        let graph = OwnershipGraph::build(records)?;
        let mut facts = TransformContext::new();
        for object in reader.objects_lenient()? {
            let Ok(object) = object else { continue };
            if TransformContext::learns_from(&object.record.group, &object.record.kind)
                && let Ok(value) = object.value()
            {
                facts.learn(&value);
            }
        }
        let mut objects = BTreeMap::new();
        let mut read = 0;
        let mut skipped = BTreeSet::new();
        let mut problems = Vec::new();
        for object in reader.objects_lenient()? {
            match object.and_then(|o| Ok((o.record.key(), o.value()?))) {
                Ok((key, value)) => {
                    if restore_skip(&value, &facts).is_some() {
                        skipped.insert(key.clone());
                    }
                    if graph.dependents(&key).next().is_some() {
                        objects.insert(key.clone(), value);
                    } else {
                        let slimmed = slim(&value);
                        if rollback_reads(&key, &slimmed) {
                            objects.insert(key.clone(), slimmed);
                        }
                    }
                    read += 1;
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let mut unreadable = BTreeMap::new();
        if read < graph.len() {
            // Only a damaged archive pays for knowing which entries were read: a third pass.
            let readable: BTreeSet<ObjectKey> = reader
                .objects_lenient()?
                .filter_map(|o| o.ok().filter(|o| o.value().is_ok()).map(|o| o.record.key()))
                .collect();
            for record in reader.records()? {
                let record = record?;
                let key = record.key();
                if readable.contains(&key) {
                    continue;
                }
                let why = problems
                    .iter()
                    .find(|p| p.contains(&record.path))
                    .cloned()
                    .unwrap_or_else(|| {
                        format!(
                            "{} is in a part of the archive that cannot be decoded",
                            record.path
                        )
                    });
                objects.insert(key.clone(), stub(&record));
                unreadable.insert(key, why);
            }
        }
        Ok(Self {
            archive_id,
            objects,
            graph,
            unreadable,
            facts,
            skipped,
        })
    }

    /// The dynamic API of archived `key` in `cluster`, typed from the verified index (so for
    /// objects whose body the rollback inventory does not keep too).
    ///
    /// # Errors
    /// [`LiveError::Malformed`] when `key` is not in the archive.
    pub fn api(
        &self,
        cluster: &LiveCluster,
        key: &ObjectKey,
    ) -> Result<kube::Api<kube::api::DynamicObject>, LiveError> {
        let record = self.graph.record(key).ok_or_else(|| LiveError::Malformed {
            key: key.clone(),
            detail: "not in the archive".to_owned(),
        })?;
        Ok(cluster.api(key, &record.api_version, &record.kind))
    }

    /// The archived UID of `key`.
    #[must_use]
    pub fn uid(&self, key: &ObjectKey) -> Option<&str> {
        self.graph.record(key).and_then(|r| r.uid.as_deref())
    }

    /// Objects the control-plane restore skips (completed pods and jobs, token secrets, …).
    /// They are never detached either: nothing would take their place.
    #[must_use]
    pub fn skipped_by_restore(&self) -> &BTreeSet<ObjectKey> {
        &self.skipped
    }

    /// Archived pods.
    pub fn pods(&self) -> impl Iterator<Item = (&ObjectKey, &Value)> {
        self.objects.iter().filter(|(k, _)| k.is("", "pods"))
    }
}

/// Opens a kpromote archive whose manifest is anchored, and its identity. A Velero tarball or an
/// archive whose manifest cannot be anchored is refused: promote and rollback act only on what
/// they can prove unaltered.
fn open_verified(
    path: &std::path::Path,
) -> Result<(kpromote_archive::ArchiveReader, String), InventoryError> {
    use kpromote_archive::{ArchiveKind, ArchiveReader};
    let unverifiable = || InventoryError::Unverifiable {
        path: path.to_owned(),
    };
    let reader = ArchiveReader::open(path)?;
    if reader.kind() != ArchiveKind::Kpromote || !reader.is_anchored() {
        return Err(unverifiable());
    }
    let archive_id = reader.manifest_sha256().ok_or_else(unverifiable)?;
    Ok((reader, archive_id))
}

/// What the index says of an object whose entry cannot be read.
fn stub(record: &kpromote_archive::IndexRecord) -> Value {
    serde_json::json!({
        "apiVersion": record.api_version,
        "kind": record.kind,
        "metadata": {
            "name": record.name,
            "namespace": record.namespace,
            "uid": record.uid,
        },
    })
}

/// The ownership record of an indexed object (the index holds what the graph needs).
fn object_record(record: &kpromote_archive::IndexRecord) -> ObjectRecord {
    ObjectRecord {
        key: record.key(),
        uid: record.uid.clone().filter(|uid| !uid.is_empty()),
        api_version: record.api_version.clone(),
        kind: record.kind.clone(),
        owner_references: record.owner_references.clone(),
    }
}

/// Whether rollback reads anything of an archived object beyond its type and uid, given its
/// [`slim`] copy: a pod's marks (unmarking restores them) and finalizers (teardown takes off the
/// copied ones).
fn rollback_reads(key: &ObjectKey, slimmed: &Value) -> bool {
    key.is("", "pods")
        || ["finalizers", "labels", "annotations"]
            .iter()
            .any(|field| slimmed["metadata"].get(*field).is_some())
}

/// What rollback reads of an archived object it does not re-create: its type, name, namespace,
/// uid and finalizers, and the Kosmos labels and kpromote annotation that unmarking restores —
/// the spec, status and every other field left out. (A pod's body is mostly spec, status and
/// managed fields; this keeps a few hundred bytes of it.)
#[must_use]
pub fn slim(object: &Value) -> Value {
    let meta = |field: &str| object.pointer(&format!("/metadata/{field}")).cloned();
    let only = |field: &str, keys: &[&str]| -> Option<Value> {
        let map = object.pointer(&format!("/metadata/{field}"))?.as_object()?;
        let kept: serde_json::Map<String, Value> = map
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!kept.is_empty()).then_some(Value::Object(kept))
    };
    let mut metadata = serde_json::Map::new();
    for (field, value) in [
        ("name", meta("name")),
        ("namespace", meta("namespace")),
        ("uid", meta("uid")),
        ("finalizers", meta("finalizers")),
        ("deletionTimestamp", meta("deletionTimestamp")),
        (
            "labels",
            only("labels", &[kosmos::POD_LABEL, kosmos::SYNCED_LABEL]),
        ),
        ("annotations", only("annotations", &[STAMP_ANNOTATION])),
    ] {
        if let Some(value) = value {
            metadata.insert(field.to_owned(), value);
        }
    }
    serde_json::json!({
        "apiVersion": object.get("apiVersion"),
        "kind": object.get("kind"),
        "metadata": metadata,
    })
}

/// Whether a live object carries the stamp of archive `archive_id`.
#[must_use]
pub fn stamped_by(live: &Value, archive_id: &str) -> bool {
    live.pointer("/metadata/annotations")
        .and_then(|a| a.get(STAMP_ANNOTATION))
        .and_then(Value::as_str)
        == Some(archive_id)
}

/// Adds the stamp of `archive_id` to an object about to be created.
pub fn stamp(object: &mut Value, archive_id: &str) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !annotations.is_object() {
            *annotations = Value::Object(serde_json::Map::new());
        }
        if let Some(map) = annotations.as_object_mut() {
            map.insert(STAMP_ANNOTATION.to_owned(), Value::String(archive_id.to_owned()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stamp_adds_the_annotation_and_keeps_others() {
        let mut obj = json!({ "metadata": { "name": "a", "annotations": { "keep": "me" } } });
        stamp(&mut obj, "abc");
        assert!(stamped_by(&obj, "abc"));
        assert!(!stamped_by(&obj, "other"));
        assert_eq!(obj["metadata"]["annotations"]["keep"], "me");
        let mut bare = json!({ "metadata": { "name": "b" } });
        stamp(&mut bare, "abc");
        assert!(stamped_by(&bare, "abc"));
    }

    /// An archive of a Deployment → ReplicaSet → two pods (one completed), a Service with a
    /// selector, its Endpoints, a token Secret and a ConfigMap.
    fn shop_archive(dir: &std::path::Path) -> std::path::PathBuf {
        use kpromote_archive::{
            ArchiveFacts, ArchiveWriter, Inclusion, NewObject, PolicyFacts, SourceCluster, WriterOptions,
        };
        let owner = |kind: &str, name: &str, uid: &str| json!([{ "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true }]);
        let pod = |name: &str, phase: &str| {
            json!({ "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": "shop", "uid": format!("{name}-uid"),
                    "labels": { "app": "web", "kosmos-io/pod": "true" },
                    "annotations": { STAMP_ANNOTATION: "x", "big": "y".repeat(2000) },
                    "finalizers": ["example.com/keep"],
                    "managedFields": [{ "manager": "kubelet", "fieldsV1": { "f:status": {} } }],
                    "ownerReferences": owner("ReplicaSet", "web-1", "rs-uid") },
                "spec": { "nodeName": "n1", "containers": [{ "name": "c", "image": "nginx" }] },
                "status": { "phase": phase } })
        };
        let objects = [
            (
                "deployments",
                "apps",
                json!({ "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "web", "namespace": "shop", "uid": "dep-uid", "generation": 1 },
                "spec": { "replicas": 2 } }),
            ),
            (
                "replicasets",
                "apps",
                json!({ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": { "name": "web-1", "namespace": "shop", "uid": "rs-uid",
                    "ownerReferences": owner("Deployment", "web", "dep-uid") },
                "spec": { "replicas": 2 } }),
            ),
            ("pods", "", pod("web-1-a", "Running")),
            ("pods", "", pod("web-1-b", "Succeeded")),
            (
                "services",
                "",
                json!({ "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "web", "namespace": "shop", "uid": "svc-uid" },
                "spec": { "selector": { "app": "web" } } }),
            ),
            (
                "endpoints",
                "",
                json!({ "apiVersion": "v1", "kind": "Endpoints",
                "metadata": { "name": "web", "namespace": "shop", "uid": "ep-uid" } }),
            ),
            (
                "secrets",
                "",
                json!({ "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                "metadata": { "name": "tok", "namespace": "shop", "uid": "tok-uid" } }),
            ),
            (
                "configmaps",
                "",
                json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "cfg", "namespace": "shop", "uid": "cfg-uid" }, "data": { "k": "v" } }),
            ),
        ];
        let facts = ArchiveFacts {
            created_at: "2026-12-02T00:00:00Z".into(),
            source: SourceCluster {
                name: "member".into(),
                server_version: "v1.35.4".into(),
            },
            policy: PolicyFacts {
                name: "test".into(),
                included_namespaces: vec!["shop".into()],
                excluded_resources: Vec::new(),
            },
            list_resource_versions: BTreeMap::default(),
        };
        let path = dir.join("shop.tar.zst");
        let mut writer = ArchiveWriter::create(&path, facts, WriterOptions::zstd()).unwrap();
        for (resource, group, object) in objects {
            let json = serde_json::to_vec(&object).unwrap();
            writer
                .add(NewObject::from_json(resource, group, Inclusion::Namespaced, json).unwrap())
                .unwrap();
        }
        writer.finish().unwrap();
        path
    }

    #[test]
    fn the_rollback_inventory_keeps_owners_whole_and_agrees_with_the_whole_one_on_what_rollback_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = shop_archive(dir.path());
        let whole = Inventory::from_archive(&path).unwrap();
        let lean = Inventory::for_rollback(&path).unwrap();
        assert!(lean.unreadable.is_empty());
        assert_eq!(lean.archive_id, whole.archive_id);
        assert_eq!(lean.facts, whole.facts);
        assert_eq!(lean.skipped_by_restore(), whole.skipped_by_restore());
        let skipped: Vec<String> = lean
            .skipped_by_restore()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            skipped,
            ["endpoints/shop/web", "pods/shop/web-1-b", "secrets/shop/tok"]
        );
        assert_eq!(
            lean.graph.keys().collect::<Vec<_>>(),
            whole.graph.keys().collect::<Vec<_>>()
        );
        for key in whole.graph.keys() {
            assert_eq!(lean.graph.record(key), whole.graph.record(key), "{key}");
            assert_eq!(lean.uid(key), whole.uid(key), "{key}");
            assert_eq!(
                lean.graph.dependents(key).collect::<Vec<_>>(),
                whole.graph.dependents(key).collect::<Vec<_>>()
            );
        }
        // The owners rollback may re-create are whole; pods are slim, with what unmarking and
        // teardown read of them; the rest is only in the graph.
        let kept: Vec<String> = lean.objects.keys().map(ToString::to_string).collect();
        assert_eq!(
            kept,
            [
                "pods/shop/web-1-a",
                "pods/shop/web-1-b",
                "deployments.apps/shop/web",
                "replicasets.apps/shop/web-1"
            ]
        );
        let kube_api = |inv: &Inventory, key: &ObjectKey| {
            let record = inv.graph.record(key).unwrap();
            (record.api_version.clone(), record.kind.clone())
        };
        for key in whole.graph.keys() {
            assert_eq!(kube_api(&lean, key), kube_api(&whole, key), "{key}");
        }
        for (key, object) in &lean.objects {
            let full = &whole.objects[key];
            if whole.graph.dependents(key).next().is_some() {
                assert_eq!(object, full, "{key}");
            } else {
                assert_eq!(object, &slim(full), "{key}");
                assert!(object.get("spec").is_none() && object.get("status").is_none());
                let live = json!({ "metadata": { "labels": { "kosmos-io/pod": "true", "kosmos-io/synced": "true" },
                    "annotations": { STAMP_ANNOTATION: "y" }, "finalizers": ["a"] } });
                assert_eq!(
                    crate::plan::twin::unmark_patch(object, &live),
                    crate::plan::twin::unmark_patch(full, &live),
                    "{key}"
                );
                assert_eq!(
                    object.pointer("/metadata/finalizers"),
                    full.pointer("/metadata/finalizers")
                );
                assert_eq!(
                    (object.get("apiVersion"), object.get("kind")),
                    (full.get("apiVersion"), full.get("kind"))
                );
            }
        }
        let pod = &lean.objects[&ObjectKey::namespaced("", "pods", "shop", "web-1-a")];
        let size = |v: &Value| serde_json::to_vec(v).unwrap().len();
        let full_pod = &whole.objects[&ObjectKey::namespaced("", "pods", "shop", "web-1-a")];
        assert!(
            size(pod) * 5 < size(full_pod),
            "{} vs {}",
            size(pod),
            size(full_pod)
        );
    }
}
