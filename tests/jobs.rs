//! Batch jobs on a real grid: control-plane and node processes on
//! loopback, real sled, real wasmtime, data on the local file system.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use common::grid::{Node, Replicas};
use wasmgrid_api::{Client, InvokeRequest, JobInfo, JobState};
use wasmgrid_test_artifacts as guests;

const MODEL: &str = r#"{"features": ["x1", "x2"], "weights": [0.8, -1.25], "bias": 0.3}"#;

async fn wait_job(client: &Client, id: &str, timeout: Duration) -> JobInfo {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(job) = client.job(id).await
            && job.state.is_final()
        {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not end within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the job has `n` map tasks done.
async fn wait_progress(client: &Client, id: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(job) = client.job(id).await {
            assert!(!job.state.is_final(), "the job ended before the fault: {job:?}");
            if job.map_done >= n {
                return;
            }
        }
        assert!(Instant::now() < deadline, "job {id} made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn deploy_wordcount(urls: &str) {
    common::grid_ok(urls, &["deploy", "wc-map", guests::WORDCOUNT_MAP]);
    common::grid_ok(urls, &["deploy", "wc-reduce", guests::WORDCOUNT_REDUCE]);
}

/// Submits the word count; `extra` goes after the usual arguments.
fn submit_wordcount(urls: &str, corpus: &Path, out: &Path, partition_size: &str, extra: &[&str]) -> String {
    let (corpus, out) = (corpus.display().to_string(), out.display().to_string());
    let args = ["job", "submit", "wc-map", "--input", &corpus, "--output", &out, "--reduce", "wc-reduce"];
    let more = ["--reduce-partitions", "4", "--partition-size", partition_size];
    let stdout = common::grid_ok(urls, &[&args[..], &more, extra].concat());
    stdout.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_over_64_partitions_on_two_nodes_equals_an_independent_count() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let _a = Node::start(&urls, &dir.join("node-a"));
    let _b = Node::start(&urls, &dir.join("node-b"));
    deploy_wordcount(&urls);
    let corpus = dir.join("corpus");
    common::write_corpus(&corpus, 8, 64 << 10, 5);
    let out = dir.join("out");

    // `--wait` shows progress and exits 0 on success.
    let stdout = common::grid_ok(
        &urls,
        &[
            "job",
            "submit",
            "wc-map",
            "--input",
            &corpus.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--reduce",
            "wc-reduce",
            "--reduce-partitions",
            "4",
            "--partition-size",
            "8KiB",
            "--wait",
            "--json",
        ],
    );
    let job: JobInfo = serde_json::from_str(&stdout).expect("job JSON");
    assert_eq!(job.state, JobState::Succeeded);
    assert!(job.map_tasks >= 64, "{} map tasks", job.map_tasks);
    assert_eq!((job.map_done, job.reduce_done, job.reduce_tasks), (job.map_tasks, 4, 4));
    let expected = common::count_words(&corpus);
    assert_eq!(
        job.records_in,
        std::fs::read_dir(&corpus)
            .expect("dir")
            .map(|e| { std::fs::read_to_string(e.expect("e").path()).expect("read").lines().count() as u64 })
            .sum::<u64>(),
        "every line read once"
    );
    assert_eq!(common::published_counts(&out), expected);
    assert_eq!(job.rows_out, expected.len() as u64);

    // The list shows it; status by id too.
    let ls = common::grid_ok(&urls, &["job", "ls"]);
    assert!(ls.contains(&job.id) && ls.contains("succeeded"), "{ls}");
    let status = common::grid_ok(&urls, &["job", "status", &job.id]);
    assert!(status.contains("succeeded"), "{status}");

    // The same output again without --overwrite is refused up front.
    let (corpus, out) = (corpus.display().to_string(), out.display().to_string());
    let again = ["job", "submit", "wc-map", "--input", &corpus, "--output", &out, "--reduce", "wc-reduce"];
    let stderr = common::fails(common::grid_cli(&urls, &again));
    assert!(stderr.contains("--overwrite"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logreg_as_a_batch_job_over_parquet_scores_like_per_request_calls() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let node = Node::start(&urls, &dir.join("node"));
    let _other = Node::start(&urls, &dir.join("node-2"));
    common::grid_ok(&urls, &["deploy", "scorer", guests::LOGREG, "--config", &format!("model={MODEL}")]);

    let n = 3000;
    let mut rng = common::Rng::new(3);
    let ids: Vec<i64> = (0..n as i64).collect();
    let x1: Vec<f64> = (0..n).map(|_| rng.unit() * 4.0 - 2.0).collect();
    let x2: Vec<f64> = (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x1", DataType::Float64, false),
        Field::new("x2", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Float64Array::from(x1.clone())),
            Arc::new(Float64Array::from(x2.clone())),
        ],
    )
    .expect("batch");
    let input = dir.join("rows.parquet");
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(250)).build();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(File::create(&input).expect("file"), schema, Some(props)).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");

    let out = dir.join("scored");
    let args = ["job", "submit", "scorer", "--input", &input.display().to_string(), "--output"];
    let stdout = common::grid_ok(
        &urls,
        &[&args[..], &[&out.display().to_string(), "--format", "parquet", "--partition-size", "1", "--wait", "--json"]]
            .concat(),
    );
    let job: JobInfo = serde_json::from_str(&stdout).expect("job JSON");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.map_tasks, 12, "one task per row group");
    assert_eq!(job.rows_out, n as u64);

    // Read every published Parquet file back.
    let mut scores: HashMap<i64, f64> = HashMap::new();
    for entry in std::fs::read_dir(&out).expect("out") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).expect("open"))
                .expect("parquet")
                .build()
                .expect("reader");
        for b in reader {
            let b = b.expect("batch");
            let id = b.column_by_name("id").expect("id").as_any().downcast_ref::<Int64Array>().expect("i64").clone();
            let score =
                b.column_by_name("score").expect("score").as_any().downcast_ref::<Float64Array>().expect("f64").clone();
            for i in 0..b.num_rows() {
                assert!(scores.insert(id.value(i), score.value(i)).is_none(), "row {} twice", id.value(i));
            }
        }
    }
    assert_eq!(scores.len(), n);

    // Per-request scoring of the same rows through a node's gateway.
    let client = replicas.client(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = (0..n)
        .map(|i| serde_json::json!({"id": ids[i], "x1": x1[i], "x2": x2[i]}).as_object().cloned().expect("object"))
        .collect();
    let answer = loop {
        match client.invoke(&node.url, "default", "scorer", &InvokeRequest { rows: rows.clone() }).await {
            Ok(a) => break a,
            Err(e) => assert!(Instant::now() < deadline, "the gateway never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for row in &answer.rows {
        let id = row["id"].as_i64().expect("id");
        let want = row["score"].as_f64().expect("score");
        let got = scores[&id];
        assert!((got - want).abs() <= 1e-12, "row {id}: batch {got}, per request {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_job_loses_no_row_and_duplicates_none() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let mut a = Node::start(&urls, &dir.join("node-a"));
    let _b = Node::start(&urls, &dir.join("node-b"));
    deploy_wordcount(&urls);
    let corpus = dir.join("corpus");
    common::write_corpus(&corpus, 8, 256 << 10, 9);
    let out = dir.join("out");
    // Some 500 tasks in ranges of 8: the killed node's ranges run again.
    let id = submit_wordcount(&urls, &corpus, &out, "4KiB", &["--range", "8"]);
    // Follow the job's event stream meanwhile.
    let events = tokio::spawn(
        common::http().get(format!("{}/v1/jobs/{id}/events", replicas.url(1))).send().await.expect("events").text(),
    );
    let client = replicas.client_all();
    wait_progress(&client, &id, 20).await;
    a.kill();
    let job = wait_job(&client, &id, Duration::from_secs(120)).await;
    assert_eq!((job.state, job.map_range, job.map_done), (JobState::Succeeded, 8, job.map_tasks), "{job:?}");
    assert_eq!(common::published_counts(&out), common::count_words(&corpus));
    // The stream saw progress only ever grow, and ended with the outcome.
    let text = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("the stream ends")
        .expect("task")
        .expect("body");
    let mut seen: Vec<(String, JobInfo)> = Vec::new();
    for block in text.split("\n\n").filter(|b| b.contains("data:")) {
        let name = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_string();
        let data = block.lines().find_map(|l| l.strip_prefix("data: ")).expect("data");
        seen.push((name, serde_json::from_str(data).expect("job JSON")));
    }
    assert!(seen.len() >= 3, "{text}");
    assert!(seen.windows(2).all(|w| w[0].1.map_done <= w[1].1.map_done && w[0].1.reduce_done <= w[1].1.reduce_done));
    let (last, final_job) = seen.last().expect("an event");
    assert_eq!((last.as_str(), final_job.state), ("end", JobState::Succeeded));
    assert!(seen[..seen.len() - 1].iter().all(|(n, _)| n == "progress"));
    // The killed node's attempts ran again elsewhere: given up once it
    // missed its heartbeats, or copied sooner as stragglers.
    let log = std::fs::read_to_string(replicas.log(1)).unwrap_or_default();
    assert!(log.contains("node lost; task queued again") || log.contains("speculative copy"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_job_still_publishes_exact_output() {
    let mut replicas = Replicas::start(3, 1000);
    let leader = replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path().to_path_buf();
    let _a = Node::start(&urls, &dir.join("node-a"));
    let _b = Node::start(&urls, &dir.join("node-b"));
    deploy_wordcount(&urls);
    let corpus = dir.join("corpus");
    common::write_corpus(&corpus, 8, 256 << 10, 13);
    let out = dir.join("out");
    // In ranges of 8: a new leader reads which ranges won and runs the rest.
    let id = submit_wordcount(&urls, &corpus, &out, "4KiB", &["--range", "8"]);
    let client = replicas.client_all();
    wait_progress(&client, &id, 20).await;
    replicas.kill(leader);
    let job = wait_job(&client, &id, Duration::from_secs(120)).await;
    assert_eq!((job.state, job.map_range, job.map_done), (JobState::Succeeded, 8, job.map_tasks), "{job:?}");
    assert_eq!(common::published_counts(&out), common::count_words(&corpus));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_always_traps_fails_the_job_after_max_attempts_with_its_message() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let _a = Node::start(&urls, &dir.join("node-a"));
    let _b = Node::start(&urls, &dir.join("node-b"));
    common::grid_ok(
        &urls,
        &["deploy", "bad", guests::HOSTILE_SCORER, "--config", "mode=trap", "--config", "message=sensor 7 is on fire"],
    );
    let input = dir.join("rows.jsonl");
    std::fs::write(&input, (0..100).map(|i| format!("{{\"x\": {i}}}\n")).collect::<String>()).expect("rows");
    let out = dir.join("out");
    let (input, out_arg) = (input.display().to_string(), out.display().to_string());
    let args = ["job", "submit", "bad", "--input", &input, "--output", &out_arg, "--max-attempts", "3", "--wait"];
    let stderr = common::fails(common::grid_cli(&urls, &args));
    assert!(stderr.contains("failed 3 time(s)") && stderr.contains("sensor 7 is on fire"), "{stderr}");
    let job = replicas.client(1).jobs().await.expect("jobs").jobs.remove(0);
    assert_eq!(job.state, JobState::Failed);
    assert!(job.failed_attempts >= 3, "{job:?}");
    assert!(!out.join("_SUCCESS").exists(), "a failed job publishes nothing");
    let status = common::grid_ok(&urls, &["job", "status", &job.id]);
    assert!(status.contains("sensor 7 is on fire"), "{status}");
    let logs = common::grid_ok(&urls, &["job", "logs", &job.id]);
    assert!(
        logs.contains("map task 0: 3 failed attempt(s), not done") && logs.contains("sensor 7 is on fire"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tiny_tasks_run_in_ranges_and_publish_every_row_once() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let _a = Node::start(&urls, &dir.join("node-a"));
    let _b = Node::start(&urls, &dir.join("node-b"));
    common::grid_ok(&urls, &["deploy", "scorer", guests::LOGREG, "--config", &format!("model={MODEL}")]);
    // 3,000 rows split into 32-byte partitions: about 4,000 tasks, some
    // holding no row at all.
    let n = 3000;
    let mut rng = common::Rng::new(11);
    let rows: Vec<(f64, f64)> = (0..n).map(|_| (rng.unit() * 4.0 - 2.0, rng.unit() * 2.0 - 1.0)).collect();
    let input = dir.join("rows.jsonl");
    let text: String = rows
        .iter()
        .enumerate()
        .map(|(id, (x1, x2))| format!("{{\"id\": {id}, \"x1\": {x1}, \"x2\": {x2}}}\n"))
        .collect();
    std::fs::write(&input, &text).expect("rows");
    let out = dir.join("out");
    let (input, out_arg) = (input.display().to_string(), out.display().to_string());
    let args = ["job", "submit", "scorer", "--input", &input, "--output", &out_arg, "--partition-size", "32"];
    let stdout = common::grid_ok(&urls, &[&args[..], &["--wait", "--json"]].concat());
    let job: JobInfo = serde_json::from_str(&stdout).expect("job JSON");
    let tasks = text.len().div_ceil(32) as u32;
    assert_eq!((job.state, job.map_tasks, job.map_done), (JobState::Succeeded, tasks, tasks), "{job:?}");
    // Chosen from the partitions: a range per 256th of the tasks.
    assert_eq!(job.map_range, tasks / 256, "{job:?}");
    assert_eq!((job.records_in, job.rows_out), (n as u64, n as u64));

    // Every row scored once, as the model says.
    let mut seen = vec![false; n];
    for entry in std::fs::read_dir(&out).expect("out") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(&path).expect("part").lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("row");
            let id = row["id"].as_u64().expect("id") as usize;
            assert!(!std::mem::replace(&mut seen[id], true), "row {id} twice");
            let (x1, x2) = rows[id];
            let want = 1.0 / (1.0 + (-(0.8 * x1 - 1.25 * x2 + 0.3)).exp());
            let got = row["score"].as_f64().expect("score");
            assert!((got - want).abs() <= 1e-12, "row {id}: {got}, not {want}");
        }
    }
    assert!(seen.iter().all(|&s| s), "every row published");
    // `_SUCCESS` accounts for every task: the published files' ranges of
    // tasks follow each other from the first to the last.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("_SUCCESS")).expect("_SUCCESS")).expect("manifest");
    assert_eq!(manifest["partitions"], tasks);
    let attempts = manifest["attempts"].as_object().expect("attempts");
    assert_eq!(attempts.len() as u32, tasks.div_ceil(job.map_range), "one winning attempt per range");
    assert!(attempts.contains_key(&format!("map/0-{}", job.map_range - 1)), "{attempts:?}");
    let mut next = 0;
    for file in manifest["files"].as_array().expect("files") {
        let range = file["partition_range"].as_array().expect("range");
        assert_eq!(range[0], next, "{manifest}");
        next = range[1].as_u64().expect("last") + 1;
    }
    assert_eq!(next, u64::from(tasks));
}

/// One replica and one node, with the word count deployed.
async fn word_count_grid() -> (Replicas, Node) {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    deploy_wordcount(&replicas.urls());
    (replicas, node)
}

/// An input of empty files is a job with nothing to run: it succeeds with
/// an empty output and its `_SUCCESS`, as `wasmgrid run` does on the same
/// files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_empty_files_succeeds_with_no_rows_like_a_local_run() {
    let (replicas, _node) = word_count_grid().await;
    let (urls, dir) = (replicas.urls(), replicas.dir.path());
    let corpus = dir.join("empty");
    std::fs::create_dir_all(&corpus).expect("dir");
    std::fs::write(corpus.join("a.txt"), "").expect("empty file");
    std::fs::write(corpus.join("b.txt"), "").expect("empty file");
    let out = dir.join("out");
    let local = dir.join("local");
    let (input, out_arg) = (corpus.display().to_string(), out.display().to_string());
    let args = ["job", "submit", "wc-map", "--input", &input, "--output", &out_arg, "--reduce", "wc-reduce", "--wait"];
    common::grid_ok(&urls, &args);
    let job = replicas.client(1).jobs().await.expect("jobs").jobs.remove(0);
    assert_eq!((job.state, job.rows_out), (JobState::Succeeded, 0), "{job:?}");
    assert!(out.join("_SUCCESS").exists());
    let local_run = common::wasmgrid()
        .args(["run", guests::WORDCOUNT_MAP, "--reduce", guests::WORDCOUNT_REDUCE, "-i", &input, "-o"])
        .arg(&local)
        .output()
        .expect("wasmgrid run");
    common::ok(local_run);
    let files = |d: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .expect("output")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(&out), files(&local), "the grid and a local run publish the same (nothing but _SUCCESS)");
}

/// A mapper that emits key/value pairs in a job without a reducer cannot
/// succeed however often it is retried: the job fails on the first report,
/// with the reason, instead of after its maximum attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_without_a_reducer_fail_the_job_at_once() {
    let (replicas, _node) = word_count_grid().await;
    let (urls, dir) = (replicas.urls(), replicas.dir.path());
    let corpus = dir.join("corpus");
    common::write_corpus(&corpus, 4, 2_000, 7);
    let out = dir.join("out");
    let (input, out_arg) = (corpus.display().to_string(), out.display().to_string());
    let args = ["job", "submit", "wc-map", "--input", &input, "--output", &out_arg, "--max-attempts", "50", "--wait"];
    let stderr = common::fails(common::grid_cli(&urls, &args));
    assert!(stderr.contains("cannot run") && stderr.contains("no reducer (--reduce)"), "{stderr}");
    let job = replicas.client(1).jobs().await.expect("jobs").jobs.remove(0);
    assert_eq!(job.state, JobState::Failed);
    assert!(job.failed_attempts < 10, "retried a job that cannot run: {job:?}");
    assert!(!out.join("_SUCCESS").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_tasks_within_a_second() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let a = Node::start(&urls, &dir.join("node-a"));
    // A guest that spins until its 60 s limit.
    common::grid_ok(&urls, &["deploy", "spin", guests::HOSTILE_SCORER, "--config", "mode=loop", "--timeout", "60s"]);
    let input = dir.join("rows.jsonl");
    std::fs::write(&input, (0..100).map(|i| format!("{{\"x\": {i}}}\n")).collect::<String>()).expect("rows");
    let out = dir.join("out");
    // In ranges of 4 partitions of about 100 bytes: every slot spins in a
    // range's first call.
    let (input_arg, out_arg) = (input.display().to_string(), out.display().to_string());
    let args = ["job", "submit", "spin", "--input", &input_arg, "--output", &out_arg];
    let id = common::grid_ok(&urls, &[&args[..], &["--partition-size", "100", "--range", "4"]].concat());
    let id = id.trim();
    let client = replicas.client(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.job(id).await.expect("job").running == 0 {
        assert!(Instant::now() < deadline, "the task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the guest spin a while, then cancel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = Instant::now();
    let job = client.cancel_job(id).await.expect("cancel");
    assert_eq!(job.state, JobState::Cancelled);
    // The node's CPU goes idle once the spinning call is stopped.
    let pid = node_pid(&a);
    let stopped = loop {
        let busy = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if cpu_ticks(pid) - busy <= 2 {
            break cancelled.elapsed();
        }
        assert!(cancelled.elapsed() < Duration::from_secs(10), "the task kept running after the cancel");
    };
    assert!(stopped < Duration::from_millis(1500), "stopped {stopped:?} after the cancel");
    assert!(!out.join("_SUCCESS").exists());
}

fn node_pid(node: &Node) -> u32 {
    node.pid()
}

/// user + system CPU ticks of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_requests_get_clear_errors() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    deploy_wordcount(&urls);
    let fail = |args: &[&str]| common::fails(common::grid_cli(&urls, args));
    let out = dir.join("out").display().to_string();
    let missing = dir.join("nope").display().to_string();
    assert!(fail(&["job", "submit", "nope", "--input", &missing, "--output", &out]).contains("not found"));
    let e = fail(&["job", "submit", "wc-map", "--input", &missing, "--output", &out]);
    assert!(e.contains("nope"), "{e}");
    let e = fail(&["job", "submit", "wc-reduce", "--input", &missing, "--output", &out]);
    assert!(e.contains("reducer"), "{e}");
    let e = fail(&["job", "submit", "wc-map", "--input", &missing, "--output", &out, "--reduce", "wc-map"]);
    assert!(e.contains("not a reducer"), "{e}");
    let e = fail(&["job", "submit", "wc-map", "--input", &missing, "--output", &out, "--format", "xml"]);
    assert!(e.contains("xml"), "{e}");
    assert!(fail(&["job", "status", "job-999999"]).contains("not found"));
    assert!(fail(&["job", "status", "../etc"]).contains("not a job id"));
}

/// A job's `--schema` reaches the nodes that read its partitions, and
/// values past the inferred head widen a partition's column there as in
/// `wasmgrid run`; a column the input lacks is refused at submit, and a
/// value that does not fit its fixed type fails the job at once naming its
/// file, line and column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_schema_fixes_column_types_on_the_nodes() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let _node = Node::start(&urls, &dir.join("node"));
    common::grid_ok(&urls, &["deploy", "scorer", guests::LOGREG, "--config", &format!("model={MODEL}")]);
    // 2,000 rows in partitions of about 8 KiB: `code` is digits with
    // leading zeros, `delay` integers but for a 2.5 at row 1,500.
    let input = dir.join("flights.csv");
    let mut text = String::from("id,code,delay,x1,x2\n");
    for i in 0..2000 {
        let delay = if i == 1500 { "2.5".to_string() } else { (i % 60).to_string() };
        text.push_str(&format!("{i},{:04},{delay},0.5,-1\n", i % 300));
    }
    std::fs::write(&input, text).expect("csv");
    let input = input.display().to_string();
    let submit = |out: &str, extra: &[&str]| {
        let out = dir.join(out).display().to_string();
        let mut args = vec!["job", "submit", "scorer", "--input", &input, "--output", &out, "--partition-size", "8KiB"];
        args.extend_from_slice(extra);
        args.push("--wait");
        common::grid_cli(&urls, &args)
    };
    common::ok(submit("inferred", &["--max-attempts", "1"]));
    common::ok(submit("fixed", &["--schema", "code:str,delay:float", "--max-attempts", "1"]));
    let rows = |out: &str| -> Vec<serde_json::Value> {
        let text = common::parts_text(&dir.join(out));
        let mut rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("row")).collect();
        rows.sort_by_key(|r| r["id"].as_i64());
        rows
    };
    let jobs = replicas.client(1).jobs().await.expect("jobs").jobs;
    assert_eq!(jobs[0].schema.as_deref(), Some("code:str,delay:float"), "the newest job shows its schema");
    assert_eq!(jobs[1].schema, None);
    let (inferred, fixed) = (rows("inferred"), rows("fixed"));
    assert_eq!((inferred.len(), fixed.len()), (2000, 2000));
    assert_eq!((inferred[1500]["delay"].as_f64(), fixed[1500]["delay"].as_f64()), (Some(2.5), Some(2.5)));
    assert_eq!((&inferred[7]["code"], &fixed[7]["code"]), (&serde_json::json!(7), &serde_json::json!("0007")));
    // Fixed: floats in every partition, where inferred partitions keep integers.
    assert!(fixed.iter().all(|r| r["delay"].is_f64()), "every delay a float");
    assert!(inferred[3]["delay"].is_i64(), "{}", inferred[3]);

    let refused = common::fails(submit("refused", &["--schema", "carrier:str"]));
    assert!(refused.contains("--schema names column `carrier`, which it does not have"), "{refused}");
    let failed = common::fails(submit("unfit", &["--schema", "delay:int", "--max-attempts", "3"]));
    assert!(failed.contains("line 1502, column `delay`: `2.5` is not an integer (--schema delay:int)"), "{failed}");
}
