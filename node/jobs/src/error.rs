//! What planning or publishing a job's data fails with.

use std::path::PathBuf;

use wasmgrid_data::Error as DataError;
use wasmgrid_data::store::StoreError;

/// Why a job's input could not be planned, or its output prepared,
/// published or discarded. The message is shown to the user as it is.
#[derive(Debug, thiserror::Error)]
pub enum JobIoError {
    /// An object store or URL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The input could not be planned.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The request does not fit its data: a bad format name, an output
    /// that is not absolute or already holds results, an input the node
    /// cannot plan (named by the tenant's URI).
    #[error("{0}")]
    Invalid(String),
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
    /// `_SUCCESS` could not be encoded.
    #[error("encoding _SUCCESS: {0}")]
    Manifest(#[from] serde_json::Error),
}

impl JobIoError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        JobIoError::Io { action, path: path.into(), source }
    }
}

impl From<JobIoError> for wasmgrid_runtime::Error {
    fn from(e: JobIoError) -> Self {
        match e {
            JobIoError::Io { action, path, source } => wasmgrid_runtime::Error::Io { action, path, source },
            JobIoError::Data(e) => wasmgrid_runtime::Error::Data(e),
            other => wasmgrid_runtime::Error::Job(other.to_string()),
        }
    }
}
