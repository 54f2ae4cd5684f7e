//! Host bindings generated from the WIT package in `sdk/wit`.
//!
//! `scorer` owns the shared interfaces (`types`, `log`, `config`); the mapper
//! and reducer bindings reuse them, so one [`Batch`] type serves every world.

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "scorer",
    imports: { default: trappable },
    with: {
        "wasmgrid:function/gpu.tensor": crate::gpu::Tensor,
    },
});

/// The `mapper` world: adds `input` and `output`.
pub mod mapper {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "mapper",
        imports: { default: trappable },
        with: {
            "wasmgrid:function/types": super::wasmgrid::function::types,
            "wasmgrid:function/log": super::wasmgrid::function::log,
            "wasmgrid:function/config": super::wasmgrid::function::config,
            "wasmgrid:function/gpu": super::wasmgrid::function::gpu,
        },
    });
}

/// The `reducer` world.
pub mod reducer {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "reducer",
        imports: { default: trappable },
        with: {
            "wasmgrid:function/log": super::wasmgrid::function::log,
            "wasmgrid:function/config": super::wasmgrid::function::config,
        },
    });
}

pub use wasmgrid::function::types::{Column, Field};
