//! Tenants, tokens, roles and quotas.

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, for every tenant: the token made at bootstrap.
    Admin,
    /// What a node needs: routes, modules, heartbeats and batch tasks.
    Node,
    /// Everything on its tenant's functions and jobs, calls included.
    Full,
    /// Reads of its tenant's functions and jobs.
    ReadOnly,
    /// Calls to its tenant's functions on the gateways, nothing else.
    InvokeOnly,
}

impl Role {
    /// Its name, as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Node => "node",
            Role::Full => "full",
            Role::ReadOnly => "read-only",
            Role::InvokeOnly => "invoke-only",
        }
    }

    /// Whether it may call functions on a gateway.
    pub fn may_invoke(self) -> bool {
        matches!(self, Role::Admin | Role::Full | Role::InvokeOnly)
    }

    /// Whether it may read its tenant's logs on a gateway.
    pub fn may_read_logs(self) -> bool {
        matches!(self, Role::Admin | Role::Full | Role::ReadOnly)
    }
}

/// A token as a node's gateway checks it: its hash and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The sha256 of the token, hex.
    pub sha256: String,
    /// Its tenant; `None` for admin and node tokens.
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
}

/// What a tenant may use; `None` is no limit. (Every field is always
/// written: the consensus log's encoding is not self-describing.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Functions it may have.
    #[serde(default)]
    pub functions: Option<u64>,
    /// Bytes of modules it may store (the modules it uploaded).
    #[serde(default)]
    pub module_bytes: Option<u64>,
    /// Memory limit a function of it may have, per instance.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Calls of its functions running at once on one node.
    #[serde(default)]
    pub concurrency: Option<u64>,
    /// Batch task attempts of its jobs running at once on the grid.
    #[serde(default)]
    pub task_slots: Option<u64>,
    /// Milliseconds its calls and jobs may spend in `gpu` kernels, in all.
    #[serde(default)]
    pub gpu_ms: Option<u64>,
}

impl Quotas {
    /// What a new tenant gets unless told otherwise: 100 functions, 1 GiB
    /// of modules, 1 GiB per instance; calls and task slots shared fairly.
    pub fn tenant_defaults() -> Quotas {
        Quotas { functions: Some(100), module_bytes: Some(1 << 30), memory: Some(1 << 30), ..Quotas::default() }
    }

    /// These quotas with every limit `other` sets replaced.
    pub fn merged(&self, other: &Quotas) -> Quotas {
        Quotas {
            functions: other.functions.or(self.functions),
            module_bytes: other.module_bytes.or(self.module_bytes),
            memory: other.memory.or(self.memory),
            concurrency: other.concurrency.or(self.concurrency),
            task_slots: other.task_slots.or(self.task_slots),
            gpu_ms: other.gpu_ms.or(self.gpu_ms),
        }
    }
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    /// The tenant's name (like a function name).
    pub name: String,
    /// Its quotas, over [`Quotas::tenant_defaults`].
    #[serde(default)]
    pub quotas: Quotas,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    /// Its name.
    pub name: String,
    /// The control plane's log index that created it (0 for `default`).
    pub created_at: u64,
    /// What it may use.
    #[serde(default)]
    pub quotas: Quotas,
}

/// `GET /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantList {
    /// By name.
    pub tenants: Vec<TenantInfo>,
}

/// `POST /v1/tokens`: a new token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The tenant it acts for; none for a node token.
    #[serde(default)]
    pub tenant: Option<String>,
    /// What it may do (`full`, `read-only`, `invoke-only` or `node`).
    pub role: Role,
}

/// A token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Names it for `revoke` (not a secret).
    pub id: String,
    /// The tenant it acts for.
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// The control plane's log index that created it.
    pub created_at: u64,
}

/// The answer to `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// The secret, for `Authorization: Bearer`.
    pub token: String,
    /// What it is.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    /// By tenant, then id.
    pub tokens: Vec<TokenInfo>,
}

/// `GET /v1/whoami`: who the caller's token says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The tenant its requests act on.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
    /// The token's id (`admin` for the bootstrap token).
    pub token: String,
}
