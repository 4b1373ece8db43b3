//! Recovery of a node that lost durable state: a damaged log, a damaged or
//! missing snapshot, a hard state that may be gone, or a wiped data dir.
//!
//! Raft's safety rests on every node keeping what it persisted: its votes
//! (one per term) and the entries it acknowledged (a commit counts them).
//! A node that lost some of that must neither pretend it still has it nor
//! throw it away on its own (FAST'17, "Redundancy Does Not Imply Fault
//! Tolerance"). Following protocol-aware recovery (FAST'18, Alagappan et
//! al.; TigerBeetle's `recovering_head`), such a node keeps what it can
//! prove good, stays out of every decision, and is repaired by the leader.
//!
//! # The protocol
//!
//! The application starts the core with a [`RecoveryStart`]: a random id
//! fresh for this process, and whether the term and vote may be lost.
//!
//! 1. **While recovering** the node never campaigns, grants no vote (PreVote
//!    included), ignores `TimeoutNow`, and tags every `AppendResponse` and
//!    `HeartbeatResponse` of this process with its id.
//! 2. **Terms** (only if the hard state may be lost). The node asks every
//!    voter of its configuration for its term (`TermQuery`, repeated every
//!    election timeout to those that have not answered) and stays at vote
//!    [`VOTE_LOST`] ("may have voted here") in every term it passes through.
//!    Once every other voter answered, `U` is the highest term reported (or
//!    its own, if higher): it moves to `U`, keeps `VOTE_LOST` there, and will
//!    vote again only in terms above `U`.
//! 3. **Repair.** To the leader it hears from, it answers only
//!    `Recovering{id, last_index, last_term}`, dropping what the leader
//!    sent. The leader replaces the node's progress (probe from its real
//!    last index, `matched = 0`), counts it in no commit or read quorum,
//!    drops every answer of the node that does not carry `id`, and replies
//!    `RecoveryAck{id, target}` with `target` = the leader's **last** index.
//!    From then on the node takes appends and snapshots as usual.
//! 4. **Exit**, when (a) the terms are known (or were never lost), (b) the
//!    leader of the current term acknowledged this recovery, and (c) the
//!    node holds, durably, the leader's log up to `target`. Once that end
//!    is persisted, the node tells the leader (`RecoveryDone{id}`), and only
//!    then does the leader count it again. Holding `target` is not enough
//!    for the leader to decide alone: it cannot know (a). The leader repeats
//!    its `RecoveryAck` on heartbeat answers while it waits, so that a lost
//!    `RecoveryDone` is sent again.
//!
//! # Why the node cannot vote twice in a term
//!
//! A vote for candidate `C` in term `t` was given only after `C` persisted
//! term `t` (it became candidate first), and terms never go back on a node
//! with intact storage. So `C`'s report is at least `t`, and `U >= t`. The
//! node refuses every term below `U` by the term rule, and `U` itself by
//! `VOTE_LOST`, which is persisted with the hard state. So it never votes
//! again in any term where it may have voted.
//!
//! - *The lost record held the newest vote*: the case above.
//! - *It voted in a term higher than any the cluster knows*: the same
//!   argument; this is why **every** voter must report, not a majority. A
//!   candidate `C` cut off from the node but not from the others could still
//!   win `t` with the lost vote, and a majority query could miss `C`. The
//!   price is availability: with a voter down, the node stays recovering
//!   (its data safe) until that voter answers.
//! - A vote for *itself* in an unknown term is harmless: that candidacy
//!   died with the process, and the node only ever campaigns in terms above
//!   `U`, so a late grant for it can never be counted.
//!
//! # Why no committed entry is lost
//!
//! **Lemma.** While damaged nodes abstain, any leader that can be elected
//! holds every committed entry. Let `D` be the damaged, not yet repaired
//! voters, `q` the quorum, and `e` an entry committed with quorum `Qe`. An
//! election quorum `Q` avoids `D` (they grant no votes), and
//! `|Q| + |Qe \ D| >= 2q - |D| > n - |D|`, so `Q` meets `Qe \ D`: some voter
//! of `Q` holds `e` and, by §5.4.3, so does the winner. If `|D| >= q`, fewer
//! than `q` nodes can vote and no leader is elected at all.
//!
//! *Commits.* A leader counts a recovering node in no quorum, and ignores
//! its untagged answers, which include acknowledgements the node sent
//! before it lost the entries. Once the node holds `target` (the leader's
//! last index when it reset the node), every acknowledgement it ever gave
//! in this term is true again, because the leader held those indexes at
//! the reset and never truncates its own log. `target` is the leader's last
//! index, not its commit index: an entry the node acknowledged before the
//! loss may be committed (by a stale leader counting that old ack, or by a
//! predecessor) and still lie above the current leader's commit index. It
//! is in the current leader's log (Lemma), and the node must hold it before
//! it counts or votes again.
//!
//! *A stale leader repairs the node* (the simulation found this case). The
//! node's lost vote made a newer leader, in term `t`, that a partition
//! hides from it; the stale leader of term `t - 1` still reaches it and
//! repairs it. Were the node's acknowledgements counted as soon as it held
//! the stale leader's log, the stale leader could commit entries of term
//! `t - 1` that the newer leader's log contradicts. The node holds no
//! report from the newer leader, so (a) keeps it recovering: it never says
//! `RecoveryDone`, and the stale leader never counts it. Once the report
//! arrives, the node is in term `t` and must be acknowledged again by that
//! term's leader.
//!
//! *Another member crashes during the repair*: nothing depends on timing.
//! A crashed voter only delays the term reports. A crashed leader: the
//! node announces itself to the next one, which was elected without it
//! (Lemma), holds every committed entry, and resets it with a new target;
//! answers tagged for the old leader's reset carry the same id but are
//! from an older term and dropped by the term rule.
//!
//! *Two members damaged at once*: both abstain, and the Lemma holds for any
//! `D`. With two of three damaged no leader can be elected unless one is in
//! place; the cluster is then unavailable, never lossy.
//!
//! Not covered: a member removed from the configuration, still running,
//! partitioned and campaigning in its old configuration, is not asked for
//! its term.

