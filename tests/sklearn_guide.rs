//! Follows docs/guide/scikit-learn.md: trains and exports a model with the
//! test setup's Python (scikit-learn, skl2onnx), deploys it with
//! `wasmgrid deploy --onnx` on `wasmgrid dev`, scores a DataFrame over HTTP
//! and a file as a job, and compares every output with the guide's.

mod common;

#[test]
fn scikit_learn_guide_works_as_written() {
    let Some(python) = common::local_python() else { return };
    let has = std::process::Command::new(&python).args(["-c", "import sklearn, skl2onnx"]).output();
    if !has.is_ok_and(|o| o.status.success()) {
        assert!(std::env::var_os("WASMGRID_REQUIRE_PYTHON").is_none(), "no scikit-learn and skl2onnx");
        eprintln!("no scikit-learn with skl2onnx: the guide is not followed");
        return;
    }
    common::follow_guide("scikit-learn.md", &[], 4);
}
