//! The hostile-guest suite on a real grid (a control-plane replica and a
//! node, as processes): one test per way a guest can misbehave. Each one
//! checks the clear error the caller gets, that the node stays healthy, and
//! that a well-behaved function called all along (another tenant's
//! `logreg`) kept answering every call.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use serde_json::{Value, json};
use wasmgrid_api::{Client, DeployRequest, Role, TokenRequest};
use wasmgrid_test_artifacts as guests;

const MODEL: &str = r#"{"features": ["amount"], "weights": [0.01], "bias": -1.0}"#;

/// A deployment's memory limit and timeout.
#[derive(Clone, Copy)]
struct Limits {
    memory: u64,
    timeout_ms: u64,
}

/// 32 MiB and 300 ms: tight enough that a hostile guest meets them quickly.
const TIGHT: Limits = Limits { memory: 32 << 20, timeout_ms: 300 };

/// A grid with the well-behaved function `steady` of tenant `bystander`
/// served, and the admin's client for the `default` tenant.
struct Grid {
    replicas: Replicas,
    node: Node,
    admin: Client,
    bystander: String,
}

impl Grid {
    async fn start() -> Grid {
        Grid::start_with(&[]).await
    }

    async fn start_with(node_flags: &[&str]) -> Grid {
        let replicas = Replicas::start(1, 1000);
        replicas.wait_leader(Duration::from_secs(15)).await;
        let admin = replicas.client(1);
        admin.create_tenant("bystander").await.expect("tenant");
        let request = TokenRequest { tenant: Some("bystander".into()), role: Role::Full };
        let bystander = admin.create_token(&request).await.expect("token").token;
        let node = Node::start_with(&replicas.urls(), &replicas.dir.path().join("node"), node_flags);
        Grid { replicas, node, admin, bystander }
    }

    fn client_of(&self, token: &str) -> Client {
        Client::new(&[self.replicas.url(1)], Duration::from_secs(30)).expect("client").with_token(Some(token.into()))
    }

    /// Deploys `wasm` as `client`'s function `name` with [`TIGHT`] limits.
    async fn deploy(&self, client: &Client, name: &str, wasm: &str, config: &[(&str, &str)]) -> u64 {
        self.deploy_with(client, name, wasm, config, TIGHT).await
    }

    async fn deploy_with(
        &self,
        client: &Client,
        name: &str,
        wasm: &str,
        config: &[(&str, &str)],
        limits: Limits,
    ) -> u64 {
        self.try_deploy(client, name, wasm, config, limits).await.expect("deploy")
    }

    async fn try_deploy(
        &self,
        client: &Client,
        name: &str,
        wasm: &str,
        config: &[(&str, &str)],
        limits: Limits,
    ) -> Result<u64, wasmgrid_api::ApiError> {
        let module = client.upload_module(std::fs::read(wasm).expect("wasm")).await.expect("upload").sha256;
        let request = DeployRequest {
            module,
            memory: Some(limits.memory),
            timeout_ms: Some(limits.timeout_ms),
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            ..DeployRequest::default()
        };
        client.deploy(name, &request).await.map(|f| f.active)
    }

    /// Deploys the hostile scorer as `hostile-MODE` with `limits`, and `steady`.
    async fn hostile(&self, mode: &str, extra: &[(&str, &str)], limits: Limits) -> String {
        let mut config = vec![("mode", mode)];
        config.extend_from_slice(extra);
        let name = format!("hostile-{mode}");
        self.deploy_with(&self.admin, &name, guests::HOSTILE_SCORER, &config, limits).await;
        self.steady().await;
        self.wait_served("default", &name).await;
        name
    }

    /// Deploys the bystander's `steady` and waits until the node serves it.
    async fn steady(&self) {
        let theirs = self.client_of(&self.bystander);
        if theirs.function("steady").await.is_err() {
            self.deploy(&theirs, "steady", guests::LOGREG, &[("model", MODEL)]).await;
        }
        self.wait_served("bystander", "steady").await;
    }

