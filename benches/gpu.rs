//! GPU kernel benchmark (`cargo bench --bench gpu`): matmul GFLOP/s for
//! n x n matrices, in one run, on
//!
//! 1. wgpu: the node's GPU, or Mesa's lavapipe (software Vulkan) where it
//!    has none (`--gpu-mode any`);
//! 2. the CPU fallback the node uses without a GPU (one thread per call);
//! 3. plain Wasm code in a guest (`tests/guests/matmul-wasm`), what a guest
//!    does without the `gpu` interface;
//!
//! and, on a hardware GPU, the fraction of its fp32 peak when
//! `WASMGRID_GPU_PEAK_TFLOPS` gives the peak. Times cover the kernel and the
//! wait for its completion, not the upload of the inputs (weights are
//! uploaded once per instance); the guest's time covers one call.
//!
//! `WASMGRID_BENCH_SIZES` (default `256,1024,2048`) picks the sizes;
//! sizes above 2048 skip the CPU and Wasm baselines unless
//! `WASMGRID_BENCH_SLOW=1`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_gpu::{Gpu, GpuLimits, GpuMode};
use wasmgrid_runtime::Io;
use wasmgrid_runtime::bindings::{Batch, Column, Field};
use wasmgrid_runtime::{Limits, Runtime, RuntimeConfig};
use wasmgrid_test_artifacts as guests;

/// The inputs `matmul-wasm` builds, so every path multiplies the same matrices.
fn matrix(n: usize, seed: u32) -> Vec<f32> {
    (0..n * n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn gflops(n: usize, t: Duration) -> f64 {
    2.0 * (n as f64).powi(3) / t.as_secs_f64() / 1e9
}

/// Best time of at least `reps` runs of `f`, after one warm-up run, going on
/// for up to a second while runs are quick (a GPU's clocks and queues settle
/// over many); and `f`'s last result.
fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = f();
    let mut best = Duration::MAX;
    let began = Instant::now();
    let mut runs = 0;
    while runs < reps || (began.elapsed() < Duration::from_secs(1) && runs < 200) {
        let start = Instant::now();
        out = f();
        best = best.min(start.elapsed());
        runs += 1;
    }
    (best, out)
}

fn reps(n: usize) -> usize {
    if n <= 512 {
        5
    } else if n <= 1024 {
        3
    } else {
        1
    }
}

/// GFLOP/s of `gpu` and the sum of the product.
fn host_matmul(gpu: &Gpu, n: usize) -> (f64, f64) {
    let side = n as u32;
    let a = gpu.tensor(side, side, &matrix(n, 1)).expect("upload a");
    let b = gpu.tensor(side, side, &matrix(n, 2)).expect("upload b");
    let (t, c) = best(reps(n), || gpu.matmul(&a, &b).expect("matmul"));
    let sum: f64 = gpu.read(&c).expect("read").iter().map(|&v| f64::from(v)).sum();
    (gflops(n, t), sum)
}

/// GFLOP/s of the guest and the sum it computed.
fn guest_matmul(runtime: &Runtime, n: usize) -> (f64, f64) {
    let f = runtime.load_file(guests::MATMUL_WASM.as_ref()).expect("matmul-wasm loads");
    let limits = Limits { memory: 1 << 30, timeout: Duration::from_secs(600), ..Limits::default() };
    let config = Arc::new(BTreeMap::from([("n".to_string(), n.to_string())]));
    let rows = Batch { rows: 1, fields: vec![Field { name: "x".into(), values: Column::F64(vec![0.0]), valid: None }] };
    let (t, out) = best(reps(n).min(3), || {
        let mut instance = f.instantiate(&limits, config.clone(), Io::default()).expect("instance");
        instance.score(&rows).expect("score")
    });
    let sum = match &out.fields[0].values {
        Column::F64(v) => v[0],
        _ => f64::NAN,
    };
    (gflops(n, t), sum)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("WASMGRID_BENCH_SIZES")
        .unwrap_or_else(|_| "256,1024,2048".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let slow = std::env::var_os("WASMGRID_BENCH_SLOW").is_some();
    let peak: Option<f64> = std::env::var("WASMGRID_GPU_PEAK_TFLOPS").ok().and_then(|v| v.parse().ok());
    let limits = GpuLimits { max_elements: 1 << 28, max_bytes: 4 << 30, max_work: u64::MAX };
    let wgpu = Gpu::new(GpuMode::Any, limits);
    let cpu = Gpu::new(GpuMode::Off, limits);
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let info = wgpu.info();
    let device = if info.gpu {
        format!("{} ({}{})", info.adapter, info.backend, if info.software { ", software" } else { "" })
    } else {
        "none (no wgpu adapter)".into()
    };
    println!("wasmgrid gpu benchmark: matmul n x n, f32, GFLOP/s (best of runs)");
    println!("wgpu device: {device}\n");
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "n", "wgpu", "cpu fallback", "wasm guest", "wgpu/wasm", "cpu/wasm"
    );
    for n in sizes {
        let (g, g_sum) = if info.gpu { host_matmul(&wgpu, n) } else { (f64::NAN, f64::NAN) };
        let baselines = n <= 2048 || slow;
        let (c, c_sum) = if baselines { host_matmul(&cpu, n) } else { (f64::NAN, f64::NAN) };
        let (w, w_sum) = if baselines { guest_matmul(&runtime, n) } else { (f64::NAN, f64::NAN) };
        println!("{n:>6} {g:>12.2} {c:>12.2} {w:>12.2} {:>9.2}x {:>9.2}x", g / w, c / w);
        // The three compute the same product (up to float rounding).
        for (name, s) in [("wgpu", g_sum), ("cpu fallback", c_sum)] {
            if s.is_finite() && w_sum.is_finite() {
                let rel = (s - w_sum).abs() / w_sum.abs().max(1.0);
                assert!(rel < 1e-3, "{name} sum {s} differs from the guest's {w_sum}");
            }
        }
        if let Some(peak) = peak.filter(|_| info.gpu && !info.software) {
            println!("{:>6} wgpu at {:.1}% of the {peak} TFLOP/s fp32 peak", "", g / (peak * 1e3) * 100.0);
        }
    }
}
