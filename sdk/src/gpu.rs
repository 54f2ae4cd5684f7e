//! Dense f32 math on the node's GPU, or its CPU when it has none.
//!
//! [`Tensor`]s are matrices held by the host. Make them once (model weights
//! at the first call of an instance) and reuse them: every operation returns
//! a new tensor that stays on the device until [`Tensor::read`].
//!
//! ```ignore
//! use wasmgrid_sdk::gpu::{Activation, Layer, Mlp, Tensor};
//!
//! let mlp = Mlp::new(&[Layer { weights: vec![vec![0.5], vec![-0.25]], bias: vec![0.1], activation: Activation::Sigmoid }])?;
//! let x = Tensor::from_columns(&[&[1.0, 2.0], &[3.0, 4.0]])?; // 2 rows, 2 features
//! let scores = mlp.forward(&x)?.read()?;                       // 2 x 1
//! ```

pub use crate::wit::gpu::{
    Activation, BinaryOp, DeviceInfo, ReduceOp, Tensor, UnaryOp, activate, binary, dense, info, matmul, reduce, unary,
};

impl Tensor {
    /// A `rows x cols` tensor from row-major values.
    pub fn new(rows: u32, cols: u32, data: &[f32]) -> Result<Tensor, String> {
        Tensor::create(rows, cols, data)
    }

    /// An `n x 1` column.
    pub fn column(values: &[f32]) -> Result<Tensor, String> {
        Tensor::create(len(values.len())?, 1, values)
    }

    /// A `1 x n` row.
    pub fn row(values: &[f32]) -> Result<Tensor, String> {
        Tensor::create(1, len(values.len())?, values)
    }

    /// A tensor from equally long rows.
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Tensor, String> {
        let cols = rows.first().map_or(0, Vec::len);
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
            return Err(format!("row {i} has {} values, row 0 has {cols}", r.len()));
        }
        let data: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::create(len(rows.len())?, len(cols)?, &data)
    }

    /// A `rows x columns.len()` tensor whose column `j` is `columns[j]`: the
    /// usual way to turn a batch's feature columns into a model's input.
    pub fn from_columns(columns: &[&[f64]]) -> Result<Tensor, String> {
        let rows = columns.first().map_or(0, |c| c.len());
        if let Some((j, c)) = columns.iter().enumerate().find(|(_, c)| c.len() != rows) {
            return Err(format!("column {j} has {} values, column 0 has {rows}", c.len()));
        }
        let mut data = Vec::with_capacity(rows * columns.len());
        for r in 0..rows {
            data.extend(columns.iter().map(|c| c[r] as f32));
        }
        Tensor::create(len(rows)?, len(columns.len())?, &data)
    }

    /// The values as rows.
    pub fn to_rows(&self) -> Result<Vec<Vec<f32>>, String> {
        let cols = self.cols() as usize;
        let data = self.read()?;
        Ok(if cols == 0 {
            vec![Vec::new(); self.rows() as usize]
        } else {
            data.chunks(cols).map(<[f32]>::to_vec).collect()
        })
    }

    /// Column `j`'s values.
    pub fn column_values(&self, j: u32) -> Result<Vec<f32>, String> {
        let cols = self.cols();
        if j >= cols {
            return Err(format!("column {j} of a tensor with {cols} columns"));
        }
        Ok(self.read()?.into_iter().skip(j as usize).step_by(cols as usize).collect())
    }
}

fn len(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{n} is too many rows or columns for a tensor"))
}

/// One dense layer's parameters: `weights` is `in x out` (one row per input).
#[derive(Debug, Clone)]
pub struct Layer {
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
    pub activation: Activation,
}

/// An MLP's layers checked and laid out as the device takes them, in the
/// guest's memory: make it in `init` (it calls no host function), and
/// [`Mlp::upload`] it in each instance, which then only copies.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    layers: Vec<FlatLayer>,
}

/// One layer of [`MlpWeights`].
#[derive(Debug, Clone)]
struct FlatLayer {
    inputs: u32,
    outputs: u32,
    /// Row-major, `inputs x outputs`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    activation: Activation,
}

