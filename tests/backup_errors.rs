//! Bad input and hostile conditions: each is a clear error naming what to fix, and no file is
//! ever left under the archive's final name (nor a temporary one).
//!
//! Needs the test environment binaries (`tests/testenv/build.sh`).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc, clippy::too_many_lines)]

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kpromote_core::backup::{self, BackupError, BackupRequest};
use kpromote_testenv::Cluster;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::{apps, wait_for};

const NS: &str = "shop";

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn request(dir: &Path) -> BackupRequest {
    BackupRequest::new("errors", [NS])
        .backup_dir(dir)
        .file_name("out.tar.zst")
}

/// A kubeconfig for the same server with another bearer token.
fn kubeconfig_with_token(cluster: &Cluster, token: &str) -> String {
    cluster
        .kubeconfig_yaml()
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("token: ") {
                format!("    token: {token}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

async fn client_from(kubeconfig: &str) -> Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A token of ServiceAccount `name` in `namespace`, from the TokenRequest API.
async fn service_account_token(client: &Client, namespace: &str, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request: TokenRequest = serde_json::from_value(json!({ "spec": { "audiences": [] } })).unwrap();
    let answer = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap();
    answer.status.unwrap().token
}

/// An unreachable server is a discovery error saying so, from the library and from the command.
#[tokio::test]
async fn an_unreachable_cluster_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:1\n\
         users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: u\n\
         current-context: gone\n";
    let client = client_from(kubeconfig).await;
    let err = backup::run(&client, &request(dir.path())).await.unwrap_err();
    assert!(matches!(err, BackupError::Discovery(_)), "{err}");
    assert!(err.to_string().contains("reachable"), "{err}");

    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        // `--output-dir`, the former name of `--backup-dir`, still works (scripts and Jobs use it).
        .args(["backup", "-n", NS, "--output-dir"])
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unreachable") && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
    assert_eq!(files_in(dir.path()), ["kubeconfig"]);
}

#[tokio::test]
async fn bad_input_and_hostile_conditions_are_clear_errors_that_leave_no_file() {
    let cluster = Cluster::start("errors").await.unwrap();
    let client = cluster.client().await.unwrap();
    apps::create(
        &client,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } }),
    )
    .await;
    // Enough incompressible data that the archive is far larger than the file size limit below.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..120 {
        let blob: String = (0..256)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                format!("{:016x}", seed)
            })
            .collect();
        apps::create(
            &client,
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("blob-{i}"), "namespace": NS },
                    "data": { "blob": blob } }),
        )
        .await;
    }
    apps::create(
        &client,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "credentials", "namespace": NS },
                "stringData": { "password": "hunter2" } }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();

    // A namespace that does not exist.
    let err = backup::run(&client, &BackupRequest::new("p", [NS, "nope"]).backup_dir(&out))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackupError::NamespaceNotFound { namespace } if namespace == "nope"),
        "{err}"
    );
    assert!(err.to_string().contains("--namespace"), "{err}");

    // Exclusions the server does not serve, or that are not namespaced: every bad name listed.
    let err = backup::run(
        &client,
        &request(&out).excluded(["events", "frobnicators", "nodes"]),
    )
    .await
    .unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, BackupError::InvalidExclusions(_)), "{text}");
    assert!(
        text.contains("`frobnicators`") && text.contains("does not serve"),
        "{text}"
    );
    assert!(
        text.contains("`nodes`") && text.contains("cluster-scoped"),
        "{text}"
    );
    // The dry run checks the same.
    let err = backup::plan(&client, &request(&out).excluded(["frobnicators"]))
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::InvalidExclusions(_)), "{err}");

    // A backup directory that does not exist.
    let err = backup::run(&client, &request(&dir.path().join("missing")))
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::BackupDir { .. }), "{err}");
    assert!(err.to_string().contains("--backup-dir"), "{err}");

    // A read-only backup directory. Permission bits do not bind root, so as root the directory
    // is made immutable as well.
    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    make_read_only(&read_only);
    let err = backup::run(&client, &request(&read_only)).await.unwrap_err();
    undo_read_only(&read_only);
    assert!(matches!(err, BackupError::Archive { .. }), "{err}");
    let text = format!("{err}");
    assert!(
        text.contains("nothing was left") && text.contains("permissions"),
        "{text}"
    );
    assert!(files_in(&read_only).is_empty());

    // Reading forbidden: a ServiceAccount that may read everything in the core group but
    // Secrets. The backup stops at the Secrets list; an archive without them would restore a
    // broken application.
    for obj in [
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "backup-system" } }),
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "no-secrets", "namespace": "backup-system" } }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": { "name": "no-secrets" },
                "rules": [
                    { "apiGroups": [""], "verbs": ["get", "list"], "resources": ["namespaces", "pods", "configmaps",
                      "services", "serviceaccounts", "persistentvolumeclaims", "persistentvolumes", "podtemplates",
                      "replicationcontrollers", "limitranges", "resourcequotas", "endpoints", "events"] },
                    // Not "*": that would include the core group, and so Secrets.
                    { "apiGroups": ["apps", "batch", "autoscaling", "policy", "networking.k8s.io",
                        "rbac.authorization.k8s.io", "storage.k8s.io", "scheduling.k8s.io", "node.k8s.io",
                        "apiextensions.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "events.k8s.io",
                        "resource.k8s.io"], "verbs": ["get", "list"], "resources": ["*"] } ] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": { "name": "no-secrets" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "no-secrets" },
                "subjects": [{ "kind": "ServiceAccount", "name": "no-secrets", "namespace": "backup-system" }] }),
    ] {
        apps::create(&client, obj).await;
    }
    let token = service_account_token(&client, "backup-system", "no-secrets").await;
    let limited = client_from(&kubeconfig_with_token(&cluster, &token)).await;
    let err = backup::run(&limited, &request(&out)).await.unwrap_err();
    match &err {
        BackupError::Forbidden { verb, what, .. } => {
            assert_eq!((*verb, what.as_str()), ("list", "secrets in namespace shop"));
        }
        other => panic!("expected Forbidden, got {other}"),
    }
    assert!(err.to_string().contains("deploy/backup-job/rbac.yaml"), "{err}");
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));

    // Disk full, as the operating system reports it mid-archive: the command runs with a file
    // size limit (RLIMIT_FSIZE, SIGXFSZ ignored so the write fails with an error instead of
    // killing the process), far below the archive's size.
    let kubeconfig = dir.path().join("kubeconfig");
    let backup_args = |out: &std::path::Path, kubeconfig: &std::path::Path| {
        let mut args: Vec<std::ffi::OsString> = ["backup", "-n", NS, "--name", "full.tar.zst"]
            .map(Into::into)
            .to_vec();
        args.extend(["--backup-dir".into(), out.into()]);
        args.extend(["--kubeconfig".into(), kubeconfig.into()]);
        args
    };
    std::fs::write(&kubeconfig, cluster.kubeconfig_yaml()).unwrap();
    let full = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 4 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_kpromote"))
        .args(backup_args(&out, &kubeconfig))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success(), "{stderr}");
    assert!(
        stderr.contains("writing the archive") && stderr.contains("nothing was left"),
        "{stderr}"
    );
    assert!(
        stderr.contains("File too large") || stderr.contains("too large"),
        "{stderr}"
    );
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));

    // The same command without the limit succeeds (the limit was the only problem).
    let ok = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .args(backup_args(&out, &kubeconfig))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(files_in(&out), ["full.tar.zst"]);
    assert!(std::fs::metadata(out.join("full.tar.zst")).unwrap().len() > 16 * 1024);

    // A namespace being deleted (held by a finalizer of one of its objects).
    apps::create(
        &client,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "leaving" } }),
    )
    .await;
    apps::create(
        &client,
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "held", "namespace": "leaving",
                "finalizers": ["example.com/hold"] } }),
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete("leaving", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "namespace leaving terminating",
        std::time::Duration::from_secs(30),
        || async {
            namespaces
                .get("leaving")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .map(|_| ())
        },
    )
    .await;
    let err = backup::run(&client, &BackupRequest::new("p", ["leaving"]).backup_dir(&out))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackupError::NamespaceTerminating { namespace, .. } if namespace == "leaving"),
        "{err}"
    );
    assert_eq!(files_in(&out), ["full.tar.zst"]);
}

/// The error and its causes, as the command prints them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

fn make_read_only(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(dir.join(".probe"), b"").is_ok() {
        std::fs::remove_file(dir.join(".probe")).unwrap();
        let status = Command::new("chattr").arg("+i").arg(dir).status().unwrap();
        assert!(
            status.success(),
            "chattr +i failed: running as root needs CAP_LINUX_IMMUTABLE"
        );
        assert!(
            std::fs::write(dir.join(".probe"), b"").is_err(),
            "the directory is still writable"
        );
    }
}

fn undo_read_only(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = Command::new("chattr").arg("-i").arg(dir).status();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}
