//! Write wasmgrid functions in Rust.
//!
//! A function is a WebAssembly component for one of four worlds of the
//! wasmgrid WIT package (`sdk/wit`):
//!
//! - a [`Scorer`] adds columns to a [`Batch`] of rows (per request, and per
//!   batch of every data partition in a job);
//! - a [`Mapper`] reads one partition through [`input`] and writes through
//!   [`output`] (records, batches, or key/value pairs for a reducer);
//! - a [`Reducer`] folds all values of one key into an output [`Record`];
//! - an [`Aggregator`] says what a job's group-by computes ([`aggregate`]),
//!   which the grid reads, folds and merges itself: one component is the
//!   whole job.
//!
//! Scorers and mappers can run dense math on the node's GPU through [`gpu`].
//!
//! Implement the trait on a type and export it with [`export_scorer!`],
//! [`export_mapper!`], [`export_reducer!`] or [`export_aggregator!`]; build with
//! `cargo build --release --target wasm32-wasip2`.
//!
//! # Init
//!
//! Each trait has an optional `init`, which the grid runs once per function
//! version on each node (and `wasmgrid run` once per run), with the
//! version's [`config`], before any call. The memory it leaves is the
//! starting image of every call's fresh instance, copy-on-write: parse the
//! model in `init`, keep it in a `static` (a `OnceLock`), and no call pays
//! for parsing again, while no call ever sees another call's writes. An error
//! from `init` fails the deploy with its message. `init` may read `config`
//! and write [`log`]; it must not leave host resources open (writing to
//! stdout opens a stream: log instead), nor keep `gpu` tensors.
//!
//! ```ignore
//! use wasmgrid_sdk::{Batch, BatchBuilder, Scorer};
//!
//! struct Double;
//! impl Scorer for Double {
//!     fn score(rows: Batch) -> Result<Batch, String> {
//!         let x = rows.f64s("x")?;
//!         Ok(BatchBuilder::new(rows.rows).f64("twice", x.iter().map(|v| 2.0 * v).collect()).build())
//!     }
//! }
//! wasmgrid_sdk::export_scorer!(Double);
//! ```

pub mod aggregate;
mod batch;
pub mod gpu;
mod record;

pub use aggregate::{Aggregation, col};
pub use batch::BatchBuilder;
pub use record::Record;

/// Generated bindings for each world. Most functions never need these directly.
#[doc(hidden)]
#[allow(unsafe_code, missing_debug_implementations, unused_qualifications)]
pub mod bindings {
    /// The `scorer` world; owns the shared `types`, `log` and `config` interfaces.
    pub mod scorer {
        wit_bindgen::generate!({
            path: "wit",
            world: "scorer",
            pub_export_macro: true,
            export_macro_name: "__export_scorer_world",
            default_bindings_module: "wasmgrid_sdk::bindings::scorer",
        });
    }
    /// The `scorer-calls` world: a scorer without `init`.
    pub mod scorer_calls {
        wit_bindgen::generate!({
            path: "wit",
            world: "scorer-calls",
            with: {
                "wasmgrid:function/types@0.1.0": crate::bindings::scorer::wasmgrid::function::types,
                "wasmgrid:function/log@0.1.0": crate::bindings::scorer::wasmgrid::function::log,
                "wasmgrid:function/config@0.1.0": crate::bindings::scorer::wasmgrid::function::config,
                "wasmgrid:function/gpu@0.1.0": crate::bindings::scorer::wasmgrid::function::gpu,
                "wasmgrid:function/artifacts@0.1.0": crate::bindings::scorer::wasmgrid::function::artifacts,
            },
            pub_export_macro: true,
            export_macro_name: "__export_scorer_calls_world",
            default_bindings_module: "wasmgrid_sdk::bindings::scorer_calls",
        });
    }
    /// The `mapper` world.
    pub mod mapper {
        wit_bindgen::generate!({
            path: "wit",
            world: "mapper",
            with: {
                "wasmgrid:function/types@0.1.0": crate::bindings::scorer::wasmgrid::function::types,
                "wasmgrid:function/log@0.1.0": crate::bindings::scorer::wasmgrid::function::log,
                "wasmgrid:function/config@0.1.0": crate::bindings::scorer::wasmgrid::function::config,
                "wasmgrid:function/gpu@0.1.0": crate::bindings::scorer::wasmgrid::function::gpu,
                "wasmgrid:function/artifacts@0.1.0": crate::bindings::scorer::wasmgrid::function::artifacts,
            },
            pub_export_macro: true,
            export_macro_name: "__export_mapper_world",
            default_bindings_module: "wasmgrid_sdk::bindings::mapper",
        });
    }
    /// The `aggregator` world; owns the `aggregate` interface.
    pub mod aggregator {
        wit_bindgen::generate!({
            path: "wit",
            world: "aggregator",
            with: {
                "wasmgrid:function/types@0.1.0": crate::bindings::scorer::wasmgrid::function::types,
                "wasmgrid:function/log@0.1.0": crate::bindings::scorer::wasmgrid::function::log,
                "wasmgrid:function/config@0.1.0": crate::bindings::scorer::wasmgrid::function::config,
                "wasmgrid:function/artifacts@0.1.0": crate::bindings::scorer::wasmgrid::function::artifacts,
            },
            pub_export_macro: true,
            export_macro_name: "__export_aggregator_world",
            default_bindings_module: "wasmgrid_sdk::bindings::aggregator",
        });
    }
    /// The `reducer` world.
    pub mod reducer {
        wit_bindgen::generate!({
            path: "wit",
            world: "reducer",
            with: {
                "wasmgrid:function/log@0.1.0": crate::bindings::scorer::wasmgrid::function::log,
                "wasmgrid:function/config@0.1.0": crate::bindings::scorer::wasmgrid::function::config,
            },
            pub_export_macro: true,
            export_macro_name: "__export_reducer_world",
            default_bindings_module: "wasmgrid_sdk::bindings::reducer",
        });
    }
}

