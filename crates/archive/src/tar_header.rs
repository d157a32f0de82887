//! Tar headers as bytes: the exact headers the writer emits and a strict parser for the reader.
//!
//! Normative text: `format-spec/v1.md` §4.2. Parsing is kept apart from I/O: these functions take
//! and return byte blocks; [`super::tar_stream`] does the reading.
//!
//! Writers emit GNU-format headers (magic `"ustar "`, version `" \0"`) for regular files only,
//! with fixed fields (mode `0644`, uid/gid 0, empty user and group names, mtime = the archive's
//! `createdAt`), preceded by a GNU `././@LongLink` (type `L`) header when the path is longer than
//! the 100-byte name field. GNU tar, bsdtar, Go's `archive/tar` (Velero) and tar-rs all read this.

/// Size of a tar block; headers and data are padded to it.
pub const BLOCK_SIZE: usize = 512;

/// Length of the header's name field; longer paths need a GNU long-name record.
pub const NAME_FIELD_LEN: usize = 100;

/// Mode of every entry the writer emits: owner read-write, others read. Fixed so archives do not
/// depend on the writer's umask.
pub const ENTRY_MODE: u32 = 0o644;

/// Name GNU tar gives the pseudo entry that carries a long path.
pub const GNU_LONGLINK_NAME: &[u8] = b"././@LongLink";

/// Longest path a long-name record may carry; hostile records are refused before allocation.
pub const MAX_LONG_NAME: u64 = 4096;

/// Longest PAX extended header accepted (Velero tarballs only).
pub const MAX_PAX_HEADER: u64 = 64 * 1024;

const GNU_MAGIC: &[u8; 8] = b"ustar  \0";
const USTAR_MAGIC: &[u8; 6] = b"ustar\0";
const USTAR_VERSION: &[u8; 2] = b"00";

// Field offsets of the ustar / GNU header (POSIX.1-1988, GNU tar manual "Standard").
const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const MAGIC: std::ops::Range<usize> = 257..265;
const PREFIX: std::ops::Range<usize> = 345..500;

/// Number of zero bytes that pad `size` bytes of data to a whole block.
#[must_use]
pub fn padding(size: u64) -> usize {
    let rem = (size % BLOCK_SIZE as u64) as usize;
    if rem == 0 { 0 } else { BLOCK_SIZE - rem }
}

/// Appends the header block(s) of a regular file entry to `out`: a long-name record when
/// needed, then the file header. The caller appends the data and [`padding`].
///
/// `path` must be at most [`super::layout::MAX_PATH_LEN`] bytes and `size` below 8 GiB (the
/// per-entry cap is far lower); the writer checks both before calling.
pub fn encode_file_header(path: &str, size: u64, mtime: u64, out: &mut Vec<u8>) {
    let name = path.as_bytes();
    if name.len() > NAME_FIELD_LEN {
        let long_len = name.len() as u64 + 1;
        out.extend_from_slice(&header_block(GNU_LONGLINK_NAME, long_len, 0, b'L'));
        out.extend_from_slice(name);
        out.push(0);
        out.extend(std::iter::repeat_n(0u8, padding(long_len)));
    }
    let short = &name[..name.len().min(NAME_FIELD_LEN)];
    out.extend_from_slice(&header_block(short, size, mtime, b'0'));
}

fn header_block(name: &[u8], size: u64, mtime: u64, typeflag: u8) -> [u8; BLOCK_SIZE] {
    let mut block = [0u8; BLOCK_SIZE];
    block[..name.len()].copy_from_slice(name);
    write_octal(&mut block[MODE], u64::from(ENTRY_MODE));
    write_octal(&mut block[UID], 0);
    write_octal(&mut block[GID], 0);
    write_octal(&mut block[SIZE], size);
    write_octal(&mut block[MTIME], mtime);
    block[TYPEFLAG] = typeflag;
    block[MAGIC].copy_from_slice(GNU_MAGIC);
    block[CHKSUM].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    // GNU tar's layout: six octal digits, NUL, space.
    let digits = format!("{sum:06o}");
    block[148..154].copy_from_slice(&digits.as_bytes()[digits.len() - 6..]);
    block[154] = 0;
    block[155] = b' ';
    block
}

/// Writes `value` as zero-padded octal digits followed by a NUL, filling the field. Values that
/// do not fit are clamped to the largest representable value (only mtime can, for dates after
/// year 10 000; the writer clamps earlier).
fn write_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let max = (1u64 << (3 * digits as u32)) - 1;
    let text = format!("{:0width$o}", value.min(max), width = digits);
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

