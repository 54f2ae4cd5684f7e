//! `onnx-score`, the stock scorer for ONNX models: scikit-learn models of
//! three families (logistic regression, random forest, MLP classifier; 30
//! features), exported with skl2onnx as float32 models, deployed as the
//! artifact `model` of onnx-score, give `predict_proba`'s probabilities
//! within 1e-5 (and `predict`'s labels) through `wasmgrid run` over
//! Parquet, per request over HTTP, and as a batch job over Parquet on a
//! grid (one of them deployed with the `--onnx` shorthand).
//!
//! The models are trained and exported by the test, with the Python of the
//! test setup (scikit-learn, skl2onnx, onnx); without it the test says so
//! and passes, unless `WASMGRID_REQUIRE_PYTHON` is set.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::grid::{Node, Replicas};
use serde_json::{Value, json};
use wasmgrid_test_artifacts as guests;

const FAMILIES: [&str; 3] = ["logreg", "forest", "mlp"];
const TOLERANCE: f64 = 1e-5;

const TRAIN: &str = r#"
import json, sys, warnings
import numpy as np
import pyarrow as pa, pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPClassifier
from skl2onnx import to_onnx
warnings.filterwarnings("ignore")
out = sys.argv[1]
rng = np.random.default_rng(1)
X = rng.normal(size=(2000, 30)).astype(np.float32)
y = (X @ rng.normal(size=30) + rng.normal(size=2000) > 0).astype(int)
test = rng.normal(size=(500, 30)).astype(np.float32).astype(np.float64)
models = {
    "logreg": LogisticRegression(max_iter=500),
    "forest": RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0),
    "mlp": MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0),
}
want = {}
for name, m in models.items():
    m.fit(X, y)
    onx = to_onnx(m, X[:1], options={id(m): {"zipmap": False}})
    open(f"{out}/{name}.onnx", "wb").write(onx.SerializeToString())
    want[name] = {"proba": m.predict_proba(test.astype(np.float32))[:, 1].tolist(), "label": m.predict(test.astype(np.float32)).tolist()}
columns = {"id": list(range(len(test)))}
columns.update({f"x{i}": test[:, i] for i in range(30)})
pq.write_table(pa.table(columns), f"{out}/rows.parquet")
json.dump({"want": want, "rows": [dict(id=i, **{f"x{j}": float(test[i, j]) for j in range(30)}) for i in range(len(test))]}, open(f"{out}/want.json", "w"))
"#;

/// Per model family: `predict_proba`'s class-1 column and `predict`.
type Predictions = HashMap<String, (Vec<f64>, Vec<i64>)>;

/// Trains and exports the models into `dir`; what they predict, and the rows.
fn train(dir: &Path) -> Option<(Predictions, Vec<Value>)> {
    let python = common::local_python()?;
    let has = std::process::Command::new(&python).args(["-c", "import sklearn, skl2onnx, onnx"]).output();
    if !has.is_ok_and(|o| o.status.success()) {
        assert!(std::env::var_os("WASMGRID_REQUIRE_PYTHON").is_none(), "no scikit-learn, skl2onnx and onnx");
        eprintln!("no scikit-learn with skl2onnx: onnx-score not tested");
        return None;
    }
    common::ok(std::process::Command::new(&python).args(["-c", TRAIN]).arg(dir).output().expect("python"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("want.json")).expect("want")).expect("json");
    let want = FAMILIES
        .iter()
        .map(|f| {
            let proba =
                v["want"][f]["proba"].as_array().expect("proba").iter().map(|p| p.as_f64().expect("p")).collect();
            let label =
                v["want"][f]["label"].as_array().expect("label").iter().map(|l| l.as_i64().expect("l")).collect();
            (f.to_string(), (proba, label))
        })
        .collect();
    Some((want, v["rows"].as_array().expect("rows").clone()))
}

fn features() -> String {
    format!("features={}", (0..30).map(|i| format!("x{i}")).collect::<Vec<_>>().join(","))
}

