//! Triggers: a scorer fed from a stream. The control plane stores them
//! and hands them to the nodes in the route table; every node that serves
//! the function runs a consumer in the trigger's group (the broker spreads
//! the partitions over them, and moves a dead node's to the others). What
//! the consumers did comes back with the nodes' heartbeats.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use wasmgrid_api::*;

use super::answer::*;
use super::*;

/// `POST /v1/triggers`: creates a trigger; its consumers start on the
/// nodes that serve the function.
pub(super) async fn create(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    body: Result<axum::Json<TriggerSpec>, JsonRejection>,
) -> Answer<Response> {
    let spec = json_body(body)?;
    spec.check().map_err(Failure::bad)?;
    app.require_release("triggers", "triggers").await?;
    let tenant = caller.tenant;
    let name = spec.name.clone();
    app.propose(Command::PutTrigger { tenant: tenant.clone(), spec }).await?;
    Ok(json(StatusCode::CREATED, &app.trigger(&tenant, &name)?))
}

/// `GET /v1/triggers`: the caller's tenant's triggers.
pub(super) async fn list(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    app.barrier().await?;
    let triggers = app.0.replica.state().triggers(Some(&caller.tenant))?;
    Ok(json(StatusCode::OK, &TriggerList { triggers }))
}

/// `GET /v1/triggers/{name}`: a trigger and what each node running it
/// reported (served by the leader, which hears the heartbeats).
pub(super) async fn status(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    app.barrier().await?;
    let trigger = app.trigger(&caller.tenant, &name)?;
    let mut nodes: Vec<(String, TriggerUsage)> = app
        .0
        .nodes
        .lock()
        .map_err(poisoned)?
        .iter()
        .filter(|(_, (seen, _))| seen.elapsed() < NODE_LIVENESS)
        .filter_map(|(id, (_, beat))| {
            let usage = beat.triggers.iter().find(|t| t.tenant == trigger.tenant && t.trigger == name)?;
            Some((id.clone(), usage.clone()))
        })
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(json(StatusCode::OK, &TriggerStatus { trigger, nodes }))
}

/// `POST /v1/triggers/{name}/pause` and `.../resume`.
pub(super) async fn pause(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    set_paused(app, caller, name, true).await
}

/// `POST /v1/triggers/{name}/resume`.
pub(super) async fn resume(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    set_paused(app, caller, name, false).await
}

async fn set_paused(
    app: App,
    caller: Caller,
    name: Result<Path<String>, PathRejection>,
    paused: bool,
) -> Answer<Response> {
    let name = path_name(name)?;
    let tenant = caller.tenant;
    app.propose(Command::PauseTrigger { tenant: tenant.clone(), name: name.clone(), paused }).await?;
    Ok(json(StatusCode::OK, &app.trigger(&tenant, &name)?))
}

/// `DELETE /v1/triggers/{name}`: stops its consumers and forgets it (the
/// group's committed offsets stay in the broker).
pub(super) async fn delete(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let tenant = caller.tenant;
    let trigger = app.trigger(&tenant, &name)?;
    app.propose(Command::DeleteTrigger { tenant, name }).await?;
    Ok(json(StatusCode::OK, &trigger))
}

impl App {
    fn trigger(&self, tenant: &str, name: &str) -> Answer<Trigger> {
        self.0.replica.state().trigger(tenant, name)?.ok_or_else(|| {
            Failure::not_found(format!("trigger `{name}` not found; create it with `wasmgrid trigger create`"))
        })
    }
}
