//! How kpromote reaches a cluster: a kubeconfig file and context (command line), the in-cluster
//! service account (controller), or the kubeconfig bytes of a Kosmos `Cluster` object (the
//! member cluster, as the design has it).
//!
//! # Security
//! A kubeconfig read from the API ([`ClusterClient::from_kosmos_cluster`]) was written by whoever
//! may edit `Cluster` objects, not by the operator, yet the controller would act on it with its
//! own process and filesystem. So such a kubeconfig must carry its credentials inline
//! ([`KubeconfigPolicy`]): an `exec` user would run a command inside the controller's pod, an
//! `auth-provider` may run its `cmd-path`, and a `tokenFile`, `client-certificate`, `client-key`
//! or `certificate-authority` *path* would read a file of the controller's own (its
//! service-account token) and send it to whatever `server:` says. Errors about such a
//! kubeconfig never quote the loader's messages, which can quote the credentials; they land in
//! the policy's status, Events and logs. Kubeconfig files named on the command line are the
//! operator's own and are used as they are.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::engine::live::Transport;
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
    /// A kubeconfig read from the API asks for something other than inline credentials.
    #[error(
        "{origin}: kubeconfig refused: {}; a kubeconfig read from the API must carry its credentials inline \
         (token, client-certificate-data, client-key-data, certificate-authority-data){}",
        refusals.join("; "),
        if *exec_refused { " (exec users are allowed only with `kpromote controller --allow-kubeconfig-exec`)" } else { "" }
    )]
    Refused {
        /// Where the kubeconfig came from, e.g. `Cluster/member1`.
        origin: String,
        /// What is refused: the entry and the field, never its value.
        refusals: Vec<String>,
        /// Whether an `exec` user was among them (the operator flag would allow it).
        exec_refused: bool,
    },
    /// The cluster answered, but cannot be used as configured: its certificate is not trusted,
    /// it refused the credentials, or what answered is not a Kubernetes API server.
    #[error("{cluster} ({server}) cannot be used: {cause}; {advice}")]
    Unusable {
        /// Which cluster (member, control plane).
        cluster: String,
        /// Its API server URL.
        server: String,
        /// What is wrong.
        cause: String,
        /// What to do.
        advice: String,
    },
    /// The cluster did not answer.
    #[error(
        "{cluster} ({server}) is unreachable: {detail}; check the server URL in the kubeconfig and that the API \
         server runs and is reachable from here"
    )]
    Unreachable {
        /// Which cluster (member, control plane).
        cluster: String,
        /// Its API server URL.
        server: String,
        /// The client's error.
        detail: String,
    },
}

/// What a kubeconfig read from the API may ask of the process that uses it. See the module's
/// `# Security` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KubeconfigPolicy {
    /// Let `exec` users run their command (off by default; the operator's explicit choice, as
    /// Flux's `--insecure-kubeconfig-exec`).
    pub allow_exec: bool,
}

impl KubeconfigPolicy {
    /// Every entry of `kc` the policy refuses, as `users[<name>].<field>` (never the value), and
    /// whether an `exec` user is among them. Every entry is checked, not only the current
    /// context's: a kubeconfig that carries such an entry at all was not written for a
    /// controller.
    #[must_use]
    pub(crate) fn refusals(&self, kc: &Kubeconfig) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        let mut exec = false;
        for named in &kc.auth_infos {
            let Some(user) = &named.auth_info else { continue };
            let at = |field: &str| format!("users[{}].{field}", named.name);
            if user.exec.is_some() && !self.allow_exec {
                exec = true;
                out.push(format!("{} runs a command", at("exec")));
            }
            if user.auth_provider.is_some() {
                out.push(format!("{} may run a command or read files", at("auth-provider")));
            }
            for (field, path) in [
                ("tokenFile", &user.token_file),
                ("client-certificate", &user.client_certificate),
                ("client-key", &user.client_key),
            ] {
                if path.is_some() {
                    out.push(format!("{} is a file path", at(field)));
                }
            }
        }
        for named in &kc.clusters {
            let Some(cluster) = &named.cluster else { continue };
            if cluster.certificate_authority.is_some() {
                out.push(format!(
                    "clusters[{}].certificate-authority is a file path",
                    named.name
                ));
            }
            if cluster.server.as_deref().is_some_and(has_user_info) {
                out.push(format!(
                    "clusters[{}].server carries credentials in its URL",
                    named.name
                ));
            }
        }
        (out, exec)
    }
}

