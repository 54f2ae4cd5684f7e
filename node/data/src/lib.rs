//! The data layer: finds input files, splits them into partitions, reads a
//! partition as raw records or typed batches, and writes output files.
//!
//! [`plan`] turns a path, directory or glob into [`Partition`]s: text formats
//! (CSV with a header, JSON lines, plain text) are cut into byte ranges that
//! start and end at line boundaries; Parquet files into runs of row groups.
//! A [`PartitionReader`] serves one partition to a guest; an [`OutputWriter`]
//! writes JSON lines, CSV or Parquet.
//!
//! Beside the formats: [`store`] says where data lives (paths, `file://`,
//! `s3://`, `http(s)://` inputs fetched under the [`egress`] policy), and
//! [`pairs`] carries key/value pairs from mappers to reducers. Errors are
//! this crate's [`Error`].

pub mod aggregate;
pub mod egress;
mod error;
pub mod pairs;
mod parquet_file;
mod reader;
mod schema;
pub mod store;
mod writer;

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub use error::{Error, Result};

use parquet_file::ParquetFile;
pub use reader::PartitionReader;
pub use schema::ColumnTypes;
pub use writer::{FinishedOutput, OutputWriter};

/// How many rows schema inference reads from the head of a CSV or JSONL
/// file; later values widen the types per partition (see [`ColumnTypes`]).
pub const INFER_ROWS: usize = 1000;

/// A data format, chosen from the file extension unless given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
    /// Plain text, one record per line.
    Text,
}

impl Format {
    /// The format named by `path`'s extension; `None` if it names none.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            "parquet" | "pq" => Some(Format::Parquet),
            "txt" | "text" | "log" | "md" => Some(Format::Text),
            _ => None,
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
            Format::Text => "txt",
        }
    }

    /// The name guests see from `input.format`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            other => other.extension(),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "jsonl" | "ndjson" | "json" => Ok(Format::Jsonl),
            "parquet" => Ok(Format::Parquet),
            "text" | "txt" => Ok(Format::Text),
            other => Err(format!("unknown format `{other}` (expected csv, jsonl, parquet or text)")),
        }
    }
}

/// Which part of a file a partition covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// The records (lines) that start in `[start, end)`.
    Bytes {
        /// First byte offset.
        start: u64,
        /// One past the last byte offset at which a record may start.
        end: u64,
    },
    /// Parquet row groups `first .. first + count`.
    RowGroups {
        /// First row group.
        first: usize,
        /// Number of row groups.
        count: usize,
    },
}

/// One unit of work: a span of one input file.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Position in the plan, from 0.
    pub index: u32,
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The part of the file.
    pub span: Span,
    /// The file's schema (CSV and JSONL: inferred from its head, with the
    /// `types` fixed; Parquet: its own).
    pub schema: Option<SchemaRef>,
    /// Column types the user fixed (CSV and JSONL).
    pub types: ColumnTypes,
    /// Approximate bytes of input, for progress.
    pub bytes: u64,
}

/// Lists the files named by `input`: a file, a directory (its regular,
/// non-hidden files, sorted) or a glob.
pub fn list_inputs(input: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(input);
    let err = |reason: String| Error::Input { input: input.to_string(), reason };
    let mut files = Vec::new();
    if path.is_file() {
        files.push(path.to_path_buf());
    } else if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| err(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| err(e.to_string()))?;
            let p = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with(['.', '_']);
            if p.is_file() && !hidden {
                files.push(p);
            }
        }
    } else if input.contains(['*', '?', '[']) {
        let paths = glob::glob(input).map_err(|e| err(format!("bad glob: {e}")))?;
        for p in paths {
            let p = p.map_err(|e| err(e.to_string()))?;
            if p.is_file() {
                files.push(p);
            }
        }
    } else {
        return Err(err("no such file or directory".into()));
    }
    files.sort();
    if files.is_empty() {
        return Err(err("matched no files".into()));
    }
    Ok(files)
}

