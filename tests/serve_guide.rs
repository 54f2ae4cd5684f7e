//! Follows docs/guide/serve-over-http.md: starts `wasmgrid dev`, runs every
//! `sh` block in order with the real `wasmgrid` and `curl`, and compares
//! each output with the `output` block after it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use wasmgrid_test_artifacts as guests;

/// Waits until the node serves every function's active version.
async fn converged(control_plane: &str, gateway: &str) {
    let client = wasmgrid_api::Client::new(&[control_plane], Duration::from_secs(5))
        .expect("client")
        .with_token(Some(common::TOKEN.into()));
    let http = common::http();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = client.functions().await.expect("functions").functions;
        let have: wasmgrid_api::RouteTable =
            http.get(format!("{gateway}/v1/routes")).send().await.expect("routes").json().await.expect("json");
        if want.iter().all(|f| have.routes.iter().any(|r| r.name == f.name && r.version == f.active)) {
            return;
        }
        assert!(Instant::now() < deadline, "the node never caught up: {want:?} vs {have:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_http_guide_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/guide/serve-over-http.md")).expect("guide");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wasmgrid"), bin.join("wasmgrid")).expect("symlink");

    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    // Started in the guide's directory, as a reader does: the CLI and the
    // guide's curl commands find the admin token under .wasmgrid.
    let dev = common::grid::Dev::start(&work.join(".wasmgrid"));
    let (control_plane, gateway) = (dev.control_plane.clone(), dev.gateway.clone());

    let guests_dir = Path::new(guests::FALL_DETECT).parent().expect("dir").display().to_string();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let blocks = common::guide_blocks(&guide);
    assert!(blocks.iter().filter(|b| b.0 == "sh").count() >= 6, "{blocks:?}");
    let mut last = None;
    for (kind, body) in blocks {
        match kind {
            "sh" => {
                let script =
                    body.replace("http://127.0.0.1:7401", &gateway).replace("target/wasm32-wasip2/guest", &guests_dir);
                let out = Command::new("bash")
                    .args(["-e", "-c", &script])
                    .current_dir(&work)
                    .env_remove("WASMGRID_TOKEN")
                    .env_remove("WASMGRID_TOKEN_FILE")
                    .env("PATH", &path)
                    .env("WASMGRID_URL", &control_plane)
                    .env("NO_COLOR", "1")
                    .output()
                    .expect("bash");
                let (stdout, stderr) = common::text(&out);
                assert!(out.status.success(), "`{body}` failed\n{stdout}\n{stderr}");
                converged(&control_plane, &gateway).await;
                last = Some((body, stdout));
            }
            _ => {
                let (command, stdout) = last.take().expect("an output block follows a command");
                assert_eq!(common::normalize_hashes(&stdout), common::normalize_hashes(&body), "output of `{command}`");
            }
        }
    }
}
