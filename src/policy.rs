//! The `PromotePolicy` API (`kosmos.io/v1alpha1`, cluster-scoped): what users `kubectl apply` to
//! promote namespaces from a member cluster, and the status the controller reports.
//!
//! The spec is the Kosmos design's, field for field (`includedNamespaces`,
//! `excludedNamespaceScopedResources`, `clusterName`, and `rollback` as the string `"true"`). The
//! status keeps the upstream phase names and fields, and actually fills them: upstream defined
//! `progress`, `precheckErrors` and the timestamps but never wrote them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to promote, and from which member cluster.
// kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kosmos.io",
    version = "v1alpha1",
    kind = "PromotePolicy",
    plural = "promotepolicies",
    singular = "promotepolicy",
    status = "PromotePolicyStatus",
    category = "kosmos",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".status.backedupFile"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PromotePolicySpec {
    /// `"true"` rolls a Completed or failed promotion back from its archive. Any other value,
    /// or none, does nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(true|false)?$"))]
    pub rollback: Option<String>,

    /// Namespaces of the member cluster to promote. Must exist in the member and not in the
    /// control plane.
    #[schemars(length(min = 1), inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub included_namespaces: Vec<String>,

    /// Namespace-scoped resource types left out of the promotion, as `kubectl api-resources`
    /// names them (`events`, `events.events.k8s.io`, `endpointslices.discovery.k8s.io`, short
    /// names, singular or plural).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespace_scoped_resources: Vec<String>,

    /// Name of the Kosmos `Cluster` (member cluster) to promote from; its virtual node in the
    /// control plane is `kosmos-<clusterName>`.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_name: String,
}

impl PromotePolicySpec {
    /// Whether the user asked for a rollback (only the exact string `"true"` counts, as in the
    /// design).
    #[must_use]
    pub fn rollback_requested(&self) -> bool {
        self.rollback.as_deref() == Some("true")
    }
}

/// Where a promotion stands. The upstream names, plus `RollingBack`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Checking that the promotion can proceed; nothing has been touched.
    Prechecking,
    /// A check failed; nothing was touched. See `precheckErrors`.
    FailedPrecheck,
    /// Writing the archive of the member's namespaces.
    Backuping,
    /// The archive could not be written; nothing was touched.
    FailedBackup,
    /// Deleting the workload owners in the member, top-down with orphan propagation.
    Detaching,
    /// Detach failed (the controller rolls back what it detached).
    FailedDetach,
    /// Rebuilding the namespaces in the control plane, bottom-up.
    Restoring,
    /// Restore failed (the controller rolls back).
    FailedRestore,
    /// Everything in the namespaces is managed from the control plane.
    Completed,
    /// Restoring the member's owners and removing what promote created in the control plane.
    RollingBack,
    /// Rollback failed; it is retried when `rollback: "true"` is set again.
    FailedRollback,
    /// The member is back in its original state and the control plane holds nothing promoted.
    RolledBack,
}

impl Phase {
    /// Phases in which the controller has nothing more to do until the spec changes.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::FailedPrecheck
                | Self::FailedBackup
                | Self::FailedDetach
                | Self::FailedRestore
                | Self::Completed
                | Self::FailedRollback
                | Self::RolledBack
        )
    }

    /// The name as written in `status.phase`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prechecking => "Prechecking",
            Self::FailedPrecheck => "FailedPrecheck",
            Self::Backuping => "Backuping",
            Self::FailedBackup => "FailedBackup",
            Self::Detaching => "Detaching",
            Self::FailedDetach => "FailedDetach",
            Self::Restoring => "Restoring",
            Self::FailedRestore => "FailedRestore",
            Self::Completed => "Completed",
            Self::RollingBack => "RollingBack",
            Self::FailedRollback => "FailedRollback",
            Self::RolledBack => "RolledBack",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the controller reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotePolicyStatus {
    /// Where the promotion stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Absolute path of the archive on the backup volume (the design's spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backedup_file: Option<String>,
    /// Why the last phase failed, in words a user can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Every precheck failure, not only the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub precheck_errors: Vec<String>,
    /// When the current promotion or rollback started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it reached Completed, RolledBack or a failed phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Items done and total of the running step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Standard conditions: `Ready` (promotion complete) and `RolledBack`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Progress of the running step.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The step: `backup`, `detach`, `restore` or `rollback`.
    pub step: String,
    /// Items the step has finished.
    pub items_done: i64,
    /// Items the step will handle in all.
    pub items_total: i64,
}

/// The CRDs kpromote installs, as one multi-document YAML: `PromotePolicy`, and the Kosmos
/// `Cluster` for control planes without Kosmos. `kpromote crd` prints it; `deploy/crds.yaml`
/// is this text, checked by a test.
///
/// # Errors
/// Only if YAML serialization fails, which would be a bug.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    use kube::CustomResourceExt;
    let docs = [PromotePolicy::crd(), crate::kosmos::cluster::Cluster::crd()];
    let mut out = String::from("# Generated by `kpromote crd`; do not edit.\n");
    for crd in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_designs_yaml_parses_verbatim() {
        let policy: PromotePolicy =
            serde_saphyr::from_str(include_str!("../deploy/examples/promote-policy.yaml"))
                .expect("the design's PromotePolicy parses");
        assert_eq!(policy.spec.included_namespaces, vec!["nginx-test"]);
        assert_eq!(policy.spec.excluded_namespace_scoped_resources.len(), 4);
        assert!(!policy.spec.rollback_requested());
        let rollback = PromotePolicySpec {
            rollback: Some("true".into()),
            ..policy.spec.clone()
        };
        assert!(rollback.rollback_requested());
        let other = PromotePolicySpec {
            rollback: Some("True".into()),
            ..policy.spec
        };
        assert!(
            !other.rollback_requested(),
            "only the exact string \"true\" triggers a rollback"
        );
    }

    #[test]
    fn the_crd_is_cluster_scoped_with_status_and_printer_columns() {
        let crd = PromotePolicy::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Phase", "Cluster", "Backup", "Age"]);
    }

    #[test]
    fn phases_serialize_to_the_upstream_names() {
        for phase in [
            Phase::Backuping,
            Phase::RolledBack,
            Phase::FailedPrecheck,
            Phase::RollingBack,
        ] {
            assert_eq!(
                serde_json::to_value(phase).expect("serializes"),
                serde_json::json!(phase.as_str())
            );
        }
    }
}
