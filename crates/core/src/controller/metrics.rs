//! The controller's Prometheus metrics (text exposition at `/metrics`).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `kpromote_reconciles_total` | counter | | reconciles run |
//! | `kpromote_reconcile_errors_total` | counter | `error` | reconciles that returned an error (retried with backoff) |
//! | `kpromote_reconcile_duration_seconds` | histogram | | wall time of one reconcile (a whole promotion runs in one) |
//! | `kpromote_phase_transitions_total` | counter | `from`, `to` | status phase changes written |
//! | `kpromote_failures_total` | counter | `phase` | failed phases entered (`FailedPrecheck`, …) |
//! | `kpromote_step_duration_seconds` | histogram | `step`, `outcome` | backup, promote and rollback runs of the engine |
//! | `kpromote_leader` | gauge | | 1 while this replica holds the leader lease |
//! | `kpromote_watch_up` | gauge | | 1 while the leader's PromotePolicy watch works, 0 while it fails |
//! | `kpromote_watch_errors_total` | counter | | PromotePolicy watch failures (no CRD, no RBAC, API server gone) |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::policy::Phase;

/// Labels naming an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    /// The kind (see the reconcile error's `metric_label`).
    pub error: String,
}

/// Labels of a phase transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransitionLabels {
    /// The phase before (`New` for a policy without one).
    pub from: String,
    /// The phase after.
    pub to: String,
}

/// Labels naming a phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PhaseLabels {
    /// The phase.
    pub phase: String,
}

/// Labels of an engine run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StepLabels {
    /// `backup`, `promote` or `rollback`.
    pub step: String,
    /// `ok`, `failed` or `interrupted`.
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    // 0.5 s … ~68 min.
    Histogram::new(exponential_buckets(0.5, 2.0, 14))
}

/// Every metric of the controller, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    transitions: Family<TransitionLabels, Counter>,
    failures: Family<PhaseLabels, Counter>,
    step_duration: HistogramFamily<StepLabels>,
    leader: Gauge,
    watch_up: Gauge,
    watch_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kpromote");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        let transitions = Family::<TransitionLabels, Counter>::default();
        let failures = Family::<PhaseLabels, Counter>::default();
        let step_duration: HistogramFamily<StepLabels> = Family::new_with_constructor(step_histogram);
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that returned an error and were retried",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Wall time of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "phase_transitions",
            "PromotePolicy phase changes written to status",
            transitions.clone(),
        );
        registry.register("failures", "Failed phases entered", failures.clone());
        registry.register(
            "step_duration_seconds",
            "Duration of backup, promote and rollback runs",
            step_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let watch_up = Gauge::default();
        let watch_errors = Counter::default();
        registry.register(
            "watch_up",
            "1 while the PromotePolicy watch works, 0 while it fails",
            watch_up.clone(),
        );
        registry.register(
            "watch_errors",
            "PromotePolicy watch failures",
            watch_errors.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            transitions,
            failures,
            step_duration,
            leader,
            watch_up,
            watch_errors,
        }
    }

    /// Records that the watch works (`true`) or failed once more (`false`).
    pub(crate) fn watch(&self, up: bool) {
        self.watch_up.set(i64::from(up));
        if !up {
            self.watch_errors.inc();
        }
    }

    /// Counts a reconcile and its duration.
    pub(crate) fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Counts a reconcile error.
    pub(crate) fn reconcile_error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a phase change, and a failure when `to` is one.
    pub(crate) fn transition(&self, from: Option<Phase>, to: Phase) {
        self.transitions
            .get_or_create(&TransitionLabels {
                from: from.map_or("New", Phase::as_str).to_owned(),
                to: to.as_str().to_owned(),
            })
            .inc();
        if to.is_failure() {
            self.failures
                .get_or_create(&PhaseLabels {
                    phase: to.as_str().to_owned(),
                })
                .inc();
        }
    }

    /// Records an engine run.
    pub(crate) fn step(&self, step: &str, outcome: &str, took: Duration) {
        self.step_duration
            .get_or_create(&StepLabels {
                step: step.to_owned(),
                outcome: outcome.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records whether this replica leads.
    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_and_failures_are_exposed_with_their_labels() {
        let metrics = Metrics::new();
        metrics.transition(None, Phase::Prechecking);
        metrics.transition(Some(Phase::Prechecking), Phase::FailedPrecheck);
        metrics.reconciled(Duration::from_millis(30));
        metrics.step("backup", "ok", Duration::from_secs(2));
        metrics.set_leader(true);
        let text = metrics.encode();
        assert!(
            text.contains(r#"kpromote_phase_transitions_total{from="New",to="Prechecking"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"kpromote_failures_total{phase="FailedPrecheck"} 1"#));
        assert!(text.contains("kpromote_reconciles_total 1"));
        assert!(text.contains(r#"kpromote_step_duration_seconds_count{step="backup",outcome="ok"} 1"#));
        assert!(text.contains("kpromote_leader 1"));
    }
}
