//! Portable mix release (issue 14): a real `mix release` built here
//! (`mixrel.rs`), packed with `--portable` and zstd as `sydney-pack` does,
//! against the seed's tar trick and the release run directly.
//!
//! - size of the portable bundle;
//! - spawn to the first `200 Ok` (the start-up section's method and
//!   runner): the release run directly, the bundle warm and cold, and the
//!   tar trick on the same release, interleaved in the same run;
//! - what the patching adds to a cold extraction: the stub's `extract` of
//!   the portable bundle timed whole, and the patch step alone
//!   (`bundle_format::portable::apply`, the function the stub calls) timed
//!   in this process on a freshly unpacked copy of the same payload.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bundle_format::portable_pack::PortableOptions;
use bundle_format::{Bundle, Codec};

use super::json::Json;
use super::startup::{self, Reset, Variant};
use super::svg::Panel;
use super::table::{self, Table};
use super::{Artifacts, Plan, Section, mixrel, proc, tools};
use crate::util::{self, command};

/// Size goal for the portable zstd bundle: 10 MB (decimal, as issue 14 and
/// decision 0060 count it).
const SIZE_GOAL: u64 = 10_000_000;

/// Cold start goal: at most this times the tar trick's median.
const COLD_GOAL: f64 = 1.0;

/// Warm start goal: at most this times the release run directly.
const WARM_GOAL: f64 = 1.05;

/// Patching goal: less than this share of the cold extraction.
const PATCH_GOAL: f64 = 0.05;

/// What the section's tables are titled after.
const SECTION: &str = "portable mix release";

/// The measured pieces; each row reports its own failure.
struct Measured {
    release: PathBuf,
    bundle: Result<Packed, String>,
    tgz_bytes: Result<u64, String>,
    variants: Vec<Variant>,
    extraction: Result<Extraction, String>,
}

struct Packed {
    path: PathBuf,
    bytes: u64,
    carried: String,
}

/// Milliseconds per run, interleaved.
struct Extraction {
    /// The stub's `extract DIR` of the portable bundle, spawn to exit.
    extract_ms: Vec<f64>,
    /// `portable::apply` on a fresh unpack of the same payload.
    patch_ms: Vec<f64>,
    /// The tar trick's own step, `tar -xzf release.tar.gz` into a new
    /// directory (for context: the rest of both cold starts is the same
    /// release booting).
    tar_ms: Vec<f64>,
    /// Placeholders written per run.
    patches: usize,
}

pub fn run(plan: &Plan, art: &Artifacts) -> Result<Section> {
    let dir = art.dir.join("portable");
    super::trash(art, &dir)?;
    fs::create_dir_all(&dir)?;
    let measured = match mixrel::ensure(&art.dir) {
        Ok(release) => measure(plan, art, &dir, release),
        // Every row then says why it was not measured.
        Err(err) => Ok(Measured::unbuilt(&err)),
    };
    super::trash(art, &dir)?;
    Ok(report(plan, &measured?))
}

impl Measured {
    fn unbuilt(err: &anyhow::Error) -> Measured {
        let why = format!("no mix release: {err:#}");
        let failed = |name| Variant::failed(name, &anyhow::anyhow!("{why}"));
        Measured {
            release: PathBuf::new(),
            bundle: Err(why.clone()),
            tgz_bytes: Err(why.clone()),
            variants: vec![
                failed("release, run directly"),
                failed("portable bundle, warm"),
                failed("portable bundle, cold"),
                failed("tar trick"),
            ],
            extraction: Err(why),
        }
    }
}

