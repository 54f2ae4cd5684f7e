//! The replicated state machine: modules and function versions, per tenant.
//!
//! Replicas apply the same [`Command`]s in the same order (the consensus log)
//! and so hold the same [`State`]. [`State::apply`] is deterministic: it
//! depends only on the command and the state, never on time or randomness,
//! and a command that fails (a missing module, an unknown version) fails the
//! same way everywhere. Each apply writes its log index in the same sled
//! transaction as its effect; applying an index at or below the last one is
//! a no-op, so replaying the log after a crash changes nothing twice.
//!
//! By area: [`model`] (records, commands, outcomes, errors, keys),
//! `functions` (modules, functions, nodes), `tenants` (tenants, tokens) and
//! [`jobs`] (batch jobs), each applying its commands inside the one
//! transaction [`State::apply`] opens.

pub mod jobs;
pub mod model;
mod outcome;

mod functions;
mod tenants;
mod triggers;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree, UnabortableTransactionError,
};
use wasmgrid_api::{PartitionSpec, Partitions, Stage, Trigger};

use jobs::{JobRecord, TaskRecord};
pub use model::*;

const APPLIED_KEY: &[u8] = b"applied_index";
/// The index of the last command that changed a function (the route table).
const ROUTES_KEY: &[u8] = b"routes_revision";
/// Set by the first `Place` entry: every replica read placements then.
const PLACEMENT_KEY: &[u8] = b"placement";
/// The replicas' URLs by id (JSON), changed with the membership.
const MEMBERS_KEY: &[u8] = b"members";
/// How many log entries a request id is remembered for: a request retried
/// within them is answered with what it did the first time.
pub const REQUEST_WINDOW: u64 = 50_000;

/// The trees a command's transaction writes, and its log index.
#[derive(Clone, Copy)]
struct Tx<'a> {
    modules: &'a TransactionalTree,
    functions: &'a TransactionalTree,
    versions: &'a TransactionalTree,
    nodes: &'a TransactionalTree,
    access: &'a TransactionalTree,
    index: u64,
}

impl Tx<'_> {
    fn tenant_exists(&self, name: &str) -> std::result::Result<bool, UnabortableTransactionError> {
        Ok(name == DEFAULT_TENANT || self.access.get(tenant_key(name))?.is_some())
    }
}

/// A failed check that aborts the transaction.
fn abort(e: StateError) -> ConflictableTransactionError<StateError> {
    ConflictableTransactionError::Abort(e)
}

/// Every record of a tree, raw (byte strings, so a snapshot holds them as
/// they are).
type Records = Vec<(ByteBuf, ByteBuf)>;

/// What a snapshot carries: every record, raw, the route table's
/// revision and the replicas' URLs.
#[derive(Serialize, Deserialize)]
struct Image {
    applied: u64,
    modules: Records,
    functions: Records,
    nodes: Records,
    jobs: Records,
    plans: Records,
    tasks: Records,
    access: Records,
    routes: u64,
    versions: Records,
    members: Vec<(u64, String)>,
    requests: Records,
}

/// A snapshot made before snapshots carried the replicas' URLs: a replica
/// restoring it keeps the URLs it has.
#[derive(Deserialize)]
struct ImageWithoutMembers(u64, Records, Records, Records, Records, Records, Records, Records, u64, Records);

/// A snapshot made before snapshots carried the route table's revision and
/// versions their own records.
#[derive(Deserialize)]
struct ImageWithoutRoutes(u64, Records, Records, Records, Records, Records, Records, Records);

impl From<ImageWithoutMembers> for Image {
    fn from(old: ImageWithoutMembers) -> Image {
        let ImageWithoutMembers(applied, modules, functions, nodes, jobs, plans, tasks, access, routes, versions) = old;
        let (members, requests) = (Vec::new(), Vec::new());
        Image { applied, modules, functions, nodes, jobs, plans, tasks, access, routes, versions, members, requests }
    }
}

impl From<ImageWithoutRoutes> for ImageWithoutMembers {
    fn from(old: ImageWithoutRoutes) -> ImageWithoutMembers {
        let ImageWithoutRoutes(applied, modules, functions, nodes, jobs, plans, tasks, access) = old;
        // Nodes only compare revisions for a change: the applied index is
        // never behind the true revision. Its functions hold their versions
        // inline; they move to records of their own as a replica's own
        // data does at start.
        ImageWithoutMembers(applied, modules, functions, nodes, jobs, plans, tasks, access, applied, Vec::new())
    }
}

impl Image {
    fn decode(data: &[u8]) -> Result<Image> {
        crate::codec::decode(data, Image::legacy).map_err(|e| StateError::Storage(format!("bad snapshot: {e}")))
    }