use std::collections::BTreeMap;

use super::types::NodeId;

/// The vote of a node that may have voted in this term and does not know
/// for whom: it never votes here. Never a node id (ids stop below it).
pub const VOTE_LOST: NodeId = u64::MAX;

/// How a node that lost durable state starts; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryStart {
    /// Random, fresh for every process start that recovers; never 0.
    pub id: u64,
    /// The persisted term and vote may be lost: the node must learn every
    /// voter's term before it votes again.
    pub hard_state_lost: bool,
}

/// Where a recovering node is, for STATUS and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryPhase {
    /// Waiting for the term of these voters.
    AwaitingTerms { missing: Vec<NodeId> },
    /// Waiting for a leader to acknowledge the recovery.
    AwaitingLeader,
    /// Catching up with the leader: holds `matched` of `target`.
    CatchingUp { matched: u64, target: u64 },
}

/// The follower side of a recovery (see the module docs).
#[derive(Clone, Debug)]
pub(super) struct Recovery {
    pub id: u64,
    /// Terms reported by other voters; `None` once they are all known (or
    /// if the hard state was never lost).
    pub reports: Option<BTreeMap<NodeId, u64>>,
    /// Ticks since the term query was last sent.
    pub query_elapsed: usize,
    /// The leader and term that acknowledged this recovery, with its target.
    pub acked: Option<Acked>,
    /// Highest index known to match that leader's log.
    pub matched: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Acked {
    pub leader: NodeId,
    pub term: u64,
    pub target: u64,
}

impl Recovery {
    pub fn new(start: RecoveryStart) -> Recovery {
        Recovery {
            id: start.id,
            reports: start.hard_state_lost.then(BTreeMap::new),
            query_elapsed: 0,
            acked: None,
            matched: 0,
        }
    }

    /// Whether the leader `leader` of `term` has acknowledged us.
    pub fn acked_by(&self, leader: NodeId, term: u64) -> bool {
        self.acked
            .is_some_and(|a| a.leader == leader && a.term == term)
    }
}
