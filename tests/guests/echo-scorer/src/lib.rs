//! Answers config key `value` (a number) as column `echo` for every row.
//! Exported without `init` (`export_scorer!(.., no_init)`), so every
//! version of it is the one compiled module with another config: deploying
//! a thousand configs compiles it once per node.

use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config};

struct Echo;

impl Scorer for Echo {
    fn score(rows: Batch) -> Result<Batch, String> {
        let value = config::require("value")?;
        let value: f64 = value.parse().map_err(|e| format!("`value` {value}: {e}"))?;
        Ok(BatchBuilder::new(rows.rows).f64("echo", vec![value; rows.rows as usize]).build())
    }
}

wasmgrid_sdk::export_scorer!(Echo, no_init);
