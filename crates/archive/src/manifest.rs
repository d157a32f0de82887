//! The archive's own metadata: the manifest (archive-level facts and summary) and the index
//! records (one per entry), as JSON documents.
//!
//! Normative text: `format-spec/v1.md` §5 (manifest) and §6 (index). Field names are camelCase,
//! like Kubernetes. Readers ignore fields they do not know (a newer minor version may add some).

use super::codec::Codec;
use super::error::{ArchiveError, Result};
use super::layout::{self, EntryPath, MANIFEST_ENTRY};
use kpromote_model::ObjectKey;
pub use kpromote_model::OwnerReference;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Facts about an archive that only the caller knows. They go into the manifest verbatim, so
/// two archives of the same objects and the same facts are byte-identical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveFacts {
    /// When the backup was taken, RFC 3339 (e.g. `2024-03-11T10:49:07Z`). Supplied by the caller
    /// rather than read from the clock, so archives are reproducible. Also the tar mtime of
    /// every entry.
    pub created_at: String,
    /// The cluster the objects were read from.
    pub source: SourceCluster,
    /// The PromotePolicy (or command line) that chose the objects.
    pub policy: PolicyFacts,
    /// `metadata.resourceVersion` of each list call, keyed by group-resource (`pods`,
    /// `deployments.apps`). Open map: whatever the backup wants to pin.
    #[serde(default)]
    pub list_resource_versions: BTreeMap<String, String>,
}

/// Where the objects came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceCluster {
    /// The member cluster's name (the Kosmos `Cluster` object name).
    pub name: String,
    /// The API server's `gitVersion`, e.g. `v1.35.0`.
    pub server_version: String,
}

/// What was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFacts {
    /// Policy name.
    pub name: String,
    /// Namespaces included, as given.
    #[serde(default)]
    pub included_namespaces: Vec<String>,
    /// Group-resources excluded, as given (e.g. `events`, `endpointslices.discovery.k8s.io`).
    #[serde(default)]
    pub excluded_resources: Vec<String>,
}

/// The tool that wrote the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolInfo {
    /// `kpromote`.
    pub name: String,
    /// The writer's crate version.
    pub version: String,
}

/// The codec as recorded in the manifest (informational: readers detect the codec from magic
/// bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodecInfo {
    /// `zstd` or `gzip`.
    pub name: Codec,
    /// The compression level used.
    pub level: i32,
}

/// Object count and bytes of one group of objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    /// Number of objects.
    pub objects: u64,
    /// Sum of their JSON sizes in bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

/// Counts of what the archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Number of objects (entries under `resources/`).
    pub objects: u64,
    /// Sum of the objects' JSON sizes.
    pub object_bytes: u64,
    /// Per group-resource (`pods`, `deployments.apps`).
    #[serde(default)]
    pub by_resource: BTreeMap<String, Tally>,
    /// Per namespace; cluster-scoped objects are counted under the empty key `""`.
    #[serde(default)]
    pub by_namespace: BTreeMap<String, Tally>,
}

impl Summary {
    /// Counts one object.
    pub fn add(&mut self, key: &ObjectKey, bytes: u64) {
        self.objects += 1;
        self.object_bytes += bytes;
        self.by_resource
            .entry(key.group_resource().to_string())
            .or_default()
            .add(bytes);
        self.by_namespace
            .entry(key.namespace.clone().unwrap_or_default())
            .or_default()
            .add(bytes);
    }
}

/// Where the index entry is and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexInfo {
    /// Always `kpromote/index.jsonl` in v1.
    pub path: String,
    /// Number of records (lines): objects plus one for `metadata/version`.
    pub records: u64,
    /// Size of the index entry in bytes.
    pub size: u64,
    /// SHA-256 of the index entry bytes, lowercase hex.
    pub sha256: String,
}

/// One compressed frame of frame A (spec §4.1): where it is and what it starts with, so a reader
/// can seek to the objects of one resource without decompressing the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrameInfo {
    /// Byte offset of the frame in the file.
    pub offset: u64,
    /// Compressed length in bytes.
    pub length: u64,
    /// Decompressed length (tar bytes) of the frame.
    pub uncompressed: u64,
    /// Number of entries in the frame.
    pub entries: u64,
    /// Path of the frame's first entry.
    pub first_path: String,
}

