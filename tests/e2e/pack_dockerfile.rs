//! The multi-stage Dockerfile of integrations/mix, built for real: `mix
//! release` and `sydney-pack` in a build stage, the bundle alone in the
//! final one.
//!
//! No registry is reachable, so the build stage's base image is made here:
//! a debootstrap'd Debian bookworm root with Debian's `elixir`, imported with
//! `docker import` and kept between runs (the root under
//! /var/cache/sydney-bundle-tests, the image under a fixed tag; each is made
//! only when missing).
//!
//! The final stage is `FROM scratch` holding only the bundle, packed with
//! `--portable`: the release serves there with its defaults (distribution
//! on), answers `rpc`, and `docker stop` ends it cleanly.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use e2e::*;

use crate::mix::{APPLICATION, RUNTIME_CONFIG, mix_exs};

/// The local build-stage image (bump the suffix to rebuild it).
const BASE_IMAGE: &str = "sydney-pack-e2e/elixir-bookworm:2";
/// Where its root is kept between runs.
const BASE_ROOT: &str = "/var/cache/sydney-bundle-tests/pack-bookworm-elixir-2";

/// Makes [`BASE_IMAGE`] if it is missing, from [`BASE_ROOT`] (made with
/// debootstrap if missing: about 90 s and 270 MB, once per machine). It has
/// Debian's `elixir`, and `busybox-static` for `--portable`.
fn base_image() -> &'static str {
    static BASE: OnceLock<()> = OnceLock::new();
    BASE.get_or_init(|| {
        require_root();
        require_program("docker", "docker.io");
        let present = Command::new("docker")
            .args(["image", "inspect", BASE_IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if present {
            return;
        }
        let root = Path::new(BASE_ROOT);
        if !root.join("usr/bin/mix").is_file() || !root.join("bin/busybox").is_file() {
            require_program("debootstrap", "debootstrap");
            let partial = root.with_extension("partial");
            let _ = fs::remove_dir_all(&partial);
            fs::create_dir_all(root.parent().unwrap()).unwrap();
            run_timeout(
                Command::new("debootstrap")
                    .args([
                        "--variant=minbase",
                        "--include=elixir,busybox-static",
                        "bookworm",
                    ])
                    .arg(&partial)
                    .arg("http://deb.debian.org/debian"),
                Duration::from_secs(1200),
            )
            .expect_success();
            let _ = fs::remove_dir_all(root);
            fs::rename(&partial, root).unwrap();
        }
        // tar | docker import
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["--exclude=./var/cache/apt/archives", "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // (Not run_timeout: it would replace stdin with /dev/null.)
        let imported = Command::new("docker")
            .args(["import", "-", BASE_IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        assert!(tar.wait().unwrap().success(), "tar of {BASE_ROOT} failed");
    });
    BASE_IMAGE
}

/// Files a container's export holds that come from docker, not the image.
const DOCKER_ADDS: [&str; 6] = [
    ".dockerenv",
    "dev/console",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
];

/// Removes the images this test built.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
    }
}

/// `docker build` of the Dockerfile in `context`, with no network: the
/// build stage has all it needs.
fn build(context: &Path, tag: &str) {
    run_timeout(
        Command::new("docker")
            .args(["build", "-q", "--network", "none"])
            .args(["--build-arg", &format!("BUILD_IMAGE={}", base_image())])
            .args(["--build-arg", "APP=hello", "-t", tag])
            .arg(context),
        Duration::from_secs(1200),
    )
    .expect_success();
}

#[test]
fn the_multi_stage_dockerfile_packs_a_mix_release() {
    let sandbox = Sandbox::new();
    // The build context: the app's sources, the static tool, the Dockerfile.
    let context = sandbox.join("context");
    fs::create_dir_all(context.join("lib/hello")).unwrap();
    fs::create_dir_all(context.join("config")).unwrap();
    fs::write(context.join("mix.exs"), mix_exs("", "")).unwrap();
    fs::write(context.join("lib/hello/application.ex"), APPLICATION).unwrap();
    fs::write(context.join("config/runtime.exs"), RUNTIME_CONFIG).unwrap();
    fs::copy(sydney_pack(), context.join("sydney-pack")).unwrap();
    fs::copy(
        root().join("integrations/mix/Dockerfile"),
        context.join("Dockerfile"),
    )
    .unwrap();

    let id = std::process::id();
    let scratch = format!("sydney-pack-e2e-scratch:{id}");
    let _images = Images(vec![scratch.clone()]);

    // The final stage: FROM scratch, one layer holding one file.
    build(&context, &scratch);
    let layers = run(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}} {{.Size}}",
        &scratch,
    ]));
    layers.expect_success();
    let facts = layers.stdout();
    let (count, size) = facts.trim().split_once(' ').unwrap();
    assert_eq!(count, "1", "one layer");
    let size: u64 = size.parse().unwrap();
    let container = format!("sydney-pack-e2e-{id}");
    run(Command::new("docker").args(["create", "--name", &container, &scratch])).expect_success();
    let listed = run(Command::new("sh").arg("-c").arg(format!(
        "docker export {container} | tar -t; docker rm -f {container} >/dev/null"
    )));
    let out = listed.stdout();
    let files: Vec<&str> = out
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .filter(|l| !l.is_empty() && !l.ends_with('/'))
        // What docker adds to every container (not part of the image).
        .filter(|l| !DOCKER_ADDS.contains(l))
        .collect();
    assert_eq!(files, ["app"], "the scratch image holds the bundle only");
    assert!(size > 1_000_000, "image size {size}");

    // It runs there with the release's defaults: distribution on, epmd
    // needed, no /bin/sh. No network of the host's: the checks run inside.
    let name = format!("sydney-pack-e2e-run-{id}");
    struct Removed(String);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _container = Removed(name.clone());
    run(Command::new("docker").args(["run", "-d", "--name", &name, "--network", "none", &scratch]))
        .expect_success();
    let in_container = |args: &[&str]| {
        run_timeout(
            Command::new("docker")
                .args(["exec", &name, "/app"])
                .args(args),
            Duration::from_secs(60),
        )
    };
    eventually(Duration::from_secs(120), "the release to serve", || {
        in_container(&["healthcheck", "--url", "http://127.0.0.1:4000/"]).code() == 0
    });
    in_container(&["version"])
        .expect_success()
        .expect_stdout("hello 0.1.0");
    in_container(&["exec", "--", "rpc", "IO.puts(:pong)"])
        .expect_success()
        .expect_stdout("pong");
    // `docker stop` reaches the BEAM through the bundle (PID 1), which
    // exits 0 after an orderly shutdown.
    run_timeout(
        Command::new("docker").args(["stop", "-t", "30", &name]),
        Duration::from_secs(60),
    )
    .expect_success();
    let status =
        run(Command::new("docker").args(["inspect", "--format", "{{.State.ExitCode}}", &name]));
    assert_eq!(status.stdout().trim(), "0", "exit code after docker stop");
    let logs = run(Command::new("docker").args(["logs", &name]));
    assert!(logs.stderr().contains("hello: stopped cleanly"), "{logs}");
}
