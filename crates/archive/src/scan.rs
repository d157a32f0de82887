//! The scanning reader: one pass over a stream whose frame table is unknown. Used for pipes,
//! for files whose locator is missing (a truncated tail), and for plain Velero tarballs
//! (spec §9.3, §10).
//!
//! Entries come before the index in the stream, so their digests are spooled (through the
//! external sorter, which also finds duplicates in unsorted Velero tarballs) and joined with the
//! index once it arrives. Memory stays bounded.

use super::codec::{Codec, ConcatFrames};
use super::error::{ArchiveError, Result, location};
use super::layout::{self, INDEX_ENTRY, MANIFEST_ENTRY, VeleroPath};
use super::locator::{Locator, Tail};
use super::manifest::{self, ArchiveManifest, Inclusion, IndexRecord, ParsedLine, Summary};
use super::sort::{ExternalSorter, SortItem, Sorted};
use super::tar_header::EntryType;
use super::tar_stream::{Dialects, Next, TarStream};
use super::{FORMAT_MAJOR, FORMAT_MINOR, ReaderOptions};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};

/// Longest tail accepted after the tar stream: a locator is at most 90 bytes.
const MAX_TAIL: u64 = 4096;
/// Longest `metadata/version` accepted.
const MAX_VERSION_ENTRY: u64 = 64;
/// Memory for the digest sorter during a scan.
const SCAN_SORT_MEMORY: usize = 8 << 20;

/// A bounded list of problems.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub list: Vec<ArchiveError>,
    pub omitted: u64,
    max: usize,
}

impl Problems {
    pub(crate) fn new(max: usize) -> Self {
        Problems {
            list: Vec::new(),
            omitted: 0,
            max,
        }
    }

    pub(crate) fn push(&mut self, e: ArchiveError) {
        if self.list.len() < self.max {
            self.list.push(e);
        } else {
            self.omitted += 1;
        }
    }

    pub(crate) fn extend(&mut self, other: Problems) {
        self.omitted += other.omitted;
        for e in other.list {
            self.push(e);
        }
    }
}

/// What to keep of each object while scanning a Velero tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collect {
    /// Digests only (verification).
    Digests,
    /// Records and bodies, to hand out sorted objects.
    Objects,
}

/// What a scan found.
#[derive(Debug)]
pub(crate) enum ScanKind {
    /// A kpromote archive.
    Kpromote {
        manifest: Box<ArchiveManifest>,
        manifest_sha: [u8; 32],
        /// Offset and length of frame B.
        frame_b: (u64, u64),
        /// Whether a locator followed and agreed.
        anchored: bool,
    },
    /// A Velero tarball; with [`Collect::Objects`], its objects sorted by path.
    Velero { objects: Option<Sorted> },
}

/// The result of a scan.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    pub kind: ScanKind,
    pub problems: Problems,
    pub entries_checked: u64,
    pub summary: Summary,
    pub warnings: Vec<String>,
}

