//! Large payloads: packing a synthetic release and extracting it cold with
//! the bundle's `extract` command vs GNU tar, and the stub's peak memory.
//!
//! A full run times packing with an optimised build of this xtask (its
//! `pack` command, the same code as `cargo xtask pack`); `--quick` uses the
//! running dev build (codecs at opt-level 3, about 1.4x slower overall) so
//! that CI does not spend a minute and a half building a second xtask.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use bundle_format::Codec;
use bundle_format::codec::default_level_for;

use super::json::Json;
use super::proc::{self, Finished};
use super::svg::{Bar, Panel};
use super::synth::{self, Synthetic};
use super::table::{self, Table};
use super::{Artifacts, Plan, Section, tools};
use crate::util::{self, command};

/// Peak RSS goal for the stub while extracting, KiB (16 MiB).
const RSS_GOAL_KIB: u64 = 16 << 10;

/// The level GNU tar's compressor uses by default (gzip 6, zstd 3).
fn tar_level(codec: Codec) -> u32 {
    match codec {
        Codec::Gzip => 6,
        Codec::Zstd => 3,
    }
}

/// One packing measurement.
#[derive(Debug)]
struct Pack {
    label: String,
    codec: Codec,
    level: u32,
    ours: bool,
    /// Seconds, output bytes and peak RSS (KiB).
    result: Result<(f64, u64, u64), String>,
}

/// One extraction variant and its runs.
#[derive(Debug)]
struct Extract {
    label: &'static str,
    slug: &'static str,
    ours: bool,
    /// The bundle or archive it reads.
    input: Option<PathBuf>,
    codec: Codec,
    seconds: Vec<f64>,
    rss_kib: Vec<u64>,
    error: Option<String>,
}

/// Packs and extracts the synthetic release of `plan.large_mib` MiB.
pub fn run(plan: &Plan, art: &Artifacts) -> Result<Section> {
    for program in ["tar", "gzip", "zstd", "sync", "time"] {
        tools::path(program)?;
    }
    let tree = synth::ensure(&art.dir, plan.large_mib, &art.release.join("bin/sydney"))?;
    let work = art.dir.join("large");
    super::trash(art, &work)?;
    fs::create_dir_all(&work)?;
    let xtask = if plan.quick {
        std::env::current_exe().context("cannot find this xtask")?
    } else {
        optimised_xtask(&art.dir)?
    };
    let result = measure(plan, art, &tree, &work, &xtask);
    // Moved aside, not deleted: see `super::trash`.
    super::trash(art, &work)?;
    let (packs, extracts) = result?;
    Ok(report(plan, &tree, &packs, &extracts))
}

