//! Follows docs/guide/gpu-mlp.md: starts `wasmgrid dev` on the CPU fallback
//! (so the printed scores are the same on every machine), runs every `sh`
//! block in order in a scratch directory with the real `wasmgrid`, and
//! compares each output with the `output` block after it.

mod common;

#[test]
fn gpu_guide_works_as_written() {
    common::follow_guide("gpu-mlp.md", &[("WASMGRID_GPU", "off")], 5);
}
