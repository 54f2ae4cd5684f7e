//! [`PartitionReader`]: serves one partition as raw records or typed batches.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::parquet_file::ParquetFile;
use super::schema::{self, ColumnTypes};
use super::{Format, Partition, Span, read_span};
use crate::{Error, Result};

/// Reads one partition. Text formats are read into memory once (a partition
/// is bounded by the planned size plus one line); Parquet streams row groups.
/// CSV and JSON lines are decoded whole at the first `next_batch`, so that
/// every batch of the partition has the types its values settle on (see
/// [`schema`](super::schema)), and their text is dropped then.
#[derive(Debug)]
pub struct PartitionReader {
    partition: Partition,
    source: Source,
    /// Records (rows or lines) handed out so far.
    records: u64,
    /// The only columns to read, when chosen.
    columns: Option<Vec<String>>,
}

enum Source {
    Text {
        data: Vec<u8>,
        pos: usize,
    },
    /// A CSV or JSON-lines partition, decoded.
    Decoded {
        batches: VecDeque<RecordBatch>,
    },
    /// A Parquet partition whose reader is built at the first batch, so
    /// that [`PartitionReader::select`] can still pick its columns.
    ParquetUnread {
        builder: Box<ParquetRecordBatchReaderBuilder<ParquetFile>>,
        row_groups: Vec<usize>,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        pending: Option<RecordBatch>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Text { data, pos } => write!(f, "Text {{ len: {}, pos: {pos} }}", data.len()),
            Source::Decoded { batches } => write!(f, "Decoded {{ batches: {} }}", batches.len()),
            Source::Parquet { .. } | Source::ParquetUnread { .. } => f.write_str("Parquet"),
        }
    }
}

const PARQUET_BATCH_ROWS: usize = 8192;

