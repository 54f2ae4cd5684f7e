//! Calls of functions placed on other nodes: any node answers any function.
//!
//! A gateway that does not hold a function its route table places
//! elsewhere checks the caller's token as for its own functions, reads the
//! body (under the same limit), and sends the call on to one of the nodes
//! that hold it, with the caller's headers (its `Authorization` included)
//! over a pooled HTTP/2 connection; the answer comes back as that node gave
//! it. One hop only: a forwarded call carries [`FORWARDED_HEADER`], and a
//! node that meets one for a function it does not hold answers `503`
//! rather than forwarding it again. The nodes are tried in turn from a
//! rotating start; one that cannot be reached is skipped, and when none
//! can (the placement is being repaired after a node died) the caller gets
//! `503` with `Retry-After`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use wasmgrid_api::{Answer, Failure, Route};

use crate::Gateway;
use crate::admission::read_body;
use crate::instrument::FunctionLabels;

/// Marks a call one gateway sent another.
pub const FORWARDED_HEADER: &str = "wasmgrid-forwarded";

/// A function placed on other nodes.
#[derive(Debug)]
pub struct Remote {
    /// What the control plane says to serve.
    pub route: Route,
    /// The gateway URLs of the nodes that hold it.
    pub targets: Vec<String>,
    next: AtomicUsize,
}

impl Remote {
    /// `route`, held at `targets`.
    pub fn new(route: Route, targets: Vec<String>) -> Remote {
        Remote { route, targets, next: AtomicUsize::new(0) }
    }
}

/// Functions placed elsewhere, by (tenant, name).
pub type Remotes = hashbrown::HashMap<(String, String), Arc<Remote>>;

/// Headers that describe one connection, not the call: not passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The client gateways forward with: pooled, HTTP/2 (over TLS where the
/// nodes serve HTTPS, trusting what the node trusts for the control plane).
pub(crate) fn client() -> reqwest::Client {
    let builder = match wasmgrid_api::tls::client_builder() {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!("forwarding client without the configured CA: {e}");
            reqwest::Client::builder()
        }
    };
    builder
        .http2_prior_knowledge()
        .pool_idle_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(1))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Sends `request` for `remote`'s function to a node that holds it, and
/// relays its answer.
pub(crate) async fn forward(gateway: &Arc<Gateway>, remote: &Remote, request: axum::extract::Request) -> Response {
    let labels = FunctionLabels { tenant: remote.route.tenant.clone(), function: remote.route.name.clone() };
    let answer = send(gateway, remote, request).await;
    let response = answer.unwrap_or_else(axum::response::IntoResponse::into_response);
    gateway.metrics.forwarded.get_or_create(&labels).inc();
    response
}

async fn send(gateway: &Arc<Gateway>, remote: &Remote, request: axum::extract::Request) -> Answer<Response> {
    let route = &remote.route;
    gateway.authorize(request.headers(), &route.tenant, &route.name, route.public)?;
    if request.headers().contains_key(FORWARDED_HEADER) || remote.targets.is_empty() {
        return Err(not_here(route));
    }
    let (parts, body) = request.into_parts();
    let body = read_body(gateway, &parts.headers, body).await?;
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let mut headers = HeaderMap::new();
    for (name, value) in parts.headers.iter().filter(|(name, _)| !hop_by_hop(name)) {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(FORWARDED_HEADER, HeaderValue::from_static("1"));
    // The call's own limits, and its wait for a slot, with room to spare.
    let timeout = gateway.config.queue_timeout + Duration::from_millis(route.timeout_ms) + Duration::from_secs(5);
    let start = remote.next.fetch_add(1, Ordering::Relaxed);
    let mut unreachable = Vec::new();
    for i in 0..remote.targets.len() {
        let target = &remote.targets[(start + i) % remote.targets.len()];
        let sent = gateway
            .forwarder
            .request(parts.method.clone(), format!("{target}{path}"))
            .headers(headers.clone())
            .timeout(timeout)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(answer) => return relay(answer).await,
            Err(e) if e.is_connect() => unreachable.push(target.as_str()),
            Err(e) => {
                let message = format!("forwarding the call to the node at {target}: {e}");
                return Err(Failure::new(StatusCode::BAD_GATEWAY, "forward_failed", message));
            }
        }
    }
    tracing::warn!(function = %route.name, nodes = ?unreachable, "no node holding the function answers");
    let message = format!(
        "`{}/{}` is placed on nodes that do not answer now ({}); it is being placed again, retry shortly",
        route.tenant,
        route.name,
        unreachable.join(", ")
    );
    Err(unavailable(message))
}

/// The node's answer, as it gave it.
async fn relay(answer: reqwest::Response) -> Answer<Response> {
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers().iter().filter(|(name, _)| !hop_by_hop(name)) {
        headers.append(name.clone(), value.clone());
    }
    let body = answer.bytes().await.map_err(|e| {
        Failure::new(StatusCode::BAD_GATEWAY, "forward_failed", format!("reading the answer of the node: {e}"))
    })?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

fn not_here(route: &Route) -> Failure {
    unavailable(format!(
        "`{}/{}` is not placed on this node, and the call was already forwarded once; retry shortly",
        route.tenant, route.name
    ))
}

fn unavailable(message: String) -> Failure {
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, "not_placed", message)
}
