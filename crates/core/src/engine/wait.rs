//! Waiting on a cluster, one home for each way the engine does it, where running out is always
//! an error:
//!
//! - [`until`] polls until a condition holds, and fails once the work it waits for has stopped
//!   advancing for a stall window — never after a fixed total. How long the garbage collector
//!   takes to orphan a ReplicaSet's pods, or a namespace to empty, grows with what they hold: a
//!   3,000-pod ReplicaSet is orphaned at a production controller manager's 20 requests/s in
//!   about 150 s, and as long as the count of pods it still owns drops, waiting on is right.
//! - [`on_conflict`] runs a write computed from a read again when someone else's write overtook
//!   the read (HTTP 409), a bounded number of times.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::EngineError;
use super::live::LiveError;
use kpromote_model::object_key::ObjectKey;

/// The first pause between two looks; pauses grow by half each time up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two looks.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// What one look at awaited work found.
#[derive(Debug)]
pub(crate) enum Poll<T> {
    /// The condition holds.
    Ready(T),
    /// Not yet, and how far the work is.
    Pending(Progress),
}

/// How far awaited work is: what tells a slow wait from a stuck one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Items still to go (dependents still owned, objects left in a namespace): the work
    /// advances when fewer are left than ever before.
    Left(u64),
    /// A fingerprint of what the awaited controllers write (their objects' resourceVersions):
    /// the work advances when it changes.
    Moved(u64),
    /// Nothing to measure: one thing awaited, which advances only by becoming ready.
    Unmeasured,
}

/// What is awaited, for the error when it stalls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Awaited<'a> {
    /// Cluster role.
    pub cluster: &'a str,
    /// The object waited on.
    pub key: &'a ObjectKey,
    /// What is awaited, e.g. "the garbage collector to orphan its dependents".
    pub what: &'a str,
}

/// Looks at awaited work with `look` until it reports [`Poll::Ready`], pausing between looks.
///
/// # Errors
/// [`LiveError::Stalled`] once the work has not advanced (see [`Progress`]) for `stall`; the
/// errors of `look`.
pub(crate) async fn until<T, F, Fut>(
    awaited: Awaited<'_>,
    stall: Duration,
    mut look: F,
) -> Result<T, LiveError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, LiveError>>,
{
    let started = Instant::now();
    let mut advanced = started;
    let mut best: Option<Progress> = None;
    let mut pause = FIRST_PAUSE;
    loop {
        let now = match look().await? {
            Poll::Ready(value) => return Ok(value),
            Poll::Pending(progress) => progress,
        };
        if advances(best, now) {
            advanced = Instant::now();
            best = Some(now);
        }
        if advanced.elapsed() >= stall {
            return Err(LiveError::Stalled {
                cluster: awaited.cluster.to_owned(),
                key: awaited.key.clone(),
                what: awaited.what.to_owned(),
                stalled: stall.as_secs(),
                waited: started.elapsed().as_secs(),
                left: match best {
                    Some(Progress::Left(n)) => Some(n),
                    _ => None,
                },
            });
        }
        tokio::time::sleep(pause).await;
        pause = pause.mul_f64(1.5).min(MAX_PAUSE);
    }
}

/// Whether `now` is further than `best`, the furthest seen so far.
fn advances(best: Option<Progress>, now: Progress) -> bool {
    match (best, now) {
        (None, _) => true,
        (Some(Progress::Left(before)), Progress::Left(left)) => left < before,
        (Some(Progress::Moved(before)), Progress::Moved(mark)) => mark != before,
        _ => false,
    }
}

/// How often a write computed from a read is tried when the object keeps changing in between.
pub(crate) const CONFLICT_ATTEMPTS: usize = 5;

/// Runs `attempt` (given its number, from 0) until it does not fail with
/// [`LiveError::Conflict`], at most [`CONFLICT_ATTEMPTS`] times. Each attempt reads the object
/// afresh (the first may use a read made before), computes its write and makes it.
///
/// # Errors
/// [`LiveError::Conflict`] naming `what` when every attempt conflicted; other errors at once.
pub(crate) async fn on_conflict<T, F, Fut>(
    cluster: &str,
    key: &ObjectKey,
    what: &str,
    mut attempt: F,
) -> Result<T, EngineError>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T, EngineError>>,
{
    for n in 0..CONFLICT_ATTEMPTS {
        match attempt(n).await {
            Err(EngineError::Live(LiveError::Conflict { .. })) => {
                tracing::debug!(%key, attempt = n + 1, "conflict; reading again");
            }
            outcome => return outcome,
        }
    }
    Err(LiveError::Conflict {
        cluster: cluster.to_owned(),
        key: key.clone(),
        message: format!("still changing after {CONFLICT_ATTEMPTS} attempts to {what}"),
    }
    .into())
}

