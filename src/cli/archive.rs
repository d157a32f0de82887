//! `kpromote inspect | show | verify | diff`: offline archive inspection on any machine, with no
//! cluster. They read kpromote archives (`.tar.zst`, `.tar.gz`) and plain Velero 1.x tarballs.
//!
//! # JSON output (`-o json`)
//!
//! Every command prints one JSON document on stdout; field names are camelCase; paths are entry
//! paths inside the archive (`resources/pods/namespaces/ns/name.json`). Problems and errors are
//! objects `{"entry": "...", "code": "digest_mismatch", "message": "..."}`, where `code` is
//! stable (see `ArchiveError::code`).
//!
//! ## `inspect -o json`
//! ```json
//! {"archive": "backup.tar.zst", "kind": "kpromote", "codec": "zstd", "fileBytes": 2915,
//!  "anchored": true, "manifestSha256": "…", "warnings": [],
//!  "manifest": { …kpromote/manifest.json as in format-spec/v1.md §5… },
//!  "summary": {"objects": 5, "objectBytes": 4321, "byResource": {"pods": {"objects": 1, "bytes": 900}},
//!              "byNamespace": {"": {…}, "nginx-test": {…}}}}
//! ```
//! `kind` is `kpromote` or `velero`; for Velero tarballs `manifest` and `manifestSha256` are
//! `null` and `anchored` is `false`.
//!
//! ## `inspect --list -o json`
//! ```json
//! {"archive": "backup.tar.zst", "objects": [ {…index record, format-spec/v1.md §6…}, … ]}
//! ```
//! Records are streamed in path order, filtered by `--namespace` / `--resource`.
//!
//! ## `show -o json`
//! The object itself, pretty-printed, exactly as archived (`-o yaml`, the default, prints it as
//! YAML) — except a Secret's values: each value of `data` and `stringData`, and the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation (which repeats them), is
//! replaced by `<masked: N bytes>`, so a terminal, a scrollback or a pasted bug report does not
//! carry credentials. `--reveal-secrets` prints them.
//!
//! ## `verify -o json`
//! ```json
//! {"archive": "backup.tar.zst", "status": "verified", "kind": "kpromote", "codec": "zstd",
//!  "anchored": true, "entriesChecked": 6, "problems": [], "problemsOmitted": 0, "warnings": []}
//! ```
//! `status` is `verified` (exit 0), `problems` (exit 1; every bad entry listed) or
//! `unverifiable` (exit 3: a Velero tarball, or an archive whose locator is missing, read
//! without finding a problem). An archive that cannot be opened at all is `problems` with one
//! entry.
//!
//! ## `diff -o json`
//! ```json
//! {"a": "old.tar.zst", "b": "new.tar.zst",
//!  "added": ["resources/…"], "removed": ["resources/…"],
//!  "changed": [{"path": "resources/…", "fields": ["spec.replicas", "metadata.resourceVersion"]}],
//!  "unchanged": 12}
//! ```
//! Exit status as `diff(1)`: 0 identical, 1 different, 2 error.

use anyhow::Context as _;
use kpromote_archive::{
    ArchiveError, ArchiveKind, ArchiveObject, ArchiveReader, IndexRecord, ReaderOptions, VerifyReport, layout,
};
use kpromote_model::{GroupResource, ObjectKey};
use serde_json::{Value, json};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status of `verify` when nothing is wrong but not everything could be verified.
const EXIT_UNVERIFIABLE: u8 = 3;
/// Exit status of `diff` on errors (as `diff(1)`).
const EXIT_DIFF_ERROR: u8 = 2;

/// Text for people, or JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextOrJson {
    /// Human-readable text.
    Text,
    /// One JSON document (shape in the command's documentation).
    Json,
}

/// YAML for people, or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum YamlOrJson {
    /// YAML, like `kubectl get -o yaml`.
    Yaml,
    /// Pretty-printed JSON.
    Json,
}

/// Arguments of `kpromote inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The archive: a kpromote archive (.tar.zst, .tar.gz) or a Velero tarball.
    pub archive: PathBuf,
    /// List the objects (one line each) instead of the summary.
    #[arg(long)]
    pub list: bool,
    /// With --list: only objects of this namespace ("" for cluster-scoped objects).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// With --list: only objects of this resource: `deployments.apps`, `deployments` or `Deployment`.
    #[arg(long, short = 'r')]
    pub resource: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = TextOrJson::Text)]
    pub output: TextOrJson,
}

