//! Batch jobs on the grid, the data side: planning a job's input, running
//! one task attempt, and publishing (or discarding) a job's output.
//!
//! Every attempt writes under the job's work directory
//! (`OUTPUT/_temporary/JOB`) with the attempt id in its names, so attempts
//! never overwrite each other. The control plane records one winning
//! attempt per task; [`commit`] renames exactly the winners to their final
//! names (`part-NNNNN`, `part-r-NNNNN`) and writes `_SUCCESS` last. Every
//! step of the commit can run again after an interruption: a rename whose
//! source is gone and whose destination exists was already done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmgrid_api::{JobCommit, JobRequest, PartitionSpec, SpanSpec, Stage, TaskAssignment, TaskOutcome};

use crate::data::{self, Format, OutputWriter, PartitionReader, Span};
use crate::local::{part_name, prepare_output};
use crate::logs::Kept;
use crate::pairs::Pairs;
use crate::runtime::{Finished, Function, Instance, Io, Kind, Limits, Logs};
use crate::store::{self, Place};
use crate::{Error, Result};

fn format(name: &str) -> std::result::Result<Format, String> {
    name.parse::<Format>().map_err(|e| e.to_string())
}

/// Splits a job's input into partitions and prepares its output directory.
pub fn plan(request: &JobRequest, partition_size: u64) -> std::result::Result<Vec<PartitionSpec>, String> {
    let input_format = request.input_format.as_deref().map(format).transpose()?;
    if let Some(f) = &request.format {
        format(f)?;
    }
    let output = Place::parse(&request.output)?;
    let input = Place::parse(&request.input)?;
    // (partition, the URI nodes read it from)
    let mut partitions = Vec::new();
    if input.is_remote() {
        for object in store::list_inputs(&input)? {
            let local = store::local_copy(&object)?;
            let planned = data::plan(&local.display().to_string(), input_format, partition_size)
                .map_err(|e| format!("{}: {e}", object.uri()))?;
            partitions.extend(planned.into_iter().map(|p| (p, Some(object.uri()))));
        }
    } else {
        let planned = data::plan(&request.input, input_format, partition_size).map_err(|e| e.to_string())?;
        partitions.extend(planned.into_iter().map(|p| (p, None)));
    }
    match &output {
        Place::Local(dir) => {
            if !dir.is_absolute() {
                return Err(format!("the output `{}` must be an absolute path", request.output));
            }
            prepare_output(dir, request.overwrite).map_err(|e| e.to_string())?;
        }
        Place::S3 { .. } => {
            for name in store::names(&output)? {
                if !(name.starts_with("part-") || name == "_SUCCESS") {
                    continue;
                }
                if !request.overwrite {
                    return Err(format!(
                        "output {} already holds results ({name}); pass --overwrite to replace them",
                        output.uri()
                    ));
                }
                store::remove(&output.join(&name))?;
            }
        }
        Place::Http(u) => return Err(format!("the output cannot be a URL ({u}); use a path or s3://")),
    }
    partitions
        .into_iter()
        .map(|(p, remote)| {
            let path = match remote {
                Some(uri) => uri,
                None => std::path::absolute(&p.path)
                    .map_err(|e| format!("{}: {e}", p.path.display()))?
                    .display()
                    .to_string(),
            };
            let span = match p.span {
                Span::Bytes { start, end } => SpanSpec::Bytes { start, end },
                Span::RowGroups { first, count } => SpanSpec::RowGroups { first: first as u64, count: count as u64 },
            };
            Ok(PartitionSpec { path, format: p.format.name().into(), span, bytes: p.bytes })
        })
        .collect()
}

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

/// What an attempt's guest logged and wrote to stdout and stderr.
#[derive(Debug, Default)]
pub struct GuestOutput {
    logs: Logs,
    stdout: String,
    stderr: String,
}

impl GuestOutput {
    /// What is kept of it, with the attempt's error.
    pub fn kept(self, error: Option<&Error>) -> Option<Kept> {
        Kept::of(&self.logs, &self.stdout, &self.stderr, error.map(ToString::to_string))
    }
}

