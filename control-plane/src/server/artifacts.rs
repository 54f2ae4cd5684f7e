//! Artifacts: upload in chunks, commit, list, download; and each replica
//! copying the artifacts it lacks from its peers.
//!
//! An upload's chunks go to the leader (as every write does), which appends
//! them to a staging file ([`crate::blobs`]); the commit checks the bytes'
//! hash and size, moves them into the leader's blob store and records the
//! artifact in the log. Every replica watches the artifacts the state
//! records and copies those it lacks from a peer that has them, streamed
//! to disk and verified, so the bytes are on every replica without passing
//! through the log or through memory.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State as Shared};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use wasmgrid_api::*;

use super::answer::*;
use super::functions::is_sha256;
use super::*;
use crate::blobs::{BlobError, MAX_CHUNK_BYTES};

fn sha256_of(path: Result<Path<String>, PathRejection>) -> Answer<String> {
    let Path(sha256) = path.map_err(|r| Failure::bad(r.body_text()))?;
    if !is_sha256(&sha256) {
        return Err(Failure::bad(format!("`{sha256}` is not a sha256 (64 lowercase hex digits)")));
    }
    Ok(sha256)
}

fn blob_failure(e: BlobError) -> Failure {
    match e {
        BlobError::Gap { .. } => Failure::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        BlobError::TooLarge { .. } => Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        BlobError::Mismatch { .. } | BlobError::NoUpload(_) => Failure::bad(e.to_string()),
        BlobError::Io { .. } => Failure::internal(e.to_string()),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct Offset {
    offset: u64,
}

/// `PUT /v1/artifacts/{sha256}/chunks?offset=N`: appends a chunk.
pub(super) async fn put_chunk(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    sha256: Result<Path<String>, PathRejection>,
    offset: Result<Query<Offset>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Response> {
    let sha256 = sha256_of(sha256)?;
    let Query(Offset { offset }) = offset.map_err(|r| Failure::bad(r.body_text()))?;
    let bytes = body.map_err(|r| rejected(r.status(), r.body_text()))?;
    if bytes.len() > MAX_CHUNK_BYTES {
        let message = format!("a chunk is at most {MAX_CHUNK_BYTES} bytes, not {}", bytes.len());
        return Err(Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message));
    }
    let blobs = app.0.blobs.clone();
    let received = tokio::task::spawn_blocking(move || blobs.put_chunk(&sha256, &caller.tenant, offset, &bytes))
        .await
        .map_err(|e| Failure::internal(format!("writing the chunk stopped: {e}")))?
        .map_err(blob_failure)?;
    Ok(json(StatusCode::OK, &ChunkReceived { received }))
}

/// `POST /v1/artifacts/{sha256}` `{"size"}`: completes an upload.
pub(super) async fn commit(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    sha256: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<CommitArtifact>, JsonRejection>,
) -> Answer<Response> {
    let sha256 = sha256_of(sha256)?;
    let CommitArtifact { size } = json_body(body)?;
    if !app.replicas_on_this_release().await {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "upgrade_in_progress",
            "artifacts need every control-plane replica on a release that stores them; finish the upgrade first",
        ));
    }
    app.barrier().await?;
    let state = app.0.replica.state();
    if let Some(limit) = app.quotas(&caller.tenant)?.module_bytes
        && !state.owns_artifact(&caller.tenant, &sha256)?
    {
        let stored = state.module_bytes(&caller.tenant)?;
        if stored + size > limit {
            let message = format!(
                "storing this {size}-byte artifact would make {} bytes of modules and artifacts",
                stored + size
            );
            return Err(quota(&caller.tenant, "module_bytes", limit, message));
        }
    }
    let owns = state.owns_artifact(&caller.tenant, &sha256)?;
    let (blobs, tenant, name) = (app.0.blobs.clone(), caller.tenant.clone(), sha256.clone());
    tokio::task::spawn_blocking(move || blobs.commit(&name, &tenant, size, owns))
        .await
        .map_err(|e| Failure::internal(format!("storing the artifact stopped: {e}")))?
        .map_err(blob_failure)?;
    let command = Command::PutArtifact { tenant: caller.tenant, sha256: sha256.clone(), size };
    let existed = matches!(app.propose(command).await?, Applied::ArtifactStored { existed: true, .. });
    app.0.blobs_changed.notify_waiters();
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok(json(status, &ArtifactInfo { sha256, size, existed }))
}

