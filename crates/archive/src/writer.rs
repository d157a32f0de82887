//! The archive writer: streaming, bounded memory, deterministic, atomic.
//!
//! Objects are added in any order. They are sorted by path with an external merge sort (memory
//! bounded by [`WriterOptions::sort_memory`]), then written as frame A (the objects, in frames
//! compressed in parallel), frame B (manifest and index) and the locator (spec §4, §7). The file
//! appears under its final name only when complete and synced.

use super::codec::{Codec, Compression, FrameEncoder};
use super::error::{ArchiveError, Result};
use super::layout::PathError;
use super::layout::{self, INDEX_ENTRY, MANIFEST_ENTRY, VERSION_ENTRY, VERSION_ENTRY_CONTENT};
use super::locator::Locator;
use super::manifest::{
    ArchiveFacts, ArchiveManifest, CodecInfo, FrameInfo, Inclusion, IndexInfo, IndexRecord, OwnerReference,
    Summary, ToolInfo, VersionLine,
};
use super::seal::{self, Recipients};
use super::sort::{ExternalSorter, SortItem};
use super::tar_header::{self, BLOCK_SIZE};
use super::{
    DEFAULT_MAX_ENTRY_BYTES, FORMAT_MAJOR, FORMAT_MINOR, FORMAT_VERSION, UNSEALED_FORMAT_MINOR,
    UNSEALED_FORMAT_VERSION,
};
use kpromote_model::{GroupResource, ObjectKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Default memory for sorting before spilling a run: 4 MiB. A namespace of a few thousand
/// objects already fills it, so the writer's memory is the same for 2,000 objects as for
/// 200,000 (a larger budget only saves runs, whose merge costs one extra sequential read).
pub const DEFAULT_SORT_MEMORY: usize = 4 << 20;
/// Default uncompressed size at which a frame of frame A is cut: 1 MiB. Every frame in flight
/// holds a buffer of this size (the one being filled, one per compression worker, one queued,
/// one spare), and zstd's window at the default level is 2 MiB anyway, so larger frames compress
/// no better (on Kubernetes JSON 1 MiB frames came out 0.1% smaller than 4 MiB ones); seeking
/// to one object decompresses at most this much.
pub const DEFAULT_FRAME_SIZE: usize = 1 << 20;

/// How an archive is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Codec, level and compression threads.
    pub compression: Compression,
    /// Bytes of objects kept in memory before a sorted run is spilled to disk.
    pub sort_memory: usize,
    /// Uncompressed size at which a frame is cut (frames also end at each resource boundary).
    pub frame_size: usize,
    /// Directory for sort runs and the index spool; default: the archive's directory (not
    /// `/tmp`, which is often memory-backed in containers).
    pub spill_dir: Option<PathBuf>,
    /// Largest object accepted; must not exceed what readers accept (64 MiB by default).
    pub max_entry_bytes: u64,
    /// Who may read the sealed entries (Secrets, [`seal::SEALED_RESOURCES`]); empty: nothing
    /// is sealed and the archive is format 1.0.
    pub encrypt_to: Recipients,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression: Compression::zstd(),
            sort_memory: DEFAULT_SORT_MEMORY,
            frame_size: DEFAULT_FRAME_SIZE,
            spill_dir: None,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            encrypt_to: Recipients::default(),
        }
    }
}

impl WriterOptions {
    /// zstd level 3, one compression thread.
    #[must_use]
    pub fn zstd() -> Self {
        Self::default()
    }

    /// gzip level 6 (what Velero can read), one compression thread.
    #[must_use]
    pub fn gzip() -> Self {
        WriterOptions {
            compression: Compression::gzip(),
            ..Self::default()
        }
    }

    /// Sets the codec, keeping the default level of that codec.
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        let workers = self.compression.workers;
        self.compression = match codec {
            Codec::Zstd => Compression::zstd(),
            Codec::Gzip => Compression::gzip(),
        };
        self.compression.workers = workers;
        self
    }

    /// Sets the compression level (zstd 1..=19, gzip 0..=9).
    #[must_use]
    pub fn level(mut self, level: i32) -> Self {
        self.compression.level = level;
        self
    }

    /// Sets the number of compression threads (1..=64). The output does not depend on it.
    #[must_use]
    pub fn workers(mut self, workers: u32) -> Self {
        self.compression.workers = workers;
        self
    }

    /// Sets the sort memory budget.
    #[must_use]
    pub fn sort_memory(mut self, bytes: usize) -> Self {
        self.sort_memory = bytes;
        self
    }

    /// Sets the frame size. Changes the output bytes (not the content).
    #[must_use]
    pub fn frame_size(mut self, bytes: usize) -> Self {
        self.frame_size = bytes;
        self
    }

    /// Sets the spill directory.
    #[must_use]
    pub fn spill_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }

    /// Seals Secrets to these recipients (format 1.1, spec §14). Sealing happens before the
    /// sort, so spilled runs hold no Secret in clear either. Encryption is randomized: a sealed
    /// archive is not byte-reproducible (spec §12).
    #[must_use]
    pub fn encrypt_to(mut self, recipients: Recipients) -> Self {
        self.encrypt_to = recipients;
        self
    }

    fn validate(&self) -> Result<()> {
        self.compression.validate()?;
        if self.frame_size < BLOCK_SIZE {
            return Err(ArchiveError::InvalidOption {
                option: "frame_size",
                reason: format!("must be at least {BLOCK_SIZE} bytes"),
            });
        }
        if self.max_entry_bytes == 0 || self.max_entry_bytes > u64::from(u32::MAX) {
            return Err(ArchiveError::InvalidOption {
                option: "max_entry_bytes",
                reason: "must be between 1 byte and 4 GiB".to_owned(),
            });
        }
        Ok(())
    }
}

