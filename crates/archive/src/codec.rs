//! Compression codecs and the frame machinery: encoders for the writer, decoders for the reader,
//! and positional sections of the archive file so two streams (objects and index) can be read in
//! lockstep without re-opening the file.
//!
//! Normative text: `format-spec/v1.md` §4.1 (frames), §8 (codecs).

use super::error::{ArchiveError, RatioLimit, Result, TotalLimit, location};
use super::random_access::RandomAccess;
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// First four bytes of a zstd frame (RFC 8878 §3.1.1, little-endian 0xFD2FB528).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// First two bytes of a gzip member (RFC 1952 §2.3.1).
pub const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];
/// Default zstd level: zstd's own default, the best speed/ratio trade-off for JSON (spec §8).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Highest zstd level accepted: levels 20-22 ("ultra") need windows above 8 MiB, which readers
/// refuse (spec §8, §11).
pub const MAX_ZSTD_LEVEL: i32 = 19;
/// Default gzip level: 6, gzip's own default.
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// Largest zstd window a reader accepts, as a power of two (8 MiB): level 19 needs 2^23. Caps
/// decoder memory against hostile frames (spec §11).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Default compression threads. One thread compresses frames beside the thread that sorts,
/// hashes and frames the entries, like `zstd -T1`. Each frame is compressed independently in
/// single-threaded mode, so the output does not depend on the thread count (spec §12).
pub const DEFAULT_ZSTD_WORKERS: u32 = 1;

/// Read buffer of the decoders.
const READ_BUF: usize = 64 * 1024;

/// A compression codec. The reader detects it from the file's first bytes, never from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Zstandard (RFC 8878): the default.
    Zstd,
    /// gzip (RFC 1952): what Velero reads and writes.
    Gzip,
}

impl Codec {
    /// The conventional file extension, with the tar part: `.tar.zst` or `.tar.gz`.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Zstd => ".tar.zst",
            Codec::Gzip => ".tar.gz",
        }
    }

    /// The codec's name as written in the manifest: `zstd` or `gzip`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    /// Detects the codec from the first bytes of a file.
    #[must_use]
    pub fn detect(magic: &[u8]) -> Option<Codec> {
        if magic.starts_with(&ZSTD_MAGIC) {
            Some(Codec::Zstd)
        } else if magic.starts_with(&GZIP_MAGIC) {
            Some(Codec::Gzip)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Codec and its tuning, as the writer uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// The codec.
    pub codec: Codec,
    /// Compression level: zstd 1..=19, gzip 0..=9.
    pub level: i32,
    /// Compression threads for frame A (at least 1), both codecs. Does not change the output.
    pub workers: u32,
}

impl Compression {
    /// zstd at level 3 with one worker thread.
    #[must_use]
    pub fn zstd() -> Self {
        Compression {
            codec: Codec::Zstd,
            level: DEFAULT_ZSTD_LEVEL,
            workers: DEFAULT_ZSTD_WORKERS,
        }
    }

    /// gzip at level 6.
    #[must_use]
    pub fn gzip() -> Self {
        Compression {
            codec: Codec::Gzip,
            level: DEFAULT_GZIP_LEVEL as i32,
            workers: 1,
        }
    }

    /// Checks the level and workers are in range.
    ///
    /// # Errors
    /// [`ArchiveError::InvalidOption`] naming the option.
    pub fn validate(&self) -> Result<()> {
        match self.codec {
            Codec::Zstd if !(1..=MAX_ZSTD_LEVEL).contains(&self.level) => Err(ArchiveError::InvalidOption {
                option: "level",
                reason: format!("zstd level must be 1..={MAX_ZSTD_LEVEL}, got {}", self.level),
            }),
            Codec::Gzip if !(0..=9).contains(&self.level) => Err(ArchiveError::InvalidOption {
                option: "level",
                reason: format!("gzip level must be 0..=9, got {}", self.level),
            }),
            _ if !(1..=64).contains(&self.workers) => Err(ArchiveError::InvalidOption {
                option: "workers",
                reason: format!("compression threads must be 1..=64, got {}", self.workers),
            }),
            _ => Ok(()),
        }
    }
}

/// Compresses one frame (a zstd frame or a gzip member) into `W`.
pub enum FrameEncoder<W: Write> {
    /// A zstd frame with content checksum.
    Zstd(zstd::stream::write::Encoder<'static, W>),
    /// A gzip member with a fixed header (mtime 0, OS 255).
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> std::fmt::Debug for FrameEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameEncoder::Zstd(_) => f.write_str("FrameEncoder::Zstd"),
            FrameEncoder::Gzip(_) => f.write_str("FrameEncoder::Gzip"),
        }
    }
}

