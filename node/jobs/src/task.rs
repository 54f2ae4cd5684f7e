//! One task attempt on a grid node: reads its partition (or its reduce
//! partition's pair files), runs the [executor](crate::exec), and leaves its
//! output under the job's work directory (`OUTPUT/_temporary/JOB`) with the
//! attempt id in its names, so attempts never overwrite each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use wasmgrid_api::{PartitionSpec, SpanSpec, Stage, TaskAssignment, TaskOutcome};
use wasmgrid_data::aggregate::{self, Groups};
use wasmgrid_data::pairs::Pairs;
use wasmgrid_data::store::{self, Place};
use wasmgrid_data::{self as data, ColumnTypes, Format, OutputWriter, PartitionReader, Span};
use wasmgrid_runtime::{Artifacts, Captured, DataError, Error, Function, Kind, Limits, Result};

use crate::exec::{self, Call};
use crate::segments::{self, SMALL_OUTPUT, Segments};

/// Rows per scorer call in a grid task.
const BATCH_ROWS: usize = 4096;

/// What a finished attempt wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Files, relative to the output directory (see [`TaskOutcome::Done`]).
    pub files: Vec<String>,
    /// Rows in each.
    pub rows: Vec<u64>,
    /// Records read.
    pub records_in: u64,
    /// Time its `gpu` calls took.
    pub gpu_time: Duration,
}

impl Written {
    /// The report of this attempt.
    pub fn outcome(self) -> TaskOutcome {
        let gpu_us = self.gpu_time.as_micros() as u64;
        TaskOutcome::Done { files: self.files, rows: self.rows, records_in: self.records_in, gpu_us }
    }
}

/// The limits an attempt's calls run under; setting `cancel` stops them.
pub fn limits(task: &TaskAssignment, cancel: Option<Arc<AtomicBool>>) -> Limits {
    Limits {
        memory: task.function.memory,
        timeout: Duration::from_millis(task.function.timeout_ms.max(1)),
        cancel,
        gpu_refused: task.gpu_refused.as_deref().map(Into::into),
        ..Limits::default()
    }
}

/// Runs one attempt of `task` with `function` (its module, compiled);
/// setting `cancel` stops it. Small outputs go to the calling thread's
/// `segments` of the job; output in an object store is written to a local
/// scratch directory first and uploaded once complete. What the guest
/// logged goes to `captured`, whether the attempt succeeds or not.
pub fn run(
    function: &Function,
    task: &TaskAssignment,
    artifacts: &Artifacts,
    cancel: Option<Arc<AtomicBool>>,
    captured: &mut Captured,
    segments: &mut Segments,
) -> Result<Written> {
    let work_place = Place::parse(&task.work_dir).map_err(|e| Error::Job(e.to_string()))?;
    let suffix = format!("_temporary/{}", task.job);
    let output_uri = task.work_dir.strip_suffix(&suffix).unwrap_or(&task.work_dir).trim_end_matches('/').to_string();
    let output = Place::parse(&output_uri).map_err(|e| Error::Job(e.to_string()))?;
    let work = match &work_place {
        Place::Local(p) => p.clone(),
        _ => std::env::temp_dir().join("wasmgrid-attempts").join(&task.job).join(format!("{:x}", task.attempt)),
    };
    if work_place.is_remote() {
        std::fs::create_dir_all(&work).map_err(|e| Error::io("creating", &work, e))?;
    } else {
        segments.make_dir(&work).map_err(|e| Error::io("creating", &work, e))?;
    }
    // Objects cannot be appended to: remote outputs are whole files.
    let segments = (!work_place.is_remote()).then_some(segments);
    let limits = limits(task, cancel);
    let config = Arc::new(task.function.config.clone());
    let mut attempt = Attempt { task, work: work.clone(), suffix: suffix.clone(), segments };
    let call = Call { limits: &limits, config: &config, artifacts };
    let written = match task.stage {
        Stage::Map => attempt.map(function, call, captured),
        Stage::Reduce => attempt.reduce(function, call, &output, captured),
    };
    if work_place.is_remote() {
        let uploaded = written.and_then(|w| {
            for file in w.files.iter().filter(|f| !f.is_empty()) {
                let local = work.join(file.strip_prefix(&format!("{suffix}/")).unwrap_or(file));
                store::upload(&local, &output.join(file)).map_err(|e| Error::Job(e.to_string()))?;
            }
            Ok(w)
        });
        let _ = std::fs::remove_dir_all(&work);
        return uploaded;
    }
    written
}

/// One attempt's place to write: its work directory and, when it is local,
/// the thread's segments of the job.
struct Attempt<'a> {
    task: &'a TaskAssignment,
    work: PathBuf,
    /// `_temporary/JOB`: reported names are relative to the output.
    suffix: String,
    segments: Option<&'a mut Segments>,
}

