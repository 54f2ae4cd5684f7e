//! What a tenant can make the grid fetch: job inputs at loopback, private
//! and link-local addresses (and redirects to them) are refused with one
//! message and never connected to; an input over the size limit fails
//! without the grid's memory growing; a server that never answers fails the
//! job after the idle timeout. A real `wasmgrid dev`, real HTTP servers on
//! loopback (127.0.0.2 stands for "a server the operator allowed").

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::grid::Dev;
use wasmgrid_test_artifacts as guests;

const REFUSED: &str = "not reachable from the grid (its egress policy refuses the address, or nothing answered)";

/// A server on 127.0.0.1 holding a secret; counts the connections it got.
struct Secret {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Secret {
    fn start() -> Secret {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                seen.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut stream) = stream {
                    let _ = read_request(&mut stream);
                    let body = "the secret\n";
                    let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                }
            }
        });
        Secret { port, connections }
    }
}

/// Reads a request's head; returns its path.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_string();
    line.split_whitespace().nth(1).map(str::to_string)
}

/// A server the operator allowed (on 127.0.0.2): text, redirects to the
/// secret, endless bodies and a silent path.
fn start_web(secret_port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_web(stream, secret_port));
        }
    });
    port
}

fn serve_web(mut stream: TcpStream, secret_port: u16) {
    let Some(path) = read_request(&mut stream) else { return };
    let redirect = |to: String| format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n");
    let answer = match path.as_str() {
        "/words.txt" | "/words.bin" => {
            let body = "grid wasm grid\nscore grid\n";
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        }
        "/to-secret" => redirect(format!("http://127.0.0.1:{secret_port}/secret.txt")),
        "/to-localhost" => redirect(format!("http://localhost:{secret_port}/secret.txt")),
        "/hop" => redirect("/to-secret".into()),
        "/loop" => redirect("/loop".into()),
        "/big.txt" | "/big-chunked.txt" => {
            // 2 GiB declared (or no length at all), sent until the client
            // hangs up.
            let head = if path == "/big.txt" {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 2u64 << 30)
            } else {
                "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_string()
            };
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let line = b"wasm grid data words ".repeat(3000);
            while stream.write_all(&line).is_ok() {}
            return;
        }
        "/silent.txt" => {
            // Reads the request, then says nothing until the client leaves.
            let _ = stream.read(&mut [0u8; 1]);
            return;
        }
        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string(),
    };
    let _ = stream.write_all(answer.as_bytes());
}

fn submit(dev: &Dev, input: &str, out: &Path) -> std::process::Output {
    let out = out.display().to_string();
    let args = ["job", "submit", "wc-map", "--input", input, "--output", &out, "--reduce", "wc-reduce", "--wait"];
    common::grid_cli(&dev.control_plane, &args)
}

#[test]
fn job_inputs_reach_only_what_the_egress_policy_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = Secret::start();
    let web = start_web(secret.port);
    let dev = Dev::start_with(
        &dir.path().join("grid"),
        &["--egress-allow", "127.0.0.2", "--max-input-size", "100MiB", "--fetch-idle-timeout", "2s"],
    );
    common::grid_ok(&dev.control_plane, &["deploy", "wc-map", guests::WORDCOUNT_MAP]);
    common::grid_ok(&dev.control_plane, &["deploy", "wc-reduce", guests::WORDCOUNT_REDUCE]);

    // An allowed server: the job runs and counts its words.
    let out = dir.path().join("counted");
    common::ok(submit(&dev, &format!("http://127.0.0.2:{web}/words.txt"), &out));
    let counted = common::parts_text(&out);
    assert!(counted.contains("grid") && counted.contains('3'), "{counted}");

    // Loopback in every spelling, private, link-local (the metadata
    // service), unique-local, and redirects to loopback: one message,
    // and the secret server never sees a connection.
    let p = secret.port;
    let refused = [
        format!("http://127.0.0.1:{p}/secret.txt"),
        format!("http://localhost:{p}/secret.txt"),
        format!("http://2130706433:{p}/secret.txt"),
        format!("http://0x7f.1:{p}/secret.txt"),
        format!("http://[::ffff:127.0.0.1]:{p}/secret.txt"),
        format!("http://[::1]:{p}/secret.txt"),
        "http://10.0.0.1/data.txt".to_string(),
        "http://192.168.1.1/data.txt".to_string(),
        "http://169.254.169.254/latest/meta-data/iam.txt".to_string(),
        "http://[fd00::1]/data.txt".to_string(),
        format!("http://127.0.0.2:{web}/to-secret"),
        format!("http://127.0.0.2:{web}/to-localhost"),
        format!("http://127.0.0.2:{web}/hop"),
    ];
    for (i, url) in refused.iter().enumerate() {
        let stderr = common::fails(submit(&dev, url, &dir.path().join(format!("refused-{i}"))));
        assert!(stderr.contains(REFUSED), "{url}: {stderr}");
        assert!(!stderr.contains("the secret"), "{url}: {stderr}");
    }
    assert_eq!(secret.connections.load(Ordering::SeqCst), 0, "nothing reached the secret server");

    // Endless redirects stop.
    let stderr = common::fails(submit(&dev, &format!("http://127.0.0.2:{web}/loop"), &dir.path().join("loop")));
    assert!(stderr.contains("more than 5 redirects"), "{stderr}");

    // 2 GiB against a 100 MiB limit, declared or not: a clear error, and
    // the process's memory stays small.
    for name in ["big.txt", "big-chunked.txt"] {
        let stderr = common::fails(submit(&dev, &format!("http://127.0.0.2:{web}/{name}"), &dir.path().join(name)));
        assert!(stderr.contains("larger than the limit of 104857600 bytes for one input"), "{name}: {stderr}");
    }
    let peak = common::peak_rss(dev.pid());
    assert!(peak < 300 << 20, "wasmgrid dev peaked at {} MiB", peak >> 20);

    // An error about a fetched input names the URL, not where the node
    // keeps its copy.
    let url = format!("http://127.0.0.2:{web}/words.bin");
    let stderr = common::fails(submit(&dev, &url, &dir.path().join("bin")));
    assert!(stderr.contains(&url) && stderr.contains("cannot tell the format"), "{stderr}");
    assert!(!stderr.contains("/inputs/") && !stderr.contains("fetch-"), "a node path in: {stderr}");

    // A server that never answers: the job fails after the idle timeout.
    let stderr = common::fails(submit(&dev, &format!("http://127.0.0.2:{web}/silent.txt"), &dir.path().join("silent")));
    assert!(stderr.contains("no answer within 2s"), "{stderr}");

    // Nothing fetched stays behind on the node.
    let inputs = dir.path().join("grid/inputs");
    let left: Vec<_> = std::fs::read_dir(&inputs).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "fetched inputs left behind: {left:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&inputs).expect("inputs dir").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the inputs directory is private: {mode:o}");
}
