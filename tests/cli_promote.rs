//! `kpromote promote` and `kpromote rollback` as an operator runs them: precheck, backup,
//! promote, rollback; the dry run; and a precheck that fails without touching anything.
#![allow(clippy::unwrap_used)]

mod support;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use support::apps;
use support::pair::Pair;

fn kpromote(pair: &Pair, cmd: &str, extra: &[&str]) -> (bool, String, String) {
    let out = pair.kpromote(cmd).args(extra).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_operator_promotes_and_rolls_back_from_the_command_line() {
    let (pair, before) = Pair::start_with_nginx().await;
    let (cp_client, member_client) = (pair.cp.clone(), pair.member.clone());
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = format!("--backup-dir={}", dir.path().display());

    // A precheck failure reports every problem and changes nothing.
    let (ok, _, err) = kpromote(
        &pair,
        "promote",
        &[
            "-n",
            "missing",
            "-n",
            "kube-system",
            "--exclude",
            "nosuchthings",
            &dir_arg,
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("namespace missing does not exist in the member cluster"),
        "{err}"
    );
    assert!(err.contains("kube-system is a system namespace"), "{err}");
    assert!(err.contains("nosuchthings"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no archive after a failed precheck"
    );
    assert_eq!(apps::snapshot(&member_client, "nginx-test").await, before);

    // The dry run prints the plan and changes nothing.
    let (ok, out, err) = kpromote(&pair, "promote", &["-n", "nginx-test", "--dry-run", &dir_arg]);
    assert!(ok, "{err}");
    assert!(
        out.contains("deployments.apps/nginx-test/nginx") && out.contains("restore into the control plane"),
        "{out}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a dry run keeps no archive"
    );
    assert!(!support::present(Api::<Namespace>::all(cp_client.clone()), "nginx-test").await);
    assert!(support::has_deployment(&member_client, "nginx-test", "nginx").await);

    let (ok, out, err) = kpromote(
        &pair,
        "promote",
        &["-n", "nginx-test", &dir_arg, "--policy-name=ops"],
    );
    assert!(ok, "{err}\n{out}");
    let archive = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("ops")
                && p.extension().is_some_and(|e| e == "zst")
        })
        .unwrap();
    assert!(support::has_deployment(&cp_client, "nginx-test", "nginx").await);
    assert!(!support::has_deployment(&member_client, "nginx-test", "nginx").await);
    assert_eq!(
        apps::snapshot(&member_client, "nginx-test").await.pods,
        before.pods
    );

    let (ok, out, err) = kpromote(
        &pair,
        "rollback",
        &[&format!("--archive={}", archive.display()), "-o", "json"],
    );
    assert!(ok, "{err}\n{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["deleted"]["first"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "namespaces/nginx-test"),
        "{report}"
    );
    assert_eq!(
        apps::snapshot(&member_client, "nginx-test").await.pods,
        before.pods
    );
    support::wait_namespace_gone(&cp_client, "nginx-test").await;
}

#[tokio::test]
async fn a_failed_promote_reports_every_failure_of_the_level_and_the_automatic_rollbacks_report() {
    let pair = Pair::start().await;
    let ns = "nginx-test";
    apps::nginx_example(&pair.member, &pair.kubelet).await;
    apps::create(
        &pair.member,
        serde_json::json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": ns },
            "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "web" } },
                      "template": { "metadata": { "labels": { "app": "web" } },
                                    "spec": { "containers": [{ "name": "main", "image": "busybox:1.36" }] } } } }),
    )
    .await;
    apps::run_pods(&pair.member, &pair.kubelet, ns, "app=web", 1).await;
    let before = apps::snapshot(&pair.member, ns).await;
    // The control plane refuses every ReplicaSet in the namespace: both of the restore's
    // ReplicaSets fail in the same level, after the member was detached.
    for object in [
        serde_json::json!({ "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": "refuse-replicasets" },
            "spec": { "failurePolicy": "Fail",
                      "matchConstraints": { "resourceRules": [{ "apiGroups": ["apps"], "apiVersions": ["v1"],
                          "operations": ["CREATE"], "resources": ["replicasets"] }] },
                      "validations": [{ "expression": "false", "message": "test: no ReplicaSets here" }] } }),
        serde_json::json!({ "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": "refuse-replicasets" },
            "spec": { "policyName": "refuse-replicasets", "validationActions": ["Deny"],
                      "matchResources": { "namespaceSelector": { "matchLabels": {
                          "kubernetes.io/metadata.name": ns } } } } }),
    ] {
        apps::create(&pair.cp, object).await;
    }
    // Admission policies take effect once the API server's informers have them.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;

    let dir = tempfile::tempdir().unwrap();
    let dir_arg = format!("--backup-dir={}", dir.path().display());
    // A fixed pause instead of the barrier, whose sentinel ReplicaSet would be refused first.
    let (ok, out, err) = kpromote(
        &pair,
        "promote",
        &["-n", ns, &dir_arg, "-o", "json", "--settle-seconds=1"],
    );
    assert!(!ok, "promote succeeded\n{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{e}: stdout is not the JSON report:\n{out}\n{err}"));
    assert_eq!(report["failed"], 2, "{report:#}");
    let failures: Vec<&str> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    for rs in before.replicasets.keys() {
        assert!(
            failures
                .iter()
                .any(|f| f.contains(rs.as_str()) && f.contains("no ReplicaSets here")),
            "{rs} not among the failures: {failures:#?}"
        );
    }
    assert!(
        err.contains("2 objects failed in one level of the restore"),
        "{err}"
    );
    // The automatic rollback's own report: what it unmarked and removed.
    let rollback = &report["rollback"];
    assert_eq!(
        rollback["unmarked"]["count"].as_u64(),
        Some(before.pods.len() as u64),
        "{report:#}"
    );
    assert!(
        rollback["deleted"]["first"]
            .as_array()
            .is_some_and(|d| d.iter().any(|k| k == "namespaces/nginx-test")),
        "{report:#}"
    );
    pair.assert_rolled_back(ns, &before, "automatic rollback").await;
}

