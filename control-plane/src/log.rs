//! The Raft log on disk: [`LogStore`] implements raft-rs's read-only
//! [`Storage`] trait over sled, and offers the writes the Ready loop makes
//! (append, hard state, conf state, snapshots, compaction).
//!
//! Keys: `e/{index:be}` for entries, `m/hard`, `m/conf` and `m/snap` for the
//! hard state, conf state and the metadata of the last snapshot. Entries are
//! kept contiguous: appending at index `i` first removes every entry from
//! `i` on (a new leader overwriting a divergent suffix). Writes are not
//! durable until [`LogStore::flush`] returns; the Ready loop flushes before
//! it sends messages or acknowledges clients.

use std::sync::{Arc, RwLock};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

const HARD: &[u8] = b"m/hard";
const CONF: &[u8] = b"m/conf";
const SNAP: &[u8] = b"m/snap";

fn entry_key(index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(b"e/");
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// A sled error as an operator should read it: an I/O failure by its
/// operating-system message ("No space left on device (os error 28)").
pub fn describe_sled(e: &sled::Error) -> String {
    match e {
        // sled passes some I/O errors on as the text of the original's
        // debug form: their kind says it readably.
        sled::Error::Io(io) if io.raw_os_error().is_none() => format!("storage I/O error: {} ({io})", io.kind()),
        sled::Error::Io(io) => format!("storage I/O error: {io}"),
        other => format!("storage error: {other}"),
    }
}

/// A log error as an operator should read it: the storage failure itself,
/// not raft-rs's wrapping of it ("unknown error ...").
pub fn describe(e: &raft::Error) -> String {
    match e {
        raft::Error::Store(StorageError::Other(inner)) => match inner.downcast_ref::<sled::Error>() {
            Some(sled) => describe_sled(sled),
            None => inner.to_string(),
        },
        other => other.to_string(),
    }
}

/// Produces the state machine's snapshot data (and the index it reflects).
pub trait SnapshotSource: Send + Sync {
    /// The serialized state as of the last applied index, and that index.
    fn snapshot_data(&self) -> raft::Result<(Vec<u8>, u64)>;
}

/// The first and last index, cached so `Storage` reads need no scan.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Index of the last snapshot (entries start after it).
    snapshot_index: u64,
    /// Term of the last snapshot.
    snapshot_term: u64,
    /// Last entry's index (or the snapshot index when there are none).
    last: u64,
}

/// The Raft log and hard state of one replica, in a sled tree.
#[derive(Clone)]
pub struct LogStore {
    tree: sled::Tree,
    bounds: Arc<RwLock<Bounds>>,
    source: Option<Arc<dyn SnapshotSource>>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("bounds", &self.bounds()).finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the log kept in `tree` (empty for a new replica).
    pub fn open(tree: sled::Tree) -> raft::Result<Self> {
        let meta: SnapshotMetadata = match tree.get(SNAP).map_err(store_err)? {
            Some(v) => SnapshotMetadata::parse_from_bytes(&v).map_err(store_err)?,
            None => SnapshotMetadata::default(),
        };
        let last = match tree.scan_prefix(b"e/").next_back() {
            Some(kv) => {
                let (_, v) = kv.map_err(store_err)?;
                Entry::parse_from_bytes(&v).map_err(store_err)?.index
            }
            None => meta.index,
        };
        let bounds = Bounds { snapshot_index: meta.index, snapshot_term: meta.term, last };
        Ok(LogStore { tree, bounds: Arc::new(RwLock::new(bounds)), source: None })
    }

    /// Sets where snapshot data comes from (the state machine).
    pub fn with_snapshot_source(mut self, source: Arc<dyn SnapshotSource>) -> Self {
        self.source = Some(source);
        self
    }

