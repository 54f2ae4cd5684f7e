//! Function versions made ready on a node: a module fetched by sha256 from
//! the control plane (kept under `DATA/modules`, verified against its
//! hash), compiled, and initialised with the version's config. The route
//! watcher and the batch worker both prepare versions here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmgrid_api::Client;
use wasmgrid_runtime::{Function, Limits, Runtime};

/// What, besides its module, makes a function version: its `init` runs with these.
#[derive(Debug)]
pub struct Version {
    /// The version's config.
    pub config: Arc<BTreeMap<String, String>>,
    /// The limits its `init` runs under.
    pub limits: Limits,
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
) -> Result<Arc<Function>, PrepareError> {
    if let Some(function) = runtime.loaded_version(module, &version.config) {
        return Ok(function);
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
            static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
            std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|source| PrepareError::Keep { path: path.clone(), source })?;
            bytes
        }
    };
    let runtime = runtime.clone();
    Ok(tokio::task::spawn_blocking(move || runtime.load_version(&bytes, &version.config, &version.limits)).await??)
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
    Arc::new(move || {
        if let Some(function) = runtime.loaded_version(&module, &version.config) {
            return Ok(function);
        }
        let bytes = runtime.read_file(&path)?;
        tracing::debug!(module, "loading an evicted version again");
        runtime.load_version(&bytes, &version.config, &version.limits)
    })
}
