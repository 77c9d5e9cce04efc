//! Project automation, run as `cargo xtask <task>` (the cargo-xtask
//! pattern: see `.cargo/config.toml`). One module per task.

mod bench;
mod bundle;
mod dist;
mod docker;
mod image;
mod pack;
mod test;
mod toolchain;
mod util;
mod warm_order;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use argh::FromArgs;
use bundle_format::Codec;
use bundle_format::portable_pack::PortableOptions;

/// sydney-bundle project tasks.
#[derive(FromArgs, Debug)]
struct Xtask {
    #[argh(subcommand)]
    task: Task,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Task {
    Run(RunArgs),
    Bundle(BundleArgs),
    Pack(PackArgs),
    Stubs(StubsArgs),
    Dist(DistArgs),
    Docker(DockerArgs),
    Image(ImageArgs),
    Test(TestArgs),
    Bench(BenchArgs),
    WarmOrder(WarmOrderArgs),
}

/// Build the bundle, then start it in the foreground (Ctrl-C stops it).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "run",
    example = "cargo xtask run\ncargo xtask run -- --port 9000"
)]
struct RunArgs {
    /// arguments for the server (after --)
    #[argh(positional, greedy)]
    args: Vec<String>,
}

/// Build the server and stub statically and pack them into
/// target/bundle/sydney-bundle.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "bundle",
    example = "cargo xtask bundle\ncargo xtask bundle --codec zstd --out /tmp/sydney-bundle"
)]
struct BundleArgs {
    /// payload codec: gzip (default) or zstd
    #[argh(option, from_str_fn(parse_codec))]
    codec: Option<Codec>,
    /// output file (default target/bundle/sydney-bundle)
    #[argh(option)]
    out: Option<PathBuf>,
    /// cargo target directory for the static builds (default
    /// target/bundle-build; a fresh one gives a clean rebuild)
    #[argh(option)]
    build_dir: Option<PathBuf>,
    /// x86_64 (musl: the default when installable), gnu (x86_64 glibc,
    /// +crt-static: the fallback, forced) or aarch64 (musl, cross-compiled;
    /// default output target/bundle/aarch64/sydney-bundle)
    #[argh(option, from_str_fn(parse_target))]
    target: Option<&'static str>,
}

/// Pack any release folder into one executable file: the `sydney-pack`
/// library with this workspace's stubs (same options, same bytes).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "pack",
    example = "cargo xtask pack _build/prod/rel/my_app --out my_app-bundle\ncargo xtask pack release --entry bin/server --name server --version 1.0.0",
    note = "A mix release (releases/start_erl.data, bin/NAME) needs no flags: entry, args, name, \
            version, codec and RELEASE_TMP are inferred and printed; flags override them. The \
            folder's files, exec bits and in-tree symlinks are packed; symlinks leaving the \
            folder, devices, sockets and fifos are refused. Output is byte-for-byte reproducible \
            (entry mtimes come from SOURCE_DATE_EPOCH, else 0)."
)]
struct PackArgs {
    /// the release folder
    #[argh(positional)]
    dir: PathBuf,
    /// the program to run, relative to the folder (e.g. bin/my_app)
    #[argh(option)]
    entry: Option<String>,
    /// bundle name (letters, digits, . _ + -)
    #[argh(option)]
    name: Option<String>,
    /// bundle version (same alphabet)
    #[argh(option)]
    version: Option<String>,
    /// an argument always passed to the entry before the user's (repeatable)
    #[argh(option)]
    arg: Vec<String>,
    /// pass the entry no default arguments
    #[argh(switch)]
    no_args: bool,
    /// output file (default ./NAME)
    #[argh(option)]
    out: Option<PathBuf>,
    /// payload codec: gzip or zstd (default gzip up to 4 MiB of files, zstd
    /// above)
    #[argh(option, from_str_fn(parse_codec))]
    codec: Option<Codec>,
    /// compression level (gzip 1-9, zstd 1-19; default 9 for gzip, 19 for
    /// zstd, or 9 for zstd above 64 MiB of files)
    #[argh(option)]
    level: Option<u32>,
    /// the entry cannot run without its extracted tree: fail clearly instead
    /// of running it from memory when nothing is writable
    #[argh(switch)]
    needs_tree: bool,
    /// the entry may run from memory (overrides the mix release default)
    #[argh(switch)]
    no_needs_tree: bool,
    /// environment default NAME=VALUE for the entry (repeatable)
    #[argh(option, from_str_fn(parse_env))]
    env: Vec<(String, String)>,
    /// cache root to try after SYDNEY_BUNDLE_DIR (absolute path)
    #[argh(option)]
    cache_dir: Option<String>,
    /// a listening socket the bundle's `daemon` supervisor holds and hands
    /// to the server, for zero-downtime `upgrade`: tcp:[ADDRESS:]PORT
    /// (PORT may be $PORT); repeatable
    #[argh(option)]
    listen: Vec<String>,
    /// stub executable to use (default: this workspace's, built if needed)
    #[argh(option)]
    stub: Option<PathBuf>,
    /// carry the ELF loader, shared libraries and a static shell the
    /// folder's programs need from this machine, so the bundle runs in FROM
    /// scratch, on musl hosts and on any glibc
    #[argh(switch)]
    portable: bool,
    /// with --portable: the static shell for #!/bin/sh scripts (default
    /// /bin/busybox, from busybox-static)
    #[argh(option)]
    shell: Option<PathBuf>,
    /// sign the bundle with this secret key file (`sydney-pack keygen`);
    /// the stub is then this workspace's bundle-stub-CODEC-signed
    #[argh(option)]
    sign: Option<PathBuf>,
    /// architecture to pack for: x86_64 or aarch64 (default: that of the
    /// folder's ELF programs; a folder mixing them is refused)
    #[argh(option, from_str_fn(parse_arch))]
    target: Option<bundle_format::elf::Arch>,
}

