//! The Raft log as the core sees it: stable entries in [`Storage`], the
//! unstable tail in [`Unstable`], and the commit and apply cursors.
//!
//! Invariant, checked where the cursors move:
//! `first_index - 1 <= applied <= committed <= last_index`.
//!
//! This follows etcd's `log.go`. The one deliberate difference is that
//! out-of-range requests from a misbehaving peer are reported to the caller
//! (which ignores the message) rather than panicking.

use super::log_unstable::Unstable;
use super::storage::{limit_size, Storage, StorageError};
use super::types::{Entry, Snapshot};

pub struct RaftLog<S: Storage> {
    /// Durable entries (and the latest snapshot).
    pub storage: S,
    /// Accepted but not yet durable.
    pub unstable: Unstable,
    /// Highest index known to be stored on a quorum.
    pub committed: u64,
    /// Highest index handed to the application for applying.
    pub applied: u64,
    /// Entries that became durable and are not yet handed out for applying,
    /// kept when they leave `unstable` so that [`RaftLog::take_next_entries`]
    /// can move them out instead of copying them back from storage. Only a
    /// cache: `cache[i].index == cache[0].index + i`, and every entry in it
    /// is the one the log holds at its index (appends over it and snapshots
    /// drop it).
    cache: Vec<Entry>,
}

/// The most entries [`RaftLog`] keeps in its cache (a node that persists far
/// ahead of its commit index falls back to reading storage).
const MAX_CACHED: usize = 1 << 16;

impl<S: Storage> RaftLog<S> {
    /// A log over `storage` with `applied` set to the storage's compaction
    /// point (the application's state machine starts from its snapshot).
    pub fn new(storage: S) -> RaftLog<S> {
        let first = storage.first_index();
        let last = storage.last_index();
        RaftLog {
            storage,
            unstable: Unstable::new(last + 1),
            committed: first - 1,
            applied: first - 1,
            cache: Vec::new(),
        }
    }

    pub fn first_index(&self) -> u64 {
        self.unstable
            .maybe_first_index()
            .unwrap_or_else(|| self.storage.first_index())
    }

    pub fn last_index(&self) -> u64 {
        self.unstable
            .maybe_last_index()
            .unwrap_or_else(|| self.storage.last_index())
    }

