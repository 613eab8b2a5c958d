//! The runtime's one error type for callers: a kind (which the C ABI turns
//! into its status code) and a message that says what is wrong and, where it
//! can, what to do.
//!
//! Each module keeps its own precise error (`PassError`, `ModelFileError`,
//! `DataError`, `UnlearnError`, ...); they all convert into [`Error`], so the
//! session API and the C ABI report them the same way.

use crate::data::DataError;
use crate::exec::PassError;
use crate::graph::GraphError;
use crate::metrics::svm::SvmError;
use crate::model_file::ModelFileError;
use crate::unlearn::UnlearnError;

/// What kind of failure an [`Error`] is. The groups match the C status codes:
/// caller input, file contents, unsupported requests, the memory budget,
/// cancellation, the operating system, and bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An argument is wrong: a shape, a label, a setting, an empty set.
    InvalidArgument,
    /// A required pointer was null (C ABI only).
    NullPointer,
    /// A caller's buffer has the wrong length or is too small for the result.
    BufferSize,
    /// Training or unlearning diverged (non-finite loss or parameters) with
    /// the settings given; nothing was changed.
    Diverged,
    /// The unlearned model failed the deletion check, so it was not
    /// committed (the caller may force it).
    NotForgotten,
    /// A file is not what it claims to be: malformed, hostile, or of another format.
    BadFile,
    /// A file's stored checksum does not match its contents (corruption).
    Checksum,
    /// A valid request this build or this model cannot serve.
    Unsupported,
    /// The work would need more memory than the session's budget.
    BudgetExceeded,
    /// The caller cancelled; nothing was changed.
    Cancelled,
    /// The operating system refused a read or write.
    Io,
    /// A bug in qmul (a broken invariant, a caught panic).
    Internal,
}

/// A failure with its kind and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<PassError> for Error {
    fn from(e: PassError) -> Self {
        Error::invalid(e.0)
    }
}

impl From<GraphError> for Error {
    fn from(e: GraphError) -> Self {
        Error::new(ErrorKind::BadFile, e.to_string())
    }
}

impl From<SvmError> for Error {
    fn from(e: SvmError) -> Self {
        Error::invalid(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e.to_string())
    }
}

impl From<ModelFileError> for Error {
    fn from(e: ModelFileError) -> Self {
        let kind = match &e {
            ModelFileError::Io(_) => ErrorKind::Io,
            ModelFileError::Invalid(_) => ErrorKind::BadFile,
            ModelFileError::Checksum(_) => ErrorKind::Checksum,
            ModelFileError::Unwritable(_) => ErrorKind::Diverged,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<DataError> for Error {
    fn from(e: DataError) -> Self {
        let kind = match &e {
            DataError::Missing { .. } | DataError::Io { .. } => ErrorKind::Io,
            DataError::Format { .. } | DataError::LabelOutOfRange { .. } => ErrorKind::BadFile,
            DataError::Spec { .. } | DataError::Invalid(_) => ErrorKind::InvalidArgument,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<UnlearnError> for Error {
    fn from(e: UnlearnError) -> Self {
        let kind = match &e {
            UnlearnError::Invalid(_) => ErrorKind::InvalidArgument,
            UnlearnError::Cancelled => ErrorKind::Cancelled,
            UnlearnError::Diverged(_) => ErrorKind::Diverged,
        };
        Error::new(kind, e.to_string())
    }
}
