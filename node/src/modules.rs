//! Function versions made ready on a node: a module fetched by sha256 from
//! the control plane (kept under `DATA/modules`, verified against its
//! hash), its artifacts likewise (streamed to disk, never whole in
//! memory), compiled, and initialised with the version's config and
//! artifacts. The route watcher and the batch worker both prepare versions
//! here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmgrid_api::Client;
use wasmgrid_runtime::{Artifact, Artifacts, Function, Limits, Runtime};

/// What, besides its module, makes a function version: its `init` runs with these.
#[derive(Debug)]
pub struct Version {
    /// The version's config.
    pub config: Arc<BTreeMap<String, String>>,
    /// Its artifacts, by name: their sha256.
    pub artifacts: BTreeMap<String, String>,
    /// The limits its `init` runs under.
    pub limits: Limits,
}

/// Where artifact `sha256` is kept on this node.
fn artifact_path(modules_dir: &Path, sha256: &str) -> std::path::PathBuf {
    modules_dir.join(format!("{sha256}.artifact"))
}

/// `artifacts` as this node has them, if it has every one.
pub fn local_artifacts(modules_dir: &Path, artifacts: &BTreeMap<String, String>) -> Option<Artifacts> {
    let mut out = BTreeMap::new();
    for (name, sha256) in artifacts {
        let path = artifact_path(modules_dir, sha256);
        if !path.exists() {
            return None;
        }
        out.insert(name.clone(), Artifact { sha256: sha256.clone(), path });
    }
    Some(Arc::new(out))
}

/// `artifacts`, each fetched from the control plane unless this node has
/// it: streamed to a file of its own while it is hashed, and renamed into
/// place only when the hash is the one asked for.
pub async fn fetch_artifacts(
    client: &Client,
    modules_dir: &Path,
    artifacts: &BTreeMap<String, String>,
) -> Result<Artifacts, PrepareError> {
    for sha256 in artifacts.values() {
        let path = artifact_path(modules_dir, sha256);
        if path.exists() {
            continue;
        }
        let keep = |source| PrepareError::Keep { path: path.clone(), source };
        let response = client.artifact(sha256).await.map_err(PrepareError::Fetch)?;
        let tmp = path.with_extension(format!("{}.{}.tmp", std::process::id(), fetch_number()));
        let limit = wasmgrid_api::MAX_ARTIFACT_BYTES;
        let downloaded = wasmgrid_api::download(response, &tmp, limit).await;
        match downloaded {
            Ok((actual, _)) if actual == *sha256 => {}
            Ok((actual, _)) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(PrepareError::Mismatch { module: format!("artifact {sha256}"), actual });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(keep(e));
            }
        }
        std::fs::rename(&tmp, &path).map_err(keep)?;
        tracing::info!(artifact = %sha256, "artifact fetched");
    }
    Ok(local_artifacts(modules_dir, artifacts).unwrap_or_default())
}

/// A number no other fetch of this process has: concurrent fetches of one
/// file each write their own copy and rename it into place.
fn fetch_number() -> u64 {
    static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why a version could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The module could not be fetched from the control plane.
    #[error("fetching module: {0}")]
    Fetch(wasmgrid_api::ApiError),
    /// The module could not be kept on this node's disk.
    #[error("keeping the module in {path}: {source}")]
    Keep {
        /// Where it was to be kept.
        path: std::path::PathBuf,
        /// Why it was not.
        source: std::io::Error,
    },
    /// The bytes fetched are not the module asked for.
    #[error("module fetched for {module} hashes to {actual}; refusing it")]
    Mismatch {
        /// The module asked for.
        module: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The compile task stopped.
    #[error("compile task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The module does not load, or its `init` failed.
    #[error(transparent)]
    Load(#[from] wasmgrid_runtime::Error),
}

impl PrepareError {
    /// Whether a later try may succeed (fetching or keeping the module);
    /// a module that does not compile would only burn CPU again.
    pub fn may_pass(&self) -> bool {
        matches!(self, PrepareError::Fetch(_) | PrepareError::Keep { .. })
    }
}

/// A function version: its module, fetched (and verified) if this node
/// lacks it, compiled, and initialised with the version's config.
pub async fn prepare(
    runtime: &Arc<Runtime>,
    client: &Client,
    modules_dir: &Path,
    module: &str,
    version: Version,
) -> Result<(Arc<Function>, Artifacts), PrepareError> {
    let artifacts = fetch_artifacts(client, modules_dir, &version.artifacts).await?;
    if let Some(function) = runtime.loaded_version_with(module, &version.config, &artifacts) {
        return Ok((function, artifacts));
    }
    let path = modules_dir.join(format!("{module}.wasm"));
    let bytes = match std::fs::read(&path) {
        Ok(bytes) if hex::encode(Sha256::digest(&bytes)) == module => bytes,
        _ => {
            let bytes = client.module(module).await.map_err(PrepareError::Fetch)?;
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual != module {
                return Err(PrepareError::Mismatch { module: module.to_string(), actual });
            }
            // A name of its own: the route watcher and a task may fetch the
            // same module at once, and each renames its own copy into place.
            let tmp = path.with_extension(format!("{}.{}.tmp", std::process::id(), fetch_number()));
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|source| PrepareError::Keep { path: path.clone(), source })?;
            bytes
        }
    };
    let (runtime, loaded) = (runtime.clone(), artifacts.clone());
    let function = tokio::task::spawn_blocking(move || {
        runtime.load_version_with(&bytes, &version.config, &loaded, &version.limits)
    })
    .await??;
    Ok((function, artifacts))
}

/// Loads a version this node prepared before (its module kept under
/// `modules_dir`) again: what the gateway calls when the code cache
/// evicted it. Its `init` image comes from the compiled cache.
pub fn reloader(
    runtime: &Arc<Runtime>,
    modules_dir: &Path,
    module: &str,
    version: Version,
) -> wasmgrid_gateway::Reload {
    let (runtime, path, module) = (runtime.clone(), modules_dir.join(format!("{module}.wasm")), module.to_string());
    let artifacts = local_artifacts(modules_dir, &version.artifacts).unwrap_or_default();
    Arc::new(move || {
        if let Some(function) = runtime.loaded_version_with(&module, &version.config, &artifacts) {
            return Ok(function);
        }
        let bytes = runtime.read_file(&path)?;
        tracing::debug!(module, "loading an evicted version again");
        runtime.load_version_with(&bytes, &version.config, &artifacts, &version.limits)
    })
}
