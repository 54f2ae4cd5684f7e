//! What applying a command can come to: its outcome ([`Applied`]) or its
//! error ([`StateError`]).

use serde::{Deserialize, Serialize};
use wasmgrid_api::JobState;

/// Result with the state machine's [`StateError`].
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Why a command or a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A tenant or function name is not allowed.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A module is larger than [`MAX_MODULE_BYTES`].
    #[error("module is {size} bytes, over the limit of {limit} bytes")]
    ModuleTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A module's bytes do not hash to the sha256 it was stored under.
    #[error("module bytes hash to {actual}, not {expected}")]
    ChecksumMismatch {
        /// The sha256 claimed.
        expected: String,
        /// The sha256 of the bytes.
        actual: String,
    },
    /// A deploy names a module that was never stored.
    #[error("no module with sha256 {sha256}; upload it first")]
    ModuleNotFound {
        /// The sha256 named.
        sha256: String,
    },
    /// A deploy names an artifact the tenant never uploaded.
    #[error("no artifact with sha256 {sha256}; upload it first")]
    ArtifactNotFound {
        /// The sha256 named.
        sha256: String,
    },
    /// No such job.
    #[error("job `{id}` not found")]
    JobNotFound {
        /// The id.
        id: String,
    },
    /// No such function.
    #[error("function `{tenant}/{name}` not found")]
    FunctionNotFound {
        /// Its tenant.
        tenant: String,
        /// Its name.
        name: String,
    },
    /// The function has no such version.
    #[error("function `{tenant}/{name}` has no version {version}")]
    VersionNotFound {
        /// Its tenant.
        tenant: String,
        /// Its name.
        name: String,
        /// The version asked for.
        version: u64,
    },
    /// No such tenant.
    #[error("tenant `{name}` not found")]
    TenantNotFound {
        /// The name.
        name: String,
    },
    /// A tenant by that name exists.
    #[error("tenant `{name}` already exists")]
    TenantExists {
        /// The name.
        name: String,
    },
    /// The default tenant cannot be removed.
    #[error("the `default` tenant cannot be removed")]
    DefaultTenant,
    /// No such token.
    #[error("token `{id}` not found")]
    TokenNotFound {
        /// The token's id.
        id: String,
    },
    /// No such trigger.
    #[error("trigger `{name}` not found")]
    TriggerNotFound {
        /// The name.
        name: String,
    },
    /// The command does not fit the state (a candidate that is the
    /// active version, a bad trial).
    #[error("{0}")]
    Conflict(String),
    /// The storage failed.
    #[error("storage: {0}")]
    Storage(String),
}

impl From<sled::Error> for StateError {
    fn from(e: sled::Error) -> Self {
        StateError::Storage(crate::log::describe_sled(&e))
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The module is stored; `existed` if it already was.
    ModuleStored {
        /// Its sha256.
        sha256: String,
        /// Whether it was stored before.
        existed: bool,
    },
    /// The artifact is recorded; `existed` if the tenant had it already.
    ArtifactStored {
        /// Its sha256.
        sha256: String,
        /// Whether the tenant had stored it before.
        existed: bool,
    },
    /// A new version was created and is active.
    Deployed {
        /// The new version.
        version: u64,
    },
    /// The version is active.
    RolledBack {
        /// The active version.
        version: u64,
    },
    /// The function's trial was set or ended.
    TrialSet,
    /// A trigger was created, paused or resumed.
    TriggerSet,
    /// The function is gone.
    Deleted,
    /// The node is in the registry.
    NodeRegistered,
    /// Functions were placed.
    Placed,
    /// A job was created.
    JobSubmitted {
        /// Its id.
        id: String,
    },
    /// Task events were recorded; `won[i]` when event `i` won its task.
    TasksRecorded {
        /// Per event.
        won: Vec<bool>,
    },
    /// The job is in this state.
    JobState {
        /// Its state.
        state: JobState,
    },
    /// A tenant was added.
    TenantCreated,
    /// A tenant and what it owned are gone.
    TenantDeleted,
    /// A token was stored.
    TokenCreated,
    /// A token was revoked.
    TokenRevoked,
    /// The index was applied before; nothing changed.
    AlreadyApplied,
}
