//! The one error type of this crate.
//!
//! Every variant says what is wrong in words a user can act on; callers add
//! the file name and choose an exit code with [`FormatError::kind`].

use std::io;
use std::path::PathBuf;

/// What went wrong while reading, verifying, unpacking or writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file ends where the stub's ELF image ends: nothing was appended.
    #[error(
        "no payload: this is a bare stub or a bundle whose payload was removed \
         (`strip` drops appended data); pack it again"
    )]
    NoPayload,

    /// The file ends before the bundle does.
    #[error(
        "truncated bundle: the file has {actual} bytes{}; copy the complete file again",
        match expected {
            Some(expected) => format!(" but the bundle is {expected} bytes long"),
            None => " and ends inside the bundle's lead-in".to_owned(),
        }
    )]
    Truncated {
        /// Length recorded at pack time, if the lead-in survived.
        expected: Option<u64>,
        /// Length of the file on disk.
        actual: u64,
    },

    /// Bytes follow the end of the bundle.
    #[error(
        "{extra} unexpected bytes follow the bundle (something was appended to it); \
         copy the original file again"
    )]
    TrailingData {
        /// How many bytes follow the recorded end.
        extra: u64,
    },

    /// Neither a trailer nor a recognisable lead-in is present.
    #[error(
        "bad magic: no bundle trailer at the end of the file; this is not a sydney bundle, or it is damaged"
    )]
    BadMagic,

    /// The trailer or lead-in names a format this reader does not know.
    #[error(
        "unsupported bundle format version {found} (this stub reads version {supported}); \
         use the stub that came with the packer that made it"
    )]
    UnsupportedVersion {
        /// Version found in the file.
        found: u32,
        /// Version this code reads.
        supported: u32,
    },

    /// The trailer is present but its fields are inconsistent or damaged.
    #[error("corrupt bundle trailer: {0}; copy the original file again")]
    CorruptTrailer(&'static str),

    /// A section's SHA-256 does not match the one recorded at pack time.
    #[error("{section} digest mismatch: the bundle is corrupted; copy the original file again")]
    DigestMismatch {
        /// `payload`, `manifest` or `index`.
        section: &'static str,
    },

    /// The manifest or index could not be decoded or holds invalid values.
    #[error("invalid {section}: {reason}")]
    InvalidMetadata {
        /// `manifest` or `index`.
        section: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The payload was packed with a codec this stub was built without.
    #[error("payload codec {0} is not built into this stub; pack again with a stub that has it")]
    CodecUnavailable(&'static str),

    /// The payload is not a valid compressed tar stream.
    #[error("corrupt payload: {0}")]
    CorruptPayload(String),

    /// An entry in the payload would escape the tree or is not allowed.
    #[error("unsafe payload entry {path:?}: {reason}")]
    UnsafeEntry {
        /// The entry's path as recorded in the archive.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// The bundle's signature block is damaged or its signature does not
    /// match the bundle (see [`crate::signature`]).
    #[error(
        "bad signature: {0}; the bundle was changed after it was signed or the signature is \
         damaged; copy the original file again"
    )]
    BadSignature(&'static str),

    /// The bundle is not signed by a key the caller trusts (unsigned, signed
    /// by another key, or the signature cannot be checked here).
    #[error("{0}")]
    Untrusted(String),

    /// A file in a folder being packed cannot be packed.
    #[error("cannot pack {path}: {reason}")]
    Unpackable {
        /// The offending path.
        path: PathBuf,
        /// Why it cannot be packed and what to do.
        reason: String,
    },

    /// A portable payload's placeholders are too short for the path the
    /// tree is extracted to.
    #[error(
        "the cache path {path} is too long for this portable payload ({len} bytes, at most \
         {max}); set SYDNEY_BUNDLE_DIR to a shorter directory"
    )]
    PathTooLong {
        /// The tree's final path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest tree path the placeholders hold.
        max: usize,
    },

    /// An I/O error on a named path. (The cause is the error's `source`,
    /// printed by reporters that walk the chain.)
    #[error("{action} {path}")]
    Io {
        /// What was being done, e.g. `cannot create`.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Coarse classes of [`FormatError`], for choosing exit codes and fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No payload appended (stripped or bare stub).
    NoPayload,
    /// The file is shorter than the bundle.
    Truncated,
    /// No trailer magic, or bytes appended after the bundle.
    BadMagic,
    /// Unknown format version.
    UnsupportedVersion,
    /// Inconsistent trailer, digest mismatch, undecodable metadata or payload.
    Corrupt,
    /// A payload entry was refused by the safety checks.
    Unsafe,
    /// The disk or quota is full.
    NoSpace,
    /// Permission denied or read-only file system.
    PermissionDenied,
    /// The extraction path does not fit a portable payload's placeholders.
    PathTooLong,
    /// A signature that does not match the bundle, or a damaged signature block.
    BadSignature,
    /// Not signed by a trusted key.
    Untrusted,
    /// Anything else (I/O, packing input errors, missing codec).
    Other,
}

impl FormatError {
    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FormatError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Classifies the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FormatError::NoPayload => ErrorKind::NoPayload,
            FormatError::Truncated { .. } => ErrorKind::Truncated,
            FormatError::TrailingData { .. } | FormatError::BadMagic => ErrorKind::BadMagic,
            FormatError::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            FormatError::CorruptTrailer(_)
            | FormatError::DigestMismatch { .. }
            | FormatError::InvalidMetadata { .. }
            | FormatError::CorruptPayload(_) => ErrorKind::Corrupt,
            FormatError::UnsafeEntry { .. } => ErrorKind::Unsafe,
            FormatError::PathTooLong { .. } => ErrorKind::PathTooLong,
            FormatError::BadSignature(_) => ErrorKind::BadSignature,
            FormatError::Untrusted(_) => ErrorKind::Untrusted,
            FormatError::Io { source, .. } => io_kind(source),
            FormatError::CodecUnavailable(_) | FormatError::Unpackable { .. } => ErrorKind::Other,
        }
    }
}

