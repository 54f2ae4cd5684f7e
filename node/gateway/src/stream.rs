//! Calls of scorers from inside the node (a trigger's batches of stream
//! records), admitted like per-request calls, and the triggers' series on
//! `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use wasmgrid_api::{Answer, Failure};
use wasmgrid_runtime::Kind;

use crate::admission::{InFlight, admit};
use crate::codec::Rows;
use crate::handler::{runtime_failure, score};
use crate::instrument::metered;
use crate::{Gateway, not_deployed_message};

/// How a batch call failed, as a trigger acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The node or the tenant is at its limit: wait, then call again
    /// (the records' attempts are not counted).
    Busy(String),
    /// The function is not ready on this node (yet): wait for it.
    NotHere(String),
    /// The call ran and failed (the guest trapped or returned an error, a
    /// time or memory limit): an attempt of each record in it.
    Failed(String),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Busy(m) | BatchError::NotHere(m) | BatchError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<Failure> for BatchError {
    fn from(f: Failure) -> BatchError {
        let message = f.message().to_string();
        match f.status() {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => BatchError::Busy(message),
            StatusCode::NOT_FOUND => BatchError::NotHere(message),
            _ => BatchError::Failed(message),
        }
    }
}

impl Gateway {
    /// Scores `rows` (JSON objects) with the active version of
    /// `tenant/name` served on this node, admitted as a per-request call is
    /// (the function's and the node's slots, the tenant's quota) and
    /// metered the same way. Answers each row with the score columns added,
    /// and the version that scored them.
    pub async fn score_batch(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        rows: Vec<Map<String, Value>>,
    ) -> Result<(u64, Vec<Map<String, Value>>), BatchError> {
        let served =
            self.lookup(tenant, name).ok_or_else(|| BatchError::NotHere(not_deployed_message(tenant, name)))?;
        if served.function.kind() != Kind::Scorer {
            let kind = wasmgrid_runtime::a(served.function.kind().name());
            return Err(BatchError::Failed(format!("`{name}` is {kind}; a trigger calls a scorer")));
        }
        let share = self.tenant_share(tenant)?;
        let inflight = InFlight::new(self, &served);
        let admitted: Answer<_> = admit(self, &served, name).await;
        let admitted = admitted?;
        let job = served.clone();
        let ran = tokio::task::spawn_blocking(move || {
            let _held = (inflight, admitted, share);
            let started = Instant::now();
            let result = metered(&job.meter, || score(&job, Rows::Json { rows }));
            (result, started.elapsed())
        })
        .await;
        let (result, took) = ran.map_err(|e| BatchError::Failed(format!("the call failed: {e}")))?;
        served.version_series.observe(took, result.is_err());
        match result.map_err(runtime_failure)? {
            Rows::Json { rows } => Ok((served.route.version, rows)),
            Rows::Arrow { .. } => Err(BatchError::Failed("the call answered Arrow to JSON rows".into())),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    tenant: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    tenant: String,
    trigger: String,
    partition: i32,
}

/// The triggers' metric families.
pub(crate) struct StreamMetrics {
    records: Family<PartitionLabels, Counter>,
    produced: Family<PartitionLabels, Counter>,
    dead_letters: Family<PartitionLabels, Counter>,
    errors: Family<PartitionLabels, Counter>,
    lag: Family<PartitionLabels, Gauge>,
    batch: Family<TriggerLabels, Histogram, fn() -> Histogram>,
    seconds: Family<TriggerLabels, Histogram, fn() -> Histogram>,
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0])
}

fn call_histogram() -> Histogram {
    Histogram::new(wasmgrid_api::LATENCY_BOUNDS_US.map(|us| us as f64 / 1e6))
}

impl StreamMetrics {
    pub(crate) fn register(registry: &mut Registry) -> StreamMetrics {
        let m = StreamMetrics {
            records: Family::default(),
            produced: Family::default(),
            dead_letters: Family::default(),
            errors: Family::default(),
            lag: Family::default(),
            batch: Family::new_with_constructor(batch_histogram),
            seconds: Family::new_with_constructor(call_histogram),
        };
        registry.register("trigger_records", "Stream records a trigger read, by partition", m.records.clone());
        registry.register(
            "trigger_produced",
            "Scored rows a trigger wrote to its output, by input partition",
            m.produced.clone(),
        );
        registry.register(
            "trigger_dead_letters",
            "Records a trigger gave up on after their attempts, by partition",
            m.dead_letters.clone(),
        );
        registry.register(
            "trigger_errors",
            "Failed calls of a trigger's function (each attempt), by partition",
            m.errors.clone(),
        );
        registry.register("trigger_lag", "Records behind the end of each partition a trigger reads", m.lag.clone());
        registry.register("trigger_batch_size", "Records per call of a trigger's function", m.batch.clone());
        registry.register(
            "trigger_batch_duration_seconds",
            "Time from a batch's first record read to its outputs acknowledged",
            m.seconds.clone(),
        );
        m
    }
}

/// One trigger's series on this node.
#[derive(Debug, Clone)]
pub struct TriggerSeries {
    tenant: String,
    trigger: String,
    gateway: Arc<Gateway>,
    batch: Histogram,
    seconds: Histogram,
}

impl TriggerSeries {
    fn partition(&self, partition: i32) -> PartitionLabels {
        PartitionLabels { tenant: self.tenant.clone(), trigger: self.trigger.clone(), partition }
    }

    fn metrics(&self) -> &StreamMetrics {
        &self.gateway.metrics.streams
    }

    /// A batch of `records` that took `took`, read to acknowledged.
    pub fn batch(&self, records: usize, took: Duration) {
        self.batch.observe(records as f64);
        self.seconds.observe(took.as_secs_f64());
    }

    /// Records read from `partition`, rows produced, dead letters and
    /// failed calls.
    pub fn counts(&self, partition: i32, records: u64, produced: u64, dead: u64, errors: u64) {
        let labels = self.partition(partition);
        let m = self.metrics();
        m.records.get_or_create(&labels).inc_by(records);
        m.produced.get_or_create(&labels).inc_by(produced);
        m.dead_letters.get_or_create(&labels).inc_by(dead);
        m.errors.get_or_create(&labels).inc_by(errors);
    }

    /// The records behind the end of `partition`.
    pub fn lag(&self, partition: i32, lag: i64) {
        self.metrics().lag.get_or_create(&self.partition(partition)).set(lag);
    }
}

impl Gateway {
    /// The series of trigger `tenant/trigger`.
    pub fn trigger_series(self: &Arc<Self>, tenant: &str, trigger: &str) -> TriggerSeries {
        let labels = TriggerLabels { tenant: tenant.to_string(), trigger: trigger.to_string() };
        TriggerSeries {
            tenant: tenant.to_string(),
            trigger: trigger.to_string(),
            batch: self.metrics.streams.batch.get_or_create(&labels).clone(),
            seconds: self.metrics.streams.seconds.get_or_create(&labels).clone(),
            gateway: self.clone(),
        }
    }
}
