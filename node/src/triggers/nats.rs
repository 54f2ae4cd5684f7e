//! NATS JetStream triggers: every node running the trigger pulls batches
//! from one durable pull consumer (created if missing), so the server
//! shares the records among them; a record a node took but did not
//! acknowledge within the ack wait (the node died, or its answer was lost)
//! is handed to another.
//!
//! A batch's records are acknowledged once every output is stored: each
//! output is published to the output subject with a message id made of the
//! trigger and the input's stream sequence (`Nats-Msg-Id`), and waits for
//! the capturing stream's acknowledgement. A record scored twice (its node
//! died between storing the output and acknowledging the input) is dropped
//! by the output stream as a duplicate, within its duplicate window.
//!
//! Dead letters are published to the dead-letter subject the same way and
//! their input terminated (`AckKind::Term`). While a batch waits for the
//! function (the node or tenant at its limit) its records are kept from
//! redelivery with progress acknowledgements; nothing more is pulled.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use wasmgrid_api::{TriggerSource, subject_matches};

use super::{LAG_EVERY, Outcome, Record, Run, Stopped, dead_letter, permitted};

/// Header of an output: the subject of the record it answers.
const SUBJECT_HEADER: &str = "Wasmgrid-Subject";
/// Header of an output: the stream sequence of the record it answers.
const SEQUENCE_HEADER: &str = "Wasmgrid-Sequence";

/// What a NATS trigger reads and writes.
struct Spec {
    servers: Vec<String>,
    stream: String,
    consumer: String,
    subject: Option<String>,
    output: String,
    dead_letter: Option<String>,
    ack_wait: Duration,
}

impl Spec {
    fn of(source: &TriggerSource) -> Option<Spec> {
        let TriggerSource::Nats { servers, stream, consumer, subject, output_subject, dead_letter, ack_wait_ms } =
            source
        else {
            return None;
        };
        Some(Spec {
            servers: servers.split(',').map(|s| s.trim().trim_start_matches("nats://").to_string()).collect(),
            stream: stream.clone(),
            consumer: consumer.clone(),
            subject: subject.clone(),
            output: output_subject.clone(),
            dead_letter: dead_letter.clone(),
            ack_wait: Duration::from_millis(*ack_wait_ms),
        })
    }
}

impl Run {
    pub(super) async fn consume_nats(&mut self) -> Stopped {
        let Some(spec) = Spec::of(&self.trigger.spec.source) else {
            return Stopped::Failed("not a NATS trigger".into());
        };
        if let Err(e) = permitted(&spec.servers.join(",")).await {
            return Stopped::Failed(e);
        }
        // Only the servers named: the ones a cluster gossips are not held
        // to the egress policy.
        let client = match async_nats::ConnectOptions::new()
            .name(format!("wasmgrid-{}-{}", self.node, self.trigger.spec.name))
            .ignore_discovered_servers()
            .connection_timeout(Duration::from_secs(5))
            .connect(spec.servers.as_slice())
            .await
        {
            Ok(c) => c,
            Err(e) => return Stopped::Failed(format!("cannot connect to {}: {e}", spec.servers.join(","))),
        };
        let js = jetstream::new(client.clone());
        let consumer = match self.nats_consumer(&js, &spec).await {
            Ok(c) => c,
            Err(e) => return Stopped::Failed(e),
        };
        self.stats.assigned(&[0]);
        let (size, linger) = (self.trigger.spec.batch as usize, Duration::from_millis(self.trigger.spec.linger_ms));
        let mut lag_at = Instant::now();
        loop {
            // The first record of a batch (one asked for, so none is left
            // with a request abandoned), or a look at the lag while idle.
            let first = tokio::select! {
                biased;
                _ = self.stop.changed() => return Stopped::Asked,
                m = pull(&consumer, 1, LAG_EVERY) => m,
            };
            let mut messages = match first {
                Ok(m) if m.is_empty() => {
                    self.nats_lag(&consumer).await;
                    lag_at = Instant::now();
                    continue;
                }
                Ok(m) => m,
                Err(e) => return Stopped::Failed(e),
            };
            let started = Instant::now();
            if size > 1 {
                // The rest: what is there now, or comes within the linger.
                match pull(&consumer, size - 1, linger).await {
                    Ok(more) => messages.extend(more),
                    Err(e) => return Stopped::Failed(e),
                }
            }
            let batch: Vec<Record> = messages.iter().map(record).collect();
            // Scoring may wait for the function: the records are kept from
            // redelivery meanwhile.
            let outcomes = {
                let score = self.score(&batch);
                tokio::pin!(score);
                let mut progress = tokio::time::interval(spec.ack_wait / 3);
                progress.tick().await;
                loop {
                    tokio::select! {
                        o = &mut score => break o,
                        _ = progress.tick() => {
                            for m in &messages {
                                let _ = m.ack_with(AckKind::Progress).await;
                            }
                        }
                    }
                }
            };
            let Some(outcomes) = outcomes else { return Stopped::Asked };
            if let Err(e) = self.nats_write(&js, &spec, &messages, &batch, &outcomes).await {
                return Stopped::Failed(e);
            }
            // Every output is stored: the inputs are done.
            for (m, o) in messages.iter().zip(&outcomes) {
                let kind = match o {
                    Outcome::Scored(_) => AckKind::Ack,
                    Outcome::Dead { .. } => AckKind::Term,
                };
                if let Err(e) = m.ack_with(kind).await {
                    return Stopped::Failed(format!("acknowledging a record: {e}"));
                }
            }
            if let Err(e) = client.flush().await {
                return Stopped::Failed(format!("acknowledging records: {e}"));
            }
            self.account(&batch, &outcomes, &Default::default(), started.elapsed());
            if lag_at.elapsed() >= LAG_EVERY {
                self.nats_lag(&consumer).await;
                lag_at = Instant::now();
            }
        }
    }

