//! Who may call what: every request but `/v1/health` carries
//! `Authorization: Bearer TOKEN`, checked before anything else runs (and
//! before a follower forwards the request to the leader, which checks it
//! again).
//!
//! A token is the bootstrap admin token (kept in a file beside each
//! replica, compared by hash) or one made with `POST /v1/tokens` (stored
//! only as its sha256 in the replicated state). What an endpoint needs is
//! one table, [`need`]; a tenant's token acts on its own tenant only, and
//! an admin token on `default` or the tenant its `wasmgrid-tenant` header
//! names. Answers never tell a caller whether another tenant's function
//! or job exists: those are plain 404s, as for names nobody uses.

use axum::extract::{MatchedPath, Request, State as Shared};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use wasmgrid_api::tls::ClientCertificate;
use wasmgrid_api::{Role, TENANT_HEADER, bearer_token, token_hash};

use super::{App, Failure};
use crate::state::DEFAULT_TENANT;

/// The caller of a request that passed [`authenticate`].
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The tenant the request acts on.
    pub tenant: String,
    /// What its token may do.
    pub role: Role,
    /// The token's id (`admin` for the bootstrap token).
    pub token: String,
}

impl Caller {
    /// Whether this is the admin token.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// What an endpoint needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: health checks.
    Open,
    /// Any valid token.
    Any,
    /// A tenant's reads: admin, full or read-only.
    Read,
    /// A tenant's writes: admin or full.
    Write,
    /// A module download: a tenant reading its own upload, or a node.
    Module,
    /// What nodes do: admin or node.
    Node,
    /// The operator: admin only (replicas use it for Raft traffic too).
    Admin,
}

/// The one table of what each endpoint needs. `path` is the route as
/// registered (`/v1/jobs/{id}`), so no request path can dodge it.
fn need(method: &Method, path: &str) -> Need {
    let write = method != Method::GET;
    match path {
        // The dashboard's page and assets: its API calls carry the token.
        "/v1/health" | "/v1/ready" | "/ui" | "/ui/" | "/ui/{asset}" => Need::Open,
        "/v1/whoami" | "/v1/nodes" => Need::Any,
        "/v1/modules/{sha256}" => Need::Module,
        // Nodes fetch the artifacts of the versions they run.
        "/v1/artifacts/{sha256}" if !write => Need::Module,
        "/v1/nodes/{id}/heartbeat" | "/v1/routes" | "/v1/tasks/lease" | "/v1/tasks/report" | "/metrics" => Need::Node,
        "/v1/cluster" | "/v1/cluster/leader" | "/v1/cluster/replicas" | "/v1/cluster/replicas/{id}" | "/v1/raft" => {
            Need::Admin
        }
        p if p.starts_with("/v1/tenants") || p.starts_with("/v1/tokens") => Need::Admin,
        _ if write => Need::Write,
        _ => Need::Read,
    }
}