/// Build both stubs for x86_64 into target/bundle/stubs and for aarch64 into
/// target/bundle/stubs/aarch64 (what sydney-pack embeds).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "stubs")]
struct StubsArgs {}

/// Build the stubs, then the static sydney-pack with them inside, into
/// target/dist/sydney-pack.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "dist")]
struct DistArgs {}

/// Build the bundle, write its image with no daemon
/// (target/bundle/sydney-image.tar) and `docker load` it as sydney:VERSION
/// and sydney:latest.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "docker",
    note = "The same image as `cargo xtask image target/bundle/sydney-bundle --port 8080`; \
            Dockerfile.scratch builds an equivalent one with `docker build`."
)]
struct DockerArgs {
    /// payload codec: gzip (default) or zstd
    #[argh(option, from_str_fn(parse_codec))]
    codec: Option<Codec>,
}

/// Write a container image of a bundle (an OCI image layout archive that
/// docker load, podman load and skopeo read), with no container daemon.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "image",
    example = "cargo xtask image target/bundle/sydney-bundle --out sydney.tar --port 8080\n\
               docker load -i sydney.tar && docker run -p 8080:8080 sydney:0.1.0\n\
               podman load -i sydney.tar\n\
               skopeo copy oci-archive:sydney.tar docker://registry.example/sydney:0.1.0",
    note = "One layer: the bundle at /app and an empty /tmp (mode 1777). Entrypoint /app, Cmd \
            start, user 65532, Docker's HEALTHCHECK on `/app healthcheck`. The same bundle and \
            options give the same digest: every time is SOURCE_DATE_EPOCH (else 0)."
)]
struct ImageArgs {
    /// the bundle file; several (one release built for x86_64 and aarch64)
    /// make one multi-architecture image
    #[argh(positional)]
    bundles: Vec<PathBuf>,
    /// output file (an OCI image layout tar)
    #[argh(option)]
    out: PathBuf,
    /// image name (default: the bundle's NAME:VERSION)
    #[argh(option)]
    tag: Option<String>,
    /// user to run as: a uid or uid:gid (default 65532)
    #[argh(option)]
    user: Option<String>,
    /// port to expose, PORT or PORT/udp (repeatable)
    #[argh(option)]
    port: Vec<String>,
    /// label in the image config, KEY=VALUE (repeatable)
    #[argh(option)]
    label: Vec<String>,
    /// annotation on the manifest, KEY=VALUE (repeatable)
    #[argh(option)]
    annotation: Vec<String>,
    /// org.opencontainers.image.source: where the source lives
    #[argh(option)]
    source: Option<String>,
    /// org.opencontainers.image.revision: the source revision
    #[argh(option)]
    revision: Option<String>,
    /// no Docker HEALTHCHECK (for bundles that serve no HTTP on $PORT)
    #[argh(switch)]
    no_healthcheck: bool,
}

/// Build the static bundle and stubs, then run every test against them.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "test")]
struct TestArgs {
    /// extra arguments for `cargo test` (e.g. a test name filter)
    #[argh(positional, greedy)]
    args: Vec<String>,
}

/// Measure start-up, size, large payloads and throughput against the
/// alternatives; prints markdown tables and writes target/bench/results.json.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "bench",
    note = "Fails only if a row could not be measured; no timing is asserted. A full run \
            takes several minutes and copies its charts into docs/ for docs/BENCHMARKS.md."
)]
struct BenchArgs {
    /// fewer repetitions and a 64 MiB (not 512 MiB) large payload: what CI
    /// runs, in under 3 minutes
    #[argh(switch)]
    quick: bool,
    /// run only this section (start-up, size, large payloads, throughput,
    /// upgrades, images and swarm); the report then holds only it
    #[argh(option)]
    only: Option<String>,
}

