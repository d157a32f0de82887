//! The real Kosmos clustertree cluster-manager beside two test clusters: the component that
//! mirrors control-plane pods bound to the virtual node `kosmos-<cluster>` onto the member's pods
//! and copies their status back. Tests and the demo run it to prove that Kosmos finds nothing to
//! change in what kpromote promoted.
//!
//! kpromote never needs it at run time. The binary (built from kosmos-io/kosmos, Apache-2.0) and
//! its CRDs come from a kit directory that `tests/testenv/kosmos.sh` installs into the cache (see
//! that script for the kit's layout and how to build the binary from a Kosmos clone);
//! `KPROMOTE_KOSMOS_BIN` and `KPROMOTE_KOSMOS_CRDS` override where they are.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::process::{Supervised, free_port, log_tail};
use super::{Cluster, TestEnvError};

/// Environment variable naming the clustertree cluster-manager binary.
pub const BIN_ENV: &str = "KPROMOTE_KOSMOS_BIN";
/// Environment variable naming the directory of the Kosmos CRDs.
pub const CRDS_ENV: &str = "KPROMOTE_KOSMOS_CRDS";
/// The command that installs the kit into the cache, named in every "not found" error.
pub const INSTALL_COMMAND: &str = "tests/testenv/kosmos.sh";
/// What clustertree logs each time it tries to update a member pod in place.
pub const UPDATE_ATTEMPT: &str = "Updating pod";
/// The source file of clustertree's control-plane pod controller, as its log lines name it.
const ROOT_POD_CONTROLLER: &str = "root_pod_controller.go";
/// What clustertree logs when it leaves a member pod alone because it lacks the Kosmos label.
const NOT_KOSMOS_POD: &str = "not created by kosmos tree";
/// Field manager of the launcher's writes.
const MANAGER: &str = "kpromote-testenv";
/// The log line that says the member's pod controllers run (clustertree is ready).
const READY_MARK: &str = "leaf-pod-controller";

/// Where the clustertree binary and the Kosmos CRDs are.
#[derive(Debug, Clone)]
pub struct KosmosKit {
    bin: PathBuf,
    crds: PathBuf,
}

impl KosmosKit {
    /// Finds the kit: `$KPROMOTE_KOSMOS_BIN` and `$KPROMOTE_KOSMOS_CRDS`, else the `current`
    /// install of `tests/testenv/kosmos.sh` in `~/.cache/kpromote/kosmos` (or
    /// `$XDG_CACHE_HOME/kpromote/kosmos`).
    ///
    /// # Errors
    /// [`TestEnvError::KosmosMissing`] naming where it looked and the command that installs it.
    pub fn locate() -> Result<Self, TestEnvError> {
        let current = cache_dir().join("current");
        let bin = std::env::var_os(BIN_ENV)
            .map_or_else(|| current.join("clustertree-cluster-manager"), PathBuf::from);
        let crds = std::env::var_os(CRDS_ENV).map_or_else(|| current.join("crds"), PathBuf::from);
        if !bin.is_file() {
            return Err(TestEnvError::KosmosMissing { path: bin });
        }
        if !crds.is_dir() {
            return Err(TestEnvError::KosmosMissing { path: crds });
        }
        Ok(Self { bin, crds })
    }

    /// The clustertree binary.
    #[must_use]
    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
        });
    base.join("kpromote").join("kosmos")
}

/// A running clustertree cluster-manager serving one member. Dropping it stops the process.
#[derive(Debug)]
pub struct Clustertree {
    process: Supervised,
    log: PathBuf,
    /// Holds the log; `None` when kept (`KPROMOTE_TESTENV_KEEP=1`).
    _dir: Option<tempfile::TempDir>,
}

