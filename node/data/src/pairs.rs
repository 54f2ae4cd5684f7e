//! Key/value pairs on their way from mappers to reducers.
//!
//! [`Pairs`] keeps a task's pairs packed in two byte arenas (no allocation
//! per pair); [`Pairs::split`] divides them among reduce partitions by key
//! hash; [`group`] gathers one reduce partition's pairs by key, borrowing
//! the bytes, in sorted key order.

use std::hash::Hasher;

/// Pairs that are packed wrongly: what is wrong with them.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PairsError(String);

/// Packed pairs: pair `i` is `keys[key_ends[i-1]..key_ends[i]]` and likewise for values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pairs {
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    values: Vec<u8>,
    value_ends: Vec<usize>,
}

impl Pairs {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.key_ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.key_ends.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.keys.len() + self.values.len()
    }

    /// Adds one pair.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        self.keys.extend_from_slice(key);
        self.key_ends.push(self.keys.len());
        self.values.extend_from_slice(value);
        self.value_ends.push(self.values.len());
    }

    /// Adds pairs packed as in `output.emit-pairs`; checks the packing first
    /// and adds nothing if it is malformed.
    pub fn extend_packed(
        &mut self,
        keys: &[u8],
        key_ends: &[u32],
        values: &[u8],
        value_ends: &[u32],
    ) -> Result<(), PairsError> {
        if key_ends.len() != value_ends.len() {
            return Err(PairsError(format!("{} key ends but {} value ends", key_ends.len(), value_ends.len())));
        }
        check_ends(key_ends, keys.len(), "key")?;
        check_ends(value_ends, values.len(), "value")?;
        let (kbase, vbase) = (self.keys.len(), self.values.len());
        self.keys.extend_from_slice(keys);
        self.values.extend_from_slice(values);
        self.key_ends.extend(key_ends.iter().map(|&e| kbase + e as usize));
        self.value_ends.extend(value_ends.iter().map(|&e| vbase + e as usize));
        Ok(())
    }

    /// Adds `other`'s pairs after these.
    pub fn append(&mut self, other: &Pairs) {
        let (kbase, vbase) = (self.keys.len(), self.values.len());
        self.keys.extend_from_slice(&other.keys);
        self.values.extend_from_slice(&other.values);
        self.key_ends.extend(other.key_ends.iter().map(|&e| kbase + e));
        self.value_ends.extend(other.value_ends.iter().map(|&e| vbase + e));
    }

    /// Pair `i`.
    pub fn get(&self, i: usize) -> (&[u8], &[u8]) {
        let k0 = if i == 0 { 0 } else { self.key_ends[i - 1] };
        let v0 = if i == 0 { 0 } else { self.value_ends[i - 1] };
        (&self.keys[k0..self.key_ends[i]], &self.values[v0..self.value_ends[i]])
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Divides the pairs among `partitions` reduce partitions by key hash.
    pub fn split(self, partitions: usize) -> Vec<Pairs> {
        if partitions <= 1 {
            return vec![self];
        }
        let mut out: Vec<Pairs> = (0..partitions).map(|_| Pairs::default()).collect();
        for (k, v) in self.iter() {
            out[partition_of(k, partitions)].push(k, v);
        }
        out
    }
}

impl Pairs {
    /// The pairs as bytes: per pair, the key's length and the value's length
    /// (u32, little endian), then the key and the value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes() + 8 * self.len());
        for (k, v) in self.iter() {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        out
    }

    /// Reads what [`Pairs::encode`] wrote; refuses truncated or malformed bytes.
    pub fn decode(mut bytes: &[u8]) -> Result<Pairs, PairsError> {
        let mut pairs = Pairs::default();
        while !bytes.is_empty() {
            let len = |b: &[u8]| -> Option<usize> { Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize) };
            let (Some(k), Some(v)) = (len(bytes), bytes.get(4..).and_then(len)) else {
                return Err(PairsError("truncated pair header".into()));
            };
            let body = bytes.get(8..).ok_or_else(|| PairsError("truncated pair header".into()))?;
            if body.len() < k + v {
                return Err(PairsError(format!("a pair says {} bytes, but {} are left", k + v, body.len())));
            }
            pairs.push(&body[..k], &body[k..k + v]);
            bytes = &body[k + v..];
        }
        Ok(pairs)
    }
}

fn check_ends(ends: &[u32], len: usize, what: &str) -> Result<(), PairsError> {
    let mut prev = 0u32;
    for (i, &e) in ends.iter().enumerate() {
        if e < prev || e as usize > len {
            return Err(PairsError(format!("{what} end {i} is {e}, out of order or past the {len} bytes given")));
        }
        prev = e;
    }
    match ends.last() {
        Some(&last) if last as usize != len => Err(PairsError(format!("{what} ends stop at {last} of {len} bytes"))),
        None if len != 0 => Err(PairsError(format!("{len} {what} bytes but no pairs"))),
        _ => Ok(()),
    }
}

