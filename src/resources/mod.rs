//! What the API server serves, and what a user's resource type names mean.
//!
//! - [`GroupResource`] names a resource type the way the archive layout and `kubectl api-resources`
//!   do: `deployments.apps`, `events.events.k8s.io`, and plain `pods` for the core group.
//! - [`ApiSurface`] is the set of resource types one cluster serves, built by discovery
//!   ([`ApiSurface::discover`]) or from a recorded [`DiscoveryDocument`] (fixtures, tests, offline
//!   precheck).
//! - [`ApiSurface::resolve`] turns a user's name (`deploy`, `Deployment`, `deployments.v1.apps`,
//!   `events.events.k8s.io`, ...) into the served type it means, as kubectl does; see
//!   [`resolve`](mod@resolve) for the exact rules.
//! - [`ApiSurface::backup_types`] decides which namespaced types a backup lists.
//!
//! # Types served by two groups
//!
//! Some objects are reachable through two API groups: in Kubernetes v1.35 every Event is both a
//! core `events` object and an `events.events.k8s.io` object (one storage, two representations).
//! [`COHABITING`] lists these families; a backup stores each family once, under its first
//! (canonical) group, and excluding any member excludes the whole family.

mod discovery;
pub mod resolve;

pub use discovery::{DiscoveryDocument, DiscoveryError, DiscoveryWarning};
pub use resolve::{ExcludedResources, InvalidResourceNames, MatchKind, Resolution, ResolveError};

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
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
    /// `events.k8s.io`. This is syntax only; [`ApiSurface::resolve`] maps user input (short
    /// names, kinds, versions) to a served type.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseGroupResourceError {
            input: s.to_owned(),
            reason,
        };
        let (resource, group) = s.split_once('.').unwrap_or((s, ""));
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

/// Group-resources this crate refers to by name.
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

/// The excluded namespaced resource types the Kosmos design recommends for every promote, in the
/// spelling of `excludedNamespaceScopedResources`. Each is either regenerated by the target
/// cluster's own controllers or is history only, so restoring it would at best duplicate what the
/// control plane creates by itself and at worst fight it:
///
/// - `events`, `events.events.k8s.io`: a record of what happened in the member cluster. Restored,
///   they would describe objects (by uid) that do not exist in the control plane, and they expire
///   after the event TTL anyway. Both spellings name the same objects (see [`COHABITING`]).
/// - `endpoints`: written by the endpoints controller from each Service's selector and the ready
///   pods; the control plane's controller rebuilds it, and a restored copy would carry member pod
///   IPs and target references by uid.
/// - `endpointslices.discovery.k8s.io`: written by the EndpointSlice controller (and mirrored from
///   endpoints) for the same reason; restored slices would be owned by a Service uid that no
///   longer exists and be garbage-collected or duplicated.
///
/// The caller applies this list when the user gives none; it is not added to a list the user
/// gave.
pub const DEFAULT_EXCLUDED_RESOURCES: [&str; 4] = [
    "events",
    "events.events.k8s.io",
    "endpoints",
    "endpointslices.discovery.k8s.io",
];

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

/// One resource reachable through several API groups that share the same stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cohabiting {
    /// The plural resource name, the same in every group.
    pub resource: &'static str,
    /// The groups serving it, canonical first: a backup stores the family under the first group
    /// the server serves.
    pub groups: &'static [&'static str],
}

/// Resource types served by more than one group over one storage (the same objects, not merely
/// the same kind name, which unrelated CRDs may share). A backup keeps the first served group of
/// each family and skips the others; excluding any member excludes the family.
///
/// - `events`: **core is canonical.** Core `v1` Events are served by every Kubernetes version
///   (events.k8s.io/v1 only since 1.19), both representations convert losslessly to the same
///   stored object, the bare name `events` resolves to core (kubectl and [`ApiSurface::resolve`]),
///   and Velero's backups also keep the core copy. Only this family exists in v1.35.
/// - `deployments`, `daemonsets`, `replicasets`, `networkpolicies`, `ingresses`: the old
///   `extensions` group served them until 1.16 (ingresses until 1.22); the GA group is canonical.
pub const COHABITING: &[Cohabiting] = &[
    Cohabiting {
        resource: "events",
        groups: &["", "events.k8s.io"],
    },
    Cohabiting {
        resource: "deployments",
        groups: &["apps", "extensions"],
    },
    Cohabiting {
        resource: "daemonsets",
        groups: &["apps", "extensions"],
    },
    Cohabiting {
        resource: "replicasets",
        groups: &["apps", "extensions"],
    },
    Cohabiting {
        resource: "networkpolicies",
        groups: &["networking.k8s.io", "extensions"],
    },
    Cohabiting {
        resource: "ingresses",
        groups: &["networking.k8s.io", "extensions"],
    },
];

