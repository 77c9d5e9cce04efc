//! The writer: the deterministic tar stream, its compression, and the
//! bundle around it (stub, lead-in, payload, manifest, index, trailer),
//! written atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{LEVEL_BUILD_KEY, PackOptions, PackReport, Progress, SourceEntry, check_entry, scan};
use crate::codec::Encoder;
use crate::error::{FormatError, Result};
use crate::layout::{LEAD_IN_LEN, LeadIn, Trailer};
use crate::manifest::{Codec, EntryKind, Index, IndexEntry, Manifest, validate_label};

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
    pack_to_path_signed(dir, stub, opts, out, None, progress)
}

/// [`pack_to_path`], and with `key` the bundle is signed before it is
/// renamed into place ([`crate::signature::sign_file`]): `out` is never an
/// unsigned version of a signed bundle. The report's `bundle_len` counts
/// the signature block.
pub fn pack_to_path_signed(
    dir: &Path,
    stub: &[u8],
    opts: &PackOptions,
    out: &Path,
    key: Option<&crate::signature::SecretKey>,
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
        let mut report = pack(dir, stub, opts, &mut file, progress)?;
        if let Some(key) = key {
            crate::signature::sign_file(&file, key)?;
            report.bundle_len += crate::signature::SIGNATURE_LEN as u64;
        }
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

    index.doctor = doctor_report(&entries, &build)?;
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
        signature_len: 0,
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
/// The bytes of a file entry as they are packed.
fn open_source(entry: &SourceEntry) -> Result<Box<dyn Read>> {
    Ok(match &entry.contents {
        Some(contents) => Box::new(io::Cursor::new(contents.clone())),
        None => Box::new(
            File::open(&entry.path)
                .map_err(|err| FormatError::io("cannot open", &entry.path, err))?,
        ),
    })
}

/// The doctor's report on the payload as packed, rendered for the index:
/// `inspect --doctor` prints it, so the stub carries no ELF analysis
/// (docs/decisions/0071-doctor-report-at-pack-time.md).
fn doctor_report(entries: &[SourceEntry], build: &[(String, String)]) -> Result<String> {
    let mut report = crate::doctor::Report {
        portable: (build.iter())
            .find(|(key, _)| key == crate::portable::BUILD_KEY)
            .map(|(_, value)| value.clone()),
        ..crate::doctor::Report::default()
    };
    for entry in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let mut source = open_source(entry)?.take(entry.size);
        report
            .add_from(&entry.rel, entry.mode & 0o111 != 0, entry.size, &mut source)
            .map_err(|err| FormatError::io("cannot read", &entry.path, err))?;
    }
    Ok(report.render())
}

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
            let source = open_source(entry)?;
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
        signature_len: 0,
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
