//! One cluster: etcd, kube-apiserver and kube-controller-manager on loopback.

use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::{Api, Client};

use super::process::{Supervised, free_port};
use super::{Binaries, TestEnvError};

/// Controllers the clusters run: everything kpromote's promises depend on (garbage collection,
/// adoption by the workload controllers, namespace deletion, default ServiceAccounts and the
/// root CA ConfigMap that admission and restore meet in real clusters, PV/PVC binding and the
/// protection finalizers every real cluster's volumes carry).
pub const CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "persistentvolume-binder-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
];

/// Controllers the production profile adds to [`CONTROLLERS`]: a real control plane watches its
/// nodes' leases, taints a node whose lease went stale and evicts the pods that do not tolerate
/// the taint, and force-deletes the pods of nodes that are gone.
pub const PRODUCTION_CONTROLLERS: &[&str] = &[
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
];

/// Environment variable selecting the rig's [`Profile`]: `production`, or `test` (the default).
pub const PROFILE_ENV: &str = "KPROMOTE_TESTENV_PROFILE";

/// How the rig's controller managers are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Fast: client rate limits ten times the default (`--kube-api-qps=200
    /// --kube-api-burst=400`), five GC workers, no node lifecycle.
    #[default]
    Test,
    /// As kubeadm and most distributions run it: the default client rate limits (20 / 30
    /// requests per second) and GC workers, and the node-lifecycle, taint-eviction and pod GC
    /// controllers on ([`PRODUCTION_CONTROLLERS`]), so a node whose lease goes stale is tainted
    /// and its pods evicted.
    Production,
}

impl Profile {
    /// The profile `$KPROMOTE_TESTENV_PROFILE` names (unset or empty: [`Profile::Test`]).
    ///
    /// # Errors
    /// [`TestEnvError::Profile`] for any other value.
    pub fn from_env() -> Result<Self, TestEnvError> {
        match std::env::var(PROFILE_ENV).unwrap_or_default().as_str() {
            "" | "test" => Ok(Self::Test),
            "production" => Ok(Self::Production),
            other => Err(TestEnvError::Profile(other.to_owned())),
        }
    }

    /// The controllers a cluster of this profile runs.
    #[must_use]
    pub fn controllers(self) -> Vec<String> {
        let extra: &[&str] = match self {
            Self::Test => &[],
            Self::Production => PRODUCTION_CONTROLLERS,
        };
        CONTROLLERS.iter().chain(extra).map(|c| (*c).to_owned()).collect()
    }

    /// Flags of kube-controller-manager that differ from its defaults in this profile.
    fn controller_manager_flags(self) -> &'static [&'static str] {
        match self {
            Self::Test => &[
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                // Two cores: the default of 20 GC workers buys nothing here.
                "--concurrent-gc-syncs=5",
            ],
            Self::Production => &[],
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Test => "test",
            Self::Production => "production",
        })
    }
}

/// How long one cluster may take to become healthy (two cores, cold page cache).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Starts are retried this often: another process may take a port between our probe and bind.
const START_ATTEMPTS: u32 = 3;

/// Options for [`Cluster::start_with`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Controllers passed to `--controllers` (default: the profile's, [`Profile::controllers`]).
    pub controllers: Vec<String>,
    /// Rate limits and GC workers of the controller manager.
    pub profile: Profile,
}

impl ClusterOptions {
    /// The options of `profile`.
    #[must_use]
    pub fn of(profile: Profile) -> Self {
        Self {
            controllers: profile.controllers(),
            profile,
        }
    }

    /// The options of the profile `$KPROMOTE_TESTENV_PROFILE` names.
    ///
    /// # Errors
    /// [`TestEnvError::Profile`] for a value that names no profile.
    pub fn from_env() -> Result<Self, TestEnvError> {
        Profile::from_env().map(Self::of)
    }
}

impl Default for ClusterOptions {
    /// The test profile.
    fn default() -> Self {
        Self::of(Profile::Test)
    }
}

/// A running cluster. Dropping it stops the components (controller manager, API server, etcd, in
/// that order) and removes its directory.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    profile: Profile,
    // Field order is drop order: the controller manager stops before the API server, the API
    // server before etcd, and the directory goes last.
    controller_manager: Supervised,
    apiserver: Supervised,
    etcd: Supervised,
    server: String,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    dir: Workdir,
}

