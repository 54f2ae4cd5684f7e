//! Follows docs/guide/aggregations.md: starts `wasmgrid dev`, runs every
//! `sh` block and the notebook cell in order in a scratch directory with
//! the real `wasmgrid`, and compares each output with the guide's.

mod common;

#[test]
fn aggregations_guide_works_as_written() {
    common::follow_guide("aggregations.md", &[], 5);
}
