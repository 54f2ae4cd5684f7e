//! Batch-job benchmark (`cargo bench --bench jobs`): a real grid of one
//! control-plane replica and two nodes (release `wasmgrid` processes) on
//! this machine.
//!
//! 1. Word count over a generated corpus (`WORDS_MB`, default 256, in 32
//!    files): the grid job (map, shuffle into 4 reduce partitions, reduce,
//!    commit) against a plain-Rust word count of the same files
//!    (`split_ascii_whitespace` into a `HashMap`, one thread per core).
//!    Target: at most 1.5x.
//! 2. Tiny tasks: a 10,000-partition job of a scorer over one row each
//!    (`TINY_TASKS` to change the count): tasks per second from submit to
//!    the published `_SUCCESS`. Target: at least 20,000/s.
//!
//! `PHASES=1` also prints, per job, when it was submitted, when every task
//! had a winner and when its output was published.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmgrid_api::{Client, JobInfo, JobRequest, JobState};
use wasmgrid_test_artifacts as guests;

#[path = "../tests/common/mod.rs"]
mod common;

use common::grid::{Node, Replicas};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn deploy(urls: &str, name: &str, wasm: &str, extra: &[&str]) {
    let out =
        common::wasmgrid().args(["deploy", name, wasm]).args(extra).args(["--url", urls]).output().expect("deploy");
    assert!(out.status.success(), "deploy {name}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn run_job(client: &Client, request: &JobRequest) -> (JobInfo, Duration) {
    let started = Instant::now();
    let job = client.submit_job(request).await.expect("submit");
    let submitted = started.elapsed();
    let mut committing = None;
    loop {
        let j = client.job(&job.id).await.expect("status");
        if j.state == JobState::Committing && committing.is_none() {
            committing = Some(started.elapsed());
        }
        if j.state.is_final() && std::env::var_os("PHASES").is_some() {
            eprintln!(
                "  phases: submitted {submitted:?}, all tasks won {committing:?}, published {:?}",
                started.elapsed()
            );
        }
        if j.state.is_final() {
            assert_eq!(j.state, JobState::Succeeded, "{j:?}");
            return (j, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The plain-Rust baseline: every file read and counted, one thread per core.
fn plain_word_count(files: &[PathBuf]) -> HashMap<String, u64> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<&[PathBuf]> = files.chunks(files.len().div_ceil(threads)).collect();
    let partials: Vec<HashMap<String, u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut counts: HashMap<String, u64> = HashMap::new();
                    for f in *chunk {
                        let text = std::fs::read_to_string(f).expect("read");
                        for w in text.split_ascii_whitespace() {
                            match counts.get_mut(w) {
                                Some(n) => *n += 1,
                                None => {
                                    counts.insert(w.to_string(), 1);
                                }
                            }
                        }
                    }
                    counts
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut total = HashMap::new();
    for p in partials {
        for (w, n) in p {
            *total.entry(w).or_insert(0) += n;
        }
    }
    total
}

fn published_words(out: &Path) -> usize {
    std::fs::read_dir(out)
        .expect("out")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("jsonl"))
        .map(|p| std::fs::read_to_string(p).expect("part").lines().count())
        .sum()
}

fn main() {
    let words_mb = env_or("WORDS_MB", 256);
    let tiny = env_or("TINY_TASKS", 10_000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmgrid batch-job benchmark: 1 control-plane replica + 2 nodes on this machine ({cores} cores)\n");

    let replicas = Replicas::start(1, 100_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    rt.block_on(replicas.wait_leader(Duration::from_secs(15)));
    let urls = replicas.urls();
    let dir = replicas.dir.path().to_path_buf();
    let a = Node::start(&urls, &dir.join("node-a"));
    let b = Node::start(&urls, &dir.join("node-b"));
    deploy(&urls, "wc-map", guests::WORDCOUNT_MAP, &[]);
    deploy(&urls, "wc-reduce", guests::WORDCOUNT_REDUCE, &[]);
    deploy(&urls, "tiny", guests::HOSTILE_SCORER, &["--config", "mode=ok"]);
    let client = replicas.client(1);

    // 1. Word count.
    let corpus = dir.join("corpus");
    let files = common::write_corpus(&corpus, 32, (words_mb << 20) / 32, 42);
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).sum();
    // Warm the page cache and the nodes' compiled code with a first run.
    let request = |out: &str| JobRequest {
        function: "wc-map".into(),
        input: corpus.display().to_string(),
        output: dir.join(out).display().to_string(),
        reduce: Some("wc-reduce".into()),
        reduce_partitions: Some(4),
        partition_size: Some(32 << 20),
        overwrite: true,
        ..Default::default()
    };
    rt.block_on(run_job(&client, &request("warm")));
    let mut grid = Vec::new();
    for i in 0..3 {
        let (job, took) = rt.block_on(run_job(&client, &request(&format!("wc-{i}"))));
        grid.push((took, job));
    }
    let (grid_time, job) = grid.iter().map(|(t, j)| (*t, j.clone())).min_by_key(|(t, _)| *t).expect("runs");
    let mut plain = Vec::new();
    let mut expected = 0;
    for _ in 0..3 {
        let started = Instant::now();
        expected = plain_word_count(&files).len();
        plain.push(started.elapsed());
    }
    let plain_time = plain.into_iter().min().expect("runs");
    // The same job on this machine without the grid: `wasmgrid run`, same
    // components, same partitions, its own compiled cache warmed first.
    let local = |out: &str| {
        let started = Instant::now();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_wasmgrid"))
            .args(["run", guests::WORDCOUNT_MAP, "--reduce", guests::WORDCOUNT_REDUCE, "--overwrite", "--quiet"])
            .args(["--reduce-partitions", "4", "--partition-size", "32MiB"])
            .arg("--input")
            .arg(&corpus)
            .arg("--output")
            .arg(dir.join(out))
            .arg("--cache-dir")
            .arg(dir.join("run-cache"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("wasmgrid runs");
        assert!(status.success(), "wasmgrid run failed");
        started.elapsed()
    };
    local("run-warm");
    let run_time = (0..3).map(|i| local(&format!("run-{i}"))).min().expect("runs");
    assert_eq!(published_words(&dir.join("wc-0")), expected, "the grid counted the same words");
    println!(
        "word count, {:.0} MB in {} files ({} map tasks, 4 reduce tasks), best of 3:",
        bytes as f64 / 1e6,
        files.len(),
        job.map_tasks
    );
    println!(
        "  wasmgrid job (2 nodes):  {:>8.2} s  ({:.0} MB/s)",
        grid_time.as_secs_f64(),
        bytes as f64 / 1e6 / grid_time.as_secs_f64()
    );
    println!(
        "  plain Rust ({cores} threads): {:>8.2} s  ({:.0} MB/s)",
        plain_time.as_secs_f64(),
        bytes as f64 / 1e6 / plain_time.as_secs_f64()
    );
    println!(
        "  wasmgrid run (1 process): {:>8.2} s  ({:.0} MB/s)",
        run_time.as_secs_f64(),
        bytes as f64 / 1e6 / run_time.as_secs_f64()
    );
    println!("  job / plain Rust: {:.2}x (target <= 1.5x)", grid_time.as_secs_f64() / plain_time.as_secs_f64());
    println!("  job / wasmgrid run: {:.2}x (target <= 1.3x)\n", grid_time.as_secs_f64() / run_time.as_secs_f64());

    // 2. Tiny tasks: one JSON line per partition.
    let input = dir.join("tiny.jsonl");
    let line = "{\"x\": 1.0}\n";
    std::fs::write(&input, line.repeat(tiny)).expect("tiny input");
    let request = |i: usize, range: Option<u32>| JobRequest {
        function: "tiny".into(),
        input: input.display().to_string(),
        output: dir.join(format!("tiny-{i}")).display().to_string(),
        partition_size: Some(line.len() as u64),
        range,
        overwrite: true,
        ..Default::default()
    };
    // CPU time of the control plane and the nodes over the runs, per task:
    // where a task's cost goes.
    let cpu = || [replicas.pid(1), a.pid(), b.pid()].map(common::cpu_seconds);
    let tiny_runs = |range: Option<u32>| {
        let before = cpu();
        let (job, took) = (0..3)
            .map(|i| rt.block_on(run_job(&client, &request(i, range))))
            .min_by_key(|(_, took)| *took)
            .expect("runs");
        let used: Vec<f64> =
            cpu().iter().zip(before).map(|(after, before)| (after - before) / (3 * tiny) as f64 * 1e6).collect();
        assert_eq!(job.map_tasks as usize, tiny);
        assert_eq!(job.rows_out as usize, tiny);
        (job, took, used)
    };
    let (job, took, used) = tiny_runs(None);
    println!(
        "tiny tasks: {} tasks of one row each, in ranges of {}, submit to _SUCCESS, best of 3:",
        job.map_tasks, job.map_range
    );
    println!("  {:.2} s, {:.0} tasks/s (target >= 50,000/s)", took.as_secs_f64(), tiny as f64 / took.as_secs_f64());
    println!(
        "  CPU per task (3 runs): control plane {:.1} µs, nodes {:.1} + {:.1} µs (the CLI and the clock's other users aside)",
        used[0], used[1], used[2]
    );
    // The same job one task per attempt (`--range 1`), as before ranges.
    let (_, single, single_used) = tiny_runs(Some(1));
    println!("  one task per attempt (--range 1): {:.0} tasks/s", tiny as f64 / single.as_secs_f64());
    println!(
        "  CPU per task: control plane {:.1} µs, nodes {:.1} + {:.1} µs; ranges: {:.1}x the rate, {:.1}x less control-plane CPU",
        single_used[0],
        single_used[1],
        single_used[2],
        single.as_secs_f64() / took.as_secs_f64(),
        single_used[0] / used[0]
    );
}
