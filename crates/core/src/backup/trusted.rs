//! Whether a file in the backup directory is one kpromote wrote. The controller reads archives by
//! the path in `status.backedupFile` (which anyone allowed to write the status subresource can
//! set) and adopts an archive it finds under the name it was about to write; both would let a
//! planted file drive a promote or a rollback. An archive kpromote wrote is a regular file
//! directly in the backup directory, owned by the user kpromote runs as and writable by no one
//! else (the writer creates it `0600` and renames it into place).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a file is not trusted as an archive of this backup directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum UntrustedFile {
    /// The path leaves the backup directory (`..`, an absolute path elsewhere, a symlinked
    /// directory).
    #[error(
        "{file} is not in the backup directory {dir}; kpromote reads only archives it wrote there, so whoever \
         set that path is not kpromote: set status.backedupFile back to the archive's path in {dir}"
    )]
    OutsideBackupDir {
        /// The file named.
        file: PathBuf,
        /// The backup directory.
        dir: PathBuf,
    },
    /// The file is there but kpromote did not write it.
    #[error(
        "{file} {why}, so kpromote did not write it; move it out of the backup directory (and run the \
         backup again, or put the archive kpromote wrote back)"
    )]
    NotOurs {
        /// The file.
        file: PathBuf,
        /// What gives it away.
        why: String,
    },
    /// The file or directory cannot be inspected.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `file`, checked to be a file kpromote wrote directly in `dir`, as a canonical path.
///
/// # Errors
/// [`UntrustedFile`] saying why not.
pub(crate) fn archive_in(dir: &Path, file: &Path) -> Result<PathBuf, UntrustedFile> {
    let io = |source| UntrustedFile::Io {
        file: file.to_owned(),
        source,
    };
    let outside = || UntrustedFile::OutsideBackupDir {
        file: file.to_owned(),
        dir: dir.to_owned(),
    };
    let dir = dir.canonicalize().map_err(io)?;
    let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
        return Err(outside());
    };
    // The directory part may be spelled differently (a relative --backup-dir) but must be the
    // same directory; the name itself is not resolved, so a symlink is seen as one.
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if parent.canonicalize().map_err(|_| outside())? != dir {
        return Err(outside());
    }
    let path = dir.join(name);
    owned_regular_file(&path)?;
    Ok(path)
}

/// Checks `path` is a regular file (not a symlink) owned by this process's user and writable
/// by no one else.
///
/// # Errors
/// [`UntrustedFile::NotOurs`] or [`UntrustedFile::Io`].
pub(crate) fn owned_regular_file(path: &Path) -> Result<(), UntrustedFile> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| UntrustedFile::Io {
        file: path.to_owned(),
        source,
    })?;
    let not_ours = |why: String| UntrustedFile::NotOurs {
        file: path.to_owned(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(not_ours("is a symbolic link".to_owned()));
    }
    why_not_ours(&meta).map_or(Ok(()), |why| Err(not_ours(why)))
}

/// Why a file kpromote is about to trust is not its own: not a regular file, owned by another
/// user, or writable by others. `None` when it is. One rule for archives and journals.
pub(crate) fn why_not_ours(meta: &std::fs::Metadata) -> Option<String> {
    if !meta.is_file() {
        return Some("is not a regular file".to_owned());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Some(format!(
            "is owned by uid {}, not by uid {me} that kpromote runs as",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    (mode & 0o022 != 0).then(|| format!("is writable by others (mode {mode:o})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private(path: &Path) {
        std::fs::write(path, b"archive").expect("writes");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    #[test]
    fn an_archive_kpromote_wrote_in_the_directory_is_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p20260101-000000.tar.zst");
        private(&file);
        let found = archive_in(dir.path(), &file).expect("trusted");
        assert_eq!(
            found,
            dir.path()
                .canonicalize()
                .expect("exists")
                .join("p20260101-000000.tar.zst")
        );
    }

    #[test]
    fn paths_out_of_the_backup_directory_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("backup");
        std::fs::create_dir(&dir).expect("mkdir");
        let elsewhere = root.path().join("elsewhere.tar.zst");
        private(&elsewhere);
        for named in [
            elsewhere.clone(),
            dir.join("..").join("elsewhere.tar.zst"),
            PathBuf::from("/etc/passwd"),
        ] {
            let err = archive_in(&dir, &named).expect_err("outside");
            assert!(
                matches!(err, UntrustedFile::OutsideBackupDir { .. }),
                "{named:?}: {err}"
            );
            assert!(err.to_string().contains("status.backedupFile"), "{err}");
        }
        std::os::unix::fs::symlink(&elsewhere, dir.join("link.tar.zst")).expect("symlinks");
        let err = archive_in(&dir, &dir.join("link.tar.zst")).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_file_others_could_write_or_own_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("planted.tar.zst");
        private(&file);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = archive_in(dir.path(), &file).expect_err("world-writable");
        assert!(err.to_string().contains("writable by others"), "{err}");
        if rustix::process::geteuid().is_root() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            std::os::unix::fs::chown(&file, Some(4242), None).expect("chown");
            let err = archive_in(dir.path(), &file).expect_err("another owner");
            assert!(err.to_string().contains("uid 4242"), "{err}");
        }
    }
}
