//! Runs guest functions on wasmtime: one fresh, pooled instance per invocation.
//!
//! A [`Runtime`] is built once per process from a [`RuntimeConfig`]: one
//! `Engine` with the pooling allocator, epoch interruption driven by a
//! ticker thread, and a [`Linker`] holding WASI (no files, no network,
//! captured stdio) and the wasmgrid host API. [`Runtime::load`] turns
//! component bytes into a [`Function`] (validated, compiled at most once,
//! cached on disk by content hash and engine fingerprint). Each
//! [`Function::instantiate`] makes a new `Store` with the invocation's
//! [`Limits`] and gives an [`Instance`] to call.
//!
//! Beside the engine: [`bindings`] (the host side of the WIT worlds in
//! `sdk/wit`), [`convert`] (Arrow record batches to the WIT `batch` type and
//! back), [`logs`] (what an invocation logged, kept for its owner) and the
//! crate's [`Error`].

// wgpu's types are deep: proving `Send`/`Sync` for the host state that
// holds device buffers needs more than the default 128 levels.
#![recursion_limit = "256"]

pub mod bindings;
mod cache;
mod compile;
pub mod convert;
mod error;
mod function;
mod gpu_host;
mod host;
mod init;
pub mod logs;
mod slots;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmgrid_api::pool;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use error::{DataError, Error, Result};

pub use compile::{CompileWorker, worker_main};
pub use function::{Finished, Function, HttpResponder, Instance, Io};
use function::{Pre, arm, new_store};
use host::HostState;
pub use host::{Capture, LogLine, Logs};
pub use init::{INIT_TIMEOUT, version_key, version_key_with};
pub use logs::Captured;
use slots::Slots;

/// A function version's artifacts, by name.
pub type Artifacts = Arc<BTreeMap<String, Artifact>>;

/// One artifact a function reads: a local file and its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Its sha256, hex: versions with other bytes are other versions.
    pub sha256: String,
    /// The file.
    pub path: PathBuf,
}

/// What an aggregator computes, as its `aggregation` export said.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    /// The group-by the host computes.
    pub spec: wasmgrid_data::aggregate::Spec,
    /// The input columns its `prepare` reads, when it has one to call.
    pub prepare: Option<Vec<String>>,
}

/// Settings that change compiled code; the compile worker gets a copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EngineSettings {
    /// Largest wasm stack, in bytes.
    pub max_wasm_stack: usize,
    /// Whether fuel metering is compiled in (enables [`Limits::fuel`]).
    pub fuel: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { max_wasm_stack: 1 << 20, fuel: false }
    }
}

/// How a runtime is built.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Code generation settings.
    pub engine: EngineSettings,
    /// Where compiled components are kept; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Largest component accepted, in bytes.
    pub max_component_bytes: u64,
    /// Longest a compilation may take.
    pub compile_timeout: Duration,
    /// Address-space budget of the compile worker, in bytes.
    pub compile_memory: u64,
    /// Compile in a separate, limited process (`None`: in this process, for
    /// trusted components only, since a runaway compile cannot be stopped).
    pub compile_worker: Option<CompileWorker>,
    /// Concurrent instances the pool holds.
    pub instance_slots: u32,
    /// Largest linear memory any function may be given.
    pub max_memory: u64,
    /// Epoch tick: the resolution of timeouts.
    pub epoch_tick: Duration,
    /// The device `gpu` calls run on.
    pub gpu: wasmgrid_gpu::SharedGpu,
    /// Most compiled code (and `init` images) kept loaded, in bytes: past
    /// it, the function versions used least recently are evicted, and
    /// loaded again (from the compiled cache) when next called.
    pub code_cache: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            engine: EngineSettings::default(),
            cache_dir: None,
            max_component_bytes: 64 << 20,
            compile_timeout: Duration::from_secs(60),
            compile_memory: 4 << 30,
            compile_worker: None,
            instance_slots: 128,
            max_memory: 4 << 30,
            epoch_tick: Duration::from_millis(1),
            gpu: wasmgrid_gpu::SharedGpu::default(),
            code_cache: DEFAULT_CODE_CACHE,
        }
    }
}

