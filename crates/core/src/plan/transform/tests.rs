//! Tests of the transforms: one table per rule, regression tests named after the Kosmos bugs
//! they pin, and property tests over random objects.

use std::collections::BTreeSet;

use super::*;
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::OwnerReference;
use proptest::prelude::*;
use serde_json::json;

fn cp() -> Target {
    Target::ControlPlane {
        cluster_name: "member-1".to_owned(),
    }
}

fn create(object: &Value, target: &Target, ctx: &TransformContext) -> Creation {
    match prepare(object, target, ctx) {
        Ok(Prepared::Create(c)) => *c,
        other => panic!("expected Create, got {other:?}"),
    }
}

fn skip(object: &Value, target: &Target, ctx: &TransformContext) -> SkipReason {
    match prepare(object, target, ctx) {
        Ok(Prepared::Skip(reason)) => reason,
        other => panic!("expected Skip, got {other:?}"),
    }
}

fn kosmos_toleration() -> Value {
    json!({"key": "kosmos.io/node", "operator": "Equal", "value": "true", "effect": "NoSchedule"})
}

fn running_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-1-a", "namespace": "shop", "uid": "pod-uid", "resourceVersion": "42",
            "generateName": "web-1-", "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                                 "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": "worker-3", "serviceAccountName": "web", "priority": 0,
            "preemptionPolicy": "PreemptLowerPriority",
            "containers": [{"name": "web", "image": "nginx:1.27"}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]
        },
        "status": {"phase": "Running", "podIP": "10.0.0.7",
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "uid": "dep-uid", "generation": 7,
                     "annotations": {"deployment.kubernetes.io/revision": "3"}},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}],
                         "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}]}
            }
        },
        "status": {"replicas": 2, "readyReplicas": 2, "observedGeneration": 7}
    })
}

// ---------------------------------------------------------------------------------------------
// Metadata, status, ownerReferences

#[test]
fn stripped_metadata_fields_are_removed_and_the_rest_kept() {
    let object = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "cfg", "namespace": "shop", "generateName": "cfg-",
            "uid": "u", "resourceVersion": "9", "generation": 2, "creationTimestamp": "2024-03-11T10:49:07Z",
            "managedFields": [{"manager": "kubectl"}], "selfLink": "/api/v1/namespaces/shop/configmaps/cfg",
            "deletionGracePeriodSeconds": 30,
            "labels": {"app": "web"}, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "finalizers": ["example.com/keep"]
        },
        "data": {"k": "v"}
    });
    let c = create(&object, &Target::Member, &TransformContext::new());
    assert_eq!(
        c.object,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "cfg", "namespace": "shop", "generateName": "cfg-",
                "labels": {"app": "web"}, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "finalizers": ["example.com/keep"]
            },
            "data": {"k": "v"}
        })
    );
    assert!(c.dropped_finalizers.is_empty());
}

#[test]
fn control_plane_copies_keep_only_finalizers_a_control_plane_removes() {
    let object = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "shop", "uid": "u",
                     "finalizers": ["kubernetes.io/pvc-protection", "example.com/keep"]},
        "spec": {}
    });
    let c = create(&object, &cp(), &TransformContext::new());
    assert_eq!(
        c.object["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );
    assert_eq!(c.dropped_finalizers, vec!["example.com/keep".to_owned()]);
    let mut only_foreign = object.clone();
    only_foreign["metadata"]["finalizers"] = json!(["example.com/keep"]);
    let c = create(&only_foreign, &cp(), &TransformContext::new());
    assert_eq!(
        c.object["metadata"].get("finalizers"),
        None,
        "no empty list left behind"
    );
    assert!(c.applied.is_empty());
    for field in STRIPPED_METADATA.iter().chain(KEPT_METADATA) {
        assert!(!field.reason.is_empty(), "{} has no reason", field.field);
    }
}

#[test]
fn status_is_written_only_for_control_plane_pods() {
    let status_of = |object: &Value, target: &Target| create(object, target, &TransformContext::new()).status;
    let pod = running_pod();
    assert_eq!(status_of(&pod, &cp()), pod.get("status").cloned());
    for (object, target) in [
        (deployment(), cp()),
        (deployment(), Target::Member),
        (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}, "status": {"phase": "Active"}}),
            cp(),
        ),
        (
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "shop"},
                "status": {"ready": true}}),
            cp(),
        ),
    ] {
        let c = create(&object, &target, &TransformContext::new());
        assert_eq!(c.status, None, "{object}");
        assert_eq!(c.object.get("status"), None, "{object}");
    }
    assert!(matches!(
        status_disposition("", "Pod", &cp()),
        StatusDisposition::Write(_)
    ));
    assert!(matches!(
        status_disposition("", "Pod", &Target::Member),
        StatusDisposition::Drop(_)
    ));
    assert!(matches!(
        status_disposition("apps", "Deployment", &cp()),
        StatusDisposition::Drop(_)
    ));
}

