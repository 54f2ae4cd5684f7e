//! Follows docs/guide/nats.md: a NATS server with JetStream, `wasmgrid dev`
//! allowed to reach it, streams made, windows published and scores read
//! with the guide's Python (nats-py), and every output compared with the
//! guide's.

mod common;

use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_guide_works_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = common::nats::Server::start(dir.path()).await else { return };
    // The guide's `python3` is one with nats-py: the test venv's, next to
    // its nats-server.
    let venv = common::nats::nats_server().and_then(|s| s.parent().map(Path::to_path_buf)).expect("nats-server");
    let python = venv.join("python3");
    let has_client = std::process::Command::new(&python).args(["-c", "import nats"]).output();
    if !has_client.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("WASMGRID_REQUIRE_NATS").is_none(),
            "WASMGRID_REQUIRE_NATS is set but {} has no nats-py",
            python.display()
        );
        eprintln!("skipped: no Python with nats-py");
        return;
    }
    let wasmgrid = Path::new(env!("CARGO_BIN_EXE_wasmgrid")).parent().expect("bin dir");
    let path = format!("{}:{}:{}", wasmgrid.display(), venv.display(), std::env::var("PATH").unwrap_or_default());
    let env = [("NATS", server.url.as_str()), ("WASMGRID_EGRESS_ALLOW", "127.0.0.1"), ("PATH", path.as_str())];
    tokio::task::block_in_place(|| common::follow_guide("nats.md", &env, 6));
}
