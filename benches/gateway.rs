//! Gateway benchmark (`cargo bench --bench gateway`): per-request scoring
//! over HTTP on loopback, one run, three models:
//!
//! - `logreg-2`: the demo's fraud model (`logreg`, 2 features... 3 with age),
//! - `logreg-30`: a 30-feature logistic regression (`logreg`, seeded random
//!   weights, features `f00`..`f29`),
//! - `mlp`: a 3-layer perceptron, 30 -> 64 -> 32 -> 1 (`mlp-score`, on the
//!   node's CPU fallback: `wasmgrid dev` runs with `--gpu-mode off`),
//! - `sk-logreg`, `onnx-logreg`, `onnx-forest` (`MODELS=` to add them; they
//!   need the test setup's Python with scikit-learn and skl2onnx): a
//!   scikit-learn logistic regression on 30 features served by the
//!   hand-written `logreg` guest with its coefficients, the same model
//!   exported to ONNX and served by the stock `onnx-score` (`deploy
//!   --onnx`), and a random forest (30 trees, depth 8) by `onnx-score`; the
//!   native server scores the first two with the coefficients' arithmetic
//!   and the forest with tract natively (the same ONNX runtime the guest
//!   carries, compiled for the host),
//!
//! on 1 row and on 100 rows (`ROWS=1` for one size, `MODELS=logreg-30` for
//! one model), each against
//!
//! - **native**: the leanest server a user would write: plain hyper (HTTP/1.1,
//!   no framework), rows through `serde_json`, the same arithmetic natively
//!   (`guest-examples/logreg/src/model.rs`; for the MLP, the same f32 dense
//!   layers), answering the input rows plus `score` like the gateway, and
//! - **wasmtime serve** (for `logreg-2` only): the same model as a standard
//!   `wasi:http/proxy` component (`tests/guests/logreg-http`) under `wasmtime
//!   serve` (`$WASMTIME`, else `wasmtime` on `PATH`; skipped when there is none).
//!
//! wasmgrid runs as `wasmgrid dev` (release build), and a second time as
//! `wasmgrid dev --tls` (its HTTPS gateway is the `wasmgrid TLS` row; `TLS=off`
//! leaves it out). A second node on the first grid, which holds none of the
//! functions (each is placed on `dev` alone), is the `wasmgrid fwd` row: every
//! call it takes is forwarded to `dev`'s gateway (`FORWARD=off` leaves it
//! out). Load comes from `wrk`
//! (throughput at 16, 32 and 64 connections, `CONNECTIONS=` to choose; a
//! server's saturation throughput is its best of those, over `ROUNDS=2`
//! rounds in which the servers take turns) and `hey` (latency
//! at half of wasmgrid's saturation throughput, fixed rate, over
//! `LATENCY_ROUNDS=3` rounds of turns; each figure is a median). Both must be installed
//! (`apt-get install wrk hey`). Every server and the load generator share
//! this machine's cores, so absolute figures understate a dedicated server;
//! the ratios in the same run are the point.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use wasmgrid_test_artifacts as guests;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../guest-examples/logreg/src/model.rs"]
mod model;

const MODEL: &str = r#"{"features": ["amount", "age_days", "foreign"], "weights": [0.004, -0.001, 1.5], "bias": -1.0}"#;

/// A deterministic stream of numbers in [-1, 1) (xorshift), so every run
/// scores the same models and rows.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn features30() -> Vec<String> {
    (0..30).map(|i| format!("f{i:02}")).collect()
}

/// One model the benchmark serves: its component, config, request rows and
/// the native server's scoring.
struct Case {
    name: &'static str,
    guest: &'static str,
    /// Config `model`, or with `onnx`, config `features`.
    model: String,
    /// An ONNX model served by `onnx-score` (its artifact `model`).
    onnx: Option<PathBuf>,
    native: Native,
}

#[derive(Clone)]
enum Native {
    LogReg(Arc<model::Model>),
    Mlp(Arc<Mlp>),
    Onnx(Arc<tract_onnx::prelude::TypedRunnableModel>),
}

