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
//!
//! Here the HTTP handlers; the scheduler is [`scheduler`], the commit
//! driver `driver`.

mod driver;
mod scheduler;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use wasmgrid_api::*;

use super::answer::{json, json_body, poisoned};
use super::{App, Caller, NODE_LIVENESS, now_ms};
use crate::state::jobs::{JobCommand, JobRecord, TaskEvent, Winner};
use crate::state::{Applied, Command, StateError};
pub(crate) use scheduler::Scheduler;
use scheduler::{Asker, Run};

/// Longest a lease request waits for a task.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(2);
/// Most tasks one lease hands out.
const MAX_LEASE: u32 = 256;
/// Default attempts per task.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// Most reduce partitions a job may ask for.
const MAX_REDUCE_PARTITIONS: u32 = 4096;

/// A job of small partitions runs its map tasks in ranges, one attempt
/// each (leased, run, reported and won as one): at least this many ranges
/// (so every slot of a large grid gets some, and a straggler's range is a
/// small share of the job)...
const MIN_RANGES: u64 = 256;
/// ... of at most this many tasks...
const MAX_RANGE: u64 = 1024;
/// ... and of this many input bytes on average, at most.
const RANGE_BYTES: u64 = 8 << 20;

/// Map tasks per range for a job of `partitions` (1: each on its own).
fn range_for(partitions: &[PartitionSpec]) -> u32 {
    let tasks = partitions.len() as u64;
    let bytes = partitions.iter().map(|p| p.bytes).sum::<u64>().max(1);
    let by_bytes = (RANGE_BYTES * tasks / bytes).max(1);
    (tasks / MIN_RANGES).min(by_bytes).clamp(1, MAX_RANGE) as u32
}

