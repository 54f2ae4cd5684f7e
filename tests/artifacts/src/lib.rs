//! Paths of the guest components built for tests and benchmarks.
//!
//! The build script compiles the examples in `guest-examples/` and the
//! hostile fixtures in `tests/guests/` for `wasm32-wasip2`; each constant
//! names one `.wasm` file.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// A scorer-shaped component (WebAssembly text) whose core module has a
/// table of 100,000 elements: valid, but over what a node's instance slot
/// holds.
pub const BIG_TABLE_WAT: &str = r#"(component
  (core module $m (table 100000 funcref) (func (export "f")))
  (core instance $i (instantiate $m))
  (type $t (func))
  (func $score (type $t) (canon lift (core func $i "f")))
  (export "score" (func $score)))"#;
