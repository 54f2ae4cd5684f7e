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

/// A multi-layer perceptron whose weights live on the device.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<(Tensor, Tensor, Activation)>,
    inputs: u32,
}

impl Mlp {
    /// Uploads the layers, checking that their shapes chain.
    pub fn new(layers: &[Layer]) -> Result<Mlp, String> {
        let mut uploaded = Vec::with_capacity(layers.len());
        let mut inputs = None;
        let mut width = None;
        for (i, layer) in layers.iter().enumerate() {
            let w = Tensor::from_rows(&layer.weights).map_err(|e| format!("layer {i} weights: {e}"))?;
            if let Some(width) = width
                && w.rows() != width
            {
                return Err(format!("layer {i} takes {} inputs but layer {} gives {width}", w.rows(), i - 1));
            }
            if layer.bias.len() != w.cols() as usize {
                return Err(format!("layer {i} has {} outputs but {} biases", w.cols(), layer.bias.len()));
            }
            let b = Tensor::row(&layer.bias)?;
            inputs.get_or_insert(w.rows());
            width = Some(w.cols());
            uploaded.push((w, b, layer.activation));
        }
        let inputs = inputs.ok_or("a model needs at least one layer")?;
        Ok(Mlp { layers: uploaded, inputs })
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
