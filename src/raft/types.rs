//! The plain data the consensus core deals in: log entries, the durable hard
//! state, membership, snapshot metadata and conf changes.
//!
//! Everything here is a value type with no behaviour beyond small helpers and a
//! compact binary encoding for conf changes (which travel inside log entries).
//! The core never serialises entries or messages itself; the transport and the
//! WAL own their wire and disk formats.

use std::fmt;

/// A node's identity. Ids are integers >= 1, unique for all time; 0 means "none".
pub type NodeId = u64;

/// The id that stands for "no node": no vote cast, no leader known.
pub const NO_NODE: NodeId = 0;

/// What an entry's data means to the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Opaque application data (an empty normal entry is what a new leader
    /// appends to commit entries of earlier terms, §5.4.2).
    Normal,
    /// An encoded [`ConfChange`]; takes effect when applied.
    ConfChange,
}

impl EntryKind {
    /// The kind as one byte, for storage and wire formats.
    pub fn to_byte(self) -> u8 {
        match self {
            EntryKind::Normal => 0,
            EntryKind::ConfChange => 1,
        }
    }

    /// Parses a byte written by [`EntryKind::to_byte`]; `None` for anything else.
    pub fn from_byte(b: u8) -> Option<EntryKind> {
        match b {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::ConfChange),
            _ => None,
        }
    }
}

/// One slot of the replicated log.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub index: u64,
    /// Term of the leader that created the entry.
    pub term: u64,
    /// How the application should read `data`.
    pub kind: EntryKind,
    /// The payload; empty for a leader's no-op entry.
    pub data: Vec<u8>,
}

impl Entry {
    /// A normal entry; index and term are assigned by the leader on append.
    pub fn normal(data: Vec<u8>) -> Entry {
        Entry {
            index: 0,
            term: 0,
            kind: EntryKind::Normal,
            data,
        }
    }

    /// Approximate encoded size, used to cap message and batch sizes.
    pub fn size(&self) -> usize {
        self.data.len() + 24
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            EntryKind::Normal => "",
            EntryKind::ConfChange => " conf",
        };
        write!(f, "{}/{}{}", self.index, self.term, kind)?;
        if !self.data.is_empty() {
            match std::str::from_utf8(&self.data) {
                Ok(s) if s.len() <= 32 && self.kind == EntryKind::Normal => write!(f, " {s:?}")?,
                _ => write!(f, " <{} bytes>", self.data.len())?,
            }
        }
        Ok(())
    }
}

/// The state a node must persist before it answers anyone (Figure 2's
/// "persistent state"), plus the commit index so a restart need not relearn it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate voted for in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    /// Highest index known committed (never decreases).
    pub commit: u64,
}

/// The membership: who votes, and who only receives the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    /// Voting members, sorted and without duplicates.
    pub voters: Vec<NodeId>,
    /// Non-voting members (learners), sorted, disjoint from `voters`.
    pub learners: Vec<NodeId>,
}

impl ConfState {
    /// A configuration of the given voters and no learners.
    pub fn with_voters(mut voters: Vec<NodeId>) -> ConfState {
        voters.sort_unstable();
        voters.dedup();
        ConfState {
            voters,
            learners: Vec::new(),
        }
    }

    /// Whether `id` is a voter or learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// What a snapshot stands for: the log up to and including `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index the snapshot covers.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// Membership as of `index`.
    pub conf_state: ConfState,
}

/// A snapshot: metadata and the application's serialised state, opaque to the core.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

impl Snapshot {
    /// The empty snapshot at index 0 stands for "no snapshot".
    pub fn is_empty(&self) -> bool {
        self.meta.index == 0
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "snapshot {}/{} voters={:?} learners={:?} <{} bytes>",
            self.meta.index,
            self.meta.term,
            self.meta.conf_state.voters,
            self.meta.conf_state.learners,
            self.data.len()
        )
    }
}

/// A single-server membership change (§6 of the Raft thesis, §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeKind {
    /// Add `node_id` as a voter, or promote it if it is a learner.
    AddNode,
    /// Remove `node_id`, voter or learner.
    RemoveNode,
    /// Add `node_id` as a learner (ignored if it is already a voter).
    AddLearner,
}

/// A membership change proposal, carried in an [`EntryKind::ConfChange`] entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChange {
    pub kind: ConfChangeKind,
    pub node_id: NodeId,
    /// Opaque application data, e.g. the new member's address.
    pub context: Vec<u8>,
}

/// Why a conf change entry could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed conf change: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl ConfChange {
    /// Encoding: kind (1 byte: 0 add, 1 remove, 2 add learner), node id
    /// (8 bytes little-endian), then the context bytes to the end.
    pub fn encode(&self) -> Vec<u8> {
        let kind = match self.kind {
            ConfChangeKind::AddNode => 0u8,
            ConfChangeKind::RemoveNode => 1,
            ConfChangeKind::AddLearner => 2,
        };
        let mut out = Vec::with_capacity(9 + self.context.len());
        out.push(kind);
        out.extend_from_slice(&self.node_id.to_le_bytes());
        out.extend_from_slice(&self.context);
        out
    }

    /// Decodes [`ConfChange::encode`]'s output; never panics on bad input.
    pub fn decode(data: &[u8]) -> Result<ConfChange, DecodeError> {
        if data.len() < 9 {
            return Err(DecodeError("shorter than 9 bytes"));
        }
        let kind = match data[0] {
            0 => ConfChangeKind::AddNode,
            1 => ConfChangeKind::RemoveNode,
            2 => ConfChangeKind::AddLearner,
            _ => return Err(DecodeError("unknown kind")),
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&data[1..9]);
        let node_id = u64::from_le_bytes(id);
        if node_id == NO_NODE {
            return Err(DecodeError("node id 0"));
        }
        Ok(ConfChange {
            kind,
            node_id,
            context: data[9..].to_vec(),
        })
    }
}

/// A node's role in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Running a PreVote round (§9.6 of the thesis) without bumping its term.
    PreCandidate,
    Candidate,
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::PreCandidate => "precandidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// Volatile state the application may want to observe; need not be persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The leader this node knows of in its term, or [`NO_NODE`].
    pub leader: NodeId,
    pub role: Role,
}

/// The answer to a read-index request: once the application has applied up to
/// `index`, a read issued with `context` may be served from local state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub context: Vec<u8>,
}
