//! Column types of CSV and JSON-lines input: values past the inferred head
//! widen a column's type instead of failing or being lost, `--schema` fixes
//! types, and a value that does not fit a fixed type is an error naming
//! file, line and column.

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use wasmgrid_data::{ColumnTypes, Error, PartitionReader, Result, plan};

/// Every batch of every partition of `path` (one partition per `size` bytes).
fn read(path: &Path, size: u64, types: &str) -> Result<Vec<Vec<RecordBatch>>> {
    let types: ColumnTypes = types.parse().expect("types");
    let mut out = Vec::new();
    for partition in plan(&path.display().to_string(), None, size, &types)? {
        let mut reader = PartitionReader::open(partition)?;
        let mut batches = Vec::new();
        while let Some(batch) = reader.next_batch(500)? {
            batches.push(batch);
        }
        out.push(batches);
    }
    Ok(out)
}

fn column_type(batches: &[RecordBatch], name: &str) -> Vec<DataType> {
    batches.iter().map(|b| b.column_by_name(name).expect("column").data_type().clone()).collect()
}

fn floats(batches: &[RecordBatch], name: &str) -> Vec<Option<f64>> {
    batches.iter().flat_map(|b| b.column_by_name(name).expect("column").as_primitive::<Float64Type>().iter()).collect()
}

/// 1,500 rows: `n` integers with a 2.5 at row 1,200; `late` empty for the
/// first 1,100 rows, then numbers; `code` digits with leading zeros.
fn flights_csv(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("flights.csv");
    let mut text = String::from("n,late,code\n");
    for i in 0..1500 {
        let n = if i == 1200 { "2.5".to_string() } else { i.to_string() };
        let late = if i < 1100 { String::new() } else { format!("{}", i % 7) };
        text.push_str(&format!("{n},{late},{:03}\n", i % 50));
    }
    std::fs::write(&path, text).expect("csv");
    path
}

#[test]
fn a_float_after_the_inferred_head_widens_the_partition_instead_of_failing() -> Result<()> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = flights_csv(dir.path());
    let parts = read(&path, 1 << 20, "")?;
    assert_eq!(parts.len(), 1);
    let batches = &parts[0];
    assert!(column_type(batches, "n").iter().all(|t| *t == DataType::Float64), "{:?}", column_type(batches, "n"));
    let n = floats(batches, "n");
    assert_eq!(n.len(), 1500);
    assert_eq!(n[1200], Some(2.5));
    assert_eq!(n[1199], Some(1199.0));
    // Empty for the inferred head, numbers later: integers, nulls kept.
    assert!(column_type(batches, "late").iter().all(|t| *t == DataType::Int64));
    let late: Vec<Option<i64>> = batches.iter().flat_map(|b| b["late"].as_primitive::<Int64Type>().iter()).collect();
    assert!(late[..1100].iter().all(Option::is_none));
    assert_eq!(
        late[1100..].iter().map(|v| v.expect("value")).collect::<Vec<_>>(),
        (1100..1500).map(|i| i % 7).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn partitions_settle_their_own_types_and_fixed_columns_keep_theirs() -> Result<()> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = flights_csv(dir.path());
    // Small partitions: only the one holding row 1,200 has floats in `n`.
    let parts = read(&path, 2048, "")?;
    assert!(parts.len() > 5);
    let kinds: Vec<DataType> = parts.iter().map(|p| column_type(p, "n")[0].clone()).collect();
    assert_eq!(kinds.iter().filter(|t| **t == DataType::Float64).count(), 1, "{kinds:?}");
    assert!(kinds.iter().all(|t| matches!(t, DataType::Float64 | DataType::Int64)));
    // A partition with only nulls in `late` keeps them as nulls.
    let first = &parts[0][0];
    assert_eq!(first["late"].logical_null_count(), first.num_rows());
    // Fixed: one type everywhere, and codes stay strings with their zeros.
    let parts = read(&path, 2048, "n:float,code:str,late:float")?;
    for p in &parts {
        assert!(column_type(p, "n").iter().all(|t| *t == DataType::Float64));
        assert!(column_type(p, "late").iter().all(|t| *t == DataType::Float64));
        assert!(column_type(p, "code").iter().all(|t| *t == DataType::Utf8));
    }
    assert_eq!(parts[0][0]["code"].as_string::<i32>().value(7), "007");
    Ok(())
}

