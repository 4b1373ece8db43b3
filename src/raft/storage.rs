//! The stable part of the log, as the core sees it.
//!
//! [`Storage`] is read-only to the core: the application writes to its storage
//! (after making the data durable in its WAL) and the core reads from it. This
//! mirrors etcd's `Storage` interface. Indexes are absolute log indexes.
//!
//! [`MemStorage`] keeps everything in memory. It serves the tests and is also
//! what a node uses in production in front of its WAL, as etcd's server uses
//! `MemoryStorage`: entries are appended to it only after the WAL has them.
//! It is a cheap handle (`Clone` shares the same log) so the thread that
//! persists a Ready can append while the core holds another handle.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::types::{ConfState, Entry, HardState, Snapshot, SnapshotMeta};

/// Why a storage read could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageError {
    /// The index is below the first available index: the entries were
    /// compacted away and only a snapshot can bring a peer past them.
    Compacted,
    /// The index is above the last index.
    Unavailable,
    /// A snapshot is being prepared; try again later.
    SnapshotTemporarilyUnavailable,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageError::Compacted => "requested index is compacted",
            StorageError::Unavailable => "requested index is beyond the last index",
            StorageError::SnapshotTemporarilyUnavailable => "snapshot temporarily unavailable",
        })
    }
}

impl std::error::Error for StorageError {}

/// Read access to the stable log.
///
/// Valid ranges, with `first = first_index()` and `last = last_index()`:
/// - `term(i)` answers for `first - 1 <= i <= last` (the term at `first - 1`
///   is the one of the latest compaction point or snapshot); below that it
///   returns `Compacted`, above it `Unavailable`.
/// - `entries(lo, hi, max_size)` answers for `first <= lo <= hi <= last + 1`
///   and returns at least one entry when `lo < hi`, even if larger than
///   `max_size`.
/// - `last_index()` may be `first - 1` when the log is empty.
///
/// No method panics on an out-of-range index; they return an error instead.
pub trait Storage {
    /// The hard state and membership persisted at start-up.
    fn initial_state(&self) -> (HardState, ConfState);
    /// Entries in `[lo, hi)`, capped at `max_size` bytes (at least one).
    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>, StorageError>;
    /// Term of the entry at `index`.
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Index of the first entry still available.
    fn first_index(&self) -> u64;
    /// Index of the last entry.
    fn last_index(&self) -> u64;
    /// The most recent snapshot.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// The state behind a [`MemStorage`] handle.
#[derive(Default)]
struct MemStorageCore {
    hard_state: HardState,
    /// Latest snapshot taken or installed; index 0 means none.
    snapshot: Snapshot,
    /// Index and term of the entry just before `entries[0]` (the compaction point).
    base_index: u64,
    base_term: u64,
    /// Membership as of the latest snapshot, returned by `initial_state`;
    /// a restarted node replays the conf changes after it.
    conf_state: ConfState,
    /// Entries `base_index + 1 ..`, contiguous.
    entries: Vec<Entry>,
}

impl MemStorageCore {
    fn last_index(&self) -> u64 {
        self.base_index + self.entries.len() as u64
    }
}

/// An in-memory [`Storage`]. Cloning gives another handle to the same log.
#[derive(Clone, Default)]
pub struct MemStorage {
    core: Arc<RwLock<MemStorageCore>>,
}

impl MemStorage {
    /// An empty log with no members: for a node that waits to be added to a
    /// cluster whose founding membership is in the log as conf-change
    /// entries from index 1 (as etcd's `Bootstrap` and raftnode write it),
    /// so that replaying the log rebuilds the membership.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// An empty log whose initial membership is `voters`, held as a snapshot
    /// at index 0 rather than in the log: how a brand-new cluster bootstraps
    /// in tests (every member starts with the same list). That membership is
    /// not in the log, so a member added later must start from the same
    /// founding membership too, not from [`MemStorage::new`]: replaying the
    /// log onto no membership at all would leave it believing it is alone.
    pub fn new_with_conf_state(conf_state: ConfState) -> MemStorage {
        let s = MemStorage::new();
        {
            let mut core = s.write();
            core.snapshot.meta.conf_state = conf_state.clone();
            core.conf_state = conf_state;
        }
        s
    }

    fn read(&self) -> RwLockReadGuard<'_, MemStorageCore> {
        // A poisoned lock means a thread panicked mid-update; the data is
        // still structurally valid (every update below is a single step).
        self.core.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, MemStorageCore> {
        self.core.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the hard state (after it was made durable).
    pub fn set_hard_state(&self, hs: HardState) {
        self.write().hard_state = hs;
    }

    /// The last hard state recorded.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state
    }

    /// Sets the membership returned by `initial_state` (used on recovery).
    pub fn set_conf_state(&self, cs: ConfState) {
        self.write().conf_state = cs;
    }

