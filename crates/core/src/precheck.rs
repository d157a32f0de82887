//! Precheck: everything that must hold before promote touches anything. Every failure is
//! collected and reported together — a user fixing a policy should not discover problems one
//! run at a time — and nothing in either cluster is changed.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::resources::{ApiSurface, ExcludedResources, GroupResource, well_known};
use kpromote_model::kosmos;

/// Namespaces never promoted unless the caller overrides the list: moving the system namespaces
/// would move the control plane's own machinery.
pub const DEFAULT_FORBIDDEN_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// What to check.
#[derive(Debug, Clone)]
pub struct PrecheckRequest {
    /// Namespaces to promote.
    pub namespaces: Vec<String>,
    /// Excluded resource names as the user wrote them.
    pub excluded: Vec<String>,
    /// The member's Kosmos cluster name.
    pub cluster_name: String,
    /// Namespaces that may never be promoted.
    pub forbidden_namespaces: Vec<String>,
    /// Namespaces other running promotions hold, with the holder's name.
    pub busy_namespaces: Vec<(String, String)>,
    /// ClusterRoleBindings that may travel although their role escalates (the policy's
    /// `allowEscalatingBindings`); see [`crate::escalation`].
    pub allowed_escalating_bindings: Vec<String>,
}

/// What precheck learned and the later steps reuse.
#[derive(Debug)]
pub struct Prechecked {
    /// What the member serves.
    pub member_surface: ApiSurface,
    /// What the control plane serves.
    pub control_plane_surface: ApiSurface,
    /// The excluded types, resolved.
    pub excluded: ExcludedResources,
}

/// Precheck failed: every reason, each a sentence a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("precheck failed: {}", .errors.join("; "))]
pub struct PrecheckFailed {
    /// One message per failed check.
    pub errors: Vec<String>,
}

/// Runs every check against the member and the control plane.
///
/// # Errors
/// [`PrecheckFailed`] with every failure found; nothing was changed in either cluster.
pub async fn precheck(
    member: &Client,
    control_plane: &Client,
    request: &PrecheckRequest,
) -> Result<Prechecked, PrecheckFailed> {
    let mut errors = Vec::new();
    check_names(request, &mut errors);

    let member_surface = ApiSurface::discover(member).await;
    let cp_surface = ApiSurface::discover(control_plane).await;
    let (member_surface, cp_surface) = match (member_surface, cp_surface) {
        (Ok(m), Ok(c)) => (m, c),
        (m, c) => {
            if let Err(e) = m {
                errors.push(format!("cannot discover the member cluster's APIs: {e}"));
            }
            if let Err(e) = c {
                errors.push(format!("cannot discover the control plane's APIs: {e}"));
            }
            return Err(PrecheckFailed { errors });
        }
    };
    let excluded = match member_surface.resolve_exclusions(&request.excluded) {
        Ok(excluded) => excluded,
        Err(invalid) => {
            errors.extend(
                invalid
                    .errors
                    .iter()
                    .map(|e| format!("excludedNamespaceScopedResources: {e}")),
            );
            ExcludedResources::none()
        }
    };

    let member_ns: Api<Namespace> = Api::all(member.clone());
    let cp_ns: Api<Namespace> = Api::all(control_plane.clone());
    let mut present = Vec::new();
    for ns in valid_namespaces(request) {
        match member_ns.get_opt(ns).await {
            Ok(Some(n)) if n.metadata.deletion_timestamp.is_some() => {
                errors.push(format!("namespace {ns} is being deleted in the member cluster"));
            }
            Ok(Some(_)) => present.push(ns.clone()),
            Ok(None) => errors.push(format!("namespace {ns} does not exist in the member cluster")),
            Err(e) => errors.push(format!("cannot read namespace {ns} in the member cluster: {e}")),
        }
        match cp_ns.get_opt(ns).await {
            Ok(Some(_)) => errors.push(format!(
                "namespace {ns} already exists in the control plane; promote only creates namespaces, so \
                 delete it there or leave it out"
            )),
            Ok(None) => {}
            Err(e) => errors.push(format!("cannot read namespace {ns} in the control plane: {e}")),
        }
    }

    let node = kosmos::virtual_node_name(&request.cluster_name);
    match Api::<Node>::all(control_plane.clone()).get_opt(&node).await {
        Ok(Some(_)) => {}
        Ok(None) => errors.push(format!(
            "the control plane has no virtual node {node}: is member cluster {:?} registered with Kosmos?",
            request.cluster_name
        )),
        Err(e) => errors.push(format!("cannot read node {node} in the control plane: {e}")),
    }

    check_contents(
        member,
        &member_surface,
        &cp_surface,
        &excluded,
        &present,
        &mut errors,
    )
    .await;
    if !excluded.contains(&well_known::CLUSTER_ROLE_BINDINGS) {
        check_bindings(member, control_plane, request, &present, &mut errors).await;
    }
    if !excluded.contains(&well_known::ROLE_BINDINGS) {
        check_role_bindings(member, control_plane, request, &present, &mut errors).await;
    }

    if errors.is_empty() {
        Ok(Prechecked {
            member_surface,
            control_plane_surface: cp_surface,
            excluded,
        })
    } else {
        Err(PrecheckFailed { errors })
    }
}