/// Scans a whole stream.
///
/// # Errors
/// Errors that make the stream unreadable (truncation, corruption, unknown version). Problems
/// with single entries are collected in the outcome instead.
pub(crate) fn scan<R: Read>(
    codec: Codec,
    input: R,
    options: &ReaderOptions,
    collect: Collect,
) -> Result<ScanOutcome> {
    let spill_dir = options.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let spill_err = |e: std::io::Error| ArchiveError::io(&spill_dir, e);
    let frames = ConcatFrames::new(codec, input, options.budget());
    let mut tar = TarStream::new(frames, Dialects::Velero);
    let mut sorter = ExternalSorter::new(SCAN_SORT_MEMORY, spill_dir.clone());
    let mut problems = Problems::new(options.max_problems);
    // Problems that only matter if this turns out to be a kpromote archive.
    let mut strict = Problems::new(options.max_problems);
    let mut summary = Summary::default();
    let mut prev: Option<String> = None;
    let mut version_seen = false;
    let mut first = true;
    let mut versioned_copies = 0u64;
    let mut kpromote: Option<KpromoteTail> = None;
    let mut body = Vec::new();

    loop {
        let header = match tar.next_header()? {
            Next::Entry(h) => h,
            Next::EndMarker => break,
            Next::EndOfInput => {
                return Err(ArchiveError::Truncated {
                    entry: tar.last().to_owned(),
                });
            }
        };
        let was_first = std::mem::replace(&mut first, false);
        if header.raw_path == MANIFEST_ENTRY.as_bytes() {
            let frame_b_start = tar.get_mut().current_start();
            kpromote = Some(read_frame_b(
                &mut tar,
                &header,
                frame_b_start,
                options,
                &spill_dir,
            )?);
            break;
        }
        match header.entry_type {
            EntryType::Regular => {}
            EntryType::Directory => {
                strict.push(ArchiveError::UnsupportedEntryType {
                    entry: header.display,
                    kind: header.entry_type.describe(),
                });
                continue;
            }
            other => {
                problems.push(ArchiveError::UnsupportedEntryType {
                    entry: header.display,
                    kind: other.describe(),
                });
                continue;
            }
        }
        let path = match layout::check_raw(&header.raw_path) {
            Ok(p) => p.to_owned(),
            Err(reason) => {
                problems.push(ArchiveError::UnsafePath {
                    entry: header.display,
                    reason,
                });
                continue;
            }
        };
        if let Some(p) = prev.as_deref()
            && path.as_str() < p
        {
            strict.push(ArchiveError::OutOfOrder {
                entry: path.clone(),
                previous: p.to_owned(),
            });
        }
        prev = Some(path.clone());
        let kind = match layout::parse_velero_path(&path) {
            Ok(kind) => kind,
            Err(reason) => {
                problems.push(ArchiveError::UnsafePath { entry: path, reason });
                continue;
            }
        };
        let size_cap = match kind {
            VeleroPath::Version => MAX_VERSION_ENTRY,
            _ => options.max_entry_bytes,
        };
        if header.size > size_cap {
            problems.push(ArchiveError::EntryTooLarge {
                entry: path,
                size: header.size,
                limit: size_cap,
            });
            continue;
        }
        match kind {
            VeleroPath::Version => {
                tar.read_data(&mut body)?;
                check_version_entry(&body)?;
                if !was_first {
                    strict.push(ArchiveError::OutOfOrder {
                        entry: path.clone(),
                        previous: "(start of archive)".to_owned(),
                    });
                }
                version_seen = true;
                if collect == Collect::Digests {
                    let sha: [u8; 32] = Sha256::digest(&body).into();
                    sorter
                        .push(digest_item(path, body.len() as u64, &sha))
                        .map_err(spill_err)?;
                }
            }
            VeleroPath::Object(key) => {
                tar.read_data(&mut body)?;
                let sha: [u8; 32] = Sha256::digest(&body).into();
                summary.add(&key, body.len() as u64);
                let item = match collect {
                    Collect::Digests => digest_item(path, body.len() as u64, &sha),
                    Collect::Objects => match velero_record(&key, &path, &body, &sha) {
                        Ok(line) => SortItem {
                            path,
                            line,
                            body: std::mem::take(&mut body),
                        },
                        Err(e) => {
                            problems.push(e);
                            continue;
                        }
                    },
                };
                sorter.push(item).map_err(spill_err)?;
            }
            VeleroPath::VersionedCopy => {
                versioned_copies += 1;
                strict.push(ArchiveError::UnsafePath {
                    entry: path,
                    reason: layout::PathError::BadShape,
                });
            }
            VeleroPath::Other => strict.push(ArchiveError::UnsafePath {
                entry: path,
                reason: layout::PathError::UnknownTopLevel,
            }),
        }
    }

    tar.expect_zero_tail(1)?;
    if tar.saw_pax() {
        strict.push(ArchiveError::UnsupportedEntryType {
            entry: location::FRAME_A.to_owned(),
            kind: EntryType::PaxLocal.describe(),
        });
    }
    let super::codec::StreamEnd { mut rest, frames } = tar.into_inner().finish()?;
    let mut tail = Vec::new();
    (&mut rest)
        .take(MAX_TAIL + 1)
        .read_to_end(&mut tail)
        .map_err(|e| ArchiveError::from_decode(e, location::LOCATOR))?;
    let mut warnings = Vec::new();

    let Some(kp) = kpromote else {
        if !version_seen {
            return Err(ArchiveError::NotAnArchive {
                entry: location::START.to_owned(),
                reason: format!("no {} entry", layout::VERSION_ENTRY),
            });
        }
        if !tail.is_empty() {
            problems.push(ArchiveError::MalformedHeader {
                entry: location::TRAILER.to_owned(),
                reason: "data after the end of the compressed tar stream".to_owned(),
            });
        }
        warnings.push(
            "Velero tarball: no manifest and no checksums, so the content cannot be verified".to_owned(),
        );
        if versioned_copies > 0 {
            warnings.push(format!(
                "{versioned_copies} API-group-version copies skipped (the classic copies are read)"
            ));
        }
        let sorted = sorter.finish().map_err(spill_err)?;
        let objects = match collect {
            Collect::Objects => Some(sorted),
            Collect::Digests => {
                let mut prev: Option<String> = None;
                for item in sorted {
                    let item = item.map_err(spill_err)?;
                    if prev.as_deref() == Some(item.path.as_str()) {
                        problems.push(ArchiveError::DuplicatePath {
                            entry: item.path.clone(),
                        });
                    }
                    prev = Some(item.path);
                }
                None
            }
        };
        return Ok(ScanOutcome {
            entries_checked: summary.objects,
            kind: ScanKind::Velero { objects },
            problems,
            summary,
            warnings,
        });
    };

    // A kpromote archive: entry-shape problems count now.
    problems.extend(strict);
    if kp.minor > FORMAT_MINOR {
        warnings.push(newer_minor_warning(kp.major, kp.minor));
    }
    // Frame B: from the frame where the manifest starts to the end of the last frame.
    let first_b = frames
        .iter()
        .position(|(offset, _)| *offset == kp.frame_b_start)
        .ok_or_else(|| ArchiveError::InvalidManifest {
            entry: MANIFEST_ENTRY.to_owned(),
            reason: "the manifest does not start its own frame".to_owned(),
        })?;
    let end_b = frames
        .last()
        .map_or(kp.frame_b_start, |(offset, len)| offset + len);
    let frame_b = (kp.frame_b_start, end_b - kp.frame_b_start);
    let observed: Vec<(u64, u64)> = frames[..first_b].to_vec();
    let recorded: Vec<(u64, u64)> = kp.manifest.frames.iter().map(|f| (f.offset, f.length)).collect();
    if observed != recorded {
        problems.push(ArchiveError::InvalidManifest {
            entry: MANIFEST_ENTRY.to_owned(),
            reason: "the frame table does not match the frames found".to_owned(),
        });
    }
    let anchored = if tail.is_empty() {
        warnings.push(
            "no locator at the end of the file (truncated tail or a stream): the manifest is checked only against itself"
                .to_owned(),
        );
        false
    } else {
        match (tail.len() == Locator::encoded_len(codec)).then(|| Locator::from_tail(codec, &tail)) {
            Some(Tail::Found(loc))
                if loc.frame_b_offset == frame_b.0
                    && loc.frame_b_len == frame_b.1
                    && loc.manifest_sha256 == kp.manifest_sha
                    && loc.major == kp.major
                    && loc.minor == kp.minor =>
            {
                true
            }
            Some(Tail::Found(_)) => {
                problems.push(ArchiveError::BadLocator {
                    entry: location::LOCATOR.to_owned(),
                    reason: "the locator disagrees with the frames and manifest found".to_owned(),
                });
                false
            }
            Some(Tail::Damaged(reason)) => {
                problems.push(ArchiveError::BadLocator {
                    entry: location::LOCATOR.to_owned(),
                    reason,
                });
                false
            }
            Some(Tail::Absent) | None => {
                problems.push(ArchiveError::BadLocator {
                    entry: location::LOCATOR.to_owned(),
                    reason: format!("{} bytes after frame B are not a locator", tail.len()),
                });
                false
            }
        }
    };
    for e in kp.index_problems {
        problems.push(e);
    }
    let sorted = sorter.finish().map_err(spill_err)?;
    let checked = join_spooled(kp.index_spool, sorted, options, &mut problems, &spill_dir)?;
    Ok(ScanOutcome {
        kind: ScanKind::Kpromote {
            manifest: kp.manifest,
            manifest_sha: kp.manifest_sha,
            frame_b,
            anchored,
        },
        problems,
        entries_checked: checked,
        summary,
        warnings,
    })
}

