//! What the state machine holds and is told: records, commands, their
//! outcomes and errors, and how records are keyed and encoded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmgrid_api::{Quotas, Role, Trial, TrialSpec, TriggerSpec};

use super::jobs::JobCommand;
pub use super::outcome::*;

/// The tenant that always exists: an admin token acts on it unless it
/// names another.
pub const DEFAULT_TENANT: &str = "default";

/// Largest module the state accepts, in bytes.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

pub use wasmgrid_api::MAX_ARTIFACT_BYTES;

/// How one version of a function runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// The component's world: "scorer", "mapper" or "reducer".
    pub kind: String,
    /// Memory limit per instance, in bytes.
    pub memory: u64,
    /// Time limit per call, in milliseconds.
    pub timeout_ms: u64,
    /// Config values the function sees.
    pub config: BTreeMap<String, String>,
    /// Whether it needs a node with a GPU.
    #[serde(default)]
    pub gpu: wasmgrid_api::GpuPlacement,
    /// Artifacts its calls read, by name: their sha256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// Whether the gateways serve it without a token.
    #[serde(default)]
    pub public: bool,
    /// On how many nodes it is placed. Versions from releases before
    /// placement read as `all`, as they ran.
    #[serde(default)]
    pub replicas: wasmgrid_api::Replicas,
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Numbered from 1.
    pub version: u64,
    /// The sha256 of its module.
    pub module: String,
    /// How it runs.
    pub spec: FunctionSpec,
    /// The log index that created it.
    pub created_at: u64,
}

/// A function as it is read: its head and the version that serves (every
/// version is a record of its own: [`State::versions`](super::State::versions)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// The version that serves.
    pub active: u64,
    /// The newest version: versions are numbered 1 to `latest`, and none is
    /// ever removed but with the function.
    pub latest: u64,
    /// The active version.
    pub current: Option<Version>,
    /// The nodes it is placed on (empty: not placed, every node loads it).
    pub placement: Vec<String>,
    /// The candidate running beside the active version, if any.
    pub trial: Option<Trial>,
    /// The candidate version's record.
    pub candidate: Option<Version>,
}

/// What the state stores for a function: its head. A deploy writes one
/// version record and rewrites this small one, so a deploy costs the same
/// however many came before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FunctionRecord {
    pub(crate) tenant: String,
    pub(crate) name: String,
    pub(crate) active: u64,
    pub(crate) latest: u64,
    /// The nodes it is placed on, by id; kept across versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) placement: Vec<String>,
    /// The candidate running beside the active version, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trial: Option<Trial>,
}

/// How a function was stored before versions had records of their own:
/// every version in the one value. Read once, at start, to move them.
#[derive(Deserialize)]
pub(crate) struct InlineFunction {
    pub(crate) tenant: String,
    pub(crate) name: String,
    pub(crate) versions: Vec<Version>,
    pub(crate) active: u64,
}

impl Function {
    /// The version that serves.
    pub fn active_version(&self) -> Option<&Version> {
        self.current.as_ref()
    }
}

