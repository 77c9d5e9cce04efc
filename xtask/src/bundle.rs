//! `cargo xtask bundle`: the workspace into `target/bundle/sydney-bundle`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bundle_format::Codec;
use bundle_format::codec::default_level;
use bundle_format::pack::PackOptions;

use crate::pack;
use crate::toolchain::{self, Toolchain};
use crate::util::{self, command};

/// The codec `bundle` uses unless told otherwise; chosen by measurement
/// (docs/BENCHMARKS.md, "Size").
pub const DEFAULT_CODEC: Codec = Codec::Gzip;

/// What `bundle` built.
#[derive(Debug)]
pub struct Built {
    /// The bundle file.
    pub bundle: PathBuf,
    /// The release folder that was packed.
    pub release: PathBuf,
    /// The static server.
    pub server: PathBuf,
    /// The version packed.
    pub version: String,
}

/// Where the bundle goes by default.
pub fn default_out() -> PathBuf {
    util::target_dir().join("bundle").join("sydney-bundle")
}

/// Where the bundle for `target` goes by default:
/// `target/bundle/aarch64/sydney-bundle` for aarch64, else [`default_out`].
pub fn default_out_for(target: Option<&str>) -> PathBuf {
    match target {
        Some(toolchain::AARCH64) => util::target_dir()
            .join("bundle")
            .join("aarch64")
            .join("sydney-bundle"),
        _ => default_out(),
    }
}

/// Builds the server and stub statically, assembles the release folder,
/// packs it, and prints a size table.
pub fn bundle(codec: Codec, out: &Path, build_dir: Option<&Path>) -> Result<Built> {
    bundle_for(codec, out, build_dir, None)
}

/// [`bundle`] for a chosen target (`None`: musl if available, else the
/// static glibc fallback).
pub fn bundle_for(
    codec: Codec,
    out: &Path,
    build_dir: Option<&Path>,
    target: Option<&'static str>,
) -> Result<Built> {
    let mut toolchain = Toolchain::detect_for(target)?;
    if let Some(dir) = build_dir {
        toolchain.target_dir = dir.to_owned();
    }
    let server = toolchain.build_server()?;
    let stub = toolchain.build_stub(codec)?;
    // One release folder per target, so a fallback build never replaces
    // the musl one the tests use.
    let release = util::target_dir()
        .join("bundle")
        .join(match toolchain.target {
            toolchain::MUSL => "release".to_owned(),
            other => format!("release-{other}"),
        });
    assemble_release(&server, &release)?;
    let version = server_version(&release.join("bin/sydney"), toolchain.target)?;

    let options = PackOptions {
        name: "sydney".to_owned(),
        version: version.clone(),
        entry: "bin/sydney".to_owned(),
        args: Vec::new(),
        codec,
        level: default_level(codec),
        needs_tree: false,
        default_cache_dir: None,
        mtime: util::source_date_epoch()?,
        build: build_metadata(&toolchain)?,
        portable: None,
        env: Vec::new(),
    };
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    let stub_bytes = fs::read(&stub)?;
    let report = pack::pack(&release, &stub_bytes, &options, out)?;

    let server_len = fs::metadata(&server)?.len();
    let rows = [
        ("server (bin/sydney)", server_len),
        ("stub", report.stub_len),
        ("payload, uncompressed tar", report.manifest.tar_len),
        ("payload, compressed", report.payload_len),
        ("bundle", report.bundle_len),
    ];
    println!("| {:<28} | {:>10} |", "part", "bytes");
    println!("|{:-<30}|{:->12}|", "", "");
    for (what, len) in rows {
        println!("| {what:<28} | {:>10} |", util::grouped(len));
    }
    println!(
        "\n{} ({} {}, {}, std rebuilt)",
        out.display(),
        report.manifest.codec,
        options.level,
        toolchain.target,
    );
    Ok(Built {
        bundle: out.to_owned(),
        release,
        server,
        version,
    })
}

/// `bin/sydney` and `etc/sydney.toml`, nothing else: the server needs no
/// other file, and the config is optional.
fn assemble_release(server: &Path, release: &Path) -> Result<()> {
    if release.exists() {
        fs::remove_dir_all(release)
            .with_context(|| format!("cannot clear {}", release.display()))?;
    }
    fs::create_dir_all(release.join("bin"))?;
    fs::create_dir_all(release.join("etc"))?;
    let bin = release.join("bin/sydney");
    fs::copy(server, &bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let config = util::root().join("crates/sydney/etc/sydney.toml");
    fs::copy(&config, release.join("etc/sydney.toml"))
        .with_context(|| format!("cannot copy {}", config.display()))?;
    Ok(())
}

/// Asks the server itself (`sydney --version` prints `sydney X.Y.Z`),
/// through qemu if it was built for another architecture.
fn server_version(server: &Path, target: &str) -> Result<String> {
    let mut ask = match toolchain::runner(target)? {
        Some(qemu) => {
            let mut ask = command(qemu);
            ask.arg(server);
            ask
        }
        None => command(server),
    };
    let out = util::stdout(ask.arg("--version"))?;
    match out.split_whitespace().collect::<Vec<_>>()[..] {
        ["sydney", version] => Ok(version.to_owned()),
        _ => bail!("unexpected `sydney --version` output: {out:?}"),
    }
}

/// Facts recorded in the manifest: enough to rebuild the same bytes.
fn build_metadata(toolchain: &Toolchain) -> Result<Vec<(String, String)>> {
    let mut build = vec![
        ("rustc".to_owned(), toolchain.rustc_version.clone()),
        ("target".to_owned(), toolchain.target.to_owned()),
        // Always: a toolchain that cannot rebuild std fails the build
        // (docs/decisions/0020-build-std.md).
        ("std".to_owned(), "rebuilt".to_owned()),
        (
            "source_date_epoch".to_owned(),
            util::source_date_epoch()?.to_string(),
        ),
    ];
    if let Ok(commit) = util::stdout(command("git").args(["rev-parse", "HEAD"])) {
        build.push(("git_commit".to_owned(), commit.trim().to_owned()));
    }
    Ok(build)
}
