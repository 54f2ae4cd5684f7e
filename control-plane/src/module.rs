//! What the control plane checks about an uploaded module before storing it.
//!
//! A module is validated in full (wasmparser, the validator wasmtime itself
//! uses) and its top-level exports tell which world it implements. Nothing
//! is compiled here: compilation happens on nodes, bounded in time and
//! memory, since a module that validates can still be costly to compile.

use wasmgrid_api::pool;
use wasmparser::{ComponentTypeRef, Instance, Parser, Payload, Validator, WasmFeatures};

/// Why a module was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidModule(pub String);

/// Interface namespaces a node links: WASI 0.2 (CLI, I/O, clocks, random,
/// and `wasi:http` for HTTP components) and wasmgrid's own host API.
const PROVIDED: &[&str] = &["wasi:", "wasmgrid:function/"];

/// Checks that `bytes` are a valid component that imports only what nodes
/// provide, and returns its world: `scorer` (exports `score`), `mapper`
/// (`run`), `reducer` (`reduce`), `aggregator` (`aggregation`) or `http`
/// (a standard `wasi:http/proxy` component).
pub fn inspect(bytes: &[u8]) -> Result<&'static str, InvalidModule> {
    if bytes.is_empty() {
        return Err(InvalidModule("the module is empty".into()));
    }
    if Parser::is_core_wasm(bytes) {
        return Err(InvalidModule(
            "this is a core WebAssembly module, not a component; build for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)"
                .into(),
        ));
    }
    if !Parser::is_component(bytes) {
        return Err(InvalidModule("not a WebAssembly component (no `\\0asm` component header)".into()));
    }
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| InvalidModule(format!("the component does not validate: {e}")))?;

    let mut depth = 0usize;
    let mut exports = Vec::new();
    let mut imports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| InvalidModule(format!("the component does not parse: {e}")))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| InvalidModule(format!("bad import section: {e}")))?;
                    // Type imports name the types of the world's own
                    // interfaces; instances and functions must be linked.
                    if !matches!(import.ty, ComponentTypeRef::Type(_)) {
                        imports.push(import.name.name.to_string());
                    }
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| InvalidModule(format!("bad export section: {e}")))?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    if let Some(unknown) = imports.iter().find(|i| !PROVIDED.iter().any(|p| i.starts_with(p))) {
        return Err(InvalidModule(format!(
            "the component imports `{unknown}`, which no wasmgrid node provides (functions may import WASI 0.2 and \
             `wasmgrid:function/*`)"
        )));
    }
    for (export, kind) in [("score", "scorer"), ("run", "mapper"), ("reduce", "reducer"), ("aggregation", "aggregator")]
    {
        if exports.iter().any(|e| e == export) {
            return Ok(kind);
        }
    }
    if exports.iter().any(|e| e.starts_with("wasi:http/incoming-handler@0.2")) {
        return Ok("http");
    }
    Err(InvalidModule(format!(
        "the component is not a wasmgrid function: it must export `score` (scorer), `run` (mapper), \
         `reduce` (reducer), `aggregation` (aggregator) or `wasi:http/incoming-handler` (a wasi:http/proxy \
         component); it exports [{}]",
        exports.join(", ")
    )))
}

/// A component over what one instance slot of a node holds: the message
/// names the limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OverLimits(String);

/// Checks a component that [`inspect`] accepted against what one slot of a
/// node's instance pool holds ([`pool`]): each core module's tables and
/// memories, and the core instances it creates. What fails here would fail
/// on every node; the error names the limit.
pub fn check_pool_limits(bytes: &[u8]) -> Result<(), OverLimits> {
    let mut instances = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| OverLimits(format!("the component does not parse: {e}")))? {
            Payload::TableSection(reader) => {
                let mut count = 0u32;
                for table in reader {
                    let table = table.map_err(|e| OverLimits(format!("bad table section: {e}")))?;
                    count += 1;
                    if table.ty.initial > pool::TABLE_ELEMENTS {
                        return Err(OverLimits(format!(
                            "a table of {} elements is over the limit of {} elements per table",
                            table.ty.initial,
                            pool::TABLE_ELEMENTS
                        )));
                    }
                }
                if count > pool::TABLES_PER_COMPONENT {
                    return Err(OverLimits(format!(
                        "a core module defines {count} tables, over the limit of {} per component",
                        pool::TABLES_PER_COMPONENT
                    )));
                }
            }
            Payload::MemorySection(reader) if reader.count() > pool::MEMORIES_PER_COMPONENT => {
                return Err(OverLimits(format!(
                    "a core module defines {} memories, over the limit of {} per component",
                    reader.count(),
                    pool::MEMORIES_PER_COMPONENT
                )));
            }
            Payload::InstanceSection(reader) => {
                for instance in reader {
                    if matches!(
                        instance.map_err(|e| OverLimits(format!("bad instance section: {e}")))?,
                        Instance::Instantiate { .. }
                    ) {
                        instances += 1;
                    }
                }
            }
            _ => {}
        }
    }
    if instances > pool::CORE_INSTANCES_PER_COMPONENT {
        return Err(OverLimits(format!(
            "the component creates {instances} core instances, over the limit of {} per component",
            pool::CORE_INSTANCES_PER_COMPONENT
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_component() {
        assert!(inspect(b"").expect_err("refused").0.contains("empty"));
        assert!(inspect(b"hello world").expect_err("refused").0.contains("not a WebAssembly component"));
        let core = b"\0asm\x01\0\0\0";
        assert!(inspect(core).expect_err("refused").0.contains("core WebAssembly module"));
        let truncated = b"\0asm\x0d\0\x01\0\x01\x05";
        assert!(inspect(truncated).expect_err("refused").0.contains("does not validate"));
    }
}