/// Splits the files named by `input` into partitions of about
/// `partition_size` bytes. `format` overrides the extension; `types` fixes
/// column types of CSV and JSON-lines files (a column a file lacks is an
/// error).
pub fn plan(input: &str, format: Option<Format>, partition_size: u64, types: &ColumnTypes) -> Result<Vec<Partition>> {
    let partition_size = partition_size.max(1);
    let mut partitions = Vec::new();
    for path in list_inputs(input)? {
        let format = match format.or_else(|| Format::from_path(&path)) {
            Some(f) => f,
            None => {
                return Err(Error::Input {
                    input: path.display().to_string(),
                    reason: "cannot tell the format from the extension; pass --input-format".into(),
                });
            }
        };
        let len = std::fs::metadata(&path).map_err(|e| Error::io("reading metadata of", &path, e))?.len();
        if !types.is_empty() && matches!(format, Format::Parquet | Format::Text) {
            return Err(Error::Input {
                input: path.display().to_string(),
                reason: format!("--schema is for CSV and JSON lines; {format} input has its own types"),
            });
        }
        match format {
            Format::Parquet => plan_parquet(&path, partition_size, &mut partitions)?,
            _ => {
                let (schema, body_start) = text_schema(&path, format)?;
                let schema = fixed(&path, schema, types)?;
                let mut start = body_start;
                while start < len {
                    let end = (start + partition_size).min(len);
                    partitions.push(Partition {
                        index: 0,
                        path: path.clone(),
                        format,
                        span: Span::Bytes { start, end },
                        schema: schema.clone(),
                        types: types.clone(),
                        bytes: end - start,
                    });
                    start = end;
                }
            }
        }
    }
    for (i, p) in partitions.iter_mut().enumerate() {
        p.index = u32::try_from(i)
            .map_err(|_| Error::Input { input: input.to_string(), reason: "more than 2^32 partitions".into() })?;
    }
    Ok(partitions)
}

/// Runs a call into a decoder library, turning a panic into an error
/// naming the file: some decoders assert on malformed input (the parquet
/// crate's metadata reader did, on a fuzzed file), and a bad input file
/// must fail its job, not the process.
pub(crate) fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the decoder failed".into());
        Err(Error::Decode { path: path.to_path_buf(), reason: format!("malformed file: {what}") })
    })
}

fn plan_parquet(path: &Path, partition_size: u64, out: &mut Vec<Partition>) -> Result<()> {
    guarded(path, || plan_parquet_unguarded(path, partition_size, out))
}

fn plan_parquet_unguarded(path: &Path, partition_size: u64, out: &mut Vec<Partition>) -> Result<()> {
    let file = File::open(path).and_then(ParquetFile::new).map_err(|e| Error::io("opening", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Decode { path: path.to_path_buf(), reason: e.to_string() })?;
    let schema = builder.schema().clone();
    let groups = builder.metadata().row_groups();
    let mut first = 0;
    while first < groups.len() {
        let mut count = 0;
        let mut bytes = 0u64;
        while first + count < groups.len() && (count == 0 || bytes < partition_size) {
            bytes += u64::try_from(groups[first + count].compressed_size()).unwrap_or(0);
            count += 1;
        }
        out.push(Partition {
            index: 0,
            path: path.to_path_buf(),
            format: Format::Parquet,
            span: Span::RowGroups { first, count },
            schema: Some(schema.clone()),
            types: ColumnTypes::default(),
            bytes,
        });
        first += count;
    }
    Ok(())
}

/// The partition of `path` covering `span`, with the file's schema, as
/// [`plan`] would make it: how a node rebuilds a partition it was sent.
/// The file's schema is inferred once per file version (path, length,
/// modification time) and kept for the next partitions of the same file;
/// `types` fixes column types as in [`plan`].
pub fn partition(
    index: u32,
    path: &Path,
    format: Format,
    span: Span,
    bytes: u64,
    types: &ColumnTypes,
) -> Result<Partition> {
    let schema = match format {
        Format::Parquet | Format::Text => None,
        _ => {
            type Key = (PathBuf, Format, u64, Option<std::time::SystemTime>);
            static SCHEMAS: std::sync::Mutex<Vec<(Key, Option<SchemaRef>)>> = std::sync::Mutex::new(Vec::new());
            let meta = std::fs::metadata(path).map_err(|e| Error::io("reading metadata of", path, e))?;
            let key = (path.to_path_buf(), format, meta.len(), meta.modified().ok());
            let cached = SCHEMAS.lock().ok().and_then(|c| c.iter().find(|(k, _)| *k == key).map(|(_, s)| s.clone()));
            match cached {
                Some(schema) => schema,
                None => {
                    let schema = text_schema(path, format)?.0;
                    if let Ok(mut c) = SCHEMAS.lock() {
                        // A few recent files are enough: tasks of a job come in file order.
                        if c.len() >= 64 {
                            c.remove(0);
                        }
                        c.push((key, schema.clone()));
                    }
                    schema
                }
            }
        }
    };
    let schema = fixed(path, schema, types)?;
    Ok(Partition { index, path: path.to_path_buf(), format, span, schema, types: types.clone(), bytes })
}

/// A text file's inferred `schema` with the `types` the user fixed.
fn fixed(path: &Path, schema: Option<SchemaRef>, types: &ColumnTypes) -> Result<Option<SchemaRef>> {
    match schema {
        Some(schema) if !types.is_empty() => {
            let schema =
                types.apply(&schema).map_err(|reason| Error::Input { input: path.display().to_string(), reason })?;
            Ok(Some(Arc::new(schema)))
        }
        other => Ok(other),
    }
}

/// The schema of a text file (inferred from its head) and where its body starts
/// (after the CSV header line).
fn text_schema(path: &Path, format: Format) -> Result<(Option<SchemaRef>, u64)> {
    let decode = |e: arrow_schema::ArrowError| Error::Decode { path: path.to_path_buf(), reason: e.to_string() };
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    match format {
        Format::Csv => {
            let mut reader = BufReader::new(file);
            let (schema, _) = arrow_csv::reader::Format::default()
                .with_header(true)
                .infer_schema(&mut reader, Some(INFER_ROWS))
                .map_err(decode)?;
            let header_len = header_len(path)?;
            Ok((Some(Arc::new(schema)), header_len))
        }
        Format::Jsonl => {
            let mut reader = BufReader::new(file);
            let (schema, _) = arrow_json::reader::infer_json_schema(&mut reader, Some(INFER_ROWS)).map_err(decode)?;
            Ok((Some(Arc::new(in_file_order(path, schema)?)), 0))
        }
        Format::Text => Ok((None, 0)),
        Format::Parquet => Ok((None, 0)),
    }
}

/// Orders inferred JSON fields as they first appear in the file (inference
/// sorts them), so output columns keep the input's order.
fn in_file_order(path: &Path, schema: arrow_schema::Schema) -> Result<arrow_schema::Schema> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut order: Vec<String> = Vec::new();
    for line in std::io::BufRead::lines(BufReader::new(file)).take(INFER_ROWS) {
        let line = line.map_err(|e| Error::io("reading", path, e))?;
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&line) {
            for key in map.keys() {
                if !order.contains(key) {
                    order.push(key.clone());
                }
            }
        }
    }
    let rank = |name: &str| order.iter().position(|k| k == name).unwrap_or(usize::MAX);
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.sort_by_key(|f| rank(f.name()));
    Ok(arrow_schema::Schema::new(fields))
}

