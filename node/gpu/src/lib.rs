//! Dense f32 math for guests: the host side of the `gpu` interface.
//!
//! A node has one [`Gpu`]: a wgpu device running the WGSL kernels of
//! `kernels.wgsl` when it has a usable adapter, or the CPU fallback of
//! `cpu.rs` when it has none (or is told not to use one). Both compute the
//! same functions in the same order of operations, so results agree to float
//! rounding (the tests hold them to 1e-4 relative error).
//!
//! Guests hold [`Tensor`]s: matrices that live on the device (or in host
//! memory for the fallback), so weights are uploaded once per instance and
//! chained operations never copy through the guest. Every call checks shapes
//! and [`GpuLimits`] before any work or allocation, and waits for its work to
//! finish, so the time it took is known and charged to the invocation.

mod cpu;
mod device;

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which compute device a node may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuMode {
    /// A hardware GPU if there is one, else the CPU fallback.
    #[default]
    Auto,
    /// Any wgpu adapter, software rasterisers (Mesa's lavapipe) included.
    Any,
    /// The CPU fallback only.
    Off,
}

impl FromStr for GpuMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(GpuMode::Auto),
            "any" => Ok(GpuMode::Any),
            "off" => Ok(GpuMode::Off),
            other => Err(format!("unknown GPU mode `{other}` (expected auto, any or off)")),
        }
    }
}

/// What serves a node's `gpu` calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Whether a wgpu adapter runs the kernels (false: the CPU fallback).
    /// A node with one counts as a GPU node for placement, software adapters
    /// included when it was told to use them (`--gpu-mode any`).
    pub gpu: bool,
    /// The adapter's name ("cpu" for the fallback).
    pub adapter: String,
    /// The wgpu backend ("vulkan"), or "cpu".
    pub backend: String,
    /// Whether the adapter is a software rasteriser such as lavapipe.
    pub software: bool,
}

impl GpuInfo {
    fn cpu() -> Self {
        GpuInfo { gpu: false, adapter: "cpu".into(), backend: "cpu".into(), software: false }
    }
}

/// Bounds on what one guest may ask of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuLimits {
    /// Most elements in one tensor.
    pub max_elements: u64,
    /// Most bytes of tensors one instance holds at once.
    pub max_bytes: u64,
    /// Most multiply-adds (or element operations) in one call.
    pub max_work: u64,
}

impl Default for GpuLimits {
    fn default() -> Self {
        GpuLimits { max_elements: 16 << 20, max_bytes: 256 << 20, max_work: 1 << 34 }
    }
}

/// Why a `gpu` call was refused or failed. The guest gets the message as the
/// call's error; nothing is allocated or run for a refused call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("{0}")]
    Shape(String),
    #[error("tensor of {rows} x {cols} exceeds the limit of {limit} elements")]
    TooLarge { rows: u32, cols: u32, limit: u64 },
    #[error("tensors would take {wanted} bytes, over this instance's limit of {limit} bytes")]
    Memory { wanted: u64, limit: u64 },
    #[error("{op} of this size needs {work} operations, over the per-call limit of {limit}")]
    Work { op: &'static str, work: u64, limit: u64 },
    #[error("GPU device error: {0}")]
    Device(String),
}

/// Elementwise functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Identity,
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Neg,
    Abs,
    Sqrt,
}

impl Unary {
    fn code(self) -> u32 {
        self as u32
    }
}

/// Elementwise functions of two matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

/// Per-row reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Argmax,
}

/// The activation a dense layer applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Sigmoid,
    Tanh,
    /// Softmax over each row.
    Softmax,
}

/// A `rows x cols` f32 matrix, row-major, on the device that made it.
#[derive(Debug)]
pub struct Tensor {
    rows: u32,
    cols: u32,
    data: Data,
}

#[derive(Debug)]
enum Data {
    Host(Vec<f32>),
    /// `None` for an empty tensor: the device has no zero-sized buffers.
    Device(Option<device::Pooled>),
}

impl Tensor {
    /// Rows.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> u32 {
        self.cols
    }

    /// Elements.
    pub fn len(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.cols)
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes it takes.
    pub fn bytes(&self) -> u64 {
        self.len() * 4
    }
}

/// The node's compute device, with the time its calls took.
#[derive(Debug)]
pub struct Gpu {
    info: GpuInfo,
    device: Option<device::Device>,
    limits: GpuLimits,
}

