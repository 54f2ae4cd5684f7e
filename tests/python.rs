//! Python guests: the examples in `guest-examples/python-*`, built with
//! `wasmgrid build` (componentize-py), through `wasmgrid run`, per request
//! and as batch jobs on a real grid, against the Rust examples; and hostile
//! Python guests.
//!
//! componentize-py comes from `COMPONENTIZE_PY` or `PATH`; without it these
//! tests say so and pass, unless `WASMGRID_REQUIRE_PYTHON` is set (CI sets
//! it, after installing componentize-py in a virtual environment).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::grid::{Node, Replicas};
use serde_json::{Value, json};
use wasmgrid_runtime::Io;
use wasmgrid_runtime::bindings::{Batch, Column, Field};
use wasmgrid_runtime::{Error, Limits, Runtime, RuntimeConfig};
use wasmgrid_test_artifacts as guests;

const MODEL: &str = r#"{"features": ["x1", "x2"], "weights": [0.8, -1.25], "bias": 0.3}"#;
const PY_MEMORY: &str = "256MiB";

/// Where built Python components and their compiled code are kept, shared
/// by every test binary (each component is built and compiled once).
fn shared() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-guests")
}

static BUILT: Mutex<BTreeMap<String, Option<PathBuf>>> = Mutex::new(BTreeMap::new());

/// `wasmgrid build` of `app` (relative to the repository), once per
/// content; `None` when componentize-py is missing and not required.
fn python_guest(app: &str) -> Option<PathBuf> {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(done) = built.get(app) {
        return done.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut h = DefaultHasher::new();
    for f in [app, "sdk/python/wasmgrid/__init__.py", "sdk/wit/wasmgrid.wit"] {
        std::fs::read(root.join(f)).expect("source").hash(&mut h);
    }
    let stem = Path::new(app).file_stem().and_then(|s| s.to_str()).unwrap_or("app").to_string();
    let dir = shared();
    std::fs::create_dir_all(&dir).expect("shared dir");
    let wasm = dir.join(format!("{}-{stem}-{:016x}.wasm", app.replace(['/', '.'], "_"), h.finish()));
    if !wasm.exists() {
        let tmp = wasm.with_extension(format!("{}.tmp", std::process::id()));
        let out = common::wasmgrid()
            .arg("build")
            .arg(root.join(app))
            .arg("-o")
            .arg(&tmp)
            .output()
            .expect("wasmgrid build runs");
        let (stdout, stderr) = common::text(&out);
        if !out.status.success() {
            let missing = stderr.contains("not found: install it");
            assert!(
                missing && std::env::var_os("WASMGRID_REQUIRE_PYTHON").is_none(),
                "wasmgrid build {app} failed:\n{stdout}\n{stderr}"
            );
            eprintln!("componentize-py is not installed: Python guests not tested");
            built.insert(app.into(), None);
            return None;
        }
        std::fs::rename(&tmp, &wasm).expect("rename");
    }
    built.insert(app.into(), Some(wasm.clone()));
    Some(wasm)
}

fn rows(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = common::Rng::new(seed);
    (0..n).map(|i| json!({"id": i, "x1": rng.unit() * 6.0 - 3.0, "x2": rng.unit() * 6.0 - 3.0})).collect()
}

fn assert_same_scores(what: &str, python: &[(u64, f64)], rust: &[(u64, f64)]) {
    assert_eq!(python.len(), rust.len(), "{what}: row counts");
    assert!(!rust.is_empty(), "{what}: no rows");
    for ((id, p), (rid, r)) in python.iter().zip(rust) {
        assert_eq!(id, rid, "{what}: row order");
        assert!((p - r).abs() <= 1e-6, "{what}: row {id}: python {p} vs rust {r}");
    }
}

/// `wasmgrid run` of scorer `wasm` with `model` over `input` into `out`.
fn run_with_model(wasm: &Path, model: &str, input: &Path, out: &Path) -> std::process::Output {
    common::wasmgrid()
        .env("WASMGRID_CACHE_DIR", shared().join("cache"))
        .arg("run")
        .arg(wasm)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(out)
        .args(["--config", &format!("model={model}"), "--memory", PY_MEMORY])
        .output()
        .expect("wasmgrid runs")
}

fn run_scorer(wasm: &Path, input: &Path, out: &Path) -> Vec<(u64, f64)> {
    common::ok(run_with_model(wasm, MODEL, input, out));
    common::scores_in(out)
}

#[test]
fn python_logreg_gives_the_rust_logregs_scores_through_wasmgrid_run() {
    let Some(py) = python_guest("guest-examples/python-logreg/app.py") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("rows.jsonl");
    common::write_jsonl(&input, &rows(500, 3));
    let python = run_scorer(&py, &input, &dir.path().join("py"));
    let rust = run_scorer(Path::new(guests::LOGREG), &input, &dir.path().join("rust"));
    assert_same_scores("wasmgrid run", &python, &rust);

    // The same model as an artifact instead of config.
    let model = dir.path().join("model.json");
    std::fs::write(&model, MODEL).expect("model");
    let artifact = format!("model={}", model.display());
    let out = dir.path().join("artifact");
    let args = ["--memory", PY_MEMORY, "--artifact", &artifact, "--output", out.to_str().expect("path")];
    common::ok(
        common::wasmgrid()
            .env("WASMGRID_CACHE_DIR", shared().join("cache"))
            .arg("run")
            .arg(&py)
            .arg("--input")
            .arg(&input)
            .args(args)
            .output()
            .expect("runs"),
    );
    assert_same_scores("an artifact model", &common::scores_in(&out), &rust);

    // A bad model is the guest's error, as in Rust.
    let bad = r#"{"features": ["x1"], "weights": [1, 2], "bias": 0}"#;
    let stderr = common::fails(run_with_model(&py, bad, &input, &dir.path().join("bad")));
    assert!(stderr.contains("model has 1 features but 2 weights"), "{stderr}");

    // A missing column is named once, unquoted (a KeyError's message).
    let missing = r#"{"features": ["x9"], "weights": [1], "bias": 0}"#;
    let stderr = common::fails(run_with_model(&py, missing, &input, &dir.path().join("missing")));
    assert!(stderr.contains("function returned an error: no column `x9` (columns: id, x1, x2)"), "{stderr}");
    assert_eq!(stderr.matches("no column").count(), 1, "{stderr}");
}

#[test]
fn python_functions_run_in_plain_python_under_pytest_and_score_like_their_component() {
    let Some(python) = common::local_python() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sdk = root.join("sdk/python");
    // The examples' unit tests: a DataFrame in, a DataFrame out, the grid's
    // errors, no component.
    let out = std::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("tests/python-local"))
        .env("PYTHONPATH", &sdk)
        .output()
        .expect("pytest runs");
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success() && stdout.contains("12 passed"), "{stdout}\n{stderr}");

    // The same rows scored by the module in plain Python and by its
    // component through `wasmgrid run`.
    let Some(py) = python_guest("guest-examples/python-logreg/app.py") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("rows.jsonl");
    common::write_jsonl(&input, &rows(300, 7));
    let component = run_scorer(&py, &input, &dir.path().join("out"));
    let script = r#"
