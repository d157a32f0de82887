//! Which RBAC grants a promotion would carry into the control plane with more reach than they
//! had. A ClusterRoleBinding travels with the namespaces whose service accounts it binds
//! ([`crate::backup::dependencies::binding_subject_in`]); re-created in the control plane it
//! grants its role *there*, cluster-wide. A member admin who bound `cluster-admin` to a
//! promoted ServiceAccount would so become cluster-admin of the Kosmos control plane. Precheck
//! names every such binding and refuses it unless the policy lists it in
//! `allowEscalatingBindings`.
//!
//! Pure: reads the binding and role objects it is given, no client.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::backup::dependencies::{SERVICE_ACCOUNT_USER_PREFIX, SERVICE_ACCOUNTS_GROUP_PREFIX};

/// The ClusterRole that grants everything.
pub(crate) const CLUSTER_ADMIN: &str = "cluster-admin";

/// Verbs that let a subject grant itself more: create bindings to any role (`bind`), roles with
/// any rule (`escalate`), or act as anyone (`impersonate`).
const SELF_GRANTING_VERBS: [&str; 3] = ["bind", "escalate", "impersonate"];
/// Verbs that read an object's content.
const READ_VERBS: [&str; 4] = ["get", "list", "watch", "*"];

/// Why `role` (a ClusterRole object named `name`), bound cluster-wide, could escalate: one
/// sentence fragment per finding, empty when it cannot.
#[must_use]
pub(crate) fn role_escalations(name: &str, role: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if name == CLUSTER_ADMIN {
        out.push("is cluster-admin".to_owned());
    }
    if role.get("aggregationRule").is_some_and(|a| !a.is_null()) {
        out.push(
            "aggregates other roles, so its rules are whatever the control plane's roles matching its selectors \
             grant"
                .to_owned(),
        );
    }
    let rules = role
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let (verbs, groups, resources) = (
            strings(rule, "verbs"),
            strings(rule, "apiGroups"),
            strings(rule, "resources"),
        );
        let at = format!("rules[{i}]");
        let any = |xs: &[&str], wanted: &[&str]| xs.iter().any(|x| wanted.contains(x));
        if any(&verbs, &["*"]) || any(&groups, &["*"]) || any(&resources, &["*"]) {
            out.push(format!(
                "{at} uses wildcards (verbs {verbs:?}, apiGroups {groups:?}, resources {resources:?})"
            ));
        }
        for verb in SELF_GRANTING_VERBS {
            if verbs.contains(&verb) {
                out.push(format!("{at} grants {verb}"));
            }
        }
        let core = groups.is_empty() || any(&groups, &["", "*"]);
        if core && any(&resources, &["secrets", "*"]) && any(&verbs, &READ_VERBS) {
            out.push(format!("{at} reads secrets in every namespace"));
        }
        if core && any(&resources, &["serviceaccounts/token", "*"]) && any(&verbs, &["create", "*"]) {
            out.push(format!("{at} mints tokens of any service account"));
        }
    }
    out.dedup();
    out
}

/// Label prefix that makes the API server add a ClusterRole's rules to every role aggregating
/// that label (`admin`, `edit`, `view`, and any custom aggregated role).
pub(crate) const AGGREGATE_LABEL_PREFIX: &str = "rbac.authorization.k8s.io/aggregate-to-";

