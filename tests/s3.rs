//! Batch jobs reading and writing an S3-compatible object store: a real
//! server (moto's, `pip install 'moto[server]'`, which `.ci/run` installs)
//! on loopback, a control plane and two nodes as processes.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::grid::{Node, Replicas, free_port};
use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use wasmgrid_api::{JobInfo, JobState};
use wasmgrid_test_artifacts as guests;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's S3 server on a free port, answering.
fn start_s3() -> (Server, String) {
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs moto's server (pip install 'moto[server]'; .ci/run installs it)");
    let server = Server(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto's server did not start (pip install 'moto[server]')");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, endpoint)
}

fn bucket(endpoint: &str, name: &str) -> Arc<AmazonS3> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(name)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("s3 client"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_reads_and_writes_s3_and_scoring_reads_http() {
    let (_s3, endpoint) = start_s3();
    reqwest::Client::new().put(format!("{endpoint}/data")).send().await.expect("create bucket");
    let store = bucket(&endpoint, "data");
    if let Ok(mut env) = common::EXTRA_ENV.lock() {
        for (k, v) in [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            // The http:// input below is served on loopback.
            ("WASMGRID_EGRESS_ALLOW", "127.0.0.1"),
            // A cache of 64 KiB: the four 32 KiB objects cannot all stay.
            ("WASMGRID_INPUT_CACHE_SIZE", "64KiB"),
        ] {
            env.push((k.into(), v.into()));
        }
    }

    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let _a = Node::start(&urls, &dir.join("node-a"));
    let _b = Node::start(&urls, &dir.join("node-b"));
    common::grid_ok(&urls, &["deploy", "wc-map", guests::WORDCOUNT_MAP]);
    common::grid_ok(&urls, &["deploy", "wc-reduce", guests::WORDCOUNT_REDUCE]);

    // The corpus goes up to the bucket; the expected counts come from here.
    let corpus = dir.join("corpus");
    let files = common::write_corpus(&corpus, 4, 32 << 10, 21);
    let mut expected: HashMap<String, u64> = HashMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        for w in text.split_ascii_whitespace() {
            *expected.entry(w.to_string()).or_insert(0) += 1;
        }
        let key = Key::from(format!("corpus/{}", f.file_name().expect("name").to_string_lossy()));
        store.put(&key, std::fs::read(f).expect("read").into()).await.expect("upload");
    }

    let stdout = common::grid_ok(
        &urls,
        &[
            "job",
            "submit",
            "wc-map",
            "--input",
            "s3://data/corpus/",
            "--output",
            "s3://data/counts",
            "--reduce",
            "wc-reduce",
            "--reduce-partitions",
            "3",
            "--partition-size",
            "8KiB",
            "--wait",
            "--json",
        ],
    );
    let job: JobInfo = serde_json::from_str(&stdout).expect("job JSON");
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert!(job.map_tasks >= 16, "{} map tasks", job.map_tasks);

    let manifest = store.get(&Key::from("counts/_SUCCESS")).await.expect("_SUCCESS").bytes().await.expect("bytes");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest");
    let mut counts: HashMap<String, u64> = HashMap::new();
    for f in manifest["files"].as_array().expect("files") {
        let name = f["name"].as_str().expect("name");
        let bytes = store.get(&Key::from(format!("counts/{name}"))).await.expect("part").bytes().await.expect("bytes");
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            let word = v["word"].as_str().expect("word").to_string();
            assert!(counts.insert(word.clone(), v["count"].as_u64().expect("count")).is_none(), "{word} twice");
        }
    }
    assert_eq!(counts, expected);
    // The leader fetched all four objects to plan the job; its cache kept
    // what fits its budget, the most recently used.
    let cached: Vec<_> = std::fs::read_dir(dir.join("replica-1/inputs"))
        .expect("the leader's input cache")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!cached.is_empty() && cached.len() <= 2, "cached after the job: {cached:?}");
    // Nothing is left under the work prefix; the output is the manifest and its files.
    use futures_util::StreamExt;
    let listed: Vec<String> =
        store.list(Some(&Key::from("counts"))).map(|m| m.expect("meta").location.to_string()).collect().await;
    assert_eq!(listed.len(), manifest["files"].as_array().map_or(0, Vec::len) + 1, "{listed:?}");

    // The same output again without --overwrite is refused.
    let again = ["job", "submit", "wc-map", "--input", "s3://data/corpus/", "--output", "s3://data/counts"];
    let stderr = common::fails(common::grid_cli(&urls, &[&again[..], &["--reduce", "wc-reduce"]].concat()));
    assert!(stderr.contains("--overwrite"), "{stderr}");

    // A missing bucket prefix is a clear error, not a hang.
    let missing = ["job", "submit", "wc-map", "--input", "s3://data/nothing-here/", "--output", "s3://data/x"];
    let stderr = common::fails(common::grid_cli(&urls, &[&missing[..], &["--reduce", "wc-reduce"]].concat()));
    assert!(stderr.contains("no objects match"), "{stderr}");

    // An http:// input, scored into a local directory.
    common::grid_ok(
        &urls,
        &[
            "deploy",
            "scorer",
            guests::LOGREG,
            "--config",
            r#"model={"features": ["amount"], "weights": [0.01], "bias": -1.0}"#,
        ],
    );
    let web = dir.join("web");
    std::fs::create_dir_all(&web).expect("web");
    std::fs::write(web.join("rows.csv"), "id,amount\n1,100\n2,300\n").expect("rows");
    let port = free_port();
    let _http = Server(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&web)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http.server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = dir.join("scored");
    common::grid_ok(
        &urls,
        &[
            "job",
            "submit",
            "scorer",
            "--input",
            &format!("http://127.0.0.1:{port}/rows.csv"),
            "--output",
            &out.display().to_string(),
            "--format",
            "csv",
            "--wait",
        ],
    );
    let scored = std::fs::read_to_string(out.join("part-00000.csv")).expect("scored");
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let lines: Vec<&str> = scored.lines().collect();
    assert_eq!(lines[0], "id,amount,score");
    for (line, amount) in lines[1..].iter().zip([100.0, 300.0]) {
        let score: f64 = line.rsplit(',').next().expect("score").parse().expect("number");
        assert!((score - sigmoid(0.01 * amount - 1.0)).abs() < 1e-12, "{line}");
    }
}
