//! An archive streamed into object storage while it is written: a multipart upload as the
//! archive writer's [`ArchiveSink`].
//!
//! # Guarantees
//! - Memory is bounded, whatever the archive's size: one part being filled, at most
//!   [`PARTS_IN_FLIGHT`] parts uploading ([`PART_SIZE`] each), and [`VERIFY_QUEUE`] chunks queued
//!   for the verifier.
//! - Every byte sent is also read back as an archive stream by a verifier thread
//!   (`verify_stream`: locator, manifest, index and every entry's digest). The upload is
//!   completed — the object appears under its key — only after the writer finished, every part
//!   was acknowledged, the byte count matches the writer's and the verifier found the stream
//!   fully verified; a HEAD then checks the stored size.
//! - On any error, and when the sink is dropped without [`ArchiveSink::commit`] (the backup
//!   failed or was abandoned), the upload is aborted: the store discards its parts and nothing
//!   ever exists under the key. A process killed mid-upload leaves an incomplete multipart upload,
//!   which is not an object (listing and GET do not see it); a bucket lifecycle rule
//!   (`AbortIncompleteMultipartUpload`) reclaims its space.
//! - An existing object is never overwritten: the key is checked to be free before the upload
//!   starts (object storage has no portable create-only multipart completion; two backups racing
//!   for one key within the same second is the remaining window).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};

use kpromote_archive::{ArchiveError, ArchiveSink, ReaderOptions, VerifyReport, WrittenArchive};

use super::StorageError;
use super::s3::{self, ObjectUrl};

/// Size of each uploaded part: 8 MiB (S3 allows 5 MiB to 5 GiB, and 10,000 parts: archives up
/// to 78 GiB, beyond the reader's 64 GiB cap on decompressed size for any realistic ratio).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once while the next one fills.
pub(crate) const PARTS_IN_FLIGHT: usize = 2;
/// Chunks (the writer's 1 MiB buffer flushes) queued for the verifier before writing waits.
pub(crate) const VERIFY_QUEUE: usize = 8;

type Verifying = JoinHandle<Result<VerifyReport, ArchiveError>>;

/// A multipart upload fed by the archive writer.
pub struct MultipartSink {
    url: ObjectUrl,
    store: Arc<dyn ObjectStore>,
    upload: Option<Box<dyn MultipartUpload>>,
    part: Vec<u8>,
    in_flight: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
    sent: u64,
    verify_tx: Option<SyncSender<Bytes>>,
    verifier: Option<Verifying>,
}

impl std::fmt::Debug for MultipartSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartSink")
            .field("url", &self.url.to_string())
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl MultipartSink {
    /// Checks that `url` is free and starts its multipart upload. Blocking.
    ///
    /// # Errors
    /// [`StorageError::AlreadyExists`], [`StorageError::Store`], [`StorageError::Config`].
    pub(crate) fn start(url: &ObjectUrl) -> Result<Self, StorageError> {
        Self::start_with(url, &s3::S3Config::from_env()?)
    }

    /// [`MultipartSink::start`] with a given configuration.
    ///
    /// # Errors
    /// As [`MultipartSink::start`].
    pub fn start_with(url: &ObjectUrl, config: &s3::S3Config) -> Result<Self, StorageError> {
        let store = config.store_for(url)?;
        let (head_store, path) = (Arc::clone(&store), url.path());
        match s3::block_on(async move { head_store.head(&path).await }) {
            Ok(_) => return Err(StorageError::AlreadyExists { url: url.to_string() }),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StorageError::store(url, &e)),
        }
        let (up_store, path) = (Arc::clone(&store), url.path());
        let upload = s3::block_on(async move { up_store.put_multipart(&path).await })
            .map_err(|e| StorageError::store(url, &e))?;
        let (verify_tx, verify_rx) = sync_channel::<Bytes>(VERIFY_QUEUE);
        let verifier = std::thread::Builder::new()
            .name("kpromote-upload-verify".to_owned())
            .spawn(move || kpromote_archive::verify_stream(Chunks::new(verify_rx), &ReaderOptions::default()))
            .map_err(|source| StorageError::Io {
                path: "(upload verifier thread)".into(),
                source,
            })?;
        tracing::debug!(url = %url, "multipart upload started");
        Ok(MultipartSink {
            url: url.clone(),
            store,
            upload: Some(upload),
            part: Vec::with_capacity(PART_SIZE),
            in_flight: VecDeque::new(),
            sent: 0,
            verify_tx: Some(verify_tx),
            verifier: Some(verifier),
        })
    }

    fn error(&self, err: &object_store::Error) -> io::Error {
        io::Error::other(StorageError::store(&self.url, err).to_string())
    }

    /// Uploads `data` as the next part, waiting while [`PARTS_IN_FLIGHT`] are already uploading.
    fn ship(&mut self, data: Vec<u8>) -> io::Result<()> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(io::Error::other(format!(
                "{}: the upload was already ended",
                self.url
            )));
        };
        self.sent += data.len() as u64;
        let part = upload.put_part(PutPayload::from(data));
        self.in_flight.push_back(s3::io_runtime().spawn(part));
        while self.in_flight.len() > PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        if let Some(part) = self.in_flight.pop_front() {
            match futures::executor::block_on(part) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.error(&e)),
                Err(e) => return Err(io::Error::other(format!("{}: part upload failed: {e}", self.url))),
            }
        }
        Ok(())
    }

    /// The verifier's verdict on everything sent.
    fn verdict(&mut self) -> io::Result<()> {
        drop(self.verify_tx.take());
        let Some(verifier) = self.verifier.take() else {
            return Err(io::Error::other("the upload verifier is gone"));
        };
        let report = verifier
            .join()
            .map_err(|_| io::Error::other("the upload verifier panicked"))?
            .map_err(|e| io::Error::other(format!("the uploaded bytes do not read as an archive: {e}")))?;
        if !report.is_fully_verified() {
            let first = report.problems.first().map_or_else(
                || "its locator does not anchor it".to_owned(),
                ToString::to_string,
            );
            return Err(io::Error::other(format!(
                "the uploaded bytes do not verify as an archive: {first}"
            )));
        }
        Ok(())
    }
}

