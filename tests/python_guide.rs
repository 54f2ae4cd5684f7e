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
    if let Ok(mut env) = common::EXTRA_ENV.lock() {
        env.push(("WASMGRID_CACHE_DIR".into(), cache.display().to_string()));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/guide/first-python-function.md")).expect("guide");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&work).expect("work");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wasmgrid"), bin.join("wasmgrid")).expect("symlink");
    let dev = common::grid::Dev::start(&tmp.path().join("dev"));

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let blocks = common::guide_blocks(&guide);
    assert!(blocks.iter().filter(|b| b.0 == "sh").count() >= 5, "{blocks:?}");
    let mut last = None;
    for (kind, body) in blocks {
        match kind {
            "sh" => {
                let out = Command::new("bash")
                    .args(["-e", "-c", &body])
                    .current_dir(&work)
                    .env("PATH", &path)
                    .env("WASMGRID_URL", &dev.control_plane)
                    .env("WASMGRID_CACHE_DIR", &cache)
                    .env("NO_COLOR", "1")
                    .output()
                    .expect("bash");
                let (stdout, stderr) = common::text(&out);
                assert!(out.status.success(), "`{body}` failed\n{stdout}\n{stderr}");
                last = Some((body, stdout));
            }
            _ => {
                let (command, stdout) = last.take().expect("an output block follows a command");
                assert_eq!(common::normalize_hashes(&stdout), common::normalize_hashes(&body), "output of `{command}`");
            }
        }
    }
}
