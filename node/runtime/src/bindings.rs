//! Host bindings generated from the WIT package in `sdk/wit`.
//!
//! The host binds the `*-calls` worlds: what it calls on every invocation.
//! A component's optional `init` export is looked up by name when a version
//! is prepared (see `runtime::init`), so components without it load too.
//!
//! `scorer` owns the shared interfaces (`types`, `log`, `config`); the mapper,
//! reducer and aggregator bindings reuse them, so one [`Batch`] type serves every world.

wasmtime::component::bindgen!({
    path: "../../sdk/wit",
    world: "scorer-calls",
    imports: { default: trappable },
    with: {
        "wasmgrid:function/gpu.tensor": wasmgrid_gpu::Tensor,
    },
});

/// The `mapper` world: adds `input` and `output`.
pub mod mapper {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit",
        world: "mapper-calls",
        imports: { default: trappable },
        with: {
            "wasmgrid:function/types": super::wasmgrid::function::types,
            "wasmgrid:function/log": super::wasmgrid::function::log,
            "wasmgrid:function/config": super::wasmgrid::function::config,
            "wasmgrid:function/gpu": super::wasmgrid::function::gpu,
            "wasmgrid:function/artifacts": super::wasmgrid::function::artifacts,
        },
    });
}

/// The `reducer` world.
pub mod reducer {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit",
        world: "reducer-calls",
        imports: { default: trappable },
        with: {
            "wasmgrid:function/log": super::wasmgrid::function::log,
            "wasmgrid:function/config": super::wasmgrid::function::config,
        },
    });
}

/// The `aggregator` world: adds the `aggregate` types.
pub mod aggregator {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit",
        world: "aggregator-calls",
        imports: { default: trappable },
        with: {
            "wasmgrid:function/types": super::wasmgrid::function::types,
            "wasmgrid:function/log": super::wasmgrid::function::log,
            "wasmgrid:function/config": super::wasmgrid::function::config,
            "wasmgrid:function/artifacts": super::wasmgrid::function::artifacts,
        },
    });
}

pub use wasmgrid::function::types::{Column, Field};
