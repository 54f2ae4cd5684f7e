//! Aggregators end to end: the flights query (per carrier: flights, flights
//! with a delay, mean delay, flights delayed 15+ minutes, longest distance)
//! as one component, over generated data with null carriers and null
//! delays, against the answer computed row by row: through `wasmgrid run`
//! over CSV and Parquet, and as a grid job whose reduce stage merges the
//! tasks' partial states with no reducer. Then what a user gets wrong: a
//! column the input lacks, `--reduce` given, a per-request call, empty
//! input; and the example's length (the query in at most 15 lines).

mod common;

use std::path::Path;
use std::time::Duration;

use common::flights::{self, Answer};
use common::grid::{Node, Replicas};
use common::{fails, ok, run_in};
use wasmgrid_test_artifacts as guests;

/// The rows of every output file of `dir`.
fn output_rows(dir: &Path) -> Vec<serde_json::Value> {
    common::parts_text(dir).lines().map(|l| serde_json::from_str(l).expect("a JSON row")).collect()
}

/// `wasmgrid run COMPONENT` over `input` into `out`; the answer it wrote.
fn run_local(cache: &Path, component: &str, input: &Path, out: &Path, extra: &[&str]) -> Answer {
    let (input, out_s) = (input.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let mut args = vec!["run", component, "--input", input, "--output", out_s, "--partition-size", "64KiB"];
    args.extend_from_slice(extra);
    ok(run_in(cache, &args));
    let files: Vec<_> = std::fs::read_dir(out).expect("out").flatten().map(|e| e.file_name()).collect();
    assert_eq!(
        files.iter().filter(|f| f.to_string_lossy().starts_with("part-")).count(),
        1,
        "one output file: {files:?}"
    );
    flights::from_rows(&output_rows(out))
}

#[test]
fn the_flights_query_in_rust_gives_the_row_by_row_answer_over_csv_and_parquet() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let (batches, pq, csv) = flights::write(tmp.path(), 8, 24_000, 3);
    let want = flights::reference(&batches);
    assert!(want.contains_key(&None), "a null carrier is a group of its own");
    assert!(want.values().any(|g| g.1 < g.0), "some delays are null");
    for (name, input) in [("csv", &csv), ("parquet", &pq)] {
        let out = tmp.path().join(format!("out-{name}"));
        // Partitions of 64 KiB: many tasks, their partial states merged.
        let got = run_local(&cache, guests::FLIGHTS, input, &out, &[]);
        flights::assert_same(&got, &want);
    }
    // One file as its own input: the same answer for its rows.
    let out = tmp.path().join("out-one");
    let got = run_local(&cache, guests::FLIGHTS, &csv.join("flights-03.csv"), &out, &["--threads", "1"]);
    flights::assert_same(&got, &flights::reference(&batches[3..4]));
}

