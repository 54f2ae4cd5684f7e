//! A multi-layer perceptron scorer on the `gpu` interface: adds column
//! `score`, the last layer's first output.
//!
//! The model comes from the artifact `model` (`--artifact model=PATH`), or
//! else from config key `model` (at most 64 KiB): a JSON object
//! `{"features": ["col", ...], "layers": [{"weights": [[...], ...],
//! "bias": [...], "activation": "relu"}, ...]}`: weights row-major,
//! `in x out`; activations none, relu, sigmoid, tanh and softmax. The model
//! is parsed and checked once, in `init`. A batch of at most 16 rows (a
//! per-request call, usually) is scored right here in the guest, with the
//! node's CPU kernels' arithmetic; for larger ones the weights are uploaded once per
//! instance (a batch job's instance scores every batch of its partition with
//! them: tensors are host resources, which an `init` snapshot cannot keep),
//! and every layer runs on the node's GPU, or on its CPU fallback, which
//! gives the same scores.

use std::cell::OnceCell;
use std::sync::OnceLock;

use serde::Deserialize;
use wasmgrid_sdk::gpu::{self, Activation, Layer, Mlp, MlpWeights, Tensor};
use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, artifacts, config, log};

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

/// Batches of at most this many rows are scored in the guest, with the same
/// arithmetic as the node's CPU kernels; larger ones on the `gpu` interface.
const GUEST_ROWS: u32 = 16;

/// The parsed model, kept in the memory image `init` leaves.
struct Spec {
    features: Vec<String>,
    weights: MlpWeights,
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
    /// Parses artifact (or config) `model` and checks that its layers chain.
    fn parse() -> Result<Spec, String> {
        let (text, from) = match artifacts::size("model") {
            Some(_) => (artifacts::read_string("model")?, "artifact"),
            None => (config::require("model")?, "config"),
        };
        let spec: ModelSpec =
            serde_json::from_str(&text).map_err(|e| format!("{from} `model` is not a valid model: {e}"))?;
        let layers = spec
            .layers
            .into_iter()
            .map(|l| Ok(Layer { weights: l.weights, bias: l.bias, activation: activation(&l.activation)? }))
            .collect::<Result<Vec<_>, String>>()?;
        let weights = MlpWeights::new(&layers)?;
        if weights.inputs() as usize != spec.features.len() {
            return Err(format!(
                "model has {} features but its first layer takes {}",
                spec.features.len(),
                weights.inputs()
            ));
        }
        Ok(Spec { features: spec.features, weights })
    }
}

/// The model on the device: uploaded at the instance's first call.
struct Model {
    features: &'static [String],
    mlp: Mlp,
}

impl Model {
    fn load() -> Result<Model, String> {
        let spec = SPEC.get().ok_or("init did not run")?;
        let mlp = Mlp::upload(&spec.weights)?;
        let device = gpu::info();
        log::info(&format!("mlp-score on {} ({})", device.adapter, device.backend));
        Ok(Model { features: &spec.features, mlp })
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
        if rows.rows <= GUEST_ROWS {
            // A few rows: the math is cheaper here than the weights' upload.
            let spec = SPEC.get().ok_or("init did not run")?;
            let columns = spec.features.iter().map(|f| rows.f64_values(f)).collect::<Result<Vec<_>, String>>()?;
            let columns: Vec<&[f64]> = columns.iter().map(AsRef::as_ref).collect();
            let (out, width) = spec.weights.forward_columns(&columns)?;
            let score = (0..rows.rows as usize).map(|r| if width == 0 { 0.0 } else { f64::from(out[r * width]) });
            return Ok(BatchBuilder::new(rows.rows).f64("score", score.collect()).build());
        }
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
