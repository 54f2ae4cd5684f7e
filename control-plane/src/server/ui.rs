//! The dashboard at `/ui`: one page and its script and style, compiled
//! into the binary (no CDN, nothing fetched from elsewhere). The page and
//! assets are open; everything it shows comes from the `/v1` API with the
//! token the user signs in with, kept in the tab's session storage. A
//! strict Content-Security-Policy allows only this origin's script, style
//! and API.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use wasmgrid_api::Failure;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset_response(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Assets change with the binary: always ask.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /ui`: the page.
pub(super) async fn page() -> Response {
    asset_response("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{asset}`: its script and style.
pub(super) async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => asset_response("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => asset_response("text/css; charset=utf-8", STYLE),
        _ => Failure::not_found(format!("no such dashboard file: {name}")).into_response(),
    }
}
