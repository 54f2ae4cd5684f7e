//! Nodes: heartbeats and usage, the cluster, and the route table nodes serve.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// Whether a node is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeats arrive.
    Alive,
    /// No heartbeat for longer than the liveness timeout.
    Down,
    /// This leader has not heard from it yet (it was elected recently).
    Unknown,
}

impl NodeState {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Down => "down",
            NodeState::Unknown => "unknown",
        }
    }
}

/// A node as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub id: String,
    /// Its gateway URL.
    pub address: String,
    /// Whether it is heard from.
    pub state: NodeState,
    /// Milliseconds since its last heartbeat, if the leader has had one.
    pub last_seen_ms: Option<u64>,
    /// Calls running on it.
    pub inflight: u64,
    /// Calls it has served.
    pub invocations: u64,
    /// Modules it has compiled and ready (sha256).
    pub warm: Vec<String>,
    /// The route-table revision it serves.
    pub revision: u64,
    /// Its GPU adapter, if it has one.
    #[serde(default)]
    pub gpu: Option<String>,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    /// Sorted by id.
    pub nodes: Vec<NodeInfo>,
}

/// `POST /v1/nodes/{id}/heartbeat`: a node says it is alive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Its gateway URL.
    pub address: String,
    /// Calls running.
    pub inflight: u64,
    /// Calls served since it started.
    pub invocations: u64,
    /// Modules compiled and ready (sha256).
    pub warm: Vec<String>,
    /// The route-table revision it serves.
    pub revision: u64,
    /// Its GPU adapter, if it has one: functions deployed with
    /// `gpu: required` run only on such nodes.
    #[serde(default)]
    pub gpu: Option<String>,
    /// What each function served here used since the node started.
    #[serde(default)]
    pub usage: Vec<FunctionUsage>,
    /// Its code cache's budget, in bytes (0 from nodes of releases before
    /// it): functions are placed on nodes in proportion to it.
    #[serde(default)]
    pub code_cache: u64,
    /// Whether it runs ranges of map tasks as one attempt (false from
    /// nodes of releases before them): jobs are leased in ranges only when
    /// every node does.
    #[serde(default)]
    pub ranges: bool,
    /// Whether it reads a job's `schema` (false from nodes of releases
    /// before it): a job with one is refused while a node does not.
    #[serde(default)]
    pub schemas: bool,
    /// Whether it runs aggregators (false from nodes of releases before
    /// them): a job of one is refused while a node does not.
    #[serde(default)]
    pub aggregators: bool,
    /// Each trial (shadow or canary) it serves, since it began here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trials: Vec<TrialUsage>,
    /// Each trigger it runs a consumer of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerUsage>,
}

/// What one function's per-request calls used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionUsage {
    /// The tenant.
    pub tenant: String,
    /// The function.
    pub function: String,
    /// Calls answered (every status, refusals included).
    pub calls: u64,
    /// Calls answered with an error.
    pub errors: u64,
    /// Wall time from request to answer, in microseconds.
    pub wall_us: u64,
    /// CPU time the guest's calls took, in microseconds.
    pub cpu_us: u64,
    /// Time in `gpu` kernels, in microseconds.
    pub gpu_us: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Calls by wall time: `latency[i]` counts the calls that took at most
    /// [`LATENCY_BOUNDS_US`]`[i]` microseconds and more than the bound
    /// before; the last element, those over the last bound. Empty from
    /// nodes of releases before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
}

/// The upper bounds of [`FunctionUsage::latency`]'s buckets, in
/// microseconds: 25 µs to 10 s, as the nodes' latency histograms.
pub const LATENCY_BOUNDS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// The bucket of [`FunctionUsage::latency`] a call of `us` microseconds
/// counts in.
pub fn latency_bucket(us: u64) -> usize {
    LATENCY_BOUNDS_US.partition_point(|&bound| bound < us)
}

/// The `q` quantile of a latency histogram, in microseconds, interpolated
/// linearly within its bucket (as Prometheus' `histogram_quantile`); calls
/// over the last bound count as the last bound. 0 for no calls.
pub fn latency_quantile(latency: &[u64], q: f64) -> u64 {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &count) in latency.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS_US.get(i) else { break };
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
            let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
            return lower + ((upper - lower) as f64 * within).round() as u64;
        }
        below += count;
    }
    LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1]
}

impl FunctionUsage {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &FunctionUsage) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.wall_us += other.wall_us;
        self.cpu_us += other.cpu_us;
        self.gpu_us += other.gpu_us;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }
}

/// `GET /v1/traffic`: per function, its per-request calls over the last
/// minutes in windows of `window_ms`, from the nodes' heartbeats (the
/// leader's memory; it starts afresh when leadership moves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficReport {
    /// The length of a window.
    pub window_ms: u64,
    /// How far back windows are kept.
    pub kept_ms: u64,
    /// By tenant, then function.
    pub functions: Vec<FunctionTraffic>,
}

/// One function in a [`TrafficReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionTraffic {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub function: String,
    /// Windows with calls, oldest first; the last may still be open.
    pub points: Vec<TrafficPoint>,
}

/// The calls of one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPoint {
    /// The window's start, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Calls answered in it, on every node.
    pub calls: u64,
    /// ... of which with an error.
    pub errors: u64,
    /// Median wall time, in microseconds (interpolated within a bucket).
    pub p50_us: u64,
    /// 99th percentile wall time, in microseconds.
    pub p99_us: u64,
}

