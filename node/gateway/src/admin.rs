//! The node's own endpoints: health, the routes it serves, and what its
//! calls and batch attempts logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use wasmgrid_api::{Answer, AttemptLogs, CallLogs, Failure, Route, RouteTable};

use crate::{Gateway, not_deployed_message};

/// `GET /v1/health`: open to anyone.
pub(crate) async fn health(State(gateway): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "revision": gateway.revision() }))
}

/// `GET /v1/ready`: open to anyone. `200` once the node serves a route
/// table from the control plane; `503 not_ready` before (just started,
/// the control plane not reached yet). For readiness probes and load
/// balancers; `/v1/health` is the liveness probe.
pub(crate) async fn ready(State(gateway): State<Arc<Gateway>>) -> Answer<Json<serde_json::Value>> {
    if !gateway.is_routed() {
        return Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no route table from the control plane yet",
        ));
    }
    Ok(Json(serde_json::json!({ "status": "ready", "revision": gateway.revision() })))
}

/// `GET /v1/routes`: the route table served here, for the admin and nodes.
pub(crate) async fn served_routes(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Answer<Json<RouteTable>> {
    gateway.operator(&headers)?;
    // Those it holds and those it forwards: every function it answers.
    // A candidate shows once it is ready here.
    let mut routes: Vec<Route> = gateway
        .table()
        .values()
        .map(|s| Route { candidate: s.trial.as_ref().and(s.route.candidate.clone()), ..s.route.clone() })
        .collect();
    routes.extend(gateway.remotes().values().map(|r| r.route.clone()));
    routes.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    let revision = gateway.revision();
    Ok(Json(RouteTable {
        revision,
        routes,
        grants: Vec::new(),
        concurrency: BTreeMap::new(),
        nodes: BTreeMap::new(),
        triggers: Vec::new(),
    }))
}

/// The latest calls' logs of `tenant/name` on this node: for the admin,
/// and the tenant's `full` and `read-only` tokens. Another tenant's
/// function is a 404, as for one this node never served.
pub(crate) async fn call_logs(
    State(gateway): State<Arc<Gateway>>,
    UrlPath((tenant, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Answer<Json<CallLogs>> {
    let hidden = || not_deployed_message(&tenant, &name);
    gateway.log_reader(&headers, &tenant, hidden)?;
    let meter = gateway.meters.lock().ok().and_then(|m| m.get(&(tenant.clone(), name.clone())).cloned());
    let meter = meter.ok_or_else(|| Failure::not_found(hidden()))?;
    let calls = meter.logs.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default();
    Ok(Json(CallLogs { tenant, function: name, calls }))
}

/// What the latest attempts of `tenant`'s job `id` on this node logged,
/// for the same tokens as [`call_logs`]. A job with no attempt that logged
/// here, or another tenant's, is a 404.
pub(crate) async fn attempt_logs(
    State(gateway): State<Arc<Gateway>>,
    UrlPath((tenant, job)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Answer<Json<AttemptLogs>> {
    let not_here = || format!("no attempt of job `{job}` logged anything on this node");
    gateway.log_reader(&headers, &tenant, not_here)?;
    let attempts = gateway.job_logs.get(&tenant, &job).ok_or_else(|| Failure::not_found(not_here()))?;
    Ok(Json(AttemptLogs { tenant, job, attempts }))
}
