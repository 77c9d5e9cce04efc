//! Packing a release folder into one executable file: the library behind
//! the `sydney-pack` binary and `cargo xtask pack` (one implementation).
//!
//! The flow is [`plan`] (what the user asked for, completed by what the
//! folder says about itself: [`mix`] knows a mix release), then
//! [`pack_folder`] (doctor warnings, the pack itself through
//! `bundle_format::pack`, atomically). [`inspect`] describes any bundle
//! without running it. The stubs come from the caller: the binary embeds
//! them ([`stubs`], feature `embed`), xtask builds them.

pub mod arch;
pub mod error;
pub mod inspect;
pub mod keygen;
pub mod mix;
pub mod plan;
pub mod stubs;
pub mod ui;

use std::fs::{File, OpenOptions};
use std::path::Path;

use bundle_format::EntryKind;
use bundle_format::doctor::Report;
use bundle_format::pack::{PackOptions, PackReport, Progress, pack_to_path_signed, scan};
use bundle_format::signature::SecretKey;

pub use error::{Error, Result};
pub use plan::{Inferred, Plan, Request, plan};

/// The packer fact recorded in every bundle's build metadata. It names
/// this library, not the front end, so `sydney-pack` and `cargo xtask pack`
/// write the same bytes for the same folder and options.
pub const PACKER: &str = concat!("sydney-pack ", env!("CARGO_PKG_VERSION"));

/// Packs `dir` behind `stub` into `out` as `options` say, atomically (a
/// temporary file beside `out`, renamed into place). `progress` sees bytes
/// of file content as they are packed.
///
/// With `key`, the bundle is signed before it is renamed into place; the
/// stub must then be one that checks signatures ([`stubs::check_signing`]).
pub fn pack_folder(
    dir: &Path,
    stub: &[u8],
    options: &PackOptions,
    out: &Path,
    key: Option<&SecretKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<PackReport> {
    check_output(out)?;
    pack_to_path_signed(dir, stub, options, out, key, progress)
        .map_err(|err| Error::from_pack(err, out))
}

/// Reads the secret key file `path` (made by `sydney-pack keygen`).
pub fn read_secret_key(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        Error::Option(format!(
            "cannot read the key file {} ({err}); make one with `sydney-pack keygen {}`",
            path.display(),
            path.display()
        ))
    })?;
    SecretKey::parse(&text)
        .map_err(|why| Error::Option(format!("the key file {}: {why}", path.display())))
}

/// Fails early, with the output's own error, when `out` cannot be written:
/// its folder is missing, is not writable, or `out` is a folder.
pub fn check_output(out: &Path) -> Result<()> {
    let not_writable = |reason: String| Error::Output {
        path: out.to_owned(),
        reason,
    };
    if out.is_dir() {
        return Err(not_writable(
            "it is a folder; name the bundle file, e.g. --out ./my_app".to_owned(),
        ));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(not_writable(format!(
            "the folder {} does not exist; create it or choose another --out",
            parent.display()
        )));
    }
    let probe = parent.join(format!(".sydney-pack-probe-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(err) => Err(not_writable(format!(
            "cannot create files in {} ({err}); choose another --out",
            parent.display()
        ))),
    }
}

/// The doctor over a folder on disk: which hosts its programs can run on.
pub fn doctor(dir: &Path) -> Result<Report> {
    let mut report = Report::default();
    for entry in scan(dir).map_err(Error::Input)? {
        if entry.kind != EntryKind::File {
            continue;
        }
        let mut file = File::open(&entry.path).map_err(|err| {
            Error::Input(bundle_format::FormatError::io(
                "cannot read",
                &entry.path,
                err,
            ))
        })?;
        report
            .add_from(&entry.rel, entry.mode & 0o111 != 0, entry.size, &mut file)
            .map_err(|err| {
                Error::Input(bundle_format::FormatError::io(
                    "cannot read",
                    &entry.path,
                    err,
                ))
            })?;
    }
    Ok(report)
}
