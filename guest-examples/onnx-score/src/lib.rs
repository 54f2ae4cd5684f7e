//! `onnx-score`: serves an ONNX model without writing code. The model is
//! the version's artifact `model` (`wasmgrid deploy NAME --onnx
//! model.onnx`), loaded, checked and optimised once, in `init`, with
//! tract; every call runs it on its batch of rows.
//!
//! Inputs: a model whose inputs are each one column (`[N]` or `[N, 1]`)
//! takes the input columns of those names; a model with one `[N, F]`
//! input takes the `F` columns config `features` names, in order
//! (`features=x1,x2,...` or a JSON list). Values are given as 32-bit floats.
//!
//! Outputs, as columns added to the rows: an output of one value per row
//! is a column of its name (`label`, `variable`); an output of `C` values
//! per row gives `NAME_0` to `NAME_{C-1}` (per-class probabilities:
//! `probabilities_1` is class 1's). A classifier's `[N, 2]` float output
//! also gives `score`, the probability of the second class, as binary
//! scorers answer. A classifier's `label` is the index of its largest
//! probability, an integer (the class, for scikit-learn models, whose
//! classes are 0 to C-1): tract gives a binary forest's label wrong while
//! its probabilities are right, and an MLP's as a float.

use std::sync::OnceLock;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use wasmgrid_sdk::{Batch, BatchBuilder, Scorer, artifacts, config};

/// The model, ready to run, in the image `init` leaves.
struct Model {
    plan: Arc<TypedRunnableModel>,
    /// Per input: its name and its width (1 for a column input).
    inputs: Vec<(String, usize)>,
    /// The columns a single wide input takes.
    features: Option<Vec<String>>,
    /// Per output, its name.
    outputs: Vec<String>,
}

static MODEL: OnceLock<Model> = OnceLock::new();

fn fail(e: impl std::fmt::Display) -> String {
    format!("{e:#}")
}

/// Config `features`: comma-separated names or a JSON list of them.
fn features() -> Result<Option<Vec<String>>, String> {
    let Some(text) = config::get("features") else { return Ok(None) };
    let text = text.trim();
    if text.starts_with('[') {
        let names: Vec<String> = serde_json_lite(text)?;
        return Ok(Some(names));
    }
    Ok(Some(text.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()))
}

/// A JSON list of strings, without a JSON library: `["a", "b"]`.
fn serde_json_lite(text: &str) -> Result<Vec<String>, String> {
    let inner = text.trim().strip_prefix('[').and_then(|t| t.strip_suffix(']')).ok_or("not a JSON list")?;
    inner
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .map(str::to_string)
                .ok_or_else(|| format!("config `features`: `{s}` is not a quoted name"))
        })
        .collect()
}

impl Model {
    fn load() -> Result<Model, String> {
        let bytes = artifacts::read("model").map_err(|e| format!("{e} (deploy with --onnx model.onnx)"))?;
        let mut model = onnx().model_for_read(&mut &bytes[..]).map_err(fail)?;
        let n = TDim::Sym(model.sym("N"));
        let mut inputs = Vec::new();
        for (i, outlet) in model.input_outlets().map_err(fail)?.to_vec().into_iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let fact = model.input_fact(i).map_err(fail)?;
            let dims: Vec<Option<i64>> =
                fact.shape.dims().map(|d| d.concretize().and_then(|d| d.to_i64().ok())).collect();
            let width = match dims.as_slice() {
                [_] => 1,
                [_, Some(w)] => *w as usize,
                other => {
                    return Err(format!("model input `{name}` has shape {other:?}; onnx-score takes [N] or [N, F]"));
                }
            };
            let shape: TVec<TDim> = if dims.len() == 1 { tvec![n.clone()] } else { tvec![n.clone(), width.into()] };
            model.set_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), shape)).map_err(fail)?;
            inputs.push((name, width));
        }
        let outputs = model
            .output_outlets()
            .map_err(fail)?
            .iter()
            .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
            .collect();
        let features = features()?;
        if let [(name, width)] = inputs.as_slice()
            && *width > 1
        {
            match &features {
                Some(f) if f.len() == *width => {}
                Some(f) => {
                    return Err(format!(
                        "config `features` names {} columns, and the model's input `{name}` takes {width}",
                        f.len()
                    ));
                }
                None => {
                    return Err(format!(
                        "the model's input `{name}` takes {width} values a row: name its columns with \
                         --config features=col1,col2,..."
                    ));
                }
            }
        }
        let plan = model.into_optimized().map_err(fail)?.into_runnable().map_err(fail)?;
        Ok(Model { plan, inputs, features, outputs })
    }
}

