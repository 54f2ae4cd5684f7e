//! The node's HTTP gateway: per-request calls of scorers.
//!
//! `POST /v1/fn/{tenant}/{name}` takes rows as JSON (`{"rows": [...]}` or
//! one object) or as an Arrow IPC stream
//! (`Content-Type: application/vnd.apache.arrow.stream`, answered in kind),
//! runs the function's active version in a fresh pooled instance and answers
//! the rows with the score columns added. The route table is one pointer:
//! a request clones it once, so it finishes on the version it started on
//! whatever is installed meanwhile.
//!
//! Each function has a concurrency limit and a short bounded queue: a call
//! that finds the queue full gets `429`, one that waits longer than the
//! queue timeout gets `503`, both with `Retry-After`, so latency never grows
//! without bound and one busy function does not starve the others. Short
//! calls run on the thread that read the request (never on every one of
//! them); others on tokio's blocking pool.
//! `/metrics` serves Prometheus text: requests by status, errors by kind,
//! latency and calls in flight, per function.
//!
//! Every call carries `Authorization: Bearer TOKEN`, checked against the
//! token hashes the route table brings (the control plane is never asked
//! on the request path, and a node never holds a token): an admin token,
//! or a `full` or `invoke-only` token of the function's tenant. A function
//! deployed `--public` takes calls without one. A token of another tenant
//! gets the same 404 as a function that does not exist. `/metrics` and
//! `/v1/routes` take the admin or a node token; `/v1/health` is open.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmgrid_api::serve::ServeLimits;
use wasmgrid_api::tls::ServerTls;
use wasmgrid_api::{
    AttemptLogs, CallLog, CallLogs, ErrorBody, ErrorDetail, FunctionUsage, GpuPlacement, Grant, InvokeResponse, Role,
    Route, RouteTable, VERSION_HEADER, bearer_token, token_hash,
};

use crate::fair::{FairPermit, FairSlots};
use crate::logs::{JobLogs, Kept};
use crate::runtime::{Function, Io, Limits, Runtime};
use crate::{Error, Kind};

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// How the gateway admits calls.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Calls of one function that run at once.
    pub max_concurrency: usize,
    /// Calls of every function that run at once on this node, shared
    /// fairly between tenants ([`FairSlots`]).
    pub max_calls: usize,
    /// Calls of one function that may wait for a slot; more get 429.
    pub max_queue: usize,
    /// Longest a call waits for a slot; then 503.
    pub queue_timeout: Duration,
    /// Largest request body, in bytes; more gets 413.
    pub max_body: usize,
    /// The listener's time limits and connection cap.
    pub serve: ServeLimits,
    /// The listener's certificate, for HTTPS.
    pub tls: Option<ServerTls>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        GatewayConfig {
            max_concurrency: cores * 2,
            max_calls: cores * 2,
            max_queue: 64,
            queue_timeout: Duration::from_secs(1),
            max_body: 16 << 20,
            serve: ServeLimits::default(),
            tls: None,
        }
    }
}

/// One function's admission: a semaphore and a count of waiters. It is
/// kept across versions, so the limit holds through a version switch.
#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Gate {
    fn new(slots: usize) -> Arc<Gate> {
        Arc::new(Gate { slots: Arc::new(Semaphore::new(slots)), waiting: AtomicUsize::new(0) })
    }
}

/// The limits each call of `route` runs under.
pub fn limits(route: &Route) -> Limits {
    Limits {
        memory: route.memory,
        timeout: Duration::from_millis(route.timeout_ms),
        max_output_bytes: 64 << 20,
        gpu_refused: route.gpu_refused.as_deref().map(Into::into),
        ..Limits::default()
    }
}

/// One function version, ready to serve.
pub struct Served {
    /// What the control plane says to serve.
    pub route: Route,
    function: Arc<Function>,
    limits: Limits,
    config: Arc<BTreeMap<String, String>>,
    gate: Arc<Gate>,
    /// How long its calls take, to choose where the next one runs.
    cost: CallCost,
    /// What its calls used, for usage metering.
    meter: Arc<Meter>,
    /// Its metric series.
    series: Series,
    /// Its tenant, as the node's call slots count it.
    tenant: Arc<str>,
}

/// One function's metric series, looked up once when a version is made
/// ready: each is a handle on the series in the registry, so a call counts
/// itself without a lookup by labels.
#[derive(Debug)]
struct Series {
    latency: Histogram,
    /// Requests answered 200.
    ok: Counter,
    inflight: Gauge,
    /// Seconds its calls spent in `gpu` calls.
    gpu_seconds: GpuSeconds,
}

/// Calls whose logs a node keeps per function (the latest).
const KEPT_CALL_LOGS: usize = 64;

/// What one function's calls used on this node, since it started, and
/// what its latest calls logged.
#[derive(Debug, Default)]
struct Meter {
    logs: Mutex<VecDeque<CallLog>>,
    calls: AtomicU64,
    errors: AtomicU64,
    wall_us: AtomicU64,
    cpu_us: AtomicU64,
    gpu_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Meter {
    /// Counts one answered call.
    fn charge(&self, response: &Response, took: Duration, bytes_in: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !response.status().is_success() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.wall_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        let out = http_body::Body::size_hint(response.body()).exact().unwrap_or(0);
        self.bytes_out.fetch_add(out, Ordering::Relaxed);
    }
}

/// CPU time the calling thread has used.
#[allow(unsafe_code)]
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Calls that may run inline at once: all the async runtime's workers but
/// one, so that one is always free for I/O and other functions.
fn inline_slots() -> usize {
    let workers = match tokio::runtime::Handle::try_current() {
        Ok(h) => h.metrics().num_workers(),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    workers.saturating_sub(1).max(1)
}

/// Runs a short call inline, charging its wall time to `meter` as CPU time
/// (nothing else runs on this thread meanwhile, so it is the CPU time plus
/// any time the OS preempted the thread): reading the thread's CPU clock
/// takes two system calls, a tenth of a short call's cost.
fn timed<T>(meter: &Meter, f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    meter.cpu_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    (out, took)
}

/// Runs `f`, charging the CPU time it takes on this thread to `meter`.
fn metered<T>(meter: &Meter, f: impl FnOnce() -> T) -> T {
    let before = thread_cpu();
    let out = f();
    meter.cpu_us.fetch_add((thread_cpu().saturating_sub(before)).as_micros() as u64, Ordering::Relaxed);
    out
}

type GpuSeconds = Counter<f64, AtomicU64>;

/// A function whose calls average less wall time than this runs inline.
const INLINE_BUDGET: Duration = Duration::from_millis(1);
/// The most one call adds to a function's average: a new function
/// starts there, and a call that ran past it is counted as this long.
const COST_CAP: Duration = Duration::from_millis(16);

/// A moving average of a function's call wall time, in microseconds.
///
/// The average moves an eighth of the way to each call, so a call
/// preempted for a few milliseconds by a busy machine does not send a fast
/// function to the pool, while one call that runs past [`COST_CAP`] does,
/// until about 8 short calls bring it back. A new function starts at the
/// cap and runs on the pool for its first 20 or so calls.
struct CallCost(AtomicU32);

impl CallCost {
    fn new() -> CallCost {
        CallCost(AtomicU32::new(COST_CAP.as_micros() as u32))
    }

    /// Whether calls are short enough to run on a gateway worker.
    fn runs_inline(&self) -> bool {
        self.0.load(Ordering::Relaxed) < INLINE_BUDGET.as_micros() as u32
    }

    fn record(&self, took: Duration) {
        let sample = took.min(COST_CAP).as_micros() as u32;
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| Some(avg - avg / 8 + sample / 8));
    }
}

impl Served {
    /// Ends a call's instance: charges its GPU time and keeps what it
    /// logged (and wrote to stdout and stderr), if anything, with its error.
    fn settle(&self, instance: crate::Instance, error: Option<&Error>) {
        self.charge_gpu(&instance);
        let done = instance.finish();
        let Some(kept) = Kept::of(&done.logs, &done.stdout, &done.stderr, error.map(|e| e.to_string())) else {
            return;
        };
        let entry = CallLog {
            at_ms: crate::logs::now_ms(),
            version: self.route.version,
            error: kept.error,
            lines: kept.lines,
            dropped: kept.dropped,
            stdout: kept.stdout,
            stderr: kept.stderr,
        };
        if let Ok(mut logs) = self.meter.logs.lock() {
            if logs.len() == KEPT_CALL_LOGS {
                logs.pop_front();
            }
            logs.push_back(entry);
        }
    }