/// An object to archive: its identity, the facts the index records about it, and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewObject {
    /// Plural resource, e.g. `deployments`.
    pub resource: String,
    /// API group, empty for core.
    pub group: String,
    /// Namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// apiVersion, e.g. `apps/v1`.
    pub api_version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// `metadata.uid` in the source cluster.
    pub uid: Option<String>,
    /// `metadata.ownerReferences`.
    pub owner_references: Vec<OwnerReference>,
    /// Why the object is included.
    pub inclusion: Inclusion,
    /// The object as compact JSON (what `serde_json::to_vec` gives). Stored byte for byte.
    pub json: Vec<u8>,
}

impl NewObject {
    /// Builds an object from its JSON, reading apiVersion, kind, name, namespace, uid and
    /// ownerReferences from the body itself.
    ///
    /// # Errors
    /// [`ArchiveError::InvalidObject`] when the JSON is not an object with `apiVersion`, `kind`
    /// and `metadata.name`.
    pub fn from_json(
        resource: impl Into<String>,
        group: impl Into<String>,
        inclusion: Inclusion,
        json: Vec<u8>,
    ) -> Result<Self> {
        let resource = resource.into();
        let group = group.into();
        let gr = GroupResource::new(group.as_str(), resource.as_str());
        let head = super::manifest::parse_head(&json).map_err(|reason| ArchiveError::InvalidObject {
            entry: format!("{gr}/?"),
            reason,
        })?;
        let meta = head.metadata.ok_or_else(|| ArchiveError::InvalidObject {
            entry: format!("{gr}/?"),
            reason: "no metadata".to_owned(),
        })?;
        let namespace = meta.namespace.filter(|ns| !ns.is_empty());
        // Name the object as well as the body allows: `<gr>/<ns>/<name>` or `<gr>/?`.
        let label = match (&namespace, &meta.name) {
            (Some(ns), Some(name)) => format!("{gr}/{ns}/{name}"),
            (None, Some(name)) => format!("{gr}/{name}"),
            _ => format!("{gr}/?"),
        };
        let invalid = |reason: &str| ArchiveError::InvalidObject {
            entry: label.clone(),
            reason: reason.to_owned(),
        };
        Ok(NewObject {
            api_version: head.api_version.ok_or_else(|| invalid("no apiVersion"))?,
            kind: head.kind.ok_or_else(|| invalid("no kind"))?,
            name: meta.name.clone().ok_or_else(|| invalid("no metadata.name"))?,
            namespace,
            uid: meta.uid,
            owner_references: meta.owner_references,
            resource,
            group,
            inclusion,
            json,
        })
    }
}

/// What [`ArchiveWriter::finish`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenArchive {
    /// The final path.
    pub path: PathBuf,
    /// Number of objects.
    pub objects: u64,
    /// Size of the tar stream (all entries, headers and trailer) before compression.
    pub uncompressed_bytes: u64,
    /// Size of the file.
    pub compressed_bytes: u64,
    /// SHA-256 of the manifest entry (lowercase hex): the archive's identity, also in the locator.
    pub manifest_sha256: String,
}

/// Where an archive's bytes go when they do not go to a file: a stream (an object store's
/// multipart upload) that makes the archive visible under its final name only on
/// [`ArchiveSink::commit`]. Dropping a sink without committing must abandon what it received,
/// leaving nothing under the final name.
pub trait ArchiveSink: Write + Send + std::fmt::Debug {
    /// Makes the archive visible under its final name. Called once, after every byte was written
    /// and flushed and the writer's own checks passed; `written` says what the writer produced
    /// (its size and manifest digest), for the sink to check against what it received.
    ///
    /// # Errors
    /// The archive could not be made visible; nothing may then be under the final name.
    fn commit(self: Box<Self>, written: &WrittenArchive) -> io::Result<()>;
}

/// Where [`ArchiveWriter`] writes: a hidden temporary file renamed at the end, or a sink.
#[derive(Debug)]
enum Target {
    File(tempfile::NamedTempFile),
    Sink(Box<dyn ArchiveSink>),
}

/// The byte stream of [`Target`] while the archive is written.
#[derive(Debug)]
enum Out {
    File(File),
    Sink(Box<dyn ArchiveSink>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::File(f) => f.write(buf),
            Out::Sink(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::File(f) => f.flush(),
            Out::Sink(s) => s.flush(),
        }
    }
}

/// Writes one archive. See the [module docs](super) for the format and guarantees.
///
/// # Guarantees
/// - Memory stays bounded by [`WriterOptions::sort_memory`], 4 MiB of objects queued for the
///   prepare thread, the merge's read buffers (at most 4 MiB) and a few frames (workers + 3),
///   whatever the object count (see `benches/RESULTS.md`).
/// - The same objects and facts, added in any order, give a byte-identical file (for the same
///   options and compression library version).
/// - Nothing exists under the final name until [`ArchiveWriter::finish`] succeeds; an error,
///   a drop without `finish`, or a crash leaves at most a hidden `.<name>.*.partial` file.
#[derive(Debug)]
pub struct ArchiveWriter {
    path: PathBuf,
    target: Target,
    facts: ArchiveFacts,
    mtime: u64,
    options: WriterOptions,
    prepare: Prepare,
}

