//! The orders promote and rollback work in: [`RestorePlan`] (create, bottom-up),
//! [`DetachPlan`] (delete owners in the member, top-down) and [`TeardownPlan`] (remove from the
//! control plane what promote created).
//!
//! # The restore order, and why
//! One table, [`RESTORE_ORDER`], gives every known kind its [`Tier`] and the reason for it. An
//! object's place is the tuple
//!
//! 1. its **phase**: CustomResourceDefinitions, then Namespaces, then everything else, then the
//!    admission policies that act on pods ([`Phase`]) — hard requirements of the API server, and
//!    the member's history: a LimitRange or ResourceQuota may have come after the pods it would
//!    have changed or refused, so it must not act on their copies;
//! 2. its ownership **height** ascending ([`OwnershipGraph::height`]): every dependent is
//!    created before its owner, so the owner's controller adopts what exists instead of creating
//!    new pods — the whole "no restart" promise rests on this;
//! 3. its kind's **tier** ([`Tier`]): among objects of equal height, what pods need (service
//!    accounts, secrets, claims …) before pods, pods before the controllers that own them,
//!    traffic and policy objects after the workloads, kinds nobody listed last, one level per
//!    kind in alphabetical order of `resource.group` (as Velero does for kinds it does not know).
//!
//! Objects with the same tuple form one [`Level`]: none of them owns another (equal height) and
//! no kind rule orders them (equal tier), so a level can be created concurrently. A level may
//! carry a [`WaitPoint`]: a condition the engine waits for before the next level.
//!
//! Ownership *by* a CRD or a Namespace does not move it out of its phase: the API server needs it
//! first. A dependent created before its owner has its ownerReference patched in later by the
//! caller (see [`crate::plan::transform`]).
//!
//! # Guarantees
//! Every input key appears in exactly one level; levels and the keys in them are in a
//! deterministic order; an owner that is not a CRD or Namespace is in a later level than each of
//! its dependents; a namespaced object is in a later level than its Namespace, a custom resource
//! than its CRD (when those are in the set).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::resources::BUILTIN_GROUPS;
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::OwnershipGraph;

/// Group of CustomResourceDefinitions.
pub const CRD_GROUP: &str = "apiextensions.k8s.io";
/// Resource of CustomResourceDefinitions.
pub const CRD_RESOURCE: &str = "customresourcedefinitions";

/// The API server's hard ordering: a custom resource needs its CRD, a namespaced object its
/// Namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// CustomResourceDefinitions.
    CustomResourceDefinitions,
    /// Namespaces.
    Namespaces,
    /// Every other object.
    Objects,
    /// LimitRanges and ResourceQuotas, after everything they could act on: LimitRanger admission
    /// would default the resources of pods created after a LimitRange (so the control-plane pod
    /// would differ from the member pod it mirrors, and its QoS class with it), and a quota the
    /// quota controller has not yet counted rejects every pod and object it covers.
    AdmissionPolicies,
}

impl Phase {
    /// The phase of `key`.
    #[must_use]
    pub fn of(key: &ObjectKey) -> Self {
        if key.is(CRD_GROUP, CRD_RESOURCE) {
            Self::CustomResourceDefinitions
        } else if key.is("", "namespaces") {
            Self::Namespaces
        } else if ADMISSION_POLICIES.iter().any(|(g, r)| key.is(g, r)) {
            Self::AdmissionPolicies
        } else {
            Self::Objects
        }
    }
}

/// Kinds of [`Phase::AdmissionPolicies`], as (group, resource).
pub const ADMISSION_POLICIES: &[(&str, &str)] = &[("", "limitranges"), ("", "resourcequotas")];

/// Where a kind sits among objects of equal ownership height. See [`RESTORE_ORDER`] for which
/// kind has which tier, and [`Tier::reason`] for why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// CustomResourceDefinitions.
    CustomResourceDefinitions,
    /// Namespaces.
    Namespaces,
    /// Cluster-scoped objects others name: StorageClasses, PriorityClasses, RuntimeClasses,
    /// IngressClasses, ClusterRoles.
    ClusterPrerequisites,
    /// Cluster-scoped objects naming those: PersistentVolumes, ClusterRoleBindings.
    ClusterBindings,
    /// What pods name: ServiceAccounts, Secrets, ConfigMaps, PersistentVolumeClaims, Roles.
    PodPrerequisites,
    /// RoleBindings, after Roles.
    RoleBindings,
    /// Pods, the leaves.
    Pods,
    /// Direct owners of pods and of revision history: ReplicaSets, ReplicationControllers,
    /// ControllerRevisions.
    PodControllers,
    /// Deployments, StatefulSets, DaemonSets, Jobs.
    Workloads,
    /// CronJobs, which own Jobs.
    WorkloadSchedulers,
    /// Services, Endpoints, EndpointSlices, Ingresses, NetworkPolicies.
    Traffic,
    /// HorizontalPodAutoscalers, PodDisruptionBudgets.
    WorkloadPolicies,
    /// LimitRanges and ResourceQuotas (their own [`Phase::AdmissionPolicies`]).
    AdmissionPolicies,
    /// A kind the table does not list; carries its `resource.group` so each such kind is its
    /// own level, in alphabetical order.
    Other(String),
}

impl Tier {
    /// The tier of `key`'s kind.
    #[must_use]
    pub fn of(key: &ObjectKey) -> Self {
        RESTORE_ORDER
            .iter()
            .find(|k| key.is(k.group, k.resource))
            .map_or_else(
                || Self::Other(key.group_resource().to_string()),
                |k| k.tier.clone(),
            )
    }