/// Column `name` of `rows` as 32-bit floats; a null is an error naming its row.
fn column(rows: &Batch, name: &str) -> Result<Vec<f32>, String> {
    let values = rows.f64s(name)?;
    Ok(values.iter().map(|&v| v as f32).collect())
}

impl Scorer for OnnxScore {
    fn init() -> Result<(), String> {
        let model = Model::load()?;
        let _ = MODEL.set(model);
        Ok(())
    }

    fn score(rows: Batch) -> Result<Batch, String> {
        let model = MODEL.get().ok_or("the model was not loaded")?;
        let n = rows.rows as usize;
        let mut inputs: TVec<TValue> = tvec![];
        for (name, width) in &model.inputs {
            let names: Vec<String> = match (&model.features, width) {
                (Some(f), w) if *w > 1 => f.clone(),
                _ => vec![name.clone()],
            };
            let columns: Vec<Vec<f32>> = names.iter().map(|c| column(&rows, c)).collect::<Result<_, _>>()?;
            let mut data = Vec::with_capacity(n * names.len());
            for r in 0..n {
                data.extend(columns.iter().map(|c| c[r]));
            }
            let shape: &[usize] = if *width > 1 || names.len() > 1 { &[n, names.len()] } else { &[n, 1] };
            let shape = if model.inputs.len() > 1 && *width == 1 { &shape[..1] } else { shape };
            let tensor = Tensor::from_shape(shape, &data).map_err(fail)?;
            inputs.push(tensor.into_tvalue());
        }
        let outputs = model.plan.run(inputs).map_err(fail)?;
        // The first output of several floats a row: a classifier's probabilities.
        let probabilities = outputs.iter().find(|t| !t.datum_type().is_integer() && n > 0 && t.len() / n > 1);
        let mut out = BatchBuilder::new(rows.rows);
        for (name, value) in model.outputs.iter().zip(outputs.iter()) {
            out = match probabilities {
                Some(p) if name == "label" => out.i64(name, argmax(p, n)?),
                _ => add_output(out, name, value, n)?,
            };
        }
        Ok(out.build())
    }
}

/// Per row, the index of its largest value.
fn argmax(probabilities: &Tensor, n: usize) -> Result<Vec<i64>, String> {
    let width = probabilities.len() / n;
    let p = probabilities.cast_to::<f64>().map_err(fail)?;
    let p: Vec<f64> = p.to_plain_array_view::<f64>().map_err(fail)?.iter().copied().collect();
    Ok((0..n)
        .map(|r| {
            let row = &p[r * width..(r + 1) * width];
            let best = row.iter().enumerate().fold(0, |best, (k, v)| if *v > row[best] { k } else { best });
            best as i64
        })
        .collect())
}

/// Output `name` as columns (see the crate's documentation).
fn add_output(mut out: BatchBuilder, name: &str, value: &Tensor, n: usize) -> Result<BatchBuilder, String> {
    let width = value.len().checked_div(n).unwrap_or(0);
    if value.len() != n * width {
        return Err(format!("output `{name}` has {} values for {n} rows", value.len()));
    }
    if value.datum_type().is_integer() {
        let v = value.cast_to::<i64>().map_err(fail)?;
        let v = v.to_plain_array_view::<i64>().map_err(fail)?;
        let v: Vec<i64> = v.iter().copied().collect();
        if width <= 1 {
            return Ok(out.i64(name, v));
        }
        for k in 0..width {
            out = out.i64(&format!("{name}_{k}"), (0..n).map(|r| v[r * width + k]).collect());
        }
        return Ok(out);
    }
    let v = value.cast_to::<f64>().map_err(fail)?;
    let v = v.to_plain_array_view::<f64>().map_err(fail)?;
    let v: Vec<f64> = v.iter().copied().collect();
    if width <= 1 {
        return Ok(out.f64(name, v));
    }
    for k in 0..width {
        out = out.f64(&format!("{name}_{k}"), (0..n).map(|r| v[r * width + k]).collect());
    }
    if width == 2 {
        out = out.f64("score", (0..n).map(|r| v[r * 2 + 1]).collect());
    }
    Ok(out)
}

struct OnnxScore;

wasmgrid_sdk::export_scorer!(OnnxScore);
