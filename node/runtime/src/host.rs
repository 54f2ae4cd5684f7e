//! The state each invocation's `Store` holds, and the host side of the WIT
//! interfaces: `log`, `config`, `input` and `output`.
//!
//! Every host call is bounded: logs and captured stdout/stderr keep at most a
//! fixed number of bytes, and emitted output counts against the invocation's
//! output limit, past which the guest traps with [`HostTrap::OutputLimit`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result as WasmResult};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::bindings::Batch;
use crate::bindings::mapper::wasmgrid::function::{input, output};
use crate::bindings::wasmgrid::function::{config, log, types};
use crate::convert;
use wasmgrid_data::{OutputWriter, PartitionReader};

/// Why a host call stopped the guest. Carried through wasmtime as the trap's
/// error and turned into a [`crate::Error`] when the call returns.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostTrap {
    #[error("output limit of {limit} bytes exceeded")]
    OutputLimit { limit: u64 },
    #[error("memory limit of {limit} bytes exceeded (asked for {requested})")]
    MemoryLimit { limit: u64, requested: u64 },
    #[error("{0}")]
    Node(#[from] crate::Error),
}

impl From<HostTrap> for crate::Error {
    fn from(trap: HostTrap) -> Self {
        match trap {
            HostTrap::OutputLimit { limit } => crate::Error::OutputLimit { limit },
            HostTrap::MemoryLimit { limit, requested } => crate::Error::MemoryLimit { limit, requested },
            HostTrap::Node(e) => e,
        }
    }
}

/// One line a guest logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// "debug", "info", "warn" or "error".
    pub level: &'static str,
    /// The message (cut to [`MAX_LOG_LINE`] bytes).
    pub message: String,
}

/// Longest log line kept; longer lines are cut.
pub const MAX_LOG_LINE: usize = 4096;

/// Logs kept for one invocation, bounded in bytes.
#[derive(Debug, Default, Clone)]
pub struct Logs {
    /// Lines kept, in order.
    pub lines: Vec<LogLine>,
    /// Lines dropped after the budget ran out.
    pub dropped: u64,
    bytes: usize,
}

/// A bounded, shareable capture of a guest's stdout or stderr. Bytes past the
/// capacity are counted and dropped: the guest never sees a write error.
#[derive(Debug, Clone)]
pub struct Capture {
    inner: Arc<Mutex<CaptureBuf>>,
}

#[derive(Debug, Default)]
struct CaptureBuf {
    data: Vec<u8>,
    capacity: usize,
    dropped: u64,
}

impl Capture {
    /// A capture that keeps the first `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Capture { inner: Arc::new(Mutex::new(CaptureBuf { capacity, ..Default::default() })) }
    }

    /// What was captured, lossily decoded.
    pub fn text(&self) -> String {
        self.inner.lock().map(|b| String::from_utf8_lossy(&b.data).into_owned()).unwrap_or_default()
    }

    /// Bytes dropped past the capacity.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().map(|b| b.dropped).unwrap_or(0)
    }

    fn push(&self, bytes: &[u8]) {
        if let Ok(mut b) = self.inner.lock() {
            let room = b.capacity.saturating_sub(b.data.len());
            let keep = room.min(bytes.len());
            b.data.extend_from_slice(&bytes[..keep]);
            b.dropped += (bytes.len() - keep) as u64;
        }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

/// Caps linear memory and table growth for one store.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub memory: u64,
    pub table_elements: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> WasmResult<bool> {
        if desired as u64 > self.memory {
            return Err(HostTrap::MemoryLimit { limit: self.memory, requested: desired as u64 }.into());
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> WasmResult<bool> {
        Ok(desired <= self.table_elements)
    }
}

/// Everything one invocation's store holds.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    pub(crate) logs: Logs,
    pub(crate) max_log_bytes: usize,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
    pub(crate) input: Option<PartitionReader>,
    pub(crate) output: Option<OutputWriter>,
    pub(crate) pairs: wasmgrid_data::pairs::Pairs,
    pub(crate) output_bytes: u64,
    pub(crate) max_output_bytes: u64,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_hooks: NoNetwork,
    /// The node's device for `gpu` calls.
    pub(crate) gpu: wasmgrid_gpu::SharedGpu,
    /// Bytes of tensors this instance holds.
    pub(crate) gpu_bytes: u64,
    /// Time spent in `gpu` calls.
    pub(crate) gpu_time: std::time::Duration,
    /// Why `gpu` calls are refused, if they are.
    pub(crate) gpu_refused: Option<Arc<str>>,
    /// The version's artifacts, by name.
    pub(crate) artifacts: crate::Artifacts,
}

/// `wasi:http` hooks for guests that get no network: every outgoing request
/// is denied (`HTTP-request-denied`), as sockets are.
#[derive(Debug, Default)]
pub(crate) struct NoNetwork;

type HttpFuture<T> = Box<dyn Future<Output = wasmtime_wasi_http::Result<T>> + Send>;

impl WasiHttpHooks for NoNetwork {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: HttpFuture<()>,
    ) -> HttpFuture<(http::Response<wasmtime_wasi_http::WasiBody>, HttpFuture<()>)> {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_hooks }
    }
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState").field("output_bytes", &self.output_bytes).finish_non_exhaustive()
    }
}

