//! Every kernel on wgpu (lavapipe where there is no GPU) against the CPU
//! fallback and a naive reference, for random shapes including ones that are
//! not multiples of the tile size, single rows and columns, and empty ones.

use super::*;

/// Small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() % 20_001) as f32 / 10_000.0 - 1.0).collect()
    }
}

/// wgpu, when an adapter (software included) is present; `None` otherwise,
/// unless `WASMGRID_REQUIRE_GPU` says the machine must have one (CI does).
fn wgpu_device() -> Option<Gpu> {
    let gpu = Gpu::new(GpuMode::Any, GpuLimits::default());
    if gpu.info().gpu {
        return Some(gpu);
    }
    assert!(
        std::env::var_os("WASMGRID_REQUIRE_GPU").is_none(),
        "WASMGRID_REQUIRE_GPU is set but no wgpu adapter was found (is mesa-vulkan-drivers installed?)"
    );
    eprintln!("no wgpu adapter: checking the CPU fallback against the reference only");
    None
}

/// `|x - y| <= tol * scale` where `scale` bounds the magnitudes involved.
fn close(x: f32, y: f64, scale: f64) -> bool {
    if x.is_nan() || y.is_nan() {
        return x.is_nan() && y.is_nan();
    }
    if x.is_infinite() || y.is_infinite() {
        return f64::from(x) == y;
    }
    (f64::from(x) - y).abs() <= 1e-4 * scale.max(1.0)
}

fn assert_close(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, scale[i]), "{what}: element {i}: got {g}, want {w}");
    }
}

/// Shapes to try: edge cases, then random ones.
fn shapes(rng: &mut Rng, n: usize) -> Vec<(u32, u32, u32)> {
    let mut s = vec![
        (1, 1, 1),
        (1, 7, 1),
        (1, 1, 300),
        (300, 1, 1),
        (64, 64, 64),
        (65, 17, 129),
        (0, 3, 4),
        (3, 0, 4),
        (3, 4, 0),
    ];
    for _ in 0..n {
        s.push((1 + rng.below(150), 1 + rng.below(150), 1 + rng.below(150)));
    }
    s
}

fn naive_act(act: Activation, row: &mut [f64]) {
    for v in row.iter_mut() {
        *v = match act {
            Activation::Relu => v.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-*v).exp()),
            Activation::Tanh => v.tanh(),
            Activation::None | Activation::Softmax => *v,
        }
    }
    if act == Activation::Softmax && !row.is_empty() {
        let top = row.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = row.iter().map(|v| (v - top).exp()).sum();
        for v in row.iter_mut() {
            *v = (*v - top).exp() / sum;
        }
    }
}

/// The reference dense layer, in f64, with the magnitude of each output's terms.
fn naive_dense(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    (m, k, n): (usize, usize, usize),
    act: Activation,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0f64; m * n];
    let mut scale = vec![0f64; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut s = bias.map_or(0.0, |b| f64::from(b[c]));
            let mut mag = s.abs();
            for i in 0..k {
                let t = f64::from(a[r * k + i]) * f64::from(b[i * n + c]);
                s += t;
                mag += t.abs();
            }
            out[r * n + c] = s;
            scale[r * n + c] = mag;
        }
        naive_act(act, &mut out[r * n..(r + 1) * n]);
    }
    (out, scale)
}

fn devices() -> Vec<Gpu> {
    let mut d = vec![Gpu::cpu()];
    d.extend(wgpu_device());
    d
}

