//! The PromotePolicy controller: a state machine persisted in `status`, driven by
//! kube-runtime's [`Controller`], running the same engine as the command line.
//!
//! # The state machine
//!
//! ```text
//!  ""  ─► Prechecking ─┬─► Backuping ─┬─► Detaching ─► Restoring ─┬─► Completed ──(rollback)──┐
//!                      │              │        │             │    │                            ▼
//!                      ▼              ▼        └──(failure)──┴────┴─► RollingBack ─┬─► RolledBack
//!               FailedPrecheck   FailedBackup                        (automatic)   ├─► FailedDetach / FailedRestore
//!                                                                                  └─► FailedRollback
//! ```
//!
//! - **Prechecking**: every check of [`crate::precheck`], all failures at once, nothing touched;
//!   plus: the member is reachable, and no other policy holds an included namespace
//!   ([`machine::busy_namespaces`]). Prechecks run one at a time and the winner writes
//!   `Backuping` before the next one lists the policies, so two overlapping policies can never
//!   both pass.
//! - **Backuping**: [`crate::backup::run`] into the backup directory. The archive's name is fixed
//!   by the policy name and `startTimestamp`, and backup only ever renames a finished archive
//!   into place; so a controller killed after the archive exists but before the status says so
//!   finds it on restart and adopts it. The status gets `backedupFile` and `Detaching` in the
//!   same write, right after the archive exists.
//! - **Detaching / Restoring**: [`crate::engine::promote::promote`] with its journal beside the
//!   archive (the same files as `kpromote promote`). Its progress callback moves the phase to
//!   `Restoring` when the restore step starts. Re-entering either phase (a restart) resumes the
//!   engine from the journal.
//! - **Failure after the member was touched**: the controller does not let the engine roll back
//!   on its own. It first writes `RollingBack` (the `RolledBack` condition's reason says
//!   `DetachFailed` or `RestoreFailed`), then runs the rollback — so a controller killed during
//!   the automatic rollback resumes the *rollback*, never the promote. The rollback ends in
//!   `FailedDetach` / `FailedRestore` with `failureReason` saying it was rolled back, or in
//!   `FailedRollback`.
//! - **Rollback on request**: `rollback: "true"` on `Completed`, `FailedDetach` or
//!   `FailedRestore` → `RollingBack` → `RolledBack` / `FailedRollback`. `FailedRollback` is
//!   retried when the user edits the spec again with `rollback: "true"` (as upstream: set it
//!   again). On `FailedPrecheck` / `FailedBackup` nothing was ever changed, so a rollback
//!   request is refused with a `RollbackIgnored` event; on a new policy it is a precheck error.
//!   Any edit of a `FailedPrecheck` / `FailedBackup` policy's spec starts it over (the user
//!   fixed it).
//! - Every long step runs inside the reconcile. kube-runtime never runs two reconciles of one
//!   object at once, so there is exactly one actor per policy without bookkeeping of ours, and
//!   stopping the controller (shutdown, lost leadership) drops the reconcile — which the
//!   journals make equivalent to a crash, the case resume is built and tested for. Progress is
//!   patched from the same task while the engine runs (at most every `progress_interval`).
//! - Each reconcile decides on a fresh read of the policy, not the watch cache, which can lag
//!   behind the controller's own last status write.
//!
//! # Deletion (finalizer `kpromote.kosmos.io/finalizer`)
//! See [`machine::OnDelete`]: a policy deleted while `Detaching` or `Restoring` is rolled back
//! at once (the running promote is stopped), so the member is never left half detached; one
//! deleted while `RollingBack` finishes its rollback; a `Completed` policy's deletion leaves
//! the promoted state in place. The finalizer stays until the rollback succeeds.
//!
//! # Status and events
//! The status is written with server-side apply on the status subresource, field manager
//! [`FIELD_MANAGER`], always whole (fields not sent are dropped). Each phase change publishes
//! an event (reason: the phase; `Warning` for failures and automatic rollbacks). The policy is
//! cluster-scoped, so events land in the `default` namespace; `kubectl describe promotepolicy`
//! finds them there (it searches every namespace for events about the object).
//!
//! # Exclusions
//! An empty `excludedNamespaceScopedResources` means the design's recommended list
//! ([`crate::resources::DEFAULT_EXCLUDED_RESOURCES`]), as for `kpromote backup`.

