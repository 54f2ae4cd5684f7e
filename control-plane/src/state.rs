//! The replicated state machine: modules and function versions, per tenant.
//!
//! Replicas apply the same [`Command`]s in the same order (the consensus log)
//! and so hold the same [`State`]. [`State::apply`] is deterministic: it
//! depends only on the command and the state, never on time or randomness,
//! and a command that fails (a missing module, an unknown version) fails the
//! same way everywhere. Each apply writes its log index in the same sled
//! transaction as its effect; applying an index at or below the last one is
//! a no-op, so replaying the log after a crash changes nothing twice.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use wasmgrid_api::{JobState, PartitionSpec, Quotas, Role, Stage};

use crate::job_state::{self, JobCommand, JobRecord, TaskRecord};

/// The tenant that always exists: an admin token acts on it unless it
/// names another.
pub const DEFAULT_TENANT: &str = "default";

/// Largest module the state accepts, in bytes.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

/// Result with the state machine's [`StateError`].
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Why a command or a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A tenant or function name is not allowed.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A module is larger than [`MAX_MODULE_BYTES`].
    #[error("module is {size} bytes, over the limit of {limit} bytes")]
    ModuleTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A module's bytes do not hash to the sha256 it was stored under.
    #[error("module bytes hash to {actual}, not {expected}")]
    ChecksumMismatch {
        /// The sha256 claimed.
        expected: String,
        /// The sha256 of the bytes.
        actual: String,
    },
    /// A deploy names a module that was never stored.
    #[error("no module with sha256 {sha256}; upload it first")]
    ModuleNotFound {
        /// The sha256 named.
        sha256: String,
    },
    /// No such job.
    #[error("job `{id}` not found")]
    JobNotFound {
        /// The id.
        id: String,
    },
    /// No such function.
    #[error("function `{tenant}/{name}` not found")]
    FunctionNotFound {
        /// Its tenant.
        tenant: String,
        /// Its name.
        name: String,
    },
    /// The function has no such version.
    #[error("function `{tenant}/{name}` has no version {version}")]
    VersionNotFound {
        /// Its tenant.
        tenant: String,
        /// Its name.
        name: String,
        /// The version asked for.
        version: u64,
    },
    /// No such tenant.
    #[error("tenant `{name}` not found")]
    TenantNotFound {
        /// The name.
        name: String,
    },
    /// A tenant by that name exists.
    #[error("tenant `{name}` already exists")]
    TenantExists {
        /// The name.
        name: String,
    },
    /// The default tenant cannot be removed.
    #[error("the `default` tenant cannot be removed")]
    DefaultTenant,
    /// No such token.
    #[error("token `{id}` not found")]
    TokenNotFound {
        /// The token's id.
        id: String,
    },
    /// The storage failed.
    #[error("storage: {0}")]
    Storage(String),
}

impl From<sled::Error> for StateError {
    fn from(e: sled::Error) -> Self {
        StateError::Storage(e.to_string())
    }
}

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
    /// Whether the gateways serve it without a token.
    #[serde(default)]
    pub public: bool,
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

/// A function: its versions and which one serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// Every version, oldest first.
    pub versions: Vec<Version>,
    /// The version that serves.
    pub active: u64,
}

