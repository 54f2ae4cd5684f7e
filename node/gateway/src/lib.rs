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
//! `/v1/routes` take the admin or a node token; `/v1/health` is open.//!
//! Modules, as a request meets them: [`handler`](crate::handler) (the
//! steps every call opens with, scorer calls), `auth` (tokens),
//! `admission` (slots, queues, fair share, the body), `codec` (JSON and
//! Arrow bodies), `wasi` (`wasi:http` components), `served` (a version made
//! ready), `instrument` (metering and `/metrics`), `admin` (health, routes,
//! logs).

// wgpu's types are deep: proving `Send`/`Sync` for what holds a
// runtime's instances needs more than the default 128 levels.
#![recursion_limit = "256"]

mod admin;
mod admission;
mod auth;
mod codec;
pub mod fair;
mod forward;
mod handler;
mod instrument;
mod served;
mod stream;
mod trial;
mod wasi;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use tokio::sync::Semaphore;
use wasmgrid_api::serve::ServeLimits;
use wasmgrid_api::tls::ServerTls;
use wasmgrid_api::{Failure, Grant, Route, TrialSpec, TrialUsage};
use wasmgrid_runtime::logs::JobLogs;
use wasmgrid_runtime::{Function, Runtime};

pub use codec::{ARROW_STREAM, decode_body};
use fair::FairSlots;
pub use forward::{FORWARDED_HEADER, Remote, Remotes};
use instrument::{FunctionLabels, Meter, Metrics, Series, StatusLabels, VersionLabels};
use served::{CallCost, Gate, inline_slots};
pub use served::{Reload, Served, limits};
pub use stream::{BatchError, TriggerSeries};
use trial::{TrialMeter, TrialRun};

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