/// Rows per batch when a CSV or JSON-lines partition is decoded.
const TEXT_BATCH_ROWS: usize = 8192;

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
                let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| {
                        check_chunks(b.metadata(), *first..first + count, length)?;
                        Ok(b)
                    })
                    .map_err(|e| Error::Decode { path: partition.path.clone(), reason: e.to_string() })?;
                Source::ParquetUnread { builder: Box::new(builder), row_groups: (*first..first + count).collect() }
            }
            (span, format) => {
                return Err(Error::BadInputRequest {
                    reason: format!("partition span {span:?} does not fit format {format}"),
                });
            }
        };
        Ok(PartitionReader { partition, source, records: 0, columns: None })
    }

    /// Reads only those of `columns` that the partition has: a Parquet
    /// partition's other column chunks are never decoded, a CSV or JSON-lines
    /// partition's other values never parsed. Every column when it has none
    /// of them, and for text. Before the first batch only.
    pub fn select(&mut self, columns: Vec<String>) {
        self.columns = Some(columns);
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
        let (data, pos) = match &mut self.source {
            Source::Text { data, pos } => (data, pos),
            Source::Decoded { .. } => {
                return Err(Error::BadInputRequest {
                    reason: "next-bytes after next-batch: a partition is read as bytes or as batches".into(),
                });
            }
            Source::Parquet { .. } | Source::ParquetUnread { .. } => {
                return Err(Error::BadInputRequest {
                    reason: "next-bytes is not available for Parquet input; use next-batch".into(),
                });
            }
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
        let decode = |e: ArrowError| Error::Decode { path: path.clone(), reason: e.to_string() };
        if let (Source::Text { data, pos }, Format::Csv | Format::Jsonl) = (&mut self.source, self.partition.format) {
            let text = std::mem::take(data);
            let batches = decode_text(&self.partition, &text[(*pos).min(text.len())..], self.columns.as_deref())?;
            self.source = Source::Decoded { batches: batches.into() };
        }
        if matches!(self.source, Source::ParquetUnread { .. }) {
            let Source::ParquetUnread { builder, row_groups } =
                std::mem::replace(&mut self.source, Source::Decoded { batches: VecDeque::new() })
            else {
                unreachable!("matched above");
            };
            let mut builder = builder.with_row_groups(row_groups).with_batch_size(PARQUET_BATCH_ROWS);
            let schema = builder.schema().clone();
            let mut roots: Vec<usize> =
                self.columns.iter().flatten().filter_map(|name| schema.index_of(name).ok()).collect();
            if !roots.is_empty() {
                roots.sort_unstable();
                roots.dedup();
                let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
                builder = builder.with_projection(mask);
            }
            let reader = builder.build().map_err(|e| Error::Decode { path: path.clone(), reason: e.to_string() })?;
            self.source = Source::Parquet { reader, pending: None };
        }
        let batch = match &mut self.source {
            Source::ParquetUnread { .. } => unreachable!("built above"),
            Source::Text { data, pos } => {
                if *pos >= data.len() {
                    return Ok(None);
                }
                let rest = &data[*pos..];
                let chunk = &rest[..lines_end(rest, max_rows)];
                *pos += chunk.len();
                lines_batch(chunk)
            }
            Source::Decoded { batches } => match batches.pop_front() {
                Some(b) if b.num_rows() > max_rows => {
                    batches.push_front(b.slice(max_rows, b.num_rows() - max_rows));
                    Some(b.slice(0, max_rows))
                }
                other => other,
            },
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

fn missing_schema(path: &Path) -> Error {
    Error::Decode { path: path.to_path_buf(), reason: "no schema was inferred for this file".into() }
}

/// The length of the first `rows` lines of `text` (all of it if it has fewer).
fn lines_end(text: &[u8], rows: usize) -> usize {
    let mut lines = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == b'\n' {
            lines += 1;
            if lines == rows {
                return i + 1;
            }
        }
    }
    text.len()
}

/// A CSV or JSON-lines partition's `text` decoded into batches whose
/// columns have the types the partition's values settle on; a value that
/// does not fit a type the user fixed is an error naming its line and column.
/// With `columns`, only those of them the partition has are decoded.
fn decode_text(partition: &Partition, text: &[u8], columns: Option<&[String]>) -> Result<Vec<RecordBatch>> {
    let path = &partition.path;
    let head = partition.schema.clone().ok_or_else(|| missing_schema(path))?;
    let fixed = &partition.types;
    let exact_ints = partition.format == Format::Jsonl;
    let mut picked: Vec<usize> = columns.iter().copied().flatten().filter_map(|n| head.index_of(n).ok()).collect();
    picked.sort_unstable();
    picked.dedup();
    let picked = (!picked.is_empty()).then_some(picked);
    let project = |s: &SchemaRef| match &picked {
        Some(ix) => {
            s.project(ix).map(Arc::new).map_err(|e| Error::Decode { path: path.clone(), reason: e.to_string() })
        }
        None => Ok(s.clone()),
    };
    let mut decoding = schema::decoding(&head, fixed, false, exact_ints);
    let batches = match decode_with(partition.format, text, decoding.clone(), picked.as_deref()) {
        Ok(batches) => batches,
        Err(_) => {
            // A value that fits no typed column: read every column not fixed as text.
            decoding = schema::decoding(&head, fixed, true, exact_ints);
            decode_with(partition.format, text, decoding.clone(), picked.as_deref())
                .map_err(|e| locate(partition, text, &decoding, e))?
        }
    };
    let (head, decoding) = (project(&head)?, project(&decoding)?);
    if !schema::needs_settling(&head, &decoding) {
        return Ok(batches);
    }
    let columns: Vec<Vec<ArrayRef>> = batches.iter().map(|b| b.columns().to_vec()).collect();
    let types = schema::settled_types(&head, &decoding, &columns, fixed);
    let settled: SchemaRef = Arc::new(Schema::new(
        decoding.fields().iter().zip(&types).map(|(f, t)| Field::new(f.name(), t.clone(), true)).collect::<Vec<_>>(),
    ));
    let mut rows_before = 0;
    let mut out = Vec::with_capacity(columns.len());
    for batch in columns {
        let mut settled_columns = Vec::with_capacity(batch.len());
        for (i, (column, t)) in batch.iter().zip(&types).enumerate() {
            let column = schema::settle(column, t).map_err(|row| {
                let name = decoding.field(i).name();
                let value = column.as_string::<i32>().value(row);
                unfit(partition, rows_before + row, name, value)
            })?;
            settled_columns.push(column);
        }
        rows_before += batch.first().map_or(0, |c| c.len());
        out.push(
            RecordBatch::try_new(settled.clone(), settled_columns)
                .map_err(|e| Error::Decode { path: path.clone(), reason: e.to_string() })?,
        );
    }
    Ok(out)
}

/// The error for row `row` of a partition, whose value `value` in column
/// `name` does not fit the type the user fixed.
fn unfit(partition: &Partition, row: usize, name: &str, value: &str) -> Error {
    let types = &partition.types;
    let what = match types.get(name) {
        Some(DataType::Int64) => "an integer",
        Some(DataType::Float64) => "a number",
        Some(DataType::Boolean) => "true or false",
        _ => "a string",
    };
    let reason = format!(
        "{}column `{name}`: `{value}` is not {what} (--schema {name}:{})",
        line_of(partition, row),
        types.name_of(name)
    );
    Error::Decode { path: partition.path.clone(), reason }
}

/// `line N, ` for row `row` of a partition (its line in the file), or
/// nothing when that cannot be told.
fn line_of(partition: &Partition, row: usize) -> String {
    match partition.span {
        Span::Bytes { start, .. } => {
            lines_before(&partition.path, start).map_or(String::new(), |n| format!("line {}, ", n + row as u64 + 1))
        }
        Span::RowGroups { .. } => String::new(),
    }
}

/// `text` decoded with `schema`, [`TEXT_BATCH_ROWS`] rows a batch; with
/// `projection`, only the columns at those indices of `schema`.
fn decode_with(
    format: Format,
    text: &[u8],
    schema: SchemaRef,
    projection: Option<&[usize]>,
) -> Result<Vec<RecordBatch>, ArrowError> {
    // JSON is decoded by field name: fields the schema lacks are skipped.
    let json_schema = match projection {
        Some(ix) if format != Format::Csv => Arc::new(schema.project(ix)?),
        _ => schema.clone(),
    };
    let mut batches = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let chunk = &rest[..lines_end(rest, TEXT_BATCH_ROWS)];
        rest = &rest[chunk.len()..];
        let batch = match format {
            Format::Csv => {
                let mut builder =
                    arrow_csv::ReaderBuilder::new(schema.clone()).with_header(false).with_batch_size(TEXT_BATCH_ROWS);
                if let Some(ix) = projection {
                    builder = builder.with_projection(ix.to_vec());
                }
                let mut decoder = builder.build_decoder();
                decoder.decode(chunk)?;
                decoder.flush()?
            }
            _ => {
                let mut decoder = arrow_json::ReaderBuilder::new(json_schema.clone())
                    .with_batch_size(TEXT_BATCH_ROWS)
                    .with_coerce_primitive(true)
                    .build_decoder()?;
                decoder.decode(chunk)?;
                decoder.flush()?
            }
        };
        batches.extend(batch.filter(|b| b.num_rows() > 0));
    }
    Ok(batches)
}

/// The error for a partition whose `text` did not decode with `schema`:
/// the first line that does not, and the column the user fixed to a type
/// its value does not fit.
fn locate(partition: &Partition, text: &[u8], schema: &SchemaRef, error: ArrowError) -> Error {
    let format = partition.format;
    // The first chunk that fails, then its first line that does.
    let (mut rest, mut rows_before) = (text, 0);
    let failing = loop {
        if rest.is_empty() {
            break None;
        }
        let chunk = &rest[..lines_end(rest, TEXT_BATCH_ROWS)];
        rest = &rest[chunk.len()..];
        if decode_with(format, chunk, schema.clone(), None).is_err() {
            break chunk
                .split_inclusive(|&b| b == b'\n')
                .enumerate()
                .find(|(_, line)| decode_with(format, line, schema.clone(), None).is_err())
                .map(|(row, line)| (rows_before + row, line));
        }
        rows_before += TEXT_BATCH_ROWS;
    };
    let Some((row, line)) = failing else {
        return Error::Decode { path: partition.path.clone(), reason: error.to_string() };
    };
    let as_text = schema::decoding(schema, &ColumnTypes::default(), true, false);
    let values = decode_with(format, line, as_text, None).ok().and_then(|b| b.into_iter().next());
    for (i, field) in schema.fields().iter().enumerate() {
        if partition.types.get(field.name()).is_none() {
            continue;
        }
        // The line decodes with only this column typed?
        let alone: Vec<Field> =
            schema
                .fields()
                .iter()
                .map(|f| {
                    if f.name() == field.name() {
                        f.as_ref().clone()
                    } else {
                        Field::new(f.name(), DataType::Utf8, true)
                    }
                })
                .collect();
        if decode_with(format, line, Arc::new(Schema::new(alone)), None).is_ok() {
            continue;
        }
        let value = values.as_ref().and_then(|b| b.column(i).as_string_opt::<i32>().map(|s| s.value(0).to_string()));
        return unfit(partition, row, field.name(), &value.unwrap_or_default());
    }
    Error::Decode { path: partition.path.clone(), reason: format!("{}{error}", line_of(partition, row)) }
}

/// How many lines of `path` come before the first record of a span that
/// starts at byte `offset`: the lines ending before it, and the one it
/// starts inside, whose tail the span skips.
fn lines_before(path: &Path, offset: u64) -> std::io::Result<u64> {
    let mut file = File::open(path)?.take(offset);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut last) = (0, b'\n');
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines + u64::from(last != b'\n'));
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
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
