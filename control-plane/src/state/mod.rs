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

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree, UnabortableTransactionError,
};
use wasmgrid_api::{PartitionSpec, Stage};

use jobs::{JobRecord, TaskRecord};
pub use model::*;

const APPLIED_KEY: &[u8] = b"applied_index";
/// The index of the last command that changed a function (the route table).
const ROUTES_KEY: &[u8] = b"routes_revision";

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

/// Every record of a tree, raw.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// What a snapshot carries: every record, raw, and the route table's
/// revision.
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
}

/// A snapshot made before snapshots carried the route table's revision and
/// versions their own records.
#[derive(Deserialize)]
struct ImageWithoutRoutes(u64, Records, Records, Records, Records, Records, Records, Records);

impl Image {
    fn decode(data: &[u8]) -> Result<Image> {
        let bad = |e: bincode::Error| StateError::Storage(format!("bad snapshot: {e}"));
        match bincode::deserialize::<Image>(data) {
            Ok(image) => Ok(image),
            Err(e) => {
                let ImageWithoutRoutes(applied, modules, functions, nodes, jobs, plans, tasks, access) =
                    bincode::deserialize(data).map_err(|_| bad(e))?;
                // Nodes only compare revisions for a change: the applied
                // index is never behind the true revision.
                let routes = applied;
                // Its functions hold their versions inline; they move to
                // records of their own as a replica's own data does at start.
                let versions = Vec::new();
                Ok(Image { applied, modules, functions, nodes, jobs, plans, tasks, access, routes, versions })
            }
        }
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
            let head = FunctionRecord { tenant: old.tenant, name: old.name, active: old.active, latest };
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
        );
        let result = trees.transaction(|(modules, functions, versions, nodes, meta, jobs, plans, tasks, access)| {
            meta.insert(APPLIED_KEY, &index.to_be_bytes())?;
            if let Err(e) = &checked {
                return Ok(Err(e.clone()));
            }
            if command.changes_routes() {
                meta.insert(ROUTES_KEY, &index.to_be_bytes())?;
            }
            let tx = Tx { modules, functions, versions, nodes, access, index };
            match command {
                Command::PutModule { .. }
                | Command::Deploy { .. }
                | Command::Rollback { .. }
                | Command::Delete { .. }
                | Command::RegisterNode { .. } => functions::apply(&tx, command),
                Command::Job(command) => Ok(jobs::apply(&jobs::Trees { jobs, plans, tasks }, index, command)?),
                Command::CreateTenant { .. }
                | Command::SetQuotas { .. }
                | Command::GpuExhausted { .. }
                | Command::DeleteTenant { .. }
                | Command::CreateToken { .. }
                | Command::RevokeToken { .. } => tenants::apply(&tx, command, &doomed),
            }
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
        Ok(Owned {
            functions: keys(&self.functions, format!("{tenant}/"))?,
            versions: keys(&self.versions, format!("{tenant}/"))?,
            access,
        })
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

    /// Every version of a function, oldest first (none for an unknown one).
    pub fn versions(&self, tenant: &str, name: &str) -> Result<Vec<Version>> {
        let prefix = format!("{tenant}/{name}/");
        self.versions.scan_prefix(prefix.as_bytes()).map(|kv| decode(&kv?.1)).collect()
    }

    /// A function's head record, with its active version.
    fn read_function(&self, head: &[u8]) -> Result<Function> {
        let FunctionRecord { tenant, name, active, latest } = decode(head)?;
        let current = match self.versions.get(version_key(&tenant, &name, active))? {
            Some(v) => Some(decode(&v)?),
            None => None,
        };
        Ok(Function { tenant, name, active, latest, current })
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
        };
        let data = bincode::serialize(&image).map_err(|e| StateError::Storage(e.to_string()))?;
        Ok((data, image.applied))
    }

    /// Replaces everything with a snapshot's data.
    pub fn restore(&self, data: &[u8]) -> Result<u64> {
        let image = Image::decode(data)?;
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
fn dump(tree: &sled::Tree) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    Ok(tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<std::result::Result<_, _>>()?)
}

/// Keys of what a tenant owns, by tree.
#[derive(Default)]
struct Owned {
    functions: Vec<Vec<u8>>,
    versions: Vec<Vec<u8>>,
    access: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use wasmgrid_api::{Quotas, Role};

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
    fn a_deploy_writes_one_version_record_and_a_head_that_does_not_grow() -> Result<()> {
        let s = State::temporary()?;
        s.apply(1, &put(b"m"))?;
        let head_size = |s: &State| s.functions.get(function_key(DEFAULT_TENANT, "f")).ok().flatten().map(|v| v.len());
        s.apply(2, &deploy("f", b"m"))?;
        let first = head_size(&s).expect("a head record");
        for i in 3..503 {
            s.apply(i, &deploy("f", b"m"))?;
        }
        assert_eq!(head_size(&s), Some(first + 4), "the head holds only numbers (active and latest, 1 -> 501)");
        assert_eq!(s.versions.len(), 501);
        let f = s.function(DEFAULT_TENANT, "f")?.expect("deployed");
        assert_eq!((f.active, f.latest, f.current.map(|v| v.created_at)), (501, 501, Some(502)));
        let back = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 7 };
        assert_eq!(s.apply(503, &back)?, Applied::RolledBack { version: 7 });
        assert_eq!(s.function(DEFAULT_TENANT, "f")?.and_then(|f| f.current).map(|v| v.created_at), Some(8));
        let gone = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 502 };
        assert!(matches!(s.apply(504, &gone), Err(StateError::VersionNotFound { .. })));
        // Deleting the function removes every version with it.
        s.apply(505, &Command::Delete { tenant: DEFAULT_TENANT.into(), name: "f".into() })?;
        assert_eq!((s.versions.len(), s.functions.len()), (0, 0));
        Ok(())
    }

