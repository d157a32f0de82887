use std::collections::BTreeSet;

use super::*;
use kpromote_model::object_key::ObjectKey;
use kpromote_model::ownership::OwnershipGraph;
use kpromote_model::ownership::testing::record;
use kpromote_model::ownership::{ObjectRecord, OwnerReference};
use proptest::prelude::*;

fn key(s: &str) -> ObjectKey {
    s.parse().expect("test key")
}

fn shop() -> OwnershipGraph {
    OwnershipGraph::build([
        record(
            "customresourcedefinitions.apiextensions.k8s.io/databases.example.com",
            "CustomResourceDefinition",
            "crd",
            &[],
        ),
        record("namespaces/shop", "Namespace", "ns", &[]),
        record("storageclasses.storage.k8s.io/fast", "StorageClass", "sc", &[]),
        record("persistentvolumes/pv-1", "PersistentVolume", "pv", &[]),
        record(
            "clusterroles.rbac.authorization.k8s.io/reader",
            "ClusterRole",
            "cr",
            &[],
        ),
        record(
            "clusterrolebindings.rbac.authorization.k8s.io/reader",
            "ClusterRoleBinding",
            "crb",
            &[],
        ),
        record("serviceaccounts/shop/web", "ServiceAccount", "sa", &[]),
        record("configmaps/shop/cfg", "ConfigMap", "cm", &[]),
        record(
            "persistentvolumeclaims/shop/data-db-0",
            "PersistentVolumeClaim",
            "pvc",
            &[],
        ),
        record("roles.rbac.authorization.k8s.io/shop/r", "Role", "role", &[]),
        record(
            "rolebindings.rbac.authorization.k8s.io/shop/r",
            "RoleBinding",
            "rb",
            &[],
        ),
        record("databases.example.com/shop/db", "Database", "db", &[]),
        record(
            "statefulsets.apps/shop/db",
            "StatefulSet",
            "sts",
            &[("example.com/v1", "Database", "db:db")],
        ),
        record(
            "controllerrevisions.apps/shop/db-1",
            "ControllerRevision",
            "rev",
            &[("apps/v1", "StatefulSet", "sts:db")],
        ),
        record(
            "pods/shop/db-0",
            "Pod",
            "p0",
            &[("apps/v1", "StatefulSet", "sts:db")],
        ),
        record("deployments.apps/shop/web", "Deployment", "dep", &[]),
        record(
            "replicasets.apps/shop/web-1",
            "ReplicaSet",
            "rs1",
            &[("apps/v1", "Deployment", "dep:web")],
        ),
        record(
            "replicasets.apps/shop/web-0",
            "ReplicaSet",
            "rs0",
            &[("apps/v1", "Deployment", "dep:web")],
        ),
        record(
            "pods/shop/web-1-a",
            "Pod",
            "p1",
            &[("apps/v1", "ReplicaSet", "rs1:web-1")],
        ),
        record("services/shop/web", "Service", "svc", &[]),
        record(
            "endpointslices.discovery.k8s.io/shop/web-x",
            "EndpointSlice",
            "es",
            &[("v1", "Service", "svc:web")],
        ),
        record(
            "horizontalpodautoscalers.autoscaling/shop/web",
            "HorizontalPodAutoscaler",
            "hpa",
            &[],
        ),
        record("widgets.example.com/shop/w", "Widget", "w", &[]),
        record("gadgets.example.com/shop/g", "Gadget", "g", &[]),
    ])
    .expect("graph")
}

fn level_texts(plan: &RestorePlan) -> Vec<String> {
    plan.levels
        .iter()
        .map(|l| {
            let names: Vec<String> = l.objects.iter().map(ToString::to_string).collect();
            format!("{:?}/{}/{}: {}", l.phase, l.height, l.tier, names.join(" "))
        })
        .collect()
}

