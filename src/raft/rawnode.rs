//! The application's handle on the core: [`RawNode`] and the Ready/Advance
//! contract of etcd's raft (`doc.go`).
//!
//! The application drives a `RawNode` with `tick`, `step`, `propose`,
//! `read_index` and friends. Whenever [`RawNode::has_ready`] is true it takes
//! a [`Ready`] and, in this order:
//!
//! 1. persists `snapshot` (if any), then `entries` and `hard_state`, with an
//!    fsync when `must_sync` is set;
//! 2. sends `messages` (these may go before step 1, as a leader writes its log
//!    in parallel with replication) and, only after step 1, `persisted_messages`;
//! 3. applies `snapshot` and then `committed_entries` to its state machine,
//!    calling [`RawNode::apply_conf_change`] for conf-change entries, and
//!    serves `read_states` once it has applied up to their index;
//! 4. calls [`RawNode::advance`].
//!
//! Only one Ready is outstanding at a time: `has_ready` is false between
//! `ready` and `advance`. Meanwhile the node keeps accepting messages and
//! proposals; their effects go into the next Ready.

use std::collections::BTreeMap;

use super::message::Message;
use super::progress::ProgressState;
use super::raft::{Config, Error, Raft};
use super::recovery::RecoveryPhase;
use super::storage::Storage;
use super::types::{
    ConfChange, ConfState, Entry, EntryKind, HardState, NodeId, ReadState, Snapshot, SoftState,
};

/// Everything the application must do for the core, in one batch.
#[derive(Debug, Default)]
pub struct Ready {
    /// The new leader and role, if they changed.
    pub soft_state: Option<SoftState>,
    /// The hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Answered read-index requests.
    pub read_states: Vec<ReadState>,
    /// Entries to persist before sending `persisted_messages`. An entry at
    /// index i replaces any persisted entries at i and above.
    pub entries: Vec<Entry>,
    /// A snapshot to persist and apply before anything else, if any.
    pub snapshot: Option<Snapshot>,
    /// Committed entries to apply, in order. Some may be in `entries` of this
    /// same Ready: persist first, then apply.
    pub committed_entries: Vec<Entry>,
    /// Messages that may be sent at once (a leader's appends and heartbeats).
    pub messages: Vec<Message>,
    /// Messages to send only after this Ready is persisted (acknowledgements,
    /// votes and anything else a follower or candidate says).
    pub persisted_messages: Vec<Message>,
    /// Whether the hard state's term or vote, or the entries, must be
    /// fsynced before `persisted_messages` go out.
    pub must_sync: bool,
    /// The node finished recovering lost state (`recovery.rs`): once this
    /// Ready is persisted, the application may forget that it was damaged.
    pub recovery_done: bool,
}

/// A peer's replication progress as seen by the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
    pub is_learner: bool,
    pub recent_active: bool,
    /// Append messages sent and not yet acknowledged.
    pub inflight: usize,
    /// The peer is recovering lost state and counts in no quorum.
    pub recovering: bool,
}

/// A read-only view of the node, for STATUS and for tests.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub hard_state: HardState,
    pub soft_state: SoftState,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub conf_state: ConfState,
    /// Per-peer progress; empty unless this node is the leader.
    pub progress: BTreeMap<NodeId, PeerProgress>,
    pub lead_transferee: NodeId,
    /// Where a recovery of lost state is; `None` when not recovering.
    pub recovery: Option<RecoveryPhase>,
}

/// What was handed out in the outstanding Ready.
#[derive(Debug, Default)]
struct HandedOut {
    last_entry: Option<(u64, u64)>,
    snapshot_index: Option<u64>,
    applied_to: u64,
}

/// The core with the Ready/Advance bookkeeping.
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
    outstanding: Option<HandedOut>,
}

impl<S: Storage> RawNode<S> {
    /// Creates a node over `storage`, which holds whatever was recovered.
    pub fn new(config: &Config, storage: S) -> Result<RawNode<S>, Error> {
        let raft = Raft::new(config, storage)?;
        let prev_hard = raft.hard_state();
        let prev_soft = raft.soft_state();
        Ok(RawNode {
            raft,
            prev_soft,
            prev_hard,
            outstanding: None,
        })
    }

    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (PreVote first if enabled).
    pub fn campaign(&mut self) {
        self.raft.hup(false);
    }

    /// Processes a message from a peer. Never fails: bad messages are ignored.
    pub fn step(&mut self, m: Message) {
        self.raft.step(m);
    }

