//! What changes in an archived object before it is created in the target, each rule with its
//! reason: [`prepare`].
//!
//! The archive holds objects exactly as the member cluster's API server returned them. Creating
//! one elsewhere needs three kinds of change, and only these:
//!
//! 1. **Server-owned metadata is stripped** ([`STRIPPED_METADATA`], each field with its reason);
//!    `status` is taken out, and for the kinds in [`status_disposition`] handed back to be written
//!    through the status subresource.
//! 2. **ownerReferences are rewritten, not dropped** ([`rewrite_owner_references`]): the owner's
//!    new UID where it already exists in the target, deferred where it will be created later (the
//!    caller patches it in with [`adoption_patch`]), dropped — and reported — where the owner will
//!    never exist, because the garbage collector deletes an object whose owner UID is missing.
//! 3. **Per-kind rules** ([`KIND_RULES`]): pods are bound to the Kosmos virtual node, Services lose
//!    their cluster IPs, volumes and claims re-bind by name, and so on.
//!
//! Some objects are not created: the target makes them itself, or they are finished
//! ([`SkipReason`], each with its reason); the `default` ServiceAccount is merged into the one the
//! target made ([`Merge`]).
//!
//! # Guarantees
//! A pod template — `spec.template` of Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs
//! and ReplicationControllers, `spec.jobTemplate` of CronJobs, `template` of PodTemplates — is
//! never changed: a changed template makes the controller roll out new pods, which is a restart.
//! [`prepare`] checks this on every object it returns and fails with
//! [`TransformError::TemplateChanged`] rather than return a changed one.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value, json};

use kpromote_model::kosmos;
use kpromote_model::object_key::group_of;

mod context;
mod owner_refs;

pub use context::TransformContext;
use owner_refs::owner_references_of;
#[cfg(test)]
use owner_refs::{Adoption, DROPPED_OWNER_REASON};
pub(crate) use owner_refs::{OwnerReferenceRewrite, adoption_patch, rewrite_owner_references};

/// Where [`prepare`] prepares an object for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Promote: the Kosmos control plane, whose virtual node `kosmos-<cluster_name>` stands for
    /// the member cluster the objects come from.
    ControlPlane {
        /// The member cluster's name in Kosmos (`PromotePolicy.spec.clusterName`).
        cluster_name: String,
    },
    /// Rollback: the member cluster, re-creating the owners detach deleted. Same stripping and
    /// ownerReference rewrite, no Kosmos marks.
    Member,
}

/// A metadata field, and why [`prepare`] removes or keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetadataField {
    /// The field under `metadata`.
    pub field: &'static str,
    /// Why it is removed or kept.
    pub reason: &'static str,
}

/// A [`STRIPPED_METADATA`] or [`KEPT_METADATA`] entry.
const fn metadata_field(field: &'static str, reason: &'static str) -> MetadataField {
    MetadataField { field, reason }
}

/// The metadata fields removed from every object. Everything else in `metadata` is kept; see
/// [`KEPT_METADATA`].
pub(crate) const STRIPPED_METADATA: &[MetadataField] = &[
    metadata_field(
        "uid",
        "assigned by the target's API server; the member's UID survives only as a key of the \
         old-to-new UID map",
    ),
    metadata_field(
        "resourceVersion",
        "the API server rejects a create that carries one",
    ),
    metadata_field(
        "generation",
        "the target counts spec changes from 1; a copied generation would falsify every \
         status.observedGeneration comparison",
    ),
    metadata_field("creationTimestamp", "set by the target's API server"),
    metadata_field(
        "managedFields",
        "field ownership of the member's managers, which do not exist in the target; the \
         target records its own on create",
    ),
    metadata_field("selfLink", "deprecated, ignored since Kubernetes 1.20"),
    metadata_field(
        "deletionTimestamp",
        "an object being deleted is skipped; the field is never written on create",
    ),
    metadata_field(
        "deletionGracePeriodSeconds",
        "belongs to a deletion in the member; never written on create",
    ),
];

