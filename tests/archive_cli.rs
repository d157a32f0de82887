//! The offline commands, run as a user would: `kpromote inspect | show | verify | diff`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../crates/archive/tests/archive_support/mod.rs"]
mod archive_support;

use archive_support::{configmap, facts, fixture, nginx_objects};
use kpromote_archive::{ArchiveWriter, WriterOptions};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kpromote(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn f(name: &str) -> String {
    fixture(name).display().to_string()
}

#[test]
fn inspect_summarizes() {
    let out = kpromote(&["inspect", &f("valid/nginx.tar.zst")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "kpromote 1.0.0 (zstd level 3)",
        "member-cluster1 (Kubernetes v1.35.0)",
        "Policy:       promote-policy-sample",
        "Namespaces:   nginx-test",
        "Objects:      5",
        "deployments.apps",
        "(cluster)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let doc = json(&kpromote(&["inspect", "-o", "json", &f("valid/nginx.tar.gz")]));
    assert_eq!(doc["kind"], "kpromote");
    assert_eq!(doc["codec"], "gzip");
    assert_eq!(doc["anchored"], true);
    assert_eq!(doc["summary"]["objects"], 5);
    assert_eq!(doc["manifest"]["source"]["name"], "member-cluster1");
    assert_eq!(doc["manifest"]["formatVersion"], "1.0.0");

    let velero = json(&kpromote(&[
        "inspect",
        "-o",
        "json",
        &f("velero/nginx-velero.tar.gz"),
    ]));
    assert_eq!(velero["kind"], "velero");
    assert_eq!(velero["manifest"], Value::Null);
}

#[test]
fn inspect_lists_with_filters() {
    let out = kpromote(&["inspect", "--list", &f("valid/nginx.tar.zst")]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 6);
    let pods = json(&kpromote(&[
        "inspect",
        "--list",
        "-r",
        "pods",
        "-o",
        "json",
        &f("valid/nginx.tar.zst"),
    ]));
    let objects = pods["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["kind"], "Pod");
    assert_eq!(objects[0]["ownerReferences"][0]["kind"], "ReplicaSet");
    let by_kind = json(&kpromote(&[
        "inspect",
        "--list",
        "-r",
        "Deployment",
        "-o",
        "json",
        &f("valid/nginx.tar.zst"),
    ]));
    assert_eq!(by_kind["objects"][0]["name"], "nginx");
    let cluster = json(&kpromote(&[
        "inspect",
        "--list",
        "-n",
        "",
        "-o",
        "json",
        &f("valid/nginx.tar.zst"),
    ]));
    assert_eq!(cluster["objects"].as_array().unwrap().len(), 1);
    assert_eq!(cluster["objects"][0]["kind"], "Namespace");
}

#[test]
fn show_prints_yaml_and_json() {
    let out = kpromote(&["show", &f("valid/nginx.tar.zst"), "deployments/nginx-test/nginx"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = stdout(&out);
    assert!(yaml.contains("kind: Deployment"), "{yaml}");
    assert!(yaml.contains("image: nginx:1.14-alpine"), "{yaml}");
    let doc = json(&kpromote(&[
        "show",
        "-o",
        "json",
        &f("valid/nginx.tar.gz"),
        "services/nginx-test/nginx-service",
    ]));
    assert_eq!(doc["spec"]["ports"][0]["port"], 80);
    let ns = json(&kpromote(&[
        "show",
        "-o",
        "json",
        &f("valid/nginx.tar.zst"),
        "namespaces/nginx-test",
    ]));
    assert_eq!(ns["kind"], "Namespace");
    let by_path = kpromote(&[
        "show",
        &f("velero/nginx-velero.tar.gz"),
        "resources/pods/namespaces/nginx-test/nginx-7c5ddbdf54-x8k2p.json",
    ]);
    assert!(stdout(&by_path).contains("kind: Pod"));

    let missing = kpromote(&["show", &f("valid/nginx.tar.zst"), "pods/nginx-test/nope"]);
    assert!(!missing.status.success());
    let err = stderr(&missing);
    assert!(
        err.contains("has no object") && err.contains("inspect --list"),
        "{err}"
    );
    let bad = kpromote(&["show", &f("valid/nginx.tar.zst"), "a/b/c/d"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("<resource>/<namespace>/<name>"));
}

#[test]
fn verify_exit_codes_and_reports() {
    let good = kpromote(&["verify", &f("valid/nginx.tar.zst")]);
    assert_eq!(good.status.code(), Some(0), "{}", stdout(&good));
    assert!(stdout(&good).starts_with("OK:"));

    let bad = kpromote(&["verify", &f("hostile/digest-mismatch.tar.zst")]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("resources/services/namespaces/nginx-test/nginx-service.json"));

    let doc = json(&kpromote(&[
        "verify",
        "-o",
        "json",
        &f("hostile/symlink.tar.zst"),
    ]));
    assert_eq!(doc["status"], "problems");
    assert_eq!(doc["problems"][0]["code"], "unsupported_entry_type");
    assert_eq!(
        doc["problems"][0]["entry"],
        "resources/pods/namespaces/nginx-test/evil.json"
    );

    let unreadable = json(&kpromote(&[
        "verify",
        "-o",
        "json",
        &f("hostile/unknown-major.tar.zst"),
    ]));
    assert_eq!(unreadable["status"], "problems");
    assert_eq!(unreadable["problems"][0]["code"], "unsupported_version");

    let velero = kpromote(&["verify", &f("velero/nginx-velero.tar.gz")]);
    assert_eq!(velero.status.code(), Some(3));
    assert!(stdout(&velero).starts_with("UNVERIFIED"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .args(["verify", "-o", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = std::fs::read(fixture("valid/nginx.tar.gz")).unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &bytes).unwrap();
    drop(child.stdin.take());
    let piped = child.wait_with_output().unwrap();
    assert_eq!(piped.status.code(), Some(0));
    assert_eq!(json(&piped)["entriesChecked"], 6);
}

fn write(path: &Path, objects: Vec<kpromote_archive::NewObject>) {
    let mut writer = ArchiveWriter::create(path, facts(), WriterOptions::zstd()).unwrap();
    for o in objects {
        writer.add(o).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn diff_reports_added_removed_changed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.tar.zst");
    let b = dir.path().join("b.tar.zst");
    write(&a, nginx_objects());
    let mut changed = nginx_objects();
    changed.retain(|o| o.resource != "services");
    for o in &mut changed {
        if o.resource == "deployments" {
            let mut v: Value = serde_json::from_slice(&o.json).unwrap();
            v["spec"]["replicas"] = 3.into();
            o.json = serde_json::to_vec(&v).unwrap();
        }
    }
    changed.push(configmap("nginx-test", "settings", 10));
    write(&b, changed);
    let (a, b) = (a.display().to_string(), b.display().to_string());

    let same = kpromote(&["diff", &a, &f("valid/nginx.tar.gz")]);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    let text = kpromote(&["diff", &a, &b]);
    assert_eq!(text.status.code(), Some(1));
    let out = stdout(&text);
    assert!(
        out.contains("- resources/services/namespaces/nginx-test/nginx-service.json"),
        "{out}"
    );
    assert!(
        out.contains("+ resources/configmaps/namespaces/nginx-test/settings.json"),
        "{out}"
    );
    assert!(
        out.contains("~ resources/deployments.apps/namespaces/nginx-test/nginx.json  (spec.replicas)"),
        "{out}"
    );
    let doc = json(&kpromote(&["diff", "-o", "json", &a, &b]));
    assert_eq!(doc["changed"][0]["fields"][0], "spec.replicas");
    assert_eq!(doc["unchanged"], 3);
    let broken = kpromote(&["diff", &a, &f("hostile/missing-entry.tar.zst")]);
    assert_eq!(broken.status.code(), Some(2));
    assert!(stderr(&broken).contains("missing-entry.tar.zst"));
}

#[test]
fn errors_name_the_input_and_what_to_do() {
    let missing = kpromote(&["inspect", "/nonexistent/backup.tar.zst"]);
    assert!(!missing.status.success());
    let err = stderr(&missing);
    assert!(
        err.contains("/nonexistent/backup.tar.zst") && err.contains("check the path"),
        "{err}"
    );
    let zip = kpromote(&["inspect", &f("hostile/unknown-codec.bin")]);
    assert!(stderr(&zip).contains("Velero 1.x tarballs"), "{}", stderr(&zip));
    let newer = kpromote(&["inspect", &f("hostile/unknown-major.tar.zst")]);
    assert!(stderr(&newer).contains("upgrade kpromote"), "{}", stderr(&newer));
}

/// Issue 10: `show` of a Secret printed its values to the terminal.
#[test]
fn show_masks_a_secrets_values_unless_asked() {
    const MARKER: &str = "kpromote-secret-marker-5b21";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.tar.zst");
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": { "name": "creds", "namespace": "nginx-test", "uid": "uid-creds" },
        "data": { "password": base64_of(MARKER) },
        "stringData": { "token": MARKER },
    });
    let object = kpromote_archive::NewObject::from_json(
        "secrets",
        "",
        kpromote_archive::Inclusion::Namespaced,
        serde_json::to_vec(&secret).unwrap(),
    )
    .unwrap();
    write(&path, vec![object]);
    let archive = path.display().to_string();
    for format in ["yaml", "json"] {
        let out = kpromote(&["show", "-o", format, &archive, "secrets/nginx-test/creds"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out) + &stderr(&out);
        assert!(
            !text.contains(MARKER) && !text.contains(&base64_of(MARKER)),
            "a value was printed:\n{text}"
        );
        assert!(text.contains("<masked: 27 bytes>"), "{text}");
        assert!(stderr(&out).contains("--reveal-secrets"), "{}", stderr(&out));
    }
    let revealed = json(&kpromote(&[
        "show",
        "-o",
        "json",
        "--reveal-secrets",
        &archive,
        "secrets/nginx-test/creds",
    ]));
    assert_eq!(revealed["stringData"]["token"], MARKER);
    assert_eq!(revealed["data"]["password"], base64_of(MARKER));
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// An age key pair made by the reference `age-keygen` (Debian package `age`, installed by
/// `.ci/run`): the identity file and its public key.
fn age_keygen(dir: &Path, name: &str) -> (String, String) {
    let file = dir.join(name);
    let made = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("the reference `age-keygen` is needed (Debian package `age`): {e}"));
    assert!(made.status.success(), "age-keygen: {}", stderr(&made));
    let public = Command::new("age-keygen").arg("-y").arg(&file).output().unwrap();
    (file.display().to_string(), stdout(&public).trim().to_owned())
}

/// Issue 23: Secrets sealed in the archive. `verify` and `inspect` need no key; `show` of a
/// Secret, `rollback` and `promote --archive` need an identity of a recipient, and without one
/// (or with a wrong one) fail before anything else, naming the recipients and what to give.
#[test]
fn sealed_archives_verify_without_a_key_and_open_only_with_a_recipients_identity() {
    const MARKER: &str = "kpromote-sealed-cli-marker-0c3d";
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = age_keygen(dir.path(), "key.txt");
    let (wrong_key, _) = age_keygen(dir.path(), "wrong.txt");
    let recipients = dir.path().join("recipients.txt");
    std::fs::write(&recipients, format!("# the team\n{public}\n")).unwrap();
    let path = dir.path().join("sealed.tar.zst");
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": { "name": "creds", "namespace": "nginx-test", "uid": "uid-creds" },
        "data": { "password": base64_of(MARKER) },
    });
    let mut objects = nginx_objects();
    objects.push(
        kpromote_archive::NewObject::from_json(
            "secrets",
            "",
            kpromote_archive::Inclusion::Namespaced,
            serde_json::to_vec(&secret).unwrap(),
        )
        .unwrap(),
    );
    let sealed_to = kpromote_archive::Recipients::parse([recipients.display().to_string()]).unwrap();
    let mut writer =
        ArchiveWriter::create(&path, facts(), WriterOptions::zstd().encrypt_to(sealed_to)).unwrap();
    for o in objects {
        writer.add(o).unwrap();
    }
    writer.finish().unwrap();
    let archive = path.display().to_string();

    // No key: verify and inspect work.
    let verified = kpromote(&["verify", &archive]);
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    let inspected = kpromote(&["inspect", &archive]);
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    assert!(
        stdout(&inspected).contains(&format!("Encrypted:    secrets (age), to {public}")),
        "{}",
        stdout(&inspected)
    );
    let listed = json(&kpromote(&[
        "inspect", "--list", "-o", "json", "-r", "secrets", &archive,
    ]));
    assert_eq!(listed["objects"][0]["encryption"], "age");
    // Objects that are not sealed show without a key.
    assert!(
        kpromote(&["show", &archive, "pods/nginx-test/nginx-7c5ddbdf54-x8k2p"])
            .status
            .success()
    );

    // A Secret without an identity, and with a wrong one: refused, naming what to do.
    let secret_path = "secrets/nginx-test/creds";
    let missing = kpromote(&["show", &archive, secret_path]);
    assert!(!missing.status.success());
    let err = stderr(&missing);
    assert!(
        err.contains(&public) && err.contains("--identity") && err.contains("KPROMOTE_AGE_IDENTITY_FILE"),
        "{err}"
    );
    let wrong = kpromote(&["show", "--identity", &wrong_key, &archive, secret_path]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("the identity given is for"),
        "{}",
        stderr(&wrong)
    );
    assert!(!(stdout(&wrong) + &stderr(&wrong)).contains(MARKER));

    // The right identity, by flag or by environment: masked unless asked, exact when asked.
    let shown = Command::new(env!("CARGO_BIN_EXE_kpromote"))
        .args(["show", "-o", "json", &archive, secret_path])
        .env("KPROMOTE_AGE_IDENTITY_FILE", &key)
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert_eq!(json(&shown)["data"]["password"], "<masked: 31 bytes>");
    let revealed = json(&kpromote(&[
        "show",
        "-o",
        "json",
        "--reveal-secrets",
        "-i",
        &key,
        &archive,
        secret_path,
    ]));
    assert_eq!(revealed["data"]["password"], base64_of(MARKER));

    // rollback and promote --archive stop before any cluster is contacted (the kubeconfigs do
    // not exist), naming the recipients and the flag.
    let clusters = [
        "--member-kubeconfig",
        "/nonexistent/member",
        "--kubeconfig",
        "/nonexistent/cp",
        "--cluster-name",
        "member",
    ];
    for command in ["rollback", "promote"] {
        let mut args = vec![command, "--archive", &archive];
        args.extend(clusters);
        let out = kpromote(&args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(&public) && err.contains("--identity") && err.contains("nothing was changed"),
            "{command}: {err}"
        );
        assert!(
            !err.contains("/nonexistent"),
            "{command} failed on the keys first: {err}"
        );
        args.extend(["--identity", &wrong_key]);
        let err = stderr(&kpromote(&args));
        assert!(err.contains("the identity given is for"), "{command}: {err}");
    }
    // With the identity, a rollback's dry run (no cluster needed) reads the whole plan.
    let mut args = vec!["rollback", "--dry-run", "--archive", &archive, "--identity", &key];
    args.extend(clusters);
    let plan = kpromote(&args);
    assert!(plan.status.success(), "{}", stderr(&plan));
    // promote --encrypt-to reads its new archive back: without a matching identity it stops first.
    let mut args = vec!["promote", "-n", "nginx-test", "--encrypt-to", &public];
    args.extend(clusters);
    let err = stderr(&kpromote(&args));
    assert!(
        err.contains("--encrypt-to") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!err.contains("/nonexistent"), "{err}");
    // A recipient that is neither a key nor a file is named before any cluster is contacted.
    let out = kpromote(&[
        "backup",
        "-n",
        "shop",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "--encrypt-to",
        "age1bogus",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("--encrypt-to") && err.contains("age1bogus"), "{err}");
    assert!(!err.contains("/nonexistent"), "{err}");
}
