//! Helpers shared by the cluster test binaries.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

/// The committed CRDs (`deploy/crds.yaml`), as a user applies them.
pub const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds.yaml");

/// Applications the tests promote.
pub mod apps;
/// Archives written straight from a cluster.
pub mod archiving;
/// A proxy that injects the faults of a busy API server.
pub mod faults;
/// The two clusters a promote test starts from.
pub mod pair;
/// One archived promotion a test drives.
pub mod promotion;

/// Asserts that `kpromote status -o json` output `status` tells the operator to run `command`
/// (`kpromote promote --archive …`) next.
pub fn assert_next(status: &serde_json::Value, command: &str) {
    let next = status["next"].as_str().unwrap_or_default();
    assert!(
        next.starts_with(&format!("{command} --archive")),
        "next: {next:?}, wanted {command}: {status:#}"
    );
}

/// Waits until the kube-controller-manager of each cluster has seen everything written in its
/// namespace so far — the engine's own observed barrier ([`kpromote_core::engine::barrier`]) —
/// rather than sleeping a fixed time before asserting that nothing changed: whatever those
/// controllers would do about the objects under test was queued before the barrier's sentinels,
/// so a late change cannot slip past the assertion that follows.
pub async fn controllers_caught_up(clusters: &[(&kube::Client, &str)]) {
    use kpromote_core::engine::LiveCluster;
    use kpromote_core::engine::barrier::{Needs, observe};
    let every_cache = Needs {
        pods_and_replicasets: true,
        revisions: true,
        replicasets: true,
    };
    for (client, ns) in clusters {
        let cluster = LiveCluster::new("cluster", (*client).clone());
        observe(&cluster, ns, every_cache, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("the controllers of {ns} did not catch up: {e}"));
    }
}

/// Polls `check` every 200 ms until it returns `Some`, failing the test with `what` after
/// `timeout`. Cluster behaviour (garbage collection, adoption) is asynchronous; tests wait for
/// it explicitly rather than sleeping.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until namespace `ns` is gone from the cluster behind `client` (deletion, and so the
/// namespace controller's cleanup, is asynchronous).
pub async fn wait_namespace_gone(client: &kube::Client, ns: &str) {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    wait_for(
        &format!("namespace {ns} to be gone"),
        Duration::from_secs(90),
        || async { namespaces.get_opt(ns).await.unwrap().is_none().then_some(()) },
    )
    .await;
}

/// Whether object `name` exists behind `api` (a presence check the tests make after each step).
pub async fn present<K>(api: kube::Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.get_opt(name).await.unwrap().is_some()
}

/// Whether Deployment `ns/name` exists in the cluster behind `client`.
pub async fn has_deployment(client: &kube::Client, ns: &str, name: &str) -> bool {
    present(
        kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns),
        name,
    )
    .await
}

/// The mount of `container` at `path` and the name of the PersistentVolumeClaim behind it in
/// `pod`; fails the test naming what is missing.
pub fn claim_mounted_at<'a>(
    pod: &'a k8s_openapi::api::core::v1::PodSpec,
    container: &'a k8s_openapi::api::core::v1::Container,
    path: &str,
) -> (&'a k8s_openapi::api::core::v1::VolumeMount, &'a str) {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("no volume mounted at {path}"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("no volume {} in the pod", mount.name));
    let claim = volume
        .persistent_volume_claim
        .as_ref()
        .unwrap_or_else(|| panic!("volume {} is not a PVC volume", mount.name));
    (mount, &claim.claim_name)
}
