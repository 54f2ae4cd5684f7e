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
use crate::segments::{self, SMALL_OUTPUT, Segments};
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
            let at = local.path().display().to_string();
            // The tenant's URI in the message, never the copy's path here.
            let planned =
                data::plan(&at, input_format, partition_size).map_err(|e| e.to_string().replace(&at, &object.uri()))?;
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
/// setting `cancel` stops it. Small outputs go to the calling thread's
/// `segments` of the job; output in an object store is written to a local
/// scratch directory first and uploaded once complete. What the guest
/// logged goes to `out`, whether the attempt succeeds or not.
pub fn run(
    function: &Function,
    task: &TaskAssignment,
    cancel: Option<Arc<AtomicBool>>,
    out: &mut GuestOutput,
    segments: &mut Segments,
) -> Result<Written> {
    let work_place = Place::parse(&task.work_dir).map_err(Error::Job)?;
    let suffix = format!("_temporary/{}", task.job);
    let output_uri = task.work_dir.strip_suffix(&suffix).unwrap_or(&task.work_dir).trim_end_matches('/').to_string();
    let output = Place::parse(&output_uri).map_err(Error::Job)?;
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
    let written = attempt(function, task, cancel, &work, &output, out, segments);
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
    mut segments: Option<&mut Segments>,
) -> Result<Written> {
    let work = work.to_path_buf();
    let suffix = format!("_temporary/{}", task.job);
    let relative = |p: &Path| format!("{suffix}/{}", p.strip_prefix(&work).unwrap_or(p).display());
    // A finished output, appended to a segment when it stayed small.
    let keep = |writer: OutputWriter, segments: Option<&mut Segments>| -> Result<(String, u64)> {
        let dest = writer.dest().to_path_buf();
        let finished = writer.finish_kept()?;
        let kept = match finished.bytes {
            None => relative(&dest),
            Some(bytes) => {
                keep_small(&work, task.attempt, &dest, &bytes, segments).map(|name| format!("{suffix}/{name}"))?
            }
        };
        Ok((kept, finished.rows))
    };
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
            let partition = data::partition(task.task, local.path(), format_of(spec)?, span, spec.bytes)?;
            let mut reader = PartitionReader::open(partition)?;
            let dest = work.join(format!("{stem}.{}", format.extension()));
            let writer = OutputWriter::in_memory_up_to(&dest, format, SMALL_OUTPUT);
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
                    let (file, rows) = keep(writer, segments.as_deref_mut())?;
                    let (files, records_in, gpu_time) = (vec![file], reader.records(), finished.gpu_time);
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
                        let (file, rows) = match finished.output {
                            Some(w) => keep(w, segments.as_deref_mut())?,
                            None => (String::new(), 0),
                        };
                        return Ok(Written {
                            files: vec![file],
                            rows: vec![rows],
                            records_in: finished.records_read,
                            gpu_time: finished.gpu_time,
                        });
                    }
                    // One pair file per reduce partition that gets pairs.
                    let mut files = Vec::with_capacity(reduce + 1);
                    let mut rows = Vec::with_capacity(reduce + 1);
                    for (r, part) in finished.pairs.split(reduce).into_iter().enumerate() {
                        if part.is_empty() {
                            files.push(String::new());
                            rows.push(0);
                            continue;
                        }
                        // Like the attempt's other files: read only once it has reported.
                        let path = work.join(&stem).join(format!("r{r:05}.pairs"));
                        let name = keep_small(&work, task.attempt, &path, &part.encode(), segments.as_deref_mut())?;
                        files.push(format!("{suffix}/{name}"));
                        rows.push(part.len() as u64);
                    }
                    // Rows the mapper wrote itself are published too.
                    if let Some(w) = finished.output
                        && w.rows() > 0
                    {
                        let (file, n) = keep(w, segments)?;
                        files.push(file);
                        rows.push(n);
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
                let bytes = read_output(output, file).map_err(Error::Job)?;
                let pairs = Pairs::decode(&bytes).map_err(|e| Error::Decode {
                    path: PathBuf::from(output.join(file).uri()),
                    reason: format!("pair file: {e}"),
                })?;
                inputs.push(pairs);
            }
            let groups = crate::pairs::group(&inputs);
            let dest = work.join(format!("{stem}.{}", format.extension()));
            // Reduce outputs are few and each published whole.
            let mut writer = OutputWriter::in_memory_up_to(&dest, format, 0);
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

/// Where small output `bytes` go, relative to `work`: appended to the
/// thread's segment of the job, or without segments written to `path`.
fn keep_small(work: &Path, attempt: u64, path: &Path, bytes: &[u8], segments: Option<&mut Segments>) -> Result<String> {
    match segments {
        Some(segments) => {
            segments.append(work, attempt, bytes).map_err(|e| Error::io("appending to a segment in", work, e))
        }
        None => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
            }
            std::fs::write(path, bytes).map_err(|e| Error::io("writing", path, e))?;
            Ok(path.strip_prefix(work).unwrap_or(path).display().to_string())
        }
    }
}

