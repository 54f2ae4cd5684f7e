//! The wasmgrid HTTP API as both sides see it.
//!
//! [`types`] holds every request and response body of the control plane's
//! `/v1` API and of a node's gateway, so the server, the node and the CLI
//! cannot disagree on a field. [`Client`] talks to a control plane given one
//! or more replica URLs: it moves on to the next replica when one cannot be
//! reached, and turns the JSON error bodies back into [`ApiError`]s.

mod client;
pub mod types;

pub use client::{ApiError, Client, normalize_url};
pub use types::*;

/// Checks a tenant, function or node name: 1 to 63 characters of `a-z`,
/// `0-9`, `-`, `_` and `.`, starting with a letter or digit, with no `..`.
/// Names become URL path segments and file names, so nothing else is
/// allowed. Returns what is wrong.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')) {
        return Err("may only contain a-z, 0-9, '-', '_' and '.'");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if name.contains("..") {
        return Err("must not contain '..'");
    }
    Ok(())
}
