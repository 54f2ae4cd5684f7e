//! `GET /metrics`: the replica's Raft state and latencies, and (on the
//! leader) jobs, tasks and nodes, in the Prometheus text format. Each
//! replica answers for itself; scrape every replica.

use axum::extract::State as Shared;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wasmgrid_api::*;

use super::answer::*;
use super::*;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn by_label<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) {
    let family = Family::<L, Gauge>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    registry.register(name, help, family);
}

pub(super) async fn metrics(Shared(app): Shared<App>) -> Answer<Response> {
    let status = app.status();
    let replica = &app.0.replica;
    let mut r = Registry::with_prefix("wasmgrid");
    gauge(&mut r, "raft_term", "The current Raft term", status.term);
    gauge(&mut r, "raft_leader", "The leader this replica knows of (0: none)", status.leader);
    gauge(&mut r, "raft_is_leader", "1 on the leader", u64::from(status.is_leader));
    gauge(&mut r, "raft_commit_index", "Highest committed log index", status.commit);
    gauge(&mut r, "raft_applied_index", "Highest log index applied to the state", status.applied);
    gauge(&mut r, "raft_apply_lag", "Committed entries not applied yet", status.commit.saturating_sub(status.applied));
    gauge(&mut r, "raft_first_index", "First index still in the log", status.first_index);
    gauge(&mut r, "raft_voters", "Voting replicas", status.voters.len() as u64);
    gauge(&mut r, "raft_learners", "Replicas catching up before they vote", status.learners.len() as u64);
    gauge(&mut r, "raft_snapshots_installed", "Snapshots installed since start", status.snapshots_installed);
    gauge(&mut r, "raft_stopped", "1 once the Raft loop has ended", u64::from(status.stopped.is_some()));
    let lag = status.progress.iter().filter(|(id, _)| *id != status.id);
    let lag = lag.map(|(id, matched)| (PeerLabels { peer: id.to_string() }, status.commit.saturating_sub(*matched)));
    by_label(&mut r, "raft_peer_lag", "On the leader: entries each peer is behind the commit index", lag);
    let m = replica.metrics();
    r.register("raft_fsync_seconds", "Each flush of the log and state to disk", m.fsync.clone());
    r.register("raft_proposal_seconds", "Each write, from its arrival here until applied", m.proposals.clone());
    r.register("raft_proposals_failed", "Writes that failed", m.proposals_failed.clone());

    let mut jobs: BTreeMap<&'static str, u64> =
        [JobState::Running, JobState::Committing, JobState::Succeeded, JobState::Failed, JobState::Cancelled]
            .into_iter()
            .map(|s| (s.name(), 0))
            .collect();
    for job in replica.state().jobs(None)? {
        *jobs.entry(job.state.name()).or_default() += 1;
    }
    let jobs = jobs.into_iter().map(|(state, n)| (StateLabels { state: state.into() }, n));
    by_label(&mut r, "jobs", "Batch jobs by state", jobs);
    let (pending, running) = app.0.scheduler.lock().map_err(poisoned)?.task_counts();
    let tasks = [("pending", pending), ("running", running)].map(|(s, n)| (StateLabels { state: s.into() }, n));
    by_label(&mut r, "tasks", "On the leader: tasks of the running stages by state", tasks);
    let alive = {
        let nodes = app.0.nodes.lock().map_err(poisoned)?;
        nodes.values().filter(|(at, _)| at.elapsed() < NODE_LIVENESS).count() as u64
    };
    gauge(&mut r, "nodes_alive", "On the leader: nodes whose last heartbeat is recent", alive);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r)
        .map_err(|e| Failure::internal(format!("encoding metrics: {e}")))?;
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
