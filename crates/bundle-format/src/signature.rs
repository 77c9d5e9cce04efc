//! Signed bundles: the signature block, the statement it signs, and keys.
//!
//! A signed bundle carries a signature block of [`SIGNATURE_LEN`] bytes
//! between the file index and the trailer; the trailer's `signature_len`
//! field is then [`SIGNATURE_LEN`] (0 in an unsigned bundle):
//!
//! ```text
//! 0..8     magic  b"SYDSIG\0\x01"
//! 8..40    the signer's ed25519 public key
//! 40..72   SHA-256 of the stub (the file's first stub_len bytes)
//! 72..136  ed25519 signature of the statement below
//! ```
//!
//! The signed statement ([`statement`], [`STATEMENT_LEN`] bytes) is
//!
//! ```text
//! "sydney-bundle signed bundle v1\n" || stub SHA-256 || lead-in (32 bytes) || trailer (160 bytes)
//! ```
//!
//! so it covers every byte the stub trusts: the stub (by its digest), the
//! lead-in and trailer (byte for byte: section offsets, the payload and
//! manifest digests, the signature length, the format version), the payload
//! and manifest (by the trailer's digests) and the file index (by the
//! manifest's digest). Only the signature block is outside it, and its
//! public key is bound by ed25519 itself.
//!
//! Checking costs differ: [`Bundle::signer`](crate::Bundle::signer) hashes
//! the stub again (what a trusted checker does: `verify`, `inspect`,
//! `upgrade`); [`Bundle::signer_at_start`](crate::Bundle::signer_at_start)
//! trusts the recorded stub digest, because a running stub checking its
//! own bytes proves nothing a replaced stub could not fake by skipping the
//! check. The payload digest is checked where the payload is read, as for
//! unsigned bundles ([`Bundle::verify_payload`](crate::Bundle::verify_payload)).
//!
//! Keys (docs/decisions/0080-bundle-signatures.md): a public key is written
//! `sydney-ed25519:` and 64 hex digits; its [`KeyId`] is the first 8 bytes
//! of its SHA-256. A secret key file holds `sydney-ed25519-secret:` and the
//! 32-byte seed in hex ([`SecretKey`], feature `pack`).

use std::fmt;

use crate::error::{FormatError, Result};
use crate::layout::{LEAD_IN_LEN, TRAILER_LEN};

/// Length of the signature block.
pub const SIGNATURE_LEN: usize = 136;
/// Marks the start of a signature block.
pub const SIGNATURE_MAGIC: [u8; 8] = *b"SYDSIG\0\x01";
/// Domain separation: the statement's first bytes, so that a signature
/// made for anything else never verifies as a bundle signature.
pub const STATEMENT_DOMAIN: &[u8] = b"sydney-bundle signed bundle v1\n";
/// Length of the signed statement.
pub const STATEMENT_LEN: usize = STATEMENT_DOMAIN.len() + 32 + LEAD_IN_LEN + TRAILER_LEN;
/// How a public key is written: this prefix, then 64 hex digits.
pub const PUBLIC_KEY_PREFIX: &str = "sydney-ed25519:";
/// How a secret key file starts: this prefix, then 64 hex digits.
pub const SECRET_KEY_PREFIX: &str = "sydney-ed25519-secret:";
/// The environment variable that pins the keys a bundle must be signed by.
pub const TRUSTED_KEYS_VAR: &str = "SYDNEY_BUNDLE_TRUSTED_KEYS";

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// The short name of a public key: the first 8 bytes of its SHA-256, shown
/// as 16 upper-case hex digits. For display; trust compares whole keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl PublicKey {
    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        let digest = crate::checksum::record_sha256(&self.0);
        KeyId(digest[..8].try_into().expect("8-byte slice"))
    }

    /// Parses `sydney-ed25519:HEX` (surrounding white space allowed).
    pub fn parse(text: &str) -> std::result::Result<PublicKey, String> {
        let text = text.trim();
        let hex = text.strip_prefix(PUBLIC_KEY_PREFIX).ok_or_else(|| {
            format!(
                "{:?} is not a public key (they look like {PUBLIC_KEY_PREFIX}<64 hex digits>, \
                 the contents of a .pub file from sydney-pack keygen)",
                shorten(text)
            )
        })?;
        parse_hex32(hex)
            .map(PublicKey)
            .ok_or_else(|| format!("the public key {:?} is not 64 hex digits", shorten(text)))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", crate::text::hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::hex(&self.0).to_ascii_uppercase())
    }
}