/// What one per-request call logged, as a node keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLog {
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The version that served it.
    pub version: u64,
    /// What it logged and wrote, and its error.
    #[serde(flatten)]
    pub output: Excerpt,
}

/// What one invocation (a call, or a batch attempt) logged and wrote to
/// stdout and stderr, and its error, cut to the node's per-invocation budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excerpt {
    /// Its error, if it failed.
    pub error: Option<String>,
    /// What it logged through the `log` interface.
    pub lines: Vec<CallLogLine>,
    /// Lines it logged past the budget.
    pub dropped: u64,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

/// One logged line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLogLine {
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The message.
    pub message: String,
}

/// `GET /v1/logs/{tenant}/{name}` on a node: its latest calls that logged
/// something or failed, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLogs {
    /// The tenant.
    pub tenant: String,
    /// The function.
    pub function: String,
    /// The calls.
    pub calls: Vec<CallLog>,
}

/// What a tenant's batch jobs used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    /// Jobs submitted.
    pub jobs: u64,
    /// Their tasks (map and reduce).
    pub tasks: u64,
    /// Records read.
    pub records_in: u64,
    /// Bytes of input.
    pub bytes_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Time in `gpu` kernels of winning attempts, in milliseconds.
    pub gpu_ms: u64,
}

/// `GET /v1/usage`: what the caller's tenant used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The tenant.
    pub tenant: String,
    /// Per function, summed over every node heard from since the control
    /// plane's leader was elected (each node counts from its own start).
    pub functions: Vec<FunctionUsage>,
    /// Its batch jobs, all of them.
    pub jobs: JobUsage,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The control plane's current route-table revision.
    pub revision: u64,
}

/// One replica in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: u64,
    /// Its URL.
    pub url: String,
    /// `leader`, `follower` (a voter) or `learner` (receives the log, does
    /// not vote yet).
    #[serde(default)]
    pub role: String,
    /// The highest log index the leader knows it holds (leader's view only).
    pub matched: Option<u64>,
    /// How far it is behind the leader's commit index (leader's view only).
    pub lag: Option<u64>,
}

/// `POST /v1/cluster/leader`: the voter to hand leadership to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeader {
    /// Its replica id.
    pub id: u64,
}

/// `POST /v1/cluster/replicas`: a replica to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReplica {
    /// Its id (unused by the cluster's replicas).
    pub id: u64,
    /// Its base URL, `http(s)://HOST:PORT`.
    pub url: String,
}

/// `GET /v1/cluster`: the answering replica's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The replica that answered.
    pub id: u64,
    /// `leader` or `follower`.
    pub role: String,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// The leader's URL.
    pub leader_url: Option<String>,
    /// The current term.
    pub term: u64,
    /// Highest committed log index.
    pub commit: u64,
    /// Highest applied log index.
    pub applied: u64,
    /// First index still in the log; entries before it live in the snapshot.
    pub first_index: u64,
    /// Snapshots this replica installed from the leader since it started.
    pub snapshots_installed: u64,
    /// Every replica.
    pub members: Vec<Member>,
}

/// What a node serves for one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The tenant.
    pub tenant: String,
    /// The function.
    pub name: String,
    /// The active version.
    pub version: u64,
    /// Its module's sha256.
    pub module: String,
    /// Its world.
    pub kind: String,
    /// Memory limit per instance, in bytes.
    pub memory: u64,
    /// Time limit per call, in milliseconds.
    pub timeout_ms: u64,
    /// Config values.
    pub config: BTreeMap<String, String>,
    /// Whether it needs a node with a GPU.
    #[serde(default)]
    pub gpu: GpuPlacement,
    /// Whether it is served without a token.
    #[serde(default)]
    pub public: bool,
    /// Artifacts its calls read, by name: their sha256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// Why its `gpu` calls are refused (its tenant used its GPU quota).
    #[serde(default)]
    pub gpu_refused: Option<String>,
    /// The nodes it is placed on, by id: they load it, and every other
    /// gateway forwards its calls to one of them. Empty: every node loads
    /// it (a function not placed yet, or a control plane of a release
    /// before placement).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Its candidate version, while one runs beside it (nodes of releases
    /// before trials ignore it and serve the active version alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Box<Candidate>>,
}

/// A route's candidate version and how it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// How it takes traffic.
    pub trial: TrialSpec,
    /// The version, as a route of its own (placed where the active one is).
    pub route: Route,
}

impl Route {
    /// Whether the node `id` loads it.
    pub fn placed_on(&self, id: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == id)
    }

    /// Whether `other` is the same version run the same way (where it is
    /// placed and its candidate aside).
    pub fn same_version(&self, other: &Route) -> bool {
        let bare = |r: &Route| Route { nodes: Vec::new(), candidate: None, ..r.clone() };
        bare(self) == bare(other)
    }
}

/// `GET /v1/routes?since=N`: every function's active version, and the
/// tokens the gateways accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// Changes whenever the table may have changed (the applied log index).
    pub revision: u64,
    /// Sorted by tenant, then name.
    pub routes: Vec<Route>,
    /// Every live token, by hash (a node never sees a token itself).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// The per-node call quota of each tenant that has one.
    #[serde(default)]
    pub concurrency: BTreeMap<String, u64>,
    /// Every registered node's gateway URL, by id: where calls of a
    /// function placed elsewhere are forwarded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, String>,
    /// Every trigger: a node runs those whose function is placed on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
}
