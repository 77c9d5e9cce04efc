//! Signed bundles in the stub: `SYDNEY_BUNDLE_TRUSTED_KEYS` before the
//! payload runs, and the signer line of `verify` and `inspect`.
//!
//! Only the stub of signed bundles (feature `signatures`, the packer's
//! `bundle-stub-CODEC-signed`) can check a signature. The default stubs carry no
//! ed25519 code (the bundle's size budget): with the variable set they
//! refuse to run, since a bundle they start is unsigned by construction
//! (docs/decisions/0081-verifier-only-in-the-signed-stub.md).
//!
//! What this check is worth: it protects an operator who pins keys against
//! a bundle file replaced by one that is unsigned, foreign or altered *and*
//! still runs this check. A malicious replacement can carry a stub that
//! simply skips it; the checks that hold against that are made by
//! something already trusted (`upgrade` of the running bundle,
//! `sydney-pack verify`/`inspect`). See README, "Signed bundles".

use anyhow::Result;
use bundle_format::Bundle;
use bundle_format::signature::TRUSTED_KEYS_VAR;

#[cfg(not(feature = "signatures"))]
use crate::exit::{Exit, coded};

/// Fails unless `SYDNEY_BUNDLE_TRUSTED_KEYS` is unset or `bundle` is
/// signed by one of its keys. Exit 26 (untrusted) or 27 (bad signature).
pub fn check_at_start(bundle: &Bundle<'_>) -> Result<()> {
    match std::env::var_os(TRUSTED_KEYS_VAR) {
        None => Ok(()),
        Some(value) => require(bundle, &value),
    }
}

#[cfg(feature = "signatures")]
fn require(bundle: &Bundle<'_>, value: &std::ffi::OsStr) -> Result<()> {
    use crate::exit::{Exit, coded};
    let keys = value
        .to_str()
        .ok_or_else(|| "it is not valid UTF-8".to_owned())
        .and_then(bundle_format::signature::parse_key_list)
        .map_err(|why| {
            coded(
                Exit::Untrusted,
                format!(
                    "{TRUSTED_KEYS_VAR} cannot be used: {why}; set it to public keys \
                     (sydney-ed25519:...) separated by commas or spaces, or unset it"
                ),
            )
        })?;
    bundle.require_signer(&keys, false)?;
    Ok(())
}

#[cfg(not(feature = "signatures"))]
fn require(_bundle: &Bundle<'_>, _value: &std::ffi::OsStr) -> Result<()> {
    // A constant message: this code is in every default bundle, whose size
    // budget has no room for formatting (decision 0081). A bundle behind
    // this stub is unsigned: `sydney-pack --sign` uses the signing stub.
    Err(coded(
        Exit::Untrusted,
        "this bundle is unsigned (its stub has no signature checks) and \
         SYDNEY_BUNDLE_TRUSTED_KEYS requires a signature by one of its keys; pack it with \
         `sydney-pack --sign KEY`, or unset SYDNEY_BUNDLE_TRUSTED_KEYS",
    ))
}

/// The signer line of `verify` and `inspect`: `key ID`, `unsigned`. A
/// signature that does not match fails (exit 27).
#[cfg(feature = "signatures")]
pub fn describe(bundle: &Bundle<'_>) -> Result<String> {
    Ok(match bundle.signer()? {
        Some(key) => format!("key {} ({key})", key.key_id()),
        None => "unsigned".to_owned(),
    })
}

/// The signer line of `verify` and `inspect` from a stub that cannot check
/// signatures: its bundles are unsigned (the packer signs only behind the
/// signing stub), so a signature block here was not made by `sydney-pack`.
#[cfg(not(feature = "signatures"))]
pub fn describe(bundle: &Bundle<'_>) -> Result<&'static str> {
    Ok(if bundle.layout().trailer.signature_len == 0 {
        "unsigned"
    } else {
        "a signature this stub cannot check"
    })
}

/// The signature rule of `upgrade`, `rollback` and `restart`: a signed
/// running bundle hands over only to a file signed by the same key (exit
/// 26; 27 for a signature that does not match); an unsigned one to any
/// verified file.
#[cfg(feature = "signatures")]
pub fn require_same_signer(running: &Bundle<'_>, new: &Bundle<'_>) -> Result<()> {
    running.require_same_signer(new)?;
    Ok(())
}

/// The signature rule of `upgrade` from a stub that cannot check
/// signatures: its bundles are unsigned, so any verified file will do;
/// a signature block here was not made by `sydney-pack` and is refused.
#[cfg(not(feature = "signatures"))]
pub fn require_same_signer(running: &Bundle<'_>, _new: &Bundle<'_>) -> Result<()> {
    if running.layout().trailer.signature_len == 0 {
        Ok(())
    } else {
        Err(coded(
            Exit::Untrusted,
            "the running bundle's stub cannot check its signature; repack it with sydney-pack --sign",
        ))
    }
}
