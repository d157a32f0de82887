//! What a user's resource type name means on one server.
//!
//! # Rules (those of kubectl's shortcut expander and discovery REST mapper)
//!
//! 1. Surrounding whitespace is ignored and matching is case-insensitive (`Deployment`, `DEPLOY`).
//! 2. A name with two or more dots is first read as `resource.version.group`
//!    (`deployments.v1.apps`): the version must serve the type.
//! 3. Otherwise, or when that finds nothing, a name with a dot is read as `resource.group`,
//!    split at the **first** dot (`events.events.k8s.io` is `events` in group `events.k8s.io`).
//!    The group must match exactly.
//! 4. A name without a dot may be in any group.
//! 5. Within the allowed groups, the resource part is compared with, in this order: plural
//!    names, singular names, kinds, short names. The first of these tiers with a match wins, so a
//!    plural name is never shadowed by another type's short name.
//! 6. When several types of different groups match in the winning tier, the **earliest in the
//!    surface's priority order** wins: the core group, then the groups in the server's `/apis`
//!    order (group priority: built-in groups before CRD and aggregated groups). `events` is
//!    therefore core `events`, and `pods` is core `pods`, not `pods.metrics.k8s.io`. The other
//!    matches are reported in [`Resolution::also_matched`] so a caller can warn.
//!
//! A name the server does not serve is an error naming the input and suggesting close served names,
//! never a silent no-op. Wildcards (`*`) and subresources (`pods/log`) are rejected with a reason.

use super::{ApiSurface, GroupResource, ServedResource, same_objects_as};
use std::collections::BTreeSet;
use std::fmt;

/// How many close names an unknown-name error suggests at most.
const MAX_SUGGESTIONS: usize = 4;

/// Which name of the type the input matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum MatchKind {
    /// The plural resource name, e.g. `deployments`.
    Plural,
    /// The singular name, e.g. `deployment`.
    Singular,
    /// The kind, case-insensitively, e.g. `Deployment`.
    Kind,
    /// A short name, e.g. `deploy`.
    ShortName,
}

const TIERS: [MatchKind; 4] = [
    MatchKind::Plural,
    MatchKind::Singular,
    MatchKind::Kind,
    MatchKind::ShortName,
];

/// A user's name resolved to the served type it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolution<'a> {
    /// The input, trimmed.
    pub input: String,
    /// The type the input means.
    pub resource: &'a ServedResource,
    /// Which of the type's names matched.
    pub matched_by: MatchKind,
    /// Other types the same input matched equally well (same tier, later in priority order).
    pub also_matched: Vec<GroupResource>,
}

/// Why a name does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The name is empty or blank.
    #[error("an empty string is not a resource type name")]
    Empty,
    /// The name contains `*` or `?`.
    #[error(
        "`{input}`: wildcards are not accepted in resource type names; a pattern silently grows \
         with every API the cluster gains, so list each type by name \
         (see `kubectl api-resources --namespaced`)"
    )]
    Wildcard {
        /// The input as given.
        input: String,
    },
    /// The name is a subresource such as `pods/log`.
    #[error("`{input}` is a subresource; only whole resource types can be selected, such as `{parent}`")]
    Subresource {
        /// The input as given.
        input: String,
        /// The part before the slash.
        parent: String,
    },
    /// The name points into a group whose discovery failed.
    #[error(
        "`{input}`: discovery of API group `{group}` failed ({message}), so it cannot be told whether \
         the server serves this type; retry when the group's API server is available"
    )]
    GroupUnavailable {
        /// The input as given.
        input: String,
        /// The group whose discovery failed.
        group: String,
        /// The discovery failure.
        message: String,
    },
    /// Nothing the server serves has this name.
    #[error("the server does not serve a resource type named `{input}`{}", Hint { suggestions, unavailable_groups })]
    Unknown {
        /// The input as given.
        input: String,
        /// Close served names, best first, in `resource.group` spelling.
        suggestions: Vec<String>,
        /// Groups whose discovery failed; the type might be served there.
        unavailable_groups: Vec<String>,
    },
    /// The name resolves, but to a cluster-scoped type where only namespaced types are allowed.
    #[error(
        "`{input}` is `{resource}`, which is cluster-scoped; only namespaced resource types can be \
         excluded (cluster-scoped objects enter a backup only as dependencies of namespaced ones)"
    )]
    NotNamespaced {
        /// The input as given.
        input: String,
        /// What it resolved to.
        resource: GroupResource,
    },
}

