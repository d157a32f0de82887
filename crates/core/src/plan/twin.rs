//! One pod, two identical views. After promote a member pod and its control-plane twin must be
//! equal in everything Kosmos clustertree compares — containers, init containers,
//! `activeDeadlineSeconds`, tolerations, labels and annotations ([`CLUSTERTREE_COMPARED`]) — or
//! clustertree sends the member pod an in-place update that the API server rejects (a running
//! pod's spec is immutable) and retries it forever, creating Secrets and annotating ConfigMaps on
//! the way. So whatever kpromote adds to one pod it adds to the other ([`POD_CHANGES`], each
//! change with its reason), and rollback takes off exactly what it added ([`unmark_patch`]).
//!
//! Admission in the control plane may change a pod on create (defaulted resources, added
//! tolerations, a different priority): [`admission_changes`] compares what was created with
//! what was sent, so such a change stops the run with the field and the admission that likely
//! made it instead of leaving clustertree to fight over it.

use serde_json::{Map, Value, json};

use super::transform::TransformError;
use kpromote_model::kosmos::{self, STAMP_ANNOTATION};

/// The pod fields Kosmos clustertree compares between a member pod and its control-plane twin
/// (JSON pointers). Any difference makes it update the member pod in place.
pub(crate) const CLUSTERTREE_COMPARED: &[&str] = &[
    "/spec/containers",
    "/spec/initContainers",
    "/spec/activeDeadlineSeconds",
    "/spec/tolerations",
    "/metadata/labels",
    "/metadata/annotations",
];

#[cfg(test)]
/// Which view of a pod a [`PodChange`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// The running pod in the member cluster.
    Member,
    /// Its copy in the control plane.
    ControlPlane,
    /// Both.
    Both,
}

#[cfg(test)]
/// One change kpromote makes to a pod, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PodChange {
    /// Which pod.
    pub view: View,
    /// The field.
    pub field: &'static str,
    /// What promote does, and what rollback does.
    pub change: &'static str,
    /// Why.
    pub reason: &'static str,
}

#[cfg(test)]
/// Every change kpromote makes to a member pod and to its control-plane twin. Nothing else of a
/// pod is changed; a pod template is never changed at all.
pub(crate) const POD_CHANGES: &[PodChange] = &[
    PodChange {
        view: View::Both,
        field: "metadata.labels[kosmos-io/pod]",
        change: "promote sets \"true\"; rollback restores the archived value (removes it when the pod had none)",
        reason: "clustertree manages (updates, deletes, copies status of) only member pods carrying it; the \
                 control-plane pod carries it too so the label sets stay equal",
    },
    PodChange {
        view: View::Both,
        field: "metadata.annotations[kpromote.kosmos.io/archive]",
        change: "promote sets the archive's identity; rollback removes it from the member pod and deletes the \
                 control-plane pod",
        reason: "rollback removes from the control plane exactly what carries it; clustertree copies the member \
                 pod's annotations over the control-plane pod's, so only a stamp on both survives",
    },
    PodChange {
        view: View::Both,
        field: "spec.tolerations",
        change: "promote appends kosmos.io/node=true:NoSchedule (Equal) unless a toleration already tolerates \
                 that taint; rollback leaves it on the member pod",
        reason: "the control-plane pod is bound to the tainted virtual node; clustertree compares tolerations, so \
                 the member pod gets the same list. The API server allows adding tolerations to a running pod \
                 but never removing them; on a pod already scheduled a NoSchedule toleration changes nothing",
    },
    PodChange {
        view: View::Member,
        field: "metadata.ownerReferences",
        change: "promote removes the references to the owners it detaches, in the patch that marks the pod and \
                 only once each owner is being deleted; rollback's re-created owners are referenced again",
        reason: "deleting an owner with orphan propagation makes the garbage collector remove them anyway, one \
                 request per pod at the controller manager's client rate (20/s by default); an owner being \
                 deleted no longer adopts or creates pods, so the pod is left alone either way",
    },
    PodChange {
        view: View::ControlPlane,
        field: "spec.nodeName",
        change: "kosmos-<cluster>",
        reason: "binds the copy to the virtual node standing for its member cluster; not compared by clustertree",
    },
    PodChange {
        view: View::ControlPlane,
        field: "spec.priority, spec.preemptionPolicy",
        change: "removed before create, recomputed by Priority admission (checked to equal the member's)",
        reason: "Priority admission rejects a pod whose values differ from its PriorityClass",
    },
    PodChange {
        view: View::ControlPlane,
        field: "spec.ephemeralContainers",
        change: "removed",
        reason: "the API server rejects them on create",
    },
    PodChange {
        view: View::ControlPlane,
        field: "status",
        change: "the archived status, without qosClass, written through the status subresource",
        reason: "no kubelet reports for a virtual node; qosClass is derived by the target from the (equal) spec \
                 and immutable",
    },
];

