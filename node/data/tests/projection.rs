//! `PartitionReader::select`: a partition read for some columns decodes
//! only theirs. Shown with a Parquet file whose third column's pages are
//! garbage, and CSV and JSON-lines files whose third column does not fit
//! the type fixed for it: every column fails to read, the two others read
//! whole.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use wasmgrid_data::{ColumnTypes, PartitionReader, plan};

fn rows(path: &std::path::Path, columns: Option<Vec<String>>) -> wasmgrid_data::Result<Vec<RecordBatch>> {
    // Parquet files carry their own types.
    let parquet = path.extension().is_some_and(|e| e == "parquet");
    let types: ColumnTypes = if parquet { ColumnTypes::default() } else { "junk:int".parse().expect("types") };
    let mut out = Vec::new();
    for partition in plan(&path.display().to_string(), None, 1 << 30, &types)? {
        let mut reader = PartitionReader::open(partition)?;
        if let Some(columns) = &columns {
            reader.select(columns.clone());
        }
        while let Some(batch) = reader.next_batch(1000)? {
            out.push(batch);
        }
    }
    Ok(out)
}

#[test]
fn a_parquet_partition_read_for_some_columns_decodes_only_theirs() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.parquet");
    let n = 5000;
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
        Field::new("junk", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new((0..n).map(|i| Some(format!("k{}", i % 7))).collect::<StringArray>()),
        Arc::new(Int64Array::from_iter_values(0..n)),
        Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * 31 % 1009))),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
    let props = parquet::file::properties::WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).expect("file"), schema, Some(props))
        .expect("writer");
    w.write(&batch).expect("write");
    let meta = w.close().expect("close");
    // The junk column's pages, overwritten with bytes no page decodes from.
    let chunk = meta.row_group(0).column(2);
    let (start, len) = (chunk.data_page_offset() as usize, chunk.compressed_size() as usize);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[start..start + len].fill(0xff);
    std::fs::write(&path, bytes).expect("corrupt");

    assert_reads_only_k_and_v(&path, n);
}

/// Every column fails to read; `k` and `v` read whole, in the file's order.
fn assert_reads_only_k_and_v(path: &std::path::Path, n: i64) {
    assert!(rows(path, None).is_err(), "every column: the junk one fails");
    let read = rows(path, Some(vec!["v".into(), "k".into(), "not-there".into()])).expect("k and v read");
    let names: Vec<_> = read[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["k", "v"], "the file's order; a name it lacks is not read");
    let v: i64 = read.iter().map(|b| b["v"].as_primitive::<Int64Type>().iter().flatten().sum::<i64>()).sum();
    assert_eq!((read.iter().map(RecordBatch::num_rows).sum::<usize>(), v), (n as usize, (0..n).sum()));
}

#[test]
fn a_csv_or_json_lines_partition_read_for_some_columns_parses_only_theirs() {
    let dir = tempfile::tempdir().expect("dir");
    let n = 3000;
    // `junk` is fixed to integers, and its last value is not one.
    let junk = |i: i64| if i == n - 1 { "\"late\"".to_string() } else { i.to_string() };
    let csv = dir.path().join("t.csv");
    let text: String = (0..n).map(|i| format!("k{},{i},{}\n", i % 7, junk(i).trim_matches('"'))).collect();
    std::fs::write(&csv, format!("k,v,junk\n{text}")).expect("csv");
    assert_reads_only_k_and_v(&csv, n);
    let jsonl = dir.path().join("t.jsonl");
    let text: String = (0..n).map(|i| format!("{{\"k\":\"k{}\",\"v\":{i},\"junk\":{}}}\n", i % 7, junk(i))).collect();
    std::fs::write(&jsonl, text).expect("jsonl");
    assert_reads_only_k_and_v(&jsonl, n);
}
