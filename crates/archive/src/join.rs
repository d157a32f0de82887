//! The seekable reader's merge-join: the index (from frame B) and the entries (from frame A) read in
//! lockstep, a merge-join on their sorted paths. Nothing is held in memory but the current record
//! and the current entry, so duplicates, out-of-order, missing and extra entries are found with
//! memory independent of the object count (spec §9.2).

use super::codec::{Budget, FrameSeq, FrameSource, Pumped};
use super::error::{ArchiveError, Result, location};
use super::layout::{self, EntryPath, INDEX_ENTRY, MANIFEST_ENTRY};
use super::manifest::{self, FrameInfo, IndexInfo, ParsedLine};
use super::random_access::RandomAccess;
use super::tar_header::EntryType;
use super::tar_stream::{Dialects, Next, TarStream};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::sync::Arc;

/// A decompressed frame source, possibly running on its own thread.
pub(crate) type Source = Box<dyn FrameSource + Send>;

/// Opens a [`Source`] on the given frames (a suffix of the frame table).
pub(crate) type OpenFrames = dyn FnMut(&[FrameInfo]) -> Result<Source> + Send;

/// Makes a [`Source`] decoding the given frames, for [`EntrySide::resync`].
pub(crate) struct Reopen(pub(crate) Box<OpenFrames>);

impl std::fmt::Debug for Reopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reopen")
    }
}

/// Builds a source decoding `frames` of `file`; `pump` moves decoding to a thread.
pub(crate) fn source(
    codec: super::codec::Codec,
    file: &Arc<dyn RandomAccess>,
    frames: Vec<(u64, u64)>,
    budget: Budget,
    what: &'static str,
    pump: bool,
) -> Result<Source> {
    let mut seq = FrameSeq::new(codec, Arc::clone(file), frames, budget, what);
    if what == location::FRAME_B {
        // Frame B may be written as several frames (spec §4.1); kpromote 1.0 writes one.
        seq = seq.concatenated();
    }
    seq.start()?;
    Ok(if pump {
        Box::new(Pumped::spawn(seq))
    } else {
        Box::new(seq)
    })
}

/// Which paths a read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Range {
    /// Everything.
    All,
    /// Paths starting with the prefix (one group-resource).
    Prefix(String),
    /// One path.
    Exact(String),
}

impl Range {
    fn place(&self, path: &str) -> Ordering {
        match self {
            Range::All => Ordering::Equal,
            Range::Prefix(p) => {
                if path.starts_with(p.as_str()) {
                    Ordering::Equal
                } else {
                    path.cmp(p.as_str())
                }
            }
            Range::Exact(p) => path.cmp(p.as_str()),
        }
    }

    /// The first path the range can hold, for seeking.
    pub(crate) fn start(&self) -> Option<&str> {
        match self {
            Range::All => None,
            Range::Prefix(p) | Range::Exact(p) => Some(p),
        }
    }
}

/// Reads the index entry of frame B line by line, hashing it, checking order and, at the end,
/// its digest, size and record count against the manifest.
pub(crate) struct IndexSide {
    tar: TarStream<Source>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    hasher: Sha256,
    read: u64,
    line_no: u64,
    records: u64,
    info: IndexInfo,
    prev: Option<String>,
    max_line: usize,
    finished: bool,
}

impl std::fmt::Debug for IndexSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexSide")
            .field("line_no", &self.line_no)
            .finish_non_exhaustive()
    }
}

impl IndexSide {
    /// Positions on the index data: checks the manifest entry (again, against `manifest_sha`)
    /// and the index header.
    pub(crate) fn open(
        source: Source,
        info: IndexInfo,
        manifest_sha: &[u8; 32],
        max_manifest: u64,
        max_line: usize,
    ) -> Result<Self> {
        let mut tar = TarStream::new(source, Dialects::Strict);
        let manifest_header = expect_entry(&mut tar, MANIFEST_ENTRY, max_manifest)?;
        let mut bytes = Vec::new();
        tar.read_data(&mut bytes)?;
        let actual: [u8; 32] = Sha256::digest(&bytes).into();
        if &actual != manifest_sha {
            return Err(ArchiveError::DigestMismatch {
                entry: MANIFEST_ENTRY.to_owned(),
                expected: hex::encode(manifest_sha),
                actual: hex::encode(actual),
            });
        }
        let _ = manifest_header;
        let size = expect_entry(&mut tar, INDEX_ENTRY, u64::MAX)?;
        if size != info.size {
            return Err(ArchiveError::SizeMismatch {
                entry: INDEX_ENTRY.to_owned(),
                expected: info.size,
                actual: size,
            });
        }
        Ok(IndexSide {
            tar,
            buf: vec![0u8; 256 * 1024],
            start: 0,
            end: 0,
            hasher: Sha256::new(),
            read: 0,
            line_no: 0,
            records: 0,
            info,
            prev: None,
            max_line,
            finished: false,
        })
    }

