//! Stream benchmark (`cargo bench --bench streams`): phones' accelerometer
//! windows through Kafka, scored by `fall-detect`, in one run on this
//! machine:
//!
//! - **wasmgrid**: `wasmgrid dev` (release build) with a Kafka trigger
//!   (`--batch 512 --linger 5ms`), the guest scoring each batch in wasmtime;
//! - **native**: a plain Rust consumer doing the same work in this process:
//!   the same client (rdkafka), the same batching, JSON rows in and out,
//!   the same model compiled for the host
//!   (`guest-examples/fall-detect/src/model.rs`), outputs produced with
//!   `acks=all` by an idempotent producer, offsets committed after the
//!   acknowledgements.
//!
//! The broker is tansu (in memory) on this machine, topics of 4 partitions.
//! The load generator simulates `PHONES` phones (default 1,000,000), each
//! sending a window (20 samples per axis) every `PERIOD` seconds (default
//! 60, so about 16,700 windows/s offered), for `SECONDS` (default 20); each
//! record carries the time it was produced, and a reader of the output
//! topic takes produce-to-output latency from it. Then the most a side
//! sustains: `BACKLOG` windows (default 200,000) are produced while it is
//! stopped, and it drains them from a standing start. Broker, generator,
//! reader and the side measured share the cores; the other side is
//! stopped meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value};
use wasmgrid_test_artifacts as guests;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../guest-examples/fall-detect/src/model.rs"]
mod model;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Window bodies to draw from (generating one costs more than sending it).
fn pool() -> Vec<[String; 3]> {
    let mut rng = common::Rng::new(3);
    (0..4_096).map(|i| common::kafka::window(&mut rng, 20, i % 50 == 0)).collect()
}

/// Produces windows at `rate` per second for `seconds` (`rate` 0: as fast
/// as the producer takes them, `count` of them): phone `n % phones` sends
/// the `n`th. Returns how many were sent.
async fn generate(producer: &FutureProducer, topic: &str, rate: f64, seconds: f64, count: u64, phones: u64) -> u64 {
    let pool = pool();
    let started = Instant::now();
    let total = if rate > 0.0 { (rate * seconds) as u64 } else { count };
    let mut pending = std::collections::VecDeque::new();
    for n in 0..total {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let [ax, ay, az] = &pool[(n % pool.len() as u64) as usize];
        let phone = format!("phone-{}", n % phones);
        let value =
            format!(r#"{{"phone":"{phone}","seq":{n},"sent_us":{},"ax":"{ax}","ay":"{ay}","az":"{az}"}}"#, now_us());
        let record = FutureRecord::to(topic).key(phone.as_str()).payload(value.as_str());
        match producer.send_result(record) {
            Ok(d) => pending.push_back(d),
            Err((e, _)) => panic!("producing: {e}"),
        }
        while pending.len() > 50_000 {
            if let Some(d) = pending.pop_front() {
                d.await.expect("delivered").expect("acknowledged");
            }
        }
    }
    for d in pending {
        d.await.expect("delivered").expect("acknowledged");
    }
    total
}

/// Reads `topic` from its end until `expected` outputs arrived or the
/// stream stayed quiet for 10 s: (outputs, latencies in µs, first and last
/// arrival).
fn read_outputs(broker: &str, topic: &str, expected: u64, ready: &AtomicBool) -> (u64, Vec<u64>, Instant, Instant) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("bench-reader-{}", now_us()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    // Wait for the assignment before the generator starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().map_or(0, |a| a.count()) == 0 && Instant::now() < deadline {
        consumer.poll(Duration::from_millis(100));
    }
    // Start from each partition's end as it is now.
    for e in consumer.assignment().expect("assignment").elements() {
        let (_, high) = consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(5)).expect("watermarks");
        consumer.seek(topic, e.partition(), Offset::Offset(high), Duration::from_secs(5)).expect("seek");
    }
    ready.store(true, Ordering::Release);
    let (mut n, mut latencies) = (0u64, Vec::with_capacity(expected as usize));
    let (mut first, mut last, mut quiet) = (None, Instant::now(), Instant::now());
    while n < expected && quiet.elapsed() < Duration::from_secs(10) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let at = now_us();
            let row: Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("an output row");
            latencies.push(at.saturating_sub(row["sent_us"].as_u64().unwrap_or(at)));
            n += 1;
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            quiet = Instant::now();
        }
    }
    (n, latencies, first.unwrap_or(last), last)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The plain Rust consumer: the trigger's loop without the grid.
