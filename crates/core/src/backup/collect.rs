//! The reading side of a backup: discovery and checks ([`prepare`]), opening every list
//! ([`open_lists`]), then draining the lists and fetching the dependencies ([`drain`]), handing
//! each object to an optional sink (the archive writer; none for a dry run).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::resources::{ApiSurface, ExcludedResources, GroupResource, ServedResource, well_known};
use kpromote_archive::{Inclusion, NewObject};
use kpromote_model::{ObjectKey, OwnerReference};

use super::dependencies::{
    ClusterObjectRef, Dependency, DependencyCollector, Reason, binding_subject_in, reads_fields_of,
    references,
};
use super::error::BackupError;
use super::lister::{ListError, ListEvent, ListRequest, RawObject, list_raw};
use super::report::{
    BackupProgress, BackupWarning, Collected, CollectedDependency, SkipReason, SkippedObject, list_key,
};
use super::request::BackupRequest;

/// Lists opened at once while taking the snapshots (one small request each).
const OPEN_CONCURRENCY: usize = 8;

/// Discovery done, names resolved, namespaces checked: what the lists need.
pub(crate) struct Prepared {
    pub namespaces: Vec<String>,
    pub surface: ApiSurface,
    pub excluded: ExcludedResources,
    pub types: Vec<ServedResource>,
    pub server_version: String,
    pub warnings: Vec<BackupWarning>,
}

/// Validates the request, runs discovery, resolves the exclusions and checks that every
/// namespace exists and is not being deleted. Reads nothing else and writes nothing.
pub(crate) async fn prepare(client: &kube::Client, request: &BackupRequest) -> Result<Prepared, BackupError> {
    request.validate()?;
    let surface = ApiSurface::discover(client)
        .await
        .map_err(BackupError::Discovery)?;
    let excluded = surface
        .resolve_exclusions(request.excluded_names())
        .map_err(BackupError::InvalidExclusions)?;
    let namespaces = request.namespaces_sorted();
    let api: Api<Namespace> = Api::all(client.clone());
    for namespace in &namespaces {
        let found = api
            .get_opt(namespace)
            .await
            .map_err(|e| BackupError::from_get(format!("namespace {namespace}"), e))?;
        match found {
            None => {
                return Err(BackupError::NamespaceNotFound {
                    namespace: namespace.clone(),
                });
            }
            Some(ns) => {
                if let Some(since) = ns.metadata.deletion_timestamp {
                    return Err(BackupError::NamespaceTerminating {
                        namespace: namespace.clone(),
                        since: since.0.to_string(),
                    });
                }
            }
        }
    }
    let types: Vec<ServedResource> = surface.backup_types(&excluded).into_iter().cloned().collect();
    let warnings = surface
        .warnings()
        .iter()
        .map(|w| BackupWarning::DiscoveryFailed { failure: w.clone() })
        .collect();
    let server_version = surface.server_version().unwrap_or("unknown").to_owned();
    Ok(Prepared {
        namespaces,
        surface,
        excluded,
        types,
        server_version,
        warnings,
    })
}

/// What a list is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListRole {
    /// Objects of an included namespace.
    Namespaced,
    /// Every ClusterRoleBinding; those binding an included namespace's accounts are kept.
    ClusterRoleBindings,
}

/// A list whose snapshot is taken and whose objects are yet to be read.
pub(crate) struct OpenList {
    resource: GroupResource,
    namespace: Option<String>,
    role: ListRole,
    stream: BoxStream<'static, Result<ListEvent<RawObject>, ListError>>,
}

/// The lists of a backup, opened: each has fetched a first page of one object, so every
/// snapshot is taken (and its resourceVersion known) before any list is drained.
pub(crate) struct OpenLists {
    pub lists: Vec<OpenList>,
    pub resource_versions: BTreeMap<String, String>,
    pub warnings: Vec<BackupWarning>,
}