pub mod http;
pub mod leader;
pub(crate) mod machine;
pub mod metrics;
mod reconcile;
pub mod serve;
mod steps;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::ListParams;
use kube::runtime::Controller;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::access::{AccessError, ClusterClient, KubeconfigPolicy};
use crate::engine::EngineOptions;
use crate::kosmos::cluster::Cluster;
use crate::policy::PromotePolicy;

/// Field manager of the controller's status writes.
pub(crate) const FIELD_MANAGER: &str = "kpromote-controller";
/// The finalizer that lets the controller roll back a policy deleted mid-promotion.
pub(crate) const FINALIZER: &str = "kpromote.kosmos.io/finalizer";
/// The controller name events are reported under.
pub(crate) const REPORTING_CONTROLLER: &str = "kpromote-controller";

/// How the controller works.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Where archives go (the backup PVC's mount point).
    pub backup_dir: PathBuf,
    /// Where archives go instead, unless a policy names its own (`spec.backupLocation`): a
    /// bucket and prefix in object storage (`--backup-location`). `None`: [`Self::backup_dir`].
    pub backup_location: Option<crate::storage::BackupLocation>,
    /// Kubeconfig of the member when no Kosmos `Cluster` object of the policy's `clusterName`
    /// exists (setups without Kosmos).
    pub member_kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig.
    pub member_context: Option<String>,
    /// What a Kosmos `Cluster`'s kubeconfig may ask of this process (inline credentials only,
    /// unless the operator allowed `exec`).
    pub kubeconfig_policy: KubeconfigPolicy,
    /// Namespaces never promoted.
    pub forbidden_namespaces: Vec<String>,
    /// Engine knobs.
    pub engine: EngineOptions,
    /// Minimum time between two progress writes of one policy.
    pub progress_interval: Duration,
    /// This replica's name in events (`reportingInstance`).
    pub instance: String,
    /// Recipients every archive's Secrets are sealed to, besides a policy's `spec.encryptTo`.
    pub encrypt_to: kpromote_archive::Recipients,
    /// Identities that open sealed archives (read from a mounted Secret): promote reads the
    /// archive it wrote back, and rollback reads it, so one must be a recipient of each.
    pub identities: kpromote_archive::Identities,
}

impl ControllerConfig {
    /// Where new archives go by default: [`Self::backup_location`], else [`Self::backup_dir`].
    #[must_use]
    pub(crate) fn default_location(&self) -> crate::storage::BackupLocation {
        self.backup_location
            .clone()
            .unwrap_or_else(|| crate::storage::BackupLocation::Dir(self.backup_dir.clone()))
    }

    /// The defaults of `kpromote controller`.
    #[must_use]
    pub fn new(instance: &str) -> Self {
        Self {
            backup_dir: PathBuf::from(crate::backup::DEFAULT_BACKUP_DIR),
            backup_location: None,
            member_kubeconfig: None,
            member_context: None,
            kubeconfig_policy: KubeconfigPolicy::default(),
            forbidden_namespaces: crate::precheck::DEFAULT_FORBIDDEN_NAMESPACES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            engine: EngineOptions::default(),
            progress_interval: Duration::from_secs(2),
            instance: instance.to_owned(),
            encrypt_to: kpromote_archive::Recipients::default(),
            identities: kpromote_archive::Identities::none(),
        }
    }
}

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// The PromotePolicy API is not served.
    #[error(
        "cannot list PromotePolicies ({0}); is the CRD installed (`kubectl apply -f deploy/crds.yaml`) and may \
         this service account list promotepolicies.kosmos.io?"
    )]
    CrdNotServed(#[source] kube::Error),
    /// The backup directory is missing.
    #[error("backup directory {0} is not a directory; mount the backup volume there or pass --backup-dir")]
    BackupDir(PathBuf),
}

/// Checks the controller can work: the CRD is served and the backup directory exists.
///
/// # Errors
/// [`ControllerError`] saying what is missing.
pub(crate) async fn probe(client: &Client, config: &ControllerConfig) -> Result<(), ControllerError> {
    let policies: Api<PromotePolicy> = Api::all(client.clone());
    policies
        .list(&ListParams::default().limit(1))
        .await
        .map_err(ControllerError::CrdNotServed)?;
    // With object storage the volume is optional: it only keeps journals when mounted.
    if config.backup_location.is_none() && !config.backup_dir.is_dir() {
        return Err(ControllerError::BackupDir(config.backup_dir.clone()));
    }
    Ok(())
}

