//! Gateway benchmark (`cargo bench --bench gateway`): per-request scoring
//! over HTTP on loopback, `logreg` on 1 row and on 100 rows (`ROWS=1` for one size), against
//!
//! - **native**: a plain hyper (axum) server in this process calling the same
//!   model code (`guest-examples/logreg/src/model.rs`) natively, and
//! - **wasmtime serve**: the same model as a standard `wasi:http/proxy`
//!   component (`tests/guests/logreg-http`) under `wasmtime serve`
//!   (`$WASMTIME`, else `wasmtime` on `PATH`; skipped when there is none).
//!
//! wasmgrid runs as `wasmgrid dev` (release build). Load comes from `wrk`
//! (throughput at 16, 32 and 64 connections, `CONNECTIONS=` to choose; a
//! server's saturation throughput is its best of those, over `ROUNDS=2`
//! rounds in which the servers take turns) and `hey` (latency
//! at half of wasmgrid's saturation throughput, fixed rate, over
//! `LATENCY_ROUNDS=3` rounds of turns; each figure is a median). Both must be installed
//! (`apt-get install wrk hey`). Every server and the load generator share
//! this machine's cores, so absolute figures understate a dedicated server;
//! the ratios in the same run are the point.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use wasmgrid_test_artifacts as guests;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../guest-examples/logreg/src/model.rs"]
mod model;

const MODEL: &str = r#"{"features": ["amount", "age_days", "foreign"], "weights": [0.004, -0.001, 1.5], "bias": -1.0}"#;

fn body(rows: usize) -> String {
    let rows: Vec<Value> = (0..rows)
        .map(|i| serde_json::json!({"amount": 10.0 + i as f64 * 3.7, "age_days": (i * 37 % 3000) as f64, "foreign": (i % 5 == 0) as i64}))
        .collect();
    serde_json::json!({ "rows": rows }).to_string()
}

/// The native baseline: the same JSON in and out, the same model code.
fn native_score(body: &[u8]) -> Result<Vec<u8>, String> {
    let model = model::Model::parse(MODEL)?;
    let mut request: Map<String, Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(Value::Array(rows)) = request.remove("rows") else {
        return Err("expected rows".into());
    };
    let mut rows: Vec<Map<String, Value>> =
        rows.into_iter().filter_map(|r| if let Value::Object(o) = r { Some(o) } else { None }).collect();
    let scores = model.score(rows.len(), |name| {
        rows.iter().map(|r| r.get(name).and_then(Value::as_f64).ok_or_else(|| format!("no {name}"))).collect()
    })?;
    for (row, s) in rows.iter_mut().zip(scores) {
        row.insert("score".into(), Value::from(s));
    }
    serde_json::to_vec(&serde_json::json!({ "rows": rows })).map_err(|e| e.to_string())
}

fn start_native() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/score",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    match native_score(&body) {
                        Ok(bytes) => ([("content-type", "application/json")], bytes).into_response(),
                        Err(e) => (axum::http::StatusCode::BAD_REQUEST, e).into_response(),
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    (rx.recv().expect("native server address"), handle)
}

use axum::response::IntoResponse as _;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_wasmtime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WASMTIME") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("sh").args(["-c", "command -v wasmtime"]).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

fn start_wasmtime_serve(wasmtime: &Path) -> Option<(Proc, String)> {
    let port = common::grid::free_port();
    let child = Command::new(wasmtime)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "-Scli", "--env", &format!("MODEL={MODEL}")])
        .arg(guests::LOGREG_HTTP)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some((Proc(child), format!("http://127.0.0.1:{port}/")))
}

/// The `Authorization` header every load generator sends (to every server
/// alike: the native and `wasmtime serve` ones ignore it).
fn bearer() -> String {
    format!("Authorization: Bearer {}", common::TOKEN)
}

