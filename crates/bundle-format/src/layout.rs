//! The byte layout of a bundle, format version 3 (see `docs/FORMAT.md`).
//!
//! ```text
//! 0                 stub_len        +32             manifest_offset  index_offset   len-160    len
//! | stub (ELF)      | lead-in       | payload       | manifest       | index        | trailer  |
//! ```
//!
//! A signed bundle has a signature block of
//! [`SIGNATURE_LEN`](crate::signature::SIGNATURE_LEN) bytes between the
//! index and the trailer; the trailer's `signature_len` field (bytes
//! 112..120, zero in an unsigned bundle) says so (see [`crate::signature`]).
//!
//! Everything here is pure code over byte slices. Every offset read from the
//! file is checked against the real file length before it is used, so no input
//! can make a caller index out of bounds, touch an unmapped page, or allocate
//! more than the caps below.

use std::ops::Range;

use crate::error::{FormatError, Result};

/// [`crate::signature::SIGNATURE_LEN`], as the trailer records it.
const SIGNATURE_LEN: u64 = crate::signature::SIGNATURE_LEN as u64;

/// Marks the start of the lead-in and the very end of the trailer.
pub const MAGIC: [u8; 8] = *b"\x7fSYDBNDL";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 3;
/// Length of the lead-in that directly follows the stub.
pub const LEAD_IN_LEN: usize = 32;
/// Length of the fixed trailer at the end of the file.
pub const TRAILER_LEN: usize = 160;
/// Largest manifest a reader accepts; real ones are a few hundred bytes.
pub const MAX_MANIFEST_LEN: u64 = 1 << 20;
/// Largest file index a reader accepts (about half a million entries).
pub const MAX_INDEX_LEN: u64 = 64 << 20;

/// The lead-in: written right after the stub so that a damaged or truncated
/// file can still be diagnosed once the trailer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadIn {
    /// Total length of the bundle file as packed.
    pub bundle_len: u64,
}

impl LeadIn {
    /// Encodes the lead-in (magic, version, length, total bundle length, zero pad).
    pub fn encode(&self) -> [u8; LEAD_IN_LEN] {
        let mut out = [0u8; LEAD_IN_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(LEAD_IN_LEN as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.bundle_len.to_le_bytes());
        out
    }

    /// Decodes a lead-in; `None` when the magic is absent.
    pub fn decode(bytes: &[u8]) -> Option<Result<LeadIn>> {
        let bytes: &[u8; LEAD_IN_LEN] = bytes.get(..LEAD_IN_LEN)?.try_into().ok()?;
        if bytes[0..8] != MAGIC {
            return None;
        }
        let version = le_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Some(Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            }));
        }
        if le_u32(bytes, 12) as usize != LEAD_IN_LEN || bytes[24..32] != [0; 8] {
            return Some(Err(FormatError::CorruptTrailer(
                "lead-in fields are damaged",
            )));
        }
        Some(Ok(LeadIn {
            bundle_len: le_u64(bytes, 16),
        }))
    }
}

/// The fixed-size record at the very end of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// Byte range of the compressed tar payload.
    pub payload: Range<u64>,
    /// Byte range of the encoded manifest.
    pub manifest: Range<u64>,
    /// Byte range of the encoded file index.
    pub index: Range<u64>,
    /// SHA-256 of the payload bytes.
    pub payload_sha256: [u8; 32],
    /// SHA-256 of the manifest bytes.
    pub manifest_sha256: [u8; 32],
    /// Length of the signature block between the index and the trailer:
    /// 0 (unsigned) or [`crate::signature::SIGNATURE_LEN`].
    pub signature_len: u64,
}