use bindings::scorer::wasmgrid::function as wit;

pub use wit::types::{Batch, Column, Field};

/// A function that adds columns to rows.
pub trait Scorer {
    /// Prepares the function once per version (see [`init`](crate#init)):
    /// parse the model from [`config`] and keep it in a `static`.
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// Returns the columns to add to `rows`, each with `rows.rows` values.
    /// A returned column whose name matches an input column replaces it.
    fn score(rows: Batch) -> Result<Batch, String>;
}

/// A function that processes one partition of a job's input.
pub trait Mapper {
    /// Prepares the function once per version (see [`init`](crate#init)).
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// Reads the partition with [`input`] and writes results with [`output`].
    fn run(partition: u32) -> Result<(), String>;
}

/// A function that folds every value emitted for one key.
pub trait Reducer {
    /// Prepares the function once per version (see [`init`](crate#init)).
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// Returns the output record for `key` (see [`Record`]).
    fn reduce(key: Vec<u8>, values: Vec<Vec<u8>>) -> Result<Record, String>;
}

/// A function that says what a job's group-by computes: the grid reads the
/// input and folds and merges the groups itself (see [`aggregate`]).
pub trait Aggregator {
    /// Prepares the function once per version (see [`init`](crate#init)).
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// The keys and measures.
    fn aggregation() -> Aggregation;

    /// Returns columns to add to `rows` before they are folded; called on
    /// every batch (with only the columns named) when the aggregation sets
    /// [`Aggregation::prepare`]. A returned column whose name matches an
    /// input column replaces it.
    fn prepare(rows: Batch) -> Result<Batch, String> {
        Ok(Batch { rows: rows.rows, fields: Vec::new() })
    }
}

/// Exports a [`Scorer`] implementation as the component's `score` function.
///
/// `export_scorer!(MyScorer, no_init)` exports it without `init` (its
/// `init` is never called): every version of such a component is the one
/// compiled module with another config, so deploying a new config compiles
/// nothing on the nodes, where a component with `init` gets an image of its
/// own, compiled, per version. For scorers that read their config per call.
#[macro_export]
macro_rules! export_scorer {
    ($ty:ty, no_init) => {
        // wit-bindgen's export glue is `unsafe` FFI; keep it in its own module.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __wasmgrid_scorer_export {
        use super::*;
        #[doc(hidden)]
        pub struct __WasmgridScorer;
        impl $crate::bindings::scorer_calls::Guest for __WasmgridScorer {
            fn score(rows: $crate::Batch) -> ::core::result::Result<$crate::Batch, ::std::string::String> {
                <$ty as $crate::Scorer>::score(rows)
            }
        }
        $crate::bindings::scorer_calls::__export_scorer_calls_world!(__WasmgridScorer with_types_in $crate::bindings::scorer_calls);
        }
    };
    ($ty:ty) => {
        // wit-bindgen's export glue is `unsafe` FFI; keep it in its own module.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __wasmgrid_scorer_export {
        use super::*;
        #[doc(hidden)]
        pub struct __WasmgridScorer;
        impl $crate::bindings::scorer::Guest for __WasmgridScorer {
            fn init() -> ::core::result::Result<(), ::std::string::String> {
                $crate::__init::once(<$ty as $crate::Scorer>::init)
            }
            fn score(rows: $crate::Batch) -> ::core::result::Result<$crate::Batch, ::std::string::String> {
                $crate::__init::once(<$ty as $crate::Scorer>::init)?;
                <$ty as $crate::Scorer>::score(rows)
            }
        }
        $crate::bindings::scorer::__export_scorer_world!(__WasmgridScorer with_types_in $crate::bindings::scorer);
        }
    };
}

