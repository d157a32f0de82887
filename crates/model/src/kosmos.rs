//! The names Kosmos gives meaning to, and kpromote's own mark beside them. One home for every
//! label, taint, annotation and naming rule that the Kosmos clustertree controllers or kpromote's
//! rollback read, so promote, rollback and the tests agree on them.

/// Label Kosmos puts on a pod it manages from the control plane. The clustertree pod controllers
/// only update or delete a member pod that carries it, so rollback removes it before deleting the
/// control-plane twin.
pub const POD_LABEL: &str = "kosmos-io/pod";
/// Value of [`POD_LABEL`] on a managed pod.
pub const POD_LABEL_VALUE: &str = "true";
/// Label the Kosmos promote prototype put on control-plane pods (and its pod controller copied to
/// member pods). Nothing in Kosmos reads it; kpromote never sets it, and rollback removes it where
/// it finds it.
pub const SYNCED_LABEL: &str = "kosmos-io/synced";
/// Label and taint key of a virtual node standing for a member cluster.
pub const NODE_KEY: &str = "kosmos.io/node";
/// Value of the [`NODE_KEY`] label and taint.
pub const NODE_VALUE: &str = "true";
/// Effect of the virtual node's taint: ordinary workloads never schedule onto it.
pub const NODE_TAINT_EFFECT: &str = "NoSchedule";
/// Annotation on a virtual node naming the member cluster it stands for.
pub const OWNED_BY_CLUSTER_ANNOTATION: &str = "kosmos-io/owned-by-cluster";
/// Operator of the toleration a pod bound to a virtual node carries: `kosmos.io/node=true`.
pub const NODE_TOLERATION_OPERATOR: &str = "Equal";
/// Prefix of a virtual node's name, followed by the member cluster's name (Kosmos leaf mode `ALL`).
pub const NODE_NAME_PREFIX: &str = "kosmos-";

/// Annotation Kosmos puts on a control-plane ConfigMap or Secret it copied to member clusters: a
/// comma-separated list of their names. Deleting such an object in the control plane makes
/// Kosmos delete the member's object of the same name — whether Kosmos made it or not.
pub const CLUSTER_OWNERS_ANNOTATION: &str = "kosmos-io/cluster-owners";

/// The [`CLUSTER_OWNERS_ANNOTATION`] value `owners` without member `cluster`; `None` when
/// `cluster` is not in it.
#[must_use]
pub fn without_cluster_owner(owners: &str, cluster: &str) -> Option<String> {
    let names: Vec<&str> = owners
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    names.contains(&cluster).then(|| {
        names
            .iter()
            .filter(|n| **n != cluster)
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Annotation kpromote puts on every object it creates in a target cluster, and on the member
/// pods it marks, holding the archive's identity. Rollback deletes from the control plane exactly
/// the objects carrying the annotation of its archive — never one that existed before — and needs
/// no other record, so it works from the archive alone. It is on both views of a pod because
/// clustertree copies the member pod's annotations over its twin's.
pub const STAMP_ANNOTATION: &str = "kpromote.kosmos.io/archive";

/// Name of the virtual node that stands for member cluster `cluster_name` in the control plane.
#[must_use]
pub fn virtual_node_name(cluster_name: &str) -> String {
    format!("{NODE_NAME_PREFIX}{cluster_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_owner_removed_from_the_list() {
        assert_eq!(without_cluster_owner("member", "member").as_deref(), Some(""));
        assert_eq!(
            without_cluster_owner("a,member,b", "member").as_deref(),
            Some("a,b")
        );
        assert_eq!(without_cluster_owner("a, b", "member"), None);
    }

    #[test]
    fn virtual_node_name_is_prefixed() {
        assert_eq!(virtual_node_name("member-cluster1"), "kosmos-member-cluster1");
    }
}
