//! Trials: a candidate version served beside the active one.
//!
//! A **canary** answers its share of calls, chosen by a stable hash of the
//! call's routing key ([`ROUTE_KEY_HEADER`]), so one key always meets the
//! same version (calls without a key are spread evenly). A **shadow**
//! scores a copy of the calls the active version answered, after the
//! answer is on its way: its input and the active version's answer are
//! kept as the bytes they already are (no copy on the request path), and
//! the candidate runs on the blocking pool, at most a few at once and
//! outside the function's and the node's call slots, so it never holds up
//! a caller. When too many shadow calls wait (by bytes held), the copy is
//! skipped and counted. Each shadow call's answer is compared with the
//! active version's, column by column; [`TrialMeter`] keeps the counts the
//! node reports with its heartbeats.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http::HeaderMap;
use tokio::sync::Semaphore;
use wasmgrid_api::{
    ColumnDiff, InvokeResponse, LATENCY_BOUNDS_US, ROUTE_KEY_HEADER, TrialMode, TrialSpec, TrialUsage, latency_bucket,
    route_hash,
};

use crate::Served;
use crate::codec::{Row, Rows, batch_to_rows, read_arrow, read_json};

/// Bytes (inputs and answers) that waiting shadow calls may hold per
/// trial; a copy that would hold more is skipped.
const SHADOW_PENDING_BYTES: usize = 64 << 20;

/// A candidate version and the counts of its trial.
pub(crate) struct TrialRun {
    pub(crate) spec: TrialSpec,
    pub(crate) candidate: Arc<Served>,
    pub(crate) meter: Arc<TrialMeter>,
    /// Calls without a routing key so far: their hash is this count's.
    unkeyed: AtomicU64,
    /// Shadow calls that may run at once.
    shadow_slots: Arc<Semaphore>,
}

/// Which version answered a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Active,
    Candidate,
}

impl TrialRun {
    pub(crate) fn new(spec: TrialSpec, candidate: Arc<Served>, meter: Arc<TrialMeter>) -> TrialRun {
        let slots = (crate::served::inline_slots() / 2).max(1);
        TrialRun { spec, candidate, meter, unkeyed: AtomicU64::new(0), shadow_slots: Arc::new(Semaphore::new(slots)) }
    }

    /// Whether the call with these headers is in the trial's share: its
    /// routing key's hash, or the next unkeyed call's.
    fn takes(&self, headers: &HeaderMap) -> bool {
        let hash = match headers.get(ROUTE_KEY_HEADER) {
            Some(key) => route_hash(key.as_bytes()),
            None => route_hash(&self.unkeyed.fetch_add(1, Ordering::Relaxed).to_le_bytes()),
        };
        self.spec.takes(hash)
    }

    /// Whether a canary answers the call with these headers.
    pub(crate) fn answers(&self, headers: &HeaderMap) -> bool {
        self.spec.mode == TrialMode::Canary && self.takes(headers)
    }

    /// Copies a call the active version answered with `answer` to the
    /// shadow, unless it is out of the shadow's share or too much waits.
    pub(crate) fn shadow(self: &Arc<Self>, headers: &HeaderMap, input: Bytes, arrow: bool, answer: Bytes) {
        if self.spec.mode != TrialMode::Shadow || !self.takes(headers) {
            return;
        }
        let held = input.len() + answer.len();
        let pending = &self.meter.pending_bytes;
        if pending.fetch_add(held, Ordering::Relaxed) + held > SHADOW_PENDING_BYTES {
            pending.fetch_sub(held, Ordering::Relaxed);
            self.meter.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let run = self.clone();
        tokio::spawn(async move {
            let permit = run.shadow_slots.clone().acquire_owned().await;
            let compare = run.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                compare.compare(&input, arrow, &answer);
            })
            .await;
            run.meter.pending_bytes.fetch_sub(held, Ordering::Relaxed);
        });
    }

    /// Scores `input` with the candidate and compares its answer with the
    /// active version's.
    fn compare(&self, input: &[u8], arrow: bool, answer: &[u8]) {
        let Ok(rows) = (if arrow { read_arrow(input) } else { read_json(input) }) else { return };
        // The columns the versions add are those the input lacks.
        let inputs: HashSet<String> = match &rows {
            Rows::Json { rows } => rows.iter().flat_map(|r| r.keys().cloned()).collect(),
            Rows::Arrow { batch } => batch.schema().fields().iter().map(|f| f.name().clone()).collect(),
        };
        let started = Instant::now();
        let scored = crate::handler::score(&self.candidate, rows);
        let took = started.elapsed();
        self.meter.count(Side::Candidate, took, scored.is_err());
        self.candidate.version_series.observe(took, scored.is_err());
        let (Ok(candidate), Some(active)) = (scored, answered(answer, arrow)) else { return };
        let Some(candidate) = json_rows(candidate) else { return };
        if candidate.len() != active.len() {
            // A scorer answers a row per row; count the call as failed.
            self.meter.candidate_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(mut compared) = self.meter.compared.lock() else { return };
        let (rows, columns) = &mut *compared;
        for (active, candidate) in active.iter().zip(&candidate) {
            *rows += 1;
            let outputs: HashSet<&String> =
                active.keys().chain(candidate.keys()).filter(|k| !inputs.contains(*k)).collect();
            for column in outputs {
                let diff = match columns.iter().position(|c| &c.column == column) {
                    Some(i) => &mut columns[i],
                    None => {
                        columns.push(ColumnDiff { column: column.clone(), ..ColumnDiff::default() });
                        columns.last_mut().expect("just pushed")
                    }
                };
                diff.compare(active.get(column), candidate.get(column), self.spec.threshold);
            }
        }
    }
}