pub(crate) fn newer_minor_warning(major: u16, minor: u16) -> String {
    format!(
        "archive format {major}.{minor} is newer than this reader ({FORMAT_MAJOR}.{FORMAT_MINOR}); fields and entries it does not know are ignored"
    )
}

/// Checks a `metadata/version` body: Velero layout major 1.
fn check_version_entry(body: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(body).unwrap_or("").trim_end();
    let major = text.split('.').next().and_then(|m| m.parse::<u16>().ok());
    match major {
        Some(1) => Ok(()),
        Some(got) => Err(ArchiveError::UnsupportedVersion {
            entry: layout::VERSION_ENTRY.to_owned(),
            expected: 1,
            got,
        }),
        None => Err(ArchiveError::NotAnArchive {
            entry: layout::VERSION_ENTRY.to_owned(),
            reason: format!("content {text:?} is not a version"),
        }),
    }
}

fn digest_item(path: String, size: u64, sha: &[u8; 32]) -> SortItem {
    let mut line = Vec::with_capacity(40);
    line.extend_from_slice(&size.to_le_bytes());
    line.extend_from_slice(sha);
    SortItem {
        path,
        line,
        body: Vec::new(),
    }
}

fn parse_digest_item(item: &SortItem) -> Option<(u64, [u8; 32])> {
    if item.line.len() != 40 {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&item.line[..8]);
    let mut sha = [0u8; 32];
    sha.copy_from_slice(&item.line[8..]);
    Some((u64::from_le_bytes(size), sha))
}

