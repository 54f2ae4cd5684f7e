//! The commit driver: the leader publishes each job whose tasks all have
//! a winner (through [`JobIo`]), or cleans up after one that failed or was
//! cancelled, and records the outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use wasmgrid_api::*;

use super::*;
use crate::state::jobs::range_len;

pub(super) async fn drive_once(app: &App) -> Answer<()> {
    // Node liveness: a fresh leader has heard no heartbeats yet.
    let fresh = app.0.leader_since.lock().map_err(poisoned)?.is_none_or(|t| t.elapsed() < NODE_LIVENESS);
    if !fresh {
        let beats: HashMap<String, Instant> =
            app.0.nodes.lock().map_err(poisoned)?.iter().map(|(id, (at, _))| (id.clone(), *at)).collect();
        let alive = |node: &str| beats.get(node).is_some_and(|at| at.elapsed() < NODE_LIVENESS);
        if app.scheduler().await?.requeue_lost(&alive) > 0 {
            app.0.jobs_changed.notify_waiters();
        }
    }

    let io = app.job_io()?.clone();
    let state = app.0.replica.state();
    let candidates: Vec<JobRecord> = state
        .jobs(None)?
        .into_iter()
        .filter(|j| j.state == JobState::Committing || (j.state.is_final() && j.state != JobState::Succeeded))
        .collect();
    for job in candidates {
        {
            let mut s = app.0.scheduler.lock().map_err(poisoned)?;
            if !s.finishing.insert(job.id.clone()) {
                continue;
            }
        }
        let app = app.clone();
        let io = io.clone();
        tokio::spawn(async move {
            let id = job.id.clone();
            if job.state == JobState::Committing {
                finish(&app, io, job).await;
            } else {
                // Failed or cancelled: clean up once per leader.
                let _ = tokio::task::spawn_blocking(move || io.abort(&job.output, &job.id)).await;
                return;
            }
            if let Ok(mut s) = app.0.scheduler.lock() {
                s.finishing.remove(&id);
            }
        });
    }
    Ok(())
}

/// Publishes a job and records the outcome.
async fn finish(app: &App, io: Arc<dyn JobIo>, job: JobRecord) {
    let state = app.0.replica.state();
    let winners = |stage| -> Result<Vec<TaskResult>, StateError> {
        let range = state.job_range(&job.id)?;
        Ok(state
            .task_records(&job.id, stage)?
            .into_iter()
            .filter_map(|(task, t)| {
                let Winner { attempt, files, rows, records_in } = t.winner?;
                let count = range_len(&job, range, stage, task).max(1);
                Some(TaskResult { task, count, attempt, files, rows, records_in })
            })
            .collect())
    };
    let (map, reduce_results) = match (winners(Stage::Map), winners(Stage::Reduce)) {
        (Ok(m), Ok(r)) => (m, r),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(job = %job.id, error = %e, "reading winners");
            return;
        }
    };
    let commit = JobCommit {
        id: job.id.clone(),
        function: job.function.clone(),
        version: job.version,
        reduce: job.reduce.as_ref().map(|(n, v, _)| (n.clone(), *v)),
        output: job.output.clone(),
        format: job.format.clone(),
        reduce_partitions: job.reduce_partitions,
        map,
        reduce_results,
    };
    let id = job.id.clone();
    let committed = tokio::task::spawn_blocking(move || io.commit(&commit))
        .await
        .unwrap_or_else(|e| Err(format!("the commit stopped: {e}").into()));
    let error = committed.err().map(|e| e.to_string());
    match &error {
        None => tracing::info!(job = %id, "job committed"),
        Some(e) => tracing::warn!(job = %id, error = %e, "job commit failed"),
    }
    let command = Command::Job(JobCommand::Finish { id: id.clone(), at_ms: now_ms(), error });
    if let Err(e) = app.propose(command).await {
        tracing::warn!(job = %id, error = %e.message(), "recording the commit");
    }
}