fn valid_namespaces(request: &PrecheckRequest) -> impl Iterator<Item = &String> {
    request
        .namespaces
        .iter()
        .filter(|ns| is_dns_label(ns) && !request.forbidden_namespaces.contains(ns))
}

fn check_names(request: &PrecheckRequest, errors: &mut Vec<String>) {
    if request.namespaces.is_empty() {
        errors.push("includedNamespaces is empty: name the namespaces to promote".into());
    }
    if request.cluster_name.trim().is_empty() {
        errors.push("clusterName is empty: name the Kosmos member cluster to promote from".into());
    }
    let mut seen = BTreeSet::new();
    for ns in &request.namespaces {
        if ns.contains('*') || ns.contains('?') {
            errors.push(format!(
                "includedNamespaces: {ns:?} is a pattern; list namespaces by name"
            ));
        } else if !is_dns_label(ns) {
            errors.push(format!("includedNamespaces: {ns:?} is not a namespace name"));
        } else if request.forbidden_namespaces.contains(ns) {
            errors.push(format!(
                "namespace {ns} is a system namespace and cannot be promoted"
            ));
        } else if !seen.insert(ns) {
            errors.push(format!("includedNamespaces: {ns} is listed twice"));
        }
        if let Some((_, holder)) = request.busy_namespaces.iter().find(|(busy, _)| busy == ns) {
            errors.push(format!(
                "namespace {ns} is already being promoted by PromotePolicy {holder}"
            ));
        }
    }
    for name in &request.excluded {
        if name.contains('*') {
            errors.push(format!(
                "excludedNamespaceScopedResources: {name:?} is a pattern; list resource types by name"
            ));
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// What is in the namespaces: every type with objects must be restorable in the control plane,
/// and kinds promote cannot move without restarting pods are refused with the reason.
async fn check_contents(
    member: &Client,
    member_surface: &ApiSurface,
    cp_surface: &ApiSurface,
    excluded: &ExcludedResources,
    namespaces: &[String],
    errors: &mut Vec<String>,
) {
    let crd_groups: BTreeSet<&str> = member_surface
        .resources()
        .iter()
        .filter(|r| !r.group_resource.is_builtin())
        .map(|r| r.group_resource.group())
        .collect();
    for served in member_surface.backup_types(excluded) {
        if !served.namespaced {
            continue;
        }
        let gr = &served.group_resource;
        for ns in namespaces {
            let api: Api<DynamicObject> = Api::namespaced_with(member.clone(), ns, &served.api_resource());
            // A page at a time: every object is checked, and a namespace of thousands is never
            // held whole.
            let mut params = ListParams::default().limit(500);
            let mut first = true;
            loop {
                let page = match api.list(&params).await {
                    Ok(page) => page,
                    Err(e) => {
                        errors.push(format!(
                            "cannot list {gr} in namespace {ns} of the member cluster: {e}"
                        ));
                        break;
                    }
                };
                if page.items.is_empty() {
                    break;
                }
                if first {
                    first = false;
                    let served_there = cp_surface
                        .get(gr)
                        .is_some_and(|c| c.versions.contains(&served.version));
                    if !served_there && !crd_groups.contains(gr.group()) {
                        errors.push(format!(
                            "namespace {ns} holds {gr} ({}), which the control plane does not serve; install that \
                             API there or exclude {gr}",
                            served.api_version()
                        ));
                    }
                }
                refuse_unmovable(gr, ns, &page.items, excluded, errors);
                match page.metadata.continue_ {
                    Some(token) if !token.is_empty() => params = params.continue_token(&token),
                    _ => break,
                }
            }
        }
    }
}

/// Every ClusterRoleBinding that would travel with `namespaces` and grant, in the control plane,
/// an escalating role or a subject that is not one of the promoted accounts — unless the policy
/// allows it by name. The role is judged as the member defines it (promote creates it when the
/// control plane lacks it) and as the control plane defines it (a role already there is left as
/// it is, so that is what the binding would grant).
async fn check_bindings(
    member: &Client,
    control_plane: &Client,
    request: &PrecheckRequest,
    namespaces: &[String],
    errors: &mut Vec<String>,
) {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let included: BTreeSet<String> = namespaces.iter().cloned().collect();
    if included.is_empty() {
        return;
    }
    let bindings = match Api::<ClusterRoleBinding>::all(member.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            errors.push(format!(
                "cannot list ClusterRoleBindings in the member cluster: {e}"
            ));
            return;
        }
    };
    for binding in bindings {
        let name = binding.metadata.name.clone().unwrap_or_default();
        let json = serde_json::to_value(&binding).unwrap_or_default();
        let Some(reason) = crate::backup::dependencies::binding_subject_in(&json, &included) else {
            continue;
        };
        if request.allowed_escalating_bindings.contains(&name) {
            continue;
        }
        let role = &binding.role_ref.name;
        let mut why = Vec::new();
        if binding.role_ref.kind == "ClusterRole" {
            why.extend(judge_cluster_role(member, control_plane, role, true).await);
        }
        why.extend(
            crate::escalation::foreign_subjects(&json, &included)
                .into_iter()
                .map(|s| format!("is granted to {s} too, outside the promoted namespaces")),
        );
        if !why.is_empty() {
            errors.push(format!(
                "ClusterRoleBinding {name} ({reason}) would grant ClusterRole {role} across the whole control plane, \
                 and the role {}: remove the binding from the member, or list {name} in spec.allowEscalatingBindings \
                 (--allow-escalating-binding) if the control plane should grant it",
                why.join("; ")
            ));
        }
    }
}

/// Why ClusterRole `role` escalates once promoted: as the member defines it (promote creates it
/// when the control plane lacks it) and as the control plane defines it (a role already there is
/// left as it is, so that is what a binding grants). `bound_cluster_wide` says whether a
/// ClusterRoleBinding grants it (then its rules matter); otherwise only the aggregation labels
/// of a role promote would create do.
async fn judge_cluster_role(
    member: &Client,
    control_plane: &Client,
    role: &str,
    bound_cluster_wide: bool,
) -> Vec<String> {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let mut why = Vec::new();
    let mut in_control_plane = false;
    let mut member_role = None;
    for (cluster, client) in [("member", member), ("control plane", control_plane)] {
        match Api::<ClusterRole>::all(client.clone()).get_opt(role).await {
            Ok(Some(found)) => {
                let value = serde_json::to_value(&found).unwrap_or_default();
                if bound_cluster_wide {
                    why.extend(
                        crate::escalation::role_escalations(role, &value)
                            .into_iter()
                            .map(|w| format!("{w} (as the {cluster} defines it)")),
                    );
                }
                if cluster == "member" {
                    member_role = Some(value);
                } else {
                    in_control_plane = true;
                }
            }
            Ok(None) => {}
            Err(e) => why.push(format!("cannot be read in the {cluster} ({e})")),
        }
    }
    if !in_control_plane && let Some(value) = member_role {
        why.extend(
            crate::escalation::aggregation_labels(&value)
                .into_iter()
                .map(|l| format!("carries {l}=true, so the control plane would add its rules to every role aggregating it")),
        );
    }
    why
}

/// Every RoleBinding of `namespaces` naming a ClusterRole that promote would create with an
/// aggregation label: bound only in its namespace, such a role still widens the control plane's
/// aggregated roles (`admin`, `edit`, `view`) for everyone bound to them. Allowed by
/// `<namespace>/<name>` in `allowEscalatingBindings`.
async fn check_role_bindings(
    member: &Client,
    control_plane: &Client,
    request: &PrecheckRequest,
    namespaces: &[String],
    errors: &mut Vec<String>,
) {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    for ns in namespaces {
        let bindings = match Api::<RoleBinding>::namespaced(member.clone(), ns)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                errors.push(format!(
                    "cannot list RoleBindings in namespace {ns} of the member cluster: {e}"
                ));
                continue;
            }
        };
        for binding in bindings {
            let name = format!("{ns}/{}", binding.metadata.name.as_deref().unwrap_or_default());
            if binding.role_ref.kind != "ClusterRole" || request.allowed_escalating_bindings.contains(&name) {
                continue;
            }
            let role = &binding.role_ref.name;
            let why = judge_cluster_role(member, control_plane, role, false).await;
            if !why.is_empty() {
                errors.push(format!(
                    "RoleBinding {name} refers to ClusterRole {role}, which {}; promote would create it in the control \
                     plane: remove the label in the member, or list {name} in spec.allowEscalatingBindings \
                     (--allow-escalating-binding) if the control plane should aggregate it",
                    why.join(", ")
                ));
            }
        }
    }
}