/// The manifest: `kpromote/manifest.json`, pretty-printed JSON (spec §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveManifest {
    /// The kpromote format version, semver (e.g. `1.0.0`); see [`super::FORMAT_VERSION`].
    pub format_version: String,
    /// The writing tool.
    pub tool: ToolInfo,
    /// The caller's facts (`createdAt`, `source`, `policy`, `listResourceVersions`).
    #[serde(flatten)]
    pub facts: ArchiveFacts,
    /// Codec and level.
    pub codec: CodecInfo,
    /// How sealed entries are encrypted, and to whom (format 1.1, spec §14); absent when the
    /// archive seals nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<super::seal::Encryption>,
    /// Counts.
    pub summary: Summary,
    /// The index entry's size and digest: the next link of the chain of trust.
    pub index: IndexInfo,
    /// Frames of frame A, in file order.
    pub frames: Vec<FrameInfo>,
}

impl ArchiveManifest {
    /// Parses and checks a manifest's internal consistency. The version is checked by the
    /// caller (it needs the locator too).
    ///
    /// # Errors
    /// [`ArchiveError::InvalidManifest`].
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let manifest: ArchiveManifest = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if manifest.index.path != layout::INDEX_ENTRY {
            return Err(invalid(format!("index path is {:?}", manifest.index.path)));
        }
        if !is_sha256_hex(&manifest.index.sha256) {
            return Err(invalid("index sha256 is not 64 lowercase hex digits".to_owned()));
        }
        if manifest.index.records != manifest.summary.objects + 1 {
            return Err(invalid("index record count is not objects + 1".to_owned()));
        }
        if manifest.frames.is_empty() {
            return Err(invalid("no frames".to_owned()));
        }
        let mut expected_offset = 0u64;
        for (i, frame) in manifest.frames.iter().enumerate() {
            if frame.offset != expected_offset || frame.length == 0 || frame.entries == 0 {
                return Err(invalid(format!("frame {i} does not follow the previous one")));
            }
            expected_offset = frame
                .offset
                .checked_add(frame.length)
                .ok_or_else(|| invalid(format!("frame {i} overflows")))?;
        }
        Ok(manifest)
    }

    /// Parses a manifest after checking its major version first, so a manifest of another
    /// major version is reported as such rather than as malformed.
    ///
    /// # Errors
    /// [`ArchiveError::UnsupportedVersion`], or as [`ArchiveManifest::parse`].
    pub fn parse_checked_version(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct VersionOnly {
            format_version: String,
        }
        let only: VersionOnly = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let (major, _, _) = parse_semver(&only.format_version)
            .ok_or_else(|| invalid(format!("formatVersion {:?} is not semver", only.format_version)))?;
        if major != super::FORMAT_MAJOR {
            return Err(ArchiveError::UnsupportedVersion {
                entry: MANIFEST_ENTRY.to_owned(),
                expected: super::FORMAT_MAJOR,
                got: major,
            });
        }
        Self::parse(bytes)
    }

    /// The major and minor numbers of `format_version`.
    ///
    /// # Errors
    /// [`ArchiveError::InvalidManifest`] when it is not `MAJOR.MINOR.PATCH`.
    pub fn version(&self) -> Result<(u16, u16)> {
        parse_semver(&self.format_version)
            .map(|(major, minor, _)| (major, minor))
            .ok_or_else(|| invalid(format!("formatVersion {:?} is not semver", self.format_version)))
    }

    /// Offset where frame B starts: the end of the last frame of frame A.
    #[must_use]
    pub fn frame_a_end(&self) -> u64 {
        self.frames.last().map_or(0, |f| f.offset + f.length)
    }
}

fn invalid(reason: String) -> ArchiveError {
    ArchiveError::InvalidManifest {
        entry: MANIFEST_ENTRY.to_owned(),
        reason,
    }
}

