//! [`TeardownPlan`]: what rollback removes from the control plane, and in which order.

use std::collections::{BTreeMap, BTreeSet};

use super::{Phase, PlanError};
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::OwnershipGraph;

/// The steps of a [`TeardownPlan`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TeardownStep {
    /// Owners, highest first, so no controller re-creates a child already removed.
    Owners,
    /// Pods. The engine removes the Kosmos mark from each member pod first, so deleting the
    /// control-plane twin cannot reach the member pod.
    Pods,
    /// Everything else promote created, cluster-scoped objects included.
    Rest,
    /// Namespaces, once empty of what promote put there.
    Namespaces,
    /// CRDs promote created; never one that existed before.
    CustomResourceDefinitions,
}

impl TeardownStep {
    /// Every step, in order.
    pub(crate) const ALL: [Self; 5] = [
        Self::Owners,
        Self::Pods,
        Self::Rest,
        Self::Namespaces,
        Self::CustomResourceDefinitions,
    ];

    /// The step that removes `key`, of ownership `height`.
    #[must_use]
    pub(crate) fn of(key: &ObjectKey, height: usize) -> Self {
        match Phase::of(key) {
            Phase::CustomResourceDefinitions => Self::CustomResourceDefinitions,
            Phase::Namespaces => Self::Namespaces,
            Phase::Objects if key.is("", "pods") => Self::Pods,
            Phase::Objects | Phase::AdmissionPolicies if height > 0 => Self::Owners,
            Phase::Objects | Phase::AdmissionPolicies => Self::Rest,
        }
    }
}

/// One level of a [`TeardownPlan`]: objects deletable concurrently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TeardownLevel {
    /// The step.
    pub step: TeardownStep,
    /// For [`TeardownStep::Owners`], the height of every object in the level; otherwise 0.
    pub height: usize,
    /// The objects, in key order.
    pub objects: Vec<ObjectKey>,
}

/// The order rollback removes from the control plane what promote created there: owners
/// top-down, then pods, then the rest, then namespaces, then CRDs. Only the objects the caller
/// names as created by promote are in it: an object that existed before promote — a shared
/// ClusterRole, a CRD — is never removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TeardownPlan {
    /// Levels, first to delete first.
    pub levels: Vec<TeardownLevel>,
}

impl TeardownPlan {
    /// The teardown of `created`, ordered by `graph`.
    ///
    /// # Errors
    /// [`PlanError::UnknownObject`] when a key of `created` is not in `graph`.
    pub(crate) fn build(graph: &OwnershipGraph, created: &BTreeSet<ObjectKey>) -> Result<Self, PlanError> {
        let mut grouped: BTreeMap<(TeardownStep, std::cmp::Reverse<usize>), Vec<ObjectKey>> = BTreeMap::new();
        for key in created {
            let height = graph
                .height(key)
                .ok_or_else(|| PlanError::UnknownObject(key.clone()))?;
            let step = TeardownStep::of(key, height);
            let height = if step == TeardownStep::Owners { height } else { 0 };
            grouped
                .entry((step, std::cmp::Reverse(height)))
                .or_default()
                .push(key.clone());
        }
        let levels = grouped
            .into_iter()
            .map(|((step, std::cmp::Reverse(height)), objects)| TeardownLevel {
                step,
                height,
                objects,
            })
            .collect();
        Ok(Self { levels })
    }

    #[cfg(test)]
    /// Every object, in deletion order.
    pub(crate) fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.levels.iter().flat_map(|l| l.objects.iter())
    }
}
