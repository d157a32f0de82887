//! The identity of one Kubernetes object in an archive or a cluster: [`ObjectKey`].
//!
//! A key names an object the way the API server's URL does: group, resource (the plural, as in
//! `kubectl api-resources`), namespace and name. The version is deliberately not part of it: the
//! same object is served under several versions, and the archive, the restore plan and the
//! ownership graph must agree on one name for it.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::group_resource::{GroupResource, split_group_resource};

/// Names one object: `deployments.apps/shop/web`, `pods/shop/web-7d9c-abcde`, `namespaces/shop`.
///
/// # Display and parsing
/// `<resource>[.<group>]/[<namespace>/]<name>`: the core group has no suffix, cluster-scoped
/// objects have no namespace part. [`FromStr`] reads the same form back; the group-resource part
/// splits at its first dot (`events.events.k8s.io` is resource `events`, group `events.k8s.io`),
/// as Kubernetes' own `ParseGroupResource` does.
///
/// # Ordering
/// Keys order by group, resource, namespace (cluster-scoped first), then name. Plans use this
/// order within a level, so their output is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// API group; empty for the core group.
    pub group: String,
    /// Resource name, plural and lower case (`deployments`).
    pub resource: String,
    /// Namespace; `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectKey {
    /// A key for a namespaced object.
    #[must_use]
    pub fn namespaced(group: &str, resource: &str, namespace: &str, name: &str) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        }
    }

    /// A key of type `gr`; `namespace` is `None` for a cluster-scoped object.
    #[must_use]
    pub fn typed(gr: &GroupResource, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: gr.group().to_owned(),
            resource: gr.resource().to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// A key for a cluster-scoped object.
    #[must_use]
    pub fn cluster(group: &str, resource: &str, name: &str) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: None,
            name: name.to_owned(),
        }
    }

    /// The key of `object`, whose resource name the caller knows (from discovery or from the
    /// archive path; an object does not carry its plural). The group comes from `apiVersion`,
    /// namespace and name from `metadata`; an empty namespace means cluster-scoped.
    ///
    /// # Errors
    /// [`ObjectKeyError::MissingField`] when `apiVersion` or `metadata.name` is absent or not a
    /// string.
    pub fn for_object(resource: &str, object: &Value) -> Result<Self, ObjectKeyError> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .ok_or(ObjectKeyError::MissingField("apiVersion"))?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or(ObjectKeyError::MissingField("metadata.name"))?;
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned);
        Ok(Self {
            group: group_of(api_version).to_owned(),
            resource: resource.to_owned(),
            namespace,
            name: name.to_owned(),
        })
    }

    /// The key's type: displayed `resource.group`, or `resource` for the core group, as in
    /// `kubectl api-resources` and the archive's directory names.
    #[must_use]
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(self.group.as_str(), self.resource.as_str())
    }

    /// A key whose every component is a name a Kubernetes API server would serve: what the
    /// archive reader and writer accept (spec §3.4), and what a user's `kind/ns/name` must be.
    ///
    /// # Errors
    /// [`ObjectKeyError`] naming the first component that does not fit.
    pub fn new(
        group: impl Into<String>,
        resource: impl Into<String>,
        namespace: Option<String>,
        name: impl Into<String>,
    ) -> Result<Self, ObjectKeyError> {
        let key = Self {
            group: group.into(),
            resource: resource.into(),
            namespace,
            name: name.into(),
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks every component against Kubernetes' naming rules (see [`ObjectKey::new`]). Keys
    /// read from an API server pass by construction; the archive checks every key it writes or
    /// reads, so a key built by hand cannot reach a path unchecked.
    ///
    /// # Errors
    /// [`ObjectKeyError`] naming the first component that does not fit.
    pub fn validate(&self) -> Result<(), ObjectKeyError> {
        if !is_label(&self.resource, MAX_RESOURCE_LEN) {
            return Err(ObjectKeyError::BadResource);
        }
        let group_ok = self.group.len() <= MAX_GROUP_LEN && self.group.split('.').all(|l| is_label(l, 63));
        if !self.group.is_empty() && !group_ok {
            return Err(ObjectKeyError::BadGroup);
        }
        if let Some(ns) = &self.namespace
            && !is_label(ns, MAX_NAMESPACE_LEN)
        {
            return Err(ObjectKeyError::BadNamespace);
        }
        let name = &self.name;
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == '\\' || c == '%' || c.is_control());
        if !name_ok {
            return Err(ObjectKeyError::BadName);
        }
        Ok(())
    }

    /// Whether this key is `resource` in `group`.
    #[must_use]
    pub fn is(&self, group: &str, resource: &str) -> bool {
        self.group == group && self.resource == resource
    }

    /// Whether the object is cluster-scoped.
    #[must_use]
    pub fn is_cluster_scoped(&self) -> bool {
        self.namespace.is_none()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.group_resource())?;
        if let Some(ns) = &self.namespace {
            write!(f, "/{ns}")?;
        }
        write!(f, "/{}", self.name)
    }
}

impl FromStr for ObjectKey {
    type Err = ObjectKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let (gr, namespace, name) = match parts.as_slice() {
            [gr, name] => (*gr, None, *name),
            [gr, ns, name] => (*gr, Some(*ns), *name),
            _ => return Err(ObjectKeyError::Malformed(s.to_owned())),
        };
        let (resource, group) = split_group_resource(gr);
        if resource.is_empty() || name.is_empty() || namespace.is_some_and(str::is_empty) {
            return Err(ObjectKeyError::Malformed(s.to_owned()));
        }
        Self::new(group, resource, namespace.map(str::to_owned), name)
    }
}