/// Adds the virtual node's toleration to a pod spec unless one already tolerates its taint, at
/// the end of the list (both views append it, so the lists stay equal). A missing or null list
/// is created — the case Kosmos's own promote got wrong.
///
/// # Errors
/// [`TransformError::InvalidField`] when `tolerations` is not a list.
pub(crate) fn add_kosmos_toleration(spec: &mut Map<String, Value>) -> Result<bool, TransformError> {
    let slot = spec.entry("tolerations").or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    let tolerations = slot.as_array_mut().ok_or(TransformError::InvalidField {
        field: "spec.tolerations",
        expected: "a list",
    })?;
    if tolerations
        .iter()
        .any(|t| tolerates(t, kosmos::NODE_KEY, kosmos::NODE_VALUE, kosmos::NODE_TAINT_EFFECT))
    {
        return Ok(false);
    }
    tolerations.push(json!({
        "key": kosmos::NODE_KEY,
        "operator": kosmos::NODE_TOLERATION_OPERATOR,
        "value": kosmos::NODE_VALUE,
        "effect": kosmos::NODE_TAINT_EFFECT,
    }));
    Ok(true)
}

/// Whether `toleration` tolerates the taint `key=value:effect`, by Kubernetes' rules: an empty
/// effect matches every effect; an empty key with `Exists` matches every taint; `Exists`
/// matches any value; `Equal` (the default) needs the same value.
fn tolerates(toleration: &Value, key: &str, value: &str, effect: &str) -> bool {
    let field = |name: &str| toleration.get(name).and_then(Value::as_str).unwrap_or("");
    if !field("effect").is_empty() && field("effect") != effect {
        return false;
    }
    match (field("key"), field("operator")) {
        ("", "Exists") => true,
        ("", _) => false,
        (k, _) if k != key => false,
        (_, "Exists") => true,
        (_, "" | "Equal") => field("value") == value,
        _ => false,
    }
}

/// The strategic merge patch detach sends to a running member pod: the Kosmos label, the archive
/// stamp and the virtual node's toleration, so it equals its control-plane twin in every
/// [`CLUSTERTREE_COMPARED`] field. It carries `live`'s UID, not its resourceVersion: labels and
/// annotations merge key by key, and the toleration list is replaced whole — the API server
/// refuses a patch that would drop a toleration added since `live` was read, but not one that
/// puts back a `tolerationSeconds` changed in between, so `live` must be a read made just before
/// (a patch built from an older copy is pinned to its resourceVersion by the caller, see
/// `detach::Known::Archived`). Without a resourceVersion the garbage collector orphaning the pod
/// at the same moment does not make it conflict. `None` when `live` carries all three already.
///
/// # Errors
/// [`TransformError::InvalidField`] when the pod's tolerations are not a list.
pub(crate) fn member_mark_patch(live: &Value, archive_id: &str) -> Result<Option<Value>, TransformError> {
    let mut metadata = Map::new();
    if !kosmos_managed(live) {
        metadata.insert(
            "labels".to_owned(),
            json!({ kosmos::POD_LABEL: kosmos::POD_LABEL_VALUE }),
        );
    }
    if annotation(live, STAMP_ANNOTATION) != Some(archive_id) {
        metadata.insert("annotations".to_owned(), json!({ STAMP_ANNOTATION: archive_id }));
    }
    let mut spec = Map::new();
    if let Some(tolerations) = live.pointer("/spec/tolerations") {
        spec.insert("tolerations".to_owned(), tolerations.clone());
    }
    let tolerations = add_kosmos_toleration(&mut spec)?.then(|| spec.remove("tolerations"));
    if metadata.is_empty() && tolerations.is_none() {
        return Ok(None);
    }
    if let Some(uid) = live.pointer("/metadata/uid") {
        metadata.insert("uid".to_owned(), uid.clone());
    }
    let mut patch = json!({ "metadata": metadata });
    if let Some(Some(list)) = tolerations {
        patch["spec"] = json!({ "tolerations": list });
    }
    Ok(Some(patch))
}

