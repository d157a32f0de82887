//! Why a backup failed. Each error names the input concerned and what to do about it.

use std::path::PathBuf;

use crate::resources::{DiscoveryError, InvalidResourceNames};
use kpromote_archive::ArchiveError;

use super::lister::ListError;

/// The file that lists what a backup reads, for "forbidden" messages.
pub const RBAC_MANIFEST: &str = "deploy/backup-job/rbac.yaml";

/// A backup that did not produce an archive. Whatever the error, no file exists under the
/// archive's final name (a partial archive is written under a hidden temporary name and removed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The request itself is wrong; nothing was read or written.
    #[error("invalid backup request: {field} `{value}`: {reason}")]
    InvalidRequest {
        /// The field (`namespaces`, `policy_name`, `file_name`, …).
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong, and what to give instead.
        reason: String,
    },
    /// Discovery failed: the cluster is unreachable, the credentials are refused, or the server
    /// does not answer `/api` and `/apis`.
    #[error(
        "cannot read which APIs the cluster serves; check that the API server is reachable and \
         the kubeconfig's credentials are valid"
    )]
    Discovery(#[source] DiscoveryError),
    /// Excluded resource type names that the server does not serve (or that are not
    /// namespaced types). Every bad name is listed.
    #[error("excluded resource types cannot be used (--exclude, excludedNamespaceScopedResources)")]
    InvalidExclusions(#[source] InvalidResourceNames),
    /// An included namespace does not exist.
    #[error(
        "namespace `{namespace}` does not exist in the cluster; check the namespace list \
         (-n/--namespace, includedNamespaces)"
    )]
    NamespaceNotFound {
        /// The namespace.
        namespace: String,
    },
    /// An included namespace is being deleted: backing it up would capture a namespace on its
    /// way out.
    #[error(
        "namespace `{namespace}` is being deleted (deletionTimestamp {since}); wait until it is gone \
         or its deletion is undone, and leave it out of the backup"
    )]
    NamespaceTerminating {
        /// The namespace.
        namespace: String,
        /// Its deletionTimestamp.
        since: String,
    },
    /// The identity used may not read something the backup needs. Nothing is written: an
    /// archive silently missing a type would restore an incomplete application.
    #[error(
        "forbidden to {verb} {what}: {message}; the backup's identity needs get and list on every \
         type it reads ({RBAC_MANIFEST} lists them)"
    )]
    Forbidden {
        /// `list` or `get`.
        verb: &'static str,
        /// What was read, e.g. `secrets in namespace shop`.
        what: String,
        /// The API server's message.
        message: String,
    },
    /// A list failed for another reason.
    #[error("reading the cluster failed")]
    List(#[source] ListError),
    /// Getting one cluster-scoped dependency failed for another reason than "not found".
    #[error("getting {what} failed")]
    Get {
        /// The object.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The backup directory is missing or not a directory.
    #[error("backup directory {path}: {reason}")]
    BackupDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// An archive of that name exists already; archives are never overwritten.
    #[error(
        "{path} exists already; archives are never overwritten — choose another name (--name) or \
         directory (--backup-dir)"
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Writing the archive failed (disk full, read-only or unwritable directory, …). The
    /// temporary file was removed and nothing exists under the final name.
    #[error(
        "writing the archive {path} failed; nothing was left under that name. Check the free space \
         and the permissions of its directory"
    )]
    Archive {
        /// The archive's final path.
        path: PathBuf,
        /// The archive error.
        #[source]
        source: ArchiveError,
    },
    /// The object store refused the upload or is misconfigured; nothing was left under the key.
    #[error("object storage for {path}")]
    Storage {
        /// The archive's URL.
        path: PathBuf,
        /// What the store said.
        #[source]
        source: crate::storage::StorageError,
    },
    /// An object read from the cluster cannot be stored (a name the archive layout refuses).
    #[error("{what} cannot be stored in the archive")]
    Unstorable {
        /// The object.
        what: String,
        /// Why.
        #[source]
        source: ArchiveError,
    },
    /// The archive writer stopped unexpectedly (a bug); nothing was left under the final name.
    #[error("the archive writer of {path} stopped unexpectedly: {detail}")]
    WriterStopped {
        /// The archive's final path.
        path: PathBuf,
        /// What is known.
        detail: String,
    },
}

impl BackupError {
    /// Maps a list error, singling out "forbidden".
    pub(crate) fn from_list(err: ListError) -> Self {
        match err {
            ListError::Api {
                what,
                source: kube::Error::Api(status),
            } if status.code == 403 => Self::Forbidden {
                verb: "list",
                what,
                message: status.message,
            },
            other => Self::List(other),
        }
    }

    /// Maps a get error, singling out "forbidden".
    pub(crate) fn from_get(what: String, err: kube::Error) -> Self {
        match err {
            kube::Error::Api(status) if status.code == 403 => Self::Forbidden {
                verb: "get",
                what,
                message: status.message,
            },
            source => Self::Get { what, source },
        }
    }

    /// Maps an archive writer error for the archive at `path`.
    pub(crate) fn from_archive(path: PathBuf, err: ArchiveError) -> Self {
        match err {
            ArchiveError::AlreadyExists { path } => Self::AlreadyExists { path },
            source => Self::Archive { path, source },
        }
    }
}
