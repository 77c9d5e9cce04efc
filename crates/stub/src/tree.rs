//! Extracted trees in a cache root: atomic creation, in-use locks, and
//! housekeeping.
//!
//! A tree is created as `.tmp-<tree>-<pid>-<n>` (locked exclusively by its
//! creator), filled and verified, then renamed to `<tree>`; a directory
//! with a tree's name is therefore always complete. Every process running
//! from a tree holds a shared flock on it through a descriptor that survives
//! exec, so housekeeping can tell which trees are in use, and which temp
//! dirs were abandoned by a crash, without pid files or /proc.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bundle_format::{Bundle, FormatError};

use crate::sys::{self, Lock};

/// Prefix of temporary directories (extractions in progress or abandoned).
const TEMP_PREFIX: &str = ".tmp-";
/// Marker written into every tree: identifies its bundle for housekeeping.
pub const MARKER: &str = ".sydney-bundle";
/// Older versions of a bundle kept besides the current one.
pub const KEEP_OLDER: usize = 2;

/// A tree we hold a shared lock on.
#[derive(Debug)]
pub struct Tree {
    /// The tree's directory.
    pub path: PathBuf,
    /// The open directory carrying our shared lock.
    pub lock: File,
}

/// Opens and locks the tree at `path` if it exists. Waits while housekeeping
/// holds it, then makes sure it was not removed meanwhile.
pub fn open_existing(path: &Path) -> io::Result<Option<Tree>> {
    let dir = match File::open(path) {
        Ok(dir) => dir,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    sys::flock(&dir, Lock::Shared)?;
    let held = dir.metadata()?;
    match fs::metadata(path) {
        Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(Some(Tree {
            path: path.to_owned(),
            lock: dir,
        })),
        Ok(_) => Ok(None),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// What extraction did.
#[derive(Debug)]
pub struct Extracted {
    /// The tree, locked shared.
    pub tree: Tree,
    /// False if another process finished the same tree first.
    pub ours: bool,
}

/// Extracts `bundle` into `root/<tree name>` atomically. A concurrent
/// extraction of the same tree may win the final rename; then ours is
/// discarded and theirs used. On error nothing is left behind.
pub fn extract(bundle: &Bundle<'_>, root: &Path) -> Result<Extracted, FormatError> {
    let name = bundle.tree_dir_name();
    let final_path = root.join(&name);
    let (temp, temp_lock) = make_temp_dir(root, &name)?;
    let result = bundle
        .unpack_verified(&temp)
        .and_then(|_| write_marker(bundle, &temp))
        .and_then(|()| patch_portable(bundle, &temp, &final_path));
    if let Err(err) = result {
        remove_tree(&temp);
        return Err(err);
    }
    let ours = match fs::rename(&temp, &final_path) {
        Ok(()) => true,
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
            remove_tree(&temp);
            false
        }
        Err(err) => {
            remove_tree(&temp);
            return Err(FormatError::io("cannot rename into", &final_path, err));
        }
    };
    drop(temp_lock);
    match open_existing(&final_path) {
        Ok(Some(tree)) => Ok(Extracted { tree, ours }),
        Ok(None) => Err(FormatError::io(
            "cannot open",
            &final_path,
            io::Error::new(
                io::ErrorKind::NotFound,
                "the tree vanished after extraction",
            ),
        )),
        Err(err) => Err(FormatError::io("cannot open", &final_path, err)),
    }
}

/// Creates a fresh temp dir in `root` and locks it exclusively.
///
/// Housekeeping in another process may grab a temp dir in the instant
/// between its creation and our lock; then we simply try a new name.
fn make_temp_dir(root: &Path, tree: &str) -> Result<(PathBuf, File), FormatError> {
    let pid = std::process::id();
    for n in 0..1000 {
        let temp = root.join(format!("{TEMP_PREFIX}{tree}-{pid}-{n}"));
        match fs::create_dir(&temp) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(FormatError::io("cannot create", &temp, err)),
        }
        let Ok(lock) = File::open(&temp) else {
            continue;
        };
        let locked = sys::flock(&lock, Lock::ExclusiveNow)
            .map_err(|err| FormatError::io("cannot lock", &temp, err))?;
        let same = |held: &fs::Metadata| {
            fs::metadata(&temp).is_ok_and(|now| now.ino() == held.ino() && now.dev() == held.dev())
        };
        if locked && lock.metadata().is_ok_and(|held| same(&held)) {
            return Ok((temp, lock));
        }
    }
    Err(FormatError::io(
        "cannot create a temporary directory in",
        root,
        io::Error::new(io::ErrorKind::AlreadyExists, "too many leftovers"),
    ))
}

/// A portable payload's placeholders get the tree's final, absolute path
/// (bundle_format::portable), before the rename makes the tree visible.
pub fn patch_portable(
    bundle: &Bundle<'_>,
    temp: &Path,
    final_path: &Path,
) -> Result<(), FormatError> {
    if bundle
        .manifest()
        .build_value(bundle_format::portable::BUILD_KEY)
        .is_none()
    {
        return Ok(());
    }
    let absolute = std::path::absolute(final_path)
        .map_err(|err| FormatError::io("cannot resolve", final_path, err))?;
    bundle_format::portable::apply(temp, &absolute).map(drop)
}

/// The marker names the bundle (for housekeeping) and records the digest.
fn write_marker(bundle: &Bundle<'_>, tree: &Path) -> Result<(), FormatError> {
    let manifest = bundle.manifest();
    let text = format!(
        "name={}\nversion={}\npayload_sha256={}\n",
        manifest.name,
        manifest.version,
        bundle_format::text::hex(bundle.payload_sha256())
    );
    let path = tree.join(MARKER);
    fs::write(&path, text).map_err(|err| FormatError::io("cannot write", &path, err))
}

/// Reads the bundle name from a tree's marker.
fn marker_name(tree: &Path) -> Option<(String, SystemTime)> {
    let path = tree.join(MARKER);
    let text = fs::read_to_string(&path).ok()?;
    let modified = fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let name = text.lines().find_map(|l| l.strip_prefix("name="))?;
    Some((name.to_owned(), modified))
}

/// Removes a directory tree, ignoring errors (used on failure paths and for
/// leftovers; a later housekeeping pass retries).
pub fn remove_tree(path: &Path) {
    let _ = fs::remove_dir_all(path);
}

/// What housekeeping did.
#[derive(Debug, Default)]
pub struct Housekeeping {
    /// Abandoned temp dirs removed.
    pub temps_removed: Vec<PathBuf>,
    /// Old trees removed.
    pub trees_removed: Vec<PathBuf>,
    /// Old trees kept because a running process uses them.
    pub in_use: Vec<PathBuf>,
}

/// Cleans `root`: removes temp dirs whose creator is gone, and trees of
/// bundle `name` other than `current`, keeping the newest `keep` of them and
/// any that a running process uses.
pub fn housekeeping(root: &Path, name: &str, current: Option<&str>, keep: usize) -> Housekeeping {
    let mut report = Housekeeping::default();
    let Ok(entries) = fs::read_dir(root) else {
        return report;
    };
    let mut old_trees = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if file_name.starts_with(TEMP_PREFIX) {
            if try_remove_unused(&path) == Some(true) {
                report.temps_removed.push(path);
            }
        } else if Some(file_name) != current {
            if let Some((tree_name, modified)) = marker_name(&path) {
                if tree_name == name {
                    old_trees.push((modified, path));
                }
            }
        }
    }
    old_trees.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, path) in old_trees.into_iter().skip(keep) {
        match try_remove_unused(&path) {
            Some(true) => report.trees_removed.push(path),
            Some(false) => report.in_use.push(path),
            None => {}
        }
    }
    report
}

/// Removes `dir` if nobody holds a lock on it: `Some(true)` removed,
/// `Some(false)` in use, `None` could not tell.
fn try_remove_unused(dir: &Path) -> Option<bool> {
    let handle = File::open(dir).ok()?;
    if !sys::flock(&handle, Lock::ExclusiveNow).ok()? {
        return Some(false);
    }
    // Move it out of the way first, so no starter sees a half-removed tree,
    // then delete it while still holding the lock.
    let doomed = dir.with_file_name(format!(
        "{TEMP_PREFIX}gc-{}-{}",
        dir.file_name()?.to_string_lossy(),
        std::process::id()
    ));
    if fs::rename(dir, &doomed).is_err() {
        return None;
    }
    remove_tree(&doomed);
    Some(true)
}