#[test]
fn restore_plan_of_a_namespace() {
    let plan = RestorePlan::build(&shop());
    assert_eq!(
        level_texts(&plan),
        [
            "CustomResourceDefinitions/0/CustomResourceDefinitions: customresourcedefinitions.apiextensions.k8s.io/databases.example.com",
            "Namespaces/0/Namespaces: namespaces/shop",
            "Objects/0/ClusterPrerequisites: clusterroles.rbac.authorization.k8s.io/reader storageclasses.storage.k8s.io/fast",
            "Objects/0/ClusterBindings: persistentvolumes/pv-1 clusterrolebindings.rbac.authorization.k8s.io/reader",
            "Objects/0/PodPrerequisites: configmaps/shop/cfg persistentvolumeclaims/shop/data-db-0 serviceaccounts/shop/web roles.rbac.authorization.k8s.io/shop/r",
            "Objects/0/RoleBindings: rolebindings.rbac.authorization.k8s.io/shop/r",
            "Objects/0/Pods: pods/shop/db-0 pods/shop/web-1-a",
            "Objects/0/PodControllers: controllerrevisions.apps/shop/db-1 replicasets.apps/shop/web-0",
            "Objects/0/Traffic: endpointslices.discovery.k8s.io/shop/web-x",
            "Objects/0/WorkloadPolicies: horizontalpodautoscalers.autoscaling/shop/web",
            "Objects/0/Other(gadgets.example.com): gadgets.example.com/shop/g",
            "Objects/0/Other(widgets.example.com): widgets.example.com/shop/w",
            "Objects/1/PodControllers: replicasets.apps/shop/web-1",
            "Objects/1/Workloads: statefulsets.apps/shop/db",
            "Objects/1/Traffic: services/shop/web",
            "Objects/2/Workloads: deployments.apps/shop/web",
            "Objects/2/Other(databases.example.com): databases.example.com/shop/db",
        ]
    );
    assert_eq!(plan.levels[0].wait_after, Some(WaitPoint::CrdsEstablished));
    assert_eq!(plan.levels[1].wait_after, Some(WaitPoint::DefaultServiceAccounts));
    assert!(plan.levels[2..].iter().all(|l| l.wait_after.is_none()));
    assert_eq!(plan.len(), 24);
    let reason = plan.levels[6].reason();
    assert!(
        reason.starts_with("height 0 (owns nothing in the set); the leaves"),
        "{reason}"
    );
    assert!(reason.contains("pods: the leaves"), "{reason}");
}

#[test]
fn velero_kind_order_is_kept_among_equal_heights() {
    // Velero's facts: pods before replicasets; persistentvolumes before claims.
    let plan = RestorePlan::build(&shop());
    let at = |k: &str| plan.level_of(&key(k)).expect("planned");
    assert!(at("persistentvolumes/pv-1") < at("persistentvolumeclaims/shop/data-db-0"));
    assert!(at("pods/shop/web-1-a") < at("replicasets.apps/shop/web-0"));
    assert!(at("serviceaccounts/shop/web") < at("pods/shop/db-0"));
}

#[test]
fn build_for_keeps_full_graph_heights() {
    let g = shop();
    let keys = [
        key("deployments.apps/shop/web"),
        key("replicasets.apps/shop/web-1"),
        key("statefulsets.apps/shop/db"),
    ];
    let plan = RestorePlan::build_for(&g, &keys).expect("plan");
    assert_eq!(
        level_texts(&plan),
        [
            "Objects/1/PodControllers: replicasets.apps/shop/web-1",
            "Objects/1/Workloads: statefulsets.apps/shop/db",
            "Objects/2/Workloads: deployments.apps/shop/web",
        ]
    );
    assert_eq!(
        RestorePlan::build_for(&g, &[key("pods/shop/none")]),
        Err(PlanError::UnknownObject(key("pods/shop/none")))
    );
}

#[test]
fn every_listed_kind_has_one_row_and_a_reason() {
    let mut seen = BTreeSet::new();
    for row in RESTORE_ORDER {
        assert!(
            seen.insert(row.group_resource()),
            "{} listed twice",
            row.group_resource()
        );
        assert!(!row.reason.is_empty());
        assert!(!row.tier.reason().is_empty());
    }
}

