//! The control plane's HTTP API (`/v1`), on axum, and what starts a replica.
//!
//! Every replica serves the whole API. Writes, node heartbeats and the node
//! list need the leader: a follower forwards those requests to the leader
//! (once; a forwarded request that lands on a non-leader is refused) and
//! relays the answer, so clients may talk to any replica. Reads of functions
//! and nodes go through ReadIndex, so they are linearizable wherever they
//! are served. The route table that nodes long-poll and module downloads are
//! served from the replica's own state: both are safe to read stale (a route
//! table carries its revision; a module is named by its hash).
//!
//! Every request but `/v1/health` is authenticated and authorised first
//! ([`auth`]); handlers act on the caller's tenant.
//!
//! Every error is `{"error": {"code", "message"}}` with its status: 400 bad
//! input, 401 no valid token, 403 not allowed, 404 unknown, 409 conflict,
//! 413 too large, 503 no quorum. A write that cannot reach a quorum fails
//! within the request timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State as Shared};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use tokio::sync::oneshot;
use wasmgrid_api::serve::{self, ServeLimits};
use wasmgrid_api::tls::{self, ServerTls};
use wasmgrid_api::*;

use crate::replica::{ProposeError, Replica, ReplicaConfig, Status};
use crate::state::{
    Applied, Command, Function, FunctionSpec, MAX_MODULE_BYTES, StateError, TenantRecord, TokenRecord, Version,
    sha256_hex,
};
use crate::transport::{self, HttpTransport};

mod auth;
mod jobs;
use auth::Caller;
pub use jobs::{DEFAULT_MAX_ATTEMPTS, DEFAULT_PARTITION_SIZE, JobIo};

