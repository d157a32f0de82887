//! The archived objects a run works from, with their ownership graph: the single source of
//! truth for promote and rollback.
//!
//! Promote holds every object ([`Inventory::from_archive`]). Rollback holds only the upper part
//! of the graph — the objects that own something, and the workloads — and streams the rest past
//! from the archive when it needs them ([`Inventory::for_rollback`], [`Inventory::scan`]): its
//! memory follows the owners, not the object count.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::live::{LiveCluster, LiveError};
use crate::plan::order::DetachPlan;
use crate::plan::transform::{TransformContext, restore_skip};
use kpromote_archive::Identities;
use kpromote_model::kosmos::{self, STAMP_ANNOTATION};
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::{ObjectRecord, OwnershipError, OwnershipGraph};

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
        path: PathBuf,
    },
    /// The archive file was replaced while the run streamed from it.
    #[error(
        "{path} is no longer the archive this run started from (its manifest changed); put the original back and run again"
    )]
    Replaced {
        /// The archive.
        path: PathBuf,
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
    /// Every archived object, whole ([`Inventory::from_archive`]); from
    /// [`Inventory::for_rollback`], only a stub made from the verified index (kind, name,
    /// namespace and uid, no spec) for each object of the graph whose entry could not be read —
    /// the others' bodies are kept packed (see [`Inventory::body`]).
    pub objects: BTreeMap<ObjectKey, Value>,
    /// Who owns whom: among every object ([`Inventory::from_archive`]), or among the upper part
    /// ([`Inventory::for_rollback`]; see [`OwnershipGraph::build_upper`]).
    pub graph: OwnershipGraph,
    /// Objects whose archive entry could not be read, with why (only from
    /// [`Inventory::for_rollback`]).
    pub unreadable: BTreeMap<ObjectKey, String>,
    /// What the transforms need to know of the whole archive (see [`TransformContext::learn`]).
    pub facts: TransformContext,
    /// Objects of the graph the control-plane restore skips (see [`Inventory::skipped_by_restore`]).
    skipped: BTreeSet<ObjectKey>,
    /// Objects of the graph that own a restored pod outside it.
    pod_owners: BTreeSet<ObjectKey>,
    /// The bodies of the graph's objects from [`Inventory::for_rollback`], as archived: JSON
    /// text is a fraction of the parsed tree's size, and rollback reads each once or twice.
    packed: BTreeMap<ObjectKey, Box<[u8]>>,
    /// Stubs of unreadable objects outside the graph.
    stubs: BTreeMap<ObjectKey, Archived>,
    /// The read errors met building the inventory, as their messages: met again while
    /// streaming, they are known damage (whose stubs follow); any other error is new damage and
    /// stops the scan — skipping it would skip an object (a pod left marked).
    damage: BTreeSet<String>,
    /// The archive the objects outside the graph stream from; `None` when the graph holds all.
    rest: Option<PathBuf>,
    /// The identities that open its sealed entries, for the streamed scans.
    identities: Identities,
    /// How many objects the archive holds.
    len: usize,
}

/// An archived object as a [`Scan`] yields it.
#[derive(Debug, Clone, PartialEq)]
pub struct Archived {
    /// Its key, type, uid and ownerReferences, from the verified index.
    pub record: ObjectRecord,
    /// Its body: whole for an object of the graph; what rollback reads of one streamed past
    /// ([`slim`]); a stub when its entry is unreadable; `Null` when the scan reads no bodies.
    pub object: Value,
}

impl Archived {
    /// The object's key.
    #[must_use]
    pub fn key(&self) -> &ObjectKey {
        &self.record.key
    }

    /// Its archived UID.
    #[must_use]
    pub fn uid(&self) -> Option<&str> {
        self.record.uid.as_deref()
    }

    /// Its dynamic API in `cluster`.
    #[must_use]
    pub fn api(&self, cluster: &LiveCluster) -> kube::Api<kube::api::DynamicObject> {
        cluster.api(&self.record.key, &self.record.api_version, &self.record.kind)
    }
}

/// Whether a scan reads the objects' bodies or only the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bodies {
    /// Only the index: key, type, uid, ownerReferences.
    No,
    /// The bodies too ([`slim`] for objects streamed past).
    Yes,
}