#[test]
fn detach_plan_is_top_down_and_spares_non_controllers() {
    let g = shop();
    let plan = DetachPlan::build(&g, &BTreeSet::new());
    let levels: Vec<(usize, Vec<String>)> = plan
        .levels
        .iter()
        .map(|l| (l.height, l.objects.iter().map(ToString::to_string).collect()))
        .collect();
    assert_eq!(
        levels,
        [
            (
                2,
                vec![
                    "deployments.apps/shop/web".to_owned(),
                    "databases.example.com/shop/db".to_owned()
                ]
            ),
            (
                1,
                vec![
                    "replicasets.apps/shop/web-1".to_owned(),
                    "statefulsets.apps/shop/db".to_owned()
                ]
            ),
            (0, vec!["replicasets.apps/shop/web-0".to_owned()]),
        ]
    );
    // The Service owns its EndpointSlice, but deleting it would cut traffic.
    assert!(!plan.contains(&key("services/shop/web")));
    // Custom resources owning no pod or workload stay.
    assert!(!plan.contains(&key("widgets.example.com/shop/w")));
}

#[test]
fn detach_plan_leaves_skipped_objects_alone() {
    let g = OwnershipGraph::build([
        record("cronjobs.batch/shop/nightly", "CronJob", "cj", &[]),
        record(
            "jobs.batch/shop/nightly-1",
            "Job",
            "j1",
            &[("batch/v1", "CronJob", "cj:nightly")],
        ),
        record(
            "pods/shop/nightly-1-x",
            "Pod",
            "p1",
            &[("batch/v1", "Job", "j1:nightly-1")],
        ),
        record("reports.example.com/shop/r", "Report", "r", &[]),
        record(
            "jobs.batch/shop/report",
            "Job",
            "j2",
            &[("example.com/v1", "Report", "r:r")],
        ),
        record(
            "pods/shop/report-x",
            "Pod",
            "p2",
            &[("batch/v1", "Job", "j2:report")],
        ),
    ])
    .expect("graph");
    let skipped: BTreeSet<ObjectKey> = [
        "jobs.batch/shop/nightly-1",
        "pods/shop/nightly-1-x",
        "jobs.batch/shop/report",
        "pods/shop/report-x",
    ]
    .into_iter()
    .map(key)
    .collect();
    let plan = DetachPlan::build(&g, &skipped);
    // The CronJob goes (it would keep starting Jobs in the member), its completed Job stays;
    // the Report owns only skipped objects and stays.
    assert_eq!(
        plan.objects().cloned().collect::<Vec<_>>(),
        [key("cronjobs.batch/shop/nightly")]
    );
}

#[test]
fn kosmos_daemonsets_and_cronjobs_not_detached() {
    // Kosmos detached only StatefulSets, Deployments, ReplicaSets and the direct owners of
    // StatefulSets and Deployments: a DaemonSet or CronJob kept running its controller in
    // the member next to its copy in the control plane.
    let g = OwnershipGraph::build([
        record("daemonsets.apps/shop/agent", "DaemonSet", "ds", &[]),
        record(
            "pods/shop/agent-x",
            "Pod",
            "p",
            &[("apps/v1", "DaemonSet", "ds:agent")],
        ),
        record("cronjobs.batch/shop/nightly", "CronJob", "cj", &[]),
    ])
    .expect("graph");
    let plan = DetachPlan::build(&g, &BTreeSet::new());
    assert_eq!(
        plan.objects().cloned().collect::<Vec<_>>(),
        [
            key("daemonsets.apps/shop/agent"),
            key("cronjobs.batch/shop/nightly")
        ]
    );
}

#[test]
fn kosmos_only_direct_owners_of_workloads_detached() {
    // Kosmos appended only the direct owners of StatefulSets and Deployments. An operator
    // two levels up kept running and re-created what it lost.
    let g = OwnershipGraph::build([
        record("platforms.example.com/shop/p", "Platform", "pl", &[]),
        record(
            "apps.example.com/shop/a",
            "App",
            "app",
            &[("example.com/v1", "Platform", "pl:p")],
        ),
        record(
            "deployments.apps/shop/web",
            "Deployment",
            "dep",
            &[("example.com/v1", "App", "app:a")],
        ),
    ])
    .expect("graph");
    let plan = DetachPlan::build(&g, &BTreeSet::new());
    assert_eq!(
        plan.objects().cloned().collect::<Vec<_>>(),
        [
            key("platforms.example.com/shop/p"),
            key("apps.example.com/shop/a"),
            key("deployments.apps/shop/web")
        ]
    );
}

