//! The journal: a durable, append-only record of every step of a promote or rollback, kept
//! beside the archive, so a run killed at any moment resumes and finishes with the same result.
//!
//! Each step is written as `begun` before it acts and `done` (with what it produced, e.g. the
//! UID of a created object) after. On resume, `done` steps are skipped and `begun`-only steps are
//! redone — so every step must be idempotent, which the engine guarantees by checking live state
//! before acting.
//!
//! # Durability
//! Every record reaches the operating system before the step acts (one `write`), so a killed
//! process loses nothing. Records are fsynced by [`Journal::sync`], which the engine calls at
//! every level boundary (group commit): fsyncing each record under the journal's lock made
//! concurrent steps wait on each other's disk flushes. A machine crash can lose the records of
//! the level in flight; resume redoes those steps, and they are idempotent. A torn last line (a crash in mid-write) is
//! ignored; damage anywhere else is an error, because guessing would risk the user's namespaces.
//!
//! # Security
//! The backup directory may be writable by others (a shared volume), and a journal decides what
//! a resumed run skips and which UIDs ownerReferences are rewritten to. So a journal is trusted
//! only if this process could have written it: it is created `0600` and opened with
//! `O_NOFOLLOW` (a symlink planted at its path is refused, never followed); an existing one must
//! be a regular file owned by the user kpromote runs as and writable by no one else; and its
//! first record must bind it to its run, whose name carries the archive's digest (see
//! [`JournalError`] for what to do when one does not match).
//!
//! # Crash injection
//! Only in debug builds and builds with the `failpoints` feature ([`FAILPOINTS_ENABLED`]):
//! `KPROMOTE_FAILPOINT=<step>:<n>` aborts the process right after the `n`-th `done` record of
//! `step` is durable, and `<step>:<n>:begun` right after the `n`-th `begun` record (before the
//! step acts). The crash tests use it to kill a run at every step boundary and in the middle of
//! detach and restore.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Environment variable that injects a crash; see the module docs.
pub const FAILPOINT_ENV: &str = "KPROMOTE_FAILPOINT";

/// Whether [`FAILPOINT_ENV`] is read at all: in debug builds (which the crash tests run) and
/// with the `failpoints` feature; a release build ignores it.
pub(crate) const FAILPOINTS_ENABLED: bool = cfg!(any(debug_assertions, feature = "failpoints"));

/// Move-it-away advice shared by the errors about journals kpromote did not write.
const MOVE_AWAY: &str = "move it out of the backup directory and run again (every step checks live state first, so \
                         the run redoes what a journal would have skipped)";

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal file could not be read, written or synced.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A line other than the last is not a journal record.
    #[error(
        "journal {path} line {line} is damaged ({detail}); it records which objects were detached and \
         created, so kpromote will not guess: restore the file or roll back by hand from the archive"
    )]
    Damaged {
        /// The journal file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The journal belongs to another run (another archive or direction).
    #[error(
        "journal {path} belongs to run {found:?}, not {expected:?} (another archive, or this archive's digest \
         changed); if it is stale, {MOVE_AWAY}"
    )]
    OtherRun {
        /// The journal file.
        path: PathBuf,
        /// The run this caller is doing.
        expected: String,
        /// The run recorded in the file.
        found: String,
    },
    /// The journal does not start with the record that binds it to its archive.
    #[error(
        "journal {path} does not start with the record binding it to an archive (kpromote writes that record \
         first), so kpromote did not write it; {MOVE_AWAY}"
    )]
    Unbound {
        /// The journal file.
        path: PathBuf,
    },
    /// Another process is running promote or rollback on the archive (it holds the
    /// `ArchiveClaim`).
    #[error(
        "another kpromote process (the controller, or a command line) is working on {path}; wait for it to \
         finish, or stop it — two runs on one archive would undo each other's steps"
    )]
    Claimed {
        /// The archive.
        path: PathBuf,
    },
    /// The run this journal records finished; it is not resumed.
    #[error(
        "journal {path} records a promotion that finished ({outcome}); it is not resumed. The archive \
         describes the member before that promotion: to promote again, run promote without --archive (a new \
         backup), or set the archive and its journals aside"
    )]
    Finished {
        /// The journal file.
        path: PathBuf,
        /// How it finished.
        outcome: String,
    },
    /// The file at the journal's path is not one kpromote could have written.
    #[error("journal {path} {why}, so kpromote did not write it; {MOVE_AWAY}")]
    NotOurs {
        /// The journal file.
        path: PathBuf,
        /// What gives it away.
        why: String,
    },
}

