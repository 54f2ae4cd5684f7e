//! Who may do what on a node: checked against the token hashes the route
//! table brings (the control plane is never asked on the request path, and
//! a node never holds a token).

use axum::http::{HeaderMap, StatusCode, header};
use wasmgrid_api::{Answer, Failure, Grant, Role, bearer_token, token_hash};

use crate::{Gateway, not_deployed_message};

impl Gateway {
    /// Checks what the request's token grants with `check`; the 401 to
    /// answer when it grants nothing.
    fn with_grant<T>(&self, headers: &HeaderMap, check: impl FnOnce(&Grant) -> Answer<T>) -> Answer<T> {
        let unauthorized = |message: String| Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let token = bearer_token(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
            .map_err(|why| unauthorized(format!("{why}: send `Authorization: Bearer TOKEN`")))?;
        let Some(grants) = self.grants.read().ok().and_then(|g| g.clone()) else {
            let message = "this node has not received its route table from the control plane yet; retry shortly";
            return Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message));
        };
        match grants.get(&token_hash(token)) {
            Some(grant) => check(grant),
            None => Err(unauthorized("invalid or revoked token".into())),
        }
    }

    /// Whether the caller may read `tenant`'s logs; the answer to give when
    /// not. Another tenant's logs are a 404 saying `hidden`, like anything
    /// this node has none of.
    pub(crate) fn log_reader(&self, headers: &HeaderMap, tenant: &str, hidden: impl FnOnce() -> String) -> Answer<()> {
        self.with_grant(headers, |grant| {
            if grant.role != Role::Admin && grant.tenant.as_deref() != Some(tenant) {
                return Err(Failure::not_found(hidden()));
            }
            if !grant.role.may_read_logs() {
                let message = format!("a {} token may not read logs", grant.role.name());
                return Err(Failure::forbidden(message));
            }
            Ok(())
        })
    }

    /// Whether the caller may call `tenant/name` (deployed `public` or
    /// not); the answer to give when not. Someone else's function, deployed
    /// or not, is a 404 like any unknown name.
    pub(crate) fn authorize(&self, headers: &HeaderMap, tenant: &str, name: &str, public: bool) -> Answer<()> {
        if public {
            return Ok(());
        }
        self.with_grant(headers, |grant| {
            let own = grant.role == Role::Admin || grant.tenant.as_deref() == Some(tenant);
            if !own {
                return Err(Failure::not_found(not_deployed_message(tenant, name)));
            }
            if !grant.role.may_invoke() {
                let message = format!("a {} token may not call functions", grant.role.name());
                return Err(Failure::forbidden(message));
            }
            Ok(())
        })
    }

    /// Admits the admin and nodes (to `/metrics` and `/v1/routes`).
    pub(crate) fn operator(&self, headers: &HeaderMap) -> Answer<()> {
        self.with_grant(headers, |grant| match grant.role {
            Role::Admin | Role::Node => Ok(()),
            role => Err(Failure::forbidden(format!("a {} token may not read a node's metrics or routes", role.name()))),
        })
    }
}