/// Exports a [`Mapper`] implementation as the component's `run` function.
#[macro_export]
macro_rules! export_mapper {
    ($ty:ty) => {
        // wit-bindgen's export glue is `unsafe` FFI; keep it in its own module.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __wasmgrid_mapper_export {
        use super::*;
        #[doc(hidden)]
        pub struct __WasmgridMapper;
        impl $crate::bindings::mapper::Guest for __WasmgridMapper {
            fn init() -> ::core::result::Result<(), ::std::string::String> {
                $crate::__init::once(<$ty as $crate::Mapper>::init)
            }
            fn run(partition: u32) -> ::core::result::Result<(), ::std::string::String> {
                $crate::__init::once(<$ty as $crate::Mapper>::init)?;
                let result = <$ty as $crate::Mapper>::run(partition);
                $crate::output::flush();
                result
            }
        }
        $crate::bindings::mapper::__export_mapper_world!(__WasmgridMapper with_types_in $crate::bindings::mapper);
        }
    };
}

/// Exports a [`Reducer`] implementation as the component's `reduce` function.
#[macro_export]
macro_rules! export_reducer {
    ($ty:ty) => {
        // wit-bindgen's export glue is `unsafe` FFI; keep it in its own module.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __wasmgrid_reducer_export {
        use super::*;
        #[doc(hidden)]
        pub struct __WasmgridReducer;
        impl $crate::bindings::reducer::Guest for __WasmgridReducer {
            fn init() -> ::core::result::Result<(), ::std::string::String> {
                $crate::__init::once(<$ty as $crate::Reducer>::init)
            }
            fn reduce(
                key: ::std::vec::Vec<u8>,
                values: ::std::vec::Vec<::std::vec::Vec<u8>>,
            ) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::__init::once(<$ty as $crate::Reducer>::init)?;
                <$ty as $crate::Reducer>::reduce(key, values).map($crate::Record::into_bytes)
            }
        }
        $crate::bindings::reducer::__export_reducer_world!(__WasmgridReducer with_types_in $crate::bindings::reducer);
        }
    };
}

/// Exports an [`Aggregator`] implementation as the component's
/// `aggregation` and `prepare` functions.
#[macro_export]
macro_rules! export_aggregator {
    ($ty:ty) => {
        // wit-bindgen's export glue is `unsafe` FFI; keep it in its own module.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __wasmgrid_aggregator_export {
        use super::*;
        #[doc(hidden)]
        pub struct __WasmgridAggregator;
        impl $crate::bindings::aggregator::Guest for __WasmgridAggregator {
            fn init() -> ::core::result::Result<(), ::std::string::String> {
                $crate::__init::once(<$ty as $crate::Aggregator>::init)
            }
            fn aggregation() -> ::core::result::Result<
                $crate::bindings::aggregator::wasmgrid::function::aggregate::Spec,
                ::std::string::String,
            > {
                $crate::__init::once(<$ty as $crate::Aggregator>::init)?;
                Ok(<$ty as $crate::Aggregator>::aggregation().into_wit())
            }
            fn prepare(rows: $crate::Batch) -> ::core::result::Result<$crate::Batch, ::std::string::String> {
                $crate::__init::once(<$ty as $crate::Aggregator>::init)?;
                <$ty as $crate::Aggregator>::prepare(rows)
            }
        }
        $crate::bindings::aggregator::__export_aggregator_world!(__WasmgridAggregator with_types_in $crate::bindings::aggregator);
        }
    };
}

/// Runs a function's `init` at most once per memory image.
#[doc(hidden)]
pub mod __init {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once `init` has succeeded. The grid snapshots memory after `init`,
    /// so every call's instance starts with this already set; a host that
    /// never calls `init` (an older grid) gets it run before the first call.
    static DONE: AtomicBool = AtomicBool::new(false);