#[cfg(test)]
/// Metadata [`prepare`] keeps, and why.
pub(crate) const KEPT_METADATA: &[MetadataField] = &[
    metadata_field("name, namespace", "the identity Kosmos mirrors pods by"),
    metadata_field(
        "labels, annotations",
        "selectors, tooling and the Deployment revision live there; a controller matches its \
         children by them",
    ),
    metadata_field(
        "finalizers",
        "in the member (rollback) all of them; in the control plane only those of \
         CONTROL_PLANE_FINALIZERS — every other finalizer's controller runs in the member, and \
         in the control plane nobody would ever remove it, so deleting the copy would hang",
    ),
    metadata_field("generateName", "unused when a name is set; kept as history"),
    metadata_field(
        "ownerReferences",
        "rewritten to the owners' new UIDs (see rewrite_owner_references), never just dropped",
    ),
];

/// A finalizer a control-plane copy may carry, and the control-plane component that removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ControlPlaneFinalizer {
    /// The finalizer.
    pub name: &'static str,
    /// Who removes it in the control plane.
    pub remover: &'static str,
}

/// A [`CONTROL_PLANE_FINALIZERS`] entry.
const fn finalizer(name: &'static str, remover: &'static str) -> ControlPlaneFinalizer {
    ControlPlaneFinalizer { name, remover }
}

/// The finalizers a copy in the control plane keeps; [`prepare`] drops every other one and
/// reports it ([`Creation::dropped_finalizers`]). A finalizer is a promise that some controller
/// will clean up and remove it; an operator's or a CSI driver's controller runs in the member
/// (its pods stay there) and watches the member's API server, so in the control plane such a
/// finalizer would block the copy's deletion forever — the namespace of a rollback with it.
/// Rollback also removes the finalizers kpromote copied when it deletes its own copies.
pub(crate) const CONTROL_PLANE_FINALIZERS: &[ControlPlaneFinalizer] = &[
    finalizer(
        "kubernetes.io/pvc-protection",
        "kube-controller-manager's pvc-protection controller (the control plane's admission adds it anyway)",
    ),
    finalizer(
        "kubernetes.io/pv-protection",
        "kube-controller-manager's pv-protection controller (the control plane's admission adds it anyway)",
    ),
    finalizer(
        "customresourcecleanup.apiextensions.k8s.io",
        "the control plane's apiextensions server, once the CRD's instances are gone",
    ),
];

/// Removes from `object` the finalizers not in [`CONTROL_PLANE_FINALIZERS`]; returns them.
fn keep_control_plane_finalizers(object: &mut Value) -> Vec<String> {
    let Some(list) = object
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    else {
        return Vec::new();
    };
    let mut dropped = Vec::new();
    list.retain(|f| {
        let keep = f
            .as_str()
            .is_some_and(|name| CONTROL_PLANE_FINALIZERS.iter().any(|k| k.name == name));
        if !keep {
            dropped.push(f.as_str().map_or_else(|| f.to_string(), str::to_owned));
        }
        keep
    });
    if list.is_empty()
        && let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut)
    {
        metadata.remove("finalizers");
    }
    dropped
}

/// A status field the target derives itself, and so is never mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DerivedStatus {
    /// The field under `status`.
    pub field: &'static str,
    /// Why it is not written.
    pub reason: &'static str,
}

/// Status fields [`prepare`] leaves out of [`Creation::status`].
pub(crate) const DERIVED_STATUS: &[DerivedStatus] = &[DerivedStatus {
    field: "qosClass",
    reason: "the API server derives a pod's QoS class from its resources on create and rejects any other \
             value (the field is immutable); with an unchanged spec the two are equal anyway",
}];

/// One per-kind rule of [`prepare`], for the report and the docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KindRule {
    /// API group; empty for core.
    pub group: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// What [`prepare`] does.
    pub rule: &'static str,
    /// Why.
    pub reason: &'static str,
}

const fn rule(group: &'static str, kind: &'static str, rule: &'static str, reason: &'static str) -> KindRule {
    KindRule {
        group,
        kind,
        rule,
        reason,
    }
}

