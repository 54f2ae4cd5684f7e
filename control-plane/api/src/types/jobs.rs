//! Batch jobs: requests, progress, leases, reports, commits and logs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// `POST /v1/jobs`: run a function over partitioned data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The scorer or mapper (a deployed function; its active version runs
    /// unless `version` says which).
    pub function: String,
    /// The version of `function` to run: a candidate scored offline
    /// before it is promoted, or an earlier one. Default: the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Input: a file, directory or glob the grid can read.
    pub input: String,
    /// Output directory.
    pub output: String,
    /// Input format, when the extension does not tell (csv, jsonl, parquet, text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_format: Option<String>,
    /// Column types of CSV and JSON-lines input, `name:type` pairs
    /// separated by commas (`int`, `float`, `str`, `bool`); other columns'
    /// types are inferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Output format (jsonl, csv, parquet); default jsonl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A deployed reducer for the pairs the mapper emits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<String>,
    /// Reduce partitions (output files of the reduce stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_partitions: Option<u32>,
    /// Target partition size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_size: Option<u64>,
    /// Attempts per task before the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Map tasks leased and run together as one attempt (default: chosen
    /// from the partitions: 1 for large ones, up to 1,024 for tiny ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<u32>,
    /// Time limit of one function call, milliseconds (default: the function's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Replace earlier results in the output directory.
    #[serde(default)]
    pub overwrite: bool,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Tasks are running.
    Running,
    /// Every task has a winning attempt; the output is being published.
    Committing,
    /// The output and its `_SUCCESS` manifest are published.
    Succeeded,
    /// A task failed too often, or the commit failed; nothing was published.
    Failed,
    /// Cancelled; nothing was published.
    Cancelled,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Committing => "committing",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A job's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// One task per input partition: score or map.
    Map,
    /// One task per reduce partition.
    Reduce,
}

impl Stage {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Map => "map",
            Stage::Reduce => "reduce",
        }
    }
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Its id.
    pub id: String,
    /// The function and the version that runs.
    pub function: String,
    /// Its version.
    pub version: u64,
    /// The reducer, if any, and its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<(String, u64)>,
    /// Input as given.
    pub input: String,
    /// Output directory.
    pub output: String,
    /// Column types the job fixed for its input (`--schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Where it is.
    pub state: JobState,
    /// The stage running (the last one, once over).
    pub stage: Stage,
    /// Map tasks (input partitions).
    pub map_tasks: u32,
    /// Map tasks leased together as one attempt (1: each on its own; more
    /// when partitions are small).
    #[serde(default = "one")]
    pub map_range: u32,
    /// Map tasks with a winning attempt.
    pub map_done: u32,
    /// Reduce tasks (0 without a reducer).
    pub reduce_tasks: u32,
    /// Reduce tasks with a winning attempt.
    pub reduce_done: u32,
    /// Attempts running now (known to the leader only; 0 elsewhere).
    pub running: u32,
    /// Attempts that failed (retried or not).
    pub failed_attempts: u32,
    /// Input bytes planned.
    pub bytes_in: u64,
    /// Input bytes of the map tasks done.
    pub bytes_done: u64,
    /// Records read by winning map attempts.
    pub records_in: u64,
    /// Rows in the winning attempts' output.
    pub rows_out: u64,
    /// Milliseconds the winning attempts spent in `gpu` calls.
    #[serde(default)]
    pub gpu_ms: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch, when it was submitted.
    pub submitted_ms: u64,
    /// ... and when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The trace its submit and every attempt's spans are in (hex), when
    /// the grid exports traces: derived from the tenant and the id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobInfo>,
}

/// `POST /v1/tasks/lease`: a node asks for work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The node.
    pub node: String,
    /// Most tasks it takes now.
    pub max: u32,
    /// Longest to wait for one, milliseconds.
    pub wait_ms: u64,
    /// Jobs of the tasks it is running (so it hears of cancellations).
    #[serde(default)]
    pub running_jobs: Vec<String>,
    /// Whether it runs a range of map tasks as one attempt (see
    /// [`TaskAssignment::more_inputs`]); a node of an earlier release does
    /// not say so and gets single tasks only.
    #[serde(default)]
    pub ranges: bool,
}

