//! ownerReferences across clusters: an owner's UID in the target is not its archived one.
//! [`rewrite_owner_references`] sorts an object's references by what the target has (rewritten,
//! deferred, dropped); [`adoption_patch`] adds the deferred ones once their owners exist.

use serde_json::{Map, Value, json};

use super::{TransformContext, TransformError};
use kpromote_model::object_key::group_of;
use kpromote_model::ownership::OwnerReference;

/// What [`rewrite_owner_references`] did with each ownerReference.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OwnerReferenceRewrite {
    /// References whose owner exists in the target, with its new UID. These are in the object.
    pub rewritten: Vec<OwnerReference>,
    /// References whose owner will be created later, with the **old** UID. Not in the object;
    /// the caller adds them with [`adoption_patch`] once the owner exists.
    pub deferred: Vec<OwnerReference>,
    /// References whose owner will never exist in the target. Not in the object.
    pub dropped: Vec<OwnerReference>,
}

#[cfg(test)]
/// Why a dropped ownerReference is dropped, for the report.
pub(crate) const DROPPED_OWNER_REASON: &str = "the owner is not in the archive or is not restored: an ownerReference to a \
     UID that does not exist makes the garbage collector delete the object";

/// Sorts `references` by what the target knows of their owners (see [`OwnerReferenceRewrite`]).
#[must_use]
pub(crate) fn rewrite_owner_references(
    references: &[OwnerReference],
    ctx: &TransformContext,
) -> OwnerReferenceRewrite {
    let mut out = OwnerReferenceRewrite::default();
    for reference in references {
        if let Some(new_uid) = ctx.new_uid(&reference.uid) {
            out.rewritten.push(OwnerReference {
                uid: new_uid.to_owned(),
                ..reference.clone()
            });
        } else if ctx.is_pending(&reference.uid) {
            out.deferred.push(reference.clone());
        } else {
            out.dropped.push(reference.clone());
        }
    }
    out
}

/// The result of [`adoption_patch`].
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Adoption {
    /// The patch adding the references: strategic (only the added references, merged by UID,
    /// under `live`'s UID) or JSON merge (the full new list under `live`'s resourceVersion), as
    /// asked; `None` when nothing is to add.
    pub patch: Option<Value>,
    /// Deferred references whose owner is still not created; call again later.
    pub waiting: Vec<OwnerReference>,
    /// Controller references not added because `live` already has a controller (a controller
    /// adopted the object meanwhile); an object has at most one.
    pub conflicts: Vec<OwnerReference>,
}

/// Adds the `deferred` references (from [`OwnerReferenceRewrite::deferred`]) whose owners now
/// exist to `live`, the object as it is in the target. A reference already present — same UID,
/// or same kind, group and name (its controller adopted it first) — is not added twice.
/// `strategic` asks for a strategic merge patch (types kube-apiserver serves): the target's
/// controller adopting the same object at the same moment then merges with it instead of making
/// it conflict.
///
/// # Errors
/// [`TransformError::InvalidField`] when `live`'s ownerReferences are not a list of
/// ownerReferences.
pub(crate) fn adoption_patch(
    live: &Value,
    deferred: &[OwnerReference],
    ctx: &TransformContext,
    strategic: bool,
) -> Result<Adoption, TransformError> {
    let mut refs = owner_references_of(live)?;
    let mut out = Adoption::default();
    let before = refs.len();
    for reference in deferred {
        let Some(new_uid) = ctx.new_uid(&reference.uid) else {
            out.waiting.push(reference.clone());
            continue;
        };
        let same = |r: &OwnerReference| {
            r.uid == new_uid
                || (r.kind == reference.kind
                    && r.name == reference.name
                    && group_of(&r.api_version) == group_of(&reference.api_version))
        };
        if refs.iter().any(same) {
            continue;
        }
        if reference.controller == Some(true) && refs.iter().any(|r| r.controller == Some(true)) {
            out.conflicts.push(reference.clone());
            continue;
        }
        refs.push(OwnerReference {
            uid: new_uid.to_owned(),
            ..reference.clone()
        });
    }
    if refs.len() != before {
        let (refs, precondition) = if strategic {
            (&refs[before..], ("uid", live.pointer("/metadata/uid")))
        } else {
            (
                &refs[..],
                ("resourceVersion", live.pointer("/metadata/resourceVersion")),
            )
        };
        let refs = serde_json::to_value(refs).map_err(|_| TransformError::InvalidField {
            field: "metadata.ownerReferences",
            expected: "serializable ownerReferences",
        })?;
        let mut metadata = Map::new();
        metadata.insert("ownerReferences".to_owned(), refs);
        if let (field, Some(value)) = precondition {
            metadata.insert(field.to_owned(), value.clone());
        }
        out.patch = Some(json!({ "metadata": metadata }));
    }
    Ok(out)
}

pub(super) fn owner_references_of(object: &Value) -> Result<Vec<OwnerReference>, TransformError> {
    match object.pointer("/metadata/ownerReferences") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(refs) => serde_json::from_value(refs.clone()).map_err(|_| TransformError::InvalidField {
            field: "metadata.ownerReferences",
            expected: "a list of ownerReferences",
        }),
    }
}