/// What a header block says about its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// `'0'` or NUL: a regular file.
    Regular,
    /// `'1'`.
    HardLink,
    /// `'2'`.
    Symlink,
    /// `'3'`.
    CharDevice,
    /// `'4'`.
    BlockDevice,
    /// `'5'`.
    Directory,
    /// `'6'`.
    Fifo,
    /// `'7'`: contiguous file, refused like the rest.
    Contiguous,
    /// `'L'`: GNU long name for the next entry.
    GnuLongName,
    /// `'K'`: GNU long link target for the next entry.
    GnuLongLink,
    /// `'x'`: PAX extended header for the next entry.
    PaxLocal,
    /// `'g'`: PAX global header.
    PaxGlobal,
    /// `'S'`: GNU sparse file.
    GnuSparse,
    /// Anything else.
    Other(u8),
}

impl EntryType {
    fn from_flag(flag: u8) -> Self {
        match flag {
            b'0' | 0 => EntryType::Regular,
            b'1' => EntryType::HardLink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::CharDevice,
            b'4' => EntryType::BlockDevice,
            b'5' => EntryType::Directory,
            b'6' => EntryType::Fifo,
            b'7' => EntryType::Contiguous,
            b'L' => EntryType::GnuLongName,
            b'K' => EntryType::GnuLongLink,
            b'x' => EntryType::PaxLocal,
            b'g' => EntryType::PaxGlobal,
            b'S' => EntryType::GnuSparse,
            other => EntryType::Other(other),
        }
    }

    /// A word for error messages.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            EntryType::Regular => "regular file",
            EntryType::HardLink => "hard link",
            EntryType::Symlink => "symbolic link",
            EntryType::CharDevice => "character device",
            EntryType::BlockDevice => "block device",
            EntryType::Directory => "directory",
            EntryType::Fifo => "FIFO",
            EntryType::Contiguous => "contiguous file",
            EntryType::GnuLongName => "GNU long name",
            EntryType::GnuLongLink => "GNU long link",
            EntryType::PaxLocal => "PAX extended header",
            EntryType::PaxGlobal => "PAX global header",
            EntryType::GnuSparse => "GNU sparse file",
            EntryType::Other(_) => "unknown-type",
        }
    }
}

/// Which header dialect a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// POSIX ustar (`"ustar\0" "00"`): the prefix field extends the name.
    Ustar,
    /// GNU (`"ustar  \0"`): the prefix area holds other fields.
    Gnu,
}

/// A parsed header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// The name from the header (prefix joined for ustar); a long-name record may replace it.
    pub name: Vec<u8>,
    /// Size of the data following the header.
    pub size: u64,
    /// Entry type.
    pub entry_type: EntryType,
    /// Header dialect.
    pub dialect: Dialect,
}

/// What a 512-byte block is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// All zero: part of the end-of-archive marker.
    Zero,
    /// A header.
    Header(RawHeader),
}

/// Parses one block. Pure: no I/O.
///
/// # Errors
/// A description of the malformation: bad checksum, unknown magic (v7 and other pre-POSIX
/// headers are refused), bad numeric field.
pub fn parse_block(block: &[u8; BLOCK_SIZE]) -> Result<Block, String> {
    if block.iter().all(|&b| b == 0) {
        return Ok(Block::Zero);
    }
    let recorded = parse_number(&block[CHKSUM]).map_err(|e| format!("checksum field: {e}"))?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| if CHKSUM.contains(&i) { 32 } else { u64::from(b) })
        .sum();
    // Some historic writers summed signed bytes; accept either, as GNU tar does.
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if CHKSUM.contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if recorded != unsigned && i64::try_from(recorded).ok() != Some(signed) {
        return Err(format!(
            "checksum mismatch (recorded {recorded:o}, computed {unsigned:o})"
        ));
    }
    let dialect = if &block[MAGIC] == GNU_MAGIC {
        Dialect::Gnu
    } else if &block[257..263] == USTAR_MAGIC && &block[263..265] == USTAR_VERSION {
        Dialect::Ustar
    } else {
        return Err("unknown header magic (only ustar and GNU tar are accepted)".to_owned());
    };
    let size = parse_number(&block[SIZE]).map_err(|e| format!("size field: {e}"))?;
    let mut name = field_bytes(&block[NAME]).to_vec();
    if dialect == Dialect::Ustar {
        let prefix = field_bytes(&block[PREFIX]);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    Ok(Block::Header(RawHeader {
        name,
        size,
        entry_type: EntryType::from_flag(block[TYPEFLAG]),
        dialect,
    }))
}

