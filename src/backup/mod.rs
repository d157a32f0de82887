//! Reads the included namespaces of a member cluster, and the cluster-scoped objects they depend
//! on, into an archive.
//!
//! - [`dependencies`]: which cluster-scoped objects a namespaced object pulls in, and why.

pub mod dependencies;