/// Archived objects, a batch at a time (see [`Inventory::scan`]).
pub struct Scan<'a> {
    items: Box<dyn Iterator<Item = Result<Archived, InventoryError>> + Send + 'a>,
}

impl std::fmt::Debug for Scan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan").finish_non_exhaustive()
    }
}

impl Scan<'_> {
    /// The next at most `n` objects; `None` when there are no more.
    ///
    /// # Errors
    /// The archive cannot be read further.
    pub fn next_batch(&mut self, n: usize) -> Result<Option<Vec<Archived>>, InventoryError> {
        let batch = self.items.by_ref().take(n).collect::<Result<Vec<_>, _>>()?;
        Ok((!batch.is_empty()).then_some(batch))
    }
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
            len: objects.len(),
            objects,
            graph,
            unreadable: BTreeMap::new(),
            facts,
            skipped,
            pod_owners: BTreeSet::new(),
            packed: BTreeMap::new(),
            stubs: BTreeMap::new(),
            damage: BTreeSet::new(),
            rest: None,
            identities: Identities::none(),
        })
    }

    /// Reads every object of a verified kpromote archive (each entry's SHA-256 is checked as it
    /// is read). A Velero tarball or an archive whose manifest cannot be anchored is refused:
    /// promote and rollback act only on what they can prove unaltered. An archive with sealed
    /// Secrets needs [`Inventory::from_archive_with`].
    ///
    /// # Errors
    /// Archive errors (corruption, tampering, unsupported version), malformed objects.
    pub fn from_archive(path: &Path) -> Result<Self, InventoryError> {
        Self::from_archive_with(path, &Identities::none())
    }

    /// As [`Inventory::from_archive`], opening sealed Secrets with `identities` — checked
    /// against the archive's recipients before any object is read.
    ///
    /// # Errors
    /// As [`Inventory::from_archive`]; [`kpromote_archive::SealError`] (inside
    /// [`InventoryError::Archive`]) when the archive is sealed and no identity fits.
    pub fn from_archive_with(path: &Path, identities: &Identities) -> Result<Self, InventoryError> {
        let (reader, archive_id) = open_verified(path, identities)?;
        let mut objects = BTreeMap::new();
        for object in reader.objects()? {
            let object = object?;
            let value = object.value()?;
            objects.insert(object.record.key(), value);
        }
        Ok(Self::new(&archive_id, objects)?)
    }

    /// Reads a verified archive for a rollback, holding only what rollback may re-create — the
    /// objects that own something and the workloads, whole, with the graph among them — and
    /// what it must know of the whole archive; every other object streams past again when a
    /// step needs it ([`Inventory::scan`]). Three passes over the verified index (who is an
    /// owner; the owners' records; the others' references, for heights), two over the bodies
    /// (the archive facts; the owners' bodies, what the restore skipped, which owners have a
    /// restored pod).
    ///
    /// One damaged entry must not block a rollback: a damaged one (checksum, size, undecodable
    /// frame) is kept as a stub made from its index record — verified through the manifest, it
    /// still names the object's kind and uid — and listed in [`Inventory::unreadable`] with why.
    /// Rollback unmarks, adopts and tears down with stubs; it cannot re-create an unreadable
    /// owner, and reports it.
    ///
    /// # Errors
    /// As [`Inventory::from_archive`], except damage confined to entries.
    pub fn for_rollback(path: &Path) -> Result<Self, InventoryError> {
        Self::for_rollback_with(path, &Identities::none())
    }

    /// As [`Inventory::for_rollback`], opening sealed Secrets with `identities` (checked before
    /// anything is read, and kept for the streamed scans).
    ///
    /// # Errors
    /// As [`Inventory::from_archive_with`], except damage confined to entries.
    pub fn for_rollback_with(path: &Path, identities: &Identities) -> Result<Self, InventoryError> {
        let (reader, archive_id) = open_verified(path, identities)?;
        let mut owner_uids: HashSet<String> = HashSet::new();
        let mut len = 0;
        for record in reader.records()? {
            let record = record?;
            len += 1;
            owner_uids.extend(record.owner_references.into_iter().map(|r| r.uid));
        }
        let in_upper = |record: &kpromote_archive::IndexRecord| {
            record.uid.as_ref().is_some_and(|uid| owner_uids.contains(uid))
                || kpromote_model::workload::is_controlled(&record.group, &record.resource)
        };
        let mut upper = Vec::new();
        for record in reader.records()? {
            let record = record?;
            if in_upper(&record) {
                upper.push(object_record(&record));
            }
        }
        let mut failed = None;
        let outside = reader
            .records()?
            .map_while(|r| r.map_err(|e| failed = Some(e)).ok())
            .filter(|r| !in_upper(r))
            .map(|r| object_record(&r));
        let graph = OwnershipGraph::build_upper(upper, outside)?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        drop(owner_uids);
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
        let mut packed = BTreeMap::new();
        let mut read = 0;
        let mut skipped = BTreeSet::new();
        let mut pod_owners = BTreeSet::new();
        let mut problems = Vec::new();
        for object in reader.objects_lenient()? {
            match object.and_then(|o| Ok((object_record(&o.record), o.value()?, o.json))) {
                Ok((record, value, json)) => {
                    read += 1;
                    let restored = restore_skip(&value, &facts).is_none();
                    if graph.contains(&record.key) {
                        if !restored {
                            skipped.insert(record.key.clone());
                        }
                        packed.insert(record.key, json.into_boxed_slice());
                    } else if restored && record.key.is("", "pods") {
                        pod_owners.extend(graph.owners_of(&record).cloned());
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let mut stubs = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        if read < len {
            // Only a damaged archive pays for knowing which entries were read: a third pass,
            // merging the readable entries with the index (both in path order).
            let mut readable = reader
                .objects_lenient()?
                .filter_map(|o| o.ok().filter(|o| o.value().is_ok()).map(|o| o.record.path))
                .peekable();
            for record in reader.records()? {
                let record = record?;
                while readable.next_if(|path| *path < record.path).is_some() {}
                if readable.next_if(|path| *path == record.path).is_some() {
                    continue;
                }
                let key = record.key();
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
                let archived = Archived {
                    record: object_record(&record),
                    object: stub(&record),
                };
                if graph.contains(&key) {
                    objects.insert(key.clone(), archived.object);
                } else {
                    // Whether it ran is unknown: its owners count as owning a restored pod.
                    if key.is("", "pods") {
                        pod_owners.extend(graph.owners_of(&archived.record).cloned());
                    }
                    stubs.insert(key.clone(), archived);
                }
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
            pod_owners,
            packed,
            stubs,
            damage: problems.into_iter().collect(),
            rest: Some(path.to_owned()),
            identities: identities.clone(),
            len,
        })
    }

    /// Object `key` of the graph, with its body.
    #[must_use]
    pub fn archived(&self, key: &ObjectKey) -> Option<Archived> {
        self.of_graph(key, Bodies::Yes)
    }

    /// The body of `key`, an object of the graph (a stub when its entry is unreadable).
    #[must_use]
    pub fn body(&self, key: &ObjectKey) -> Option<std::borrow::Cow<'_, Value>> {
        if let Some(object) = self.objects.get(key) {
            return Some(std::borrow::Cow::Borrowed(object));
        }
        // Verified when read, and parsed then: it parses again.
        let json = self.packed.get(key)?;
        serde_json::from_slice(json).ok().map(std::borrow::Cow::Owned)
    }

    fn of_graph(&self, key: &ObjectKey, bodies: Bodies) -> Option<Archived> {
        let object = match bodies {
            Bodies::Yes => self
                .body(key)
                .map(std::borrow::Cow::into_owned)
                .unwrap_or(Value::Null),
            Bodies::No => Value::Null,
        };
        Some(Archived {
            record: self.graph.record(key)?.clone(),
            object,
        })
    }

    /// How many objects the archive holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the archive holds no object.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every archived object `wanted` accepts: those of the graph first, in key order, then the
    /// others in archive order, streamed from the archive — which must still be the one the
    /// inventory was read from. `wanted` sees each key once.
    ///
    /// # Errors
    /// The archive cannot be opened again, or was replaced.
    pub fn scan<'a, F>(&'a self, wanted: F, bodies: Bodies) -> Result<Scan<'a>, InventoryError>
    where
        F: Fn(&ObjectKey) -> bool + Clone + Send + 'a,
    {
        let graph_part = {
            let wanted = wanted.clone();
            self.graph
                .keys()
                .filter(move |k| wanted(k))
                .filter_map(move |key| self.of_graph(key, bodies).map(Ok))
        };
        Ok(Scan {
            items: Box::new(graph_part.chain(self.rest(wanted, bodies)?.items)),
        })
    }

    /// As [`Inventory::scan`], the objects outside the graph only.
    ///
    /// # Errors
    /// As [`Inventory::scan`].
    pub fn rest<'a, F>(&'a self, wanted: F, bodies: Bodies) -> Result<Scan<'a>, InventoryError>
    where
        F: Fn(&ObjectKey) -> bool + Clone + Send + 'a,
    {
        let Some(path) = &self.rest else {
            return Ok(Scan {
                items: Box::new(std::iter::empty()),
            });
        };
        let (reader, archive_id) = open_verified(path, &self.identities)?;
        if archive_id != self.archive_id {
            return Err(InventoryError::Replaced { path: path.clone() });
        }
        let graph = &self.graph;
        let outside = {
            let wanted = wanted.clone();
            move |key: &ObjectKey| !graph.contains(key) && wanted(key)
        };
        let streamed: Box<dyn Iterator<Item = Result<Archived, InventoryError>> + Send + 'a> = match bodies {
            Bodies::No => Box::new(reader.records()?.filter_map(move |record| match record {
                Ok(record) => {
                    let record = object_record(&record);
                    outside(&record.key).then_some(Ok(Archived {
                        record,
                        object: Value::Null,
                    }))
                }
                Err(e) => Some(Err(e.into())),
            })),
            Bodies::Yes => {
                let wanted_here = outside.clone();
                let damage = &self.damage;
                let known = move |e: &kpromote_archive::ArchiveError| damage.contains(&e.to_string());
                // Entries damaged when the inventory was read are skipped here and come back as
                // stubs below; damage found only now stops the scan.
                let read = reader.objects_lenient()?.filter_map(move |object| {
                    let object = match object {
                        Ok(object) => object,
                        Err(e) if known(&e) => return None,
                        Err(e) => return Some(Err(e.into())),
                    };
                    let record = object_record(&object.record);
                    if !wanted_here(&record.key) {
                        return None;
                    }
                    match object.value() {
                        Ok(value) => Some(Ok(Archived {
                            record,
                            object: slim(&value),
                        })),
                        Err(e) if known(&e) => None,
                        Err(e) => Some(Err(e.into())),
                    }
                });
                let stubs = self
                    .stubs
                    .values()
                    .filter(move |a| outside(a.key()))
                    .map(|a| Ok(a.clone()));
                Box::new(read.chain(stubs))
            }
        };
        Ok(Scan { items: streamed })
    }

    /// What detach deleted in the member (see [`DetachPlan`]): the owners rollback re-creates
    /// when they are missing.
    #[must_use]
    pub fn detach_plan(&self) -> DetachPlan {
        DetachPlan::build_with(&self.graph, &self.skipped, &self.pod_owners)
    }

    /// The archived dependents of `owners` (objects of the graph), each with the owner it names:
    /// those of the graph, then the others as they stream from the archive.
    ///
    /// # Errors
    /// As [`Inventory::scan`]; an item is an error when the archive cannot be read further.
    pub fn dependents_of<'a>(
        &'a self,
        owners: &'a BTreeSet<ObjectKey>,
    ) -> Result<
        impl Iterator<Item = Result<(ObjectRecord, ObjectKey), InventoryError>> + Send + 'a,
        InventoryError,
    > {
        let in_graph = owners.iter().flat_map(move |owner| {
            self.graph
                .dependents(owner)
                .filter_map(|dependent| self.graph.record(dependent))
                .map(move |record| Ok((record.clone(), owner.clone())))
        });
        let streamed = self.rest(|_| true, Bodies::No)?.items.flat_map(move |item| {
            let pairs: Vec<Result<(ObjectRecord, ObjectKey), InventoryError>> = match item {
                Ok(archived) => self
                    .graph
                    .owners_of(&archived.record)
                    .filter(|owner| owners.contains(*owner))
                    .map(|owner| Ok((archived.record.clone(), owner.clone())))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            pairs
        });
        Ok(in_graph.chain(streamed))
    }

    /// The dynamic API of archived `key`, an object of the graph, in `cluster`.
    ///
    /// # Errors
    /// [`LiveError::Malformed`] when `key` is not in the graph.
    pub fn api(
        &self,
        cluster: &LiveCluster,
        key: &ObjectKey,
    ) -> Result<kube::Api<kube::api::DynamicObject>, LiveError> {
        let record = self.graph.record(key).ok_or_else(|| not_archived(key))?;
        Ok(cluster.api(key, &record.api_version, &record.kind))
    }

    /// The archived UID of `key`, an object of the graph.
    #[must_use]
    pub fn uid(&self, key: &ObjectKey) -> Option<&str> {
        self.graph.record(key).and_then(|r| r.uid.as_deref())
    }

    /// Objects of the graph the control-plane restore skips (completed pods and jobs, token
    /// secrets, …). They are never detached either: nothing would take their place.
    #[must_use]
    pub fn skipped_by_restore(&self) -> &BTreeSet<ObjectKey> {
        &self.skipped
    }

    /// Archived pods of the graph (every one, from [`Inventory::from_archive`]).
    pub fn pods(&self) -> impl Iterator<Item = (&ObjectKey, &Value)> {
        self.objects.iter().filter(|(k, _)| k.is("", "pods"))
    }
}

