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
//! # Crash injection
//! `KPROMOTE_FAILPOINT=<step>:<n>` aborts the process right after the `n`-th `done` record of
//! `step` is durable, and `<step>:<n>:begun` right after the `n`-th `begun` record (before the
//! step acts). The crash tests use it to kill a run at every step boundary and in the middle of
//! detach and restore.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Environment variable that injects a crash; see the module docs.
pub const FAILPOINT_ENV: &str = "KPROMOTE_FAILPOINT";

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
    #[error("journal {path} belongs to run {found:?}, not {expected:?}")]
    OtherRun {
        /// The journal file.
        path: PathBuf,
        /// The run this caller is doing.
        expected: String,
        /// The run recorded in the file.
        found: String,
    },
}

/// Whether a step has started or finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Written before the step acts.
    Begun,
    /// Written after the step's effect is durable in the cluster.
    Done,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
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
    latest: BTreeMap<(String, String), Record>,
    counts: BTreeMap<(String, State), u64>,
    failpoint: Option<(String, u64, State)>,
}

/// The first record of every journal names its run, so a journal is never applied to the wrong
/// archive or direction.
pub const RUN_STEP: &str = "run";

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
        let mut latest = BTreeMap::new();
        let mut run_seen = None;
        if path.exists() {
            let lines: Vec<String> = BufReader::new(File::open(path).map_err(io)?)
                .lines()
                .collect::<Result<_, _>>()
                .map_err(io)?;
            let last = lines.len();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str::<Record>(line) {
                    Ok(record) => {
                        if record.step == RUN_STEP {
                            run_seen = Some(record.key.clone());
                        }
                        latest.insert((record.step.clone(), record.key.clone()), record);
                    }
                    // A crash while appending leaves at most the last line torn.
                    Err(_) if i + 1 == last => {
                        tracing::warn!(journal = %path.display(), "ignoring torn last line")
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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
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

    /// The journal file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `step` on `key` is recorded as done.
    #[must_use]
    pub fn is_done(&self, step: &str, key: &str) -> bool {
        self.get(step, key).is_some_and(|r| r.state == State::Done)
    }

    /// The latest record of `step` on `key`, if any.
    #[must_use]
    pub fn get(&self, step: &str, key: &str) -> Option<&Record> {
        self.latest.get(&(step.to_owned(), key.to_owned()))
    }

    /// Every latest record of `step`, in key order.
    pub fn records(&self, step: &str) -> impl Iterator<Item = &Record> {
        self.latest
            .iter()
            .filter(move |((s, _), _)| s == step)
            .map(|(_, r)| r)
    }

    /// Flushes every record written so far to disk.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&mut self) -> Result<(), JournalError> {
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
        self.latest
            .insert((record.step.clone(), record.key.clone()), record);
        if hit {
            eprintln!("kpromote: {FAILPOINT_ENV} reached; aborting to simulate a crash");
            std::process::abort();
        }
        Ok(())
    }
}

/// Reads the journal at `path` without changing it: every record in file order (the run
/// record first), leaving out a torn last line as [`Journal::open`] does. `None` when there is
/// no journal file. For observers such as `kpromote status`; a run uses [`Journal::open`].
///
/// # Errors
/// I/O errors or a damaged line other than the last.
pub fn read(path: &Path) -> Result<Option<Vec<Record>>, JournalError> {
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
pub fn run_of(records: &[Record]) -> Option<&str> {
    records
        .iter()
        .find(|r| r.step == RUN_STEP)
        .map(|r| r.key.as_str())
}

fn failpoint() -> Option<(String, u64, State)> {
    let spec = std::env::var(FAILPOINT_ENV).ok()?;
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
    fn a_torn_last_line_is_ignored_but_damage_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = open(&dir, "promote:a").expect("opens");
        j.done("detach", "deployments.apps/ns/web", Value::Null)
            .expect("writes");
        drop(j);
        let path = dir.path().join("j.journal");
        let mut text = std::fs::read_to_string(&path).expect("reads");
        text.push_str("{\"step\":\"detach\",\"ke");
        std::fs::write(&path, &text).expect("writes");
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
