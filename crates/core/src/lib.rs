//! kpromote against clusters: it moves running applications from a Kosmos member cluster into the
//! Kosmos control plane ("promote") without restarting a pod, and rolls them back from the archive
//! it made. Identities and tables live in `kpromote-model`, the archive format in
//! `kpromote-archive` (see ARCHITECTURE.md).
//!
//! The crate is split by domain concept:
//! - [`access`]: reaching clusters (kubeconfig, context, Kosmos `Cluster` objects).
//! - [`resources`]: group-resource names, discovery, and what a user's resource names resolve to.
//! - [`backup`]: reads namespaces and their cluster-scoped dependencies into an archive.
//! - [`plan`]: the restore, detach and teardown order and the per-object transforms, each with its
//!   reason.
//! - [`policy`]: the `PromotePolicy` API users apply.
//! - [`controller`]: the controller that drives `PromotePolicy` objects through their phases.
//! - `escalation` (the precheck's, so not public): which RBAC grants would reach further in the
//!   control plane than in the member.
//! - [`journal`]: durable progress of a run, so a crash resumes instead of stranding pods.
//! - [`run_status`]: where a run stands, read from its archive and journals (`kpromote status`).
//! - [`storage`]: where archives are kept: a directory, or S3-compatible object storage.
//! - [`kosmos`]: the Kosmos `Cluster` object that registers a member (its names and labels are
//!   in `kpromote_model::kosmos`).

pub mod access;
pub mod backup;
pub mod controller;
pub mod engine;
pub(crate) mod escalation;
pub mod journal;
pub mod kosmos;
pub mod plan;
pub mod policy;
pub mod precheck;
pub mod resources;
pub mod run_status;
pub mod storage;
