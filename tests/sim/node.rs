//! One simulated server: the core, its durable storage, the application's
//! state machine, and what the application knows about its own log.
//!
//! The application of a simulated node follows the Ready/Advance contract in
//! three separate stages, so that faults can strike between them:
//! 1. *take*: `ready()`, sending `messages` at once;
//! 2. *persist*: snapshot, entries and hard state into the durable
//!    [`MemStorage`] (the testkit's `ready::persist`, as every driver does),
//!    then sending `persisted_messages`;
//! 3. *apply*: the snapshot and committed entries into the state machine,
//!    conf changes into the core, then `advance()`.
//!
//! A crash throws away the core, the outstanding Ready and the state machine;
//! only the `MemStorage` survives, as a disk would.
//!
//! The checks need to compare logs cheaply, so every log position carries a
//! chain hash: the hash of the entry and of everything before it. Two logs
//! with the same chain hash at an index are identical up to that index. The
//! state machine keeps the same chain over the entries it applied, and puts
//! the whole applied sequence into its snapshots, so a node restored from a
//! snapshot continues the same chain.

use raftnode::raft::{ConfState, Entry, EntryKind, MemStorage, RawNode, Ready, Snapshot, Storage};
use raftnode_testkit::rng::mix;

/// FNV-1a over an entry's kind and data: what the entry says.
pub fn fingerprint(kind: EntryKind, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&kind.to_byte()).chain(data) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The chain hash at `index`, given the one at `index - 1`.
pub fn chain(prev: u64, index: u64, term: u64, fp: u64) -> u64 {
    mix(prev ^ mix(index ^ mix(term ^ mix(fp))))
}

/// The application's state: the sequence of entries it applied, as
/// `(term, fingerprint)` for indexes `1..=applied`, and its chain hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    pub applied: u64,
    pub hash: u64,
    pub entries: Vec<(u64, u64)>,
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"SIM1";

impl StateMachine {
    /// Applies the next entry; returns the new chain hash.
    pub fn apply(&mut self, e: &Entry) -> Result<u64, String> {
        if e.index != self.applied + 1 {
            return Err(format!(
                "entry {} handed out for applying after {}",
                e.index, self.applied
            ));
        }
        let fp = fingerprint(e.kind, &e.data);
        self.hash = chain(self.hash, e.index, e.term, fp);
        self.applied = e.index;
        self.entries.push((e.term, fp));
        Ok(self.hash)
    }

    /// Snapshot data: magic, applied, hash, then `(term, fp)` per entry,
    /// all little-endian u64s.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + 16 * self.entries.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&self.hash.to_le_bytes());
        for (t, fp) in &self.entries {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&fp.to_le_bytes());
        }
        out
    }

    /// Decodes [`StateMachine::encode`]'s output and verifies its hash chain.
    /// Empty data is the empty state (a snapshot at index 0 carries only
    /// the bootstrap membership).
    pub fn decode(data: &[u8]) -> Result<StateMachine, String> {
        if data.is_empty() {
            return Ok(StateMachine::default());
        }
        let word = |i: usize| -> u64 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if data.len() < 20 || &data[..4] != SNAPSHOT_MAGIC || !(data.len() - 20).is_multiple_of(16)
        {
            return Err(format!(
                "snapshot data of {} bytes is malformed",
                data.len()
            ));
        }
        let applied = word(4);
        let hash = word(12);
        let n = (data.len() - 20) / 16;
        if n as u64 != applied {
            return Err(format!("snapshot at {applied} holds {n} entries"));
        }
        let mut sm = StateMachine::default();
        for k in 0..n {
            let (term, fp) = (word(20 + 16 * k), word(28 + 16 * k));
            sm.applied += 1;
            sm.hash = chain(sm.hash, sm.applied, term, fp);
            sm.entries.push((term, fp));
        }
        if sm.hash != hash {
            return Err(format!("snapshot at {applied} has a broken hash chain"));
        }
        Ok(sm)
    }

    /// Whether one applied sequence is a prefix of the other.
    pub fn agrees_with(&self, other: &StateMachine) -> bool {
        let n = self.entries.len().min(other.entries.len());
        self.entries[..n] == other.entries[..n]
    }
}

