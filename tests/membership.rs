//! Changing the control plane's replica set with the CLI, on real replica
//! processes: growing and shrinking under write load, and replacing a
//! machine that lost its data.

mod common;
#[path = "chaos/history.rs"]
mod history;
#[path = "chaos/workload.rs"]
mod workload;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::grid::Replicas;
use common::{grid_cli, ok, ok_stdout, text, wasmgrid};
use wasmgrid_api::{ClusterStatus, DeployRequest};
use wasmgrid_test_artifacts as guests;
use workload::{Workload, numbers};

/// Waits up to `within` for replica `id`'s process to end.
async fn exit_of(replicas: &mut Replicas, id: u64, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = replicas.exited(id) {
            return status;
        }
        assert!(Instant::now() < deadline, "replica {id} still runs after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's view of the cluster, once `ok` holds for it.
async fn wait_cluster(replicas: &Replicas, via: &[u64], within: Duration, ok: impl Fn(&ClusterStatus) -> bool) {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        for &id in via {
            if let Some(status) = replicas.status(id).await
                && status.role == "leader"
            {
                if ok(&status) {
                    return;
                }
                last = Some(status);
            }
        }
        assert!(Instant::now() < deadline, "the cluster did not get there within {within:?}: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn roles(status: &ClusterStatus) -> Vec<(u64, String)> {
    status.members.iter().map(|m| (m.id, if m.role == "leader" { "follower".into() } else { m.role.clone() })).collect()
}

fn urls(replicas: &Replicas, ids: &[u64]) -> String {
    ids.iter().map(|&id| replicas.url(id)).collect::<Vec<_>>().join(",")
}

/// Four writers through replicas `ids`, each starting at another, and a
/// reader that lists the tenants through each in turn.
fn start_clients(replicas: &Replicas, ids: &[u64]) -> Workload {
    let writers = (0..4)
        .map(|w| {
            let mut order = ids.to_vec();
            order.rotate_left(w % ids.len());
            replicas.client_for(&order)
        })
        .collect();
    let reader = ids.iter().map(|&id| replicas.client(id)).collect();
    Workload::start(writers, vec![reader], Duration::from_millis(100))
}

/// 3 -> 5 -> 3 replicas while four writers keep writing: the new replicas
/// join as learners, catch up from a snapshot and vote; two of the
/// original ones (the leader among them, when it is) are removed and stop
/// by themselves; every acknowledged write is on each remaining replica,
/// they agree, and the history of writes and reads is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_grows_from_3_to_5_replicas_and_shrinks_to_3_under_write_load() {
    let mut replicas = Replicas::start(3, 200);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let (four, five) = (replicas.add_slot(), replicas.add_slot());
    let workload = start_clients(&replicas, &[1, 2, 3, 4, 5]);
    wait_cluster(&replicas, &[1, 2, 3], Duration::from_secs(30), |s| s.commit > 400).await;

    // A machine started before the cluster added it is refused.
    replicas.spawn_joining(five);
    let refused = exit_of(&mut replicas, five, Duration::from_secs(20)).await;
    assert!(!refused.success());
    let log = std::fs::read_to_string(replicas.log(five)).unwrap_or_default();
    assert!(log.contains("replica 5 is not a member of the cluster") && log.contains("add-replica 5="), "{log}");
    std::fs::remove_dir_all(replicas.data(five)).ok();

    // Add 4 without waiting, then start it.
    let added = ok(grid_cli(
        &urls(&replicas, &[1, 2, 3]),
        &["cluster", "add-replica", &format!("4={}", replicas.url(four)), "--no-wait"],
    ));
    assert!(added.contains("--join"), "{added}");
    replicas.spawn_joining(four);
    // Add 5 and wait for it to vote while it starts.
    let add_five = wasmgrid()
        .args(["cluster", "add-replica", &format!("5={}", replicas.url(five)), "--url", &urls(&replicas, &[1, 2, 3])])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wasmgrid");
    wait_cluster(&replicas, &[1, 2, 3], Duration::from_secs(30), |s| s.members.iter().any(|m| m.id == five)).await;
    replicas.spawn_joining(five);
    let out = tokio::task::spawn_blocking(move || add_five.wait_with_output().expect("wasmgrid")).await.expect("join");
    assert!(ok_stdout(out).contains("replica 5 votes"));
    wait_cluster(&replicas, &[1, 2, 3, 4, 5], Duration::from_secs(30), |s| {
        roles(s) == (1..=5).map(|id| (id, "follower".to_string())).collect::<Vec<_>>()
    })
    .await;
    for id in [four, five] {
        let status = replicas.status(id).await.expect("status");
        assert!(status.snapshots_installed >= 1, "replica {id} caught up without a snapshot: {status:?}");
    }

    // Shrink: remove 1 and 2; whichever leads hands leadership over first.
    for id in [1, 2] {
        let out = ok_stdout(grid_cli(&urls(&replicas, &[3, 4, 5]), &["cluster", "remove-replica", &id.to_string()]));
        assert!(out.contains(&format!("replica {id} removed")), "{out}");
        let status = exit_of(&mut replicas, id, Duration::from_secs(30)).await;
        assert!(status.success(), "a removed replica stops as removed, not as failed: {status:?}");
        let log = std::fs::read_to_string(replicas.log(id)).unwrap_or_default();
        assert!(log.contains("removed from the cluster"), "{log}");
    }
    wait_cluster(&replicas, &[3, 4, 5], Duration::from_secs(15), |s| {
        roles(s) == [3, 4, 5].map(|id| (id, "follower".to_string()))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let origin = workload.origin;
    let mut recorded = workload.stop().await;
    let acked: BTreeSet<u32> =
        recorded.adds.iter().filter(|a| a.outcome == history::Outcome::Ok).map(|a| a.name).collect();
    let failed = recorded.adds.len() - acked.len();
    println!(
        "{} writes acknowledged, {failed} failed while replicas changed; {} reads",
        acked.len(),
        recorded.reads.len()
    );
    assert!(acked.len() > 500, "too few writes went through: {}", acked.len());

    let mut seen = Vec::new();
    for id in [3, 4, 5] {
        let invoked = origin.elapsed();
        let names = numbers(&replicas.client(id).tenants().await.expect("tenants"));
        let lost: Vec<&u32> = acked.iter().filter(|n| names.binary_search(n).is_err()).collect();
        assert!(lost.is_empty(), "replica {id} lacks acknowledged writes: {lost:?}");
        recorded.reads.push(history::Read { invoked, completed: origin.elapsed(), names: names.clone() });
        seen.push(names);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "the replicas disagree");
    if let Err(v) = history::check(&recorded.adds, &recorded.reads) {
        panic!("the history is not linearizable: {v:?}");
    }
}

fn deploy(weight: f64, module: &str) -> DeployRequest {
    let model = format!(r#"{{"features":["x"],"weights":[{weight}],"bias":0}}"#);
    DeployRequest { module: module.into(), config: [("model".to_string(), model)].into(), ..DeployRequest::default() }
}

/// A replica whose log went back in time (an older copy of its data
/// directory, or none at all) refuses to start with a message that says how
/// to replace it, while the others serve; replaced as the message says
/// (removed, added again, started empty with --join) it catches up from a
/// snapshot, holds the same state and counts in the quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_data_is_refused_and_rejoins_as_a_new_machine() {
    let mut replicas = Replicas::start(3, 100);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let lost = if leader == 3 { 2 } else { 3 };
    let client = replicas.client_all();
    let module = client.upload_module(std::fs::read(guests::LOGREG).expect("logreg")).await.expect("upload").sha256;
    let write = |n: usize, from: usize| {
        let (client, module) = (&client, &module);
        async move {
            for i in from..from + n {
                client.deploy(&format!("f{}", i % 10), &deploy(i as f64, module)).await.expect("deploy");
            }
        }
    };
    write(150, 0).await;
    let commit = replicas.status(leader).await.expect("status").commit;
    replicas.wait_applied(lost, commit, Duration::from_secs(10)).await;

    // An older copy of its data directory.
    replicas.stop(lost);
    let old = replicas.dir.path().join("old-copy");
    assert!(
        std::process::Command::new("cp").arg("-a").arg(replicas.data(lost)).arg(&old).status().expect("cp").success()
    );
    replicas.spawn(lost);
    write(150, 150).await;
    let commit = replicas.status(leader).await.expect("status").commit;
    replicas.wait_applied(lost, commit, Duration::from_secs(10)).await;
    replicas.kill(lost);
    std::fs::remove_dir_all(replicas.data(lost)).expect("remove");
    std::fs::rename(&old, replicas.data(lost)).expect("swap the old copy in");
    for attempt in ["an older copy", "an empty data directory"] {
        replicas.spawn(lost);
        let status = exit_of(&mut replicas, lost, Duration::from_secs(30)).await;
        let log = std::fs::read_to_string(replicas.log(lost)).unwrap_or_default();
        assert!(!status.success(), "{attempt}: {log}");
        let last =
            log.lines().rev().find(|l| l.contains("log ends at index")).unwrap_or_else(|| panic!("{attempt}: {log}"));
        assert!(last.contains("Replace it") && last.contains(&format!("remove-replica {lost}")), "{attempt}: {last}");
        // The others serve meanwhile.
        write(1, 300).await;
        std::fs::remove_dir_all(replicas.data(lost)).expect("wipe");
    }

    // Replace it under the same id.
    let others: Vec<u64> = (1..=3).filter(|&id| id != lost).collect();
    ok(grid_cli(&urls(&replicas, &others), &["cluster", "remove-replica", &lost.to_string()]));
    let add = ["cluster", "add-replica", &format!("{lost}={}", replicas.url(lost)), "--no-wait"];
    ok(grid_cli(&urls(&replicas, &others), &add));
    replicas.spawn_joining(lost);
    let commit = replicas.status(leader).await.expect("status").commit;
    wait_cluster(&replicas, &others, Duration::from_secs(30), |s| {
        s.members.iter().any(|m| m.id == lost && m.role == "follower" && m.matched >= Some(commit))
    })
    .await;
    replicas.wait_applied(lost, commit, Duration::from_secs(10)).await;
    let status = replicas.status(lost).await.expect("status");
    assert!(status.snapshots_installed >= 1, "{status:?}");
    let functions = |id| {
        let c = replicas.client(id);
        async move {
            let mut all = Vec::new();
            for f in c.functions().await.expect("functions").functions {
                all.push(c.function(&f.name).await.expect("function"));
            }
            all
        }
    };
    assert_eq!(functions(lost).await, functions(leader).await);

    // It counts in the quorum: with the third replica down, writes commit.
    let third = others.iter().copied().find(|&id| id != leader).expect("a third replica");
    replicas.kill(third);
    client.deploy("after", &deploy(1.0, &module)).await.expect("a write with the new machine in the quorum");
    let (_, stderr) = text(&grid_cli(&urls(&replicas, &[leader]), &["cluster", "status"]));
    assert!(stderr.is_empty(), "{stderr}");
}

/// A flipped byte in a replica's data files (a damaged disk) makes it
/// refuse to start with a message saying how to replace it, instead of
/// serving a state that went back in time; the others serve throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_damaged_data_file_refuses_to_start() {
    let mut replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let damaged = if leader == 3 { 2 } else { 3 };
    let client = replicas.client_all();
    let module = client.upload_module(std::fs::read(guests::LOGREG).expect("logreg")).await.expect("upload").sha256;
    for i in 0..100 {
        client.deploy(&format!("f{}", i % 10), &deploy(i as f64, &module)).await.expect("deploy");
    }
    let commit = replicas.status(leader).await.expect("status").commit;
    replicas.wait_applied(damaged, commit, Duration::from_secs(10)).await;
    replicas.stop(damaged);
    // One byte in the middle of sled's log file.
    let path = replicas.data(damaged).join("db");
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).expect("write");
    replicas.spawn(damaged);
    let status = exit_of(&mut replicas, damaged, Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(replicas.log(damaged)).unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(log.contains("Replace it") && log.contains("docs/operations.md"), "{log}");
    client.deploy("after", &deploy(1.0, &module)).await.expect("the others serve");
}