async fn native(broker: String, input: String, output: String, stop: Arc<AtomicBool>) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("group.id", "native")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .expect("consumer");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    consumer.subscribe(&[&input]).expect("subscribe");
    while !stop.load(Ordering::Acquire) {
        let Ok(Ok(first)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await else { continue };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(5);
        let mut batch = vec![(
            first.partition(),
            first.offset(),
            first.key().map(<[u8]>::to_vec),
            first.payload().map(<[u8]>::to_vec),
        )];
        drop(first);
        while batch.len() < 512 {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push((
                    m.partition(),
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                )),
                _ => break,
            }
        }
        let mut payloads = Vec::with_capacity(batch.len());
        for (_, _, key, value) in &batch {
            let mut row: Map<String, Value> =
                serde_json::from_slice(value.as_deref().unwrap_or_default()).expect("row");
            let m = model::magnitudes(
                row["ax"].as_str().unwrap_or_default(),
                row["ay"].as_str().unwrap_or_default(),
                row["az"].as_str().unwrap_or_default(),
            )
            .expect("window");
            row.insert("fall_probability".into(), Value::from(model::fall_probability(&m, -4.0)));
            payloads.push((key.clone(), serde_json::to_vec(&row).expect("json")));
        }
        let deliveries: Vec<_> = payloads
            .iter()
            .map(|(key, payload)| {
                let mut r = FutureRecord::<[u8], Vec<u8>>::to(&output).payload(payload);
                if let Some(k) = key {
                    r = r.key(k.as_slice());
                }
                producer.send_result(r).map_err(|(e, _)| e).expect("queued")
            })
            .collect();
        for d in deliveries {
            d.await.expect("delivered").expect("acknowledged");
        }
        let mut last: HashMap<i32, i64> = HashMap::new();
        for (p, o, _, _) in &batch {
            last.insert(*p, *o);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in last {
            tpl.add_partition_offset(&input, p, Offset::Offset(o + 1)).expect("offset");
        }
        consumer.commit(&tpl, CommitMode::Async).expect("commit");
    }
}

struct Figures {
    offered: f64,
    sustained: f64,
    p50_ms: f64,
    p99_ms: f64,
    outputs: u64,
    max_rate: f64,
}

/// The generator's producer: batched (5 ms linger), one request in flight.
fn producer(broker: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("producer")
}