/// The cohabiting family `gr` belongs to, if any.
fn cohabiting_family(gr: &GroupResource) -> Option<&'static Cohabiting> {
    COHABITING
        .iter()
        .find(|c| c.resource == gr.resource() && c.groups.contains(&gr.group()))
}

/// Every group-resource that names the same objects as `gr`, `gr` included.
#[must_use]
pub fn same_objects_as(gr: &GroupResource) -> Vec<GroupResource> {
    match cohabiting_family(gr) {
        Some(family) => family
            .groups
            .iter()
            .map(|g| GroupResource::new(*g, family.resource))
            .collect(),
        None => vec![gr.clone()],
    }
}

/// Verbs a namespaced type must support to be backed up and restored: `list` to read it, `get`
/// to re-read, `create` to restore it, `delete` to roll back.
pub const BACKUP_VERBS: [&str; 4] = ["list", "get", "create", "delete"];

/// One resource type the server serves (subresources such as `pods/log` are not included).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServedResource {
    /// Group and plural name.
    pub group_resource: GroupResource,
    /// The version to use: the group's preferred version when it serves this type, otherwise
    /// the first version (in discovery order) that does.
    pub version: String,
    /// Every version serving this type, [`version`](Self::version) first.
    pub versions: Vec<String>,
    /// The kind, e.g. `Deployment`.
    pub kind: String,
    /// The singular name, e.g. `deployment` (the lowercased kind when discovery left it empty).
    pub singular: String,
    /// Short names, e.g. `deploy`.
    pub short_names: Vec<String>,
    /// Categories, e.g. `all`.
    pub categories: Vec<String>,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// The verbs the server supports for this type.
    pub verbs: BTreeSet<String>,
}

impl ServedResource {
    /// `group/version`, or `version` for the core group, as in an object's `apiVersion`.
    #[must_use]
    pub fn api_version(&self) -> String {
        if self.group_resource.is_core() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group_resource.group(), self.version)
        }
    }

    /// Whether the server supports `verb` for this type.
    #[must_use]
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.contains(verb)
    }

    /// Whether objects of this type can be backed up from namespaces and restored: namespaced
    /// and supporting every verb in [`BACKUP_VERBS`].
    #[must_use]
    pub fn is_backup_candidate(&self) -> bool {
        self.namespaced && BACKUP_VERBS.iter().all(|v| self.supports(v))
    }

    /// The kube-rs description used to build an `Api<DynamicObject>` for this type.
    #[must_use]
    pub fn api_resource(&self) -> kube::core::ApiResource {
        kube::core::ApiResource {
            group: self.group_resource.group().to_owned(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.group_resource.resource().to_owned(),
        }
    }
}

/// The resource types one cluster serves, from discovery.
///
/// Resources are kept in **priority order**: the core group first, then the groups in the order
/// the server lists them at `/apis` (kube-apiserver sorts that list by group priority: built-in
/// groups first, then CRD and aggregated groups), and within a group in the order of the group's
/// resource list. Name resolution prefers earlier entries, like kubectl's discovery REST mapper.
#[derive(Debug, Clone)]
pub struct ApiSurface {
    resources: Vec<ServedResource>,
    index: HashMap<GroupResource, usize>,
    server_version: Option<String>,
    warnings: Vec<DiscoveryWarning>,
}

