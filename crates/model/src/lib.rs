//! kpromote's vocabulary, shared by every layer and free of any Kubernetes client or runtime:
//!
//! - [`object_key`]: [`ObjectKey`], the one name of an object across archive, plan and cluster.
//! - [`group_resource`]: [`GroupResource`] (`resource.group`), the types kpromote names
//!   ([`group_resource::well_known`]) and the groups kube-apiserver serves itself.
//! - [`workload`]: which kinds manage pods and where each keeps its pod template.
//! - [`ownership`]: who owns whom, from ownerReferences; restore goes bottom-up, detach top-down.
//! - [`kosmos`]: the labels, taints and names Kosmos gives meaning to.

pub mod group_resource;
pub mod kosmos;
pub mod object_key;
pub mod ownership;
pub mod workload;

pub use group_resource::GroupResource;
pub use object_key::ObjectKey;
pub use ownership::OwnerReference;
