//! Archives in S3-compatible object storage, against a real server (versitygw, built by
//! `tests/testenv/s3/build.sh` and started by `kpromote_testenv::S3Server`; nothing in this
//! process answers S3): the upload appears only complete and verified, an abandoned or bad one
//! leaves no object, every reader takes `s3://` URLs, and a promotion rolls back from the bucket
//! alone after the local state (journals, the backup volume) is gone. No output ever carries the
//! secret key.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod controller_env;
mod support;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use controller_env::{DESIGN_POLICY, Env};
use kpromote_archive::{
    ArchiveFacts, ArchiveReader, ArchiveSink, ArchiveWriter, Inclusion, PolicyFacts, ReaderOptions,
    SourceCluster, WriterOptions, WrittenArchive,
};
use kpromote_core::policy::Phase;
use kpromote_core::storage::remote::RemoteObject;
use kpromote_core::storage::upload::{MultipartSink, PART_SIZE};
use kpromote_core::storage::{ObjectUrl, S3Config, StorageError};
use kpromote_testenv::S3Server;
use object_store::ObjectStore;
use serde_json::json;
use support::pair::Pair;

const BUCKET: &str = "kp-archives";

fn server() -> S3Server {
    let server = S3Server::start().unwrap_or_else(|e| panic!("{e}"));
    server.create_bucket(BUCKET).unwrap();
    server
}

/// Every key in the bucket, through the S3 API (LIST), as any client would see them.
fn keys(config: &S3Config) -> Vec<String> {
    use futures::TryStreamExt;
    let store: Arc<dyn ObjectStore> = config
        .store_for(&ObjectUrl::parse(&format!("s3://{BUCKET}/x")).unwrap())
        .unwrap();
    let mut keys: Vec<String> = kpromote_core::storage::s3::block_on(async move {
        store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
    })
    .unwrap();
    keys.sort();
    keys
}

fn facts() -> ArchiveFacts {
    ArchiveFacts {
        created_at: "2026-12-07T10:00:00Z".to_owned(),
        source: SourceCluster {
            name: "member".to_owned(),
            server_version: "v1.35.4".to_owned(),
        },
        policy: PolicyFacts {
            name: "s3".to_owned(),
            included_namespaces: vec!["shop".to_owned()],
            excluded_resources: Vec::new(),
        },
        list_resource_versions: std::collections::BTreeMap::new(),
    }
}

fn config_map(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": format!("cm-{i:06}"), "namespace": "shop", "uid": format!("uid-{i}")},
           "data": {"payload": format!("{i:0>400}")}})
}