impl<W: Write> FrameEncoder<W> {
    /// Starts a frame.
    ///
    /// # Errors
    /// zstd refusing a parameter.
    pub fn new(out: W, compression: &Compression) -> io::Result<Self> {
        match compression.codec {
            Codec::Zstd => {
                // Single-threaded on purpose: the bytes must not depend on a thread count
                // (spec §12).
                let mut enc = zstd::stream::write::Encoder::new(out, compression.level)?;
                enc.include_checksum(true)?;
                Ok(FrameEncoder::Zstd(enc))
            }
            Codec::Gzip => {
                let level = flate2::Compression::new(compression.level.clamp(0, 9).unsigned_abs());
                Ok(FrameEncoder::Gzip(
                    flate2::GzBuilder::new()
                        .mtime(0)
                        .operating_system(255)
                        .write(out, level),
                ))
            }
        }
    }

    /// Ends the frame and gives the sink back. Always call it: dropping an encoder loses errors.
    ///
    /// # Errors
    /// Write errors of the sink.
    pub fn finish(self) -> io::Result<W> {
        match self {
            FrameEncoder::Zstd(enc) => enc.finish(),
            FrameEncoder::Gzip(enc) => enc.finish(),
        }
    }
}

impl<W: Write> Write for FrameEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            FrameEncoder::Zstd(enc) => enc.write(buf),
            FrameEncoder::Gzip(enc) => enc.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            FrameEncoder::Zstd(enc) => enc.write_all(buf),
            FrameEncoder::Gzip(enc) => enc.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            FrameEncoder::Zstd(enc) => enc.flush(),
            FrameEncoder::Gzip(enc) => enc.flush(),
        }
    }
}

/// A byte range of the archive file, read with positional reads so several sections can be
/// read at once from one open file.
#[derive(Debug, Clone)]
pub struct Section {
    file: Arc<dyn RandomAccess>,
    pos: u64,
    end: u64,
}

impl Section {
    /// The range `offset..offset + len` of `file`.
    pub fn new(file: Arc<dyn RandomAccess>, offset: u64, len: u64) -> Self {
        Section {
            file,
            pos: offset,
            end: offset.saturating_add(len),
        }
    }

    /// Reads exactly `buf.len()` bytes at the section start (used for the tail).
    ///
    /// # Errors
    /// `UnexpectedEof` if the file is shorter.
    pub fn read_exact_at_start(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let end = self.end.max(self.pos + buf.len() as u64);
            let n = self.file.read_at(&mut buf[got..], self.pos + got as u64, end)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        Ok(())
    }
}

impl Read for Section {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos, self.end)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Decodes exactly one frame from a section and checks nothing follows it inside the section.
pub enum FrameDecoder<R: BufRead> {
    /// A zstd frame.
    Zstd(zstd::stream::read::Decoder<'static, R>),
    /// A gzip member.
    Gzip(Box<flate2::bufread::GzDecoder<R>>),
}

impl<R: BufRead> std::fmt::Debug for FrameDecoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameDecoder::Zstd(_) => f.write_str("FrameDecoder::Zstd"),
            FrameDecoder::Gzip(_) => f.write_str("FrameDecoder::Gzip"),
        }
    }
}