/// A node is alive while its last heartbeat is younger than this.
pub const NODE_LIVENESS: Duration = Duration::from_secs(3);
/// Default memory limit of a function version.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// Default time limit of one call.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
const MAX_MEMORY: u64 = 4 << 30;
const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
const MAX_CONFIG_BYTES: usize = 64 << 10;
/// Longest a route-table long-poll waits.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// How a replica runs.
#[derive(Clone)]
pub struct Config {
    /// This replica's id.
    pub id: u64,
    /// The address to serve on.
    pub listen: SocketAddr,
    /// Every replica's base URL by id, this one included.
    pub peers: BTreeMap<u64, String>,
    /// Where its sled database lives.
    pub data_dir: PathBuf,
    /// Compact the log after this many applied entries.
    pub snapshot_every: u64,
    /// The Raft tick.
    pub tick: Duration,
    /// Longest a write or linearizable read waits for a quorum.
    pub request_timeout: Duration,
    /// Plans and publishes batch jobs; without it, job requests get 501.
    pub job_io: Option<Arc<dyn JobIo>>,
    /// Runs a new version's `init` before accepting the deploy; without
    /// it, deploys are accepted unchecked and a failing `init` shows on
    /// the nodes.
    pub init_check: Option<Arc<dyn InitCheck>>,
    /// The bootstrap admin token: every replica of a cluster has the same
    /// one (replicas also send it with their Raft traffic).
    pub admin_token: String,
    /// The listener's time limits and connection cap.
    pub serve: ServeLimits,
    /// The listener's certificate, for HTTPS (the peers' URLs are then
    /// `https://` too).
    pub tls: Option<ServerTls>,
    /// Raft traffic and nodes' endpoints need a client certificate the
    /// listener's client CA signed (mutual TLS), on top of their token.
    pub require_client_certificate: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("id", &self.id)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("data_dir", &self.data_dir)
            // Never the token itself: configs end up in logs.
            .field("admin_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A replica with the default timing: 50 ms ticks, 3 s request timeout,
    /// a snapshot every 1000 entries.
    pub fn new(
        id: u64,
        listen: SocketAddr,
        peers: BTreeMap<u64, String>,
        data_dir: PathBuf,
        admin_token: String,
    ) -> Self {
        Config {
            admin_token,
            id,
            listen,
            peers,
            data_dir,
            snapshot_every: 1000,
            tick: Duration::from_millis(50),
            request_timeout: Duration::from_secs(3),
            job_io: None,
            init_check: None,
            serve: ServeLimits::default(),
            tls: None,
            require_client_certificate: false,
        }
    }
}

/// Longest a forwarded deploy may take: the leader compiles the component
/// and runs its `init` before it answers.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a function version's `init` (when its component exports one) with
/// the version's config and memory limit, so that a deploy whose `init`
/// fails is refused while the active version keeps serving. The control
/// plane runs no guest code itself: the binary that starts it supplies this,
/// over the node runtime.
pub trait InitCheck: Send + Sync + std::fmt::Debug {
    /// Runs `module`'s `init`, if it has one; the message to answer 422
    /// with when it fails.
    fn check(&self, module: &[u8], config: &BTreeMap<String, String>, memory: u64) -> Result<(), String>;
}

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The storage could not be opened.
    #[error("cannot open the replica's storage in {dir}: {reason}")]
    Storage {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A running replica and its HTTP server.
#[derive(Debug)]
pub struct Running {
    /// The address it serves on.
    pub addr: SocketAddr,
    /// The replica.
    pub replica: Replica,
    /// Whether it serves HTTPS.
    tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Its base URL, from the address it is bound to.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops serving (in-flight requests finish) and waits for the server.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
        let _ = self.replica.state().flush();
    }
}

/// Binds the listen address, opens storage, starts the replica and serves.
pub async fn start(config: Config) -> Result<Running, StartError> {
    if !config.peers.contains_key(&config.id) {
        return Err(StartError::Config(format!("--peers does not name this replica's id {}", config.id)));
    }
    if config.admin_token.len() < 16 {
        return Err(StartError::Config("the admin token must be at least 16 characters".into()));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StartError::Storage { dir: config.data_dir.clone(), reason: e.to_string() })?;

    let transport = HttpTransport::start(config.id, &config.peers, &config.admin_token)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let mut rc = ReplicaConfig::new(config.id, config.peers.keys().copied().collect(), config.data_dir.clone());
    rc.snapshot_every = config.snapshot_every;
    rc.tick = config.tick;
    rc.request_timeout = config.request_timeout;
    let replica = Replica::start(rc, transport)
        .map_err(|e| StartError::Storage { dir: config.data_dir.clone(), reason: e.to_string() })?;

    let http = tls::client_builder()
        .map_err(StartError::Config)?
        .connect_timeout(Duration::from_millis(500))
        .timeout(config.request_timeout + Duration::from_secs(2))
        .build()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let app = App(Arc::new(Inner {
        replica: replica.clone(),
        peers: config.peers.clone(),
        http,
        request_timeout: config.request_timeout,
        nodes: Mutex::new(HashMap::new()),
        kinds: Mutex::new(HashMap::new()),
        leader_since: Mutex::new(None),
        job_io: config.job_io.clone(),
        init_check: config.init_check.clone(),
        scheduler: Mutex::new(jobs::Scheduler::default()),
        jobs_changed: tokio::sync::Notify::new(),
        admin_hash: token_hash(&config.admin_token),
        require_client_certificate: config.require_client_certificate,
    }));
    tokio::spawn(watch_leadership(app.clone()));
    tokio::spawn(jobs::drive(app.clone()));
    tokio::spawn(watch_gpu_quotas(app.clone()));

    let (tx, rx) = oneshot::channel::<()>();
    let router = router(app);
    let (limits, tls) = (config.serve, config.tls.clone());
    let server = tokio::spawn(serve::serve(listener, router, limits, tls, async move {
        let _ = rx.await;
    }));
    tracing::info!(id = config.id, %addr, "control-plane replica serving");
    Ok(Running { addr, replica, tls: config.tls.is_some(), shutdown: Some(tx), server })
}

#[derive(Clone)]
struct App(Arc<Inner>);

struct Inner {
    replica: Replica,
    peers: BTreeMap<u64, String>,
    http: reqwest::Client,
    request_timeout: Duration,
    /// The leader's record of heartbeats, by node id: never replicated.
    nodes: Mutex<HashMap<String, (Instant, Heartbeat)>>,
    /// The world of each module seen, by sha256.
    kinds: Mutex<HashMap<String, &'static str>>,
    /// When this replica last became leader.
    leader_since: Mutex<Option<Instant>>,
    /// Plans and publishes batch jobs.
    job_io: Option<Arc<dyn JobIo>>,
    /// Runs new versions' `init`.
    init_check: Option<Arc<dyn InitCheck>>,
    /// The leader's running jobs and leased tasks.
    scheduler: Mutex<jobs::Scheduler>,
    /// Woken when tasks become available or jobs change.
    jobs_changed: tokio::sync::Notify,
    /// The sha256 of the admin token.
    admin_hash: String,
    /// Raft and node endpoints need a verified client certificate.
    require_client_certificate: bool,
}

fn router(app: App) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/cluster", get(cluster))
        .route("/v1/modules", post(upload_module).layer(DefaultBodyLimit::max(MAX_MODULE_BYTES)))
        .route("/v1/modules/{sha256}", get(download_module))
        .route("/v1/functions", get(list_functions))
        .route("/v1/functions/{name}", get(show_function).delete(delete_function))
        .route("/v1/functions/{name}/versions", post(deploy))
        .route("/v1/functions/{name}/rollback", post(rollback))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .route("/v1/routes", get(routes))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/tasks/lease", post(jobs::lease))
        .route("/v1/tasks/report", post(jobs::report).layer(DefaultBodyLimit::max(16 << 20)))
        .route("/v1/raft", post(raft).layer(DefaultBodyLimit::max(transport::MAX_BODY)))
        .route("/v1/whoami", get(whoami))
        .route("/v1/usage", get(usage))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{name}", delete(delete_tenant))
        .route("/v1/tenants/{name}/quotas", put(set_quotas))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(app.clone(), to_leader))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth::authenticate))
        .with_state(app)
}

/// An error answer.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

type Answer<T> = Result<T, Failure>;

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Failure { status, code, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn no_quorum(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    fn quota(tenant: &str, what: &str, limit: u64, message: impl std::fmt::Display) -> Self {
        Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("{message}: over tenant `{tenant}`'s `{what}` quota of {limit}"),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        let message = e.to_string();
        match e {
            StateError::InvalidName { .. } | StateError::ChecksumMismatch { .. } => Failure::bad(message),
            StateError::ModuleTooLarge { .. } => Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message),
            StateError::ModuleNotFound { .. }
            | StateError::FunctionNotFound { .. }
            | StateError::VersionNotFound { .. }
            | StateError::JobNotFound { .. }
            | StateError::TenantNotFound { .. }
            | StateError::TokenNotFound { .. } => Failure::not_found(message),
            StateError::TenantExists { .. } | StateError::DefaultTenant => {
                Failure::new(StatusCode::CONFLICT, "conflict", message)
            }
            StateError::Storage(_) => Failure::internal(message),
        }
    }
}

