//! The controller's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process
//! serves requests) and `/readyz` (connected to the control plane, the CRD is served and the
//! leader's PromotePolicy watch works; a
//! standby replica is ready too — readiness routes scrapes, not work, and leadership shows in
//! `kpromote_leader`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use super::metrics::Metrics;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Why the PromotePolicy watch is down, while it is: a controller that cannot watch does
    /// nothing, and must not look healthy.
    watch_down: std::sync::Mutex<Option<String>>,
}

impl Health {
    /// Marks the replica ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Records that the watch failed, with why (`None`: it works again).
    pub(crate) fn set_watch_down(&self, why: Option<String>) {
        *self
            .watch_down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// Why the watch is down, if it is.
    #[must_use]
    pub(crate) fn watch_down(&self) -> Option<String> {
        self.watch_down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the replica is ready: connected, and its watch (when it runs one) works.
    #[must_use]
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.watch_down().is_none()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The router of the endpoints.
pub(crate) fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

/// Serves the endpoints on `address` until the task is dropped.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>, health: Arc<Health>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(metrics, health)).await
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, PROMETHEUS_TEXT)], state.metrics.encode())
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(why) = state.health.watch_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the PromotePolicy watch is failing: {why}; is the CRD installed and may this service account \
                 list and watch promotepolicies.kosmos.io?"
            ),
        )
    } else if state.health.is_ready() {
        (StatusCode::OK, "ready".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the control plane yet".to_owned(),
        )
    }
}