impl Trailer {
    /// Encodes the trailer, including its self-check.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        let fields = [
            self.payload.start,
            self.payload.end - self.payload.start,
            self.manifest.start,
            self.manifest.end - self.manifest.start,
            self.index.start,
            self.index.end - self.index.start,
        ];
        for (i, value) in fields.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&value.to_le_bytes());
        }
        out[48..80].copy_from_slice(&self.payload_sha256);
        out[80..112].copy_from_slice(&self.manifest_sha256);
        out[112..120].copy_from_slice(&self.signature_len.to_le_bytes());
        // 120..136 reserved, zero.
        let check = trailer_check(&out);
        out[136..144].copy_from_slice(&check);
        out[144..148].copy_from_slice(&(TRAILER_LEN as u32).to_le_bytes());
        out[148..152].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[152..160].copy_from_slice(&MAGIC);
        out
    }

    /// Decodes the trailer's own bytes. Ranges are *not* yet checked against
    /// a file; [`locate`] does that.
    pub fn decode(bytes: &[u8; TRAILER_LEN]) -> Result<Trailer> {
        if bytes[152..160] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = le_u32(bytes, 148);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if le_u32(bytes, 144) as usize != TRAILER_LEN {
            return Err(FormatError::CorruptTrailer("trailer length field is wrong"));
        }
        if bytes[136..144] != trailer_check(bytes) {
            return Err(FormatError::CorruptTrailer("trailer checksum mismatch"));
        }
        if bytes[120..136] != [0; 16] {
            return Err(FormatError::CorruptTrailer(
                "reserved trailer bytes are not zero",
            ));
        }
        let range = |at: usize| -> Result<Range<u64>> {
            let start = le_u64(bytes, at);
            let len = le_u64(bytes, at + 8);
            let end = start
                .checked_add(len)
                .ok_or(FormatError::CorruptTrailer("section range overflows"))?;
            Ok(start..end)
        };
        Ok(Trailer {
            payload: range(0)?,
            manifest: range(16)?,
            index: range(32)?,
            payload_sha256: bytes[48..80].try_into().expect("32-byte slice"),
            manifest_sha256: bytes[80..112].try_into().expect("32-byte slice"),
            signature_len: le_u64(bytes, 112),
        })
    }
}

/// First 8 bytes of the SHA-256 of the trailer's fields (bytes 0..136): lets a
/// reader tell a damaged trailer from a damaged payload.
fn trailer_check(bytes: &[u8; TRAILER_LEN]) -> [u8; 8] {
    let digest = crate::checksum::record_sha256(&bytes[..136]);
    digest[..8].try_into().expect("8-byte slice")
}

/// Where each part of a validated bundle lies in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Length of the stub executable at the start of the file.
    pub stub_len: u64,
    /// The decoded trailer, whose ranges all lie inside the file.
    pub trailer: Trailer,
}

impl Layout {
    /// The payload bytes of `file`.
    pub fn payload_bytes<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        slice(file, &self.trailer.payload)
    }
    /// The manifest bytes of `file`.
    pub fn manifest_bytes<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        slice(file, &self.trailer.manifest)
    }
    /// The index bytes of `file`.
    pub fn index_bytes<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        slice(file, &self.trailer.index)
    }
    /// The signature block of `file`: empty when the bundle is unsigned.
    pub fn signature_bytes<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        let start = self.trailer.index.end;
        slice(file, &(start..start + self.trailer.signature_len))
    }
}

fn slice<'a>(file: &'a [u8], range: &Range<u64>) -> &'a [u8] {
    // `locate` proved start <= end <= file.len(), so these casts are lossless.
    &file[range.start as usize..range.end as usize]
}

/// Finds and validates every section of a bundle held in `file`.
pub fn locate(file: &[u8]) -> Result<Layout> {
    locate_with(file, crate::elf::image_len)
}

