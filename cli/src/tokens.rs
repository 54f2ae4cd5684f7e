//! Token files: where the CLI finds its token, and the admin token file
//! made at bootstrap.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The admin token's file name in a control plane's (or `wasmgrid dev`'s)
/// data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Where the CLI looks for a token last: what `wasmgrid dev` writes when
/// started in the current directory.
const DEV_TOKEN: &str = ".wasmgrid/admin-token";

/// Reads a token file: one line, surrounding whitespace ignored.
pub fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!("{} is readable by other users; `chmod 600` it", path.display());
    }
    Ok(token.to_string())
}

/// The token a client sends: `WASMGRID_TOKEN`, else the file `file`
/// (`--token-file`), else `.wasmgrid/admin-token` when it exists.
pub fn client_token(file: Option<&Path>) -> Result<Option<String>> {
    if let Ok(token) = std::env::var("WASMGRID_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(Some(token.trim().to_string()));
    }
    if let Some(file) = file {
        return read_token_file(file).map(Some);
    }
    let dev = Path::new(DEV_TOKEN);
    if dev.exists() { read_token_file(dev).map(Some) } else { Ok(None) }
}

/// The admin token kept in `path`: read if the file exists, else made and
/// written there (mode 0600) when `create` allows, the one time a cluster
/// is bootstrapped. Never printed or logged.
pub fn admin_token(path: &Path, create: bool) -> Result<String> {
    if path.exists() {
        return read_token_file(path);
    }
    if !create {
        bail!(
            "no admin token at {}: a control plane of several replicas needs the same token file on each (make one with `wasmgrid tokens generate > FILE`)",
            path.display()
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let token = wasmgrid_api::new_token().context("reading the OS random source")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the admin token file {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("admin token written to {} (keep it secret; the CLI reads it from there)", path.display());
    Ok(token)
}

/// Where a data directory keeps its admin token.
pub fn admin_token_path(data: &Path) -> PathBuf {
    data.join(ADMIN_TOKEN_FILE)
}