/// A control-plane pod is bound to the member cluster's virtual node.
pub(crate) const POD_NODE_NAME: KindRule = rule(
    "",
    "Pod",
    "control plane: spec.nodeName = kosmos-<cluster>",
    "binds the pod to the virtual node standing for its member cluster, bypassing the scheduler; \
     Kosmos mirrors pods bound there to the member pod of the same namespace and name",
);
/// A control-plane pod carries the Kosmos pod label.
pub(crate) const POD_LABEL: KindRule = rule(
    "",
    "Pod",
    "control plane: label kosmos-io/pod=true",
    "marks a Kosmos-managed pod; the same label detach puts on the member pod, so Kosmos sees no \
     label difference to push down",
);
/// A control-plane pod tolerates the virtual node's taint.
pub(crate) const POD_TOLERATION: KindRule = rule(
    "",
    "Pod",
    "control plane: toleration kosmos.io/node=true:NoSchedule (Equal) added unless one tolerates the taint",
    "the virtual node carries that taint; added to the pod only, never to a template",
);
/// A control-plane pod's priority is left to admission.
pub(crate) const POD_PRIORITY: KindRule = rule(
    "",
    "Pod",
    "control plane: spec.priority and spec.preemptionPolicy removed",
    "Priority admission recomputes both from priorityClassName and rejects a pod whose values differ \
     from the target's PriorityClass",
);
/// Ephemeral containers are not created with the pod.
pub(crate) const POD_EPHEMERAL_CONTAINERS: KindRule = rule(
    "",
    "Pod",
    "spec.ephemeralContainers removed",
    "the API server rejects them on create (they are added through a subresource only)",
);
/// A Service gets its cluster IPs from the target.
pub(crate) const SERVICE_CLUSTER_IP: KindRule = rule(
    "",
    "Service",
    "spec.clusterIP and spec.clusterIPs removed unless clusterIP is None",
    "cluster IPs come from the target's service range; a headless Service must stay headless",
);
#[cfg(test)]
/// A Service keeps its NodePorts.
pub(crate) const SERVICE_NODE_PORTS: KindRule = rule(
    "",
    "Service",
    "spec.ports[].nodePort and spec.healthCheckNodePort kept",
    "a fixed NodePort must survive; the caller reports a port the target already allocated",
);
/// A PersistentVolume stays pre-bound to its claim by name.
pub(crate) const VOLUME_CLAIM_REF: KindRule = rule(
    "",
    "PersistentVolume",
    "spec.claimRef.uid and spec.claimRef.resourceVersion removed; name and namespace kept",
    "a volume pre-bound by name waits for its claim; with the member claim's UID the binder would \
     find no such claim and release (and maybe delete) the volume",
);
/// A claim is bound afresh by the target's binder.
pub(crate) const CLAIM_BIND_COMPLETED: KindRule = rule(
    "",
    "PersistentVolumeClaim",
    "annotation pv.kubernetes.io/bind-completed removed; spec.volumeName kept",
    "a claim marked bind-completed must match the volume's claimRef.uid, which was removed, or the \
     binder marks it Lost for good; without the mark the binder binds claim and volume by name",
);
/// A ServiceAccount loses references to skipped token Secrets.
pub(crate) const SERVICE_ACCOUNT_TOKEN_SECRETS: KindRule = rule(
    "",
    "ServiceAccount",
    "secrets entries naming skipped token Secrets removed",
    "the token Secrets are skipped (see SkipReason::ServiceAccountToken)",
);
#[cfg(test)]
/// A Namespace keeps its spec.
pub(crate) const NAMESPACE_SPEC: KindRule = rule(
    "",
    "Namespace",
    "spec kept (finalizers included), status removed",
    "the namespace finalizer is the target's own and harmless to repeat",
);
#[cfg(test)]
/// An unfinished Job is refused.
pub(crate) const JOB_UNFINISHED: KindRule = rule(
    "batch",
    "Job",
    "an unfinished Job is an error",
    "its selector and template carry the member Job's controller-uid; creating it needs a new selector \
     and so a template change. Precheck refuses promote while a Job runs",
);