/// Kinds whose pods cannot keep running under a control-plane owner.
fn refuse_unmovable(
    gr: &GroupResource,
    ns: &str,
    items: &[DynamicObject],
    excluded: &ExcludedResources,
    errors: &mut Vec<String>,
) {
    if *gr == well_known::DAEMON_SETS {
        for ds in items {
            errors.push(format!(
                "DaemonSet {ns}/{} cannot be promoted: its pods are one per member node, but in the control \
                 plane they would all sit on the one virtual node, where the DaemonSet controller deletes all \
                 but one; exclude daemonsets.apps or move it out of the namespace",
                ds.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    if *gr == well_known::JOBS {
        for job in items.iter().filter(|j| !job_finished(&j.data)) {
            errors.push(format!(
                "Job {ns}/{} is still running: its pods are tracked by a selector bound to the Job's UID, which \
                 the control plane cannot reproduce; wait for it to finish",
                job.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    if *gr == well_known::PODS {
        for pod in items {
            let owner = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true));
            if let Some(owner) = owner {
                let owner_gr = GroupResource::new(
                    kpromote_model::object_key::group_of(&owner.api_version),
                    plural_guess(&owner.kind),
                );
                if excluded.contains(&owner_gr) {
                    errors.push(format!(
                        "pod {ns}/{} is controlled by {} {}, whose type is excluded; promoting the pod without its \
                         owner would leave two controllers for it",
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        owner.kind,
                        owner.name
                    ));
                }
            }
        }
    }
}

fn job_finished(job: &Value) -> bool {
    job.pointer("/status/completionTime")
        .is_some_and(|t| !t.is_null())
        || job
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    matches!(c.get("type").and_then(Value::as_str), Some("Complete" | "Failed"))
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
}

/// The plural of a built-in workload kind (owners of pods are workloads; a custom owner's kind
/// is matched through discovery elsewhere).
fn plural_guess(kind: &str) -> String {
    format!("{}s", kind.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(namespaces: &[&str]) -> PrecheckRequest {
        PrecheckRequest {
            namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            excluded: vec![],
            cluster_name: "member".into(),
            forbidden_namespaces: DEFAULT_FORBIDDEN_NAMESPACES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            busy_namespaces: vec![("taken".into(), "other-policy".into())],
            allowed_escalating_bindings: vec![],
        }
    }

    #[test]
    fn every_name_problem_is_reported_at_once() {
        let mut errors = Vec::new();
        check_names(
            &request(&["*", "kube-system", "Bad_Name", "ok", "ok", "taken"]),
            &mut errors,
        );
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].contains("pattern"));
        assert!(errors[1].contains("system namespace"));
        assert!(errors[2].contains("not a namespace name"));
        assert!(errors[3].contains("listed twice"));
        assert!(errors[4].contains("other-policy"));
    }

    #[test]
    fn an_empty_policy_is_refused() {
        let mut errors = Vec::new();
        let mut req = request(&[]);
        req.cluster_name = " ".into();
        check_names(&req, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn job_completion_is_read_from_time_or_conditions() {
        assert!(job_finished(
            &serde_json::json!({ "status": { "completionTime": "2026-01-01T00:00:00Z" } })
        ));
        assert!(job_finished(
            &serde_json::json!({ "status": { "conditions": [{ "type": "Failed", "status": "True" }] } })
        ));
        assert!(!job_finished(&serde_json::json!({ "status": { "active": 1 } })));
    }
}
