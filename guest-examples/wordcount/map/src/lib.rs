//! Word count, map side: counts the words of its partition (split on ASCII
//! whitespace) and emits one `(word, count)` pair per distinct word, the
//! count as 8 little-endian bytes. This map-side combine means the shuffle
//! carries one pair per word per partition, not one per occurrence.

mod count;

use wasmgrid_sdk::{Mapper, input, output};

struct WordCount;

impl Mapper for WordCount {
    fn run(_partition: u32) -> Result<(), String> {
        let mut counts = count::Counts::default();
        for chunk in input::chunks() {
            counts.add_text(&chunk);
        }
        for (word, n) in counts.iter() {
            output::emit_pair(word, &n.to_le_bytes());
        }
        Ok(())
    }
}

wasmgrid_sdk::export_mapper!(WordCount);
