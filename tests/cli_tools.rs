//! The ways users reach the binary besides its own name: shell completions and man pages made
//! from the clap definitions, `kubectl promote` through the real kubectl's plugin mechanism, the
//! krew package installed by the real krew, and `status` on an archive with no cluster.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kpromote_core::engine::{Inventory, PROMOTE, journal_path};
use kpromote_core::journal::Journal;
use kpromote_testenv::Binaries;
use serde_json::Value;

const KPROMOTE: &str = env!("CARGO_BIN_EXE_kpromote");
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/valid/nginx.tar.zst");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A directory holding the binary under its plugin name, as the README's install step makes it.
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(KPROMOTE, dir.path().join("kubectl-promote")).unwrap();
    dir
}

#[test]
fn bash_loads_the_completion_script_and_it_completes_subcommands() {
    let script = stdout(&run(Command::new(KPROMOTE).args(["completion", "bash"])));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kpromote.bash");
    std::fs::write(&file, &script).unwrap();
    // Load it in a real bash and ask it to complete `kpromote st`.
    let probe = format!(
        "source {}; COMP_WORDS=(kpromote st); COMP_CWORD=1; COMP_LINE='kpromote st'; COMP_POINT=11; \
         _kpromote kpromote st kpromote; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = stdout(&run(Command::new("bash").args(["--norc", "-c", &probe])));
    assert!(out.lines().any(|l| l == "status"), "{out}");
    for shell in ["zsh", "fish"] {
        let script = stdout(&run(Command::new(KPROMOTE).args(["completion", shell])));
        for sub in ["promote", "rollback", "status", "verify"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
}

#[test]
fn man_pages_cover_every_subcommand() {
    let page = stdout(&run(Command::new(KPROMOTE).arg("man")));
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH kpromote"),
        "{page}"
    );
    assert!(page.contains(".TH kpromote 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    run(Command::new(KPROMOTE).args(["man", "--dir"]).arg(dir.path()));
    for page in [
        "kpromote.1",
        "kpromote-promote.1",
        "kpromote-status.1",
        "kpromote-controller.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".SH NAME"), "{page}");
    }
    // One name for the backup directory in every subcommand; the former `--output-dir` of
    // `backup` is a hidden alias.
    for page in ["kpromote-backup.1", "kpromote-promote.1", "kpromote-controller.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains("\\-\\-backup\\-dir"), "{page}");
        assert!(!text.contains("output\\-dir"), "{page}");
    }
}

#[test]
fn kubectl_runs_the_binary_as_its_promote_plugin() {
    let kubectl = Binaries::locate()
        .unwrap_or_else(|e| panic!("{e}"))
        .path("kubectl");
    let dir = plugin_dir();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(Command::new(&kubectl)
        .args(["promote", "--help"])
        .env("PATH", &path));
    let help = stdout(&out);
    assert!(help.contains("Usage: kubectl promote <COMMAND>"), "{help}");
    let out = run(Command::new(&kubectl).args(["plugin", "list"]).env("PATH", &path));
    assert!(stdout(&out).contains("kubectl-promote"), "{}", stdout(&out));
    // kubectl's own flags where they mean the same.
    let help = stdout(&run(Command::new(&kubectl)
        .args(["promote", "promote", "--help"])
        .env("PATH", &path)));
    for flag in ["--kubeconfig", "--context", "-n, --namespace", "-o, --output"] {
        assert!(help.contains(flag), "promote --help lacks {flag}:\n{help}");
    }
    let out = run(Command::new(&kubectl)
        .args(["promote", "status", FIXTURE, "-o", "json"])
        .env("PATH", &path));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "NotStarted");
}

/// The `kubectl-krew` that `tests/testenv/krew/build.sh` made (`$KPROMOTE_KREW_CACHE`, else
/// `~/.cache/kpromote/krew`). Missing, the test fails with the command that builds it.
fn krew() -> PathBuf {
    let cache = match std::env::var_os("KPROMOTE_KREW_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
            .join("kpromote/krew"),
    };
    let path = cache.join("current/bin/kubectl-krew");
    assert!(
        path.is_file(),
        "krew not found at {}: build it with `tests/testenv/build.sh` (or tests/testenv/krew/build.sh)",
        path.display()
    );
    path
}

#[test]
fn krew_installs_the_plugin_package_and_kubectl_then_runs_it() {
    let kubectl = Binaries::locate()
        .unwrap_or_else(|e| panic!("{e}"))
        .path("kubectl");
    let out_dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/krew/package.sh");
    let out = run(Command::new("bash").arg(script).arg(KPROMOTE).arg(out_dir.path()));
    let manifest_path = PathBuf::from(stdout(&out).trim());
    let manifest: Value = serde_saphyr::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["metadata"]["name"], "promote");
    assert_eq!(
        manifest["spec"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platform = &manifest["spec"]["platforms"][0];
    let archive = out_dir
        .path()
        .join(platform["uri"].as_str().unwrap().rsplit('/').next().unwrap());

    // As a krew user installs a plugin that is not in an index: krew validates the manifest,
    // checks the archive's SHA-256 and links the plugin into $KREW_ROOT/bin.
    let krew_root = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}:{}",
        krew_root.path().join("bin").display(),
        krew().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new(&kubectl)
        .args(["krew", "install"])
        .arg(format!("--manifest={}", manifest_path.display()))
        .arg(format!("--archive={}", archive.display()))
        .env("KREW_ROOT", krew_root.path())
        .env("PATH", &path));
    let help = stdout(&run(Command::new(&kubectl)
        .args(["promote", "--help"])
        .env("PATH", &path)));
    assert!(help.contains("Usage: kubectl promote"), "{help}");
    // A tampered archive is refused.
    std::fs::write(&archive, b"not the package").unwrap();
    let other_root = tempfile::tempdir().unwrap();
    let out = Command::new(&kubectl)
        .args(["krew", "install"])
        .arg(format!("--manifest={}", manifest_path.display()))
        .arg(format!("--archive={}", archive.display()))
        .env("KREW_ROOT", other_root.path())
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "krew accepted an archive whose checksum differs"
    );
}

fn status(archive: &Path) -> (Value, Output) {
    let out = Command::new(KPROMOTE)
        .args(["status", "-o", "json"])
        .arg(archive)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (json, out)
}

#[test]
fn status_reads_where_a_run_stands_from_the_journal_and_refuses_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("nginx.tar.zst");
    std::fs::copy(FIXTURE, &archive).unwrap();

    let (s, out) = status(&archive);
    assert!(out.status.success());
    assert_eq!(s["state"], "NotStarted");
    assert_eq!(s["resumable"], true);
    assert_eq!(s["promote"]["started"], false);
    assert!(!journal_path(&archive, PROMOTE).exists(), "status writes nothing");

    // A promote that detached its first owner and began the second, then died.
    let inv = Inventory::for_promote(&archive).unwrap();
    let (s0, _) = status(&archive);
    let detach = &s0["promote"]["steps"][0];
    assert_eq!(detach["step"], "detach");
    let planned: Vec<String> = serde_json::from_value(detach["remaining"].clone()).unwrap();
    assert!(
        planned.len() >= 2,
        "the nginx fixture detaches a Deployment and its ReplicaSet"
    );
    let path = journal_path(&archive, PROMOTE);
    let mut journal = Journal::open(&path, &format!("{PROMOTE}:{}", inv.archive_id())).unwrap();
    journal.begin("detach", &planned[0], Value::Null).unwrap();
    journal.done("detach", &planned[0], Value::Null).unwrap();
    journal.begin("detach", &planned[1], Value::Null).unwrap();
    drop(journal);

    let (s, out) = status(&archive);
    assert!(out.status.success());
    assert_eq!(s["state"], "Promoting");
    assert_eq!(s["resumable"], true);
    assert!(
        s["next"]
            .as_str()
            .unwrap()
            .starts_with("kpromote promote --archive")
    );
    let detach = &s["promote"]["steps"][0];
    assert_eq!(detach["done"], 1);
    assert_eq!(detach["inFlight"][0], planned[1].as_str());
    assert_eq!(detach["remaining"].as_array().unwrap().len(), planned.len() - 2);
    let text = stdout(&run(Command::new(KPROMOTE).arg("status").arg(&archive)));
    assert!(text.contains("promote stopped part-way"), "{text}");
    assert!(text.contains(&format!("in flight: {}", planned[1])), "{text}");

    // Damage before the last line: nothing may resume from it.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.insert_str(0, "not a record\n");
    std::fs::write(&path, text).unwrap();
    let (s, out) = status(&archive);
    assert!(!out.status.success());
    assert_eq!(s["state"], "Damaged");
    assert_eq!(s["resumable"], false);
    assert!(s["problem"].as_str().unwrap().contains("line 1"), "{s}");
}
