//! Reads the included namespaces of a member cluster, and the cluster-scoped objects they depend
//! on, into an archive.
//!
//! - [`dependencies`]: which cluster-scoped objects a namespaced object pulls in, and why.
//! - [`lister`]: lists one resource type page by page as a stream, surviving continue token
//!   expiry.

pub mod dependencies;
pub mod lister;
