//! One step of a rolling upgrade, with real binaries of both releases: a
//! cluster started on the previous release (`deploy/previous-release`,
//! built by `deploy/build-previous.sh` into `target/previous/wasmgrid`)
//! takes writes while its replicas move to this release one at a time. On
//! the way, replicas of the previous release follow a leader of this one
//! (its log entries), and one of them, far behind, catches up from this
//! release's snapshot. Every acknowledged write must be on every replica
//! and the replicas must agree, at each step. A second test runs a node of
//! the previous release under this release's control plane: jobs run one
//! task per attempt while it is alive, in ranges once it is gone; a job
//! with a `--schema` it would ignore, or of an aggregator it could not run,
//! is refused while it is alive.
//!
//! Without the previous binary the test says why and passes, unless
//! `WASMGRID_REQUIRE_PREVIOUS` is set (CI, through `deploy/test-setup.sh`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::grid::Replicas;
use wasmgrid_api::{Client, DeployRequest, JobState};
use wasmgrid_test_artifacts as guests;

fn previous_binary() -> Option<PathBuf> {
    let path = std::env::var_os("WASMGRID_PREVIOUS_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/previous/wasmgrid"));
    path.exists().then_some(path)
}

/// Creates tenants `{prefix}-{i}` through `client`, recording those
/// acknowledged.
async fn write(client: &Client, prefix: &str, n: usize, acknowledged: &mut Vec<String>) {
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        if client.create_tenant(&name).await.is_ok() {
            acknowledged.push(name);
        }
    }
}

/// A version of `score` with `weight`: a full deploy (module and version).
async fn deploy(client: &Client, weight: f64) {
    client.deploy("score", &score_request(client, weight).await).await.expect("deploy");
}

