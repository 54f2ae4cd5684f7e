//! `PartitionReader::select`: a Parquet partition read for some columns
//! decodes only theirs. Shown with a file whose third column's pages are
//! garbage: every column fails to read, the two others read whole.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use wasmgrid_data::{ColumnTypes, PartitionReader, plan};

fn rows(path: &std::path::Path, columns: Option<Vec<String>>) -> wasmgrid_data::Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for partition in plan(&path.display().to_string(), None, 1 << 30, &ColumnTypes::default())? {
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

    assert!(rows(&path, None).is_err(), "every column: the junk one fails");
    let read = rows(&path, Some(vec!["v".into(), "k".into(), "not-there".into()])).expect("k and v read");
    let names: Vec<_> = read[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["k", "v"], "the file's order; a name it lacks is not read");
    let v: i64 = read.iter().map(|b| b["v"].as_primitive::<Int64Type>().iter().flatten().sum::<i64>()).sum();
    assert_eq!((read.iter().map(RecordBatch::num_rows).sum::<usize>(), v), (n as usize, (0..n).sum()));
}