/// Waits until `url` scores a row.
fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "-H",
                "content-type: application/json",
                "-H",
                &bearer(),
                "-d",
                &body(1),
                url,
            ])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CPU time (user + system) the process `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // In USER_HZ, which is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Under wrk with `connections` open (5 s): requests per second, and the
/// server's CPU time per request in microseconds.
fn saturation(url: &str, pid: u32, connections: u32, body_file: &Path, dir: &Path) -> (f64, f64) {
    let cpu_before = cpu_seconds(pid);
    let run = common::load::wrk(url, body_file, common::TOKEN, connections, 5, 0, dir);
    let cpu = cpu_seconds(pid) - cpu_before;
    assert_eq!(run.non_2xx, 0, "{url} answered errors under load:\n{}", run.text);
    (run.rate, cpu * 1e6 / run.requests.max(1.0))
}

/// (p50, p99) latency in microseconds at `rate` requests per second (hey, 5 s).
fn latency_at(url: &str, body_file: &Path, rate: f64) -> (f64, f64) {
    let (p50, p99, _) = common::load::hey(url, body_file, common::TOKEN, rate, 5);
    (p50, p99)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmgrid gateway benchmark ({cores} cores, loopback, servers and load generator share the machine)\n");

    let dev = common::grid::Dev::start(&dir.join("dev"));
    let (cp, gateway) = (dev.control_plane.clone(), dev.gateway.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let client = wasmgrid_api::Client::new(&[cp.as_str()], Duration::from_secs(30))
            .expect("client")
            .with_token(Some(common::TOKEN.into()));
        let module = client.upload_module(std::fs::read(guests::LOGREG).expect("logreg")).await.expect("upload");
        let request = wasmgrid_api::DeployRequest {
            module: module.sha256,
            timeout_ms: Some(1000),
            config: [("model".to_string(), MODEL.to_string())].into_iter().collect(),
            ..Default::default()
        };
        client.deploy("logreg", &request).await.expect("deploy");
    });
    let wasmgrid_url = format!("{gateway}/v1/fn/default/logreg");
    wait_ready(&wasmgrid_url);

    let (native, _native_thread) = start_native();
    let native_url = format!("http://{native}/score");
    wait_ready(&native_url);

    let wasmtime = find_wasmtime();
    let serve = wasmtime.as_deref().and_then(start_wasmtime_serve);
    if let Some((_, url)) = &serve {
        wait_ready(url);
    }
    let mut servers: Vec<(&str, String, u32)> =
        vec![("wasmgrid", wasmgrid_url, dev.pid()), ("native (axum)", native_url, std::process::id())];
    match &serve {
        Some((proc, url)) => servers.push(("wasmtime serve", url.clone(), proc.0.id())),
        None => println!("wasmtime serve: skipped (no `wasmtime`; set WASMTIME=path)\n"),
    }

    // `ROWS=1` (or any list, `ROWS=1,10`) measures only those batch sizes;
    // `CONNECTIONS=16,64` only those load levels.
    let list = |name: &str, default: &[usize]| -> Vec<usize> {
        match std::env::var(name) {
            Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
            Err(_) => default.to_vec(),
        }
    };
    let sizes = list("ROWS", &[1, 100]);
    let levels = list("CONNECTIONS", &[16, 32, 64]);
    let rounds = list("ROUNDS", &[2]).first().copied().unwrap_or(2).max(1);
    let latency_rounds = list("LATENCY_ROUNDS", &[3]).first().copied().unwrap_or(3).max(1);
    for rows in sizes {
        let body_file = dir.join(format!("body-{rows}.json"));
        std::fs::write(&body_file, body(rows)).expect("body");
        println!("logreg, {rows} row(s) per request:");
        // Saturation: each server's best throughput over the load levels and
        // rounds. The servers take turns at each level, so a slow spell of
        // the machine falls on all of them alike.
        let mut runs = vec![vec![(0.0, 0.0); levels.len()]; servers.len()];
        for _ in 0..rounds {
            for (l, &c) in levels.iter().enumerate() {
                for (i, (_, url, pid)) in servers.iter().enumerate() {
                    let run = saturation(url, *pid, c as u32, &body_file, dir);
                    if run.0 > runs[i][l].0 {
                        runs[i][l] = run;
                    }
                }
            }
        }
        let best: Vec<(f64, f64)> =
            runs.iter().map(|r| r.iter().copied().fold((0.0, 0.0), |b, x| if x.0 > b.0 { x } else { b })).collect();
        let throughput: Vec<f64> = best.iter().map(|b| b.0).collect();
        let half = throughput[0] / 2.0;
        // Latency at half load: the servers take turns again, and each
        // server's figures are its medians over the rounds.
        let mut measured = vec![Vec::new(); servers.len()];
        for _ in 0..latency_rounds {
            for (i, (_, url, _)) in servers.iter().enumerate() {
                measured[i].push(latency_at(url, &body_file, half));
            }
        }
        let latencies: Vec<(f64, f64)> = measured
            .iter()
            .map(|m| (median(m.iter().map(|l| l.0).collect()), median(m.iter().map(|l| l.1).collect())))
            .collect();
        // wasmgrid's p99 less native's, each round measured back to back.
        let gaps: Vec<f64> = measured[0].iter().zip(&measured[1]).map(|(w, n)| w.1 - n.1).collect();
        let heads: String = levels.iter().map(|c| format!("{:>9}", format!("{c} conn"))).collect();
        println!(
            "  {:<16}{heads} {:>10} {:>14} {:>12} {:>12}",
            "req/s", "best", "CPU / req", "p50 @ half", "p99 @ half"
        );
        for (i, (name, _, _)) in servers.iter().enumerate() {
            let rates: String = runs[i].iter().map(|(r, _)| format!("{r:>9.0}")).collect();
            let ((t, c), (p50, p99)) = (best[i], latencies[i]);
            println!("  {name:<16}{rates} {t:>10.0} {c:>11.1} µs {p50:>9.0} µs {p99:>9.0} µs");
        }
        println!(
            "  (half load = {half:.0} req/s, half of wasmgrid's saturation throughput; latencies are medians of {latency_rounds} rounds)"
        );
        println!("  wasmgrid / native throughput:          {:.2} (target >= 0.5)", throughput[0] / throughput[1]);
        println!("  native / wasmgrid server CPU per request: {:.2}", best[1].1 / best[0].1);
        let first = |i: usize| runs[i][0].0;
        println!("  wasmgrid / native at {} connections:   {:.2}", levels[0], first(0) / first(1));
        let each: Vec<String> = gaps.iter().map(|g| format!("{g:.0}")).collect();
        println!(
            "  wasmgrid p99 - native p99 at half load: {:.0} µs, median of {} rounds ({} µs) (target < 1000)",
            median(gaps.clone()),
            gaps.len(),
            each.join(", ")
        );
        if servers.len() > 2 {
            println!("  wasmgrid / wasmtime serve throughput:  {:.2} (target >= 0.8)", throughput[0] / throughput[2]);
        }
        println!();
    }
}