impl Clustertree {
    /// Installs the Kosmos CRDs in `control_plane`, registers `member` as the Kosmos `Cluster`
    /// `cluster_name` (its kubeconfig inline, clustertree enabled, leaf mode `ALL`, so the
    /// virtual node is `kosmos-<cluster_name>`), starts clustertree and waits until its member
    /// pod controllers run. The member needs a Ready node (leaf mode `ALL` reads its nodes).
    ///
    /// # Errors
    /// A missing kit, the API server's refusals, clustertree exiting or not getting ready within
    /// two minutes (its log tail is in the error).
    pub async fn start(
        kit: &KosmosKit,
        control_plane: &Cluster,
        member: &Cluster,
        cluster_name: &str,
    ) -> Result<Self, TestEnvError> {
        let client = control_plane.client().await?;
        install_crds(&client, &kit.crds).await?;
        register_cluster(&client, member, cluster_name).await?;

        let dir = tempfile::Builder::new()
            .prefix("kpromote-clustertree-")
            .tempdir()
            .map_err(|e| TestEnvError::io(std::env::temp_dir(), e))?;
        let log = dir.path().join("clustertree.log");
        // `env`: the manager reads `PREFERRED-ADDRESS-TYPE`, a name no shell can export.
        let args = vec![
            "LEAF_NODE_IP=127.0.0.1".to_owned(),
            "PREFERRED-ADDRESS-TYPE=InternalDNS".to_owned(),
            kit.bin.display().to_string(),
            format!("--kubeconfig={}", control_plane.kubeconfig_path().display()),
            "--leader-elect=false".to_owned(),
            "--multi-cluster-service=false".to_owned(),
            format!("--listen-port={}", free_port()?),
            "--v=4".to_owned(),
        ];
        let mut process = Supervised::spawn("clustertree", Path::new("env"), &args, &log)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            process.check_running()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text
                .lines()
                .any(|l| l.contains(READY_MARK) && l.contains("Starting workers"))
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(TestEnvError::NotHealthy {
                    cluster: format!("clustertree for {cluster_name}"),
                    seconds: 120,
                    waiting_for: format!("its {READY_MARK} to start; log tail:\n{}", log_tail(&log, 4096)),
                    dir: dir.path().to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // With KPROMOTE_TESTENV_KEEP=1 the log stays, as the clusters' logs do.
        let dir = if std::env::var_os("KPROMOTE_TESTENV_KEEP").is_some() {
            let _kept = dir.keep();
            None
        } else {
            Some(dir)
        };
        Ok(Self {
            process,
            log,
            _dir: dir,
        })
    }

    /// clustertree's whole log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of its log.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log lines (from byte `from` on) in which clustertree tried to update a member pod in
    /// place: each means it found the member pod and its control-plane twin different and went on
    /// to send the update. An attempt it abandons at once because the member pod does not carry
    /// the Kosmos label (it logs that the pod "is not created by kosmos tree") changes nothing and
    /// is not counted: rollback takes the label off the member pods before it removes their twins.
    #[must_use]
    pub fn update_attempts(&self, from: usize) -> Vec<String> {
        let log = self.log();
        let lines: Vec<&str> = log.get(from..).unwrap_or_default().lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(UPDATE_ATTEMPT))
            .filter(|(i, _)| {
                // The manager's next line from the same controller says what it did.
                let next = lines[i + 1..].iter().find(|l| l.contains(ROOT_POD_CONTROLLER));
                !next.is_some_and(|l| l.contains(NOT_KOSMOS_POD))
            })
            .map(|(_, l)| (*l).to_owned())
            .collect()
    }

    /// Fails if clustertree has exited (it panics on some inputs).
    ///
    /// # Errors
    /// [`TestEnvError::ComponentExited`] with its log tail.
    pub fn check_running(&mut self) -> Result<(), TestEnvError> {
        self.process.check_running()
    }
}

/// Server-side applies every CRD under `dir` (they are too large for client-side apply's
/// annotation) and waits until the ones clustertree watches are Established.
async fn install_crds(client: &Client, dir: &Path) -> Result<(), TestEnvError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TestEnvError::io(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| TestEnvError::io(&file, e))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| TestEnvError::Kubeconfig(format!("{}: {e}", file.display())))?;
        for doc in docs
            .into_iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
        {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            crds.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&doc))
                .await?;
            names.push(name);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in &names {
        loop {
            let established = crds.get(name).await?.status.is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() >= deadline {
                return Err(TestEnvError::Tool {
                    tool: "Kosmos CRDs".to_owned(),
                    detail: format!("{name} not Established after 60s"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Creates or updates the Kosmos `Cluster` for `member`. clustertree dereferences
/// `spec.clusterLinkOptions` (a Cluster without it panics the manager), so it is set though
/// ClusterLink is off.
async fn register_cluster(client: &Client, member: &Cluster, name: &str) -> Result<(), TestEnvError> {
    let gvk = GroupVersionKind::gvk("kosmos.io", "v1alpha1", "Cluster");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    let kubeconfig = base64::engine::general_purpose::STANDARD.encode(member.kubeconfig_yaml());
    let cluster = json!({
        "apiVersion": "kosmos.io/v1alpha1",
        "kind": "Cluster",
        "metadata": { "name": name },
        "spec": {
            "kubeconfig": kubeconfig,
            "clusterLinkOptions": { "enable": false, "ipFamily": "ipv4" },
            "clusterTreeOptions": { "enable": true },
        },
    });
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&cluster),
    )
    .await?;
    Ok(())
}