impl Gpu {
    /// The device `mode` allows: the best wgpu adapter found, else the CPU
    /// fallback. Logs which it chose.
    pub fn new(mode: GpuMode, limits: GpuLimits) -> Self {
        let found = match mode {
            GpuMode::Off => None,
            GpuMode::Auto | GpuMode::Any => device::Device::open(mode == GpuMode::Any),
        };
        let (info, device) = match found {
            Some((dev, info)) => (info, Some(dev)),
            None => (GpuInfo::cpu(), None),
        };
        if info.gpu {
            tracing::info!(adapter = %info.adapter, backend = %info.backend, software = info.software, "gpu calls run on wgpu");
        } else if mode != GpuMode::Off {
            tracing::info!("no usable GPU adapter; gpu calls run on the CPU fallback");
        }
        let limits = match &device {
            // One tensor must fit one storage binding.
            Some(d) => GpuLimits { max_elements: limits.max_elements.min(d.max_binding_bytes() / 4), ..limits },
            None => limits,
        };
        Gpu { info, device, limits }
    }

    /// The CPU fallback.
    pub fn cpu() -> Self {
        Gpu::new(GpuMode::Off, GpuLimits::default())
    }

    /// What serves the calls.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The limits calls are held to.
    pub fn limits(&self) -> &GpuLimits {
        &self.limits
    }

    /// Refuses a `rows x cols` tensor over the element limit.
    pub fn check_size(&self, rows: u32, cols: u32) -> Result<(), GpuError> {
        if u64::from(rows) * u64::from(cols) > self.limits.max_elements {
            return Err(GpuError::TooLarge { rows, cols, limit: self.limits.max_elements });
        }
        Ok(())
    }

    fn check_work(&self, op: &'static str, work: u64) -> Result<(), GpuError> {
        if work > self.limits.max_work {
            return Err(GpuError::Work { op, work, limit: self.limits.max_work });
        }
        Ok(())
    }

    /// A tensor holding `data` (`rows * cols` values, row-major).
    pub fn tensor(&self, rows: u32, cols: u32, data: &[f32]) -> Result<Tensor, GpuError> {
        self.check_size(rows, cols)?;
        if data.len() as u64 != u64::from(rows) * u64::from(cols) {
            return Err(GpuError::Shape(format!(
                "a {rows} x {cols} tensor needs {} values, got {}",
                u64::from(rows) * u64::from(cols),
                data.len()
            )));
        }
        let data = match &self.device {
            None => Data::Host(data.to_vec()),
            Some(d) => Data::Device(d.upload(data)?),
        };
        Ok(Tensor { rows, cols, data })
    }

    /// The tensor's values, row-major.
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>, GpuError> {
        match (&t.data, &self.device) {
            (Data::Host(v), _) => Ok(v.clone()),
            (Data::Device(None), _) => Ok(Vec::new()),
            (Data::Device(Some(buf)), Some(d)) => match buf.buffer() {
                Some(b) => d.read(b, t.len()),
                None => Ok(Vec::new()),
            },
            (Data::Device(Some(_)), None) => Err(foreign()),
        }
    }

    /// `a x b`.
    pub fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, GpuError> {
        self.dense_inner("matmul", a, b, None, Activation::None)
    }

    /// `act(x x w + bias)`, with `bias` a `1 x w.cols` row.
    pub fn dense(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation) -> Result<Tensor, GpuError> {
        self.dense_inner("dense", x, w, bias, act)
    }

