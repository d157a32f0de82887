//! Command-line front end: one subcommand per user task, each in its own file. Library code
//! returns typed errors; this layer turns them into messages and exit codes.

mod archive;
mod backup;
mod controller;
mod crd;
mod engine;
mod keys;
mod shell;
mod status;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

/// Promote applications from a Kosmos member cluster into the control plane, and roll them back.
#[derive(Debug, Parser)]
#[command(name = "kpromote", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up namespaces of a cluster, and the cluster-scoped objects they depend on, into a
    /// checksummed archive (`--dry-run` prints what would be collected).
    Backup(backup::Args),
    /// Run the PromotePolicy controller against the Kosmos control plane (leader election,
    /// /metrics, /healthz, /readyz).
    Controller(controller::Args),
    /// Print the CRDs kpromote installs (PromotePolicy, and Kosmos Cluster for setups without Kosmos).
    Crd(crd::Args),
    /// Promote namespaces of a member cluster into the Kosmos control plane, without restarting
    /// a pod (resumes where an interrupted run stopped).
    Promote(engine::PromoteArgs),
    /// Roll a promotion back from its archive: the member's owners re-adopt the running pods and
    /// the control plane loses exactly what promote created.
    Rollback(engine::RollbackArgs),
    /// Summarize an archive offline: version, source cluster, policy, counts per resource and
    /// namespace; `--list` lists its objects.
    Inspect(archive::InspectArgs),
    /// Print one object of an archive as YAML or JSON.
    Show(archive::ShowArgs),
    /// Check every checksum of an archive; exit 0 when good, 1 listing every bad entry.
    Verify(archive::VerifyArgs),
    /// Compare two archives: objects added, removed and changed.
    Diff(archive::DiffArgs),
    /// Where a promote or rollback run stands, from its journals: steps done, what remains,
    /// whether it can be resumed.
    Status(status::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(shell::CompletionArgs),
    /// Print the man page, or write one per subcommand into a directory.
    Man(shell::ManArgs),
}

/// The file name under which the binary is a kubectl plugin: kubectl runs `kubectl-promote`
/// for `kubectl promote …`, and the binary then calls itself `kubectl promote`.
pub const KUBECTL_PLUGIN: &str = "kubectl-promote";

/// The command-line definition, named as the binary was invoked (`kpromote`, or
/// `kubectl promote` when installed as [`KUBECTL_PLUGIN`]).
fn command() -> clap::Command {
    let invoked = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
    let command = Cli::command();
    if invoked.as_deref() == Some(KUBECTL_PLUGIN) {
        command
            .name(KUBECTL_PLUGIN)
            .bin_name("kubectl promote")
            .display_name("kubectl promote")
    } else {
        command
    }
}

/// Parses the command line, runs the command and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    init_logging();
    let outcome = match cli.command {
        Command::Backup(args) => backup::run(args),
        Command::Controller(args) => controller::run(args),
        Command::Crd(args) => crd::run(args),
        Command::Promote(args) => engine::run_promote(args),
        Command::Rollback(args) => engine::run_rollback(args),
        Command::Inspect(args) => archive::inspect(args),
        Command::Show(args) => archive::show(args),
        Command::Verify(args) => archive::verify(args),
        Command::Diff(args) => archive::diff(args),
        Command::Status(args) => status::run(args),
        Command::Completion(args) => shell::completion(args, command()),
        Command::Man(args) => shell::man(args, command()),
    };
    let (bytes, requests) = kpromote_core::storage::remote::fetched();
    if requests > 0 {
        tracing::debug!(bytes, requests, "object storage: bytes fetched by ranged reads");
    }
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: human-readable on a terminal, JSON lines otherwise (Jobs, controllers), so
/// log collectors get structured fields. `RUST_LOG` overrides the default `info` level.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.compact().init();
    } else {
        builder.json().init();
    }
}
