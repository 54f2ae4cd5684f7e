//! Builds every guest component (examples and hostile fixtures) for
//! `wasm32-wasip2` with a nested cargo, into `target/guests`, and tells the
//! crate where each `.wasm` file is. Like wasmtime's `test-programs`: tests
//! run components built from source, never committed binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, component file stem)
const GUESTS: &[&str] = &[
    "wordcount-map",
    "wordcount-reduce",
    "logreg",
    "fall-detect",
    "mlp-score",
    "flights",
    "onnx-score",
    "hostile-scorer",
    "echo-scorer",
    "hostile-mapper",
    "big-start",
    "init-trap",
    "init-state",
    "missing-import",
    "http-hello",
    "logreg-http",
    "matmul-wasm",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..").canonicalize().expect("workspace root exists");
    for dir in ["sdk", "guest-examples", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=WASMGRID_GUEST_TARGET_DIR");

    let target_dir = std::env::var_os("WASMGRID_GUEST_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("guests")
    });

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--profile", "guest", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for g in GUESTS {
        cmd.args(["-p", g]);
    }
    // The outer build's flags are for the host, not for wasm.
    for var in
        ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR", "RUSTC_WORKSPACE_WRAPPER"]
    {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build guest components");
    if !status.success() {
        panic!(
            "building guest components failed ({status}); is the target installed? \
             `rustup target add wasm32-wasip2`"
        );
    }

    let out = target_dir.join("wasm32-wasip2/guest");
    let mut consts = String::new();
    for g in GUESTS {
        let file = out.join(format!("{}.wasm", g.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
        let name = g.replace('-', "_").to_uppercase();
        consts.push_str(&format!(
            "/// Path of the `{g}` component.\npub const {name}: &str = {:?};\n",
            file.display().to_string()
        ));
    }
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("guests.rs");
    std::fs::write(dest, consts).expect("writing guests.rs");
}