    async fn wait_served(&self, tenant: &str, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = common::http().get(format!("{}/v1/routes", self.node.url)).send().await
                && let Ok(table) = r.json::<wasmgrid_api::RouteTable>().await
                && table.routes.iter().any(|r| r.tenant == tenant && r.name == name)
            {
                return;
            }
            assert!(Instant::now() < deadline, "the node never served {tenant}/{name}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Calls the admin's function `name` with one row: (status, body).
    async fn call(&self, name: &str) -> (u16, Value) {
        let response = common::http()
            .post(format!("{}/v1/fn/default/{name}", self.node.url))
            .json(&json!({"rows": [{"amount": 5.0}]}))
            .send()
            .await
            .expect("an answer, never a dropped connection");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Calls `steady` every 10 ms until the returned guard is finished.
    fn traffic(&self) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let url = format!("{}/v1/fn/bystander/steady", self.node.url);
        let token = self.bystander.clone();
        let (flag, counter) = (stop.clone(), count.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let status = match http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"rows": [{"amount": 100.0}]}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or_default();
                        if status == 200 && body["rows"][0]["score"].as_f64() != Some(0.5) { 999 } else { status }
                    }
                    Err(_) => 0,
                };
                answers.push((status, started.elapsed()));
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            answers
        });
        Traffic { stop, count, task }
    }

    /// The node answers its health check and `steady` still scores.
    async fn assert_healthy(&self) {
        let health = common::http().get(format!("{}/v1/health", self.node.url)).send().await.expect("health");
        assert_eq!(health.status(), 200);
        self.traffic().finish(3).await;
    }
}

/// Background calls of the bystander's function.
struct Traffic {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<(u16, Duration)>>,
}

impl Traffic {
    /// Stops, once at least `min` calls were made, and asserts every call
    /// was answered 200 with the right score.
    async fn finish(self, min: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count.load(Ordering::Relaxed) < min && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let answers = self.task.await.expect("traffic");
        let bad: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
        assert!(bad.is_empty(), "the bystander's calls failed meanwhile: {bad:?}");
        assert!(answers.len() >= min, "only {} bystander calls", answers.len());
        let slowest = answers.iter().map(|a| a.1).max().unwrap_or_default();
        println!("bystander: {} calls, all 200, slowest {:.1} ms", answers.len(), slowest.as_secs_f64() * 1e3);
    }
}

/// Deploys `mode`, calls it while the bystander is called, and checks the
/// answer's status and error code; returns the error message.
async fn contained(mode: &str, extra: &[(&str, &str)], status: u16, code: &str) -> String {
    contained_in(mode, extra, TIGHT, status, code).await
}