#[test]
fn an_upload_appears_only_complete_and_verified() {
    let server = server();
    let config = S3Config::from_pairs(server.env()).unwrap();

    // A good archive, bigger than one part: streamed, then readable by ranged requests.
    let url = ObjectUrl::parse(&format!("s3://{BUCKET}/prod/shop.tar.zst")).unwrap();
    let sink = MultipartSink::start_with(&url, &config).unwrap();
    // Level 1 and random-looking payloads keep the archive above one part.
    let mut writer = ArchiveWriter::create_in_sink(
        url.to_string(),
        Box::new(sink),
        facts(),
        WriterOptions::zstd().level(1),
    )
    .unwrap();
    let n = 30_000;
    for i in 0..n {
        let mut object = config_map(i);
        // Digests do not compress much: the archive spans several parts.
        let noise: String = (0..16)
            .map(|j| kpromote_archive::sha256_hex(format!("{i}/{j}").as_bytes()))
            .collect();
        object["data"]["noise"] = json!(noise);
        writer
            .add_json(
                "configmaps",
                "",
                Inclusion::Namespaced,
                serde_json::to_vec(&object).unwrap(),
            )
            .unwrap();
    }
    let written = writer.finish().unwrap();
    assert!(
        written.compressed_bytes > PART_SIZE as u64,
        "{} bytes: not a multipart test",
        written.compressed_bytes
    );
    assert_eq!(keys(&config), vec!["prod/shop.tar.zst".to_owned()]);

    let (before, _) = kpromote_core::storage::remote::fetched();
    let remote = RemoteObject::open_with(&url, &config).unwrap();
    let reader =
        ArchiveReader::open_source(url.to_string(), Arc::new(remote), ReaderOptions::default()).unwrap();
    assert_eq!(reader.manifest_sha256().unwrap(), written.manifest_sha256);
    let one = reader
        .get("resources/configmaps/namespaces/shop/cm-012345.json")
        .unwrap();
    assert_eq!(one.value().unwrap()["metadata"]["uid"], "uid-12345");
    let (after, _) = kpromote_core::storage::remote::fetched();
    assert!(
        after - before < written.compressed_bytes / 2,
        "showing one object fetched {} of {} bytes",
        after - before,
        written.compressed_bytes
    );
    assert!(reader.verify().is_fully_verified());

    // The same key again: refused before anything is uploaded.
    assert!(matches!(
        MultipartSink::start_with(&url, &config),
        Err(StorageError::AlreadyExists { .. })
    ));

    // Three parts sent, then the writer is abandoned (a backup that failed): aborted, no object.
    let abandoned = ObjectUrl::parse(&format!("s3://{BUCKET}/prod/abandoned.tar.zst")).unwrap();
    let mut sink = MultipartSink::start_with(&abandoned, &config).unwrap();
    let noise: Vec<u8> = (0..3 * PART_SIZE + 1000)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    sink.write_all(&noise).unwrap();
    drop(sink);
    assert_eq!(keys(&config), vec!["prod/shop.tar.zst".to_owned()]);

    // Bytes that are not an archive, committed as if the writer had finished: the verifier
    // refuses them, and the upload is never completed.
    let forged = ObjectUrl::parse(&format!("s3://{BUCKET}/prod/forged.tar.zst")).unwrap();
    let mut sink = Box::new(MultipartSink::start_with(&forged, &config).unwrap());
    let mut bogus = zstd::encode_all(&noise[..PART_SIZE + 10], 1).unwrap();
    bogus.extend_from_slice(&noise[..100]);
    sink.write_all(&bogus).unwrap();
    let claimed = WrittenArchive {
        path: forged.to_string().into(),
        objects: 1,
        uncompressed_bytes: 1,
        compressed_bytes: bogus.len() as u64,
        manifest_sha256: written.manifest_sha256.clone(),
    };
    let err = sink.commit(&claimed).unwrap_err();
    assert!(
        err.to_string().contains("verify") || err.to_string().contains("archive"),
        "{err}"
    );
    assert_eq!(keys(&config), vec!["prod/shop.tar.zst".to_owned()]);

    // Wrong credentials: an error naming the URL, never the secret given.
    let wrong_secret = "kpromote-wrong-secret-0f3a9c";
    let mut pairs = server.env();
    pairs.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    pairs.push(("AWS_SECRET_ACCESS_KEY", wrong_secret.to_owned()));
    let wrong = S3Config::from_pairs(pairs).unwrap();
    let err = RemoteObject::open_with(&url, &wrong).unwrap_err().to_string();
    assert!(err.contains("s3://kp-archives/prod/shop.tar.zst"), "{err}");
    assert!(
        !err.contains(wrong_secret) && !err.contains(server.secret_key()),
        "{err}"
    );
}

/// `kpromote …` with the server's `AWS_*` variables and a state directory.
fn kpromote(server: &S3Server, state: &Path, mut cmd: Command) -> (bool, String, String) {
    cmd.envs(server.env())
        .env("KPROMOTE_STATE_DIR", state)
        .env("RUST_LOG", "debug");
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !stdout.contains(server.secret_key()) && !stderr.contains(server.secret_key()),
        "the secret key was printed:\n{stdout}\n{stderr}"
    );
    (out.status.success(), stdout, stderr)
}

fn plain(subcommand: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpromote"));
    cmd.arg(subcommand).args(args);
    cmd
}

