//! `wasmgrid run` end to end: the real binary, real guest components, real
//! files in CSV, JSON lines and Parquet.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use common::{Rng, fails, ok, run_in, write_corpus};
use wasmgrid_test_artifacts as guests;

const MODEL: &str = r#"{"features": ["x1", "x2", "x3"], "weights": [0.8, -1.25, 0.05], "bias": 0.3}"#;

fn reference_score(x1: f64, x2: f64, x3: f64) -> f64 {
    1.0 / (1.0 + (-(0.3 + 0.8 * x1 - 1.25 * x2 + 0.05 * x3)).exp())
}

/// Independent plain-Rust word count: split on ASCII whitespace.
fn count_words(files: &[std::path::PathBuf]) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("read corpus");
        for w in text.split_ascii_whitespace() {
            *counts.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn read_jsonl_rows(dir: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("output dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for p in names {
        for line in std::fs::read_to_string(&p).expect("read output").lines() {
            rows.push(serde_json::from_str(line).expect("output line is JSON"));
        }
    }
    rows
}

#[test]
fn wordcount_equals_an_independent_count() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = write_corpus(&tmp.path().join("corpus"), 9, 300_000, 7);
    let out = tmp.path().join("out");
    let stderr = ok(run_in(
        &tmp.path().join("cache"),
        &[
            "run",
            guests::WORDCOUNT_MAP,
            "--reduce",
            guests::WORDCOUNT_REDUCE,
            "--input",
            tmp.path().join("corpus").to_str().expect("utf-8 path"),
            "--output",
            out.to_str().expect("utf-8 path"),
            "--partition-size",
            "100KiB",
            "--threads",
            "3",
        ],
    ));
    let expected = count_words(&files);
    let mut got = HashMap::new();
    for row in read_jsonl_rows(&out) {
        let word = row["word"].as_str().expect("word is a string").to_string();
        let count = row["count"].as_i64().expect("count is an integer");
        assert!(got.insert(word.clone(), count).is_none(), "`{word}` appears twice in the output");
    }
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    // 9 files of ~300 KB in 100 KiB partitions: more partitions than files.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("_SUCCESS")).expect("_SUCCESS")).expect("json");
    assert!(manifest["partitions"].as_u64().expect("partitions") >= 27, "{manifest}");
    assert_eq!(manifest["keys"].as_u64(), Some(expected.len() as u64));
    assert!(stderr.contains("keys reduced"), "{stderr}");
}

struct Rows {
    id: Vec<i64>,
    x: [Vec<f64>; 3],
}

fn feature_rows(n: usize) -> Rows {
    let mut rng = Rng::new(42);
    let mut r = Rows { id: Vec::new(), x: [Vec::new(), Vec::new(), Vec::new()] };
    for i in 0..n {
        r.id.push(i as i64);
        r.x[0].push((rng.unit() * 8.0 - 4.0) * 0.5);
        r.x[1].push(rng.unit() * 3.0 - 1.5);
        r.x[2].push((rng.below(200) as f64) - 100.0);
    }
    r
}

fn write_inputs(dir: &Path, r: &Rows) {
    std::fs::create_dir_all(dir).expect("input dir");
    let mut csv = String::from("id,x1,x2,x3,label\n");
    let mut jsonl = String::new();
    for i in 0..r.id.len() {
        csv.push_str(&format!("{},{:?},{:?},{:?},row{i}\n", r.id[i], r.x[0][i], r.x[1][i], r.x[2][i]));
        jsonl.push_str(&format!(
            "{{\"id\":{},\"x1\":{:?},\"x2\":{:?},\"x3\":{:?},\"label\":\"row{i}\"}}\n",
            r.id[i], r.x[0][i], r.x[1][i], r.x[2][i]
        ));
    }
    std::fs::write(dir.join("rows.csv"), csv).expect("csv");
    std::fs::write(dir.join("rows.jsonl"), jsonl).expect("jsonl");

    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x1", DataType::Float64, false),
        Field::new("x2", DataType::Float64, false),
        Field::new("x3", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(r.id.clone())),
            Arc::new(Float64Array::from(r.x[0].clone())),
            Arc::new(Float64Array::from(r.x[1].clone())),
            Arc::new(Float64Array::from(r.x[2].clone())),
        ],
    )
    .expect("batch");
    let file = File::create(dir.join("rows.parquet")).expect("parquet file");
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(700)).build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

