//! Who this node listens to, and how far one message may move its term.
//!
//! **The rule.** A message from an id outside this node's configuration
//! never touches its term, vote, log, leader or snapshot. "Configuration"
//! is what this node's own log and snapshot say (the voters and learners in
//! [`ProgressTracker`](super::progress::ProgressTracker)), or what its
//! operator said; never what a sender claims. So two more kinds of ids are
//! heard, neither of which a sender controls:
//!
//! - **Listed ids.** The ids the operator named at start-up (`--peers`),
//!   less those the node knows were removed (the application leaves out the
//!   removed ids its state machine records, and a `RemoveNode` this node
//!   applies strikes the id too). A new member started with `--join`, or
//!   one whose disk was replaced, has no configuration at all until its
//!   leader's log gives it one, and hears that leader because it is listed.
//! - **Vouched ids.** A node whose configuration is stale (it missed the
//!   entry that added a member, say because it was down) may have to
//!   follow, or vote for, that member. It cannot take the member's word
//!   for it. Instead it asks the nodes it does know: when it drops a
//!   leader's or candidate's message from a stranger (and hears no leader
//!   of its own), it sends [`MemberQuery`](MessageBody::MemberQuery) with
//!   that id to every voter of its configuration and every listed id, at
//!   most once per election timeout. Any node answers with
//!   [`MemberReport`](MessageBody::MemberReport): the asked ids that are in
//!   *its* configuration, plus the leader it follows if that leader is one.
//!   An id that a node of this node's configuration (or a listed one)
//!   reports is *vouched*: heard from then on as if it were a member, until
//!   this node's own log catches up (then it is a member, or it was removed
//!   and is forgotten).
//!
//! Once a node follows a leader in a term, that leader's messages of that
//! term are heard even if applying the log moves the configuration past it
//! (a node replaying history passes through configurations its leader is
//! not in; and a removed leader still commits its own removal).
//!
//! **Why vouching keeps the rule's point.** The rule exists so that only
//! ids that a legitimate leader put into a configuration can influence this
//! node. Every id in this node's configuration is such an id: by induction
//! from the bootstrap membership, each configuration entry was appended by
//! a leader elected by members of the configuration before it. A member
//! reports only ids of its own log's configuration, which by the same
//! induction were put there by legitimate leaders (an uncommitted entry
//! included: it was still appended by a legitimate leader, on an operator's
//! `ADD_NODE`). So a vouched id is one the cluster itself added, and the
//! sender's claim plays no part. A listed id carries the operator's word,
//! the same authority as the `ADD_NODE` that wrote a configuration entry.
//! Raft's safety never depended on *which*
//! member a follower accepts appends from (any leader of a higher term is
//! legitimate in Raft's sense); this filter is about authenticity, and
//! vouching moves trust only from member to member. Liveness: a stale node
//! none of whose known members (configuration or listed) is still running
//! and current cannot be vouched for and stays behind; restart it with
//! `--peers` naming the current members, or remove and re-add it.
//!
//! The bookkeeping is bounded by the configuration, never by the strangers:
//! at most [`MAX_ASKED`] ids per query and [`MAX_VOUCHED`] vouched ids
//! (oldest forgotten first), and one query per election timeout, however
//! many ids a stranger sprays.
//!
//! **The term bound.** A heard message may raise this node's term by at
//! most [`MAX_TERM_JUMP`] above the higher of its own term and the term a
//! quorum of its voters has reported. A larger jump is dropped, logged at
//! most once per election timeout, and this node asks its voters for their
//! terms ([`TermQuery`](MessageBody::TermQuery)); once a quorum reports a
//! term at or above the message's, the jump is within reach and the next
//! such message is heard. So one message cannot exhaust the term space
//! (from 0, it takes 2^47 messages of maximal jumps to reach 2^63), yet a
//! node that really is far behind (a long-dead member, a new one joining a
//! cluster with a long history) still catches up, after one round trip.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::types::NodeId;

/// The most one message may raise this node's term above what it or a
/// quorum of its voters already hold.
pub const MAX_TERM_JUMP: u64 = 1 << 16;

/// Vouched ids kept at most; the oldest is forgotten first.
pub const MAX_VOUCHED: usize = 8;

/// Stranger ids asked about in one query at most.
pub const MAX_ASKED: usize = 4;

/// What [`Raft::hears`](super::raft::Raft) decided about a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hearing {
    /// Stepped as usual.
    Heard,
    /// Dropped: nothing about it concerns this node.
    Dropped,
    /// Dropped: a stranger would lead this node or win its vote. Worth
    /// asking the members whether it is one of them.
    Stranger,
    /// Dropped: the term is further above this node's than one message may
    /// move it. Worth asking the voters for their terms.
    OutOfReach,
}

/// The state behind the rule: listed and vouched ids, pending questions,
/// and the terms voters reported.
#[derive(Debug, Default)]
pub(super) struct Strangers {
    /// `--peers`, less the ids known to be removed.
    listed: BTreeSet<NodeId>,
    /// Ids a member reported as members of its configuration, oldest first.
    vouched: VecDeque<NodeId>,
    /// Strangers dropped since the last query, to ask about in the next.
    seen: Vec<NodeId>,
    /// When (in ticks) members were last asked about strangers.
    asked_at: Option<u64>,
    /// When (in ticks) voters were last asked for their terms because of a
    /// jump out of reach.
    terms_asked_at: Option<u64>,
    /// The highest term each voter reported (kept for voters only).
    reported: BTreeMap<NodeId, u64>,
    /// Bumped whenever `vouched` changes, so the application republishes
    /// it only then.
    generation: u64,
}

