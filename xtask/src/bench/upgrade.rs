//! Zero-downtime upgrades (issue 17): wrk -c64 on loopback against a
//! supervised `daemon` instance while upgrades alternate between two
//! versions, and the same load across plain stop-then-start restarts for
//! contrast. Failed requests are wrk's socket errors plus non-2xx answers.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bundle_format::codec::default_level;
use bundle_format::pack::PackOptions;
use bundle_format::{Bundle, Codec};

use super::json::Json;
use super::proc::{self, Group};
use super::table::{self, Table};
use super::{Artifacts, Plan, Section, tools};
use crate::{pack, util};

/// How the two runs switch versions.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Switch {
    /// `upgrade NEWFILE` through the supervisor.
    Handover,
    /// An unsupervised instance: `stop`, then `daemon` of the other file.
    StopThenStart,
}

/// What one run measured.
#[derive(Debug)]
struct Run {
    switches: usize,
    /// wrk's requests and failures (socket errors + non-2xx).
    requests: u64,
    failed: u64,
    failures: Vec<String>,
    p99_ms: f64,
    /// Per switch: from the command's start to the new version serving
    /// (the pidfile names a new server that answers).
    serving_ms: Vec<f64>,
}

/// Runs the section.
pub fn run(plan: &Plan, art: &Artifacts) -> Result<Section> {
    let wrk = tools::path("wrk")?;
    let dir = art.dir.join("upgrade");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let switches = if plan.quick { 4 } else { 20 };
    let (v1, v2) = two_versions(art, &dir)?;
    let cold_ms = cold_start_ms(&dir, &v1)?;

    let baseline = measure(&wrk, &dir, &v1, &v2, 0, Switch::Handover, plan)?;
    let handover = measure(&wrk, &dir, &v1, &v2, switches, Switch::Handover, plan)?;
    let stop_start = measure(&wrk, &dir, &v1, &v2, switches, Switch::StopThenStart, plan)?;
    Ok(report(switches, cold_ms, &baseline, &handover, &stop_start))
}

/// The shipped bundle, and the same release packed as version `<v>-next`.
fn two_versions(art: &Artifacts, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let v1 = dir.join("v1");
    fs::copy(&art.bundle, &v1)?;
    let bytes = fs::read(&v1)?;
    let manifest = Bundle::open(&bytes)
        .with_context(|| format!("cannot read {}", v1.display()))?
        .manifest()
        .clone();
    let options = PackOptions {
        name: manifest.name,
        version: format!("{}-next", manifest.version),
        entry: manifest.entry,
        args: manifest.args,
        codec: Codec::Gzip,
        level: default_level(Codec::Gzip),
        needs_tree: manifest.needs_tree,
        default_cache_dir: manifest.default_cache_dir,
        mtime: util::source_date_epoch()?,
        build: manifest.build,
        portable: None,
        env: manifest.env,
    };
    let v2 = dir.join("v2");
    pack::pack(&art.release, &fs::read(&art.stub_gzip)?, &options, &v2)?;
    Ok((v1, v2))
}

/// Spawn of `start` to the first `200 Ok`, on an empty cache (median of 3).
fn cold_start_ms(dir: &Path, bundle: &Path) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..3 {
        let port = proc::free_port()?;
        let cache = dir.join(format!("cold-cache-{i}"));
        let mut cmd = Command::new(bundle);
        cmd.args(["start", "--", "--bind", "127.0.0.1"])
            .env("SYDNEY_BUNDLE_DIR", &cache)
            .env("PORT", port.to_string())
            .env_remove("SYDNEY_BUNDLE_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let start = Instant::now();
        let mut group = Group::spawn(&mut cmd)?;
        let took = proc::wait_for_ok(&mut group, port, start, Duration::from_secs(10))?;
        times.push(took.as_secs_f64() * 1e3);
    }
    Ok(table::median(&times))
}

