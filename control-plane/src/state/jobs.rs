//! Batch jobs in the replicated state: what a job is, which attempt won
//! each task, and how task events move a job from stage to stage.
//!
//! A job is one record (`jobs` tree) with its counters; its input plan is
//! stored once beside it (`plans`); a task has a record (`tasks`) only once
//! an attempt failed or won. Which attempts are running is not replicated:
//! it is the leader's business, and a new leader starts every unfinished
//! task again. That is safe because attempts write under their own names
//! and only the first winning attempt of a task is recorded here; the
//! commit publishes exactly the winners.
//!
//! A job of many small partitions is submitted in ranges
//! ([`JobCommand::SubmitRanges`]): its map tasks are leased, run and won
//! `range` at a time, as one attempt over consecutive tasks whose record is
//! the range's first task's. The ranges are fixed at submit, so two
//! winners never overlap; a single task is a range of one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use wasmgrid_api::{JobState, PartitionSpec, Partitions, Stage, TaskFunction, TaskOutcome, TaskReport};

use super::outcome::{Applied, StateError};

/// A job as the state machine keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id (`job-{log index}`).
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// The scorer or mapper.
    pub function: String,
    /// The version that runs.
    pub version: u64,
    /// What runs in the map stage.
    pub map: TaskFunction,
    /// The reducer, its version and what runs in the reduce stage.
    pub reduce: Option<(String, u64, TaskFunction)>,
    /// Input as given.
    pub input: String,
    /// Output directory.
    pub output: String,
    /// Output format.
    pub format: String,
    /// Column types fixed for the input (`name:type,...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Reduce partitions (0 without a reducer).
    pub reduce_partitions: u32,
    /// Attempts per task before the job fails.
    pub max_attempts: u32,
    /// Map tasks.
    pub map_tasks: u32,
    /// Where it is.
    pub state: JobState,
    /// The stage running.
    pub stage: Stage,
    /// Map tasks with a winner.
    pub map_done: u32,
    /// Reduce tasks with a winner.
    pub reduce_done: u32,
    /// Attempts that failed.
    pub failed_attempts: u32,
    /// Input bytes planned.
    pub bytes_in: u64,
    /// Input bytes of the map tasks done.
    pub bytes_done: u64,
    /// Records read by winning map attempts.
    pub records_in: u64,
    /// Rows in winning attempts' output.
    pub rows_out: u64,
    /// Microseconds winning attempts spent in `gpu` calls.
    #[serde(default)]
    pub gpu_us: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was submitted (ms since the epoch, the leader's clock).
    pub submitted_ms: u64,
    /// When it ended.
    pub finished_ms: Option<u64>,
}

#[cfg(test)]
impl JobRecord {
    /// A running job `id` of the default tenant with `map_tasks` map tasks
    /// and no reducer, for tests.
    pub(crate) fn sample(id: &str, map_tasks: u32) -> JobRecord {
        let map = TaskFunction {
            module: "m".repeat(64),
            memory: 1 << 20,
            timeout_ms: 1000,
            config: Default::default(),
            gpu: Default::default(),
            artifacts: Default::default(),
        };
        JobRecord {
            id: id.into(),
            tenant: super::DEFAULT_TENANT.into(),
            function: "f".into(),
            version: 1,
            map,
            reduce: None,
            input: "/in".into(),
            output: "/out".into(),
            format: "jsonl".into(),
            schema: None,
            reduce_partitions: 0,
            max_attempts: 4,
            map_tasks,
            state: JobState::Running,
            stage: Stage::Map,
            map_done: 0,
            reduce_done: 0,
            failed_attempts: 0,
            bytes_in: 0,
            bytes_done: 0,
            records_in: 0,
            rows_out: 0,
            gpu_us: 0,
            error: None,
            submitted_ms: 0,
            finished_ms: None,
        }
    }
}

/// The winning attempt of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Winner {
    /// The attempt.
    pub attempt: u64,
    /// Files it wrote, relative to the output directory.
    pub files: Vec<String>,
    /// Rows in each.
    pub rows: Vec<u64>,
    /// Records it read.
    pub records_in: u64,
}

/// A task that failed at least once or has a winner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Failed attempts.
    pub failures: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The attempt whose output counts.
    pub winner: Option<Winner>,
}

/// A finished attempt as the leader proposes it: the node's report plus
/// the input bytes of the task (from the leader's plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// What the node said.
    pub report: TaskReport,
    /// Input bytes of the task (map tasks).
    pub bytes: u64,
}

