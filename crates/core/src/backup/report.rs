//! What a backup collected (or would collect), and its progress events.
//!
//! # JSON
//! [`BackupReport`] and [`BackupPlan`] serialize to the JSON that `kpromote backup -o json`
//! prints: camelCase fields; `objects` maps a group-resource (`pods`, `deployments.apps`) to its
//! object count; each dependency carries its `target` (`resource`, `name`), its `reason` (tagged
//! `includedNamespace`, `referencedBy` with `object` and `via`, or `bindsSubjectOf`), `present`,
//! and `mayBeAbsent` when true; warnings are tagged by `kind`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::resources::{DiscoveryWarning, GroupResource};

use super::dependencies::{ClusterObjectRef, Reason};
use kpromote_model::ObjectKey;

/// What a backup read, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Collected {
    /// The namespaces backed up, sorted.
    pub namespaces: Vec<String>,
    /// The excluded types, as resolved (aliases of the same objects included), sorted.
    pub excluded: Vec<GroupResource>,
    /// The namespaced types listed, sorted.
    pub types: Vec<GroupResource>,
    /// Namespaced objects per type (types with no object are absent).
    pub objects: BTreeMap<GroupResource, u64>,
    /// The cluster-scoped dependencies, sorted by target, each with its reason and whether it
    /// was found.
    pub dependencies: Vec<CollectedDependency>,
    /// The `resourceVersion` of each list snapshot, keyed like the archive's
    /// `listResourceVersions` (see [`list_key`]).
    pub list_resource_versions: BTreeMap<String, String>,
    /// Objects left out because they are being deleted.
    pub skipped: Vec<SkippedObject>,
    /// Things the operator should know; none of them stopped the backup.
    pub warnings: Vec<BackupWarning>,
}

impl Collected {
    /// Namespaced objects in total.
    #[must_use]
    pub fn namespaced_objects(&self) -> u64 {
        self.objects.values().sum()
    }

    /// Dependencies found (and so stored).
    #[must_use]
    pub fn dependencies_present(&self) -> usize {
        self.dependencies.iter().filter(|d| d.present).count()
    }

    /// Objects stored in total: namespaced objects and the dependencies found.
    #[must_use]
    pub fn total_objects(&self) -> u64 {
        self.namespaced_objects() + self.dependencies_present() as u64
    }
}

/// The key of one list in [`Collected::list_resource_versions`] and in the archive's
/// `listResourceVersions`: `<group-resource>/namespaces/<namespace>` for a namespaced list,
/// `<group-resource>/cluster` for a cluster-wide one — the archive layout's directory of the
/// objects the list read.
#[must_use]
pub fn list_key(resource: &GroupResource, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{resource}/namespaces/{ns}"),
        None => format!("{resource}/cluster"),
    }
}

/// A backup written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BackupReport {
    /// The archive.
    pub path: PathBuf,
    /// Its size in bytes.
    pub archive_bytes: u64,
    /// The size of its tar stream before compression.
    pub uncompressed_bytes: u64,
    /// SHA-256 of its manifest: the archive's identity.
    pub manifest_sha256: String,
    /// What it holds.
    #[serde(flatten)]
    pub collected: Collected,
}

/// What a backup would collect (`--dry-run`): everything is read, nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BackupPlan {
    /// Where the archive would be written.
    pub path: PathBuf,
    /// What it would hold.
    #[serde(flatten)]
    pub collected: Collected,
}

/// One cluster-scoped dependency and why it is in the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CollectedDependency {
    /// The object.
    pub target: ClusterObjectRef,
    /// Why it is needed (the first reason found).
    pub reason: Reason,
    /// Whether it may legitimately be missing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub may_be_absent: bool,
    /// Whether it exists in the cluster (and so is in the archive).
    pub present: bool,
}

/// An object the backup left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SkippedObject {
    /// The object.
    pub object: ObjectKey,
    /// Why.
    pub reason: SkipReason,
}

/// Why an object was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[non_exhaustive]
pub enum SkipReason {
    /// It carries a deletionTimestamp: it is on its way out, and restoring it would bring back
    /// something its owner or a user is deleting.
    BeingDeleted {
        /// Its deletionTimestamp.
        since: String,
    },
}

impl fmt::Display for SkippedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            SkipReason::BeingDeleted { since } => {
                write!(
                    f,
                    "{} is being deleted (since {since}); not backed up",
                    self.object
                )
            }
        }
    }
}

/// Something the operator should know about a backup that still succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[non_exhaustive]
pub enum BackupWarning {
    /// Discovery of an API group failed: its types are not in the backup.
    DiscoveryFailed {
        /// What failed.
        failure: DiscoveryWarning,
    },
    /// A dependency that an object requires does not exist; restoring that object may fail.
    MissingDependency {
        /// The dependency.
        target: ClusterObjectRef,
        /// Who needs it.
        reason: Reason,
    },
    /// A dependency's type is not served by this cluster, so it cannot be read.
    DependencyTypeNotServed {
        /// The dependency.
        target: ClusterObjectRef,
        /// Who needs it.
        reason: Reason,
    },
    /// A type vanished between discovery and its list (a CRD deleted meanwhile).
    TypeVanished {
        /// The type.
        resource: GroupResource,
        /// The namespace listed.
        namespace: Option<String>,
    },
    /// A list's continue token expired and the list restarted: its objects come from two
    /// snapshots; the archive records the first.
    ListRestarted {
        /// What was listed.
        list: String,
        /// The snapshot the list restarted from.
        resource_version: Option<String>,
    },
}

impl fmt::Display for BackupWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DiscoveryFailed { failure } => {
                write!(f, "{failure}; objects of its types are not in the backup")
            }
            Self::MissingDependency { target, reason } => write!(
                f,
                "{target} does not exist but is needed ({reason}); restoring what needs it may fail"
            ),
            Self::DependencyTypeNotServed { target, reason } => write!(
                f,
                "{target} is needed ({reason}) but the cluster does not serve its type"
            ),
            Self::TypeVanished { resource, namespace } => match namespace {
                Some(ns) => write!(f, "{resource} disappeared while namespace {ns} was being read"),
                None => write!(f, "{resource} disappeared while being read"),
            },
            Self::ListRestarted {
                list,
                resource_version,
            } => write!(
                f,
                "the list of {list} restarted after its continue token expired (new snapshot {}); \
                 its objects come from two snapshots",
                resource_version.as_deref().unwrap_or("unknown")
            ),
        }
    }
}

/// A step of a backup, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupProgress {
    /// Discovery and checks are done; `lists` lists (types × namespaces, plus the
    /// ClusterRoleBindings) will be read.
    Planned {
        /// Lists to read.
        lists: usize,
    },
    /// One list is complete.
    Listed {
        /// Its type.
        resource: GroupResource,
        /// Its namespace (`None` for a cluster-wide list).
        namespace: Option<String>,
        /// Objects it held.
        objects: u64,
        /// Lists complete so far.
        done: usize,
    },
    /// Another object was read; `total` so far.
    Object {
        /// Objects read so far.
        total: u64,
    },
    /// Cluster-scoped dependencies are being fetched.
    Dependencies {
        /// Fetched so far.
        done: usize,
        /// Known so far (grows as fetched objects reference more).
        known: usize,
    },
    /// Everything is read; the archive is being sorted, compressed and written.
    Writing,
}