impl<R: BufRead> FrameDecoder<R> {
    /// A decoder of one frame read from `input`.
    ///
    /// # Errors
    /// zstd failing to allocate its context.
    pub fn new(codec: Codec, input: R) -> io::Result<Self> {
        match codec {
            Codec::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(input)?.single_frame();
                dec.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Ok(FrameDecoder::Zstd(dec))
            }
            Codec::Gzip => Ok(FrameDecoder::Gzip(Box::new(flate2::bufread::GzDecoder::new(
                input,
            )))),
        }
    }

    /// The input, as far as the decoder has read it.
    pub fn input(&self) -> &R {
        match self {
            FrameDecoder::Zstd(dec) => dec.get_ref(),
            FrameDecoder::Gzip(dec) => dec.get_ref(),
        }
    }

    /// Gives the input back once the frame is fully read, positioned right after it.
    pub fn into_inner(self) -> R {
        match self {
            FrameDecoder::Zstd(dec) => dec.finish(),
            FrameDecoder::Gzip(dec) => dec.into_inner(),
        }
    }
}

impl<R: BufRead> Read for FrameDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            FrameDecoder::Zstd(dec) => dec.read(buf),
            FrameDecoder::Gzip(dec) => dec.read(buf),
        }
    }
}

/// A source of decompressed frames: reads return a frame's bytes, `Ok(0)` at the end of each
/// frame, and [`FrameSource::next_frame`] moves to the next one.
pub trait FrameSource: Read {
    /// Moves past the end of the current frame. Returns `false` when there is no next frame.
    ///
    /// # Errors
    /// The frame did not end where it should (trailing data) or the next one cannot start.
    fn next_frame(&mut self) -> Result<bool>;
}

/// Decodes one zstd frame at a time, reusing one decompression context (and its window buffer)
/// across frames instead of allocating a new one per frame.
struct ZstdFrame {
    dctx: zstd::zstd_safe::DCtx<'static>,
    input: BufReader<Section>,
    done: bool,
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, zstd::zstd_safe::get_error_name(code))
}

impl ZstdFrame {
    fn new(section: Section) -> io::Result<Self> {
        let mut dctx = zstd::zstd_safe::DCtx::create();
        dctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
            .map_err(zstd_error)?;
        Ok(ZstdFrame {
            dctx,
            input: BufReader::with_capacity(READ_BUF, section),
            done: false,
        })
    }

    /// Starts the next frame in `section`. The previous input must have been fully consumed.
    fn restart(&mut self, section: Section) -> io::Result<()> {
        self.dctx
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(zstd_error)?;
        *self.input.get_mut() = section;
        self.done = false;
        Ok(())
    }
}

impl Read for ZstdFrame {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            let input = self.input.fill_buf()?;
            if input.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "incomplete zstd frame",
                ));
            }
            let mut src = zstd::zstd_safe::InBuffer::around(input);
            let mut dst = zstd::zstd_safe::OutBuffer::around(&mut *buf);
            let hint = self
                .dctx
                .decompress_stream(&mut dst, &mut src)
                .map_err(zstd_error)?;
            let (consumed, produced) = (src.pos(), dst.pos());
            self.input.consume(consumed);
            if hint == 0 {
                self.done = true;
            }
            if produced > 0 || self.done {
                return Ok(produced);
            }
            if consumed == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "zstd decoder made no progress",
                ));
            }
        }
    }
}

/// The decoder of the frame being read by a [`FrameSeq`].
enum SeqDecoder {
    Zstd(ZstdFrame),
    Gzip(Option<Box<flate2::bufread::GzDecoder<BufReader<Section>>>>),
}

impl SeqDecoder {
    /// At the end of a frame: if more input follows in the same section, starts decoding it as
    /// the next frame and returns `true`.
    fn continue_in_section(&mut self) -> io::Result<bool> {
        if self.input()?.fill_buf()?.is_empty() {
            return Ok(false);
        }
        match self {
            SeqDecoder::Zstd(z) => {
                z.dctx
                    .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                    .map_err(zstd_error)?;
                z.done = false;
            }
            SeqDecoder::Gzip(slot) => {
                if let Some(old) = slot.take() {
                    *slot = Some(Box::new(flate2::bufread::GzDecoder::new(old.into_inner())));
                }
            }
        }
        Ok(true)
    }

