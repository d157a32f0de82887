//! `kpromote testenv`: start real local clusters and print their kubeconfigs.

use std::process::ExitCode;

/// Arguments of `kpromote testenv`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `kpromote testenv`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the test environment launcher is being built (issue 2)")
}
