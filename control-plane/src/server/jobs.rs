//! Batch jobs: the `/v1/jobs` API, and the leader's scheduler that leases
//! tasks to nodes, retries them, starts speculative copies of stragglers and
//! publishes a job once every task has a winner.
//!
//! What is replicated (through [`JobCommand`]s) is the job, its plan, each
//! task's failures and its one winning attempt. What runs where is the
//! leader's memory only ([`Scheduler`]): a new leader rebuilds it from the
//! state and starts every unfinished task again. Reports from attempts it
//! never leased are still recorded (first winner wins), so an attempt that
//! outlives a failover is not wasted, and a duplicate is never published.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use wasmgrid_api::*;

use super::{Answer, App, Caller, Failure, NODE_LIVENESS, json, json_body, poisoned};
use crate::job_state::{JobCommand, JobRecord, TaskEvent, Winner, stage_tasks};
use crate::state::{Applied, Command, StateError};

/// Longest a lease request waits for a task.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(2);
/// Most tasks one lease hands out.
const MAX_LEASE: u32 = 256;
/// Default attempts per task.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// Default partition size.
pub const DEFAULT_PARTITION_SIZE: u64 = 64 << 20;
/// Most reduce partitions a job may ask for.
const MAX_REDUCE_PARTITIONS: u32 = 4096;
/// A running attempt this much slower than the stage's median gets a
/// speculative copy (and never before `MIN_STRAGGLER`).
const STRAGGLER_FACTOR: u32 = 3;
const MIN_STRAGGLER: Duration = Duration::from_secs(2);

/// Reads and publishes job data: the control plane plans inputs and commits
/// outputs through it, and never parses data itself.
pub trait JobIo: Send + Sync + fmt::Debug {
    /// Plans the input into partitions and prepares the output directory
    /// (refusing earlier results unless `overwrite`).
    fn plan(&self, request: &JobRequest) -> Result<Vec<PartitionSpec>, String>;
    /// Publishes the winners of a job whose tasks all won: renames them to
    /// their final names and writes `_SUCCESS`. Must be idempotent: a
    /// commit cut short by a failover is run again.
    fn commit(&self, commit: &JobCommit) -> Result<(), String>;
    /// Removes what the attempts of a failed or cancelled job left behind
    /// in `output`.
    fn abort(&self, output: &str, job: &str);
}

/// One leased attempt.
#[derive(Debug, Clone)]
struct Attempt {
    attempt: u64,
    node: String,
    started: Instant,
}

/// A job the leader is running.
#[derive(Debug)]
struct Run {
    record: JobRecord,
    plan: Arc<Vec<PartitionSpec>>,
    stage: Stage,
    pending: VecDeque<u32>,
    running: BTreeMap<u32, Vec<Attempt>>,
    done: HashSet<u32>,
    /// Durations of the stage's winning attempts this leader saw.
    durations: Vec<Duration>,
    /// For a reduce stage: the pair files of each reduce partition.
    shuffle: Vec<Vec<String>>,
}

