//! The two views of a pod stay equal where clustertree looks, and rollback takes off exactly
//! what promote put on.

use super::*;
use crate::plan::transform::{Prepared, Target, TransformContext, prepare};
use proptest::prelude::*;

const ARCHIVE: &str = "sha256-of-the-manifest";

/// RFC 7386 JSON merge patch, as the API server applies it to a pod.
fn apply(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    apply(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn member_pod(labels: Value, annotations: Option<Value>, tolerations: Option<Value>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1-a", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                     "labels": labels},
        "spec": {"nodeName": "worker-3", "priority": 0, "serviceAccountName": "default",
                 "containers": [{"name": "web", "image": "nginx:1.27", "resources": {}}]},
        "status": {"phase": "Running", "qosClass": "BestEffort"}
    });
    if let Some(a) = annotations {
        pod["metadata"]["annotations"] = a;
    }
    if let Some(t) = tolerations {
        pod["spec"]["tolerations"] = t;
    }
    pod
}

/// The control-plane twin as the restore creates it: prepared, then stamped.
fn control_plane_twin(archived: &Value) -> Value {
    let target = Target::ControlPlane {
        cluster_name: "member".to_owned(),
    };
    let ctx = TransformContext::for_control_plane([archived]);
    let Ok(Prepared::Create(creation)) = prepare(archived, &target, &ctx) else {
        panic!("a running pod is created");
    };
    let mut object = creation.object;
    crate::engine::inventory::stamp(&mut object, ARCHIVE);
    object
}

fn marked(archived: &Value) -> Value {
    let mut live = archived.clone();
    if let Some(patch) = member_mark_patch(&live, ARCHIVE).expect("patch") {
        apply(&mut live, &patch);
    }
    live
}

#[test]
fn marked_member_pod_equals_its_twin_where_clustertree_looks() {
    let not_ready = json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                           "effect": "NoExecute", "tolerationSeconds": 300});
    for (labels, annotations, tolerations) in [
        (json!({"app": "web"}), None, None),
        (
            json!({"app": "web"}),
            Some(json!({"a": "b"})),
            Some(json!([not_ready.clone()])),
        ),
        // Already tolerates every taint: nothing is added to either view.
        (json!({}), None, Some(json!([{"operator": "Exists"}]))),
    ] {
        let archived = member_pod(labels, annotations, tolerations);
        let member = marked(&archived);
        let twin = control_plane_twin(&archived);
        assert_eq!(
            clustertree_differences(&member, &twin),
            Vec::<String>::new(),
            "{archived}"
        );
    }
}

#[test]
fn mark_patch_carries_the_uid_and_is_idempotent() {
    let archived = member_pod(json!({"app": "web"}), None, None);
    let patch = member_mark_patch(&archived, ARCHIVE)
        .expect("patch")
        .expect("something to add");
    assert_eq!(patch["metadata"]["uid"], archived["metadata"]["uid"]);
    assert!(patch["metadata"].get("resourceVersion").is_none());
    assert_eq!(patch["metadata"]["labels"]["kosmos-io/pod"], "true");
    assert_eq!(patch["metadata"]["annotations"][STAMP_ANNOTATION], ARCHIVE);
    assert_eq!(patch["spec"]["tolerations"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        member_mark_patch(&marked(&archived), ARCHIVE).expect("patch"),
        None
    );
}

#[test]
fn unmark_takes_off_the_label_and_stamp_and_keeps_the_toleration() {
    let archived = member_pod(json!({"app": "web"}), Some(json!({"keep": "me"})), None);
    let mut live = marked(&archived);
    let patch = unmark_patch(&archived, &live).expect("marks to take off");
    assert_eq!(
        patch,
        json!({"metadata": {"labels": {"kosmos-io/pod": null},
                            "annotations": {STAMP_ANNOTATION: null}}})
    );
    apply(&mut live, &patch);
    assert_eq!(live["metadata"]["labels"], archived["metadata"]["labels"]);
    assert_eq!(
        live["metadata"]["annotations"],
        archived["metadata"]["annotations"]
    );
    assert_eq!(unmark_patch(&archived, &live), None, "nothing left to take off");
    // The prototype's synced label goes too; a pod that was a Kosmos pod before keeps its label.
    let mut was_kosmos = archived.clone();
    was_kosmos["metadata"]["labels"]["kosmos-io/pod"] = json!("true");
    let mut synced = marked(&was_kosmos);
    synced["metadata"]["labels"]["kosmos-io/synced"] = json!("true");
    assert_eq!(
        unmark_patch(&was_kosmos, &synced),
        Some(json!({"metadata": {"labels": {"kosmos-io/synced": null},
                                 "annotations": {STAMP_ANNOTATION: null}}}))
    );
}

#[test]
fn every_pod_change_has_a_reason() {
    for change in POD_CHANGES {
        assert!(!change.field.is_empty() && !change.change.is_empty() && !change.reason.is_empty());
    }
}

#[test]
fn admission_changes_name_the_field_and_the_admission() {
    let archived = member_pod(json!({"app": "web"}), None, None);
    let sent = control_plane_twin(&archived);
    let mut created = sent.clone();
    created["spec"]["priority"] = json!(0);
    assert_eq!(admission_changes(&archived, &sent, &created), vec![]);

    // LimitRanger defaulted the resources.
    let mut defaulted = created.clone();
    defaulted["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "500m"}});
    let changes = admission_changes(&archived, &sent, &defaulted);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].field, "spec.containers[0].resources.limits");
    assert!(changes[0].admission.starts_with("LimitRanger"));

    // A PriorityClass with another value in the control plane.
    let mut priority = created.clone();
    priority["spec"]["priority"] = json!(1000);
    let changes = admission_changes(&archived, &sent, &priority);
    assert_eq!(changes[0].field, "spec.priority");
    assert!(changes[0].admission.starts_with("Priority"));

    // A webhook's label.
    let mut labelled = created;
    labelled["metadata"]["labels"]["injected"] = json!("yes");
    let changes = admission_changes(&archived, &sent, &labelled);
    assert_eq!(changes[0].field, "metadata.labels[injected]");
}

