//! [`PartitionReader`]: serves one partition as raw records or typed batches.

use std::fs::File;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::parquet_file::ParquetFile;
use super::{Format, Partition, Span, read_span};
use crate::{Error, Result};

/// Reads one partition. Text formats are read into memory once (a partition
/// is bounded by the planned size plus one line); Parquet streams row groups.
#[derive(Debug)]
pub struct PartitionReader {
    partition: Partition,
    source: Source,
    /// Records (rows or lines) handed out so far.
    records: u64,
}

enum Source {
    Text { data: Vec<u8>, pos: usize },
    Parquet { reader: ParquetRecordBatchReader, pending: Option<RecordBatch> },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Text { data, pos } => write!(f, "Text {{ len: {}, pos: {pos} }}", data.len()),
            Source::Parquet { .. } => f.write_str("Parquet"),
        }
    }
}

const PARQUET_BATCH_ROWS: usize = 8192;

impl PartitionReader {
    /// Opens `partition`.
    pub fn open(partition: Partition) -> Result<Self> {
        let path = partition.path.clone();
        super::guarded(&path, move || Self::open_unguarded(partition))
    }

    fn open_unguarded(partition: Partition) -> Result<Self> {
        let source = match (&partition.span, partition.format) {
            (Span::Bytes { start, end }, Format::Csv | Format::Jsonl | Format::Text) => {
                Source::Text { data: read_span(&partition.path, *start, *end)?, pos: 0 }
            }
            (Span::RowGroups { first, count }, Format::Parquet) => {
                let file = File::open(&partition.path)
                    .and_then(ParquetFile::new)
                    .map_err(|e| Error::io("opening", &partition.path, e))?;
                let length = file.length();
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| {
                        check_chunks(b.metadata(), *first..first + count, length)?;
                        b.with_row_groups((*first..first + count).collect()).with_batch_size(PARQUET_BATCH_ROWS).build()
                    })
                    .map_err(|e| Error::Decode { path: partition.path.clone(), reason: e.to_string() })?;
                Source::Parquet { reader, pending: None }
            }
            (span, format) => {
                return Err(Error::BadInputRequest {
                    reason: format!("partition span {span:?} does not fit format {format}"),
                });
            }
        };
        Ok(PartitionReader { partition, source, records: 0 })
    }

    /// The partition being read.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// Records handed out so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Up to `max_bytes` of whole lines; one longer line is returned whole.
    pub fn next_bytes(&mut self, max_bytes: usize) -> Result<Option<Vec<u8>>> {
        let Source::Text { data, pos } = &mut self.source else {
            return Err(Error::BadInputRequest {
                reason: "next-bytes is not available for Parquet input; use next-batch".into(),
            });
        };
        if *pos >= data.len() {
            return Ok(None);
        }
        let rest = &data[*pos..];
        let window = &rest[..max_bytes.max(1).min(rest.len())];
        let cut = match window.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            // One line longer than the window: return it whole.
            None => rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1),
        };
        let chunk = rest[..cut].to_vec();
        self.records += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        *pos += cut;
        Ok(Some(chunk))
    }

    /// Up to `max_rows` rows as an Arrow batch.
    pub fn next_batch(&mut self, max_rows: usize) -> Result<Option<RecordBatch>> {
        let path = self.partition.path.clone();
        super::guarded(&path, || self.next_batch_unguarded(max_rows))
    }

    fn next_batch_unguarded(&mut self, max_rows: usize) -> Result<Option<RecordBatch>> {
        let max_rows = max_rows.max(1);
        let path = &self.partition.path;
        let decode = |e: arrow_schema::ArrowError| Error::Decode { path: path.clone(), reason: e.to_string() };
        let batch = match &mut self.source {
            Source::Text { data, pos } => {
                if *pos >= data.len() {
                    return Ok(None);
                }
                let rest = &data[*pos..];
                // The end of the `max_rows`-th line.
                let mut cut = rest.len();
                let mut lines = 0;
                for (i, &b) in rest.iter().enumerate() {
                    if b == b'\n' {
                        lines += 1;
                        if lines == max_rows {
                            cut = i + 1;
                            break;
                        }
                    }
                }
                let chunk = &rest[..cut];
                *pos += cut;
                match self.partition.format {
                    Format::Text => lines_batch(chunk),
                    Format::Csv => {
                        let schema = self.partition.schema.clone().ok_or_else(|| missing_schema(path))?;
                        let mut decoder = arrow_csv::ReaderBuilder::new(schema)
                            .with_header(false)
                            .with_batch_size(max_rows)
                            .build_decoder();
                        decoder.decode(chunk).map_err(decode)?;
                        decoder.flush().map_err(decode)?
                    }
                    Format::Jsonl => {
                        let schema = self.partition.schema.clone().ok_or_else(|| missing_schema(path))?;
                        let mut decoder = arrow_json::ReaderBuilder::new(schema)
                            .with_batch_size(max_rows)
                            .build_decoder()
                            .map_err(decode)?;
                        decoder.decode(chunk).map_err(decode)?;
                        decoder.flush().map_err(decode)?
                    }
                    Format::Parquet => None,
                }
            }
            Source::Parquet { reader, pending } => {
                let batch = match pending.take() {
                    Some(b) => Some(b),
                    None => reader.next().transpose().map_err(decode)?,
                };
                match batch {
                    Some(b) if b.num_rows() > max_rows => {
                        *pending = Some(b.slice(max_rows, b.num_rows() - max_rows));
                        Some(b.slice(0, max_rows))
                    }
                    other => other,
                }
            }
        };
        if let Some(b) = &batch {
            self.records += b.num_rows() as u64;
        }
        Ok(batch)
    }
}

fn missing_schema(path: &std::path::Path) -> Error {
    Error::Decode { path: path.to_path_buf(), reason: "no schema was inferred for this file".into() }
}

fn lines_batch(chunk: &[u8]) -> Option<RecordBatch> {
    let text = String::from_utf8_lossy(chunk);
    let lines: StringArray = text.lines().map(Some).collect();
    let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(lines) as ArrayRef]).ok()
}

/// Refuses row groups whose column chunks do not lie within the file: the
/// parquet crate's page reader can loop without end on such a chunk (found
/// by the `data_decoders` fuzz target).
fn check_chunks(
    metadata: &parquet::file::metadata::ParquetMetaData,
    groups: std::ops::Range<usize>,
    length: u64,
) -> parquet::errors::Result<()> {
    for group in groups {
        let Some(row_group) = metadata.row_groups().get(group) else {
            return Err(parquet::errors::ParquetError::General(format!("no row group {group}")));
        };
        for column in row_group.columns() {
            let start = column.dictionary_page_offset().unwrap_or(column.data_page_offset());
            let size = column.compressed_size();
            let inside =
                start >= 4 && size > 0 && u64::try_from(start.saturating_add(size)).is_ok_and(|end| end <= length);
            if !inside {
                return Err(parquet::errors::ParquetError::General(format!(
                    "a column chunk of row group {group} claims bytes {start}..+{size}, outside the {length}-byte file"
                )));
            }
        }
    }
    Ok(())
}