fn measure(plan: &Plan, art: &Artifacts, dir: &Path, release: PathBuf) -> Result<Measured> {
    let bundle = pack_portable(art, &release).map_err(|err| format!("{err:#}"));
    let tgz = dir.join("release.tar.gz");
    let tgz_bytes = tar_gz(&release, &tgz).map_err(|err| format!("{err:#}"));

    let runs = dir.join("runs");
    fs::create_dir_all(&runs)?;
    // The stub wants its cache roots owned by us and private.
    fs::set_permissions(&runs, fs::Permissions::from_mode(0o700))?;
    let mut variants = Vec::new();
    let mut direct = Variant::new("release, run directly", release.join("bin/hello"), false);
    direct.args = vec!["start".into()];
    // `start` writes its runtime config into RELEASE_TMP, by default the
    // release's own `tmp/`: kept out of the folder that is packed and
    // archived (the bundle sets it to its state directory likewise).
    direct.env.push(("RELEASE_TMP", runs.join("direct-tmp")));
    variants.push(direct);
    match &bundle {
        Ok(packed) => {
            let mut warm = Variant::new("portable bundle, warm", packed.path.clone(), true);
            warm.args = vec!["start".into()];
            warm.env.push(("SYDNEY_BUNDLE_DIR", runs.join("warm")));
            variants.push(warm);
            let mut cold = Variant::new("portable bundle, cold", packed.path.clone(), true);
            cold.args = vec!["start".into()];
            cold.reset = Reset::Fresh {
                var: "SYDNEY_BUNDLE_DIR",
                parent: runs.join("cold"),
                create: false,
            };
            variants.push(cold);
        }
        Err(err) => {
            let err = anyhow::anyhow!("the portable bundle could not be packed: {err}");
            variants.push(Variant::failed("portable bundle, warm", &err));
            variants.push(Variant::failed("portable bundle, cold", &err));
        }
    }
    let trick = match &tgz_bytes {
        Ok(_) => startup::tar_trick(
            "tar trick",
            &tgz,
            "bin/hello",
            &dir.join("tar-trick"),
            &runs.join("tar-trick"),
        ),
        Err(err) => Err(anyhow::anyhow!("no release.tar.gz: {err}")),
    };
    let mut trick = trick.unwrap_or_else(|err| Variant::failed("tar trick", &err));
    trick.args = vec!["start".into()];
    variants.push(trick);
    for variant in &mut variants {
        variant.port_env = Some("PORT");
        // Distribution off (no epmd left running after the bench, no node
        // names shared between runs); the same for every variant.
        variant
            .env
            .push(("RELEASE_DISTRIBUTION", PathBuf::from("none")));
    }
    eprintln!(
        "bench: portable mix release start-up, {} variants, {} timed rounds",
        variants.len(),
        plan.mix_startup_runs
    );
    startup::measure(
        plan.mix_startup_runs,
        &mut variants,
        &dir.join("last-run.stderr"),
    );

    let extraction = match &bundle {
        Ok(packed) => extraction(plan, &packed.path, &tgz, &dir.join("extract")),
        Err(err) => Err(format!("the portable bundle could not be packed: {err}")),
    };
    Ok(Measured {
        release,
        bundle,
        tgz_bytes,
        variants,
        extraction,
    })
}

/// Packs `release` as `sydney-pack --portable --codec zstd` would (the
/// inferred mix release defaults: entry, `start`, RELEASE_TMP), with the
/// zstd stub, into `target/bench/mix/hello-portable`. Packing at zstd 19
/// takes half a minute on a loaded 2-core machine, so the bundle is kept
/// until the release (`mixrel.rs` empties the folder when it rebuilds),
/// the stub or this xtask binary changes.
fn pack_portable(art: &Artifacts, release: &Path) -> Result<Packed> {
    tools::path("busybox")?;
    let out = art.dir.join("mix").join("hello-portable");
    let key_file = art.dir.join("mix").join("hello-portable.built-from");
    let stub = fs::read(art.stub(Codec::Zstd))?;
    // The stub is copied anew by every build (a new mtime), so it is
    // compared by content, with the stub at the front of the kept bundle.
    let stamp = |path: &Path| -> Result<String> {
        let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(format!(
            "{} {} {:?}",
            path.display(),
            meta.len(),
            meta.modified()?
        ))
    };
    let key = format!(
        "{}\n{}\n",
        stamp(&std::env::current_exe()?)?,
        stamp(&release.join("bin/hello"))?
    );
    let kept = fs::read(&out).ok().filter(|bytes| {
        fs::read_to_string(&key_file).is_ok_and(|k| k == key)
            && Bundle::open(bytes).is_ok_and(|b| b.stub() == stub.as_slice())
    });
    let bytes = match kept {
        Some(bytes) => {
            eprintln!(
                "bench: reusing {} (same release, stub and xtask)",
                out.display()
            );
            bytes
        }
        None => {
            let _ = fs::remove_file(&key_file);
            pack_fresh(release, &stub, &out)?;
            fs::write(&key_file, key)?;
            fs::read(&out)?
        }
    };
    let carried = Bundle::open(&bytes)?
        .manifest()
        .build_value(bundle_format::portable::BUILD_KEY)
        .unwrap_or_default()
        .to_owned();
    Ok(Packed {
        path: out,
        bytes: bytes.len() as u64,
        carried,
    })
}