/// The aggregation labels `role` carries (set to `"true"`). A ClusterRole that promote creates in
/// the control plane with such a label widens the control plane's aggregated roles for every
/// subject bound to them, whatever binds the role itself — even a RoleBinding.
#[must_use]
pub(crate) fn aggregation_labels(role: &Value) -> Vec<String> {
    role.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter(|(k, v)| k.starts_with(AGGREGATE_LABEL_PREFIX) && v.as_str() == Some("true"))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The subjects of `binding` that are not accounts of `included_namespaces`: re-created in the
/// control plane, the binding would grant its role to them too, though nothing promoted needs it.
#[must_use]
pub(crate) fn foreign_subjects(binding: &Value, included_namespaces: &BTreeSet<String>) -> Vec<String> {
    let subjects = binding
        .get("subjects")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = Vec::new();
    for subject in subjects {
        let (kind, name) = (text(subject, "kind"), text(subject, "name"));
        let namespace = match kind {
            "ServiceAccount" => Some(text(subject, "namespace")),
            "User" => name
                .strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)
                .and_then(|rest| rest.split_once(':'))
                .map(|(ns, _)| ns),
            "Group" => name.strip_prefix(SERVICE_ACCOUNTS_GROUP_PREFIX),
            _ => None,
        };
        if !namespace.is_some_and(|ns| included_namespaces.contains(ns)) {
            out.push(match kind {
                "ServiceAccount" => format!("ServiceAccount {}/{name}", text(subject, "namespace")),
                _ => format!("{kind} {name}"),
            });
        }
    }
    out
}

/// The strings of array field `key` of `value`.
fn strings<'v>(value: &'v Value, key: &str) -> Vec<&'v str> {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// String field `key` of `value`, or `""`.
fn text<'v>(value: &'v Value, key: &str) -> &'v str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(rules: Value) -> Value {
        json!({ "rules": rules })
    }

    #[test]
    fn each_escalating_rule_is_named() {
        let found = role_escalations(
            "r",
            &role(json!([
                { "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"] },
                { "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind", "escalate"] },
                { "apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"] },
                { "apiGroups": [""], "resources": ["secrets"], "verbs": ["list"] },
                { "apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"] },
            ])),
        );
        for needle in [
            "rules[0] uses wildcards",
            "rules[1] grants bind",
            "rules[1] grants escalate",
            "rules[2] grants impersonate",
            "rules[3] reads secrets",
            "rules[4] mints tokens",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(needle)),
                "{needle}: {found:#?}"
            );
        }
        assert_eq!(
            role_escalations(CLUSTER_ADMIN, &role(json!([]))),
            ["is cluster-admin"]
        );
        assert!(
            role_escalations(
                "agg",
                &json!({ "aggregationRule": { "clusterRoleSelectors": [] } })
            )[0]
            .starts_with("aggregates")
        );
    }

    #[test]
    fn an_ordinary_role_does_not_escalate() {
        let reader = role(json!([
            { "apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"] },
            { "apiGroups": ["other.example.io"], "resources": ["secrets"], "verbs": ["get"] },
            { "nonResourceURLs": ["/healthz"], "verbs": ["get"] },
        ]));
        assert_eq!(role_escalations("reader", &reader), Vec::<String>::new());
    }

    #[test]
    fn aggregation_labels_are_found() {
        let role = json!({ "metadata": { "labels": {
            "rbac.authorization.k8s.io/aggregate-to-admin": "true",
            "rbac.authorization.k8s.io/aggregate-to-view": "false",
            "app": "x",
        }}});
        assert_eq!(
            aggregation_labels(&role),
            ["rbac.authorization.k8s.io/aggregate-to-admin"]
        );
        assert!(aggregation_labels(&json!({})).is_empty());
    }

    #[test]
    fn subjects_outside_the_promoted_namespaces_are_foreign() {
        let included: BTreeSet<String> = ["app".to_owned()].into();
        let binding = json!({ "subjects": [
            { "kind": "ServiceAccount", "namespace": "app", "name": "builder" },
            { "kind": "User", "name": "system:serviceaccount:app:x" },
            { "kind": "Group", "name": "system:serviceaccounts:app" },
            { "kind": "ServiceAccount", "namespace": "other", "name": "y" },
            { "kind": "User", "name": "alice" },
            { "kind": "Group", "name": "system:authenticated" },
        ]});
        assert_eq!(
            foreign_subjects(&binding, &included),
            [
                "ServiceAccount other/y",
                "User alice",
                "Group system:authenticated"
            ]
        );
    }
}
