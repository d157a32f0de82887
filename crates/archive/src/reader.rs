//! The archive reader: never extracts to disk, verifies every entry as it reads, bounded memory.

use super::codec::{Codec, Section};
use super::error::{ArchiveError, Result, location};
use super::join::{self, EntrySide, IndexSide, Join, Range};
use super::layout::{self, MANIFEST_ENTRY, VERSION_ENTRY_CONTENT};
use super::locator::{Locator, Tail};
use super::manifest::{ArchiveFacts, ArchiveManifest, IndexRecord, ParsedLine, Summary};
use super::random_access::RandomAccess;
use super::scan::{self, Collect, Problems, ScanKind};
use super::seal::{self, Encryption, Identities, Keys};
use super::sort::Sorted;
use super::tar_stream::{Dialects, Next, TarStream};
use super::{DEFAULT_MAX_ENTRY_BYTES, FORMAT_MAJOR, FORMAT_MINOR};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Default cap on the total decompressed size: 64 GiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 << 30;
/// Default cap on the manifest: 64 MiB (it holds one line per frame, ~150 bytes each).
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Default cap on one index line: 1 MiB (a record with many owner references is a few KiB).
pub const DEFAULT_MAX_INDEX_LINE: usize = 1 << 20;
/// Default cap on the decompression ratio: 250 decoded bytes per compressed byte. Kubernetes
/// JSON compresses about 10:1 with zstd; a file far beyond that is a decompression bomb, which
/// the total cap alone would let run to 64 GiB.
pub const DEFAULT_MAX_RATIO: u64 = 250;
/// Decoded bytes allowed whatever the ratio: 64 MiB, so a small archive of very repetitive
/// objects (a ConfigMap of one repeated character) still reads.
pub const DEFAULT_RATIO_FLOOR: u64 = 64 << 20;
/// Default number of problems a verification report keeps (the rest are counted).
pub const DEFAULT_MAX_PROBLEMS: usize = 10_000;

/// Limits and scratch space of a reader. The defaults suit any archive kpromote writes; lower
/// them to read untrusted archives on a small machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderOptions {
    /// Largest entry held in memory (decompression-bomb defence).
    pub max_entry_bytes: u64,
    /// Largest total decompressed size.
    pub max_total_bytes: u64,
    /// Largest decompression ratio (decoded bytes per compressed byte of what is read).
    pub max_ratio: u64,
    /// Decoded bytes allowed whatever the ratio.
    pub ratio_floor: u64,
    /// Largest manifest.
    pub max_manifest_bytes: u64,
    /// Longest index line.
    pub max_index_line: usize,
    /// Problems kept by `verify`.
    pub max_problems: usize,
    /// Scratch directory for scans of unsorted or locator-less input; default: the system's.
    pub spill_dir: Option<PathBuf>,
    /// Whether full reads decompress on a thread of their own: `None` decides by size (above
    /// 4 MiB), `Some(_)` forces the choice.
    pub decode_thread: Option<bool>,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_ratio: DEFAULT_MAX_RATIO,
            ratio_floor: DEFAULT_RATIO_FLOOR,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_index_line: DEFAULT_MAX_INDEX_LINE,
            max_problems: DEFAULT_MAX_PROBLEMS,
            spill_dir: None,
            decode_thread: None,
        }
    }
}

impl ReaderOptions {
    /// Sets the per-entry cap.
    #[must_use]
    pub fn max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// Sets the total decompressed cap.
    #[must_use]
    pub fn max_total_bytes(mut self, bytes: u64) -> Self {
        self.max_total_bytes = bytes;
        self
    }

    /// Sets the decompression-ratio cap: at most `ratio` decoded bytes per compressed byte,
    /// beyond the first `floor` decoded bytes.
    #[must_use]
    pub fn max_ratio(mut self, ratio: u64, floor: u64) -> Self {
        self.max_ratio = ratio;
        self.ratio_floor = floor;
        self
    }

    /// The decoding budget these options give.
    pub(crate) fn budget(&self) -> super::codec::Budget {
        super::codec::Budget {
            total: self.max_total_bytes,
            ratio: self.max_ratio,
            floor: self.ratio_floor,
        }
    }

    /// Forces (or forbids) decoding on a separate thread.
    #[must_use]
    pub fn decode_thread(mut self, on: bool) -> Self {
        self.decode_thread = Some(on);
        self
    }

