//! What the control plane runs on every uploaded module before storing it:
//! validation, the import check and world detection. Any input must get an
//! answer (a world or an error), never a panic or a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match wasmgrid_control_plane::module::inspect(bytes) {
        Ok(kind) => assert!(["scorer", "mapper", "reducer", "http"].contains(&kind)),
        Err(e) => assert!(!e.0.is_empty()),
    }
});
