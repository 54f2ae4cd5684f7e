//! Benchmark fixture: multiplies two `n x n` f32 matrices (config key `n`)
//! in plain Wasm code, the way a guest without the `gpu` interface would
//! (row by row, k outer, so the inner loop is contiguous and vectorisable),
//! and answers column `sum`, the sum of the product, per row of input.

use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config};

/// The same inputs the benchmark gives the host kernels.
pub fn matrix(n: usize, seed: u32) -> Vec<f32> {
    (0..n * n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0f32; n * n];
    for (a_row, c_row) in a.chunks_exact(n).zip(c.chunks_exact_mut(n)) {
        for (x, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            for (o, y) in c_row.iter_mut().zip(b_row) {
                *o += x * y;
            }
        }
    }
    c
}

struct MatmulWasm;

impl Scorer for MatmulWasm {
    fn score(rows: Batch) -> Result<Batch, String> {
        let n: usize = config::require("n")?.parse().map_err(|e| format!("config `n`: {e}"))?;
        let (a, b) = (matrix(n, 1), matrix(n, 2));
        let c = matmul(&a, &b, n);
        let sum: f64 = c.iter().map(|&v| f64::from(v)).sum();
        Ok(BatchBuilder::new(rows.rows).f64("sum", vec![sum; rows.rows as usize]).build())
    }
}

wasmgrid_sdk::export_scorer!(MatmulWasm);