/// The part of a file a map task reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanSpec {
    /// Records starting in `[start, end)`.
    Bytes {
        /// First byte.
        start: u64,
        /// One past the last byte a record may start at.
        end: u64,
    },
    /// Parquet row groups.
    RowGroups {
        /// First.
        first: u64,
        /// How many.
        count: u64,
    },
}

/// One input partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpec {
    /// The file.
    pub path: String,
    /// Its format.
    pub format: String,
    /// The part of it.
    pub span: SpanSpec,
    /// Approximate bytes.
    pub bytes: u64,
}

/// Input partitions, in order. They travel (as JSON or CBOR) as runs of
/// consecutive partitions of one file, their spans and sizes as columns of
/// numbers: a plan of 10,000 one-line partitions is three numbers per
/// partition, not a path and a span object each. A plain list of
/// partitions (as plans were stored before) reads too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partitions(pub Vec<PartitionSpec>);

impl Partitions {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Consecutive partitions of one file: partition `i` spans `a[i]` to
/// `b[i]` (bytes: start and end; row groups: first and count).
#[derive(Serialize, Deserialize)]
struct PartitionRun {
    path: String,
    format: String,
    #[serde(default)]
    row_groups: bool,
    a: Vec<u64>,
    b: Vec<u64>,
    bytes: Vec<u64>,
}

#[derive(Serialize)]
struct Runs {
    runs: Vec<PartitionRun>,
}

impl Serialize for Partitions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<PartitionRun> = Vec::new();
        for p in &self.0 {
            let (row_groups, a, b) = match p.span {
                SpanSpec::Bytes { start, end } => (false, start, end),
                SpanSpec::RowGroups { first, count } => (true, first, count),
            };
            match runs.last_mut() {
                Some(run) if run.path == p.path && run.format == p.format && run.row_groups == row_groups => {
                    run.a.push(a);
                    run.b.push(b);
                    run.bytes.push(p.bytes);
                }
                _ => runs.push(PartitionRun {
                    path: p.path.clone(),
                    format: p.format.clone(),
                    row_groups,
                    a: vec![a],
                    b: vec![b],
                    bytes: vec![p.bytes],
                }),
            }
        }
        Runs { runs }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Partitions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = Partitions;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("partitions: a list, or runs")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Partitions, A::Error> {
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(p) = seq.next_element()? {
                    list.push(p);
                }
                Ok(Partitions(list))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Partitions, A::Error> {
                let mut runs: Option<Vec<PartitionRun>> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "runs" {
                        runs = Some(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                let runs = runs.ok_or_else(|| A::Error::missing_field("runs"))?;
                let mut list = Vec::with_capacity(runs.iter().map(|r| r.a.len()).sum());
                for run in runs {
                    if run.b.len() != run.a.len() || run.bytes.len() != run.a.len() {
                        return Err(A::Error::custom("a run of partitions whose columns differ in length"));
                    }
                    for ((&a, &b), &bytes) in run.a.iter().zip(&run.b).zip(&run.bytes) {
                        let span = match run.row_groups {
                            false => SpanSpec::Bytes { start: a, end: b },
                            true => SpanSpec::RowGroups { first: a, count: b },
                        };
                        list.push(PartitionSpec { path: run.path.clone(), format: run.format.clone(), span, bytes });
                    }
                }
                Ok(Partitions(list))
            }
        }

        deserializer.deserialize_any(Either)
    }
}

/// A function as a task runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFunction {
    /// Its module's sha256.
    pub module: String,
    /// Memory limit, bytes.
    pub memory: u64,
    /// Time limit of one call, milliseconds.
    pub timeout_ms: u64,
    /// Its config.
    pub config: BTreeMap<String, String>,
    /// Whether it needs a node with a GPU.
    #[serde(default)]
    pub gpu: GpuPlacement,
    /// Artifacts its calls read, by name: their sha256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// One attempt at one task (or a range of map tasks), leased to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The job.
    pub job: String,
    /// The job's tenant.
    #[serde(default)]
    pub tenant: String,
    /// The stage.
    pub stage: Stage,
    /// The task's index within the stage.
    pub task: u32,
    /// This attempt's id (unique across the job's life).
    pub attempt: u64,
    /// What runs.
    pub function: TaskFunction,
    /// A map task's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PartitionSpec>,
    /// A range of map tasks leased as one attempt: the inputs of the tasks
    /// after `task` (`task + 1` on), run in order into one output. Empty for
    /// a single task.
    #[serde(default, skip_serializing_if = "Partitions::is_empty")]
    pub more_inputs: Partitions,
    /// A reduce task's input: the winning map attempts' pair files for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shuffle: Vec<String>,
    /// Where attempts write (the output's `_temporary/{job}`).
    pub work_dir: String,
    /// Why its `gpu` calls are refused (its tenant used its GPU quota).
    #[serde(default)]
    pub gpu_refused: Option<String>,
    /// Output format.
    pub format: String,
    /// Reduce partitions; 0 when the job has no reduce stage.
    pub reduce_partitions: u32,
    /// Column types the job fixes for its input (see [`JobRequest::schema`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// Tasks `first` to `first + count - 1` as messages name them: `task 7`,
/// or `tasks 8-15` for a range.
pub fn tasks_label(first: u32, count: u32) -> String {
    match count {
        0 | 1 => format!("task {first}"),
        n => format!("tasks {first}-{}", first + n - 1),
    }
}

impl TaskAssignment {
    /// Tasks this attempt runs: 1, or a range's length.
    pub fn count(&self) -> u32 {
        1 + self.more_inputs.0.len() as u32
    }

