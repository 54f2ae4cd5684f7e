//! `wasmgrid run`: a whole job on one machine, no grid.
//!
//! A [`LocalJob`] names a function, its input and an output directory. The
//! input is planned into partitions, which a pool of threads works through:
//! a scorer scores every batch of its partition (output = input rows plus the
//! score columns), a mapper runs once per partition. Pairs emitted by a
//! mapper are grouped by key and fed to the reducer, one reduce partition per
//! thread. An aggregator's tasks fold their partitions into partial states,
//! merged into one output file. Output files appear only when complete (written under a temporary
//! name, then renamed), and `_SUCCESS` lists them last.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use arrow_array::RecordBatch;
use wasmgrid_data::pairs::Pairs;
use wasmgrid_data::{self as data, Format, OutputWriter, Partition, PartitionReader, Span};
use wasmgrid_runtime::{Artifact, Artifacts, Captured, Error, Function, Kind, Limits, Result, Runtime};

use crate::exec::{self, Call, Config};
use crate::plan::part_name;

/// Makes sure `dir` exists and holds no earlier results (or clears them).
fn prepare_output(dir: &std::path::Path, overwrite: bool) -> Result<()> {
    Ok(crate::plan::prepare_output(dir, overwrite)?)
}

/// Everything `wasmgrid run` needs.
#[derive(Debug, Clone)]
pub struct LocalJob {
    /// The scorer or mapper component.
    pub function: PathBuf,
    /// A file, directory or glob.
    pub input: String,
    /// Overrides the format told by the input's extension.
    pub input_format: Option<Format>,
    /// Column types fixed for CSV and JSON-lines input.
    pub types: data::ColumnTypes,
    /// The output directory.
    pub output: PathBuf,
    /// Output format.
    pub output_format: Format,
    /// Replace the output directory's previous results.
    pub overwrite: bool,
    /// The reducer component, for mappers that emit pairs.
    pub reduce: Option<PathBuf>,
    /// Config values the functions see.
    pub config: BTreeMap<String, String>,
    /// Files the function reads by name (`artifacts` interface).
    pub artifacts: BTreeMap<String, PathBuf>,
    /// Worker threads.
    pub threads: usize,
    /// Reduce partitions (output files of the reduce stage).
    pub reduce_partitions: usize,
    /// Limits per invocation.
    pub limits: Limits,
    /// Target partition size in bytes.
    pub partition_size: u64,
    /// Rows per scorer call.
    pub batch_rows: usize,
}

impl LocalJob {
    /// A job with default settings: JSON lines output, one thread per core,
    /// 64 MiB partitions, 4096-row batches.
    pub fn new(function: impl Into<PathBuf>, input: impl Into<String>, output: impl Into<PathBuf>) -> Self {
        LocalJob {
            function: function.into(),
            input: input.into(),
            input_format: None,
            types: data::ColumnTypes::default(),
            output: output.into(),
            output_format: Format::Jsonl,
            overwrite: false,
            reduce: None,
            config: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            reduce_partitions: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: Limits::default(),
            partition_size: 64 << 20,
            batch_rows: 4096,
        }
    }
}

/// Progress callbacks (a terminal progress bar, or nothing).
pub trait Progress: Sync {
    /// A stage starts with `total` units of `unit` ("partitions", "keys").
    fn stage(&self, name: &str, total: u64);
    /// `n` units of the current stage are done.
    fn advance(&self, n: u64);
    /// The job is over.
    fn finish(&self) {}
}

/// A [`Progress`] that shows nothing.
#[derive(Debug)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

/// One output file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutputFile {
    /// File name within the output directory.
    pub name: String,
    /// Rows it holds.
    pub rows: u64,
}

/// Milliseconds per stage of a job.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTimes {
    /// Planning and running every map (or score) task.
    pub map: u64,
    /// Grouping emitted pairs by key and running the reducer over every key.
    pub reduce: u64,
}

/// What a job did. Also written to `_SUCCESS` as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The function's world.
    pub kind: &'static str,
    /// Partitions processed.
    pub partitions: u64,
    /// Input records read.
    pub records_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Distinct keys reduced.
    pub keys: u64,
    /// Output files, in order.
    pub files: Vec<OutputFile>,
    /// Wall-clock milliseconds of each stage.
    pub stage_ms: StageTimes,
    /// Wall time.
    #[serde(skip)]
    pub elapsed: Duration,
}

struct MapResult {
    index: u32,
    file: Option<OutputFile>,
    records_in: u64,
    /// Emitted pairs, already split into the job's reduce partitions.
    pairs: Vec<Pairs>,
    /// An aggregator's partial states.
    partial: Option<RecordBatch>,
}

