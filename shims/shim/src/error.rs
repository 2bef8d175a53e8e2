//! The shim's errors, and how they reach containerd: each maps to the gRPC
//! code containerd's `errdefs` turns back into its own error kinds
//! (NotFound, AlreadyExists, FailedPrecondition, NotImplemented, ...).

use ttrpc::Code;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} is not implemented by the husk shim")]
    NotImplemented(&'static str),
    #[error(transparent)]
    Runtime(#[from] husk_runtime::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// A policy plugin refused the container: `denied by policy NAME: REASON`.
    #[error("{0}")]
    Denied(String),
    /// An error a worker process answered with (see `worker.rs`): its
    /// code and message, as they reached the worker's caller.
    #[error("{1}")]
    Coded(Code, String),
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
        let context = context.into();
        move |source| ShimError::Io { context, source }
    }

    pub fn code(&self) -> Code {
        use husk_runtime::Error as R;
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            ShimError::NotImplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Denied(_) => Code::PERMISSION_DENIED,
            ShimError::Coded(code, _) => *code,
            ShimError::Runtime(e) => match e {
                R::NotFound { .. } => Code::NOT_FOUND,
                R::AlreadyExists(_) => Code::ALREADY_EXISTS,
                R::WrongState { .. } => Code::FAILED_PRECONDITION,
                R::InvalidId { .. }
                | R::Bundle { .. }
                | R::SpecParse { .. }
                | R::InvalidSpec(_)
                | R::Unsupported(_) => Code::INVALID_ARGUMENT,
                _ => Code::UNKNOWN,
            },
            ShimError::Io { .. } | ShimError::Internal(_) => Code::UNKNOWN,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}
