//! A real Elixir `mix release`, packed and run as one file, and diagnosed by
//! the doctor. Needs Elixir (Debian's `elixir` package; .ci/run installs it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use e2e::bundle_format::Codec;
use e2e::*;

/// A tiny Elixir app that answers every HTTP request with `Ok`, using only
/// OTP's :gen_tcp (hex.pm is not reachable here, so no Plug). It says when
/// it stops cleanly (the application's `stop/1` runs only on an orderly
/// shutdown). `cargo xtask bench` builds the same app from the same files.
pub(crate) const APPLICATION: &str = include_str!("../fixtures/mix-hello/application.ex");

/// A runtime configuration: with one, a release's `start` writes the
/// merged config into `RELEASE_TMP` before it boots.
pub(crate) const RUNTIME_CONFIG: &str = include_str!("../fixtures/mix-hello/runtime.exs");

/// The project file, with `{deps}` and `{release}` to fill.
const MIX_EXS_TEMPLATE: &str = include_str!("../fixtures/mix-hello/mix.exs.template");

/// A `mix` command for the project in `work` (`MIX_ENV=prod`, a private
/// HOME and MIX_HOME: nothing from the machine's user).
pub(crate) fn mix(work: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("mix");
    command
        .args(args)
        .current_dir(work)
        .env("MIX_ENV", "prod")
        .env("HOME", work)
        .env("MIX_HOME", work.join(".mix"));
    command
}

/// The project file: `deps` and `release` are Elixir keyword-list items
/// (empty, or ending with a comma). The release reboots after reading its
/// runtime config, so `start` writes that config into `RELEASE_TMP` (without
/// a reboot, Elixir 1.14 reads it in place).
pub(crate) fn mix_exs(deps: &str, release: &str) -> String {
    MIX_EXS_TEMPLATE
        .replace("{deps}", deps)
        .replace("{release}", release)
}

/// `mix new hello --sup` in `work`, with the app above, [`mix_exs`] and a
/// runtime config; returns the project folder.
pub(crate) fn new_project(work: &Path) -> PathBuf {
    require_program("mix", "elixir");
    run_timeout(
        &mut mix(work, &["new", "hello", "--sup"]),
        Duration::from_secs(120),
    )
    .expect_success();
    let project = work.join("hello");
    fs::write(project.join("mix.exs"), mix_exs("", "")).unwrap();
    fs::write(project.join("lib/hello/application.ex"), APPLICATION).unwrap();
    fs::create_dir_all(project.join("config")).unwrap();
    fs::write(project.join("config/runtime.exs"), RUNTIME_CONFIG).unwrap();
    project
}

/// Builds the release once per test run: `_build/prod/rel/hello`.
pub(crate) fn mix_release() -> &'static PathBuf {
    static RELEASE: OnceLock<PathBuf> = OnceLock::new();
    RELEASE.get_or_init(|| {
        // Shared by the tests that use it, so it outlives each of them;
        // removed when the test binary exits.
        let work = tempfile::Builder::new()
            .prefix("sydney-mix-")
            .tempdir()
            .unwrap()
            .keep();
        let removed = work.clone();
        at_exit(move || fs::remove_dir_all(&removed).unwrap());
        let project = new_project(&work);
        run_timeout(
            mix(&work, &["release", "--overwrite"]).current_dir(&project),
            Duration::from_secs(600),
        )
        .expect_success();
        project.join("_build/prod/rel/hello")
    })
}

fn packed(sandbox: &Sandbox) -> PathBuf {
    let bundle = sandbox.join("hello-bundle");
    let mut options = pack_options("hello", "bin/hello", Codec::Gzip);
    options.version = "0.1.0".to_owned();
    options.args = vec!["start".to_owned()];
    options.needs_tree = true;
    pack(mix_release(), &options, &bundle);
    bundle
}

#[test]
fn a_real_mix_release_runs_from_one_file() {
    let sandbox = Sandbox::new();
    let bundle = packed(&sandbox);
    let port = free_port();
    let server = Server::start(
        sandbox
            .command(&bundle)
            .arg("start")
            .env("PORT", port.to_string())
            // No epmd or cookie: this test is about packing, not clustering.
            .env("RELEASE_DISTRIBUTION", "none"),
        Duration::from_secs(60),
    );
    assert_eq!(server.get("/"), (200, "Ok".to_owned()));

    // The lifecycle works for it too: daemon, pid, stop.
    drop(server);
    let cmd = |args: &[&str]| {
        let mut command = sandbox.command(&bundle);
        command
            .args(args)
            .env("PORT", port.to_string())
            .env("RELEASE_DISTRIBUTION", "none");
        command
    };
    run(&mut cmd(&["daemon"])).expect_success();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        wait_for_http(addr, "/", Duration::from_secs(60)),
        (200, "Ok".into())
    );
    run(&mut cmd(&["pid"])).expect_success();
    run(&mut cmd(&["stop", "--timeout", "20"])).expect_success();
    run(&mut cmd(&["pid"])).expect_code(3);
}

#[test]
fn the_doctor_says_what_a_mix_release_needs() {
    let sandbox = Sandbox::new();
    let bundle = packed(&sandbox);
    let ran = run(sandbox.command(&bundle).args(["inspect", "--doctor"]));
    ran.expect_success()
        .expect_stdout("bin/hello: script, #!/bin/sh")
        .expect_stdout("beam.smp: ELF, dynamic, loader /lib64/ld-linux-x86-64.so.2")
        .expect_stdout("FROM scratch: needs /bin/sh")
        .expect_stdout("alpine (musl): needs glibc-linked programs")
        .expect_stdout("glibc hosts: needs glibc >= 2.")
        .expect_stdout("libraries ");
}