    /// The next record, `None` after the last one (once the digest and trailer are checked).
    /// Entry-local errors (a bad line) skip that line; others end the index.
    pub(crate) fn next_line(&mut self) -> Result<Option<ParsedLine>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(pos) = self.buf[self.start..self.end].iter().position(|&b| b == b'\n') {
                let line_end = self.start + pos;
                let line = &self.buf[self.start..=line_end];
                self.hasher.update(line);
                self.read += line.len() as u64;
                self.line_no += 1;
                self.records += 1;
                let parsed = manifest::parse_index_line(&self.buf[self.start..line_end], self.line_no);
                self.start = line_end + 1;
                let parsed = parsed?;
                if self.line_no == 1 && !matches!(parsed, ParsedLine::Version { .. }) {
                    return Err(ArchiveError::InvalidRecord {
                        entry: parsed.path().to_owned(),
                        reason: format!("the first record must be {}", layout::VERSION_ENTRY),
                    });
                }
                check_order(&mut self.prev, parsed.path())?;
                return Ok(Some(parsed));
            }
            if self.end - self.start > self.max_line {
                self.finished = true;
                return Err(ArchiveError::InvalidRecord {
                    entry: format!("{INDEX_ENTRY}:{}", self.line_no + 1),
                    reason: format!("line longer than {} bytes", self.max_line),
                });
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = match self.tar.read_some(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) => {
                    self.finished = true;
                    return Err(e);
                }
            };
            if n == 0 {
                self.finished = true;
                if self.end > 0 {
                    return Err(ArchiveError::InvalidRecord {
                        entry: format!("{INDEX_ENTRY}:{}", self.line_no + 1),
                        reason: "last line does not end with a newline".to_owned(),
                    });
                }
                self.finish_checks()?;
                return Ok(None);
            }
            self.end += n;
        }
    }

    fn finish_checks(&mut self) -> Result<()> {
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.info.sha256 {
            return Err(ArchiveError::DigestMismatch {
                entry: INDEX_ENTRY.to_owned(),
                expected: self.info.sha256.clone(),
                actual,
            });
        }
        if self.records != self.info.records {
            return Err(ArchiveError::InvalidManifest {
                entry: MANIFEST_ENTRY.to_owned(),
                reason: format!(
                    "index.records is {} but the index has {} lines",
                    self.info.records, self.records
                ),
            });
        }
        // Anything after the index: further kpromote/ entries from a newer minor version
        // (ignored, still checked for safety), then the end-of-archive marker.
        loop {
            match self.tar.next_header()? {
                Next::Entry(h) => {
                    let path = layout::check_raw(&h.raw_path).map_err(|reason| ArchiveError::UnsafePath {
                        entry: h.display.clone(),
                        reason,
                    })?;
                    if !matches!(layout::parse_entry_path(path), Ok(EntryPath::Kpromote(_))) {
                        return Err(ArchiveError::UnexpectedEntry { entry: h.display });
                    }
                    if h.entry_type != EntryType::Regular {
                        return Err(ArchiveError::UnsupportedEntryType {
                            entry: h.display,
                            kind: h.entry_type.describe(),
                        });
                    }
                }
                Next::EndMarker => break,
                Next::EndOfInput => {
                    return Err(ArchiveError::Truncated {
                        entry: location::TRAILER.to_owned(),
                    });
                }
            }
        }
        self.tar.expect_zero_tail(1)?;
        if self.tar.get_mut().next_frame()? {
            return Err(ArchiveError::BadLocator {
                entry: location::LOCATOR.to_owned(),
                reason: "frame B is followed by another frame".to_owned(),
            });
        }
        Ok(())
    }

    /// Reads the whole index, checking everything; used to verify it before trusting records.
    /// Hashes the index without parsing it: what a reader does before trusting any record.
    /// The per-line checks, the record count and the trailer are checked by the pass that
    /// then streams the records.
    pub(crate) fn check_digest(mut self) -> Result<()> {
        let mut hasher = Sha256::new();
        loop {
            let n = self.tar.read_some(&mut self.buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&self.buf[..n]);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != self.info.sha256 {
            return Err(ArchiveError::DigestMismatch {
                entry: INDEX_ENTRY.to_owned(),
                expected: self.info.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// Reads the next header and checks it is the regular entry `path`; returns its size.
fn expect_entry(tar: &mut TarStream<Source>, path: &str, max: u64) -> Result<u64> {
    match tar.next_header()? {
        Next::Entry(h) if h.raw_path == path.as_bytes() && h.entry_type == EntryType::Regular => {
            if h.size > max {
                return Err(ArchiveError::EntryTooLarge {
                    entry: path.to_owned(),
                    size: h.size,
                    limit: max,
                });
            }
            Ok(h.size)
        }
        Next::Entry(h) => Err(ArchiveError::InvalidManifest {
            entry: path.to_owned(),
            reason: format!("frame B holds `{}` where `{path}` was expected", h.display),
        }),
        Next::EndMarker | Next::EndOfInput => Err(ArchiveError::InvalidManifest {
            entry: path.to_owned(),
            reason: "missing from frame B".to_owned(),
        }),
    }
}

/// Checks `path` comes strictly after the previous one, and records it.
fn check_order(prev: &mut Option<String>, path: &str) -> Result<()> {
    if let Some(p) = prev.as_deref() {
        match path.cmp(p) {
            Ordering::Greater => {}
            Ordering::Equal => {
                return Err(ArchiveError::DuplicatePath {
                    entry: path.to_owned(),
                });
            }
            Ordering::Less => {
                return Err(ArchiveError::OutOfOrder {
                    entry: path.to_owned(),
                    previous: p.to_owned(),
                });
            }
        }
    }
    *prev = Some(path.to_owned());
    Ok(())
}

/// An entry of frame A, read and hashed.
#[derive(Debug)]
pub(crate) struct EntryItem {
    pub path: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub body: Option<Vec<u8>>,
}

/// Reads the entries of frame A frame by frame, checking each against the frame table.
pub(crate) struct EntrySide {
    tar: TarStream<Source>,
    /// Opens a source on a suffix of the frame table: how a lenient reading resumes at the
    /// frame after a damaged one ([`EntrySide::resync`]).
    reopen: Option<Reopen>,
    frames: Vec<FrameInfo>,
    frame: usize,
    in_frame: u64,
    frame_start: u64,
    prev: Option<String>,
    max_entry: u64,
    range: Range,
    keep_body: bool,
    finished: bool,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for EntrySide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntrySide")
            .field("frame", &self.frame)
            .finish_non_exhaustive()
    }
}

impl EntrySide {
    /// Reads the given frames (a suffix of the frame table) from `source`.
    pub(crate) fn new(
        source: Source,
        frames: Vec<FrameInfo>,
        max_entry: u64,
        range: Range,
        keep_body: bool,
    ) -> Self {
        EntrySide {
            tar: TarStream::new(source, Dialects::Strict),
            reopen: None,
            frames,
            frame: 0,
            in_frame: 0,
            frame_start: 0,
            prev: None,
            max_entry,
            range,
            keep_body,
            finished: false,
            scratch: Vec::new(),
        }
    }

    /// The next entry within the range; `None` at the end of frame A or past the range.
    /// Entry-local errors skip that entry.
    pub(crate) fn next_entry(&mut self) -> Result<Option<EntryItem>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let header = match self.tar.next_header() {
                Ok(Next::Entry(h)) => h,
                Ok(Next::EndOfInput) => {
                    self.end_frame()?;
                    continue;
                }
                Ok(Next::EndMarker) => {
                    self.finished = true;
                    return Err(ArchiveError::MalformedHeader {
                        entry: self.tar.last().to_owned(),
                        reason: "end-of-archive marker inside frame A".to_owned(),
                    });
                }
                Err(e) => {
                    self.finished = true;
                    return Err(e);
                }
            };
            let first_in_frame = self.in_frame == 0;
            self.in_frame += 1;
            if first_in_frame {
                let expected = self.frames.get(self.frame).map(|f| f.first_path.as_bytes());
                if expected != Some(&header.raw_path[..]) {
                    self.finished = true;
                    return Err(ArchiveError::InvalidManifest {
                        entry: MANIFEST_ENTRY.to_owned(),
                        reason: format!(
                            "frame {} starts with `{}`, not with the path the frame table records",
                            self.frame, header.display
                        ),
                    });
                }
            }
            if header.entry_type != EntryType::Regular {
                return Err(ArchiveError::UnsupportedEntryType {
                    entry: header.display,
                    kind: header.entry_type.describe(),
                });
            }
            let path = match layout::check_raw(&header.raw_path).and_then(|p| {
                layout::parse_entry_path(p).and_then(|kind| match kind {
                    EntryPath::Version | EntryPath::Object(_) => Ok(p),
                    EntryPath::Kpromote(_) => Err(layout::PathError::UnknownTopLevel),
                })
            }) {
                Ok(p) => p.to_owned(),
                Err(reason) => {
                    return Err(ArchiveError::UnsafePath {
                        entry: header.display,
                        reason,
                    });
                }
            };
            match self.range.place(&path) {
                Ordering::Less => continue,
                Ordering::Greater => {
                    self.finished = true;
                    return Ok(None);
                }
                Ordering::Equal => {}
            }
            check_order(&mut self.prev, &path)?;
            if header.size > self.max_entry {
                return Err(ArchiveError::EntryTooLarge {
                    entry: path,
                    size: header.size,
                    limit: self.max_entry,
                });
            }
            let (sha256, body) = if self.keep_body {
                let mut body = Vec::new();
                self.tar.read_data(&mut body)?;
                (Sha256::digest(&body).into(), Some(body))
            } else {
                let mut hasher = Sha256::new();
                if self.scratch.is_empty() {
                    self.scratch = vec![0u8; 64 * 1024];
                }
                loop {
                    let n = self.tar.read_some(&mut self.scratch)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&self.scratch[..n]);
                }
                (hasher.finalize().into(), None)
            };
            return Ok(Some(EntryItem {
                path,
                size: header.size,
                sha256,
                body,
            }));
        }
    }

    /// At the end of a frame: check it against the table and move to the next.
    /// Lets [`EntrySide::resync`] resume after damage, through `reopen`.
    pub(crate) fn resumable(mut self, reopen: Reopen) -> Self {
        self.reopen = Some(reopen);
        self
    }

    /// After an error that ends the current frame (undecodable data, a malformed header),
    /// resumes at the next frame of the frame table: frames are independent, so the damage stays
    /// in one. Returns whether reading goes on (false: not resumable, or no frame left).
    pub(crate) fn resync(&mut self) -> bool {
        let Some(reopen) = self.reopen.as_mut() else {
            return false;
        };
        let next = self.frame + 1;
        if next >= self.frames.len() {
            self.finished = true;
            return false;
        }
        match (reopen.0)(&self.frames[next..]) {
            Ok(source) => {
                self.tar = TarStream::new(source, Dialects::Strict);
                self.frame = next;
                self.in_frame = 0;
                self.frame_start = 0;
                self.finished = false;
                true
            }
            Err(_) => {
                self.finished = true;
                false
            }
        }
    }

    fn end_frame(&mut self) -> Result<()> {
        let Some(info) = self.frames.get(self.frame) else {
            self.finished = true;
            return Ok(());
        };
        let consumed = self.tar.consumed() - self.frame_start;
        if self.in_frame != info.entries || consumed != info.uncompressed {
            self.finished = true;
            return Err(ArchiveError::InvalidManifest {
                entry: MANIFEST_ENTRY.to_owned(),
                reason: format!(
                    "frame {} holds {} entries in {consumed} bytes; the frame table says {} in {}",
                    self.frame, self.in_frame, info.entries, info.uncompressed
                ),
            });
        }
        let more = match self.tar.get_mut().next_frame() {
            Ok(more) => more,
            Err(e) => {
                self.finished = true;
                return Err(e);
            }
        };
        self.frame += 1;
        self.in_frame = 0;
        self.frame_start = self.tar.consumed();
        if !more {
            self.finished = true;
        }
        Ok(())
    }
}

/// One matched pair from the join.
#[derive(Debug)]
pub(crate) struct Matched {
    pub line: ParsedLine,
    pub body: Option<Vec<u8>>,
}

/// Merge-join of the index and the entries.
#[derive(Debug)]
pub(crate) struct Join {
    index: IndexSide,
    entries: EntrySide,
    range: Range,
    rec: Option<ParsedLine>,
    ent: Option<EntryItem>,
    index_done: bool,
    entries_done: bool,
    fused: bool,
    /// Whether a bad frame is skipped ([`EntrySide::resync`]) rather than ending the join.
    lenient: bool,
    /// An entry refused for itself (too large, not a regular file): its record, if any, is
    /// dropped rather than reported again as missing.
    refused: Option<String>,
}

impl Join {
    pub(crate) fn new(index: IndexSide, entries: EntrySide, range: Range) -> Self {
        Join {
            index,
            entries,
            range,
            rec: None,
            ent: None,
            index_done: false,
            entries_done: false,
            fused: false,
            lenient: false,
            refused: None,
        }
    }

    /// Goes on after a damaged frame, at the next one (the entries side must be resumable).
    pub(crate) fn lenient(mut self) -> Self {
        self.lenient = true;
        self
    }

    /// The next matched entry, or an error about one entry (reading goes on after
    /// entry-local errors) or about the archive (then nothing more comes).
    pub(crate) fn next_item(&mut self) -> Option<Result<Matched>> {
        if self.fused {
            return None;
        }
        let out = self.step();
        if let Some(Err(e)) = &out
            && !e.is_entry_local()
            && (!self.lenient || self.entries_done)
        {
            self.fused = true;
        }
        out
    }

    fn step(&mut self) -> Option<Result<Matched>> {
        loop {
            if self.rec.is_none() && !self.index_done {
                match self.index.next_line() {
                    Ok(Some(line)) => match self.range.place(line.path()) {
                        Ordering::Less => continue,
                        Ordering::Greater => {
                            self.index_done = true;
                        }
                        Ordering::Equal => self.rec = Some(line),
                    },
                    Ok(None) => self.index_done = true,
                    Err(e) => {
                        if !e.is_entry_local() {
                            self.index_done = true;
                        }
                        return Some(Err(e));
                    }
                }
            }
            if let (Some(rec), Some(refused)) = (&self.rec, &self.refused) {
                match rec.path().cmp(refused.as_str()) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        self.rec = None;
                        self.refused = None;
                        continue;
                    }
                    Ordering::Greater => self.refused = None,
                }
            }
            if self.ent.is_none() && !self.entries_done {
                match self.entries.next_entry() {
                    Ok(Some(item)) => self.ent = Some(item),
                    Ok(None) => self.entries_done = true,
                    Err(e) => {
                        match &e {
                            ArchiveError::EntryTooLarge { entry, .. }
                            | ArchiveError::UnsupportedEntryType { entry, .. } => {
                                self.refused = Some(entry.clone());
                            }
                            _ if !e.is_entry_local() => {
                                self.entries_done = !(self.lenient && self.entries.resync());
                            }
                            _ => {}
                        }
                        return Some(Err(e));
                    }
                }
            }
            let order = match (&self.rec, &self.ent) {
                (None, None) => {
                    if self.index_done && self.entries_done {
                        return None;
                    }
                    continue;
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(r), Some(e)) => r.path().cmp(e.path.as_str()),
            };
            return Some(match order {
                Ordering::Less => {
                    let rec = self.rec.take()?;
                    Err(ArchiveError::MissingEntry {
                        entry: rec.path().to_owned(),
                    })
                }
                Ordering::Greater => {
                    let ent = self.ent.take()?;
                    Err(ArchiveError::UnexpectedEntry { entry: ent.path })
                }
                Ordering::Equal => {
                    let rec = self.rec.take()?;
                    let ent = self.ent.take()?;
                    compare(rec, ent)
                }
            });
        }
    }
}

fn compare(rec: ParsedLine, ent: EntryItem) -> Result<Matched> {
    if rec.size() != ent.size {
        return Err(ArchiveError::SizeMismatch {
            entry: ent.path,
            expected: rec.size(),
            actual: ent.size,
        });
    }
    let actual = hex::encode(ent.sha256);
    if actual != rec.sha256() {
        return Err(ArchiveError::DigestMismatch {
            entry: ent.path,
            expected: rec.sha256().to_owned(),
            actual,
        });
    }
    Ok(Matched {
        line: rec,
        body: ent.body,
    })
}