#[cfg(test)]
/// The per-kind rules of [`prepare`], each with its reason. Skips are in [`SkipReason`].
pub(crate) const KIND_RULES: &[KindRule] = &[
    POD_NODE_NAME,
    POD_LABEL,
    POD_TOLERATION,
    POD_PRIORITY,
    POD_EPHEMERAL_CONTAINERS,
    SERVICE_CLUSTER_IP,
    SERVICE_NODE_PORTS,
    VOLUME_CLAIM_REF,
    CLAIM_BIND_COMPLETED,
    SERVICE_ACCOUNT_TOKEN_SECRETS,
    NAMESPACE_SPEC,
    JOB_UNFINISHED,
];

/// Why [`prepare`] does not create an object. [`SkipReason::reason`] is the text for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A kind never restored (Events, Nodes, CSINodes, VolumeAttachments).
    NotRestorable {
        /// `resource.group` of the kind, for the report.
        kind: String,
    },
    /// The object was being deleted in the member when it was backed up.
    BeingDeleted,
    /// The `kube-root-ca.crt` ConfigMap.
    RootCaConfigMap,
    /// A Secret of type `kubernetes.io/service-account-token`.
    ServiceAccountToken,
    /// A pod in phase Succeeded or Failed.
    CompletedPod,
    /// A mirror pod of a static pod.
    MirrorPod,
    /// A Job that finished.
    CompletedJob,
    /// Endpoints of a Service with a selector.
    ControllerManagedEndpoints,
    /// An EndpointSlice made by the EndpointSlice or mirroring controller.
    ControllerManagedEndpointSlice,
    /// A pod, with target [`Target::Member`]: the member pod was never deleted.
    MemberPodKept,
}

impl SkipReason {
    /// Why the object is skipped.
    #[must_use]
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::NotRestorable { .. } => {
                "describes the member cluster itself (events, nodes, volume attachments), not the application"
            }
            Self::BeingDeleted => "was being deleted in the member when backed up",
            Self::RootCaConfigMap => {
                "the target's root CA publisher creates kube-root-ca.crt in every namespace"
            }
            Self::ServiceAccountToken => {
                "a service-account token signed by the member's key: useless in the control plane, and a \
                 new token there could be synced over the member's"
            }
            Self::CompletedPod => "finished (phase Succeeded or Failed): nothing runs to manage",
            Self::MirrorPod => "a static pod's mirror, owned by the member node's kubelet",
            Self::CompletedJob => "finished (completionTime, or a Complete or Failed condition)",
            Self::ControllerManagedEndpoints => {
                "the target's endpoints controller builds the Endpoints of a Service with a selector"
            }
            Self::ControllerManagedEndpointSlice => {
                "the target's EndpointSlice controllers build the slices of their Services"
            }
            Self::MemberPodKept => "the member pod was never deleted; rollback only removes its Kosmos mark",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRestorable { kind } => write!(f, "{kind}: {}", self.reason()),
            other => f.write_str(other.reason()),
        }
    }
}

/// Kinds never restored, as (group, kind).
const NOT_RESTORABLE: &[(&str, &str)] = &[
    ("", "Event"),
    ("events.k8s.io", "Event"),
    ("", "Node"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
];

/// The EndpointSlice label naming the controller that manages a slice.
const ENDPOINTSLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Controllers whose EndpointSlices the target re-creates itself.
const ENDPOINTSLICE_CONTROLLERS: &[&str] = &[
    "endpointslice-controller.k8s.io",
    "endpointslicemirroring-controller.k8s.io",
];
/// Annotation on a mirror pod.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Annotation the volume binder puts on a claim it has bound.
const BIND_COMPLETED_ANNOTATION: &str = "pv.kubernetes.io/bind-completed";
/// Secret type of a service-account token.
const SERVICE_ACCOUNT_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";

/// The result of [`prepare`].
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// Create this object.
    Create(Box<Creation>),
    /// Merge into the object the target already has.
    Merge(Merge),
    /// Do not create the object.
    Skip(SkipReason),
}

