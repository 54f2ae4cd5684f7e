//! Follows docs/guide/notebook.md end to end: its Python cells, as one
//! notebook session with the `wasmgrid` package's client, against a real
//! `wasmgrid dev` (deploy, invoke with a DataFrame, a batch job read back
//! as a DataFrame, errors), each cell's output compared with the guide's.
//! Skipped, saying so, without a Python that has pandas, unless
//! `WASMGRID_REQUIRE_PYTHON` is set.

mod common;

#[test]
fn notebook_guide_works_as_written() {
    if common::local_python().is_none() {
        return;
    }
    common::follow_guide("notebook.md", &[], 4);
}
