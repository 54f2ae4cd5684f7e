//! The wasmgrid control plane: the grid's replicated source of truth.
//!
//! It will hold content-addressed modules, function versions, tenants, the
//! node registry and batch jobs, replicated with raft-rs over sled. Until it
//! lands, functions run on one machine with `wasmgrid run` (see
//! `wasmgrid-node`).
