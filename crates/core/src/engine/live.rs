//! Acting on one live cluster for the engine: the dynamic API of an archived object, typed
//! outcomes for the API server's answers, retries for the transient ones, and waits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Api, Client};
use serde_json::Value;

use super::wait::{Awaited, Poll, Progress, Throttled, until};
use kpromote_model::object_key::ObjectKey;

/// `object` as JSON, the form the engine compares live objects in. A `DynamicObject` is JSON
/// already (string keys, JSON values), so serializing it does not fail; were it to, `Null` stands
/// in, which every comparison reads as a difference (a change, a pod not ready), never as
/// agreement.
#[must_use]
pub(crate) fn json_of(object: &DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// Field manager of every write kpromote makes, visible in `managedFields`.
pub(crate) const FIELD_MANAGER: &str = "kpromote";

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
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
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
    /// Any other refusal, with the server's words (and, for credentials and permissions, what
    /// to do).
    #[error("{verb} {key} in the {cluster}: {message} (HTTP {code}){}", refusal_advice(*.code))]
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
    /// The cluster cannot be used as configured — its certificate is not trusted, credentials
    /// cannot be obtained, or what answered is not a Kubernetes API server — and asking again
    /// will not change that.
    #[error("{verb} {key}: the {cluster} cannot be used: {cause}; {advice}")]
    Permanent {
        /// Cluster role.
        cluster: String,
        /// The verb.
        verb: &'static str,
        /// The object.
        key: ObjectKey,
        /// What is wrong, from the client's error.
        cause: String,
        /// What to do about it.
        advice: &'static str,
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
    /// A wait saw the awaited work stop advancing (see [`super::wait::until`]).
    #[error(
        "no progress for {stalled}s waiting for {what} ({key} in the {cluster}; waited {waited}s{})",
        .left.map(|n| format!(", {n} left")).unwrap_or_default()
    )]
    Stalled {
        /// Cluster role.
        cluster: String,
        /// The object.
        key: ObjectKey,
        /// What was awaited.
        what: String,
        /// The stall window: how long nothing advanced.
        stalled: u64,
        /// How long the whole wait took.
        waited: u64,
        /// What was still left, when the work is counted.
        left: Option<u64>,
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
    /// Whether asking again may succeed: the cluster did not answer, throttled (429) or had a
    /// server error (500, 502, 503, 504). Every other answer is final.
    #[must_use]
    pub(crate) fn is_transient(&self) -> bool {
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
    pub(crate) fn retried(&self) -> u64 {
        self.retried.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The dynamic API of `key` at `api_version`/`kind` (from the archived object).
    #[must_use]
    pub(crate) fn api(&self, key: &ObjectKey, api_version: &str, kind: &str) -> Api<DynamicObject> {
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
    pub(crate) async fn get_opt(
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

    /// Every object of `api`'s type in its namespace (or the cluster) carrying label selector
    /// `selector` (all of them for `None`), by name, read in pages of 500. `key` is any object of
    /// that type; it names the request in errors.
    ///
    /// # Errors
    /// Refusals and unavailability.
    pub(crate) async fn list_selected(
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
    pub(crate) async fn list_kept<T>(
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
    pub(crate) async fn create(
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
    pub(crate) async fn merge_patch(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        patch: &Value,
    ) -> Result<DynamicObject, LiveError> {
        self.merge(api, key, patch, false).await
    }

    /// Strategic merge patch of a type kube-apiserver serves itself (see
    /// [`crate::plan::order::is_builtin_group`]): lists with a merge key (ownerReferences, by
    /// UID) merge item by item, so two writers adding or removing different items — the restore
    /// and a controller adopting, detach and the garbage collector orphaning — do not conflict
    /// and need no resourceVersion. A `metadata.uid` in the patch keeps it to that object.
    ///
    /// # Errors
    /// Refusals, unavailability, not found.
    pub(crate) async fn strategic_patch(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        patch: &Value,
    ) -> Result<DynamicObject, LiveError> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = Patch::Strategic(patch);
        self.retry("patch", key, || api.patch(&key.name, &pp, &patch))
            .await
    }

    /// JSON merge patch of the status subresource.
    ///
    /// # Errors
    /// Refusals, unavailability, not found.
    pub(crate) async fn merge_patch_status(
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
    pub(crate) async fn delete(
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
    /// While it is there, the objects of `dependents` it still owns are counted: the wait fails
    /// only once that count has not dropped for `stall` (with no `dependents`, once `stall` has
    /// passed).
    ///
    /// # Errors
    /// [`LiveError::Stalled`] naming what was awaited; API errors.
    pub(crate) async fn wait_gone(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        uid: Option<&str>,
        stall: Duration,
        what: &str,
        dependents: &[Api<DynamicObject>],
    ) -> Result<(), LiveError> {
        let awaited = Awaited {
            cluster: &self.role,
            key,
            what,
        };
        let owned = Throttled::default();
        until(awaited, stall, || async {
            let live = match self.get_opt(api, key).await? {
                None => return Ok(Poll::Ready(())),
                Some(obj) if uid.is_some() && obj.metadata.uid.as_deref() != uid => {
                    return Ok(Poll::Ready(()));
                }
                Some(live) => live,
            };
            if dependents.is_empty() {
                return Ok(Poll::Pending(Progress::Unmeasured));
            }
            let owner = live.metadata.uid.unwrap_or_default();
            let left = owned
                .get(|| {
                    self.count(dependents, key, |meta| {
                        meta.owner_references.iter().flatten().any(|r| r.uid == owner)
                    })
                })
                .await?;
            Ok(Poll::Pending(Progress::Left(left)))
        })
        .await
    }

    /// How many objects of `apis` `counted` accepts, read as metadata in pages of 500. `key`
    /// names the requests in errors.
    ///
    /// # Errors
    /// Refusals and unavailability.
    pub(crate) async fn count(
        &self,
        apis: &[Api<DynamicObject>],
        key: &ObjectKey,
        mut counted: impl FnMut(&kube::api::ObjectMeta) -> bool,
    ) -> Result<u64, LiveError> {
        let mut n = 0;
        for api in apis {
            let mut params = ListParams::default().limit(500);
            loop {
                let page = self.retry("list", key, || api.list_metadata(&params)).await?;
                n += page.items.iter().filter(|o| counted(&o.metadata)).count() as u64;
                match page.metadata.continue_ {
                    Some(token) if !token.is_empty() => params = params.continue_token(&token),
                    _ => break,
                }
            }
        }
        Ok(n)
    }

    /// Runs `call` under this cluster's [`RetryPolicy`]: transient failures are retried until
    /// the deadline, every other answer is final at once.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        verb: &'static str,
        key: &ObjectKey,
        mut call: F,
    ) -> Result<T, LiveError>
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
            other => match Transport::of(&other) {
                Transport::Transient(detail) => LiveError::Unavailable {
                    cluster,
                    verb,
                    key: key.clone(),
                    detail,
                },
                Transport::Permanent { cause, advice } => LiveError::Permanent {
                    cluster,
                    verb,
                    key: key.clone(),
                    cause,
                    advice,
                },
            },
        }
    }
}

/// What to do about a refusal of the credentials (401) or of a permission (403).
fn refusal_advice(code: u16) -> &'static str {
    match code {
        401 => {
            "; the cluster refused the credentials: renew the token or client certificate of this cluster's \
             kubeconfig (or the Kosmos Cluster's spec.kubeconfig)"
        }
        403 => {
            "; the identity lacks this permission: grant it (see deploy/controller for the roles kpromote needs)"
        }
        _ => "",
    }
}

/// A client error that is not an API server's answer, classed: a connection refused, reset or
/// timed out may heal (an API server restarting behind its load balancer); a certificate the
/// kubeconfig does not trust, credentials that cannot be obtained, or an answer that is not the
/// Kubernetes API's will not, and retrying them for minutes only hides the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Worth retrying; the client's words.
    Transient(String),
    /// Not worth retrying.
    Permanent {
        /// What is wrong.
        cause: String,
        /// What to do.
        advice: &'static str,
    },
}

/// Advice for a server certificate the kubeconfig does not trust.
const TLS_ADVICE: &str = "check that the kubeconfig's certificate-authority-data is the CA that signed this API \
                          server's certificate and that its server URL names the API server (not a proxy that \
                          presents another certificate), and that the certificate has not expired";
/// Advice for an answer that is not the Kubernetes API's.
const MALFORMED_ADVICE: &str = "check that the kubeconfig's server URL names the Kubernetes API server itself, not \
                                another service or a proxy that rewrites its answers";

impl Transport {
    /// Classes `err`, a client error that is not an API answer, reading its whole chain of
    /// causes (the TLS library's verdict is several levels down).
    #[must_use]
    pub(crate) fn of(err: &kube::Error) -> Self {
        use std::error::Error as _;
        let chain = {
            let mut text = err.to_string();
            let mut source = err.source();
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        };
        match err {
            kube::Error::Auth(_) => {
                return Self::Permanent {
                    // An auth plugin's message may quote the credential itself.
                    cause:
                        "the credentials could not be obtained (the message is withheld: it may quote them)"
                            .to_owned(),
                    advice: "check the kubeconfig's user: its token file, exec command or auth provider",
                };
            }
            kube::Error::SerdeError(_)
            | kube::Error::FromUtf8(_)
            | kube::Error::LinesCodecMaxLineLengthExceeded => {
                return Self::Permanent {
                    cause: format!("its answer is not the Kubernetes API's ({chain})"),
                    advice: MALFORMED_ADVICE,
                };
            }
            kube::Error::BuildRequest(_)
            | kube::Error::HttpError(_)
            | kube::Error::InferConfig(_)
            | kube::Error::InferKubeconfig(_)
            | kube::Error::ProxyProtocolUnsupported { .. }
            | kube::Error::ProxyProtocolDisabled { .. }
            | kube::Error::TlsRequired
            | kube::Error::RustlsTls(_) => {
                return Self::Permanent {
                    cause: format!("the request cannot be made ({chain})"),
                    advice: "check the kubeconfig: its server URL, proxy-url and TLS settings",
                };
            }
            _ => {}
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::InvalidData
            {
                // rustls reports a failed handshake as invalid data.
                return Self::Permanent {
                    cause: format!("TLS failed: {io}"),
                    advice: TLS_ADVICE,
                };
            }
            source = cause.source();
        }
        let lower = chain.to_ascii_lowercase();
        // hyper's words for an answer that is not HTTP (its error type is not ours to name).
        if lower.contains("invalid http") {
            return Self::Permanent {
                cause: format!("its answer is not HTTP ({chain})"),
                advice: MALFORMED_ADVICE,
            };
        }
        if ["certificate", "unknownissuer", "handshake"]
            .iter()
            .any(|needle| lower.contains(needle))
        {
            return Self::Permanent {
                cause: format!("TLS failed: {chain}"),
                advice: TLS_ADVICE,
            };
        }
        Self::Transient(chain)
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

    #[tokio::test]
    async fn transport_errors_that_cannot_heal_are_permanent_and_say_what_to_do() {
        let io =
            |kind, text: &str| kube::Error::Service(Box::new(std::io::Error::new(kind, text.to_owned())));
        for (err, transient) in [
            (
                io(
                    std::io::ErrorKind::ConnectionRefused,
                    "Connection refused (os error 111)",
                ),
                true,
            ),
            (
                io(std::io::ErrorKind::ConnectionReset, "Connection reset by peer"),
                true,
            ),
            (io(std::io::ErrorKind::TimedOut, "timed out"), true),
            (
                io(
                    std::io::ErrorKind::InvalidData,
                    "invalid peer certificate: UnknownIssuer",
                ),
                false,
            ),
            (
                kube::Error::SerdeError(
                    serde_json::from_str::<Value>("<html>sign in</html>").expect_err("not JSON"),
                ),
                false,
            ),
        ] {
            let class = Transport::of(&err);
            assert_eq!(
                matches!(class, Transport::Transient(_)),
                transient,
                "{err}: {class:?}"
            );
        }
        let key = ObjectKey::cluster("", "namespaces", "a");
        let cluster = LiveCluster::new(
            "member",
            Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().expect("url"))).expect("client"),
        );
        let tls = cluster.classify(
            "get",
            &key,
            io(
                std::io::ErrorKind::InvalidData,
                "invalid peer certificate: UnknownIssuer",
            ),
        );
        assert!(!tls.is_transient());
        let text = tls.to_string();
        assert!(
            text.contains("UnknownIssuer") && text.contains("certificate-authority-data"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_credential_says_to_renew_it() {
        let refused = LiveError::Refused {
            cluster: "member".into(),
            verb: "get",
            key: ObjectKey::cluster("", "namespaces", "a"),
            code: 401,
            message: "Unauthorized".into(),
        };
        assert!(!refused.is_transient());
        assert!(refused.to_string().contains("renew the token"), "{refused}");
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
