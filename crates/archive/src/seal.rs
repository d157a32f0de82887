//! Sealed entries: the objects that carry credentials (Secrets) stored encrypted with age, to
//! X25519 recipients, so an archive on a volume or in object storage does not hand them out.
//!
//! Normative text: `format-spec/v1.md` §14 (format 1.1). One entry is one age file (the binary
//! age-encryption.org/v1 format) whose plaintext is the object's JSON, byte for byte; the index
//! record says `"encryption": "age"`, and its size and SHA-256 are of the stored, encrypted bytes
//! — so `verify` and `inspect` need no key. The manifest lists the recipients' public keys, so a
//! reader checks the identity it was given before it reads anything.
//!
//! All cryptography is the `age` crate's (its defaults, no hand-written primitives). This module
//! only parses key files, picks which entries are sealed ([`SEALED_RESOURCES`]), and names what
//! is wrong when a key is missing or does not fit.

// age 0.13 deprecates its X25519 ("classic") keys in favour of post-quantum hybrid ones. kpromote
// encrypts to X25519 on purpose: `age1…` keys are what operators have, and what the age command
// line of the Debian package (1.1) decrypts.
#![allow(deprecated)]

use age::secrecy::{ExposeSecret, SecretString};
use age::x25519;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The `encryption` value of a sealed entry's index record, and the manifest's scheme: the
/// entry is an age v1 file (<https://age-encryption.org/v1>).
pub const SCHEME: &str = "age";

/// Group-resources whose entries are sealed when the writer has recipients: `(group, resource,
/// why)`. Only objects whose purpose is to hold credentials: sealing everything would make
/// `kpromote diff` and Velero blind for no gain, since other objects reference Secrets by name
/// and do not copy their values.
pub const SEALED_RESOURCES: &[(&str, &str, &str)] = &[(
    "",
    "secrets",
    "`data` and `stringData` are credentials; the last-applied-configuration annotation repeats them",
)];

/// Whether objects of this group-resource are sealed (see [`SEALED_RESOURCES`]).
#[must_use]
pub fn is_sealed_resource(group: &str, resource: &str) -> bool {
    SEALED_RESOURCES
        .iter()
        .any(|(g, r, _)| *g == group && *r == resource)
}

/// What can go wrong with keys, sealing or unsealing. Messages name the file, line, entry or
/// key concerned, never a secret key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// A recipient is neither an age X25519 public key nor a readable file of them.
    #[error(
        "recipient {recipient:?}: {reason}; give an age X25519 public key (age1…, from `age-keygen -y`) or a file \
         of them, one per line"
    )]
    BadRecipient {
        /// The recipient as given, or `<file>:<line>`.
        recipient: String,
        /// What is wrong.
        reason: String,
    },
    /// A recipients file names no recipient.
    #[error("recipients file {}: no recipient in it (one age1… key per line, # starts a comment)", path.display())]
    NoRecipients {
        /// The file.
        path: PathBuf,
    },
    /// An identity file cannot be read.
    #[error("identity file {}: {error}", path.display())]
    IdentityFile {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// A line of an identity file is not an age X25519 secret key (the line is not quoted).
    #[error(
        "identity file {}, line {line}: not an age X25519 identity (AGE-SECRET-KEY-1…, as `age-keygen` writes)",
        path.display()
    )]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// The line, 1-based.
        line: usize,
    },
    /// An identity file holds no identity.
    #[error("identity file {}: no identity in it (AGE-SECRET-KEY-1… lines, # starts a comment)", path.display())]
    NoIdentities {
        /// The file.
        path: PathBuf,
    },
    /// The archive's Secrets are encrypted and no identity was given.
    #[error("its Secrets are encrypted to {} and no identity was given", recipients.join(", "))]
    NoIdentity {
        /// The archive's recipients.
        recipients: Vec<String>,
    },
    /// None of the identities given is one the archive is encrypted to.
    #[error(
        "its Secrets are encrypted to {}, and the identity given is for {}",
        recipients.join(", "),
        given.join(", ")
    )]
    WrongIdentity {
        /// The archive's recipients.
        recipients: Vec<String>,
        /// The public keys of the identities given.
        given: Vec<String>,
    },
    /// An entry uses an encryption this reader does not know (a newer minor version).
    #[error("entry `{entry}`: encryption {scheme:?} is not supported (this kpromote reads {SCHEME:?})")]
    UnknownScheme {
        /// The entry.
        entry: String,
        /// The scheme its record names.
        scheme: String,
    },
    /// An entry could not be encrypted.
    #[error("object `{entry}`: encryption failed: {reason}")]
    Encrypt {
        /// The object's path.
        entry: String,
        /// age's message.
        reason: String,
    },
    /// A sealed entry could not be decrypted: altered, or not encrypted to the identity.
    #[error("entry `{entry}`: cannot be decrypted: {reason}")]
    Decrypt {
        /// The entry.
        entry: String,
        /// age's message.
        reason: String,
    },
}