/// Arguments of `kpromote show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The archive.
    pub archive: PathBuf,
    /// The object: `<resource>/<namespace>/<name>`, `<resource>/<name>` (cluster-scoped), or an
    /// entry path `resources/...json`. The resource may omit its group when unambiguous.
    pub object: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = YamlOrJson::Yaml)]
    pub output: YamlOrJson,
    /// Print a Secret's values instead of `<masked: N bytes>`.
    #[arg(long)]
    pub reveal_secrets: bool,
    /// Opens a sealed Secret (needed only for those).
    #[command(flatten)]
    pub identity: super::keys::Identity,
}

/// Arguments of `kpromote verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The archive, or `-` to read it from standard input.
    pub archive: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = TextOrJson::Text)]
    pub output: TextOrJson,
}

/// Arguments of `kpromote diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The older archive.
    pub a: PathBuf,
    /// The newer archive.
    pub b: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = TextOrJson::Text)]
    pub output: TextOrJson,
    /// Opens sealed Secrets (of either archive) to compare them.
    #[command(flatten)]
    pub identity: super::keys::Identity,
}

/// Opens an archive, turning failures into a message that names the file and what to do.
fn open(path: &Path) -> anyhow::Result<ArchiveReader> {
    kpromote_core::engine::open_archive(path).map_err(|e| explain(path, e))
}

/// Opens an archive whose sealed Secrets are to be read: an identity given is checked now, before
/// anything is read; without one, only a sealed object itself fails (naming what to give).
fn open_unsealed(path: &Path, identity: &super::keys::Identity) -> anyhow::Result<ArchiveReader> {
    let mut reader = open(path)?;
    if identity.given() {
        let identities = identity.load()?;
        reader.unseal_with(&identities).map_err(|e| explain(path, e))?;
    }
    Ok(reader)
}

fn explain(path: &Path, err: ArchiveError) -> anyhow::Error {
    let hint = super::keys::hint(&err).unwrap_or_else(|| match &err {
        ArchiveError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound => {
            "check the path".to_owned()
        }
        ArchiveError::Io { .. } if kpromote_core::storage::ArchiveLocation::is_remote(path) => {
            "check the URL, AWS_ENDPOINT_URL, AWS_REGION and the credentials".to_owned()
        }
        ArchiveError::Io { .. } => "check the file's permissions".to_owned(),
        ArchiveError::UnknownCodec { .. } | ArchiveError::NotAnArchive { .. } => {
            "kpromote reads its own .tar.zst/.tar.gz archives and Velero 1.x tarballs".to_owned()
        }
        ArchiveError::UnsupportedVersion { .. } => "upgrade kpromote to read this archive".to_owned(),
        _ => format!("run `kpromote verify {}` to list every problem", path.display()),
    });
    anyhow::Error::new(err).context(format!("cannot read archive {} ({hint})", path.display()))
}

/// Runs `kpromote inspect`.
///
/// # Errors
/// The archive cannot be read; stdout fails.
pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let reader = open(&args.archive)?;
    if args.list {
        return list(&reader, &args);
    }
    let file_bytes = reader.byte_len();
    match args.output {
        TextOrJson::Json => {
            let doc = json!({
                "archive": args.archive.display().to_string(),
                "kind": kind_name(reader.kind()),
                "codec": reader.codec().name(),
                "fileBytes": file_bytes,
                "anchored": reader.is_anchored(),
                "manifestSha256": reader.manifest_sha256(),
                "warnings": reader.warnings(),
                "manifest": reader.manifest(),
                "summary": reader.summary(),
            });
            print_json(&doc)
        }
        TextOrJson::Text => {
            let mut out = String::new();
            summary_text(&reader, &args.archive, file_bytes, &mut out);
            for warning in reader.warnings() {
                eprintln!("warning: {warning}");
            }
            print_str(&out)
        }
    }
}

fn kind_name(kind: ArchiveKind) -> &'static str {
    match kind {
        ArchiveKind::Kpromote => "kpromote",
        ArchiveKind::Velero => "velero",
    }
}