    /// Sets the scratch directory.
    #[must_use]
    pub fn spill_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }
}

/// What kind of archive a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A kpromote archive: manifest, index, checksums.
    Kpromote,
    /// A plain Velero 1.x tarball: objects only, read-only, unverifiable.
    Velero,
}

/// One verified object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveObject {
    /// Its index record.
    pub record: IndexRecord,
    /// Its JSON, exactly as archived: the stored bytes, whose SHA-256 matched the record, or
    /// for a sealed entry the JSON they decrypt to (age authenticates it).
    pub json: Vec<u8>,
}

impl ArchiveObject {
    /// Parses the JSON.
    ///
    /// # Errors
    /// [`ArchiveError::InvalidObject`] when it is not JSON.
    pub fn value(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.json).map_err(|e| ArchiveError::InvalidObject {
            entry: self.record.path.clone(),
            reason: e.to_string(),
        })
    }
}

/// The outcome of [`ArchiveReader::verify`].
#[derive(Debug)]
pub struct VerifyReport {
    /// The archive kind.
    pub kind: ArchiveKind,
    /// The codec.
    pub codec: Codec,
    /// Whether the chain of trust starts at a locator that agreed with everything.
    pub anchored: bool,
    /// Entries whose digest (and size) matched their record. For Velero tarballs: objects read.
    pub entries_checked: u64,
    /// Every problem found, up to [`ReaderOptions::max_problems`].
    pub problems: Vec<ArchiveError>,
    /// Problems found beyond the cap.
    pub problems_omitted: u64,
    /// Things that are not errors but limit what was verified.
    pub warnings: Vec<String>,
}

impl VerifyReport {
    /// No problem found.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }

    /// No problem found and everything was verifiable: a kpromote archive whose locator,
    /// manifest, index and entries all agree.
    #[must_use]
    pub fn is_fully_verified(&self) -> bool {
        self.is_ok() && self.anchored && self.kind == ArchiveKind::Kpromote
    }

    fn from_problems(
        kind: ArchiveKind,
        codec: Codec,
        anchored: bool,
        checked: u64,
        problems: Problems,
        warnings: Vec<String>,
    ) -> Self {
        VerifyReport {
            kind,
            codec,
            anchored,
            entries_checked: checked,
            problems: problems.list,
            problems_omitted: problems.omitted,
            warnings,
        }
    }
}

#[derive(Debug)]
struct KpromoteState {
    manifest: ArchiveManifest,
    manifest_sha: [u8; 32],
    frame_b: (u64, u64),
    anchored: bool,
    index_verified: AtomicBool,
}

impl KpromoteState {
    /// Whether decoding is worth a thread of its own: it overlaps decompression with hashing
    /// and parsing, which pays off beyond a few MiB.
    fn is_large(&self) -> bool {
        let total: u64 =
            self.manifest.frames.iter().map(|f| f.uncompressed).sum::<u64>() + self.manifest.index.size;
        total > PUMP_THRESHOLD
    }
}

/// Uncompressed size above which full reads decode on a separate thread.
const PUMP_THRESHOLD: u64 = 4 << 20;

#[derive(Debug)]
enum Inner {
    Kpromote(Box<KpromoteState>),
    Velero { summary: Summary },
}

/// Reads one archive file. Cheap to open: only the locator and the manifest are read.
///
/// # Guarantees
/// - Never writes to disk except unnamed scratch files (scans of locator-less files and Velero
///   tarballs); never extracts.
/// - Every object handed out has a SHA-256 equal to its index record, and every record comes
///   from an index whose SHA-256 equals the manifest's, whose SHA-256 equals the locator's.
/// - Memory is bounded by the caps in [`ReaderOptions`], not by the object count.
///
/// # Security
/// See the [module docs](super#security).
#[derive(Debug)]
pub struct ArchiveReader {
    path: PathBuf,
    file: Arc<dyn RandomAccess>,
    codec: Codec,
    options: ReaderOptions,
    inner: Inner,
    warnings: Vec<String>,
    keys: Keys,
}

