//! Triggers on this node: for each trigger whose function is placed here, a
//! consumer of its stream (a Kafka topic, [`kafka`], or a NATS JetStream
//! stream, [`nats`]) that batches records into calls of the function and
//! writes the scored rows to the output topic or subject.
//!
//! Kafka: the grid, not the broker, decides who reads which partition: a
//! trigger runs on the nodes its function is placed on, and the `i`th of
//! those `n` nodes (by id) reads the partitions `p` with `p % n == i`. When a
//! node dies the control plane moves the function off it within seconds,
//! the route table changes, and the nodes left take its partitions over
//! from their committed offsets. The consumer group holds the committed
//! offsets (it is not joined, so a dead member never holds partitions
//! hostage until a broker notices it). JetStream: every node pulls from one
//! durable consumer, and the server hands a record a node took but did not
//! acknowledge within the ack wait to another.
//!
//! Delivery is at least once: a batch's offsets are committed (its records
//! acknowledged) only after every output of the batch is acknowledged, so a
//! node that dies mid-batch leaves its records to the member that reads
//! them next, which scores them again. (JetStream outputs carry a message
//! id, so the output stream drops those copies within its duplicate
//! window.) Within a Kafka partition records are scored and written in
//! order (one batch at a time, outputs keyed as their input).
//!
//! A batch whose call fails is scored again record by record; a record
//! that fails `max_attempts` times in a row (or is not a JSON object) goes
//! to the dead letters with the error, and the stream moves on. When the
//! node or the tenant is at its limit the consumer stops reading until a
//! call is admitted: records wait in the broker, not in memory.

mod kafka;
mod nats;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::watch;
use wasmgrid_api::{PartitionUsage, Trigger, TriggerSource, TriggerUsage, latency_bucket};
use wasmgrid_gateway::{BatchError, Gateway, TriggerSeries};

/// How often the lag is looked up.
const LAG_EVERY: Duration = Duration::from_secs(2);
/// Longest wait between two tries of a consumer that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A trigger's (tenant, name).
type Key = (String, String);

/// A node's place among a trigger's nodes: (index, count).
type Share = (usize, usize);

/// The triggers this node runs, by (tenant, name).
pub(crate) struct Triggers {
    gateway: Arc<Gateway>,
    node: String,
    running: Mutex<HashMap<Key, Running>>,
}

struct Running {
    trigger: Trigger,
    /// This node's place among the trigger's nodes: (index, count).
    share: Share,
    stats: Arc<Stats>,
    /// Tells the consumer to stop after its batch; none while paused.
    stop: Option<watch::Sender<bool>>,
    /// The consumer; a consumer that replaces it waits for it to stop.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
    }
}

impl Triggers {
    pub(crate) fn new(gateway: Arc<Gateway>, node: String) -> Arc<Triggers> {
        Arc::new(Triggers { gateway, node, running: Mutex::new(HashMap::new()) })
    }

    /// Runs the `triggers` whose function is placed on this node (`nodes`
    /// gives the ids of the nodes a function is placed on, sorted), and
    /// stops every other consumer. A trigger whose spec, pause or nodes
    /// changed is started again once its consumer has stopped.
    pub(crate) fn set(&self, triggers: &[Trigger], nodes: impl Fn(&str, &str) -> Vec<String>) {
        let wanted: HashMap<Key, (&Trigger, Share)> = triggers
            .iter()
            .filter_map(|t| {
                let nodes = nodes(&t.tenant, &t.spec.function);
                let index = nodes.iter().position(|n| *n == self.node)?;
                // JetStream shares one consumer's records among the nodes:
                // a node's place does not change what it reads.
                let share = match t.spec.source {
                    TriggerSource::Kafka { .. } => (index, nodes.len()),
                    TriggerSource::Nats { .. } => (0, 1),
                };
                Some(((t.tenant.clone(), t.spec.name.clone()), (t, share)))
            })
            .collect();
        let Ok(mut running) = self.running.lock() else { return };
        let mut stopping: HashMap<Key, tokio::task::JoinHandle<()>> = HashMap::new();
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|(t, share)| **t == r.trigger && *share == r.share);
            if !keep && let Some(task) = r.task.take() {
                stopping.insert(key.clone(), task);
            }
            keep
        });
        for (key, (trigger, share)) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let stats = Arc::new(Stats::new(trigger));
            let previous = stopping.remove(&key);
            let (stop, task) = if trigger.paused {
                stats.state("paused", None);
                (None, None)
            } else {
                let (tx, rx) = watch::channel(false);
                let series = self.gateway.trigger_series(&trigger.tenant, &trigger.spec.name);
                let run = Run {
                    gateway: self.gateway.clone(),
                    node: self.node.clone(),
                    trigger: trigger.clone(),
                    stats: stats.clone(),
                    series,
                    stop: rx,
                    share,
                };
                let (index, count) = share;
                tracing::info!(
                    trigger = %trigger.spec.name,
                    tenant = %trigger.tenant,
                    "starting the trigger's consumer: node {} of {count}",
                    index + 1
                );
                let task = tokio::spawn(async move {
                    // The consumer it replaces finishes its batch first.
                    if let Some(previous) = previous {
                        let _ = previous.await;
                    }
                    run.run().await
                });
                (Some(tx), Some(task))
            };
            running.insert(key, Running { trigger: trigger.clone(), share, stats, stop, task });
        }
    }

    /// What each trigger's consumer did here.
    pub(crate) fn usage(&self) -> Vec<TriggerUsage> {
        let Ok(running) = self.running.lock() else { return Vec::new() };
        let mut usage: Vec<TriggerUsage> = running.values().map(|r| r.stats.usage()).collect();
        usage.sort_by(|a, b| (&a.tenant, &a.trigger).cmp(&(&b.tenant, &b.trigger)));
        usage
    }
}