/// Limits for one invocation.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest linear memory, in bytes.
    pub memory: u64,
    /// Longest one call may run.
    pub timeout: Duration,
    /// Fuel per call, when the engine meters fuel.
    pub fuel: Option<u64>,
    /// Most output (records, batches, pairs, results) per invocation, in bytes.
    pub max_output_bytes: u64,
    /// Most log bytes kept per invocation.
    pub max_log_bytes: usize,
    /// Most captured stdout and stderr bytes, each.
    pub max_stdio_bytes: usize,
    /// Set to stop a running call (a cancelled job): it ends within a few
    /// milliseconds with [`Error::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Why `gpu` calls are refused (a tenant that used its GPU quota):
    /// each one then answers this error.
    pub gpu_refused: Option<Arc<str>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 256 << 20,
            timeout: Duration::from_secs(60),
            fuel: None,
            max_output_bytes: 1 << 30,
            max_log_bytes: 64 << 10,
            max_stdio_bytes: 64 << 10,
            cancel: None,
            gpu_refused: None,
        }
    }
}

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exports `score`.
    Scorer,
    /// Exports `run`.
    Mapper,
    /// Exports `reduce`.
    Reducer,
    /// Exports `aggregation` (and `prepare`).
    Aggregator,
    /// A standard `wasi:http/proxy` component (exports
    /// `wasi:http/incoming-handler`).
    Http,
}

impl Kind {
    /// Its WIT world's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Scorer => "scorer",
            Kind::Mapper => "mapper",
            Kind::Reducer => "reducer",
            Kind::Aggregator => "aggregator",
            Kind::Http => "http",
        }
    }
}

pub use wasmgrid_api::a;

/// [`RuntimeConfig::code_cache`] unless set: 2 GiB.
pub const DEFAULT_CODE_CACHE: u64 = 2 << 30;

/// Counters of what the runtime did, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled.
    pub compiled: u64,
    /// Components loaded from the on-disk cache.
    pub cache_hits: u64,
    /// Cache entries found corrupt and rebuilt.
    pub cache_rejected: u64,
    /// Function versions whose `init` this runtime ran.
    pub inits: u64,
}

/// What the code cache holds and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CodeCacheStats {
    /// Functions and versions loaded (compiled, or read from the compiled cache).
    pub loads: u64,
    /// Loaded ones evicted by the budget.
    pub evictions: u64,
    /// Compiled code of those loaded now, in bytes.
    pub bytes: u64,
}

/// One engine, linker and compiled-component cache per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    cache: Option<cache::CompiledCache>,
    loaded: Mutex<HashMap<String, Arc<Function>>>,
    /// One lock per module being loaded, so concurrent loads of the same
    /// module compile it once.
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Modules whose compiled form this node's pool cannot hold, and why.
    unloadable: Mutex<HashMap<String, String>>,
    /// Instrumented compiles by module sha256: one serves every config.
    instrumented: Mutex<HashMap<String, Component>>,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
    cache_rejected: AtomicU64,
    inits: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    /// Ticks of the epoch thread: when a function was last used.
    clock: Arc<AtomicU64>,
    /// `init`s running at once: a share of the instance slots, so a burst
    /// of deploys waits its turn instead of failing for want of a slot.
    init_slots: Slots,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The wasmtime configuration for `settings`; `pool` adds the pooling allocator.