/// The bytes of an attempt's reported output `file` (a whole file or a
/// segment's range) under `output`.
fn read_output(output: &Place, file: &str) -> std::result::Result<Vec<u8>, String> {
    match segments::range_of(file) {
        (_, None) => store::get(&output.join(file)),
        (name, Some(range)) => match output.join(name) {
            Place::Local(path) => segments::read(&path, range).map_err(|e| format!("reading {file}: {e}")),
            place => Err(format!("{}: a segment's range, outside a local directory", place.uri())),
        },
    }
}

fn format_of(spec: &PartitionSpec) -> Result<Format> {
    format(&spec.format).map_err(|e| Error::Input { input: spec.path.clone(), reason: e })
}

/// One published file in `_SUCCESS`.
#[derive(Debug, Serialize)]
struct ManifestFile {
    name: String,
    /// The first and last partition (map or reduce) whose output it holds.
    partition_range: [u32; 2],
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

/// Largest file the commit makes by joining small map outputs.
const JOINED_FILE: usize = 64 << 20;

/// A published file being made of the small outputs (segment ranges) of
/// consecutive map tasks, in task order: JSON lines, or CSV under one header.
struct Joined {
    name: String,
    dest: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
    /// CSV: the header line every part shares.
    header: Option<Vec<u8>>,
    bytes: usize,
    rows: u64,
    partition_range: [u32; 2],
}

impl Joined {
    fn start(dir: &Path, name: String, task: u32) -> std::result::Result<Joined, String> {
        let (dest, tmp) = (dir.join(&name), dir.join(format!(".{name}.joining")));
        let file = std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        let file = std::io::BufWriter::new(file);
        let partition_range = [task, task];
        Ok(Joined { name, dest, tmp, file, hasher: Sha256::new(), header: None, bytes: 0, rows: 0, partition_range })
    }

    /// Whether `bytes` (an output with this `header`) can go at the end.
    fn takes(&self, header: Option<&[u8]>, bytes: &[u8]) -> bool {
        let same_header = match (header, &self.header) {
            (Some(h), Some(mine)) => h == mine.as_slice(),
            _ => true,
        };
        same_header && self.bytes + bytes.len() <= JOINED_FILE
    }

    fn add(&mut self, task: u32, header: Option<&[u8]>, bytes: &[u8], rows: u64) -> std::result::Result<(), String> {
        let body = match (header, &self.header) {
            (Some(h), Some(_)) => &bytes[h.len()..],
            (Some(h), None) => {
                self.header = Some(h.to_vec());
                bytes
            }
            (None, _) => bytes,
        };
        use std::io::Write;
        self.file.write_all(body).map_err(|e| format!("writing {}: {e}", self.tmp.display()))?;
        self.hasher.update(body);
        self.bytes += body.len();
        self.rows += rows;
        self.partition_range[1] = task;
        Ok(())
    }

    fn close(self) -> std::result::Result<ManifestFile, String> {
        let file = self.file.into_inner().map_err(|e| format!("writing {}: {e}", self.tmp.display()))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| format!("publishing {}: {e}", self.dest.display()))?;
        let sha256 = hex::encode(self.hasher.finalize());
        Ok(ManifestFile { name: self.name, partition_range: self.partition_range, rows: self.rows, sha256 })
    }
}

/// Publishes the winners' outputs under `prefix` (`part`, `part-r`):
/// whole files renamed, small map outputs joined into few files, other
/// segment ranges copied to their own.
struct Publisher<'a> {
    output: &'a Place,
    format: Format,
    files: Vec<ManifestFile>,
    joined: Option<Joined>,
}

impl Publisher<'_> {
    fn publish(&mut self, prefix: &str, task: u32, file: &str, rows: u64) -> std::result::Result<(), String> {
        let name = part_name(prefix, task as usize, self.format);
        let (_, range) = segments::range_of(file);
        let joinable = prefix == "part" && matches!(self.format, Format::Jsonl | Format::Text | Format::Csv);
        let (Some(_), Place::Local(dir)) = (range, self.output) else {
            self.close_joined()?;
            let dest = self.output.join(&name);
            store::publish(&self.output.join(file), &dest)?;
            self.files.push(ManifestFile { sha256: sha256_of(&dest)?, name, partition_range: [task, task], rows });
            return Ok(());
        };
        let bytes = read_output(self.output, file)?;
        if !joinable {
            self.close_joined()?;
            let dest = self.output.join(&name);
            let sha256 = hex::encode(Sha256::digest(&bytes));
            store::put(&dest, bytes)?;
            self.files.push(ManifestFile { sha256, name, partition_range: [task, task], rows });
            return Ok(());
        }
        let header = match self.format {
            Format::Csv => bytes.iter().position(|&b| b == b'\n').map(|end| &bytes[..=end]),
            _ => None,
        };
        if !self.joined.as_ref().is_some_and(|j| j.takes(header, &bytes)) {
            self.close_joined()?;
            self.joined = Some(Joined::start(dir, name, task)?);
        }
        match &mut self.joined {
            Some(j) => j.add(task, header, &bytes, rows),
            None => Ok(()),
        }
    }

    fn close_joined(&mut self) -> std::result::Result<(), String> {
        if let Some(j) = self.joined.take() {
            self.files.push(j.close()?);
        }
        Ok(())
    }
}

