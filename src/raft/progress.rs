//! What a leader knows about each follower, and how it counts quorums.
//!
//! Per peer the leader keeps a [`Progress`]: the highest index known to match
//! (`matched`), the next index to send (`next`), and a state that decides how
//! aggressively to send, as in etcd's `tracker/`:
//!
//! - **Probe**: the leader does not know where the follower's log matches.
//!   It sends one append at a time and waits for the answer (or the next
//!   heartbeat response) before sending again.
//! - **Replicate**: the follower is in sync. The leader pipelines appends
//!   optimistically, advancing `next` as it sends, bounded by an inflight
//!   window of `max_inflight` messages.
//! - **Snapshot**: the follower needs entries the leader has compacted. The
//!   leader sends a snapshot and sends nothing else until it hears back.
//!
//! A follower that lost durable state and announced it (`recovery.rs`) is
//! *recovering*: its progress was reset, it counts in no commit quorum, and
//! only its answers tagged with the recovery id the leader acknowledged are
//! taken, until it says its recovery is over (`RecoveryDone`).
//!
//! Invariant: `matched < next`.
//!
//! [`ProgressTracker`] also holds the membership (voters and learners) and
//! the votes of an election, and answers quorum questions over the voters.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::types::{ConfState, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

/// A bounded window of in-flight append messages, each remembered by the
/// last index it carried.
#[derive(Clone, Debug)]
pub struct Inflights {
    last_indexes: VecDeque<u64>,
    cap: usize,
}

impl Inflights {
    pub fn new(cap: usize) -> Inflights {
        Inflights {
            last_indexes: VecDeque::with_capacity(cap.min(1024)),
            cap,
        }
    }

    pub fn full(&self) -> bool {
        self.last_indexes.len() >= self.cap
    }

    pub fn count(&self) -> usize {
        self.last_indexes.len()
    }

    pub fn add(&mut self, last_index: u64) {
        self.last_indexes.push_back(last_index);
    }

    /// Frees every message whose last index is `<= to` (acknowledged).
    pub fn free_le(&mut self, to: u64) {
        while self.last_indexes.front().is_some_and(|&i| i <= to) {
            self.last_indexes.pop_front();
        }
    }

    pub fn free_first_one(&mut self) {
        self.last_indexes.pop_front();
    }

    pub fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated on the follower.
    pub matched: u64,
    /// Next index to send; `matched < next`.
    pub next: u64,
    pub state: ProgressState,
    /// In Snapshot state: the index of the snapshot being sent.
    pub pending_snapshot: u64,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// In Probe state: an append is out and we wait for its answer.
    pub probe_sent: bool,
    pub inflights: Inflights,
    pub is_learner: bool,
    /// The follower is recovering lost state: the id of its recovery, and
    /// the index it must reach before it counts again.
    pub recovery: Option<RecoveringPeer>,
    /// Recovery ids of this follower already repaired, newest last, so a
    /// late duplicate of their announcement does not reset it again.
    pub retired_recoveries: Vec<u64>,
}

/// A follower being repaired by this leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveringPeer {
    pub id: u64,
    pub target: u64,
}

/// How many repaired recovery ids a progress remembers.
const RETIRED_RECOVERIES: usize = 4;

impl Progress {
    pub fn new(next: u64, max_inflight: usize) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            probe_sent: false,
            inflights: Inflights::new(max_inflight),
            is_learner: false,
            recovery: None,
            retired_recoveries: Vec::new(),
        }
    }

    /// Starts repairing this follower for recovery `id`: everything known of
    /// it is forgotten, and it is probed from `next`.
    pub fn start_recovery(&mut self, id: u64, next: u64, target: u64) {
        let max_inflight = self.inflights.cap;
        let retired = std::mem::take(&mut self.retired_recoveries);
        let is_learner = self.is_learner;
        *self = Progress::new(next, max_inflight);
        self.is_learner = is_learner;
        self.recent_active = true;
        self.retired_recoveries = retired;
        self.recovery = Some(RecoveringPeer { id, target });
    }

    /// Ends the repair of recovery `id`, which the follower says is over;
    /// returns its target, or `None` if `id` is not the one in progress.
    pub fn finish_recovery(&mut self, id: u64) -> Option<u64> {
        let r = self.recovery.filter(|r| r.id == id)?;
        self.recovery = None;
        self.retired_recoveries.push(r.id);
        if self.retired_recoveries.len() > RETIRED_RECOVERIES {
            self.retired_recoveries.remove(0);
        }
        Some(r.target)
    }

    /// Whether an answer tagged `tag` may be taken: while repairing, only
    /// answers of the acknowledged recovery are.
    pub fn takes_answer(&self, tag: u64) -> bool {
        self.recovery.is_none_or(|r| r.id == tag)
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        // Coming back from a snapshot, resume after it.
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// Records that the follower has everything up to `n`. Returns whether
    /// `matched` moved (stale answers do not move it).
    pub fn maybe_update(&mut self, n: u64) -> bool {
        let updated = n > self.matched;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next = self.next.max(n + 1);
        updated
    }

    /// In Replicate: assume the append up to `n` will succeed.
    pub fn optimistic_update(&mut self, n: u64) {
        self.next = n + 1;
    }

    /// Handles a rejection of the append whose `prev_index` was `rejected`,
    /// with the follower's hint of where it may match. Returns false if the
    /// rejection is stale (answers an older message).
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        // The hint comes from the network: it may be any value.
        self.next = rejected
            .min(match_hint.saturating_add(1))
            .max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// Whether the leader should hold off sending appends to this peer.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

/// Outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Membership, per-peer progress and election votes.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    /// One entry per voter and learner.
    pub progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    max_inflight: usize,
}

