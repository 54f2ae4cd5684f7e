//! [`OutputWriter`]: writes one output file atomically (temporary name, then
//! rename on [`OutputWriter::finish`]), as JSON lines, CSV or Parquet; or
//! keeps a small output in memory ([`OutputWriter::in_memory_up_to`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::Format;
use crate::{Error, Result};

/// JSON records are decoded into Arrow this many at a time for CSV and Parquet.
const RECORD_CHUNK: usize = 4096;

/// Writes one output file.
pub struct OutputWriter {
    format: Format,
    tmp: PathBuf,
    dest: PathBuf,
    sink: Sink,
    /// JSON records waiting to be converted (CSV and Parquet output).
    records: Vec<u8>,
    pending_records: usize,
    rows: u64,
    finished: bool,
    /// The schema of the first batch written.
    schema: Option<SchemaRef>,
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

enum Sink {
    Json(Spill),
    Csv(arrow_csv::Writer<Spill>),
    /// Created on the first batch, when the schema is known.
    Parquet(Option<ArrowWriter<Spill>>, Option<Spill>),
}

impl Sink {
    fn new(format: Format, to: Spill) -> Sink {
        match format {
            Format::Jsonl | Format::Text => Sink::Json(to),
            Format::Csv => Sink::Csv(arrow_csv::WriterBuilder::new().with_header(true).build(to)),
            Format::Parquet => Sink::Parquet(None, Some(to)),
        }
    }
}

/// Where a writer's bytes go: its file, or memory until they pass a limit
/// (then the file, created at that moment).
enum Spill {
    File(BufWriter<File>),
    Memory { bytes: Vec<u8>, limit: usize, path: PathBuf },
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Spill::File(f) => f.write(buf),
            Spill::Memory { bytes, limit, path } => {
                if bytes.len() + buf.len() <= *limit {
                    bytes.extend_from_slice(buf);
                    return Ok(buf.len());
                }
                let mut file = BufWriter::new(File::create(&*path)?);
                file.write_all(bytes)?;
                *self = Spill::File(file);
                self.write(buf)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Spill::File(f) => f.flush(),
            Spill::Memory { .. } => Ok(()),
        }
    }
}

/// A finished output: its rows, and its bytes if they never left memory
/// (then no file was written).
#[derive(Debug)]
pub struct FinishedOutput {
    /// Rows written.
    pub rows: u64,
    /// The whole output, when it stayed in memory.
    pub bytes: Option<Vec<u8>>,
}

impl std::fmt::Debug for OutputWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputWriter").field("dest", &self.dest).field("rows", &self.rows).finish()
    }
}

impl OutputWriter {
    /// Starts writing `dest` (as a hidden temporary file beside it).
    pub fn create(dest: &Path, format: Format) -> Result<Self> {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self::write_to(dest.with_file_name(format!(".{name}.{}.tmp", std::process::id())), dest, format)
    }

    /// Starts writing an output in memory; once it passes `limit` bytes it
    /// moves to `dest`, written under its own name: for files nobody reads
    /// before [`OutputWriter::finish_kept`] returns (a batch attempt's
    /// output, published only once the attempt has reported). A writer
    /// dropped unfinished still removes the file.
    pub fn in_memory_up_to(dest: &Path, format: Format, limit: usize) -> Self {
        let to = Spill::Memory { bytes: Vec::new(), limit, path: dest.to_path_buf() };
        Self::with_sink(dest.to_path_buf(), dest, format, Sink::new(format, to))
    }

    fn write_to(tmp: PathBuf, dest: &Path, format: Format) -> Result<Self> {
        let file = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        Ok(Self::with_sink(tmp, dest, format, Sink::new(format, Spill::File(BufWriter::new(file)))))
    }

    fn with_sink(tmp: PathBuf, dest: &Path, format: Format, sink: Sink) -> Self {
        OutputWriter {
            format,
            tmp,
            dest: dest.to_path_buf(),
            sink,
            records: Vec::new(),
            pending_records: 0,
            rows: 0,
            finished: false,
            schema: None,
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Where the file will be once finished.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Writes a batch of rows.
    pub fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        self.flush_records()?;
        self.write_arrow(batch)
    }

    /// Writes one record given as a JSON object.
    pub fn write_record(&mut self, json: &[u8]) -> Result<()> {
        validate_record(json)?;
        match &mut self.sink {
            Sink::Json(w) => {
                w.write_all(json).and_then(|()| w.write_all(b"\n")).map_err(|e| self.io(e))?;
                self.rows += 1;
            }
            _ => {
                self.records.extend_from_slice(json);
                self.records.push(b'\n');
                self.pending_records += 1;
                if self.pending_records >= RECORD_CHUNK {
                    self.flush_records()?;
                }
            }
        }
        Ok(())
    }

    fn flush_records(&mut self) -> Result<()> {
        if self.pending_records == 0 {
            return Ok(());
        }
        let data = std::mem::take(&mut self.records);
        self.pending_records = 0;
        let schema = self.record_schema(&data)?;
        let bad =
            |e: arrow_schema::ArrowError| Error::BadOutput { reason: format!("records do not fit one schema: {e}") };
        let mut decoder =
            arrow_json::ReaderBuilder::new(schema).with_batch_size(RECORD_CHUNK).build_decoder().map_err(bad)?;
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = decoder.decode(rest).map_err(bad)?;
            rest = &rest[n..];
            if let Some(b) = decoder.flush().map_err(bad)? {
                self.write_arrow(&b)?;
            }
            if n == 0 {
                break;
            }
        }
        if let Some(b) = decoder.flush().map_err(bad)? {
            self.write_arrow(&b)?;
        }
        Ok(())
    }