impl From<ProposeError> for Failure {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::State(e) => e.into(),
            ProposeError::NoLeader => Failure::no_quorum(
                "no quorum: the control plane has no leader (a majority of replicas must be up and connected)",
            ),
            ProposeError::Timeout(t) => Failure::no_quorum(format!(
                "no quorum: the request was not committed within {t:?} (a majority of replicas must be up)"
            )),
            ProposeError::Stopped(reason) => Failure::internal(format!("the replica stopped: {reason}")),
        }
    }
}

fn rejected(status: StatusCode, text: String) -> Failure {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Failure::new(status, "too_large", format!("the body is over the limit of {MAX_MODULE_BYTES} bytes"))
    } else {
        Failure::bad(text)
    }
}

fn json_body<T>(body: Result<axum::Json<T>, JsonRejection>) -> Answer<T> {
    body.map(|b| b.0).map_err(|r| rejected(r.status(), format!("malformed JSON body: {}", r.body_text())))
}

fn path_name(path: Result<Path<String>, PathRejection>) -> Answer<String> {
    let Path(name) = path.map_err(|r| Failure::bad(r.body_text()))?;
    check_name(&name).map_err(|reason| Failure::bad(format!("invalid name `{name}`: {reason}")))?;
    Ok(name)
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}

impl App {
    fn status(&self) -> Status {
        self.0.replica.status()
    }

    /// The leader's id and URL, or `None` when this replica leads. Waits a
    /// little for an election under way.
    async fn leader(&self) -> Answer<Option<(u64, String)>> {
        let wait = self.0.request_timeout.min(Duration::from_secs(2));
        if !self.0.replica.wait_for(wait, |s| s.leader != 0).await {
            return Err(ProposeError::NoLeader.into());
        }
        let status = self.status();
        if status.is_leader {
            return Ok(None);
        }
        match self.0.peers.get(&status.leader) {
            Some(url) => Ok(Some((status.leader, url.clone()))),
            None => Err(Failure::internal(format!("the leader {} is not in --peers", status.leader))),
        }
    }

    /// A function of `tenant` from this replica's state; 404 if it has none.
    fn function(&self, tenant: &str, name: String) -> Answer<Function> {
        let f = self.0.replica.state().function(tenant, &name)?;
        Ok(f.ok_or(StateError::FunctionNotFound { tenant: tenant.into(), name })?)
    }

    async fn propose(&self, command: Command) -> Answer<Applied> {
        Ok(self.0.replica.propose(command).await?)
    }

    async fn barrier(&self) -> Answer<()> {
        Ok(self.0.replica.read_barrier().await?)
    }

    /// A stored module's bytes: from this replica's state, after a read
    /// barrier if it has not applied the upload yet; 404 if it was never stored.
    async fn module(&self, sha256: &str) -> Answer<Vec<u8>> {
        let state = self.0.replica.state();
        if let Some(bytes) = state.module(sha256)? {
            return Ok(bytes);
        }
        self.barrier().await?;
        Ok(state.module(sha256)?.ok_or_else(|| StateError::ModuleNotFound { sha256: sha256.into() })?)
    }

    /// Refuses a function that needs a GPU when no live node has one.
    fn require_gpu_node(&self, name: &str) -> Answer<()> {
        let nodes = self.0.nodes.lock().map_err(poisoned)?;
        let any = nodes.values().any(|(at, beat)| at.elapsed() < NODE_LIVENESS && beat.gpu.is_some());
        if any {
            return Ok(());
        }
        Err(Failure::new(
            StatusCode::CONFLICT,
            "no_gpu_node",
            format!(
                "function `{name}` requires a GPU, and no live node has one (start a node with a GPU, or deploy with `--gpu preferred` to run anywhere)"
            ),
        ))
    }

    /// The world of a stored module: from memory, else by reading it.
    async fn kind_of(&self, sha256: &str) -> Answer<&'static str> {
        if let Some(kind) = self.0.kinds.lock().map_err(poisoned)?.get(sha256) {
            return Ok(kind);
        }
        let bytes = self.module(sha256).await?;
        let kind = crate::module::inspect(&bytes).map_err(|e| Failure::internal(format!("stored module: {e}")))?;
        self.0.kinds.lock().map_err(poisoned)?.insert(sha256.to_string(), kind);
        Ok(kind)
    }
}

fn poisoned<T>(_: T) -> Failure {
    Failure::internal("a lock was poisoned")
}

