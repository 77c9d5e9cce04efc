//! Extracted trees in a cache root: atomic creation, in-use locks, and
//! housekeeping.
//!
//! A tree is created as `.tmp-<tree>-<pid>-<n>` (locked exclusively by its
//! creator), filled and verified, then renamed to `<tree>`; a directory
//! with a tree's name is therefore always complete. Every process running
//! from a tree holds a shared flock on it through a descriptor that survives
//! exec, so housekeeping can tell which trees are in use, and which temp
//! dirs were abandoned by a crash, without pid files or /proc.
//!
//! Housekeeping deletes only what the stub made: it walks a root only when
//! the root carries the marker [`ROOT_MARKER`] (written when the root holds
//! nothing but the stub's own entries, so a directory shared with other
//! data is never adopted), and there removes only names in the stub's exact
//! formats, trees only when their marker file names them exactly. See
//! docs/decisions/0050-cache-root-ownership.md.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bundle_format::{Bundle, FormatError};

use crate::sys::{self, Lock};

/// Prefix of temporary directories (extractions in progress or abandoned).
const TEMP_PREFIX: &str = ".tmp-";
/// Prefix of trees being removed by housekeeping.
const GC_PREFIX: &str = ".tmp-gc-";
/// Marker written into every tree: identifies its bundle for housekeeping.
/// Payloads may not hold an entry of this name (checked when packing and
/// unpacking).
pub const MARKER: &str = bundle_format::paths::MARKER_NAME;
/// Marker file of a cache root the stub owns: only such a root is walked
/// for deletion.
pub const ROOT_MARKER: &str = ".sydney-bundle-cache";
/// The state directories' parent in a cache root.
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
    // A file or a symlink at the tree's name is not a tree: ENOTDIR or ELOOP.
    let dir = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
    {
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
    check_room(bundle, root)?;
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

/// Refuses early, with a clear "needs N, M free", when the file system
/// holding `root` has less room than the payload's files alone take.
pub fn check_room(bundle: &Bundle<'_>, root: &Path) -> Result<(), FormatError> {
    let needs = bundle.manifest().unpacked_bytes;
    let Ok(free) = sys::free_bytes(root) else {
        return Ok(());
    };
    if free >= needs {
        return Ok(());
    }
    Err(FormatError::io(
        "not enough room in",
        root,
        io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "the payload needs {}, {} free",
                human_size(needs),
                human_size(free)
            ),
        ),
    ))
}

/// `412 KB`, or `37 MB` from 10 MB up (rounded up: never understates a need).
pub fn human_size(bytes: u64) -> String {
    const KB: u64 = 1024;
    const MB: u64 = 1024 * 1024;
    if bytes >= 10 * MB {
        format!("{} MB", bytes.div_ceil(MB))
    } else {
        format!("{} KB", bytes.div_ceil(KB))
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
    // Never through a link, never over an existing entry (the unpacker
    // refuses the name, this is the second line).
    create_private(&path, 0o644)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|err| FormatError::io("cannot write", &path, err))
}

/// Creates a new file at `path` (not through a symlink, not over anything).
fn create_private(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
}

/// What a tree's marker says: the bundle name and the tree name it was
/// written for, and when.
fn read_marker(tree: &Path) -> Option<(String, String, SystemTime)> {
    let path = tree.join(MARKER);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != sys::geteuid() {
        return None;
    }
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    };
    let name = field("name")?;
    let digest = field("payload_sha256")?;
    let tree_name = format!("{name}-{}-{}", field("version")?, digest.get(..16)?);
    Some((name.to_owned(), tree_name, meta.modified().ok()?))
}

/// `<name>-<version>-<16 lowercase hex>`, as `Manifest::tree_dir_name` makes.
pub fn is_tree_name(name: &str) -> bool {
    let Some((head, digest)) = name.rsplit_once('-') else {
        return false;
    };
    digest.len() == 16
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && !head.starts_with('.')
        && head
            .split_once('-')
            .is_some_and(|(name, version)| !name.is_empty() && !version.is_empty())
}

/// Strips `-<digits>` from the end of `name`.
fn strip_number(name: &str) -> Option<&str> {
    let (head, number) = name.rsplit_once('-')?;
    (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then_some(head)
}

/// `.tmp-<tree>-<pid>-<n>`, as [`make_temp_dir`] makes.
fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .and_then(strip_number)
        .and_then(strip_number)
        .is_some_and(is_tree_name)
}

/// `.tmp-gc-<tree or temp>-<pid>`, as [`try_remove_unused`] makes.
fn is_gc_name(name: &str) -> bool {
    name.strip_prefix(GC_PREFIX)
        .and_then(strip_number)
        .is_some_and(|doomed| is_tree_name(doomed) || is_temp_name(doomed))
}