/// (id, score) pairs from an output directory of any format, sorted by id.
fn read_scores(dir: &Path) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("output dir") {
        let p = entry.expect("entry").path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default().to_string();
        let batches: Vec<RecordBatch> = match ext.as_str() {
            "parquet" => {
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&p).expect("open"))
                    .expect("parquet")
                    .build()
                    .expect("reader")
                    .collect::<Result<_, _>>()
                    .expect("batches")
            }
            "csv" => {
                let (schema, _) = arrow_csv::reader::Format::default()
                    .with_header(true)
                    .infer_schema(File::open(&p).expect("open"), None)
                    .expect("schema");
                arrow_csv::ReaderBuilder::new(Arc::new(schema))
                    .with_header(true)
                    .build(File::open(&p).expect("open"))
                    .expect("csv")
                    .collect::<Result<_, _>>()
                    .expect("batches")
            }
            "jsonl" => {
                let (schema, _) =
                    arrow_json::reader::infer_json_schema(std::io::BufReader::new(File::open(&p).expect("open")), None)
                        .expect("schema");
                arrow_json::ReaderBuilder::new(Arc::new(schema))
                    .build(std::io::BufReader::new(File::open(&p).expect("open")))
                    .expect("json")
                    .collect::<Result<_, _>>()
                    .expect("batches")
            }
            _ => continue,
        };
        for b in batches {
            let ids = b.column_by_name("id").expect("id column");
            let scores = b.column_by_name("score").expect("score column").as_primitive::<Float64Type>();
            let ids = ids.as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.push((ids.value(i), scores.value(i)));
            }
        }
    }
    out.sort_by_key(|r| r.0);
    out
}

#[test]
fn logreg_scores_csv_jsonl_and_parquet_and_every_output_format_reads_back_the_same() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rows = feature_rows(5000);
    let input = tmp.path().join("in");
    write_inputs(&input, &rows);
    let cache = tmp.path().join("cache");
    let model = format!("model={MODEL}");

    let mut all = Vec::new();
    for input_ext in ["csv", "jsonl", "parquet"] {
        for format in ["jsonl", "csv", "parquet"] {
            let out = tmp.path().join(format!("out-{input_ext}-{format}"));
            ok(run_in(
                &cache,
                &[
                    "run",
                    guests::LOGREG,
                    "--input",
                    input.join(format!("rows.{input_ext}")).to_str().expect("utf-8"),
                    "--output",
                    out.to_str().expect("utf-8"),
                    "--format",
                    format,
                    "--config",
                    &model,
                    "--partition-size",
                    "32KiB",
                    "--batch-rows",
                    "333",
                ],
            ));
            let scores = read_scores(&out);
            assert_eq!(scores.len(), rows.id.len(), "{input_ext} -> {format}: every row once");
            for (i, (id, score)) in scores.iter().enumerate() {
                assert_eq!(*id, i as i64);
                let want = reference_score(rows.x[0][i], rows.x[1][i], rows.x[2][i]);
                assert!((score - want).abs() <= 1e-6, "{input_ext} -> {format}: row {i}: {score} vs {want}");
            }
            all.push(((input_ext, format), scores));
        }
    }
    // Every output format reads back identically (bit for bit).
    let (first, reference) = &all[0];
    for (which, scores) in &all[1..] {
        assert_eq!(scores, reference, "{which:?} differs from {first:?}");
    }
}

