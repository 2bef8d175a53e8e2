//! The runtime's error type. Every message names what was wrong and, where
//! there is one, what the user can do next.

use std::path::PathBuf;

use crate::cgroups::CgroupError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },

    #[error("container {id:?} does not exist under {root}; `husk-runtime list` shows the containers there")]
    NotFound { id: String, root: PathBuf },

    #[error("container {0:?} already exists; choose another id or remove it with `husk-runtime delete --force {0}`")]
    AlreadyExists(String),

    #[error("bundle {bundle}: {reason}")]
    Bundle { bundle: PathBuf, reason: String },

    #[error("{path}: not a valid OCI runtime spec: {reason}")]
    SpecParse { path: PathBuf, reason: String },

    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    #[error("container {id:?} is {status}: {action}")]
    WrongState {
        id: String,
        status: String,
        action: String,
    },

    #[error("{hook} hook {path} failed: {reason}")]
    Hook {
        hook: String,
        path: PathBuf,
        reason: String,
    },

    #[error("container init failed: {0}")]
    Init(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Cgroup(#[from] CgroupError),

    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    pub fn invalid_spec(msg: impl Into<String>) -> Self {
        Error::InvalidSpec(msg.into())
    }
}

/// Attaches a human description of the failed operation to an `io::Error`.
pub trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, nix::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|errno| Error::Io {
            context: context(),
            source: std::io::Error::from(errno),
        })
    }
}