    /// A snapshot written before snapshots were tagged: bincode, in one of
    /// its three shapes.
    fn legacy(data: &[u8]) -> std::result::Result<Image, crate::codec::CodecError> {
        use crate::codec::legacy_bincode;
        let e = match legacy_bincode::<Image>(data) {
            Ok(image) => return Ok(image),
            Err(e) => e,
        };
        if let Ok(old) = legacy_bincode::<ImageWithoutMembers>(data) {
            return Ok(old.into());
        }
        let old: ImageWithoutRoutes = legacy_bincode(data).map_err(|_| e)?;
        Ok(ImageWithoutMembers::from(old).into())
    }
}

/// The state machine over sled.
#[derive(Debug, Clone)]
pub struct State {
    db: sled::Db,
    modules: sled::Tree,
    functions: sled::Tree,
    /// Every version of every function, by function and number.
    versions: sled::Tree,
    nodes: sled::Tree,
    meta: sled::Tree,
    jobs: sled::Tree,
    plans: sled::Tree,
    tasks: sled::Tree,
    /// Tenants (`tenant/NAME`), tokens (`token/SHA256`) and who uploaded
    /// which module (`owner/TENANT/SHA256`).
    access: sled::Tree,
    /// What each request id's write did, with its log index, for
    /// [`REQUEST_WINDOW`] entries.
    requests: sled::Tree,
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
        let state = State {
            modules: db.open_tree("modules")?,
            functions: db.open_tree("functions")?,
            versions: db.open_tree("versions")?,
            nodes: db.open_tree("nodes")?,
            meta: db.open_tree("meta")?,
            jobs: db.open_tree("jobs")?,
            plans: db.open_tree("plans")?,
            tasks: db.open_tree("tasks")?,
            access: db.open_tree("access")?,
            requests: db.open_tree("requests")?,
            db,
        };
        state.move_inline_versions()?;
        Ok(state)
    }

    /// Moves the versions of functions stored before versions had records
    /// of their own into the `versions` tree, each function in one
    /// transaction (a start cut short resumes where it stopped).
    fn move_inline_versions(&self) -> Result<()> {
        for kv in self.functions.iter() {
            let (key, value) = kv?;
            let Ok(old) = serde_json::from_slice::<InlineFunction>(&value) else { continue };
            let latest = old.versions.iter().map(|v| v.version).max().unwrap_or(0);
            let head = FunctionRecord {
                tenant: old.tenant,
                name: old.name,
                active: old.active,
                latest,
                placement: Vec::new(),
                trial: None,
            };
            let head_bytes = encode(&head)?;
            let records = old
                .versions
                .iter()
                .map(|v| Ok((version_key(&head.tenant, &head.name, v.version), encode(v)?)))
                .collect::<Result<Vec<_>>>()?;
            let result = (&self.functions, &self.versions).transaction(|(functions, versions)| {
                for (k, v) in &records {
                    versions.insert(k.as_slice(), v.as_slice())?;
                }
                functions.insert(key.as_ref(), head_bytes.as_slice())?;
                Ok(())
            });
            result.map_err(|e: TransactionError<StateError>| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })?;
        }
        Ok(())
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
        if index.is_multiple_of(1024) {
            self.forget_requests(index)?;
        }
        let (command, request) = match command {
            Command::Once { id, command } => {
                if let Some(applied) = self.request(id)? {
                    self.mark_applied(index)?;
                    return Ok(applied);
                }
                (command.as_ref(), Some(id.as_bytes()))
            }
            command => (command, None),
        };
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
            &self.versions,
            &self.nodes,
            &self.meta,
            &self.jobs,
            &self.plans,
            &self.tasks,
            &self.access,
            &self.requests,
        );
        let result =
            trees.transaction(|(modules, functions, versions, nodes, meta, jobs, plans, tasks, access, requests)| {
                meta.insert(APPLIED_KEY, &index.to_be_bytes())?;
                if let Err(e) = &checked {
                    return Ok(Err(e.clone()));
                }
                if command.changes_routes() {
                    meta.insert(ROUTES_KEY, &index.to_be_bytes())?;
                }
                if matches!(command, Command::Place { .. }) {
                    meta.insert(PLACEMENT_KEY, &[1])?;
                }
                let tx = Tx { modules, functions, versions, nodes, access, index };
                let outcome = match command {
                    Command::PutModule { .. }
                    | Command::PutArtifact { .. }
                    | Command::Deploy { .. }
                    | Command::Rollback { .. }
                    | Command::SetTrial { .. }
                    | Command::Delete { .. }
                    | Command::Place { .. }
                    | Command::RegisterNode { .. } => functions::apply(&tx, command),
                    Command::Job(command) => Ok(jobs::apply(&jobs::Trees { jobs, plans, tasks }, index, command)?),
                    Command::CreateTenant { .. }
                    | Command::SetQuotas { .. }
                    | Command::GpuExhausted { .. }
                    | Command::DeleteTenant { .. }
                    | Command::CreateToken { .. }
                    | Command::RevokeToken { .. } => tenants::apply(&tx, command, &doomed),
                    Command::PutTrigger { .. } | Command::PauseTrigger { .. } | Command::DeleteTrigger { .. } => {
                        triggers::apply(&tx, command)
                    }
                    Command::Once { .. } => Ok(Err(StateError::Storage("a request inside a request".into()))),
                }?;
                if let (Some(id), Ok(applied)) = (request, &outcome) {
                    requests.insert(id, encode(&(index, applied)).map_err(abort)?)?;
                }
                Ok(outcome)
            });
        match result {
            Ok(outcome) => outcome,
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// What the write with request id `id` did, if it was applied within
    /// the last [`REQUEST_WINDOW`] entries.
    fn request(&self, id: &str) -> Result<Option<Applied>> {
        match self.requests.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode::<(u64, Applied)>(&v)?.1)),
            None => Ok(None),
        }
    }

    /// Forgets request ids older than [`REQUEST_WINDOW`] entries before
    /// `index`; every replica does it at the same indexes.
    fn forget_requests(&self, index: u64) -> Result<()> {
        let horizon = index.saturating_sub(REQUEST_WINDOW);
        for kv in self.requests.iter() {
            let (key, value) = kv?;
            // Only the index is needed: the answer is skipped, not built.
            if decode::<(u64, serde::de::IgnoredAny)>(&value)?.0 < horizon {
                self.requests.remove(key)?;
            }
        }
        Ok(())
    }

    /// The replicas' URLs by id, as of the last membership change applied
    /// (empty before the first start recorded them).
    pub fn members(&self) -> Result<BTreeMap<u64, String>> {
        match self.meta.get(MEMBERS_KEY)? {
            Some(v) => decode(&v),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Records the replicas' URLs: at log `index` when a membership change
    /// is applied (the applied index moves with them), or without one when
    /// a cluster starts from its `--peers`.
    pub fn set_members(&self, index: Option<u64>, members: &BTreeMap<u64, String>) -> Result<()> {
        let bytes = encode(members)?;
        let result = self.meta.transaction(|meta| {
            meta.insert(MEMBERS_KEY, bytes.as_slice())?;
            if let Some(index) = index {
                meta.insert(APPLIED_KEY, &index.to_be_bytes())?;
            }
            Ok(())
        });
        result.map_err(|e: TransactionError<StateError>| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        })
    }

    /// The log index of the last change to any function: the route
    /// table's revision (0 before any).
    pub fn routes_revision(&self) -> Result<u64> {
        Ok(match self.meta.get(ROUTES_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StateError::Storage("bad index".into()))?),
            None => 0,
        })
    }

    /// Whether a `Place` entry was applied here: the replicas then all read
    /// placements (a replica that installed a snapshot since does not know).
    pub fn placement_seen(&self) -> Result<bool> {
        Ok(self.meta.get(PLACEMENT_KEY)?.is_some())
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

    /// The size of stored artifact `sha256`, if it is one.
    pub fn artifact(&self, sha256: &str) -> Result<Option<u64>> {
        match self.access.get(artifact_key(sha256))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Whether `tenant` uploaded artifact `sha256`.
    pub fn owns_artifact(&self, tenant: &str, sha256: &str) -> Result<bool> {
        Ok(self.access.contains_key(artifact_owner_key(tenant, sha256))?)
    }

    /// The artifacts `tenant` uploaded (every one for `None`): sha256 and size.
    pub fn artifacts(&self, tenant: Option<&str>) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let prefix = match tenant {
            Some(t) => format!("artifact-owner/{t}/"),
            None => "artifact/".to_string(),
        };
        for key in self.access.scan_prefix(prefix.as_bytes()).keys() {
            let key = key?;
            let sha256 = String::from_utf8_lossy(&key[key.len().saturating_sub(64)..]).into_owned();
            if let Some(size) = self.artifact(&sha256)? {
                out.push((sha256, size));
            }
        }
        Ok(out)
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
        // Artifacts count against the same storage.
        total += self.artifacts(Some(tenant))?.iter().map(|(_, size)| size).sum::<u64>();
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
        access.extend(keys(&self.access, format!("trigger/{tenant}/"))?);
        for token in self.tokens()? {
            if token.tenant.as_deref() == Some(tenant) {
                access.push(token_key(&token.sha256));
            }
        }
        Ok(Owned {
            functions: keys(&self.functions, format!("{tenant}/"))?,
            versions: keys(&self.versions, format!("{tenant}/"))?,
            access,
        })
    }

    /// A tenant's trigger.
    pub fn trigger(&self, tenant: &str, name: &str) -> Result<Option<Trigger>> {
        match self.access.get(trigger_key(tenant, name))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every trigger of `tenant` (of every tenant for `None`), by tenant
    /// and name.
    pub fn triggers(&self, tenant: Option<&str>) -> Result<Vec<Trigger>> {
        let prefix = match tenant {
            Some(t) => format!("trigger/{t}/"),
            None => "trigger/".to_string(),
        };
        self.access.scan_prefix(prefix.as_bytes()).map(|kv| decode(&kv?.1)).collect()
    }

    /// A function.
    pub fn function(&self, tenant: &str, name: &str) -> Result<Option<Function>> {
        match self.functions.get(function_key(tenant, name))? {
            Some(v) => Ok(Some(self.read_function(&v)?)),
            None => Ok(None),
        }
    }

    /// Every function of `tenant`, by name.
    pub fn functions(&self, tenant: &str) -> Result<Vec<Function>> {
        let prefix = format!("{tenant}/");
        self.functions.scan_prefix(prefix.as_bytes()).map(|kv| self.read_function(&kv?.1)).collect()
    }

    /// Every function of every tenant, by tenant and name.
    pub fn all_functions(&self) -> Result<Vec<Function>> {
        self.functions.iter().map(|kv| self.read_function(&kv?.1)).collect()
    }

    /// Where every function is placed: (tenant, name, nodes), from their
    /// head records alone.
    pub fn placements(&self) -> Result<Vec<(String, String, Vec<String>)>> {
        self.functions
            .iter()
            .map(|kv| {
                let head: FunctionRecord = decode(&kv?.1)?;
                Ok((head.tenant, head.name, head.placement))
            })
            .collect()
    }

    /// One version of a function.
    pub fn version(&self, tenant: &str, name: &str, version: u64) -> Result<Option<Version>> {
        match self.versions.get(version_key(tenant, name, version))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every version of a function, oldest first (none for an unknown one).
    pub fn versions(&self, tenant: &str, name: &str) -> Result<Vec<Version>> {
        let prefix = format!("{tenant}/{name}/");
        self.versions.scan_prefix(prefix.as_bytes()).map(|kv| decode(&kv?.1)).collect()
    }

    /// A function's head record, with its active version.
    fn read_function(&self, head: &[u8]) -> Result<Function> {
        let FunctionRecord { tenant, name, active, latest, placement, trial } = decode(head)?;
        let current = self.version(&tenant, &name, active)?;
        let candidate = match &trial {
            Some(t) => self.version(&tenant, &name, t.version)?,
            None => None,
        };
        Ok(Function { tenant, name, active, latest, current, placement, trial, candidate })
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
            routes: self.routes_revision()?,
            versions: dump(&self.versions)?,
            members: self.members()?.into_iter().collect(),
            requests: dump(&self.requests)?,
        };
        let data = crate::codec::encode(&image).map_err(|e| StateError::Storage(e.to_string()))?;
        Ok((data, image.applied))
    }

    /// Replaces everything with a snapshot's data.
    pub fn restore(&self, data: &[u8]) -> Result<u64> {
        let image = Image::decode(data)?;
        let members = match image.members.is_empty() {
            true => None,
            false => Some(encode(&image.members.iter().cloned().collect::<BTreeMap<u64, String>>())?),
        };
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
            (&self.versions, &image.versions),
            (&self.requests, &image.requests),
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
            meta.insert(ROUTES_KEY, &image.routes.to_be_bytes())?;
            if let Some(members) = &members {
                meta.insert(MEMBERS_KEY, members.as_slice())?;
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
            Some(v) => decode::<Partitions>(&v).map(|p| p.0),
            None => Err(StateError::JobNotFound { id: id.into() }),
        }
    }

    /// Map tasks per range of a job (1: single tasks); see
    /// [`JobCommand::SubmitRanges`](jobs::JobCommand::SubmitRanges).
    pub fn job_range(&self, id: &str) -> Result<u32> {
        Ok(jobs::decode_range(self.plans.get(jobs::range_key(id))?.as_deref()))
    }

    /// The records of a stage's tasks (of ranges: by their first task) that
    /// failed or won, by task index.
    pub fn task_records(&self, id: &str, stage: Stage) -> Result<Vec<(u32, TaskRecord)>> {
        let prefix = jobs::stage_prefix(id, stage);
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
fn dump(tree: &sled::Tree) -> Result<Records> {
    let record = |(k, v): (sled::IVec, sled::IVec)| (ByteBuf::from(k.to_vec()), ByteBuf::from(v.to_vec()));
    Ok(tree.iter().map(|kv| kv.map(record)).collect::<std::result::Result<_, _>>()?)
}

/// Keys of what a tenant owns, by tree.
#[derive(Default)]
struct Owned {
    functions: Vec<Vec<u8>>,
    versions: Vec<Vec<u8>>,
    access: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests;
