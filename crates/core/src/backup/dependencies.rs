//! Which cluster-scoped objects the namespaced objects of a backup need, and why.
//!
//! A namespace backup is only restorable if the cluster-scoped objects its objects name come
//! along: the PersistentVolume a claim is bound to, the StorageClass, PriorityClass or
//! RuntimeClass a pod asks for, the ClusterRole a RoleBinding grants, the CRD of a custom resource.
//! Only what an object **really references** is collected — never "all StorageClasses" — and each
//! dependency carries its [`Reason`] (the object that pulled it in and the field), which the
//! archive manifest records as "why included".
//!
//! # Rules
//!
//! | From | Field (`via`) | Adds |
//! |---|---|---|
//! | an included namespace | | its `Namespace` |
//! | PersistentVolumeClaim | `spec.volumeName` | PersistentVolume (absence tolerated unless `Bound`) |
//! | PersistentVolumeClaim, PersistentVolume | `spec.storageClassName`, else the `volume.beta.kubernetes.io/storage-class` annotation | StorageClass |
//! | Pod, and the pod template of PodTemplate, ReplicationController, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob | `priorityClassName`, `runtimeClassName`, `volumes[i].ephemeral.volumeClaimTemplate.spec.storageClassName` | PriorityClass, RuntimeClass, StorageClass |
//! | StatefulSet | `spec.volumeClaimTemplates[i].spec.storageClassName` | StorageClass |
//! | Ingress | `spec.ingressClassName`, else the `kubernetes.io/ingress.class` annotation (absence tolerated) | IngressClass |
//! | RoleBinding, ClusterRoleBinding | `roleRef.name` when `roleRef.kind` is `ClusterRole` | ClusterRole |
//! | ClusterRoleBinding | `subjects[i]` naming an included namespace (see [`binding_subject_in`]) | the ClusterRoleBinding itself |
//! | a custom resource (a type outside [`BUILTIN_GROUPS`](crate::resources::BUILTIN_GROUPS)) | its type | CustomResourceDefinition `<plural>.<group>` (absence tolerated: aggregated APIs have none) |
//!
//! Workload templates are followed so that a workload scaled to zero still brings its classes.
//! The rules apply to dependencies too ([`DependencyCollector::observe`] on a fetched PV adds its
//! StorageClass), which is the transitive step.
//!
//! Not followed, on purpose: an Ingress without a class (it uses the target's default
//! IngressClass), IngressClass `spec.parameters`, CSI drivers, webhook configurations, and
//! ClusterRoleBindings whose subject is every service account or every authenticated user
//! (`system:serviceaccounts`, `system:authenticated`): those are cluster policy, not part of one
//! namespace.
//!
//! # Streaming
//!
//! [`DependencyCollector`] is fed one object at a time and keeps only the distinct dependency
//! references found (with the first reason for each) and a queue of those not fetched yet, so its
//! memory is proportional to the number of distinct dependencies, not to the number of objects.

use crate::resources::{GroupResource, well_known};
use kpromote_model::{ObjectKey, workload};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// Annotation older clients used instead of `spec.storageClassName`; still honoured by the
/// volume controllers when the field is unset.
pub(crate) const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";
/// Annotation older clients used instead of `spec.ingressClassName`. Its value names the class an
/// ingress controller watches, which by convention (not by rule) is also an IngressClass name.
pub(crate) const LEGACY_INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Username prefix of a ServiceAccount: `system:serviceaccount:<namespace>:<name>`.
pub(crate) const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";
/// Group prefix of all ServiceAccounts of a namespace: `system:serviceaccounts:<namespace>`.
pub(crate) const SERVICE_ACCOUNTS_GROUP_PREFIX: &str = "system:serviceaccounts:";

/// A cluster-scoped object a backup needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterObjectRef {
    /// Its type.
    pub resource: GroupResource,
    /// Its name.
    pub name: String,
}

impl ClusterObjectRef {
    /// A reference to `name` of type `resource`.
    #[must_use]
    pub(crate) fn new(resource: GroupResource, name: impl Into<String>) -> Self {
        Self {
            resource,
            name: name.into(),
        }
    }
}

impl fmt::Display for ClusterObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource, self.name)
    }
}

