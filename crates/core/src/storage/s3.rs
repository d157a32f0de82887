//! S3-compatible object storage: configuration from the environment, the client, and the one
//! runtime every request runs on.
//!
//! # Configuration
//! The conventions users already have (read by object_store's `from_env`): `AWS_ENDPOINT_URL`
//! (an S3-compatible store; plain `http://` is allowed when the URL says so), `AWS_REGION` or
//! `AWS_DEFAULT_REGION` (default `us-east-1`), `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! (and `AWS_SESSION_TOKEN`, web identity, container and instance credentials).
//!
//! Addressing: with `AWS_ENDPOINT_URL` set, requests are **path-style**
//! (`https://endpoint/bucket/key`), which every S3-compatible store serves (MinIO, Ceph,
//! SeaweedFS, versitygw) while virtual-hosted names need wildcard DNS; against AWS itself (no
//! endpoint) they are **virtual-hosted** (`https://bucket.s3.region.amazonaws.com/key`), as AWS
//! requires for new buckets. `AWS_S3_FORCE_PATH_STYLE=true|false` overrides either way.
//!
//! Secrets never leave this module: [`S3Config`]'s `Debug` omits them, and every store error is
//! passed through [`describe`], which blanks the configured keys should a store echo them.
//!
//! # Runtime
//! The archive reader and writer are synchronous and run on their own threads; object_store is
//! async. Every request runs on one small runtime of its own ([`io_runtime`]), so a blocking
//! reader thread can wait for a request without ever blocking the runtime that serves it, and
//! the HTTP connection pool lives on one runtime whatever the caller.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};

use super::{S3_SCHEME, StorageError};

/// Environment variable choosing path-style (`true`) or virtual-hosted (`false`) requests.
pub(crate) const FORCE_PATH_STYLE_ENV: &str = "AWS_S3_FORCE_PATH_STYLE";

/// One object: `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectUrl {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
}

impl ObjectUrl {
    /// Parses `s3://BUCKET/KEY`.
    ///
    /// # Errors
    /// [`StorageError::InvalidLocation`] without a key, or with a bucket S3 does not allow.
    pub fn parse(url: &str) -> Result<Self, StorageError> {
        let invalid = |reason: String| StorageError::InvalidLocation {
            location: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix(S3_SCHEME)
            .ok_or_else(|| invalid(format!("an object URL starts with {S3_SCHEME}")))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no key: write s3://BUCKET/KEY".to_owned()))?;
        check_bucket(bucket).map_err(invalid)?;
        if key.is_empty() || key.ends_with('/') {
            return Err(invalid(
                "no object name after the prefix: write s3://BUCKET/KEY".to_owned(),
            ));
        }
        if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(invalid("the key has an empty, `.` or `..` component".to_owned()));
        }
        Ok(ObjectUrl {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The key as object_store spells it.
    pub(crate) fn path(&self) -> object_store::path::Path {
        object_store::path::Path::from(self.key.as_str())
    }

    #[cfg(test)]
    /// The file name: the key's last component.
    #[must_use]
    pub(crate) fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{S3_SCHEME}{}/{}", self.bucket, self.key)
    }
}

/// Checks a bucket name against S3's rules (3–63 lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit).
///
/// # Errors
/// What is wrong.
pub(crate) fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok_len = (3..=63).contains(&bucket.len());
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "{bucket:?} is not a bucket name (3-63 lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// What kpromote takes from the environment besides object_store's own keys.
#[derive(Clone)]
pub struct S3Config {
    endpoint: Option<String>,
    path_style: bool,
    secrets: Vec<String>,
    /// The `AWS_*` pairs given instead of the process environment (`None`: the environment,
    /// with every credential source object_store reads from it).
    given: Option<Vec<(String, String)>>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Reads the environment.
    ///
    /// # Errors
    /// [`StorageError::Config`] for an `AWS_S3_FORCE_PATH_STYLE` that is not a boolean.
    pub(crate) fn from_env() -> Result<Self, StorageError> {
        Self::parse(&|name| std::env::var(name).ok(), None)
    }

    /// The configuration these `AWS_*` pairs give, ignoring the process environment (for a
    /// process that serves several stores, and for tests, which cannot change the environment).
    ///
    /// # Errors
    /// As [`S3Config::from_env`].
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, StorageError> {
        let pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let lookup = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Self::parse(&lookup, Some(pairs.clone()))
    }

    fn parse(
        lookup: &dyn Fn(&str) -> Option<String>,
        given: Option<Vec<(String, String)>>,
    ) -> Result<Self, StorageError> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
        let path_style = match var(FORCE_PATH_STYLE_ENV).as_deref() {
            None => endpoint.is_some(),
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(other) => {
                return Err(StorageError::Config {
                    reason: format!("{FORCE_PATH_STYLE_ENV}={other:?} is not true or false"),
                });
            }
        };
        let secrets = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"]
            .iter()
            .filter_map(|name| var(name))
            .filter(|s| s.len() >= 4)
            .collect();
        Ok(S3Config {
            endpoint,
            path_style,
            secrets,
            given,
        })
    }

    /// A client for `bucket`.
    ///
    /// # Errors
    /// [`StorageError::Config`] when object_store refuses the configuration.
    pub(crate) fn store(&self, bucket: &str) -> Result<Arc<AmazonS3>, StorageError> {
        install_crypto_provider();
        let builder = match &self.given {
            None => AmazonS3Builder::from_env(),
            Some(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse().ok()?, v)))
                .fold(AmazonS3Builder::new(), |b, (key, value)| {
                    b.with_config(key, value)
                }),
        };
        let mut builder = builder
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(!self.path_style);
        if let Some(endpoint) = &self.endpoint {
            // object_store takes a virtual-hosted endpoint with the bucket already in its host.
            let endpoint = if self.path_style {
                endpoint.trim_end_matches('/').to_owned()
            } else {
                match endpoint.split_once("://") {
                    Some((scheme, host)) => format!("{scheme}://{bucket}.{}", host.trim_end_matches('/')),
                    None => format!("{bucket}.{endpoint}"),
                }
            };
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| StorageError::Config {
            reason: self.redact(&e.to_string()),
        })?;
        Ok(Arc::new(store))
    }

    /// `text` with every configured secret blanked.
    #[must_use]
    pub(crate) fn redact(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |t, secret| {
            t.replace(secret.as_str(), "[redacted]")
        })
    }
}

