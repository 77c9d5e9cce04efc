//! `cargo xtask stubs` and `cargo xtask dist`: the stubs, and the static
//! `sydney-pack` with them inside (target/dist/sydney-pack).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bundle_format::Codec;

use crate::toolchain::{self, Toolchain};
use crate::util;

/// Builds both stubs, and the stubs of signed bundles, into
/// target/bundle/stubs/, where `sydney-pack`'s build script finds them;
/// returns the paths of the codec stubs (gzip, zstd).
pub fn stubs(toolchain: &Toolchain) -> Result<[PathBuf; 2]> {
    let gzip = toolchain.build_stub(Codec::Gzip)?;
    let zstd = toolchain.build_stub(Codec::Zstd)?;
    // The stubs of signed bundles (`sydney-pack --sign`), beside them.
    let gzip_signed = toolchain.build_signed_stub(Codec::Gzip)?;
    let zstd_signed = toolchain.build_signed_stub(Codec::Zstd)?;
    for stub in [&gzip, &zstd, &gzip_signed, &zstd_signed] {
        let len = std::fs::metadata(stub)?.len();
        eprintln!("stub {} ({} bytes)", stub.display(), util::grouped(len));
    }
    Ok([gzip, zstd])
}

/// Builds the stubs for both architectures: the x86_64 musl ones into
/// target/bundle/stubs/ and the aarch64 ones into target/bundle/stubs/aarch64/
/// (what `sydney-pack` embeds); returns the x86_64 toolchain.
pub fn all_stubs() -> Result<Toolchain> {
    let toolchain = Toolchain::detect()?;
    stubs(&toolchain)?;
    stubs(&Toolchain::detect_for(Some(toolchain::AARCH64))?)?;
    Ok(toolchain)
}

/// Where `dist` puts the tool.
pub fn default_out() -> PathBuf {
    util::target_dir().join("dist").join("sydney-pack")
}

/// Builds the stubs (both architectures), then `sydney-pack` statically
/// (x86_64 musl) with them embedded, into target/dist/sydney-pack.
pub fn dist() -> Result<PathBuf> {
    let toolchain = Toolchain::detect()?;
    if toolchain.target != toolchain::MUSL {
        bail!(
            "cargo xtask dist needs the {} target (rustup target add {}); the glibc fallback \
             stubs are not what sydney-pack embeds",
            toolchain::MUSL,
            toolchain::MUSL
        );
    }
    let [gzip, _] = stubs(&toolchain)?;
    stubs(&Toolchain::detect_for(Some(toolchain::AARCH64))?)?;
    let stub_dir = gzip.parent().context("the stub has a folder")?.to_owned();
    let built = toolchain.build_with_env(
        "sydney-pack",
        "sydney-pack",
        "release",
        &["embed"],
        &[],
        &[("SYDNEY_PACK_STUBS", stub_dir.as_os_str())],
    )?;
    let out = default_out();
    std::fs::create_dir_all(out.parent().context("dist has a folder")?)?;
    // Through a temporary name: a running copy of the old tool stays intact.
    let temp = out.with_extension("partial");
    std::fs::copy(&built, &temp)
        .with_context(|| format!("cannot copy {} to {}", built.display(), temp.display()))?;
    std::fs::rename(&temp, &out)?;
    let bytes = std::fs::read(&out)?;
    if let Some(loader) = bundle_format::doctor::elf_interpreter(&bytes) {
        bail!(
            "{} is not static (it names the loader {loader})",
            out.display()
        );
    }
    println!(
        "{} ({} bytes, static {})",
        out.display(),
        util::grouped(bytes.len() as u64),
        toolchain.target
    );
    Ok(out)
}
