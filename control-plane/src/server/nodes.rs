//! Nodes: heartbeats, the node list, the route table nodes long-poll, GPU
//! quotas and usage.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use wasmgrid_api::*;

use super::answer::*;
use super::*;

pub(super) async fn heartbeat(
    Shared(app): Shared<App>,
    id: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<Heartbeat>, JsonRejection>,
) -> Answer<Response> {
    let id = path_name(id)?;
    let mut beat = json_body(body)?;
    beat.address = normalize_url(&beat.address).map_err(|e| Failure::bad(format!("`address`: {e}")))?;
    let registered = app.0.replica.state().node(&id)?;
    if registered.as_ref().is_none_or(|n| n.address != beat.address) {
        app.propose(Command::RegisterNode { id: id.clone(), address: beat.address.clone() }).await?;
        tracing::info!(node = %id, address = %beat.address, "node registered");
    }
    let mut nodes = app.0.nodes.lock().map_err(poisoned)?;
    let before = nodes.get(&id).map(|(_, b)| b.usage.as_slice());
    app.0.traffic.lock().map_err(poisoned)?.record(before, &beat.usage, now_ms());
    // A node new to this leader, or back after it was counted dead, may be
    // given functions.
    let returning = nodes.get(&id).is_none_or(|(at, _)| at.elapsed() >= NODE_LIVENESS);
    nodes.insert(id, (Instant::now(), beat));
    drop(nodes);
    if returning {
        app.0.placement_changed.notify_one();
    }
    Ok(json(StatusCode::OK, &HeartbeatReply { revision: app.0.replica.state().routes_revision()? }))
}