impl Write for MultipartSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(tx) = &self.verify_tx
            && tx.send(Bytes::copy_from_slice(buf)).is_err()
        {
            // The verifier stopped early (the stream is already known bad); its error is
            // reported by the commit.
            self.verify_tx = None;
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let take = rest.len().min(PART_SIZE - self.part.len());
            self.part.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.part.len() == PART_SIZE {
                let full = std::mem::replace(&mut self.part, Vec::with_capacity(PART_SIZE));
                self.ship(full)?;
            }
        }
        Ok(buf.len())
    }

    /// Parts are only sent full (S3's minimum part size), so there is nothing to flush early.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArchiveSink for MultipartSink {
    fn commit(mut self: Box<Self>, written: &WrittenArchive) -> io::Result<()> {
        let last = std::mem::take(&mut self.part);
        if !last.is_empty() || self.sent == 0 {
            self.ship(last)?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        if self.sent != written.compressed_bytes {
            return Err(io::Error::other(format!(
                "{}: {} bytes uploaded, the writer wrote {}",
                self.url, self.sent, written.compressed_bytes
            )));
        }
        self.verdict()?;
        let Some(mut upload) = self.upload.take() else {
            return Err(io::Error::other(format!(
                "{}: the upload was already ended",
                self.url
            )));
        };
        let completed = s3::block_on(async move {
            match upload.complete().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Leave nothing half done behind the error.
                    if let Err(abort) = upload.abort().await {
                        tracing::warn!(error = %s3::describe(&abort),
                            "could not abort the multipart upload; a lifecycle rule reclaims its parts");
                    }
                    Err(e)
                }
            }
        });
        completed.map_err(|e| self.error(&e))?;
        let (store, path) = (Arc::clone(&self.store), self.url.path());
        let head = s3::block_on(async move { store.head(&path).await }).map_err(|e| self.error(&e))?;
        if head.size != written.compressed_bytes {
            let (store, path) = (Arc::clone(&self.store), self.url.path());
            let deleted = s3::block_on(async move { store.delete(&path).await });
            let fate = match deleted {
                Ok(()) => "the object was deleted".to_owned(),
                Err(e) => format!("deleting it failed too ({}): delete it by hand", s3::describe(&e)),
            };
            return Err(io::Error::other(format!(
                "{}: the store holds {} bytes after the upload, {} were written; {fate}",
                self.url, head.size, written.compressed_bytes
            )));
        }
        tracing::debug!(url = %self.url, bytes = self.sent, "multipart upload completed");
        Ok(())
    }
}

impl Drop for MultipartSink {
    /// Not committed: abort, so the store keeps nothing.
    fn drop(&mut self) {
        drop(self.verify_tx.take());
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        let parts: Vec<_> = self.in_flight.drain(..).collect();
        let aborted = s3::block_on(async move {
            for part in parts {
                let _ = part.await;
            }
            upload.abort().await
        });
        match aborted {
            Ok(()) => tracing::debug!(url = %self.url, "multipart upload aborted"),
            Err(e) => tracing::warn!(url = %self.url, error = %s3::describe(&e),
                "could not abort the multipart upload; a lifecycle rule reclaims its parts"),
        }
        if let Some(verifier) = self.verifier.take() {
            let _ = verifier.join();
        }
    }
}

/// The verifier's input: the chunks the writer wrote, in order.
struct Chunks {
    rx: Receiver<Bytes>,
    current: Bytes,
}

impl Chunks {
    fn new(rx: Receiver<Bytes>) -> Self {
        Chunks {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