fn reference(kind: &str, name: &str, uid: &str, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(controller),
        block_owner_deletion: Some(true),
    }
}

#[test]
fn kosmos_owner_references_dropped_not_rewritten() {
    // Kosmos dropped every ownerReference on restore. Here a reference to an owner already
    // created is rewritten to its new UID, one to an owner still to come is deferred, and only
    // one to an owner that will never exist is dropped.
    let mut ctx = TransformContext::new();
    ctx.record_created("created-old", "created-new");
    ctx.add_pending("later");
    let object = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "shop", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "created-old", "controller": true, "blockOwnerDeletion": true},
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "later", "controller": false, "blockOwnerDeletion": true},
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gone", "uid": "missing", "controller": false, "blockOwnerDeletion": true}
        ]}
    });
    let c = create(&object, &cp(), &ctx);
    assert_eq!(
        c.object.pointer("/metadata/ownerReferences"),
        Some(
            &json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "created-new",
                      "controller": true, "blockOwnerDeletion": true}])
        )
    );
    assert_eq!(
        c.owner_references.rewritten,
        [reference("StatefulSet", "db", "created-new", true)]
    );
    assert_eq!(
        c.owner_references.deferred,
        [reference("Deployment", "web", "later", false)]
    );
    assert_eq!(
        c.owner_references.dropped,
        [reference("Deployment", "gone", "missing", false)]
    );
    assert!(!DROPPED_OWNER_REASON.is_empty());
}

#[test]
fn no_owner_references_field_when_none_is_kept() {
    let c = create(&running_pod(), &cp(), &TransformContext::new());
    assert_eq!(c.object.pointer("/metadata/ownerReferences"), None);
    assert_eq!(c.owner_references.dropped.len(), 1);
}

