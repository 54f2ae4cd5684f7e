//! Flights-style data for the aggregation tests and bench: carriers (one
//! of them null now and then), departure delays (null for cancelled
//! flights), distances; and the flights query's answer computed row by
//! row, as SQL defines it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

/// `rows` flights, deterministic from `seed`: 16 carriers and a null one,
/// delays with nulls, distances, months.
pub fn batch(seed: u64, rows: usize) -> RecordBatch {
    let mut rng = super::Rng::new(seed);
    let carriers = ["UA", "AA", "B6", "DL", "EV", "MQ", "US", "WN", "VX", "FL", "AS", "9E", "F9", "HA", "YV", "OO"];
    let (mut carrier, mut delay, mut distance, mut month) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rows {
        let r = rng.next();
        carrier.push((!r.is_multiple_of(97)).then(|| carriers[(r % 16) as usize]));
        let d = if (r >> 8) % 10 < 3 { ((r >> 16) % 320) as f64 - 20.0 } else { ((r >> 16) % 36) as f64 - 20.0 };
        delay.push((!(r >> 40).is_multiple_of(40)).then_some(d));
        distance.push(((r >> 24) % 4900 + 80) as i64);
        month.push(((r >> 32) % 12 + 1) as i64);
    }
    let schema = Schema::new(vec![
        Field::new("month", DataType::Int64, false),
        Field::new("carrier", DataType::Utf8, true),
        Field::new("dep_delay", DataType::Float64, true),
        Field::new("distance", DataType::Int64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(month)),
        Arc::new(carrier.into_iter().collect::<StringArray>()),
        Arc::new(Float64Array::from(delay)),
        Arc::new(Int64Array::from(distance)),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("batch")
}

/// Writes `rows` flights as `files` Parquet files under `dir/parquet` and
/// the same rows as CSV under `dir/csv`; returns the batches and both
/// directories.
pub fn write(dir: &Path, files: usize, rows: usize, seed: u64) -> (Vec<RecordBatch>, PathBuf, PathBuf) {
    let (pq, csv) = (dir.join("parquet"), dir.join("csv"));
    std::fs::create_dir_all(&pq).expect("dir");
    std::fs::create_dir_all(&csv).expect("dir");
    let per = rows.div_ceil(files);
    let mut batches = Vec::new();
    for f in 0..files {
        let batch = batch(seed + f as u64, per.min(rows - f * per));
        let file = std::fs::File::create(pq.join(format!("flights-{f:02}.parquet"))).expect("file");
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
        let file = std::fs::File::create(csv.join(format!("flights-{f:02}.csv"))).expect("file");
        let mut w = arrow_csv::WriterBuilder::new().with_header(true).build(file);
        w.write(&batch).expect("write");
        batches.push(batch);
    }
    (batches, pq, csv)
}

/// Per carrier: flights, flights with a delay, mean delay, flights
/// delayed 15+ minutes, longest distance.
pub type Answer = BTreeMap<Option<String>, (i64, i64, Option<f64>, i64, i64)>;

/// The query's answer, row by row.
pub fn reference(batches: &[RecordBatch]) -> Answer {
    let mut sums: BTreeMap<Option<String>, (i64, i64, f64, i64, i64)> = BTreeMap::new();
    for b in batches {
        let carrier = b["carrier"].as_string::<i32>();
        let delay = b["dep_delay"].as_primitive::<Float64Type>();
        let distance = b["distance"].as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let key = carrier.is_valid(i).then(|| carrier.value(i).to_string());
            let g = sums.entry(key).or_insert((0, 0, 0.0, 0, i64::MIN));
            g.0 += 1;
            if delay.is_valid(i) {
                g.1 += 1;
                g.2 += delay.value(i);
                g.3 += i64::from(delay.value(i) >= 15.0);
            }
            g.4 = g.4.max(distance.value(i));
        }
    }
    sums.into_iter()
        .map(|(k, (n, valid, sum, late, far))| (k, (n, valid, (valid > 0).then(|| sum / valid as f64), late, far)))
        .collect()
}

/// The answer in output rows (JSON), whatever their order.
pub fn from_rows(rows: &[serde_json::Value]) -> Answer {
    rows.iter()
        .map(|r| {
            let int = |k: &str| r[k].as_i64().unwrap_or_else(|| panic!("`{k}` in {r}"));
            let key = r["carrier"].as_str().map(str::to_string);
            (key, (int("flights"), int("with_delay"), r["mean_delay"].as_f64(), int("delayed_15"), int("longest")))
        })
        .collect()
}

/// Whether two answers agree: counts exactly, means to 1e-9.
pub fn assert_same(got: &Answer, want: &Answer) {
    assert_eq!(
        got.len(),
        want.len(),
        "groups: {:?} vs {:?}",
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (key, w) in want {
        let g = got.get(key).unwrap_or_else(|| panic!("no group {key:?}"));
        assert_eq!((g.0, g.1, g.3, g.4), (w.0, w.1, w.3, w.4), "{key:?}");
        match (g.2, w.2) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{key:?}: mean {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{key:?}"),
        }
    }
}
