//! Where archives are kept: a directory (the backup volume) or S3-compatible object storage.
//!
//! The archive crate reads and writes bytes only; this module gives it those bytes. A
//! [`BackupLocation`] is where new archives go (`--backup-location`: a directory or
//! `s3://BUCKET/PREFIX`); an [`ArchiveLocation`] is where one archive is (a path or
//! `s3://BUCKET/KEY`). Paths carry either spelling through the rest of kpromote (an
//! `s3://` URL is a valid `PathBuf` on Unix), and the few places that open, create or lock an
//! archive ask this module.
//!
//! # Object storage
//! - Configuration is the usual environment (see [`s3`]): `AWS_ENDPOINT_URL`, `AWS_REGION`,
//!   `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or the other credential sources of the AWS
//!   conventions object_store reads), `AWS_S3_FORCE_PATH_STYLE`.
//! - Writing streams a multipart upload while the archive is written ([`upload`]); the object
//!   appears under its key only when the upload is completed, after the writer finished and the
//!   uploaded bytes verified as an archive. Any error aborts the upload.
//! - Reading is by ranged requests ([`remote`]) guided by the locator: opening reads the locator
//!   and the manifest, `show` one object reads the index and the one frame holding it.
//! - Journals and the per-archive lock of a remote archive live in a local state directory
//!   ([`state_dir`]), not in the bucket: object storage has no locks and no appends. When that
//!   directory is lost with the backup volume, rollback starts from live state, which every step
//!   checks first anyway.

pub mod remote;
pub mod s3;
pub mod upload;

use std::path::{Path, PathBuf};

use kpromote_archive::{ArchiveError, ArchiveReader, ReaderOptions};

pub use s3::ObjectUrl;
pub use s3::S3Config;

/// The URL scheme of S3-compatible object storage.
pub(crate) const S3_SCHEME: &str = "s3://";
/// Environment variable naming the local state directory of remote archives.
pub(crate) const STATE_DIR_ENV: &str = "KPROMOTE_STATE_DIR";

/// Errors of storage locations and object storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A location is not a directory path or a well-formed `s3://BUCKET/PREFIX` URL.
    #[error("{location:?} is not a valid backup location: {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The object store configuration is incomplete or invalid (no secret is ever included).
    #[error("object storage configuration: {reason}")]
    Config {
        /// What is wrong, naming the environment variable.
        reason: String,
    },
    /// The object store refused or failed a request.
    #[error("{url}: {detail}")]
    Store {
        /// The object or bucket concerned.
        url: String,
        /// What the store said.
        detail: String,
    },
    /// An archive of that name already exists; archives are never overwritten.
    #[error("{url} already exists; archives are never overwritten")]
    AlreadyExists {
        /// The object.
        url: String,
    },
    /// A local file of the state directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl StorageError {
    pub(crate) fn store(url: &impl std::fmt::Display, err: &object_store::Error) -> Self {
        StorageError::Store {
            url: url.to_string(),
            detail: s3::describe(err),
        }
    }
}

/// Where new archives go: `--backup-location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupLocation {
    /// A directory (the backup volume).
    Dir(PathBuf),
    /// A bucket and a key prefix (empty, or ending in `/`).
    Bucket {
        /// The bucket.
        bucket: String,
        /// The key prefix, empty or ending in `/`.
        prefix: String,
    },
}

impl BackupLocation {
    /// Parses a directory path or `s3://BUCKET[/PREFIX]`.
    ///
    /// # Errors
    /// [`StorageError::InvalidLocation`] for an empty location, another URL scheme, or a bucket
    /// name S3 does not allow.
    pub fn parse(location: &str) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidLocation {
            location: location.to_owned(),
            reason: reason.to_owned(),
        };
        if location.is_empty() {
            return Err(invalid("it is empty; give a directory or s3://BUCKET/PREFIX"));
        }
        let Some(rest) = location.strip_prefix(S3_SCHEME) else {
            if location.contains("://") {
                return Err(invalid("only directories and s3://BUCKET/PREFIX are supported"));
            }
            return Ok(BackupLocation::Dir(PathBuf::from(location)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        s3::check_bucket(bucket).map_err(|reason| invalid(&reason))?;
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..") || prefix.contains("//") {
            return Err(invalid("the prefix has an empty, `.` or `..` component"));
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(BackupLocation::Bucket {
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    /// Whether `archive` is one this location holds directly: for a bucket, an object of the
    /// bucket right under the prefix (what a policy's `backedupFile` must be before the
    /// controller trusts it).
    #[must_use]
    pub(crate) fn holds(&self, archive: &ObjectUrl) -> bool {
        match self {
            BackupLocation::Dir(_) => false,
            BackupLocation::Bucket { bucket, prefix } => {
                *bucket == archive.bucket
                    && archive
                        .key
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
            }
        }
    }

    /// Where an archive named `file_name` goes.
    #[must_use]
    pub(crate) fn archive(&self, file_name: &str) -> ArchiveLocation {
        match self {
            BackupLocation::Dir(dir) => ArchiveLocation::File(dir.join(file_name)),
            BackupLocation::Bucket { bucket, prefix } => ArchiveLocation::Object(ObjectUrl {
                bucket: bucket.clone(),
                key: format!("{prefix}{file_name}"),
            }),
        }
    }
}

impl std::fmt::Display for BackupLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupLocation::Dir(dir) => write!(f, "{}", dir.display()),
            BackupLocation::Bucket { bucket, prefix } => write!(f, "{S3_SCHEME}{bucket}/{prefix}"),
        }
    }
}

/// Where one archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveLocation {
    /// A file.
    File(PathBuf),
    /// An object.
    Object(ObjectUrl),
}

impl ArchiveLocation {
    /// Reads a path that may spell an `s3://BUCKET/KEY` URL.
    ///
    /// # Errors
    /// [`StorageError::InvalidLocation`] for a malformed URL.
    pub(crate) fn of(path: &Path) -> Result<Self, StorageError> {
        match path.to_str().and_then(|p| p.strip_prefix(S3_SCHEME).map(|_| p)) {
            Some(url) => ObjectUrl::parse(url).map(ArchiveLocation::Object),
            None => Ok(ArchiveLocation::File(path.to_owned())),
        }
    }