/// An object ready to create, and what the caller does around the create.
#[derive(Debug, Clone, PartialEq)]
pub struct Creation {
    /// The object to send (no status, server metadata stripped, ownerReferences rewritten).
    pub object: Value,
    /// The archived status to write through the status subresource after the create; `None`
    /// for kinds whose status the target computes (see [`status_disposition`]).
    pub status: Option<Value>,
    /// What happened to each ownerReference.
    pub owner_references: OwnerReferenceRewrite,
    /// Rules applied beyond metadata stripping, for the report (rule texts of [`KIND_RULES`]).
    pub applied: Vec<&'static str>,
    /// Finalizers not copied to the control plane: nothing there would remove them (see
    /// [`CONTROL_PLANE_FINALIZERS`]).
    pub dropped_finalizers: Vec<String>,
}

/// A merge into an object the target creates itself (the `default` ServiceAccount).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Merge {
    /// Archived labels.
    pub labels: BTreeMap<String, String>,
    /// Archived annotations.
    pub annotations: BTreeMap<String, String>,
    /// Names of archived `imagePullSecrets`.
    pub image_pull_secrets: Vec<String>,
    /// Why this is a merge.
    pub reason: &'static str,
}

impl Merge {
    /// The JSON merge patch that brings `live` (the target's object) the labels, annotations and
    /// image pull secrets it lacks. The target's own values win over archived ones for the same
    /// key. The patch carries `live`'s resourceVersion, so it fails rather than overwrite a
    /// concurrent change to the pull-secret list. `None` when nothing is missing.
    #[must_use]
    pub(crate) fn patch_for(&self, live: &Value) -> Option<Value> {
        let mut metadata = Map::new();
        for (field, archived) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            let have = live
                .pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_object);
            let missing: Map<String, Value> = archived
                .iter()
                .filter(|(k, _)| have.is_none_or(|h| !h.contains_key(*k)))
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            if !missing.is_empty() {
                metadata.insert(field.to_owned(), Value::Object(missing));
            }
        }
        let mut secrets: Vec<Value> = live
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let before = secrets.len();
        for name in &self.image_pull_secrets {
            if !secrets
                .iter()
                .any(|s| s.get("name").and_then(Value::as_str) == Some(name))
            {
                secrets.push(json!({ "name": name }));
            }
        }
        if metadata.is_empty() && secrets.len() == before {
            return None;
        }
        if let Some(rv) = live.pointer("/metadata/resourceVersion") {
            metadata.insert("resourceVersion".to_owned(), rv.clone());
        }
        let mut patch = Map::new();
        patch.insert("metadata".to_owned(), Value::Object(metadata));
        if secrets.len() != before {
            patch.insert("imagePullSecrets".to_owned(), Value::Array(secrets));
        }
        Some(Value::Object(patch))
    }
}

/// What happens to an object's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusDisposition {
    /// Written through the status subresource after the create.
    Write(&'static str),
    /// Dropped: the target's controllers compute it.
    Drop(&'static str),
}

/// Whether the archived status of a `kind` in `group` is written in `target`, and why.
#[must_use]
pub(crate) fn status_disposition(group: &str, kind: &str, target: &Target) -> StatusDisposition {
    match (group, kind, target) {
        ("", "Pod", Target::ControlPlane { .. }) => StatusDisposition::Write(
            "a control-plane pod mirrors its member pod, and no kubelet in the control plane reports its \
             status: written at once, Services and owners see the pods Ready instead of Pending until \
             Kosmos next copies the member status",
        ),
        _ => StatusDisposition::Drop(
            "status cannot be set on create, and the target's controllers compute it (for a custom resource \
             without a status subresource, the member's status would be stale there)",
        ),
    }
}

/// Why [`prepare`] or [`adoption_patch`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The value is not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// A required field is absent or not a string.
    #[error("no {0}")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("{field} is not {expected}")]
    InvalidField {
        /// The field's path.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// `Target::ControlPlane` with an empty cluster name.
    #[error("the target's cluster name is empty")]
    EmptyClusterName,
    /// A Job that has not finished (see [`KIND_RULES`]).
    #[error(
        "Job {namespace}/{name} has not finished; it cannot be re-created without changing its pod template"
    )]
    IncompleteJob {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A pod template changed: a bug in a rule, caught before the object left this module.
    #[error("{kind} {name}: the pod template changed, which would roll out new pods")]
    TemplateChanged {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
    },
}

