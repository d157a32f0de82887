//! `kpromote controller`: the PromotePolicy controller, with leader election, `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! Shutdown (SIGTERM, Ctrl-C) and lost leadership drop the running reconciles at once rather
//! than waiting for a promotion to finish: the journals make that equivalent to a crash, which
//! the next leader resumes from. On shutdown the lease is released so a standby takes over
//! without waiting for it to expire; on lost leadership the process exits non-zero (and is
//! restarted as a candidate), never acting again on a stale belief that it leads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kpromote::access::ClusterClient;
use kpromote::controller::http::{self, Health};
use kpromote::controller::leader::{LeaderElector, LeaseConfig};
use kpromote::controller::metrics::Metrics;
use kpromote::controller::{self, ControllerConfig};

/// Arguments of `kpromote controller`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kubeconfig of the Kosmos control plane (default: in-cluster service account, then
    /// $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Context of the control plane in its kubeconfig.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Kubeconfig of the member cluster, for policies whose `clusterName` has no Kosmos
    /// `Cluster` object (setups without Kosmos). A Cluster object always wins.
    #[arg(long, value_name = "FILE")]
    member_kubeconfig: Option<PathBuf>,
    /// Context of the member in --member-kubeconfig.
    #[arg(long, value_name = "NAME")]
    member_context: Option<String>,
    /// Let a Kosmos `Cluster`'s kubeconfig run its `exec` command inside this process. Off by
    /// default: whoever may edit Cluster objects would run code in the controller's pod.
    #[arg(long)]
    allow_kubeconfig_exec: bool,
    /// Directory of the archives (the backup volume).
    #[arg(long, value_name = "DIR", default_value = kpromote::backup::DEFAULT_OUTPUT_DIR)]
    backup_dir: PathBuf,
    /// Namespaces that may never be promoted.
    #[arg(
        long,
        value_name = "NS,...",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    forbidden_namespaces: Vec<String>,
    /// Elect a leader through a Lease, so only one replica acts (`--leader-elect=false` for a
    /// single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, value_name = "NAME", default_value = "kpromote-controller")]
    leader_election_name: String,
    /// Seconds a lease not renewed stays valid for the other replicas.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    lease_duration_seconds: u64,
    /// Seconds the leader keeps acting without a successful renewal.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    renew_deadline_seconds: u64,
    /// Seconds between election attempts and renewals.
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    retry_period_seconds: u64,
    /// This replica's identity in the Lease and in events (default: $POD_NAME, else
    /// `<hostname>-<pid>`).
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,
    /// Address of /metrics, /healthz and /readyz (`off` to disable).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    metrics_address: String,
    /// Objects created or deleted at once within one level of a plan.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Fallback: wait this many seconds before each level of owners instead of observing that
    /// the control plane's controllers have seen the dependents (0, the default, observes).
    #[arg(long, default_value_t = 0.0)]
    settle_seconds: f64,
    /// Minimum seconds between two progress writes of one policy.
    #[arg(long, default_value_t = 2.0)]
    progress_interval_seconds: f64,
}

/// Runs the controller until SIGTERM / Ctrl-C, or until leadership is lost.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        let cp = ClusterClient::connect(
            "control plane",
            args.kubeconfig.as_deref(),
            args.context.as_deref(),
        )
        .await?;
        let mut config = ControllerConfig::new(&identity);
        config.backup_dir = args.backup_dir.clone();
        config.member_kubeconfig = args.member_kubeconfig.clone();
        config.member_context = args.member_context.clone();
        config.kubeconfig_policy.allow_exec = args.allow_kubeconfig_exec;
        config.forbidden_namespaces = args.forbidden_namespaces.clone();
        config.engine.concurrency = args.concurrency.max(1);
        config.engine.settle = Duration::from_secs_f64(args.settle_seconds.max(0.0));
        config.progress_interval = Duration::from_secs_f64(args.progress_interval_seconds.max(0.0));

        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        if args.metrics_address != "off" {
            let address: SocketAddr = args
                .metrics_address
                .parse()
                .with_context(|| format!("--metrics-address {}", args.metrics_address))?;
            let listener = http::serve(address, metrics.clone(), health.clone());
            tokio::spawn(async move {
                if let Err(e) = listener.await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        controller::probe(&cp.client, &config).await?;
        health.set_ready(true);
        tracing::info!(identity, server = %cp.server, backup_dir = %config.backup_dir.display(), "connected");

        if !args.leader_elect {
            metrics.set_leader(true);
            tokio::select! {
                () = controller::run(cp.client, config, metrics) => {}
                () = shutdown_signal() => tracing::info!("shutting down"),
            }
            return Ok(ExitCode::SUCCESS);
        }

        let namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_owned());
        let lease = LeaseConfig {
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
            retry_period: Duration::from_secs(args.retry_period_seconds),
            ..LeaseConfig::new(&namespace, &args.leader_election_name, &identity)
        };
        let mut elector = LeaderElector::new(cp.client.clone(), lease)?;
        let renewed = tokio::select! {
            at = elector.acquire() => at,
            () = shutdown_signal() => return Ok(ExitCode::SUCCESS),
        };
        metrics.set_leader(true);
        let lost = tokio::select! {
            lost = elector.hold(renewed) => Some(lost),
            () = controller::run(cp.client, config, metrics.clone()) => None,
            () = shutdown_signal() => None,
        };
        // The controller future is dropped: its reconciles are aborted at their next await.
        // Give them a moment to unwind before a standby may take over.
        metrics.set_leader(false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        match lost {
            Some(lost) => {
                tracing::error!(reason = %lost, "lost leadership; exiting so no stale leader acts");
                Ok(ExitCode::FAILURE)
            }
            None => {
                tracing::info!("shutting down");
                elector.release().await;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kpromote".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
