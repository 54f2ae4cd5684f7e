//! Compiling untrusted components without letting a runaway compile take the
//! node down.
//!
//! wasmtime does not treat compile-time resource use as a security bug, so we
//! bound it ourselves: the bytes are size-checked and header-checked first;
//! then a separate worker process (the `wasmgrid` binary's hidden
//! `__compile` command) validates and compiles them under an address-space
//! limit (`RLIMIT_AS`) and a wall-clock deadline, after which it is killed.
//! The artifact it writes is loaded by the parent with `deserialize_file`.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::{EngineSettings, RuntimeConfig, engine_config};
use crate::{Error, Result};

/// Exit code of the worker when the bytes fail validation.
const EXIT_INVALID: i32 = 3;

/// How to start a compile worker: `program args... <settings-json> <in> <out>`.
#[derive(Debug, Clone)]
pub struct CompileWorker {
    /// The executable, usually the running `wasmgrid`.
    pub program: PathBuf,
    /// Leading arguments, e.g. `["__compile"]`.
    pub args: Vec<OsString>,
}

/// Compiles in this process (trusted input, tests and benchmarks).
/// As the worker does, it only compiles: whether the instance pool can hold
/// the result is found when the artifact is loaded ([`Error::Unloadable`]).
pub(crate) fn in_process(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>> {
    engine.precompile_component(bytes).map_err(|e| Error::InvalidComponent { reason: format!("{e:#}") })
}

/// Compiles in a worker process limited to `config.compile_memory` bytes of
/// address space and `config.compile_timeout` of wall time.
pub(crate) fn in_worker(worker: &CompileWorker, config: &RuntimeConfig, bytes: &[u8]) -> Result<Vec<u8>> {
    let dir =
        tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory in", std::env::temp_dir(), e))?;
    let input = dir.path().join("component.wasm");
    let output = dir.path().join("component.cwasm");
    std::fs::write(&input, bytes).map_err(|e| Error::io("writing", &input, e))?;
    let settings = serde_json::to_string(&config.engine).map_err(|e| Error::Runtime(e.to_string()))?;

    let mut cmd = Command::new(&worker.program);
    cmd.args(&worker.args)
        .arg(settings)
        .arg(&input)
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    limit_address_space(&mut cmd, config.compile_memory);
    let mut child = cmd.spawn().map_err(|e| Error::io("starting the compile worker", &worker.program, e))?;

    let deadline = Instant::now() + config.compile_timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::CompileTimeout { limit: config.compile_timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(Error::io("waiting for the compile worker", &worker.program, e));
            }
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.by_ref().take(64 << 10).read_to_string(&mut stderr);
    }
    let stderr = stderr.trim().to_string();
    if status.success() {
        return std::fs::read(&output).map_err(|e| Error::io("reading compiled artifact", &output, e));
    }
    if status.code() == Some(EXIT_INVALID) {
        return Err(Error::InvalidComponent { reason: stderr });
    }
    let reason = if stderr.contains("memory allocation") || stderr.contains("out of memory") || status.code().is_none()
    {
        format!(
            "the compiler exceeded its memory budget of {} MiB or crashed ({status}){}",
            config.compile_memory >> 20,
            if stderr.is_empty() { String::new() } else { format!(": {stderr}") }
        )
    } else {
        format!("{status}: {stderr}")
    };
    Err(Error::CompileFailed { reason })
}

#[allow(unsafe_code)]
fn limit_address_space(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
    // SAFETY: `setrlimit` is async-signal-safe and touches no memory of the
    // parent; it runs in the forked child before `exec`.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The worker's side: compile `input` with `settings` (JSON) and write the
/// artifact to `output`. Returns the process exit code.
pub fn worker_main(settings: &str, input: &Path, output: &Path) -> i32 {
    let settings: EngineSettings = match serde_json::from_str(settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bad engine settings: {e}");
            return 2;
        }
    };
    let engine = match Engine::new(&engine_config(&settings, None)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("creating the engine: {e:#}");
            return 2;
        }
    };
    let bytes = match std::fs::read(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("reading {}: {e}", input.display());
            return 2;
        }
    };
    let artifact = match Component::new(&engine, &bytes) {
        Ok(c) => c.serialize(),
        Err(e) => {
            eprintln!("{e:#}");
            return EXIT_INVALID;
        }
    };
    match artifact.map_err(|e| format!("{e:#}")).and_then(|a| std::fs::write(output, a).map_err(|e| e.to_string())) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("serializing: {e}");
            2
        }
    }
}

/// Loads an artifact this process or its worker produced.
#[allow(unsafe_code)]
pub(crate) fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component> {
    // SAFETY: the artifact was produced just now by `Component::serialize`
    // with this engine's settings, in this process or our own worker.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|e| Error::Unloadable { reason: format!("{e:#}") })
}

/// Maps a cached artifact whose checksum the caller has verified.
#[allow(unsafe_code)]
pub(crate) fn deserialize_file(engine: &Engine, path: &Path) -> Result<Component> {
    // SAFETY: the file is in our private cache directory, was written by
    // `CompiledCache::put` and its digest was checked against the stored one;
    // wasmtime also checks its header and engine compatibility.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| Error::Unloadable { reason: format!("{e:#}") })
}
