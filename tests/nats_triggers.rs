//! NATS JetStream triggers end to end: a real `nats-server` with
//! JetStream, a real control plane and node processes, the CLI, the
//! fall-detect scorer, and the scored windows read back from the output
//! stream.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use common::kafka::{tally, windows};
use common::nats::Server;
use serde_json::Value;
use wasmgrid_test_artifacts as guests;

/// A node that may connect to the server on loopback (the egress policy
/// refuses loopback otherwise).
fn node(urls: &str, data: &Path) -> Node {
    Node::start_with(urls, data, &["--egress-allow", "127.0.0.1"])
}

/// `trigger create NAME --nats URL --stream ACCEL --function fall-detect`
/// and `more` flags.
fn create(urls: &str, server: &Server, name: &str, more: &[&str]) -> std::process::Output {
    let mut args = vec!["trigger", "create", name, "--nats", &server.url, "--stream", "ACCEL"];
    args.extend(["--function", "fall-detect"]);
    args.extend(more);
    common::grid_cli(urls, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_window_of_ten_thousand_phones_is_scored_once_from_jetstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = Server::start(dir.path()).await else { return };
    server.create_stream("ACCEL", &["accel.>"]).await;
    server.create_stream("FALLS", &["falls"]).await;

    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let node = node(&urls, &dir.path().join("node"));
    common::grid_ok(&urls, &["deploy", "fall-detect", guests::FALL_DETECT]);

    // Bad triggers get clear errors: before they are stored, or from the
    // node that finds the stream would capture the output.
    let bad = common::fails(create(&urls, &server, "t", &["--subject", "accel.>", "--output-subject", "accel.out"]));
    assert!(bad.contains("would read its own output"), "{bad}");
    let bad = common::fails(create(&urls, &server, "t", &["--output-subject", "falls.*"]));
    assert!(bad.contains("no wildcards"), "{bad}");
    // (A usage error: clap's exit code 2.)
    let bad = create(&urls, &server, "t", &["--topic", "accel", "--output-subject", "falls"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("--kafka <BROKERS>"), "{stderr}");
    common::ok_stdout(create(&urls, &server, "loop", &["--output-subject", "accel.scored"]));
    let s = common::wait_trigger_state(&urls, "loop", "failing").await;
    let error = s.nodes[0].1.error.clone().unwrap_or_default();
    assert!(error.contains("stream `ACCEL` captures `accel.scored`"), "{error}");
    common::grid_ok(&urls, &["trigger", "rm", "loop"]);

    let created = common::ok_stdout(create(
        &urls,
        &server,
        "falls",
        &["--subject", "accel.>", "--consumer", "fall-detectors", "--output-subject", "falls", "--batch", "500"],
    ));
    assert!(created.contains("trigger falls: nats ACCEL (accel.>) -> fall-detect -> nats falls"), "{created}");

    // 100,000 windows: 10,000 phones, 10 windows each, about 2% falls.
    let windows = windows(10_000, 10, 0.02, 7);
    let falls: HashSet<(String, u64)> =
        windows.iter().enumerate().filter(|(_, w)| w.2).map(|(i, w)| (w.0.clone(), (i / 10_000) as u64)).collect();
    assert!(falls.len() > 1_000, "{} falls", falls.len());
    server.publish("accel", &windows).await;

    // Every output, and then 3 s more of reading: nothing else arrives.
    let mut all_in: Option<Instant> = None;
    let read = server
        .read_until("FALLS", Duration::from_secs(240), |read| {
            read.len() >= windows.len() && all_in.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(3)
        })
        .await;
    let seen = tally(&read);
    assert_eq!(seen.len(), windows.len(), "every window scored ({} outputs read)", read.len());
    assert_eq!(read.len(), windows.len(), "exactly once");
    let missed: Vec<_> = falls.iter().filter(|k| seen[*k].1 <= 0.5).collect();
    assert!(missed.is_empty(), "every fall flagged; missed {} of {}", missed.len(), falls.len());
    let false_alarms = seen.iter().filter(|(k, (_, p))| *p > 0.5 && !falls.contains(*k)).count();
    eprintln!("{} falls flagged, {false_alarms} false alarms in {} windows", falls.len(), windows.len());

    // The server's view: every record acknowledged, none redelivered.
    let info = server.consumer_info("ACCEL", "fall-detectors").await;
    assert_eq!((info.num_pending, info.num_ack_pending, info.num_redelivered), (0, 0, 0), "{info:?}");
    assert_eq!(info.ack_floor.stream_sequence, 100_000);

    // What the node reported: every record read and produced, nothing
    // dead, and no lag once the consumer has looked.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = common::trigger_status(&urls, "falls");
        let p = s.nodes.first().and_then(|(_, u)| u.partitions.first()).cloned().unwrap_or_default();
        if common::trigger_totals(&s) == (100_000, 100_000, 0)
            && p.lag == 0
            && p.committed == 100_001
            && s.nodes.len() == 1
        {
            assert_eq!(s.nodes[0].1.state, "running");
            break;
        }
        assert!(Instant::now() < deadline, "the status never settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metric = common::node_metric_sum(&node.url, "wasmgrid_trigger_records_total").await;
    assert_eq!(metric, 100_000.0, "records on /metrics");
    let metric = common::node_metric_sum(&node.url, "wasmgrid_trigger_produced_total").await;
    assert_eq!(metric, 100_000.0, "produced on /metrics");

    // Paused, it reads nothing; resumed, it goes on where it stopped.
    common::grid_ok(&urls, &["trigger", "pause", "falls"]);
    common::wait_trigger_state(&urls, "falls", "paused").await;
    let later = common::kafka::windows(100, 1, 0.0, 8)
        .into_iter()
        .map(|(k, v, f)| (k, v.replace("\"seq\":0", "\"seq\":99"), f))
        .collect::<Vec<_>>();
    server.publish("accel", &later).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.consumer_info("ACCEL", "fall-detectors").await.num_pending, 100, "paused: nothing read");
    common::grid_ok(&urls, &["trigger", "resume", "falls"]);
    let read = server.read_until("FALLS", Duration::from_secs(60), |r| r.len() >= 100_100).await;
    let seen = tally(&read);
    assert_eq!(seen.len(), 100_100, "the windows sent while paused are scored after resume");
    assert!(seen.values().all(|(n, _)| *n == 1), "each once");

    let removed = common::grid_ok(&urls, &["trigger", "rm", "falls"]);
    assert!(removed.contains("durable consumer stays"), "{removed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_goes_to_the_dead_letters_while_the_rest_flows_from_jetstream() {
    stream_on_two_nodes(false).await;
}

/// A node `kill -9`ed mid-stream: JetStream hands the records it held to
/// the node left after the ack wait; no window is lost, and the output
/// stream drops the copies of those it had already answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_loses_no_window_from_jetstream() {
    stream_on_two_nodes(true).await;
}

/// 20,000 windows through a trigger on two nodes, one record poison; with
/// `kill`, one node dies mid-stream.
async fn stream_on_two_nodes(kill: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = Server::start(dir.path()).await else { return };
    server.create_stream("ACCEL", &["accel.>"]).await;
    server.create_stream("FALLS", &["falls"]).await;
    server.create_stream("DEAD", &["accel-dead"]).await;

    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let mut first = node(&urls, &dir.path().join("node-a"));
    let _second = node(&urls, &dir.path().join("node-b"));
    common::grid_ok(&urls, &["deploy", "fall-detect", guests::FALL_DETECT]);
    // Dead letters to `accel-dead`, at most 2 attempts.
    let dead = ["--dead-letter", "accel-dead", "--max-attempts", "2"];
    let more = ["--output-subject", "falls", "--batch", "200", "--ack-wait", "3s"];
    common::ok_stdout(create(&urls, &server, "falls", &[&dead[..], &more].concat()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::trigger_status(&urls, "falls").nodes.len() < 2 {
        assert!(Instant::now() < deadline, "both nodes run the trigger");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 20,000 windows from 2,000 phones, sent over about 8 s (1 s with
    // `kill`), one of them poison (not numbers).
    let mut windows = windows(2_000, 10, 0.02, 11);
    let poison = 7_777;
    windows[poison].1 = windows[poison].1.replacen("\"ax\":\"", "\"ax\":\"boom ", 1);
    let sending = {
        let windows = windows.clone();
        let js = server.jetstream();
        tokio::spawn(async move {
            for chunk in windows.chunks(1_000) {
                common::nats::publish(&js, "accel", chunk).await;
                // With `kill`, fast enough that the nodes are rarely idle,
                // so the node killed most likely holds records.
                tokio::time::sleep(Duration::from_millis(if kill { 50 } else { 400 })).await;
            }
        })
    };
    // Mid-stream (with `kill`), one node dies without a word.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = common::trigger_status(&urls, "falls");
        let busy = s.nodes.iter().filter(|(_, u)| u.partitions.iter().any(|p| p.records > 0)).count();
        if common::trigger_totals(&s).0 >= 4_000 && busy == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both nodes scored windows: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if kill {
        first.kill();
    }
    sending.await.expect("sent");

    let read =
        server.read_until("FALLS", Duration::from_secs(120), |read| tally(read).len() >= windows.len() - 1).await;
    let seen = tally(&read);
    assert_eq!(seen.len(), windows.len() - 1, "every window but the poison one scored");
    let duplicates: u32 = seen.values().map(|(n, _)| n - 1).sum();
    eprintln!("{} outputs for {} windows, {duplicates} duplicates", read.len(), seen.len());
    assert_eq!(duplicates, 0, "the output stream dropped every copy (message ids)");
    let poisoned = (windows[poison].0.clone(), (poison / 2_000) as u64);
    assert!(!seen.contains_key(&poisoned), "the poison record is not in the output");

    let dead = server.read_until("DEAD", Duration::from_secs(30), |r| !r.is_empty()).await;
    assert_eq!(dead.len(), 1, "the poison record is a dead letter, once");
    let (phone, letter) = &dead[0];
    assert_eq!(phone, &windows[poison].0, "it says the record's subject");
    assert_eq!(letter["attempts"], 2, "{letter}");
    assert_eq!(letter["stream"], "ACCEL", "{letter}");
    assert!(letter["error"].as_str().is_some_and(|e| e.contains("`boom` is not a number")), "{letter}");
    let value: Value = serde_json::from_str(letter["value"].as_str().expect("value")).expect("the record");
    assert_eq!(value["seq"], (poison / 2_000) as u64);

    // Every record is done as JetStream sees it; the nodes counted the dead
    // letter with its failed calls, and after a kill one node is left.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = server.consumer_info("ACCEL", "wasmgrid-falls").await;
        let s = common::trigger_status(&urls, "falls");
        let errors: u64 = s.nodes.iter().flat_map(|(_, u)| &u.partitions).map(|p| p.errors).sum();
        let dead = common::trigger_totals(&s).2;
        let nodes = if kill { 1 } else { 2 };
        if info.num_pending == 0 && info.num_ack_pending == 0 && s.nodes.len() == nodes && (kill || dead == 1) {
            assert!(dead <= 1 && errors >= 2 * dead, "{s:?}");
            assert_eq!(info.ack_floor.stream_sequence, 20_000, "{info:?}");
            // Each delivery takes a consumer sequence: those past the
            // 20,000 records are redeliveries (the killed node's records).
            let redelivered = info.delivered.consumer_sequence - 20_000;
            eprintln!("JetStream redelivered {redelivered} records; the output holds each once");
            break;
        }
        assert!(Instant::now() < deadline, "the trigger never settled: {s:?} {info:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