/// [`locate`], with the function that measures the stub's executable image.
/// It is called only to explain a file with no trailer: stripped,
/// truncated, or something else entirely.
pub fn locate_with(file: &[u8], image_len: impl FnOnce(&[u8]) -> Option<u64>) -> Result<Layout> {
    let file_len = file.len() as u64;
    let trailer_bytes = file
        .len()
        .checked_sub(TRAILER_LEN)
        .and_then(|start| file.get(start..))
        .and_then(|tail| <&[u8; TRAILER_LEN]>::try_from(tail).ok());
    let trailer = match trailer_bytes.map(Trailer::decode) {
        Some(Ok(trailer)) => trailer,
        Some(Err(FormatError::BadMagic)) | None => {
            return Err(diagnose_missing_trailer(file, image_len(file)));
        }
        // The last bytes end in the magic but do not decode: a file cut
        // right after the lead-in's magic ends with that magic too, and
        // "truncated" is the true cause then.
        Some(Err(err)) => {
            return Err(match diagnose_missing_trailer(file, image_len(file)) {
                truncated @ FormatError::Truncated { .. } => truncated,
                _ => err,
            });
        }
    };

    let trailer_start = file_len - TRAILER_LEN as u64;
    let t = &trailer;
    // The sections are contiguous and in this order; checking the chain pins
    // every offset to the real file length. The signature block, if any,
    // has its one known length (one check: this runs in every stub).
    if !matches!(t.signature_len, 0 | SIGNATURE_LEN)
        || t.payload.start < LEAD_IN_LEN as u64
        || t.payload.end != t.manifest.start
        || t.manifest.end != t.index.start
        || t.index.end.checked_add(t.signature_len) != Some(trailer_start)
    {
        return Err(FormatError::CorruptTrailer(
            "section offsets do not match the file length",
        ));
    }
    if t.manifest.end - t.manifest.start > MAX_MANIFEST_LEN {
        return Err(FormatError::CorruptTrailer("manifest is implausibly large"));
    }
    if t.index.end - t.index.start > MAX_INDEX_LEN {
        return Err(FormatError::CorruptTrailer(
            "file index is implausibly large",
        ));
    }
    let stub_len = t.payload.start - LEAD_IN_LEN as u64;
    match LeadIn::decode(&file[stub_len as usize..t.payload.start as usize]) {
        Some(Ok(lead_in)) if lead_in.bundle_len == file_len => {}
        Some(Ok(_)) => {
            return Err(FormatError::CorruptTrailer(
                "lead-in length disagrees with the trailer",
            ));
        }
        // The trailer's version was read and is ours: a lead-in that
        // says otherwise is damaged, not newer.
        Some(Err(FormatError::UnsupportedVersion { .. })) => {
            return Err(FormatError::CorruptTrailer(
                "lead-in version disagrees with the trailer",
            ));
        }
        Some(Err(err)) => return Err(err),
        None => return Err(FormatError::CorruptTrailer("lead-in is missing")),
    }
    Ok(Layout { stub_len, trailer })
}

