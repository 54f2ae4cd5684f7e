//! Follows docs/guide/batch-jobs.md: starts `wasmgrid dev`, runs every `sh`
//! block in order in a scratch directory with the real `wasmgrid`, and
//! compares each output with the `output` block after it.

mod common;

#[test]
fn batch_jobs_guide_works_as_written() {
    common::follow_guide("batch-jobs.md", &[], 5);
}
