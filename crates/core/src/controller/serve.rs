//! The controller process: connect, serve `/metrics` `/healthz` `/readyz`, elect a leader, run
//! the controller until shutdown or lost leadership. One home for this loop, used by
//! `kpromote controller` and by the demo.
//!
//! Shutdown and lost leadership drop the running reconciles at once rather than waiting for a
//! promotion to finish: the journals make that equivalent to a crash, which the next leader
//! resumes from. On shutdown the lease is released so a standby takes over without waiting for it
//! to expire; on lost leadership [`serve`] returns [`Ended::LostLeadership`] so the process exits
//! non-zero (and is restarted as a candidate), never acting again on a stale belief that it leads.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::http::{self, Health};
use super::leader::{LeaderElector, LeaderError, LeaseConfig};
use super::metrics::Metrics;
use super::{ControllerConfig, ControllerError};
use crate::access::{AccessError, ClusterClient};

/// How the controller process runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Kubeconfig of the control plane (`None`: in-cluster, then `$KUBECONFIG`, `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig.
    pub context: Option<String>,
    /// What the controller does.
    pub config: ControllerConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` listen; `None` serves nothing.
    pub metrics_address: Option<SocketAddr>,
    /// The leader Lease; `None` runs as the only replica.
    pub lease: Option<LeaseConfig>,
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for; the lease (if any) was released.
    Shutdown,
    /// Another replica holds the lease now; the reason is given. Exit non-zero.
    LostLeadership(String),
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The control plane cannot be reached.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The controller cannot work there (CRD, backup directory).
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The leader election settings are unsafe.
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

/// Runs the controller until `shutdown` resolves or leadership is lost.
///
/// # Errors
/// [`ServeError`] when the controller cannot start; once running it only ends as [`Ended`].
pub async fn serve(options: ServeOptions, shutdown: impl Future<Output = ()>) -> Result<Ended, ServeError> {
    let ServeOptions {
        kubeconfig,
        context,
        config,
        metrics_address,
        lease,
    } = options;
    let cp = ClusterClient::connect("control plane", kubeconfig.as_deref(), context.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    if let Some(address) = metrics_address {
        let listener = http::serve(address, metrics.clone(), health.clone());
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    super::probe(&cp.client, &config).await?;
    health.set_ready(true);
    tracing::info!(identity = %config.instance, server = %cp.server, backup_dir = %config.backup_dir.display(), "connected");

    let Some(lease) = lease else {
        metrics.set_leader(true);
        tokio::select! {
            () = super::run(cp.client, config, metrics, health) => {}
            () = shutdown => tracing::info!("shutting down"),
        }
        return Ok(Ended::Shutdown);
    };
    let mut elector = LeaderElector::new(cp.client.clone(), lease)?;
    tokio::pin!(shutdown);
    let renewed = tokio::select! {
        at = elector.acquire() => at,
        () = &mut shutdown => return Ok(Ended::Shutdown),
    };
    metrics.set_leader(true);
    let lost = tokio::select! {
        lost = elector.hold(renewed) => Some(lost),
        () = super::run(cp.client, config, metrics.clone(), health.clone()) => None,
        () = &mut shutdown => None,
    };
    // The controller future is dropped: its reconciles are aborted at their next await. Give them
    // a moment to unwind before a standby may take over.
    metrics.set_leader(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    match lost {
        Some(lost) => {
            tracing::error!(reason = %lost, "lost leadership; exiting so no stale leader acts");
            Ok(Ended::LostLeadership(lost.to_string()))
        }
        None => {
            tracing::info!("shutting down");
            elector.release().await;
            Ok(Ended::Shutdown)
        }
    }
}

/// This replica's identity: `$POD_NAME`, else `<hostname>-<pid>`.
#[must_use]
pub fn default_identity() -> String {
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
pub async fn shutdown_signal() {
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
