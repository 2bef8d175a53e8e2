//! The manager's errors. Each has a kind (`not_found`, `conflict`,
//! `invalid_argument`, `runtime`, `internal`) that the API reports, so the CLI
//! can print a clear message and scripts can match on it.

use crate::images::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A shim or runtime failed (missing binary, start, ttrpc call).
    #[error("{0}")]
    Runtime(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// A policy plugin in the shim refused the container:
    /// `denied by policy NAME: REASON`.
    #[error("{0}")]
    Denied(String),
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// The API's error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            CoreError::NotFound(_) => "not_found",
            CoreError::Conflict(_) => "conflict",
            CoreError::InvalidArgument(_) => "invalid_argument",
            CoreError::Runtime(_) => "runtime",
            CoreError::Image(e) => match e {
                ImageError::ImageNotFound { .. } => "not_found",
                ImageError::InvalidName { .. } => "invalid_argument",
                _ => "image",
            },
            CoreError::Io { .. } => "io",
            CoreError::Internal(_) => "internal",
            CoreError::Denied(_) => "denied",
        }
    }
}

/// Adds a context to I/O errors.
pub trait IoContext<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CoreError::io(f(), e))
    }
}
