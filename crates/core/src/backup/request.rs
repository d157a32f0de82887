//! What a backup is asked to do: [`BackupRequest`], its defaults and its checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::resources::DEFAULT_EXCLUDED_RESOURCES;
use crate::storage::{ArchiveLocation, BackupLocation};
use kpromote_archive::WriterOptions;

use super::error::BackupError;
use super::report::BackupProgress;

/// Where archives go when the request names no directory: the mount point of the backup PVC in
/// the design (and in `deploy/backup-job/`).
pub const DEFAULT_BACKUP_DIR: &str = "/data/backup";
/// Resource types listed at once. Each list is mostly waiting on the API server; a handful in
/// flight keeps a server and two client cores busy without crowding out other clients (the API
/// server's priority and fairness treats a backup like any other client).
pub const DEFAULT_CONCURRENCY: usize = 6;
/// Objects per list page. Smaller than `kubectl get`'s 500: each list being drained holds about
/// two pages (the one read ahead and the one being stored), so the page decides most of a
/// backup's memory; with 2 KiB ConfigMaps, pages of 500 made a 20,000-object backup peak 1.28x
/// a 2,000-object one, pages of 200 1.11x, at the same speed (`benches/RESULTS.md`).
pub const DEFAULT_PAGE_SIZE: u32 = 200;
/// The time format of the archive name, after the policy name: `20240311-104907` (UTC).
pub(crate) const FILE_TIME_FORMAT: &str = "%Y%m%d-%H%M%S";

/// Progress callback; called from the backup's tasks, so it must be cheap and thread-safe.
pub type BackupProgressFn = Arc<dyn Fn(&BackupProgress) + Send + Sync>;

/// A backup of namespaces of one cluster into an archive.
///
/// Built with [`BackupRequest::new`] and the `#[must_use]` setters; every other field has the
/// design's default.
#[derive(Clone)]
#[non_exhaustive]
pub struct BackupRequest {
    /// Namespaces to back up (at least one; duplicates are ignored).
    pub namespaces: Vec<String>,
    /// Resource type names to leave out, as a user writes them (`events`, `ep`,
    /// `endpointslices.discovery.k8s.io`); `None` means [`DEFAULT_EXCLUDED_RESOURCES`]. An empty
    /// list excludes nothing.
    pub excluded: Option<Vec<String>>,
    /// Where the archive goes: a directory (default [`DEFAULT_BACKUP_DIR`]; must exist) or a
    /// bucket and prefix in object storage.
    pub location: BackupLocation,
    /// File name of the archive; default `<policyName><YYYYMMDD-HHMMSS><extension>` (UTC).
    pub file_name: Option<String>,
    /// The PromotePolicy (or operator-chosen) name: first part of the default file name, and
    /// recorded in the archive.
    pub policy_name: String,
    /// The member cluster's name (the Kosmos `Cluster` object), recorded in the archive.
    pub cluster_name: String,
    /// Codec, level and compression threads of the archive.
    pub archive: WriterOptions,
    /// Resource types listed at once (default [`DEFAULT_CONCURRENCY`]).
    pub concurrency: usize,
    /// Objects per list page (default [`DEFAULT_PAGE_SIZE`]).
    pub page_size: u32,
    /// The backup's timestamp (default: now); recorded in the archive and used in the default
    /// file name. Fixed by tests and by callers that want reproducible archives.
    pub created_at: Option<jiff::Timestamp>,
    /// Called as the backup progresses.
    pub progress: Option<BackupProgressFn>,
}

impl std::fmt::Debug for BackupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupRequest")
            .field("namespaces", &self.namespaces)
            .field("excluded", &self.excluded)
            .field("location", &self.location)
            .field("file_name", &self.file_name)
            .field("policy_name", &self.policy_name)
            .field("cluster_name", &self.cluster_name)
            .field("archive", &self.archive)
            .field("concurrency", &self.concurrency)
            .field("page_size", &self.page_size)
            .field("created_at", &self.created_at)
            .field("progress", &self.progress.as_ref().map(|_| "callback"))
            .finish()
    }
}

impl BackupRequest {
    /// A backup of `namespaces` for policy `policy_name`, with every default: the design's
    /// exclusions, `/data/backup`, a timestamped name, zstd.
    #[must_use]
    pub fn new<I>(policy_name: impl Into<String>, namespaces: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self {
            namespaces: namespaces.into_iter().map(Into::into).collect(),
            excluded: None,
            location: BackupLocation::Dir(PathBuf::from(DEFAULT_BACKUP_DIR)),
            file_name: None,
            policy_name: policy_name.into(),
            cluster_name: "member".to_owned(),
            archive: WriterOptions::zstd(),
            concurrency: DEFAULT_CONCURRENCY,
            page_size: DEFAULT_PAGE_SIZE,
            created_at: None,
            progress: None,
        }
    }

