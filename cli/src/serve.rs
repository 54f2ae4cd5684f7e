//! The serving roles: `wasmgrid control-plane`, `wasmgrid node` and
//! `wasmgrid dev` (both in one process), with their listeners, TLS, egress
//! policy and shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use wasmgrid_api::serve::ServeLimits;
use wasmgrid_api::tls::ServerTls;
use wasmgrid_control_plane::server::{self, Config as ReplicaConfig};
use wasmgrid_data::egress::{Egress, FetchLimits, Rule};
use wasmgrid_gateway::GatewayConfig;
use wasmgrid_node::agent::{self, AgentConfig};
use wasmgrid_node::worker::TaskPriority;
use wasmgrid_runtime::Runtime;

use crate::client::tokio_runtime;
use crate::compile::{CompileArgs, runtime_config};
use crate::{certs, notice, tokens, units};

#[derive(Args, Debug)]
pub struct ControlPlaneArgs {
    /// This replica's id (1, 2, 3, ...).
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// Where the replica keeps its log and state.
    #[arg(long)]
    data: PathBuf,
    /// Address to serve the API and Raft traffic on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Every replica as ID=ADDR, comma-separated, this one included
    /// [default: a single replica, ID=LISTEN].
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// For a new machine joining a running cluster: replica URL(s) to ask
    /// for the cluster's replicas, comma-separated. Add this replica first
    /// (`wasmgrid cluster add-replica ID=URL`); start it with an empty
    /// --data and the cluster's admin token file. Ignored once DATA holds
    /// the replica's log.
    #[arg(long, value_delimiter = ',', value_parser = parse_url)]
    join: Vec<String>,
    /// Compact the log into a snapshot after this many entries.
    #[arg(long, default_value_t = 1000)]
    snapshot_every: u64,
    /// How long a write waits for a quorum before failing with 503.
    #[arg(long, default_value = "3s", value_parser = units::parse_duration)]
    request_timeout: Duration,
    #[command(flatten)]
    listener: ListenerArgs,
    /// The admin token file, the same on every replica [default:
    /// DATA/admin-token, made at the first start of a single replica].
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Compiling deploys' components to check their `init` [cache default:
    /// DATA/cache].
    #[command(flatten)]
    compile: CompileArgs,
    /// Where job inputs are fetched from when the leader plans a job.
    #[command(flatten)]
    egress: EgressArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Control-plane URL(s), comma-separated.
    #[arg(long = "control-plane", env = "WASMGRID_URL", value_delimiter = ',', required = true)]
    control_plane: Vec<String>,
    /// Where the node keeps modules, compiled code and its id.
    #[arg(long)]
    data: PathBuf,
    /// Address of the HTTP gateway.
    #[arg(long, default_value = "127.0.0.1:7401")]
    listen: SocketAddr,
    /// URL others reach the gateway at [default: http://LISTEN].
    #[arg(long)]
    advertise: Option<String>,
    /// The node's id [default: generated once, kept in DATA/node-id].
    #[arg(long)]
    id: Option<String>,
    /// Batch task attempts run at once [default: one per core].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    task_slots: usize,
    /// How much lower than per-request calls batch attempts run: a `nice`
    /// increment from 0 (the same priority) to 19, or `idle` (only on CPU
    /// time nothing else wants, Linux's SCHED_IDLE: for nodes whose calls'
    /// latency matters more than their jobs' progress).
    #[arg(long, default_value = "10")]
    task_nice: TaskPriority,
    /// Most compiled code (and `init` images) kept loaded: past it, the
    /// function versions used least recently are evicted and loaded again,
    /// from the compiled cache on disk, when next called. Functions are
    /// placed on nodes in proportion to it.
    #[arg(long, default_value = "2GiB", value_parser = units::parse_size)]
    code_cache: u64,
    /// A file holding the node's token (`wasmgrid tokens create --node`, or
    /// the admin token) [default: WASMGRID_TOKEN].
    #[arg(long, env = "WASMGRID_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    compile: CompileArgs,
    #[command(flatten)]
    egress: EgressArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How a node's gateway admits calls.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Calls of one function running at once [default: 2 per core].
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Calls of all functions running at once on this node, shared fairly
    /// between tenants [default: 2 per core].
    #[arg(long)]
    max_calls: Option<usize>,
    /// Calls of one function waiting for a slot; more get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Longest a call waits for a slot before a 503.
    #[arg(long, default_value = "1s", value_parser = units::parse_duration)]
    queue_timeout: Duration,
    /// Largest request body; more gets 413.
    #[arg(long, default_value = "16MiB", value_parser = units::parse_size)]
    max_body: u64,
    #[command(flatten)]
    listener: ListenerArgs,
}

