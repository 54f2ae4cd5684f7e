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

fn samples(s: &str) -> Result<Vec<f64>, String> {
    s.split(|c: char| c == ',' || c == '[' || c == ']' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<f64>().map_err(|_| format!("`{t}` is not a number")))
        .collect()
}

fn magnitudes(ax: &str, ay: &str, az: &str) -> Result<Vec<f64>, String> {
    let (x, y, z) = (samples(ax)?, samples(ay)?, samples(az)?);
    if x.len() != y.len() || x.len() != z.len() {
        return Err(format!("axes differ in length: {}, {}, {}", x.len(), y.len(), z.len()));
    }
    if x.len() < 4 {
        return Err(format!("a window needs at least 4 samples, got {}", x.len()));
    }
    Ok(x.iter().zip(&y).zip(&z).map(|((x, y), z)| (x * x + y * y + z * z).sqrt()).collect())
}

/// Free-fall depth, impact strength and post-impact stillness, combined by a
/// logistic model.
fn fall_probability(m: &[f64], bias: f64) -> f64 {
    let (peak_at, peak) =
        m.iter().copied().enumerate().fold((0, f64::MIN), |best, (i, v)| if v > best.1 { (i, v) } else { best });
    let before = &m[..peak_at.max(1)];
    let min_before = before.iter().copied().fold(f64::MAX, f64::min);
    let after = &m[(peak_at + 1).min(m.len() - 1)..];
    let mean = after.iter().sum::<f64>() / after.len() as f64;
    let std = (after.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / after.len() as f64).sqrt();

    let free_fall = (1.0 - min_before).clamp(0.0, 1.0); // 1 = weightless
    let impact = (peak - 1.0).max(0.0); // g above rest
    let stillness = (1.0 - std / 0.3).clamp(0.0, 1.0); // 1 = no movement after
    // Lying still only means something after an impact.
    let z = bias + 4.0 * free_fall + 1.5 * impact + 2.0 * stillness * impact.min(1.0);
    1.0 / (1.0 + (-z).exp())
}