impl Cluster {
    /// Starts a cluster named `name` of the profile `$KPROMOTE_TESTENV_PROFILE` names and waits
    /// until it is healthy.
    ///
    /// # Errors
    /// An unknown profile, missing binaries, a component that exits, or a cluster not healthy
    /// within two minutes; each error carries the component log.
    pub async fn start(name: &str) -> Result<Self, TestEnvError> {
        Self::start_with(name, &ClusterOptions::from_env()?).await
    }

    /// Starts a cluster with explicit options; see [`Cluster::start`].
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub async fn start_with(name: &str, options: &ClusterOptions) -> Result<Self, TestEnvError> {
        let bins = Binaries::locate()?;
        let mut last = None;
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_once(name, &bins, options).await {
                Ok(cluster) => return Ok(cluster),
                Err(err) => {
                    tracing::warn!(cluster = name, attempt, error = %err, "cluster start failed");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| TestEnvError::Kubeconfig("no start attempt was made".into())))
    }

    async fn start_once(name: &str, bins: &Binaries, options: &ClusterOptions) -> Result<Self, TestEnvError> {
        let dir = Workdir::new(name)?;
        let root = dir.path().to_owned();
        let token = random_token()?;
        write(
            &root.join("tokens.csv"),
            &format!("{token},kpromote-admin,kpromote-admin,\"system:masters\"\n"),
        )?;
        generate_key(&root.join("sa.key"))?;
        std::fs::create_dir_all(root.join("pki")).map_err(|e| TestEnvError::io(root.join("pki"), e))?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Supervised::spawn(
            "etcd",
            &bins.path("etcd"),
            &strings(&[
                "--name=default",
                &format!("--data-dir={}", root.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                // Test data: durability is the one thing these clusters do not need.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]),
            &root.join("etcd.log"),
        )?;

        let sa_key = root.join("sa.key");
        let mut apiserver = Supervised::spawn(
            "kube-apiserver",
            &bins.path("kube-apiserver"),
            &strings(&[
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--cert-dir={}", root.join("pki").display()),
                &format!("--token-auth-file={}", root.join("tokens.csv").display()),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", sa_key.display()),
                &format!("--service-account-signing-key-file={}", sa_key.display()),
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-node-port-range=30000-32767",
                // Only one apiserver and no kubelet: nothing would serve the published endpoint.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
            ]),
            &root.join("kube-apiserver.log"),
        )?;

        let server = format!("https://127.0.0.1:{api_port}");
        let deadline = Instant::now() + START_TIMEOUT;
        let ca_file = root.join("pki").join("apiserver.crt");
        let ca = loop {
            etcd.check_running()?;
            apiserver.check_running()?;
            if let Some(ca) = read_ca(&ca_file) {
                break ca;
            }
            wait_or_timeout(name, deadline, "serving certificate", &root).await?;
        };
        let kubeconfig_yaml = kubeconfig(name, &server, &ca, &token);
        let kubeconfig_path = root.join("kubeconfig");
        write(&kubeconfig_path, &kubeconfig_yaml)?;
        let client = client_from_yaml(&kubeconfig_yaml).await?;
        loop {
            etcd.check_running()?;
            apiserver.check_running()?;
            if readyz(&client).await {
                break;
            }
            wait_or_timeout(name, deadline, "kube-apiserver /readyz", &root).await?;
        }

        let mut flags = strings(&[
            &format!("--kubeconfig={}", kubeconfig_path.display()),
            "--leader-elect=false",
            "--secure-port=0",
            &format!("--root-ca-file={}", ca_file.display()),
            "--use-service-account-credentials=false",
            &format!("--controllers={}", options.controllers.join(",")),
        ]);
        flags.extend(strings(options.profile.controller_manager_flags()));
        let controller_manager = Supervised::spawn(
            "kube-controller-manager",
            &bins.path("kube-controller-manager"),
            &flags,
            &root.join("kube-controller-manager.log"),
        )?;
        let mut cluster = Self {
            name: name.to_owned(),
            profile: options.profile,
            controller_manager,
            apiserver,
            etcd,
            server,
            kubeconfig_path,
            kubeconfig_yaml,
            dir,
        };
        cluster.wait_for_controllers(&client, deadline, options).await?;
        Ok(cluster)
    }

    /// The controller manager is working once the ServiceAccount controller made `default` and,
    /// when it runs, the CA publisher made `kube-root-ca.crt` in the `default` namespace.
    async fn wait_for_controllers(
        &mut self,
        client: &Client,
        deadline: Instant,
        options: &ClusterOptions,
    ) -> Result<(), TestEnvError> {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let wants = |c: &str| options.controllers.iter().any(|x| x == c);
        loop {
            self.check_running()?;
            let sa_ok = !wants("serviceaccount-controller") || sas.get_opt("default").await?.is_some();
            let ca_ok = !wants("root-ca-certificate-publisher-controller")
                || cms.get_opt("kube-root-ca.crt").await?.is_some();
            if sa_ok && ca_ok {
                return Ok(());
            }
            let root = self.dir.path().to_owned();
            wait_or_timeout(&self.name, deadline, "kube-controller-manager", &root).await?;
        }
    }

    /// Fails with the log of the first component that has exited.
    ///
    /// # Errors
    /// [`TestEnvError::ComponentExited`].
    pub fn check_running(&mut self) -> Result<(), TestEnvError> {
        self.etcd.check_running()?;
        self.apiserver.check_running()?;
        self.controller_manager.check_running()
    }

    /// The cluster's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The profile the cluster runs.
    #[must_use]
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The API server URL (`https://127.0.0.1:<port>`).
    #[must_use]
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Path of a kubeconfig file for this cluster (admin, `system:masters`).
    #[must_use]
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Runs `kubectl` with `args` against this cluster as its admin, the way a user would.
    ///
    /// # Errors
    /// The test binaries are not found, or kubectl cannot be started.
    pub fn kubectl(&self, args: &[&str]) -> Result<std::process::Output, TestEnvError> {
        let kubectl = Binaries::locate()?.path("kubectl");
        std::process::Command::new(&kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig_path.display()))
            .args(args)
            .output()
            .map_err(|e| TestEnvError::io(&kubectl, e))
    }

    /// The kubeconfig as YAML text, e.g. for a Kosmos `Cluster` object's `spec.kubeconfig`.
    #[must_use]
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The directory holding the cluster's logs and state.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new client for this cluster. Each async runtime should make its own.
    ///
    /// # Errors
    /// [`TestEnvError::Kubeconfig`] if the generated kubeconfig cannot be loaded.
    pub async fn client(&self) -> Result<Client, TestEnvError> {
        client_from_yaml(&self.kubeconfig_yaml).await
    }

    /// Stops the controller manager only (e.g. to prove a behaviour needs no controller), keeping
    /// the API server up.
    pub fn stop_controller_manager(&mut self) {
        self.controller_manager.stop();
    }

    /// Freezes the controller manager (SIGSTOP): its informers, the garbage collector and every
    /// controller stop reacting, as on a loaded control plane, while the API server serves on.
    ///
    /// # Errors
    /// [`TestEnvError::Tool`] when the signal cannot be sent.
    pub fn pause_controller_manager(&self) -> Result<(), TestEnvError> {
        self.controller_manager.signal("STOP")
    }

    /// Lets a paused controller manager run again (SIGCONT); it catches up from its watches.
    ///
    /// # Errors
    /// [`TestEnvError::Tool`] when the signal cannot be sent.
    pub fn resume_controller_manager(&self) -> Result<(), TestEnvError> {
        self.controller_manager.signal("CONT")
    }
}

/// Several independent clusters started together, e.g. a Kosmos control plane and a member.
#[derive(Debug)]
pub struct TestEnv {
    clusters: Vec<Cluster>,
}

impl TestEnv {
    /// Starts one cluster per name, concurrently, of the profile `$KPROMOTE_TESTENV_PROFILE`
    /// names.
    ///
    /// # Errors
    /// An unknown profile; the first cluster that failed to start (the others are stopped).
    pub async fn start(names: &[&str]) -> Result<Self, TestEnvError> {
        Self::start_with(names, &ClusterOptions::from_env()?).await
    }

    /// Starts one cluster per name, concurrently, with `options`.
    ///
    /// # Errors
    /// The first cluster that failed to start; the others are stopped.
    pub async fn start_with(names: &[&str], options: &ClusterOptions) -> Result<Self, TestEnvError> {
        let started = futures::future::join_all(names.iter().map(|n| Cluster::start_with(n, options))).await;
        let clusters = started.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Self { clusters })
    }

    /// The cluster named `name`.
    ///
    /// # Panics
    /// If no cluster of that name was started (a test bug).
    #[must_use]
    pub fn cluster(&self, name: &str) -> &Cluster {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no test cluster named {name}"))
    }

    /// Mutable access to the cluster named `name`.
    ///
    /// # Panics
    /// If no cluster of that name was started (a test bug).
    pub fn cluster_mut(&mut self, name: &str) -> &mut Cluster {
        self.clusters
            .iter_mut()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no test cluster named {name}"))
    }

    /// All clusters, in start order.
    #[must_use]
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }
}

