//! What a stranger can do to a listener: tokenless bodies are refused from
//! the headers, before a byte of them is read; slow headers, idle
//! kept-alive connections and bodies that stop arriving are closed after
//! their timeouts while normal calls are answered; a connection over the cap
//! is answered 503. A real `wasmgrid dev`, raw TCP clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::grid::Dev;
use wasmgrid_test_artifacts as guests;

const MODEL: &str = r#"{"features": ["amount"], "weights": [0.01], "bias": -1.0}"#;

fn address(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// Everything the server sends until it closes, or until `within` passes
/// (then `None`: the connection is still open).
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
    None
}

/// The status line and body of one answer read from `stream`.
fn answer(stream: &mut TcpStream) -> (String, String) {
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return (head.lines().next().unwrap_or_default().to_string(), body.to_string());
            }
        }
        let n = stream.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed before an answer: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn health_ok(gateway: &str) -> bool {
    let mut s = TcpStream::connect(address(gateway)).expect("connect");
    s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    answer(&mut s).0.contains("200")
}

#[test]
fn strangers_cannot_hold_memory_or_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start_with(&dir.path().join("grid"), &["--header-timeout", "2s", "--body-timeout", "2s"]);
    common::grid_ok(&dev.control_plane, &["deploy", "fraud", guests::LOGREG, "--config", &format!("model={MODEL}")]);
    let gateway = address(&dev.gateway);
    let path = "/v1/fn/default/fraud";
    // The limits below are those of a function the node serves: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = TcpStream::connect(&gateway).expect("connect");
        let row = r#"{"amount": 1}"#;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{row}",
            common::TOKEN,
            row.len()
        );
        s.write_all(head.as_bytes()).expect("call");
        if answer(&mut s).0.contains("200") {
            break;
        }
        assert!(Instant::now() < deadline, "the node never served fraud");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 100 tokenless connections, each declaring a 16 MiB body: each is
    // answered 401 from its headers alone, and the node's memory does not
    // grow by the bodies.
    let before = common::rss(dev.pid());
    let body = vec![b'x'; 16 << 20];
    let senders: Vec<_> = (0..100)
        .map(|_| {
            let (gateway, body) = (gateway.clone(), body.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&gateway).expect("connect");
                let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).expect("head");
                // The answer comes before any of the body is sent; what is
                // sent after it is never read.
                let got = answer(&mut s);
                let _ = s.write_all(&body);
                got
            })
        })
        .collect();
    for sender in senders {
        let (status, body) = sender.join().expect("sender");
        assert!(status.contains("401"), "{status} {body}");
        assert!(body.contains("\"code\""), "a JSON error body: {body}");
    }
    let grown = common::rss(dev.pid()).saturating_sub(before);
    assert!(grown < 100 << 20, "tokenless bodies grew the node by {} MiB", grown >> 20);

    // A declared length over --max-body: 413 with a JSON body, from the
    // headers alone.
    let mut s = TcpStream::connect(&gateway).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
        common::TOKEN,
        1u64 << 30
    );
    s.write_all(head.as_bytes()).expect("head");
    let (status, body) = answer(&mut s);
    assert!(status.contains("413") && body.contains("too_large"), "{status} {body}");

    // A body that never arrives: 408 after the body timeout.
    let mut s = TcpStream::connect(&gateway).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 1000\r\n\r\n{{\"amo",
        common::TOKEN
    );
    s.write_all(head.as_bytes()).expect("head");
    let (status, body) = answer(&mut s);
    assert!(status.contains("408") && body.contains("body_timeout"), "{status} {body}");

    // Headers sent a byte at a time: closed after the header timeout, while
    // normal calls are answered meanwhile.
    let mut slow = TcpStream::connect(&gateway).expect("connect");
    let request = format!("GET /v1/health HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n", "y".repeat(64));
    let mut closed = false;
    for byte in request.as_bytes() {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        assert!(health_ok(&dev.gateway), "a normal call is answered while one client dawdles");
        std::thread::sleep(Duration::from_millis(300));
        if read_until_closed(&mut slow, Duration::from_millis(1)).is_some() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a connection sending its headers over {} s was not closed", request.len() * 3 / 10);

    // An idle kept-alive connection is closed after the header timeout.
    let mut idle = TcpStream::connect(&gateway).expect("connect");
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    assert!(answer(&mut idle).0.contains("200"));
    assert!(read_until_closed(&mut idle, Duration::from_secs(30)).is_some(), "an idle connection stayed open");
}

#[test]
fn a_connection_over_the_cap_is_answered_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start_with(&dir.path().join("grid"), &["--max-connections", "4", "--header-timeout", "60s"]);
    let gateway = address(&dev.gateway);
    // Four connections, each having had an answer, held open.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&gateway).expect("connect");
            s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
            assert!(answer(&mut s).0.contains("200"));
            s
        })
        .collect();
    let mut fifth = TcpStream::connect(&gateway).expect("connect");
    let (status, body) = answer(&mut fifth);
    assert!(status.contains("503") && body.contains("too_many_connections"), "{status} {body}");
    drop(held);
    // Once they close, calls are served again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = TcpStream::connect(&gateway).expect("connect");
        s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
        if answer(&mut s).0.contains("200") {
            break;
        }
        assert!(Instant::now() < deadline, "the cap was not released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn plain_http_beyond_loopback_needs_tls_or_an_explicit_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("grid");
    common::write_token(&data.join("admin-token"));
    let args = ["dev", "--listen", "0.0.0.0:0", "--gateway", "127.0.0.1:0", "--data"];
    let out = common::wasmgrid().args(args).arg(&data).output().expect("wasmgrid runs");
    let stderr = common::fails(out);
    assert!(stderr.contains("refusing to serve plain HTTP on 0.0.0.0:0") && stderr.contains("--tls-cert"), "{stderr}");
    let out = common::wasmgrid()
        .args(["node", "--control-plane", "http://127.0.0.1:9", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("node"))
        .output()
        .expect("wasmgrid runs");
    assert!(common::fails(out).contains("refusing to serve plain HTTP"));

    // Asked for explicitly, it serves.
    let mut child = common::wasmgrid()
        .args(args)
        .arg(&data)
        .arg("--insecure-plain-http")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("wasmgrid dev");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("stdout")));
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    common::grid::terminate(&mut child);
    assert!(first.starts_with("control plane: http://"), "{first}");
}

#[test]
fn dev_keeps_serving_after_whoever_read_its_urls_stops_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_token(&dir.path().join("admin-token"));
    let mut child = common::wasmgrid()
        .args(["dev", "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wasmgrid dev");
    // A script reads the first line it wants, then closes both pipes.
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("first line");
    drop(stdout);
    drop(child.stderr.take());
    let url = first.strip_prefix("control plane:").map(str::trim).unwrap_or_else(|| panic!("{first}")).to_string();
    std::thread::sleep(Duration::from_millis(300));
    // It still serves, and logs what it does (to a closed stderr).
    common::grid_ok(&url, &["deploy", "fraud", guests::LOGREG, "--config", &format!("model={MODEL}")]);
    common::grid_ok(&url, &["functions", "ls"]);
    assert!(child.try_wait().expect("status").is_none(), "wasmgrid dev exited");
    common::grid::terminate(&mut child);
}