/// Whether a URL has `user[:password]@` before its host.
fn has_user_info(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

/// What went wrong loading a kubeconfig read from the API, without the loader's own message:
/// those quote the input (a YAML parser shows the offending value, a base64 decoder the
/// offending byte), and these errors end up in status, Events and logs.
fn withheld(e: &kube::config::KubeconfigError) -> String {
    use kube::config::KubeconfigError as K;
    let what = match e {
        K::CurrentContextNotSet => "it names no current-context",
        K::LoadContext(_) => "its current-context is not among its contexts",
        K::LoadClusterOfContext(_) => "its current context names a cluster it does not define",
        K::Parse(_) => "it is not valid kubeconfig YAML",
        K::MissingClusterUrl => "its cluster has no server URL",
        K::ParseClusterUrl(_) => "its cluster's server is not a valid URL",
        K::ParseProxyUrl(_) => "its cluster's proxy-url is not a valid URL",
        K::LoadCertificateAuthority(_) => "its certificate-authority-data cannot be decoded",
        K::LoadClientCertificate(_) => "its client-certificate-data cannot be decoded",
        K::LoadClientKey(_) => "its client-key-data cannot be decoded",
        K::ParseCertificates(_) => "its certificates are not valid PEM",
        _ => "it cannot be loaded",
    };
    format!("{what} (the loader's message is withheld: it may quote credentials)")
}

/// A client error with its causes, without what authentication plugins print: an `exec`
/// plugin's output is the credential itself.
fn client_error_text(e: &kube::Error) -> String {
    match Transport::of(e) {
        Transport::Transient(chain) => chain,
        Transport::Permanent { cause, .. } => cause,
    }
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

    /// Connects with kubeconfig YAML text read from the API (a Kosmos Cluster's
    /// `spec.kubeconfig`), after [`KubeconfigPolicy`] allowed every entry. `source` names where
    /// the text came from in errors.
    ///
    /// # Errors
    /// [`AccessError::Refused`] for credentials that are not inline data; unparseable YAML or an
    /// unreachable server (without the loader's messages, which may quote credentials).
    pub(crate) async fn from_kubeconfig_yaml(
        role: &str,
        source: &str,
        yaml: &str,
        policy: KubeconfigPolicy,
    ) -> Result<Self, AccessError> {
        let kc = Kubeconfig::from_yaml(yaml).map_err(|e| AccessError::Kubeconfig {
            path: source.into(),
            detail: withheld(&e),
        })?;
        let (refusals, exec_refused) = policy.refusals(&kc);
        if !refusals.is_empty() {
            return Err(AccessError::Refused {
                origin: source.into(),
                refusals,
                exec_refused,
            });
        }
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| AccessError::Context {
                path: source.into(),
                detail: withheld(&e),
            })?;
        Self::from_config(role, config).await
    }

    /// Connects to the member cluster registered as Kosmos `Cluster` `name` in the control plane,
    /// under `policy`.
    ///
    /// # Errors
    /// A missing Cluster object, one without a kubeconfig, one `policy` refuses, or an
    /// unreachable member.
    pub async fn from_kosmos_cluster(
        control_plane: &Client,
        name: &str,
        policy: KubeconfigPolicy,
    ) -> Result<Self, AccessError> {
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
        Self::from_kubeconfig_yaml("member", &format!("Cluster/{name}"), &yaml, policy).await
    }

    async fn from_config(role: &str, mut config: Config) -> Result<Self, AccessError> {
        config.read_timeout = Some(READ_TIMEOUT);
        let server = config.cluster_url.to_string();
        let unreachable = |detail: String| AccessError::Unreachable {
            cluster: role.into(),
            server: server.clone(),
            detail,
        };
        let client = Client::try_from(config).map_err(|e| unreachable(client_error_text(&e)))?;
        client.apiserver_version().await.map_err(|e| match &e {
            kube::Error::Api(status) => AccessError::Unusable {
                cluster: role.into(),
                server: server.clone(),
                cause: format!(
                    "it answered GET /version with HTTP {}: {}",
                    status.code, status.message
                ),
                advice: match status.code {
                    401 => {
                        "it refused the credentials: renew the token or client certificate in the kubeconfig"
                    }
                    403 => "the identity may not read /version: grant it (system:discovery)",
                    _ => "check that the kubeconfig's server URL names the Kubernetes API server",
                }
                .to_owned(),
            },
            _ => match Transport::of(&e) {
                Transport::Permanent { cause, advice } => AccessError::Unusable {
                    cluster: role.into(),
                    server: server.clone(),
                    cause,
                    advice: advice.to_owned(),
                },
                Transport::Transient(_) => unreachable(client_error_text(&e)),
            },
        })?;
        Ok(Self {
            role: role.into(),
            server,
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKER: &str = "kpromote-test-secret-3f9c";

    fn kubeconfig(user: &str, cluster: &str) -> Kubeconfig {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n{cluster}\nusers:\n- name: u\n  user:\n{user}\n\
             contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
        );
        Kubeconfig::from_yaml(&yaml).expect("test kubeconfig parses")
    }

    #[test]
    fn inline_credentials_pass_and_every_path_or_command_is_named() {
        let inline = kubeconfig(
            &format!("    token: {MARKER}"),
            "    server: https://10.0.0.1:6443\n    certificate-authority-data: AAAA",
        );
        assert_eq!(KubeconfigPolicy::default().refusals(&inline), (vec![], false));

        let hostile = kubeconfig(
            "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n    client-certificate: /c\n    \
             client-key: /k\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n    \
             auth-provider:\n      name: gcp",
            "    server: https://user:pw@10.0.0.1:6443\n    certificate-authority: /ca.crt",
        );
        let (refusals, exec) = KubeconfigPolicy::default().refusals(&hostile);
        assert!(exec);
        for needle in [
            "users[u].exec",
            "users[u].auth-provider",
            "users[u].tokenFile",
            "users[u].client-certificate",
            "users[u].client-key",
            "clusters[c].certificate-authority",
            "clusters[c].server",
        ] {
            assert!(
                refusals.iter().any(|r| r.starts_with(needle)),
                "{needle}: {refusals:#?}"
            );
        }
        assert!(
            refusals.iter().all(|r| !r.contains('/')),
            "values are never quoted: {refusals:#?}"
        );

        let (refusals, exec) = KubeconfigPolicy { allow_exec: true }.refusals(&hostile);
        assert!(
            !exec && !refusals.iter().any(|r| r.contains("exec")),
            "{refusals:#?}"
        );
    }

    #[tokio::test]
    async fn a_kubeconfig_that_does_not_parse_is_reported_without_quoting_it() {
        // The marker sits where a parser reports "invalid type: string ...".
        let yaml = format!("apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user: {MARKER}\n");
        let err =
            ClusterClient::from_kubeconfig_yaml("member", "Cluster/m", &yaml, KubeconfigPolicy::default())
                .await
                .expect_err("not a kubeconfig");
        let text = err.to_string();
        assert!(
            text.contains("Cluster/m") && text.contains("not valid kubeconfig YAML"),
            "{text}"
        );
        assert!(!text.contains(MARKER), "{text}");
    }

    #[test]
    fn user_info_in_a_server_url_is_found() {
        assert!(has_user_info("https://a:b@host:6443/path"));
        assert!(!has_user_info("https://host:6443/p@th"));
        assert!(!has_user_info("https://host"));
    }
}
