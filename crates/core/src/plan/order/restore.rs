//! [`RestorePlan`]: the levels promote creates in (and rollback re-creates in), bottom-up. See
//! the [order module docs](super) for the rules.

use std::collections::{BTreeMap, BTreeSet};

use super::{Phase, PlanError, RESTORE_ORDER, Tier};
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::OwnershipGraph;

/// A condition the engine waits for after creating a level, before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WaitPoint {
    /// Every CRD of the level reports condition `Established=True`: until then its instances
    /// are rejected.
    CrdsEstablished,
    /// The `default` ServiceAccount exists in every namespace of the level. The target's
    /// ServiceAccount controller creates it shortly after the namespace; pods using it are
    /// rejected by admission until then, and the `default` ServiceAccount merge needs it.
    DefaultServiceAccounts,
}

/// Objects that can be created concurrently. See the [order module docs](super).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// The phase of every object in the level.
    pub phase: Phase,
    /// The ownership height of every object in the level.
    pub height: usize,
    /// The tier of every object in the level.
    pub tier: Tier,
    /// The objects, in key order.
    pub objects: Vec<ObjectKey>,
    /// What to wait for before the next level.
    pub wait_after: Option<WaitPoint>,
}

impl Level {
    /// Why the level comes where it does: its height, its tier, and each kind's own reason.
    #[must_use]
    pub fn reason(&self) -> String {
        let height = if self.height == 0 {
            "height 0 (owns nothing in the set)".to_owned()
        } else {
            format!("height {} (owns objects created in earlier levels)", self.height)
        };
        let kinds: BTreeSet<String> = self
            .objects
            .iter()
            .map(|k| k.group_resource().to_string())
            .collect();
        let per_kind: Vec<String> = kinds
            .iter()
            .filter_map(|gr| {
                RESTORE_ORDER
                    .iter()
                    .find(|k| k.group_resource() == *gr)
                    .map(|k| format!("{gr}: {}", k.reason))
            })
            .collect();
        let mut text = format!("{height}; {}", self.tier.reason());
        if !per_kind.is_empty() {
            text.push_str(" [");
            text.push_str(&per_kind.join("; "));
            text.push(']');
        }
        text
    }
}

/// The order to create objects in. See the [order module docs](super).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestorePlan {
    /// Levels, first to last.
    pub levels: Vec<Level>,
}

impl RestorePlan {
    /// The plan for every object of `graph`.
    #[must_use]
    pub(crate) fn build(graph: &OwnershipGraph) -> Self {
        Self::levels_of(graph, graph.keys())
    }

    /// The plan for `keys` only, ordered by their heights in the whole `graph`. Rollback uses
    /// it to re-create in the member just the owners detach deleted.
    ///
    /// # Errors
    /// [`PlanError::UnknownObject`] when a key is not in `graph`.
    pub(crate) fn build_for<'a>(
        graph: &OwnershipGraph,
        keys: impl IntoIterator<Item = &'a ObjectKey>,
    ) -> Result<Self, PlanError> {
        let keys: BTreeSet<&ObjectKey> = keys.into_iter().collect();
        if let Some(unknown) = keys.iter().find(|k| !graph.contains(k)) {
            return Err(PlanError::UnknownObject((*unknown).clone()));
        }
        Ok(Self::levels_of(graph, keys.into_iter()))
    }

    fn levels_of<'a>(graph: &OwnershipGraph, keys: impl Iterator<Item = &'a ObjectKey>) -> Self {
        let mut grouped: BTreeMap<(Phase, usize, Tier), Vec<ObjectKey>> = BTreeMap::new();
        for key in keys {
            let height = graph.height(key).unwrap_or(0);
            grouped
                .entry((Phase::of(key), height, Tier::of(key)))
                .or_default()
                .push(key.clone());
        }
        let mut levels: Vec<Level> = grouped
            .into_iter()
            .map(|((phase, height, tier), mut objects)| {
                objects.sort();
                Level {
                    phase,
                    height,
                    tier,
                    objects,
                    wait_after: None,
                }
            })
            .collect();
        // A wait point sits on the last level of its phase.
        for (phase, wait) in [
            (Phase::CustomResourceDefinitions, WaitPoint::CrdsEstablished),
            (Phase::Namespaces, WaitPoint::DefaultServiceAccounts),
        ] {
            if let Some(last) = levels.iter_mut().rev().find(|l| l.phase == phase) {
                last.wait_after = Some(wait);
            }
        }
        Self { levels }
    }

    /// Every object, in plan order.
    pub(crate) fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.levels.iter().flat_map(|l| l.objects.iter())
    }

    #[cfg(test)]
    /// Number of objects.
    #[must_use]
    pub(crate) fn len(&self) -> usize {
        self.levels.iter().map(|l| l.objects.len()).sum()
    }

    #[cfg(test)]
    /// The index of the level holding `key`.
    #[must_use]
    pub(crate) fn level_of(&self, key: &ObjectKey) -> Option<usize> {
        self.levels
            .iter()
            .position(|l| l.objects.binary_search(key).is_ok())
    }
}