impl ArchiveWriter {
    /// Prepares to write an archive at `path` (the directory must exist).
    ///
    /// # Errors
    /// [`ArchiveError::AlreadyExists`] if `path` exists; [`ArchiveError::InvalidOption`] for bad
    /// options or a `created_at` that is not RFC 3339; [`ArchiveError::Io`] if the temporary
    /// file cannot be created.
    pub fn create(path: impl AsRef<Path>, facts: ArchiveFacts, options: WriterOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        options.validate()?;
        let mtime = mtime_of(&facts)?;
        if path.exists() {
            return Err(ArchiveError::AlreadyExists { path });
        }
        let file_name = path
            .file_name()
            .ok_or_else(|| ArchiveError::InvalidOption {
                option: "path",
                reason: format!("{} has no file name", path.display()),
            })?
            .to_string_lossy()
            .into_owned();
        let dir = parent_dir(&path);
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{file_name}."))
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| ArchiveError::io(&dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            temp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ArchiveError::io(temp.path(), e))?;
        }
        let spill_dir = options.spill_dir.clone().unwrap_or(dir);
        Ok(Self::start(
            path,
            Target::File(temp),
            facts,
            mtime,
            spill_dir,
            options,
        ))
    }

    /// The writer of `target`, its preparing thread started.
    fn start(
        path: PathBuf,
        target: Target,
        facts: ArchiveFacts,
        mtime: u64,
        spill_dir: PathBuf,
        options: WriterOptions,
    ) -> Self {
        ArchiveWriter {
            path,
            target,
            facts,
            mtime,
            prepare: Prepare::spawn(
                ExternalSorter::new(options.sort_memory, spill_dir),
                options.encrypt_to.clone(),
            ),
            options,
        }
    }

    /// Prepares to write an archive into `sink` (an upload); `name` is what errors and
    /// [`WrittenArchive::path`] call it. Scratch files go to [`WriterOptions::spill_dir`], else
    /// the system's temporary directory.
    ///
    /// # Errors
    /// [`ArchiveError::InvalidOption`] for bad options or a `created_at` that is not RFC 3339.
    pub fn create_in_sink(
        name: impl Into<PathBuf>,
        sink: Box<dyn ArchiveSink>,
        facts: ArchiveFacts,
        options: WriterOptions,
    ) -> Result<Self> {
        options.validate()?;
        let mtime = mtime_of(&facts)?;
        let spill_dir = options.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
        Ok(Self::start(
            name.into(),
            Target::Sink(sink),
            facts,
            mtime,
            spill_dir,
            options,
        ))
    }

    /// Adds one object. Objects may come in any order.
    ///
    /// The identity and size are checked here; the JSON check, hashing and sorting run on a
    /// second thread so the caller can go on fetching objects meanwhile.
    ///
    /// # Errors
    /// [`ArchiveError::InvalidPath`] when the identity does not fit the layout;
    /// [`ArchiveError::EntryTooLarge`]. [`ArchiveError::InvalidObject`] when the JSON is not an
    /// object or disagrees with the identity given (apiVersion, kind, name, namespace, uid,
    /// ownerReferences), and [`ArchiveError::Io`] when spilling fails, are reported by this call
    /// or by a later `add` or `finish`, naming the object concerned. After an error the writer
    /// is unusable. Duplicates are reported by [`ArchiveWriter::finish`].
    pub fn add(&mut self, object: NewObject) -> Result<()> {
        let (key, path) = object.key_and_path()?;
        let size = object.json.len() as u64;
        if size > self.options.max_entry_bytes {
            return Err(ArchiveError::EntryTooLarge {
                entry: path,
                size,
                limit: self.options.max_entry_bytes,
            });
        }
        if matches!(object.inclusion, Inclusion::Unknown) {
            return Err(ArchiveError::InvalidObject {
                entry: path,
                reason: "inclusion reason `Unknown` is for reading newer archives only".to_owned(),
            });
        }
        self.prepare.send(
            Staged::Object {
                key,
                path,
                object: Box::new(object),
            },
            &self.path,
        )
    }

    /// Adds one object given only as JSON: apiVersion, kind, name, namespace, uid and
    /// ownerReferences are read from the body (parsed once, on the prepare thread). The
    /// equivalent of `add(NewObject::from_json(..)?)` without parsing the body twice.
    ///
    /// # Errors
    /// [`ArchiveError::EntryTooLarge`] here; [`ArchiveError::InvalidObject`] (not a JSON object,
    /// no `apiVersion`, `kind` or `metadata.name`) and [`ArchiveError::InvalidPath`] from this
    /// call or a later `add` or `finish`, naming the object, as for [`ArchiveWriter::add`].
    pub fn add_json(
        &mut self,
        resource: &str,
        group: &str,
        inclusion: Inclusion,
        json: Vec<u8>,
    ) -> Result<()> {
        let size = json.len() as u64;
        if size > self.options.max_entry_bytes {
            return Err(ArchiveError::EntryTooLarge {
                entry: format!("{}/?", GroupResource::new(group, resource)),
                size,
                limit: self.options.max_entry_bytes,
            });
        }
        if matches!(inclusion, Inclusion::Unknown) {
            return Err(ArchiveError::InvalidObject {
                entry: format!("{}/?", GroupResource::new(group, resource)),
                reason: "inclusion reason `Unknown` is for reading newer archives only".to_owned(),
            });
        }
        let staged = Staged::Json {
            resource: resource.to_owned(),
            group: group.to_owned(),
            inclusion,
            json,
        };
        self.prepare.send(staged, &self.path)
    }

    /// Sorts, compresses and writes everything, then moves the file to its final name.
    ///
    /// # Errors
    /// [`ArchiveError::DuplicatePath`] if two objects share a path; [`ArchiveError::AlreadyExists`]
    /// if the final name appeared meanwhile; [`ArchiveError::Io`]. On error nothing is left under
    /// the final name.
    pub fn finish(self) -> Result<WrittenArchive> {
        let ArchiveWriter {
            path,
            target,
            facts,
            mtime,
            options,
            prepare,
        } = self;
        let (sorter, summary) = prepare.finish(&path)?;
        let spill_dir = sorter.spill_dir().to_path_buf();
        let spill_err = |e: io::Error| ArchiveError::io(&spill_dir, e);
        let temp_path = match &target {
            Target::File(temp) => temp.path().to_path_buf(),
            Target::Sink(_) => path.clone(),
        };
        let out_err = |e: io::Error| ArchiveError::io(&temp_path, e);
        let (out, temp) = match target {
            Target::File(temp) => (
                Out::File(temp.as_file().try_clone().map_err(out_err)?),
                Some(temp),
            ),
            Target::Sink(sink) => (Out::Sink(sink), None),
        };
        // Frames are written whole (their writes bypass the buffer); it gathers the small ones.
        let out = CountingWriter::new(BufWriter::with_capacity(256 << 10, out));
        let mut frames = FramePipeline::new(out, options.compression);
        let index_file = tempfile::tempfile_in(&spill_dir).map_err(spill_err)?;
        let mut index = IndexSpool::new(index_file);

        // metadata/version: first in path order, alone in the first frame.
        let version_sha = hex::encode(Sha256::digest(VERSION_ENTRY_CONTENT));
        let version_line = serde_json::to_vec(&VersionLine {
            path: VERSION_ENTRY,
            size: VERSION_ENTRY_CONTENT.len() as u64,
            sha256: &version_sha,
        })
        .map_err(|e| ArchiveError::io(&temp_path, io::Error::other(e)))?;
        let mut builder = FrameBuilder::new(options.frame_size, mtime);
        builder
            .append(VERSION_ENTRY, VERSION_ENTRY_CONTENT, &mut frames)
            .map_err(out_err)?;
        index.write_line(&version_line).map_err(spill_err)?;

        let mut previous: Option<String> = None;
        let mut objects = 0u64;
        for item in sorter.finish().map_err(spill_err)? {
            let item = item.map_err(spill_err)?;
            if previous.as_deref() == Some(item.path.as_str()) {
                return Err(ArchiveError::DuplicatePath { entry: item.path });
            }
            builder
                .append(&item.path, &item.body, &mut frames)
                .map_err(out_err)?;
            index.write_line(&item.line).map_err(spill_err)?;
            objects += 1;
            previous = Some(item.path);
        }
        builder.flush(&mut frames).map_err(out_err)?;
        let (out, frame_infos) = frames.finish().map_err(out_err)?;
        let (index_file, index_info) = index.finish().map_err(spill_err)?;

        let sealed = !options.encrypt_to.is_empty();
        let (format_version, format_minor) = if sealed {
            (FORMAT_VERSION, FORMAT_MINOR)
        } else {
            (UNSEALED_FORMAT_VERSION, UNSEALED_FORMAT_MINOR)
        };
        let manifest = ArchiveManifest {
            format_version: format_version.to_owned(),
            tool: ToolInfo {
                name: "kpromote".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            facts,
            codec: CodecInfo {
                name: options.compression.codec,
                level: options.compression.level,
            },
            encryption: sealed.then(|| options.encrypt_to.encryption()),
            summary,
            index: index_info,
            frames: frame_infos,
        };
        let mut manifest_bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ArchiveError::io(&temp_path, io::Error::other(e)))?;
        manifest_bytes.push(b'\n');
        let manifest_digest: [u8; 32] = Sha256::digest(&manifest_bytes).into();

        let frame_b_offset = out.count;
        let mut frame_b = FrameEncoder::new(out, &options.compression).map_err(out_err)?;
        let mut uncompressed = frame_infos_total(&manifest.frames);
        uncompressed +=
            write_small_entry(&mut frame_b, MANIFEST_ENTRY, &manifest_bytes, mtime).map_err(out_err)?;
        uncompressed +=
            copy_entry(&mut frame_b, INDEX_ENTRY, index_file, manifest.index.size, mtime).map_err(out_err)?;
        frame_b.write_all(&[0u8; 2 * BLOCK_SIZE]).map_err(out_err)?;
        uncompressed += 2 * BLOCK_SIZE as u64;
        let mut out = frame_b.finish().map_err(out_err)?;
        let locator = Locator {
            major: FORMAT_MAJOR,
            minor: format_minor,
            flags: 0,
            frame_b_offset,
            frame_b_len: out.count - frame_b_offset,
            manifest_sha256: manifest_digest,
        };
        out.write_all(&locator.encode(options.compression.codec))
            .map_err(out_err)?;
        let compressed_bytes = out.count;
        let written = WrittenArchive {
            path: path.clone(),
            objects,
            uncompressed_bytes: uncompressed,
            compressed_bytes,
            manifest_sha256: hex::encode(manifest_digest),
        };
        let file = match out.inner.into_inner().map_err(|e| out_err(e.into_error()))? {
            Out::Sink(mut sink) => {
                sink.flush().map_err(out_err)?;
                sink.commit(&written).map_err(out_err)?;
                return Ok(written);
            }
            Out::File(file) => file,
        };
        file.sync_all().map_err(out_err)?;
        drop(file);
        let Some(temp) = temp else {
            return Err(out_err(io::Error::other("the temporary file is gone")));
        };
        temp.persist_noclobber(&path).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                ArchiveError::AlreadyExists { path: path.clone() }
            } else {
                ArchiveError::io(&path, e.error)
            }
        })?;
        sync_dir(&parent_dir(&path))?;
        Ok(written)
    }
}

