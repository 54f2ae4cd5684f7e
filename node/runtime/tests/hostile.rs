//! Each hostile guest gets a clear, specific error, and the runtime that ran
//! it keeps serving: after every failure a healthy call on the same runtime
//! succeeds. Components are real builds of `tests/guests/*`.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use wasmgrid_data::{Format, OutputWriter};
use wasmgrid_runtime::Io;
use wasmgrid_runtime::bindings::{Batch, Column, Field};
use wasmgrid_runtime::{Error, Function, Limits, Runtime, RuntimeConfig};
use wasmgrid_test_artifacts as guests;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| Runtime::new(RuntimeConfig::default()).expect("runtime starts"));

fn load(path: &str) -> Arc<Function> {
    RUNTIME.load_file(path.as_ref()).expect("fixture loads")
}

fn config(pairs: &[(&str, &str)]) -> Arc<BTreeMap<String, String>> {
    Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn rows(n: u32) -> Batch {
    Batch {
        rows: n,
        fields: vec![Field { name: "x".into(), values: Column::F64((0..n).map(f64::from).collect()), valid: None }],
    }
}

fn limits() -> Limits {
    Limits { memory: 32 << 20, timeout: Duration::from_secs(10), ..Limits::default() }
}

/// Scores with the hostile scorer in `mode`.
fn score(mode: &str, limits: &Limits, extra: &[(&str, &str)]) -> Result<Batch, Error> {
    let f = load(guests::HOSTILE_SCORER);
    let mut pairs = vec![("mode", mode)];
    pairs.extend_from_slice(extra);
    let mut instance = f.instantiate(limits, config(&pairs), Io::default())?;
    instance.score(&rows(3))
}

/// The runtime still works: a healthy call succeeds with the right answer.
fn assert_healthy() {
    let out = score("ok", &limits(), &[]).expect("a healthy call succeeds after a hostile one");
    assert_eq!(out.rows, 3);
    assert!(matches!(&out.fields[0].values, Column::F64(v) if v == &[1.0, 1.0, 1.0]));
}

#[test]
fn infinite_loop_times_out_after_the_configured_limit() {
    let limits = Limits { timeout: Duration::from_millis(200), ..limits() };
    let err = score("loop", &limits, &[]).expect_err("a loop cannot finish");
    assert!(matches!(err, Error::Timeout { limit } if limit == Duration::from_millis(200)), "{err}");
    assert_eq!(err.to_string(), "function timed out after 200ms");
    assert_healthy();
}

#[test]
fn memory_grow_bomb_hits_the_memory_limit() {
    let err = score("grow", &limits(), &[]).expect_err("memory cannot grow without bound");
    match &err {
        Error::MemoryLimit { limit, requested } => {
            assert_eq!(*limit, 32 << 20);
            assert!(*requested > 32 << 20);
        }
        other => panic!("expected a memory-limit error, got {other}"),
    }
    assert!(err.to_string().contains("exceeded its memory limit of 33554432 bytes"), "{err}");
    assert_healthy();
}

#[test]
fn unbounded_recursion_is_a_stack_overflow() {
    let err = score("recurse", &limits(), &[]).expect_err("recursion cannot finish");
    assert!(matches!(err, Error::StackOverflow), "{err}");
    assert_healthy();
}

#[test]
fn a_panic_reports_the_guest_message() {
    let err = score("trap", &limits(), &[("message", "model file is corrupt: checksum mismatch")])
        .expect_err("the guest panics");
    assert!(matches!(err, Error::Trap { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("model file is corrupt: checksum mismatch"), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert_healthy();
}

#[test]
fn a_returned_error_is_passed_on_verbatim() {
    let err = score("err", &limits(), &[]).expect_err("the guest returns an error");
    assert!(matches!(&err, Error::Guest { message } if message == "the model refuses these rows"), "{err}");
    assert_healthy();
}

#[test]
fn a_huge_result_hits_the_output_limit() {
    let limits = Limits { memory: 512 << 20, max_output_bytes: 16 << 20, ..limits() };
    let err = score("huge-result", &limits, &[]).expect_err("64 MiB per row is over 16 MiB");
    assert!(matches!(err, Error::OutputLimit { limit } if limit == 16 << 20), "{err}");
    assert_healthy();
}

#[test]
fn log_spam_is_bounded_and_the_call_still_answers() {
    let f = load(guests::HOSTILE_SCORER);
    let limits = Limits { timeout: Duration::from_secs(60), ..limits() };
    let mut instance = f.instantiate(&limits, config(&[("mode", "log-spam")]), Io::default()).expect("instantiates");
    let out = instance.score(&rows(2)).expect("log spam is not an error");
    assert_eq!(out.rows, 2);
    let finished = instance.finish();
    let kept: usize = finished.captured.logs.lines.iter().map(|l| l.message.len()).sum();
    assert!(kept <= limits.max_log_bytes, "kept {kept} log bytes");
    assert!(finished.captured.logs.dropped > 900_000, "dropped {}", finished.captured.logs.dropped);
    assert_eq!(finished.captured.logs.lines[0].message, "log line 0");
    assert!(finished.captured.stdout.len() <= limits.max_stdio_bytes);
    assert!(finished.captured.stdout.starts_with("stdout line 0\n"));
    assert_healthy();
}

fn flood(mode: &str) -> Error {
    let f = load(guests::HOSTILE_MAPPER);
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("part-00000.jsonl");
    let writer = OutputWriter::create(&dest, Format::Jsonl).expect("writer");
    let limits = Limits { max_output_bytes: 8 << 20, ..limits() };
    let io = Io { output: Some(writer), ..Io::default() };
    let mut instance = f.instantiate(&limits, config(&[("mode", mode)]), io).expect("instantiates");
    let err = instance.run(0).expect_err("flooding cannot finish");
    drop(instance);
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert!(left.is_empty(), "a failed invocation leaves no output behind: {left:?}");
    err
}

#[test]
fn emitting_records_without_end_hits_the_output_limit() {
    let err = flood("flood");
    assert!(matches!(err, Error::OutputLimit { limit } if limit == 8 << 20), "{err}");
    assert_eq!(err.to_string(), "function exceeded its output limit of 8388608 bytes");
    assert_healthy();
}

#[test]
fn emitting_pairs_without_end_hits_the_output_limit() {
    let err = flood("pair-flood");
    assert!(matches!(err, Error::OutputLimit { .. }), "{err}");
    assert_healthy();
}

#[test]
fn emitting_empty_pairs_without_end_hits_the_output_limit_not_the_memory_limit() {
    // Empty pairs take no bytes but still cost the host: the SDK sends them
    // by count as well as by size, and the host charges each one.
    let err = flood("empty-pair-flood");
    assert!(matches!(err, Error::OutputLimit { .. }), "{err}");
    assert_healthy();
}

#[test]
fn a_missing_import_is_named() {
    let err = RUNTIME.load_file(guests::MISSING_IMPORT.as_ref()).expect_err("the host has no vault");
    match &err {
        Error::MissingImport { import, .. } => assert!(import.contains("test:hostile/vault"), "{import}"),
        other => panic!("expected a missing-import error, got {other}"),
    }
    assert_healthy();
}

#[test]
fn bytes_that_are_not_a_component_are_rejected() {
    let err = RUNTIME.load(b"this is not wasm at all").expect_err("not wasm");
    assert!(matches!(&err, Error::InvalidComponent { reason } if reason.contains("not WebAssembly")), "{err}");

    let core = wat::parse_str("(module (func (export \"f\")))").expect("wat");
    let err = RUNTIME.load(&core).expect_err("a core module is not a component");
    assert!(err.to_string().contains("core WebAssembly module, not a component"), "{err}");

    let logreg = std::fs::read(guests::LOGREG).expect("logreg built");
    let err = RUNTIME.load(&logreg[..logreg.len() / 2]).expect_err("truncated");
    assert!(matches!(err, Error::InvalidComponent { .. }), "{err}");

    let err = RUNTIME.load(&[]).expect_err("empty");
    assert!(matches!(err, Error::InvalidComponent { .. }), "{err}");
    assert_healthy();
}

#[test]
fn an_oversized_component_is_refused_before_compiling() {
    let rt = Runtime::new(RuntimeConfig { max_component_bytes: 1024, instance_slots: 4, ..RuntimeConfig::default() })
        .expect("runtime");
    let err = rt.load_file(guests::LOGREG.as_ref()).expect_err("too big");
    assert!(matches!(err, Error::ComponentTooLarge { limit: 1024, .. }), "{err}");
    assert_eq!(rt.stats().compiled, 0);
}

#[test]
fn a_component_of_no_wasmgrid_world_is_refused() {
    let wat = r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))
                  (func (export "hello") (canon lift (core func $i "f"))))"#;
    let bytes = wat::parse_str(wat).expect("wat");
    let err = RUNTIME.load(&bytes).expect_err("exports only hello");
    assert!(matches!(&err, Error::NotAFunction { exports } if exports == "hello"), "{err}");
}

#[test]
fn instances_are_fresh_per_invocation() {
    // The scorer's memory, and so its state, starts over in every instance:
    // the same call on two instances gives the same answer.
    let a = score("ok", &limits(), &[]).expect("first");
    let b = score("ok", &limits(), &[]).expect("second");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn malformed_packed_pairs_are_refused() {
    let f = load(guests::HOSTILE_MAPPER);
    let mut instance = f.instantiate(&limits(), config(&[("mode", "bad-pairs")]), Io::default()).expect("instantiates");
    let err = instance.run(0).expect_err("ends past the bytes");
    assert!(matches!(err, Error::Data(wasmgrid_data::Error::BadOutput { .. })), "{err}");
    assert!(err.to_string().contains("emit-pairs: key end 0 is 1000000"), "{err}");
    assert_healthy();
}

/// A runtime whose `gpu` calls run on wgpu when this machine has an adapter.
static WGPU_RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let gpu = wasmgrid_gpu::SharedGpu::new(wasmgrid_gpu::GpuMode::Any, Default::default());
    Runtime::new(RuntimeConfig { gpu, ..RuntimeConfig::default() }).expect("runtime starts")
});

