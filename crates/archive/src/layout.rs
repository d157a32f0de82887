//! The entry path layout: the one place that knows where an object lives inside an archive.
//!
//! Normative text: `format-spec/v1.md` §3 ("Entry layout"). The layout is Velero's classic
//! (format `1.1.0`) layout, so Velero tooling finds the objects, plus a `kpromote/` directory that
//! Velero ignores:
//!
//! ```text
//! metadata/version                                              "1.1.0\n"
//! resources/<resource>[.<group>]/namespaces/<namespace>/<name>.json
//! resources/<resource>[.<group>]/cluster/<name>.json
//! kpromote/manifest.json
//! kpromote/index.jsonl
//! ```
//!
//! Building and parsing are exact inverses: [`object_path`] only builds paths that
//! [`parse_object_path`] accepts and parses back to the same [`ObjectKey`], and the parser rejects
//! everything else (absolute paths, `..`, `.`, empty components, backslashes, NUL and other control
//! characters, over-long paths, names a Kubernetes API server would never serve).

use std::fmt;

use kpromote_model::ObjectKey;
use kpromote_model::group_resource::split_group_resource;
use kpromote_model::object_key::ObjectKeyError;

/// Path of the Velero format marker; always the first entry of an archive (spec §3.1).
pub const VERSION_ENTRY: &str = "metadata/version";
/// Content of [`VERSION_ENTRY`]: Velero's classic layout version, so Velero reads the objects
/// (spec §3.1). This is *not* the kpromote format version (see [`super::FORMAT_VERSION`]).
pub const VELERO_LAYOUT_VERSION: &str = "1.1.0";
/// Exact bytes of the [`VERSION_ENTRY`] entry.
pub const VERSION_ENTRY_CONTENT: &[u8] = b"1.1.0\n";
/// Directory holding one JSON document per Kubernetes object (spec §3.2).
pub const RESOURCES_DIR: &str = "resources";
/// Directory holding kpromote's own metadata; Velero ignores it (spec §3.3).
pub const KPROMOTE_DIR: &str = "kpromote";
/// Path of the archive manifest, the first entry of frame B (spec §5).
pub const MANIFEST_ENTRY: &str = "kpromote/manifest.json";
/// Path of the object index, the second entry of frame B (spec §6).
pub const INDEX_ENTRY: &str = "kpromote/index.jsonl";
/// Scope directory of namespaced objects.
pub const NAMESPACES_DIR: &str = "namespaces";
/// Scope directory of cluster-scoped objects.
pub const CLUSTER_DIR: &str = "cluster";
/// Suffix of every object entry.
pub const OBJECT_SUFFIX: &str = ".json";

/// Longest entry path accepted, in bytes (spec §3.4). The longest path Kubernetes names allow is
/// 661 bytes (`resources/` + 63-byte resource + `.` + 253-byte group + `/namespaces/` + 63-byte
/// namespace + `/` + 253-byte name + `.json`); the limit leaves room without letting a hostile
/// header make the reader allocate much.
pub const MAX_PATH_LEN: usize = 1024;
pub use kpromote_model::object_key::{MAX_GROUP_LEN, MAX_NAME_LEN, MAX_NAMESPACE_LEN, MAX_RESOURCE_LEN};

/// Why a path or one of its components was refused (spec §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty.
    Empty,
    /// The path is longer than [`MAX_PATH_LEN`].
    TooLong,
    /// The path starts with `/` (an absolute path).
    Absolute,
    /// A component is `..` (path traversal).
    ParentComponent,
    /// A component is `.`.
    CurrentComponent,
    /// Two slashes in a row, or a trailing slash.
    EmptyComponent,
    /// The path contains a backslash (a separator on Windows).
    Backslash,
    /// The path contains NUL or another control character.
    ControlCharacter,
    /// The path is not valid UTF-8.
    NotUtf8,
    /// The path is outside `metadata/version`, `resources/` and `kpromote/`.
    UnknownTopLevel,
    /// A `resources/` path does not have the shape `<gr>/namespaces/<ns>/<name>.json` or
    /// `<gr>/cluster/<name>.json`.
    BadShape,
    /// The object file name does not end in `.json`.
    MissingJsonSuffix,
    /// The resource is not a lowercase RFC 1123 label (letters, digits, `-`; at most 63 bytes).
    BadResource,
    /// The group is not a lowercase RFC 1123 subdomain (at most 253 bytes).
    BadGroup,
    /// The namespace is not a lowercase RFC 1123 label (at most 63 bytes).
    BadNamespace,
    /// The name is empty, `.` or `..`, longer than 253 bytes, or contains `/`, `\`, `%` or a
    /// control character.
    BadName,
    /// A `kpromote/` path is not a single plain file name.
    BadKpromoteName,
}