#[test]
fn scorer_output_keeps_input_columns_and_appends_scores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    write_inputs(&input, &feature_rows(10));
    let out = tmp.path().join("out");
    ok(run_in(
        &tmp.path().join("cache"),
        &[
            "run",
            guests::LOGREG,
            "-i",
            input.join("rows.jsonl").to_str().expect("utf-8"),
            "-o",
            out.to_str().expect("utf-8"),
            "-c",
            &format!("model={MODEL}"),
        ],
    ));
    let rows = read_jsonl_rows(&out);
    assert_eq!(rows.len(), 10);
    // Columns keep their input order, with the score appended.
    let file = std::fs::read_to_string(out.join("part-00000.jsonl")).expect("output");
    let line = file.lines().nth(3).expect("row 3");
    let at: Vec<usize> = ["\"id\"", "\"x1\"", "\"x2\"", "\"x3\"", "\"label\"", "\"score\""]
        .iter()
        .map(|k| line.find(k).unwrap_or_else(|| panic!("{k} in {line}")))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert_eq!(rows[3]["label"], "row3");
}

#[test]
fn second_run_loads_the_compiled_cache_and_a_corrupt_entry_is_rebuilt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    write_inputs(&input, &feature_rows(20));
    let cache = tmp.path().join("cache");
    let model = format!("model={MODEL}");
    let run = |out: &str| {
        run_in(
            &cache,
            &[
                "run",
                guests::LOGREG,
                "-i",
                input.join("rows.csv").to_str().expect("utf-8"),
                "-o",
                tmp.path().join(out).to_str().expect("utf-8"),
                "-c",
                &model,
            ],
        )
    };
    let first = ok(run("a"));
    assert!(first.contains("compiled component"), "{first}");
    assert!(!first.contains("from cache"), "{first}");

    let second = ok(run("b"));
    assert!(second.contains("loaded compiled component from cache"), "{second}");
    assert!(!second.contains("INFO compiled component"), "{second}");

    // Every cached artifact: the component instrumented for `init` and the
    // image `init` left.
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert!(!artifacts.is_empty(), "a cached artifact");
    for artifact in artifacts {
        let mut bytes = std::fs::read(&artifact).expect("read");
        let at = bytes.len() / 3;
        bytes[at] ^= 0x5a;
        std::fs::write(&artifact, bytes).expect("corrupt");
    }

    let third = ok(run("c"));
    assert!(third.contains("is corrupt"), "{third}");
    assert!(third.contains("compiled component"), "{third}");
    assert_eq!(read_scores(&tmp.path().join("c")), read_scores(&tmp.path().join("a")));
}

#[test]
fn fall_detect_flags_the_fall_window() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("windows.jsonl");
    // A phone at rest; a phone in free fall, hitting the floor and lying still; a phone being shaken.
    let still = "[0.0,0.01,0.0,0.01,0.0,0.0,0.01,0.0]";
    let fall_x = "[0.0,0.0,0.1,0.05,2.9,0.0,0.0,0.0]";
    let fall_z = "[1.0,0.6,0.15,0.1,1.5,1.0,1.0,1.0]";
    let shake = "[1.2,-1.1,1.4,-0.9,1.3,-1.2,1.1,-1.3]";
    std::fs::write(
        &input,
        format!(
            "{{\"phone\":\"rest\",\"ax\":{still},\"ay\":{still},\"az\":[1,1,1,1,1,1,1,1]}}\n\
             {{\"phone\":\"fall\",\"ax\":{fall_x},\"ay\":{still},\"az\":{fall_z}}}\n\
             {{\"phone\":\"shake\",\"ax\":{shake},\"ay\":{shake},\"az\":{shake}}}\n"
        ),
    )
    .expect("write windows");
    let out = tmp.path().join("out");
    ok(run_in(
        &tmp.path().join("cache"),
        &["run", guests::FALL_DETECT, "-i", input.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8")],
    ));
    let rows = read_jsonl_rows(&out);
    let p: HashMap<&str, f64> = rows
        .iter()
        .map(|r| (r["phone"].as_str().expect("phone"), r["fall_probability"].as_f64().expect("probability")))
        .collect();
    assert!(p["fall"] > 0.9, "{p:?}");
    assert!(p["rest"] < 0.1, "{p:?}");
    assert!(p["shake"] < 0.5, "{p:?}");
}

