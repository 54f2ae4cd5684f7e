//! The model itself, free of any host API, so the same code runs in the
//! component and natively (the gateway benchmark's baseline).

use serde::Deserialize;

/// `{"features": ["col", ...], "weights": [..], "bias": b}`.
#[derive(Debug, Deserialize)]
pub struct Model {
    features: Vec<String>,
    weights: Vec<f64>,
    bias: f64,
}

impl Model {
    /// Parses and checks a model.
    pub fn parse(json: &str) -> Result<Model, String> {
        let model: Model =
            serde_json::from_str(json).map_err(|e| format!("config `model` is not a valid model: {e}"))?;
        if model.features.len() != model.weights.len() {
            return Err(format!("model has {} features but {} weights", model.features.len(), model.weights.len()));
        }
        Ok(model)
    }

    /// sigmoid(w . x + b) for `rows` rows; `column` gives a feature's values.
    pub fn score<C: AsRef<[f64]>>(
        &self,
        rows: usize,
        mut column: impl FnMut(&str) -> Result<C, String>,
    ) -> Result<Vec<f64>, String> {
        let mut z = vec![self.bias; rows];
        for (name, w) in self.features.iter().zip(&self.weights) {
            for (z, x) in z.iter_mut().zip(column(name)?.as_ref()) {
                *z += w * x;
            }
        }
        Ok(z.into_iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect())
    }
}
