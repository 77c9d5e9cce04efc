//! `cargo xtask pack`: any release folder (a `mix release`, the sydney
//! release, anything with an executable entry) into one executable file.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bundle_format::doctor::{Host, Report};
use bundle_format::pack::{PackOptions, PackReport, Progress, pack_to_path, scan};
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
        "packed {} {} into {} ({} bytes: stub {}, payload {} {})",
        report.manifest.name,
        report.manifest.version,
        out.display(),
        util::grouped(report.bundle_len),
        util::grouped(report.stub_len),
        util::grouped(report.payload_len),
        report.manifest.codec
    );
}