import importlib.util, json, sys
import pandas as pd
from wasmgrid import local
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
scored = local.score(app.score, pd.read_json(sys.argv[2], lines=True), {"model": sys.argv[3]})
print(json.dumps([[int(i), float(s)] for i, s in zip(scored["id"], scored["score"])]))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(root.join("guest-examples/python-logreg/app.py"))
        .arg(&input)
        .arg(MODEL)
        .env("PYTHONPATH", &sdk)
        .output()
        .expect("python runs");
    let local: Vec<(u64, f64)> = serde_json::from_str(&common::ok_stdout(out)).expect("scores");
    assert_eq!(local.len(), 300);
    for ((id, l), (cid, c)) in local.iter().zip(&component) {
        assert_eq!(id, cid, "row order");
        assert!((l - c).abs() <= 1e-12, "row {id}: plain Python {l}, component {c}");
    }
}

/// Word counts in a job's output, each word once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flights_query_in_python_gives_the_row_by_row_answer_locally_and_as_a_job() {
    let Some(wasm) = python_guest("guest-examples/python-flights/flights.py") else { return };
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-examples/python-flights/flights.py"))
            .expect("example");
    let body = source.split("\"\"\"").nth(2).expect("after the docstring");
    let code = body.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count();
    assert!(code <= 10, "the Python flights query is {code} lines");

    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let (batches, pq, csv) = common::flights::write(&dir.join("data"), 4, 12_000, 5);
    let want = common::flights::reference(&batches);
    let rows_of = |out: &Path| -> Vec<Value> {
        common::parts_text(out).lines().map(|l| serde_json::from_str(l).expect("row")).collect()
    };

    // Locally, over CSV in many partitions.
    let cache = shared().join("cache");
    let out = dir.join("local");
    let (input, out_s) = (csv.display().to_string(), out.display().to_string());
    let args = ["run", wasm.to_str().expect("utf-8"), "-i", &input, "-o", &out_s, "--partition-size", "64KiB"];
    common::ok(common::run_in(&cache, &[&args[..], &["--memory", PY_MEMORY]].concat()));
    common::flights::assert_same(&common::flights::from_rows(&rows_of(&out)), &want);

    // As a grid job over Parquet, groups over 2 reduce partitions.
    let cache = cache.display().to_string();
    let _node = Node::start_with(&urls, &dir.join("node"), &["--cache-dir", &cache]);
    let wasm = wasm.display().to_string();
    common::grid_ok(&urls, &["deploy", "py-flights", &wasm, "--memory", PY_MEMORY, "--timeout", "60s"]);
    let out = dir.join("job");
    let (input, out_s) = (pq.display().to_string(), out.display().to_string());
    common::grid_ok(
        &urls,
        &["job", "submit", "py-flights", "--input", &input, "--output", &out_s, "--reduce-partitions", "2", "--wait"],
    );
    common::flights::assert_same(&common::flights::from_rows(&rows_of(&out)), &want);
}

