//! Init once, call fresh: a component's optional `init` export runs once per
//! function version (module and config), and the memory and globals it leaves
//! become the starting image of every call's instance.
//!
//! Wizer (wasmtime's pre-initializer) instruments the component so its
//! internal state can be read back; the instrumented component is
//! instantiated with the version's config and limits, its `init` called, and
//! its state written into a new component whose data segments are that
//! memory. wasmtime maps that image copy-on-write into each pooled instance,
//! so no call pays for `init`, and no call sees another call's writes.
//!
//! [`snapshot`] does one version; [`exports_init`] says whether a component
//! has an `init` at all, and [`version_key`] names the result in the caches.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmparser::{ComponentExternalKind, Parser, Payload};
use wasmtime::Store;
use wasmtime::component::{Component, Instance, Lift, Linker, WasmList};
use wasmtime_wizer::{ComponentContext, ComponentInstanceState, Wizer};

use crate::Limits;
use crate::function::classify;
use crate::host::HostState;
use crate::{Error, Result};

/// The export the grid runs once per version.
pub(crate) const INIT_EXPORT: &str = "init";

/// Longest `init` may run, whatever the version's per-call timeout: it
/// parses whole models, once.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the component exports a function named `init` at its top level.
/// Bytes that do not parse export nothing; loading them reports why.
pub(crate) fn exports_init(bytes: &[u8]) -> bool {
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(Payload::ComponentExportSection(reader)) if depth == 0 => {
                for export in reader.into_iter().flatten() {
                    if export.name.name == INIT_EXPORT && export.kind == ComponentExternalKind::Func {
                        return true;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// The name of `module` initialised with `config`, in the runtime's maps and
/// the compiled cache: the same module with another config is another image.
/// [`version_key`] of a version that also reads `artifacts`: their names
/// and sha256s are part of it (none: the same key).
pub fn version_key_with(module: &str, config: &BTreeMap<String, String>, artifacts: &crate::Artifacts) -> String {
    let key = version_key(module, config);
    if artifacts.is_empty() {
        return key;
    }
    let mut h = Sha256::new();
    h.update(b"wasmgrid-artifacts-v1\0");
    h.update(key.as_bytes());
    for (name, a) in artifacts.iter() {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(a.sha256.as_bytes());
    }
    hex::encode(h.finalize())
}

pub fn version_key(module: &str, config: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(b"wasmgrid-init-v1\0");
    h.update(module.as_bytes());
    for (k, v) in config {
        // Lengths first, so no two configs hash the same bytes.
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

fn wizer() -> Wizer {
    let mut w = Wizer::new();
    // The component lifts `init` from its core module: removing the core
    // export would leave the lift dangling. The image keeps `init`, and the
    // grid never calls it there.
    w.init_func(INIT_EXPORT).keep_init_func(true);
    w
}

/// Instruments `bytes` so its state can be read after `init`.
pub(crate) fn instrument(bytes: &[u8]) -> Result<(ComponentContext<'_>, Vec<u8>)> {
    // Wizer asserts on its own invariants; a component it cannot handle must
    // fail this version, not the node.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| wizer().instrument_component(bytes)));
    let reason = match result {
        Ok(Ok(instrumented)) => return Ok(instrumented),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => "the pre-initializer panicked on it".to_string(),
    };
    Err(Error::InvalidComponent { reason: format!("its `init` cannot be snapshotted: {reason}") })
}

/// Instantiates `component` in `store` and runs its `init`: the instance,
/// with the state `init` left.
pub(crate) fn run(
    component: &Component,
    linker: &Linker<HostState>,
    store: &mut Store<HostState>,
    limits: &Limits,
) -> Result<Instance> {
    let failed = |e: Error| Error::Init { cause: Box::new(e) };
    let pre = linker.instantiate_pre(component).map_err(|e| super::missing_import(&e))?;
    let instance = pre.instantiate(&mut *store).map_err(|e| failed(classify(e, limits, &store.data().stderr)))?;
    let init =
        instance.get_typed_func::<(), (std::result::Result<(), String>,)>(&mut *store, INIT_EXPORT).map_err(|e| {
            Error::InvalidComponent { reason: format!("its `init` export is not `func() -> result<_, string>`: {e}") }
        })?;
    let (result,) = init.call(&mut *store, ()).map_err(|e| failed(classify(e, limits, &store.data().stderr)))?;
    result.map_err(|message| failed(Error::Guest { message }))?;
    if !store.data().table.is_empty() {
        return Err(Error::InitKeptResources);
    }
    Ok(instance)
}

/// The component `cx` was instrumented from, rewritten with the state of
/// `instance` (an instance of the instrumented component, after [`run`]).
pub(crate) fn snapshot(cx: &ComponentContext<'_>, store: &mut Store<HostState>, instance: Instance) -> Result<Vec<u8>> {
    // Reading the state back runs the instrumented accessors: give them time.
    store.set_epoch_deadline(u64::MAX / 2);
    let mut access = Access { store, instance, error: None };
    let snapshot =
        std::panic::catch_unwind(AssertUnwindSafe(|| pollster::block_on(wizer().snapshot_component(cx, &mut access))));
    if let Some(e) = access.error {
        return Err(Error::Runtime(format!("reading the state `init` left: {e}")));
    }
    match snapshot {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(Error::Runtime(format!("snapshotting the state `init` left: {e:#}"))),
        Err(_) => Err(Error::Runtime("the pre-initializer panicked while snapshotting".into())),
    }
}

/// Reads an instrumented instance's state for Wizer. The trait cannot fail,
/// so the first error is kept and the snapshot discarded.
struct Access<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    error: Option<String>,
}

impl Access<'_> {
    fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: Lift + Send + Sync + 'static,
    {
        if self.error.is_some() {
            return None;
        }
        let result = (|| {
            let (_, parent) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or_else(|| format!("no export `{instance}`"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&parent), func)
                .ok_or_else(|| format!("no export `{instance}#{func}`"))?;
            let typed = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)
                .map_err(|e| format!("`{instance}#{func}`: {e}"))?;
            typed.call(&mut *self.store, ()).map(|(r,)| r).map_err(|e| format!("`{instance}#{func}`: {e:#}"))
        })();
        result.map_err(|e| self.error = Some(e)).ok()
    }
}

impl ComponentInstanceState for Access<'_> {
    fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        let list = self.call::<WasmList<u8>>(instance, func);
        match list {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
        std::future::ready(())
    }

    fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> impl Future<Output = i32> + Send {
        std::future::ready(self.call::<i32>(instance, func).unwrap_or_default())
    }

    fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> impl Future<Output = i64> + Send {
        std::future::ready(self.call::<i64>(instance, func).unwrap_or_default())
    }

    fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> impl Future<Output = u32> + Send {
        std::future::ready(self.call::<f32>(instance, func).map(f32::to_bits).unwrap_or_default())
    }

    fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> impl Future<Output = u64> + Send {
        std::future::ready(self.call::<f64>(instance, func).map(f64::to_bits).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_differ_by_module_and_config() {
        let a: BTreeMap<String, String> = [("model".to_string(), "1".to_string())].into();
        let b: BTreeMap<String, String> = [("model".to_string(), "2".to_string())].into();
        // The same bytes split differently between key and value.
        let c: BTreeMap<String, String> = [("mode".to_string(), "l1".to_string())].into();
        let m = "ab".repeat(32);
        assert_eq!(version_key(&m, &a), version_key(&m, &a.clone()));
        assert_ne!(version_key(&m, &a), version_key(&m, &b));
        assert_ne!(version_key(&m, &a), version_key(&m, &c));
        assert_ne!(version_key(&m, &a), version_key(&"cd".repeat(32), &a));
    }

    #[test]
    fn a_component_without_init_or_not_a_component_exports_none() {
        assert!(!exports_init(b"not wasm"));
        let component = wat::parse_str("(component)").expect("wat");
        assert!(!exports_init(&component));
    }
}