/// Job commands, applied inside the state's transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobCommand {
    /// A new job; its id comes from the log index.
    Submit {
        /// The job (id empty, counters zero).
        job: Box<JobRecord>,
        /// Its input partitions, in order.
        partitions: Vec<PartitionSpec>,
    },
    /// Finished attempts.
    Events {
        /// The leader's clock.
        at_ms: u64,
        /// The attempts.
        events: Vec<TaskEvent>,
    },
    /// The commit of a job whose tasks all won is over.
    Finish {
        /// The job.
        id: String,
        /// The leader's clock.
        at_ms: u64,
        /// `None` when published, else why not.
        error: Option<String>,
    },
    /// Stop a job.
    Cancel {
        /// The job.
        id: String,
        /// The leader's clock.
        at_ms: u64,
    },
    /// A new job whose map tasks run `range` at a time: tasks `k * range`
    /// to `(k + 1) * range - 1` are one attempt, reported as task
    /// `k * range`. (Last, so the variants before it keep their numbers in
    /// entries written before the encoding tag.)
    SubmitRanges {
        /// The job (id empty, counters zero).
        job: Box<JobRecord>,
        /// Its input partitions, in order (as runs: compact).
        partitions: Partitions,
        /// Map tasks per range (at least 1).
        range: u32,
    },
}

/// The trees job commands touch.
pub(crate) struct Trees<'a> {
    pub jobs: &'a TransactionalTree,
    pub plans: &'a TransactionalTree,
    pub tasks: &'a TransactionalTree,
}

type Tx<T> = Result<T, ConflictableTransactionError<StateError>>;

fn abort(e: StateError) -> ConflictableTransactionError<StateError> {
    ConflictableTransactionError::Abort(e)
}

fn encode<T: Serialize>(value: &T) -> Tx<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| abort(StateError::Storage(e.to_string())))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Tx<T> {
    serde_json::from_slice(bytes).map_err(|e| abort(StateError::Storage(format!("corrupt job record: {e}"))))
}

/// The key of a task's record: `{job}/{m|r}/{index}`, sorted by index.
pub fn task_key(job: &str, stage: Stage, task: u32) -> Vec<u8> {
    let s = match stage {
        Stage::Map => 'm',
        Stage::Reduce => 'r',
    };
    format!("{job}/{s}/{task:010}").into_bytes()
}

/// The key prefix of a stage's task records.
pub fn stage_prefix(job: &str, stage: Stage) -> Vec<u8> {
    let mut key = task_key(job, stage, 0);
    key.truncate(key.len() - 10);
    key
}

/// Where a job's range size is kept (in the `plans` tree, beside its plan;
/// absent for a job of single tasks).
pub fn range_key(job: &str) -> Vec<u8> {
    format!("{job}/range").into_bytes()
}

/// The range size stored under [`range_key`].
pub fn decode_range(bytes: Option<&[u8]>) -> u32 {
    bytes.and_then(|b| b.try_into().ok()).map_or(1, u32::from_be_bytes).max(1)
}

/// Tasks in the range of `stage` that starts at `first` (map tasks run
/// `range` at a time, reduce tasks one by one); 0 when no range starts
/// there.
pub fn range_len(job: &JobRecord, range: u32, stage: Stage, first: u32) -> u32 {
    let (tasks, range) = match stage {
        Stage::Map => (job.map_tasks, range.max(1)),
        Stage::Reduce => (job.reduce_partitions, 1),
    };
    if first >= tasks || !first.is_multiple_of(range) { 0 } else { range.min(tasks - first) }
}

/// Tasks in a stage.
pub fn stage_tasks(job: &JobRecord, stage: Stage) -> u32 {
    match stage {
        Stage::Map => job.map_tasks,
        Stage::Reduce => job.reduce_partitions,
    }
}

fn done_in(job: &mut JobRecord, stage: Stage) -> &mut u32 {
    match stage {
        Stage::Map => &mut job.map_done,
        Stage::Reduce => &mut job.reduce_done,
    }
}

/// Applies a job command at log `index`.
pub(crate) fn apply(t: &Trees<'_>, index: u64, command: &JobCommand) -> Tx<Result<Applied, StateError>> {
    match command {
        // A plan in ranges is stored as runs, which replicas of earlier
        // releases cannot read: there are none once jobs are submitted in
        // ranges.
        JobCommand::Submit { job, partitions } => submit(t, index, job, partitions, encode(partitions)?, 1),
        JobCommand::SubmitRanges { job, partitions, range } => {
            submit(t, index, job, &partitions.0, encode(partitions)?, *range)
        }
        JobCommand::Events { at_ms, events } => {
            // Each job record (and its range size) is read once and written
            // once per batch.
            let mut jobs: HashMap<String, Option<(JobRecord, u32)>> = HashMap::new();
            let mut won = Vec::with_capacity(events.len());
            for event in events {
                let id = &event.report.job;
                if !jobs.contains_key(id) {
                    let range = decode_range(t.plans.get(range_key(id))?.as_deref());
                    jobs.insert(id.clone(), get_job(t, id)?.map(|job| (job, range)));
                }
                let Some(Some((job, range))) = jobs.get_mut(id) else {
                    won.push(false);
                    continue;
                };
                won.push(apply_event(t, job, *range, *at_ms, event)?);
            }
            for (job, _) in jobs.into_values().flatten() {
                t.jobs.insert(job.id.as_bytes(), encode(&job)?)?;
            }
            Ok(Ok(Applied::TasksRecorded { won }))
        }
        JobCommand::Finish { id, at_ms, error } => {
            let Some(mut job) = get_job(t, id)? else {
                return Ok(Err(StateError::JobNotFound { id: id.clone() }));
            };
            if job.state == JobState::Committing {
                job.state = if error.is_some() { JobState::Failed } else { JobState::Succeeded };
                job.error.clone_from(error);
                job.finished_ms = Some(*at_ms);
                t.jobs.insert(id.as_bytes(), encode(&job)?)?;
            }
            Ok(Ok(Applied::JobState { state: job.state }))
        }
        JobCommand::Cancel { id, at_ms } => {
            let Some(mut job) = get_job(t, id)? else {
                return Ok(Err(StateError::JobNotFound { id: id.clone() }));
            };
            // A job being published finishes publishing.
            if job.state == JobState::Running {
                job.state = JobState::Cancelled;
                job.finished_ms = Some(*at_ms);
                t.jobs.insert(id.as_bytes(), encode(&job)?)?;
            }
            Ok(Ok(Applied::JobState { state: job.state }))
        }
    }
}