#[test]
fn adoption_patch_cases() {
    let mut ctx = TransformContext::new();
    ctx.add_pending("rs-old");
    ctx.add_pending("other-old");
    let deferred = [reference("ReplicaSet", "web-1", "rs-old", true)];
    let live = json!({"metadata": {"name": "p", "resourceVersion": "100"}});

    // Owner not created yet: nothing to patch, still waiting.
    let a = adoption_patch(&live, &deferred, &ctx, false).expect("adoption");
    assert_eq!((a.patch, a.waiting.len(), a.conflicts.len()), (None, 1, 0));

    ctx.record_created("rs-old", "rs-new");
    let a = adoption_patch(&live, &deferred, &ctx, false).expect("adoption");
    assert_eq!(
        a.patch,
        Some(json!({"metadata": {"resourceVersion": "100", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-new",
             "controller": true, "blockOwnerDeletion": true}]}}))
    );

    // The ReplicaSet controller adopted the pod first: nothing to add.
    let adopted = json!({"metadata": {"resourceVersion": "101", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-new", "controller": true}]}});
    assert_eq!(
        adoption_patch(&adopted, &deferred, &ctx, false).expect("adoption"),
        Adoption::default()
    );

    // Another controller owns it: the controller reference is a conflict, not a second controller.
    let other = json!({"metadata": {"ownerReferences": [
        {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "w-uid", "controller": true}]}});
    let a = adoption_patch(&other, &deferred, &ctx, false).expect("adoption");
    assert_eq!((a.patch, a.conflicts.len()), (None, 1));

    // A non-controller reference is appended to the live list.
    ctx.record_created("other-old", "other-new");
    let extra = [reference("Deployment", "web", "other-old", false)];
    let a = adoption_patch(&adopted, &extra, &ctx, false).expect("adoption");
    let refs = a
        .patch
        .as_ref()
        .and_then(|p| p.pointer("/metadata/ownerReferences"))
        .and_then(Value::as_array);
    assert_eq!(refs.map(Vec::len), Some(2));

    // The strategic form names only the added reference, under the object's UID: a controller
    // adopting it at the same moment merges instead of conflicting.
    let mut with_uid = adopted.clone();
    with_uid["metadata"]["uid"] = json!("pod-uid");
    let a = adoption_patch(&with_uid, &extra, &ctx, true).expect("adoption");
    assert_eq!(
        a.patch,
        Some(json!({"metadata": {"uid": "pod-uid", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "other-new",
             "controller": false, "blockOwnerDeletion": true}]}}))
    );

    let broken = json!({"metadata": {"ownerReferences": "no"}});
    assert!(matches!(
        adoption_patch(&broken, &deferred, &ctx, false),
        Err(TransformError::InvalidField { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Pods

#[test]
fn control_plane_pod_is_bound_to_the_virtual_node() {
    let c = create(&running_pod(), &cp(), &TransformContext::new());
    let o = &c.object;
    assert_eq!(o.pointer("/spec/nodeName"), Some(&json!("kosmos-member-1")));
    assert_eq!(
        o.pointer("/metadata/labels"),
        Some(&json!({"app": "web", "kosmos-io/pod": "true"}))
    );
    assert_eq!(
        o.pointer("/spec/tolerations"),
        Some(&json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            kosmos_toleration()
        ]))
    );
    assert_eq!(o.pointer("/spec/priority"), None);
    assert_eq!(o.pointer("/spec/preemptionPolicy"), None);
    assert_eq!(o.pointer("/spec/serviceAccountName"), Some(&json!("web")));
    assert_eq!(
        o.pointer("/spec/containers"),
        running_pod().pointer("/spec/containers")
    );
    assert_eq!(
        c.applied,
        [
            POD_NODE_NAME.rule,
            POD_PRIORITY.rule,
            POD_TOLERATION.rule,
            POD_LABEL.rule
        ]
    );
}

#[test]
fn kosmos_synced_label_not_added() {
    let c = create(&running_pod(), &cp(), &TransformContext::new());
    assert_eq!(c.object.pointer("/metadata/labels/kosmos-io~1synced"), None);
}

#[test]
fn kosmos_nil_tolerations_bug() {
    // Kosmos built the toleration list when it was nil but never assigned it: no toleration.
    for tolerations in [None, Some(Value::Null), Some(json!([]))] {
        let mut pod = running_pod();
        let spec = pod
            .pointer_mut("/spec")
            .and_then(Value::as_object_mut)
            .expect("spec");
        spec.remove("tolerations");
        if let Some(t) = tolerations.clone() {
            spec.insert("tolerations".to_owned(), t);
        }
        let c = create(&pod, &cp(), &TransformContext::new());
        assert_eq!(
            c.object.pointer("/spec/tolerations"),
            Some(&json!([kosmos_toleration()])),
            "{tolerations:?}"
        );
    }
}

#[test]
fn toleration_added_only_when_none_tolerates_the_taint() {
    let cases = [
        (json!({"key": "kosmos.io/node", "operator": "Exists"}), false),
        (
            json!({"key": "kosmos.io/node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}),
            false,
        ),
        (json!({"key": "kosmos.io/node", "value": "true"}), false),
        (json!({"operator": "Exists"}), false),
        (json!({"operator": "Exists", "effect": "NoSchedule"}), false),
        (
            json!({"key": "kosmos.io/node", "operator": "Equal", "value": "false"}),
            true,
        ),
        (
            json!({"key": "kosmos.io/node", "operator": "Exists", "effect": "NoExecute"}),
            true,
        ),
        (json!({"operator": "Exists", "effect": "NoExecute"}), true),
        (json!({"key": "other", "operator": "Exists"}), true),
        (json!({"operator": "Equal"}), true),
    ];
    for (existing, added) in cases {
        let mut pod = running_pod();
        if let Some(spec) = pod.pointer_mut("/spec").and_then(Value::as_object_mut) {
            spec.insert("tolerations".to_owned(), json!([existing.clone()]));
        }
        let c = create(&pod, &cp(), &TransformContext::new());
        let expected = if added {
            json!([existing, kosmos_toleration()])
        } else {
            json!([existing])
        };
        assert_eq!(c.object.pointer("/spec/tolerations"), Some(&expected));
    }
}

#[test]
fn pod_ephemeral_containers_are_removed() {
    let mut pod = running_pod();
    if let Some(spec) = pod.pointer_mut("/spec").and_then(Value::as_object_mut) {
        spec.insert(
            "ephemeralContainers".to_owned(),
            json!([{"name": "debugger", "image": "busybox"}]),
        );
    }
    let c = create(&pod, &cp(), &TransformContext::new());
    assert_eq!(c.object.pointer("/spec/ephemeralContainers"), None);
    assert!(c.applied.contains(&POD_EPHEMERAL_CONTAINERS.rule));
}

#[test]
fn pod_errors() {
    let ctx = TransformContext::new();
    let empty = Target::ControlPlane {
        cluster_name: String::new(),
    };
    assert_eq!(
        prepare(&running_pod(), &empty, &ctx),
        Err(TransformError::EmptyClusterName)
    );
    let mut pod = running_pod();
    pod["spec"]["tolerations"] = json!("all");
    assert!(matches!(
        prepare(&pod, &cp(), &ctx),
        Err(TransformError::InvalidField {
            field: "spec.tolerations",
            ..
        })
    ));
    let mut pod = running_pod();
    pod["metadata"]["labels"] = json!(["app"]);
    assert!(matches!(
        prepare(&pod, &cp(), &ctx),
        Err(TransformError::InvalidField {
            field: "metadata.labels",
            ..
        })
    ));
    let mut pod = running_pod();
    pod["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("labels");
    let c = create(&pod, &cp(), &ctx);
    assert_eq!(
        c.object.pointer("/metadata/labels"),
        Some(&json!({"kosmos-io/pod": "true"}))
    );
}

#[test]
fn member_pods_are_never_recreated() {
    assert_eq!(
        skip(&running_pod(), &Target::Member, &TransformContext::new()),
        SkipReason::MemberPodKept
    );
}

#[test]
fn malformed_objects_are_errors() {
    let ctx = TransformContext::new();
    let cases = [
        (json!("pod"), TransformError::NotAnObject),
        (
            json!({"kind": "Pod", "metadata": {"name": "p"}}),
            TransformError::MissingField("apiVersion"),
        ),
        (
            json!({"apiVersion": "v1", "metadata": {"name": "p"}}),
            TransformError::MissingField("kind"),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod"}),
            TransformError::MissingField("metadata"),
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": ""}}),
            TransformError::MissingField("metadata.name"),
        ),
    ];
    for (object, error) in cases {
        assert_eq!(prepare(&object, &cp(), &ctx), Err(error));
    }
}

// ---------------------------------------------------------------------------------------------
// Templates

#[test]
fn kosmos_template_toleration_rollout() {
    // Kosmos appended the kosmos.io/node toleration to Deployment and StatefulSet templates: a
    // template change, so the controllers rolled out new pods — a restart of every pod.
    for kind in ["Deployment", "StatefulSet"] {
        let mut object = deployment();
        object["kind"] = json!(kind);
        let c = create(&object, &cp(), &TransformContext::new());
        assert_eq!(
            c.object.pointer("/spec/template"),
            object.pointer("/spec/template")
        );
        assert_eq!(
            serde_json::to_string(&c.object["spec"]["template"]).ok(),
            serde_json::to_string(&object["spec"]["template"]).ok()
        );
        assert!(c.applied.is_empty());
    }
}

#[test]
fn pod_templates_are_never_changed_for_any_workload_kind() {
    let template = deployment()["spec"]["template"].clone();
    let cases = [
        ("apps/v1", "Deployment", "/spec/template"),
        ("apps/v1", "ReplicaSet", "/spec/template"),
        ("apps/v1", "StatefulSet", "/spec/template"),
        ("apps/v1", "DaemonSet", "/spec/template"),
        ("v1", "ReplicationController", "/spec/template"),
        ("batch/v1", "CronJob", "/spec/jobTemplate/spec/template"),
        ("v1", "PodTemplate", "/template"),
    ];
    for (api_version, kind, path) in cases {
        let mut object = json!({"apiVersion": api_version, "kind": kind,
                                "metadata": {"name": "w", "namespace": "shop", "uid": "u"}});
        let body = template.clone();
        match path {
            "/template" => object["template"] = body,
            "/spec/jobTemplate/spec/template" => {
                object["spec"] = json!({"schedule": "@daily", "jobTemplate": {"spec": {"template": body}}});
            }
            _ => object["spec"] = json!({"template": body}),
        }
        for target in [cp(), Target::Member] {
            let c = create(&object, &target, &TransformContext::new());
            assert_eq!(c.object.pointer(path), object.pointer(path), "{kind} {target:?}");
        }
        assert_eq!(
            template_path(kpromote_model::object_key::group_of(api_version), kind),
            Some(path)
        );
    }
    // Jobs are never created, so their template cannot change either.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "shop"},
                     "spec": {"template": template}});
    assert!(prepare(&job, &cp(), &TransformContext::new()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Services, volumes, claims, accounts, namespaces

#[test]
fn service_rules() {
    let cases = [
        // ClusterIP: both fields cleared.
        (
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"]}),
            json!({"type": "ClusterIP", "ipFamilies": ["IPv4"]}),
        ),
        // Headless: stays headless.
        (
            json!({"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"}}),
            json!({"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"}}),
        ),
        // NodePort and LoadBalancer: node ports and the health-check port survive.
        (
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.11", "externalTrafficPolicy": "Local",
                   "healthCheckNodePort": 32001, "ports": [{"port": 80, "nodePort": 30080}]}),
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                   "healthCheckNodePort": 32001, "ports": [{"port": 80, "nodePort": 30080}]}),
        ),
        // ExternalName: nothing to clear.
        (
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
        ),
    ];
    for (spec, expected) in cases {
        let service = json!({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": "web", "namespace": "shop"}, "spec": spec,
                             "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        let c = create(&service, &cp(), &TransformContext::new());
        assert_eq!(c.object["spec"], expected);
        assert_eq!(c.object.get("status"), None);
    }
}

#[test]
fn persistent_volume_keeps_claim_name_only() {
    let volume = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-1", "annotations": {"pv.kubernetes.io/provisioned-by": "csi.example.com",
                                                      "pv.kubernetes.io/bound-by-controller": "yes"}},
        "spec": {"persistentVolumeReclaimPolicy": "Delete", "storageClassName": "fast",
                 "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data-db-0",
                              "namespace": "shop", "uid": "pvc-uid", "resourceVersion": "77"}},
        "status": {"phase": "Bound"}
    });
    let c = create(&volume, &cp(), &TransformContext::new());
    assert_eq!(
        c.object["spec"]["claimRef"],
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data-db-0", "namespace": "shop"})
    );
    assert_eq!(
        c.object["metadata"]["annotations"],
        volume["metadata"]["annotations"]
    );
    assert_eq!(c.applied, [VOLUME_CLAIM_REF.rule]);
}

