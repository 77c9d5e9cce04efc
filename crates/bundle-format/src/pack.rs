//! Writing bundles: a release folder and a stub in, one executable file out.
//!
//! Output is a function of the folder's names, contents, exec bits and
//! symlink targets only: entries are sorted, modes normalised to 0755/0644,
//! owners zero with no names, mtimes fixed, and the compressor header carries
//! no name or time. Packing the same folder twice gives identical bytes.
//!
//! [`scan()`] (module `walk`) walks the folder and applies the rules for what
//! can be packed; [`pack`] and [`pack_to_path`] (module `write`) turn the
//! walk into the tar stream, compress it and write the bundle around it.

mod walk;
mod write;

pub use walk::{SourceEntry, check_entry, scan};
pub use write::{assemble, compress, pack, pack_to_path, pack_to_path_signed};

use crate::manifest::{Codec, Manifest};

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