impl Attempt<'_> {
    /// The stem of this attempt's file names.
    fn stem(&self) -> String {
        let stage = match self.task.stage {
            Stage::Map => 'm',
            Stage::Reduce => 'r',
        };
        format!("{stage}{:05}-{:x}", self.task.task, self.task.attempt)
    }

    fn format(&self) -> Result<Format> {
        self.task.format.parse::<Format>().map_err(|e| Error::Job(e.to_string()))
    }

    fn map(&mut self, function: &Function, call: Call<'_>, captured: &mut Captured) -> Result<Written> {
        let task = self.task;
        if task.input.is_none() {
            return Err(Error::Job("a map task without input".into()));
        }
        let format = self.format()?;
        let dest = self.work.join(format!("{}.{}", self.stem(), format.extension()));
        let writer = OutputWriter::in_memory_up_to(&dest, format, SMALL_OUTPUT);
        // A scorer reads adjacent parts of a file in a range as one; a
        // mapper runs once per partition.
        let specs: Vec<(u32, PartitionSpec)> = (task.task..).zip(task.inputs().cloned()).collect();
        let specs = match function.kind() {
            Kind::Scorer => coalesce(specs),
            _ => specs,
        };
        let types = crate::plan::column_types(task.schema.as_deref())
            .map_err(|e| DataError::Input { input: task.job.clone(), reason: e.to_string() })?;
        let inputs = specs.iter().map(|(index, spec)| Ok((*index, open_input(*index, spec, &types)?)));
        let mapped = exec::map_range(function, call, inputs, writer, BATCH_ROWS, captured)?;
        let (records_in, gpu_time) = (mapped.records_in, mapped.gpu_time);
        let reduce = task.reduce_partitions as usize;
        if function.kind() == Kind::Aggregator {
            return self.keep_partials(mapped.groups, reduce, records_in);
        }
        if reduce == 0 {
            if !mapped.pairs.is_empty() {
                return Err(Error::Setup(
                    "the mapper emitted key/value pairs, but the job has no reducer (--reduce)".into(),
                ));
            }
            let (file, rows) = match mapped.output {
                Some(w) => self.keep(w)?,
                None => (String::new(), 0),
            };
            return Ok(Written { files: vec![file], rows: vec![rows], records_in, gpu_time });
        }
        // One pair file per reduce partition that gets pairs.
        let mut files = Vec::with_capacity(reduce + 1);
        let mut rows = Vec::with_capacity(reduce + 1);
        for (r, part) in mapped.pairs.split(reduce).into_iter().enumerate() {
            if part.is_empty() {
                files.push(String::new());
                rows.push(0);
                continue;
            }
            // Like the attempt's other files: read only once it has reported.
            let path = self.work.join(self.stem()).join(format!("r{r:05}.pairs"));
            files.push(self.keep_small(&path, &part.encode())?);
            rows.push(part.len() as u64);
        }
        // Rows the mapper wrote itself are published too.
        if let Some(w) = mapped.output
            && w.rows() > 0
        {
            let (file, n) = self.keep(w)?;
            files.push(file);
            rows.push(n);
        }
        Ok(Written { files, rows, records_in, gpu_time })
    }

    /// An aggregator's map output: its partial states, one file per
    /// reduce partition that gets groups.
    fn keep_partials(&mut self, groups: Option<Groups>, reduce: usize, records_in: u64) -> Result<Written> {
        let reduce = reduce.max(1);
        let (mut files, mut rows) = (vec![String::new(); reduce], vec![0; reduce]);
        if let Some(groups) = groups {
            for (r, part) in groups.partials(reduce)?.into_iter().enumerate() {
                if part.num_rows() == 0 {
                    continue;
                }
                let path = self.work.join(self.stem()).join(format!("r{r:05}.partial"));
                files[r] = self.keep_small(&path, &aggregate::encode(&part)?)?;
                rows[r] = part.num_rows() as u64;
            }
        }
        Ok(Written { files, rows, records_in, gpu_time: Duration::ZERO })
    }

    fn reduce(
        &mut self,
        function: &Function,
        call: Call<'_>,
        output: &Place,
        captured: &mut Captured,
    ) -> Result<Written> {
        let aggregator = function.kind() == Kind::Aggregator;
        let mut inputs = Vec::with_capacity(self.task.shuffle.len());
        let mut partials = Vec::new();
        for file in &self.task.shuffle {
            let bytes = read_output(output, file).map_err(|e| Error::Job(e.to_string()))?;
            let undecodable = |what: &str, e: &dyn std::fmt::Display| DataError::Decode {
                path: PathBuf::from(output.join(file).uri()),
                reason: format!("{what}: {e}"),
            };
            if aggregator {
                partials.extend(aggregate::decode(&bytes).map_err(|e| undecodable("partial states", &e))?);
            } else {
                inputs.push(Pairs::decode(&bytes).map_err(|e| undecodable("pair file", &e))?);
            }
        }
        let format = self.format()?;
        let dest = self.work.join(format!("{}.{}", self.stem(), format.extension()));
        // Reduce outputs are few and each published whole.
        let mut writer = OutputWriter::in_memory_up_to(&dest, format, 0);
        let keys = match aggregator {
            true => exec::merge(function, call, &partials, &mut writer, captured)?,
            false => exec::reduce(function, call, &inputs, &mut writer, captured)?,
        };
        let rows = writer.finish()?;
        let files = vec![self.relative(&dest)];
        Ok(Written { files, rows: vec![rows], records_in: keys, gpu_time: Duration::ZERO })
    }

    /// `path` under the work directory, as the attempt reports it.
    fn relative(&self, path: &Path) -> String {
        format!("{}/{}", self.suffix, path.strip_prefix(&self.work).unwrap_or(path).display())
    }

    /// A finished output, appended to a segment when it stayed small.
    fn keep(&mut self, writer: OutputWriter) -> Result<(String, u64)> {
        let dest = writer.dest().to_path_buf();
        let finished = writer.finish_kept()?;
        let kept = match finished.bytes {
            None => self.relative(&dest),
            Some(bytes) => self.keep_small(&dest, &bytes)?,
        };
        Ok((kept, finished.rows))
    }

    /// Where small output `bytes` go: appended to the thread's segment of
    /// the job, or without segments written to `path`. Returns the name the
    /// attempt reports.
    fn keep_small(&mut self, path: &Path, bytes: &[u8]) -> Result<String> {
        let work = &self.work;
        let name = match self.segments.as_deref_mut() {
            Some(segments) => segments
                .append(work, self.task.attempt, bytes)
                .map_err(|e| Error::io("appending to a segment in", work, e))?,
            None => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
                }
                std::fs::write(path, bytes).map_err(|e| Error::io("writing", path, e))?;
                path.strip_prefix(work).unwrap_or(path).display().to_string()
            }
        };
        Ok(format!("{}/{name}", self.suffix))
    }
}

