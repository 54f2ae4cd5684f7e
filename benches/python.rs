//! Python guest benchmark (`cargo bench --bench python`), in one run:
//!
//! 1. a fresh instance + one `score` call of `python-logreg` against the
//!    Rust `logreg` (median and p99), in process;
//! 2. per request over HTTP on `wasmgrid dev` (release): throughput and
//!    p50/p99 latency of both, from 8 concurrent keep-alive clients;
//! 3. batch word count with `wasmgrid run` (map + reduce): the Python
//!    guests against the Rust guests, and a plain Python loop over the same
//!    files (what a PySpark `local[N]` job does per partition: `multiprocessing`
//!    over the files, a dict per process, merged), N = the cores.
//!
//! Needs componentize-py (`COMPONENTIZE_PY` or `PATH`); says so and stops
//! without it. `WASMGRID_BENCH_MB` sets the corpus size (default 64).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_runtime::Io;
use wasmgrid_runtime::bindings::{Batch, Column, Field};
use wasmgrid_runtime::{Limits, Runtime, RuntimeConfig};
use wasmgrid_test_artifacts as guests;

#[path = "../tests/common/mod.rs"]
mod common;

const MODEL: &str = r#"{"features": ["x1", "x2"], "weights": [0.8, -1.25], "bias": 0.3}"#;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/python")
}

fn build(app: &str) -> Option<PathBuf> {
    let out = data_dir().join(format!("{}.wasm", app.replace(['/', '.'], "_")));
    let status = Command::new(env!("CARGO_BIN_EXE_wasmgrid"))
        .arg("build")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(app))
        .arg("-o")
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(out)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// State for the baseline: WASI only.
struct Bare {
    ctx: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for Bare {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// Median of instantiating `wasm` with wasmtime's defaults (no pooling; the
/// wasmgrid imports stubbed): what a fresh instance of the component costs
/// anywhere, the baseline for ours.
fn baseline_instances(wasm: &Path, iters: usize) -> Duration {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    let engine = wasmtime::Engine::new(&config).expect("engine");
    let component = wasmtime::component::Component::from_file(&engine, wasm).expect("compiles");
    let mut linker = wasmtime::component::Linker::<Bare>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
    linker.define_unknown_imports_as_traps(&component).expect("stubs");
    let pre = linker.instantiate_pre(&component).expect("pre");
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let state = Bare { ctx: wasmtime_wasi::WasiCtx::builder().build(), table: Default::default() };
        let t = Instant::now();
        let mut store = wasmtime::Store::new(&engine, state);
        pre.instantiate(&mut store).expect("instance");
        drop(store);
        times.push(t.elapsed());
    }
    times.sort();
    percentile(&times, 0.5)
}

/// Median of a fresh instance (no call) in the wasmgrid runtime.
fn bare_instances(runtime: &Runtime, wasm: &Path, iters: usize) -> Duration {
    let f = runtime.load_file(wasm).expect("loads");
    let limits = Limits { memory: 256 << 20, ..Limits::default() };
    let config = Arc::new(BTreeMap::new());
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        drop(f.instantiate(&limits, config.clone(), Io::default()).expect("instance"));
        times.push(t.elapsed());
    }
    times.sort();
    percentile(&times, 0.5)
}