    /// Why the tier comes where it does.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CustomResourceDefinitions => {
                "a custom resource can be created only once its type is served: CRDs come first, \
                 and the next level waits until each is Established"
            }
            Self::Namespaces => {
                "every namespaced object needs its namespace; the next level waits for the \
                 `default` ServiceAccount the target creates in a new namespace"
            }
            Self::ClusterPrerequisites => {
                "cluster-scoped objects that volumes, pods, ingresses and bindings name; admission \
                 rejects a pod naming a missing PriorityClass or RuntimeClass"
            }
            Self::ClusterBindings => "cluster-scoped objects that name the previous tier's objects",
            Self::PodPrerequisites => {
                "what pods name: a pod naming a missing ServiceAccount is rejected, a pod \
                 mounting a missing ConfigMap or Secret never starts"
            }
            Self::RoleBindings => "after the Roles and ClusterRoles they bind",
            Self::Pods => {
                "the leaves: created before their controllers, so the controllers adopt the \
                 running pods instead of creating new ones"
            }
            Self::PodControllers => {
                "own pods or hold revision history: created after the pods, they adopt them; \
                 revisions exist before the StatefulSet or DaemonSet that reads them"
            }
            Self::Workloads => {
                "after their ReplicaSets, pods and revisions: they adopt them and, with an \
                 unchanged pod template, roll nothing out"
            }
            Self::WorkloadSchedulers => "CronJobs own Jobs: after them",
            Self::Traffic => {
                "after the workloads: Services select pods that already exist, so the target's \
                 endpoint controllers build complete Endpoints at once"
            }
            Self::WorkloadPolicies => "act on workloads: after their targets exist",
            Self::AdmissionPolicies => {
                "admission acts on objects created after them: last, so the copies of pods and \
                 claims the member admitted before its policy existed are created unchanged"
            }
            Self::Other(_) => {
                "a kind with no known rule: after every known kind of its height, one level per \
                 kind in alphabetical order"
            }
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(gr) => write!(f, "Other({gr})"),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

/// One row of [`RESTORE_ORDER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindOrder {
    /// API group; empty for core.
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Its tier.
    pub tier: Tier,
    /// Why this kind is in this tier.
    pub reason: &'static str,
}

const fn kind(group: &'static str, resource: &'static str, tier: Tier, reason: &'static str) -> KindOrder {
    KindOrder {
        group,
        resource,
        tier,
        reason,
    }
}

/// The restore order of every known kind, with its reason. Kinds not listed are
/// [`Tier::Other`]. Ownership height comes before the tier (see the [module docs](self)).
pub const RESTORE_ORDER: &[KindOrder] = &[
    kind(
        CRD_GROUP,
        CRD_RESOURCE,
        Tier::CustomResourceDefinitions,
        "instances need their type served",
    ),
    kind(
        "",
        "namespaces",
        Tier::Namespaces,
        "namespaced objects need their namespace",
    ),
    kind(
        "storage.k8s.io",
        "storageclasses",
        Tier::ClusterPrerequisites,
        "volumes and claims name their class; binder and provisioner look it up",
    ),
    kind(
        "scheduling.k8s.io",
        "priorityclasses",
        Tier::ClusterPrerequisites,
        "Priority admission rejects a pod whose priorityClassName does not exist",
    ),
    kind(
        "node.k8s.io",
        "runtimeclasses",
        Tier::ClusterPrerequisites,
        "RuntimeClass admission rejects a pod whose runtimeClassName does not exist",
    ),
    kind(
        "networking.k8s.io",
        "ingressclasses",
        Tier::ClusterPrerequisites,
        "an Ingress is served by the controller of the class it names",
    ),
    kind(
        "rbac.authorization.k8s.io",
        "clusterroles",
        Tier::ClusterPrerequisites,
        "the RBAC escalation check of a binding reads the role it binds, unless the creator may `bind`",
    ),
    kind(
        "",
        "persistentvolumes",
        Tier::ClusterBindings,
        "after their StorageClass, before their claim: a volume pre-bound by name waits Available, \
         and a claim naming its volume binds at once",
    ),
    kind(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        Tier::ClusterBindings,
        "after the ClusterRoles they bind",
    ),
    kind(
        "",
        "serviceaccounts",
        Tier::PodPrerequisites,
        "ServiceAccount admission rejects a pod whose ServiceAccount does not exist",
    ),
    kind(
        "",
        "secrets",
        Tier::PodPrerequisites,
        "pods mount and reference them",
    ),
    kind(
        "",
        "configmaps",
        Tier::PodPrerequisites,
        "pods mount and reference them",
    ),
    kind(
        "",
        "limitranges",
        Tier::AdmissionPolicies,
        "LimitRanger admission defaults the resources of pods created after it: the copies of \
         pods the member admitted before would differ from the pods they mirror",
    ),
    kind(
        "",
        "resourcequotas",
        Tier::AdmissionPolicies,
        "a quota rejects what it covers until the quota controller has counted usage; created \
         last, it counts what exists and refuses nothing promote creates",
    ),
    kind(
        "",
        "persistentvolumeclaims",
        Tier::PodPrerequisites,
        "after their volume, before the pods that mount them",
    ),
    kind(
        "rbac.authorization.k8s.io",
        "roles",
        Tier::PodPrerequisites,
        "RoleBindings bind them",
    ),
    kind(
        "rbac.authorization.k8s.io",
        "rolebindings",
        Tier::RoleBindings,
        "after the Roles they bind",
    ),
    kind(
        "",
        "pods",
        Tier::Pods,
        "the leaves: existing before any controller, they are adopted, not replaced",
    ),
    kind(
        "apps",
        "replicasets",
        Tier::PodControllers,
        "adopt their pods by selector",
    ),
    kind(
        "",
        "replicationcontrollers",
        Tier::PodControllers,
        "adopt their pods by selector",
    ),
    kind(
        "apps",
        "controllerrevisions",
        Tier::PodControllers,
        "a StatefulSet or DaemonSet finds its current revision and makes no new one",
    ),
    kind(
        "apps",
        "deployments",
        Tier::Workloads,
        "adopts the ReplicaSet whose template hash matches its unchanged template: no rollout",
    ),
    kind(
        "apps",
        "statefulsets",
        Tier::Workloads,
        "adopts its pods and its current revision: no rollout",
    ),
    kind(
        "apps",
        "daemonsets",
        Tier::Workloads,
        "adopts its pods and its current revision: no rollout",
    ),
    kind("batch", "jobs", Tier::Workloads, "adopts its pods"),
    kind("batch", "cronjobs", Tier::WorkloadSchedulers, "owns Jobs"),
    kind("", "services", Tier::Traffic, "select pods that already exist"),
    kind(
        "",
        "endpoints",
        Tier::Traffic,
        "user-managed Endpoints of a Service without a selector",
    ),
    kind(
        "discovery.k8s.io",
        "endpointslices",
        Tier::Traffic,
        "user-managed EndpointSlices of a Service without a selector",
    ),
    kind(
        "networking.k8s.io",
        "ingresses",
        Tier::Traffic,
        "route to Services",
    ),
    kind(
        "networking.k8s.io",
        "networkpolicies",
        Tier::Traffic,
        "filter traffic to pods",
    ),
    kind(
        "autoscaling",
        "horizontalpodautoscalers",
        Tier::WorkloadPolicies,
        "scale a workload that must exist",
    ),
    kind(
        "policy",
        "poddisruptionbudgets",
        Tier::WorkloadPolicies,
        "guard pods of existing workloads",
    ),
];

