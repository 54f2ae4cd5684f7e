//! The host side of the `gpu` interface: tensors in the invocation's resource
//! table, each call checked against the node's [`GpuLimits`] and this
//! instance's tensor-bytes budget, and its time charged to the invocation.
//!
//! Shape and limit errors are the call's `result` error (the guest decides
//! what to do); a handle that is not a live tensor traps, as for any other
//! resource.
//!
//! [`GpuLimits`]: wasmgrid_gpu::GpuLimits

use wasmtime::Result as WasmResult;
use wasmtime::component::{Resource, ResourceTable};

use crate::bindings::wasmgrid::function::gpu::{self, Activation, BinaryOp, DeviceInfo, ReduceOp, UnaryOp};
use crate::host::HostState;
use wasmgrid_gpu::{self as kernels, Gpu, GpuError, Tensor};

type Made = WasmResult<Result<Resource<Tensor>, String>>;

impl HostState {
    /// Runs `op`, which makes a `rows x cols` tensor, if this instance may
    /// hold that many more bytes; adds the result to the table.
    fn make(
        &mut self,
        (rows, cols): (u32, u32),
        op: impl FnOnce(&Gpu, &ResourceTable) -> WasmResult<Result<Tensor, GpuError>>,
    ) -> Made {
        if let Some(why) = &self.gpu_refused {
            return Ok(Err(why.to_string()));
        }
        let gpu = self.gpu.open();
        if let Err(e) = gpu.check_size(rows, cols) {
            return Ok(Err(e.to_string()));
        }
        let limit = gpu.limits().max_bytes;
        let wanted = self.gpu_bytes.saturating_add(u64::from(rows).saturating_mul(u64::from(cols)).saturating_mul(4));
        if wanted > limit {
            return Ok(Err(GpuError::Memory { wanted, limit }.to_string()));
        }
        let (made, took) = kernels::timed(|| op(gpu, &self.table));
        self.gpu_time += took;
        match made? {
            Ok(t) => {
                self.gpu_bytes = self.gpu_bytes.saturating_add(t.bytes());
                Ok(Ok(self.table.push(t)?))
            }
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    fn shape(&self, t: &Resource<Tensor>) -> WasmResult<(u32, u32)> {
        let t = self.table.get(t)?;
        Ok((t.rows(), t.cols()))
    }
}

fn activation(a: Activation) -> kernels::Activation {
    match a {
        Activation::None => kernels::Activation::None,
        Activation::Relu => kernels::Activation::Relu,
        Activation::Sigmoid => kernels::Activation::Sigmoid,
        Activation::Tanh => kernels::Activation::Tanh,
        Activation::Softmax => kernels::Activation::Softmax,
    }
}

impl gpu::HostTensor for HostState {
    fn create(&mut self, rows: u32, cols: u32, data: Vec<f32>) -> Made {
        self.make((rows, cols), |gpu, _| Ok(gpu.tensor(rows, cols, &data)))
    }

    fn rows(&mut self, t: Resource<Tensor>) -> WasmResult<u32> {
        Ok(self.shape(&t)?.0)
    }

    fn cols(&mut self, t: Resource<Tensor>) -> WasmResult<u32> {
        Ok(self.shape(&t)?.1)
    }

    fn read(&mut self, t: Resource<Tensor>) -> WasmResult<Result<Vec<f32>, String>> {
        let bytes = self.table.get(&t)?.bytes();
        // The values count as output the guest receives.
        self.charge_output(bytes)?;
        let (read, took) = kernels::timed(|| self.table.get(&t).map(|t| self.gpu.open().read(t)));
        self.gpu_time += took;
        Ok(read?.map_err(|e| e.to_string()))
    }

    fn drop(&mut self, t: Resource<Tensor>) -> WasmResult<()> {
        let t = self.table.delete(t)?;
        self.gpu_bytes = self.gpu_bytes.saturating_sub(t.bytes());
        Ok(())
    }
}

impl gpu::Host for HostState {
    fn info(&mut self) -> WasmResult<DeviceInfo> {
        let info = self.gpu.open().info();
        Ok(DeviceInfo { gpu: info.gpu, adapter: info.adapter.clone(), backend: info.backend.clone() })
    }

    fn matmul(&mut self, a: Resource<Tensor>, b: Resource<Tensor>) -> Made {
        let shape = (self.shape(&a)?.0, self.shape(&b)?.1);
        self.make(shape, |gpu, table| Ok(gpu.matmul(table.get(&a)?, table.get(&b)?)))
    }

    fn dense(&mut self, x: Resource<Tensor>, w: Resource<Tensor>, bias: Resource<Tensor>, act: Activation) -> Made {
        let shape = (self.shape(&x)?.0, self.shape(&w)?.1);
        self.make(shape, |gpu, table| {
            Ok(gpu.dense(table.get(&x)?, table.get(&w)?, Some(table.get(&bias)?), activation(act)))
        })
    }

    fn activate(&mut self, x: Resource<Tensor>, act: Activation) -> Made {
        let shape = self.shape(&x)?;
        self.make(shape, |gpu, table| Ok(gpu.activate(table.get(&x)?, activation(act))))
    }

    fn unary(&mut self, x: Resource<Tensor>, op: UnaryOp) -> Made {
        let op = match op {
            UnaryOp::Identity => kernels::Unary::Identity,
            UnaryOp::Relu => kernels::Unary::Relu,
            UnaryOp::Sigmoid => kernels::Unary::Sigmoid,
            UnaryOp::Tanh => kernels::Unary::Tanh,
            UnaryOp::Exp => kernels::Unary::Exp,
            UnaryOp::Log => kernels::Unary::Log,
            UnaryOp::Neg => kernels::Unary::Neg,
            UnaryOp::Abs => kernels::Unary::Abs,
            UnaryOp::Sqrt => kernels::Unary::Sqrt,
        };
        let shape = self.shape(&x)?;
        self.make(shape, |gpu, table| Ok(gpu.unary(table.get(&x)?, op)))
    }

    fn binary(&mut self, a: Resource<Tensor>, b: Resource<Tensor>, op: BinaryOp) -> Made {
        let op = match op {
            BinaryOp::Add => kernels::Binary::Add,
            BinaryOp::Sub => kernels::Binary::Sub,
            BinaryOp::Mul => kernels::Binary::Mul,
            BinaryOp::Div => kernels::Binary::Div,
            BinaryOp::Max => kernels::Binary::Max,
            BinaryOp::Min => kernels::Binary::Min,
        };
        let shape = self.shape(&a)?;
        self.make(shape, |gpu, table| Ok(gpu.binary(table.get(&a)?, table.get(&b)?, op)))
    }

    fn reduce(&mut self, x: Resource<Tensor>, op: ReduceOp) -> Made {
        let op = match op {
            ReduceOp::Sum => kernels::Reduce::Sum,
            ReduceOp::Mean => kernels::Reduce::Mean,
            ReduceOp::Max => kernels::Reduce::Max,
            ReduceOp::Argmax => kernels::Reduce::Argmax,
        };
        let shape = (self.shape(&x)?.0, 1);
        self.make(shape, |gpu, table| Ok(gpu.reduce(table.get(&x)?, op)))
    }
}
