//! The CPU fallback: the kernels of `kernels.wgsl` as plain Rust loops, in the
//! same order of operations (each output sums its terms in index order), so
//! both paths agree to float rounding. The GPU fuses each multiply-add; here
//! they stay separate, since `mul_add` without the FMA instructions in the
//! baseline x86-64 target is a slow library call.

use super::{Binary, Unary};

/// The function `apply` of the kernels.
pub(super) fn apply(op: Unary, x: f32) -> f32 {
    match op {
        Unary::Identity => x,
        Unary::Relu => x.max(0.0),
        Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Unary::Tanh => x.clamp(-15.0, 15.0).tanh(),
        Unary::Exp => x.exp(),
        Unary::Log => x.ln(),
        Unary::Neg => -x,
        Unary::Abs => x.abs(),
        Unary::Sqrt => x.sqrt(),
    }
}

fn combine(op: Binary, x: f32, y: f32) -> f32 {
    match op {
        Binary::Add => x + y,
        Binary::Sub => x - y,
        Binary::Mul => x * y,
        Binary::Div => x / y,
        Binary::Max => x.max(y),
        Binary::Min => x.min(y),
    }
}

/// `apply(op, a[m x k] * b[k x n] + bias)`, row-major.
pub(super) fn matmul(a: &[f32], b: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize, op: Unary) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if n == 0 {
        return out;
    }
    // Row by row, k outer and n inner: every output still sums its terms in
    // k order, and the inner loop runs over contiguous memory.
    for (r, out_row) in out.chunks_exact_mut(n).enumerate() {
        for (kk, x) in a[r * k..(r + 1) * k].iter().enumerate() {
            for (o, y) in out_row.iter_mut().zip(&b[kk * n..(kk + 1) * n]) {
                *o += x * y;
            }
        }
        if let Some(bias) = bias {
            for (o, c) in out_row.iter_mut().zip(bias) {
                *o += c;
            }
        }
        if op != Unary::Identity {
            for o in out_row.iter_mut() {
                *o = apply(op, *o);
            }
        }
    }
    out
}

pub(super) fn unary(a: &[f32], op: Unary) -> Vec<f32> {
    a.iter().map(|&x| apply(op, x)).collect()
}

/// `a[r, c] op b[r % b_rows, c % b_cols]` for an `m x n` `a`.
pub(super) fn binary(a: &[f32], b: &[f32], n: usize, b_rows: usize, b_cols: usize, op: Binary) -> Vec<f32> {
    a.iter()
        .enumerate()
        .map(|(i, &x)| {
            let (r, c) = (i / n, i % n);
            combine(op, x, b[(r % b_rows) * b_cols + c % b_cols])
        })
        .collect()
}

/// Sum, mean, max or argmax of each row of an `m x k` matrix.
pub(super) fn reduce(a: &[f32], k: usize, op: super::Reduce) -> Vec<f32> {
    use super::Reduce;
    a.chunks_exact(k)
        .map(|row| match op {
            Reduce::Sum => row.iter().fold(0.0, |s, x| s + x),
            Reduce::Mean => row.iter().fold(0.0, |s, x| s + x) / k as f32,
            Reduce::Max | Reduce::Argmax => {
                let (mut best, mut at) = (row[0], 0usize);
                for (c, &v) in row.iter().enumerate().skip(1) {
                    if v > best {
                        best = v;
                        at = c;
                    }
                }
                if op == Reduce::Max { best } else { at as f32 }
            }
        })
        .collect()
}

/// Softmax of each row of an `m x n` matrix.
pub(super) fn softmax(a: &[f32], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len());
    for row in a.chunks_exact(n) {
        let top = row.iter().skip(1).fold(row[0], |t, &x| t.max(x));
        let start = out.len();
        let mut s = 0.0;
        for &x in row {
            let e = (x - top).exp();
            out.push(e);
            s += e;
        }
        for o in &mut out[start..] {
            *o /= s;
        }
    }
    out
}
