//! Metering and metrics: what each function's calls used (the usage the
//! node reports with its heartbeat), the Prometheus series `/metrics`
//! serves, and the CPU time a call takes on its thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use wasmgrid_api::{Answer, CallLog, Failure, FailureCode, FunctionUsage, LATENCY_BOUNDS_US, latency_bucket};

use crate::Gateway;

/// One function's metric series, looked up once when a version is made
/// ready: each is a handle on the series in the registry, so a call counts
/// itself without a lookup by labels.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) latency: Histogram,
    /// Requests answered 200.
    pub(crate) ok: Counter,
    pub(crate) inflight: Gauge,
    /// Seconds its calls spent in `gpu` calls.
    pub(crate) gpu_seconds: GpuSeconds,
}

/// One version's series, by its role: `active`, or the candidate of a
/// `canary` or a `shadow`.
#[derive(Debug, Clone)]
pub(crate) struct VersionSeries {
    calls: Counter,
    errors: Counter,
    seconds: Histogram,
}

impl VersionSeries {
    /// Counts one call of the version that took `took` in the guest.
    pub(crate) fn observe(&self, took: Duration, failed: bool) {
        self.calls.inc();
        if failed {
            self.errors.inc();
        }
        self.seconds.observe(took.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VersionLabels {
    pub(crate) tenant: String,
    pub(crate) function: String,
    pub(crate) version: u64,
    pub(crate) role: &'static str,
}

/// Calls whose logs a node keeps per function (the latest).
pub(crate) const KEPT_CALL_LOGS: usize = 64;

/// What one function's calls used on this node, since it started, and
/// what its latest calls logged.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    pub(crate) logs: Mutex<VecDeque<CallLog>>,
    calls: AtomicU64,
    pub(crate) errors: AtomicU64,
    wall_us: AtomicU64,
    cpu_us: AtomicU64,
    pub(crate) gpu_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Calls by wall time, in the buckets of [`LATENCY_BOUNDS_US`].
    latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
}

impl Meter {
    /// Counts one answered call.
    fn charge(&self, response: &Response, took: Duration, bytes_in: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !response.status().is_success() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = took.as_micros() as u64;
        self.wall_us.fetch_add(us, Ordering::Relaxed);
        self.latency[latency_bucket(us)].fetch_add(1, Ordering::Relaxed);
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

/// Runs a short call inline, charging its wall time to `meter` as CPU time
/// (nothing else runs on this thread meanwhile, so it is the CPU time plus
/// any time the OS preempted the thread): reading the thread's CPU clock
/// takes two system calls, a tenth of a short call's cost.
pub(crate) fn timed<T>(meter: &Meter, f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    meter.cpu_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    (out, took)
}

/// Runs `f`, charging the CPU time it takes on this thread to `meter`.
pub(crate) fn metered<T>(meter: &Meter, f: impl FnOnce() -> T) -> T {
    let before = thread_cpu();
    let out = f();
    meter.cpu_us.fetch_add((thread_cpu().saturating_sub(before)).as_micros() as u64, Ordering::Relaxed);
    out
}

pub(crate) type GpuSeconds = Counter<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FunctionLabels {
    pub(crate) tenant: String,
    pub(crate) function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabels {
    pub(crate) tenant: String,
    pub(crate) function: String,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    tenant: String,
    function: String,
    kind: String,
}

fn latency_histogram() -> Histogram {
    // 25 µs to 10 s, the buckets heartbeats report too.
    Histogram::new(LATENCY_BOUNDS_US.map(|us| us as f64 / 1e6))
}

pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) requests: Family<StatusLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    pub(crate) latency: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    pub(crate) inflight: Family<FunctionLabels, Gauge>,
    pub(crate) gpu_seconds: Family<FunctionLabels, GpuSeconds>,
    version_calls: Family<VersionLabels, Counter>,
    version_errors: Family<VersionLabels, Counter>,
    version_seconds: Family<VersionLabels, Histogram, fn() -> Histogram>,
    pub(crate) slots_running: Gauge,
    pub(crate) slots_waiting: Gauge,
    /// Calls sent on to the node holding their function.
    pub(crate) forwarded: Family<FunctionLabels, Counter>,
    /// Function versions held here, and placed elsewhere.
    pub(crate) held: Gauge,
    pub(crate) placed_elsewhere: Gauge,
    /// The runtime's own counters, copied in at each scrape.
    pub(crate) inits: Counter,
    pub(crate) loads: Counter,
    pub(crate) evictions: Counter,
    pub(crate) code_cache_bytes: Gauge,
    pub(crate) compiles: Counter,
    /// The triggers' series.
    pub(crate) streams: crate::stream::StreamMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
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
        let version_calls = Family::<VersionLabels, Counter>::default();
        let version_errors = Family::<VersionLabels, Counter>::default();
        let version_seconds =
            Family::<VersionLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "version_calls",
            "Calls each function version ran, by role: active, or the candidate of a canary or shadow",
            version_calls.clone(),
        );
        registry.register("version_call_errors", "Calls of each function version that failed", version_errors.clone());
        registry.register(
            "version_call_duration_seconds",
            "Time each function version's calls took in the guest",
            version_seconds.clone(),
        );
        let slots_running = Gauge::default();
        let slots_waiting = Gauge::default();
        registry.register("node_calls_running", "Calls holding one of the node's call slots", slots_running.clone());
        registry.register(
            "node_calls_waiting",
            "Calls waiting for one of the node's call slots",
            slots_waiting.clone(),
        );
        let forwarded = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "forwarded_calls",
            "Calls of functions placed on other nodes, sent on to one of them",
            forwarded.clone(),
        );
        let (held, placed_elsewhere) = (Gauge::default(), Gauge::default());
        registry.register("functions_held", "Functions this node loads and serves itself", held.clone());
        registry.register(
            "functions_placed_elsewhere",
            "Functions whose calls this node forwards to the nodes they are placed on",
            placed_elsewhere.clone(),
        );
        let (loads, evictions, code_cache_bytes) = (Counter::default(), Counter::default(), Gauge::default());
        registry.register(
            "function_loads",
            "Function versions loaded (compiled, or from the compiled cache)",
            loads.clone(),
        );
        registry.register(
            "code_cache_evictions",
            "Loaded function versions evicted by the code cache budget",
            evictions.clone(),
        );
        registry.register(
            "code_cache_bytes",
            "Compiled code of the function versions loaded now",
            code_cache_bytes.clone(),
        );
        let (inits, compiles) = (Counter::default(), Counter::default());
        registry.register("function_inits", "Function versions whose `init` this node ran", inits.clone());
        registry.register("components_compiled", "Components this node compiled (cache misses)", compiles.clone());
        let streams = crate::stream::StreamMetrics::register(&mut registry);
        Metrics {
            streams,
            registry,
            requests,
            errors,
            latency,
            inflight,
            gpu_seconds,
            version_calls,
            version_errors,
            version_seconds,
            slots_running,
            slots_waiting,
            forwarded,
            held,
            placed_elsewhere,
            inits,
            loads,
            evictions,
            code_cache_bytes,
            compiles,
        }
    }
}

