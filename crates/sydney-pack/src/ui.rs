//! What the front ends print on stderr while packing: what was inferred,
//! what the payload needs from hosts, progress on big folders, the summary.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use bundle_format::doctor::Host;
use bundle_format::pack::{PackOptions, PackReport, Progress};
use bundle_format::text::thousands;

use crate::Plan;
use crate::error::Result;

/// Payloads smaller than this pack too fast to need a progress line.
const PROGRESS_THRESHOLD: u64 = 32 << 20;

/// Says what was inferred, and the flag that overrides each value.
pub fn print_inferred(dir: &Path, plan: &Plan) {
    if plan.inferred.is_empty() {
        return;
    }
    match &plan.mix {
        Some(release) => eprintln!(
            "{} is a mix release ({} {}, ERTS {}); inferred:",
            dir.display(),
            release.name,
            release.version,
            release.erts_version
        ),
        None => eprintln!("inferred:"),
    }
    let width = plan
        .inferred
        .iter()
        .map(|i| i.what.len())
        .max()
        .unwrap_or(0);
    for item in &plan.inferred {
        eprintln!(
            "  {:<width$}  {}  ({}; override with {})",
            item.what, item.value, item.why, item.flag
        );
    }
}

/// Warns (packing goes on) when the payload needs things a bare host lacks.
pub fn warn_about_hosts(dir: &Path, options: &PackOptions) -> Result<()> {
    if options.portable.is_some() {
        // The bundle carries what the doctor would warn about.
        return Ok(());
    }
    let report = crate::doctor(dir)?;
    let verdicts = report.verdicts();
    if verdicts.iter().all(|v| v.runs) {
        return Ok(());
    }
    eprintln!("warning: this release needs things some hosts lack:");
    for verdict in verdicts.iter().filter(|v| !v.runs || v.host == Host::Glibc) {
        eprintln!("  {verdict}");
    }
    eprintln!(
        "  (`sydney-pack doctor DIR` or the bundle's `inspect --doctor` show the details); \
         pack with --portable to carry them"
    );
    Ok(())
}

/// A progress callback that draws one line on a terminal for big folders,
/// and nothing otherwise. Call [`ProgressLine::finish`] afterwards.
#[derive(Debug)]
pub struct ProgressLine {
    show: bool,
    shown: bool,
    last: Instant,
}

impl Default for ProgressLine {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressLine {
    /// Shows progress only when stderr is a terminal.
    pub fn new() -> Self {
        ProgressLine {
            show: std::io::stderr().is_terminal(),
            shown: false,
            last: Instant::now(),
        }
    }

    /// Records progress.
    pub fn update(&mut self, p: Progress) {
        if !self.show || p.total < PROGRESS_THRESHOLD {
            return;
        }
        if self.last.elapsed() >= Duration::from_millis(100) || p.done == p.total {
            self.last = Instant::now();
            self.shown = true;
            eprint!(
                "\rpacking: {:>3}% ({} of {} MiB)",
                p.done * 100 / p.total.max(1),
                p.done >> 20,
                p.total >> 20
            );
            let _ = std::io::stderr().flush();
        }
    }

    /// Ends the line, if one was drawn.
    pub fn finish(self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// What a pack produced, in one line.
pub fn print_summary(out: &Path, report: &PackReport, level: u32) {
    eprintln!(
        "packed {} {} into {} ({} bytes: stub {}, payload {} {} level {})",
        report.manifest.name,
        report.manifest.version,
        out.display(),
        thousands(report.bundle_len),
        thousands(report.stub_len),
        thousands(report.payload_len),
        report.manifest.codec,
        level
    );
}