impl PathError {
    /// A short human description, used in error messages.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            PathError::Empty => "empty path",
            PathError::TooLong => "path longer than 1024 bytes",
            PathError::Absolute => "absolute path",
            PathError::ParentComponent => "`..` component (path traversal)",
            PathError::CurrentComponent => "`.` component",
            PathError::EmptyComponent => "empty path component",
            PathError::Backslash => "backslash in path",
            PathError::ControlCharacter => "NUL or control character in path",
            PathError::NotUtf8 => "path is not UTF-8",
            PathError::UnknownTopLevel => "not under metadata/version, resources/ or kpromote/",
            PathError::BadShape => {
                "not resources/<resource>[.<group>]/namespaces/<ns>/<name>.json or .../cluster/<name>.json"
            }
            PathError::MissingJsonSuffix => "object file name does not end in .json",
            PathError::BadResource => "resource is not a lowercase RFC 1123 label",
            PathError::BadGroup => "group is not a lowercase RFC 1123 subdomain",
            PathError::BadNamespace => "namespace is not a lowercase RFC 1123 label",
            PathError::BadName => "object name is not a valid Kubernetes name",
            PathError::BadKpromoteName => "kpromote/ entry is not a plain file name",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for PathError {}

impl From<ObjectKeyError> for PathError {
    fn from(e: ObjectKeyError) -> Self {
        match e {
            ObjectKeyError::BadResource => PathError::BadResource,
            ObjectKeyError::BadGroup => PathError::BadGroup,
            ObjectKeyError::BadNamespace => PathError::BadNamespace,
            ObjectKeyError::BadName => PathError::BadName,
            _ => PathError::BadShape,
        }
    }
}

/// The entry path of a key already checked (by [`ObjectKey::new`] or [`ObjectKey::validate`]).
fn unchecked_path(key: &ObjectKey) -> String {
    let gr = key.group_resource();
    match &key.namespace {
        Some(ns) => format!(
            "{RESOURCES_DIR}/{gr}/{NAMESPACES_DIR}/{ns}/{}{OBJECT_SUFFIX}",
            key.name
        ),
        None => format!("{RESOURCES_DIR}/{gr}/{CLUSTER_DIR}/{}{OBJECT_SUFFIX}", key.name),
    }
}

/// What an entry path is, once it passed the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPath {
    /// `metadata/version`.
    Version,
    /// `resources/...`: one Kubernetes object.
    Object(ObjectKey),
    /// `kpromote/<file>`: kpromote's own metadata; the file name is given.
    Kpromote(String),
}

/// The entry path of `key`: the only way a path is built from a key, so no key reaches an
/// archive unchecked.
///
/// # Errors
/// [`PathError`] when a component does not fit the grammar (spec §3.4); such an object cannot be
/// stored.
pub fn object_path(key: &ObjectKey) -> Result<String, PathError> {
    key.validate()?;
    let path = unchecked_path(key);
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    Ok(path)
}

/// Parses an object entry path back into its [`ObjectKey`].
///
/// # Errors
/// [`PathError`] for anything that is not exactly the object grammar (spec §3.2, §3.4).
pub fn parse_object_path(path: &str) -> Result<ObjectKey, PathError> {
    match parse_entry_path(path)? {
        EntryPath::Object(key) => Ok(key),
        EntryPath::Version | EntryPath::Kpromote(_) => Err(PathError::BadShape),
    }
}