/// Opens a kpromote archive whose manifest is anchored, and its identity. A Velero tarball or an
/// archive whose manifest cannot be anchored is refused: promote and rollback act only on what
/// they can prove unaltered. A sealed archive is refused here, before anything else is read,
/// unless one of `identities` is a recipient.
fn open_verified(
    path: &Path,
    identities: &Identities,
) -> Result<(kpromote_archive::ArchiveReader, String), InventoryError> {
    use kpromote_archive::ArchiveKind;
    let unverifiable = || InventoryError::Unverifiable {
        path: path.to_owned(),
    };
    let mut reader = open_archive(path)?;
    if reader.kind() != ArchiveKind::Kpromote || !reader.is_anchored() {
        return Err(unverifiable());
    }
    reader.unseal_with(identities)?;
    let archive_id = reader.manifest_sha256().ok_or_else(unverifiable)?;
    Ok((reader, archive_id))
}

/// Opens the archive at `path`: a file, or an `s3://` object read by ranged requests.
///
/// # Errors
/// As [`kpromote_archive::ArchiveReader::open`]; a malformed URL is an I/O error naming it.
pub fn open_archive(path: &Path) -> Result<kpromote_archive::ArchiveReader, kpromote_archive::ArchiveError> {
    let at = crate::storage::ArchiveLocation::of(path)
        .map_err(|e| kpromote_archive::ArchiveError::io(path, std::io::Error::other(e.to_string())))?;
    at.open(kpromote_archive::ReaderOptions::default())
}

