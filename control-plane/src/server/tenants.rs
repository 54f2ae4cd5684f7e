//! Tenants and tokens, and who the caller is.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use wasmgrid_api::*;

use super::answer::*;
use super::*;

pub(super) async fn whoami(Extension(caller): Extension<Caller>) -> Response {
    json(StatusCode::OK, &Identity { tenant: caller.tenant, role: caller.role, token: caller.token })
}

pub(super) fn tenant_info(t: TenantRecord) -> TenantInfo {
    TenantInfo { name: t.name, created_at: t.created_at, quotas: t.quotas }
}

impl App {
    /// A tenant's quotas (none for an unknown tenant).
    pub(super) fn quotas(&self, tenant: &str) -> Answer<Quotas> {
        Ok(self.0.replica.state().tenant(tenant)?.map(|t| t.quotas).unwrap_or_default())
    }
}

pub(super) fn token_info(t: TokenRecord) -> TokenInfo {
    TokenInfo { id: token_id(&t.sha256), tenant: t.tenant, role: t.role, created_at: t.created_at }
}

pub(super) async fn list_tenants(Shared(app): Shared<App>) -> Answer<Response> {
    app.barrier().await?;
    let tenants = app.0.replica.state().tenants()?.into_iter().map(tenant_info).collect();
    Ok(json(StatusCode::OK, &TenantList { tenants }))
}

pub(super) async fn create_tenant(
    Shared(app): Shared<App>,
    body: Result<axum::Json<TenantRequest>, JsonRejection>,
) -> Answer<Response> {
    let request = json_body(body)?;
    check_name(&request.name).map_err(|reason| Failure::bad(format!("invalid name `{}`: {reason}", request.name)))?;
    let quotas = Quotas::tenant_defaults().merged(&request.quotas);
    app.propose(Command::CreateTenant { name: request.name.clone(), quotas }).await?;
    let created = app.0.replica.state().tenant(&request.name)?.ok_or_else(|| Failure::internal("tenant vanished"))?;
    tracing::info!(tenant = %created.name, "tenant created");
    Ok(json(StatusCode::CREATED, &tenant_info(created)))
}

pub(super) async fn delete_tenant(
    Shared(app): Shared<App>,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let before = app.0.replica.state().tenant(&name)?;
    app.propose(Command::DeleteTenant { name: name.clone() }).await?;
    tracing::info!(tenant = %name, "tenant removed");
    let gone = before.unwrap_or(TenantRecord { name, created_at: 0, quotas: Quotas::default(), gpu_exhausted: false });
    Ok(json(StatusCode::OK, &tenant_info(gone)))
}

pub(super) async fn set_quotas(
    Shared(app): Shared<App>,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<Quotas>, JsonRejection>,
) -> Answer<Response> {
    let name = path_name(name)?;
    let quotas = json_body(body)?;
    app.propose(Command::SetQuotas { name: name.clone(), quotas }).await?;
    let record = app.0.replica.state().tenant(&name)?.ok_or_else(|| Failure::internal("tenant vanished"))?;
    tracing::info!(tenant = %name, quotas = ?record.quotas, "quotas set");
    Ok(json(StatusCode::OK, &tenant_info(record)))
}

pub(super) async fn list_tokens(Shared(app): Shared<App>) -> Answer<Response> {
    app.barrier().await?;
    let mut tokens: Vec<TokenInfo> = app.0.replica.state().tokens()?.into_iter().map(token_info).collect();
    tokens.sort_by(|a, b| (&a.tenant, a.created_at).cmp(&(&b.tenant, b.created_at)));
    Ok(json(StatusCode::OK, &TokenList { tokens }))
}

pub(super) async fn create_token(
    Shared(app): Shared<App>,
    body: Result<axum::Json<TokenRequest>, JsonRejection>,
) -> Answer<Response> {
    let request = json_body(body)?;
    match (request.role, &request.tenant) {
        (Role::Admin, _) => return Err(Failure::bad("there is one admin token, made at bootstrap")),
        (Role::Node, Some(_)) => return Err(Failure::bad("a node token belongs to no tenant")),
        (Role::Full | Role::ReadOnly | Role::InvokeOnly, None) => {
            return Err(Failure::bad(format!("a {} token needs a tenant", request.role.name())));
        }
        _ => {}
    }
    let token = new_token().map_err(|e| Failure::internal(format!("no randomness for a token: {e}")))?;
    let sha256 = token_hash(&token);
    app.propose(Command::CreateToken { sha256: sha256.clone(), tenant: request.tenant, role: request.role }).await?;
    let record = app.0.replica.state().token(&sha256)?.ok_or_else(|| Failure::internal("token vanished"))?;
    let info = token_info(record);
    tracing::info!(token = %info.id, tenant = ?info.tenant, role = info.role.name(), "token created");
    Ok(json(StatusCode::CREATED, &NewToken { token, info }))
}

pub(super) async fn revoke_token(
    Shared(app): Shared<App>,
    id: Result<Path<String>, PathRejection>,
) -> Answer<Response> {
    let Path(id) = id.map_err(|r| Failure::bad(r.body_text()))?;
    app.barrier().await?;
    let record = app
        .0
        .replica
        .state()
        .tokens()?
        .into_iter()
        .find(|t| token_id(&t.sha256) == id)
        .ok_or_else(|| StateError::TokenNotFound { id: id.clone() })?;
    app.propose(Command::RevokeToken { sha256: record.sha256.clone() }).await?;
    tracing::info!(token = %id, "token revoked");
    Ok(json(StatusCode::OK, &token_info(record)))
}
