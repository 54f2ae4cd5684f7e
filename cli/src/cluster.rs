//! The `nodes` and `cluster` commands.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Subcommand;
use wasmgrid_api::{Client, ClusterStatus};

use crate::client::{ClientArgs, client, client_at, print_json, table, tokio_runtime};
use crate::units;

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
    /// Add a replica (admin token). It joins as a learner, catches up from
    /// a snapshot and the log, then the leader promotes it to a voter;
    /// waits for that. Start it with an empty --data and `--join URL`.
    AddReplica {
        /// The new replica as ID=URL (the URL the others reach it at).
        #[arg(value_parser = crate::serve::parse_peer)]
        replica: (u64, String),
        /// Return once it is added, without waiting for it to vote.
        #[arg(long)]
        no_wait: bool,
        /// Longest to wait for it to vote.
        #[arg(long, default_value = "5m", value_parser = units::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a replica (admin token); when it leads, leadership moves to
    /// the most caught-up other voter first. A removed replica that is
    /// still running stops by itself.
    RemoveReplica {
        /// The replica id.
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
        ClusterCommand::AddReplica { replica: (id, url), no_wait, timeout, client: args } => {
            return add_replica(&args, id, &url, (!no_wait).then_some(timeout));
        }
        ClusterCommand::RemoveReplica { id, client: args } => return remove_replica(&args, id),
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
    let status = rt.block_on(leader_view(&args, &c))?;
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
            vec![
                m.id.to_string(),
                m.role.clone(),
                m.url.clone(),
                m.matched.map_or("-".into(), |x| x.to_string()),
                m.lag.map_or("-".into(), |x| x.to_string()),
            ]
        })
        .collect();
    table(&["ID", "ROLE", "URL", "MATCHED", "LAG"], rows);
    Ok(())
}

/// The cluster as the leader sees it (with each replica's progress), or as
/// the replica that answered does when the leader cannot be asked.
async fn leader_view(args: &ClientArgs, c: &Client) -> Result<ClusterStatus> {
    let status = c.cluster().await?;
    if status.role != "leader"
        && let Some(url) = &status.leader_url
        && let Ok(leader) = client_at(args, std::slice::from_ref(url))
        && let Ok(s) = leader.cluster().await
    {
        return Ok(s);
    }
    Ok(status)
}

fn add_replica(args: &ClientArgs, id: u64, url: &str, wait: Option<Duration>) -> Result<()> {
    let rt = tokio_runtime()?;
    let c = client(args)?;
    let status = rt.block_on(c.add_replica(id, url))?;
    let others: Vec<String> = status.members.iter().filter(|m| m.id != id).map(|m| m.url.clone()).collect();
    eprintln!(
        "replica {id} added as a learner; start it with an empty data directory:\n  \
         wasmgrid control-plane --id {id} --data DIR --listen ADDR --admin-token-file FILE --join {}",
        others.join(",")
    );
    let Some(timeout) = wait else {
        return if args.json { print_json(&status) } else { Ok(()) };
    };
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Ok(status) = rt.block_on(leader_view(args, &c))
            && let Some(member) = status.members.iter().find(|m| m.id == id)
        {
            if member.role != "learner" {
                if args.json {
                    return print_json(&status);
                }
                println!("replica {id} votes (term {}, commit {})", status.term, status.commit);
                return Ok(());
            }
            let progress =
                format!("replica {id} is catching up: matched {} of {}", member.matched.unwrap_or(0), status.commit);
            if progress != last {
                eprintln!("{progress}");
                last = progress;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "replica {id} did not catch up within {timeout:?}: is it running with --join, and can the leader reach {url}? \
                 (it stays a learner; remove it with `wasmgrid cluster remove-replica {id}`)"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn remove_replica(args: &ClientArgs, id: u64) -> Result<()> {
    let rt = tokio_runtime()?;
    let c = client(args)?;
    let status = rt.block_on(leader_view(args, &c))?;
    if status.leader == Some(id) {
        let next = status
            .members
            .iter()
            .filter(|m| m.id != id && m.role == "follower")
            .max_by_key(|m| m.matched.unwrap_or(0))
            .map(|m| m.id);
        let Some(next) = next else { bail!("replica {id} is the only voter: a cluster needs one") };
        rt.block_on(c.transfer_leader(next))?;
        eprintln!("replica {next} leads now");
    }
    let status = rt.block_on(c.remove_replica(id))?;
    if args.json {
        return print_json(&status);
    }
    println!("replica {id} removed; {} replicas remain", status.members.len());
    Ok(())
}
