//! Payload decoders (always) and encoders (with the `pack` feature).
//!
//! A stub is built with only the decoder it needs: a gzip stub does not carry
//! the zstd library, nor a zstd stub the gzip decoders (their sizes:
//! docs/BENCHMARKS.md, "Size").

use std::io::{BufRead, Read};

use crate::error::{FormatError, Result};
use crate::manifest::Codec;

/// Largest zstd window the decoder accepts (2^24 = 16 MiB). Our packer uses
/// level 19 at most, whose window is 8 MiB, so this bounds decoder memory on
/// any input without refusing anything we write.
pub const ZSTD_MAX_WINDOW_LOG: u32 = 24;

/// Tar streams up to this size are inflated in one call into one buffer
/// (gzip only) instead of streamed: libdeflate does that much faster than
/// the streaming decoder, and inflating is the biggest part of a cold start
/// (docs/decisions/0006-libdeflate-small-gzip.md). The buffer is bounded by
/// this limit, whatever the payload size, so memory use still does not
/// grow with the payload.
pub const WHOLE_BUFFER_LIMIT: u64 = 4 << 20;

/// Inflates a small payload whole: `Some(tar)` when the codec and
/// `tar_len` (from the manifest) allow it, `None` to stream instead.
pub fn decode_whole(codec: Codec, payload: &[u8], tar_len: u64) -> Result<Option<Vec<u8>>> {
    match codec {
        #[cfg(feature = "gzip")]
        Codec::Gzip if tar_len <= WHOLE_BUFFER_LIMIT => {
            let mut tar = vec![0u8; tar_len as usize];
            let n = libdeflater::Decompressor::new()
                .gzip_decompress(payload, &mut tar)
                .map_err(|err| FormatError::CorruptPayload(format!("gzip: {err}")))?;
            if n as u64 != tar_len {
                return Err(FormatError::CorruptPayload(format!(
                    "the payload inflates to {n} bytes, not the {tar_len} the manifest says"
                )));
            }
            Ok(Some(tar))
        }
        _ => {
            let _ = (payload, tar_len);
            Ok(None)
        }
    }
}

/// A streaming decoder over the payload bytes.
pub fn decoder<'a>(
    codec: Codec,
    payload: impl BufRead + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>> {
    match codec {
        #[cfg(feature = "gzip")]
        Codec::Gzip => Ok(Box::new(gzip_body(payload)?)),
        #[cfg(feature = "zstd")]
        Codec::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(|err| FormatError::CorruptPayload(err.to_string()))?;
            decoder
                .window_log_max(ZSTD_MAX_WINDOW_LOG)
                .map_err(|err| FormatError::CorruptPayload(err.to_string()))?;
            Ok(Box::new(decoder))
        }
        #[allow(unreachable_patterns)]
        other => {
            drop(payload);
            Err(FormatError::CodecUnavailable(other.name()))
        }
    }
}

/// The deflate stream of the one gzip member our packer writes, after its
/// fixed 10-byte header (no optional fields: docs/FORMAT.md). The member's
/// CRC-32 trailer is not checked: the payload's SHA-256 covers every byte,
/// and leaving it out keeps flate2's second CRC-32 table out of the stub
/// (docs/decisions/0070-no-panic-locations.md, "Consequences").
#[cfg(feature = "gzip")]
fn gzip_body<'a>(
    mut payload: impl BufRead + Send + 'a,
) -> Result<flate2::bufread::DeflateDecoder<impl BufRead + Send + 'a>> {
    /// ID1, ID2, CM (deflate), FLG (no FTEXT, FHCRC, FEXTRA, FNAME, FCOMMENT).
    const EXPECTED: [u8; 4] = [0x1f, 0x8b, 8, 0];
    let mut header = [0u8; 10];
    payload
        .read_exact(&mut header)
        .map_err(|err| FormatError::CorruptPayload(format!("gzip header: {err}")))?;
    if header[..4] != EXPECTED {
        return Err(FormatError::CorruptPayload(format!(
            "gzip header {:02x?} is not the one the packer writes (one member, no optional fields)",
            &header[..4]
        )));
    }
    Ok(flate2::bufread::DeflateDecoder::new(payload))
}

/// The codecs this build can decode.
pub fn available() -> &'static [Codec] {
    &[
        #[cfg(feature = "gzip")]
        Codec::Gzip,
        #[cfg(feature = "zstd")]
        Codec::Zstd,
    ]
}

