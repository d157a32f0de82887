//! [`TransformContext`]: what [`prepare`](super::prepare) and the ownerReference rewrite know
//! beyond the one object they change.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{SERVICE_ACCOUNT_TOKEN_TYPE, View, service_has_selector, skip_reason, str_at, uid_of};
use kpromote_model::object_key::ObjectKey;

/// What the transform knows beyond the object: a [`UidMap`] of the owners in the target, which
/// changes as the restore creates them, and the [`RestoreFacts`] of the rest of the archive, which
/// do not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransformContext {
    uids: UidMap,
    pub(super) facts: RestoreFacts,
}

/// Archived UIDs against the target: the owners' new UIDs, and the ones still to be created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UidMap {
    /// Old (archived) UID → UID of the same object in the target.
    created: BTreeMap<String, String>,
    /// Archived UIDs of objects the caller will create (or merge) in the target but has not yet.
    pending: BTreeSet<String>,
}

/// What the transform of one object needs to know of other archived objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RestoreFacts {
    /// (namespace, name) of archived Services with a selector: their Endpoints are the
    /// endpoints controller's.
    pub(super) selector_services: BTreeSet<(String, String)>,
    /// (namespace, name) of archived service-account token Secrets.
    pub(super) token_secrets: BTreeSet<(String, String)>,
}

impl TransformContext {
    /// An empty context: no owner exists, none will.
    #[must_use]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The context for promote: every archived object that [`prepare`] will create or merge is
    /// pending; none is created yet.
    ///
    /// # Caveats
    /// For a merged object (the `default` ServiceAccount) the caller records its old UID against
    /// the target's existing object with [`record_created`](Self::record_created).
    #[must_use]
    pub fn for_control_plane<'a>(archive: impl IntoIterator<Item = &'a Value>) -> Self {
        let objects: Vec<&Value> = archive.into_iter().collect();
        let mut ctx = Self::with_archive_facts(&objects);
        for object in &objects {
            if let (Some(uid), Ok(view)) = (uid_of(object), View::read(object))
                && skip_reason(&view, object, false, &ctx).is_none()
            {
                ctx.uids.pending.insert(uid.to_owned());
            }
        }
        ctx
    }

    #[cfg(test)]
    /// The context for rollback in the member: objects in `recreated` (the ones detach deleted)
    /// are pending; every other archived object was never deleted from the member, so it keeps
    /// its UID there and maps to itself.
    #[must_use]
    pub(crate) fn for_member<'a>(
        archive: impl IntoIterator<Item = (&'a ObjectKey, &'a Value)>,
        recreated: &BTreeSet<ObjectKey>,
    ) -> Self {
        let pairs: Vec<(&ObjectKey, &Value)> = archive.into_iter().collect();
        let objects: Vec<&Value> = pairs.iter().map(|(_, v)| *v).collect();
        let uids = pairs.iter().filter_map(|(k, v)| Some((*k, uid_of(v)?)));
        Self::with_archive_facts(&objects).for_member_from(uids, recreated)
    }

    /// [`TransformContext::for_member`] from facts already learned (`self`, see
    /// [`TransformContext::learn`]) and the archived objects' UIDs.
    #[must_use]
    pub(crate) fn for_member_from<'a>(
        &self,
        uids: impl IntoIterator<Item = (&'a ObjectKey, &'a str)>,
        recreated: &BTreeSet<ObjectKey>,
    ) -> Self {
        let mut ctx = self.facts();
        for (key, uid) in uids {
            if recreated.contains(key) {
                ctx.uids.pending.insert(uid.to_owned());
            } else {
                ctx.uids.created.insert(uid.to_owned(), uid.to_owned());
            }
        }
        ctx
    }

    fn with_archive_facts(objects: &[&Value]) -> Self {
        let mut ctx = Self::new();
        for object in objects {
            ctx.learn(object);
        }
        ctx
    }

    /// Learns what the transform of other objects needs to know of archived `object`: whether it
    /// is a Service with a selector or a service-account token Secret. A reader streaming an
    /// archive feeds it the objects [`TransformContext::learns_from`] names.
    pub(crate) fn learn(&mut self, object: &Value) {
        let Ok(view) = View::read(object) else { return };
        let Some(ns) = view.namespace.clone() else {
            return;
        };
        if view.is("", "Service") && service_has_selector(object) {
            self.facts.selector_services.insert((ns, view.name.clone()));
        } else if view.is("", "Secret") && str_at(object, "/type") == Some(SERVICE_ACCOUNT_TOKEN_TYPE) {
            self.facts.token_secrets.insert((ns, view.name.clone()));
        }
    }

    /// Whether an object of `kind` (in `group`) can teach [`TransformContext::learn`] anything:
    /// a streaming reader parses just those.
    #[must_use]
    pub(crate) fn learns_from(group: &str, kind: &str) -> bool {
        group.is_empty() && matches!(kind, "Service" | "Secret")
    }

    /// The archive facts of `self` (what [`TransformContext::learn`] gathered), without any UID.
    #[must_use]
    pub(crate) fn facts(&self) -> Self {
        Self {
            facts: self.facts.clone(),
            ..Self::default()
        }
    }

    /// Marks `old_uid` as pending: the caller will create that object later.
    pub(crate) fn add_pending(&mut self, old_uid: &str) {
        if !self.uids.created.contains_key(old_uid) {
            self.uids.pending.insert(old_uid.to_owned());
        }
    }

    /// Records that the object archived with `old_uid` now exists in the target as `new_uid`:
    /// created, merged into, or found already there (an object that existed before promote is
    /// an owner like any other).
    pub(crate) fn record_created(&mut self, old_uid: &str, new_uid: &str) {
        self.uids.pending.remove(old_uid);
        self.uids.created.insert(old_uid.to_owned(), new_uid.to_owned());
    }

    /// The target UID of the object archived with `old_uid`, once created.
    #[must_use]
    pub(crate) fn new_uid(&self, old_uid: &str) -> Option<&str> {
        self.uids.created.get(old_uid).map(String::as_str)
    }

    /// Whether the object archived with `old_uid` will be created but is not yet.
    #[must_use]
    pub(crate) fn is_pending(&self, old_uid: &str) -> bool {
        self.uids.pending.contains(old_uid)
    }
}