#[test]
fn kosmos_rollback_deletes_preexisting_cluster_objects() {
    // Kosmos's rollback deleted every backed-up object from the control plane, shared
    // ClusterRoles included. The teardown holds only what the caller says promote created.
    let g = shop();
    let created: BTreeSet<ObjectKey> = g
        .keys()
        .filter(|k| !k.is("rbac.authorization.k8s.io", "clusterroles") && !k.is(CRD_GROUP, CRD_RESOURCE))
        .cloned()
        .collect();
    let plan = TeardownPlan::build(&g, &created).expect("plan");
    assert!(
        !plan
            .objects()
            .any(|k| k.resource == "clusterroles" || k.resource == CRD_RESOURCE)
    );
    assert_eq!(plan.objects().count(), created.len());
    let steps: Vec<(TeardownStep, usize, usize)> = plan
        .levels
        .iter()
        .map(|l| (l.step, l.height, l.objects.len()))
        .collect();
    assert_eq!(
        steps,
        [
            (TeardownStep::Owners, 2, 2),
            (TeardownStep::Owners, 1, 3),
            (TeardownStep::Pods, 0, 2),
            (TeardownStep::Rest, 0, 14),
            (TeardownStep::Namespaces, 0, 1),
        ]
    );
}

#[test]
fn teardown_removes_crds_promote_created_last() {
    let g = shop();
    let created: BTreeSet<ObjectKey> = g.keys().cloned().collect();
    let plan = TeardownPlan::build(&g, &created).expect("plan");
    let last = plan.levels.last().expect("levels");
    assert_eq!(last.step, TeardownStep::CustomResourceDefinitions);
    let unknown: BTreeSet<ObjectKey> = [key("pods/x/y")].into_iter().collect();
    assert_eq!(
        TeardownPlan::build(&g, &unknown),
        Err(PlanError::UnknownObject(key("pods/x/y")))
    );
}

#[test]
fn builtin_groups() {
    for g in [
        "",
        "apps",
        "batch",
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "policy",
    ] {
        assert!(is_builtin_group(g), "{g}");
    }
    for g in [
        "example.com",
        "kosmos.io",
        "cert-manager.io",
        "k8s.io.example.com",
    ] {
        assert!(!is_builtin_group(g), "{g}");
    }
}

/// Kinds random objects are drawn from: (group, resource, kind, cluster-scoped).
const KINDS: &[(&str, &str, &str, bool)] = &[
    ("", "pods", "Pod", false),
    ("apps", "replicasets", "ReplicaSet", false),
    ("apps", "deployments", "Deployment", false),
    ("apps", "statefulsets", "StatefulSet", false),
    ("apps", "controllerrevisions", "ControllerRevision", false),
    ("batch", "cronjobs", "CronJob", false),
    ("", "configmaps", "ConfigMap", false),
    ("", "secrets", "Secret", false),
    ("", "services", "Service", false),
    ("", "persistentvolumeclaims", "PersistentVolumeClaim", false),
    ("example.com", "widgets", "Widget", false),
    ("example.com", "tenants", "Tenant", true),
    ("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", true),
    ("", "persistentvolumes", "PersistentVolume", true),
    ("", "namespaces", "Namespace", true),
    (CRD_GROUP, CRD_RESOURCE, "CustomResourceDefinition", true),
];

