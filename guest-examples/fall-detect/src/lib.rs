//! Fall detection on a phone's accelerometer window.
//!
//! Each row is one window: columns `ax`, `ay`, `az` hold the window's samples
//! in g (1 g at rest), as a JSON array or as numbers separated by spaces or
//! commas. A fall looks like a short free fall (magnitude well under 1 g), an
//! impact (a peak well over 1 g) and then stillness. Those three features feed
//! a small logistic model; the function adds column `fall_probability`.
//!
//! Config (optional): `bias` (default -4.0) shifts the model's threshold;
//! it is read once, in `init`.

use std::sync::OnceLock;

use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config};

mod model;
use model::{fall_probability, magnitudes};

static BIAS: OnceLock<f64> = OnceLock::new();

struct FallDetect;

impl Scorer for FallDetect {
    fn init() -> Result<(), String> {
        let bias = match config::get("bias") {
            Some(b) => b.parse::<f64>().map_err(|e| format!("config `bias`: {e}"))?,
            None => -4.0,
        };
        BIAS.get_or_init(|| bias);
        Ok(())
    }

    fn score(rows: Batch) -> Result<Batch, String> {
        let bias = *BIAS.get().ok_or("init did not run")?;
        let (ax, ay, az) = (rows.strs("ax")?, rows.strs("ay")?, rows.strs("az")?);
        let mut out = Vec::with_capacity(rows.rows as usize);
        for i in 0..rows.rows as usize {
            let m = magnitudes(&ax[i], &ay[i], &az[i]).map_err(|e| format!("row {i}: {e}"))?;
            out.push(fall_probability(&m, bias));
        }
        Ok(BatchBuilder::new(rows.rows).f64("fall_probability", out).build())
    }
}

wasmgrid_sdk::export_scorer!(FallDetect);
