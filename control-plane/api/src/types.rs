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

/// Where a function may run, by whether a node has a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuPlacement {
    /// Anywhere (`gpu` calls use whatever the node has).
    #[default]
    Any,
    /// Anywhere, GPU nodes first.
    Preferred,
    /// Only on nodes with a GPU.
    Required,
}

impl GpuPlacement {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            GpuPlacement::Any => "any",
            GpuPlacement::Preferred => "preferred",
            GpuPlacement::Required => "required",
        }
    }

    fn is_any(&self) -> bool {
        *self == GpuPlacement::Any
    }
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
    /// Whether it needs a node with a GPU.
    #[serde(default)]
    pub gpu: GpuPlacement,
    /// Whether the gateways serve it without a token.
    #[serde(default)]
    pub public: bool,
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
    /// Whether it needs a node with a GPU.
    #[serde(default, skip_serializing_if = "GpuPlacement::is_any")]
    pub gpu: GpuPlacement,
    /// Whether the gateways serve it without a token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
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
    /// Its GPU adapter, if it has one: functions deployed with
    /// `gpu: required` run only on such nodes.
    #[serde(default)]
    pub gpu: Option<String>,
    /// What each function served here used since the node started.
    #[serde(default)]
    pub usage: Vec<FunctionUsage>,
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
    }
}

/// What one per-request call logged, as a node keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLog {
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The version that served it.
    pub version: u64,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// What it logged through the `log` interface.
    pub lines: Vec<CallLogLine>,
    /// Lines it logged past the per-call budget.
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
    /// Whether it needs a node with a GPU.
    #[serde(default)]
    pub gpu: GpuPlacement,
    /// Whether it is served without a token.
    #[serde(default)]
    pub public: bool,
    /// Why its `gpu` calls are refused (its tenant used its GPU quota).
    #[serde(default)]
    pub gpu_refused: Option<String>,
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
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, for every tenant: the token made at bootstrap.
    Admin,
    /// What a node needs: routes, modules, heartbeats and batch tasks.
    Node,
    /// Everything on its tenant's functions and jobs, calls included.
    Full,
    /// Reads of its tenant's functions and jobs.
    ReadOnly,
    /// Calls to its tenant's functions on the gateways, nothing else.
    InvokeOnly,
}

impl Role {
    /// Its name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Node => "node",
            Role::Full => "full",
            Role::ReadOnly => "read-only",
            Role::InvokeOnly => "invoke-only",
        }
    }

    /// Whether it may call functions on a gateway.
    pub fn may_invoke(self) -> bool {
        matches!(self, Role::Admin | Role::Full | Role::InvokeOnly)
    }

    /// Whether it may read its tenant's logs on a gateway.
    pub fn may_read_logs(self) -> bool {
        matches!(self, Role::Admin | Role::Full | Role::ReadOnly)
    }
}

/// A token as a node's gateway checks it: its hash and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The sha256 of the token, hex.
    pub sha256: String,
    /// Its tenant; `None` for admin and node tokens.
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
}

/// What a tenant may use; `None` is no limit. (Every field is always
/// written: the consensus log's encoding is not self-describing.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Functions it may have.
    #[serde(default)]
    pub functions: Option<u64>,
    /// Bytes of modules it may store (the modules it uploaded).
    #[serde(default)]
    pub module_bytes: Option<u64>,
    /// Memory limit a function of it may have, per instance.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Calls of its functions running at once on one node.
    #[serde(default)]
    pub concurrency: Option<u64>,
    /// Batch task attempts of its jobs running at once on the grid.
    #[serde(default)]
    pub task_slots: Option<u64>,
    /// Milliseconds its calls and jobs may spend in `gpu` kernels, in all.
    #[serde(default)]
    pub gpu_ms: Option<u64>,
}

impl Quotas {
    /// What a new tenant gets unless told otherwise: 100 functions, 1 GiB
    /// of modules, 1 GiB per instance; calls and task slots shared fairly.
    pub fn tenant_defaults() -> Quotas {
        Quotas { functions: Some(100), module_bytes: Some(1 << 30), memory: Some(1 << 30), ..Quotas::default() }
    }

    /// These quotas with every limit `other` sets replaced.
    pub fn merged(&self, other: &Quotas) -> Quotas {
        Quotas {
            functions: other.functions.or(self.functions),
            module_bytes: other.module_bytes.or(self.module_bytes),
            memory: other.memory.or(self.memory),
            concurrency: other.concurrency.or(self.concurrency),
            task_slots: other.task_slots.or(self.task_slots),
            gpu_ms: other.gpu_ms.or(self.gpu_ms),
        }
    }
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    /// The tenant's name (like a function name).
    pub name: String,
    /// Its quotas, over [`Quotas::tenant_defaults`].
    #[serde(default)]
    pub quotas: Quotas,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    /// Its name.
    pub name: String,
    /// The control plane's log index that created it (0 for `default`).
    pub created_at: u64,
    /// What it may use.
    #[serde(default)]
    pub quotas: Quotas,
}

