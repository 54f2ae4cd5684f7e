//! The model itself, plain Rust with no guest glue (the streams bench's
//! native baseline compiles this file for the host).

fn samples(s: &str) -> Result<Vec<f64>, String> {
    s.split(|c: char| c == ',' || c == '[' || c == ']' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<f64>().map_err(|_| format!("`{t}` is not a number")))
        .collect()
}

pub fn magnitudes(ax: &str, ay: &str, az: &str) -> Result<Vec<f64>, String> {
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
pub fn fall_probability(m: &[f64], bias: f64) -> f64 {
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
