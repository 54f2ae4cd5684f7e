//! Modules and functions: upload and download, deploy, list, show, roll
//! back and delete. Trials (shadow, canary, promote, diff) are in
//! [`super::trials`].

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State as Shared};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use wasmgrid_api::*;

use super::answer::*;
use super::*;

pub(super) async fn upload_module(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Response> {
    let bytes = body.map_err(|r| rejected(r.status(), r.body_text()))?;
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(StateError::ModuleTooLarge { size: bytes.len(), limit: MAX_MODULE_BYTES }.into());
    }
    let kind = crate::module::inspect(&bytes).map_err(|e| Failure::bad(e.0))?;
    crate::module::check_pool_limits(&bytes)
        .map_err(|e| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "over_limits", e.to_string()))?;
    let sha256 = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let state = app.0.replica.state();
    if let Some(limit) = app.quotas(&caller.tenant)?.module_bytes
        && !state.owns_module(&caller.tenant, &sha256)?
    {
        let stored = state.module_bytes(&caller.tenant)?;
        if stored + size > limit {
            let message = format!("storing this {size}-byte module would make {} bytes of modules", stored + size);
            return Err(quota(&caller.tenant, "module_bytes", limit, message));
        }
    }
    let command = Command::PutModule { tenant: caller.tenant, sha256: sha256.clone(), bytes: bytes.to_vec() };
    let applied = app.propose(command).await?;
    app.0.kinds.lock().map_err(poisoned)?.insert(sha256.clone(), kind);
    let existed = matches!(applied, Applied::ModuleStored { existed: true, .. });
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok(json(status, &ModuleInfo { sha256, size, kind: kind.into(), existed }))
}

pub(super) async fn download_module(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    sha256: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let Path(sha256) = sha256.map_err(|r| Failure::bad(r.body_text()))?;
    if !is_sha256(&sha256) {
        return Err(Failure::bad(format!("`{sha256}` is not a sha256 (64 lowercase hex digits)")));
    }
    // A tenant reads back only its own uploads; nodes and the admin read any.
    if matches!(caller.role, Role::Full | Role::ReadOnly) {
        app.barrier().await?;
        if !app.0.replica.state().owns_module(&caller.tenant, &sha256)? {
            return Err(StateError::ModuleNotFound { sha256 }.into());
        }
    }
    let bytes = app.module(&sha256).await?;
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/wasm"));
    Ok(response)
}

pub(super) fn version_info(v: &Version) -> VersionInfo {
    VersionInfo {
        version: v.version,
        module: v.module.clone(),
        kind: v.spec.kind.clone(),
        memory: v.spec.memory,
        timeout_ms: v.spec.timeout_ms,
        config: v.spec.config.clone(),
        gpu: v.spec.gpu,
        public: v.spec.public,
        replicas: v.spec.replicas,
        artifacts: v.spec.artifacts.clone(),
        created_at: v.created_at,
    }
}

pub(super) fn summary(f: &Function) -> FunctionSummary {
    let active = f.active_version();
    FunctionSummary {
        tenant: f.tenant.clone(),
        name: f.name.clone(),
        active: f.active,
        versions: f.latest,
        kind: active.map(|v| v.spec.kind.clone()).unwrap_or_default(),
        module: active.map(|v| v.module.clone()).unwrap_or_default(),
        nodes: f.placement.clone(),
        trial: f.trial.clone(),
    }
}

/// An artifact's name: what a guest asks for (`artifacts::read("model")`).
fn check_artifact_name(name: &str) -> Answer<()> {
    let valid =
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(Failure::bad(format!("`{name}` is not an artifact name: 1 to 64 of A-Z a-z 0-9 . _ -")));
    }
    Ok(())
}

/// 64 lowercase hex digits, as sha256 names are written.
pub(super) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn check_spec(request: &DeployRequest) -> Answer<()> {
    let module = &request.module;
    if !is_sha256(module) {
        return Err(Failure::bad(format!("`module` must be a sha256 (64 lowercase hex digits), not `{module}`")));
    }
    if let Some(memory) = request.memory
        && !(1 << 20..=MAX_MEMORY).contains(&memory)
    {
        return Err(Failure::bad(format!("`memory` must be between 1 MiB and 4 GiB, not {memory} bytes")));
    }
    if let Some(timeout) = request.timeout_ms
        && !(1..=MAX_TIMEOUT_MS).contains(&timeout)
    {
        return Err(Failure::bad(format!("`timeout_ms` must be between 1 and {MAX_TIMEOUT_MS}, not {timeout}")));
    }
    let size: usize = request.config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_CONFIG_BYTES {
        return Err(Failure::bad(format!("config is {size} bytes, over the limit of {MAX_CONFIG_BYTES}")));
    }
    if let Some(key) = request.config.keys().find(|k| k.is_empty() || k.len() > 256) {
        return Err(Failure::bad(format!("config key `{key}` must be 1 to 256 bytes")));
    }
    Ok(())
}

