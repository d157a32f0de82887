//! Real Kubernetes clusters on loopback, for tests and the demo.
//!
//! Each [`Cluster`] is an etcd, a kube-apiserver and a kube-controller-manager built from the
//! upstream sources pinned in `tests/testenv/go.mod` (see `tests/testenv/build.sh`), running as
//! child processes on ephemeral loopback ports with a private temporary directory. Nothing is
//! mocked: garbage collection, adoption by controllers, admission and conflicts are the real
//! components' behaviour.
//!
//! No kubelet or scheduler runs. [`FakeKubelet`] plays their part where a test needs running
//! pods: it binds pods to a node and reports them running through the status subresource.
//!
//! # Guarantees
//! Components stop when the [`Cluster`] is dropped, when the owning process panics, and when it
//! is killed (see [`process`]); the temporary directory is removed unless
//! `KPROMOTE_TESTENV_KEEP=1` is set, which keeps it (logs included) for debugging.

mod cluster;
pub mod kosmos;
mod kubelet;
pub mod process;
pub mod s3;

pub use cluster::{
    CONTROLLERS, Cluster, ClusterOptions, PRODUCTION_CONTROLLERS, PROFILE_ENV, Profile, TestEnv,
};
pub use kosmos::{Clustertree, KosmosKit};
pub use kubelet::{FakeKubelet, NodeLease, register_virtual_node};
pub use s3::S3Server;

use std::path::{Path, PathBuf};

/// Environment variable naming a directory that holds the Kubernetes binaries.
pub const BIN_ENV: &str = "KPROMOTE_TESTENV_BIN";
/// Environment variable overriding the build cache directory used by `tests/testenv/build.sh`.
pub const CACHE_ENV: &str = "KPROMOTE_TESTENV_CACHE";
/// The command that builds the binaries, named in every "not found" error.
pub const BUILD_COMMAND: &str = "tests/testenv/build.sh";

/// Errors of the test environment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestEnvError {
    /// The Kubernetes binaries are not where the launcher looked.
    #[error(
        "Kubernetes test binaries not found in {dir} (missing: {missing}). Build them with \
         `{BUILD_COMMAND}` (about 10 minutes the first time, seconds after), or set {BIN_ENV} to a \
         directory holding etcd, kube-apiserver, kube-controller-manager and kubectl"
    )]
    BinariesMissing {
        /// Directory searched.
        dir: PathBuf,
        /// Comma-separated names of the missing binaries.
        missing: String,
    },
    /// The Kosmos clustertree kit is not where the launcher looked.
    #[error(
        "Kosmos clustertree kit not found: {path} is missing. Install it with `{}` (it copies the \
         prebuilt binary and CRDs of a kit directory into the cache, or builds them from a Kosmos \
         clone), or set {} and {}",
        kosmos::INSTALL_COMMAND,
        kosmos::BIN_ENV,
        kosmos::CRDS_ENV
    )]
    KosmosMissing {
        /// The missing file or directory.
        path: PathBuf,
    },
    /// The S3-compatible server of the object storage tests is not where the launcher looked.
    #[error(
        "S3-compatible test server not found: {path} is missing. Build it with `{}` (versitygw \
         from the Go module proxy, cached), or set {}",
        s3::BUILD_COMMAND,
        s3::BIN_ENV
    )]
    S3ServerMissing {
        /// The missing binary.
        path: PathBuf,
    },
    /// A file or process operation failed.
    #[error("{path}: {source}")]
    Io {
        /// File, program or address concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A component exited while the cluster was starting or running.
    #[error("{component} exited ({status}); log {log}:\n{log_tail}")]
    ComponentExited {
        /// Which component.
        component: String,
        /// Its exit status.
        status: String,
        /// Path of its full log.
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// The cluster did not become healthy in time.
    #[error("cluster {cluster} not healthy after {seconds}s: {waiting_for}; logs in {dir}")]
    NotHealthy {
        /// Cluster name.
        cluster: String,
        /// Seconds waited.
        seconds: u64,
        /// What was still missing.
        waiting_for: String,
        /// Directory with the component logs.
        dir: PathBuf,
    },
    /// A tool the launcher needs (openssl) failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// Tool name.
        tool: String,
        /// What it said.
        detail: String,
    },
    /// The Kubernetes API refused a request the launcher or a helper made.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// `$KPROMOTE_TESTENV_PROFILE` names no profile.
    #[error("{env} is {value:?}: set it to `test` (the default) or `production`", env = cluster::PROFILE_ENV, value = .0)]
    Profile(String),
    /// The generated kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

impl TestEnvError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_owned(),
            source,
        }
    }
}

/// Where the Kubernetes binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    const NAMES: [&'static str; 4] = ["etcd", "kube-apiserver", "kube-controller-manager", "kubectl"];

    /// Finds the binaries: `$KPROMOTE_TESTENV_BIN`, else the `current` build of
    /// `tests/testenv/build.sh` in its cache (`$KPROMOTE_TESTENV_CACHE`, else
    /// `$XDG_CACHE_HOME/kpromote/testenv`, else `~/.cache/kpromote/testenv`).
    ///
    /// # Errors
    /// [`TestEnvError::BinariesMissing`] naming the directory and the command that builds them.
    pub fn locate() -> Result<Self, TestEnvError> {
        let dir = match std::env::var_os(BIN_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => cache_dir().join("current").join("bin"),
        };
        let missing: Vec<&str> = Self::NAMES
            .iter()
            .copied()
            .filter(|n| !dir.join(n).is_file())
            .collect();
        if missing.is_empty() {
            Ok(Self { dir })
        } else {
            Err(TestEnvError::BinariesMissing {
                dir,
                missing: missing.join(", "),
            })
        }
    }

    /// Path of one binary by name (`etcd`, `kube-apiserver`, …).
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
        });
    base.join("kpromote").join("testenv")
}