fn pack_fresh(release: &Path, stub: &[u8], out: &Path) -> Result<()> {
    let request = sydney_pack::Request {
        codec: Some(Codec::Zstd),
        mtime: util::source_date_epoch()?,
        portable: Some(PortableOptions::default()),
        ..Default::default()
    };
    let planned = sydney_pack::plan(release, &request)
        .with_context(|| format!("cannot plan packing {}", release.display()))?;
    eprintln!("bench: packing {} --portable", release.display());
    sydney_pack::pack_folder(release, stub, &planned.options, out, None, &mut |_| {})
        .with_context(|| format!("cannot pack {}", release.display()))?;
    Ok(())
}

/// The seed's archive: the release as tar.gz (gzip -9), as the start-up
/// section makes it for sydney.
fn tar_gz(release: &Path, out: &Path) -> Result<u64> {
    let gzip = tools::path("gzip")?;
    let mut tar = command(tools::path("tar")?)
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .args(["--mtime=@0", "-C"])
        .arg(release)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let tar_out = tar.stdout.take().context("tar has no stdout")?;
    let status = command(gzip)
        .args(["-9", "-n"])
        .stdin(tar_out)
        .stdout(File::create(out)?)
        .status()?;
    if !tar.wait()?.success() || !status.success() {
        bail!("tar | gzip of {} failed", release.display());
    }
    Ok(fs::metadata(out)?.len())
}

