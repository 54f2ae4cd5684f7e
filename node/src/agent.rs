//! A node in the grid: registers with the control plane, keeps its route
//! table current, and serves per-request calls on its HTTP gateway.
//!
//! Three tasks share one [`Runtime`]:
//! - the **watcher** long-polls the control plane's route table. When it
//!   changes, every new (function, version) is made ready before it is
//!   served: its module is fetched by sha256 (kept under `DATA/modules`
//!   and verified against the hash) and compiled (kept in `DATA/cache`).
//!   The new table then replaces the old one in one pointer swap, so a
//!   request is served wholly by one version, never a mix;
//! - the **heartbeat** tells the leader every second that the node is
//!   alive, with its load and warm modules (the first one registers it);
//! - the **gateway** answers `POST /v1/fn/{tenant}/{name}` with a fresh
//!   instance per request.
//!
//! The control-plane client tries every replica URL it was given, so a
//! node rides through a leader failover; and since the route table lives
//! in the node, calls keep being served while the control plane is down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use wasmgrid_api::{Client, Heartbeat, RouteTable};

use wasmgrid_gateway::{Failed, Gateway, GatewayConfig, Remote, Remotes, Table};
use wasmgrid_runtime::Runtime;

use crate::modules::{self, Version};
use crate::triggers::Triggers;

/// How long one route-table long-poll waits for a change.
const POLL_WAIT: Duration = Duration::from_secs(20);
/// Between heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);

/// How a node runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control-plane replica URLs (any of them will do).
    pub control_plane: Vec<String>,
    /// Where modules, compiled artifacts and the node's id are kept.
    pub data_dir: PathBuf,
    /// The gateway's address.
    pub listen: SocketAddr,
    /// The URL other machines reach the gateway at (default: from `listen`).
    pub advertise: Option<String>,
    /// The node's id (default: generated once and kept in `DATA/node-id`).
    pub id: Option<String>,
    /// How the gateway admits calls.
    pub gateway: GatewayConfig,
    /// Batch task attempts run at once (0: one per core).
    pub task_slots: usize,
    /// How much lower than per-request calls batch attempts run.
    pub task_priority: crate::worker::TaskPriority,
    /// The token the node calls the control plane with (a `node` token or
    /// the admin token).
    pub token: String,
}

/// A running node.
#[derive(Debug)]
pub struct Agent {
    /// Its id.
    pub id: String,
    /// The gateway's bound address.
    pub addr: SocketAddr,
    /// The gateway's URL as registered.
    pub url: String,
    gateway: Arc<Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// The route-table revision this node serves (0 before the first).
    pub fn revision(&self) -> u64 {
        self.gateway.revision()
    }