/// A condition the engine waits for after creating a level, before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WaitPoint {
    /// Every CRD of the level reports condition `Established=True`: until then its instances
    /// are rejected.
    CrdsEstablished,
    /// The `default` ServiceAccount exists in every namespace of the level. The target's
    /// ServiceAccount controller creates it shortly after the namespace; pods using it are
    /// rejected by admission until then, and the `default` ServiceAccount merge needs it.
    DefaultServiceAccounts,
}

/// Objects that can be created concurrently. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// The phase of every object in the level.
    pub phase: Phase,
    /// The ownership height of every object in the level.
    pub height: usize,
    /// The tier of every object in the level.
    pub tier: Tier,
    /// The objects, in key order.
    pub objects: Vec<ObjectKey>,
    /// What to wait for before the next level.
    pub wait_after: Option<WaitPoint>,
}

impl Level {
    /// Why the level comes where it does: its height, its tier, and each kind's own reason.
    #[must_use]
    pub fn reason(&self) -> String {
        let height = if self.height == 0 {
            "height 0 (owns nothing in the set)".to_owned()
        } else {
            format!("height {} (owns objects created in earlier levels)", self.height)
        };
        let kinds: BTreeSet<String> = self
            .objects
            .iter()
            .map(|k| k.group_resource().to_string())
            .collect();
        let per_kind: Vec<String> = kinds
            .iter()
            .filter_map(|gr| {
                RESTORE_ORDER
                    .iter()
                    .find(|k| k.group_resource() == *gr)
                    .map(|k| format!("{gr}: {}", k.reason))
            })
            .collect();
        let mut text = format!("{height}; {}", self.tier.reason());
        if !per_kind.is_empty() {
            text.push_str(" [");
            text.push_str(&per_kind.join("; "));
            text.push(']');
        }
        text
    }
}

impl KindOrder {
    /// `resource.group`, or `resource` for core.
    #[must_use]
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A key the caller passed is not in the ownership graph.
    #[error("{0} is not in the ownership graph")]
    UnknownObject(ObjectKey),
}

/// The order to create objects in. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestorePlan {
    /// Levels, first to last.
    pub levels: Vec<Level>,
}

impl RestorePlan {
    /// The plan for every object of `graph`.
    #[must_use]
    pub fn build(graph: &OwnershipGraph) -> Self {
        Self::levels_of(graph, graph.keys())
    }

    /// The plan for `keys` only, ordered by their heights in the whole `graph`. Rollback uses
    /// it to re-create in the member just the owners detach deleted.
    ///
    /// # Errors
    /// [`PlanError::UnknownObject`] when a key is not in `graph`.
    pub fn build_for<'a>(
        graph: &OwnershipGraph,
        keys: impl IntoIterator<Item = &'a ObjectKey>,
    ) -> Result<Self, PlanError> {
        let keys: BTreeSet<&ObjectKey> = keys.into_iter().collect();
        if let Some(unknown) = keys.iter().find(|k| !graph.contains(k)) {
            return Err(PlanError::UnknownObject((*unknown).clone()));
        }
        Ok(Self::levels_of(graph, keys.into_iter()))
    }

    fn levels_of<'a>(graph: &OwnershipGraph, keys: impl Iterator<Item = &'a ObjectKey>) -> Self {
        let mut grouped: BTreeMap<(Phase, usize, Tier), Vec<ObjectKey>> = BTreeMap::new();
        for key in keys {
            let height = graph.height(key).unwrap_or(0);
            grouped
                .entry((Phase::of(key), height, Tier::of(key)))
                .or_default()
                .push(key.clone());
        }
        let mut levels: Vec<Level> = grouped
            .into_iter()
            .map(|((phase, height, tier), mut objects)| {
                objects.sort();
                Level {
                    phase,
                    height,
                    tier,
                    objects,
                    wait_after: None,
                }
            })
            .collect();
        // A wait point sits on the last level of its phase.
        for (phase, wait) in [
            (Phase::CustomResourceDefinitions, WaitPoint::CrdsEstablished),
            (Phase::Namespaces, WaitPoint::DefaultServiceAccounts),
        ] {
            if let Some(last) = levels.iter_mut().rev().find(|l| l.phase == phase) {
                last.wait_after = Some(wait);
            }
        }
        Self { levels }
    }

    /// Every object, in plan order.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.levels.iter().flat_map(|l| l.objects.iter())
    }

    /// Number of objects.
    #[must_use]
    pub fn len(&self) -> usize {
        self.levels.iter().map(|l| l.objects.len()).sum()
    }

    /// Whether the plan has no objects.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(|l| l.objects.is_empty())
    }

    /// The index of the level holding `key`.
    #[must_use]
    pub fn level_of(&self, key: &ObjectKey) -> Option<usize> {
        self.levels
            .iter()
            .position(|l| l.objects.binary_search(key).is_ok())
    }
}

/// Whether detach always deletes `key` (with `propagationPolicy: Orphan`), whatever its height:
/// a workload run by a controller ([`kpromote_model::workload::WORKLOADS`]). Left in the member,
/// its controller would keep managing the pods — or, for a CronJob, keep starting Jobs — next to
/// the copy in the control plane.
#[must_use]
pub fn is_detached_workload(key: &ObjectKey) -> bool {
    kpromote_model::workload::is_controlled(&key.group, &key.resource)
}

/// Whether `group` is one Kubernetes itself serves ([`BUILTIN_GROUPS`], a list of exact names).
/// Any other group is a custom resource's — including CRDs in `*.k8s.io` groups such as
/// `gateway.networking.k8s.io` or `snapshot.storage.k8s.io`, whose objects may own workloads.
#[must_use]
pub fn is_builtin_group(group: &str) -> bool {
    BUILTIN_GROUPS.contains(&group)
}