/// Crash injection for tests, through the journal's variable ([`crate::journal::FAILPOINT_ENV`]):
/// `phase:<Phase>` aborts the process right after a status with that phase is written (before
/// the phase's work starts); `backup:written` aborts right after the archive exists, before the
/// status names it. The controller tests kill it this way in every working phase. Compiled in
/// only where [`crate::journal::FAILPOINTS_ENABLED`].
fn failpoint(point: &str) {
    if crate::journal::FAILPOINTS_ENABLED
        && std::env::var(crate::journal::FAILPOINT_ENV).is_ok_and(|v| v == point)
    {
        eprintln!(
            "kpromote: {} reached ({point}); aborting to simulate a crash",
            crate::journal::FAILPOINT_ENV
        );
        std::process::abort();
    }
}

/// Shared by every reconcile.
pub(crate) struct Context {
    client: Client,
    policies: Api<PromotePolicy>,
    config: ControllerConfig,
    recorder: Recorder,
    metrics: Arc<metrics::Metrics>,
    store: Store<PromotePolicy>,
    /// Prechecks run one at a time: see the module docs.
    precheck_lock: tokio::sync::Mutex<()>,
    /// Consecutive reconcile errors per policy, for backoff.
    retries: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Context {
    /// The member cluster of `cluster_name`: its Kosmos `Cluster` object, or the configured
    /// kubeconfig when there is no such object.
    async fn member(&self, cluster_name: &str) -> Result<ClusterClient, AccessError> {
        if let Some(path) = &self.config.member_kubeconfig {
            // Only a Cluster that does not exist falls back to the flag's kubeconfig: on any other
            // error (a 503, a timeout) the fallback could aim a rollback at another cluster.
            let registered = Api::<Cluster>::all(self.client.clone())
                .get_opt(cluster_name)
                .await
                .map_err(|e| AccessError::KosmosCluster {
                    name: cluster_name.to_owned(),
                    detail: format!("cannot be read ({e}); not falling back to --member-kubeconfig"),
                })?;
            if registered.is_none() {
                return ClusterClient::connect("member", Some(path), self.config.member_context.as_deref())
                    .await;
            }
        }
        ClusterClient::from_kosmos_cluster(&self.client, cluster_name, self.config.kubeconfig_policy).await
    }

    /// Whether the policy named `name` is being deleted, as the watch cache knows it.
    fn is_deleting(&self, name: &str) -> bool {
        self.store
            .get(&kube::runtime::reflector::ObjectRef::new(name))
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs the controller until the future is dropped (shutdown, lost leadership). Call
/// [`probe`] first. While its PromotePolicy watch fails (the CRD or the RBAC went away), it
/// says so: a warning, `kpromote_watch_up` 0, and `/readyz` failing through `health`.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<metrics::Metrics>,
    health: Arc<http::Health>,
) {
    let policies: Api<PromotePolicy> = Api::all(client.clone());
    let (store, writer) = kube::runtime::reflector::store();
    let watching = {
        let (metrics, health) = (metrics.clone(), health.clone());
        watcher(policies.clone(), watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .inspect(move |event| match event {
                Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    if health.watch_down().is_some() {
                        tracing::info!("PromotePolicy watch works again");
                    }
                    metrics.watch(true);
                    health.set_watch_down(None);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot watch PromotePolicies; nothing is reconciled until this works: is the CRD installed \
                         (`kubectl apply -f deploy/crds.yaml`) and may this service account list and watch \
                         promotepolicies.kosmos.io?"
                    );
                    metrics.watch(false);
                    health.set_watch_down(Some(e.to_string()));
                }
            })
            .applied_objects()
    };
    let controller = Controller::for_stream(watching, store.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance: Some(config.instance.clone()),
        },
    );
    let context = Arc::new(Context {
        client,
        policies,
        config,
        recorder,
        metrics,
        store,
        precheck_lock: tokio::sync::Mutex::new(()),
        retries: std::sync::Mutex::default(),
    });
    tracing::info!("controller started");
    controller
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|outcome| async move {
            match outcome {
                Ok((policy, action)) => tracing::debug!(policy = %policy.name, ?action, "reconciled"),
                // Watch failures are reported where they happen, above.
                Err(e) => tracing::debug!(error = %e, "controller stream"),
            }
        })
        .await;
}