/// The identity of an object, read once.
#[derive(Debug)]
struct View {
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl View {
    fn read(object: &Value) -> Result<Self, TransformError> {
        if !object.is_object() {
            return Err(TransformError::NotAnObject);
        }
        let api_version = str_at(object, "/apiVersion").ok_or(TransformError::MissingField("apiVersion"))?;
        let kind = str_at(object, "/kind").ok_or(TransformError::MissingField("kind"))?;
        if !object.get("metadata").is_some_and(Value::is_object) {
            return Err(TransformError::MissingField("metadata"));
        }
        let name = str_at(object, "/metadata/name")
            .filter(|n| !n.is_empty())
            .ok_or(TransformError::MissingField("metadata.name"))?;
        Ok(Self {
            group: group_of(api_version).to_owned(),
            kind: kind.to_owned(),
            namespace: str_at(object, "/metadata/namespace")
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            name: name.to_owned(),
        })
    }

    fn is(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }
}

/// Why the control-plane restore skips archived `object` (as [`prepare`] with
/// [`Target::ControlPlane`] would say), given the archive facts in `facts`; `None` when it is
/// restored. The reason does not depend on the cluster name.
#[must_use]
pub(crate) fn restore_skip(object: &Value, facts: &TransformContext) -> Option<SkipReason> {
    let view = View::read(object).ok()?;
    skip_reason(&view, object, false, facts)
}

/// Prepares the archived `object` for `target`. See the [module docs](self).
///
/// # Errors
/// [`TransformError::NotAnObject`], [`TransformError::MissingField`] (apiVersion, kind,
/// metadata, metadata.name), [`TransformError::InvalidField`] (labels, tolerations or
/// ownerReferences of the wrong shape), [`TransformError::EmptyClusterName`],
/// [`TransformError::IncompleteJob`], [`TransformError::TemplateChanged`].
pub fn prepare(object: &Value, target: &Target, ctx: &TransformContext) -> Result<Prepared, TransformError> {
    let view = View::read(object)?;
    if let Some(skip) = skip_reason(&view, object, matches!(target, Target::Member), ctx) {
        return Ok(Prepared::Skip(skip));
    }
    if view.is("", "ServiceAccount") && view.name == "default" {
        return Ok(Prepared::Merge(default_service_account_merge(object)));
    }
    if view.is("batch", "Job") {
        return Err(TransformError::IncompleteJob {
            namespace: view.namespace.unwrap_or_default(),
            name: view.name,
        });
    }

    let mut out = object.clone();
    let archived_refs = owner_references_of(object)?;
    if let Some(metadata) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in STRIPPED_METADATA {
            metadata.remove(field.field);
        }
        metadata.remove("ownerReferences");
    }
    let archived_status = out.as_object_mut().and_then(|o| o.remove("status"));
    let status = match status_disposition(&view.group, &view.kind, target) {
        StatusDisposition::Write(_) => archived_status.map(|mut status| {
            if let Some(fields) = status.as_object_mut() {
                for field in DERIVED_STATUS {
                    fields.remove(field.field);
                }
            }
            status
        }),
        StatusDisposition::Drop(_) => None,
    };
    let dropped_finalizers = match target {
        Target::ControlPlane { .. } => keep_control_plane_finalizers(&mut out),
        Target::Member => Vec::new(),
    };

