//! A node's batch worker: pulls task attempts from the control plane (a
//! bounded long-poll asking for as many tasks as it has room for: a few per
//! slot, so a busy node takes fewer; more when tasks are tiny, so that a
//! lease round trip never leaves a slot idle), queues them for its batch
//! threads (one per slot), and reports finished attempts in batches. Reports are idempotent (the control plane
//! keeps the first winner per task), so a report whose answer was lost is
//! simply sent again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use wasmgrid_api::{Client, LeaseRequest, ReportRequest, TaskAssignment, TaskOutcome, TaskReport};

use wasmgrid_jobs::segments::Segments;
use wasmgrid_runtime::{Function, Runtime};

use crate::modules::{Version, prepare};

/// Longest one lease request waits for work.
const LEASE_WAIT: Duration = Duration::from_secs(2);
/// How much work (by recent attempts' duration) a node keeps leased per
/// slot, running or waiting for the slot: enough to keep slots busy
/// through a lease round trip when tasks are tiny, little enough that a
/// busy node leaves work to the others.
const LEASED_AHEAD: Duration = Duration::from_millis(20);
/// Tasks leased per slot, whatever their duration: at least...
const MIN_PER_SLOT: usize = 2;
/// ... at most...
const MAX_PER_SLOT: usize = 32;
/// ... and before any attempt has finished.
const FIRST_PER_SLOT: usize = 4;

/// How long a report waits for more finished attempts to go with it.
const REPORT_GATHER: Duration = Duration::from_millis(10);
/// Most attempts in one report.
const MAX_REPORT: usize = 1024;

/// Jobs with attempts running here: how many, and whether they were told to stop.
type Running = Arc<Mutex<HashMap<String, (usize, Arc<AtomicBool>)>>>;

/// What the worker needs.
#[derive(Debug)]
pub struct Worker {
    /// The node's id.
    pub id: String,
    /// Control-plane client (a timeout longer than [`LEASE_WAIT`]).
    pub client: Arc<Client>,
    /// The runtime tasks run in.
    pub runtime: Arc<Runtime>,
    /// Where fetched modules are kept.
    pub modules_dir: PathBuf,
    /// Task attempts run at once.
    pub slots: usize,
    /// How much lower than per-request calls attempts run: a busy batch
    /// job leaves the node's CPU to the calls that someone is waiting for.
    pub priority: TaskPriority,
    /// Where attempts keep what they logged.
    pub logs: Arc<wasmgrid_runtime::logs::JobLogs>,
}