/// (id, score, label) of scored rows.
fn scored(rows: &[Value]) -> Vec<(usize, f64, i64)> {
    rows.iter()
        .map(|r| {
            let id = r["id"].as_u64().expect("id") as usize;
            (id, r["score"].as_f64().expect("score"), r["label"].as_i64().expect("label"))
        })
        .collect()
}

fn assert_like_sklearn(what: &str, got: &[(usize, f64, i64)], want: &(Vec<f64>, Vec<i64>)) {
    assert_eq!(got.len(), want.0.len(), "{what}: one answer per row");
    let mut worst = 0f64;
    for &(id, score, label) in got {
        worst = worst.max((score - want.0[id]).abs());
        assert!((score - want.0[id]).abs() <= TOLERANCE, "{what}: row {id}: {score} vs predict_proba {}", want.0[id]);
        assert_eq!(label, want.1[id], "{what}: row {id}: label");
    }
    eprintln!("{what}: largest difference from predict_proba {worst:.2e}");
}

fn rows_in(dir: &Path) -> Vec<Value> {
    common::parts_text(dir).lines().map(|l| serde_json::from_str(l).expect("row")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_score_gives_predict_proba_for_three_model_families_locally_per_request_and_in_jobs() {
    let replicas = Replicas::start(1, 1000);
    let dir = replicas.dir.path().to_path_buf();
    let Some((want, rows)) = train(&dir) else { return };
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let cache = dir.join("cache");
    let parquet = dir.join("rows.parquet").display().to_string();

    // `wasmgrid run` over Parquet.
    for family in FAMILIES {
        let out = dir.join(format!("local-{family}"));
        let model = format!("model={}", dir.join(format!("{family}.onnx")).display());
        let args =
            ["run", guests::ONNX_SCORE, "-i", &parquet, "-o", out.to_str().expect("utf-8"), "--artifact", &model];
        common::ok(common::run_in(&cache, &[&args[..], &["-c", &features(), "--memory", "512MiB"]].concat()));
        assert_like_sklearn(&format!("{family}, wasmgrid run"), &scored(&rows_in(&out)), &want[family]);
    }

    // On a grid: deployed with the model as its artifact.
    let node = Node::start_with(&urls, &dir.join("node"), &["--cache-dir", cache.to_str().expect("utf-8")]);
    for family in FAMILIES {
        let path = dir.join(format!("{family}.onnx")).display().to_string();
        let model = format!("model={path}");
        let deploy: Vec<&str> = match family {
            // The shorthand: the stock component found beside the binary.
            "mlp" => vec!["deploy", family, "--onnx", &path],
            _ => vec!["deploy", family, guests::ONNX_SCORE, "--artifact", &model],
        };
        common::grid_ok(&urls, &[&deploy[..], &["-c", &features(), "--memory", "512MiB", "--timeout", "30s"]].concat());
    }
    for family in FAMILIES {
        let url = format!("{}/v1/fn/default/{family}", node.url);
        let body = common::post_until_served(&url, &json!({ "rows": rows }), Duration::from_secs(180)).await;
        assert_like_sklearn(
            &format!("{family}, per request"),
            &scored(body["rows"].as_array().expect("rows")),
            &want[family],
        );
        let out = dir.join(format!("job-{family}"));
        let submit = ["job", "submit", family, "--input", &parquet, "--output", out.to_str().expect("utf-8"), "--wait"];
        common::grid_ok(&urls, &submit);
        assert_like_sklearn(&format!("{family}, batch job"), &scored(&rows_in(&out)), &want[family]);
    }

    // A model whose wide input is not named: refused at deploy, saying how.
    let model = format!("model={}", dir.join("logreg.onnx").display());
    let e = common::fails(common::grid_cli(&urls, &["deploy", "unnamed", guests::ONNX_SCORE, "--artifact", &model]));
    assert!(e.contains("takes 30 values a row: name its columns with --config features=col1,col2,..."), "{e}");
}
