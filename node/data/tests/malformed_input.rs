//! Input files the data decoders must refuse with an error, never a panic:
//! each one a crash the `data_decoders` fuzz target found.

use std::path::Path;

use wasmgrid_data::Error;
use wasmgrid_data::{PartitionReader, plan};

/// Plans `file` and reads every partition; the first error.
fn read_all(file: &Path) -> Result<usize, Error> {
    let mut rows = 0;
    for partition in plan(&file.display().to_string(), None, 64, &Default::default())? {
        let mut reader = PartitionReader::open(partition)?;
        while let Some(batch) = reader.next_batch(128)? {
            rows += batch.num_rows();
        }
    }
    Ok(rows)
}

#[test]
fn parquet_with_negative_column_offsets_is_a_decode_error() {
    // A footer whose column chunk has a negative start: the parquet crate
    // asserts on it while reading the metadata.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-crash-1.parquet");
    let err = read_all(&file).expect_err("malformed");
    assert!(matches!(err, Error::Decode { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("fuzz-crash-1.parquet") && message.contains("outside the 1122-byte file"), "{message}");
}

#[test]
fn parquet_whose_page_header_runs_past_the_file_is_a_decode_error() {
    // A page header declaring a list of about two billion strings right
    // before the end of the file: the parquet crate skipped them with empty
    // reads, one at a time, for hours.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-hang-1.parquet");
    let err = read_all(&file).expect_err("malformed");
    assert!(matches!(err, Error::Decode { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("fuzz-hang-1.parquet") && message.contains("past the end of the file"), "{message}");
}