/// A change to the state, as the consensus log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Stores a module under its sha256 (once, however many functions use
    /// it) and records that `tenant` uploaded it: a tenant deploys only
    /// modules it uploaded.
    PutModule {
        /// The uploader.
        tenant: String,
        /// The sha256 of `bytes`, hex.
        sha256: String,
        /// The component. Encoded as one byte string, not a sequence of
        /// numbers: decoding a large module byte by byte took seconds.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Records that artifact `sha256` of `size` bytes is stored (its bytes
    /// are in each replica's blob store, not in the log) and that `tenant`
    /// uploaded it: a tenant deploys only artifacts it uploaded.
    PutArtifact {
        /// The uploader.
        tenant: String,
        /// The sha256 of its bytes, hex.
        sha256: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Adds a version to a function (creating it) and makes it active,
    /// or its candidate when `trial` says how it runs.
    Deploy {
        /// The tenant.
        tenant: String,
        /// The function.
        name: String,
        /// The sha256 of a stored module.
        module: String,
        /// How it runs.
        spec: FunctionSpec,
        /// The nodes it is placed on from now on (none: as it was).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        placement: Option<Vec<String>>,
        /// Runs the new version as the candidate (the active one stays)
        /// instead of making it active. Replicas of releases before trials
        /// would make it active: deploys with one are refused while such a
        /// replica remains.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trial: Option<TrialSpec>,
    },
    /// Makes an earlier version active again (promotes the candidate, when
    /// it is that version: its trial ends).
    Rollback {
        /// The tenant.
        tenant: String,
        /// The function.
        name: String,
        /// The version to serve.
        version: u64,
    },
    /// Removes a function and all its versions (modules stay).
    Delete {
        /// The tenant.
        tenant: String,
        /// The function.
        name: String,
    },
    /// Adds a node to the registry, or records its new address.
    RegisterNode {
        /// The node's id.
        id: String,
        /// Its gateway URL.
        address: String,
    },
    /// A batch job command.
    Job(JobCommand),
    /// Adds a tenant.
    CreateTenant {
        /// Its name.
        name: String,
        /// What it may use.
        quotas: Quotas,
    },
    /// Marks a tenant as having used its GPU quota, or not any more.
    GpuExhausted {
        /// The tenant.
        name: String,
        /// Whether its `gpu` calls are refused.
        exhausted: bool,
    },
    /// Replaces a tenant's quotas.
    SetQuotas {
        /// The tenant.
        name: String,
        /// What it may use from now on.
        quotas: Quotas,
    },
    /// Removes a tenant, its functions, its tokens and its module uploads
    /// (its jobs stay, as history).
    DeleteTenant {
        /// Its name.
        name: String,
    },
    /// Stores a token by its hash.
    CreateToken {
        /// The sha256 of the token, hex.
        sha256: String,
        /// Its tenant; none for a node token.
        tenant: Option<String>,
        /// What it may do.
        role: Role,
    },
    /// Forgets a token.
    RevokeToken {
        /// The sha256 of the token, hex.
        sha256: String,
    },
    /// `command`, applied at most once per `id`: a request retried after
    /// its answer was lost (on a new leader, say) is answered with what
    /// the first one did instead of being applied again.
    Once {
        /// The request's id and the command's place among its writes.
        id: String,
        /// What to apply.
        command: Box<Command>,
    },
    /// Places functions on nodes: each listed function's nodes become
    /// those given (a function removed meanwhile is skipped). Last, so the
    /// variants before it keep their numbers for [`LegacyCommand`].
    Place {
        /// The new placements.
        changes: Vec<Placement>,
    },
    /// Runs a version of a function as its candidate (`Some`), or ends the
    /// trial without promoting it (`None`).
    SetTrial {
        /// The tenant.
        tenant: String,
        /// The function.
        name: String,
        /// The candidate and how it runs.
        trial: Option<Trial>,
    },
    /// Creates a trigger (a scorer fed from a stream). Replicas of releases
    /// before triggers cannot read it: it is refused while one remains.
    PutTrigger {
        /// The tenant.
        tenant: String,
        /// What it runs.
        spec: TriggerSpec,
    },
    /// Stops a trigger's consumers, or starts them again.
    PauseTrigger {
        /// The tenant.
        tenant: String,
        /// The trigger.
        name: String,
        /// Whether it is paused from now on.
        paused: bool,
    },
    /// Removes a trigger (its consumer group's offsets stay in the broker).
    DeleteTrigger {
        /// The tenant.
        tenant: String,
        /// The trigger.
        name: String,
    },
}

/// [`FunctionSpec`] as entries written before the encoding tag hold it.
#[derive(Deserialize)]
pub(crate) struct LegacySpec {
    kind: String,
    memory: u64,
    timeout_ms: u64,
    config: BTreeMap<String, String>,
    gpu: wasmgrid_api::GpuPlacement,
    public: bool,
}

/// [`Command`] as entries written before the encoding tag (bincode, which
/// reads fields by position) hold it: every variant in its place, with the
/// shapes of then. Read only through [`LegacyCommand::decode`].
#[derive(Deserialize)]
pub(crate) enum LegacyCommand {
    PutModule {
        tenant: String,
        sha256: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    Deploy {
        tenant: String,
        name: String,
        module: String,
        spec: LegacySpec,
    },
    Rollback {
        tenant: String,
        name: String,
        version: u64,
    },
    Delete {
        tenant: String,
        name: String,
    },
    RegisterNode {
        id: String,
        address: String,
    },
    Job(JobCommand),
    CreateTenant {
        name: String,
        quotas: Quotas,
    },
    GpuExhausted {
        name: String,
        exhausted: bool,
    },
    SetQuotas {
        name: String,
        quotas: Quotas,
    },
    DeleteTenant {
        name: String,
    },
    CreateToken {
        sha256: String,
        tenant: Option<String>,
        role: Role,
    },
    RevokeToken {
        sha256: String,
    },
    Once {
        id: String,
        command: Box<LegacyCommand>,
    },
}

impl LegacyCommand {
    /// A command from an entry written before the encoding tag.
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Command, crate::codec::CodecError> {
        crate::codec::legacy_bincode::<LegacyCommand>(bytes).map(Command::from)
    }
}

impl From<LegacyCommand> for Command {
    fn from(old: LegacyCommand) -> Command {
        match old {
            LegacyCommand::PutModule { tenant, sha256, bytes } => Command::PutModule { tenant, sha256, bytes },
            LegacyCommand::Deploy { tenant, name, module, spec } => {
                let LegacySpec { kind, memory, timeout_ms, config, gpu, public } = spec;
                // Versions of then ran on every node.
                let replicas = wasmgrid_api::Replicas::All;
                let artifacts = BTreeMap::new();
                let spec = FunctionSpec { kind, memory, timeout_ms, config, gpu, public, replicas, artifacts };
                Command::Deploy { tenant, name, module, spec, placement: None, trial: None }
            }
            LegacyCommand::Rollback { tenant, name, version } => Command::Rollback { tenant, name, version },
            LegacyCommand::Delete { tenant, name } => Command::Delete { tenant, name },
            LegacyCommand::RegisterNode { id, address } => Command::RegisterNode { id, address },
            LegacyCommand::Job(job) => Command::Job(job),
            LegacyCommand::CreateTenant { name, quotas } => Command::CreateTenant { name, quotas },
            LegacyCommand::GpuExhausted { name, exhausted } => Command::GpuExhausted { name, exhausted },
            LegacyCommand::SetQuotas { name, quotas } => Command::SetQuotas { name, quotas },
            LegacyCommand::DeleteTenant { name } => Command::DeleteTenant { name },
            LegacyCommand::CreateToken { sha256, tenant, role } => Command::CreateToken { sha256, tenant, role },
            LegacyCommand::RevokeToken { sha256 } => Command::RevokeToken { sha256 },
            LegacyCommand::Once { id, command } => Command::Once { id, command: Box::new(Command::from(*command)) },
        }
    }
}

/// Where one function is placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The tenant.
    pub tenant: String,
    /// The function.
    pub name: String,
    /// The node ids, sorted.
    pub nodes: Vec<String>,
}

/// A tenant in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Its name.
    pub name: String,
    /// The log index that created it (0 for `default`).
    pub created_at: u64,
    /// What it may use.
    #[serde(default)]
    pub quotas: Quotas,
    /// Whether it has used its GPU quota: its `gpu` calls are refused.
    #[serde(default)]
    pub gpu_exhausted: bool,
}