    /// Runs `init` unless it already succeeded in this memory image.
    pub fn once(init: fn() -> Result<(), String>) -> Result<(), String> {
        if DONE.load(Ordering::Relaxed) {
            return Ok(());
        }
        init()?;
        DONE.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Files the function's version was deployed with (`wasmgrid deploy ...
/// --artifact NAME=PATH`, `wasmgrid run ... --artifact NAME=PATH`): models,
/// lookup tables, up to 4 GiB each, read-only. Read them in `init`, so the
/// parsed model is in the image every call starts from.
pub mod artifacts {
    use super::wit::artifacts;

    /// Bytes per host call of [`read`].
    const PART: u32 = 8 << 20;

    /// The size in bytes of artifact `name`, if the version has one.
    pub fn size(name: &str) -> Option<u64> {
        artifacts::size(name)
    }

    /// Up to `len` bytes of artifact `name` from `offset` (at most 16 MiB).
    pub fn read_at(name: &str, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        artifacts::read(name, offset, len)
    }

    /// The whole of artifact `name`.
    pub fn read(name: &str) -> Result<Vec<u8>, String> {
        let Some(size) = artifacts::size(name) else {
            // The host's error names the artifacts the version has.
            return artifacts::read(name, 0, 0);
        };
        let mut out = Vec::with_capacity(usize::try_from(size).map_err(|e| e.to_string())?);
        while (out.len() as u64) < size {
            let part = artifacts::read(name, out.len() as u64, PART)?;
            if part.is_empty() {
                break;
            }
            out.extend_from_slice(&part);
        }
        Ok(out)
    }

    /// Artifact `name` as UTF-8 text.
    pub fn read_string(name: &str) -> Result<String, String> {
        String::from_utf8(read(name)?).map_err(|e| format!("artifact `{name}` is not UTF-8: {e}"))
    }
}

/// The function's configuration (`--config key=value`).
pub mod config {
    use super::wit::config;

    /// The value for `key`, if set.
    pub fn get(key: &str) -> Option<String> {
        config::get(key)
    }

    /// The value for `key`, or an error naming the missing key.
    pub fn require(key: &str) -> Result<String, String> {
        config::get(key).ok_or_else(|| format!("config key `{key}` is not set"))
    }

    /// Every key that is set, sorted.
    pub fn keys() -> Vec<String> {
        config::keys()
    }
}

/// Logging that the grid keeps per invocation and shows to the function's owner.
pub mod log {
    use super::wit::log::{Level, log};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// A mapper's input: the partition its task was given.
pub mod input {
    use crate::Batch;
    use crate::bindings::mapper::wasmgrid::function::input;

    /// The partition's format: "csv", "jsonl", "parquet" or "text".
    pub fn format() -> String {
        input::format()
    }

    /// Up to `max_bytes` of raw records cut at a line boundary; `None` at the end.
    pub fn next_bytes(max_bytes: u32) -> Option<Vec<u8>> {
        input::next_bytes(max_bytes)
    }

    /// Up to `max_rows` rows as typed columns; `None` at the end.
    pub fn next_batch(max_rows: u32) -> Option<Batch> {
        input::next_batch(max_rows)
    }

    /// Every chunk of raw records in the partition, 1 MiB at a time.
    pub fn chunks() -> impl Iterator<Item = Vec<u8>> {
        std::iter::from_fn(|| input::next_bytes(1 << 20))
    }

    /// Every batch of rows in the partition, 4096 rows at a time.
    pub fn batches() -> impl Iterator<Item = Batch> {
        std::iter::from_fn(|| input::next_batch(4096))
    }
}

/// A mapper's output.
pub mod output {
    use std::cell::RefCell;

    use crate::bindings::mapper::wasmgrid::function::output;
    use crate::{Batch, Record};

    /// Pairs are sent to the host in packed calls of about this many bytes.
    const PAIR_BUFFER: usize = 1 << 20;
    /// ... or of at most this many pairs.
    const PAIR_COUNT: usize = 1 << 16;

    #[derive(Default)]
    struct PairBuffer {
        keys: Vec<u8>,
        key_ends: Vec<u32>,
        values: Vec<u8>,
        value_ends: Vec<u32>,
    }

    thread_local! {
        static PAIRS: RefCell<PairBuffer> = RefCell::new(PairBuffer::default());
    }

    /// Writes one output record.
    pub fn emit(record: Record) {
        output::emit(&record.into_bytes())
    }

    /// Writes output rows in columnar form.
    pub fn emit_batch(rows: &Batch) {
        output::emit_batch(rows)
    }

    /// Sends a key/value pair to the job's reducer. Pairs are buffered and
    /// sent in packed batches; [`export_mapper!`](crate::export_mapper)
    /// flushes the rest when `run` returns.
    pub fn emit_pair(key: &[u8], value: &[u8]) {
        let full = PAIRS.with_borrow_mut(|b| {
            b.keys.extend_from_slice(key);
            b.key_ends.push(b.keys.len() as u32);
            b.values.extend_from_slice(value);
            b.value_ends.push(b.values.len() as u32);
            // Empty pairs take no bytes but 8 bytes of ends each: count them too.
            b.keys.len() + b.values.len() >= PAIR_BUFFER || b.key_ends.len() >= PAIR_COUNT
        });
        if full {
            flush();
        }
    }

    /// Sends buffered pairs to the host now.
    pub fn flush() {
        PAIRS.with_borrow_mut(|b| {
            if !b.key_ends.is_empty() {
                output::emit_pairs(&b.keys, &b.key_ends, &b.values, &b.value_ends);
                b.keys.clear();
                b.key_ends.clear();
                b.values.clear();
                b.value_ends.clear();
            }
        })
    }
}
