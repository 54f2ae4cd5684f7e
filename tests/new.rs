//! `wasmgrid new` end to end: each template in each language creates a
//! project that `wasmgrid build` builds into a component, that
//! `wasmgrid run` runs over its own sample data with the answers the
//! template documents, and whose own test passes (`cargo test`, pytest).
//! The Python projects are skipped, saying so, without componentize-py and
//! a Python with pandas and pytest, unless `WASMGRID_REQUIRE_PYTHON` is set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fails, ok, ok_stdout, wasmgrid};

/// `wasmgrid new KIND NAME --lang LANG` in `dir`; the project's directory.
fn create(dir: &Path, kind: &str, name: &str, lang: &str) -> PathBuf {
    let out = wasmgrid().args(["new", kind, name, "--lang", lang, "--dir"]).arg(dir).output().expect("wasmgrid new");
    let stdout = ok_stdout(out);
    assert!(stdout.contains("wasmgrid run "), "{stdout}");
    dir.join(name)
}

/// The rows `wasmgrid run` wrote, by id.
fn run_sample(component: &Path, project: &Path, out: &Path) -> Vec<serde_json::Value> {
    ok(wasmgrid()
        .arg("run")
        .arg(component)
        .arg("--input")
        .arg(project.join("sample.csv"))
        .arg("--output")
        .arg(out)
        .env("WASMGRID_CACHE_DIR", out.with_extension("cache"))
        .output()
        .expect("wasmgrid run"));
    let mut rows: Vec<serde_json::Value> =
        common::parts_text(out).lines().map(|l| serde_json::from_str(l).expect("a JSON row")).collect();
    rows.sort_by_key(|r| r["id"].as_i64());
    rows
}

/// What the scorer template adds to the sample: price x quantity, null
/// where the quantity is missing.
fn assert_scored(rows: &[serde_json::Value]) {
    let totals: Vec<Option<f64>> = rows.iter().map(|r| r["total"].as_f64()).collect();
    assert_eq!(totals, vec![Some(10.0), None, Some(12.0), Some(240.0)], "{rows:?}");
    assert!(rows[1]["total"].is_null());
}

/// What the mapper template emits for the sample: the one row whose total
/// is at least 100.
fn assert_mapped(rows: &[serde_json::Value]) {
    assert_eq!(rows, [serde_json::json!({"id": 4, "total": 240.0})]);
}

/// What the aggregate template gives for the sample: one row per size,
/// the order without a quantity in a null group with a null quantity.
fn assert_aggregated(rows: &[serde_json::Value]) {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| r["size"].as_str().map(str::to_string));
    assert_eq!(
        rows,
        [
            // JSON lines leave nulls out.
            serde_json::json!({"orders": 1, "mean_price": 10.0, "max_price": 10.0, "under_5": 0}),
            serde_json::json!({"size": "large", "orders": 1, "quantity": 2, "mean_price": 120.0, "max_price": 120.0, "under_5": 0}),
            serde_json::json!({"size": "small", "orders": 2, "quantity": 7, "mean_price": 3.25, "max_price": 4.0, "under_5": 2}),
        ]
    );
}

/// A check of what a template's sample gives.
type Check = fn(&[serde_json::Value]);

/// Each template with what its sample must give.
const TEMPLATES: [(&str, Check); 3] =
    [("scorer", assert_scored), ("mapper", assert_mapped), ("aggregate", assert_aggregated)];

#[test]
fn rust_projects_build_run_and_pass_their_tests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // One target directory for both projects: the SDK's dependencies build once.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("new-projects");
    for (kind, check) in TEMPLATES {
        let name = format!("my-{kind}");
        let project = create(tmp.path(), kind, &name, "rust");
        let built = wasmgrid().arg("build").arg(&project).env("CARGO_TARGET_DIR", &target).output().expect("build");
        let component = PathBuf::from(ok_stdout(built).trim());
        assert_eq!(component, target.join(format!("wasm32-wasip2/release/my_{kind}.wasm")));
        check(&run_sample(&component, &project, &tmp.path().join(format!("out-{kind}"))));
        // The project's own test, natively.
        let tested = Command::new("cargo")
            .args(["test", "--quiet", "--manifest-path"])
            .arg(project.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("cargo test");
        let stdout = ok_stdout(tested);
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
}

#[test]
fn python_projects_build_run_and_pass_their_tests() {
    let Some(python) = common::local_python() else { return };
    let program = std::env::var_os("COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into());
    if !Command::new(&program).arg("--version").output().is_ok_and(|o| o.status.success()) {
        assert!(std::env::var_os("WASMGRID_REQUIRE_PYTHON").is_none(), "componentize-py cannot be run");
        eprintln!("componentize-py is not installed: Python projects not built");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/python");
    for (kind, check) in TEMPLATES {
        let name = format!("py-{kind}");
        let project = create(tmp.path(), kind, &name, "python");
        let component = tmp.path().join(format!("py_{kind}.wasm"));
        ok(wasmgrid()
            .arg("build")
            .arg(project.join(format!("py_{kind}.py")))
            .arg("-o")
            .arg(&component)
            .env("WASMGRID_CACHE_DIR", tmp.path().join("cache"))
            .output()
            .expect("build"));
        check(&run_sample(&component, &project, &tmp.path().join(format!("out-{kind}"))));
        let tested = Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(&project)
            .current_dir(&project)
            .env("PYTHONPATH", &sdk)
            .output()
            .expect("pytest");
        let stdout = ok_stdout(tested);
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
}

#[test]
fn bad_names_existing_directories_and_non_projects_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stderr = fails(wasmgrid().args(["new", "scorer", "Bad Name", "--dir"]).arg(tmp.path()).output().expect("new"));
    assert!(stderr.contains("is not a project name"), "{stderr}");
    create(tmp.path(), "scorer", "twice", "python");
    let stderr = fails(wasmgrid().args(["new", "scorer", "twice", "--dir"]).arg(tmp.path()).output().expect("new"));
    assert!(stderr.contains("already exists"), "{stderr}");
    // A directory without a Cargo.toml is not a Rust project.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("dir");
    let stderr = fails(wasmgrid().arg("build").arg(&empty).output().expect("build"));
    assert!(stderr.contains("is not a Rust project: it has no Cargo.toml"), "{stderr}");
}
