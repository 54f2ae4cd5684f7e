//! Changing the replica set: adding a replica (as a learner, promoted to a
//! voter once it has caught up), removing one, a new machine joining, and
//! the start-up check that keeps a replica whose log went back in time
//! (a lost, damaged or restored data directory) from rejoining under its
//! old identity.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use wasmgrid_api::*;

use super::answer::*;
use super::*;
use crate::replica::Membership;

/// A learner is promoted once it is at most this many entries behind the
/// leader's commit index.
const PROMOTE_LAG: u64 = 64;

/// `POST /v1/cluster/replicas` (`{"id": N, "url": "..."}`, admin): adds
/// replica `N` as a learner and answers once the change is committed; the
/// leader promotes it to a voter when it has caught up. Start the new
/// replica with an empty `--data` and `--join`.
pub(super) async fn add_replica(
    Shared(app): Shared<App>,
    body: Result<axum::Json<AddReplica>, JsonRejection>,
) -> Answer<Response> {
    let AddReplica { id, url } = json_body(body)?;
    let url = replica_url(&url, app.0.tls)?;
    app.0.replica.change_membership(Membership::AddLearner { id, url: url.clone() }).await?;
    tracing::info!(replica = id, %url, "replica added as a learner");
    Ok(cluster::cluster(Shared(app)).await)
}

/// `DELETE /v1/cluster/replicas/{id}` (admin): removes replica `id`; once
/// it learns of it, the removed replica stops. The leader cannot remove
/// itself: move leadership first (the CLI does).
pub(super) async fn remove_replica(Shared(app): Shared<App>, UrlPath(id): UrlPath<u64>) -> Answer<Response> {
    app.0.replica.change_membership(Membership::Remove { id }).await?;
    tracing::info!(replica = id, "replica removed");
    Ok(cluster::cluster(Shared(app)).await)
}

/// A replica's base URL: `http(s)://HOST:PORT`, the scheme this cluster
/// serves.
fn replica_url(url: &str, tls: bool) -> Answer<String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Failure::bad(format!("replica URL `{url}`: {e}")))?;
    let scheme = if tls { "https" } else { "http" };
    if parsed.scheme() != scheme || parsed.host_str().is_none() {
        return Err(Failure::bad(format!(
            "replica URL `{url}`: this cluster's replicas are reached at {scheme}://HOST:PORT"
        )));
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(Failure::bad(format!("replica URL `{url}`: a base URL has no path")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// On the leader: promotes learners that have caught up, one at a time.
pub(super) async fn promote_learners(app: App) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = app.status();
        if status.stopped.is_some() {
            return;
        }
        if !status.is_leader || status.learners.is_empty() {
            continue;
        }
        let caught_up = status.learners.iter().copied().find(|id| {
            let matched = status.progress.iter().find(|(p, _)| p == id).map_or(0, |(_, m)| *m);
            matched > 0 && status.commit.saturating_sub(matched) <= PROMOTE_LAG
        });
        let Some(id) = caught_up else { continue };
        match app.0.replica.change_membership(Membership::Promote { id }).await {
            Ok(()) => tracing::info!(replica = id, "learner caught up; promoted to a voter"),
            Err(e) => tracing::debug!(replica = id, "not promoted yet: {e}"),
        }
    }
}

/// A replica that has had no leader for a while asks the others whether it
/// is still a member, and stops as removed when the leader says it is not:
/// the leader stops sending to a replica as soon as it has removed it, so
/// the removed one may never see its removal in its own log.
pub(super) async fn watch_removal(app: App, token: String) {
    let mut leaderless_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = app.status();
        if status.stopped.is_some() {
            return;
        }
        if status.leader != 0 {
            leaderless_since = None;
            continue;
        }
        let since = *leaderless_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_secs(3) {
            continue;
        }
        // Ask again 3 s later at the soonest.
        leaderless_since = Some(Instant::now());
        let views = views_of_others(&app.0.http, &status.members, status.id, &token).await;
        let removed = views.into_iter().find(|s| s.role == "leader" && !s.members.iter().any(|m| m.id == status.id));
        if let Some(leader) = removed {
            tracing::info!(
                replica = status.id,
                leader = leader.id,
                "the leader no longer counts this replica as a member"
            );
            app.0.replica.leave();
            return;
        }
    }
}

