//! The counting kernel of word count: words are runs of non-ASCII-whitespace
//! bytes. Kept free of wasmgrid APIs so the same code can be measured natively.
//!
//! Words are short, so the table compares them 8 bytes at a time inline
//! rather than calling `memcmp`, which in WebAssembly is a byte loop in libc.

use hashbrown::HashTable;

/// Counts of distinct words.
#[derive(Default)]
pub struct Counts {
    table: HashTable<(Box<[u8]>, u64)>,
}

impl Counts {
    /// Adds every word of `text`.
    pub fn add_text(&mut self, text: &[u8]) {
        for word in text.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()) {
            self.add(word, 1);
        }
    }

    /// Adds `n` to `word`'s count.
    pub fn add(&mut self, word: &[u8], n: u64) {
        let hash = fx(word);
        match self.table.find_mut(hash, |(w, _)| same(w, word)) {
            Some((_, count)) => *count += n,
            None => {
                self.table.insert_unique(hash, (word.into(), n), |(w, _)| fx(w));
            }
        }
    }

    /// Every (word, count).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.table.iter().map(|(w, n)| (&**w, *n))
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

fn load(c: &[u8]) -> u64 {
    u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
}

/// Byte equality: 8 bytes at a time, then the tail byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        if load(x) != load(y) {
            return false;
        }
    }
    ca.remainder().iter().zip(cb.remainder()).all(|(x, y)| x == y)
}

/// The multiplicative "Fx" hash of rustc: word keys are short, and SipHash's
/// cost buys nothing in a map that lives for one partition.
fn fx(bytes: &[u8]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h: u64 = 0;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h.rotate_left(5) ^ load(c)).wrapping_mul(K);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}
