//! Follows docs/guide/first-python-function.md end to end: starts `wasmgrid
//! dev`, runs every `sh` block in order in a scratch directory with the real
//! `wasmgrid` (and componentize-py, for `wasmgrid build`), and compares each
//! output with the `output` block after it. Skipped, saying so, without
//! componentize-py, unless `WASMGRID_REQUIRE_PYTHON` is set.

mod common;

use std::path::Path;
use std::process::Command;

fn componentize_py_present() -> bool {
    let program = std::env::var_os("COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into());
    let present = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        present || std::env::var_os("WASMGRID_REQUIRE_PYTHON").is_none(),
        "WASMGRID_REQUIRE_PYTHON is set but componentize-py cannot be run"
    );
    present
}

#[test]
fn python_guide_works_as_written() {
    if !componentize_py_present() {
        eprintln!("componentize-py is not installed: the Python guide is not followed");
        return;
    }
    // Compiled Python components are shared with the other Python tests.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-guests/cache");
    common::follow_guide("first-python-function.md", &[("WASMGRID_CACHE_DIR", &cache.display().to_string())], 5);
}
