//! The compiled-component cache: a second runtime loads from disk without
//! compiling; a corrupted or truncated entry is detected and rebuilt.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use wasmgrid_runtime::bindings::{Batch, Column, Field};
use wasmgrid_runtime::{Io, RuntimeStats};
use wasmgrid_runtime::{Limits, Runtime, RuntimeConfig};
use wasmgrid_test_artifacts as guests;

fn runtime(cache: &Path) -> Runtime {
    Runtime::new(RuntimeConfig { cache_dir: Some(cache.to_path_buf()), instance_slots: 4, ..RuntimeConfig::default() })
        .expect("runtime starts")
}

/// Loads logreg and scores one row, proving the loaded code works.
fn score_once(rt: &Runtime) -> f64 {
    let f = rt.load_file(guests::LOGREG.as_ref()).expect("loads");
    let model = r#"{"features": ["x"], "weights": [2.0], "bias": -1.0}"#;
    let config: BTreeMap<String, String> = [("model".to_string(), model.to_string())].into();
    let mut i = f.instantiate(&Limits::default(), Arc::new(config), Io::default()).expect("instantiates");
    let rows = Batch { rows: 1, fields: vec![Field { name: "x".into(), values: Column::F64(vec![0.5]), valid: None }] };
    let out = i.score(&rows).expect("scores");
    match &out.fields[0].values {
        Column::F64(v) => v[0],
        other => panic!("score is f64, got {other:?}"),
    }
}

fn artifacts(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    v.sort();
    v
}

#[test]
fn second_runtime_loads_from_cache_without_compiling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = runtime(dir.path());
    assert_eq!(score_once(&first), 0.5);
    assert_eq!(first.stats(), RuntimeStats { compiled: 1, cache_hits: 0, cache_rejected: 0, inits: 0 });
    // Loading again in the same runtime reuses the linked function.
    score_once(&first);
    assert_eq!(first.stats().compiled, 1);
    drop(first);

    let second = runtime(dir.path());
    assert_eq!(score_once(&second), 0.5);
    assert_eq!(second.stats(), RuntimeStats { compiled: 0, cache_hits: 1, cache_rejected: 0, inits: 0 });
    assert_eq!(artifacts(dir.path()).len(), 1);
}

#[test]
fn corrupted_cache_entry_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    score_once(&runtime(dir.path()));
    let artifact = artifacts(dir.path()).pop().expect("one artifact");

    // Flip bytes in the middle of the compiled code.
    let mut bytes = std::fs::read(&artifact).expect("read");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&artifact, &bytes).expect("write");
    let rt = runtime(dir.path());
    assert_eq!(score_once(&rt), 0.5);
    assert_eq!(rt.stats(), RuntimeStats { compiled: 1, cache_hits: 0, cache_rejected: 1, inits: 0 });
    drop(rt);

    // Truncated: also rebuilt.
    let len = std::fs::metadata(&artifact).expect("meta").len();
    std::fs::OpenOptions::new().write(true).open(&artifact).expect("open").set_len(len / 3).expect("truncate");
    let rt = runtime(dir.path());
    assert_eq!(score_once(&rt), 0.5);
    assert_eq!(rt.stats(), RuntimeStats { compiled: 1, cache_hits: 0, cache_rejected: 1, inits: 0 });
    drop(rt);

    // And the rebuilt entry is good again.
    let rt = runtime(dir.path());
    score_once(&rt);
    assert_eq!(rt.stats(), RuntimeStats { compiled: 0, cache_hits: 1, cache_rejected: 0, inits: 0 });
}

#[test]
fn concurrent_loads_of_one_module_compile_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path());
    let loaded: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..4).map(|_| s.spawn(|| rt.load_file(guests::LOGREG.as_ref()).expect("loads"))).collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(rt.stats(), RuntimeStats { compiled: 1, cache_hits: 0, cache_rejected: 0, inits: 0 });
    assert!(loaded.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "every caller gets the same function");
    assert_eq!(rt.loaded_modules().len(), 1);
    assert!(rt.loaded(&rt.loaded_modules()[0]).is_some());
}
