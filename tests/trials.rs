//! Shadow, canary and promote end to end: a real control plane and node
//! process, the CLI, calls over HTTP under steady traffic, and the diff
//! the grid reports against one computed here from the two models.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use serde_json::{Value, json};
use wasmgrid_api::{TrialMode, TrialReport, TrialSpec, route_hash};
use wasmgrid_test_artifacts as guests;

const FEATURES: [&str; 6] = ["f0", "f1", "f2", "f3", "f4", "f5"];
const V1: [f64; 6] = [0.8, -1.2, 0.5, 2.0, -0.7, 1.1];
const V2: [f64; 6] = [0.9, -1.0, 0.2, 2.3, -0.9, 0.8];
const BIAS: f64 = 0.1;

fn model(weights: &[f64; 6]) -> String {
    json!({ "features": FEATURES, "weights": weights, "bias": BIAS }).to_string()
}

/// The score the logreg guest computes, in the same order.
fn score(weights: &[f64; 6], row: &Value) -> f64 {
    let mut z = BIAS;
    for (name, w) in FEATURES.iter().zip(weights) {
        z += w * row[name].as_f64().expect("feature");
    }
    1.0 / (1.0 + (-z).exp())
}

fn rows(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = common::Rng::new(seed);
    (0..n)
        .map(|i| {
            let mut row = serde_json::Map::new();
            row.insert("id".into(), json!(i));
            for name in FEATURES {
                row.insert(name.into(), json!((rng.unit() * 2.0 - 1.0) * 0.8));
            }
            Value::Object(row)
        })
        .collect()
}

/// Calls `fraud` with `rows` (and routing key `key`): the version that
/// answered, and each row's score; an error for any status but 200.
async fn call(
    http: &reqwest::Client,
    node: &str,
    rows: &[Value],
    key: Option<&str>,
) -> Result<(u64, Vec<f64>), String> {
    let mut request = http.post(format!("{node}/v1/fn/default/fraud")).json(&json!({ "rows": rows }));
    if let Some(key) = key {
        request = request.header(wasmgrid_api::ROUTE_KEY_HEADER, key);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let header: u64 =
        response.headers()[wasmgrid_api::VERSION_HEADER].to_str().ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    assert_eq!(body["version"].as_u64(), Some(header), "the header names the version that answered");
    let scores = body["rows"].as_array().expect("rows").iter().map(|r| r["score"].as_f64().expect("score")).collect();
    Ok((header, scores))
}

/// Steady traffic from `tasks` callers, each sending `row` until stopped:
/// every answer's version (checked against that version's model) and any
/// failure.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, Vec<String>)>>,
}

impl Traffic {
    fn start(node: &str, row: &Value, tasks: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..tasks)
            .map(|_| {
                let (stop, node, row) = (stop.clone(), node.to_string(), row.clone());
                tokio::spawn(async move {
                    let http = common::http();
                    let (mut versions, mut failures) = (Vec::new(), Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match call(&http, &node, std::slice::from_ref(&row), None).await {
                            Ok((version, scores)) => {
                                let weights = if version == 1 { &V1 } else { &V2 };
                                assert!(
                                    (scores[0] - score(weights, &row)).abs() < 1e-12,
                                    "v{version} scored {scores:?}"
                                );
                                versions.push(version);
                            }
                            Err(e) => failures.push(e),
                        }
                    }
                    (versions, failures)
                })
            })
            .collect();
        Traffic { stop, tasks }
    }

    /// Stops it: every answer's version, in order per caller, and failures.
    async fn stop(self) -> (Vec<Vec<u64>>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut versions, mut failures) = (Vec::new(), Vec::new());
        for task in self.tasks {
            let (v, f) = task.await.expect("caller");
            versions.push(v);
            failures.extend(f);
        }
        (versions, failures)
    }
}