    /// Excludes these resource types instead of the default list.
    #[must_use]
    pub fn excluded<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.excluded = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Writes into `dir`.
    #[must_use]
    pub fn backup_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.location = BackupLocation::Dir(dir.into());
        self
    }

    /// Writes into `location` (a directory, or a bucket and prefix).
    #[must_use]
    pub fn location(mut self, location: BackupLocation) -> Self {
        self.location = location;
        self
    }

    /// Names the archive file.
    #[must_use]
    pub fn file_name(mut self, name: impl Into<String>) -> Self {
        self.file_name = Some(name.into());
        self
    }

    /// Records the member cluster's name.
    #[must_use]
    pub fn cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = name.into();
        self
    }

    /// Sets the archive's codec options.
    #[must_use]
    pub fn archive_options(mut self, options: WriterOptions) -> Self {
        self.archive = options;
        self
    }

    /// Lists this many resource types at once (at least 1).
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Lists with pages of this many objects (at least 1).
    #[must_use]
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// Fixes the backup's timestamp.
    #[must_use]
    pub fn created_at(mut self, at: jiff::Timestamp) -> Self {
        self.created_at = Some(at);
        self
    }

    /// Reports progress to `progress`.
    #[must_use]
    pub fn progress(mut self, progress: BackupProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The exclusion names in effect: the request's, or the design's default list.
    #[must_use]
    pub(crate) fn excluded_names(&self) -> Vec<String> {
        match &self.excluded {
            Some(names) => names.clone(),
            None => DEFAULT_EXCLUDED_RESOURCES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }

    /// The archive's file name at `at`: the request's, or
    /// `<policyName><YYYYMMDD-HHMMSS><extension>` in UTC.
    #[must_use]
    pub(crate) fn file_name_at(&self, at: jiff::Timestamp) -> String {
        match &self.file_name {
            Some(name) => name.clone(),
            None => format!(
                "{}{}{}",
                self.policy_name,
                at.strftime(FILE_TIME_FORMAT),
                self.archive.compression.codec.extension()
            ),
        }
    }

    /// The archive's path at `at` (an `s3://` URL for object storage).
    #[must_use]
    pub(crate) fn path_at(&self, at: jiff::Timestamp) -> PathBuf {
        self.archive_at(at).to_path_buf()
    }

    /// Where the archive goes at `at`.
    #[must_use]
    pub(crate) fn archive_at(&self, at: jiff::Timestamp) -> ArchiveLocation {
        self.location.archive(&self.file_name_at(at))
    }

    /// The namespaces, sorted, without duplicates.
    pub(crate) fn namespaces_sorted(&self) -> Vec<String> {
        let mut namespaces = self.namespaces.clone();
        namespaces.sort();
        namespaces.dedup();
        namespaces
    }

    /// Checks everything that can be checked without a cluster.
    ///
    /// # Errors
    /// [`BackupError::InvalidRequest`] naming the field, the value and what is wrong with it.
    pub(crate) fn validate(&self) -> Result<(), BackupError> {
        let invalid = |field: &'static str, value: &str, reason: &str| BackupError::InvalidRequest {
            field,
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if self.namespaces.is_empty() {
            return Err(invalid(
                "namespaces",
                "",
                "name at least one namespace to back up (-n/--namespace, includedNamespaces)",
            ));
        }
        for ns in &self.namespaces {
            if let Some(reason) = dns_label_problem(ns) {
                return Err(invalid("namespaces", ns, &reason));
            }
        }
        if let Some(reason) = file_part_problem(&self.policy_name) {
            return Err(invalid("policy_name", &self.policy_name, &reason));
        }
        if self.cluster_name.trim().is_empty() {
            return Err(invalid(
                "cluster_name",
                &self.cluster_name,
                "name the member cluster; it is recorded in the archive",
            ));
        }
        if let Some(name) = &self.file_name
            && let Some(reason) = file_part_problem(name)
        {
            return Err(invalid("file_name", name, &reason));
        }
        if let Err(err) = self.archive.compression.validate() {
            let value = format!(
                "{} level {}",
                self.archive.compression.codec, self.archive.compression.level
            );
            return Err(invalid("archive", &value, &err.to_string()));
        }
        if self.concurrency == 0 {
            return Err(invalid("concurrency", "0", "must be at least 1"));
        }
        if self.page_size == 0 {
            return Err(invalid("page_size", "0", "must be at least 1"));
        }
        Ok(())
    }
}

/// Why `name` is not a namespace name (an RFC 1123 label), if it is not.
fn dns_label_problem(name: &str) -> Option<String> {
    if name.contains(['*', '?']) {
        return Some("wildcards are not accepted; name each namespace".to_owned());
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    (!ok).then(|| {
        "not a namespace name (at most 63 lowercase letters, digits and `-`, starting and ending \
         with a letter or digit)"
            .to_owned()
    })
}

/// Why `part` cannot be (the start of) a file name, if it cannot.
fn file_part_problem(part: &str) -> Option<String> {
    if part.is_empty() {
        Some("must not be empty".to_owned())
    } else if part.contains(['/', '\0']) || part.starts_with('.') {
        Some("must be a plain file name: no `/`, and not starting with `.`".to_owned())
    } else if part.len() > 200 {
        Some("is longer than 200 bytes".to_owned())
    } else {
        None
    }
}

/// Checks that `dir` is an existing directory.
///
/// # Errors
/// [`BackupError::BackupDir`] saying what is wrong and what to do.
pub(crate) fn check_backup_dir(dir: &Path) -> Result<(), BackupError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(BackupError::BackupDir {
            path: dir.to_owned(),
            reason: "is not a directory".to_owned(),
        }),
        Err(err) => Err(BackupError::BackupDir {
            path: dir.to_owned(),
            reason: format!(
                "cannot be used ({err}); create it, or mount the backup volume there, or choose \
                 another directory (--backup-dir)"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpromote_archive::Codec;

    fn at() -> jiff::Timestamp {
        "2024-03-11T10:49:07Z".parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn default_file_name_is_the_designs() {
        let request = BackupRequest::new("promote-policy-sample", ["ns1"]);
        assert_eq!(
            request.path_at(at()),
            PathBuf::from("/data/backup/promote-policy-sample20240311-104907.tar.zst")
        );
        let gzip = request
            .clone()
            .archive_options(WriterOptions::zstd().codec(Codec::Gzip));
        assert_eq!(
            gzip.file_name_at(at()),
            "promote-policy-sample20240311-104907.tar.gz"
        );
        let named = request.file_name("mine.tar.zst").backup_dir("/tmp/x");
        assert_eq!(named.path_at(at()), PathBuf::from("/tmp/x/mine.tar.zst"));
    }

    #[test]
    fn default_exclusions_apply_only_when_none_are_given() {
        let request = BackupRequest::new("p", ["ns1"]);
        assert_eq!(request.excluded_names(), DEFAULT_EXCLUDED_RESOURCES);
        assert!(request.excluded(Vec::<String>::new()).excluded_names().is_empty());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let err = |r: BackupRequest| r.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(BackupRequest::new("p", Vec::<String>::new())).contains("namespaces"));
        assert!(err(BackupRequest::new("p", ["Shop"])).contains("`Shop`"));
        assert!(err(BackupRequest::new("p", ["*"])).contains("wildcards"));
        assert!(err(BackupRequest::new("p", ["-a"])).contains("namespace name"));
        assert!(err(BackupRequest::new("a/b", ["ns"])).contains("policy_name"));
        assert!(err(BackupRequest::new("p", ["ns"]).file_name(".hidden")).contains("file_name"));
        assert!(err(BackupRequest::new("p", ["ns"]).concurrency(0)).contains("concurrency"));
        assert!(err(BackupRequest::new("p", ["ns"]).cluster_name(" ")).contains("cluster_name"));
        let level_99 = BackupRequest::new("p", ["ns"]).archive_options(WriterOptions::zstd().level(99));
        assert!(err(level_99).contains("zstd level"));
        assert!(BackupRequest::new("p", ["ns", "ns", "a-1"]).validate().is_ok());
        assert_eq!(
            BackupRequest::new("p", ["b", "a", "b"]).namespaces_sorted(),
            ["a", "b"]
        );
    }

    #[test]
    fn backup_dir_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(check_backup_dir(dir.path()).is_ok());
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap_or_else(|e| panic!("{e}"));
        assert!(check_backup_dir(&file).is_err());
        let missing = dir.path().join("missing");
        let err = check_backup_dir(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--backup-dir"), "{err}");
    }
}
