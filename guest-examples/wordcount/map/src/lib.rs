//! Word count, map side: counts the words of its partition (split on ASCII
//! whitespace) and emits one `(word, count)` pair per distinct word, so the
//! shuffle carries one pair per word per partition, not one per occurrence.

use std::collections::HashMap;
use wasmgrid_sdk::{Mapper, input, output};

struct WordCount;

impl Mapper for WordCount {
    fn run(_partition: u32) -> Result<(), String> {
        let mut counts: HashMap<Vec<u8>, u64, FxBuild> = HashMap::default();
        for chunk in input::chunks() {
            for word in chunk.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()) {
                match counts.get_mut(word) {
                    Some(n) => *n += 1,
                    None => {
                        counts.insert(word.to_vec(), 1);
                    }
                }
            }
        }
        for (word, n) in &counts {
            output::emit_pair(word, &n.to_le_bytes());
        }
        Ok(())
    }
}

wasmgrid_sdk::export_mapper!(WordCount);

/// A small multiplicative hasher (the "Fx" hash of rustc): word keys are short
/// and not attacker-chosen across partitions, so SipHash's cost buys nothing here.
#[derive(Default, Clone, Copy)]
struct FxBuild;

impl std::hash::BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