#[tokio::test]
async fn promotion_rolls_back_from_the_bucket_alone() {
    let server = server();
    let (pair, before) = Pair::start_with_nginx().await;
    let state = tempfile::tempdir().unwrap();
    let member_kubeconfig = pair.env.cluster("member").kubeconfig_path().display().to_string();

    // Backup straight into the bucket.
    let (ok, out, err) = kpromote(
        &server,
        state.path(),
        plain(
            "backup",
            &[
                "--kubeconfig",
                &member_kubeconfig,
                "-n",
                "nginx-test",
                "--backup-location",
                "s3://kp-archives/prod/member/",
                "--name",
                "nginx.tar.zst",
            ],
        ),
    );
    assert!(ok, "{out}\n{err}");
    let url = "s3://kp-archives/prod/member/nginx.tar.zst";
    assert!(out.contains(url), "{out}");
    assert!(
        server
            .bucket_dir(BUCKET)
            .join("prod/member/nginx.tar.zst")
            .is_file()
    );

    // Every offline reader takes the URL.
    let (ok, out, err) = kpromote(&server, state.path(), plain("inspect", &[url]));
    assert!(ok && out.contains("nginx-test"), "{out}\n{err}");
    let (ok, out, err) = kpromote(&server, state.path(), plain("verify", &[url]));
    assert!(ok && out.contains("verified"), "{out}\n{err}");
    let (ok, out, err) = kpromote(
        &server,
        state.path(),
        plain("show", &[url, "deployments.apps/nginx-test/nginx", "-o", "json"]),
    );
    assert!(ok && out.contains("\"kind\": \"Deployment\""), "{out}\n{err}");
    assert!(err.contains("bytes fetched by ranged reads"), "{err}");
    let (ok, out, err) = kpromote(&server, state.path(), plain("diff", &[url, url]));
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = kpromote(&server, state.path(), plain("status", &[url]));
    assert!(ok, "{out}\n{err}");

    // Promote from the bucket; its journal goes to the local state directory.
    let (ok, out, err) = kpromote(&server, state.path(), {
        let mut cmd = pair.kpromote("promote");
        cmd.args(["--archive", url]);
        cmd
    });
    assert!(ok, "{out}\n{err}");
    assert!(
        state
            .path()
            .join("s3/kp-archives/prod/member/nginx.tar.zst.promote.journal")
            .is_file(),
        "the journal of a remote archive is in the state directory"
    );

    // The volume (and every journal with it) is lost: rollback from the bucket alone.
    drop(state);
    let fresh = tempfile::tempdir().unwrap();
    let (ok, out, err) = kpromote(&server, fresh.path(), {
        let mut cmd = pair.kpromote("rollback");
        cmd.args(["--archive", url]);
        cmd
    });
    assert!(ok, "{out}\n{err}");
    pair.assert_rolled_back("nginx-test", &before, "rollback from object storage")
        .await;

    // Wrong credentials: a clear error, no secret.
    let mut cmd = plain("inspect", &[url]);
    cmd.envs(server.env())
        .env("AWS_SECRET_ACCESS_KEY", "kpromote-wrong-secret-77e1");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(url) && err.contains("credentials"), "{err}");
    assert!(
        !err.contains("kpromote-wrong-secret-77e1") && !err.contains(server.secret_key()),
        "{err}"
    );
}

#[tokio::test]
async fn the_controller_keeps_a_policys_archive_in_its_bucket() {
    let server = server();
    let env = Env::start().await;
    let before = support::apps::snapshot(&env.member, "nginx-test").await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().display().to_string();
    let owned = server.env();
    let mut envs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envs.push(("KPROMOTE_STATE_DIR", &state_dir));
    // The controller's default is one prefix; the policy names another, which wins.
    let controller = env.controller("s3", &["--backup-location=s3://kp-archives/default/"], &envs);
    let with_location = |policy: &str| {
        policy.replacen(
            "spec:\n",
            "spec:\n  backupLocation: s3://kp-archives/policies/\n",
            1,
        )
    };

    env.apply(&with_location(DESIGN_POLICY));
    let policy = env.wait_design(&controller, Phase::Completed, 120).await;
    let file = policy.status.unwrap().backedup_file.unwrap();
    assert!(
        file.starts_with("s3://kp-archives/policies/promote-policy-example20"),
        "{file}"
    );
    let key = file.strip_prefix("s3://kp-archives/").unwrap();
    assert!(
        server.bucket_dir(BUCKET).join(key).is_file(),
        "{file} is in the bucket"
    );

    env.apply(&with_location(&controller_env::design_rollback_policy()));
    env.wait_design(&controller, Phase::RolledBack, 120).await;
    support::wait_namespace_gone(&env.cp, "nginx-test").await;
    support::apps::snapshot(&env.member, "nginx-test")
        .await
        .assert_rolled_back_to(&before, "controller rollback from object storage");

    // The secret key is nowhere: the controller's log, the policy, the events.
    let log = controller.log();
    assert!(log.contains("s3://kp-archives/policies/"), "{log}");
    assert!(
        !log.contains(server.secret_key()),
        "the controller logged the secret key"
    );
    for what in [
        &["get", "promotepolicies", "-o", "yaml"][..],
        &["get", "events", "-A", "-o", "yaml"],
    ] {
        let out = env.kubectl_cp(what);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("s3://kp-archives/policies/"),
            "{text}"
        );
        assert!(
            !text.contains(server.secret_key()),
            "{what:?} shows the secret key"
        );
    }
}
