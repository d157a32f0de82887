//! What the benchmarks share: their settings from the environment, and running the real CLI.
// Each bench uses a part of this module.
#![allow(dead_code)]

use std::process::Command;

use kpromote_testenv::Cluster;

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
