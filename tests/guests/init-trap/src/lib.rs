//! A scorer that traps while it starts: a static initializer (run before
//! any export) panics, as a guest whose model fails to load at start-up
//! would. The caller must get the panic's message, and nothing else of the
//! guest runs.

// Placing a function in `.init_array` is an unsafe attribute.
#![allow(unsafe_code)]

use wasmgrid_sdk::{Batch, BatchBuilder, Scorer};

// Only in the component: a native build (the workspace's test run) must start.
#[cfg(target_arch = "wasm32")]
extern "C" fn start_up() {
    panic!("the model failed to load at start-up");
}

#[cfg(target_arch = "wasm32")]
#[used]
#[unsafe(link_section = ".init_array")]
static START_UP: extern "C" fn() = start_up;

struct InitTrap;

impl Scorer for InitTrap {
    fn score(rows: Batch) -> Result<Batch, String> {
        let n = rows.rows;
        Ok(BatchBuilder::new(n).f64("ok", vec![1.0; n as usize]).build())
    }
}

wasmgrid_sdk::export_scorer!(InitTrap);