/// One level of a [`DetachPlan`]: owners of one height, deletable concurrently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachLevel {
    /// The ownership height of every object in the level.
    pub height: usize,
    /// The objects, in key order.
    pub objects: Vec<ObjectKey>,
}

/// The owners detach deletes in the member cluster, **top-down**: highest first, so no owner is
/// still there to re-create a dependent the plan already detached.
///
/// # Which objects
/// - every workload controller ([`is_detached_workload`]), whatever its height;
/// - every custom resource (a kind outside the [built-in groups](is_builtin_group)) that owns,
///   directly or through others, a pod or a detached workload: its operator would otherwise
///   re-create the children it lost.
///
/// Never: pods (they keep running), and every other built-in kind even when it owns something —
/// a Service owns its EndpointSlices, and deleting it would cut the traffic; a ConfigMap or
/// Secret owning a pod is still mounted by it. Objects the restore skips (completed Jobs, …) are
/// never detached: they are not re-created anywhere, so they stay where they are.
///
/// # Caveats
/// The engine deletes each level with `propagationPolicy: Orphan` and should wait until a level
/// is gone (the garbage collector has orphaned its dependents) before the next.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DetachPlan {
    /// Levels, first to delete first (descending height).
    pub levels: Vec<DetachLevel>,
}

impl DetachPlan {
    /// The detach plan for `graph`, leaving out `skipped` (objects the restore will not
    /// re-create, and the pods among them).
    #[must_use]
    pub fn build(graph: &OwnershipGraph, skipped: &BTreeSet<ObjectKey>) -> Self {
        Self::build_with(graph, skipped, &BTreeSet::new())
    }

    /// As [`DetachPlan::build`] for a graph of the upper part of the archive
    /// ([`OwnershipGraph::build_upper`]): `pod_owners` are its objects that own a restored pod
    /// outside it.
    #[must_use]
    pub fn build_with(
        graph: &OwnershipGraph,
        skipped: &BTreeSet<ObjectKey>,
        pod_owners: &BTreeSet<ObjectKey>,
    ) -> Self {
        let is_workload = is_detached_workload;
        let mut detached: BTreeSet<&ObjectKey> = graph
            .keys()
            .filter(|k| is_workload(k) && !skipped.contains(k))
            .collect();
        // Custom resources above a restored pod or a detached workload.
        let anchors: Vec<&ObjectKey> = graph
            .keys()
            .filter(|k| !skipped.contains(k) && (k.is("", "pods") || detached.contains(k)))
            .collect();
        let candidates = anchors
            .into_iter()
            .flat_map(|anchor| graph.ancestors(anchor))
            .chain(pod_owners.iter().flat_map(|owner| {
                let mut above = graph.ancestors(owner);
                above.extend(graph.record(owner).map(|r| &r.key));
                above
            }));
        for ancestor in candidates {
            if !is_builtin_group(&ancestor.group) && !skipped.contains(ancestor) {
                detached.insert(ancestor);
            }
        }
        let mut by_height: BTreeMap<usize, Vec<ObjectKey>> = BTreeMap::new();
        for key in detached {
            by_height
                .entry(graph.height(key).unwrap_or(0))
                .or_default()
                .push(key.clone());
        }
        let levels = by_height
            .into_iter()
            .rev()
            .map(|(height, objects)| DetachLevel { height, objects })
            .collect();
        Self { levels }
    }

    /// Every object, in deletion order.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.levels.iter().flat_map(|l| l.objects.iter())
    }

    /// Whether `key` is detached.
    #[must_use]
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.levels.iter().any(|l| l.objects.binary_search(key).is_ok())
    }
}

/// The steps of a [`TeardownPlan`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TeardownStep {
    /// Owners, highest first, so no controller re-creates a child already removed.
    Owners,
    /// Pods. The engine removes the Kosmos mark from each member pod first, so deleting the
    /// control-plane twin cannot reach the member pod.
    Pods,
    /// Everything else promote created, cluster-scoped objects included.
    Rest,
    /// Namespaces, once empty of what promote put there.
    Namespaces,
    /// CRDs promote created; never one that existed before.
    CustomResourceDefinitions,
}

impl TeardownStep {
    /// Every step, in order.
    pub const ALL: [Self; 5] = [
        Self::Owners,
        Self::Pods,
        Self::Rest,
        Self::Namespaces,
        Self::CustomResourceDefinitions,
    ];

    /// The step that removes `key`, of ownership `height`.
    #[must_use]
    pub fn of(key: &ObjectKey, height: usize) -> Self {
        match Phase::of(key) {
            Phase::CustomResourceDefinitions => Self::CustomResourceDefinitions,
            Phase::Namespaces => Self::Namespaces,
            Phase::Objects if key.is("", "pods") => Self::Pods,
            Phase::Objects | Phase::AdmissionPolicies if height > 0 => Self::Owners,
            Phase::Objects | Phase::AdmissionPolicies => Self::Rest,
        }
    }
}

/// One level of a [`TeardownPlan`]: objects deletable concurrently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownLevel {
    /// The step.
    pub step: TeardownStep,
    /// For [`TeardownStep::Owners`], the height of every object in the level; otherwise 0.
    pub height: usize,
    /// The objects, in key order.
    pub objects: Vec<ObjectKey>,
}

/// The order rollback removes from the control plane what promote created there: owners
/// top-down, then pods, then the rest, then namespaces, then CRDs. Only the objects the caller
/// names as created by promote are in it: an object that existed before promote — a shared
/// ClusterRole, a CRD — is never removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TeardownPlan {
    /// Levels, first to delete first.
    pub levels: Vec<TeardownLevel>,
}

impl TeardownPlan {
    /// The teardown of `created`, ordered by `graph`.
    ///
    /// # Errors
    /// [`PlanError::UnknownObject`] when a key of `created` is not in `graph`.
    pub fn build(graph: &OwnershipGraph, created: &BTreeSet<ObjectKey>) -> Result<Self, PlanError> {
        let mut grouped: BTreeMap<(TeardownStep, std::cmp::Reverse<usize>), Vec<ObjectKey>> = BTreeMap::new();
        for key in created {
            let height = graph
                .height(key)
                .ok_or_else(|| PlanError::UnknownObject(key.clone()))?;
            let step = TeardownStep::of(key, height);
            let height = if step == TeardownStep::Owners { height } else { 0 };
            grouped
                .entry((step, std::cmp::Reverse(height)))
                .or_default()
                .push(key.clone());
        }
        let levels = grouped
            .into_iter()
            .map(|((step, std::cmp::Reverse(height)), objects)| TeardownLevel {
                step,
                height,
                objects,
            })
            .collect();
        Ok(Self { levels })
    }