#[test]
fn claim_loses_bind_completed_only() {
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-db-0", "namespace": "shop", "finalizers": ["kubernetes.io/pvc-protection"],
                     "annotations": {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}},
        "spec": {"volumeName": "pv-1", "storageClassName": "fast"},
        "status": {"phase": "Bound"}
    });
    let c = create(&claim, &cp(), &TransformContext::new());
    assert_eq!(
        c.object["metadata"]["annotations"],
        json!({"pv.kubernetes.io/bound-by-controller": "yes"})
    );
    assert_eq!(
        c.object["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );
    assert_eq!(c.object["spec"]["volumeName"], json!("pv-1"));
    assert_eq!(c.applied, [CLAIM_BIND_COMPLETED.rule]);
}

#[test]
fn service_account_drops_references_to_skipped_tokens() {
    let token = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                       "metadata": {"name": "web-token-abcde", "namespace": "shop"}});
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "web", "namespace": "shop"},
                         "secrets": [{"name": "web-token-abcde"}, {"name": "extra"}],
                         "imagePullSecrets": [{"name": "registry"}]});
    let ctx = TransformContext::for_control_plane([&token, &account]);
    let c = create(&account, &cp(), &ctx);
    assert_eq!(c.object["secrets"], json!([{"name": "extra"}]));
    assert_eq!(c.object["imagePullSecrets"], json!([{"name": "registry"}]));
    assert_eq!(c.applied, [SERVICE_ACCOUNT_TOKEN_SECRETS.rule]);
}

