//! Kafka triggers: the grid assigns each node its partitions, read from the
//! group's committed offsets with librdkafka.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Map;
use wasmgrid_api::TriggerSource;

use super::{LAG_EVERY, Outcome, Record, Run, Stopped, dead_letter, permitted};

/// A record's prefetch bound, per consumer (KiB).
const PREFETCH_KIB: &str = "16384";

/// An output waiting to be produced: its topic, key and value.
type Output<'a> = (&'a str, Option<&'a [u8]>, Vec<u8>);

impl From<KafkaError> for Stopped {
    fn from(e: KafkaError) -> Stopped {
        Stopped::Failed(e.to_string())
    }
}

impl Run {
    pub(super) async fn consume_kafka(&mut self) -> Stopped {
        let TriggerSource::Kafka { brokers, topic, group, output_topic, dead_letter } =
            self.trigger.spec.source.clone()
        else {
            return Stopped::Failed("not a Kafka trigger".into());
        };
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
                        let place = Map::from_iter([
                            ("partition".into(), r.partition.into()),
                            ("offset".into(), r.offset.into()),
                        ]);
                        payloads.push((dlq, key, dead_letter(error, *attempts, place, r.value.as_deref())));
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