    let owner_references = rewrite_owner_references(&archived_refs, ctx);
    if !owner_references.rewritten.is_empty() {
        let refs =
            serde_json::to_value(&owner_references.rewritten).map_err(|_| TransformError::InvalidField {
                field: "metadata.ownerReferences",
                expected: "serializable ownerReferences",
            })?;
        if let Some(metadata) = out.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("ownerReferences".to_owned(), refs);
        }
    }

    let mut applied = Vec::new();
    match (view.group.as_str(), view.kind.as_str()) {
        ("", "Pod") => prepare_pod(&mut out, target, &mut applied)?,
        ("", "Service") => prepare_service(&mut out, &mut applied),
        ("", "PersistentVolume") => prepare_persistent_volume(&mut out, &mut applied),
        ("", "PersistentVolumeClaim") => prepare_claim(&mut out, &mut applied),
        ("", "ServiceAccount") => prepare_service_account(&mut out, &view, ctx, &mut applied),
        _ => {}
    }

    if let Some(path) = template_path(&view.group, &view.kind)
        && object.pointer(path) != out.pointer(path)
    {
        return Err(TransformError::TemplateChanged {
            kind: view.kind,
            name: view.name,
        });
    }
    Ok(Prepared::Create(Box::new(Creation {
        object: out,
        status,
        owner_references,
        applied,
        dropped_finalizers,
    })))
}

/// Where a kind keeps its pod template, which [`prepare`] never changes (the table is
/// [`kpromote_model::workload::WORKLOADS`]).
#[must_use]
pub(crate) fn template_path(group: &str, kind: &str) -> Option<&'static str> {
    kpromote_model::workload::by_kind(group, kind).map(|w| w.template)
}

fn skip_reason(view: &View, object: &Value, member: bool, ctx: &TransformContext) -> Option<SkipReason> {
    if NOT_RESTORABLE.iter().any(|(g, k)| view.is(g, k)) {
        let kind = if view.group.is_empty() {
            view.kind.clone()
        } else {
            format!("{}.{}", view.kind, view.group)
        };
        return Some(SkipReason::NotRestorable { kind });
    }
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return Some(SkipReason::BeingDeleted);
    }
    let ns_name = || (view.namespace.clone().unwrap_or_default(), view.name.clone());
    match (view.group.as_str(), view.kind.as_str()) {
        ("", "ConfigMap") if view.name == "kube-root-ca.crt" => Some(SkipReason::RootCaConfigMap),
        ("", "Secret") if str_at(object, "/type") == Some(SERVICE_ACCOUNT_TOKEN_TYPE) => {
            Some(SkipReason::ServiceAccountToken)
        }
        ("", "Pod") => {
            if object
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    escape(MIRROR_POD_ANNOTATION)
                ))
                .is_some()
            {
                Some(SkipReason::MirrorPod)
            } else if matches!(str_at(object, "/status/phase"), Some("Succeeded" | "Failed")) {
                Some(SkipReason::CompletedPod)
            } else if member {
                Some(SkipReason::MemberPodKept)
            } else {
                None
            }
        }
        ("batch", "Job") if job_finished(object) => Some(SkipReason::CompletedJob),
        ("", "Endpoints") if ctx.facts.selector_services.contains(&ns_name()) => {
            Some(SkipReason::ControllerManagedEndpoints)
        }
        ("discovery.k8s.io", "EndpointSlice")
            if object
                .pointer(&format!("/metadata/labels/{}", escape(ENDPOINTSLICE_MANAGED_BY)))
                .and_then(Value::as_str)
                .is_some_and(|m| ENDPOINTSLICE_CONTROLLERS.contains(&m)) =>
        {
            Some(SkipReason::ControllerManagedEndpointSlice)
        }
        _ => None,
    }
}

fn job_finished(job: &Value) -> bool {
    let completion = job
        .pointer("/status/completionTime")
        .is_some_and(|t| !t.is_null());
    let condition = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                matches!(str_at(c, "/type"), Some("Complete" | "Failed"))
                    && str_at(c, "/status") == Some("True")
            })
        });
    completion || condition
}

