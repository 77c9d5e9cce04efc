//! `cargo xtask bench [--quick]`: how the bundle compares with running the
//! server directly and with other ways of shipping a folder as one file.
//!
//! Six sections, each printed as markdown and recorded with every raw
//! number in `target/bench/results.json`:
//!
//! - start-up (`startup.rs`): spawn to the first `200 Ok`;
//! - size (`size.rs`);
//! - large payloads (`large.rs`): packing and cold extraction vs GNU tar;
//! - throughput (`server.rs`): wrk against sydney and nginx;
//! - upgrades (`upgrade.rs`): wrk against a supervised instance while
//!   `upgrade` alternates two versions, and across stop-then-start;
//! - images and Swarm (`fleet.rs`): the image's size and write time, and
//!   `docker service update` to all replicas healthy;
//! - portable mix release (`portable.rs`): a real `mix release` built here
//!   (`mixrel.rs`), packed `--portable`, against the seed's tar trick.
//!
//! No timing is asserted: CI runs `--quick` so the harness cannot rot, and
//! the task fails only when a row could not be measured. Everything it
//! writes lives in `target/bench/`; a full run also copies the charts to
//! `docs/` for docs/BENCHMARKS.md.

mod fleet;
mod json;
mod large;
mod mixrel;
mod portable;
mod proc;
mod server;
mod size;
mod startup;
mod svg;
mod synth;
mod table;
mod tools;
mod upgrade;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bundle_format::codec::default_level;
use bundle_format::pack::PackOptions;
use bundle_format::{Bundle, Codec};

use self::json::Json;
use self::table::Table;
use crate::toolchain::Toolchain;
use crate::util::{self, command};
use crate::{bundle, pack};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// `--quick`: what CI runs.
    pub quick: bool,
    /// Timed rounds of start-ups (after one untimed warm-up round); see
    /// `startup::CHEAP_PER_ROUND` for the runs per round.
    pub startup_runs: usize,
    /// Size of the synthetic release for the large-payload rows, MiB.
    pub large_mib: u64,
    /// Timed extractions per variant.
    pub extract_runs: usize,
    /// Seconds per wrk run.
    pub wrk_seconds: u32,
    /// wrk runs per server, alternating.
    pub wrk_rounds: usize,
    /// Timed rounds of the portable mix release's start-ups (each boots
    /// the BEAM twice, seconds on a loaded 2-core machine, so fewer than
    /// `startup_runs`).
    pub mix_startup_runs: usize,
    /// Timed extractions (and patch steps) of the portable mix release.
    pub mix_extract_runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                // As many as a full run: the whole start-up section still
                // takes seconds, and with 10 the warm ratio moved by 0.15
                // between CI runs (1.27x and 1.42x on the same VM).
                startup_runs: 30,
                large_mib: 64,
                extract_runs: 2,
                wrk_seconds: 3,
                wrk_rounds: 2,
                mix_startup_runs: 3,
                mix_extract_runs: 3,
            }
        } else {
            Plan {
                quick,
                startup_runs: 30,
                large_mib: 512,
                extract_runs: 3,
                wrk_seconds: 10,
                wrk_rounds: 2,
                mix_startup_runs: 20,
                mix_extract_runs: 15,
            }
        }
    }
}

/// What the sections measure, built once and copied into `target/bench`
/// so that a concurrent `cargo xtask bundle` cannot change it mid-run.
#[derive(Debug)]
pub struct Artifacts {
    /// `target/bench`.
    pub dir: PathBuf,
    /// The shipped bundle (gzip).
    pub bundle: PathBuf,
    /// The same release and manifest packed with zstd and the zstd stub.
    pub bundle_zstd: PathBuf,
    /// The release folder both bundles hold.
    pub release: PathBuf,
    /// `release` as an uncompressed tar.
    pub release_tar: PathBuf,
    /// ... compressed with gzip -9.
    pub release_tgz: PathBuf,
    /// ... compressed with xz -9e.
    pub release_txz: PathBuf,
    /// The gzip stub.
    pub stub_gzip: PathBuf,
    /// The zstd stub.
    pub stub_zstd: PathBuf,
    /// The same release built and packed for aarch64 (`cargo xtask bundle
    /// --target aarch64`): measured for size only.
    pub bundle_aarch64: PathBuf,
}