#[test]
fn missing_null_and_empty_compare_equal() {
    let a = json!({"spec": {"containers": [{"name": "c", "env": []}]}, "metadata": {"labels": {"x": "1"}}});
    let b = json!({"spec": {"containers": [{"name": "c"}], "tolerations": null}, "metadata": {"labels": {"x": "1"}, "annotations": {}}});
    assert_eq!(clustertree_differences(&a, &b), Vec::<String>::new());
}

fn toleration() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "",
            "kosmos.io/node",
            "dedicated",
            "node.kubernetes.io/not-ready",
        ]),
        prop::sample::select(vec!["", "Equal", "Exists"]),
        prop::sample::select(vec!["", "true", "web"]),
        prop::sample::select(vec!["", "NoSchedule", "NoExecute"]),
    )
        .prop_map(|(key, operator, value, effect)| {
            let mut t = serde_json::Map::new();
            for (k, v) in [
                ("key", key),
                ("operator", operator),
                ("value", value),
                ("effect", effect),
            ] {
                if !v.is_empty() {
                    t.insert(k.to_owned(), json!(v));
                }
            }
            Value::Object(t)
        })
}

proptest! {
    #[test]
    fn twins_stay_equal_for_any_labels_annotations_and_tolerations(
        labels in prop::collection::btree_map("[a-z]{1,5}", "[a-z]{0,3}", 0..4),
        annotations in prop::option::of(prop::collection::btree_map("[a-z./]{1,8}", "[a-z]{0,3}", 0..4)),
        tolerations in prop::option::of(prop::collection::vec(toleration(), 0..4)),
    ) {
        let archived = member_pod(json!(labels), annotations.map(|a| json!(a)), tolerations.map(|t| json!(t)));
        let member = marked(&archived);
        let twin = control_plane_twin(&archived);
        prop_assert_eq!(clustertree_differences(&member, &twin), Vec::<String>::new());
        // Rollback restores every label and annotation; tolerations only grew, by at most one.
        let mut back = member.clone();
        if let Some(patch) = unmark_patch(&archived, &member) {
            apply(&mut back, &patch);
        }
        prop_assert_eq!(back.pointer("/metadata/labels"), archived.pointer("/metadata/labels"));
        let norm = |v: Option<&Value>| v.filter(|a| a.as_object().is_some_and(|m| !m.is_empty())).cloned();
        prop_assert_eq!(norm(back.pointer("/metadata/annotations")), norm(archived.pointer("/metadata/annotations")));
        let len = |v: &Value| v.pointer("/spec/tolerations").and_then(Value::as_array).map_or(0, Vec::len);
        prop_assert!(len(&back) == len(&archived) || len(&back) == len(&archived) + 1);
    }
}

#[test]
fn the_archived_marks_unmark_as_the_whole_pod_does() {
    let plain = member_pod(json!({"app": "web"}), Some(json!({"keep": "me"})), None);
    assert_eq!(archived_marks(&plain), Value::Null, "most pods carried no mark");
    let mut was_kosmos = plain.clone();
    was_kosmos["metadata"]["labels"]["kosmos-io/pod"] = json!("true");
    assert_eq!(
        archived_marks(&was_kosmos),
        json!({"metadata": {"labels": {"kosmos-io/pod": "true"}}})
    );
    for archived in [plain, was_kosmos] {
        let mut live = marked(&archived);
        live["metadata"]["labels"]["kosmos-io/synced"] = json!("true");
        assert_eq!(
            unmark_patch(&archived_marks(&archived), &live),
            unmark_patch(&archived, &live)
        );
    }
}
