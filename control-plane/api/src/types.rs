//! Request and response bodies (JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header a replica sets on a request it forwards to the leader, so a
/// request is forwarded at most once.
pub const FORWARDED_HEADER: &str = "x-wasmgrid-forwarded";

/// Header a node's gateway sets to the version that answered.
pub const VERSION_HEADER: &str = "x-wasmgrid-version";

/// Every error body: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `not_found`, `conflict`,
    /// `too_large`, `no_quorum`, `internal`, or a runtime error kind.
    pub code: String,
    /// For people.
    pub message: String,
}

/// A stored module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Its sha256, hex: the name to deploy it by.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The world it implements: `scorer`, `mapper` or `reducer`.
    pub kind: String,
    /// Whether it was stored before this upload.
    pub existed: bool,
}

/// `POST /v1/functions/{name}/versions`: a new version of a function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The sha256 of an uploaded module.
    pub module: String,
    /// Memory limit per instance, in bytes (default 64 MiB).
    #[serde(default)]
    pub memory: Option<u64>,
    /// Time limit per call, in milliseconds (default 1000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Config values the function sees.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// `POST /v1/functions/{name}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to serve.
    pub version: u64,
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Numbered from 1.
    pub version: u64,
    /// The sha256 of its module.
    pub module: String,
    /// Its world.
    pub kind: String,
    /// Memory limit per instance, in bytes.
    pub memory: u64,
    /// Time limit per call, in milliseconds.
    pub timeout_ms: u64,
    /// Config values.
    pub config: BTreeMap<String, String>,
    /// The control plane's log index that created it.
    pub created_at: u64,
}

/// A function with all its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// The version that serves.
    pub active: u64,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// A function in a listing, and the answer to a deploy or rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSummary {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// The version that serves.
    pub active: u64,
    /// How many versions it has.
    pub versions: u64,
    /// The active version's world.
    pub kind: String,
    /// The active version's module.
    pub module: String,
}

/// `GET /v1/functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionList {
    /// Sorted by tenant, then name.
    pub functions: Vec<FunctionSummary>,
}

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
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    /// Sorted by id.
    pub nodes: Vec<NodeInfo>,
}

/// `POST /v1/nodes/{id}/heartbeat`: a node says it is alive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The highest log index the leader knows it holds (leader's view only).
    pub matched: Option<u64>,
    /// How far it is behind the leader's commit index (leader's view only).
    pub lag: Option<u64>,
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
}

/// `GET /v1/routes?since=N`: every function's active version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// Changes whenever the table may have changed (the applied log index).
    pub revision: u64,
    /// Sorted by tenant, then name.
    pub routes: Vec<Route>,
}

/// `POST /v1/fn/{tenant}/{name}` on a node: rows to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// One JSON object per row.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The rows with the scorer's columns added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeResponse {
    /// The function.
    pub function: String,
    /// The version that scored every row.
    pub version: u64,
    /// The input rows plus the score columns.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}