fn score_on(runtime: &Runtime, mode: &str) -> Result<Batch, Error> {
    let f = runtime.load_file(guests::HOSTILE_SCORER.as_ref()).expect("fixture loads");
    let mut instance = f.instantiate(&limits(), config(&[("mode", mode)]), Io::default())?;
    instance.score(&rows(3))
}

#[test]
fn gpu_tensor_hoarding_is_refused_at_the_per_instance_limit() {
    for runtime in [&*RUNTIME, &*WGPU_RUNTIME] {
        let err = score_on(runtime, "gpu-hoard").expect_err("the host refuses at the limit");
        let Error::Guest { message } = &err else { panic!("a guest error, not a trap: {err}") };
        // 64 tensors of 4 MiB fill the default 256 MiB budget.
        assert!(
            message.starts_with(
                "after 64 tensors: tensors would take 272629760 bytes, over this instance's limit of 268435456 bytes"
            ),
            "{message}"
        );
        assert_healthy();
    }
}

#[test]
fn impossible_gpu_shapes_and_sizes_get_clear_errors() {
    for runtime in [&*RUNTIME, &*WGPU_RUNTIME] {
        let err = score_on(runtime, "gpu-shapes").expect_err("every request is refused");
        let Error::Guest { message } = &err else { panic!("a guest error, not a trap: {err}") };
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 5, "{message}");
        assert_eq!(lines[0], "a 2 x 3 tensor needs 6 values, got 5");
        assert!(lines[1].starts_with("tensor of 4294967295 x 4294967295 exceeds the limit of"), "{}", lines[1]);
        assert_eq!(lines[2], "matmul: cannot multiply 2 x 3 by 2 x 3 (inner sizes differ)");
        assert_eq!(lines[3], "dense: cannot multiply 2 x 3 by 2 x 3 (inner sizes differ)");
        assert!(lines[4].starts_with("binary: cannot combine 2 x 3 with 1 x 2"), "{}", lines[4]);
        assert_healthy();
    }
}

#[test]
fn a_component_over_the_pool_limits_is_compiled_once_and_then_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(dir.path().to_path_buf()), ..RuntimeConfig::default() })
        .expect("runtime starts");
    let bytes = wat::parse_str(guests::BIG_TABLE_WAT).expect("wat");
    let first = runtime.load(&bytes).expect_err("a 100,000-element table does not fit a slot");
    assert!(matches!(first, Error::Unloadable { .. }), "{first}");
    assert!(first.to_string().contains("table"), "the error names the table: {first}");
    assert!(!first.to_string().contains(&dir.path().display().to_string()), "no node path: {first}");
    let compiled = runtime.stats().compiled;
    assert_eq!(compiled, 1);
    // Every later load (a route change, another version) is refused without
    // compiling again.
    for _ in 0..3 {
        let again = runtime.load(&bytes).expect_err("still too big");
        assert_eq!(again.to_string(), first.to_string());
    }
    assert_eq!(runtime.stats().compiled, compiled, "nothing compiled again");
    // Other modules still load.
    runtime.load_file(guests::LOGREG.as_ref()).expect("logreg loads");
}
