//! Placement on a real grid (a control-plane replica and three nodes, as
//! processes): functions load only on the nodes they are placed on, every
//! node's gateway answers every function (forwarding the calls of those
//! placed elsewhere), a killed node's functions move to the others, and a
//! node with a small code cache keeps serving what is placed on it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use futures_util::StreamExt;
use serde_json::{Value, json};
use wasmgrid_api::{Client, DeployRequest, Replicas as Placed};
use wasmgrid_test_artifacts as guests;

const FUNCTIONS: usize = 1000;

/// Deploys `n` functions `f0000`... of one module, each answering its own number.
async fn deploy_echoes(client: &Client, n: usize) {
    let module = client.upload_module(std::fs::read(guests::ECHO_SCORER).expect("wasm")).await.expect("upload");
    let deploys = futures_util::stream::iter(0..n).map(|i| {
        let request = DeployRequest {
            module: module.sha256.clone(),
            config: BTreeMap::from([("value".into(), i.to_string())]),
            replicas: Some(Placed::Count(1)),
            ..DeployRequest::default()
        };
        async move {
            let deployed = client.deploy(&format!("f{i:04}"), &request).await.expect("deploy");
            assert_eq!(deployed.nodes.len(), 1, "placed on one node: {deployed:?}");
        }
    });
    deploys.buffer_unordered(16).collect::<Vec<()>>().await;
}

/// Calls `name` on the gateway at `node`: its `echo`, or the status and body.
async fn echo(node: &str, name: &str) -> Result<f64, (u16, String)> {
    let sent = common::http()
        .post(format!("{node}/v1/fn/default/{name}"))
        .json(&json!({"rows": [{"x": 1.0}]}))
        .send()
        .await
        .map_err(|e| (0, e.to_string()))?;
    let status = sent.status().as_u16();
    let body: Value = sent.json().await.map_err(|e| (status, e.to_string()))?;
    match body["rows"][0]["echo"].as_f64() {
        Some(v) if status == 200 => Ok(v),
        _ => Err((status, body.to_string())),
    }
}