/// The leader's view of running jobs.
#[derive(Debug, Default)]
pub(super) struct Scheduler {
    /// The term it was built in: a new term rebuilds it from the state.
    term: u64,
    runs: BTreeMap<String, Run>,
    next_attempt: u64,
    /// Jobs being committed or cleaned up by this leader.
    finishing: HashSet<String>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Run {
    /// The run of `record`'s current stage, from the replicated state.
    fn load(state: &crate::State, record: JobRecord) -> Result<Run, StateError> {
        let plan = Arc::new(state.plan(&record.id)?);
        let stage = record.stage;
        let records = state.task_records(&record.id, stage)?;
        let done: HashSet<u32> = records.iter().filter(|(_, r)| r.winner.is_some()).map(|(i, _)| *i).collect();
        let pending = (0..stage_tasks(&record, stage)).filter(|i| !done.contains(i)).collect();
        let shuffle = if stage == Stage::Reduce {
            let mut shuffle = vec![Vec::new(); record.reduce_partitions as usize];
            for (_, task) in state.task_records(&record.id, Stage::Map)? {
                let Some(w) = task.winner else { continue };
                for (r, file) in w.files.iter().enumerate().take(shuffle.len()) {
                    if !file.is_empty() {
                        shuffle[r].push(file.clone());
                    }
                }
            }
            shuffle
        } else {
            Vec::new()
        };
        Ok(Run { record, plan, stage, pending, running: BTreeMap::new(), done, durations: Vec::new(), shuffle })
    }

    fn median(&self) -> Option<Duration> {
        let mut d = self.durations.clone();
        d.sort();
        d.get(d.len() / 2).copied()
    }

    /// A running task old enough for a speculative copy on `node`.
    /// The function the current stage runs.
    fn function(&self) -> &TaskFunction {
        match self.stage {
            Stage::Map => &self.record.map,
            Stage::Reduce => self.record.reduce.as_ref().map_or(&self.record.map, |(_, _, f)| f),
        }
    }

    fn straggler(&self, node: &str) -> Option<u32> {
        let median = self.median()?;
        let limit = (median * STRAGGLER_FACTOR).max(MIN_STRAGGLER);
        self.running
            .iter()
            .filter(|(task, a)| {
                a.len() == 1 && a[0].node != node && a[0].started.elapsed() > limit && !self.done.contains(task)
            })
            .min_by_key(|(_, a)| a[0].started)
            .map(|(&task, _)| task)
    }

    fn assignment(&self, task: u32, attempt: u64) -> TaskAssignment {
        let (function, input, shuffle) = match self.stage {
            Stage::Map => (self.record.map.clone(), self.plan.get(task as usize).cloned(), Vec::new()),
            Stage::Reduce => {
                let f =
                    self.record.reduce.as_ref().map(|(_, _, f)| f.clone()).unwrap_or_else(|| self.record.map.clone());
                (f, None, self.shuffle.get(task as usize).cloned().unwrap_or_default())
            }
        };
        TaskAssignment {
            job: self.record.id.clone(),
            tenant: self.record.tenant.clone(),
            stage: self.stage,
            task,
            attempt,
            function,
            input,
            shuffle,
            work_dir: format!("{}/_temporary/{}", self.record.output.trim_end_matches('/'), self.record.id),
            gpu_refused: None,
            format: self.record.format.clone(),
            reduce_partitions: self.record.reduce_partitions,
        }
    }
}

impl Scheduler {
    /// Starts over from the state (a new leader, or the first request).
    fn rebuild(&mut self, state: &crate::State, term: u64) -> Result<(), StateError> {
        self.runs.clear();
        self.finishing.clear();
        self.term = term;
        self.next_attempt = 0;
        for record in state.active_jobs()? {
            if record.state == JobState::Running {
                let id = record.id.clone();
                self.runs.insert(id, Run::load(state, record)?);
            }
        }
        Ok(())
    }

    /// An attempt id no other leader hands out: the term in the high bits.
    fn attempt_id(&mut self) -> u64 {
        self.next_attempt += 1;
        (self.term << 32) | (self.next_attempt & 0xffff_ffff)
    }

    /// Up to `max` tasks for `node`: pending ones first, then speculative
    /// copies. Each task goes to the tenant with the fewest attempts running
    /// on the grid (so one tenant's 10,000-task job does not hold every slot
    /// while another's job waits), never past a tenant's `slots` quota;
    /// within a tenant, jobs whose function the node has compiled first.
    fn take(
        &mut self,
        node: &str,
        max: u32,
        warm: &HashSet<String>,
        gpu: bool,
        slots: &HashMap<String, u64>,
    ) -> Vec<TaskAssignment> {
        let mut ids: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, run)| gpu || run.function().gpu != GpuPlacement::Required)
            .map(|(id, _)| id.clone())
            .collect();
        // Jobs that prefer a GPU last on a node without one; then those the
        // node holds compiled; then oldest first.
        ids.sort_by_key(|id| {
            let run = &self.runs[id];
            let f = run.function();
            (
                !gpu && f.gpu == GpuPlacement::Preferred,
                !warm.contains(&f.module),
                run.record.id.trim_start_matches("job-").parse::<u64>().unwrap_or(0),
            )
        });
        let mut running: HashMap<String, u64> = HashMap::new();
        for run in self.runs.values() {
            *running.entry(run.record.tenant.clone()).or_default() +=
                run.running.values().map(|a| a.len() as u64).sum::<u64>();
        }
        let full = |running: &HashMap<String, u64>, tenant: &str| {
            slots.get(tenant).is_some_and(|&limit| running.get(tenant).copied().unwrap_or(0) >= limit)
        };
        let mut out = Vec::new();
        while (out.len() as u32) < max {
            // The first job, in the order above, of the tenant running fewest.
            let mut pick: Option<(u64, &String)> = None;
            for id in &ids {
                let Some(run) = self.runs.get_mut(id) else { continue };
                // A queued task may have been won meanwhile (a slow attempt
                // that was given up on reported after all).
                while run.pending.front().is_some_and(|t| run.done.contains(t)) {
                    run.pending.pop_front();
                }
                let tenant = &run.record.tenant;
                if run.pending.is_empty() || full(&running, tenant) {
                    continue;
                }
                let now = running.get(tenant).copied().unwrap_or(0);
                if pick.is_none_or(|(least, _)| now < least) {
                    pick = Some((now, id));
                }
            }
            let Some((_, id)) = pick else { break };
            let attempt = self.attempt_id();
            let Some(run) = self.runs.get_mut(id) else { break };
            let Some(task) = run.pending.pop_front() else { break };
            run.running.entry(task).or_default().push(Attempt {
                attempt,
                node: node.to_string(),
                started: Instant::now(),
            });
            *running.entry(run.record.tenant.clone()).or_default() += 1;
            out.push(run.assignment(task, attempt));
        }
        if out.is_empty() {
            for id in &ids {
                let attempt = self.attempt_id();
                let Some(run) = self.runs.get_mut(id) else { continue };
                if full(&running, &run.record.tenant) {
                    continue;
                }
                if let Some(task) = run.straggler(node) {
                    tracing::info!(job = %id, task, node, "speculative copy of a straggler");
                    run.running.entry(task).or_default().push(Attempt {
                        attempt,
                        node: node.to_string(),
                        started: Instant::now(),
                    });
                    out.push(run.assignment(task, attempt));
                    break;
                }
            }
        }
        out
    }

    /// Attempts on nodes that stopped heart-beating are given up, their
    /// tasks queued again. Returns how many tasks were queued again.
    fn requeue_lost(&mut self, alive: &dyn Fn(&str) -> bool) -> usize {
        let mut requeued = 0;
        for (id, run) in &mut self.runs {
            let mut lost = Vec::new();
            for (&task, attempts) in &mut run.running {
                attempts.retain(|a| {
                    let keep = alive(&a.node);
                    if !keep {
                        tracing::warn!(job = %id, task, node = %a.node, "node lost; task queued again");
                    }
                    keep
                });
                if attempts.is_empty() {
                    lost.push(task);
                }
            }
            for task in lost {
                run.running.remove(&task);
                if !run.done.contains(&task) {
                    run.pending.push_front(task);
                    requeued += 1;
                }
            }
        }
        requeued
    }

    /// Jobs among `running` that are not running here any more.
    fn stopped(&self, running: &[String], state: &crate::State) -> Vec<String> {
        running
            .iter()
            .filter(|id| !self.runs.contains_key(*id))
            .filter(|id| state.job(id).ok().flatten().is_none_or(|j| j.state != JobState::Running))
            .cloned()
            .collect()
    }
}