    #[test]
    fn functions_stored_with_inline_versions_are_moved_at_start() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StateError::Storage(e.to_string()))?;
        {
            let s = State::open(dir.path())?;
            s.apply(1, &put(b"m"))?;
            // A function as stored before versions had records of their own.
            let version = |n: u64| Version { version: n, module: sha256_hex(b"m"), spec: spec(), created_at: n + 1 };
            let old = serde_json::json!({
                "tenant": DEFAULT_TENANT, "name": "old", "versions": [version(1), version(2), version(3)], "active": 2,
            });
            s.functions.insert(function_key(DEFAULT_TENANT, "old"), serde_json::to_vec(&old).expect("json"))?;
            s.meta.insert(APPLIED_KEY, &4u64.to_be_bytes())?;
            s.flush()?;
        }
        let s = State::open(dir.path())?;
        let f = s.function(DEFAULT_TENANT, "old")?.expect("kept");
        assert_eq!((f.active, f.latest, f.current.map(|v| v.version)), (2, 3, Some(2)));
        assert_eq!(s.versions(DEFAULT_TENANT, "old")?.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(s.apply(5, &deploy("old", b"m"))?, Applied::Deployed { version: 4 });
        Ok(())
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
        assert_eq!((f.active, s.versions(DEFAULT_TENANT, "fraud")?.len()), (1, 2), "rollback keeps every version");
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
        assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.latest), Some(1));
        Ok(())
    }

    #[test]
    fn replaying_an_applied_index_is_a_no_op() -> Result<()> {
        let s = State::temporary()?;
        s.apply(1, &put(b"m"))?;
        s.apply(2, &deploy("f", b"m"))?;
        assert_eq!(s.apply(2, &deploy("f", b"m"))?, Applied::AlreadyApplied);
        assert_eq!(s.apply(1, &put(b"m"))?, Applied::AlreadyApplied);
        assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.latest), Some(1));
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
