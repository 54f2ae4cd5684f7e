//! Triggers on this node: for each trigger whose function is placed here, a
//! Kafka consumer that batches records into calls of the function and
//! writes the scored rows to the output topic.
//!
//! The grid, not the broker, decides who reads which partition: a trigger
//! runs on the nodes its function is placed on, and the `i`th of those `n`
//! nodes (by id) reads the partitions `p` with `p % n == i`. When a node
//! dies the control plane moves the function off it within seconds, the
//! route table changes, and the nodes left take its partitions over from
//! their committed offsets. The consumer group holds the committed offsets
//! (it is not joined, so a dead member never holds partitions hostage
//! until a broker notices it).
//!
//! Delivery is at least once: a batch's offsets are committed only after
//! every output of the batch is acknowledged by the brokers (the producer
//! is idempotent, `acks=all`), so a node that dies mid-batch leaves its
//! records to the member that gets the partition next, which scores them
//! again. Within a partition records are scored and written in order (one
//! batch at a time, outputs keyed as their input).
//!
//! A batch whose call fails is scored again record by record; a record
//! that fails `max_attempts` times in a row (or is not a JSON object) goes
//! to the dead-letter topic with the error, and the partition moves on.
//! When the node or the tenant is at its limit the consumer stops reading
//! until a call is admitted: records wait in the broker, not in memory (the
//! prefetch is bounded by `queued.max.messages.kbytes`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value};
use tokio::sync::watch;
use wasmgrid_api::{PartitionUsage, Trigger, TriggerSource, TriggerUsage, latency_bucket};
use wasmgrid_gateway::{BatchError, Gateway, TriggerSeries};

/// How often the lag of the assigned partitions is looked up.
const LAG_EVERY: Duration = Duration::from_secs(2);
/// Longest wait between two tries of a consumer that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A record's prefetch bound, per consumer (KiB).
const PREFETCH_KIB: &str = "16384";

/// A trigger's (tenant, name).
type Key = (String, String);

/// A node's place among a trigger's nodes: (index, count).
type Share = (usize, usize);

/// An output waiting to be produced: its topic, key and value.
type Output<'a> = (&'a str, Option<&'a [u8]>, Vec<u8>);

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
                Some(((t.tenant.clone(), t.spec.name.clone()), (t, (index, nodes.len()))))
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