impl ProgressTracker {
    pub fn new(max_inflight: usize) -> ProgressTracker {
        ProgressTracker {
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            max_inflight,
        }
    }

    /// Replaces the membership, creating progress for new members with
    /// `next = next_index` and dropping it for removed ones.
    pub fn set_conf(&mut self, cs: &ConfState, next_index: u64) {
        self.voters = cs.voters.iter().copied().collect();
        self.learners = cs
            .learners
            .iter()
            .copied()
            .filter(|id| !self.voters.contains(id))
            .collect();
        let members: BTreeSet<NodeId> = self.voters.union(&self.learners).copied().collect();
        self.progress.retain(|id, _| members.contains(id));
        for &id in &members {
            let max_inflight = self.max_inflight;
            let pr = self.progress.entry(id).or_insert_with(|| {
                let mut p = Progress::new(next_index, max_inflight);
                // A new member counts as active so CheckQuorum does not
                // depose a leader the moment it grows the cluster.
                p.recent_active = true;
                p
            });
            pr.is_learner = self.learners.contains(&id);
        }
    }

    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().copied()
    }

    pub fn is_singleton(&self) -> bool {
        self.voters.len() == 1
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The largest index replicated on a quorum of voters.
    pub fn committed(&self) -> u64 {
        if self.voters.is_empty() {
            return 0;
        }
        // Called on every acknowledgement: no allocation for usual sizes.
        let mut small = [0u64; 9];
        let mut large = Vec::new();
        let matched: &mut [u64] = if self.voters.len() <= small.len() {
            &mut small[..self.voters.len()]
        } else {
            large.resize(self.voters.len(), 0);
            &mut large
        };
        for (slot, id) in matched.iter_mut().zip(&self.voters) {
            // A recovering voter may have lost what it acknowledged.
            *slot = self
                .progress
                .get(id)
                .filter(|p| p.recovery.is_none())
                .map_or(0, |p| p.matched);
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        matched[self.quorum() - 1]
    }

    /// Whether `acks` (ids that answered) include a quorum of voters.
    pub fn has_quorum(&self, acks: &BTreeSet<NodeId>) -> bool {
        !self.voters.is_empty()
            && self.voters.iter().filter(|id| acks.contains(id)).count() >= self.quorum()
    }

    /// CheckQuorum: whether a quorum of voters was heard from since the last
    /// call (`me` always counts). Resets the activity flags of the others.
    pub fn quorum_active(&mut self, me: NodeId) -> bool {
        let mut active = 0;
        for (id, pr) in self.progress.iter_mut() {
            if *id == me {
                pr.recent_active = true;
            }
            if pr.recent_active && self.voters.contains(id) {
                active += 1;
            }
            if *id != me {
                pr.recent_active = false;
            }
        }
        active >= self.quorum()
    }

    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records a vote, the first one from each voter counting.
    pub fn record_vote(&mut self, id: NodeId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    pub fn tally_votes(&self) -> (usize, usize, VoteResult) {
        let mut granted = 0;
        let mut rejected = 0;
        for id in &self.voters {
            match self.votes.get(id) {
                Some(true) => granted += 1,
                Some(false) => rejected += 1,
                None => {}
            }
        }
        let q = self.quorum();
        let result = if self.voters.is_empty() {
            VoteResult::Lost
        } else if granted >= q {
            VoteResult::Won
        } else if self.voters.len() - rejected < q {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        };
        (granted, rejected, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(voters: &[u64], matched: &[u64]) -> ProgressTracker {
        let mut t = ProgressTracker::new(4);
        t.set_conf(&ConfState::with_voters(voters.to_vec()), 1);
        for (id, m) in voters.iter().zip(matched) {
            t.progress.get_mut(id).unwrap().matched = *m;
        }
        t
    }

    #[test]
    fn committed_is_the_quorum_match() {
        assert_eq!(tracker(&[1, 2, 3], &[5, 3, 1]).committed(), 3);
        assert_eq!(tracker(&[1, 2, 3, 4], &[5, 3, 1, 4]).committed(), 3);
        assert_eq!(tracker(&[1], &[7]).committed(), 7);
        let many: Vec<u64> = (1..=11).collect();
        assert_eq!(tracker(&many, &many).committed(), 6);
    }

    #[test]
    fn votes_decide_once_a_quorum_agrees() {
        let mut t = tracker(&[1, 2, 3], &[0, 0, 0]);
        t.record_vote(1, true);
        assert_eq!(t.tally_votes().2, VoteResult::Pending);
        t.record_vote(2, false);
        t.record_vote(2, true); // only the first vote counts
        assert_eq!(t.tally_votes().2, VoteResult::Pending);
        t.record_vote(3, false);
        assert_eq!(t.tally_votes().2, VoteResult::Lost);
    }

    #[test]
    fn inflights_free_up_to_index() {
        let mut f = Inflights::new(3);
        f.add(2);
        f.add(5);
        f.add(9);
        assert!(f.full());
        f.free_le(5);
        assert_eq!(f.count(), 1);
    }

    #[test]
    fn probe_decrements_to_hint_but_not_below_match() {
        let mut p = Progress::new(10, 4);
        p.matched = 3;
        assert!(!p.maybe_decr_to(5, 1), "stale: next-1 != rejected");
        assert!(p.maybe_decr_to(9, 1));
        assert_eq!(p.next, 4);
    }
}
