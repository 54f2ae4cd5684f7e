//! Init once, call fresh, at the runtime: `load_version` runs a component's
//! `init` once per (module, config), every instance starts from the memory
//! it left, the image is kept in the compiled cache, and a failing `init`
//! fails the load with its message.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use wasmgrid_runtime::bindings::{Batch, Column, Field};
use wasmgrid_runtime::{Error, Limits, Runtime, RuntimeConfig};
use wasmgrid_runtime::{Io, RuntimeStats};
use wasmgrid_test_artifacts as guests;

fn runtime(cache: Option<&Path>) -> Runtime {
    Runtime::new(base_config(cache)).expect("runtime starts")
}

fn base_config(cache: Option<&Path>) -> RuntimeConfig {
    RuntimeConfig { cache_dir: cache.map(Path::to_path_buf), instance_slots: 4, ..Default::default() }
}

fn config(pairs: &[(&str, &str)]) -> Arc<BTreeMap<String, String>> {
    Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn limits() -> Limits {
    Limits { memory: 32 << 20, ..Limits::default() }
}

fn bytes() -> Vec<u8> {
    std::fs::read(guests::INIT_STATE).expect("init-state component")
}

/// One call in a fresh instance: (start, calls, held_mib).
fn call(rt: &Runtime, config: &Arc<BTreeMap<String, String>>) -> (f64, f64, f64) {
    let f = rt.load_version(&bytes(), config, &limits()).expect("loads");
    assert!(f.initialized());
    let mut i = f.instantiate(&limits(), config.clone(), Io::default()).expect("instantiates");
    let rows = Batch { rows: 1, fields: vec![Field { name: "x".into(), values: Column::F64(vec![1.0]), valid: None }] };
    let out = i.score(&rows).expect("scores");
    assert!(i.logs().lines.iter().all(|l| l.message != "init ran"), "init ran in the call");
    let value = |name: &str| match out.fields.iter().find(|f| f.name == name).map(|f| &f.values) {
        Some(Column::F64(v)) => v[0],
        other => panic!("{name}: {other:?}"),
    };
    (value("start"), value("calls"), value("held_mib"))
}

#[test]
fn init_runs_once_per_version_and_every_instance_starts_from_its_image() {
    let rt = runtime(None);
    let seven = config(&[("start", "7"), ("init", "grow"), ("mib", "2")]);
    for _ in 0..5 {
        // The previous call's counter is never seen: each instance is fresh
        // from the image, which holds what `init` allocated.
        assert_eq!(call(&rt, &seven), (7.0, 1.0, 2.0));
    }
    assert_eq!(rt.stats().inits, 1);
    assert_eq!(call(&rt, &config(&[("start", "8")])), (8.0, 1.0, 0.0));
    assert_eq!(rt.stats().inits, 2);
    // Back to the first config: still loaded.
    assert_eq!(call(&rt, &seven), (7.0, 1.0, 2.0));
    assert_eq!(rt.stats().inits, 2);
    // `load_version` made one instrumented compile and one image per config.
    assert_eq!(rt.stats().compiled, 3);
}

#[test]
fn the_initialised_image_is_kept_in_the_compiled_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seven = config(&[("start", "7")]);
    let first = runtime(Some(dir.path()));
    assert_eq!(call(&first, &seven), (7.0, 1.0, 0.0));
    assert_eq!(counts(first.stats()), (2, 0, 0, 1));
    drop(first);
    let second = runtime(Some(dir.path()));
    assert_eq!(call(&second, &seven), (7.0, 1.0, 0.0));
    assert_eq!(counts(second.stats()), (0, 1, 0, 0));
}

/// (compiled, cache hits, cache entries rejected, inits).
fn counts(s: RuntimeStats) -> (u64, u64, u64, u64) {
    (s.compiled, s.cache_hits, s.cache_rejected, s.inits)
}

#[test]
fn past_the_code_cache_budget_the_least_recently_used_version_goes_and_comes_back_from_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Room for about one version.
    let config = RuntimeConfig { code_cache: 1, ..base_config(Some(dir.path())) };
    let rt = Runtime::new(config).expect("runtime starts");
    let (seven, eight) = (config_of("7"), config_of("8"));
    assert_eq!(call(&rt, &seven), (7.0, 1.0, 0.0));
    let one = rt.code_cache();
    assert!(one.bytes > 0);
    assert_eq!((one.loads, one.evictions), (1, 0));
    assert_eq!(call(&rt, &eight), (8.0, 1.0, 0.0));
    // The newest stays, however large; the other was evicted.
    let two = rt.code_cache();
    assert_eq!((two.loads, two.evictions), (2, 1));
    assert!(rt.loaded_version(&sha256(&bytes()), &seven).is_none());
    let compiled = rt.stats().compiled;
    // Seven again: loaded from the compiled cache, `init` not run again.
    assert_eq!(call(&rt, &seven), (7.0, 1.0, 0.0));
    let three = rt.code_cache();
    assert_eq!((three.loads, three.evictions), (3, 2));
    assert_eq!(counts(rt.stats()), (compiled, 1, 0, 2));

    // With room for both, nothing is evicted.
    let roomy = Runtime::new(base_config(Some(dir.path()))).expect("runtime starts");
    for _ in 0..3 {
        call(&roomy, &seven);
        call(&roomy, &eight);
    }
    assert_eq!((roomy.code_cache().loads, roomy.code_cache().evictions), (2, 0));
}

fn config_of(start: &str) -> Arc<BTreeMap<String, String>> {
    config(&[("start", start)])
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_failing_init_fails_the_load_with_its_message() {
    let rt = runtime(None);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("init", "error")], "init failed: function returned an error: the model in config `start` is not valid"),
        (&[("init", "trap")], "init panicked while loading the model"),
        (&[("init", "grow"), ("mib", "64")], "init failed: function exceeded its memory limit of 33554432 bytes"),
        (&[("init", "print")], "init returned with host resources still open"),
    ];
    for (pairs, expected) in cases {
        let error = rt.load_version(&bytes(), &config(pairs), &limits()).expect_err("init fails");
        assert!(matches!(error, Error::Init { .. } | Error::InitKeptResources), "{error:?}");
        assert!(error.to_string().contains(expected), "{pairs:?}: {error}");
        // The control plane's check says the same, keeping nothing.
        let checked = rt.check_init(&bytes(), &config(pairs), &Default::default(), &limits()).expect_err("check fails");
        assert!(checked.to_string().contains(expected), "{pairs:?}: {checked}");
    }
    assert!(rt.check_init(&bytes(), &config(&[("start", "3")]), &Default::default(), &limits()).is_ok());
}

#[test]
fn a_component_without_init_loads_as_it_is() {
    let rt = runtime(None);
    let http = std::fs::read(guests::HTTP_HELLO).expect("http-hello");
    let f = rt.load_version(&http, &config(&[]), &limits()).expect("loads");
    assert!(!f.initialized());
    assert_eq!(rt.stats().inits, 0);
    assert!(rt.check_init(&http, &config(&[]), &Default::default(), &limits()).is_ok());
}
