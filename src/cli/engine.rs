//! `kpromote promote` and `kpromote rollback`: the engine at a terminal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use kpromote_archive::{Identities, Recipients, WriterOptions};
use kpromote_core::access::ClusterClient;
use kpromote_core::engine::live::RetryPolicy;
use kpromote_core::engine::{
    Bodies, EngineOptions, Inventory, InventoryError, LiveCluster, ProgressFn, Report, Run, Tally, promote,
    rollback,
};
use kpromote_core::journal::Journal;
use kpromote_core::storage::BackupLocation;

/// How to reach the two clusters.
#[derive(Debug, clap::Args)]
pub struct Clusters {
    /// Kubeconfig of the member cluster (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    member_kubeconfig: Option<PathBuf>,
    /// Context of the member cluster in its kubeconfig.
    #[arg(long, value_name = "NAME")]
    member_context: Option<String>,
    /// Kubeconfig of the Kosmos control plane (default: $KUBECONFIG, ~/.kube/config); as with
    /// kubectl, `--kubeconfig` names the cluster you talk to.
    #[arg(long, visible_alias = "kubeconfig", value_name = "FILE")]
    control_plane_kubeconfig: Option<PathBuf>,
    /// Context of the control plane in its kubeconfig (`--context`, as with kubectl).
    #[arg(long, visible_alias = "context", value_name = "NAME")]
    control_plane_context: Option<String>,
    /// The member's Kosmos cluster name: its virtual node is `kosmos-<NAME>`.
    #[arg(long, value_name = "NAME")]
    cluster_name: String,
}

impl Clusters {
    async fn connect(&self, retry: RetryPolicy) -> anyhow::Result<(LiveCluster, LiveCluster)> {
        let member = ClusterClient::connect(
            "member",
            self.member_kubeconfig.as_deref(),
            self.member_context.as_deref(),
        )
        .await?;
        let cp = ClusterClient::connect(
            "control plane",
            self.control_plane_kubeconfig.as_deref(),
            self.control_plane_context.as_deref(),
        )
        .await?;
        Ok((
            LiveCluster::new("member", member.client).with_retry(retry),
            LiveCluster::new("control plane", cp.client).with_retry(retry),
        ))
    }
}

/// How long the engine's waits on the clusters' controllers may go without progress before
/// they fail: each is a stall window, not a total, so a large namespace is waited for as long
/// as its work advances. Shared by promote, rollback and the controller.
#[derive(Debug, clap::Args)]
pub struct Stalls {
    /// Seconds the garbage collector may go without orphaning one more of a deleted owner's
    /// dependents.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    gc_stall_seconds: u64,
    /// Seconds a namespace being deleted (rollback) may go without one object fewer.
    #[arg(long, value_name = "SECONDS", default_value_t = 180)]
    namespace_stall_seconds: u64,
    /// Seconds the barrier before a level of owners may go without the control plane's
    /// controllers showing they caught up or writing any owner's status.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    barrier_stall_seconds: u64,
    /// Seconds the restore waits for one thing the target's controllers make or set (a
    /// namespace's default ServiceAccount, a CRD's Established condition).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    object_wait_seconds: u64,
}

impl Stalls {
    /// `options` with these windows.
    pub fn apply(&self, options: EngineOptions) -> EngineOptions {
        let secs = std::time::Duration::from_secs;
        EngineOptions {
            gc_stall: secs(self.gc_stall_seconds),
            namespace_stall: secs(self.namespace_stall_seconds),
            barrier_stall: secs(self.barrier_stall_seconds),
            object_wait: secs(self.object_wait_seconds),
            ..options
        }
    }
}

/// Engine knobs shared by promote and rollback.
#[derive(Debug, clap::Args)]
pub struct Knobs {
    /// Objects created or deleted at once within one level of the plan.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Fallback: wait this many seconds before each level of owners instead of observing that
    /// the target's controllers have seen the dependents (0, the default, observes).
    #[arg(long, default_value_t = 0.0)]
    settle_seconds: f64,
    /// How long one API call keeps retrying throttling (429), server errors and dropped
    /// connections — long enough to ride out an API server restart.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    retry_deadline_seconds: u64,
    #[command(flatten)]
    stalls: Stalls,
    /// Print the report as JSON.
    #[arg(short = 'o', long = "output", value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

impl Knobs {
    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            deadline: std::time::Duration::from_secs(self.retry_deadline_seconds),
            ..RetryPolicy::default()
        }
    }

    fn options(&self) -> EngineOptions {
        self.stalls.apply(EngineOptions {
            concurrency: self.concurrency.max(1),
            settle: std::time::Duration::from_secs_f64(self.settle_seconds.max(0.0)),
            ..EngineOptions::default()
        })
    }
}