/// Trains the scikit-learn models into `dir` (the test setup's Python);
/// `None` without scikit-learn and skl2onnx.
fn sklearn_cases(dir: &Path) -> Option<Vec<Case>> {
    const TRAIN: &str = r#"
import json, sys, warnings
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.ensemble import RandomForestClassifier
from skl2onnx import to_onnx
warnings.filterwarnings("ignore")
rng = np.random.default_rng(30)
X = rng.normal(size=(5000, 30)).astype(np.float32) * 2
y = (X @ rng.normal(size=30) + rng.normal(size=5000) > 0).astype(int)
for name, m in [("logreg", LogisticRegression(max_iter=500)), ("forest", RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0))]:
    m.fit(X, y)
    open(f"{sys.argv[1]}/{name}.onnx", "wb").write(to_onnx(m, X[:1], options={id(m): {"zipmap": False}}).SerializeToString())
    if name == "logreg":
        features = [f"f{i:02}" for i in range(30)]
        json.dump({"features": features, "weights": m.coef_[0].tolist(), "bias": float(m.intercept_[0])}, open(f"{sys.argv[1]}/logreg.json", "w"))
"#;
    let python = common::local_python()?;
    let out = Command::new(&python).args(["-c", TRAIN]).arg(dir).output().ok()?;
    if !out.status.success() {
        println!(
            "scikit-learn models: not trained ({})\n",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
        return None;
    }
    let logreg = std::fs::read_to_string(dir.join("logreg.json")).expect("coefficients");
    let native = Native::LogReg(Arc::new(model::Model::parse(&logreg).expect("model")));
    let features = features30().join(",");
    let forest = {
        use tract_onnx::prelude::*;
        let mut model = onnx().model_for_path(dir.join("forest.onnx")).expect("forest");
        let n = TDim::Sym(model.sym("N"));
        model.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), tvec![n, 30.into()])).expect("input");
        model.into_optimized().expect("optimised").into_runnable().expect("runnable")
    };
    Some(vec![
        Case { name: "sk-logreg", guest: guests::LOGREG, model: logreg, onnx: None, native: native.clone() },
        Case {
            name: "onnx-logreg",
            guest: guests::ONNX_SCORE,
            model: features.clone(),
            onnx: Some(dir.join("logreg.onnx")),
            native,
        },
        Case {
            name: "onnx-forest",
            guest: guests::ONNX_SCORE,
            model: features,
            onnx: Some(dir.join("forest.onnx")),
            native: Native::Onnx(forest),
        },
    ])
}

impl Case {
    fn logreg2() -> Case {
        let native = Native::LogReg(Arc::new(model::Model::parse(MODEL).expect("model")));
        Case { name: "logreg-2", guest: guests::LOGREG, model: MODEL.to_string(), onnx: None, native }
    }

    fn logreg30() -> Case {
        let mut n = Numbers(0x5eed_0030);
        let weights: Vec<f64> = (0..30).map(|_| n.next() * 0.5).collect();
        let model = json!({"features": features30(), "weights": weights, "bias": -0.25}).to_string();
        let native = Native::LogReg(Arc::new(model::Model::parse(&model).expect("model")));
        Case { name: "logreg-30", guest: guests::LOGREG, model, onnx: None, native }
    }