/// Opens one list per (type, namespace) and the cluster-wide ClusterRoleBinding list.
pub(crate) async fn open_lists(
    client: &kube::Client,
    prepared: &Prepared,
    request: &BackupRequest,
) -> Result<OpenLists, BackupError> {
    let mut specs: Vec<(ServedResource, Option<String>, ListRole)> = Vec::new();
    for served in &prepared.types {
        for ns in &prepared.namespaces {
            specs.push((served.clone(), Some(ns.clone()), ListRole::Namespaced));
        }
    }
    if let Some(crbs) = prepared.surface.get(&well_known::CLUSTER_ROLE_BINDINGS) {
        specs.push((crbs.clone(), None, ListRole::ClusterRoleBindings));
    }
    emit(request, BackupProgress::Planned { lists: specs.len() });
    let page_size = request.page_size;
    let opened: Vec<Option<(OpenList, Option<String>)>> = stream::iter(specs)
        .map(|(served, namespace, role)| {
            let client = client.clone();
            async move {
                let mut list = ListRequest::new(&served).page_size(page_size).first_page_size(1);
                if let Some(ns) = &namespace {
                    list = list.in_namespace(ns.clone());
                }
                let mut stream = list_raw(client, list).boxed();
                let resource = served.group_resource.clone();
                match stream.next().await {
                    Some(Ok(ListEvent::Snapshot { resource_version, .. })) => Ok(Some((
                        OpenList {
                            resource,
                            namespace,
                            role,
                            stream,
                        },
                        resource_version,
                    ))),
                    Some(Err(err)) if is_not_found(&err) => Ok(None),
                    Some(Err(err)) => Err(BackupError::from_list(err)),
                    // The lister always starts with a snapshot.
                    Some(Ok(ListEvent::Object(_))) | None => Ok(None),
                }
            }
        })
        .buffered(OPEN_CONCURRENCY)
        .try_collect()
        .await?;
    let mut lists = Vec::new();
    let mut resource_versions = BTreeMap::new();
    let mut warnings = Vec::new();
    for (list, rv) in opened.into_iter().flatten() {
        if let Some(rv) = rv {
            resource_versions.insert(list_key(&list.resource, list.namespace.as_deref()), rv);
        }
        lists.push(list);
    }
    // A type that answered 404 vanished between discovery and its list.
    let opened_keys: BTreeSet<(GroupResource, Option<String>)> = lists
        .iter()
        .map(|l| (l.resource.clone(), l.namespace.clone()))
        .collect();
    for served in &prepared.types {
        for ns in &prepared.namespaces {
            if !opened_keys.contains(&(served.group_resource.clone(), Some(ns.clone()))) {
                warnings.push(BackupWarning::TypeVanished {
                    resource: served.group_resource.clone(),
                    namespace: Some(ns.clone()),
                });
            }
        }
    }
    Ok(OpenLists {
        lists,
        resource_versions,
        warnings,
    })
}

fn is_not_found(err: &ListError) -> bool {
    matches!(err, ListError::Api { source: kube::Error::Api(status), .. } if status.code == 404)
}

/// Where read objects go: the archive writer, or nowhere (dry run).
pub(crate) type Sink = Option<mpsc::Sender<NewObject>>;

/// Why [`drain`] stopped.
pub(crate) enum DrainError {
    /// Reading failed.
    Backup(BackupError),
    /// The sink is gone: the archive writer stopped (its own error says why).
    SinkClosed,
}

impl From<BackupError> for DrainError {
    fn from(err: BackupError) -> Self {
        Self::Backup(err)
    }
}

/// Shared state of the draining tasks.
#[derive(Default)]
struct State {
    collector: DependencyCollector,
    objects: BTreeMap<GroupResource, u64>,
    present: BTreeSet<ClusterObjectRef>,
    skipped: Vec<SkippedObject>,
    warnings: Vec<BackupWarning>,
}

struct Shared<'a> {
    state: Mutex<State>,
    total: AtomicU64,
    lists_done: AtomicUsize,
    request: &'a BackupRequest,
    sink: Sink,
}

impl Shared<'_> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn store(&self, object: NewObject) -> Result<(), DrainError> {
        if let Some(sink) = &self.sink {
            sink.send(object).await.map_err(|_| DrainError::SinkClosed)?;
        }
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        emit(self.request, BackupProgress::Object { total });
        Ok(())
    }
}