/// The module uploaded, and a request for a version of `score` with `weight`.
async fn score_request(client: &Client, weight: f64) -> DeployRequest {
    let module = client.upload_module(std::fs::read(guests::LOGREG).expect("logreg")).await.expect("upload").sha256;
    let config = format!(r#"{{"features":["x"],"weights":[{weight}],"bias":0}}"#);
    DeployRequest { module, config: BTreeMap::from([("model".into(), config)]), ..DeployRequest::default() }
}

fn shadow_trial() -> wasmgrid_api::TrialSpec {
    wasmgrid_api::TrialSpec { mode: wasmgrid_api::TrialMode::Shadow, percent: 100.0, threshold: 0.5 }
}

/// What replica `id` holds: its tenants and `score`'s versions, active
/// version and trial.
async fn view(replicas: &Replicas, id: u64) -> (Vec<String>, String) {
    let client = replicas.client(id);
    let tenants = client.tenants().await.unwrap_or_else(|e| panic!("replica {id}: {e}"));
    let score = client.function("score").await.unwrap_or_else(|e| panic!("replica {id}: {e}"));
    let function = format!("{:?} active {} trial {:?}", score.versions, score.active, score.trial);
    (tenants.tenants.into_iter().map(|t| t.name).collect(), function)
}

/// Waits until every running replica has applied the leader's commit,
/// then checks each holds every acknowledged write and all agree.
async fn agree(replicas: &Replicas, acknowledged: &[String], step: &str) {
    let leader = replicas.wait_leader(Duration::from_secs(20)).await;
    let commit = replicas.status(leader).await.expect("leader status").commit;
    let mut views = Vec::new();
    for id in (1..=3).filter(|id| replicas.is_up(*id)) {
        replicas.wait_applied(id, commit, Duration::from_secs(30)).await;
        let (tenants, versions) = view(replicas, id).await;
        let missing: Vec<&String> = acknowledged.iter().filter(|t| !tenants.contains(t)).collect();
        assert!(missing.is_empty(), "{step}: replica {id} lacks acknowledged writes {missing:?}");
        views.push((id, tenants, versions));
    }
    for (id, tenants, versions) in &views[1..] {
        assert_eq!(
            (tenants, versions),
            (&views[0].1, &views[0].2),
            "{step}: replicas {} and {id} disagree",
            views[0].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_two_releases_run_one_cluster_through_a_rolling_upgrade() {
    let Some(previous) = previous_binary() else {
        assert!(
            std::env::var_os("WASMGRID_REQUIRE_PREVIOUS").is_none(),
            "WASMGRID_REQUIRE_PREVIOUS is set, but there is no target/previous/wasmgrid (deploy/build-previous.sh)"
        );
        eprintln!("skipping the mixed-version test: no previous release built (deploy/build-previous.sh)");
        return;
    };
    let current = PathBuf::from(env!("CARGO_BIN_EXE_wasmgrid"));
    // Snapshots every 20 entries, so one is sent across releases below.
    let mut replicas = Replicas::start_from(Some(previous.clone()), 3, 20);
    let first_leader = replicas.wait_leader(Duration::from_secs(20)).await;
    let client = replicas.client_all();
    let mut acknowledged = Vec::new();
    write(&client, "old", 20, &mut acknowledged).await;
    deploy(&client, 0.5).await;
    agree(&replicas, &acknowledged, "all on the previous release").await;

    // A follower moves to this release, on the data the previous one wrote.
    let upgraded = (1..=3).find(|id| *id != first_leader).expect("a follower");
    replicas.stop(upgraded);
    replicas.binary = Some(current.clone());
    replicas.spawn(upgraded);
    replicas.binary = Some(previous.clone());
    write(&client, "mixed", 20, &mut acknowledged).await;
    agree(&replicas, &acknowledged, "one replica upgraded").await;

    // It leads: the previous release's replicas apply its entries.
    client.transfer_leader(upgraded).await.expect("leadership to the upgraded replica");
    assert_eq!(replicas.wait_leader(Duration::from_secs(20)).await, upgraded);
    deploy(&client, 1.5).await;
    // Placement waits for the last replica: a deploy that asks for it is
    // refused, one that does not runs on every node (as the old replicas
    // record it).
    let placed =
        DeployRequest { replicas: Some(wasmgrid_api::Replicas::Count(2)), ..score_request(&client, 2.5).await };
    let refused = client.deploy("score", &placed).await.expect_err("replicas while upgrading");
    assert!(refused.to_string().contains("upgrade_in_progress"), "{refused}");
    // A shadow too: the previous release would apply it as the active version.
    let shadow = DeployRequest { trial: Some(shadow_trial()), ..score_request(&client, 2.5).await };
    let refused = client.deploy("score", &shadow).await.expect_err("a shadow while upgrading");
    assert!(refused.to_string().contains("upgrade_in_progress"), "{refused}");
    write(&client, "new-leader", 20, &mut acknowledged).await;
    agree(&replicas, &acknowledged, "the upgraded replica leads").await;

    // A replica of the previous release that missed more than the leader
    // keeps in its log catches up from this release's snapshot.
    let behind = (1..=3).find(|id| *id != upgraded).expect("an old follower");
    replicas.stop(behind);
    write(&client, "while-away", 240, &mut acknowledged).await;
    let installed_before = 0;
    replicas.spawn(behind);
    agree(&replicas, &acknowledged, "an old replica caught up").await;
    let installed = replicas.status(behind).await.expect("status").snapshots_installed;
    assert!(installed > installed_before, "replica {behind} (previous release) installed this release's snapshot");

    // The rest move to this release.
    replicas.binary = Some(current);
    for id in (1..=3).filter(|id| *id != upgraded) {
        replicas.stop(id);
        replicas.spawn(id);
        write(&client, &format!("after-{id}"), 5, &mut acknowledged).await;
    }
    agree(&replicas, &acknowledged, "all on this release").await;
    // Every replica reads placements now.
    let placed =
        DeployRequest { replicas: Some(wasmgrid_api::Replicas::Count(2)), ..score_request(&client, 3.5).await };
    let deployed = client.deploy("score", &placed).await.expect("replicas once all moved");
    assert_eq!(deployed.active, 3);
    let shadow = DeployRequest { trial: Some(shadow_trial()), ..score_request(&client, 4.5).await };
    let deployed = client.deploy("score", &shadow).await.expect("a shadow once all moved");
    assert_eq!((deployed.active, deployed.trial.map(|t| t.version)), (3, Some(4)));
    agree(&replicas, &acknowledged, "a placed version and a shadow").await;
    assert!(acknowledged.len() >= 300, "most writes were acknowledged: {}", acknowledged.len());
}

/// Waits for `id` to end and returns it.
async fn finished(client: &Client, id: &str) -> wasmgrid_api::JobInfo {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(job) = client.job(id).await
            && job.state.is_final()
        {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_the_previous_release_runs_jobs_one_task_per_attempt() {
    let Some(previous) = previous_binary() else {
        assert!(std::env::var_os("WASMGRID_REQUIRE_PREVIOUS").is_none(), "no target/previous/wasmgrid");
        eprintln!("skipping: no previous release built (deploy/build-previous.sh)");
        return;
    };
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let mut old_release = std::process::Command::new(&previous);
    old_release.env("NO_COLOR", "1").env("WASMGRID_TOKEN", common::TOKEN);
    let mut old = common::grid::Node::start_from(old_release, &urls, &dir.join("old-node"), &[]);
    common::grid_ok(&urls, &["deploy", "tiny", guests::HOSTILE_SCORER, "--config", "mode=ok"]);
    // 1,000 one-line partitions: ranges of 3 on a grid of this release.
    let input = dir.join("rows.jsonl");
    std::fs::write(&input, "{\"x\": 1}\n".repeat(1000)).expect("rows");
    let client = replicas.client(1);
    let submit = |out: &str| {
        let out = dir.join(out).display().to_string();
        let args = ["job", "submit", "tiny", "--input", &input.display().to_string(), "--output", &out];
        common::grid_ok(&urls, &[&args[..], &["--partition-size", "9"]].concat()).trim().to_string()
    };
    // While the node of the previous release is alive, jobs run task by
    // task, and it runs them.
    let id = submit("with-old");
    let job = finished(&client, &id).await;
    assert_eq!((job.state, job.map_range, job.map_done, job.rows_out), (JobState::Succeeded, 1, 1000, 1000), "{job:?}");
    // A job whose `--schema` it would not read is refused while it is alive.
    let out = dir.join("schema").display().to_string();
    let args =
        ["job", "submit", "tiny", "--input", &input.display().to_string(), "--output", &out, "--schema", "x:float"];
    let refused = common::fails(common::grid_cli(&urls, &args));
    assert!(refused.contains("`schema` needs every node on a release that reads it"), "{refused}");
    // So is an aggregator's job, whose tasks it could not run.
    common::grid_ok(&urls, &["deploy", "flights", guests::FLIGHTS]);
    let args = ["job", "submit", "flights", "--input", &input.display().to_string(), "--output", &out];
    let refused = common::fails(common::grid_cli(&urls, &args));
    assert!(refused.contains("an aggregator's job needs every node on a release that runs one"), "{refused}");
    // Once it is gone and a node of this release runs jobs, in ranges.
    let _new = common::grid::Node::start(&urls, &dir.join("new-node"));
    old.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut tries = 0;
    let job = loop {
        tries += 1;
        let job = finished(&client, &submit(&format!("without-old-{tries}"))).await;
        if job.map_range > 1 || std::time::Instant::now() > deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!((job.state, job.map_range, job.map_done, job.rows_out), (JobState::Succeeded, 3, 1000, 1000), "{job:?}");
}
