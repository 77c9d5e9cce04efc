//! Exit codes: the one place they are defined. `docs/EXIT_CODES.md` and the
//! `--help` footer list the same table; a test keeps them in step.
//!
//! These codes come from the stub itself, before it execs the entry. Once
//! the entry runs, the process's exit code is the entry's own (as PID 1, the
//! entry's code, or 128 + the signal that killed it).

use std::io;

use bundle_format::{ErrorKind, FormatError};

/// Every exit code the stub can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A failure not listed below (I/O error, failed health check, ...).
    Failure = 1,
    /// Bad command line.
    Usage = 2,
    /// `stop`, `pid`: nothing is running.
    NotRunning = 3,
    /// `daemon`: an instance is already running.
    AlreadyRunning = 4,
    /// `healthcheck`: no 2xx answer.
    Unhealthy = 5,
    /// `verify --deep`: the extracted tree differs from the manifest.
    TreeMismatch = 6,
    /// `verify --deep`: the extracted tree holds entries the payload has not.
    TreeExtra = 7,
    /// `verify --deep`: an entry of the tree has a setuid, setgid or sticky bit.
    TreePrivileged = 8,
    /// `verify --deep`: the tree's marker file is missing or wrong.
    TreeUnmarked = 9,
    /// The file has no payload: a bare stub, or `strip` removed it.
    NoPayload = 10,
    /// The file is shorter than the bundle it should hold.
    Truncated = 11,
    /// No bundle trailer, or bytes appended after the bundle.
    BadMagic = 12,
    /// Made by a newer packer with a format version this stub cannot read.
    UnsupportedVersion = 13,
    /// Digest mismatch or damaged metadata or payload.
    Corrupt = 14,
    /// The payload holds an entry that would escape its tree.
    UnsafePayload = 15,
    /// No cache directory could be used.
    NoCacheDir = 20,
    /// The disk (or quota) is full.
    DiskFull = 21,
    /// Permission denied or read-only file system.
    PermissionDenied = 22,
    /// `SYDNEY_BUNDLE_DIR` names a directory that is not safe to use.
    UnsafeCacheDir = 23,
    /// The entry cannot run here (needs its tree but nothing is writable,
    /// or executing from memory is forbidden).
    CannotRun = 24,
    /// A portable payload cannot be patched for a cache path this long.
    PathTooLong = 25,
    /// `SYDNEY_BUNDLE_TRUSTED_KEYS` is set and the bundle is not signed by
    /// one of its keys (unsigned, another key, or the variable is unusable).
    Untrusted = 26,
    /// The bundle's signature does not match its contents.
    BadSignature = 27,
    /// `upgrade`, `rollback`, `restart`: another one is running.
    UpgradeBusy = 28,
    /// `upgrade`, `rollback`, `restart`: the new version did not become
    /// ready; it was stopped and the old one keeps serving.
    UpgradeFailed = 29,
    /// `rollback`: there is no previous file to go back to.
    NoPrevious = 30,
    /// `upgrade`: the new file is another bundle (another name).
    WrongBundle = 31,
    /// The entry exists but could not be executed (shell convention).
    NotExecutable = 126,
    /// The entry or its interpreter was not found (shell convention).
    NotFound = 127,
}

