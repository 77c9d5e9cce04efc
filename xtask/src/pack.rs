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

/// Resolves the stub to use for `arch` and `codec`, building it if needed.
pub fn stub_bytes(source: &StubSource, arch: Arch, codec: Codec) -> Result<Vec<u8>> {
    let target = match arch {
        Arch::X86_64 => toolchain::MUSL,
        Arch::Aarch64 => toolchain::AARCH64,
    };
    let path = match source {
        StubSource::File(path) => path.clone(),
        StubSource::Workspace => {
            let kept = toolchain::stub_path_for(codec, target);
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
    Ok(bytes)
}

/// `cargo xtask pack DIR ...`: plan (inferring what the flags leave open),
/// then pack, exactly as `sydney-pack` does.
pub fn run(dir: &Path, request: &Request, stub: &StubSource, out: Option<&Path>) -> Result<()> {
    let plan = sydney_pack::plan(dir, request)?;
    let out = out.map_or_else(|| PathBuf::from(&plan.options.name), Path::to_owned);
    sydney_pack::check_output(&out)?;
    let stub = stub_bytes(stub, plan.arch, plan.options.codec)?;
    ui::print_inferred(dir, &plan);
    let report = pack(dir, &stub, &plan.options, &out)?;
    ui::print_summary(&out, &report, plan.options.level);
    Ok(())
}

/// Packs `dir` into `out` with complete options, printing doctor warnings
/// and (on a terminal, for big folders) progress.
pub fn pack(dir: &Path, stub: &[u8], options: &PackOptions, out: &Path) -> Result<PackReport> {
    ui::warn_about_hosts(dir, options)?;
    let mut progress = ui::ProgressLine::new();
    let result = sydney_pack::pack_folder(dir, stub, options, out, &mut |p| progress.update(p));
    progress.finish();
    result.with_context(|| format!("cannot pack {}", dir.display()))
}