/// Parses a list of public keys separated by commas and/or white space
/// (the format of [`TRUSTED_KEYS_VAR`]). An empty list is an error: a
/// variable set to nothing (`$(cat missing.pub)`) must not mean "trust
/// nothing in particular" silently.
pub fn parse_key_list(text: &str) -> std::result::Result<Vec<PublicKey>, String> {
    let keys = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(PublicKey::parse)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err("it lists no keys".to_owned());
    }
    Ok(keys)
}

/// A decoded signature block (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureBlock {
    /// Who signed, by their own account (the signature proves it).
    pub public_key: PublicKey,
    /// The stub's SHA-256 as signed.
    pub stub_sha256: [u8; 32],
    /// The ed25519 signature of the [`statement`].
    pub signature: [u8; 64],
}

impl SignatureBlock {
    /// Encodes the block.
    pub fn encode(&self) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out[0..8].copy_from_slice(&SIGNATURE_MAGIC);
        out[8..40].copy_from_slice(&self.public_key.0);
        out[40..72].copy_from_slice(&self.stub_sha256);
        out[72..136].copy_from_slice(&self.signature);
        out
    }

    /// Decodes a block of exactly [`SIGNATURE_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<SignatureBlock> {
        let bytes: &[u8; SIGNATURE_LEN] = bytes
            .try_into()
            .map_err(|_| FormatError::BadSignature("the signature block has the wrong length"))?;
        if bytes[0..8] != SIGNATURE_MAGIC {
            return Err(FormatError::BadSignature(
                "the signature block's magic is damaged",
            ));
        }
        Ok(SignatureBlock {
            public_key: PublicKey(bytes[8..40].try_into().expect("32-byte slice")),
            stub_sha256: bytes[40..72].try_into().expect("32-byte slice"),
            signature: bytes[72..136].try_into().expect("64-byte slice"),
        })
    }
}

/// The signed statement: the domain, the stub's digest, the lead-in and
/// the trailer, byte for byte.
pub fn statement(
    stub_sha256: &[u8; 32],
    lead_in: &[u8; LEAD_IN_LEN],
    trailer: &[u8; TRAILER_LEN],
) -> [u8; STATEMENT_LEN] {
    let mut out = [0u8; STATEMENT_LEN];
    let mut at = 0;
    for part in [STATEMENT_DOMAIN, stub_sha256, lead_in, trailer] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    out
}

/// Checks `signature` of `statement` by `key`.
#[cfg(feature = "signatures")]
pub fn verify(key: &PublicKey, statement: &[u8], signature: &[u8; 64]) -> Result<()> {
    let key = ed25519_compact::PublicKey::new(key.0);
    let signature = ed25519_compact::Signature::new(*signature);
    key.verify(statement, &signature).map_err(|_| {
        FormatError::BadSignature("the signature does not match the bundle's contents")
    })
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *byte = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
    }
    Some(out)
}

/// The first characters of a bad key, for an error message that must not
/// echo a whole secret pasted by mistake.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(24) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(feature = "pack")]
pub use signing::{SecretKey, sign_file};

#[cfg(feature = "pack")]
mod signing {
    use std::fs::File;
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    use sha2::{Digest, Sha256};

    use super::{PublicKey, shorten};
    use super::{SECRET_KEY_PREFIX, SIGNATURE_LEN, SignatureBlock, parse_hex32, statement};
    use crate::error::{FormatError, Result};
    use crate::layout::{LEAD_IN_LEN, LeadIn, TRAILER_LEN, Trailer};

    /// An ed25519 secret key (its 32-byte seed).
    pub struct SecretKey {
        seed: [u8; 32],
    }

