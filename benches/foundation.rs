//! Foundation benchmark (`cargo bench --bench foundation`), printing in one run:
//!
//! 1. a fresh instance + call of `logreg` on a 16-row batch (median, p99),
//!    started from the image its `init` left (`Runtime::load_version`, as
//!    the grid runs it), and without `init` (`Runtime::load`: the model is
//!    parsed in every call, as before `init` existed);
//! 2. the same call on one reused instance;
//! 3. `wasmgrid run` word count over a generated corpus (default 256 MB in
//!    32 files) against a plain-Rust word count of the same files, with the
//!    same counting kernel (the guest's own `count.rs`), on the same number of
//!    threads (ratio).
//!
//! `WASMGRID_BENCH_MB` sets the corpus size; `WASMGRID_BENCH_ITERS` the
//! instance iterations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_runtime::Io;
use wasmgrid_runtime::bindings::{Batch, Column, Field};
use wasmgrid_runtime::{Limits, Runtime, RuntimeConfig};
use wasmgrid_test_artifacts as guests;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let iters = env_usize("WASMGRID_BENCH_ITERS", 20_000);
    let mb = env_usize("WASMGRID_BENCH_MB", 256);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmgrid foundation benchmark ({threads} cores)\n");
    instances(iters);
    if mb > 0 {
        wordcount(mb, threads);
    }
}

fn batch16() -> Batch {
    let col = |name: &str, f: fn(f64) -> f64| Field {
        name: name.into(),
        values: Column::F64((0..16).map(|i| f(f64::from(i))).collect()),
        valid: None,
    };
    Batch { rows: 16, fields: vec![col("x1", |i| i * 0.1), col("x2", |i| 1.0 - i * 0.05), col("x3", |i| i * i)] }
}

fn instances(iters: usize) {
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let model = r#"{"features": ["x1", "x2", "x3"], "weights": [0.8, -1.25, 0.05], "bias": 0.3}"#;
    let config: Arc<BTreeMap<String, String>> = Arc::new([("model".to_string(), model.to_string())].into());
    let limits = Limits::default();
    let rows = batch16();
    let bytes = std::fs::read(guests::LOGREG).expect("logreg");
    let f = rt.load_version(&bytes, &config, &limits).expect("logreg loads");
    let uninitialised = rt.load(&bytes).expect("logreg loads");

    let fresh_calls = |f: &wasmgrid_runtime::Function| {
        let mut fresh = Vec::with_capacity(iters);
        for i in 0..iters + iters / 10 {
            let t = Instant::now();
            let mut inst = f.instantiate(&limits, config.clone(), Io::default()).expect("instantiate");
            let out = inst.score(&rows).expect("score");
            drop(inst);
            let d = t.elapsed();
            assert_eq!(out.rows, 16);
            if i >= iters / 10 {
                fresh.push(d);
            }
        }
        fresh.sort();
        fresh
    };
    let fresh = fresh_calls(&f);
    let without_init = fresh_calls(&uninitialised);

    let mut inst = f.instantiate(&limits, config.clone(), Io::default()).expect("instantiate");
    let mut reused = Vec::with_capacity(iters);
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        let out = inst.score(&rows).expect("score");
        let d = t.elapsed();
        assert_eq!(out.rows, 16);
        if i >= iters / 10 {
            reused.push(d);
        }
    }
    reused.sort();

    println!("logreg, 16-row batch, {iters} calls each");
    println!(
        "  fresh instance + call : median {:7.2} us   p99 {:7.2} us   (target: median <= 30 us)",
        micros(percentile(&fresh, 0.5)),
        micros(percentile(&fresh, 0.99))
    );
    println!(
        "  same, without init    : median {:7.2} us   p99 {:7.2} us   (the model parsed in every call)",
        micros(percentile(&without_init, 0.5)),
        micros(percentile(&without_init, 0.99))
    );
    println!(
        "  reused instance call  : median {:7.2} us   p99 {:7.2} us",
        micros(percentile(&reused, 0.5)),
        micros(percentile(&reused, 0.99))
    );
    println!(
        "  instantiation overhead: {:.2} us per call\n",
        micros(percentile(&fresh, 0.5)) - micros(percentile(&reused, 0.5))
    );
}

/// Generates (or reuses) `mb` MB of text in 32 files.
fn corpus(mb: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-data/corpus-{mb}mb"));
    let files = 32;
    let per_file = mb * 1_000_000 / files;
    if dir.join("_done").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let vocab: Vec<String> = (0..50_000).map(|i| format!("w{i}{}", ["", "a", "bb", "ccc", "dddd"][i % 5])).collect();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for f in 0..files {
        let mut s = String::with_capacity(per_file + 64);
        while s.len() < per_file {
            for w in 0..12 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let r = (state >> 11) as f64 / (1u64 << 53) as f64;
                s.push_str(&vocab[((r * r * r) * vocab.len() as f64) as usize % vocab.len()]);
                s.push(if w == 11 { '\n' } else { ' ' });
            }
        }
        std::fs::write(dir.join(format!("text-{f:02}.txt")), s).expect("write corpus");
    }
    std::fs::write(dir.join("_done"), "").expect("marker");
    dir
}

