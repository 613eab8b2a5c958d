//! The one error type of the data layer.
//!
//! Every reader reports malformed or missing input through [`DataError`]
//! instead of panicking, so the CLI can print one clear line (what file,
//! what is wrong, how to get the data) and exit non-zero.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong while finding, reading or slicing a data set.
#[derive(Debug)]
pub enum DataError {
    /// A file the data set needs is not there. `hint` says how to get it.
    Missing {
        /// The file (or the candidates, joined) that was looked for.
        path: PathBuf,
        /// How to obtain it, e.g. `apt-get install dataset-fashion-mnist`.
        hint: String,
    },
    /// The operating system refused a read or write (permissions, I/O,
    /// or a corrupt gzip stream, which flate2 reports as an I/O error).
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The bytes are not a valid file of the expected format: wrong magic,
    /// wrong length, inconsistent counts, ...
    Format {
        /// The file (or an in-memory source's name).
        path: PathBuf,
        /// A sentence saying what is wrong.
        reason: String,
    },
    /// A label is not below the number of classes of the data set.
    LabelOutOfRange {
        /// The file the label came from.
        path: PathBuf,
        /// Index of the sample whose label is bad.
        index: usize,
        /// The label read.
        label: u32,
        /// The number of classes the format allows.
        classes: usize,
    },
    /// A data-source spec string could not be understood.
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it and what would be accepted.
        reason: String,
    },
    /// A request on an in-memory data set cannot be met (e.g. a stratified
    /// subset asking for more samples of a class than exist).
    Invalid(String),
}

impl DataError {
    /// Shorthand for a [`DataError::Format`] error.
    pub fn format(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        DataError::Format {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a [`DataError::Io`] error; a `NotFound` I/O error is
    /// turned into [`DataError::Missing`] with the given hint so the user is
    /// told how to obtain the file rather than just "No such file".
    pub fn io(path: impl AsRef<Path>, source: io::Error, hint: &str) -> Self {
        let path = path.as_ref().to_path_buf();
        if source.kind() == io::ErrorKind::NotFound && !hint.is_empty() {
            DataError::Missing {
                path,
                hint: hint.to_string(),
            }
        } else {
            DataError::Io { path, source }
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Missing { path, hint } => {
                write!(f, "data file not found: {}", path.display())?;
                if !hint.is_empty() {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
            DataError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            DataError::Format { path, reason } => write!(f, "{}: {reason}", path.display()),
            DataError::LabelOutOfRange {
                path,
                index,
                label,
                classes,
            } => write!(
                f,
                "{}: label {label} of sample {index} is out of range (the data set has {classes} classes)",
                path.display()
            ),
            DataError::Spec { spec, reason } => write!(f, "bad data source {spec:?}: {reason}"),
            DataError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