impl SealError {
    /// The entry (or file) this error is about.
    #[must_use]
    pub fn entry(&self) -> String {
        match self {
            SealError::BadRecipient { recipient, .. } => recipient.clone(),
            SealError::NoRecipients { path }
            | SealError::IdentityFile { path, .. }
            | SealError::BadIdentity { path, .. }
            | SealError::NoIdentities { path } => path.display().to_string(),
            SealError::NoIdentity { .. } | SealError::WrongIdentity { .. } => "(identity)".to_owned(),
            SealError::UnknownScheme { entry, .. }
            | SealError::Encrypt { entry, .. }
            | SealError::Decrypt { entry, .. } => entry.clone(),
        }
    }

    /// A short stable identifier, for `-o json` output and scripts.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            SealError::BadRecipient { .. } | SealError::NoRecipients { .. } => "bad_recipient",
            SealError::IdentityFile { .. }
            | SealError::BadIdentity { .. }
            | SealError::NoIdentities { .. } => "bad_identity",
            SealError::NoIdentity { .. } => "no_identity",
            SealError::WrongIdentity { .. } => "wrong_identity",
            SealError::UnknownScheme { .. } => "unknown_encryption",
            SealError::Encrypt { .. } => "encrypt",
            SealError::Decrypt { .. } => "decrypt",
        }
    }

    /// Whether the error concerns one entry only (reading can go on with the next).
    #[must_use]
    pub fn is_entry_local(&self) -> bool {
        matches!(self, SealError::UnknownScheme { .. } | SealError::Decrypt { .. })
    }
}

/// How an archive's sealed entries are encrypted: the manifest's `encryption` field (spec §14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// Always [`SCHEME`] in 1.1.
    pub scheme: String,
    /// The recipients' public keys (`age1…`), sorted: who can read the sealed entries.
    pub recipients: Vec<String>,
    /// The group-resources whose entries are sealed (`secrets`).
    pub resources: Vec<String>,
}

/// The public keys a writer seals to. Public keys are not secrets: they may sit in a
/// PromotePolicy's spec, a Helm value or the manifest.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Recipients {
    keys: Vec<x25519::Recipient>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.to_strings()).finish()
    }
}