    /// Stops the gateway (in-flight calls finish) and the background tasks.
    pub async fn stop(mut self) {
        for task in &self.background {
            task.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The gateway address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Bad flags.
    #[error("{0}")]
    Config(String),
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    Data {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts a node: binds the gateway, then registers and watches in the background.
pub async fn start(config: AgentConfig, runtime: Arc<Runtime>) -> Result<Agent, AgentError> {
    let data = &config.data_dir;
    let modules_dir = data.join("modules");
    std::fs::create_dir_all(&modules_dir).map_err(|source| AgentError::Data { path: modules_dir.clone(), source })?;
    let id = match &config.id {
        Some(id) => id.clone(),
        None => node_id(data)?,
    };
    wasmgrid_api::check_name(&id).map_err(|reason| AgentError::Config(format!("invalid node id `{id}`: {reason}")))?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| AgentError::Bind { addr: config.listen, source })?;
    let scheme = if config.gateway.tls.is_some() { "https" } else { "http" };
    let url = match &config.advertise {
        Some(url) => wasmgrid_api::normalize_url(url).map_err(|e| AgentError::Config(e.to_string()))?,
        None if addr.ip().is_unspecified() => format!("{scheme}://127.0.0.1:{}", addr.port()),
        None => format!("{scheme}://{addr}"),
    };
    let client = |timeout| {
        Client::new(&config.control_plane, timeout)
            .map(|c| c.with_token(Some(config.token.clone())))
            .map_err(|e| AgentError::Config(e.to_string()))
    };
    let heartbeat_client = client(Duration::from_secs(5))?;
    let poll_client = client(POLL_WAIT + Duration::from_secs(10))?;
    let task_client = client(Duration::from_secs(30))?;

    let gateway = Gateway::new(runtime.clone(), config.gateway.clone());
    let slots = match config.task_slots {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let worker = crate::worker::Worker {
        id: id.clone(),
        client: Arc::new(task_client),
        runtime,
        modules_dir: modules_dir.clone(),
        slots,
        priority: config.task_priority,
        logs: gateway.job_logs().clone(),
    };
    let triggers = Triggers::new(gateway.clone(), id.clone());
    let background = vec![
        tokio::spawn(watch(gateway.clone(), triggers.clone(), poll_client, modules_dir, id.clone())),
        tokio::spawn(heartbeats(gateway.clone(), triggers, heartbeat_client, id.clone(), url.clone())),
        tokio::spawn(crate::worker::run(worker)),
    ];
    let router = gateway.router();
    let (tx, rx) = oneshot::channel::<()>();
    let (limits, tls) = (gateway.config().serve, gateway.config().tls.clone());
    let server = tokio::spawn(wasmgrid_api::serve::serve(listener, router, limits, tls, async move {
        let _ = rx.await;
    }));
    tracing::info!(node = %id, %url, "node gateway serving");
    Ok(Agent { id, addr, url, gateway, shutdown: Some(tx), server, background })
}

/// The id kept in `DATA/node-id`, made on first start.
fn node_id(data: &Path) -> Result<String, AgentError> {
    let path = data.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) => Ok(id.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = format!("{:?}{}{}", std::time::SystemTime::now(), std::process::id(), data.display());
            let id = format!("node-{}", &hex::encode(Sha256::digest(seed.as_bytes()))[..8]);
            std::fs::write(&path, &id).map_err(|source| AgentError::Data { path: path.clone(), source })?;
            Ok(id)
        }
        Err(source) => Err(AgentError::Data { path, source }),
    }
}

async fn heartbeats(gateway: Arc<Gateway>, triggers: Arc<Triggers>, client: Client, id: String, url: String) {
    let mut failing = false;
    let info = gateway.runtime().config().gpu.open().info();
    let gpu = info.gpu.then(|| info.adapter.clone());
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (inflight, invocations) = gateway.load();
        let beat = Heartbeat {
            address: url.clone(),
            inflight,
            invocations,
            // Served functions' modules and those compiled for tasks alike.
            warm: gateway.runtime().loaded_modules(),
            revision: gateway.revision(),
            gpu: gpu.clone(),
            usage: gateway.usage(),
            code_cache: gateway.runtime().config().code_cache,
            // The batch worker (crate::worker) runs leased ranges.
            ranges: true,
            // Task assignments' `schema` fixes input column types.
            schemas: true,
            // Aggregators' map tasks write partial states and their reduce
            // tasks merge them.
            aggregators: true,
            trials: gateway.trial_usage(),
            triggers: triggers.usage(),
        };
        match client.heartbeat(&id, &beat).await {
            Ok(_) if failing => {
                tracing::info!(control_plane = client.current_url(), "heartbeats reach the control plane again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!("heartbeat failed (calls are still served): {e}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn watch(gateway: Arc<Gateway>, triggers: Arc<Triggers>, client: Client, modules_dir: PathBuf, id: String) {
    let mut since = 0;
    let mut failing = false;
    loop {
        // The first table without waiting: a grid with no functions yet is
        // at revision 0, and the node is not ready until it has one.
        let wait = if gateway.is_routed() { POLL_WAIT } else { Duration::ZERO };
        match client.routes(since, wait).await {
            Ok(table) => {
                if failing {
                    tracing::info!(control_plane = client.current_url(), "route updates resumed");
                    failing = false;
                }
                if table.revision != since || since == 0 {
                    let revision = table.revision;
                    let (wanted, placed) = (table.triggers.clone(), placements(&table));
                    let complete = install(&gateway, &client, &modules_dir, &id, table).await;
                    // A trigger's consumers run where its function is placed.
                    triggers.set(&wanted, |tenant, function| {
                        placed.get(&(tenant.to_string(), function.to_string())).cloned().unwrap_or_default()
                    });
                    if complete {
                        since = revision;
                    } else {
                        // A version could not be made ready (its module could
                        // not be fetched or kept): try the table again soon.
                        tokio::time::sleep(RETRY_FAILED_ROUTES).await;
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("cannot fetch routes (serving the last table): {e}");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The nodes each function of `table` is placed on, by (tenant, name),
/// sorted by id (a function of a release before placement: every node).
fn placements(table: &RouteTable) -> std::collections::HashMap<(String, String), Vec<String>> {
    let every: Vec<String> = table.nodes.keys().cloned().collect();
    let nodes = |r: &wasmgrid_api::Route| {
        let mut nodes = if r.nodes.is_empty() { every.clone() } else { r.nodes.clone() };
        nodes.sort();
        nodes
    };
    table.routes.iter().map(|r| ((r.tenant.clone(), r.name.clone()), nodes(r))).collect()
}

/// Version `route` made ready: shared with what serves it now (as the
/// active version or as the candidate), else fetched and loaded.
async fn ready(
    gateway: &Gateway,
    client: &Client,
    modules_dir: &Path,
    current: &Table,
    route: &wasmgrid_api::Route,
) -> Result<wasmgrid_gateway::Served, modules::PrepareError> {
    let key = (route.tenant.clone(), route.name.clone());
    let serving = current.get(&key).into_iter().flat_map(|s| [Some(s), s.candidate()]).flatten();
    if let Some(served) = serving.into_iter().find(|s| s.serves(route)) {
        return Ok(gateway.serve_again(served, route.clone()));
    }
    let version = || Version {
        config: Arc::new(route.config.clone()),
        artifacts: route.artifacts.clone(),
        limits: wasmgrid_gateway::limits(route),
    };
    let (function, artifacts) =
        modules::prepare(gateway.runtime(), client, modules_dir, &route.module, version()).await?;
    tracing::info!(function = %route.name, version = route.version, "ready to serve");
    let reload = modules::reloader(gateway.runtime(), modules_dir, &route.module, version());
    Ok(gateway.serve(route.clone(), function, artifacts, reload))
}

/// How long a node waits before trying again to make ready a version whose
/// module could not be fetched or kept.
const RETRY_FAILED_ROUTES: Duration = Duration::from_secs(1);

/// Makes every route of `table` placed on this node (`id`) ready, then
/// serves the new table, forwarding the calls of the others. Returns
/// whether every route could be made ready.
async fn install(gateway: &Gateway, client: &Client, modules_dir: &Path, id: &str, table: RouteTable) -> bool {
    // Tokens take effect at once (a revocation must not wait for compiles).
    gateway.accept(&table.grants, &table.concurrency);
    let mut complete = true;
    let current = gateway.table();
    let mut next = Table::new();
    let mut remotes = Remotes::new();
    let mut failed = Failed::new();
    for route in table.routes {
        let key = (route.tenant.clone(), route.name.clone());
        if !route.placed_on(id) {
            let targets = route.nodes.iter().filter_map(|n| table.nodes.get(n).cloned()).collect();
            remotes.insert(key, Arc::new(Remote::new(route, targets)));
            continue;
        }
        // Nothing changed: the same versions serve on.
        // (A candidate that could not be made ready is tried again.)
        if let Some(served) =
            current.get(&key).filter(|s| s.route == route && s.candidate().is_some() == route.candidate.is_some())
        {
            next.insert(key, served.clone());
            continue;
        }
        let active = match ready(gateway, client, modules_dir, &current, &route).await {
            Ok(served) => served,
            Err(e) => {
                tracing::error!(function = %route.name, version = route.version, "cannot serve this version: {e}");
                // Fetching and keeping a module can succeed on a later try; a
                // module that does not compile would only burn CPU again.
                if e.may_pass() {
                    complete = false;
                }
                match current.get(&key) {
                    Some(old) => {
                        next.insert(key, old.clone());
                    }
                    None => {
                        failed.insert(key, (route.version, e.to_string()));
                    }
                }
                continue;
            }
        };
        // A candidate that cannot be made ready leaves the active version
        // serving alone (and the trial without counts from this node).
        let served = match &route.candidate {
            Some(c) => match ready(gateway, client, modules_dir, &current, &c.route).await {
                Ok(candidate) => gateway.with_candidate(route.clone(), active, candidate, c.trial),
                Err(e) => {
                    let version = c.route.version;
                    tracing::error!(function = %route.name, version, "cannot serve this candidate version: {e}");
                    complete &= !e.may_pass();
                    active.placed_anew(route)
                }
            },
            None => active.placed_anew(route),
        };
        next.insert(key, Arc::new(served));
    }
    gateway.install(next, remotes, failed, table.revision);
    complete
}
