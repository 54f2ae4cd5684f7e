//! The `gpu` interface end to end: the `mlp-score` example through
//! `wasmgrid run`, per request and as a batch job, on wgpu (Mesa's lavapipe
//! where there is no GPU) and on the CPU fallback; and GPU placement.

mod common;

use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use serde_json::{Value, json};
use wasmgrid_test_artifacts as guests;

const FEATURES: [&str; 3] = ["a", "b", "c"];
/// The tolerance the CPU fallback promises against the GPU path.
const TOLERANCE: f64 = 1e-4;

/// A 3-16-8-1 model (relu, tanh, sigmoid) with deterministic weights.
fn model() -> Value {
    let mut rng = common::Rng::new(7);
    let mut layer = |inputs: usize, outputs: usize, activation: &str| {
        let weights: Vec<Vec<f64>> =
            (0..inputs).map(|_| (0..outputs).map(|_| rng.unit() * 2.0 - 1.0).collect()).collect();
        let bias: Vec<f64> = (0..outputs).map(|_| rng.unit() - 0.5).collect();
        json!({"weights": weights, "bias": bias, "activation": activation})
    };
    let layers = vec![layer(3, 16, "relu"), layer(16, 8, "tanh"), layer(8, 1, "sigmoid")];
    json!({"features": FEATURES, "layers": layers})
}

fn rows(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = common::Rng::new(seed);
    (0..n)
        .map(
            |i| json!({"id": i, "a": rng.unit() * 4.0 - 2.0, "b": rng.unit() * 4.0 - 2.0, "c": rng.unit() * 4.0 - 2.0}),
        )
        .collect()
}

fn assert_scores(what: &str, got: &[(u64, f64)], model: &Value, rows: &[Value]) {
    assert_eq!(got.len(), rows.len(), "{what}: one score per row");
    for (id, score) in got {
        let want = common::mlp_forward(model, &rows[*id as usize]);
        assert!(
            (score - want).abs() <= TOLERANCE * want.abs().max(1.0),
            "{what}: row {id}: {score} vs reference {want}"
        );
    }
}

/// Whether this machine has a wgpu adapter for `--gpu-mode any`; CI
/// (`WASMGRID_REQUIRE_GPU`) insists on one.
fn gpu_present(stderr: &str) -> bool {
    let present = stderr.contains("gpu calls run on wgpu");
    assert!(
        present || std::env::var_os("WASMGRID_REQUIRE_GPU").is_none(),
        "WASMGRID_REQUIRE_GPU is set but the run found no wgpu adapter:\n{stderr}"
    );
    present
}

#[test]
fn mlp_score_run_gives_the_same_scores_on_the_gpu_and_the_cpu_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = model();
    let rows = rows(700, 1);
    let input = dir.path().join("rows.jsonl");
    common::write_jsonl(&input, &rows);
    let config = format!("model={model}");
    let mut outputs = Vec::new();
    for mode in ["any", "off"] {
        let out = dir.path().join(format!("out-{mode}"));
        let args =
            ["run", guests::MLP_SCORE, "--input", &input.display().to_string(), "--output", &out.display().to_string()];
        let stderr = common::ok(
            common::wasmgrid()
                .env("WASMGRID_CACHE_DIR", dir.path().join("cache"))
                .env("WASMGRID_GPU", mode)
                .args(args)
                .args(["--config", &config, "--batch-rows", "256"])
                .output()
                .expect("wasmgrid runs"),
        );
        if mode == "off" {
            assert!(stderr.contains("mlp-score on cpu (cpu)"), "the fallback served the calls:\n{stderr}");
        } else if gpu_present(&stderr) {
            assert!(stderr.contains("(vulkan)"), "wgpu served the calls:\n{stderr}");
        }
        let scores = common::scores_in(&out);
        assert_scores(&format!("run --gpu-mode {mode}"), &scores, &model, &rows);
        outputs.push(scores);
    }
    for ((id, g), (_, c)) in outputs[0].iter().zip(&outputs[1]) {
        assert!((g - c).abs() <= TOLERANCE * c.abs().max(1.0), "row {id}: gpu {g} vs cpu {c}");
    }
}

