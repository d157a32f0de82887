use super::*;
use serde_json::json;

fn targets(deps: &[Dependency]) -> Vec<String> {
    deps.iter().map(|d| d.target.to_string()).collect()
}

fn vias(deps: &[Dependency]) -> Vec<String> {
    deps.iter()
        .map(|d| match &d.reason {
            Reason::ReferencedBy { via, .. } | Reason::BindsSubjectOf { via, .. } => via.clone(),
            Reason::IncludedNamespace => String::new(),
        })
        .collect()
}

fn pod_spec() -> Value {
    json!({
        "serviceAccountName": "web",
        "priorityClassName": "business-critical",
        "runtimeClassName": "gvisor",
        "containers": [{"name": "web", "image": "nginx:1.27"}],
        "volumes": [
            {"name": "cache", "emptyDir": {}},
            {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "local-ssd",
                "resources": {"requests": {"storage": "1Gi"}}
            }}}}
        ]
    })
}

#[test]
fn pod_brings_its_classes() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "0d6c2b0e-1111-4b6e-9c1a-3f9f7f6f0a01"},
        "spec": pod_spec(),
        "status": {"phase": "Running"}
    });
    let deps = references(&well_known::PODS, &pod);
    assert_eq!(
        targets(&deps),
        [
            "priorityclasses.scheduling.k8s.io/business-critical",
            "runtimeclasses.node.k8s.io/gvisor",
            "storageclasses.storage.k8s.io/local-ssd"
        ]
    );
    assert_eq!(
        vias(&deps),
        [
            "spec.priorityClassName",
            "spec.runtimeClassName",
            "spec.volumes[1].ephemeral.volumeClaimTemplate.spec.storageClassName"
        ]
    );
    let Reason::ReferencedBy { object, .. } = &deps[0].reason else {
        panic!("{:?}", deps[0].reason)
    };
    assert_eq!(object.to_string(), "pods/shop/web-0");
    assert!(deps.iter().all(|d| !d.may_be_absent));
}

#[test]
fn pod_without_classes_has_no_dependencies() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "plain", "namespace": "shop"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    });
    assert!(references(&well_known::PODS, &pod).is_empty());
}

#[test]
fn workload_templates_bring_classes_even_at_zero_replicas() {
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()});
    let cases = [
        (
            well_known::DEPLOYMENTS,
            json!({"replicas": 0, "selector": {}, "template": template}),
            "spec.template.spec",
        ),
        (
            well_known::REPLICA_SETS,
            json!({"replicas": 0, "template": template}),
            "spec.template.spec",
        ),
        (
            well_known::DAEMON_SETS,
            json!({"template": template}),
            "spec.template.spec",
        ),
        (
            well_known::JOBS,
            json!({"template": template}),
            "spec.template.spec",
        ),
        (
            well_known::REPLICATION_CONTROLLERS,
            json!({"replicas": 0, "template": template}),
            "spec.template.spec",
        ),
        (
            well_known::CRON_JOBS,
            json!({"schedule": "*/5 * * * *", "suspend": true, "jobTemplate": {"spec": {"template": template}}}),
            "spec.jobTemplate.spec.template.spec",
        ),
    ];
    for (gr, spec, path) in cases {
        let object = json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec});
        let deps = references(&gr, &object);
        assert_eq!(
            vias(&deps)[..2],
            [
                format!("{path}.priorityClassName"),
                format!("{path}.runtimeClassName")
            ],
            "{gr}"
        );
        assert_eq!(deps.len(), 3, "{gr}: {deps:?}");
    }
    let pod_template = json!({"metadata": {"name": "t", "namespace": "shop"}, "template": template});
    assert_eq!(
        vias(&references(&well_known::POD_TEMPLATES, &pod_template))[0],
        "template.spec.priorityClassName"
    );
}

#[test]
fn statefulset_claim_templates_bring_storage_classes() {
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {
            "replicas": 0,
            "serviceName": "db",
            "template": {"spec": {"containers": [{"name": "pg", "image": "postgres:17"}]}},
            "volumeClaimTemplates": [
                {"metadata": {"name": "data"}, "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"]}},
                {"metadata": {"name": "wal"}, "spec": {"accessModes": ["ReadWriteOnce"]}},
                {"metadata": {"name": "logs"}, "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"]}}
            ]
        }
    });
    let deps = references(&well_known::STATEFUL_SETS, &sts);
    assert_eq!(targets(&deps), ["storageclasses.storage.k8s.io/fast"]);
    assert_eq!(
        vias(&deps),
        ["spec.volumeClaimTemplates[0].spec.storageClassName"]
    );
}