/// A listener's time limits and connection cap.
#[derive(Args, Debug)]
pub struct ListenerArgs {
    /// Longest a client takes to send a request's headers; also how long
    /// an idle kept-alive connection stays open.
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    header_timeout: Duration,
    /// Longest wait for the next bytes of a request's body (408 on the
    /// gateway).
    #[arg(long, default_value = "30s", value_parser = units::parse_duration)]
    body_timeout: Duration,
    /// Connections open at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
}

impl ListenerArgs {
    fn limits(&self) -> Result<ServeLimits> {
        anyhow::ensure!(self.max_connections > 0, "--max-connections must be at least 1");
        Ok(ServeLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
        })
    }
}

impl GatewayArgs {
    fn config(&self) -> Result<GatewayConfig> {
        let mut config = GatewayConfig::default();
        if let Some(n) = self.max_concurrency {
            anyhow::ensure!(n > 0, "--max-concurrency must be at least 1");
            config.max_concurrency = n;
        }
        if let Some(n) = self.max_calls {
            anyhow::ensure!(n > 0, "--max-calls must be at least 1");
            config.max_calls = n;
        }
        config.max_queue = self.max_queue;
        config.queue_timeout = self.queue_timeout;
        config.max_body = usize::try_from(self.max_body).context("--max-body is too large")?;
        config.serve = self.listener.limits()?;
        Ok(config)
    }
}

/// A serving role's certificate, and the CA its clients trust.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "WASMGRID_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "WASMGRID_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file (besides the system's)
    /// when calling other replicas and the control plane.
    #[arg(long, env = "WASMGRID_CA")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: Raft traffic between replicas and nodes' calls to the
    /// control plane need a client certificate this CA (PEM) signed, on top
    /// of their token. Replicas and nodes present their --tls-cert.
    #[arg(long, env = "WASMGRID_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve plain HTTP beyond loopback (behind a proxy that terminates
    /// TLS, on a private network): tokens then cross that network in clear
    /// text. Without it, a listener beyond loopback needs --tls-cert.
    #[arg(long, env = "WASMGRID_INSECURE_PLAIN_HTTP")]
    insecure_plain_http: bool,
}

impl TlsArgs {
    /// Installs the CA for this process's clients; the settings of the
    /// listeners on `listen` (plain HTTP beyond loopback only when asked).
    fn load(&self, listen: &[SocketAddr]) -> Result<Option<ServerTls>> {
        if let Some(ca) = &self.tls_ca {
            wasmgrid_api::tls::trust(ca).map_err(anyhow::Error::msg).context("--tls-ca")?;
        }
        let server = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                // Its certificate is also who it is when it calls others.
                wasmgrid_api::tls::identify(cert, key).map_err(anyhow::Error::msg).context("--tls-cert")?;
                let client_ca = self.tls_client_ca.as_deref();
                Some(
                    wasmgrid_api::tls::server_config(cert, key, client_ca)
                        .map_err(anyhow::Error::msg)
                        .context("--tls-cert")?,
                )
            }
            _ => None,
        };
        for listen in listen.iter().filter(|l| server.is_none() && !l.ip().is_loopback()) {
            if !self.insecure_plain_http {
                bail!(
                    "refusing to serve plain HTTP on {listen}, beyond loopback: tokens would cross the network in \
                     clear text. Pass --tls-cert and --tls-key (see docs/security.md), or --insecure-plain-http \
                     behind a proxy that terminates TLS"
                );
            }
            tracing::warn!(%listen, "serving plain HTTP beyond loopback (--insecure-plain-http): tokens cross the network in clear text");
        }
        Ok(server)
    }
}

