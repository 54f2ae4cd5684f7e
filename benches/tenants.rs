//! Noisy-neighbour benchmark (`cargo bench --bench tenants`): on a grid of
//! one control-plane replica and one node (release `wasmgrid` processes on
//! this machine), tenant B serves steady per-request traffic (`hey`, fixed
//! rate, `logreg` on one row) while tenant A floods the gateway (`wrk`, 16
//! connections, its own `logreg`) and runs a 10,000-task batch job. B's
//! latency is measured alone and under A's load, in the same run, for two
//! set-ups of the same grid:
//!
//! - `shared`: no quotas, batch attempts at the same CPU priority as calls;
//! - `isolated`: A holds a quota of 2 calls at once per node, and batch
//!   attempts run at `SCHED_IDLE` priority (`--task-nice idle`; the
//!   node's default is `nice` 10).
//!
//! Target: B's p99 under A's load within 2x of B's p99 alone. On a machine
//! of two or more cores the node gets core 1 to itself (a one-core node)
//! and everything else (the control plane, `hey`, and `wrk` at `nice` 19,
//! as the flood's clients would be other machines) runs on core 0, so
//! what is measured is how the node shares its core between tenants, not
//! how the load generators share theirs; `PIN=0` turns that off. Single
//! runs are still noisy: each set-up runs `ROUNDS` times (default 3) and
//! the median ratio is reported beside every round's figures.
//! `NOISE=job` or `NOISE=flood` runs one half of A's load.

use std::path::Path;
use std::time::{Duration, Instant};

use wasmgrid_api::{Client, DeployRequest, JobRequest, Quotas, Role, TokenRequest};
use wasmgrid_test_artifacts as guests;

#[path = "../tests/common/mod.rs"]
mod common;

use common::grid::{Node, Replicas};

const MODEL: &str = r#"{"features": ["amount", "foreign"], "weights": [0.01, 2.0], "bias": -3.0}"#;
const B_RATE: f64 = 200.0;
const SECONDS: u32 = 6;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn deploy(client: &Client, name: &str, wasm: &str, config: &[(&str, &str)]) {
    let module = client.upload_module(std::fs::read(wasm).expect("wasm")).await.expect("upload").sha256;
    let request = DeployRequest {
        module,
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..DeployRequest::default()
    };
    client.deploy(name, &request).await.expect("deploy");
}

async fn wait_served(url: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = reqwest::Client::new().post(url).bearer_auth(token).body(r#"{"amount": 1, "foreign": 0}"#).send();
        if sent.await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the node runs on a core of its own (see the module docs).
/// Decided once, before the bench pins itself (which hides the other cores).
fn pinned() -> bool {
    static PINNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PINNED.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::var("PIN").map_or(cores >= 2, |p| p != "0")
    })
}

/// Moves every thread of process `pid` onto `cpus` (a `taskset` list);
/// threads it starts later inherit them.
fn pin(pid: u32, cpus: &str) {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("taskset runs (util-linux)");
    assert!(status.success(), "taskset -c {cpus} {pid} failed");
}

/// Lowers the CPU priority of every thread of process `pid` to `nice`;
/// threads it starts later inherit it.
fn renice(pid: u32, nice: i32) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    for task in tasks.flatten() {
        let status = std::process::Command::new("renice")
            .args(["-n", &nice.to_string(), "-p"])
            .arg(task.file_name())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("renice runs (util-linux)");
        assert!(status.success(), "renice {nice} {pid} failed");
    }
}

/// What one set-up measured.
struct Outcome {
    alone: (f64, f64),
    noisy: (f64, f64, f64),
    flood_rate: f64,
    flood_refused: f64,
    tasks_per_s: f64,
}

