//! `kpromote backup`: namespaces of a cluster and their cluster-scoped dependencies into an
//! archive (or, with `--dry-run`, what would go in it).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kpromote_archive::{Codec, WriterOptions};
use kpromote_core::access::ClusterClient;
use kpromote_core::backup::{self, BackupProgress, BackupRequest, Collected, DEFAULT_BACKUP_DIR};
use kpromote_core::storage::BackupLocation;

/// Arguments of `kpromote backup`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --exclude, the design's list is excluded: events, events.events.k8s.io, \
                  endpoints, endpointslices.discovery.k8s.io.\n\nExamples:\n  kpromote backup -n shop -n \
                  shop-db --backup-dir ./backups\n  kpromote backup -n shop --dry-run -o json"
)]
pub struct Args {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// A namespace to back up; repeat for several.
    #[arg(short = 'n', long = "namespace", value_name = "NAMESPACE", required = true)]
    namespaces: Vec<String>,
    /// A namespaced resource type to leave out (`events`, `ep`, `endpointslices.discovery.k8s.io`);
    /// repeat for several. Replaces the default list.
    #[arg(long = "exclude", value_name = "TYPE", conflicts_with = "no_exclude")]
    exclude: Vec<String>,
    /// Exclude nothing, not even the default list.
    #[arg(long)]
    no_exclude: bool,
    /// Directory of the archive (the backup volume; `promote` and `controller` name it alike).
    // `--output-dir`, its former name, stays as a hidden alias for existing scripts and Jobs.
    #[arg(long, alias = "output-dir", value_name = "DIR", default_value = DEFAULT_BACKUP_DIR)]
    backup_dir: PathBuf,
    /// Where the archive goes instead of --backup-dir: a directory or `s3://BUCKET/PREFIX`
    /// (configured by AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY;
    /// path-style requests when AWS_ENDPOINT_URL is set, unless AWS_S3_FORCE_PATH_STYLE=false).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX", conflicts_with = "backup_dir")]
    backup_location: Option<String>,
    /// File name of the archive (default: <policy-name><YYYYMMDD-HHMMSS>.tar.zst, UTC).
    #[arg(long, value_name = "FILE")]
    name: Option<String>,
    /// Policy name recorded in the archive and starting its default file name.
    #[arg(long, value_name = "NAME", default_value = "backup")]
    policy_name: String,
    /// Name of the member cluster, recorded in the archive.
    #[arg(long, value_name = "NAME", default_value = "member")]
    cluster_name: String,
    /// Compression codec.
    #[arg(long, value_enum, default_value_t = CodecArg::Zstd)]
    codec: CodecArg,
    /// Compression level (zstd 1..=19, default 3; gzip 0..=9, default 6).
    #[arg(long)]
    level: Option<i32>,
    /// Compression threads.
    #[arg(long, default_value_t = 1, value_name = "N")]
    compression_threads: u32,
    /// Resource types listed at once.
    #[arg(long, default_value_t = backup::DEFAULT_CONCURRENCY, value_name = "N")]
    concurrency: usize,
    /// Objects per list page.
    #[arg(long, default_value_t = backup::DEFAULT_PAGE_SIZE, value_name = "N")]
    page_size: u32,
    /// Read everything and print what would be collected; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format of the summary.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    encrypt_to: super::keys::EncryptTo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CodecArg {
    Zstd,
    Gzip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Runs `kpromote backup`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let recipients = args.encrypt_to.recipients()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let member =
            ClusterClient::connect("member", args.kubeconfig.as_deref(), args.context.as_deref()).await?;
        let mut options = WriterOptions::zstd()
            .codec(match args.codec {
                CodecArg::Zstd => Codec::Zstd,
                CodecArg::Gzip => Codec::Gzip,
            })
            .workers(args.compression_threads)
            .encrypt_to(recipients);
        if let Some(level) = args.level {
            options = options.level(level);
        }
        let location = match &args.backup_location {
            Some(location) => BackupLocation::parse(location)?,
            None => BackupLocation::Dir(args.backup_dir.clone()),
        };
        let mut request = BackupRequest::new(args.policy_name.clone(), args.namespaces.clone())
            .location(location)
            .cluster_name(args.cluster_name.clone())
            .archive_options(options)
            .concurrency(args.concurrency)
            .page_size(args.page_size);
        if args.no_exclude {
            request = request.excluded(Vec::<String>::new());
        } else if !args.exclude.is_empty() {
            request = request.excluded(args.exclude.clone());
        }
        if let Some(name) = &args.name {
            request = request.file_name(name.clone());
        }
        let display = Display::new(args.output);
        request = request.progress(display.callback());
        if args.dry_run {
            let plan = backup::plan(&member.client, &request).await;
            display.finish();
            let plan = plan.map_err(|e| anyhow::anyhow!("dry run failed: {}", chain(&e)))?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
                Output::Text => {
                    println!(
                        "dry run: nothing written; the archive would be {}",
                        plan.path.display()
                    );
                    print_collected(&plan.collected);
                }
            }
        } else {
            let report = backup::run(&member.client, &request).await;
            display.finish();
            let report = report.map_err(|e| anyhow::anyhow!("backup failed: {}", chain(&e)))?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Text => {
                    println!(
                        "archive {} ({} objects, {})",
                        report.path.display(),
                        report.collected.total_objects(),
                        super::archive::human(report.archive_bytes)
                    );
                    print_collected(&report.collected);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Progress: a spinner with counts on a terminal (and text output), log lines otherwise.
struct Display {
    bar: Option<indicatif::ProgressBar>,
}

impl Display {
    fn new(output: Output) -> Self {
        let on_terminal = std::io::stderr().is_terminal() && output == Output::Text;
        let bar = on_terminal.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message("discovering the cluster's API");
            bar
        });
        Self { bar }
    }

    fn callback(&self) -> backup::BackupProgressFn {
        let bar = self.bar.clone();
        let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Arc::new(move |event: &BackupProgress| match (&bar, event) {
            (_, BackupProgress::Planned { lists: n }) => {
                lists.store(*n, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(lists = n, "reading");
            }
            (Some(bar), BackupProgress::Object { total }) if total % 64 == 0 => {
                let n = lists.load(std::sync::atomic::Ordering::Relaxed);
                bar.set_message(format!("{total} objects read ({n} lists)"));
            }
            (Some(bar), BackupProgress::Listed { done, .. }) => {
                let n = lists.load(std::sync::atomic::Ordering::Relaxed);
                bar.set_message(format!("{done}/{n} lists read"));
            }
            (
                None,
                BackupProgress::Listed {
                    resource,
                    namespace,
                    objects,
                    done,
                },
            ) => {
                let namespace = namespace.as_deref().unwrap_or("");
                if *objects > 0 {
                    tracing::info!(resource = %resource, namespace, objects, done, "list read");
                } else {
                    tracing::debug!(resource = %resource, namespace, done, "list read, empty");
                }
            }
            (Some(bar), BackupProgress::Dependencies { done, known }) => {
                bar.set_message(format!("{done}/{known} cluster-scoped dependencies"));
            }
            (None, BackupProgress::Writing) => tracing::info!("sorting, compressing and writing the archive"),
            (Some(bar), BackupProgress::Writing) => bar.set_message("sorting, compressing and writing"),
            _ => {}
        })
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_collected(c: &Collected) {
    println!("namespaces: {}", c.namespaces.join(", "));
    let excluded: Vec<String> = c.excluded.iter().map(ToString::to_string).collect();
    println!(
        "excluded types: {}",
        if excluded.is_empty() {
            "none".to_owned()
        } else {
            excluded.join(", ")
        }
    );
    println!(
        "objects: {} namespaced in {} types, {} cluster-scoped dependencies",
        c.namespaced_objects(),
        c.objects.len(),
        c.dependencies_present()
    );
    let width = c.objects.keys().map(|k| k.to_string().len()).max().unwrap_or(0);
    for (resource, count) in &c.objects {
        println!("  {:<width$}  {count:>6}", resource.to_string());
    }
    println!("dependencies:");
    for d in &c.dependencies {
        let state = match (d.present, d.may_be_absent) {
            (true, _) => "",
            (false, true) => " (absent; allowed)",
            (false, false) => " (MISSING)",
        };
        println!("  {}{state}\n      why: {}", d.target, d.reason);
    }
    if !c.skipped.is_empty() {
        println!("skipped:");
        for s in &c.skipped {
            println!("  {s}");
        }
    }
    if !c.warnings.is_empty() {
        println!("warnings:");
        for w in &c.warnings {
            println!("  {w}");
        }
    }
}

/// The error and its causes, each once: a cause whose text already ends the message before it
/// (an I/O error quoted by the error wrapping it) is not repeated.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}
