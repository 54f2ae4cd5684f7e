//! Triggers: a scorer fed from a stream (a Kafka topic or a NATS JetStream
//! stream), its answers written to another, run by the nodes that serve the
//! function.

use serde::{Deserialize, Serialize};

/// Where a trigger's records come from and where its answers go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TriggerSource {
    /// A Kafka topic, read by a consumer group.
    Kafka {
        /// Bootstrap brokers, `host:port[,host:port...]`.
        brokers: String,
        /// The topic read.
        topic: String,
        /// The consumer group: its committed offsets are where the
        /// trigger resumes.
        group: String,
        /// The topic the scored rows are written to, keyed as their input.
        output_topic: String,
        /// Where a record goes when every attempt to score it failed
        /// (none: it is logged, counted and skipped).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_letter: Option<String>,
    },
    /// A NATS JetStream stream, read through a durable pull consumer that
    /// every node running the trigger pulls from.
    Nats {
        /// Servers, `[nats://]host:port[,...]`.
        servers: String,
        /// The JetStream stream read.
        stream: String,
        /// The durable consumer (created if missing): its acknowledgements
        /// are where the trigger resumes.
        consumer: String,
        /// Only the stream's messages on this subject (wildcards allowed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        /// The subject the scored rows are published to (a stream must
        /// capture it: each output waits for the stream's acknowledgement).
        output_subject: String,
        /// The subject a record goes to when every attempt failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dead_letter: Option<String>,
        /// How long a delivered record may go unacknowledged before
        /// JetStream hands it to another node, in milliseconds.
        #[serde(default = "default_ack_wait_ms")]
        ack_wait_ms: u64,
    },
}

fn default_ack_wait_ms() -> u64 {
    30_000
}

/// Shortest and longest ack wait of a NATS trigger, in milliseconds.
pub const NATS_ACK_WAIT_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;

impl TriggerSource {
    /// `kafka`.
    pub fn kind(&self) -> &'static str {
        match self {
            TriggerSource::Kafka { .. } => "kafka",
            TriggerSource::Nats { .. } => "nats",
        }
    }

    /// The stream read, as a person names it: `kafka accel`.
    pub fn input(&self) -> String {
        match self {
            TriggerSource::Kafka { topic, .. } => format!("kafka {topic}"),
            TriggerSource::Nats { stream, subject: Some(s), .. } => format!("nats {stream} ({s})"),
            TriggerSource::Nats { stream, .. } => format!("nats {stream}"),
        }
    }

    /// Where the answers go: `kafka falls`.
    pub fn output(&self) -> String {
        match self {
            TriggerSource::Kafka { output_topic, .. } => format!("kafka {output_topic}"),
            TriggerSource::Nats { output_subject, .. } => format!("nats {output_subject}"),
        }
    }

    /// Where dead letters go, if anywhere.
    pub fn dead_letter(&self) -> Option<&str> {
        match self {
            TriggerSource::Kafka { dead_letter, .. } | TriggerSource::Nats { dead_letter, .. } => {
                dead_letter.as_deref()
            }
        }
    }
}

/// Most records one call of the function scores.
pub const MAX_TRIGGER_BATCH: u32 = 10_000;
/// Longest a trigger waits to fill a batch, in milliseconds.
pub const MAX_TRIGGER_LINGER_MS: u64 = 60_000;
/// Most attempts a record gets before it is a dead letter.
pub const MAX_TRIGGER_ATTEMPTS: u32 = 100;

/// `POST /v1/triggers`: a trigger to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSpec {
    /// Its name (unique in the tenant).
    pub name: String,
    /// The scorer it calls.
    pub function: String,
    /// What it reads and writes.
    pub source: TriggerSource,
    /// Most records per call.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Longest a partial batch waits for more records, in milliseconds.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Calls a record gets before it goes to the dead-letter topic.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_batch() -> u32 {
    512
}

fn default_linger_ms() -> u64 {
    5
}

fn default_attempts() -> u32 {
    3
}