fn default_service_account_merge(object: &Value) -> Merge {
    let strings = |path: &str| -> BTreeMap<String, String> {
        object
            .pointer(path)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let image_pull_secrets = object
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|s| str_at(s, "/name").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Merge {
        labels: strings("/metadata/labels"),
        annotations: strings("/metadata/annotations"),
        image_pull_secrets,
        reason: "the target creates the default ServiceAccount in every namespace; the archived one's labels, \
                 annotations and image pull secrets are merged into it, not duplicated",
    }
}

fn prepare_pod(
    pod: &mut Value,
    target: &Target,
    applied: &mut Vec<&'static str>,
) -> Result<(), TransformError> {
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut)
        && spec.remove("ephemeralContainers").is_some()
    {
        applied.push(POD_EPHEMERAL_CONTAINERS.rule);
    }
    let Target::ControlPlane { cluster_name } = target else {
        return Ok(());
    };
    if cluster_name.is_empty() {
        return Err(TransformError::EmptyClusterName);
    }
    let spec = object_field(pod, "spec", "spec")?;
    spec.insert(
        "nodeName".to_owned(),
        Value::String(kosmos::virtual_node_name(cluster_name)),
    );
    applied.push(POD_NODE_NAME.rule);
    let priority = spec.remove("priority").is_some();
    let preemption = spec.remove("preemptionPolicy").is_some();
    if priority || preemption {
        applied.push(POD_PRIORITY.rule);
    }
    if super::twin::add_kosmos_toleration(spec)? {
        applied.push(POD_TOLERATION.rule);
    }
    let metadata = object_field(pod, "metadata", "metadata")?;
    let labels = object_field_in(metadata, "labels", "metadata.labels")?;
    labels.insert(
        kosmos::POD_LABEL.to_owned(),
        Value::String(kosmos::POD_LABEL_VALUE.to_owned()),
    );
    applied.push(POD_LABEL.rule);
    Ok(())
}

fn prepare_service(service: &mut Value, applied: &mut Vec<&'static str>) {
    let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("clusterIP").and_then(Value::as_str) == Some("None") {
        return;
    }
    let ip = spec.remove("clusterIP").is_some();
    let ips = spec.remove("clusterIPs").is_some();
    if ip || ips {
        applied.push(SERVICE_CLUSTER_IP.rule);
    }
}

fn prepare_persistent_volume(volume: &mut Value, applied: &mut Vec<&'static str>) {
    let Some(claim_ref) = volume
        .pointer_mut("/spec/claimRef")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let uid = claim_ref.remove("uid").is_some();
    let version = claim_ref.remove("resourceVersion").is_some();
    if uid || version {
        applied.push(VOLUME_CLAIM_REF.rule);
    }
}

fn prepare_claim(claim: &mut Value, applied: &mut Vec<&'static str>) {
    if let Some(annotations) = claim
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
        && annotations.remove(BIND_COMPLETED_ANNOTATION).is_some()
    {
        applied.push(CLAIM_BIND_COMPLETED.rule);
    }
}

fn prepare_service_account(
    account: &mut Value,
    view: &View,
    ctx: &TransformContext,
    applied: &mut Vec<&'static str>,
) {
    let ns = view.namespace.clone().unwrap_or_default();
    let Some(secrets) = account.get_mut("secrets").and_then(Value::as_array_mut) else {
        return;
    };
    let before = secrets.len();
    secrets.retain(|s| {
        !str_at(s, "/name")
            .is_some_and(|name| ctx.facts.token_secrets.contains(&(ns.clone(), name.to_owned())))
    });
    if secrets.len() != before {
        applied.push(SERVICE_ACCOUNT_TOKEN_SECRETS.rule);
    }
}

fn service_has_selector(service: &Value) -> bool {
    service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty())
}

fn uid_of(object: &Value) -> Option<&str> {
    str_at(object, "/metadata/uid").filter(|u| !u.is_empty())
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// Escapes a map key for a JSON pointer (RFC 6901): `~` as `~0`, `/` as `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The object at `field` of `value`, created when absent or null.
fn object_field<'a>(
    value: &'a mut Value,
    field: &str,
    path: &'static str,
) -> Result<&'a mut Map<String, Value>, TransformError> {
    let map = value.as_object_mut().ok_or(TransformError::NotAnObject)?;
    object_field_in(map, field, path)
}

fn object_field_in<'a>(
    map: &'a mut Map<String, Value>,
    field: &str,
    path: &'static str,
) -> Result<&'a mut Map<String, Value>, TransformError> {
    let slot = map.entry(field.to_owned()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().ok_or(TransformError::InvalidField {
        field: path,
        expected: "an object",
    })
}

#[cfg(test)]
mod tests;
