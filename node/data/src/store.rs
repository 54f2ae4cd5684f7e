//! Where job data lives: local (or shared) paths, `file://` URIs, S3 and
//! S3-compatible object stores (`s3://bucket/key`, through `object_store`)
//! and, for inputs, `http(s)://` URLs.
//!
//! Inputs in an object store are streamed into a local cache (keyed by URI,
//! size and ETag), then planned and read like local files; `http(s)://`
//! inputs are fetched under the [egress policy](crate::egress) into a
//! private directory for each use. Both stop at the policy's size limit. Outputs are
//! written locally by each attempt and uploaded under the job's work prefix;
//! the commit copies the winners to their final keys.
//!
//! S3 settings come from the standard environment: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` (or
//! `AWS_ENDPOINT`) for an S3-compatible server, and `AWS_ALLOW_HTTP=true`
//! for one without TLS.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::egress::Egress;

/// A place for data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A local or shared file system path.
    Local(PathBuf),
    /// An object (or prefix) in an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key, without a leading `/`.
        key: String,
    },
    /// A URL to read.
    Http(String),
}

impl Place {
    /// Reads a path or URI.
    pub fn parse(s: &str) -> Result<Place, StoreError> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::from(format!("`{s}` names no bucket (s3://BUCKET/KEY)")));
            }
            return Ok(Place::S3 { bucket: bucket.into(), key: key.trim_start_matches('/').into() });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Place::Http(s.into()));
        }
        if let Some(rest) = s.strip_prefix("file://") {
            return Ok(Place::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(StoreError::from(format!(
                "`{s}`: unsupported scheme `{scheme}://` (use a path, file://, s3:// or http(s)://)"
            )));
        }
        Ok(Place::Local(PathBuf::from(s)))
    }

    /// Whether the data is in an object store (or behind a URL).
    pub fn is_remote(&self) -> bool {
        !matches!(self, Place::Local(_))
    }

    /// `self/relative`.
    pub fn join(&self, relative: &str) -> Place {
        match self {
            Place::Local(p) => Place::Local(p.join(relative)),
            Place::S3 { bucket, key } => {
                let key = if key.is_empty() {
                    relative.to_string()
                } else {
                    format!("{}/{relative}", key.trim_end_matches('/'))
                };
                Place::S3 { bucket: bucket.clone(), key }
            }
            Place::Http(u) => Place::Http(format!("{}/{relative}", u.trim_end_matches('/'))),
        }
    }

    /// As a URI (or path).
    pub fn uri(&self) -> String {
        match self {
            Place::Local(p) => p.display().to_string(),
            Place::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
            Place::Http(u) => u.clone(),
        }
    }
}

/// What went wrong reaching a place; the message names the object and the
/// cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

impl From<String> for StoreError {
    fn from(message: String) -> Self {
        StoreError(message)
    }
}

impl From<&str> for StoreError {
    fn from(message: &str) -> Self {
        StoreError(message.to_string())
    }
}

/// Runs `f` to completion from synchronous code (a blocking thread), on a
/// small runtime of its own that the object-store clients live on.
fn block_on<F>(f: F) -> Result<F::Output, StoreError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    static IO: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    let rt = IO
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("wasmgrid-io")
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
        .ok_or("cannot start the object-store I/O runtime")?;
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| "an object-store request stopped".into())
}

/// The client of a bucket, built once from the environment.
fn bucket(name: &str) -> Result<Arc<AmazonS3>, StoreError> {
    static CLIENTS: Mutex<Option<HashMap<String, Arc<AmazonS3>>>> = Mutex::new(None);
    let mut clients = CLIENTS.lock().map_err(|_| "the S3 client cache was poisoned".to_string())?;
    let clients = clients.get_or_insert_with(HashMap::new);
    if let Some(c) = clients.get(name) {
        return Ok(c.clone());
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(name);
    if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
        builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
    }
    let client = Arc::new(builder.build().map_err(|e| StoreError(format!("S3 bucket `{name}`: {e}")))?);
    clients.insert(name.to_string(), client.clone());
    Ok(client)
}