/// Publishes a job's winning attempts and writes `_SUCCESS` (idempotent:
/// the winners' files and segments stay until `_SUCCESS` is written).
pub fn commit(c: &JobCommit) -> std::result::Result<(), String> {
    let output = Place::parse(&c.output)?;
    let format = format(&c.format)?;
    let success = output.join("_SUCCESS");
    if store::exists(&success)? {
        return Ok(());
    }
    let reduce = c.reduce_partitions as usize;
    let mut attempts = BTreeMap::new();
    let mut publisher = Publisher { output: &output, format, files: Vec::new(), joined: None };
    for w in &c.map {
        attempts.insert(format!("map/{}", w.task), format!("{:x}", w.attempt));
        // With a reducer, the first `reduce` files are pairs (not published).
        for (file, rows) in w.files.iter().zip(&w.rows).skip(if reduce > 0 { reduce } else { 0 }) {
            if !file.is_empty() {
                publisher.publish("part", w.task, file, *rows)?;
            }
        }
    }
    publisher.close_joined()?;
    for w in &c.reduce_results {
        attempts.insert(format!("reduce/{}", w.task), format!("{:x}", w.attempt));
        for (file, rows) in w.files.iter().zip(&w.rows) {
            // A reduce partition without keys publishes nothing.
            if *rows > 0 || w.records_in > 0 {
                publisher.publish("part-r", w.task, file, *rows)?;
            }
        }
    }
    let files = publisher.files;
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

#[cfg(test)]
mod tests {
    use wasmgrid_api::TaskResult;

    use super::*;

    #[test]
    fn small_csv_outputs_are_joined_under_one_header_and_losers_never_appear() {
        let dir = tempfile::tempdir().expect("dir");
        let out = dir.path().join("out");
        let work = out.join("_temporary/job-7");
        std::fs::create_dir_all(&work).expect("work");
        let mut segments = Segments::default();
        let mut append = |attempt, bytes: &str| {
            format!("_temporary/job-7/{}", segments.append(&work, attempt, bytes.as_bytes()).expect("append"))
        };
        let a = append(1, "x,score\n1,0.5\n");
        let loser = append(2, "x,score\n9,9.9\n");
        let b = append(3, "x,score\n2,0.6\n3,0.7\n");
        let other_header = append(4, "y\n4\n");
        std::fs::write(work.join("m00004-5.csv"), "x,score\n5,0.8\n").expect("whole file");
        let won = |task, attempt, file: &str, rows| TaskResult {
            task,
            attempt,
            files: vec![file.to_string()],
            rows: vec![rows],
            records_in: rows,
        };
        let commit = JobCommit {
            id: "job-7".into(),
            function: "score".into(),
            version: 1,
            reduce: None,
            output: out.display().to_string(),
            format: "csv".into(),
            reduce_partitions: 0,
            map: vec![
                won(0, 1, &a, 1),
                won(1, 3, &b, 2),
                won(2, 4, &other_header, 1),
                won(4, 5, "_temporary/job-7/m00004-5.csv", 1),
            ],
            reduce_results: Vec::new(),
        };
        commit_twice(&commit);
        assert!(!loser.is_empty());
        let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
        assert_eq!(read("part-00000.csv"), "x,score\n1,0.5\n2,0.6\n3,0.7\n", "tasks 0 and 1, one header");
        assert_eq!(read("part-00002.csv"), "y\n4\n", "another header starts another file");
        assert_eq!(read("part-00004.csv"), "x,score\n5,0.8\n", "a whole file is renamed");
        let manifest: serde_json::Value = serde_json::from_str(&read("_SUCCESS")).expect("manifest");
        let files = manifest["files"].as_array().expect("files");
        let ranges: Vec<_> =
            files.iter().map(|f| (f["name"].clone(), f["partition_range"].clone(), f["rows"].clone())).collect();
        assert_eq!(
            ranges,
            [
                (json("part-00000.csv"), serde_json::json!([0, 1]), serde_json::json!(3)),
                (json("part-00002.csv"), serde_json::json!([2, 2]), serde_json::json!(1)),
                (json("part-00004.csv"), serde_json::json!([4, 4]), serde_json::json!(1)),
            ]
        );
        let sha = hex::encode(Sha256::digest(read("part-00000.csv")));
        assert_eq!(files[0]["sha256"], sha.as_str());
        assert!(!out.join("_temporary").exists(), "segments are removed once published");
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::Value::String(s.into())
    }

    /// Commits, and commits again as a new leader would: the same output.
    fn commit_twice(c: &JobCommit) {
        commit(c).expect("commit");
        commit(c).expect("commit again");
    }
}