/// One wrk run against a `daemon` instance of `v1` while `switches`
/// upgrades (or stop-then-starts) alternate v2, v1, ... back to back.
fn measure(
    wrk: &Path,
    dir: &Path,
    v1: &Path,
    v2: &Path,
    switches: usize,
    how: Switch,
    plan: &Plan,
) -> Result<Run> {
    let run_dir = dir.join(match (how, switches) {
        (_, 0) => "baseline",
        (Switch::Handover, _) => "handover",
        (Switch::StopThenStart, _) => "stop-then-start",
    });
    fs::create_dir_all(&run_dir)?;
    let app = run_dir.join("app");
    fs::copy(v1, &app)?;
    let port = proc::free_port()?;
    let instance = Instance {
        app: app.clone(),
        cache: run_dir.join("cache"),
        port,
        listen: how == Switch::Handover,
        log: run_dir.join("commands.log"),
    };
    instance.run(&["daemon", "--", "--bind", "127.0.0.1"])?;
    let result = (|| {
        // The switches are spread over the wrk run (the first 90% of it),
        // so that its p99 is a figure "during upgrades"; one that takes
        // longer than its slot delays the next.
        let seconds = plan.wrk_seconds as usize;
        let started = Instant::now();
        let mut load = spawn_wrk(wrk, port, seconds, &run_dir)?;
        let slot = Duration::from_secs(seconds as u64) * 9 / 10 / (switches.max(1) as u32);
        let mut serving_ms = Vec::new();
        for i in 0..switches {
            let due = started + slot * (i as u32) + slot / 2;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let next = if i % 2 == 0 { v2 } else { v1 };
            serving_ms.push(instance.switch(next, how)?);
        }
        let status = load.wait()?;
        let out = fs::read_to_string(run_dir.join("wrk.out"))?;
        if !status.success() {
            bail!("wrk failed ({status}): {out}");
        }
        let (requests, failed, failures, p99_ms) =
            parse(&out).with_context(|| format!("unexpected wrk output: {out}"))?;
        Ok(Run {
            switches,
            requests,
            failed,
            failures,
            p99_ms,
            serving_ms,
        })
    })();
    let _ = instance.run(&["stop", "--timeout", "5"]);
    result
}

struct Instance {
    app: PathBuf,
    cache: PathBuf,
    port: u16,
    listen: bool,
    log: PathBuf,
}

impl Instance {
    fn command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(&self.app);
        cmd.args(args)
            .env("SYDNEY_BUNDLE_DIR", &self.cache)
            .env("PORT", self.port.to_string())
            .env(
                "SYDNEY_BUNDLE_LISTEN",
                if self.listen {
                    "tcp:127.0.0.1:$PORT"
                } else {
                    ""
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::options().create(true).append(true).open(&self.log)?);
        Ok(cmd)
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let status = self.command(args)?.status()?;
        if !status.success() {
            bail!(
                "`{} {}` failed ({status}); see {}",
                self.app.display(),
                args.join(" "),
                self.log.display()
            );
        }
        Ok(())
    }

    fn pid(&self) -> Option<String> {
        fs::read_to_string(self.cache.join("state/sydney/pid"))
            .ok()
            .and_then(|text| text.split_whitespace().next().map(str::to_owned))
    }

