//! Control-plane benchmark (`cargo bench --bench control_plane`): real
//! `wasmgrid control-plane` processes (release build) on loopback, sled with
//! fsync on every Raft write, printing in one run:
//!
//! 1. deploy writes per second with 1 and with 64 concurrent clients, on a
//!    3-replica control plane and, as the baseline, on a single replica
//!    (no replication); each write is a new version of a function;
//! 2. leader failover: `kill -9` of the leader, then the time until a
//!    deploy through the CLI's client succeeds, over 10 kills (the killed
//!    replica is restarted and caught up before the next kill).
//!
//! `WASMGRID_BENCH_WRITES` sets the writes per measurement (default 4000),
//! `WASMGRID_BENCH_KILLS` the kills (default 10).

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

fn request(module: &str, i: usize) -> DeployRequest {
    DeployRequest {
        module: module.into(),
        config: BTreeMap::from([("threshold".to_string(), i.to_string())]),
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let writes = env_usize("WASMGRID_BENCH_WRITES", 4000);
    let kills = env_usize("WASMGRID_BENCH_KILLS", 10);
    assert!(Path::new(guests::LOGREG).exists());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmgrid control-plane benchmark ({cores} cores; release build; sled fsync on every Raft write)\n");

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