/// Runs `job` to completion with `runtime`.
pub fn run(runtime: &Runtime, job: &LocalJob, progress: &dyn Progress) -> Result<Summary> {
    let started = Instant::now();
    let loaded = load(runtime, job)?;
    prepare_output(&job.output, job.overwrite)?;

    progress.stage("partitions", loaded.partitions.len() as u64);
    let results = parallel(&loaded.partitions, job.threads, |p| {
        let r = map_partition(&loaded.function, job, &loaded.call(job), p.clone()).map_err(|e| Error::Partition {
            index: p.index,
            path: describe(p),
            source: Box::new(e),
        });
        progress.advance(1);
        r
    })?;

    let mut summary = Summary {
        kind: loaded.function.kind().name(),
        partitions: loaded.partitions.len() as u64,
        records_in: results.iter().map(|r| r.records_in).sum(),
        rows_out: 0,
        keys: 0,
        files: Vec::new(),
        stage_ms: StageTimes::default(),
        elapsed: Duration::ZERO,
    };
    let mut results = results;
    let partials: Vec<RecordBatch> = results.iter_mut().filter_map(|r| r.partial.take()).collect();
    let buckets = shuffle(results, &mut summary, job, loaded.reducer.is_some())?;
    summary.stage_ms.map = started.elapsed().as_millis() as u64;

    if loaded.function.kind() == Kind::Aggregator {
        let merge_started = Instant::now();
        progress.stage("merges", 1);
        let name = part_name("part-r", 0, job.output_format);
        let mut writer = OutputWriter::create(&job.output.join(&name), job.output_format)?;
        let call = loaded.call(job);
        summary.keys = exec::merge(&loaded.function, call, &partials, &mut writer, &mut Captured::default())?;
        // No rows read, no groups: no file, as a grid job.
        if !partials.is_empty() {
            summary.files.push(OutputFile { name, rows: writer.finish()? });
        }
        progress.advance(1);
        summary.stage_ms.reduce = merge_started.elapsed().as_millis() as u64;
    }

    if let Some(reducer) = &loaded.reducer {
        let reduce_started = Instant::now();
        progress.stage("reduce partitions", buckets.len() as u64);
        let tasks: Vec<(usize, Mutex<Vec<Pairs>>)> = buckets.into_iter().map(Mutex::new).enumerate().collect();
        let done = parallel(&tasks, job.threads, |(i, pairs)| {
            let pairs = pairs.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
            let r = reduce_partition(reducer, job, &loaded.call(job), *i, pairs).map_err(|e| Error::Partition {
                index: *i as u32,
                path: format!("reduce partition {i}"),
                source: Box::new(e),
            });
            progress.advance(1);
            r
        })?;
        for (file, keys) in done {
            summary.keys += keys;
            summary.files.extend(file);
        }
        summary.stage_ms.reduce = reduce_started.elapsed().as_millis() as u64;
    }
    progress.finish();

    summary.rows_out = summary.files.iter().map(|f| f.rows).sum();
    summary.elapsed = started.elapsed();
    let manifest = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Runtime(e.to_string()))?;
    let success = job.output.join("_SUCCESS");
    std::fs::write(&success, manifest).map_err(|e| Error::io("writing", &success, e))?;
    Ok(summary)
}

/// A job's functions, loaded, and its input, planned.
struct Loaded {
    function: Arc<Function>,
    reducer: Option<Arc<Function>>,
    partitions: Vec<Partition>,
    config: Config,
    artifacts: Artifacts,
}

impl Loaded {
    /// How `job`'s calls run.
    fn call<'a>(&'a self, job: &'a LocalJob) -> Call<'a> {
        Call { limits: &job.limits, config: &self.config, artifacts: &self.artifacts }
    }
}

/// Reads, checks and loads the job's functions and plans its input, before
/// any guest code runs on data.
fn load(runtime: &Runtime, job: &LocalJob) -> Result<Loaded> {
    // Files and input paths are checked before any guest code runs.
    let function_bytes = runtime.read_file(&job.function)?;
    let reducer_bytes = job.reduce.as_deref().map(|path| runtime.read_file(path)).transpose()?;
    let partitions = data::plan(&job.input, job.input_format, job.partition_size, &job.types)?;
    // `init` runs once here, with the job's config; every partition's
    // instance starts from what it left.
    let config = Arc::new(job.config.clone());
    let artifacts = local_artifacts(&job.artifacts)?;
    let function = runtime.load_version_with(&function_bytes, &config, &artifacts, &job.limits)?;
    let reducer = match (&job.reduce, reducer_bytes) {
        (Some(_), Some(_)) if function.kind() == Kind::Aggregator => {
            return Err(Error::Job(format!(
                "{} is an aggregator: wasmgrid merges its groups itself; run it without --reduce",
                job.function.display()
            )));
        }
        (Some(path), Some(bytes)) => {
            let r = runtime.load_version(&bytes, &config, &job.limits)?;
            if r.kind() != Kind::Reducer {
                return Err(Error::Job(format!(
                    "--reduce {} is {}, not a reducer (it must export `reduce`)",
                    path.display(),
                    wasmgrid_runtime::a(r.kind().name())
                )));
            }
            if function.kind() != Kind::Mapper {
                return Err(Error::Job(format!(
                    "--reduce needs a mapper that emits pairs, but {} is {}",
                    job.function.display(),
                    wasmgrid_runtime::a(function.kind().name())
                )));
            }
            Some(r)
        }
        _ => None,
    };
    if function.kind() == Kind::Reducer {
        return Err(Error::Job(format!(
            "{} is a reducer; run a mapper and pass the reducer with --reduce",
            job.function.display()
        )));
    }
    Ok(Loaded { function, reducer, partitions, config, artifacts })
}

