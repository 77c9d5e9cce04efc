//! Building the static, size-tuned server and stubs that go into bundles.
//!
//! Target: `x86_64-unknown-linux-musl` (installed with rustup if missing),
//! else `x86_64-unknown-linux-gnu` with `+crt-static`. Both give a static
//! executable that runs on any x86_64 Linux. `aarch64-unknown-linux-musl`
//! (`--target aarch64`) is cross-compiled from any host: the C code with
//! Debian's `aarch64-linux-gnu-gcc`, which also drives the link against
//! Rust's self-contained musl (docs/decisions/0100-aarch64-cross-build.md).
//!
//! Standard library: rebuilt from source with the release profile and
//! without its backtrace printer (`-Zbuild-std`, enabled on the pinned
//! stable toolchain, `rust-toolchain.toml`, by `RUSTC_BOOTSTRAP=1`). It is the
//! largest size saving and the largest maintenance risk:
//! docs/decisions/0020-build-std.md. There is no fallback to the prebuilt
//! std (the bundle would outgrow its size budget): a toolchain without
//! `rust-src`, or whose cargo no longer has `-Zbuild-std`, fails the build
//! with a message that says so.
//!
//! Paths are remapped so the output does not depend on where the checkout,
//! cargo home or toolchain live: the same commit and toolchain give the same
//! bytes (docs/REPRODUCIBLE.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bundle_format::Codec;

use crate::util::{self, command};
use crate::warm_order;

/// The preferred target.
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// The fallback target (linked with `+crt-static`).
pub const GNU: &str = "x86_64-unknown-linux-gnu";
/// The ARM target, cross-compiled (`--target aarch64`).
pub const AARCH64: &str = "aarch64-unknown-linux-musl";
/// The cross C compiler (and linker driver) for [`AARCH64`], and its
/// Debian package.
const AARCH64_GCC: (&str, &str) = ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu");

/// How to build.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The target triple.
    pub target: &'static str,
    /// `rustc -V`, recorded in the bundle's build metadata.
    pub rustc_version: String,
    /// The cargo target directory for these builds.
    pub target_dir: PathBuf,
    /// A C compiler to use for the musl target's C code (libdeflate, zstd)
    /// when no musl cross compiler is installed.
    pub musl_cc_fallback: Option<&'static str>,
    /// Keep the stub's symbols (for `cargo xtask warm-order`).
    pub keep_symbols: bool,
}

impl Toolchain {
    /// Finds (and installs, where rustup can) what a static build needs.
    pub fn detect() -> Result<Toolchain> {
        Self::detect_for(None)
    }

    /// Like [`Toolchain::detect`], with the target chosen by the caller
    /// (`Some(GNU)` forces the static glibc build).
    pub fn detect_for(forced: Option<&'static str>) -> Result<Toolchain> {
        let rustc_version = util::stdout(command("rustc").arg("-V"))
            .context("cannot run rustc")?
            .trim()
            .to_owned();
        let target = if forced == Some(AARCH64) {
            if !ensure_target(AARCH64) {
                bail!(
                    "the {AARCH64} target is not installed and rustup could not add it; \
                     run `rustup target add {AARCH64}`"
                );
            }
            util::ensure_programs(&[AARCH64_GCC])
                .context("cross-compiling for aarch64 needs Debian's gcc-aarch64-linux-gnu")?;
            AARCH64
        } else if let Some(target) = forced {
            target
        } else if ensure_target(MUSL) {
            MUSL
        } else {
            eprintln!(
                "note: the {MUSL} target is not available; building for {GNU} with +crt-static instead"
            );
            GNU
        };
        check_build_std(&rustc_version)?;
        let musl_cc_fallback = (target == MUSL && !ensure_musl_cc()).then(|| {
            eprintln!(
                "note: no musl C compiler (Debian package musl-tools); compiling the C parts \
                 (libdeflate, zstd) with gcc instead"
            );
            "gcc"
        });
        Ok(Toolchain {
            target,
            rustc_version,
            target_dir: default_target_dir(),
            musl_cc_fallback,
            keep_symbols: false,
        })
    }