/// Where the grid fetches jobs' `http(s)://` inputs from, and how much.
#[derive(Args, Debug)]
pub struct EgressArgs {
    /// Also fetch job inputs from these, comma-separated: CIDRs
    /// (10.20.0.0/16), addresses, host names, `*.domain`. Without them only
    /// public addresses are fetched from: never loopback, private,
    /// link-local (169.254.169.254), unique-local or the grid's own
    /// listeners.
    #[arg(long, env = "WASMGRID_EGRESS_ALLOW", value_delimiter = ',', value_name = "RULES")]
    egress_allow: Vec<Rule>,
    /// Never fetch job inputs from these (wins over --egress-allow).
    #[arg(long, env = "WASMGRID_EGRESS_DENY", value_delimiter = ',', value_name = "RULES")]
    egress_deny: Vec<Rule>,
    /// Largest input object fetched from a URL or an object store.
    #[arg(long, default_value = "10GiB", value_parser = units::parse_size)]
    max_input_size: u64,
    /// Longest wait for a connection, or for the next bytes, of an input.
    #[arg(long, default_value = "30s", value_parser = units::parse_duration)]
    fetch_idle_timeout: Duration,
    /// Longest one input's whole fetch takes.
    #[arg(long, default_value = "30m", value_parser = units::parse_duration)]
    fetch_timeout: Duration,
    /// Bytes of object-store inputs kept in DATA/inputs between jobs; the
    /// least recently used go first.
    #[arg(long, env = "WASMGRID_INPUT_CACHE_SIZE", default_value = "20GiB", value_parser = units::parse_size)]
    input_cache_size: u64,
}

impl EgressArgs {
    /// Installs the policy for this process's fetches; `own` are the grid's
    /// listeners, never fetched from; fetched inputs go under `data`.
    fn install(&self, own: impl IntoIterator<Item = SocketAddr>, data: &Path) {
        let limits =
            FetchLimits { max_bytes: self.max_input_size, idle: self.fetch_idle_timeout, total: self.fetch_timeout };
        let egress = Egress::new(self.egress_allow.clone(), self.egress_deny.clone(), limits).with_own(own);
        wasmgrid_data::store::install(egress, data.join("inputs"), self.input_cache_size);
    }
}

/// The addresses of IP-literal URLs (the grid's own, never fetched from).
fn literal_addresses(urls: &[String]) -> Vec<SocketAddr> {
    urls.iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .filter_map(|u| {
            let port = u.port_or_known_default()?;
            match u.host()? {
                url::Host::Ipv4(ip) => Some(SocketAddr::new(ip.into(), port)),
                url::Host::Ipv6(ip) => Some(SocketAddr::new(ip.into(), port)),
                url::Host::Domain(_) => None,
            }
        })
        .collect()
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the control plane and the node keep their data.
    #[arg(long, default_value = ".wasmgrid")]
    data: PathBuf,
    /// Control-plane address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Node gateway address.
    #[arg(long, default_value = "127.0.0.1:7401")]
    gateway: SocketAddr,
    #[command(flatten)]
    admission: GatewayArgs,
    #[command(flatten)]
    egress: EgressArgs,
    /// Serve HTTPS with a self-signed certificate made in DATA/tls (and
    /// print how to trust it).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls: bool,
    #[command(flatten)]
    certificate: TlsArgs,
}

fn parse_url(s: &str) -> Result<String, String> {
    wasmgrid_api::normalize_url(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("`{s}` is not ID=ADDR"))?;
    let id: u64 = id.trim().parse().map_err(|_| format!("`{id}` in `{s}` is not a replica id"))?;
    if id == 0 {
        return Err("replica ids start at 1".into());
    }
    let url = wasmgrid_api::normalize_url(addr).map_err(|e| e.to_string())?;
    Ok((id, url))
}

