//! Reading tar entries from a decompressed stream, in memory, never touching the file system.
//!
//! [`TarStream`] yields one header at a time; the caller decides whether the entry is acceptable
//! and then reads or skips its data. GNU long names are folded into the entry they name; PAX
//! headers are honoured only in [`Dialects::Velero`] mode (kpromote writers never emit them).

use super::error::{ArchiveError, Result};
use super::tar_header::{self, BLOCK_SIZE, Block, EntryType};
use std::io::{self, Read};

/// Which meta entries the stream accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialects {
    /// kpromote archives: regular files and GNU long names only.
    Strict,
    /// Velero tarballs (Go `archive/tar`): also PAX extended and global headers.
    Velero,
}

/// One entry header, with meta records (long names, PAX) applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// The path bytes as found.
    pub raw_path: Vec<u8>,
    /// The path for messages: lossy UTF-8 with control characters escaped.
    pub display: String,
    /// Entry type.
    pub entry_type: EntryType,
    /// Data size.
    pub size: u64,
}

/// What comes next in the stream.
#[derive(Debug)]
pub enum Next {
    /// An entry header; its data must be read or skipped before asking again.
    Entry(EntryHeader),
    /// A zero block: the start of the end-of-archive marker.
    EndMarker,
    /// The input ended cleanly at a block boundary.
    EndOfInput,
}

/// A tar parser over any reader. Short reads are fine: every read goes through `read_exact`-like
/// loops.
#[derive(Debug)]
pub struct TarStream<R> {
    inner: R,
    dialects: Dialects,
    /// Data bytes of the current entry not yet consumed.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: usize,
    /// Display name of the last header, for errors.
    last: String,
    /// Bytes consumed from `inner`.
    consumed: u64,
    /// Whether a PAX header was honoured (Velero dialect only).
    saw_pax: bool,
}

