//! Start-up: from spawn to the first `200 Ok` on `GET /`, for the server
//! run directly, the bundle (warm and cold cache, both codecs), the seed's
//! tar trick and makeself.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::json::Json;
use super::proc::{self, Group};
use super::svg::{Bar, Panel};
use super::table::{self, Table};
use super::{Artifacts, Plan, Section, tools};
use crate::util::{self, command};

/// A run that has not answered by then failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A run that fails is tried this many times in all before its variant
/// counts as failed (a port taken in between, say).
const ATTEMPTS: usize = 3;

/// Variables of ours that would change what a variant does.
const CLEARED_ENV: &[&str] = &[
    "PORT",
    "BIND",
    "RUST_LOG",
    "BUNDLE_ROOT",
    "SYDNEY_BUNDLE_DIR",
    "SYDNEY_BUNDLE_STATE_DIR",
    "SYDNEY_BUNDLE_INIT",
    // Read by a mix release's scripts (portable.rs).
    "RELEASE_DISTRIBUTION",
    "RELEASE_NODE",
    "RELEASE_COOKIE",
    "RELEASE_TMP",
];

/// The seed's launcher: unpack the release, then exec `program` (relative
/// to the release) with the script's arguments.
fn entrypoint(program: &str) -> String {
    format!(
        "#!/bin/sh\n\
         set -e\n\
         tar -xzf release.tar.gz -C \"$DIR\"\n\
         exec \"$DIR/{program}\" \"$@\"\n"
    )
}

/// Runs per round of `direct` and `bundle warm`. Both take about a
/// millisecond, and their ratio is the finest goal measured here: with 30
/// runs its median moved by 0.08 between full runs of the same build
/// (1.23x and 1.31x), more than the margin a stricter loop measures
/// (docs/decisions/0008-warm-start-one-code-path.md).
pub const CHEAP_PER_ROUND: usize = 5;

/// Where the peers measured earlier on this kind of machine are, for context.
const PEERS: &str = "Peers measured earlier on this kind of machine (warp, makeself, the tar trick): \
    docs/decisions/0023-reading-results-on-shared-vms.md.";

/// What to do before each run, outside the timed region.
#[derive(Debug)]
pub(super) enum Reset {
    /// Nothing (the warm cache stays).
    Keep,
    /// Point `var` at a new directory under `parent` (a cold cache, or
    /// where the tar trick or makeself unpack), created empty if `create`.
    /// Earlier runs' directories stay until the section ends: see
    /// `super::trash`.
    Fresh {
        var: &'static str,
        parent: PathBuf,
        create: bool,
    },
}

/// One way of starting the server.
#[derive(Debug)]
pub(super) struct Variant {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, PathBuf)>,
    pub cwd: Option<PathBuf>,
    pub reset: Reset,
    pub ours: bool,
    /// Where the port goes: `None` for sydney's `--port P --bind
    /// 127.0.0.1` after the arguments, `Some(VAR)` for `VAR=P` in the
    /// environment (the mix release's app reads `PORT`).
    pub port_env: Option<&'static str>,
    /// Runs in each round (interleaved with the other variants' runs).
    pub per_round: usize,
    /// Timed runs, in ms.
    pub runs: Vec<f64>,
    /// Runs that were tried again.
    pub retries: usize,
    /// Why it could not be measured.
    pub error: Option<String>,
}

impl Variant {
    pub fn new(name: &'static str, program: PathBuf, ours: bool) -> Variant {
        Variant {
            name,
            program,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            reset: Reset::Keep,
            ours,
            port_env: None,
            per_round: 1,
            runs: Vec::new(),
            retries: 0,
            error: None,
        }
    }

    pub fn failed(name: &'static str, err: &anyhow::Error) -> Variant {
        let mut variant = Variant::new(name, PathBuf::new(), false);
        variant.error = Some(format!("{err:#}"));
        variant
    }

    pub fn median(&self) -> f64 {
        table::median(&self.runs)
    }

