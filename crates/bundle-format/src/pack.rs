//! Writing bundles: a release folder and a stub in, one executable file out.
//!
//! Output is a function of the folder's names, contents, exec bits and
//! symlink targets only: entries are sorted, modes normalised to 0755/0644,
//! owners zero with no names, mtimes fixed, and the compressor header carries
//! no name or time. Packing the same folder twice gives identical bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::codec::Encoder;
use crate::error::{FormatError, Result};
use crate::layout::{LEAD_IN_LEN, LeadIn, Trailer};
use crate::manifest::{Codec, EntryKind, Index, IndexEntry, Manifest, validate_label};
use crate::paths::{
    symlink_destination, symlink_stays_inside, symlink_target_dirs, validate_relative,
};

/// What to pack and how.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Bundle name (`[A-Za-z0-9._+-]`).
    pub name: String,
    /// Bundle version (same alphabet).
    pub version: String,
    /// Program to run, relative to the folder; must be an executable file.
    pub entry: String,
    /// Arguments passed before the user's.
    pub args: Vec<String>,
    /// Payload codec.
    pub codec: Codec,
    /// Compression level (clamped to the codec's range). Callers choose it
    /// (`codec::default_level_for` gives the documented defaults); the level
    /// used is recorded in the manifest's build facts as
    /// [`LEVEL_BUILD_KEY`].
    pub level: u32,
    /// The entry cannot run without its extracted tree.
    pub needs_tree: bool,
    /// Cache root to try after `SYDNEY_BUNDLE_DIR` (absolute path).
    pub default_cache_dir: Option<String>,
    /// Modification time written for every entry (`SOURCE_DATE_EPOCH`).
    pub mtime: u64,
    /// Build facts recorded in the manifest; sorted by key on write.
    pub build: Vec<(String, String)>,
    /// Carry the loader, shared libraries and shell the folder's programs
    /// need from this machine (`--portable`); `None` packs the folder as it is.
    pub portable: Option<crate::portable_pack::PortableOptions>,
    /// Environment defaults for the entry (see [`Manifest::env`]), in order.
    pub env: Vec<(String, String)>,
}

/// The build fact (manifest `build`) that records the compression level
/// the payload was packed with, e.g. `compression_level=19`.
pub const LEVEL_BUILD_KEY: &str = "compression_level";

/// Progress of a running pack, in bytes of file content.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Bytes of file content packed so far.
    pub done: u64,
    /// Bytes of file content to pack in all.
    pub total: u64,
}

/// What a pack produced.
#[derive(Debug, Clone)]
pub struct PackReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Bytes of stub.
    pub stub_len: u64,
    /// Bytes of compressed payload.
    pub payload_len: u64,
    /// Bytes of the whole bundle.
    pub bundle_len: u64,
    /// SHA-256 of the payload.
    pub payload_sha256: [u8; 32],
}

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

