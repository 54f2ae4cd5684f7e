//! Control-plane benchmark (`cargo bench --bench control_plane`): real
//! `wasmgrid control-plane` processes (release build) on loopback, sled with
//! fsync on every Raft write, printing in one run:
//!
//! 1. deploy writes per second with 1 and with 64 concurrent clients, on a
//!    3-replica control plane and, as the baseline, on a single replica
//!    (no replication); each write is a new version of a function;
//! 2. leader failover: `kill -9` of the leader, then the time until a
//!    deploy through the CLI's client succeeds, over 10 kills (the killed
//!    replica is restarted and caught up before the next kill);
//! 3. history: 20,000 deploys of one function on 3 replicas, the write rate
//!    of each 1,000 and each replica's data directory at the end (a deploy
//!    must cost the same however many came before it).
//!
//! `WASMGRID_BENCH_WRITES` sets the writes per measurement (default 4000),
//! `WASMGRID_BENCH_KILLS` the kills (default 10), `WASMGRID_BENCH_HISTORY`
//! the deploys of the history (default 20,000); `WASMGRID_BENCH_ONLY=history`
//! (or `writes`, `failover`) runs one part.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_api::{Client, DeployRequest};
use wasmgrid_test_artifacts as guests;

#[path = "../tests/common/mod.rs"]
mod common;

use common::grid::Replicas;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The leader every running replica agrees on, and its commit index.
async fn current_leader(cluster: &Replicas) -> (u64, u64) {
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    (leader, cluster.status(leader).await.map_or(0, |s| s.commit))
}

/// The `logreg` model every version is deployed with (its `init` parses it).
const MODEL: &str = r#"{"features": ["amount"], "weights": [0.01], "bias": -1.0}"#;

/// Version `i` of a function: the model, and a config value of its own.
fn request(module: &str, i: usize) -> DeployRequest {
    DeployRequest {
        module: module.into(),
        config: BTreeMap::from([("model".to_string(), MODEL.to_string()), ("threshold".to_string(), i.to_string())]),
        ..DeployRequest::default()
    }
}

/// A new version of a function, the same config each time: the leader's
/// `init` check runs once, so a deploy costs what the state's write costs.
fn same_request(module: &str) -> DeployRequest {
    DeployRequest {
        module: module.into(),
        config: BTreeMap::from([("model".to_string(), MODEL.to_string())]),
        ..DeployRequest::default()
    }
}

/// `writes` deploys spread over `clients` concurrent clients of the leader;
/// returns writes per second.
async fn writes_per_second(client: Arc<Client>, module: &str, clients: usize, writes: usize, round: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let module = module.to_string();
        let n = writes / clients + usize::from(c < writes % clients);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let name = format!("r{round}-c{c}-f{}", i % 8);
                client.deploy(&name, &request(&module, i)).await.expect("deploy");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    writes as f64 / started.elapsed().as_secs_f64()
}

async fn measure_writes(replicas: usize, writes: usize) -> (f64, f64) {
    let cluster = Replicas::start(replicas, 1000);
    let (leader, _) = current_leader(&cluster).await;
    let client = Arc::new(cluster.client(leader));
    let module = client.upload_module(std::fs::read(guests::LOGREG).expect("logreg")).await.expect("upload").sha256;
    // Warm up connections and the leader's caches.
    writes_per_second(client.clone(), &module, 8, 200, 0).await;
    let one = writes_per_second(client.clone(), &module, 1, (writes / 8).max(100), 1).await;
    let many = writes_per_second(client, &module, 64, writes, 2).await;
    (one, many)
}

async fn failover(kills: usize) -> Vec<Duration> {
    let mut cluster = Replicas::start(3, 1000);
    let (leader, _) = current_leader(&cluster).await;
    let module = cluster
        .client(leader)
        .upload_module(std::fs::read(guests::LOGREG).expect("logreg"))
        .await
        .expect("upload")
        .sha256;
    let mut times = Vec::new();
    for k in 0..kills {
        let (leader, commit) = current_leader(&cluster).await;
        for id in 1..=3 {
            cluster.wait_applied(id, commit, Duration::from_secs(60)).await;
        }
        // A client like the CLI's: the dead leader first, then the others.
        let mut order = vec![leader];
        order.extend((1..=3).filter(|&id| id != leader));
        let client = cluster.client_for(&order);
        cluster.kill(leader);
        let killed = Instant::now();
        loop {
            match client.deploy("failover", &request(&module, k)).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "no write succeeded after kill {k}");
        }
        let took = killed.elapsed();
        println!("  kill {:>2}: replica {leader} killed, next deploy acknowledged after {:>5.0} ms", k + 1, ms(took));
        times.push(took);
        cluster.spawn(leader);
    }
    times
}