/// The labels promote puts on a pod.
pub(crate) const MARK_LABELS: [&str; 2] = [kosmos::POD_LABEL, kosmos::SYNCED_LABEL];

/// The metadata maps and keys of the marks promote puts on a pod (besides the toleration).
const MARKS: [(&str, &[&str]); 2] = [("labels", &MARK_LABELS), ("annotations", &[STAMP_ANNOTATION])];

/// The JSON merge patch rollback sends to a pod (member or control plane) to take kpromote's
/// marks off: each mark label and the stamp go back to their archived value, or away when the
/// archived pod did not have them. The toleration stays (see [`POD_CHANGES`]). `None` when
/// nothing is to change.
///
/// Taking the label off the member pod before the control-plane pod is deleted is what keeps that
/// deletion from reaching it: Kosmos deletes a member pod only when it carries the label.
#[must_use]
pub(crate) fn unmark_patch(archived: &Value, live: &Value) -> Option<Value> {
    let mut metadata = Map::new();
    for (field, keys) in MARKS {
        let mut changes = Map::new();
        for key in keys {
            let path = format!("/metadata/{field}/{}", escape(key));
            let (was, is) = (archived.pointer(&path), live.pointer(&path));
            if is.is_some() && was != is {
                changes.insert((*key).to_owned(), was.cloned().unwrap_or(Value::Null));
            }
        }
        if !changes.is_empty() {
            metadata.insert(field.to_owned(), Value::Object(changes));
        }
    }
    (!metadata.is_empty()).then(|| json!({ "metadata": metadata }))
}

/// What [`unmark_patch`] reads of an archived pod: its mark labels and stamp, `Null` when it had
/// none (most pods). Rollback keeps this of each pod it adopts, not the pod.
#[must_use]
pub(crate) fn archived_marks(archived: &Value) -> Value {
    let mut metadata = Map::new();
    for (field, keys) in MARKS {
        let kept: Map<String, Value> = keys
            .iter()
            .filter_map(|key| {
                let value = archived.pointer(&format!("/metadata/{field}/{}", escape(key)))?;
                Some(((*key).to_owned(), value.clone()))
            })
            .collect();
        if !kept.is_empty() {
            metadata.insert((*field).to_owned(), Value::Object(kept));
        }
    }
    if metadata.is_empty() {
        Value::Null
    } else {
        json!({ "metadata": metadata })
    }
}

/// The [`CLUSTERTREE_COMPARED`] fields in which `member` and `control_plane` differ: empty when
/// clustertree finds nothing to push down.
#[must_use]
pub fn clustertree_differences(member: &Value, control_plane: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for pointer in CLUSTERTREE_COMPARED {
        diff_paths(
            member.pointer(pointer),
            control_plane.pointer(pointer),
            &pointer[1..].replace('/', "."),
            &mut out,
        );
    }
    out
}

/// A field admission changed on a pod created in the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionChange {
    /// The field's path (`spec.containers[0].resources`).
    pub field: String,
    /// The admission that likely made the change, and what to do.
    pub admission: &'static str,
}