/// Bytes up to and including the first newline (the CSV header).
fn header_len(path: &Path) -> Result<u64> {
    let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut buf = [0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            return Ok(offset);
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            return Ok(offset + i as u64 + 1);
        }
        offset += n as u64;
    }
}

/// Reads the records of a byte span: every line that starts in
/// `[start, end)`, whole, with a final newline.
pub(crate) fn read_span(path: &Path, start: u64, end: u64) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    // A line that starts at `start` belongs to us only if the byte before is a newline.
    let seek_from = start.saturating_sub(1);
    file.seek(SeekFrom::Start(seek_from)).map_err(|e| Error::io("seeking in", path, e))?;
    let len = usize::try_from(end - seek_from)
        .map_err(|_| Error::Input { input: path.display().to_string(), reason: "partition too large".into() })?;
    let mut data = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file.read(&mut data[filled..]).map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    data.truncate(filled);
    // Finish the last line, which may run past `end`.
    if data.last() != Some(&b'\n') && filled == len {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io("reading", path, e))?;
            if n == 0 {
                break;
            }
            if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
                data.extend_from_slice(&buf[..=i]);
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
    }
    // Skip the tail of a line that started before `start`.
    let skip = if start == 0 {
        0
    } else {
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => data.len(),
        }
    };
    data.drain(..skip);
    if !data.is_empty() && data.last() != Some(&b'\n') {
        data.push(b'\n');
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn byte_spans_cover_every_line_exactly_once() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let path = dir.path().join("lines.txt");
        let mut f = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        let mut expected = Vec::new();
        for i in 0..1000 {
            let line = format!("line {i} {}", "x".repeat(i % 37));
            writeln!(f, "{line}").map_err(|e| Error::io("write", &path, e))?;
            expected.push(line);
        }
        // The last line has no newline.
        write!(f, "tail").map_err(|e| Error::io("write", &path, e))?;
        expected.push("tail".into());
        drop(f);
        for size in [1, 7, 64, 1000, 1 << 20] {
            let parts = plan(path.to_str().unwrap_or_default(), None, size, &ColumnTypes::default())?;
            let mut got = Vec::new();
            for p in &parts {
                let Span::Bytes { start, end } = p.span else { panic!("text gives byte spans") };
                let data = read_span(&p.path, start, end)?;
                got.extend(String::from_utf8_lossy(&data).lines().map(str::to_string));
            }
            assert_eq!(got, expected, "partition size {size}");
        }
        Ok(())
    }

    #[test]
    fn unknown_input_is_a_clear_error() {
        let err = plan("/definitely/not/here.csv", None, 1024, &ColumnTypes::default()).map(|_| ()).err();
        assert!(matches!(err, Some(Error::Input { .. })), "{err:?}");
        let err = plan("/definitely/not/*.csv", None, 1024, &ColumnTypes::default()).map(|_| ()).err();
        assert!(err.map(|e| e.to_string()).unwrap_or_default().contains("matched no files"));
    }
}
