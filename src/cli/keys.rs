//! The age keys of the command line: `--encrypt-to` (who may read an archive's Secrets) and
//! `--identity` (what opens them), shared by every subcommand that writes or reads bodies.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kpromote_archive::{ArchiveError, Identities, Recipients, SealError};

/// The environment variable naming an age identity file, for `--identity` (and the
/// controller's `--age-identity`).
pub const IDENTITY_ENV: &str = "KPROMOTE_AGE_IDENTITY_FILE";

/// `--encrypt-to`, repeatable.
#[derive(Debug, Clone, clap::Args)]
pub struct EncryptTo {
    /// Seal the archive's Secrets to this age X25519 recipient: a public key (`age1…`, from
    /// `age-keygen -y`) or a file of them, one per line (`#` comments). Repeat for several; any
    /// one of their identities opens the archive. `verify` and `inspect` need no key.
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    recipients: Vec<String>,
}

impl EncryptTo {
    /// The recipients given (empty: nothing is sealed).
    ///
    /// # Errors
    /// A recipient that is neither a key nor a file of keys.
    pub fn recipients(&self) -> anyhow::Result<Recipients> {
        Recipients::parse(&self.recipients).context("--encrypt-to")
    }
}

/// `--identity FILE`, or [`IDENTITY_ENV`].
#[derive(Debug, Clone, clap::Args)]
pub struct Identity {
    /// age identity file (`AGE-SECRET-KEY-1…` lines, as `age-keygen` writes) that opens the
    /// archive's sealed Secrets.
    #[arg(long = "identity", short = 'i', value_name = "FILE", env = IDENTITY_ENV)]
    file: Option<PathBuf>,
}

impl Identity {
    /// The identities given (none without the flag or the variable).
    ///
    /// # Errors
    /// The file cannot be read or holds no identity.
    pub fn load(&self) -> anyhow::Result<Identities> {
        identities(self.file.as_deref())
    }

    /// Whether an identity file was named.
    pub fn given(&self) -> bool {
        self.file.is_some()
    }
}

/// The identities of `file`, if any.
///
/// # Errors
/// The file cannot be read or holds no identity.
pub fn identities(file: Option<&Path>) -> anyhow::Result<Identities> {
    match file {
        Some(path) => Identities::from_file(path).map_err(|e| anyhow::anyhow!("{e}")),
        None => Ok(Identities::none()),
    }
}

/// What to do about a sealing error: the flag or variable to set. `None` when it is not one.
pub fn hint(err: &ArchiveError) -> Option<String> {
    match err {
        ArchiveError::Seal(SealError::NoIdentity { .. }) => Some(format!(
            "give the age identity of one of those recipients with --identity FILE or {IDENTITY_ENV}"
        )),
        ArchiveError::Seal(SealError::WrongIdentity { .. }) => Some(format!(
            "give the identity of one of the archive's recipients with --identity FILE or {IDENTITY_ENV}"
        )),
        _ => None,
    }
}