/// Packs `dir` behind `stub` into the file `out`, atomically: the bundle is
/// written to a temporary file beside `out` and renamed into place, so `out`
/// is either the old file or the complete new one.
pub fn pack_to_path(
    dir: &Path,
    stub: &[u8],
    opts: &PackOptions,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PackReport> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = out
        .file_name()
        .ok_or_else(|| FormatError::Unpackable {
            path: out.to_owned(),
            reason: "the output path has no file name".to_owned(),
        })?
        .to_string_lossy();
    let temp = parent.join(format!(".{file_name}.partial-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o755)
            .open(&temp)
            .map_err(|err| FormatError::io("cannot create", &temp, err))?;
        let report = pack(dir, stub, opts, &mut file, progress)?;
        // The mode given to open() is reduced by the umask; chmod is not.
        file.set_permissions(fs::Permissions::from_mode(0o755))
            .map_err(|err| FormatError::io("cannot chmod", &temp, err))?;
        file.sync_all()
            .map_err(|err| FormatError::io("cannot write", &temp, err))?;
        fs::rename(&temp, out).map_err(|err| FormatError::io("cannot rename into", out, err))?;
        Ok(report)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Packs `dir` behind `stub` into `out` (written from its current position,
/// which must be 0).
pub fn pack(
    dir: &Path,
    stub: &[u8],
    opts: &PackOptions,
    out: &mut File,
    progress: &mut dyn FnMut(Progress),
) -> Result<PackReport> {
    let invalid = |reason: String| FormatError::Unpackable {
        path: dir.to_owned(),
        reason,
    };
    validate_label("name", &opts.name).map_err(invalid)?;
    validate_label("version", &opts.version).map_err(invalid)?;
    if opts.args.iter().any(|a| a.contains('\0')) {
        return Err(invalid("an --arg contains a NUL byte".to_owned()));
    }
    for (name, value) in &opts.env {
        crate::manifest::validate_env(name, value).map_err(invalid)?;
    }
    if let Some(cache) = &opts.default_cache_dir {
        if !cache.starts_with('/') {
            return Err(invalid(format!(
                "the default cache dir {cache} must be an absolute path"
            )));
        }
    }
    let mut entries = scan(dir)?;
    check_entry(dir, &opts.entry, &entries)?;
    // The packer's own record of the level wins over a caller's.
    let mut build: Vec<_> = (opts.build.iter())
        .filter(|(key, _)| key != LEVEL_BUILD_KEY)
        .cloned()
        .collect();
    if let Some(portable) = &opts.portable {
        build.extend(crate::portable_pack::carry(dir, &mut entries, portable)?);
    }

    let write_err = |err: io::Error| FormatError::io("cannot write", "the output file", err);
    let mut sink = BufWriter::with_capacity(1 << 20, &mut *out);
    sink.write_all(stub).map_err(write_err)?;
    sink.write_all(&[0; LEAD_IN_LEN]).map_err(write_err)?;
    let payload_start = stub.len() as u64 + LEAD_IN_LEN as u64;

    let hashed = HashingWriter::new(sink);
    let level = opts.level.clamp(1, crate::codec::max_level(opts.codec));
    let encoder = Encoder::new(opts.codec, level, hashed).map_err(write_err)?;
    let mut tar = tar::Builder::new(CountingWriter::new(encoder));
    let total = entries.iter().map(|e| e.size).sum();
    let mut done = 0;
    let mut index = Index::default();
    for entry in &entries {
        let sha256 = append(&mut tar, entry, opts.mtime)?;
        done += entry.size;
        progress(Progress { done, total });
        index.entries.push(IndexEntry {
            path: entry.rel.clone(),
            kind: entry.kind,
            mode: entry.mode,
            size: entry.size,
            sha256,
            link: entry.link.clone(),
        });
    }
    let counted = tar.into_inner().map_err(write_err)?;
    let tar_len = counted.count;
    let hashed = counted.inner.finish().map_err(write_err)?;
    let (mut sink, payload_len, payload_sha256) = hashed.finish();

    let index_bytes = index.encode();
    build.push((LEVEL_BUILD_KEY.to_owned(), level.to_string()));
    build.sort();
    let manifest = Manifest {
        name: opts.name.clone(),
        version: opts.version.clone(),
        entry: opts.entry.clone(),
        args: opts.args.clone(),
        codec: opts.codec,
        tar_len,
        unpacked_bytes: total,
        file_count: entries.len() as u64,
        needs_tree: opts.needs_tree,
        default_cache_dir: opts.default_cache_dir.clone(),
        index_sha256: Sha256::digest(&index_bytes).into(),
        build,
        env: opts.env.clone(),
    };
    let manifest_bytes = manifest.encode();
    let manifest_start = payload_start + payload_len;
    let index_start = manifest_start + manifest_bytes.len() as u64;
    let index_end = index_start + index_bytes.len() as u64;
    let trailer = Trailer {
        payload: payload_start..manifest_start,
        manifest: manifest_start..index_start,
        index: index_start..index_end,
        payload_sha256,
        manifest_sha256: crate::checksum::record_sha256(&manifest_bytes),
    };
    sink.write_all(&manifest_bytes).map_err(write_err)?;
    sink.write_all(&index_bytes).map_err(write_err)?;
    sink.write_all(&trailer.encode()).map_err(write_err)?;
    let out = sink
        .into_inner()
        .map_err(|err| write_err(err.into_error()))?;
    let bundle_len = index_end + crate::layout::TRAILER_LEN as u64;
    out.seek(SeekFrom::Start(stub.len() as u64))
        .and_then(|_| out.write_all(&LeadIn { bundle_len }.encode()))
        .map_err(write_err)?;
    Ok(PackReport {
        manifest,
        stub_len: stub.len() as u64,
        payload_len,
        bundle_len,
        payload_sha256,
    })
}

/// Appends one entry with a deterministic header; returns the SHA-256 of a
/// file's contents (zero for directories and symlinks).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    entry: &SourceEntry,
    mtime: u64,
) -> Result<[u8; 32]> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    let write_err = |err: io::Error| FormatError::io("cannot write", "the output file", err);
    match entry.kind {
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{}/", entry.rel), io::empty())
                .map_err(write_err)?;
            Ok([0; 32])
        }
        EntryKind::Symlink => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            let target = entry.link.as_deref().unwrap_or_default();
            tar.append_link(&mut header, &entry.rel, target)
                .map_err(write_err)?;
            Ok([0; 32])
        }
        EntryKind::File => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(entry.size);
            let source: Box<dyn Read> = match &entry.contents {
                Some(contents) => Box::new(io::Cursor::new(contents.clone())),
                None => Box::new(
                    File::open(&entry.path)
                        .map_err(|err| FormatError::io("cannot open", &entry.path, err))?,
                ),
            };
            let mut reader = HashingReader {
                inner: source.take(entry.size),
                hasher: Sha256::new(),
                count: 0,
                error: None,
            };
            tar.append_data(&mut header, &entry.rel, &mut reader)
                .map_err(|err| match reader.error.take() {
                    Some(read_err) => FormatError::io("cannot read", &entry.path, read_err),
                    None => write_err(err),
                })?;
            if reader.count != entry.size {
                return Err(FormatError::Unpackable {
                    path: entry.path.clone(),
                    reason: "the file changed size while it was being packed".to_owned(),
                });
            }
            Ok(reader.hasher.finalize().into())
        }
    }
}

