//! The seam between the control plane and job data: the leader plans a
//! job's input and publishes its output through a [`JobIo`], and never
//! reads or writes data itself. `wasmgrid-jobs` implements it; the
//! `wasmgrid` command wires the two together.

use std::fmt;

use crate::{JobCommit, JobRequest, PartitionSpec};

/// Default target size of a job's partitions.
pub const DEFAULT_PARTITION_SIZE: u64 = 64 << 20;

/// Why planning or publishing failed; its message is shown to the user.
pub type JobIoError = Box<dyn std::error::Error + Send + Sync>;

/// Reads and publishes job data.
pub trait JobIo: Send + Sync + fmt::Debug {
    /// Plans the input into partitions and prepares the output directory
    /// (refusing earlier results unless `overwrite`).
    fn plan(&self, request: &JobRequest) -> Result<Vec<PartitionSpec>, JobIoError>;
    /// Publishes the winners of a job whose tasks all won: renames them to
    /// their final names and writes `_SUCCESS`. Must be idempotent: a
    /// commit cut short by a failover is run again.
    fn commit(&self, commit: &JobCommit) -> Result<(), JobIoError>;
    /// Removes what the attempts of a failed or cancelled job left behind
    /// in `output`.
    fn abort(&self, output: &str, job: &str);
}