async fn wait_gpu_node(urls: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: Value = serde_json::from_str(&common::grid_ok(urls, &["nodes", "ls", "--json"])).expect("json");
        let gpus = list["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["state"] == "alive" && n["gpu"].is_string())
            .count();
        if gpus >= want {
            return;
        }
        assert!(Instant::now() < deadline, "no GPU node showed up: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_rows(url: &str, rows: &[Value]) -> (u16, Value) {
    let response = common::http().post(url).json(&json!({ "rows": rows })).send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

fn scores_of(body: &Value) -> Vec<(u64, f64)> {
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["id"].as_u64().expect("id"), r["score"].as_f64().expect("score")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_placement_per_request_and_in_a_batch_job() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let model = model();
    let config = format!("model={model}");
    let cpu = Node::start_with(&urls, &dir.join("node-cpu"), &["--gpu-mode", "off", "--id", "cpu"]);

    // With no GPU node alive, a function that requires one is refused.
    let deploy = ["deploy", "mlp", guests::MLP_SCORE, "--config", &config, "--gpu", "required"];
    let stderr = common::fails(common::grid_cli(&urls, &deploy));
    assert!(stderr.contains("requires a GPU, and no live node has one"), "{stderr}");
    let bad = common::grid_cli(&urls, &["deploy", "mlp", guests::MLP_SCORE, "--gpu", "sometimes"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a GPU placement"));

    let gpu = Node::start_with(&urls, &dir.join("node-gpu"), &["--gpu-mode", "any", "--id", "gpu"]);
    let gpu_log = dir.join("node-gpu.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let has_adapter = loop {
        let log = std::fs::read_to_string(&gpu_log).unwrap_or_default();
        if log.contains("gpu calls run on wgpu") || log.contains("CPU fallback") {
            break gpu_present(&log);
        }
        assert!(Instant::now() < deadline, "the node did not say what serves gpu calls:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !has_adapter {
        eprintln!("no wgpu adapter on this machine: placement on GPU nodes not tested");
        return;
    }
    wait_gpu_node(&urls, 1).await;
    common::grid_ok(&urls, &deploy);
    common::grid_ok(&urls, &["deploy", "mlp-anywhere", guests::MLP_SCORE, "--config", &config]);
    let versions: Value =
        serde_json::from_str(&common::grid_ok(&urls, &["functions", "versions", "mlp", "--json"])).expect("json");
    assert_eq!(versions["versions"][0]["gpu"], "required");

    // A batch job of the required function: every task on the GPU node.
    let rows = rows(2_000, 2);
    let input = dir.join("input");
    std::fs::create_dir_all(&input).expect("input dir");
    for (i, chunk) in rows.chunks(250).enumerate() {
        common::write_jsonl(&input.join(format!("rows-{i}.jsonl")), chunk);
    }
    let out = dir.join("scored");
    let submit = [
        "job",
        "submit",
        "mlp",
        "--input",
        &input.display().to_string(),
        "--output",
        &out.display().to_string(),
        "--wait",
    ];
    common::grid_ok(&urls, &submit);
    let batch = common::scores_in(&out);
    assert_scores("batch job", &batch, &model, &rows);
    let jobs: Value = serde_json::from_str(&common::grid_ok(&urls, &["job", "ls", "--json"])).expect("json");
    let gpu_ms = jobs["jobs"][0]["gpu_ms"].as_u64().expect("gpu_ms");
    assert!(gpu_ms > 0, "the job's gpu time is accounted: {jobs}");
    let status = common::grid_ok(&urls, &["job", "status", jobs["jobs"][0]["id"].as_str().expect("id")]);
    assert!(status.contains(&format!(", {gpu_ms} ms in gpu calls")), "{status}");
    let cpu_log = std::fs::read_to_string(dir.join("node-cpu.log")).unwrap_or_default();
    assert!(!cpu_log.contains("mlp-score on"), "a required task ran on the CPU node:\n{cpu_log}");
    let gpu_text = std::fs::read_to_string(&gpu_log).unwrap_or_default();
    assert!(gpu_text.contains("mlp-score on") && gpu_text.contains("(vulkan)"), "the tasks ran on wgpu:\n{gpu_text}");

    // Per request: the GPU node serves it, the CPU node says why it cannot.
    let sample = &rows[..100];
    let wait_served = |node: &Node, name: &str| format!("{}/v1/fn/default/{name}", node.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    let on_gpu = loop {
        let (status, body) = post_rows(&wait_served(&gpu, "mlp"), sample).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "the GPU node never served mlp: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_scores("per request on the GPU node", &scores_of(&on_gpu), &model, sample);
    // The CPU node does not hold it (it is placed on the GPU node only):
    // it forwards the call there, and the answer is the GPU node's.
    let (status, body) = post_rows(&wait_served(&cpu, "mlp"), sample).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(scores_of(&body), scores_of(&on_gpu), "the CPU node relays the GPU node's answer");
    let forwarded =
        common::node_metric(&cpu.url, "wasmgrid_forwarded_calls_total{tenant=\"default\",function=\"mlp\"} ").await;
    assert_eq!(forwarded, 1.0);
    let placed: Value = serde_json::from_str(&common::grid_ok(&urls, &["functions", "ls", "--json"])).expect("json");
    let mlp = placed["functions"].as_array().expect("functions").iter().find(|f| f["name"] == "mlp").expect("mlp");
    assert_eq!(mlp["nodes"], json!(["gpu"]), "{placed}");
    // A wasi:http component that requires a GPU is forwarded alike.
    common::grid_ok(&urls, &["deploy", "hello-gpu", guests::HTTP_HELLO, "--gpu", "required"]);
    let hello = format!("{}/v1/http/default/hello-gpu/", cpu.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let response = common::http().get(&hello).send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        // 404 until the CPU node has the route.
        if status != 404 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200, "the GPU node answered through the CPU node");

    // The same model without the requirement runs on the CPU fallback and
    // agrees with the GPU node, row by row, and with the batch job.
    let (status, body) = post_rows(&wait_served(&cpu, "mlp-anywhere"), sample).await;
    assert_eq!(status, 200, "{body}");
    let on_cpu = scores_of(&body);
    for (((id, g), (_, c)), (_, b)) in scores_of(&on_gpu).iter().zip(&on_cpu).zip(&batch) {
        assert!((g - c).abs() <= TOLERANCE * c.abs().max(1.0), "row {id}: gpu {g} vs cpu {c}");
        assert!((g - b).abs() <= TOLERANCE * b.abs().max(1.0), "row {id}: per request {g} vs batch {b}");
    }
    let metrics =
        common::http().get(format!("{}/metrics", gpu.url)).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("wasmgrid_gpu_seconds_total{tenant=\"default\",function=\"mlp\"}"), "{metrics}");

    // The GPU node dies: with no GPU node left the function is placed
    // nowhere (every node takes it), and the CPU node says why it cannot run it.
    let mut gpu = gpu;
    gpu.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = post_rows(&wait_served(&cpu, "mlp"), sample).await;
        if status == 503 && body["error"]["code"] == "no_gpu" {
            break body;
        }
        assert!(Instant::now() < deadline, "the CPU node never refused mlp once the GPU node died: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("requires a GPU"), "{body}");
}

/// A tenant with a GPU quota: once its calls used it, their `gpu` calls are
/// refused with a message naming the quota (the function's error); raising
/// the quota lets them run again. Runs on the CPU fallback, whose time
/// counts alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_gpu_quota_gets_its_gpu_calls_refused() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    common::grid_ok(&urls, &["tenants", "create", "g", "--gpu-ms", "5"]);
    let config = format!("model={}", model());
    let deploy = ["deploy", "mlp", guests::MLP_SCORE, "--config", &config, "--tenant", "g"];
    common::grid_ok(&urls, &deploy);
    let node = Node::start_with(&urls, &replicas.dir.path().join("node"), &["--gpu-mode", "off"]);
    let url = format!("{}/v1/fn/g/mlp", node.url);
    let sample = rows(2_000, 3);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut served = 0;
    let refused = loop {
        // The node may not listen or serve yet.
        let answered = common::http().post(&url).json(&json!({ "rows": sample })).send().await;
        if let Ok(response) = answered {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            match status {
                200 => served += 1,
                422 => break body,
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "the quota never took effect after {served} calls");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(served > 0, "calls ran until the quota was used");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("tenant `g` has used its `gpu_ms` quota of 5 ms"), "{refused}");
    let usage: Value =
        serde_json::from_str(&common::grid_ok(&urls, &["usage", "--tenant", "g", "--json"])).expect("usage json");
    assert!(usage["functions"][0]["gpu_us"].as_u64() >= Some(5_000), "{usage}");

    common::grid_ok(&urls, &["tenants", "set", "g", "--gpu-ms", "none"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while post_rows(&url, &sample[..10]).await.0 != 200 {
        assert!(Instant::now() < deadline, "lifting the quota never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