/// Partitions with the ones after them joined where they are adjacent
/// parts of one file (the next byte span or row groups).
fn coalesce(specs: Vec<(u32, PartitionSpec)>) -> Vec<(u32, PartitionSpec)> {
    let mut out: Vec<(u32, PartitionSpec)> = Vec::with_capacity(specs.len());
    for (index, spec) in specs {
        if let Some((_, last)) = out.last_mut()
            && last.path == spec.path
            && last.format == spec.format
        {
            let joined = match (&last.span, &spec.span) {
                (SpanSpec::Bytes { start, end }, SpanSpec::Bytes { start: next, end: next_end }) if end == next => {
                    Some(SpanSpec::Bytes { start: *start, end: *next_end })
                }
                (SpanSpec::RowGroups { first, count }, SpanSpec::RowGroups { first: next, count: more })
                    if first + count == *next =>
                {
                    Some(SpanSpec::RowGroups { first: *first, count: count + more })
                }
                _ => None,
            };
            if let Some(span) = joined {
                last.span = span;
                last.bytes += spec.bytes;
                continue;
            }
        }
        out.push((index, spec));
    }
    out
}

/// A map task's partition, from a local copy of its object.
fn open_input(index: u32, spec: &PartitionSpec, types: &ColumnTypes) -> Result<PartitionReader> {
    let span = match spec.span {
        SpanSpec::Bytes { start, end } => Span::Bytes { start, end },
        SpanSpec::RowGroups { first, count } => Span::RowGroups { first: first as usize, count: count as usize },
    };
    let input = |e: store::StoreError| DataError::Input { input: spec.path.clone(), reason: e.to_string() };
    let place = Place::parse(&spec.path).map_err(input)?;
    let local = store::local_copy(&place).map_err(input)?;
    let format = format_of(&spec.format, || spec.path.clone())?;
    let partition = data::partition(index, local.path(), format, span, spec.bytes, types)?;
    Ok(PartitionReader::open(partition)?)
}

/// The format named `name`; a bad name is an input error about `what`.
fn format_of(name: &str, what: impl FnOnce() -> String) -> Result<Format> {
    name.parse::<Format>().map_err(|reason| DataError::Input { input: what(), reason: reason.to_string() }.into())
}

/// The bytes of an attempt's reported output `file` (a whole file or a
/// segment's range) under `output`.
pub(crate) fn read_output(output: &Place, file: &str) -> std::result::Result<Vec<u8>, store::StoreError> {
    match segments::range_of(file) {
        (_, None) => store::get(&output.join(file)),
        (name, Some(range)) => match output.join(name) {
            Place::Local(path) => segments::read(&path, range).map_err(|e| format!("reading {file}: {e}").into()),
            place => Err(format!("{}: a segment's range, outside a local directory", place.uri()).into()),
        },
    }
}