/// Reads every open list to the end and then every dependency, handing each object to `sink`.
pub(crate) async fn drain(
    client: &kube::Client,
    prepared: &Prepared,
    open: OpenLists,
    request: &BackupRequest,
    sink: Sink,
) -> Result<Collected, DrainError> {
    let shared = Shared {
        state: Mutex::new(State {
            collector: DependencyCollector::new(prepared.namespaces.iter().cloned()),
            warnings: [prepared.warnings.clone(), open.warnings].concat(),
            ..State::default()
        }),
        total: AtomicU64::new(0),
        lists_done: AtomicUsize::new(0),
        request,
        sink,
    };
    let shared = &shared;
    let resource_versions = open.resource_versions;
    let included: BTreeSet<String> = prepared.namespaces.iter().cloned().collect();
    let included = &included;
    let mut found: Vec<(usize, ListDependencies)> = stream::iter(open.lists.into_iter().enumerate())
        .map(|(index, list)| async move { drain_list(list, included, shared).await.map(|d| (index, d)) })
        .buffer_unordered(request.concurrency.max(1))
        .try_collect()
        .await?;
    // Merged in list order (types, then namespaces, then the ClusterRoleBindings), whatever
    // order the lists finished in: the reason kept for each dependency does not depend on
    // timing, so the same cluster gives the same archive.
    found.sort_by_key(|(index, _)| *index);
    {
        let mut state = shared.lock();
        for (_, list) in found {
            for (dependency, held) in list.found {
                if held {
                    state.collector.add_held(dependency);
                } else {
                    state.collector.add(dependency);
                }
            }
        }
    }
    fetch_dependencies(client, &prepared.surface, shared).await?;

    let state = std::mem::take(&mut *shared.lock());
    let dependencies = state
        .collector
        .into_dependencies()
        .into_iter()
        .map(|d| CollectedDependency {
            present: state.present.contains(&d.target),
            target: d.target,
            reason: d.reason,
            may_be_absent: d.may_be_absent,
        })
        .collect();
    let mut skipped = state.skipped;
    skipped.sort_by(|a, b| a.object.cmp(&b.object));
    Ok(Collected {
        namespaces: prepared.namespaces.clone(),
        excluded: prepared.excluded.iter().cloned().collect(),
        types: prepared.types.iter().map(|t| t.group_resource.clone()).collect(),
        objects: state.objects,
        dependencies,
        list_resource_versions: resource_versions,
        skipped,
        warnings: state.warnings,
    })
}

/// The dependencies one list found, in the order found, each once (a later reason replaces an
/// earlier one only when it requires the object and the earlier did not), with whether the
/// object is held already (an accepted ClusterRoleBinding).
#[derive(Default)]
struct ListDependencies {
    found: Vec<(Dependency, bool)>,
    index: HashMap<ClusterObjectRef, usize>,
}

impl ListDependencies {
    fn add(&mut self, dependency: Dependency, held: bool) {
        match self.index.get(&dependency.target) {
            Some(&i) => {
                let existing = &mut self.found[i].0;
                if existing.may_be_absent && !dependency.may_be_absent {
                    *existing = dependency;
                }
            }
            None => {
                self.index.insert(dependency.target.clone(), self.found.len());
                self.found.push((dependency, held));
            }
        }
    }
}

async fn drain_list(
    list: OpenList,
    included: &BTreeSet<String>,
    shared: &Shared<'_>,
) -> Result<ListDependencies, DrainError> {
    let mut count = 0u64;
    let mut found = ListDependencies::default();
    let what = match &list.namespace {
        Some(ns) => format!("{} in namespace {ns}", list.resource),
        None => format!("{} cluster-wide", list.resource),
    };
    let mut events = read_ahead(list.stream, shared.request.page_size);
    while let Some(event) = events.next().await {
        let object = match event.map_err(BackupError::from_list)? {
            ListEvent::Snapshot {
                resource_version,
                restarts,
            } => {
                if restarts > 0 {
                    shared.lock().warnings.push(BackupWarning::ListRestarted {
                        list: what.clone(),
                        resource_version,
                    });
                }
                continue;
            }
            ListEvent::Object(object) => object,
        };
        let raw = *object;
        let head = raw.head();
        let reference = ObjectKey::typed(
            &list.resource,
            head.metadata.namespace.as_deref(),
            head.metadata.name.as_deref().unwrap_or_default(),
        );
        // Decoded only when the dependency rules read its fields; otherwise its identity is
        // enough (a custom resource references its CRD by its type alone).
        let value = if list.role == ListRole::ClusterRoleBindings || reads_fields_of(&list.resource) {
            raw.value().map_err(|e| unreadable(&what, e))?
        } else {
            serde_json::json!({ "metadata": { "name": reference.name, "namespace": reference.namespace } })
        };
        // Of the cluster's ClusterRoleBindings, only those binding an included namespace's
        // accounts concern the backup (also when they are being deleted).
        let binds = match list.role {
            ListRole::Namespaced => None,
            ListRole::ClusterRoleBindings => match binding_subject_in(&value, included) {
                Some(reason) => Some(reason),
                None => continue,
            },
        };
        if let Some(since) = &head.metadata.deletion_timestamp {
            shared.lock().skipped.push(SkippedObject {
                object: reference,
                reason: SkipReason::BeingDeleted { since: since.clone() },
            });
            continue;
        }
        let inclusion = match binds {
            None => Inclusion::Namespaced,
            Some(reason) => {
                let target = ClusterObjectRef::new(list.resource.clone(), reference.name.clone());
                shared.lock().present.insert(target.clone());
                let inclusion = inclusion_of(Some(&reason));
                let dependency = Dependency {
                    target,
                    reason,
                    may_be_absent: false,
                };
                found.add(dependency, true);
                inclusion
            }
        };
        for dependency in references(&list.resource, &value) {
            found.add(dependency, false);
        }
        if list.role == ListRole::Namespaced {
            *shared.lock().objects.entry(list.resource.clone()).or_default() += 1;
        }
        count += 1;
        let new = raw_new_object(&list.resource, raw, inclusion, shared.sink.is_some());
        shared.store(new).await?;
    }
    let done = shared.lists_done.fetch_add(1, Ordering::Relaxed) + 1;
    emit(
        shared.request,
        BackupProgress::Listed {
            resource: list.resource,
            namespace: list.namespace,
            objects: count,
            done,
        },
    );
    Ok(found)
}

