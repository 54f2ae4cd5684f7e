//! A scorer that misbehaves on purpose, chosen by config key `mode`:
//!
//! - `loop`: spins forever;
//! - `grow`: grows linear memory one page at a time without bound;
//! - `recurse`: recurses without bound;
//! - `trap`: panics with the message in config key `message`;
//! - `huge-result`: returns a result column of 64 MiB strings per row;
//! - `log-spam`: writes a million log lines and stdout lines, then answers;
//! - `chatty`: logs two lines and writes a line to stdout and to stderr;
//! - `err`: returns an error value (not a trap);
//! - `gpu-hoard`: keeps making 4 MiB tensors until the host refuses one,
//!   and returns the refusal as its error;
//! - `gpu-shapes`: asks the `gpu` interface for impossible shapes and sizes,
//!   and returns every refusal, one per line, as its error;
//! - `copy-at-cap`: grows memory to `pages` (config: the limit), copies a
//!   block within the last megabyte, then copies one that runs past the end;
//! - `bad-handle`: calls a `gpu` tensor method with a handle it never got;
//! - `bad-length`: passes the `log` import a string whose pointer and
//!   length lie outside its memory;
//! - `secret`: fills 4 MiB of its memory with the 64-bit `secret` (config,
//!   hex) and answers;
//! - `scan`: counts the words equal to `secret` in all of its memory
//!   (column `found`); `secret-then-scan` does both in one call;
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
            Some("chatty") => {
                log::info(&format!("scoring {n} rows"));
                log::warn("feature `x` is missing; using 0");
                println!("to stdout");
                eprintln!("to stderr");
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
            Some("copy-at-cap") => copy_at_cap(config::get("pages").and_then(|p| p.parse().ok()).unwrap_or(512)),
            Some("bad-handle") => bad_handle(),
            Some("bad-length") => bad_length(),
            Some(mode @ ("secret" | "scan" | "secret-then-scan")) => {
                let text = config::get("secret").unwrap_or_default();
                if mode != "scan" {
                    // Kept in memory until the instance is gone.
                    std::mem::forget(black_box(vec![parse_hex(&text); (4 << 20) / 8]));
                }
                // The secret stays in wasm locals: no copy of it in memory
                // (`u64::from_str_radix` would return it through a
                // `Result` on the shadow stack, in memory the scan reads).
                let found = if mode == "secret" { 0 } else { scan_memory(parse_hex(&text)) };
                Ok(BatchBuilder::new(n).f64("found", vec![found as f64; n as usize]).build())
            }
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

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn copy_at_cap(pages: usize) -> Result<Batch, String> {
    let now = core::arch::wasm32::memory_size(0);
    if pages > now && core::arch::wasm32::memory_grow(0, pages - now) == usize::MAX {
        return Err(format!("could not grow to {pages} pages"));
    }
    let end = core::arch::wasm32::memory_size(0) * 65536;
    let len = 1 << 20;
    let (from, to) = (black_box(1 << 16), black_box(end - len));
    // In bounds, right up to the last byte: fine.
    // SAFETY: both ranges lie within memory, which nothing else uses now.
    unsafe { core::ptr::copy(from as *const u8, to as *mut u8, len) };
    // Past the end: the copy traps.
    // SAFETY: it is not; the point is that the sandbox stops it.
    unsafe { core::ptr::copy(from as *const u8, black_box(to + 65536) as *mut u8, len) };
    Err("a copy past the end of memory did not trap".into())
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasmgrid:function/gpu@0.1.0")]
#[allow(unsafe_code)]
unsafe extern "C" {
    #[link_name = "[method]tensor.rows"]
    fn tensor_rows(handle: i32) -> i32;
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasmgrid:function/log@0.1.0")]
#[allow(unsafe_code)]
unsafe extern "C" {
    #[link_name = "log"]
    fn raw_log(level: i32, ptr: i32, len: i32);
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn bad_handle() -> Result<Batch, String> {
    // SAFETY: the host checks the handle; a forged one traps.
    let rows = unsafe { tensor_rows(black_box(0x5eed)) };
    Err(format!("a forged tensor handle answered {rows} rows"))
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn bad_length() -> Result<Batch, String> {
    let end = core::arch::wasm32::memory_size(0) * 65536;
    // SAFETY: the host checks pointer and length against memory; these trap.
    unsafe { raw_log(2, black_box(end as i32 - 16), black_box(1 << 20)) };
    Err("a string past the end of memory was accepted".into())
}

/// The value of hexadecimal `text` (other characters count as 0), returned
/// as a plain `u64`, never through memory.
#[inline(never)]
fn parse_hex(text: &str) -> u64 {
    text.bytes().fold(0, |value, b| value << 4 | u64::from((b as char).to_digit(16).unwrap_or(0)))
}

/// Words of linear memory equal to `secret`, all of it, from address 0.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn scan_memory(secret: u64) -> u64 {
    let end = core::arch::wasm32::memory_size(0) * 65536;
    let mut found = 0;
    let mut at = 8;
    while at + 8 <= end {
        // SAFETY: every address below `end` is in memory (aligned reads).
        if unsafe { core::ptr::read_volatile(at as *const u64) } == secret {
            found += 1;
        }
        at += 8;
    }
    found
}

#[cfg(not(target_arch = "wasm32"))]
fn copy_at_cap(_: usize) -> Result<Batch, String> {
    Err("only meaningful on wasm32".into())
}

#[cfg(not(target_arch = "wasm32"))]
fn bad_handle() -> Result<Batch, String> {
    Err("only meaningful on wasm32".into())
}

#[cfg(not(target_arch = "wasm32"))]
fn bad_length() -> Result<Batch, String> {
    Err("only meaningful on wasm32".into())
}

#[cfg(not(target_arch = "wasm32"))]
fn scan_memory(_: u64) -> u64 {
    0
}
