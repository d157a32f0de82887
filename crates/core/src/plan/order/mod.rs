//! The orders promote and rollback work in: [`RestorePlan`] (create, bottom-up),
//! [`DetachPlan`] (delete owners in the member, top-down) and [`TeardownPlan`] (remove from the
//! control plane what promote created).
//!
//! # The restore order, and why
//! One table, [`RESTORE_ORDER`], gives every known kind its [`Tier`] and the reason for it. An
//! object's place is the tuple
//!
//! 1. its **phase**: CustomResourceDefinitions, then Namespaces, then everything else, then the
//!    admission policies that act on pods ([`Phase`]) — hard requirements of the API server, and
//!    the member's history: a LimitRange or ResourceQuota may have come after the pods it would
//!    have changed or refused, so it must not act on their copies;
//! 2. its ownership **height** ascending ([`OwnershipGraph::height`]): every dependent is
//!    created before its owner, so the owner's controller adopts what exists instead of creating
//!    new pods — the whole "no restart" promise rests on this;
//! 3. its kind's **tier** ([`Tier`]): among objects of equal height, what pods need (service
//!    accounts, secrets, claims …) before pods, pods before the controllers that own them,
//!    traffic and policy objects after the workloads, kinds nobody listed last, one level per
//!    kind in alphabetical order of `resource.group` (as Velero does for kinds it does not know).
//!
//! Objects with the same tuple form one [`Level`]: none of them owns another (equal height) and
//! no kind rule orders them (equal tier), so a level can be created concurrently. A level may
//! carry a [`WaitPoint`]: a condition the engine waits for before the next level.
//!
//! Ownership *by* a CRD or a Namespace does not move it out of its phase: the API server needs it
//! first. A dependent created before its owner has its ownerReference patched in later by the
//! caller (see [`crate::plan::transform`]).
//!
//! # Guarantees
//! Every input key appears in exactly one level; levels and the keys in them are in a
//! deterministic order; an owner that is not a CRD or Namespace is in a later level than each of
//! its dependents; a namespaced object is in a later level than its Namespace, a custom resource
//! than its CRD (when those are in the set).
//!
//! One module per plan: [`RestorePlan`] with the kind table it orders by ([`RESTORE_ORDER`]),
//! [`DetachPlan`], [`TeardownPlan`].

mod detach;
mod restore;
mod teardown;
mod tiers;

#[cfg(test)]
use detach::is_detached_workload;
pub(crate) use detach::{DetachPlan, is_builtin_group};
pub(crate) use restore::{Level, RestorePlan, WaitPoint};
pub(crate) use teardown::{TeardownPlan, TeardownStep};
#[cfg(test)]
use tiers::{CRD_GROUP, CRD_RESOURCE};
pub(crate) use tiers::{Phase, RESTORE_ORDER, Tier};

use kpromote_model::object_key::ObjectKey;

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A key the caller passed is not in the ownership graph.
    #[error("{0} is not in the ownership graph")]
    UnknownObject(ObjectKey),
}

#[cfg(test)]
mod tests;
