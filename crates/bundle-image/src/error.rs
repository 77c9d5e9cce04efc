//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bundle could not be read.
    #[error("cannot read bundle {path}: {cause}")]
    Read {
        /// The bundle.
        path: PathBuf,
        /// The cause (in the message, so not also a `source`).
        cause: io::Error,
    },

    /// The file is not a valid bundle.
    #[error("{path} is not a usable sydney bundle: {cause}")]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What the format reader found.
        cause: bundle_format::FormatError,
    },

    /// An option is malformed; the message says which and how to fix it.
    #[error("{0}")]
    BadOption(String),

    /// The archive could not be written.
    #[error("cannot write image {path}: {cause}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The cause.
        cause: io::Error,
    },

    /// The OCI types refused a value (a bug, or a value no check caught).
    #[error("cannot build the image's {what}: {message}")]
    Spec {
        /// Which document.
        what: &'static str,
        /// The OCI crate's message.
        message: String,
    },
}

impl ImageError {
    /// Wraps an error from the OCI types or JSON encoding.
    pub(crate) fn spec(what: &'static str, err: impl std::fmt::Display) -> ImageError {
        ImageError::Spec {
            what,
            message: err.to_string(),
        }
    }
}
