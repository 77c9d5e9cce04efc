//! Safe, streaming extraction of a payload tar stream into an empty directory.
//!
//! The tar crate parses headers; this module decides what may be created.
//! It reads the archive in raw mode so that GNU long-name records are read
//! here with a length cap, instead of being buffered whole by the library.
//! Memory use is one copy buffer plus the symlink list, whatever the payload
//! size.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use tar::EntryType;

use crate::error::{FormatError, IoCause, Result};
use crate::paths::{
    MAX_PATH_LEN, ancestors, symlink_stays_inside, symlink_target_dirs, validate_relative,
};

/// Size of the buffer used to copy file contents.
const COPY_BUFFER: usize = 128 * 1024;

/// What an extraction produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Directories created.
    pub dirs: u64,
    /// Regular files written.
    pub files: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

impl UnpackStats {
    /// All entries created.
    pub fn entries(&self) -> u64 {
        self.dirs + self.files + self.symlinks
    }
}

/// Unpacks the tar stream `tar` into `dest`, which must be an existing,
/// empty directory that nobody else writes to (a fresh `mkdtemp`).
///
/// Refused, with [`FormatError::UnsafeEntry`]: absolute paths, `..`,
/// symlinks that leave the tree or that other entries would be written
/// through, hard links, devices, fifos, sockets, and PAX headers (our packer
/// writes none). Setuid, setgid and sticky bits are dropped. On error,
/// `dest` holds a partial tree that the caller must remove.
pub fn unpack(tar: impl Read, dest: &Path) -> Result<UnpackStats> {
    unpack_bounded(tar, dest, Limits::NONE)
}

/// What the manifest declares, enforced while unpacking: extraction stops
/// before a file would take the output past `bytes`, or the entry count
/// past `entries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file content (the manifest's `unpacked_bytes`).
    pub bytes: u64,
    /// Directories, files and symlinks (the manifest's `file_count`).
    pub entries: u64,
}

impl Limits {
    /// No limits.
    pub const NONE: Limits = Limits {
        bytes: u64::MAX,
        entries: u64::MAX,
    };
}

/// [`unpack`], refusing (with [`FormatError::CorruptPayload`]) a stream
/// that holds more than `limits` allow.
pub fn unpack_bounded(tar: impl Read, dest: &Path, limits: Limits) -> Result<UnpackStats> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(corrupt)?.raw(true);
    let mut state = State {
        dest,
        stats: UnpackStats::default(),
        symlinks: Vec::new(),
        symlink_set: HashSet::new(),
        buffer: vec![0; COPY_BUFFER],
    };
    let mut long_name: Option<String> = None;
    let mut long_link: Option<String> = None;

    for entry in entries {
        let mut entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() {
            long_name = Some(read_long_field(&mut entry, "long name")?);
            continue;
        }
        if kind.is_gnu_longlink() {
            long_link = Some(read_long_field(&mut entry, "long link name")?);
            continue;
        }
        let path = match long_name.take() {
            Some(name) => name,
            None => utf8(&entry.path_bytes(), "path")?,
        };
        let link = match long_link.take() {
            Some(link) => Some(link),
            None => match entry.link_name_bytes() {
                Some(bytes) => Some(utf8(&bytes, "link name")?),
                None => None,
            },
        };
        let mode = entry.header().mode().map_err(corrupt)?;
        // An unsafe path is the more telling error: checked before sizes.
        validate_relative(&path).map_err(|reason| unsafe_entry(&path, reason))?;
        if state.stats.entries() >= limits.entries {
            return Err(FormatError::CorruptPayload(format!(
                "the payload holds more than the {} entries its manifest declares",
                limits.entries
            )));
        }
        let size = match kind {
            EntryType::Regular | EntryType::Continuous => entry.size(),
            _ => 0,
        };
        if size > limits.bytes - state.stats.bytes {
            return Err(FormatError::CorruptPayload(format!(
                "the payload holds more than the {} bytes of files its manifest declares",
                limits.bytes
            )));
        }
        let mut data = (&mut entry).take(size);
        state.create(&path, kind, mode, link, &mut data)?;
    }
    state.check_symlinks()?;
    Ok(state.stats)
}

struct State<'a> {
    dest: &'a Path,
    stats: UnpackStats,
    /// (link path, target) of every symlink created, checked at the end.
    symlinks: Vec<(String, String)>,
    symlink_set: HashSet<String>,
    buffer: Vec<u8>,
}

