//! Reads the included namespaces of a member cluster, and the cluster-scoped objects they depend
//! on, into an archive.
//!
//! - [`run`] writes an archive and returns a [`BackupReport`]; [`plan`] (`--dry-run`) reads the
//!   same things and returns what would be written, writing nothing.
//! - [`BackupRequest`]: namespaces, exclusions (the design's list by default), backup directory
//!   (`/data/backup`), file name (`<policyName><YYYYMMDD-HHMMSS>.tar.zst`), codec, progress.
//! - [`dependencies`]: which cluster-scoped objects a namespaced object pulls in, and why.
//! - [`trusted`]: whether a file in the backup directory is one kpromote wrote.
//! - [`lister`]: lists one resource type page by page as a stream, surviving continue token
//!   expiry.
//!
//! # What is collected
//! Every namespaced type the server serves with `list`, `get`, `create` and `delete`, in each
//! included namespace, minus the excluded types; a type served by two groups (core `events` and
//! `events.events.k8s.io`) is stored once ([`ApiSurface::backup_types`](crate::resources::ApiSurface::backup_types)). Then the cluster-scoped
//! objects those objects really reference, found by the [`dependencies`] rules: the Namespace
//! objects, PersistentVolumes of bound claims and their StorageClasses, PriorityClasses,
//! RuntimeClasses, IngressClasses in use, the ClusterRoles of RoleBindings, the
//! ClusterRoleBindings whose subjects are accounts of an included namespace (and their
//! ClusterRoles), and the CRDs of custom resources. Each is recorded in the archive index with
//! the object that pulled it in ([`Inclusion::Dependency`]).
//!
//! Left out and reported: objects being deleted (a `deletionTimestamp`), and dependencies that
//! do not exist (a warning when an object requires them, a note when they may be absent).
//!
//! # How it reads
//! 1. Discovery, exclusion names resolved (an unknown name is an error), namespaces checked.
//! 2. Every list (type × namespace, plus the cluster-wide ClusterRoleBinding list) is **opened**
//!    with a first page of one object: all snapshots are taken within moments of each other, and
//!    their resourceVersions go into the archive's facts (`listResourceVersions`, keyed by
//!    [`list_key`]) before the archive is created.
//! 3. The lists are drained [`DEFAULT_CONCURRENCY`] at a time, in pages of
//!    [`DEFAULT_PAGE_SIZE`], each read one page ahead on its own task. Objects are kept as the
//!    server encoded them ([`lister::RawObject`]); only those whose fields the dependency rules
//!    read ([`dependencies::reads_fields_of`]) are decoded. Each is streamed to the archive writer
//!    thread through a bounded channel ([`CHANNEL_CAPACITY`]); then the dependencies are fetched.
//! 4. The writer sorts with bounded memory, compresses, and renames the finished archive into
//!    place.
//!
//! # Guarantees
//! - Nothing is written before the request, the exclusions and the namespaces are checked.
//! - No file ever exists under the final name unless the backup succeeded; an existing file is
//!   never overwritten.
//! - Memory is bounded by the page size, the writer channel and the writer's sort budget, not by
//!   the number of objects.
//!
//! # Caveats
//! A backup is not a transaction: each list is a consistent snapshot, but the snapshots of
//! different types are taken moments apart (step 2), and dependencies are read after the lists.

mod collect;
pub mod dependencies;
mod error;
pub mod lister;
mod report;
mod request;
pub(crate) mod trusted;
mod write;

pub use error::BackupError;
pub use error::RBAC_MANIFEST;
pub use report::BackupPlan;
pub use report::BackupProgress;
pub use report::BackupReport;
pub use report::BackupWarning;
pub use report::Collected;
pub use report::CollectedDependency;
pub use report::SkipReason;
pub use report::SkippedObject;
pub use report::list_key;
pub use request::BackupProgressFn;
pub use request::BackupRequest;
pub use request::DEFAULT_BACKUP_DIR;
pub use request::DEFAULT_CONCURRENCY;
pub use request::DEFAULT_PAGE_SIZE;

#[cfg(doc)]
use kpromote_archive::Inclusion;

use crate::storage::BackupLocation;
use collect::{DrainError, drain, emit, open_lists, prepare};
use kpromote_archive::{ArchiveFacts, PolicyFacts, SourceCluster};
use write::ArchiveTask;

/// Backs up `request.namespaces` of the cluster behind `client` into a new archive.
///
/// # Errors
/// A [`BackupError`] naming the input at fault and what to do; see its variants. Whatever the
/// error, no file exists under the archive's final name afterwards.
pub async fn run(client: &kube::Client, request: &BackupRequest) -> Result<BackupReport, BackupError> {
    let started = std::time::Instant::now();
    let prepared = prepare(client, request).await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis(),
        "discovery and checks done"
    );
    let created_at = created_at(request);
    let target = request.archive_at(created_at);
    if let BackupLocation::Dir(dir) = &request.location {
        request::check_backup_dir(dir)?;
        let path = target.to_path_buf();
        if path.exists() {
            return Err(BackupError::AlreadyExists { path });
        }
    }
    let open = open_lists(client, &prepared, request).await?;
    let facts = ArchiveFacts {
        created_at: created_at.to_string(),
        source: SourceCluster {
            name: request.cluster_name.clone(),
            server_version: prepared.server_version.clone(),
        },
        policy: PolicyFacts {
            name: request.policy_name.clone(),
            included_namespaces: prepared.namespaces.clone(),
            excluded_resources: request.excluded_names(),
        },
        list_resource_versions: open.resource_versions.clone(),
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis(),
        lists = open.lists.len(),
        "lists opened"
    );
    let task = ArchiveTask::start(&target, facts, request.archive.clone()).await?;
    let collected = match drain(client, &prepared, open, request, task.sender()).await {
        Ok(collected) => collected,
        Err(DrainError::Backup(err)) => {
            task.abort().await;
            return Err(err);
        }
        Err(DrainError::SinkClosed) => return Err(task.failure().await),
    };
    tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "everything read");
    emit(request, BackupProgress::Writing);
    let written = task.commit().await?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "archive written");
    tracing::info!(path = %written.path.display(), objects = written.objects,
        bytes = written.compressed_bytes, "archive written");
    Ok(BackupReport {
        path: written.path,
        archive_bytes: written.compressed_bytes,
        uncompressed_bytes: written.uncompressed_bytes,
        manifest_sha256: written.manifest_sha256,
        collected,
    })
}

/// What [`run`] would collect, without writing anything (`--dry-run`): the same discovery,
/// checks, lists and dependency reads.
///
/// # Errors
/// As [`run`], except those of writing.
pub async fn plan(client: &kube::Client, request: &BackupRequest) -> Result<BackupPlan, BackupError> {
    let prepared = prepare(client, request).await?;
    let path = request.path_at(created_at(request));
    let open = open_lists(client, &prepared, request).await?;
    match drain(client, &prepared, open, request, None).await {
        Ok(collected) => Ok(BackupPlan { path, collected }),
        Err(DrainError::Backup(err)) => Err(err),
        Err(DrainError::SinkClosed) => Err(BackupError::WriterStopped {
            path,
            detail: "a dry run has no writer".to_owned(),
        }),
    }
}

/// The request's timestamp, or now, to the second (the archive name has seconds).
fn created_at(request: &BackupRequest) -> jiff::Timestamp {
    let at = request.created_at.unwrap_or_else(jiff::Timestamp::now);
    jiff::Timestamp::from_second(at.as_second()).unwrap_or(at)
}
