//! [`FileJobIo`]: the control plane's [`JobIo`] over the file systems and
//! object stores the nodes share.

use wasmgrid_api::{DEFAULT_PARTITION_SIZE, JobCommit, JobIo, JobRequest, PartitionSpec};

/// Plans and publishes jobs on storage the control plane shares with the
/// nodes (a shared file system, or an object store).
#[derive(Debug, Default)]
pub struct FileJobIo;

impl JobIo for FileJobIo {
    fn plan(&self, request: &JobRequest) -> Result<Vec<PartitionSpec>, wasmgrid_api::JobIoError> {
        Ok(crate::plan(request, request.partition_size.unwrap_or(DEFAULT_PARTITION_SIZE))?)
    }

    fn commit(&self, commit: &JobCommit) -> Result<(), wasmgrid_api::JobIoError> {
        Ok(crate::commit(commit)?)
    }

    fn abort(&self, output: &str, job: &str) {
        crate::abort(output, job);
    }
}