#[test]
fn a_hostile_guest_fails_the_run_with_a_clear_error_and_leaves_no_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    write_inputs(&input, &feature_rows(50));
    let out = tmp.path().join("out");
    let stderr = fails(run_in(
        &tmp.path().join("cache"),
        &[
            "run",
            guests::HOSTILE_SCORER,
            "-i",
            input.join("rows.csv").to_str().expect("utf-8"),
            "-o",
            out.to_str().expect("utf-8"),
            "-c",
            "mode=loop",
            "--timeout",
            "300ms",
        ],
    ));
    assert!(stderr.contains("error: partition 0"), "{stderr}");
    assert!(stderr.contains("function timed out after 300ms"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&out).expect("out dir").collect();
    assert!(left.is_empty(), "no partial output or _SUCCESS: {left:?}");
}

/// An error a guest returns is printed once, with the partition it came
/// from.
#[test]
fn a_guest_error_is_printed_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("in.csv"), "x,y\n1,2\n").expect("input");
    let out = tmp.path().join("out");
    let stderr = fails(run_in(
        &tmp.path().join("cache"),
        &[
            "run",
            guests::LOGREG,
            "-i",
            tmp.path().join("in.csv").to_str().expect("utf-8"),
            "-o",
            out.to_str().expect("utf-8"),
            "-c",
            r#"model={"features":["zz"],"weights":[1],"bias":0}"#,
        ],
    ));
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(error.starts_with("error: partition 0 (") && error.contains("in.csv"), "{error}");
    assert_eq!(error.matches("input has no column `zz`").count(), 1, "{error}");
    assert_eq!(error.matches("function returned an error").count(), 1, "{error}");
}

#[test]
fn bad_paths_and_bad_components_get_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let out = out.to_str().expect("utf-8");

    let e = fails(run_in(&cache, &["run", guests::LOGREG, "-i", "/no/such/input.csv", "-o", out]));
    assert!(e.contains("input `/no/such/input.csv`: no such file or directory"), "{e}");

    let e = fails(run_in(&cache, &["run", guests::LOGREG, "-i", "/no/such/dir/*.csv", "-o", out]));
    assert!(e.contains("matched no files"), "{e}");

    let e = fails(run_in(&cache, &["run", "/no/such/fn.wasm", "-i", "/tmp", "-o", out]));
    assert!(e.contains("/no/such/fn.wasm"), "{e}");

    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0garbage").expect("write junk");
    let data = tmp.path().join("data.txt");
    std::fs::write(&data, "hello\n").expect("write data");
    let e =
        fails(run_in(&cache, &["run", junk.to_str().expect("utf-8"), "-i", data.to_str().expect("utf-8"), "-o", out]));
    assert!(e.contains("invalid component"), "{e}");

    let bad_flag =
        run_in(&cache, &["run", guests::LOGREG, "-i", data.to_str().expect("utf-8"), "-o", out, "--memory", "lots"]);
    assert_eq!(bad_flag.status.code(), Some(2), "usage errors exit with 2");
    let e = common::text(&bad_flag).1;
    assert!(e.contains("`lots` is not a size"), "{e}");

    // A reducer where a mapper belongs.
    let e = fails(run_in(&cache, &["run", guests::WORDCOUNT_REDUCE, "-i", data.to_str().expect("utf-8"), "-o", out]));
    assert!(e.contains("is a reducer; run a mapper and pass the reducer with --reduce"), "{e}");

    // Reduce partitions without a reducer: a flag that does not fit.
    let lone = run_in(
        &cache,
        &["run", guests::WORDCOUNT_MAP, "-i", data.to_str().expect("utf-8"), "-o", out, "--reduce-partitions", "3"],
    );
    assert_eq!(lone.status.code(), Some(2), "usage errors exit with 2");
    let e = common::text(&lone).1;
    assert!(e.contains("--reduce <REDUCE>"), "{e}");

    // A mapper that emits pairs with no reducer.
    let e = fails(run_in(&cache, &["run", guests::WORDCOUNT_MAP, "-i", data.to_str().expect("utf-8"), "-o", out]));
    assert!(e.contains("emitted key/value pairs, but no reducer was given"), "{e}");

    // Results are not overwritten by accident.
    let out2 = tmp.path().join("out2");
    let args =
        ["run", guests::HOSTILE_SCORER, "-i", data.to_str().expect("utf-8"), "-o", out2.to_str().expect("utf-8")];
    let mut csv_in = args.to_vec();
    csv_in.extend(["--input-format", "csv"]);
    ok(run_in(&cache, &csv_in));
    let e = fails(run_in(&cache, &csv_in));
    assert!(e.contains("already holds results"), "{e}");
    csv_in.push("--overwrite");
    ok(run_in(&cache, &csv_in));
}