/// Regenerate crates/stub/warm-path.ld, the list that lays out the stub's
/// warm-start code together (needs valgrind; installs it with apt-get when
/// it can).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "warm-order",
    note = "Builds an unstripped stub with a link map, runs one warm start under callgrind up \
            to the entry's execve, and writes the functions that ran as linker patterns. Run \
            it after changing the code a warm start runs; every stub build reports patterns \
            that have gone stale."
)]
struct WarmOrderArgs {}

fn parse_target(value: &str) -> Result<&'static str, String> {
    match value {
        "x86_64" | "musl" | toolchain::MUSL => Ok(toolchain::MUSL),
        "gnu" | toolchain::GNU => Ok(toolchain::GNU),
        "aarch64" | "arm64" | toolchain::AARCH64 => Ok(toolchain::AARCH64),
        _ => Err(format!(
            "unknown target {value:?}: use x86_64 (or musl), gnu or aarch64"
        )),
    }
}

fn parse_arch(value: &str) -> Result<bundle_format::elf::Arch, String> {
    sydney_pack::arch::parse(value)
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    sydney_pack::plan::parse_env(value)
}

fn parse_codec(value: &str) -> Result<Codec, String> {
    Codec::from_name(value).ok_or_else(|| format!("unknown codec {value:?}: use gzip or zstd"))
}

fn main() -> ExitCode {
    let xtask: Xtask = argh::from_env();
    match run(xtask.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Run(args) => {
            let out = bundle::default_out();
            bundle::bundle(bundle::DEFAULT_CODEC, &out, None)?;
            eprintln!("$ {} start -- {}", out.display(), args.args.join(" "));
            // Become the bundle, so Ctrl-C and exit codes are its own.
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(&out)
                    .arg("start")
                    .arg("--")
                    .args(&args.args),
            );
            bail!("cannot start {}: {err}", out.display());
        }
        Task::Bundle(args) => {
            let out = args
                .out
                .unwrap_or_else(|| bundle::default_out_for(args.target));
            bundle::bundle_for(
                args.codec.unwrap_or(bundle::DEFAULT_CODEC),
                &out,
                args.build_dir.as_deref(),
                args.target,
            )?;
        }
        Task::Pack(args) => {
            if !args.portable && args.shell.is_some() {
                bail!("--shell only applies with --portable; add --portable");
            }
            let request = sydney_pack::Request {
                entry: args.entry,
                args: if args.no_args {
                    Some(Vec::new())
                } else {
                    (!args.arg.is_empty()).then_some(args.arg)
                },
                name: args.name,
                version: args.version,
                codec: args.codec,
                level: args.level,
                needs_tree: match (args.needs_tree, args.no_needs_tree) {
                    (true, true) => bail!("--needs-tree and --no-needs-tree contradict each other"),
                    (true, false) => Some(true),
                    (false, true) => Some(false),
                    (false, false) => None,
                },
                env: args.env,
                cache_dir: args.cache_dir,
                listen: args.listen,
                mtime: util::source_date_epoch()?,
                portable: args
                    .portable
                    .then_some(PortableOptions { shell: args.shell }),
                target: args.target,
            };
            let stub = match args.stub {
                Some(path) => pack::StubSource::File(path),
                None => pack::StubSource::Workspace,
            };
            pack::run(
                &args.dir,
                &request,
                &stub,
                args.out.as_deref(),
                args.sign.as_deref(),
            )?;
        }
        Task::Stubs(_) => {
            dist::all_stubs()?;
        }
        Task::Dist(_) => {
            dist::dist()?;
        }
        Task::Docker(args) => {
            let built = bundle::bundle(
                args.codec.unwrap_or(bundle::DEFAULT_CODEC),
                &bundle::default_out(),
                None,
            )?;
            docker::build_image(&built)?;
        }
        Task::Image(args) => {
            let options = image::options(image::Flags {
                tag: args.tag,
                user: args.user,
                ports: args.port,
                labels: args.label,
                annotations: args.annotation,
                source: args.source,
                revision: args.revision,
                no_healthcheck: args.no_healthcheck,
            })?;
            if args.bundles.is_empty() {
                bail!(
                    "name the bundle file, e.g. cargo xtask image target/bundle/sydney-bundle --out sydney.tar"
                );
            }
            let bundles: Vec<&std::path::Path> =
                args.bundles.iter().map(PathBuf::as_path).collect();
            image::write_multi_arch(&bundles, &options, &args.out)?;
        }
        Task::Test(args) => test::run(&args.args)?,
        Task::Bench(args) => bench::run(args.quick, args.only.as_deref())?,
        Task::WarmOrder(_) => warm_order::generate()?,
    }
    Ok(())
}