    /// The inputs of the tasks it runs, in order.
    pub fn inputs(&self) -> impl Iterator<Item = &PartitionSpec> {
        self.input.iter().chain(&self.more_inputs.0)
    }
}

/// The answer to a lease request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Tasks to run now.
    pub tasks: Vec<TaskAssignment>,
    /// Jobs among `running_jobs` that are over: stop their tasks.
    #[serde(default)]
    pub stop: Vec<String>,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// It wrote its output under `work_dir`.
    Done {
        /// Files written, relative to the output directory; for a map task
        /// feeding a reducer, the pair file of reduce partition `i` is
        /// `files[i]` (empty string when it has none).
        files: Vec<String>,
        /// Rows in each file.
        rows: Vec<u64>,
        /// Records read.
        records_in: u64,
        /// Microseconds its `gpu` calls took.
        #[serde(default)]
        gpu_us: u64,
    },
    /// It failed.
    Failed {
        /// Why.
        error: String,
    },
    /// It cannot run as the job is set up (a mapper that emits pairs in a
    /// job without a reducer): the job fails at once instead of retrying.
    /// (Last, so log entries written before it was added still decode.)
    Unrunnable {
        /// Why.
        error: String,
    },
}

/// One attempt's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The job.
    pub job: String,
    /// The stage.
    pub stage: Stage,
    /// The task.
    pub task: u32,
    /// The attempt.
    pub attempt: u64,
    /// How it ended.
    pub outcome: TaskOutcome,
}

/// `POST /v1/tasks/report`: a node reports finished attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// The node.
    pub node: String,
    /// Finished attempts.
    pub reports: Vec<TaskReport>,
}

/// A task's winning attempt, as a commit publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task (the first of a range).
    pub task: u32,
    /// Tasks the attempt ran: `task` to `task + count - 1`.
    #[serde(default = "one")]
    pub count: u32,
    /// The attempt.
    pub attempt: u64,
    /// Files it wrote, relative to the output directory.
    pub files: Vec<String>,
    /// Rows in each.
    pub rows: Vec<u64>,
    /// Records it read.
    pub records_in: u64,
}