    /// Proposes one normal entry.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), Error> {
        self.raft.propose(vec![Entry::normal(data)])
    }

    /// Proposes several normal entries at once (one append, one broadcast).
    pub fn propose_batch(&mut self, data: Vec<Vec<u8>>) -> Result<(), Error> {
        self.raft
            .propose(data.into_iter().map(Entry::normal).collect())
    }

    /// Proposes a membership change. Refused while another is pending.
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<(), Error> {
        let e = Entry {
            index: 0,
            term: 0,
            kind: EntryKind::ConfChange,
            data: cc.encode(),
        };
        self.raft.propose(vec![e])
    }

    /// Applies a committed conf change; returns the new membership.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> ConfState {
        self.raft.apply_conf_change(cc)
    }

    /// Requests a linearizable read point for `context` (unique cluster-wide).
    pub fn read_index(&mut self, context: Vec<u8>) -> Result<(), Error> {
        self.raft.read_index(context)
    }

    /// Asks the leader to hand leadership to `target`.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), Error> {
        self.raft.transfer_leader(target)
    }

    pub fn report_unreachable(&mut self, id: NodeId) {
        self.raft.report_unreachable(id);
    }

    pub fn report_snapshot(&mut self, id: NodeId, success: bool) {
        self.raft.report_snapshot(id, success);
    }

    /// The current role and known leader, cheaply.
    pub fn soft_state(&self) -> SoftState {
        self.raft.soft_state()
    }

    /// The voter leadership is being handed to, or [`NO_NODE`](super::NO_NODE)
    /// when no transfer is in progress. Proposals are refused meanwhile.
    pub fn lead_transferee(&self) -> NodeId {
        self.raft.lead_transferee
    }

    /// Ids heard though they are outside the configuration, because a member
    /// vouched for them (`strangers.rs`); the transport lets them in too.
    pub fn vouched(&self) -> Vec<NodeId> {
        self.raft.vouched()
    }

    /// Changes whenever [`RawNode::vouched`] does.
    pub fn vouched_generation(&self) -> u64 {
        self.raft.vouched_generation()
    }

    /// The storage handle the core reads from.
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// Whether a Ready is waiting (and none is outstanding).
    pub fn has_ready(&self) -> bool {
        if self.outstanding.is_some() {
            return false;
        }
        let r = &self.raft;
        r.soft_state() != self.prev_soft
            || r.hard_state() != self.prev_hard
            || r.log.unstable.snapshot.is_some()
            || !r.log.unstable.entries.is_empty()
            || r.log.has_next_entries()
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
            || !r.read_states.is_empty()
            || r.recovered
    }

    /// Takes the pending work. Call [`RawNode::advance`] when it is done.
    ///
    /// # Panics
    /// If a Ready is already outstanding: that is a bug in the caller.
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.outstanding.is_none(),
            "ready() called before advance() of the previous Ready"
        );
        let r = &mut self.raft;
        let soft = r.soft_state();
        let hard = r.hard_state();
        let entries = r.log.unstable_entries().to_vec();
        let snapshot = r.log.unstable.snapshot.clone();
        let committed_entries = r.log.take_next_entries(r.max_committed_size_per_ready);
        let must_sync = hard.term != self.prev_hard.term
            || hard.vote != self.prev_hard.vote
            || !entries.is_empty()
            || snapshot.is_some();
        let rd = Ready {
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: (hard != self.prev_hard).then_some(hard),
            read_states: std::mem::take(&mut r.read_states),
            messages: std::mem::take(&mut r.msgs),
            persisted_messages: std::mem::take(&mut r.msgs_after_persist),
            must_sync,
            entries,
            snapshot,
            committed_entries,
            recovery_done: std::mem::take(&mut r.recovered),
        };
        self.prev_soft = soft;
        self.prev_hard = hard;
        let snapshot_index = rd.snapshot.as_ref().map(|s| s.meta.index);
        self.outstanding = Some(HandedOut {
            last_entry: rd.entries.last().map(|e| (e.index, e.term)),
            snapshot_index,
            applied_to: rd
                .committed_entries
                .last()
                .map(|e| e.index)
                .or(snapshot_index)
                .unwrap_or(0),
        });
        rd
    }

    /// Acknowledges that the last Ready was persisted, sent and applied.
    /// Without an outstanding Ready this does nothing.
    pub fn advance(&mut self) {
        let Some(h) = self.outstanding.take() else {
            return;
        };
        let log = &mut self.raft.log;
        if let Some(index) = h.snapshot_index {
            log.stable_snap_to(index);
        }
        if let Some((index, term)) = h.last_entry {
            log.stable_to(index, term);
            self.raft.on_persisted(index, term);
        }
        if h.applied_to > 0 {
            self.raft.log.applied_to(h.applied_to);
        }
        // A recovery may end once what it caught up with is durable.
        self.raft.maybe_finish_recovery();
    }

    /// A snapshot of the node's state.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = if r.role == super::types::Role::Leader {
            r.prs
                .progress
                .iter()
                .map(|(&id, p)| {
                    let view = PeerProgress {
                        matched: p.matched,
                        next: p.next,
                        state: p.state,
                        is_learner: p.is_learner,
                        recent_active: p.recent_active,
                        inflight: p.inflights.count(),
                        recovering: p.recovery.is_some(),
                    };
                    (id, view)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: r.id,
            hard_state: r.hard_state(),
            soft_state: r.soft_state(),
            applied: r.log.applied,
            first_index: r.log.first_index(),
            last_index: r.log.last_index(),
            conf_state: r.prs.conf_state(),
            progress,
            lead_transferee: r.lead_transferee,
            recovery: r.recovery_phase(),
        }
    }
}