/// Why a cluster-scoped object is in a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Reason {
    /// The Namespace object of a namespace the backup includes.
    IncludedNamespace,
    /// Named by a field of an object in the backup.
    #[serde(rename_all = "camelCase")]
    ReferencedBy {
        /// The object holding the reference.
        object: ObjectKey,
        /// The field path, e.g. `spec.volumeName` or `spec.template.spec.priorityClassName`.
        via: String,
    },
    /// A ClusterRoleBinding granting its role to a subject of an included namespace.
    #[serde(rename_all = "camelCase")]
    BindsSubjectOf {
        /// The included namespace.
        namespace: String,
        /// The subject, e.g. `ServiceAccount ns1/builder` or `Group system:serviceaccounts:ns1`.
        subject: String,
        /// The field path in the binding, e.g. `subjects[1]`.
        via: String,
    },
}

impl Reason {
    /// The object that pulled the dependency in: the referencing object, the ServiceAccount a
    /// ClusterRoleBinding binds (also when named as its `system:serviceaccount:<ns>:<name>`
    /// user), or the Namespace object for a group of a namespace's accounts. `None` for an
    /// included namespace, which nothing pulled in.
    #[must_use]
    pub(crate) fn pulled_in_by(&self) -> Option<ObjectKey> {
        match self {
            Self::IncludedNamespace => None,
            Self::ReferencedBy { object, .. } => Some(object.clone()),
            Self::BindsSubjectOf {
                namespace, subject, ..
            } => {
                // `subject` is written by `binding_subject_in` below, in one of three shapes.
                let account = subject
                    .strip_prefix("ServiceAccount ")
                    .and_then(|rest| rest.split_once('/'))
                    .map(|(_, name)| name)
                    .or_else(|| {
                        subject
                            .strip_prefix("User ")
                            .and_then(|user| user.strip_prefix(SERVICE_ACCOUNT_USER_PREFIX))
                            .and_then(|rest| rest.split_once(':'))
                            .map(|(_, name)| name)
                    });
                Some(match account {
                    Some(name) => ObjectKey::namespaced("", "serviceaccounts", namespace, name),
                    None => ObjectKey::typed(&well_known::NAMESPACES, None, namespace),
                })
            }
        }
    }

    /// The field of [`pulled_in_by`](Self::pulled_in_by) (or of the binding) that names the
    /// dependency, e.g. `spec.volumeName` or `subjects[1]`; `None` for an included namespace.
    #[must_use]
    pub(crate) fn via(&self) -> Option<&str> {
        match self {
            Self::IncludedNamespace => None,
            Self::ReferencedBy { via, .. } | Self::BindsSubjectOf { via, .. } => Some(via),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IncludedNamespace => f.write_str("included namespace"),
            Self::ReferencedBy { object, via } => write!(f, "{via} of {object}"),
            Self::BindsSubjectOf { subject, via, .. } => write!(f, "{via} binds {subject}"),
        }
    }
}

/// One cluster-scoped object a backup needs, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Dependency {
    /// The object needed.
    pub target: ClusterObjectRef,
    /// Why.
    pub reason: Reason,
    /// Whether the object may legitimately not exist, so that a backup treats "not found" as a
    /// note rather than a warning: a claim's volume before binding, the IngressClass named by the
    /// legacy annotation, the CRD of a type that may be served by an aggregated API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_be_absent: bool,
}

/// The Namespace object of included namespace `namespace`.
#[must_use]
pub(crate) fn namespace_dependency(namespace: &str) -> Dependency {
    Dependency {
        target: ClusterObjectRef::new(well_known::NAMESPACES, namespace),
        reason: Reason::IncludedNamespace,
        may_be_absent: false,
    }
}

