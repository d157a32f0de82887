//! `kpromote status ARCHIVE`: where a promote or rollback run stands, from its journals.

use std::path::PathBuf;
use std::process::ExitCode;

use kpromote_core::run_status::{self, DirectionStatus, RunState, RunStatus};

/// How many remaining objects the text output names per step.
const SHOWN: usize = 5;

/// Arguments of `kpromote status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when the run can go on or is finished, 1 when a journal is \
                        damaged.\n\nExamples:\n  kpromote status /data/backup/shop20260311-104907.tar.zst\n  \
                        kubectl promote status ARCHIVE -o json"
)]
pub struct Args {
    /// The archive of the run (its journals lie beside it).
    #[arg(value_name = "ARCHIVE")]
    archive: PathBuf,
    /// The member cluster's name (default: the one recorded in the archive).
    #[arg(long, value_name = "NAME")]
    cluster_name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_parser = ["text", "json"], default_value = "text")]
    output: String,
    /// Opens the archive's sealed Secrets (they decide which objects the restore skips).
    #[command(flatten)]
    identity: super::keys::Identity,
}

/// Runs `kpromote status`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let identities = args.identity.load()?;
    let status = run_status::read(&args.archive, args.cluster_name.as_deref(), &identities)?;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", text(&status));
    }
    Ok(if status.state == RunState::Damaged {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn text(s: &RunStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "archive:   {}\n           policy {:?}, cluster {:?}, {} objects, id {}",
        s.archive.display(),
        s.policy,
        s.cluster_name,
        s.objects,
        s.archive_id.get(..12).unwrap_or(&s.archive_id)
    );
    let state = match s.state {
        RunState::NotStarted => "not started: the backup exists, nothing was changed",
        RunState::Promoting => "promote stopped part-way (or is still running)",
        RunState::Promoted => "promoted: every planned promote step is done",
        RunState::RollingBack => "rollback stopped part-way (or is still running)",
        RunState::RolledBack => "rolled back: the member is as it was",
        RunState::Damaged => "a journal cannot be used",
    };
    let _ = writeln!(out, "state:     {state}");
    if let Some(problem) = &s.problem {
        let _ = writeln!(out, "problem:   {problem}");
    }
    let _ = writeln!(out, "resumable: {}", if s.resumable { "yes" } else { "no" });
    if let Some(next) = &s.next {
        let _ = writeln!(out, "next:      {next}");
        if s.resumable {
            let _ = writeln!(
                out,
                "           (a PromotePolicy's run is resumed by the controller when it restarts)"
            );
        }
    }
    for (name, d) in [("promote", &s.promote), ("rollback", &s.rollback)] {
        direction(&mut out, name, d);
    }
    out
}

fn direction(out: &mut String, name: &str, d: &DirectionStatus) {
    use std::fmt::Write as _;
    if !d.started {
        let _ = writeln!(out, "\n{name}: no steps recorded ({})", d.journal.display());
        return;
    }
    let _ = writeln!(out, "\n{name} ({}):", d.journal.display());
    for step in &d.steps {
        let total = step.planned.map_or(String::new(), |n| format!("/{n}"));
        let _ = write!(out, "  {:<9} {}{total} done", step.step, step.done);
        if !step.in_flight.is_empty() {
            let _ = write!(out, ", in flight: {}", step.in_flight.join(", "));
        }
        if !step.remaining.is_empty() {
            let more = step.remaining.len().saturating_sub(SHOWN);
            let shown = step
                .remaining
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let _ = write!(out, ", remaining {}: {shown}", step.remaining.len());
            if more > 0 {
                let _ = write!(out, " and {more} more");
            }
        }
        let _ = writeln!(out);
    }
}