impl Function {
    /// The version that serves.
    pub fn active_version(&self) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == self.active)
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
    /// Adds a version to a function (creating it) and makes it active.
    Deploy {
        /// The tenant.
        tenant: String,
        /// The function.
        name: String,
        /// The sha256 of a stored module.
        module: String,
        /// How it runs.
        spec: FunctionSpec,
    },
    /// Makes an earlier version active again.
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
    fn default_tenant() -> TenantRecord {
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

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The module is stored; `existed` if it already was.
    ModuleStored {
        /// Its sha256.
        sha256: String,
        /// Whether it was stored before.
        existed: bool,
    },
    /// A new version was created and is active.
    Deployed {
        /// The new version.
        version: u64,
    },
    /// The version is active.
    RolledBack {
        /// The active version.
        version: u64,
    },
    /// The function is gone.
    Deleted,
    /// The node is in the registry.
    NodeRegistered,
    /// A job was created.
    JobSubmitted {
        /// Its id.
        id: String,
    },
    /// Task events were recorded; `won[i]` when event `i` won its task.
    TasksRecorded {
        /// Per event.
        won: Vec<bool>,
    },
    /// The job is in this state.
    JobState {
        /// Its state.
        state: JobState,
    },
    /// A tenant was added.
    TenantCreated,
    /// A tenant and what it owned are gone.
    TenantDeleted,
    /// A token was stored.
    TokenCreated,
    /// A token was revoked.
    TokenRevoked,
    /// The index was applied before; nothing changed.
    AlreadyApplied,
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

const APPLIED_KEY: &[u8] = b"applied_index";
/// The index of the last command that changed a function (the route table).
const ROUTES_KEY: &[u8] = b"routes_revision";

/// What a snapshot carries: every record, raw.
#[derive(Serialize, Deserialize)]
struct Image {
    applied: u64,
    modules: Vec<(Vec<u8>, Vec<u8>)>,
    functions: Vec<(Vec<u8>, Vec<u8>)>,
    nodes: Vec<(Vec<u8>, Vec<u8>)>,
    jobs: Vec<(Vec<u8>, Vec<u8>)>,
    plans: Vec<(Vec<u8>, Vec<u8>)>,
    tasks: Vec<(Vec<u8>, Vec<u8>)>,
    access: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The state machine over sled.
#[derive(Debug, Clone)]
pub struct State {
    db: sled::Db,
    modules: sled::Tree,
    functions: sled::Tree,
    nodes: sled::Tree,
    meta: sled::Tree,
    jobs: sled::Tree,
    plans: sled::Tree,
    tasks: sled::Tree,
    /// Tenants (`tenant/NAME`), tokens (`token/SHA256`) and who uploaded
    /// which module (`owner/TENANT/SHA256`).
    access: sled::Tree,
}

fn tenant_key(name: &str) -> Vec<u8> {
    format!("tenant/{name}").into_bytes()
}

fn token_key(sha256: &str) -> Vec<u8> {
    format!("token/{sha256}").into_bytes()
}

fn owner_key(tenant: &str, sha256: &str) -> Vec<u8> {
    format!("owner/{tenant}/{sha256}").into_bytes()
}

fn function_key(tenant: &str, name: &str) -> Vec<u8> {
    // Names cannot contain '/', so the key is unambiguous and sorts by tenant.
    format!("{tenant}/{name}").into_bytes()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StateError::Storage(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Storage(format!("corrupt record: {e}")))
}

impl State {
    /// Opens (or creates) the state in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::from_db(sled::open(dir)?)
    }

    /// A state that lives in memory only, for tests.
    pub fn temporary() -> Result<Self> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    /// The state in the trees of an open database (shared with the Raft log).
    pub fn from_db(db: sled::Db) -> Result<Self> {
        Ok(State {
            modules: db.open_tree("modules")?,
            functions: db.open_tree("functions")?,
            nodes: db.open_tree("nodes")?,
            meta: db.open_tree("meta")?,
            jobs: db.open_tree("jobs")?,
            plans: db.open_tree("plans")?,
            tasks: db.open_tree("tasks")?,
            access: db.open_tree("access")?,
            db,
        })
    }

    /// Writes everything to disk; returns once it is durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The log index of the last command applied (0 before any).
    pub fn applied_index(&self) -> Result<u64> {
        Ok(match self.meta.get(APPLIED_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StateError::Storage("bad index".into()))?),
            None => 0,
        })
    }

    /// Applies the command at log `index`. A failed command still consumes
    /// its index, so every replica agrees on what was applied.
    pub fn apply(&self, index: u64, command: &Command) -> Result<Applied> {
        if index <= self.applied_index()? {
            return Ok(Applied::AlreadyApplied);
        }
        // Checks that need no storage come first; their failure still
        // consumes the index.
        let checked = precheck(command);
        // What removing a tenant removes, found before the transaction
        // (a transaction cannot scan). Commands apply one at a time, so
        // nothing changes in between.
        let doomed = match command {
            Command::DeleteTenant { name } => self.owned_by(name)?,
            _ => Owned::default(),
        };
        let trees = (
            &self.modules,
            &self.functions,
            &self.nodes,
            &self.meta,
            &self.jobs,
            &self.plans,
            &self.tasks,
            &self.access,
        );
        let result = trees.transaction(|(modules, functions, nodes, meta, jobs, plans, tasks, access)| {
            meta.insert(APPLIED_KEY, &index.to_be_bytes())?;
            if let Err(e) = &checked {
                return Ok(Err(e.clone()));
            }
            let abort = |e: StateError| ConflictableTransactionError::Abort(e);
            if matches!(
                command,
                Command::Deploy { .. }
                    | Command::Rollback { .. }
                    | Command::Delete { .. }
                    | Command::DeleteTenant { .. }
                    | Command::CreateToken { .. }
                    | Command::RevokeToken { .. }
                    | Command::SetQuotas { .. }
                    | Command::GpuExhausted { .. }
            ) {
                meta.insert(ROUTES_KEY, &index.to_be_bytes())?;
            }
            let tenant_exists =
                |name: &str| -> std::result::Result<bool, sled::transaction::UnabortableTransactionError> {
                    Ok(name == DEFAULT_TENANT || access.get(tenant_key(name))?.is_some())
                };
            let outcome = match command {
                Command::PutModule { tenant, sha256, bytes } => {
                    if !tenant_exists(tenant)? {
                        Err(StateError::TenantNotFound { name: tenant.clone() })
                    } else {
                        // `existed` is the tenant's own view: whether another
                        // tenant stored the same bytes is none of its business.
                        let existed = access.insert(owner_key(tenant, sha256), &[])?.is_some();
                        if modules.get(sha256.as_bytes())?.is_none() {
                            modules.insert(sha256.as_bytes(), bytes.as_slice())?;
                        }
                        Ok(Applied::ModuleStored { sha256: sha256.clone(), existed })
                    }
                }
                Command::Deploy { tenant, .. } if !tenant_exists(tenant)? => {
                    Err(StateError::TenantNotFound { name: tenant.clone() })
                }
                Command::Deploy { tenant, name, module, spec } => {
                    if modules.get(module.as_bytes())?.is_none() || access.get(owner_key(tenant, module))?.is_none() {
                        Err(StateError::ModuleNotFound { sha256: module.clone() })
                    } else {
                        let key = function_key(tenant, name);
                        let mut f = match functions.get(&key)? {
                            Some(v) => decode::<Function>(&v).map_err(abort)?,
                            None => {
                                Function { tenant: tenant.clone(), name: name.clone(), versions: Vec::new(), active: 0 }
                            }
                        };
                        let version = f.versions.last().map_or(1, |v| v.version + 1);
                        f.versions.push(Version {
                            version,
                            module: module.clone(),
                            spec: spec.clone(),
                            created_at: index,
                        });
                        f.active = version;
                        functions.insert(key, encode(&f).map_err(abort)?)?;
                        Ok(Applied::Deployed { version })
                    }
                }
                Command::Rollback { tenant, name, version } => {
                    let key = function_key(tenant, name);
                    match functions.get(&key)? {
                        None => Err(StateError::FunctionNotFound { tenant: tenant.clone(), name: name.clone() }),
                        Some(v) => {
                            let mut f = decode::<Function>(&v).map_err(abort)?;
                            if f.versions.iter().any(|v| v.version == *version) {
                                f.active = *version;
                                functions.insert(key, encode(&f).map_err(abort)?)?;
                                Ok(Applied::RolledBack { version: *version })
                            } else {
                                Err(StateError::VersionNotFound {
                                    tenant: tenant.clone(),
                                    name: name.clone(),
                                    version: *version,
                                })
                            }
                        }
                    }
                }
                Command::Delete { tenant, name } => match functions.remove(function_key(tenant, name))? {
                    Some(_) => Ok(Applied::Deleted),
                    None => Err(StateError::FunctionNotFound { tenant: tenant.clone(), name: name.clone() }),
                },
                Command::RegisterNode { id, address } => {
                    let record = NodeRecord { id: id.clone(), address: address.clone(), registered_at: index };
                    nodes.insert(id.as_bytes(), encode(&record).map_err(abort)?)?;
                    Ok(Applied::NodeRegistered)
                }
                Command::Job(command) => job_state::apply(&job_state::Trees { jobs, plans, tasks }, index, command)?,
                Command::CreateTenant { name, quotas } => {
                    if tenant_exists(name)? {
                        Err(StateError::TenantExists { name: name.clone() })
                    } else {
                        let record = TenantRecord {
                            name: name.clone(),
                            created_at: index,
                            quotas: quotas.clone(),
                            gpu_exhausted: false,
                        };
                        access.insert(tenant_key(name), encode(&record).map_err(abort)?)?;
                        Ok(Applied::TenantCreated)
                    }
                }
                Command::SetQuotas { name, .. } | Command::GpuExhausted { name, .. } => {
                    // `default` gets a stored record once its quotas are set.
                    let record = match access.get(tenant_key(name))? {
                        Some(v) => Some(decode::<TenantRecord>(&v).map_err(abort)?),
                        None if name == DEFAULT_TENANT => Some(TenantRecord::default_tenant()),
                        None => None,
                    };
                    match record {
                        Some(record) => {
                            let record = match command {
                                Command::SetQuotas { quotas, .. } => TenantRecord { quotas: quotas.clone(), ..record },
                                Command::GpuExhausted { exhausted, .. } => {
                                    TenantRecord { gpu_exhausted: *exhausted, ..record }
                                }
                                _ => record,
                            };
                            access.insert(tenant_key(name), encode(&record).map_err(abort)?)?;
                            Ok(Applied::TenantCreated)
                        }
                        None => Err(StateError::TenantNotFound { name: name.clone() }),
                    }
                }
                Command::DeleteTenant { name } if name == DEFAULT_TENANT => Err(StateError::DefaultTenant),
                Command::DeleteTenant { name } => {
                    if access.remove(tenant_key(name))?.is_none() {
                        Err(StateError::TenantNotFound { name: name.clone() })
                    } else {
                        for key in &doomed.functions {
                            functions.remove(key.as_slice())?;
                        }
                        for key in &doomed.access {
                            access.remove(key.as_slice())?;
                        }
                        Ok(Applied::TenantDeleted)
                    }
                }
                Command::CreateToken { tenant: Some(tenant), .. } if !tenant_exists(tenant)? => {
                    Err(StateError::TenantNotFound { name: tenant.clone() })
                }
                Command::CreateToken { sha256, tenant, role } => {
                    let record =
                        TokenRecord { sha256: sha256.clone(), tenant: tenant.clone(), role: *role, created_at: index };
                    access.insert(token_key(sha256), encode(&record).map_err(abort)?)?;
                    Ok(Applied::TokenCreated)
                }
                Command::RevokeToken { sha256 } => match access.remove(token_key(sha256))? {
                    Some(_) => Ok(Applied::TokenRevoked),
                    None => Err(StateError::TokenNotFound { id: wasmgrid_api::token_id(sha256) }),
                },
            };
            Ok(outcome)
        });
        match result {
            Ok(outcome) => outcome,
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// The log index of the last change to any function: the route
    /// table's revision (0 before any).
    pub fn routes_revision(&self) -> Result<u64> {
        Ok(match self.meta.get(ROUTES_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StateError::Storage("bad index".into()))?),
            None => 0,
        })
    }

    /// Records that log `index` was applied without a command (an empty
    /// entry from a new leader, a membership change).
    pub fn mark_applied(&self, index: u64) -> Result<()> {
        if index > self.applied_index()? {
            self.meta.insert(APPLIED_KEY, &index.to_be_bytes())?;
        }
        Ok(())
    }

    /// A stored module's bytes.
    pub fn module(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.modules.get(sha256.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Whether `tenant` uploaded the module.
    pub fn owns_module(&self, tenant: &str, sha256: &str) -> Result<bool> {
        Ok(self.access.contains_key(owner_key(tenant, sha256))?)
    }

    /// A tenant; `default` always exists.
    pub fn tenant(&self, name: &str) -> Result<Option<TenantRecord>> {
        match self.access.get(tenant_key(name))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None if name == DEFAULT_TENANT => Ok(Some(TenantRecord::default_tenant())),
            None => Ok(None),
        }
    }

    /// Every tenant, by name, `default` first.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>> {
        let mut all = vec![self.tenant(DEFAULT_TENANT)?.unwrap_or_else(TenantRecord::default_tenant)];
        for kv in self.access.scan_prefix(b"tenant/") {
            let record: TenantRecord = decode(&kv?.1)?;
            if record.name != DEFAULT_TENANT {
                all.push(record);
            }
        }
        Ok(all)
    }

    /// Bytes of the modules `tenant` uploaded.
    pub fn module_bytes(&self, tenant: &str) -> Result<u64> {
        let mut total = 0;
        for key in self.access.scan_prefix(format!("owner/{tenant}/").as_bytes()).keys() {
            let key = key?;
            let sha256 = &key[key.len().saturating_sub(64)..];
            total += self.modules.get(sha256)?.map_or(0, |m| m.len() as u64);
        }
        Ok(total)
    }

    /// The token with this hash.
    pub fn token(&self, sha256: &str) -> Result<Option<TokenRecord>> {
        match self.access.get(token_key(sha256))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every token.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.access.scan_prefix(b"token/").map(|kv| decode(&kv?.1)).collect()
    }

    /// The keys of everything a tenant owns: its functions, tokens and
    /// module uploads.
    fn owned_by(&self, tenant: &str) -> Result<Owned> {
        let keys = |tree: &sled::Tree, prefix: String| -> Result<Vec<Vec<u8>>> {
            tree.scan_prefix(prefix.as_bytes()).keys().map(|k| Ok(k?.to_vec())).collect()
        };
        let mut access = keys(&self.access, format!("owner/{tenant}/"))?;
        for token in self.tokens()? {
            if token.tenant.as_deref() == Some(tenant) {
                access.push(token_key(&token.sha256));
            }
        }
        Ok(Owned { functions: keys(&self.functions, format!("{tenant}/"))?, access })
    }

    /// A function.
    pub fn function(&self, tenant: &str, name: &str) -> Result<Option<Function>> {
        match self.functions.get(function_key(tenant, name))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every function of `tenant`, by name.
    pub fn functions(&self, tenant: &str) -> Result<Vec<Function>> {
        let prefix = format!("{tenant}/");
        self.functions.scan_prefix(prefix.as_bytes()).map(|kv| decode(&kv?.1)).collect()
    }

    /// Every function of every tenant, by tenant and name.
    pub fn all_functions(&self) -> Result<Vec<Function>> {
        self.functions.iter().map(|kv| decode(&kv?.1)).collect()
    }

    /// Every registered node, by id.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.nodes.iter().map(|kv| decode(&kv?.1)).collect()
    }

    /// A registered node.
    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>> {
        match self.nodes.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Everything the state holds, serialized, and the index it reflects:
    /// the data of a Raft snapshot.
    pub fn snapshot_data(&self) -> Result<(Vec<u8>, u64)> {
        let image = Image {
            applied: self.applied_index()?,
            modules: dump(&self.modules)?,
            functions: dump(&self.functions)?,
            nodes: dump(&self.nodes)?,
            jobs: dump(&self.jobs)?,
            plans: dump(&self.plans)?,
            tasks: dump(&self.tasks)?,
            access: dump(&self.access)?,
        };
        let data = bincode::serialize(&image).map_err(|e| StateError::Storage(e.to_string()))?;
        Ok((data, image.applied))
    }

    /// Replaces everything with a snapshot's data.
    pub fn restore(&self, data: &[u8]) -> Result<u64> {
        let image: Image = bincode::deserialize(data).map_err(|e| StateError::Storage(format!("bad snapshot: {e}")))?;
        // Read the old keys first: iterating a tree inside a transaction on
        // it deadlocks.
        let old_modules: Vec<sled::IVec> = self.modules.iter().keys().collect::<std::result::Result<_, _>>()?;
        let old_functions: Vec<sled::IVec> = self.functions.iter().keys().collect::<std::result::Result<_, _>>()?;
        let old_nodes: Vec<sled::IVec> = self.nodes.iter().keys().collect::<std::result::Result<_, _>>()?;
        // Job records go outside the transaction: sled transactions are
        // for a few trees at a time, and a restore is all or nothing anyway
        // (the applied index moves last).
        for (tree, records) in [
            (&self.jobs, &image.jobs),
            (&self.plans, &image.plans),
            (&self.tasks, &image.tasks),
            (&self.access, &image.access),
        ] {
            tree.clear()?;
            for (k, v) in records {
                tree.insert(k.as_slice(), v.as_slice())?;
            }
        }
        let trees = (&self.modules, &self.functions, &self.nodes, &self.meta);
        let result = trees.transaction(|(modules, functions, nodes, meta)| {
            for key in &old_modules {
                modules.remove(key.clone())?;
            }
            for key in &old_functions {
                functions.remove(key.clone())?;
            }
            for key in &old_nodes {
                nodes.remove(key.clone())?;
            }
            for (k, v) in &image.nodes {
                nodes.insert(k.as_slice(), v.as_slice())?;
            }
            for (k, v) in &image.modules {
                modules.insert(k.as_slice(), v.as_slice())?;
            }
            for (k, v) in &image.functions {
                functions.insert(k.as_slice(), v.as_slice())?;
            }
            meta.insert(APPLIED_KEY, &image.applied.to_be_bytes())?;
            Ok(())
        });
        result.map_err(|e: TransactionError<StateError>| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        })?;
        Ok(image.applied)
    }

    /// A job.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        match self.jobs.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every job of `tenant` (of every tenant for `None`), newest first.
    pub fn jobs(&self, tenant: Option<&str>) -> Result<Vec<JobRecord>> {
        let mut jobs: Vec<JobRecord> = self
            .jobs
            .iter()
            .map(|kv| decode::<JobRecord>(&kv?.1))
            .filter(|j| j.as_ref().map_or(true, |j| tenant.is_none_or(|t| j.tenant == t)))
            .collect::<Result<_>>()?;
        jobs.sort_by_key(|j| std::cmp::Reverse(j.id.trim_start_matches("job-").parse::<u64>().unwrap_or(0)));
        Ok(jobs)
    }

    /// Every job that is not over.
    pub fn active_jobs(&self) -> Result<Vec<JobRecord>> {
        let jobs: Vec<JobRecord> = self.jobs.iter().map(|kv| decode(&kv?.1)).collect::<Result<_>>()?;
        Ok(jobs.into_iter().filter(|j| !j.state.is_final()).collect())
    }

    /// A job's input partitions.
    pub fn plan(&self, id: &str) -> Result<Vec<PartitionSpec>> {
        match self.plans.get(id.as_bytes())? {
            Some(v) => decode(&v),
            None => Err(StateError::JobNotFound { id: id.into() }),
        }
    }

    /// The records of a stage's tasks that failed or won, by task index.
    pub fn task_records(&self, id: &str, stage: Stage) -> Result<Vec<(u32, TaskRecord)>> {
        let prefix = job_state::stage_prefix(id, stage);
        self.tasks
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let index = std::str::from_utf8(&k[prefix.len()..]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                Ok((index, decode(&v)?))
            })
            .collect()
    }

    /// Number of stored modules.
    pub fn module_count(&self) -> usize {
        self.modules.len()
    }
}