/// Parses `MAJOR.MINOR.PATCH` (no pre-release or build suffix).
#[must_use]
pub fn parse_semver(text: &str) -> Option<(u16, u16, u16)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// Whether `s` is a SHA-256 digest in lowercase hex.
#[must_use]
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why an object is in the archive (spec §6.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
#[non_exhaustive]
pub enum Inclusion {
    /// A namespaced object of an included namespace.
    Namespaced,
    /// The Namespace object of an included namespace.
    Namespace,
    /// A cluster-scoped object another archived object depends on.
    Dependency {
        /// Path of the object that pulled it in.
        of: String,
        /// The field of that object naming it, e.g. `spec.volumeName`, `spec.storageClassName`,
        /// `subjects`.
        via: String,
    },
    /// The producer did not record a reason (e.g. imported from a Velero tarball).
    Unrecorded,
    /// A reason added by a newer minor version; readers treat it as opaque.
    #[serde(other)]
    Unknown,
}

/// One line of `kpromote/index.jsonl` describing an object entry (spec §6.1).
///
/// Field order on the wire is the declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexRecord {
    /// Entry path, e.g. `resources/pods/namespaces/nginx-test/nginx-abc.json`.
    pub path: String,
    /// Object apiVersion, e.g. `apps/v1`.
    pub api_version: String,
    /// Object kind, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource, e.g. `deployments`.
    pub resource: String,
    /// API group, empty for core.
    pub group: String,
    /// Namespace; absent for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// `metadata.uid` in the source cluster, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `metadata.ownerReferences`, possibly empty.
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
    /// Why the object is included.
    pub inclusion: Inclusion,
    /// Size of the entry in bytes: the JSON, or for a sealed entry the age file holding it.
    pub size: u64,
    /// SHA-256 of the entry's bytes as stored (JSON, or the age file), lowercase hex.
    pub sha256: String,
    /// `age` when the entry is sealed: an age file whose plaintext is the JSON (format 1.1,
    /// spec §14). Absent for entries stored in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
}

impl IndexRecord {
    /// The object's identity, as its path encodes it.
    #[must_use]
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            resource: self.resource.clone(),
            group: self.group.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The group-resource, e.g. `deployments.apps`.
    #[must_use]
    pub fn group_resource(&self) -> String {
        kpromote_model::GroupResource::new(self.group.as_str(), self.resource.as_str()).to_string()
    }
}

/// A line of the index as parsed, before knowing whether it is an object or `metadata/version`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexLine {
    path: String,
    size: u64,
    sha256: String,
    api_version: Option<String>,
    kind: Option<String>,
    resource: Option<String>,
    group: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
    inclusion: Option<Inclusion>,
    encryption: Option<String>,
}

/// The record of the `metadata/version` entry.
#[derive(Debug, Serialize)]
pub(crate) struct VersionLine<'a> {
    pub path: &'a str,
    pub size: u64,
    pub sha256: &'a str,
}

/// A parsed index line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParsedLine {
    /// The `metadata/version` record.
    Version { size: u64, sha256: String },
    /// An object record.
    Object(Box<IndexRecord>),
}

