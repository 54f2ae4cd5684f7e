//! Artifacts' bytes on a replica: content-addressed files under
//! `DATA/blobs`, named by their sha256. An upload comes in chunks, appended
//! to a staging file of its uploader, and is hashed and renamed into place
//! once whole; a replica that lacks a stored artifact copies it from a peer
//! (verified the same way). The Raft log carries only what an artifact is
//! (its sha256, size and owners): its bytes never pass through it, nor
//! through memory more than a chunk at a time.

use std::fs::{File, OpenOptions};
use std::io::Write;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::state::MAX_ARTIFACT_BYTES;

/// Largest chunk of an upload, in bytes.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;

/// Why bytes were not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A chunk that does not continue the upload where it stands.
    #[error("the upload of {sha256} holds {have} bytes; a chunk at offset {offset} does not continue it")]
    Gap { sha256: String, have: u64, offset: u64 },
    /// More bytes than an artifact may have.
    #[error("an artifact is at most {MAX_ARTIFACT_BYTES} bytes; this upload would make {size}")]
    TooLarge { size: u64 },
    /// The bytes are not what their name says.
    #[error("the uploaded bytes have sha256 {actual} and size {size}, not {sha256} and {expected}")]
    Mismatch { sha256: String, actual: String, size: u64, expected: u64 },
    /// Nothing was uploaded under that name.
    #[error("no upload of {0} is under way")]
    NoUpload(String),
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BlobError + 'a {
    move |source| BlobError::Io { action, path: path.to_path_buf(), source }
}

/// A replica's artifact files.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// The store in `dir` (made if missing); uploads left half done by an
    /// earlier run stay until resumed or replaced.
    pub fn open(dir: &Path) -> Result<Blobs, BlobError> {
        std::fs::create_dir_all(dir.join("staging")).map_err(io("creating", dir))?;
        Ok(Blobs { dir: dir.to_path_buf() })
    }

    /// Where artifact `sha256` is kept.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Its size, if this replica has it.
    pub fn size(&self, sha256: &str) -> Option<u64> {
        std::fs::metadata(self.path(sha256)).ok().map(|m| m.len())
    }

    fn staging(&self, sha256: &str, uploader: &str) -> PathBuf {
        // One staging file per uploader: two tenants uploading the same
        // bytes do not interleave.
        let who = hex::encode(&Sha256::digest(uploader.as_bytes())[..8]);
        self.dir.join("staging").join(format!("{sha256}.{who}"))
    }

    /// Appends `bytes` at `offset` to `uploader`'s upload of `sha256`;
    /// returns how many bytes it holds. A chunk sent again (the answer to
    /// it was lost) is accepted without writing it twice; offset 0 starts
    /// over.
    pub fn put_chunk(&self, sha256: &str, uploader: &str, offset: u64, bytes: &[u8]) -> Result<u64, BlobError> {
        let path = self.staging(sha256, uploader);
        let have = std::fs::metadata(&path).map_or(0, |m| m.len());
        let end = offset + bytes.len() as u64;
        if end > MAX_ARTIFACT_BYTES {
            return Err(BlobError::TooLarge { size: end });
        }
        if offset == 0 && have > 0 && end != have {
            std::fs::remove_file(&path).map_err(io("removing", &path))?;
            return self.put_chunk(sha256, uploader, offset, bytes);
        }
        if end <= have && offset < have {
            return Ok(have);
        }
        if offset != have {
            return Err(BlobError::Gap { sha256: sha256.into(), have, offset });
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(io("opening", &path))?;
        file.write_all(bytes).map_err(io("writing", &path))?;
        Ok(end)
    }

    /// Checks `uploader`'s upload of `sha256` (its hash and `size`) and
    /// moves it into place. An uploader that `owns` the artifact already
    /// need not send it again; anyone else must, even when the replica has
    /// the bytes: knowing a hash gives no one the bytes it names.
    pub fn commit(&self, sha256: &str, uploader: &str, size: u64, owns: bool) -> Result<(), BlobError> {
        let staged = self.staging(sha256, uploader);
        if owns && self.size(sha256) == Some(size) {
            let _ = std::fs::remove_file(&staged);
            return Ok(());
        }
        if !staged.exists() {
            return Err(BlobError::NoUpload(sha256.into()));
        }
        self.verify_into_place(&staged, sha256, size)
    }

    /// Where a copy of artifact `sha256` from a peer is written before
    /// [`Blobs::adopt`] takes it.
    pub fn incoming(&self, sha256: &str) -> PathBuf {
        self.staging(sha256, "peer")
    }

    /// Moves the copy at [`Blobs::incoming`] into place, if it was
    /// `hashed` (its sha256 and length, as written: [`wasmgrid_api::download`])
    /// to `sha256` and `size`; drops it otherwise.
    pub fn adopt(&self, sha256: &str, size: u64, hashed: (String, u64)) -> Result<(), BlobError> {
        self.place(&self.incoming(sha256), sha256, size, hashed)
    }

    fn verify_into_place(&self, staged: &Path, sha256: &str, size: u64) -> Result<(), BlobError> {
        let hashed = hash_file(staged)?;
        File::open(staged).and_then(|f| f.sync_all()).map_err(io("syncing", staged))?;
        self.place(staged, sha256, size, hashed)
    }

    fn place(&self, staged: &Path, sha256: &str, size: u64, (actual, len): (String, u64)) -> Result<(), BlobError> {
        if actual != sha256 || len != size {
            let _ = std::fs::remove_file(staged);
            return Err(BlobError::Mismatch { sha256: sha256.into(), actual, size: len, expected: size });
        }
        let dest = self.path(sha256);
        std::fs::rename(staged, &dest).map_err(io("moving", staged))?;
        Ok(())
    }

    /// Removes `sha256` (no longer stored).
    pub fn remove(&self, sha256: &str) {
        let _ = std::fs::remove_file(self.path(sha256));
    }
}