    /// The chart bar of a measured variant: median, whiskers min to max,
    /// labelled with the median and its ratio to `direct` (a median).
    pub fn bar(&self, direct: f64) -> Bar {
        let median = self.median();
        Bar {
            label: self.name.into(),
            value: median,
            range: Some((table::min(&self.runs), table::max(&self.runs))),
            text: format!(
                "{} ms ({})",
                table::ms(median),
                table::ratio(median / direct)
            ),
            ours: self.ours,
        }
    }

    /// The JSON record of a measured variant, with `goal` (or null) and its
    /// runs; `direct` is the median its ratio is read against.
    pub fn json(&self, direct: f64, goal: Json) -> Json {
        let median = self.median();
        Json::obj([
            ("variant", Json::from(self.name)),
            ("command", Json::from(self.describe())),
            ("median_ms", Json::from(median)),
            ("min_ms", Json::from(table::min(&self.runs))),
            ("max_ms", Json::from(table::max(&self.runs))),
            ("ratio_to_direct", Json::from(median / direct)),
            ("goal", goal),
            ("retries", Json::from(self.retries)),
            ("runs_ms", Json::nums(&self.runs)),
        ])
    }

    pub fn describe(&self) -> String {
        let mut line = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={} ", v.display()))
            .collect::<String>();
        if let Reset::Fresh { var, parent, .. } = &self.reset {
            line.push_str(&format!("{var}={}/<new> ", parent.display()));
        }
        line.push_str(&self.program.display().to_string());
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        match self.port_env {
            None => line + " --port P --bind 127.0.0.1",
            Some(var) => format!("{var}=P {line}"),
        }
    }
}

/// Measures every variant, interleaved round-robin, after one untimed
/// warm-up round (which also fills the warm cache).
pub fn run(plan: &Plan, art: &Artifacts) -> Result<Section> {
    let dir = art.dir.join("startup");
    fs::create_dir_all(&dir)?;
    let runs = dir.join("runs");
    super::trash(art, &runs)?;
    let mut variants = variants(art, &dir, &runs)?;
    let log = dir.join("last-run.stderr");
    eprintln!(
        "bench: start-up, {} variants, {} timed rounds",
        variants.len(),
        plan.startup_runs
    );
    measure(plan.startup_runs, &mut variants, &log);
    super::trash(art, &runs)?;
    Ok(report(plan, &variants))
}

/// Times every variant `rounds` times, interleaved round-robin (each
/// variant `per_round` times a round), after one untimed warm-up round
/// (which also fills a warm cache). A variant that fails [`ATTEMPTS`] times
/// in a row gets its `error` and is not run again.
pub(super) fn measure(rounds: usize, variants: &mut [Variant], log: &Path) {
    let mut run_id = 0;
    let most_per_round = variants.iter().map(|v| v.per_round).max().unwrap_or(1);
    for (round, repeat) in (0..=rounds).flat_map(|r| (0..most_per_round).map(move |i| (r, i))) {
        let due = |v: &&mut Variant| v.error.is_none() && repeat < v.per_round;
        for variant in variants.iter_mut().filter(due) {
            let mut attempt = 0;
            loop {
                attempt += 1;
                run_id += 1;
                match time_one(variant, run_id, log) {
                    Ok(elapsed) => {
                        if round > 0 {
                            variant.runs.push(elapsed.as_secs_f64() * 1e3);
                        }
                        break;
                    }
                    Err(err) if attempt < ATTEMPTS => {
                        eprintln!("bench: {}: {err:#}; trying again", variant.name);
                        variant.retries += 1;
                    }
                    Err(err) => {
                        variant.error = Some(format!("{err:#}"));
                        break;
                    }
                }
            }
        }
    }
}

