//! The stubs a bundle can start with, one per architecture, payload codec
//! and whether the bundle is signed.
//!
//! The `sydney-pack` binary carries them (feature `embed`: build.rs finds
//! the prebuilt static stubs, `include_bytes!` puts them in), so it needs no
//! other file at run time. Library callers that build stubs themselves
//! (`cargo xtask pack`) pass the bytes instead.

/// The stub embedded for `arch` and `codec`; for a signed bundle, the stub
/// of signed bundles, which also carries the signature checks
/// (`SYDNEY_BUNDLE_TRUSTED_KEYS`, `verify`; docs/decisions/0081).
#[cfg(feature = "embed")]
pub fn embedded(
    arch: bundle_format::elf::Arch,
    codec: bundle_format::Codec,
    signed: bool,
) -> &'static [u8] {
    use bundle_format::Codec::{Gzip, Zstd};
    use bundle_format::elf::Arch::{Aarch64, X86_64};
    match (arch, codec, signed) {
        (X86_64, Gzip, false) => include_bytes!(env!("SYDNEY_PACK_STUB_GZIP")),
        (X86_64, Zstd, false) => include_bytes!(env!("SYDNEY_PACK_STUB_ZSTD")),
        (X86_64, Gzip, true) => include_bytes!(env!("SYDNEY_PACK_STUB_GZIP_SIGNED")),
        (X86_64, Zstd, true) => include_bytes!(env!("SYDNEY_PACK_STUB_ZSTD_SIGNED")),
        (Aarch64, Gzip, false) => include_bytes!(env!("SYDNEY_PACK_STUB_AARCH64_GZIP")),
        (Aarch64, Zstd, false) => include_bytes!(env!("SYDNEY_PACK_STUB_AARCH64_ZSTD")),
        (Aarch64, Gzip, true) => include_bytes!(env!("SYDNEY_PACK_STUB_AARCH64_GZIP_SIGNED")),
        (Aarch64, Zstd, true) => include_bytes!(env!("SYDNEY_PACK_STUB_AARCH64_ZSTD_SIGNED")),
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

/// Checks that the stub `stub` (from `origin`) runs on `arch`, where the
/// payload's programs run.
pub fn check_arch(stub: &[u8], origin: &str, arch: bundle_format::elf::Arch) -> crate::Result<()> {
    match crate::arch::of_stub(stub) {
        Some(found) if found == arch => Ok(()),
        found => Err(crate::Error::Arch(format!(
            "{origin} is a stub for {}, but the bundle is for {arch}; pass a stub for {arch}, \
             or --target {} to pack for the stub's architecture",
            found.map_or("an unknown architecture", |a| a.name()),
            found.map_or("...", |a| a.name()),
        ))),
    }
}
