//! Acting on one live cluster for the engine: the dynamic API of an archived object, typed
//! outcomes for the API server's answers, retries for the transient ones, and waits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Api, Client};
use serde_json::Value;

use kpromote_model::object_key::ObjectKey;

/// Field manager of every write kpromote makes, visible in `managedFields`.
pub const FIELD_MANAGER: &str = "kpromote";

/// How the engine rides out what a busy or restarting API server answers: throttling (429),
/// server errors (500, 502, 503, 504) and dropped connections are retried with exponential
/// backoff and jitter, honouring the server's `retryAfterSeconds`, until `deadline`; every other
/// answer is final at once. The deadline is per call, long enough for an API server restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first pause.
    pub first_delay: Duration,
    /// No pause is longer (a server's `retryAfterSeconds` may be, up to the deadline).
    pub max_delay: Duration,
    /// How long one call keeps trying.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            deadline: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `attempt` (1-based): doubling from `first_delay`, capped at
    /// `max_delay`, then drawn uniformly from its upper half so many clients that failed together
    /// do not retry together; at least `retry_after` when the server asked for it.
    #[must_use]
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .first_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        let jittered = half + half.mul_f64(fastrand::f64());
        retry_after.map_or(jittered, |after| jittered.max(after))
    }
}

/// How the API server answered, as far as the engine's decisions go.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// The object is not there.
    #[error("{key} not found in the {cluster}")]
    NotFound {
        /// Cluster role.
        cluster: String,
        /// The object.
        key: ObjectKey,
    },
    /// Create met an existing object.
    #[error("{key} already exists in the {cluster}")]
    AlreadyExists {
        /// Cluster role.
        cluster: String,
        /// The object.
        key: ObjectKey,
    },
    /// A precondition (UID, resourceVersion) no longer holds: someone changed the object.
    #[error("{key} in the {cluster} changed since it was read: {message}")]
    Conflict {
        /// Cluster role.
        cluster: String,
        /// The object.
        key: ObjectKey,
        /// The server's message.
        message: String,
    },
    /// Any other refusal, with the server's words.
    #[error("{verb} {key} in the {cluster}: {message} (HTTP {code})")]
    Refused {
        /// Cluster role.
        cluster: String,
        /// The verb.
        verb: &'static str,
        /// The object.
        key: ObjectKey,
        /// HTTP status code.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The cluster did not answer even after retries.
    #[error("{verb} {key}: the {cluster} did not answer: {detail}")]
    Unavailable {
        /// Cluster role.
        cluster: String,
        /// The verb.
        verb: &'static str,
        /// The object.
        key: ObjectKey,
        /// The client's error.
        detail: String,
    },
    /// A wait ran out.
    #[error("timed out after {seconds}s waiting for {what} ({key} in the {cluster})")]
    Timeout {
        /// Cluster role.
        cluster: String,
        /// The object.
        key: ObjectKey,
        /// What was awaited.
        what: String,
        /// Seconds waited.
        seconds: u64,
    },
    /// The archived object cannot be turned into a request (no apiVersion or kind).
    #[error("{key}: {detail}")]
    Malformed {
        /// The object.
        key: ObjectKey,
        /// What is missing.
        detail: String,
    },
}

impl LiveError {
    /// Whether the object was not found.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether asking again may succeed: the cluster did not answer, throttled (429) or had a
    /// server error (500, 502, 503, 504). Every other answer is final.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
            || matches!(self, Self::Refused { code, .. } if matches!(code, 429 | 500 | 502 | 503 | 504))
    }
}

/// One cluster the engine acts on.
#[derive(Clone)]
pub struct LiveCluster {
    /// `member` or `control plane`, for messages.
    pub role: String,
    /// The client.
    pub client: Client,
    /// How transient failures are retried.
    pub retry: RetryPolicy,
    /// Transient failures retried so far, for the report.
    retried: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for LiveCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCluster")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl LiveCluster {
    /// Wraps a client.
    #[must_use]
    pub fn new(role: &str, client: Client) -> Self {
        Self {
            role: role.to_owned(),
            client,
            retry: RetryPolicy::default(),
            retried: std::sync::Arc::default(),
        }
    }

