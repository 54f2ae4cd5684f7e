//! The wgpu side: one device and queue, the kernels of `kernels.wgsl`
//! compiled once into pipelines, and the calls that run them.
//!
//! Every call runs inside error scopes (out-of-memory and validation), so a
//! failed allocation or dispatch comes back as a [`GpuError`] instead of
//! reaching wgpu's default handler, and waits for its submission, so work
//! cannot pile up on the queue and its time is known.
//!
//! Buffers are reused: sizes are rounded up to a power of two, and a
//! buffer a call or a dropped tensor no longer needs goes back to a bounded
//! pool for the next call of that size. A reused buffer holds old values
//! past what its new owner writes, but no kernel or read ever touches more
//! than a tensor's own elements, each of which is written first.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::{GpuError, GpuInfo, Unary};

/// The kernels' entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    Matmul,
    MatmulWide,
    Unary,
    Binary,
    Reduce,
    Softmax,
}

impl Kernel {
    const ALL: [Kernel; 6] =
        [Kernel::Matmul, Kernel::MatmulWide, Kernel::Unary, Kernel::Binary, Kernel::Reduce, Kernel::Softmax];

    fn entry(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::MatmulWide => "matmul_wide",
            Kernel::Unary => "unary",
            Kernel::Binary => "binary",
            Kernel::Reduce => "reduce",
            Kernel::Softmax => "softmax",
        }
    }
}

/// `Params` of the kernels.
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    op: u32,
    b_rows: u32,
    b_cols: u32,
    flags: u32,
    stride: u32,
}

/// The matmul kernel's output tile edge.
const TILE: u32 = 64;
/// The wide matmul kernel's output tile edge.
const WIDE: u32 = 128;
/// Fewest wide tiles for which `matmul_wide` is used: enough to keep a large
/// GPU's multiprocessors busy (an H100 has 132). Below, the smaller tiles of
/// `matmul` spread the work wider: on an H100, 1024 x 1024 ran at 9.5
/// TFLOP/s with them and 5.8 with wide tiles; 2048 x 2048 at 17.3 and 21.9.
const WIDE_MIN_TILES: u32 = 128;
/// Most workgroups along one dispatch dimension.
const MAX_GROUPS: u32 = 65_535;

/// Idle buffers kept for reuse, by (size, usage).
/// Idle buffers by (size, usage bits), and their total bytes.
type Idle = (HashMap<(u64, u32), Vec<wgpu::Buffer>>, u64);

#[derive(Debug, Default)]
struct Pool {
    idle: Mutex<Idle>,
    /// The largest buffer a kernel may bind: sizes are not rounded past it.
    max: u64,
}

/// Most bytes of idle buffers kept.
const MAX_IDLE_BYTES: u64 = 256 << 20;
/// Most idle buffers kept of one size and usage.
const MAX_IDLE_PER_SIZE: usize = 8;

impl Pool {
    fn take(&self, device: &wgpu::Device, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let rounded = size.next_power_of_two().max(256);
        let size = if rounded <= self.max { rounded } else { size };
        if let Ok(mut idle) = self.idle.lock()
            && let Some(buf) = idle.0.get_mut(&(size, usage.bits())).and_then(Vec::pop)
        {
            idle.1 -= size;
            return buf;
        }
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wasmgrid"),
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    fn give(&self, buf: wgpu::Buffer) {
        let size = buf.size();
        if let Ok(mut idle) = self.idle.lock()
            && idle.1 + size <= MAX_IDLE_BYTES
        {
            let list = idle.0.entry((size, buf.usage().bits())).or_default();
            if list.len() < MAX_IDLE_PER_SIZE {
                list.push(buf);
                idle.1 += size;
            }
        }
    }
}

/// A tensor's device buffer; goes back to the pool when the tensor is dropped.
#[derive(Debug)]
pub(super) struct Pooled {
    buf: Option<wgpu::Buffer>,
    pool: Arc<Pool>,
}

impl Pooled {
    pub(super) fn buffer(&self) -> Option<&wgpu::Buffer> {
        self.buf.as_ref()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give(buf);
        }
    }
}

/// What tensors' buffers are made for.
const TENSOR: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);
const PARAMS: wgpu::BufferUsages = wgpu::BufferUsages::UNIFORM.union(wgpu::BufferUsages::COPY_DST);
const STAGING: wgpu::BufferUsages = wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

#[derive(Debug)]
pub(super) struct Device {
    pool: Arc<Pool>,
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: wgpu::BindGroupLayout,
    pipelines: Vec<wgpu::ComputePipeline>,
    /// Bound where a kernel does not use an input.
    placeholder: wgpu::Buffer,
    max_binding: u64,
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
    }
}