#[test]
fn bound_claim_brings_its_volume_and_class() {
    let pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-db-0", "namespace": "shop"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "10Gi"}},
            "storageClassName": "fast",
            "volumeMode": "Filesystem",
            "volumeName": "pvc-5f0c1d9e-7a3b-4c1e-9a65-2b8f1f0c0d11"
        },
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}}
    });
    let deps = references(&well_known::PERSISTENT_VOLUME_CLAIMS, &pvc);
    assert_eq!(
        targets(&deps),
        [
            "persistentvolumes/pvc-5f0c1d9e-7a3b-4c1e-9a65-2b8f1f0c0d11",
            "storageclasses.storage.k8s.io/fast"
        ]
    );
    assert_eq!(vias(&deps), ["spec.volumeName", "spec.storageClassName"]);
    assert!(!deps[0].may_be_absent);
}

#[test]
fn pending_claim_has_no_volume_and_prebound_volume_may_be_absent() {
    let pending = json!({
        "metadata": {"name": "c", "namespace": "shop"},
        "spec": {"storageClassName": "fast"},
        "status": {"phase": "Pending"}
    });
    assert_eq!(
        targets(&references(&well_known::PERSISTENT_VOLUME_CLAIMS, &pending)),
        ["storageclasses.storage.k8s.io/fast"]
    );
    let prebound = json!({
        "metadata": {"name": "c", "namespace": "shop"},
        "spec": {"storageClassName": "", "volumeName": "nfs-share"},
        "status": {"phase": "Pending"}
    });
    let deps = references(&well_known::PERSISTENT_VOLUME_CLAIMS, &prebound);
    assert_eq!(targets(&deps), ["persistentvolumes/nfs-share"]);
    assert!(deps[0].may_be_absent);
}

#[test]
fn legacy_storage_class_annotation_is_used_only_without_the_field() {
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "old-pv", "annotations": {"volume.beta.kubernetes.io/storage-class": "slow"}},
        "spec": {"capacity": {"storage": "5Gi"}, "hostPath": {"path": "/data"}}
    });
    let deps = references(&well_known::PERSISTENT_VOLUMES, &pv);
    assert_eq!(targets(&deps), ["storageclasses.storage.k8s.io/slow"]);
    assert_eq!(
        vias(&deps),
        ["metadata.annotations[volume.beta.kubernetes.io/storage-class]"]
    );
    let Reason::ReferencedBy { object, .. } = &deps[0].reason else {
        panic!()
    };
    assert_eq!(object.namespace, None);
    let explicit_none = json!({
        "metadata": {"name": "pv2", "annotations": {"volume.beta.kubernetes.io/storage-class": "slow"}},
        "spec": {"storageClassName": ""}
    });
    assert!(references(&well_known::PERSISTENT_VOLUMES, &explicit_none).is_empty());
}

#[test]
fn ingress_class_field_and_legacy_annotation() {
    let with_field = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"kubernetes.io/ingress.class": "traefik"}},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "shop.example.com"}]}
    });
    let deps = references(&well_known::INGRESSES, &with_field);
    assert_eq!(targets(&deps), ["ingressclasses.networking.k8s.io/nginx"]);
    assert!(!deps[0].may_be_absent);

    let legacy = json!({
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"kubernetes.io/ingress.class": "traefik"}},
        "spec": {"rules": []}
    });
    let deps = references(&well_known::INGRESSES, &legacy);
    assert_eq!(targets(&deps), ["ingressclasses.networking.k8s.io/traefik"]);
    assert!(deps[0].may_be_absent);

    let classless = json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {}});
    assert!(references(&well_known::INGRESSES, &classless).is_empty());
}

#[test]
fn role_binding_to_cluster_role_brings_it() {
    let rb = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "web-view", "namespace": "shop"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}]
    });
    let deps = references(&well_known::ROLE_BINDINGS, &rb);
    assert_eq!(targets(&deps), ["clusterroles.rbac.authorization.k8s.io/view"]);
    assert_eq!(vias(&deps), ["roleRef.name"]);

    let to_role = json!({
        "metadata": {"name": "web-edit", "namespace": "shop"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "editor"}
    });
    assert!(references(&well_known::ROLE_BINDINGS, &to_role).is_empty());
}

fn crb(name: &str, role: &str, subjects: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects
    })
}

