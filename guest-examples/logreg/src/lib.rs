//! Logistic regression: adds column `score` = sigmoid(w . x + b).
//!
//! The model comes from config key `model`, a JSON object
//! `{"features": ["col", ...], "weights": [..], "bias": b}`. It is parsed
//! once, in `init`; every call starts with it parsed.

mod model;

use std::sync::OnceLock;

use model::Model;
use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config};

static MODEL: OnceLock<Model> = OnceLock::new();

struct LogReg;

impl Scorer for LogReg {
    fn init() -> Result<(), String> {
        let model = Model::parse(&config::require("model")?)?;
        MODEL.get_or_init(|| model);
        Ok(())
    }

    fn score(rows: Batch) -> Result<Batch, String> {
        let model = MODEL.get().ok_or("the model was not loaded (init did not run)")?;
        let score = model.score(rows.rows as usize, |name| rows.f64_values(name))?;
        Ok(BatchBuilder::new(rows.rows).f64("score", score).build())
    }
}

wasmgrid_sdk::export_scorer!(LogReg);
