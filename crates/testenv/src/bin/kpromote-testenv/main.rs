//! `kpromote-testenv`: real local clusters by hand (`up`) and the main job end to end on them
//! (`demo`). Not part of the product binary: it builds on the test rig.

mod demo;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kpromote_core::controller::ControllerConfig;
use kpromote_core::controller::serve::{self, Ended, ServeOptions};

/// Local Kubernetes clusters built from upstream sources, and kpromote's demo on them.
#[derive(Debug, Parser)]
#[command(name = "kpromote-testenv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the main job end to end on two local clusters: the design's nginx example is
    /// promoted from the member into the control plane, then rolled back.
    Demo(demo::Args),
    /// Start local Kubernetes clusters and print their kubeconfigs; stop them on Ctrl-C.
    Up(up::Args),
    /// The PromotePolicy controller as the demo runs it (one replica, no leader election).
    #[command(hide = true)]
    Controller(ControllerArgs),
}

/// Arguments of the demo's controller process.
#[derive(Debug, clap::Args)]
struct ControllerArgs {
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long)]
    backup_dir: PathBuf,
    #[arg(long)]
    metrics_address: std::net::SocketAddr,
    #[arg(long, default_value_t = 0.5)]
    progress_interval_seconds: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Up(args) => up::run(args),
        Command::Controller(args) => controller(args),
    };
    outcome.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}

fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let mut config = ControllerConfig::new(&serve::default_identity());
    config.backup_dir = args.backup_dir;
    config.progress_interval = Duration::from_secs_f64(args.progress_interval_seconds);
    let options = ServeOptions {
        kubeconfig: Some(args.kubeconfig),
        context: None,
        config,
        metrics_address: Some(args.metrics_address),
        lease: None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    Ok(
        match runtime.block_on(serve::serve(options, serve::shutdown_signal()))? {
            Ended::Shutdown => ExitCode::SUCCESS,
            Ended::LostLeadership(_) => ExitCode::FAILURE,
        },
    )
}

/// JSON lines on stderr (the demo reads its controller's log); `RUST_LOG` overrides `info`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .init();
}