#[test]
fn default_service_account_is_merged() {
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "default", "namespace": "shop", "uid": "sa-uid",
                                      "labels": {"team": "web", "shared": "archived"},
                                      "annotations": {"note": "x"}},
                         "imagePullSecrets": [{"name": "registry"}, {"name": "mirror"}]});
    let Ok(Prepared::Merge(merge)) = prepare(&account, &cp(), &TransformContext::new()) else {
        panic!("expected a merge")
    };
    assert_eq!(merge.image_pull_secrets, ["registry", "mirror"]);
    assert_eq!(merge.labels.get("team").map(String::as_str), Some("web"));
    assert!(!merge.reason.is_empty());

    let live = json!({"metadata": {"name": "default", "resourceVersion": "5", "labels": {"shared": "target"}},
                      "imagePullSecrets": [{"name": "mirror"}]});
    assert_eq!(
        merge.patch_for(&live),
        Some(json!({
            "metadata": {"labels": {"team": "web"}, "annotations": {"note": "x"}, "resourceVersion": "5"},
            "imagePullSecrets": [{"name": "mirror"}, {"name": "registry"}]
        }))
    );
    let merged = json!({"metadata": {"labels": {"team": "web", "shared": "t"}, "annotations": {"note": "y"}},
                        "imagePullSecrets": [{"name": "registry"}, {"name": "mirror"}]});
    assert_eq!(merge.patch_for(&merged), None);
}