/// The tail of an [`ResolveError::Unknown`] message.
struct Hint<'a> {
    suggestions: &'a [String],
    unavailable_groups: &'a [String],
}

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.suggestions {
            [] => f.write_str("; `kubectl api-resources` lists the served types")?,
            [one] => write!(f, "; did you mean `{one}`?")?,
            many => {
                let quoted: Vec<String> = many.iter().map(|s| format!("`{s}`")).collect();
                write!(f, "; did you mean one of {}?", quoted.join(", "))?;
            }
        }
        if !self.unavailable_groups.is_empty() {
            write!(
                f,
                " (discovery of {} failed, the type may be served there)",
                self.unavailable_groups.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Several names failed to resolve; every failure is reported, not only the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} resource type name(s) could not be used: {}", errors.len(), Joined(errors))]
pub struct InvalidResourceNames {
    /// One error per bad name, in input order.
    pub errors: Vec<ResolveError>,
}

struct Joined<'a>(&'a [ResolveError]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Resolved exclusions: the group-resources a backup skips, with every [cohabiting](super::COHABITING)
/// alias of each, and the user's spelling of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExcludedResources {
    group_resources: BTreeSet<GroupResource>,
    inputs: Vec<(String, GroupResource)>,
}

impl ExcludedResources {
    /// Nothing excluded.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether objects of `gr` are excluded (also when excluded under another group's name for
    /// the same objects).
    #[must_use]
    pub(crate) fn contains(&self, gr: &GroupResource) -> bool {
        self.group_resources.contains(gr)
    }

    /// Every excluded group-resource, aliases included, sorted.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &GroupResource> {
        self.group_resources.iter()
    }

    #[cfg(test)]
    /// Each input name with the type it resolved to, in input order (for reports).
    #[must_use]
    pub(crate) fn inputs(&self) -> &[(String, GroupResource)] {
        &self.inputs
    }
}

/// One reading of the input: which groups and versions the resource part may come from.
#[derive(Debug, Clone, Copy)]
struct Query<'s> {
    name: &'s str,
    version: Option<&'s str>,
    group: Option<&'s str>,
}

impl Query<'_> {
    fn admits(&self, r: &ServedResource) -> bool {
        self.group.is_none_or(|g| g == r.group_resource.group())
            && self.version.is_none_or(|v| r.versions.iter().any(|rv| rv == v))
    }

    fn matches(&self, r: &ServedResource, tier: MatchKind) -> bool {
        match tier {
            MatchKind::Plural => r.group_resource.resource() == self.name,
            MatchKind::Singular => r.singular.eq_ignore_ascii_case(self.name),
            MatchKind::Kind => r.kind.eq_ignore_ascii_case(self.name),
            MatchKind::ShortName => r.short_names.iter().any(|s| s.eq_ignore_ascii_case(self.name)),
        }
    }
}

/// The readings of a lowercased, wildcard-free name, most specific first.
fn readings(name: &str) -> Vec<Query<'_>> {
    let mut out = Vec::with_capacity(2);
    let mut parts = name.splitn(3, '.');
    let (first, second, rest) = (parts.next(), parts.next(), parts.next());
    if let (Some(resource), Some(version), Some(group)) = (first, second, rest) {
        out.push(Query {
            name: resource,
            version: Some(version),
            group: Some(group),
        });
    }
    match name.split_once('.') {
        Some((resource, group)) => out.push(Query {
            name: resource,
            version: None,
            group: Some(group),
        }),
        None => out.push(Query {
            name,
            version: None,
            group: None,
        }),
    }
    out
}