/// `GET /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantList {
    /// By name.
    pub tenants: Vec<TenantInfo>,
}

/// `POST /v1/tokens`: a new token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The tenant it acts for; none for a node token.
    #[serde(default)]
    pub tenant: Option<String>,
    /// What it may do (`full`, `read-only`, `invoke-only` or `node`).
    pub role: Role,
}

/// A token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Names it for `revoke` (not a secret).
    pub id: String,
    /// The tenant it acts for.
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// The control plane's log index that created it.
    pub created_at: u64,
}

/// The answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// The secret, for `Authorization: Bearer`.
    pub token: String,
    /// What it is.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    /// By tenant, then id.
    pub tokens: Vec<TokenInfo>,
}

/// `GET /v1/whoami`: who the caller's token says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The tenant its requests act on.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
    /// The token's id (`admin` for the bootstrap token).
    pub token: String,
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

/// `POST /v1/jobs`: run a function over partitioned data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The scorer or mapper (a deployed function; its active version runs).
    pub function: String,
    /// Input: a file, directory or glob the grid can read.
    pub input: String,
    /// Output directory.
    pub output: String,
    /// Input format, when the extension does not tell (csv, jsonl, parquet, text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_format: Option<String>,
    /// Output format (jsonl, csv, parquet); default jsonl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A deployed reducer for the pairs the mapper emits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<String>,
    /// Reduce partitions (output files of the reduce stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce_partitions: Option<u32>,
    /// Target partition size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_size: Option<u64>,
    /// Attempts per task before the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Time limit of one function call, milliseconds (default: the function's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Replace earlier results in the output directory.
    #[serde(default)]
    pub overwrite: bool,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Tasks are running.
    Running,
    /// Every task has a winning attempt; the output is being published.
    Committing,
    /// The output and its `_SUCCESS` manifest are published.
    Succeeded,
    /// A task failed too often, or the commit failed; nothing was published.
    Failed,
    /// Cancelled; nothing was published.
    Cancelled,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Committing => "committing",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A job's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// One task per input partition: score or map.
    Map,
    /// One task per reduce partition.
    Reduce,
}

impl Stage {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Map => "map",
            Stage::Reduce => "reduce",
        }
    }
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Its id.
    pub id: String,
    /// The function and the version that runs.
    pub function: String,
    /// Its version.
    pub version: u64,
    /// The reducer, if any, and its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<(String, u64)>,
    /// Input as given.
    pub input: String,
    /// Output directory.
    pub output: String,
    /// Where it is.
    pub state: JobState,
    /// The stage running (the last one, once over).
    pub stage: Stage,
    /// Map tasks (input partitions).
    pub map_tasks: u32,
    /// Map tasks with a winning attempt.
    pub map_done: u32,
    /// Reduce tasks (0 without a reducer).
    pub reduce_tasks: u32,
    /// Reduce tasks with a winning attempt.
    pub reduce_done: u32,
    /// Attempts running now (known to the leader only; 0 elsewhere).
    pub running: u32,
    /// Attempts that failed (retried or not).
    pub failed_attempts: u32,
    /// Input bytes planned.
    pub bytes_in: u64,
    /// Input bytes of the map tasks done.
    pub bytes_done: u64,
    /// Records read by winning map attempts.
    pub records_in: u64,
    /// Rows in the winning attempts' output.
    pub rows_out: u64,
    /// Milliseconds the winning attempts spent in `gpu` calls.
    #[serde(default)]
    pub gpu_ms: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch, when it was submitted.
    pub submitted_ms: u64,
    /// ... and when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobInfo>,
}

/// `POST /v1/tasks/lease`: a node asks for work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The node.
    pub node: String,
    /// Most tasks it takes now.
    pub max: u32,
    /// Longest to wait for one, milliseconds.
    pub wait_ms: u64,
    /// Jobs of the tasks it is running (so it hears of cancellations).
    #[serde(default)]
    pub running_jobs: Vec<String>,
}

/// The part of a file a map task reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanSpec {
    /// Records starting in `[start, end)`.
    Bytes {
        /// First byte.
        start: u64,
        /// One past the last byte a record may start at.
        end: u64,
    },
    /// Parquet row groups.
    RowGroups {
        /// First.
        first: u64,
        /// How many.
        count: u64,
    },
}