/// The tar mtime of every entry: `created_at` in seconds (11 octal digits; 0 before 1970).
fn mtime_of(facts: &ArchiveFacts) -> Result<u64> {
    let created: jiff::Timestamp = facts
        .created_at
        .parse()
        .map_err(|e| ArchiveError::InvalidOption {
            option: "created_at",
            reason: format!("{:?} is not an RFC 3339 timestamp: {e}", facts.created_at),
        })?;
    Ok(u64::try_from(created.as_second())
        .unwrap_or(0)
        .min(0o77_777_777_777))
}

/// An object whose identity passed the cheap checks, on its way to the prepare thread.
#[derive(Debug)]
enum Staged {
    /// Identity given by the caller; the body is checked against it.
    Object {
        key: ObjectKey,
        path: String,
        object: Box<NewObject>,
    },
    /// Identity to be read from the body.
    Json {
        resource: String,
        group: String,
        inclusion: Inclusion,
        json: Vec<u8>,
    },
}

impl Staged {
    fn len(&self) -> usize {
        match self {
            Staged::Object { object, .. } => object.json.len(),
            Staged::Json { json, .. } => json.len(),
        }
    }
}

/// Most bytes of object JSON queued for the prepare thread: bounds the memory the queue adds.
const STAGED_BYTES: usize = 1 << 20;
/// Objects are handed to the prepare thread in batches of about this many bytes (or
/// [`BATCH_OBJECTS`] objects), so the threads do not wake each other for every object.
const BATCH_BYTES: usize = 256 << 10;
/// Most objects in one batch.
const BATCH_OBJECTS: usize = 128;