    /// The schema for JSON records: the file's schema once it has one, so that
    /// every chunk of a file agrees; otherwise inferred from the records.
    fn record_schema(&self, data: &[u8]) -> Result<SchemaRef> {
        if let Some(schema) = &self.schema {
            return Ok(schema.clone());
        }
        let (schema, _) = arrow_json::reader::infer_json_schema(std::io::Cursor::new(data), None)
            .map_err(|e| Error::BadOutput { reason: e.to_string() })?;
        Ok(Arc::new(schema))
    }

    fn write_arrow(&mut self, batch: &RecordBatch) -> Result<()> {
        let dest = self.dest.clone();
        let enc = |e: String| Error::Output { path: dest.clone(), reason: e };
        match &mut self.sink {
            Sink::Json(w) => {
                let mut jw = arrow_json::LineDelimitedWriter::new(w);
                jw.write(batch).map_err(|e| enc(e.to_string()))?;
                jw.finish().map_err(|e| enc(e.to_string()))?;
            }
            Sink::Csv(w) => w.write(batch).map_err(|e| enc(e.to_string()))?,
            Sink::Parquet(writer, file) => {
                if writer.is_none() {
                    let file = file.take().ok_or_else(|| enc("parquet file already closed".into()))?;
                    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
                    *writer =
                        Some(ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| enc(e.to_string()))?);
                }
                if let Some(w) = writer {
                    w.write(batch).map_err(|e| {
                        enc(format!("{e} (a function's output must keep one schema within a partition)"))
                    })?;
                }
            }
        }
        self.rows += batch.num_rows() as u64;
        if self.schema.is_none() {
            self.schema = Some(batch.schema());
        }
        Ok(())
    }

    /// Flushes and moves the file to its final name; returns the rows
    /// written. An output still in memory is written to its file.
    pub fn finish(self) -> Result<u64> {
        let dest = self.dest.clone();
        let finished = self.finish_kept()?;
        if let Some(bytes) = finished.bytes {
            std::fs::write(&dest, bytes).map_err(|e| Error::io("writing", &dest, e))?;
        }
        Ok(finished.rows)
    }

    /// Flushes and moves the file to its final name; an output that never
    /// left memory comes back as its bytes instead (no file is written).
    pub fn finish_kept(mut self) -> Result<FinishedOutput> {
        self.flush_records()?;
        let dest = self.dest.clone();
        let enc = |e: String| Error::Output { path: dest.clone(), reason: e };
        let spill = match std::mem::replace(&mut self.sink, Sink::Parquet(None, None)) {
            Sink::Json(w) => Some(w),
            Sink::Csv(w) => Some(w.into_inner()),
            Sink::Parquet(Some(w), _) => Some(w.into_inner().map_err(|e| enc(e.to_string()))?),
            Sink::Parquet(None, Some(to)) => {
                // No rows at all: still a valid (empty) Parquet file.
                let schema = Arc::new(arrow_schema::Schema::empty());
                let w = ArrowWriter::try_new(to, schema, None).map_err(|e| enc(e.to_string()))?;
                Some(w.into_inner().map_err(|e| enc(e.to_string()))?)
            }
            Sink::Parquet(None, None) => None,
        };
        let bytes = match spill {
            Some(Spill::Memory { bytes, .. }) => Some(bytes),
            Some(Spill::File(mut f)) => {
                f.flush().map_err(|e| self.io(e))?;
                None
            }
            None => None,
        };
        if bytes.is_none() && self.tmp != self.dest {
            std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io("renaming output to", &self.dest, e))?;
        }
        self.finished = true;
        Ok(FinishedOutput { rows: self.rows, bytes })
    }

    /// Throws the partial file away (dropping the writer does the same).
    pub fn abort(self) {}

    /// The output format.
    pub fn format(&self) -> Format {
        self.format
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io("writing", &self.tmp, e)
    }
}

/// A record must be one JSON object.
fn validate_record(json: &[u8]) -> Result<()> {
    let first = json.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Error::BadOutput { reason: "a record must be a JSON object".into() });
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(json)
        .map(|_| ())
        .map_err(|e| Error::BadOutput { reason: format!("a record is not valid JSON: {e}") })
}