fn counts_in(dir: &Path) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(dir).expect("output") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).expect("part").lines() {
                let v: Value = serde_json::from_str(line).expect("json");
                let word = v["word"].as_str().expect("word").to_string();
                assert!(counts.insert(word, v["count"].as_u64().expect("count")).is_none(), "a word twice");
            }
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_guests_serve_requests_and_run_batch_jobs_like_rust_ones() {
    let (Some(logreg), Some(map), Some(reduce)) = (
        python_guest("guest-examples/python-logreg/app.py"),
        python_guest("guest-examples/python-wordcount/map.py"),
        python_guest("guest-examples/python-wordcount/reduce.py"),
    ) else {
        return;
    };
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let cache = shared().join("cache").display().to_string();
    let node = Node::start_with(&urls, &dir.join("node"), &["--cache-dir", &cache]);
    let config = format!("model={MODEL}");
    for (name, wasm) in [("py-logreg", logreg.as_path()), ("logreg", Path::new(guests::LOGREG))] {
        let wasm = wasm.display().to_string();
        common::grid_ok(
            &urls,
            &["deploy", name, &wasm, "--config", &config, "--memory", PY_MEMORY, "--timeout", "30s"],
        );
    }
    for (name, wasm) in [
        ("py-wc-map", map.as_path()),
        ("py-wc-reduce", reduce.as_path()),
        ("wc-map", Path::new(guests::WORDCOUNT_MAP)),
        ("wc-reduce", Path::new(guests::WORDCOUNT_REDUCE)),
    ] {
        let wasm = wasm.display().to_string();
        common::grid_ok(&urls, &["deploy", name, &wasm, "--memory", PY_MEMORY, "--timeout", "60s"]);
    }

    // Per request: the same rows through both.
    let sample = rows(50, 4);
    let mut answers = Vec::new();
    for name in ["py-logreg", "logreg"] {
        let url = format!("{}/v1/fn/default/{name}", node.url);
        let body = common::post_until_served(&url, &json!({ "rows": sample }), Duration::from_secs(60)).await;
        answers.push(common::id_scores(&body));
    }
    assert_same_scores("per request", &answers[0], &answers[1]);

    // Batch scoring: the Python job's scores equal the Rust job's.
    let input = dir.join("rows");
    std::fs::create_dir_all(&input).expect("rows dir");
    for (i, chunk) in rows(1_200, 5).chunks(300).enumerate() {
        common::write_jsonl(&input.join(format!("part-{i}.jsonl")), chunk);
    }
    let mut outputs = Vec::new();
    for name in ["py-logreg", "logreg"] {
        let out = dir.join(format!("scored-{name}"));
        let args = [
            "job",
            "submit",
            name,
            "--input",
            &input.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--wait",
        ];
        common::grid_ok(&urls, &args);
        outputs.push(common::scores_in(&out));
    }
    assert_same_scores("batch job", &outputs[0], &outputs[1]);

    // Word count: the Python mapper and reducer give the Rust job's output.
    let corpus = dir.join("corpus");
    common::write_corpus(&corpus, 6, 48 << 10, 11);
    let mut counts = Vec::new();
    for (map, reduce) in [("py-wc-map", "py-wc-reduce"), ("wc-map", "wc-reduce")] {
        let out = dir.join(format!("counts-{map}"));
        let args = [
            "job",
            "submit",
            map,
            "--input",
            &corpus.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--reduce",
            reduce,
            "--reduce-partitions",
            "3",
            "--partition-size",
            "32KiB",
            "--wait",
        ];
        common::grid_ok(&urls, &args);
        counts.push(counts_in(&out));
    }
    assert!(counts[1].len() > 100, "a real corpus");
    assert_eq!(counts[0], counts[1], "python word count equals the rust word count");
}

