//! A loaded [`Function`] and its calls: each [`Instance`] is a fresh store
//! with the invocation's limits, from the function's pre-linked component
//! (or its `init` image); [`Finished`] is what a call leaves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use wasmgrid_data::{OutputWriter, PartitionReader};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::WasiCtx;

use crate::bindings::{self, Batch};
use crate::host::{self, Capture, HostState, HostTrap, Limiter, Logs};
use crate::{Aggregation, Captured, Error, Kind, Limits, Result, convert};

pub(crate) enum Pre {
    Scorer(bindings::ScorerCallsPre<HostState>),
    Mapper(bindings::mapper::MapperCallsPre<HostState>),
    Reducer(wasmtime::component::InstancePre<HostState>),
    Aggregator(bindings::aggregator::AggregatorCallsPre<HostState>),
    Http(wasmtime_wasi_http::p2::bindings::sync::ProxyPre<HostState>),
}

/// A loaded, linked component, ready to instantiate any number of times.
pub struct Function {
    pub(crate) kind: Kind,
    pub(crate) sha256: String,
    /// The component exports `init`.
    pub(crate) has_init: bool,
    /// Instances start from the memory its `init` left.
    pub(crate) initialized: bool,
    pub(crate) pre: Pre,
    pub(crate) engine: Engine,
    pub(crate) tick: Duration,
    pub(crate) fuel: bool,
    pub(crate) gpu: wasmgrid_gpu::SharedGpu,
    /// Its compiled code's size in bytes, as the code cache counts it.
    pub(crate) size: u64,
    /// The runtime's clock when it was last instantiated.
    pub(crate) last_used: std::sync::atomic::AtomicU64,
    pub(crate) clock: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("kind", &self.kind).field("sha256", &self.sha256).finish()
    }
}

/// What an invocation reads and writes besides its arguments.
#[derive(Debug, Default)]
pub struct Io {
    /// The partition a mapper reads.
    pub input: Option<PartitionReader>,
    /// Where a mapper's records and batches go.
    pub output: Option<OutputWriter>,
    /// The version's artifacts.
    pub artifacts: crate::Artifacts,
}

/// `reduce: func(key: list<u8>, values: list<list<u8>>) -> result<list<u8>, string>`.
pub(crate) type ReduceParams<'a> = (&'a [u8], &'a [&'a [u8]]);
pub(crate) type ReduceResults = (std::result::Result<Vec<u8>, String>,);

pub(crate) enum Exports {
    Scorer(bindings::ScorerCalls),
    Mapper(bindings::mapper::MapperCalls),
    /// The untyped `reduce` export; typed per call, since the values are
    /// borrowed for that call only.
    Reducer(wasmtime::component::Func),
    Aggregator(bindings::aggregator::AggregatorCalls),
    Http(wasmtime_wasi_http::p2::bindings::sync::Proxy),
}

/// Where a `wasi:http` guest's response goes.
pub type HttpResponder = tokio::sync::oneshot::Sender<
    std::result::Result<
        http::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
        wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
    >,
>;