fn s3_error(what: &str, place: &Place, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what} {}: {e}", place.uri()))
}

/// The objects an input names: `s3://bucket/key` (one object),
/// `s3://bucket/prefix/` (every object under it) or a glob
/// (`s3://bucket/logs/*.csv`).
pub fn list_inputs(input: &Place) -> Result<Vec<Place>, StoreError> {
    let Place::S3 { bucket: name, key } = input else {
        return Ok(vec![input.clone()]);
    };
    let client = bucket(name)?;
    let glob_at = key.find(['*', '?', '[']);
    let prefix = match glob_at {
        Some(at) => key[..at].rsplit_once('/').map_or("", |(p, _)| p).to_string(),
        None => key.trim_end_matches('/').to_string(),
    };
    let pattern = match glob_at {
        Some(_) => Some(glob::Pattern::new(key).map_err(|e| StoreError(format!("bad glob in {}: {e}", input.uri())))?),
        None => None,
    };
    let listing = {
        let prefix = (!prefix.is_empty()).then(|| Key::from(prefix.as_str()));
        let uri = input.uri();
        block_on(async move {
            let mut stream = client.list(prefix.as_ref());
            let mut keys = Vec::new();
            while let Some(meta) = stream.next().await {
                keys.push(meta.map_err(|e| StoreError(format!("listing {uri}: {e}")))?.location.to_string());
            }
            Ok::<_, StoreError>(keys)
        })
    };
    let objects = listing??;
    let mut keys: Vec<String> = objects
        .into_iter()
        .filter(|k| match &pattern {
            Some(p) => p.matches(k),
            // One object, or everything under a "directory".
            None => *k == prefix || k.starts_with(&format!("{prefix}/")) || prefix.is_empty(),
        })
        .filter(|k| {
            let name = k.rsplit('/').next().unwrap_or(k);
            !name.starts_with('.') && !name.starts_with('_')
        })
        .collect();
    keys.sort();
    if keys.is_empty() {
        return Err(StoreError::from(format!("no objects match {}", input.uri())));
    }
    Ok(keys.into_iter().map(|key| Place::S3 { bucket: name.clone(), key }).collect())
}

/// What the store fetches, and where it keeps fetched inputs.
struct Settings {
    egress: Egress,
    inputs: PathBuf,
    /// Bytes of cached objects kept; the least recently used go first.
    cache_budget: u64,
}

/// The default size of the object cache.
pub const DEFAULT_CACHE_BUDGET: u64 = 20 << 30;

fn settings() -> Arc<Settings> {
    SETTINGS.read().map(|s| s.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
}

static SETTINGS: std::sync::LazyLock<RwLock<Arc<Settings>>> = std::sync::LazyLock::new(|| {
    // Until a process says otherwise: public addresses only, and a
    // directory of this user's own.
    let user = || -> Option<u32> { Some(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").ok()?)) };
    let inputs = std::env::temp_dir().join(format!("wasmgrid-inputs-{}", user().unwrap_or(0)));
    RwLock::new(Arc::new(Settings { egress: Egress::default(), inputs, cache_budget: DEFAULT_CACHE_BUDGET }))
});

/// Sets the egress policy for `http(s)://` inputs, the directory fetched
/// inputs are kept in (made readable by this user only) and how many bytes
/// of cached objects it keeps.
pub fn install(egress: Egress, inputs: PathBuf, cache_budget: u64) {
    let settings = Arc::new(Settings { egress, inputs, cache_budget });
    match SETTINGS.write() {
        Ok(mut s) => *s = settings,
        Err(poisoned) => *poisoned.into_inner() = settings,
    }
}

/// The egress policy in force.
pub fn egress() -> Egress {
    settings().egress.clone()
}

/// A directory only this user can enter.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A local copy of an input: the file itself, a cached copy of an object
/// (kept, keyed by its URI, size and ETag), or a fetched URL (removed when
/// this is dropped).
#[derive(Debug)]
pub struct LocalCopy {
    path: PathBuf,
    _fetched: Option<tempfile::TempDir>,
    /// A cached entry, kept from eviction while this copy is in use.
    _held: Option<Held>,
}

/// Cache entries in use in this process, by directory: never evicted.
static IN_USE: Mutex<Option<HashMap<PathBuf, usize>>> = Mutex::new(None);

/// A cache entry marked in use until dropped.
#[derive(Debug)]
struct Held(PathBuf);

impl Held {
    fn new(dir: &Path) -> Held {
        let mut in_use = IN_USE.lock().unwrap_or_else(|p| p.into_inner());
        *in_use.get_or_insert_with(HashMap::new).entry(dir.to_path_buf()).or_default() += 1;
        Held(dir.to_path_buf())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut in_use = IN_USE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = in_use.as_mut()
            && let Some(n) = map.get_mut(&self.0)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.0);
            }
        }
    }
}