impl ApiSurface {
    /// Resolves a user's resource type name; see the [module docs](self) for the rules.
    ///
    /// # Errors
    /// [`ResolveError::Empty`], [`Wildcard`](ResolveError::Wildcard),
    /// [`Subresource`](ResolveError::Subresource), [`GroupUnavailable`](ResolveError::GroupUnavailable)
    /// when the name's group failed discovery, and [`Unknown`](ResolveError::Unknown) with
    /// suggestions when nothing served matches.
    pub(crate) fn resolve(&self, input: &str) -> Result<Resolution<'_>, ResolveError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ResolveError::Empty);
        }
        if trimmed.contains(['*', '?']) {
            return Err(ResolveError::Wildcard {
                input: trimmed.to_owned(),
            });
        }
        if let Some((parent, _)) = trimmed.split_once('/') {
            return Err(ResolveError::Subresource {
                input: trimmed.to_owned(),
                parent: parent.to_owned(),
            });
        }
        let lowered = trimmed.to_ascii_lowercase();
        let queries = readings(&lowered);
        for query in &queries {
            for tier in TIERS {
                let mut hits = self
                    .resources()
                    .iter()
                    .filter(|r| query.admits(r) && query.matches(r, tier));
                if let Some(first) = hits.next() {
                    return Ok(Resolution {
                        input: trimmed.to_owned(),
                        resource: first,
                        matched_by: tier,
                        also_matched: hits.map(|r| r.group_resource.clone()).collect(),
                    });
                }
            }
        }
        // Nothing matched. If the name names a group whose discovery failed, say so.
        for query in &queries {
            if let Some(group) = query.group
                && let Some(w) = self.warnings().iter().find(|w| w.group == group)
            {
                return Err(ResolveError::GroupUnavailable {
                    input: trimmed.to_owned(),
                    group: group.to_owned(),
                    message: w.message.clone(),
                });
            }
        }
        let mut unavailable_groups: Vec<String> = self.warnings().iter().map(|w| w.group.clone()).collect();
        unavailable_groups.dedup();
        Err(ResolveError::Unknown {
            input: trimmed.to_owned(),
            suggestions: self.suggestions(&lowered),
            unavailable_groups,
        })
    }

    /// Resolves the names of namespaced types to exclude from a backup
    /// (`excludedNamespaceScopedResources`), each with its [cohabiting](super::COHABITING) aliases.
    ///
    /// # Errors
    /// Every name that does not [`resolve`](Self::resolve), and every name of a cluster-scoped
    /// type ([`ResolveError::NotNamespaced`]), all reported together.
    pub fn resolve_exclusions<I>(&self, names: I) -> Result<ExcludedResources, InvalidResourceNames>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut excluded = ExcludedResources::default();
        let mut errors = Vec::new();
        for name in names {
            match self.resolve(name.as_ref()) {
                Ok(res) if !res.resource.namespaced => errors.push(ResolveError::NotNamespaced {
                    input: res.input,
                    resource: res.resource.group_resource.clone(),
                }),
                Ok(res) => {
                    let gr = res.resource.group_resource.clone();
                    excluded.group_resources.extend(same_objects_as(&gr));
                    excluded.inputs.push((res.input, gr));
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(excluded)
        } else {
            Err(InvalidResourceNames { errors })
        }
    }

    /// Served names close to `lowered` (edit distance), as `resource.group`, best first.
    fn suggestions(&self, lowered: &str) -> Vec<String> {
        let resource_part = lowered.split_once('.').map_or(lowered, |(r, _)| r);
        let mut scored: Vec<(usize, usize)> = Vec::new();
        for (index, r) in self.resources().iter().enumerate() {
            let full = r.group_resource.to_string();
            let kind = r.kind.to_ascii_lowercase();
            let names = [r.group_resource.resource(), r.singular.as_str(), kind.as_str()]
                .into_iter()
                .chain(r.short_names.iter().map(String::as_str));
            let mut best = distance_within(lowered, &full);
            for name in names {
                for candidate in [lowered, resource_part] {
                    best = best.min(distance_within(candidate, name));
                }
            }
            if best != usize::MAX {
                scored.push((best, index));
            }
        }
        scored.sort_unstable();
        let mut out: Vec<String> = Vec::new();
        for (_, index) in scored {
            let name = self.resources()[index].group_resource.to_string();
            if !out.contains(&name) {
                out.push(name);
            }
            if out.len() == MAX_SUGGESTIONS {
                break;
            }
        }
        out
    }
}

/// The edit distance between `a` and `b` when it is small enough to be a plausible typo for a
/// word of `b`'s length, otherwise `usize::MAX`.
fn distance_within(a: &str, b: &str) -> usize {
    let allowed = match b.len() {
        0..=2 => 0,
        3..=5 => 1,
        6..=10 => 2,
        _ => 3,
    };
    if a.len().abs_diff(b.len()) > allowed {
        return usize::MAX;
    }
    let d = levenshtein(a, b);
    if d <= allowed { d } else { usize::MAX }
}

