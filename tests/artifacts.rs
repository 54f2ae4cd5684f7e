//! Artifacts: files functions read by name, stored once under their
//! sha256 on every control-plane replica, outside the consensus log.
//! A 20 MB file deployed with `--artifact` is uploaded in chunks, reaches
//! every replica byte for byte (copied from a peer), is listed, streams
//! back from a follower, is not uploaded again, and another tenant can
//! neither read it nor claim it by its hash. A 75 KB MLP (too large for a
//! config) deployed as an artifact scores like the model evaluated here,
//! by `wasmgrid run` and per request; a 200 MB artifact reaches two nodes,
//! which serve its version, while the control plane's memory grows by a
//! small part of it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use common::grid_ok;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmgrid_test_artifacts as guests;

fn as_tenant(urls: &str, token: &str, args: &[&str]) -> std::process::Output {
    common::wasmgrid().env("WASMGRID_TOKEN", token).args(args).args(["--url", urls]).output().expect("runs")
}

/// `n` bytes that do not compress, from `seed`.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = common::Rng::new(seed);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_is_uploaded_in_chunks_and_copied_to_every_replica_outside_the_log() {
    let replicas = Replicas::start(3, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let model = dir.join("model.bin");
    std::fs::write(&model, noise(20_000_123, 5)).expect("model");
    let sha256 = sha256_of(&model);
    let flag = format!("model={}", model.display());

    let out = grid_ok(&urls, &["deploy", "echo", guests::ECHO_SCORER, "--artifact", &flag]);
    assert!(out.contains(&format!("artifact model: {} (20000123 bytes, uploaded)", &sha256[..12])), "{out}");
    let versions = grid_ok(&urls, &["functions", "versions", "echo", "--json"]);
    assert!(versions.contains("\"model\"") && versions.contains(&sha256), "{versions}");

    // On every replica, byte for byte; none of them holds it in its log.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in 1..=3 {
        let stored = replicas.data(id).join("blobs").join(&sha256);
        while std::fs::metadata(&stored).map_or(0, |m| m.len()) != 20_000_123 {
            assert!(Instant::now() < deadline, "replica {id} never got the artifact");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(sha256_of(&stored), sha256, "replica {id}");
        let size: u64 = walk(&replicas.data(id))
            .into_iter()
            .filter(|p| !p.starts_with(replicas.data(id).join("blobs")))
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        assert!(size < 10_000_000, "replica {id} holds {size} bytes besides its blobs: the log carried the artifact");
    }

    let listed = grid_ok(&urls, &["artifacts", "ls"]);
    assert!(listed.contains(&sha256) && listed.contains("20000123"), "{listed}");
    // Streamed back by a follower.
    let leader = replicas.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let response = common::http()
        .get(format!("{}/v1/artifacts/{sha256}", replicas.url(follower)))
        .headers(common::auth_headers())
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    assert_eq!(hex::encode(Sha256::digest(&body)), sha256);

    // A node's token reads it (nodes fetch what they run); one that may
    // only invoke functions does not. Asked of the leader, which has
    // applied the new token by the time it answers the create.
    for (flags, status) in [(&["--node"][..], 200), (&["--invoke-only", "--tenant", "default"][..], 403)] {
        let token = grid_ok(&urls, &[&["tokens", "create"][..], flags].concat()).trim().to_string();
        let response = common::http()
            .get(format!("{}/v1/artifacts/{sha256}", replicas.url(leader)))
            .bearer_auth(&token)
            .send()
            .await
            .expect("download");
        assert_eq!(response.status(), status, "{flags:?}");
    }

    // Deployed again: not uploaded again.
    let out = grid_ok(&urls, &["deploy", "echo", guests::ECHO_SCORER, "--artifact", &flag]);
    assert!(out.contains("20000123 bytes, already stored"), "{out}");

    // Another tenant: cannot read it, nor claim it by naming its hash.
    grid_ok(&urls, &["tenants", "create", "other"]);
    let token = grid_ok(&urls, &["tokens", "create", "--tenant", "other"]).trim().to_string();
    let response = common::http()
        .get(format!("{}/v1/artifacts/{sha256}", replicas.url(leader)))
        .bearer_auth(&token)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 404);
    let claim = common::http()
        .post(format!("{}/v1/artifacts/{sha256}", replicas.url(leader)))
        .bearer_auth(&token)
        .json(&serde_json::json!({"size": 20_000_123}))
        .send()
        .await
        .expect("commit");
    assert_eq!(claim.status(), 400, "{}", claim.text().await.unwrap_or_default());
    common::ok(as_tenant(&urls, &token, &["deploy", "f", guests::ECHO_SCORER]));
    let module = sha256_of(Path::new(guests::ECHO_SCORER));
    let deploy = common::http()
        .post(format!("{}/v1/functions/f/versions", replicas.url(leader)))
        .bearer_auth(&token)
        .json(&serde_json::json!({"module": module, "artifacts": {"model": sha256}}))
        .send()
        .await
        .expect("deploy");
    assert_eq!(deploy.status(), 404);
    let text = deploy.text().await.unwrap_or_default();
    assert!(text.contains(&format!("artifact `model`: no artifact with sha256 {sha256}; upload it first")), "{text}");

    // A chunk that skips ahead is refused, naming where the upload stands.
    let other = noise(1000, 9);
    let name = hex::encode(Sha256::digest(&other));
    let put = |offset: usize, bytes: Vec<u8>| {
        common::http()
            .put(format!("{}/v1/artifacts/{name}/chunks?offset={offset}", replicas.url(leader)))
            .bearer_auth(&token)
            .body(bytes)
            .send()
    };
    assert_eq!(put(0, other[..400].to_vec()).await.expect("put").status(), 200);
    let gap = put(600, other[600..].to_vec()).await.expect("put");
    assert_eq!(gap.status(), 409);
    assert!(gap.text().await.unwrap_or_default().contains("holds 400 bytes; a chunk at offset 600"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// An MLP of 20 features, 64 and 32 hidden units and one output: 3,393
/// parameters, about 75 KB as JSON.
fn mlp(seed: u64) -> Value {
    let mut rng = common::Rng::new(seed);
    let mut layer = |inputs: usize, outputs: usize, activation: &str| {
        let weights: Vec<Vec<f64>> =
            (0..inputs).map(|_| (0..outputs).map(|_| (rng.unit() * 2.0 - 1.0) * 0.4).collect()).collect();
        let bias: Vec<f64> = (0..outputs).map(|_| rng.unit() * 0.2 - 0.1).collect();
        json!({"weights": weights, "bias": bias, "activation": activation})
    };
    let layers = vec![layer(20, 64, "relu"), layer(64, 32, "relu"), layer(32, 1, "sigmoid")];
    let features: Vec<String> = (0..20).map(|i| format!("x{i}")).collect();
    json!({"features": features, "layers": layers})
}

fn feature_rows(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = common::Rng::new(seed);
    (0..n)
        .map(|i| {
            let mut row = serde_json::Map::new();
            row.insert("id".into(), json!(i));
            for f in 0..20 {
                row.insert(format!("x{f}"), json!(rng.unit() * 4.0 - 2.0));
            }
            Value::Object(row)
        })
        .collect()
}

/// The model evaluated by numpy, when the test setup's Python has it.
fn numpy_scores(model: &Value, rows: &[Value], dir: &Path) -> Option<Vec<f64>> {
    let python = common::local_python()?;
    let (model_file, rows_file) = (dir.join("numpy-model.json"), dir.join("numpy-rows.json"));
    std::fs::write(&model_file, model.to_string()).expect("model");
    std::fs::write(&rows_file, Value::Array(rows.to_vec()).to_string()).expect("rows");
    let script = r#"
import json, sys
import numpy as np
model, rows = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
x = np.array([[r[f] for f in model["features"]] for r in rows])
act = {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "none": lambda v: v}
for layer in model["layers"]:
    x = act[layer.get("activation", "none")](x @ np.array(layer["weights"]) + np.array(layer["bias"]))
print(json.dumps(x[:, 0].tolist()))
"#;
    let out = common::ok_stdout(
        std::process::Command::new(python)
            .args(["-c", script])
            .arg(&model_file)
            .arg(&rows_file)
            .output()
            .expect("numpy"),
    );
    Some(serde_json::from_str(out.trim()).expect("scores"))
}

fn assert_close(what: &str, got: &[(u64, f64)], model: &Value, rows: &[Value]) {
    assert_eq!(got.len(), rows.len(), "{what}: one score per row");
    for (id, score) in got {
        let want = common::mlp_forward(model, &rows[*id as usize]);
        assert!((score - want).abs() <= 1e-4, "{what}: row {id}: {score} vs {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_75_kb_mlp_deployed_as_an_artifact_scores_and_a_200_mb_one_reaches_two_nodes() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let model = mlp(3);
    let model_path = dir.join("mlp.json");
    std::fs::write(&model_path, model.to_string()).expect("model");
    let size = std::fs::metadata(&model_path).expect("model").len();
    assert!((70_000..80_000).contains(&size), "the MLP is {size} bytes as JSON");
    let rows = feature_rows(500, 11);
    // numpy agrees with the reference here (so the scores below are within
    // 1e-4 of numpy's as well), where the test setup has it.
    if let Some(numpy) = numpy_scores(&model, &rows, dir) {
        for (row, n) in rows.iter().zip(&numpy) {
            assert!(
                (common::mlp_forward(&model, row) - n).abs() < 1e-12,
                "numpy {n} vs {}",
                common::mlp_forward(&model, row)
            );
        }
    }

    // As config it is refused: over 64 KiB.
    let e = common::fails(common::grid_cli(
        &urls,
        &["deploy", "mlp", guests::MLP_SCORE, "--config", &format!("model={model}")],
    ));
    assert!(e.contains("over the limit of 65536"), "{e}");

    // `wasmgrid run` with the file as its artifact.
    let input = dir.join("rows.jsonl");
    common::write_jsonl(&input, &rows);
    let out = dir.join("local");
    let flag = format!("model={}", model_path.display());
    let (input_s, out_s) = (input.display().to_string(), out.display().to_string());
    common::ok(
        common::wasmgrid()
            .args(["run", guests::MLP_SCORE, "-i", &input_s, "-o", &out_s, "--artifact", &flag])
            .output()
            .expect("run"),
    );
    assert_close("wasmgrid run", &common::scores_in(&out), &model, &rows);

    // Deployed with it, beside a 200 MB artifact, on two nodes.
    let big = dir.join("big.bin");
    std::fs::write(&big, noise(200 << 20, 4)).expect("big");
    let big_sha = sha256_of(&big);
    let nodes = [Node::start(&urls, &dir.join("node-a")), Node::start(&urls, &dir.join("node-b"))];
    // Version 1 without it (the control plane compiles the module and runs
    // its `init` once), then version 2 with it: what the 200 MB cost.
    grid_ok(&urls, &["deploy", "mlp", guests::MLP_SCORE, "--artifact", &flag, "--replicas", "2"]);
    let before = common::rss(replicas.pid(1));
    let big_flag = format!("blob={}", big.display());
    let deploy = ["deploy", "mlp", guests::MLP_SCORE, "--artifact", &flag, "--artifact", &big_flag, "--replicas", "2"];
    let out = grid_ok(&urls, &deploy);
    assert!(out.contains("deployed mlp version 2"), "{out}");
    let grown = common::rss(replicas.pid(1)).saturating_sub(before);
    eprintln!("control plane RSS {before} -> +{grown} bytes for a 200 MiB artifact");
    assert!(grown < 32 << 20, "the control plane grew by {grown} bytes for a 200 MB artifact");

    // Both nodes fetch the 200 MB artifact (version 2 is made ready only
    // once they have it: until then they serve version 1).
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in ["node-a", "node-b"] {
        let kept = dir.join(name).join("modules").join(format!("{big_sha}.artifact"));
        while std::fs::metadata(&kept).map(|m| m.len()).ok() != Some(200 << 20) {
            assert!(Instant::now() < deadline, "{name} never kept the 200 MB artifact");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Both nodes fetch both artifacts and serve the version: 500 rows in one request.
    for node in &nodes {
        let url = format!("{}/v1/fn/default/mlp", node.url);
        let answer = common::post_until_served(&url, &json!({ "rows": rows }), Duration::from_secs(120)).await;
        let scores = common::id_scores(&answer);
        assert_close(&node.url, &scores, &model, &rows);
    }
}