impl Artifacts {
    /// The stub for `codec`.
    pub fn stub(&self, codec: Codec) -> &Path {
        match codec {
            Codec::Gzip => &self.stub_gzip,
            Codec::Zstd => &self.stub_zstd,
        }
    }
}

/// What one section measured.
#[derive(Debug)]
pub struct Section {
    /// Its key in results.json.
    pub key: &'static str,
    /// Its markdown tables.
    pub tables: Vec<Table>,
    /// Its raw numbers.
    pub json: Json,
    /// Rows that could not be measured.
    pub failures: Vec<String>,
    /// Charts to write into `target/bench`: file name and SVG text.
    pub svgs: Vec<(&'static str, String)>,
}

/// Reports a row that could not be measured in all three places a section
/// reports to: a "not measured" row in `table`, a line in `failures` (which
/// makes the run fail), and `{key: label, "error": err}` in `rows`.
pub fn report_unmeasured(
    section: &str,
    (key, label): (&str, &str),
    err: &str,
    table: &mut Table,
    failures: &mut Vec<String>,
    rows: &mut Vec<Json>,
) {
    table.unmeasured(label, err);
    failures.push(format!("{section}, {label}: {err}"));
    rows.push(Json::obj([
        (key, Json::from(label)),
        ("error", Json::from(err)),
    ]));
}

/// Runs the benchmarks and writes the report.
pub fn run(quick: bool, only: Option<&str>) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::new(quick);
    let dir = util::target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let load_before = loadavg();
    let mut failures = tools::ensure();
    let trash = dir.join("trash");
    if trash.exists() {
        empty_trash(&dir)?;
    }
    let art = prepare(&dir)?;
    settle(&dir);

    type Step = fn(&Plan, &Artifacts) -> Result<Section>;
    let steps: [(&str, Step); 7] = [
        ("start-up", startup::run),
        ("size", |_, art| size::run(art)),
        ("large payloads", large::run),
        ("throughput", server::run),
        ("upgrades", upgrade::run),
        ("images and swarm", fleet::run),
        ("portable mix release", portable::run),
    ];
    if let Some(only) = only
        && !steps.iter().any(|(name, _)| *name == only)
    {
        let names: Vec<&str> = steps.iter().map(|(name, _)| *name).collect();
        bail!(
            "no bench section {only:?}; the sections are: {}",
            names.join(", ")
        );
    }
    let mut sections = Vec::new();
    let mut timings = Vec::new();
    for (name, step) in steps {
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let section_start = Instant::now();
        let result = step(&plan, &art);
        let seconds = section_start.elapsed().as_secs_f64();
        eprintln!("bench: {name} took {seconds:.0} s");
        timings.push((name.to_owned(), Json::from(seconds)));
        match result {
            Ok(section) => {
                failures.extend(section.failures.iter().cloned());
                sections.push(section);
            }
            Err(err) => {
                eprintln!("bench: {name}: {err:#}");
                failures.push(format!("{name}: {err:#}"));
            }
        }
    }

