//! Messages between Raft nodes, as a typed enum in an envelope.
//!
//! The envelope carries `from`, `to` and `term` so that the term rule of
//! Figure 2 ("if a message carries a higher term, adopt it and become
//! follower; if lower, ignore it") is applied once, in `Raft::step`, before
//! any role-specific handling. Each variant then carries only the fields it
//! needs, unlike etcd's single flat message struct.
//!
//! Forwarded client requests (`Propose`, `ReadIndex`, `TransferLeader`),
//! the term queries of a recovering node (`TermQuery`, `TermReport`) and the
//! membership questions about strangers (`MemberQuery`, `MemberReport`) carry
//! term 0: they are not part of any term's conversation and skip the term
//! rule, as local messages do in etcd.

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
        /// The recovery id of the answering process, 0 if it did not start
        /// by recovering lost state (see `recovery.rs`). A leader repairing
        /// that node counts only answers that carry the id it acknowledged.
        recovery: u64,
    },
    /// Leader → follower: keep-alive that carries a commit index the follower
    /// is known to be able to apply (min of its match and the leader's commit).
    Heartbeat {
        commit: u64,
        /// Read-index round this heartbeat confirms, empty if none.
        context: Vec<u8>,
    },
    /// Follower → leader: acknowledges a heartbeat.
    HeartbeatResponse {
        context: Vec<u8>,
        /// As in `AppendResponse`.
        recovery: u64,
    },
    /// Candidate → voter: RequestVote (§5.2), or a PreVote probe when `pre`.
    /// For a PreVote, the envelope term is the term the sender *would* use.
    RequestVote {
        pre: bool,
        last_index: u64,
        last_term: u64,
        /// Set when the election was started by a leadership transfer, so
        /// voters bypass their leader lease.
        transfer: bool,
        /// Identifies the candidate's process: its recovery id, 0 if it did
        /// not recover lost state. The answer echoes it, and a candidate
        /// counts only answers to its own campaigns: a grant to a request
        /// of a process that lost its state (same node, same term) was
        /// given for a log the node no longer has.
        campaign: u64,
    },
    /// Voter → candidate.
    RequestVoteResponse {
        pre: bool,
        reject: bool,
        /// The `campaign` of the request answered.
        campaign: u64,
    },
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
    /// A node that lost its term and vote → every voter: what is your term?
    /// (term 0: outside the term conversation.)
    TermQuery,
    /// The answer to `TermQuery`: the sender's current term (term 0).
    TermReport { term: u64 },
    /// A node that lost state → the leader it hears from: reset my
    /// progress, count me in no quorum, and tell me what to catch up to.
    Recovering {
        /// Fresh for every process start that recovers.
        id: u64,
        /// The sender's log as it is now.
        last_index: u64,
        last_term: u64,
    },
    /// Leader → recovering node: progress reset for recovery `id`; the node
    /// is repaired once it holds the leader's log up to `target`.
    RecoveryAck { id: u64, target: u64 },
    /// Repaired node → the leader that acknowledged it (after persisting):
    /// recovery `id` is over; count me again. Also the answer to a repeated
    /// `RecoveryAck` once over, in case the first copy was lost.
    RecoveryDone { id: u64 },
    /// A node that dropped messages from ids outside its configuration →
    /// every voter it knows: are these members of yours? (term 0; see
    /// `strangers.rs`).
    MemberQuery { ids: Vec<NodeId> },
    /// The answer to `MemberQuery`: the asked ids that are members of the
    /// sender's configuration, and the leader the sender follows if it is
    /// one (term 0).
    MemberReport { members: Vec<NodeId> },
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
            MessageBody::TermQuery => "term_query",
            MessageBody::TermReport { .. } => "term_report",
            MessageBody::Recovering { .. } => "recovering",
            MessageBody::RecoveryAck { .. } => "recovery_ack",
            MessageBody::RecoveryDone { .. } => "recovery_done",
            MessageBody::MemberQuery { .. } => "member_query",
            MessageBody::MemberReport { .. } => "member_report",
        }
    }

    /// Whether this message carries term 0 and stays outside the term
    /// conversation: a forwarded client request, or a term query.
    pub fn outside_terms(&self) -> bool {
        matches!(
            self,
            MessageBody::Propose { .. }
                | MessageBody::ReadIndex { .. }
                | MessageBody::TransferLeader { .. }
                | MessageBody::TermQuery
                | MessageBody::TermReport { .. }
                | MessageBody::MemberQuery { .. }
                | MessageBody::MemberReport { .. }
        )
    }
}
