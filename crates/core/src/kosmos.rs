//! The Kosmos `Cluster` object that registers a member, as kpromote reads it. The names Kosmos
//! gives meaning to (labels, taints, the virtual node) have their one home in
//! [`kpromote_model::kosmos`].

/// The Kosmos `Cluster` object (`kosmos.io/v1alpha1`, cluster-scoped) that registers a member
/// cluster; kpromote reads only its kubeconfig. Unknown fields of the real Kosmos type are
/// ignored when reading and preserved by the schema kpromote ships for clusters without Kosmos.
pub mod cluster {
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// The part of a Kosmos `Cluster` spec kpromote reads.
    #[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
    #[kube(
        group = "kosmos.io",
        version = "v1alpha1",
        kind = "Cluster",
        plural = "clusters"
    )]
    #[serde(rename_all = "camelCase")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub struct ClusterSpec {
        /// The member cluster's kubeconfig (base64 in YAML, bytes in Go).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<String>", extend("format" = "byte"))]
        pub kubeconfig: Option<k8s_openapi::ByteString>,
    }
}