fn namespaces(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn cluster_role_binding_of_an_included_service_account_is_collected() {
    let binding = crb(
        "shop-operator",
        "shop-operator-role",
        json!([
            {"kind": "ServiceAccount", "name": "operator", "namespace": "other"},
            {"kind": "ServiceAccount", "name": "operator", "namespace": "shop"}
        ]),
    );
    let reason = binding_subject_in(&binding, &namespaces(&["shop"]));
    assert_eq!(
        reason,
        Some(Reason::BindsSubjectOf {
            namespace: "shop".into(),
            subject: "ServiceAccount shop/operator".into(),
            via: "subjects[1]".into()
        })
    );
}

#[test]
fn cluster_role_binding_of_another_namespace_is_not_collected() {
    let binding = crb(
        "monitoring-reader",
        "view",
        json!([{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]),
    );
    assert_eq!(
        binding_subject_in(&binding, &namespaces(&["shop", "shop-db"])),
        None
    );

    let mut collector = DependencyCollector::new(["shop"]);
    assert!(!collector.consider_cluster_role_binding(&binding));
    let targets: Vec<String> = collector
        .into_dependencies()
        .iter()
        .map(|d| d.target.to_string())
        .collect();
    assert_eq!(targets, ["namespaces/shop"], "neither the binding nor its role");
}

#[test]
fn service_account_user_and_group_subjects() {
    let included = namespaces(&["shop"]);
    let user = crb(
        "u",
        "r",
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:serviceaccount:shop:builder"}]),
    );
    assert!(matches!(
        binding_subject_in(&user, &included),
        Some(Reason::BindsSubjectOf { subject, .. }) if subject == "User system:serviceaccount:shop:builder"
    ));
    let group = crb(
        "g",
        "r",
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:serviceaccounts:shop"}]),
    );
    assert!(binding_subject_in(&group, &included).is_some());

    for subjects in [
        json!([{"kind": "User", "name": "system:serviceaccount:other:builder"}]),
        json!([{"kind": "User", "name": "alice@example.com"}]),
        json!([{"kind": "Group", "name": "system:serviceaccounts"}]),
        json!([{"kind": "Group", "name": "system:authenticated"}]),
        json!([{"kind": "Group", "name": "system:serviceaccounts:other"}]),
        // A prefix of an included namespace's name is another namespace.
        json!([{"kind": "ServiceAccount", "name": "x", "namespace": "sho"}]),
        json!([]),
    ] {
        assert_eq!(
            binding_subject_in(&crb("n", "r", subjects.clone()), &included),
            None,
            "{subjects}"
        );
    }
    assert_eq!(
        binding_subject_in(&json!({"metadata": {"name": "no-subjects"}}), &included),
        None
    );
}

#[test]
fn custom_resource_brings_its_crd() {
    let cert = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "shop-tls", "namespace": "shop"},
        "spec": {"secretName": "shop-tls", "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}
    });
    let gr = GroupResource::new("cert-manager.io", "certificates");
    let deps = references(&gr, &cert);
    assert_eq!(
        targets(&deps),
        ["customresourcedefinitions.apiextensions.k8s.io/certificates.cert-manager.io"]
    );
    assert!(deps[0].may_be_absent);
    // Built-in types have no CRD.
    let cm = json!({"metadata": {"name": "c", "namespace": "shop"}, "data": {}});
    assert!(references(&GroupResource::new("", "configmaps"), &cm).is_empty());
}

#[test]
fn collector_follows_dependencies_transitively_and_deduplicates() {
    let mut c = DependencyCollector::new(["shop", "shop-db"]);
    let pvc = |name: &str, volume: &str| {
        json!({
            "metadata": {"name": name, "namespace": "shop-db"},
            "spec": {"storageClassName": "fast", "volumeName": volume},
            "status": {"phase": "Bound"}
        })
    };
    c.observe(&well_known::PERSISTENT_VOLUME_CLAIMS, &pvc("data-0", "pv-a"));
    c.observe(&well_known::PERSISTENT_VOLUME_CLAIMS, &pvc("data-1", "pv-b"));

    let mut fetched = Vec::new();
    while let Some(next) = c.next_to_fetch() {
        fetched.push(next.to_string());
        if next.resource == well_known::PERSISTENT_VOLUMES {
            // The PV fetched from the cluster names a StorageClass of its own.
            let pv = json!({"metadata": {"name": next.name}, "spec": {"storageClassName": "fast-retain"}});
            c.observe(&next.resource, &pv);
        }
    }
    assert_eq!(
        fetched,
        [
            "namespaces/shop",
            "namespaces/shop-db",
            "persistentvolumes/pv-a",
            "storageclasses.storage.k8s.io/fast",
            "persistentvolumes/pv-b",
            "storageclasses.storage.k8s.io/fast-retain",
        ]
    );
    assert_eq!(c.len(), 6);
    let deps = c.into_dependencies();
    let fast = deps
        .iter()
        .find(|d| d.target.name == "fast")
        .unwrap_or_else(|| panic!("fast"));
    assert!(
        matches!(&fast.reason, Reason::ReferencedBy { object, .. } if object.name == "data-0"),
        "first reason kept: {:?}",
        fast.reason
    );
    let retain = deps
        .iter()
        .find(|d| d.target.name == "fast-retain")
        .unwrap_or_else(|| panic!("fast-retain"));
    assert!(
        matches!(&retain.reason, Reason::ReferencedBy { object, .. } if object.to_string() == "persistentvolumes/pv-a")
    );
}

