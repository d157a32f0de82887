//! The backup Job manifests (`deploy/backup-job/`): they parse into Kubernetes types and say
//! what they must (the volume at /data/backup, `kpromote backup`, read-only RBAC); a real API
//! server accepts them; and the Job's own arguments, run as its ServiceAccount, back up the
//! namespace — so the RBAC is sufficient as well as read-only.
//!
//! Needs the test environment binaries (`tests/testenv/build.sh`).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kpromote_archive::ArchiveReader;
use kpromote_testenv::{Binaries, Cluster};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::apps;

const DIR: &str = "deploy/backup-job";
const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

fn manifests() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let mut docs = Vec::new();
    for file in ["namespace.yaml", "rbac.yaml", "pvc.yaml", "job.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let parsed: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
        docs.extend(parsed);
    }
    docs
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

/// The namespaces the Job backs up, from its arguments.
fn job_namespaces(job: &Job) -> Vec<String> {
    let args = job_args(job);
    let mut namespaces = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some(ns) = arg.strip_prefix("--namespace=") {
            namespaces.push(ns.to_owned());
        } else if arg == "--namespace" || arg == "-n" {
            namespaces.push(iter.next().unwrap().clone());
        }
    }
    namespaces
}

fn job_args(job: &Job) -> Vec<String> {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers[0].args.clone().unwrap()
}