/// A consumer's counts, as the heartbeat reports them.
struct Stats(Mutex<TriggerUsage>);

impl Stats {
    fn new(trigger: &Trigger) -> Stats {
        Stats(Mutex::new(TriggerUsage {
            tenant: trigger.tenant.clone(),
            trigger: trigger.spec.name.clone(),
            state: "starting".into(),
            ..TriggerUsage::default()
        }))
    }

    fn state(&self, state: &str, error: Option<String>) {
        if let Ok(mut u) = self.0.lock() {
            u.state = state.to_string();
            if error.is_some() {
                u.error = error;
            }
        }
    }

    fn usage(&self) -> TriggerUsage {
        self.0.lock().map(|u| u.clone()).unwrap_or_default()
    }

    fn with_partition(&self, partition: i32, f: impl FnOnce(&mut PartitionUsage)) {
        if let Ok(mut u) = self.0.lock() {
            let i = match u.partitions.iter().position(|p| p.partition == partition) {
                Some(i) => i,
                None => {
                    let p = PartitionUsage { partition, committed: -1, lag: -1, ..PartitionUsage::default() };
                    u.partitions.push(p);
                    u.partitions.sort_by_key(|p| p.partition);
                    u.partitions.iter().position(|p| p.partition == partition).unwrap_or(0)
                }
            };
            f(&mut u.partitions[i]);
        }
    }

    fn call(&self, took: Duration) {
        if let Ok(mut u) = self.0.lock() {
            u.calls += 1;
            let bucket = latency_bucket(took.as_micros() as u64);
            if u.latency.len() <= bucket {
                u.latency.resize(bucket + 1, 0);
            }
            u.latency[bucket] += 1;
        }
    }

    fn assigned(&self, partitions: &[i32]) {
        if let Ok(mut u) = self.0.lock() {
            for p in &mut u.partitions {
                p.assigned = partitions.contains(&p.partition);
            }
        }
        for &p in partitions {
            self.with_partition(p, |u| u.assigned = true);
        }
    }
}