    /// The cargo target directory for these builds (kept apart from the
    /// normal one: different flags would otherwise rebuild everything twice).
    pub fn target_dir(&self) -> PathBuf {
        self.target_dir.clone()
    }

    /// Builds `bin` of `package` with cargo profile `profile` and `features`
    /// (default features off) and returns the executable's path.
    /// `final_args` go to rustc for `bin` only (`cargo rustc`), so they
    /// change neither the dependencies nor the standard library build.
    pub fn build(
        &self,
        package: &str,
        bin: &str,
        profile: &str,
        features: &[&str],
        final_args: &[String],
    ) -> Result<PathBuf> {
        self.build_with_env(package, bin, profile, features, final_args, &[])
    }

    /// [`Toolchain::build`] with extra environment variables for cargo
    /// (and so for build scripts).
    pub fn build_with_env(
        &self,
        package: &str,
        bin: &str,
        profile: &str,
        features: &[&str],
        final_args: &[String],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<PathBuf> {
        let mut cargo = command(util::cargo());
        cargo.envs(env.iter().copied());
        cargo
            .args([
                if final_args.is_empty() {
                    "build"
                } else {
                    "rustc"
                },
                "--profile",
                profile,
                "--locked",
                "--package",
                package,
            ])
            .args(["--bin", bin, "--target", self.target])
            .arg("--target-dir")
            .arg(self.target_dir())
            .arg("--no-default-features");
        if !features.is_empty() {
            cargo.arg("--features").arg(features.join(","));
        }
        cargo
            .arg("-Zbuild-std=std,panic_abort")
            .arg("-Zbuild-std-features=")
            .env("RUSTC_BOOTSTRAP", "1");
        cargo.env("RUSTFLAGS", self.rustflags()?);
        if let Some(cc) = self.musl_cc_fallback {
            cargo.env("CC_x86_64_unknown_linux_musl", cc);
        }
        if self.target == AARCH64 {
            // Debian has no aarch64 musl cross compiler; the glibc one
            // compiles libdeflate and zstd against glibc's headers and, as
            // the linker driver, links Rust's self-contained musl crt
            // objects and libc.a: a glibc-only symbol in the C code would
            // fail that link, not the bundle.
            let (gcc, _) = AARCH64_GCC;
            cargo
                .env("CC_aarch64_unknown_linux_musl", gcc)
                .env("AR_aarch64_unknown_linux_musl", "aarch64-linux-gnu-ar")
                .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", gcc);
        }
        // The C code (libdeflate, zstd) without unwind tables: nothing
        // unwinds through it (panic = "abort"), and its `.eh_frame` sits in
        // the read-only segment of every stub
        // (docs/decisions/0072-no-unwind-tables-in-c-code.md).
        cargo.env(
            format!("CFLAGS_{}", self.target.replace('-', "_")),
            "-fno-asynchronous-unwind-tables -fno-unwind-tables",
        );
        // A developer's own flags would change the bytes.
        cargo.env_remove("CARGO_ENCODED_RUSTFLAGS");
        if !final_args.is_empty() {
            cargo.arg("--").args(final_args);
        }
        util::run(&mut cargo).with_context(|| {
            format!(
                "cannot build {bin} with {} and -Zbuild-std; if the errors above are about \
                 build-std or the standard library's sources, this toolchain cannot rebuild std: \
                 build with the one rust-toolchain.toml pins (docs/decisions/0020-build-std.md)",
                self.rustc_version
            )
        })?;
        Ok(self.target_dir().join(self.target).join(profile).join(bin))
    }

    fn rustflags(&self) -> Result<String> {
        let mut flags = vec![
            // With panic=abort and no backtraces, unwind tables are dead
            // weight (docs/decisions/0009-stub-build-profile.md); panic
            // messages still print.
            "-Cforce-unwind-tables=no".to_owned(),
            // Packed relative relocations (DT_RELR): the static-pie's
            // relocation table shrinks from ~20-30 KB of RELA entries to
            // bitmaps under 1 KB. musl >= 1.2.4 (Rust's self-contained musl is
            // newer) and glibc >= 2.36 (the static fallback links its own)
            // apply them at start-up.
            "-Clink-arg=-Wl,-z,pack-relative-relocs".to_owned(),
            // Panic locations without file, line and column: the bundle's
            // size goal (docs/decisions/0070-no-panic-locations.md).
            "-Zlocation-detail=none".to_owned(),
        ];
        if self.target == GNU {
            flags.push("-Ctarget-feature=+crt-static".to_owned());
        }
        let sysroot = util::stdout(command("rustc").args(["--print", "sysroot"]))?;
        // The last matching prefix wins, so the target dir (often inside
        // the checkout) comes after the checkout.
        let remaps = [
            (util::root(), "/sydney-bundle"),
            (self.target_dir(), "/target"),
            (cargo_home(), "/cargo"),
            (PathBuf::from(sysroot.trim()), "/rustc"),
        ];
        for (from, to) in remaps {
            let from = from.display().to_string();
            if from.contains(' ') {
                eprintln!("note: {from} contains a space; it is not remapped");
                continue;
            }
            flags.push(format!("--remap-path-prefix={from}={to}"));
        }
        Ok(flags.join(" "))
    }

    /// Builds the stub that decodes `codec` only.
    pub fn build_stub(&self, codec: Codec) -> Result<PathBuf> {
        // Both codecs' stubs are built to the same path; without the lock a
        // concurrent xtask building the other codec could replace the file
        // between our build and our copy, and we would keep the wrong stub.
        let _lock = self.lock_stub_builds()?;
        let (built, map) = self.link_stub(codec)?;
        // The next build with another codec overwrites the same path.
        let kept = stub_path_for(codec, self.target, false);
        copy_file(&built, &kept)?;
        // How well the warm-path layout still fits the code: reported now,
        // and kept for the end-to-end test that fails when it has drifted.
        let map_text = std::fs::read_to_string(&map)
            .with_context(|| format!("cannot read {}", map.display()))?;
        let coverage = warm_order::Coverage::from_map(&map_text);
        coverage.report();
        let summary = warm_order_summary_path(&kept);
        std::fs::write(&summary, coverage.summary())
            .with_context(|| format!("cannot write {}", summary.display()))?;
        Ok(kept)
    }

    /// Builds the stub of signed bundles for `codec`: its decoder and the
    /// signature checks (feature `signatures`), kept as
    /// bundle-stub-CODEC-signed beside the codec stubs. The default stubs stay
    /// without ed25519 (the bundle size budget);
    /// docs/decisions/0081-verifier-only-in-the-signed-stub.md.
    pub fn build_signed_stub(&self, codec: Codec) -> Result<PathBuf> {
        let _lock = self.lock_stub_builds()?;
        let kept = stub_path_for(codec, self.target, true);
        let name = format!("bundle-stub-{}-signed", codec.name());
        let (built, _map) = self.link_stub_variant(&name, &[codec.name(), "signatures"])?;
        copy_file(&built, &kept)?;
        Ok(kept)
    }

    /// Builds (unlocked) the stub for `codec`, linked with the warm-path
    /// layout; returns the executable and its link map.
    pub fn link_stub(&self, codec: Codec) -> Result<(PathBuf, PathBuf)> {
        self.link_stub_variant(&format!("bundle-stub-{}", codec.name()), &[codec.name()])
    }

    /// Builds (unlocked) the stub with `features`, its link map named after
    /// `name`; returns the executable and its link map.
    fn link_stub_variant(&self, name: &str, features: &[&str]) -> Result<(PathBuf, PathBuf)> {
        let map = self
            .target_dir()
            .join(self.target)
            .join(format!("{name}.map"));
        let mut final_args = warm_order::link_args(&map);
        // A static executable at a fixed address (not a static PIE): the
        // stub then applies no relocations at start-up, which touched
        // several pages of every warm start
        // (docs/decisions/0004-fixed-address-stub.md). Only the final link
        // changes; ARCHITECTURE.md ("How the stub is linked") says why
        // giving up the stub's own address randomisation is acceptable.
        final_args.push("-Crelocation-model=static".to_owned());
        if self.keep_symbols {
            // Only the final link changes: the crates keep the hashes in
            // their symbol names, so the patterns fit the shipped stub.
            final_args.push("-Cstrip=none".to_owned());
        }
        let built = self.build("bundle-stub", "bundle-stub", "stub", features, &final_args)?;
        Ok((built, map))
    }

    /// An exclusive lock, held until the returned file is dropped, that
    /// serialises stub builds between xtask processes.
    pub fn lock_stub_builds(&self) -> Result<std::fs::File> {
        let dir = self.target_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("stub-build.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    }

    /// Builds the server.
    pub fn build_server(&self) -> Result<PathBuf> {
        self.build("sydney", "sydney", "release", &[], &[])
    }
}

/// The warm-path coverage summary kept beside a stub
/// (`bundle-stub-gzip.warm-order`).
fn warm_order_summary_path(stub: &Path) -> PathBuf {
    let mut name = stub.file_name().unwrap_or_default().to_os_string();
    name.push(".warm-order");
    stub.with_file_name(name)
}

/// `target/bundle-build`.
pub fn default_target_dir() -> PathBuf {
    util::target_dir().join("bundle-build")
}

/// Where the x86_64 musl stub for `codec` is kept between builds.
pub fn stub_path(codec: Codec) -> PathBuf {
    stub_path_for(codec, MUSL, false)
}

/// Where the stub for `codec` and `target` is kept (`signed`: the stub of
/// signed bundles, named `-signed`): `target/bundle/stubs/` holds the
/// x86_64 ones and `aarch64/` beneath it the ARM ones (the layout
/// `sydney-pack`'s build script embeds), the glibc fallback's beside them
/// with the target in the name.
pub fn stub_path_for(codec: Codec, target: &str, signed: bool) -> PathBuf {
    let stubs = util::target_dir().join("bundle").join("stubs");
    let signed = if signed { "-signed" } else { "" };
    let name = format!("bundle-stub-{}{signed}", codec.name());
    match target {
        MUSL => stubs.join(name),
        AARCH64 => stubs.join("aarch64").join(name),
        other => stubs.join(format!("{name}-{other}")),
    }
}

/// The Linux name of `target`'s architecture (`x86_64`, `aarch64`).
pub fn arch(target: &str) -> &'static str {
    if target == AARCH64 {
        "aarch64"
    } else {
        "x86_64"
    }
}

/// How to run a program built for `target` on this machine: directly, or
/// through `qemu-ARCH-static` (installed from Debian's qemu-user-static
/// when missing) for a program of another architecture.
pub fn runner(target: &str) -> Result<Option<&'static str>> {
    let qemu = match arch(target) {
        arch if arch == std::env::consts::ARCH => return Ok(None),
        "aarch64" => "qemu-aarch64-static",
        _ => "qemu-x86_64-static",
    };
    util::ensure_programs(&[(qemu, "qemu-user-static")])?;
    Ok(Some(qemu))
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn rustup_lists(args: &[&str], wanted: &str) -> bool {
    util::stdout(command("rustup").args(args))
        .map(|out| {
            out.lines()
                .any(|l| l.trim() == wanted || l.starts_with(&format!("{wanted} ")))
        })
        .unwrap_or(false)
}

/// Is the target installed? If not, try `rustup target add`.
fn ensure_target(target: &str) -> bool {
    if rustup_lists(&["target", "list", "--installed"], target) {
        return true;
    }
    if !util::have("rustup") {
        return false;
    }
    eprintln!("note: installing the {target} target with rustup");
    util::run(command("rustup").args(["target", "add", target])).is_ok()
}

/// Is a musl C compiler installed (for the C code in the stub)? If not,
/// try to install Debian's musl-tools.
fn ensure_musl_cc() -> bool {
    let have = || util::have("x86_64-linux-musl-gcc") || util::have("musl-gcc");
    have() || (util::ensure_programs(&[("musl-gcc", "musl-tools")]).is_ok() && have())
}

/// The toolchain `rust-toolchain.toml` pins (its `channel`).
fn pinned_toolchain() -> Result<String> {
    let path = util::root().join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .with_context(|| format!("{} names no channel", path.display()))
}

/// Fails, saying why, unless this toolchain can rebuild the standard library
/// (`-Zbuild-std`, docs/decisions/0020-build-std.md): its cargo must still
/// have the flag and the `rust-src` component must be installed (rustup adds
/// it when it can). A toolchain other than the pinned one gets a note: the
/// flag is unstable, and only the pin is known to work.
fn check_build_std(rustc_version: &str) -> Result<()> {
    let pinned = pinned_toolchain()?;
    if !rustc_version.starts_with(&format!("rustc {pinned} ")) {
        eprintln!(
            "note: building with {rustc_version}, not the pinned {pinned}; the stub's \
             -Zbuild-std is only known to work with the pin"
        );
    }
    let flags = util::stdout(
        command(util::cargo())
            .args(["-Z", "help"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )
    .context("cannot run `cargo -Z help`")?;
    // rust-src is only looked for (and installed) if cargo has the flag.
    match build_std_problem(&pinned, &flags, ensure_rust_src) {
        Some(problem) => bail!("{problem}"),
        None => Ok(()),
    }
}

/// Why this toolchain cannot rebuild std, if it cannot: `cargo_z_help` is
/// what `cargo -Z help` printed, `has_rust_src` says whether the component
/// is (or could be) installed.
fn build_std_problem(
    pinned: &str,
    cargo_z_help: &str,
    has_rust_src: impl FnOnce() -> bool,
) -> Option<String> {
    let fix = format!(
        "build with the pinned toolchain {pinned} (rust-toolchain.toml; drop any `+toolchain` \
         or RUSTUP_TOOLCHAIN override): `rustup toolchain install {pinned} --component rust-src \
         --target {MUSL}`"
    );
    if !cargo_z_help
        .lines()
        .any(|l| l.trim_start().starts_with("-Z build-std "))
    {
        return Some(format!(
            "this toolchain's cargo has no -Zbuild-std, which the stub and server builds need \
             to stay within the bundle's size budget; {fix}"
        ));
    }
    if !has_rust_src() {
        return Some(format!(
            "the rust-src component is missing and rustup could not install it; -Zbuild-std \
             rebuilds the standard library from it; {fix}"
        ));
    }
    None
}

/// Is rust-src installed? If not, try `rustup component add`.
fn ensure_rust_src() -> bool {
    let installed = |out: &str| out.lines().any(|l| l.starts_with("rust-src"));
    if util::stdout(command("rustup").args(["component", "list", "--installed"]))
        .is_ok_and(|out| installed(&out))
    {
        return true;
    }
    if !util::have("rustup") {
        return false;
    }
    eprintln!("note: installing the rust-src component with rustup (for a smaller build)");
    util::run(command("rustup").args(["component", "add", "rust-src"])).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_is_an_exact_version_and_this_toolchain_can_rebuild_std() {
        let pinned = pinned_toolchain().unwrap();
        let parts: Vec<&str> = pinned.split('.').collect();
        assert!(
            parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
            "rust-toolchain.toml should pin an exact version, not {pinned:?}"
        );
        let rustc = util::stdout(command("rustc").arg("-V")).unwrap();
        check_build_std(rustc.trim()).unwrap();
    }

    #[test]
    fn a_toolchain_that_cannot_rebuild_std_is_named_with_the_fix() {
        let with_flag =
            "Available unstable (nightly-only) flags:\n\n    -Z build-std    Enable ...\n";
        assert_eq!(build_std_problem("1.95.0", with_flag, || true), None);

        let no_flag = build_std_problem("1.95.0", "    -Z build-std-features  ...\n", || true);
        let no_flag = no_flag.expect("a cargo without -Zbuild-std is refused");
        assert!(no_flag.contains("has no -Zbuild-std"), "{no_flag}");
        assert!(no_flag.contains("pinned toolchain 1.95.0"), "{no_flag}");

        let no_src = build_std_problem("1.95.0", with_flag, || false).expect("refused");
        assert!(no_src.contains("rust-src component is missing"), "{no_src}");
        assert!(no_src.contains("rustup toolchain install 1.95.0 --component rust-src"));
    }
}