impl Strangers {
    pub(super) fn new(listed: BTreeSet<NodeId>) -> Strangers {
        Strangers {
            listed,
            ..Strangers::default()
        }
    }

    /// The ids the operator listed, less those known to be removed.
    pub(super) fn listed(&self) -> &BTreeSet<NodeId> {
        &self.listed
    }

    pub(super) fn is_vouched(&self, id: NodeId) -> bool {
        self.vouched.contains(&id)
    }

    /// The vouched ids, oldest first.
    pub(super) fn vouched(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.vouched.iter().copied()
    }

    /// Remembers a dropped stranger for the next query.
    pub(super) fn saw(&mut self, id: NodeId) {
        if !self.seen.contains(&id) && self.seen.len() < MAX_ASKED {
            self.seen.push(id);
        }
    }

    /// The strangers to ask about now, if a query is due at `now` (ticks)
    /// given the election timeout `every`; marks the query as sent.
    pub(super) fn due_query(&mut self, now: u64, every: u64) -> Option<Vec<NodeId>> {
        if self.seen.is_empty() || !due(self.asked_at, now, every) {
            return None;
        }
        self.asked_at = Some(now);
        Some(std::mem::take(&mut self.seen))
    }

    /// Whether the voters should be asked for their terms now; marks it so.
    pub(super) fn due_term_query(&mut self, now: u64, every: u64) -> bool {
        if !due(self.terms_asked_at, now, every) {
            return false;
        }
        self.terms_asked_at = Some(now);
        true
    }

    /// Takes `id` as vouched for. Returns false if it already was.
    pub(super) fn vouch(&mut self, id: NodeId) -> bool {
        if self.vouched.contains(&id) {
            return false;
        }
        if self.vouched.len() >= MAX_VOUCHED {
            self.vouched.pop_front();
        }
        self.vouched.push_back(id);
        self.generation += 1;
        true
    }

    /// Changes whenever the vouched ids do.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a voter's reported term.
    pub(super) fn reported(&mut self, from: NodeId, term: u64) {
        let t = self.reported.entry(from).or_default();
        *t = (*t).max(term);
    }

    /// The configuration changed to `members` (voters and learners) with
    /// these `voters`, `removed` having been removed: vouched ids that are
    /// now members need no vouching, a removed id is neither vouched nor
    /// listed any more, and reports of nodes that are no voters are
    /// dropped.
    pub(super) fn configuration_changed(
        &mut self,
        members: &BTreeSet<NodeId>,
        voters: &BTreeSet<NodeId>,
        removed: Option<NodeId>,
    ) {
        let before = self.vouched.len();
        self.vouched
            .retain(|id| !members.contains(id) && Some(*id) != removed);
        if self.vouched.len() != before {
            self.generation += 1;
        }
        if let Some(id) = removed {
            self.listed.remove(&id);
        }
        self.reported.retain(|id, _| voters.contains(id));
    }

    /// The highest term that a quorum of `voters` holds, by their reports
    /// and this node's own term (`own`, counted if this node is a voter).
    pub(super) fn quorum_term(&self, me: NodeId, own: u64, voters: &BTreeSet<NodeId>) -> u64 {
        if voters.is_empty() {
            return 0;
        }
        let mut terms: Vec<u64> = voters
            .iter()
            .map(|v| match *v == me {
                true => own,
                false => self.reported.get(v).copied().unwrap_or(0),
            })
            .collect();
        terms.sort_unstable_by(|a, b| b.cmp(a));
        terms[voters.len() / 2]
    }
}

/// Whether something last done at `last` may be done again at `now`.
fn due(last: Option<u64>, now: u64, every: u64) -> bool {
    last.is_none_or(|at| now >= at + every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vouched_ids_are_bounded_and_forgotten_oldest_first() {
        let mut s = Strangers::default();
        for id in 10..10 + MAX_VOUCHED as u64 + 3 {
            assert!(s.vouch(id));
        }
        assert!(!s.vouch(20), "already vouched");
        let kept: Vec<_> = s.vouched().collect();
        assert_eq!(kept.len(), MAX_VOUCHED);
        assert_eq!(kept[0], 13, "the three oldest were forgotten");
        s.configuration_changed(&[13, 14].into(), &[13].into(), Some(15));
        assert!(!s.is_vouched(13) && !s.is_vouched(14) && !s.is_vouched(15));
        assert!(s.is_vouched(16));
    }

    #[test]
    fn queries_are_rate_limited_and_ask_about_a_bounded_set() {
        let mut s = Strangers::default();
        assert_eq!(s.due_query(0, 10), None, "nothing seen");
        for id in 90..100 {
            s.saw(id);
        }
        assert_eq!(s.due_query(5, 10), Some(vec![90, 91, 92, 93]));
        s.saw(99);
        assert_eq!(s.due_query(14, 10), None, "within the election timeout");
        assert_eq!(s.due_query(15, 10), Some(vec![99]));
        assert!(s.due_term_query(0, 10));
        assert!(!s.due_term_query(9, 10));
        assert!(s.due_term_query(10, 10));
    }

    #[test]
    fn quorum_term_is_the_term_a_majority_holds() {
        let mut s = Strangers::default();
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        assert_eq!(s.quorum_term(1, 5, &voters), 0, "nobody reported");
        s.reported(2, 900);
        assert_eq!(s.quorum_term(1, 5, &voters), 5, "2 of 3 hold at least 5");
        s.reported(3, 700);
        assert_eq!(s.quorum_term(1, 5, &voters), 700);
        s.reported(3, 600);
        assert_eq!(s.quorum_term(1, 5, &voters), 700, "reports only rise");
        assert_eq!(s.quorum_term(1, 5, &BTreeSet::new()), 0);
    }
}