    /// The same cluster with retry policy `retry`.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How many transient failures this cluster's calls have retried so far.
    #[must_use]
    pub fn retried(&self) -> u64 {
        self.retried.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The dynamic API of `key` at `api_version`/`kind` (from the archived object).
    #[must_use]
    pub fn api(&self, key: &ObjectKey, api_version: &str, kind: &str) -> Api<DynamicObject> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let ar = ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            plural: key.resource.clone(),
        };
        match &key.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The dynamic API for an archived object, reading its `apiVersion` and `kind`.
    ///
    /// # Errors
    /// [`LiveError::Malformed`] when either is missing.
    pub fn api_for(&self, key: &ObjectKey, object: &Value) -> Result<Api<DynamicObject>, LiveError> {
        let field = |name: &str| {
            object
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| LiveError::Malformed {
                    key: key.clone(),
                    detail: format!("no {name}"),
                })
        };
        Ok(self.api(key, field("apiVersion")?, field("kind")?))
    }

    /// GET, with `None` for not found.
    ///
    /// # Errors
    /// Refusals and unavailability.
    pub async fn get_opt(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
    ) -> Result<Option<DynamicObject>, LiveError> {
        match self.retry("get", key, || api.get(&key.name)).await {
            Ok(obj) => Ok(Some(obj)),
            Err(LiveError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object of `api`'s type in its namespace (or the cluster), by name, read in pages of
    /// 500. `key` is any object of that type; it names the request in errors.
    ///
    /// # Errors
    /// Refusals and unavailability.
    pub async fn list_by_name(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
    ) -> Result<BTreeMap<String, DynamicObject>, LiveError> {
        self.list_selected(api, key, None).await
    }

    /// [`Self::list_by_name`] of the objects carrying label selector `selector`.
    ///
    /// # Errors
    /// Refusals and unavailability.
    pub async fn list_selected(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        selector: Option<&str>,
    ) -> Result<BTreeMap<String, DynamicObject>, LiveError> {
        self.list_kept(api, key, selector, Some).await
    }

    /// [`Self::list_selected`], keeping of each listed object only what `keep` makes of it
    /// (`None`: nothing), a page at a time: a caller that needs a few fields of thousands of
    /// objects never holds them all whole.
    ///
    /// # Errors
    /// Refusals and unavailability.
    pub async fn list_kept<T>(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        selector: Option<&str>,
        mut keep: impl FnMut(DynamicObject) -> Option<T>,
    ) -> Result<BTreeMap<String, T>, LiveError> {
        let mut objects = BTreeMap::new();
        let mut params = ListParams::default().limit(500);
        if let Some(selector) = selector {
            params = params.labels(selector);
        }
        loop {
            let page = self.retry("list", key, || api.list(&params)).await?;
            for object in page.items {
                if let Some(name) = object.metadata.name.clone()
                    && let Some(kept) = keep(object)
                {
                    objects.insert(name, kept);
                }
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(objects),
            }
        }
    }

    /// CREATE as [`FIELD_MANAGER`].
    ///
    /// # Errors
    /// [`LiveError::AlreadyExists`], refusals, unavailability.
    pub async fn create(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        object: &Value,
    ) -> Result<DynamicObject, LiveError> {
        let obj: DynamicObject =
            serde_json::from_value(object.clone()).map_err(|e| LiveError::Malformed {
                key: key.clone(),
                detail: e.to_string(),
            })?;
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        self.retry("create", key, || api.create(&pp, &obj)).await
    }

    /// JSON merge patch of the object.
    ///
    /// # Errors
    /// Refusals, unavailability, not found.
    pub async fn merge_patch(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        patch: &Value,
    ) -> Result<DynamicObject, LiveError> {
        self.merge(api, key, patch, false).await
    }

    /// JSON merge patch of the status subresource.
    ///
    /// # Errors
    /// Refusals, unavailability, not found.
    pub async fn merge_patch_status(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        patch: &Value,
    ) -> Result<DynamicObject, LiveError> {
        self.merge(api, key, patch, true).await
    }

    async fn merge(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        patch: &Value,
        status: bool,
    ) -> Result<DynamicObject, LiveError> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(patch);
        if status {
            self.retry("patch status of", key, || {
                api.patch_status(&key.name, &pp, &patch)
            })
            .await
        } else {
            self.retry("patch", key, || api.patch(&key.name, &pp, &patch))
                .await
        }
    }

    /// DELETE with a propagation policy, only if the object still has `uid` (so an object
    /// someone re-created meanwhile is never deleted). Not found counts as done.
    ///
    /// # Errors
    /// [`LiveError::Conflict`] when the UID differs; refusals, unavailability.
    pub async fn delete(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        uid: Option<&str>,
        params: DeleteParams,
    ) -> Result<(), LiveError> {
        let mut dp = params;
        if let Some(uid) = uid {
            dp.preconditions = Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            });
        }
        match self.retry("delete", key, || api.delete(&key.name, &dp)).await {
            Ok(_) | Err(LiveError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until `key` is gone, or holds another UID than `uid` (it was deleted and re-made).
    ///
    /// # Errors
    /// [`LiveError::Timeout`] naming what was awaited.
    pub async fn wait_gone(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        uid: Option<&str>,
        timeout: Duration,
        what: &str,
    ) -> Result<(), LiveError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.get_opt(api, key).await? {
                None => return Ok(()),
                Some(obj) if uid.is_some() && obj.metadata.uid.as_deref() != uid => return Ok(()),
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(LiveError::Timeout {
                    cluster: self.role.clone(),
                    key: key.clone(),
                    what: what.to_owned(),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn retry<T, F, Fut>(&self, verb: &'static str, key: &ObjectKey, mut call: F) -> Result<T, LiveError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let deadline = Instant::now() + self.retry.deadline;
        let mut attempt = 0;
        loop {
            let err = match call().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let retry_after = match &err {
                kube::Error::Api(status) => status
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s))),
                _ => None,
            };
            let classified = self.classify(verb, key, err);
            attempt += 1;
            let pause = self.retry.delay(attempt, retry_after);
            if !classified.is_transient() || Instant::now() + pause > deadline {
                return Err(classified);
            }
            self.retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%key, verb, attempt, pause_ms = pause.as_millis() as u64, error = %classified, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    fn classify(&self, verb: &'static str, key: &ObjectKey, err: kube::Error) -> LiveError {
        let cluster = self.role.clone();
        match err {
            kube::Error::Api(status) => {
                let message = status.message.clone();
                match (status.code, status.reason.as_str()) {
                    (404, _) => LiveError::NotFound {
                        cluster,
                        key: key.clone(),
                    },
                    (409, "AlreadyExists") => LiveError::AlreadyExists {
                        cluster,
                        key: key.clone(),
                    },
                    (409, _) => LiveError::Conflict {
                        cluster,
                        key: key.clone(),
                        message,
                    },
                    (code, _) => LiveError::Refused {
                        cluster,
                        verb,
                        key: key.clone(),
                        code,
                        message,
                    },
                }
            }
            other => LiveError::Unavailable {
                cluster,
                verb,
                key: key.clone(),
                detail: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_stay_capped_jittered_and_honour_retry_after() {
        let policy = RetryPolicy::default();
        for attempt in 1..40 {
            let full = policy
                .first_delay
                .saturating_mul(2u32.saturating_pow(attempt - 1))
                .min(policy.max_delay);
            for _ in 0..20 {
                let d = policy.delay(attempt, None);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        assert!(policy.delay(1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }

    #[test]
    fn only_throttling_server_errors_and_silence_are_transient() {
        let key = ObjectKey::cluster("", "namespaces", "a");
        let refused = |code| LiveError::Refused {
            cluster: "member".into(),
            verb: "get",
            key: key.clone(),
            code,
            message: String::new(),
        };
        for code in [429, 500, 502, 503, 504] {
            assert!(refused(code).is_transient(), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 422, 501] {
            assert!(!refused(code).is_transient(), "{code}");
        }
        assert!(
            LiveError::Unavailable {
                cluster: "member".into(),
                verb: "get",
                key: key.clone(),
                detail: "connection reset".into()
            }
            .is_transient()
        );
    }
}
