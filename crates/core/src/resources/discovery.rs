//! Building an [`ApiSurface`] from the server's discovery endpoints, or from a recording of them.
//!
//! Live discovery uses the unaggregated endpoints (`/api`, `/apis`, `/api/v1`,
//! `/apis/<group>/<version>`): they carry singular names, short names, categories and verbs for
//! every version of every group, and a failure is confined to one group version. kube's
//! `Discovery` type drops singular and short names, which name resolution needs.

use super::{ApiSurface, GroupResource, ServedResource};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroupList, APIResourceList, APIVersions};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// How many group versions are fetched at once during discovery.
const DISCOVERY_CONCURRENCY: usize = 8;

/// The raw discovery responses of one server: what [`ApiSurface::from_document`] reads.
///
/// Fixtures under `fixtures/discovery/` are documents in this shape; each member is the body of
/// one discovery response, so a fixture can be recorded from a real cluster with
/// `kubectl get --raw /api`, `/apis`, `/api/v1` and `/apis/<group>/<version>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryDocument {
    /// The server's `gitVersion` (`GET /version`), informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// `GET /api`: the versions of the core group.
    pub core_versions: APIVersions,
    /// `GET /apis`: the other groups, in the server's priority order, with preferred versions.
    pub groups: APIGroupList,
    /// `GET /api/<version>` and `GET /apis/<group>/<version>`, one per group version that
    /// answered.
    pub resource_lists: Vec<APIResourceList>,
    /// Group versions that did not answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<DiscoveryWarning>,
}

/// Discovery of one group version failed; its types are missing from the surface.
///
/// Not fatal: an aggregated API server that is down (metrics-server, a webhook-backed API) must not
/// stop a backup of unrelated namespaces. The caller reports it, and name resolution mentions it
/// when a name could have been served there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("discovery of API group `{group}` version `{version}` failed: {message}")]
pub struct DiscoveryWarning {
    /// The group (`""` for core).
    pub group: String,
    /// The version that failed.
    pub version: String,
    /// What the server or client said.
    pub message: String,
}

