//! The archived objects a run works from, with their ownership graph: the single source of
//! truth for promote and rollback.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::plan::transform::{Prepared, Target, TransformContext, prepare};
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::{OwnershipError, OwnershipGraph};

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
    /// Every archived object by key.
    pub objects: BTreeMap<ObjectKey, Value>,
    /// Who owns whom among them.
    pub graph: OwnershipGraph,
    /// Objects whose archive entry could not be read, with why (only from
    /// [`Inventory::for_rollback`]). Their entry in `objects` is a stub made from the verified
    /// index: kind, name, namespace, uid and ownerReferences, no spec.
    pub unreadable: BTreeMap<ObjectKey, String>,
}

impl Inventory {
    /// Builds the inventory of `objects`.
    ///
    /// # Errors
    /// A malformed object or an ownership cycle.
    pub fn new(archive_id: &str, objects: BTreeMap<ObjectKey, Value>) -> Result<Self, OwnershipError> {
        let graph = OwnershipGraph::from_objects(objects.iter().map(|(k, v)| (k.clone(), v)))?;
        Ok(Self {
            archive_id: archive_id.to_owned(),
            objects,
            graph,
            unreadable: BTreeMap::new(),
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

    /// Reads a verified archive for a rollback, which must not be blocked by one damaged entry:
    /// every readable object is read, and a damaged one (checksum, size, undecodable frame) is
    /// kept as a stub made from its index record — verified through the manifest, it still names
    /// the object's kind, uid and owners, so the ownership graph is whole — and listed in
    /// [`Inventory::unreadable`] with why. Rollback unmarks, adopts and tears down with stubs;
    /// it cannot re-create an unreadable owner, and reports it.
    ///
    /// # Errors
    /// As [`Inventory::from_archive`], except damage confined to entries.
    pub fn for_rollback(path: &std::path::Path) -> Result<Self, InventoryError> {
        let (reader, archive_id) = open_verified(path)?;
        let mut objects = BTreeMap::new();
        let mut problems = Vec::new();
        for object in reader.objects_lenient()? {
            match object.and_then(|o| Ok((o.record.key(), o.value()?))) {
                Ok((key, value)) => {
                    objects.insert(key, value);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let mut unreadable = BTreeMap::new();
        for record in reader.records()? {
            let record = record?;
            let key = record.key();
            if objects.contains_key(&key) {
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
        Ok(Self {
            unreadable,
            ..Self::new(&archive_id, objects)?
        })
    }

    /// The archived UID of `key`.
    #[must_use]
    pub fn uid(&self, key: &ObjectKey) -> Option<&str> {
        self.objects
            .get(key)
            .and_then(|o| o.pointer("/metadata/uid"))
            .and_then(Value::as_str)
    }

    /// Objects the control-plane restore skips (completed pods and jobs, token secrets, …).
    /// They are never detached either: nothing would take their place.
    #[must_use]
    pub fn skipped_by_restore(&self, cluster_name: &str) -> BTreeSet<ObjectKey> {
        let target = Target::ControlPlane {
            cluster_name: cluster_name.to_owned(),
        };
        let ctx = TransformContext::for_control_plane(self.objects.values());
        self.objects
            .iter()
            .filter(|(_, obj)| matches!(prepare(obj, &target, &ctx), Ok(Prepared::Skip(_))))
            .map(|(k, _)| k.clone())
            .collect()
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
            "ownerReferences": record.owner_references,
        },
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
}