/// One instance in its own store. Dropping it returns its pool slot.
pub struct Instance {
    pub(crate) store: Store<HostState>,
    pub(crate) exports: Exports,
    pub(crate) limits: Limits,
    pub(crate) tick: Duration,
    pub(crate) fuel: bool,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// What an invocation left behind: its output, pairs, logs and stdio.
#[derive(Debug)]
pub struct Finished {
    /// The output writer, if one was given (not yet finished).
    pub output: Option<OutputWriter>,
    /// Pairs emitted for reduce-by-key.
    pub pairs: wasmgrid_data::pairs::Pairs,
    /// What the guest logged and wrote to stdout and stderr.
    pub captured: Captured,
    /// Input records the guest read.
    pub records_read: u64,
    /// Time the invocation's `gpu` calls took.
    pub gpu_time: Duration,
}

impl Function {
    /// The component's world.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Marks it used now, for the code cache.
    pub(crate) fn touch(&self) {
        self.last_used.store(self.clock.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Its compiled code's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The sha256 of the component's bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Whether instances start from the memory the component's `init` left
    /// (loaded with [`Runtime::load_version`]).
    pub fn initialized(&self) -> bool {
        self.initialized
    }

    /// A fresh instance with `limits`, `config` and `io`.
    pub fn instantiate(&self, limits: &Limits, config: Arc<BTreeMap<String, String>>, io: Io) -> Result<Instance> {
        self.touch();
        let mut store = new_store(&self.engine, &self.gpu, limits, config, io);
        arm(&mut store, limits, self.tick, self.fuel)?;
        let exports = match &self.pre {
            Pre::Scorer(p) => p.instantiate(&mut store).map(Exports::Scorer),
            Pre::Mapper(p) => p.instantiate(&mut store).map(Exports::Mapper),
            Pre::Aggregator(p) => p.instantiate(&mut store).map(Exports::Aggregator),
            Pre::Http(p) => p.instantiate(&mut store).map(Exports::Http),
            Pre::Reducer(p) => p.instantiate(&mut store).and_then(|instance| {
                instance
                    .get_func(&mut store, "reduce")
                    .map(Exports::Reducer)
                    .ok_or_else(|| wasmtime::format_err!("component has no `reduce` export"))
            }),
        };
        let exports = exports.map_err(|e| classify(e, limits, &store.data().stderr))?;
        Ok(Instance { store, exports, limits: limits.clone(), tick: self.tick, fuel: self.fuel })
    }
}

/// A store for one invocation: WASI without files, network, environment or
/// arguments, stdio captured, and the invocation's limits.
pub(crate) fn new_store(
    engine: &Engine,
    gpu: &wasmgrid_gpu::SharedGpu,
    limits: &Limits,
    config: Arc<BTreeMap<String, String>>,
    io: Io,
) -> Store<HostState> {
    let stdout = Capture::new(limits.max_stdio_bytes);
    let stderr = Capture::new(limits.max_stdio_bytes);
    let wasi = WasiCtx::builder().stdout(stdout.clone()).stderr(stderr.clone()).build();
    let state = HostState {
        wasi,
        table: ResourceTable::new(),
        limiter: Limiter { memory: limits.memory, table_elements: 100_000 },
        config,
        logs: Logs::default(),
        max_log_bytes: limits.max_log_bytes,
        stdout,
        stderr,
        input: io.input,
        output: io.output,
        artifacts: io.artifacts,
        pairs: wasmgrid_data::pairs::Pairs::default(),
        output_bytes: 0,
        max_output_bytes: limits.max_output_bytes,
        http: wasmtime_wasi_http::WasiHttpCtx::new(),
        http_hooks: host::NoNetwork,
        gpu: gpu.clone(),
        gpu_bytes: 0,
        gpu_time: Duration::ZERO,
        gpu_refused: limits.gpu_refused.clone(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    // Bounds what one guest-to-host call (an import's arguments or an
    // export's result) may make the host allocate.
    let per_call = limits.max_output_bytes.saturating_add(1 << 20);
    store.set_hostcall_fuel(usize::try_from(per_call).unwrap_or(usize::MAX));
    store
}

/// Ticks between looks at a cancel flag.
pub(crate) const CANCEL_CHECK_TICKS: u64 = 10;

/// Why a cancelled call stopped.
#[derive(Debug)]
pub(crate) struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// Sets the deadline (and fuel) for the next call.
pub(crate) fn arm(store: &mut Store<HostState>, limits: &Limits, tick: Duration, fuel: bool) -> Result<()> {
    let ticks = limits.timeout.as_nanos().div_ceil(tick.as_nanos().max(1)) as u64 + 1;
    match &limits.cancel {
        None => {
            store.set_epoch_deadline(ticks);
            store.epoch_deadline_trap();
        }
        Some(cancel) => {
            // Wake every few ticks to look at the flag; the time limit still holds.
            let every = ticks.min(CANCEL_CHECK_TICKS);
            let deadline = Instant::now() + limits.timeout;
            let cancel = cancel.clone();
            store.set_epoch_deadline(every);
            store.epoch_deadline_callback(move |_| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(wasmtime::Error::new(Cancelled));
                }
                if Instant::now() >= deadline {
                    return Err(Trap::Interrupt.into());
                }
                Ok(wasmtime::UpdateDeadline::Continue(every))
            });
        }
    }
    if fuel {
        store.set_fuel(limits.fuel.unwrap_or(u64::MAX)).map_err(|e| Error::Runtime(format!("setting fuel: {e}")))?;
    }
    Ok(())
}

/// Turns a failed call into the error that says what the guest did.
pub(crate) fn classify(e: wasmtime::Error, limits: &Limits, stderr: &Capture) -> Error {
    let e = match e.downcast::<HostTrap>() {
        Ok(trap) => return trap.into(),
        Err(e) => e,
    };
    if e.downcast_ref::<Cancelled>().is_some() {
        return Error::Cancelled;
    }
    if format!("{e:#}").contains("too much data is being copied between the host and the guest") {
        return Error::OutputLimit { limit: limits.max_output_bytes };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Error::Timeout { limit: limits.timeout },
        Some(Trap::StackOverflow) => Error::StackOverflow,
        Some(Trap::OutOfFuel) => Error::FuelExhausted { fuel: limits.fuel.unwrap_or(0) },
        _ => {
            let text = stderr.text();
            // The end of stderr holds a Rust guest's panic message.
            let tail = match text.len() {
                n if n > 2048 => {
                    let mut at = n - 2048;
                    while !text.is_char_boundary(at) {
                        at += 1;
                    }
                    text[at..].to_string()
                }
                _ => text,
            };
            let message = match e.downcast_ref::<Trap>() {
                // Rust and C guests keep a shadow stack at the bottom of linear
                // memory; overflowing it wraps around to an out-of-bounds address.
                Some(t @ Trap::MemoryOutOfBounds) => {
                    format!("{t} (in a Rust or C guest this is often deep recursion overflowing its shadow stack)")
                }
                Some(t) => t.to_string(),
                None => format!("{e:#}"),
            };
            Error::Trap { message, stderr: tail }
        }
    }
}

impl Instance {
    fn kind(&self) -> Kind {
        match self.exports {
            Exports::Scorer(_) => Kind::Scorer,
            Exports::Mapper(_) => Kind::Mapper,
            Exports::Reducer(_) => Kind::Reducer,
            Exports::Aggregator(_) => Kind::Aggregator,
            Exports::Http(_) => Kind::Http,
        }
    }

    /// Sets the deadline (and fuel) for the next call.
    fn arm(&mut self) -> Result<()> {
        arm(&mut self.store, &self.limits, self.tick, self.fuel)
    }

    /// Counts a call's result against the invocation's output limit, as the
    /// host does for everything a guest emits.
    fn charge_output(&mut self, bytes: u64) -> Result<()> {
        self.store.data_mut().charge_output(bytes).map_err(Error::from)
    }

    fn wrong_kind(&self, expected: Kind) -> Error {
        Error::WrongKind { expected: expected.name(), actual: self.kind().name() }
    }

    /// Calls a scorer: returns the columns it adds.
    pub fn score(&mut self, rows: &Batch) -> Result<Batch> {
        self.arm()?;
        let Exports::Scorer(s) = &self.exports else {
            return Err(self.wrong_kind(Kind::Scorer));
        };
        let result = s.call_score(&mut self.store, rows);
        let out = result.map_err(|e| classify(e, &self.limits, &self.store.data().stderr))?;
        let batch = out.map_err(|message| Error::Guest { message })?;
        self.charge_output(convert::wit_size(&batch))?;
        Ok(batch)
    }

    /// Scores an Arrow batch: the input rows plus the scorer's columns.
    pub fn score_arrow(&mut self, rows: &RecordBatch) -> Result<RecordBatch> {
        let scores = self.score(&convert::to_wit(rows)?)?;
        convert::merge_scores(rows, &convert::from_wit(scores)?)
    }

    /// Calls a `wasi:http/proxy` component's handler with `request`. The
    /// response goes to `respond` as soon as the guest sets it, and its
    /// body streams while the guest runs; this returns when the guest is done.
    pub fn handle_http<B>(&mut self, request: http::Request<B>, respond: HttpResponder) -> Result<()>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        use wasmtime_wasi_http::WasiHttpView as _;
        self.arm()?;
        let Exports::Http(proxy) = &self.exports else {
            return Err(self.wrong_kind(Kind::Http));
        };
        let bad = |e: wasmtime::Error| Error::bad_input_request(format!("{e:#}"));
        let mut http = self.store.data_mut().http();
        let request = http.new_incoming_request(wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http, request);
        let request = request.map_err(bad)?;
        let out = http.new_response_outparam(respond).map_err(bad)?;
        let result = proxy.wasi_http_incoming_handler().call_handle(&mut self.store, request, out);
        result.map_err(|e| classify(e, &self.limits, &self.store.data().stderr))
    }

    /// Calls a mapper on `partition`.
    pub fn run(&mut self, partition: u32) -> Result<()> {
        self.arm()?;
        let Exports::Mapper(m) = &self.exports else {
            return Err(self.wrong_kind(Kind::Mapper));
        };
        let result = m.call_run(&mut self.store, partition);
        result
            .map_err(|e| classify(e, &self.limits, &self.store.data().stderr))?
            .map_err(|message| Error::Guest { message })
    }

    /// Calls a reducer on one key and all its values; returns the output record.
    pub fn reduce(&mut self, key: &[u8], values: &[&[u8]]) -> Result<Vec<u8>> {
        self.arm()?;
        let Exports::Reducer(f) = &self.exports else {
            return Err(self.wrong_kind(Kind::Reducer));
        };
        let typed = f
            .typed::<ReduceParams<'_>, ReduceResults>(&self.store)
            .map_err(|e| Error::Runtime(format!("reduce export: {e}")))?;
        let result = typed.call(&mut self.store, (key, values));
        let (out,) = result.map_err(|e| classify(e, &self.limits, &self.store.data().stderr))?;
        let record = out.map_err(|message| Error::Guest { message })?;
        self.charge_output(record.len() as u64)?;
        Ok(record)
    }

    /// Asks an aggregator what to compute.
    pub fn aggregation(&mut self) -> Result<Aggregation> {
        self.arm()?;
        let Exports::Aggregator(a) = &self.exports else {
            return Err(self.wrong_kind(Kind::Aggregator));
        };
        let result = a.call_aggregation(&mut self.store);
        let spec = result
            .map_err(|e| classify(e, &self.limits, &self.store.data().stderr))?
            .map_err(|message| Error::Guest { message })?;
        Ok(convert::aggregation(spec))
    }

    /// Calls an aggregator's `prepare` on `rows` (restricted to the
    /// columns it asked for): the rows plus the columns it returns.
    pub fn prepare_arrow(&mut self, rows: &RecordBatch, columns: &[String]) -> Result<RecordBatch> {
        let picked = convert::project(rows, columns)?;
        self.arm()?;
        let Exports::Aggregator(a) = &self.exports else {
            return Err(self.wrong_kind(Kind::Aggregator));
        };
        let result = a.call_prepare(&mut self.store, &convert::to_wit(&picked)?);
        let added = result
            .map_err(|e| classify(e, &self.limits, &self.store.data().stderr))?
            .map_err(|message| Error::Guest { message })?;
        convert::merge_scores(rows, &convert::from_wit(added)?)
    }

    /// Time this instance's `gpu` calls took so far.
    pub fn gpu_time(&self) -> Duration {
        self.store.data().gpu_time
    }

    /// Logs kept so far.
    pub fn logs(&self) -> &Logs {
        &self.store.data().logs
    }

    /// Ends the invocation and hands back what it produced.
    pub fn finish(self) -> Finished {
        let state = self.store.into_data();
        Finished {
            records_read: state.input.as_ref().map_or(0, PartitionReader::records),
            output: state.output,
            pairs: state.pairs,
            captured: Captured { logs: state.logs, stdout: state.stdout.text(), stderr: state.stderr.text() },
            gpu_time: state.gpu_time,
        }
    }
}
