//! Tenant quotas on a real grid, set and changed with the CLI: stored
//! module bytes, functions, memory per instance and calls at once are
//! refused with `429 quota_exceeded` naming the quota; a job of a tenant
//! with one task slot runs one attempt at a time and completes.

mod common;

use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use common::{grid_cli, grid_ok};
use serde_json::{Value, json};
use wasmgrid_test_artifacts as guests;

/// `wasmgrid ARGS` as the tenant of `token` (in `WASMGRID_TOKEN`).
fn as_tenant(urls: &str, token: &str, args: &[&str]) -> std::process::Output {
    common::wasmgrid().env("WASMGRID_TOKEN", token).args(args).args(["--url", urls]).output().expect("runs")
}

fn refused(out: std::process::Output, quota: &str) -> String {
    let stderr = common::fails(out);
    assert!(stderr.contains("429, quota_exceeded"), "{stderr}");
    assert!(stderr.contains(&format!("tenant `small`'s `{quota}` quota")), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_enforced_with_errors_that_name_them() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let size = |path: &str| std::fs::metadata(path).expect("guest").len();
    // Room for logreg and fall-detect, not for a third module.
    let room = size(guests::LOGREG) + size(guests::FALL_DETECT) + 1000;
    grid_ok(
        &urls,
        &["tenants", "create", "small", "--functions", "2", "--memory", "64MiB", "--module-bytes", &room.to_string()],
    );
    let listed = grid_ok(&urls, &["tenants", "ls"]);
    assert!(listed.lines().any(|l| l.starts_with("small ") && l.contains(&room.to_string())), "{listed}");
    let token = grid_ok(&urls, &["tokens", "create", "--tenant", "small"]).trim().to_string();
    let small = |args: &[&str]| as_tenant(&urls, &token, args);

    let model = format!("model={}", r#"{"features": ["amount"], "weights": [0.01], "bias": -1.0}"#);
    common::ok(small(&["deploy", "score", guests::LOGREG, "-c", &model]));
    common::ok(small(&["deploy", "fall", guests::FALL_DETECT]));
    refused(small(&["deploy", "mlp", guests::MLP_SCORE]), "module_bytes");
    // Two functions: a third is refused, a new version of one is not.
    refused(small(&["deploy", "third", guests::LOGREG, "-c", &model]), "functions");
    common::ok(small(&["deploy", "score", guests::LOGREG, "-c", &model, "--timeout", "2s"]));
    refused(small(&["deploy", "score", guests::LOGREG, "--memory", "128MiB"]), "memory");
    // The admin's own tenant has no quotas.
    let mlp = r#"model={"features": ["amount"], "layers": [{"weights": [[0.5]], "bias": [0.0]}]}"#;
    grid_ok(&urls, &["deploy", "mlp", guests::MLP_SCORE, "-c", mlp]);

    // One call at once per node: a second call while one runs is refused.
    grid_ok(&urls, &["tenants", "set", "small", "--functions", "10", "--module-bytes", "none", "--concurrency", "1"]);
    common::ok(small(&["deploy", "spin", guests::HOSTILE_SCORER, "-c", "mode=loop", "--timeout", "1500ms"]));
    let node = Node::start(&urls, &replicas.dir.path().join("node"));
    let call = |name: &'static str| {
        let (url, token) = (format!("{}/v1/fn/small/{name}", node.url), token.clone());
        async move {
            let sent =
                reqwest::Client::new().post(url).bearer_auth(token).json(&json!({"rows": [{"amount": 1.0}]})).send();
            match sent.await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().await.expect("json"))
                }
                // The node may not listen yet.
                Err(e) => (0, json!(e.to_string())),
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while call("score").await.0 != 200 || call("spin").await.0 == 404 {
        assert!(Instant::now() < deadline, "the node never served small's functions");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spinning = tokio::spawn(call("spin"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call("score").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("quota of 1 calls at once"), "{body}");
    assert_eq!(spinning.await.expect("spin").0, 504);
    assert_eq!(call("score").await.0, 200, "the slot is free again");
    // Another tenant is not held to small's quota meanwhile.
    let spinning = tokio::spawn(call("spin"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = common::http()
        .post(format!("{}/v1/fn/default/mlp", node.url))
        .json(&json!({"rows": []}))
        .send()
        .await
        .expect("answer");
    assert_ne!(admin.status().as_u16(), 429);
    spinning.await.expect("spin");

    // One task slot: the job runs one attempt at a time and completes.
    grid_ok(&urls, &["tenants", "set", "small", "--task-slots", "1", "--concurrency", "none"]);
    let input = replicas.dir.path().join("input");
    std::fs::create_dir_all(&input).expect("input");
    for f in 0..6 {
        let rows: Vec<Value> = (0..50).map(|i| json!({"id": f * 50 + i, "amount": (f * 50 + i) as f64})).collect();
        common::write_jsonl(&input.join(format!("part-{f}.jsonl")), &rows);
    }
    let out = replicas.dir.path().join("out");
    let id = grid_ok(
        &urls,
        &[
            "job",
            "submit",
            "score",
            "--tenant",
            "small",
            "--input",
            &input.display().to_string(),
            "--output",
            &out.display().to_string(),
        ],
    )
    .trim()
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    loop {
        let status: Value =
            serde_json::from_str(&grid_ok(&urls, &["job", "status", &id, "--tenant", "small", "--json"]))
                .expect("json");
        most = most.max(status["running"].as_u64().unwrap_or(0));
        if status["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most <= 1, "{most} attempts ran at once with one task slot");
    assert_eq!(common::scores_in(&out).len(), 300);
    // Lifting a quota with `none` lifts it.
    grid_ok(&urls, &["tenants", "set", "small", "--task-slots", "none"]);
    let listed: Value = serde_json::from_slice(&grid_cli(&urls, &["tenants", "ls", "--json"]).stdout).expect("json");
    let small = listed["tenants"].as_array().expect("list").iter().find(|t| t["name"] == "small").expect("small");
    let quotas = json!({
        "functions": 10, "module_bytes": null, "memory": 64 << 20, "concurrency": null, "task_slots": null, "gpu_ms": null
    });
    assert_eq!(small["quotas"], quotas, "{small}");
}

/// One tenant's call: its status and when the answer came.
async fn timed_call(url: String, token: String) -> (u16, Instant) {
    let sent = reqwest::Client::new().post(url).bearer_auth(token).json(&json!({"rows": [{"amount": 1.0}]})).send();
    let status = sent.await.map_or(0, |r| r.status().as_u16());
    (status, Instant::now())
}

/// A node's call slots are shared fairly between tenants: with one slot,
/// held by tenant A's slow call while three more of A's wait, tenant B's
/// call gets the slot next, ahead of A's calls that came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_call_slot_goes_to_the_tenant_with_fewest_running() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    grid_ok(&urls, &["tenants", "create", "a"]);
    grid_ok(&urls, &["tenants", "create", "b"]);
    let a = grid_ok(&urls, &["tokens", "create", "--tenant", "a"]).trim().to_string();
    let b = grid_ok(&urls, &["tokens", "create", "--tenant", "b"]).trim().to_string();
    common::ok(as_tenant(
        &urls,
        &a,
        &["deploy", "spin", guests::HOSTILE_SCORER, "-c", "mode=loop", "--timeout", "500ms"],
    ));
    common::ok(as_tenant(&urls, &b, &["deploy", "quick", guests::HOSTILE_SCORER, "-c", "mode=ok"]));
    let flags = ["--max-calls", "1", "--max-concurrency", "8", "--queue-timeout", "30s"];
    let node = Node::start_with(&urls, &replicas.dir.path().join("node"), &flags);
    let spin = format!("{}/v1/fn/a/spin", node.url);
    let quick = format!("{}/v1/fn/b/quick", node.url);
    let deadline = Instant::now() + Duration::from_secs(30);
    while timed_call(quick.clone(), b.clone()).await.0 != 200 || timed_call(spin.clone(), a.clone()).await.0 != 504 {
        assert!(Instant::now() < deadline, "the node never served both functions");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let a_calls: Vec<_> = (0..4).map(|_| tokio::spawn(timed_call(spin.clone(), a.clone()))).collect();
    // One of A's calls holds the node's only slot and three wait for it
    // before B's call is sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = common::http().get(format!("{}/metrics", node.url)).send().await.expect("metrics");
        let text = metrics.text().await.expect("text");
        let gauge = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok());
        match (gauge("wasmgrid_node_calls_running "), gauge("wasmgrid_node_calls_waiting ")) {
            (Some(1), Some(3)) => break,
            (Some(running), _) => assert!(running <= 1, "{running} calls hold one slot:\n{text}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "A's calls never all arrived:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (b_status, b_done) = timed_call(quick.clone(), b.clone()).await;
    assert_eq!(b_status, 200);
    let mut a_done = Vec::new();
    for call in a_calls {
        let (status, done) = call.await.expect("A's call");
        assert_eq!(status, 504, "A's calls run to their timeout");
        a_done.push(done);
    }
    a_done.sort();
    // First come first served would put B's call after all four of A's.
    assert!(
        b_done < a_done[1],
        "B's call was answered after {} of A's calls that arrived before it",
        a_done.iter().filter(|d| **d < b_done).count()
    );
}

/// (scheduling policy, nice) of each of process `pid`'s batch threads.
fn batch_threads(pid: u32) -> Vec<(u64, i64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("threads").flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("wasmgrid-task") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).expect("stat");
        // Fields after the command name, which ends with the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
        // nice is field 19 and policy field 41 of stat(5); these start at 3.
        found.push((fields[41 - 3].parse().expect("policy"), fields[19 - 3].parse().expect("nice")));
    }
    found
}

/// Batch attempts run below calls: at `nice` 10 by default, under
/// `SCHED_IDLE` with `--task-nice idle`, and a job still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_threads_run_below_calls() {
    const SCHED_OTHER: u64 = 0;
    const SCHED_IDLE: u64 = 5;
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let plain = Node::start_with(&urls, &replicas.dir.path().join("plain"), &["--task-slots", "2"]);
    let idle =
        Node::start_with(&urls, &replicas.dir.path().join("idle"), &["--task-slots", "2", "--task-nice", "idle"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (plain_threads, idle_threads) = loop {
        let found = (batch_threads(plain.pid()), batch_threads(idle.pid()));
        if found.0.len() == 2 && found.1.len() == 2 {
            break found;
        }
        assert!(Instant::now() < deadline, "the nodes' batch threads never started: {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(plain_threads, vec![(SCHED_OTHER, 10); 2]);
    assert!(idle_threads.iter().all(|(policy, _)| *policy == SCHED_IDLE), "{idle_threads:?}");
    let bad = common::wasmgrid().args(["node", "--task-nice", "20", "--control-plane", &urls]).output().expect("runs");
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("neither `idle` nor a nice increment from 0 to 19"), "{said}");

    // A job on both nodes completes.
    let model = format!("model={}", r#"{"features": ["amount"], "weights": [0.01], "bias": -1.0}"#);
    grid_ok(&urls, &["deploy", "score", guests::LOGREG, "-c", &model]);
    let input = replicas.dir.path().join("input");
    std::fs::create_dir_all(&input).expect("input");
    for f in 0..8 {
        let rows: Vec<Value> = (0..10).map(|i| json!({"id": f * 10 + i, "amount": (f * 10 + i) as f64})).collect();
        common::write_jsonl(&input.join(format!("part-{f}.jsonl")), &rows);
    }
    let out = replicas.dir.path().join("out");
    let (input, out_dir) = (input.display().to_string(), out.display().to_string());
    grid_ok(&urls, &["job", "submit", "score", "--input", &input, "--output", &out_dir, "--wait"]);
    assert_eq!(common::scores_in(&out).len(), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_metered_per_tenant_and_function() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let model = format!("model={}", r#"{"features": ["amount"], "weights": [0.01], "bias": -1.0}"#);
    let mut tokens = Vec::new();
    for tenant in ["u1", "u2"] {
        grid_ok(&urls, &["tenants", "create", tenant]);
        let token = grid_ok(&urls, &["tokens", "create", "--tenant", tenant]).trim().to_string();
        common::ok(as_tenant(&urls, &token, &["deploy", "score", guests::LOGREG, "-c", &model]));
        tokens.push(token);
    }
    let node = Node::start(&urls, &replicas.dir.path().join("node"));
    let post = |tenant: &str, token: &str, body: &'static str| {
        let (url, token) = (format!("{}/v1/fn/{tenant}/score", node.url), token.to_string());
        async move {
            let sent = reqwest::Client::new().post(url).bearer_auth(token).body(body).send();
            sent.await.map(|r| r.status().as_u16()).unwrap_or(0)
        }
    };
    let row = r#"{"amount": 100.0}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while post("u1", &tokens[0], row).await != 200 || post("u2", &tokens[1], row).await != 200 {
        assert!(Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Besides the two calls above: u1 five more and one malformed, u2 one more.
    for _ in 0..5 {
        assert_eq!(post("u1", &tokens[0], row).await, 200);
    }
    assert_eq!(post("u1", &tokens[0], "{not json").await, 400);
    assert_eq!(post("u2", &tokens[1], row).await, 200);

    let usage = |token: &str| -> Value {
        serde_json::from_slice(&as_tenant(&urls, token, &["usage", "--json"]).stdout).expect("usage json")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (u1, u2) = loop {
        let (u1, u2) = (usage(&tokens[0]), usage(&tokens[1]));
        if u1["functions"][0]["calls"] == 7 && u2["functions"][0]["calls"] == 2 {
            break (u1, u2);
        }
        assert!(Instant::now() < deadline, "usage never caught up: {u1} {u2}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let f = &u1["functions"][0];
    assert_eq!((f["tenant"].as_str(), f["function"].as_str()), (Some("u1"), Some("score")), "{u1}");
    assert_eq!(f["errors"], 1, "{u1}");
    assert_eq!(f["bytes_in"].as_u64(), Some(6 * row.len() as u64 + "{not json".len() as u64), "{u1}");
    assert!(f["bytes_out"].as_u64() > Some(6 * row.len() as u64), "{u1}");
    assert!(f["cpu_us"].as_u64() > Some(0) && f["wall_us"].as_u64() > f["cpu_us"].as_u64(), "{u1}");
    assert_eq!(u2["functions"].as_array().map(Vec::len), Some(1), "u2 sees its own function only: {u2}");

    // Batch jobs count too (run for u1 by the admin, over a local file).
    let input = replicas.dir.path().join("rows.jsonl");
    let rows: Vec<Value> = (0..40).map(|i| json!({"id": i, "amount": i as f64})).collect();
    common::write_jsonl(&input, &rows);
    let out = replicas.dir.path().join("out").display().to_string();
    let input = input.display().to_string();
    grid_ok(&urls, &["job", "submit", "score", "--tenant", "u1", "--input", &input, "--output", &out, "--wait"]);
    let jobs = &usage(&tokens[0])["jobs"];
    assert_eq!(
        (jobs["jobs"].as_u64(), jobs["records_in"].as_u64(), jobs["rows_out"].as_u64()),
        (Some(1), Some(40), Some(40))
    );
    assert_eq!(usage(&tokens[1])["jobs"]["jobs"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_logs_are_kept_per_function_and_shown_to_their_tenant_only() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    grid_ok(&urls, &["tenants", "create", "owner"]);
    grid_ok(&urls, &["tenants", "create", "other"]);
    let token = |args: &[&str]| grid_ok(&urls, args).trim().to_string();
    let owner = token(&["tokens", "create", "--tenant", "owner"]);
    let reader = token(&["tokens", "create", "--tenant", "owner", "--read-only"]);
    let caller = token(&["tokens", "create", "--tenant", "owner", "--invoke-only"]);
    let other = token(&["tokens", "create", "--tenant", "other"]);
    common::ok(as_tenant(&urls, &owner, &["deploy", "talk", guests::HOSTILE_SCORER, "-c", "mode=chatty"]));
    common::ok(as_tenant(&urls, &owner, &["deploy", "fail", guests::HOSTILE_SCORER, "-c", "mode=err"]));
    let node = Node::start(&urls, &replicas.dir.path().join("node"));
    for (name, want) in [("talk", "\"ok\":1.0"), ("talk", "\"ok\":1.0"), ("fail", "422")] {
        // `invoke` waits while the node loads a function, not for the node.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (stdout, stderr) = loop {
            let out = as_tenant(&urls, &caller, &["invoke", name, "--data", r#"{"x": 1.0}"#]);
            let (stdout, stderr) = common::text(&out);
            if !stderr.contains("no node is alive") || Instant::now() > deadline {
                break (stdout, stderr);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(stdout.contains(want) || stderr.contains(want), "{name}: {stdout} {stderr}");
    }
    let logs = |token: &str, name: &str| as_tenant(&urls, token, &["logs", name]);
    let shown = common::ok_stdout(logs(&owner, "talk"));
    assert_eq!(shown.matches("info  scoring 1 rows").count(), 2, "{shown}");
    assert_eq!(shown.matches("warn  feature `x` is missing; using 0").count(), 2, "{shown}");
    assert_eq!(shown.matches("stdout to stdout").count(), 2, "{shown}");
    assert_eq!(shown.matches("stderr to stderr").count(), 2, "{shown}");
    assert!(shown.lines().all(|l| l.contains(" dev ") || l.contains(" v1 ")), "{shown}");
    let failed = common::ok_stdout(logs(&reader, "fail"));
    assert!(failed.contains("failed: function returned an error: the model refuses these rows"), "{failed}");
    // An invoke-only token may not read them; another tenant learns nothing.
    assert!(common::fails(logs(&caller, "talk")).contains("403"));
    let theirs = common::fails(logs(&other, "talk"));
    assert!(theirs.contains("no node has served `other/talk`"), "{theirs}");
    let raw = reqwest::Client::new()
        .get(format!("{}/v1/logs/owner/talk", node.url))
        .bearer_auth(&other)
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.status(), 404);
    assert!(!raw.text().await.expect("body").contains("scoring"));

    // A job's attempts keep theirs on the node that ran them.
    let input = replicas.dir.path().join("input");
    std::fs::create_dir_all(&input).expect("input");
    for f in 0..3 {
        common::write_jsonl(&input.join(format!("part-{f}.jsonl")), &[json!({"x": 1.0}), json!({"x": 2.0})]);
    }
    let one = replicas.dir.path().join("one.jsonl");
    common::write_jsonl(&one, &[json!({"x": 1.0})]);
    let job = |function: &str, input: &std::path::Path| {
        let output = replicas.dir.path().join(format!("out-{function}")).display().to_string();
        let input = input.display().to_string();
        let args = ["job", "submit", function, "--tenant", "owner", "--input", &input, "--output", &output];
        let id = grid_ok(&urls, &[&args[..], &["--max-attempts", "2"]].concat()).trim().to_string();
        // `wait` fails with the job; the logs are what is checked.
        grid_cli(&urls, &["job", "wait", &id, "--tenant", "owner"]);
        id
    };
    let talked = job("talk", &input);
    let shown = common::ok_stdout(as_tenant(&urls, &reader, &["job", "logs", &talked]));
    assert!(shown.contains("no task failed"), "{shown}");
    assert_eq!(shown.matches("info  scoring 2 rows").count(), 3, "{shown}");
    assert_eq!(shown.matches("warn  feature `x` is missing; using 0").count(), 3, "{shown}");
    assert_eq!(shown.matches("stdout to stdout").count(), 3, "{shown}");
    assert_eq!(shown.matches("stderr to stderr").count(), 3, "{shown}");
    for task in 0..3 {
        assert!(shown.contains(&format!(" map{task}#")), "task {task}: {shown}");
    }
    // One task, so that both its attempts run before the job fails.
    let failed = job("fail", &one);
    let shown = common::ok_stdout(as_tenant(&urls, &owner, &["job", "logs", &failed]));
    assert_eq!(shown.matches("failed: function returned an error: the model refuses these rows").count(), 2, "{shown}");
    let json: Value =
        serde_json::from_str(&common::ok_stdout(as_tenant(&urls, &owner, &["job", "logs", &failed, "--json"])))
            .expect("json");
    assert_eq!(json["attempts"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json["tasks"].as_array().map(Vec::len), Some(1), "{json}");
    // Nor are a job's logs shown to another tenant, or to an invoke-only token.
    assert!(common::fails(as_tenant(&urls, &other, &["job", "logs", &talked])).contains("404"));
    assert!(common::fails(as_tenant(&urls, &caller, &["job", "logs", &talked])).contains("403"));
    let raw = reqwest::Client::new()
        .get(format!("{}/v1/jobs/owner/{talked}/logs", node.url))
        .bearer_auth(&other)
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.status(), 404);
    assert!(!raw.text().await.expect("body").contains("scoring"));
}