/// The cluster-scoped objects `object` (of type `resource`) references, in field order, possibly
/// with repeats. Pure: reads only `object`.
///
/// Applies to namespaced objects of a backup and to fetched dependencies alike (a PV names its
/// StorageClass, a ClusterRoleBinding its ClusterRole). Whether a ClusterRoleBinding belongs in a
/// backup at all is [`binding_subject_in`]'s question, not this function's.
#[must_use]
pub(crate) fn references(resource: &GroupResource, object: &Value) -> Vec<Dependency> {
    let mut refs = References {
        from: object_key(resource, object),
        out: Vec::new(),
    };
    let spec = object.get("spec");
    if let Some(workload) = workload::by_resource(resource.group(), resource.resource()) {
        refs.pod_spec(workload.pod_spec(object), &workload.pod_spec_field());
        // StatefulSets' claim templates; no other workload has the field.
        for (i, claim) in items(spec, "volumeClaimTemplates") {
            refs.storage_class(
                claim.get("spec"),
                &format!("spec.volumeClaimTemplates[{i}].spec.storageClassName"),
            );
        }
        return refs.out;
    }
    match (resource.group(), resource.resource()) {
        ("", "pods") => refs.pod_spec(spec, "spec"),
        ("", "persistentvolumeclaims") => {
            if let Some(volume) = non_empty(spec, "volumeName") {
                let bound = str_at(object, &["status", "phase"]) == Some("Bound");
                refs.push(well_known::PERSISTENT_VOLUMES, volume, "spec.volumeName", !bound);
            }
            refs.storage_class_or_annotation(object);
        }
        ("", "persistentvolumes") => refs.storage_class_or_annotation(object),
        ("networking.k8s.io" | "extensions", "ingresses") => {
            if let Some(class) = non_empty(spec, "ingressClassName") {
                refs.push(well_known::INGRESS_CLASSES, class, "spec.ingressClassName", false);
            } else if let Some(class) = annotation(object, LEGACY_INGRESS_CLASS_ANNOTATION) {
                let via = format!("metadata.annotations[{LEGACY_INGRESS_CLASS_ANNOTATION}]");
                refs.push(well_known::INGRESS_CLASSES, class, &via, true);
            }
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            let role_ref = object.get("roleRef");
            if str_at(role_ref.unwrap_or(&Value::Null), &["kind"]) == Some("ClusterRole")
                && let Some(name) = non_empty(role_ref, "name")
            {
                refs.push(well_known::CLUSTER_ROLES, name, "roleRef.name", false);
            }
        }
        _ => {}
    }
    if !resource.is_builtin() {
        let crd = format!("{}.{}", resource.resource(), resource.group());
        refs.push(well_known::CUSTOM_RESOURCE_DEFINITIONS, &crd, "apiVersion", true);
    }
    refs.out
}

/// Whether [`references`] reads fields of objects of `resource` beyond their identity: only then
/// must a caller decode a whole object to find what it references (for any other type, the
/// object's name and namespace are enough — a custom resource references its CRD by its type).
/// Kept beside the rules it summarizes; a test checks the two agree.
#[must_use]
pub(crate) fn reads_fields_of(resource: &GroupResource) -> bool {
    workload::by_resource(resource.group(), resource.resource()).is_some()
        || matches!(
            (resource.group(), resource.resource()),
            ("", "pods" | "persistentvolumeclaims" | "persistentvolumes")
                | ("networking.k8s.io" | "extensions", "ingresses")
                | (
                    "rbac.authorization.k8s.io",
                    "rolebindings" | "clusterrolebindings"
                )
        )
}

/// Why ClusterRoleBinding `binding` belongs in a backup of `included_namespaces`: the first of its
/// subjects that stands for service accounts of an included namespace, or `None`.
///
/// A subject counts when it is
/// - `kind: ServiceAccount` with an included `namespace`;
/// - `kind: User` named `system:serviceaccount:<ns>:<name>` with `<ns>` included — the same
///   identity the API server gives that ServiceAccount's tokens;
/// - `kind: Group` named `system:serviceaccounts:<ns>` with `<ns>` included — every
///   ServiceAccount of that namespace, so the namespace's workloads rely on it.
///
/// Subjects naming other namespaces' accounts, plain users, `system:serviceaccounts` (every
/// account of the cluster) or `system:authenticated` do not count: such a binding is cluster
/// policy, and copying it would grant it in the control plane to things that never asked for it.
#[must_use]
pub(crate) fn binding_subject_in(binding: &Value, included_namespaces: &BTreeSet<String>) -> Option<Reason> {
    let included = |ns: &str| included_namespaces.contains(ns);
    for (i, subject) in items(Some(binding), "subjects") {
        let kind = str_at(subject, &["kind"]).unwrap_or_default();
        let name = str_at(subject, &["name"]).unwrap_or_default();
        let found = match kind {
            "ServiceAccount" => str_at(subject, &["namespace"])
                .filter(|ns| included(ns))
                .map(|ns| (ns.to_owned(), format!("ServiceAccount {ns}/{name}"))),
            "User" => name
                .strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)
                .and_then(|rest| rest.split_once(':'))
                .filter(|(ns, _)| included(ns))
                .map(|(ns, _)| (ns.to_owned(), format!("User {name}"))),
            "Group" => name
                .strip_prefix(SERVICE_ACCOUNTS_GROUP_PREFIX)
                .filter(|ns| included(ns))
                .map(|ns| (ns.to_owned(), format!("Group {name}"))),
            _ => None,
        };
        if let Some((namespace, subject)) = found {
            return Some(Reason::BindsSubjectOf {
                namespace,
                subject,
                via: format!("subjects[{i}]"),
            });
        }
    }
    None
}