    fn bounds(&self) -> Bounds {
        match self.bounds.read() {
            Ok(b) => *b,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn set_bounds(&self, f: impl FnOnce(&mut Bounds)) {
        match self.bounds.write() {
            Ok(mut b) => f(&mut b),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Appends `entries`, first removing any existing entries from the first
    /// new index on.
    pub fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else { return Ok(()) };
        let b = self.bounds();
        if first.index <= b.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if first.index > b.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut batch = sled::Batch::default();
        for i in first.index..=b.last {
            batch.remove(&entry_key(i));
        }
        for e in entries {
            batch.insert(&entry_key(e.index), e.write_to_bytes().map_err(store_err)?);
        }
        self.tree.apply_batch(batch).map_err(store_err)?;
        let last = entries.last().map_or(b.last, |e| e.index);
        self.set_bounds(|b| b.last = last);
        Ok(())
    }

    /// Records the hard state (term, vote, commit).
    pub fn set_hard_state(&self, hs: &HardState) -> raft::Result<()> {
        self.tree.insert(HARD, hs.write_to_bytes().map_err(store_err)?).map_err(store_err)?;
        Ok(())
    }

    /// Records the membership.
    pub fn set_conf_state(&self, cs: &ConfState) -> raft::Result<()> {
        self.tree.insert(CONF, cs.write_to_bytes().map_err(store_err)?).map_err(store_err)?;
        Ok(())
    }

    /// Sets the commit index in the hard state.
    pub fn set_commit(&self, commit: u64) -> raft::Result<()> {
        let mut hs = self.hard_state()?;
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// The recorded hard state.
    pub fn hard_state(&self) -> raft::Result<HardState> {
        match self.tree.get(HARD).map_err(store_err)? {
            Some(v) => HardState::parse_from_bytes(&v).map_err(store_err),
            None => Ok(HardState::default()),
        }
    }

    fn conf_state(&self) -> raft::Result<ConfState> {
        match self.tree.get(CONF).map_err(store_err)? {
            Some(v) => ConfState::parse_from_bytes(&v).map_err(store_err),
            None => Ok(ConfState::default()),
        }
    }

    /// Makes the log start after `index`, whose term and the membership then
    /// are recorded as the snapshot point: entries up to `index` are dropped.
    /// The state machine must hold everything up to `index`.
    pub fn compact(&self, index: u64) -> raft::Result<()> {
        let b = self.bounds();
        if index <= b.snapshot_index {
            return Ok(());
        }
        if index > b.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let term = self.term(index)?;
        let mut meta = SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(self.conf_state()?);
        let mut batch = sled::Batch::default();
        for i in b.snapshot_index + 1..=index {
            batch.remove(&entry_key(i));
        }
        batch.insert(SNAP, meta.write_to_bytes().map_err(store_err)?);
        self.tree.apply_batch(batch).map_err(store_err)?;
        self.set_bounds(|b| {
            b.snapshot_index = index;
            b.snapshot_term = term;
        });
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log restarts after
    /// it. The caller restores the state machine from its data.
    pub fn apply_snapshot(&self, snapshot: &Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        let b = self.bounds();
        if meta.index <= b.snapshot_index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        let mut batch = sled::Batch::default();
        for i in b.snapshot_index + 1..=b.last {
            batch.remove(&entry_key(i));
        }
        let mut hs = self.hard_state()?;
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        batch.insert(HARD, hs.write_to_bytes().map_err(store_err)?);
        batch.insert(CONF, meta.get_conf_state().write_to_bytes().map_err(store_err)?);
        batch.insert(SNAP, meta.write_to_bytes().map_err(store_err)?);
        self.tree.apply_batch(batch).map_err(store_err)?;
        self.set_bounds(|b| {
            b.snapshot_index = meta.index;
            b.snapshot_term = meta.term;
            b.last = meta.index;
        });
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> raft::Result<()> {
        self.tree.flush().map_err(store_err)?;
        Ok(())
    }

    /// Entries in the log now (after the snapshot point).
    pub fn len(&self) -> u64 {
        let b = self.bounds();
        b.last - b.snapshot_index
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state()?, conf_state: self.conf_state()? })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let b = self.bounds();
        if low <= b.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > b.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::new();
        let mut size = 0u64;
        for kv in self.tree.range(entry_key(low)..entry_key(high)) {
            let (_, v) = kv.map_err(store_err)?;
            let e = Entry::parse_from_bytes(&v).map_err(store_err)?;
            size += u64::from(e.compute_size());
            // Always at least one entry, as the trait asks.
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let b = self.bounds();
        if idx == b.snapshot_index {
            return Ok(b.snapshot_term);
        }
        if idx < b.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > b.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.tree.get(entry_key(idx)).map_err(store_err)? {
            Some(v) => Ok(Entry::parse_from_bytes(&v).map_err(store_err)?.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().last)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let Some(source) = &self.source else {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        };
        let (data, applied) = source.snapshot_data()?;
        if applied < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = self.term(applied)?;
        meta.set_conf_state(self.conf_state()?);
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: format!("e{index}").into_bytes().into(), ..Default::default() }
    }

    fn store() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let log = LogStore::open(db.open_tree("raft").expect("tree")).expect("log");
        (dir, log)
    }

    fn indexes(log: &LogStore, low: u64, high: u64) -> Vec<(u64, u64)> {
        log.entries(low, high, None, GetEntriesContext::empty(false))
            .expect("entries")
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    #[test]
    fn a_full_disk_reads_as_the_operating_system_says_it() {
        let full = sled::Error::Io(std::io::Error::from_raw_os_error(28));
        let said = describe(&store_err(full));
        assert!(said.starts_with("storage I/O error: No space left on device"), "{said}");
        assert!(!said.contains("unknown error") && !said.contains("Os {"), "{said}");
    }

    #[test]
    fn append_overwrites_a_divergent_suffix() {
        let (_dir, log) = store();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).expect("append");
        log.append(&[entry(2, 2), entry(3, 2), entry(4, 2)]).expect("overwrite");
        assert_eq!(indexes(&log, 1, 5), [(1, 1), (2, 2), (3, 2), (4, 2)]);
        log.append(&[entry(3, 3)]).expect("shorter overwrite");
        assert_eq!(log.last_index().expect("last"), 3, "entries after the new suffix are gone");
        assert_eq!(log.term(3).expect("term"), 3);
        assert!(log.append(&[entry(9, 3)]).is_err(), "a gap is refused");
    }

    #[test]
    fn entries_respect_max_size_but_return_at_least_one() {
        let (_dir, log) = store();
        log.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
        let one = log.entries(1, 11, 1, GetEntriesContext::empty(false)).expect("entries");
        assert_eq!(one.len(), 1);
        let some = log.entries(1, 11, 3 * u64::from(entry(1, 1).compute_size()), GetEntriesContext::empty(false));
        assert_eq!(some.expect("entries").len(), 3);
    }

    #[test]
    fn compaction_keeps_the_term_of_the_snapshot_point() {
        let (_dir, log) = store();
        log.append(&(1..=10).map(|i| entry(i, i / 4 + 1)).collect::<Vec<_>>()).expect("append");
        log.compact(6).expect("compact");
        assert_eq!(log.first_index().expect("first"), 7);
        assert_eq!(log.term(6).expect("term at snapshot"), 2);
        assert!(matches!(log.term(5), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(matches!(
            log.entries(5, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(indexes(&log, 7, 11).len(), 4);
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn log_and_hard_state_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path()).expect("sled");
            let log = LogStore::open(db.open_tree("raft").expect("tree")).expect("log");
            log.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
            log.set_hard_state(&HardState { term: 1, vote: 2, commit: 4, ..Default::default() }).expect("hs");
            log.compact(2).expect("compact");
            log.flush().expect("flush");
        }
        // sled releases its lock on the files shortly after the last handle drops.
        let db = (0..200)
            .find_map(|_| {
                sled::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                })
            })
            .expect("sled reopens");
        let log = LogStore::open(db.open_tree("raft").expect("tree")).expect("log");
        assert_eq!((log.first_index().expect("first"), log.last_index().expect("last")), (3, 5));
        let state = log.initial_state().expect("state");
        assert_eq!((state.hard_state.term, state.hard_state.vote, state.hard_state.commit), (1, 2, 4));
        assert_eq!(log.term(2).expect("snapshot term"), 1);
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log() {
        let (_dir, log) = store();
        log.append(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>()).expect("append");
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 4;
        log.apply_snapshot(&snap).expect("install");
        assert_eq!((log.first_index().expect("first"), log.last_index().expect("last")), (11, 10));
        assert_eq!(log.term(10).expect("term"), 4);
        assert_eq!(log.hard_state().expect("hs").commit, 10);
        assert!(matches!(log.apply_snapshot(&snap), Err(raft::Error::Store(StorageError::SnapshotOutOfDate))));
        log.append(&[entry(11, 4)]).expect("the log continues after the snapshot");
    }
}
