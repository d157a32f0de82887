//! Where each kind sits in the restore order: the API server's [`Phase`]s and, among objects of
//! equal ownership height, each kind's [`Tier`] — one table, [`RESTORE_ORDER`], with a reason per
//! row.

use std::fmt;

use kpromote_model::object_key::ObjectKey;

/// Group of CustomResourceDefinitions.
pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
/// Resource of CustomResourceDefinitions.
pub(crate) const CRD_RESOURCE: &str = "customresourcedefinitions";

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
    pub(crate) fn of(key: &ObjectKey) -> Self {
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
pub(crate) const ADMISSION_POLICIES: &[(&str, &str)] = &[("", "limitranges"), ("", "resourcequotas")];

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
    pub(crate) fn of(key: &ObjectKey) -> Self {
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
    pub(crate) fn reason(&self) -> &'static str {
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
pub(crate) struct KindOrder {
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
/// [`Tier::Other`]. Ownership height comes before the tier (see the [order module docs](super)).
pub(crate) const RESTORE_ORDER: &[KindOrder] = &[
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

impl KindOrder {
    /// `resource.group`, or `resource` for core.
    #[must_use]
    pub(crate) fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}
