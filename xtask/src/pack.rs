//! `cargo xtask pack`: a thin front end over the `sydney-pack` library
//! (the same planning, inference and packing as the `sydney-pack` binary),
//! with this workspace's stubs, built if missing, instead of embedded ones.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bundle_format::Codec;
use bundle_format::elf::Arch;
use bundle_format::pack::{PackOptions, PackReport};
use sydney_pack::{Request, ui};

use crate::toolchain::{self, Toolchain};

/// Which stub to put in front of the payload.
#[derive(Debug, Clone)]
pub enum StubSource {
    /// A stub file given on the command line.
    File(PathBuf),
    /// The stub built by this workspace for the codec (built if missing).
    Workspace,
}

/// Resolves the stub to use for `arch` and `codec` (for a signed bundle,
/// the stub of signed bundles), building it if needed.
pub fn stub_bytes(source: &StubSource, arch: Arch, codec: Codec, signed: bool) -> Result<Vec<u8>> {
    let target = match arch {
        Arch::X86_64 => toolchain::MUSL,
        Arch::Aarch64 => toolchain::AARCH64,
    };
    let path = match source {
        StubSource::File(path) => path.clone(),
        StubSource::Workspace if signed => {
            let kept = toolchain::stub_path_for(codec, target, true);
            if kept.is_file() {
                kept
            } else {
                Toolchain::detect_for(Some(target))?.build_signed_stub(codec)?
            }
        }
        StubSource::Workspace => {
            let kept = toolchain::stub_path_for(codec, target, false);
            if kept.is_file() {
                kept
            } else {
                Toolchain::detect_for(Some(target))?.build_stub(codec)?
            }
        }
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read the stub {}", path.display()))?;
    let origin = path.display().to_string();
    sydney_pack::stubs::check(&bytes, &origin)?;
    sydney_pack::stubs::check_arch(&bytes, &origin, arch)?;
    if signed {
        sydney_pack::stubs::check_signing(&bytes, &origin)?;
    }
    Ok(bytes)
}

/// `cargo xtask pack DIR ...`: plan (inferring what the flags leave open),
/// then pack, exactly as `sydney-pack` does; with `sign`, signed with that
/// secret key file.
pub fn run(
    dir: &Path,
    request: &Request,
    stub: &StubSource,
    out: Option<&Path>,
    sign: Option<&Path>,
) -> Result<()> {
    let plan = sydney_pack::plan(dir, request)?;
    let out = out.map_or_else(|| PathBuf::from(&plan.options.name), Path::to_owned);
    sydney_pack::check_output(&out)?;
    let key = sign.map(sydney_pack::read_secret_key).transpose()?;
    let stub = stub_bytes(stub, plan.arch, plan.options.codec, key.is_some())?;
    ui::print_inferred(dir, &plan);
    let report = pack_signed(dir, &stub, &plan.options, &out, key.as_ref())?;
    ui::print_summary(&out, &report, plan.options.level);
    if let Some(key) = &key {
        eprintln!(
            "signed by key {} ({})",
            key.public_key().key_id(),
            key.public_key()
        );
    }
    Ok(())
}

/// Packs `dir` into `out` with complete options, printing doctor warnings
/// and (on a terminal, for big folders) progress.
pub fn pack(dir: &Path, stub: &[u8], options: &PackOptions, out: &Path) -> Result<PackReport> {
    pack_signed(dir, stub, options, out, None)
}

/// [`pack`], signed with `key` if given.
pub fn pack_signed(
    dir: &Path,
    stub: &[u8],
    options: &PackOptions,
    out: &Path,
    key: Option<&bundle_format::signature::SecretKey>,
) -> Result<PackReport> {
    ui::warn_about_hosts(dir, options)?;
    let mut progress = ui::ProgressLine::new();
    let result =
        sydney_pack::pack_folder(dir, stub, options, out, key, &mut |p| progress.update(p));
    progress.finish();
    result.with_context(|| format!("cannot pack {}", dir.display()))
}
