//! A wasmgrid node: the glue that makes one process a member of the grid.
//!
//! - [`agent`]: registers with the control plane, sends heartbeats, watches
//!   the route table and serves it on the gateway (`wasmgrid-gateway`);
//! - [`worker`]: leases batch tasks and runs them (`wasmgrid-jobs`),
//!   reporting their outcomes;
//! - [`modules`]: function versions fetched, compiled and initialised
//!   (`wasmgrid-runtime`) for both.

// wgpu's types are deep: proving `Send`/`Sync` for the host state that
// holds device buffers needs more than the default 128 levels.
#![recursion_limit = "256"]

pub mod agent;
pub mod modules;
mod triggers;
pub mod worker;