/// One record, copied out of the consumer's buffer.
struct Record {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// What became of a record.
enum Outcome {
    Scored(Map<String, Value>),
    Dead { error: String, attempts: u32 },
}

/// Why a consumer stopped.
enum Stopped {
    /// It was told to.
    Asked,
    /// It failed: it starts again after a pause.
    Failed(String),
}

/// One trigger's consumer.
struct Run {
    gateway: Arc<Gateway>,
    node: String,
    trigger: Trigger,
    stats: Arc<Stats>,
    series: TriggerSeries,
    stop: watch::Receiver<bool>,
    /// This node's place among the trigger's nodes: (index, count).
    share: Share,
}

impl Run {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        loop {
            self.stats.state("running", None);
            let stopped = match self.trigger.spec.source {
                TriggerSource::Kafka { .. } => self.consume_kafka().await,
                TriggerSource::Nats { .. } => self.consume_nats().await,
            };
            match stopped {
                Stopped::Asked => return,
                Stopped::Failed(e) => {
                    tracing::warn!(trigger = %self.trigger.spec.name, "the trigger's consumer failed (starting it again): {e}");
                    self.stats.state("failing", Some(e));
                }
            }
            if self.wait(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Sleeps for `d`, or less when told to stop; says whether it was.
    async fn wait(&mut self, d: Duration) -> bool {
        if *self.stop.borrow() {
            return true;
        }
        tokio::select! {
            _ = self.stop.changed() => true,
            _ = tokio::time::sleep(d) => *self.stop.borrow(),
        }
    }

    /// Scores a batch: in one call, or record by record when that fails.
    /// `None` when told to stop while waiting for the function.
    async fn score(&mut self, batch: &[Record]) -> Option<Vec<Outcome>> {
        let attempts = self.trigger.spec.max_attempts;
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        for r in batch {
            match parse(r.value.as_deref()) {
                Ok(row) => {
                    rows.push(row);
                    outcomes.push(None);
                }
                Err(error) => outcomes.push(Some(Outcome::Dead { error, attempts: 0 })),
            }
        }
        let mut scored = match self.call(rows.clone()).await? {
            Ok(scored) => scored.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) if rows.len() == 1 && attempts == 1 => {
                self.count_errors(batch, 1);
                vec![Err((e, 1))]
            }
            Err(_) => {
                self.count_errors(batch, 1);
                // One record may have failed the batch: each alone, with all
                // its attempts (a lone record's failed batch was its first).
                let lone = u32::from(rows.len() == 1);
                let mut each = Vec::with_capacity(rows.len());
                for row in rows {
                    let result = self.attempts(batch, row, attempts - lone).await?;
                    each.push(result.map_err(|(e, n)| (e, n + lone)));
                }
                each
            }
        }
        .into_iter();
        Some(
            outcomes
                .into_iter()
                .map(|o| match o {
                    Some(dead) => dead,
                    None => match scored.next() {
                        Some(Ok(row)) => Outcome::Scored(row),
                        Some(Err((error, attempts))) => Outcome::Dead { error, attempts },
                        None => Outcome::Dead { error: "the function answered fewer rows".into(), attempts: 1 },
                    },
                })
                .collect(),
        )
    }

    /// Up to `attempts` calls of one record: its scored row, or the last
    /// error and the attempts made.
    async fn attempts(
        &mut self,
        batch: &[Record],
        row: Map<String, Value>,
        attempts: u32,
    ) -> Option<Result<Map<String, Value>, (String, u32)>> {
        let mut last = String::new();
        for n in 1..=attempts {
            match self.call(vec![row.clone()]).await? {
                Ok(mut scored) if scored.len() == 1 => return Some(Ok(scored.remove(0))),
                Ok(scored) => last = format!("the function answered {} rows to 1", scored.len()),
                Err(e) => last = e,
            }
            self.count_errors(batch, 1);
            if n < attempts && self.wait(Duration::from_millis(20 << n.min(6))).await {
                return None;
            }
        }
        Some(Err((last, attempts)))
    }

