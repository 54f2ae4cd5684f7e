//! The node's gateway end to end: a real control plane and node process,
//! calls over HTTP in JSON and Arrow, every error status, versions rolling
//! under load, metrics.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use common::grid::{Node, Replicas};
use wasmgrid_api::{Client, DeployRequest, InvokeResponse};
use wasmgrid_test_artifacts as guests;

const MODEL: &str = r#"{"features": ["amount", "foreign"], "weights": [0.01, 2.0], "bias": -3.0}"#;

async fn deploy(client: &Client, name: &str, wasm: &str, timeout_ms: u64, config: &[(&str, &str)]) -> u64 {
    let module = client.upload_module(std::fs::read(wasm).expect("wasm")).await.expect("upload").sha256;
    let request = DeployRequest {
        module,
        timeout_ms: Some(timeout_ms),
        memory: Some(32 << 20),
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ..DeployRequest::default()
    };
    client.deploy(name, &request).await.expect("deploy").active
}

/// Waits until the node serves `name` at `version`.
async fn served(http: &reqwest::Client, node: &Node, name: &str, version: u64) {
    served_at(http, &node.url, name, version).await
}

/// Waits until the gateway at `base` serves `name` at `version`.
async fn served_at(http: &reqwest::Client, base: &str, name: &str, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/v1/routes")).send().await
            && let Ok(table) = r.json::<wasmgrid_api::RouteTable>().await
            && table.routes.iter().any(|r| r.name == name && r.version == version)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} v{version} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn transactions(n: usize) -> (Vec<f64>, Vec<i64>) {
    let mut rng = common::Rng::new(11);
    let amounts = (0..n).map(|_| (rng.unit() * 50_000.0).round() / 100.0).collect();
    let foreign = (0..n).map(|_| i64::from(rng.below(5) == 0)).collect();
    (amounts, foreign)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_arrow_calls_score_exactly_like_wasmgrid_run() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let client = replicas.client(1);
    let version = deploy(&client, "fraud", guests::LOGREG, 1000, &[("model", MODEL)]).await;
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    let http = common::http();
    served(&http, &node, "fraud", version).await;

    // The reference: `wasmgrid run` over the same rows as CSV.
    let (amounts, foreign) = transactions(200);
    let dir = replicas.dir.path();
    let mut csv = String::from("amount,foreign\n");
    for (a, f) in amounts.iter().zip(&foreign) {
        csv.push_str(&format!("{a},{f}\n"));
    }
    std::fs::write(dir.join("rows.csv"), csv).expect("csv");
    let out = dir.join("run-out");
    common::ok(common::run_in(
        &dir.join("cache"),
        &[
            "run",
            guests::LOGREG,
            "--input",
            &dir.join("rows.csv").display().to_string(),
            "--output",
            &out.display().to_string(),
            "--config",
            &format!("model={MODEL}"),
        ],
    ));
    let reference: Vec<f64> = std::fs::read_to_string(out.join("part-00000.jsonl"))
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("row")["score"].as_f64().expect("score"))
        .collect();
    assert_eq!(reference.len(), 200);

    // JSON rows.
    let rows: Vec<serde_json::Value> =
        amounts.iter().zip(&foreign).map(|(a, f)| serde_json::json!({"amount": a, "foreign": f})).collect();
    let url = format!("{}/v1/fn/default/fraud", node.url);
    let response = http.post(&url).json(&serde_json::json!({ "rows": rows })).send().await.expect("call");
    assert_eq!(response.status(), 200);
    let body: InvokeResponse = response.json().await.expect("json");
    let scores: Vec<f64> = body.rows.iter().map(|r| r["score"].as_f64().expect("score")).collect();
    assert_eq!(scores, reference, "JSON scores equal `wasmgrid run`'s");

    // The same call over HTTP/2 (h2c, prior knowledge).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .default_headers(common::auth_headers())
        .build()
        .expect("h2 client");
    let response = h2.post(&url).json(&serde_json::json!({ "rows": rows })).send().await.expect("h2 call");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let body: InvokeResponse = response.json().await.expect("json");
    assert_eq!(body.rows.iter().map(|r| r["score"].as_f64().expect("score")).collect::<Vec<_>>(), reference);

    // One row object.
    let one = http.post(&url).json(&rows[7]).send().await.expect("call").json::<InvokeResponse>().await.expect("json");
    assert_eq!(one.rows.len(), 1);
    assert_eq!(one.rows[0]["score"].as_f64(), Some(reference[7]));

    // An Arrow IPC stream, answered in kind.
    let batch = RecordBatch::try_from_iter([
        ("amount", Arc::new(Float64Array::from(amounts.clone())) as ArrayRef),
        ("foreign", Arc::new(Int64Array::from(foreign.clone())) as ArrayRef),
    ])
    .expect("batch");
    let mut ipc = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).expect("writer");
    ipc.write(&batch).expect("write");
    let ipc = ipc.into_inner().expect("finish");
    let response = http
        .post(&url)
        .header("content-type", "application/vnd.apache.arrow.stream")
        .body(ipc)
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/vnd.apache.arrow.stream");
    assert_eq!(response.headers()["x-wasmgrid-version"], version.to_string().as_str());
    let bytes = response.bytes().await.expect("body");
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None).expect("ipc");
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("batches");
    let scored = &batches[0];
    assert_eq!(scored.num_columns(), 3);
    let column = scored.column_by_name("score").expect("score column");
    let column = column.as_any().downcast_ref::<Float64Array>().expect("f64");
    assert_eq!(column.values().to_vec(), reference, "Arrow scores equal `wasmgrid run`'s");
    assert_eq!(column.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_is_provoked_and_answered_in_json() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let client = replicas.client(1);
    let v = deploy(&client, "fraud", guests::LOGREG, 1000, &[("model", MODEL)]).await;
    deploy(&client, "spin", guests::HOSTILE_SCORER, 600, &[("mode", "loop")]).await;
    deploy(&client, "crash", guests::HOSTILE_SCORER, 600, &[("mode", "trap"), ("message", "sensor 7 is on fire")])
        .await;
    deploy(&client, "words", guests::WORDCOUNT_MAP, 600, &[]).await;
    let flags = ["--max-body", "4KiB", "--max-concurrency", "1", "--max-queue", "1", "--queue-timeout", "150ms"];
    let node = Node::start_with(&replicas.urls(), &replicas.dir.path().join("node"), &flags);
    let http = common::http();
    served(&http, &node, "fraud", v).await;
    served(&http, &node, "words", 1).await;
    let url = |name: &str| format!("{}/v1/fn/default/{name}", node.url);
    let row = serde_json::json!({"rows": [{"amount": 1.0, "foreign": 0}]});

    async fn answer(r: reqwest::Response) -> (u16, Option<String>, String, String) {
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body: serde_json::Value = r.json().await.expect("a JSON body");
        let code = body["error"]["code"].as_str().unwrap_or("").to_string();
        let message = body["error"]["message"].as_str().unwrap_or("").to_string();
        (status, retry, code, message)
    }

    // 413: a body over --max-body.
    let big = serde_json::json!({"rows": [{"note": "x".repeat(8 << 10)}]});
    let (s, _, code, _) = answer(http.post(url("fraud")).json(&big).send().await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (413, "too_large"));
    // 400: malformed JSON; a function that is not a scorer.
    let r = http.post(url("fraud")).header("content-type", "application/json").body("{\"rows\": [").send();
    let (s, _, _, m) = answer(r.await.expect("answer")).await;
    assert!(s == 400 && m.contains("malformed JSON"), "{s} {m}");
    let (s, _, code, _) = answer(http.post(url("words")).json(&row).send().await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (400, "wrong_kind"));
    // 404: unknown function.
    let (s, _, _, m) = answer(http.post(url("nope")).json(&row).send().await.expect("answer")).await;
    assert!(s == 404 && m.contains("nope"), "{s} {m}");
    // 500 with the guest's message.
    let (s, _, code, m) = answer(http.post(url("crash")).json(&row).send().await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (500, "trap"));
    assert!(m.contains("sensor 7 is on fire"), "{m}");

    // 504, 503 and 429: one call holds the only slot until its 600 ms
    // timeout, a second waits in the queue and gives up after 150 ms, a
    // third finds the queue full. Which call gets which depends on arrival
    // order; the three answers do not.
    let first = tokio::spawn(http.post(url("spin")).json(&row).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(http.post(url("spin")).json(&row).send());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let third = answer(http.post(url("spin")).json(&row).send().await.expect("answer")).await;
    let second = answer(second.await.expect("task").expect("answer")).await;
    let first = answer(first.await.expect("task").expect("answer")).await;
    let mut statuses = vec![first.0, second.0, third.0];
    statuses.sort();
    assert_eq!(statuses, [429, 503, 504], "{first:?} {second:?} {third:?}");
    for a in [&first, &second, &third] {
        match a.0 {
            504 => assert_eq!((a.2.as_str(), a.1.as_deref()), ("timeout", None)),
            _ => assert_eq!((a.2.as_str(), a.1.as_deref()), ("overloaded", Some("1")), "{a:?}"),
        }
    }

    // A caller that hangs up while queued gives its place back: with the
    // slot held again, the next call queues (and times out, 503) rather
    // than finding the one-place queue still taken (429).
    let holder = tokio::spawn(http.post(url("spin")).json(&row).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quitter = http.post(url("spin")).json(&row).timeout(Duration::from_millis(50)).send().await;
    assert!(quitter.as_ref().is_err_and(reqwest::Error::is_timeout), "{quitter:?}");
    assert_eq!(answer(holder.await.expect("task").expect("answer")).await.0, 504);
    let holder = tokio::spawn(http.post(url("spin")).json(&row).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, _, code, m) = answer(http.post(url("spin")).json(&row).send().await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (503, "overloaded"), "{m}");
    assert_eq!(answer(holder.await.expect("task").expect("answer")).await.0, 504);

    // Nothing above slowed or broke the healthy function.
    let ok = http.post(url("fraud")).json(&row).send().await.expect("answer");
    assert_eq!(ok.status(), 200);

    // Metrics count all of it.
    let metrics = http.get(format!("{}/metrics", node.url)).send().await.expect("metrics").text().await.expect("text");
    for want in [
        r#"wasmgrid_requests_total{tenant="default",function="spin",status="504"} 3"#,
        r#"wasmgrid_requests_total{tenant="default",function="spin",status="429"} 1"#,
        r#"wasmgrid_requests_total{tenant="default",function="fraud",status="413"} 1"#,
        r#"wasmgrid_errors_total{tenant="default",function="crash",kind="trap"} 1"#,
        r#"wasmgrid_request_duration_seconds_count{tenant="default",function="fraud"} 3"#,
        r#"wasmgrid_inflight{tenant="default",function="spin"} 0"#,
    ] {
        assert!(metrics.contains(want), "metrics lack {want}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_versions_under_load_loses_no_call_and_mixes_no_versions() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let client = replicas.client(1);
    let model = |w: f64| format!(r#"{{"features": ["amount"], "weights": [{w}], "bias": 0}}"#);
    let weights = [0.5, -0.5, 2.0];
    deploy(&client, "fraud", guests::LOGREG, 1000, &[("model", &model(weights[0]))]).await;
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    let http = common::http();
    served(&http, &node, "fraud", 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..4 {
        let (stop, http, url) = (stop.clone(), http.clone(), format!("{}/v1/fn/default/fraud", node.url));
        callers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let rows: Vec<_> =
                    (0..16).map(|r| serde_json::json!({"amount": (c * 1000 + i * 16 + r) as f64 * 1e-3})).collect();
                let r = http.post(&url).json(&serde_json::json!({ "rows": rows })).send().await.expect("answered");
                assert_eq!(r.status(), 200, "a call failed during the roll: {:?}", r.text().await);
                answers.push(r.json::<InvokeResponse>().await.expect("json"));
                i += 1;
            }
            answers
        }));
    }
    // Each version is served for a while under load before the next: a new
    // config is a new `init` image, compiled while the old version serves.
    tokio::time::sleep(Duration::from_millis(200)).await;
    deploy(&client, "fraud", guests::LOGREG, 1000, &[("model", &model(weights[1]))]).await;
    served(&http, &node, "fraud", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    deploy(&client, "fraud", guests::LOGREG, 1000, &[("model", &model(weights[2]))]).await;
    served(&http, &node, "fraud", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.rollback("fraud", 1).await.expect("rollback");
    served(&http, &node, "fraud", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut seen = std::collections::BTreeSet::new();
    let mut calls = 0;
    for c in callers {
        for answer in c.await.expect("caller") {
            let w = weights[answer.version as usize - 1];
            for row in &answer.rows {
                let x = row["amount"].as_f64().expect("amount");
                let want = 1.0 / (1.0 + (-w * x).exp());
                assert!((row["score"].as_f64().expect("score") - want).abs() < 1e-12, "mixed versions");
            }
            seen.insert(answer.version);
            calls += 1;
        }
    }
    println!("{calls} calls, versions served: {seen:?}");
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2, 3], "every version served over {calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_wasi_http_component_answers_through_the_gateway() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let client = replicas.client(1);
    let module = client.upload_module(std::fs::read(guests::HTTP_HELLO).expect("wasm")).await.expect("upload");
    assert_eq!(module.kind, "http");
    let request = DeployRequest { module: module.sha256, timeout_ms: Some(300), ..DeployRequest::default() };
    let v = client.deploy("hello", &request).await.expect("deploy").active;
    deploy(&client, "fraud", guests::LOGREG, 1000, &[("model", MODEL)]).await;
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    let http = common::http();
    served(&http, &node, "hello", v).await;
    served(&http, &node, "fraud", 1).await;
    let base = format!("{}/v1/http/default/hello", node.url);

    // The component sees the path below the function's prefix, and the body.
    let r = http.post(format!("{base}/orders/7?expand=1")).body("abc").send().await.expect("answer");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["x-wasmgrid-version"], "1");
    assert_eq!(r.text().await.expect("body"), "POST /orders/7?expand=1: 3 bytes");
    let r = http.get(&base).send().await.expect("answer");
    assert_eq!(r.text().await.expect("body"), "GET /: 0 bytes");

    async fn error(r: reqwest::Response) -> (u16, String, String) {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.expect("a JSON error");
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").into(),
            body["error"]["message"].as_str().unwrap_or("").into(),
        )
    }
    // A handler that loops is stopped at its timeout; one that panics is a 500 with its message.
    let (s, code, _) = error(http.get(format!("{base}/spin")).send().await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (504, "timeout"));
    let (s, code, m) = error(http.get(format!("{base}/panic")).send().await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (500, "trap"));
    assert!(m.contains("the handler was asked to panic"), "{m}");
    // Each kind of function at its own endpoint.
    let (s, code, _) = error(
        http.post(format!("{}/v1/fn/default/hello", node.url))
            .json(&serde_json::json!({"x": 1}))
            .send()
            .await
            .expect("a"),
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "wrong_kind"));
    let (s, code, _) = error(http.get(format!("{}/v1/http/default/fraud/", node.url)).send().await.expect("a")).await;
    assert_eq!((s, code.as_str()), (400, "wrong_kind"));
    // And the node still serves.
    let r = http.get(format!("{base}/again")).send().await.expect("answer");
    assert_eq!(r.text().await.expect("body"), "GET /again: 0 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phones_script_drives_fall_detect_and_every_fall_is_flagged() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    // The phones hold a token that can call functions and nothing else.
    let request = wasmgrid_api::TokenRequest { tenant: Some("default".into()), role: wasmgrid_api::Role::InvokeOnly };
    let phones = replicas.client(1).create_token(&request).await.expect("token").token;
    let v = deploy(&replicas.client(1), "fall-detect", guests::FALL_DETECT, 1000, &[]).await;
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    let http = common::http();
    served(&http, &node, "fall-detect", v).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/phones.py");
    let url = node.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .env("WASMGRID_TOKEN", phones)
            .args(["--gateway", &url, "--phones", "20", "--rate", "10", "--seconds", "2", "--falls", "0.1", "--json"])
            .output()
    })
    .await
    .expect("task")
    .expect("python3 runs");
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    let calls = summary["calls"].as_u64().expect("calls");
    assert!(calls > 50, "{summary}");
    assert_eq!(summary["statuses"]["200"].as_u64(), Some(calls), "every window answered: {summary}");
    assert!(summary["falls_sent"].as_u64() > Some(0), "{summary}");
    assert_eq!(summary["falls_flagged"], summary["falls_sent"], "{summary}");
    assert_eq!(summary["false_alarms"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_waits_for_calls_in_flight_and_a_second_signal_quits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dev = common::grid::Dev::start(&dir.path().join("dev"));
    let client = Client::new(&[dev.control_plane.as_str()], Duration::from_secs(30))
        .expect("client")
        .with_token(Some(common::TOKEN.into()));
    let http = common::http();
    let v = deploy(&client, "fraud", guests::LOGREG, 1000, &[("model", MODEL)]).await;
    let spin = deploy(&client, "spin", guests::HOSTILE_SCORER, 60_000, &[("mode", "loop")]).await;
    served_at(&http, &dev.gateway, "fraud", v).await;
    served_at(&http, &dev.gateway, "spin", spin).await;
    let url = |name: &str| format!("{}/v1/fn/default/{name}", dev.gateway);
    let row = serde_json::json!({"rows": [{"amount": 1.0, "foreign": 0}]});

    // A short call finishes before the signal; a guest that loops for up to
    // a minute is in flight when it comes.
    let r = http.post(url("fraud")).json(&row).send().await.expect("answer");
    assert_eq!(r.status(), 200);
    let stuck = tokio::spawn(http.post(url("spin")).json(&row).send());
    let metrics = format!("{}/metrics", dev.gateway);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = http.get(&metrics).send().await.expect("metrics").text().await.expect("text");
        if text.contains(r#"wasmgrid_inflight{tenant="default",function="spin"} 1"#) {
            break;
        }
        assert!(Instant::now() < deadline, "the looping call never started:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: it stops taking calls but waits for the one in flight.
    dev.signal("TERM");
    let waited = tokio::task::block_in_place(|| dev.exited_within(Duration::from_secs(2)));
    assert!(waited.is_none(), "it quit with a call in flight: {waited:?}");
    // A second signal ends it at once, with a failing status.
    dev.signal("INT");
    let status = tokio::task::block_in_place(|| dev.exited_within(Duration::from_secs(10)));
    let status = status.expect("a second signal ends the process");
    assert_eq!(status.code(), Some(1), "{status:?}");
    // The caller of the abandoned call sees its connection close, not a hang.
    let outcome = tokio::time::timeout(Duration::from_secs(10), stuck).await.expect("the caller is not left hanging");
    assert!(outcome.expect("task").is_err(), "the abandoned call got no answer");
}
