//! A multi-layer perceptron scorer on the `gpu` interface: adds column
//! `score`, the last layer's first output.
//!
//! The model comes from config key `model`, a JSON object
//! `{"features": ["col", ...], "layers": [{"weights": [[...], ...],
//! "bias": [...], "activation": "relu"}, ...]}`: weights row-major,
//! `in x out`; activations none, relu, sigmoid, tanh and softmax. The model
//! is parsed and checked once, in `init`; the weights are uploaded once per
//! instance (a batch job's instance scores every batch of its partition with
//! them: tensors are host resources, which an `init` snapshot cannot keep),
//! and every layer runs on the node's GPU, or on its CPU fallback, which
//! gives the same scores.

use std::cell::OnceCell;
use std::sync::OnceLock;

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

/// The parsed model, kept in the memory image `init` leaves.
struct Spec {
    features: Vec<String>,
    layers: Vec<Layer>,
}

static SPEC: OnceLock<Spec> = OnceLock::new();

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

impl Spec {
    /// Parses config `model` and checks that its layers chain.
    fn parse() -> Result<Spec, String> {
        let spec: ModelSpec = serde_json::from_str(&config::require("model")?)
            .map_err(|e| format!("config `model` is not a valid model: {e}"))?;
        let layers = spec
            .layers
            .into_iter()
            .map(|l| Ok(Layer { weights: l.weights, bias: l.bias, activation: activation(&l.activation)? }))
            .collect::<Result<Vec<_>, String>>()?;
        let mut width = spec.features.len();
        for (i, layer) in layers.iter().enumerate() {
            let outputs = layer.weights.first().map_or(0, Vec::len);
            if layer.weights.len() != width {
                return Err(format!("layer {i} takes {} inputs but gets {width}", layer.weights.len()));
            }
            if let Some(row) = layer.weights.iter().position(|r| r.len() != outputs) {
                return Err(format!(
                    "layer {i} weights: row {row} has {} values, not {outputs}",
                    layer.weights[row].len()
                ));
            }
            if layer.bias.len() != outputs {
                return Err(format!("layer {i} has {outputs} outputs but {} biases", layer.bias.len()));
            }
            width = outputs;
        }
        Ok(Spec { features: spec.features, layers })
    }
}

/// The model on the device: uploaded at the instance's first call.
struct Model {
    features: Vec<String>,
    mlp: Mlp,
}

impl Model {
    fn load() -> Result<Model, String> {
        let spec = SPEC.get().ok_or("init did not run")?;
        let mlp = Mlp::new(&spec.layers)?;
        let device = gpu::info();
        log::info(&format!("mlp-score on {} ({})", device.adapter, device.backend));
        Ok(Model { features: spec.features.clone(), mlp })
    }
}

thread_local! {
    /// The model, uploaded at the instance's first call.
    static MODEL: OnceCell<Result<Model, String>> = const { OnceCell::new() };
}

struct MlpScore;

impl Scorer for MlpScore {
    fn init() -> Result<(), String> {
        let spec = Spec::parse()?;
        SPEC.get_or_init(|| spec);
        Ok(())
    }

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
