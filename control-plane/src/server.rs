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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{self};
use axum::routing::{delete, get, post, put};
use tokio::sync::oneshot;
use wasmgrid_api::serve::{self, ServeLimits};
use wasmgrid_api::tls::{self, ServerTls};
use wasmgrid_api::*;

use crate::replica::{Opened, ProposeError, Replica, ReplicaConfig, Status};
use crate::state::{
    Applied, Command, Function, FunctionSpec, MAX_MODULE_BYTES, Placement, StateError, TenantRecord, TokenRecord,
    Version, sha256_hex,
};
use crate::transport::{self, HttpTransport};

mod answer;
mod artifacts;
mod auth;
mod cluster;
mod forward;
mod functions;
mod jobs;
mod membership;
mod metrics;
mod nodes;
mod placement;
mod tenants;
mod traffic;
mod trials;
mod triggers;
mod ui;
use auth::Caller;
pub use jobs::DEFAULT_MAX_ATTEMPTS;
pub use wasmgrid_api::JobIo;

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
    /// Every replica's base URL by id, this one included: the replicas a
    /// new cluster starts with. Once the state records the replicas (from
    /// the first start on), membership changes decide them instead.
    pub peers: BTreeMap<u64, String>,
    /// Replicas of a running cluster to join through, for a new machine
    /// (empty data directory) that was added with `add-replica`. Ignored
    /// once the replica holds data.
    pub join: Vec<String>,
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
            join: Vec::new(),
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
    /// Runs `module`'s `init`, if it has one; why it failed (answered 422
    /// with its message) when it does.
    fn check(
        &self,
        module: &[u8],
        config: &BTreeMap<String, String>,
        artifacts: &BTreeMap<String, (String, PathBuf)>,
        memory: u64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
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
    #[error(
        "cannot open the replica's storage in {dir}: {reason} (if its files are damaged, replace the replica: \
         docs/operations.md, Replace a machine)"
    )]
    Storage {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The replica's log ends before entries it acknowledged.
    #[error(
        "replica {id}'s log ends at index {last_index}, but the leader (replica {leader}) counts it as holding \
         entries up to {matched}: its data directory was lost, damaged or restored from an older copy, and \
         starting it could lose acknowledged writes. Replace it: on a running replica, \
         `wasmgrid cluster remove-replica {id}`, then `wasmgrid cluster add-replica {id}=URL`, and start this \
         one with an empty --data and --join URL (docs/operations.md, Replace a machine)"
    )]
    Behind {
        /// This replica.
        id: u64,
        /// Where its log ends.
        last_index: u64,
        /// What the leader counts it as holding.
        matched: u64,
        /// The leader asked.
        leader: u64,
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
    if config.join.is_empty() && !config.peers.contains_key(&config.id) {
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

    let http = tls::client_builder()
        .map_err(|e| StartError::Config(e.to_string()))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(config.request_timeout + Duration::from_secs(2))
        .build()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let storage = |e: ProposeError| StartError::Storage { dir: config.data_dir.clone(), reason: e.to_string() };
    let mut rc = ReplicaConfig::new(config.id, config.peers.keys().copied().collect(), config.data_dir.clone());
    rc.members = config.peers.clone();
    rc.snapshot_every = config.snapshot_every;
    rc.tick = config.tick;
    rc.request_timeout = config.request_timeout;
    let opened = Opened::open(rc).map_err(storage)?;
    let opened = if opened.is_fresh().map_err(storage)? && !config.join.is_empty() {
        let members = membership::join(&http, &config).await?;
        opened.join(members)
    } else {
        let recorded = opened.members().map_err(storage)?;
        let peers = if recorded.is_empty() { &config.peers } else { &recorded };
        membership::check_log(&http, &config, peers, opened.last_index().map_err(storage)?).await?;
        opened
    };
    let transport = HttpTransport::start(config.id, &BTreeMap::new(), &config.admin_token)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let replica = opened.start(transport).map_err(storage)?;
    let blobs = crate::blobs::Blobs::open(&config.data_dir.join("blobs"))
        .map_err(|e| StartError::Storage { dir: config.data_dir.clone(), reason: e.to_string() })?;
    let app = App(Arc::new(Inner {
        replica: replica.clone(),
        blobs,
        blobs_changed: tokio::sync::Notify::new(),
        tls: config.tls.is_some(),
        http,
        request_timeout: config.request_timeout,
        nodes: Mutex::new(HashMap::new()),
        traffic: Mutex::new(traffic::Traffic::default()),
        kinds: Mutex::new(HashMap::new()),
        leader_since: Mutex::new(None),
        job_io: config.job_io.clone(),
        init_check: config.init_check.clone(),
        scheduler: Mutex::new(jobs::Scheduler::default()),
        jobs_changed: tokio::sync::Notify::new(),
        placing: tokio::sync::Mutex::new(()),
        placement_readers: tokio::sync::Mutex::new(std::collections::BTreeSet::new()),
        placing_now: Mutex::new(HashMap::new()),
        route_table: Mutex::new(None),
        placement_changed: tokio::sync::Notify::new(),
        admin_hash: token_hash(&config.admin_token),
        require_client_certificate: config.require_client_certificate,
    }));
    tokio::spawn(forward::watch_leadership(app.clone()));
    tokio::spawn(jobs::drive(app.clone()));
    tokio::spawn(nodes::watch_gpu_quotas(app.clone()));
    tokio::spawn(placement::watch(app.clone()));
    tokio::spawn(membership::promote_learners(app.clone()));
    tokio::spawn(artifacts::sync(app.clone(), config.admin_token.clone()));
    tokio::spawn(membership::watch_removal(app.clone(), config.admin_token.clone()));

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
    /// Artifacts' bytes on this replica.
    blobs: crate::blobs::Blobs,
    /// Woken when an artifact is recorded: replicas copy what they lack.
    blobs_changed: tokio::sync::Notify,
    /// Whether the replicas serve HTTPS.
    tls: bool,
    http: reqwest::Client,
    request_timeout: Duration,
    /// The leader's record of heartbeats, by node id: never replicated.
    nodes: Mutex<HashMap<String, (Instant, Heartbeat)>>,
    /// Per-request traffic over time, from the heartbeats (leader only).
    traffic: Mutex<traffic::Traffic>,
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
    /// Placement passes run one at a time.
    placing: tokio::sync::Mutex<()>,
    /// The route table last built, as JSON, and its revision.
    route_table: Mutex<Option<(u64, axum::body::Bytes)>>,
    /// Placements chosen for deploys not yet applied, by (tenant, name).
    placing_now: Mutex<HashMap<(String, String), placement::Wanted>>,
    /// Replica URLs known to read `Place` entries.
    placement_readers: tokio::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Woken when a node appears: placement may give it functions.
    placement_changed: tokio::sync::Notify,
    /// The sha256 of the admin token.
    admin_hash: String,
    /// Raft and node endpoints need a verified client certificate.
    require_client_certificate: bool,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn router(app: App) -> Router {
    Router::new()
        .route("/v1/health", get(cluster::health))
        .route("/v1/ready", get(cluster::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/cluster/leader", post(cluster::transfer_leader))
        .route("/v1/cluster/replicas", post(membership::add_replica))
        .route("/v1/cluster/replicas/{id}", delete(membership::remove_replica))
        .route("/v1/modules", post(functions::upload_module).layer(DefaultBodyLimit::max(MAX_MODULE_BYTES)))
        .route("/v1/modules/{sha256}", get(functions::download_module))
        .route("/v1/artifacts", get(artifacts::list))
        .route("/v1/artifacts/{sha256}", get(artifacts::download).post(artifacts::commit))
        .route(
            "/v1/artifacts/{sha256}/chunks",
            put(artifacts::put_chunk).layer(DefaultBodyLimit::max(crate::blobs::MAX_CHUNK_BYTES)),
        )
        .route("/v1/functions", get(functions::list_functions))
        .route("/v1/functions/{name}", get(functions::show_function).delete(functions::delete_function))
        .route("/v1/functions/{name}/versions", post(functions::deploy))
        .route("/v1/functions/{name}/rollback", post(functions::rollback))
        .route("/v1/functions/{name}/promote", post(functions::rollback))
        .route("/v1/functions/{name}/trial", put(trials::set_trial).delete(trials::end_trial))
        .route("/v1/functions/{name}/diff", get(trials::diff))
        .route("/v1/triggers", get(triggers::list).post(triggers::create))
        .route("/v1/triggers/{name}", get(triggers::status).delete(triggers::delete))
        .route("/v1/triggers/{name}/pause", post(triggers::pause))
        .route("/v1/triggers/{name}/resume", post(triggers::resume))
        .route("/v1/nodes", get(nodes::list_nodes))
        .route("/v1/nodes/{id}/heartbeat", post(nodes::heartbeat))
        .route("/v1/routes", get(nodes::routes))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/v1/jobs/{id}/attempts", get(jobs::attempts))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/tasks/lease", post(jobs::lease))
        .route("/v1/tasks/report", post(jobs::report).layer(DefaultBodyLimit::max(16 << 20)))
        .route("/v1/raft", post(cluster::raft).layer(DefaultBodyLimit::max(transport::MAX_BODY)))
        .route("/v1/whoami", get(tenants::whoami))
        .route("/v1/usage", get(nodes::usage))
        .route("/v1/traffic", get(nodes::traffic))
        .route("/v1/tenants", get(tenants::list_tenants).post(tenants::create_tenant))
        .route("/v1/tenants/{name}", delete(tenants::delete_tenant))
        .route("/v1/tenants/{name}/quotas", put(tenants::set_quotas))
        .route("/v1/tokens", get(tenants::list_tokens).post(tenants::create_token))
        .route("/v1/tokens/{id}", delete(tenants::revoke_token))
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/{asset}", get(ui::asset))
        .fallback(cluster::no_route)
        .method_not_allowed_fallback(cluster::wrong_method)
        .layer(middleware::from_fn_with_state(app.clone(), forward::to_leader))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth::authenticate))
        .with_state(app)
}
