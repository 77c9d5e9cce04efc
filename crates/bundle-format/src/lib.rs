//! The sydney-bundle file format: the only code that knows the byte layout.
//!
//! A bundle is one executable file: a stub program, then a lead-in, a
//! compressed tar payload, a manifest, a file index, and a fixed-size trailer
//! at the very end (see `docs/FORMAT.md`). This crate reads and validates
//! that layout over byte slices ([`layout`], [`manifest`]), unpacks payloads
//! safely ([`unpack`]), streams a payload's files to callers that need them
//! without a tree ([`Bundle::for_each_file`], [`Bundle::read_file`]), writes bundles ([`pack`], feature `pack`), and tells
//! what a payload's programs need from a host ([`doctor`], feature `doctor`).
//!
//! It does no process, cache or exec work: that is the stub's job.

pub mod bundle;
pub mod checksum;
pub mod codec;
#[cfg(feature = "doctor")]
pub mod doctor;
pub mod elf;
pub mod error;
pub mod layout;
pub mod manifest;
#[cfg(feature = "pack")]
pub mod pack;
pub mod paths;
pub mod portable;
#[cfg(feature = "pack")]
pub mod portable_pack;
mod readahead;
pub mod shebang;
pub mod signature;
pub mod text;
pub mod unpack;

pub use bundle::{Bundle, PayloadFile};
pub use error::{ErrorKind, FormatError, Result};
pub use manifest::{Codec, EntryKind, Index, IndexEntry, Manifest};