impl Recipients {
    /// Parses recipients as a user gives them: each an `age1…` key, or the path of a file of
    /// them (one per line; blank lines and `#` comments ignored, as age's `-R` files). Duplicates
    /// are dropped.
    ///
    /// # Errors
    /// [`SealError::BadRecipient`] naming the key or `<file>:<line>`; [`SealError::NoRecipients`]
    /// for a file without any.
    pub fn parse<S: AsRef<str>>(specs: impl IntoIterator<Item = S>) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for spec in specs {
            let spec = spec.as_ref().trim();
            if spec.starts_with("age1") {
                keys.push(parse_recipient(spec, spec)?);
            } else {
                keys.extend(recipients_file(Path::new(spec))?);
            }
        }
        let mut recipients = Recipients { keys };
        recipients.dedup();
        Ok(recipients)
    }

    /// Parses `age1…` keys only, never a file: for keys from an untrusted source (a
    /// PromotePolicy's spec), which must not make the reader open files.
    ///
    /// # Errors
    /// [`SealError::BadRecipient`] naming the key.
    pub fn from_keys<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Result<Self, SealError> {
        let keys = keys
            .into_iter()
            .map(|k| parse_recipient(k.as_ref().trim(), k.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut recipients = Recipients { keys };
        recipients.dedup();
        Ok(recipients)
    }

    /// Every recipient of `self` and `other`.
    #[must_use]
    pub fn union(mut self, other: &Recipients) -> Self {
        self.keys.extend(other.keys.iter().cloned());
        self.dedup();
        self
    }

    fn dedup(&mut self) {
        self.keys.sort_by_key(ToString::to_string);
        self.keys.dedup();
    }

    /// No recipient: nothing is sealed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public keys, `age1…`, sorted.
    #[must_use]
    pub fn to_strings(&self) -> Vec<String> {
        self.keys.iter().map(ToString::to_string).collect()
    }

    /// The manifest field for an archive sealed to these recipients.
    #[must_use]
    pub fn encryption(&self) -> Encryption {
        Encryption {
            scheme: SCHEME.to_owned(),
            recipients: self.to_strings(),
            resources: SEALED_RESOURCES
                .iter()
                .map(|(g, r, _)| kpromote_model::GroupResource::new(*g, *r).to_string())
                .collect(),
        }
    }

    /// Encrypts one entry's JSON into an age file readable by every recipient.
    ///
    /// # Errors
    /// [`SealError::Encrypt`] (no recipient, or the system's random source failed).
    pub fn seal(&self, entry: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let failed = |reason: String| SealError::Encrypt {
            entry: entry.to_owned(),
            reason,
        };
        let encryptor = age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(|e| failed(e.to_string()))?;
        // The header is ~200 bytes per recipient; the payload adds 16 per 64 KiB chunk.
        let mut sealed = Vec::with_capacity(plaintext.len() + 64 + 200 * self.keys.len());
        let mut writer = encryptor
            .wrap_output(&mut sealed)
            .map_err(|e| failed(e.to_string()))?;
        writer
            .write_all(plaintext)
            .and_then(|()| writer.finish().map(drop))
            .map_err(|e| failed(e.to_string()))?;
        Ok(sealed)
    }
}

fn parse_recipient(text: &str, named: &str) -> Result<x25519::Recipient, SealError> {
    text.parse::<x25519::Recipient>()
        .map_err(|reason| SealError::BadRecipient {
            recipient: named.to_owned(),
            reason: if text.starts_with("age1pq") {
                "post-quantum recipients are not supported yet (the age 1.1 command line cannot decrypt them)"
                    .to_owned()
            } else {
                reason.to_owned()
            },
        })
}

fn recipients_file(path: &Path) -> Result<Vec<x25519::Recipient>, SealError> {
    let text = std::fs::read_to_string(path).map_err(|e| SealError::BadRecipient {
        recipient: path.display().to_string(),
        reason: format!("not an age1… key, and not a readable file ({e})"),
    })?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(parse_recipient(line, &format!("{}:{}", path.display(), i + 1))?);
    }
    if keys.is_empty() {
        return Err(SealError::NoRecipients {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

/// The secret keys a reader opens sealed entries with. Its `Debug` shows only public keys.
#[derive(Clone, Default)]
pub struct Identities {
    keys: Vec<x25519::Identity>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("public", &self.public_keys())
            .finish()
    }
}

impl Identities {
    /// No identity: an archive with sealed entries cannot be read (but still verified).
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads an age identity file: `AGE-SECRET-KEY-1…` lines, blank lines and `#` comments (what
    /// `age-keygen -o FILE` writes). The file's text is wiped from memory after parsing.
    ///
    /// # Errors
    /// [`SealError::IdentityFile`], [`SealError::BadIdentity`] (naming the line, not quoting it),
    /// [`SealError::NoIdentities`].
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|error| SealError::IdentityFile {
                path: path.to_owned(),
                error,
            })?;
        let text = SecretString::from(text);
        let mut keys = Vec::new();
        for (i, line) in text.expose_secret().lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(
                line.parse::<x25519::Identity>()
                    .map_err(|_| SealError::BadIdentity {
                        path: path.to_owned(),
                        line: i + 1,
                    })?,
            );
        }
        if keys.is_empty() {
            return Err(SealError::NoIdentities {
                path: path.to_owned(),
            });
        }
        Ok(Identities { keys })
    }

    /// The recipients these identities are (their public keys).
    #[must_use]
    pub fn recipients(&self) -> Recipients {
        let mut recipients = Recipients {
            keys: self.keys.iter().map(x25519::Identity::to_public).collect(),
        };
        recipients.dedup();
        recipients
    }

    /// Whether there is no identity.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public keys (`age1…`) of these identities.
    #[must_use]
    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_public().to_string()).collect()
    }

    /// Checks, before anything is read, that one of these identities is a recipient.
    ///
    /// # Errors
    /// [`SealError::NoIdentity`] or [`SealError::WrongIdentity`], naming the recipients.
    pub fn check(&self, recipients: &[String]) -> Result<(), SealError> {
        if self.keys.is_empty() {
            return Err(SealError::NoIdentity {
                recipients: recipients.to_vec(),
            });
        }
        let given = self.public_keys();
        if given.iter().any(|key| recipients.contains(key)) {
            Ok(())
        } else {
            Err(SealError::WrongIdentity {
                recipients: recipients.to_vec(),
                given,
            })
        }
    }

    /// Decrypts one sealed entry (an age file) into the object's JSON. age authenticates the
    /// whole payload: altered bytes fail here rather than yield a different object.
    ///
    /// # Errors
    /// [`SealError::Decrypt`].
    pub fn open(&self, entry: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let failed = |reason: String| SealError::Decrypt {
            entry: entry.to_owned(),
            reason,
        };
        let decryptor = age::Decryptor::new_buffered(sealed).map_err(|e| failed(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| failed(e.to_string()))?;
        let mut plain = Vec::with_capacity(sealed.len());
        reader
            .read_to_end(&mut plain)
            .map_err(|e| failed(e.to_string()))?;
        Ok(plain)
    }
}