/// Interleaved: one `extract` by the stub (spawn to exit), one fresh
/// unpack in this process (untimed) and its patch step (timed), and one
/// `tar -xzf` of the release (spawn to exit).
fn extraction(plan: &Plan, bundle: &Path, tgz: &Path, dir: &Path) -> Result<Extraction, String> {
    let inner = || -> Result<Extraction> {
        fs::create_dir_all(dir)?;
        let bytes = fs::read(bundle)?;
        let opened = Bundle::open(&bytes)?;
        let mut extract_ms = Vec::new();
        let mut patch_ms = Vec::new();
        let mut tar_ms = Vec::new();
        let mut patches = 0;
        let tar = tools::path("tar")?;
        eprintln!(
            "bench: portable extraction and patching, {} timed rounds",
            plan.mix_extract_runs
        );
        // Round 0 is a warm-up (page cache, first run of the stub).
        for round in 0..=plan.mix_extract_runs {
            let out = dir.join(format!("stub-{round}"));
            let mut cmd = command(bundle);
            cmd.arg("extract")
                .arg(&out)
                .env_remove("SYDNEY_BUNDLE_DIR")
                .env_remove("SYDNEY_BUNDLE_STATE_DIR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(dir.join("extract.stderr"))?);
            let start = Instant::now();
            let status = cmd.status().context("cannot run the bundle's extract")?;
            let elapsed = start.elapsed();
            if !status.success() {
                let stderr = fs::read_to_string(dir.join("extract.stderr")).unwrap_or_default();
                bail!("`extract` failed ({status}): {}", proc::tail(&stderr));
            }

            let unpacked = dir.join(format!("unpacked-{round}"));
            fs::create_dir(&unpacked)?;
            opened.unpack_verified(&unpacked)?;
            let tree = unpacked
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", unpacked.display()))?;
            let start = Instant::now();
            patches = bundle_format::portable::apply(&unpacked, &tree)?;
            let patched = start.elapsed();

            let untarred = dir.join(format!("tar-{round}"));
            fs::create_dir(&untarred)?;
            let mut cmd = command(&tar);
            cmd.arg("-xzf").arg(tgz).arg("-C").arg(&untarred);
            let start = Instant::now();
            let status = cmd.status().context("cannot run tar")?;
            let tar_elapsed = start.elapsed();
            if !status.success() {
                bail!("`tar -xzf {}` failed ({status})", tgz.display());
            }
            if round > 0 {
                extract_ms.push(elapsed.as_secs_f64() * 1e3);
                patch_ms.push(patched.as_secs_f64() * 1e3);
                tar_ms.push(tar_elapsed.as_secs_f64() * 1e3);
            }
        }
        Ok(Extraction {
            extract_ms,
            patch_ms,
            tar_ms,
            patches,
        })
    };
    inner().map_err(|err| format!("{err:#}"))
}

fn report(plan: &Plan, m: &Measured) -> Section {
    let mut failures = Vec::new();
    let mut goals = Table::new(
        "Portable mix release: goals (issue 14)",
        &["figure", ">value", "goal", "result"],
    );
    let mut goal_rows = Vec::new();
    // Size.
    let size_label = "portable bundle, zstd";
    match &m.bundle {
        Ok(packed) => goal_row(
            size_label,
            format!(
                "{} B ({:.2} MB)",
                util::grouped(packed.bytes),
                packed.bytes as f64 / 1e6
            ),
            "<= 10 MB",
            packed.bytes as f64 / SIZE_GOAL as f64,
            1.0,
            false,
            (&mut goals, &mut goal_rows),
        ),
        Err(err) => super::report_unmeasured(
            SECTION,
            ("figure", size_label),
            err,
            &mut goals,
            &mut failures,
            &mut goal_rows,
        ),
    }

    // Start-up.
    let median_of = |name: &str| {
        m.variants
            .iter()
            .find(|v| v.name == name && v.error.is_none())
            .map(Variant::median)
    };
    let error_of = |name: &str| {
        m.variants
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.error.clone())
            .unwrap_or_else(|| format!("{name}: not run"))
    };
    let direct = median_of("release, run directly");
    let cold_label = "cold start, spawn to first 200";
    match (median_of("portable bundle, cold"), median_of("tar trick")) {
        (Some(cold), Some(trick)) => goal_row(
            cold_label,
            format!("{} ms vs {} ms", table::ms(cold), table::ms(trick)),
            "<= 1.0x the tar trick",
            cold / trick,
            COLD_GOAL,
            false,
            (&mut goals, &mut goal_rows),
        ),
        (cold, _) => {
            let missing = if cold.is_none() {
                "portable bundle, cold"
            } else {
                "tar trick"
            };
            super::report_unmeasured(
                SECTION,
                ("figure", cold_label),
                &error_of(missing),
                &mut goals,
                &mut failures,
                &mut goal_rows,
            );
        }
    }
    let warm_label = "warm start, spawn to first 200";
    match (median_of("portable bundle, warm"), direct) {
        (Some(warm), Some(direct)) => goal_row(
            warm_label,
            format!("{} ms vs {} ms", table::ms(warm), table::ms(direct)),
            "<= 1.05x the release run directly",
            warm / direct,
            WARM_GOAL,
            false,
            (&mut goals, &mut goal_rows),
        ),
        (warm, _) => {
            let missing = if warm.is_none() {
                "portable bundle, warm"
            } else {
                "release, run directly"
            };
            super::report_unmeasured(
                SECTION,
                ("figure", warm_label),
                &error_of(missing),
                &mut goals,
                &mut failures,
                &mut goal_rows,
            );
        }
    }

    // Patching.
    let patch_label = "patching, share of a cold extraction";
    let mut extraction_json = Json::Null;
    match &m.extraction {
        Ok(ex) => {
            let (patch, extract) = (table::median(&ex.patch_ms), table::median(&ex.extract_ms));
            let share = patch / extract;
            goal_row(
                patch_label,
                format!(
                    "{} ms of {} ms ({:.1}%)",
                    table::ms(patch),
                    table::ms(extract),
                    share * 100.0
                ),
                "< 5%",
                share,
                PATCH_GOAL,
                true,
                (&mut goals, &mut goal_rows),
            );
            extraction_json = Json::obj([
                ("placeholders", Json::from(ex.patches)),
                ("extract_median_ms", Json::from(extract)),
                ("patch_median_ms", Json::from(patch)),
                ("share", Json::from(share)),
                ("tar_xzf_median_ms", Json::from(table::median(&ex.tar_ms))),
                ("extract_runs_ms", Json::nums(&ex.extract_ms)),
                ("patch_runs_ms", Json::nums(&ex.patch_ms)),
                ("tar_xzf_runs_ms", Json::nums(&ex.tar_ms)),
            ]);
        }
        Err(err) => super::report_unmeasured(
            SECTION,
            ("figure", patch_label),
            err,
            &mut goals,
            &mut failures,
            &mut goal_rows,
        ),
    }
    let carried = m.bundle.as_ref().map_or("", |p| p.carried.as_str());
    goals.note(format!(
        "The e2e tests' mix release (tests/fixtures/mix-hello: OTP's gen_tcp answering `Ok`, \
         Debian's Elixir, no hex) built in the bench ({}), packed as `sydney-pack --portable \
         --codec zstd` infers for it (carried: {carried}). MB = 10^6 bytes.",
        m.release.display()
    ));
    if let Ok(bytes) = &m.tgz_bytes {
        goals.note(format!(
            "For context: the same release as tar.gz (gzip -9), the tar trick's archive, is {} B; \
             it runs on glibc >= 2.34 hosts with /bin/sh only.",
            util::grouped(*bytes)
        ));
    }
    goals.note(format!(
        "Patching: the stub's `extract DIR` of the portable bundle (spawn to exit: decode, \
         unpack, verify, patch, rename) is the cold extraction; the patch step alone is \
         `bundle_format::portable::apply` (the function the stub calls) timed in the bench's \
         own process on a fresh unpack of the same payload, interleaved with the extractions, \
         {} timed rounds after one warm-up, medians. It runs in the xtask's dev build (the \
         stub's is optimised), so it errs high.",
        plan.mix_extract_runs
    ));

    // Extraction detail.
    let mut extract_table = Table::new(
        "Portable mix release: cold extraction (ms)",
        &["step", ">median", ">min", ">max"],
    );
    if let Ok(ex) = &m.extraction {
        for (label, runs) in [
            ("stub `extract DIR`, portable bundle (zstd)", &ex.extract_ms),
            ("of which the patch step, timed alone", &ex.patch_ms),
            (
                "`tar -xzf release.tar.gz` (the tar trick's step)",
                &ex.tar_ms,
            ),
        ] {
            extract_table.row(vec![
                label.into(),
                table::ms(table::median(runs)),
                table::ms(table::min(runs)),
                table::ms(table::max(runs)),
            ]);
        }
        extract_table.note(format!(
            "{} placeholders written per extraction; each step into a new directory; the \
             three interleaved, one round each.",
            ex.patches
        ));
    } else if let Err(err) = &m.extraction {
        // Already a failure of the goals table's patching row.
        extract_table.unmeasured("extraction", err);
    }

    // Start-up detail.
    let mut startup = Table::new(
        "Portable mix release: spawn to first `200 Ok` (ms)",
        &["variant", ">median", ">min", ">max", ">vs direct"],
    );
    let mut rows = Vec::new();
    let mut bars = Vec::new();
    for variant in &m.variants {
        if let Some(err) = &variant.error {
            // The goal rows above already fail the run for the variants
            // they compare; this row only shows why.
            startup.unmeasured(variant.name, err);
            rows.push(Json::obj([
                ("variant", Json::from(variant.name)),
                ("error", Json::from(err.as_str())),
            ]));
            continue;
        }
        let median = variant.median();
        let (low, high) = (table::min(&variant.runs), table::max(&variant.runs));
        let direct = direct.unwrap_or(f64::NAN);
        startup.row(vec![
            variant.name.into(),
            table::ms(median),
            table::ms(low),
            table::ms(high),
            table::ratio(median / direct),
        ]);
        bars.push(variant.bar(direct));
        rows.push(variant.json(direct, Json::Null));
    }
    startup.note(format!(
        "The start-up section's runner: {} timed rounds after one warm-up round, interleaved \
         round-robin, `GET /` polled every {} µs, a fresh port per run (PORT=P), each run's \
         process group killed after its 200. Every variant runs `bin/hello start` with \
         RELEASE_DISTRIBUTION=none (no epmd). Cold: a new, empty SYDNEY_BUNDLE_DIR per run. \
         Tar trick: `entrypoint.sh` untars release.tar.gz into a new, empty directory per \
         run, then execs `bin/hello start` (the host's glibc, where the release was built).",
        plan.mix_startup_runs,
        proc::POLL.as_micros()
    ));
    let panel = Panel {
        title: "Portable mix release: spawn to first 200 Ok (median; whiskers min to max)".into(),
        unit: " ms".into(),
        log: false,
        bars,
    };
    Section {
        key: "portable",
        tables: vec![goals, startup, extract_table],
        json: Json::obj([
            ("release", Json::from(m.release.display().to_string())),
            (
                "bundle_bytes",
                m.bundle
                    .as_ref()
                    .map_or(Json::Null, |p| Json::from(p.bytes)),
            ),
            ("carried", Json::from(carried)),
            (
                "release_tgz_bytes",
                m.tgz_bytes.as_ref().map_or(Json::Null, |b| Json::from(*b)),
            ),
            ("goals", Json::Arr(goal_rows)),
            ("rounds", Json::from(plan.mix_startup_runs)),
            ("variants", Json::Arr(rows)),
            ("extraction", extraction_json),
        ]),
        failures,
        svgs: vec![(
            "portable.svg",
            super::svg::chart("sydney-bundle: portable mix release", &[panel]),
        )],
    }
}