/// Classifies an I/O error into the kinds users need to act on differently.
pub fn io_kind(err: &io::Error) -> ErrorKind {
    match IoCause::of(err) {
        IoCause::Full => ErrorKind::NoSpace,
        IoCause::ReadOnly | IoCause::Denied => ErrorKind::PermissionDenied,
        IoCause::NotFound | IoCause::NotADirectory | IoCause::Other => ErrorKind::Other,
    }
}

/// The cause of an I/O failure, read from its errno: the one errno table
/// that the packer, the unpacker and the stub all classify with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCause {
    /// EROFS: the file system is mounted read-only.
    ReadOnly,
    /// EACCES or EPERM.
    Denied,
    /// ENOSPC or EDQUOT (or an error of kind `StorageFull`).
    Full,
    /// ENOENT.
    NotFound,
    /// ENOTDIR.
    NotADirectory,
    /// Anything else.
    Other,
}

impl IoCause {
    /// Classifies `err` by its errno.
    pub fn of(err: &io::Error) -> IoCause {
        match err.raw_os_error() {
            Some(EROFS) => IoCause::ReadOnly,
            Some(EACCES | EPERM) => IoCause::Denied,
            Some(ENOSPC | EDQUOT) => IoCause::Full,
            Some(ENOENT) => IoCause::NotFound,
            Some(ENOTDIR) => IoCause::NotADirectory,
            _ if err.kind() == io::ErrorKind::StorageFull => IoCause::Full,
            _ => IoCause::Other,
        }
    }
}

// Linux errno values (identical on every Linux architecture we target); kept
// here so this pure crate needs no libc binding.
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EACCES: i32 = 13;
const ENOTDIR: i32 = 20;
const ENOSPC: i32 = 28;
const EROFS: i32 = 30;
const EDQUOT: i32 = 122;

/// Shorthand used throughout the crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[cfg(test)]
mod io_cause_tests {
    use super::*;

    /// The whole errno table, with the kind each cause maps to.
    #[test]
    fn errno_table() {
        let table = [
            (EPERM, IoCause::Denied, ErrorKind::PermissionDenied),
            (ENOENT, IoCause::NotFound, ErrorKind::Other),
            (EACCES, IoCause::Denied, ErrorKind::PermissionDenied),
            (ENOTDIR, IoCause::NotADirectory, ErrorKind::Other),
            (ENOSPC, IoCause::Full, ErrorKind::NoSpace),
            (EROFS, IoCause::ReadOnly, ErrorKind::PermissionDenied),
            (EDQUOT, IoCause::Full, ErrorKind::NoSpace),
            (5, IoCause::Other, ErrorKind::Other), // EIO
        ];
        for (errno, cause, kind) in table {
            let err = io::Error::from_raw_os_error(errno);
            assert_eq!(IoCause::of(&err), cause, "errno {errno}");
            assert_eq!(io_kind(&err), kind, "errno {errno}");
        }
    }

    /// The constants are the real Linux values (std names them via ErrorKind).
    #[test]
    fn constants_are_the_linux_errnos() {
        let kind = |errno| io::Error::from_raw_os_error(errno).kind();
        assert_eq!(kind(EPERM), io::ErrorKind::PermissionDenied);
        assert_eq!(kind(ENOENT), io::ErrorKind::NotFound);
        assert_eq!(kind(EACCES), io::ErrorKind::PermissionDenied);
        assert_eq!(kind(ENOTDIR), io::ErrorKind::NotADirectory);
        assert_eq!(kind(ENOSPC), io::ErrorKind::StorageFull);
        assert_eq!(kind(EROFS), io::ErrorKind::ReadOnlyFilesystem);
        assert_eq!(kind(EDQUOT), io::ErrorKind::QuotaExceeded);
    }

    #[test]
    fn errors_without_errno_classify_by_kind() {
        let full = io::Error::new(io::ErrorKind::StorageFull, "full");
        assert_eq!(IoCause::of(&full), IoCause::Full);
        assert_eq!(io_kind(&full), ErrorKind::NoSpace);
        let other = io::Error::other("x");
        assert_eq!(IoCause::of(&other), IoCause::Other);
    }
}