/// Whether a step has started or finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Written before the step acts.
    Begun,
    /// Written after the step's effect is durable in the cluster.
    Done,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The step kind, e.g. `detach`, `mark-pod`, `create`, `adopt`.
    pub step: String,
    /// What the step acted on, e.g. an archive path.
    pub key: String,
    /// Begun or done.
    pub state: State,
    /// What the step produced (done) or intends (begun).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// An open journal: its file and the latest record per (step, key).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    latest: Latest,
    counts: BTreeMap<(String, State), u64>,
    failpoint: Option<(String, u64, State)>,
}

/// The first record of every journal names its run, so a journal is never applied to the wrong
/// archive or direction.
pub(crate) const RUN_STEP: &str = "run";
/// The last record of a finished run (see [`Journal::close`]).
pub(crate) const CLOSED_STEP: &str = "closed";

impl Journal {
    /// Opens (or creates) the journal at `path` for run `run` (e.g. `promote:<archive path>`).
    ///
    /// # Errors
    /// I/O errors, a damaged file, or a journal of another run.
    pub fn open(path: &Path, run: &str) -> Result<Self, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let created = !path.exists();
        let file = open_private(path)?;
        if created {
            sync_parent(path)?;
        }
        let mut latest = Latest::default();
        let mut run_seen = None;
        // Read a line at a time: the journal of a large run is long.
        let mut lines = BufReader::new(&file).lines().enumerate().peekable();
        // Bytes up to the end of the last complete record: a torn tail beyond is cut off before
        // anything is appended, or the next record would be glued to the fragment and the whole
        // line — and so the journal — unreadable on the following open.
        let mut intact: u64 = 0;
        let mut torn = false;
        while let Some((i, line)) = lines.next() {
            let line = line.map_err(io)?;
            match serde_json::from_str::<Record>(&line) {
                Ok(record) => {
                    if i == 0 && record.step != RUN_STEP {
                        return Err(JournalError::Unbound {
                            path: path.to_owned(),
                        });
                    }
                    if record.step == RUN_STEP {
                        run_seen = Some(record.key.clone());
                    }
                    latest.insert(record);
                    intact += line.len() as u64 + 1;
                }
                // A crash while appending leaves at most the last line torn.
                Err(_) if lines.peek().is_none() => {
                    tracing::warn!(journal = %path.display(), "cutting off a torn last line");
                    torn = true;
                }
                Err(e) => {
                    return Err(JournalError::Damaged {
                        path: path.to_owned(),
                        line: i + 1,
                        detail: e.to_string(),
                    });
                }
            }
        }
        if let Some(found) = &run_seen
            && found != run
        {
            return Err(JournalError::OtherRun {
                path: path.to_owned(),
                expected: run.to_owned(),
                found: found.clone(),
            });
        }