fn summary_text(reader: &ArchiveReader, path: &Path, file_bytes: u64, out: &mut String) {
    use std::fmt::Write as _;
    let summary = reader.summary();
    let _ = writeln!(out, "Archive:      {}", path.display());
    match reader.manifest() {
        Some(m) => {
            let anchor = if reader.is_anchored() { "" } else { ", no locator" };
            let _ = writeln!(
                out,
                "Format:       kpromote {} ({} level {}{anchor})",
                m.format_version, m.codec.name, m.codec.level
            );
            let _ = writeln!(
                out,
                "Written by:   {} {} at {}",
                m.tool.name, m.tool.version, m.facts.created_at
            );
            let _ = writeln!(
                out,
                "Source:       {} (Kubernetes {})",
                m.facts.source.name, m.facts.source.server_version
            );
            let _ = writeln!(out, "Policy:       {}", m.facts.policy.name);
            if let Some(e) = &m.encryption {
                let _ = writeln!(
                    out,
                    "Encrypted:    {} ({}), to {}",
                    e.resources.join(", "),
                    e.scheme,
                    e.recipients.join(", ")
                );
            }
            let _ = writeln!(
                out,
                "Namespaces:   {}",
                list_or_none(&m.facts.policy.included_namespaces)
            );
            let _ = writeln!(
                out,
                "Excluded:     {}",
                list_or_none(&m.facts.policy.excluded_resources)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Format:       Velero tarball ({}; no manifest, unverified)",
                reader.codec()
            );
        }
    }
    let _ = writeln!(
        out,
        "Objects:      {} ({} of JSON; file {})",
        summary.objects,
        human(summary.object_bytes),
        human(file_bytes)
    );
    if let Some(sha) = reader.manifest_sha256() {
        let _ = writeln!(out, "Manifest:     sha256:{sha}");
    }
    let width = column_width(summary.by_resource.keys());
    let _ = writeln!(out, "\n{:<width$}  {:>7}  {:>10}", "RESOURCE", "OBJECTS", "BYTES");
    for (gr, tally) in &summary.by_resource {
        let _ = writeln!(
            out,
            "{gr:<width$}  {:>7}  {:>10}",
            tally.objects,
            human(tally.bytes)
        );
    }
    let width = column_width(summary.by_namespace.keys());
    let _ = writeln!(
        out,
        "\n{:<width$}  {:>7}  {:>10}",
        "NAMESPACE", "OBJECTS", "BYTES"
    );
    for (ns, tally) in &summary.by_namespace {
        let ns = if ns.is_empty() { "(cluster)" } else { ns };
        let _ = writeln!(
            out,
            "{ns:<width$}  {:>7}  {:>10}",
            tally.objects,
            human(tally.bytes)
        );
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

/// `1.2 KiB`-style sizes.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whether a record passes the `--namespace` / `--resource` filters.
fn selected(record: &IndexRecord, namespace: Option<&str>, resource: Option<&str>) -> bool {
    let ns_ok = namespace.is_none_or(|ns| record.namespace.as_deref().unwrap_or("") == ns);
    let res_ok = resource.is_none_or(|r| {
        record.group_resource() == r || record.resource == r || record.kind.eq_ignore_ascii_case(r)
    });
    ns_ok && res_ok
}

fn list(reader: &ArchiveReader, args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let records = reader.records().map_err(|e| explain(&args.archive, e))?;
    let (ns, res) = (args.namespace.as_deref(), args.resource.as_deref());
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut failure: Option<ArchiveError> = None;
    let mut selected_records = records
        .map_while(|r| r.map_err(|e| failure = Some(e)).ok())
        .filter(|r| selected(r, ns, res));
    let result: io::Result<()> = (|| {
        match args.output {
            TextOrJson::Json => {
                write!(
                    out,
                    "{{\"archive\":{},\"objects\":[",
                    Value::from(args.archive.display().to_string())
                )?;
                for (i, record) in selected_records.by_ref().enumerate() {
                    if i > 0 {
                        out.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut out, &record).map_err(io::Error::other)?;
                }
                writeln!(out, "]}}")?;
            }
            TextOrJson::Text => {
                writeln!(
                    out,
                    "{:<32} {:<20} {:<40} {:<16} {:>10}  {:<12}  INCLUSION",
                    "RESOURCE", "NAMESPACE", "NAME", "KIND", "BYTES", "SHA256"
                )?;
                for record in selected_records.by_ref() {
                    writeln!(
                        out,
                        "{:<32} {:<20} {:<40} {:<16} {:>10}  {:<12}  {}",
                        record.group_resource(),
                        record.namespace.as_deref().unwrap_or("-"),
                        record.name,
                        record.kind,
                        record.size,
                        &record.sha256[..12],
                        inclusion_text(&record.inclusion)
                    )?;
                }
            }
        }
        out.flush()
    })();
    drop(selected_records);
    if let Some(e) = failure {
        return Err(explain(&args.archive, e));
    }
    finish_output(result)
}

fn inclusion_text(inclusion: &kpromote_archive::Inclusion) -> String {
    match inclusion {
        kpromote_archive::Inclusion::Namespaced => "namespaced".to_owned(),
        kpromote_archive::Inclusion::Namespace => "namespace".to_owned(),
        kpromote_archive::Inclusion::Dependency { of, via } => format!("dependency of {of} via {via}"),
        kpromote_archive::Inclusion::Unrecorded => "unrecorded".to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// Maps a stdout result: a closed pipe (`| head`) is success.
fn finish_output(result: io::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// Runs `kpromote show`.
///
/// # Errors
/// The archive cannot be read, or the object is not in it.
pub fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let reader = open_unsealed(&args.archive, &args.identity)?;
    let path = resolve_object(&reader, &args.object)?;
    let object = reader.get(&path).map_err(|e| match e {
        ArchiveError::NotFound { .. } => anyhow::anyhow!(
            "{} has no object {path} (from {:?}); list them with `kpromote inspect --list {}`",
            args.archive.display(),
            args.object,
            args.archive.display()
        ),
        other => explain(&args.archive, other),
    })?;
    let mut value = object.value().map_err(|e| explain(&args.archive, e))?;
    if !args.reveal_secrets && mask_secret_values(&mut value) {
        eprintln!("note: the Secret's values are masked; --reveal-secrets prints them");
    }
    let text = match args.output {
        YamlOrJson::Json => format!("{}\n", serde_json::to_string_pretty(&value)?),
        YamlOrJson::Yaml => serde_saphyr::to_string(&value).context("rendering YAML")?,
    };
    print_str(&text)
}

/// Annotation in which `kubectl apply` keeps the object it applied, a Secret's values included.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Replaces every value of a core `Secret`'s `data` and `stringData` (and its last-applied
/// annotation) with its size. Returns whether `object` is such a Secret.
fn mask_secret_values(object: &mut Value) -> bool {
    let is_secret = object.get("kind").and_then(Value::as_str) == Some("Secret")
        && object.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if !is_secret {
        return false;
    }
    for (field, base64) in [("data", true), ("stringData", false)] {
        if let Some(Value::Object(map)) = object.get_mut(field) {
            for value in map.values_mut() {
                let text = value.as_str().unwrap_or_default();
                let bytes = if base64 {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_or(text.len(), |b| b.len())
                } else {
                    text.len()
                };
                *value = Value::String(format!("<masked: {bytes} bytes>"));
            }
        }
    }
    if let Some(Value::String(applied)) = object.pointer_mut(&format!(
        "/metadata/annotations/{}",
        LAST_APPLIED.replace('/', "~1")
    )) {
        *applied = format!("<masked: {} bytes>", applied.len());
    }
    true
}

/// Turns `pods/ns/name`, `clusterroles/name` or an entry path into an entry path.
fn resolve_object(reader: &ArchiveReader, spec: &str) -> anyhow::Result<String> {
    if spec.starts_with("resources/") {
        return Ok(spec.to_owned());
    }
    let key: ObjectKey = spec.parse().map_err(|e| {
        anyhow::anyhow!(
            "{spec:?} does not name an object as <resource>/<namespace>/<name> or <resource>/<name> \
             (e.g. deployments.apps/nginx-test/nginx): {e}"
        )
    })?;
    let by_resource = &reader.summary().by_resource;
    let key = if !key.group.is_empty() || by_resource.contains_key(&key.resource) {
        key
    } else {
        // `deployments` → the one group-resource of the archive named `deployments.<group>`.
        let candidates: Vec<GroupResource> = by_resource
            .keys()
            .filter_map(|gr| gr.parse::<GroupResource>().ok())
            .filter(|gr| gr.resource() == key.resource)
            .collect();
        match candidates.as_slice() {
            [one] => ObjectKey::typed(one, key.namespace.as_deref(), &key.name),
            [] => key,
            many => anyhow::bail!(
                "{:?} is ambiguous in this archive: {}; name the group",
                key.resource,
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    };
    layout::object_path(&key).map_err(|e| anyhow::anyhow!("{spec:?} does not name a Kubernetes object: {e}"))
}

/// Runs `kpromote verify`.
///
/// # Errors
/// Only when stdout fails; archive problems are the report.
pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let report = if args.archive.as_os_str() == "-" {
        kpromote_archive::verify_stream(io::stdin().lock(), &ReaderOptions::default())
    } else {
        kpromote_core::engine::open_archive(&args.archive).map(|reader| reader.verify())
    };
    let name = args.archive.display().to_string();
    let (status, code) = match &report {
        Ok(r) if r.is_fully_verified() => ("verified", ExitCode::SUCCESS),
        Ok(r) if r.is_ok() => ("unverifiable", ExitCode::from(EXIT_UNVERIFIABLE)),
        _ => ("problems", ExitCode::FAILURE),
    };
    match args.output {
        TextOrJson::Json => {
            let doc = match &report {
                Ok(r) => verify_json(&name, status, r),
                Err(e) => json!({
                    "archive": name, "status": status, "kind": null, "codec": null, "anchored": false,
                    "entriesChecked": 0, "problems": [problem_json(e)], "problemsOmitted": 0, "warnings": [],
                }),
            };
            print_json(&doc)?;
        }
        TextOrJson::Text => {
            let text = match &report {
                Ok(r) => verify_text(&name, status, r),
                Err(e) => format!("BAD: {name} cannot be read:\n  {e}\n",),
            };
            print_str(&text)?;
        }
    }
    Ok(code)
}

fn problem_json(e: &ArchiveError) -> Value {
    json!({"entry": e.entry(), "code": e.code(), "message": e.to_string()})
}

fn verify_json(name: &str, status: &str, r: &VerifyReport) -> Value {
    json!({
        "archive": name,
        "status": status,
        "kind": kind_name(r.kind),
        "codec": r.codec.name(),
        "anchored": r.anchored,
        "entriesChecked": r.entries_checked,
        "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
        "problemsOmitted": r.problems_omitted,
        "warnings": r.warnings,
    })
}

fn verify_text(name: &str, status: &str, r: &VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match status {
        "verified" => {
            let _ = writeln!(
                out,
                "OK: {name}: {} entries verified; locator, manifest, index and entries agree",
                r.entries_checked
            );
        }
        "unverifiable" => {
            let _ = writeln!(
                out,
                "UNVERIFIED: {name}: {} entries read, no problem found, but not everything could be verified:",
                r.entries_checked
            );
        }
        _ => {
            let total = r.problems.len() as u64 + r.problems_omitted;
            let _ = writeln!(
                out,
                "BAD: {name}: {total} problem(s); {} entries verified",
                r.entries_checked
            );
            for p in &r.problems {
                let _ = writeln!(out, "  {p}");
            }
            if r.problems_omitted > 0 {
                let _ = writeln!(out, "  … and {} more", r.problems_omitted);
            }
        }
    }
    for w in &r.warnings {
        let _ = writeln!(out, "  note: {w}");
    }
    out
}

/// Runs `kpromote diff`.
///
/// # Errors
/// Either archive cannot be read.
pub fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let result = diff_inner(&args);
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(EXIT_DIFF_ERROR))
        }
    }
}

fn diff_inner(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let (ra, rb) = (
        open_unsealed(&args.a, &args.identity)?,
        open_unsealed(&args.b, &args.identity)?,
    );
    let mut a = ra.objects().map_err(|e| explain(&args.a, e))?;
    let mut b = rb.objects().map_err(|e| explain(&args.b, e))?;
    let next = |it: &mut kpromote_archive::Objects, path: &Path| -> anyhow::Result<Option<ArchiveObject>> {
        it.next().transpose().map_err(|e| explain(path, e))
    };
    let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    let mut unchanged = 0u64;
    let (mut x, mut y) = (next(&mut a, &args.a)?, next(&mut b, &args.b)?);
    loop {
        match (&x, &y) {
            (None, None) => break,
            (Some(oa), Some(ob)) if oa.record.path == ob.record.path => {
                if oa.json == ob.json {
                    unchanged += 1;
                } else {
                    let fields = match (oa.value(), ob.value()) {
                        (Ok(va), Ok(vb)) => {
                            let mut fields = Vec::new();
                            changed_fields(&va, &vb, "", 0, &mut fields);
                            fields
                        }
                        _ => vec!["(not JSON)".to_owned()],
                    };
                    changed.push((oa.record.path.clone(), fields));
                }
                x = next(&mut a, &args.a)?;
                y = next(&mut b, &args.b)?;
            }
            (Some(oa), Some(ob)) if oa.record.path < ob.record.path => {
                removed.push(oa.record.path.clone());
                x = next(&mut a, &args.a)?;
            }
            (Some(oa), None) => {
                removed.push(oa.record.path.clone());
                x = next(&mut a, &args.a)?;
            }
            (_, Some(ob)) => {
                added.push(ob.record.path.clone());
                y = next(&mut b, &args.b)?;
            }
        }
    }
    let differs = !(added.is_empty() && removed.is_empty() && changed.is_empty());
    match args.output {
        TextOrJson::Json => print_json(&json!({
            "a": args.a.display().to_string(),
            "b": args.b.display().to_string(),
            "added": added,
            "removed": removed,
            "changed": changed.iter().map(|(p, f)| json!({"path": p, "fields": f})).collect::<Vec<_>>(),
            "unchanged": unchanged,
        }))
        .map(drop)?,
        TextOrJson::Text => {
            use std::fmt::Write as _;
            let mut out = String::new();
            for p in &removed {
                let _ = writeln!(out, "- {p}");
            }
            for p in &added {
                let _ = writeln!(out, "+ {p}");
            }
            for (p, fields) in &changed {
                let _ = writeln!(out, "~ {p}  ({})", fields.join(", "));
            }
            let _ = writeln!(
                out,
                "{} added, {} removed, {} changed, {unchanged} unchanged",
                added.len(),
                removed.len(),
                changed.len()
            );
            print_str(&out)?;
        }
    }
    Ok(if differs {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Dotted paths (up to three levels deep) where two JSON values differ.
fn changed_fields(a: &Value, b: &Value, prefix: &str, depth: usize, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) if depth < 3 => {
            let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (ma.get(key), mb.get(key)) {
                    (Some(va), Some(vb)) if va == vb => {}
                    (Some(va), Some(vb)) => changed_fields(va, vb, &path, depth + 1, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(if prefix.is_empty() {
            "(root)".to_owned()
        } else {
            prefix.to_owned()
        }),
        _ => {}
    }
}

fn print_json(value: &Value) -> anyhow::Result<ExitCode> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print_str(&text)
}

pub(super) fn print_str(text: &str) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    finish_output(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// The width of a column of `names` under a header of up to 9 characters.
fn column_width<'a>(names: impl Iterator<Item = &'a String>) -> usize {
    names.map(String::len).max().unwrap_or(0).max(9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_values_are_masked_and_other_objects_untouched() {
        let mut secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "s", "annotations": { LAST_APPLIED: "{\"data\":{\"k\":\"c2VjcmV0\"}}" } },
            "data": { "k": "c2VjcmV0" }, "stringData": { "s": "plain" },
        });
        assert!(mask_secret_values(&mut secret));
        assert_eq!(secret["data"]["k"], "<masked: 6 bytes>");
        assert_eq!(secret["stringData"]["s"], "<masked: 5 bytes>");
        let text = secret.to_string();
        assert!(!text.contains("c2VjcmV0") && !text.contains("plain"), "{text}");
        let mut configmap = json!({ "apiVersion": "v1", "kind": "ConfigMap", "data": { "k": "v" } });
        assert!(!mask_secret_values(&mut configmap));
        assert_eq!(configmap["data"]["k"], "v");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 20), "5.0 MiB");
    }

    #[test]
    fn changed_fields_are_dotted_paths() {
        let a = json!({"metadata": {"name": "x", "resourceVersion": "1"}, "spec": {"replicas": 1}});
        let b =
            json!({"metadata": {"name": "x", "resourceVersion": "2"}, "spec": {"replicas": 3}, "status": {}});
        let mut fields = Vec::new();
        changed_fields(&a, &b, "", 0, &mut fields);
        assert_eq!(fields, ["metadata.resourceVersion", "spec.replicas", "status"]);
    }
}
