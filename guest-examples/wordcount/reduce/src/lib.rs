//! Word count, reduce side: sums the little-endian `u64` counts emitted for a
//! word and writes the row `{"word": .., "count": ..}`.

use wasmgrid_sdk::{Record, Reducer};

struct Sum;

impl Reducer for Sum {
    fn reduce(key: Vec<u8>, values: Vec<Vec<u8>>) -> Result<Record, String> {
        let mut total: u64 = 0;
        for v in &values {
            let bytes: [u8; 8] =
                v.as_slice().try_into().map_err(|_| format!("count for a word must be 8 bytes, got {}", v.len()))?;
            total += u64::from_le_bytes(bytes);
        }
        let word = String::from_utf8_lossy(&key);
        let count = i64::try_from(total).map_err(|_| format!("count for `{word}` overflows"))?;
        Ok(Record::new().str("word", &word).int("count", count))
    }
}

wasmgrid_sdk::export_reducer!(Sum);
