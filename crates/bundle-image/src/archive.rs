//! The outer archive: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) plus Docker's `manifest.json`, as an uncompressed
//! tar with fixed headers, entries in a fixed order.

use std::fs::File;
use std::io::{self, Write};

use crate::config::{Documents, blob_path};
use crate::layer::{Layer, fixed_header};

/// Writes the archive to `out`.
pub(crate) fn write(
    out: &mut File,
    documents: &Documents,
    layer: &Layer,
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
    let mut blobs: Vec<(String, Option<&[u8]>)> = vec![
        (documents.config.path(), Some(&documents.config.bytes)),
        (documents.manifest.path(), Some(&documents.manifest.bytes)),
        (blob_path(&layer.digest), None),
    ];
    blobs.sort();
    for (path, bytes) in blobs {
        match bytes {
            Some(bytes) => file(&mut tar, &path, bytes)?,
            None => {
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