impl From<KafkaError> for Stopped {
    fn from(e: KafkaError) -> Stopped {
        Stopped::Failed(e.to_string())
    }
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
            match self.consume().await {
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

    async fn consume(&mut self) -> Stopped {
        let TriggerSource::Kafka { brokers, topic, group, output_topic, dead_letter } =
            self.trigger.spec.source.clone();
        if let Err(e) = permitted(&brokers).await {
            return Stopped::Failed(e);
        }
        let client_id = format!("wasmgrid-{}-{}", self.node, self.trigger.spec.name);
        let consumer: StreamConsumer = match ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("client.id", &client_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("queued.max.messages.kbytes", PREFETCH_KIB)
            .set("log_level", "3")
            .create()
        {
            Ok(c) => c,
            Err(e) => return Stopped::Failed(format!("cannot make a consumer for {brokers}: {e}")),
        };
        let producer: FutureProducer = match ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("client.id", &client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
            .set("log_level", "3")
            .create()
        {
            Ok(p) => p,
            Err(e) => return Stopped::Failed(format!("cannot make a producer for {brokers}: {e}")),
        };
        let consumer = Arc::new(consumer);
        // The brokers the cluster advertises are held to the egress policy
        // as the bootstrap list is.
        let partitions = match advertised_permitted(&consumer, &topic).await {
            Ok(n) => n,
            Err(e) => return Stopped::Failed(e),
        };
        // This node's partitions, from the group's committed offsets.
        let (index, count) = self.share;
        let mine: Vec<i32> = (0..partitions).filter(|p| *p as usize % count == index).collect();
        let mut tpl = TopicPartitionList::new();
        for &p in &mine {
            if let Err(e) = tpl.add_partition_offset(&topic, p, Offset::Stored) {
                return Stopped::Failed(e.to_string());
            }
        }
        if let Err(e) = consumer.assign(&tpl) {
            return Stopped::Failed(format!("cannot read `{topic}`: {e}"));
        }
        self.stats.assigned(&mine);
        let out = Outputs { producer, topic: output_topic, dead_letter };
        let spec = &self.trigger.spec;
        let (size, linger) = (spec.batch as usize, Duration::from_millis(spec.linger_ms));
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut lag_at = Instant::now();
        loop {
            // The first record of a batch, or a look at the lag while idle.
            let first = tokio::select! {
                biased;
                _ = self.stop.changed() => return Stopped::Asked,
                m = tokio::time::timeout(LAG_EVERY, consumer.recv()) => m,
            };
            let first = match first {
                Ok(Ok(m)) => record(&m),
                Ok(Err(e)) => {
                    self.transient(e).await;
                    continue;
                }
                Err(_) => {
                    self.lag(&consumer, &topic, &offsets).await;
                    lag_at = Instant::now();
                    continue;
                }
            };
            let started = Instant::now();
            let deadline = tokio::time::Instant::from_std(started + linger);
            let mut batch = vec![first];
            while batch.len() < size {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(record(&m)),
                    Ok(Err(e)) => {
                        self.transient(e).await;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let outcomes = match self.score(&batch).await {
                Some(o) => o,
                None => return Stopped::Asked,
            };
            if let Err(e) = out.write(&batch, &outcomes).await {
                return Stopped::Failed(e);
            }
            // Every output of the batch is acknowledged: its offsets go.
            let mut tpl = TopicPartitionList::new();
            let mut last: BTreeMap<i32, i64> = BTreeMap::new();
            for r in &batch {
                last.insert(r.partition, r.offset);
            }
            for (&p, &o) in &last {
                if let Err(e) = tpl.add_partition_offset(&topic, p, Offset::Offset(o + 1)) {
                    return Stopped::Failed(e.to_string());
                }
                offsets.insert(p, o + 1);
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                return Stopped::Failed(format!("committing offsets: {e}"));
            }
            self.account(&batch, &outcomes, &last, started.elapsed());
            if lag_at.elapsed() >= LAG_EVERY {
                self.lag(&consumer, &topic, &offsets).await;
                lag_at = Instant::now();
            }
        }
    }

    /// A consumer error that does not stop it (a broker down for a while:
    /// the client reconnects): noted, and a short pause.
    async fn transient(&mut self, e: KafkaError) {
        tracing::debug!(trigger = %self.trigger.spec.name, "consumer: {e}");
        self.stats.state("running", Some(e.to_string()));
        self.wait(Duration::from_millis(100)).await;
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

    /// Looks up how far behind each assigned partition's end the consumer is.
    async fn lag(&self, consumer: &Arc<StreamConsumer>, topic: &str, offsets: &BTreeMap<i32, i64>) {
        let assigned: Vec<i32> = match consumer.assignment() {
            Ok(tpl) => tpl.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => return,
        };
        self.stats.assigned(&assigned);
        let (c, t, offsets) = (consumer.clone(), topic.to_string(), offsets.clone());
        let looked = tokio::task::spawn_blocking(move || {
            let committed = c.committed(Duration::from_secs(1)).ok();
            assigned
                .into_iter()
                .filter_map(|p| {
                    let (_, high) = c.fetch_watermarks(&t, p, Duration::from_secs(1)).ok()?;
                    let at = offsets.get(&p).copied().or_else(|| {
                        let e = committed.as_ref()?.find_partition(&t, p)?;
                        match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        }
                    });
                    Some((p, at.map_or(high, |o| (high - o).max(0))))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (p, lag) in looked {
            self.stats.with_partition(p, |u| u.lag = lag);
            self.series.lag(p, lag);
        }
    }
}

/// Where a trigger writes.
struct Outputs {
    producer: FutureProducer,
    topic: String,
    dead_letter: Option<String>,
}

impl Outputs {
    /// Writes each scored row to the output topic and each dead record to
    /// the dead-letter topic, keyed as its input, and waits until the
    /// brokers acknowledged all of them.
    async fn write(&self, batch: &[Record], outcomes: &[Outcome]) -> Result<(), String> {
        let mut payloads: Vec<Output<'_>> = Vec::with_capacity(batch.len());
        for (r, o) in batch.iter().zip(outcomes) {
            let key = r.key.as_deref();
            match o {
                Outcome::Scored(row) => {
                    let json = serde_json::to_vec(row).map_err(|e| format!("encoding a row: {e}"))?;
                    payloads.push((&self.topic, key, json));
                }
                Outcome::Dead { error, attempts } => {
                    tracing::warn!(
                        partition = r.partition,
                        offset = r.offset,
                        attempts,
                        "a record went to the dead letters: {error}"
                    );
                    if let Some(dlq) = &self.dead_letter {
                        payloads.push((dlq, key, dead_letter(r, error, *attempts)));
                    }
                }
            }
        }
        let mut deliveries = Vec::with_capacity(payloads.len());
        for (topic, key, payload) in &payloads {
            let mut record = FutureRecord::<[u8], Vec<u8>>::to(topic).payload(payload);
            if let Some(k) = key {
                record = record.key(*k);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), again)) => {
                        record = again;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => return Err(format!("producing to `{topic}`: {e}")),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(format!("an output was not acknowledged: {e}")),
                Err(_) => return Err("the producer stopped before acknowledging an output".into()),
            }
        }
        Ok(())
    }
}

fn record<M: Message>(m: &M) -> Record {
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
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

/// What the dead-letter topic gets: where the record was, why it failed,
/// and the record's value (as text when it is UTF-8, else base64-free hex).
fn dead_letter(r: &Record, error: &str, attempts: u32) -> Vec<u8> {
    let value = match r.value.as_deref().map(std::str::from_utf8) {
        Some(Ok(s)) => Value::String(s.to_string()),
        Some(Err(_)) => Value::String(format!("hex:{}", hex::encode(r.value.as_deref().unwrap_or_default()))),
        None => Value::Null,
    };
    let body = serde_json::json!({
        "error": error,
        "attempts": attempts,
        "partition": r.partition,
        "offset": r.offset,
        "value": value,
    });
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

/// Checks the brokers the cluster advertises for `topic`, and that it
/// exists: its partition count.
async fn advertised_permitted(consumer: &Arc<StreamConsumer>, topic: &str) -> Result<i32, String> {
    let (c, t) = (consumer.clone(), topic.to_string());
    let metadata = tokio::task::spawn_blocking(move || {
        let m = c
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .map_err(|e| format!("reading `{t}`'s metadata: {e}"))?;
        let brokers: Vec<String> = m.brokers().iter().map(|b| format!("{}:{}", b.host(), b.port())).collect();
        let partitions =
            m.topics().iter().find(|x| x.name() == t && x.error().is_none()).map_or(0, |x| x.partitions().len() as i32);
        Ok::<_, String>((brokers, partitions))
    })
    .await
    .map_err(|e| e.to_string())??;
    if metadata.1 == 0 {
        return Err(format!("topic `{topic}` does not exist"));
    }
    permitted(&metadata.0.join(",")).await?;
    Ok(metadata.1)
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
        let r = Record { partition: 2, offset: 41, key: None, value: Some(b"{\"ax\": \"boom\"}".to_vec()) };
        let v: Value = serde_json::from_slice(&dead_letter(&r, "row 0: `boom` is not a number", 3)).expect("json");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 41);
        assert_eq!(v["attempts"], 3);
        assert_eq!(v["value"], "{\"ax\": \"boom\"}");
        let bin = Record { value: Some(vec![0xff, 0x00]), ..r };
        let v: Value = serde_json::from_slice(&dead_letter(&bin, "x", 0)).expect("json");
        assert_eq!(v["value"], "hex:ff00");
    }
}
