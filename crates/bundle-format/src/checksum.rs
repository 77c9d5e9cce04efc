//! SHA-256 of the small records every start reads: the trailer and the
//! manifest.
//!
//! Portable code on purpose. `sha2`, kept for payloads (where SHA-NI pays),
//! chooses its implementation at run time with CPUID, and on a virtual
//! machine each CPUID traps to the hypervisor, which costs more than
//! hashing a few hundred bytes without it. A warm start hashes nothing
//! else, so it never pays for the detection
//! (docs/decisions/0003-two-sha256.md).

/// SHA-256 of `bytes`; meant for records of a few KB at most.
pub fn record_sha256(bytes: &[u8]) -> [u8; 32] {
    hmac_sha256::Hash::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

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
}