/// Discovery could not even tell which groups exist.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// `GET /api` failed.
    #[error("listing the core API versions (GET /api) failed")]
    CoreVersions(#[source] kube::Error),
    /// `GET /apis` failed.
    #[error("listing the API groups (GET /apis) failed")]
    Groups(#[source] kube::Error),
    /// `GET /api/<version>` failed: without the core types no backup is meaningful.
    #[error("listing the core API resources (GET /api/{version}) failed")]
    CoreResources {
        /// The core version asked for.
        version: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

impl DiscoveryError {
    /// The client's error, for a caller that classes and retries it as any other call's.
    #[must_use]
    pub(crate) fn into_client_error(self) -> kube::Error {
        match self {
            Self::CoreVersions(e) | Self::Groups(e) | Self::CoreResources { source: e, .. } => e,
        }
    }
}

impl DiscoveryDocument {
    /// Asks the server for its discovery responses.
    ///
    /// # Errors
    /// When `/api`, `/apis` or a core version's resource list fails. A failing group version of
    /// another group is recorded in [`failures`](Self::failures) instead, and logged.
    pub async fn fetch(client: &kube::Client) -> Result<Self, DiscoveryError> {
        let server_version = match client.apiserver_version().await {
            Ok(info) => Some(info.git_version),
            Err(err) => {
                tracing::debug!(error = %err, "GET /version failed; continuing without the server version");
                None
            }
        };
        let core_versions = client
            .list_core_api_versions()
            .await
            .map_err(DiscoveryError::CoreVersions)?;
        let groups = client.list_api_groups().await.map_err(DiscoveryError::Groups)?;

        let mut resource_lists: Vec<APIResourceList> = stream::iter(core_versions.versions.clone())
            .map(|version| async move {
                client
                    .list_core_api_resources(&version)
                    .await
                    .map_err(|source| DiscoveryError::CoreResources { version, source })
            })
            .buffered(DISCOVERY_CONCURRENCY)
            .try_collect()
            .await?;

        // Collected, not a lazy iterator of closures: one held across `.await` makes this future
        // fail `Send` for callers that spawn it (rust-lang/rust#110338).
        let group_versions: Vec<(String, String, String)> = groups
            .groups
            .iter()
            .flat_map(|g| {
                g.versions
                    .iter()
                    .map(move |v| (g.name.clone(), v.version.clone(), v.group_version.clone()))
            })
            .collect();
        let answers: Vec<_> = stream::iter(group_versions)
            .map(|(group, version, group_version)| async move {
                let answer = client.list_api_group_resources(&group_version).await;
                (group, version, answer)
            })
            .buffered(DISCOVERY_CONCURRENCY)
            .collect()
            .await;

        let mut failures = Vec::new();
        for (group, version, answer) in answers {
            match answer {
                Ok(list) => resource_lists.push(list),
                Err(err) => {
                    let warning = DiscoveryWarning {
                        group,
                        version,
                        message: err.to_string(),
                    };
                    tracing::warn!(group = %warning.group, version = %warning.version, error = %warning.message,
                        "API group discovery failed; its resource types are left out");
                    failures.push(warning);
                }
            }
        }
        Ok(Self {
            server_version,
            core_versions,
            groups,
            resource_lists,
            failures,
        })
    }
}

impl ApiSurface {
    /// Runs discovery against the server and builds its surface.
    ///
    /// # Errors
    /// See [`DiscoveryDocument::fetch`].
    pub async fn discover(client: &kube::Client) -> Result<Self, DiscoveryError> {
        Ok(Self::from_document(&DiscoveryDocument::fetch(client).await?))
    }

    /// Builds the surface from recorded discovery responses.
    ///
    /// Subresources (`pods/log`) are skipped. A type served in several versions of its group is
    /// recorded once, with the preferred version if it serves the type, otherwise the first
    /// serving version in the group's listed order (like `kubectl api-resources`). Resource lists
    /// of group versions absent from `/apis` are still read, after the listed groups.
    #[must_use]
    pub fn from_document(doc: &DiscoveryDocument) -> Self {
        // Group versions in priority order: core, then each group (preferred version first).
        let mut order: Vec<(String, String)> = doc
            .core_versions
            .versions
            .iter()
            .map(|v| (String::new(), v.clone()))
            .collect();
        for group in &doc.groups.groups {
            let preferred = group.preferred_version.as_ref().map(|p| p.version.clone());
            order.extend(preferred.iter().map(|v| (group.name.clone(), v.clone())));
            order.extend(
                group
                    .versions
                    .iter()
                    .filter(|v| Some(&v.version) != preferred.as_ref())
                    .map(|v| (group.name.clone(), v.version.clone())),
            );
        }
        let mut lists: HashMap<(String, String), &APIResourceList> = HashMap::new();
        let mut unlisted = Vec::new();
        for list in &doc.resource_lists {
            let key = split_group_version(&list.group_version);
            if !order.contains(&key) {
                unlisted.push(key.clone());
            }
            lists.entry(key).or_insert(list);
        }
        order.extend(unlisted);

        let mut resources: Vec<ServedResource> = Vec::new();
        let mut seen: HashMap<GroupResource, usize> = HashMap::new();
        for (group, version) in &order {
            let Some(list) = lists.get(&(group.clone(), version.clone())) else {
                continue;
            };
            for api in list.resources.iter().filter(|r| !r.name.contains('/')) {
                let gr = GroupResource::new(group.clone(), api.name.clone());
                if let Some(&i) = seen.get(&gr) {
                    if !resources[i].versions.contains(version) {
                        resources[i].versions.push(version.clone());
                    }
                    continue;
                }
                let singular = if api.singular_name.is_empty() {
                    api.kind.to_ascii_lowercase()
                } else {
                    api.singular_name.clone()
                };
                seen.insert(gr.clone(), resources.len());
                resources.push(ServedResource {
                    group_resource: gr,
                    version: version.clone(),
                    versions: vec![version.clone()],
                    kind: api.kind.clone(),
                    singular,
                    short_names: api.short_names.clone().unwrap_or_default(),
                    categories: api.categories.clone().unwrap_or_default(),
                    namespaced: api.namespaced,
                    verbs: api.verbs.iter().cloned().collect::<BTreeSet<_>>(),
                });
            }
        }
        Self::build(resources, doc.server_version.clone(), doc.failures.clone())
    }
}

/// `apps/v1` → (`apps`, `v1`); `v1` → (`""`, `v1`).
fn split_group_version(gv: &str) -> (String, String) {
    match gv.split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), gv.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::KUBE_V1_35_JSON;
    use super::*;

    fn fixture_doc() -> DiscoveryDocument {
        serde_json::from_str(KUBE_V1_35_JSON).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn document_round_trips_through_json() {
        let doc = fixture_doc();
        let json = serde_json::to_string(&doc).unwrap_or_default();
        let again: DiscoveryDocument = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.resource_lists.len(), doc.resource_lists.len());
        assert_eq!(
            ApiSurface::from_document(&again).resources(),
            ApiSurface::from_document(&doc).resources()
        );
    }

    #[test]
    fn failed_group_is_a_warning_and_its_types_are_missing() {
        let mut doc = fixture_doc();
        doc.resource_lists
            .retain(|l| l.group_version != "metrics.k8s.io/v1beta1");
        doc.failures.push(DiscoveryWarning {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            message: "the server is currently unable to handle the request".into(),
        });
        let s = ApiSurface::from_document(&doc);
        assert_eq!(s.warnings().len(), 1);
        assert_eq!(s.warnings()[0].group, "metrics.k8s.io");
        assert!(!s.serves_group("metrics.k8s.io"));
        assert!(s.serves_group("apps"));
        assert!(s.warnings()[0].to_string().contains("metrics.k8s.io"));
    }

    #[test]
    fn list_missing_from_group_list_is_still_read() {
        let mut doc = fixture_doc();
        doc.groups.groups.retain(|g| g.name != "cert-manager.io");
        let s = ApiSurface::from_document(&doc);
        assert!(
            s.get(&GroupResource::new("cert-manager.io", "certificates"))
                .is_some()
        );
    }

    #[test]
    fn empty_singular_falls_back_to_lowercase_kind() {
        let mut doc = fixture_doc();
        for list in &mut doc.resource_lists {
            for r in &mut list.resources {
                r.singular_name.clear();
            }
        }
        let s = ApiSurface::from_document(&doc);
        let deploy = s
            .get(&GroupResource::new("apps", "deployments"))
            .unwrap_or_else(|| panic!("deploy"));
        assert_eq!(deploy.singular, "deployment");
    }
}
