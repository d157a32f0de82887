//! How kpromote reaches a cluster: a kubeconfig file and context (command line), the in-cluster
//! service account (controller), or the kubeconfig bytes of a Kosmos `Cluster` object (the
//! member cluster, as the design has it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::kosmos::cluster::Cluster;

/// Client-side rate limits are the API server's business (priority and fairness); kpromote's
/// own bound is its restore concurrency. Requests that hang are cut off after this long.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors reaching a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The kubeconfig file could not be read or parsed.
    #[error("cannot load kubeconfig {path}: {detail}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The kubeconfig has no such context, or the context is incomplete.
    #[error("kubeconfig {path}: {detail}")]
    Context {
        /// The file (or the Cluster object it came from).
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The Kosmos Cluster object is missing or has no kubeconfig.
    #[error(
        "Kosmos Cluster {name:?}: {detail}; `clusterName` must name a kosmos.io/v1alpha1 Cluster whose \
         spec.kubeconfig reaches the member cluster"
    )]
    KosmosCluster {
        /// The Cluster name.
        name: String,
        /// What went wrong.
        detail: String,
    },
    /// The cluster did not answer.
    #[error("{cluster} ({server}) is unreachable: {detail}")]
    Unreachable {
        /// Which cluster (member, control plane).
        cluster: String,
        /// Its API server URL.
        server: String,
        /// The client's error.
        detail: String,
    },
}

/// A reachable cluster: its client and, for messages, what it is and where.
#[derive(Clone)]
pub struct ClusterClient {
    /// What the cluster is to this run: `member` or `control plane`.
    pub role: String,
    /// The API server URL.
    pub server: String,
    /// The client.
    pub client: Client,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("role", &self.role)
            .field("server", &self.server)
            .finish()
    }
}

impl ClusterClient {
    /// Connects with a kubeconfig file (or the usual defaults: `$KUBECONFIG`, `~/.kube/config`,
    /// then in-cluster) and an optional context, and checks the server answers.
    ///
    /// # Errors
    /// An unreadable kubeconfig, an unknown context, or an unreachable server.
    pub async fn connect(
        role: &str,
        kubeconfig: Option<&Path>,
        context: Option<&str>,
    ) -> Result<Self, AccessError> {
        let options = KubeConfigOptions {
            context: context.map(str::to_owned),
            ..KubeConfigOptions::default()
        };
        let config = match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| AccessError::Kubeconfig {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| AccessError::Context {
                        path: path.to_owned(),
                        detail: e.to_string(),
                    })?
            }
            None if context.is_some() => {
                Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| AccessError::Context {
                        path: "$KUBECONFIG".into(),
                        detail: e.to_string(),
                    })?
            }
            None => Config::infer().await.map_err(|e| AccessError::Kubeconfig {
                path: "$KUBECONFIG".into(),
                detail: e.to_string(),
            })?,
        };
        Self::from_config(role, config).await
    }

    /// Connects with kubeconfig YAML text (a Kosmos Cluster's `spec.kubeconfig`).
    ///
    /// # Errors
    /// Unparseable YAML or an unreachable server.
    pub async fn from_kubeconfig_yaml(role: &str, source: &str, yaml: &str) -> Result<Self, AccessError> {
        let kc = Kubeconfig::from_yaml(yaml).map_err(|e| AccessError::Kubeconfig {
            path: source.into(),
            detail: e.to_string(),
        })?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| AccessError::Context {
                path: source.into(),
                detail: e.to_string(),
            })?;
        Self::from_config(role, config).await
    }

    /// Connects to the member cluster registered as Kosmos `Cluster` `name` in the control plane.
    ///
    /// # Errors
    /// A missing Cluster object, one without a kubeconfig, or an unreachable member.
    pub async fn from_kosmos_cluster(control_plane: &Client, name: &str) -> Result<Self, AccessError> {
        let clusters: Api<Cluster> = Api::all(control_plane.clone());
        let cluster = clusters
            .get_opt(name)
            .await
            .map_err(|e| AccessError::KosmosCluster {
                name: name.into(),
                detail: e.to_string(),
            })?
            .ok_or_else(|| AccessError::KosmosCluster {
                name: name.into(),
                detail: "not found".into(),
            })?;
        let bytes = cluster
            .spec
            .kubeconfig
            .ok_or_else(|| AccessError::KosmosCluster {
                name: name.into(),
                detail: "spec.kubeconfig is empty".into(),
            })?;
        let yaml = String::from_utf8(bytes.0).map_err(|_| AccessError::KosmosCluster {
            name: name.into(),
            detail: "spec.kubeconfig is not UTF-8".into(),
        })?;
        Self::from_kubeconfig_yaml("member", &format!("Cluster/{name}"), &yaml).await
    }

    async fn from_config(role: &str, mut config: Config) -> Result<Self, AccessError> {
        config.read_timeout = Some(READ_TIMEOUT);
        let server = config.cluster_url.to_string();
        let unreachable = |detail: String| AccessError::Unreachable {
            cluster: role.into(),
            server: server.clone(),
            detail,
        };
        let client = Client::try_from(config).map_err(|e| unreachable(e.to_string()))?;
        client
            .apiserver_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            role: role.into(),
            server,
            client,
        })
    }
}