    /// Whether `path` spells an object URL.
    #[must_use]
    pub fn is_remote(path: &Path) -> bool {
        path.to_str().is_some_and(|p| p.starts_with(S3_SCHEME))
    }

    /// The path spelling (the URL itself for an object), as reports and policy status show it.
    #[must_use]
    pub(crate) fn to_path_buf(&self) -> PathBuf {
        match self {
            ArchiveLocation::File(path) => path.clone(),
            ArchiveLocation::Object(url) => PathBuf::from(url.to_string()),
        }
    }

    /// Opens the archive for reading: a file, or an object read by ranged requests. Blocking:
    /// call it off the async threads.
    ///
    /// # Errors
    /// As [`ArchiveReader::open_with`]; the store's errors are [`ArchiveError::Io`] naming the URL.
    pub(crate) fn open(&self, options: ReaderOptions) -> Result<ArchiveReader, ArchiveError> {
        match self {
            ArchiveLocation::File(path) => ArchiveReader::open_with(path, options),
            ArchiveLocation::Object(url) => {
                let name = PathBuf::from(url.to_string());
                let object = remote::RemoteObject::open(url)
                    .map_err(|e| ArchiveError::io(&name, std::io::Error::other(e.to_string())))?;
                ArchiveReader::open_source(name, std::sync::Arc::new(object), options)
            }
        }
    }

    /// The local file a run's journals sit beside and its lock is taken on: the archive itself,
    /// or for an object its anchor in the [`state_dir`] (an empty file, created on demand when
    /// `create` is set).
    ///
    /// # Errors
    /// [`StorageError::Io`] when the state directory cannot be made.
    pub(crate) fn local_anchor(&self, create: bool) -> Result<PathBuf, StorageError> {
        match self {
            ArchiveLocation::File(path) => Ok(path.clone()),
            ArchiveLocation::Object(url) => {
                let anchor = state_dir().join("s3").join(&url.bucket).join(&url.key);
                if create {
                    let io = |path: &Path| {
                        let path = path.to_owned();
                        move |source| StorageError::Io { path, source }
                    };
                    if let Some(dir) = anchor.parent() {
                        std::fs::create_dir_all(dir).map_err(io(dir))?;
                    }
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&anchor)
                        .map_err(io(&anchor))?;
                }
                Ok(anchor)
            }
        }
    }
}

impl std::fmt::Display for ArchiveLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveLocation::File(path) => write!(f, "{}", path.display()),
            ArchiveLocation::Object(url) => write!(f, "{url}"),
        }
    }
}

/// The local state directory of remote archives (their journals and locks):
/// `$KPROMOTE_STATE_DIR`, else `$XDG_STATE_HOME/kpromote`, else `~/.local/state/kpromote`. The
/// chart points it at the backup volume when there is one.
#[must_use]
pub(crate) fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kpromote");
    }
    let home = std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/kpromote")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backup_locations_parse() {
        assert_eq!(
            BackupLocation::parse("/data/backup").unwrap(),
            BackupLocation::Dir("/data/backup".into())
        );
        assert_eq!(
            BackupLocation::parse("s3://kp-archives/prod/member-1/").unwrap(),
            BackupLocation::Bucket {
                bucket: "kp-archives".into(),
                prefix: "prod/member-1/".into()
            }
        );
        let bare = BackupLocation::parse("s3://kp-archives").unwrap();
        assert_eq!(
            bare.archive("a.tar.zst"),
            ArchiveLocation::Object(ObjectUrl {
                bucket: "kp-archives".into(),
                key: "a.tar.zst".into()
            })
        );
        for bad in [
            "",
            "s3://",
            "s3://Upper/x",
            "s3://b/../x",
            "gs://bucket/x",
            "s3://a/x//y",
        ] {
            assert!(BackupLocation::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn archive_locations_round_trip_through_paths() {
        let url = Path::new("s3://kp-archives/prod/shop20261207-101500.tar.zst");
        let at = ArchiveLocation::of(url).unwrap();
        assert!(matches!(&at, ArchiveLocation::Object(o) if o.key == "prod/shop20261207-101500.tar.zst"));
        assert_eq!(at.to_path_buf(), url);
        assert!(ArchiveLocation::is_remote(url));
        let file = ArchiveLocation::of(Path::new("/data/backup/a.tar.zst")).unwrap();
        assert_eq!(file, ArchiveLocation::File("/data/backup/a.tar.zst".into()));
        assert!(ArchiveLocation::of(Path::new("s3://kp-archives/")).is_err());
    }
}
