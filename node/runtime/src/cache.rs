//! The on-disk cache of compiled components.
//!
//! An entry is `{sha256 of the component}-{engine fingerprint}.cwasm` plus a
//! `.sha256` file holding the artifact's own digest. The fingerprint changes
//! with wasmtime's version and every setting that changes generated code, so
//! a stale artifact is never found. The digest is checked before the
//! artifact is mapped: a corrupt or truncated file is rebuilt, not trusted.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::{Error, Result};

pub(crate) struct CompiledCache {
    dir: PathBuf,
    fingerprint: String,
}

pub(crate) enum Lookup {
    Hit(Component),
    Miss,
    Corrupt(String),
}

/// A short, stable name for everything that makes compiled code compatible.
pub(crate) fn fingerprint(engine: &Engine) -> String {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

impl CompiledCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating cache directory", dir, e))?;
        Ok(CompiledCache { dir: dir.to_path_buf(), fingerprint: fingerprint(engine) })
    }

    fn paths(&self, sha256: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{sha256}-{}", self.fingerprint);
        (self.dir.join(format!("{stem}.cwasm")), self.dir.join(format!("{stem}.sha256")))
    }

    pub(crate) fn get(&self, engine: &Engine, sha256: &str) -> Lookup {
        let (artifact, digest) = self.paths(sha256);
        let Ok(expected) = std::fs::read_to_string(&digest) else {
            return Lookup::Miss;
        };
        let bytes = match std::fs::read(&artifact) {
            Ok(b) => b,
            Err(_) => return Lookup::Corrupt("artifact missing".into()),
        };
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            return Lookup::Corrupt("checksum mismatch".into());
        }
        drop(bytes);
        match super::compile::deserialize_file(engine, &artifact) {
            Ok(c) => Lookup::Hit(c),
            Err(e) => Lookup::Corrupt(e.to_string()),
        }
    }

    /// Stores `artifact` (atomically: digest last) and maps it back in.
    pub(crate) fn put(&self, engine: &Engine, sha256: &str, artifact: &[u8]) -> Result<Component> {
        let (path, digest) = self.paths(sha256);
        // Temporary names of their own: two threads storing the same entry
        // at once each rename a whole file into place.
        let store = |dest: &Path, bytes: &[u8]| -> Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| Error::io("writing", dest, e))?;
            tmp.write_all(bytes).map_err(|e| Error::io("writing", dest, e))?;
            tmp.persist(dest).map_err(|e| Error::io("renaming", dest, e.error))?;
            Ok(())
        };
        store(&path, artifact)?;
        store(&digest, hex::encode(Sha256::digest(artifact)).as_bytes())?;
        super::compile::deserialize_file(engine, &path)
    }
}