/// Parses any entry path of a kpromote archive.
///
/// # Errors
/// [`PathError`] naming what is wrong; hostile paths (absolute, traversal, control characters)
/// are reported before shape errors, so the error says "traversal" rather than "bad shape".
pub fn parse_entry_path(path: &str) -> Result<EntryPath, PathError> {
    check_generic(path)?;
    if path == VERSION_ENTRY {
        return Ok(EntryPath::Version);
    }
    if let Some(file) = path.strip_prefix("kpromote/") {
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            return Err(PathError::BadKpromoteName);
        }
        return Ok(EntryPath::Kpromote(file.to_owned()));
    }
    let Some(rest) = path.strip_prefix("resources/") else {
        return Err(PathError::UnknownTopLevel);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (gr, namespace, file) = match parts.as_slice() {
        [gr, scope, ns, file] if *scope == NAMESPACES_DIR => (*gr, Some(*ns), *file),
        [gr, scope, file] if *scope == CLUSTER_DIR => (*gr, None, *file),
        _ => return Err(PathError::BadShape),
    };
    let name = file
        .strip_suffix(OBJECT_SUFFIX)
        .ok_or(PathError::MissingJsonSuffix)?;
    let (resource, group) = split_group_resource(gr);
    let key = ObjectKey::new(group, resource, namespace.map(str::to_owned), name)?;
    debug_assert_eq!(unchecked_path(&key), path);
    Ok(EntryPath::Object(key))
}

/// Checks that hold for every path, whatever it names: the defences against hostile archives.
///
/// # Errors
/// The first [`PathError`] found.
pub fn check_generic(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::CurrentComponent),
            ".." => return Err(PathError::ParentComponent),
            _ => {}
        }
    }
    Ok(())
}

/// Checks raw header bytes: UTF-8 first, then [`check_generic`].
///
/// # Errors
/// [`PathError::NotUtf8`] or the generic errors.
pub fn check_raw(path: &[u8]) -> Result<&str, PathError> {
    let text = std::str::from_utf8(path).map_err(|_| PathError::NotUtf8)?;
    check_generic(text)?;
    Ok(text)
}

/// A path in a plain Velero tarball, which may hold more than the kpromote grammar: API group
/// version copies (`resources/<gr>/<version>[-preferredversion]/...`) and other files Velero or
/// its plugins add. Used only when reading Velero tarballs (spec §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VeleroPath {
    /// `metadata/version`.
    Version,
    /// A classic object path.
    Object(ObjectKey),
    /// A copy under an API version directory; the classic copy is authoritative.
    VersionedCopy,
    /// Any other safe path; ignored.
    Other,
}

