//! [`Failure`]: the one error answer the control plane and the node
//! gateways make, `{"error": {"code", "message"}}` with its HTTP status
//! (what the [`Client`](crate::Client) turns back into an
//! [`ApiError`](crate::ApiError)).

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::{ErrorBody, ErrorDetail};

/// A handler's result: the answer, or the error answer to give instead.
pub type Answer<T> = Result<T, Failure>;

/// An error answer: its status, a short stable code for scripts and
/// metrics, and a message for people. `429` and `503` answers carry
/// `Retry-After: 1`: they say "busy", not "wrong".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
}

/// The code of an error answer, kept on the response's extensions so the
/// server's metrics count errors by kind without parsing bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCode(pub String);

impl Failure {
    /// An error answer with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Failure { status, code: code.into(), message: message.into() }
    }

    /// `400 bad_request`.
    pub fn bad(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `403 forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// `500 internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = self.code.into_owned();
        let body = ErrorBody { error: ErrorDetail { code: code.clone(), message: self.message } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.extensions_mut().insert(FailureCode(code));
        response
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {})", self.message, self.status.as_u16(), self.code)
    }
}