/// Bytes queued for the prepare thread, so `add` blocks rather than queue without bound.
#[derive(Debug)]
struct InFlight {
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `n` more bytes fit (one object always fits when the queue is empty), or the
    /// prepare thread has stopped.
    fn acquire(&self, n: usize) {
        let mut state = self.lock();
        while !state.1 && state.0 > 0 && state.0 + n > STAGED_BYTES {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.0 += n;
    }

    fn release(&self, n: usize) {
        let mut state = self.lock();
        state.0 = state.0.saturating_sub(n);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}

type Prepared = Result<(ExternalSorter, Summary)>;

/// The thread that checks, hashes and sorts objects while the caller adds more.
#[derive(Debug)]
struct Prepare {
    tx: Option<SyncSender<Vec<Staged>>>,
    handle: Option<JoinHandle<Prepared>>,
    in_flight: Arc<InFlight>,
    batch: Vec<Staged>,
    batch_bytes: usize,
}

impl Prepare {
    fn spawn(mut sorter: ExternalSorter, seal_to: Recipients) -> Self {
        let (tx, rx) = sync_channel::<Vec<Staged>>(4);
        let in_flight = Arc::new(InFlight {
            state: Mutex::new((0, false)),
            changed: Condvar::new(),
        });
        let flight = Arc::clone(&in_flight);
        let handle = std::thread::spawn(move || {
            let mut summary = Summary::default();
            let result = (|| {
                for batch in rx {
                    let n: usize = batch.iter().map(Staged::len).sum();
                    let outcome = batch
                        .into_iter()
                        .try_for_each(|staged| prepare_one(staged, &mut sorter, &mut summary, &seal_to));
                    flight.release(n);
                    outcome?;
                }
                Ok(())
            })();
            flight.close();
            result.map(|()| (sorter, summary))
        });
        Prepare {
            tx: Some(tx),
            handle: Some(handle),
            in_flight,
            batch: Vec::new(),
            batch_bytes: 0,
        }
    }

    fn send(&mut self, staged: Staged, archive: &Path) -> Result<()> {
        self.batch_bytes += staged.len();
        self.batch.push(staged);
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_OBJECTS {
            self.flush(archive)?;
        }
        Ok(())
    }

    fn flush(&mut self, archive: &Path) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.in_flight.acquire(self.batch_bytes);
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        let sent = match &self.tx {
            Some(tx) => tx.send(batch).is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(self.failure(archive)) }
    }

    /// The error that stopped the prepare thread.
    fn failure(&mut self, archive: &Path) -> ArchiveError {
        self.tx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => ArchiveError::io(archive, io::Error::other("the prepare thread panicked")),
            Some(Ok(Ok(_))) | None => {
                ArchiveError::io(archive, io::Error::other("an earlier error stopped this writer"))
            }
        }
    }