impl TriggerSpec {
    /// Why it cannot run, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        crate::check_name(&self.name).map_err(|r| format!("invalid trigger name `{}`: {r}", self.name))?;
        crate::check_name(&self.function).map_err(|r| format!("invalid function name `{}`: {r}", self.function))?;
        if !(1..=MAX_TRIGGER_BATCH).contains(&self.batch) {
            return Err(format!("--batch must be 1 to {MAX_TRIGGER_BATCH}, not {}", self.batch));
        }
        if self.linger_ms > MAX_TRIGGER_LINGER_MS {
            return Err(format!("--linger must be at most {MAX_TRIGGER_LINGER_MS} ms, not {} ms", self.linger_ms));
        }
        if !(1..=MAX_TRIGGER_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!("--max-attempts must be 1 to {MAX_TRIGGER_ATTEMPTS}, not {}", self.max_attempts));
        }
        match &self.source {
            TriggerSource::Kafka { brokers, topic, group, output_topic, dead_letter } => {
                if brokers.split(',').any(|b| !valid_broker(b.trim())) {
                    return Err(format!("--kafka wants host:port[,host:port...], not `{brokers}`"));
                }
                for (flag, t) in [("--topic", topic), ("--output-topic", output_topic)]
                    .into_iter()
                    .chain(dead_letter.iter().map(|t| ("--dead-letter", t)))
                {
                    check_topic(t).map_err(|r| format!("{flag} `{t}`: {r}"))?;
                }
                if group.is_empty() || group.len() > 255 {
                    return Err("--group must be 1 to 255 characters".into());
                }
                if topic == output_topic || dead_letter.as_ref() == Some(topic) {
                    return Err(format!("the trigger would read its own output: `{topic}` is input and output"));
                }
                Ok(())
            }
            TriggerSource::Nats { servers, stream, consumer, subject, output_subject, dead_letter, ack_wait_ms } => {
                if servers.split(',').any(|s| !valid_broker(s.trim().trim_start_matches("nats://"))) {
                    return Err(format!("--nats wants [nats://]host:port[,...], not `{servers}`"));
                }
                check_jetstream_name(stream).map_err(|r| format!("--stream `{stream}`: {r}"))?;
                check_jetstream_name(consumer).map_err(|r| format!("--consumer `{consumer}`: {r}"))?;
                if let Some(s) = subject {
                    check_subject(s, true).map_err(|r| format!("--subject `{s}`: {r}"))?;
                }
                for (flag, s) in [("--output-subject", output_subject)]
                    .into_iter()
                    .chain(dead_letter.iter().map(|s| ("--dead-letter", s)))
                {
                    check_subject(s, false).map_err(|r| format!("{flag} `{s}`: {r}"))?;
                    if subject.as_deref().is_some_and(|filter| subject_matches(filter, s)) {
                        return Err(format!("the trigger would read its own output: `{s}` is on its input subject"));
                    }
                }
                if !NATS_ACK_WAIT_MS.contains(ack_wait_ms) {
                    return Err(format!("--ack-wait must be 1 s to 1 h, not {ack_wait_ms} ms"));
                }
                Ok(())
            }
        }
    }
}

/// JetStream's rule for stream and consumer names: 1 to 255 characters,
/// no whitespace, `.`, `*`, `>`, `/` or `\`.
pub fn check_jetstream_name(n: &str) -> Result<(), &'static str> {
    if n.is_empty() || n.len() > 255 {
        return Err("a name is 1 to 255 characters");
    }
    if n.chars().any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c)) {
        return Err("a name has no whitespace, `.`, `*`, `>`, `/` or `\\`");
    }
    Ok(())
}

/// NATS's rule for subjects: tokens separated by `.`, none empty, no
/// whitespace; `*` (one token) and a last `>` (the rest) where wildcards
/// are allowed.
pub fn check_subject(s: &str, wildcards: bool) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 4096 {
        return Err("a subject is 1 to 4,096 characters");
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("a subject is non-empty tokens separated by `.`, without whitespace");
        }
        let wild = *t == "*" || *t == ">";
        if (t.contains('*') || t.contains('>')) && !wild {
            return Err("`*` and `>` are whole tokens");
        }
        if wild && !wildcards {
            return Err("a subject published to has no wildcards");
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err("`>` is the last token");
        }
    }
    Ok(())
}