#[test]
fn collector_accepts_binding_and_queues_only_its_role() {
    let mut c = DependencyCollector::new(["shop"]);
    assert_eq!(
        c.next_to_fetch().map(|r| r.to_string()).as_deref(),
        Some("namespaces/shop")
    );
    let binding = crb(
        "shop-operator",
        "shop-operator-role",
        json!([{"kind": "ServiceAccount", "name": "operator", "namespace": "shop"}]),
    );
    assert!(c.consider_cluster_role_binding(&binding));
    assert!(c.consider_cluster_role_binding(&binding), "idempotent");
    assert_eq!(
        c.next_to_fetch().map(|r| r.to_string()).as_deref(),
        Some("clusterroles.rbac.authorization.k8s.io/shop-operator-role")
    );
    assert_eq!(c.next_to_fetch(), None, "the binding itself is not fetched again");
    assert!(c.contains(&ClusterObjectRef::new(
        well_known::CLUSTER_ROLE_BINDINGS,
        "shop-operator"
    )));
    let deps = c.into_dependencies();
    assert_eq!(deps.len(), 3);
    let role = deps
        .iter()
        .find(|d| d.target.resource == well_known::CLUSTER_ROLES)
        .unwrap_or_else(|| panic!("role"));
    assert!(
        matches!(&role.reason, Reason::ReferencedBy { object, via } if object.to_string() == "clusterrolebindings.rbac.authorization.k8s.io/shop-operator" && via == "roleRef.name")
    );
}

#[test]
fn required_reason_replaces_a_tolerant_one() {
    let mut c = DependencyCollector::new(Vec::<String>::new());
    let legacy = json!({
        "metadata": {"name": "a", "namespace": "shop", "annotations": {"kubernetes.io/ingress.class": "nginx"}},
        "spec": {}
    });
    let modern =
        json!({"metadata": {"name": "b", "namespace": "shop"}, "spec": {"ingressClassName": "nginx"}});
    c.observe(&well_known::INGRESSES, &legacy);
    c.observe(&well_known::INGRESSES, &modern);
    let deps = c.into_dependencies();
    assert_eq!(deps.len(), 1);
    assert!(!deps[0].may_be_absent);
    assert!(matches!(&deps[0].reason, Reason::ReferencedBy { object, .. } if object.name == "b"));
}

#[test]
fn reasons_serialize_for_the_manifest() {
    let deps = references(
        &well_known::PERSISTENT_VOLUME_CLAIMS,
        &json!({"metadata": {"name": "data", "namespace": "shop"}, "spec": {"volumeName": "pv-a"}, "status": {"phase": "Bound"}}),
    );
    let value = serde_json::to_value(&deps[0]).unwrap_or_default();
    assert_eq!(
        value,
        json!({
            "target": {"resource": "persistentvolumes", "name": "pv-a"},
            "reason": {"reason": "referencedBy", "object": "persistentvolumeclaims/shop/data", "via": "spec.volumeName"}
        })
    );
    let back: Dependency = serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, deps[0]);
    assert_eq!(
        deps[0].reason.to_string(),
        "spec.volumeName of persistentvolumeclaims/shop/data"
    );
}

#[test]
fn malformed_objects_yield_nothing_instead_of_failing() {
    for object in [
        json!(null),
        json!("text"),
        json!({"spec": "not an object"}),
        json!({"spec": {"template": {"spec": {"volumes": "nope", "priorityClassName": 7}}}}),
    ] {
        for gr in [
            well_known::PODS,
            well_known::DEPLOYMENTS,
            well_known::PERSISTENT_VOLUME_CLAIMS,
            well_known::INGRESSES,
        ] {
            assert!(references(&gr, &object).is_empty(), "{gr} {object}");
        }
    }
}

