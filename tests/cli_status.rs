//! `kpromote status ARCHIVE` against real runs: a promote killed mid-restore, its resume, a
//! rollback killed mid-teardown, and its resume — status says where each stands and what to run.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::pair::Pair;
use support::{apps, archiving};

fn status(archive: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .args(["status", "-o", "json"])
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run(pair: &Pair, subcommand: &str, archive: &Path, failpoint: Option<&str>) {
    let mut cmd = pair.kpromote(subcommand);
    cmd.arg(format!("--archive={}", archive.display()))
        .arg("--settle-seconds=1");
    match failpoint {
        Some(f) => cmd.env("KPROMOTE_FAILPOINT", f),
        None => cmd.env_remove("KPROMOTE_FAILPOINT"),
    };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match failpoint {
        Some(f) => assert!(stderr.contains("KPROMOTE_FAILPOINT reached"), "{f}: {stderr}"),
        None => assert!(out.status.success(), "{subcommand}: {stderr}"),
    }
}

fn step<'a>(direction: &'a Value, name: &str) -> &'a Value {
    direction["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap()
}

fn complete(step: &Value) -> bool {
    step["inFlight"].as_array().unwrap().is_empty() && step["remaining"].as_array().unwrap().is_empty()
}

/// done + in flight + remaining = planned: every planned object is accounted for once.
fn accounted(step: &Value) {
    let planned = step["planned"].as_u64().unwrap();
    let sum = step["done"].as_u64().unwrap()
        + step["inFlight"].as_array().unwrap().len() as u64
        + step["remaining"].as_array().unwrap().len() as u64;
    assert_eq!(sum, planned, "{step}");
}

#[tokio::test]
async fn status_follows_a_crashed_promote_and_rollback_to_their_ends() {
    let pair = Pair::start().await;
    apps::nginx_example(&pair.member, &pair.kubelet).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = archiving::archive(&pair.member, &["nginx-test"], &[], dir.path()).await;

    let s = status(&archive);
    assert_eq!(s["state"], "NotStarted");
    assert_eq!(s["clusterName"], "member", "read from the archive");

    // Killed after the second restored object.
    run(&pair, "promote", &archive, Some("restore:2"));
    let s = status(&archive);
    assert_eq!(s["state"], "Promoting", "{s:#}");
    assert_eq!(s["resumable"], true);
    support::assert_next(&s, "kpromote promote");
    for name in ["detach", "mark"] {
        let st = step(&s["promote"], name);
        assert!(complete(st), "{name} finished before restore began: {st}");
        accounted(st);
    }
    let restore = step(&s["promote"], "restore");
    accounted(restore);
    assert!(restore["done"].as_u64().unwrap() >= 2, "{restore}");
    assert!(!complete(restore), "{restore}");
    assert_eq!(
        s["rollback"]["started"], false,
        "no automatic rollback after a crash"
    );

    run(&pair, "promote", &archive, None);
    let s = status(&archive);
    assert_eq!(s["state"], "Promoted", "{s:#}");
    for name in ["detach", "mark", "restore"] {
        assert!(complete(step(&s["promote"], name)), "{name}");
    }
    support::assert_next(&s, "kpromote rollback");

    // A rollback killed as its first teardown begins.
    run(&pair, "rollback", &archive, Some("teardown:1:begun"));
    let s = status(&archive);
    assert_eq!(s["state"], "RollingBack", "{s:#}");
    support::assert_next(&s, "kpromote rollback");
    assert!(complete(step(&s["rollback"], "unmark")));
    assert!(complete(step(&s["rollback"], "recreate")));
    let teardown = step(&s["rollback"], "teardown");
    assert_eq!(teardown["inFlight"].as_array().unwrap().len(), 1, "{teardown}");

    run(&pair, "rollback", &archive, None);
    let s = status(&archive);
    assert_eq!(s["state"], "RolledBack", "{s:#}");
    assert_eq!(s["resumable"], false);
    for name in ["unmark", "recreate", "teardown"] {
        let st = step(&s["rollback"], name);
        assert!(complete(st), "{name}: {st}");
        accounted(st);
    }
    let text = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .arg("status")
        .arg(&archive)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("rolled back: the member is as it was"), "{text}");
}