/// A new job at log `index`, its map tasks run `range` at a time; `plan`
/// is `partitions` as stored.
fn submit(
    t: &Trees<'_>,
    index: u64,
    job: &JobRecord,
    partitions: &[PartitionSpec],
    plan: Vec<u8>,
    range: u32,
) -> Tx<Result<Applied, StateError>> {
    let mut job = job.clone();
    job.id = format!("job-{index}");
    job.map_tasks = partitions.len() as u32;
    job.bytes_in = partitions.iter().map(|p| p.bytes).sum();
    // No input data (empty files): nothing to run, an empty output
    // to publish, as `wasmgrid run` does.
    job.state = if partitions.is_empty() { JobState::Committing } else { JobState::Running };
    job.stage = Stage::Map;
    t.plans.insert(job.id.as_bytes(), plan)?;
    if range > 1 {
        t.plans.insert(range_key(&job.id), &range.to_be_bytes())?;
    }
    t.jobs.insert(job.id.as_bytes(), encode(&job)?)?;
    Ok(Ok(Applied::JobSubmitted { id: job.id }))
}

fn get_job(t: &Trees<'_>, id: &str) -> Tx<Option<JobRecord>> {
    match t.jobs.get(id.as_bytes())? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

/// Records one finished attempt (at a task, or a range of `range` map
/// tasks) in `job` (written back by the caller); true when it is the
/// winner.
fn apply_event(t: &Trees<'_>, job: &mut JobRecord, range: u32, at_ms: u64, event: &TaskEvent) -> Tx<bool> {
    let report = &event.report;
    let count = range_len(job, range, report.stage, report.task);
    if job.state != JobState::Running || report.stage != job.stage || count == 0 {
        return Ok(false);
    }
    let tasks = wasmgrid_api::tasks_label(report.task, count);
    let key = task_key(&job.id, report.stage, report.task);
    let mut task: TaskRecord = match t.tasks.get(&key)? {
        Some(v) => decode(&v)?,
        None => TaskRecord::default(),
    };
    if task.winner.is_some() {
        return Ok(false);
    }
    let won = match &report.outcome {
        TaskOutcome::Done { files, rows, records_in, gpu_us } => {
            job.gpu_us += gpu_us;
            task.winner = Some(Winner {
                attempt: report.attempt,
                files: files.clone(),
                rows: rows.clone(),
                records_in: *records_in,
            });
            *done_in(job, report.stage) += count;
            if report.stage == Stage::Map {
                job.records_in += records_in;
                job.bytes_done += event.bytes;
            }
            // A map task feeding a reducer writes pairs, not output rows.
            if report.stage == Stage::Reduce || job.reduce_partitions == 0 {
                job.rows_out += rows.iter().sum::<u64>();
            }
            if *done_in(job, report.stage) == stage_tasks(job, report.stage) {
                if report.stage == Stage::Map && job.reduce_partitions > 0 {
                    job.stage = Stage::Reduce;
                } else {
                    job.state = JobState::Committing;
                }
            }
            true
        }
        TaskOutcome::Failed { error } => {
            task.failures += 1;
            task.last_error = Some(error.clone());
            job.failed_attempts += 1;
            if task.failures >= job.max_attempts.max(1) {
                job.state = JobState::Failed;
                job.finished_ms = Some(at_ms);
                job.error = Some(format!(
                    "{} {tasks} failed {} time(s); last error: {error}",
                    report.stage.name(),
                    task.failures
                ));
            }
            false
        }
        TaskOutcome::Unrunnable { error } => {
            task.failures += 1;
            task.last_error = Some(error.clone());
            job.failed_attempts += 1;
            job.state = JobState::Failed;
            job.finished_ms = Some(at_ms);
            job.error = Some(format!("{} {tasks} cannot run: {error}", report.stage.name()));
            false
        }
    };
    t.tasks.insert(key, encode(&task)?)?;
    Ok(won)
}
