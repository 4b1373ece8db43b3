//! The unstable tail of the log: entries (and possibly a snapshot) the core
//! has accepted but the application has not yet made durable.
//!
//! As in etcd's `log_unstable.go`: `offset` is the index of `entries[0]`; a
//! pending snapshot, if any, sits right before it (`offset == snapshot.index + 1`).
//! Entries leave this buffer through [`Unstable::stable_to`] once the
//! application has persisted them (`RawNode::advance`).

use super::types::{Entry, Snapshot};

#[derive(Debug, Default)]
pub struct Unstable {
    /// A snapshot received from the leader and not yet persisted.
    pub snapshot: Option<Snapshot>,
    /// Entries not yet persisted; `entries[i].index == offset + i`.
    pub entries: Vec<Entry>,
    pub offset: u64,
}

impl Unstable {
    pub fn new(offset: u64) -> Unstable {
        Unstable {
            snapshot: None,
            entries: Vec::new(),
            offset,
        }
    }

    /// First index, if it is known from a pending snapshot.
    pub fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.meta.index + 1)
    }

    /// Last index, if there are unstable entries or a pending snapshot.
    pub fn maybe_last_index(&self) -> Option<u64> {
        match self.entries.last() {
            Some(e) => Some(e.index),
            None => self.snapshot.as_ref().map(|s| s.meta.index),
        }
    }

    /// Term at `index`, if this buffer knows it.
    pub fn maybe_term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            let s = self.snapshot.as_ref()?;
            return (s.meta.index == index).then_some(s.meta.term);
        }
        let last = self.maybe_last_index()?;
        if index > last {
            return None;
        }
        Some(self.entries[(index - self.offset) as usize].term)
    }

    /// Marks entries up to `index` durable, but only if the entry there still
    /// has term `term`: if the tail was overwritten meanwhile, the newer
    /// entries are not yet durable and must stay. Returns the entries that
    /// left the buffer.
    pub fn stable_to(&mut self, index: u64, term: u64) -> Vec<Entry> {
        if index < self.offset || self.maybe_term(index) != Some(term) {
            return Vec::new();
        }
        let n = (index + 1 - self.offset) as usize;
        self.offset = index + 1;
        if n == self.entries.len() {
            std::mem::take(&mut self.entries)
        } else {
            self.entries.drain(..n).collect()
        }
    }

    /// Marks the pending snapshot at `index` durable.
    pub fn stable_snap_to(&mut self, index: u64) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.meta.index == index)
        {
            self.snapshot = None;
        }
    }

    /// Replaces everything with a snapshot.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.offset = snapshot.meta.index + 1;
        self.entries.clear();
        self.snapshot = Some(snapshot);
    }

    /// Appends `ents`, whose first index may be inside or before this buffer:
    /// everything from that index on is replaced. The entries are moved in,
    /// not copied: they are the hot path of replication.
    pub fn truncate_and_append(&mut self, ents: Vec<Entry>) {
        let Some(first) = ents.first() else { return };
        let after = first.index;
        if after == self.offset + self.entries.len() as u64 {
            // Directly after: the common case.
        } else if after <= self.offset {
            // Replaces the whole unstable part (and some stable entries).
            self.offset = after;
            self.entries.clear();
        } else {
            self.entries.truncate((after - self.offset) as usize);
        }
        if self.entries.is_empty() {
            self.entries = ents;
        } else {
            self.entries.extend(ents);
        }
    }

    /// Entries in `[lo, hi)`; the caller checks the range is inside the buffer.
    pub fn slice(&self, lo: u64, hi: u64) -> &[Entry] {
        &self.entries[(lo - self.offset) as usize..(hi - self.offset) as usize]
    }
}