static RUNTIME: std::sync::LazyLock<Runtime> = std::sync::LazyLock::new(|| {
    Runtime::new(RuntimeConfig { cache_dir: Some(shared().join("cache")), ..RuntimeConfig::default() })
        .expect("runtime")
});

fn score_hostile(wasm: &Path, mode: &str, limits: &Limits) -> Result<Batch, Error> {
    let f = RUNTIME.load_file(wasm).expect("loads");
    let config = Arc::new(BTreeMap::from([("mode".to_string(), mode.to_string())]));
    let mut instance = f.instantiate(limits, config, Io::default())?;
    let rows =
        Batch { rows: 2, fields: vec![Field { name: "x".into(), values: Column::F64(vec![1.0, 2.0]), valid: None }] };
    instance.score(&rows)
}

#[test]
fn hostile_python_guests_are_contained_like_rust_ones() {
    let Some(wasm) = python_guest("tests/python-guests/hostile.py") else { return };
    let limits = Limits { memory: 256 << 20, timeout: Duration::from_secs(2), ..Limits::default() };
    let healthy = || {
        let out = score_hostile(&wasm, "ok", &limits).expect("a healthy call after a hostile one");
        assert!(matches!(&out.fields[0].values, Column::F64(v) if v == &[1.0, 1.0]));
    };
    healthy();

    let err = score_hostile(&wasm, "loop", &limits).expect_err("a loop cannot finish");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    healthy();

    let err = score_hostile(&wasm, "grow", &limits).expect_err("memory runs out");
    assert!(
        matches!(err, Error::MemoryLimit { limit, .. } if limit == 256 << 20)
            || err.to_string().contains("MemoryError"),
        "{err}"
    );
    healthy();

    let err = score_hostile(&wasm, "raise", &limits).expect_err("the guest raises");
    assert!(matches!(&err, Error::Guest { message } if message == "hostile python"), "{err}");
    healthy();
}

/// A component that takes seconds to compile (it carries the Python
/// interpreter) on a node whose compile deadline is shorter: the compiler
/// is stopped, calls are told why the function cannot run there, and a
/// small function on the same node is compiled and served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_compiles_past_the_deadline_gets_a_clear_error() {
    let Some(logreg) = python_guest("guest-examples/python-logreg/app.py") else {
        return;
    };
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    // Its own, empty compile cache: everything is compiled here.
    let node = Node::start_with(&urls, &replicas.dir.path().join("node"), &["--compile-timeout", "2s"]);
    let config = format!("model={MODEL}");
    for (name, wasm) in [("py-logreg", logreg.as_path()), ("logreg", Path::new(guests::LOGREG))] {
        let wasm = wasm.display().to_string();
        common::grid_ok(&urls, &["deploy", name, &wasm, "--config", &config, "--memory", PY_MEMORY]);
    }
    let http = common::http();
    let answer = |name: &'static str| {
        let (http, url) = (http.clone(), format!("{}/v1/fn/default/{name}", node.url));
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let response = http.post(&url).json(&json!({ "rows": rows(3, 1) })).send().await.expect("answer");
                let status = response.status().as_u16();
                let body: Value = response.json().await.expect("json");
                if status != 404 || std::time::Instant::now() > deadline {
                    return (status, body);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (status, body) = answer("logreg").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer("py-logreg").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "load_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("took longer than 2s"), "{body}");
    assert!(message.contains("version 1 of `default/py-logreg`"), "{body}");
    // The node carries on.
    let (status, body) = answer("logreg").await;
    assert_eq!(status, 200, "{body}");
}