    empty_trash(&dir)?;
    let wall = started.elapsed().as_secs_f64();
    let machine = machine(&plan, &load_before, wall);
    let mut report = format!(
        "## cargo xtask bench{}\n\n{}\n\n",
        if quick { " --quick" } else { "" },
        machine_line(&machine)
    );
    let mut results = vec![("machine".to_owned(), machine.clone())];
    for section in &sections {
        for table in &section.tables {
            report.push_str(&table.render());
            report.push('\n');
        }
        for (name, svg) in &section.svgs {
            fs::write(dir.join(name), svg)?;
            if !quick {
                let docs = util::root().join("docs").join(format!("bench-{name}"));
                fs::write(&docs, svg)
                    .with_context(|| format!("cannot write {}", docs.display()))?;
            }
        }
        results.push((section.key.to_owned(), section.json.clone()));
    }
    results.push(("section_seconds".to_owned(), Json::Obj(timings)));
    results.push((
        "failures".to_owned(),
        Json::Arr(failures.iter().map(|f| Json::from(f.as_str())).collect()),
    ));
    let results_path = dir.join("results.json");
    fs::write(&results_path, Json::Obj(results).render())?;
    print!("{report}");
    println!(
        "Raw numbers: {}; charts: {} (wall time {wall:.0} s).",
        results_path.display(),
        dir.join("*.svg").display()
    );
    if !failures.is_empty() {
        bail!(
            "{} row(s) could not be measured:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// Moves `path`, if it exists, into `target/bench/trash`, which is emptied
/// once, at the end of the run.
///
/// Why not delete right away: on ext4 without a journal (as on the machine
/// these numbers come from), the inode allocator skips every inode freed in
/// the last minute, checking each one, so creating files right after
/// deleting thousands gets quadratic. Extractions and cold starts measured
/// then would be several times slower than on a settled file system.
pub fn trash(art: &Artifacts, path: &Path) -> Result<()> {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let bin = art.dir.join("trash");
    fs::create_dir_all(&bin)?;
    let name = path.file_name().map_or("x".into(), |n| n.to_string_lossy());
    let target = bin.join(format!(
        "{name}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::rename(path, &target)
        .with_context(|| format!("cannot move {} to {}", path.display(), target.display()))
}

/// Deletes `dir/trash`, syncs (freed inodes count as recent for longer
/// while their inode table is dirty), and notes the time.
fn empty_trash(dir: &Path) -> Result<()> {
    let trash = dir.join("trash");
    if trash.exists() {
        eprintln!("bench: removing {}", trash.display());
        fs::remove_dir_all(&trash).with_context(|| format!("cannot remove {}", trash.display()))?;
    }
    let _ = command("sync").status();
    fs::write(dir.join(CLEANED), "")?;
    Ok(())
}

/// Marks when the last run emptied its trash.
const CLEANED: &str = ".trash-emptied";

/// Waits until a minute has passed since the trash was last emptied (a
/// run right after another), for the reason given at [`trash`].
fn settle(dir: &Path) {
    let since = fs::metadata(dir.join(CLEANED))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if let Some(since) = since
        && let Some(left) = Duration::from_secs(60).checked_sub(since)
    {
        eprintln!(
            "bench: waiting {} s for the file system to settle after the last clean-up",
            left.as_secs() + 1
        );
        std::thread::sleep(left);
    }
}

/// Builds the bundle and both stubs (incrementally), copies what is
/// measured into `dir`, packs the zstd variant and the reference archives.
fn prepare(dir: &Path) -> Result<Artifacts> {
    let built = bundle::bundle(bundle::DEFAULT_CODEC, &bundle::default_out(), None)?;
    let aarch64 = bundle::bundle_for(
        bundle::DEFAULT_CODEC,
        &bundle::default_out_for(Some(crate::toolchain::AARCH64)),
        None,
        Some(crate::toolchain::AARCH64),
    )?;
    let toolchain = Toolchain::detect()?;
    let stub_gzip = toolchain.build_stub(Codec::Gzip)?;
    let stub_zstd = toolchain.build_stub(Codec::Zstd)?;

    let release = dir.join("release");
    copy_tree(&built.release, &release)?;
    let shipped = dir.join("sydney-bundle");
    fs::copy(&built.bundle, &shipped)?;
    let bundle_aarch64 = dir.join("sydney-bundle-aarch64");
    fs::copy(&aarch64.bundle, &bundle_aarch64)?;

    // The zstd variant: the shipped manifest, only the codec changed, so
    // the two bundles differ in stub and payload alone.
    let bytes = fs::read(&shipped)?;
    let manifest = Bundle::open(&bytes)
        .with_context(|| format!("cannot read {}", shipped.display()))?
        .manifest()
        .clone();
    let options = PackOptions {
        name: manifest.name,
        version: manifest.version,
        entry: manifest.entry,
        args: manifest.args,
        codec: Codec::Zstd,
        level: default_level(Codec::Zstd),
        needs_tree: manifest.needs_tree,
        default_cache_dir: manifest.default_cache_dir,
        mtime: util::source_date_epoch()?,
        build: manifest.build,
        portable: None,
        env: manifest.env,
    };
    let bundle_zstd = dir.join("sydney-bundle-zstd");
    let stub = fs::read(&stub_zstd)?;
    pack::pack(&release, &stub, &options, &bundle_zstd)?;

    let release_tar = dir.join("release.tar");
    util::run(
        command(tools::path("tar")?)
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            .args(["--mtime=@0", "-C"])
            .arg(&release)
            .arg("-cf")
            .arg(&release_tar)
            .arg("."),
    )?;
    let release_tgz = dir.join("release.tar.gz");
    compress("gzip", &["-9", "-n", "-c"], &release_tar, &release_tgz)?;
    let release_txz = dir.join("release.tar.xz");
    compress("xz", &["-9e", "-c"], &release_tar, &release_txz)?;
    Ok(Artifacts {
        dir: dir.to_owned(),
        bundle: shipped,
        bundle_zstd,
        release,
        release_tar,
        release_tgz,
        release_txz,
        stub_gzip,
        stub_zstd,
        bundle_aarch64,
    })
}

fn compress(program: &str, args: &[&str], input: &Path, output: &Path) -> Result<()> {
    util::run(
        command(tools::path(program)?)
            .args(args)
            .arg(input)
            .stdout(Stdio::from(File::create(output)?)),
    )
}

/// Copies a release folder (files, directories, exec bits).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        fs::remove_dir_all(to).with_context(|| format!("cannot remove {}", to.display()))?;
    }
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn first_line_of(path: &str, key: &str) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

fn machine(plan: &Plan, load_before: &str, wall: f64) -> Json {
    let text = |cmd: &mut std::process::Command| {
        util::stdout(cmd)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tool = |name: &str, flag: &str| {
        (
            name.to_owned(),
            tools::find(name).map_or(Json::Null, |p| Json::from(tools::version(&p, flag))),
        )
    };
    Json::obj([
        (
            "nproc",
            Json::from(std::thread::available_parallelism().map_or(0, usize::from)),
        ),
        (
            "cpu",
            Json::from(first_line_of("/proc/cpuinfo", "model name")),
        ),
        (
            "memory",
            Json::from(first_line_of("/proc/meminfo", "MemTotal")),
        ),
        ("kernel", Json::from(text(command("uname").arg("-r")))),
        (
            "date",
            Json::from(text(command("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))),
        ),
        (
            "command",
            Json::from(format!("cargo xtask {}", args.join(" "))),
        ),
        ("quick", Json::from(plan.quick)),
        (
            "xtask_build",
            Json::from(if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            }),
        ),
        ("rustc", Json::from(text(command("rustc").arg("-V")))),
        ("loadavg_before", Json::from(load_before)),
        ("loadavg_after", Json::from(loadavg())),
        ("wall_seconds", Json::from(wall)),
        (
            "tools",
            Json::Obj(vec![
                tool("tar", "--version"),
                tool("gzip", "--version"),
                tool("xz", "--version"),
                tool("zstd", "--version"),
                tool("makeself", "--version"),
                tool("nginx", "-v"),
                tool("wrk", "-v"),
            ]),
        ),
    ])
}

fn machine_line(machine: &Json) -> String {
    let field = |key: &str| match machine {
        Json::Obj(pairs) => pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| match v {
                Json::Str(s) => s.clone(),
                Json::Num(n) => n.to_string(),
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    };
    format!(
        "Machine: {} cores ({}), {}, kernel {}; {}; load average before/after: {} / {}.",
        field("nproc"),
        field("cpu"),
        field("memory"),
        field("kernel"),
        field("date"),
        field("loadavg_before"),
        field("loadavg_after")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmeasured_row_is_reported_everywhere() {
        let mut table = Table::new("T", &["variant", ">ms"]);
        let (mut failures, mut rows) = (Vec::new(), Vec::new());
        report_unmeasured(
            "start-up",
            ("variant", "makeself"),
            "not installed",
            &mut table,
            &mut failures,
            &mut rows,
        );
        assert!(
            table
                .render()
                .contains("| makeself | not measured: not installed |")
        );
        assert_eq!(failures, ["start-up, makeself: not installed"]);
        assert_eq!(
            Json::Arr(rows).render(),
            "[\n  {\n    \"variant\": \"makeself\",\n    \"error\": \"not installed\"\n  }\n]\n"
        );
    }
}