/// Explains a file whose last bytes are not a trailer.
fn diagnose_missing_trailer(file: &[u8], stub_image_len: Option<u64>) -> FormatError {
    let file_len = file.len() as u64;
    let Some(stub_len) = stub_image_len else {
        return FormatError::BadMagic;
    };
    if file_len == stub_len {
        return FormatError::NoPayload;
    }
    if file_len < stub_len {
        // Even the executable part is cut short.
        return FormatError::Truncated {
            expected: None,
            actual: file_len,
        };
    }
    let after_stub = &file[stub_len as usize..];
    if after_stub.len() < LEAD_IN_LEN && MAGIC.starts_with(&after_stub[..after_stub.len().min(8)]) {
        return FormatError::Truncated {
            expected: None,
            actual: file_len,
        };
    }
    match LeadIn::decode(after_stub) {
        Some(Ok(lead_in)) if lead_in.bundle_len > file_len => FormatError::Truncated {
            expected: Some(lead_in.bundle_len),
            actual: file_len,
        },
        Some(Ok(lead_in)) if lead_in.bundle_len < file_len => FormatError::TrailingData {
            extra: file_len - lead_in.bundle_len,
        },
        Some(Err(err)) => err,
        // Right length (or no lead-in at all) but no trailer magic.
        Some(Ok(_)) | None => FormatError::BadMagic,
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8-byte slice"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A fake bundle: `stub_len` bytes of stub, then lead-in, payload `p`,
    /// manifest `m`, index `i`, trailer.
    fn fake(stub_len: usize, p: &[u8], m: &[u8], i: &[u8]) -> Vec<u8> {
        let mut out = vec![0xAB; stub_len];
        let total = stub_len + LEAD_IN_LEN + p.len() + m.len() + i.len() + TRAILER_LEN;
        out.extend_from_slice(
            &LeadIn {
                bundle_len: total as u64,
            }
            .encode(),
        );
        let p0 = out.len() as u64;
        out.extend_from_slice(p);
        let m0 = out.len() as u64;
        out.extend_from_slice(m);
        let i0 = out.len() as u64;
        out.extend_from_slice(i);
        let end = out.len() as u64;
        let trailer = Trailer {
            payload: p0..m0,
            manifest: m0..i0,
            index: i0..end,
            payload_sha256: Sha256::digest(p).into(),
            manifest_sha256: crate::checksum::record_sha256(m),
            signature_len: 0,
        };
        out.extend_from_slice(&trailer.encode());
        assert_eq!(out.len(), total);
        out
    }

    #[test]
    fn trailer_round_trips() {
        let t = Trailer {
            payload: 100..200,
            manifest: 200..210,
            index: 210..260,
            payload_sha256: [1; 32],
            manifest_sha256: [2; 32],
            signature_len: 0,
        };
        let bytes = t.encode();
        assert_eq!(&bytes[152..], b"\x7fSYDBNDL");
        assert_eq!(Trailer::decode(&bytes).unwrap(), t);
    }

    #[test]
    fn trailer_byte_literal_decodes() {
        // A trailer written out by hand, field by field.
        let mut b = [0u8; TRAILER_LEN];
        b[0] = 40; // payload offset 40
        b[8] = 3; // payload len 3
        b[16] = 43; // manifest offset
        b[24] = 2; // manifest len
        b[32] = 45; // index offset
        b[40] = 1; // index len
        b[144] = 160; // trailer length
        b[148] = 3; // format version
        b[152..160].copy_from_slice(b"\x7fSYDBNDL");
        let check = trailer_check(&b);
        b[136..144].copy_from_slice(&check);
        let t = Trailer::decode(&b).unwrap();
        assert_eq!(t.payload, 40..43);
        assert_eq!(t.manifest, 43..45);
        assert_eq!(t.index, 45..46);
    }

    #[test]
    fn locate_finds_sections() {
        let file = fake(64, b"payload", b"man", b"idx");
        let layout = locate_with(&file, |_| Some(64)).unwrap();
        assert_eq!(layout.stub_len, 64);
        assert_eq!(layout.payload_bytes(&file), b"payload");
        assert_eq!(layout.manifest_bytes(&file), b"man");
        assert_eq!(layout.index_bytes(&file), b"idx");
    }

    #[test]
    fn stripped_and_truncated_files_are_told_apart() {
        let file = fake(64, b"payload-bytes-here", b"man", b"idx");
        // Stripped: only the stub image is left.
        assert!(matches!(
            locate_with(&file[..64], |_| Some(64)),
            Err(FormatError::NoPayload)
        ));
        // Truncated anywhere after the lead-in: the lead-in gives the real length.
        for cut in [96usize, 100, file.len() - 1] {
            match locate_with(&file[..cut], |_| Some(64)) {
                Err(FormatError::Truncated { expected, actual }) => {
                    assert_eq!(expected, Some(file.len() as u64));
                    assert_eq!(actual, cut as u64);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // Truncated inside the stub itself, or inside the lead-in.
        for cut in [10, 65, 70] {
            assert!(matches!(
                locate_with(&file[..cut], |_| Some(64)),
                Err(FormatError::Truncated { expected: None, .. })
            ));
        }
        // Cut right after the lead-in's magic, with a stub long enough to
        // be read as a trailer: the file then ends in the magic, and the
        // "trailer" is stub bytes (issue 20: reported as a newer version).
        let long = fake(400, b"payload-bytes-here", b"man", b"idx");
        for cut in [400 + 8, 400 + 12] {
            assert!(
                matches!(
                    locate_with(&long[..cut], |_| Some(400)),
                    Err(FormatError::Truncated { .. })
                ),
                "cut at {cut}: {:?}",
                locate_with(&long[..cut], |_| Some(400))
            );
        }
        // Without a known stub length the best we can say is "bad magic".
        assert!(matches!(
            locate_with(&file[..100], |_| None),
            Err(FormatError::BadMagic)
        ));
    }

    #[test]
    fn a_damaged_lead_in_version_is_corruption_not_a_newer_format() {
        let mut file = fake(64, b"payload", b"man", b"idx");
        file[64 + 8] ^= 1; // the lead-in's version: 1 becomes 0
        assert!(matches!(
            locate_with(&file, |_| Some(64)),
            Err(FormatError::CorruptTrailer(_))
        ));
    }

    #[test]
    fn appended_bytes_are_reported() {
        let mut file = fake(64, b"payload", b"man", b"idx");
        file.extend_from_slice(b"junk");
        assert!(matches!(
            locate_with(&file, |_| Some(64)),
            Err(FormatError::TrailingData { extra: 4 })
        ));
    }

    #[test]
    fn every_single_byte_flip_in_the_tail_is_caught() {
        let file = fake(64, b"payload", b"man", b"idx");
        let lead_in_start = 64;
        for at in lead_in_start..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x01;
            let result = locate_with(&bad, |_| Some(64));
            let in_sections = (64 + LEAD_IN_LEN..file.len() - TRAILER_LEN).contains(&at);
            let in_digests =
                (file.len() - TRAILER_LEN + 48..file.len() - TRAILER_LEN + 112).contains(&at);
            if in_sections {
                // Section bytes are covered by digests, checked later.
                assert!(result.is_ok(), "flip at {at}");
            } else if in_digests {
                // Digest fields are covered by the trailer check.
                assert!(
                    matches!(result, Err(FormatError::CorruptTrailer(_))),
                    "flip at {at}: {result:?}"
                );
            } else {
                assert!(result.is_err(), "flip at {at} went unnoticed");
            }
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut file = fake(64, b"p", b"m", b"i");
        let n = file.len();
        file[n - 12] = 4;
        assert!(matches!(
            locate_with(&file, |_| Some(64)),
            Err(FormatError::UnsupportedVersion {
                found: 4,
                supported: 3
            })
        ));
    }

    #[test]
    fn tiny_and_empty_inputs_do_not_panic() {
        for len in 0..200 {
            let file = vec![0u8; len];
            assert!(locate_with(&file, |_| Some(0)).is_err());
            assert!(locate_with(&file, |_| None).is_err());
        }
    }

    #[test]
    fn offsets_pointing_outside_the_file_are_refused() {
        let file = fake(64, b"payload", b"man", b"idx");
        let n = file.len();
        let mut t = Trailer::decode(file[n - TRAILER_LEN..].try_into().unwrap()).unwrap();
        for (name, tweak) in [
            ("huge", u64::MAX - 10),
            ("past end", n as u64 + 5),
            ("zero", 0),
        ] {
            t.payload.start = tweak;
            let mut bad = file.clone();
            bad[n - TRAILER_LEN..].copy_from_slice(&t.encode_lenient());
            assert!(locate_with(&bad, |_| Some(64)).is_err(), "{name}");
        }
    }

    impl Trailer {
        /// Like `encode`, but tolerates start > end (for hostile tests).
        fn encode_lenient(&self) -> [u8; TRAILER_LEN] {
            let mut fixed = self.clone();
            if fixed.payload.end < fixed.payload.start {
                fixed.payload.end = fixed.payload.start;
            }
            fixed.encode()
        }
    }
}
