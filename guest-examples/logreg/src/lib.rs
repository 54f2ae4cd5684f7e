//! Logistic regression: adds column `score` = sigmoid(w . x + b).
//!
//! The model comes from config key `model`, a JSON object
//! `{"features": ["col", ...], "weights": [..], "bias": b}`.

use serde::Deserialize;
use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config};

#[derive(Deserialize)]
struct Model {
    features: Vec<String>,
    weights: Vec<f64>,
    bias: f64,
}

struct LogReg;

impl Scorer for LogReg {
    fn score(rows: Batch) -> Result<Batch, String> {
        let model: Model = serde_json::from_str(&config::require("model")?)
            .map_err(|e| format!("config `model` is not a valid model: {e}"))?;
        if model.features.len() != model.weights.len() {
            return Err(format!("model has {} features but {} weights", model.features.len(), model.weights.len()));
        }
        let mut z = vec![model.bias; rows.rows as usize];
        for (name, w) in model.features.iter().zip(&model.weights) {
            for (z, x) in z.iter_mut().zip(rows.f64s(name)?) {
                *z += w * x;
            }
        }
        let score = z.into_iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect();
        Ok(BatchBuilder::new(rows.rows).f64("score", score).build())
    }
}

wasmgrid_sdk::export_scorer!(LogReg);