    /// Appends entries that are now durable. An entry at index `i` replaces
    /// every entry at `i` and above (the Raft overwrite rule). Entries at or
    /// below the compaction point are skipped. Returns an error if the entries
    /// would leave a gap after the current last index.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut core = self.write();
        if first.index > core.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        // Skip what is already compacted.
        let skip = (core.base_index + 1).saturating_sub(first.index) as usize;
        if skip >= entries.len() {
            return Ok(());
        }
        let entries = &entries[skip..];
        let keep = (entries[0].index - core.base_index - 1) as usize;
        core.entries.truncate(keep);
        core.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Replaces the whole log by a snapshot (a follower installing one, or
    /// recovery from disk). Refuses a snapshot older than the current one.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), StorageError> {
        let mut core = self.write();
        if snapshot.meta.index < core.snapshot.meta.index {
            return Err(StorageError::Compacted);
        }
        core.base_index = snapshot.meta.index;
        core.base_term = snapshot.meta.term;
        core.conf_state = snapshot.meta.conf_state.clone();
        core.entries.clear();
        if core.hard_state.commit < snapshot.meta.index {
            core.hard_state.commit = snapshot.meta.index;
        }
        core.snapshot = snapshot;
        Ok(())
    }

    /// Records a snapshot of the applied state at `index` (which must be in
    /// the log) without discarding entries; call [`MemStorage::compact`] for that.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<Snapshot, StorageError> {
        let mut core = self.write();
        if index <= core.snapshot.meta.index {
            return Err(StorageError::Compacted);
        }
        if index > core.last_index() {
            return Err(StorageError::Unavailable);
        }
        let term = if index == core.base_index {
            core.base_term
        } else {
            core.entries[(index - core.base_index - 1) as usize].term
        };
        // A node restarting from this snapshot replays only the conf
        // changes after `index`, so it must start from this membership.
        core.conf_state = conf_state.clone();
        core.snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(core.snapshot.clone())
    }

    /// Discards entries up to and including `index`, which must not exceed
    /// the applied index (the caller's duty) nor the last index.
    pub fn compact(&self, index: u64) -> Result<(), StorageError> {
        let mut core = self.write();
        if index <= core.base_index {
            return Err(StorageError::Compacted);
        }
        if index > core.last_index() {
            return Err(StorageError::Unavailable);
        }
        let n = (index - core.base_index) as usize;
        core.base_term = core.entries[n - 1].term;
        core.base_index = index;
        core.entries.drain(..n);
        Ok(())
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> (HardState, ConfState) {
        let core = self.read();
        (core.hard_state, core.conf_state.clone())
    }

    fn entries(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        let core = self.read();
        if lo <= core.base_index {
            return Err(StorageError::Compacted);
        }
        if hi > core.last_index() + 1 || lo > hi {
            return Err(StorageError::Unavailable);
        }
        let slice =
            &core.entries[(lo - core.base_index - 1) as usize..(hi - core.base_index - 1) as usize];
        Ok(limit_size(slice, max_size).to_vec())
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let core = self.read();
        if index < core.base_index {
            return Err(StorageError::Compacted);
        }
        if index == core.base_index {
            return Ok(core.base_term);
        }
        match core.entries.get((index - core.base_index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(StorageError::Unavailable),
        }
    }

    fn first_index(&self) -> u64 {
        self.read().base_index + 1
    }

    fn last_index(&self) -> u64 {
        self.read().last_index()
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.read().snapshot.clone())
    }
}

/// The longest prefix of `entries` whose total size fits `max_size`, but
/// never fewer than one entry.
pub fn limit_size(entries: &[Entry], max_size: u64) -> &[Entry] {
    let mut size = 0u64;
    for (i, e) in entries.iter().enumerate() {
        size += e.size() as u64;
        if i > 0 && size > max_size {
            return &entries[..i];
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryKind;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: vec![],
        }
    }

    #[test]
    fn append_overwrites_from_first_conflicting_index() {
        let s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        s.append(&[ent(2, 2)]).unwrap();
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.append(&[ent(5, 2)]), Err(StorageError::Unavailable));
    }

    #[test]
    fn compact_keeps_term_of_compaction_point() {
        let s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 2), ent(3, 3)]).unwrap();
        s.compact(2).unwrap();
        assert_eq!(s.first_index(), 3);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.term(1), Err(StorageError::Compacted));
        assert_eq!(s.entries(2, 4, u64::MAX), Err(StorageError::Compacted));
        assert_eq!(s.entries(3, 4, u64::MAX).unwrap().len(), 1);
        assert_eq!(s.compact(9), Err(StorageError::Unavailable));
    }

    /// Found by the simulation (seed 40): a node restarting from a snapshot
    /// it had created got the membership of an older snapshot (or of the
    /// bootstrap) from `initial_state`, while it replays only the conf
    /// changes after the new snapshot: changes in between were lost.
    #[test]
    fn initial_state_has_the_membership_of_the_latest_snapshot() {
        let s = MemStorage::new_with_conf_state(ConfState::with_voters(vec![1, 2, 3]));
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        let cs = ConfState::with_voters(vec![1, 2, 3, 4]);
        s.create_snapshot(2, cs.clone(), vec![]).unwrap();
        assert_eq!(s.initial_state().1, cs);
        s.compact(1).unwrap();
        assert_eq!(s.initial_state().1, cs);
    }

    #[test]
    fn entries_limit_size_returns_at_least_one() {
        let s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        assert_eq!(s.entries(1, 4, 0).unwrap().len(), 1);
        assert_eq!(s.entries(1, 4, 48).unwrap().len(), 2);
        assert_eq!(s.entries(4, 9, 0), Err(StorageError::Unavailable));
    }
}