    fn charge_gpu(&self, instance: &crate::Instance) {
        let took = instance.gpu_time();
        if !took.is_zero() {
            self.series.gpu_seconds.inc_by(took.as_secs_f64());
            self.meter.gpu_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("route", &self.route).finish_non_exhaustive()
    }
}

/// Functions by (tenant, name).
pub type Table = hashbrown::HashMap<(String, String), Arc<Served>>;

/// A (tenant, name) borrowed from a request, to look a function up in a
/// [`Table`] without copying the names. Hashes as the owned pair does.
#[derive(Hash)]
struct Name<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(String, String)> for Name<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// Functions that could not be made ready, by (tenant, name): the version
/// and why.
pub type Failed = HashMap<(String, String), (u64, String)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    tenant: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    tenant: String,
    function: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    tenant: String,
    function: String,
    kind: String,
}

fn latency_histogram() -> Histogram {
    // 25 µs to 10 s.
    Histogram::new([
        0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        2.5, 5.0, 10.0,
    ])
}

struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    inflight: Family<FunctionLabels, Gauge>,
    gpu_seconds: Family<FunctionLabels, GpuSeconds>,
    slots_running: Gauge,
    slots_waiting: Gauge,
    /// The runtime's own counters, copied in at each scrape.
    inits: Counter,
    compiles: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wasmgrid");
        let requests = Family::<StatusLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Family::<FunctionLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let inflight = Family::<FunctionLabels, Gauge>::default();
        let gpu_seconds = Family::<FunctionLabels, GpuSeconds>::default();
        registry.register("requests", "Per-request calls answered, by HTTP status", requests.clone());
        registry.register("errors", "Per-request calls that failed, by error kind", errors.clone());
        registry.register("request_duration_seconds", "Time from a call's arrival to its answer", latency.clone());
        registry.register("inflight", "Calls running or waiting for a slot", inflight.clone());
        registry.register("gpu_seconds", "Time per-request calls spent in gpu kernels", gpu_seconds.clone());
        let slots_running = Gauge::default();
        let slots_waiting = Gauge::default();
        registry.register("node_calls_running", "Calls holding one of the node's call slots", slots_running.clone());
        registry.register(
            "node_calls_waiting",
            "Calls waiting for one of the node's call slots",
            slots_waiting.clone(),
        );
        let (inits, compiles) = (Counter::default(), Counter::default());
        registry.register("function_inits", "Function versions whose `init` this node ran", inits.clone());
        registry.register("components_compiled", "Components this node compiled (cache misses)", compiles.clone());
        Metrics {
            registry,
            requests,
            errors,
            latency,
            inflight,
            gpu_seconds,
            slots_running,
            slots_waiting,
            inits,
            compiles,
        }
    }
}

/// The gateway's state: the route table, admission and metrics.
pub struct Gateway {
    runtime: Arc<Runtime>,
    config: GatewayConfig,
    table: RwLock<Arc<Table>>,
    /// The tokens accepted, by hash: from the latest route table, as soon
    /// as it arrives (before its functions are ready). `None` until the
    /// first table.
    grants: RwLock<Option<Arc<HashMap<String, Grant>>>>,
    /// Functions whose active version could not be made ready here (and
    /// no earlier one serves): their version and why.
    failed: RwLock<Arc<Failed>>,
    /// Each tenant's calls at once on this node, for tenants with a quota:
    /// the quota and its permits.
    shares: Mutex<HashMap<String, (u64, Arc<Semaphore>)>>,
    /// What each function served here used, by (tenant, name).
    meters: Mutex<HashMap<(String, String), Arc<Meter>>>,
    gates: Mutex<HashMap<(String, String), Arc<Gate>>>,
    revision: AtomicU64,
    inflight: AtomicU64,
    invocations: AtomicU64,
    metrics: Metrics,
    /// Calls that may run on the async workers at once: one fewer than
    /// the workers, so a call that turns slow never stalls them all.
    inline: Arc<Semaphore>,
    /// Calls of any function that may run at once, shared between tenants.
    slots: Arc<FairSlots>,
    /// What batch attempts on this node logged (the worker keeps them).
    job_logs: Arc<JobLogs>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("revision", &self.revision).finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway with an empty route table.
    pub fn new(runtime: Arc<Runtime>, config: GatewayConfig) -> Arc<Gateway> {
        Arc::new(Gateway {
            runtime,
            table: RwLock::new(Arc::new(Table::new())),
            grants: RwLock::new(None),
            failed: RwLock::new(Arc::new(Failed::new())),
            shares: Mutex::new(HashMap::new()),
            meters: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
            revision: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
            metrics: Metrics::new(),
            inline: Arc::new(Semaphore::new(inline_slots())),
            slots: FairSlots::new(config.max_calls),
            job_logs: Arc::default(),
            config,
        })
    }

