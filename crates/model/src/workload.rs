//! The kinds that manage pods through a pod template, and where each keeps it: one table for
//! the restore's "never change a template" rule (a changed template rolls out new pods, which is
//! a restart) and for the backup's dependency rules (a template names PriorityClasses,
//! RuntimeClasses and StorageClasses even when the workload runs no pod).

/// A kind whose objects hold a pod template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Kind, e.g. `Deployment`.
    pub kind: &'static str,
    /// Plural resource, e.g. `deployments`.
    pub resource: &'static str,
    /// JSON pointer of the pod template (a `PodTemplateSpec`), e.g. `/spec/template`.
    pub template: &'static str,
    /// Whether a controller creates pods (or Jobs) from the template. Every kind here but
    /// PodTemplate, which is only a stored template.
    pub controlled: bool,
}

/// Every built-in kind with a pod template.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        group: "apps",
        kind: "Deployment",
        resource: "deployments",
        template: "/spec/template",
        controlled: true,
    },
    Workload {
        group: "apps",
        kind: "ReplicaSet",
        resource: "replicasets",
        template: "/spec/template",
        controlled: true,
    },
    Workload {
        group: "apps",
        kind: "StatefulSet",
        resource: "statefulsets",
        template: "/spec/template",
        controlled: true,
    },
    Workload {
        group: "apps",
        kind: "DaemonSet",
        resource: "daemonsets",
        template: "/spec/template",
        controlled: true,
    },
    Workload {
        group: "batch",
        kind: "Job",
        resource: "jobs",
        template: "/spec/template",
        controlled: true,
    },
    Workload {
        group: "batch",
        kind: "CronJob",
        resource: "cronjobs",
        template: "/spec/jobTemplate/spec/template",
        controlled: true,
    },
    Workload {
        group: "",
        kind: "ReplicationController",
        resource: "replicationcontrollers",
        template: "/spec/template",
        controlled: true,
    },
    Workload {
        group: "",
        kind: "PodTemplate",
        resource: "podtemplates",
        template: "/template",
        controlled: false,
    },
];

/// The workload of kind `kind` in `group`.
#[must_use]
pub fn by_kind(group: &str, kind: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.group == group && w.kind == kind)
}

/// The workload served as `resource` in `group`.
#[must_use]
pub fn by_resource(group: &str, resource: &str) -> Option<&'static Workload> {
    WORKLOADS
        .iter()
        .find(|w| w.group == group && w.resource == resource)
}

/// Whether objects of `resource` in `group` are run by a workload controller.
#[must_use]
pub fn is_controlled(group: &str, resource: &str) -> bool {
    by_resource(group, resource).is_some_and(|w| w.controlled)
}

impl Workload {
    /// The field path of the template's pod spec as reports spell it: `spec.template.spec`.
    #[must_use]
    pub fn pod_spec_field(&self) -> String {
        format!("{}.spec", self.template.trim_start_matches('/').replace('/', "."))
    }

    /// The template's pod spec in `object`.
    #[must_use]
    pub fn pod_spec<'v>(&self, object: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        object.pointer(self.template).and_then(|t| t.get("spec"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree_and_paths_read_as_fields() {
        for w in WORKLOADS {
            assert_eq!(by_kind(w.group, w.kind), Some(w));
            assert_eq!(by_resource(w.group, w.resource), Some(w));
        }
        assert_eq!(
            by_kind("apps", "Deployment")
                .map(Workload::pod_spec_field)
                .as_deref(),
            Some("spec.template.spec")
        );
        assert_eq!(
            by_resource("batch", "cronjobs")
                .map(Workload::pod_spec_field)
                .as_deref(),
            Some("spec.jobTemplate.spec.template.spec")
        );
        assert_eq!(by_kind("", "Pod"), None);
        let pod_template = serde_json::json!({"template": {"spec": {"priorityClassName": "high"}}});
        assert_eq!(
            by_kind("", "PodTemplate").and_then(|w| w.pod_spec(&pod_template)),
            Some(&serde_json::json!({"priorityClassName": "high"}))
        );
    }
}
