//! External merge sort of entries by path, so the writer accepts objects in any order with
//! memory bounded by a budget rather than by the object count.
//!
//! Items are buffered until the budget is reached, then sorted and spilled as a run to a
//! temporary file. At the end the runs are merged k ways (at most [`MAX_FAN_IN`] at a time, in
//! several passes if needed). Run files are unnamed temporary files in the spill directory and
//! disappear when dropped, even on a crash (Linux `O_TMPFILE`) or at the next reboot otherwise.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Most runs merged at once: bounds the open files and read buffers (4 MiB at most). With the
/// writer's default budget one pass merges about 400 MiB of objects.
pub const MAX_FAN_IN: usize = 128;
/// Read buffer of each run during the merge.
const RUN_READ_BUF: usize = 32 * 1024;
/// Bytes counted per item on top of its payload (vector headers, allocator slack).
const ITEM_OVERHEAD: usize = 96;

/// One entry to sort: its path (the key), its index line, and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortItem {
    /// The sort key.
    pub path: String,
    /// The index line (JSON, no newline).
    pub line: Vec<u8>,
    /// The entry bytes.
    pub body: Vec<u8>,
}

impl SortItem {
    fn cost(&self) -> usize {
        self.path.len() + self.line.len() + self.body.len() + ITEM_OVERHEAD
    }
}

/// Sorts [`SortItem`]s by path with bounded memory.
#[derive(Debug)]
pub struct ExternalSorter {
    buffer: Vec<SortItem>,
    buffered: usize,
    budget: usize,
    spill_dir: PathBuf,
    runs: Vec<File>,
}

impl ExternalSorter {
    /// A sorter keeping at most about `budget` bytes in memory, spilling to `spill_dir`.
    pub fn new(budget: usize, spill_dir: PathBuf) -> Self {
        ExternalSorter {
            buffer: Vec::new(),
            buffered: 0,
            budget,
            spill_dir,
            runs: Vec::new(),
        }
    }

    /// Number of runs spilled so far.
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The spill directory.
    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// Adds an item, spilling a run when the budget is reached.
    ///
    /// # Errors
    /// Writing the run failed.
    pub fn push(&mut self, item: SortItem) -> io::Result<()> {
        self.buffered += item.cost();
        self.buffer.push(item);
        if self.buffered >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.buffer.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let file = tempfile::tempfile_in(&self.spill_dir)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        for item in self.buffer.drain(..) {
            write_item(&mut out, &item)?;
        }
        let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(file);
        self.buffered = 0;
        Ok(())
    }

    /// Ends the input and returns the items in path order. Equal paths come out next to each
    /// other (the caller reports them as duplicates).
    ///
    /// # Errors
    /// Spilling or pre-merging runs failed.
    pub fn finish(mut self) -> io::Result<Sorted> {
        if self.runs.is_empty() {
            self.buffer.sort_unstable_by(|a, b| a.path.cmp(&b.path));
            return Ok(Sorted::Memory(std::mem::take(&mut self.buffer).into_iter()));
        }
        self.spill()?;
        let mut runs = std::mem::take(&mut self.runs);
        while runs.len() > MAX_FAN_IN {
            let mut merged = Vec::new();
            let mut rest = runs.into_iter();
            loop {
                let group: Vec<File> = rest.by_ref().take(MAX_FAN_IN).collect();
                if group.is_empty() {
                    break;
                }
                if group.len() == 1 {
                    merged.extend(group);
                    continue;
                }
                let file = tempfile::tempfile_in(&self.spill_dir)?;
                let mut out = BufWriter::with_capacity(256 * 1024, file);
                for item in Merge::new(group)? {
                    write_item(&mut out, &item?)?;
                }
                let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
                file.seek(SeekFrom::Start(0))?;
                merged.push(file);
            }
            runs = merged;
        }
        Ok(Sorted::Merge(Merge::new(runs)?))
    }
}