/// The keys a reader holds for one archive: what [`super::Objects`] needs to hand out a sealed
/// entry's JSON.
#[derive(Debug, Clone, Default)]
pub(crate) enum Keys {
    /// The archive seals nothing (its manifest has no `encryption`).
    #[default]
    Plain,
    /// The archive is sealed to these recipients and the reader holds none of their identities
    /// (none was given yet): a sealed entry is [`SealError::NoIdentity`].
    NoIdentity(Vec<String>),
    /// The archive is sealed and one of these identities is a recipient.
    Open(std::sync::Arc<Identities>),
}

impl Keys {
    /// The JSON of an entry whose record says `encryption` (`None`: stored in clear).
    pub(crate) fn unseal(&self, entry: &str, scheme: Option<&str>, body: Vec<u8>) -> super::Result<Vec<u8>> {
        let Some(scheme) = scheme else {
            return Ok(body);
        };
        if scheme != SCHEME {
            return Err(SealError::UnknownScheme {
                entry: entry.to_owned(),
                scheme: scheme.to_owned(),
            }
            .into());
        }
        match self {
            Keys::Open(identities) => Ok(identities.open(entry, &body)?),
            Keys::NoIdentity(recipients) => Err(SealError::NoIdentity {
                recipients: recipients.clone(),
            }
            .into()),
            Keys::Plain => Err(super::ArchiveError::InvalidRecord {
                entry: entry.to_owned(),
                reason: "says the entry is encrypted, but the manifest names no recipients".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pair() -> (x25519::Identity, String) {
        let identity = x25519::Identity::generate();
        let public = identity.to_public().to_string();
        (identity, public)
    }

    fn identities(keys: Vec<x25519::Identity>) -> Identities {
        Identities { keys }
    }

    #[test]
    fn a_sealed_entry_opens_with_any_recipients_identity_and_not_with_another() {
        let ((a, a_pub), (b, b_pub), (c, _)) = (pair(), pair(), pair());
        let recipients = Recipients::parse([a_pub.as_str(), b_pub.as_str()]).unwrap();
        let json = br#"{"apiVersion":"v1","kind":"Secret","data":{"k":"c2VjcmV0"}}"#;
        let sealed = recipients
            .seal("resources/secrets/namespaces/a/s.json", json)
            .unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        assert!(!sealed.windows(8).any(|w| w == b"c2VjcmV0"));
        for id in [a, b] {
            assert_eq!(identities(vec![id]).open("e", &sealed).unwrap(), json);
        }
        let wrong = identities(vec![c]).open("e", &sealed).unwrap_err();
        assert!(matches!(wrong, SealError::Decrypt { .. }), "{wrong}");
    }

    #[test]
    fn an_altered_sealed_entry_does_not_decrypt() {
        let (a, a_pub) = pair();
        let sealed = Recipients::parse([a_pub]).unwrap().seal("e", b"{}").unwrap();
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(identities(vec![a]).open("e", &altered).is_err());
    }

    #[test]
    fn the_identity_is_checked_against_the_recipients_before_reading() {
        let ((a, a_pub), (b, _)) = (pair(), pair());
        let recipients = vec![a_pub.clone()];
        assert!(identities(vec![a]).check(&recipients).is_ok());
        assert!(matches!(
            Identities::none().check(&recipients),
            Err(SealError::NoIdentity { .. })
        ));
        let wrong = identities(vec![b]).check(&recipients).unwrap_err();
        assert!(matches!(wrong, SealError::WrongIdentity { .. }));
        assert!(wrong.to_string().contains(&a_pub), "{wrong}");
    }

    #[test]
    fn recipients_come_as_keys_or_files_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let ((_, a_pub), (_, b_pub)) = (pair(), pair());
        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# team\n\n{b_pub}\n  {a_pub}  \n")).unwrap();
        let parsed = Recipients::parse([a_pub.clone(), file.display().to_string()]).unwrap();
        let mut expected = vec![a_pub, b_pub];
        expected.sort();
        assert_eq!(parsed.to_strings(), expected);

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "# ok\nage1notakey\n").unwrap();
        let err = Recipients::parse([bad.display().to_string()]).unwrap_err();
        assert!(err.to_string().contains("bad.txt:2"), "{err}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "# nobody\n").unwrap();
        assert!(matches!(
            Recipients::parse([empty.display().to_string()]),
            Err(SealError::NoRecipients { .. })
        ));
        assert!(matches!(
            Recipients::parse(["/no/such/file"]),
            Err(SealError::BadRecipient { .. })
        ));
    }

    #[test]
    fn identity_files_are_read_and_bad_lines_named_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_pub) = pair();
        let file = dir.path().join("key.txt");
        let secret = a.to_string();
        std::fs::write(
            &file,
            format!(
                "# created: now\n# public key: {a_pub}\n{}\n",
                secret.expose_secret()
            ),
        )
        .unwrap();
        let ids = Identities::from_file(&file).unwrap();
        assert_eq!(ids.public_keys(), [a_pub]);
        assert!(!format!("{ids:?}").contains("AGE-SECRET-KEY"));

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "AGE-SECRET-KEY-1NOTAKEYATALL\n").unwrap();
        let err = Identities::from_file(&bad).unwrap_err();
        assert!(matches!(err, SealError::BadIdentity { line: 1, .. }));
        assert!(!err.to_string().contains("NOTAKEY"), "{err}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n# nothing\n").unwrap();
        assert!(matches!(
            Identities::from_file(&empty),
            Err(SealError::NoIdentities { .. })
        ));
    }

    #[test]
    fn only_secrets_are_sealed() {
        assert!(is_sealed_resource("", "secrets"));
        assert!(!is_sealed_resource("", "configmaps"));
        assert!(!is_sealed_resource("example.com", "secrets"));
    }
}
