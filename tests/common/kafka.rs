//! A real Kafka-API broker for tests and benches (tansu, in memory), the
//! phones' accelerometer windows, and readers of the scored output.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Readers made so far: each reads in a group of its own, from the start.
static READERS: AtomicU64 = AtomicU64::new(0);

/// The `tansu` binary: on PATH or in cargo's bin directory.
pub fn tansu() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    let on_path = super::on_path("tansu");
    on_path.chain(home).find(|p| p.is_file())
}

/// A broker for the test, or `None` (with a notice) where tansu is not
/// installed and WASMGRID_REQUIRE_KAFKA is unset.
pub struct Broker {
    child: Child,
    pub address: String,
}

impl Broker {
    pub fn start(log: &std::path::Path) -> Option<Broker> {
        let Some(binary) = tansu() else {
            assert!(
                std::env::var_os("WASMGRID_REQUIRE_KAFKA").is_none(),
                "WASMGRID_REQUIRE_KAFKA is set but tansu is not installed (cargo install tansu --features dynostore)"
            );
            eprintln!("skipped: no tansu broker (cargo install tansu --locked --features dynostore)");
            return None;
        };
        let port = super::grid::free_port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let child = std::process::Command::new(binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "tansu_broker::coordinator=info,warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("broker log"))
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Broker { child, address })
    }

    /// Creates `topics` (name, partitions).
    pub async fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.address).create().expect("admin client");
        let new: Vec<NewTopic> =
            topics.iter().map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &options).await.expect("create topics") {
            result.expect("topic created");
        }
    }

    /// A producer that waits for every broker's acknowledgement.
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // One record per stored batch: tansu 0.6 answers a fetch from
            // an offset inside a stored batch with the next batch, so a
            // consumer that starts mid-batch (after a node is killed) would
            // never see the batch's remaining records. Kafka returns the
            // batch that holds the offset.
            .set("batch.num.messages", "1")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer")
    }

    /// Every record of `topic` until `done` says the records read are
    /// enough or `within` passes: (key, value) in the order read.
    pub fn read_until(
        &self,
        topic: &str,
        within: Duration,
        mut done: impl FnMut(&[(String, serde_json::Value)]) -> bool,
    ) -> Vec<(String, serde_json::Value)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .set(
                "group.id",
                format!("reader-{topic}-{}-{}", std::process::id(), READERS.fetch_add(1, Ordering::Relaxed)),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        // Every partition from its start (no group membership: a reader
        // does not wait for a rebalance).
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + within;
        let mut read = Vec::new();
        // `done` is asked when the topic goes quiet and every 1,000 records.
        let mut ask = true;
        while Instant::now() < deadline && !(ask && done(&read)) {
            ask = false;
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                    let mut value: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap_or_default()).expect("a JSON value");
                    if let Some(row) = value.as_object_mut() {
                        row.insert("_at".into(), format!("{}/{}", m.partition(), m.offset()).into());
                    }
                    read.push((key, value));
                    ask = read.len().is_multiple_of(1_000);
                }
                Some(Err(e)) => eprintln!("reading {topic}: {e}"),
                None => ask = true,
            }
        }
        read
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        super::grid::terminate(&mut self.child);
    }
}

/// One phone's accelerometer window (`samples` per axis, as the phones
/// send them: numbers separated by spaces), with a fall in it or not.
pub fn window(rng: &mut super::Rng, samples: usize, fall: bool) -> [String; 3] {
    let mut axes = [String::new(), String::new(), String::new()];
    let mut gauss = |mean: f64, sd: f64| {
        // Box-Muller from two uniforms.
        let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
        mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    for i in 0..samples {
        let (x, y, z) = if fall && (samples / 3..samples / 3 + 4).contains(&i) {
            (gauss(0.0, 0.05), gauss(0.0, 0.05), gauss(0.1, 0.05)) // free fall
        } else if fall && i == samples / 3 + 4 {
            (gauss(2.5, 0.3), gauss(1.8, 0.3), gauss(2.6, 0.3)) // impact
        } else {
            (gauss(0.0, 0.08), gauss(0.0, 0.08), gauss(1.0, 0.08)) // walking or still
        };
        for (axis, v) in axes.iter_mut().zip([x, y, z]) {
            if !axis.is_empty() {
                axis.push(' ');
            }
            axis.push_str(&format!("{v:.3}"));
        }
    }
    axes
}

/// The windows of `phones` phones, `per_phone` each (phone-major order is
/// left to the caller): each record's key, JSON value and whether it holds
/// a fall. About one window in `1 / falls` has one.
pub fn windows(phones: usize, per_phone: usize, falls: f64, seed: u64) -> Vec<(String, String, bool)> {
    let mut rng = super::Rng::new(seed);
    let mut out = Vec::with_capacity(phones * per_phone);
    for seq in 0..per_phone {
        for phone in 0..phones {
            let fall = rng.unit() < falls;
            let [ax, ay, az] = window(&mut rng, 20, fall);
            let key = format!("phone-{phone}");
            let value = serde_json::json!({ "phone": key, "seq": seq, "ax": ax, "ay": ay, "az": az });
            out.push((key, value.to_string(), fall));
        }
    }
    out
}

/// Produces `records` (key, value) to `topic`, waiting for every
/// acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, records: &[(String, String, bool)]) {
    let mut pending = Vec::with_capacity(records.len());
    for (key, value, _) in records {
        let record = FutureRecord::to(topic).key(key.as_str()).payload(value.as_str());
        pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("queued"));
        if pending.len() >= 10_000 {
            for p in pending.drain(..) {
                p.await.expect("delivered").expect("acknowledged");
            }
        }
    }
    for p in pending {
        p.await.expect("delivered").expect("acknowledged");
    }
}

/// Counts of each (phone, seq) in the output, and the fall probability
/// the last copy of each carried.
pub fn tally(read: &[(String, serde_json::Value)]) -> HashMap<(String, u64), (u32, f64)> {
    let mut seen: HashMap<(String, u64), (u32, f64)> = HashMap::new();
    for (key, row) in read {
        let phone = row["phone"].as_str().expect("phone").to_string();
        assert_eq!(&phone, key, "an output is keyed as its input");
        let seq = row["seq"].as_u64().expect("seq");
        let p = row["fall_probability"].as_f64().expect("fall_probability");
        let e = seen.entry((phone, seq)).or_default();
        e.0 += 1;
        e.1 = p;
    }
    seen
}
