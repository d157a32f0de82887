//! What the controller tests share: a Kosmos-like control plane (CRDs, the member registered as
//! a `Cluster` object and a virtual node) and a member running the design's nginx example, and
//! the controller itself as a separate `kpromote controller` process that tests can SIGKILL.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kpromote_core::kosmos::cluster::{Cluster, ClusterSpec};
use kpromote_core::policy::{Phase, PromotePolicy};
use kpromote_testenv::{Binaries, FakeKubelet, TestEnv};
use kube::api::PostParams;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};

use crate::support::apps;
use crate::support::pair::Pair;

/// The design's PromotePolicy, verbatim but for `clusterName` (the test member is `member`).
pub const DESIGN_POLICY: &str = include_str!("../../deploy/examples/promote-policy.yaml");
/// Its name.
pub const DESIGN_POLICY_NAME: &str = "promote-policy-example";

/// The design's policy with `rollback: "true"`, as the design's rollback step applies it.
pub fn design_rollback_policy() -> String {
    DESIGN_POLICY.replacen("spec:\n", "spec:\n  rollback: \"true\"\n", 1)
}

/// Two clusters, the control plane prepared for the controller, nginx running in the member.
pub struct Env {
    pub env: TestEnv,
    pub cp: Client,
    pub member: Client,
    pub kubelet: FakeKubelet,
    /// The control plane's node and the virtual node's lease, kept alive with the clusters.
    _nodes: (FakeKubelet, Option<kpromote_testenv::NodeLease>),
    pub backup_dir: tempfile::TempDir,
    pub kubectl: PathBuf,
}

impl Env {
    /// The environment around `pair`, with no CRD installed and no member registered yet.
    pub fn without_crds(pair: Pair) -> Self {
        let Pair {
            env,
            cp,
            member,
            kubelet,
            cp_kubelet,
            virtual_lease,
            ..
        } = pair;
        Self {
            kubelet,
            _nodes: (cp_kubelet, virtual_lease),
            backup_dir: tempfile::tempdir().unwrap(),
            env,
            cp,
            member,
            kubectl: Binaries::locate().unwrap().path("kubectl"),
        }
    }

    /// Starts everything; the nginx pod is running in the member when it returns.
    pub async fn start() -> Self {
        let this = Self::without_crds(Pair::start().await);
        this.install_crds().await;
        this.register_member("member").await;
        apps::nginx_example(&this.member, &this.kubelet).await;
        this
    }