/// Chain hashes of a node's durable log, mirroring its `MemStorage`:
/// `(term, hash)` for `base + 1 ..= last`, and the compaction point `base`.
#[derive(Clone, Debug, Default)]
pub struct LogChain {
    pub base: u64,
    base_term: u64,
    base_hash: u64,
    ents: Vec<(u64, u64)>,
}

impl LogChain {
    pub fn last(&self) -> u64 {
        self.base + self.ents.len() as u64
    }

    /// `(term, hash)` at `i`, for `base <= i <= last`.
    pub fn get(&self, i: u64) -> Option<(u64, u64)> {
        if i == self.base {
            return Some((self.base_term, self.base_hash));
        }
        if i < self.base {
            return None;
        }
        self.ents.get((i - self.base - 1) as usize).copied()
    }

    /// What `MemStorage::append` does: entries at or below the base are
    /// skipped, the rest replace everything from their first index on.
    pub fn append(&mut self, first: u64, ents: &[(u64, u64)]) {
        let skip = (self.base + 1).saturating_sub(first) as usize;
        if skip >= ents.len() {
            return;
        }
        let first = first + skip as u64;
        self.ents.truncate((first - self.base - 1) as usize);
        self.ents.extend_from_slice(&ents[skip..]);
    }

    pub fn install(&mut self, index: u64, term: u64, hash: u64) {
        self.base = index;
        self.base_term = term;
        self.base_hash = hash;
        self.ents.clear();
    }

    /// Forgets every entry after `index` (durable state lost).
    pub fn truncate(&mut self, index: u64) {
        if index >= self.base {
            self.ents.truncate((index - self.base) as usize);
        }
    }

    pub fn compact(&mut self, index: u64) {
        if let Some((t, h)) = self.get(index) {
            let n = (index - self.base) as usize;
            self.ents.drain(..n);
            self.base = index;
            self.base_term = t;
            self.base_hash = h;
        }
    }
}

/// The log positions an outstanding Ready adds: a snapshot and/or entries
/// that replace the durable log from `first` on.
#[derive(Debug, Default)]
pub struct PendingLog {
    pub snap: Option<(u64, u64, u64)>,
    pub first: u64,
    pub ents: Vec<(u64, u64)>,
}

impl PendingLog {
    /// Chain-hashes the snapshot and entries of `rd` on top of `durable`.
    pub fn build(durable: &LogChain, rd: &Ready) -> Result<PendingLog, String> {
        let mut p = PendingLog::default();
        if let Some(s) = &rd.snapshot {
            let sm = StateMachine::decode(&s.data)?;
            if sm.applied != s.meta.index {
                return Err(format!(
                    "snapshot at {} carries state applied to {}",
                    s.meta.index, sm.applied
                ));
            }
            p.snap = Some((s.meta.index, s.meta.term, sm.hash));
        }
        let Some(e0) = rd.entries.first() else {
            return Ok(p);
        };
        p.first = e0.index;
        let mut prev = match p.get_below(e0.index - 1, durable) {
            Some((_, h)) => h,
            None => {
                return Err(format!(
                    "Ready entries start at {} but the log has no entry {}",
                    e0.index,
                    e0.index - 1
                ))
            }
        };
        for (k, e) in rd.entries.iter().enumerate() {
            if e.index != e0.index + k as u64 {
                return Err(format!("Ready entries are not contiguous at {}", e.index));
            }
            prev = chain(prev, e.index, e.term, fingerprint(e.kind, &e.data));
            p.ents.push((e.term, prev));
        }
        Ok(p)
    }

    /// The log below `first` as it will be once this is persisted.
    fn get_below(&self, i: u64, durable: &LogChain) -> Option<(u64, u64)> {
        match self.snap {
            Some((si, st, sh)) => (i == si).then_some((st, sh)),
            None => durable.get(i),
        }
    }