pub(crate) fn engine_config(settings: &EngineSettings, pool: Option<&RuntimeConfig>) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(settings.fuel)
        .max_wasm_stack(settings.max_wasm_stack)
        .parallel_compilation(true);
    if let Some(rc) = pool {
        let mut p = PoolingAllocationConfig::new();
        let slots = rc.instance_slots.max(1);
        p.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(8))
            .total_stacks(slots)
            .max_core_instances_per_component(pool::CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(pool::MEMORIES_PER_COMPONENT)
            .max_tables_per_component(pool::TABLES_PER_COMPONENT)
            .table_elements(pool::TABLE_ELEMENTS as usize)
            .max_memory_size(usize::try_from(rc.max_memory).unwrap_or(usize::MAX))
            // Reset small memories with memset rather than madvise: cheaper reuse.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

impl Runtime {
    /// Builds the engine (reserving the instance pool), the linker and the
    /// epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let engine = Engine::new(&engine_config(&config.engine, Some(&config)))
            .map_err(|e| Error::Runtime(format!("creating the engine: {e}")))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        let link = |e: wasmtime::Error| Error::Runtime(format!("linking host functions: {e}"));
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker).map_err(link)?;
        bindings::wasmgrid::function::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
        bindings::wasmgrid::function::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
        bindings::wasmgrid::function::config::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
        bindings::mapper::wasmgrid::function::input::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(link)?;
        bindings::mapper::wasmgrid::function::output::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(link)?;
        bindings::wasmgrid::function::gpu::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
        bindings::wasmgrid::function::artifacts::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
        bindings::aggregator::wasmgrid::function::aggregate::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(link)?;

        let cache = match &config.cache_dir {
            Some(dir) => Some(cache::CompiledCache::open(dir, &engine)?),
            None => None,
        };

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let clock = Arc::new(AtomicU64::new(0));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            let tick = config.epoch_tick;
            let clock = clock.clone();
            std::thread::Builder::new()
                .name("wasmgrid-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                        clock.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| Error::Runtime(format!("starting the epoch ticker: {e}")))?;
        }

        Ok(Runtime {
            engine,
            linker,
            init_slots: Slots::new((config.instance_slots / 4).max(1) as usize),
            config,
            cache,
            loaded: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            instrumented: Mutex::new(HashMap::new()),
            unloadable: Mutex::new(HashMap::new()),
            compiled: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_rejected: AtomicU64::new(0),
            inits: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            clock,
            ticker_stop,
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// What the runtime has done so far.
    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_rejected: self.cache_rejected.load(Ordering::Relaxed),
            inits: self.inits.load(Ordering::Relaxed),
        }
    }

    /// What the code cache holds and did.
    pub fn code_cache(&self) -> CodeCacheStats {
        CodeCacheStats {
            loads: self.loads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: self.loaded.lock().map_or(0, |l| l.values().map(|f| f.size).sum()),
        }
    }

    /// Reads and loads the component at `path`.
    pub fn load_file(&self, path: &Path) -> Result<Arc<Function>> {
        self.load(&self.read_file(path)?)
    }

    /// The bytes of the component at `path`, if not over the size limit.
    pub fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
        if meta.len() > self.config.max_component_bytes {
            return Err(Error::ComponentTooLarge { size: meta.len(), limit: self.config.max_component_bytes });
        }
        std::fs::read(path).map_err(|e| Error::io("reading", path, e))
    }

    /// Loads a component: from memory if this runtime has it, else from the
    /// compiled cache, else by compiling it (bounded in size, time and memory).
    /// Its `init`, if it has one, is not run: calls run it themselves (see
    /// [`Runtime::load_version`]).
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Function>> {
        let sha256 = self.check(bytes)?;
        self.load_once(&sha256, || {
            let component = self.compiled_component(&sha256, bytes)?;
            self.link(component, sha256.clone(), false)
        })
    }

    /// Loads a function version: `bytes` with `config`. A component that
    /// exports `init` has it run once here, under `limits` (but
    /// [`INIT_TIMEOUT`] of time), and every instance of the returned
    /// function starts from the memory `init` left. The initialised image is
    /// kept (in memory and in the compiled cache) under
    /// [`version_key`]`(module, config)`, so `init` runs once per version
    /// per runtime and cache directory. A component without `init` loads as
    /// with [`Runtime::load`].
    pub fn load_version(
        &self,
        bytes: &[u8],
        config: &Arc<BTreeMap<String, String>>,
        limits: &Limits,
    ) -> Result<Arc<Function>> {
        self.load_version_with(bytes, config, &Artifacts::default(), limits)
    }

    /// [`Runtime::load_version`] of a version with `artifacts`, which its
    /// `init` reads (and which are part of what makes the version: see
    /// [`version_key_with`]). Its calls get them through [`Io::artifacts`].
    pub fn load_version_with(
        &self,
        bytes: &[u8],
        config: &Arc<BTreeMap<String, String>>,
        artifacts: &Artifacts,
        limits: &Limits,
    ) -> Result<Arc<Function>> {
        let sha256 = self.check(bytes)?;
        if !init::exports_init(bytes) {
            return self.load(bytes);
        }
        let key = version_key_with(&sha256, config, artifacts);
        self.load_once(&key, || {
            let component = match self.cached(&key) {
                Some(component) => component,
                None => {
                    let image = self.initialize(&sha256, bytes, config, artifacts, limits)?;
                    self.compile(&key, &image)?
                }
            };
            self.link(component, sha256.clone(), true)
        })
    }

    /// The function version `module` with `config`, if this runtime has it
    /// loaded: initialised, or a component without `init`.
    pub fn loaded_version(&self, module: &str, config: &BTreeMap<String, String>) -> Option<Arc<Function>> {
        self.loaded_version_with(module, config, &Artifacts::default())
    }

    /// [`Runtime::loaded_version`] of a version with `artifacts`.
    pub fn loaded_version_with(
        &self,
        module: &str,
        config: &BTreeMap<String, String>,
        artifacts: &Artifacts,
    ) -> Option<Arc<Function>> {
        let loaded = self.loaded.lock().ok()?;
        match loaded.get(&version_key_with(module, config, artifacts)) {
            Some(f) => Some(f.clone()),
            None => loaded.get(module).filter(|f| !f.has_init).cloned(),
        }
    }

    /// The function loaded under `key` (a module's sha256, or a
    /// [`version_key`]), if this runtime has it.
    pub fn loaded(&self, key: &str) -> Option<Arc<Function>> {
        self.loaded.lock().ok()?.get(key).cloned()
    }

    /// The sha256 of every module loaded (compiled and ready, with any
    /// config), sorted.
    pub fn loaded_modules(&self) -> Vec<String> {
        let mut modules: Vec<String> =
            self.loaded.lock().map(|l| l.values().map(|f| f.sha256.clone()).collect()).unwrap_or_default();
        modules.sort();
        modules.dedup();
        modules
    }

    /// Checks size and header; the bytes' sha256.
    fn check(&self, bytes: &[u8]) -> Result<String> {
        let size = bytes.len() as u64;
        if size > self.config.max_component_bytes {
            return Err(Error::ComponentTooLarge { size, limit: self.config.max_component_bytes });
        }
        check_header(bytes)?;
        Ok(hex::encode(Sha256::digest(bytes)))
    }

    /// The function under `key`, made by `make` unless it is loaded already;
    /// concurrent callers for one key make it once.
    /// A function made here counts against the code cache budget: those
    /// used least recently are evicted past it.
    fn load_once(&self, key: &str, make: impl FnOnce() -> Result<Function>) -> Result<Arc<Function>> {
        let mut made = false;
        let function = self.make_once(&self.loaded, key, key, || {
            made = true;
            make().map(Arc::new)
        })?;
        if made {
            self.loads.fetch_add(1, Ordering::Relaxed);
            function.touch();
            self.evict_past_budget(key)?;
        }
        Ok(function)
    }

    /// Evicts the functions used least recently, but `keep`, until those
    /// loaded fit the code cache budget. Calls running an evicted one
    /// finish (they hold it); the next call loads it again.
    fn evict_past_budget(&self, keep: &str) -> Result<()> {
        let mut loaded = self.loaded.lock().map_err(poisoned)?;
        let mut total: u64 = loaded.values().map(|f| f.size).sum();
        while total > self.config.code_cache {
            let victim = loaded
                .iter()
                .filter(|(key, _)| key.as_str() != keep)
                .min_by_key(|(_, f)| f.last_used.load(Ordering::Relaxed))
                .map(|(key, f)| (key.clone(), f.size));
            let Some((key, size)) = victim else { break };
            loaded.remove(&key);
            total -= size;
            self.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key, size, "evicted from the code cache");
        }
        Ok(())
    }

    /// The value under `key` in `made`, made by `make` unless it is there
    /// already. Concurrent callers wait for one turn, named `turn` in
    /// `loading`, so the value is made once.
    fn make_once<T: Clone>(
        &self,
        made: &Mutex<HashMap<String, T>>,
        key: &str,
        turn: &str,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let get = || made.lock().map_err(poisoned).map(|m| m.get(key).cloned());
        if let Some(value) = get()? {
            return Ok(value);
        }
        let lock = self.loading.lock().map_err(poisoned)?.entry(turn.to_string()).or_default().clone();
        let _turn = lock.lock().map_err(poisoned)?;
        // Another caller may have made it while this one waited.
        if let Some(value) = get()? {
            return Ok(value);
        }
        let value = make();
        self.loading.lock().map_err(poisoned)?.remove(turn);
        let value = value?;
        made.lock().map_err(poisoned)?.insert(key.to_string(), value.clone());
        Ok(value)
    }

    /// Runs `init` of the component `bytes` (sha256 `module`) with `config`
    /// and returns the component rewritten with the state it left.
    fn initialize(
        &self,
        module: &str,
        bytes: &[u8],
        config: &Arc<BTreeMap<String, String>>,
        artifacts: &Artifacts,
        limits: &Limits,
    ) -> Result<Vec<u8>> {
        let started = Instant::now();
        let (cx, instrumented) = init::instrument(bytes)?;
        let instrumented = self.instrumented(module, &instrumented)?;
        let (mut store, limits) = self.init_store(config, artifacts, limits)?;
        self.inits.fetch_add(1, Ordering::Relaxed);
        let _slot = self.init_slots.take();
        let instance = init::run(&instrumented, &self.linker, &mut store, &limits)?;
        let image = init::snapshot(&cx, &mut store, instance)?;
        tracing::info!(module, elapsed_ms = started.elapsed().as_millis() as u64, "ran init");
        Ok(image)
    }

    /// The compiled `instrumented` component of `module`: one compile per
    /// module serves every config, and the control plane's check too.
    fn instrumented(&self, module: &str, instrumented: &[u8]) -> Result<Component> {
        // One compile per module: concurrent deploys of it wait for the first.
        let key = format!("{module}-instrumented");
        self.make_once(&self.instrumented, module, &key, || self.compiled_component(&key, instrumented))
    }

    /// A store for running `init`: the version's limits, but
    /// [`INIT_TIMEOUT`] of time.
    fn init_store(
        &self,
        config: &Arc<BTreeMap<String, String>>,
        artifacts: &Artifacts,
        limits: &Limits,
    ) -> Result<(Store<HostState>, Limits)> {
        let limits = Limits { timeout: INIT_TIMEOUT.max(limits.timeout), cancel: None, ..limits.clone() };
        let io = Io { artifacts: artifacts.clone(), ..Io::default() };
        let mut store = new_store(&self.engine, &self.config.gpu, &limits, config.clone(), io);
        arm(&mut store, &limits, self.config.epoch_tick, self.config.engine.fuel)?;
        Ok((store, limits))
    }

    /// Runs the `init` of `bytes` with `config` under `limits` and keeps
    /// nothing but the compiled (instrumented) module, which
    /// [`Runtime::load_version`] reuses: what a control plane checks before it
    /// accepts a deploy. A component without `init` passes.
    pub fn check_init(
        &self,
        bytes: &[u8],
        config: &Arc<BTreeMap<String, String>>,
        artifacts: &Artifacts,
        limits: &Limits,
    ) -> Result<()> {
        let sha256 = self.check(bytes)?;
        if !init::exports_init(bytes) {
            return Ok(());
        }
        let (_, instrumented) = init::instrument(bytes)?;
        let component = self.instrumented(&sha256, &instrumented)?;
        let (mut store, limits) = self.init_store(config, artifacts, limits)?;
        self.inits.fetch_add(1, Ordering::Relaxed);
        let _slot = self.init_slots.take();
        init::run(&component, &self.linker, &mut store, &limits).map(drop)
    }

    fn compiled_component(&self, sha256: &str, bytes: &[u8]) -> Result<Component> {
        if let Some(reason) = self.unloadable.lock().map_err(poisoned)?.get(sha256) {
            return Err(Error::Unloadable { reason: reason.clone() });
        }
        let component = match self.cached(sha256) {
            Some(component) => Ok(component),
            None => self.compile(sha256, bytes),
        };
        // A component over the pool's limits is over them at every load:
        // remembered, so route changes do not compile it again.
        if let Err(Error::Unloadable { reason }) = &component {
            self.unloadable.lock().map_err(poisoned)?.insert(sha256.to_string(), reason.clone());
        }
        component
    }

    /// The compiled component named `name` from the on-disk cache, if there.
    fn cached(&self, name: &str) -> Option<Component> {
        match self.cache.as_ref()?.get(&self.engine, name) {
            cache::Lookup::Hit(c) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                tracing::info!(name, "loaded compiled component from cache");
                Some(c)
            }
            cache::Lookup::Corrupt(why) => {
                self.cache_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(name, "compiled cache entry is corrupt ({why}); recompiling");
                None
            }
            cache::Lookup::Miss => None,
        }
    }

    /// Compiles `bytes` (bounded in time and memory when there is a compile
    /// worker) and keeps the result in the cache as `name`.
    fn compile(&self, name: &str, bytes: &[u8]) -> Result<Component> {
        let started = Instant::now();
        let artifact = match &self.config.compile_worker {
            Some(worker) => compile::in_worker(worker, &self.config, bytes)?,
            None => compile::in_process(&self.engine, bytes)?,
        };
        self.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(name, elapsed_ms = started.elapsed().as_millis() as u64, "compiled component");
        match &self.cache {
            Some(cache) => cache.put(&self.engine, name, &artifact),
            None => compile::deserialize(&self.engine, &artifact),
        }
    }

    /// A compiled component linked to the host. `initialized`: it is the
    /// image an `init` left (which the image no longer exports).
    fn link(&self, component: Component, sha256: String, initialized: bool) -> Result<Function> {
        let exports: Vec<String> =
            component.component_type().exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let has_init = initialized || exports.iter().any(|e| e == init::INIT_EXPORT);
        let kind = if exports.iter().any(|e| e == "score") {
            Kind::Scorer
        } else if exports.iter().any(|e| e == "run") {
            Kind::Mapper
        } else if exports.iter().any(|e| e == "reduce") {
            Kind::Reducer
        } else if exports.iter().any(|e| e == "aggregation") {
            Kind::Aggregator
        } else if exports.iter().any(|e| e.starts_with("wasi:http/incoming-handler@0.2")) {
            Kind::Http
        } else {
            return Err(Error::NotAFunction { exports: exports.join(", ") });
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| missing_import(&e))?;
        let world = |e: wasmtime::Error| Error::InvalidComponent {
            reason: format!("its `{}` export does not match the {} world: {e}", kind.name(), kind.name()),
        };
        let pre = match kind {
            Kind::Scorer => Pre::Scorer(bindings::ScorerCallsPre::new(pre).map_err(world)?),
            Kind::Mapper => Pre::Mapper(bindings::mapper::MapperCallsPre::new(pre).map_err(world)?),
            Kind::Reducer => {
                // Checks the export's type; calls go through `ReduceFunc`,
                // which lowers borrowed values without copying them first.
                bindings::reducer::ReducerCallsPre::new(pre.clone()).map_err(world)?;
                Pre::Reducer(pre)
            }
            Kind::Aggregator => Pre::Aggregator(bindings::aggregator::AggregatorCallsPre::new(pre).map_err(world)?),
            Kind::Http => Pre::Http(wasmtime_wasi_http::p2::bindings::sync::ProxyPre::new(pre).map_err(world)?),
        };
        let image = component.image_range();
        Ok(Function {
            size: (image.end as usize).saturating_sub(image.start as usize) as u64,
            last_used: AtomicU64::new(0),
            clock: self.clock.clone(),
            kind,
            sha256,
            has_init,
            initialized,
            pre,
            engine: self.engine.clone(),
            tick: self.config.epoch_tick,
            fuel: self.config.engine.fuel,
            gpu: self.config.gpu.clone(),
        })
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Runtime("a runtime lock was poisoned".into())
}

/// Rejects bytes that are not a WebAssembly component, before any compiler sees them.
fn check_header(bytes: &[u8]) -> Result<()> {
    let invalid = |reason: &str| Err(Error::InvalidComponent { reason: reason.to_string() });
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return invalid("not WebAssembly (no `\\0asm` header)");
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => invalid(
            "this is a core WebAssembly module, not a component; build with `--target wasm32-wasip2` \
             or wrap it with `wasm-tools component new`",
        ),
        other => invalid(&format!("unsupported WebAssembly version/layer {other:02x?}")),
    }
}

pub(crate) fn missing_import(e: &wasmtime::Error) -> Error {
    let detail = format!("{e:#}");
    // wasmtime: "component imports instance `x:y/z`, but a matching implementation was not found in the linker"
    let import = detail.split('`').nth(1).map(str::to_string).unwrap_or_else(|| "an unknown item".to_string());
    if detail.contains("matching implementation was not found") || detail.contains("not found") {
        Error::MissingImport { import, detail }
    } else {
        Error::InvalidComponent { reason: detail }
    }
}
