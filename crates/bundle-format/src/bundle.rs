//! A validated view of a whole bundle file held in memory (normally a map of
//! the running executable).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::codec;
use crate::error::{FormatError, Result};
use crate::layout::{self, Layout};
use crate::manifest::{Index, Manifest};
use crate::unpack::{self, UnpackStats};

/// Payloads smaller than this are hashed before decompression, on the calling
/// thread; larger ones are hashed on a second thread while they are unpacked.
/// Starting a thread costs more than hashing a small payload.
const PARALLEL_HASH_THRESHOLD: usize = 4 << 20;

/// A bundle whose layout and manifest have been checked.
///
/// Opening a bundle hashes only the manifest (a few hundred bytes); the
/// payload is hashed only when it is unpacked or verified, so starting from
/// an existing tree never reads the payload.
#[derive(Debug)]
pub struct Bundle<'a> {
    file: &'a [u8],
    layout: Layout,
    manifest: Manifest,
}

impl<'a> Bundle<'a> {
    /// Locates the sections of `file`, verifies the manifest digest and
    /// decodes the manifest.
    pub fn open(file: &'a [u8]) -> Result<Bundle<'a>> {
        let layout = layout::locate(file)?;
        let manifest_bytes = layout.manifest_bytes(file);
        if Sha256::digest(manifest_bytes)[..] != layout.trailer.manifest_sha256 {
            return Err(FormatError::DigestMismatch {
                section: "manifest",
            });
        }
        let manifest = Manifest::decode(manifest_bytes)?;
        Ok(Bundle {
            file,
            layout,
            manifest,
        })
    }

    /// The decoded manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The section layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The stub executable at the start of the file.
    pub fn stub(&self) -> &'a [u8] {
        &self.file[..self.layout.stub_len as usize]
    }

    /// The compressed payload.
    pub fn payload(&self) -> &'a [u8] {
        self.layout.payload_bytes(self.file)
    }

    /// The payload SHA-256 recorded in the trailer (not recomputed).
    pub fn payload_sha256(&self) -> &[u8; 32] {
        &self.layout.trailer.payload_sha256
    }

    /// The cache directory name for this bundle's tree.
    pub fn tree_dir_name(&self) -> String {
        self.manifest.tree_dir_name(self.payload_sha256())
    }

    /// Hashes the payload and compares it with the trailer.
    pub fn verify_payload(&self) -> Result<()> {
        check_digest(self.payload(), self.payload_sha256())
    }

    /// Decodes the file index, after checking its digest against the manifest.
    pub fn index(&self) -> Result<Index> {
        let bytes = self.layout.index_bytes(self.file);
        if Sha256::digest(bytes)[..] != self.manifest.index_sha256 {
            return Err(FormatError::DigestMismatch { section: "index" });
        }
        Index::decode(bytes)
    }

    /// A streaming decoder of the payload's tar stream. The payload is not
    /// verified; use [`Bundle::unpack_verified`] to extract.
    pub fn tar_stream(&self) -> Result<Box<dyn Read + 'a>> {
        codec::decoder(self.manifest.codec, self.payload())
    }

    /// Unpacks the payload into the empty directory `dest`, verifying the
    /// payload digest. A digest mismatch is reported in preference to any
    /// error it caused. On error `dest` holds a partial tree.
    pub fn unpack_verified(&self, dest: &Path) -> Result<UnpackStats> {
        let payload = self.payload();
        if payload.len() < PARALLEL_HASH_THRESHOLD {
            self.verify_payload()?;
            return unpack::unpack(self.tar_stream()?, dest);
        }
        std::thread::scope(|scope| {
            let hasher = scope.spawn(|| check_digest(payload, self.payload_sha256()));
            let unpacked = self.tar_stream().and_then(|tar| unpack::unpack(tar, dest));
            let verified = hasher
                .join()
                .unwrap_or(Err(FormatError::DigestMismatch { section: "payload" }));
            verified.and(unpacked)
        })
    }
}

fn check_digest(bytes: &[u8], expected: &[u8; 32]) -> Result<()> {
    if Sha256::digest(bytes)[..] == expected[..] {
        Ok(())
    } else {
        Err(FormatError::DigestMismatch { section: "payload" })
    }
}