impl TenantRecord {
    /// `default` as it is until its quotas are set: no limits.
    pub(super) fn default_tenant() -> TenantRecord {
        TenantRecord { name: DEFAULT_TENANT.into(), created_at: 0, quotas: Quotas::default(), gpu_exhausted: false }
    }
}

/// A token in the state, stored under its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The sha256 of the token, hex.
    pub sha256: String,
    /// Its tenant; none for a node token.
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// The log index that created it.
    pub created_at: u64,
}

/// A node in the registry. Liveness is not here: heartbeats stay in the
/// leader's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its id.
    pub id: String,
    /// Its gateway URL.
    pub address: String,
    /// The log index that registered it (or last changed its address).
    pub registered_at: u64,
}

impl Command {
    /// Whether applying it changes the route table.
    pub fn changes_routes(&self) -> bool {
        matches!(
            self,
            Command::Deploy { .. }
                | Command::Place { .. }
                | Command::RegisterNode { .. }
                | Command::Rollback { .. }
                | Command::SetTrial { .. }
                | Command::Delete { .. }
                | Command::DeleteTenant { .. }
                | Command::CreateToken { .. }
                | Command::RevokeToken { .. }
                | Command::SetQuotas { .. }
                | Command::GpuExhausted { .. }
                | Command::PutTrigger { .. }
                | Command::PauseTrigger { .. }
                | Command::DeleteTrigger { .. }
        ) || matches!(self, Command::Once { command, .. } if command.changes_routes())
    }
}