/// Issue 23: a namespace holding a Secret promoted with `--encrypt-to` and rolled back, both
/// from the sealed archive. The Secret reaches the control plane intact although the archive
/// holds it only encrypted; a rollback without the identity stops before touching anything.
#[tokio::test]
async fn a_namespace_with_a_secret_promotes_and_rolls_back_from_a_sealed_archive() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use std::io::Read as _;
    const MARKER: &str = "kpromote-sealed-cluster-marker-e5a9";

    let (pair, before) = Pair::start_with_nginx().await;
    let (cp_client, member_client) = (pair.cp.clone(), pair.member.clone());
    let secrets = Api::<Secret>::namespaced(member_client.clone(), "nginx-test");
    let mut secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db-credentials", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration":
                format!("{{\"stringData\":{{\"password\":\"{MARKER}\"}}}}")}},
        "type": "Opaque",
    }))
    .unwrap();
    secret.data = Some([("password".to_owned(), ByteString(MARKER.as_bytes().to_vec()))].into());
    secrets.create(&Default::default(), &secret).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key.txt");
    let made = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap_or_else(|e| panic!("the reference `age-keygen` is needed (Debian package `age`): {e}"));
    assert!(made.status.success());
    let public = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap().trim().to_owned();
    let key_arg = format!("--identity={}", key.display());
    let dir_arg = format!("--backup-dir={}", dir.path().display());

    let (ok, out, err) = kpromote(
        &pair,
        "promote",
        &["-n", "nginx-test", &dir_arg, "--encrypt-to", &public, &key_arg],
    );
    assert!(ok, "{err}\n{out}");
    let archive = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "zst"))
        .unwrap();
    // Sealed: the whole decompressed stream holds the value neither plain nor in base64.
    let mut stream = Vec::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(&archive).unwrap())
        .unwrap()
        .read_to_end(&mut stream)
        .unwrap();
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(MARKER);
    for needle in [MARKER, encoded.as_str()] {
        assert!(
            !stream.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} in the archive"
        );
    }
    // Restored from the sealed entry, the Secret's value is the member's.
    let restored = Api::<Secret>::namespaced(cp_client.clone(), "nginx-test")
        .get("db-credentials")
        .await
        .unwrap();
    assert_eq!(restored.data.unwrap()["password"].0, MARKER.as_bytes());
    assert_eq!(
        apps::snapshot(&member_client, "nginx-test").await.pods,
        before.pods
    );

    // No identity: refused before anything changes, naming the recipient and the flag.
    let archive_arg = format!("--archive={}", archive.display());
    let (ok, _, err) = kpromote(&pair, "rollback", &[&archive_arg]);
    assert!(!ok);
    assert!(err.contains(&public) && err.contains("--identity"), "{err}");
    assert!(support::has_deployment(&cp_client, "nginx-test", "nginx").await);
    assert!(!support::has_deployment(&member_client, "nginx-test", "nginx").await);

    let (ok, out, err) = kpromote(&pair, "rollback", &[&archive_arg, &key_arg, "-o", "json"]);
    assert!(ok, "{err}\n{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["unreadable"].as_array().is_none_or(|u| u.is_empty()),
        "every sealed entry was read: {report}"
    );
    assert_eq!(
        apps::snapshot(&member_client, "nginx-test").await.pods,
        before.pods
    );
    assert!(support::has_deployment(&member_client, "nginx-test", "nginx").await);
    let kept = secrets.get("db-credentials").await.unwrap();
    assert_eq!(kept.data.unwrap()["password"].0, MARKER.as_bytes());
    support::wait_namespace_gone(&cp_client, "nginx-test").await;
}