    /// Every object, in deletion order.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.levels.iter().flat_map(|l| l.objects.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpromote_model::ownership::testing::record;
    use kpromote_model::ownership::{ObjectRecord, OwnerReference};
    use proptest::prelude::*;

    fn key(s: &str) -> ObjectKey {
        s.parse().expect("test key")
    }

    fn shop() -> OwnershipGraph {
        OwnershipGraph::build([
            record(
                "customresourcedefinitions.apiextensions.k8s.io/databases.example.com",
                "CustomResourceDefinition",
                "crd",
                &[],
            ),
            record("namespaces/shop", "Namespace", "ns", &[]),
            record("storageclasses.storage.k8s.io/fast", "StorageClass", "sc", &[]),
            record("persistentvolumes/pv-1", "PersistentVolume", "pv", &[]),
            record(
                "clusterroles.rbac.authorization.k8s.io/reader",
                "ClusterRole",
                "cr",
                &[],
            ),
            record(
                "clusterrolebindings.rbac.authorization.k8s.io/reader",
                "ClusterRoleBinding",
                "crb",
                &[],
            ),
            record("serviceaccounts/shop/web", "ServiceAccount", "sa", &[]),
            record("configmaps/shop/cfg", "ConfigMap", "cm", &[]),
            record(
                "persistentvolumeclaims/shop/data-db-0",
                "PersistentVolumeClaim",
                "pvc",
                &[],
            ),
            record("roles.rbac.authorization.k8s.io/shop/r", "Role", "role", &[]),
            record(
                "rolebindings.rbac.authorization.k8s.io/shop/r",
                "RoleBinding",
                "rb",
                &[],
            ),
            record("databases.example.com/shop/db", "Database", "db", &[]),
            record(
                "statefulsets.apps/shop/db",
                "StatefulSet",
                "sts",
                &[("example.com/v1", "Database", "db:db")],
            ),
            record(
                "controllerrevisions.apps/shop/db-1",
                "ControllerRevision",
                "rev",
                &[("apps/v1", "StatefulSet", "sts:db")],
            ),
            record(
                "pods/shop/db-0",
                "Pod",
                "p0",
                &[("apps/v1", "StatefulSet", "sts:db")],
            ),
            record("deployments.apps/shop/web", "Deployment", "dep", &[]),
            record(
                "replicasets.apps/shop/web-1",
                "ReplicaSet",
                "rs1",
                &[("apps/v1", "Deployment", "dep:web")],
            ),
            record(
                "replicasets.apps/shop/web-0",
                "ReplicaSet",
                "rs0",
                &[("apps/v1", "Deployment", "dep:web")],
            ),
            record(
                "pods/shop/web-1-a",
                "Pod",
                "p1",
                &[("apps/v1", "ReplicaSet", "rs1:web-1")],
            ),
            record("services/shop/web", "Service", "svc", &[]),
            record(
                "endpointslices.discovery.k8s.io/shop/web-x",
                "EndpointSlice",
                "es",
                &[("v1", "Service", "svc:web")],
            ),
            record(
                "horizontalpodautoscalers.autoscaling/shop/web",
                "HorizontalPodAutoscaler",
                "hpa",
                &[],
            ),
            record("widgets.example.com/shop/w", "Widget", "w", &[]),
            record("gadgets.example.com/shop/g", "Gadget", "g", &[]),
        ])
        .expect("graph")
    }

    fn level_texts(plan: &RestorePlan) -> Vec<String> {
        plan.levels
            .iter()
            .map(|l| {
                let names: Vec<String> = l.objects.iter().map(ToString::to_string).collect();
                format!("{:?}/{}/{}: {}", l.phase, l.height, l.tier, names.join(" "))
            })
            .collect()
    }

    #[test]
    fn restore_plan_of_a_namespace() {
        let plan = RestorePlan::build(&shop());
        assert_eq!(
            level_texts(&plan),
            [
                "CustomResourceDefinitions/0/CustomResourceDefinitions: customresourcedefinitions.apiextensions.k8s.io/databases.example.com",
                "Namespaces/0/Namespaces: namespaces/shop",
                "Objects/0/ClusterPrerequisites: clusterroles.rbac.authorization.k8s.io/reader storageclasses.storage.k8s.io/fast",
                "Objects/0/ClusterBindings: persistentvolumes/pv-1 clusterrolebindings.rbac.authorization.k8s.io/reader",
                "Objects/0/PodPrerequisites: configmaps/shop/cfg persistentvolumeclaims/shop/data-db-0 serviceaccounts/shop/web roles.rbac.authorization.k8s.io/shop/r",
                "Objects/0/RoleBindings: rolebindings.rbac.authorization.k8s.io/shop/r",
                "Objects/0/Pods: pods/shop/db-0 pods/shop/web-1-a",
                "Objects/0/PodControllers: controllerrevisions.apps/shop/db-1 replicasets.apps/shop/web-0",
                "Objects/0/Traffic: endpointslices.discovery.k8s.io/shop/web-x",
                "Objects/0/WorkloadPolicies: horizontalpodautoscalers.autoscaling/shop/web",
                "Objects/0/Other(gadgets.example.com): gadgets.example.com/shop/g",
                "Objects/0/Other(widgets.example.com): widgets.example.com/shop/w",
                "Objects/1/PodControllers: replicasets.apps/shop/web-1",
                "Objects/1/Workloads: statefulsets.apps/shop/db",
                "Objects/1/Traffic: services/shop/web",
                "Objects/2/Workloads: deployments.apps/shop/web",
                "Objects/2/Other(databases.example.com): databases.example.com/shop/db",
            ]
        );
        assert_eq!(plan.levels[0].wait_after, Some(WaitPoint::CrdsEstablished));
        assert_eq!(plan.levels[1].wait_after, Some(WaitPoint::DefaultServiceAccounts));
        assert!(plan.levels[2..].iter().all(|l| l.wait_after.is_none()));
        assert_eq!(plan.len(), 24);
        let reason = plan.levels[6].reason();
        assert!(
            reason.starts_with("height 0 (owns nothing in the set); the leaves"),
            "{reason}"
        );
        assert!(reason.contains("pods: the leaves"), "{reason}");
    }