    fn mlp() -> Case {
        let mut n = Numbers(0x5eed_0003);
        // Three decimals keep the model's JSON under the 64 KiB config limit.
        // (Kept as f64 for the JSON: an f32 widened prints all its digits.)
        let mut value = |scale: f64| (n.next() * scale * 1000.0).round() / 1000.0;
        let mut layer = |inputs: usize, outputs: usize, activation: &str| {
            let scale = (1.0 / inputs as f64).sqrt();
            let weights: Vec<Vec<f64>> = (0..inputs).map(|_| (0..outputs).map(|_| value(scale)).collect()).collect();
            let bias: Vec<f64> = (0..outputs).map(|_| value(0.1)).collect();
            (weights, bias, activation.to_string())
        };
        let spec = [layer(30, 64, "relu"), layer(64, 32, "relu"), layer(32, 1, "sigmoid")];
        let model = json!({
            "features": features30(),
            "layers": spec.iter().map(|(w, b, a)| json!({"weights": w, "bias": b, "activation": a})).collect::<Vec<_>>(),
        })
        .to_string();
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let layers = spec.iter().map(|(w, b, a)| (w.iter().map(|r| f32s(r)).collect(), f32s(b), a.clone())).collect();
        let native = Native::Mlp(Arc::new(Mlp { features: features30(), layers }));
        Case { name: "mlp", guest: guests::MLP_SCORE, model, onnx: None, native }
    }

    /// A request of `rows` rows of this model's features.
    fn body(&self, rows: usize) -> String {
        let mut n = Numbers(0xb0d7 + rows as u64);
        let rows: Vec<Value> = match self.name {
            "logreg-2" => (0..rows)
                .map(|i| json!({"amount": 10.0 + i as f64 * 3.7, "age_days": (i * 37 % 3000) as f64, "foreign": (i % 5 == 0) as i64}))
                .collect(),
            _ => (0..rows)
                .map(|_| Value::Object(features30().into_iter().map(|f| (f, Value::from(n.next() * 3.0))).collect()))
                .collect(),
        };
        json!({ "rows": rows }).to_string()
    }
}

/// The MLP natively: f32 dense layers, as `mlp-score` computes them.
struct Mlp {
    features: Vec<String>,
    /// (weights `in x out`, bias, activation) per layer.
    layers: Vec<(Vec<Vec<f32>>, Vec<f32>, String)>,
}

impl Mlp {
    fn score(&self, row: &[f32]) -> f32 {
        let mut x = row.to_vec();
        for (weights, bias, activation) in &self.layers {
            let mut out = bias.clone();
            for (xi, w) in x.iter().zip(weights) {
                for (o, wij) in out.iter_mut().zip(w) {
                    *o += xi * wij;
                }
            }
            for o in &mut out {
                *o = match activation.as_str() {
                    "relu" => o.max(0.0),
                    "sigmoid" => 1.0 / (1.0 + (-*o).exp()),
                    _ => *o,
                };
            }
            x = out;
        }
        x.first().copied().unwrap_or(0.0)
    }
}

/// The native baseline: the same JSON in and out, the same arithmetic.
fn native_score(native: &Native, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut request: Map<String, Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(Value::Array(rows)) = request.remove("rows") else {
        return Err("expected rows".into());
    };
    let mut rows: Vec<Map<String, Value>> =
        rows.into_iter().filter_map(|r| if let Value::Object(o) = r { Some(o) } else { None }).collect();
    let scores: Vec<f64> = match native {
        Native::LogReg(model) => model.score(rows.len(), |name| {
            rows.iter()
                .map(|r| r.get(name).and_then(Value::as_f64).ok_or_else(|| format!("no {name}")))
                .collect::<Result<Vec<f64>, String>>()
        })?,
        Native::Mlp(mlp) => rows
            .iter()
            .map(|r| {
                let x: Vec<f32> = mlp
                    .features
                    .iter()
                    .map(|f| r.get(f).and_then(Value::as_f64).map(|v| v as f32).ok_or_else(|| format!("no {f}")))
                    .collect::<Result<_, String>>()?;
                Ok(f64::from(mlp.score(&x)))
            })
            .collect::<Result<_, String>>()?,
        Native::Onnx(plan) => {
            use tract_onnx::prelude::*;
            let mut x = Vec::with_capacity(rows.len() * 30);
            for r in &rows {
                for f in features30() {
                    x.push(r.get(&f).and_then(Value::as_f64).ok_or_else(|| format!("no {f}"))? as f32);
                }
            }
            let input = Tensor::from_shape(&[rows.len(), 30], &x).map_err(|e| e.to_string())?;
            let outputs = plan.run(tvec![input.into_tvalue()]).map_err(|e| e.to_string())?;
            // The class probabilities: [N, 2]; class 1's is the score.
            let p = outputs
                .iter()
                .find(|t| t.len() == rows.len() * 2 && !t.datum_type().is_integer())
                .ok_or("no probabilities")?;
            let p = p.cast_to::<f64>().map_err(|e| e.to_string())?;
            let p = p.to_plain_array_view::<f64>().map_err(|e| e.to_string())?;
            p.iter().skip(1).step_by(2).copied().collect()
        }
    };
    for (row, s) in rows.iter_mut().zip(scores) {
        row.insert("score".into(), Value::from(s));
    }
    serde_json::to_vec(&json!({ "rows": rows })).map_err(|e| e.to_string())
}