/// The bytes of a NUL-terminated (or full) text field.
fn field_bytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Parses a numeric field: octal digits surrounded by spaces or NULs, or GNU base-256 (high bit
/// of the first byte set) for large values.
fn parse_number(field: &[u8]) -> Result<u64, String> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        if first & 0x40 != 0 {
            return Err("negative base-256 number".to_owned());
        }
        let mut value: u64 = u64::from(first & 0x3f);
        for &b in &field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or("base-256 number overflows")?;
        }
        return Ok(value);
    }
    let text = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| b != b' ' && b != 0)
        .collect::<Vec<u8>>();
    let rest_ok = field
        .iter()
        .skip_while(|&&b| b == b' ' || b == 0)
        .skip(text.len())
        .all(|&b| b == b' ' || b == 0);
    if !rest_ok {
        return Err("garbage after number".to_owned());
    }
    if text.is_empty() {
        return Ok(0);
    }
    let mut value: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!("not an octal digit: {:?}", char::from(b)));
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or("octal number overflows")?;
    }
    Ok(value)
}

/// Parses PAX extended header records (`"<len> <key>=<value>\n"`), returning the `path` and
/// `size` keys. Other keys (times, owners, charset) do not matter to a reader that never
/// extracts to disk.
///
/// # Errors
/// A description of the malformation.
pub fn parse_pax(data: &[u8]) -> Result<PaxOverrides, String> {
    let mut out = PaxOverrides::default();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("record without length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad record length")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("bad record length".to_owned());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => out.path = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad size value")?;
                out.size = Some(size);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(out)
}

/// The PAX keys that change how an entry is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaxOverrides {
    /// Replaces the header name.
    pub path: Option<Vec<u8>>,
    /// Replaces the header size.
    pub size: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_block(bytes: &[u8]) -> [u8; BLOCK_SIZE] {
        let mut block = [0u8; BLOCK_SIZE];
        block.copy_from_slice(&bytes[..BLOCK_SIZE]);
        block
    }

    #[test]
    fn short_path_round_trips() {
        let mut out = Vec::new();
        encode_file_header("metadata/version", 6, 1_700_000_000, &mut out);
        assert_eq!(out.len(), BLOCK_SIZE);
        let Block::Header(h) = parse_block(&first_block(&out)).expect("parses") else {
            panic!("zero block")
        };
        assert_eq!(h.name, b"metadata/version");
        assert_eq!(h.size, 6);
        assert_eq!(h.entry_type, EntryType::Regular);
        assert_eq!(h.dialect, Dialect::Gnu);
    }

    #[test]
    fn long_path_gets_longlink_record() {
        let path = format!("resources/pods/namespaces/ns/{}.json", "n".repeat(150));
        let mut out = Vec::new();
        encode_file_header(&path, 10, 0, &mut out);
        assert_eq!(out.len(), 3 * BLOCK_SIZE);
        let Block::Header(h) = parse_block(&first_block(&out)).expect("parses") else {
            panic!("zero block")
        };
        assert_eq!(h.entry_type, EntryType::GnuLongName);
        assert_eq!(h.size, path.len() as u64 + 1);
        assert_eq!(&out[BLOCK_SIZE..BLOCK_SIZE + path.len()], path.as_bytes());
    }

    #[test]
    fn bad_checksum_is_refused() {
        let mut out = Vec::new();
        encode_file_header("metadata/version", 6, 0, &mut out);
        let mut block = first_block(&out);
        block[0] ^= 1;
        assert!(parse_block(&block).is_err_and(|e| e.contains("checksum")));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"00000000012\0"), Ok(10));
        assert_eq!(parse_number(b"     12 \0\0\0\0"), Ok(10));
        assert_eq!(parse_number(b"\0\0\0\0"), Ok(0));
        assert!(parse_number(b"0009\0").is_err());
        assert!(parse_number(b"12 3\0").is_err());
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Ok(256));
    }

    #[test]
    fn pax_records() {
        let data = b"30 path=resources/pods/x.json\n12 size=100\n20 mtime=1.5000000\n";
        // Lengths above are illustrative only; build real records instead.
        let _ = data;
        let mut records = Vec::new();
        for (k, v) in [("path", "resources/pods/cluster/x.json"), ("size", "100")] {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            if (len.to_string().len() + body.len()) != len {
                len = len.to_string().len() + body.len();
            }
            records.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        let parsed = parse_pax(&records).expect("parses");
        assert_eq!(
            parsed.path.as_deref(),
            Some(&b"resources/pods/cluster/x.json"[..])
        );
        assert_eq!(parsed.size, Some(100));
        assert!(parse_pax(b"99 path=x\n").is_err());
    }
}