/// Arguments of `kpromote promote`.
#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    clusters: Clusters,
    /// Namespace to promote (repeat for several). Required unless --archive is given.
    #[arg(short = 'n', long = "namespace", value_name = "NAME")]
    namespaces: Vec<String>,
    /// Namespace-scoped resource type to leave out (repeat; default: the design's list —
    /// events, events.events.k8s.io, endpoints, endpointslices.discovery.k8s.io).
    #[arg(long = "exclude", value_name = "RESOURCE")]
    exclude: Option<Vec<String>>,
    /// ClusterRoleBinding that may be promoted although its role escalates (cluster-admin,
    /// wildcards, bind/escalate/impersonate, secrets cluster-wide); repeat for several. In the
    /// control plane it grants the same, cluster-wide.
    #[arg(long = "allow-escalating-binding", value_name = "NAME")]
    allow_escalating_bindings: Vec<String>,
    /// Directory of the backup archive.
    #[arg(long, value_name = "DIR", default_value = kpromote_core::backup::DEFAULT_BACKUP_DIR)]
    backup_dir: PathBuf,
    /// Where the backup goes instead of --backup-dir: a directory or `s3://BUCKET/PREFIX`
    /// (configured by AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX", conflicts_with = "backup_dir")]
    backup_location: Option<String>,
    /// Name recorded in the archive and used as its file name's prefix.
    #[arg(long, value_name = "NAME", default_value = "kpromote")]
    policy_name: String,
    /// Promote from (or resume with) this archive instead of prechecking and taking a new backup.
    #[arg(long, value_name = "FILE")]
    archive: Option<PathBuf>,
    /// Print the plan (detach order, restore levels with their reasons, skips) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// On a failure after detach, leave things as they are instead of rolling back.
    #[arg(long)]
    no_auto_rollback: bool,
    /// Seal the new backup's Secrets (promote reads them back, so --identity must open it).
    #[command(flatten)]
    encrypt_to: super::keys::EncryptTo,
    /// Opens the archive's sealed Secrets.
    #[command(flatten)]
    identity: super::keys::Identity,
    #[command(flatten)]
    knobs: Knobs,
}

/// Arguments of `kpromote rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    clusters: Clusters,
    /// The archive promote used (rollback needs nothing else).
    #[arg(long, value_name = "FILE")]
    archive: PathBuf,
    /// Print what would be re-created and removed, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Discard what changed in the control plane since promote (objects created in the promoted
    /// namespaces, owners edited there); without it rollback refuses and names them.
    #[arg(long)]
    discard_changes: bool,
    /// Opens the archive's sealed Secrets.
    #[command(flatten)]
    identity: super::keys::Identity,
    #[command(flatten)]
    knobs: Knobs,
}

fn open_journal(archive: &Path, direction: &str, inv: &Inventory) -> anyhow::Result<Arc<Mutex<Journal>>> {
    Ok(kpromote_core::engine::open_journal(archive, direction, inv)?)
}

fn load(archive: &Path, identities: &Identities) -> anyhow::Result<Inventory> {
    Inventory::for_promote_with(archive, identities).map_err(|e| reading(archive, e))
}

/// An inventory error, with what to do when it is about keys.
fn reading(archive: &Path, err: InventoryError) -> anyhow::Error {
    let hint = match &err {
        InventoryError::Archive(e) => super::keys::hint(e),
        _ => None,
    };
    let context = match hint {
        Some(hint) => format!(
            "reading archive {} ({hint}); nothing was changed",
            archive.display()
        ),
        None => format!("reading archive {}", archive.display()),
    };
    anyhow::Error::new(err).context(context)
}

/// Checks, from the manifest alone and before any cluster is contacted, that `identities` open
/// the archive's sealed Secrets (nothing to check when it seals none).
fn check_identity(archive: &Path, identities: &Identities) -> anyhow::Result<()> {
    kpromote_core::engine::open_archive(archive)
        .and_then(|mut reader| reader.unseal_with(identities))
        .map_err(|e| reading(archive, e.into()))
}

/// The recipients of a new backup, checked before anything starts: promote reads the archive
/// back, so one of `identities` must be among them.
fn backup_recipients(args: &PromoteArgs, identities: &Identities) -> anyhow::Result<Recipients> {
    let recipients = args.encrypt_to.recipients()?;
    if recipients.is_empty() {
        return Ok(recipients);
    }
    anyhow::ensure!(
        args.archive.is_none(),
        "--encrypt-to seals a new backup; --archive names one already written (drop one of them)"
    );
    identities.check(&recipients.to_strings()).map_err(|e| {
        anyhow::anyhow!(
            "--encrypt-to: the new archive's Secrets would be sealed to {}, and promote reads them back from it: {e};              give the identity of one of them with --identity FILE or {}; nothing was changed",
            recipients.to_strings().join(", "),
            super::keys::IDENTITY_ENV
        )
    })?;
    Ok(recipients)
}