/// Hashes what passes through; remembers a read error so that it can be told
/// apart from a write error in the archive.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    error: Option<io::Error>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(err) => {
                let kind = err.kind();
                self.error = Some(err);
                Err(io::Error::new(kind, "read failed"))
            }
        }
    }
}

/// Hashes and counts the compressed payload on its way to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, u64, [u8; 32]) {
        (self.inner, self.count, self.hasher.finalize().into())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts the uncompressed tar stream.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Assembles a bundle from already-encoded parts, with no checks on them.
/// For tests and tools that need to build unusual (even hostile) bundles;
/// [`pack`] is the way to make real ones.
pub fn assemble(stub: &[u8], payload: &[u8], manifest: &Manifest, index: &Index) -> Vec<u8> {
    let index_bytes = index.encode();
    let mut manifest = manifest.clone();
    manifest.index_sha256 = Sha256::digest(&index_bytes).into();
    let manifest_bytes = manifest.encode();
    let payload_start = (stub.len() + LEAD_IN_LEN) as u64;
    let manifest_start = payload_start + payload.len() as u64;
    let index_start = manifest_start + manifest_bytes.len() as u64;
    let index_end = index_start + index_bytes.len() as u64;
    let bundle_len = index_end + crate::layout::TRAILER_LEN as u64;
    let trailer = Trailer {
        payload: payload_start..manifest_start,
        manifest: manifest_start..index_start,
        index: index_start..index_end,
        payload_sha256: Sha256::digest(payload).into(),
        manifest_sha256: crate::checksum::record_sha256(&manifest_bytes),
    };
    let mut out = Vec::with_capacity(bundle_len as usize);
    out.extend_from_slice(stub);
    out.extend_from_slice(&LeadIn { bundle_len }.encode());
    out.extend_from_slice(payload);
    out.extend_from_slice(&manifest_bytes);
    out.extend_from_slice(&index_bytes);
    out.extend_from_slice(&trailer.encode());
    out
}

/// Compresses `data` in one go (for tests and tools).
pub fn compress(codec: Codec, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = Encoder::new(codec, crate::codec::default_level(codec), Vec::new())?;
    encoder.write_all(data)?;
    encoder.finish()
}
