//! The control plane end to end: real replica and node processes on
//! loopback, real sled files, the real CLI.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use common::{fails, ok, ok_stdout, text, wasmgrid};
use wasmgrid_api::{Client, DeployRequest, FunctionInfo, InvokeRequest};
use wasmgrid_test_artifacts as guests;

/// A logistic-regression model over feature `x` as logreg's config.
fn model(weight: f64, bias: f64) -> String {
    format!(r#"{{"features":["x"],"weights":[{weight}],"bias":{bias}}}"#)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `wasmgrid deploy` through the CLI against `urls`.
fn cli_deploy(urls: &str, name: &str, weight: f64) -> std::process::Output {
    wasmgrid()
        .env("WASMGRID_URL", urls)
        .args(["deploy", name, guests::LOGREG, "--timeout", "2s", "--config"])
        .arg(format!("model={}", model(weight, 0.0)))
        .output()
        .expect("wasmgrid deploy runs")
}

async fn upload(client: &Client) -> String {
    let bytes = std::fs::read(guests::LOGREG).expect("logreg.wasm");
    client.upload_module(bytes).await.expect("upload").sha256
}

fn deploy_request(module: &str, weight: f64) -> DeployRequest {
    DeployRequest {
        module: module.into(),
        config: BTreeMap::from([("model".to_string(), model(weight, 0.0))]),
        ..DeployRequest::default()
    }
}

/// Every function with every version, as replica `id` serves them.
async fn snapshot_of(replicas: &Replicas, id: u64) -> Vec<FunctionInfo> {
    let client = replicas.client(id);
    let list = client.functions().await.unwrap_or_else(|e| panic!("replica {id} lists functions: {e}"));
    let mut all = Vec::new();
    for f in list.functions {
        all.push(client.function(&f.name).await.expect("function"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_writes_within_3s_of_a_kill_and_nothing_acknowledged_is_lost() {
    let mut replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let node_dir = replicas.dir.path().join("node");
    let _node = Node::start(&replicas.urls(), &node_dir);

    // Acknowledged deploys, through the CLI.
    for (name, weight) in [("churn", 1.0), ("churn", 2.0), ("fraud", 3.0), ("churn", 4.0)] {
        ok(cli_deploy(&replicas.urls(), name, weight));
    }
    let before = snapshot_of(&replicas, leader).await;
    assert_eq!(
        before.iter().map(|f| (f.name.as_str(), f.versions.len())).collect::<Vec<_>>(),
        [("churn", 3), ("fraud", 1)]
    );

    replicas.kill(leader);
    let killed = Instant::now();
    // The CLI is pointed at the dead leader first: it must move on.
    let dead_first = std::iter::once(replicas.url(leader))
        .chain((1..=3).filter(|&id| id != leader).map(|id| replicas.url(id)))
        .collect::<Vec<_>>()
        .join(",");
    let deployed = loop {
        let out = cli_deploy(&dead_first, "churn", 5.0);
        if out.status.success() {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "no deploy succeeded after the kill: {:?}", text(&out));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("deploy succeeded {:.0} ms after kill -9 of the leader", deployed.as_secs_f64() * 1e3);
    assert!(deployed < Duration::from_secs(3), "the next deploy took {deployed:?} after the kill");

    let new_leader = replicas.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    for id in (1..=3).filter(|&id| id != leader) {
        let after = snapshot_of(&replicas, id).await;
        assert_eq!(after.len(), before.len(), "replica {id}");
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b.name, a.name);
            // Every acknowledged version is there, unchanged; churn has one more.
            assert_eq!(a.versions[..b.versions.len()], b.versions[..], "replica {id} {}", a.name);
        }
        let churn = after.iter().find(|f| f.name == "churn").expect("churn");
        assert_eq!((churn.versions.len(), churn.active), (4, 4), "replica {id}");
    }

    // The node rode through the failover: it serves the deploy made after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = wasmgrid()
            .env("WASMGRID_URL", replicas.urls())
            .args(["invoke", "churn", "--json", "--data", r#"{"x": 1}"#])
            .output()
            .expect("invoke");
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            if v["version"] == 4 {
                let score = v["rows"][0]["score"].as_f64().expect("score");
                assert!((score - sigmoid(5.0)).abs() < 1e-9, "{v}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "the node never served version 4: {:?}", text(&out));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_replica_keeps_functions_versions_and_modules() {
    let mut replicas = Replicas::start(3, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let client = replicas.client_all();
    let module = upload(&client).await;
    let wordcount = client.upload_module(std::fs::read(guests::WORDCOUNT_MAP).expect("wasm")).await.expect("upload");
    for weight in [1.0, 2.0, 3.0] {
        client.deploy("churn", &deploy_request(&module, weight)).await.expect("deploy");
    }
    let request = DeployRequest { module: wordcount.sha256.clone(), ..DeployRequest::default() };
    client.deploy("words", &request).await.expect("deploy");
    client.rollback("churn", 2).await.expect("rollback");
    let before = snapshot_of(&replicas, 1).await;

    for id in 1..=3 {
        replicas.stop(id);
    }
    for id in 1..=3 {
        replicas.spawn(id);
    }
    replicas.wait_leader(Duration::from_secs(15)).await;
    for id in 1..=3 {
        assert_eq!(snapshot_of(&replicas, id).await, before, "replica {id} after the restart");
        for (sha, path) in [(&module, guests::LOGREG), (&wordcount.sha256, guests::WORDCOUNT_MAP)] {
            let bytes = replicas.client(id).module(sha).await.expect("module");
            assert_eq!(bytes, std::fs::read(path).expect("wasm"), "replica {id} module {sha}");
        }
    }
    let churn = before.iter().find(|f| f.name == "churn").expect("churn");
    assert_eq!((churn.active, churn.versions.len()), (2, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_for_a_thousand_writes_catches_up_from_a_snapshot() {
    let mut replicas = Replicas::start(3, 100);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    replicas.kill(lagging);

    let client = std::sync::Arc::new(replicas.client_all());
    let module = upload(&client).await;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let client = client.clone();
        let module = module.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..64 {
                let name = format!("f{}", (worker * 64 + i) % 40);
                client.deploy(&name, &deploy_request(&module, i as f64)).await.expect("deploy");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let status = replicas.status(leader).await.expect("leader status");
    assert!(status.commit >= 1024, "{status:?}");
    assert!(status.first_index > 100, "the leader's log was not compacted: {status:?}");
    let expected = snapshot_of(&replicas, leader).await;
    assert_eq!(expected.iter().map(|f| f.versions.len()).sum::<usize>(), 1024);

    replicas.spawn(lagging);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = replicas.status(lagging).await
            && s.applied >= status.commit
        {
            assert!(s.snapshots_installed >= 1, "caught up without a snapshot: {s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "replica {lagging} did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(snapshot_of(&replicas, lagging).await, expected);
    let log = std::fs::read_to_string(replicas.log(lagging)).unwrap_or_default();
    assert!(log.contains("installed a snapshot"), "{log}");
}

/// A paused leader (SIGSTOP: its socket still accepts connections, nothing
/// answers) holds no caller past the request timeout (3 s): a write sent to
/// a follower fails with 503 by then, and the next one succeeds once the
/// other two have elected a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_holds_no_caller_past_the_request_timeout() {
    let replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let pid = replicas.pid(leader).to_string();
    let signal = |name: &str| std::process::Command::new("kill").args([name, &pid]).status().expect("kill");
    assert!(signal("-STOP").success());
    let http = common::http();
    let mut written = None;
    for i in 0..10 {
        let started = Instant::now();
        let response = http
            .post(format!("{}/v1/tenants", replicas.url(follower)))
            .json(&serde_json::json!({ "name": format!("t{i}") }))
            .send()
            .await;
        let took = started.elapsed();
        let status = response.map(|r| r.status().as_u16()).unwrap_or(0);
        println!("write {i}: {status} in {:.0} ms", took.as_secs_f64() * 1e3);
        if took >= Duration::from_millis(4_000) {
            signal("-CONT");
            panic!("write {i} took {took:?} (answer {status}), past the 3 s request timeout");
        }
        if (200..300).contains(&status) {
            written = Some(i);
            break;
        }
        assert_eq!(status, 503, "write {i}");
    }
    assert!(signal("-CONT").success());
    assert!(written.is_some(), "no write succeeded while the old leader was paused");
}

/// `wasmgrid cluster transfer-leader ID`, sent to any replica, hands
/// leadership to that replica and returns once it leads; writes go on; a
/// replica that is not a member is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_replica_named() {
    let replicas = Replicas::start(3, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    ok(cli_deploy(&replicas.urls(), "f", 1.0));
    for round in 0..2 {
        let leader = replicas.wait_leader(Duration::from_secs(5)).await;
        let target = (1..=3).find(|&id| id != leader).expect("a follower");
        // Through the replica that is neither: it forwards to the leader.
        let via = (1..=3).find(|&id| id != leader && id != target).expect("a third replica");
        let transfer = ["cluster", "transfer-leader", &target.to_string(), "--url", &replicas.url(via)];
        let stdout = ok_stdout(wasmgrid().args(transfer).output().expect("wasmgrid"));
        assert!(stdout.contains(&format!("replica {target} leads")), "round {round}: {stdout}");
        assert_eq!(replicas.wait_leader(Duration::from_secs(5)).await, target, "round {round}");
        ok(cli_deploy(&replicas.urls(), "f", 2.0 + round as f64));
    }
    let stderr = fails(
        wasmgrid().args(["cluster", "transfer-leader", "9", "--url", &replicas.urls()]).output().expect("wasmgrid"),
    );
    assert!(stderr.contains("replica 9 is not a voting member"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_a_deploy_fails_with_503_within_5s() {
    let mut replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    ok(cli_deploy(&replicas.urls(), "churn", 1.0));
    let survivor = (1..=3).find(|&id| id != leader).expect("a follower");
    for id in 1..=3 {
        if id != survivor {
            replicas.kill(id);
        }
    }

    // Straight after the kills, and once the survivor knows it is alone.
    for round in 0..2 {
        let started = Instant::now();
        let out = cli_deploy(&replicas.urls(), "churn", 2.0);
        let took = started.elapsed();
        let stderr = fails(out);
        assert!(stderr.contains("no quorum") && stderr.contains("503"), "round {round}: {stderr}");
        assert!(took < Duration::from_secs(5), "round {round}: the deploy took {took:?} to fail");
        println!("round {round}: failed in {:.0} ms: {}", took.as_secs_f64() * 1e3, stderr.trim());
    }
    let raw = common::http()
        .post(format!("{}/v1/functions/churn/rollback", replicas.url(survivor)))
        .json(&serde_json::json!({"version": 1}))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(raw.status(), 503);
    let body: serde_json::Value = raw.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "no_quorum", "{body}");
}

/// Scores `rows` rows of `x` on a node's gateway.
async fn call(http: reqwest::Client, url: String, rows: usize) -> Option<wasmgrid_api::InvokeResponse> {
    let rows = (0..rows).filter_map(|i| serde_json::json!({"x": i as f64 * 0.01}).as_object().cloned()).collect();
    let response = http.post(url).json(&InvokeRequest { rows }).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_a_deploy_within_a_second_and_rollbacks_switch_atomically() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    let http = common::http();
    let invoke = |rows: usize| call(http.clone(), format!("{}/v1/fn/default/churn", node.url), rows);

    // Version 1 (cold: the node fetches and compiles the module), then
    // version 2 of the same module: each is served soon after the CLI returns.
    for (version, weight) in [(1u64, 1.0), (2, -1.0)] {
        ok(cli_deploy(&replicas.urls(), "churn", weight));
        let returned = Instant::now();
        loop {
            if let Some(r) = invoke(1).await
                && r.version == version
            {
                break;
            }
            assert!(returned.elapsed() < Duration::from_secs(20), "version {version} never served");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = returned.elapsed();
        println!("version {version} served {:.0} ms after `wasmgrid deploy` returned", took.as_secs_f64() * 1e3);
        if version == 2 {
            assert!(took < Duration::from_secs(1), "version 2 took {took:?} to be served");
        }
    }

    // Callers hammer the function while versions switch back and forth;
    // every answer is wholly one version's.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        let (http, url) = (http.clone(), format!("{}/v1/fn/default/churn", node.url));
        callers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = call(http.clone(), url.clone(), 32).await.expect("every call is answered");
                seen.push(r);
            }
            seen
        }));
    }
    let client = replicas.client_all();
    for version in [1, 2, 1, 2, 1] {
        client.rollback("churn", version).await.expect("rollback");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    let mut calls = 0;
    for c in callers {
        for r in c.await.expect("caller") {
            let weight = match r.version {
                1 => 1.0,
                2 => -1.0,
                v => panic!("version {v} was never deployed"),
            };
            for row in &r.rows {
                let x = row["x"].as_f64().expect("x");
                let score = row["score"].as_f64().expect("score");
                assert!(
                    (score - sigmoid(weight * x)).abs() < 1e-9,
                    "a row of version {} was scored by another",
                    r.version
                );
            }
            versions.insert(r.version);
            calls += 1;
        }
    }
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), [1, 2], "both versions served over {calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_json_error() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let url = replicas.url(1);
    let http = common::http();
    let client = replicas.client(1);
    let module = upload(&client).await;
    client.deploy("churn", &deploy_request(&module, 1.0)).await.expect("deploy");

    async fn error(response: reqwest::Response) -> (u16, String, String) {
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("a JSON error body");
        let e = &body["error"];
        (status, e["code"].as_str().unwrap_or("").into(), e["message"].as_str().unwrap_or("").into())
    }
    let post = |path: &str, body: Vec<u8>| http.post(format!("{url}{path}")).body(body).send();

    // Bytes that are not a component.
    let (s, code, m) = error(post("/v1/modules", b"definitely not wasm".to_vec()).await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (400, "bad_request"), "{m}");
    assert!(m.contains("not a WebAssembly component"), "{m}");
    let core = wat::parse_str("(module)").expect("wat");
    let (s, _, m) = error(post("/v1/modules", core).await.expect("answer")).await;
    assert!(s == 400 && m.contains("core WebAssembly module"), "{s} {m}");

    // An oversized module.
    let huge = vec![0u8; wasmgrid_control_plane::state::MAX_MODULE_BYTES + 1];
    let (s, code, m) = error(post("/v1/modules", huge).await.expect("an answer, not a dropped connection")).await;
    assert_eq!((s, code.as_str()), (413, "too_large"), "{m}");

    // Unknown function, version, module.
    let (s, code, m) = error(http.get(format!("{url}/v1/functions/nope")).send().await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (404, "not_found"));
    assert!(m.contains("nope"), "{m}");
    let rollback = serde_json::to_vec(&serde_json::json!({"version": 7})).expect("json");
    let req = http.post(format!("{url}/v1/functions/churn/rollback")).header("content-type", "application/json");
    let (s, _, m) = error(req.body(rollback).send().await.expect("answer")).await;
    assert!(s == 404 && m.contains("no version 7"), "{s} {m}");
    let unknown = deploy_request(&"0".repeat(64), 1.0);
    let (s, _, m) =
        error(http.post(format!("{url}/v1/functions/x/versions")).json(&unknown).send().await.expect("a")).await;
    assert!(s == 404 && m.contains("upload it first"), "{s} {m}");

    // A malformed JSON body.
    let req = http.post(format!("{url}/v1/functions/churn/versions")).header("content-type", "application/json");
    let (s, code, m) = error(req.body("{\"module\": ").send().await.expect("answer")).await;
    assert_eq!((s, code.as_str()), (400, "bad_request"), "{m}");
    assert!(m.contains("malformed JSON"), "{m}");

    // Names with '/' or '..' in them: over HTTP and through the CLI.
    for bad in ["a%2Fb", "x..y", "%2E%2E%2Fetc"] {
        let r = http.post(format!("{url}/v1/functions/{bad}/versions")).json(&deploy_request(&module, 1.0));
        let (s, _, m) = error(r.send().await.expect("answer")).await;
        assert_eq!(s, 400, "{bad}: {m}");
        assert!(m.contains("invalid name"), "{bad}: {m}");
    }
    for bad in ["a/b", "../etc", "x..y"] {
        let stderr = fails(cli_deploy(&url, bad, 1.0));
        assert!(stderr.contains("invalid function name"), "{bad}: {stderr}");
    }

    // Unknown endpoints and the gateway's own errors are JSON too.
    let (s, _, _) = error(http.get(format!("{url}/v1/nothing")).send().await.expect("answer")).await;
    assert_eq!(s, 404);
    let node = Node::start(&url, &replicas.dir.path().join("node"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let gateway = format!("{}/v1/fn/default/churn", node.url);
    loop {
        if let Ok(r) = http.post(&gateway).json(&serde_json::json!({"rows": [{"x": 1}]})).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node never served churn");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let req = http.post(&gateway).header("content-type", "application/json");
    let (s, _, m) = error(req.body("[1,2").send().await.expect("answer")).await;
    assert!(s == 400 && m.contains("malformed JSON"), "{s} {m}");
    let (s, _, _) = error(
        http.post(format!("{}/v1/fn/default/nope", node.url))
            .json(&serde_json::json!({"rows": []}))
            .send()
            .await
            .expect("a"),
    )
    .await;
    assert_eq!(s, 404);

    // The state survived all of it.
    let churn = client.function("churn").await.expect("churn");
    assert_eq!((churn.active, churn.versions.len()), (1, 1));
}

#[test]
fn the_cluster_script_starts_three_replicas_and_two_nodes_and_stops_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Twelve consecutive ports, well away from the fixed defaults and below
    // the kernel's ephemeral range (32768 and up), where an outgoing
    // connection of another test may hold one of them.
    let base = 20_000 + (std::process::id() % 1000) * 12;
    let script = |action: &str| {
        std::process::Command::new("bash")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cluster.sh"))
            .arg(action)
            .env("WASMGRID", env!("CARGO_BIN_EXE_wasmgrid"))
            .env("CLUSTER_DIR", dir.path())
            .env("CLUSTER_PORT_BASE", base.to_string())
            .output()
            .expect("bash runs")
    };
    let started = ok_stdout(script("start"));
    assert!(started.contains("export WASMGRID_URL="), "{started}");
    let urls = (0..3).map(|i| format!("http://127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(",");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = wasmgrid()
            .env("WASMGRID_URL", &urls)
            .env_remove("WASMGRID_TOKEN")
            .env("WASMGRID_TOKEN_FILE", dir.path().join("admin-token"))
            .args(["nodes", "ls", "--json"])
            .output()
            .expect("runs");
        let alive = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["nodes"].as_array().map(|n| n.iter().filter(|n| n["state"] == "alive").count()));
        if alive == Some(2) {
            break;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = ["node-1.log", "node-2.log"]
                .iter()
                .map(|l| format!("{l}: {}", std::fs::read_to_string(dir.path().join(l)).unwrap_or_default()))
                .collect();
            panic!("two nodes never came alive: {:?}\n{}", text(&out), logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pid"))
        .map(|p| std::fs::read_to_string(p).expect("pid").trim().to_string())
        .collect();
    assert_eq!(pids.len(), 5);
    // The script made one admin token and a node token, for its user only.
    for token in ["admin-token", "node-token"] {
        let meta = std::fs::metadata(dir.path().join(token)).expect("token file");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600, "{token}");
    }
    ok_stdout(script("stop"));
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still runs after stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_functions_get_clear_errors_on_the_gateway_and_the_node_keeps_serving() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let client = replicas.client(1);
    let hostile = client.upload_module(std::fs::read(guests::HOSTILE_SCORER).expect("wasm")).await.expect("upload");
    let healthy = upload(&client).await;
    let modes =
        [("loop", 504, "timeout"), ("grow", 500, "memory_limit"), ("trap", 500, "trap"), ("err", 422, "guest_error")];
    for (mode, _, _) in modes {
        let request = DeployRequest {
            module: hostile.sha256.clone(),
            memory: Some(32 << 20),
            timeout_ms: Some(200),
            config: BTreeMap::from([("mode".to_string(), mode.to_string())]),
            ..DeployRequest::default()
        };
        client.deploy(&format!("hostile-{mode}"), &request).await.expect("deploy");
    }
    client.deploy("churn", &deploy_request(&healthy, 1.0)).await.expect("deploy");
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    let http = common::http();
    let gateway = |name: &str| format!("{}/v1/fn/default/{name}", node.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(http.clone(), gateway("churn"), 1).await.is_none() {
        assert!(Instant::now() < deadline, "the node never served churn");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (mode, status, code) in modes {
        let response = http
            .post(gateway(&format!("hostile-{mode}")))
            .json(&serde_json::json!({"rows": [{"x": 1.0}]}))
            .send()
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(response.status().as_u16(), status, "{mode}");
        let body: serde_json::Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], code, "{mode}: {body}");
        // The next healthy call on the same node is unaffected.
        let r = call(http.clone(), gateway("churn"), 3).await.expect("churn still serves");
        assert_eq!(r.rows.len(), 3);
    }
}

/// A write sent again with its `wasmgrid-request-id` (a client retrying
/// after a lost answer) is answered as the first time, through any
/// replica, and applied once; a malformed id is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_with_its_request_id_is_applied_once() {
    let replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let module = upload(&replicas.client_all()).await;
    let http = common::http();
    let body = serde_json::to_vec(&deploy_request(&module, 1.0)).expect("json");
    let mut answers = Vec::new();
    for id in [leader, leader % 3 + 1, leader] {
        let response = http
            .post(format!("{}/v1/functions/f/versions", replicas.url(id)))
            .header("content-type", "application/json")
            .header("wasmgrid-request-id", "deploy-f-1")
            .body(body.clone())
            .send()
            .await
            .expect("deploy");
        answers.push((response.status().as_u16(), response.text().await.expect("body")));
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert!(answers[0].0 < 300, "{answers:?}");
    let f = replicas.client_all().function("f").await.expect("f");
    assert_eq!(f.versions.len(), 1, "applied once: {f:?}");
    // Without the id, the same body is another deploy.
    replicas.client_all().deploy("f", &deploy_request(&module, 1.0)).await.expect("deploy");
    assert_eq!(replicas.client_all().function("f").await.expect("f").versions.len(), 2);

    let bad = http
        .post(format!("{}/v1/tenants", replicas.url(leader)))
        .header("wasmgrid-request-id", "no spaces allowed")
        .json(&serde_json::json!({ "name": "t" }))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.unwrap_or_default().contains("wasmgrid-request-id"));
}

/// Parses Prometheus text into `name{labels}` -> value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Each replica's `/metrics` shows its Raft state, the fsync and write
/// latencies it measured, each peer's lag on the leader, and jobs by state;
/// only the operator's and nodes' tokens may read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_exposes_its_raft_state_and_latencies() {
    let replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let client = replicas.client_all();
    let module = upload(&client).await;
    for i in 0..5 {
        client.deploy("f", &deploy_request(&module, i as f64)).await.expect("deploy");
    }
    let status = replicas.status(leader).await.expect("status");
    for id in 1..=3 {
        replicas.wait_applied(id, status.commit, Duration::from_secs(10)).await;
    }
    let http = common::http();
    let scrape = |id: u64| {
        let http = http.clone();
        let url = format!("{}/metrics", replicas.url(id));
        async move {
            let response = http.get(url).send().await.expect("scrape");
            assert_eq!(response.status().as_u16(), 200);
            parse_metrics(&response.text().await.expect("text"))
        }
    };
    let m = scrape(leader).await;
    assert_eq!(m.get("wasmgrid_raft_is_leader"), Some(&1.0), "{m:?}");
    assert_eq!(m.get("wasmgrid_raft_leader"), Some(&(leader as f64)));
    assert_eq!(m.get("wasmgrid_raft_term"), Some(&(status.term as f64)));
    assert!(m["wasmgrid_raft_commit_index"] >= status.commit as f64);
    assert_eq!(m.get("wasmgrid_raft_voters"), Some(&3.0));
    for peer in (1..=3).filter(|&p| p != leader) {
        assert!(m.contains_key(&format!("wasmgrid_raft_peer_lag{{peer=\"{peer}\"}}")), "{m:?}");
    }
    assert!(m["wasmgrid_raft_fsync_seconds_count"] > 0.0, "{m:?}");
    assert!(m["wasmgrid_raft_proposal_seconds_count"] >= 6.0, "an upload and five deploys: {m:?}");
    assert_eq!(m.get("wasmgrid_jobs{state=\"running\"}"), Some(&0.0), "{m:?}");
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let f = scrape(follower).await;
    assert_eq!(f.get("wasmgrid_raft_is_leader"), Some(&0.0));
    assert_eq!(f.get("wasmgrid_raft_leader"), Some(&(leader as f64)));
    assert!(f["wasmgrid_raft_applied_index"] >= status.commit as f64);

    client.create_tenant("acme").await.expect("tenant");
    let request = wasmgrid_api::TokenRequest { tenant: Some("acme".into()), role: wasmgrid_api::Role::Full };
    let token = client.create_token(&request).await.expect("token").token;
    let refused = reqwest::Client::new()
        .get(format!("{}/metrics", replicas.url(leader)))
        .bearer_auth(token)
        .send()
        .await
        .expect("scrape");
    assert_eq!(refused.status().as_u16(), 403);
}

/// `--log-format json`: every line a replica writes to stderr, its own
/// messages and errors included, is one JSON object with a level and a
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_token(&dir.path().join("admin-token"));
    let port = common::grid::free_port();
    let log = dir.path().join("stderr");
    let mut child = wasmgrid()
        .args(["control-plane", "--log-format", "json", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .arg("--admin-token-file")
        .arg(dir.path().join("admin-token"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("wasmgrid");
    let client = Client::new(&[format!("http://127.0.0.1:{port}")], Duration::from_secs(5))
        .expect("client")
        .with_token(Some(common::TOKEN.into()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.create_tenant("acme").await.is_err() {
        assert!(Instant::now() < deadline, "the replica did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::grid::terminate(&mut child);
    let bad = wasmgrid()
        .args(["control-plane", "--log-format", "json", "--peers", "2=127.0.0.1:1"])
        .args(["--data"])
        .arg(dir.path().join("other"))
        .output()
        .expect("wasmgrid");
    assert!(!bad.status.success());

    let text = std::fs::read_to_string(&log).expect("stderr") + &String::from_utf8_lossy(&bad.stderr);
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        messages.push((
            value["level"].as_str().unwrap_or("").to_string(),
            value["fields"]["message"].as_str().unwrap_or("").to_string(),
        ));
    }
    assert!(messages.iter().any(|(_, m)| m.contains("serving on")), "{messages:?}");
    assert!(messages.iter().any(|(_, m)| m.contains("tenant created")), "{messages:?}");
    assert!(messages.iter().any(|(l, m)| l == "ERROR" && m.contains("--peers")), "{messages:?}");
}

/// The Grafana dashboard in `deploy/grafana` only charts series that a
/// control plane and a node really expose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_charts_only_series_that_exist() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/wasmgrid.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("the dashboard is JSON");
    let mut charted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("wasmgrid_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                let base = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_string();
                charted.insert(base);
            }
        }
    }
    assert!(charted.len() > 10, "{charted:?}");

    // Three replicas (peer lag) and a node that has answered a call and
    // failed one (per-function series appear with their first call).
    let replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    ok(cli_deploy(&replicas.urls(), "f", 1.0));
    let http = common::http();
    let url = format!("{}/v1/fn/default/f", node.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(http.clone(), url.clone(), 1).await.is_none() {
        assert!(Instant::now() < deadline, "the node never served f");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bad = http.post(&url).body("not json").send().await.expect("a bad call");
    assert_eq!(bad.status().as_u16(), 400);
    let mut exposed = std::collections::BTreeSet::new();
    for url in [&replicas.url(leader), &node.url] {
        let text = http.get(format!("{url}/metrics")).send().await.expect("scrape").text().await.expect("text");
        exposed.extend(text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(String::from)));
    }
    let missing: Vec<&String> = charted.difference(&exposed).collect();
    assert!(missing.is_empty(), "charted but not exposed: {missing:?} (exposed: {exposed:?})");
}

/// The status `GET url` answers (0 when it cannot be reached).
async fn status_of(url: String) -> u16 {
    reqwest::get(url).await.map_or(0, |r| r.status().as_u16())
}

/// Waits until `GET url` answers `status`.
async fn wait_status(url: String, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = status_of(url.clone()).await;
        if now == status {
            return;
        }
        assert!(Instant::now() < deadline, "{url} answered {now}, not {status}, for {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_leader_and_the_route_table() {
    let mut replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    for id in 1..=3 {
        wait_status(format!("{}/v1/ready", replicas.url(id)), 200, Duration::from_secs(10)).await;
    }

    // A node whose control plane is not there: alive, not ready.
    let down = format!("http://127.0.0.1:{}", common::grid::free_port());
    let lonely = Node::start(&down, &replicas.dir.path().join("lonely"));
    wait_status(format!("{}/v1/health", lonely.url), 200, Duration::from_secs(10)).await;
    let answer = reqwest::get(format!("{}/v1/ready", lonely.url)).await.expect("ready");
    assert_eq!(answer.status().as_u16(), 503);
    assert!(answer.text().await.expect("body").contains("not_ready"));
    drop(lonely);
    // A node of this grid is ready once it has the route table.
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    wait_status(format!("{}/v1/ready", node.url), 200, Duration::from_secs(15)).await;

    // Two replicas gone: the last one is still alive but knows no leader,
    // so it is not ready; the node keeps serving its table.
    let survivor = (1..=3).find(|&id| id != leader).expect("a follower");
    for id in (1..=3).filter(|&id| id != survivor) {
        replicas.kill(id);
    }
    wait_status(format!("{}/v1/ready", replicas.url(survivor)), 503, Duration::from_secs(15)).await;
    assert_eq!(status_of(format!("{}/v1/health", replicas.url(survivor))).await, 200);
    assert_eq!(status_of(format!("{}/v1/ready", node.url)).await, 200);
    for id in (1..=3).filter(|&id| id != survivor) {
        replicas.spawn(id);
    }
    for id in 1..=3 {
        wait_status(format!("{}/v1/ready", replicas.url(id)), 200, Duration::from_secs(15)).await;
    }
}