fn dump(tree: &sled::Tree) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    Ok(tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<std::result::Result<_, _>>()?)
}

/// The checks a command must pass before it touches storage.
/// Keys of what a tenant owns, by tree.
#[derive(Default)]
struct Owned {
    functions: Vec<Vec<u8>>,
    access: Vec<Vec<u8>>,
}

fn precheck(command: &Command) -> Result<()> {
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
        Command::Deploy { tenant, name, .. }
        | Command::Rollback { tenant, name, .. }
        | Command::Delete { tenant, name } => {
            validate_name(tenant)?;
            validate_name(name)
        }
        Command::RegisterNode { id, .. } => validate_name(id),
        Command::CreateTenant { name, .. }
        | Command::DeleteTenant { name }
        | Command::SetQuotas { name, .. }
        | Command::GpuExhausted { name, .. } => validate_name(name),
        Command::CreateToken { tenant: Some(tenant), .. } => validate_name(tenant),
        Command::Job(_) | Command::CreateToken { .. } | Command::RevokeToken { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec {
            kind: "scorer".into(),
            memory: 64 << 20,
            timeout_ms: 200,
            config: BTreeMap::new(),
            gpu: Default::default(),
            public: false,
        }
    }

    fn put(bytes: &[u8]) -> Command {
        put_for(DEFAULT_TENANT, bytes)
    }

    fn put_for(tenant: &str, bytes: &[u8]) -> Command {
        Command::PutModule { tenant: tenant.into(), sha256: sha256_hex(bytes), bytes: bytes.to_vec() }
    }

    fn deploy(name: &str, bytes: &[u8]) -> Command {
        Command::Deploy { tenant: DEFAULT_TENANT.into(), name: name.into(), module: sha256_hex(bytes), spec: spec() }
    }

    #[test]
    fn deploys_number_versions_and_rollback_switches_the_active_one() -> Result<()> {
        let s = State::temporary()?;
        assert_eq!(s.apply(1, &put(b"one"))?, Applied::ModuleStored { sha256: sha256_hex(b"one"), existed: false });
        assert_eq!(s.apply(2, &put(b"two"))?, Applied::ModuleStored { sha256: sha256_hex(b"two"), existed: false });
        assert_eq!(s.apply(3, &deploy("fraud", b"one"))?, Applied::Deployed { version: 1 });
        assert_eq!(s.apply(4, &deploy("fraud", b"two"))?, Applied::Deployed { version: 2 });
        let f = s.function(DEFAULT_TENANT, "fraud")?.expect("deployed");
        assert_eq!(f.active, 2);
        assert_eq!(f.active_version().map(|v| v.module.clone()), Some(sha256_hex(b"two")));
        let back = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "fraud".into(), version: 1 };
        assert_eq!(s.apply(5, &back)?, Applied::RolledBack { version: 1 });
        let f = s.function(DEFAULT_TENANT, "fraud")?.expect("still there");
        assert_eq!((f.active, f.versions.len()), (1, 2), "rollback keeps every version");
        Ok(())
    }

    #[test]
    fn a_module_is_stored_once_however_many_functions_use_it() -> Result<()> {
        let s = State::temporary()?;
        s.apply(1, &put(b"shared"))?;
        assert_eq!(
            s.apply(2, &put(b"shared"))?,
            Applied::ModuleStored { sha256: sha256_hex(b"shared"), existed: true }
        );
        s.apply(3, &deploy("a", b"shared"))?;
        s.apply(4, &deploy("b", b"shared"))?;
        assert_eq!(s.module_count(), 1);
        assert_eq!(s.functions(DEFAULT_TENANT)?.len(), 2);
        Ok(())
    }

    #[test]
    fn failed_commands_change_nothing_but_consume_their_index() -> Result<()> {
        let s = State::temporary()?;
        let missing = s.apply(1, &deploy("f", b"never uploaded"));
        assert!(matches!(missing, Err(StateError::ModuleNotFound { .. })), "{missing:?}");
        let lying =
            Command::PutModule { tenant: DEFAULT_TENANT.into(), sha256: sha256_hex(b"a"), bytes: b"b".to_vec() };
        assert!(matches!(s.apply(2, &lying), Err(StateError::ChecksumMismatch { .. })));
        let unknown = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 3 };
        assert!(matches!(s.apply(3, &unknown), Err(StateError::FunctionNotFound { .. })));
        s.apply(4, &put(b"m"))?;
        s.apply(5, &deploy("f", b"m"))?;
        let no_version = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 9 };
        assert!(matches!(s.apply(6, &no_version), Err(StateError::VersionNotFound { version: 9, .. })));
        assert_eq!(s.applied_index()?, 6);
        assert_eq!(s.module_count(), 1);
        assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.versions.len()), Some(1));
        Ok(())
    }

    #[test]
    fn replaying_an_applied_index_is_a_no_op() -> Result<()> {
        let s = State::temporary()?;
        s.apply(1, &put(b"m"))?;
        s.apply(2, &deploy("f", b"m"))?;
        assert_eq!(s.apply(2, &deploy("f", b"m"))?, Applied::AlreadyApplied);
        assert_eq!(s.apply(1, &put(b"m"))?, Applied::AlreadyApplied);
        assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.versions.len()), Some(1));
        Ok(())
    }

    #[test]
    fn state_survives_reopening() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StateError::Storage(e.to_string()))?;
        {
            let s = State::open(dir.path())?;
            s.apply(1, &put(b"m"))?;
            s.apply(2, &deploy("f", b"m"))?;
            s.flush()?;
        }
        // sled releases its lock on the files shortly after the last handle drops.
        let s = (0..200)
            .find_map(|_| {
                State::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                })
            })
            .ok_or_else(|| StateError::Storage("could not reopen".into()))?;
        assert_eq!(s.applied_index()?, 2);
        assert_eq!(s.module(&sha256_hex(b"m"))?, Some(b"m".to_vec()));
        assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.active), Some(1));
        Ok(())
    }

    #[test]
    fn names_with_slashes_dots_or_odd_characters_are_refused() {
        for bad in ["", "a/b", "..", "a..b", ".hidden", "-x", "UPPER", "white space", "x".repeat(64).as_str(), "ü"] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
        }
        for good in ["fraud", "fall-detect", "logreg_v2", "a.b", "0x"] {
            assert!(validate_name(good).is_ok(), "{good:?} should be accepted");
        }
        let s = State::temporary().expect("state");
        let bad = Command::Delete { tenant: DEFAULT_TENANT.into(), name: "../etc".into() };
        assert!(matches!(s.apply(1, &bad), Err(StateError::InvalidName { .. })));
    }

    #[test]
    fn tenants_own_their_uploads_and_removing_one_removes_what_it_owned() -> Result<()> {
        let s = State::temporary()?;
        let deploy_as = |tenant: &str, name: &str, bytes: &[u8]| Command::Deploy {
            tenant: tenant.into(),
            name: name.into(),
            module: sha256_hex(bytes),
            spec: spec(),
        };
        assert!(matches!(s.apply(1, &put_for("acme", b"m")), Err(StateError::TenantNotFound { .. })));
        s.apply(2, &Command::CreateTenant { name: "acme".into(), quotas: Quotas::default() })?;
        let twice = s.apply(3, &Command::CreateTenant { name: "acme".into(), quotas: Quotas::default() });
        assert!(matches!(twice, Err(StateError::TenantExists { .. })), "{twice:?}");
        assert!(matches!(
            s.apply(4, &Command::CreateTenant { name: "default".into(), quotas: Quotas::default() }),
            Err(StateError::TenantExists { .. })
        ));
        assert_eq!(s.apply(5, &put(b"m"))?, Applied::ModuleStored { sha256: sha256_hex(b"m"), existed: false });
        // The same bytes from another tenant: stored once, but new to it.
        assert_eq!(
            s.apply(6, &put_for("acme", b"m"))?,
            Applied::ModuleStored { sha256: sha256_hex(b"m"), existed: false }
        );
        assert_eq!(s.module_count(), 1);
        s.apply(7, &put(b"only-default"))?;
        let stolen = s.apply(8, &deploy_as("acme", "f", b"only-default"));
        assert!(
            matches!(stolen, Err(StateError::ModuleNotFound { .. })),
            "a tenant deploys only its uploads: {stolen:?}"
        );
        s.apply(9, &deploy_as("acme", "f", b"m"))?;
        s.apply(10, &deploy("f", b"m"))?;
        let token = Command::CreateToken { sha256: "ab".repeat(32), tenant: Some("acme".into()), role: Role::Full };
        s.apply(11, &token)?;
        assert_eq!(s.routes_revision()?, 11, "a new token changes what the gateways accept");
        let orphan = Command::CreateToken { sha256: "cd".repeat(32), tenant: Some("nobody".into()), role: Role::Full };
        assert!(matches!(s.apply(12, &orphan), Err(StateError::TenantNotFound { .. })));
        assert_eq!(s.tokens()?.len(), 1);

        assert_eq!(s.apply(13, &Command::DeleteTenant { name: "acme".into() })?, Applied::TenantDeleted);
        assert_eq!(s.function("acme", "f")?, None);
        assert!(s.function(DEFAULT_TENANT, "f")?.is_some(), "another tenant's function of the same name stays");
        assert!(s.tokens()?.is_empty());
        assert!(!s.owns_module("acme", &sha256_hex(b"m"))?);
        assert!(s.owns_module(DEFAULT_TENANT, &sha256_hex(b"m"))?);
        assert_eq!(s.tenants()?.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["default"]);
        assert!(matches!(
            s.apply(14, &Command::DeleteTenant { name: "default".into() }),
            Err(StateError::DefaultTenant)
        ));
        let gone = Command::RevokeToken { sha256: "ab".repeat(32) };
        assert!(matches!(s.apply(15, &gone), Err(StateError::TokenNotFound { .. })));
        Ok(())
    }

    #[test]
    fn a_snapshot_restores_the_same_state_elsewhere() -> Result<()> {
        let a = State::temporary()?;
        a.apply(1, &put(b"m"))?;
        a.apply(2, &deploy("f", b"m"))?;
        a.apply(3, &deploy("g", b"m"))?;
        let (_, applied) = a.snapshot_data()?;
        assert_eq!(applied, 3);
        let b = State::temporary()?;
        b.apply(1, &put(b"stale"))?;
        b.apply(2, &deploy("old", b"stale"))?;
        a.apply(4, &Command::CreateTenant { name: "acme".into(), quotas: Quotas::default() })?;
        a.apply(
            5,
            &Command::CreateToken { sha256: "ab".repeat(32), tenant: Some("acme".into()), role: Role::ReadOnly },
        )?;
        let (data, _) = a.snapshot_data()?;
        assert_eq!(b.restore(&data)?, 5);
        assert_eq!(b.tenants()?, a.tenants()?);
        assert_eq!(b.tokens()?, a.tokens()?);
        assert_eq!(b.functions(DEFAULT_TENANT)?, a.functions(DEFAULT_TENANT)?);
        assert_eq!(b.module(&sha256_hex(b"stale"))?, None, "restore replaces, not merges");
        assert_eq!(b.applied_index()?, 5);
        Ok(())
    }

    #[test]
    fn oversized_modules_are_refused() {
        let s = State::temporary().expect("state");
        let big = vec![0u8; MAX_MODULE_BYTES + 1];
        let err = s.apply(1, &put(&big)).expect_err("too big");
        assert!(matches!(err, StateError::ModuleTooLarge { .. }));
        assert_eq!(s.module_count(), 0);
    }
}