#[cfg(feature = "pack")]
pub use encode::{
    Encoder, ZSTD_MAX_LEVEL_INPUT, ZSTD_WINDOW_LOG, default_level, default_level_for, max_level,
};

#[cfg(feature = "pack")]
mod encode {
    use std::io::{self, Write};

    use crate::manifest::Codec;

    /// The default compression level: the best ratio that still decodes at
    /// full speed (gzip 9, zstd 19).
    pub fn default_level(codec: Codec) -> u32 {
        match codec {
            Codec::Gzip => 9,
            Codec::Zstd => 19,
        }
    }

    /// Inputs larger than this get a faster zstd level by default: at level
    /// 19 packing a large release takes minutes for a few percent of size
    /// (docs/BENCHMARKS.md, "Large payloads").
    pub const ZSTD_MAX_LEVEL_INPUT: u64 = 64 << 20;

    /// The default level for `input_bytes` of file data: [`default_level`],
    /// except zstd 9 above [`ZSTD_MAX_LEVEL_INPUT`].
    pub fn default_level_for(codec: Codec, input_bytes: u64) -> u32 {
        match codec {
            Codec::Zstd if input_bytes > ZSTD_MAX_LEVEL_INPUT => 9,
            _ => default_level(codec),
        }
    }

    /// The window the zstd encoder uses (2^22 = 4 MiB): it bounds the
    /// stub's decoder memory at any payload size, whatever the level.
    pub const ZSTD_WINDOW_LOG: u32 = 22;

    /// The highest level accepted. zstd stops at 19: the "ultra" levels need
    /// windows larger than the stub's decoder accepts.
    pub fn max_level(codec: Codec) -> u32 {
        match codec {
            Codec::Gzip => 9,
            Codec::Zstd => 19,
        }
    }

    /// A streaming encoder writing into `W`.
    #[allow(missing_debug_implementations)]
    pub enum Encoder<W: Write> {
        /// gzip with an empty header: no file name, no time, OS "unknown",
        /// so the output depends only on the input.
        Gzip(flate2::write::GzEncoder<W>),
        /// zstd, single-threaded (multi-threaded output would depend on the
        /// machine), with the content checksum off (we hash the payload).
        Zstd(zstd::stream::write::Encoder<'static, W>),
    }

    impl<W: Write> Encoder<W> {
        /// Starts an encoder at `level` (clamped to the codec's range).
        pub fn new(codec: Codec, level: u32, out: W) -> io::Result<Self> {
            let level = level.clamp(1, max_level(codec));
            Ok(match codec {
                Codec::Gzip => Encoder::Gzip(
                    flate2::GzBuilder::new()
                        .operating_system(255)
                        .mtime(0)
                        .write(out, flate2::Compression::new(level)),
                ),
                Codec::Zstd => {
                    let mut encoder = zstd::stream::write::Encoder::new(out, level as i32)?;
                    encoder.include_checksum(false)?;
                    encoder.window_log(ZSTD_WINDOW_LOG)?;
                    encoder.include_contentsize(false)?;
                    Encoder::Zstd(encoder)
                }
            })
        }

        /// Flushes the last block and returns the inner writer.
        pub fn finish(self) -> io::Result<W> {
            match self {
                Encoder::Gzip(e) => e.finish(),
                Encoder::Zstd(e) => e.finish(),
            }
        }
    }

    impl<W: Write> Write for Encoder<W> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self {
                Encoder::Gzip(e) => e.write(buf),
                Encoder::Zstd(e) => e.write(buf),
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            match self {
                Encoder::Gzip(e) => e.flush(),
                Encoder::Zstd(e) => e.flush(),
            }
        }
    }
}

#[cfg(all(test, feature = "pack"))]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = Encoder::new(Codec::Gzip, 9, Vec::new()).unwrap();
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn the_streaming_gzip_decoder_reads_what_the_packer_writes() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut out = Vec::new();
        decoder(Codec::Gzip, &gzip(&data)[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == data, "round trip differs");
    }

    #[test]
    fn a_gzip_header_the_packer_never_writes_is_refused() {
        let mut member = gzip(b"hello");
        member[3] = 0x08; // FNAME
        let err = decoder(Codec::Gzip, &member[..]).err().unwrap();
        assert!(matches!(err, FormatError::CorruptPayload(_)), "{err}");
        let err = decoder(Codec::Gzip, &member[..5]).err().unwrap();
        assert!(matches!(err, FormatError::CorruptPayload(_)), "{err}");
    }
}