    /// How it admits calls.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The runtime functions are loaded into.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Where batch attempts on this node keep what they logged.
    pub fn job_logs(&self) -> &Arc<JobLogs> {
        &self.job_logs
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/fn/{tenant}/{name}", post(invoke))
            .route("/v1/http/{tenant}/{name}", any(http_root))
            .route("/v1/http/{tenant}/{name}/", any(http_root))
            .route("/v1/http/{tenant}/{name}/{*rest}", any(http_path))
            .route("/v1/logs/{tenant}/{name}", get(call_logs))
            .route("/v1/jobs/{tenant}/{id}/logs", get(attempt_logs))
            .route("/v1/health", get(health))
            .route("/v1/routes", get(served_routes))
            .route("/metrics", get(metrics))
            .fallback(|uri: http::Uri| async move {
                failure(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint: {}", uri.path()))
            })
            .with_state(self.clone())
    }

    /// A loaded function made ready to serve `route`.
    pub fn serve(&self, route: Route, function: Arc<Function>) -> Served {
        let limits = limits(&route);
        let key = (route.tenant.clone(), route.name.clone());
        let slots = self.config.max_concurrency;
        let gate = match self.gates.lock() {
            Ok(mut gates) => gates.entry(key.clone()).or_insert_with(|| Gate::new(slots)).clone(),
            Err(_) => Gate::new(slots),
        };
        let config = Arc::new(route.config.clone());
        let meter = match self.meters.lock() {
            Ok(mut meters) => meters.entry(key).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let labels = FunctionLabels { tenant: route.tenant.clone(), function: route.name.clone() };
        let ok = StatusLabels { tenant: route.tenant.clone(), function: route.name.clone(), status: 200 };
        let series = Series {
            latency: self.metrics.latency.get_or_create(&labels).clone(),
            ok: self.metrics.requests.get_or_create(&ok).clone(),
            inflight: self.metrics.inflight.get_or_create(&labels).clone(),
            gpu_seconds: self.metrics.gpu_seconds.get_or_create(&labels).clone(),
        };
        let tenant = Arc::from(route.tenant.as_str());
        let cost = CallCost::new();
        Served { route, function, limits, config, gate, cost, meter, series, tenant }
    }

    /// The table being served.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Accepts the tokens of `grants` from now on (and no others), and
    /// holds each tenant of `concurrency` to that many calls at once.
    pub fn accept(&self, grants: &[Grant], concurrency: &BTreeMap<String, u64>) {
        let grants: HashMap<String, Grant> = grants.iter().map(|g| (g.sha256.clone(), g.clone())).collect();
        if let Ok(mut g) = self.grants.write() {
            *g = Some(Arc::new(grants));
        }
        if let Ok(mut shares) = self.shares.lock() {
            shares.retain(|tenant, (quota, _)| concurrency.get(tenant) == Some(quota));
            for (tenant, &quota) in concurrency {
                // A changed quota gets new permits; calls holding old ones finish.
                let permits = usize::try_from(quota).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
                shares.entry(tenant.clone()).or_insert_with(|| (quota, Arc::new(Semaphore::new(permits))));
            }
        }
    }

    /// One of `tenant`'s calls-at-once on this node, if it has a quota:
    /// `429` when all are in use.
    fn tenant_share(&self, tenant: &str) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        let share = self.shares.lock().ok().and_then(|s| s.get(tenant).cloned());
        let Some((quota, permits)) = share else {
            return Ok(None);
        };
        permits.try_acquire_owned().map(Some).map_err(|_| {
            let message =
                format!("tenant `{tenant}` is at its quota of {quota} calls at once on this node; retry later");
            Refusal(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
        })
    }

    /// Serves `table` from now on (one pointer swap) at `revision`; calls
    /// of a function in `failed` are told why it cannot run here.
    pub fn install(&self, table: Table, failed: Failed, revision: u64) {
        if let Ok(mut f) = self.failed.write() {
            *f = Arc::new(failed);
        }
        if let Ok(mut t) = self.table.write() {
            *t = Arc::new(table);
        }
        self.revision.store(revision, Ordering::Relaxed);
    }

    /// Checks what the request's token grants with `check`; the 401 to
    /// answer when it grants nothing.
    fn with_grant<T>(
        &self,
        headers: &HeaderMap,
        check: impl FnOnce(&Grant) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let unauthorized = |message: String| Refusal(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let token = bearer_token(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
            .map_err(|why| unauthorized(format!("{why}: send `Authorization: Bearer TOKEN`")))?;
        let Some(grants) = self.grants.read().ok().and_then(|g| g.clone()) else {
            let message = "this node has not received its route table from the control plane yet; retry shortly";
            return Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message.into()));
        };
        match grants.get(&token_hash(token)) {
            Some(grant) => check(grant),
            None => Err(unauthorized("invalid or revoked token".into())),
        }
    }

    /// Whether the caller may read `tenant`'s logs; the answer to give when
    /// not. Another tenant's logs are a 404 saying `hidden`, like anything
    /// this node has none of.
    fn log_reader(&self, headers: &HeaderMap, tenant: &str, hidden: impl FnOnce() -> String) -> Result<(), Refusal> {
        self.with_grant(headers, |grant| {
            if grant.role != Role::Admin && grant.tenant.as_deref() != Some(tenant) {
                return Err(Refusal(StatusCode::NOT_FOUND, "not_found", hidden()));
            }
            if !grant.role.may_read_logs() {
                let message = format!("a {} token may not read logs", grant.role.name());
                return Err(Refusal(StatusCode::FORBIDDEN, "forbidden", message));
            }
            Ok(())
        })
    }

    /// Whether the caller may call `tenant/name` (served here as `served`);
    /// the answer to give when not. Someone else's function, deployed or
    /// not, is a 404 like any unknown name.
    fn authorize(&self, headers: &HeaderMap, tenant: &str, name: &str, served: Option<&Served>) -> Result<(), Refusal> {
        if served.is_some_and(|s| s.route.public) {
            return Ok(());
        }
        self.with_grant(headers, |grant| {
            let own = grant.role == Role::Admin || grant.tenant.as_deref() == Some(tenant);
            if !own {
                return Err(Refusal(StatusCode::NOT_FOUND, "not_found", not_deployed_message(tenant, name)));
            }
            if !grant.role.may_invoke() {
                let message = format!("a {} token may not call functions", grant.role.name());
                return Err(Refusal(StatusCode::FORBIDDEN, "forbidden", message));
            }
            Ok(())
        })
    }

    /// Admits the admin and nodes (to `/metrics` and `/v1/routes`).
    fn operator(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        self.with_grant(headers, |grant| match grant.role {
            Role::Admin | Role::Node => Ok(()),
            role => Err(Refusal(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("a {} token may not read a node's metrics or routes", role.name()),
            )),
        })
    }

    /// The route-table revision served.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// Calls running now, and calls served since the node started.
    pub fn load(&self) -> (u64, u64) {
        (self.inflight.load(Ordering::Relaxed), self.invocations.load(Ordering::Relaxed))
    }

    /// The version of `tenant/name` this node serves.
    fn lookup(&self, tenant: &str, name: &str) -> Option<Arc<Served>> {
        self.table.read().ok()?.get(&Name(tenant, name)).cloned()
    }

    /// What each function served here used since the node started.
    pub fn usage(&self) -> Vec<FunctionUsage> {
        let meters = self.meters.lock().map(|m| m.clone()).unwrap_or_default();
        let mut usage: Vec<FunctionUsage> = meters
            .into_iter()
            .map(|((tenant, function), m)| FunctionUsage {
                tenant,
                function,
                calls: m.calls.load(Ordering::Relaxed),
                errors: m.errors.load(Ordering::Relaxed),
                wall_us: m.wall_us.load(Ordering::Relaxed),
                cpu_us: m.cpu_us.load(Ordering::Relaxed),
                gpu_us: m.gpu_us.load(Ordering::Relaxed),
                bytes_in: m.bytes_in.load(Ordering::Relaxed),
                bytes_out: m.bytes_out.load(Ordering::Relaxed),
            })
            .filter(|u| u.calls > 0)
            .collect();
        usage.sort_by(|a, b| (&a.tenant, &a.function).cmp(&(&b.tenant, &b.function)));
        usage
    }

    /// Counts an answered call: by status, by error kind when the gateway
    /// made the answer an error, and its latency; and meters it. A served
    /// function's success counts on its own series, without a lookup. A
    /// name this node never served is counted as `-`, so that callers
    /// making up names cannot grow the metrics without bound.
    fn record(
        &self,
        (tenant, name): (&str, &str),
        served: Option<&Served>,
        response: &Response,
        started: Instant,
        bytes_in: u64,
    ) {
        let took = started.elapsed();
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let failure = response.extensions().get::<FailureCode>();
        // Whether this node ever served the name (its meter outlives versions).
        let known = match served {
            Some(s) => {
                s.meter.charge(response, took, bytes_in);
                s.series.latency.observe(took.as_secs_f64());
                if response.status() == StatusCode::OK && failure.is_none() {
                    s.series.ok.inc();
                    return;
                }
                true
            }
            None => {
                let key = (tenant.to_string(), name.to_string());
                let meter = self.meters.lock().ok().and_then(|m| m.get(&key).cloned());
                if let Some(m) = &meter {
                    m.charge(response, took, bytes_in);
                }
                meter.is_some()
            }
        };
        let labels = if known {
            FunctionLabels { tenant: tenant.into(), function: name.into() }
        } else {
            FunctionLabels { tenant: "-".into(), function: "-".into() }
        };
        let metrics = &self.metrics;
        if served.is_none() {
            metrics.latency.get_or_create(&labels).observe(took.as_secs_f64());
        }
        if let Some(FailureCode(kind)) = failure {
            let errors =
                ErrorLabels { tenant: labels.tenant.clone(), function: labels.function.clone(), kind: kind.clone() };
            metrics.errors.get_or_create(&errors).inc();
        }
        let status = response.status().as_u16();
        metrics
            .requests
            .get_or_create(&StatusLabels { tenant: labels.tenant, function: labels.function, status })
            .inc();
    }
}

/// The code of an error answer the gateway made, kept on the response so
/// that [`Gateway::record`] counts the error by kind.
#[derive(Debug, Clone)]
struct FailureCode(String);

/// An error answer: `{"error": {"code", "message"}}`.
pub(crate) fn failure(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.into(), message: message.into() } };
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(FailureCode(code.into()));
    response
}