/// Whether the stub owns `root` and may delete in it: it carries
/// [`ROOT_MARKER`], or holds nothing but the stub's own entries (a root it
/// created, or one made by an older stub), and then gets the marker now.
/// A root that also holds anything else is never adopted.
pub fn owns_root(root: &Path) -> bool {
    let marker = root.join(ROOT_MARKER);
    match fs::symlink_metadata(&marker) {
        Ok(meta) => return meta.is_file() && meta.uid() == sys::geteuid(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(_) => return false,
    }
    let Ok(entries) = fs::read_dir(root) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return false;
        };
        if name == ROOT_MARKER {
            continue; // adopted by a concurrent process meanwhile
        }
        let ours = name == crate::cache::STATE_DIR
            || is_tree_name(name)
            || is_temp_name(name)
            || is_gc_name(name);
        if !ours || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            return false;
        }
    }
    create_private(&marker, 0o600)
        .and_then(|mut file| {
            file.write_all(
                b"This directory is a sydney-bundle cache root. Bundles remove their old \
                  trees and crash leftovers here; keep nothing else in it.\n",
            )
        })
        .is_ok()
}

/// Removes a directory tree, ignoring errors (used on failure paths and for
/// leftovers; a later housekeeping pass retries).
pub fn remove_tree(path: &Path) {
    let _ = fs::remove_dir_all(path);
}

/// What housekeeping did.
#[derive(Debug, Default)]
pub struct Housekeeping {
    /// The root holds entries the stub did not make: nothing was removed.
    pub foreign: bool,
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
    if !owns_root(root) {
        report.foreign = true;
        return report;
    }
    let Ok(entries) = fs::read_dir(root) else {
        return report;
    };
    let uid = sys::geteuid();
    let mut old_trees = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let path = entry.path();
        // Real directories of ours only (the entry's type is not followed).
        if !entry.file_type().is_ok_and(|t| t.is_dir())
            || !entry.metadata().is_ok_and(|m| m.uid() == uid)
        {
            continue;
        }
        if is_temp_name(file_name) || is_gc_name(file_name) {
            if try_remove_unused(&path) == Some(true) {
                report.temps_removed.push(path);
            }
        } else if Some(file_name) != current
            && is_tree_name(file_name)
            && file_name
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
        {
            // The marker must name exactly this directory and bundle (the
            // prefix alone would match bundle `<name>-extra` too).
            if let Some((bundle, tree_name, modified)) = read_marker(&path) {
                if bundle == name && tree_name == file_name {
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
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .ok()?;
    if !sys::flock(&handle, Lock::ExclusiveNow).ok()? {
        return Some(false);
    }
    // Move it out of the way first, so no starter sees a half-removed tree,
    // then delete it while still holding the lock.
    let doomed = dir.with_file_name(format!(
        "{GC_PREFIX}{}-{}",
        dir.file_name()?.to_string_lossy(),
        std::process::id()
    ));
    if fs::rename(dir, &doomed).is_err() {
        return None;
    }
    remove_tree(&doomed);
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stubs_own_names_are_recognised() {
        for tree in [
            "sydney-0.1.0-0123456789abcdef",
            "my-app-1.0-rc1-0000000000000000",
        ] {
            assert!(is_tree_name(tree), "{tree}");
            let temp = format!(".tmp-{tree}-123-0");
            assert!(is_temp_name(&temp), "{temp}");
            assert!(is_gc_name(&format!(".tmp-gc-{tree}-9")));
            assert!(is_gc_name(&format!(".tmp-gc-{temp}-9")));
        }
        for foreign in [
            "project",
            ".tmp-important",
            ".tmp-sydney-0.1.0-0123456789abcdef",
            ".tmp-sydney-0.1.0-0123456789abcdef-12",
            ".tmp-sydney-0.1.0-0123456789abcdef-x-0",
            "sydney-0123456789abcdef",
            "sydney-0.1.0-0123456789ABCDEF",
            "sydney-0.1.0-0123456789abcde",
            ".tmp-gc-project-1",
            "-1.0-0123456789abcdef",
        ] {
            assert!(
                !is_tree_name(foreign) && !is_temp_name(foreign) && !is_gc_name(foreign),
                "{foreign}"
            );
        }
    }

    #[test]
    fn sizes_read_plainly() {
        assert_eq!(human_size(0), "0 KB");
        assert_eq!(human_size(1), "1 KB");
        assert_eq!(human_size(412 * 1024), "412 KB");
        assert_eq!(human_size(10 * 1024 * 1024 + 1), "11 MB");
    }
}