impl ApiSurface {
    /// Parses a [`DiscoveryDocument`] in JSON (e.g. a fixture under `fixtures/discovery/`) and
    /// builds the surface from it.
    ///
    /// # Errors
    /// When the JSON is not a discovery document.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        let doc: DiscoveryDocument = serde_json::from_str(json)?;
        Ok(Self::from_document(&doc))
    }

    /// Every served type, in priority order (see the type's docs).
    #[must_use]
    pub fn resources(&self) -> &[ServedResource] {
        &self.resources
    }

    /// The served type `gr`, if the server serves it.
    #[must_use]
    pub fn get(&self, gr: &GroupResource) -> Option<&ServedResource> {
        self.index.get(gr).map(|&i| &self.resources[i])
    }

    /// Whether some type of `group` is served (`""` for core).
    #[must_use]
    pub fn serves_group(&self, group: &str) -> bool {
        self.resources.iter().any(|r| r.group_resource.group() == group)
    }

    /// The server's `gitVersion`, when discovery recorded it.
    #[must_use]
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    /// Group versions whose discovery failed (an aggregated API down, a broken CRD conversion).
    /// Their types are missing from this surface: a backup made from it does not contain them.
    #[must_use]
    pub fn warnings(&self) -> &[DiscoveryWarning] {
        &self.warnings
    }

    /// The group-resource a backup stores objects of `gr` under: `gr` itself, or the canonical
    /// member of its [`COHABITING`] family that this server serves.
    #[must_use]
    pub fn canonical(&self, gr: &GroupResource) -> GroupResource {
        same_objects_as(gr)
            .into_iter()
            .find(|member| self.get(member).is_some())
            .unwrap_or_else(|| gr.clone())
    }

    /// The namespaced types a backup lists, sorted by [`GroupResource`] (core first): every
    /// [backup candidate](ServedResource::is_backup_candidate) that is not `excluded` and is the
    /// canonical member of its [`COHABITING`] family.
    #[must_use]
    pub fn backup_types(&self, excluded: &ExcludedResources) -> Vec<&ServedResource> {
        let mut types: Vec<&ServedResource> = self
            .resources
            .iter()
            .filter(|r| r.is_backup_candidate())
            .filter(|r| !excluded.contains(&r.group_resource))
            .filter(|r| {
                // Keep only the first member of a family that is itself a candidate.
                let first = same_objects_as(&r.group_resource)
                    .into_iter()
                    .find(|m| self.get(m).is_some_and(ServedResource::is_backup_candidate));
                first.is_none_or(|m| m == r.group_resource)
            })
            .collect();
        types.sort_by(|a, b| a.group_resource.cmp(&b.group_resource));
        types
    }

    fn build(
        resources: Vec<ServedResource>,
        server_version: Option<String>,
        warnings: Vec<DiscoveryWarning>,
    ) -> Self {
        let index = resources
            .iter()
            .enumerate()
            .map(|(i, r)| (r.group_resource.clone(), i))
            .collect();
        Self {
            resources,
            index,
            server_version,
            warnings,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::ApiSurface;

    /// The discovery of a real v1.35 kube-apiserver with cert-manager's and prometheus-operator's
    /// CRDs, plus metrics-server's group (`fixtures/discovery/kube-v1.35.json`, recorded and
    /// checked by `tests/backup_pieces.rs`).
    pub(crate) const KUBE_V1_35_JSON: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/discovery/kube-v1.35.json"
    ));

    pub(crate) fn kube_v1_35() -> ApiSurface {
        match ApiSurface::from_json(KUBE_V1_35_JSON) {
            Ok(surface) => surface,
            Err(err) => panic!("fixture kube-v1.35.json does not parse: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::kube_v1_35;
    use super::*;
    use proptest::prelude::*;

    fn gr(s: &str) -> GroupResource {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn display_uses_archive_spelling() {
        assert_eq!(well_known::PODS.to_string(), "pods");
        assert_eq!(well_known::DEPLOYMENTS.to_string(), "deployments.apps");
        assert_eq!(
            well_known::EVENTS_EVENTS_K8S_IO.to_string(),
            "events.events.k8s.io"
        );
    }

    #[test]
    fn parse_splits_at_first_dot() {
        let g = gr("events.events.k8s.io");
        assert_eq!((g.group(), g.resource()), ("events.k8s.io", "events"));
        assert_eq!(gr("pods"), well_known::PODS);
        assert!("".parse::<GroupResource>().is_err());
        assert!(".apps".parse::<GroupResource>().is_err());
        assert!("pods.".parse::<GroupResource>().is_err());
        assert!("pods/log".parse::<GroupResource>().is_err());
        assert!("pods log".parse::<GroupResource>().is_err());
    }

    #[test]
    fn static_and_owned_compare_equal() {
        assert_eq!(GroupResource::new("apps", "deployments"), well_known::DEPLOYMENTS);
        let mut set = BTreeSet::new();
        set.insert(GroupResource::new("apps", "deployments"));
        assert!(set.contains(&well_known::DEPLOYMENTS));
    }

    #[test]
    fn core_sorts_first() {
        let mut v = [
            well_known::DEPLOYMENTS,
            well_known::PODS,
            well_known::ENDPOINT_SLICES,
        ];
        v.sort();
        assert_eq!(v[0], well_known::PODS);
    }

    #[test]
    fn serde_is_the_display_string() {
        let json = serde_json::to_string(&well_known::STORAGE_CLASSES).unwrap_or_default();
        assert_eq!(json, "\"storageclasses.storage.k8s.io\"");
        let back: GroupResource = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, well_known::STORAGE_CLASSES);
    }

    #[test]
    fn builtin_groups() {
        assert!(well_known::PODS.is_builtin());
        assert!(well_known::DEPLOYMENTS.is_builtin());
        assert!(!gr("certificates.cert-manager.io").is_builtin());
        assert!(!gr("gateways.gateway.networking.k8s.io").is_builtin());
    }

    #[test]
    fn fixture_skips_subresources_and_keeps_preferred_versions() {
        let s = kube_v1_35();
        assert!(
            s.resources()
                .iter()
                .all(|r| !r.group_resource.resource().contains('/'))
        );
        let hpa = s
            .get(&gr("horizontalpodautoscalers.autoscaling"))
            .unwrap_or_else(|| panic!("hpa"));
        assert_eq!(hpa.version, "v2");
        assert_eq!(hpa.versions, ["v2", "v1"]);
        assert_eq!(hpa.api_version(), "autoscaling/v2");
        // Only served by a non-preferred version.
        let amcfg = s
            .get(&gr("alertmanagerconfigs.monitoring.coreos.com"))
            .unwrap_or_else(|| panic!("am"));
        assert_eq!(amcfg.version, "v1alpha1");
        let pods = s.get(&well_known::PODS).unwrap_or_else(|| panic!("pods"));
        assert_eq!(pods.api_version(), "v1");
        assert_eq!(pods.api_resource().plural, "pods");
        assert_eq!(s.server_version(), Some("v1.35.4"));
        assert!(s.warnings().is_empty());
    }

    #[test]
    fn fixture_priority_order_starts_with_core() {
        let s = kube_v1_35();
        let first_non_core = s
            .resources()
            .iter()
            .position(|r| !r.group_resource.is_core())
            .unwrap_or_default();
        assert!(first_non_core > 0);
        assert!(
            s.resources()[first_non_core..]
                .iter()
                .all(|r| !r.group_resource.is_core())
        );
        assert_eq!(
            s.resources()[first_non_core].group_resource.group(),
            "apiregistration.k8s.io"
        );
    }

    #[test]
    fn canonical_events_is_core() {
        let s = kube_v1_35();
        assert_eq!(s.canonical(&well_known::EVENTS_EVENTS_K8S_IO), well_known::EVENTS);
        assert_eq!(s.canonical(&well_known::EVENTS), well_known::EVENTS);
        assert_eq!(s.canonical(&well_known::DEPLOYMENTS), well_known::DEPLOYMENTS);
        // extensions is not served in v1.35: the name is kept as is.
        assert_eq!(
            s.canonical(&gr("deployments.extensions")),
            well_known::DEPLOYMENTS
        );
    }

    fn names(types: &[&ServedResource]) -> Vec<String> {
        types.iter().map(|r| r.group_resource.to_string()).collect()
    }

    #[test]
    fn backup_types_store_events_once_under_core() {
        let s = kube_v1_35();
        let all = names(&s.backup_types(&ExcludedResources::none()));
        assert!(all.contains(&"events".to_owned()));
        assert!(!all.contains(&"events.events.k8s.io".to_owned()));
    }

    #[test]
    fn backup_types_are_namespaced_full_verb_and_sorted() {
        let s = kube_v1_35();
        let types = s.backup_types(&ExcludedResources::none());
        let all = names(&types);
        let mut sorted = types.iter().map(|r| r.group_resource.clone()).collect::<Vec<_>>();
        sorted.sort();
        assert_eq!(
            types.iter().map(|r| r.group_resource.clone()).collect::<Vec<_>>(),
            sorted
        );
        for expected in [
            "pods",
            "configmaps",
            "secrets",
            "serviceaccounts",
            "persistentvolumeclaims",
            "deployments.apps",
            "controllerrevisions.apps",
            "horizontalpodautoscalers.autoscaling",
            "certificates.cert-manager.io",
            "alertmanagerconfigs.monitoring.coreos.com",
            "resourceclaims.resource.k8s.io",
        ] {
            assert!(
                all.contains(&expected.to_owned()),
                "{expected} missing from {all:?}"
            );
        }
        for absent in [
            "bindings",                                       // create only
            "localsubjectaccessreviews.authorization.k8s.io", // create only
            "pods.metrics.k8s.io",                            // get, list only
            "nodes",                                          // cluster-scoped
            "persistentvolumes",
            "clusterissuers.cert-manager.io",
        ] {
            assert!(
                !all.contains(&absent.to_owned()),
                "{absent} must not be backed up"
            );
        }
        assert_eq!(all[0], "configmaps");
    }

    #[test]
    fn default_exclusions_resolve_and_remove_four_types() {
        let s = kube_v1_35();
        let excluded = s
            .resolve_exclusions(DEFAULT_EXCLUDED_RESOURCES)
            .unwrap_or_else(|e| panic!("{e}"));
        let all = names(&s.backup_types(&excluded));
        for gone in [
            "events",
            "events.events.k8s.io",
            "endpoints",
            "endpointslices.discovery.k8s.io",
        ] {
            assert!(!all.contains(&gone.to_owned()));
        }
        assert_eq!(
            s.backup_types(&ExcludedResources::none()).len() - all.len(),
            3,
            "events (one family), endpoints, endpointslices"
        );
    }

    #[test]
    fn excluding_either_events_name_excludes_both() {
        let s = kube_v1_35();
        for name in [
            "events.events.k8s.io",
            "events",
            "ev",
            "Event",
            "events.v1.events.k8s.io",
        ] {
            let excluded = s.resolve_exclusions([name]).unwrap_or_else(|e| panic!("{e}"));
            assert!(excluded.contains(&well_known::EVENTS), "{name}");
            assert!(excluded.contains(&well_known::EVENTS_EVENTS_K8S_IO), "{name}");
            let all = names(&s.backup_types(&excluded));
            assert!(!all.iter().any(|n| n.starts_with("events")), "{name}: {all:?}");
        }
    }

    #[test]
    fn cohabiting_alias_is_kept_when_canonical_is_not_served() {
        // A surface serving only events.k8s.io: its events are the only copy and are backed up.
        let mut doc: DiscoveryDocument =
            serde_json::from_str(test_support::KUBE_V1_35_JSON).unwrap_or_else(|e| panic!("{e}"));
        for list in &mut doc.resource_lists {
            if list.group_version == "v1" {
                list.resources.retain(|r| r.name != "events");
            }
        }
        let s = ApiSurface::from_document(&doc);
        let all = names(&s.backup_types(&ExcludedResources::none()));
        assert!(all.contains(&"events.events.k8s.io".to_owned()));
    }

    fn group_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,3}",
        ]
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(group in group_name(), resource in "[a-z][a-z0-9]{0,20}") {
            let original = GroupResource::new(group, resource);
            let parsed: GroupResource = original.to_string().parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(parsed, original);
        }
    }
}
