//! The walk: which folder entries can be packed, in the one order they are
//! packed in, with their modes normalised.
//!
//! Rules: entries are visited in sorted byte order of their names; names
//! must be UTF-8 and valid relative paths (no `.sydney-bundle` at the top,
//! which is the tree marker's); directories and executables get 0755, other
//! files 0644; symlinks are kept only if they stay inside the folder and do
//! not pass through another symlink; device nodes, sockets and fifos are
//! refused.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::manifest::EntryKind;
use crate::paths::{
    symlink_destination, symlink_stays_inside, symlink_target_dirs, validate_relative,
};

/// A file-system entry found in the folder being packed.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// Path relative to the folder, `/`-separated.
    pub rel: String,
    /// Where it is on disk.
    pub path: PathBuf,
    /// Directory, file or symlink.
    pub kind: EntryKind,
    /// Normalised mode: 0755 for directories and executables, else 0644.
    pub mode: u32,
    /// Size of a regular file.
    pub size: u64,
    /// Target of a symlink.
    pub link: Option<String>,
    /// Contents that replace the file at `path` (a program rewritten by
    /// `--portable`), or of a file that exists only in the payload.
    pub contents: Option<std::sync::Arc<[u8]>>,
}

/// Walks `dir` in sorted order and checks that everything in it can be
/// packed: no device nodes, sockets or fifos, no symlinks leaving the tree,
/// UTF-8 names only.
pub fn scan(dir: &Path) -> Result<Vec<SourceEntry>> {
    let meta = fs::metadata(dir).map_err(|err| FormatError::Unpackable {
        path: dir.to_owned(),
        reason: match err.kind() {
            io::ErrorKind::NotFound => "no such folder; check the path".to_owned(),
            _ => err.to_string(),
        },
    })?;
    if !meta.is_dir() {
        return Err(FormatError::Unpackable {
            path: dir.to_owned(),
            reason: "not a folder; pass the release folder".to_owned(),
        });
    }
    let mut entries = Vec::new();
    walk(dir, "", &mut entries)?;
    check_symlink_chains(&entries)?;
    Ok(entries)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<SourceEntry>) -> Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(|err| FormatError::io("cannot read folder", dir, err))?
        .collect::<io::Result<_>>()
        .map_err(|err| FormatError::io("cannot read folder", dir, err))?;
    children.sort_by_key(|child| child.file_name());
    for child in children {
        let path = child.path();
        let unpackable = |reason: &str| FormatError::Unpackable {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let name = child
            .file_name()
            .into_string()
            .map_err(|_| unpackable("file name is not UTF-8; rename it"))?;
        let rel = format!("{prefix}{name}");
        validate_relative(&rel).map_err(unpackable)?;
        let meta = fs::symlink_metadata(&path)
            .map_err(|err| FormatError::io("cannot stat", &path, err))?;
        let file_type = meta.file_type();
        let exec = meta.permissions().mode() & 0o111 != 0;
        if file_type.is_dir() {
            out.push(SourceEntry {
                rel: rel.clone(),
                path: path.clone(),
                kind: EntryKind::Dir,
                mode: 0o755,
                size: 0,
                link: None,
                contents: None,
            });
            walk(&path, &format!("{rel}/"), out)?;
        } else if file_type.is_file() {
            out.push(SourceEntry {
                rel,
                path,
                kind: EntryKind::File,
                mode: if exec { 0o755 } else { 0o644 },
                size: meta.size(),
                link: None,
                contents: None,
            });
        } else if file_type.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|err| FormatError::io("cannot read symlink", &path, err))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| unpackable("symlink target is not UTF-8"))?;
            symlink_stays_inside(&rel, &target).map_err(|why| {
                unpackable(&format!(
                    "{why} ({rel} -> {target}); copy the file into the folder instead"
                ))
            })?;
            out.push(SourceEntry {
                rel,
                path,
                kind: EntryKind::Symlink,
                mode: 0o777,
                size: 0,
                link: Some(target),
                contents: None,
            });
        } else {
            return Err(unpackable(
                "device nodes, sockets and fifos cannot be packed; remove it from the folder",
            ));
        }
    }
    Ok(())
}