#[test]
fn the_manifests_say_what_a_backup_job_needs_and_grant_only_reading() {
    let docs = manifests();
    let jobs: Vec<Job> = of_kind(&docs, "Job");
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    let args = job_args(job);
    assert_eq!(args[0], "backup", "the Job runs `kpromote backup`");
    assert!(args.contains(&"--backup-dir=/data/backup".to_owned()), "{args:?}");
    assert!(!job_namespaces(job).is_empty());

    // The volume at /data/backup is the manifests' PVC.
    let (mount, claim) = support::claim_mounted_at(pod, container, "/data/backup");
    assert_ne!(mount.read_only, Some(true));
    let pvcs: Vec<PersistentVolumeClaim> = of_kind(&docs, "PersistentVolumeClaim");
    assert!(
        pvcs.iter()
            .any(|p| p.metadata.name.as_deref() == Some(claim)
                && p.metadata.namespace == job.metadata.namespace)
    );

    // Its ServiceAccount is the one the RBAC binds.
    let account = pod.service_account_name.clone().unwrap();
    let accounts: Vec<ServiceAccount> = of_kind(&docs, "ServiceAccount");
    assert!(
        accounts
            .iter()
            .any(|a| a.metadata.name.as_deref() == Some(account.as_str()))
    );
    let is_ours = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects
            .iter()
            .flatten()
            .all(|s| s.kind == "ServiceAccount" && s.name == account && s.namespace == job.metadata.namespace)
    };

    // Read-only: every rule of every role grants get/list/watch and nothing else.
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    assert!(!roles.is_empty());
    assert!(
        of_kind::<Value>(&docs, "Role").is_empty(),
        "only ClusterRoles, bound per namespace"
    );
    for role in &roles {
        for rule in role.rules.iter().flatten() {
            for verb in &rule.verbs {
                assert!(
                    READ_VERBS.contains(&verb.as_str()),
                    "{:?} grants {verb}",
                    role.metadata.name
                );
            }
        }
    }
    // The wildcard reader is only ever bound per namespace, in the namespaces the Job backs up.
    let wildcard: BTreeSet<String> = roles
        .iter()
        .filter(|r| {
            r.rules
                .iter()
                .flatten()
                .any(|rule| rule.resources.iter().flatten().any(|x| x == "*"))
        })
        .map(|r| r.metadata.name.clone().unwrap())
        .collect();
    let crbs: Vec<ClusterRoleBinding> = of_kind(&docs, "ClusterRoleBinding");
    for crb in &crbs {
        assert!(
            !wildcard.contains(&crb.role_ref.name),
            "{} binds a wildcard role cluster-wide",
            crb.role_ref.name
        );
        assert!(is_ours(&crb.subjects));
    }
    let rbs: Vec<RoleBinding> = of_kind(&docs, "RoleBinding");
    let bound: BTreeSet<String> = rbs
        .iter()
        .inspect(|rb| assert!(is_ours(&rb.subjects)))
        .filter(|rb| wildcard.contains(&rb.role_ref.name))
        .map(|rb| rb.metadata.namespace.clone().unwrap())
        .collect();
    let wanted: BTreeSet<String> = job_namespaces(job).into_iter().collect();
    assert_eq!(
        bound, wanted,
        "one namespace-reader RoleBinding per backed-up namespace"
    );
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(Binaries::locate().unwrap().path("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn a_real_api_server_accepts_the_manifests_and_the_job_backs_up_with_them() {
    let cluster = Cluster::start("backupjob").await.unwrap();
    let client = cluster.client().await.unwrap();
    let kubeconfig = cluster.kubeconfig_path().to_owned();
    // The namespace the Job backs up, with a claim bound to a volume of a class, so that the
    // cluster-scoped dependency reads are exercised too.
    apps::create(
        &client,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "shop" } }),
    )
    .await;
    for obj in [
        json!({ "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": { "name": "manual" },
                "provisioner": "kubernetes.io/no-provisioner" }),
        json!({ "apiVersion": "v1", "kind": "PersistentVolume", "metadata": { "name": "shop-data" },
                "spec": { "capacity": { "storage": "1Gi" }, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                          "claimRef": { "namespace": "shop", "name": "data" }, "hostPath": { "path": "/tmp/shop" } } }),
        json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "data", "namespace": "shop" },
                "spec": { "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                          "resources": { "requests": { "storage": "1Gi" } } } }),
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "credentials", "namespace": "shop" },
                "stringData": { "password": "hunter2" } }),
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "app", "namespace": "shop" } }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": { "name": "shop-app-view" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view" },
                "subjects": [{ "kind": "ServiceAccount", "name": "app", "namespace": "shop" }] }),
    ] {
        apps::create(&client, obj).await;
    }
    // The backup follows the claim to its volume only once the volume controller has bound it
    // (`spec.volumeName`): on a loaded machine that takes a moment.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "shop");
    support::wait_for(
        "claim shop/data bound",
        std::time::Duration::from_secs(90),
        || async {
            let claim = claims.get("data").await.unwrap();
            (claim.status.and_then(|s| s.phase).as_deref() == Some("Bound")).then_some(())
        },
    )
    .await;

    // The API server accepts every manifest (server-side dry run first, then for real; the
    // namespace must exist for a dry run of what goes in it).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let dir_arg = dir.display().to_string();
    let namespace_arg = dir.join("namespace.yaml").display().to_string();
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", &namespace_arg]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-k", &dir_arg, "--dry-run=server"]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-k", &dir_arg]);
    assert!(ok, "{out}");
    for created in [
        "job.batch/kpromote-backup",
        "persistentvolumeclaim/kpromote-backup",
        "rolebinding.rbac.authorization.k8s.io/kpromote-backup",
    ] {
        assert!(out.contains(created), "{out}");
    }

    // What the ServiceAccount may do: read the included namespace and the dependencies; write
    // nothing; read no other namespace.
    let sa = "--as=system:serviceaccount:kpromote-system:kpromote-backup";
    for (allowed, args) in [
        (true, vec!["list", "secrets", "-n", "shop"]),
        (true, vec!["get", "deployments.apps", "-n", "shop"]),
        (true, vec!["list", "clusterrolebindings"]),
        (true, vec!["get", "persistentvolumes"]),
        (true, vec!["get", "namespaces"]),
        (false, vec!["list", "secrets", "-n", "kube-system"]),
        (false, vec!["list", "secrets", "--all-namespaces"]),
        (false, vec!["create", "configmaps", "-n", "shop"]),
        (false, vec!["delete", "pods", "-n", "shop"]),
        (false, vec!["patch", "deployments.apps", "-n", "shop"]),
        (false, vec!["watch", "pods", "-n", "shop"]),
        (false, vec!["list", "persistentvolumes"]),
        (false, vec!["create", "namespaces"]),
    ] {
        let mut full = vec!["auth", "can-i"];
        full.extend(args.iter().copied());
        full.push(sa);
        let (yes, out) = kubectl(&kubeconfig, &full);
        assert_eq!(yes, allowed, "can-i {args:?}: {out}");
    }

    // The Job's arguments, run as its ServiceAccount (no kubelet runs here to start the pod
    // itself), with the backup directory pointed at a temporary directory.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "kpromote-system");
    let request: TokenRequest = serde_json::from_value(json!({ "spec": { "audiences": [] } })).unwrap();
    let token = sas
        .create_token_request("kpromote-backup", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let work = tempfile::tempdir().unwrap();
    let sa_kubeconfig = work.path().join("kubeconfig");
    let yaml: String = cluster
        .kubeconfig_yaml()
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("token: ") {
                format!("    token: {token}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&sa_kubeconfig, yaml).unwrap();
    let out_dir = work.path().join("backup");
    std::fs::create_dir(&out_dir).unwrap();
    let job: Job = of_kind(&manifests(), "Job").remove(0);
    let args: Vec<String> = job_args(&job)
        .into_iter()
        .map(|a| {
            if a.starts_with("--backup-dir=") {
                format!("--backup-dir={}", out_dir.display())
            } else {
                a
            }
        })
        .collect();
    let run = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .args(&args)
        .arg(format!("--kubeconfig={}", sa_kubeconfig.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let archives: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let name = archives[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("shop-nightly2") && name.ends_with(".tar.zst"),
        "{name}"
    );
    assert!(stdout.contains(&name), "{stdout}");
    let reader = ArchiveReader::open(&archives[0]).unwrap();
    assert!(reader.verify().is_fully_verified());
    let paths: BTreeSet<String> = reader.records().unwrap().map(|r| r.unwrap().path).collect();
    for expected in [
        "resources/secrets/namespaces/shop/credentials.json",
        "resources/persistentvolumeclaims/namespaces/shop/data.json",
        "resources/persistentvolumes/cluster/shop-data.json",
        "resources/storageclasses.storage.k8s.io/cluster/manual.json",
        "resources/clusterrolebindings.rbac.authorization.k8s.io/cluster/shop-app-view.json",
        "resources/clusterroles.rbac.authorization.k8s.io/cluster/view.json",
        "resources/namespaces/cluster/shop.json",
    ] {
        assert!(paths.contains(expected), "{expected} missing from {paths:?}");
    }
    assert_eq!(reader.facts().unwrap().source.name, "member-cluster1");
}