/// Sends requests that need the leader to it, when this replica is not it.
/// A leader that cannot be reached (it just died) is waited out: the
/// request goes to whichever replica is elected next, within the request
/// timeout.
async fn to_leader(Shared(app): Shared<App>, request: Request, next: Next) -> Response {
    if let Some(refused) = app.certificate_refusal(&request) {
        return refused.into_response();
    }
    let path = request.uri().path();
    // Node heartbeats (liveness, usage) live in the leader's memory only.
    let needs_leader =
        (request.method() != Method::GET && path != "/v1/raft") || path == "/v1/nodes" || path == "/v1/usage";
    if !needs_leader {
        return next.run(request).await;
    }
    let deadline = Instant::now() + app.0.request_timeout;
    let (id, url) = match app.leader().await {
        Ok(None) => return next.run(request).await,
        Ok(Some(leader)) => leader,
        Err(e) => return e.into_response(),
    };
    if request.headers().contains_key(FORWARDED_HEADER) {
        return Failure::no_quorum(format!(
            "no quorum: replica {} is not the leader and the request was already forwarded once",
            app.0.replica.id()
        ))
        .into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_MODULE_BYTES + (1 << 20)).await {
        Ok(b) => b,
        Err(_) => {
            let message = format!("the body is over the limit of {MAX_MODULE_BYTES} bytes");
            return Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message).into_response();
        }
    };
    let mut leader = (id, url);
    loop {
        let failure = match forward(&app, leader.0, &leader.1, &parts, body.clone()).await {
            Ok(response) => return response,
            Err(Unreached::Maybe(failure)) => return failure.into_response(),
            Err(Unreached::Never(failure)) => failure,
        };
        // The leader is gone and never saw the request: wait for the next
        // one and try it. (A request that may have reached it is not sent
        // twice: a deploy must not make two versions.)
        let gone = leader.0;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !app.0.replica.wait_for(left, |s| s.leader != 0 && s.leader != gone).await {
            return failure.into_response();
        }
        match app.leader().await {
            Ok(None) => return next.run(Request::from_parts(parts, Body::from(body))).await,
            Ok(Some(l)) => leader = l,
            Err(e) => return e.into_response(),
        }
    }
}

/// Why a forwarded request got no answer.
enum Unreached {
    /// The connection failed: the leader never saw the request.
    Never(Failure),
    /// It failed later: the leader may have acted on it.
    Maybe(Failure),
}