/// Refuses symlinks whose targets pass through other symlinks, exactly as
/// the unpacker would.
fn check_symlink_chains(entries: &[SourceEntry]) -> Result<()> {
    let links: std::collections::HashSet<&str> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Symlink)
        .map(|e| e.rel.as_str())
        .collect();
    for entry in entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        let target = entry.link.as_deref().unwrap_or_default();
        if symlink_target_dirs(&entry.rel, target)
            .iter()
            .any(|dir| links.contains(dir.as_str()))
        {
            return Err(FormatError::Unpackable {
                path: entry.path.clone(),
                reason: format!(
                    "symlink target {target} passes through another symlink; point it at the real path"
                ),
            });
        }
    }
    Ok(())
}

/// Checks that `entry` names an executable regular file of `entries` (from
/// [`scan`] of `dir`), directly or through in-tree symlinks.
pub fn check_entry(dir: &Path, entry: &str, entries: &[SourceEntry]) -> Result<()> {
    let missing = |reason: String| FormatError::Unpackable {
        path: dir.join(entry),
        reason,
    };
    validate_relative(entry).map_err(|why| missing(format!("invalid entry path: {why}")))?;
    let mut current = entry.to_owned();
    for _ in 0..40 {
        let Some(found) = entries.iter().find(|e| e.rel == current) else {
            return Err(missing(format!(
                "the entry {entry} does not exist in the folder; pass --entry with a path \
                 relative to it, e.g. bin/NAME"
            )));
        };
        match found.kind {
            EntryKind::File if found.mode & 0o111 != 0 => return Ok(()),
            EntryKind::File => {
                return Err(missing(format!(
                    "the entry {entry} is not executable; run chmod +x on it"
                )));
            }
            EntryKind::Dir => {
                return Err(missing(format!(
                    "the entry {entry} is a folder, not a program"
                )));
            }
            EntryKind::Symlink => {
                let target = found.link.as_deref().unwrap_or_default();
                current = symlink_destination(&current, target);
            }
        }
    }
    Err(missing(format!("the entry {entry} is a symlink loop")))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    use super::*;

    fn folder() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn write(dir: &Path, rel: &str, mode: u32) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, rel).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The reason of an `Unpackable` error, and the path it names.
    fn refusal(result: Result<Vec<SourceEntry>>) -> (PathBuf, String) {
        match result {
            Err(FormatError::Unpackable { path, reason }) => (path, reason),
            other => panic!("expected Unpackable, got {other:?}"),
        }
    }

    fn entry_refusal(dir: &Path, entry: &str) -> String {
        let entries = scan(dir).unwrap();
        match check_entry(dir, entry, &entries) {
            Err(FormatError::Unpackable { reason, .. }) => reason,
            other => panic!("expected Unpackable for {entry}, got {other:?}"),
        }
    }

    #[test]
    fn entries_come_sorted_by_name_each_directory_before_its_contents() {
        let dir = folder();
        for rel in ["b", "a/z", "a/b/c", "C", "a.txt"] {
            write(dir.path(), rel, 0o644);
        }
        let rels: Vec<String> = scan(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect();
        assert_eq!(rels, ["C", "a", "a/b", "a/b/c", "a/z", "a.txt", "b"]);
    }

    #[test]
    fn modes_are_normalised_from_the_exec_bits() {
        let dir = folder();
        write(dir.path(), "owner-exec", 0o700);
        write(dir.path(), "other-exec", 0o601);
        write(dir.path(), "plain", 0o600);
        fs::create_dir(dir.path().join("private")).unwrap();
        fs::set_permissions(
            dir.path().join("private"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let found: Vec<(String, EntryKind, u32, u64)> = scan(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| (e.rel, e.kind, e.mode, e.size))
            .collect();
        assert_eq!(
            found,
            [
                ("other-exec".to_owned(), EntryKind::File, 0o755, 10),
                ("owner-exec".to_owned(), EntryKind::File, 0o755, 10),
                ("plain".to_owned(), EntryKind::File, 0o644, 5),
                ("private".to_owned(), EntryKind::Dir, 0o755, 0),
            ]
        );
    }

    #[test]
    fn a_symlink_inside_the_folder_is_kept_with_its_target() {
        let dir = folder();
        write(dir.path(), "lib/real", 0o644);
        fs::create_dir(dir.path().join("bin")).unwrap();
        symlink("../lib/real", dir.path().join("bin/app")).unwrap();
        let entries = scan(dir.path()).unwrap();
        let link = entries.iter().find(|e| e.rel == "bin/app").unwrap();
        assert_eq!(link.kind, EntryKind::Symlink);
        assert_eq!(link.mode, 0o777);
        assert_eq!(link.link.as_deref(), Some("../lib/real"));
    }

    #[test]
    fn a_symlink_leaving_the_folder_is_refused() {
        let dir = folder();
        fs::create_dir(dir.path().join("bin")).unwrap();
        symlink("../../etc/passwd", dir.path().join("bin/out")).unwrap();
        let (path, reason) = refusal(scan(dir.path()));
        assert_eq!(path, dir.path().join("bin/out"));
        assert!(reason.contains("bin/out -> ../../etc/passwd"), "{reason}");
        assert!(reason.contains("copy the file into the folder"), "{reason}");
    }

    #[test]
    fn an_absolute_symlink_is_refused() {
        let dir = folder();
        symlink("/etc/passwd", dir.path().join("abs")).unwrap();
        let (_, reason) = refusal(scan(dir.path()));
        assert!(reason.contains("absolute"), "{reason}");
    }

    #[test]
    fn a_symlink_through_another_symlink_is_refused() {
        let dir = folder();
        write(dir.path(), "real/file", 0o644);
        symlink("real", dir.path().join("alias")).unwrap();
        symlink("alias/file", dir.path().join("chained")).unwrap();
        let (path, reason) = refusal(scan(dir.path()));
        assert_eq!(path, dir.path().join("chained"));
        assert!(
            reason.contains("passes through another symlink"),
            "{reason}"
        );
    }

    #[test]
    fn a_fifo_is_refused() {
        let dir = folder();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        let (path, reason) = refusal(scan(dir.path()));
        assert_eq!(path, fifo);
        assert!(reason.contains("fifos cannot be packed"), "{reason}");
    }

    #[test]
    fn a_socket_is_refused() {
        // Device nodes take the same branch (neither file, folder nor
        // symlink); making one needs root, so the socket stands for both.
        let dir = folder();
        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let (path, reason) = refusal(scan(dir.path()));
        assert_eq!(path, socket);
        assert!(
            reason.contains("sockets and fifos cannot be packed"),
            "{reason}"
        );
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused() {
        let dir = folder();
        let bad = dir.path().join(OsStr::from_bytes(b"caf\xe9"));
        fs::write(&bad, b"x").unwrap();
        let (path, reason) = refusal(scan(dir.path()));
        assert_eq!(path, bad);
        assert!(reason.contains("not UTF-8"), "{reason}");
    }

    #[test]
    fn the_marker_name_is_reserved_at_the_top_of_the_folder_only() {
        let dir = folder();
        write(dir.path(), "sub/.sydney-bundle", 0o644);
        assert!(scan(dir.path()).is_ok());
        write(dir.path(), ".sydney-bundle", 0o644);
        let (_, reason) = refusal(scan(dir.path()));
        assert!(reason.contains("reserved"), "{reason}");
    }

    #[test]
    fn a_missing_folder_or_a_file_is_refused() {
        let dir = folder();
        let (_, reason) = refusal(scan(&dir.path().join("missing")));
        assert!(reason.contains("no such folder"), "{reason}");
        write(dir.path(), "file", 0o644);
        let (_, reason) = refusal(scan(&dir.path().join("file")));
        assert!(reason.contains("not a folder"), "{reason}");
    }

    #[test]
    fn the_entry_must_be_an_executable_file_directly_or_through_symlinks() {
        let dir = folder();
        write(dir.path(), "bin/app", 0o755);
        write(dir.path(), "bin/data", 0o644);
        symlink("app", dir.path().join("bin/via-link")).unwrap();
        symlink("loop-b", dir.path().join("bin/loop-a")).unwrap();
        symlink("loop-a", dir.path().join("bin/loop-b")).unwrap();
        let entries = scan(dir.path()).unwrap();
        assert!(check_entry(dir.path(), "bin/app", &entries).is_ok());
        assert!(check_entry(dir.path(), "bin/via-link", &entries).is_ok());
        let not_exec = entry_refusal(dir.path(), "bin/data");
        assert!(not_exec.contains("chmod +x"), "{not_exec}");
        let missing = entry_refusal(dir.path(), "bin/nothing");
        assert!(missing.contains("does not exist"), "{missing}");
        let folder = entry_refusal(dir.path(), "bin");
        assert!(folder.contains("is a folder"), "{folder}");
        let looped = entry_refusal(dir.path(), "bin/loop-a");
        assert!(looped.contains("symlink loop"), "{looped}");
        let invalid = entry_refusal(dir.path(), "../bin/app");
        assert!(invalid.contains("invalid entry path"), "{invalid}");
    }
}