impl Device {
    /// The best Vulkan adapter, software ones only if `allow_software`.
    pub(super) fn open(allow_software: bool) -> Option<(Device, GpuInfo)> {
        let (adapter, info) = pick_adapter(allow_software)?;
        let supported = adapter.limits();
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: supported.max_storage_buffer_binding_size,
            max_buffer_size: supported.max_buffer_size,
            ..wgpu::Limits::default()
        };
        let request =
            wgpu::DeviceDescriptor { label: Some("wasmgrid"), required_limits: limits.clone(), ..Default::default() };
        let (device, queue) = match pollster::block_on(adapter.request_device(&request)) {
            Ok(dq) => dq,
            Err(e) => {
                tracing::warn!(adapter = %info.adapter, "cannot open the GPU device: {e}");
                return None;
            }
        };
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            tracing::error!("GPU error outside a call: {e}");
        }));
        let (layout, pipelines) = kernels(&device);
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let pool = Arc::new(Pool { max: max_binding, ..Pool::default() });
        Some((Device { pool, device, queue, layout, pipelines, placeholder, max_binding }, info))
    }

    /// The largest buffer one kernel can bind.
    pub(super) fn max_binding_bytes(&self) -> u64 {
        self.max_binding
    }

    /// Runs `f` inside out-of-memory and validation error scopes.
    fn scoped<T>(&self, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let invalid = pollster::block_on(invalid.pop());
        let oom = pollster::block_on(oom.pop());
        if let Some(e) = oom.or(invalid) {
            return Err(GpuError::Device(e.to_string()));
        }
        out
    }

    fn wait(&self, index: wgpu::SubmissionIndex) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map(|_| ())
            .map_err(|e| GpuError::Device(e.to_string()))
    }

    fn pooled(&self, buf: wgpu::Buffer) -> Pooled {
        Pooled { buf: Some(buf), pool: self.pool.clone() }
    }

    /// A device buffer holding `data` (`None` when empty).
    pub(super) fn upload(&self, data: &[f32]) -> Result<Option<Pooled>, GpuError> {
        if data.is_empty() {
            return Ok(None);
        }
        self.scoped(|| {
            let buf = self.pooled(self.pool.take(&self.device, data.len() as u64 * 4, TENSOR));
            if let Some(b) = buf.buffer() {
                self.queue.write_buffer(b, 0, bytemuck::cast_slice(data));
            }
            Ok(Some(buf))
        })
    }

    /// The first `len` values of `buf`.
    pub(super) fn read(&self, buf: &wgpu::Buffer, len: u64) -> Result<Vec<f32>, GpuError> {
        let size = len * 4;
        self.scoped(|| {
            let staging = self.pool.take(&self.device, size, STAGING);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
            self.queue.submit([encoder.finish()]);
            let (tx, rx) = mpsc::channel();
            staging.map_async(wgpu::MapMode::Read, ..size, move |r| {
                let _ = tx.send(r);
            });
            self.device
                .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
                .map_err(|e| GpuError::Device(e.to_string()))?;
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(GpuError::Device(format!("reading a tensor back: {e}"))),
                Err(_) => return Err(GpuError::Device("reading a tensor back: the device dropped the request".into())),
            }
            let values = {
                let view = staging
                    .get_mapped_range(..size)
                    .map_err(|e| GpuError::Device(format!("reading a tensor back: {e}")))?;
                bytemuck::cast_slice::<u8, f32>(&view).to_vec()
            };
            staging.unmap();
            self.pool.give(staging);
            Ok(values)
        })
    }

    /// Runs `kernel` over `groups` workgroups into a new `out_len`-element buffer.
    fn run(
        &self,
        kernel: Kernel,
        inputs: [Option<&wgpu::Buffer>; 3],
        params: Params,
        groups: (u32, u32),
        out_len: u64,
    ) -> Result<Option<Pooled>, GpuError> {
        if out_len == 0 {
            return Ok(None);
        }
        self.scoped(|| {
            let out = self.pool.take(&self.device, out_len * 4, TENSOR);
            let uniform = self.pool.take(&self.device, size_of::<Params>() as u64, PARAMS);
            self.queue.write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
            let input = |i: usize| inputs[i].unwrap_or(&self.placeholder).as_entire_binding();
            let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry()),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: input(0) },
                    wgpu::BindGroupEntry { binding: 1, resource: input(1) },
                    wgpu::BindGroupEntry { binding: 2, resource: input(2) },
                    wgpu::BindGroupEntry { binding: 3, resource: out.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 4, resource: uniform.as_entire_binding() },
                ],
            });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.pipelines[kernel as usize]);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, 1);
            }
            let index = self.queue.submit([encoder.finish()]);
            drop(bind);
            self.wait(index)?;
            self.pool.give(uniform);
            Ok(Some(self.pooled(out)))
        })
    }

    /// `apply(op, a x b + bias)` for `[m, k, n]`.
    pub(super) fn matmul(
        &self,
        a: Option<&wgpu::Buffer>,
        b: Option<&wgpu::Buffer>,
        bias: Option<&wgpu::Buffer>,
        [m, k, n]: [u32; 3],
        op: Unary,
    ) -> Result<Option<Pooled>, GpuError> {
        let wide = (n.div_ceil(WIDE), m.div_ceil(WIDE));
        let (kernel, groups) = if u64::from(wide.0) * u64::from(wide.1) >= u64::from(WIDE_MIN_TILES) {
            (Kernel::MatmulWide, wide)
        } else {
            (Kernel::Matmul, (n.div_ceil(TILE), m.div_ceil(TILE)))
        };
        if groups.1 > MAX_GROUPS || groups.0 > MAX_GROUPS {
            return Err(GpuError::Shape(format!(
                "matmul: {m} x {n} output is larger than one dispatch ({} rows and columns at most)",
                MAX_GROUPS * WIDE
            )));
        }
        let flags = u32::from(bias.is_some());
        let params = Params { m, k, n, op: op.code(), flags, ..Params::default() };
        self.run(kernel, [a, b, bias], params, groups, u64::from(m) * u64::from(n))
    }

    /// A 2-D grid of `per_group`-invocation workgroups covering `items`.
    fn grid(items: u64, per_group: u32) -> (u32, u32, u32) {
        let groups = items.div_ceil(u64::from(per_group)).max(1);
        let x = groups.min(u64::from(MAX_GROUPS)) as u32;
        let y = groups.div_ceil(u64::from(x)) as u32;
        (x, y, x * per_group)
    }

    /// `op` over `len` elements.
    pub(super) fn unary(&self, a: Option<&wgpu::Buffer>, len: u64, op: u32) -> Result<Option<Pooled>, GpuError> {
        let (x, y, stride) = Self::grid(len, 256);
        // The kernel indexes m * n elements: one row of `len`.
        let params = Params { m: 1, k: 0, n: len as u32, op, stride, ..Params::default() };
        self.run(Kernel::Unary, [a, None, None], params, (x, y), len)
    }

    /// `a op b` with `b` broadcast, for `[rows, cols, b_rows, b_cols]`.
    pub(super) fn binary(
        &self,
        a: Option<&wgpu::Buffer>,
        b: Option<&wgpu::Buffer>,
        [m, n, b_rows, b_cols]: [u32; 4],
        op: u32,
    ) -> Result<Option<Pooled>, GpuError> {
        let len = u64::from(m) * u64::from(n);
        let (x, y, stride) = Self::grid(len, 256);
        let params = Params { m, k: 0, n, op, b_rows, b_cols, stride, ..Params::default() };
        self.run(Kernel::Binary, [a, b, None], params, (x, y), len)
    }

    /// A one-invocation-per-row kernel (reduce, softmax) over `[rows, cols]`.
    pub(super) fn rows(
        &self,
        kernel: Kernel,
        a: Option<&wgpu::Buffer>,
        [m, cols]: [u32; 2],
        op: u32,
        out_len: u64,
    ) -> Result<Option<Pooled>, GpuError> {
        let (x, y, stride) = Self::grid(u64::from(m), 64);
        let params = Params { m, k: cols, n: cols, op, stride, ..Params::default() };
        self.run(kernel, [a, None, None], params, (x, y), out_len)
    }
}

