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
            output::emit_pair(&word, &n.to_le_bytes());
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
        c.add_text(
            b"a bb\ta\n\nlonger-than-eight-bytes a longer-than-eight-bytez\r\nctl\x01char\x0bx\x0c  abcdefgh abcdefgh",
        );
        c.add(b"bb", 2);
        let mut got: Vec<(String, u64)> = c.iter().map(|(w, n)| (String::from_utf8_lossy(&w).into(), n)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("a".into(), 3),
                ("abcdefgh".into(), 2),
                ("bb".into(), 3),
                ("ctl\u{1}char\u{b}x".into(), 1),
                ("longer-than-eight-bytes".into(), 1),
                ("longer-than-eight-bytez".into(), 1)
            ]
        );
    }

    #[test]
    fn matches_a_naive_count_on_random_bytes() {
        let alphabet = b"ab \t\n\r\x0c\x0b\x00\x01xyzXYZ0123456789-";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..200 {
            let len = (round * 7) % 300;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            let mut c = Counts::default();
            c.add_text(&text);
            let mut got: Vec<(Vec<u8>, u64)> = c.iter().collect();
            got.sort();
            let mut naive = std::collections::BTreeMap::<Vec<u8>, u64>::new();
            for w in text.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()) {
                *naive.entry(w.to_vec()).or_default() += 1;
            }
            let want: Vec<(Vec<u8>, u64)> = naive.into_iter().collect();
            assert_eq!(got, want, "round {round}: {:?}", String::from_utf8_lossy(&text));
        }
    }
}
