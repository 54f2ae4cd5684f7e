//! Per-request calls of scorers: `POST /v1/fn/{tenant}/{name}`, and the
//! steps every call opens with (those of `wasi:http` components too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;
use wasmgrid_api::{Answer, Failure, GpuPlacement, InvokeResponse, VERSION_HEADER, trace};
use wasmgrid_runtime::convert::{json_to_wit, merge_json_scores};
use wasmgrid_runtime::{Error, Kind, Result};

use crate::admission::{Admitted, InFlight, admit, read_body};
use crate::codec::{ARROW_STREAM, Rows, batch_to_rows, read_arrow, read_json, rows_to_batch, write_arrow};
use crate::instrument::{metered, timed};
use crate::trial::{Side, TrialRun};
use crate::{Gateway, Served};

/// A call that passed the checks every call opens with, in this order: the
/// caller's right (before a byte of the body is read), the function, its
/// kind, its placement, the body, then the tenant's quota.
pub(crate) struct Opened<'a> {
    pub(crate) served: &'a Arc<Served>,
    pub(crate) parts: Parts,
    pub(crate) body: Bytes,
    share: Option<OwnedSemaphorePermit>,
}

/// What a running call holds: a count in flight, its function's and the
/// node's slots and the tenant's share, given back when dropped.
pub(crate) struct Running {
    _inflight: InFlight,
    _admitted: Admitted,
    _share: Option<OwnedSemaphorePermit>,
}

/// Opens a call of `tenant/name` (served here as `served`) that needs a
/// function of kind `kind`.
pub(crate) async fn open<'a>(
    gateway: &Gateway,
    (tenant, name): (&str, &str),
    served: Option<&'a Arc<Served>>,
    kind: Kind,
    request: axum::extract::Request,
) -> Answer<Opened<'a>> {
    gateway.authorize(request.headers(), tenant, name, served.is_some_and(|s| s.route.public))?;
    let served = served.ok_or_else(|| not_served(gateway, tenant, name))?;
    let actual = served.function.kind();
    if actual != kind {
        let message = match (kind, actual) {
            (Kind::Http, _) => {
                let actual = wasmgrid_runtime::a(actual.name());
                format!("`{name}` is {actual}, not a wasi:http component; call it at /v1/fn/{tenant}/{name}")
            }
            (_, Kind::Http) => format!("`{name}` is a wasi:http component; call it under /v1/http/{tenant}/{name}/"),
            _ => format!(
                "`{name}` is {}; only scorers are invoked per request (run it in a job)",
                wasmgrid_runtime::a(actual.name())
            ),
        };
        return Err(Failure::new(StatusCode::BAD_REQUEST, "wrong_kind", message));
    }
    if served.route.gpu == GpuPlacement::Required && !gateway.runtime.config().gpu.open().info().gpu {
        let message = format!("`{name}` requires a GPU and this node has none; send it to a GPU node");
        return Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "no_gpu", message));
    }
    let (parts, body) = request.into_parts();
    let body = read_body(gateway, &parts.headers, body).await?;
    // Before any work on the body: a tenant over its quota is refused cheaply.
    let share = gateway.tenant_share(tenant)?;
    Ok(Opened { served, parts, body, share })
}

impl Opened<'_> {
    /// Waits for the call's slots (see [`admit`]).
    pub(crate) async fn run(self, gateway: &Arc<Gateway>, name: &str) -> Answer<(Running, Parts, Bytes)> {
        let inflight = InFlight::new(gateway, self.served);
        let admitted = admit(gateway, self.served, name).await?;
        Ok((Running { _inflight: inflight, _admitted: admitted, _share: self.share }, self.parts, self.body))
    }
}

/// `POST /v1/fn/{tenant}/{name}`.
pub(crate) async fn invoke(
    State(gateway): State<Arc<Gateway>>,
    path: std::result::Result<UrlPath<(String, String)>, PathRejection>,
    request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    let UrlPath((tenant, name)) = match path {
        Ok(p) => p,
        Err(r) => return Failure::bad(r.body_text()).into_response(),
    };
    let mut bytes_in = 0;
    // One clone of the pointer: this call is served by this table's version.
    let served = gateway.lookup(&tenant, &name);
    if served.is_none()
        && let Some(remote) = gateway.remote(&tenant, &name)
    {
        return crate::forward::forward(&gateway, &remote, request).await;
    }
    // A canary answers its share of calls.
    let trial = served.as_ref().and_then(|s| s.trial.clone());
    let side = match &trial {
        Some(t) if t.answers(request.headers()) => Side::Candidate,
        _ => Side::Active,
    };
    let served = match (&trial, side) {
        (Some(t), Side::Candidate) => Some(t.candidate.clone()),
        _ => served,
    };
    // A span for traces (disabled, and free, without an exporter), in the
    // caller's trace when it sent a `traceparent`.
    let span = tracing::trace_span!(
        target: trace::TARGET,
        "invoke",
        otel.kind = "server",
        tenant = %tenant,
        function = %name,
        version = served.as_ref().map_or(0, |s| s.route.version),
        http.response.status_code = tracing::field::Empty,
    );
    let trace_id = trace::continue_from(&span, request.headers());
    let trial = trial.as_ref().map(|t| (t, side));
    let mut response = call(&gateway, (&tenant, &name), served.as_ref(), trial, request, &mut bytes_in)
        .instrument(span.clone())
        .await
        .unwrap_or_else(IntoResponse::into_response);
    span.record("http.response.status_code", response.status().as_u16());
    if let Some(id) = trace_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(trace::TRACE_ID_HEADER, id);
    }
    gateway.record((&tenant, &name), served.as_deref().map(Served::metered), &response, started, bytes_in);
    response
}

