//! The Helm chart (`charts/kpromote`): `helm lint` passes, `deploy/` is what the chart renders
//! (one source), every option renders objects their Kubernetes types accept, and the README's
//! `helm install` line against a real control plane yields a controller that — started with the
//! installed Deployment's arguments and environment and its service account's token —
//! promotes and rolls back the design's example.
#![allow(clippy::unwrap_used)]

mod controller_env;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use kube::Api;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::Value;
use support::apps;
use support::pair::Pair;

use controller_env::Env;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/kpromote");
/// The command that builds Helm (with the Kubernetes binaries), named when it is missing.
const BUILD_COMMAND: &str = "tests/testenv/build.sh";

/// The Helm binary `tests/testenv/helm/build.sh` made: `$KPROMOTE_HELM`, else
/// `helm/current/bin/helm` in its cache. Missing, the test fails with the command that builds it.
fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("KPROMOTE_HELM") {
        return PathBuf::from(path);
    }
    let cache = match std::env::var_os("KPROMOTE_HELM_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
            .join("kpromote/helm"),
    };
    let path = cache.join("current/bin/helm");
    assert!(
        path.is_file(),
        "Helm not found at {}: build it with `{BUILD_COMMAND}` (or tests/testenv/helm/build.sh), \
         or set KPROMOTE_HELM to a helm binary",
        path.display()
    );
    path
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(args: &[&str]) -> Vec<Value> {
    let out = Command::new(helm())
        .args(["template", "kpromote", CHART, "--namespace", "kosmos-system"])
        .args(args)
        .output()
        .unwrap();
    let text = ok(out, "helm template");
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn helm_lint_passes_with_the_defaults_and_with_every_option() {
    ok(
        Command::new(helm())
            .args(["lint", "--strict", CHART])
            .output()
            .unwrap(),
        "helm lint",
    );
    ok(
        Command::new(helm())
            .args(["lint", "--strict", CHART, "--namespace", "kosmos-system"])
            .args(every_option())
            .output()
            .unwrap(),
        "helm lint with every option",
    );
}

fn every_option() -> Vec<&'static str> {
    vec![
        "--set=replicaCount=1",
        "--set=leaderElection.enabled=false",
        "--set=image.tag=test",
        "--set=backup.existingClaim=archives",
        "--set=controller.memberKubeconfigSecret=member-kubeconfig",
        "--set=nodeSelector.kosmos\\.io/role=control",
        "--set=tolerations[0].key=dedicated,tolerations[0].operator=Exists",
        "--set=metrics.serviceMonitor.enabled=true",
        "--set=metrics.serviceMonitor.labels.release=prometheus",
        "--set=rbac.extraRules[0].apiGroups[0]=example.com,rbac.extraRules[0].resources[0]=widgets,rbac.extraRules[0].verbs[0]=get",
        "--set=encryption.recipients[0]=age1rl3ufzakwpv6220304jlfcsaptvsvk092ef84sdxhm7wantz0smsvk77hy",
        "--set=encryption.identitySecret=kpromote-age",
    ]
}