/// `deploys` versions of one function, 1,000 at a time from 16 clients:
/// the writes per second of each 1,000, and each replica's data directory
/// in bytes at the end.
async fn history(deploys: usize) -> (Vec<f64>, Vec<u64>) {
    let cluster = Replicas::start(3, 1000);
    let (leader, _) = current_leader(&cluster).await;
    let client = Arc::new(cluster.client(leader));
    let module = client.upload_module(std::fs::read(guests::LOGREG).expect("logreg")).await.expect("upload").sha256;
    let mut rates = Vec::new();
    for _ in 0..deploys.div_ceil(1000) {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..16 {
            let (client, module) = (client.clone(), module.clone());
            tasks.push(tokio::spawn(async move {
                for _ in (c..1000).step_by(16) {
                    client.deploy("history", &same_request(&module)).await.expect("deploy");
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
        rates.push(1000.0 / started.elapsed().as_secs_f64());
    }
    let sizes = (1..=3).map(|id| dir_bytes(&cluster.dir.path().join(format!("replica-{id}")))).collect();
    (rates, sizes)
}

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let writes = env_usize("WASMGRID_BENCH_WRITES", 4000);
    let kills = env_usize("WASMGRID_BENCH_KILLS", 10);
    let deploys = env_usize("WASMGRID_BENCH_HISTORY", 20_000);
    let only = std::env::var("WASMGRID_BENCH_ONLY").ok();
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    assert!(Path::new(guests::LOGREG).exists());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmgrid control-plane benchmark ({cores} cores; release build; sled fsync on every Raft write)\n");
    if runs("writes") {
        print_writes(&rt, writes);
    }
    if runs("failover") {
        print_failover(&rt, kills);
    }
    if runs("history") {
        print_history(&rt, deploys);
    }
}

fn print_writes(rt: &tokio::runtime::Runtime, writes: usize) {
    let (base_one, base_many) = rt.block_on(measure_writes(1, writes));
    let (one, many) = rt.block_on(measure_writes(3, writes));
    println!("deploy writes per second ({writes} writes at 64 clients, {} at 1):", (writes / 8).max(100));
    println!("  {:<34} {:>10} {:>12}", "", "1 client", "64 clients");
    println!("  {:<34} {:>10.0} {:>12.0}", "1 replica (baseline, no Raft peers)", base_one, base_many);
    println!("  {:<34} {:>10.0} {:>12.0}", "3 replicas", one, many);
    println!("  {:<34} {:>10.2} {:>12.2}", "ratio 3 replicas / 1 replica", one / base_one, many / base_many);
    println!(
        "  target: >= 2000 writes/s at 64 clients on 3 replicas: {}",
        if many >= 2000.0 { "met" } else { "MISSED" }
    );
}

fn print_failover(rt: &tokio::runtime::Runtime, kills: usize) {
    println!("\nleader failover, kill -9 of the leader to the next acknowledged deploy ({kills} kills):");
    let mut times = rt.block_on(failover(kills));
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    let max = times.last().copied().unwrap_or_default();
    println!(
        "  min {:.0} ms, median {:.0} ms, mean {:.0} ms, max {:.0} ms (election timeout 0.5-1 s)",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(mean),
        ms(max)
    );
    println!("  target: every failover < 2 s: {}", if max < Duration::from_secs(2) { "met" } else { "MISSED" });
}

fn print_history(rt: &tokio::runtime::Runtime, deploys: usize) {
    println!("\nhistory: {deploys} deploys of one function on 3 replicas, 16 clients:");
    let (rates, sizes) = rt.block_on(history(deploys));
    let line: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!("  writes/s per 1,000 deploys: {}", line.join(" "));
    let (first, last) = (rates[0], rates[rates.len() - 1]);
    println!("  last 1,000 / first 1,000: {:.2} (target >= 0.9: as fast)", last / first);
    let mb: Vec<String> = sizes.iter().map(|b| format!("{:.0} MB", *b as f64 / 1e6)).collect();
    println!("  data directory per replica: {} (target < 200 MB)", mb.join(", "));
}
