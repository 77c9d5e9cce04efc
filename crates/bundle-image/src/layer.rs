//! The image's one layer: a gzip-compressed tar of `/app` (the bundle) and
//! an empty `/tmp` (mode 1777), with fixed headers.

use std::io::{self, Write};
use std::path::Path;

use flate2::Compression;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::BUNDLE_PATH;

/// The written layer: a temporary file and what describes it.
#[derive(Debug)]
pub(crate) struct Layer {
    /// The compressed layer (removed when dropped).
    pub file: NamedTempFile,
    /// `sha256:` of the compressed bytes (the blob's name).
    pub digest: String,
    /// Size of the compressed bytes.
    pub size: u64,
    /// `sha256:` of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: String,
    /// Size of the bundle inside.
    pub bundle_bytes: u64,
}

/// Writes the layer holding `bundle` into a temporary file in `dir`.
///
/// Headers are ustar with every field fixed: `mtime`, uid and gid 0, no
/// user or group names, no PAX records (which would carry a pid or
/// access times), and gzip without a name or time, so the bytes depend on
/// the bundle and `mtime` alone.
pub(crate) fn write(bundle: &[u8], mtime: u64, dir: &Path) -> io::Result<Layer> {
    let file = tempfile::Builder::new()
        .prefix(".tmp-image-layer-")
        .tempfile_in(dir)?;
    let compressed = Hashing::new(file.reopen()?);
    let gzip = flate2::GzBuilder::new().write(compressed, Compression::best());
    let mut tar = tar::Builder::new(Hashing::new(gzip));

    let mut header = fixed_header(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o755);
    header.set_size(bundle.len() as u64);
    tar.append_data(&mut header, BUNDLE_PATH.trim_start_matches('/'), bundle)?;

    let mut header = fixed_header(mtime);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o1777);
    header.set_size(0);
    tar.append_data(&mut header, "tmp/", io::empty())?;

    let uncompressed = tar.into_inner()?;
    let (diff_id, _) = uncompressed.finish_hash();
    let gzip = uncompressed.into_inner();
    let compressed = gzip.finish()?;
    let (digest, size) = compressed.finish_hash();
    compressed.into_inner().sync_all()?;
    Ok(Layer {
        file,
        digest,
        size,
        diff_id,
        bundle_bytes: bundle.len() as u64,
    })
}

/// A ustar header with the fields reproducibility cares about fixed.
pub(crate) fn fixed_header(mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// A writer that hashes (SHA-256) and counts what passes through it.
#[derive(Debug)]
pub(crate) struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    pub(crate) fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// `("sha256:<hex>", bytes)` of everything written so far.
    pub(crate) fn finish_hash(&self) -> (String, u64) {
        (
            sha256_name(self.hasher.clone().finalize().as_slice()),
            self.bytes,
        )
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256:<hex>`.
pub(crate) fn sha256_name(hash: &[u8]) -> String {
    let mut name = String::with_capacity(7 + 64);
    name.push_str("sha256:");
    for byte in hash {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    sha256_name(Sha256::digest(bytes).as_slice())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn layer_holds_the_bundle_and_a_sticky_tmp_with_fixed_headers() {
        let dir = tempfile::tempdir().unwrap();
        let layer = write(b"bundle bytes", 1_700_000_000, dir.path()).unwrap();
        let compressed = std::fs::read(layer.file.path()).unwrap();
        assert_eq!(layer.size, compressed.len() as u64);
        assert_eq!(layer.digest, sha256_of(&compressed));
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(layer.diff_id, sha256_of(&tar_bytes));
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).unwrap();
            assert_eq!(header.mtime().unwrap(), 1_700_000_000);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert_eq!(header.username().unwrap(), Some(""));
            assert!(entry.pax_extensions().unwrap().is_none());
            seen.push((
                entry.path().unwrap().display().to_string(),
                header.mode().unwrap(),
                contents,
            ));
        }
        assert_eq!(
            seen,
            [
                ("app".to_owned(), 0o755, b"bundle bytes".to_vec()),
                ("tmp/".to_owned(), 0o1777, Vec::new()),
            ]
        );
    }

    #[test]
    fn same_input_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(b"x", 5, dir.path()).unwrap();
        let b = write(b"x", 5, dir.path()).unwrap();
        let c = write(b"x", 6, dir.path()).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
    }
}
