//! `cargo xtask pack`: any release folder (a `mix release`, the sydney
//! release, anything with an executable entry) into one executable file.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bundle_format::codec::{default_level_for, max_level};
use bundle_format::doctor::{Host, Report};
use bundle_format::pack::{LEVEL_BUILD_KEY, PackOptions, PackReport, Progress, pack_to_path, scan};
use bundle_format::{Codec, EntryKind};

use crate::toolchain::{self, Toolchain};
use crate::util;

/// Payloads smaller than this pack too fast to need a progress line.
const PROGRESS_THRESHOLD: u64 = 32 << 20;

/// Which stub to put in front of the payload.
#[derive(Debug, Clone)]
pub enum StubSource {
    /// A stub file given on the command line.
    File(PathBuf),
    /// The stub built by this workspace for the codec (built if missing).
    Workspace,
}

/// Resolves the stub to use for `codec`, building it if needed.
pub fn stub_bytes(source: &StubSource, codec: Codec) -> Result<Vec<u8>> {
    let path = match source {
        StubSource::File(path) => path.clone(),
        StubSource::Workspace => {
            let kept = toolchain::stub_path(codec);
            if kept.is_file() {
                kept
            } else {
                Toolchain::detect()?.build_stub(codec)?
            }
        }
    };
    std::fs::read(&path).with_context(|| format!("cannot read the stub {}", path.display()))
}

/// The compression level to pack `dir` with: `asked` (checked against the
/// codec's range), else the codec's default for that much file data (zstd
/// 19, or 9 above 64 MiB: `default_level_for`).
pub fn level(codec: Codec, asked: Option<u32>, dir: &Path) -> Result<u32> {
    let max = max_level(codec);
    match asked {
        Some(level) if (1..=max).contains(&level) => Ok(level),
        Some(level) => bail!("--level {level} is out of range for {codec} (1 to {max})"),
        None => {
            let entries = scan(dir).with_context(|| format!("cannot pack {}", dir.display()))?;
            Ok(default_level_for(
                codec,
                entries.iter().map(|e| e.size).sum(),
            ))
        }
    }
}

/// Packs `dir` into `out`, printing doctor warnings and (on a terminal, for
/// big folders) progress.
pub fn pack(dir: &Path, stub: &[u8], options: &PackOptions, out: &Path) -> Result<PackReport> {
    if options.portable.is_none() {
        warn_about_hosts(&doctor(dir)?);
    }
    let show_progress = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    let mut shown = false;
    let mut progress = |p: Progress| {
        if !show_progress || p.total < PROGRESS_THRESHOLD {
            return;
        }
        if last.elapsed() >= Duration::from_millis(100) || p.done == p.total {
            last = Instant::now();
            shown = true;
            eprint!(
                "\rpacking: {:>3}% ({} of {} MiB)",
                p.done * 100 / p.total.max(1),
                p.done >> 20,
                p.total >> 20
            );
            let _ = std::io::stderr().flush();
        }
    };
    let result = pack_to_path(dir, stub, options, out, &mut progress);
    if shown {
        eprintln!();
    }
    result.with_context(|| format!("cannot pack {}", dir.display()))
}

/// Runs the doctor over a folder on disk.
pub fn doctor(dir: &Path) -> Result<Report> {
    let mut report = Report::default();
    for entry in scan(dir)? {
        if entry.kind != EntryKind::File {
            continue;
        }
        let mut file = File::open(&entry.path)
            .with_context(|| format!("cannot read {}", entry.path.display()))?;
        report
            .add_from(&entry.rel, entry.mode & 0o111 != 0, entry.size, &mut file)
            .with_context(|| format!("cannot read {}", entry.path.display()))?;
    }
    Ok(report)
}

/// Packing warns (it does not refuse) when the payload needs things a bare
/// host lacks: the seed's alpine, glibc and distroless failures, caught
/// before deploying.
fn warn_about_hosts(report: &Report) {
    let verdicts = report.verdicts();
    if verdicts.iter().all(|v| v.runs) {
        return;
    }
    eprintln!("warning: this release needs things some hosts lack:");
    for verdict in verdicts.iter().filter(|v| !v.runs || v.host == Host::Glibc) {
        eprintln!("  {verdict}");
    }
    eprintln!(
        "  (run the bundle's `inspect --doctor` for the details per file); \
         pack with --portable to carry them"
    );
}

/// Prints what a pack produced.
pub fn print_summary(out: &Path, report: &PackReport) {
    eprintln!(
        "packed {} {} into {} ({} bytes: stub {}, payload {} {} level {})",
        report.manifest.name,
        report.manifest.version,
        out.display(),
        util::grouped(report.bundle_len),
        util::grouped(report.stub_len),
        util::grouped(report.payload_len),
        report.manifest.codec,
        report.manifest.build_value(LEVEL_BUILD_KEY).unwrap_or("?")
    );
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use bundle_format::Bundle;
    use bundle_format::codec::ZSTD_MAX_LEVEL_INPUT;

    use super::*;

    /// A release with an executable entry and `data_bytes` of (sparse) data.
    fn release(data_bytes: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let entry = dir.path().join("bin/app");
        std::fs::write(&entry, "#!/bin/sh\necho ok\n").unwrap();
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755)).unwrap();
        File::create(dir.path().join("data"))
            .unwrap()
            .set_len(data_bytes)
            .unwrap();
        dir
    }

    #[test]
    fn the_default_level_follows_the_folder_size() {
        let small = release(1 << 20);
        let large = release(ZSTD_MAX_LEVEL_INPUT + 1);
        assert_eq!(level(Codec::Zstd, None, small.path()).unwrap(), 19);
        assert_eq!(level(Codec::Zstd, None, large.path()).unwrap(), 9);
        assert_eq!(level(Codec::Gzip, None, large.path()).unwrap(), 9);
        // An explicit level wins, within the codec's range.
        assert_eq!(level(Codec::Zstd, Some(19), large.path()).unwrap(), 19);
        let err = level(Codec::Gzip, Some(10), small.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--level 10 is out of range for gzip (1 to 9)"
        );
        let err = level(Codec::Zstd, None, &small.path().join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("no such folder"), "{err:#}");
    }

    /// The promise of the README and `pack --help`: above 64 MiB of files,
    /// zstd packs at level 9, and the bundle says so.
    #[test]
    fn a_large_folder_is_packed_at_zstd_level_9_and_the_manifest_says_so() {
        let large = release(ZSTD_MAX_LEVEL_INPUT + (1 << 20));
        let out = tempfile::tempdir().unwrap();
        let bundle_path = out.path().join("large-bundle");
        let options = PackOptions {
            name: "large".to_owned(),
            version: "1.0.0".to_owned(),
            entry: "bin/app".to_owned(),
            args: Vec::new(),
            codec: Codec::Zstd,
            level: level(Codec::Zstd, None, large.path()).unwrap(),
            needs_tree: false,
            default_cache_dir: None,
            mtime: 0,
            build: Vec::new(),
        };
        let report = pack(large.path(), b"not a real stub", &options, &bundle_path).unwrap();
        assert!(report.manifest.unpacked_bytes > ZSTD_MAX_LEVEL_INPUT);
        let bytes = std::fs::read(&bundle_path).unwrap();
        let bundle = Bundle::open(&bytes).unwrap();
        assert_eq!(bundle.manifest().build_value(LEVEL_BUILD_KEY), Some("9"));
    }
}