/// What admission changed when creating `sent` (the prepared pod) made `created`: every field of
/// `spec` and every label and annotation that differs, except the documented changes
/// ([`POD_CHANGES`]). Priority is compared with the `archived` pod's: the copy was created
/// without it, so Priority admission recomputed it from the control plane's PriorityClass.
#[must_use]
pub(crate) fn admission_changes(archived: &Value, sent: &Value, created: &Value) -> Vec<AdmissionChange> {
    let mut expected = sent.clone();
    for field in ["priority", "preemptionPolicy"] {
        let pointer = format!("/spec/{field}");
        if let (Some(spec), Some(value)) = (
            expected.get_mut("spec").and_then(Value::as_object_mut),
            archived.pointer(&pointer),
        ) {
            spec.insert(field.to_owned(), value.clone());
        }
        // An archived pod without a priority (its cluster had no Priority admission): the
        // control plane's value cannot be compared.
        if archived.pointer(&pointer).is_none()
            && let Some(spec) = expected.get_mut("spec").and_then(Value::as_object_mut)
            && let Some(value) = created.pointer(&pointer)
        {
            spec.insert(field.to_owned(), value.clone());
        }
    }
    let mut paths = Vec::new();
    diff_paths(expected.get("spec"), created.get("spec"), "spec", &mut paths);
    for field in ["labels", "annotations"] {
        let pointer = format!("/metadata/{field}");
        diff_paths(
            expected.pointer(&pointer),
            created.pointer(&pointer),
            &format!("metadata.{field}"),
            &mut paths,
        );
    }
    paths
        .into_iter()
        .map(|field| {
            let admission = likely_admission(&field);
            AdmissionChange { field, admission }
        })
        .collect()
}

/// The admission plugin most likely to have changed `field` of a pod, with what to do about it.
fn likely_admission(field: &str) -> &'static str {
    let has = |part: &str| field.contains(part);
    if has("resources") {
        "LimitRanger: a LimitRange in the control plane defaulted the resources; promote creates LimitRanges \
         after the pods, so one must exist there already (a cluster-wide default?) — remove it or give the \
         pods explicit resources"
    } else if has("tolerations") {
        "DefaultTolerationSeconds or PodTolerationRestriction: the control plane adds tolerations the member \
         did not — align the admission configuration of the two clusters"
    } else if has("priority") || has("preemptionPolicy") {
        "Priority: the PriorityClass the pod names has another value or preemption policy in the control \
         plane — make the two PriorityClasses equal"
    } else if has("volumes") || has("volumeMounts") || has("automountServiceAccountToken") {
        "ServiceAccount: the control plane's service-account admission changed the pod's volumes"
    } else if has("runtimeClassName") || has("overhead") {
        "RuntimeClass: the RuntimeClass differs in the control plane — make the two equal"
    } else if has("nodeSelector") {
        "PodNodeSelector: the control plane adds a node selector to pods of this namespace"
    } else if has("metadata.") {
        "a mutating admission webhook in the control plane changed the pod's metadata — exclude the \
         namespace from it"
    } else {
        "a mutating admission webhook in the control plane, or defaulting of a different Kubernetes version — \
         exclude the namespace from the webhook, or promote between clusters of the same version"
    }
}

/// Appends to `out` the paths under which `a` and `b` differ. A missing field, `null`, `[]` and
/// `{}` are equal: the API server omits empty lists and maps, and clustertree decodes both as nil.
fn diff_paths(a: Option<&Value>, b: Option<&Value>, path: &str, out: &mut Vec<String>) {
    fn empty(v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        }
    }
    if empty(a) && empty(b) {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let sub = if path.ends_with("labels") || path.ends_with("annotations") {
                    format!("{path}[{key}]")
                } else {
                    format!("{path}.{key}")
                };
                diff_paths(x.get(key), y.get(key), &sub, out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_paths(Some(p), Some(q), &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(path.to_owned()),
    }
}

/// Whether member pod `pod` carries the Kosmos label: Kosmos mirrors it, and deletes it with its
/// control-plane twin.
pub(crate) fn kosmos_managed(pod: &Value) -> bool {
    label(pod, kosmos::POD_LABEL) == Some(kosmos::POD_LABEL_VALUE)
}

fn label<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer(&format!("/metadata/labels/{}", escape(key)))
        .and_then(Value::as_str)
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer(&format!("/metadata/annotations/{}", escape(key)))
        .and_then(Value::as_str)
}

/// Escapes a map key for a JSON pointer (RFC 6901): `~` as `~0`, `/` as `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