/// The gateway's state: the route table, admission and metrics.
pub struct Gateway {
    runtime: Arc<Runtime>,
    config: GatewayConfig,
    table: RwLock<Arc<Table>>,
    /// Functions placed on other nodes: their calls are forwarded there.
    remotes: RwLock<Arc<Remotes>>,
    /// Where forwarded calls go out.
    forwarder: reqwest::Client,
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
    /// What each function's trial counted here, by (tenant, name): kept
    /// across route tables while the same two versions are tried.
    trials: Mutex<HashMap<(String, String), Arc<TrialMeter>>>,
    revision: AtomicU64,
    /// Whether a route table from the control plane was ever installed.
    routed: AtomicBool,
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
            remotes: RwLock::new(Arc::new(Remotes::new())),
            forwarder: forward::client(),
            grants: RwLock::new(None),
            failed: RwLock::new(Arc::new(Failed::new())),
            shares: Mutex::new(HashMap::new()),
            meters: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
            trials: Mutex::new(HashMap::new()),
            revision: AtomicU64::new(0),
            routed: AtomicBool::new(false),
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
            .route("/v1/fn/{tenant}/{name}", post(handler::invoke))
            .route("/v1/http/{tenant}/{name}", any(wasi::http_root))
            .route("/v1/http/{tenant}/{name}/", any(wasi::http_root))
            .route("/v1/http/{tenant}/{name}/{*rest}", any(wasi::http_path))
            .route("/v1/logs/{tenant}/{name}", get(admin::call_logs))
            .route("/v1/jobs/{tenant}/{id}/logs", get(admin::attempt_logs))
            .route("/v1/health", get(admin::health))
            .route("/v1/ready", get(admin::ready))
            .route("/v1/routes", get(admin::served_routes))
            .route("/metrics", get(instrument::metrics))
            .fallback(|uri: http::Uri| async move { Failure::not_found(format!("no such endpoint: {}", uri.path())) })
            .with_state(self.clone())
    }

    /// A loaded function made ready to serve `route`; `reload` loads it
    /// again when the code cache evicted it.
    pub fn serve(
        &self,
        route: Route,
        function: Arc<Function>,
        artifacts: wasmgrid_runtime::Artifacts,
        reload: Reload,
    ) -> Served {
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
        let version = VersionLabels {
            tenant: route.tenant.clone(),
            function: route.name.clone(),
            version: route.version,
            role: "active",
        };
        let version_series = self.metrics.version(&version);
        let tenant = Arc::from(route.tenant.as_str());
        let cost = CallCost::new();
        let function = served::Held::new(&function, reload);
        Served {
            route,
            function,
            limits,
            config,
            gate,
            cost,
            meter,
            series,
            tenant,
            artifacts,
            version_series,
            trial: None,
        }
    }

    /// The version `served` loaded, serving `route` as the active version
    /// (placed elsewhere, or a candidate promoted): nothing is loaded again.
    pub fn serve_again(&self, served: &Served, route: Route) -> Served {
        let labels = VersionLabels {
            tenant: route.tenant.clone(),
            function: route.name.clone(),
            version: route.version,
            role: "active",
        };
        Served { version_series: self.metrics.version(&labels), ..served.placed_anew(route) }
    }

    /// `active` serving `route` with `candidate` beside it, as `spec`
    /// says. The candidate's calls count on its own series (its role is
    /// the trial's mode) and in the trial's meter, which carries on from
    /// the last route table while the same two versions are tried the
    /// same way (a shadow made a canary starts counting anew).
    pub fn with_candidate(&self, route: Route, active: Served, candidate: Served, spec: TrialSpec) -> Served {
        let key = (route.tenant.clone(), route.name.clone());
        let (from, to) = (active.route.version, candidate.route.version);
        let fresh = || Arc::new(TrialMeter::new(&route.tenant, &route.name, (from, to), spec.mode));
        let meter = match self.trials.lock() {
            Ok(mut trials) => trials
                .entry(key)
                .and_modify(|m| {
                    if (m.active, m.candidate, m.mode) != (from, to, spec.mode) {
                        *m = fresh();
                    }
                })
                .or_insert_with(fresh)
                .clone(),
            Err(_) => fresh(),
        };
        let labels = VersionLabels {
            tenant: route.tenant.clone(),
            function: route.name.clone(),
            version: to,
            role: spec.mode.name(),
        };
        let candidate = Served { version_series: self.metrics.version(&labels), ..candidate };
        let trial = TrialRun::new(spec, Arc::new(candidate), meter);
        Served { route, trial: Some(Arc::new(trial)), ..active }
    }

    /// What each trial served here counted since it began on this node.
    pub fn trial_usage(&self) -> Vec<TrialUsage> {
        let mut usage: Vec<TrialUsage> =
            self.table().values().filter_map(|s| s.trial.as_ref()).map(|t| t.meter.usage()).collect();
        usage.sort_by(|a, b| (&a.tenant, &a.function).cmp(&(&b.tenant, &b.function)));
        usage
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

    /// The functions placed on other nodes.
    pub fn remotes(&self) -> Arc<Remotes> {
        self.remotes.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Serves `table` from now on (one pointer swap) at `revision`,
    /// forwarding the calls of `remotes`; calls of a function in `failed`
    /// are told why it cannot run here.
    pub fn install(&self, table: Table, remotes: Remotes, failed: Failed, revision: u64) {
        if let Ok(mut trials) = self.trials.lock() {
            trials.retain(|key, _| table.get(key).is_some_and(|s| s.trial.is_some()));
        }
        if let Ok(mut f) = self.failed.write() {
            *f = Arc::new(failed);
        }
        if let Ok(mut r) = self.remotes.write() {
            *r = Arc::new(remotes);
        }
        if let Ok(mut t) = self.table.write() {
            *t = Arc::new(table);
        }
        self.revision.store(revision, Ordering::Relaxed);
        self.routed.store(true, Ordering::Release);
    }

    /// Whether it serves a route table from the control plane (it keeps
    /// serving the last one while the control plane is out of reach).
    pub fn is_routed(&self) -> bool {
        self.routed.load(Ordering::Acquire)
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

    /// Where `tenant/name` is served, when other nodes hold it.
    fn remote(&self, tenant: &str, name: &str) -> Option<Arc<Remote>> {
        self.remotes.read().ok()?.get(&Name(tenant, name)).cloned()
    }
}

/// What a caller is told about a function that is not there, or not theirs.
pub(crate) fn not_deployed_message(tenant: &str, name: &str) -> String {
    format!("function `{tenant}/{name}` is not deployed (or not ready on this node yet)")
}
