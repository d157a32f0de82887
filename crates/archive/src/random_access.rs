//! Where an archive's bytes are read from: anything that reads a byte range at an offset. A file
//! on disk is one; a remote object read by ranged requests is another (`kpromote-core`'s
//! storage module implements it), so the format code stays free of any network or async runtime.

use std::fs::File;
use std::io;

/// Bytes readable at any offset, from several threads at once.
///
/// The reader reads sequentially within a section (a frame, the locator), so each call also says
/// where the current section ends: a remote implementation may fetch up to there in one request
/// instead of one request per buffer, and must not fetch beyond it (a reader of one object from a
/// large archive fetches only the frames it decodes).
pub trait RandomAccess: Send + Sync + std::fmt::Debug {
    /// The total length in bytes.
    ///
    /// # Errors
    /// The length cannot be learnt.
    fn len(&self) -> io::Result<u64>;

    /// Whether there are no bytes at all.
    ///
    /// # Errors
    /// As [`RandomAccess::len`].
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads at most `buf.len()` bytes at `offset`; `section_end` is where the sequential read
    /// this call belongs to stops (a hint, at least `offset`). Returns 0 only at the end.
    ///
    /// # Errors
    /// The bytes cannot be read.
    fn read_at(&self, buf: &mut [u8], offset: u64, section_end: u64) -> io::Result<usize>;
}

impl RandomAccess for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, _section_end: u64) -> io::Result<usize> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_at(self, buf, offset)
        }
        #[cfg(windows)]
        {
            std::os::windows::fs::FileExt::seek_read(self, buf, offset)
        }
    }
}