/// What `/v1/jobs/{id}` shows.
fn info(record: &JobRecord, running: u32) -> JobInfo {
    JobInfo {
        id: record.id.clone(),
        function: record.function.clone(),
        version: record.version,
        reduce: record.reduce.as_ref().map(|(n, v, _)| (n.clone(), *v)),
        input: record.input.clone(),
        output: record.output.clone(),
        state: record.state,
        stage: record.stage,
        map_tasks: record.map_tasks,
        map_done: record.map_done,
        reduce_tasks: record.reduce_partitions,
        reduce_done: record.reduce_done,
        running,
        failed_attempts: record.failed_attempts,
        bytes_in: record.bytes_in,
        bytes_done: record.bytes_done,
        records_in: record.records_in,
        rows_out: record.rows_out,
        gpu_ms: record.gpu_us / 1000,
        error: record.error.clone(),
        submitted_ms: record.submitted_ms,
        finished_ms: record.finished_ms,
    }
}

impl App {
    fn job_io(&self) -> Answer<&Arc<dyn JobIo>> {
        self.0.job_io.as_ref().ok_or_else(|| {
            Failure::new(StatusCode::NOT_IMPLEMENTED, "unsupported", "this control plane does not run batch jobs")
        })
    }

    /// The scheduler, rebuilt from the state when this replica became
    /// leader since it was last built. Only the leader calls this.
    async fn scheduler(&self) -> Answer<std::sync::MutexGuard<'_, Scheduler>> {
        let term = self.status().term;
        if self.0.scheduler.lock().map_err(poisoned)?.term != term {
            // Everything committed before this leader's term must be applied
            // before the state is read.
            self.barrier().await?;
            let mut s = self.0.scheduler.lock().map_err(poisoned)?;
            if s.term != term {
                s.rebuild(self.0.replica.state(), term)?;
                tracing::info!(jobs = s.runs.len(), term, "job scheduler rebuilt");
            }
        }
        self.0.scheduler.lock().map_err(poisoned)
    }

    fn running_attempts(&self, id: &str) -> u32 {
        self.0
            .scheduler
            .lock()
            .ok()
            .and_then(|s| s.runs.get(id).map(|r| r.running.values().map(|a| a.len() as u32).sum()))
            .unwrap_or(0)
    }

    /// After job records changed: moves runs to their next stage, drops the
    /// ones that are over and wakes the finisher and waiting nodes.
    fn refresh(&self, ids: &HashSet<String>) -> Answer<()> {
        let state = self.0.replica.state();
        let mut s = self.0.scheduler.lock().map_err(poisoned)?;
        for id in ids {
            let Some(record) = state.job(id)? else { continue };
            if record.state != JobState::Running {
                s.runs.remove(id);
                continue;
            }
            match s.runs.get_mut(id) {
                Some(run) if run.stage == record.stage => run.record = record,
                _ => {
                    let run = Run::load(state, record)?;
                    s.runs.insert(id.clone(), run);
                }
            }
        }
        drop(s);
        self.0.jobs_changed.notify_waiters();
        Ok(())
    }
}

