//! The archived objects a run works from, with their ownership graph: the single source of
//! truth for promote and rollback.
//!
//! An [`Inventory`] holds the **upper part** of the ownership graph — the objects that own
//! something, the workloads, and the few objects of the restore's first phases (CRDs,
//! namespaces, admission policies) — whole, with what it must know of the rest of the archive;
//! every other object streams past from the archive again, a batch at a time, when a step needs
//! it ([`Inventory::scan`], [`Inventory::outside_of_kind`]). Its memory follows the owners, not
//! the object count. Promote and rollback read an archive the same way; they differ only in
//! what a damaged entry does ([`Inventory::for_promote`] refuses it, [`Inventory::for_rollback`]
//! works around it).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::live::{LiveCluster, LiveError};
use crate::plan::order::{DetachPlan, Level, Phase, RestorePlan, Tier};
use crate::plan::transform::{TransformContext, restore_skip};
use kpromote_archive::Identities;
use kpromote_model::kosmos::STAMP_ANNOTATION;
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
    /// Part of the archive cannot be decoded (promote acts only on an archive read whole).
    #[error(
        "{path}: {count} archived objects cannot be read (e.g. {first}); promote needs every object — take a new backup"
    )]
    Damaged {
        /// The archive.
        path: PathBuf,
        /// How many objects cannot be read.
        count: usize,
        /// One of them, with why.
        first: String,
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

/// The archived objects of one run: the upper part of the ownership graph, held, and the rest
/// streamed from the archive (see the [module docs](self)).
#[derive(Debug)]
pub struct Inventory {
    /// The archive's identity (SHA-256 of its manifest), written into [`STAMP_ANNOTATION`].
    archive_id: String,
    /// Who owns whom among the held objects, with the whole archive's heights (see
    /// [`OwnershipGraph::build_upper`]).
    graph: OwnershipGraph,
    /// Objects whose archive entry could not be read, with why ([`Inventory::for_rollback`]).
    unreadable: BTreeMap<ObjectKey, String>,
    /// What the transforms need to know of the whole archive (see [`TransformContext::learn`]).
    facts: TransformContext,
    /// Objects of the graph the control-plane restore skips (see [`Inventory::skipped_by_restore`]).
    skipped: BTreeSet<ObjectKey>,
    /// Objects of the graph that own a restored pod outside it.
    pod_owners: BTreeSet<ObjectKey>,
    /// The bodies of the graph's objects, as archived: JSON text is a fraction of the parsed
    /// tree's size, and a run reads each once or twice.
    packed: BTreeMap<ObjectKey, Box<[u8]>>,
    /// Stubs made from the verified index (kind, name, namespace and uid, no spec) of the graph's
    /// objects whose entry could not be read.
    graph_stubs: BTreeMap<ObjectKey, Value>,
    /// Stubs of unreadable objects outside the graph.
    stubs: BTreeMap<ObjectKey, Archived>,
    /// The read errors met building the inventory, as their messages: met again while
    /// streaming, they are known damage (whose stubs follow); any other error is new damage and
    /// stops the scan — skipping it would skip an object (a pod left marked).
    damage: BTreeSet<String>,
    /// How many objects outside the graph the archive holds, per (group, resource).
    outside: BTreeMap<(String, String), u64>,
    /// The archive the objects outside the graph stream from.
    path: PathBuf,
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
    /// Its body: whole for an object of the graph or from [`Inventory::outside_of_kind`]; what
    /// rollback reads of one streamed past by [`Inventory::scan`] ([`slim`]); a stub when its
    /// entry is unreadable; `Null` when the scan reads no bodies.
    pub object: Value,
}

impl Archived {
    /// The object's key.
    #[must_use]
    pub(crate) fn key(&self) -> &ObjectKey {
        &self.record.key
    }

    /// Its archived UID.
    #[must_use]
    pub(crate) fn uid(&self) -> Option<&str> {
        self.record.uid.as_deref()
    }

    /// Its dynamic API in `cluster`.
    #[must_use]
    pub(crate) fn api(&self, cluster: &LiveCluster) -> kube::Api<kube::api::DynamicObject> {
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

/// What a damaged archive entry does to reading the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// Refuses the archive.
    Refuse,
    /// Keeps a stub of the object, named in [`Inventory::unreadable`].
    Tolerate,
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

/// Whether an indexed object is held whole: it owns something (its uid is among `owner_uids`),
/// is a workload (what rollback may re-create), or belongs to a phase of the restore before
/// the objects (CRDs, namespaces) or after them (admission policies) — few, and waited on.
fn held(record: &kpromote_archive::IndexRecord, owner_uids: &HashSet<String>) -> bool {
    record.uid.as_ref().is_some_and(|uid| owner_uids.contains(uid))
        || kpromote_model::workload::is_controlled(&record.group, &record.resource)
        || Phase::of(&ObjectKey::cluster(&record.group, &record.resource, "x")) != Phase::Objects
}

impl Inventory {
    /// Reads a verified archive for a promote: as [`Inventory::for_rollback`], except that any
    /// entry that cannot be read refuses the archive — promote acts only on what it can prove
    /// unaltered, whole.
    ///
    /// # Errors
    /// Archive errors (corruption, tampering, unsupported version), malformed objects,
    /// [`InventoryError::Unverifiable`], [`InventoryError::Damaged`].
    pub fn for_promote(path: &Path) -> Result<Self, InventoryError> {
        Self::for_promote_with(path, &Identities::none())
    }

    /// As [`Inventory::for_promote`], opening sealed Secrets with `identities` — checked
    /// against the archive's recipients before any object is read, and kept for the streamed
    /// scans.
    ///
    /// # Errors
    /// As [`Inventory::for_promote`]; [`kpromote_archive::SealError`] (inside
    /// [`InventoryError::Archive`]) when the archive is sealed and no identity fits.
    pub fn for_promote_with(path: &Path, identities: &Identities) -> Result<Self, InventoryError> {
        Self::read(path, identities, Damage::Refuse)
    }

    /// Reads a verified archive (each entry's SHA-256 is checked as it is read), holding only
    /// the upper part of its ownership graph (see the [module docs](self)) and what a run must
    /// know of the whole archive. Three passes over the verified index (who is an owner; the
    /// held objects' records; the others' references, for heights), two over the bodies (the
    /// archive facts; the held objects' bodies, what the restore skips, which owners have a
    /// restored pod). A Velero tarball or an archive whose manifest cannot be anchored is
    /// refused.
    ///
    /// One damaged entry must not block a rollback: a damaged one (checksum, size, undecodable
    /// frame) is kept as a stub made from its index record — verified through the manifest, it
    /// still names the object's kind and uid — and listed in [`Inventory::unreadable`] with why.
    /// Rollback unmarks, adopts and tears down with stubs; it cannot re-create an unreadable
    /// owner, and reports it.
    ///
    /// # Errors
    /// As [`Inventory::for_promote`], except damage confined to entries.
    pub fn for_rollback(path: &Path) -> Result<Self, InventoryError> {
        Self::for_rollback_with(path, &Identities::none())
    }

    /// As [`Inventory::for_rollback`], opening sealed Secrets with `identities` (checked before
    /// anything is read, and kept for the streamed scans).
    ///
    /// # Errors
    /// As [`Inventory::for_promote_with`], except damage confined to entries.
    pub fn for_rollback_with(path: &Path, identities: &Identities) -> Result<Self, InventoryError> {
        Self::read(path, identities, Damage::Tolerate)
    }

    fn read(path: &Path, identities: &Identities, damage: Damage) -> Result<Self, InventoryError> {
        let (reader, archive_id) = open_verified(path, identities)?;
        let mut owner_uids: HashSet<String> = HashSet::new();
        let mut len = 0;
        for record in reader.records()? {
            let record = record?;
            len += 1;
            owner_uids.extend(record.owner_references.into_iter().map(|r| r.uid));
        }
        let mut upper = Vec::new();
        for record in reader.records()? {
            let record = record?;
            if held(&record, &owner_uids) {
                upper.push(object_record(&record));
            }
        }
        let mut failed = None;
        let mut outside: BTreeMap<(String, String), u64> = BTreeMap::new();
        let streamed = reader
            .records()?
            .map_while(|r| r.map_err(|e| failed = Some(e)).ok())
            .filter(|r| !held(r, &owner_uids))
            .inspect(|r| *outside.entry((r.group.clone(), r.resource.clone())).or_default() += 1)
            .map(|r| object_record(&r));
        let graph = OwnershipGraph::build_upper(upper, streamed)?;
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
                Err(e) if damage == Damage::Refuse => return Err(e.into()),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let mut graph_stubs = BTreeMap::new();
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
                    graph_stubs.insert(key.clone(), archived.object);
                } else {
                    // Whether it ran is unknown: its owners count as owning a restored pod.
                    if key.is("", "pods") {
                        pod_owners.extend(graph.owners_of(&archived.record).cloned());
                    }
                    stubs.insert(key.clone(), archived);
                }
                unreadable.insert(key, why);
            }
            if damage == Damage::Refuse
                && let Some((key, why)) = unreadable.first_key_value()
            {
                return Err(InventoryError::Damaged {
                    path: path.to_owned(),
                    count: unreadable.len(),
                    first: format!("{key}: {why}"),
                });
            }
        }
        Ok(Self {
            archive_id,
            graph,
            unreadable,
            facts,
            skipped,
            pod_owners,
            packed,
            graph_stubs,
            stubs,
            damage: problems.into_iter().collect(),
            outside,
            path: path.to_owned(),
            identities: identities.clone(),
            len,
        })
    }

    /// The archive's identity (SHA-256 of its manifest), written into [`STAMP_ANNOTATION`].
    #[must_use]
    pub fn archive_id(&self) -> &str {
        &self.archive_id
    }

    /// Who owns whom among the held objects (the upper part of the graph, with the whole
    /// archive's heights; see [`OwnershipGraph::build_upper`]).
    #[must_use]
    pub fn graph(&self) -> &OwnershipGraph {
        &self.graph
    }

    /// Objects whose archive entry could not be read, with why (only from
    /// [`Inventory::for_rollback`]; [`Inventory::for_promote`] refuses such an archive).
    #[must_use]
    pub fn unreadable(&self) -> &BTreeMap<ObjectKey, String> {
        &self.unreadable
    }

    /// What the transforms need to know of the whole archive (see [`TransformContext::learn`]).
    #[must_use]
    pub(crate) fn facts(&self) -> &TransformContext {
        &self.facts
    }

    /// The context for promote's transforms: the archive facts, and every held object the
    /// restore creates as pending. Only held objects can be named by an ownerReference (an
    /// owner is held), so only their UIDs are tracked.
    #[must_use]
    pub fn control_plane_context(&self) -> TransformContext {
        let mut ctx = self.facts.facts();
        for record in self.graph.keys().filter_map(|k| self.graph.record(k)) {
            if let Some(uid) = &record.uid
                && !self.skipped.contains(&record.key)
            {
                ctx.add_pending(uid);
            }
        }
        ctx
    }

    /// Whether the control-plane restore creates (or merges) `archived`, an object of this
    /// inventory with its whole body.
    #[must_use]
    pub(crate) fn restores(&self, archived: &Archived) -> bool {
        if self.graph.contains(archived.key()) {
            !self.skipped.contains(archived.key())
        } else {
            restore_skip(&archived.object, &self.facts).is_none()
        }
    }

    /// The restore plan of the whole archive (promote): the held objects level by level, and
    /// for each tier of the objects outside the graph — who own nothing, so are of height 0 —
    /// a level of height 0 that [`Inventory::outside_in`] fills as the restore streams them.
    #[must_use]
    pub fn restore_plan(&self) -> RestorePlan {
        let mut plan = RestorePlan::build(&self.graph);
        let tiers: BTreeSet<Tier> = self.outside.keys().map(|(g, r)| tier_of(g, r)).collect();
        for tier in tiers {
            let present = plan
                .levels
                .iter()
                .any(|l| l.phase == Phase::Objects && l.height == 0 && l.tier == tier);
            if !present {
                plan.levels.push(Level {
                    phase: Phase::Objects,
                    height: 0,
                    tier,
                    objects: Vec::new(),
                    wait_after: None,
                });
            }
        }
        // Stable: the wait points stay on the last level of their phases.
        plan.levels
            .sort_by(|a, b| (a.phase, a.height, &a.tier).cmp(&(b.phase, b.height, &b.tier)));
        plan
    }

    /// The kinds of the objects outside the graph that restore level `level` streams in (see
    /// [`Inventory::restore_plan`]), as (group, resource) with how many objects each.
    #[must_use]
    pub fn outside_in(&self, level: &Level) -> Vec<(&str, &str, u64)> {
        if level.phase != Phase::Objects || level.height != 0 {
            return Vec::new();
        }
        self.outside
            .iter()
            .filter(|((g, r), _)| tier_of(g, r) == level.tier)
            .map(|((g, r), n)| (g.as_str(), r.as_str(), *n))
            .collect()
    }

    /// How many objects of (`group`, `resource`) the archive holds outside the graph.
    #[must_use]
    pub(crate) fn outside_count(&self, group: &str, resource: &str) -> u64 {
        self.outside
            .get(&(group.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The objects of (`group`, `resource`) outside the graph, whole, in archive order, read
    /// from that kind's part of the archive only — which must still be the one the inventory
    /// was read from. Every entry must verify.
    ///
    /// # Errors
    /// The archive cannot be opened again, or was replaced; an item is an error when an entry
    /// cannot be read.
    pub(crate) fn outside_of_kind(&self, group: &str, resource: &str) -> Result<Scan<'_>, InventoryError> {
        let reader = self.reopen()?;
        let graph = &self.graph;
        let objects = reader.objects_of(resource, group)?.filter_map(move |object| {
            let object = match object {
                Ok(object) => object,
                Err(e) => return Some(Err(e.into())),
            };
            let record = object_record(&object.record);
            if graph.contains(&record.key) {
                return None;
            }
            Some(
                object
                    .value()
                    .map(|object| Archived { record, object })
                    .map_err(InventoryError::from),
            )
        });
        Ok(Scan {
            items: Box::new(objects),
        })
    }

    /// The archive again, refused when it is no longer the one the inventory was read from.
    fn reopen(&self) -> Result<kpromote_archive::ArchiveReader, InventoryError> {
        let (reader, archive_id) = open_verified(&self.path, &self.identities)?;
        if archive_id != self.archive_id {
            return Err(InventoryError::Replaced {
                path: self.path.clone(),
            });
        }
        Ok(reader)
    }

    /// Object `key` of the graph, with its body.
    #[must_use]
    pub(crate) fn archived(&self, key: &ObjectKey) -> Option<Archived> {
        self.of_graph(key, Bodies::Yes)
    }

    /// The body of `key`, an object of the graph (a stub when its entry is unreadable).
    #[must_use]
    pub(crate) fn body(&self, key: &ObjectKey) -> Option<std::borrow::Cow<'_, Value>> {
        if let Some(object) = self.graph_stubs.get(key) {
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
    pub(crate) fn scan<'a, F>(&'a self, wanted: F, bodies: Bodies) -> Result<Scan<'a>, InventoryError>
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
        let reader = self.reopen()?;
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
    /// those of the graph, then the others as they stream from the archive. `pod_bodies` asks
    /// for the pods' bodies as [`Inventory::scan`] reads them; other dependents come without
    /// (a namespace's thousands of ConfigMaps are not parsed for nothing).
    ///
    /// # Errors
    /// As [`Inventory::scan`]; an item is an error when the archive cannot be read further.
    pub(crate) fn dependents_of<'a>(
        &'a self,
        owners: &'a BTreeSet<ObjectKey>,
        pod_bodies: Bodies,
    ) -> Result<impl Iterator<Item = Result<(Archived, ObjectKey), InventoryError>> + Send + 'a, InventoryError>
    {
        let bodies = move |key: &ObjectKey| {
            if key.is("", "pods") {
                pod_bodies
            } else {
                Bodies::No
            }
        };
        let in_graph = owners.iter().flat_map(move |owner| {
            self.graph
                .dependents(owner)
                .filter_map(move |dependent| self.of_graph(dependent, bodies(dependent)))
                .map(move |archived| Ok((archived, owner.clone())))
        });
        let pods = |k: &ObjectKey| k.is("", "pods");
        let streamed = match pod_bodies {
            Bodies::No => self.rest(|_| true, Bodies::No)?.items,
            Bodies::Yes => Box::new(
                self.rest(pods, Bodies::Yes)?
                    .items
                    .chain(self.rest(move |k| !pods(k), Bodies::No)?.items),
            ),
        };
        let streamed = streamed.flat_map(move |item| {
            let pairs: Vec<Result<(Archived, ObjectKey), InventoryError>> = match item {
                Ok(archived) => self
                    .graph
                    .owners_of(&archived.record)
                    .filter(|owner| owners.contains(*owner))
                    .map(|owner| Ok((archived.clone(), owner.clone())))
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
    pub(crate) fn api(
        &self,
        cluster: &LiveCluster,
        key: &ObjectKey,
    ) -> Result<kube::Api<kube::api::DynamicObject>, LiveError> {
        let record = self.graph.record(key).ok_or_else(|| not_archived(key))?;
        Ok(cluster.api(key, &record.api_version, &record.kind))
    }

    /// The archived UID of `key`, an object of the graph.
    #[must_use]
    pub(crate) fn uid(&self, key: &ObjectKey) -> Option<&str> {
        self.graph.record(key).and_then(|r| r.uid.as_deref())
    }

    /// Objects of the graph the control-plane restore skips (completed pods and jobs, token
    /// secrets, …). They are never detached either: nothing would take their place.
    #[must_use]
    pub fn skipped_by_restore(&self) -> &BTreeSet<ObjectKey> {
        &self.skipped
    }
}

/// The restore tier of objects of (`group`, `resource`).
fn tier_of(group: &str, resource: &str) -> Tier {
    Tier::of(&ObjectKey::cluster(group, resource, "x"))
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
pub(crate) fn slim(object: &Value) -> Value {
    let meta = |field: &str| object.pointer(&format!("/metadata/{field}")).cloned();
    let mut metadata = serde_json::Map::new();
    for field in ["name", "namespace", "uid", "finalizers", "deletionTimestamp"] {
        if let Some(value) = meta(field) {
            metadata.insert(field.to_owned(), value);
        }
    }
    if let Value::Object(mut marks) = crate::plan::twin::archived_marks(object)
        && let Some(Value::Object(marks)) = marks.remove("metadata")
    {
        metadata.extend(marks);
    }
    serde_json::json!({
        "apiVersion": object.get("apiVersion"),
        "kind": object.get("kind"),
        "metadata": metadata,
    })
}

/// Whether a live object carries the stamp of archive `archive_id`.
#[must_use]
pub(crate) fn stamped_by(live: &Value, archive_id: &str) -> bool {
    live.pointer("/metadata/annotations")
        .and_then(|a| a.get(STAMP_ANNOTATION))
        .and_then(Value::as_str)
        == Some(archive_id)
}

/// Adds the stamp of `archive_id` to an object about to be created.
pub(crate) fn stamp(object: &mut Value, archive_id: &str) {
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

    /// Every object of the archive at `path`, whole, read directly.
    fn whole(path: &std::path::Path) -> BTreeMap<ObjectKey, Value> {
        let reader = kpromote_archive::ArchiveReader::open(path).unwrap();
        reader
            .objects()
            .unwrap()
            .map(|o| {
                let o = o.unwrap();
                (o.record.key(), o.value().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_inventory_holds_the_owners_and_streams_the_rest_as_the_archive_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = shop_archive(dir.path(), "2026-12-02T00:00:00Z");
        let whole = whole(&path);
        let whole_graph = OwnershipGraph::from_objects(whole.iter().map(|(k, v)| (k.clone(), v))).unwrap();
        let mut facts = TransformContext::new();
        whole.values().for_each(|o| facts.learn(o));
        let whole_skipped: BTreeSet<ObjectKey> = whole
            .iter()
            .filter(|(_, o)| restore_skip(o, &facts).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let lean = Inventory::for_rollback(&path).unwrap();
        let promoted = Inventory::for_promote(&path).unwrap();
        assert!(lean.unreadable().is_empty());
        assert_eq!(lean.archive_id(), promoted.archive_id());
        assert_eq!(lean.facts(), &facts);
        assert_eq!(lean.len(), 8);
        // Held: the owners and workloads, whole, planned with the whole archive's heights.
        let held: Vec<String> = lean.graph().keys().map(ToString::to_string).collect();
        assert_eq!(held, ["deployments.apps/shop/web", "replicasets.apps/shop/web-1"]);
        for key in lean.graph().keys() {
            assert_eq!(lean.graph().record(key), whole_graph.record(key), "{key}");
            assert_eq!(lean.graph().height(key), whole_graph.height(key), "{key}");
            assert_eq!(lean.body(key).unwrap().as_ref(), &whole[key], "{key}");
        }
        assert_eq!(
            lean.detach_plan(),
            DetachPlan::build(&whole_graph, &whole_skipped)
        );
        let skipped_held: BTreeSet<ObjectKey> = whole_skipped
            .iter()
            .filter(|k| lean.graph().contains(k))
            .cloned()
            .collect();
        assert_eq!(lean.skipped_by_restore(), &skipped_held);
        let owners = BTreeSet::from([
            ObjectKey::namespaced("apps", "replicasets", "shop", "web-1"),
            ObjectKey::namespaced("apps", "deployments", "shop", "web"),
        ]);
        let mut dependents: Vec<(ObjectKey, ObjectKey)> = lean
            .dependents_of(&owners, Bodies::No)
            .unwrap()
            .map(|pair| {
                let (archived, owner) = pair.unwrap();
                (archived.record.key, owner)
            })
            .collect();
        dependents.sort();
        let mut expected: Vec<(ObjectKey, ObjectKey)> = owners
            .iter()
            .flat_map(|o| whole_graph.dependents(o).map(|d| (d.clone(), o.clone())))
            .collect();
        expected.sort();
        // The two pods (streamed) and the ReplicaSet (of the graph).
        assert_eq!(dependents.len(), 3);
        assert_eq!(dependents, expected);
        // Streamed: every object, with the record the index has; bodies whole for the held
        // ones, what rollback reads for the others.
        let lean_all = all(&lean, Bodies::Yes);
        assert_eq!(lean_all.len(), 8);
        let keys_only: Vec<ObjectKey> = all(&lean, Bodies::No).iter().map(|a| a.key().clone()).collect();
        assert_eq!(keys_only, whole.keys().cloned().collect::<Vec<_>>());
        for lean_one in &lean_all {
            let key = lean_one.key();
            let full = &whole[key];
            assert_eq!(
                lean_one.record,
                ObjectRecord::from_object(key.clone(), full).unwrap(),
                "{key}"
            );
            if lean.graph().contains(key) {
                assert_eq!(&lean_one.object, full, "{key}");
                continue;
            }
            let object = &lean_one.object;
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
        let pod = ObjectKey::namespaced("", "pods", "shop", "web-1-a");
        let slim_pod = &lean_all.iter().find(|a| a.key() == &pod).unwrap().object;
        let size = |v: &Value| serde_json::to_vec(v).unwrap().len();
        assert!(size(slim_pod) * 5 < size(&whole[&pod]));
        // Only the objects outside the graph, once more, for the rest.
        let mut rest = lean.rest(|k| k.is("", "pods"), Bodies::No).unwrap();
        let pods = rest.next_batch(10).unwrap().unwrap();
        assert_eq!(pods.len(), 2);
        assert!(rest.next_batch(10).unwrap().is_none());
        // Whole, kind by kind, for promote; the completed pod and the token secret are not
        // restored.
        let mut pods = promoted.outside_of_kind("", "pods").unwrap();
        let pods = pods.next_batch(10).unwrap().unwrap();
        for archived in &pods {
            assert_eq!(&archived.object, &whole[archived.key()]);
            assert_eq!(
                promoted.restores(archived),
                !whole_skipped.contains(archived.key())
            );
        }
        assert_eq!(pods.iter().filter(|p| promoted.restores(p)).count(), 1);
    }

    #[test]
    fn the_restore_plan_streams_in_what_the_whole_plan_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = shop_archive(dir.path(), "2026-12-02T00:00:00Z");
        let whole = whole(&path);
        let whole_graph = OwnershipGraph::from_objects(whole.iter().map(|(k, v)| (k.clone(), v))).unwrap();
        let inv = Inventory::for_promote(&path).unwrap();
        let expected = RestorePlan::build(&whole_graph);
        let plan = inv.restore_plan();
        let levels = |plan: &RestorePlan, streamed: bool| -> Vec<(Phase, usize, Tier, BTreeSet<ObjectKey>)> {
            plan.levels
                .iter()
                .map(|level| {
                    let mut objects: BTreeSet<ObjectKey> = level.objects.iter().cloned().collect();
                    let outside = if streamed {
                        inv.outside_in(level)
                    } else {
                        Vec::new()
                    };
                    for (group, resource, n) in outside {
                        let mut scan = inv.outside_of_kind(group, resource).unwrap();
                        let batch = scan.next_batch(100).unwrap().unwrap_or_default();
                        assert_eq!(batch.len() as u64, n);
                        objects.extend(batch.into_iter().map(|a| a.record.key));
                    }
                    (level.phase, level.height, level.tier.clone(), objects)
                })
                .collect()
        };
        assert_eq!(levels(&plan, true), levels(&expected, false));
        let wait = |plan: &RestorePlan| plan.levels.iter().map(|l| l.wait_after).collect::<Vec<_>>();
        assert_eq!(wait(&plan), wait(&expected));
        // Only the owners' UIDs are tracked; the archive facts are the whole archive's.
        let ctx = inv.control_plane_context();
        assert!(ctx.is_pending("rs-uid") && ctx.is_pending("dep-uid"));
        assert!(!ctx.is_pending("cfg-uid"));
        let all: Vec<&Value> = whole.values().collect();
        assert_eq!(ctx.facts(), TransformContext::for_control_plane(all).facts());
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
