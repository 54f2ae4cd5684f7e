//! Follows docs/guide/gpu-mlp.md: starts `wasmgrid dev` on the CPU fallback
//! (so the printed scores are the same on every machine), runs every `sh`
//! block in order in a scratch directory with the real `wasmgrid`, and
//! compares each output with the `output` block after it.

mod common;

use std::path::Path;
use std::process::Command;

use wasmgrid_test_artifacts as guests;

#[test]
fn gpu_guide_works_as_written() {
    if let Ok(mut env) = common::EXTRA_ENV.lock() {
        env.push(("WASMGRID_GPU".into(), "off".into()));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/guide/gpu-mlp.md")).expect("guide");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&work).expect("work");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wasmgrid"), bin.join("wasmgrid")).expect("symlink");
    let dev = common::grid::Dev::start(&tmp.path().join("dev"));

    let guests_dir = Path::new(guests::MLP_SCORE).parent().expect("dir").display().to_string();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let blocks = common::guide_blocks(&guide);
    assert!(blocks.iter().filter(|b| b.0 == "sh").count() >= 5, "{blocks:?}");
    let mut last = None;
    for (kind, body) in blocks {
        match kind {
            "sh" => {
                let script = body.replace("target/wasm32-wasip2/guest", &guests_dir);
                let out = Command::new("bash")
                    .args(["-e", "-c", &script])
                    .current_dir(&work)
                    .env("PATH", &path)
                    .env("WASMGRID_URL", &dev.control_plane)
                    .env("WASMGRID_GPU", "off")
                    .env("WASMGRID_CACHE_DIR", tmp.path().join("cache"))
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