/// Removes the least recently used cache entries under `inputs` until they
/// hold at most `budget` bytes, sparing those in use. Best effort.
fn evict(inputs: &Path, budget: u64) {
    let Ok(entries) = std::fs::read_dir(inputs) else { return };
    // (last used, bytes, directory) of each cached object.
    let mut cached: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("fetch-"))
        .filter_map(|e| {
            let files = std::fs::read_dir(e.path()).ok()?;
            let (mut used, mut bytes) = (std::time::UNIX_EPOCH, 0);
            for meta in files.flatten().filter_map(|f| f.metadata().ok()) {
                bytes += meta.len();
                used = used.max(meta.modified().unwrap_or(std::time::UNIX_EPOCH));
            }
            Some((used, bytes, e.path()))
        })
        .collect();
    let mut total: u64 = cached.iter().map(|c| c.1).sum();
    cached.sort();
    let in_use = IN_USE.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
    for (_, bytes, dir) in cached {
        if total <= budget {
            break;
        }
        if !in_use.contains_key(&dir) && std::fs::remove_dir_all(&dir).is_ok() {
            total -= bytes;
        }
    }
}

impl LocalCopy {
    /// Where the copy is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A local copy of `place`, fetched within the installed limits and egress
/// policy. Errors name `place`, never a path on this machine.
pub fn local_copy(place: &Place) -> Result<LocalCopy, StoreError> {
    let settings = settings();
    let uri = place.uri();
    let stored = |_| StoreError(format!("{uri}: the node could not store a copy"));
    let name = uri.rsplit('/').next().filter(|n| !n.is_empty() && *n != "." && *n != "..").unwrap_or("object");
    let name = name.split(['?', '#']).next().filter(|n| !n.is_empty()).unwrap_or("object").to_string();
    match place {
        Place::Local(p) => Ok(LocalCopy { path: p.clone(), _fetched: None, _held: None }),
        Place::S3 { bucket: bucket_name, key } => {
            let client = bucket(bucket_name)?;
            let (head, k) = (client.clone(), Key::from(key.as_str()));
            let meta = block_on(async move { head.head(&k).await })?.map_err(|e| s3_error("reading", place, e))?;
            let limit = settings.egress.limits.max_bytes;
            if meta.size > limit {
                return Err(StoreError::from(format!("{uri}: larger than the limit of {limit} bytes for one input")));
            }
            let tag = format!("{}:{}", meta.size, meta.e_tag.unwrap_or_default());
            let digest = hex::encode(Sha256::digest(format!("{uri}\n{tag}").as_bytes()));
            let dir = settings.inputs.join(&digest[..24]);
            let path = dir.join(&name);
            let held = Held::new(&dir);
            // A hit counts as a use: its time moves it to the back of the
            // eviction order.
            if let Ok(file) = std::fs::File::options().append(true).open(&path) {
                let _ = file.set_modified(std::time::SystemTime::now());
                return Ok(LocalCopy { path, _fetched: None, _held: Some(held) });
            }
            private_dir(&dir).map_err(stored)?;
            let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(stored)?;
            let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(stored)?);
            let (k, u) = (Key::from(key.as_str()), uri.clone());
            block_on(async move {
                let mut stream =
                    client.get(&k).await.map_err(|e| StoreError(format!("reading {u}: {e}")))?.into_stream();
                let mut written = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| StoreError(format!("reading {u}: {e}")))?;
                    written += chunk.len() as u64;
                    if written > limit {
                        return Err(StoreError::from(format!(
                            "{u}: larger than the limit of {limit} bytes for one input"
                        )));
                    }
                    file.write_all(&chunk)
                        .await
                        .map_err(|_| StoreError(format!("{u}: the node could not store a copy")))?;
                }
                file.flush().await.map_err(|_| StoreError(format!("{u}: the node could not store a copy")))
            })??;
            tmp.persist(&path).map_err(|e| stored(e.error))?;
            evict(&settings.inputs, settings.cache_budget);
            Ok(LocalCopy { path, _fetched: None, _held: Some(held) })
        }
        Place::Http(url) => {
            // A URL is fetched again for every use, into a directory of its
            // own that goes when the copy is dropped.
            private_dir(&settings.inputs).map_err(stored)?;
            let dir = tempfile::Builder::new().prefix("fetch-").tempdir_in(&settings.inputs).map_err(stored)?;
            let path = dir.path().join(&name);
            let file = std::fs::File::create_new(&path).map_err(stored)?;
            let mut file = tokio::fs::File::from_std(file);
            let url = url.clone();
            let egress = settings.clone();
            block_on(async move { egress.egress.fetch_to(&url, &mut file).await })?.map_err(|e| e.to_string())?;
            Ok(LocalCopy { path, _fetched: Some(dir), _held: None })
        }
    }
}

