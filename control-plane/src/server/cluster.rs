//! The replica's own endpoints: health, the cluster's status, Raft
//! messages from peers, and the answers for unknown endpoints.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State as Shared;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use wasmgrid_api::*;

use super::answer::*;
use super::*;

/// `GET /v1/health`: `200` while the replica works; `503 replica_stopped`
/// with the reason once its Raft loop has ended (a storage error, a panic
/// in raft-rs), so a supervisor or a probe restarts or replaces it.
pub(super) async fn health(Shared(app): Shared<App>) -> Answer<Response> {
    let status = app.status();
    if let Some(reason) = status.stopped {
        if status.removed {
            let message = format!("replica {}: {reason}", app.0.replica.id());
            return Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "replica_removed", message));
        }
        let message = format!("replica {} stopped: {reason}", app.0.replica.id());
        return Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "replica_stopped", message));
    }
    // `placement`: this release reads `Place` entries and jobs submitted in
    // ranges; a leader proposes them only once every replica says so (a
    // rolling upgrade). `trials`: it applies a deploy with a trial as a
    // candidate, not as a new active version. `triggers`: it reads the
    // trigger commands.
    let health = serde_json::json!({ "status": "ok", "id": app.0.replica.id(), "placement": true, "trials": true, "triggers": true });
    Ok(json(StatusCode::OK, &health))
}

/// `GET /v1/ready`: `200` while the replica works and knows a leader (it
/// can answer reads and forward writes); `503 no_leader` while an election
/// runs or it is cut off from a quorum, and as `/v1/health` once it has
/// stopped. For load balancers and readiness probes; `/v1/health` is the
/// liveness probe.
pub(super) async fn ready(app: Shared<App>) -> Answer<Response> {
    let status = app.0.status();
    if status.stopped.is_some() {
        return health(app).await;
    }
    if status.leader == 0 {
        let message = format!("replica {} knows no leader (term {})", status.id, status.term);
        return Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message));
    }
    Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ready", "id": status.id, "leader": status.leader })))
}

pub(super) async fn no_route(method: Method, uri: axum::http::Uri) -> Failure {
    Failure::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

pub(super) async fn wrong_method(method: Method, uri: axum::http::Uri) -> Failure {
    Failure::new(StatusCode::METHOD_NOT_ALLOWED, "bad_request", format!("{method} is not allowed on {}", uri.path()))
}

/// `GET /v1/cluster` (admin): this replica's view of the cluster; the
/// leader's also holds each replica's progress.
pub(super) async fn cluster(Shared(app): Shared<App>) -> Response {
    let status = app.status();
    let progress: HashMap<u64, u64> = status.progress.iter().copied().collect();
    let members = status
        .members
        .iter()
        .map(|(&id, url)| {
            let matched = progress.get(&id).copied();
            let role = match () {
                _ if status.leader == id => "leader",
                _ if status.learners.contains(&id) => "learner",
                _ => "follower",
            };
            Member {
                id,
                url: url.clone(),
                role: role.into(),
                matched,
                lag: matched.map(|m| status.commit.saturating_sub(m)),
            }
        })
        .collect();
    let leader = (status.leader != 0).then_some(status.leader);
    let body = ClusterStatus {
        id: status.id,
        role: if status.is_leader { "leader" } else { "follower" }.into(),
        leader,
        leader_url: leader.and_then(|l| status.members.get(&l).cloned()),
        term: status.term,
        commit: status.commit,
        applied: status.applied,
        first_index: status.first_index,
        snapshots_installed: status.snapshots_installed,
        members,
    };
    json(StatusCode::OK, &body)
}

pub(super) async fn raft(Shared(app): Shared<App>, body: Result<Bytes, BytesRejection>) -> Answer<StatusCode> {
    let body = body.map_err(|r| rejected(r.status(), r.body_text()))?;
    let messages = transport::decode(&body).map_err(|e| Failure::bad(format!("bad raft messages: {e}")))?;
    for m in messages {
        app.0.replica.step(m);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/cluster/leader` (`{"id": N}`, admin): hands leadership to
/// voter `N` (forwarded to the leader like every write) and answers once
/// `N` leads, or `503` when it does not within the request timeout. For
/// maintenance: move leadership off a machine before stopping it.
pub(super) async fn transfer_leader(
    Shared(app): Shared<App>,
    body: Result<axum::Json<TransferLeader>, JsonRejection>,
) -> Answer<Response> {
    let TransferLeader { id } = json_body(body)?;
    let replica = &app.0.replica;
    if replica.status().leader != id {
        replica.transfer_leader(id).await?;
        let timeout = app.0.request_timeout;
        if !replica.wait_for(timeout, |s| s.leader == id).await {
            return Err(no_quorum(format!(
                "replica {id} did not take over within {timeout:?} (is it up and caught up?); replica {} still leads",
                replica.status().leader
            )));
        }
    }
    tracing::info!(leader = id, "leadership transferred");
    Ok(cluster(Shared(app)).await)
}
