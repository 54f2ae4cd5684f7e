//! A scorer for testing `init`: what `init` does comes from config key
//! `init`, and each call writes to memory, so a test can see whether calls
//! start from the image `init` left and never from another call's writes.
//!
//! `init` values: `ok` (keeps config `start` as a number), `error` (returns
//! an error), `trap` (panics), `grow` (allocates config `mib` MiB and keeps
//! it), `print` (writes to stdout, which opens a stream it keeps).
//!
//! `score` adds `start` (what `init` kept, -1 when `init` never ran),
//! `calls` (this instance's calls so far, this one included: 1 in a fresh
//! instance) and `held_mib` (MiB `grow` kept).

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config, log};

static START: AtomicI64 = AtomicI64::new(-1);
static CALLS: AtomicU64 = AtomicU64::new(0);
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

struct InitState;

impl Scorer for InitState {
    fn init() -> Result<(), String> {
        match config::get("init").as_deref().unwrap_or("ok") {
            "ok" => {}
            "error" => return Err("the model in config `start` is not valid".into()),
            "trap" => panic!("init panicked while loading the model"),
            "grow" => {
                let mib: usize = config::get("mib").and_then(|m| m.parse().ok()).unwrap_or(1);
                let mut held = HELD.lock().map_err(|e| e.to_string())?;
                for _ in 0..mib {
                    held.push(vec![1u8; 1 << 20]);
                }
            }
            "print" => println!("loading the model"),
            other => return Err(format!("unknown init mode `{other}`")),
        }
        let start = config::get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
        START.store(start, Ordering::Relaxed);
        log::info("init ran");
        Ok(())
    }

    fn score(rows: Batch) -> Result<Batch, String> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let held = HELD.lock().map_err(|e| e.to_string())?.len();
        let n = rows.rows as usize;
        Ok(BatchBuilder::new(rows.rows)
            .f64("start", vec![START.load(Ordering::Relaxed) as f64; n])
            .f64("calls", vec![calls as f64; n])
            .f64("held_mib", vec![held as f64; n])
            .build())
    }
}

wasmgrid_sdk::export_scorer!(InitState);
