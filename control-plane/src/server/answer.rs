//! How the API answers failures: the state machine's and consensus errors
//! as [`Failure`]s, and the helpers handlers share for bodies and names.

use axum::extract::Path;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wasmgrid_api::{Answer, Failure, check_name};

use crate::replica::ProposeError;
use crate::state::{MAX_MODULE_BYTES, StateError};

/// `503 no_quorum`: the control plane cannot commit or read right now.
pub(super) fn no_quorum(message: impl Into<String>) -> Failure {
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", message)
}

/// `429 quota_exceeded`: a tenant's `what` quota of `limit` would be passed.
pub(super) fn quota(tenant: &str, what: &str, limit: u64, message: impl std::fmt::Display) -> Failure {
    Failure::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!("{message}: over tenant `{tenant}`'s `{what}` quota of {limit}"),
    )
}

/// The state machine's errors, as the API answers them.
pub(super) fn state_failure(e: StateError) -> Failure {
    let message = e.to_string();
    match e {
        StateError::InvalidName { .. } | StateError::ChecksumMismatch { .. } => Failure::bad(message),
        StateError::ModuleTooLarge { .. } => Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message),
        StateError::ModuleNotFound { .. }
        | StateError::ArtifactNotFound { .. }
        | StateError::FunctionNotFound { .. }
        | StateError::VersionNotFound { .. }
        | StateError::JobNotFound { .. }
        | StateError::TenantNotFound { .. }
        | StateError::TokenNotFound { .. }
        | StateError::TriggerNotFound { .. } => Failure::not_found(message),
        StateError::TenantExists { .. } | StateError::DefaultTenant | StateError::Conflict(_) => {
            Failure::new(StatusCode::CONFLICT, "conflict", message)
        }
        StateError::Storage(_) => Failure::internal(message),
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        state_failure(e)
    }
}

impl From<ProposeError> for Failure {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::State(e) => e.into(),
            ProposeError::NoLeader => no_quorum(
                "no quorum: the control plane has no leader (a majority of replicas must be up and connected)",
            ),
            ProposeError::Timeout(t) => no_quorum(format!(
                "no quorum: the request was not committed within {t:?} (a majority of replicas must be up)"
            )),
            ProposeError::Stopped(reason) => Failure::internal(format!("the replica stopped: {reason}")),
            ProposeError::NotLeader => no_quorum("this replica is not the leader (leadership moved; retry)"),
            e @ ProposeError::NotAVoter(_) => Failure::bad(e.to_string()),
            ProposeError::Membership(message) => Failure::new(StatusCode::CONFLICT, "membership", message),
            e @ ProposeError::MembershipBusy => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "membership_busy", e.to_string())
            }
        }
    }
}

pub(super) fn rejected(status: StatusCode, text: String) -> Failure {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Failure::new(status, "too_large", format!("the body is over the limit of {MAX_MODULE_BYTES} bytes"))
    } else {
        Failure::bad(text)
    }
}

pub(super) fn json_body<T>(body: Result<axum::Json<T>, JsonRejection>) -> Answer<T> {
    body.map(|b| b.0).map_err(|r| rejected(r.status(), format!("malformed JSON body: {}", r.body_text())))
}

pub(super) fn path_name(path: Result<Path<String>, PathRejection>) -> Answer<String> {
    let Path(name) = path.map_err(|r| Failure::bad(r.body_text()))?;
    check_name(&name).map_err(|reason| Failure::bad(format!("invalid name `{name}`: {reason}")))?;
    Ok(name)
}

pub(super) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    (status, axum::Json(value)).into_response()
}

pub(super) fn poisoned<T>(_: T) -> Failure {
    Failure::internal("a lock was poisoned")
}
