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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow_array::RecordBatch;
use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State as Shared};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use wasmgrid_api::{
    Client, ErrorBody, ErrorDetail, Heartbeat, InvokeRequest, InvokeResponse, Route, RouteTable, VERSION_HEADER,
};

use crate::runtime::{Function, Io, Limits, Runtime};
use crate::{Error, Kind};

/// Largest request body the gateway reads.
const MAX_INVOKE_BODY: usize = 16 << 20;
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
    shared: Arc<Shared_>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// The route-table revision this node serves (0 before the first).
    pub fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Relaxed)
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

/// One function version, ready to serve.
struct Served {
    route: Route,
    function: Arc<Function>,
    limits: Limits,
    config: Arc<BTreeMap<String, String>>,
}

type Table = HashMap<(String, String), Arc<Served>>;

#[allow(non_camel_case_types)]
struct Shared_ {
    runtime: Arc<Runtime>,
    table: RwLock<Arc<Table>>,
    revision: AtomicU64,
    inflight: AtomicU64,
    invocations: AtomicU64,
    modules_dir: PathBuf,
}

impl std::fmt::Debug for Shared_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("revision", &self.revision).finish_non_exhaustive()
    }
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
    let url = match &config.advertise {
        Some(url) => wasmgrid_api::normalize_url(url).map_err(|e| AgentError::Config(e.to_string()))?,
        None if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    let client = |timeout| Client::new(&config.control_plane, timeout).map_err(|e| AgentError::Config(e.to_string()));
    let heartbeat_client = client(Duration::from_secs(5))?;
    let poll_client = client(POLL_WAIT + Duration::from_secs(10))?;

    let shared = Arc::new(Shared_ {
        runtime,
        table: RwLock::new(Arc::new(Table::new())),
        revision: AtomicU64::new(0),
        inflight: AtomicU64::new(0),
        invocations: AtomicU64::new(0),
        modules_dir,
    });
    let background = vec![
        tokio::spawn(watch(shared.clone(), poll_client)),
        tokio::spawn(heartbeats(shared.clone(), heartbeat_client, id.clone(), url.clone())),
    ];

    let router = Router::new()
        .route("/v1/fn/{tenant}/{name}", post(invoke).layer(DefaultBodyLimit::max(MAX_INVOKE_BODY)))
        .route("/v1/health", get(health))
        .route("/v1/routes", get(served_routes))
        .fallback(|uri: axum::http::Uri| async move {
            failure(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint: {}", uri.path()))
        })
        .with_state(shared.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    tracing::info!(node = %id, %url, "node gateway serving");
    Ok(Agent { id, addr, url, shared, shutdown: Some(tx), server, background })
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

async fn heartbeats(shared: Arc<Shared_>, client: Client, id: String, url: String) {
    let mut failing = false;
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let warm = {
            let table = shared.table.read().map(|t| t.clone()).unwrap_or_default();
            let mut warm: Vec<String> = table.values().map(|s| s.route.module.clone()).collect();
            warm.sort();
            warm.dedup();
            warm
        };
        let beat = Heartbeat {
            address: url.clone(),
            inflight: shared.inflight.load(Ordering::Relaxed),
            invocations: shared.invocations.load(Ordering::Relaxed),
            warm,
            revision: shared.revision.load(Ordering::Relaxed),
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

async fn watch(shared: Arc<Shared_>, client: Client) {
    let mut since = 0;
    let mut failing = false;
    loop {
        match client.routes(since, POLL_WAIT).await {
            Ok(table) => {
                if failing {
                    tracing::info!(control_plane = client.current_url(), "route updates resumed");
                    failing = false;
                }
                if table.revision != since || since == 0 {
                    since = table.revision;
                    install(&shared, &client, table).await;
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

/// Makes every route of `table` ready, then serves the new table.
async fn install(shared: &Arc<Shared_>, client: &Client, table: RouteTable) {
    let current = shared.table.read().map(|t| t.clone()).unwrap_or_default();
    let mut next = Table::new();
    for route in table.routes {
        let key = (route.tenant.clone(), route.name.clone());
        if let Some(served) = current.get(&key).filter(|s| s.route == route) {
            next.insert(key, served.clone());
            continue;
        }
        match prepare(shared, client, &route).await {
            Ok(function) => {
                let limits = Limits {
                    memory: route.memory,
                    timeout: Duration::from_millis(route.timeout_ms),
                    max_output_bytes: 64 << 20,
                    ..Limits::default()
                };
                let config = Arc::new(route.config.clone());
                tracing::info!(function = %route.name, version = route.version, "ready to serve");
                next.insert(key, Arc::new(Served { route, function, limits, config }));
            }
            Err(e) => {
                tracing::error!(function = %route.name, version = route.version, "cannot serve this version: {e}");
                if let Some(old) = current.get(&key) {
                    next.insert(key, old.clone());
                }
            }
        }
    }
    if let Ok(mut t) = shared.table.write() {
        *t = Arc::new(next);
    }
    shared.revision.store(table.revision, Ordering::Relaxed);
}

/// The module of `route`, fetched (and verified) if this node lacks it, and compiled.
async fn prepare(shared: &Arc<Shared_>, client: &Client, route: &Route) -> Result<Arc<Function>, String> {
    let path = shared.modules_dir.join(format!("{}.wasm", route.module));
    let bytes = match std::fs::read(&path) {
        Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == route.module => bytes,
        _ => {
            let bytes = client.module(&route.module).await.map_err(|e| format!("fetching module: {e}"))?;
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual != route.module {
                return Err(format!("module fetched for {} hashes to {actual}; refusing it", route.module));
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("keeping the module in {}: {e}", path.display()))?;
            bytes
        }
    };
    let runtime = shared.runtime.clone();
    tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(|e| format!("compile task: {e}"))?
        .map_err(|e| e.to_string())
}

fn failure(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.into(), message: message.into() } };
    (status, axum::Json(body)).into_response()
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

async fn health(Shared(shared): Shared<Arc<Shared_>>) -> Response {
    let body = serde_json::json!({ "status": "ok", "revision": shared.revision.load(Ordering::Relaxed) });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn served_routes(Shared(shared): Shared<Arc<Shared_>>) -> Response {
    let table = shared.table.read().map(|t| t.clone()).unwrap_or_default();
    let mut routes: Vec<Route> = table.values().map(|s| s.route.clone()).collect();
    routes.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    let body = RouteTable { revision: shared.revision.load(Ordering::Relaxed), routes };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Decrements the in-flight count however the call ends.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn invoke(
    Shared(shared): Shared<Arc<Shared_>>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<axum::Json<InvokeRequest>, JsonRejection>,
) -> Response {
    let UrlPath((tenant, name)) = match path {
        Ok(p) => p,
        Err(r) => return failure(StatusCode::BAD_REQUEST, "bad_request", r.body_text()),
    };
    let request = match body {
        Ok(b) => b.0,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return failure(r.status(), "too_large", format!("the body is over the limit of {MAX_INVOKE_BODY} bytes"));
        }
        Err(r) => {
            let hint = "expected {\"rows\": [{...}, ...]}";
            return failure(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("malformed JSON body: {}; {hint}", r.body_text()),
            );
        }
    };
    // One clone of the pointer: this request is served by this table's
    // version whatever is installed meanwhile.
    let served = shared.table.read().ok().and_then(|t| t.get(&(tenant.clone(), name.clone())).cloned());
    let Some(served) = served else {
        return failure(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("function `{tenant}/{name}` is not deployed (or not ready on this node yet)"),
        );
    };
    if served.function.kind() != Kind::Scorer {
        return failure(
            StatusCode::BAD_REQUEST,
            "wrong_kind",
            format!("`{name}` is a {}; only scorers are invoked per request", served.function.kind().name()),
        );
    }

    shared.inflight.fetch_add(1, Ordering::Relaxed);
    let counter = shared.clone();
    let job = served.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _guard = InFlight(&counter.inflight);
        score(&job, &request.rows)
    })
    .await;
    shared.invocations.fetch_add(1, Ordering::Relaxed);
    let rows = match result {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return runtime_failure(&e),
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the call failed: {e}")),
    };
    let version = served.route.version;
    let body = InvokeResponse { function: name, version, rows };
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
        response.headers_mut().insert(VERSION_HEADER, v);
    }
    response
}

type Row = serde_json::Map<String, serde_json::Value>;

/// Scores JSON rows: rows to Arrow (types inferred), a fresh instance, the
/// scorer, and the rows plus score columns back to JSON.
fn score(served: &Served, rows: &[Row]) -> crate::Result<Vec<Row>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let batch = rows_to_batch(rows)?;
    let mut instance = served.function.instantiate(&served.limits, served.config.clone(), Io::default())?;
    let scored = instance.score_arrow(&batch)?;
    batch_to_rows(&scored)
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