impl<R: Read> TarStream<R> {
    /// A parser reading from `inner`.
    pub fn new(inner: R, dialects: Dialects) -> Self {
        TarStream {
            inner,
            dialects,
            remaining: 0,
            pad: 0,
            last: super::error::location::START.to_owned(),
            consumed: 0,
            saw_pax: false,
        }
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Whether a PAX header was met (legal in Velero tarballs, not in kpromote archives).
    pub fn saw_pax(&self) -> bool {
        self.saw_pax
    }

    /// The display name of the last entry seen (for error context).
    pub fn last(&self) -> &str {
        &self.last
    }

    /// Reads the next header, skipping whatever is left of the current entry first.
    ///
    /// # Errors
    /// `Truncated` when the input ends inside a block; `MalformedHeader` for a bad block; the
    /// underlying reader's errors.
    pub fn next_header(&mut self) -> Result<Next> {
        self.skip_rest()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax = tar_header::PaxOverrides::default();
        loop {
            let mut block = [0u8; BLOCK_SIZE];
            let got = self.fill(&mut block)?;
            if got == 0 {
                if long_name.is_some() || pax != tar_header::PaxOverrides::default() {
                    return Err(self.truncated());
                }
                return Ok(Next::EndOfInput);
            }
            if got < BLOCK_SIZE {
                return Err(self.truncated());
            }
            let header = match tar_header::parse_block(&block) {
                Ok(Block::Zero) => {
                    if long_name.is_some() {
                        return Err(self.malformed("long-name record not followed by an entry"));
                    }
                    return Ok(Next::EndMarker);
                }
                Ok(Block::Header(h)) => h,
                Err(reason) => return Err(self.malformed(&reason)),
            };
            match header.entry_type {
                EntryType::GnuLongName => {
                    if header.size > tar_header::MAX_LONG_NAME {
                        return Err(self.malformed("long-name record too long"));
                    }
                    let mut name = self.read_meta(header.size)?;
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    long_name = Some(name);
                }
                EntryType::PaxLocal if self.dialects == Dialects::Velero => {
                    if header.size > tar_header::MAX_PAX_HEADER {
                        return Err(self.malformed("PAX header too long"));
                    }
                    let data = self.read_meta(header.size)?;
                    pax = tar_header::parse_pax(&data).map_err(|e| self.malformed(&e))?;
                    self.saw_pax = true;
                }
                EntryType::PaxGlobal if self.dialects == Dialects::Velero => {
                    // Global headers carry defaults (times, charset) that do not matter here.
                    if header.size > tar_header::MAX_PAX_HEADER {
                        return Err(self.malformed("PAX header too long"));
                    }
                    self.read_meta(header.size)?;
                    self.saw_pax = true;
                }
                _ => {
                    let raw_path = pax.path.take().or(long_name.take()).unwrap_or(header.name);
                    let size = match pax.size.take() {
                        Some(size) if size != header.size && header.size != 0 => {
                            return Err(self.malformed("PAX size disagrees with header size"));
                        }
                        Some(size) => size,
                        None => header.size,
                    };
                    let display = display_path(&raw_path);
                    self.last.clone_from(&display);
                    self.remaining = size;
                    self.pad = tar_header::padding(size);
                    return Ok(Next::Entry(EntryHeader {
                        raw_path,
                        display,
                        entry_type: header.entry_type,
                        size,
                    }));
                }
            }
        }
    }

    /// Reads the whole data of the current entry into `buf` (cleared first). The caller has
    /// checked the size against its caps.
    ///
    /// # Errors
    /// `Truncated` if the data ends early; reader errors.
    pub fn read_data(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        let want = usize::try_from(self.remaining).map_err(|_| self.truncated())?;
        buf.resize(want, 0);
        let got = self.fill(buf)?;
        if got < want {
            return Err(self.truncated());
        }
        self.remaining = 0;
        self.skip_pad()
    }

    /// Reads up to `buf.len()` bytes of the current entry's data; 0 at its end.
    ///
    /// # Errors
    /// `Truncated` if the data ends early; reader errors.
    pub fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.remaining == 0 {
            self.skip_pad()?;
            return Ok(0);
        }
        let cap = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut buf[..cap]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::from_decode(e, &self.last)),
            }
        };
        if n == 0 {
            return Err(self.truncated());
        }
        self.consumed += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Skips what is left of the current entry's data.
    ///
    /// # Errors
    /// `Truncated` if the data ends early; reader errors.
    pub fn skip_rest(&mut self) -> Result<()> {
        let mut scratch = [0u8; 8192];
        while self.remaining > 0 {
            self.read_some(&mut scratch)?;
        }
        self.skip_pad()
    }

    /// After an end marker: checks the rest of the input is zero blocks (at least `min_blocks`
    /// more), up to the end of input. Used on frame B, which ends the tar stream.
    ///
    /// # Errors
    /// `MalformedHeader` if non-zero data follows; `Truncated` if the marker is short.
    pub fn expect_zero_tail(&mut self, min_blocks: usize) -> Result<()> {
        let mut zero_blocks = 0usize;
        loop {
            let mut block = [0u8; BLOCK_SIZE];
            let got = self.fill(&mut block)?;
            if got == 0 {
                break;
            }
            if got < BLOCK_SIZE || block.iter().any(|&b| b != 0) {
                return Err(ArchiveError::MalformedHeader {
                    entry: super::error::location::TRAILER.to_owned(),
                    reason: "data after the end-of-archive marker".to_owned(),
                });
            }
            zero_blocks += 1;
        }
        if zero_blocks < min_blocks {
            return Err(ArchiveError::Truncated {
                entry: super::error::location::TRAILER.to_owned(),
            });
        }
        Ok(())
    }

    fn skip_pad(&mut self) -> Result<()> {
        if self.pad > 0 {
            let mut pad = [0u8; BLOCK_SIZE];
            let want = self.pad;
            self.pad = 0;
            let got = self.fill(&mut pad[..want])?;
            if got < want {
                return Err(self.truncated());
            }
        }
        Ok(())
    }

    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>> {
        self.remaining = size;
        self.pad = tar_header::padding(size);
        let mut data = Vec::new();
        self.read_data(&mut data)?;
        Ok(data)
    }

    /// Reads until `buf` is full or the input ends; returns how much was read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::from_decode(e, &self.last)),
            }
        }
        self.consumed += got as u64;
        Ok(got)
    }

    fn truncated(&self) -> ArchiveError {
        ArchiveError::Truncated {
            entry: self.last.clone(),
        }
    }

    fn malformed(&self, reason: &str) -> ArchiveError {
        ArchiveError::MalformedHeader {
            entry: self.last.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// A path for messages: invalid UTF-8 replaced, control characters escaped, length bounded.
#[must_use]
pub fn display_path(raw: &[u8]) -> String {
    let lossy = String::from_utf8_lossy(&raw[..raw.len().min(2048)]);
    let mut out = String::with_capacity(lossy.len());
    for c in lossy.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
