//! Linearizable reads without log entries: the ReadIndex protocol of the
//! Raft thesis §6.4, in safe mode.
//!
//! A read request records the leader's commit index at the time it arrives.
//! The leader then broadcasts a heartbeat carrying the request's context; once
//! a quorum of voters has acknowledged that heartbeat, the leader knows it was
//! still the leader when the request arrived, so the recorded index is a safe
//! point to read at. Acknowledging a later request also confirms every earlier
//! one, so requests are kept in arrival order and released as a prefix.
//!
//! Contexts must be unique across the cluster (the application prefixes its
//! node id), since a follower's forwarded request lands in the same queue.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::types::NodeId;

#[derive(Debug)]
pub struct ReadIndexStatus {
    /// Who asked: this node, or the follower that forwarded the request.
    pub from: NodeId,
    pub context: Vec<u8>,
    /// Commit index when the request arrived.
    pub index: u64,
    pub acks: BTreeSet<NodeId>,
}

#[derive(Debug, Default)]
pub struct ReadOnly {
    pending: HashMap<Vec<u8>, ReadIndexStatus>,
    queue: VecDeque<Vec<u8>>,
}

impl ReadOnly {
    /// Queues a request unless one with the same context is already queued.
    pub fn add_request(&mut self, index: u64, from: NodeId, context: Vec<u8>) -> bool {
        if self.pending.contains_key(&context) {
            return false;
        }
        self.queue.push_back(context.clone());
        self.pending.insert(
            context.clone(),
            ReadIndexStatus {
                from,
                context,
                index,
                acks: BTreeSet::new(),
            },
        );
        true
    }

    /// Records an acknowledgement; returns the acks so far, if the context is known.
    pub fn recv_ack(&mut self, id: NodeId, context: &[u8]) -> Option<&BTreeSet<NodeId>> {
        let status = self.pending.get_mut(context)?;
        status.acks.insert(id);
        Some(&status.acks)
    }

    /// Removes and returns every request up to and including `context`.
    pub fn advance(&mut self, context: &[u8]) -> Vec<ReadIndexStatus> {
        let Some(pos) = self.queue.iter().position(|c| c.as_slice() == context) else {
            return Vec::new();
        };
        self.queue
            .drain(..=pos)
            .filter_map(|c| self.pending.remove(&c))
            .collect()
    }

    /// The context of the newest pending request, to piggyback on heartbeats.
    pub fn last_pending(&self) -> Option<&[u8]> {
        self.queue.back().map(|c| c.as_slice())
    }
}
