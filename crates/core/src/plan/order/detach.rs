//! [`DetachPlan`]: the owners detach deletes in the member, top-down.

use std::collections::{BTreeMap, BTreeSet};

use crate::resources::BUILTIN_GROUPS;
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::OwnershipGraph;

/// Whether detach always deletes `key` (with `propagationPolicy: Orphan`), whatever its height:
/// a workload run by a controller ([`kpromote_model::workload::WORKLOADS`]). Left in the member,
/// its controller would keep managing the pods — or, for a CronJob, keep starting Jobs — next to
/// the copy in the control plane.
#[must_use]
pub(crate) fn is_detached_workload(key: &ObjectKey) -> bool {
    kpromote_model::workload::is_controlled(&key.group, &key.resource)
}

/// Whether `group` is one Kubernetes itself serves ([`BUILTIN_GROUPS`], a list of exact names).
/// Any other group is a custom resource's — including CRDs in `*.k8s.io` groups such as
/// `gateway.networking.k8s.io` or `snapshot.storage.k8s.io`, whose objects may own workloads.
#[must_use]
pub(crate) fn is_builtin_group(group: &str) -> bool {
    BUILTIN_GROUPS.contains(&group)
}

/// One level of a [`DetachPlan`]: owners of one height, deletable concurrently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachLevel {
    /// The ownership height of every object in the level.
    pub height: usize,
    /// The objects, in key order.
    pub objects: Vec<ObjectKey>,
}

/// The owners detach deletes in the member cluster, **top-down**: highest first, so no owner is
/// still there to re-create a dependent the plan already detached.
///
/// # Which objects
/// - every workload controller ([`is_detached_workload`]), whatever its height;
/// - every custom resource (a kind outside the [built-in groups](is_builtin_group)) that owns,
///   directly or through others, a pod or a detached workload: its operator would otherwise
///   re-create the children it lost.
///
/// Never: pods (they keep running), and every other built-in kind even when it owns something —
/// a Service owns its EndpointSlices, and deleting it would cut the traffic; a ConfigMap or
/// Secret owning a pod is still mounted by it. Objects the restore skips (completed Jobs, …) are
/// never detached: they are not re-created anywhere, so they stay where they are.
///
/// # Caveats
/// The engine deletes each level with `propagationPolicy: Orphan` and should wait until a level
/// is gone (the garbage collector has orphaned its dependents) before the next.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DetachPlan {
    /// Levels, first to delete first (descending height).
    pub levels: Vec<DetachLevel>,
}

impl DetachPlan {
    #[cfg(test)]
    /// The detach plan for `graph`, leaving out `skipped` (objects the restore will not
    /// re-create, and the pods among them).
    #[must_use]
    pub(crate) fn build(graph: &OwnershipGraph, skipped: &BTreeSet<ObjectKey>) -> Self {
        Self::build_with(graph, skipped, &BTreeSet::new())
    }

    /// As [`DetachPlan::build`] for a graph of the upper part of the archive
    /// ([`OwnershipGraph::build_upper`]): `pod_owners` are its objects that own a restored pod
    /// outside it.
    #[must_use]
    pub(crate) fn build_with(
        graph: &OwnershipGraph,
        skipped: &BTreeSet<ObjectKey>,
        pod_owners: &BTreeSet<ObjectKey>,
    ) -> Self {
        let is_workload = is_detached_workload;
        let mut detached: BTreeSet<&ObjectKey> = graph
            .keys()
            .filter(|k| is_workload(k) && !skipped.contains(k))
            .collect();
        // Custom resources above a restored pod or a detached workload.
        let anchors: Vec<&ObjectKey> = graph
            .keys()
            .filter(|k| !skipped.contains(k) && (k.is("", "pods") || detached.contains(k)))
            .collect();
        let candidates = anchors
            .into_iter()
            .flat_map(|anchor| graph.ancestors(anchor))
            .chain(pod_owners.iter().flat_map(|owner| {
                let mut above = graph.ancestors(owner);
                above.extend(graph.record(owner).map(|r| &r.key));
                above
            }));
        for ancestor in candidates {
            if !is_builtin_group(&ancestor.group) && !skipped.contains(ancestor) {
                detached.insert(ancestor);
            }
        }
        let mut by_height: BTreeMap<usize, Vec<ObjectKey>> = BTreeMap::new();
        for key in detached {
            by_height
                .entry(graph.height(key).unwrap_or(0))
                .or_default()
                .push(key.clone());
        }
        let levels = by_height
            .into_iter()
            .rev()
            .map(|(height, objects)| DetachLevel { height, objects })
            .collect();
        Self { levels }
    }

    /// Every object, in deletion order.
    pub(crate) fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.levels.iter().flat_map(|l| l.objects.iter())
    }

    #[cfg(test)]
    /// Whether `key` is detached.
    #[must_use]
    pub(crate) fn contains(&self, key: &ObjectKey) -> bool {
        self.levels.iter().any(|l| l.objects.binary_search(key).is_ok())
    }
}