async fn call(
    gateway: &Arc<Gateway>,
    (tenant, name): (&str, &str),
    served: Option<&Arc<Served>>,
    trial: Option<(&Arc<TrialRun>, Side)>,
    request: axum::extract::Request,
    bytes_in: &mut u64,
) -> Answer<Response> {
    let arrow = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(ARROW_STREAM));
    let opened = open(gateway, (tenant, name), served, Kind::Scorer, request).await?;
    *bytes_in = opened.body.len() as u64;
    let rows = if arrow { read_arrow(&opened.body) } else { read_json(&opened.body) }
        .map_err(|e| Failure::bad(e.to_string()))?;
    let served = opened.served;
    let (running, parts, input) = opened.run(gateway, name).await?;

    let job = served.clone();
    let guest = tracing::trace_span!(
        target: trace::TARGET,
        "guest call",
        function = %name,
        version = served.route.version,
        rows = rows.len(),
    );
    // A function whose recent calls were short runs on this thread,
    // sparing two thread handoffs; anything else goes to the blocking pool.
    // Inline calls never occupy every worker.
    let (result, took) = match gateway.inline.clone().try_acquire_owned().ok().filter(|_| served.cost.runs_inline()) {
        Some(inline) => {
            let _held = (running, inline);
            let _guest = guest.entered();
            let (result, took) = timed(&served.meter, || score(&job, rows));
            served.cost.record(took);
            (Ok(result), took)
        }
        None => {
            let ran = tokio::task::spawn_blocking(move || {
                let _running = running;
                let _guest = guest.entered();
                let started = Instant::now();
                let result = metered(&job.meter, || score(&job, rows));
                let took = started.elapsed();
                job.cost.record(took);
                (result, took)
            })
            .await;
            match ran {
                Ok((result, took)) => (Ok(result), took),
                Err(e) => (Err(e), Duration::ZERO),
            }
        }
    };
    let failed = !matches!(result, Ok(Ok(_)));
    served.version_series.observe(took, failed);
    if let Some((run, side)) = trial {
        run.meter.count(side, took, failed);
    }
    let rows = result.map_err(|e| Failure::internal(format!("the call failed: {e}")))?.map_err(runtime_failure)?;
    let version = served.route.version;
    let (answer, media) = match rows {
        Rows::Json { rows } => {
            let answer = serde_json::to_vec(&InvokeResponse { function: name.to_string(), version, rows })
                .map_err(|e| Failure::internal(format!("encoding the answer: {e}")))?;
            (Bytes::from(answer), "application/json")
        }
        Rows::Arrow { batch } => (Bytes::from(write_arrow(&batch).map_err(runtime_failure)?), ARROW_STREAM),
    };
    // A shadow scores a copy once the answer is on its way.
    if let Some((run, Side::Active)) = trial {
        run.shadow(&parts.headers, input, arrow, answer.clone());
    }
    let mut response = answer.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    response.headers_mut().insert(VERSION_HEADER, HeaderValue::from(version));
    Ok(response)
}

/// Scores rows in a fresh instance; answers in the format they came in.
pub(crate) fn score(served: &Served, rows: Rows) -> Result<Rows> {
    let batch = match rows {
        Rows::Json { rows } if rows.is_empty() => return Ok(Rows::Json { rows: Vec::new() }),
        // The common case, scalar JSON values, goes straight to the WIT
        // batch and back: no Arrow on the way.
        Rows::Json { rows } => match json_to_wit(&rows) {
            Some(batch) => {
                let mut instance = served.function.instantiate(&served.limits, served.config.clone(), served.io())?;
                let scores = instance.score(&batch);
                served.settle(instance, scores.as_ref().err());
                return Ok(Rows::Json { rows: merge_json_scores(rows, scores?)? });
            }
            None => {
                let batch = rows_to_batch(&rows)?;
                return score_arrow(served, &batch).and_then(|b| Ok(Rows::Json { rows: batch_to_rows(&b)? }));
            }
        },
        Rows::Arrow { batch } => batch,
    };
    Ok(Rows::Arrow { batch: score_arrow(served, &batch)? })
}

fn score_arrow(served: &Served, batch: &RecordBatch) -> Result<RecordBatch> {
    let mut instance = served.function.instantiate(&served.limits, served.config.clone(), served.io())?;
    let scores = instance.score_arrow(batch);
    served.settle(instance, scores.as_ref().err());
    scores
}

/// The answer for a function this node does not serve: why it cannot
/// (`500 load_failed`) when its version failed to load here, else `404`.
fn not_served(gateway: &Gateway, tenant: &str, name: &str) -> Failure {
    let failed = gateway.failed.read().map(|f| f.clone()).unwrap_or_default();
    match failed.get(&(tenant.to_string(), name.to_string())) {
        Some((version, why)) => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "load_failed",
            format!("version {version} of `{tenant}/{name}` cannot run on this node: {why}"),
        ),
        None => Failure::not_found(crate::not_deployed_message(tenant, name)),
    }
}

/// The answer for a call that failed in the runtime: its kind as the code.
pub(crate) fn runtime_failure(e: Error) -> Failure {
    use wasmgrid_runtime::DataError;
    let status = match &e {
        Error::Guest { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Timeout { .. } | Error::FuelExhausted { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::Data(DataError::BadInputRequest { .. } | DataError::Decode { .. } | DataError::Input { .. })
        | Error::WrongKind { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Failure::new(status, e.kind(), e.to_string())
}
