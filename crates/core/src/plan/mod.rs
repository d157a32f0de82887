//! Plans: the order objects are created in, and what is changed in each object before it is
//! created. Pure logic over `serde_json::Value`; the engine that talks to clusters calls it.
//!
//! - [`order`]: [`order::RestorePlan`] (bottom-up creation levels, each with its reason and wait
//!   points), [`order::DetachPlan`] (owners to delete in the member, top-down) and
//!   [`order::TeardownPlan`] (what rollback removes from the control plane).
//! - [`transform`]: [`transform::prepare`] turns an archived object into what to create, merge
//!   or skip in the target, with one table of stripped fields and one rule per kind, each with
//!   its reason.
//! - [`twin`]: what kpromote changes on a member pod and its control-plane twin so that Kosmos
//!   finds them equal, the marks rollback takes off, and the check that admission changed
//!   nothing in a created pod.
//!
//! # How the engine uses this
//! Promote, after detach:
//! 1. build an [`OwnershipGraph`](kpromote_model::ownership::OwnershipGraph) of the archive, then
//!    [`order::RestorePlan::build`] and
//!    [`transform::TransformContext::for_control_plane`];
//! 2. for each level, for each object: [`transform::prepare`] with
//!    [`transform::Target::ControlPlane`]; create (or merge, or skip and report); record the new
//!    UID with [`transform::TransformContext::record_created`]; write
//!    [`transform::Creation::status`] through the status subresource when present;
//! 3. after each level, send [`transform::adoption_patch`] for every deferred ownerReference
//!    whose owner now exists; honour the level's [`order::WaitPoint`].
//!
//! Detach, before: [`order::DetachPlan::build`] with the keys `prepare` skips, delete each level
//! with `propagationPolicy: Orphan`, then mark each member pod with
//! [`twin::member_mark_patch`].
//!
//! Rollback: [`order::RestorePlan::build_for`] the detached keys with
//! [`transform::TransformContext::for_member`] and [`transform::Target::Member`]; take the marks
//! off with [`twin::unmark_patch`]; remove what promote created in the control plane in
//! [`order::TeardownPlan`] order.

pub(crate) mod order;
pub mod transform;
pub mod twin;
