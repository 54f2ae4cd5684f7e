//! The counting kernel of word count: words are runs of bytes that are not
//! ASCII whitespace (space, `\t`, `\n`, `\x0C`, `\r`). Kept free of wasmgrid
//! APIs so the same code can be measured natively.
//!
//! It works 8 bytes at a time: whitespace is found with word-at-a-time bit
//! tricks, and words are hashed and compared as `u64`s (stored keys are
//! zero-padded to a multiple of 8 bytes). Byte-at-a-time loops are slow in
//! WebAssembly twice over: more iterations, and each loop iteration carries
//! the runtime's interruption check. `memcmp` in wasi-libc is a byte loop too.

use hashbrown::HashTable;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Counts of distinct words.
#[derive(Default)]
pub struct Counts {
    /// (word zero-padded to a multiple of 8 bytes, word length, count)
    table: HashTable<(Box<[u64]>, u32, u64)>,
}

impl Counts {
    /// Adds every word of `text`.
    pub fn add_text(&mut self, text: &[u8]) {
        let mut i = 0;
        while i < text.len() {
            if is_space(text[i]) {
                i += 1;
                continue;
            }
            let end = word_end(text, i);
            self.add_at(text, i, end, 1);
            i = end;
        }
    }

    /// Adds `n` to `word`'s count.
    #[allow(dead_code)] // merging counts: used where the kernel is measured natively
    pub fn add(&mut self, word: &[u8], n: u64) {
        self.add_at(word, 0, word.len(), n);
    }

    fn add_at(&mut self, text: &[u8], start: usize, end: usize, n: u64) {
        let len = end - start;
        let hash = hash_at(text, start, end);
        let found =
            self.table.find_mut(hash, |(key, key_len, _)| *key_len as usize == len && same(key, text, start, end));
        match found {
            Some((_, _, count)) => *count += n,
            None => {
                let key: Box<[u64]> = (0..len.div_ceil(8)).map(|c| chunk_at(text, start + 8 * c, end)).collect();
                self.table.insert_unique(hash, (key, len as u32, n), |(key, len, _)| hash_key(key, *len));
            }
        }
    }

    /// Every (word, count).
    pub fn iter(&self) -> impl Iterator<Item = (Vec<u8>, u64)> + '_ {
        self.table.iter().map(|(key, len, n)| {
            let mut word: Vec<u8> = key.iter().flat_map(|w| w.to_le_bytes()).collect();
            word.truncate(*len as usize);
            (word, *n)
        })
    }

    /// Distinct words.
    #[allow(dead_code)] // used where the kernel is measured natively
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no word was counted.
    #[allow(dead_code)]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0C' | b'\r')
}

fn load(text: &[u8], at: usize) -> u64 {
    let c = &text[at..at + 8];
    u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
}

/// The bytes `at .. min(at + 8, end)` as a little-endian `u64`, zero-padded.
fn chunk_at(text: &[u8], at: usize, end: usize) -> u64 {
    let n = (end - at).min(8);
    if at + 8 <= text.len() {
        let w = load(text, at);
        if n == 8 { w } else { w & ((1u64 << (8 * n)) - 1) }
    } else {
        text[at..at + n].iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }
}

/// Where the word starting at `start` ends: the next whitespace byte or the end.
fn word_end(text: &[u8], mut i: usize) -> usize {
    while i + 8 <= text.len() {
        let w = load(text, i);
        // High bit set in each byte below 0x21 (the lowest flag is exact).
        let below = w.wrapping_sub(LO.wrapping_mul(0x21)) & !w & HI;
        if below == 0 {
            i += 8;
            continue;
        }
        let at = i + (below.trailing_zeros() / 8) as usize;
        if is_space(text[at]) {
            return at;
        }
        // A control character inside a word: keep scanning after it.
        i = at + 1;
    }
    while i < text.len() && !is_space(text[i]) {
        i += 1;
    }
    i
}

/// Whether the padded `key` holds the bytes `start..end` of `text`.
fn same(key: &[u64], text: &[u8], start: usize, end: usize) -> bool {
    key.iter().enumerate().all(|(c, &w)| w == chunk_at(text, start + 8 * c, end))
}

const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// The multiplicative "Fx" hash of rustc over the padded words: keys are
/// short, and SipHash's cost buys nothing in a map that lives for one partition.
fn hash_at(text: &[u8], start: usize, end: usize) -> u64 {
    let mut h = (end - start) as u64;
    let mut at = start;
    while at < end {
        h = (h.rotate_left(5) ^ chunk_at(text, at, end)).wrapping_mul(K);
        at += 8;
    }
    finish(h)
}

/// A product's low bits depend only on the input's low bits (a word's first
/// bytes); the table indexes by low bits, so bring the well-mixed high bits
/// down (as rustc-hash does).
fn finish(h: u64) -> u64 {
    h.rotate_left(26)
}

/// `hash_at` of a stored key: the same words, the same length.
fn hash_key(key: &[u64], len: u32) -> u64 {
    finish(key.iter().fold(u64::from(len), |h, &w| (h.rotate_left(5) ^ w).wrapping_mul(K)))
}
