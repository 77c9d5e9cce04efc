//! The library's error type, classified so that front ends can map each
//! class to an exit code (docs/SYDNEY_PACK.md lists them).

use std::path::PathBuf;

use bundle_format::FormatError;

/// What went wrong while planning, packing or inspecting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The folder is not a release this tool knows, and the flags do not
    /// say enough to pack it anyway.
    #[error("{path} is not a release: {reason}")]
    NotARelease {
        /// The folder.
        path: PathBuf,
        /// What is missing and which flags supply it.
        reason: String,
    },

    /// The folder cannot be packed as it is (missing, not a folder, an
    /// entry that does not exist, a symlink leaving it, a device node, ...).
    #[error(transparent)]
    Input(FormatError),

    /// A flag's value is invalid (a name, a level, an environment default).
    #[error("{0}")]
    Option(String),

    /// The output file cannot be written.
    #[error("cannot write {path}: {reason}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },

    /// The file given to `inspect` is not a readable bundle.
    #[error("{path}: {source}")]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What the format reader found.
        #[source]
        source: FormatError,
    },

    /// Reading the bundle to inspect failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The folder's programs are for several architectures, or for one no
    /// stub exists for; or `--stub` is for another architecture than them.
    #[error("{0}")]
    Arch(String),

    /// No stub for the codec (a library caller's stub source failed).
    #[error("{0}")]
    Stub(String),

    /// `image`: the image could not be written.
    #[error(transparent)]
    Image(#[from] bundle_image::ImageError),
}

impl Error {
    /// Classifies a packing failure: errors creating, writing or renaming
    /// the output are the output's, everything else is the folder's.
    pub fn from_pack(err: FormatError, out: &std::path::Path) -> Error {
        match &err {
            FormatError::Io {
                action: "cannot create" | "cannot write" | "cannot chmod" | "cannot rename into",
                source,
                ..
            } => Error::Output {
                path: out.to_owned(),
                reason: format!("{source}; check the space and permissions there"),
            },
            _ => Error::Input(err),
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::Path;

    use super::*;

    #[test]
    fn packing_errors_are_the_output_s_or_the_folder_s() {
        let out = Path::new("/o/app");
        let io = |action, kind| FormatError::io(action, "/x", io::Error::from(kind));
        for action in [
            "cannot create",
            "cannot write",
            "cannot chmod",
            "cannot rename into",
        ] {
            let err = Error::from_pack(io(action, io::ErrorKind::StorageFull), out);
            assert!(matches!(err, Error::Output { .. }), "{action}: {err}");
        }
        for action in [
            "cannot open",
            "cannot read",
            "cannot stat",
            "cannot read folder",
        ] {
            let err = Error::from_pack(io(action, io::ErrorKind::NotFound), out);
            assert!(matches!(err, Error::Input(_)), "{action}: {err}");
        }
    }
}