/// What `/v1/jobs/{id}` shows.
fn info(record: &JobRecord, running: u32, map_range: u32) -> JobInfo {
    JobInfo {
        id: record.id.clone(),
        function: record.function.clone(),
        version: record.version,
        reduce: record.reduce.as_ref().map(|(n, v, _)| (n.clone(), *v)),
        input: record.input.clone(),
        output: record.output.clone(),
        schema: record.schema.clone(),
        state: record.state,
        stage: record.stage,
        map_tasks: record.map_tasks,
        map_range,
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
        trace_id: trace::job_trace_id(&record.tenant, &record.id),
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

    /// What `/v1/jobs/{id}` shows of `record`.
    fn job_info(&self, record: &JobRecord) -> JobInfo {
        let range = self.0.replica.state().job_range(&record.id).unwrap_or(1);
        info(record, self.running_attempts(&record.id), range)
    }

    /// How many nodes are alive, and those of them whose heartbeat lacks
    /// what `has` asks for (nodes of a release before it).
    fn nodes_lacking(&self, has: impl Fn(&Heartbeat) -> bool) -> Answer<(usize, Vec<String>)> {
        let nodes = self.0.nodes.lock().map_err(poisoned)?;
        let alive: Vec<_> = nodes.iter().filter(|(_, (at, _))| at.elapsed() < NODE_LIVENESS).collect();
        let lacking = alive.iter().filter(|(_, (_, beat))| !has(beat)).map(|(id, _)| (*id).clone()).collect();
        Ok((alive.len(), lacking))
    }

    /// Refuses (409 `upgrade_in_progress`) while a live node lacks what
    /// `has` asks of its heartbeat: `what` says why it is needed.
    fn require_nodes(&self, has: impl Fn(&Heartbeat) -> bool, what: &str) -> Answer<()> {
        let (_, old) = self.nodes_lacking(has)?;
        if old.is_empty() {
            return Ok(());
        }
        Err(Failure::new(
            StatusCode::CONFLICT,
            "upgrade_in_progress",
            format!("{what}; {} runs an earlier one: finish the upgrade first", old.join(", ")),
        ))
    }

    /// Whether every node alive runs ranges of tasks (and there is one).
    fn nodes_run_ranges(&self) -> Answer<bool> {
        let (alive, lacking) = self.nodes_lacking(|beat| beat.ranges)?;
        Ok(alive > 0 && lacking.is_empty())
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
    if let Some(n) = request.range
        && !(1..=MAX_RANGE as u32).contains(&n)
    {
        return Err(Failure::bad(format!("`range` must be 1 to {MAX_RANGE} tasks, not {n}")));
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

/// A version of a function (its active one for `None`) as a task runs it.
fn task_function(
    app: &App,
    tenant: &str,
    (name, version): (&str, Option<u64>),
    timeout_ms: Option<u64>,
) -> Answer<(u64, String, TaskFunction)> {
    let f = app.function(tenant, name.to_string())?;
    let chosen;
    let v = match version {
        None => f.active_version(),
        Some(n) if n == f.active => f.active_version(),
        Some(n) => {
            chosen = app.0.replica.state().version(tenant, name, n)?;
            chosen.as_ref()
        }
    };
    let v = v.ok_or_else(|| match version {
        Some(n) => Failure::not_found(format!("function `{name}` has no version {n} (it has 1 to {})", f.latest)),
        None => Failure::not_found(format!("function `{name}` has no active version")),
    })?;
    let function = TaskFunction {
        module: v.module.clone(),
        memory: v.spec.memory,
        timeout_ms: timeout_ms.unwrap_or(v.spec.timeout_ms),
        config: v.spec.config.clone(),
        gpu: v.spec.gpu,
        artifacts: v.spec.artifacts.clone(),
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
        check_remote(&request)?;
    }
    let io = app.job_io()?.clone();
    // From here to the answer (planning the partitions, the Raft write), in
    // the job's trace once its id is known.
    let span = tracing::trace_span!(
        target: trace::TARGET,
        "job submit",
        tenant = %caller.tenant,
        function = %request.function,
        job = tracing::field::Empty,
        tasks = tracing::field::Empty,
    );
    app.barrier().await?;
    if request.schema.is_some() {
        // Nodes of a release before it would run its tasks without it.
        app.require_nodes(|beat| beat.schemas, "`schema` needs every node on a release that reads it")?;
    }
    let tenant = caller.tenant;
    let (version, map, reduce) = functions(&app, &tenant, &request)?;
    if reduce.aggregator() {
        app.require_nodes(|beat| beat.aggregators, "an aggregator's job needs every node on a release that runs one")?;
    }
    let plan_request = request.clone();
    let partitions = tokio::task::spawn_blocking(move || io.plan(&plan_request))
        .await
        .map_err(|e| Failure::internal(format!("planning stopped: {e}")))?
        .map_err(|e| Failure::bad(e.to_string()))?;
    let job = Box::new(new_job(tenant, &request, version, map, reduce));
    // In ranges once every replica reads them and every node runs them.
    let range = request.range.unwrap_or_else(|| range_for(&partitions));
    let command = if range > 1 && app.nodes_run_ranges()? && app.replicas_on_this_release().await {
        JobCommand::SubmitRanges { job, partitions: Partitions(partitions), range }
    } else {
        JobCommand::Submit { job, partitions }
    };
    let Applied::JobSubmitted { id } = app.propose(Command::Job(command)).await? else {
        return Err(Failure::internal("the job applied as something else"));
    };
    let record = app.0.replica.state().job(&id)?.ok_or_else(|| StateError::JobNotFound { id: id.clone() })?;
    trace::join_job(&span, &record.tenant, &id);
    span.record("job", id.as_str()).record("tasks", record.map_tasks);
    tracing::info!(job = %id, function = %record.function, tasks = record.map_tasks, "job submitted");
    // Make sure this leader's scheduler knows it, then wake idle nodes.
    drop(app.scheduler().await?);
    app.refresh(&HashSet::from([id]))?;
    Ok(json(StatusCode::CREATED, &app.job_info(&record)))
}

/// A job's reducer: its name, version and how its tasks run.
type Reducer = (String, u64, TaskFunction);

/// What a job's reduce stage runs.
enum Reduce {
    /// None: map tasks write the output.
    None,
    /// A reducer over the pairs its mapper emits.
    Reducer(Reducer),
    /// The map function is an aggregator: the stage merges its partial
    /// states.
    Aggregator,
}

impl Reduce {
    fn aggregator(&self) -> bool {
        matches!(self, Reduce::Aggregator)
    }
}

/// Paths on the grid's machines are the admin's only: a tenant's job reads
/// and writes object stores (or reads URLs).
fn check_remote(request: &JobRequest) -> Answer<()> {
    for (what, uri) in [("input", &request.input), ("output", &request.output)] {
        if is_local(uri) {
            let message = format!(
                "{what} `{uri}` is a path on the grid's machines, which only the admin token may use; use s3:// (or http(s):// for input)"
            );
            return Err(Failure::forbidden(message));
        }
    }
    Ok(())
}

/// The job's map function (a scorer, a mapper or an aggregator) and what
/// its reduce stage runs, checked against each other; the map function's
/// version.
fn functions(app: &App, tenant: &str, request: &JobRequest) -> Answer<(u64, TaskFunction, Reduce)> {
    let (version, kind, map) = task_function(app, tenant, (&request.function, request.version), request.timeout_ms)?;
    let reduce = match &request.reduce {
        Some(_) if kind == "aggregator" => {
            return Err(Failure::bad(format!(
                "`{}` is an aggregator: the grid merges its groups itself, so the job takes no `reduce`",
                request.function
            )));
        }
        None if kind == "aggregator" => Reduce::Aggregator,
        Some(name) => {
            let (version, rkind, f) = task_function(app, tenant, (name, None), request.timeout_ms)?;
            if rkind != "reducer" {
                return Err(Failure::bad(format!("--reduce `{name}` is {}, not a reducer", a(&rkind))));
            }
            if kind != "mapper" {
                return Err(Failure::bad(format!(
                    "--reduce needs a mapper that emits pairs, but `{}` is {}",
                    request.function,
                    a(&kind)
                )));
            }
            Reduce::Reducer((name.clone(), version, f))
        }
        None => {
            if request.reduce_partitions.is_some() {
                return Err(Failure::bad(format!(
                    "`reduce_partitions` needs a reducer (`reduce`) or an aggregator, and `{}` is {}",
                    request.function,
                    a(&kind)
                )));
            }
            Reduce::None
        }
    };
    if !["scorer", "mapper", "aggregator"].contains(&kind.as_str()) {
        return Err(Failure::bad(format!(
            "`{}` is {}; a job runs a scorer, a mapper or an aggregator (a reducer goes in `reduce`)",
            request.function,
            a(&kind)
        )));
    }
    if map.gpu == GpuPlacement::Required {
        app.require_gpu_node(&request.function)?;
    }
    Ok((version, map, reduce))
}

/// The record of a job about to be submitted (its id and task count come
/// from the state machine).
fn new_job(tenant: String, request: &JobRequest, version: u64, map: TaskFunction, reduce: Reduce) -> JobRecord {
    let (reduce_partitions, reduce) = match reduce {
        Reduce::Reducer(r) => (request.reduce_partitions.unwrap_or(2), Some(r)),
        // One table unless asked for more; the stage runs the aggregator.
        Reduce::Aggregator => (request.reduce_partitions.unwrap_or(1), None),
        Reduce::None => (0, None),
    };
    JobRecord {
        id: String::new(),
        tenant,
        function: request.function.clone(),
        version,
        map,
        reduce,
        input: request.input.clone(),
        output: request.output.clone(),
        format: request.format.clone().unwrap_or_else(|| "jsonl".into()),
        schema: request.schema.clone(),
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
    }
}

pub(super) async fn list(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    app.barrier().await?;
    let jobs = app.0.replica.state().jobs(Some(&caller.tenant))?;
    let jobs = jobs.iter().map(|j| app.job_info(j)).collect();
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
    Ok(json(StatusCode::OK, &app.job_info(&record)))
}

/// `GET /v1/jobs/{id}/attempts`: what the job's latest attempts logged, from
/// every alive node (for the dashboard; the CLI asks the nodes itself). The
/// caller's token goes with each request: a node shows what it may read.
pub(super) async fn attempts(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    headers: axum::http::HeaderMap,
) -> Answer<Response> {
    let id = job_id(id)?;
    app.barrier().await?;
    let record = app.own_job(&caller, &id)?;
    let alive: Vec<(String, String)> = app
        .0
        .nodes
        .lock()
        .map_err(poisoned)?
        .iter()
        .filter(|(_, (at, _))| at.elapsed() < NODE_LIVENESS)
        .map(|(node, (_, beat))| (node.clone(), beat.address.clone()))
        .collect();
    let authorization = headers.get(axum::http::header::AUTHORIZATION).cloned();
    let asks = alive.into_iter().map(|(node, address)| {
        let url = format!("{address}/v1/jobs/{}/{}/logs", segment(&record.tenant), segment(&id));
        let mut request = app.0.http.get(url).timeout(Duration::from_secs(5));
        if let Some(authorization) = &authorization {
            request = request.header(axum::http::header::AUTHORIZATION, authorization.clone());
        }
        async move {
            let answer = match request.send().await {
                Ok(r) if r.status() == StatusCode::NOT_FOUND => return (node, Ok(Vec::new())),
                Ok(r) if r.status().is_success() => r.json::<AttemptLogs>().await.map_err(|e| e.to_string()),
                Ok(r) => Err(format!("answered {}", r.status())),
                Err(e) => Err(e.to_string()),
            };
            (node, answer.map(|logs| logs.attempts))
        }
    });
    let mut attempts = Vec::new();
    let mut unreachable = Vec::new();
    for (node, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(kept) => attempts.extend(kept.into_iter().map(|attempt| NodeAttempt { node: node.clone(), attempt })),
            Err(why) => unreachable.push(format!("{node}: {why}")),
        }
    }
    attempts.sort_by_key(|a| a.attempt.at_ms);
    Ok(json(StatusCode::OK, &JobAttempts { id, attempts, unreachable }))
}

pub(super) async fn logs(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let id = job_id(id)?;
    app.barrier().await?;
    let state = app.0.replica.state();
    let job = app.own_job(&caller, &id)?;
    let range = state.job_range(&id)?;
    let mut tasks = Vec::new();
    for stage in [Stage::Map, Stage::Reduce] {
        for (task, record) in state.task_records(&id, stage)? {
            if record.failures > 0 {
                tasks.push(TaskLog {
                    stage,
                    task,
                    count: crate::state::jobs::range_len(&job, range, stage, task).max(1),
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
                let now = app.job_info(&record);
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
    Ok(json(StatusCode::OK, &app.job_info(&record)))
}

pub(super) async fn lease(
    Shared(app): Shared<App>,
    body: Result<axum::Json<LeaseRequest>, JsonRejection>,
) -> Answer<Response> {
    let request = json_body(body)?;
    check_name(&request.node).map_err(|r| Failure::bad(format!("invalid node id `{}`: {r}", request.node)))?;
    let deadline = Instant::now() + Duration::from_millis(request.wait_ms).min(MAX_LEASE_WAIT);
    let max = request.max.clamp(1, MAX_LEASE);
    let ranges = request.ranges;
    let (warm, gpu): (HashSet<String>, bool) = {
        let nodes = app.0.nodes.lock().map_err(poisoned)?;
        let beat = nodes.get(&request.node).map(|(_, b)| b);
        (beat.map(|b| b.warm.iter().cloned().collect()).unwrap_or_default(), beat.is_some_and(|b| b.gpu.is_some()))
    };
    loop {
        let notified = app.0.jobs_changed.notified();
        // Read each time round: quotas may change during the long-poll.
        let tenants = app.0.replica.state().tenants()?;
        let refused = super::nodes::gpu_refusals(&tenants);
        let slots: HashMap<String, u64> =
            tenants.into_iter().filter_map(|t| Some((t.name, t.quotas.task_slots?))).collect();
        {
            let mut s = app.scheduler().await?;
            let asker = Asker { node: &request.node, warm: &warm, gpu, ranges };
            let mut tasks = s.take(asker, max, &slots);
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
                    Stage::Map => s.runs.get(&r.job).map_or(0, |run| run.range_bytes(r.task)),
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
                TaskOutcome::Unrunnable { error } => {
                    // The job has failed in the state; the refresh drops its run.
                    tracing::warn!(job = %r.job, task = r.task, %error, "the job cannot run as set up");
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
        if let Err(e) = driver::drive_once(&app).await {
            tracing::debug!(error = %e.message(), "job driver");
        }
    }
}