/// Precheck and backup, for a promotion that starts from scratch; returns the new archive.
async fn precheck_and_backup(
    args: &PromoteArgs,
    member: &LiveCluster,
    cp: &LiveCluster,
    location: BackupLocation,
    recipients: &Recipients,
) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !args.namespaces.is_empty(),
        "name the namespaces to promote with -n/--namespace, or resume with --archive"
    );
    let excluded = args.exclude.clone().unwrap_or_else(|| {
        kpromote_core::resources::DEFAULT_EXCLUDED_RESOURCES
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    });
    let request = kpromote_core::precheck::PrecheckRequest {
        namespaces: args.namespaces.clone(),
        excluded: excluded.clone(),
        cluster_name: args.clusters.cluster_name.clone(),
        forbidden_namespaces: kpromote_core::precheck::DEFAULT_FORBIDDEN_NAMESPACES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        busy_namespaces: Vec::new(),
        allowed_escalating_bindings: args.allow_escalating_bindings.clone(),
    };
    if let Err(failed) = kpromote_core::precheck::precheck(&member.client, &cp.client, &request).await {
        for error in &failed.errors {
            eprintln!("precheck: {error}");
        }
        anyhow::bail!(
            "precheck failed ({} problems); nothing was changed",
            failed.errors.len()
        );
    }
    let backup = kpromote_core::backup::BackupRequest::new(&args.policy_name, args.namespaces.clone())
        .excluded(excluded)
        .location(location)
        .cluster_name(&args.clusters.cluster_name)
        .archive_options(WriterOptions::zstd().encrypt_to(recipients.clone()));
    let report = kpromote_core::backup::run(&member.client, &backup).await?;
    eprintln!(
        "backup: {} ({} objects)",
        report.path.display(),
        report.collected.total_objects()
    );
    Ok(report.path)
}

