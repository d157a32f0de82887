//! Restore: the order objects are created in, and what is changed in each object before it is
//! created. Pure logic over `serde_json::Value`; the engine that talks to clusters calls it.
//!
//! - [`plan`]: [`plan::RestorePlan`] (bottom-up creation levels, each with its reason and wait
//!   points), [`plan::DetachPlan`] (owners to delete in the member, top-down) and
//!   [`plan::TeardownPlan`] (what rollback removes from the control plane).
//! - [`transform`]: [`transform::prepare`] turns an archived object into what to create, merge
//!   or skip in the target, with one table of stripped fields and one rule per kind, each with
//!   its reason.

pub mod plan;
pub mod transform;