    /// `kubectl apply -f deploy/crds.yaml` in the control plane, then waits for Established.
    async fn install_crds(&self) {
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds.yaml");
        let out = self.kubectl_cp(&["apply", "-f", crds]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let api: Api<CustomResourceDefinition> = Api::all(self.cp.clone());
        for name in ["promotepolicies.kosmos.io", "clusters.kosmos.io"] {
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), name, conditions::is_crd_established()),
            )
            .await
            .unwrap()
            .unwrap();
        }
    }

    /// Registers the member as Kosmos `Cluster` `name` (its kubeconfig bytes in the spec).
    pub async fn register_member(&self, name: &str) {
        let cluster = Cluster::new(
            name,
            ClusterSpec {
                kubeconfig: Some(k8s_openapi::ByteString(
                    self.env.cluster("member").kubeconfig_yaml().as_bytes().to_vec(),
                )),
            },
        );
        Api::<Cluster>::all(self.cp.clone())
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
    }

    pub fn cp_kubeconfig(&self) -> &Path {
        self.env.cluster("control-plane").kubeconfig_path()
    }

    pub fn member_kubeconfig(&self) -> &Path {
        self.env.cluster("member").kubeconfig_path()
    }

    /// Runs kubectl against the control plane.
    pub fn kubectl_cp(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.cp_kubeconfig().display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// A kubeconfig for the control plane that authenticates as service account
    /// `namespace/name` (a token from `kubectl create token`): exactly that account's RBAC.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let out = self.kubectl_cp(&["create", "token", name, "-n", namespace, "--duration=1h"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let admin = self.env.cluster("control-plane").kubeconfig_yaml();
        let mut config: serde_json::Value = serde_saphyr::from_str(admin).unwrap();
        for user in config["users"].as_array_mut().unwrap() {
            user["user"] = serde_json::json!({ "token": token });
        }
        let path = self
            .backup_dir
            .path()
            .join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
        path
    }

    /// `kubectl apply -f -` of `yaml` in the control plane.
    pub fn apply(&self, yaml: &str) {
        let file = self.env.cluster("control-plane").dir().join(format!(
            "apply-{}.yaml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::write(&file, yaml).unwrap();
        let out = self.kubectl_cp(&["apply", "-f", &file.display().to_string()]);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A controller process with the defaults of these tests (observed barrier, progress every
    /// 0.5 s, no leader election unless `args` asks for it).
    pub fn controller(&self, name: &str, args: &[&str], envs: &[(&str, &str)]) -> ControllerProcess {
        ControllerProcess::spawn(self, name, args, envs)
    }

    pub fn policies(&self) -> Api<PromotePolicy> {
        Api::all(self.cp.clone())
    }

    /// Waits until policy `name` is in `phase`; fails early on any other terminal phase, with
    /// the status and the controller log.
    pub async fn wait_phase(
        &self,
        name: &str,
        phase: Phase,
        timeout: Duration,
        controller: Option<&ControllerProcess>,
    ) -> PromotePolicy {
        let deadline = Instant::now() + timeout;
        let phase_of = |policy: &Option<PromotePolicy>| {
            policy
                .as_ref()
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase)
        };
        // The phase the wait starts from (e.g. Completed before a rollback) is not an outcome.
        let initial = phase_of(&self.policies().get_opt(name).await.unwrap());
        loop {
            let policy = self.policies().get_opt(name).await.unwrap();
            let current = phase_of(&policy);
            if current == Some(phase) {
                return policy.unwrap();
            }
            let stuck = current.is_some_and(|p| p.is_terminal() && p != phase) && current != initial;
            let dead = controller.is_some_and(|c| c.exited().is_some());
            if stuck || dead || Instant::now() > deadline {
                panic!(
                    "policy {name}: wanted {phase}, got {current:?} ({}):\n{:#?}\ncontroller log:\n{}",
                    if stuck {
                        "terminal"
                    } else if dead {
                        "the controller exited"
                    } else {
                        "timed out"
                    },
                    policy.and_then(|p| p.status),
                    controller.map(ControllerProcess::log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `seconds` until policy `name`, driven by `controller`, is in `phase` (see
    /// [`Env::wait_phase`]).
    pub async fn wait_for(
        &self,
        controller: &ControllerProcess,
        name: &str,
        phase: Phase,
        seconds: u64,
    ) -> PromotePolicy {
        self.wait_phase(name, phase, Duration::from_secs(seconds), Some(controller))
            .await
    }

    /// Waits until the design's policy is in `phase` (see [`Env::wait_for`]).
    pub async fn wait_design(
        &self,
        controller: &ControllerProcess,
        phase: Phase,
        seconds: u64,
    ) -> PromotePolicy {
        self.wait_for(controller, DESIGN_POLICY_NAME, phase, seconds)
            .await
    }

    /// Applies the design's policy verbatim and waits until it is in `phase`.
    pub async fn apply_design(
        &self,
        controller: &ControllerProcess,
        phase: Phase,
        seconds: u64,
    ) -> PromotePolicy {
        self.apply(DESIGN_POLICY);
        self.wait_design(controller, phase, seconds).await
    }

    /// The design's policy applied, `Completed`, then rolled back, `RolledBack` (two minutes each).
    pub async fn promote_and_roll_back_design(&self, controller: &ControllerProcess) {
        self.apply_design(controller, Phase::Completed, 120).await;
        self.apply(&design_rollback_policy());
        self.wait_design(controller, Phase::RolledBack, 120).await;
    }

    /// Waits until policy `name` has a phase from `phases`, returning it.
    pub async fn wait_any_phase(&self, name: &str, phases: &[Phase], timeout: Duration) -> Phase {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(phase) = self
                .policies()
                .get_opt(name)
                .await
                .unwrap()
                .and_then(|p| p.status)
                .and_then(|s| s.phase)
                && phases.contains(&phase)
            {
                return phase;
            }
            assert!(
                Instant::now() < deadline,
                "policy {name} never reached {phases:?}: {:#?}",
                self.policies()
                    .get_opt(name)
                    .await
                    .unwrap()
                    .and_then(|p| p.status)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A `kpromote controller` child process; SIGKILLed when dropped.
pub struct ControllerProcess {
    child: std::sync::Mutex<Child>,
    pub log_path: PathBuf,
    pub metrics_port: u16,
}

impl ControllerProcess {
    fn spawn(env: &Env, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let metrics_port = kpromote_testenv::process::free_port().unwrap();
        let log_path = env
            .env
            .cluster("control-plane")
            .dir()
            .join(format!("controller-{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpromote"));
        cmd.arg("controller")
            .arg(format!("--backup-dir={}", env.backup_dir.path().display()))
            .arg(format!("--metrics-address=127.0.0.1:{metrics_port}"))
            .arg(format!("--identity={name}"));
        let kubeconfig = env.cp_kubeconfig().display().to_string();
        for (flag, default) in [
            ("--kubeconfig", kubeconfig.as_str()),
            ("--progress-interval-seconds", "0.5"),
            ("--leader-elect", "false"),
        ] {
            if !args.iter().any(|a| a.starts_with(flag)) {
                cmd.arg(format!("{flag}={default}"));
            }
        }
        cmd.args(args)
            .env_remove(kpromote_core::journal::FAILPOINT_ENV)
            .env("RUST_LOG", "info,kpromote=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self {
            child: std::sync::Mutex::new(cmd.spawn().unwrap()),
            log_path,
            metrics_port,
        }
    }

    /// SIGKILL, as a node failure or an OOM kill would.
    pub fn kill(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.get_mut().unwrap();
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        child.wait().unwrap()
    }

    /// Peak resident memory of the process so far, in MiB (`VmHWM`).
    pub fn peak_rss_mib(&self) -> f64 {
        let pid = self.child.lock().unwrap().id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// The exit status if the process has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().unwrap()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET `path` from the metrics endpoint: (status code, body).
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
