//! Follows docs/guide/first-function.md end to end: writes the files it
//! shows, builds the crate for wasm32-wasip2 as it says, runs its
//! `wasmgrid run` command and compares the output with the guide's.

mod common;

use std::path::Path;
use std::process::Command;

/// (marker argument, code block body) for every `<!-- MARKER: ARG -->` before a block.
fn marked_blocks(text: &str, marker: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let needle = format!("<!-- {marker}");
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        let arg = rest[..rest.find("-->").expect("marker closes")].trim().trim_start_matches(':').trim().to_string();
        let fence = rest.find("```").expect("a block follows the marker");
        let body = &rest[fence..];
        let body = &body[body.find('\n').expect("fence line") + 1..];
        let end = body.find("```").expect("block closes");
        out.push((arg, body[..end].to_string()));
        rest = &body[end + 3..];
    }
    out
}

#[test]
fn first_function_guide_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/guide/first-function.md")).expect("guide");
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("price-band");

    let files = marked_blocks(&guide, "file");
    assert_eq!(files.len(), 3, "Cargo.toml, src/lib.rs and orders.csv");
    for (name, body) in files {
        let path = project.join(&name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        // The guide's crate sits next to a wasmgrid checkout; ours is here.
        let body = body.replace("../wasmgrid/sdk", &root.join("sdk").display().to_string());
        std::fs::write(path, body).expect("write guide file");
    }

    let build = Command::new(env!("CARGO"))
        .current_dir(&project)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--offline", "--quiet"])
        .env("CARGO_TARGET_DIR", project.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let (stdout, stderr) = common::text(&build);
    assert!(build.status.success(), "building the guide's crate failed\n{stdout}\n{stderr}");

    let runs = marked_blocks(&guide, "run");
    assert_eq!(runs.len(), 1);
    let command = runs[0].1.trim();
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(args[0], "wasmgrid");
    let out = common::wasmgrid()
        .current_dir(&project)
        .env("WASMGRID_CACHE_DIR", tmp.path().join("cache"))
        .args(&args[1..])
        .output()
        .expect("wasmgrid runs");
    common::ok(out);

    for (file, expected) in marked_blocks(&guide, "expect") {
        let got = std::fs::read_to_string(project.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(got.trim(), expected.trim(), "{file} differs from the guide");
    }
}
