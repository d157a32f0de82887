//! One archived promotion a test drives: the archive of some namespaces of the member, and the
//! engine's calls on it, so each test states only what differs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kpromote_archive::{ArchiveReader, FrameInfo, WriterOptions};
use kpromote_core::engine::{EngineError, EngineOptions, Inventory, LiveCluster, Report, SharedJournal};
use kpromote_core::journal::Journal;
use kube::Client;

use super::archiving;
use super::pair::Pair;

/// The archive of namespaces of a [`Pair`]'s member, and the two clusters the engine acts on.
pub struct Promotion {
    /// Holds the archive and the journals.
    pub dir: tempfile::TempDir,
    pub inv: Inventory,
    pub member: LiveCluster,
    pub cp: LiveCluster,
}

impl Promotion {
    /// Archives `namespaces` (and the cluster-scoped objects `cluster`) of the pair's member.
    pub async fn archive(pair: &Pair, namespaces: &[&str], cluster: &[(&str, &str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = archiving::archive(&pair.member, namespaces, cluster, dir.path()).await;
        Self {
            inv: Inventory::for_promote(&path).unwrap(),
            dir,
            member: LiveCluster::new("member", pair.member.clone()),
            cp: LiveCluster::new("control plane", pair.cp.clone()),
        }
    }

    /// Archives namespace `ns` of the pair's member one entry per frame, so that damaging one
    /// frame ([`damage_frames`]) damages one object. Returns the archive's path too.
    pub async fn archive_one_per_frame(pair: &Pair, ns: &str) -> (Self, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let one_per_frame = WriterOptions::zstd().frame_size(512);
        let path = archiving::archive_with(&pair.member, &[ns], &[], dir.path(), one_per_frame).await;
        let promotion = Self {
            inv: Inventory::for_promote(&path).unwrap(),
            dir,
            member: LiveCluster::new("member", pair.member.clone()),
            cp: LiveCluster::new("control plane", pair.cp.clone()),
        };
        (promotion, path)
    }

    /// Archives [`super::apps::rich_namespace`] `ns` with the cluster-scoped objects it depends on.
    pub async fn archive_rich(pair: &Pair, ns: &str) -> Self {
        let dependencies = super::apps::rich_namespace_dependencies(ns);
        let cluster: Vec<(&str, &str, &str)> = dependencies
            .iter()
            .map(|(g, r, n)| (*g, *r, n.as_str()))
            .collect();
        Self::archive(pair, &[ns], &cluster).await
    }

    /// The same promotion through other clients of the two clusters (a proxy's).
    pub fn through(mut self, member: Client, cp: Client) -> Self {
        self.member = LiveCluster::new("member", member);
        self.cp = LiveCluster::new("control plane", cp);
        self
    }

    /// The journal file `name` of run `run`.
    pub fn journal(&self, name: &str, run: &str) -> SharedJournal {
        Arc::new(Mutex::new(
            Journal::open(&self.dir.path().join(name), run).unwrap(),
        ))
    }

    /// Promote, with the automatic rollback on.
    pub async fn promote(&self, opts: &EngineOptions) -> Result<Report, EngineError> {
        self.promote_with(opts, true).await
    }

    /// Promote; the automatic rollback only when `auto_rollback`.
    pub async fn promote_with(
        &self,
        opts: &EngineOptions,
        auto_rollback: bool,
    ) -> Result<Report, EngineError> {
        let rollback_journal = auto_rollback.then(|| self.journal("auto-rollback.journal", "rollback"));
        kpromote_core::engine::promote::promote(
            &self.run(opts),
            &self.journal("promote.journal", "promote"),
            rollback_journal.as_ref(),
        )
        .await
    }

    /// Rollback, journaled in `journal` (a new name starts a new run, the same name resumes).
    pub async fn rollback(&self, journal: &str, opts: &EngineOptions) -> Result<Report, EngineError> {
        kpromote_core::engine::rollback::rollback(&self.run(opts), &self.journal(journal, "rollback")).await
    }

    fn run<'a>(&'a self, opts: &'a EngineOptions) -> kpromote_core::engine::Run<'a> {
        kpromote_core::engine::Run::new(&self.member, &self.cp, &self.inv, "member", opts)
    }
}

/// The frames of the archive at `path`, in file order.
pub fn frames(path: &Path) -> Vec<FrameInfo> {
    ArchiveReader::open(path)
        .unwrap()
        .manifest()
        .unwrap()
        .frames
        .clone()
}

/// Flips one bit in the middle of each of `frames` of the archive at `path`.
pub fn damage_frames(path: &Path, frames: &[&FrameInfo]) {
    let mut bytes = std::fs::read(path).unwrap();
    for frame in frames {
        bytes[usize::try_from(frame.offset + frame.length / 2).unwrap()] ^= 0x10;
    }
    std::fs::write(path, &bytes).unwrap();
}
