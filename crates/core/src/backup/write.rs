//! The archive writer on its own thread, fed through a bounded channel.
//!
//! [`ArchiveWriter`] is synchronous (it sorts, spills and compresses), so it runs on a dedicated
//! thread; the reading tasks hand it objects through a channel of [`CHANNEL_CAPACITY`] objects,
//! which is what bounds the reading side's memory when the writer is slower.
//!
//! # Guarantees
//! The archive is finished only on an explicit [`ArchiveTask::commit`]. If the backup fails (or
//! is dropped) before, the writer is dropped unfinished and its temporary file removed: nothing
//! ever appears under the final name.

use std::path::PathBuf;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use kpromote_archive::{ArchiveError, ArchiveFacts, ArchiveWriter, NewObject, WriterOptions, WrittenArchive};

use super::error::BackupError;
use crate::storage::upload::MultipartSink;
use crate::storage::{ArchiveLocation, StorageError};

/// Objects in flight between the reading tasks and the writer thread.
pub(crate) const CHANNEL_CAPACITY: usize = 256;

/// How the writer thread ended.
enum Ended {
    Written(WrittenArchive),
    Failed(ArchiveError),
    Aborted,
}

/// A running archive writer.
pub(crate) struct ArchiveTask {
    path: PathBuf,
    objects: Option<mpsc::Sender<NewObject>>,
    commit: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Ended>>,
}

impl ArchiveTask {
    /// Creates the archive's temporary file (so an unwritable directory or an existing name
    /// fails now, before anything is read) and starts the writer thread.
    pub(crate) async fn start(
        target: &ArchiveLocation,
        facts: ArchiveFacts,
        options: WriterOptions,
    ) -> Result<Self, BackupError> {
        let path = target.to_path_buf();
        let path = path.as_path();
        let writer = match target.clone() {
            ArchiveLocation::File(file) => {
                tokio::task::spawn_blocking(move || ArchiveWriter::create(&file, facts, options))
                    .await
                    .map_err(|e| BackupError::WriterStopped {
                        path: path.to_owned(),
                        detail: e.to_string(),
                    })?
                    .map_err(|e| BackupError::from_archive(path.to_owned(), e))?
            }
            // The upload starts (and the key is checked free) before anything is read.
            ArchiveLocation::Object(url) => {
                let sink =
                    tokio::task::spawn_blocking(move || MultipartSink::start(&url).map(|sink| (url, sink)))
                        .await
                        .map_err(|e| BackupError::WriterStopped {
                            path: path.to_owned(),
                            detail: e.to_string(),
                        })?;
                let (url, sink) = sink.map_err(|e| match e {
                    StorageError::AlreadyExists { .. } => BackupError::AlreadyExists {
                        path: path.to_owned(),
                    },
                    source => BackupError::Storage {
                        path: path.to_owned(),
                        source,
                    },
                })?;
                ArchiveWriter::create_in_sink(url.to_string(), Box::new(sink), facts, options)
                    .map_err(|e| BackupError::from_archive(path.to_owned(), e))?
            }
        };
        let (objects, mut received) = mpsc::channel::<NewObject>(CHANNEL_CAPACITY);
        let (commit, mut committed) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kpromote-archive-writer".to_owned())
            .spawn(move || {
                let mut writer = writer;
                while let Some(object) = received.blocking_recv() {
                    if let Err(err) = writer.add(object) {
                        return Ended::Failed(err);
                    }
                }
                // Every sender is gone: finish only if the backup said so.
                match committed.try_recv() {
                    Ok(()) => match writer.finish() {
                        Ok(written) => Ended::Written(written),
                        Err(err) => Ended::Failed(err),
                    },
                    Err(_) => Ended::Aborted,
                }
            })
            .map_err(|e| BackupError::WriterStopped {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            objects: Some(objects),
            commit: Some(commit),
            thread: Some(thread),
        })
    }

    /// Where objects go.
    pub(crate) fn sender(&self) -> Option<mpsc::Sender<NewObject>> {
        self.objects.clone()
    }

    /// The writer thread's own error, after the channel closed early.
    pub(crate) async fn failure(mut self) -> BackupError {
        self.objects = None;
        self.commit = None;
        match self.join().await {
            Ok(Ended::Failed(err)) => BackupError::from_archive(self.path.clone(), err),
            Ok(Ended::Written(_) | Ended::Aborted) => BackupError::WriterStopped {
                path: self.path.clone(),
                detail: "the writer stopped taking objects without an error".to_owned(),
            },
            Err(err) => err,
        }
    }

    /// Finishes the archive: sorts, compresses, writes and renames it to its final name. Every
    /// other sender of objects must be dropped first.
    pub(crate) async fn commit(mut self) -> Result<WrittenArchive, BackupError> {
        if let Some(commit) = self.commit.take() {
            // The receiver lives until the thread ends; it cannot be gone before.
            let _ = commit.send(());
        }
        self.objects = None;
        match self.join().await? {
            Ended::Written(written) => Ok(written),
            Ended::Failed(err) => Err(BackupError::from_archive(self.path.clone(), err)),
            Ended::Aborted => Err(BackupError::WriterStopped {
                path: self.path.clone(),
                detail: "the writer ended without finishing".to_owned(),
            }),
        }
    }

    /// Gives up: the writer is dropped unfinished and its temporary file removed before this
    /// returns.
    pub(crate) async fn abort(mut self) {
        self.objects = None;
        self.commit = None;
        let _ = self.join().await;
    }

    async fn join(&mut self) -> Result<Ended, BackupError> {
        let path = self.path.clone();
        let Some(thread) = self.thread.take() else {
            return Err(BackupError::WriterStopped {
                path,
                detail: "joined twice".to_owned(),
            });
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| BackupError::WriterStopped {
                path: path.clone(),
                detail: e.to_string(),
            })?
            .map_err(|_| BackupError::WriterStopped {
                path,
                detail: "the writer thread panicked".to_owned(),
            })
    }
}

impl Drop for ArchiveTask {
    /// An uncommitted task aborts: closing the channel without a commit makes the thread drop
    /// the writer, which removes the temporary file.
    fn drop(&mut self) {
        self.objects = None;
        self.commit = None;
    }
}