/// Builds the record of a Velero object from its body (inclusion unrecorded).
fn velero_record(
    key: &kpromote_model::ObjectKey,
    path: &str,
    body: &[u8],
    sha: &[u8; 32],
) -> Result<Vec<u8>> {
    let invalid = |reason: String| ArchiveError::InvalidObject {
        entry: path.to_owned(),
        reason,
    };
    let head = manifest::parse_head(body).map_err(invalid)?;
    let meta = head.metadata.ok_or_else(|| invalid("no metadata".to_owned()))?;
    let record = IndexRecord {
        path: path.to_owned(),
        api_version: head.api_version.unwrap_or_default(),
        kind: head.kind.unwrap_or_default(),
        resource: key.resource.clone(),
        group: key.group.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        uid: meta.uid,
        owner_references: meta.owner_references,
        inclusion: Inclusion::Unrecorded,
        size: body.len() as u64,
        sha256: hex::encode(sha),
        encryption: None,
    };
    serde_json::to_vec(&record).map_err(|e| invalid(e.to_string()))
}

/// Frame B as found by a scan.
struct KpromoteTail {
    manifest: Box<ArchiveManifest>,
    manifest_sha: [u8; 32],
    major: u16,
    minor: u16,
    frame_b_start: u64,
    index_spool: File,
    index_problems: Vec<ArchiveError>,
}

