//! File-system probing of one candidate root: creating it, owner and mode
//! checks, read-only and noexec mounts, writability.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bundle_format::error::IoCause;

use super::{Candidate, Problem, Source};
use crate::sys;

impl Problem {
    pub(super) fn of(err: &io::Error) -> Problem {
        match IoCause::of(err) {
            IoCause::ReadOnly | IoCause::Denied => Problem::Denied,
            IoCause::Full => Problem::Full,
            IoCause::NotFound | IoCause::NotADirectory | IoCause::Other => Problem::Unusable,
        }
    }
}

/// What we learned about a usable root.
#[derive(Debug, Clone)]
pub(super) struct RootState {
    pub(super) read_only: bool,
    pub(super) no_exec: bool,
    /// The directory whose writability decides (the root, or for a root not
    /// yet created, its nearest existing ancestor). Checked only when needed:
    /// a warm start never asks.
    write_probe: PathBuf,
}

impl RootState {
    pub(super) fn writable(&self) -> bool {
        !self.read_only && sys::can_write_dir(&self.write_probe)
    }
}

/// Creates the root if needed (and `create`) and checks it is safe. On
/// refusal returns the reason and its kind.
pub(super) fn prepare(candidate: &Candidate, create: bool) -> Result<RootState, (String, Problem)> {
    let root = &candidate.root;
    let io_refusal = |err: io::Error| (describe_io(&err), Problem::of(&err));
    if !root.is_absolute() {
        return Err(("it is not an absolute path".to_owned(), Problem::Unusable));
    }
    let meta = match fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound && !create => {
            return preview_missing(root);
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            create_root(candidate).map_err(io_refusal)?;
            fs::symlink_metadata(root).map_err(io_refusal)?
        }
        Err(err) => return Err(io_refusal(err)),
    };
    check_private(&meta).map_err(|reason| (reason, Problem::Unsafe))?;
    let flags = sys::mount_flags(root).map_err(io_refusal)?;
    Ok(RootState {
        read_only: flags.read_only,
        no_exec: flags.no_exec,
        write_probe: root.clone(),
    })
}

/// A root that does not exist yet: judge it by its nearest existing ancestor.
fn preview_missing(root: &Path) -> Result<RootState, (String, Problem)> {
    let ancestor = root
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let flags = sys::mount_flags(ancestor).map_err(|err| (describe_io(&err), Problem::of(&err)))?;
    Ok(RootState {
        read_only: flags.read_only,
        no_exec: flags.no_exec,
        write_probe: ancestor.to_owned(),
    })
}

/// Refuses roots that someone else could tamper with.
pub fn check_private(meta: &fs::Metadata) -> Result<(), String> {
    if meta.file_type().is_symlink() {
        return Err(
            "it is a symlink, which someone may have planted; use a real directory".to_owned(),
        );
    }
    if !meta.is_dir() {
        return Err("it is not a directory".to_owned());
    }
    let uid = sys::geteuid();
    if meta.uid() != uid {
        return Err(format!(
            "it is owned by uid {}, not by this user (uid {uid}); remove it or choose another directory",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "it is writable by group or others (mode {mode:o}); run chmod 700 on it"
        ));
    }
    Ok(())
}

fn create_root(candidate: &Candidate) -> io::Result<()> {
    let root = &candidate.root;
    let parent = root.parent().unwrap_or(Path::new("/"));
    match candidate.source {
        // FROM scratch images have no /tmp: make a normal sticky one.
        Source::Tmp if !parent.exists() => match DirBuilder::new().mode(0o1777).create(parent) {
            Ok(()) => fs::set_permissions(parent, fs::Permissions::from_mode(0o1777))?,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        },
        // `~/.cache` (or an explicit path's parents) may not exist yet.
        Source::HomeCache | Source::XdgCache | Source::Explicit | Source::Baked => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        Source::Tmp | Source::TmpDir => {}
    }
    match DirBuilder::new().mode(0o700).create(root) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(err),
        _ => Ok(()),
    }
}

/// A short reason for an I/O failure on a cache root.
fn describe_io(err: &io::Error) -> String {
    match IoCause::of(err) {
        IoCause::ReadOnly => "read-only file system".to_owned(),
        IoCause::Denied => "permission denied".to_owned(),
        IoCause::Full => "disk full".to_owned(),
        IoCause::NotFound => "parent directory does not exist".to_owned(),
        IoCause::NotADirectory => "a parent is not a directory".to_owned(),
        IoCause::Other => err.to_string(),
    }
}