/// Median and p99 of a fresh instance plus one call; `init`: instances
/// start from the image `init` left (as the grid runs them), else the
/// model is parsed in every call.
fn instances(runtime: &Runtime, wasm: &Path, iters: usize, init: bool) -> (Duration, Duration) {
    let limits = Limits { memory: 256 << 20, ..Limits::default() };
    let config = Arc::new(BTreeMap::from([("model".to_string(), MODEL.to_string())]));
    let f = match init {
        true => runtime.load_version(&std::fs::read(wasm).expect("wasm"), &config, &limits).expect("loads"),
        false => runtime.load_file(wasm).expect("loads"),
    };
    let rows = Batch {
        rows: 1,
        fields: vec![
            Field { name: "x1".into(), values: Column::F64(vec![0.5]), valid: None },
            Field { name: "x2".into(), values: Column::F64(vec![-1.5]), valid: None },
        ],
    };
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let mut instance = f.instantiate(&limits, config.clone(), Io::default()).expect("instance");
        instance.score(&rows).expect("score");
        drop(instance);
        times.push(t.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// Requests per second and p50/p99 latency of `url` from `clients` loops for `for_`.
async fn load(url: &str, clients: usize, for_: Duration) -> (f64, Duration, Duration) {
    let body = r#"{"rows": [{"x1": 0.5, "x2": -1.5}]}"#;
    let client = common::http();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let mut times = Vec::new();
                while start.elapsed() < for_ {
                    let t = Instant::now();
                    let r = client.post(&url).header("content-type", "application/json").body(body).send().await;
                    let ok = match r {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    assert!(ok, "a request failed");
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, percentile(&all, 0.5), percentile(&all, 0.99))
}

fn per_request(py: &Path) {
    let dir = data_dir().join("dev");
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(mut env) = common::EXTRA_ENV.lock() {
        env.push(("WASMGRID_CACHE_DIR".into(), data_dir().join("cache").display().to_string()));
    }
    let dev = common::grid::Dev::start(&dir);
    let (cp, gateway) = (dev.control_plane.clone(), dev.gateway.clone());
    for (name, wasm) in [("py-logreg", py), ("logreg", Path::new(guests::LOGREG))] {
        let status = common::wasmgrid()
            .arg("deploy")
            .arg(name)
            .arg(wasm)
            .args(["--config", &format!("model={MODEL}"), "--memory", "256MiB", "--url", &cp])
            .stdout(Stdio::null())
            .status()
            .expect("deploy");
        assert!(status.success(), "deploy {name}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio");
    println!("\nper request over HTTP, 1 row, 8 clients, 5 s each (load generator on the same cores):");
    let mut rates = Vec::new();
    for name in ["py-logreg", "logreg"] {
        let url = format!("{gateway}/v1/fn/default/{name}");
        rt.block_on(async {
            // Until served and warm.
            let deadline = Instant::now() + Duration::from_secs(120);
            while common::http()
                .post(&url)
                .body(r#"{"x1": 1, "x2": 2}"#)
                .send()
                .await
                .map(|r| !r.status().is_success())
                .unwrap_or(true)
            {
                assert!(Instant::now() < deadline, "{name} never served");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let (rate, p50, p99) = load(&url, 8, Duration::from_secs(5)).await;
            println!("  {name:<10} {rate:>9.0} req/s   p50 {:>8.0} us   p99 {:>8.0} us", micros(p50), micros(p99));
            rates.push(rate);
        });
    }
    println!("  python / rust throughput: {:.3}x", rates[0] / rates[1]);
    drop(dev);
}

const PLAIN_PYTHON: &str = r#"
import multiprocessing, os, re, sys
SPACE = re.compile(rb"[ \t\n\r\x0c]+")
def count(path):
    counts = {}
    with open(path, "rb") as f:
        for line in f:
            for w in SPACE.split(line):
                if w:
                    counts[w] = counts.get(w, 0) + 1
    return counts
if __name__ == "__main__":
    files = sys.argv[1:]
    with multiprocessing.Pool(os.cpu_count()) as pool:
        total = {}
        for part in pool.map(count, files):
            for w, n in part.items():
                total[w] = total.get(w, 0) + n
    print(len(total))
"#;

fn word_count(map: &Path, reduce: &Path, mb: usize) {
    let corpus = data_dir().join(format!("corpus-{mb}"));
    if !corpus.exists() {
        let tmp = data_dir().join("corpus.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("corpus dir");
        let files = 16;
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..files {
            let mut text = String::with_capacity(mb * (1 << 20) / files + 64);
            while text.len() < mb * (1 << 20) / files {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(&format!("w{} ", state % 50_000));
                if state.is_multiple_of(11) {
                    text.push('\n');
                }
            }
            text.push('\n');
            std::fs::write(tmp.join(format!("part-{i:02}.txt")), text).expect("write");
        }
        std::fs::rename(&tmp, &corpus).expect("rename");
    }
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&corpus).expect("corpus").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let out = data_dir().join("wc-out");
    let grid = |map: &Path, reduce: &Path| {
        let t = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_wasmgrid"))
            .arg("run")
            .arg(map)
            .arg("--reduce")
            .arg(reduce)
            .args(["--overwrite", "--quiet", "--memory", "256MiB"])
            .arg("--input")
            .arg(&corpus)
            .arg("--output")
            .arg(&out)
            .arg("--cache-dir")
            .arg(data_dir().join("cache"))
            .status()
            .expect("wasmgrid runs");
        assert!(status.success(), "wasmgrid run failed");
        t.elapsed()
    };
    let plain = || {
        let t = Instant::now();
        let status = Command::new("python3")
            .arg("-c")
            .arg(PLAIN_PYTHON)
            .args(&files)
            .stdout(Stdio::null())
            .status()
            .expect("python3 runs");
        assert!(status.success(), "plain python failed");
        t.elapsed()
    };
    // Warm the page cache and the compiled cache.
    grid(map, reduce);
    grid(Path::new(guests::WORDCOUNT_MAP), Path::new(guests::WORDCOUNT_REDUCE));
    let best = |f: &dyn Fn() -> Duration| (0..3).map(|_| f()).min().expect("runs");
    let py = best(&|| grid(map, reduce));
    let rust = best(&|| grid(Path::new(guests::WORDCOUNT_MAP), Path::new(guests::WORDCOUNT_REDUCE)));
    let loop_ = best(&plain);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\nbatch word count, {mb} MiB in {} files, {cores} cores (best of 3):", files.len());
    println!("  python guest (wasmgrid run)      {:>7.2} s", py.as_secs_f64());
    println!("  rust guest (wasmgrid run)        {:>7.2} s", rust.as_secs_f64());
    println!("  plain python, multiprocessing    {:>7.2} s", loop_.as_secs_f64());
    println!(
        "  python guest / rust guest {:.2}x, python guest / plain python {:.2}x",
        py.as_secs_f64() / rust.as_secs_f64(),
        py.as_secs_f64() / loop_.as_secs_f64()
    );
}

fn main() {
    std::fs::create_dir_all(data_dir()).expect("bench dir");
    let (Some(py_logreg), Some(py_map), Some(py_reduce)) = (
        build("guest-examples/python-logreg/app.py"),
        build("guest-examples/python-wordcount/map.py"),
        build("guest-examples/python-wordcount/reduce.py"),
    ) else {
        println!("componentize-py is not installed (COMPONENTIZE_PY or PATH): no Python benchmark");
        return;
    };
    let mb = std::env::var("WASMGRID_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    println!("wasmgrid python benchmark");
    let size = std::fs::metadata(&py_logreg).map_or(0, |m| m.len());
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(data_dir().join("cache")), ..RuntimeConfig::default() })
        .expect("runtime");
    let t = Instant::now();
    runtime.load_file(&py_logreg).expect("python-logreg loads");
    println!(
        "python-logreg: {:.1} MiB component, loaded in {:.2} s",
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    println!("\nfresh instance + one 1-row score call, in process (2000 calls):");
    let (py50, py99) = instances(&runtime, &py_logreg, 2000, true);
    let (pyn50, pyn99) = instances(&runtime, &py_logreg, 2000, false);
    let (rs50, rs99) = instances(&runtime, Path::new(guests::LOGREG), 2000, true);
    let (rsn50, rsn99) = instances(&runtime, Path::new(guests::LOGREG), 2000, false);
    println!("  python-logreg  p50 {:>8.1} us   p99 {:>8.1} us   (from its init image)", micros(py50), micros(py99));
    println!(
        "  same, no init  p50 {:>8.1} us   p99 {:>8.1} us   (model parsed per call)",
        micros(pyn50),
        micros(pyn99)
    );
    println!("  rust logreg    p50 {:>8.1} us   p99 {:>8.1} us   (from its init image)", micros(rs50), micros(rs99));
    println!("  same, no init  p50 {:>8.1} us   p99 {:>8.1} us", micros(rsn50), micros(rsn99));
    println!("  python / rust p50: {:.1}x", py50.as_secs_f64() / rs50.as_secs_f64());
    println!("  python init image / no init p50: {:.2}x", py50.as_secs_f64() / pyn50.as_secs_f64());
    let ours = bare_instances(&runtime, &py_logreg, 1000);
    let t = Instant::now();
    let base = baseline_instances(&py_logreg, 200);
    println!(
        "  python-logreg instance alone: {:.1} us in wasmgrid (pooled), {:.1} us with wasmtime defaults \
         (compiled in {:.1} s) -> {:.2}x",
        micros(ours),
        micros(base),
        t.elapsed().as_secs_f64(),
        ours.as_secs_f64() / base.as_secs_f64()
    );
    per_request(&py_logreg);
    word_count(&py_map, &py_reduce, mb);
}
