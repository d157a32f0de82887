//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never act at once.
//!
//! The algorithm is client-go's: a candidate takes the lease when it is free, released, or when
//! its record (holder, renew time, transitions) has not changed for a whole lease duration *as
//! measured on the candidate's own clock since it first saw that record* — so clock skew
//! between nodes does not matter, only clock rate. Every write is a `replace` carrying the
//! resourceVersion just read, so two candidates racing for the lease cannot both win: the
//! second gets 409 Conflict.
//!
//! # Guarantees
//! The leader **stops itself** ([`LeaderElector::hold`] returns) when it has not renewed for
//! `renew_deadline`, measured from when it *sent* its last successful renewal (before the
//! server stamped it). Renewals are tried every `retry_period`, each cut off after
//! `retry_period`, so a leader that cannot reach the API server stops at most
//! `renew_deadline + 2 × retry_period` after its last renewal reached the server.
//! [`LeaseConfig::validate`] requires the lease duration to exceed that, so by the time another
//! candidate may take over, the old leader has stopped. (kube-lease-manager, the obvious crate,
//! keeps reporting leadership while its renewals fail, which gives no such bound.)
//!
//! # Caveats
//! Stopping means dropping the controller's futures; a request already on the wire still
//! lands. The margin between the bound above and the lease duration (5 s by default) covers it.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaderError {
    /// The timings cannot guarantee a single leader.
    #[error(
        "leader election timings are unsafe: the lease duration ({lease:?}) must exceed the renew deadline \
         ({renew:?}) plus twice the retry period ({retry:?}), and the renew deadline must exceed the retry period"
    )]
    UnsafeTimings {
        /// Lease duration.
        lease: Duration,
        /// Renew deadline.
        renew: Duration,
        /// Retry period.
        retry: Duration,
    },
}

/// Where the lease is and how it is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name), written as `holderIdentity`.
    pub identity: String,
    /// How long a lease not renewed stays valid for the other candidates.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try, and the leader renews.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Default timings: 20 s lease, 10 s renew deadline, 2 s retry period (the bound of the
    /// module docs is 14 s, 6 s under the lease duration).
    #[must_use]
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(20),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the timings give the guarantee of the module docs.
    ///
    /// # Errors
    /// [`LeaderError::UnsafeTimings`].
    pub(crate) fn validate(&self) -> Result<(), LeaderError> {
        if self.lease_duration > self.renew_deadline + 2 * self.retry_period
            && self.renew_deadline > self.retry_period
            && !self.retry_period.is_zero()
        {
            Ok(())
        } else {
            Err(LeaderError::UnsafeTimings {
                lease: self.lease_duration,
                renew: self.renew_deadline,
                retry: self.retry_period,
            })
        }
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lost {
    /// No renewal succeeded within the renew deadline.
    RenewDeadline,
    /// Another replica holds the lease.
    TakenBy(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RenewDeadline => f.write_str("could not renew the lease within the renew deadline"),
            Self::TakenBy(holder) => write!(f, "the lease is held by {holder}"),
        }
    }
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// This replica holds the lease (acquired or renewed).
    Held,
    /// Another replica holds a valid lease.
    HeldBy(String),
    /// The lease changed between read and write; try again.
    Conflict,
}

/// The lease record as last seen, and when this replica first saw it.
#[derive(Debug)]
struct Observed {
    record: (Option<String>, Option<MicroTime>, Option<i32>),
    at: Instant,
}

/// One replica's side of the election.
#[derive(Debug)]
pub(crate) struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

impl LeaderElector {
    /// An elector for `config`.
    ///
    /// # Errors
    /// Unsafe timings.
    pub(crate) fn new(client: Client, config: LeaseConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        })
    }

    /// Waits until this replica holds the lease. Returns when the successful attempt was sent,
    /// for [`hold`](Self::hold). API errors are logged and retried.
    pub(crate) async fn acquire(&mut self) -> Instant {
        let mut announced = None;
        loop {
            let sent = Instant::now();
            match self.attempt().await {
                Ok(Attempt::Held) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name, "acquired the leader lease");
                    return sent;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if announced.as_ref() != Some(&holder) {
                        tracing::info!(%holder, "another replica leads; standing by");
                        announced = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot read or write the lease"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the lease every retry period until leadership is lost; never returns while this
    /// replica leads. `last_renewal` is when the acquiring attempt was sent.
    pub(crate) async fn hold(&mut self, mut last_renewal: Instant) -> Lost {
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let sent = Instant::now();
            match tokio::time::timeout(self.config.retry_period, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => last_renewal = sent,
                Ok(Ok(Attempt::HeldBy(holder))) => return Lost::TakenBy(holder),
                Ok(Ok(Attempt::Conflict)) => tracing::warn!("lease renewal conflicted; retrying"),
                Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                Err(_) => tracing::warn!("lease renewal timed out; retrying"),
            }
            if last_renewal.elapsed() > self.config.renew_deadline {
                return Lost::RenewDeadline;
            }
        }
    }

    /// Gives the lease up (holder cleared, duration 1 s) so a standby takes over at once. Does
    /// nothing if another replica holds it.
    pub(crate) async fn release(&mut self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader lease; it expires on its own"),
        }
    }

    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Held)
                }
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(holder) = &holder
            && !mine
        {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            let seen_for = self.observed.as_ref().map_or(Duration::ZERO, |o| o.at.elapsed());
            if seen_for < duration {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
            tracing::info!(%holder, "the leader lease expired; taking over");
        }
        let mut next = spec.clone();
        next.holder_identity = Some(self.config.identity.clone());
        next.lease_duration_seconds = Some(seconds);
        next.renew_time = Some(now.clone());
        if !mine {
            next.acquire_time = Some(now);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(next);
        // `replace` sends the resourceVersion just read: a precondition the server enforces.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(Attempt::Held)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity, spec.renew_time, spec.lease_transitions);
        if self.observed.as_ref().map(|o| &o.record) != Some(&record) {
            self.observed = Some(Observed {
                record,
                at: Instant::now(),
            });
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_timings_are_safe_and_tight_ones_are_refused() {
        let config = LeaseConfig::new("ns", "lease", "me");
        config.validate().expect("defaults are safe");
        let tight = LeaseConfig {
            lease_duration: Duration::from_secs(12),
            ..config.clone()
        };
        assert!(tight.validate().is_err(), "12 s <= 10 s + 2 × 2 s");
        let no_retry = LeaseConfig {
            retry_period: Duration::ZERO,
            ..config
        };
        assert!(no_retry.validate().is_err());
    }
}
