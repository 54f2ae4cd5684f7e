//! What invocations logged, kept on the node for their owner: a bounded
//! excerpt per invocation ([`excerpt`]) and, for batch jobs, the latest
//! attempts of each job ([`JobLogs`]; per-request calls keep theirs with
//! their function in the gateway).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use wasmgrid_api::{AttemptLog, CallLogLine, Excerpt, TaskAssignment};

use crate::Logs;

/// Bytes of logs, stdout and stderr kept per invocation.
pub const MAX_KEPT: usize = 16 << 10;
/// Attempts whose logs a node keeps per job (the latest).
pub const KEPT_ATTEMPTS: usize = 64;
/// Jobs whose attempts' logs a node keeps (the latest to log).
pub const KEPT_JOBS: usize = 64;

/// What one invocation logged and wrote to stdout and stderr, whole (up to
/// the capture limits).
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Log lines kept.
    pub logs: Logs,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

impl Captured {
    /// What is kept of it, with the invocation's error.
    pub fn kept(&self, error: Option<&dyn std::fmt::Display>) -> Option<Excerpt> {
        excerpt(&self.logs, &self.stdout, &self.stderr, error.map(ToString::to_string))
    }
}

/// What one invocation logged and wrote, cut to [`MAX_KEPT`] bytes in all;
/// `None` when it logged and wrote nothing and did not fail.
pub fn excerpt(logs: &Logs, stdout: &str, stderr: &str, error: Option<String>) -> Option<Excerpt> {
    if logs.lines.is_empty() && logs.dropped == 0 && stdout.is_empty() && stderr.is_empty() && error.is_none() {
        return None;
    }
    let mut budget = MAX_KEPT;
    let mut cut = |s: &str| {
        let keep = s.len().min(budget);
        let keep = (0..=keep).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        budget -= keep;
        s[..keep].to_string()
    };
    let error = error.map(|e| cut(&e));
    let lines = logs.lines.iter().map(|l| CallLogLine { level: l.level.into(), message: cut(&l.message) }).collect();
    Some(Excerpt { error, lines, dropped: logs.dropped, stdout: cut(stdout), stderr: cut(stderr) })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The latest attempts' logs of the latest jobs that ran on this node.
#[derive(Debug, Default)]
pub struct JobLogs {
    inner: Mutex<Jobs>,
}

#[derive(Debug, Default)]
struct Jobs {
    /// By (tenant, job).
    attempts: HashMap<(String, String), VecDeque<AttemptLog>>,
    /// Jobs in the order they last logged, oldest first.
    order: VecDeque<(String, String)>,
}

impl JobLogs {
    /// Keeps what `task`'s attempt logged, if anything.
    pub fn keep(&self, task: &TaskAssignment, kept: Option<Excerpt>) {
        let Some(output) = kept else { return };
        let entry = AttemptLog { stage: task.stage, task: task.task, attempt: task.attempt, at_ms: now_ms(), output };
        let key = (task.tenant.clone(), task.job.clone());
        let mut jobs = self.lock();
        if let Some(at) = jobs.order.iter().position(|k| *k == key) {
            jobs.order.remove(at);
        }
        jobs.order.push_back(key.clone());
        while jobs.order.len() > KEPT_JOBS {
            if let Some(oldest) = jobs.order.pop_front() {
                jobs.attempts.remove(&oldest);
            }
        }
        let attempts = jobs.attempts.entry(key).or_default();
        if attempts.len() == KEPT_ATTEMPTS {
            attempts.pop_front();
        }
        attempts.push_back(entry);
    }

    /// `tenant`'s job `job`'s kept attempts, oldest first; `None` when no
    /// attempt of it logged here.
    pub fn get(&self, tenant: &str, job: &str) -> Option<Vec<AttemptLog>> {
        let jobs = self.lock();
        jobs.attempts.get(&(tenant.to_string(), job.to_string())).map(|a| a.iter().cloned().collect())
    }

    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LogLine;

    fn task(tenant: &str, job: &str, attempt: u64) -> TaskAssignment {
        let json = serde_json::json!({
            "job": job, "tenant": tenant, "stage": "map", "task": 0, "attempt": attempt,
            "function": {"module": "m", "memory": 1, "timeout_ms": 1, "config": {}, "gpu": "any"},
            "work_dir": "w", "format": "jsonl", "reduce_partitions": 0
        });
        serde_json::from_value(json).expect("assignment")
    }

    fn logged(message: &str) -> Option<Excerpt> {
        let mut logs = Logs::default();
        logs.lines.push(LogLine { level: "info", message: message.into() });
        excerpt(&logs, "", "", None)
    }

    #[test]
    fn silent_successful_invocations_keep_nothing() {
        assert!(excerpt(&Logs::default(), "", "", None).is_none());
        assert!(excerpt(&Logs::default(), "", "", Some("boom".into())).is_some());
        assert!(excerpt(&Logs::default(), "out", "", None).is_some());
    }

    #[test]
    fn output_is_cut_to_the_budget_on_a_char_boundary() {
        let big = "é".repeat(MAX_KEPT);
        let kept = excerpt(&Logs::default(), &big, &big, Some("err".into())).expect("kept");
        assert_eq!(kept.error.as_deref(), Some("err"));
        assert!(kept.stdout.len() + kept.stderr.len() + 3 <= MAX_KEPT);
        assert!(kept.stdout.len() >= MAX_KEPT - 4 && kept.stderr.is_empty());
    }

    #[test]
    fn attempts_and_jobs_are_bounded_and_scoped_by_tenant() {
        let logs = JobLogs::default();
        for attempt in 0..(KEPT_ATTEMPTS as u64 + 10) {
            logs.keep(&task("a", "j1", attempt), logged(&format!("attempt {attempt}")));
        }
        let kept = logs.get("a", "j1").expect("j1");
        assert_eq!(kept.len(), KEPT_ATTEMPTS);
        assert_eq!(kept[0].attempt, 10, "the oldest are dropped first");
        assert_eq!(kept[0].output.lines[0].message, "attempt 10");
        assert!(logs.get("b", "j1").is_none(), "another tenant's job of the same id");
        for job in 0..KEPT_JOBS {
            logs.keep(&task("b", &format!("other-{job}"), 0), logged("x"));
        }
        assert!(logs.get("a", "j1").is_none(), "the job that logged least recently is dropped");
        assert!(logs.get("b", "other-0").is_some());
    }
}
