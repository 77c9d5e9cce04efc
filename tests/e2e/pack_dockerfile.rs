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
//! What runs today, and what does not: the `debian` stage (the bundle in
//! the same Debian image) serves. The `FROM scratch` stage builds and holds
//! only the bundle, but a mix release cannot start there yet: its scripts
//! need /bin/sh and its runtime glibc, which sydney-pack will only pack with
//! `--portable` (not built yet). This test asserts exactly that failure, so
//! it will say so when `--portable` lands and the scratch image should serve.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use e2e::*;

use crate::mix::{APPLICATION, RUNTIME_CONFIG, mix_exs};

/// The local build-stage image (bump the suffix to rebuild it).
const BASE_IMAGE: &str = "sydney-pack-e2e/elixir-bookworm:1";
/// Where its root is kept between runs.
const BASE_ROOT: &str = "/var/cache/sydney-bundle-tests/pack-bookworm-elixir";

/// Makes [`BASE_IMAGE`] if it is missing, from [`BASE_ROOT`] (made with
/// debootstrap if missing: about 90 s and 270 MB, once per machine).
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
        if !root.join("usr/bin/mix").is_file() {
            require_program("debootstrap", "debootstrap");
            let partial = root.with_extension("partial");
            let _ = fs::remove_dir_all(&partial);
            fs::create_dir_all(root.parent().unwrap()).unwrap();
            run_timeout(
                Command::new("debootstrap")
                    .args(["--variant=minbase", "--include=elixir", "bookworm"])
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

/// `docker build` of the Dockerfile's `target` stage in `context`.
fn build(context: &Path, target: &str, tag: &str) {
    run_timeout(
        Command::new("docker")
            .args(["build", "-q", "--network", "none", "--target", target])
            .args(["--build-arg", &format!("BUILD_IMAGE={}", base_image())])
            .args(["--build-arg", &format!("RUN_IMAGE={}", base_image())])
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
    let (debian, scratch) = (
        format!("sydney-pack-e2e-debian:{id}"),
        format!("sydney-pack-e2e-scratch:{id}"),
    );
    let _images = Images(vec![debian.clone(), scratch.clone()]);

    // The final stage: FROM scratch, one layer holding one file.
    build(&context, "scratch", &scratch);
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
    // Not yet: without --portable, the release needs /bin/sh there.
    let ran = run_timeout(
        Command::new("docker").args(["run", "--rm", "--network", "none", &scratch]),
        Duration::from_secs(120),
    );
    ran.expect_code(127)
        .expect_stderr("its interpreter /bin/sh does not exist on this host");

    // What runs today: the same bundle on the Debian image.
    build(&context, "debian", &debian);
    let port = free_port();
    let name = format!("sydney-pack-e2e-run-{id}");
    struct Removed(String);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _container = Removed(name.clone());
    run(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-e",
        &format!("PORT={port}"),
        "-e",
        "RELEASE_DISTRIBUTION=none",
        &debian,
    ]))
    .expect_success();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        wait_for_http(addr, "/", Duration::from_secs(120)),
        (200, "Ok".into())
    );
    run(Command::new("docker").args(["exec", &name, "/app", "version"]))
        .expect_success()
        .expect_stdout("hello 0.1.0");
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