fn measure(
    plan: &Plan,
    art: &Artifacts,
    tree: &Synthetic,
    work: &Path,
    xtask: &Path,
) -> Result<(Vec<Pack>, Vec<Extract>)> {
    eprintln!(
        "bench: packing {} ({} files, {} bytes)",
        tree.dir.display(),
        tree.files,
        util::grouped(tree.bytes)
    );
    let mut packs = Vec::new();
    let mut inputs = Vec::new();
    for codec in [Codec::Gzip, Codec::Zstd] {
        let default_level = default_level_for(codec, tree.bytes);
        for level in [default_level, tar_level(codec)] {
            let out = work.join(format!("large-{codec}-{level}.bundle"));
            let mut cmd = Command::new(xtask);
            cmd.arg("pack")
                .arg(&tree.dir)
                .args(["--entry", "bin/sydney", "--name", "large", "--version", "1"])
                .arg("--out")
                .arg(&out)
                .args(["--codec", codec.name(), "--level", &level.to_string()])
                .arg("--stub")
                .arg(art.stub(codec));
            let default = level == default_level;
            let label = format!(
                "xtask pack, {codec} {level}{}",
                if default { " (default)" } else { "" }
            );
            let result = timed(&cmd, &out, work);
            if default {
                inputs.push(result.is_ok().then(|| out.clone()));
            }
            packs.push(Pack {
                label,
                codec,
                level,
                ours: true,
                result,
            });
        }
        let out = work.join(match codec {
            Codec::Gzip => "large.tar.gz",
            Codec::Zstd => "large.tar.zst",
        });
        let mut cmd = Command::new("tar");
        cmd.arg("-C").arg(&tree.dir);
        match codec {
            Codec::Gzip => cmd.arg("-czf"),
            Codec::Zstd => cmd.args(["--zstd", "-cf"]),
        };
        cmd.arg(&out).arg(".");
        let result = timed(&cmd, &out, work);
        inputs.push(result.is_ok().then(|| out.clone()));
        packs.push(Pack {
            label: format!(
                "tar {} ({codec} {})",
                match codec {
                    Codec::Gzip => "-czf",
                    Codec::Zstd => "--zstd -cf",
                },
                tar_level(codec)
            ),
            codec,
            level: tar_level(codec),
            ours: false,
            result,
        });
    }

    let [bundle_gzip, tar_gzip, bundle_zstd, tar_zstd] =
        <[_; 4]>::try_from(inputs).map_err(|_| anyhow::anyhow!("expected four packed inputs"))?;
    let mut extracts = vec![
        Extract::new(
            "bundle extract (gzip)",
            "bundle-gzip",
            true,
            bundle_gzip,
            Codec::Gzip,
        ),
        Extract::new("tar -xzf", "tar-gzip", false, tar_gzip, Codec::Gzip),
        Extract::new(
            "bundle extract (zstd)",
            "bundle-zstd",
            true,
            bundle_zstd,
            Codec::Zstd,
        ),
        Extract::new("tar --zstd -xf", "tar-zstd", false, tar_zstd, Codec::Zstd),
    ];
    // Round 0 is an untimed warm-up. Every run unpacks into a directory of
    // its own, kept until the section ends (see `super::trash`).
    let outputs = work.join("out");
    fs::create_dir_all(&outputs)?;
    for round in 0..=plan.extract_runs {
        eprintln!(
            "bench: cold extraction, {}",
            if round == 0 {
                "warm-up round".to_owned()
            } else {
                format!("round {round} of {}", plan.extract_runs)
            }
        );
        for extract in extracts.iter_mut().filter(|e| e.error.is_none()) {
            let out = outputs.join(format!("{}-{round}", extract.slug));
            match extract.once(&out, work) {
                Ok(done) if round > 0 => {
                    extract.seconds.push(done.elapsed.as_secs_f64());
                    extract.rss_kib.push(done.max_rss_kib);
                }
                Ok(_) => {}
                Err(err) => extract.error = Some(format!("{err:#}")),
            }
        }
    }
    Ok((packs, extracts))
}

impl Extract {
    fn new(
        label: &'static str,
        slug: &'static str,
        ours: bool,
        input: Option<PathBuf>,
        codec: Codec,
    ) -> Extract {
        Extract {
            label,
            slug,
            ours,
            error: input
                .is_none()
                .then(|| "its input could not be packed".to_owned()),
            input,
            codec,
            seconds: Vec::new(),
            rss_kib: Vec::new(),
        }
    }

    /// One cold extraction into the new directory `out`, after a `sync`
    /// so that earlier writeback does not count.
    fn once(&self, out: &Path, scratch: &Path) -> Result<Finished> {
        let input = self.input.as_ref().context("no input")?;
        let cmd = if self.ours {
            let mut cmd = Command::new(input);
            cmd.arg("extract").arg(out);
            cmd
        } else {
            fs::create_dir(out)?;
            let mut cmd = Command::new("tar");
            match self.codec {
                Codec::Gzip => cmd.arg("-xzf"),
                Codec::Zstd => cmd.args(["--zstd", "-xf"]),
            };
            cmd.arg(input).arg("-C").arg(out);
            cmd
        };
        sync()?;
        let done = proc::measure_ok(&cmd, scratch)?;
        if !out.join("bin/sydney").is_file() {
            bail!("{} left no bin/sydney in {}", self.label, out.display());
        }
        Ok(done)
    }

    fn median(&self) -> f64 {
        table::median(&self.seconds)
    }

    fn max_rss_kib(&self) -> u64 {
        self.rss_kib.iter().copied().max().unwrap_or(0)
    }
}