#[test]
fn namespace_keeps_spec_and_loses_status() {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "shop", "uid": "ns-uid", "labels": {"kubernetes.io/metadata.name": "shop", "team": "web"}},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
    let c = create(&ns, &cp(), &TransformContext::new());
    assert_eq!(
        c.object,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "team": "web"}},
               "spec": {"finalizers": ["kubernetes"]}})
    );
}

// ---------------------------------------------------------------------------------------------
// Skips and refusals

#[test]
fn skips_carry_their_reasons() {
    let selector_service = json!({"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"app": "web"}}});
    let ctx = TransformContext::for_control_plane([&selector_service]);
    let mut succeeded = running_pod();
    succeeded["status"]["phase"] = json!("Succeeded");
    let mut failed = running_pod();
    failed["status"]["phase"] = json!("Failed");
    let mut mirror = running_pod();
    mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
    let mut deleting = deployment();
    deleting["metadata"]["deletionTimestamp"] = json!("2024-03-11T10:49:07Z");
    let job = |status: Value| {
        json!({"apiVersion": "batch/v1", "kind": "Job",
                                     "metadata": {"name": "j", "namespace": "shop"}, "status": status})
    };
    let cases = [
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": "shop"}}),
            SkipReason::RootCaConfigMap,
        ),
        (
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                "metadata": {"name": "web-token", "namespace": "shop"}}),
            SkipReason::ServiceAccountToken,
        ),
        (succeeded, SkipReason::CompletedPod),
        (failed, SkipReason::CompletedPod),
        (mirror, SkipReason::MirrorPod),
        (deleting, SkipReason::BeingDeleted),
        (
            job(json!({"completionTime": "2024-03-11T10:49:07Z"})),
            SkipReason::CompletedJob,
        ),
        (
            job(json!({"conditions": [{"type": "Complete", "status": "True"}]})),
            SkipReason::CompletedJob,
        ),
        (
            job(json!({"conditions": [{"type": "Failed", "status": "True"}]})),
            SkipReason::CompletedJob,
        ),
        (
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"}}),
            SkipReason::ControllerManagedEndpoints,
        ),
        (
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-x", "namespace": "shop",
                             "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}}}),
            SkipReason::ControllerManagedEndpointSlice,
        ),
        (
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "shop"}}),
            SkipReason::NotRestorable {
                kind: "Event".to_owned(),
            },
        ),
        (
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "shop"}}),
            SkipReason::NotRestorable {
                kind: "Event.events.k8s.io".to_owned(),
            },
        ),
    ];
    for (object, expected) in cases {
        let reason = skip(&object, &cp(), &ctx);
        assert_eq!(reason, expected, "{object}");
        assert!(!reason.reason().is_empty());
        assert!(!reason.to_string().is_empty());
    }
}

#[test]
fn user_managed_endpoints_are_created() {
    let selectorless = json!({"apiVersion": "v1", "kind": "Service",
                              "metadata": {"name": "ext", "namespace": "shop"}, "spec": {"ports": [{"port": 5432}]}});
    let ctx = TransformContext::for_control_plane([&selectorless]);
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext", "namespace": "shop"},
                           "subsets": [{"addresses": [{"ip": "192.168.1.10"}]}]});
    assert_eq!(
        create(&endpoints, &cp(), &ctx).object["subsets"],
        endpoints["subsets"]
    );
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": "ext-1", "namespace": "shop",
                                    "labels": {"endpointslice.kubernetes.io/managed-by": "me"}}});
    create(&slice, &cp(), &ctx);
}