impl MlpWeights {
    /// Checks that the layers' shapes chain and flattens them.
    pub fn new(layers: &[Layer]) -> Result<MlpWeights, String> {
        let mut flat = Vec::with_capacity(layers.len());
        let mut width: Option<usize> = None;
        for (i, layer) in layers.iter().enumerate() {
            let (inputs, outputs) = (layer.weights.len(), layer.weights.first().map_or(0, Vec::len));
            if let Some((r, row)) = layer.weights.iter().enumerate().find(|(_, r)| r.len() != outputs) {
                return Err(format!("layer {i} weights: row {r} has {} values, row 0 has {outputs}", row.len()));
            }
            if let Some(width) = width
                && inputs != width
            {
                return Err(format!("layer {i} takes {inputs} inputs but layer {} gives {width}", i - 1));
            }
            if layer.bias.len() != outputs {
                return Err(format!("layer {i} has {outputs} outputs but {} biases", layer.bias.len()));
            }
            let weights: Vec<f32> = layer.weights.iter().flatten().copied().collect();
            flat.push(FlatLayer {
                inputs: len(inputs)?,
                outputs: len(outputs)?,
                weights,
                bias: layer.bias.clone(),
                activation: layer.activation,
            });
            width = Some(outputs);
        }
        if flat.is_empty() {
            return Err("a model needs at least one layer".into());
        }
        Ok(MlpWeights { layers: flat })
    }

    /// Inputs the first layer takes.
    pub fn inputs(&self) -> u32 {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// The last layer's outputs, row-major, and how many there are per row,
    /// for rows given as feature columns, computed here in the guest in the
    /// node's CPU kernels' order of operations (so equal to the `gpu`
    /// interface's CPU fallback, and to the GPU within float rounding). For
    /// small batches, where uploading the weights costs more than the math.
    pub fn forward_columns(&self, columns: &[&[f64]]) -> Result<(Vec<f32>, usize), String> {
        let rows = columns.first().map_or(0, |c| c.len());
        if columns.len() != self.inputs() as usize {
            return Err(format!("the model takes {} inputs, got {} columns", self.inputs(), columns.len()));
        }
        if let Some((j, c)) = columns.iter().enumerate().find(|(_, c)| c.len() != rows) {
            return Err(format!("column {j} has {} values, column 0 has {rows}", c.len()));
        }
        let mut x: Vec<f32> = (0..rows).flat_map(|r| columns.iter().map(move |c| c[r] as f32)).collect();
        let mut width = columns.len();
        for FlatLayer { outputs, weights, bias, activation, .. } in &self.layers {
            let n = *outputs as usize;
            let mut out = vec![0f32; rows * n];
            for (row, out_row) in x.chunks_exact(width.max(1)).zip(out.chunks_exact_mut(n.max(1))) {
                for (xk, w_row) in row.iter().zip(weights.chunks_exact(n.max(1))) {
                    for (o, w) in out_row.iter_mut().zip(w_row) {
                        *o += xk * w;
                    }
                }
                for (o, b) in out_row.iter_mut().zip(bias) {
                    *o += b;
                }
                activate_row(out_row, *activation);
            }
            x = out;
            width = n;
        }
        Ok((x, width))
    }
}

/// `activation` over one row, as the node's kernels compute it.
fn activate_row(row: &mut [f32], activation: Activation) {
    match activation {
        Activation::None => {}
        // Not `f32::max`: in wasm that is a libm call; NaN becomes 0 either way.
        Activation::Relu => row.iter_mut().for_each(|o| *o = if *o > 0.0 { *o } else { 0.0 }),
        Activation::Sigmoid => row.iter_mut().for_each(|o| *o = 1.0 / (1.0 + (-*o).exp())),
        Activation::Tanh => row.iter_mut().for_each(|o| *o = o.clamp(-15.0, 15.0).tanh()),
        Activation::Softmax => {
            let Some(&first) = row.first() else { return };
            let top = row.iter().skip(1).fold(first, |t, &x| t.max(x));
            let mut sum = 0.0;
            for o in row.iter_mut() {
                *o = (*o - top).exp();
                sum += *o;
            }
            row.iter_mut().for_each(|o| *o /= sum);
        }
    }
}

/// A multi-layer perceptron whose weights live on the device.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<(Tensor, Tensor, Activation)>,
    inputs: u32,
}

impl Mlp {
    /// Uploads the layers, checking that their shapes chain.
    pub fn new(layers: &[Layer]) -> Result<Mlp, String> {
        Mlp::upload(&MlpWeights::new(layers)?)
    }

    /// Uploads weights checked and flattened beforehand (in `init`).
    pub fn upload(weights: &MlpWeights) -> Result<Mlp, String> {
        let mut uploaded = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            uploaded.push((
                Tensor::create(l.inputs, l.outputs, &l.weights)?,
                Tensor::create(1, l.outputs, &l.bias)?,
                l.activation,
            ));
        }
        Ok(Mlp { layers: uploaded, inputs: weights.inputs() })
    }

    /// Inputs the first layer takes.
    pub fn inputs(&self) -> u32 {
        self.inputs
    }

    /// The last layer's output for `x` (`rows x inputs`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, String> {
        let mut out: Option<Tensor> = None;
        for (w, b, act) in &self.layers {
            let next = dense(out.as_ref().unwrap_or(x), w, b, *act)?;
            out = Some(next);
        }
        out.ok_or_else(|| "a model needs at least one layer".to_string())
    }
}