/// The wordcount guest's own counting kernel, compiled natively.
#[path = "../guest-examples/wordcount/map/src/count.rs"]
#[allow(dead_code)]
mod count;

/// Plain Rust: each thread counts whole files, then the maps are merged.
fn native_wordcount(files: &[PathBuf], threads: usize) -> usize {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let partials: Vec<count::Counts> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut counts = count::Counts::default();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = files.get(i) else { break };
                        counts.add_text(&std::fs::read(path).expect("read"));
                    }
                    counts
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut total = count::Counts::default();
    for p in &partials {
        for (word, n) in p.iter() {
            total.add(&word, n);
        }
    }
    total.len()
}

/// The word count most people would write: `split_ascii_whitespace` into a
/// std `HashMap<String, u64>`, one map per thread, merged.
fn idiomatic_wordcount(files: &[PathBuf], threads: usize) -> usize {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let partials: Vec<std::collections::HashMap<String, u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut counts = std::collections::HashMap::<String, u64>::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(path) = files.get(i) else { break };
                        let text = std::fs::read_to_string(path).expect("read");
                        for w in text.split_ascii_whitespace() {
                            *counts.entry(w.to_string()).or_insert(0) += 1;
                        }
                    }
                    counts
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut total = std::collections::HashMap::<String, u64>::new();
    for p in partials {
        for (w, n) in p {
            *total.entry(w).or_insert(0) += n;
        }
    }
    total.len()
}

fn wordcount(mb: usize, threads: usize) {
    let t = Instant::now();
    let dir = corpus(mb);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).expect("meta").len()).sum();
    println!(
        "word count over {} files, {:.0} MB (corpus ready in {:.1}s)",
        files.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Warm the page cache and the compiled-component cache.
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/cache");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/wordcount-out");
    let wasmgrid = |files: &Path| {
        let t = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_wasmgrid"))
            .args(["run", guests::WORDCOUNT_MAP, "--reduce", guests::WORDCOUNT_REDUCE, "--overwrite", "--quiet"])
            .arg("--input")
            .arg(files)
            .arg("--output")
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache)
            .status()
            .expect("wasmgrid runs");
        assert!(status.success(), "wasmgrid run failed");
        t.elapsed()
    };
    native_wordcount(&files, threads);
    wasmgrid(&files[0]);

    let mut native = Vec::new();
    let mut native1 = Vec::new();
    let mut idiomatic = Vec::new();
    let mut grid = Vec::new();
    let mut distinct = 0;
    for _ in 0..3 {
        let t = Instant::now();
        distinct = native_wordcount(&files, threads);
        native.push(t.elapsed());
        let t = Instant::now();
        native_wordcount(&files, 1);
        native1.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(idiomatic_wordcount(&files, threads), distinct);
        idiomatic.push(t.elapsed());
        grid.push(wasmgrid(&dir));
    }
    let best = |v: &mut Vec<Duration>| {
        v.sort();
        v[0]
    };
    let (n, n1, idio, g) = (best(&mut native), best(&mut native1), best(&mut idiomatic), best(&mut grid));
    let rows: usize = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|p| std::fs::read_to_string(p).expect("read").lines().count())
        .sum();
    assert_eq!(rows, distinct, "wasmgrid and plain Rust find the same distinct words");
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!("  guest kernel natively, 1 thread   : {:6.2}s  {:7.1} MB/s", n1.as_secs_f64(), mbps(n1));
    println!("  guest kernel natively, {threads} threads  : {:6.2}s  {:7.1} MB/s", n.as_secs_f64(), mbps(n));
    println!("  idiomatic plain Rust, {threads} threads   : {:6.2}s  {:7.1} MB/s", idio.as_secs_f64(), mbps(idio));
    println!("  wasmgrid run (map + reduce)       : {:6.2}s  {:7.1} MB/s", g.as_secs_f64(), mbps(g));
    println!("  (best of 3; {distinct} distinct words; target <= 1.5x)");
    println!("  ratio wasmgrid / idiomatic plain Rust   : {:.2}x", g.as_secs_f64() / idio.as_secs_f64());
    println!("  ratio wasmgrid / guest kernel natively  : {:.2}x", g.as_secs_f64() / n.as_secs_f64());
}