/// Waits until the node serves `fraud` at `active` with `candidate` (a
/// version in a mode) ready beside it, or alone for `None`.
async fn serving(node: &str, active: u64, candidate: Option<(u64, TrialMode)>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table: Option<wasmgrid_api::RouteTable> = match common::http().get(format!("{node}/v1/routes")).send().await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let route = table.and_then(|t| t.routes.into_iter().find(|r| r.name == "fraud"));
        let now = route.map(|r| (r.version, r.candidate.map(|c| (c.route.version, c.trial.mode))));
        if now == Some((active, candidate)) {
            return;
        }
        assert!(Instant::now() < deadline, "the node serves {now:?}, not v{active} with {candidate:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn diff(urls: &str) -> TrialReport {
    serde_json::from_str(&common::grid_ok(urls, &["functions", "diff", "fraud", "--json"])).expect("diff json")
}

/// The diff once the nodes' reports stop changing (they come with the
/// heartbeats, every second).
async fn settled_diff(urls: &str) -> TrialReport {
    let mut last = diff(urls);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = diff(urls);
        if (now.rows, now.active.calls, now.candidate.calls) != (last.rows, last.active.calls, last.candidate.calls) {
            since = Instant::now();
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_sees_live_traffic_unseen_a_canary_takes_its_share_and_promote_drops_no_call() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let node = Node::start(&urls, &dir.join("node"));
    let deploy = |weights: &[f64; 6], extra: &[&str]| {
        let config = format!("model={}", model(weights));
        common::grid_ok(&urls, &[&["deploy", "fraud", guests::LOGREG, "-c", &config][..], extra].concat())
    };

    // A shadow needs an active version to stand beside.
    let first =
        common::fails(common::grid_cli(&urls, &["deploy", "fraud", guests::LOGREG, "--shadow", "-c", "model={}"]));
    assert!(first.contains("no active version for a shadow to run beside"), "{first}");
    deploy(&V1, &[]);
    serving(&node.url, 1, None).await;
    // Only scorers take per-request calls to copy or share.
    common::grid_ok(&urls, &["deploy", "wc", guests::WORDCOUNT_MAP]);
    let mapper = common::fails(common::grid_cli(&urls, &["deploy", "wc", guests::WORDCOUNT_MAP, "--canary", "5%"]));
    assert!(mapper.contains("only scorers run as a shadow or a canary"), "{mapper}");
    let bad = common::grid_cli(&urls, &["deploy", "fraud", guests::LOGREG, "--canary", "150%"]);
    assert!(common::text(&bad).1.contains("not a percentage between 0% and 100%"), "{:?}", common::text(&bad));
    let diffless = common::fails(common::grid_cli(&urls, &["functions", "diff", "fraud"]));
    assert!(diffless.contains("has no shadow or canary version"), "{diffless}");

    // v2 arrives as a shadow under steady traffic: callers only see v1.
    let r0 = rows(1, 99).remove(0);
    let http = common::http();
    let traffic = Traffic::start(&node.url, &r0, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = deploy(&V2, &["--shadow"]);
    assert!(out.contains("deployed fraud version 2 as a shadow (100% of calls) beside version 1"), "{out}");
    serving(&node.url, 1, Some((2, TrialMode::Shadow))).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (versions, failures) = traffic.stop().await;
    assert!(failures.is_empty(), "calls failed during the shadow deploy: {failures:?}");
    let seen: BTreeSet<u64> = versions.iter().flatten().copied().collect();
    assert_eq!(seen, BTreeSet::from([1]), "callers saw only the active version");
    assert!(
        versions.iter().all(|v| v.len() > 10),
        "steady traffic: {:?}",
        versions.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let before = settled_diff(&urls).await;
    assert!(before.rows > 0, "the shadow scored copies of the steady traffic");

    // 1,000 more rows, 10 per call: the diff adds exactly their differences.
    let batch = rows(1000, 7);
    for chunk in batch.chunks(10) {
        let (version, scores) = call(&http, &node.url, chunk, None).await.expect("call");
        assert_eq!(version, 1);
        for (row, s) in chunk.iter().zip(scores) {
            assert!((s - score(&V1, row)).abs() < 1e-12);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let report = diff(&urls);
        assert!(report.rows <= before.rows + 1000, "more rows compared than scored: {report:?}");
        if report.rows == before.rows + 1000 {
            break report;
        }
        assert!(Instant::now() < deadline, "the diff never counted the 1,000 rows: {report:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Computed here: r0 for every row of the steady traffic, then the batch.
    let n0 = before.rows;
    let d0 = (score(&V1, &r0) - score(&V2, &r0)).abs();
    let side = |s: f64| s >= 0.5;
    let disagree0 = u64::from(side(score(&V1, &r0)) != side(score(&V2, &r0)));
    let diffs: Vec<f64> = batch.iter().map(|r| (score(&V1, r) - score(&V2, r)).abs()).collect();
    let disagree = batch.iter().filter(|r| side(score(&V1, r)) != side(score(&V2, r))).count() as u64;
    let count = n0 + 1000;
    let mean = (n0 as f64 * d0 + diffs.iter().sum::<f64>()) / count as f64;
    let max = diffs.iter().copied().fold(d0, f64::max);
    assert_eq!(report.mode, TrialMode::Shadow);
    assert_eq!((report.active.version, report.candidate.version, report.nodes), (1, 2, 1));
    assert_eq!(report.skipped, 0, "{report:?}");
    assert_eq!(report.columns.len(), 1, "only the output column is compared: {:?}", report.columns);
    let c = &report.columns[0];
    assert_eq!((c.column.as_str(), c.count, c.disagree), ("score", count, n0 * disagree0 + disagree), "{c:?}");
    assert!(disagree > 20, "the models disagree on some rows at 0.5 ({disagree})");
    assert!((c.mean_abs - mean).abs() < 1e-12 && (c.max_abs - max).abs() < 1e-12, "{c:?} vs mean {mean} max {max}");
    assert!((c.disagree_rate - c.disagree as f64 / count as f64).abs() < 1e-15);
    // Every call the active version answered was copied and scored.
    assert_eq!(report.active.calls, report.candidate.calls);
    assert_eq!(report.candidate.calls, n0 + 100);
    assert_eq!((report.active.errors, report.candidate.errors), (0, 0));
    assert!(report.active.p50_us > 0 && report.candidate.p99_us >= report.candidate.p50_us, "{report:?}");
    let text = common::grid_ok(&urls, &["functions", "diff", "fraud"]);
    assert!(text.contains("version 2 as a shadow of version 1") && text.contains("DISAGREE@0.5"), "{text}");
    // Per-version series on the node.
    let shadow_calls =
        "wasmgrid_version_calls_total{tenant=\"default\",function=\"fraud\",version=\"2\",role=\"shadow\"}";
    assert_eq!(common::node_metric(&node.url, shadow_calls).await as u64, report.candidate.calls);

    // A job scores a data set with the candidate, offline.
    let input = dir.join("batch.jsonl");
    common::write_jsonl(&input, &batch);
    let out = dir.join("offline");
    let (input_s, out_s) = (input.display().to_string(), out.display().to_string());
    let job = ["job", "submit", "fraud", "--version", "2", "--input", &input_s, "--output", &out_s, "--wait"];
    common::grid_ok(&urls, &job);
    let offline = common::scores_in(&out);
    assert_eq!(offline.len(), 1000);
    for ((id, s), row) in offline.iter().zip(&batch) {
        assert_eq!(*id, row["id"].as_u64().expect("id"));
        assert!((s - score(&V2, row)).abs() < 1e-12, "row {id}: {s}");
    }
    let missing = ["job", "submit", "fraud", "--version", "9", "--input", &input_s, "--output", &out_s];
    let missing = common::fails(common::grid_cli(&urls, &missing));
    assert!(missing.contains("has no version 9 (it has 1 to 2)"), "{missing}");

    // The candidate as a canary of 10%: a stable hash of each call's key.
    let refused = common::fails(common::grid_cli(&urls, &["functions", "canary", "fraud", "1", "10%"]));
    assert!(refused.contains("version 1 is the active version"), "{refused}");
    let out = common::grid_ok(&urls, &["functions", "canary", "fraud", "2", "10%"]);
    assert!(out.contains("fraud version 2 runs as a canary (10% of calls) beside version 1"), "{out}");
    serving(&node.url, 1, Some((2, TrialMode::Canary))).await;
    let spec = TrialSpec { mode: TrialMode::Canary, percent: 10.0, threshold: 0.5 };
    let callers: Vec<_> = (0..4)
        .map(|t| {
            let (node, row) = (node.url.clone(), r0.clone());
            tokio::spawn(async move {
                let http = common::http();
                let mut to_v2 = BTreeSet::new();
                for i in (t..10_000).step_by(4) {
                    let key = format!("phone-{i}");
                    let (version, scores) =
                        call(&http, &node, std::slice::from_ref(&row), Some(&key)).await.expect("call");
                    let weights = if version == 2 { &V2 } else { &V1 };
                    assert!((scores[0] - score(weights, &row)).abs() < 1e-12);
                    if version == 2 {
                        to_v2.insert(i);
                    }
                }
                to_v2
            })
        })
        .collect();
    let mut to_v2 = BTreeSet::new();
    for caller in callers {
        to_v2.extend(caller.await.expect("caller"));
    }
    assert!((700..=1300).contains(&to_v2.len()), "the canary answered {} of 10,000 calls", to_v2.len());
    let expected: BTreeSet<usize> =
        (0..10_000).filter(|i| spec.takes(route_hash(format!("phone-{i}").as_bytes()))).collect();
    assert_eq!(to_v2, expected, "each key meets the version its hash chooses");
    let canary = settled_diff(&urls).await;
    assert_eq!(
        (canary.mode, canary.candidate.calls, canary.active.calls),
        (TrialMode::Canary, to_v2.len() as u64, 10_000 - to_v2.len() as u64)
    );
    let canary_calls =
        "wasmgrid_version_calls_total{tenant=\"default\",function=\"fraud\",version=\"2\",role=\"canary\"}";
    assert_eq!(common::node_metric(&node.url, canary_calls).await as u64, to_v2.len() as u64);

    // Promote under steady traffic: no call fails, and v2 answers them all after.
    let traffic = Traffic::start(&node.url, &r0, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = common::grid_ok(&urls, &["functions", "promote", "fraud", "2"]);
    assert!(out.contains("fraud now serves version 2"), "{out}");
    serving(&node.url, 2, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (versions, failures) = traffic.stop().await;
    assert!(failures.is_empty(), "calls failed during the promote: {failures:?}");
    for v in &versions {
        let first_v2 = v.iter().position(|&x| x == 2).expect("v2 answered after the promote");
        assert!(v[first_v2..].len() > 5 && v[v.len() - 5..].iter().all(|&x| x == 2), "{v:?}");
    }
    let ended = common::fails(common::grid_cli(&urls, &["functions", "diff", "fraud"]));
    assert!(ended.contains("has no shadow or canary version"), "{ended}");

    // A shadow abandoned: the active version serves alone.
    deploy(&V1, &["--shadow", "--threshold", "0.7"]);
    serving(&node.url, 2, Some((3, TrialMode::Shadow))).await;
    assert_eq!(diff(&urls).threshold, 0.7);
    let out = common::grid_ok(&urls, &["functions", "abandon", "fraud"]);
    assert!(out.contains("fraud serves version 2 alone"), "{out}");
    serving(&node.url, 2, None).await;
    drop(node);
}