/// Sorted output of an [`ExternalSorter`].
#[derive(Debug)]
pub enum Sorted {
    /// Everything fit in memory.
    Memory(std::vec::IntoIter<SortItem>),
    /// A k-way merge of spilled runs.
    Merge(Merge),
}

impl Iterator for Sorted {
    type Item = io::Result<SortItem>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(items) => items.next().map(Ok),
            Sorted::Merge(merge) => merge.next(),
        }
    }
}

/// A k-way merge of sorted runs.
#[derive(Debug)]
pub struct Merge {
    readers: Vec<BufReader<File>>,
    heads: Vec<Option<SortItem>>,
    heap: BinaryHeap<Reverse<(String, usize)>>,
    failed: bool,
}

impl Merge {
    fn new(runs: Vec<File>) -> io::Result<Self> {
        let mut readers: Vec<BufReader<File>> = runs
            .into_iter()
            .map(|f| BufReader::with_capacity(RUN_READ_BUF, f))
            .collect();
        let mut heads = Vec::with_capacity(readers.len());
        let mut heap = BinaryHeap::new();
        for (i, reader) in readers.iter_mut().enumerate() {
            let head = read_item(reader)?;
            if let Some(item) = &head {
                heap.push(Reverse((item.path.clone(), i)));
            }
            heads.push(head);
        }
        Ok(Merge {
            readers,
            heads,
            heap,
            failed: false,
        })
    }
}

impl Iterator for Merge {
    type Item = io::Result<SortItem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let Reverse((_, i)) = self.heap.pop()?;
        let item = self.heads[i].take()?;
        match read_item(&mut self.readers[i]) {
            Ok(Some(next)) => {
                self.heap.push(Reverse((next.path.clone(), i)));
                self.heads[i] = Some(next);
            }
            Ok(None) => {}
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        }
        Some(Ok(item))
    }
}

fn write_item(out: &mut impl Write, item: &SortItem) -> io::Result<()> {
    for part in [item.path.as_bytes(), &item.line, &item.body] {
        let len = u32::try_from(part.len()).map_err(|_| io::Error::other("sort item too large"))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(part)?;
    }
    Ok(())
}

fn read_part(input: &mut impl Read, first: bool) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = input.read(&mut len[got..])?;
        if n == 0 {
            if got == 0 && first {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let mut data = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut data)?;
    Ok(Some(data))
}

fn read_item(input: &mut impl Read) -> io::Result<Option<SortItem>> {
    let Some(path) = read_part(input, true)? else {
        return Ok(None);
    };
    let line = read_part(input, false)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let body = read_part(input, false)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let path = String::from_utf8(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some(SortItem { path, line, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(path: &str) -> SortItem {
        SortItem {
            path: path.to_owned(),
            line: path.as_bytes().to_vec(),
            body: vec![b'x'; 100],
        }
    }

    #[test]
    fn spills_and_merges_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A tiny budget forces one run per item: more runs than the fan-in, so two passes.
        let mut sorter = ExternalSorter::new(1, dir.path().to_owned());
        let mut paths: Vec<String> = (0..200).map(|i| format!("p{:05}", (i * 7919) % 200)).collect();
        for p in &paths {
            sorter.push(item(p)).expect("push");
        }
        assert!(sorter.runs() > MAX_FAN_IN);
        let out: Vec<String> = sorter
            .finish()
            .expect("finish")
            .map(|i| i.expect("item").path)
            .collect();
        paths.sort();
        assert_eq!(out, paths);
    }

    #[test]
    fn in_memory_when_under_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sorter = ExternalSorter::new(1 << 20, dir.path().to_owned());
        for p in ["b", "a", "c", "a"] {
            sorter.push(item(p)).expect("push");
        }
        assert_eq!(sorter.runs(), 0);
        let out: Vec<String> = sorter
            .finish()
            .expect("finish")
            .map(|i| i.expect("item").path)
            .collect();
        assert_eq!(out, ["a", "a", "b", "c"]);
    }
}