    #[test]
    fn velero_kind_order_is_kept_among_equal_heights() {
        // Velero's facts: pods before replicasets; persistentvolumes before claims.
        let plan = RestorePlan::build(&shop());
        let at = |k: &str| plan.level_of(&key(k)).expect("planned");
        assert!(at("persistentvolumes/pv-1") < at("persistentvolumeclaims/shop/data-db-0"));
        assert!(at("pods/shop/web-1-a") < at("replicasets.apps/shop/web-0"));
        assert!(at("serviceaccounts/shop/web") < at("pods/shop/db-0"));
    }

    #[test]
    fn build_for_keeps_full_graph_heights() {
        let g = shop();
        let keys = [
            key("deployments.apps/shop/web"),
            key("replicasets.apps/shop/web-1"),
            key("statefulsets.apps/shop/db"),
        ];
        let plan = RestorePlan::build_for(&g, &keys).expect("plan");
        assert_eq!(
            level_texts(&plan),
            [
                "Objects/1/PodControllers: replicasets.apps/shop/web-1",
                "Objects/1/Workloads: statefulsets.apps/shop/db",
                "Objects/2/Workloads: deployments.apps/shop/web",
            ]
        );
        assert_eq!(
            RestorePlan::build_for(&g, &[key("pods/shop/none")]),
            Err(PlanError::UnknownObject(key("pods/shop/none")))
        );
    }

    #[test]
    fn every_listed_kind_has_one_row_and_a_reason() {
        let mut seen = BTreeSet::new();
        for row in RESTORE_ORDER {
            assert!(
                seen.insert(row.group_resource()),
                "{} listed twice",
                row.group_resource()
            );
            assert!(!row.reason.is_empty());
            assert!(!row.tier.reason().is_empty());
        }
    }

    #[test]
    fn detach_plan_is_top_down_and_spares_non_controllers() {
        let g = shop();
        let plan = DetachPlan::build(&g, &BTreeSet::new());
        let levels: Vec<(usize, Vec<String>)> = plan
            .levels
            .iter()
            .map(|l| (l.height, l.objects.iter().map(ToString::to_string).collect()))
            .collect();
        assert_eq!(
            levels,
            [
                (
                    2,
                    vec![
                        "deployments.apps/shop/web".to_owned(),
                        "databases.example.com/shop/db".to_owned()
                    ]
                ),
                (
                    1,
                    vec![
                        "replicasets.apps/shop/web-1".to_owned(),
                        "statefulsets.apps/shop/db".to_owned()
                    ]
                ),
                (0, vec!["replicasets.apps/shop/web-0".to_owned()]),
            ]
        );
        // The Service owns its EndpointSlice, but deleting it would cut traffic.
        assert!(!plan.contains(&key("services/shop/web")));
        // Custom resources owning no pod or workload stay.
        assert!(!plan.contains(&key("widgets.example.com/shop/w")));
    }

    #[test]
    fn detach_plan_leaves_skipped_objects_alone() {
        let g = OwnershipGraph::build([
            record("cronjobs.batch/shop/nightly", "CronJob", "cj", &[]),
            record(
                "jobs.batch/shop/nightly-1",
                "Job",
                "j1",
                &[("batch/v1", "CronJob", "cj:nightly")],
            ),
            record(
                "pods/shop/nightly-1-x",
                "Pod",
                "p1",
                &[("batch/v1", "Job", "j1:nightly-1")],
            ),
            record("reports.example.com/shop/r", "Report", "r", &[]),
            record(
                "jobs.batch/shop/report",
                "Job",
                "j2",
                &[("example.com/v1", "Report", "r:r")],
            ),
            record(
                "pods/shop/report-x",
                "Pod",
                "p2",
                &[("batch/v1", "Job", "j2:report")],
            ),
        ])
        .expect("graph");
        let skipped: BTreeSet<ObjectKey> = [
            "jobs.batch/shop/nightly-1",
            "pods/shop/nightly-1-x",
            "jobs.batch/shop/report",
            "pods/shop/report-x",
        ]
        .into_iter()
        .map(key)
        .collect();
        let plan = DetachPlan::build(&g, &skipped);
        // The CronJob goes (it would keep starting Jobs in the member), its completed Job stays;
        // the Report owns only skipped objects and stays.
        assert_eq!(
            plan.objects().cloned().collect::<Vec<_>>(),
            [key("cronjobs.batch/shop/nightly")]
        );
    }

    #[test]
    fn kosmos_daemonsets_and_cronjobs_not_detached() {
        // Kosmos detached only StatefulSets, Deployments, ReplicaSets and the direct owners of
        // StatefulSets and Deployments: a DaemonSet or CronJob kept running its controller in
        // the member next to its copy in the control plane.
        let g = OwnershipGraph::build([
            record("daemonsets.apps/shop/agent", "DaemonSet", "ds", &[]),
            record(
                "pods/shop/agent-x",
                "Pod",
                "p",
                &[("apps/v1", "DaemonSet", "ds:agent")],
            ),
            record("cronjobs.batch/shop/nightly", "CronJob", "cj", &[]),
        ])
        .expect("graph");
        let plan = DetachPlan::build(&g, &BTreeSet::new());
        assert_eq!(
            plan.objects().cloned().collect::<Vec<_>>(),
            [
                key("daemonsets.apps/shop/agent"),
                key("cronjobs.batch/shop/nightly")
            ]
        );
    }

    #[test]
    fn kosmos_only_direct_owners_of_workloads_detached() {
        // Kosmos appended only the direct owners of StatefulSets and Deployments. An operator
        // two levels up kept running and re-created what it lost.
        let g = OwnershipGraph::build([
            record("platforms.example.com/shop/p", "Platform", "pl", &[]),
            record(
                "apps.example.com/shop/a",
                "App",
                "app",
                &[("example.com/v1", "Platform", "pl:p")],
            ),
            record(
                "deployments.apps/shop/web",
                "Deployment",
                "dep",
                &[("example.com/v1", "App", "app:a")],
            ),
        ])
        .expect("graph");
        let plan = DetachPlan::build(&g, &BTreeSet::new());
        assert_eq!(
            plan.objects().cloned().collect::<Vec<_>>(),
            [
                key("platforms.example.com/shop/p"),
                key("apps.example.com/shop/a"),
                key("deployments.apps/shop/web")
            ]
        );
    }