    /// The trigger's durable consumer, created (or its settings brought up
    /// to date) on the stream, once the stream is known not to capture the
    /// trigger's own output.
    async fn nats_consumer(&self, js: &jetstream::Context, spec: &Spec) -> Result<PullConsumer, String> {
        let mut stream = js.get_stream(&spec.stream).await.map_err(|e| match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(j) if j.code() == 404 => {
                format!("stream `{}` does not exist", spec.stream)
            }
            _ => format!("reading stream `{}`: {e}", spec.stream),
        })?;
        let captured = stream.info().await.map_err(|e| format!("reading stream `{}`: {e}", spec.stream))?;
        let filter = spec.subject.as_deref().unwrap_or(">");
        for out in std::iter::once(&spec.output).chain(spec.dead_letter.as_ref()) {
            if subject_matches(filter, out) && captured.config.subjects.iter().any(|s| subject_matches(s, out)) {
                return Err(format!(
                    "the trigger would read its own output: stream `{}` captures `{out}`",
                    spec.stream
                ));
            }
        }
        let config = pull::Config {
            durable_name: Some(spec.consumer.clone()),
            description: Some(format!("wasmgrid trigger {}/{}", self.trigger.tenant, self.trigger.spec.name)),
            filter_subject: spec.subject.clone().unwrap_or_default(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            // The grid counts a record's attempts; a delivery to a node that
            // died is not one, so JetStream never gives a record up.
            max_deliver: -1,
            ..Default::default()
        };
        stream.create_consumer(config).await.map_err(|e| format!("making consumer `{}`: {e}", spec.consumer))
    }

    /// Publishes each scored row to the output subject and each dead
    /// record to the dead-letter subject, and waits until their streams
    /// stored all of them.
    async fn nats_write(
        &self,
        js: &jetstream::Context,
        spec: &Spec,
        messages: &[jetstream::Message],
        batch: &[Record],
        outcomes: &[Outcome],
    ) -> Result<(), String> {
        let mut acks = Vec::with_capacity(messages.len());
        for ((m, r), o) in messages.iter().zip(batch).zip(outcomes) {
            let subject = m.subject.as_str();
            let (to, payload) = match o {
                Outcome::Scored(row) => {
                    (&spec.output, serde_json::to_vec(row).map_err(|e| format!("encoding a row: {e}"))?)
                }
                Outcome::Dead { error, attempts } => {
                    tracing::warn!(stream = %spec.stream, sequence = r.offset, attempts, "a record went to the dead letters: {error}");
                    let Some(dlq) = &spec.dead_letter else { continue };
                    let place = Map::from_iter([
                        ("stream".into(), Value::from(spec.stream.as_str())),
                        ("sequence".into(), r.offset.into()),
                        ("subject".into(), subject.into()),
                    ]);
                    (dlq, dead_letter(error, *attempts, place, r.value.as_deref()))
                }
            };
            let mut headers = HeaderMap::new();
            let id = format!("{}/{}/{}/{}", self.trigger.tenant, self.trigger.spec.name, spec.stream, r.offset);
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(SUBJECT_HEADER, subject);
            headers.insert(SEQUENCE_HEADER, r.offset.to_string().as_str());
            let ack = js
                .publish_with_headers(to.clone(), headers, payload.into())
                .await
                .map_err(|e| format!("publishing to `{to}`: {e}"))?;
            acks.push((to, ack));
        }
        for (to, ack) in acks {
            ack.await.map_err(|e| format!("an output to `{to}` was not stored: {e}"))?;
        }
        Ok(())
    }

    /// The consumer's lag (records not yet delivered or not acknowledged)
    /// and acknowledgement floor.
    async fn nats_lag(&self, consumer: &PullConsumer) {
        let Ok(info) = consumer.get_info().await else { return };
        let lag = i64::try_from(info.num_pending + info.num_ack_pending as u64).unwrap_or(i64::MAX);
        let floor = i64::try_from(info.ack_floor.stream_sequence).unwrap_or(i64::MAX);
        self.stats.with_partition(0, |u| {
            u.lag = lag;
            u.committed = floor + 1;
        });
        self.series.lag(0, lag);
    }
}

/// Up to `n` records: those there now and those that come within `wait`.
async fn pull(consumer: &PullConsumer, n: usize, wait: Duration) -> Result<Vec<jetstream::Message>, String> {
    let wait = wait.max(Duration::from_millis(1));
    let mut batch =
        consumer.batch().max_messages(n).expires(wait).messages().await.map_err(|e| format!("pulling records: {e}"))?;
    let mut messages = Vec::with_capacity(n.min(1024));
    while let Some(m) = batch.next().await {
        messages.push(m.map_err(|e| format!("pulling records: {e}"))?);
    }
    Ok(messages)
}

fn record(m: &jetstream::Message) -> Record {
    let sequence = m.info().map_or(0, |i| i.stream_sequence);
    Record {
        partition: 0,
        offset: i64::try_from(sequence).unwrap_or(i64::MAX),
        key: None,
        value: Some(m.payload.to_vec()),
    }
}
