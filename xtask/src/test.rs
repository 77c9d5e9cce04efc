//! `cargo xtask test`: the README's test command.
//!
//! Builds what the end-to-end tests run for real (the static bundle, both
//! stub variants, the static server, the static `sydney-pack` of `cargo
//! xtask dist`), then runs `cargo test --workspace` with the end-to-end
//! tests turned on (feature `e2e/e2e`; plain `cargo test --workspace`
//! leaves them out) and the artifacts' paths in the environment. Nothing
//! is skipped: a test that needs something missing fails and says what.

use std::path::Path;

use anyhow::{Context, Result};
use bundle_format::Codec;

use crate::toolchain::{self, stub_path};
use crate::util::{self, command};
use crate::{bundle, dist};

/// What the end-to-end tests run, beyond the Rust toolchain.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("chroot", "coreutils"),
    ("strip", "binutils"),
    ("g++", "g++"),
    ("mix", "elixir"),
    ("erl", "erlang-base"),
    ("docker", "docker.io"),
    // The image writer's tests: other readers of the OCI archive.
    ("podman", "podman"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("nsenter", "util-linux"),
    // Portable payloads: the static shell they carry, a musl C compiler for
    // a musl-linked payload, debootstrap for an old-glibc root (and for the
    // Elixir base image of the multi-stage Dockerfile test).
    ("busybox", "busybox-static"),
    ("musl-gcc", "musl-tools"),
    ("debootstrap", "debootstrap"),
    ("tar", "tar"),
    ("bash", "bash"),
    // aarch64 bundles: the emulator they run under, and the cross compiler
    // for the C parts of the stub and the tests' synthetic aarch64 payload.
    ("qemu-aarch64-static", "qemu-user-static"),
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
];

/// A Debian bullseye root (glibc 2.31), built once and kept outside the
/// repository: the portable tests run a release built against glibc 2.36 in it.
const BULLSEYE_ROOT: &str = "/var/cache/sydney-bundle-tests/bullseye";

/// The offline Kubernetes schema validator the deploy-file tests run
/// (PyPI; it ships the schemas, so no cluster or network is needed when
/// it runs). Pinned, so the schemas a test run sees do not drift.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Installs `kubernetes-validate` into a virtual environment under
/// target/tools (once) and returns the path of its program.
fn kubernetes_validate() -> Result<std::path::PathBuf> {
    let venv = util::target_dir().join("tools").join("kubernetes-validate");
    let program = venv.join("bin").join("kubernetes-validate");
    if program.is_file() {
        return Ok(program);
    }
    // Debian's python3 needs python3-venv for `python3 -m venv`.
    if !util::output(command("python3").args(["-c", "import ensurepip"]))
        .is_ok_and(|out| out.status.success())
    {
        util::ensure_packages(&["python3-venv"])?;
    }
    util::run(command("python3").arg("-m").arg("venv").arg(&venv))?;
    util::run(command(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        KUBERNETES_VALIDATE,
    ]))?;
    Ok(program)
}

/// Builds the artifacts, then runs the tests.
pub fn run(extra: &[String]) -> Result<()> {
    util::ensure_programs(TEST_PROGRAMS)?;
    ensure_bullseye_root()?;
    let kubernetes_validate = kubernetes_validate()?;
    let built = bundle::bundle(bundle::DEFAULT_CODEC, &bundle::default_out(), None)?;
    let aarch64 = bundle::bundle_for(
        bundle::DEFAULT_CODEC,
        &bundle::default_out_for(Some(toolchain::AARCH64)),
        None,
        Some(toolchain::AARCH64),
    )?;
    ensure_aarch64_binfmt()?;
    // Builds both stubs, then sydney-pack with them inside.
    let sydney_pack = dist::dist()?;
    let (gzip, zstd) = (stub_path(Codec::Gzip), stub_path(Codec::Zstd));
    let mut cargo = command(util::cargo());
    cargo
        .args(["test", "--workspace", "--locked", "--features", "e2e/e2e"])
        .args(extra)
        .env("SYDNEY_TEST_BUNDLE", &built.bundle)
        .env("SYDNEY_TEST_RELEASE", &built.release)
        .env("SYDNEY_TEST_SERVER", &built.server)
        .env("SYDNEY_TEST_STUB_GZIP", gzip)
        .env("SYDNEY_TEST_STUB_ZSTD", zstd)
        .env("SYDNEY_TEST_KUBERNETES_VALIDATE", kubernetes_validate)
        .env("SYDNEY_TEST_BULLSEYE_ROOT", BULLSEYE_ROOT)
        .env("SYDNEY_TEST_SYDNEY_PACK", sydney_pack)
        .env("SYDNEY_TEST_AARCH64_BUNDLE", &aarch64.bundle)
        .env("SYDNEY_TEST_AARCH64_RELEASE", &aarch64.release);
    util::run(&mut cargo)
}

/// The binfmt_misc rule Debian's qemu-user-static ships for aarch64
/// programs (flags `F`: the emulator is opened when the rule is registered,
/// so it also runs programs inside chroots and containers).
const QEMU_AARCH64_RULE: &str = "/usr/lib/binfmt.d/qemu-aarch64.conf";

/// Makes the kernel run aarch64 programs through qemu (on any other
/// architecture): mounts binfmt_misc if it is not, and registers
/// [`QEMU_AARCH64_RULE`] unless a `qemu-aarch64` rule exists. qemu-user
/// alone cannot run a bundle: the stub's execve of the server goes to the
/// kernel, which needs the rule (docs/decisions/0103-aarch64-tests-under-binfmt.md).
fn ensure_aarch64_binfmt() -> Result<()> {
    if std::env::consts::ARCH == "aarch64" {
        return Ok(());
    }
    let binfmt = Path::new("/proc/sys/fs/binfmt_misc");
    if !binfmt.join("register").exists() {
        util::run(
            command("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(binfmt),
        )
        .context("the aarch64 tests need binfmt_misc (run as root on a kernel that has it)")?;
    }
    if binfmt.join("qemu-aarch64").exists() {
        return Ok(());
    }
    let rule = std::fs::read_to_string(QEMU_AARCH64_RULE)
        .with_context(|| format!("cannot read {QEMU_AARCH64_RULE} (from qemu-user-static)"))?;
    eprintln!("note: registering qemu-aarch64 with binfmt_misc ({QEMU_AARCH64_RULE})");
    std::fs::write(binfmt.join("register"), rule.trim())
        .context("cannot register qemu-aarch64 with binfmt_misc")
}

/// Builds [`BULLSEYE_ROOT`] with `debootstrap --variant=minbase` (its
/// default Debian mirror) unless it exists (a few minutes, once per machine). It
/// is built beside its final name and renamed, so a failed run leaves no
/// half root behind.
fn ensure_bullseye_root() -> Result<()> {
    let root = Path::new(BULLSEYE_ROOT);
    if root.join("etc/debian_version").is_file() {
        return Ok(());
    }
    let partial = root.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    eprintln!("note: building a Debian bullseye root in {BULLSEYE_ROOT} (once)");
    util::run(
        command("debootstrap")
            .args(["--variant=minbase", "bullseye"])
            .arg(&partial),
    )?;
    std::fs::rename(&partial, root)
        .with_context(|| format!("cannot rename {} to {BULLSEYE_ROOT}", partial.display()))
}
