//! SHA-256, the crate's two ways: [`record_sha256`] for the small records
//! every start reads (the trailer and the manifest), and
//! [`content_sha256`] / [`file_sha256`] for payload files, compared with
//! the file index (`verify --deep`).
//!
//! The records' hash is portable code on purpose. `sha2`, kept for payloads (where SHA-NI pays),
//! chooses its implementation at run time with CPUID, and on a virtual
//! machine each CPUID traps to the hypervisor, which costs more than
//! hashing a few hundred bytes without it. A warm start hashes nothing
//! else, so it never pays for the detection
//! (docs/decisions/0003-two-sha256.md).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// SHA-256 of `bytes`; meant for records of a few KB at most.
pub fn record_sha256(bytes: &[u8]) -> [u8; 32] {
    hmac_sha256::Hash::hash(bytes)
}

/// SHA-256 of a payload file's contents, as the file index records it
/// (with `sha2`, which uses SHA-NI where the CPU has it).
pub fn content_sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// [`content_sha256`] of the file at `path`, read in fixed-size pieces.
pub fn file_sha256(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hasher.finalize().into()),
            n => hasher.update(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_sha2_across_block_boundaries() {
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4999] {
            assert_eq!(
                record_sha256(&bytes[..len])[..],
                Sha256::digest(&bytes[..len])[..],
                "length {len}"
            );
        }
    }

    #[test]
    fn known_answer() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            crate::text::hex(&record_sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn file_and_content_digests_agree_with_the_record_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Longer than one read, so the pieces are joined correctly.
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(file_sha256(&path).unwrap(), record_sha256(&bytes));
        assert_eq!(content_sha256(&bytes), record_sha256(&bytes));
        assert_eq!(
            file_sha256(&dir.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
