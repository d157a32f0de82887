//! `kpromote crd`: print the CRDs kpromote installs.

use std::process::ExitCode;

/// Arguments of `kpromote crd`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the CRD YAML to stdout.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    print!("{}", kpromote_core::policy::crds_yaml()?);
    Ok(ExitCode::SUCCESS)
}
