//! The Raft consensus core: a pure, deterministic state machine.
//!
//! This module is the Rust counterpart of etcd's raft package. It implements
//! the algorithm of the Raft paper and Diego Ongaro's thesis for one node and
//! does nothing else: no files, sockets, threads, clocks or global randomness.
//! Time arrives as `tick()`, the network as `step(message)`, clients as
//! `propose(data)` and `read_index(context)`; everything the core wants done
//! comes back out as a [`Ready`], and the application reports completion with
//! `advance()`. The same inputs, including the seed in [`Config`], always give
//! the same outputs, so whole clusters can be simulated and replayed.
//!
//! Layout, bottom up:
//! - `types`, `message`: the data: entries, hard state, membership, messages;
//! - `storage`: the [`Storage`] trait for the stable log, and [`MemStorage`];
//! - `log_unstable`, `log`: the log as the core sees it, stable plus unstable;
//! - `progress`: per-follower replication state and quorum counting;
//! - `read_only`: the ReadIndex protocol;
//! - `recovery`: repairing a node that lost durable state, and why it is safe;
//! - `strangers`: whom the node listens to, and how far one message moves its term;
//! - `raft`: the role state machines and the term rule;
//! - `rawnode`: the Ready/Advance contract the application programs against.
//!
//! See `raft.rs` for the paper sections followed and the implementation caveats.

mod log;
mod log_unstable;
mod message;
mod progress;
// Named after etcd's raft/raft.go, which it mirrors.
#[allow(clippy::module_inception)]
mod raft;
mod rawnode;
mod read_only;
mod recovery;
mod rng;
mod storage;
mod strangers;
mod types;

pub use self::message::{Message, MessageBody};
pub use self::progress::ProgressState;
pub use self::raft::{Config, DropReason, Error, MAX_TERM};
pub use self::rawnode::{PeerProgress, RawNode, Ready, Status};
pub use self::recovery::{RecoveryPhase, RecoveryStart, VOTE_LOST};
pub use self::rng::Rng;
pub use self::storage::{MemStorage, Storage, StorageError};
pub use self::strangers::{MAX_ASKED, MAX_TERM_JUMP, MAX_VOUCHED};
pub use self::types::{
    ConfChange, ConfChangeKind, ConfState, DecodeError, Entry, EntryKind, HardState, NodeId,
    ReadState, Role, Snapshot, SnapshotMeta, SoftState, NO_NODE,
};