#[test]
fn dense_and_matmul_match_the_reference_on_every_device() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let devices = devices();
    let acts = [Activation::None, Activation::Relu, Activation::Sigmoid, Activation::Tanh, Activation::Softmax];
    // The last two are large enough for the wide matmul kernel (at least 128
    // tiles of 128 x 128), with edges that are not multiples of the tile.
    let mut all = shapes(&mut rng, 12);
    all.extend([(1536, 24, 1410), (1200, 9, 1700)]);
    for (i, (m, k, n)) in all.into_iter().enumerate() {
        let a = rng.values((m * k) as usize);
        let b = rng.values((k * n) as usize);
        let bias = rng.values(n as usize);
        let act = acts[i % acts.len()];
        let dims = (m as usize, k as usize, n as usize);
        let (want_mm, scale_mm) = naive_dense(&a, &b, None, dims, Activation::None);
        let (want, scale) = naive_dense(&a, &b, Some(&bias), dims, act);
        for gpu in &devices {
            let name = &gpu.info().adapter;
            let ta = gpu.tensor(m, k, &a).expect("gpu call");
            let tb = gpu.tensor(k, n, &b).expect("gpu call");
            let tbias = gpu.tensor(1, n, &bias).expect("gpu call");
            let mm = gpu.matmul(&ta, &tb).expect("gpu call");
            assert_eq!((mm.rows(), mm.cols()), (m, n));
            assert_close(&format!("{name} matmul {m}x{k}x{n}"), &gpu.read(&mm).expect("gpu call"), &want_mm, &scale_mm);
            let d = gpu.dense(&ta, &tb, Some(&tbias), act).expect("gpu call");
            assert_close(&format!("{name} dense {act:?} {m}x{k}x{n}"), &gpu.read(&d).expect("gpu call"), &want, &scale);
        }
    }
}

#[test]
fn elementwise_and_reductions_match_the_reference_on_every_device() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let devices = devices();
    let unaries = [
        Unary::Identity,
        Unary::Relu,
        Unary::Sigmoid,
        Unary::Tanh,
        Unary::Exp,
        Unary::Log,
        Unary::Neg,
        Unary::Abs,
        Unary::Sqrt,
    ];
    let binaries = [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div, Binary::Max, Binary::Min];
    let reductions = [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::Argmax];
    for (i, (m, _, n)) in shapes(&mut rng, 10).into_iter().enumerate() {
        let len = (m * n) as usize;
        let x = rng.values(len);
        let op = unaries[i % unaries.len()];
        let want_u: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = f64::from(v);
                match op {
                    Unary::Identity => v,
                    Unary::Relu => v.max(0.0),
                    Unary::Sigmoid => 1.0 / (1.0 + (-v).exp()),
                    Unary::Tanh => v.tanh(),
                    Unary::Exp => v.exp(),
                    Unary::Log => v.ln(),
                    Unary::Neg => -v,
                    Unary::Abs => v.abs(),
                    Unary::Sqrt => v.sqrt(),
                }
            })
            .collect();
        // Broadcast shapes for the second operand, by turn.
        let (br, bc) = [(m, n), (1, n), (m, 1), (1, 1)][i % 4];
        let y: Vec<f32> = rng.values((br * bc) as usize).into_iter().map(|v| if v == 0.0 { 0.5 } else { v }).collect();
        let bop = binaries[i % binaries.len()];
        let want_b: Vec<f64> = (0..len)
            .map(|j| {
                let (r, c) = (j / n as usize, j % n as usize);
                let (p, q) = (f64::from(x[j]), f64::from(y[(r % br as usize) * bc as usize + c % bc as usize]));
                match bop {
                    Binary::Add => p + q,
                    Binary::Sub => p - q,
                    Binary::Mul => p * q,
                    Binary::Div => p / q,
                    Binary::Max => p.max(q),
                    Binary::Min => p.min(q),
                }
            })
            .collect();
        let bscale: Vec<f64> = want_b.iter().map(|v| v.abs()).collect();
        let rop = reductions[i % reductions.len()];
        let want_r: Vec<f64> = if n == 0 {
            Vec::new()
        } else {
            x.chunks(n as usize)
                .map(|row| {
                    let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
                    let (mut at, mut best) = (0, row[0]);
                    for (c, &v) in row.iter().enumerate() {
                        if v > best {
                            (at, best) = (c, v);
                        }
                    }
                    match rop {
                        Reduce::Sum => sum,
                        Reduce::Mean => sum / f64::from(n),
                        Reduce::Max => f64::from(best),
                        Reduce::Argmax => at as f64,
                    }
                })
                .collect()
        };
        let rscale = vec![f64::from(n); want_r.len()];
        let mut want_s: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        if n > 0 {
            for row in want_s.chunks_mut(n as usize) {
                naive_act(Activation::Softmax, row);
            }
        }
        for gpu in &devices {
            let name = &gpu.info().adapter;
            let tx = gpu.tensor(m, n, &x).expect("gpu call");
            let ty = gpu.tensor(br, bc, &y).expect("gpu call");
            let u = gpu.unary(&tx, op).expect("gpu call");
            let scale: Vec<f64> = want_u.iter().map(|v| v.abs()).collect();
            assert_close(&format!("{name} {op:?} {m}x{n}"), &gpu.read(&u).expect("gpu call"), &want_u, &scale);
            let b = gpu.binary(&tx, &ty, bop).expect("gpu call");
            assert_close(
                &format!("{name} {bop:?} {m}x{n} by {br}x{bc}"),
                &gpu.read(&b).expect("gpu call"),
                &want_b,
                &bscale,
            );
            let s = gpu.activate(&tx, Activation::Softmax).expect("gpu call");
            assert_close(
                &format!("{name} softmax {m}x{n}"),
                &gpu.read(&s).expect("gpu call"),
                &want_s,
                &vec![1.0; len],
            );
            if n > 0 || m == 0 {
                let r = gpu.reduce(&tx, rop).expect("gpu call");
                assert_eq!((r.rows(), r.cols()), (m, 1));
                assert_close(&format!("{name} {rop:?} {m}x{n}"), &gpu.read(&r).expect("gpu call"), &want_r, &rscale);
            }
        }
    }
}

