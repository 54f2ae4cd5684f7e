//! A mapper that misbehaves on purpose, chosen by config key `mode`:
//!
//! - `flood`: emits 1 MiB records without end;
//! - `pair-flood`: emits 1 MiB pairs without end;
//! - `empty-pair-flood`: emits empty pairs without end;
//! - `bytes-from-parquet`: asks for raw bytes (traps on Parquet input);
//! - `bad-pairs`: sends packed pairs whose ends point past the bytes given;
//! - `slow`: sleeps `sleep_ms` (config) milliseconds, then copies its input
//!   (a job that takes a while, to watch);
//! - anything else: copies its input batches to the output unchanged.

use wasmgrid_sdk::{Mapper, Record, config, input, output};

struct Hostile;

impl Mapper for Hostile {
    fn run(_partition: u32) -> Result<(), String> {
        match config::get("mode").as_deref() {
            Some("flood") => {
                let blob = "y".repeat(1 << 20);
                loop {
                    output::emit(Record::new().str("blob", &blob));
                }
            }
            Some("pair-flood") => {
                let blob = vec![7u8; 1 << 20];
                let mut i: u64 = 0;
                loop {
                    output::emit_pair(&i.to_le_bytes(), &blob);
                    i += 1;
                }
            }
            Some("empty-pair-flood") => loop {
                output::emit_pair(&[], &[]);
            },
            Some("bad-pairs") => {
                use wasmgrid_sdk::bindings::mapper::wasmgrid::function::output::emit_pairs;
                emit_pairs(b"key", &[1_000_000], b"value", &[5]);
                Ok(())
            }
            Some("slow") => {
                let ms = config::get("sleep_ms").and_then(|v| v.parse().ok()).unwrap_or(100);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                eprintln!("slept {ms} ms");
                for batch in input::batches() {
                    output::emit_batch(&batch);
                }
                Ok(())
            }
            Some("bytes-from-parquet") => {
                let _ = input::next_bytes(1024);
                Ok(())
            }
            _ => {
                for batch in input::batches() {
                    output::emit_batch(&batch);
                }
                Ok(())
            }
        }
    }
}

wasmgrid_sdk::export_mapper!(Hostile);