impl Exit {
    /// Every code, in order, with its one-line meaning (for `--help` and the
    /// docs test).
    pub const TABLE: &'static [(Exit, &'static str)] = &[
        (Exit::Ok, "success"),
        (Exit::Failure, "failure not listed below"),
        (Exit::Usage, "bad command line"),
        (Exit::NotRunning, "stop, pid: not running"),
        (Exit::AlreadyRunning, "daemon: already running"),
        (Exit::Unhealthy, "healthcheck: no 2xx answer"),
        (Exit::TreeMismatch, "verify --deep: extracted tree differs"),
        (Exit::TreeExtra, "verify --deep: extra entries in the tree"),
        (
            Exit::TreePrivileged,
            "verify --deep: setuid, setgid or sticky bit in the tree",
        ),
        (
            Exit::TreeUnmarked,
            "verify --deep: tree marker missing or wrong",
        ),
        (Exit::NoPayload, "no payload (bare stub, or stripped)"),
        (Exit::Truncated, "truncated bundle"),
        (Exit::BadMagic, "bad magic: no trailer, or data appended"),
        (Exit::UnsupportedVersion, "unknown bundle format version"),
        (Exit::Corrupt, "digest mismatch or corrupt bundle"),
        (Exit::UnsafePayload, "unsafe payload entry"),
        (Exit::NoCacheDir, "no usable cache directory"),
        (Exit::DiskFull, "disk full"),
        (Exit::PermissionDenied, "permission denied"),
        (Exit::UnsafeCacheDir, "cache or state directory is unsafe"),
        (Exit::CannotRun, "entry cannot run on this host"),
        (
            Exit::PathTooLong,
            "cache path too long for a portable payload",
        ),
        (Exit::Untrusted, "not signed by a trusted key"),
        (Exit::BadSignature, "bad signature"),
        (Exit::UpgradeBusy, "upgrade: another one is running"),
        (
            Exit::UpgradeFailed,
            "upgrade: new version not ready; old one serves",
        ),
        (Exit::NoPrevious, "rollback: no previous version"),
        (Exit::WrongBundle, "upgrade: another bundle's file"),
        (Exit::NotExecutable, "entry could not be executed"),
        (Exit::NotFound, "entry or its interpreter not found"),
    ];

    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// An error that carries its exit code explicitly.
#[derive(Debug)]
pub struct Coded {
    /// The exit code.
    pub exit: Exit,
    /// The message.
    pub message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// Builds an [`anyhow::Error`] with an explicit exit code.
pub fn coded(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        exit,
        message: message.into(),
    })
}

/// Chooses the exit code for an error: the first cause in its chain that
/// carries one decides.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(coded) = cause.downcast_ref::<Coded>() {
            return coded.exit;
        }
        if let Some(format) = cause.downcast_ref::<FormatError>() {
            return from_kind(format.kind());
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match bundle_format::error::io_kind(io) {
                ErrorKind::Other => {}
                kind => return from_kind(kind),
            }
        }
    }
    Exit::Failure
}

fn from_kind(kind: ErrorKind) -> Exit {
    match kind {
        ErrorKind::NoPayload => Exit::NoPayload,
        ErrorKind::Truncated => Exit::Truncated,
        ErrorKind::BadMagic => Exit::BadMagic,
        ErrorKind::UnsupportedVersion => Exit::UnsupportedVersion,
        ErrorKind::Corrupt => Exit::Corrupt,
        ErrorKind::Unsafe => Exit::UnsafePayload,
        ErrorKind::NoSpace => Exit::DiskFull,
        ErrorKind::PermissionDenied => Exit::PermissionDenied,
        ErrorKind::PathTooLong => Exit::PathTooLong,
        ErrorKind::Untrusted => Exit::Untrusted,
        ErrorKind::BadSignature => Exit::BadSignature,
        ErrorKind::Other => Exit::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_in_order() {
        let codes: Vec<u8> = Exit::TABLE.iter().map(|(e, _)| e.code()).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(codes, sorted);
    }

    #[test]
    fn errors_map_to_their_codes() {
        let err = anyhow::Error::new(FormatError::NoPayload).context("cannot open bundle");
        assert_eq!(exit_for(&err), Exit::NoPayload);
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(exit_for(&anyhow::Error::new(full)), Exit::DiskFull);
        let err = coded(Exit::NotRunning, "not running");
        assert_eq!(exit_for(&err.context("stop")), Exit::NotRunning);
        assert_eq!(exit_for(&anyhow::anyhow!("plain")), Exit::Failure);
    }
}

#[cfg(test)]
mod docs_tests {
    use super::Exit;

    /// docs/EXIT_CODES.md lists exactly the codes of [`Exit::TABLE`], in order.
    #[test]
    fn exit_codes_doc_matches_the_code() {
        let doc = include_str!("../../../docs/EXIT_CODES.md");
        let documented: Vec<u8> = doc
            .lines()
            .filter_map(|line| line.strip_prefix("| "))
            .filter_map(|rest| rest.split(" |").next())
            .filter_map(|code| code.trim().parse().ok())
            .collect();
        let coded: Vec<u8> = Exit::TABLE.iter().map(|(e, _)| e.code()).collect();
        assert_eq!(documented, coded);
        for (exit, meaning) in Exit::TABLE {
            let row = format!("| {} | {meaning} |", exit.code());
            assert!(doc.contains(&row), "docs/EXIT_CODES.md lacks {row:?}");
        }
    }
}
