//! Messages between Raft nodes, as a typed enum in an envelope.
//!
//! The envelope carries `from`, `to` and `term` so that the term rule of
//! Figure 2 ("if a message carries a higher term, adopt it and become
//! follower; if lower, ignore it") is applied once, in `Raft::step`, before
//! any role-specific handling. Each variant then carries only the fields it
//! needs, unlike etcd's single flat message struct.
//!
//! Forwarded client requests (`Propose`, `ReadIndex`, `TransferLeader`) carry
//! term 0: they are not part of any term's conversation and skip the term rule,
//! as local messages do in etcd.

use super::types::{Entry, NodeId, Snapshot};

/// A message with its routing and term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// Sender's term; 0 for forwarded client requests.
    pub term: u64,
    pub body: MessageBody,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Leader → follower: AppendEntries (§5.3). An empty `entries` probes.
    Append {
        /// Index of the entry immediately before `entries`.
        prev_index: u64,
        /// Term of the entry at `prev_index`.
        prev_term: u64,
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: u64,
    },
    /// Follower → leader: answer to `Append`, sent only once the entries are durable.
    AppendResponse {
        /// Accepted: the highest index now known to match the leader.
        /// Rejected: the `prev_index` of the rejected append.
        index: u64,
        reject: bool,
        /// On reject: the follower's best guess of the last index that may
        /// match (§5.3 optimisation), with the term it holds there.
        reject_hint: u64,
        hint_term: u64,
    },
    /// Leader → follower: keep-alive that carries a commit index the follower
    /// is known to be able to apply (min of its match and the leader's commit).
    Heartbeat {
        commit: u64,
        /// Read-index round this heartbeat confirms, empty if none.
        context: Vec<u8>,
    },
    /// Follower → leader: acknowledges a heartbeat.
    HeartbeatResponse { context: Vec<u8> },
    /// Candidate → voter: RequestVote (§5.2), or a PreVote probe when `pre`.
    /// For a PreVote, the envelope term is the term the sender *would* use.
    RequestVote {
        pre: bool,
        last_index: u64,
        last_term: u64,
        /// Set when the election was started by a leadership transfer, so
        /// voters bypass their leader lease.
        transfer: bool,
    },
    /// Voter → candidate.
    RequestVoteResponse { pre: bool, reject: bool },
    /// Leader → follower: InstallSnapshot (§7).
    Snapshot { snapshot: Snapshot },
    /// Leader → transfer target: campaign now, even if you heard from me.
    TimeoutNow,
    /// Follower → leader: client entries to append (term 0).
    Propose { entries: Vec<Entry> },
    /// Follower → leader: a read-index request (term 0).
    ReadIndex { context: Vec<u8> },
    /// Leader → follower: the read index for `context`.
    ReadIndexResponse { index: u64, context: Vec<u8> },
    /// Follower → leader: please hand leadership to `target` (term 0).
    TransferLeader { target: NodeId },
}

impl MessageBody {
    /// A short lowercase name, for logs and scenario traces.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::RequestVote { pre: true, .. } => "prevote",
            MessageBody::RequestVote { pre: false, .. } => "vote",
            MessageBody::RequestVoteResponse { pre: true, .. } => "prevote_response",
            MessageBody::RequestVoteResponse { pre: false, .. } => "vote_response",
            MessageBody::Snapshot { .. } => "snapshot",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::Propose { .. } => "propose",
            MessageBody::ReadIndex { .. } => "read_index",
            MessageBody::ReadIndexResponse { .. } => "read_index_response",
            MessageBody::TransferLeader { .. } => "transfer_leader",
        }
    }

    /// Whether this is a forwarded client request that carries term 0.
    pub fn is_forwarded_request(&self) -> bool {
        matches!(
            self,
            MessageBody::Propose { .. }
                | MessageBody::ReadIndex { .. }
                | MessageBody::TransferLeader { .. }
        )
    }
}
