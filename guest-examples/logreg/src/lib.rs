//! Logistic regression: adds column `score` = sigmoid(w . x + b).
//!
//! The model comes from config key `model`, a JSON object
//! `{"features": ["col", ...], "weights": [..], "bias": b}`.

mod model;

use model::Model;
use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config};

struct LogReg;

impl Scorer for LogReg {
    fn score(rows: Batch) -> Result<Batch, String> {
        let model = Model::parse(&config::require("model")?)?;
        let score = model.score(rows.rows as usize, |name| rows.f64s(name))?;
        Ok(BatchBuilder::new(rows.rows).f64("score", score).build())
    }
}

wasmgrid_sdk::export_scorer!(LogReg);