/// `GET /v1/artifacts`: the tenant's artifacts.
pub(super) async fn list(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    app.barrier().await?;
    let artifacts = app.0.replica.state().artifacts(Some(&caller.tenant))?;
    let artifacts = artifacts.into_iter().map(|(sha256, size)| ArtifactInfo { sha256, size, existed: true }).collect();
    Ok(json(StatusCode::OK, &ArtifactList { artifacts }))
}

/// `GET /v1/artifacts/{sha256}`: the bytes, streamed from this replica's
/// store. A tenant reads its own uploads; nodes and the admin read any.
pub(super) async fn download(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    sha256: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let sha256 = sha256_of(sha256)?;
    let state = app.0.replica.state();
    let known = match caller.role {
        Role::Full | Role::ReadOnly => state.owns_artifact(&caller.tenant, &sha256)?,
        _ => state.artifact(&sha256)?.is_some(),
    };
    let Some(size) = app.0.blobs.size(&sha256).filter(|_| known) else {
        // Recorded but not copied here yet: another replica has it.
        let message = match known {
            true => format!("artifact {sha256} is not on this replica yet; ask another"),
            false => format!("no artifact with sha256 {sha256}"),
        };
        let status = if known { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::NOT_FOUND };
        return Err(Failure::new(status, if known { "unavailable" } else { "not_found" }, message));
    };
    let file = tokio::fs::File::open(app.0.blobs.path(&sha256))
        .await
        .map_err(|e| Failure::internal(format!("opening artifact {sha256}: {e}")))?;
    // A megabyte at a time: however large the artifact, this is what it holds.
    let stream = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 1 << 20];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

/// Copies the artifacts the state records and this replica lacks from its
/// peers, when told of new ones and every few seconds.
pub(super) async fn sync(app: App, admin_token: String) {
    loop {
        let notified = app.0.blobs_changed.notified();
        if let Err(e) = copy_missing(&app, &admin_token).await {
            tracing::warn!(error = %e, "copying artifacts from peers");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
    }
}

async fn copy_missing(app: &App, admin_token: &str) -> Result<(), String> {
    let state = app.0.replica.state();
    let missing: Vec<(String, u64)> = state
        .artifacts(None)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(sha256, size)| app.0.blobs.size(sha256) != Some(*size))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let status = app.status();
    let peers: Vec<String> =
        status.members.iter().filter(|(id, _)| **id != app.0.replica.id()).map(|(_, url)| url.clone()).collect();
    for (sha256, size) in missing {
        let mut copied = false;
        for peer in &peers {
            match copy_from(app, peer, admin_token, &sha256, size).await {
                Ok(()) => {
                    tracing::info!(artifact = %sha256, size, peer = %peer, "artifact copied from a peer");
                    copied = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(artifact = %sha256, peer = %peer, error = %e, "peer could not give the artifact")
                }
            }
        }
        if !copied {
            return Err(format!("no peer could give artifact {sha256} yet"));
        }
    }
    Ok(())
}

/// Streams artifact `sha256` from `peer` to a staging file, then verifies
/// it into this replica's store.
async fn copy_from(app: &App, peer: &str, admin_token: &str, sha256: &str, size: u64) -> Result<(), String> {
    let response = app
        .0
        .http
        .get(format!("{peer}/v1/artifacts/{sha256}"))
        .bearer_auth(admin_token)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{}", response.status()));
    }
    let staged = app.0.blobs.incoming(sha256);
    let hashed = wasmgrid_api::download(response, &staged, size).await.map_err(|e| {
        let _ = std::fs::remove_file(&staged);
        e.to_string()
    })?;
    let (blobs, sha256) = (app.0.blobs.clone(), sha256.to_string());
    tokio::task::spawn_blocking(move || blobs.adopt(&sha256, size, hashed))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
