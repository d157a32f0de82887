//! An archive in object storage read by ranged requests, as the archive reader's
//! [`RandomAccess`].
//!
//! The reader reads one section at a time (the locator, frame B, the frames holding what it
//! looks for) and says where each ends; one request fetches up to [`BLOCK`] bytes of the
//! current section, never beyond it, and the last few blocks are kept ([`KEPT_BLOCKS`]) because
//! the reader reads the index twice (once to check its digest, once to stream it). Every request
//! names the ETag seen when the object was opened, so an archive replaced while it is read is an
//! error, not a mix of two archives.

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use kpromote_archive::RandomAccess;

use super::StorageError;
use super::s3::{self, ObjectUrl};

/// Largest single ranged request: 4 MiB, a whole frame of frame A at the default frame size.
pub(crate) const BLOCK: u64 = 4 << 20;
/// Blocks kept per open archive (memory: at most `KEPT_BLOCKS × BLOCK`).
pub(crate) const KEPT_BLOCKS: usize = 4;

/// Bytes and requests fetched by every [`RemoteObject`] of this process, for `--stats` style
/// reports and the benchmark in `benches/RESULTS.md`.
static FETCHED_BYTES: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// (bytes, requests) fetched by ranged reads in this process so far.
#[must_use]
pub fn fetched() -> (u64, u64) {
    (
        FETCHED_BYTES.load(Ordering::Relaxed),
        REQUESTS.load(Ordering::Relaxed),
    )
}

/// One object, opened: its size and ETag are fixed at open.
pub struct RemoteObject {
    url: ObjectUrl,
    store: Arc<dyn ObjectStore>,
    len: u64,
    e_tag: Option<String>,
    blocks: Mutex<Vec<(u64, Bytes)>>,
}

impl std::fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteObject")
            .field("url", &self.url.to_string())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl RemoteObject {
    /// Opens `url`: one HEAD request for its size and ETag. Blocking.
    ///
    /// # Errors
    /// [`StorageError::Store`] (not found, refused), [`StorageError::Config`].
    pub(crate) fn open(url: &ObjectUrl) -> Result<Self, StorageError> {
        Self::open_with(url, &s3::S3Config::from_env()?)
    }

    /// [`RemoteObject::open`] with a given configuration.
    ///
    /// # Errors
    /// As [`RemoteObject::open`].
    pub fn open_with(url: &ObjectUrl, config: &s3::S3Config) -> Result<Self, StorageError> {
        let store = config.store_for(url)?;
        let head = {
            let (store, path) = (Arc::clone(&store), url.path());
            s3::block_on(async move { store.head(&path).await })
        }
        .map_err(|e| StorageError::store(url, &e))?;
        Ok(RemoteObject {
            url: url.clone(),
            store,
            len: head.size,
            e_tag: head.e_tag,
            blocks: Mutex::new(Vec::with_capacity(KEPT_BLOCKS)),
        })
    }

    fn cached(&self, offset: u64, buf: &mut [u8]) -> Option<usize> {
        let mut blocks = self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = blocks
            .iter()
            .position(|(start, data)| offset >= *start && offset < start + data.len() as u64)?;
        let (start, data) = blocks.remove(found);
        let at = usize::try_from(offset - start).ok()?;
        let n = buf.len().min(data.len() - at);
        buf[..n].copy_from_slice(&data[at..at + n]);
        // Most recently used last.
        blocks.push((start, data));
        Some(n)
    }

    fn fetch(&self, start: u64, end: u64) -> io::Result<Bytes> {
        let (store, path) = (Arc::clone(&self.store), self.url.path());
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            if_match: self.e_tag.clone(),
            ..GetOptions::default()
        };
        let data = s3::block_on(async move { store.get_opts(&path, options).await?.bytes().await })
            .map_err(|e| io::Error::other(StorageError::store(&self.url, &e).to_string()))?;
        if data.len() as u64 != end - start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: asked for bytes {start}..{end}, got {} bytes",
                    self.url,
                    data.len()
                ),
            ));
        }
        FETCHED_BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }
}

/// Whether `url` exists (a HEAD request), from async code.
///
/// # Errors
/// [`StorageError::Store`] for anything but "not found"; [`StorageError::Config`].
pub(crate) async fn exists(url: &ObjectUrl) -> Result<bool, StorageError> {
    let store = s3::store_for(url)?;
    let path = url.path();
    match s3::on_io(async move { store.head(&path).await }).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(StorageError::store(url, &e)),
    }
}

impl RandomAccess for RemoteObject {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, section_end: u64) -> io::Result<usize> {
        if buf.is_empty() || offset >= self.len {
            return Ok(0);
        }
        if let Some(n) = self.cached(offset, buf) {
            return Ok(n);
        }
        let want = (buf.len() as u64)
            .max(section_end.saturating_sub(offset))
            .min(BLOCK);
        let end = (offset + want).min(self.len);
        let data = self.fetch(offset, end)?;
        let n = buf.len().min(data.len());
        buf[..n].copy_from_slice(&data[..n]);
        if data.len() > n {
            let mut blocks = self
                .blocks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if blocks.len() == KEPT_BLOCKS {
                blocks.remove(0);
            }
            blocks.push((offset, data));
        }
        Ok(n)
    }
}
