//! What every client command shares: the control plane's URL and the
//! caller's token and tenant, the async runtime, and printing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use wasmgrid_api::{Client, Excerpt, NodeState};

use crate::tokens;

const DEFAULT_URL: &str = "http://127.0.0.1:7400";

/// Where the control plane is, who is asking, and how to print. The token
/// comes from `WASMGRID_TOKEN`, else `--token-file`, else
/// `.wasmgrid/admin-token` (what `wasmgrid dev` writes).
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Control-plane URL(s), comma-separated; any replica will do.
    #[arg(long, env = "WASMGRID_URL", default_value = DEFAULT_URL, value_delimiter = ',')]
    pub(crate) url: Vec<String>,
    /// A file holding the token to send.
    #[arg(long, env = "WASMGRID_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// The tenant to act on (admin token; a tenant's token acts on its own).
    #[arg(long, env = "WASMGRID_TENANT")]
    pub(crate) tenant: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    // One worker more than cores: a node's gateway runs short calls on all
    // but one worker, so one is always free for I/O and other functions.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores + 1)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn client(args: &ClientArgs) -> Result<Client> {
    client_at(args, &args.url)
}

/// A client of `urls` with the token and tenant of `args`.
pub(crate) fn client_at(args: &ClientArgs, urls: &[String]) -> Result<Client> {
    client_timed(args, urls, Duration::from_secs(30))
}

/// [`client_at`] whose requests may take up to `timeout`.
pub(crate) fn client_timed(args: &ClientArgs, urls: &[String], timeout: Duration) -> Result<Client> {
    let token = tokens::client_token(args.token_file.as_deref())?;
    Ok(Client::new(urls, timeout)?.with_token(token).with_tenant(args.tenant.clone()))
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as a table with aligned columns.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub(crate) fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// The tenant the client acts for, and the nodes to read logs from: `node`
/// only, or every alive node (id and URL).
pub fn log_sources(
    c: &Client,
    rt: &tokio::runtime::Runtime,
    args: &ClientArgs,
    node: Option<&String>,
) -> Result<(String, Vec<(String, String)>)> {
    let tenant = match &args.tenant {
        Some(t) => t.clone(),
        None => rt.block_on(c.whoami()).context("asking the control plane whose token this is")?.tenant,
    };
    let nodes = match node {
        Some(url) => vec![(url.clone(), url.clone())],
        None => rt
            .block_on(c.nodes())
            .context("finding the nodes")?
            .nodes
            .into_iter()
            .filter(|n| n.state == NodeState::Alive)
            .map(|n| (n.id, n.address))
            .collect(),
    };
    Ok((tenant, nodes))
}

/// Prints what one invocation logged, each line after `head`, then its
/// error's first line.
pub fn print_guest_output(head: &str, output: &Excerpt) {
    let Excerpt { error, lines, dropped, stdout, stderr } = output;
    for line in lines {
        println!("{head} {:5} {}", line.level, line.message);
    }
    if *dropped > 0 {
        println!("{head} ({dropped} more lines dropped)");
    }
    for (stream, text) in [("stdout", stdout), ("stderr", stderr)] {
        for line in text.lines() {
            println!("{head} {stream} {line}");
        }
    }
    if let Some(error) = error {
        println!("{head} failed: {}", error.lines().next().unwrap_or_default());
    }
}