    /// One call of the function: its rows, or why it failed. Waits while
    /// the node or tenant is busy or the function is not ready here, reading
    /// nothing meanwhile (records wait in the bounded prefetch, then in the
    /// broker); `None` when told to stop meanwhile.
    ///
    /// (The partitions are not paused: not reading is enough, the prefetch
    /// being bounded.)
    async fn call(&mut self, rows: Vec<Map<String, Value>>) -> Option<Result<Vec<Map<String, Value>>, String>> {
        let (tenant, function) = (self.trigger.tenant.clone(), self.trigger.spec.function.clone());
        let expected = rows.len();
        let mut waited = false;
        let mut wait = Duration::from_millis(10);
        let answer = loop {
            let started = Instant::now();
            match self.gateway.score_batch(&tenant, &function, rows.clone()).await {
                Ok((_, scored)) if scored.len() == expected => {
                    self.stats.call(started.elapsed());
                    break Ok(scored);
                }
                Ok((_, scored)) => break Err(format!("the function answered {} rows to {expected}", scored.len())),
                Err(BatchError::Failed(e)) => break Err(e),
                Err(e @ (BatchError::Busy(_) | BatchError::NotHere(_))) => {
                    waited = true;
                    let state = if matches!(e, BatchError::NotHere(_)) { "waiting" } else { "running" };
                    self.stats.state(state, Some(e.to_string()));
                    if self.wait(wait).await {
                        return None;
                    }
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        };
        if waited {
            self.stats.state("running", None);
        }
        Some(answer)
    }

    fn count_errors(&self, batch: &[Record], n: u64) {
        // A call's failure is counted on its first record's partition.
        if let Some(r) = batch.first() {
            self.stats.with_partition(r.partition, |p| p.errors += n);
            self.series.counts(r.partition, 0, 0, 0, n);
        }
    }

    /// Counts a written batch.
    fn account(&self, batch: &[Record], outcomes: &[Outcome], last: &BTreeMap<i32, i64>, took: Duration) {
        self.series.batch(batch.len(), took);
        let mut per: BTreeMap<i32, (u64, u64, u64)> = BTreeMap::new();
        for (r, o) in batch.iter().zip(outcomes) {
            let e = per.entry(r.partition).or_default();
            e.0 += 1;
            match o {
                Outcome::Scored(_) => e.1 += 1,
                Outcome::Dead { .. } => e.2 += 1,
            }
        }
        for (p, (records, produced, dead)) in per {
            self.series.counts(p, records, produced, dead, 0);
            self.stats.with_partition(p, |u| {
                u.records += records;
                u.produced += produced;
                u.dead_letters += dead;
                u.committed = last.get(&p).map_or(u.committed, |o| o + 1);
            });
        }
    }
}

/// A record's row: a JSON object.
fn parse(value: Option<&[u8]>) -> Result<Map<String, Value>, String> {
    let value = value.ok_or("the record has no value")?;
    match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(row)) => Ok(row),
        Ok(_) => Err("the record is not a JSON object (one row per record)".into()),
        Err(e) => Err(format!("the record is not JSON: {e}")),
    }
}

/// What the dead letters get: why the record failed, after how many
/// attempts, where it was (`place`: partition and offset, or stream,
/// sequence and subject) and its value (as text when it is UTF-8, else
/// hex).
fn dead_letter(error: &str, attempts: u32, place: Map<String, Value>, value: Option<&[u8]>) -> Vec<u8> {
    let value = match value.map(std::str::from_utf8) {
        Some(Ok(s)) => Value::String(s.to_string()),
        Some(Err(_)) => Value::String(format!("hex:{}", hex::encode(value.unwrap_or_default()))),
        None => Value::Null,
    };
    let mut body = Map::new();
    body.insert("error".into(), error.into());
    body.insert("attempts".into(), attempts.into());
    body.extend(place);
    body.insert("value".into(), value);
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Refuses brokers the node's egress policy refuses (the grid's own
/// listeners, loopback and private addresses unless allowed), before any
/// connection.
async fn permitted(brokers: &str) -> Result<(), String> {
    let egress = wasmgrid_data::store::egress();
    for broker in brokers.split(',').map(str::trim) {
        let (host, port) = broker.rsplit_once(':').ok_or_else(|| format!("broker `{broker}` is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| format!("broker `{broker}` is not host:port"))?;
        let literal = host.parse::<std::net::IpAddr>().is_ok();
        let refused =
            || format!("broker `{broker}` is not reachable from the grid (its egress policy refuses the address)");
        if !literal && egress.refuses_name(host) {
            return Err(refused());
        }
        let addrs: Vec<_> = tokio::net::lookup_host((host, port)).await.map_err(|_| refused())?.collect();
        let name = (!literal).then_some(host);
        if addrs.is_empty() || addrs.iter().any(|a| !egress.permits(name, *a)) {
            return Err(refused());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_objects() {
        assert!(parse(Some(br#"{"ax": "1 2"}"#)).is_ok());
        assert!(parse(Some(b"[1, 2]")).expect_err("array").contains("not a JSON object"));
        assert!(parse(Some(b"{oops")).expect_err("bad").contains("not JSON"));
        assert!(parse(None).expect_err("none").contains("no value"));
    }

    #[test]
    fn a_dead_letter_says_where_and_why() {
        let place = |p: i32, o: i64| Map::from_iter([("partition".into(), p.into()), ("offset".into(), o.into())]);
        let value = b"{\"ax\": \"boom\"}";
        let v: Value =
            serde_json::from_slice(&dead_letter("row 0: `boom` is not a number", 3, place(2, 41), Some(value)))
                .expect("json");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 41);
        assert_eq!(v["attempts"], 3);
        assert_eq!(v["value"], "{\"ax\": \"boom\"}");
        let v: Value = serde_json::from_slice(&dead_letter("x", 0, place(0, 0), Some(&[0xff, 0x00]))).expect("json");
        assert_eq!(v["value"], "hex:ff00");
    }
}
