//! How the control plane encodes what outlives a process or crosses between
//! replicas of different versions: Raft log entries (commands) and
//! snapshots. A version tag, then CBOR, a self-describing format: a field
//! added later (with a default) still reads what an older replica wrote, and
//! an older replica reading a newer entry ignores the fields it does not
//! know. Entries and snapshots written before the tag (bincode 1, which
//! knows no field names) are read by each caller's legacy decoder, with the
//! types as they were: a field added to a type such entries hold needs its
//! legacy shape kept (as `state::Image` keeps its older ones) while logs
//! and snapshots of the releases before the tag may still be read;
//! `tests/upgrade.rs` fails otherwise.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The tag and the encoding's version (the last byte). As a bincode prefix
/// it would be an enum variant past 16 million or a log index past 10^16:
/// nothing written before could start with it.
const TAG: [u8; 8] = *b"wgcbor\x00\x01";

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("encoding: {0}")]
    Encode(String),
    /// The bytes are not a value of the expected type.
    #[error("decoding: {0}")]
    Decode(String),
    /// A newer wasmgrid wrote them.
    #[error("written in encoding version {0} by a newer wasmgrid; this one reads version {current}", current = TAG[7])]
    Newer(u8),
}

/// `value`, tagged.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = TAG.to_vec();
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// What [`encode`] wrote; untagged bytes (written before the tag) go to
/// `legacy`.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    legacy: impl FnOnce(&[u8]) -> Result<T, CodecError>,
) -> Result<T, CodecError> {
    match bytes.split_first_chunk::<8>() {
        Some((tag, body)) if tag == &TAG => ciborium::from_reader(body).map_err(|e| CodecError::Decode(e.to_string())),
        Some((tag, _)) if tag[..7] == TAG[..7] => Err(CodecError::Newer(tag[7])),
        _ => legacy(bytes),
    }
}

/// Bincode 1, as commands and snapshots were written before the tag.
pub fn legacy_bincode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::deserialize(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Before {
        name: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct After {
        name: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        #[serde(default)]
        added: u32,
    }

    #[test]
    fn fields_added_later_read_old_data_and_old_readers_skip_them() {
        let old = encode(&Before { name: "f".into(), bytes: vec![1, 2, 3] }).expect("encode");
        let read: After = decode(&old, legacy_bincode).expect("newer reads older");
        assert_eq!(read, After { name: "f".into(), bytes: vec![1, 2, 3], added: 0 });
        let new = encode(&After { name: "g".into(), bytes: vec![], added: 7 }).expect("encode");
        let read: Before = decode(&new, legacy_bincode).expect("older reads newer");
        assert_eq!(read.name, "g");
        // Bytes travel as one byte string, not a list of numbers.
        let big = encode(&Before { name: String::new(), bytes: vec![200; 10_000] }).expect("encode");
        assert!(big.len() < 10_100, "{}", big.len());
    }

    #[test]
    fn untagged_bytes_are_legacy_and_a_newer_version_is_refused_by_name() {
        let legacy = bincode::serialize(&Before { name: "old".into(), bytes: vec![9] }).expect("bincode");
        let read: Before = decode(&legacy, legacy_bincode).expect("legacy");
        assert_eq!(read.name, "old");
        let mut newer = encode(&Before { name: "x".into(), bytes: vec![] }).expect("encode");
        newer[7] = 2;
        let refused = decode::<Before>(&newer, legacy_bincode).expect_err("newer");
        assert!(refused.to_string().contains("version 2 by a newer wasmgrid"), "{refused}");
    }
}
