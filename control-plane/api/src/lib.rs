//! The wasmgrid HTTP API as both sides see it.
//!
//! [`types`] holds every request and response body of the control plane's
//! `/v1` API and of a node's gateway, so the server, the node and the CLI
//! cannot disagree on a field. [`Client`] talks to a control plane given one
//! or more replica URLs: it moves on to the next replica when one cannot be
//! reached, and turns the JSON error bodies back into [`ApiError`]s.
//! [`serve`] is the accept loop both servers listen with; [`tls`] their
//! certificates and every client's trust; [`Failure`] the error answer
//! both make. [`JobIo`] is how the control
//! plane reaches job data without reading it itself.

mod client;
mod failure;
mod job_io;
pub mod serve;
pub mod tls;
pub mod trace;
pub mod types;

pub use client::{ApiError, Client, normalize_url, segment};
pub use failure::{Answer, Failure, FailureCode};
pub use job_io::{DEFAULT_PARTITION_SIZE, JobIo, JobIoError};
pub use types::*;

/// Largest artifact, in bytes.
pub const MAX_ARTIFACT_BYTES: u64 = 4 << 30;

/// Streams `response`'s body into a new file at `path`, hashing it on the
/// way and syncing it to disk; more than `limit` bytes is an error (what
/// was written stays for the caller to remove). Returns the body's sha256
/// (hex) and length: the caller checks them against what it asked for.
pub async fn download(
    mut response: reqwest::Response,
    path: &std::path::Path,
    limit: u64,
) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path).await?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(std::io::Error::other)? {
        len += chunk.len() as u64;
        if len > limit {
            return Err(std::io::Error::other(format!("the body is longer than {limit} bytes")));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    Ok((hex::encode(hasher.finalize()), len))
}

/// The sha256 (hex) and length of a file, read a megabyte at a time.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// A function kind's name after "a" or "an": "a scorer", "an aggregator".
pub fn a(kind: &str) -> String {
    let vowel = kind.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {kind}", if vowel { "an" } else { "a" })
}

use sha2::{Digest, Sha256};

/// What one instance slot of a node's pool holds. A component over these
/// cannot be instantiated on any node, so the control plane refuses it at
/// upload, naming the limit.
pub mod pool {
    /// Elements of one table.
    pub const TABLE_ELEMENTS: u64 = 20_000;
    /// Tables of one component instance (all its core instances).
    pub const TABLES_PER_COMPONENT: u32 = 16;
    /// Linear memories of one component instance.
    pub const MEMORIES_PER_COMPONENT: u32 = 2;
    /// Core instances of one component instance.
    pub const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
}

/// The header an admin token names the tenant it acts on with (the
/// `default` tenant without it). A tenant token always acts on its own.
pub const TENANT_HEADER: &str = "wasmgrid-tenant";

/// The prefix of every token wasmgrid makes, so a leaked one is easy to
/// recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "wgt_";

/// A new random token: the prefix and 32 bytes from the OS random source,
/// hex.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(secret)))
}

/// The sha256 of a token, hex: what the control plane stores and nodes
/// compare against, never the token itself.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token in an `Authorization: Bearer TOKEN` header value (`None`:
/// no header), or what is wrong with it.
pub fn bearer_token(authorization: Option<&[u8]>) -> Result<&str, &'static str> {
    let value = authorization.ok_or("missing token")?;
    let value = std::str::from_utf8(value).map_err(|_| "malformed Authorization header")?;
    let (scheme, token) = value.split_once(' ').ok_or("the Authorization header must be `Bearer TOKEN`")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("the Authorization header must be `Bearer TOKEN`");
    }
    // RFC 6750's token characters: nothing else can be one of ours.
    if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)) {
        return Err("the token has characters no token has");
    }
    Ok(token)
}

/// The public id of the token with hash `sha256`: enough to name it for
/// `tokens revoke`, useless to authenticate with.
pub fn token_id(sha256: &str) -> String {
    format!("tok_{}", &sha256[..sha256.len().min(12)])
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_strictly() {
        assert!(bearer_token(None).is_err());
        for bad in ["wgt_x", "Basic abc", "Bearer ", "Bearer"] {
            assert!(bearer_token(Some(bad.as_bytes())).is_err(), "{bad:?}");
        }
        assert!(bearer_token(Some(b"Bearer \xff")).is_err());
        // Found by the api_json fuzz target: a second token after a control
        // character was taken as part of the first.
        assert!(bearer_token(Some(b"Bearer wgt_bcd\x0bBearer wgt_bcdefef")).is_err());
        assert!(bearer_token(Some(b"Bearer wgt_a b")).is_err());
        assert_eq!(bearer_token(Some(b"bearer wgt_abc")), Ok("wgt_abc"));
    }

    #[test]
    fn tokens_are_random_and_ids_do_not_reveal_them() -> Result<(), getrandom::Error> {
        let (a, b) = (new_token()?, new_token()?);
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let id = token_id(&token_hash(&a));
        assert!(id.starts_with("tok_") && !a.contains(&id[4..]));
        Ok(())
    }
}