/// Runs a packing command after a `sync`: its time, output size and peak
/// RSS.
fn timed(cmd: &Command, out: &Path, scratch: &Path) -> Result<(f64, u64, u64), String> {
    let run = || -> Result<(f64, u64, u64)> {
        sync()?;
        let done = proc::measure_ok(cmd, scratch)?;
        Ok((
            done.elapsed.as_secs_f64(),
            fs::metadata(out)?.len(),
            done.max_rss_kib,
        ))
    };
    run().map_err(|err| format!("{err:#}"))
}

fn sync() -> Result<()> {
    let status = command("sync").status().context("cannot run sync")?;
    if !status.success() {
        bail!("sync failed ({status})");
    }
    Ok(())
}

/// Builds this xtask with optimisations (once; cargo reuses it after) in a
/// target directory of its own, so it disturbs no other build.
fn optimised_xtask(bench_dir: &Path) -> Result<PathBuf> {
    let target_dir = bench_dir.join("xtask-build");
    util::run(
        command(util::cargo())
            .args(["build", "--quiet", "--locked", "--release", "-p", "xtask"])
            .arg("--target-dir")
            .arg(&target_dir)
            // Optimised code is what counts here, not the last per cent:
            // skip fat LTO to keep this one-off build short.
            .args(["--config", "profile.release.lto=false"])
            .args(["--config", "profile.release.codegen-units=16"]),
    )
    .context("cannot build an optimised xtask to time packing with")?;
    Ok(target_dir.join("release").join("xtask"))
}