/// Collects the distinct cluster-scoped dependencies of a backup, fed one object at a time.
///
/// # Use
/// 1. [`new`](Self::new) with the included namespaces (their Namespace objects are the first
///    dependencies).
/// 2. [`observe`](Self::observe) every namespaced object written to the backup.
/// 3. [`consider_cluster_role_binding`](Self::consider_cluster_role_binding) every
///    ClusterRoleBinding of the cluster (one cluster-wide list); write those it accepts.
/// 4. Loop on [`next_to_fetch`](Self::next_to_fetch): get the object, write it, and
///    [`observe`](Self::observe) it — its own dependencies join the queue. Stop at `None`.
/// 5. [`into_dependencies`](Self::into_dependencies) gives the "why included" list.
///
/// Steps 2 and 3 may interleave in any order; the result is the same set (the reasons kept are
/// the first seen).
///
/// # Guarantees
/// Each reference is queued at most once, so the fetch loop ends even with reference cycles.
/// Memory is proportional to the number of distinct dependencies.
#[derive(Debug, Clone, Default)]
pub(crate) struct DependencyCollector {
    included_namespaces: BTreeSet<String>,
    found: BTreeMap<ClusterObjectRef, Found>,
    to_fetch: VecDeque<ClusterObjectRef>,
}

#[derive(Debug, Clone)]
struct Found {
    reason: Reason,
    may_be_absent: bool,
}

impl DependencyCollector {
    /// A collector for a backup of `included_namespaces`; their Namespace objects are queued.
    #[must_use]
    pub(crate) fn new<I>(included_namespaces: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut collector = Self {
            included_namespaces: included_namespaces.into_iter().map(Into::into).collect(),
            ..Self::default()
        };
        let namespaces: Vec<String> = collector.included_namespaces.iter().cloned().collect();
        for ns in namespaces {
            collector.record(namespace_dependency(&ns), true);
        }
        collector
    }

    /// Records the [`references`] of `object` (of type `resource`) and queues the new ones.
    pub(crate) fn observe(&mut self, resource: &GroupResource, object: &Value) {
        for dependency in references(resource, object) {
            self.record(dependency, true);
        }
    }

    /// Records `dependency` (found by [`references`] or [`binding_subject_in`] elsewhere, e.g. by a
    /// task reading one list) and queues it for fetching if it is new. The same rules as
    /// [`observe`](Self::observe): the first reason is kept unless a later one requires the
    /// object and the first did not.
    pub(crate) fn add(&mut self, dependency: Dependency) {
        self.record(dependency, true);
    }

    /// Like [`add`](Self::add), for an object the caller already holds and writes itself (a
    /// ClusterRoleBinding accepted from the cluster-wide list): recorded, never queued.
    pub(crate) fn add_held(&mut self, dependency: Dependency) {
        self.record(dependency, false);
    }

    #[cfg(test)]
    /// Decides whether ClusterRoleBinding `binding` belongs in the backup
    /// ([`binding_subject_in`]). If it does, records it (not queued: the caller already holds the
    /// object and writes it), queues its ClusterRole, and returns `true`.
    pub(crate) fn consider_cluster_role_binding(&mut self, binding: &Value) -> bool {
        let Some(reason) = binding_subject_in(binding, &self.included_namespaces) else {
            return false;
        };
        let name = str_at(binding, &["metadata", "name"]).unwrap_or_default();
        let target = ClusterObjectRef::new(well_known::CLUSTER_ROLE_BINDINGS, name);
        self.record(
            Dependency {
                target,
                reason,
                may_be_absent: false,
            },
            false,
        );
        self.observe(&well_known::CLUSTER_ROLE_BINDINGS, binding);
        true
    }

    /// The next dependency to get from the cluster, if any is left.
    pub(crate) fn next_to_fetch(&mut self) -> Option<ClusterObjectRef> {
        self.to_fetch.pop_front()
    }

    /// How many distinct dependencies were found so far.
    #[must_use]
    pub(crate) fn len(&self) -> usize {
        self.found.len()
    }

    #[cfg(test)]
    /// Whether `target` was found.
    #[must_use]
    pub(crate) fn contains(&self, target: &ClusterObjectRef) -> bool {
        self.found.contains_key(target)
    }

    /// Why `target` is needed so far (the first reason, or the first that requires it), and
    /// whether it may be absent; `None` if it was not found.
    #[must_use]
    pub(crate) fn reason_of(&self, target: &ClusterObjectRef) -> Option<(&Reason, bool)> {
        self.found.get(target).map(|f| (&f.reason, f.may_be_absent))
    }

