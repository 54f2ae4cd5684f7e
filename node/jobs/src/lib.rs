//! Batch jobs: planning a job's input into partitions, running its tasks,
//! and publishing (or discarding) its output.
//!
//! - [`exec`]: the one task executor: a map task (a scorer over every batch
//!   of a partition, or a mapper) and a reduce task, used by both of:
//! - [`local`]: `wasmgrid run`, a whole job on one machine without a grid;
//! - [`task`]: one attempt of a grid task on a node, its output under the
//!   job's work directory;
//! - [`plan()`] and [`commit()`]: what the control plane's leader does with a
//!   job's data, through [`FileJobIo`] (its `JobIo`);
//! - [`segments`]: small attempt outputs appended to a few shared files.
//!
//! Task failures are the runtime's `Error`; planning and publishing fail with
//! [`JobIoError`].

// wgpu's types are deep: proving `Send`/`Sync` for what holds a
// runtime's instances needs more than the default 128 levels.
#![recursion_limit = "256"]

mod commit;
mod error;
pub mod exec;
mod io;
pub mod local;
mod plan;
pub mod segments;
pub mod task;

pub use commit::{abort, commit};
pub use error::JobIoError;
pub use io::FileJobIo;
pub use plan::plan;