#[test]
fn an_aggregator_says_what_it_cannot_do_and_empty_input_gives_no_rows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let out_s = out.to_str().expect("utf-8");

    // Input without the key column: the error names it, once.
    let input = tmp.path().join("no-carrier.csv");
    std::fs::write(&input, "month,dep_delay,distance\n1,3.5,100\n2,,200\n").expect("csv");
    let e = fails(run_in(&cache, &["run", guests::FLIGHTS, "-i", input.to_str().expect("utf-8"), "-o", out_s]));
    assert!(e.contains("aggregating: no column `carrier` to aggregate (columns: month, dep_delay, distance)"), "{e}");
    assert_eq!(e.matches("no column `carrier`").count(), 1, "said once: {e}");

    // The same from Parquet, which is read for the query's columns only:
    // still every column named.
    let batch = flights::batch(1, 100);
    let batch = batch.project(&[1, 5, 15]).expect("without carrier");
    let parquet = tmp.path().join("no-carrier.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&parquet).expect("file"), batch.schema(), None)
            .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    let e = fails(run_in(&cache, &["run", guests::FLIGHTS, "-i", parquet.to_str().expect("utf-8"), "-o", out_s]));
    assert!(e.contains("aggregating: no column `carrier` to aggregate (columns: month, dep_delay, distance)"), "{e}");

    // A delay that is text: the measure says which column and type.
    let input = tmp.path().join("text-delay.csv");
    std::fs::write(&input, "carrier,dep_delay,distance\nUA,late,100\n").expect("csv");
    let e = fails(run_in(&cache, &["run", guests::FLIGHTS, "-i", input.to_str().expect("utf-8"), "-o", out_s]));
    assert!(e.contains("`mean_delay`: mean of `dep_delay`, a column of Utf8"), "{e}");

    // A reducer does not go with an aggregator.
    let input = tmp.path().join("flights.csv");
    std::fs::write(&input, "carrier,dep_delay,distance\nUA,20,100\n,3,50\nUA,,300\n").expect("csv");
    let input_s = input.to_str().expect("utf-8");
    let e = fails(run_in(
        &cache,
        &["run", guests::FLIGHTS, "-i", input_s, "-o", out_s, "--reduce", guests::WORDCOUNT_REDUCE],
    ));
    assert!(e.contains("is an aggregator: wasmgrid merges its groups itself; run it without --reduce"), "{e}");

    // Three rows, by hand: nulls skipped, the null carrier its own group
    // (JSON lines leave a null out).
    ok(run_in(&cache, &["run", guests::FLIGHTS, "-i", input_s, "-o", out_s, "--overwrite"]));
    let mut rows = output_rows(&out);
    rows.sort_by_key(|r| r["carrier"].as_str().map(str::to_string));
    assert_eq!(
        rows,
        [
            serde_json::json!({"flights": 1, "with_delay": 1, "mean_delay": 3.0, "delayed_15": 0, "longest": 50}),
            serde_json::json!({"carrier": "UA", "flights": 2, "with_delay": 1, "mean_delay": 20.0, "delayed_15": 1, "longest": 300}),
        ]
    );

    // A header and no rows: no groups, no output file, success.
    let empty = tmp.path().join("empty.csv");
    std::fs::write(&empty, "carrier,dep_delay,distance\n").expect("csv");
    ok(run_in(&cache, &["run", guests::FLIGHTS, "-i", empty.to_str().expect("utf-8"), "-o", out_s, "--overwrite"]));
    assert_eq!(common::parts_text(&out), "", "no rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_flights_query_runs_as_a_grid_job_with_the_grid_merging_the_groups() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let node = Node::start(&urls, &dir.join("node"));
    let (batches, pq, csv) = flights::write(&dir.join("data"), 6, 18_000, 11);
    let want = flights::reference(&batches);
    let deployed = common::grid_ok(&urls, &["deploy", "flights", guests::FLIGHTS]);
    assert!(deployed.contains("aggregator"), "{deployed}");

    let submit = |input: &Path, out: &str, extra: &[&str]| {
        let (input, out) = (input.display().to_string(), dir.join(out).display().to_string());
        let mut args = vec!["job", "submit", "flights", "--input", &input, "--output", &out];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--max-attempts", "2", "--wait"]);
        common::grid_cli(&urls, &args)
    };
    // Tasks of 32 KiB, their groups spread over 3 reduce partitions by key.
    ok(submit(&csv, "by-csv", &["--partition-size", "32KiB", "--reduce-partitions", "3"]));
    let rows = output_rows(&dir.join("by-csv"));
    flights::assert_same(&flights::from_rows(&rows), &want);
    let files = std::fs::read_dir(dir.join("by-csv")).expect("out").flatten().count();
    assert!(files >= 3, "one file per reduce partition, and _SUCCESS: {files}");
    // Parquet, one reduce partition (the default): one table.
    ok(submit(&pq, "by-parquet", &[]));
    flights::assert_same(&flights::from_rows(&output_rows(&dir.join("by-parquet"))), &want);

    // Refused at submit: a reducer with an aggregator; reduce partitions
    // without a reducer for a scorer; a per-request call.
    let e = fails(submit(&csv, "refused", &["--reduce", "flights"]));
    assert!(
        e.contains("`flights` is an aggregator: the grid merges its groups itself, so the job takes no `reduce`"),
        "{e}"
    );
    common::grid_ok(&urls, &["deploy", "echo", guests::ECHO_SCORER]);
    let echo =
        [&["job", "submit", "echo", "--input"][..], &[csv.to_str().expect("utf-8"), "--output", "/tmp/x"]].concat();
    let e = fails(common::grid_cli(&urls, &[&echo[..], &["--reduce-partitions", "2"]].concat()));
    assert!(
        e.contains("`reduce_partitions` needs a reducer (`reduce`) or an aggregator, and `echo` is a scorer"),
        "{e}"
    );

    let url = format!("{}/v1/fn/default/flights", node.url);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let response = common::http().post(&url).json(&serde_json::json!({"rows": []})).send().await.expect("answer");
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        // Until the node has the route, it says so with a 404.
        if status != 404 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("`flights` is an aggregator; only scorers are invoked per request (run it in a job)"),
        "{body}"
    );

    // A missing column fails the job at once, with the error said once.
    let bad = dir.join("no-carrier.csv");
    std::fs::write(&bad, "month,dep_delay,distance\n1,3.5,100\n").expect("csv");
    let e = fails(submit(&bad, "failed", &[]));
    let last = e.lines().last().unwrap_or_default();
    assert!(last.contains("map task 0 cannot run: aggregating: no column `carrier` to aggregate"), "{e}");
    assert_eq!(last.matches("no column `carrier`").count(), 1, "said once: {e}");
    let jobs = replicas.client(1).jobs().await.expect("jobs").jobs;
    assert_eq!(jobs[0].failed_attempts, 1, "not retried: the same on every attempt");

    // Empty input: success and no rows, as in `wasmgrid run`.
    let empty = dir.join("empty.csv");
    std::fs::write(&empty, "carrier,dep_delay,distance\n").expect("csv");
    ok(submit(&empty, "empty", &[]));
    assert_eq!(common::parts_text(&dir.join("empty")), "");
}

#[test]
fn the_flights_example_is_at_most_15_lines_of_rust() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-examples/flights/src/lib.rs"))
            .expect("example");
    let code = source.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//")).count();
    assert!(code <= 15, "{code} lines");
}