        if torn {
            file.set_len(intact).map_err(io)?;
            file.sync_all().map_err(io)?;
        } else if intact > file.metadata().map_err(io)?.len() {
            // The last record is whole but its newline was lost: end the line before appending.
            (&file).write_all(b"\n").map_err(io)?;
        }
        let mut journal = Self {
            path: path.to_owned(),
            file,
            latest,
            counts: BTreeMap::new(),
            failpoint: failpoint(),
        };
        if run_seen.is_none() {
            journal.append(Record {
                step: RUN_STEP.into(),
                key: run.into(),
                state: State::Done,
                data: Value::Null,
            })?;
            journal.sync()?;
        }
        Ok(journal)
    }

    /// Records that the run finished with `outcome` (`completed`, `rolled back`) and syncs: a
    /// closed journal is never resumed — a later run of the same archive starts a new journal
    /// (see [`crate::engine::open_journal`]).
    ///
    /// # Errors
    /// The journal's I/O errors.
    pub(crate) fn close(&mut self, outcome: &str) -> Result<(), JournalError> {
        self.append(Record {
            step: CLOSED_STEP.into(),
            key: RUN_STEP.into(),
            state: State::Done,
            data: serde_json::json!({ "outcome": outcome }),
        })?;
        self.sync()
    }

    /// How the run finished, when it is closed.
    #[must_use]
    pub(crate) fn closed(&self) -> Option<&str> {
        self.latest.outcome(CLOSED_STEP, RUN_STEP)
    }

    /// Whether `step` on `key` is recorded as done.
    #[must_use]
    pub(crate) fn is_done(&self, step: &str, key: &str) -> bool {
        self.get(step, key).is_some_and(|r| r.state == State::Done)
    }

    /// The latest record of `step` on `key`, if any.
    #[must_use]
    pub(crate) fn get(&self, step: &str, key: &str) -> Option<Cow<'_, Record>> {
        self.latest.get(step, key)
    }

    /// Every latest record of `step` that is begun or carries data beyond an outcome, in key
    /// order (a record done with no more says nothing else, and is kept only as
    /// [`Journal::is_done`] and [`Journal::get`] need).
    pub(crate) fn records(&self, step: &str) -> impl Iterator<Item = &Record> {
        self.latest
            .full
            .iter()
            .filter(move |((s, _), _)| s == step)
            .map(|(_, r)| r)
    }

    /// Flushes every record written so far to disk.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Records that `step` on `key` is about to act.
    ///
    /// # Errors
    /// I/O errors; the caller must not act when this fails.
    pub fn begin(&mut self, step: &str, key: &str, data: Value) -> Result<(), JournalError> {
        self.append(Record {
            step: step.into(),
            key: key.into(),
            state: State::Begun,
            data,
        })
    }

    /// Records that `step` on `key` has taken effect, with what it produced.
    ///
    /// # Errors
    /// I/O errors.
    pub fn done(&mut self, step: &str, key: &str, data: Value) -> Result<(), JournalError> {
        self.append(Record {
            step: step.into(),
            key: key.into(),
            state: State::Done,
            data,
        })
    }

    fn append(&mut self, record: Record) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        let count = self
            .counts
            .entry((record.step.clone(), record.state))
            .or_default();
        *count += 1;
        let n = *count;
        let hit = self
            .failpoint
            .as_ref()
            .is_some_and(|(s, at, st)| *s == record.step && *at == n && *st == record.state);
        self.latest.insert(record);
        if hit {
            eprintln!("kpromote: {FAILPOINT_ENV} reached; aborting to simulate a crash");
            std::process::abort();
        }
        Ok(())
    }
}

/// The latest record per (step, key). Most records of a large run are done with no data (an
/// unmarked pod, an adoption) or with only an outcome (an object restored that owns nothing):
/// of those only a 128-bit fingerprint of (step, key) is kept, with the outcome as an index into
/// the few distinct ones, so that a run over a hundred thousand objects holds megabytes of
/// journal, not tens.
#[derive(Debug, Default)]
struct Latest {
    /// Begun, or done with other data.
    full: BTreeMap<(String, String), Record>,
    /// Done with no data (`None`) or only an outcome (its index in `outcomes`).
    done: HashMap<u128, Option<u16>>,
    /// The distinct outcomes of `done`.
    outcomes: Vec<String>,
}

/// The only field of a record's data that [`Latest`] keeps by index.
const OUTCOME: &str = "outcome";