/// Runs `body` with `instance`, then keeps the guest's output in `out`
/// whether or not `body` failed.
fn observed<T>(
    mut instance: Instance,
    out: &mut GuestOutput,
    body: impl FnOnce(&mut Instance) -> Result<T>,
) -> Result<(T, Finished)> {
    let result = body(&mut instance);
    let mut finished = instance.finish();
    out.logs = std::mem::take(&mut finished.logs);
    out.stdout = std::mem::take(&mut finished.stdout);
    out.stderr = std::mem::take(&mut finished.stderr);
    result.map(|t| (t, finished))
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
/// setting `cancel` stops it. Output in an object store is written to a
/// local scratch directory first and uploaded once complete. What the guest
/// logged goes to `out`, whether the attempt succeeds or not.
pub fn run(
    function: &Function,
    task: &TaskAssignment,
    cancel: Option<Arc<AtomicBool>>,
    out: &mut GuestOutput,
) -> Result<Written> {
    let work_place = Place::parse(&task.work_dir).map_err(Error::Job)?;
    let suffix = format!("_temporary/{}", task.job);
    let output_uri = task.work_dir.strip_suffix(&suffix).unwrap_or(&task.work_dir).trim_end_matches('/').to_string();
    let output = Place::parse(&output_uri).map_err(Error::Job)?;
    let work = match &work_place {
        Place::Local(p) => p.clone(),
        _ => std::env::temp_dir().join("wasmgrid-attempts").join(&task.job).join(format!("{:x}", task.attempt)),
    };
    std::fs::create_dir_all(&work).map_err(|e| Error::io("creating", &work, e))?;
    let written = attempt(function, task, cancel, &work, &output, out);
    if work_place.is_remote() {
        let uploaded = written.and_then(|w| {
            for file in w.files.iter().filter(|f| !f.is_empty()) {
                let local = work.join(file.strip_prefix(&format!("{suffix}/")).unwrap_or(file));
                store::upload(&local, &output.join(file)).map_err(Error::Job)?;
            }
            Ok(w)
        });
        let _ = std::fs::remove_dir_all(&work);
        return uploaded;
    }
    written
}

fn attempt(
    function: &Function,
    task: &TaskAssignment,
    cancel: Option<Arc<AtomicBool>>,
    work: &Path,
    output: &Place,
    out: &mut GuestOutput,
) -> Result<Written> {
    let work = work.to_path_buf();
    let suffix = format!("_temporary/{}", task.job);
    let relative = |p: &Path| format!("{suffix}/{}", p.strip_prefix(&work).unwrap_or(p).display());
    let format = format(&task.format).map_err(Error::Job)?;
    let config = Arc::new(task.function.config.clone());
    let limits = limits(task, cancel);
    let stem = match task.stage {
        Stage::Map => format!("m{:05}-{:x}", task.task, task.attempt),
        Stage::Reduce => format!("r{:05}-{:x}", task.task, task.attempt),
    };
    match task.stage {
        Stage::Map => {
            let spec = task.input.as_ref().ok_or_else(|| Error::Job("a map task without input".into()))?;
            let span = match spec.span {
                SpanSpec::Bytes { start, end } => Span::Bytes { start, end },
                SpanSpec::RowGroups { first, count } => {
                    Span::RowGroups { first: first as usize, count: count as usize }
                }
            };
            let place = Place::parse(&spec.path).map_err(|e| Error::Input { input: spec.path.clone(), reason: e })?;
            let local = store::local_copy(&place).map_err(|e| Error::Input { input: spec.path.clone(), reason: e })?;
            let partition = data::partition(task.task, &local, format_of(spec)?, span, spec.bytes)?;
            let mut reader = PartitionReader::open(partition)?;
            let dest = work.join(format!("{stem}.{}", format.extension()));
            let writer = OutputWriter::create_in_place(&dest, format)?;
            match function.kind() {
                Kind::Scorer => {
                    let mut writer = writer;
                    let instance = function.instantiate(&limits, config, Io::default())?;
                    let ((), finished) = observed(instance, out, |instance| {
                        while let Some(batch) = reader.next_batch(4096)? {
                            writer.write_batch(&instance.score_arrow(&batch)?)?;
                        }
                        Ok(())
                    })?;
                    let rows = writer.finish()?;
                    let (files, records_in, gpu_time) = (vec![relative(&dest)], reader.records(), finished.gpu_time);
                    Ok(Written { files, rows: vec![rows], records_in, gpu_time })
                }
                Kind::Mapper => {
                    let io = Io { input: Some(reader), output: Some(writer) };
                    let instance = function.instantiate(&limits, config, io)?;
                    let ((), finished) = observed(instance, out, |instance| instance.run(task.task))?;
                    let reduce = task.reduce_partitions as usize;
                    if reduce == 0 {
                        if !finished.pairs.is_empty() {
                            return Err(Error::Job(
                                "the mapper emitted key/value pairs, but the job has no reducer (--reduce)".into(),
                            ));
                        }
                        let rows = match finished.output {
                            Some(w) => w.finish()?,
                            None => 0,
                        };
                        return Ok(Written {
                            files: vec![relative(&dest)],
                            rows: vec![rows],
                            records_in: finished.records_read,
                            gpu_time: finished.gpu_time,
                        });
                    }
                    // One pair file per reduce partition that gets pairs.
                    let mut files = Vec::with_capacity(reduce + 1);
                    let mut rows = Vec::with_capacity(reduce + 1);
                    let dir = work.join(&stem);
                    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
                    for (r, part) in finished.pairs.split(reduce).into_iter().enumerate() {
                        if part.is_empty() {
                            files.push(String::new());
                            rows.push(0);
                            continue;
                        }
                        let path = dir.join(format!("r{r:05}.pairs"));
                        // Like the attempt's other files: read only once it has reported.
                        std::fs::write(&path, part.encode()).map_err(|e| Error::io("writing", &path, e))?;
                        files.push(relative(&path));
                        rows.push(part.len() as u64);
                    }
                    // Rows the mapper wrote itself are published too.
                    if let Some(w) = finished.output
                        && w.rows() > 0
                    {
                        rows.push(w.finish()?);
                        files.push(relative(&dest));
                    }
                    Ok(Written { files, rows, records_in: finished.records_read, gpu_time: finished.gpu_time })
                }
                kind => Err(Error::WrongKind { expected: "scorer or mapper", actual: kind.name() }),
            }
        }
        Stage::Reduce => {
            if function.kind() != Kind::Reducer {
                return Err(Error::WrongKind { expected: "reducer", actual: function.kind().name() });
            }
            let mut inputs = Vec::with_capacity(task.shuffle.len());
            for file in &task.shuffle {
                let place = output.join(file);
                let bytes = store::get(&place).map_err(Error::Job)?;
                let pairs = Pairs::decode(&bytes).map_err(|e| Error::Decode {
                    path: PathBuf::from(place.uri()),
                    reason: format!("pair file: {e}"),
                })?;
                inputs.push(pairs);
            }
            let groups = crate::pairs::group(&inputs);
            let dest = work.join(format!("{stem}.{}", format.extension()));
            let mut writer = OutputWriter::create_in_place(&dest, format)?;
            let instance = function.instantiate(&limits, config, Io::default())?;
            observed(instance, out, |instance| {
                for (key, values) in &groups {
                    writer.write_record(&instance.reduce(key, values)?)?;
                }
                Ok(())
            })?;
            let rows = writer.finish()?;
            let (files, records_in) = (vec![relative(&dest)], groups.len() as u64);
            Ok(Written { files, rows: vec![rows], records_in, gpu_time: Duration::ZERO })
        }
    }
}

fn format_of(spec: &PartitionSpec) -> Result<Format> {
    format(&spec.format).map_err(|e| Error::Input { input: spec.path.clone(), reason: e })
}

/// One published file in `_SUCCESS`.
#[derive(Debug, Serialize)]
struct ManifestFile {
    name: String,
    rows: u64,
    sha256: String,
}

/// `_SUCCESS` of a grid job.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    job: &'a str,
    function: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reduce: Option<&'a (String, u64)>,
    partitions: usize,
    reduce_partitions: u32,
    records_in: u64,
    rows_out: u64,
    files: Vec<ManifestFile>,
    /// The attempt that won each task, by stage and task.
    attempts: BTreeMap<String, String>,
}

