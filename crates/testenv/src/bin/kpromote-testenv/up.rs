//! `kpromote-testenv up`: start real local clusters, print how to reach them, stop them on Ctrl-C.

use std::process::ExitCode;

use kpromote_testenv::{TestEnv, register_virtual_node};

/// Arguments of `kpromote-testenv up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Names of the clusters to start.
    #[arg(default_values_t = ["control-plane".to_owned(), "member".to_owned()])]
    clusters: Vec<String>,
    /// Register the Kosmos virtual node `kosmos-<NAME>` in the first cluster for each other one.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    virtual_nodes: bool,
}

/// Runs `kpromote-testenv up` until Ctrl-C or SIGTERM, then tears the clusters down.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let names: Vec<&str> = args.clusters.iter().map(String::as_str).collect();
        let env = TestEnv::start(&names).await?;
        if let (true, [first, rest @ ..]) = (args.virtual_nodes, env.clusters()) {
            let client = first.client().await?;
            for member in rest {
                register_virtual_node(&client, member.name()).await?;
            }
        }
        for cluster in env.clusters() {
            println!(
                "{}\t{}\t{}",
                cluster.name(),
                cluster.server(),
                cluster.kubeconfig_path().display()
            );
        }
        println!("clusters are up; Ctrl-C stops them");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        eprintln!("stopping clusters");
        drop(env);
        Ok(ExitCode::SUCCESS)
    })
}