#[test]
fn deploy_is_what_the_chart_renders() {
    let out_dir = tempfile::tempdir().unwrap();
    ok(
        Command::new("bash")
            .arg(format!("{ROOT}/deploy/generate.sh"))
            .arg(out_dir.path())
            .env("KPROMOTE_HELM", helm())
            .output()
            .unwrap(),
        "deploy/generate.sh",
    );
    let yaml_files = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        names
    };
    let committed = PathBuf::from(format!("{ROOT}/deploy/controller"));
    assert_eq!(
        yaml_files(out_dir.path()),
        yaml_files(&committed),
        "deploy/controller/ is stale: run deploy/generate.sh"
    );
    for name in yaml_files(&committed) {
        let fresh = std::fs::read_to_string(out_dir.path().join(&name)).unwrap();
        let old = std::fs::read_to_string(committed.join(&name)).unwrap();
        assert!(
            fresh == old,
            "deploy/controller/{name} is stale: run deploy/generate.sh"
        );
    }
    let chart_crds = std::fs::read_to_string(format!("{CHART}/crds/kpromote.yaml")).unwrap();
    let crds = std::fs::read_to_string(format!("{ROOT}/deploy/crds.yaml")).unwrap();
    assert!(
        chart_crds == crds,
        "charts/kpromote/crds is stale: run deploy/generate.sh"
    );
    let chart = std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap();
    let chart: Value = serde_saphyr::from_str(&chart).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn every_option_renders_objects_their_types_accept() {
    let docs = render(&every_option());
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        // Kinds with a k8s-openapi type must keep every field through it (nothing misspelled).
        let back = match kind {
            "Deployment" => typed::<Deployment>(doc),
            "ServiceAccount" => typed::<k8s_openapi::api::core::v1::ServiceAccount>(doc),
            "Service" => typed::<k8s_openapi::api::core::v1::Service>(doc),
            "ClusterRole" => typed::<k8s_openapi::api::rbac::v1::ClusterRole>(doc),
            "ClusterRoleBinding" => typed::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(doc),
            "Role" => typed::<k8s_openapi::api::rbac::v1::Role>(doc),
            "RoleBinding" => typed::<k8s_openapi::api::rbac::v1::RoleBinding>(doc),
            // No k8s-openapi type: checked field by field below.
            "ServiceMonitor" => doc.clone(),
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(&back, doc, "{kind}: a field did not survive its type");
    }
    assert!(
        find(&docs, "PersistentVolumeClaim").is_empty(),
        "an existing claim is used"
    );
    let deployment: Deployment = serde_json::from_value(find(&docs, "Deployment")[0].clone()).unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.node_selector
            .unwrap()
            .get("kosmos.io/role")
            .map(String::as_str),
        Some("control")
    );
    assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/kosmos-io/kpromote:test")
    );
    let args = container.args.clone().unwrap();
    assert!(args.contains(&"--leader-elect=false".to_owned()));
    assert!(args.contains(&"--member-kubeconfig=/etc/kpromote/member/kubeconfig".to_owned()));
    let volumes = pod.volumes.unwrap();
    assert_eq!(
        volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name,
        "archives"
    );
    assert_eq!(
        volumes[1].secret.as_ref().unwrap().secret_name.as_deref(),
        Some("member-kubeconfig")
    );
    // Sealed archives: the recipients as flags, the identity Secret mounted where the flag says.
    assert!(
        args.contains(
            &"--encrypt-to=age1rl3ufzakwpv6220304jlfcsaptvsvk092ef84sdxhm7wantz0smsvk77hy".to_owned()
        )
    );
    assert_eq!(flag(&args, "--age-identity"), Some("/etc/kpromote/age/identity"));
    let age = volumes[2].secret.as_ref().unwrap();
    assert_eq!(age.secret_name.as_deref(), Some("kpromote-age"));
    assert_eq!(age.items.as_ref().unwrap()[0].key, "identity");
    let mounts = container.volume_mounts.clone().unwrap();
    assert!(mounts.iter().any(|m| m.name == "age-identity"
        && m.mount_path == "/etc/kpromote/age"
        && m.read_only == Some(true)));
    let monitor = find(&docs, "ServiceMonitor")[0];
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let role = find(&docs, "ClusterRole")[0];
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.last().unwrap()["apiGroups"][0], "example.com");
    // A storage class of "-" asks for none; a name is passed through.
    let docs = render(&["--set=backup.storageClass=-"]);
    assert_eq!(
        find(&docs, "PersistentVolumeClaim")[0]["spec"]["storageClassName"],
        ""
    );
    let docs = render(&["--set=backup.storageClass=fast", "--set=backup.size=1Gi"]);
    let claim = find(&docs, "PersistentVolumeClaim")[0];
    assert_eq!(claim["spec"]["storageClassName"], "fast");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "1Gi");
}