/// Relays a request to the leader. Fails only when the leader cannot be
/// reached; any answer it gives, errors included, is relayed.
async fn forward(
    app: &App,
    leader: u64,
    url: &str,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Result<Response, Unreached> {
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let mut outgoing = app
        .0
        .http
        .request(parts.method.clone(), format!("{url}{path}"))
        .header(FORWARDED_HEADER, app.0.replica.id().to_string())
        .body(body);
    if parts.method == Method::POST && parts.uri.path().starts_with("/v1/functions/") {
        // A deploy runs the version's `init` on the leader first: a compile
        // and a run, each bounded on its own.
        outgoing = outgoing.timeout(DEPLOY_TIMEOUT);
    }
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::HeaderName::from_static(TENANT_HEADER)] {
        if let Some(value) = parts.headers.get(&name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = outgoing.send().await.map_err(|e| {
        let failure =
            Failure::no_quorum(format!("no quorum: the leader (replica {leader} at {url}) cannot be reached: {e}"));
        if e.is_connect() { Unreached::Never(failure) } else { Unreached::Maybe(failure) }
    })?;
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await.map_err(|e| {
        Unreached::Maybe(Failure::no_quorum(format!("no quorum: the leader (replica {leader}) stopped answering: {e}")))
    })?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(response)
}

/// Records when this replica becomes leader (node liveness starts over).
async fn watch_leadership(app: App) {
    let mut rx = app.0.replica.subscribe();
    let mut leading = false;
    loop {
        let now_leading = rx.borrow_and_update().is_leader;
        if now_leading != leading {
            leading = now_leading;
            if let Ok(mut since) = app.0.leader_since.lock() {
                *since = leading.then(Instant::now);
            }
            if let Ok(mut nodes) = app.0.nodes.lock() {
                nodes.clear();
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn health(Shared(app): Shared<App>) -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok", "id": app.0.replica.id() }))
}

async fn no_route(method: Method, uri: axum::http::Uri) -> Failure {
    Failure::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> Failure {
    Failure::new(StatusCode::METHOD_NOT_ALLOWED, "bad_request", format!("{method} is not allowed on {}", uri.path()))
}

async fn cluster(Shared(app): Shared<App>) -> Response {
    let status = app.status();
    let progress: HashMap<u64, u64> = status.progress.iter().copied().collect();
    let members = app
        .0
        .peers
        .iter()
        .map(|(&id, url)| {
            let matched = progress.get(&id).copied();
            Member { id, url: url.clone(), matched, lag: matched.map(|m| status.commit.saturating_sub(m)) }
        })
        .collect();
    let leader = (status.leader != 0).then_some(status.leader);
    let body = ClusterStatus {
        id: status.id,
        role: if status.is_leader { "leader" } else { "follower" }.into(),
        leader,
        leader_url: leader.and_then(|l| app.0.peers.get(&l).cloned()),
        term: status.term,
        commit: status.commit,
        applied: status.applied,
        first_index: status.first_index,
        snapshots_installed: status.snapshots_installed,
        members,
    };
    json(StatusCode::OK, &body)
}

async fn upload_module(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Response> {
    let bytes = body.map_err(|r| rejected(r.status(), r.body_text()))?;
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(StateError::ModuleTooLarge { size: bytes.len(), limit: MAX_MODULE_BYTES }.into());
    }
    let kind = crate::module::inspect(&bytes).map_err(|e| Failure::bad(e.0))?;
    crate::module::check_pool_limits(&bytes)
        .map_err(|message| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "over_limits", message))?;
    let sha256 = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let state = app.0.replica.state();
    if let Some(limit) = app.quotas(&caller.tenant)?.module_bytes
        && !state.owns_module(&caller.tenant, &sha256)?
    {
        let stored = state.module_bytes(&caller.tenant)?;
        if stored + size > limit {
            let message = format!("storing this {size}-byte module would make {} bytes of modules", stored + size);
            return Err(Failure::quota(&caller.tenant, "module_bytes", limit, message));
        }
    }
    let command = Command::PutModule { tenant: caller.tenant, sha256: sha256.clone(), bytes: bytes.to_vec() };
    let applied = app.propose(command).await?;
    app.0.kinds.lock().map_err(poisoned)?.insert(sha256.clone(), kind);
    let existed = matches!(applied, Applied::ModuleStored { existed: true, .. });
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok(json(status, &ModuleInfo { sha256, size, kind: kind.into(), existed }))
}

async fn download_module(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    sha256: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let Path(sha256) = sha256.map_err(|r| Failure::bad(r.body_text()))?;
    if !is_sha256(&sha256) {
        return Err(Failure::bad(format!("`{sha256}` is not a sha256 (64 lowercase hex digits)")));
    }
    // A tenant reads back only its own uploads; nodes and the admin read any.
    if matches!(caller.role, Role::Full | Role::ReadOnly) {
        app.barrier().await?;
        if !app.0.replica.state().owns_module(&caller.tenant, &sha256)? {
            return Err(StateError::ModuleNotFound { sha256 }.into());
        }
    }
    let bytes = app.module(&sha256).await?;
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/wasm"));
    Ok(response)
}

fn version_info(v: &Version) -> VersionInfo {
    VersionInfo {
        version: v.version,
        module: v.module.clone(),
        kind: v.spec.kind.clone(),
        memory: v.spec.memory,
        timeout_ms: v.spec.timeout_ms,
        config: v.spec.config.clone(),
        gpu: v.spec.gpu,
        public: v.spec.public,
        created_at: v.created_at,
    }
}

fn summary(f: &Function) -> FunctionSummary {
    let active = f.active_version();
    FunctionSummary {
        tenant: f.tenant.clone(),
        name: f.name.clone(),
        active: f.active,
        versions: f.versions.len() as u64,
        kind: active.map(|v| v.spec.kind.clone()).unwrap_or_default(),
        module: active.map(|v| v.module.clone()).unwrap_or_default(),
    }
}

/// 64 lowercase hex digits, as sha256 names are written.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_spec(request: &DeployRequest) -> Answer<()> {
    let module = &request.module;
    if !is_sha256(module) {
        return Err(Failure::bad(format!("`module` must be a sha256 (64 lowercase hex digits), not `{module}`")));
    }
    if let Some(memory) = request.memory
        && !(1 << 20..=MAX_MEMORY).contains(&memory)
    {
        return Err(Failure::bad(format!("`memory` must be between 1 MiB and 4 GiB, not {memory} bytes")));
    }
    if let Some(timeout) = request.timeout_ms
        && !(1..=MAX_TIMEOUT_MS).contains(&timeout)
    {
        return Err(Failure::bad(format!("`timeout_ms` must be between 1 and {MAX_TIMEOUT_MS}, not {timeout}")));
    }
    let size: usize = request.config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_CONFIG_BYTES {
        return Err(Failure::bad(format!("config is {size} bytes, over the limit of {MAX_CONFIG_BYTES}")));
    }
    if let Some(key) = request.config.keys().find(|k| k.is_empty() || k.len() > 256) {
        return Err(Failure::bad(format!("config key `{key}` must be 1 to 256 bytes")));
    }
    Ok(())
}

async fn deploy(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<DeployRequest>, JsonRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let request = json_body(body)?;
    check_spec(&request)?;
    let tenant = caller.tenant;
    app.barrier().await?;
    if !app.0.replica.state().owns_module(&tenant, &request.module)? {
        return Err(StateError::ModuleNotFound { sha256: request.module }.into());
    }
    let kind = app.kind_of(&request.module).await?;
    if request.gpu == GpuPlacement::Required {
        app.require_gpu_node(&name)?;
    }
    let state = app.0.replica.state();
    if let Some(current) = state.function(&tenant, &name)?.as_ref().and_then(|f| f.active_version().cloned())
        && current.spec.kind != kind
    {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "function `{name}` is a {}, and this module is a {kind}; remove the function first to change its kind",
                current.spec.kind
            ),
        ));
    }
    let quotas = app.quotas(&tenant)?;
    let memory = request.memory.unwrap_or(DEFAULT_MEMORY);
    if let Some(limit) = quotas.memory
        && memory > limit
    {
        return Err(Failure::quota(&tenant, "memory", limit, format!("a memory limit of {memory} bytes")));
    }
    if let Some(limit) = quotas.functions
        && state.function(&tenant, &name)?.is_none()
    {
        let count = state.functions(&tenant)?.len() as u64;
        if count >= limit {
            return Err(Failure::quota(&tenant, "functions", limit, format!("a new function besides its {count}")));
        }
    }
    if let Some(check) = app.0.init_check.clone() {
        let bytes = app.module(&request.module).await?;
        let config = request.config.clone();
        let checked = tokio::task::spawn_blocking(move || check.check(&bytes, &config, memory)).await;
        checked
            .map_err(|e| Failure::internal(format!("the init check stopped: {e}")))?
            .map_err(|message| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "init_failed", message))?;
    }
    let spec = FunctionSpec {
        kind: kind.into(),
        memory,
        timeout_ms: request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        config: request.config,
        gpu: request.gpu,
        public: request.public,
    };
    let command = Command::Deploy { tenant: tenant.clone(), name: name.clone(), module: request.module.clone(), spec };
    let Applied::Deployed { version } = app.propose(command).await? else {
        return Err(Failure::internal("the deploy applied as something else"));
    };
    let versions = state.function(&tenant, &name)?.map_or(version, |f| f.versions.len() as u64);
    let summary =
        FunctionSummary { tenant, name, active: version, versions, kind: kind.into(), module: request.module };
    Ok(json(StatusCode::CREATED, &summary))
}