fn check_request(request: &JobRequest) -> Answer<()> {
    check_name(&request.function).map_err(|r| Failure::bad(format!("invalid function `{}`: {r}", request.function)))?;
    if let Some(r) = &request.reduce {
        check_name(r).map_err(|e| Failure::bad(format!("invalid reducer `{r}`: {e}")))?;
    }
    if request.input.trim().is_empty() {
        return Err(Failure::bad("`input` is empty"));
    }
    if request.output.trim().is_empty() {
        return Err(Failure::bad("`output` is empty"));
    }
    if let Some(n) = request.reduce_partitions
        && !(1..=MAX_REDUCE_PARTITIONS).contains(&n)
    {
        return Err(Failure::bad(format!("`reduce_partitions` must be 1 to {MAX_REDUCE_PARTITIONS}, not {n}")));
    }
    if request.max_attempts == Some(0) {
        return Err(Failure::bad("`max_attempts` must be at least 1"));
    }
    if request.partition_size == Some(0) {
        return Err(Failure::bad("`partition_size` must be at least 1 byte"));
    }
    if let Some(f) = &request.format
        && !["jsonl", "csv", "parquet"].contains(&f.as_str())
    {
        return Err(Failure::bad(format!("unknown output format `{f}` (jsonl, csv or parquet)")));
    }
    Ok(())
}

/// The active version of a function as a task runs it.
fn task_function(app: &App, tenant: &str, name: &str, timeout_ms: Option<u64>) -> Answer<(u64, String, TaskFunction)> {
    let f = app.function(tenant, name.to_string())?;
    let v = f.active_version().ok_or_else(|| Failure::not_found(format!("function `{name}` has no active version")))?;
    let function = TaskFunction {
        module: v.module.clone(),
        memory: v.spec.memory,
        timeout_ms: timeout_ms.unwrap_or(v.spec.timeout_ms),
        config: v.spec.config.clone(),
        gpu: v.spec.gpu,
    };
    Ok((v.version, v.spec.kind.clone(), function))
}

pub(super) async fn submit(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    body: Result<axum::Json<JobRequest>, JsonRejection>,
) -> Answer<Response> {
    let request = json_body(body)?;
    check_request(&request)?;
    if !caller.is_admin() {
        for (what, uri) in [("input", &request.input), ("output", &request.output)] {
            if is_local(uri) {
                return Err(Failure::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "{what} `{uri}` is a path on the grid's machines, which only the admin token may use; use s3:// (or http(s):// for input)"
                    ),
                ));
            }
        }
    }
    let io = app.job_io()?.clone();
    app.barrier().await?;
    let tenant = caller.tenant;
    let (version, kind, map) = task_function(&app, &tenant, &request.function, request.timeout_ms)?;
    let reduce = match &request.reduce {
        Some(name) => {
            let (version, rkind, f) = task_function(&app, &tenant, name, request.timeout_ms)?;
            if rkind != "reducer" {
                return Err(Failure::bad(format!("--reduce `{name}` is a {rkind}, not a reducer")));
            }
            if kind != "mapper" {
                return Err(Failure::bad(format!(
                    "--reduce needs a mapper that emits pairs, but `{}` is a {kind}",
                    request.function
                )));
            }
            Some((name.clone(), version, f))
        }
        None => None,
    };
    if !["scorer", "mapper"].contains(&kind.as_str()) {
        return Err(Failure::bad(format!(
            "`{}` is a {kind}; a job runs a scorer or a mapper (a reducer goes in `reduce`)",
            request.function
        )));
    }
    if map.gpu == GpuPlacement::Required {
        app.require_gpu_node(&request.function)?;
    }
    let plan_request = request.clone();
    let partitions = tokio::task::spawn_blocking(move || io.plan(&plan_request))
        .await
        .map_err(|e| Failure::internal(format!("planning stopped: {e}")))?
        .map_err(Failure::bad)?;
    if partitions.is_empty() {
        return Err(Failure::bad(format!("`{}` holds no input data", request.input)));
    }
    let reduce_partitions = match &reduce {
        Some(_) => request.reduce_partitions.unwrap_or(2),
        None => 0,
    };
    let job = JobRecord {
        id: String::new(),
        tenant,
        function: request.function.clone(),
        version,
        map,
        reduce,
        input: request.input.clone(),
        output: request.output.clone(),
        format: request.format.clone().unwrap_or_else(|| "jsonl".into()),
        reduce_partitions,
        max_attempts: request.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
        map_tasks: 0,
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
        submitted_ms: now_ms(),
        finished_ms: None,
    };
    let Applied::JobSubmitted { id } =
        app.propose(Command::Job(JobCommand::Submit { job: Box::new(job), partitions })).await?
    else {
        return Err(Failure::internal("the job applied as something else"));
    };
    let record = app.0.replica.state().job(&id)?.ok_or_else(|| StateError::JobNotFound { id: id.clone() })?;
    tracing::info!(job = %id, function = %record.function, tasks = record.map_tasks, "job submitted");
    // Make sure this leader's scheduler knows it, then wake idle nodes.
    drop(app.scheduler().await?);
    app.refresh(&HashSet::from([id]))?;
    Ok(json(StatusCode::CREATED, &info(&record, 0)))
}