    fn input(&mut self) -> io::Result<&mut BufReader<Section>> {
        match self {
            SeqDecoder::Zstd(z) => Ok(&mut z.input),
            SeqDecoder::Gzip(slot) => slot
                .as_mut()
                .map(|g| g.get_mut())
                .ok_or_else(|| io::Error::other("gzip decoder lost")),
        }
    }
}

impl Read for SeqDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SeqDecoder::Zstd(z) => z.read(buf),
            SeqDecoder::Gzip(slot) => slot.as_mut().map_or(Ok(0), |g| g.read(buf)),
        }
    }
}

/// How much a decoder may produce (decompression-bomb defence): at most `total` bytes, and at
/// most `ratio` times the compressed bytes it reads plus `floor`. The total cap alone let a
/// small file expand to the whole 64 GiB; the ratio ties the work to the file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The total cap.
    pub total: u64,
    /// Decoded bytes allowed per compressed byte.
    pub ratio: u64,
    /// Decoded bytes allowed whatever the compressed size (small archives of repetitive
    /// objects compress far beyond any ratio).
    pub floor: u64,
}

impl Budget {
    /// Fails once `decoded` bytes are more than `compressed` bytes may give.
    fn check(&self, decoded: u64, compressed: u64) -> io::Result<()> {
        if decoded > self.total {
            return Err(io::Error::other(TotalLimit(self.total)));
        }
        let limit = compressed.saturating_mul(self.ratio).saturating_add(self.floor);
        if decoded > limit {
            return Err(io::Error::other(RatioLimit {
                compressed,
                limit,
                ratio: self.ratio,
            }));
        }
        Ok(())
    }
}

/// Sequential decoding of known frames (the frame table), each checked to fill its section.
pub struct FrameSeq {
    codec: Codec,
    file: Arc<dyn RandomAccess>,
    /// (offset, length) of each frame still to read, in order.
    frames: std::vec::IntoIter<(u64, u64)>,
    current: Option<(SeqDecoder, u64)>,
    /// A zstd decoder kept between frames.
    spare_zstd: Option<ZstdFrame>,
    /// Whether a section may hold several frames back to back (frame B, spec §4.1).
    concatenated: bool,
    /// Decoded bytes so far, against the budget.
    decoded: u64,
    budget: Budget,
    /// Compressed bytes of all the frames, which the budget's ratio applies to.
    compressed: u64,
    /// Name used in errors.
    what: &'static str,
}

impl std::fmt::Debug for FrameSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSeq")
            .field("codec", &self.codec)
            .field("decoded", &self.decoded)
            .finish_non_exhaustive()
    }
}

impl FrameSeq {
    /// Decodes `frames` of `file` in order.
    pub fn new(
        codec: Codec,
        file: Arc<dyn RandomAccess>,
        frames: Vec<(u64, u64)>,
        budget: Budget,
        what: &'static str,
    ) -> Self {
        let compressed = frames.iter().map(|(_, len)| *len).fold(0u64, u64::saturating_add);
        FrameSeq {
            codec,
            file,
            frames: frames.into_iter(),
            current: None,
            spare_zstd: None,
            concatenated: false,
            decoded: 0,
            budget,
            compressed,
            what,
        }
    }

    /// Lets each section hold several frames back to back, decoded as one stream.
    #[must_use]
    pub fn concatenated(mut self) -> Self {
        self.concatenated = true;
        self
    }