/// A plain hyper server (HTTP/1.1 keep-alive, multi-threaded tokio) scoring
/// `POST /{model}` natively.
fn start_native(cases: &[Case]) -> (SocketAddr, std::thread::JoinHandle<()>) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};

    let models: Arc<Vec<(String, Native)>> =
        Arc::new(cases.iter().map(|c| (format!("/{}", c.name), c.native.clone())).collect());
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let models = models.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let models = models.clone();
                        async move {
                            let native = models.iter().find(|(p, _)| p == request.uri().path()).map(|(_, n)| n.clone());
                            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let answer = match native.map(|n| native_score(&n, &body)) {
                                Some(Ok(bytes)) => Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(bytes))),
                                Some(Err(e)) => {
                                    Response::builder().status(StatusCode::BAD_REQUEST).body(Full::new(Bytes::from(e)))
                                }
                                None => Response::builder().status(StatusCode::NOT_FOUND).body(Full::default()),
                            };
                            Ok::<_, Infallible>(answer.expect("response"))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
    });
    (rx.recv().expect("native server address"), handle)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_wasmtime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WASMTIME") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("sh").args(["-c", "command -v wasmtime"]).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

fn start_wasmtime_serve(wasmtime: &Path) -> Option<(Proc, String)> {
    let port = common::grid::free_port();
    let child = Command::new(wasmtime)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "-Scli", "--env", &format!("MODEL={MODEL}")])
        .arg(guests::LOGREG_HTTP)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some((Proc(child), format!("http://127.0.0.1:{port}/")))
}

/// The `Authorization` header every load generator sends (to every server
/// alike: the native and `wasmtime serve` ones ignore it).
fn bearer() -> String {
    format!("Authorization: Bearer {}", common::TOKEN)
}

