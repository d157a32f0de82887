//! Child processes that cannot outlive kpromote, and loopback ports for them.
//!
//! Each component runs under a tiny `sh` supervisor whose standard input is a pipe from us. When
//! that pipe closes — because we tear down, panic, or are killed outright — the supervisor sends
//! the component SIGTERM. This needs no `unsafe` (no `prctl`) and leaves no orphaned etcd or
//! kube-apiserver behind even after `kill -9` of the test binary.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::TestEnvError;

/// Runs `"$0" "$@"` in the background, stops it when our pipe on stdin closes, and exits with
/// the component's status when the component ends first. The pipe moves to fd 3 because POSIX
/// sh gives background jobs `/dev/null` as their standard input.
const SUPERVISOR: &str = r#"exec 3<&0
"$0" "$@" </dev/null 3<&- & c=$!
(read -r _ <&3; kill -TERM "$c" 2>/dev/null) & r=$!
exec 3<&-
wait "$c"; s=$?; kill "$r" 2>/dev/null; exit "$s""#;

/// How long a component gets to exit after SIGTERM before its process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running component (etcd, kube-apiserver, kube-controller-manager) and its log file.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Child,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self, TestEnvError> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// [`Supervised::spawn`] with extra environment variables (credentials, which a command line
    /// would show to every user of the machine).
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self, TestEnvError> {
        let out = File::create(log).map_err(|e| TestEnvError::io(log, e))?;
        let err = out.try_clone().map_err(|e| TestEnvError::io(log, e))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| TestEnvError::io(program, e))?;
        let lifeline = child.stdin.take();
        Ok(Self {
            name: name.to_owned(),
            child,
            lifeline,
            log: log.to_owned(),
        })
    }

    /// Fails with the component's log tail if it has already exited.
    pub fn check_running(&mut self) -> Result<(), TestEnvError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(TestEnvError::ComponentExited {
                component: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                log_tail: self.log_tail(),
            }),
            Err(e) => Err(TestEnvError::io(&self.log, e)),
        }
    }

    /// The last lines of the component's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 4096)
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the component and its supervisor (their process
    /// group): `STOP` freezes a component as an overloaded or swapped-out one freezes.
    pub fn signal(&self, signal: &str) -> Result<(), TestEnvError> {
        let group = format!("-{}", self.child.id());
        let status = Command::new("kill")
            .args([&format!("-{signal}"), "--", &group])
            .status()
            .map_err(|e| TestEnvError::io("kill", e))?;
        if status.success() {
            Ok(())
        } else {
            Err(TestEnvError::Tool {
                tool: "kill".to_owned(),
                detail: format!("-{signal} {group}: {status}"),
            })
        }
    }

    /// Stops the component: SIGTERM through the supervisor, then SIGKILL to the whole process
    /// group if it has not exited within [`STOP_GRACE`].
    pub fn stop(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `max` bytes of a log file, lossily decoded, or a note that it could not be read.
pub fn log_tail(path: &Path, max: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// A loopback port no other caller in this process has been handed. The OS picks a free one;
/// another process may still take it before the component binds, which the launcher handles by
/// retrying the start.
pub fn free_port() -> Result<u16, TestEnvError> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| TestEnvError::io("127.0.0.1:0", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestEnvError::io("127.0.0.1:0", e))?
            .port();
        let mut set = handed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.insert(port) {
            return Ok(port);
        }
    }
}