    fn finish(mut self, archive: &Path) -> Prepared {
        self.flush(archive)?;
        self.tx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ArchiveError::io(
                archive,
                io::Error::other("the prepare thread panicked"),
            )),
            None => Err(ArchiveError::io(
                archive,
                io::Error::other("an earlier error stopped this writer"),
            )),
        }
    }
}

/// Checks the JSON, seals it if it is a Secret and there are recipients, hashes what is stored,
/// serializes its index record and hands it to the sorter.
fn prepare_one(
    staged: Staged,
    sorter: &mut ExternalSorter,
    summary: &mut Summary,
    seal_to: &Recipients,
) -> Result<()> {
    let (key, path, object) = match staged {
        Staged::Object { key, path, object } => {
            check_body(&path, &object)?;
            (key, path, *object)
        }
        Staged::Json {
            resource,
            group,
            inclusion,
            json,
        } => {
            // One parse: the identity comes from the body, so there is nothing to compare.
            let object = NewObject::from_json(resource, group, inclusion, json)?;
            let (key, path) = object.key_and_path()?;
            (key, path, object)
        }
    };
    let (body, encryption) =
        if !seal_to.is_empty() && seal::is_sealed_resource(&object.group, &object.resource) {
            (seal_to.seal(&path, &object.json)?, Some(seal::SCHEME.to_owned()))
        } else {
            (object.json, None)
        };
    let size = body.len() as u64;
    let sha256 = hex::encode(Sha256::digest(&body));
    let record = IndexRecord {
        path: path.clone(),
        api_version: object.api_version,
        kind: object.kind,
        resource: object.resource,
        group: object.group,
        namespace: object.namespace,
        name: object.name,
        uid: object.uid,
        owner_references: object.owner_references,
        inclusion: object.inclusion,
        size,
        sha256,
        encryption,
    };
    let line = serde_json::to_vec(&record).map_err(|e| ArchiveError::InvalidObject {
        entry: path.clone(),
        reason: e.to_string(),
    })?;
    summary.add(&key, size);
    sorter
        .push(SortItem { path, line, body })
        .map_err(|e| ArchiveError::io(sorter.spill_dir(), e))
}

fn frame_infos_total(frames: &[FrameInfo]) -> u64 {
    frames.iter().map(|f| f.uncompressed).sum()
}

impl NewObject {
    /// The object's entry path (spec §3).
    ///
    /// # Errors
    /// [`ArchiveError::InvalidPath`] when its identity does not fit the grammar (spec §3.4).
    pub fn entry_path(&self) -> Result<String> {
        Ok(self.key_and_path()?.1)
    }

    /// The object's key and entry path, checked against the grammar (spec §3.4).
    fn key_and_path(&self) -> Result<(ObjectKey, String)> {
        let invalid = |reason: PathError| ArchiveError::InvalidPath {
            entry: describe_identity(self),
            reason,
        };
        let key = ObjectKey::new(
            self.group.clone(),
            self.resource.clone(),
            self.namespace.clone(),
            self.name.clone(),
        )
        .map_err(|e| invalid(e.into()))?;
        let path = layout::object_path(&key).map_err(invalid)?;
        Ok((key, path))
    }
}

fn describe_identity(o: &NewObject) -> String {
    format!(
        "{}/{}{}",
        GroupResource::new(o.group.as_str(), o.resource.as_str()),
        o.namespace
            .as_deref()
            .map(|ns| format!("{ns}/"))
            .unwrap_or_default(),
        o.name
    )
}