    fn dense_inner(
        &self,
        op: &'static str,
        a: &Tensor,
        b: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor, GpuError> {
        if a.cols != b.rows {
            return Err(GpuError::Shape(format!(
                "{op}: cannot multiply {} x {} by {} x {} (inner sizes differ)",
                a.rows, a.cols, b.rows, b.cols
            )));
        }
        if let Some(bias) = bias
            && (bias.rows != 1 || bias.cols != b.cols)
        {
            return Err(GpuError::Shape(format!(
                "{op}: bias must be 1 x {}, got {} x {}",
                b.cols, bias.rows, bias.cols
            )));
        }
        let (m, k, n) = (a.rows, a.cols, b.cols);
        self.check_size(m, n)?;
        self.check_work(op, u64::from(m) * u64::from(k).max(1) * u64::from(n))?;
        let epilogue = match act {
            Activation::None | Activation::Softmax => Unary::Identity,
            Activation::Relu => Unary::Relu,
            Activation::Sigmoid => Unary::Sigmoid,
            Activation::Tanh => Unary::Tanh,
        };
        let out = match &self.device {
            None => {
                let bias = bias.map(host).transpose()?;
                let v = cpu::matmul(host(a)?, host(b)?, bias, m as usize, k as usize, n as usize, epilogue);
                Tensor { rows: m, cols: n, data: Data::Host(v) }
            }
            Some(d) => {
                let data = d.matmul(dev(a)?, dev(b)?, bias.map(dev).transpose()?.flatten(), [m, k, n], epilogue)?;
                Tensor { rows: m, cols: n, data: Data::Device(data) }
            }
        };
        if act == Activation::Softmax { self.softmax(&out) } else { Ok(out) }
    }

    /// `act(x)`.
    pub fn activate(&self, x: &Tensor, act: Activation) -> Result<Tensor, GpuError> {
        match act {
            Activation::None => self.unary(x, Unary::Identity),
            Activation::Relu => self.unary(x, Unary::Relu),
            Activation::Sigmoid => self.unary(x, Unary::Sigmoid),
            Activation::Tanh => self.unary(x, Unary::Tanh),
            Activation::Softmax => self.softmax(x),
        }
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor, GpuError> {
        self.check_work("softmax", x.len())?;
        let data = match &self.device {
            None => Data::Host(if x.is_empty() { Vec::new() } else { cpu::softmax(host(x)?, x.cols as usize) }),
            Some(d) => Data::Device(d.rows(device::Kernel::Softmax, dev(x)?, [x.rows, x.cols], 0, x.len())?),
        };
        Ok(Tensor { rows: x.rows, cols: x.cols, data })
    }

    /// `op` applied to every element.
    pub fn unary(&self, x: &Tensor, op: Unary) -> Result<Tensor, GpuError> {
        self.check_work("unary", x.len())?;
        let data = match &self.device {
            None => Data::Host(cpu::unary(host(x)?, op)),
            Some(d) => Data::Device(d.unary(dev(x)?, x.len(), op.code())?),
        };
        Ok(Tensor { rows: x.rows, cols: x.cols, data })
    }

    /// `a op b` elementwise; `b` is `a`'s shape, one row (`1 x cols`, applied
    /// to every row), one column (`rows x 1`) or one value (`1 x 1`).
    pub fn binary(&self, a: &Tensor, b: &Tensor, op: Binary) -> Result<Tensor, GpuError> {
        let rows_ok = b.rows == a.rows || b.rows == 1;
        let cols_ok = b.cols == a.cols || b.cols == 1;
        if !rows_ok || !cols_ok || b.is_empty() && !a.is_empty() {
            return Err(GpuError::Shape(format!(
                "binary: cannot combine {} x {} with {} x {} (the second must have the same shape, one row, one column or one value)",
                a.rows, a.cols, b.rows, b.cols
            )));
        }
        self.check_work("binary", a.len())?;
        let data = match &self.device {
            None => Data::Host(cpu::binary(host(a)?, host(b)?, a.cols as usize, b.rows as usize, b.cols as usize, op)),
            Some(d) => Data::Device(d.binary(dev(a)?, dev(b)?, [a.rows, a.cols, b.rows, b.cols], op as u32)?),
        };
        Ok(Tensor { rows: a.rows, cols: a.cols, data })
    }

    /// A `rows x 1` tensor: `op` over each row.
    pub fn reduce(&self, x: &Tensor, op: Reduce) -> Result<Tensor, GpuError> {
        if x.cols == 0 && x.rows > 0 {
            return Err(GpuError::Shape(format!("reduce: the rows of a {} x 0 tensor have no values", x.rows)));
        }
        self.check_work("reduce", x.len())?;
        let data = match &self.device {
            None => Data::Host(if x.rows == 0 { Vec::new() } else { cpu::reduce(host(x)?, x.cols as usize, op) }),
            Some(d) => {
                Data::Device(d.rows(device::Kernel::Reduce, dev(x)?, [x.rows, x.cols], op as u32, u64::from(x.rows))?)
            }
        };
        Ok(Tensor { rows: x.rows, cols: 1, data })
    }
}

fn foreign() -> GpuError {
    GpuError::Device("tensor belongs to another device".into())
}

fn host(t: &Tensor) -> Result<&[f32], GpuError> {
    match &t.data {
        Data::Host(v) => Ok(v),
        Data::Device(_) => Err(foreign()),
    }
}

fn dev(t: &Tensor) -> Result<Option<&wgpu::Buffer>, GpuError> {
    match &t.data {
        Data::Device(b) => Ok(b.as_ref().and_then(device::Pooled::buffer)),
        Data::Host(_) => Err(foreign()),
    }
}

/// The node's [`Gpu`], opened on first use (or at start-up with
/// [`SharedGpu::open`]) and shared by every instance.
#[derive(Debug, Clone)]
pub struct SharedGpu {
    mode: GpuMode,
    limits: GpuLimits,
    gpu: Arc<OnceLock<Gpu>>,
}

impl Default for SharedGpu {
    fn default() -> Self {
        SharedGpu::new(GpuMode::default(), GpuLimits::default())
    }
}

impl SharedGpu {
    /// A device to open with `mode` when first needed.
    pub fn new(mode: GpuMode, limits: GpuLimits) -> Self {
        SharedGpu { mode, limits, gpu: Arc::new(OnceLock::new()) }
    }

    /// The device, opening it if this is the first use.
    pub fn open(&self) -> &Gpu {
        self.gpu.get_or_init(|| Gpu::new(self.mode, self.limits))
    }
}

/// Runs `f` and returns its result with the time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

#[cfg(test)]
mod tests;