#[test]
fn a_value_that_does_not_fit_a_fixed_type_names_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = flights_csv(dir.path());
    for size in [1 << 20, 4096] {
        let err = read(&path, size, "n:int").map(|_| ()).expect_err("2.5 is not an int");
        let message = err.to_string();
        assert!(matches!(err, Error::Decode { .. }), "{message}");
        // Row 1,200 is line 1,202 of the file (the header is line 1).
        assert!(message.contains("flights.csv"), "{message}");
        assert!(message.contains("line 1202, column `n`: `2.5` is not an integer (--schema n:int)"), "{message}");
    }
    let err = read(&path, 1 << 20, "x:int").map(|_| ()).expect_err("no column x");
    assert!(
        err.to_string().contains("--schema names column `x`, which it does not have (columns: n, late, code)"),
        "{err}"
    );
}

#[test]
fn json_lines_integers_are_not_truncated_by_a_later_float() -> Result<()> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rows.jsonl");
    let mut text = String::new();
    for i in 0..1500 {
        let x = if i == 1300 { "7.75".to_string() } else { i.to_string() };
        let later = if i < 1200 { "null".to_string() } else { format!("\"s{i}\"") };
        text.push_str(&format!("{{\"x\": {x}, \"later\": {later}, \"id\": {}}}\n", 9_007_199_254_740_993_i64 + i));
    }
    std::fs::write(&path, text).expect("jsonl");
    let parts = read(&path, 1 << 20, "")?;
    let batches = &parts[0];
    let x = floats(batches, "x");
    assert_eq!((x[1300], x[1299]), (Some(7.75), Some(1299.0)));
    assert!(column_type(batches, "later").iter().all(|t| *t == DataType::Utf8));
    assert_eq!(batches.iter().map(|b| b["later"].null_count()).sum::<usize>(), 1200);
    // Integers past 2^53 stay exact.
    let ids: Vec<i64> = batches.iter().flat_map(|b| b["id"].as_primitive::<Int64Type>().values().to_vec()).collect();
    assert_eq!(ids[1499], 9_007_199_254_740_993 + 1499);
    let err = read(&path, 1 << 20, "x:int").map(|_| ()).expect_err("7.75 is not an int");
    assert!(err.to_string().contains("line 1301, column `x`: `7.75` is not an integer"), "{err}");
    Ok(())
}

#[test]
fn a_word_among_json_floats_widens_the_column_and_keeps_nested_columns() -> Result<()> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested.jsonl");
    let mut text = String::new();
    for i in 0..1200 {
        let f = if i == 1100 { "\"n/a\"".to_string() } else { format!("{}.5", i) };
        text.push_str(&format!("{{\"f\": {f}, \"meta\": {{\"a\": {i}}}}}\n"));
    }
    std::fs::write(&path, text).expect("jsonl");
    let parts = read(&path, 1 << 20, "")?;
    let batches = &parts[0];
    assert!(column_type(batches, "f").iter().all(|t| *t == DataType::Utf8), "{:?}", column_type(batches, "f"));
    let f: Vec<String> = batches
        .iter()
        .flat_map(|b| b["f"].as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_string()))
        .collect();
    assert_eq!((f[1100].as_str(), f[3].as_str()), ("n/a", "3.5"));
    assert!(column_type(batches, "meta").iter().all(|t| matches!(t, DataType::Struct(_))));
    Ok(())
}
