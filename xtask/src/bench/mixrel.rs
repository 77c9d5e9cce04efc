//! A real `mix release` for the portable section: the e2e tests' HTTP app
//! (tests/fixtures/mix-hello, the same files), built with Debian's Elixir
//! and no hex, cached under `target/bench/mix` until its sources or the
//! Elixir/OTP version change.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{proc, tools};
use crate::util::{self, command};

/// The app: answers every `GET` with `200 Ok` on 127.0.0.1:`$PORT`.
const APPLICATION: &str = include_str!("../../../tests/fixtures/mix-hello/application.ex");
const RUNTIME_CONFIG: &str = include_str!("../../../tests/fixtures/mix-hello/runtime.exs");
const MIX_EXS_TEMPLATE: &str = include_str!("../../../tests/fixtures/mix-hello/mix.exs.template");

/// What the cached release was built from.
const KEY_FILE: &str = "built-from";

/// The release folder (`_build/prod/rel/hello`), built if the cache under
/// `bench_dir/mix` is missing or stale.
pub fn ensure(bench_dir: &Path) -> Result<PathBuf> {
    let mix = tools::path("mix")?;
    let work = bench_dir.join("mix");
    let project = work.join("hello");
    let release = project.join("_build/prod/rel/hello");
    let versions = util::output(command(&mix).arg("--version").env("HOME", &work))
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .context("cannot run `mix --version`")?;
    let mix_exs = MIX_EXS_TEMPLATE
        .replace("{deps}", "")
        .replace("{release}", "");
    let key = format!("{versions}\n{mix_exs}\n{APPLICATION}\n{RUNTIME_CONFIG}");
    let key_file = work.join(KEY_FILE);
    if release.join("bin/hello").is_file() && fs::read_to_string(&key_file).is_ok_and(|k| k == key)
    {
        // A release's `start` writes into `tmp/` (absent as built) unless
        // RELEASE_TMP points elsewhere: whatever a run by hand left there
        // would be packed.
        let tmp = release.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        return Ok(release);
    }
    eprintln!("bench: building the mix release in {}", project.display());
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    fs::create_dir_all(project.join("lib/hello"))?;
    fs::create_dir_all(project.join("config"))?;
    fs::write(project.join("mix.exs"), mix_exs)?;
    fs::write(project.join("lib/hello/application.ex"), APPLICATION)?;
    fs::write(project.join("config/runtime.exs"), RUNTIME_CONFIG)?;
    // MIX_ENV=prod, and a private HOME and MIX_HOME: nothing from the
    // machine's user (as the e2e tests build it).
    let out = util::output(
        command(&mix)
            .args(["release", "--overwrite"])
            .current_dir(&project)
            .env("MIX_ENV", "prod")
            .env("HOME", &work)
            .env("MIX_HOME", work.join(".mix")),
    )?;
    if !out.status.success() {
        bail!(
            "`mix release` failed ({}): {}",
            out.status,
            proc::tail(&String::from_utf8_lossy(&out.stderr))
        );
    }
    if !release.join("bin/hello").is_file() {
        bail!(
            "`mix release` made no {}",
            release.join("bin/hello").display()
        );
    }
    fs::write(&key_file, key)?;
    Ok(release)
}