/// Checks the body is a JSON object agreeing with the identity and facts given for it.
fn check_body(path: &str, object: &NewObject) -> Result<()> {
    let invalid = |reason: String| ArchiveError::InvalidObject {
        entry: path.to_owned(),
        reason,
    };
    let head = super::manifest::parse_head(&object.json).map_err(invalid)?;
    let meta = head.metadata.ok_or_else(|| invalid("no metadata".to_owned()))?;
    let mismatch = |field: &str, body: &str, given: &str| {
        invalid(format!("{field} is {body:?} in the JSON but {given:?} was given"))
    };
    let body_api = head.api_version.unwrap_or_default();
    if body_api != object.api_version {
        return Err(mismatch("apiVersion", &body_api, &object.api_version));
    }
    let body_kind = head.kind.unwrap_or_default();
    if body_kind != object.kind {
        return Err(mismatch("kind", &body_kind, &object.kind));
    }
    let body_name = meta.name.unwrap_or_default();
    if body_name != object.name {
        return Err(mismatch("metadata.name", &body_name, &object.name));
    }
    let body_ns = meta.namespace.unwrap_or_default();
    let given_ns = object.namespace.clone().unwrap_or_default();
    if body_ns != given_ns {
        return Err(mismatch("metadata.namespace", &body_ns, &given_ns));
    }
    if meta.uid != object.uid {
        return Err(mismatch(
            "metadata.uid",
            meta.uid.as_deref().unwrap_or(""),
            object.uid.as_deref().unwrap_or(""),
        ));
    }
    if meta.owner_references != object.owner_references {
        return Err(invalid(
            "metadata.ownerReferences in the JSON differ from those given".to_owned(),
        ));
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes the rename durable: fsync the directory entry (a no-op where directories cannot be
/// opened, e.g. Windows).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ArchiveError::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A writer that counts bytes, to learn frame offsets.
#[derive(Debug)]
pub(crate) struct CountingWriter<W> {
    pub(crate) inner: W,
    pub(crate) count: u64,
}

impl<W> CountingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Accumulates tar bytes of frame A and cuts frames: at `frame_size`, and whenever the
/// group-resource changes (so a reader can seek to one resource's objects).
#[derive(Debug)]
struct FrameBuilder {
    frame_size: usize,
    mtime: u64,
    buf: Vec<u8>,
    entries: u64,
    first_path: String,
    group: String,
}

impl FrameBuilder {
    fn new(frame_size: usize, mtime: u64) -> Self {
        FrameBuilder {
            frame_size,
            mtime,
            buf: Vec::new(),
            entries: 0,
            first_path: String::new(),
            group: String::new(),
        }
    }

    fn append<W: Write + Send + 'static>(
        &mut self,
        path: &str,
        body: &[u8],
        frames: &mut FramePipeline<W>,
    ) -> io::Result<()> {
        let group = frame_group(path);
        if self.entries > 0 && (group != self.group || self.buf.len() >= self.frame_size) {
            self.flush(frames)?;
        }
        if self.entries == 0 {
            self.first_path = path.to_owned();
            self.group = group.to_owned();
        }
        tar_header::encode_file_header(path, body.len() as u64, self.mtime, &mut self.buf);
        self.buf.extend_from_slice(body);
        self.buf
            .extend(std::iter::repeat_n(0u8, tar_header::padding(body.len() as u64)));
        self.entries += 1;
        Ok(())
    }

    fn flush<W: Write + Send + 'static>(&mut self, frames: &mut FramePipeline<W>) -> io::Result<()> {
        if self.entries == 0 {
            return Ok(());
        }
        let spare = frames.spare_buffer(self.frame_size + (64 << 10));
        let data = std::mem::replace(&mut self.buf, spare);
        frames.submit(data, self.entries, std::mem::take(&mut self.first_path))?;
        self.entries = 0;
        Ok(())
    }
}

/// The part of a path that decides frame boundaries: `metadata`, or `resources/<gr>`.
fn frame_group(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("resources/") {
        let end = rest.find('/').map_or(path.len(), |i| "resources/".len() + i);
        &path[..end]
    } else {
        path.split('/').next().unwrap_or(path)
    }
}

type Job = (u64, Vec<u8>);
/// A compressed frame, and the uncompressed buffer handed back for reuse.
type Done = (u64, io::Result<Vec<u8>>, Vec<u8>);

/// Compresses frames on worker threads and writes them in order. Each frame is compressed
/// independently and single-threaded, so the bytes do not depend on the number of workers.
struct FramePipeline<W> {
    out: CountingWriter<W>,
    compression: Compression,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Submitted frames not yet written: (entries, first path, uncompressed size).
    pending: BTreeMap<u64, (u64, String, u64)>,
    finished: BTreeMap<u64, Vec<u8>>,
    next_seq: u64,
    next_write: u64,
    frames: Vec<FrameInfo>,
    /// Uncompressed frame buffers back from the workers, reused to avoid fresh page faults.
    spare: Vec<Vec<u8>>,
}

impl<W> std::fmt::Debug for FramePipeline<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramePipeline")
            .field("compression", &self.compression)
            .field("next_seq", &self.next_seq)
            .field("next_write", &self.next_write)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send + 'static> FramePipeline<W> {
    fn new(out: CountingWriter<W>, compression: Compression) -> Self {
        let workers_n = compression.workers.max(1) as usize;
        let (job_tx, job_rx) = sync_channel::<Job>(workers_n);
        let (done_tx, done_rx) = sync_channel::<Done>(workers_n + 1);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..workers_n)
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                std::thread::spawn(move || compress_worker(&job_rx, &done_tx, compression))
            })
            .collect();
        FramePipeline {
            out,
            compression,
            jobs: Some(job_tx),
            done: done_rx,
            workers,
            pending: BTreeMap::new(),
            finished: BTreeMap::new(),
            next_seq: 0,
            next_write: 0,
            frames: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// An empty buffer for the next frame, reused when one came back.
    fn spare_buffer(&mut self, capacity: usize) -> Vec<u8> {
        self.spare.pop().unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Queues one frame. Blocks while too many frames are in flight, writing finished ones.
    fn submit(&mut self, data: Vec<u8>, entries: u64, first_path: String) -> io::Result<()> {
        // One frame per worker being compressed and one queued: the workers never wait, and
        // the frames held stay few (each is `frame_size` of memory).
        let limit = self.workers.len() as u64 + 1;
        while self.next_seq - self.next_write >= limit {
            self.collect_one()?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(seq, (entries, first_path, data.len() as u64));
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("pipeline closed"))?;
        jobs.send((seq, data))
            .map_err(|_| io::Error::other("compression worker stopped"))?;
        Ok(())
    }

    /// Receives one compressed frame and writes every frame now in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (seq, result, mut spent) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("compression worker stopped"))?;
        if self.spare.is_empty() {
            spent.clear();
            self.spare.push(spent);
        }
        self.finished.insert(seq, result?);
        while let Some(bytes) = self.finished.remove(&self.next_write) {
            let (entries, first_path, uncompressed) = self
                .pending
                .remove(&self.next_write)
                .ok_or_else(|| io::Error::other("frame bookkeeping lost"))?;
            let offset = self.out.count;
            self.out.write_all(&bytes)?;
            self.frames.push(FrameInfo {
                offset,
                length: bytes.len() as u64,
                uncompressed,
                entries,
                first_path,
            });
            self.next_write += 1;
        }
        Ok(())
    }

    /// Waits for every frame, stops the workers and gives back the sink and the frame table.
    fn finish(mut self) -> io::Result<(CountingWriter<W>, Vec<FrameInfo>)> {
        while self.next_write < self.next_seq {
            self.collect_one()?;
        }
        self.jobs = None;
        for worker in self.workers.drain(..) {
            worker
                .join()
                .map_err(|_| io::Error::other("compression worker panicked"))?;
        }
        Ok((self.out, self.frames))
    }
}