    /// Opens the first frame. Returns `false` when there are none.
    ///
    /// # Errors
    /// As [`FrameSource::next_frame`].
    pub fn start(&mut self) -> Result<bool> {
        self.open_next()
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some((offset, len)) = self.frames.next() else {
            self.current = None;
            return Ok(false);
        };
        let section = Section::new(Arc::clone(&self.file), offset, len);
        let decoder = match self.codec {
            Codec::Zstd => match self.spare_zstd.take() {
                Some(mut z) => z.restart(section).map(|()| SeqDecoder::Zstd(z)),
                None => ZstdFrame::new(section).map(SeqDecoder::Zstd),
            },
            Codec::Gzip => Ok(SeqDecoder::Gzip(Some(Box::new(flate2::bufread::GzDecoder::new(
                BufReader::with_capacity(READ_BUF, section),
            ))))),
        }
        .map_err(|e| ArchiveError::Decompress {
            entry: self.what.to_owned(),
            error: e,
        })?;
        self.current = Some((decoder, offset));
        Ok(true)
    }
}

impl Read for FrameSeq {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((decoder, offset)) = self.current.as_mut() else {
            return Ok(0);
        };
        let mut n = match decoder.read(buf) {
            Ok(n) => n,
            Err(e) => return Err(io::Error::new(e.kind(), format!("frame at offset {offset}: {e}"))),
        };
        while n == 0 && self.concatenated && !buf.is_empty() && decoder.continue_in_section()? {
            n = match decoder.read(buf) {
                Ok(n) => n,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("frame in section at {offset}: {e}"),
                    ));
                }
            };
        }
        self.decoded += n as u64;
        self.budget.check(self.decoded, self.compressed)?;
        Ok(n)
    }
}

impl FrameSource for FrameSeq {
    fn next_frame(&mut self) -> Result<bool> {
        if let Some((mut decoder, offset)) = self.current.take() {
            let trailing = decoder
                .input()
                .and_then(|input| input.fill_buf())
                .map_err(|e| ArchiveError::io(format!("{} at offset {offset}", self.what), e))?;
            if !trailing.is_empty() {
                return Err(ArchiveError::Decompress {
                    entry: self.what.to_owned(),
                    error: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "frame at offset {offset} is followed by other data inside its recorded length"
                        ),
                    ),
                });
            }
            if let SeqDecoder::Zstd(z) = decoder {
                self.spare_zstd = Some(z);
            }
        }
        self.open_next()
    }
}

/// A buffered reader that can look ahead a given number of bytes, however short the reads of
/// the underlying reader are (a pipe may return one byte at a time).
#[derive(Debug)]
pub struct PeekBuf<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<R: Read> PeekBuf<R> {
    /// Wraps `inner` with a buffer of `capacity` bytes.
    pub fn new(inner: R, capacity: usize) -> Self {
        PeekBuf {
            inner,
            buf: vec![0u8; capacity.max(64)],
            pos: 0,
            end: 0,
        }
    }

    /// Returns at least `n` buffered bytes, or fewer only at the end of the input.
    ///
    /// # Errors
    /// The underlying reader's errors.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.end - self.pos < n {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            if self.buf.len() < n {
                self.buf.resize(n, 0);
            }
            while self.end < n {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(0) => break,
                    Ok(got) => self.end += got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.pos..self.end])
    }
}

impl<R: Read> Read for PeekBuf<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for PeekBuf<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = loop {
                match self.inner.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.end);
    }
}

/// Counts the bytes consumed from a buffered reader, to learn where frames end.
#[derive(Debug)]
pub struct CountingBufRead<R> {
    inner: R,
    consumed: u64,
}

impl<R> CountingBufRead<R> {
    /// Wraps `inner`, counting from 0.
    pub fn new(inner: R) -> Self {
        CountingBufRead { inner, consumed: 0 }
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }
}

impl<R: Read> CountingBufRead<PeekBuf<R>> {
    /// Looks ahead `n` bytes without consuming them.
    ///
    /// # Errors
    /// The underlying reader's errors.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        self.inner.peek(n)
    }
}

impl<R: BufRead> Read for CountingBufRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountingBufRead<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.consumed += amt as u64;
        self.inner.consume(amt);
    }
}

/// The raw input of a [`ConcatFrames`], positioned after the last data frame when it ends.
pub type StreamInput<R> = CountingBufRead<PeekBuf<R>>;