    /// Every dependency found, sorted by target, each with its first reason.
    #[must_use]
    pub(crate) fn into_dependencies(self) -> Vec<Dependency> {
        self.found
            .into_iter()
            .map(|(target, f)| Dependency {
                target,
                reason: f.reason,
                may_be_absent: f.may_be_absent,
            })
            .collect()
    }

    fn record(&mut self, dependency: Dependency, queue: bool) {
        if dependency.target.name.is_empty() {
            return;
        }
        match self.found.get_mut(&dependency.target) {
            Some(existing) => {
                // A later reason that requires the object outranks an earlier tolerant one.
                if existing.may_be_absent && !dependency.may_be_absent {
                    existing.reason = dependency.reason;
                    existing.may_be_absent = false;
                }
            }
            None => {
                if queue {
                    self.to_fetch.push_back(dependency.target.clone());
                }
                self.found.insert(
                    dependency.target,
                    Found {
                        reason: dependency.reason,
                        may_be_absent: dependency.may_be_absent,
                    },
                );
            }
        }
    }
}

/// Accumulates the references of one object.
struct References {
    from: ObjectKey,
    out: Vec<Dependency>,
}

impl References {
    fn push(&mut self, resource: GroupResource, name: &str, via: &str, may_be_absent: bool) {
        self.out.push(Dependency {
            target: ClusterObjectRef::new(resource, name),
            reason: Reason::ReferencedBy {
                object: self.from.clone(),
                via: via.to_owned(),
            },
            may_be_absent,
        });
    }

    /// A pod spec at `path` (or inside a template): its classes and ephemeral volume classes.
    fn pod_spec(&mut self, spec: Option<&Value>, path: &str) {
        if let Some(name) = non_empty(spec, "priorityClassName") {
            self.push(
                well_known::PRIORITY_CLASSES,
                name,
                &format!("{path}.priorityClassName"),
                false,
            );
        }
        if let Some(name) = non_empty(spec, "runtimeClassName") {
            self.push(
                well_known::RUNTIME_CLASSES,
                name,
                &format!("{path}.runtimeClassName"),
                false,
            );
        }
        for (i, volume) in items(spec, "volumes") {
            let claim_spec = at(volume, &["ephemeral", "volumeClaimTemplate", "spec"]);
            self.storage_class(
                claim_spec,
                &format!("{path}.volumes[{i}].ephemeral.volumeClaimTemplate.spec.storageClassName"),
            );
        }
    }

    /// `storageClassName` of a claim or volume spec. An empty name means "no class".
    fn storage_class(&mut self, spec: Option<&Value>, via: &str) {
        if let Some(name) = non_empty(spec, "storageClassName") {
            self.push(well_known::STORAGE_CLASSES, name, via, false);
        }
    }

    /// A PV's or PVC's class: the field, or the beta annotation when the field is absent.
    fn storage_class_or_annotation(&mut self, object: &Value) {
        let spec = object.get("spec");
        if spec.and_then(|s| s.get("storageClassName")).is_some() {
            self.storage_class(spec, "spec.storageClassName");
        } else if let Some(name) = annotation(object, BETA_STORAGE_CLASS_ANNOTATION) {
            let via = format!("metadata.annotations[{BETA_STORAGE_CLASS_ANNOTATION}]");
            self.push(well_known::STORAGE_CLASSES, name, &via, false);
        }
    }
}

/// The value at `path` under `value`.
fn at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// The string at `path` under `value`.
fn str_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    at(value, path).and_then(Value::as_str)
}

/// The non-empty string field `key` of `value`.
fn non_empty<'v>(value: Option<&'v Value>, key: &str) -> Option<&'v str> {
    value?.get(key)?.as_str().filter(|s| !s.is_empty())
}

/// The non-empty annotation `key` of `object`.
fn annotation<'v>(object: &'v Value, key: &str) -> Option<&'v str> {
    non_empty(at(object, &["metadata", "annotations"]), key)
}

/// The elements of array field `key` of `value`, with their indexes.
fn items<'v>(value: Option<&'v Value>, key: &str) -> impl Iterator<Item = (usize, &'v Value)> {
    value
        .and_then(|v| v.get(key))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

#[cfg(test)]
mod tests;

/// The key of `object` (from its metadata), of type `resource`.
fn object_key(resource: &GroupResource, object: &Value) -> ObjectKey {
    ObjectKey::typed(
        resource,
        str_at(object, &["metadata", "namespace"]),
        str_at(object, &["metadata", "name"]).unwrap_or_default(),
    )
}