impl ArchiveReader {
    /// Opens an archive with default limits.
    ///
    /// # Errors
    /// As [`ArchiveReader::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, ReaderOptions::default())
    }

    /// Opens an archive: detects the codec from its first bytes, reads the locator and the
    /// manifest and checks the manifest's digest. Without a locator (a truncated tail, a
    /// Velero tarball) the whole file is scanned once to find what it is.
    ///
    /// # Errors
    /// [`ArchiveError::Io`], [`ArchiveError::UnknownCodec`],
    /// [`ArchiveError::UnsupportedVersion`], [`ArchiveError::BadLocator`],
    /// [`ArchiveError::DigestMismatch`] (manifest), [`ArchiveError::InvalidManifest`],
    /// [`ArchiveError::Truncated`], [`ArchiveError::NotAnArchive`] and decoding errors.
    pub fn open_with(path: impl AsRef<Path>, options: ReaderOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| ArchiveError::io(&path, e))?;
        Self::open_source(path, Arc::new(file), options)
    }

    /// Opens an archive from any [`RandomAccess`] source (a remote object read by ranged
    /// requests); `name` is what errors and [`ArchiveReader::path`] call it. Reads what
    /// [`ArchiveReader::open_with`] reads: the first bytes, the locator and the manifest.
    ///
    /// # Errors
    /// As [`ArchiveReader::open_with`].
    pub fn open_source(
        name: impl Into<PathBuf>,
        file: Arc<dyn RandomAccess>,
        options: ReaderOptions,
    ) -> Result<Self> {
        let path = name.into();
        let len = file.len().map_err(|e| ArchiveError::io(&path, e))?;
        let mut magic = [0u8; 4];
        let head_len = len.min(4) as usize;
        Section::new(Arc::clone(&file), 0, len)
            .read_exact_at_start(&mut magic[..head_len])
            .map_err(|e| ArchiveError::io(&path, e))?;
        let codec = Codec::detect(&magic[..head_len]).ok_or_else(|| ArchiveError::UnknownCodec {
            archive: path.clone(),
            magic: hex::encode(&magic[..head_len]),
        })?;
        let tail_len = len.min(Locator::encoded_len(codec) as u64);
        let mut tail = vec![0u8; tail_len as usize];
        Section::new(Arc::clone(&file), len - tail_len, tail_len)
            .read_exact_at_start(&mut tail)
            .map_err(|e| ArchiveError::io(&path, e))?;
        let mut warnings = Vec::new();
        let inner = match Locator::from_tail(codec, &tail) {
            Tail::Found(locator) => Inner::Kpromote(Box::new(open_located(
                &file,
                len,
                codec,
                &locator,
                &options,
                &mut warnings,
            )?)),
            Tail::Damaged(reason) => {
                return Err(ArchiveError::BadLocator {
                    entry: location::LOCATOR.to_owned(),
                    reason,
                });
            }
            Tail::Absent => {
                let input = Section::new(Arc::clone(&file), 0, len);
                let outcome = scan::scan(codec, input, &options, Collect::Digests)?;
                warnings.extend(outcome.warnings);
                match outcome.kind {
                    ScanKind::Kpromote {
                        manifest,
                        manifest_sha,
                        frame_b,
                        anchored,
                    } => Inner::Kpromote(Box::new(KpromoteState {
                        manifest: *manifest,
                        manifest_sha,
                        frame_b,
                        anchored,
                        index_verified: AtomicBool::new(false),
                    })),
                    ScanKind::Velero { .. } => Inner::Velero {
                        summary: outcome.summary,
                    },
                }
            }
        };
        let keys = match &inner {
            Inner::Kpromote(state) => match &state.manifest.encryption {
                Some(encryption) => Keys::NoIdentity(encryption.recipients.clone()),
                None => Keys::Plain,
            },
            Inner::Velero { .. } => Keys::Plain,
        };
        Ok(ArchiveReader {
            path,
            file,
            codec,
            options,
            inner,
            warnings,
            keys,
        })
    }

    /// How the archive's sealed entries are encrypted, and to whom (`None`: nothing sealed).
    #[must_use]
    pub fn encryption(&self) -> Option<&Encryption> {
        self.manifest().and_then(|m| m.encryption.as_ref())
    }

    /// Gives the reader the identities that open the sealed entries, checking now — before
    /// anything else is read — that one of them is a recipient. Without it, reading a sealed
    /// entry's object is an error; records, `verify` and the manifest never need it. An archive
    /// that seals nothing accepts any identities (or none) and ignores them.
    ///
    /// # Errors
    /// [`seal::SealError::NoIdentity`], [`seal::SealError::WrongIdentity`] naming the recipients;
    /// [`seal::SealError::UnknownScheme`] for an encryption of a newer minor version.
    pub fn unseal_with(&mut self, identities: &Identities) -> Result<()> {
        let Some(encryption) = self.encryption() else {
            return Ok(());
        };
        if encryption.scheme != seal::SCHEME {
            return Err(seal::SealError::UnknownScheme {
                entry: MANIFEST_ENTRY.to_owned(),
                scheme: encryption.scheme.clone(),
            }
            .into());
        }
        identities.check(&encryption.recipients)?;
        self.keys = Keys::Open(Arc::new(identities.clone()));
        Ok(())
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archive's size in bytes (0 when its source cannot tell).
    #[must_use]
    pub fn byte_len(&self) -> u64 {
        self.file.len().unwrap_or(0)
    }

    /// The codec, as detected from the first bytes.
    #[must_use]
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// What the file is.
    #[must_use]
    pub fn kind(&self) -> ArchiveKind {
        match self.inner {
            Inner::Kpromote(_) => ArchiveKind::Kpromote,
            Inner::Velero { .. } => ArchiveKind::Velero,
        }
    }

    /// The manifest (`None` for Velero tarballs).
    #[must_use]
    pub fn manifest(&self) -> Option<&ArchiveManifest> {
        match &self.inner {
            Inner::Kpromote(state) => Some(&state.manifest),
            Inner::Velero { .. } => None,
        }
    }

    /// The facts the writer recorded (`None` for Velero tarballs).
    #[must_use]
    pub fn facts(&self) -> Option<&ArchiveFacts> {
        self.manifest().map(|m| &m.facts)
    }

    /// Counts per resource and namespace: from the manifest, or counted while scanning a Velero
    /// tarball.
    #[must_use]
    pub fn summary(&self) -> &Summary {
        match &self.inner {
            Inner::Kpromote(state) => &state.manifest.summary,
            Inner::Velero { summary } => summary,
        }
    }

    /// SHA-256 of the manifest (hex): the archive's identity. `None` for Velero tarballs.
    #[must_use]
    pub fn manifest_sha256(&self) -> Option<String> {
        match &self.inner {
            Inner::Kpromote(state) => Some(hex::encode(state.manifest_sha)),
            Inner::Velero { .. } => None,
        }
    }

    /// Whether the manifest is anchored by a locator (false for a truncated tail or Velero).
    #[must_use]
    pub fn is_anchored(&self) -> bool {
        match &self.inner {
            Inner::Kpromote(state) => state.anchored,
            Inner::Velero { .. } => false,
        }
    }

    /// Warnings met while opening (newer minor version, missing locator, Velero tarball).
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Streams the index records in path order, without reading the objects. The index is
    /// verified against the manifest (once per reader) before the first record is returned.
    ///
    /// # Errors
    /// Opening: the index does not match the manifest. Items: see [`Records`].
    pub fn records(&self) -> Result<Records> {
        match &self.inner {
            Inner::Kpromote(state) => {
                self.ensure_index_verified(state)?;
                Ok(Records(RecordsInner::Index {
                    side: Box::new(self.index_side(state, false)?),
                    done: false,
                }))
            }
            Inner::Velero { .. } => Ok(Records(RecordsInner::Velero(Box::new(
                self.objects_in(Range::All, false)?,
            )))),
        }
    }

    /// Streams every object with its record, in path order, each verified against its record.
    ///
    /// # Errors
    /// Opening: the index does not match the manifest. Items: see [`Objects`].
    pub fn objects(&self) -> Result<Objects> {
        self.objects_in(Range::All, true)
    }

    /// Streams every object like [`ArchiveReader::objects`], but a bad entry (checksum, size)
    /// is an error item and the reading goes on with the next good one, and a frame that cannot
    /// be decoded is skipped: the reading resumes at the next frame of the frame table (frames
    /// are independent), its entries reported missing. For a consumer that can act on part of an archive and
    /// report the rest — a rollback re-creates the owners it can read and names the others. The
    /// index itself must verify (else nothing says which objects exist): that is still an error
    /// when opening.
    ///
    /// # Errors
    /// Opening: the index does not match the manifest.
    pub fn objects_lenient(&self) -> Result<Objects> {
        match &self.inner {
            Inner::Kpromote(state) => {
                self.ensure_index_verified(state)?;
                Ok(Objects(ObjectsInner::Join {
                    join: Box::new(self.join_with(state, Range::All, true, false, true)?),
                    done: false,
                    lenient: true,
                    keys: self.keys.clone(),
                }))
            }
            Inner::Velero { .. } => self.objects(),
        }
    }

    /// Streams the objects of one group-resource (e.g. `("deployments", "apps")`), seeking to
    /// the first frame holding them rather than decompressing everything before.
    ///
    /// # Errors
    /// As [`ArchiveReader::objects`]; [`ArchiveError::InvalidPath`] for an invalid resource.
    pub fn objects_of(&self, resource: &str, group: &str) -> Result<Objects> {
        let gr = kpromote_model::GroupResource::new(group, resource);
        kpromote_model::ObjectKey::new(group, resource, None, "x").map_err(|reason| {
            ArchiveError::InvalidPath {
                entry: gr.to_string(),
                reason: reason.into(),
            }
        })?;
        self.objects_in(Range::Prefix(format!("{}/{gr}/", layout::RESOURCES_DIR)), true)
    }

    /// Reads one object by path, verified.
    ///
    /// # Errors
    /// [`ArchiveError::InvalidPath`] for a malformed path, [`ArchiveError::NotFound`] if absent,
    /// and verification errors about that entry.
    pub fn get(&self, path: &str) -> Result<ArchiveObject> {
        layout::parse_object_path(path).map_err(|reason| ArchiveError::InvalidPath {
            entry: path.to_owned(),
            reason,
        })?;
        let mut objects = self.objects_in(Range::Exact(path.to_owned()), true)?;
        match objects.next() {
            Some(Ok(object)) if object.record.path == path => Ok(object),
            Some(Err(ArchiveError::MissingEntry { entry })) if entry == path => {
                Err(ArchiveError::NotFound { entry })
            }
            Some(Err(e)) => Err(e),
            Some(Ok(_)) | None => Err(ArchiveError::NotFound {
                entry: path.to_owned(),
            }),
        }
    }

    /// Checks everything and lists every problem found (up to the cap), rather than stopping
    /// at the first. Reads the whole archive once.
    #[must_use]
    pub fn verify(&self) -> VerifyReport {
        let warnings = self.warnings.clone();
        match &self.inner {
            Inner::Kpromote(state) => {
                let mut problems = Problems::new(self.options.max_problems);
                let mut checked = 0u64;
                match self.join(state, Range::All, false, self.decode_thread(state)) {
                    Ok(mut join) => {
                        while let Some(item) = join.next_item() {
                            match item.and_then(check_version_line) {
                                Ok(_) => checked += 1,
                                Err(e) => problems.push(e),
                            }
                        }
                    }
                    Err(e) => problems.push(e),
                }
                VerifyReport::from_problems(
                    ArchiveKind::Kpromote,
                    self.codec,
                    state.anchored,
                    checked,
                    problems,
                    warnings,
                )
            }
            Inner::Velero { .. } => {
                let input = self.whole_file();
                match scan::scan(self.codec, input, &self.options, Collect::Digests) {
                    Ok(outcome) => VerifyReport::from_problems(
                        ArchiveKind::Velero,
                        self.codec,
                        false,
                        outcome.entries_checked,
                        outcome.problems,
                        outcome.warnings,
                    ),
                    Err(e) => {
                        let mut problems = Problems::new(self.options.max_problems);
                        problems.push(e);
                        VerifyReport::from_problems(
                            ArchiveKind::Velero,
                            self.codec,
                            false,
                            0,
                            problems,
                            warnings,
                        )
                    }
                }
            }
        }
    }

    fn decode_thread(&self, state: &KpromoteState) -> bool {
        self.options.decode_thread.unwrap_or_else(|| state.is_large())
    }

    fn whole_file(&self) -> Section {
        let len = self.file.len().unwrap_or(u64::MAX);
        Section::new(Arc::clone(&self.file), 0, len)
    }

    fn objects_in(&self, range: Range, keep_body: bool) -> Result<Objects> {
        match &self.inner {
            Inner::Kpromote(state) => {
                self.ensure_index_verified(state)?;
                let pump = range == Range::All && self.decode_thread(state);
                Ok(Objects(ObjectsInner::Join {
                    join: Box::new(self.join(state, range, keep_body, pump)?),
                    done: false,
                    lenient: false,
                    keys: self.keys.clone(),
                }))
            }
            Inner::Velero { .. } => {
                let records = self.velero_objects()?;
                Ok(Objects(ObjectsInner::Velero {
                    sorted: records,
                    range,
                    prev: None,
                    done: false,
                }))
            }
        }
    }

    fn velero_objects(&self) -> Result<Sorted> {
        let input = self.whole_file();
        let outcome = scan::scan(self.codec, input, &self.options, Collect::Objects)?;
        if let Some(first) = outcome.problems.list.into_iter().next() {
            return Err(first);
        }
        match outcome.kind {
            ScanKind::Velero {
                objects: Some(sorted),
            } => Ok(sorted),
            _ => Err(ArchiveError::NotAnArchive {
                entry: location::START.to_owned(),
                reason: "the file changed while it was read".to_owned(),
            }),
        }
    }

    fn ensure_index_verified(&self, state: &KpromoteState) -> Result<()> {
        if !state.index_verified.load(Ordering::Acquire) {
            self.index_side(state, false)?.check_digest()?;
            state.index_verified.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn index_side(&self, state: &KpromoteState, pump: bool) -> Result<IndexSide> {
        let source = join::source(
            self.codec,
            &self.file,
            vec![state.frame_b],
            self.options.budget(),
            location::FRAME_B,
            pump,
        )?;
        IndexSide::open(
            source,
            state.manifest.index.clone(),
            &state.manifest_sha,
            self.options.max_manifest_bytes,
            self.options.max_index_line,
        )
    }

    fn join(&self, state: &KpromoteState, range: Range, keep_body: bool, pump: bool) -> Result<Join> {
        self.join_with(state, range, keep_body, pump, false)
    }

    /// A join; `lenient` skips a damaged frame and resumes at the next one.
    fn join_with(
        &self,
        state: &KpromoteState,
        range: Range,
        keep_body: bool,
        pump: bool,
        lenient: bool,
    ) -> Result<Join> {
        let frames = &state.manifest.frames;
        // Frames are in path order: start at the last frame whose first path is not after the
        // range start.
        let first = match range.start() {
            None => 0,
            Some(start) => frames
                .partition_point(|f| f.first_path.as_str() <= start)
                .saturating_sub(1),
        };
        let selected = frames[first..].to_vec();
        let source = join::source(
            self.codec,
            &self.file,
            selected.iter().map(|f| (f.offset, f.length)).collect(),
            self.options.budget(),
            location::FRAME_A,
            pump,
        )?;
        let mut entries = EntrySide::new(
            source,
            selected,
            self.options.max_entry_bytes,
            range.clone(),
            keep_body,
        );
        let index = self.index_side(state, pump)?;
        if !lenient {
            return Ok(Join::new(index, entries, range));
        }
        let (codec, file, budget) = (self.codec, Arc::clone(&self.file), self.options.budget());
        entries = entries.resumable(join::Reopen(Box::new(move |frames| {
            join::source(
                codec,
                &file,
                frames.iter().map(|f| (f.offset, f.length)).collect(),
                budget,
                location::FRAME_A,
                false,
            )
        })));
        Ok(Join::new(index, entries, range).lenient())
    }
}

/// Checks the `metadata/version` pair of the join: kpromote archives hold exactly `1.1.0\n`.
fn check_version_line(matched: join::Matched) -> Result<join::Matched> {
    if let ParsedLine::Version { sha256, .. } = &matched.line
        && *sha256 != hex::encode(Sha256::digest(VERSION_ENTRY_CONTENT))
    {
        return Err(ArchiveError::NotAnArchive {
            entry: layout::VERSION_ENTRY.to_owned(),
            reason: "content is not the Velero 1.1.0 layout marker".to_owned(),
        });
    }
    Ok(matched)
}

/// Opens the kpromote state from a locator: reads and checks the manifest.
fn open_located(
    file: &Arc<dyn RandomAccess>,
    len: u64,
    codec: Codec,
    locator: &Locator,
    options: &ReaderOptions,
    warnings: &mut Vec<String>,
) -> Result<KpromoteState> {
    if locator.major != FORMAT_MAJOR {
        return Err(ArchiveError::UnsupportedVersion {
            entry: location::LOCATOR.to_owned(),
            expected: FORMAT_MAJOR,
            got: locator.major,
        });
    }
    let end = locator
        .frame_b_offset
        .checked_add(locator.frame_b_len)
        .and_then(|e| e.checked_add(Locator::encoded_len(codec) as u64));
    if end != Some(len) || locator.frame_b_len == 0 {
        return Err(ArchiveError::BadLocator {
            entry: location::LOCATOR.to_owned(),
            reason: format!(
                "frame B at offset {} length {} does not end where the locator starts",
                locator.frame_b_offset, locator.frame_b_len
            ),
        });
    }
    let source = join::source(
        codec,
        file,
        vec![(locator.frame_b_offset, locator.frame_b_len)],
        options.budget(),
        location::FRAME_B,
        false,
    )?;
    let mut tar = TarStream::new(source, Dialects::Strict);
    let header = match tar.next_header()? {
        Next::Entry(h) if h.raw_path == MANIFEST_ENTRY.as_bytes() => h,
        _ => {
            return Err(ArchiveError::InvalidManifest {
                entry: MANIFEST_ENTRY.to_owned(),
                reason: "frame B does not start with the manifest".to_owned(),
            });
        }
    };
    if header.size > options.max_manifest_bytes {
        return Err(ArchiveError::EntryTooLarge {
            entry: MANIFEST_ENTRY.to_owned(),
            size: header.size,
            limit: options.max_manifest_bytes,
        });
    }
    let mut bytes = Vec::new();
    tar.read_data(&mut bytes)?;
    let actual: [u8; 32] = Sha256::digest(&bytes).into();
    if actual != locator.manifest_sha256 {
        return Err(ArchiveError::DigestMismatch {
            entry: MANIFEST_ENTRY.to_owned(),
            expected: hex::encode(locator.manifest_sha256),
            actual: hex::encode(actual),
        });
    }
    let manifest = ArchiveManifest::parse_checked_version(&bytes)?;
    let (major, minor) = manifest.version()?;
    if (major, minor) != (locator.major, locator.minor) {
        return Err(ArchiveError::InvalidManifest {
            entry: MANIFEST_ENTRY.to_owned(),
            reason: format!(
                "formatVersion {} disagrees with the locator ({}.{})",
                manifest.format_version, locator.major, locator.minor
            ),
        });
    }
    if manifest.frame_a_end() != locator.frame_b_offset {
        return Err(ArchiveError::InvalidManifest {
            entry: MANIFEST_ENTRY.to_owned(),
            reason: "the frame table does not end where frame B starts".to_owned(),
        });
    }
    let total: u64 = manifest.frames.iter().map(|f| f.uncompressed).sum();
    if total > options.max_total_bytes {
        return Err(ArchiveError::TotalSizeExceeded {
            entry: location::FRAME_A.to_owned(),
            limit: options.max_total_bytes,
        });
    }
    // What the manifest declares is checked against the ratio before anything is decoded;
    // decoding checks it again, since a manifest can lie.
    let compressed: u64 = manifest.frames.iter().map(|f| f.length).sum();
    let allowed = compressed
        .saturating_mul(options.max_ratio)
        .saturating_add(options.ratio_floor);
    if total > allowed {
        return Err(ArchiveError::RatioExceeded {
            entry: location::FRAME_A.to_owned(),
            compressed,
            limit: allowed,
            ratio: options.max_ratio,
        });
    }
    if minor > FORMAT_MINOR {
        warnings.push(scan::newer_minor_warning(major, minor));
    }
    Ok(KpromoteState {
        manifest,
        manifest_sha: actual,
        frame_b: (locator.frame_b_offset, locator.frame_b_len),
        anchored: true,
        index_verified: AtomicBool::new(false),
    })
}

/// Verifies a stream (a pipe, standard input) in one pass, with bounded memory: the entries'
/// digests are spooled to scratch files and joined with the index when it arrives. Checks the
/// locator at the end too, so a complete stream is fully verified.
///
/// # Errors
/// The stream is unreadable (unknown codec, truncated, corrupt); problems with entries are in
/// the report.
pub fn verify_stream(mut input: impl Read, options: &ReaderOptions) -> Result<VerifyReport> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ArchiveError::io("(stream)", e)),
        }
    }
    let codec = Codec::detect(&head[..got]).ok_or_else(|| ArchiveError::UnknownCodec {
        archive: PathBuf::from("(stream)"),
        magic: hex::encode(&head[..got]),
    })?;
    let input = std::io::Cursor::new(head[..got].to_vec()).chain(input);
    let outcome = scan::scan(codec, input, options, Collect::Digests)?;
    let (kind, anchored) = match outcome.kind {
        ScanKind::Kpromote { anchored, .. } => (ArchiveKind::Kpromote, anchored),
        ScanKind::Velero { .. } => (ArchiveKind::Velero, false),
    };
    Ok(VerifyReport::from_problems(
        kind,
        codec,
        anchored,
        outcome.entries_checked,
        outcome.problems,
        outcome.warnings,
    ))
}

