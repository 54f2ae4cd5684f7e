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

#[cfg(test)]
mod tests {
    use crate::count::Counts;

    #[test]
    fn counts_words_split_on_ascii_whitespace() {
        let mut c = Counts::default();
        c.add_text(b"a bb\ta\n\nlonger-than-eight-bytes a longer-than-eight-bytez\r\n");
        let mut got: Vec<(String, u64)> = c.iter().map(|(w, n)| (String::from_utf8_lossy(w).into(), n)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("a".into(), 3),
                ("bb".into(), 1),
                ("longer-than-eight-bytes".into(), 1),
                ("longer-than-eight-bytez".into(), 1)
            ]
        );
    }
}
