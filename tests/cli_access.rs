//! `kpromote promote` with a member kubeconfig wrong in one way at a time: a token the server
//! refuses, a CA that did not sign the server's certificate, a context it does not have, a file
//! that is not there, and a port where nothing listens. Each fails within a minute, naming the
//! cause, with nothing changed in either cluster — retrying what cannot heal only hides it.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use support::apps;
use support::pair::Pair;

#[tokio::test]
async fn a_wrong_member_kubeconfig_fails_at_once_naming_the_cause_and_changes_nothing() {
    let (pair, before) = Pair::start_with_nginx().await;
    let kubeconfig = pair.env.cluster("member").kubeconfig_yaml().to_owned();
    let other_ca = ca_data(pair.env.cluster("control-plane").kubeconfig_yaml());
    assert_ne!(other_ca, ca_data(&kubeconfig), "each test cluster has its own CA");
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, yaml: String| {
        let path = files.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path.display().to_string()
    };
    let token = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_owned();
    let refused_token = write(
        "token",
        kubeconfig.replace(
            &format!("token: {token}"),
            "token: not-a-token-this-server-issued",
        ),
    );
    let foreign_ca = write("ca", kubeconfig.replace(&ca_data(&kubeconfig), &other_ca));
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_owned();
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nothing_listens = write(
        "port",
        kubeconfig.replace(&server, &format!("https://127.0.0.1:{closed_port}")),
    );
    let good = pair.env.cluster("member").kubeconfig_path().display().to_string();
    let missing = files.path().join("no-such-kubeconfig").display().to_string();

    let cases: [(&str, Vec<String>, &[&str]); 5] = [
        (
            "a token the server refuses",
            vec![format!("--member-kubeconfig={refused_token}")],
            &["401", "renew the token"],
        ),
        (
            "a CA that did not sign the server's certificate",
            vec![format!("--member-kubeconfig={foreign_ca}")],
            &["certificate", "certificate-authority-data"],
        ),
        (
            "a context the kubeconfig does not have",
            vec![
                format!("--member-kubeconfig={good}"),
                "--member-context=no-such-context".to_owned(),
            ],
            &["no-such-context"],
        ),
        (
            "a kubeconfig file that is not there",
            vec![format!("--member-kubeconfig={missing}")],
            &["no-such-kubeconfig", "cannot load kubeconfig"],
        ),
        (
            "a port where nothing listens",
            vec![format!("--member-kubeconfig={nothing_listens}")],
            &["unreachable", &format!("127.0.0.1:{closed_port}")],
        ),
    ];
    let backups = tempfile::tempdir().unwrap();
    for (case, member_args, named) in cases {
        let started = Instant::now();
        let out = pair
            .kpromote_to_control_plane("promote")
            .args(["-n", "nginx-test"])
            .arg(format!("--backup-dir={}", backups.path().display()))
            .args(&member_args)
            .output()
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: promote succeeded\n{stderr}");
        assert!(took < Duration::from_secs(60), "{case}: took {took:?}\n{stderr}");
        for needle in named {
            assert!(stderr.contains(needle), "{case}: {needle:?} not named:\n{stderr}");
        }
        assert!(
            std::fs::read_dir(backups.path()).unwrap().next().is_none(),
            "{case}: an archive was written"
        );
        println!("{case}: failed in {took:?}: {}", stderr.trim());
    }
    assert_eq!(apps::snapshot(&pair.member, "nginx-test").await, before);
    assert!(
        !support::present(Api::<Namespace>::all(pair.cp.clone()), "nginx-test").await,
        "nothing was created in the control plane"
    );
}

/// The `certificate-authority-data` of a kubeconfig.
fn ca_data(kubeconfig: &str) -> String {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_owned()
}
