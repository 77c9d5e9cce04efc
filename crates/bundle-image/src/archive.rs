//! The outer archive: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) plus Docker's `manifest.json`, as an uncompressed
//! tar with fixed headers, entries in a fixed order.

use std::fs::File;
use std::io::{self, Write};

use crate::config::{Documents, blob_path};
use crate::layer::{Layer, fixed_header};

/// Where a blob's bytes are.
enum Blob<'a> {
    /// A document in memory.
    Bytes(&'a [u8]),
    /// A layer in its temporary file.
    Layer(&'a Layer),
}

/// Writes the archive to `out`: the documents and `layers` (one per image).
pub(crate) fn write(
    out: &mut File,
    documents: &Documents,
    layers: &[&Layer],
    mtime: u64,
) -> io::Result<()> {
    let mut tar = tar::Builder::new(io::BufWriter::new(out));
    let file = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| {
        let mut header = fixed_header(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        tar.append_data(&mut header, path, bytes)
    };
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut header = fixed_header(mtime);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        tar.append_data(&mut header, dir, io::empty())?;
    }
    // Blobs in digest order, so the order does not depend on which is which.
    let mut blobs: Vec<(String, Blob<'_>)> = Vec::new();
    for image in &documents.images {
        blobs.push((image.config.path(), Blob::Bytes(&image.config.bytes)));
        blobs.push((image.manifest.path(), Blob::Bytes(&image.manifest.bytes)));
    }
    if let Some(platforms) = &documents.platforms {
        blobs.push((platforms.path(), Blob::Bytes(&platforms.bytes)));
    }
    for layer in layers {
        blobs.push((blob_path(&layer.digest), Blob::Layer(layer)));
    }
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    // The same blob twice (two bundles with one layer) is written once.
    blobs.dedup_by(|a, b| a.0 == b.0);
    for (path, blob) in blobs {
        match blob {
            Blob::Bytes(bytes) => file(&mut tar, &path, bytes)?,
            Blob::Layer(layer) => {
                let mut header = fixed_header(mtime);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(layer.size);
                tar.append_data(&mut header, &path, layer.file.reopen()?)?;
            }
        }
    }
    file(&mut tar, "index.json", &documents.index)?;
    file(&mut tar, "manifest.json", &documents.docker_manifest)?;
    file(&mut tar, "oci-layout", &documents.oci_layout)?;
    tar.into_inner()?.flush()
}