/// One row of the goals table and its JSON: `ratio` against `limit`
/// (`strict`: a share that must stay below it, shown in percent).
fn goal_row(
    figure: &'static str,
    value: String,
    goal: &str,
    ratio: f64,
    limit: f64,
    strict: bool,
    (table, rows): (&mut Table, &mut Vec<Json>),
) {
    let met = if strict {
        ratio < limit
    } else {
        ratio <= limit
    };
    let shown = if strict {
        format!("{:.1}%", ratio * 100.0)
    } else {
        table::ratio(ratio)
    };
    table.row(vec![
        figure.into(),
        value.clone(),
        goal.into(),
        format!("{} ({shown})", table::verdict(met)),
    ]);
    rows.push(Json::obj([
        ("figure", Json::from(figure)),
        ("value", Json::from(value)),
        ("goal", Json::from(goal)),
        ("ratio", Json::from(ratio)),
        ("met", Json::from(met)),
    ]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_rows_compare_ratios_and_shares() {
        let mut table = Table::new("T", &["figure", "value", "goal", "result"]);
        let mut rows = Vec::new();
        goal_row(
            "a",
            "1".into(),
            "<= 1.0x",
            1.0,
            1.0,
            false,
            (&mut table, &mut rows),
        );
        goal_row(
            "b",
            "2".into(),
            "<= 1.0x",
            1.01,
            1.0,
            false,
            (&mut table, &mut rows),
        );
        goal_row(
            "c",
            "3".into(),
            "< 5%",
            0.05,
            0.05,
            true,
            (&mut table, &mut rows),
        );
        goal_row(
            "d",
            "4".into(),
            "< 5%",
            0.002,
            0.05,
            true,
            (&mut table, &mut rows),
        );
        let text = table.render();
        assert!(text.contains("| met (1.00x)"), "{text}");
        assert!(text.contains("| missed (1.01x)"), "{text}");
        assert!(text.contains("| missed (5.0%)"), "{text}");
        assert!(text.contains("| met (0.2%)"), "{text}");
        let met: Vec<String> = rows
            .iter()
            .map(|r| r.render())
            .filter(|r| r.contains("\"met\": true"))
            .collect();
        assert_eq!(met.len(), 2, "{rows:?}");
    }
}