/// Index records in path order. After an error, nothing more is returned.
#[derive(Debug)]
pub struct Records(RecordsInner);

#[derive(Debug)]
enum RecordsInner {
    /// From a kpromote index.
    Index { side: Box<IndexSide>, done: bool },
    /// Built from the bodies of a Velero tarball.
    Velero(Box<Objects>),
}

impl Iterator for Records {
    type Item = Result<IndexRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            RecordsInner::Index { side, done } => loop {
                if *done {
                    return None;
                }
                match side.next_line() {
                    Ok(Some(ParsedLine::Object(record))) => return Some(Ok(*record)),
                    Ok(Some(ParsedLine::Version { .. })) => {}
                    Ok(None) => {
                        *done = true;
                        return None;
                    }
                    Err(e) => {
                        *done = true;
                        return Some(Err(e));
                    }
                }
            },
            RecordsInner::Velero(objects) => objects.next().map(|o| o.map(|o| o.record)),
        }
    }
}

/// Verified objects in path order. The first error ends the iteration — a consumer that acts on
/// objects never sees anything after a problem — unless made by
/// [`ArchiveReader::objects_lenient`].
#[derive(Debug)]
pub struct Objects(ObjectsInner);

#[derive(Debug)]
enum ObjectsInner {
    /// From a kpromote archive; `lenient` goes on after a bad entry; `keys` open sealed ones.
    Join {
        join: Box<Join>,
        done: bool,
        lenient: bool,
        keys: Keys,
    },
    /// From a Velero tarball (unverifiable: digests are computed, not checked).
    Velero {
        sorted: Sorted,
        range: Range,
        prev: Option<String>,
        done: bool,
    },
}

