//! A deterministic test cluster over [`MemStorage`](raftnode::raft::MemStorage),
//! shared by the scenario scripts (`tests/scenario.rs`), the paper-section
//! tests and the malformed-message tests.
//!
//! - `fmt`: one-line renderings of entries, messages and node state, used in
//!   every trace;
//! - `cluster`: [`Cluster`], nodes plus a simulated network with partitions,
//!   driven through the public `RawNode` API only, writing a trace of what
//!   happens into a buffer;
//! - `script`: the small command language of the scenario files and the
//!   runner that compares (or rewrites) their expected traces.
//!
//! A node's Ready shows in a trace as `> ID ready` and one line for each
//! thing done with it, in the order the Ready contract asks:
//! `hardstate ...`, `snapshot ...`, `persist [entries]`, the messages sent,
//! `apply [entries]` (with `conf-change ...` lines) and `read-state ...`.
//! Messages from the Ready's `persisted_messages`, which may leave only
//! once the Ready is persisted (votes, acknowledgements, anything a
//! follower or candidate says), end in ` (after persist)`; the others may
//! go out before the node's own write, as a leader's appends do:
//!
//! ```text
//! > 2 ready
//!   hardstate term=1 vote=1 commit=0
//!   2->1 vote_response term=1 granted (after persist)
//! ```
//!
//! The harness always persists before it sends, so the marking is about what
//! the core demands, not about the order here.
//!
//! Each node's application is a toy key-value state machine: a normal entry
//! `put k=v` sets a key, conf-change entries are decoded and applied through
//! `RawNode::apply_conf_change`. The state machine (applied index, keys and
//! membership) survives a restart, as if the application snapshotted it
//! atomically with every apply; the Raft log and hard state survive only as far
//! as they were handed to storage.

pub mod cluster;
pub mod fmt;
pub mod script;

pub use cluster::{Cluster, Filter, Node, Options};

use raftnode::raft::{Entry, EntryKind, Message, MessageBody, NodeId};

/// A message from `from` to `to` at `term`, for stepping by hand.
pub fn msg(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// An append after `prev_index`/`prev_term` carrying `entries`.
pub fn append(prev_index: u64, prev_term: u64, entries: Vec<Entry>, commit: u64) -> MessageBody {
    MessageBody::Append {
        prev_index,
        prev_term,
        entries,
        commit,
    }
}

/// An empty normal entry at `index` of `term`, for logs built by hand.
pub fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Vec::new(),
    }
}