pub(super) async fn list(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    app.barrier().await?;
    let jobs = app.0.replica.state().jobs(Some(&caller.tenant))?;
    let jobs = jobs.iter().map(|j| info(j, app.running_attempts(&j.id))).collect();
    Ok(json(StatusCode::OK, &JobList { jobs }))
}

fn job_id(id: Result<Path<String>, PathRejection>) -> Answer<String> {
    let Path(id) = id.map_err(|r| Failure::bad(r.body_text()))?;
    let valid = id.strip_prefix("job-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !valid {
        return Err(Failure::bad(format!("`{id}` is not a job id (job-N)")));
    }
    Ok(id)
}

/// Whether a job URI names a path on the grid's machines.
fn is_local(uri: &str) -> bool {
    !["s3://", "http://", "https://"].iter().any(|scheme| uri.starts_with(scheme))
}

impl App {
    /// The caller's job `id`: 404 if it is another tenant's, as if it did
    /// not exist.
    fn own_job(&self, caller: &Caller, id: &str) -> Answer<JobRecord> {
        match self.0.replica.state().job(id)? {
            Some(record) if record.tenant == caller.tenant => Ok(record),
            _ => Err(StateError::JobNotFound { id: id.to_string() }.into()),
        }
    }
}

pub(super) async fn show(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let id = job_id(id)?;
    app.barrier().await?;
    let record = app.own_job(&caller, &id)?;
    Ok(json(StatusCode::OK, &info(&record, app.running_attempts(&id))))
}

pub(super) async fn logs(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let id = job_id(id)?;
    app.barrier().await?;
    let state = app.0.replica.state();
    app.own_job(&caller, &id)?;
    let mut tasks = Vec::new();
    for stage in [Stage::Map, Stage::Reduce] {
        for (task, record) in state.task_records(&id, stage)? {
            if record.failures > 0 {
                tasks.push(TaskLog {
                    stage,
                    task,
                    failures: record.failures,
                    last_error: record.last_error,
                    done: record.winner.is_some(),
                });
            }
        }
    }
    Ok(json(StatusCode::OK, &JobLogs { id, tasks }))
}