impl Iterator for Objects {
    type Item = Result<ArchiveObject>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            ObjectsInner::Join {
                join,
                done,
                lenient,
                keys,
            } => loop {
                if *done {
                    return None;
                }
                match join.next_item().map(|r| r.and_then(check_version_line)) {
                    Some(Ok(join::Matched {
                        line: ParsedLine::Object(record),
                        body,
                    })) => {
                        let json = match body {
                            Some(body) => keys.unseal(&record.path, record.encryption.as_deref(), body),
                            None => Ok(Vec::new()),
                        };
                        match json {
                            Ok(json) => {
                                return Some(Ok(ArchiveObject {
                                    record: *record,
                                    json,
                                }));
                            }
                            Err(e) => {
                                *done = !*lenient;
                                return Some(Err(e));
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        *done = !*lenient;
                        return Some(Err(e));
                    }
                    None => {
                        *done = true;
                        return None;
                    }
                }
            },
            ObjectsInner::Velero {
                sorted,
                range,
                prev,
                done,
            } => loop {
                if *done {
                    return None;
                }
                let item = match sorted.next()? {
                    Ok(item) => item,
                    Err(e) => {
                        *done = true;
                        return Some(Err(ArchiveError::io("(scratch)", e)));
                    }
                };
                if prev.as_deref() == Some(item.path.as_str()) {
                    *done = true;
                    return Some(Err(ArchiveError::DuplicatePath { entry: item.path }));
                }
                *prev = Some(item.path.clone());
                let in_range = match range {
                    Range::All => true,
                    Range::Prefix(p) => item.path.starts_with(p.as_str()),
                    Range::Exact(p) => item.path == *p,
                };
                if !in_range {
                    continue;
                }
                return Some(
                    serde_json::from_slice::<IndexRecord>(&item.line)
                        .map(|record| ArchiveObject {
                            record,
                            json: item.body,
                        })
                        .map_err(|e| ArchiveError::InvalidRecord {
                            entry: item.path,
                            reason: e.to_string(),
                        }),
                );
            },
        }
    }
}