prop_compose! {
    /// Up to 40 objects with random kinds, namespaces and acyclic ownerReferences (an owner
    /// has a higher index). Some references cross namespaces and end up dangling.
    fn random_graph()(specs in proptest::collection::vec(
        (0..KINDS.len(), 0usize..3, proptest::collection::vec(0usize..40, 0..3)), 1..40))
        -> Vec<ObjectRecord>
    {
        let namespaces = ["a", "b", "c"];
        let mut records: Vec<ObjectRecord> = specs.iter().enumerate().map(|(i, (k, ns, _))| {
            let (group, resource, kind, cluster) = KINDS[*k];
            let name = match resource {
                "namespaces" => namespaces[*ns].to_owned(),
                CRD_RESOURCE => "widgets.example.com".to_owned(),
                _ => format!("o{i}"),
            };
            let key = if cluster { ObjectKey::cluster(group, resource, &name) }
                      else { ObjectKey::namespaced(group, resource, namespaces[*ns], &name) };
            let api_version = if group.is_empty() { "v1".to_owned() } else { format!("{group}/v1") };
            ObjectRecord { key, uid: Some(format!("u{i}")), api_version, kind: kind.to_owned(), owner_references: vec![] }
        }).collect();
        // One namespace or CRD per name.
        let mut seen = BTreeSet::new();
        let keep: Vec<bool> = records.iter().map(|r| seen.insert(r.key.clone())).collect();
        for (i, (_, _, owners)) in specs.iter().enumerate() {
            for &o in owners {
                if o > i && o < records.len() && keep[o] {
                    let owner = &records[o];
                    let reference = OwnerReference {
                        api_version: owner.api_version.clone(), kind: owner.kind.clone(),
                        name: owner.key.name.clone(), uid: owner.uid.clone().unwrap_or_default(),
                        ..OwnerReference::default()
                    };
                    records[i].owner_references.push(reference);
                }
            }
        }
        records.into_iter().zip(keep).filter(|(_, k)| *k).map(|(r, _)| r).collect()
    }
}

#[test]
fn custom_resource_in_a_k8s_io_group_owning_a_workload_is_detached() {
    // A CRD may live in a `*.k8s.io` group (gateway.networking.k8s.io,
    // snapshot.storage.k8s.io): its operator would re-create the Deployment it lost.
    let g = OwnershipGraph::build([
        record("gateways.gateway.networking.k8s.io/shop/gw", "Gateway", "gw", &[]),
        record(
            "deployments.apps/shop/gw-proxy",
            "Deployment",
            "dep",
            &[("gateway.networking.k8s.io/v1", "Gateway", "gw:gw")],
        ),
        record(
            "replicasets.apps/shop/gw-proxy-1",
            "ReplicaSet",
            "rs",
            &[("apps/v1", "Deployment", "dep:gw-proxy")],
        ),
        record(
            "pods/shop/gw-proxy-1-a",
            "Pod",
            "pod",
            &[("apps/v1", "ReplicaSet", "rs:gw-proxy-1")],
        ),
    ])
    .expect("graph");
    let plan = DetachPlan::build(&g, &BTreeSet::new());
    assert!(
        plan.contains(&key("gateways.gateway.networking.k8s.io/shop/gw")),
        "{plan:?}"
    );
    assert_eq!(
        plan.levels[0].objects,
        vec![key("gateways.gateway.networking.k8s.io/shop/gw")]
    );
    assert!(!is_builtin_group("gateway.networking.k8s.io"));
    assert!(is_builtin_group("networking.k8s.io") && is_builtin_group(""));
}