/// The sha256 (hex) and length of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64), BlobError> {
    wasmgrid_api::hash_file(path).map_err(io("reading", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn chunks_make_an_artifact_once_whole_and_verified() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = Blobs::open(dir.path()).expect("open");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let name = sha(&bytes);
        assert_eq!(blobs.put_chunk(&name, "t", 0, &bytes[..40_000]).expect("first"), 40_000);
        // The same chunk again (its answer was lost): not written twice.
        assert_eq!(blobs.put_chunk(&name, "t", 0, &bytes[..40_000]).expect("again"), 40_000);
        let gap = blobs.put_chunk(&name, "t", 50_000, &bytes[50_000..]).expect_err("a gap");
        assert!(gap.to_string().contains("holds 40000 bytes; a chunk at offset 50000"), "{gap}");
        assert!(blobs.size(&name).is_none(), "not stored before the commit");
        assert_eq!(blobs.put_chunk(&name, "t", 40_000, &bytes[40_000..]).expect("rest"), 100_000);
        blobs.commit(&name, "t", 100_000, false).expect("commit");
        assert_eq!(std::fs::read(blobs.path(&name)).expect("stored"), bytes);
        // Committed again by its owner: already there.
        blobs.commit(&name, "t", 100_000, true).expect("idempotent");
        // Another uploader must send the bytes, not just name them.
        assert!(matches!(blobs.commit(&name, "u", 100_000, false), Err(BlobError::NoUpload(_))));
    }

    #[test]
    fn bytes_that_are_not_their_name_are_refused_and_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = Blobs::open(dir.path()).expect("open");
        let name = sha(b"the real bytes");
        blobs.put_chunk(&name, "t", 0, b"other bytes").expect("chunk");
        let e = blobs.commit(&name, "t", 11, false).expect_err("wrong hash").to_string();
        assert!(e.contains(&format!("have sha256 {}", sha(b"other bytes"))), "{e}");
        assert!(blobs.size(&name).is_none());
        assert!(
            matches!(blobs.commit(&name, "t", 11, false), Err(BlobError::NoUpload(_))),
            "the staged bytes are gone"
        );
        let copy = |bytes: &[u8]| {
            std::fs::write(blobs.incoming(&name), bytes).expect("copy");
            hash_file(&blobs.incoming(&name)).expect("hash")
        };
        let longer = copy(b"the real bytes, and more");
        assert!(blobs.adopt(&name, 14, longer).is_err(), "a peer's copy longer than its size");
        assert!(!blobs.incoming(&name).exists(), "dropped");
        let real = copy(b"the real bytes");
        blobs.adopt(&name, 14, real).expect("a peer's copy");
        assert_eq!(std::fs::read(blobs.path(&name)).expect("stored"), b"the real bytes");
    }
}