/// Server-sent events: `progress` with the job (as `GET /v1/jobs/{id}`
/// shows it) whenever it changes, then `end` with its final state.
pub(super) async fn events(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Answer<Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let id = job_id(id)?;
    app.barrier().await?;
    app.own_job(&caller, &id)?;
    let watch = app.0.replica.subscribe();
    let stream =
        futures_util::stream::unfold((app, id, watch, None::<JobInfo>), |(app, id, mut watch, last)| async move {
            if last.as_ref().is_some_and(|j| j.state.is_final()) {
                return None;
            }
            loop {
                let record = app.0.replica.state().job(&id).ok().flatten()?;
                let now = info(&record, app.running_attempts(&id));
                if last.as_ref() != Some(&now) {
                    let name = if now.state.is_final() { "end" } else { "progress" };
                    let event = Event::default().event(name).json_data(&now).ok()?;
                    return Some((Ok(event), (app, id, watch, Some(now))));
                }
                // The next applied entry, or a second (for `running`).
                let _ = tokio::time::timeout(Duration::from_secs(1), watch.changed()).await;
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub(super) async fn cancel(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let id = job_id(id)?;
    app.barrier().await?;
    app.own_job(&caller, &id)?;
    app.propose(Command::Job(JobCommand::Cancel { id: id.clone(), at_ms: now_ms() })).await?;
    drop(app.scheduler().await?);
    app.refresh(&HashSet::from([id.clone()]))?;
    let record = app.0.replica.state().job(&id)?.ok_or(StateError::JobNotFound { id: id.clone() })?;
    tracing::info!(job = %id, state = record.state.name(), "job cancel requested");
    Ok(json(StatusCode::OK, &info(&record, 0)))
}

pub(super) async fn lease(
    Shared(app): Shared<App>,
    body: Result<axum::Json<LeaseRequest>, JsonRejection>,
) -> Answer<Response> {
    let request = json_body(body)?;
    check_name(&request.node).map_err(|r| Failure::bad(format!("invalid node id `{}`: {r}", request.node)))?;
    let deadline = Instant::now() + Duration::from_millis(request.wait_ms).min(MAX_LEASE_WAIT);
    let max = request.max.clamp(1, MAX_LEASE);
    let (warm, gpu): (HashSet<String>, bool) = {
        let nodes = app.0.nodes.lock().map_err(poisoned)?;
        let beat = nodes.get(&request.node).map(|(_, b)| b);
        (beat.map(|b| b.warm.iter().cloned().collect()).unwrap_or_default(), beat.is_some_and(|b| b.gpu.is_some()))
    };
    loop {
        let notified = app.0.jobs_changed.notified();
        // Read each time round: quotas may change during the long-poll.
        let tenants = app.0.replica.state().tenants()?;
        let refused = super::gpu_refusals(&tenants);
        let slots: HashMap<String, u64> =
            tenants.into_iter().filter_map(|t| Some((t.name, t.quotas.task_slots?))).collect();
        {
            let mut s = app.scheduler().await?;
            let mut tasks = s.take(&request.node, max, &warm, gpu, &slots);
            for task in &mut tasks {
                if let Some(tenant) = s.runs.get(&task.job).map(|r| &r.record.tenant) {
                    task.gpu_refused = refused.get(tenant).cloned();
                }
            }
            let stop = s.stopped(&request.running_jobs, app.0.replica.state());
            if !tasks.is_empty() || !stop.is_empty() || Instant::now() >= deadline {
                return Ok(json(StatusCode::OK, &Lease { tasks, stop }));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, notified).await;
    }
}

pub(super) async fn report(
    Shared(app): Shared<App>,
    body: Result<axum::Json<ReportRequest>, JsonRejection>,
) -> Answer<Response> {
    let request = json_body(body)?;
    if request.reports.is_empty() {
        return Ok(json(StatusCode::OK, &serde_json::json!({ "won": [] })));
    }
    let events: Vec<TaskEvent> = {
        let s = app.scheduler().await?;
        request
            .reports
            .iter()
            .map(|r| {
                let bytes = match r.stage {
                    Stage::Map => {
                        s.runs.get(&r.job).and_then(|run| run.plan.get(r.task as usize)).map_or(0, |p| p.bytes)
                    }
                    Stage::Reduce => 0,
                };
                TaskEvent { report: r.clone(), bytes }
            })
            .collect()
    };
    let command = Command::Job(JobCommand::Events { at_ms: now_ms(), events });
    let Applied::TasksRecorded { won } = app.propose(command).await? else {
        return Err(Failure::internal("the task events applied as something else"));
    };
    let mut touched = HashSet::new();
    {
        let mut s = app.0.scheduler.lock().map_err(poisoned)?;
        for (r, &won) in request.reports.iter().zip(&won) {
            touched.insert(r.job.clone());
            let Some(run) = s.runs.get_mut(&r.job) else { continue };
            if run.stage != r.stage {
                continue;
            }
            let mut started = None;
            if let Some(attempts) = run.running.get_mut(&r.task) {
                if let Some(a) = attempts.iter().find(|a| a.attempt == r.attempt) {
                    started = Some(a.started);
                }
                attempts.retain(|a| a.attempt != r.attempt);
            }
            let idle = run.running.get(&r.task).is_none_or(Vec::is_empty);
            if idle {
                run.running.remove(&r.task);
            }
            match &r.outcome {
                TaskOutcome::Done { .. } => {
                    if won {
                        // Other attempts of the task lost; they may finish, unheeded.
                        run.done.insert(r.task);
                        run.running.remove(&r.task);
                        run.durations.extend(started.map(|t| t.elapsed()));
                    }
                }
                TaskOutcome::Failed { error } => {
                    tracing::warn!(job = %r.job, task = r.task, node = %request.node, %error, "task attempt failed");
                    if idle && !run.done.contains(&r.task) && !run.pending.contains(&r.task) {
                        run.pending.push_back(r.task);
                    }
                }
            }
        }
    }
    app.refresh(&touched)?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "won": won })))
}

/// The leader's background work for jobs: gives up attempts on lost
/// nodes, publishes jobs whose tasks all won and cleans up after failed and
/// cancelled ones. Runs on every replica; acts only while leading.
pub(super) async fn drive(app: App) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.0.jobs_changed.notified() => {}
        }
        if !app.status().is_leader || app.0.job_io.is_none() {
            continue;
        }
        if let Err(e) = drive_once(&app).await {
            tracing::debug!(error = %e.message, "job driver");
        }
    }
}

