//! The archive module's error type. Every variant names the entry (or file) concerned, so a
//! message is actionable on its own: "entry `resources/pods/namespaces/a/b.json`: digest mismatch".

use super::layout::PathError;
use std::io;
use std::path::PathBuf;

/// Pseudo entry names used when an error concerns a part of the file that is not a tar entry.
pub mod location {
    /// The fixed-size footer at the end of the file (spec §7).
    pub const LOCATOR: &str = "(locator)";
    /// Frame A as a whole: the frames holding `metadata/version` and the objects (spec §4).
    pub const FRAME_A: &str = "(frame A)";
    /// Frame B as a whole: the frame holding the manifest, the index and the tar trailer.
    pub const FRAME_B: &str = "(frame B)";
    /// The start of the stream, before any entry.
    pub const START: &str = "(start of archive)";
    /// The tar end-of-archive marker.
    pub const TRAILER: &str = "(end-of-archive marker)";
}

/// Everything that can go wrong writing or reading an archive.
///
/// Variants fall in three groups: I/O on a named file; writer input that cannot be stored; and
/// archive content that is damaged or hostile (these name the entry, or a pseudo entry from
/// [`location`] such as `(locator)`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Reading or writing a file failed: the archive, a temporary file or the target directory.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the operating system said (part of the message, so not also a `source()`).
        error: io::Error,
    },
    /// The writer refuses to replace an existing file.
    #[error("{}: already exists; archives are never overwritten, choose another name", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A writer or reader option is out of range.
    #[error("option `{option}`: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The file starts neither with a zstd frame nor with a gzip member.
    #[error(
        "{}: not a kpromote or Velero archive (first bytes {magic}, expected zstd 28b52ffd or gzip 1f8b)",
        archive.display()
    )]
    UnknownCodec {
        /// The file concerned.
        archive: PathBuf,
        /// The first bytes, in hex.
        magic: String,
    },
    /// The file decompresses but is not laid out as a kpromote archive or a Velero tarball.
    #[error("entry `{entry}`: not a kpromote archive or Velero tarball: {reason}")]
    NotAnArchive {
        /// The entry where this was noticed.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The archive was written with a format major version this reader does not know.
    #[error(
        "entry `{entry}`: archive format major version {got} is not supported (this kpromote reads major {expected}); use a newer kpromote"
    )]
    UnsupportedVersion {
        /// Where the version was read (the locator or the manifest).
        entry: String,
        /// The major version this reader supports.
        expected: u16,
        /// The major version found.
        got: u16,
    },
    /// The locator (the footer) is damaged.
    #[error("entry `{entry}`: {reason}")]
    BadLocator {
        /// Always [`location::LOCATOR`].
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// The compressed data could not be decompressed (corruption).
    #[error("entry `{entry}`: decompression failed: {error}")]
    Decompress {
        /// The entry being read, or the frame.
        entry: String,
        /// The decoder's error (part of the message, so not also a `source()`).
        error: io::Error,
    },
    /// The stream ended in the middle of something.
    #[error("entry `{entry}`: archive is truncated")]
    Truncated {
        /// The entry being read when the data ran out.
        entry: String,
    },
    /// A tar header is malformed (bad checksum, bad number, unknown format).
    #[error("entry `{entry}`: malformed tar header: {reason}")]
    MalformedHeader {
        /// The entry whose header is malformed, or the one before it.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// Writer input: an object's identity does not fit the path grammar.
    #[error("object `{entry}`: {reason}")]
    InvalidPath {
        /// The path (or the identity, when no path can be built).
        entry: String,
        /// Which rule it breaks.
        reason: PathError,
    },
    /// Archive content: an entry path is unsafe or outside the grammar (traversal, absolute...).
    #[error("entry `{entry}`: unsafe or unexpected path: {reason}")]
    UnsafePath {
        /// The path as found (control characters escaped).
        entry: String,
        /// Which rule it breaks.
        reason: PathError,
    },
    /// An entry is not a regular file (link, device, FIFO, directory...).
    #[error("entry `{entry}`: {kind} entries are not allowed; only regular files")]
    UnsupportedEntryType {
        /// The entry.
        entry: String,
        /// What kind of entry it is.
        kind: &'static str,
    },
    /// Two entries (or two writer objects) share a path.
    #[error("entry `{entry}`: duplicate path")]
    DuplicatePath {
        /// The duplicated path.
        entry: String,
    },
    /// Entries or index records are not in bytewise path order.
    #[error("entry `{entry}`: out of order (comes after `{previous}`); archives are sorted by path")]
    OutOfOrder {
        /// The entry found out of place.
        entry: String,
        /// The entry before it.
        previous: String,
    },
    /// The index lists an entry the archive does not hold.
    #[error("entry `{entry}`: listed in the index but missing from the archive")]
    MissingEntry {
        /// The missing entry.
        entry: String,
    },
    /// The archive holds an entry the index does not list.
    #[error("entry `{entry}`: present in the archive but not listed in the index")]
    UnexpectedEntry {
        /// The extra entry.
        entry: String,
    },
    /// An entry's SHA-256 differs from the recorded one.
    #[error("entry `{entry}`: SHA-256 mismatch (recorded {expected}, actual {actual})")]
    DigestMismatch {
        /// The entry.
        entry: String,
        /// The recorded digest (hex).
        expected: String,
        /// The digest of the bytes found (hex).
        actual: String,
    },
    /// An entry's size differs from the recorded one.
    #[error("entry `{entry}`: size mismatch (recorded {expected} bytes, found {actual})")]
    SizeMismatch {
        /// The entry.
        entry: String,
        /// The recorded size.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// An entry is larger than the per-entry cap (decompression-bomb defence).
    #[error("entry `{entry}`: {size} bytes exceeds the per-entry limit of {limit} bytes")]
    EntryTooLarge {
        /// The entry.
        entry: String,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The archive decompresses to more than [`ReaderOptions::max_ratio`] times its compressed
    /// size (plus [`ReaderOptions::ratio_floor`]): a decompression bomb that would otherwise run
    /// up to the total cap.
    ///
    /// [`ReaderOptions::max_ratio`]: super::ReaderOptions::max_ratio
    /// [`ReaderOptions::ratio_floor`]: super::ReaderOptions::ratio_floor
    #[error(
        "entry `{entry}`: {compressed} compressed bytes decompress to more than {limit} bytes (over {ratio}:1); \
         kpromote never writes such an archive, so it is refused as a decompression bomb (if you trust it, read \
         it with a higher ratio limit)"
    )]
    RatioExceeded {
        /// The entry being read when the limit was passed.
        entry: String,
        /// The compressed bytes of the section being read.
        compressed: u64,
        /// The bytes they may decompress to.
        limit: u64,
        /// The ratio allowed.
        ratio: u64,
    },
    /// The archive decompresses to more than the total cap (decompression-bomb defence).
    #[error("entry `{entry}`: archive decompresses to more than the limit of {limit} bytes")]
    TotalSizeExceeded {
        /// The entry being read when the limit was passed.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// The manifest is missing, unparsable or inconsistent.
    #[error("entry `{entry}`: invalid manifest: {reason}")]
    InvalidManifest {
        /// Always `kpromote/manifest.json` (or the frame where it was expected).
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// An index record is unparsable or disagrees with its own path.
    #[error("entry `{entry}`: invalid index record: {reason}")]
    InvalidRecord {
        /// The record's path, or `kpromote/index.jsonl:<line>` when it has none.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// An object body is not a JSON object, or disagrees with the identity given for it.
    #[error("object `{entry}`: {reason}")]
    InvalidObject {
        /// The object's path.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// The requested entry is not in the archive.
    #[error("entry `{entry}`: not in the archive")]
    NotFound {
        /// The path asked for.
        entry: String,
    },
    /// Keys, sealing or unsealing (see [`super::seal`]).
    #[error(transparent)]
    Seal(#[from] super::seal::SealError),
}

impl ArchiveError {
    /// The entry (or file) this error is about: what a report lists.
    #[must_use]
    pub fn entry(&self) -> String {
        match self {
            ArchiveError::Io { path, .. } | ArchiveError::AlreadyExists { path } => {
                path.display().to_string()
            }
            ArchiveError::UnknownCodec { archive, .. } => archive.display().to_string(),
            ArchiveError::InvalidOption { option, .. } => format!("(option {option})"),
            ArchiveError::NotAnArchive { entry, .. }
            | ArchiveError::UnsupportedVersion { entry, .. }
            | ArchiveError::BadLocator { entry, .. }
            | ArchiveError::Decompress { entry, .. }
            | ArchiveError::Truncated { entry }
            | ArchiveError::MalformedHeader { entry, .. }
            | ArchiveError::InvalidPath { entry, .. }
            | ArchiveError::UnsafePath { entry, .. }
            | ArchiveError::UnsupportedEntryType { entry, .. }
            | ArchiveError::DuplicatePath { entry }
            | ArchiveError::OutOfOrder { entry, .. }
            | ArchiveError::MissingEntry { entry }
            | ArchiveError::UnexpectedEntry { entry }
            | ArchiveError::DigestMismatch { entry, .. }
            | ArchiveError::SizeMismatch { entry, .. }
            | ArchiveError::EntryTooLarge { entry, .. }
            | ArchiveError::TotalSizeExceeded { entry, .. }
            | ArchiveError::RatioExceeded { entry, .. }
            | ArchiveError::InvalidManifest { entry, .. }
            | ArchiveError::InvalidRecord { entry, .. }
            | ArchiveError::InvalidObject { entry, .. }
            | ArchiveError::NotFound { entry } => entry.clone(),
            ArchiveError::Seal(e) => e.entry(),
        }
    }

    /// A short stable identifier of the variant, for `-o json` output and scripts.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            ArchiveError::Io { .. } => "io",
            ArchiveError::AlreadyExists { .. } => "already_exists",
            ArchiveError::InvalidOption { .. } => "invalid_option",
            ArchiveError::UnknownCodec { .. } => "unknown_codec",
            ArchiveError::NotAnArchive { .. } => "not_an_archive",
            ArchiveError::UnsupportedVersion { .. } => "unsupported_version",
            ArchiveError::BadLocator { .. } => "bad_locator",
            ArchiveError::Decompress { .. } => "decompress",
            ArchiveError::Truncated { .. } => "truncated",
            ArchiveError::MalformedHeader { .. } => "malformed_header",
            ArchiveError::InvalidPath { .. } => "invalid_path",
            ArchiveError::UnsafePath { .. } => "unsafe_path",
            ArchiveError::UnsupportedEntryType { .. } => "unsupported_entry_type",
            ArchiveError::DuplicatePath { .. } => "duplicate_path",
            ArchiveError::OutOfOrder { .. } => "out_of_order",
            ArchiveError::MissingEntry { .. } => "missing_entry",
            ArchiveError::UnexpectedEntry { .. } => "unexpected_entry",
            ArchiveError::DigestMismatch { .. } => "digest_mismatch",
            ArchiveError::SizeMismatch { .. } => "size_mismatch",
            ArchiveError::EntryTooLarge { .. } => "entry_too_large",
            ArchiveError::TotalSizeExceeded { .. } => "total_size_exceeded",
            ArchiveError::RatioExceeded { .. } => "ratio_exceeded",
            ArchiveError::InvalidManifest { .. } => "invalid_manifest",
            ArchiveError::InvalidRecord { .. } => "invalid_record",
            ArchiveError::InvalidObject { .. } => "invalid_object",
            ArchiveError::NotFound { .. } => "not_found",
            ArchiveError::Seal(e) => e.code(),
        }
    }

    /// Whether reading can go on past this error (the entry is skipped) or the stream is lost.
    /// `verify` uses it to report every bad entry rather than only the first.
    #[must_use]
    pub fn is_entry_local(&self) -> bool {
        matches!(
            self,
            ArchiveError::UnsafePath { .. }
                | ArchiveError::UnsupportedEntryType { .. }
                | ArchiveError::DuplicatePath { .. }
                | ArchiveError::MissingEntry { .. }
                | ArchiveError::UnexpectedEntry { .. }
                | ArchiveError::DigestMismatch { .. }
                | ArchiveError::SizeMismatch { .. }
                | ArchiveError::EntryTooLarge { .. }
                | ArchiveError::InvalidRecord { .. }
                | ArchiveError::InvalidObject { .. }
        ) || matches!(self, ArchiveError::Seal(e) if e.is_entry_local())
    }

    /// An I/O error about `path` (a file, or the URL of a remote archive).
    pub fn io(path: impl Into<PathBuf>, error: io::Error) -> Self {
        ArchiveError::Io {
            path: path.into(),
            error,
        }
    }

    /// Maps an I/O error met while decoding `entry`: errors raised by our own readers travel
    /// inside `io::Error` and come back out unchanged; the total-size cap becomes
    /// [`ArchiveError::TotalSizeExceeded`] naming `entry`; an early end is a truncation; anything
    /// else is the decoder reporting corruption.
    pub(crate) fn from_decode(err: io::Error, entry: &str) -> Self {
        let kind = err.kind();
        let entry = entry.to_owned();
        let Some(inner) = err.into_inner() else {
            return if kind == io::ErrorKind::UnexpectedEof {
                ArchiveError::Truncated { entry }
            } else {
                ArchiveError::Decompress {
                    entry,
                    error: io::Error::from(kind),
                }
            };
        };
        let inner = match inner.downcast::<ArchiveError>() {
            Ok(archive_err) => return *archive_err,
            Err(other) => other,
        };
        let inner = match inner.downcast::<TotalLimit>() {
            Ok(limit) => {
                return ArchiveError::TotalSizeExceeded {
                    entry,
                    limit: limit.0,
                };
            }
            Err(other) => other,
        };
        let inner = match inner.downcast::<RatioLimit>() {
            Ok(hit) => {
                return ArchiveError::RatioExceeded {
                    entry,
                    compressed: hit.compressed,
                    limit: hit.limit,
                    ratio: hit.ratio,
                };
            }
            Err(other) => other,
        };
        if kind == io::ErrorKind::UnexpectedEof {
            ArchiveError::Truncated { entry }
        } else {
            ArchiveError::Decompress {
                entry,
                error: io::Error::new(kind, inner),
            }
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// Marker carried inside an `io::Error` when decoding passes the total-size cap; turned into
/// [`ArchiveError::TotalSizeExceeded`] naming the entry being read.
#[derive(Debug)]
pub(crate) struct TotalLimit(pub(crate) u64);

impl std::fmt::Display for TotalLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decompressed size passed the limit of {} bytes", self.0)
    }
}

impl std::error::Error for TotalLimit {}

/// Marker carried inside an `io::Error` when decoding passes the ratio cap; turned into
/// [`ArchiveError::RatioExceeded`] naming the entry being read.
#[derive(Debug)]
pub(crate) struct RatioLimit {
    pub(crate) compressed: u64,
    pub(crate) limit: u64,
    pub(crate) ratio: u64,
}

impl std::fmt::Display for RatioLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} compressed bytes decompress to more than {} bytes (over {}:1)",
            self.compressed, self.limit, self.ratio
        )
    }
}

impl std::error::Error for RatioLimit {}

/// Result alias of the archive module.
pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;
