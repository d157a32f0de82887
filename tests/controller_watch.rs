//! A controller that cannot watch its PromotePolicies does nothing; against a real API server
//! without the CRD it must say so — `/readyz` failing, `kpromote_watch_up` 0 and the errors
//! counted — and recover once the CRD is installed.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use kpromote_core::controller::http::{self, Health};
use kpromote_core::controller::metrics::Metrics;
use kpromote_core::controller::{self, ControllerConfig};
use kpromote_testenv::Cluster;
use support::{CRDS, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on the controller's endpoints: the status code and the body.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

#[tokio::test]
async fn a_controller_whose_watch_fails_is_not_ready_and_says_why_until_the_crd_is_there() {
    let cluster = Cluster::start("watch").await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoints = tokio::spawn(http::serve(
        ([127, 0, 0, 1], port).into(),
        metrics.clone(),
        health.clone(),
    ));
    // Connected: what `kpromote controller` marks once it reached the API server.
    health.set_ready(true);
    let backups = tempfile::tempdir().unwrap();
    let mut config = ControllerConfig::new("watch-test");
    config.backup_dir = backups.path().to_owned();
    let running = tokio::spawn(controller::run(client, config, metrics.clone(), health.clone()));

    let body = wait_for("/readyz to fail", Duration::from_secs(30), || async {
        get(port, "/readyz")
            .await
            .filter(|(code, _)| *code == 503)
            .map(|(_, body)| body)
    })
    .await;
    assert!(
        body.contains("PromotePolicy watch is failing") && body.contains("CRD"),
        "{body}"
    );
    let (_, text) = get(port, "/metrics").await.unwrap();
    assert!(text.contains("kpromote_watch_up 0"), "{text}");
    let errors: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kpromote_watch_errors_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_default();
    assert!(errors >= 1, "{text}");

    // The CRD arrives: the watch works again and the controller is ready.
    let out = cluster.kubectl(&["apply", "-f", CRDS]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("/readyz to pass", Duration::from_secs(90), || async {
        get(port, "/readyz").await.filter(|(code, _)| *code == 200)
    })
    .await;
    let (_, text) = get(port, "/metrics").await.unwrap();
    assert!(text.contains("kpromote_watch_up 1"), "{text}");
    running.abort();
    endpoints.abort();
}
