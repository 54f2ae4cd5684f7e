//! How a process builds its runtime: the compiled-component cache, the
//! compile worker's limits and the GPU mode (`CompileArgs`, shared by
//! `run`, `node`, `control-plane` and `dev`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use wasmgrid_gpu::{GpuLimits, GpuMode, SharedGpu};
use wasmgrid_runtime::{CompileWorker, EngineSettings, RuntimeConfig};

use crate::units;

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// Where compiled components are cached [default: $XDG_CACHE_HOME/wasmgrid or ~/.cache/wasmgrid].
    #[arg(long, env = "WASMGRID_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the compiled-component cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Time limit for compiling one component.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    pub compile_timeout: Duration,
    /// Memory limit for compiling one component.
    #[arg(long, default_value = "4GiB", value_parser = units::parse_size)]
    pub compile_memory: u64,
    /// What runs guests' `gpu` calls: `auto` a hardware GPU if there is one,
    /// `any` any Vulkan adapter (software ones such as lavapipe included),
    /// `off` the CPU fallback. Either way the results are the same.
    #[arg(long, env = "WASMGRID_GPU", value_name = "auto|any|off", default_value = "auto")]
    pub gpu_mode: GpuMode,
}

pub fn runtime_config(args: &CompileArgs, fuel: bool, max_memory: u64) -> Result<RuntimeConfig> {
    let cache_dir = if args.no_cache {
        None
    } else {
        Some(match &args.cache_dir {
            Some(d) => d.clone(),
            None => default_cache_dir()?,
        })
    };
    let program = std::env::current_exe().context("finding the wasmgrid executable for the compile worker")?;
    Ok(RuntimeConfig {
        engine: EngineSettings { fuel, ..EngineSettings::default() },
        cache_dir,
        compile_timeout: args.compile_timeout,
        compile_memory: args.compile_memory,
        compile_worker: Some(CompileWorker { program, args: vec![OsString::from("__compile")] }),
        max_memory: max_memory.max(RuntimeConfig::default().max_memory),
        gpu: SharedGpu::new(args.gpu_mode, GpuLimits::default()),
        ..RuntimeConfig::default()
    })
}

fn default_cache_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(x).join("wasmgrid"));
    }
    let home = std::env::var_os("HOME").context("neither --cache-dir, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/wasmgrid"))
}
