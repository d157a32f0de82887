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
    // At most MAX_LIST_ITEMS: each is a precheck, a backup list per type, and a status line;
    // the API server enforces the bound before the controller reads the list.
    #[schemars(
        length(min = 1, max = 100),
        inner(length(max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub included_namespaces: Vec<String>,

    /// Namespace-scoped resource types left out of the promotion, as `kubectl api-resources`
    /// names them (`events`, `events.events.k8s.io`, `endpointslices.discovery.k8s.io`, short
    /// names, singular or plural).
    // A group-resource is at most a 63-character resource, a dot and a 253-character group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 317)))]
    pub excluded_namespace_scoped_resources: Vec<String>,

    /// Name of the Kosmos `Cluster` (member cluster) to promote from; its virtual node in the
    /// control plane is `kosmos-<clusterName>`.
    // A DNS subdomain (an object name), short enough that `kosmos-<clusterName>` is one too. It
    // is joined into a node name, an archive's metadata and messages: no path or control
    // characters get that far.
    #[schemars(
        length(min = 1, max = 246),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub cluster_name: String,

    /// Bindings of the member that may be promoted although they escalate in the control plane,
    /// where they grant the same cluster-wide: ClusterRoleBindings (by name) of a role with
    /// wildcards, `bind`/`escalate`/`impersonate`, secrets cluster-wide or `cluster-admin`, or
    /// with subjects outside the promoted namespaces; RoleBindings (`<namespace>/<name>`) of a
    /// ClusterRole promote would create with an `aggregate-to-*` label. Precheck refuses every
    /// such binding not named here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 253)))]
    pub allow_escalating_bindings: Vec<String>,

    /// Whether a rollback may discard what changed in the control plane since promote: objects
    /// created in the promoted namespaces and owners edited there (rolling back deletes the first
    /// and reverts the second in the member). Without it a rollback that would lose such work
    /// fails, naming each change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_changes: bool,

    /// age X25519 public keys (`age1…`, from `age-keygen -y`) the archive's Secrets are sealed
    /// to, besides the controller's `--encrypt-to` keys and its own identity's key (it reads the
    /// archive back to promote and to roll back; without an identity, precheck fails). Public
    /// keys only: safe in a spec.
    // An X25519 recipient is `age1` and 58 Bech32 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 20),
        inner(regex(pattern = r"^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$"))
    )]
    pub encrypt_to: Vec<String>,

    /// Where this policy's archive goes instead of the controller's default:
    /// `s3://BUCKET/PREFIX` in the object storage the controller's credentials reach.
    /// `status.backedupFile` then holds the object's URL (`s3://BUCKET/KEY`).
    // Object storage only: a policy never picks a directory of the controller's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 1024),
        regex(pattern = r"^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?$")
    )]
    pub backup_location: Option<String>,
}

impl PromotePolicySpec {
    /// Whether the user asked for a rollback (only the exact string `"true"` counts, as in the
    /// design).
    #[must_use]
    pub(crate) fn rollback_requested(&self) -> bool {
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
        self.is_failure() || matches!(self, Self::Completed | Self::RolledBack)
    }

    /// Phases that report a failure (`Failed*`).
    #[must_use]
    pub(crate) fn is_failure(self) -> bool {
        matches!(
            self,
            Self::FailedPrecheck
                | Self::FailedBackup
                | Self::FailedDetach
                | Self::FailedRestore
                | Self::FailedRollback
        )
    }