impl State<'_> {
    fn create(
        &mut self,
        path: &str,
        kind: EntryType,
        mode: u32,
        link: Option<String>,
        data: &mut impl Read,
    ) -> Result<()> {
        if let Some(through) = ancestors(path).find(|dir| self.symlink_set.contains(*dir)) {
            let _ = through;
            return Err(unsafe_entry(path, "path goes through a symlink"));
        }
        let target = self.dest.join(path.strip_suffix('/').unwrap_or(path));
        // Only the owner-relevant permission bits survive: no setuid, setgid
        // or sticky bit ever comes out of a payload.
        let perm = mode & 0o777;
        match kind {
            EntryType::Directory => {
                DirBuilder::new()
                    .mode(perm | 0o700)
                    .create(&target)
                    .map_err(|err| create_error(path, &target, err))?;
                self.stats.dirs += 1;
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(perm | 0o600)
                    .open(&target)
                    .map_err(|err| create_error(path, &target, err))?;
                let written = copy(data, &mut file, &mut self.buffer)
                    .map_err(|err| err.into_format_error(&target))?;
                self.stats.bytes += written;
                self.stats.files += 1;
            }
            EntryType::Symlink => {
                let link = link.ok_or_else(|| unsafe_entry(path, "symlink without a target"))?;
                symlink_stays_inside(path, &link).map_err(|reason| unsafe_entry(path, reason))?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|err| create_error(path, &target, err))?;
                self.symlink_set
                    .insert(path.strip_suffix('/').unwrap_or(path).to_owned());
                self.symlinks.push((path.to_owned(), link));
                self.stats.symlinks += 1;
            }
            EntryType::Link => return Err(unsafe_entry(path, "hard links are not allowed")),
            EntryType::Char | EntryType::Block => {
                return Err(unsafe_entry(path, "device nodes are not allowed"));
            }
            EntryType::Fifo => return Err(unsafe_entry(path, "fifos are not allowed")),
            EntryType::XHeader | EntryType::XGlobalHeader => {
                return Err(unsafe_entry(path, "PAX headers are not supported"));
            }
            _ => return Err(unsafe_entry(path, "unsupported entry type")),
        }
        Ok(())
    }

    /// A symlink's target is checked lexically when it is created, which is
    /// only sound if the target does not pass through another symlink. That
    /// can only be known once every symlink exists.
    fn check_symlinks(&self) -> Result<()> {
        for (path, target) in &self.symlinks {
            if symlink_target_dirs(path, target)
                .iter()
                .any(|dir| self.symlink_set.contains(dir))
            {
                return Err(unsafe_entry(
                    path,
                    "symlink target passes through a symlink",
                ));
            }
        }
        Ok(())
    }
}

/// Reads a GNU long-name or long-link record, refusing absurd lengths.
fn read_long_field(entry: &mut impl Read, what: &'static str) -> Result<String> {
    let mut bytes = Vec::new();
    entry
        .take(MAX_PATH_LEN as u64 + 2)
        .read_to_end(&mut bytes)
        .map_err(corrupt)?;
    if bytes.len() > MAX_PATH_LEN + 1 {
        return Err(FormatError::UnsafeEntry {
            path: String::from_utf8_lossy(&bytes[..64]).into_owned(),
            reason: "long name record is longer than 4096 bytes",
        });
    }
    // The record is NUL-terminated.
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    utf8(&bytes, what)
}

fn utf8(bytes: &[u8], what: &'static str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| FormatError::UnsafeEntry {
        path: String::from_utf8_lossy(bytes).into_owned(),
        reason: match what {
            "path" => "path is not UTF-8",
            _ => "link name is not UTF-8",
        },
    })
}

fn unsafe_entry(path: &str, reason: &'static str) -> FormatError {
    FormatError::UnsafeEntry {
        path: path.to_owned(),
        reason,
    }
}

fn create_error(path: &str, target: &Path, err: io::Error) -> FormatError {
    if err.kind() == io::ErrorKind::AlreadyExists {
        return unsafe_entry(path, "duplicate entry");
    }
    // The packer writes every directory before what it holds.
    match IoCause::of(&err) {
        IoCause::NotFound => {
            return unsafe_entry(path, "its parent directory is not in the payload before it");
        }
        IoCause::NotADirectory => return unsafe_entry(path, "its parent is not a directory"),
        _ => {}
    }
    FormatError::io("cannot create", target, err)
}

fn corrupt(err: io::Error) -> FormatError {
    FormatError::CorruptPayload(err.to_string())
}

/// A failed copy: either the archive could not be read (corruption) or the
/// file could not be written (disk full, permissions).
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

impl CopyError {
    fn into_format_error(self, target: &Path) -> FormatError {
        match self {
            CopyError::Read(err) => corrupt(err),
            CopyError::Write(err) => FormatError::io("cannot write", target, err),
        }
    }
}

fn copy(from: &mut impl Read, to: &mut impl Write, buffer: &mut [u8]) -> Result<u64, CopyError> {
    let mut total = 0;
    loop {
        let n = match from.read(buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(CopyError::Read(err)),
        };
        to.write_all(&buffer[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// Removes a partial tree left by a failed extraction. Errors are ignored:
/// the caller is already reporting the first failure, and housekeeping
/// removes anything left over.
pub fn remove_partial(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
}
