//! The batch data decoders: the first byte picks the format (CSV, JSON
//! lines, Parquet, text), the rest is a file, planned into small partitions
//! (cut at record boundaries) and read to the end. Every input must be read
//! or refused with an error: never a panic, a hang or unbounded memory.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wasmgrid_data::{PartitionReader, plan};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // libfuzzer-sys aborts on every panic, even one the decoders catch
        // and turn into an error (a library asserting on a malformed file);
        // the default hook only prints it. A panic that escapes the
        // decoders still aborts: the fuzz target's own wrapper sees it.
        let _ = std::panic::take_hook();
        let dir = std::env::temp_dir().join(format!("wasmgrid-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    let extension = ["csv", "jsonl", "parquet", "txt"][usize::from(which % 4)];
    let path = dir().join(format!("input.{extension}"));
    std::fs::write(&path, file).expect("write the input");
    let Ok(partitions) = plan(&path.display().to_string(), None, 64, &Default::default()) else {
        return;
    };
    for partition in partitions {
        let Ok(mut reader) = PartitionReader::open(partition) else {
            continue;
        };
        while let Ok(Some(batch)) = reader.next_batch(128) {
            assert!(batch.num_rows() <= 128, "a batch over the row limit");
        }
    }
});