    #[test]
    fn kosmos_rollback_deletes_preexisting_cluster_objects() {
        // Kosmos's rollback deleted every backed-up object from the control plane, shared
        // ClusterRoles included. The teardown holds only what the caller says promote created.
        let g = shop();
        let created: BTreeSet<ObjectKey> = g
            .keys()
            .filter(|k| !k.is("rbac.authorization.k8s.io", "clusterroles") && !k.is(CRD_GROUP, CRD_RESOURCE))
            .cloned()
            .collect();
        let plan = TeardownPlan::build(&g, &created).expect("plan");
        assert!(
            !plan
                .objects()
                .any(|k| k.resource == "clusterroles" || k.resource == CRD_RESOURCE)
        );
        assert_eq!(plan.objects().count(), created.len());
        let steps: Vec<(TeardownStep, usize, usize)> = plan
            .levels
            .iter()
            .map(|l| (l.step, l.height, l.objects.len()))
            .collect();
        assert_eq!(
            steps,
            [
                (TeardownStep::Owners, 2, 2),
                (TeardownStep::Owners, 1, 3),
                (TeardownStep::Pods, 0, 2),
                (TeardownStep::Rest, 0, 14),
                (TeardownStep::Namespaces, 0, 1),
            ]
        );
    }

    #[test]
    fn teardown_removes_crds_promote_created_last() {
        let g = shop();
        let created: BTreeSet<ObjectKey> = g.keys().cloned().collect();
        let plan = TeardownPlan::build(&g, &created).expect("plan");
        let last = plan.levels.last().expect("levels");
        assert_eq!(last.step, TeardownStep::CustomResourceDefinitions);
        let unknown: BTreeSet<ObjectKey> = [key("pods/x/y")].into_iter().collect();
        assert_eq!(
            TeardownPlan::build(&g, &unknown),
            Err(PlanError::UnknownObject(key("pods/x/y")))
        );
    }

    #[test]
    fn builtin_groups() {
        for g in [
            "",
            "apps",
            "batch",
            "networking.k8s.io",
            "rbac.authorization.k8s.io",
            "policy",
        ] {
            assert!(is_builtin_group(g), "{g}");
        }
        for g in [
            "example.com",
            "kosmos.io",
            "cert-manager.io",
            "k8s.io.example.com",
        ] {
            assert!(!is_builtin_group(g), "{g}");
        }
    }

    /// Kinds random objects are drawn from: (group, resource, kind, cluster-scoped).
    const KINDS: &[(&str, &str, &str, bool)] = &[
        ("", "pods", "Pod", false),
        ("apps", "replicasets", "ReplicaSet", false),
        ("apps", "deployments", "Deployment", false),
        ("apps", "statefulsets", "StatefulSet", false),
        ("apps", "controllerrevisions", "ControllerRevision", false),
        ("batch", "cronjobs", "CronJob", false),
        ("", "configmaps", "ConfigMap", false),
        ("", "secrets", "Secret", false),
        ("", "services", "Service", false),
        ("", "persistentvolumeclaims", "PersistentVolumeClaim", false),
        ("example.com", "widgets", "Widget", false),
        ("example.com", "tenants", "Tenant", true),
        ("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", true),
        ("", "persistentvolumes", "PersistentVolume", true),
        ("", "namespaces", "Namespace", true),
        (CRD_GROUP, CRD_RESOURCE, "CustomResourceDefinition", true),
    ];

    prop_compose! {
        /// Up to 40 objects with random kinds, namespaces and acyclic ownerReferences (an owner
        /// has a higher index). Some references cross namespaces and end up dangling.
        fn random_graph()(specs in proptest::collection::vec(
            (0..KINDS.len(), 0usize..3, proptest::collection::vec(0usize..40, 0..3)), 1..40))
            -> Vec<ObjectRecord>
        {
            let namespaces = ["a", "b", "c"];
            let mut records: Vec<ObjectRecord> = specs.iter().enumerate().map(|(i, (k, ns, _))| {
                let (group, resource, kind, cluster) = KINDS[*k];
                let name = match resource {
                    "namespaces" => namespaces[*ns].to_owned(),
                    CRD_RESOURCE => "widgets.example.com".to_owned(),
                    _ => format!("o{i}"),
                };
                let key = if cluster { ObjectKey::cluster(group, resource, &name) }
                          else { ObjectKey::namespaced(group, resource, namespaces[*ns], &name) };
                let api_version = if group.is_empty() { "v1".to_owned() } else { format!("{group}/v1") };
                ObjectRecord { key, uid: Some(format!("u{i}")), api_version, kind: kind.to_owned(), owner_references: vec![] }
            }).collect();
            // One namespace or CRD per name.
            let mut seen = BTreeSet::new();
            let keep: Vec<bool> = records.iter().map(|r| seen.insert(r.key.clone())).collect();
            for (i, (_, _, owners)) in specs.iter().enumerate() {
                for &o in owners {
                    if o > i && o < records.len() && keep[o] {
                        let owner = &records[o];
                        let reference = OwnerReference {
                            api_version: owner.api_version.clone(), kind: owner.kind.clone(),
                            name: owner.key.name.clone(), uid: owner.uid.clone().unwrap_or_default(),
                            ..OwnerReference::default()
                        };
                        records[i].owner_references.push(reference);
                    }
                }
            }
            records.into_iter().zip(keep).filter(|(_, k)| *k).map(|(r, _)| r).collect()
        }
    }