/// Local files as a version's artifacts: each hashed (the hash is part of
/// what makes the version), none read into memory.
fn local_artifacts(files: &BTreeMap<String, PathBuf>) -> Result<Artifacts> {
    let mut artifacts = BTreeMap::new();
    for (name, path) in files {
        let (sha256, _) = wasmgrid_api::hash_file(path).map_err(|e| Error::io("reading the artifact", path, e))?;
        artifacts.insert(name.clone(), Artifact { sha256, path: path.clone() });
    }
    Ok(Arc::new(artifacts))
}

/// Adds the map tasks' files to `summary` and gathers their pairs by
/// reduce partition: `buckets[b]` holds every task's pairs for partition `b`.
fn shuffle(results: Vec<MapResult>, summary: &mut Summary, job: &LocalJob, reducing: bool) -> Result<Vec<Vec<Pairs>>> {
    let mut buckets: Vec<Vec<Pairs>> = (0..job.reduce_partitions.max(1)).map(|_| Vec::new()).collect();
    for r in results {
        summary.files.extend(r.file);
        if r.pairs.iter().any(|b| !b.is_empty()) {
            if !reducing {
                return Err(Error::Setup(format!(
                    "partition {} emitted key/value pairs, but no reducer was given (--reduce)",
                    r.index
                )));
            }
            for (b, pairs) in r.pairs.into_iter().enumerate() {
                buckets[b].push(pairs);
            }
        }
    }
    Ok(buckets)
}

fn describe(p: &Partition) -> String {
    match p.span {
        Span::Bytes { start, end } => format!("{} bytes {start}..{end}", p.path.display()),
        Span::RowGroups { first, count } => {
            format!("{} row groups {first}..{}", p.path.display(), first + count)
        }
    }
}

/// Runs `f` over `items` on up to `threads` threads; stops at the first error.
fn parallel<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    match f(item) {
                        Ok(r) => {
                            if let Ok(mut v) = results.lock() {
                                v[i] = Some(r);
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let results = results.into_inner().map_err(|_| Error::Runtime("a worker thread panicked".into()))?;
    results.into_iter().map(|r| r.ok_or_else(|| Error::Runtime("a task did not run".into()))).collect()
}

fn map_partition(function: &Function, job: &LocalJob, call: &Call<'_>, partition: Partition) -> Result<MapResult> {
    let index = partition.index;
    let name = part_name("part", index as usize, job.output_format);
    let writer = match function.kind() {
        // Writes no rows: no file to make.
        Kind::Aggregator => OutputWriter::in_memory_up_to(&job.output.join(&name), job.output_format, usize::MAX),
        _ => OutputWriter::create(&job.output.join(&name), job.output_format)?,
    };
    let reader = PartitionReader::open(partition)?;
    let call = *call;
    // `wasmgrid run` shows errors, not what the guest logged.
    let mapped = exec::map(function, call, index, reader, writer, job.batch_rows, &mut Captured::default())?;
    let file = match mapped.output {
        // A mapper feeding a reducer usually writes no rows of its own; an
        // aggregator never does.
        Some(w) if w.rows() == 0 && job.reduce.is_some() && function.kind() == Kind::Mapper => None,
        Some(_) if function.kind() == Kind::Aggregator => None,
        Some(w) => Some(OutputFile { name, rows: w.finish()? }),
        None => None,
    };
    let pairs = if mapped.pairs.is_empty() { Vec::new() } else { mapped.pairs.split(job.reduce_partitions.max(1)) };
    let partial = mapped.groups.map(|g| g.partial()).transpose()?;
    Ok(MapResult { index, file, records_in: mapped.records_in, pairs, partial })
}

/// Groups one reduce partition's pairs by key and reduces every key, in
/// sorted key order. Returns the output file and the number of keys.
fn reduce_partition(
    reducer: &Function,
    job: &LocalJob,
    call: &Call<'_>,
    index: usize,
    pairs: Vec<Pairs>,
) -> Result<(Option<OutputFile>, u64)> {
    if pairs.iter().all(Pairs::is_empty) {
        return Ok((None, 0));
    }
    let name = part_name("part-r", index, job.output_format);
    let mut writer = OutputWriter::create(&job.output.join(&name), job.output_format)?;
    let call = *call;
    let keys = exec::reduce(reducer, call, &pairs, &mut writer, &mut Captured::default())?;
    let rows = writer.finish()?;
    Ok((Some(OutputFile { name, rows }), keys))
}
