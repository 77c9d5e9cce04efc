//! Finds the prebuilt static stubs that `sydney-pack` embeds (feature
//! `embed`). They are not built here: a stub is a size-tuned static musl
//! executable built with a rebuilt standard library and a linker script
//! (`cargo xtask stubs`), which a build script cannot reproduce without
//! running a second cargo. See docs/decisions/0030-sydney-pack-embeds-prebuilt-stubs.md.
//!
//! Where they come from: `SYDNEY_PACK_STUBS=DIR` if set, else this
//! workspace's `target/bundle/stubs/` (where every xtask that builds stubs
//! keeps them). Either holds, for x86_64, `bundle-stub-gzip`,
//! `bundle-stub-zstd` and the stubs of signed bundles,
//! `bundle-stub-gzip-signed` and `bundle-stub-zstd-signed`, and the same
//! four for aarch64 in `aarch64/`
//! (docs/decisions/0081-verifier-only-in-the-signed-stub.md,
//! docs/decisions/0101-stub-by-payload-architecture.md).

use std::path::{Path, PathBuf};

// The codec stubs, and those of signed bundles (the codec's decoder and
// the signature checks; docs/decisions/0081).
const CODECS: [&str; 4] = ["gzip", "zstd", "gzip-signed", "zstd-signed"];
/// Each architecture's subfolder of the stub folder and the infix of its
/// `SYDNEY_PACK_STUB_*` variables.
const ARCHS: [(&str, &str); 2] = [("", ""), ("aarch64/", "AARCH64_")];

fn main() {
    println!("cargo::rerun-if-env-changed=SYDNEY_PACK_STUBS");
    if std::env::var_os("CARGO_FEATURE_EMBED").is_none() {
        return;
    }
    let (dir, named) = match std::env::var_os("SYDNEY_PACK_STUBS") {
        Some(dir) if !dir.is_empty() => (PathBuf::from(dir), true),
        _ => {
            let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it");
            let dir = Path::new(&manifest).join("../../target/bundle/stubs");
            (dir.canonicalize().unwrap_or(dir), false)
        }
    };
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it");
    // What the stubs are built from (their tests aside).
    let sources: Vec<PathBuf> = [
        "stub/src",
        "stub/Cargo.toml",
        "stub/build.rs",
        "stub/warm-path.ld",
        "bundle-format/src",
        "bundle-format/Cargo.toml",
    ]
    .iter()
    .map(|path| Path::new(&manifest).join("..").join(path))
    .map(|path| path.canonicalize().unwrap_or(path))
    .collect();
    for source in &sources {
        println!("cargo::rerun-if-changed={}", source.display());
    }
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let mut sizes = Vec::new();
    for ((subfolder, infix), codec) in ARCHS
        .iter()
        .flat_map(|arch| CODECS.iter().map(move |codec| (arch, codec)))
    {
        let path = dir.join(format!("{subfolder}bundle-stub-{codec}"));
        println!("cargo::rerun-if-changed={}", path.display());
        let Ok(meta) = std::fs::metadata(&path) else {
            let source = if named {
                format!("SYDNEY_PACK_STUBS={}", dir.display())
            } else {
                format!("{} (this workspace's stub folder)", dir.display())
            };
            println!(
                "cargo::error=sydney-pack embeds the bundle stubs, and {} is missing in {source}; \
                 run `cargo xtask stubs` first (it builds them statically), or set \
                 SYDNEY_PACK_STUBS to a folder holding bundle-stub-gzip, bundle-stub-zstd and their \
                 -signed variants (x86_64), and aarch64/ with the same four",
                path.display()
            );
            return;
        };
        if let Some(newer) = newest_source_after(&sources, &meta) {
            // A stale stub would read an older format than this packer
            // writes. Refused where it would ship (release builds: `cargo
            // install`, `cargo xtask dist`); a warning in development.
            let message = format!(
                "{} is older than {}; run `cargo xtask stubs` to rebuild the stubs",
                path.display(),
                newer.display()
            );
            if release {
                println!("cargo::error={message}");
                return;
            }
            println!("cargo::warning={message}");
        }
        let path = path.canonicalize().expect("the stub exists");
        println!(
            "cargo::rustc-env=SYDNEY_PACK_STUB_{infix}{}={}",
            codec.to_uppercase().replace('-', "_"),
            path.display()
        );
        let arch = if infix.is_empty() {
            "x86_64"
        } else {
            "aarch64"
        };
        sizes.push(format!("{arch} {codec} stub {} bytes", meta.len()));
    }
    println!(
        "cargo::rustc-env=SYDNEY_PACK_STUBS_SUMMARY={}",
        sizes.join(", ")
    );
}

/// A file under `sources` modified after the stub was built, if any.
fn newest_source_after(sources: &[PathBuf], stub: &std::fs::Metadata) -> Option<PathBuf> {
    let built = stub.modified().ok()?;
    let mut pending: Vec<PathBuf> = sources.to_vec();
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(children) = std::fs::read_dir(&path) {
                pending.extend(children.filter_map(|c| c.ok().map(|c| c.path())));
            }
        } else if meta.modified().is_ok_and(|modified| modified > built) {
            return Some(path);
        }
    }
    None
}