fn sha256_of(place: &Place) -> std::result::Result<String, String> {
    if let Place::Local(path) = place {
        let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(hex::encode(hasher.finalize()));
    }
    Ok(hex::encode(Sha256::digest(store::get(place)?)))
}

/// Publishes a job's winning attempts and writes `_SUCCESS` (idempotent).
pub fn commit(c: &JobCommit) -> std::result::Result<(), String> {
    let output = Place::parse(&c.output)?;
    let format = format(&c.format)?;
    let success = output.join("_SUCCESS");
    if store::exists(&success)? {
        return Ok(());
    }
    let reduce = c.reduce_partitions as usize;
    let mut moves: Vec<(String, String, u64)> = Vec::new();
    let mut attempts = BTreeMap::new();
    for w in &c.map {
        attempts.insert(format!("map/{}", w.task), format!("{:x}", w.attempt));
        // With a reducer, the first `reduce` files are pairs (not published).
        for (file, rows) in w.files.iter().zip(&w.rows).skip(if reduce > 0 { reduce } else { 0 }) {
            if !file.is_empty() {
                moves.push((file.clone(), part_name("part", w.task as usize, format), *rows));
            }
        }
    }
    for w in &c.reduce_results {
        attempts.insert(format!("reduce/{}", w.task), format!("{:x}", w.attempt));
        for (file, rows) in w.files.iter().zip(&w.rows) {
            // A reduce partition without keys publishes nothing.
            if *rows > 0 || w.records_in > 0 {
                moves.push((file.clone(), part_name("part-r", w.task as usize, format), *rows));
            }
        }
    }
    let mut files = Vec::with_capacity(moves.len());
    for (from, to, rows) in moves {
        let dest = output.join(&to);
        store::publish(&output.join(&from), &dest)?;
        files.push(ManifestFile { sha256: sha256_of(&dest)?, name: to, rows });
    }
    let manifest = Manifest {
        job: &c.id,
        function: &c.function,
        version: c.version,
        reduce: c.reduce.as_ref(),
        partitions: c.map.len(),
        reduce_partitions: c.reduce_partitions,
        records_in: c.map.iter().map(|w| w.records_in).sum(),
        rows_out: files.iter().map(|f| f.rows).sum(),
        files,
        attempts,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    store::put(&success, bytes)?;
    abort(&c.output, &c.id);
    Ok(())
}

/// Removes a job's work directory (losing attempts and pair files).
pub fn abort(output: &str, job: &str) {
    let Ok(output) = Place::parse(output) else { return };
    store::remove_all(&output.join(&format!("_temporary/{job}")));
    if let Place::Local(dir) = &output {
        // Only if no other job is using it.
        let _ = std::fs::remove_dir(dir.join("_temporary"));
    }
}