/// A private temporary directory, kept for debugging when `KPROMOTE_TESTENV_KEEP=1`.
#[derive(Debug)]
struct Workdir {
    path: PathBuf,
    keep: bool,
}

impl Workdir {
    fn new(name: &str) -> Result<Self, TestEnvError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kpromote-{name}-"))
            .tempdir()
            .map_err(|e| TestEnvError::io(std::env::temp_dir(), e))?;
        let keep = std::env::var("KPROMOTE_TESTENV_KEEP").is_ok_and(|v| v == "1");
        Ok(Self {
            path: dir.keep(),
            keep,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kpromote testenv: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn wait_or_timeout(
    cluster: &str,
    deadline: Instant,
    what: &str,
    dir: &Path,
) -> Result<(), TestEnvError> {
    if Instant::now() >= deadline {
        return Err(TestEnvError::NotHealthy {
            cluster: cluster.to_owned(),
            seconds: START_TIMEOUT.as_secs(),
            waiting_for: what.to_owned(),
            dir: dir.to_owned(),
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

async fn readyz(client: &Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client
        .request_text(request)
        .await
        .is_ok_and(|body| body.trim() == "ok")
}

/// The API server writes its self-signed serving certificate followed by the CA that signed it;
/// clients trust the CA (the last PEM block).
fn read_ca(path: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(path).ok()?;
    let start = pem.rfind("-----BEGIN CERTIFICATE-----")?;
    let block = &pem[start..];
    block
        .contains("-----END CERTIFICATE-----")
        .then(|| block.trim_end().to_owned() + "\n")
}

fn kubeconfig(name: &str, server: &str, ca_pem: &str, token: &str) -> String {
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca_b64}\nusers:\n- name: {name}-admin\n  user:\n    token: {token}\n\
         contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-admin\n\
         current-context: {name}\n"
    )
}

async fn client_from_yaml(yaml: &str) -> Result<Client, TestEnvError> {
    let kc =
        kube::config::Kubeconfig::from_yaml(yaml).map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| TestEnvError::Kubeconfig(e.to_string()))?;
    Client::try_from(config).map_err(TestEnvError::Kube)
}

fn random_token() -> Result<String, TestEnvError> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| TestEnvError::io("/dev/urandom", e))?,
        &mut bytes,
    )
    .map_err(|e| TestEnvError::io("/dev/urandom", e))?;
    Ok(hex::encode(bytes))
}

/// The service-account signing key (RSA 2048), made with openssl.
fn generate_key(path: &Path) -> Result<(), TestEnvError> {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(path)
        .arg("2048")
        .output()
        .map_err(|e| TestEnvError::Tool {
            tool: "openssl".into(),
            detail: format!("{e} (install it: apt-get install -y openssl)"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestEnvError::Tool {
            tool: "openssl genrsa".into(),
            detail: String::from_utf8_lossy(&out.stderr).into(),
        })
    }
}

fn write(path: &Path, text: &str) -> Result<(), TestEnvError> {
    std::fs::write(path, text).map_err(|e| TestEnvError::io(path, e))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_the_last_certificate_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("apiserver.crt");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n\
             -----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert_eq!(
            read_ca(&path).as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
        );
    }
}
