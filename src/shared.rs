//! The little state that really crosses threads, each piece with one writer.
//!
//! | what | written by | read by |
//! | --- | --- | --- |
//! | the known leader | node thread | client threads (`ERR NO_LEADER` vs `ERR TIMEOUT`) |
//! | the newest snapshot (index, file) | ready thread | STATUS, peer senders (to stream it) |
//! | requests waiting for their entry | client threads register, ready and node threads answer | |
//! | stopping | node thread | client threads (refuse new requests) |
//! | membership, cluster ID | ready thread | transport (who may connect) |
//! | ids a member vouched for (`raft/strangers.rs`) | node thread | transport (who may connect) |
//! | removed | ready thread, transport | client server (`ERR REMOVED`) |
//! | persisted term and last index | ready thread | transport (answers probes) |
//! | how many client sessions are open | ready thread | node thread (a leader stamps log time while any are) |
//! | keys held | ready thread | RESP `INFO keyspace` |
//!
//! Everything else belongs to one thread: the core and the request policy
//! to the node thread, the WAL, the KV store and reads to the ready thread.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::raft::{NodeId, NO_NODE};
use crate::reply::Pending;

/// Who may connect to this node's raft port, as far as this node knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The cluster ID, 0 while this node has not learned it.
    pub cluster_id: u64,
    /// Voters, learners, and every node in the address book.
    pub members: BTreeSet<NodeId>,
    /// Nodes removed for good.
    pub removed: BTreeSet<NodeId>,
}

#[derive(Default)]
pub struct Shared {
    leader: AtomicU64,
    snapshot: Mutex<(u64, Option<PathBuf>)>,
    pending: Pending,
    stopping: AtomicBool,
    membership: Mutex<Arc<Membership>>,
    vouched: Mutex<Arc<BTreeSet<NodeId>>>,
    /// Bumped whenever `membership` changes, so readers re-check cheaply.
    membership_generation: AtomicU64,
    removed: AtomicBool,
    /// Set once the data dir is open: this node runs a cluster.
    running: AtomicBool,
    persisted_term: AtomicU64,
    persisted_last: AtomicU64,
    sessions: AtomicU64,
    keys: AtomicU64,
}

impl Shared {
    /// The leader this node knows of, [`NO_NODE`] if none.
    pub fn leader(&self) -> NodeId {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn has_leader(&self) -> bool {
        self.leader() != NO_NODE
    }

    pub fn set_leader(&self, id: NodeId) {
        self.leader.store(id, Ordering::Relaxed);
    }

    fn snapshot(&self) -> std::sync::MutexGuard<'_, (u64, Option<PathBuf>)> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Index of the newest snapshot (0 if none), for STATUS.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot().0
    }

    /// The newest snapshot file, which peer senders stream from.
    pub fn snapshot_file(&self) -> Option<PathBuf> {
        self.snapshot().1.clone()
    }

    pub fn publish_snapshot(&self, index: u64, file: Option<PathBuf>) {
        *self.snapshot() = (index, file);
    }

    /// Requests waiting for their entry to apply.
    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    /// Whether the node is stopping: new requests are refused.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Who may connect, as last published.
    pub fn membership(&self) -> Arc<Membership> {
        self.membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes with every new membership: a reader that saw generation g
    /// need not look again while it stays g.
    pub fn membership_generation(&self) -> u64 {
        self.membership_generation.load(Ordering::Acquire)
    }

    pub fn publish_membership(&self, m: Membership) {
        let mut cur = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        if **cur != m {
            *cur = Arc::new(m);
            self.membership_generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Ids outside the configuration that the core listens to because a
    /// member vouched for them.
    pub fn vouched(&self) -> Arc<BTreeSet<NodeId>> {
        self.vouched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn publish_vouched(&self, ids: BTreeSet<NodeId>) {
        *self.vouched.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(ids);
    }

    /// Whether this node was removed from the cluster.
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub fn set_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// The term and last index this node has persisted (for probes).
    pub fn publish_persisted(&self, term: u64, last_index: u64) {
        self.persisted_term.store(term, Ordering::Relaxed);
        self.persisted_last.store(last_index, Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
    }

    /// How many keys the store held after the last Ready applied (a local
    /// view, for RESP's `INFO`; `DBSIZE` reads linearizably instead).
    pub fn keys(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }

    pub fn publish_keys(&self, n: u64) {
        self.keys.store(n, Ordering::Relaxed);
    }

    /// Whether the data dir is open. Before, the node may be waiting for
    /// its peers (a new cluster) or replaying its log, and runs no Raft.
    pub fn started(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// `(term, last index)` once the data dir is open, `None` before.
    pub fn persisted(&self) -> Option<(u64, u64)> {
        self.running.load(Ordering::Acquire).then(|| {
            (
                self.persisted_term.load(Ordering::Relaxed),
                self.persisted_last.load(Ordering::Relaxed),
            )
        })
    }

    /// How many client sessions the applied state holds.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn publish_sessions(&self, n: usize) {
        self.sessions.store(n as u64, Ordering::Relaxed);
    }
}