    impl std::fmt::Debug for SecretKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SecretKey({})", self.public_key().key_id())
        }
    }

    impl SecretKey {
        /// A new random key (from the operating system's generator).
        pub fn generate() -> SecretKey {
            SecretKey {
                seed: *ed25519_compact::Seed::generate(),
            }
        }

        /// Parses a secret key file's text (`sydney-ed25519-secret:HEX`).
        pub fn parse(text: &str) -> std::result::Result<SecretKey, String> {
            let text = text.trim();
            let hex = text.strip_prefix(SECRET_KEY_PREFIX).ok_or_else(|| {
                if text.starts_with(super::PUBLIC_KEY_PREFIX) {
                    "this is a public key; sign with the secret key file (the one without .pub)"
                        .to_owned()
                } else {
                    format!(
                        "{:?} is not a secret key file (made by sydney-pack keygen)",
                        shorten(text)
                    )
                }
            })?;
            parse_hex32(hex)
                .map(|seed| SecretKey { seed })
                .ok_or_else(|| "the secret key is not 64 hex digits".to_owned())
        }

        /// The text of a secret key file.
        pub fn to_file_text(&self) -> String {
            format!("{SECRET_KEY_PREFIX}{}\n", crate::text::hex(&self.seed))
        }

        fn pair(&self) -> ed25519_compact::KeyPair {
            ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(self.seed))
        }

        /// The matching public key.
        pub fn public_key(&self) -> PublicKey {
            PublicKey(*self.pair().pk)
        }

        /// Signs `message` (deterministic ed25519, RFC 8032).
        pub fn sign(&self, message: &[u8]) -> [u8; 64] {
            *self.pair().sk.sign(message, None)
        }
    }

    /// Signs the unsigned bundle held in `file` in place: inserts the
    /// signature block before the trailer and rewrites the lead-in and
    /// trailer for the new length. Returns the signer's public key.
    pub fn sign_file(file: &File, key: &SecretKey) -> Result<PublicKey> {
        let io = |err| FormatError::io("cannot sign", "the output file", err);
        let len = file.metadata().map_err(io)?.len();
        let trailer_start = len
            .checked_sub(TRAILER_LEN as u64)
            .ok_or(FormatError::BadMagic)?;
        let mut tail = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut tail, trailer_start).map_err(io)?;
        let mut trailer = Trailer::decode(&tail)?;
        if trailer.signature_len != 0 {
            return Err(FormatError::BadSignature("the bundle is already signed"));
        }
        let stub_len = trailer.payload.start - LEAD_IN_LEN as u64;
        let mut hasher = Sha256::new();
        let mut reader = ReadAt {
            file,
            pos: 0,
            end: stub_len,
        };
        std::io::copy(&mut reader, &mut HashSink(&mut hasher)).map_err(io)?;
        let stub_sha256: [u8; 32] = hasher.finalize().into();

        trailer.signature_len = SIGNATURE_LEN as u64;
        let trailer_bytes = trailer.encode();
        let lead_in = LeadIn {
            bundle_len: len + SIGNATURE_LEN as u64,
        }
        .encode();
        let block = SignatureBlock {
            public_key: key.public_key(),
            stub_sha256,
            signature: key.sign(&statement(&stub_sha256, &lead_in, &trailer_bytes)),
        };
        file.write_all_at(&block.encode(), trailer_start)
            .and_then(|()| file.write_all_at(&trailer_bytes, trailer_start + SIGNATURE_LEN as u64))
            .and_then(|()| file.write_all_at(&lead_in, stub_len))
            .map_err(io)?;
        Ok(block.public_key)
    }

    /// Reads `file` from `pos` to `end` with positioned reads.
    struct ReadAt<'f> {
        file: &'f File,
        pos: u64,
        end: u64,
    }

    impl Read for ReadAt<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let want = buf.len().min((self.end - self.pos) as usize);
            if want == 0 {
                return Ok(0);
            }
            let n = self.file.read_at(&mut buf[..want], self.pos)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.pos += n as u64;
            Ok(n)
        }
    }

    struct HashSink<'h>(&'h mut Sha256);

    impl std::io::Write for HashSink<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