fn unauthorized(message: impl Into<String>) -> Failure {
    Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden(message: impl Into<String>) -> Failure {
    Failure::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Compares two hex digests without stopping at the first difference.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl App {
    /// With mutual TLS, what replicas and nodes do (Raft, the nodes'
    /// endpoints) needs their certificate as well as a token: the refusal of
    /// a request without one. Checked before a follower forwards it too.
    pub(super) fn certificate_refusal(&self, request: &Request) -> Option<Failure> {
        let path = request.extensions().get::<MatchedPath>()?.as_str();
        let needs = need(request.method(), path) == Need::Node || path == "/v1/raft";
        let verified = request.extensions().get::<ClientCertificate>().is_some_and(|c| c.0);
        (self.0.require_client_certificate && needs && !verified).then(|| {
            forbidden(format!(
                "{} {path} needs a client certificate the grid's client CA signed (mutual TLS): start the replica \
                 or node with --tls-cert and --tls-key",
                request.method()
            ))
        })
    }

    /// Who `headers` say is calling, or why nobody.
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, Failure> {
        let token = bearer_token(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())).map_err(|why| {
            unauthorized(format!(
                "{why}: send `Authorization: Bearer TOKEN` (the CLI reads WASMGRID_TOKEN, --token-file or .wasmgrid/admin-token)"
            ))
        })?;
        let hash = token_hash(token);
        let named = headers.get(TENANT_HEADER).map(|v| v.to_str().unwrap_or("?").to_string());
        if same_digest(&hash, &self.0.admin_hash) {
            let tenant = named.unwrap_or_else(|| DEFAULT_TENANT.to_string());
            return Ok(Caller { tenant, role: Role::Admin, token: "admin".into() });
        }
        let record = self
            .0
            .replica
            .state()
            .token(&hash)
            .map_err(Failure::from)?
            .ok_or_else(|| unauthorized("invalid or revoked token"))?;
        let tenant = record.tenant.clone().unwrap_or_default();
        if let Some(named) = named
            && named != tenant
        {
            return Err(forbidden(format!(
                "this token acts for its own tenant only; drop the {TENANT_HEADER} header (it names `{named}`)"
            )));
        }
        Ok(Caller { tenant, role: record.role, token: wasmgrid_api::token_id(&hash) })
    }
}

/// Checks the caller against what the endpoint needs, and hands it to the
/// handler as an extension.
pub(super) async fn authenticate(Shared(app): Shared<App>, mut request: Request, next: Next) -> Response {
    let Some(path) = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()) else {
        // No such endpoint: the fallback answers 404 to anyone.
        return next.run(request).await;
    };
    let need = need(request.method(), &path);
    if need == Need::Open {
        return next.run(request).await;
    }
    let caller = match app.caller(request.headers()) {
        Ok(caller) => caller,
        Err(failure) => return failure.into_response(),
    };
    let allowed = match (need, caller.role) {
        (_, Role::Admin) | (Need::Any, _) => true,
        (Need::Node, role) => role == Role::Node,
        (Need::Read | Need::Module, Role::Full | Role::ReadOnly) => true,
        (Need::Module, Role::Node) => true,
        (Need::Write, Role::Full) => true,
        _ => false,
    };
    if !allowed {
        let what = format!("{} {path}", request.method());
        return forbidden(format!("a {} token may not call {what}", caller.role.name())).into_response();
    }
    if let Some(refused) = app.certificate_refusal(&request) {
        return refused.into_response();
    }
    if caller.is_admin()
        && matches!(need, Need::Read | Need::Write)
        && let Err(failure) = app.tenant_exists(&caller.tenant)
    {
        return failure.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

impl App {
    /// 404 unless `name` is a tenant.
    pub(super) fn tenant_exists(&self, name: &str) -> Result<(), Failure> {
        match self.0.replica.state().tenant(name).map_err(Failure::from)? {
            Some(_) => Ok(()),
            None => Err(Failure::not_found(format!("tenant `{name}` not found"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_the_need_its_callers_expect() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(need(&get, "/v1/health"), Need::Open);
        assert_eq!(need(&get, "/v1/ready"), Need::Open);
        assert_eq!(need(&get, "/ui/{asset}"), Need::Open);
        assert_eq!(need(&get, "/v1/traffic"), Need::Read);
        assert_eq!(need(&get, "/v1/functions"), Need::Read);
        assert_eq!(need(&Method::DELETE, "/v1/functions/{name}"), Need::Write);
        assert_eq!(need(&post, "/v1/jobs/{id}/cancel"), Need::Write);
        assert_eq!(need(&get, "/v1/jobs/{id}/events"), Need::Read);
        assert_eq!(need(&get, "/v1/routes"), Need::Node);
        assert_eq!(need(&post, "/v1/raft"), Need::Admin);
        assert_eq!(need(&get, "/v1/tokens"), Need::Admin);
        assert_eq!(need(&Method::DELETE, "/v1/tenants/{name}"), Need::Admin);
    }

    #[test]
    fn digests_compare_whole() {
        assert!(same_digest("abcd", "abcd") && !same_digest("abcd", "abce") && !same_digest("ab", "abcd"));
    }
}
