//! What the benchmarks share: their settings from the environment, and running the real CLI.
// Each bench uses a part of this module.
#![allow(dead_code)]

use std::process::Command;

use kpromote_testenv::Cluster;
use kube::Client;

/// The number in environment variable `name`, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `binary` (a kpromote build) running `subcommand` against the two clusters, JSON out.
pub fn kpromote_at(binary: &std::path::Path, subcommand: &str, member: &Cluster, cp: &Cluster) -> Command {
    let mut command = Command::new(binary);
    command
        .arg(subcommand)
        .arg("--member-kubeconfig")
        .arg(member.kubeconfig_path())
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["--cluster-name", "member", "-o", "json"]);
    command
}

/// Runs `command` under `/usr/bin/time`; its peak RSS in MiB and wall seconds. Fails unless it
/// succeeds.
pub fn measured(command: &mut Command) -> (f64, f64) {
    let report = tempfile::NamedTempFile::new().expect("tempfile");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%M %e", "-o"])
        .arg(report.path())
        .arg(command.get_program())
        .args(command.get_args());
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let out = timed.output().expect("/usr/bin/time");
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        command,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(report.path()).expect("time report");
    let mut fields = text.split_whitespace();
    let kib: f64 = fields.next().and_then(|f| f.parse().ok()).expect("peak");
    let seconds: f64 = fields.next().and_then(|f| f.parse().ok()).expect("seconds");
    (kib / 1024.0, seconds)
}

/// Requests the API server behind `client` has served so far, by verb (its
/// `apiserver_request_total`; WATCH and CONNECT left out): every client's, the controller
/// manager's included, so a difference is the whole work a phase caused.
pub async fn api_requests(client: &Client) -> std::collections::BTreeMap<String, f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(request).await.expect("metrics");
    let mut by_verb = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let verb = line
            .split("verb=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if !matches!(verb, "WATCH" | "CONNECT" | "") {
            *by_verb.entry(verb.to_owned()).or_insert(0.0) += value;
        }
    }
    by_verb
}

/// Requests by verb.
pub type Requests = std::collections::BTreeMap<String, f64>;

/// [`api_requests`] of the member's API server and the control plane's.
pub async fn both_requests(member: &Client, cp: &Client) -> (Requests, Requests) {
    (api_requests(member).await, api_requests(cp).await)
}

/// [`requests_between`] of both clusters.
pub fn both_between(before: &(Requests, Requests), after: &(Requests, Requests)) -> (Requests, Requests) {
    (
        requests_between(&before.0, &after.0),
        requests_between(&before.1, &after.1),
    )
}

/// `GET 12, PATCH 3, …`, and the total.
pub fn describe(requests: &Requests) -> String {
    let total: f64 = requests.values().sum();
    if total == 0.0 {
        return "0".to_owned();
    }
    let verbs: Vec<String> = requests.iter().map(|(v, n)| format!("{v} {n:.0}")).collect();
    format!("{total:.0} ({})", verbs.join(", "))
}

/// `after - before`, verb by verb.
pub fn requests_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(verb, n)| (verb.clone(), n - before.get(verb).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect()
}
