//! TLS end to end: three control-plane replicas (Raft and API over HTTPS),
//! two nodes and the CLI, all with certificates from a test CA: deploy,
//! invoke and a batch job work; a client trusting another CA is refused; a
//! replica whose certificate another CA signed never joins.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::grid::{free_port, terminate};
use wasmgrid_test_artifacts as guests;

/// A CA, and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("dir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = ca.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
    let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("certificate");
    let paths =
        (dir.join(format!("{name}-ca.pem")), dir.join(format!("{name}-cert.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, leaf.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            terminate(child);
        }
    }
}

fn tls_flags(cmd: &mut Command, (ca, cert, key): &(PathBuf, PathBuf, PathBuf)) {
    cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key).arg("--tls-ca").arg(ca);
}

/// `wasmgrid ARGS` trusting `ca`.
fn cli(ca: &Path, urls: &str, args: &[&str]) -> std::process::Output {
    common::wasmgrid().env("WASMGRID_CA", ca).args(args).args(["--url", urls]).output().expect("wasmgrid runs")
}

/// The `score` of the first row `wasmgrid invoke ARGS` answers, retried
/// until the function is served (within `within`), and the whole answer.
fn score_once_served(ca: &Path, urls: &str, args: &[&str], within: Duration) -> (f64, String) {
    let deadline = Instant::now() + within;
    let answer = loop {
        let out = cli(ca, urls, args);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "{args:?} over TLS: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    };
    let value: serde_json::Value = serde_json::from_str(&answer).expect("json");
    (value["rows"][0]["score"].as_f64().expect("score"), answer)
}

fn status(ca: &Path, url: &str) -> Option<serde_json::Value> {
    let out = cli(ca, url, &["cluster", "status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn a_grid_over_https_deploys_invokes_and_runs_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good = certificates(&d.join("pki"), "grid");
    let other = certificates(&d.join("pki"), "other");
    let token_file = d.join("admin-token");
    common::write_token(&token_file);

    // Replicas 1 and 2 have the grid's certificate; replica 3 one another
    // CA signed (it trusts the grid's CA, but nobody trusts it).
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = ports.iter().enumerate().map(|(i, p)| format!("{}=https://127.0.0.1:{p}", i + 1)).collect::<Vec<_>>();
    let mut procs = Killed(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let mut cmd = common::wasmgrid();
        cmd.args(["control-plane", "--id", &(i + 1).to_string(), "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(d.join(format!("replica-{}", i + 1)))
            .args(["--peers", &peers.join(",")])
            .arg("--admin-token-file")
            .arg(&token_file);
        let certs = if i == 2 { (good.0.clone(), other.1.clone(), other.2.clone()) } else { good.clone() };
        tls_flags(&mut cmd, &certs);
        // Mutual TLS: Raft and the nodes' endpoints need a certificate too.
        cmd.arg("--tls-client-ca").arg(&good.0);
        let log = std::fs::File::create(d.join(format!("replica-{}.log", i + 1))).expect("log");
        procs.0.push(cmd.stdout(Stdio::null()).stderr(log).spawn().expect("replica"));
    }
    let url = |i: usize| format!("https://127.0.0.1:{}", ports[i]);
    let urls = format!("{},{}", url(0), url(1));
    let ca = &good.0;

    // A leader among 1 and 2.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders: Vec<_> = (0..2).map(|i| status(ca, &url(i)).and_then(|s| s["leader"].as_u64())).collect();
        if leaders[0].is_some() && leaders[0] == leaders[1] {
            break;
        }
        assert!(Instant::now() < deadline, "no leader over TLS: {leaders:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Two nodes serving HTTPS.
    for n in 0..2 {
        let mut cmd = common::wasmgrid();
        cmd.args(["node", "--control-plane", &urls, "--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data")
            .arg(d.join(format!("node-{n}")));
        tls_flags(&mut cmd, &good);
        let log = std::fs::File::create(d.join(format!("node-{n}.log"))).expect("log");
        procs.0.push(cmd.stdout(Stdio::null()).stderr(log).spawn().expect("node"));
    }

    let ok = |out: std::process::Output| common::ok_stdout(out);
    ok(cli(
        ca,
        &urls,
        &[
            "deploy",
            "fraud",
            guests::LOGREG,
            "--config",
            r#"model={"features": ["amount"], "weights": [0.01], "bias": -1.0}"#,
        ],
    ));
    ok(cli(ca, &urls, &["deploy", "wc-map", guests::WORDCOUNT_MAP]));
    ok(cli(ca, &urls, &["deploy", "wc-reduce", guests::WORDCOUNT_REDUCE]));

    // Invoke through a node's HTTPS gateway, once both are up.
    let invoke = ["invoke", "fraud", "--json", "--data", r#"{"amount": 300}"#];
    let (score, answer) = score_once_served(ca, &urls, &invoke, Duration::from_secs(60));
    assert!((score - 1.0 / (1.0 + (-(0.01f64 * 300.0 - 1.0)).exp())).abs() < 1e-12, "{answer}");
    // Both gateways serve HTTPS only: they registered https:// addresses,
    // and plain HTTP gets no answer from them.
    let nodes: serde_json::Value =
        serde_json::from_str(&ok(cli(ca, &urls, &["nodes", "ls", "--json"]))).expect("nodes");
    let addresses: Vec<&str> =
        nodes["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["address"].as_str()).collect();
    assert_eq!(addresses.len(), 2, "{nodes}");
    for address in addresses {
        let plain = address.strip_prefix("https://").unwrap_or_else(|| panic!("{address} is not https"));
        let answer = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
            .arg(format!("http://{plain}/v1/health"))
            .output()
            .expect("curl");
        assert_ne!(String::from_utf8_lossy(&answer.stdout), "200", "{address} answered plain HTTP");
    }
    // A function placed on one node answers through both: the other
    // forwards it over HTTPS (HTTP/2), trusting the same CA.
    ok(cli(
        ca,
        &urls,
        &[
            "deploy",
            "fraud-once",
            guests::LOGREG,
            "--replicas",
            "1",
            "--config",
            r#"model={"features": ["amount"], "weights": [0.02], "bias": -1.0}"#,
        ],
    ));
    let listed: serde_json::Value =
        serde_json::from_str(&ok(cli(ca, &urls, &["functions", "ls", "--json"]))).expect("functions");
    let once = listed["functions"].as_array().expect("functions").iter().find(|f| f["name"] == "fraud-once");
    assert_eq!(once.map(|f| f["nodes"].as_array().map_or(0, Vec::len)), Some(1), "{listed}");
    for address in nodes["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["address"].as_str()) {
        let invoke = ["invoke", "fraud-once", "--node", address, "--json", "--data", r#"{"amount": 100}"#];
        let (score, answer) = score_once_served(ca, &urls, &invoke, Duration::from_secs(30));
        assert!((score - 1.0 / (1.0 + (-(0.02f64 * 100.0 - 1.0)).exp())).abs() < 1e-12, "{address}: {answer}");
    }

    // A batch job: tasks leased and reported over HTTPS.
    let corpus = d.join("corpus");
    std::fs::create_dir_all(&corpus).expect("corpus");
    std::fs::write(corpus.join("a.txt"), "grid tls grid\nwasm grid\n").expect("write");
    let out_dir = d.join("counts");
    ok(cli(
        ca,
        &urls,
        &[
            "job",
            "submit",
            "wc-map",
            "--input",
            &corpus.display().to_string(),
            "--output",
            &out_dir.display().to_string(),
            "--reduce",
            "wc-reduce",
            "--wait",
        ],
    ));
    let counted = common::parts_text(&out_dir);
    assert!(counted.contains("grid") && counted.contains('3'), "{counted}");

    // A client trusting another CA is refused, naming the certificate.
    let refused = cli(&other.0, &urls, &["functions", "ls"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");

    // The nodes' endpoints need a client certificate besides the token: a
    // lease with the admin token alone is refused, with the grid's
    // certificate it is served.
    let lease = |replica: usize, with_certificate: bool| {
        let mut curl = Command::new("curl");
        // HTTP/1.1: curl counts an HTTP/2 stream the server answers before
        // reading the upload as a framing error.
        curl.args(["-sS", "--http1.1", "-w", "\n%{http_code}", "--cacert"]).arg(ca);
        if with_certificate {
            curl.arg("--cert").arg(&good.1).arg("--key").arg(&good.2);
        }
        let out = curl
            .args(["-H", &format!("Authorization: Bearer {}", common::TOKEN), "-H", "content-type: application/json"])
            .args(["-d", r#"{"node": "probe", "max": 1, "wait_ms": 0}"#, &format!("{}/v1/tasks/lease", url(replica))])
            .output()
            .expect("curl");
        format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout))
    };
    // Both the leader and a follower (which forwards with its own
    // certificate) refuse it.
    for replica in [0, 1] {
        let refused = lease(replica, false);
        assert!(refused.ends_with("403") && refused.contains("client certificate"), "{refused}");
        let served = lease(replica, true);
        assert!(served.ends_with("200"), "{served}");
    }

    // Replica 3, whose certificate the others do not trust, never joined:
    // it has no leader and applied nothing, while the others applied the
    // deploys.
    let both = d.join("pki/both.pem");
    std::fs::write(&both, [std::fs::read(&good.0).expect("ca"), std::fs::read(&other.0).expect("ca")].concat())
        .expect("bundle");
    let leader = status(ca, &url(0)).expect("status of 1");
    let lone = status(&both, &url(2)).expect("status of 3");
    assert!(leader["applied"].as_u64().unwrap_or(0) >= 3, "{leader}");
    assert_eq!(lone["leader"], serde_json::Value::Null, "replica 3 joined: {lone}");
    assert_eq!(lone["applied"].as_u64(), Some(0), "replica 3 applied entries: {lone}");
}