/// Serialized as its display form (`deployments.apps/shop/web`), the way reports and logs name
/// objects.
impl serde::Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The group part of an `apiVersion`: `apps` for `apps/v1`, empty for `v1`.
#[must_use]
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// Why an [`ObjectKey`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectKeyError {
    /// The object lacks a field a key needs.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// The text is not `<resource>[.<group>]/[<namespace>/]<name>`.
    #[error("{0:?} is not <resource>[.<group>]/[<namespace>/]<name>")]
    Malformed(String),
    /// The resource is not a lowercase RFC 1123 label (letters, digits, `-`; at most 63 bytes).
    #[error("resource is not a lowercase RFC 1123 label")]
    BadResource,
    /// The group is not a lowercase RFC 1123 subdomain (at most 253 bytes).
    #[error("group is not a lowercase RFC 1123 subdomain")]
    BadGroup,
    /// The namespace is not a lowercase RFC 1123 label (at most 63 bytes).
    #[error("namespace is not a lowercase RFC 1123 label")]
    BadNamespace,
    /// The name is empty, `.` or `..`, longer than 253 bytes, or contains `/`, `\\`, `%` or a
    /// control character.
    #[error("object name is not a valid Kubernetes name")]
    BadName,
}

/// Longest resource (plural) name: an RFC 1123 label.
pub const MAX_RESOURCE_LEN: usize = 63;
/// Longest API group: an RFC 1123 subdomain.
pub const MAX_GROUP_LEN: usize = 253;
/// Longest namespace: an RFC 1123 label.
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest object name Kubernetes accepts for any resource.
pub const MAX_NAME_LEN: usize = 253;

fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn display_omits_core_group_and_cluster_namespace() {
        let cases = [
            (
                ObjectKey::namespaced("apps", "deployments", "shop", "web"),
                "deployments.apps/shop/web",
            ),
            (
                ObjectKey::namespaced("", "pods", "shop", "web-1"),
                "pods/shop/web-1",
            ),
            (ObjectKey::cluster("", "namespaces", "shop"), "namespaces/shop"),
            (
                ObjectKey::cluster("rbac.authorization.k8s.io", "clusterroles", "admin"),
                "clusterroles.rbac.authorization.k8s.io/admin",
            ),
        ];
        for (key, text) in cases {
            assert_eq!(key.to_string(), text);
            assert_eq!(text.parse::<ObjectKey>(), Ok(key));
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in ["", "pods", "pods/a/b/c", "/ns/name", "pods//name", "pods/ns/"] {
            assert!(bad.parse::<ObjectKey>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn for_object_reads_group_namespace_and_name() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                         "metadata": {"name": "web", "namespace": "shop"}});
        assert_eq!(
            ObjectKey::for_object("deployments", &obj),
            Ok(ObjectKey::namespaced("apps", "deployments", "shop", "web"))
        );
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
        assert_eq!(
            ObjectKey::for_object("namespaces", &ns),
            Ok(ObjectKey::cluster("", "namespaces", "shop"))
        );
        let nameless = json!({"apiVersion": "v1", "metadata": {}});
        assert_eq!(
            ObjectKey::for_object("pods", &nameless),
            Err(ObjectKeyError::MissingField("metadata.name"))
        );
    }

    #[test]
    fn group_of_api_version() {
        assert_eq!(group_of("v1"), "");
        assert_eq!(group_of("apps/v1"), "apps");
        assert_eq!(
            group_of("rbac.authorization.k8s.io/v1"),
            "rbac.authorization.k8s.io"
        );
    }

    #[test]
    fn group_resource_names() {
        assert_eq!(
            ObjectKey::namespaced("", "pods", "a", "b")
                .group_resource()
                .to_string(),
            "pods"
        );
        assert_eq!(
            ObjectKey::namespaced("apps", "deployments", "a", "b")
                .group_resource()
                .to_string(),
            "deployments.apps"
        );
    }

    #[test]
    fn new_checks_kubernetes_names() {
        assert!(ObjectKey::new("rbac.authorization.k8s.io", "clusterroles", None, "system:admin").is_ok());
        let ns = || Some("ns".to_owned());
        assert_eq!(
            ObjectKey::new("", "Pods", ns(), "a"),
            Err(ObjectKeyError::BadResource)
        );
        assert_eq!(
            ObjectKey::new("Apps", "pods", ns(), "a"),
            Err(ObjectKeyError::BadGroup)
        );
        assert_eq!(
            ObjectKey::new("a..b", "pods", ns(), "a"),
            Err(ObjectKeyError::BadGroup)
        );
        assert_eq!(
            ObjectKey::new("", "pods", Some("Bad_NS".into()), "a"),
            Err(ObjectKeyError::BadNamespace)
        );
        for name in ["", ".", "..", "a/b", "a%2f", "a\\b", "a\nb"] {
            assert_eq!(
                ObjectKey::new("", "pods", ns(), name),
                Err(ObjectKeyError::BadName),
                "{name:?}"
            );
        }
        assert_eq!("pods/ns/..".parse::<ObjectKey>(), Err(ObjectKeyError::BadName));
    }
}
