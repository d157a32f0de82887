//! `kpromote completion SHELL` and `kpromote man`: generated from the clap definitions, so they
//! never drift from the commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap_complete::Shell;

/// Arguments of `kpromote completion`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kpromote completion bash > /etc/bash_completion.d/kpromote\n  \
                        kpromote completion zsh > \"${fpath[1]}/_kpromote\"\n  \
                        kpromote completion fish > ~/.config/fish/completions/kpromote.fish"
)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

/// Arguments of `kpromote man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kpromote man | man -l -\n  \
                        kpromote man --dir /usr/local/share/man/man1")]
pub struct ManArgs {
    /// Write `kpromote.1` and one page per subcommand (`kpromote-promote.1`, …) into DIR instead
    /// of printing `kpromote.1`.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell`.
pub fn completion(args: CompletionArgs, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    super::archive::print_str(&String::from_utf8(script)?)
}

/// Prints the man page, or writes every page into a directory.
pub fn man(args: ManArgs, command: clap::Command) -> anyhow::Result<ExitCode> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            return super::archive::print_str(&String::from_utf8(page)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
