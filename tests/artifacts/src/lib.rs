//! Paths of the guest components built for tests and benchmarks.
//!
//! The build script compiles the examples in `guest-examples/` and the
//! hostile fixtures in `tests/guests/` for `wasm32-wasip2`; each constant
//! names one `.wasm` file.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