fn run(setup: &str, dir: &Path, tiny: usize) -> Outcome {
    std::fs::create_dir_all(dir).expect("round dir");
    let isolated = setup == "isolated";
    let replicas = Replicas::start(1, 1000);
    let nice = if isolated { "idle" } else { "0" };
    let node = Node::start_with(&replicas.urls(), &dir.join(format!("node-{setup}")), &["--task-nice", nice]);
    if pinned() {
        pin(node.pid(), "1");
        // The control plane stands for other machines, as wrk does.
        renice(replicas.pid(1), 19);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let (a_token, b_token) = rt.block_on(async {
        replicas.wait_leader(Duration::from_secs(15)).await;
        let admin = replicas.client(1);
        let a_quotas = Quotas { concurrency: isolated.then_some(2), ..Quotas::default() };
        admin.create_tenant_with("a", &a_quotas).await.expect("tenant a");
        admin.create_tenant("b").await.expect("tenant b");
        let token = |t: &str| TokenRequest { tenant: Some(t.into()), role: Role::Full };
        let a = admin.create_token(&token("a")).await.expect("token").token;
        let b = admin.create_token(&token("b")).await.expect("token").token;
        let as_a = replicas.client(1).with_token(Some(a.clone()));
        let as_b = replicas.client(1).with_token(Some(b.clone()));
        deploy(&as_a, "flood", guests::LOGREG, &[("model", MODEL)]).await;
        deploy(&as_a, "tiny", guests::HOSTILE_SCORER, &[("mode", "ok")]).await;
        deploy(&as_b, "steady", guests::LOGREG, &[("model", MODEL)]).await;
        wait_served(&format!("{}/v1/fn/a/flood", node.url), &a).await;
        wait_served(&format!("{}/v1/fn/b/steady", node.url), &b).await;
        (a, b)
    });
    let body = dir.join("row.json");
    std::fs::write(&body, r#"{"rows": [{"amount": 420.0, "foreign": 1}]}"#).expect("body");
    let b_url = format!("{}/v1/fn/b/steady", node.url);
    let a_url = format!("{}/v1/fn/a/flood", node.url);

    let (p50, p99, _) = common::load::hey(&b_url, &body, &b_token, B_RATE, SECONDS);

    // A: a 10,000-task job (submitted for A by the admin, over a local
    // file), and a flood of calls, both under way while B is measured.
    let input = dir.join("tiny.jsonl");
    let line = "{\"x\": 1.0}\n";
    std::fs::write(&input, line.repeat(tiny)).expect("tiny input");
    let request = JobRequest {
        function: "tiny".into(),
        input: input.display().to_string(),
        output: dir.join(format!("tiny-out-{setup}")).display().to_string(),
        partition_size: Some(line.len() as u64),
        overwrite: true,
        ..JobRequest::default()
    };
    let job_client = replicas.client(1).with_tenant(Some("a".into()));
    let submitted = Instant::now();
    let tiny = if std::env::var("NOISE").is_ok_and(|n| n == "flood") { 1 } else { tiny };
    let request = JobRequest { input: dir.join(format!("tiny-{tiny}.jsonl")).display().to_string(), ..request };
    std::fs::write(&request.input, line.repeat(tiny)).expect("tiny input");
    let job = rt.block_on(job_client.submit_job(&request)).expect("submit");
    // `NOISE=job` or `NOISE=flood` runs one half of A's load, to see which hurts.
    let noise = std::env::var("NOISE").unwrap_or_default();
    let connections = if noise == "job" { 0 } else { 16 };
    let flood = {
        let (url, body, token, dir) = (a_url.clone(), body.clone(), a_token.clone(), dir.to_path_buf());
        std::thread::spawn(move || {
            if connections == 0 {
                std::thread::sleep(Duration::from_secs(u64::from(SECONDS) + 2));
                return common::load::Wrk { rate: 0.0, requests: 0.0, non_2xx: 0, text: String::new() };
            }
            common::load::wrk(&url, &body, &token, connections, SECONDS + 2, if pinned() { 19 } else { 0 }, &dir)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let noisy = common::load::hey(&b_url, &body, &b_token, B_RATE, SECONDS);
    let flood = flood.join().expect("wrk");
    let tasks_per_s = rt.block_on(async {
        loop {
            let j = job_client.job(&job.id).await.expect("job");
            if j.state.is_final() {
                assert_eq!(j.state, wasmgrid_api::JobState::Succeeded, "{j:?}");
                return tiny as f64 / submitted.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Outcome {
        alone: (p50, p99),
        noisy,
        flood_rate: flood.rate,
        flood_refused: flood.non_2xx as f64 / flood.requests.max(1.0),
        tasks_per_s,
    }
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tiny = env_or("TINY_TASKS", 10_000);
    if pinned() {
        pin(std::process::id(), "0");
        println!(
            "noisy-neighbour benchmark ({cores} cores: the node alone on core 1; control plane, hey and wrk (nice 19) on core 0)"
        );
    } else {
        println!("noisy-neighbour benchmark ({cores} cores; grid and load generators share them)");
    }
    println!(
        "B: hey at {B_RATE} req/s for {SECONDS} s; A: wrk with 16 connections and a {tiny}-task job at the same time\n"
    );
    let rounds = env_or("ROUNDS", 3);
    for setup in ["shared", "isolated"] {
        println!("{setup}:");
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let o = run(setup, &tmp.path().join(format!("{setup}-{round}")), tiny);
            let (p50, p99) = o.alone;
            let (np50, np99, ok) = o.noisy;
            ratios.push(np99 / p99);
            println!(
                "  round {round}: B alone p50 {p50:.0} us, p99 {p99:.0} us; beside A p50 {np50:.0} us, p99 {np99:.0} us ({:.1}% 200) -> p99 {:.2}x",
                ok * 100.0,
                np99 / p99
            );
            println!(
                "           A's flood {:.0} req/s ({:.1}% refused with 429); A's job {:.0} tasks/s",
                o.flood_rate,
                o.flood_refused * 100.0,
                o.tasks_per_s
            );
        }
        ratios.sort_by(f64::total_cmp);
        println!("  median B p99 beside A / alone: {:.2}x (target <= 2x)\n", ratios[ratios.len() / 2]);
    }
}