/// Reads `stream` on its own task, up to `depth` events ahead of the consumer: the next page is
/// requested from the server (and decoded) while the objects of the current one are processed,
/// instead of after. Memory: at most `depth` objects plus the page in flight, per list being
/// drained.
fn read_ahead<T: Send + 'static>(mut stream: BoxStream<'static, T>, depth: u32) -> BoxStream<'static, T> {
    let depth = usize::try_from(depth).unwrap_or(usize::MAX).clamp(1, 1024);
    let (tx, rx) = mpsc::channel(depth);
    let reader = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if tx.send(event).await.is_err() {
                return; // the consumer stopped
            }
        }
    });
    // Dropping the consumer's stream ends the reader (its sends fail) — and aborting it makes
    // that immediate even while it waits on the server.
    let guard = AbortOnDrop(reader);
    stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|event| (event, (rx, guard)))
    })
    .boxed()
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fetched dependency, or why there is none.
enum Fetched {
    Found(Box<DynamicObject>, GroupResource),
    NotFound,
    NotServed,
}

/// Gets every queued dependency, in rounds: what one round fetches may reference more.
async fn fetch_dependencies(
    client: &kube::Client,
    surface: &ApiSurface,
    shared: &Shared<'_>,
) -> Result<(), DrainError> {
    let mut done = 0usize;
    loop {
        let batch: Vec<ClusterObjectRef> = {
            let mut state = shared.lock();
            std::iter::from_fn(|| state.collector.next_to_fetch()).collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let mut fetched: Vec<(ClusterObjectRef, Fetched)> = stream::iter(batch)
            .map(|target| async move {
                let result = fetch_one(client, surface, &target).await;
                result.map(|f| (target, f))
            })
            .buffer_unordered(shared.request.concurrency.max(1))
            .try_collect()
            .await?;
        fetched.sort_by(|a, b| a.0.cmp(&b.0));
        for (target, result) in fetched {
            done += 1;
            let known = shared.lock().collector.len();
            emit(shared.request, BackupProgress::Dependencies { done, known });
            let (object, canonical) = match result {
                Fetched::Found(object, canonical) => (object, canonical),
                Fetched::NotFound => {
                    let mut state = shared.lock();
                    if let Some((reason, false)) = state.collector.reason_of(&target) {
                        let warning = BackupWarning::MissingDependency {
                            target: target.clone(),
                            reason: reason.clone(),
                        };
                        state.warnings.push(warning);
                    }
                    continue;
                }
                Fetched::NotServed => {
                    let mut state = shared.lock();
                    if let Some((reason, _)) = state.collector.reason_of(&target) {
                        let warning = BackupWarning::DependencyTypeNotServed {
                            target: target.clone(),
                            reason: reason.clone(),
                        };
                        state.warnings.push(warning);
                    }
                    continue;
                }
            };
            let value = serde_json::to_value(&*object)
                .map_err(|e| BackupError::from_get(target.to_string(), kube::Error::SerdeError(e)))?;
            if let Some(since) = deletion_timestamp(&value) {
                shared.lock().skipped.push(SkippedObject {
                    object: ObjectKey::typed(
                        &canonical,
                        value.pointer("/metadata/namespace").and_then(Value::as_str),
                        value
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    ),
                    reason: SkipReason::BeingDeleted {
                        since: since.to_owned(),
                    },
                });
                continue;
            }
            let inclusion = {
                let mut state = shared.lock();
                state.collector.observe(&canonical, &value);
                state.present.insert(target.clone());
                inclusion_of(state.collector.reason_of(&target).map(|(r, _)| r))
            };
            let new = new_object(&canonical, value, inclusion, shared.sink.is_some())?;
            shared.store(new).await?;
        }
    }
}

async fn fetch_one(
    client: &kube::Client,
    surface: &ApiSurface,
    target: &ClusterObjectRef,
) -> Result<Fetched, DrainError> {
    let Some(served) = surface.get(&target.resource).filter(|s| !s.namespaced) else {
        return Ok(Fetched::NotServed);
    };
    let resource = served.api_resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    match api.get_opt(&target.name).await {
        Ok(Some(mut object)) => {
            object.types = Some(kube::core::TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            });
            Ok(Fetched::Found(Box::new(object), served.group_resource.clone()))
        }
        Ok(None) => Ok(Fetched::NotFound),
        Err(err) => Err(BackupError::from_get(target.to_string(), err).into()),
    }
}