/// How long a stopping process waits for in-flight work before it quits.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Waits for Ctrl-C or SIGTERM, then for `stop`. A second signal, or
/// [`STOP_GRACE`] passing first, ends the process at once (exit status 1):
/// stopping never hangs on a call that will not end or a stuck disk.
async fn stop_on_signal(stop: impl Future<Output = ()>) {
    shutdown_signal().await;
    notice(format_args!("stopping: in-flight calls finish (Ctrl-C again to quit at once)"));
    // A task of its own: `stop` may block this thread (a flush to disk).
    tokio::spawn(async {
        tokio::select! {
            _ = shutdown_signal() => notice(format_args!("quitting at once on a second signal")),
            _ = tokio::time::sleep(STOP_GRACE) => {
                notice(format_args!("in-flight work did not finish within {}s; quitting", STOP_GRACE.as_secs()));
            }
        }
        std::process::exit(1);
    });
    stop.await;
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn replica_config(args: &ControlPlaneArgs) -> Result<ReplicaConfig> {
    let mut peers = BTreeMap::new();
    for (id, url) in &args.peers {
        if peers.insert(*id, url.clone()).is_some() {
            bail!("--peers names replica {id} twice");
        }
    }
    let server_tls = args.tls.load(&[args.listen])?;
    let scheme = if server_tls.is_some() { "https" } else { "http" };
    if peers.is_empty() {
        peers.insert(args.id, format!("{scheme}://{}", args.listen));
    }
    if !peers.contains_key(&args.id) {
        bail!("--peers must include this replica (--id {})", args.id);
    }
    anyhow::ensure!(args.snapshot_every >= 10, "--snapshot-every must be at least 10");
    let token_file = args.admin_token_file.clone().unwrap_or_else(|| tokens::admin_token_path(&args.data));
    // A joining replica must use the cluster's token, never make one.
    let admin = tokens::admin_token(&token_file, peers.len() == 1 && args.join.is_empty())?;
    let own = literal_addresses(&peers.values().chain(&args.join).cloned().collect::<Vec<_>>());
    args.egress.install(own.into_iter().chain([args.listen]), &args.data);
    let mut config = ReplicaConfig::new(args.id, args.listen, peers, args.data.clone(), admin);
    config.join = args.join.clone();
    config.job_io = Some(Arc::new(wasmgrid_jobs::FileJobIo));
    // The replica only checks `init`: a few instances, no GPU.
    let mut runtime = runtime_config(&args.compile, false, 0)?;
    if args.compile.cache_dir.is_none() && !args.compile.no_cache {
        runtime.cache_dir = Some(args.data.join("cache"));
    }
    runtime.instance_slots = 4;
    runtime.gpu = wasmgrid_gpu::SharedGpu::new(wasmgrid_gpu::GpuMode::Off, Default::default());
    let runtime = Arc::new(Runtime::new(runtime).context("starting the runtime that checks `init`")?);
    config.init_check = Some(Arc::new(RuntimeInit(runtime)));
    config.snapshot_every = args.snapshot_every;
    config.request_timeout = args.request_timeout;
    config.serve = args.listener.limits()?;
    config.tls = server_tls;
    config.require_client_certificate = args.tls.tls_client_ca.is_some();
    Ok(config)
}

pub fn control_plane(args: ControlPlaneArgs) -> Result<()> {
    let config = replica_config(&args)?;
    tokio_runtime()?.block_on(async move {
        let running = server::start(config).await?;
        notice(format_args!("control-plane replica {} serving on {}", args.id, running.url()));
        let replica = running.replica.clone();
        let stopped = replica.stopped();
        tokio::select! {
            () = stop_on_signal(running.stop()) => Ok(()),
            reason = stopped => {
                if replica.status().removed {
                    // Not a failure: a supervisor should not start it again.
                    notice(format_args!("control-plane replica {}: {reason}; stopping", args.id));
                    return Ok(());
                }
                Err(replica_stopped(args.id, &reason))
            }
        }
    })
}

/// Checks deploys' `init` on a node runtime. In `wasmgrid dev` it is the
/// node's own, which then reuses the compile the check made.
#[derive(Debug)]
struct RuntimeInit(Arc<Runtime>);

impl server::InitCheck for RuntimeInit {
    fn check(
        &self,
        module: &[u8],
        config: &BTreeMap<String, String>,
        artifacts: &BTreeMap<String, (String, PathBuf)>,
        memory: u64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let limits = wasmgrid_runtime::Limits { memory, ..Default::default() };
        let artifacts = artifacts
            .iter()
            .map(|(name, (sha256, path))| {
                (name.clone(), wasmgrid_runtime::Artifact { sha256: sha256.clone(), path: path.clone() })
            })
            .collect();
        Ok(self.0.check_init(module, &Arc::new(config.clone()), &Arc::new(artifacts), &limits)?)
    }
}

fn node_runtime(compile: &CompileArgs, data: &Path, code_cache: u64) -> Result<Arc<Runtime>> {
    let mut config = runtime_config(compile, false, 0)?;
    config.code_cache = code_cache;
    if compile.cache_dir.is_none() && !compile.no_cache {
        config.cache_dir = Some(data.join("cache"));
    }
    // The GPU is chosen (and logged) at start-up, not at the first call.
    config.gpu.open();
    Ok(Arc::new(Runtime::new(config).context("starting the runtime")?))
}

pub fn node(args: NodeArgs) -> Result<()> {
    let token = match std::env::var("WASMGRID_TOKEN") {
        Ok(token) if !token.trim().is_empty() => token.trim().to_string(),
        _ => match &args.token_file {
            Some(file) => tokens::read_token_file(file)?,
            None => bail!(
                "a node needs a token: set WASMGRID_TOKEN or --token-file (make one with `wasmgrid tokens create --node`)"
            ),
        },
    };
    let own = literal_addresses(&args.control_plane);
    args.egress.install(own.into_iter().chain([args.listen]), &args.data);
    let mut gateway = args.gateway.config()?;
    gateway.tls = args.tls.load(&[args.listen])?;
    let runtime = node_runtime(&args.compile, &args.data, args.code_cache)?;
    let config = AgentConfig {
        control_plane: args.control_plane,
        data_dir: args.data,
        listen: args.listen,
        advertise: args.advertise,
        id: args.id,
        gateway,
        task_slots: args.task_slots,
        task_priority: args.task_nice,
        token,
    };
    tokio_runtime()?.block_on(async move {
        let agent = agent::start(config, runtime).await?;
        notice(format_args!("node {} serving on {}", agent.id, agent.url));
        stop_on_signal(agent.stop()).await;
        Ok(())
    })
}

pub fn dev(args: DevArgs, compile: &CompileArgs) -> Result<()> {
    let mut certificate = args.certificate;
    let mut trust_hint = None;
    if args.tls {
        let loopback = ["localhost", "127.0.0.1", "::1"].map(String::from);
        let (_, files) = certs::generate(&args.data.join("tls"), &loopback)?;
        (certificate.tls_cert, certificate.tls_key) = (Some(files.cert), Some(files.key));
        certificate.tls_ca.get_or_insert(files.ca.clone());
        trust_hint = Some(files.ca);
    }
    let server_tls = certificate.load(&[args.listen, args.gateway])?;
    let scheme = if server_tls.is_some() { "https" } else { "http" };
    let peers = BTreeMap::from([(1, format!("{scheme}://{}", args.listen))]);
    let admin = tokens::admin_token(&tokens::admin_token_path(&args.data), true)?;
    let mut replica = ReplicaConfig::new(1, args.listen, peers, args.data.join("control-plane"), admin.clone());
    replica.job_io = Some(Arc::new(wasmgrid_jobs::FileJobIo));
    replica.serve = args.admission.listener.limits()?;
    replica.tls = server_tls.clone();
    let node_data = args.data.join("node");
    args.egress.install([args.listen, args.gateway], &args.data);
    let runtime = node_runtime(compile, &node_data, wasmgrid_runtime::DEFAULT_CODE_CACHE)?;
    replica.init_check = Some(Arc::new(RuntimeInit(runtime.clone())));
    tokio_runtime()?.block_on(async move {
        let cp = server::start(replica).await?;
        let url = cp.url();
        let node = AgentConfig {
            control_plane: vec![url.clone()],
            data_dir: node_data,
            listen: args.gateway,
            advertise: None,
            id: Some("dev".into()),
            gateway: GatewayConfig { tls: server_tls, ..args.admission.config()? },
            task_slots: 0,
            task_priority: TaskPriority::Nice(10),
            token: admin,
        };
        let agent = agent::start(node, runtime).await?;
        // For people and scripts; a reader that stopped reading (a closed
        // pipe) must not stop the grid, so write errors are ignored.
        let urls = format!("control plane: {url}\ngateway:       {}\ndashboard:     {url}/ui\n", agent.url);
        let _ = std::io::Write::write_all(&mut std::io::stdout(), urls.as_bytes());
        let _ = std::io::Write::flush(&mut std::io::stdout());
        if let Some(ca) = &trust_hint {
            let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
            notice(format_args!(
                "TLS with a certificate of its own CA; to trust it: export WASMGRID_CA={}",
                ca.display()
            ));
        }
        notice(format_args!(
            "data in {}, admin token in {}; Ctrl-C to stop",
            args.data.display(),
            tokens::admin_token_path(&args.data).display()
        ));
        let stopped = cp.replica.stopped();
        tokio::select! {
            () = stop_on_signal(async {
                agent.stop().await;
                cp.stop().await;
            }) => Ok(()),
            reason = stopped => Err(replica_stopped(1, &reason)),
        }
    })
}

/// The error a serving process ends with when its replica's Raft loop has
/// ended: the process stops (exit status 1) rather than answer health
/// checks while serving nothing.
fn replica_stopped(id: u64, reason: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "control-plane replica {id} stopped: {reason}\n\
         its data directory may be damaged or out of step with the others: see \"What happens on failure\" in docs/operations.md"
    )
}