    /// The name as written in `status.phase`.
    #[must_use]
    pub(crate) fn as_str(self) -> &'static str {
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
    /// Every object that failed in the step's level that failed, up to 20; `failedCount` says
    /// how many failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// How many objects failed in that level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_count: Option<i64>,
    /// What the last promote or rollback (automatic ones included) discarded or warned about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// When the current promotion or rollback started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it reached Completed, RolledBack or a failed phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Items done and total of the running step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Standard conditions: `Ready` (promotion complete) and `RolledBack` (see
    /// [`CONDITION_READY`], [`CONDITION_ROLLED_BACK`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition type: `True` once the promotion is complete and the namespaces are managed from
/// the control plane (phase `Completed`); otherwise `False`, with the phase as its reason.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: `True` once a rollback has put the member back in its original state. While
/// a rollback runs it is `False`; its reason always says why the rollback ran (a
/// [`RollbackTrigger`]), or `NotRequested` before any rollback, or `RollbackFailed`.
pub const CONDITION_ROLLED_BACK: &str = "RolledBack";
/// Reason of the `RolledBack` condition before any rollback ran.
pub(crate) const REASON_NOT_REQUESTED: &str = "NotRequested";
/// Reason of the `RolledBack` condition when the last rollback failed.
pub(crate) const REASON_ROLLBACK_FAILED: &str = "RollbackFailed";

/// Why a rollback runs. It is the reason of the `RolledBack` condition while the phase is
/// `RollingBack` (and after), so a controller restarted in the middle of a rollback knows which
/// phase the rollback ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RollbackTrigger {
    /// The user set `rollback: "true"`; success is `RolledBack`.
    Requested,
    /// Detach failed after changing the member; success is `FailedDetach`.
    DetachFailed,
    /// Restore failed after detach; success is `FailedRestore`.
    RestoreFailed,
    /// The policy was deleted in the middle of a promotion; success is `RolledBack` (and the
    /// policy goes away).
    PolicyDeleted,
}

impl RollbackTrigger {
    /// The condition reason naming this trigger.
    #[must_use]
    pub(crate) fn as_reason(self) -> &'static str {
        match self {
            Self::Requested => "RollbackRequested",
            Self::DetachFailed => "DetachFailed",
            Self::RestoreFailed => "RestoreFailed",
            Self::PolicyDeleted => "PolicyDeleted",
        }
    }

    /// The trigger a condition reason names, if any.
    #[must_use]
    pub(crate) fn from_reason(reason: &str) -> Option<Self> {
        [
            Self::Requested,
            Self::DetachFailed,
            Self::RestoreFailed,
            Self::PolicyDeleted,
        ]
        .into_iter()
        .find(|t| t.as_reason() == reason)
    }

    /// The phase a successful rollback of this trigger ends in: a failed promotion stays a
    /// failure (its `failureReason` says it was rolled back), a requested one is `RolledBack`.
    #[must_use]
    pub(crate) fn phase_after(self) -> Phase {
        match self {
            Self::Requested | Self::PolicyDeleted => Phase::RolledBack,
            Self::DetachFailed => Phase::FailedDetach,
            Self::RestoreFailed => Phase::FailedRestore,
        }
    }
}

impl PromotePolicyStatus {
    /// The condition of type `type_`, if set.
    #[must_use]
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Sets condition `type_`. Its `lastTransitionTime` moves only when its status changes, as
    /// the Kubernetes API conventions ask.
    pub(crate) fn set_condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        observed_generation: Option<i64>,
        now: &Time,
    ) {
        let status = if status { "True" } else { "False" };
        let last_transition_time = match self.condition(type_) {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now.clone(),
        };
        let condition = Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation,
            last_transition_time,
        };
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => *existing = condition,
            None => self.conditions.push(condition),
        }
    }

    /// Why the current (or last) rollback ran, read from the `RolledBack` condition.
    #[must_use]
    pub(crate) fn rollback_trigger(&self) -> Option<RollbackTrigger> {
        self.condition(CONDITION_ROLLED_BACK)
            .and_then(|c| RollbackTrigger::from_reason(&c.reason))
    }
}

/// Progress of the running step.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The step: `backup` (lists read), `detach`, `mark`, `restore` (promote); `unmark`,
    /// `recreate`, `teardown` (rollback).
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
            serde_saphyr::from_str(include_str!("../../../deploy/examples/promote-policy.yaml"))
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
