//! The data layer's error type: what went wrong finding, reading or writing
//! data, with the facts a user needs to fix it.

use std::path::PathBuf;

/// Result with the data layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong finding, decoding or writing data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input path or glob matched nothing, or could not be read.
    #[error("input `{input}`: {reason}")]
    Input {
        /// The path or glob.
        input: String,
        /// What went wrong.
        reason: String,
    },
    /// Input data could not be decoded.
    #[error("decoding {path}: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// Output could not be encoded or written.
    #[error("writing {path}: {reason}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A function passed something malformed to be written (a bad batch or
    /// record, pairs that do not decode).
    #[error("function produced invalid output: {reason}")]
    BadOutput {
        /// What was wrong.
        reason: String,
    },
    /// A function asked for input in a way the partition cannot give.
    #[error("bad input request: {reason}")]
    BadInputRequest {
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    /// A short, stable name for the kind of error, for metrics and scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Input { .. } => "input",
            Error::Decode { .. } => "decode",
            Error::Output { .. } => "output",
            Error::Io { .. } => "io",
            Error::BadOutput { .. } => "bad_output",
            Error::BadInputRequest { .. } => "bad_input_request",
        }
    }
}