async fn drive_once(app: &App) -> Answer<()> {
    // Node liveness: a fresh leader has heard no heartbeats yet.
    let fresh = app.0.leader_since.lock().map_err(poisoned)?.is_none_or(|t| t.elapsed() < NODE_LIVENESS);
    if !fresh {
        let beats: HashMap<String, Instant> =
            app.0.nodes.lock().map_err(poisoned)?.iter().map(|(id, (at, _))| (id.clone(), *at)).collect();
        let alive = |node: &str| beats.get(node).is_some_and(|at| at.elapsed() < NODE_LIVENESS);
        if app.scheduler().await?.requeue_lost(&alive) > 0 {
            app.0.jobs_changed.notify_waiters();
        }
    }

    let io = app.job_io()?.clone();
    let state = app.0.replica.state();
    let candidates: Vec<JobRecord> = state
        .jobs(None)?
        .into_iter()
        .filter(|j| j.state == JobState::Committing || (j.state.is_final() && j.state != JobState::Succeeded))
        .collect();
    for job in candidates {
        {
            let mut s = app.0.scheduler.lock().map_err(poisoned)?;
            if !s.finishing.insert(job.id.clone()) {
                continue;
            }
        }
        let app = app.clone();
        let io = io.clone();
        tokio::spawn(async move {
            let id = job.id.clone();
            if job.state == JobState::Committing {
                finish(&app, io, job).await;
            } else {
                // Failed or cancelled: clean up once per leader.
                let _ = tokio::task::spawn_blocking(move || io.abort(&job.output, &job.id)).await;
                return;
            }
            if let Ok(mut s) = app.0.scheduler.lock() {
                s.finishing.remove(&id);
            }
        });
    }
    Ok(())
}

