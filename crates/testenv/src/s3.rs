//! A real S3-compatible server for the object storage tests: versitygw (posix backend) built
//! from source by `tests/testenv/s3/build.sh`, started on a free loopback port with credentials
//! of its own, keeping its buckets as directories of a private temporary directory.
//!
//! Nothing in the test process answers S3 requests: kpromote talks HTTP to this process.
//! `KPROMOTE_S3_BIN` names another versitygw binary. Tests give a kpromote process the
//! [`S3Server::env`] pairs, which are the usual `AWS_*` variables.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::TestEnvError;
use super::process::{Supervised, free_port};

/// Environment variable naming a versitygw binary (default: the `current` build of
/// `tests/testenv/s3/build.sh`).
pub const BIN_ENV: &str = "KPROMOTE_S3_BIN";
/// The command that builds the server.
pub const BUILD_COMMAND: &str = "tests/testenv/s3/build.sh";

/// A running S3-compatible server. Dropping it stops the server and removes its data.
#[derive(Debug)]
pub struct S3Server {
    process: Supervised,
    dir: tempfile::TempDir,
    endpoint: String,
    access_key: String,
    secret_key: String,
}

impl S3Server {
    /// Finds the binary, starts it on a free port with fresh random credentials, and waits until
    /// it answers HTTP.
    ///
    /// # Errors
    /// [`TestEnvError::S3ServerMissing`] naming the build command when the binary is missing;
    /// [`TestEnvError::ComponentExited`] or [`TestEnvError::NotHealthy`] when it does not start.
    pub fn start() -> Result<Self, TestEnvError> {
        let bin = locate()?;
        let dir = tempfile::Builder::new()
            .prefix("kpromote-s3-")
            .tempdir()
            .map_err(|e| TestEnvError::io(std::env::temp_dir(), e))?;
        let root = dir.path().join("buckets");
        std::fs::create_dir_all(&root).map_err(|e| TestEnvError::io(&root, e))?;
        let access_key = format!("KPTEST{}", random_hex(7).to_uppercase());
        let secret_key = format!("kpromote-test-secret-{}", random_hex(16));
        let port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let log = dir.path().join("versitygw.log");
        // Credentials go through the environment, never the command line (`ps` shows that).
        let process = Supervised::spawn_with_env(
            "versitygw",
            &bin,
            &[
                "--port".to_owned(),
                format!("127.0.0.1:{port}"),
                "--quiet".to_owned(),
                "posix".to_owned(),
                root.display().to_string(),
            ],
            &[
                ("ROOT_ACCESS_KEY_ID", access_key.as_str()),
                ("ROOT_SECRET_ACCESS_KEY", secret_key.as_str()),
            ],
            &log,
        )?;
        let mut server = S3Server {
            process,
            dir,
            endpoint,
            access_key,
            secret_key,
        };
        server.wait_ready(port)?;
        Ok(server)
    }

    fn wait_ready(&mut self, port: u16) -> Result<(), TestEnvError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.process.check_running()?;
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestEnvError::NotHealthy {
                    cluster: "s3".to_owned(),
                    seconds: 30,
                    waiting_for: format!("versitygw listening on port {port}"),
                    dir: self.dir.path().to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates a bucket: the posix backend serves each directory of its root as a bucket.
    ///
    /// # Errors
    /// The directory cannot be made.
    pub fn create_bucket(&self, name: &str) -> Result<(), TestEnvError> {
        let path = self.bucket_dir(name);
        std::fs::create_dir_all(&path).map_err(|e| TestEnvError::io(&path, e))
    }

    /// Where the server keeps a bucket's objects (each object a file at its key), for tests that
    /// look behind the API — that no object appeared, that an object is damaged on purpose.
    #[must_use]
    pub fn bucket_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("buckets").join(name)
    }

    /// The endpoint URL (`http://127.0.0.1:PORT`).
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The secret key, for tests that check it never appears in output.
    #[must_use]
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The `AWS_*` variables that point kpromote at this server.
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.process.log_tail()
    }
}

fn locate() -> Result<PathBuf, TestEnvError> {
    let bin = match std::env::var_os(BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => cache_dir().join("current/bin/versitygw"),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(TestEnvError::S3ServerMissing { path: bin })
    }
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KPROMOTE_S3_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
        });
    base.join("kpromote").join("s3")
}

/// `bytes` random bytes from the kernel, in hex.
fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if read.is_err() {
        // Unique enough for a test credential when /dev/urandom is unavailable.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        buf = nanos.to_le_bytes()[..bytes.min(16)].to_vec();
    }
    hex::encode(buf)
}