/// The archive's record of why a dependency is included.
fn inclusion_of(reason: Option<&Reason>) -> Inclusion {
    match reason {
        None | Some(Reason::IncludedNamespace) => Inclusion::Namespace,
        Some(reason) => Inclusion::Dependency {
            of: reason
                .pulled_in_by()
                .map(|o| archive_path(&o))
                .unwrap_or_default(),
            via: reason.via().unwrap_or_default().to_owned(),
        },
    }
}

/// The archive entry path of `object` (its display form if it cannot have one).
fn archive_path(object: &ObjectKey) -> String {
    kpromote_archive::layout::object_path(object).unwrap_or_else(|_| object.to_string())
}

/// A list item that does not decode (it was validated when the page was split, so this is a bug
/// or a corrupted response).
fn unreadable(what: &str, err: serde_json::Error) -> BackupError {
    BackupError::List(ListError::Api {
        what: what.to_owned(),
        source: kube::Error::SerdeError(err),
    })
}

/// The archive's form of one listed object, its JSON stored as the server sent it (with the type
/// fields). With `with_body` false (dry run) the JSON is dropped.
fn raw_new_object(
    resource: &GroupResource,
    raw: RawObject,
    inclusion: Inclusion,
    with_body: bool,
) -> NewObject {
    let head = raw.head().clone();
    let meta = head.metadata;
    NewObject {
        resource: resource.resource().to_owned(),
        group: resource.group().to_owned(),
        namespace: meta.namespace.filter(|ns| !ns.is_empty()),
        name: meta.name.unwrap_or_default(),
        api_version: head.api_version.unwrap_or_default(),
        kind: head.kind.unwrap_or_default(),
        uid: meta.uid,
        owner_references: meta.owner_references,
        inclusion,
        json: if with_body { raw.into_json() } else { Vec::new() },
    }
}

/// The object's `metadata.deletionTimestamp`, if it is being deleted.
fn deletion_timestamp(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
}

/// The archive's form of one object (with `apiVersion` and `kind` set). With `with_body` false
/// (dry run) the JSON is left empty.
fn new_object(
    resource: &GroupResource,
    object: Value,
    inclusion: Inclusion,
    with_body: bool,
) -> Result<NewObject, BackupError> {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let meta = object.get("metadata");
    let field = |key: &str| text(meta.and_then(|m| m.get(key)));
    let name = field("name").unwrap_or_default();
    let unstorable = |e: serde_json::Error| {
        BackupError::List(ListError::Api {
            what: format!("{resource} {name}"),
            source: kube::Error::SerdeError(e),
        })
    };
    let owner_references: Vec<OwnerReference> = match meta.and_then(|m| m.get("ownerReferences")) {
        Some(refs) => serde_json::from_value(refs.clone()).map_err(&unstorable)?,
        None => Vec::new(),
    };
    let json = if with_body {
        serde_json::to_vec(&object).map_err(&unstorable)?
    } else {
        Vec::new()
    };
    Ok(NewObject {
        resource: resource.resource().to_owned(),
        group: resource.group().to_owned(),
        namespace: field("namespace").filter(|ns| !ns.is_empty()),
        name: name.clone(),
        api_version: text(object.get("apiVersion")).unwrap_or_default(),
        kind: text(object.get("kind")).unwrap_or_default(),
        uid: field("uid"),
        owner_references,
        inclusion,
        json,
    })
}

pub(crate) fn emit(request: &BackupRequest, event: BackupProgress) {
    if let Some(progress) = &request.progress {
        progress(&event);
    }
}