/// One input partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpec {
    /// The file.
    pub path: String,
    /// Its format.
    pub format: String,
    /// The part of it.
    pub span: SpanSpec,
    /// Approximate bytes.
    pub bytes: u64,
}

/// A function as a task runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFunction {
    /// Its module's sha256.
    pub module: String,
    /// Memory limit, bytes.
    pub memory: u64,
    /// Time limit of one call, milliseconds.
    pub timeout_ms: u64,
    /// Its config.
    pub config: BTreeMap<String, String>,
    /// Whether it needs a node with a GPU.
    #[serde(default)]
    pub gpu: GpuPlacement,
}

/// One attempt at one task, leased to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The job.
    pub job: String,
    /// The job's tenant.
    #[serde(default)]
    pub tenant: String,
    /// The stage.
    pub stage: Stage,
    /// The task's index within the stage.
    pub task: u32,
    /// This attempt's id (unique across the job's life).
    pub attempt: u64,
    /// What runs.
    pub function: TaskFunction,
    /// A map task's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PartitionSpec>,
    /// A reduce task's input: the winning map attempts' pair files for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shuffle: Vec<String>,
    /// Where attempts write (the output's `_temporary/{job}`).
    pub work_dir: String,
    /// Why its `gpu` calls are refused (its tenant used its GPU quota).
    #[serde(default)]
    pub gpu_refused: Option<String>,
    /// Output format.
    pub format: String,
    /// Reduce partitions; 0 when the job has no reduce stage.
    pub reduce_partitions: u32,
}

/// The answer to a lease request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Tasks to run now.
    pub tasks: Vec<TaskAssignment>,
    /// Jobs among `running_jobs` that are over: stop their tasks.
    #[serde(default)]
    pub stop: Vec<String>,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// It wrote its output under `work_dir`.
    Done {
        /// Files written, relative to the output directory; for a map task
        /// feeding a reducer, the pair file of reduce partition `i` is
        /// `files[i]` (empty string when it has none).
        files: Vec<String>,
        /// Rows in each file.
        rows: Vec<u64>,
        /// Records read.
        records_in: u64,
        /// Microseconds its `gpu` calls took.
        #[serde(default)]
        gpu_us: u64,
    },
    /// It failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// One attempt's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The job.
    pub job: String,
    /// The stage.
    pub stage: Stage,
    /// The task.
    pub task: u32,
    /// The attempt.
    pub attempt: u64,
    /// How it ended.
    pub outcome: TaskOutcome,
}

/// `POST /v1/tasks/report`: a node reports finished attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// The node.
    pub node: String,
    /// Finished attempts.
    pub reports: Vec<TaskReport>,
}

/// A task's winning attempt, as a commit publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub task: u32,
    /// The attempt.
    pub attempt: u64,
    /// Files it wrote, relative to the output directory.
    pub files: Vec<String>,
    /// Rows in each.
    pub rows: Vec<u64>,
    /// Records it read.
    pub records_in: u64,
}

/// Everything the commit of a job needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCommit {
    /// The job.
    pub id: String,
    /// The function and version that ran.
    pub function: String,
    /// Its version.
    pub version: u64,
    /// The reducer and its version.
    pub reduce: Option<(String, u64)>,
    /// Output directory.
    pub output: String,
    /// Output format.
    pub format: String,
    /// Reduce partitions (0: none).
    pub reduce_partitions: u32,
    /// Winners of the map stage, by task.
    pub map: Vec<TaskResult>,
    /// Winners of the reduce stage, by task.
    pub reduce_results: Vec<TaskResult>,
}

/// One task's failures in `GET /v1/jobs/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLog {
    /// The stage.
    pub stage: Stage,
    /// The task.
    pub task: u32,
    /// Failed attempts.
    pub failures: u32,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// Whether an attempt won.
    pub done: bool,
}

/// `GET /v1/jobs/{id}/logs`: every task that failed at least once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogs {
    /// The job.
    pub id: String,
    /// Tasks with failures, by stage and index.
    pub tasks: Vec<TaskLog>,
}

/// What one attempt at a job's task logged, on the node that ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// The stage.
    pub stage: Stage,
    /// The task.
    pub task: u32,
    /// The attempt.
    pub attempt: u64,
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// What it logged through the `log` interface.
    pub lines: Vec<CallLogLine>,
    /// Lines it logged past the per-attempt budget.
    pub dropped: u64,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

/// `GET /v1/jobs/{tenant}/{id}/logs` on a node: the latest attempts of the
/// job on that node that logged something or failed, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLogs {
    /// The tenant.
    pub tenant: String,
    /// The job.
    pub job: String,
    /// The attempts.
    pub attempts: Vec<AttemptLog>,
}