/// Waits until `url` answers `body` with 200.
fn wait_ready(url: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new("curl")
            .args(["-skf", "-o", "/dev/null", "-H", "content-type: application/json", "-H", &bearer(), "-d", body, url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Under wrk with `connections` open (5 s): requests per second, and the
/// server's CPU time per request in microseconds.
fn saturation(url: &str, pid: u32, connections: u32, body_file: &Path, dir: &Path) -> (f64, f64) {
    let cpu_before = common::cpu_seconds(pid);
    let run = common::load::wrk(url, body_file, common::TOKEN, connections, 5, 0, dir);
    let cpu = common::cpu_seconds(pid) - cpu_before;
    // Calls the gateway sheds past a function's queue (429/503 with
    // `Retry-After`, its overload answer) are not throughput: reported
    // here, and any other failure is caught by `no_failed_calls`.
    let answered = run.requests - run.non_2xx as f64;
    if run.non_2xx > 0 {
        let shed = 100.0 * run.non_2xx as f64 / run.requests.max(1.0);
        println!("  ({url} at {connections} connections: {shed:.1}% of calls shed, not counted)");
    }
    (run.rate * answered / run.requests.max(1.0), cpu * 1e6 / answered.max(1.0))
}

/// Asserts the gateway answered every call it took with 200, or shed it
/// (429 or 503): its `/metrics` counts answers by status.
fn no_failed_calls(gateway: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    let text = rt.block_on(async {
        common::http().get(format!("{gateway}/metrics")).send().await.expect("metrics").text().await.expect("text")
    });
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wasmgrid_requests_total{") && !l.starts_with("wasmgrid_requests_total{tenant=\"-\""))
        .filter(|l| !["status=\"200\"", "status=\"429\"", "status=\"503\""].iter().any(|s| l.contains(s)))
        .collect();
    assert!(failed.is_empty(), "the gateway failed calls under load: {failed:?}");
}

/// (p50, p99) latency in microseconds at `rate` requests per second (hey, 5 s).
fn latency_at(url: &str, body_file: &Path, rate: f64) -> (f64, f64) {
    let (p50, p99, _) = common::load::hey(url, body_file, common::TOKEN, rate, 5);
    (p50, p99)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// A list from the environment (`MODELS=logreg-30,mlp`), or `default`.
fn list(name: &str, default: &[&str]) -> Vec<String> {
    match std::env::var(name) {
        Ok(v) => v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        Err(_) => default.iter().map(|s| s.to_string()).collect(),
    }
}

/// Numbers from the environment (`ROWS=1,10`), or `default`.
fn numbers(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmgrid gateway benchmark ({cores} cores, loopback, servers and load generator share the machine)\n");

    let wanted = list("MODELS", &["logreg-2", "logreg-30", "mlp"]);
    let sklearn = match wanted.iter().any(|w| w.starts_with("onnx-") || w == "sk-logreg") {
        true => sklearn_cases(dir).unwrap_or_default(),
        false => Vec::new(),
    };
    let cases: Vec<Case> = [Case::logreg2(), Case::logreg30(), Case::mlp()]
        .into_iter()
        .chain(sklearn)
        .filter(|c| wanted.iter().any(|w| w == c.name))
        .collect();

    // `--gpu-mode off`: the MLP's layers run on the node's cores (the `gpu`
    // interface's CPU fallback), as the native server's do.
    let dev = common::grid::Dev::start_with(&dir.join("dev"), &["--gpu-mode", "off"]);
    deploy_cases(&dev.control_plane, &cases);
    let gateway = dev.gateway.clone();
    // The same grid over HTTPS (`TLS=off` to leave it out): a second `wasmgrid
    // dev --tls` with its own CA, which this process trusts.
    let tls = (std::env::var("TLS").as_deref() != Ok("off")).then(|| {
        let data = dir.join("dev-tls");
        let dev = common::grid::Dev::start_with(&data, &["--gpu-mode", "off", "--tls"]);
        wasmgrid_api::tls::trust(&data.join("tls/ca.pem")).expect("the dev CA");
        deploy_cases(&dev.control_plane, &cases);
        dev
    });
    // A second node on the first grid, started after the deploys (each
    // placed on one node, `dev`): it holds nothing and forwards every call
    // to `dev` (`FORWARD=off` to leave it out).
    let forwarder = (std::env::var("FORWARD").as_deref() != Ok("off")).then(|| {
        common::grid::Node::start_with(
            &dev.control_plane,
            &dir.join("forwarder"),
            &["--id", "forwarder", "--gpu-mode", "off"],
        )
    });
    let (native, _native_thread) = start_native(&cases);

    let serve = match cases.iter().any(|c| c.name == "logreg-2") {
        true => find_wasmtime().as_deref().and_then(start_wasmtime_serve),
        false => None,
    };
    if serve.is_none() {
        println!("wasmtime serve: skipped (no `wasmtime`; set WASMTIME=path)\n");
    }

    let sizes = numbers("ROWS", &[1, 100]);
    let levels = numbers("CONNECTIONS", &[16, 32, 64]);
    let rounds = numbers("ROUNDS", &[2]).first().copied().unwrap_or(2).max(1);
    let latency_rounds = numbers("LATENCY_ROUNDS", &[3]).first().copied().unwrap_or(3).max(1);
    let mut summary = Vec::new();
    for case in &cases {
        let mut servers: Vec<(&str, String, u32)> = vec![
            ("wasmgrid", format!("{gateway}/v1/fn/default/{}", case.name), dev.pid()),
            ("native (hyper)", format!("http://{native}/{}", case.name), std::process::id()),
        ];
        if let Some(tls) = &tls {
            servers.push((TLS_SERVER, format!("{}/v1/fn/default/{}", tls.gateway, case.name), tls.pid()));
        }
        if let Some(node) = &forwarder {
            servers.push((FORWARDED, format!("{}/v1/fn/default/{}", node.url, case.name), node.pid()));
        }
        if let (Some((proc, url)), "logreg-2") = (&serve, case.name) {
            servers.push(("wasmtime serve", url.clone(), proc.0.id()));
        }
        for (_, url, _) in &servers {
            wait_ready(url, &case.body(1));
        }
        for &rows in &sizes {
            let body_file = dir.join(format!("body-{}-{rows}.json", case.name));
            std::fs::write(&body_file, case.body(rows)).expect("body");
            println!("{}, {rows} row(s) per request:", case.name);
            let line = measure(&servers, &levels, rounds, latency_rounds, &body_file, dir);
            summary.push(format!("{:<10} {rows:>4} row(s): {line}", case.name));
        }
    }
    no_failed_calls(&gateway);
    println!("summary (wasmgrid / native at saturation; wasmgrid p99 - native p99 at half load):");
    for line in summary {
        println!("  {line}");
    }
}

/// Saturation throughput and latency at half load of each server; prints a
/// table and returns a one-line summary.
fn measure(
    servers: &[(&str, String, u32)],
    levels: &[usize],
    rounds: usize,
    latency_rounds: usize,
    body_file: &Path,
    dir: &Path,
) -> String {
    // Saturation: each server's best throughput over the load levels and
    // rounds. The servers take turns at each level, so a slow spell of the
    // machine falls on all of them alike.
    let mut runs = vec![vec![(0.0, 0.0); levels.len()]; servers.len()];
    for _ in 0..rounds {
        for (l, &c) in levels.iter().enumerate() {
            for (i, (_, url, pid)) in servers.iter().enumerate() {
                let run = saturation(url, *pid, c as u32, body_file, dir);
                if run.0 > runs[i][l].0 {
                    runs[i][l] = run;
                }
            }
        }
    }
    let best: Vec<(f64, f64)> =
        runs.iter().map(|r| r.iter().copied().fold((0.0, 0.0), |b, x| if x.0 > b.0 { x } else { b })).collect();
    let throughput: Vec<f64> = best.iter().map(|b| b.0).collect();
    let half = throughput[0] / 2.0;
    // Latency at half load: the servers take turns again, and each server's
    // figures are its medians over the rounds.
    let mut measured = vec![Vec::new(); servers.len()];
    for _ in 0..latency_rounds {
        for (i, (_, url, _)) in servers.iter().enumerate() {
            measured[i].push(latency_at(url, body_file, half));
        }
    }
    let latencies: Vec<(f64, f64)> = measured
        .iter()
        .map(|m| (median(m.iter().map(|l| l.0).collect()), median(m.iter().map(|l| l.1).collect())))
        .collect();
    // wasmgrid's p99 less native's, each round measured back to back.
    let gaps: Vec<f64> = measured[0].iter().zip(&measured[1]).map(|(w, n)| w.1 - n.1).collect();
    let heads: String = levels.iter().map(|c| format!("{:>9}", format!("{c} conn"))).collect();
    println!("  {:<16}{heads} {:>10} {:>14} {:>12} {:>12}", "req/s", "best", "CPU / req", "p50 @ half", "p99 @ half");
    for (i, (name, _, _)) in servers.iter().enumerate() {
        let rates: String = runs[i].iter().map(|(r, _)| format!("{r:>9.0}")).collect();
        let ((t, c), (p50, p99)) = (best[i], latencies[i]);
        println!("  {name:<16}{rates} {t:>10.0} {c:>11.1} µs {p50:>9.0} µs {p99:>9.0} µs");
    }
    println!(
        "  (half load = {half:.0} req/s, half of wasmgrid's saturation throughput; latencies are medians of {latency_rounds} rounds)"
    );
    let ratio = throughput[0] / throughput[1];
    println!("  wasmgrid / native throughput:             {ratio:.2}");
    println!("  native / wasmgrid server CPU per request: {:.2}", best[1].1 / best[0].1);
    let each: Vec<String> = gaps.iter().map(|g| format!("{g:.0}")).collect();
    let gap = median(gaps.clone());
    println!(
        "  wasmgrid p99 - native p99 at half load:   {gap:.0} µs, median of {} rounds ({} µs) (target < 1000)",
        gaps.len(),
        each.join(", ")
    );
    let named = |name: &str| servers.iter().position(|(n, _, _)| *n == name);
    if let Some(i) = named("wasmtime serve") {
        println!("  wasmgrid / wasmtime serve throughput:     {:.2}", throughput[0] / throughput[i]);
    }
    let mut tls = String::new();
    if let Some(i) = named(TLS_SERVER) {
        let (ratio, cpu) = (throughput[i] / throughput[0], best[i].1 - best[0].1);
        let p99 = latencies[i].1 - latencies[0].1;
        println!(
            "  wasmgrid TLS / plain throughput:          {ratio:.2} (CPU/req {cpu:+.1} µs, p99 at half {p99:+.0} µs)"
        );
        tls = format!("; TLS {ratio:.2}x plain, p99 {p99:+.0} µs");
    }
    if let Some(i) = named(FORWARDED) {
        let p99 = latencies[i].1 - latencies[0].1;
        println!(
            "  forwarded / direct throughput:            {:.2} (p99 at half {p99:+.0} µs; CPU/req is the forwarding node's own)",
            throughput[i] / throughput[0]
        );
        tls.push_str(&format!("; forwarded {:.2}x direct, p99 {p99:+.0} µs", throughput[i] / throughput[0]));
    }
    println!();
    format!(
        "{ratio:.2}x native ({:.0} vs {:.0} req/s), CPU/req {:.1} vs {:.1} µs, p99 gap {gap:+.0} µs{tls}",
        throughput[0], throughput[1], best[0].1, best[1].1
    )
}

/// The name of the HTTPS `wasmgrid dev` in the tables.
const TLS_SERVER: &str = "wasmgrid TLS";
/// The name of the node that forwards every call to `dev`'s.
const FORWARDED: &str = "wasmgrid fwd";

/// Uploads and deploys every case's model on the grid at `cp`.
fn deploy_cases(cp: &str, cases: &[Case]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let client = wasmgrid_api::Client::new(&[cp], Duration::from_secs(180))
            .expect("client")
            .with_token(Some(common::TOKEN.into()));
        for case in cases {
            let module = client.upload_module(std::fs::read(case.guest).expect("guest")).await.expect("upload");
            let mut request = wasmgrid_api::DeployRequest {
                module: module.sha256,
                timeout_ms: Some(1000),
                config: [("model".to_string(), case.model.clone())].into_iter().collect(),
                replicas: Some(wasmgrid_api::Replicas::Count(1)),
                ..Default::default()
            };
            if let Some(onnx) = &case.onnx {
                // The model as the version's artifact, in one chunk.
                let bytes = std::fs::read(onnx).expect("onnx");
                let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                let size = bytes.len() as u64;
                client.upload_chunk(&sha256, 0, bytes.into()).await.expect("chunk");
                client.commit_artifact(&sha256, size).await.expect("commit");
                request.config = [("features".to_string(), case.model.clone())].into_iter().collect();
                request.artifacts = [("model".to_string(), sha256)].into_iter().collect();
                request.memory = Some(512 << 20);
                // A forest of 100 rows takes tens of milliseconds in tract.
                request.timeout_ms = Some(10_000);
            }
            client.deploy(case.name, &request).await.expect("deploy");
        }
    });
}