/// Runs until the task is aborted.
pub async fn run(worker: Worker) {
    let slots = worker.slots.max(1);
    let pool = Arc::new(Pool::new(slots, worker.priority));
    let worker = Arc::new(worker);
    let leased = Arc::new(Leased::new(slots));
    let (reports, rx) = mpsc::unbounded_channel::<TaskReport>();
    tokio::spawn(report(worker.client.clone(), worker.id.clone(), rx));
    let running: Running = Arc::default();
    let mut failing = false;
    loop {
        let want = leased.room().await;
        let running_jobs: Vec<String> = running.lock().map(|r| r.keys().cloned().collect()).unwrap_or_default();
        let request = LeaseRequest {
            node: worker.id.clone(),
            max: want as u32,
            wait_ms: LEASE_WAIT.as_millis() as u64,
            running_jobs,
            // A range of tasks runs as one attempt (wasmgrid_jobs::task).
            ranges: true,
        };
        let lease = match worker.client.lease(&request).await {
            Ok(lease) => {
                if failing {
                    tracing::info!("task leases resumed");
                    failing = false;
                }
                lease
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("cannot lease tasks: {e}");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        stop_jobs(&running, &lease.stop);
        for task in lease.tasks.into_iter().take(want) {
            leased.take();
            let stop = {
                let mut r = running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let entry = r.entry(task.job.clone()).or_insert_with(|| (0, Arc::default()));
                entry.0 += 1;
                entry.1.clone()
            };
            let ticket = Ticket {
                task,
                stop,
                leased: leased.clone(),
                running: running.clone(),
                reports: reports.clone(),
                logs: worker.logs.clone(),
            };
            start(&worker, &pool, ticket);
        }
    }
}

/// Stops the attempts of `jobs` running here (cancelled, failed or done).
fn stop_jobs(running: &Running, jobs: &[String]) {
    if let Ok(r) = running.lock() {
        for job in jobs {
            if let Some((_, stop)) = r.get(job) {
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Puts a leased task on the batch threads: at once when its function is
/// compiled here, else once it has been fetched and compiled.
fn start(worker: &Arc<Worker>, pool: &Arc<Pool>, ticket: Ticket) {
    let task_function = &ticket.task.function;
    let local = crate::modules::local_artifacts(&worker.modules_dir, &task_function.artifacts);
    if let Some(artifacts) = local
        && let Some(function) =
            worker.runtime.loaded_version_with(&task_function.module, &task_function.config, &artifacts)
    {
        pool.run(attempt(ticket, function, artifacts));
        return;
    }
    let (worker, pool) = (worker.clone(), pool.clone());
    tokio::spawn(async move {
        let module = &ticket.task.function.module;
        let version = Version {
            config: Arc::new(ticket.task.function.config.clone()),
            artifacts: ticket.task.function.artifacts.clone(),
            limits: wasmgrid_jobs::task::limits(&ticket.task, None),
        };
        let (runtime, client, dir) = (&worker.runtime, &worker.client, &worker.modules_dir);
        match prepare(runtime, client, dir, module, version).await {
            Ok((function, artifacts)) => pool.run(attempt(ticket, function, artifacts)),
            Err(error) => ticket.finish(Some(TaskOutcome::Failed { error: error.to_string() })),
        }
    });
}

/// The tasks a node holds (running or waiting for a batch thread), and how
/// many it should: a lease's worth of work by recent attempts' duration.
#[derive(Debug)]
struct Leased {
    slots: usize,
    held: std::sync::atomic::AtomicUsize,
    /// Recent attempts' mean duration in microseconds (0: none yet).
    mean_us: std::sync::atomic::AtomicU64,
    /// Told when there is room for a lease.
    room: tokio::sync::Notify,
}

impl Leased {
    fn new(slots: usize) -> Leased {
        Leased { slots, held: Default::default(), mean_us: Default::default(), room: Default::default() }
    }

    /// How many tasks the node should hold: a lease's worth of work.
    fn window(&self) -> usize {
        self.slots * self.per_slot()
    }

    /// Whether holding `held` tasks leaves room for a worthwhile lease:
    /// half of the node's window, or any when it holds none.
    fn has_room(&self, held: usize) -> bool {
        let window = self.window();
        held == 0 || window.saturating_sub(held) >= (window / 2).max(1)
    }

    /// How many tasks to lease, once there is room for them.
    async fn room(&self) -> usize {
        loop {
            let notified = self.room.notified();
            let held = self.held.load(Ordering::Acquire);
            if self.has_room(held) {
                return self.window().saturating_sub(held).max(1);
            }
            notified.await;
        }
    }

    fn per_slot(&self) -> usize {
        match self.mean_us.load(Ordering::Relaxed) {
            0 => FIRST_PER_SLOT,
            us => (LEASED_AHEAD.as_micros() as u64 / us).clamp(MIN_PER_SLOT as u64, MAX_PER_SLOT as u64) as usize,
        }
    }

    fn take(&self) {
        self.held.fetch_add(1, Ordering::AcqRel);
    }

    /// An attempt took `time`: folded into the mean (a weight of 1/8).
    fn took(&self, time: Duration) {
        let us = (time.as_micros() as u64).max(1);
        let mean = self.mean_us.load(Ordering::Relaxed);
        let next = if mean == 0 { us } else { (mean * 7 + us) / 8 };
        self.mean_us.store(next.max(1), Ordering::Relaxed);
    }

    /// A task is no longer held. The lease loop is woken only when this
    /// makes room for a lease, not once per finished attempt.
    fn done(&self) {
        let held = self.held.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if self.has_room(held) {
            self.room.notify_one();
        }
    }
}

/// One leased attempt, from the lease to its report: finished exactly once.
struct Ticket {
    task: TaskAssignment,
    stop: Arc<AtomicBool>,
    leased: Arc<Leased>,
    running: Running,
    reports: mpsc::UnboundedSender<TaskReport>,
    logs: Arc<wasmgrid_runtime::logs::JobLogs>,
}

impl Ticket {
    /// Releases the task and reports `outcome` (`None`: its job was
    /// stopped, nothing to report).
    fn finish(self, outcome: Option<TaskOutcome>) {
        if let Ok(mut r) = self.running.lock()
            && let Some(entry) = r.get_mut(&self.task.job)
        {
            entry.0 -= 1;
            if entry.0 == 0 {
                r.remove(&self.task.job);
            }
        }
        self.leased.done();
        if let Some(outcome) = outcome {
            let task = self.task;
            let _ = self.reports.send(TaskReport {
                job: task.job,
                stage: task.stage,
                task: task.task,
                attempt: task.attempt,
                outcome,
            });
        }
    }
}

/// The batch-thread work of one attempt: run it, keep its logs, report it.
/// Everything happens on the batch thread, so tiny attempts run back to
/// back without a hand-off to the async runtime in between.
fn attempt(ticket: Ticket, function: Arc<Function>, artifacts: wasmgrid_runtime::Artifacts) -> Job {
    Box::new(move |segments| {
        if ticket.stop.load(Ordering::Relaxed) {
            return ticket.finish(None);
        }
        let task = &ticket.task;
        // In the job's trace (derived from the job: every node agrees).
        let span = tracing::trace_span!(
            target: wasmgrid_api::trace::TARGET,
            "task attempt",
            job = %task.job,
            tenant = %task.tenant,
            stage = task.stage.name(),
            task = task.task,
            attempt = task.attempt,
            outcome = tracing::field::Empty,
        );
        wasmgrid_api::trace::join_job(&span, &task.tenant, &task.job);
        let _span = span.enter();
        let started = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut output = wasmgrid_runtime::Captured::default();
            let result = wasmgrid_jobs::task::run(
                &function,
                &ticket.task,
                &artifacts,
                Some(ticket.stop.clone()),
                &mut output,
                segments,
            );
            ticket.logs.keep(&ticket.task, output.kept(result.as_ref().err().map(|e| e as &dyn std::fmt::Display)));
            result
        }));
        ticket.leased.took(started.elapsed());
        let outcome = match result {
            _ if ticket.stop.load(Ordering::Relaxed) => None,
            Ok(Ok(written)) => Some(written.outcome()),
            Ok(Err(e @ (wasmgrid_runtime::Error::Setup(_) | wasmgrid_runtime::Error::Aggregate(_)))) => {
                Some(TaskOutcome::Unrunnable { error: e.to_string() })
            }
            Ok(Err(e)) => Some(TaskOutcome::Failed { error: e.to_string() }),
            Err(_) => Some(TaskOutcome::Failed { error: "the attempt panicked on its node".into() }),
        };
        let ended = match &outcome {
            None => "stopped",
            Some(TaskOutcome::Failed { .. }) => "failed",
            Some(TaskOutcome::Unrunnable { .. }) => "unrunnable",
            Some(TaskOutcome::Done { .. }) => "done",
        };
        span.record("outcome", ended);
        drop(_span);
        ticket.finish(outcome);
    })
}

/// Work for a batch thread, given the thread's segments.
type Job = Box<dyn FnOnce(&mut Segments) + Send>;

/// The threads batch attempts run on, made once (a thread per attempt
/// would map and unmap a stack each time, contending with every other
/// thread's page faults), each at the batch priority and with its own
/// segments for small outputs. They take leased attempts from one queue,
/// first leased first run.
struct Pool {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Pool {
    fn new(threads: usize, priority: TaskPriority) -> Pool {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("wasmgrid-task-{i}")).spawn(move || {
                lower_priority(priority);
                let mut segments = Segments::default();
                loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(&mut segments),
                        Err(_) => return,
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!("cannot start a batch thread: {e}");
            }
        }
        Pool { jobs }
    }

    /// Queues `job`; without a batch thread (none could be started), it
    /// runs on the async runtime's blocking pool instead.
    fn run(&self, job: Job) {
        if let Err(std::sync::mpsc::SendError(job)) = self.jobs.send(job) {
            tokio::task::spawn_blocking(move || job(&mut Segments::default()));
        }
    }
}

/// The CPU priority of batch attempts, below per-request calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPriority {
    /// A `nice` increment, 0 (the same as calls) to 19.
    Nice(i32),
    /// Linux's `SCHED_IDLE`: attempts run only on CPU time no call wants,
    /// and a call that wakes up takes the CPU from them at once.
    Idle,
}

impl std::str::FromStr for TaskPriority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "idle" {
            return Ok(TaskPriority::Idle);
        }
        match s.parse::<i32>() {
            Ok(n) if (0..=19).contains(&n) => Ok(TaskPriority::Nice(n)),
            _ => Err(format!("`{s}` is neither `idle` nor a nice increment from 0 to 19")),
        }
    }
}

