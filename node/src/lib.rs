//! A wasmgrid worker: runs guest components on wasmtime over partitioned data.
//!
//! - [`runtime`]: the [`Runtime`] (engine, pooling allocator, epoch ticker,
//!   compiled-component cache) that loads components into [`Function`]s and
//!   runs each invocation in a fresh, limited [`Instance`];
//! - [`data`]: input planning and reading (CSV, JSON lines, Parquet, text)
//!   and output writing;
//! - [`local`]: `wasmgrid run`, a whole job on one machine without a grid;
//! - [`agent`]: a node in the grid: registration, heartbeats, the route
//!   table it watches;
//! - [`gateway`]: the HTTP gateway for per-request calls, with admission
//!   limits and Prometheus metrics;
//! - [`gpu`]: the `gpu` host interface's kernels, on wgpu or the CPU
//!   fallback.

// wgpu's types are deep: proving `Send`/`Sync` for the host state that
// holds device buffers needs more than the default 128 levels.
#![recursion_limit = "256"]

pub mod agent;
pub mod batch;
pub mod bindings;
pub mod data;
pub mod egress;
mod error;
pub mod fair;
pub mod gateway;
pub mod gpu;
pub mod local;
pub mod logs;
pub mod pairs;
pub mod runtime;
pub mod segments;
pub mod store;
pub mod worker;

pub use error::{Error, Result};
pub use runtime::{Function, Instance, Kind, Limits, Runtime, RuntimeConfig};