fn compress_worker(jobs: &Mutex<Receiver<Job>>, done: &SyncSender<Done>, compression: Compression) {
    let mut zstd = None;
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, data)) = job else { return };
        let result = match compression.codec {
            Codec::Zstd => compress_zstd(&mut zstd, compression.level, &data),
            Codec::Gzip => compress_gzip(compression.level, &data),
        };
        if done.send((seq, result, data)).is_err() {
            return;
        }
    }
}

fn compress_zstd(
    compressor: &mut Option<(zstd::bulk::Compressor<'static>, Vec<u8>)>,
    level: i32,
    data: &[u8],
) -> io::Result<Vec<u8>> {
    if compressor.is_none() {
        let mut c = zstd::bulk::Compressor::new(level)?;
        c.include_checksum(true)?;
        *compressor = Some((c, Vec::new()));
    }
    let Some((c, out)) = compressor else {
        return Err(io::Error::other("no compressor"));
    };
    // One output buffer per worker, sized for the worst case once; the frame is copied out.
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(data.len()));
    c.compress_to_buffer(data, out)?;
    Ok(out.clone())
}

fn compress_gzip(level: i32, data: &[u8]) -> io::Result<Vec<u8>> {
    let level = flate2::Compression::new(level.clamp(0, 9).unsigned_abs());
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(data.len() / 4), level);
    enc.write_all(data)?;
    enc.finish()
}

/// The index being written: lines to a temporary file, hashed on the way.
struct IndexSpool {
    out: BufWriter<File>,
    hasher: Sha256,
    records: u64,
    size: u64,
}

impl IndexSpool {
    fn new(file: File) -> Self {
        IndexSpool {
            out: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            records: 0,
            size: 0,
        }
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.hasher.update(line);
        self.hasher.update(b"\n");
        self.records += 1;
        self.size += line.len() as u64 + 1;
        Ok(())
    }

    fn finish(self) -> io::Result<(File, IndexInfo)> {
        let mut file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.seek(SeekFrom::Start(0))?;
        Ok((
            file,
            IndexInfo {
                path: INDEX_ENTRY.to_owned(),
                records: self.records,
                size: self.size,
                sha256: hex::encode(self.hasher.finalize()),
            },
        ))
    }
}

impl std::fmt::Debug for IndexSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexSpool")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

/// Writes a whole entry from memory; returns the tar bytes written.
fn write_small_entry(out: &mut impl Write, path: &str, data: &[u8], mtime: u64) -> io::Result<u64> {
    let mut header = Vec::with_capacity(3 * BLOCK_SIZE);
    tar_header::encode_file_header(path, data.len() as u64, mtime, &mut header);
    out.write_all(&header)?;
    out.write_all(data)?;
    let pad = tar_header::padding(data.len() as u64);
    out.write_all(&[0u8; BLOCK_SIZE][..pad])?;
    Ok((header.len() + data.len() + pad) as u64)
}

/// Writes an entry whose data is streamed from a file of known size; returns the tar bytes.
fn copy_entry(out: &mut impl Write, path: &str, file: File, size: u64, mtime: u64) -> io::Result<u64> {
    let mut header = Vec::with_capacity(3 * BLOCK_SIZE);
    tar_header::encode_file_header(path, size, mtime, &mut header);
    out.write_all(&header)?;
    let copied = io::copy(&mut BufReader::with_capacity(256 * 1024, file), out)?;
    if copied != size {
        return Err(io::Error::other("index spool changed size"));
    }
    let pad = tar_header::padding(size);
    out.write_all(&[0u8; BLOCK_SIZE][..pad])?;
    Ok(header.len() as u64 + size + pad as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_groups() {
        assert_eq!(frame_group("metadata/version"), "metadata");
        assert_eq!(
            frame_group("resources/pods/namespaces/a/b.json"),
            "resources/pods"
        );
        assert_eq!(
            frame_group("resources/deployments.apps/cluster/x.json"),
            "resources/deployments.apps"
        );
    }
}