    /// Term at `index`, valid for `first_index - 1 ..= last_index`.
    pub fn term(&self, index: u64) -> Result<u64, StorageError> {
        // The valid term range is [first_index - 1, last_index].
        let dummy = self.first_index() - 1;
        if index < dummy {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(t) = self.unstable.maybe_term(index) {
            return Ok(t);
        }
        self.storage.term(index)
    }

    /// Term at `index`, or 0 if it is not available.
    pub fn term_or_zero(&self, index: u64) -> u64 {
        self.term(index).unwrap_or(0)
    }

    pub fn last_term(&self) -> u64 {
        self.term_or_zero(self.last_index())
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// §5.4.1: a log is at least as up to date as ours if its last term is
    /// higher, or equal with a last index at least as large.
    pub fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        let our_term = self.last_term();
        term > our_term || (term == our_term && last_index >= self.last_index())
    }

    /// The AppendEntries receiver rules (§5.3). Returns the index of the last
    /// new entry if the entry at `prev_index` has `prev_term`, else `None`.
    /// Returns `Err` if the leader tries to overwrite a committed entry,
    /// which a correct leader never does; the caller drops the message.
    /// Takes the entries by value so the new ones move into the log.
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        committed: u64,
        mut ents: Vec<Entry>,
    ) -> Result<Option<u64>, &'static str> {
        if !self.match_term(prev_index, prev_term) {
            return Ok(None);
        }
        let last_new = prev_index + ents.len() as u64;
        let conflict = self.find_conflict(&ents);
        if conflict != 0 {
            if conflict <= self.committed {
                return Err("append conflicts with a committed entry");
            }
            let start = (conflict - prev_index - 1) as usize;
            ents.drain(..start);
            self.append(ents);
        }
        self.commit_to(committed.min(last_new));
        Ok(Some(last_new))
    }

    /// Appends entries after the last one or overwriting an uncommitted
    /// suffix. Returns the new last index.
    pub fn append(&mut self, ents: Vec<Entry>) -> u64 {
        if let Some(first) = ents.first() {
            assert!(
                first.index > self.committed,
                "append at {} would overwrite committed {}",
                first.index,
                self.committed
            );
            let keep = self
                .cache
                .iter()
                .take_while(|e| e.index < first.index)
                .count();
            self.cache.truncate(keep);
            self.unstable.truncate_and_append(ents);
        }
        self.last_index()
    }

    /// The index of the first entry of `ents` that is not already in the log
    /// with the same term: either a conflict or the first new entry. 0 if all
    /// are present.
    pub fn find_conflict(&self, ents: &[Entry]) -> u64 {
        for e in ents {
            if !self.match_term(e.index, e.term) {
                return e.index;
            }
        }
        0
    }

    /// For the rejection hint: the largest index `<= index` whose term is
    /// `<= term`, and that term. The leader can then skip all entries of
    /// terms its follower does not have.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t > term => {
                    if i == 0 {
                        return (0, 0);
                    }
                    i -= 1;
                }
                Ok(t) => return (i, t),
                Err(_) => return (i, 0),
            }
        }
    }

    /// Raises `committed` to `to` if `to` is higher; never past the last index.
    pub fn commit_to(&mut self, to: u64) {
        if to > self.committed {
            assert!(
                to <= self.last_index(),
                "commit {} is past last index {}",
                to,
                self.last_index()
            );
            self.committed = to;
        }
    }

    /// §5.4.2: commit `max_index` only if the entry there is from `term`.
    pub fn maybe_commit(&mut self, max_index: u64, term: u64) -> bool {
        if max_index > self.committed && self.term_or_zero(max_index) == term {
            self.commit_to(max_index);
            return true;
        }
        false
    }

    pub fn applied_to(&mut self, index: u64) {
        if index == 0 {
            return;
        }
        assert!(
            self.committed >= index && index >= self.applied,
            "applied {} out of range [{}, {}]",
            index,
            self.applied,
            self.committed
        );
        self.applied = index;
    }

    pub fn stable_to(&mut self, index: u64, term: u64) {
        let ents = self.unstable.stable_to(index, term);
        let Some(first) = ents.first() else { return };
        let follows = self.cache.last().is_none_or(|e| e.index + 1 == first.index);
        if !follows || self.cache.len() + ents.len() > MAX_CACHED {
            self.cache.clear();
        }
        if ents.len() <= MAX_CACHED {
            if self.cache.is_empty() {
                self.cache = ents;
            } else {
                self.cache.extend(ents);
            }
        }
    }

    pub fn stable_snap_to(&mut self, index: u64) {
        self.unstable.stable_snap_to(index);
    }

    /// Entries not yet durable.
    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    /// Whether there are committed entries not yet handed out.
    pub fn has_next_entries(&self) -> bool {
        let off = (self.applied + 1).max(self.first_index());
        self.committed + 1 > off
    }

    /// Committed entries not yet handed out, capped at `max_size` bytes.
    pub fn next_entries(&self, max_size: u64) -> Vec<Entry> {
        let off = (self.applied + 1).max(self.first_index());
        if self.committed + 1 > off {
            self.slice(off, self.committed + 1, max_size)
                .unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    /// [`RaftLog::next_entries`], moving the entries out of the cache when
    /// they are all there rather than copying them.
    pub fn take_next_entries(&mut self, max_size: u64) -> Vec<Entry> {
        let off = (self.applied + 1).max(self.first_index());
        let stale = self.cache.iter().take_while(|e| e.index < off).count();
        self.cache.drain(..stale);
        let wanted = (self.committed + 1).saturating_sub(off) as usize;
        let cached = self.cache.first().is_some_and(|e| e.index == off);
        if wanted == 0 || !cached || self.cache.len() < wanted {
            return self.next_entries(max_size);
        }
        let n = limit_size(&self.cache[..wanted], max_size).len();
        if n == self.cache.len() {
            std::mem::take(&mut self.cache)
        } else {
            self.cache.drain(..n).collect()
        }
    }

    /// Entries from `index` to the end, capped at `max_size`.
    pub fn entries(&self, index: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        let last = self.last_index();
        if index > last {
            return Ok(Vec::new());
        }
        self.slice(index, last + 1, max_size)
    }

    /// Entries in `[lo, hi)` from storage and/or the unstable tail.
    pub fn slice(&self, lo: u64, hi: u64, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        if lo < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 || lo > hi {
            return Err(StorageError::Unavailable);
        }
        if lo == hi {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let uoff = self.unstable.offset;
        if lo < uoff {
            out = self.storage.entries(lo, hi.min(uoff), max_size)?;
            // Storage capped the batch: stop here.
            if (out.len() as u64) < hi.min(uoff) - lo {
                return Ok(out);
            }
        }
        if hi > uoff {
            let u = self.unstable.slice(lo.max(uoff), hi);
            if out.is_empty() {
                out = limit_size(u, max_size).to_vec();
            } else {
                out.extend_from_slice(u);
                let n = limit_size(&out, max_size).len();
                out.truncate(n);
            }
        }
        Ok(out)
    }

    /// The snapshot to send a peer: the pending one if any, else storage's.
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        if let Some(s) = &self.unstable.snapshot {
            return Ok(s.clone());
        }
        self.storage.snapshot()
    }

    /// Replaces the log with a snapshot; the caller has checked it is newer
    /// than `committed`.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.cache.clear();
        self.committed = snapshot.meta.index;
        self.unstable.restore(snapshot);
    }

    /// Index of the last entry known to be durable locally (0 while a
    /// snapshot is pending).
    pub fn persisted_index(&self) -> u64 {
        if self.unstable.snapshot.is_some() {
            return 0;
        }
        let stable_last = self.storage.last_index();
        stable_last.min(self.unstable.offset - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::MemStorage;
    use crate::raft::types::EntryKind;

    fn ent(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: data.to_vec(),
        }
    }

    /// What the application does with a Ready's entries before `advance`.
    fn persist(log: &mut RaftLog<MemStorage>) {
        let ents = log.unstable_entries().to_vec();
        log.storage.append(&ents).unwrap();
        if let Some(e) = ents.last() {
            log.stable_to(e.index, e.term);
        }
    }

    #[test]
    fn committed_entries_move_out_of_the_cache_and_follow_overwrites() {
        let mut log = RaftLog::new(MemStorage::new());
        log.append(vec![ent(1, 1, b"a"), ent(2, 1, b"b"), ent(3, 1, b"c")]);
        persist(&mut log);
        log.commit_to(1);
        assert_eq!(log.take_next_entries(u64::MAX), vec![ent(1, 1, b"a")]);
        log.applied_to(1);
        // A new leader overwrites the uncommitted 3 and commits it at once,
        // before the overwrite is durable: 3 must not come from the cache.
        log.append(vec![ent(3, 2, b"y")]);
        log.commit_to(3);
        let next = log.take_next_entries(u64::MAX);
        assert_eq!(next, vec![ent(2, 1, b"b"), ent(3, 2, b"y")]);
        // Size-capped batches come out of the cache one after the other.
        persist(&mut log);
        log.applied_to(3);
        log.append(vec![ent(4, 2, b"d"), ent(5, 2, b"e")]);
        persist(&mut log);
        log.commit_to(5);
        assert_eq!(log.take_next_entries(0), vec![ent(4, 2, b"d")]);
        log.applied_to(4);
        assert_eq!(log.take_next_entries(0), vec![ent(5, 2, b"e")]);
    }
}