/// Work measured by a count that is expensive to take (a LIST): counted at most once per
/// [`COUNT_EVERY`], the last count standing in between.
#[derive(Debug, Default)]
pub(crate) struct Throttled {
    last: std::sync::Mutex<Option<(Instant, u64)>>,
}

/// How often a [`Throttled`] count is taken again.
pub(crate) const COUNT_EVERY: Duration = Duration::from_secs(3);

impl Throttled {
    /// The count, from `count` when the last is older than [`COUNT_EVERY`].
    ///
    /// # Errors
    /// The errors of `count`.
    pub(crate) async fn get<Fut>(&self, count: impl FnOnce() -> Fut) -> Result<u64, LiveError>
    where
        Fut: Future<Output = Result<u64, LiveError>>,
    {
        let cached = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, n)) = cached
            && at.elapsed() < COUNT_EVERY
        {
            return Ok(n);
        }
        let n = count().await?;
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn key() -> ObjectKey {
        ObjectKey::namespaced("apps", "replicasets", "shop", "web")
    }

    fn awaited(key: &ObjectKey) -> Awaited<'_> {
        Awaited {
            cluster: "member",
            key,
            what: "the garbage collector to orphan its dependents",
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_keeps_advancing_outlasts_its_stall_window_many_times() {
        // 3,000 dependents orphaned at 20 a second take 150 s; the stall window is 10 s.
        let left = AtomicU64::new(3_000);
        let started = tokio::time::Instant::now();
        let key = key();
        until(awaited(&key), Duration::from_secs(10), || async {
            let n = left.load(Ordering::Relaxed);
            if n == 0 {
                return Ok(Poll::Ready(()));
            }
            let elapsed = started.elapsed().as_secs_f64();
            left.store(
                3_000u64.saturating_sub((elapsed * 20.0) as u64),
                Ordering::Relaxed,
            );
            Ok(Poll::Pending(Progress::Left(n)))
        })
        .await
        .expect("advancing work is waited for");
        assert!(
            started.elapsed() >= Duration::from_secs(149),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_fails_once_the_work_stops_advancing() {
        let left = AtomicU64::new(100);
        let started = tokio::time::Instant::now();
        let key = key();
        let err = until(awaited(&key), Duration::from_secs(10), || async {
            // Ten go, then the count sticks at 90.
            let n = left.load(Ordering::Relaxed);
            if n > 90 {
                left.store(n - 1, Ordering::Relaxed);
            }
            Ok::<Poll<()>, _>(Poll::Pending(Progress::Left(n)))
        })
        .await
        .expect_err("stuck work fails");
        // The ten drops take about 4.5 s of growing pauses; the window runs from the last.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(14) && waited < Duration::from_secs(16),
            "{waited:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("no progress for 10s") && text.contains("90 left"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_moving_fingerprint_is_progress_and_a_single_thing_is_not() {
        let key = key();
        let mark = AtomicU64::new(0);
        let started = tokio::time::Instant::now();
        until(awaited(&key), Duration::from_secs(5), || async {
            let m = mark.fetch_add(1, Ordering::Relaxed);
            if started.elapsed() > Duration::from_secs(30) {
                return Ok(Poll::Ready(()));
            }
            Ok(Poll::Pending(Progress::Moved(m)))
        })
        .await
        .expect("a moving fingerprint keeps the wait alive");
        let started = tokio::time::Instant::now();
        until(awaited(&key), Duration::from_secs(5), || async {
            Ok::<Poll<()>, _>(Poll::Pending(Progress::Unmeasured))
        })
        .await
        .expect_err("nothing to show");
        assert!(started.elapsed() < Duration::from_secs(7));
    }

    #[tokio::test]
    async fn conflicts_are_retried_then_are_an_error() {
        let key = key();
        let tries = AtomicU64::new(0);
        let conflict = || {
            EngineError::from(LiveError::Conflict {
                cluster: "member".into(),
                key: key.clone(),
                message: "the object has been modified".into(),
            })
        };
        let outcome = on_conflict("member", &key, "adopt it", |n| {
            tries.fetch_add(1, Ordering::Relaxed);
            let result = if n < 2 { Err(conflict()) } else { Ok(n) };
            async move { result }
        })
        .await;
        assert_eq!(outcome.expect("third attempt succeeds"), 2);
        tries.store(0, Ordering::Relaxed);
        let err = on_conflict("member", &key, "adopt it", |_| {
            tries.fetch_add(1, Ordering::Relaxed);
            let result: Result<(), _> = Err(conflict());
            async move { result }
        })
        .await
        .expect_err("running out is an error");
        assert_eq!(tries.load(Ordering::Relaxed), CONFLICT_ATTEMPTS as u64);
        assert!(err.to_string().contains("attempts to adopt it"), "{err}");
    }
}
