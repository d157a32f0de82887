//! A fault-injecting proxy between kpromote and a real API server: it answers some requests itself
//! with what a busy production control plane answers — 429 with `Retry-After` (as API Priority
//! and Fairness does), 503 for a window of seconds (a restarting API server behind a load
//! balancer), and connections dropped without an answer — and forwards the rest.
//!
//! kpromote talks plain HTTP/1.1 to the proxy; the proxy forwards through a `kube::Client` of the
//! real cluster (TLS and the admin token), so the API server's real answers come back unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use kube::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// What the proxy does to the requests passing through it (by default, nothing).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every `n`-th request is answered 429 with `Retry-After: 1`.
    pub throttle_every: u64,
    /// Every `n`-th request's connection is closed without an answer.
    pub drop_every: u64,
    /// The first request of a method in this list opens a window of `unavailable` during which
    /// every request is answered 503 (each method opens one window).
    pub outage_on: Vec<&'static str>,
    /// Length of an outage window.
    pub unavailable: Duration,
    /// From the first request of this method on, every request gets this answer, until
    /// [`FaultProxy::heal`]: what a revoked token or a server URL now pointing elsewhere gives.
    pub refuse_from: Option<(&'static str, Refusal)>,
    /// Every PATCH of an object (not its status) whose path holds this is answered 409
    /// Conflict, until [`FaultProxy::heal`]: an object some controller keeps changing.
    pub conflict_on: Option<&'static str>,
    /// The first PATCHes (as many as the number) of a pod, not of its status, whose path holds
    /// the text replace the pod before they go through: deleted and created again under its name
    /// with its labels, annotations and spec — another UID — as if re-created between
    /// kpromote's read of it and its write.
    pub replace_pod_before_patch: Option<(&'static str, u32)>,
}

/// A permanent fault: retrying it cannot help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401: the credentials are refused (a revoked token, an expired client certificate).
    Unauthorized,
    /// 200 with an HTML page: not the Kubernetes API (a server URL aimed at another service).
    Malformed,
}

/// How many faults of each kind the proxy injected.
#[derive(Debug, Default)]
pub struct Injected {
    pub throttled: AtomicU64,
    pub unavailable: AtomicU64,
    pub dropped: AtomicU64,
    pub forwarded: AtomicU64,
    pub refused: AtomicU64,
}

struct State {
    faults: Faults,
    upstream: Client,
    requests: AtomicU64,
    outage_until: Mutex<Option<Instant>>,
    outages_opened: Mutex<Vec<&'static str>>,
    injected: Arc<Injected>,
    /// The refusal in force (see [`Faults::refuse_from`]), and whether it was healed.
    refusing: Mutex<(Option<Refusal>, bool)>,
    /// How many times [`Faults::replace_pod_before_patch`] has replaced its pod.
    replaced: std::sync::atomic::AtomicU32,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    pub url: String,
    pub injected: Arc<Injected>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy to the cluster behind `upstream` on a loopback port.
    pub async fn start(upstream: Client, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let injected = Arc::new(Injected::default());
        let state = Arc::new(State {
            faults,
            upstream,
            requests: AtomicU64::new(0),
            outage_until: Mutex::new(None),
            outages_opened: Mutex::new(Vec::new()),
            injected: injected.clone(),
            refusing: Mutex::new((None, false)),
            replaced: std::sync::atomic::AtomicU32::new(0),
        });
        let accepting = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let state = accepting.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, state).await;
                });
            }
        });
        Self {
            url,
            injected,
            state,
            task,
        }
    }

    /// Lets each method of `outage_on` open its outage window once more.
    pub async fn rearm(&self) {
        self.state.outages_opened.lock().await.clear();
    }

    /// Ends the refusal of [`Faults::refuse_from`] for good.
    pub async fn heal(&self) {
        *self.state.refusing.lock().await = (None, true);
    }

    /// A client of the proxied cluster.
    pub fn client(&self) -> Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        Client::try_from(config).unwrap()
    }

    /// Faults injected so far: (throttled, unavailable, dropped).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.injected.throttled.load(Ordering::Relaxed),
            self.injected.unavailable.load(Ordering::Relaxed),
            self.injected.dropped.load(Ordering::Relaxed),
        )
    }
}

enum Verdict {
    Refuse(Refusal),
    ReplaceThenForward,
    Conflict,
    Forward,
    Throttle,
    Unavailable,
    Drop,
}

async fn decide(state: &State, method: &str, target: &str) -> Verdict {
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let now = Instant::now();
    {
        let mut refusing = state.refusing.lock().await;
        if !refusing.1
            && method == "PATCH"
            && let Some(path) = state.faults.conflict_on
            && target.contains(path)
            && !target.split('?').next().unwrap_or_default().ends_with("/status")
        {
            return Verdict::Conflict;
        }
        if let (None, false) = *refusing
            && let Some((from, refusal)) = state.faults.refuse_from
            && from == method
        {
            refusing.0 = Some(refusal);
        }
        if let Some(refusal) = refusing.0 {
            return Verdict::Refuse(refusal);
        }
    }
    {
        let mut until = state.outage_until.lock().await;
        if until.is_some_and(|u| now < u) {
            return Verdict::Unavailable;
        }
        let mut opened = state.outages_opened.lock().await;
        if let Some(m) = state.faults.outage_on.iter().find(|m| **m == method)
            && !opened.contains(m)
        {
            opened.push(m);
            *until = Some(now + state.faults.unavailable);
            return Verdict::Unavailable;
        }
    }
    if method == "PATCH"
        && let Some((path, times)) = state.faults.replace_pod_before_patch
        && target.contains(path)
        && !target.split('?').next().unwrap_or_default().ends_with("/status")
        && state.replaced.fetch_add(1, Ordering::Relaxed) < times
    {
        return Verdict::ReplaceThenForward;
    }
    if state.faults.drop_every > 0 && n.is_multiple_of(state.faults.drop_every) {
        Verdict::Drop
    } else if state.faults.throttle_every > 0 && n.is_multiple_of(state.faults.throttle_every) {
        Verdict::Throttle
    } else {
        Verdict::Forward
    }
}