    #[test]
    fn custom_resource_in_a_k8s_io_group_owning_a_workload_is_detached() {
        // A CRD may live in a `*.k8s.io` group (gateway.networking.k8s.io,
        // snapshot.storage.k8s.io): its operator would re-create the Deployment it lost.
        let g = OwnershipGraph::build([
            record("gateways.gateway.networking.k8s.io/shop/gw", "Gateway", "gw", &[]),
            record(
                "deployments.apps/shop/gw-proxy",
                "Deployment",
                "dep",
                &[("gateway.networking.k8s.io/v1", "Gateway", "gw:gw")],
            ),
            record(
                "replicasets.apps/shop/gw-proxy-1",
                "ReplicaSet",
                "rs",
                &[("apps/v1", "Deployment", "dep:gw-proxy")],
            ),
            record(
                "pods/shop/gw-proxy-1-a",
                "Pod",
                "pod",
                &[("apps/v1", "ReplicaSet", "rs:gw-proxy-1")],
            ),
        ])
        .expect("graph");
        let plan = DetachPlan::build(&g, &BTreeSet::new());
        assert!(
            plan.contains(&key("gateways.gateway.networking.k8s.io/shop/gw")),
            "{plan:?}"
        );
        assert_eq!(
            plan.levels[0].objects,
            vec![key("gateways.gateway.networking.k8s.io/shop/gw")]
        );
        assert!(!is_builtin_group("gateway.networking.k8s.io"));
        assert!(is_builtin_group("networking.k8s.io") && is_builtin_group(""));
    }

    proptest! {
        #[test]
        fn restore_plan_orders_dependents_namespaces_and_crds_first(records in random_graph()) {
            let g = OwnershipGraph::build(records).expect("acyclic");
            let plan = RestorePlan::build(&g);
            // Every input exactly once.
            let planned: Vec<&ObjectKey> = plan.objects().collect();
            let unique: BTreeSet<&ObjectKey> = planned.iter().copied().collect();
            prop_assert_eq!(planned.len(), g.len());
            prop_assert_eq!(unique.len(), g.len());
            for k in g.keys() {
                let at = plan.level_of(k).expect("planned");
                for owner in g.owners(k) {
                    let owner_at = plan.level_of(owner).expect("planned");
                    if Phase::of(owner) >= Phase::of(k) {
                        prop_assert!(at < owner_at, "{} (level {}) not before its owner {} (level {})", k, at, owner, owner_at);
                    }
                }
                if let Some(ns) = &k.namespace
                    && let Some(ns_at) = plan.level_of(&ObjectKey::cluster("", "namespaces", ns))
                {
                    prop_assert!(ns_at < at, "{} not after its namespace", k);
                }
                if Phase::of(k) != Phase::CustomResourceDefinitions {
                    let crd = ObjectKey::cluster(CRD_GROUP, CRD_RESOURCE, &format!("{}.{}", k.resource, k.group));
                    if let Some(crd_at) = plan.level_of(&crd) {
                        prop_assert!(crd_at < at, "{} not after its CRD", k);
                    }
                }
            }
            // Levels are sorted and hold no ownership edge.
            for level in &plan.levels {
                prop_assert!(level.objects.windows(2).all(|w| w[0] < w[1]));
                for k in &level.objects {
                    prop_assert!(g.owners(k).all(|o| level.objects.binary_search(o).is_err()));
                }
            }
        }

        #[test]
        fn detach_plan_is_owners_first_and_never_pods(records in random_graph()) {
            let g = OwnershipGraph::build(records).expect("acyclic");
            let plan = DetachPlan::build(&g, &BTreeSet::new());
            let order: Vec<&ObjectKey> = plan.objects().collect();
            for (i, k) in order.iter().enumerate() {
                prop_assert!(!k.is("", "pods") && !k.is("", "namespaces") && !k.is("", "services"));
                prop_assert!(is_detached_workload(k) || !is_builtin_group(&k.group));
                // No detached ancestor comes later.
                for a in g.ancestors(k) {
                    if let Some(j) = order.iter().position(|x| *x == a) {
                        prop_assert!(j < i, "{} deleted after its dependent {}", a, k);
                    }
                }
            }
        }

        /// Rollback plans from the upper part of the graph (owners and workloads) and the pods'
        /// owners streamed past: the same detach plan, and the same re-creation order, as from
        /// the whole graph.
        #[test]
        fn the_upper_part_detaches_and_recreates_as_the_whole(records in random_graph(), skip in proptest::collection::vec(any::<bool>(), 40)) {
            let whole = OwnershipGraph::build(records.clone()).expect("acyclic");
            let skipped: BTreeSet<ObjectKey> =
                whole.keys().zip(skip.iter().cycle()).filter(|(_, s)| **s).map(|(k, _)| k.clone()).collect();
            let (upper, outside): (Vec<ObjectRecord>, Vec<ObjectRecord>) = records
                .into_iter()
                .partition(|r| whole.dependents(&r.key).next().is_some() || is_detached_workload(&r.key));
            let part = OwnershipGraph::build_upper(upper, outside.clone()).expect("acyclic");
            let pod_owners: BTreeSet<ObjectKey> = outside
                .iter()
                .filter(|r| r.key.is("", "pods") && !skipped.contains(&r.key))
                .flat_map(|r| part.owners_of(r).cloned().collect::<Vec<_>>())
                .collect();
            let part_skipped: BTreeSet<ObjectKey> = skipped.iter().filter(|k| part.contains(k)).cloned().collect();
            let expected = DetachPlan::build(&whole, &skipped);
            prop_assert_eq!(&DetachPlan::build_with(&part, &part_skipped, &pod_owners), &expected);
            prop_assert_eq!(
                RestorePlan::build_for(&part, expected.objects()).expect("plan"),
                RestorePlan::build_for(&whole, expected.objects()).expect("plan")
            );
        }

        #[test]
        fn teardown_holds_exactly_the_created_objects(records in random_graph(), pick in proptest::collection::vec(any::<bool>(), 40)) {
            let g = OwnershipGraph::build(records).expect("acyclic");
            let created: BTreeSet<ObjectKey> =
                g.keys().zip(pick.iter().cycle()).filter(|(_, p)| **p).map(|(k, _)| k.clone()).collect();
            let plan = TeardownPlan::build(&g, &created).expect("plan");
            let order: Vec<&ObjectKey> = plan.objects().collect();
            prop_assert_eq!(order.len(), created.len());
            for (i, k) in order.iter().enumerate() {
                prop_assert!(created.contains(*k));
                // Owners before their dependents, except pods, namespaces and CRDs which have their own steps.
                if matches!(Phase::of(k), Phase::Objects | Phase::AdmissionPolicies) && !k.is("", "pods") {
                    for d in g.dependents(k) {
                        if let Some(j) = order.iter().position(|x| *x == d) {
                            prop_assert!(i < j, "{} torn down after its dependent {}", k, d);
                        }
                    }
                }
            }
        }
    }
}