async fn list_functions(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    app.barrier().await?;
    let functions = app.0.replica.state().functions(&caller.tenant)?;
    Ok(json(StatusCode::OK, &FunctionList { functions: functions.iter().map(summary).collect() }))
}

async fn show_function(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    app.barrier().await?;
    let f = app.function(&caller.tenant, name)?;
    let info = FunctionInfo {
        tenant: f.tenant.clone(),
        name: f.name.clone(),
        active: f.active,
        versions: f.versions.iter().map(version_info).collect(),
    };
    Ok(json(StatusCode::OK, &info))
}

async fn rollback(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<RollbackRequest>, JsonRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let request = json_body(body)?;
    let tenant = caller.tenant;
    app.propose(Command::Rollback { tenant: tenant.clone(), name: name.clone(), version: request.version }).await?;
    Ok(json(StatusCode::OK, &summary(&app.function(&tenant, name)?)))
}

async fn delete_function(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let tenant = caller.tenant;
    let before = app.0.replica.state().function(&tenant, &name)?;
    app.propose(Command::Delete { tenant: tenant.clone(), name: name.clone() }).await?;
    let gone = before.map(|f| summary(&f)).unwrap_or(FunctionSummary {
        tenant,
        name,
        active: 0,
        versions: 0,
        kind: String::new(),
        module: String::new(),
    });
    Ok(json(StatusCode::OK, &gone))
}

async fn heartbeat(
    Shared(app): Shared<App>,
    id: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<Heartbeat>, JsonRejection>,
) -> Answer<Response> {
    let id = path_name(id)?;
    let mut beat = json_body(body)?;
    beat.address = normalize_url(&beat.address).map_err(|e| Failure::bad(format!("`address`: {e}")))?;
    let registered = app.0.replica.state().node(&id)?;
    if registered.as_ref().is_none_or(|n| n.address != beat.address) {
        app.propose(Command::RegisterNode { id: id.clone(), address: beat.address.clone() }).await?;
        tracing::info!(node = %id, address = %beat.address, "node registered");
    }
    app.0.nodes.lock().map_err(poisoned)?.insert(id, (Instant::now(), beat));
    Ok(json(StatusCode::OK, &HeartbeatReply { revision: app.0.replica.state().routes_revision()? }))
}

