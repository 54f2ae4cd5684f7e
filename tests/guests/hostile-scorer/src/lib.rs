//! A scorer that misbehaves on purpose, chosen by config key `mode`:
//!
//! - `loop`: spins forever;
//! - `grow`: grows linear memory one page at a time without bound;
//! - `recurse`: recurses without bound;
//! - `trap`: panics with the message in config key `message`;
//! - `huge-result`: returns a result column of 64 MiB strings per row;
//! - `log-spam`: writes a million log lines and stdout lines, then answers;
//! - `err`: returns an error value (not a trap);
//! - `gpu-hoard`: keeps making 4 MiB tensors until the host refuses one,
//!   and returns the refusal as its error;
//! - `gpu-shapes`: asks the `gpu` interface for impossible shapes and sizes,
//!   and returns every refusal, one per line, as its error;
//! - anything else: answers like a healthy scorer (`ok` = 1.0 per row).

use std::hint::black_box;
use wasmgrid_sdk::gpu::{self, Activation, Tensor};
use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config, log};

/// Every refusal of an impossible `gpu` request.
fn gpu_refusals() -> Vec<String> {
    let mut out = Vec::new();
    let mut refused = |r: Result<Tensor, String>| match r {
        Ok(t) => out.push(format!("accepted a {} x {} tensor", t.rows(), t.cols())),
        Err(e) => out.push(e),
    };
    refused(Tensor::new(2, 3, &[1.0; 5]));
    refused(Tensor::new(u32::MAX, u32::MAX, &[]));
    let (Ok(a), Ok(b), Ok(bias)) = (Tensor::new(2, 3, &[1.0; 6]), Tensor::new(2, 3, &[1.0; 6]), Tensor::row(&[0.0; 2]))
    else {
        return vec!["small tensors were refused".into()];
    };
    refused(gpu::matmul(&a, &b));
    refused(gpu::dense(&a, &b, &bias, Activation::Relu));
    refused(gpu::binary(&a, &bias, gpu::BinaryOp::Add));
    out
}

struct Hostile;

impl Scorer for Hostile {
    fn score(rows: Batch) -> Result<Batch, String> {
        let n = rows.rows;
        match config::get("mode").as_deref() {
            Some("loop") => {
                let mut i: u64 = 0;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            Some("grow") => grow_forever(),
            Some("recurse") => {
                let depth = recurse(black_box(0));
                Err(format!("recursion ended at depth {depth}"))
            }
            Some("trap") => {
                let message = config::get("message").unwrap_or_else(|| "hostile trap".into());
                panic!("{message}")
            }
            Some("huge-result") => {
                let big = "x".repeat(64 << 20);
                Ok(BatchBuilder::new(n).str("blob", vec![big; n as usize]).build())
            }
            Some("log-spam") => {
                for i in 0..1_000_000 {
                    log::info(&format!("log line {i}"));
                    println!("stdout line {i}");
                }
                Ok(BatchBuilder::new(n).f64("ok", vec![1.0; n as usize]).build())
            }
            Some("err") => Err("the model refuses these rows".into()),
            Some("gpu-hoard") => {
                let block = vec![1.0f32; 1 << 20];
                let mut kept = Vec::new();
                loop {
                    match Tensor::new(1024, 1024, &block) {
                        Ok(t) => kept.push(t),
                        Err(e) => return Err(format!("after {} tensors: {e}", kept.len())),
                    }
                }
            }
            Some("gpu-shapes") => Err(gpu_refusals().join("\n")),
            _ => Ok(BatchBuilder::new(n).f64("ok", vec![1.0; n as usize]).build()),
        }
    }
}

wasmgrid_sdk::export_scorer!(Hostile);

#[cfg(target_arch = "wasm32")]
fn grow_forever() -> Result<Batch, String> {
    let mut pages = 0usize;
    loop {
        if core::arch::wasm32::memory_grow(0, 1) == usize::MAX {
            return Err(format!("memory.grow refused after {pages} pages"));
        }
        pages += 1;
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn grow_forever() -> Result<Batch, String> {
    Err("only meaningful on wasm32".into())
}

/// Recursion that spends the wasm (native) stack, not Rust's shadow stack in
/// linear memory: many values stay live across the call, in wasm locals.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let v: [u64; 24] = core::array::from_fn(|i| depth.wrapping_mul(i as u64 + 7) ^ (depth >> (i % 13)));
    if depth == u64::MAX {
        return v[0];
    }
    let below = recurse(depth + 1);
    v.iter().fold(below, |acc, x| acc.rotate_left(7) ^ x.wrapping_mul(acc | 1))
}