    pub fn get(&self, i: u64, durable: &LogChain) -> Option<(u64, u64)> {
        if !self.ents.is_empty() && i >= self.first {
            return self.ents.get((i - self.first) as usize).copied();
        }
        self.get_below(i, durable)
    }

    pub fn last(&self, durable: &LogChain) -> u64 {
        if !self.ents.is_empty() {
            return self.first + self.ents.len() as u64 - 1;
        }
        match self.snap {
            Some((si, _, _)) => si,
            None => durable.last(),
        }
    }

    pub fn base(&self, durable: &LogChain) -> u64 {
        match self.snap {
            Some((si, _, _)) => si,
            None => durable.base,
        }
    }
}

/// A Ready the application has taken and not yet advanced.
pub struct Outstanding {
    pub rd: Ready,
    pub log: PendingLog,
    pub persisted: bool,
}

/// One server of the simulated cluster.
pub struct SimNode {
    pub id: u64,
    /// The durable state; the only thing that survives a crash.
    pub storage: MemStorage,
    /// The running core, `None` while the node is down.
    pub raw: Option<RawNode<MemStorage>>,
    /// Bumped on every crash, so late transport reports from a dead
    /// process are not delivered to its successor.
    pub incarnation: u64,
    pub outstanding: Option<Outstanding>,
    pub sm: StateMachine,
    /// Membership as of `sm.applied`, as the application tracks it.
    pub conf: ConfState,
    /// Chain hashes of the durable log.
    pub log: LogChain,
    /// Index of the durable snapshot (0 if none).
    pub snap_index: u64,
    /// The durable damage marker: set when the node lost state (`true`: its
    /// hard state too), cleared once a Ready with `recovery_done` is
    /// persisted. While set, every start recovers.
    pub damaged: Option<bool>,
    /// A membership change may sit in the core's log, not yet handed out in
    /// a Ready: one was proposed here, or arrived in a message, since the
    /// last Ready was taken.
    pub conf_unstable: bool,
}

impl SimNode {
    pub fn new(id: u64, storage: MemStorage, conf: ConfState) -> SimNode {
        SimNode {
            id,
            storage,
            raw: None,
            incarnation: 0,
            outstanding: None,
            conf_unstable: false,
            sm: StateMachine::default(),
            conf,
            log: LogChain::default(),
            snap_index: 0,
            damaged: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }

    /// Whether the application loop has a stage to run.
    pub fn has_work(&self) -> bool {
        match &self.raw {
            None => false,
            Some(raw) => self.outstanding.is_some() || raw.has_ready(),
        }
    }

    /// The node's log as far as the application has seen it: durable
    /// storage overlaid with the outstanding Ready's unpersisted part.
    pub fn log_get(&self, i: u64) -> Option<(u64, u64)> {
        match &self.outstanding {
            Some(o) if !o.persisted => o.log.get(i, &self.log),
            _ => self.log.get(i),
        }
    }

    pub fn log_last(&self) -> u64 {
        match &self.outstanding {
            Some(o) if !o.persisted => o.log.last(&self.log),
            _ => self.log.last(),
        }
    }

    pub fn log_base(&self) -> u64 {
        match &self.outstanding {
            Some(o) if !o.persisted => o.log.base(&self.log),
            _ => self.log.base,
        }
    }

    /// Restores the state machine as a restart would: from the durable snapshot.
    pub fn recover_state_machine(&mut self) -> Result<(), String> {
        let snap: Snapshot = self
            .storage
            .snapshot()
            .map_err(|e| format!("reading the durable snapshot: {e}"))?;
        if snap.meta.index == 0 {
            self.sm = StateMachine::default();
            self.conf = self.storage.initial_state().1;
        } else {
            self.sm = StateMachine::decode(&snap.data)?;
            self.conf = snap.meta.conf_state.clone();
        }
        Ok(())
    }
}