/// One side's two phases. `start`/`stop` resume and pause it.
async fn measure(
    broker: &common::kafka::Broker,
    input: &str,
    output: &str,
    start: &dyn Fn(),
    stop: &dyn Fn(),
    (phones, period, seconds, backlog): (u64, f64, f64, u64),
) -> Figures {
    let producer = producer(&broker.address);
    let rate = phones as f64 / period;
    // Phase 1: the phones at their pace, the side running.
    start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expected = (rate * seconds) as u64;
    let ready = Arc::new(AtomicBool::new(false));
    let reader = {
        let (b, t, r) = (broker.address.clone(), output.to_string(), ready.clone());
        tokio::task::spawn_blocking(move || read_outputs(&b, &t, expected, &r))
    };
    while !ready.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let began = Instant::now();
    generate(&producer, input, rate, seconds, 0, phones).await;
    let offered = expected as f64 / began.elapsed().as_secs_f64();
    let (outputs, mut latencies, _, last) = reader.await.expect("reader");
    latencies.sort_unstable();
    let sustained = outputs as f64 / last.duration_since(began).as_secs_f64();
    // Phase 2: a backlog produced while it is stopped, drained from a
    // standing start.
    stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    generate(&producer, input, 0.0, 0.0, backlog, phones).await;
    let ready = Arc::new(AtomicBool::new(false));
    let reader = {
        let (b, t, r) = (broker.address.clone(), output.to_string(), ready.clone());
        tokio::task::spawn_blocking(move || read_outputs(&b, &t, backlog, &r))
    };
    while !ready.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let began = Instant::now();
    start();
    let (drained, _, _, last) = reader.await.expect("reader");
    let max_rate = drained as f64 / last.duration_since(began).as_secs_f64();
    assert_eq!(drained, backlog, "every backlog window scored");
    stop();
    Figures {
        offered,
        sustained,
        p50_ms: percentile(&latencies, 0.5) as f64 / 1e3,
        p99_ms: percentile(&latencies, 0.99) as f64 / 1e3,
        outputs,
        max_rate,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shape = (
        env_or("PHONES", 1_000_000u64),
        env_or("PERIOD", 60.0f64),
        env_or("SECONDS", 20.0f64),
        env_or("BACKLOG", 200_000u64),
    );
    println!(
        "wasmgrid streams benchmark ({cores} cores; broker, generator, reader and the side measured share them)\n\
         {} phones, a window each every {} s ({:.0}/s offered) for {} s; then a backlog of {} windows drained\n",
        shape.0,
        shape.1,
        shape.0 as f64 / shape.1,
        shape.2,
        shape.3
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = common::kafka::Broker::start(&tmp.path().join("tansu.log")).expect("tansu is installed");
    broker.create_topics(&[("accel", 4), ("falls", 4), ("accel-native", 4), ("falls-native", 4)]).await;

    // wasmgrid: a trigger on `wasmgrid dev`, paused and resumed by the CLI.
    let dev =
        common::grid::Dev::start_with(&tmp.path().join("dev"), &["--egress-allow", "127.0.0.1", "--gpu-mode", "off"]);
    let urls = dev.control_plane.clone();
    common::grid_ok(&urls, &["deploy", "fall-detect", guests::FALL_DETECT]);
    let trigger = [
        "trigger",
        "create",
        "falls",
        "--kafka",
        &broker.address,
        "--topic",
        "accel",
        "--function",
        "fall-detect",
        "--output-topic",
        "falls",
        "--batch",
        "512",
        "--linger",
        "5ms",
    ];
    common::grid_ok(&urls, &trigger);
    common::grid_ok(&urls, &["trigger", "pause", "falls"]);
    let start = || {
        common::grid_ok(&urls, &["trigger", "resume", "falls"]);
    };
    let stop = || {
        common::grid_ok(&urls, &["trigger", "pause", "falls"]);
    };
    let grid = measure(&broker, "accel", "falls", &start, &stop, shape).await;

    // Native: the plain consumer, started and stopped in this process.
    let running: std::sync::Mutex<Option<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)>> = std::sync::Mutex::new(None);
    let address = broker.address.clone();
    let start = || {
        let flag = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(native(address.clone(), "accel-native".into(), "falls-native".into(), flag.clone()));
        *running.lock().expect("lock") = Some((flag, task));
    };
    let stop = || {
        if let Some((flag, _task)) = running.lock().expect("lock").take() {
            flag.store(true, Ordering::Release);
        }
    };
    let native = measure(&broker, "accel-native", "falls-native", &start, &stop, shape).await;

    println!(
        "| side | offered windows/s | sustained windows/s | p50 produce-to-output | p99 | outputs | max sustained windows/s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, f) in [("wasmgrid (trigger)", &grid), ("native Rust consumer", &native)] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {} | {:.0} |",
            f.offered, f.sustained, f.p50_ms, f.p99_ms, f.outputs, f.max_rate
        );
    }
    println!(
        "\nratio wasmgrid / native: sustained {:.2}x, max {:.2}x; p99 {:+.1} ms",
        grid.sustained / native.sustained,
        grid.max_rate / native.max_rate,
        grid.p99_ms - native.p99_ms
    );
}