/// `doc` through its k8s-openapi type and back.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Value {
    serde_json::to_value(serde_json::from_value::<T>(doc.clone()).unwrap()).unwrap()
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
}

#[tokio::test]
async fn helm_install_yields_a_controller_that_promotes_and_rolls_back_the_design_example() {
    // Two clusters; the control plane gets its CRDs from the chart, not from deploy/.
    let env = Env::without_crds(Pair::start().await);
    let kubeconfig = env.cp_kubeconfig().display().to_string();

    // The README's line.
    let out = Command::new(helm())
        .args([
            "install",
            "kpromote",
            CHART,
            "--namespace",
            "kosmos-system",
            "--create-namespace",
        ])
        .arg(format!("--kubeconfig={kubeconfig}"))
        .output()
        .unwrap();
    let notes = ok(out, "helm install");
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    let crds: Api<CustomResourceDefinition> = Api::all(env.cp.clone());
    for name in ["promotepolicies.kosmos.io", "clusters.kosmos.io"] {
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), name, conditions::is_crd_established()),
        )
        .await
        .unwrap()
        .unwrap();
    }
    env.register_member("member").await;
    apps::nginx_example(&env.member, &env.kubelet).await;
    let original = apps::snapshot(&env.member, "nginx-test").await;

    // The Deployment as installed: no kubelet runs it here, so its container runs as a local
    // process with the same arguments and environment, and its service account's token.
    let deployment = Api::<Deployment>::namespaced(env.cp.clone(), "kosmos-system")
        .get("kpromote-controller")
        .await
        .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let rendered = container.args.clone().unwrap();
    assert_eq!(rendered[0], "controller");
    let mount = &container.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(flag(&rendered, "--backup-dir"), Some(mount.mount_path.as_str()));
    // What a pod would have: the claim at the mount path (here a local directory, which the
    // harness passes as --backup-dir), its own metrics port, its name and namespace.
    let args: Vec<String> = rendered[1..]
        .iter()
        .filter(|a| !a.starts_with("--backup-dir=") && !a.starts_with("--metrics-address="))
        .cloned()
        .collect();
    assert!(flag(&args, "--leader-elect") == Some("true"), "{args:?}");
    let mut envs: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (
            &var.value,
            var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(field)) if field.field_path == "metadata.name" => "kpromote-controller-0".into(),
            (None, Some(field)) if field.field_path == "metadata.namespace" => "kosmos-system".into(),
            other => panic!("{}: unexpected source {other:?}", var.name),
        };
        envs.push((var.name.clone(), value));
    }
    let sa = pod.service_account_name.unwrap();
    let token_config = env.service_account_kubeconfig("kosmos-system", &sa);
    let mut all_args: Vec<String> = vec![format!("--kubeconfig={}", token_config.display())];
    all_args.extend(args);
    let arg_refs: Vec<&str> = all_args.iter().map(String::as_str).collect();
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let controller = env.controller("helm", &arg_refs, &env_refs);

    env.promote_and_roll_back_design(&controller).await;
    assert!(!controller.log().contains("forbidden"), "{}", controller.log());
    // The Lease the chart's RBAC allows, named by the chart, in the namespace $POD_NAMESPACE
    // gives (the harness names the holder).
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(env.cp.clone(), "kosmos-system")
        .get("kpromote-controller")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("helm"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        apps::snapshot(&env.member, "nginx-test").await.pods,
        original.pods
    );

    // Uninstalling keeps the archives' claim (helm.sh/resource-policy: keep).
    ok(
        Command::new(helm())
            .args(["uninstall", "kpromote", "--namespace", "kosmos-system"])
            .arg(format!("--kubeconfig={kubeconfig}"))
            .output()
            .unwrap(),
        "helm uninstall",
    );
    let claims = env.kubectl_cp(&["get", "pvc", "-n", "kosmos-system", "-o", "name"]);
    assert!(
        String::from_utf8_lossy(&claims.stdout).contains("persistentvolumeclaim/kpromote-backup"),
        "{}",
        String::from_utf8_lossy(&claims.stdout)
    );
}
