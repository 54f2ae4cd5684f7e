//! The wasmgrid control plane: the grid's replicated source of truth.
//!
//! [`state::State`] is the deterministic state machine every replica applies
//! committed [`state::Command`]s to: content-addressed modules, functions
//! with numbered immutable versions and an active version, per tenant. It
//! persists to sled and records the index of the last command applied in the
//! same transaction as the change, so a command is applied exactly once
//! across restarts. [`log::LogStore`] is the Raft log and hard state over
//! sled, implementing raft-rs's `Storage` with the writes a Ready loop makes
//! (append with suffix truncation, hard state, compaction, snapshots).
//! [`replica::Replica`] drives raft-rs over them; [`codec`] versions what
//! the log and snapshots hold; [`transport`] carries Raft
//! messages between replicas over HTTP/2; [`server`] is the `/v1` HTTP API,
//! by area, with the leader's job scheduler. Batch jobs' records are in
//! [`state::jobs`]; their data is reached through `wasmgrid_api::JobIo`.

pub mod blobs;
pub mod codec;
pub mod log;
pub mod module;
pub mod replica;
pub mod server;
pub mod state;
pub mod transport;

pub use state::{Command, State, StateError};