#[test]
fn parquet_input_has_no_raw_bytes_for_a_mapper() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    write_inputs(&input, &feature_rows(10));
    let e = fails(run_in(
        &tmp.path().join("cache"),
        &[
            "run",
            guests::HOSTILE_MAPPER,
            "-i",
            input.join("rows.parquet").to_str().expect("utf-8"),
            "-o",
            tmp.path().join("out").to_str().expect("utf-8"),
            "-c",
            "mode=bytes-from-parquet",
        ],
    ));
    assert!(e.contains("next-bytes is not available for Parquet input; use next-batch"), "{e}");
}

#[test]
fn a_mapper_copies_batches_between_formats() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let rows = feature_rows(1234);
    write_inputs(&input, &rows);
    let out = tmp.path().join("out");
    ok(run_in(
        &tmp.path().join("cache"),
        &[
            "run",
            guests::HOSTILE_MAPPER,
            "-i",
            input.join("rows.parquet").to_str().expect("utf-8"),
            "-o",
            out.to_str().expect("utf-8"),
        ],
    ));
    let copied = read_jsonl_rows(&out);
    assert_eq!(copied.len(), 1234);
    let mut ids: Vec<i64> = copied.iter().map(|r| r["id"].as_i64().expect("id")).collect();
    ids.sort();
    assert_eq!(ids, rows.id);
}

#[test]
fn compilation_is_bounded_in_time_and_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data.txt");
    std::fs::write(&data, "x\n").expect("write");
    let out = tmp.path().join("out");
    let base =
        ["run", guests::LOGREG, "-i", data.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8"), "--no-cache"];

    let mut args = base.to_vec();
    args.extend(["--compile-timeout", "1ms"]);
    let e = fails(run_in(&tmp.path().join("cache"), &args));
    assert!(e.contains("compiling the component took longer than 1ms; it was stopped"), "{e}");

    let mut args = base.to_vec();
    args.extend(["--compile-memory", "16MiB"]);
    let e = fails(run_in(&tmp.path().join("cache"), &args));
    assert!(e.contains("compiling the component failed"), "{e}");
    assert!(e.contains("memory budget of 16 MiB"), "{e}");
}