async fn contained_in(mode: &str, extra: &[(&str, &str)], limits: Limits, status: u16, code: &str) -> String {
    let grid = Grid::start().await;
    let name = grid.hostile(mode, extra, limits).await;
    let traffic = grid.traffic();
    let started = Instant::now();
    let (got, body) = grid.call(&name).await;
    let took = started.elapsed();
    assert_eq!(got, status, "{mode}: {body}");
    assert_eq!(body["error"]["code"], code, "{mode}: {body}");
    // Then four at once, filling the function's slots on this node: each
    // gets the same answer, and the bystander's calls go on meanwhile.
    let burst = (0..4).map(|_| grid.call(&name));
    for (again, body) in futures_util::future::join_all(burst).await {
        assert_eq!(again, status, "{mode}, in a burst: {body}");
    }
    traffic.finish(3).await;
    grid.assert_healthy().await;
    println!("{mode}: {status} {code} in {:.0} ms: {}", took.as_secs_f64() * 1e3, body["error"]["message"]);
    body["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_times_out() {
    let message = contained("loop", &[], 504, "timeout").await;
    assert!(message.contains("300ms") || message.contains("time"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_grow_bomb_hits_the_memory_limit() {
    let message = contained("grow", &[], 500, "memory_limit").await;
    assert!(message.contains("memory"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_overflows_the_stack() {
    contained("recurse", &[], 500, "stack_overflow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_copy_at_the_memory_cap_traps_out_of_bounds() {
    // 512 pages: exactly the 32 MiB limit.
    let message = contained("copy-at-cap", &[("pages", "512")], 500, "trap").await;
    assert!(message.contains("out of bounds"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_output_hits_the_output_limit() {
    // Memory enough to build the 64 MiB result, and time enough to build
    // four at once on a busy machine; the output limit stops each.
    let roomy = Limits { memory: 512 << 20, timeout_ms: 10_000 };
    contained_in("huge-result", &[], roomy, 500, "output_limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_spam_is_bounded_and_the_call_still_answers() {
    let grid = Grid::start().await;
    // A million log lines take longer than 300 ms here.
    let patient = Limits { timeout_ms: 20_000, ..TIGHT };
    let name = grid.hostile("log-spam", &[], patient).await;
    let traffic = grid.traffic();
    let (status, body) = grid.call(&name).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["ok"], 1.0, "{body}");
    traffic.finish(3).await;
    grid.assert_healthy().await;
    let log = std::fs::read_to_string(grid.replicas.dir.path().join("node.log")).expect("node log");
    assert!(log.len() < 1 << 20, "the node's log grew by {} bytes", log.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_reports_the_guest_message() {
    let message = contained("trap", &[("message", "the model file is corrupt")], 500, "trap").await;
    assert!(message.contains("the model file is corrupt"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_resource_handle_traps() {
    let message = contained("bad-handle", &[], 500, "trap").await;
    assert!(message.contains("handle"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_outside_memory_passed_to_the_host_traps() {
    let message = contained("bad-length", &[], 500, "trap").await;
    assert!(message.contains("out of bounds"), "{message}");
}

/// Deploys `wasm` as `name`, which must be refused with 422 `init_failed`
/// (its `init` is run before the deploy is accepted), while the bystander's
/// function keeps serving; the refusal's message.
async fn refused_at_deploy(name: &str, wasm: &str) -> String {
    let grid = Grid::start().await;
    grid.steady().await;
    let traffic = grid.traffic();
    let refused = grid.try_deploy(&grid.admin, name, wasm, &[], TIGHT).await;
    let message = match refused {
        Err(wasmgrid_api::ApiError::Http { status: 422, code, message }) if code == "init_failed" => message,
        other => panic!("{name} was not refused at deploy: {other:?}"),
    };
    assert!(grid.admin.function(name).await.is_err(), "no version of {name} was stored");
    traffic.finish(3).await;
    grid.assert_healthy().await;
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_traps_while_starting_is_refused_at_deploy_with_its_message() {
    let message = refused_at_deploy("init-trap", guests::INIT_TRAP).await;
    assert!(message.contains("the model failed to load at start-up"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_too_big_to_instantiate_is_refused_at_deploy() {
    let message = refused_at_deploy("big-start", guests::BIG_START).await;
    assert!(message.contains("memory"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_a_valid_component_are_refused_at_upload() {
    let grid = Grid::start().await;
    grid.steady().await;
    let traffic = grid.traffic();
    let logreg = std::fs::read(guests::LOGREG).expect("logreg");
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("text".into(), b"def score(rows): return rows".to_vec()),
        ("a core module".into(), b"\0asm\x01\0\0\0".to_vec()),
    ];
    for cut in [8, 100, logreg.len() / 2, logreg.len() - 1] {
        cases.push((format!("truncated to {cut} bytes"), logreg[..cut].to_vec()));
    }
    let mut flipped = logreg.clone();
    flipped[logreg.len() / 3] ^= 0xff;
    cases.push(("one byte flipped".into(), flipped));
    for (what, bytes) in cases {
        let e = grid.admin.upload_module(bytes).await.expect_err(&what);
        assert_eq!(e.status(), Some(400), "{what}: {e}");
        println!("{what}: {e}");
    }
    traffic.finish(3).await;
    grid.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_what_no_host_provides_is_refused_at_upload() {
    let grid = Grid::start().await;
    grid.steady().await;
    let traffic = grid.traffic();
    let e = grid.admin.upload_module(std::fs::read(guests::MISSING_IMPORT).expect("wasm")).await.expect_err("refused");
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("test:hostile/vault"), "the import is named: {e}");
    traffic.finish(3).await;
    grid.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_instance_slot_never_shows_one_tenants_memory_to_another() {
    let grid = Grid::start_with(&["--max-concurrency", "1"]).await;
    grid.steady().await;
    let secret = ("secret", "5ec2e7c0ffee1234");
    grid.admin.create_tenant("victim").await.expect("tenant");
    grid.admin.create_tenant("snoop").await.expect("tenant");
    let token = |tenant: &str| TokenRequest { tenant: Some(tenant.into()), role: Role::Full };
    let victim = grid.client_of(&grid.admin.create_token(&token("victim")).await.expect("token").token);
    let snoop = grid.client_of(&grid.admin.create_token(&token("snoop")).await.expect("token").token);
    // The same module for both: the pool hands one module's slots out again.
    grid.deploy(&victim, "keep", guests::HOSTILE_SCORER, &[("mode", "secret"), secret]).await;
    grid.deploy(&snoop, "look", guests::HOSTILE_SCORER, &[("mode", "scan"), secret]).await;
    grid.deploy(&grid.admin, "both", guests::HOSTILE_SCORER, &[("mode", "secret-then-scan"), secret]).await;
    for (tenant, name) in [("victim", "keep"), ("snoop", "look"), ("default", "both")] {
        grid.wait_served(tenant, name).await;
    }
    let call = |tenant: &'static str, name: &'static str| {
        let url = format!("{}/v1/fn/{tenant}/{name}", grid.node.url);
        async move {
            let body: Value = common::http()
                .post(url)
                .json(&json!({"rows": [{"x": 1.0}]}))
                .send()
                .await
                .expect("answer")
                .json()
                .await
                .expect("json");
            body["rows"][0]["found"].as_f64().unwrap_or_else(|| panic!("{tenant}/{name}: {body}"))
        }
    };
    // The scan finds the secret when it is there: it is not blind.
    let seen = call("default", "both").await;
    assert!(seen >= (4 << 20) as f64 / 8.0, "the scan saw {seen} copies of the secret it just wrote");
    for round in 0..20 {
        call("victim", "keep").await;
        assert_eq!(call("snoop", "look").await, 0.0, "round {round}: another tenant's memory was visible");
    }
    grid.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_over_the_pool_limits_is_refused_at_upload_and_costs_others_nothing() {
    let grid = Grid::start().await;
    grid.steady().await;
    let traffic = grid.traffic();
    let before = common::node_metric(&grid.node.url, "wasmgrid_components_compiled_total").await;
    let e = grid
        .admin
        .upload_module(wat::parse_str(guests::BIG_TABLE_WAT).expect("wat"))
        .await
        .expect_err("over the limit");
    assert_eq!(e.status(), Some(422), "{e}");
    assert!(e.to_string().contains("a table of 100000 elements is over the limit of 20000 elements per table"), "{e}");
    // Another tenant's deploys compile their own modules on the node, and
    // nothing else.
    let theirs = grid.client_of(&grid.bystander);
    for (name, wasm) in [("map", guests::WORDCOUNT_MAP), ("reduce", guests::WORDCOUNT_REDUCE)] {
        grid.deploy(&theirs, name, wasm, &[]).await;
        grid.wait_served("bystander", name).await;
    }
    // Each is compiled twice: instrumented to run its `init`, then the image
    // `init` left.
    let log = std::fs::read_to_string(grid.replicas.dir.path().join("node.log")).unwrap_or_default();
    assert_eq!(
        common::node_metric(&grid.node.url, "wasmgrid_components_compiled_total").await - before,
        4.0,
        "two deploys, two compiles each\n{log}"
    );
    traffic.finish(3).await;
    grid.assert_healthy().await;
}