fn variants(art: &Artifacts, dir: &Path, runs: &Path) -> Result<Vec<Variant>> {
    // Private cache roots (the stub wants them owned by us and not
    // writable by others); the warm one starts empty too and is filled by
    // the warm-up round.
    fs::create_dir_all(runs)?;
    fs::set_permissions(runs, fs::Permissions::from_mode(0o700))?;

    // The server reads $BUNDLE_ROOT/etc/sydney.toml when the bundle runs it;
    // run directly, it gets the same variable, so both do the same work and
    // the difference is the launcher alone.
    let mut direct = Variant::new("direct", art.release.join("bin/sydney"), false);
    direct.env.push(("BUNDLE_ROOT", art.release.clone()));
    direct.per_round = CHEAP_PER_ROUND;
    let bundle = |name, file: &Path, cache: &str, cold: bool| {
        let mut variant = Variant::new(name, file.to_owned(), true);
        variant.args = vec!["start".into(), "--".into()];
        let root = runs.join(cache);
        if cold {
            variant.reset = Reset::Fresh {
                var: "SYDNEY_BUNDLE_DIR",
                parent: root,
                create: false,
            };
        } else {
            variant.env.push(("SYDNEY_BUNDLE_DIR", root));
        }
        variant
    };
    let mut warm = bundle("bundle warm", &art.bundle, "warm", false);
    warm.per_round = CHEAP_PER_ROUND;
    let cold = bundle("bundle cold", &art.bundle, "cold", true);
    let cold_zstd = bundle("bundle cold (zstd)", &art.bundle_zstd, "cold-zstd", true);
    let tar_trick = tar_trick(
        "tar-trick",
        &art.release_tgz,
        "bin/sydney",
        &dir.join("tar-trick"),
        &runs.join("tar-trick"),
    )
    .unwrap_or_else(|err| Variant::failed("tar-trick", &err));
    let makeself = makeself(art, &dir.join("makeself"), &runs.join("makeself"))
        .unwrap_or_else(|err| Variant::failed("makeself", &err));
    Ok(vec![direct, warm, cold, cold_zstd, tar_trick, makeself])
}

/// `entrypoint.sh` in `dir` next to `tgz` (a tar.gz of the release),
/// starting `program`; each run unpacks into a fresh, empty `$DIR`.
pub(super) fn tar_trick(
    name: &'static str,
    tgz: &Path,
    program: &str,
    dir: &Path,
    runs: &Path,
) -> Result<Variant> {
    tools::path("tar")?;
    fs::create_dir_all(dir)?;
    fs::copy(tgz, dir.join("release.tar.gz"))?;
    let script = dir.join("entrypoint.sh");
    fs::write(&script, entrypoint(program))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let mut variant = Variant::new(name, script, false);
    variant.cwd = Some(dir.to_owned());
    variant.reset = Reset::Fresh {
        var: "DIR",
        parent: runs.to_owned(),
        create: true,
    };
    Ok(variant)
}

/// A makeself archive of the release that runs `./bin/sydney` with the
/// user's arguments; it unpacks into a new temporary directory under
/// `$TMPDIR` every run.
fn makeself(art: &Artifacts, dir: &Path, runs: &Path) -> Result<Variant> {
    let makeself = tools::path("makeself")?;
    fs::create_dir_all(dir)?;
    let archive = dir.join("sydney.run");
    let out = util::output(
        command(makeself)
            .arg(&art.release)
            .arg(&archive)
            .args(["sydney", "./bin/sydney"]),
    )?;
    if !out.status.success() {
        bail!(
            "makeself failed ({}): {}",
            out.status,
            proc::tail(&String::from_utf8_lossy(&out.stderr))
        );
    }
    let mut variant = Variant::new("makeself", archive, false);
    variant.args = ["--noprogress", "--nox11", "--quiet", "--"]
        .map(String::from)
        .to_vec();
    variant.reset = Reset::Fresh {
        var: "TMPDIR",
        parent: runs.to_owned(),
        create: true,
    };
    Ok(variant)
}

/// One start: reset, spawn, poll until `200 Ok`, kill the process group.
fn time_one(variant: &Variant, run_id: usize, log: &Path) -> Result<Duration> {
    let port = proc::free_port()?;
    let mut cmd = Command::new(&variant.program);
    cmd.args(&variant.args);
    for name in CLEARED_ENV {
        cmd.env_remove(name);
    }
    match variant.port_env {
        None => cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]),
        Some(var) => cmd.env(var, port.to_string()),
    };
    for (name, value) in &variant.env {
        cmd.env(name, value);
    }
    if let Reset::Fresh {
        var,
        parent,
        create,
    } = &variant.reset
    {
        let fresh = parent.join(run_id.to_string());
        if *create {
            fs::create_dir_all(&fresh)?;
        } else {
            fs::create_dir_all(parent)?;
        }
        cmd.env(var, fresh);
    }
    if let Some(cwd) = &variant.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log)?);

    let start = Instant::now();
    let mut group = Group::spawn(&mut cmd)?;
    let result = proc::wait_for_ok(&mut group, port, start, TIMEOUT);
    drop(group);
    result.map_err(|err| {
        let stderr = fs::read_to_string(log).unwrap_or_default();
        err.context(format!(
            "{} (stderr: {})",
            variant.name,
            proc::tail(&stderr)
        ))
    })
}