/// Classifies a path of a Velero tarball. Hostile paths are still refused.
pub(crate) fn parse_velero_path(path: &str) -> Result<VeleroPath, PathError> {
    check_generic(path)?;
    match parse_entry_path(path) {
        Ok(EntryPath::Version) => return Ok(VeleroPath::Version),
        Ok(EntryPath::Object(key)) => return Ok(VeleroPath::Object(key)),
        Ok(EntryPath::Kpromote(_)) | Err(_) => {}
    }
    if let Some(rest) = path.strip_prefix("resources/") {
        let parts: Vec<&str> = rest.split('/').collect();
        let versioned = match parts.as_slice() {
            [_, _version, scope, _, _] => *scope == NAMESPACES_DIR,
            [_, _version, scope, _] => *scope == CLUSTER_DIR,
            _ => false,
        };
        if versioned {
            return Ok(VeleroPath::VersionedCopy);
        }
    }
    Ok(VeleroPath::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_velero_paths() {
        let path = |r, g, ns: Option<&str>, n| object_path(&ObjectKey::new(g, r, ns.map(str::to_owned), n)?);
        assert_eq!(
            path("pods", "", Some("nginx-test"), "nginx-abc").as_deref(),
            Ok("resources/pods/namespaces/nginx-test/nginx-abc.json")
        );
        assert_eq!(
            path("deployments", "apps", Some("ns"), "web").as_deref(),
            Ok("resources/deployments.apps/namespaces/ns/web.json")
        );
        assert_eq!(
            path("clusterroles", "rbac.authorization.k8s.io", None, "system:admin").as_deref(),
            Ok("resources/clusterroles.rbac.authorization.k8s.io/cluster/system:admin.json")
        );
    }

    #[test]
    fn parse_is_inverse_of_build() {
        for (r, g, ns, n) in [
            ("pods", "", Some("a"), "b"),
            ("persistentvolumes", "", None, "pv-1"),
            ("widgets", "example.com", Some("x-y"), "w.json.json"),
            ("namespaces", "", None, "nginx-test"),
        ] {
            let path =
                object_path(&ObjectKey::new(g, r, ns.map(str::to_owned), n).expect("valid")).expect("valid");
            let key = parse_object_path(&path).expect("parses");
            assert_eq!(key.resource, r);
            assert_eq!(key.group, g);
            assert_eq!(key.namespace.as_deref(), ns);
            assert_eq!(key.name, n);
        }
    }

    #[test]
    fn rejects_hostile_paths() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("resources/../../etc/passwd", PathError::ParentComponent),
            (
                "resources/pods/namespaces/a/../b.json",
                PathError::ParentComponent,
            ),
            ("resources/./pods/cluster/a.json", PathError::CurrentComponent),
            ("resources//pods/cluster/a.json", PathError::EmptyComponent),
            ("resources/pods/cluster/", PathError::EmptyComponent),
            ("resources\\pods\\cluster\\a.json", PathError::Backslash),
            ("resources/pods/cluster/a\0.json", PathError::ControlCharacter),
            ("resources/pods/cluster/a\n.json", PathError::ControlCharacter),
            ("etc/passwd", PathError::UnknownTopLevel),
            ("resources/pods/a.json", PathError::BadShape),
            ("resources/pods/namespaces/a/b/c.json", PathError::BadShape),
            ("resources/pods/cluster/a.yaml", PathError::MissingJsonSuffix),
            ("resources/Pods/cluster/a.json", PathError::BadResource),
            ("resources/pods.Apps/cluster/a.json", PathError::BadGroup),
            ("resources/pods../cluster/a.json", PathError::BadGroup),
            ("resources/pods/namespaces/Bad_NS/a.json", PathError::BadNamespace),
            ("resources/pods/cluster/a%2f.json", PathError::BadName),
            ("resources/pods/cluster/.json", PathError::BadName),
            ("kpromote/", PathError::EmptyComponent),
            ("kpromote/a/b", PathError::BadKpromoteName),
        ];
        for (path, want) in cases {
            assert_eq!(parse_entry_path(path), Err(want), "{path:?}");
        }
        let long = format!("resources/pods/cluster/{}.json", "a".repeat(1100));
        assert_eq!(parse_entry_path(&long), Err(PathError::TooLong));
        let long_name = format!("resources/pods/cluster/{}.json", "a".repeat(254));
        assert_eq!(parse_entry_path(&long_name), Err(PathError::BadName));
        assert_eq!(check_raw(b"resources/\xff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn longest_legal_path_fits() {
        let group = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
        assert_eq!(group.len(), 253);
        let key =
            ObjectKey::new(group, "r".repeat(63), Some("n".repeat(63)), "x".repeat(253)).expect("valid");
        let path = object_path(&key).expect("longest legal object");
        assert_eq!(path.len(), 661);
    }

    #[test]
    fn velero_versioned_copies_are_recognised() {
        assert_eq!(
            parse_velero_path("resources/pods/v1-preferredversion/namespaces/a/b.json"),
            Ok(VeleroPath::VersionedCopy)
        );
        assert_eq!(
            parse_velero_path("resources/pods/v1/cluster/b.json"),
            Ok(VeleroPath::VersionedCopy)
        );
        assert_eq!(
            parse_velero_path("resources/pods/../../x"),
            Err(PathError::ParentComponent)
        );
    }
}