/// Which reduce partition `key` belongs to: SipHash-1-3 with both keys 0
/// over the key's bytes, modulo the partition count. Fixed by this
/// definition (not by the standard library's unspecified default hasher),
/// so a key lands in the same partition on every node, whatever compiler
/// built it; the test vector below holds it to that.
pub fn partition_of(key: &[u8], partitions: usize) -> usize {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    h.write(key);
    (h.finish() % partitions.max(1) as u64) as usize
}

/// One key and every value emitted for it.
pub type Group<'a> = (&'a [u8], Vec<&'a [u8]>);

/// Gathers the pairs of every task by key, keys in sorted byte order, values
/// in task order.
pub fn group(tasks: &[Pairs]) -> Vec<Group<'_>> {
    let mut index: hashbrown::HashMap<&[u8], usize> = hashbrown::HashMap::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    for task in tasks {
        for (k, v) in task.iter() {
            match index.get(k) {
                Some(&g) => groups[g].1.push(v),
                None => {
                    index.insert(k, groups.len());
                    groups.push((k, vec![v]));
                }
            }
        }
    }
    groups.sort_unstable_by(|a, b| a.0.cmp(b.0));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_pairs_round_trip_and_bad_packing_is_refused() {
        let mut p = Pairs::default();
        p.push(b"a", b"1");
        p.extend_packed(b"bbc", &[2, 3], b"xyz", &[1, 3]).expect("well packed");
        assert_eq!(p.iter().collect::<Vec<_>>(), [(&b"a"[..], &b"1"[..]), (b"bb", b"x"), (b"c", b"yz")]);
        assert!(p.extend_packed(b"ab", &[1], b"x", &[1, 1]).is_err(), "count mismatch");
        assert!(p.extend_packed(b"ab", &[3], b"x", &[1]).is_err(), "past the end");
        assert!(p.extend_packed(b"ab", &[2, 1], b"xy", &[1, 2]).is_err(), "out of order");
        assert!(p.extend_packed(b"ab", &[1], b"x", &[1]).is_err(), "bytes left over");
        assert_eq!(p.len(), 3, "a refused batch adds nothing");
        let bytes = p.encode();
        assert_eq!(Pairs::decode(&bytes).expect("decodes"), p);
        assert!(Pairs::decode(&bytes[..bytes.len() - 1]).is_err(), "truncated");
        assert!(Pairs::decode(&bytes[..5]).is_err(), "truncated header");
    }

    #[test]
    fn split_and_group_keep_every_pair_once() {
        let mut p = Pairs::default();
        for i in 0..1000u32 {
            p.push(format!("k{}", i % 37).as_bytes(), &i.to_le_bytes());
        }
        let parts = p.split(4);
        let total: usize = parts.iter().map(Pairs::len).sum();
        assert_eq!(total, 1000);
        let mut keys = 0;
        for (i, part) in parts.iter().enumerate() {
            let groups = group(std::slice::from_ref(part));
            assert!(groups.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
            for (k, vs) in &groups {
                assert_eq!(partition_of(k, 4), i);
                let n: u32 = String::from_utf8_lossy(&k[1..]).parse().expect("number");
                assert_eq!(vs.len(), (0..1000).filter(|j| j % 37 == n).count());
            }
            keys += groups.len();
        }
        assert_eq!(keys, 37);
    }
}

#[cfg(test)]
mod shuffle_hash {
    use super::*;

    /// The shuffle's hash, fixed: a node built by any compiler sends a key
    /// to the same reduce partition. (These are also what the standard
    /// library's default hasher gave when it was used here, so jobs
    /// written before keep their partitions.)
    #[test]
    fn the_partition_of_a_key_is_fixed_by_its_definition() {
        let vector: [(&[u8], u64, usize); 4] = [
            (b"", 0xd1fb_a762_150c_532c, 1),
            (b"a", 0x4074_48d2_b89b_1813, 5),
            (b"word", 0xac35_1257_2491_82a8, 4),
            (b"The quick brown fox", 0x975e_4107_1456_8333, 6),
        ];
        for (key, hash, partition) in vector {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
            h.write(key);
            assert_eq!(h.finish(), hash, "{key:?}");
            assert_eq!(partition_of(key, 7), partition, "{key:?}");
            assert_eq!(partition_of(key, 7) as u64, hash % 7);
        }
        assert_eq!(partition_of(b"any", 0), 0, "no partitions is one");
    }
}
