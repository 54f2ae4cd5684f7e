//! Trials: a candidate version run beside the active one (shadow or
//! canary), its diff against the active version as the nodes report it,
//! and its end (promote, or abandon).
//!
//! The candidate travels in the route table with the active version
//! ([`Route::candidate`]); each node compares, counts and times both
//! versions' calls and sends what it saw with its heartbeats (cumulative
//! since the trial began there), so the leader's diff is the sum over the
//! nodes' latest reports: a new leader has it again after one heartbeat.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use wasmgrid_api::*;

use super::answer::*;
use super::traffic::quantile;
use super::*;

impl App {
    /// Refuses a trial while a control-plane replica of a release before
    /// trials may remain: it would apply the candidate's deploy as a new
    /// active version.
    pub(super) async fn require_trials(&self) -> Answer<()> {
        self.require_release("trials", "shadow and canary versions").await
    }

    /// Refuses (`409 upgrade_in_progress`) what `what` names unless
    /// [`every_replica_says`](Self::every_replica_says) `flag`.
    pub(super) async fn require_release(&self, flag: &str, what: &str) -> Answer<()> {
        if !self.every_replica_says(flag).await {
            let message = format!(
                "{what} need every control-plane replica on a release that runs them; finish the upgrade first"
            );
            return Err(Failure::new(StatusCode::CONFLICT, "upgrade_in_progress", message));
        }
        Ok(())
    }

    /// Whether every other replica that answers says `flag` in its
    /// `/v1/health` (its release does what `flag` names), and a majority
    /// answered (this one included): a replica of an earlier release
    /// cannot read the commands of what `flag` names.
    pub(super) async fn every_replica_says(&self, flag: &str) -> bool {
        let status = self.status();
        let mut answered = 1; // this replica
        for (&id, url) in &status.members {
            if id == status.id {
                continue;
            }
            let Some(says) = self.health_says(url, flag).await else { continue };
            answered += 1;
            if !says {
                return false;
            }
        }
        answered > status.members.len() / 2
    }
}

/// Refuses a trial of `what`, of world `kind`, unless it is a scorer: the
/// only kind with per-request calls to copy or share.
pub(super) fn trialled(kind: &str, what: &str) -> Answer<()> {
    if kind != "scorer" {
        let message =
            format!("only scorers run as a shadow or a canary (they take per-request calls); {what} is {}", a(kind));
        return Err(Failure::bad(message));
    }
    Ok(())
}

/// `PUT /v1/functions/{name}/trial`: runs an existing version as the
/// function's candidate, replacing any other (a shadow made a canary, a
/// canary's share changed).
pub(super) async fn set_trial(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<TrialRequest>, JsonRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let request = json_body(body)?;
    let spec = request.spec().map_err(Failure::bad)?;
    app.barrier().await?;
    let version = app.0.replica.state().version(&caller.tenant, &name, request.version)?;
    if let Some(v) = version {
        trialled(&v.spec.kind, &format!("version {}", v.version))?;
    }
    app.require_trials().await?;
    let trial = Some(Trial { version: request.version, spec });
    let tenant = caller.tenant;
    app.propose(Command::SetTrial { tenant: tenant.clone(), name: name.clone(), trial }).await?;
    Ok(json(StatusCode::OK, &functions::summary(&app.function(&tenant, name)?)))
}

/// `DELETE /v1/functions/{name}/trial`: ends the trial without promoting
/// the candidate (the active version serves alone).
pub(super) async fn end_trial(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let tenant = caller.tenant;
    if app.function(&tenant, name.clone())?.trial.is_none() {
        return Err(no_trial(&name));
    }
    app.propose(Command::SetTrial { tenant: tenant.clone(), name: name.clone(), trial: None }).await?;
    Ok(json(StatusCode::OK, &functions::summary(&app.function(&tenant, name)?)))
}

fn no_trial(name: &str) -> Failure {
    Failure::not_found(format!(
        "function `{name}` has no shadow or canary version; deploy one with --shadow or --canary"
    ))
}

/// `GET /v1/functions/{name}/diff`: the running trial, summed over what
/// every node reported.
pub(super) async fn diff(
    Shared(app): Shared<App>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    app.barrier().await?;
    let f = app.function(&caller.tenant, name.clone())?;
    let Some(trial) = f.trial else { return Err(no_trial(&name)) };
    let mut total = TrialUsage::default();
    let mut nodes = 0;
    for (_, beat) in app.0.nodes.lock().map_err(poisoned)?.values() {
        let reported = beat.trials.iter().find(|t| {
            t.tenant == f.tenant
                && t.function == f.name
                && (t.active, t.candidate, t.mode) == (f.active, trial.version, Some(trial.spec.mode))
        });
        if let Some(usage) = reported {
            total.add(usage);
            nodes += 1;
        }
    }
    let side = |version, calls, errors, latency: &[u64]| VersionLatency {
        version,
        calls,
        errors,
        p50_us: quantile(latency, 0.5),
        p99_us: quantile(latency, 0.99),
    };
    let columns = total
        .columns
        .iter()
        .map(|c| ColumnReport {
            column: c.column.clone(),
            count: c.count,
            mean_abs: if c.numeric == 0 { 0.0 } else { c.sum_abs / c.numeric as f64 },
            max_abs: c.max_abs,
            disagree: c.disagree,
            disagree_rate: if c.count == 0 { 0.0 } else { c.disagree as f64 / c.count as f64 },
        })
        .collect();
    let report = TrialReport {
        tenant: f.tenant,
        name: f.name,
        mode: trial.spec.mode,
        percent: trial.spec.percent,
        threshold: trial.spec.threshold,
        active: side(f.active, total.active_calls, total.active_errors, &total.active_latency),
        candidate: side(trial.version, total.candidate_calls, total.candidate_errors, &total.candidate_latency),
        skipped: total.skipped,
        rows: total.rows,
        columns,
        nodes,
    };
    Ok(json(StatusCode::OK, &report))
}