#[test]
fn bad_shapes_and_oversized_tensors_are_refused_with_a_clear_error() {
    let limits = GpuLimits { max_elements: 1000, max_bytes: 1 << 20, max_work: 20_000 };
    let mut devices = vec![Gpu::new(GpuMode::Off, limits)];
    if wgpu_device().is_some() {
        devices.push(Gpu::new(GpuMode::Any, limits));
    }
    for gpu in &devices {
        let err = |r: Result<Tensor, GpuError>| r.expect_err("should be refused").to_string();
        let a = gpu.tensor(2, 3, &[1.0; 6]).expect("gpu call");
        let b = gpu.tensor(2, 3, &[1.0; 6]).expect("gpu call");
        assert!(err(gpu.matmul(&a, &b)).contains("cannot multiply 2 x 3 by 2 x 3"));
        assert!(err(gpu.tensor(2, 3, &[1.0; 5])).contains("needs 6 values, got 5"));
        assert!(err(gpu.tensor(100, 100, &[])).contains("exceeds the limit of 1000 elements"));
        assert!(err(gpu.tensor(u32::MAX, u32::MAX, &[])).contains("exceeds the limit"));
        let w = gpu.tensor(3, 4, &[0.5; 12]).expect("gpu call");
        let bias = gpu.tensor(1, 3, &[0.0; 3]).expect("gpu call");
        assert!(err(gpu.dense(&a, &w, Some(&bias), Activation::Relu)).contains("bias must be 1 x 4, got 1 x 3"));
        let col = gpu.tensor(3, 1, &[1.0; 3]).expect("gpu call");
        assert!(err(gpu.binary(&a, &col, Binary::Add)).contains("cannot combine 2 x 3 with 3 x 1"));
        let wide = gpu.tensor(30, 30, &[1.0; 900]).expect("gpu call");
        assert!(err(gpu.matmul(&wide, &wide)).contains("27000 operations, over the per-call limit of 20000"));
        let empty_rows = gpu.tensor(2, 0, &[]).expect("gpu call");
        assert!(err(gpu.reduce(&empty_rows, Reduce::Max)).contains("have no values"));
        // The device still works after the refusals.
        let ok = gpu.dense(&a, &w, None, Activation::None).expect("gpu call");
        assert_eq!(gpu.read(&ok).expect("gpu call"), vec![1.5; 8]);
    }
}

#[test]
fn concurrent_calls_share_the_device() {
    let gpu = Arc::new(wgpu_device().unwrap_or_else(Gpu::cpu));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let gpu = gpu.clone();
            std::thread::spawn(move || {
                for i in 0..20u32 {
                    let n = 1 + (t * 7 + i) % 40;
                    let a = gpu.tensor(n, n, &vec![1.0; (n * n) as usize]).expect("gpu call");
                    let s = gpu.reduce(&gpu.matmul(&a, &a).expect("gpu call"), Reduce::Sum).expect("gpu call");
                    let got = gpu.read(&s).expect("gpu call");
                    assert_eq!(got, vec![(n * n) as f32; n as usize]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}