#[test]
fn incomplete_job_is_refused() {
    // Its selector carries the member Job's controller-uid; re-creating it would need a new
    // selector and template labels: a template change. Precheck refuses promote while one runs.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": "shop"},
                     "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j-uid"}}},
                     "status": {"active": 1}});
    for target in [cp(), Target::Member] {
        assert_eq!(
            prepare(&job, &target, &TransformContext::new()),
            Err(TransformError::IncompleteJob {
                namespace: "shop".to_owned(),
                name: "migrate".to_owned()
            })
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Contexts

#[test]
fn control_plane_context_pends_what_will_be_created() {
    let pod = running_pod();
    let mut done = running_pod();
    done["metadata"]["uid"] = json!("done-uid");
    done["status"]["phase"] = json!("Succeeded");
    let dep = deployment();
    let ctx = TransformContext::for_control_plane([&pod, &done, &dep]);
    assert!(ctx.is_pending("pod-uid"));
    assert!(ctx.is_pending("dep-uid"));
    assert!(
        !ctx.is_pending("done-uid"),
        "a skipped object will never exist in the target"
    );
    let mut ctx = ctx;
    ctx.record_created("dep-uid", "new-dep");
    assert_eq!(ctx.new_uid("dep-uid"), Some("new-dep"));
    assert!(!ctx.is_pending("dep-uid"));
    ctx.add_pending("dep-uid");
    assert!(
        !ctx.is_pending("dep-uid"),
        "a created object is not pending again"
    );
}

#[test]
fn member_context_maps_kept_objects_to_themselves() {
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": "web-1", "namespace": "shop", "uid": "rs-uid", "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "dep-uid", "controller": true}]},
                    "spec": {"template": {"metadata": {"labels": {"app": "web"}}}}});
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "cfg", "namespace": "shop", "uid": "cm-uid", "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-uid"}]}});
    let dep = deployment();
    let keys = [
        ObjectKey::namespaced("apps", "replicasets", "shop", "web-1"),
        ObjectKey::namespaced("apps", "deployments", "shop", "web"),
        ObjectKey::namespaced("", "configmaps", "shop", "cfg"),
    ];
    let recreated: BTreeSet<ObjectKey> = keys[..2].iter().cloned().collect();
    let ctx = TransformContext::for_member(keys.iter().zip([&rs, &dep, &cm]), &recreated);
    assert_eq!(ctx.new_uid("cm-uid"), Some("cm-uid"));
    assert!(ctx.is_pending("rs-uid") && ctx.is_pending("dep-uid"));
    let c = create(&rs, &Target::Member, &ctx);
    assert_eq!(c.owner_references.deferred.len(), 1);
    assert_eq!(
        c.object.pointer("/metadata/labels"),
        None,
        "no Kosmos marks in the member"
    );
    assert_eq!(c.object["spec"]["template"], rs["spec"]["template"]);
}

#[test]
fn every_rule_has_a_reason() {
    for r in KIND_RULES {
        assert!(!r.rule.is_empty() && !r.reason.is_empty(), "{r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z/.]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn toleration() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(None), Just(Some("kosmos.io/node")), Just(Some("other"))],
        prop_oneof![Just(None), Just(Some("Exists")), Just(Some("Equal"))],
        prop_oneof![Just(None), Just(Some("true")), Just(Some("x"))],
        prop_oneof![Just(None), Just(Some("NoSchedule")), Just(Some("NoExecute"))],
    )
        .prop_map(|(key, operator, value, effect)| {
            let mut t = Map::new();
            for (field, v) in [
                ("key", key),
                ("operator", operator),
                ("value", value),
                ("effect", effect),
            ] {
                if let Some(v) = v {
                    t.insert(field.to_owned(), json!(v));
                }
            }
            Value::Object(t)
        })
}

/// A pod template: random labels and extras, random tolerations (or none, or null).
fn pod_template() -> impl Strategy<Value = Value> {
    (
        proptest::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,6}", 0..3),
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            proptest::collection::vec(toleration(), 0..3).prop_map(|v| Some(Value::Array(v)))
        ],
        json_value(),
    )
        .prop_map(|(labels, tolerations, extra)| {
            let mut spec = json!({"containers": [{"name": "c", "image": "img"}], "extra": extra});
            if let (Some(t), Some(spec)) = (tolerations, spec.as_object_mut()) {
                spec.insert("tolerations".to_owned(), t);
            }
            json!({"metadata": {"labels": labels}, "spec": spec})
        })
}