/// The best Vulkan adapter (hardware first; software ones only when
/// `allow_software`), and what to report about it.
fn pick_adapter(allow_software: bool) -> Option<(wgpu::Adapter, GpuInfo)> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    desc.flags = wgpu::InstanceFlags::empty();
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    let adapter = adapters
        .into_iter()
        .filter(|a| allow_software || a.get_info().device_type != wgpu::DeviceType::Cpu)
        .max_by_key(|a| rank(a.get_info().device_type))?;
    let ai = adapter.get_info();
    let info = GpuInfo {
        gpu: true,
        adapter: ai.name.clone(),
        backend: ai.backend.to_str().to_string(),
        software: ai.device_type == wgpu::DeviceType::Cpu,
    };
    Some((adapter, info))
}

/// The kernels of `kernels.wgsl` compiled for `device`: their bind group
/// layout (three inputs, one output, the parameters) and one pipeline per
/// [`Kernel`], in [`Kernel::ALL`]'s order.
fn kernels(device: &wgpu::Device) -> (wgpu::BindGroupLayout, Vec<wgpu::ComputePipeline>) {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("wasmgrid kernels"),
        source: wgpu::ShaderSource::Wgsl(include_str!("kernels.wgsl").into()),
    });
    let buffer = |binding, ty| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    };
    let storage = |read_only| wgpu::BufferBindingType::Storage { read_only };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("wasmgrid kernels"),
        entries: &[
            buffer(0, storage(true)),
            buffer(1, storage(true)),
            buffer(2, storage(true)),
            buffer(3, storage(false)),
            buffer(4, wgpu::BufferBindingType::Uniform),
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("wasmgrid kernels"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipelines = Kernel::ALL
        .iter()
        .map(|k| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.entry()),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(k.entry()),
                compilation_options: Default::default(),
                cache: None,
            })
        })
        .collect();
    (layout, pipelines)
}
