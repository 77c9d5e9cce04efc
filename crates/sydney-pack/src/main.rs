//! `sydney-pack`: one static binary that packs a release folder into one
//! executable file, with the stubs inside it (docs/SYDNEY_PACK.md).

mod cli;

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bundle_format::Codec;
use bundle_format::elf::Arch;
use bundle_format::portable_pack::PortableOptions;
use clap::{CommandFactory, Parser};
use sydney_pack::{Error, Request, stubs, ui};

use crate::cli::{Cli, Command, ImageArgs, PackArgs};

/// `--version`: the tool's version and the stubs it carries.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (x86_64 and aarch64 Linux stubs inside: ",
    env!("SYDNEY_PACK_STUBS_SUMMARY"),
    ")"
);

/// The exit codes, as documented in docs/SYDNEY_PACK.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Something not listed below (an I/O error, a bad stub file).
    Failure = 1,
    /// A bad command line: unknown option, bad value, missing folder.
    Usage = 2,
    /// The folder is not a release (and no flags say how to pack it), or it
    /// cannot be packed (missing, not a folder, an entry that does not
    /// exist, a symlink out of it, a device node, programs for several
    /// architectures).
    NotARelease = 3,
    /// The output cannot be written.
    Output = 4,
    /// `inspect`: the file is not a (readable) bundle.
    NotABundle = 5,
}

impl Exit {
    fn of(err: &Error) -> Exit {
        match err {
            Error::NotARelease { .. } | Error::Input(_) | Error::Arch(_) => Exit::NotARelease,
            Error::Option(_) => Exit::Usage,
            Error::Output { .. } => Exit::Output,
            Error::NotABundle { .. } | Error::Read { .. } => Exit::NotABundle,
            Error::Stub(_) => Exit::Failure,
            Error::Image(image) => match image {
                bundle_image::ImageError::Read { .. }
                | bundle_image::ImageError::NotABundle { .. } => Exit::NotABundle,
                bundle_image::ImageError::BadOption(_) => Exit::Usage,
                bundle_image::ImageError::Write { .. } => Exit::Output,
                bundle_image::ImageError::Spec { .. } => Exit::Failure,
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and --version (exit 0), or a usage error with suggestions
        // (exit 2): clap's own rendering.
        Err(err) => err.exit(),
    };
    let result = match cli.command {
        Some(Command::Pack(args)) => pack(*args),
        // Bare `sydney-pack`: the help. Flags without a folder: pack
        // says which folder is missing.
        None if std::env::args_os().len() <= 1 => {
            let _ = Cli::command().print_help();
            return ExitCode::from(Exit::Usage as u8);
        }
        None => pack(cli.pack),
        Some(Command::Doctor { dir }) => {
            sydney_pack::doctor(&dir).map(|report| print!("{}", report.render()))
        }
        Some(Command::Inspect { file, files }) => {
            sydney_pack::inspect::inspect(&file, files).map(|text| print!("{text}"))
        }
        Some(Command::Image(args)) => image(*args),
        Some(Command::Keygen { secret }) => sydney_pack::keygen::keygen(&secret).map(|key| {
            println!(
                "wrote the secret key {} (keep it secret) and the public key {}\nkey id: {}\n\
                 public key: {key}",
                secret.display(),
                sydney_pack::keygen::public_path(&secret).display(),
                key.key_id()
            );
        }),
        Some(Command::Completions { shell }) => {
            let mut stdout = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "sydney-pack", &mut stdout);
            let _ = stdout.flush();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = error_chain(&err);
            eprintln!("sydney-pack: error: {message}");
            ExitCode::from(Exit::of(&err) as u8)
        }
    }
}

/// The error and its causes on one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = inner.source();
    }
    message
}