impl Latest {
    fn insert(&mut self, record: Record) {
        let print = fingerprint(&record.step, &record.key);
        let full_key = (record.step.clone(), record.key.clone());
        let compact = match (&record.state, &record.data) {
            (State::Done, Value::Null) => Some(None),
            (State::Done, Value::Object(map)) if map.len() == 1 => match map.get(OUTCOME) {
                Some(Value::String(outcome)) => self.outcome_index(outcome).map(Some),
                _ => None,
            },
            _ => None,
        };
        match compact {
            Some(outcome) => {
                self.full.remove(&full_key);
                self.done.insert(print, outcome);
            }
            None => {
                self.done.remove(&print);
                self.full.insert(full_key, record);
            }
        }
    }

    /// The index of `outcome`, added if new; `None` past `u16` distinct outcomes (the record
    /// is then kept whole).
    fn outcome_index(&mut self, outcome: &str) -> Option<u16> {
        if let Some(i) = self.outcomes.iter().position(|o| o == outcome) {
            return u16::try_from(i).ok();
        }
        let i = u16::try_from(self.outcomes.len()).ok()?;
        self.outcomes.push(outcome.to_owned());
        Some(i)
    }

    /// The outcome recorded in the data of the latest record of `step` on `key`.
    fn outcome(&self, step: &str, key: &str) -> Option<&str> {
        match self.done.get(&fingerprint(step, key)) {
            Some(outcome) => outcome.map(|i| self.outcomes[usize::from(i)].as_str()),
            None => self
                .full
                .get(&(step.to_owned(), key.to_owned()))?
                .data
                .get(OUTCOME)
                .and_then(Value::as_str),
        }
    }

    fn get(&self, step: &str, key: &str) -> Option<Cow<'_, Record>> {
        if let Some(outcome) = self.done.get(&fingerprint(step, key)) {
            let data = outcome.map_or(
                Value::Null,
                |i| serde_json::json!({ OUTCOME: self.outcomes[usize::from(i)] }),
            );
            return Some(Cow::Owned(Record {
                step: step.to_owned(),
                key: key.to_owned(),
                state: State::Done,
                data,
            }));
        }
        self.full
            .get(&(step.to_owned(), key.to_owned()))
            .map(Cow::Borrowed)
    }
}

/// (step, key) as 128 bits: two independent 64-bit hashes (a collision among a million records
/// has odds of about 10^-27).
fn fingerprint(step: &str, key: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut hasher = std::hash::DefaultHasher::new();
        (salt, step, key).hash(&mut hasher);
        u128::from(hasher.finish())
    };
    (half(0) << 64) | half(1)
}

/// Sets a finished journal aside as `<path>.<n>` (the first free `n`), so a new run starts
/// from live state with a journal of its own and the old one stays for the record.
///
/// # Errors
/// I/O errors.
pub(crate) fn retire(path: &Path) -> Result<PathBuf, JournalError> {
    let mut n = 1;
    loop {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let target = PathBuf::from(name);
        if !target.exists() {
            std::fs::rename(path, &target).map_err(|source| JournalError::Io {
                path: path.to_owned(),
                source,
            })?;
            sync_parent(path)?;
            return Ok(target);
        }
        n += 1;
    }
}