/// Runs `kpromote promote`.
pub fn run_promote(args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let identities = args.identity.load()?;
    let recipients = backup_recipients(&args, &identities)?;
    if let Some(archive) = &args.archive {
        check_identity(archive, &identities)?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (member, cp) = args.clusters.connect(args.knobs.retry()).await?;
        // A dry run backs up into a scratch directory: everything is read, nothing is kept.
        let scratch = tempfile::tempdir()?;
        let archive = match &args.archive {
            Some(path) => path.clone(),
            None if args.dry_run => {
                let scratch = BackupLocation::Dir(scratch.path().to_owned());
                precheck_and_backup(&args, &member, &cp, scratch, &recipients).await?
            }
            None => {
                let location = match &args.backup_location {
                    Some(location) => BackupLocation::parse(location)?,
                    None => BackupLocation::Dir(args.backup_dir.clone()),
                };
                precheck_and_backup(&args, &member, &cp, location, &recipients).await?
            }
        };
        let inv = load(&archive, &identities)?;
        if args.dry_run {
            print!("{}", plan_text(&inv)?);
            return Ok(ExitCode::SUCCESS);
        }
        let _claim = kpromote_core::engine::claim_archive(&archive)?;
        let journal = match kpromote_core::engine::open_journal(&archive, "promote", &inv) {
            Err(kpromote_core::journal::JournalError::Finished { outcome, path })
                if outcome == kpromote_core::engine::COMPLETED =>
            {
                println!(
                    "already promoted: journal {} records the run as completed",
                    path.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            journal => journal?,
        };
        let rollback_journal = if args.no_auto_rollback {
            None
        } else {
            Some(open_journal(&archive, "rollback", &inv)?)
        };
        let opts = args.knobs.options();
        let progress = progress_printer();
        let run = Run::new(&member, &cp, &inv, &args.clusters.cluster_name, &opts).reporting(&progress);
        let report = promote::promote(&run, &journal, rollback_journal.as_ref())
            .await
            .map_err(|e| print_failure(e, &args.knobs.output))?;
        print_report(
            &format!("promoted (archive {})", archive.display()),
            &report,
            &args.knobs.output,
        )?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `kpromote rollback`.
pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    // One damaged entry must not block a rollback: the rest is rolled back, the damage reported.
    let identities = args.identity.load()?;
    let inv =
        Inventory::for_rollback_with(&args.archive, &identities).map_err(|e| reading(&args.archive, e))?;
    if args.dry_run {
        print!("{}", plan_text(&inv)?);
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (member, cp) = args.clusters.connect(args.knobs.retry()).await?;
        let _claim = kpromote_core::engine::claim_archive(&args.archive)?;
        let journal = open_journal(&args.archive, "rollback", &inv)?;
        let progress = progress_printer();
        let opts = EngineOptions {
            discard_changes: args.discard_changes,
            ..args.knobs.options()
        };
        let run = Run::new(&member, &cp, &inv, &args.clusters.cluster_name, &opts).reporting(&progress);
        let report = rollback::rollback(&run, &journal)
            .await
            .map_err(|e| print_failure(e, &args.knobs.output))?;
        print_report("rolled back", &report, &args.knobs.output)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The whole plan, in order, with the reason for each level.
fn plan_text(inv: &Inventory) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let skipped = inv.skipped_by_restore();
    let detach = inv.detach_plan();
    let restore = inv.restore_plan();
    let mut out = String::new();
    writeln!(out, "archive {} ({} objects)", inv.archive_id(), inv.len())?;
    writeln!(
        out,
        "\ndetach in the member (top-down, propagationPolicy=Orphan):"
    )?;
    for (i, level) in detach.levels.iter().enumerate() {
        writeln!(
            out,
            "  {}. height {}: {}",
            i + 1,
            level.height,
            join(level.objects.iter())
        )?;
    }
    writeln!(out, "\nmark pods kosmos-io/pod=true in the member")?;
    writeln!(out, "\nrestore into the control plane (bottom-up):")?;
    for (i, level) in restore.levels.iter().enumerate() {
        // The objects outside the inventory's graph are read from the archive's index.
        let mut streamed = Vec::new();
        for (group, resource, _) in inv.outside_in(level) {
            let mut scan = inv.rest(move |k| k.is(group, resource), Bodies::No)?;
            while let Some(batch) = scan.next_batch(1024)? {
                streamed.extend(batch.into_iter().map(|a| a.record.key));
            }
        }
        writeln!(
            out,
            "  {}. {}\n     {}",
            i + 1,
            level.reason(),
            join(level.objects.iter().chain(&streamed))
        )?;
    }
    if !skipped.is_empty() {
        writeln!(out, "\nnot restored: {}", join(skipped.iter()))?;
    }
    Ok(out)
}

fn join<'a>(keys: impl Iterator<Item = &'a kpromote_model::object_key::ObjectKey>) -> String {
    keys.map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn progress_printer() -> ProgressFn {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    Arc::new(move |step: &str, done: u64, total: u64| {
        if terminal {
            eprint!("\r{step}: {done}/{total}   ");
            if done == total {
                eprintln!();
            }
        } else {
            tracing::info!(step, done, total, "progress");
        }
    })
}

/// Prints what a failed run leaves the user to know — every failure of the level that failed
/// (a bounded list and the count) and the report of the automatic rollback — as JSON on stdout
/// with `-o json`, as the report's lines otherwise; then hands the error on.
fn print_failure(error: kpromote_core::engine::EngineError, output: &str) -> anyhow::Error {
    let (failures, failed) = error.failures();
    if output == "json" {
        let document = serde_json::json!({
            "error": error.to_string(),
            "failures": failures,
            "failed": failed,
            "rollback": error.rollback_report(),
        });
        if let Ok(text) = serde_json::to_string_pretty(&document) {
            println!("{text}");
        }
    } else if let Some(report) = error.rollback_report() {
        // The error names the failure; the rollback's report says what it did and discarded.
        let _ = print_report("automatic rollback", report, output);
    }
    error.into()
}

fn print_report(verb: &str, report: &Report, output: &str) -> anyhow::Result<()> {
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let line = |label: &str, items: &[String]| {
        if !items.is_empty() {
            println!("{label} ({}): {}", items.len(), items.join(", "));
        }
    };
    let tally = |label: &str, tally: &Tally| {
        if tally.is_empty() {
            return;
        }
        let names = tally.names().collect::<Vec<_>>().join(", ");
        let more = tally.len().saturating_sub(Tally::SAMPLE as u64);
        if more == 0 {
            println!("{label} ({}): {names}", tally.len());
        } else {
            println!(
                "{label} ({}): {names}, and {more} more (the journal beside the archive lists each)",
                tally.len()
            );
        }
    };
    println!("{verb}");
    tally("detached", &report.detached);
    tally("marked", &report.marked);
    tally("created", &report.created);
    tally("already there, left as they were", &report.existed);
    tally("merged", &report.merged);
    tally("adopted", &report.adopted);
    tally("unmarked", &report.unmarked);
    tally("removed from the control plane", &report.deleted);
    for (key, reason) in &report.skipped {
        println!("skipped {key}: {reason}");
    }
    line(
        "discarded (changed in the control plane since promote)",
        &report.discarded,
    );
    if report.retried_calls > 0 {
        println!(
            "retried {} API calls that failed transiently (throttling, server errors, dropped connections)",
            report.retried_calls
        );
    }
    for step in &report.retried_steps {
        println!("ran the steps again from the journal, {step}");
    }
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
    for damaged in &report.unreadable {
        println!("error: {damaged}");
    }
    Ok(())
}