    /// Switches to `next`; returns ms from the command's start until the
    /// pidfile names a new server and that port answers `200 Ok`.
    fn switch(&self, next: &Path, how: Switch) -> Result<f64> {
        let before = self.pid();
        let start = Instant::now();
        let mut child: Child = match how {
            Switch::Handover => self
                .command(&["upgrade", &next.display().to_string()])?
                .spawn()?,
            Switch::StopThenStart => {
                self.run(&["stop", "--timeout", "5"])?;
                fs::copy(next, &self.app)?;
                self.command(&["daemon", "--", "--bind", "127.0.0.1"])?
                    .spawn()?
            }
        };
        let mut serving = None;
        let deadline = start + Duration::from_secs(60);
        loop {
            if serving.is_none() {
                let now = self.pid();
                if now.is_some() && now != before && proc::get_ok(self.port).unwrap_or(false) {
                    serving = Some(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "switching to {} failed ({status}); see {}",
                        next.display(),
                        self.log.display()
                    );
                }
                if serving.is_some() {
                    break;
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("switching to {} took over 60 s", next.display());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        child.wait()?;
        serving.context("the new version never served")
    }
}

fn spawn_wrk(wrk: &Path, port: u16, seconds: usize, dir: &Path) -> Result<Child> {
    Ok(Command::new(wrk)
        .args(["-t1", "-c64", &format!("-d{seconds}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("wrk.out"))?)
        .stderr(Stdio::null())
        .spawn()?)
}

/// `(requests, failed, failure lines, p99 ms)` from wrk's `--latency` report.
fn parse(out: &str) -> Option<(u64, u64, Vec<String>, f64)> {
    let mut requests = None;
    let mut p99 = None;
    let mut failed = 0;
    let mut lines = Vec::new();
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("99%") {
            p99 = super::server::duration_ms(rest.trim());
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next()?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 0"
            failed += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
            lines.push(line.to_owned());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            failed += rest.trim().parse::<u64>().ok()?;
            lines.push(line.to_owned());
        }
    }
    Some((requests?, failed, lines, p99?))
}

fn report(
    switches: usize,
    cold_ms: f64,
    baseline: &Run,
    handover: &Run,
    stop_start: &Run,
) -> Section {
    let mut table = Table::new(
        format!(
            "Zero-downtime upgrades: wrk -t1 -c64 on loopback, {switches} switches alternating \
             two versions"
        ),
        &[
            "switch",
            ">requests",
            ">failed",
            ">p99 ms",
            ">p99 vs none",
            ">to new version serving, median (max) ms",
            ">vs cold start",
            "goal",
            "result",
        ],
    );
    let mut json = Vec::new();
    for (label, run) in [
        ("none (baseline)", baseline),
        ("upgrade (handover)", handover),
        ("stop-then-start", stop_start),
    ] {
        let p99_ratio = run.p99_ms / baseline.p99_ms;
        let serving = (!run.serving_ms.is_empty()).then(|| table::median(&run.serving_ms));
        let serving_ratio = serving.map(|s| s / cold_ms);
        let ours = std::ptr::eq(run, handover);
        let met = run.failed == 0 && p99_ratio <= 2.0 && serving_ratio.is_some_and(|r| r <= 2.0);
        table.row(vec![
            label.into(),
            run.requests.to_string(),
            run.failed.to_string(),
            table::ms(run.p99_ms),
            table::ratio(p99_ratio),
            serving.map_or("-".into(), |s| {
                format!(
                    "{} ({})",
                    table::ms(s),
                    table::ms(table::max(&run.serving_ms))
                )
            }),
            serving_ratio.map_or("-".into(), table::ratio),
            if ours {
                "0 failed; p99 <= 2x; serving <= 2x cold start"
            } else {
                "-"
            }
            .into(),
            if ours {
                table::verdict(met).into()
            } else {
                "-".into()
            },
        ]);
        json.push(Json::obj([
            ("switch", Json::from(label)),
            ("switches", Json::from(run.switches as f64)),
            ("requests", Json::from(run.requests as f64)),
            ("failed", Json::from(run.failed as f64)),
            (
                "failure_lines",
                Json::Arr(
                    run.failures
                        .iter()
                        .map(|l| Json::from(l.as_str()))
                        .collect(),
                ),
            ),
            ("p99_ms", Json::from(run.p99_ms)),
            ("serving_ms", Json::nums(&run.serving_ms)),
        ]));
    }
    table.note(format!(
        "Cold start (spawn of `start` on an empty cache to the first `200 Ok`, median of 3): \
         {} ms. \"To new version serving\": from running the command until the pidfile names a \
         new server and the port answers; for an upgrade the command itself returns later, \
         once the old server has drained.",
        table::ms(cold_ms)
    ));
    Section {
        key: "upgrades",
        tables: vec![table],
        json: Json::obj([
            ("cold_start_ms", Json::from(cold_ms)),
            ("runs", Json::Arr(json)),
        ]),
        failures: Vec::new(),
        svgs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_failures_and_p99() {
        let out = "  Latency Distribution\n     99%    1.20ms\n  \
                   5000 requests in 3.00s, 1.00MB read\n  \
                   Socket errors: connect 2, read 3, write 0, timeout 1\n  \
                   Non-2xx or 3xx responses: 4\nRequests/sec: 1666.00\n";
        let (requests, failed, lines, p99) = parse(out).unwrap();
        assert_eq!((requests, failed, lines.len()), (5000, 10, 2));
        assert!((p99 - 1.2).abs() < 1e-9);
    }
}