/// What is left when a [`ConcatFrames`] is finished.
#[derive(Debug)]
pub struct StreamEnd<R> {
    /// The input after the last data frame (the locator, if any).
    pub rest: StreamInput<R>,
    /// Compressed (offset, length) of every data frame.
    pub frames: Vec<(u64, u64)>,
}

/// Decodes consecutive data frames of a stream whose frame table is unknown (a pipe, or a file
/// whose locator is missing), recording where each frame starts and ends. It stops before
/// anything that is not a data frame (the locator), leaving it for the caller.
#[derive(Debug)]
pub struct ConcatFrames<R: Read> {
    codec: Codec,
    input: Option<CountingBufRead<PeekBuf<R>>>,
    current: Option<FrameDecoder<CountingBufRead<PeekBuf<R>>>>,
    /// Compressed (offset, length) of every completed frame.
    pub frames: Vec<(u64, u64)>,
    current_start: u64,
    decoded: u64,
    budget: Budget,
}

impl<R: Read> ConcatFrames<R> {
    /// Decodes `input`, which starts with a frame of `codec`, within `budget` (its ratio
    /// applies to the input consumed so far).
    pub fn new(codec: Codec, input: R, budget: Budget) -> Self {
        ConcatFrames {
            codec,
            input: Some(CountingBufRead::new(PeekBuf::new(input, READ_BUF))),
            current: None,
            frames: Vec::new(),
            current_start: 0,
            decoded: 0,
            budget,
        }
    }

    /// Compressed offset where the current frame started.
    pub fn current_start(&self) -> u64 {
        self.current_start
    }

    /// Ends the current frame (it must be fully decoded) and returns the remaining input, for
    /// reading the tail.
    ///
    /// # Errors
    /// The frame is not complete.
    pub fn finish(mut self) -> Result<StreamEnd<R>> {
        self.close_current()?;
        let input = self.input.take().ok_or_else(|| ArchiveError::Truncated {
            entry: location::FRAME_B.to_owned(),
        })?;
        Ok(StreamEnd {
            rest: input,
            frames: std::mem::take(&mut self.frames),
        })
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some(decoder) = self.current.take() {
            let input = decoder.into_inner();
            let end = input.consumed();
            self.frames.push((self.current_start, end - self.current_start));
            self.input = Some(input);
        }
        Ok(())
    }

    /// Starts the next frame if the input continues with a data frame.
    fn open_next(&mut self) -> io::Result<bool> {
        let Some(mut input) = self.input.take() else {
            return Ok(false);
        };
        let head = input.peek(16)?;
        let is_data = match self.codec {
            Codec::Zstd => head.starts_with(&ZSTD_MAGIC),
            Codec::Gzip => head.starts_with(&GZIP_MAGIC) && !super::locator::is_gzip_locator_start(head),
        };
        if !is_data {
            self.input = Some(input);
            return Ok(false);
        }
        self.current_start = input.consumed();
        self.current = Some(FrameDecoder::new(self.codec, input)?);
        Ok(true)
    }
}

impl<R: Read> Read for ConcatFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(decoder) = self.current.as_mut() {
                let n = decoder.read(buf)?;
                if n > 0 {
                    self.decoded += n as u64;
                    self.budget.check(self.decoded, decoder.input().consumed())?;
                    return Ok(n);
                }
                self.close_current().map_err(ArchiveError::into_io)?;
            }
            if !self.open_next()? {
                return Ok(0);
            }
        }
    }
}

/// One message from a decoding thread.
enum Chunk {
    /// A buffer of which the first `len` bytes are data.
    Data(Vec<u8>, usize),
    FrameEnd,
    Failed(io::Error),
}

/// Runs a [`FrameSource`] on its own thread, so decompression overlaps hashing and parsing (the
/// way `zstd -dc | sha256sum` uses two cores). Memory is bounded: at most [`PUMP_DEPTH`] chunks of
/// [`PUMP_CHUNK`] bytes are in flight.
#[derive(Debug)]
pub struct Pumped {
    rx: Receiver<Chunk>,
    recycle: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    pos: usize,
    at_frame_end: bool,
    done: bool,
}