/// Every replica of `members` but `this`, asked at once for its view of the
/// cluster: the views of those that answered.
async fn views_of_others(
    http: &reqwest::Client,
    members: &BTreeMap<u64, String>,
    this: u64,
    token: &str,
) -> Vec<ClusterStatus> {
    let others = members.iter().filter(|(id, _)| **id != this).map(|(_, url)| cluster_status(http, url, token));
    futures_util::future::join_all(others).await.into_iter().filter_map(Result::ok).collect()
}

/// Asks the replica at `url` for its view of the cluster.
async fn cluster_status(http: &reqwest::Client, url: &str, token: &str) -> Result<ClusterStatus, String> {
    let response = http
        .get(format!("{}/v1/cluster", url.trim_end_matches('/')))
        .bearer_auth(token)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    match response.status() {
        StatusCode::OK => response.json().await.map_err(|e| format!("{url}: {e}")),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(format!("{url} refused the admin token: every replica of a cluster needs the same one"))
        }
        status => Err(format!("{url} answered {status}")),
    }
}

/// The URLs of the cluster a new machine joins, from the first `--join`
/// replica that answers; refused when the cluster has not added this
/// replica yet.
pub(super) async fn join(http: &reqwest::Client, config: &Config) -> Result<BTreeMap<u64, String>, StartError> {
    let mut errors = Vec::new();
    for url in &config.join {
        let status = match cluster_status(http, url, &config.admin_token).await {
            Ok(status) => status,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let members: BTreeMap<u64, String> = status.members.iter().map(|m| (m.id, m.url.clone())).collect();
        if !members.contains_key(&config.id) {
            let ids: Vec<String> = members.keys().map(u64::to_string).collect();
            return Err(StartError::Config(format!(
                "replica {id} is not a member of the cluster at {url} (replicas {}): add it first with \
                 `wasmgrid cluster add-replica {id}=URL`, then start it again",
                ids.join(", "),
                id = config.id
            )));
        }
        return Ok(members);
    }
    Err(StartError::Config(format!("no --join replica answered: {}", errors.join("; "))))
}

/// Refuses to start a replica whose log ends before the last entry the
/// leader knows it acknowledged: its data directory was lost, rolled back
/// by damage, or restored from an older copy, and starting it would make
/// raft-rs stop it (or worse, count a vote it no longer remembers). With
/// no leader to ask (a whole cluster starting), it starts.
pub(super) async fn check_log(
    http: &reqwest::Client,
    config: &Config,
    peers: &BTreeMap<u64, String>,
    last_index: u64,
) -> Result<(), StartError> {
    let token = &config.admin_token;
    let views = views_of_others(http, peers, config.id, token).await;
    // The leader's view holds the progress; a follower's names the leader.
    let mut leaders: Vec<ClusterStatus> = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for view in views {
        match view.role.as_str() {
            "leader" => leaders.push(view),
            _ => named.extend(view.leader_url),
        }
    }
    let asked = futures_util::future::join_all(named.iter().map(|url| cluster_status(http, url, token))).await;
    leaders.extend(asked.into_iter().filter_map(Result::ok).filter(|s| s.role == "leader"));
    let Some(leader) = leaders.into_iter().max_by_key(|s| s.term) else { return Ok(()) };
    let matched = leader.members.iter().find(|m| m.id == config.id).and_then(|m| m.matched).unwrap_or(0);
    if matched > last_index {
        return Err(StartError::Behind { id: config.id, last_index, matched, leader: leader.id });
    }
    Ok(())
}