/// An object's bytes (or a local file's).
pub fn get(place: &Place) -> Result<Vec<u8>, StoreError> {
    match place {
        Place::Local(p) => std::fs::read(p).map_err(|e| StoreError(format!("reading {}: {e}", p.display()))),
        Place::S3 { bucket: name, key } => {
            let client = bucket(name)?;
            let (k, uri) = (Key::from(key.as_str()), place.uri());
            block_on(async move {
                let r = client.get(&k).await.map_err(|e| StoreError(format!("reading {uri}: {e}")))?;
                r.bytes().await.map(|b| b.to_vec()).map_err(|e| StoreError(format!("reading {uri}: {e}")))
            })?
        }
        Place::Http(_) => {
            std::fs::read(local_copy(place)?.path()).map_err(|e| StoreError(format!("reading {}: {e}", place.uri())))
        }
    }
}

/// Writes `bytes` to `place` whole.
pub fn put(place: &Place, bytes: Vec<u8>) -> Result<(), StoreError> {
    match place {
        Place::Local(p) => {
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, p))
                .map_err(|e| StoreError(format!("writing {}: {e}", p.display())))
        }
        Place::S3 { bucket: name, key } => {
            let client = bucket(name)?;
            let k = Key::from(key.as_str());
            block_on(async move { client.put(&k, PutPayload::from(bytes)).await })?
                .map(|_| ())
                .map_err(|e| s3_error("writing", place, e))
        }
        Place::Http(u) => Err(StoreError(format!("cannot write to {u}: URLs are inputs only"))),
    }
}

