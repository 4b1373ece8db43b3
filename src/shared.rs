//! The little state that really crosses threads, each piece with one writer.
//!
//! | what | written by | read by |
//! | --- | --- | --- |
//! | the known leader | node thread | client threads (`ERR NO_LEADER` vs `ERR TIMEOUT`) |
//! | the newest snapshot (index, file) | ready thread | STATUS, peer senders (to stream it) |
//! | requests waiting for their entry | client threads register, ready and node threads answer | |
//! | stopping | node thread | client threads (refuse new requests) |
//!
//! Everything else belongs to one thread: the core and the request policy
//! to the node thread, the WAL, the KV store and reads to the ready thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::raft::{NodeId, NO_NODE};
use crate::reply::Pending;

#[derive(Default)]
pub struct Shared {
    leader: AtomicU64,
    snapshot: Mutex<(u64, Option<PathBuf>)>,
    pending: Pending,
    stopping: AtomicBool,
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
}
