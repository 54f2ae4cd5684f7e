//! `wasi:http/proxy` components served unchanged under
//! `/v1/http/{tenant}/{name}/...`: the component sees the path below that
//! prefix, so one written for `wasmtime serve` works as it is.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wasmgrid_api::{Answer, Failure, VERSION_HEADER};
use wasmgrid_runtime::{Io, Kind};

use crate::handler::{open, runtime_failure};
use crate::instrument::metered;
use crate::{Gateway, Served};

/// `/v1/http/{tenant}/{name}` and `/v1/http/{tenant}/{name}/`.
pub(crate) async fn http_root(
    State(gateway): State<Arc<Gateway>>,
    UrlPath((tenant, name)): UrlPath<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    http_call(gateway, tenant, name, String::new(), request).await
}

/// `/v1/http/{tenant}/{name}/{rest}`.
pub(crate) async fn http_path(
    State(gateway): State<Arc<Gateway>>,
    UrlPath((tenant, name, rest)): UrlPath<(String, String, String)>,
    request: axum::extract::Request,
) -> Response {
    http_call(gateway, tenant, name, rest, request).await
}

/// Serves a request with a `wasi:http/proxy` component, and counts it.
async fn http_call(
    gateway: Arc<Gateway>,
    tenant: String,
    name: String,
    rest: String,
    request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    let bytes_in = http_body::Body::size_hint(request.body()).exact().unwrap_or(0);
    let served = gateway.lookup(&tenant, &name);
    if served.is_none()
        && let Some(remote) = gateway.remote(&tenant, &name)
    {
        return crate::forward::forward(&gateway, &remote, request).await;
    }
    let response = http_answer(&gateway, (&tenant, &name), served.as_ref(), rest, request)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    gateway.record((&tenant, &name), served.as_deref().map(Served::metered), &response, started, bytes_in);
    response
}

async fn http_answer(
    gateway: &Arc<Gateway>,
    (tenant, name): (&str, &str),
    served: Option<&Arc<Served>>,
    rest: String,
    request: axum::extract::Request,
) -> Answer<Response> {
    let opened = open(gateway, (tenant, name), served, Kind::Http, request).await?;
    let served = opened.served;
    // The grid's token was for the grid: a private function never sees it.
    // A public one gets every header, for its own authentication.
    let public = served.route.public;
    let (running, parts, body) = opened.run(gateway, name).await?;
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let mut inner = http::Request::builder().method(parts.method).uri(format!("/{rest}{query}"));
    for (k, v) in &parts.headers {
        if public || k != header::AUTHORIZATION {
            inner = inner.header(k, v);
        }
    }
    if !parts.headers.contains_key(header::HOST) {
        inner = inner.header(header::HOST, "localhost");
    }
    let body =
        http_body_util::BodyExt::map_err(http_body_util::Full::new(body), |never| -> wasmtime_wasi_http::Error {
            match never {}
        });
    let inner = inner.body(body).map_err(|e| Failure::bad(format!("bad request: {e}")))?;

    let (respond, response) = tokio::sync::oneshot::channel();
    let job = served.clone();
    let guest = tokio::task::spawn_blocking(move || {
        let _running = running;
        let mut instance = job.function.instantiate(&job.limits, job.config.clone(), Io::default())?;
        metered(&job.meter, || instance.handle_http(inner, respond))
    });
    match response.await {
        Ok(Ok(response)) => {
            let version = served.route.version;
            let (mut parts, body) = response.into_parts();
            if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
                parts.headers.insert(VERSION_HEADER, v);
            }
            // The body streams while the guest finishes; a failure after
            // this point can only cut the body short, so it is logged.
            let name = name.to_string();
            tokio::spawn(async move {
                if let Ok(Err(e)) = guest.await {
                    tracing::warn!(function = %name, "wasi:http guest failed after answering: {e}");
                }
            });
            Ok(Response::from_parts(parts, axum::body::Body::new(body)))
        }
        Ok(Err(code)) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "http_error",
            format!("the component answered with error {code:?}"),
        )),
        // The guest never set a response: say why it stopped.
        Err(_) => Err(match guest.await {
            Ok(Err(e)) => runtime_failure(e),
            Ok(Ok(())) => {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "no_response", "the component set no response")
            }
            Err(e) => Failure::internal(format!("the call failed: {e}")),
        }),
    }
}
