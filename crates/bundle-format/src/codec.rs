//! Payload decoders (always) and encoders (with the `pack` feature).
//!
//! A stub is built with only the decoder it needs: a gzip stub does not carry
//! the zstd library, which would cost about 150 KB in every bundle.

use std::io::{BufRead, Read};

use crate::error::{FormatError, Result};
use crate::manifest::Codec;

/// Largest zstd window the decoder accepts (2^24 = 16 MiB). Our packer uses
/// level 19 at most, whose window is 8 MiB, so this bounds decoder memory on
/// any input without refusing anything we write.
pub const ZSTD_MAX_WINDOW_LOG: u32 = 24;

/// A streaming decoder over the payload bytes.
pub fn decoder<'a>(codec: Codec, payload: impl BufRead + 'a) -> Result<Box<dyn Read + 'a>> {
    match codec {
        #[cfg(feature = "gzip")]
        Codec::Gzip => Ok(Box::new(flate2::bufread::GzDecoder::new(payload))),
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
pub use encode::{Encoder, default_level, max_level};

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