/// Waits until the gateway at `node` answers (holds or forwards) `n` functions.
async fn wait_routed(node: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = String::new();
        if let Ok(r) = common::http().get(format!("{node}/v1/routes")).send().await
            && let Ok(table) = r.json::<wasmgrid_api::RouteTable>().await
        {
            let placed = table.routes.iter().filter(|r| r.nodes.len() == 1).count();
            if table.routes.len() == n && placed == n {
                return;
            }
            seen = format!("{} routes, {placed} placed on one node", table.routes.len());
        }
        assert!(Instant::now() < deadline, "{node} never routed {n} placed functions: {seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every function `names[i]` answers `i` through `node`; the failures.
async fn failures(node: &str, names: &[(usize, String)]) -> Vec<String> {
    let calls = futures_util::stream::iter(names).map(|(i, name)| async move {
        match echo(node, name).await {
            Ok(v) if v == *i as f64 => None,
            Ok(v) => Some(format!("{name} answered {v} through {node}")),
            Err((status, body)) => Some(format!("{name} through {node}: {status} {body}")),
        }
    });
    calls.buffer_unordered(32).filter_map(|f| async move { f }).collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_functions_placed_once_answer_through_every_node_and_survive_a_node_kill() {
    let replicas = Replicas::start(1, 100_000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let admin = replicas.client(1);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::start_with(
                &replicas.urls(),
                &replicas.dir.path().join(format!("node{i}")),
                &["--id", &format!("n{i}")],
            )
        })
        .collect();
    // All three alive before the deploys, so placement spreads over them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin
        .nodes()
        .await
        .map_or(0, |l| l.nodes.iter().filter(|n| n.state == wasmgrid_api::NodeState::Alive).count())
        < 3
    {
        assert!(Instant::now() < deadline, "three nodes never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    deploy_echoes(&admin, FUNCTIONS).await;
    println!("{FUNCTIONS} deploys, each placed: {:.1} s", started.elapsed().as_secs_f64());
    let placement = admin.functions().await.expect("functions").functions;
    assert_eq!(placement.len(), FUNCTIONS);
    for node in &nodes {
        wait_routed(&node.url, FUNCTIONS).await;
    }

    // Each node loads only what is placed on it: about a third, never over 40%.
    let mut held_total = 0.0;
    for (i, node) in nodes.iter().enumerate() {
        let placed_here = placement.iter().filter(|f| f.nodes == [format!("n{i}")]).count();
        let held = common::node_metric(&node.url, "wasmgrid_functions_held ").await;
        let elsewhere = common::node_metric(&node.url, "wasmgrid_functions_placed_elsewhere ").await;
        let loads = common::node_metric(&node.url, "wasmgrid_function_loads_total ").await;
        let compiled = common::node_metric(&node.url, "wasmgrid_components_compiled_total ").await;
        println!(
            "node n{i}: {placed_here} placed, {held} held, {elsewhere} forwarded, {loads} loads, {compiled} compiles"
        );
        assert_eq!(held as usize, placed_here, "n{i} holds exactly what is placed on it");
        assert_eq!((held + elsewhere) as usize, FUNCTIONS);
        assert!(held <= 0.4 * FUNCTIONS as f64, "n{i} holds {held} of {FUNCTIONS}");
        assert!(loads <= 0.4 * FUNCTIONS as f64, "n{i} loaded {loads} of {FUNCTIONS}");
        held_total += held;
    }
    assert_eq!(held_total as usize, FUNCTIONS, "each function is held by exactly one node");

    // Every function answers its own number through every node's gateway.
    let names: Vec<(usize, String)> = (0..FUNCTIONS).map(|i| (i, format!("f{i:04}"))).collect();
    for node in &nodes {
        let failed = failures(&node.url, &names).await;
        assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    }
    let forwarded: f64 = {
        let mut sum = 0.0;
        for node in &nodes {
            let text = common::http()
                .get(format!("{}/metrics", node.url))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            sum += text
                .lines()
                .filter(|l| l.starts_with("wasmgrid_forwarded_calls_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    };
    assert_eq!(forwarded as usize, 2 * FUNCTIONS, "each node forwarded the calls of the functions it does not hold");

    // `kill -9` of n2: its functions answer again through n0 and n1.
    let orphans: Vec<(usize, String)> = placement
        .iter()
        .filter(|f| f.nodes == ["n2"])
        .map(|f| (f.name[1..].parse().expect("a number"), f.name.clone()))
        .collect();
    assert!(!orphans.is_empty());
    nodes[2].kill();
    let killed = Instant::now();
    // When the control plane moved them, and when each first answered
    // through both survivors (calls go only to those still failing).
    let watch_placement = async {
        loop {
            if let Ok(list) = admin.functions().await
                && list.functions.iter().all(|f| f.nodes != ["n2"])
            {
                return killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (survivors, _) = nodes.split_at(2);
    // A sample of them, tried every 20 ms through both survivors: when
    // they answer again. (Calling all of them in every round would measure
    // the rounds.) All are checked once they do.
    let sample: Vec<(usize, String)> = orphans.iter().step_by(orphans.len().div_ceil(10)).cloned().collect();
    let answer_again = async {
        while killed.elapsed() < Duration::from_secs(30) {
            let calls = futures_util::stream::iter(&sample).map(|(i, name)| async move {
                let (a, b) = tokio::join!(echo(&survivors[0].url, name), echo(&survivors[1].url, name));
                a == Ok(*i as f64) && b == Ok(*i as f64)
            });
            let answered: Vec<bool> = calls.buffer_unordered(32).collect().await;
            if answered.iter().all(|ok| *ok) {
                return (true, killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (false, killed.elapsed())
    };
    let watch_held = async {
        let mut at = Vec::new();
        for node in survivors {
            loop {
                let held = common::node_metric(&node.url, "wasmgrid_functions_held ").await;
                if held as usize >= 499 {
                    at.push(killed.elapsed().as_secs_f64());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        at
    };
    let (moved_at, (answered, recovered), held_at) = tokio::join!(watch_placement, answer_again, watch_held);
    assert!(answered, "the killed node's functions never answered again through the others");
    let mut failed = Vec::new();
    for node in survivors {
        failed.extend(failures(&node.url, &orphans).await);
    }
    assert!(
        failed.is_empty(),
        "{} calls failed after the move, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    println!(
        "{} functions of the killed node: placed elsewhere {:.2} s, held by the survivors {:.2} s and {:.2} s, \
         answering through both {:.2} s after the kill (all checked then)",
        orphans.len(),
        moved_at.as_secs_f64(),
        held_at[0],
        held_at[1],
        recovered.as_secs_f64()
    );
    // The liveness timeout (3 s after the last heartbeat), a placement pass
    // and a route table: with room for a slow machine.
    assert!(recovered < Duration::from_secs(10), "took {recovered:?}");
    let moved = admin.functions().await.expect("functions").functions;
    assert!(moved.iter().all(|f| f.nodes.len() == 1 && f.nodes[0] != "n2"), "nothing stays on the dead node");
    for (i, node) in survivors.iter().enumerate() {
        let held = common::node_metric(&node.url, "wasmgrid_functions_held ").await;
        assert_eq!(held as usize, moved.iter().filter(|f| f.nodes == [format!("n{i}")]).count());
    }
    let failed = failures(&survivors[0].url, &names).await;
    assert!(failed.is_empty(), "after the move: {:?}", &failed[..failed.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_small_code_cache_serves_every_function_placed_on_it() {
    const VERSIONS: usize = 12;
    const BUDGET: u64 = 2 << 20;
    let replicas = Replicas::start(1, 100_000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let admin = replicas.client(1);
    let node = Node::start_with(&replicas.urls(), &replicas.dir.path().join("node"), &["--code-cache", "2MiB"]);

    // Logistic regressions whose `init` parses their own model: each
    // version is an image of its own, so each takes its own room.
    let module = admin.upload_module(std::fs::read(guests::LOGREG).expect("wasm")).await.expect("upload").sha256;
    for i in 0..VERSIONS {
        let model = format!(r#"{{"features": ["x"], "weights": [{}], "bias": 0.0}}"#, i as f64 / 10.0);
        let request = DeployRequest {
            module: module.clone(),
            config: BTreeMap::from([("model".into(), model)]),
            ..DeployRequest::default()
        };
        admin.deploy(&format!("lr{i:02}"), &request).await.expect("deploy");
    }
    let score = |i: usize| 1.0 / (1.0 + (-(i as f64 / 10.0) * 2.0f64).exp());
    let deadline = Instant::now() + Duration::from_secs(60);
    let call = |i: usize| {
        let url = format!("{}/v1/fn/default/lr{i:02}", node.url);
        async move {
            let r = common::http().post(url).json(&json!({"rows": [{"x": 2.0}]})).send().await.expect("an answer");
            let status = r.status().as_u16();
            let body: Value = r.json().await.expect("json");
            (status, body)
        }
    };
    for i in 0..VERSIONS {
        loop {
            let (status, body) = call(i).await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "lr{i:02} never served: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let warm_rss = common::rss(node.pid());
    let compiled_before = common::node_metric(&node.url, "wasmgrid_components_compiled_total ").await;

    // Round after round over every version: each call is exact, and the
    // cache keeps evicting and loading again within its budget.
    let mut largest_cache = 0.0f64;
    for round in 0..10 {
        for i in 0..VERSIONS {
            let (status, body) = call(i).await;
            assert_eq!(status, 200, "round {round}, lr{i:02}: {body}");
            let got = body["rows"][0]["score"].as_f64().expect("a score");
            assert!((got - score(i)).abs() < 1e-12, "lr{i:02}: {got} against {}", score(i));
        }
        largest_cache = largest_cache.max(common::node_metric(&node.url, "wasmgrid_code_cache_bytes ").await);
    }
    let evictions = common::node_metric(&node.url, "wasmgrid_code_cache_evictions_total ").await;
    let loads = common::node_metric(&node.url, "wasmgrid_function_loads_total ").await;
    let compiled_after = common::node_metric(&node.url, "wasmgrid_components_compiled_total ").await;
    let grown = common::rss(node.pid()) as i64 - warm_rss as i64;
    println!(
        "{VERSIONS} versions, code cache {BUDGET} bytes: {evictions} evictions, {loads} loads, largest {largest_cache} bytes, RSS {} MB then {:+} MB",
        warm_rss >> 20,
        grown >> 20
    );
    assert!(evictions >= 100.0, "the cache evicted {evictions} times");
    assert!(loads > (VERSIONS * 5) as f64, "versions were loaded again: {loads}");
    assert_eq!(
        compiled_after, compiled_before,
        "a version loaded again comes from the compiled cache, not the compiler"
    );
    // One image over the budget at most: the one just loaded.
    assert!(largest_cache <= (BUDGET + (1 << 20)) as f64, "{largest_cache} bytes loaded");
    assert!(grown < 64 << 20, "the node's memory grew by {grown} bytes while evicting and loading again");
}