/// Reads the manifest (whose header was just read), copies the index to a spool while hashing
/// it, and walks to the end-of-archive marker.
fn read_frame_b<R: Read>(
    tar: &mut TarStream<R>,
    manifest_header: &super::tar_stream::EntryHeader,
    frame_b_start: u64,
    options: &ReaderOptions,
    spill_dir: &std::path::Path,
) -> Result<KpromoteTail> {
    if manifest_header.entry_type != EntryType::Regular {
        return Err(ArchiveError::UnsupportedEntryType {
            entry: MANIFEST_ENTRY.to_owned(),
            kind: manifest_header.entry_type.describe(),
        });
    }
    if manifest_header.size > options.max_manifest_bytes {
        return Err(ArchiveError::EntryTooLarge {
            entry: MANIFEST_ENTRY.to_owned(),
            size: manifest_header.size,
            limit: options.max_manifest_bytes,
        });
    }
    let mut bytes = Vec::new();
    tar.read_data(&mut bytes)?;
    let manifest_sha: [u8; 32] = Sha256::digest(&bytes).into();
    let manifest = ArchiveManifest::parse_checked_version(&bytes)?;
    let (major, minor) = manifest.version()?;
    let mut index_problems = Vec::new();
    let index_header = match tar.next_header()? {
        Next::Entry(h) if h.raw_path == INDEX_ENTRY.as_bytes() && h.entry_type == EntryType::Regular => h,
        _ => {
            return Err(ArchiveError::InvalidManifest {
                entry: INDEX_ENTRY.to_owned(),
                reason: "missing after the manifest".to_owned(),
            });
        }
    };
    if index_header.size != manifest.index.size {
        index_problems.push(ArchiveError::SizeMismatch {
            entry: INDEX_ENTRY.to_owned(),
            expected: manifest.index.size,
            actual: index_header.size,
        });
    }
    let spool = tempfile::tempfile_in(spill_dir).map_err(|e| ArchiveError::io(spill_dir, e))?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, spool);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tar.read_some(&mut chunk)?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        out.write_all(&chunk[..n])
            .map_err(|e| ArchiveError::io(spill_dir, e))?;
    }
    let actual = hex::encode(hasher.finalize());
    if actual != manifest.index.sha256 {
        index_problems.push(ArchiveError::DigestMismatch {
            entry: INDEX_ENTRY.to_owned(),
            expected: manifest.index.sha256.clone(),
            actual,
        });
    }
    let mut spool = out
        .into_inner()
        .map_err(|e| ArchiveError::io(spill_dir, e.into_error()))?;
    spool
        .seek(SeekFrom::Start(0))
        .map_err(|e| ArchiveError::io(spill_dir, e))?;
    loop {
        match tar.next_header()? {
            Next::Entry(h) => {
                let ok = layout::check_raw(&h.raw_path)
                    .ok()
                    .and_then(|p| layout::parse_entry_path(p).ok())
                    .is_some_and(|k| matches!(k, layout::EntryPath::Kpromote(_)));
                if !ok || h.entry_type != EntryType::Regular {
                    index_problems.push(ArchiveError::UnexpectedEntry { entry: h.display });
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
    Ok(KpromoteTail {
        manifest: Box::new(manifest),
        manifest_sha,
        major,
        minor,
        frame_b_start,
        index_spool: spool,
        index_problems,
    })
}

/// Joins the spooled index with the sorted entry digests; returns the number of entries whose
/// digest matched.
fn join_spooled(
    index: File,
    sorted: Sorted,
    options: &ReaderOptions,
    problems: &mut Problems,
    spill_dir: &std::path::Path,
) -> Result<u64> {
    let spill_err = |e: std::io::Error| ArchiveError::io(spill_dir, e);
    let mut lines = BufReader::with_capacity(256 * 1024, index);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut prev_rec: Option<String> = None;
    let mut next_record = |problems: &mut Problems| -> Result<Option<ParsedLine>> {
        loop {
            line.clear();
            let n = (&mut lines)
                .take(options.max_index_line as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(spill_err)?;
            if n == 0 {
                return Ok(None);
            }
            line_no += 1;
            if line.last() != Some(&b'\n') {
                problems.push(ArchiveError::InvalidRecord {
                    entry: format!("{INDEX_ENTRY}:{line_no}"),
                    reason: "line too long or not ending with a newline".to_owned(),
                });
                return Ok(None);
            }
            match manifest::parse_index_line(&line[..line.len() - 1], line_no) {
                Ok(parsed) => {
                    if let Some(p) = prev_rec.as_deref() {
                        match parsed.path().cmp(p) {
                            Ordering::Greater => {}
                            Ordering::Equal => {
                                problems.push(ArchiveError::DuplicatePath {
                                    entry: parsed.path().to_owned(),
                                });
                                continue;
                            }
                            Ordering::Less => {
                                problems.push(ArchiveError::OutOfOrder {
                                    entry: parsed.path().to_owned(),
                                    previous: p.to_owned(),
                                });
                                continue;
                            }
                        }
                    }
                    prev_rec = Some(parsed.path().to_owned());
                    return Ok(Some(parsed));
                }
                Err(e) => problems.push(e),
            }
        }
    };
    let mut entries = sorted.peekable();
    let mut prev_entry: Option<String> = None;
    let mut next_entry = |problems: &mut Problems| -> Result<Option<(String, u64, [u8; 32])>> {
        loop {
            let Some(item) = entries.next() else {
                return Ok(None);
            };
            let item = item.map_err(spill_err)?;
            if prev_entry.as_deref() == Some(item.path.as_str()) {
                problems.push(ArchiveError::DuplicatePath { entry: item.path });
                continue;
            }
            prev_entry = Some(item.path.clone());
            let (size, sha) =
                parse_digest_item(&item).ok_or_else(|| spill_err(std::io::Error::other("bad spool item")))?;
            return Ok(Some((item.path, size, sha)));
        }
    };
    let mut rec = next_record(problems)?;
    let mut ent = next_entry(problems)?;
    let mut checked = 0u64;
    loop {
        let order = match (&rec, &ent) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(r), Some(e)) => r.path().cmp(e.0.as_str()),
        };
        match order {
            Ordering::Less => {
                if let Some(r) = rec.take() {
                    problems.push(ArchiveError::MissingEntry {
                        entry: r.path().to_owned(),
                    });
                }
                rec = next_record(problems)?;
            }
            Ordering::Greater => {
                if let Some(e) = ent.take() {
                    problems.push(ArchiveError::UnexpectedEntry { entry: e.0 });
                }
                ent = next_entry(problems)?;
            }
            Ordering::Equal => {
                if let (Some(r), Some((path, size, sha))) = (rec.take(), ent.take()) {
                    let actual = hex::encode(sha);
                    if let ParsedLine::Version { sha256, .. } = &r
                        && *sha256 != hex::encode(Sha256::digest(layout::VERSION_ENTRY_CONTENT))
                    {
                        problems.push(ArchiveError::NotAnArchive {
                            entry: layout::VERSION_ENTRY.to_owned(),
                            reason: "content is not the Velero 1.1.0 layout marker".to_owned(),
                        });
                    }
                    if size != r.size() {
                        problems.push(ArchiveError::SizeMismatch {
                            entry: path,
                            expected: r.size(),
                            actual: size,
                        });
                    } else if actual != r.sha256() {
                        problems.push(ArchiveError::DigestMismatch {
                            entry: path,
                            expected: r.sha256().to_owned(),
                            actual,
                        });
                    } else {
                        checked += 1;
                    }
                }
                rec = next_record(problems)?;
                ent = next_entry(problems)?;
            }
        }
    }
    Ok(checked)
}
