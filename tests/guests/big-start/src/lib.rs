//! A scorer that cannot even be instantiated within its limits: its build
//! (`build.rs`) gives its memory an initial size of 1 GiB, larger than any
//! function's memory limit, so it fails before its first instruction runs.

use wasmgrid_sdk::{Batch, BatchBuilder, Scorer};

struct BigStart;

impl Scorer for BigStart {
    fn score(rows: Batch) -> Result<Batch, String> {
        let n = rows.rows;
        Ok(BatchBuilder::new(n).f64("ok", vec![1.0; n as usize]).build())
    }
}

wasmgrid_sdk::export_scorer!(BigStart);
