//! raftnode: a Raft-replicated key-value node.
//!
//! - [`raft`]: the pure consensus core (no IO, no clock, no global randomness).

pub mod raft;
