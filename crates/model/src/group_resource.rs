//! [`GroupResource`]: a resource type independent of its version, the one spelling of
//! `resource.group` in the archive layout, the CLI, policies and plans — and the tables of types
//! and groups the rest of kpromote refers to by name.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A resource type independent of its version: `deployments` in group `apps`.
///
/// Displayed and parsed as `resource.group`, or just `resource` for the core group — the spelling
/// of `kubectl api-resources`, of `excludedNamespaceScopedResources`, and of the archive layout
/// (`resources/<resource>[.<group>]/...`). Resource names never contain a dot, so the first dot
/// separates the resource from the group and [`FromStr`] inverts [`Display`](fmt::Display).
///
/// Ordered by group, then resource; the core group (`""`) sorts first.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupResource {
    group: Cow<'static, str>,
    resource: Cow<'static, str>,
}

impl GroupResource {
    /// A group-resource from static strings, usable in constants.
    #[must_use]
    pub const fn from_static(group: &'static str, resource: &'static str) -> Self {
        Self {
            group: Cow::Borrowed(group),
            resource: Cow::Borrowed(resource),
        }
    }

    /// A group-resource; `group` is `""` for the core group.
    #[must_use]
    pub fn new(group: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            group: Cow::Owned(group.into()),
            resource: Cow::Owned(resource.into()),
        }
    }

    /// The API group, `""` for the core group.
    #[must_use]
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The plural resource name, e.g. `deployments`.
    #[must_use]
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Whether this is a type of the core (legacy, `/api/v1`) group.
    #[must_use]
    pub fn is_core(&self) -> bool {
        self.group.is_empty()
    }

    /// Whether the group is one kube-apiserver itself serves (see [`BUILTIN_GROUPS`]). Any other
    /// group is served by a CustomResourceDefinition or an aggregated API server.
    #[must_use]
    pub fn is_builtin(&self) -> bool {
        BUILTIN_GROUPS.contains(&self.group())
    }
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

impl fmt::Debug for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupResource({self})")
    }
}

/// Why a string is not a `resource[.group]` name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a group-resource name (`resource` or `resource.group`): {reason}")]
pub struct ParseGroupResourceError {
    input: String,
    reason: &'static str,
}

impl FromStr for GroupResource {
    type Err = ParseGroupResourceError;

    /// Splits at the first dot: `events.events.k8s.io` is resource `events` of group
    /// `events.k8s.io`. This is syntax only; `ApiSurface::resolve` (kpromote-core) maps user input (short
    /// names, kinds, versions) to a served type.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseGroupResourceError {
            input: s.to_owned(),
            reason,
        };
        let (resource, group) = split_group_resource(s);
        if resource.is_empty() {
            return Err(err("the resource part is empty"));
        }
        if s.contains('.') && group.is_empty() {
            return Err(err("the group after the dot is empty"));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-'))
        {
            return Err(if bad == '/' {
                err("subresources (`pods/log`) are not resource types")
            } else {
                err("only letters, digits, `-` and `.` are allowed")
            });
        }
        Ok(Self::new(group, resource))
    }
}

impl Serialize for GroupResource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GroupResource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Splits `deployments.apps` into `("deployments", "apps")` and `pods` into `("pods", "")`: the
/// one place `resource.group` is taken apart. Resources never contain a dot, so the first dot
/// separates them (as Kubernetes' `ParseGroupResource`). Syntax only, nothing is checked.
#[must_use]
pub fn split_group_resource(gr: &str) -> (&str, &str) {
    gr.split_once('.').unwrap_or((gr, ""))
}

/// Group-resources kpromote refers to by name.
pub mod well_known {
    use super::GroupResource;

