//! The locator: a fixed-size footer telling a reader where frame B (manifest and index) starts,
//! so `open` reads a few hundred bytes instead of decompressing the objects.
//!
//! Normative text: `format-spec/v1.md` §7. The 64-byte payload is the same for both codecs; the
//! wrapper makes standard tools skip it:
//!
//! - zstd: a skippable frame (RFC 8878 §3.1.2), magic [`ZSTD_SKIPPABLE_MAGIC`], which `zstd -d`
//!   ignores;
//! - gzip: an empty gzip member whose FEXTRA field holds the payload in a subfield with ID
//!   `KP` (RFC 1952 §2.3.1.1); it decompresses to nothing, so `gzip -d` and `tar xz` ignore it.
//!
//! Payload (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8  | magic `KPROMOTE` |
//! | 8  | 2  | format major version |
//! | 10 | 2  | format minor version |
//! | 12 | 4  | flags: 0 in v1; readers ignore unknown bits |
//! | 16 | 8  | byte offset of frame B in the file |
//! | 24 | 8  | byte length of frame B |
//! | 32 | 32 | SHA-256 of the `kpromote/manifest.json` entry bytes |

use super::codec::Codec;

/// Magic at the start of the payload.
pub const PAYLOAD_MAGIC: [u8; 8] = *b"KPROMOTE";
/// Payload length in bytes.
pub const PAYLOAD_LEN: usize = 64;
/// zstd skippable-frame magic used for the locator (the skippable range is
/// 0x184D2A50..=0x184D2A5F; 0x184D2A5E is taken by zstd's seekable format, so we use 0x5B).
pub const ZSTD_SKIPPABLE_MAGIC: u32 = 0x184D_2A5B;
/// Length of the zstd locator frame: magic, frame size, payload.
pub const ZSTD_LOCATOR_LEN: usize = 8 + PAYLOAD_LEN;
/// gzip extra-field subfield ID of the locator.
pub const GZIP_SUBFIELD_ID: [u8; 2] = *b"KP";
/// Length of the gzip locator member: 10-byte header, 2-byte XLEN, 4-byte subfield header,
/// payload, 2-byte empty deflate block, CRC-32 and ISIZE.
pub const GZIP_LOCATOR_LEN: usize = 10 + 2 + 4 + PAYLOAD_LEN + 2 + 8;

/// The gzip member header of the locator: magic, CM=8 (deflate), FLG=FEXTRA, MTIME=0, XFL=0,
/// OS=255 (unknown), XLEN=68, subfield `KP` of length 64.
const GZIP_LOCATOR_HEAD: [u8; 16] = [
    0x1F, 0x8B, 0x08, 0x04, 0, 0, 0, 0, 0x00, 0xFF, 68, 0, b'K', b'P', 64, 0,
];
/// A final fixed-Huffman deflate block holding only end-of-block, then CRC-32 = 0 and
/// ISIZE = 0: the compression of nothing.
const GZIP_LOCATOR_TAIL: [u8; 10] = [0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];

/// The locator's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locator {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Flags; 0 in v1.
    pub flags: u32,
    /// Offset of frame B in the file.
    pub frame_b_offset: u64,
    /// Length of frame B in bytes.
    pub frame_b_len: u64,
    /// SHA-256 of the manifest entry.
    pub manifest_sha256: [u8; 32],
}

/// What the tail of a file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// A well-formed locator.
    Found(Locator),
    /// The wrapper is there but the payload is not a locator.
    Damaged(String),
    /// No locator wrapper: a stream, a truncated file, or a Velero tarball.
    Absent,
}