/// `image`: the bundle into an OCI image archive (crates/bundle-image).
fn image(args: ImageArgs) -> Result<(), Error> {
    let pairs = |flag: &str, items: &[String]| {
        items
            .iter()
            .map(|item| bundle_image::parse_pair(flag, item))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut options = bundle_image::ImageOptions {
        created: source_date_epoch()?,
        ports: args.ports,
        labels: pairs("--label", &args.labels)?,
        annotations: pairs("--annotation", &args.annotations)?,
        source: args.source,
        revision: args.revision,
        ..bundle_image::ImageOptions::default()
    };
    if let Some(tag) = args.tag {
        options.tag = Some(tag.parse::<bundle_image::Reference>()?);
    }
    if let Some(user) = args.user {
        options.user = user;
    }
    if args.no_healthcheck {
        options.healthcheck = None;
    }
    let bundles: Vec<&Path> = args.bundles.iter().map(PathBuf::as_path).collect();
    let report = bundle_image::write_multi_arch_image(&bundles, &options, &args.out)?;
    let platforms: Vec<String> = report
        .architectures
        .iter()
        .map(|arch| format!("linux/{}", arch.oci_name()))
        .collect();
    eprintln!(
        "wrote image {} ({} {}, {}) to {}: {} bytes; config {} (Docker's image ID)",
        report.reference,
        report.bundle_name,
        report.bundle_version,
        platforms.join(" + "),
        args.out.display(),
        report.archive_bytes,
        report.config_digest
    );
    Ok(())
}

fn pack(args: PackArgs) -> Result<(), Error> {
    let Some(dir) = args.dir.clone() else {
        return Err(Error::Option(
            "name the release folder to pack, e.g. sydney-pack _build/prod/rel/my_app".to_owned(),
        ));
    };
    let request = request(&args)?;
    let plan = sydney_pack::plan(&dir, &request)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(&plan.options.name));
    sydney_pack::check_output(&out)?;
    let key = args
        .sign
        .as_deref()
        .map(sydney_pack::read_secret_key)
        .transpose()?;
    // Before anything is printed: a wrong stub or key fails on one line.
    let stub = stub(
        args.stub.as_deref(),
        plan.arch,
        plan.options.codec,
        key.is_some(),
    )?;
    ui::print_inferred(&dir, &plan);
    ui::warn_about_hosts(&dir, &plan.options)?;
    let mut progress = ui::ProgressLine::new();
    let result =
        sydney_pack::pack_folder(&dir, &stub, &plan.options, &out, key.as_ref(), &mut |p| {
            progress.update(p)
        });
    progress.finish();
    let report = result?;
    ui::print_summary(&out, &report, plan.options.level);
    if let Some(key) = &key {
        eprintln!(
            "signed by key {} ({})",
            key.public_key().key_id(),
            key.public_key()
        );
    }
    Ok(())
}

fn request(args: &PackArgs) -> Result<Request, Error> {
    Ok(Request {
        entry: args.entry.clone(),
        args: if args.no_args {
            Some(Vec::new())
        } else if args.args.is_empty() {
            None
        } else {
            Some(args.args.clone())
        },
        name: args.name.clone(),
        version: args.app_version.clone(),
        codec: args.codec,
        level: args.level,
        needs_tree: match (args.needs_tree, args.no_needs_tree) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        env: args.env.clone(),
        cache_dir: args.cache_dir.clone(),
        listen: args.listen.clone(),
        mtime: source_date_epoch()?,
        portable: args.portable.then(|| PortableOptions {
            shell: args.shell.clone(),
        }),
        target: args.target,
    })
}

/// The embedded stub for `arch` and `codec` (for a signed bundle, the stub
/// of signed bundles), or the `--stub` file (which must be for `arch`).
fn stub(
    path: Option<&Path>,
    arch: Arch,
    codec: Codec,
    signed: bool,
) -> Result<Cow<'static, [u8]>, Error> {
    let Some(path) = path else {
        return Ok(Cow::Borrowed(stubs::embedded(arch, codec, signed)));
    };
    let bytes = std::fs::read(path)
        .map_err(|err| Error::Stub(format!("cannot read the stub {}: {err}", path.display())))?;
    let origin = path.display().to_string();
    stubs::check(&bytes, &origin)?;
    stubs::check_arch(&bytes, &origin, arch)?;
    if signed {
        stubs::check_signing(&bytes, &origin)?;
    }
    Ok(Cow::Owned(bytes))
}

/// `SOURCE_DATE_EPOCH`, or 0: the mtime written into every payload entry.
fn source_date_epoch() -> Result<u64, Error> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.is_empty() => value.trim().parse().map_err(|_| {
            Error::Option(format!(
                "SOURCE_DATE_EPOCH={value:?} is not a number of seconds"
            ))
        }),
        _ => Ok(0),
    }
}
