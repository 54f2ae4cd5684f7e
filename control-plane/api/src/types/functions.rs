//! Modules, functions and their versions, and per-request calls.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Trial, TrialSpec};

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

/// A stored artifact: bytes a function reads by name (a model, a lookup
/// table), kept once under their sha256 outside the consensus log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// Its sha256, hex: the name to deploy it by.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the tenant had stored it before this upload.
    #[serde(default)]
    pub existed: bool,
}

/// `GET /v1/artifacts`: the tenant's artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactInfo>,
}

/// `PUT /v1/artifacts/{sha256}/chunks?offset=N`: how many bytes the
/// upload holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReceived {
    pub received: u64,
}

/// `POST /v1/artifacts/{sha256}`: the upload is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitArtifact {
    /// Its size in bytes.
    pub size: u64,
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

/// On how many nodes a function is placed: those load it and answer its
/// calls; every other node's gateway forwards them there. Written as a
/// number or `all`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ReplicasText", into = "ReplicasText")]
pub enum Replicas {
    /// Every node.
    #[default]
    All,
    /// This many nodes (at least 1), or every node where there are fewer.
    Count(u32),
}

/// What a deploy that does not say gets.
pub const DEFAULT_REPLICAS: Replicas = Replicas::Count(2);

impl Replicas {
    /// The nodes wanted out of `available`.
    pub fn of(self, available: usize) -> usize {
        match self {
            Replicas::All => available,
            Replicas::Count(n) => available.min(n as usize),
        }
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replicas::All => f.write_str("all"),
            Replicas::Count(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Replicas {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Replicas::All),
            n => match n.parse::<u32>() {
                Ok(0) | Err(_) => Err(format!("`{s}` is not a number of nodes (1 or more) or `all`")),
                Ok(n) => Ok(Replicas::Count(n)),
            },
        }
    }
}

/// [`Replicas`] as JSON writes it: a number or `"all"`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ReplicasText {
    Count(u32),
    Word(String),
}

impl TryFrom<ReplicasText> for Replicas {
    type Error = String;

    fn try_from(text: ReplicasText) -> Result<Self, String> {
        match text {
            ReplicasText::Count(n) => n.to_string().parse(),
            ReplicasText::Word(w) => w.parse(),
        }
    }
}

impl From<Replicas> for ReplicasText {
    fn from(r: Replicas) -> Self {
        match r {
            Replicas::All => ReplicasText::Word("all".into()),
            Replicas::Count(n) => ReplicasText::Count(n),
        }
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
    /// On how many nodes it is placed (default [`DEFAULT_REPLICAS`]).
    /// Left out when not set, so a control plane of an earlier release
    /// takes the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// Artifacts its calls read (`artifacts` interface), by name: the
    /// sha256 of an uploaded artifact. Left out when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// Runs the new version as a candidate beside the active one (shadow
    /// or canary) instead of making it active. Left out when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<TrialSpec>,
}

/// `POST /v1/functions/{name}/rollback` and `.../promote`.
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
    /// On how many nodes it is placed.
    #[serde(default)]
    pub replicas: Replicas,
    /// The control plane's log index that created it.
    /// Artifacts it reads, by name: their sha256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
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
    /// The candidate running beside the active version, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
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
    /// The nodes it is placed on, by id (empty: not placed yet, every
    /// node loads it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The candidate running beside the active version, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_read_and_write_as_a_number_or_all() {
        assert_eq!("all".parse::<Replicas>(), Ok(Replicas::All));
        assert_eq!("3".parse::<Replicas>(), Ok(Replicas::Count(3)));
        assert!("0".parse::<Replicas>().is_err());
        assert!("some".parse::<Replicas>().is_err());
        let request: DeployRequest = serde_json::from_str(r#"{"module": "m", "replicas": 2}"#).expect("a number");
        assert_eq!(request.replicas, Some(Replicas::Count(2)));
        let request: DeployRequest = serde_json::from_str(r#"{"module": "m", "replicas": "all"}"#).expect("all");
        assert_eq!(request.replicas, Some(Replicas::All));
        assert!(serde_json::from_str::<DeployRequest>(r#"{"module": "m", "replicas": 0}"#).is_err());
        assert_eq!(serde_json::to_string(&Replicas::All).expect("json"), r#""all""#);
        assert_eq!(serde_json::to_string(&Replicas::Count(4)).expect("json"), "4");
        assert_eq!(Replicas::Count(2).of(5), 2);
        assert_eq!(Replicas::Count(2).of(1), 1);
        assert_eq!(Replicas::All.of(5), 5);
    }
}