impl Metrics {
    /// The series of one version in one role.
    pub(crate) fn version(&self, labels: &VersionLabels) -> VersionSeries {
        VersionSeries {
            calls: self.version_calls.get_or_create(labels).clone(),
            errors: self.version_errors.get_or_create(labels).clone(),
            seconds: self.version_seconds.get_or_create(labels).clone(),
        }
    }
}

impl Gateway {
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
                latency: m.latency.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
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
    pub(crate) fn record(
        &self,
        (tenant, name): (&str, &str),
        served: Option<(&Meter, &Series)>,
        response: &Response,
        started: Instant,
        bytes_in: u64,
    ) {
        let took = started.elapsed();
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let failure = response.extensions().get::<FailureCode>();
        // Whether this node ever served the name (its meter outlives versions).
        let known = match served {
            Some((meter, series)) => {
                meter.charge(response, took, bytes_in);
                series.latency.observe(took.as_secs_f64());
                if response.status() == StatusCode::OK && failure.is_none() {
                    series.ok.inc();
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

/// `GET /metrics`: Prometheus text, for the admin and nodes.
pub(crate) async fn metrics(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Answer<Response> {
    gateway.operator(&headers)?;
    gateway.metrics.slots_running.set(gateway.slots.in_use() as i64);
    gateway.metrics.slots_waiting.set(gateway.slots.waiting() as i64);
    let stats = gateway.runtime.stats();
    gateway.metrics.inits.inner().store(stats.inits, Ordering::Relaxed);
    gateway.metrics.compiles.inner().store(stats.compiled, Ordering::Relaxed);
    let code = gateway.runtime.code_cache();
    gateway.metrics.loads.inner().store(code.loads, Ordering::Relaxed);
    gateway.metrics.evictions.inner().store(code.evictions, Ordering::Relaxed);
    gateway.metrics.code_cache_bytes.set(code.bytes as i64);
    gateway.metrics.held.set(gateway.table().len() as i64);
    gateway.metrics.placed_elsewhere.set(gateway.remotes().len() as i64);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &gateway.metrics.registry)
        .map_err(|e| Failure::internal(format!("encoding metrics: {e}")))?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