impl ParsedLine {
    pub(crate) fn path(&self) -> &str {
        match self {
            ParsedLine::Version { .. } => layout::VERSION_ENTRY,
            ParsedLine::Object(r) => &r.path,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        match self {
            ParsedLine::Version { size, .. } => *size,
            ParsedLine::Object(r) => r.size,
        }
    }

    pub(crate) fn sha256(&self) -> &str {
        match self {
            ParsedLine::Version { sha256, .. } => sha256,
            ParsedLine::Object(r) => &r.sha256,
        }
    }
}

/// Parses one index line and checks it against its own path: the identity fields must be
/// exactly what the path encodes, so a record cannot send a reader elsewhere.
///
/// `line_no` (1-based) names the record in errors when its path is unusable.
pub(crate) fn parse_index_line(line: &[u8], line_no: u64) -> Result<ParsedLine> {
    let where_ = || format!("{}:{line_no}", layout::INDEX_ENTRY);
    let raw: IndexLine = serde_json::from_slice(line).map_err(|e| ArchiveError::InvalidRecord {
        entry: where_(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| ArchiveError::InvalidRecord {
        entry: raw.path.clone(),
        reason,
    };
    if !is_sha256_hex(&raw.sha256) {
        return Err(bad("sha256 is not 64 lowercase hex digits".to_owned()));
    }
    let key = match layout::parse_entry_path(&raw.path) {
        Ok(EntryPath::Version) => {
            return Ok(ParsedLine::Version {
                size: raw.size,
                sha256: raw.sha256,
            });
        }
        Ok(EntryPath::Object(key)) => key,
        Ok(EntryPath::Kpromote(_)) => {
            return Err(bad("kpromote/ entries are not indexed".to_owned()));
        }
        Err(e) => {
            return Err(ArchiveError::UnsafePath {
                entry: super::tar_stream::display_path(raw.path.as_bytes()),
                reason: e,
            });
        }
    };
    let field =
        |value: Option<String>, name: &str| value.ok_or_else(|| bad(format!("missing field `{name}`")));
    let record = IndexRecord {
        path: raw.path.clone(),
        api_version: field(raw.api_version, "apiVersion")?,
        kind: field(raw.kind, "kind")?,
        resource: field(raw.resource, "resource")?,
        group: field(raw.group, "group")?,
        namespace: raw.namespace,
        name: field(raw.name, "name")?,
        uid: raw.uid,
        owner_references: raw.owner_references,
        inclusion: raw
            .inclusion
            .ok_or_else(|| bad("missing field `inclusion`".to_owned()))?,
        size: raw.size,
        sha256: raw.sha256,
        encryption: raw.encryption,
    };
    if record.key() != key {
        return Err(bad(
            "resource, group, namespace or name disagree with the path".to_owned()
        ));
    }
    Ok(ParsedLine::Object(Box::new(record)))
}

/// The identity fields of an object body: enough to check it against its record, and to build
/// a record from a bare body (Velero tarballs, [`super::NewObject::from_json`]).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObjectHead {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Option<MetaHead>,
}

/// The identity fields of `metadata`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetaHead {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

/// Parses the identity of a JSON body; the whole document is syntax-checked on the way.
///
/// # Errors
/// A description when the bytes are not a JSON object.
pub(crate) fn parse_head(json: &[u8]) -> std::result::Result<ObjectHead, String> {
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        _ => return Err("not a JSON object".to_owned()),
    }
    serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inclusion_wire_format() {
        let dep = Inclusion::Dependency {
            of: "resources/persistentvolumeclaims/namespaces/a/data.json".to_owned(),
            via: "spec.volumeName".to_owned(),
        };
        let json = serde_json::to_string(&dep).expect("serializes");
        assert_eq!(
            json,
            r#"{"reason":"dependency","of":"resources/persistentvolumeclaims/namespaces/a/data.json","via":"spec.volumeName"}"#
        );
        assert_eq!(
            serde_json::to_string(&Inclusion::Namespaced).expect("ser"),
            r#"{"reason":"namespaced"}"#
        );
        let future: Inclusion = serde_json::from_str(r#"{"reason":"webhook","x":1}"#).expect("tolerated");
        assert_eq!(future, Inclusion::Unknown);
    }

    #[test]
    fn index_line_must_agree_with_its_path() {
        let good = br#"{"path":"resources/pods/namespaces/a/b.json","apiVersion":"v1","kind":"Pod","resource":"pods","group":"","namespace":"a","name":"b","ownerReferences":[],"inclusion":{"reason":"namespaced"},"size":2,"sha256":"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}"#;
        assert!(matches!(parse_index_line(good, 2), Ok(ParsedLine::Object(_))));
        let lying = String::from_utf8_lossy(good).replace(r#""name":"b""#, r#""name":"c""#);
        assert!(matches!(
            parse_index_line(lying.as_bytes(), 2),
            Err(ArchiveError::InvalidRecord { .. })
        ));
        let traversal = String::from_utf8_lossy(good).replace("namespaces/a/b.json", "../../b.json");
        assert!(matches!(
            parse_index_line(traversal.as_bytes(), 2),
            Err(ArchiveError::UnsafePath { .. })
        ));
    }

    #[test]
    fn semver() {
        assert_eq!(parse_semver("1.0.0"), Some((1, 0, 0)));
        assert_eq!(parse_semver("1.2"), None);
        assert_eq!(parse_semver("1.2.3-rc1"), None);
    }
}