/// 1,500 rows of CSV whose first 1,000 mislead inference: `delay` integers
/// with a `2.5` at row 1,200, `late` empty until row 1,100, `code` digits
/// with leading zeros. Returns the path.
fn misleading_csv(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("flights.csv");
    let mut text = String::from("id,delay,late,code,x1,x2,x3\n");
    for i in 0..1500 {
        let delay = if i == 1200 { "2.5".to_string() } else { (i % 90).to_string() };
        let late = if i < 1100 { String::new() } else { (i % 7).to_string() };
        text.push_str(&format!("{i},{delay},{late},{:03},0.5,0.25,1\n", i % 50));
    }
    std::fs::write(&path, text).expect("csv");
    path
}

/// `wasmgrid run` of the logistic regression over [`misleading_csv`] into
/// `tmp/out`, with `extra` arguments.
fn run_misleading(tmp: &Path, extra: &[&str]) -> Output {
    let input = misleading_csv(tmp);
    let out = tmp.join("out");
    let model = format!("model={MODEL}");
    let mut args =
        vec!["run", guests::LOGREG, "-i", input.to_str().expect("utf-8"), "-o", out.to_str().expect("utf-8")];
    args.extend(["-c", &model, "--overwrite"]);
    args.extend_from_slice(extra);
    run_in(&tmp.join("cache"), &args)
}

/// A value past the inferred head widens its column instead of failing the
/// run, an empty head column keeps the values that come later, and
/// `--schema` fixes types or names the line and column that do not fit.
#[test]
fn column_types_widen_past_the_inferred_head_and_schema_fixes_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = |extra: &[&str]| run_misleading(tmp.path(), extra);
    ok(run(&[]));
    let rows = read_jsonl_rows(&tmp.path().join("out"));
    assert_eq!(rows.len(), 1500);
    let by_id = |id: i64| rows.iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("row {id}"));
    assert_eq!(by_id(1200)["delay"], 2.5);
    assert_eq!(by_id(1199)["delay"].as_f64(), Some((1199 % 90) as f64));
    // Empty for the first 1,100 rows: null there, the values after.
    assert!(by_id(5)["late"].is_null());
    assert_eq!(by_id(1403)["late"], 1403 % 7);
    assert_eq!(by_id(7)["code"], 7);
    let score = reference_score(0.5, 0.25, 1.0);
    assert!(rows.iter().all(|r| (r["score"].as_f64().expect("score") - score).abs() < 1e-12));

    ok(run(&["--schema", "code:str,delay:float"]));
    let rows = read_jsonl_rows(&tmp.path().join("out"));
    assert_eq!(rows.iter().find(|r| r["id"] == 7).expect("row 7")["code"], "007");

    let stderr = fails(run(&["--schema", "delay:int"]));
    assert!(stderr.contains("flights.csv"), "{stderr}");
    assert!(stderr.contains("line 1202, column `delay`: `2.5` is not an integer (--schema delay:int)"), "{stderr}");
    let stderr = fails(run(&["--schema", "dep_delay:float"]));
    assert!(stderr.contains("--schema names column `dep_delay`, which it does not have"), "{stderr}");
    let refused = run(&["--schema", "delay:decimal"]);
    let (_, stderr) = common::text(&refused);
    assert!(!refused.status.success() && stderr.contains("unknown type `decimal`"), "{stderr}");
}

/// The Rust SDK's null model through a real component: a null feature is
/// an error naming its column and row, never NaN or 0.
#[test]
fn a_null_feature_is_an_error_naming_column_and_row() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("rows.csv");
    std::fs::write(&input, "id,x1,x2,x3\n1,0.5,0.25,1\n2,,0.25,1\n3,0.1,0.2,0.3\n").expect("csv");
    let stderr = fails(run_in(
        &tmp.path().join("cache"),
        &[
            "run",
            guests::LOGREG,
            "-i",
            input.to_str().expect("utf-8"),
            "-o",
            tmp.path().join("out").to_str().expect("utf-8"),
            "-c",
            &format!("model={MODEL}"),
        ],
    ));
    assert!(stderr.contains("column `x1` has a null at row 1; read it with `opt_f64s`"), "{stderr}");
}