#[test]
fn the_object_that_pulled_a_dependency_in() {
    let included = namespaces(&["shop"]);
    let by_account = crb(
        "a",
        "r",
        json!([{"kind": "ServiceAccount", "name": "builder", "namespace": "shop"}]),
    );
    let by_user = crb(
        "u",
        "r",
        json!([{"kind": "User", "name": "system:serviceaccount:shop:builder"}]),
    );
    for binding in [by_account, by_user] {
        let reason = binding_subject_in(&binding, &included).unwrap_or_else(|| panic!("binds"));
        let of = reason.pulled_in_by().unwrap_or_else(|| panic!("pulled in"));
        assert_eq!(of.to_string(), "serviceaccounts/shop/builder");
        assert_eq!(reason.via(), Some("subjects[0]"));
    }
    let by_group = crb(
        "g",
        "r",
        json!([{"kind": "Group", "name": "system:serviceaccounts:shop"}]),
    );
    let reason = binding_subject_in(&by_group, &included).unwrap_or_else(|| panic!("binds"));
    assert_eq!(
        reason.pulled_in_by().map(|o| o.to_string()).as_deref(),
        Some("namespaces/shop")
    );
    assert_eq!(Reason::IncludedNamespace.pulled_in_by(), None);

    let mut collector = DependencyCollector::new(["shop"]);
    let target = ClusterObjectRef::new(well_known::NAMESPACES, "shop");
    assert!(matches!(
        collector.reason_of(&target),
        Some((Reason::IncludedNamespace, false))
    ));
    assert_eq!(collector.next_to_fetch(), Some(target));
}

/// An object with every field any rule reads, in every place a rule looks.
fn kitchen_sink() -> Value {
    let pod_spec = json!({
        "priorityClassName": "p", "runtimeClassName": "r",
        "volumes": [{"ephemeral": {"volumeClaimTemplate": {"spec": {"storageClassName": "s"}}}}]
    });
    json!({
        "metadata": {"name": "x", "namespace": "shop", "annotations": {
            BETA_STORAGE_CLASS_ANNOTATION: "s", LEGACY_INGRESS_CLASS_ANNOTATION: "i"}},
        "spec": {
            "priorityClassName": "p", "runtimeClassName": "r", "volumes": pod_spec["volumes"].clone(),
            "volumeName": "v", "storageClassName": "s", "ingressClassName": "i",
            "template": {"spec": pod_spec.clone()},
            "jobTemplate": {"spec": {"template": {"spec": pod_spec.clone()}}},
            "volumeClaimTemplates": [{"spec": {"storageClassName": "s"}}]
        },
        "template": {"spec": pod_spec},
        "status": {"phase": "Bound"},
        "roleRef": {"kind": "ClusterRole", "name": "c"},
        "subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": "shop"}]
    })
}

#[test]
fn reads_fields_of_agrees_with_the_rules() {
    let sink = kitchen_sink();
    let identity_only = json!({"metadata": {"name": "x", "namespace": "shop"}});
    let mut types: Vec<GroupResource> = [
        "pods",
        "podtemplates",
        "replicationcontrollers",
        "persistentvolumeclaims",
        "persistentvolumes",
        "configmaps",
        "secrets",
        "services",
        "serviceaccounts",
        "limitranges",
        "resourcequotas",
        "events",
        "deployments.apps",
        "replicasets.apps",
        "daemonsets.apps",
        "statefulsets.apps",
        "controllerrevisions.apps",
        "jobs.batch",
        "cronjobs.batch",
        "ingresses.networking.k8s.io",
        "ingresses.extensions",
        "networkpolicies.networking.k8s.io",
        "ingressclasses.networking.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "roles.rbac.authorization.k8s.io",
        "horizontalpodautoscalers.autoscaling",
        "poddisruptionbudgets.policy",
        "leases.coordination.k8s.io",
        "webapps.example.kpromote.io",
        "certificates.cert-manager.io",
    ]
    .iter()
    .map(|s| s.parse().unwrap_or_else(|e| panic!("{e}")))
    .collect();
    types.sort();
    for gr in &types {
        let from_sink = references(gr, &sink);
        let from_identity = references(gr, &identity_only);
        if reads_fields_of(gr) {
            assert!(
                from_sink.len() > from_identity.len(),
                "{gr}: the rules read no field"
            );
        } else {
            assert_eq!(
                from_sink, from_identity,
                "{gr}: the rules read fields; update reads_fields_of"
            );
        }
    }
}