pub(super) async fn deploy(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<DeployRequest>, JsonRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let request = json_body(body)?;
    check_spec(&request)?;
    let tenant = caller.tenant;
    app.barrier().await?;
    if !app.0.replica.state().owns_module(&tenant, &request.module)? {
        return Err(StateError::ModuleNotFound { sha256: request.module }.into());
    }
    for (name, sha256) in &request.artifacts {
        check_artifact_name(name)?;
        if !is_sha256(sha256) || !app.0.replica.state().owns_artifact(&tenant, sha256)? {
            return Err(Failure::not_found(format!(
                "artifact `{name}`: no artifact with sha256 {sha256}; upload it first"
            )));
        }
    }
    if let Some(trial) = &request.trial {
        trial.check().map_err(Failure::bad)?;
        if app.0.replica.state().function(&tenant, &name)?.is_none() {
            let mode = trial.mode.name();
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "function `{name}` has no active version for a {mode} to run beside; deploy it without --{mode} first"
                ),
            ));
        }
        app.require_trials().await?;
    }
    let kind = app.kind_of(&request.module).await?;
    if request.trial.is_some() {
        trials::trialled(kind, "this module")?;
    }
    if request.gpu == GpuPlacement::Required {
        app.require_gpu_node(&name)?;
    }
    let state = app.0.replica.state();
    if let Some(current) = state.function(&tenant, &name)?.as_ref().and_then(|f| f.active_version().cloned())
        && current.spec.kind != kind
    {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "function `{name}` is {}, and this module is {}; remove the function first to change its kind",
                a(&current.spec.kind),
                a(kind)
            ),
        ));
    }
    let quotas = app.quotas(&tenant)?;
    let memory = request.memory.unwrap_or(DEFAULT_MEMORY);
    if let Some(limit) = quotas.memory
        && memory > limit
    {
        return Err(quota(&tenant, "memory", limit, format!("a memory limit of {memory} bytes")));
    }
    if let Some(limit) = quotas.functions
        && state.function(&tenant, &name)?.is_none()
    {
        let count = state.functions(&tenant)?.len() as u64;
        if count >= limit {
            return Err(quota(&tenant, "functions", limit, format!("a new function besides its {count}")));
        }
    }
    // `init` reads the artifacts from this replica's store (the leader
    // committed them; one elected since may still be copying them, and
    // then the nodes are the first to run `init`).
    let local: Option<BTreeMap<String, (String, PathBuf)>> = request
        .artifacts
        .iter()
        .map(|(name, sha256)| {
            app.0.blobs.size(sha256).map(|_| (name.clone(), (sha256.clone(), app.0.blobs.path(sha256))))
        })
        .collect();
    if let (Some(check), Some(artifacts)) = (app.0.init_check.clone(), local) {
        let bytes = app.module(&request.module).await?;
        let config = request.config.clone();
        let checked = tokio::task::spawn_blocking(move || check.check(&bytes, &config, &artifacts, memory)).await;
        checked
            .map_err(|e| Failure::internal(format!("the init check stopped: {e}")))?
            .map_err(|e| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "init_failed", e.to_string()))?;
    }
    // While a replica of a release before placement remains, versions run
    // on every node, as that replica records them.
    let placing = app.replicas_on_this_release().await;
    if !placing && request.replicas.is_some() {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "upgrade_in_progress",
            "`replicas` needs every control-plane replica on a release that places functions; finish the upgrade first",
        ));
    }
    let spec = FunctionSpec {
        kind: kind.into(),
        memory,
        timeout_ms: request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        config: request.config,
        gpu: request.gpu,
        public: request.public,
        replicas: if placing { request.replicas.unwrap_or(DEFAULT_REPLICAS) } else { Replicas::All },
        artifacts: request.artifacts.clone(),
    };
    let placement = match placing {
        true => Some(app.placement_for(&tenant, &name, &spec).await?),
        false => None,
    };
    let module = request.module.clone();
    let trial = request.trial;
    let command = Command::Deploy { tenant: tenant.clone(), name: name.clone(), module, spec, placement, trial };
    let applied = app.propose(command).await;
    app.placed(&tenant, &name);
    let Applied::Deployed { version } = applied? else {
        return Err(Failure::internal("the deploy applied as something else"));
    };
    let summary = match state.function(&tenant, &name)? {
        Some(f) => summary(&f),
        None => FunctionSummary {
            tenant,
            name,
            active: version,
            versions: version,
            kind: kind.into(),
            module: request.module,
            nodes: Vec::new(),
            trial: None,
        },
    };
    Ok(json(StatusCode::CREATED, &summary))
}

pub(super) async fn list_functions(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    app.barrier().await?;
    let functions = app.0.replica.state().functions(&caller.tenant)?;
    Ok(json(StatusCode::OK, &FunctionList { functions: functions.iter().map(summary).collect() }))
}

pub(super) async fn show_function(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    app.barrier().await?;
    let f = app.function(&caller.tenant, name)?;
    let info = FunctionInfo {
        tenant: f.tenant.clone(),
        name: f.name.clone(),
        active: f.active,
        versions: app.0.replica.state().versions(&f.tenant, &f.name)?.iter().map(version_info).collect(),
        trial: f.trial.clone(),
    };
    Ok(json(StatusCode::OK, &info))
}

pub(super) async fn rollback(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<RollbackRequest>, JsonRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let request = json_body(body)?;
    let tenant = caller.tenant;
    app.propose(Command::Rollback { tenant: tenant.clone(), name: name.clone(), version: request.version }).await?;
    Ok(json(StatusCode::OK, &summary(&app.function(&tenant, name)?)))
}

pub(super) async fn delete_function(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let tenant = caller.tenant;
    let before = app.0.replica.state().function(&tenant, &name)?;
    app.propose(Command::Delete { tenant: tenant.clone(), name: name.clone() }).await?;
    let gone = before.map(|f| summary(&f)).unwrap_or(FunctionSummary {
        tenant,
        name,
        active: 0,
        versions: 0,
        kind: String::new(),
        module: String::new(),
        nodes: Vec::new(),
        trial: None,
    });
    Ok(json(StatusCode::OK, &gone))
}