/// The rows of an answer the gateway wrote.
fn answered(answer: &[u8], arrow: bool) -> Option<Vec<Row>> {
    if arrow {
        return json_rows(read_arrow(answer).ok()?);
    }
    let response: InvokeResponse = serde_json::from_slice(answer).ok()?;
    Some(response.rows)
}

fn json_rows(rows: Rows) -> Option<Vec<Row>> {
    match rows {
        Rows::Json { rows } => Some(rows),
        Rows::Arrow { batch } => batch_to_rows(&batch).ok(),
    }
}

/// What one node saw of a trial since it began here.
pub(crate) struct TrialMeter {
    tenant: String,
    function: String,
    pub(crate) active: u64,
    pub(crate) candidate: u64,
    pub(crate) mode: TrialMode,
    active_calls: AtomicU64,
    active_errors: AtomicU64,
    candidate_calls: AtomicU64,
    candidate_errors: AtomicU64,
    skipped: AtomicU64,
    active_latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    candidate_latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    /// Shadow rows compared, and each output column's counts.
    compared: Mutex<(u64, Vec<ColumnDiff>)>,
    /// Bytes that waiting shadow calls hold.
    pending_bytes: AtomicUsize,
}

impl TrialMeter {
    pub(crate) fn new(tenant: &str, function: &str, (active, candidate): (u64, u64), mode: TrialMode) -> TrialMeter {
        TrialMeter {
            tenant: tenant.into(),
            function: function.into(),
            active,
            candidate,
            mode,
            active_calls: AtomicU64::new(0),
            active_errors: AtomicU64::new(0),
            candidate_calls: AtomicU64::new(0),
            candidate_errors: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            active_latency: Default::default(),
            candidate_latency: Default::default(),
            compared: Mutex::new((0, Vec::new())),
            pending_bytes: AtomicUsize::new(0),
        }
    }

    /// Counts one call of `side` that took `took` (the guest's call).
    pub(crate) fn count(&self, side: Side, took: Duration, failed: bool) {
        let (calls, errors, latency) = match side {
            Side::Active => (&self.active_calls, &self.active_errors, &self.active_latency),
            Side::Candidate => (&self.candidate_calls, &self.candidate_errors, &self.candidate_latency),
        };
        calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        latency[latency_bucket(took.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
    }

    /// What it counted, for the heartbeat.
    pub(crate) fn usage(&self) -> TrialUsage {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (rows, mut columns) = self.compared.lock().map(|c| c.clone()).unwrap_or_default();
        columns.sort_by(|a, b| a.column.cmp(&b.column));
        TrialUsage {
            tenant: self.tenant.clone(),
            function: self.function.clone(),
            active: self.active,
            candidate: self.candidate,
            mode: Some(self.mode),
            active_calls: load(&self.active_calls),
            active_errors: load(&self.active_errors),
            candidate_calls: load(&self.candidate_calls),
            candidate_errors: load(&self.candidate_errors),
            skipped: load(&self.skipped),
            rows,
            columns,
            active_latency: self.active_latency.iter().map(load).collect(),
            candidate_latency: self.candidate_latency.iter().map(load).collect(),
        }
    }
}