/// Levenshtein distance over bytes (resource names are ASCII).
fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{KUBE_V1_35_JSON, kube_v1_35};
    use super::super::{DiscoveryDocument, DiscoveryWarning, well_known};
    use super::*;
    use proptest::prelude::*;

    fn resolved(s: &ApiSurface, input: &str) -> String {
        match s.resolve(input) {
            Ok(r) => r.resource.group_resource.to_string(),
            Err(e) => panic!("`{input}` did not resolve: {e}"),
        }
    }

    #[test]
    fn every_documented_form_resolves() {
        let s = kube_v1_35();
        for (input, expected) in [
            ("events", "events"),
            ("events.events.k8s.io", "events.events.k8s.io"),
            ("event.events.k8s.io", "events.events.k8s.io"),
            ("Event.events.k8s.io", "events.events.k8s.io"),
            ("endpoints", "endpoints"),
            (
                "endpointslices.discovery.k8s.io",
                "endpointslices.discovery.k8s.io",
            ),
            ("endpointslice", "endpointslices.discovery.k8s.io"),
            ("deploy", "deployments.apps"),
            ("svc", "services"),
            ("cm", "configmaps"),
            ("pvc", "persistentvolumeclaims"),
            ("deployment", "deployments.apps"),
            ("deployments", "deployments.apps"),
            ("Deployment", "deployments.apps"),
            ("deployments.apps", "deployments.apps"),
            ("deployments.v1.apps", "deployments.apps"),
            ("deploy.apps", "deployments.apps"),
            ("Deployment.apps", "deployments.apps"),
            ("hpa", "horizontalpodautoscalers.autoscaling"),
            (
                "horizontalpodautoscalers.v1.autoscaling",
                "horizontalpodautoscalers.autoscaling",
            ),
            ("cronjob", "cronjobs.batch"),
            ("crd", "customresourcedefinitions.apiextensions.k8s.io"),
            ("certs", "certificates.cert-manager.io"),
            ("Certificate", "certificates.cert-manager.io"),
            (
                "alertmanagerconfigs.v1alpha1.monitoring.coreos.com",
                "alertmanagerconfigs.monitoring.coreos.com",
            ),
            ("  cm  ", "configmaps"),
        ] {
            assert_eq!(resolved(&s, input), expected, "input `{input}`");
        }
    }

    #[test]
    fn match_kind_is_reported() {
        let s = kube_v1_35();
        let kind = |i: &str| s.resolve(i).map(|r| r.matched_by).ok();
        assert_eq!(kind("deployments"), Some(MatchKind::Plural));
        assert_eq!(kind("deployment"), Some(MatchKind::Singular));
        assert_eq!(kind("deploy"), Some(MatchKind::ShortName));
        // Kind differs from the singular only in case here, so the singular tier wins.
        assert_eq!(kind("Deployment"), Some(MatchKind::Singular));
    }

    #[test]
    fn ambiguous_bare_name_prefers_core_then_server_order() {
        let s = kube_v1_35();
        let events = s.resolve("events").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.resource.group_resource, well_known::EVENTS);
        assert_eq!(events.also_matched, [well_known::EVENTS_EVENTS_K8S_IO]);
        assert_eq!(resolved(&s, "ev"), "events");
        assert_eq!(resolved(&s, "pods"), "pods");
        assert_eq!(resolved(&s, "pods.metrics.k8s.io"), "pods.metrics.k8s.io");
        assert_eq!(resolved(&s, "nodes"), "nodes");
    }

    #[test]
    fn ambiguity_between_two_non_core_groups_follows_server_order() {
        let json = r#"{
          "coreVersions": {"versions": ["v1"]},
          "groups": {"groups": [
            {"name": "b.example.com", "versions": [{"groupVersion": "b.example.com/v1", "version": "v1"}]},
            {"name": "a.example.com", "versions": [{"groupVersion": "a.example.com/v1", "version": "v1"}]}
          ]},
          "resourceLists": [
            {"groupVersion": "v1", "resources": []},
            {"groupVersion": "a.example.com/v1", "resources": [
              {"name": "widgets", "singularName": "widget", "namespaced": true, "kind": "Widget", "verbs": ["get"], "shortNames": ["w"]}]},
            {"groupVersion": "b.example.com/v1", "resources": [
              {"name": "widgets", "singularName": "widget", "namespaced": true, "kind": "Widget", "verbs": ["get"]},
              {"name": "w", "singularName": "w", "namespaced": true, "kind": "W", "verbs": ["get"]}]}
          ]}"#;
        let s = ApiSurface::from_json(json).unwrap_or_else(|e| panic!("{e}"));
        let r = s.resolve("widgets").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.resource.group_resource.group(),
            "b.example.com",
            "server order, not alphabetical"
        );
        assert_eq!(r.also_matched, [GroupResource::new("a.example.com", "widgets")]);
        assert_eq!(resolved(&s, "widgets.a.example.com"), "widgets.a.example.com");
        // A plural beats another type's short name, whatever the group order.
        assert_eq!(resolved(&s, "w"), "w.b.example.com");
        assert_eq!(resolved(&s, "w.a.example.com"), "widgets.a.example.com");
    }

    #[test]
    fn plural_beats_short_name() {
        let json = r#"{
          "coreVersions": {"versions": ["v1"]},
          "groups": {"groups": [
            {"name": "x.example.com", "versions": [{"groupVersion": "x.example.com/v1", "version": "v1"}]}]},
          "resourceLists": [
            {"groupVersion": "v1", "resources": [
              {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap", "verbs": ["get"], "shortNames": ["cm"]}]},
            {"groupVersion": "x.example.com/v1", "resources": [
              {"name": "cm", "singularName": "cm", "namespaced": true, "kind": "Cm", "verbs": ["get"]}]}
          ]}"#;
        let s = ApiSurface::from_json(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resolved(&s, "cm"), "cm.x.example.com");
        assert_eq!(resolved(&s, "configmap"), "configmaps");
    }

    #[test]
    fn version_must_serve_the_type() {
        let s = kube_v1_35();
        let err = s.resolve("deployments.v1beta1.apps").err();
        assert!(matches!(err, Some(ResolveError::Unknown { .. })), "{err:?}");
        // alertmanagerconfigs is only in v1alpha1, not in the preferred v1.
        assert!(s.resolve("alertmanagerconfigs.v1.monitoring.coreos.com").is_err());
    }

    #[test]
    fn unknown_name_suggests_close_matches() {
        let s = kube_v1_35();
        for (input, suggestion) in [
            ("deploymnts", "deployments.apps"),
            ("deploymnts.apps", "deployments.apps"),
            ("statefulsetz", "statefulsets.apps"),
            ("confgmaps", "configmaps"),
            ("networkpolicys", "networkpolicies.networking.k8s.io"),
            (
                "endpointslices.discovery.k8s.i",
                "endpointslices.discovery.k8s.io",
            ),
            ("evnts.events.k8s.io", "events.events.k8s.io"),
            ("pvcs", "persistentvolumeclaims"),
        ] {
            match s.resolve(input) {
                Err(ResolveError::Unknown {
                    input: got,
                    suggestions,
                    ..
                }) => {
                    assert_eq!(got, input);
                    assert!(
                        suggestions.iter().any(|x| x == suggestion),
                        "`{input}`: {suggestions:?} lacks {suggestion}"
                    );
                }
                other => panic!("`{input}`: expected Unknown, got {other:?}"),
            }
        }
        let err = s
            .resolve("deploymnts")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("`deploymnts`") && err.contains("did you mean `deployments.apps`?"),
            "{err}"
        );
    }

    #[test]
    fn unknown_name_without_anything_close_points_at_api_resources() {
        let s = kube_v1_35();
        match s.resolve("frobnicators") {
            Err(e @ ResolveError::Unknown { .. }) => {
                let ResolveError::Unknown { suggestions, .. } = &e else {
                    unreachable!()
                };
                assert!(suggestions.is_empty());
                assert!(e.to_string().contains("kubectl api-resources"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cluster_scoped_plural_is_not_a_group() {
        // `nodes.apps` is not `nodes`: the group must match.
        let s = kube_v1_35();
        assert!(matches!(
            s.resolve("nodes.apps"),
            Err(ResolveError::Unknown { .. })
        ));
    }

    #[test]
    fn wildcards_empty_and_subresources_are_rejected() {
        let s = kube_v1_35();
        for input in ["*", "*.apps", "deploy*", "pod?"] {
            match s.resolve(input) {
                Err(e @ ResolveError::Wildcard { .. }) => assert!(e.to_string().contains("wildcards")),
                other => panic!("`{input}`: {other:?}"),
            }
        }
        assert_eq!(s.resolve("  ").err(), Some(ResolveError::Empty));
        assert!(matches!(
            s.resolve("pods/log"),
            Err(ResolveError::Subresource { parent, .. }) if parent == "pods"
        ));
    }

    #[test]
    fn failed_group_is_named_in_the_error() {
        let mut doc: DiscoveryDocument =
            serde_json::from_str(KUBE_V1_35_JSON).unwrap_or_else(|e| panic!("{e}"));
        doc.resource_lists
            .retain(|l| !l.group_version.starts_with("cert-manager.io/"));
        doc.failures.push(DiscoveryWarning {
            group: "cert-manager.io".into(),
            version: "v1".into(),
            message: "conversion webhook unavailable".into(),
        });
        let s = ApiSurface::from_document(&doc);
        assert!(matches!(
            s.resolve("certificates.cert-manager.io"),
            Err(ResolveError::GroupUnavailable { group, .. }) if group == "cert-manager.io"
        ));
        match s.resolve("certs") {
            Err(e @ ResolveError::Unknown { .. }) => {
                assert!(e.to_string().contains("cert-manager.io"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exclusions_report_every_bad_name() {
        let s = kube_v1_35();
        let err = s
            .resolve_exclusions(["events", "*", "deploymnts", "nodes", "pv"])
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert_eq!(err.errors.len(), 4, "{err}");
        assert!(matches!(&err.errors[0], ResolveError::Wildcard { .. }));
        assert!(matches!(&err.errors[1], ResolveError::Unknown { .. }));
        assert!(matches!(&err.errors[2], ResolveError::NotNamespaced { .. }));
        assert!(err.to_string().starts_with("4 resource type name(s)"), "{err}");
    }

    #[test]
    fn exclusions_remember_inputs() {
        let s = kube_v1_35();
        let ex = s
            .resolve_exclusions(["deploy", "ev"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ex.inputs()[0], ("deploy".to_owned(), well_known::DEPLOYMENTS));
        assert_eq!(
            ex.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "events",
                "deployments.apps",
                "events.events.k8s.io",
                "deployments.extensions"
            ]
        );
    }

    #[test]
    fn every_served_type_resolves_by_its_full_name() {
        let s = kube_v1_35();
        for r in s.resources() {
            let full = r.group_resource.to_string();
            assert_eq!(resolved(&s, &full), full);
            if !r.group_resource.is_core() {
                let versioned = format!(
                    "{}.{}.{}",
                    r.group_resource.resource(),
                    r.version,
                    r.group_resource.group()
                );
                assert_eq!(resolved(&s, &versioned), full);
            }
        }
    }

    #[test]
    fn levenshtein_basics() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("pods", "pods"), 0);
    }

    fn random_case(s: &str, mask: &[bool]) -> String {
        s.chars()
            .zip(mask.iter().cycle())
            .map(|(c, &up)| {
                if up {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn resolution_ignores_case(index in 0usize..200, mask in proptest::collection::vec(any::<bool>(), 1..16)) {
            let s = kube_v1_35();
            let r = &s.resources()[index % s.resources().len()];
            for name in [r.kind.clone(), r.group_resource.to_string()] {
                let expected = s.resolve(&name).map(|x| x.resource.group_resource.clone());
                let got = s.resolve(&random_case(&name, &mask)).map(|x| x.resource.group_resource.clone());
                prop_assert_eq!(got, expected);
            }
        }

        #[test]
        fn resolving_a_kind_gives_a_type_of_that_kind(index in 0usize..200) {
            let s = kube_v1_35();
            let r = &s.resources()[index % s.resources().len()];
            let got = s.resolve(&r.kind).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(got.resource.kind.eq_ignore_ascii_case(&r.kind) || got.resource.singular.eq_ignore_ascii_case(&r.kind));
        }
    }
}
