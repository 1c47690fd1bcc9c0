//! The image store's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the image store. The agent maps [`ImageError::NeverPull`] to
/// `ErrImageNeverPull` and the other errors of a pull (see [`ImageError::is_pull_failure`]) to
/// `ErrImagePull`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {0:?} not found in the store")]
    NotFound(String),
    #[error("image {reference:?} is not present and the pull policy is Never")]
    NeverPull { reference: String },
    #[error("pulling {reference}: {reason}")]
    Pull { reference: String, reason: String },
    #[error("archive {}: {reason}", path.display())]
    InvalidArchive { path: PathBuf, reason: String },
    #[error("image content {what}: {reason}")]
    InvalidContent { what: String, reason: String },
    #[error("layer {layer}: {reason}")]
    UnsafeLayer { layer: String, reason: String },
    #[error("{what}: digest mismatch, expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("mounting the root filesystem at {}: {reason}", path.display())]
    Mount { path: PathBuf, reason: String },
}

impl ImageError {
    /// True for the errors a pull from a registry ends with (the kubelet's `ErrImagePull`).
    pub fn is_pull_failure(&self) -> bool {
        !matches!(self, ImageError::NeverPull { .. })
    }

    pub(crate) fn content(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ImageError::InvalidContent {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Adds what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|source| ImageError::Io {
            context: what(),
            source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|errno| ImageError::Io {
            context: what(),
            source: errno.into(),
        })
    }
}