/// Whether an object or file exists.
pub fn exists(place: &Place) -> Result<bool, StoreError> {
    match place {
        Place::Local(p) => Ok(p.exists()),
        Place::S3 { bucket: name, key } => {
            let client = bucket(name)?;
            let k = Key::from(key.as_str());
            match block_on(async move { client.head(&k).await })? {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(s3_error("reading", place, e)),
            }
        }
        Place::Http(_) => Ok(true),
    }
}

/// Copies `from` to `to` unless that happened before (`from` gone, `to` there).
pub fn publish(from: &Place, to: &Place) -> Result<(), StoreError> {
    match (from, to) {
        (Place::Local(a), Place::Local(b)) => match std::fs::rename(a, b) {
            Ok(()) => Ok(()),
            Err(_) if !a.exists() && b.exists() => Ok(()),
            Err(e) => Err(StoreError(format!("publishing {} as {}: {e}", a.display(), b.display()))),
        },
        (Place::S3 { bucket: name, key: a }, Place::S3 { key: b, .. }) => {
            let client = bucket(name)?;
            let (ka, kb) = (Key::from(a.as_str()), Key::from(b.as_str()));
            match block_on(async move { client.copy(&ka, &kb).await })? {
                Ok(()) => Ok(()),
                Err(object_store::Error::NotFound { .. }) if exists(to)? => Ok(()),
                Err(e) => Err(s3_error("publishing", from, e)),
            }
        }
        _ => Err(StoreError(format!("cannot publish {} as {}", from.uri(), to.uri()))),
    }
}

/// Names directly under a directory or prefix (files only).
pub fn names(dir: &Place) -> Result<Vec<String>, StoreError> {
    match dir {
        Place::Local(p) => match std::fs::read_dir(p) {
            Ok(entries) => Ok(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StoreError(format!("listing {}: {e}", p.display()))),
        },
        Place::S3 { bucket: name, key } => {
            let client = bucket(name)?;
            let prefix = key.trim_end_matches('/').to_string();
            let uri = dir.uri();
            block_on(async move {
                let p = (!prefix.is_empty()).then(|| Key::from(prefix.as_str()));
                let listed = client
                    .list_with_delimiter(p.as_ref())
                    .await
                    .map_err(|e| StoreError(format!("listing {uri}: {e}")))?;
                Ok(listed.objects.into_iter().filter_map(|o| o.location.filename().map(str::to_string)).collect())
            })?
        }
        Place::Http(u) => Err(StoreError(format!("cannot list {u}"))),
    }
}

/// Removes one object or file (missing is fine).
pub fn remove(place: &Place) -> Result<(), StoreError> {
    match place {
        Place::Local(p) => match std::fs::remove_file(p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError(format!("removing {}: {e}", p.display()))),
        },
        Place::S3 { bucket: name, key } => {
            let client = bucket(name)?;
            let k = Key::from(key.as_str());
            match block_on(async move { client.delete(&k).await })? {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(s3_error("removing", place, e)),
            }
        }
        Place::Http(u) => Err(StoreError(format!("cannot remove {u}"))),
    }
}

/// Removes everything under a directory or prefix, best effort.
pub fn remove_all(dir: &Place) {
    match dir {
        Place::Local(p) => {
            let _ = std::fs::remove_dir_all(p);
        }
        Place::S3 { bucket: name, key } => {
            let Ok(client) = bucket(name) else { return };
            let prefix = Key::from(key.trim_end_matches('/'));
            let _ = block_on(async move {
                let mut stream = client.list(Some(&prefix));
                let mut keys = Vec::new();
                while let Some(Ok(meta)) = stream.next().await {
                    keys.push(meta.location);
                }
                for k in keys {
                    let _ = client.delete(&k).await;
                }
            });
        }
        Place::Http(_) => {}
    }
}

/// Uploads a local file to `dest`.
pub fn upload(local: &Path, dest: &Place) -> Result<(), StoreError> {
    let bytes = std::fs::read(local).map_err(|e| StoreError(format!("reading {}: {e}", local.display())))?;
    put(dest, bytes)
}