/// Serves one keep-alive connection, request by request.
async fn serve(socket: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let (method, target) = (method.to_owned(), target.to_owned());
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;

        let verdict = decide(&state, &method, &target).await;
        if let Verdict::ReplaceThenForward = verdict {
            replace_pod(&state.upstream, &target).await;
        }
        let (status, content_type, retry_after, payload) = match verdict {
            Verdict::Drop => {
                state.injected.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Verdict::Conflict => {
                state.injected.refused.fetch_add(1, Ordering::Relaxed);
                (409, "application/json", None, status_body(409, "Conflict", 0))
            }
            Verdict::Refuse(Refusal::Unauthorized) => {
                state.injected.refused.fetch_add(1, Ordering::Relaxed);
                (401, "application/json", None, status_body(401, "Unauthorized", 0))
            }
            Verdict::Refuse(Refusal::Malformed) => {
                state.injected.refused.fetch_add(1, Ordering::Relaxed);
                (
                    200,
                    "text/html",
                    None,
                    b"<html><body>Sign in to continue</body></html>".to_vec(),
                )
            }
            Verdict::Throttle => {
                state.injected.throttled.fetch_add(1, Ordering::Relaxed);
                (
                    429,
                    "application/json",
                    Some(1),
                    status_body(429, "TooManyRequests", 1),
                )
            }
            Verdict::Unavailable => {
                state.injected.unavailable.fetch_add(1, Ordering::Relaxed);
                (
                    503,
                    "application/json",
                    None,
                    status_body(503, "ServiceUnavailable", 0),
                )
            }
            Verdict::Forward | Verdict::ReplaceThenForward => {
                state.injected.forwarded.fetch_add(1, Ordering::Relaxed);
                let mut request = Request::builder().method(method.as_str()).uri(target.as_str());
                for (name, value) in &headers {
                    let lower = name.to_ascii_lowercase();
                    if !matches!(
                        lower.as_str(),
                        "host" | "content-length" | "connection" | "authorization"
                    ) {
                        request = request.header(name.as_str(), value.as_str());
                    }
                }
                let request = request.body(kube::client::Body::from(body)).unwrap();
                match forward(&state.upstream, request).await {
                    Some((status, content_type, payload)) => (status, content_type, None, payload),
                    None => return Ok(()),
                }
            }
        };
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
            reason(status),
            payload.len()
        );
        if let Some(seconds) = retry_after {
            head.push_str(&format!("retry-after: {seconds}\r\n"));
        }
        head.push_str("\r\n");
        write.write_all(head.as_bytes()).await?;
        write.write_all(&payload).await?;
        write.flush().await?;
    }
}

/// Replaces the pod `target` (a pod's API path) by a copy under its name: the copy carries its
/// labels, annotations and spec, and a new UID.
async fn replace_pod(upstream: &Client, target: &str) {
    use k8s_openapi::api::core::v1::Pod;
    let path = target.split('?').next().unwrap_or_default();
    let mut segments = path.rsplit('/');
    let (Some(name), Some("pods"), Some(ns)) = (segments.next(), segments.next(), segments.next()) else {
        panic!("not a pod's path: {target}");
    };
    let pods: kube::Api<Pod> = kube::Api::namespaced(upstream.clone(), ns);
    let old = pods.get(name).await.unwrap();
    let now = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: old.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    pods.delete(name, &now).await.unwrap();
    let mut polls = 0;
    while pods.get_opt(name).await.unwrap().is_some() {
        polls += 1;
        assert!(
            polls < 600,
            "pod {target} is not gone 60 s after its deletion with grace 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let copy = Pod {
        metadata: kube::api::ObjectMeta {
            name: old.metadata.name,
            labels: old.metadata.labels,
            annotations: old.metadata.annotations,
            ..Default::default()
        },
        spec: old.spec,
        status: None,
    };
    pods.create(&kube::api::PostParams::default(), &copy)
        .await
        .unwrap();
}

async fn forward(
    upstream: &Client,
    request: Request<kube::client::Body>,
) -> Option<(u16, &'static str, Vec<u8>)> {
    use http_body_util::BodyExt;
    let response = upstream.send(request).await.ok()?;
    let status = response.status().as_u16();
    let content_type = if response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
    {
        "application/json"
    } else {
        "text/plain"
    };
    let body = response.into_body().collect().await.ok()?.to_bytes().to_vec();
    Some((status, content_type, body))
}

/// A `metav1.Status` body as the API server sends with these codes (`retryAfterSeconds` in
/// `details` is how the API server itself says `Retry-After` in the body).
fn status_body(code: u16, reason: &str, retry_after: u32) -> Vec<u8> {
    let mut status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("injected by the fault proxy: {reason}"), "reason": reason, "code": code,
    });
    if retry_after > 0 {
        status["details"] = serde_json::json!({ "retryAfterSeconds": retry_after });
    }
    serde_json::to_vec(&status).unwrap()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        401 => "Unauthorized",
        409 => "Conflict",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