/// Whether the subject filter `filter` (with wildcards) matches `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn valid_broker(b: &str) -> bool {
    match b.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host.bytes().all(|c| c.is_ascii_alphanumeric() || b".-_[]:".contains(&c))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

/// Kafka's rule for topic names: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.`
/// or `..`.
pub fn check_topic(t: &str) -> Result<(), &'static str> {
    if t.is_empty() || t.len() > 249 {
        return Err("a topic name is 1 to 249 characters");
    }
    if t == "." || t == ".." {
        return Err("a topic cannot be named `.` or `..`");
    }
    if !t.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)) {
        return Err("a topic name is made of a-z, A-Z, 0-9, `.`, `_` and `-`");
    }
    Ok(())
}

/// A trigger as the control plane stores it and nodes receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Its tenant.
    pub tenant: String,
    /// What it runs.
    #[serde(flatten)]
    pub spec: TriggerSpec,
    /// Whether its consumers are stopped (their offsets stay committed).
    #[serde(default)]
    pub paused: bool,
    /// The log index that created it.
    pub created_at: u64,
}

/// What a node's consumer of one trigger did since it started, per
/// partition it was assigned. Sent with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerUsage {
    /// The tenant.
    pub tenant: String,
    /// The trigger.
    pub trigger: String,
    /// `running`, `paused`, `waiting` (for its function to be ready here)
    /// or `failing` (with [`error`](Self::error)).
    pub state: String,
    /// The last error, if the consumer is failing or a call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Calls of the function.
    pub calls: u64,
    /// Each call's time (read to produced), by
    /// [`LATENCY_BOUNDS_US`](crate::LATENCY_BOUNDS_US) bucket.
    pub latency: Vec<u64>,
    /// Per partition.
    pub partitions: Vec<PartitionUsage>,
}

/// One partition of a trigger's input, as one node consumed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionUsage {
    /// The partition.
    pub partition: i32,
    /// Whether it is assigned to this node now.
    pub assigned: bool,
    /// Records read.
    pub records: u64,
    /// Rows written to the output topic.
    pub produced: u64,
    /// Records sent to the dead-letter topic (or skipped, without one).
    pub dead_letters: u64,
    /// Failed calls (each attempt).
    pub errors: u64,
    /// The next offset to read, as last committed (-1: none yet).
    pub committed: i64,
    /// Records behind the partition's end at the last look (-1: unknown).
    pub lag: i64,
}

/// `GET /v1/triggers/{name}`: a trigger and what each node reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerStatus {
    /// The trigger.
    pub trigger: Trigger,
    /// What each node running it reported, by node id.
    pub nodes: Vec<(String, TriggerUsage)>,
}

