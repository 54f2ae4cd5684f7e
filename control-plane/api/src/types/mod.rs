//! Request and response bodies (JSON), by area.

mod access;
mod functions;
mod jobs;
mod nodes;
mod trials;
mod triggers;

use serde::{Deserialize, Serialize};

pub use access::*;
pub use functions::*;
pub use jobs::*;
pub use nodes::*;
pub use trials::*;
pub use triggers::*;

/// Header a replica sets on a request it forwards to the leader, so a
/// request is forwarded at most once.
pub const FORWARDED_HEADER: &str = "x-wasmgrid-forwarded";

/// Names a write: a write whose id the control plane has applied recently
/// is answered as the first one was instead of being applied again, so a
/// retry after a lost answer is safe. Followers set one on every write they
/// forward; clients may set their own (1 to 64 of `A-Z a-z 0-9 . _ -`).
pub const REQUEST_ID_HEADER: &str = "wasmgrid-request-id";

/// Header a node's gateway sets to the version that answered.
pub const VERSION_HEADER: &str = "x-wasmgrid-version";

/// Every error body: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `not_found`, `conflict`,
    /// `too_large`, `no_quorum`, `internal`, or a runtime error kind.
    pub code: String,
    /// For people.
    pub message: String,
}
