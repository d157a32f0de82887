//! The kpromote archive format, version 1: the single source of truth for promote and rollback.
//!
//! No Kubernetes client and no network here: bytes in, bytes out. The normative description is
//! `format-spec/v1.md` at the repository root (the contract other implementations read); the
//! constants below name the sections they implement.
//!
//! # The format in one screen
//!
//! An archive is one continuous tar stream, compressed in independent frames (zstd frames or gzip
//! members), followed by a fixed-size locator that standard tools skip:
//!
//! ```text
//! frame A ─ one or more frames: metadata/version, then resources/... in bytewise path order
//! frame B ─ one frame (or more): kpromote/manifest.json, kpromote/index.jsonl, end-of-archive
//! locator ─ zstd skippable frame / empty gzip member: offset+length of frame B, manifest SHA-256
//! ```
//!
//! `zstd -dc a.tar.zst | tar t` and `tar tzf a.tar.gz` list the whole archive, and Velero finds
//! the objects at its classic paths. The chain of trust is locator → manifest digest → index
//! digest (in the manifest) → each entry's digest (in the index); digests are SHA-256 of the
//! uncompressed entry bytes, so they do not depend on the codec.
//!
//! # Who calls what
//!
//! - The backup writes with [`ArchiveWriter`]: [`ArchiveWriter::create`], then per object (any
//!   order) [`ArchiveWriter::add`] (identity given, body checked against it) or
//!   [`ArchiveWriter::add_json`] (identity read from the body), then [`ArchiveWriter::finish`].
//! - Restore and rollback read with [`ArchiveReader`]: [`ArchiveReader::open`] (cheap),
//!   [`ArchiveReader::records`] to plan, [`ArchiveReader::objects`] or
//!   [`ArchiveReader::objects_of`] to stream verified objects, [`ArchiveReader::get`] for one.
//! - Offline inspection uses the same reader plus [`ArchiveReader::verify`] and
//!   [`verify_stream`].
//! - Secrets are sealed (age-encrypted) when the writer has recipients
//!   ([`WriterOptions::encrypt_to`]); a reader opens them after [`ArchiveReader::unseal_with`]
//!   checked its identity. Verifying and inspecting need no key ([`seal`]).
//!
//! # Security
//!
//! Archives are hostile input (they sit on a shared PVC, get copied around, are opened on
//! laptops). The reader:
//!
//! - never extracts to disk and never creates a file named after an entry;
//! - accepts only regular-file entries (and GNU long-name records); links, devices, FIFOs,
//!   directories, sparse files and, in kpromote archives, PAX headers are refused with
//!   [`ArchiveError::UnsupportedEntryType`];
//! - accepts only paths of the exact grammar ([`layout`]): no absolute paths, `..`, `.`, empty
//!   components, backslashes, control characters or over-long paths ([`ArchiveError::UnsafePath`]);
//! - refuses duplicate, out-of-order, missing and unlisted entries, and checks every entry's
//!   size and SHA-256 against the index before handing it out;
//! - caps each entry ([`ReaderOptions::max_entry_bytes`], 64 MiB), the manifest, each index line,
//!   the total decompressed size ([`ReaderOptions::max_total_bytes`], 64 GiB), the
//!   decompression ratio ([`ReaderOptions::max_ratio`], 250:1 beyond the first 64 MiB, so a small
//!   file cannot expand to the total cap: [`ArchiveError::RatioExceeded`]) and the zstd window
//!   (8 MiB), against decompression bombs;
//! - refuses an unknown major version ([`ArchiveError::UnsupportedVersion`]) before parsing
//!   anything else, and reads a newer minor version with a warning;
//! - holds memory bounded by those caps, not by the number of entries.
//!
//! What it does not defend against: an attacker who can rewrite the whole archive can produce a
//! consistent one (the digests detect corruption, not forgery; sign the manifest digest, which
//! [`WrittenArchive::manifest_sha256`] and [`ArchiveReader::manifest_sha256`] expose, if you need
//! that), and the JSON bodies are data for the restore engine to validate, not trusted input.

mod codec;
mod error;
mod join;
pub mod layout;
mod locator;
mod manifest;
mod random_access;
mod reader;
mod scan;
pub mod seal;
mod sort;
mod tar_header;
mod tar_stream;
mod writer;

pub use codec::{Codec, Compression, DEFAULT_GZIP_LEVEL, DEFAULT_ZSTD_LEVEL, MAX_ZSTD_LEVEL};
pub use error::{ArchiveError, Result, location};
pub use layout::PathError;
pub use locator::Locator;
pub use manifest::{
    ArchiveFacts, ArchiveManifest, CodecInfo, FrameInfo, Inclusion, IndexInfo, IndexRecord, OwnerReference,
    PolicyFacts, SourceCluster, Summary, Tally, ToolInfo,
};
pub use random_access::RandomAccess;
pub use reader::{
    ArchiveKind, ArchiveObject, ArchiveReader, DEFAULT_MAX_INDEX_LINE, DEFAULT_MAX_MANIFEST_BYTES,
    DEFAULT_MAX_PROBLEMS, DEFAULT_MAX_RATIO, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_RATIO_FLOOR, Objects,
    ReaderOptions, Records, VerifyReport, verify_stream,
};
pub use seal::{Encryption, Identities, Recipients, SealError};
pub use writer::{
    ArchiveSink, ArchiveWriter, DEFAULT_FRAME_SIZE, DEFAULT_SORT_MEMORY, NewObject, WriterOptions,
    WrittenArchive,
};

/// The newest kpromote archive format version this crate reads and writes (spec §2): 1.1 adds
/// sealed entries (§14). Readers accept any `1.x.y`; a newer minor is read with a warning.
pub const FORMAT_VERSION: &str = "1.1.0";
/// Major part of [`FORMAT_VERSION`]: a reader refuses any other major (spec §2).
pub const FORMAT_MAJOR: u16 = 1;
/// Minor part of [`FORMAT_VERSION`].
pub const FORMAT_MINOR: u16 = 1;
/// The version written when nothing is sealed: such an archive uses nothing of 1.1, so it says
/// 1.0.0 and a 1.0 reader opens it without a warning. Only sealed archives say 1.1.0.
pub const UNSEALED_FORMAT_VERSION: &str = "1.0.0";
/// Minor part of [`UNSEALED_FORMAT_VERSION`].
pub const UNSEALED_FORMAT_MINOR: u16 = 0;
/// Default largest entry, for writers and readers alike: 64 MiB. Kubernetes objects are limited
/// to about 1.5 MiB by etcd, so this leaves room without letting a hostile entry exhaust memory
/// (spec §11).
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 64 << 20;

/// SHA-256 of `bytes` in lowercase hex, as the index records it (spec §6.3).
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
