//! A multi-layer perceptron scorer on the `gpu` interface: adds column
//! `score`, the last layer's first output.
//!
//! The model comes from config key `model`, a JSON object
//! `{"features": ["col", ...], "layers": [{"weights": [[...], ...],
//! "bias": [...], "activation": "relu"}, ...]}`: weights row-major,
//! `in x out`; activations none, relu, sigmoid, tanh and softmax. The weights
//! are uploaded once per instance (a batch job's instance scores every batch
//! of its partition with them) and every layer runs on the node's GPU, or on
//! its CPU fallback, which gives the same scores.

use std::cell::OnceCell;

use serde::Deserialize;
use wasmgrid_sdk::gpu::{self, Activation, Layer, Mlp, Tensor};
use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, config, log};

#[derive(Deserialize)]
struct ModelSpec {
    features: Vec<String>,
    layers: Vec<LayerSpec>,
}

#[derive(Deserialize)]
struct LayerSpec {
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
    #[serde(default = "none")]
    activation: String,
}

fn none() -> String {
    "none".into()
}

struct Model {
    features: Vec<String>,
    mlp: Mlp,
}

fn activation(name: &str) -> Result<Activation, String> {
    Ok(match name {
        "none" => Activation::None,
        "relu" => Activation::Relu,
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        "softmax" => Activation::Softmax,
        other => return Err(format!("unknown activation `{other}` (none, relu, sigmoid, tanh or softmax)")),
    })
}

impl Model {
    fn load() -> Result<Model, String> {
        let spec: ModelSpec = serde_json::from_str(&config::require("model")?)
            .map_err(|e| format!("config `model` is not a valid model: {e}"))?;
        let layers = spec
            .layers
            .into_iter()
            .map(|l| Ok(Layer { weights: l.weights, bias: l.bias, activation: activation(&l.activation)? }))
            .collect::<Result<Vec<_>, String>>()?;
        let mlp = Mlp::new(&layers)?;
        if mlp.inputs() as usize != spec.features.len() {
            return Err(format!(
                "model has {} features but its first layer takes {}",
                spec.features.len(),
                mlp.inputs()
            ));
        }
        let device = gpu::info();
        log::info(&format!("mlp-score on {} ({})", device.adapter, device.backend));
        Ok(Model { features: spec.features, mlp })
    }
}

thread_local! {
    /// The model, uploaded at the instance's first call.
    static MODEL: OnceCell<Result<Model, String>> = const { OnceCell::new() };
}

struct MlpScore;

impl Scorer for MlpScore {
    fn score(rows: Batch) -> Result<Batch, String> {
        MODEL.with(|model| {
            let model = model.get_or_init(Model::load).as_ref().map_err(Clone::clone)?;
            let columns = model.features.iter().map(|f| rows.f64s(f)).collect::<Result<Vec<_>, String>>()?;
            let columns: Vec<&[f64]> = columns.iter().map(Vec::as_slice).collect();
            let x = Tensor::from_columns(&columns)?;
            let out = model.mlp.forward(&x)?;
            let score = if out.cols() == 0 { vec![0.0; rows.rows as usize] } else { out.column_values(0)? };
            Ok(BatchBuilder::new(rows.rows).f64("score", score.into_iter().map(f64::from).collect()).build())
        })
    }
}

wasmgrid_sdk::export_scorer!(MlpScore);