fn report(plan: &Plan, tree: &Synthetic, packs: &[Pack], extracts: &[Extract]) -> Section {
    let mb = tree.bytes as f64 / 1e6;
    let mut failures = Vec::new();
    let what = format!(
        "{} MiB synthetic release: {} files, {} bytes, half text, half random",
        plan.large_mib,
        tree.files,
        util::grouped(tree.bytes)
    );

    let mut pack_table = Table::new(
        format!("Packing a {what}"),
        &[
            "packer",
            ">seconds",
            ">MB/s",
            ">output bytes",
            ">output/input",
            "goal",
        ],
    );
    let mut pack_bars = Vec::new();
    let mut pack_json = Vec::new();
    for pack in packs {
        match &pack.result {
            Ok((seconds, bytes, rss)) => {
                pack_table.row(vec![
                    pack.label.clone(),
                    table::secs(*seconds),
                    table::num1(mb / seconds),
                    util::grouped(*bytes),
                    format!("{:.3}", *bytes as f64 / tree.bytes as f64),
                    "-".into(),
                ]);
                pack_bars.push(Bar {
                    label: pack.label.clone(),
                    value: mb / seconds,
                    range: None,
                    text: format!("{} MB/s", table::num1(mb / seconds)),
                    ours: pack.ours,
                });
                pack_json.push(Json::obj([
                    ("packer", Json::from(pack.label.as_str())),
                    ("codec", Json::from(pack.codec.name())),
                    ("level", Json::from(u64::from(pack.level))),
                    ("seconds", Json::from(*seconds)),
                    ("mb_per_s", Json::from(mb / seconds)),
                    ("output_bytes", Json::from(*bytes)),
                    ("peak_rss_kib", Json::from(*rss)),
                ]));
            }
            Err(err) => {
                super::report_unmeasured(
                    "large payloads",
                    ("packer", &pack.label),
                    err,
                    &mut pack_table,
                    &mut failures,
                    &mut pack_json,
                );
            }
        }
    }
    pack_table.note(
        "One run each, after a `sync`. xtask pack is timed as an optimised build in a full run, \
         as the dev build with --quick (see \
         docs/BENCHMARKS.md); GNU tar runs its compressor at its default level (gzip 6, \
         zstd 3). MB/s = input file bytes / 10^6 / seconds.",
    );

    let speed = |label: &str| {
        extracts
            .iter()
            .find(|e| e.label == label && e.error.is_none() && !e.seconds.is_empty())
            .map_or(f64::NAN, |e| mb / e.median())
    };
    let tar_gzip = speed("tar -xzf");
    let tar_zstd = speed("tar --zstd -xf");
    let mut table = Table::new(
        format!("Cold extraction of the {} MiB release", plan.large_mib),
        &[
            "extractor",
            ">median s",
            ">MB/s",
            ">peak RSS MiB",
            ">vs tar -xzf",
            ">vs tar --zstd",
            "goal",
            "result",
        ],
    );
    let mut bars = Vec::new();
    let mut json = Vec::new();
    for extract in extracts {
        if let Some(err) = &extract.error {
            super::report_unmeasured(
                "large payloads",
                ("extractor", extract.label),
                err,
                &mut table,
                &mut failures,
                &mut json,
            );
            continue;
        }
        let rate = mb / extract.median();
        let rss = extract.max_rss_kib();
        let goal = extract.ours.then_some(match extract.codec {
            Codec::Gzip => ("speed >= 1x tar -xzf, RSS <= 16 MiB", 1.0),
            Codec::Zstd => ("speed >= 2x tar -xzf, RSS <= 16 MiB", 2.0),
        });
        let (goal_text, result, met) = match goal {
            Some((text, factor)) => {
                let fast = rate >= factor * tar_gzip;
                let small = rss <= RSS_GOAL_KIB;
                let result = match (fast, small) {
                    (true, true) => "met".to_owned(),
                    (false, true) => format!("missed (speed {})", table::ratio(rate / tar_gzip)),
                    (true, false) => "missed (RSS)".to_owned(),
                    (false, false) => "missed (speed and RSS)".to_owned(),
                };
                (text, result, Json::from(fast && small))
            }
            None => ("-", "-".to_owned(), Json::Null),
        };
        table.row(vec![
            extract.label.into(),
            table::secs(extract.median()),
            table::num1(rate),
            table::num1(rss as f64 / 1024.0),
            table::ratio(rate / tar_gzip),
            table::ratio(rate / tar_zstd),
            goal_text.into(),
            result,
        ]);
        bars.push(Bar {
            label: extract.label.into(),
            value: rate,
            range: None,
            text: format!(
                "{} MB/s, {} MiB RSS",
                table::num1(rate),
                table::num1(rss as f64 / 1024.0)
            ),
            ours: extract.ours,
        });
        json.push(Json::obj([
            ("extractor", Json::from(extract.label)),
            ("codec", Json::from(extract.codec.name())),
            ("median_s", Json::from(extract.median())),
            ("mb_per_s", Json::from(rate)),
            ("peak_rss_kib", Json::from(rss)),
            ("ratio_to_tar_xzf", Json::from(rate / tar_gzip)),
            ("ratio_to_tar_zstd", Json::from(rate / tar_zstd)),
            ("goal_met", met),
            ("runs_s", Json::nums(&extract.seconds)),
            (
                "runs_rss_kib",
                Json::Arr(extract.rss_kib.iter().map(|&k| Json::from(k)).collect()),
            ),
        ]));
    }
    table.note(format!(
        "{} timed runs each after an untimed warm-up round, interleaved; median shown. Each \
         run unpacks into a new directory after a `sync`; the input stays in the page cache \
         (cold means no extracted tree, not a cold disk). Peak RSS from GNU time: the \
         program's own (for tar, its compressor child included). The bundles are packed at the \
         default levels for this size (gzip {}, zstd {}), tar's archives at tar's. Both goals \
         are read against GNU tar with gzip (the seed's way); the ratio to tar --zstd is shown \
         too.",
        plan.extract_runs,
        default_level_for(Codec::Gzip, tree.bytes),
        default_level_for(Codec::Zstd, tree.bytes)
    ));

    let chart = super::svg::chart(
        &format!(
            "Large payloads: a {} MiB synthetic release, {} files",
            plan.large_mib, tree.files
        ),
        &[
            Panel {
                title: "Cold extraction, MB/s (higher is better)".into(),
                unit: "".into(),
                log: false,
                bars,
            },
            Panel {
                title: "Packing, MB/s (log scale)".into(),
                unit: "".into(),
                log: true,
                bars: pack_bars,
            },
        ],
    );
    Section {
        key: "large",
        tables: vec![pack_table, table],
        json: Json::obj([
            ("tree", Json::from(tree.dir.display().to_string())),
            ("tree_mib", Json::from(plan.large_mib)),
            ("files", Json::from(tree.files)),
            ("bytes", Json::from(tree.bytes)),
            ("rss_goal_kib", Json::from(RSS_GOAL_KIB)),
            ("pack", Json::Arr(pack_json)),
            ("extract", Json::Arr(json)),
        ]),
        failures,
        svgs: vec![("large.svg", chart)],
    }
}