impl HostState {
    /// Counts `n` more output bytes against the limit.
    pub(crate) fn charge_output(&mut self, n: u64) -> Result<(), HostTrap> {
        self.output_bytes = self.output_bytes.saturating_add(n);
        if self.output_bytes > self.max_output_bytes {
            return Err(HostTrap::OutputLimit { limit: self.max_output_bytes });
        }
        Ok(())
    }

    fn writer(&mut self) -> WasmResult<&mut OutputWriter> {
        self.output
            .as_mut()
            .ok_or_else(|| HostTrap::Node(crate::Error::bad_output("this invocation has no output")).into())
    }

    fn reader(&mut self) -> WasmResult<&mut PartitionReader> {
        self.input.as_mut().ok_or_else(|| {
            HostTrap::Node(crate::Error::bad_input_request("this invocation has no input partition")).into()
        })
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for HostState {}

impl crate::bindings::aggregator::wasmgrid::function::aggregate::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> WasmResult<()> {
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        if self.logs.bytes + message.len() > self.max_log_bytes {
            self.logs.dropped += 1;
            return Ok(());
        }
        self.logs.bytes += message.len();
        match level {
            "error" => tracing::error!(target: "wasmgrid::guest", "{message}"),
            "warn" => tracing::warn!(target: "wasmgrid::guest", "{message}"),
            "info" => tracing::info!(target: "wasmgrid::guest", "{message}"),
            _ => tracing::debug!(target: "wasmgrid::guest", "{message}"),
        }
        self.logs.lines.push(LogLine { level, message });
        Ok(())
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> WasmResult<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }

    fn keys(&mut self) -> WasmResult<Vec<String>> {
        Ok(self.config.keys().cloned().collect())
    }
}

/// Most bytes one `artifacts.read` hands out.
const MAX_ARTIFACT_READ: u32 = 16 << 20;

impl crate::bindings::wasmgrid::function::artifacts::Host for HostState {
    fn size(&mut self, name: String) -> WasmResult<Option<u64>> {
        Ok(self.artifacts.get(&name).and_then(|a| std::fs::metadata(&a.path).ok()).map(|m| m.len()))
    }

    fn read(&mut self, name: String, offset: u64, len: u32) -> WasmResult<Result<Vec<u8>, String>> {
        use std::os::unix::fs::FileExt;
        let Some(artifact) = self.artifacts.get(&name) else {
            let names: Vec<&str> = self.artifacts.keys().map(String::as_str).collect();
            let has = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            return Ok(Err(format!("no artifact `{name}` (this version has: {has})")));
        };
        let read = std::fs::File::open(&artifact.path).and_then(|file| {
            let size = file.metadata()?.len();
            let n = u64::from(len.min(MAX_ARTIFACT_READ)).min(size.saturating_sub(offset)) as usize;
            let mut bytes = vec![0; n];
            file.read_exact_at(&mut bytes, offset)?;
            Ok(bytes)
        });
        Ok(read.map_err(|e| format!("reading artifact `{name}`: {e}")))
    }
}

/// Largest chunk `next-bytes` hands out, whatever the guest asks for.
const MAX_CHUNK: u32 = 16 << 20;
/// Most rows `next-batch` hands out at once.
const MAX_BATCH_ROWS: u32 = 1 << 16;

impl input::Host for HostState {
    fn format(&mut self) -> WasmResult<String> {
        Ok(self.reader()?.partition().format.name().to_string())
    }

    fn next_bytes(&mut self, max_bytes: u32) -> WasmResult<Option<Vec<u8>>> {
        let max = max_bytes.clamp(1, MAX_CHUNK) as usize;
        Ok(self.reader()?.next_bytes(max).map_err(|e| HostTrap::Node(e.into()))?)
    }

    fn next_batch(&mut self, max_rows: u32) -> WasmResult<Option<Batch>> {
        let max = max_rows.clamp(1, MAX_BATCH_ROWS) as usize;
        match self.reader()?.next_batch(max).map_err(|e| HostTrap::Node(e.into()))? {
            Some(b) => Ok(Some(convert::to_wit(&b).map_err(HostTrap::Node)?)),
            None => Ok(None),
        }
    }
}

impl output::Host for HostState {
    fn emit(&mut self, row: Vec<u8>) -> WasmResult<()> {
        self.charge_output(row.len() as u64)?;
        self.writer()?.write_record(&row).map_err(|e| HostTrap::Node(e.into()))?;
        Ok(())
    }

    fn emit_batch(&mut self, rows: Batch) -> WasmResult<()> {
        self.charge_output(convert::wit_size(&rows))?;
        let batch = convert::from_wit(rows).map_err(HostTrap::Node)?;
        self.writer()?.write_batch(&batch).map_err(|e| HostTrap::Node(e.into()))?;
        Ok(())
    }

    fn emit_pair(&mut self, key: Vec<u8>, value: Vec<u8>) -> WasmResult<()> {
        self.charge_output((key.len() + value.len() + 16) as u64)?;
        self.pairs.push(&key, &value);
        Ok(())
    }

    fn emit_pairs(
        &mut self,
        keys: Vec<u8>,
        key_ends: Vec<u32>,
        values: Vec<u8>,
        value_ends: Vec<u32>,
    ) -> WasmResult<()> {
        self.charge_output((keys.len() + values.len() + 16 * key_ends.len()) as u64)?;
        self.pairs
            .extend_packed(&keys, &key_ends, &values, &value_ends)
            .map_err(|reason| HostTrap::Node(crate::Error::bad_output(format!("emit-pairs: {reason}"))))?;
        Ok(())
    }
}