/// Random metadata: always a name and namespace, any subset of the stripped fields, random
/// labels, and ownerReferences to random UIDs.
fn metadata() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(any::<bool>(), STRIPPED_METADATA.len()),
        proptest::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,6}", 0..3),
        proptest::collection::vec(("(a|b|c|d)", any::<bool>()), 0..3),
        json_value(),
    )
        .prop_map(|(present, labels, owners, junk)| {
            let mut m = json!({"name": "obj", "namespace": "shop", "labels": labels});
            for (field, on) in STRIPPED_METADATA.iter().zip(present) {
                // An object being deleted is skipped, not stripped; keep it out of most cases.
                if on && field.field != "deletionTimestamp" {
                    m[field.field] = junk.clone();
                }
            }
            m["ownerReferences"] = Value::Array(
                owners
                    .into_iter()
                    .map(|(uid, controller)| json!({"apiVersion": "example.com/v1", "kind": "Owner",
                                                    "name": format!("o-{uid}"), "uid": uid, "controller": controller}))
                    .collect(),
            );
            m
        })
}

fn random_context() -> TransformContext {
    let mut ctx = TransformContext::new();
    ctx.record_created("a", "A");
    ctx.add_pending("b");
    ctx
}

const TEMPLATE_KINDS: &[(&str, &str)] = &[
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("v1", "ReplicationController"),
    ("batch/v1", "CronJob"),
    ("batch/v1", "Job"),
    ("v1", "PodTemplate"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `prepare` never changes the pod template of any workload, for either target: it returns
    /// the template unchanged, or creates nothing.
    #[test]
    fn prepare_never_changes_a_pod_template(
        kind in 0..TEMPLATE_KINDS.len(),
        template in pod_template(),
        meta in metadata(),
        status in json_value(),
        member in any::<bool>(),
    ) {
        let (api_version, kind) = TEMPLATE_KINDS[kind];
        let mut object = json!({"apiVersion": api_version, "kind": kind, "metadata": meta, "status": status});
        let path = template_path(kpromote_model::object_key::group_of(api_version), kind).expect("template kind");
        match path {
            "/template" => object["template"] = template,
            "/spec/jobTemplate/spec/template" => {
                object["spec"] = json!({"jobTemplate": {"spec": {"template": template}}});
            }
            _ => object["spec"] = json!({"replicas": 1, "template": template}),
        }
        let target = if member { Target::Member } else { cp() };
        match prepare(&object, &target, &random_context()) {
            Ok(Prepared::Create(c)) => prop_assert_eq!(c.object.pointer(path), object.pointer(path)),
            Ok(Prepared::Skip(_)) | Err(TransformError::IncompleteJob { .. }) => prop_assert_eq!(kind, "Job"),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// Whatever `prepare` creates has no stripped metadata, no status, and only ownerReferences
    /// to owners that exist in the target.
    #[test]
    fn stripped_fields_never_survive(
        kind in prop_oneof![
            Just(("v1", "Pod")), Just(("v1", "Service")), Just(("v1", "ConfigMap")),
            Just(("v1", "PersistentVolumeClaim")), Just(("v1", "ServiceAccount")), Just(("apps/v1", "Deployment")),
            Just(("example.com/v1", "Widget")), Just(("v1", "Namespace"))
        ],
        meta in metadata(),
        spec in proptest::collection::btree_map("[a-zA-Z]{1,8}", json_value(), 0..4),
        status in json_value(),
        member in any::<bool>(),
    ) {
        let (api_version, kind) = kind;
        let spec: Map<String, Value> = spec.into_iter().filter(|(k, _)| k != "tolerations").collect();
        let object = json!({"apiVersion": api_version, "kind": kind, "metadata": meta,
                            "spec": spec, "status": status});
        let target = if member { Target::Member } else { cp() };
        let prepared = prepare(&object, &target, &random_context());
        if let Ok(Prepared::Skip(reason)) = &prepared {
            prop_assert!(kind == "Pod", "{} skipped: {}", kind, reason);
        }
        prop_assert!(prepared.is_ok(), "{:?}", prepared);
        if let Ok(Prepared::Create(c)) = prepared {
            for field in STRIPPED_METADATA {
                prop_assert!(c.object["metadata"].get(field.field).is_none(), "{} survived", field.field);
            }
            prop_assert!(c.object.get("status").is_none());
            let refs = c.object.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
            prop_assert!(refs.iter().all(|r| r["uid"] == json!("A")));
            prop_assert!(c.owner_references.deferred.iter().all(|r| r.uid == "b"));
            prop_assert!(c.owner_references.dropped.iter().all(|r| r.uid == "c" || r.uid == "d"));
        }
    }
}
