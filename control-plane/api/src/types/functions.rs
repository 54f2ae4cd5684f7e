//! Modules, functions and their versions, and per-request calls.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A stored module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Its sha256, hex: the name to deploy it by.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The world it implements: `scorer`, `mapper` or `reducer`.
    pub kind: String,
    /// Whether it was stored before this upload.
    pub existed: bool,
}

/// Where a function may run, by whether a node has a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuPlacement {
    /// Anywhere (`gpu` calls use whatever the node has).
    #[default]
    Any,
    /// Anywhere, GPU nodes first.
    Preferred,
    /// Only on nodes with a GPU.
    Required,
}

impl GpuPlacement {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            GpuPlacement::Any => "any",
            GpuPlacement::Preferred => "preferred",
            GpuPlacement::Required => "required",
        }
    }

    fn is_any(&self) -> bool {
        *self == GpuPlacement::Any
    }
}

/// `POST /v1/functions/{name}/versions`: a new version of a function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The sha256 of an uploaded module.
    pub module: String,
    /// Memory limit per instance, in bytes (default 64 MiB).
    #[serde(default)]
    pub memory: Option<u64>,
    /// Time limit per call, in milliseconds (default 1000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Config values the function sees.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Whether it needs a node with a GPU.
    #[serde(default)]
    pub gpu: GpuPlacement,
    /// Whether the gateways serve it without a token.
    #[serde(default)]
    pub public: bool,
}

/// `POST /v1/functions/{name}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to serve.
    pub version: u64,
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Numbered from 1.
    pub version: u64,
    /// The sha256 of its module.
    pub module: String,
    /// Its world.
    pub kind: String,
    /// Memory limit per instance, in bytes.
    pub memory: u64,
    /// Time limit per call, in milliseconds.
    pub timeout_ms: u64,
    /// Config values.
    pub config: BTreeMap<String, String>,
    /// Whether it needs a node with a GPU.
    #[serde(default, skip_serializing_if = "GpuPlacement::is_any")]
    pub gpu: GpuPlacement,
    /// Whether the gateways serve it without a token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// The control plane's log index that created it.
    pub created_at: u64,
}

/// A function with all its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// The version that serves.
    pub active: u64,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// A function in a listing, and the answer to a deploy or rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSummary {
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// The version that serves.
    pub active: u64,
    /// How many versions it has.
    pub versions: u64,
    /// The active version's world.
    pub kind: String,
    /// The active version's module.
    pub module: String,
}

/// `GET /v1/functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionList {
    /// Sorted by tenant, then name.
    pub functions: Vec<FunctionSummary>,
}

/// `POST /v1/fn/{tenant}/{name}` on a node: rows to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// One JSON object per row.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The rows with the scorer's columns added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeResponse {
    /// The function.
    pub function: String,
    /// The version that scored every row.
    pub version: u64,
    /// The input rows plus the score columns.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}
