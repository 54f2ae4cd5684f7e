//! The `nodes` and `cluster` commands.

use anyhow::Result;
use clap::Subcommand;

use crate::client::{ClientArgs, client, client_at, print_json, table, tokio_runtime};

#[derive(Subcommand, Debug)]
pub enum NodesCommand {
    /// List the nodes and whether they are alive.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Leader, term, log indexes and each replica's lag.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Hand leadership to another replica (admin token), e.g. before
    /// stopping the leader's machine; returns once it leads.
    TransferLeader {
        /// The replica id to lead.
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub fn nodes(command: NodesCommand) -> Result<()> {
    let NodesCommand::Ls { client: args } = command;
    let list = tokio_runtime()?.block_on(client(&args)?.nodes())?;
    if args.json {
        return print_json(&list);
    }
    let rows = list
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.state.name().into(),
                n.address.clone(),
                n.last_seen_ms.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                n.inflight.to_string(),
                n.invocations.to_string(),
                n.warm.len().to_string(),
                n.gpu.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["ID", "STATE", "ADDRESS", "LAST SEEN", "INFLIGHT", "CALLS", "WARM", "GPU"], rows);
    Ok(())
}

pub fn cluster(command: ClusterCommand) -> Result<()> {
    let args = match command {
        ClusterCommand::Status { client } => client,
        ClusterCommand::TransferLeader { id, client: args } => {
            let status = tokio_runtime()?.block_on(client(&args)?.transfer_leader(id))?;
            if args.json {
                return print_json(&status);
            }
            println!("replica {id} leads (term {})", status.term);
            return Ok(());
        }
    };
    let rt = tokio_runtime()?;
    let c = client(&args)?;
    let mut status = rt.block_on(c.cluster())?;
    // Lag is the leader's view: ask it when a follower answered.
    if status.role != "leader"
        && let Some(url) = &status.leader_url
        && let Ok(leader) = client_at(&args, std::slice::from_ref(url))
        && let Ok(s) = rt.block_on(leader.cluster())
    {
        status = s;
    }
    if args.json {
        return print_json(&status);
    }
    println!("replica {} ({}) answered", status.id, status.role);
    match status.leader {
        Some(l) => println!("leader:      replica {l} at {}", status.leader_url.as_deref().unwrap_or("?")),
        None => println!("leader:      none (no quorum)"),
    }
    println!("term:        {}", status.term);
    println!("commit:      {}", status.commit);
    println!("applied:     {}", status.applied);
    println!("first index: {}", status.first_index);
    println!();
    let rows = status
        .members
        .iter()
        .map(|m| {
            let role = if Some(m.id) == status.leader { "leader" } else { "follower" };
            vec![
                m.id.to_string(),
                role.into(),
                m.url.clone(),
                m.matched.map_or("-".into(), |x| x.to_string()),
                m.lag.map_or("-".into(), |x| x.to_string()),
            ]
        })
        .collect();
    table(&["ID", "ROLE", "URL", "MATCHED", "LAG"], rows);
    Ok(())
}