/// Checks a tenant or function name: 1 to 63 characters of `a-z`, `0-9`,
/// `-`, `_` and `.`, starting with a letter or digit, with no `..`. Names
/// become URL path segments and file names, so nothing else is allowed.
pub fn validate_name(name: &str) -> Result<()> {
    wasmgrid_api::check_name(name).map_err(|reason| StateError::InvalidName { name: name.to_string(), reason })
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A trigger's record in the `access` tree.
pub(super) fn trigger_key(tenant: &str, name: &str) -> Vec<u8> {
    format!("trigger/{tenant}/{name}").into_bytes()
}

pub(super) fn tenant_key(name: &str) -> Vec<u8> {
    format!("tenant/{name}").into_bytes()
}

pub(super) fn token_key(sha256: &str) -> Vec<u8> {
    format!("token/{sha256}").into_bytes()
}

pub(super) fn owner_key(tenant: &str, sha256: &str) -> Vec<u8> {
    format!("owner/{tenant}/{sha256}").into_bytes()
}

/// An artifact's record in the `access` tree: its size.
pub(super) fn artifact_key(sha256: &str) -> Vec<u8> {
    format!("artifact/{sha256}").into_bytes()
}

/// That `tenant` uploaded artifact `sha256`.
pub(super) fn artifact_owner_key(tenant: &str, sha256: &str) -> Vec<u8> {
    format!("artifact-owner/{tenant}/{sha256}").into_bytes()
}

/// A version's key in the `versions` tree: its function's key, then the
/// version zero-padded, so a function's versions sort in order.
pub(super) fn version_key(tenant: &str, name: &str, version: u64) -> Vec<u8> {
    format!("{tenant}/{name}/{version:020}").into_bytes()
}

pub(super) fn function_key(tenant: &str, name: &str) -> Vec<u8> {
    // Names cannot contain '/', so the key is unambiguous and sorts by tenant.
    format!("{tenant}/{name}").into_bytes()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StateError::Storage(e.to_string()))
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Storage(format!("corrupt record: {e}")))
}

/// The checks a command must pass before it touches storage.
pub(super) fn precheck(command: &Command) -> Result<()> {
    match command {
        Command::PutModule { tenant, sha256, bytes } => {
            validate_name(tenant)?;
            if bytes.len() > MAX_MODULE_BYTES {
                return Err(StateError::ModuleTooLarge { size: bytes.len(), limit: MAX_MODULE_BYTES });
            }
            let actual = sha256_hex(bytes);
            if &actual != sha256 {
                return Err(StateError::ChecksumMismatch { expected: sha256.clone(), actual });
            }
            Ok(())
        }
        Command::PutArtifact { tenant, sha256, size } => {
            validate_name(tenant)?;
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(StateError::Storage(format!("`{sha256}` is not a sha256")));
            }
            if *size > MAX_ARTIFACT_BYTES {
                return Err(StateError::Storage(format!("an artifact of {size} bytes is over {MAX_ARTIFACT_BYTES}")));
            }
            Ok(())
        }
        Command::Deploy { tenant, name, placement, .. } => {
            validate_name(tenant)?;
            validate_name(name)?;
            placement.iter().flatten().try_for_each(|id| validate_name(id))
        }
        Command::Rollback { tenant, name, .. } | Command::Delete { tenant, name } => {
            validate_name(tenant)?;
            validate_name(name)
        }
        Command::SetTrial { tenant, name, trial } => {
            validate_name(tenant)?;
            validate_name(name)?;
            match trial {
                Some(t) => t.spec.check().map_err(StateError::Conflict),
                None => Ok(()),
            }
        }
        Command::PutTrigger { tenant, spec } => {
            validate_name(tenant)?;
            spec.check().map_err(StateError::Conflict)
        }
        Command::PauseTrigger { tenant, name, .. } | Command::DeleteTrigger { tenant, name } => {
            validate_name(tenant)?;
            validate_name(name)
        }
        Command::RegisterNode { id, .. } => validate_name(id),
        Command::Place { changes } => changes.iter().flat_map(|c| &c.nodes).try_for_each(|id| validate_name(id)),
        Command::CreateTenant { name, .. }
        | Command::DeleteTenant { name }
        | Command::SetQuotas { name, .. }
        | Command::GpuExhausted { name, .. } => validate_name(name),
        Command::CreateToken { tenant: Some(tenant), .. } => validate_name(tenant),
        Command::Job(_) | Command::CreateToken { .. } | Command::RevokeToken { .. } => Ok(()),
        Command::Once { command, .. } => precheck(command),
    }
}