impl std::fmt::Display for TaskPriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskPriority::Nice(n) => write!(f, "{n}"),
            TaskPriority::Idle => f.write_str("idle"),
        }
    }
}

/// Lowers the calling thread's CPU priority (on Linux, priority is per
/// thread); nothing for `Nice(0)` or where that is not possible.
#[allow(unsafe_code)]
fn lower_priority(priority: TaskPriority) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid, getpriority, setpriority and sched_setscheduler take
    // plain integers and a parameter struct that lives across the call;
    // a failure leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        match priority {
            TaskPriority::Nice(nice) if nice > 0 => {
                let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (now + nice).min(19));
            }
            TaskPriority::Nice(_) => {}
            TaskPriority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                if libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) != 0 {
                    tracing::warn!("batch attempts could not be given SCHED_IDLE; they run at the calls' priority");
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

/// Sends finished attempts in batches: whatever finished while the last
/// batch was on its way goes in the next one.
async fn report(client: Arc<Client>, node: String, mut rx: mpsc::UnboundedReceiver<TaskReport>) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut reports = vec![first];
        // Gather what else finishes in the next few milliseconds: one
        // report (one consensus entry) for many tiny tasks. Sleeping
        // rather than waiting on the channel means a finished attempt
        // never wakes this task; it is picked up at the end.
        tokio::time::sleep(REPORT_GATHER).await;
        while reports.len() < MAX_REPORT {
            match rx.try_recv() {
                Ok(r) => reports.push(r),
                Err(_) => break,
            }
        }
        let request = ReportRequest { node: node.clone(), reports };
        // Given up after a while: the tasks run again elsewhere.
        for _ in 0..120 {
            match client.report(&request).await {
                Ok(_) => {
                    if failing {
                        tracing::info!("task reports reach the control plane again");
                        failing = false;
                    }
                    break;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("cannot report {} finished task(s), retrying: {e}", request.reports.len());
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}