/// A store error as a message, with configured secrets blanked.
#[must_use]
pub(crate) fn describe(err: &object_store::Error) -> String {
    let text = err.to_string();
    match S3Config::from_env() {
        Ok(config) => config.redact(&text),
        Err(_) => text,
    }
}

/// The store of `url`'s bucket, from the environment.
///
/// # Errors
/// As [`S3Config::from_env`] and [`S3Config::store`].
pub(crate) fn store_for(url: &ObjectUrl) -> Result<Arc<dyn ObjectStore>, StorageError> {
    S3Config::from_env()?.store_for(url)
}

impl S3Config {
    /// The store of `url`'s bucket.
    ///
    /// # Errors
    /// As [`S3Config::store`].
    pub fn store_for(&self, url: &ObjectUrl) -> Result<Arc<dyn ObjectStore>, StorageError> {
        let store: Arc<dyn ObjectStore> = self.store(&url.bucket)?;
        Ok(store)
    }
}

/// rustls needs a process-wide crypto provider; kube already brings ring, so ring it is (never a
/// second provider).
fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Err means another part of the process installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The runtime every object storage request runs on (two worker threads: requests wait on the
/// network, not the CPU).
///
/// # Panics
/// When the operating system refuses to start its threads.
pub(crate) fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kpromote-s3")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the object storage runtime: {e}"))
    })
}

/// Runs `fut` on [`io_runtime`] and waits for it, from any thread (never from the I/O runtime's
/// own threads).
///
/// # Errors
/// A panicked or cancelled request, as a store error.
pub fn block_on<T: Send + 'static>(
    fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
) -> object_store::Result<T> {
    futures::executor::block_on(io_runtime().spawn(fut)).unwrap_or_else(|e| Err(join_error(&e)))
}

/// Runs `fut` on [`io_runtime`] from async code.
///
/// # Errors
/// As [`block_on`].
pub(crate) async fn on_io<T: Send + 'static>(
    fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
) -> object_store::Result<T> {
    io_runtime()
        .spawn(fut)
        .await
        .unwrap_or_else(|e| Err(join_error(&e)))
}

fn join_error(e: &tokio::task::JoinError) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: format!("request task failed: {e}").into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_parse_and_print() {
        let url = ObjectUrl::parse("s3://kp-archives/prod/shop.tar.zst").unwrap();
        assert_eq!(url.bucket, "kp-archives");
        assert_eq!(url.key, "prod/shop.tar.zst");
        assert_eq!(url.file_name(), "shop.tar.zst");
        assert_eq!(url.to_string(), "s3://kp-archives/prod/shop.tar.zst");
        for bad in [
            "s3://kp-archives",
            "s3://kp-archives/",
            "s3://kp/x",
            "s3://b_c/x",
            "s3://kp-a/a//b",
        ] {
            assert!(ObjectUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let config = S3Config::from_pairs([("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")]).unwrap();
        assert!(!config.path_style, "AWS itself: virtual-hosted");
        let compatible = S3Config::from_pairs([("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")]).unwrap();
        assert!(compatible.path_style, "an endpoint: path-style");
        let forced = S3Config::from_pairs([
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            (FORCE_PATH_STYLE_ENV, "false"),
        ])
        .unwrap();
        assert!(!forced.path_style);
        assert!(S3Config::from_pairs([(FORCE_PATH_STYLE_ENV, "yes")]).is_err());
        assert_eq!(
            config.redact("bad key s3cr3t-value here"),
            "bad key [redacted] here"
        );
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