/// `GET /v1/triggers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerList {
    /// The tenant's triggers, by name.
    pub triggers: Vec<Trigger>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TriggerSpec {
        TriggerSpec {
            name: "falls".into(),
            function: "fall-detect".into(),
            source: TriggerSource::Kafka {
                brokers: "127.0.0.1:9092,kafka-2:9092".into(),
                topic: "accel".into(),
                group: "g".into(),
                output_topic: "falls".into(),
                dead_letter: Some("accel.dlq".into()),
            },
            batch: 512,
            linger_ms: 5,
            max_attempts: 3,
        }
    }

    #[test]
    fn specs_are_checked() {
        assert_eq!(spec().check(), Ok(()));
        let bad = |f: fn(&mut TriggerSpec)| {
            let mut s = spec();
            f(&mut s);
            s.check().expect_err("refused")
        };
        assert!(bad(|s| s.batch = 0).contains("--batch"));
        assert!(bad(|s| s.max_attempts = 0).contains("--max-attempts"));
        assert!(bad(|s| s.linger_ms = 3_600_000).contains("--linger"));
        assert!(bad(|s| s.name = "../x".into()).contains("trigger name"));
        let kafka = |f: fn(&mut String, &mut String, &mut String)| {
            let mut s = spec();
            if let TriggerSource::Kafka { brokers, topic, output_topic, .. } = &mut s.source {
                f(brokers, topic, output_topic);
            }
            s.check().expect_err("refused")
        };
        assert!(kafka(|b, _, _| *b = "localhost".into()).contains("host:port"));
        assert!(kafka(|b, _, _| *b = "h:0".into()).contains("host:port"));
        assert!(kafka(|_, t, _| *t = "a/b".into()).contains("--topic"));
        assert!(kafka(|_, t, o| *o = t.clone()).contains("its own output"));
    }

    fn nats() -> TriggerSpec {
        TriggerSpec {
            source: TriggerSource::Nats {
                servers: "nats://127.0.0.1:4222,nats-2:4222".into(),
                stream: "ACCEL".into(),
                consumer: "wasmgrid-falls".into(),
                subject: Some("accel.>".into()),
                output_subject: "falls".into(),
                dead_letter: Some("accel-dead".into()),
                ack_wait_ms: 30_000,
            },
            ..spec()
        }
    }

    #[test]
    fn nats_specs_are_checked() {
        assert_eq!(nats().check(), Ok(()));
        let bad = |f: fn(&mut String, &mut String, &mut Option<String>, &mut String, &mut u64)| {
            let mut s = nats();
            if let TriggerSource::Nats { servers, stream, subject, output_subject, ack_wait_ms, .. } = &mut s.source {
                f(servers, stream, subject, output_subject, ack_wait_ms);
            }
            s.check().expect_err("refused")
        };
        assert!(bad(|n, _, _, _, _| *n = "nats://nowhere".into()).contains("--nats"));
        assert!(bad(|_, s, _, _, _| *s = "a.b".into()).contains("--stream"));
        assert!(bad(|_, _, f, _, _| *f = Some("accel.>.x".into())).contains("last token"));
        assert!(bad(|_, _, f, _, _| *f = Some("accel..x".into())).contains("--subject"));
        assert!(bad(|_, _, _, o, _| *o = "falls.*".into()).contains("no wildcards"));
        assert!(bad(|_, _, _, o, _| *o = "accel.out".into()).contains("its own output"));
        assert!(bad(|_, _, _, _, w| *w = 10).contains("--ack-wait"));
    }

    #[test]
    fn subjects_match_filters() {
        assert!(subject_matches("accel.>", "accel.phone-1"));
        assert!(subject_matches("accel.>", "accel.a.b"));
        assert!(!subject_matches("accel.>", "accel"));
        assert!(subject_matches("accel.*", "accel.x"));
        assert!(!subject_matches("accel.*", "accel.x.y"));
        assert!(subject_matches("accel", "accel"));
        assert!(!subject_matches("accel", "falls"));
    }

    #[test]
    fn a_trigger_reads_as_written() {
        let t = Trigger { tenant: "default".into(), spec: nats(), paused: false, created_at: 9 };
        let json = serde_json::to_string(&t).expect("json");
        assert!(json.contains(r#""kind":"nats""#), "{json}");
        assert_eq!(serde_json::from_str::<Trigger>(&json).expect("back"), t);
        let t = Trigger { tenant: "default".into(), spec: spec(), paused: true, created_at: 7 };
        let json = serde_json::to_string(&t).expect("json");
        assert!(json.contains(r#""kind":"kafka""#), "{json}");
        assert_eq!(serde_json::from_str::<Trigger>(&json).expect("back"), t);
        // Defaults for what a request leaves out.
        let s: TriggerSpec = serde_json::from_str(
            r#"{"name":"t","function":"f","source":{"kind":"kafka","brokers":"h:1","topic":"a","group":"g","output_topic":"b"}}"#,
        )
        .expect("spec");
        assert_eq!((s.batch, s.linger_ms, s.max_attempts), (512, 5, 3));
    }
}