pub(super) async fn list_nodes(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    app.barrier().await?;
    let state = app.0.replica.state();
    let registry = state.nodes()?;
    // A tenant sees which of its own modules a node has warm, not others'.
    let sees_all = caller.is_admin() || caller.role == Role::Node;
    let visible = |warm: Vec<String>| -> Result<Vec<String>, Failure> {
        if sees_all {
            return Ok(warm);
        }
        let mut own = Vec::new();
        for sha in warm {
            if state.owns_module(&caller.tenant, &sha)? {
                own.push(sha);
            }
        }
        Ok(own)
    };
    let live = app.0.nodes.lock().map_err(poisoned)?.clone();
    let fresh_leader = app.0.leader_since.lock().map_err(poisoned)?.is_none_or(|t| t.elapsed() < NODE_LIVENESS);
    let nodes = registry
        .into_iter()
        .map(|n| {
            let seen = live.get(&n.id);
            let state = match seen {
                Some((at, _)) if at.elapsed() < NODE_LIVENESS => NodeState::Alive,
                None if fresh_leader => NodeState::Unknown,
                _ => NodeState::Down,
            };
            let beat = seen.map(|(_, b)| b.clone()).unwrap_or_default();
            Ok(NodeInfo {
                id: n.id,
                address: n.address,
                state,
                last_seen_ms: seen.map(|(at, _)| at.elapsed().as_millis() as u64),
                inflight: beat.inflight,
                invocations: beat.invocations,
                warm: visible(beat.warm)?,
                revision: beat.revision,
                gpu: beat.gpu,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(json(StatusCode::OK, &NodeList { nodes }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoutesQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait_ms: u64,
}

pub(super) async fn routes(
    Shared(app): Shared<App>,
    query: Result<Query<RoutesQuery>, QueryRejection>,
) -> Answer<Response> {
    let Query(query) = query.map_err(|r| Failure::bad(r.body_text()))?;
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let state = app.0.replica.state();
    // The revision moves only when a function changes, not with every
    // applied entry (job progress would wake every node).
    let mut woke = false;
    loop {
        let applied = app.status().applied;
        let left = deadline.saturating_duration_since(Instant::now());
        if state.routes_revision()? > query.since {
            break;
        }
        if left.is_zero() || !app.0.replica.wait_for(left, |s| s.applied > applied).await {
            break;
        }
        woke = true;
    }
    if woke && query.since != 0 {
        // A burst of changes (a script deploying many functions) becomes
        // one table per node, not one per change.
        tokio::time::sleep(ROUTES_SETTLE).await;
    }
    let revision = state.routes_revision()?;
    let cached = app.0.route_table.lock().map_err(poisoned)?.clone();
    let body = match cached {
        Some((at, body)) if at == revision => body,
        _ => {
            let body = axum::body::Bytes::from(
                serde_json::to_vec(&route_table(&app, revision)?)
                    .map_err(|e| Failure::internal(format!("encoding the route table: {e}")))?,
            );
            *app.0.route_table.lock().map_err(poisoned)? = Some((revision, body.clone()));
            body
        }
    };
    Ok(axum::response::IntoResponse::into_response(([(axum::http::header::CONTENT_TYPE, "application/json")], body)))
}

/// How long a route-table poll woken by a change waits for more.
const ROUTES_SETTLE: Duration = Duration::from_millis(25);

/// The route table as of `revision`: built once per revision, whoever asks.
fn route_table(app: &App, revision: u64) -> Answer<RouteTable> {
    let state = app.0.replica.state();
    let tenants = state.tenants()?;
    let refused = gpu_refusals(&tenants);
    let routes = state
        .all_functions()?
        .iter()
        .filter_map(|f| {
            let gpu_refused = refused.get(&f.tenant).cloned();
            let mut route = version_route(f, f.active_version()?, gpu_refused.clone());
            if let (Some(trial), Some(candidate)) = (&f.trial, &f.candidate) {
                let candidate = version_route(f, candidate, gpu_refused);
                route.candidate = Some(Box::new(Candidate { trial: trial.spec, route: candidate }));
            }
            Some(route)
        })
        .collect();
    let mut grants = vec![Grant { sha256: app.0.admin_hash.clone(), tenant: None, role: Role::Admin }];
    grants.extend(state.tokens()?.into_iter().map(|t| Grant { sha256: t.sha256, tenant: t.tenant, role: t.role }));
    let concurrency = tenants.into_iter().filter_map(|t| Some((t.name, t.quotas.concurrency?))).collect();
    let nodes = state.nodes()?.into_iter().map(|n| (n.id, n.address)).collect();
    let triggers = state.triggers(None)?;
    Ok(RouteTable { revision, routes, grants, concurrency, nodes, triggers })
}

/// How nodes serve version `v` of `f`.
fn version_route(f: &Function, v: &Version, gpu_refused: Option<String>) -> Route {
    Route {
        gpu_refused,
        tenant: f.tenant.clone(),
        name: f.name.clone(),
        version: v.version,
        module: v.module.clone(),
        kind: v.spec.kind.clone(),
        memory: v.spec.memory,
        timeout_ms: v.spec.timeout_ms,
        config: v.spec.config.clone(),
        gpu: v.spec.gpu,
        public: v.spec.public,
        artifacts: v.spec.artifacts.clone(),
        nodes: f.placement.clone(),
        candidate: None,
    }
}

/// Why each tenant that used its GPU quota has its `gpu` calls refused.
pub(super) fn gpu_refusals(tenants: &[TenantRecord]) -> HashMap<String, String> {
    tenants
        .iter()
        .filter(|t| t.gpu_exhausted)
        .map(|t| {
            let quota = t.quotas.gpu_ms.unwrap_or(0);
            (t.name.clone(), format!("tenant `{}` has used its `gpu_ms` quota of {quota} ms of GPU time", t.name))
        })
        .collect()
}

/// GPU time each tenant with a GPU quota used, in microseconds: its
/// per-request calls as the nodes last reported them, and its jobs.
pub(super) fn gpu_used(app: &App, tenants: &[TenantRecord]) -> Answer<HashMap<String, u64>> {
    let mut used: HashMap<String, u64> =
        tenants.iter().filter(|t| t.quotas.gpu_ms.is_some()).map(|t| (t.name.clone(), 0)).collect();
    if used.is_empty() {
        return Ok(used);
    }
    for (_, beat) in app.0.nodes.lock().map_err(poisoned)?.values() {
        for u in &beat.usage {
            if let Some(total) = used.get_mut(&u.tenant) {
                *total += u.gpu_us;
            }
        }
    }
    let state = app.0.replica.state();
    for (tenant, total) in &mut used {
        *total += state.jobs(Some(tenant))?.iter().map(|j| j.gpu_us).sum::<u64>();
    }
    Ok(used)
}

/// On the leader, once a second: marks tenants that used their GPU quota
/// (their `gpu` calls are then refused, on every node and in every task),
/// and clears the mark when the quota is raised.
pub(super) async fn watch_gpu_quotas(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !app.status().is_leader {
            continue;
        }
        let Ok(tenants) = app.0.replica.state().tenants() else { continue };
        let Ok(used) = gpu_used(&app, &tenants) else { continue };
        for t in &tenants {
            let over = match (t.quotas.gpu_ms, used.get(&t.name)) {
                (Some(quota), Some(&us)) => us / 1000 >= quota,
                _ => false,
            };
            if over != t.gpu_exhausted {
                tracing::info!(tenant = %t.name, used_ms = used.get(&t.name).copied().unwrap_or(0) / 1000, over, "GPU quota");
                let _ = app.propose(Command::GpuExhausted { name: t.name.clone(), exhausted: over }).await;
            }
        }
    }
}

/// `GET /v1/traffic`: the per-request calls of the caller's tenant's
/// functions (every tenant's for the admin) over the last minutes.
pub(super) async fn traffic(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    let tenant = (!caller.is_admin()).then_some(caller.tenant.as_str());
    let report = app.0.traffic.lock().map_err(poisoned)?.report(tenant);
    Ok(json(StatusCode::OK, &report))
}

/// What the caller's tenant used: its functions' calls as the nodes last
/// reported them, summed, and its jobs.
pub(super) async fn usage(Shared(app): Shared<App>, Extension(caller): Extension<Caller>) -> Answer<Response> {
    let tenant = caller.tenant;
    let mut functions: BTreeMap<String, FunctionUsage> = BTreeMap::new();
    for (_, beat) in app.0.nodes.lock().map_err(poisoned)?.values() {
        for u in beat.usage.iter().filter(|u| u.tenant == tenant) {
            functions
                .entry(u.function.clone())
                .or_insert_with(|| FunctionUsage {
                    tenant: tenant.clone(),
                    function: u.function.clone(),
                    ..Default::default()
                })
                .add(u);
        }
    }
    app.barrier().await?;
    let mut jobs = JobUsage::default();
    for job in app.0.replica.state().jobs(Some(&tenant))? {
        jobs.jobs += 1;
        jobs.tasks += u64::from(job.map_tasks) + u64::from(job.reduce_partitions);
        jobs.records_in += job.records_in;
        jobs.bytes_in += job.bytes_in;
        jobs.rows_out += job.rows_out;
        jobs.gpu_ms += job.gpu_us / 1000;
    }
    Ok(json(StatusCode::OK, &Usage { tenant, functions: functions.into_values().collect(), jobs }))
}