/// Everything the commit of a job needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCommit {
    /// The job.
    pub id: String,
    /// The function and version that ran.
    pub function: String,
    /// Its version.
    pub version: u64,
    /// The reducer and its version.
    pub reduce: Option<(String, u64)>,
    /// Output directory.
    pub output: String,
    /// Output format.
    pub format: String,
    /// Reduce partitions (0: none).
    pub reduce_partitions: u32,
    /// Winners of the map stage, by task.
    pub map: Vec<TaskResult>,
    /// Winners of the reduce stage, by task.
    pub reduce_results: Vec<TaskResult>,
}

/// One task's failures in `GET /v1/jobs/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLog {
    /// The stage.
    pub stage: Stage,
    /// The task (the first of a range).
    pub task: u32,
    /// Tasks its attempts ran: `task` to `task + count - 1`.
    #[serde(default = "one")]
    pub count: u32,
    /// Failed attempts.
    pub failures: u32,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// Whether an attempt won.
    pub done: bool,
}

/// `GET /v1/jobs/{id}/logs`: every task that failed at least once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogs {
    /// The job.
    pub id: String,
    /// Tasks with failures, by stage and index.
    pub tasks: Vec<TaskLog>,
}

/// What one attempt at a job's task logged, on the node that ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// The stage.
    pub stage: Stage,
    /// The task.
    pub task: u32,
    /// The attempt.
    pub attempt: u64,
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What it logged and wrote, and its error.
    #[serde(flatten)]
    pub output: Excerpt,
}

/// `GET /v1/jobs/{id}/attempts`: what the job's latest attempts logged,
/// gathered by the control plane from every alive node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAttempts {
    /// The job.
    pub id: String,
    /// Oldest first.
    pub attempts: Vec<NodeAttempt>,
    /// Nodes that could not be asked, and why.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// An attempt's log, and the node that ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAttempt {
    /// The node's id.
    pub node: String,
    /// What the attempt logged.
    #[serde(flatten)]
    pub attempt: AttemptLog,
}

/// `GET /v1/jobs/{tenant}/{id}/logs` on a node: the latest attempts of the
/// job on that node that logged something or failed, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLogs {
    /// The tenant.
    pub tenant: String,
    /// The job.
    pub job: String,
    /// The attempts.
    pub attempts: Vec<AttemptLog>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, span: SpanSpec, bytes: u64) -> PartitionSpec {
        PartitionSpec { path: path.into(), format: "jsonl".into(), span, bytes }
    }

    #[test]
    fn partitions_travel_as_runs_and_read_back_the_same_and_as_lists() {
        let mut list: Vec<PartitionSpec> = (0..1000)
            .map(|i| spec("/data/a.jsonl", SpanSpec::Bytes { start: i * 11, end: (i + 1) * 11 }, 11))
            .collect();
        list.push(spec("/data/b.parquet", SpanSpec::RowGroups { first: 0, count: 2 }, 4096));
        list.push(spec("/data/b.parquet", SpanSpec::RowGroups { first: 2, count: 1 }, 100));
        list.push(spec("/data/a.jsonl", SpanSpec::Bytes { start: 0, end: 5 }, 5));
        let partitions = Partitions(list.clone());
        let compact = serde_json::to_string(&partitions).expect("json");
        let back: Partitions = serde_json::from_str(&compact).expect("runs read back");
        assert_eq!(back, partitions);
        assert_eq!(compact.matches("\"path\"").count(), 3, "one path per run: {compact}");
        let plain = serde_json::to_string(&list).expect("json");
        assert!(compact.len() * 4 < plain.len(), "{} bytes as runs, {} as a list", compact.len(), plain.len());
        // A plan stored as a list (before runs) reads as it was.
        let old: Partitions = serde_json::from_str(&plain).expect("a list reads");
        assert_eq!(old.0, list);
        let bad = r#"{"runs": [{"path": "/a", "format": "csv", "a": [0, 1], "b": [1], "bytes": [1, 1]}]}"#;
        let error = serde_json::from_str::<Partitions>(bad).expect_err("columns differ");
        assert!(error.to_string().contains("columns differ in length"), "{error}");
    }
}