/// Size of one chunk handed from the decoding thread.
pub const PUMP_CHUNK: usize = 256 * 1024;
/// Chunks in flight between the decoding thread and the reader.
pub const PUMP_DEPTH: usize = 4;

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Chunk::Data(_, len) => write!(f, "Data({len})"),
            Chunk::FrameEnd => f.write_str("FrameEnd"),
            Chunk::Failed(e) => write!(f, "Failed({e})"),
        }
    }
}

impl Pumped {
    /// Starts decoding `source` (already positioned on its first frame) on a new thread.
    pub fn spawn<S: FrameSource + Send + 'static>(mut source: S) -> Self {
        let (tx, rx) = sync_channel::<Chunk>(PUMP_DEPTH);
        let (recycle, spare) = sync_channel::<Vec<u8>>(PUMP_DEPTH + 2);
        std::thread::spawn(move || {
            loop {
                // `vec!` of zeros is a calloc; buffers come back through `spare` full-length.
                let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0u8; PUMP_CHUNK]);
                let mut filled = 0;
                let mut frame_end = false;
                while filled < PUMP_CHUNK {
                    match source.read(&mut buf[filled..]) {
                        Ok(0) => {
                            frame_end = true;
                            break;
                        }
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            if filled > 0 && tx.send(Chunk::Data(buf, filled)).is_err() {
                                return;
                            }
                            let _ = tx.send(Chunk::Failed(e));
                            return;
                        }
                    }
                }
                if filled > 0 && tx.send(Chunk::Data(buf, filled)).is_err() {
                    return;
                }
                if frame_end {
                    let more = match source.next_frame() {
                        Ok(more) => more,
                        Err(e) => {
                            let _ = tx.send(Chunk::Failed(e.into_io()));
                            return;
                        }
                    };
                    if tx.send(Chunk::FrameEnd).is_err() || !more {
                        return;
                    }
                }
            }
        });
        Pumped {
            rx,
            recycle,
            current: Vec::new(),
            len: 0,
            pos: 0,
            at_frame_end: false,
            done: false,
        }
    }

    /// Makes `data` (of which `len` bytes are filled) the chunk being read, handing the previous
    /// full-size buffer back to the decoding thread.
    fn take(&mut self, data: Vec<u8>, len: usize) {
        let old = std::mem::replace(&mut self.current, data);
        if old.len() == PUMP_CHUNK {
            let _ = self.recycle.try_send(old);
        }
        self.len = len;
        self.pos = 0;
    }
}

impl Read for Pumped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.len {
                let n = buf.len().min(self.len - self.pos);
                buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.at_frame_end || self.done || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(data, len)) => self.take(data, len),
                Ok(Chunk::FrameEnd) => self.at_frame_end = true,
                Ok(Chunk::Failed(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
    }
}

impl FrameSource for Pumped {
    fn next_frame(&mut self) -> Result<bool> {
        // Drain whatever is left of the frame (callers normally stop exactly at its end).
        let mut scratch = [0u8; 4096];
        while !self.at_frame_end && !self.done {
            let n = self
                .read(&mut scratch)
                .map_err(|e| ArchiveError::from_decode(e, location::FRAME_A))?;
            if n == 0 {
                break;
            }
        }
        if self.done && !self.at_frame_end {
            return Ok(false);
        }
        self.at_frame_end = false;
        // The thread sends FrameEnd after checking the frame; it ends the channel when no frame
        // follows. Peek by receiving the next message.
        match self.rx.recv() {
            Ok(Chunk::Data(data, len)) => {
                self.take(data, len);
                Ok(true)
            }
            Ok(Chunk::FrameEnd) => {
                // An empty frame: report it as present but already ended.
                self.at_frame_end = true;
                Ok(true)
            }
            Ok(Chunk::Failed(e)) => {
                self.done = true;
                Err(ArchiveError::from_decode(e, location::FRAME_A))
            }
            Err(_) => {
                self.done = true;
                Ok(false)
            }
        }
    }
}
