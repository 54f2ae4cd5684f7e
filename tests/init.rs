//! Init once, call fresh: a function version's `init` runs once per node,
//! every call starts from the memory it left (never from another call's
//! writes), and an `init` that fails refuses the deploy while the active
//! version keeps serving. Real control-plane and node processes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmgrid_api::{ApiError, Client, DeployRequest};
use wasmgrid_test_artifacts as guests;

use common::grid::{Node, Replicas};

struct Grid {
    replicas: Replicas,
    nodes: Vec<Node>,
    admin: Client,
}

impl Grid {
    async fn start(nodes: usize) -> Grid {
        let replicas = Replicas::start(1, 1000);
        replicas.wait_leader(Duration::from_secs(15)).await;
        let admin = replicas.client(1);
        let nodes =
            (0..nodes).map(|i| Node::start(&replicas.urls(), &replicas.dir.path().join(format!("node-{i}")))).collect();
        Grid { replicas, nodes, admin }
    }

    async fn deploy(&self, name: &str, config: &[(&str, &str)]) -> Result<u64, ApiError> {
        let wasm = std::fs::read(guests::INIT_STATE).expect("init-state component");
        let module = self.admin.upload_module(wasm).await.expect("upload").sha256;
        let request = DeployRequest {
            module,
            memory: Some(32 << 20),
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            ..DeployRequest::default()
        };
        self.admin.deploy(name, &request).await.map(|f| f.active)
    }

    /// One call through `node`: the row it answered.
    async fn call(&self, node: &Node, name: &str) -> Value {
        let response = common::http()
            .post(format!("{}/v1/fn/default/{name}", node.url))
            .json(&json!({"rows": [{"x": 1.0}]}))
            .send()
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(status, 200, "{body}");
        body["rows"][0].clone()
    }

    /// Waits until every node answers `name` with `start`.
    async fn wait_start(&self, name: &str, start: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in &self.nodes {
            loop {
                let answered = common::http()
                    .post(format!("{}/v1/fn/default/{name}", node.url))
                    .json(&json!({"rows": [{"x": 1.0}]}))
                    .send()
                    .await;
                if let Ok(r) = answered
                    && let Ok(body) = r.json::<Value>().await
                    && body["rows"][0]["start"] == json!(start)
                {
                    break;
                }
                assert!(Instant::now() < deadline, "{} never served start={start}", node.url);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_runs_once_per_version_per_node_and_every_call_starts_from_its_image() {
    let grid = Grid::start(2).await;
    assert_eq!(grid.deploy("state", &[("start", "7")]).await.expect("deploy v1"), 1);
    grid.wait_start("state", 7.0).await;
    for node in &grid.nodes {
        for _ in 0..20 {
            let row = grid.call(node, "state").await;
            // `init` left 7; the call before this one counted itself in its
            // own instance, which this one never sees.
            assert_eq!(row["start"], json!(7.0), "{row}");
            assert_eq!(row["calls"], json!(1.0), "{row}");
        }
        assert_eq!(common::node_metric(&node.url, "wasmgrid_function_inits_total").await, 1.0, "{}", node.url);
    }

    // A new version is initialised again, once, on each node.
    assert_eq!(grid.deploy("state", &[("start", "8")]).await.expect("deploy v2"), 2);
    grid.wait_start("state", 8.0).await;
    for node in &grid.nodes {
        for _ in 0..5 {
            let row = grid.call(node, "state").await;
            assert_eq!((row["start"].clone(), row["calls"].clone()), (json!(8.0), json!(1.0)), "{row}");
        }
        assert_eq!(common::node_metric(&node.url, "wasmgrid_function_inits_total").await, 2.0, "{}", node.url);
    }

    // Rolling back to a version a node already initialised runs nothing again.
    grid.admin.rollback("state", 1).await.expect("rollback");
    grid.wait_start("state", 7.0).await;
    for node in &grid.nodes {
        assert_eq!(common::node_metric(&node.url, "wasmgrid_function_inits_total").await, 2.0, "{}", node.url);
    }
    // Calls log nothing of `init`: it did not run in them.
    let logs = common::http()
        .get(format!("{}/v1/logs/default/state", grid.nodes[0].url))
        .send()
        .await
        .expect("logs")
        .text()
        .await
        .expect("text");
    assert!(!logs.contains("init ran"), "{logs}");
    drop(grid.replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_that_fails_refuses_the_deploy_and_the_active_version_keeps_serving() {
    let grid = Grid::start(1).await;
    grid.deploy("model", &[("start", "7")]).await.expect("deploy v1");
    grid.wait_start("model", 7.0).await;

    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("init", "error")], "the model in config `start` is not valid"),
        (&[("init", "trap")], "init panicked while loading the model"),
        (&[("init", "grow"), ("mib", "64")], "memory limit of 33554432 bytes"),
        (&[("init", "print")], "host resources still open"),
    ];
    for (config, expected) in cases {
        match grid.deploy("model", config).await {
            Err(ApiError::Http { status, code, message }) => {
                assert_eq!((status, code.as_str()), (422, "init_failed"), "{message}");
                assert!(message.contains(expected), "{config:?}: {message}");
                assert!(message.starts_with("init failed") || message.contains("init returned"), "{message}");
            }
            other => panic!("{config:?}: the deploy was not refused: {other:?}"),
        }
        // Still version 1, still serving.
        let function = grid.admin.function("model").await.expect("function");
        assert_eq!((function.active, function.versions.len()), (1, 1));
        let row = grid.call(&grid.nodes[0], "model").await;
        assert_eq!(row["start"], json!(7.0), "{row}");
    }

    // An `init` that fits its memory limit keeps what it allocated.
    grid.deploy("model", &[("init", "grow"), ("mib", "4"), ("start", "9")]).await.expect("deploy v2");
    grid.wait_start("model", 9.0).await;
    let row = grid.call(&grid.nodes[0], "model").await;
    assert_eq!(row["held_mib"], json!(4.0), "{row}");
}