async fn list_nodes(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    app.barrier().await?;
    let state = app.0.replica.state();
    let registry = state.nodes()?;
    // A tenant sees which of its own modules a node has warm, not others'.
    let sees_all = caller.is_admin() || caller.role == Role::Node;
    let visible = |warm: Vec<String>| -> Result<Vec<String>, Failure> {
        if sees_all {
            return Ok(warm);
        }
        let mut own = Vec::new();
        for sha in warm {
            if state.owns_module(&caller.tenant, &sha)? {
                own.push(sha);
            }
        }
        Ok(own)
    };
    let live = app.0.nodes.lock().map_err(poisoned)?.clone();
    let fresh_leader = app.0.leader_since.lock().map_err(poisoned)?.is_none_or(|t| t.elapsed() < NODE_LIVENESS);
    let nodes = registry
        .into_iter()
        .map(|n| {
            let seen = live.get(&n.id);
            let state = match seen {
                Some((at, _)) if at.elapsed() < NODE_LIVENESS => NodeState::Alive,
                None if fresh_leader => NodeState::Unknown,
                _ => NodeState::Down,
            };
            let beat = seen.map(|(_, b)| b.clone()).unwrap_or_default();
            Ok(NodeInfo {
                id: n.id,
                address: n.address,
                state,
                last_seen_ms: seen.map(|(at, _)| at.elapsed().as_millis() as u64),
                inflight: beat.inflight,
                invocations: beat.invocations,
                warm: visible(beat.warm)?,
                revision: beat.revision,
                gpu: beat.gpu,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(json(StatusCode::OK, &NodeList { nodes }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn routes(Shared(app): Shared<App>, query: Result<Query<RoutesQuery>, QueryRejection>) -> Answer<Response> {
    let Query(query) = query.map_err(|r| Failure::bad(r.body_text()))?;
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let state = app.0.replica.state();
    // The revision moves only when a function changes, not with every
    // applied entry (job progress would wake every node).
    loop {
        let applied = app.status().applied;
        let left = deadline.saturating_duration_since(Instant::now());
        if state.routes_revision()? > query.since
            || left.is_zero()
            || !app.0.replica.wait_for(left, |s| s.applied > applied).await
        {
            break;
        }
    }
    let revision = state.routes_revision()?;
    let tenants = state.tenants()?;
    let refused = gpu_refusals(&tenants);
    let routes = state
        .all_functions()?
        .iter()
        .filter_map(|f| {
            let v = f.active_version()?;
            Some(Route {
                gpu_refused: refused.get(&f.tenant).cloned(),
                tenant: f.tenant.clone(),
                name: f.name.clone(),
                version: v.version,
                module: v.module.clone(),
                kind: v.spec.kind.clone(),
                memory: v.spec.memory,
                timeout_ms: v.spec.timeout_ms,
                config: v.spec.config.clone(),
                gpu: v.spec.gpu,
                public: v.spec.public,
            })
        })
        .collect();
    let mut grants = vec![Grant { sha256: app.0.admin_hash.clone(), tenant: None, role: Role::Admin }];
    grants.extend(state.tokens()?.into_iter().map(|t| Grant { sha256: t.sha256, tenant: t.tenant, role: t.role }));
    let concurrency = tenants.into_iter().filter_map(|t| Some((t.name, t.quotas.concurrency?))).collect();
    Ok(json(StatusCode::OK, &RouteTable { revision, routes, grants, concurrency }))
}

/// Why each tenant that used its GPU quota has its `gpu` calls refused.
fn gpu_refusals(tenants: &[TenantRecord]) -> HashMap<String, String> {
    tenants
        .iter()
        .filter(|t| t.gpu_exhausted)
        .map(|t| {
            let quota = t.quotas.gpu_ms.unwrap_or(0);
            (t.name.clone(), format!("tenant `{}` has used its `gpu_ms` quota of {quota} ms of GPU time", t.name))
        })
        .collect()
}

/// GPU time each tenant with a GPU quota used, in microseconds: its
/// per-request calls as the nodes last reported them, and its jobs.
fn gpu_used(app: &App, tenants: &[TenantRecord]) -> Answer<HashMap<String, u64>> {
    let mut used: HashMap<String, u64> =
        tenants.iter().filter(|t| t.quotas.gpu_ms.is_some()).map(|t| (t.name.clone(), 0)).collect();
    if used.is_empty() {
        return Ok(used);
    }
    for (_, beat) in app.0.nodes.lock().map_err(poisoned)?.values() {
        for u in &beat.usage {
            if let Some(total) = used.get_mut(&u.tenant) {
                *total += u.gpu_us;
            }
        }
    }
    let state = app.0.replica.state();
    for (tenant, total) in &mut used {
        *total += state.jobs(Some(tenant))?.iter().map(|j| j.gpu_us).sum::<u64>();
    }
    Ok(used)
}

/// On the leader, once a second: marks tenants that used their GPU quota
/// (their `gpu` calls are then refused, on every node and in every task),
/// and clears the mark when the quota is raised.
async fn watch_gpu_quotas(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !app.status().is_leader {
            continue;
        }
        let Ok(tenants) = app.0.replica.state().tenants() else { continue };
        let Ok(used) = gpu_used(&app, &tenants) else { continue };
        for t in &tenants {
            let over = match (t.quotas.gpu_ms, used.get(&t.name)) {
                (Some(quota), Some(&us)) => us / 1000 >= quota,
                _ => false,
            };
            if over != t.gpu_exhausted {
                tracing::info!(tenant = %t.name, used_ms = used.get(&t.name).copied().unwrap_or(0) / 1000, over, "GPU quota");
                let _ = app.propose(Command::GpuExhausted { name: t.name.clone(), exhausted: over }).await;
            }
        }
    }
}

/// What the caller's tenant used: its functions' calls as the nodes last
/// reported them, summed, and its jobs.
async fn usage(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    let tenant = caller.tenant;
    let mut functions: BTreeMap<String, FunctionUsage> = BTreeMap::new();
    for (_, beat) in app.0.nodes.lock().map_err(poisoned)?.values() {
        for u in beat.usage.iter().filter(|u| u.tenant == tenant) {
            functions
                .entry(u.function.clone())
                .or_insert_with(|| FunctionUsage {
                    tenant: tenant.clone(),
                    function: u.function.clone(),
                    ..Default::default()
                })
                .add(u);
        }
    }
    app.barrier().await?;
    let mut jobs = JobUsage::default();
    for job in app.0.replica.state().jobs(Some(&tenant))? {
        jobs.jobs += 1;
        jobs.tasks += u64::from(job.map_tasks) + u64::from(job.reduce_partitions);
        jobs.records_in += job.records_in;
        jobs.bytes_in += job.bytes_in;
        jobs.rows_out += job.rows_out;
        jobs.gpu_ms += job.gpu_us / 1000;
    }
    Ok(json(StatusCode::OK, &Usage { tenant, functions: functions.into_values().collect(), jobs }))
}

async fn whoami(Extension(caller): Extension<Caller>) -> Response {
    json(StatusCode::OK, &Identity { tenant: caller.tenant, role: caller.role, token: caller.token })
}

fn tenant_info(t: TenantRecord) -> TenantInfo {
    TenantInfo { name: t.name, created_at: t.created_at, quotas: t.quotas }
}

impl App {
    /// A tenant's quotas (none for an unknown tenant).
    fn quotas(&self, tenant: &str) -> Answer<Quotas> {
        Ok(self.0.replica.state().tenant(tenant)?.map(|t| t.quotas).unwrap_or_default())
    }
}

fn token_info(t: TokenRecord) -> TokenInfo {
    TokenInfo { id: token_id(&t.sha256), tenant: t.tenant, role: t.role, created_at: t.created_at }
}

async fn list_tenants(Shared(app): Shared<App>) -> Answer<Response> {
    app.barrier().await?;
    let tenants = app.0.replica.state().tenants()?.into_iter().map(tenant_info).collect();
    Ok(json(StatusCode::OK, &TenantList { tenants }))
}

async fn create_tenant(
    Shared(app): Shared<App>,
    body: Result<axum::Json<TenantRequest>, JsonRejection>,
) -> Answer<Response> {
    let request = json_body(body)?;
    check_name(&request.name).map_err(|reason| Failure::bad(format!("invalid name `{}`: {reason}", request.name)))?;
    let quotas = Quotas::tenant_defaults().merged(&request.quotas);
    app.propose(Command::CreateTenant { name: request.name.clone(), quotas }).await?;
    let created = app.0.replica.state().tenant(&request.name)?.ok_or_else(|| Failure::internal("tenant vanished"))?;
    tracing::info!(tenant = %created.name, "tenant created");
    Ok(json(StatusCode::CREATED, &tenant_info(created)))
}

async fn delete_tenant(Shared(app): Shared<App>, name: Result<Path<String>, PathRejection>) -> Answer<Response> {
    let name = path_name(name)?;
    let before = app.0.replica.state().tenant(&name)?;
    app.propose(Command::DeleteTenant { name: name.clone() }).await?;
    tracing::info!(tenant = %name, "tenant removed");
    let gone = before.unwrap_or(TenantRecord { name, created_at: 0, quotas: Quotas::default(), gpu_exhausted: false });
    Ok(json(StatusCode::OK, &tenant_info(gone)))
}

async fn set_quotas(
    Shared(app): Shared<App>,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<Quotas>, JsonRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let quotas = json_body(body)?;
    app.propose(Command::SetQuotas { name: name.clone(), quotas }).await?;
    let record = app.0.replica.state().tenant(&name)?.ok_or_else(|| Failure::internal("tenant vanished"))?;
    tracing::info!(tenant = %name, quotas = ?record.quotas, "quotas set");
    Ok(json(StatusCode::OK, &tenant_info(record)))
}

async fn list_tokens(Shared(app): Shared<App>) -> Answer<Response> {
    app.barrier().await?;
    let mut tokens: Vec<TokenInfo> = app.0.replica.state().tokens()?.into_iter().map(token_info).collect();
    tokens.sort_by(|a, b| (&a.tenant, a.created_at).cmp(&(&b.tenant, b.created_at)));
    Ok(json(StatusCode::OK, &TokenList { tokens }))
}

async fn create_token(
    Shared(app): Shared<App>,
    body: Result<axum::Json<TokenRequest>, JsonRejection>,
) -> Answer<Response> {
    let request = json_body(body)?;
    match (request.role, &request.tenant) {
        (Role::Admin, _) => return Err(Failure::bad("there is one admin token, made at bootstrap")),
        (Role::Node, Some(_)) => return Err(Failure::bad("a node token belongs to no tenant")),
        (Role::Full | Role::ReadOnly | Role::InvokeOnly, None) => {
            return Err(Failure::bad(format!("a {} token needs a tenant", request.role.name())));
        }
        _ => {}
    }
    let token = new_token().map_err(|e| Failure::internal(format!("no randomness for a token: {e}")))?;
    let sha256 = token_hash(&token);
    app.propose(Command::CreateToken { sha256: sha256.clone(), tenant: request.tenant, role: request.role }).await?;
    let record = app.0.replica.state().token(&sha256)?.ok_or_else(|| Failure::internal("token vanished"))?;
    let info = token_info(record);
    tracing::info!(token = %info.id, tenant = ?info.tenant, role = info.role.name(), "token created");
    Ok(json(StatusCode::CREATED, &NewToken { token, info }))
}

async fn revoke_token(Shared(app): Shared<App>, id: Result<Path<String>, PathRejection>) -> Answer<Response> {
    let Path(id) = id.map_err(|r| Failure::bad(r.body_text()))?;
    app.barrier().await?;
    let record = app
        .0
        .replica
        .state()
        .tokens()?
        .into_iter()
        .find(|t| token_id(&t.sha256) == id)
        .ok_or_else(|| StateError::TokenNotFound { id: id.clone() })?;
    app.propose(Command::RevokeToken { sha256: record.sha256.clone() }).await?;
    tracing::info!(token = %id, "token revoked");
    Ok(json(StatusCode::OK, &token_info(record)))
}

async fn raft(Shared(app): Shared<App>, body: Result<Bytes, BytesRejection>) -> Answer<StatusCode> {
    let body = body.map_err(|r| rejected(r.status(), r.body_text()))?;
    let messages = transport::decode(&body).map_err(|e| Failure::bad(format!("bad raft messages: {e}")))?;
    for m in messages {
        app.0.replica.step(m);
    }
    Ok(StatusCode::NO_CONTENT)
}