fn report(plan: &Plan, variants: &[Variant]) -> Section {
    let median_of = |name: &str| {
        variants
            .iter()
            .find(|v| v.name == name && v.error.is_none())
            .map_or(f64::NAN, Variant::median)
    };
    let direct = median_of("direct");
    let tar_trick = median_of("tar-trick");
    let mut table = Table::new(
        "Start-up: spawn to first `200 Ok` (ms)",
        &[
            "variant",
            ">median",
            ">min",
            ">max",
            ">vs direct",
            "goal",
            "result",
        ],
    );
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut bars = Vec::new();
    for variant in variants {
        if let Some(err) = &variant.error {
            super::report_unmeasured(
                "start-up",
                ("variant", variant.name),
                err,
                &mut table,
                &mut failures,
                &mut rows,
            );
            continue;
        }
        let median = variant.median();
        let (low, high) = (table::min(&variant.runs), table::max(&variant.runs));
        let vs_direct = median / direct;
        let goal = match variant.name {
            "bundle warm" => Some(("<= 1.3x direct", vs_direct, 1.3)),
            "bundle cold" | "bundle cold (zstd)" => {
                Some(("<= 0.4x tar-trick", median / tar_trick, 0.4))
            }
            _ => None,
        };
        let (goal_text, result) = match goal {
            Some((text, ratio, limit)) => (
                text.to_owned(),
                format!(
                    "{} ({})",
                    table::verdict(ratio <= limit),
                    table::ratio(ratio)
                ),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        table.row(vec![
            variant.name.into(),
            table::ms(median),
            table::ms(low),
            table::ms(high),
            table::ratio(vs_direct),
            goal_text.clone(),
            result,
        ]);
        bars.push(variant.bar(direct));
        rows.push(variant.json(
            direct,
            goal.map_or(Json::Null, |(text, ratio, limit)| {
                Json::obj([
                    ("text", Json::from(text)),
                    ("ratio", Json::from(ratio)),
                    ("met", Json::from(ratio <= limit)),
                ])
            }),
        ));
    }
    table.note(format!(
        "{} timed rounds after one warm-up round, interleaved round-robin: one run of \
         each variant per round, {} of `direct` and `bundle warm` (their ratio is the \
         finest goal); \
         `GET /` polled every {} µs (so each reading is late by up to one step, for \
         every variant alike); a fresh port per run; each run's process group \
         killed (SIGKILL) and reaped after its 200. `direct` runs the server with \
         BUNDLE_ROOT set to the release folder, so it reads the same config file \
         as under the bundle.",
        plan.startup_runs,
        CHEAP_PER_ROUND,
        proc::POLL.as_micros()
    ));
    table.note(PEERS);
    let panel = Panel {
        title: "Start-up: spawn to first 200 Ok (median; whiskers min to max; log scale)".into(),
        unit: " ms".into(),
        log: true,
        bars,
    };
    Section {
        key: "startup",
        tables: vec![table],
        json: Json::obj([
            ("rounds", Json::from(plan.startup_runs)),
            ("cheap_runs_per_round", Json::from(CHEAP_PER_ROUND)),
            ("poll_us", Json::from(proc::POLL.as_micros() as u64)),
            ("timeout_s", Json::from(TIMEOUT.as_secs())),
            ("peers_context", Json::from(PEERS)),
            ("variants", Json::Arr(rows)),
        ]),
        failures,
        svgs: vec![(
            "startup.svg",
            super::svg::chart("sydney-bundle start-up", &[panel]),
        )],
    }
}