impl Locator {
    /// The 64-byte payload.
    #[must_use]
    pub fn payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut out = [0u8; PAYLOAD_LEN];
        out[0..8].copy_from_slice(&PAYLOAD_MAGIC);
        out[8..10].copy_from_slice(&self.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.minor.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.frame_b_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.frame_b_len.to_le_bytes());
        out[32..64].copy_from_slice(&self.manifest_sha256);
        out
    }

    /// Parses a payload.
    ///
    /// # Errors
    /// A description when the magic is wrong.
    pub fn from_payload(p: &[u8; PAYLOAD_LEN]) -> Result<Self, String> {
        if p[0..8] != PAYLOAD_MAGIC {
            return Err("locator payload magic is not KPROMOTE".to_owned());
        }
        let u16_at = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut manifest_sha256 = [0u8; 32];
        manifest_sha256.copy_from_slice(&p[32..64]);
        Ok(Locator {
            major: u16_at(8),
            minor: u16_at(10),
            flags: u32_at(12),
            frame_b_offset: u64_at(16),
            frame_b_len: u64_at(24),
            manifest_sha256,
        })
    }

    /// The locator's bytes as written at the end of a file of `codec`.
    #[must_use]
    pub fn encode(&self, codec: Codec) -> Vec<u8> {
        let payload = self.payload();
        match codec {
            Codec::Zstd => {
                let mut out = Vec::with_capacity(ZSTD_LOCATOR_LEN);
                out.extend_from_slice(&ZSTD_SKIPPABLE_MAGIC.to_le_bytes());
                out.extend_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
                out.extend_from_slice(&payload);
                out
            }
            Codec::Gzip => {
                let mut out = Vec::with_capacity(GZIP_LOCATOR_LEN);
                out.extend_from_slice(&GZIP_LOCATOR_HEAD);
                out.extend_from_slice(&payload);
                out.extend_from_slice(&GZIP_LOCATOR_TAIL);
                out
            }
        }
    }

    /// Length of the encoded locator for `codec`.
    #[must_use]
    pub fn encoded_len(codec: Codec) -> usize {
        match codec {
            Codec::Zstd => ZSTD_LOCATOR_LEN,
            Codec::Gzip => GZIP_LOCATOR_LEN,
        }
    }

    /// Reads the locator from the last [`Locator::encoded_len`] bytes of a file.
    #[must_use]
    pub fn from_tail(codec: Codec, tail: &[u8]) -> Tail {
        let len = Self::encoded_len(codec);
        if tail.len() < len {
            return Tail::Absent;
        }
        let tail = &tail[tail.len() - len..];
        let payload: &[u8] = match codec {
            Codec::Zstd => {
                if tail[0..4] != ZSTD_SKIPPABLE_MAGIC.to_le_bytes() {
                    return Tail::Absent;
                }
                if tail[4..8] != (PAYLOAD_LEN as u32).to_le_bytes() {
                    return Tail::Damaged("locator frame has the wrong length".to_owned());
                }
                &tail[8..]
            }
            Codec::Gzip => {
                if tail[0..16] != GZIP_LOCATOR_HEAD {
                    return Tail::Absent;
                }
                if tail[16 + PAYLOAD_LEN..] != GZIP_LOCATOR_TAIL {
                    return Tail::Damaged("locator member does not end as an empty member".to_owned());
                }
                &tail[16..16 + PAYLOAD_LEN]
            }
        };
        let mut p = [0u8; PAYLOAD_LEN];
        p.copy_from_slice(payload);
        match Locator::from_payload(&p) {
            Ok(locator) => Tail::Found(locator),
            Err(reason) => Tail::Damaged(reason),
        }
    }
}

/// Whether `head` starts a gzip member carrying a locator (so it is not a data frame).
#[must_use]
pub fn is_gzip_locator_start(head: &[u8]) -> bool {
    head.len() >= 4 && head[3] & 0x04 != 0 && head.get(12..14) == Some(&GZIP_SUBFIELD_ID[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Locator {
        Locator {
            major: 1,
            minor: 0,
            flags: 0,
            frame_b_offset: 12345,
            frame_b_len: 678,
            manifest_sha256: [7u8; 32],
        }
    }

    #[test]
    fn round_trips_both_codecs() {
        for codec in [Codec::Zstd, Codec::Gzip] {
            let bytes = sample().encode(codec);
            assert_eq!(bytes.len(), Locator::encoded_len(codec));
            assert_eq!(Locator::from_tail(codec, &bytes), Tail::Found(sample()));
        }
    }

    #[test]
    fn gzip_locator_decompresses_to_nothing() {
        let bytes = sample().encode(Codec::Gzip);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .expect("valid gzip member");
        assert!(out.is_empty());
    }

    #[test]
    fn zstd_locator_is_skipped_by_decoders() {
        let mut data = zstd::encode_all(&b"hello"[..], 3).expect("compress");
        data.extend(sample().encode(Codec::Zstd));
        assert_eq!(zstd::decode_all(&data[..]).expect("decodes"), b"hello");
    }

    #[test]
    fn damaged_payload_is_reported() {
        let mut bytes = sample().encode(Codec::Zstd);
        bytes[8] ^= 0xFF;
        assert!(matches!(
            Locator::from_tail(Codec::Zstd, &bytes),
            Tail::Damaged(_)
        ));
        assert_eq!(Locator::from_tail(Codec::Zstd, &bytes[1..]), Tail::Absent);
    }
}
