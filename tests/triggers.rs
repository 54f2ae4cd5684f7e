//! Kafka triggers end to end: a real broker (tansu), a real control plane
//! and node processes, the CLI, the fall-detect scorer, and the scored
//! windows read back from the output topic.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use common::kafka::{self, Broker};
use serde_json::Value;
use wasmgrid_test_artifacts as guests;

/// A node that may connect to the broker on loopback (the egress policy
/// refuses loopback otherwise).
fn node(urls: &str, data: &Path) -> Node {
    Node::start_with(urls, data, &["--egress-allow", "127.0.0.1"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_window_of_ten_thousand_phones_is_scored_once_and_every_fall_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(broker) = Broker::start(&dir.path().join("tansu.log")) else { return };
    broker.create_topics(&[("accel", 4), ("falls", 4)]).await;

    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let node = node(&urls, &dir.path().join("node"));
    common::grid_ok(&urls, &["deploy", "fall-detect", guests::FALL_DETECT]);

    // Bad triggers get clear errors.
    let bad = common::fails(common::grid_cli(
        &urls,
        &["trigger", "create", "t", "--kafka", &broker.address, "--topic", "accel", "--function", "fall-detect"]
            .into_iter()
            .chain(["--output-topic", "accel"])
            .collect::<Vec<_>>(),
    ));
    assert!(bad.contains("would read its own output"), "{bad}");
    let bad = common::fails(common::grid_cli(
        &urls,
        &[
            "trigger",
            "create",
            "t",
            "--kafka",
            "nowhere",
            "--topic",
            "a",
            "--function",
            "fall-detect",
            "--output-topic",
            "b",
        ],
    ));
    assert!(bad.contains("host:port"), "{bad}");
    common::grid_ok(&urls, &["deploy", "wc", guests::WORDCOUNT_MAP]);
    let bad = common::fails(common::grid_cli(
        &urls,
        &[
            "trigger",
            "create",
            "t",
            "--kafka",
            &broker.address,
            "--topic",
            "a",
            "--function",
            "wc",
            "--output-topic",
            "b",
        ],
    ));
    assert!(bad.contains("a trigger calls a scorer"), "{bad}");

    let created = common::grid_ok(
        &urls,
        &[
            "trigger",
            "create",
            "falls",
            "--kafka",
            &broker.address,
            "--topic",
            "accel",
            "--group",
            "fall-detectors",
            "--function",
            "fall-detect",
            "--output-topic",
            "falls",
            "--batch",
            "500",
            "--linger",
            "5ms",
        ],
    );
    assert!(created.contains("trigger falls: kafka accel -> fall-detect -> kafka falls"), "{created}");
    let listed = common::grid_ok(&urls, &["trigger", "ls"]);
    assert!(listed.contains("falls") && listed.contains("running"), "{listed}");

    // 100,000 windows: 10,000 phones, 10 windows each, about 2% falls.
    let windows = kafka::windows(10_000, 10, 0.02, 7);
    let falls: HashSet<(String, u64)> =
        windows.iter().enumerate().filter(|(_, w)| w.2).map(|(i, w)| (w.0.clone(), (i / 10_000) as u64)).collect();
    assert!(falls.len() > 1_000, "{} falls", falls.len());
    let producer = broker.producer();
    kafka::produce(&producer, "accel", &windows).await;

    let broker_ref = &broker;
    // Every output, and then 3 s more of reading: nothing else arrives.
    let mut all_in: Option<Instant> = None;
    let read = tokio::task::block_in_place(|| {
        broker_ref.read_until("falls", Duration::from_secs(240), |read| {
            read.len() >= windows.len() && all_in.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(3)
        })
    });
    let seen = kafka::tally(&read);
    assert_eq!(seen.len(), windows.len(), "every window scored ({} outputs read)", read.len());
    let twice: Vec<_> = seen.iter().filter(|(_, (n, _))| *n > 1).collect();
    assert!(twice.is_empty(), "nothing failed, so no window is scored twice: {} were", twice.len());
    assert_eq!(read.len(), windows.len(), "exactly once");
    let missed: Vec<_> = falls.iter().filter(|k| seen[*k].1 <= 0.5).collect();
    assert!(missed.is_empty(), "every fall flagged; missed {} of {}", missed.len(), falls.len());
    let false_alarms = seen.iter().filter(|(k, (_, p))| *p > 0.5 && !falls.contains(*k)).count();
    eprintln!("{} falls flagged, {false_alarms} false alarms in {} windows", falls.len(), windows.len());

    // What the node reported: every record read and produced, nothing
    // dead, and no lag left once the consumer has looked.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = common::trigger_status(&urls, "falls");
        let lag: i64 = s.nodes.iter().flat_map(|(_, u)| &u.partitions).map(|p| p.lag.max(0)).sum();
        let looked = s.nodes.iter().flat_map(|(_, u)| &u.partitions).all(|p| p.lag >= 0);
        if common::trigger_totals(&s) == (100_000, 100_000, 0) && lag == 0 && looked && s.nodes.len() == 1 {
            assert_eq!(s.nodes[0].1.state, "running");
            break;
        }
        assert!(Instant::now() < deadline, "the status never settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let text = common::grid_ok(&urls, &["trigger", "status", "falls"]);
    assert!(text.contains("PARTITION") && text.contains("LAG"), "{text}");
    let metric = common::node_metric_sum(&node.url, "wasmgrid_trigger_records_total").await;
    assert_eq!(metric, 100_000.0, "records on /metrics");
    let metric = common::node_metric_sum(&node.url, "wasmgrid_trigger_produced_total").await;
    assert_eq!(metric, 100_000.0, "produced on /metrics");

    // Paused, it reads nothing; resumed, it goes on where it stopped.
    common::grid_ok(&urls, &["trigger", "pause", "falls"]);
    common::wait_trigger_state(&urls, "falls", "paused").await;
    let later = kafka::windows(100, 1, 0.0, 8)
        .into_iter()
        .map(|(k, v, f)| (k, v.replace("\"seq\":0", "\"seq\":99"), f))
        .collect::<Vec<_>>();
    kafka::produce(&producer, "accel", &later).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        common::trigger_totals(&common::trigger_status(&urls, "falls")).0,
        0,
        "a paused trigger's counts start over, and it reads nothing"
    );
    common::grid_ok(&urls, &["trigger", "resume", "falls"]);
    let read =
        tokio::task::block_in_place(|| broker_ref.read_until("falls", Duration::from_secs(60), |r| r.len() >= 100_100));
    let seen = kafka::tally(&read);
    assert_eq!(seen.len(), 100_100, "the windows sent while paused are scored after resume");
    assert!(seen.values().all(|(n, _)| *n == 1), "each once");

    common::grid_ok(&urls, &["trigger", "rm", "falls"]);
    let gone = common::fails(common::grid_cli(&urls, &["trigger", "status", "falls"]));
    assert!(gone.contains("trigger `falls` not found"), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_goes_to_the_dead_letters_while_the_rest_flows_on_two_nodes() {
    stream_on_two_nodes(false).await;
}

/// A node `kill -9`ed mid-stream: the node left takes its partitions over
/// from the committed offsets, and no window is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_loses_no_window() {
    stream_on_two_nodes(true).await;
}

/// 20,000 windows through a trigger on two nodes, one record poison; with
/// `kill`, one node dies mid-stream.
async fn stream_on_two_nodes(kill: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(broker) = Broker::start(&dir.path().join("tansu.log")) else { return };
    broker.create_topics(&[("accel", 4), ("falls", 4), ("accel-dlq", 1)]).await;

    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let mut first = node(&urls, &dir.path().join("node-a"));
    let _second = node(&urls, &dir.path().join("node-b"));
    common::grid_ok(&urls, &["deploy", "fall-detect", guests::FALL_DETECT]);
    common::grid_ok(
        &urls,
        &[
            "trigger",
            "create",
            "falls",
            "--kafka",
            &broker.address,
            "--topic",
            "accel",
            "--function",
            "fall-detect",
            "--output-topic",
            "falls",
            "--batch",
            "200",
            "--dead-letter",
            "accel-dlq",
            "--max-attempts",
            "2",
        ],
    );
    // Both nodes join the group.
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::trigger_status(&urls, "falls").nodes.len() < 2 {
        assert!(Instant::now() < deadline, "both nodes run the trigger");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 20,000 windows from 2,000 phones, sent over about 8 s, one of them
    // poison (not numbers).
    let mut windows = kafka::windows(2_000, 10, 0.02, 11);
    let poison = 7_777;
    windows[poison].1 = windows[poison].1.replacen("\"ax\":\"", "\"ax\":\"boom ", 1);
    let producer = broker.producer();
    let sending = {
        let windows = windows.clone();
        tokio::spawn(async move {
            for chunk in windows.chunks(1_000) {
                kafka::produce(&producer, "accel", chunk).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
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

    let broker_ref = &broker;
    let read = tokio::task::block_in_place(|| {
        broker_ref.read_until("falls", Duration::from_secs(120), |read| kafka::tally(read).len() >= windows.len() - 1)
    });
    let seen = kafka::tally(&read);
    if seen.len() != windows.len() - 1 {
        let log = std::fs::read_to_string(dir.path().join("node-b.log")).unwrap_or_default();
        let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
        let tansu = std::fs::read_to_string(dir.path().join("tansu.log")).unwrap_or_default();
        let tansu: String = tansu
            .lines()
            .filter(|l| l.contains("heartbeat") || l.contains("rebalanc") || l.contains("join"))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n");
        let inputs = tokio::task::block_in_place(|| {
            broker_ref.read_until("accel", Duration::from_secs(20), |r| r.len() >= windows.len())
        });
        let missing: Vec<String> = inputs
            .iter()
            .filter(|(k, v)| !seen.contains_key(&(k.clone(), v["seq"].as_u64().unwrap_or(0))))
            .map(|(_, v)| v["_at"].to_string())
            .collect();
        let mut per: std::collections::BTreeMap<String, (u64, i64)> = Default::default();
        for (_, v) in &read {
            let at = v["_at"].as_str().unwrap_or_default();
            let (p, o) = at.split_once('/').unwrap_or_default();
            let e = per.entry(p.to_string()).or_default();
            e.0 += 1;
            e.1 = e.1.max(o.parse().unwrap_or(0));
        }
        let dead =
            tokio::task::block_in_place(|| broker_ref.read_until("accel-dlq", Duration::from_secs(5), |_| false));
        let errors: Vec<String> = dead.iter().take(3).map(|(_, v)| v["error"].to_string()).collect();
        eprintln!("{} dead letters: {errors:?}", dead.len());
        panic!(
            "{} of {} windows scored; output partitions (records, last offset) {per:?}; missing at {missing:?}\n{:?}\n{tail}\n--- tansu\n{tansu}",
            seen.len(),
            windows.len() - 1,
            common::trigger_status(&urls, "falls")
        );
    }
    let duplicates: u32 = seen.values().map(|(n, _)| n - 1).sum();
    eprintln!("{} outputs for {} windows, {duplicates} duplicates (at-least-once)", read.len(), seen.len());
    let poisoned = (windows[poison].0.clone(), (poison / 2_000) as u64);
    assert!(!seen.contains_key(&poisoned), "the poison record is not in the output");

    let dead =
        tokio::task::block_in_place(|| broker_ref.read_until("accel-dlq", Duration::from_secs(30), |r| !r.is_empty()));
    assert!(!dead.is_empty(), "the poison record is a dead letter");
    let (key, letter) = &dead[0];
    assert_eq!(key, &windows[poison].0, "keyed as its input");
    assert_eq!(letter["attempts"], 2, "{letter}");
    assert!(letter["error"].as_str().is_some_and(|e| e.contains("`boom` is not a number")), "{letter}");
    let value: Value = serde_json::from_str(letter["value"].as_str().expect("value")).expect("the record");
    assert_eq!(value["seq"], (poison / 2_000) as u64);
    // The nodes counted the dead letter with its failed calls; after a
    // kill, the node left runs every partition.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = common::trigger_status(&urls, "falls");
        let assigned = s.nodes.iter().flat_map(|(_, u)| &u.partitions).filter(|p| p.assigned).count();
        let errors: u64 = s.nodes.iter().flat_map(|(_, u)| &u.partitions).map(|p| p.errors).sum();
        let dead = common::trigger_totals(&s).2;
        let settled = match kill {
            true => s.nodes.len() == 1 && assigned == 4,
            false => s.nodes.len() == 2 && dead == 1,
        };
        if settled {
            assert!(dead <= 1 && errors >= 2 * dead, "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the trigger's status never settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