/// Publishes a job and records the outcome.
async fn finish(app: &App, io: Arc<dyn JobIo>, job: JobRecord) {
    let state = app.0.replica.state();
    let winners = |stage| -> Result<Vec<TaskResult>, StateError> {
        Ok(state
            .task_records(&job.id, stage)?
            .into_iter()
            .filter_map(|(task, t)| {
                let Winner { attempt, files, rows, records_in } = t.winner?;
                Some(TaskResult { task, attempt, files, rows, records_in })
            })
            .collect())
    };
    let (map, reduce_results) = match (winners(Stage::Map), winners(Stage::Reduce)) {
        (Ok(m), Ok(r)) => (m, r),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(job = %job.id, error = %e, "reading winners");
            return;
        }
    };
    let commit = JobCommit {
        id: job.id.clone(),
        function: job.function.clone(),
        version: job.version,
        reduce: job.reduce.as_ref().map(|(n, v, _)| (n.clone(), *v)),
        output: job.output.clone(),
        format: job.format.clone(),
        reduce_partitions: job.reduce_partitions,
        map,
        reduce_results,
    };
    let id = job.id.clone();
    let committed = tokio::task::spawn_blocking(move || io.commit(&commit))
        .await
        .unwrap_or_else(|e| Err(format!("the commit stopped: {e}")));
    let error = committed.err();
    match &error {
        None => tracing::info!(job = %id, "job committed"),
        Some(e) => tracing::warn!(job = %id, error = %e, "job commit failed"),
    }
    let command = Command::Job(JobCommand::Finish { id: id.clone(), at_ms: now_ms(), error });
    if let Err(e) = app.propose(command).await {
        tracing::warn!(job = %id, error = %e.message, "recording the commit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DEFAULT_TENANT;

    fn run(tasks: u32) -> Run {
        let function = TaskFunction {
            module: "m".repeat(64),
            memory: 1 << 20,
            timeout_ms: 1000,
            config: BTreeMap::new(),
            gpu: Default::default(),
        };
        let record = JobRecord {
            id: "job-1".into(),
            tenant: DEFAULT_TENANT.into(),
            function: "f".into(),
            version: 1,
            map: function,
            reduce: None,
            input: "/in".into(),
            output: "/out".into(),
            format: "jsonl".into(),
            reduce_partitions: 0,
            max_attempts: 4,
            map_tasks: tasks,
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
        };
        let plan = (0..tasks)
            .map(|i| PartitionSpec {
                path: format!("/in/{i}"),
                format: "text".into(),
                span: SpanSpec::Bytes { start: 0, end: 1 },
                bytes: 1,
            })
            .collect();
        Run {
            record,
            plan: Arc::new(plan),
            stage: Stage::Map,
            pending: (0..tasks).collect(),
            running: BTreeMap::new(),
            done: HashSet::new(),
            durations: Vec::new(),
            shuffle: Vec::new(),
        }
    }

    #[test]
    fn tasks_are_shared_fairly_between_tenants_within_their_slot_quotas() {
        let mut s = Scheduler { term: 1, ..Scheduler::default() };
        // Tenant a's big job came first; tenant b's small one after it.
        let mut big = run(10_000);
        big.record.tenant = "a".into();
        let mut small = run(4);
        small.record.id = "job-2".into();
        small.record.tenant = "b".into();
        s.runs.insert("job-1".into(), big);
        s.runs.insert("job-2".into(), small);
        let none = HashSet::new();
        let jobs = |tasks: &[TaskAssignment]| tasks.iter().map(|t| t.job.clone()).collect::<Vec<_>>();
        // Without quotas: alternately, so b is not queued behind 10,000 tasks.
        let first = s.take("n1", 6, &none, false, &HashMap::new());
        assert_eq!(jobs(&first), ["job-1", "job-2", "job-1", "job-2", "job-1", "job-2"]);
        // With a quota of 4 task slots for a: a has 3 running, so 1 more.
        let slots = HashMap::from([("a".to_string(), 4)]);
        let next = s.take("n2", 6, &none, false, &slots);
        assert_eq!(jobs(&next), ["job-1", "job-2"], "a up to its quota, then b's last task");
        assert!(s.take("n3", 6, &none, false, &slots).is_empty(), "a is at its quota and b has nothing left");
    }

    #[test]
    fn leases_respect_max_and_stragglers_get_one_copy_on_another_node() {
        let mut s = Scheduler { term: 3, ..Scheduler::default() };
        s.runs.insert("job-1".into(), run(4));
        let none = HashSet::new();
        let a = s.take("a", 3, &none, false, &HashMap::new());
        assert_eq!(a.iter().map(|t| t.task).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(a.iter().all(|t| t.attempt >> 32 == 3), "attempt ids carry the term");
        assert_eq!(s.take("b", 8, &none, false, &HashMap::new()).len(), 1, "one task left");
        // Nothing pending and no straggler yet: nothing to copy.
        assert!(s.take("b", 8, &none, false, &HashMap::new()).is_empty());

        let run = s.runs.get_mut("job-1").expect("run");
        run.durations = vec![Duration::from_millis(10); 5];
        // Task 1 on node a has run far longer than the median.
        let started = Instant::now().checked_sub(Duration::from_secs(5)).expect("clock");
        run.running.get_mut(&1).expect("task 1")[0].started = started;
        run.running.get_mut(&2).expect("task 2")[0].started = started;
        run.done.insert(2);
        let copy = s.take("b", 8, &none, false, &HashMap::new());
        assert_eq!(copy.iter().map(|t| t.task).collect::<Vec<_>>(), [1], "task 2 is done; task 1 gets a copy");
        assert!(s.take("c", 8, &none, false, &HashMap::new()).is_empty(), "one copy per task");
        assert!(s.take("a", 8, &none, false, &HashMap::new()).is_empty(), "never on the straggler's own node");

        // Node a stops heart-beating: its tasks go back to the queue,
        // except one whose copy still runs and one that is done.
        let requeued = s.requeue_lost(&|node| node != "a");
        assert_eq!(requeued, 1, "task 0 only");
        let again = s.take("b", 8, &none, false, &HashMap::new());
        assert_eq!(again.iter().map(|t| t.task).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_queued_task_that_was_won_meanwhile_is_not_leased_again() {
        let mut s = Scheduler { term: 1, ..Scheduler::default() };
        let mut r = run(3);
        r.done.insert(0);
        s.runs.insert("job-1".into(), r);
        let tasks = s.take("a", 8, &HashSet::new(), false, &HashMap::new());
        assert_eq!(tasks.iter().map(|t| t.task).collect::<Vec<_>>(), [1, 2]);
    }

    fn with_gpu(id: &str, tasks: u32, gpu: GpuPlacement) -> Run {
        let mut r = run(tasks);
        r.record.id = id.into();
        r.record.map.gpu = gpu;
        r
    }

    #[test]
    fn required_gpu_tasks_go_only_to_gpu_nodes_and_preferred_ones_to_them_first() {
        let mut s = Scheduler { term: 1, ..Scheduler::default() };
        s.runs.insert("job-1".into(), with_gpu("job-1", 2, GpuPlacement::Required));
        s.runs.insert("job-2".into(), with_gpu("job-2", 2, GpuPlacement::Preferred));
        s.runs.insert("job-3".into(), with_gpu("job-3", 2, GpuPlacement::Any));
        let none = HashSet::new();
        // A CPU node: never the required job; the preferred one after the rest.
        let cpu = s.take("cpu", 3, &none, false, &HashMap::new());
        let jobs: Vec<&str> = cpu.iter().map(|t| t.job.as_str()).collect();
        assert_eq!(jobs, ["job-3", "job-3", "job-2"]);
        // A GPU node: oldest first, the required job included.
        let gpu = s.take("gpu", 8, &none, true, &HashMap::new());
        let jobs: Vec<&str> = gpu.iter().map(|t| t.job.as_str()).collect();
        assert_eq!(jobs, ["job-1", "job-1", "job-2"]);
    }
}