/// Syncs the directory holding `path`, so a journal just created survives a machine crash
/// (the file's own fsync does not persist its directory entry).
fn sync_parent(path: &Path) -> Result<(), JournalError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| JournalError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Opens (creating `0600`) the journal at `path` for reading and appending, without following a
/// symlink, and refuses a file this process could not have written: not a regular file, owned by
/// another user, or writable by group or others.
fn open_private(path: &Path) -> Result<File, JournalError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let not_ours = |why: String| JournalError::NotOurs {
        path: path.to_owned(),
        why,
    };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                not_ours("is a symbolic link".to_owned())
            } else {
                JournalError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    let meta = file.metadata().map_err(|source| JournalError::Io {
        path: path.to_owned(),
        source,
    })?;
    if let Some(why) = crate::backup::trusted::why_not_ours(&meta) {
        return Err(not_ours(why));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        // An older kpromote created journals 0644: readable, never writable, by others.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|source| JournalError::Io {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok(file)
}

/// Reads the journal at `path` without changing it: every record in file order (the run
/// record first), leaving out a torn last line as [`Journal::open`] does. `None` when there is
/// no journal file. For observers such as `kpromote status`; a run uses [`Journal::open`].
///
/// # Errors
/// I/O errors or a damaged line other than the last.
pub(crate) fn read(path: &Path) -> Result<Option<Vec<Record>>, JournalError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(line) {
            Ok(record) => records.push(record),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => {
                return Err(JournalError::Damaged {
                    path: path.to_owned(),
                    line: i + 1,
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(Some(records))
}

/// The run a journal's records belong to (`<direction>:<archive id>`), from its first record.
#[must_use]
pub(crate) fn run_of(records: &[Record]) -> Option<&str> {
    records
        .iter()
        .find(|r| r.step == RUN_STEP)
        .map(|r| r.key.as_str())
}

fn failpoint() -> Option<(String, u64, State)> {
    failpoint_from(std::env::var(FAILPOINT_ENV).ok())
}

/// The crash point `spec` asks for, if failpoints are compiled in.
fn failpoint_from(spec: Option<String>) -> Option<(String, u64, State)> {
    if !FAILPOINTS_ENABLED {
        return None;
    }
    let spec = spec?;
    let mut parts = spec.split(':');
    let step = parts.next()?.to_owned();
    let n = parts.next()?.parse().ok()?;
    let state = if parts.next() == Some("begun") {
        State::Begun
    } else {
        State::Done
    };
    Some((step, n, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open(dir: &tempfile::TempDir, run: &str) -> Result<Journal, JournalError> {
        Journal::open(&dir.path().join("j.journal"), run)
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(&dir, "promote:a").expect("opens");
        j.begin("create", "pods/ns/a", Value::Null).expect("writes");
        j.done("create", "pods/ns/a", json!({ "uid": "new-1" }))
            .expect("writes");
        j.begin("create", "pods/ns/b", Value::Null).expect("writes");
        drop(j);
        let j = open(&dir, "promote:a").expect("reopens");
        assert!(j.is_done("create", "pods/ns/a"));
        assert_eq!(
            j.get("create", "pods/ns/a").map(|r| r.data.clone()),
            Some(json!({ "uid": "new-1" }))
        );
        assert_eq!(j.get("create", "pods/ns/b").map(|r| r.state), Some(State::Begun));
        assert!(!j.is_done("create", "pods/ns/b"));
        assert_eq!(j.records("create").count(), 2);
    }

    #[test]
    fn a_step_done_without_data_is_remembered_by_fingerprint_and_undone_by_a_later_begin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(&dir, "rollback:a").expect("opens");
        for i in 0..1000 {
            j.begin("unmark", &format!("pods/ns/p{i}"), Value::Null)
                .expect("writes");
            j.done("unmark", &format!("pods/ns/p{i}"), Value::Null)
                .expect("writes");
        }
        j.begin("unmark", "pods/ns/p7", Value::Null).expect("writes");
        drop(j);
        let j = open(&dir, "rollback:a").expect("reopens");
        assert!(j.is_done("unmark", "pods/ns/p0") && j.is_done("unmark", "pods/ns/p999"));
        assert!(!j.is_done("unmark", "pods/ns/p1000"));
        assert!(!j.is_done("adopt", "pods/ns/p0"));
        // Begun again after it was done: not done.
        assert!(!j.is_done("unmark", "pods/ns/p7"));
        assert_eq!(j.get("unmark", "pods/ns/p7").map(|r| r.state), Some(State::Begun));
        let done = j.get("unmark", "pods/ns/p8").expect("a record");
        assert_eq!(
            (done.state, &done.data, done.key.as_str()),
            (State::Done, &Value::Null, "pods/ns/p8")
        );
        // Only the begun one is held whole; the other 999 and the run's first record are
        // fingerprints.
        assert_eq!(j.records("unmark").count(), 1);
        assert_eq!(j.latest.done.len(), 1000);
    }

    #[test]
    fn a_step_done_with_only_an_outcome_keeps_it_by_index_and_a_closed_run_stays_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(&dir, "promote:a").expect("opens");
        for i in 0..1000 {
            let outcome = if i % 2 == 0 { "created" } else { "existed" };
            j.begin("restore", &format!("configmaps/ns/c{i}"), Value::Null)
                .expect("writes");
            j.done(
                "restore",
                &format!("configmaps/ns/c{i}"),
                json!({ "outcome": outcome }),
            )
            .expect("writes");
        }
        j.done(
            "restore",
            "deployments.apps/ns/web",
            json!({ "outcome": "created", "uid": "u" }),
        )
        .expect("writes");
        j.close("completed").expect("closes");
        drop(j);
        let j = open(&dir, "promote:a").expect("reopens");
        assert_eq!(j.closed(), Some("completed"));
        assert_eq!(
            j.get("restore", "configmaps/ns/c7")
                .map(|r| (r.state, r.data.clone())),
            Some((State::Done, json!({ "outcome": "existed" })))
        );
        assert_eq!(
            j.get("restore", "configmaps/ns/c8").map(|r| r.data.clone()),
            Some(json!({ "outcome": "created" }))
        );
        // Held whole: only the record with a uid.
        let whole: Vec<&str> = j.records("restore").map(|r| r.key.as_str()).collect();
        assert_eq!(whole, ["deployments.apps/ns/web"]);
        assert_eq!(j.latest.outcomes.len(), 3, "created, existed, completed");
    }

    #[test]
    fn a_torn_last_line_is_ignored_but_damage_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, text) = with_torn_tail(&dir, "detach");
        let j = open(&dir, "promote:a").expect("torn tail tolerated");
        assert!(j.is_done("detach", "deployments.apps/ns/web"));
        drop(j);
        let damaged = text.replacen("\"step\"", "\"stop\"", 1) + "\n{}\n";
        std::fs::write(&path, damaged).expect("writes");
        assert!(matches!(
            open(&dir, "promote:a"),
            Err(JournalError::Damaged { line: 1, .. })
        ));
    }

    /// A journal with one `detach` record, then the first bytes of a `step` record (a torn tail).
    fn with_torn_tail(dir: &tempfile::TempDir, step: &str) -> (std::path::PathBuf, String) {
        let mut j = open(dir, "promote:a").expect("opens");
        j.done("detach", "deployments.apps/ns/web", Value::Null)
            .expect("writes");
        drop(j);
        let path = dir.path().join("j.journal");
        let mut text = std::fs::read_to_string(&path).expect("reads");
        text.push_str(&format!("{{\"step\":\"{step}\",\"ke"));
        std::fs::write(&path, &text).expect("writes");
        (path, text)
    }

    #[test]
    fn a_torn_tail_is_cut_off_so_the_next_append_and_reopen_succeed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = with_torn_tail(&dir, "mark");
        let mut j = open(&dir, "promote:a").expect("torn tail tolerated");
        j.done("mark", "pods/ns/web-1", Value::Null).expect("appends");
        drop(j);
        let j = open(&dir, "promote:a").expect("reopens: the fragment is gone, not glued");
        assert!(j.is_done("detach", "deployments.apps/ns/web"));
        assert!(j.is_done("mark", "pods/ns/web-1"));
        let text = std::fs::read_to_string(&path).expect("reads");
        assert!(!text.contains("\"ke{"), "{text}");
        // A whole last record that lost its newline is ended before the next one.
        drop(j);
        std::fs::write(&path, text.trim_end()).expect("writes");
        let mut j = open(&dir, "promote:a").expect("opens");
        j.done("adopt", "x", Value::Null).expect("appends");
        drop(j);
        let j = open(&dir, "promote:a").expect("reopens");
        assert!(j.is_done("mark", "pods/ns/web-1") && j.is_done("adopt", "x"));
    }

    #[test]
    fn a_closed_run_says_how_it_finished_and_can_be_retired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(&dir, "rollback:a").expect("opens");
        assert_eq!(j.closed(), None);
        j.close("rolled back").expect("closes");
        drop(j);
        let j = open(&dir, "rollback:a").expect("reopens");
        assert_eq!(j.closed(), Some("rolled back"));
        drop(j);
        let path = dir.path().join("j.journal");
        let retired = retire(&path).expect("retires");
        assert_eq!(retired, dir.path().join("j.journal.1"));
        let j = open(&dir, "rollback:a").expect("a new run");
        assert_eq!(j.closed(), None);
        assert_eq!(j.records("detach").count(), 0);
    }

    #[test]
    fn a_journal_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(&dir, "promote:a").expect("opens"));
        let mode = std::fs::metadata(dir.path().join("j.journal"))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_symlink_planted_at_the_journal_path_is_refused_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("victim");
        std::fs::write(&target, "untouched\n").expect("writes");
        std::os::unix::fs::symlink(&target, dir.path().join("j.journal")).expect("symlinks");
        let err = open(&dir, "promote:a").expect_err("a symlink is refused");
        assert!(matches!(err, JournalError::NotOurs { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).expect("reads"), "untouched\n");
    }

    #[test]
    fn a_planted_journal_without_its_binding_record_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // UIDs a resumed restore would point ownerReferences at.
        let planted = json!({ "step": "restore", "key": "deployments.apps/ns/web", "state": "done",
                              "data": { "outcome": "created", "uid": "attacker-chosen" } });
        write_private(&dir, &format!("{planted}\n"));
        let err = open(&dir, "promote:a").expect_err("unbound");
        assert!(matches!(err, JournalError::Unbound { .. }), "{err}");
        assert!(
            err.to_string().contains("move it out of the backup directory"),
            "{err}"
        );
    }

    #[test]
    fn a_journal_others_could_write_or_own_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(&dir, "promote:a").expect("opens"));
        let path = dir.path().join("j.journal");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = open(&dir, "promote:a").expect_err("world-writable");
        assert!(err.to_string().contains("writable by others"), "{err}");

        // An older kpromote's 0644 journal is still ours: tightened, not refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(open(&dir, "promote:a").expect("0644 of our own is fine"));
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(4242), None).expect("chown");
            let err = open(&dir, "promote:a").expect_err("owned by another user");
            assert!(err.to_string().contains("uid 4242"), "{err}");
        }
    }

    fn write_private(dir: &tempfile::TempDir, text: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join("j.journal"))
            .expect("creates");
        f.write_all(text.as_bytes()).expect("writes");
    }

    #[cfg(not(any(debug_assertions, feature = "failpoints")))]
    #[test]
    fn a_release_build_ignores_the_failpoint_variable() {
        assert_eq!(failpoint_from(Some("detach:1:begun".into())), None);
    }

    #[cfg(any(debug_assertions, feature = "failpoints"))]
    #[test]
    fn a_test_build_reads_the_failpoint_variable() {
        assert_eq!(
            failpoint_from(Some("detach:1:begun".into())),
            Some(("detach".to_owned(), 1, State::Begun))
        );
    }

    #[test]
    fn read_sees_what_open_sees_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal");
        assert!(read(&path).expect("no file is fine").is_none());
        assert!(!path.exists(), "reading must not create the journal");
        let mut j = open(&dir, "promote:a").expect("opens");
        j.begin("detach", "deployments.apps/ns/web", Value::Null)
            .expect("writes");
        j.done("detach", "deployments.apps/ns/web", Value::Null)
            .expect("writes");
        drop(j);
        let mut text = std::fs::read_to_string(&path).expect("reads");
        text.push_str("{\"step\":\"mark\"");
        std::fs::write(&path, &text).expect("writes");
        let records = read(&path).expect("reads").expect("exists");
        assert_eq!(run_of(&records), Some("promote:a"));
        assert_eq!(records.len(), 3, "run, begun, done; the torn tail left out");
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), text);
        std::fs::write(&path, format!("garbage\n{text}")).expect("writes");
        assert!(matches!(read(&path), Err(JournalError::Damaged { line: 1, .. })));
    }

    #[test]
    fn a_journal_of_another_run_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(&dir, "promote:a").expect("opens"));
        assert!(matches!(
            open(&dir, "rollback:b"),
            Err(JournalError::OtherRun { .. })
        ));
    }
}
