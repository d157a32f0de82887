//! `kpromote controller`: the PromotePolicy controller, with leader election, `/metrics`,
//! `/healthz` and `/readyz` — flags here, the process loop in
//! [`kpromote_core::controller::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use kpromote_core::controller::ControllerConfig;
use kpromote_core::controller::leader::LeaseConfig;
use kpromote_core::controller::serve::{self, Ended, ServeOptions};

/// Arguments of `kpromote controller`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kubeconfig of the Kosmos control plane (default: in-cluster service account, then
    /// $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Context of the control plane in its kubeconfig.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Kubeconfig of the member cluster, for policies whose `clusterName` has no Kosmos
    /// `Cluster` object (setups without Kosmos). A Cluster object always wins.
    #[arg(long, value_name = "FILE")]
    member_kubeconfig: Option<PathBuf>,
    /// Context of the member in --member-kubeconfig.
    #[arg(long, value_name = "NAME")]
    member_context: Option<String>,
    /// Let a Kosmos `Cluster`'s kubeconfig run its `exec` command inside this process. Off by
    /// default: whoever may edit Cluster objects would run code in the controller's pod.
    #[arg(long)]
    allow_kubeconfig_exec: bool,
    /// Directory of the archives (the backup volume).
    #[arg(long, value_name = "DIR", default_value = kpromote_core::backup::DEFAULT_BACKUP_DIR)]
    backup_dir: PathBuf,
    /// Default location of new archives instead of --backup-dir: `s3://BUCKET/PREFIX`
    /// (credentials and endpoint from AWS_* variables); a PromotePolicy's spec.backupLocation
    /// wins. Journals of such archives stay in $KPROMOTE_STATE_DIR.
    #[arg(long, value_name = "s3://BUCKET/PREFIX", env = "KPROMOTE_BACKUP_LOCATION")]
    backup_location: Option<String>,
    /// Namespaces that may never be promoted.
    #[arg(
        long,
        value_name = "NS,...",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    forbidden_namespaces: Vec<String>,
    /// Elect a leader through a Lease, so only one replica acts (`--leader-elect=false` for a
    /// single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, value_name = "NAME", default_value = "kpromote-controller")]
    leader_election_name: String,
    /// Seconds a lease not renewed stays valid for the other replicas.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    lease_duration_seconds: u64,
    /// Seconds the leader keeps acting without a successful renewal.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    renew_deadline_seconds: u64,
    /// Seconds between election attempts and renewals.
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    retry_period_seconds: u64,
    /// This replica's identity in the Lease and in events (default: $POD_NAME, else
    /// `<hostname>-<pid>`).
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,
    /// Address of /metrics, /healthz and /readyz (`off` to disable).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    metrics_address: String,
    /// Objects created or deleted at once within one level of a plan.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Fallback: wait this many seconds before each level of owners instead of observing that
    /// the control plane's controllers have seen the dependents (0, the default, observes).
    #[arg(long, default_value_t = 0.0)]
    settle_seconds: f64,
    #[command(flatten)]
    stalls: super::engine::Stalls,
    /// Minimum seconds between two progress writes of one policy.
    #[arg(long, default_value_t = 2.0)]
    progress_interval_seconds: f64,
    #[command(flatten)]
    encrypt_to: super::keys::EncryptTo,
    /// age identity file (the mounted Secret) that opens sealed archives; its public keys are
    /// added to the recipients of every sealed archive, so the controller can read back what it
    /// wrote.
    #[arg(long, value_name = "FILE", env = super::keys::IDENTITY_ENV)]
    age_identity: Option<PathBuf>,
}

/// Runs the controller until SIGTERM / Ctrl-C, or until leadership is lost (exit code 1).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let identity = args.identity.clone().unwrap_or_else(serve::default_identity);
    let mut config = ControllerConfig::new(&identity);
    config.backup_dir = args.backup_dir.clone();
    config.backup_location = match args.backup_location.as_deref().filter(|l| !l.is_empty()) {
        Some(location) => Some(kpromote_core::storage::BackupLocation::parse(location)?),
        None => None,
    };
    config.member_kubeconfig = args.member_kubeconfig.clone();
    config.member_context = args.member_context.clone();
    config.kubeconfig_policy.allow_exec = args.allow_kubeconfig_exec;
    config.forbidden_namespaces = args.forbidden_namespaces.clone();
    config.engine.concurrency = args.concurrency.max(1);
    config.engine.settle = Duration::from_secs_f64(args.settle_seconds.max(0.0));
    config.engine = args.stalls.apply(config.engine);
    config.progress_interval = Duration::from_secs_f64(args.progress_interval_seconds.max(0.0));
    config.encrypt_to = args.encrypt_to.recipients()?;
    config.identities = super::keys::identities(args.age_identity.as_deref())?;
    let metrics_address = match args.metrics_address.as_str() {
        "off" => None,
        address => Some(
            address
                .parse::<SocketAddr>()
                .with_context(|| format!("--metrics-address {address}"))?,
        ),
    };
    let lease = args.leader_elect.then(|| {
        let namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_owned());
        LeaseConfig {
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
            retry_period: Duration::from_secs(args.retry_period_seconds),
            ..LeaseConfig::new(&namespace, &args.leader_election_name, &identity)
        }
    });
    let options = ServeOptions {
        kubeconfig: args.kubeconfig,
        context: args.context,
        config,
        metrics_address,
        lease,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    match runtime.block_on(serve::serve(options, serve::shutdown_signal()))? {
        Ended::Shutdown => Ok(ExitCode::SUCCESS),
        Ended::LostLeadership(_) => Ok(ExitCode::FAILURE),
    }
}