proptest! {
    #[test]
    fn restore_plan_orders_dependents_namespaces_and_crds_first(records in random_graph()) {
        let g = OwnershipGraph::build(records).expect("acyclic");
        let plan = RestorePlan::build(&g);
        // Every input exactly once.
        let planned: Vec<&ObjectKey> = plan.objects().collect();
        let unique: BTreeSet<&ObjectKey> = planned.iter().copied().collect();
        prop_assert_eq!(planned.len(), g.len());
        prop_assert_eq!(unique.len(), g.len());
        for k in g.keys() {
            let at = plan.level_of(k).expect("planned");
            for owner in g.owners(k) {
                let owner_at = plan.level_of(owner).expect("planned");
                if Phase::of(owner) >= Phase::of(k) {
                    prop_assert!(at < owner_at, "{} (level {}) not before its owner {} (level {})", k, at, owner, owner_at);
                }
            }
            if let Some(ns) = &k.namespace
                && let Some(ns_at) = plan.level_of(&ObjectKey::cluster("", "namespaces", ns))
            {
                prop_assert!(ns_at < at, "{} not after its namespace", k);
            }
            if Phase::of(k) != Phase::CustomResourceDefinitions {
                let crd = ObjectKey::cluster(CRD_GROUP, CRD_RESOURCE, &format!("{}.{}", k.resource, k.group));
                if let Some(crd_at) = plan.level_of(&crd) {
                    prop_assert!(crd_at < at, "{} not after its CRD", k);
                }
            }
        }
        // Levels are sorted and hold no ownership edge.
        for level in &plan.levels {
            prop_assert!(level.objects.windows(2).all(|w| w[0] < w[1]));
            for k in &level.objects {
                prop_assert!(g.owners(k).all(|o| level.objects.binary_search(o).is_err()));
            }
        }
    }

    #[test]
    fn detach_plan_is_owners_first_and_never_pods(records in random_graph()) {
        let g = OwnershipGraph::build(records).expect("acyclic");
        let plan = DetachPlan::build(&g, &BTreeSet::new());
        let order: Vec<&ObjectKey> = plan.objects().collect();
        for (i, k) in order.iter().enumerate() {
            prop_assert!(!k.is("", "pods") && !k.is("", "namespaces") && !k.is("", "services"));
            prop_assert!(is_detached_workload(k) || !is_builtin_group(&k.group));
            // No detached ancestor comes later.
            for a in g.ancestors(k) {
                if let Some(j) = order.iter().position(|x| *x == a) {
                    prop_assert!(j < i, "{} deleted after its dependent {}", a, k);
                }
            }
        }
    }

    /// Rollback plans from the upper part of the graph (owners and workloads) and the pods'
    /// owners streamed past: the same detach plan, and the same re-creation order, as from
    /// the whole graph.
    #[test]
    fn the_upper_part_detaches_and_recreates_as_the_whole(records in random_graph(), skip in proptest::collection::vec(any::<bool>(), 40)) {
        let whole = OwnershipGraph::build(records.clone()).expect("acyclic");
        let skipped: BTreeSet<ObjectKey> =
            whole.keys().zip(skip.iter().cycle()).filter(|(_, s)| **s).map(|(k, _)| k.clone()).collect();
        let (upper, outside): (Vec<ObjectRecord>, Vec<ObjectRecord>) = records
            .into_iter()
            .partition(|r| whole.dependents(&r.key).next().is_some() || is_detached_workload(&r.key));
        let part = OwnershipGraph::build_upper(upper, outside.clone()).expect("acyclic");
        let pod_owners: BTreeSet<ObjectKey> = outside
            .iter()
            .filter(|r| r.key.is("", "pods") && !skipped.contains(&r.key))
            .flat_map(|r| part.owners_of(r).cloned().collect::<Vec<_>>())
            .collect();
        let part_skipped: BTreeSet<ObjectKey> = skipped.iter().filter(|k| part.contains(k)).cloned().collect();
        let expected = DetachPlan::build(&whole, &skipped);
        prop_assert_eq!(&DetachPlan::build_with(&part, &part_skipped, &pod_owners), &expected);
        prop_assert_eq!(
            RestorePlan::build_for(&part, expected.objects()).expect("plan"),
            RestorePlan::build_for(&whole, expected.objects()).expect("plan")
        );
    }

    #[test]
    fn teardown_holds_exactly_the_created_objects(records in random_graph(), pick in proptest::collection::vec(any::<bool>(), 40)) {
        let g = OwnershipGraph::build(records).expect("acyclic");
        let created: BTreeSet<ObjectKey> =
            g.keys().zip(pick.iter().cycle()).filter(|(_, p)| **p).map(|(k, _)| k.clone()).collect();
        let plan = TeardownPlan::build(&g, &created).expect("plan");
        let order: Vec<&ObjectKey> = plan.objects().collect();
        prop_assert_eq!(order.len(), created.len());
        for (i, k) in order.iter().enumerate() {
            prop_assert!(created.contains(*k));
            // Owners before their dependents, except pods, namespaces and CRDs which have their own steps.
            if matches!(Phase::of(k), Phase::Objects | Phase::AdmissionPolicies) && !k.is("", "pods") {
                for d in g.dependents(k) {
                    if let Some(j) = order.iter().position(|x| *x == d) {
                        prop_assert!(i < j, "{} torn down after its dependent {}", k, d);
                    }
                }
            }
        }
    }
}