/// The answer for a function this node does not serve: why it cannot
/// (`500 load_failed`) when its version failed to load here, else `404`.
fn not_served(gateway: &Gateway, tenant: &str, name: &str) -> Response {
    let failed = gateway.failed.read().map(|f| f.clone()).unwrap_or_default();
    match failed.get(&(tenant.to_string(), name.to_string())) {
        Some((version, why)) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "load_failed",
            format!("version {version} of `{tenant}/{name}` cannot run on this node: {why}"),
        ),
        None => not_deployed(tenant, name),
    }
}

/// Why a caller is turned away: the status, code and message of the answer.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self.0 {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => busy(self.0, self.1, self.2),
            status => failure(status, self.1, self.2),
        }
    }
}

fn not_deployed_message(tenant: &str, name: &str) -> String {
    format!("function `{tenant}/{name}` is not deployed (or not ready on this node yet)")
}

fn not_deployed(tenant: &str, name: &str) -> Response {
    let message = not_deployed_message(tenant, name);
    failure(StatusCode::NOT_FOUND, "not_found", message)
}

fn busy(status: StatusCode, code: &str, message: String) -> Response {
    let mut response = failure(status, code, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn runtime_failure(e: &Error) -> Response {
    let status = match e {
        Error::Guest { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Timeout { .. } | Error::FuelExhausted { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::BadInputRequest { .. } | Error::Decode { .. } | Error::Input { .. } | Error::WrongKind { .. } => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    failure(status, e.kind(), e.to_string())
}

async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
    let body = serde_json::json!({ "status": "ok", "revision": gateway.revision() });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn served_routes(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(refused) = gateway.operator(&headers) {
        return refused.into_response();
    }
    let mut routes: Vec<Route> = gateway.table().values().map(|s| s.route.clone()).collect();
    routes.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    let body = RouteTable { revision: gateway.revision(), routes, grants: Vec::new(), concurrency: BTreeMap::new() };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The latest calls' logs of `tenant/name` on this node: for the admin,
/// and the tenant's `full` and `read-only` tokens. Another tenant's
/// function is a 404, as for one this node never served.
async fn call_logs(
    State(gateway): State<Arc<Gateway>>,
    UrlPath((tenant, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = gateway.log_reader(&headers, &tenant, || not_deployed_message(&tenant, &name)) {
        return refused.into_response();
    }
    let meter = gateway.meters.lock().ok().and_then(|m| m.get(&(tenant.clone(), name.clone())).cloned());
    let Some(meter) = meter else {
        return not_deployed(&tenant, &name);
    };
    let calls = meter.logs.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default();
    (StatusCode::OK, axum::Json(CallLogs { tenant, function: name, calls })).into_response()
}

/// What the latest attempts of `tenant`'s job `id` on this node logged,
/// for the same tokens as [`call_logs`]. A job with no attempt that logged
/// here, or another tenant's, is a 404.
async fn attempt_logs(
    State(gateway): State<Arc<Gateway>>,
    UrlPath((tenant, job)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let not_here = || format!("no attempt of job `{job}` logged anything on this node");
    if let Err(refused) = gateway.log_reader(&headers, &tenant, not_here) {
        return refused.into_response();
    }
    match gateway.job_logs.get(&tenant, &job) {
        Some(attempts) => (StatusCode::OK, axum::Json(AttemptLogs { tenant, job, attempts })).into_response(),
        None => failure(StatusCode::NOT_FOUND, "not_found", not_here()),
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(refused) = gateway.operator(&headers) {
        return refused.into_response();
    }
    gateway.metrics.slots_running.set(gateway.slots.in_use() as i64);
    gateway.metrics.slots_waiting.set(gateway.slots.waiting() as i64);
    let stats = gateway.runtime.stats();
    gateway.metrics.inits.inner().store(stats.inits, Ordering::Relaxed);
    gateway.metrics.compiles.inner().store(stats.compiled, Ordering::Relaxed);
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &gateway.metrics.registry) {
        return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("encoding metrics: {e}"));
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Counts a call in flight until dropped.
struct InFlight {
    gateway: Arc<Gateway>,
    gauge: Gauge,
}

impl InFlight {
    fn new(gateway: &Arc<Gateway>, served: &Served) -> Self {
        gateway.inflight.fetch_add(1, Ordering::Relaxed);
        served.series.inflight.inc();
        InFlight { gateway: gateway.clone(), gauge: served.series.inflight.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gateway.inflight.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// A place in a function's queue, held until dropped.
struct Place<'a> {
    waiting: &'a AtomicUsize,
    /// Calls that were waiting when this one took its place.
    ahead: usize,
}

impl<'a> Place<'a> {
    fn take(waiting: &'a AtomicUsize) -> Place<'a> {
        Place { waiting, ahead: waiting.fetch_add(1, Ordering::AcqRel) }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a running call holds: one of the function's slots and one of the
/// node's, given back when dropped.
struct Admitted {
    _function: OwnedSemaphorePermit,
    _node: FairPermit,
}

/// Waits for one of the function's slots, within its queue bound, then for
/// one of the node's, in the fair order between tenants, both within the
/// queue timeout; answers 429 or 503 (with `Retry-After`) otherwise.
async fn admit(gateway: &Gateway, served: &Served, name: &str) -> Result<Admitted, Response> {
    let started = Instant::now();
    let function = admit_function(gateway, served, name).await?;
    let left = gateway.config.queue_timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, gateway.slots.acquire(served.tenant.clone())).await {
        Ok(node) => Ok(Admitted { _function: function, _node: node }),
        Err(_) => {
            let message = format!(
                "this node is running its limit of {} calls at once and had no free slot within {:?}; retry later",
                gateway.slots.capacity(),
                gateway.config.queue_timeout
            );
            Err(busy(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message))
        }
    }
}

async fn admit_function(gateway: &Gateway, served: &Served, name: &str) -> Result<OwnedSemaphorePermit, Response> {
    if let Ok(p) = served.gate.slots.clone().try_acquire_owned() {
        return Ok(p);
    }
    let gate = &served.gate;
    // The place is given back however the wait ends, also when the caller
    // hangs up and the call is dropped mid-wait.
    let place = Place::take(&gate.waiting);
    if place.ahead >= gateway.config.max_queue {
        let message = format!(
            "function `{name}` is at its concurrency limit ({} running, {} waiting); retry later",
            gateway.config.max_concurrency, gateway.config.max_queue
        );
        return Err(busy(StatusCode::TOO_MANY_REQUESTS, "overloaded", message));
    }
    let waited = tokio::time::timeout(gateway.config.queue_timeout, gate.slots.clone().acquire_owned()).await;
    drop(place);
    match waited {
        Ok(Ok(p)) => Ok(p),
        _ => {
            let message =
                format!("function `{name}` had no free slot within {:?}; retry later", gateway.config.queue_timeout);
            Err(busy(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message))
        }
    }
}

/// Rows in and out, in the caller's format.
enum Rows {
    Json { rows: Vec<Row> },
    Arrow { batch: RecordBatch },
}

async fn invoke(
    State(gateway): State<Arc<Gateway>>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    let UrlPath((tenant, name)) = match path {
        Ok(p) => p,
        Err(r) => return failure(StatusCode::BAD_REQUEST, "bad_request", r.body_text()),
    };
    let mut bytes_in = 0;
    // One clone of the pointer: this call is served by this table's version.
    let served = gateway.lookup(&tenant, &name);
    let response = call(&gateway, &tenant, &name, served.as_ref(), request, &mut bytes_in).await;
    gateway.record((&tenant, &name), served.as_deref(), &response, started, bytes_in);
    response
}

/// Reads a request's body, up to the gateway's limit: a declared length
/// over it is refused before a byte is read, and a body that stops
/// arriving fails with `408`.
async fn read_body(gateway: &Gateway, headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, Response> {
    let limit = gateway.config.max_body;
    let too_large = || {
        let message = format!("the body is over the limit of {limit} bytes");
        failure(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(body) => Ok(body),
        Err(e) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large());
                }
                if c.is::<tower_http::timeout::TimeoutError>() {
                    let message = "the body stopped arriving before it was complete";
                    return Err(failure(StatusCode::REQUEST_TIMEOUT, "body_timeout", message));
                }
                cause = c.source();
            }
            Err(failure(StatusCode::BAD_REQUEST, "bad_request", format!("the body could not be read: {e}")))
        }
    }
}

async fn call(
    gateway: &Arc<Gateway>,
    tenant: &str,
    name: &str,
    served: Option<&Arc<Served>>,
    request: axum::extract::Request,
    bytes_in: &mut u64,
) -> Response {
    // Who is calling is known from the headers: a caller without the right
    // is refused before one byte of the body is read.
    if let Err(refused) = gateway.authorize(request.headers(), tenant, name, served.map(|s| &**s)) {
        return refused.into_response();
    }
    let Some(served) = served else {
        return not_served(gateway, tenant, name);
    };
    let arrow = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(ARROW_STREAM));
    let (parts, body) = request.into_parts();
    let body = match read_body(gateway, &parts.headers, body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    *bytes_in = body.len() as u64;
    // Before any work on the body: a tenant over its quota is refused cheaply.
    let share = match gateway.tenant_share(tenant) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let rows = match if arrow { read_arrow(&body) } else { read_json(&body) } {
        Ok(rows) => rows,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "bad_request", message),
    };

    if served.function.kind() != Kind::Scorer {
        let message = match served.function.kind() {
            Kind::Http => format!("`{name}` is a wasi:http component; call it under /v1/http/{tenant}/{name}/"),
            kind => format!("`{name}` is a {}; only scorers are invoked per request", kind.name()),
        };
        return failure(StatusCode::BAD_REQUEST, "wrong_kind", message);
    }
    if served.route.gpu == GpuPlacement::Required && !gateway.runtime.config().gpu.open().info().gpu {
        let message = format!("`{name}` requires a GPU and this node has none; send it to a GPU node");
        return failure(StatusCode::SERVICE_UNAVAILABLE, "no_gpu", message);
    }

    let _inflight = InFlight::new(gateway, served);
    let permit = match admit(gateway, served, name).await {
        Ok(p) => (p, share),
        Err(busy) => return busy,
    };

    let job = served.clone();
    // A function whose recent calls were short runs on this thread,
    // sparing two thread handoffs; anything else goes to the blocking pool.
    // Inline calls never occupy every worker.
    let result = match gateway.inline.clone().try_acquire_owned().ok().filter(|_| served.cost.runs_inline()) {
        Some(inline) => {
            let _held = (permit, inline);
            let (result, took) = timed(&served.meter, || score(&job, rows));
            served.cost.record(took);
            Ok(result)
        }
        None => {
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let started = Instant::now();
                let result = metered(&job.meter, || score(&job, rows));
                job.cost.record(started.elapsed());
                result
            })
            .await
        }
    };
    let rows = match result {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return runtime_failure(&e),
        Err(e) => {
            let message = format!("the call failed: {e}");
            return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", message);
        }
    };
    let version = served.route.version;
    let mut response = match rows {
        Rows::Json { rows } => {
            (StatusCode::OK, axum::Json(InvokeResponse { function: name.to_string(), version, rows })).into_response()
        }
        Rows::Arrow { batch } => match write_arrow(&batch) {
            Ok(bytes) => {
                let mut r = bytes.into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM));
                r
            }
            Err(e) => return runtime_failure(&e),
        },
    };
    response.headers_mut().insert(VERSION_HEADER, HeaderValue::from(version));
    response
}

type Row = serde_json::Map<String, serde_json::Value>;

/// `{"rows": [...]}` or one row object.
fn read_json(body: &[u8]) -> Result<Rows, String> {
    let hint = "expected {\"rows\": [{...}, ...]} or one row object";
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON body: {e}; {hint}"))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(format!("malformed JSON body: not an object; {hint}"));
    };
    let rows = match object.remove("rows") {
        Some(serde_json::Value::Array(rows)) if object.is_empty() => rows
            .into_iter()
            .map(|r| match r {
                serde_json::Value::Object(o) => Ok(o),
                other => Err(format!("malformed JSON body: a row is {other}, not an object; {hint}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(rows) if object.is_empty() => return Err(format!("malformed JSON body: `rows` is {rows}, not a list")),
        Some(rows) => {
            // A row that happens to have a `rows` field among others.
            object.insert("rows".into(), rows);
            vec![object]
        }
        None => vec![object],
    };
    Ok(Rows::Json { rows })
}

/// Decodes a call's body as the gateway does before a guest sees it (the
/// rows, then the columns a guest gets), without running anything; returns
/// the number of rows. For the fuzzer.
#[doc(hidden)]
pub fn decode_body(body: &[u8], arrow: bool) -> Result<usize, String> {
    match if arrow { read_arrow(body)? } else { read_json(body)? } {
        Rows::Json { rows } => {
            if json_to_wit(&rows).is_none() {
                rows_to_batch(&rows).map_err(|e| e.to_string())?;
            }
            Ok(rows.len())
        }
        Rows::Arrow { batch } => Ok(batch.num_rows()),
    }
}

fn read_arrow(body: &[u8]) -> Result<Rows, String> {
    let bad = |e: &dyn std::fmt::Display| format!("malformed Arrow IPC stream: {e}");
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).map_err(|e| bad(&e))?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
    let batch = arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| bad(&e))?;
    Ok(Rows::Arrow { batch })
}

fn write_arrow(batch: &RecordBatch) -> crate::Result<Vec<u8>> {
    let bad = |e: &dyn std::fmt::Display| Error::BadOutput { reason: format!("encoding Arrow: {e}") };
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(|e| bad(&e))?;
    writer.write(batch).map_err(|e| bad(&e))?;
    writer.into_inner().map_err(|e| bad(&e))
}

/// Scores rows in a fresh instance; answers in the format they came in.
fn score(served: &Served, rows: Rows) -> crate::Result<Rows> {
    let batch = match rows {
        Rows::Json { rows } if rows.is_empty() => return Ok(Rows::Json { rows: Vec::new() }),
        // The common case, scalar JSON values, goes straight to the WIT
        // batch and back: no Arrow on the way.
        Rows::Json { rows } => match json_to_wit(&rows) {
            Some(batch) => {
                let mut instance = served.function.instantiate(&served.limits, served.config.clone(), Io::default())?;
                let scores = instance.score(&batch);
                served.settle(instance, scores.as_ref().err());
                return Ok(Rows::Json { rows: merge_json(rows, scores?)? });
            }
            None => {
                let batch = rows_to_batch(&rows)?;
                return score_arrow(served, &batch).and_then(|b| Ok(Rows::Json { rows: batch_to_rows(&b)? }));
            }
        },
        Rows::Arrow { batch } => batch,
    };
    Ok(Rows::Arrow { batch: score_arrow(served, &batch)? })
}

fn score_arrow(served: &Served, batch: &RecordBatch) -> crate::Result<RecordBatch> {
    let mut instance = served.function.instantiate(&served.limits, served.config.clone(), Io::default())?;
    let scores = instance.score_arrow(batch);
    served.settle(instance, scores.as_ref().err());
    scores
}

/// JSON rows as a WIT batch, with the types Arrow's JSON inference would
/// give them (whole numbers `s64`, other numbers `f64`, strings, booleans;
/// absent or null values marked invalid), so a row scores the same as in
/// `wasmgrid run`. `None` for anything else (nested values, mixed types),
/// which takes the Arrow path.
fn json_to_wit(rows: &[Row]) -> Option<crate::bindings::Batch> {
    use crate::bindings::{Batch, Column, Field};
    use serde_json::Value;
    // Usually every row has the first row's fields, in its order.
    let Some(first) = rows.first() else {
        return Some(Batch { rows: 0, fields: Vec::new() });
    };
    let mut names: Vec<&str> = first.keys().map(String::as_str).collect();
    if rows.iter().skip(1).any(|r| r.len() != first.len() || !r.keys().zip(&names).all(|(k, n)| k == n)) {
        let mut seen: std::collections::HashSet<&str> = names.iter().copied().collect();
        for key in rows.iter().flat_map(|r| r.keys()) {
            if seen.insert(key) {
                names.push(key);
            }
        }
    }
    let mut fields = Vec::with_capacity(names.len());
    for name in names {
        let values: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name).filter(|v| !v.is_null())).collect();
        let present = || values.iter().flatten();
        let column = if present().all(|v| v.is_i64()) && present().next().is_some() {
            Column::S64(values.iter().map(|v| v.and_then(Value::as_i64).unwrap_or(0)).collect())
        } else if present().all(|v| v.is_i64() || v.is_f64()) && present().next().is_some() {
            Column::F64(values.iter().map(|v| v.and_then(Value::as_f64).unwrap_or(0.0)).collect())
        } else if present().all(|v| v.is_string()) && present().next().is_some() {
            Column::Str(values.iter().map(|v| v.and_then(Value::as_str).unwrap_or("").to_string()).collect())
        } else if present().all(|v| v.is_boolean()) && present().next().is_some() {
            Column::Boolean(values.iter().map(|v| v.and_then(Value::as_bool).unwrap_or(false)).collect())
        } else {
            return None;
        };
        let valid = values.iter().any(Option::is_none).then(|| values.iter().map(Option::is_some).collect());
        fields.push(Field { name: name.to_string(), values: column, valid });
    }
    Some(Batch { rows: u32::try_from(rows.len()).ok()?, fields })
}

/// Adds a scorer's columns to the JSON rows: a column named like an input
/// field replaces it; null values are left out, as Arrow's JSON writer does.
fn merge_json(mut rows: Vec<Row>, scores: crate::bindings::Batch) -> crate::Result<Vec<Row>> {
    use crate::bindings::Column;
    use serde_json::Value;
    if scores.rows as usize != rows.len() {
        return Err(Error::BadOutput {
            reason: format!("scorer returned {} rows for {} input rows", scores.rows, rows.len()),
        });
    }
    for field in scores.fields {
        let n = match &field.values {
            Column::F32(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::S64(v) => v.len(),
            Column::Str(v) => v.len(),
            Column::Boolean(v) => v.len(),
        };
        if n != rows.len() || field.valid.as_ref().is_some_and(|v| v.len() != rows.len()) {
            return Err(Error::BadOutput {
                reason: format!("column `{}` has {n} values but the batch has {} rows", field.name, rows.len()),
            });
        }
        let valid = |i: usize| field.valid.as_ref().is_none_or(|v| v[i]);
        for (i, row) in rows.iter_mut().enumerate() {
            let value = match &field.values {
                Column::F32(v) => serde_json::Number::from_f64(f64::from(v[i])).map(Value::Number),
                Column::F64(v) => serde_json::Number::from_f64(v[i]).map(Value::Number),
                Column::S64(v) => Some(Value::from(v[i])),
                Column::Str(v) => Some(Value::String(v[i].clone())),
                Column::Boolean(v) => Some(Value::Bool(v[i])),
            };
            match value.filter(|_| valid(i)) {
                Some(value) => {
                    row.insert(field.name.clone(), value);
                }
                None => {
                    row.shift_remove(&field.name);
                }
            }
        }
    }
    Ok(rows)
}

fn rows_to_batch(rows: &[Row]) -> crate::Result<RecordBatch> {
    let bad = |e: &dyn std::fmt::Display| Error::BadInputRequest { reason: format!("rows: {e}") };
    let values: Vec<serde_json::Value> = rows.iter().cloned().map(serde_json::Value::Object).collect();
    let schema = arrow_json::reader::infer_json_schema_from_iterator(values.iter().map(Ok)).map_err(|e| bad(&e))?;
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::new(schema))
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(|e| bad(&e))?;
    decoder.serialize(&values).map_err(|e| bad(&e))?;
    decoder.flush().map_err(|e| bad(&e))?.ok_or_else(|| bad(&"no rows"))
}

fn batch_to_rows(batch: &RecordBatch) -> crate::Result<Vec<Row>> {
    let bad = |e: &dyn std::fmt::Display| Error::BadOutput { reason: format!("encoding rows: {e}") };
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    writer.write(batch).map_err(|e| bad(&e))?;
    writer.finish().map_err(|e| bad(&e))?;
    serde_json::from_slice(&writer.into_inner()).map_err(|e| bad(&e))
}

async fn http_root(
    State(gateway): State<Arc<Gateway>>,
    UrlPath((tenant, name)): UrlPath<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    http_call(gateway, tenant, name, String::new(), request).await
}

async fn http_path(
    State(gateway): State<Arc<Gateway>>,
    UrlPath((tenant, name, rest)): UrlPath<(String, String, String)>,
    request: axum::extract::Request,
) -> Response {
    http_call(gateway, tenant, name, rest, request).await
}

/// Serves a request with a `wasi:http/proxy` component. The component sees
/// the path below `/v1/http/{tenant}/{name}`, so one written for `wasmtime
/// serve` works unchanged.
async fn http_call(
    gateway: Arc<Gateway>,
    tenant: String,
    name: String,
    rest: String,
    request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    let bytes_in = http_body::Body::size_hint(request.body()).exact().unwrap_or(0);
    let served = gateway.lookup(&tenant, &name);
    let response = http_answer(&gateway, &tenant, &name, served.as_ref(), rest, request).await;
    gateway.record((&tenant, &name), served.as_deref(), &response, started, bytes_in);
    response
}

async fn http_answer(
    gateway: &Arc<Gateway>,
    tenant: &str,
    name: &str,
    served: Option<&Arc<Served>>,
    rest: String,
    request: axum::extract::Request,
) -> Response {
    if let Err(refused) = gateway.authorize(request.headers(), tenant, name, served.map(|s| &**s)) {
        return refused.into_response();
    }
    let Some(served) = served else {
        return not_served(gateway, tenant, name);
    };
    if served.function.kind() != Kind::Http {
        let message = format!(
            "`{name}` is a {}, not a wasi:http component; call it at /v1/fn/{tenant}/{name}",
            served.function.kind().name()
        );
        return failure(StatusCode::BAD_REQUEST, "wrong_kind", message);
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(gateway, &parts.headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let mut inner = http::Request::builder().method(parts.method).uri(format!("/{rest}{query}"));
    // The grid's token was for the grid: a private function never sees it.
    // A public one gets every header, for its own authentication.
    let public = served.route.public;
    for (k, v) in &parts.headers {
        if public || k != header::AUTHORIZATION {
            inner = inner.header(k, v);
        }
    }
    if !parts.headers.contains_key(header::HOST) {
        inner = inner.header(header::HOST, "localhost");
    }
    let body =
        http_body_util::BodyExt::map_err(http_body_util::Full::new(body), |never| -> wasmtime_wasi_http::Error {
            match never {}
        });
    let inner = match inner.body(body) {
        Ok(r) => r,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "bad_request", format!("bad request: {e}")),
    };

    let inflight = InFlight::new(gateway, served);
    let share = match gateway.tenant_share(tenant) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let permit = match admit(gateway, served, name).await {
        Ok(p) => (p, share),
        Err(busy) => return busy,
    };
    let (respond, response) = tokio::sync::oneshot::channel();
    let job = served.clone();
    let guest = tokio::task::spawn_blocking(move || {
        let _held = (permit, inflight);
        let mut instance = job.function.instantiate(&job.limits, job.config.clone(), Io::default())?;
        metered(&job.meter, || instance.handle_http(inner, respond))
    });
    match response.await {
        Ok(Ok(response)) => {
            let version = served.route.version;
            let (mut parts, body) = response.into_parts();
            if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
                parts.headers.insert(VERSION_HEADER, v);
            }
            // The body streams while the guest finishes; a failure after
            // this point can only cut the body short, so it is logged.
            let name = name.to_string();
            tokio::spawn(async move {
                if let Ok(Err(e)) = guest.await {
                    tracing::warn!(function = %name, "wasi:http guest failed after answering: {e}");
                }
            });
            Response::from_parts(parts, axum::body::Body::new(body))
        }
        Ok(Err(code)) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "http_error",
            format!("the component answered with error {code:?}"),
        ),
        // The guest never set a response: say why it stopped.
        Err(_) => match guest.await {
            Ok(Err(e)) => runtime_failure(&e),
            Ok(Ok(())) => failure(StatusCode::INTERNAL_SERVER_ERROR, "no_response", "the component set no response"),
            Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the call failed: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_cost_tolerates_a_preempted_call_but_not_a_slow_one() {
        let cost = CallCost::new();
        let fast = Duration::from_micros(300);
        let calls_until_inline = |cost: &CallCost| {
            (0..100)
                .take_while(|_| {
                    !cost.runs_inline() && {
                        cost.record(fast);
                        true
                    }
                })
                .count()
        };

        // A new function starts on the pool, then runs inline.
        assert!(!cost.runs_inline());
        let first = calls_until_inline(&cost);
        assert!((15..30).contains(&first), "inline after {first} calls");

        // Once settled, one call preempted for a few milliseconds, even two,
        // leave it inline.
        (0..30).for_each(|_| cost.record(fast));
        cost.record(Duration::from_millis(3));
        assert!(cost.runs_inline());
        cost.record(Duration::from_millis(3));
        assert!(cost.runs_inline());
        (0..30).for_each(|_| cost.record(fast));

        // A call past the cap sends it to the pool, and short calls bring it back.
        cost.record(Duration::from_secs(5));
        assert!(!cost.runs_inline());
        let back = calls_until_inline(&cost);
        assert!((5..12).contains(&back), "back inline after {back} calls");

        // A function whose calls all take 1.5 ms stays on the pool.
        (0..100).for_each(|_| cost.record(Duration::from_micros(1500)));
        assert!(!cost.runs_inline());
    }

    fn json_rows(body: &str) -> Result<Vec<Row>, String> {
        match read_json(body.as_bytes())? {
            Rows::Json { rows } => Ok(rows),
            Rows::Arrow { .. } => Err("arrow".into()),
        }
    }

    #[test]
    fn json_bodies_are_rows_or_one_row() {
        assert_eq!(json_rows(r#"{"rows": [{"x": 1}, {"x": 2}]}"#).map(|r| r.len()), Ok(2));
        assert_eq!(json_rows(r#"{"x": 1, "y": "a"}"#).map(|r| r.len()), Ok(1));
        let odd = json_rows(r#"{"rows": 3, "x": 1}"#).expect("a row with a rows field");
        assert_eq!(odd[0]["rows"], 3);
        assert!(json_rows(r#"{"rows": 3}"#).is_err_and(|e| e.contains("not a list")));
        assert!(json_rows(r#"{"rows": [1]}"#).is_err_and(|e| e.contains("not an object")));
        assert!(json_rows("[1, 2]").is_err_and(|e| e.contains("not an object")));
        assert!(json_rows("{\"rows\": [").is_err_and(|e| e.contains("malformed JSON")));
    }

    #[test]
    fn json_rows_become_typed_columns_and_scores_merge_back() {
        use crate::bindings::{Batch, Column, Field};
        let rows = json_rows(r#"{"rows": [{"a": 1, "b": 1.5, "s": "x"}, {"a": 2, "b": 2, "t": true}]}"#).expect("rows");
        let batch = json_to_wit(&rows).expect("scalars convert");
        let names: Vec<&str> = batch.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "s", "t"]);
        assert!(matches!(&batch.fields[0].values, Column::S64(v) if v == &[1, 2]));
        assert!(matches!(&batch.fields[1].values, Column::F64(v) if v == &[1.5, 2.0]));
        assert_eq!(batch.fields[2].valid, Some(vec![true, false]));
        assert_eq!(batch.fields[0].valid, None);
        assert!(
            json_to_wit(&json_rows(r#"{"a": [1, 2]}"#).expect("row")).is_none(),
            "nested values take the Arrow path"
        );
        assert!(json_to_wit(&json_rows(r#"{"rows": [{"a": 1}, {"a": "x"}]}"#).expect("rows")).is_none());

        let scores = Batch {
            rows: 2,
            fields: vec![
                Field { name: "a".into(), values: Column::F64(vec![0.5, 0.25]), valid: None },
                Field { name: "z".into(), values: Column::S64(vec![7, 8]), valid: Some(vec![false, true]) },
            ],
        };
        let merged = merge_json(rows.clone(), scores).expect("merge");
        assert_eq!(serde_json::to_string(&merged[0]).expect("json"), r#"{"a":0.5,"b":1.5,"s":"x"}"#);
        assert_eq!(serde_json::to_string(&merged[1]).expect("json"), r#"{"a":0.25,"b":2,"t":true,"z":8}"#);
        let short = Batch { rows: 1, fields: Vec::new() };
        assert!(merge_json(rows, short).is_err());
    }

    #[test]
    fn arrow_streams_round_trip_and_garbage_is_refused() {
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(arrow_array::Float64Array::from(vec![1.0, 2.5])) as arrow_array::ArrayRef,
        )])
        .expect("batch");
        let bytes = write_arrow(&batch).expect("write");
        let Ok(Rows::Arrow { batch: back }) = read_arrow(&bytes) else { panic!("not read back") };
        assert_eq!(back, batch);
        assert!(read_arrow(b"not arrow").is_err_and(|e| e.contains("malformed Arrow")));
    }
}
