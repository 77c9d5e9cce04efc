//! The stubs a bundle can start with, one per payload codec.
//!
//! The `sydney-pack` binary carries them (feature `embed`: build.rs finds
//! the prebuilt static stubs, `include_bytes!` puts them in), so it needs no
//! other file at run time. Library callers that build stubs themselves
//! (`cargo xtask pack`) pass the bytes instead.

/// The stub embedded for `codec`.
#[cfg(feature = "embed")]
pub fn embedded(codec: bundle_format::Codec) -> &'static [u8] {
    match codec {
        bundle_format::Codec::Gzip => include_bytes!(env!("SYDNEY_PACK_STUB_GZIP")),
        bundle_format::Codec::Zstd => include_bytes!(env!("SYDNEY_PACK_STUB_ZSTD")),
    }
}

/// The embedded stub of signed bundles for `codec`: its decoder and the
/// signature checks (`SYDNEY_BUNDLE_TRUSTED_KEYS`, `verify`).
#[cfg(feature = "embed")]
pub fn embedded_signed(codec: bundle_format::Codec) -> &'static [u8] {
    match codec {
        bundle_format::Codec::Gzip => include_bytes!(env!("SYDNEY_PACK_STUB_GZIP_SIGNED")),
        bundle_format::Codec::Zstd => include_bytes!(env!("SYDNEY_PACK_STUB_ZSTD_SIGNED")),
    }
}

/// Checks that `stub` can check signatures (built with the stub's feature
/// `signatures`): a signed bundle behind a stub without them could not
/// honour `SYDNEY_BUNDLE_TRUSTED_KEYS`. The test is the signed statement's
/// domain string, which only that code holds.
pub fn check_signing(stub: &[u8], origin: &str) -> crate::Result<()> {
    let domain = bundle_format::signature::STATEMENT_DOMAIN;
    if stub.windows(domain.len()).any(|window| window == domain) {
        Ok(())
    } else {
        Err(crate::Error::Stub(format!(
            "{origin} cannot check signatures, so it cannot start a signed bundle; leave out \
             --stub (the embedded stub of signed bundles is used), or pass \
             bundle-stub-CODEC-signed from `cargo xtask stubs`"
        )))
    }
}

/// One line on the embedded stubs (sizes), for `--version`.
#[cfg(feature = "embed")]
pub const SUMMARY: &str = env!("SYDNEY_PACK_STUBS_SUMMARY");

/// Checks that `stub` looks like a stub (an ELF executable), so a wrong
/// `--stub` file fails before a useless bundle is written.
pub fn check(stub: &[u8], origin: &str) -> crate::Result<()> {
    if stub.starts_with(b"\x7fELF") {
        Ok(())
    } else {
        Err(crate::Error::Stub(format!(
            "{origin} is not a stub (not an ELF executable); pass a bundle-stub file built by \
             `cargo xtask stubs`"
        )))
    }
}
