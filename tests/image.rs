//! The image: `image/build.sh` builds it with podman from this build's binary on a base made of
//! Debian packages, and the binary runs inside it — `kpromote --version`, and `kpromote verify`
//! on an archive fixture mounted read-only, as the non-root user the Deployment runs.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `podman run` as these machines allow it: runc, because the host's cgroups are in hybrid mode
/// (crun refuses them), and resource limits within the host's hard limits, because the sandbox
/// lacks CAP_SYS_RESOURCE (podman's defaults raise them). No network: nothing needs one.
fn podman_run(image: &str, extra: &[&str], args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--runtime", "runc", "run", "--rm", "--network=none"])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"])
        .args(extra)
        .arg(image)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_image_builds_from_debian_packages_and_runs_version_and_verify() {
    let found = Command::new("podman").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "podman is needed to build the image: run tests/testenv/build.sh (it installs podman and runc) ({found:?})"
    );
    let image = "localhost/kpromote-test:latest";
    let out = Command::new("bash")
        .arg(format!("{ROOT}/image/build.sh"))
        .arg(env!("CARGO_BIN_EXE_kpromote"))
        .arg(image)
        .output()
        .unwrap();
    assert_eq!(ok(out, "image/build.sh").trim(), image);

    let version = ok(podman_run(image, &[], &["--version"]), "kpromote --version");
    assert_eq!(version.trim(), format!("kpromote {}", env!("CARGO_PKG_VERSION")));

    let fixture = format!("{ROOT}/fixtures/valid/nginx.tar.zst");
    let mount = format!("{fixture}:/archives/nginx.tar.zst:ro");
    let verified = ok(
        podman_run(
            image,
            &["-v", &mount],
            &["verify", "-o", "json", "/archives/nginx.tar.zst"],
        ),
        "kpromote verify",
    );
    let verified: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(verified["status"], "verified", "{verified}");
    let inspect = ok(
        Command::new("podman")
            .args(["image", "inspect", "--format", "{{.Config.User}}", image])
            .output()
            .unwrap(),
        "podman image inspect",
    );
    assert_eq!(
        inspect.trim(),
        "65532:65532",
        "the image runs as the Deployment's non-root user"
    );
    // A hostile fixture fails verification inside the image too.
    let bad = format!("{ROOT}/fixtures/hostile/bit-flip.tar.zst:/archives/bad.tar.zst:ro");
    let out = podman_run(image, &["-v", &bad], &["verify", "/archives/bad.tar.zst"]);
    assert!(!out.status.success(), "a damaged archive must not verify");
}