/// The error for a key the inventory does not hold.
pub(super) fn not_archived(key: &ObjectKey) -> LiveError {
    LiveError::Malformed {
        key: key.clone(),
        detail: "not in the archive".to_owned(),
    }
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
    fn shop_archive(dir: &std::path::Path, created_at: &str) -> std::path::PathBuf {
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
            created_at: created_at.into(),
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

    fn all(inv: &Inventory, bodies: Bodies) -> Vec<Archived> {
        let mut scan = inv.scan(|_| true, bodies).unwrap();
        let mut all = Vec::new();
        while let Some(batch) = scan.next_batch(3).unwrap() {
            all.extend(batch);
        }
        all.sort_by(|a, b| a.key().cmp(b.key()));
        all
    }

    #[test]
    fn the_rollback_inventory_holds_the_owners_and_streams_the_rest_as_the_whole_one_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = shop_archive(dir.path(), "2026-12-02T00:00:00Z");
        let whole = Inventory::from_archive(&path).unwrap();
        let lean = Inventory::for_rollback(&path).unwrap();
        assert!(lean.unreadable.is_empty());
        assert_eq!(lean.archive_id, whole.archive_id);
        assert_eq!(lean.facts, whole.facts);
        assert_eq!((lean.len(), whole.len()), (8, 8));
        // Held: the owners and workloads, whole, planned with the whole archive's heights.
        let held: Vec<String> = lean.graph.keys().map(ToString::to_string).collect();
        assert_eq!(held, ["deployments.apps/shop/web", "replicasets.apps/shop/web-1"]);
        for key in lean.graph.keys() {
            assert_eq!(lean.graph.record(key), whole.graph.record(key), "{key}");
            assert_eq!(lean.graph.height(key), whole.graph.height(key), "{key}");
            assert_eq!(lean.body(key).unwrap().as_ref(), &whole.objects[key], "{key}");
        }
        assert!(lean.objects.is_empty());
        assert_eq!(lean.detach_plan(), whole.detach_plan());
        let skipped_held: BTreeSet<ObjectKey> = whole
            .skipped_by_restore()
            .iter()
            .filter(|k| lean.graph.contains(k))
            .cloned()
            .collect();
        assert_eq!(lean.skipped_by_restore(), &skipped_held);
        let owners = BTreeSet::from([
            ObjectKey::namespaced("apps", "replicasets", "shop", "web-1"),
            ObjectKey::namespaced("apps", "deployments", "shop", "web"),
        ]);
        let dependents = |inv: &Inventory| {
            let mut pairs: Vec<(ObjectRecord, ObjectKey)> =
                inv.dependents_of(&owners).unwrap().map(Result::unwrap).collect();
            pairs.sort_by(|a, b| a.0.key.cmp(&b.0.key));
            pairs
        };
        let (lean_dependents, whole_dependents) = (dependents(&lean), dependents(&whole));
        // The two pods (streamed) and the ReplicaSet (of the graph).
        assert_eq!(lean_dependents.len(), 3);
        assert_eq!(lean_dependents, whole_dependents);
        // Streamed: every object, with the record the whole inventory has; bodies whole for the
        // held ones, what rollback reads for the others.
        let (lean_all, whole_all) = (all(&lean, Bodies::Yes), all(&whole, Bodies::Yes));
        assert_eq!(lean_all.len(), 8);
        let keys_only: Vec<ObjectKey> = all(&lean, Bodies::No).iter().map(|a| a.key().clone()).collect();
        assert_eq!(
            keys_only,
            lean_all.iter().map(|a| a.key().clone()).collect::<Vec<_>>()
        );
        for (lean_one, whole_one) in lean_all.iter().zip(&whole_all) {
            let key = lean_one.key();
            assert_eq!(lean_one.record, whole_one.record, "{key}");
            if lean.graph.contains(key) {
                assert_eq!(lean_one.object, whole_one.object, "{key}");
                continue;
            }
            let (object, full) = (&lean_one.object, &whole_one.object);
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
        }
        let pod = |all: &[Archived]| {
            let key = ObjectKey::namespaced("", "pods", "shop", "web-1-a");
            let found = all.iter().find(|a| a.key() == &key).unwrap();
            serde_json::to_vec(&found.object).unwrap().len()
        };
        assert!(
            pod(&lean_all) * 5 < pod(&whole_all),
            "{} vs {}",
            pod(&lean_all),
            pod(&whole_all)
        );
        // Only the objects of the graph, once more, for the rest.
        let mut rest = lean.rest(|k| k.is("", "pods"), Bodies::No).unwrap();
        let pods = rest.next_batch(10).unwrap().unwrap();
        assert_eq!(pods.len(), 2);
        assert!(rest.next_batch(10).unwrap().is_none());
    }

    #[test]
    fn a_rollback_refuses_to_stream_from_an_archive_replaced_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = shop_archive(dir.path(), "2026-12-02T00:00:00Z");
        let lean = Inventory::for_rollback(&path).unwrap();
        let other = tempfile::tempdir().unwrap();
        // The same objects, backed up a minute later: another manifest.
        let replacement = shop_archive(other.path(), "2026-12-02T00:01:00Z");
        std::fs::copy(&replacement, &path).unwrap();
        assert!(matches!(
            lean.scan(|_| true, Bodies::No),
            Err(InventoryError::Replaced { .. })
        ));
    }
}