    /// `namespaces` (core, cluster-scoped).
    pub const NAMESPACES: GroupResource = GroupResource::from_static("", "namespaces");
    /// `pods` (core).
    pub const PODS: GroupResource = GroupResource::from_static("", "pods");
    /// `podtemplates` (core).
    pub const POD_TEMPLATES: GroupResource = GroupResource::from_static("", "podtemplates");
    /// `replicationcontrollers` (core).
    pub const REPLICATION_CONTROLLERS: GroupResource =
        GroupResource::from_static("", "replicationcontrollers");
    /// `persistentvolumeclaims` (core).
    pub const PERSISTENT_VOLUME_CLAIMS: GroupResource =
        GroupResource::from_static("", "persistentvolumeclaims");
    /// `persistentvolumes` (core, cluster-scoped).
    pub const PERSISTENT_VOLUMES: GroupResource = GroupResource::from_static("", "persistentvolumes");
    /// `events` (core).
    pub const EVENTS: GroupResource = GroupResource::from_static("", "events");
    /// `endpoints` (core).
    pub const ENDPOINTS: GroupResource = GroupResource::from_static("", "endpoints");
    /// `deployments.apps`.
    pub const DEPLOYMENTS: GroupResource = GroupResource::from_static("apps", "deployments");
    /// `replicasets.apps`.
    pub const REPLICA_SETS: GroupResource = GroupResource::from_static("apps", "replicasets");
    /// `statefulsets.apps`.
    pub const STATEFUL_SETS: GroupResource = GroupResource::from_static("apps", "statefulsets");
    /// `daemonsets.apps`.
    pub const DAEMON_SETS: GroupResource = GroupResource::from_static("apps", "daemonsets");
    /// `jobs.batch`.
    pub const JOBS: GroupResource = GroupResource::from_static("batch", "jobs");
    /// `cronjobs.batch`.
    pub const CRON_JOBS: GroupResource = GroupResource::from_static("batch", "cronjobs");
    /// `events.events.k8s.io`.
    pub const EVENTS_EVENTS_K8S_IO: GroupResource = GroupResource::from_static("events.k8s.io", "events");
    /// `endpointslices.discovery.k8s.io`.
    pub const ENDPOINT_SLICES: GroupResource =
        GroupResource::from_static("discovery.k8s.io", "endpointslices");
    /// `ingresses.networking.k8s.io`.
    pub const INGRESSES: GroupResource = GroupResource::from_static("networking.k8s.io", "ingresses");
    /// `ingressclasses.networking.k8s.io` (cluster-scoped).
    pub const INGRESS_CLASSES: GroupResource =
        GroupResource::from_static("networking.k8s.io", "ingressclasses");
    /// `storageclasses.storage.k8s.io` (cluster-scoped).
    pub const STORAGE_CLASSES: GroupResource = GroupResource::from_static("storage.k8s.io", "storageclasses");
    /// `priorityclasses.scheduling.k8s.io` (cluster-scoped).
    pub const PRIORITY_CLASSES: GroupResource =
        GroupResource::from_static("scheduling.k8s.io", "priorityclasses");
    /// `runtimeclasses.node.k8s.io` (cluster-scoped).
    pub const RUNTIME_CLASSES: GroupResource = GroupResource::from_static("node.k8s.io", "runtimeclasses");
    /// `rolebindings.rbac.authorization.k8s.io`.
    pub const ROLE_BINDINGS: GroupResource =
        GroupResource::from_static("rbac.authorization.k8s.io", "rolebindings");
    /// `clusterroles.rbac.authorization.k8s.io` (cluster-scoped).
    pub const CLUSTER_ROLES: GroupResource =
        GroupResource::from_static("rbac.authorization.k8s.io", "clusterroles");
    /// `clusterrolebindings.rbac.authorization.k8s.io` (cluster-scoped).
    pub const CLUSTER_ROLE_BINDINGS: GroupResource =
        GroupResource::from_static("rbac.authorization.k8s.io", "clusterrolebindings");
    /// `customresourcedefinitions.apiextensions.k8s.io` (cluster-scoped).
    pub const CUSTOM_RESOURCE_DEFINITIONS: GroupResource =
        GroupResource::from_static("apiextensions.k8s.io", "customresourcedefinitions");
}

/// API groups kube-apiserver serves itself (v1.35, including groups off by default and groups
/// removed since, so that older and newer servers are covered). A namespaced type of any other
/// group belongs to a CustomResourceDefinition or an aggregated API server.
///
/// # Caveats
/// CRDs can live in `*.k8s.io` groups too (with the `api-approved.kubernetes.io` annotation, e.g.
/// `gateway.networking.k8s.io`, `snapshot.storage.k8s.io`), so this is a list of exact names, not
/// a suffix rule.
pub const BUILTIN_GROUPS: &[&str] = &[
    "",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "extensions",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "storagemigration.k8s.io",
];
