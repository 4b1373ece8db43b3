//! Raft's safety properties (Figure 3 of the paper), checked after every
//! step of the simulation, plus the core's cursor invariants and the
//! linearizability of read-index answers.
//!
//! The checker keeps a global record built from what it observes:
//! - the leader of every term it has seen (Election Safety);
//! - every `(index, term)` that was ever durable on any node, with its chain
//!   hash (Log Matching over durable storage);
//! - the committed log: for each index, the chain hash a leader had there
//!   when it committed it, and the lowest term of a leader known to have
//!   committed it. An entry committed by a leader of term `u` must be in
//!   the log of every leader of a term above `u` (Leader Completeness);
//!   every applied entry must match it (State Machine Safety);
//! - the read requests in flight and the commit index when each was issued.
//!
//! Chain hashes (see `node.rs`) make "the logs are identical up to i" one
//! comparison at `i`.

use std::collections::HashMap;

use raftnode::raft::{HardState, NodeId, ReadState, Role, Status, NO_NODE, VOTE_LOST};

use crate::node::SimNode;

/// One committed log position.
#[derive(Clone, Copy, Debug)]
struct Committed {
    hash: u64,
    /// Lowest term of a leader seen with a commit index at or above this one.
    by_term: u64,
}

/// The incarnation under which durable hard states are tracked.
pub const DURABLE: u64 = u64::MAX;

#[derive(Default)]
pub struct Checker {
    leader_of_term: HashMap<u64, NodeId>,
    durable: HashMap<(u64, u64), (u64, NodeId)>,
    /// Position `i - 1` describes index `i`.
    committed: Vec<Committed>,
    /// Highest commit index seen on the leader of each term.
    leader_commit: HashMap<u64, u64>,
    /// Read context → (node that asked, commit index anywhere when it asked).
    reads: HashMap<Vec<u8>, (NodeId, u64)>,
    pub reads_answered: u64,
    /// The last hard state of each node, per incarnation (in memory) and
    /// under [`DURABLE`] (in storage, across restarts until it loses state).
    hard: HashMap<(NodeId, u64), HardState>,
    /// Every vote ever seen, by node and term, across incarnations and
    /// losses of state: a node votes at most once per term, for all time.
    votes: HashMap<(NodeId, u64), NodeId>,
}

impl Checker {
    /// The highest index known committed anywhere.
    pub fn commit_index(&self) -> u64 {
        self.committed.len() as u64
    }

    pub fn leader_terms(&self) -> usize {
        self.leader_of_term.len()
    }

    /// Log Matching: an `(index, term)` that is durable on two nodes (at any
    /// two moments) has the same history before it.
    pub fn durable_entry(
        &mut self,
        node: NodeId,
        index: u64,
        term: u64,
        hash: u64,
    ) -> Result<(), String> {
        match self.durable.get(&(index, term)) {
            Some(&(h, other)) if h != hash => Err(format!(
                "Log Matching: entry {index}/{term} is durable on {other} and {node} \
                 with different logs before it"
            )),
            Some(_) => Ok(()),
            None => {
                self.durable.insert((index, term), (hash, node));
                Ok(())
            }
        }
    }

    /// Compares `n`'s log with the committed log at `upto` (or, if `n` has
    /// compacted past it, at its compaction point).
    fn check_prefix(&self, n: &SimNode, upto: u64, what: &str) -> Result<(), String> {
        if upto == 0 {
            return Ok(());
        }
        let base = n.log_base();
        let at = if upto < base { base } else { upto };
        if at > self.commit_index() {
            return Ok(());
        }
        let want = self.committed[at as usize - 1].hash;
        match n.log_get(at) {
            Some((_, h)) if h == want => Ok(()),
            Some((t, _)) => Err(format!(
                "{what}: node {} has {at}/{t}, which differs from the committed log up to {at}",
                n.id
            )),
            None => Err(format!(
                "{what}: node {} lacks committed index {at} (its log is [{}, {}])",
                n.id,
                base,
                n.log_last()
            )),
        }
    }

    /// A node's hard state must not go back: not the term, not the vote
    /// within a term, not the commit index. In memory that holds for one
    /// incarnation; in storage ([`DURABLE`]) for all time.
    pub fn hard_state(&mut self, node: NodeId, inc: u64, hs: HardState) -> Result<(), String> {
        let prev = self.hard.entry((node, inc)).or_default();
        if hs.term < prev.term {
            return Err(format!(
                "node {node}: term went back from {} to {}",
                prev.term, hs.term
            ));
        }
        // `VOTE_LOST` is no vote, but nothing may follow it in its term.
        let voted = |v: NodeId| v != NO_NODE && v != VOTE_LOST;
        if hs.term == prev.term
            && hs.vote != prev.vote
            && ((voted(prev.vote) && hs.vote != VOTE_LOST) || prev.vote == VOTE_LOST)
        {
            return Err(format!(
                "node {node} voted for {} and then for {} in term {}",
                prev.vote, hs.vote, hs.term
            ));
        }
        // A vote counts once durable: only then can it have been sent. A
        // vote for itself by a process that then lost its state may be
        // followed by a vote for another: that candidacy died with the
        // process, and no answer to it is ever counted (the `campaign` of
        // a vote request). Any other second vote in a term is a failure.
        if inc == DURABLE && voted(hs.vote) {
            let first = *self.votes.entry((node, hs.term)).or_insert(hs.vote);
            if first == node && hs.vote != node {
                self.votes.insert((node, hs.term), hs.vote);
            } else if first != hs.vote {
                return Err(format!(
                    "node {node} voted twice in term {}: for {first} and for {} \
                     (across restarts and losses of state)",
                    hs.term, hs.vote
                ));
            }
        }
        if hs.commit < prev.commit {
            return Err(format!(
                "node {node}: commit index went back from {} to {}",
                prev.commit, hs.commit
            ));
        }
        *prev = hs;
        Ok(())
    }

    /// Node `node` lost durable state: its term and commit index may go
    /// back in storage from now on (its votes may not: see `votes`).
    pub fn lost_state(&mut self, node: NodeId) {
        self.hard.remove(&(node, DURABLE));
    }

    /// Checks one node after a step in which it may have changed.
    pub fn observe(&mut self, n: &SimNode, st: &Status) -> Result<(), String> {
        let hs = st.hard_state;
        self.hard_state(n.id, n.incarnation, hs)?;
        if !(st.applied <= hs.commit && hs.commit <= st.last_index) {
            return Err(format!(
                "node {}: applied {} <= committed {} <= last {} does not hold",
                n.id, st.applied, hs.commit, st.last_index
            ));
        }
        if n.sm.applied != st.applied {
            return Err(format!(
                "node {}: the core says applied {} but the state machine is at {}",
                n.id, st.applied, n.sm.applied
            ));
        }
        if hs.commit > self.commit_index() && st.soft_state.role != Role::Leader {
            return Err(format!(
                "node {} believes {} is committed, but no leader committed past {}",
                n.id,
                hs.commit,
                self.commit_index()
            ));
        }
        if st.soft_state.role != Role::Leader {
            return Ok(());
        }
        let term = hs.term;
        let leader = *self.leader_of_term.entry(term).or_insert(n.id);
        if leader != n.id {
            return Err(format!(
                "Election Safety: nodes {leader} and {} are both leaders of term {term}",
                n.id
            ));
        }
        // Leader Completeness: everything committed in an earlier term.
        let k = self.committed.partition_point(|c| c.by_term < term) as u64;
        self.check_prefix(n, k, "Leader Completeness")?;
        // Record what this leader committed.
        let c = hs.commit;
        let seen = self.leader_commit.get(&term).copied().unwrap_or(0);
        if c <= seen {
            return Ok(());
        }
        self.check_prefix(n, c.min(self.commit_index()), "committed entries changed")?;
        for i in self.commit_index() + 1..=c {
            let Some((_, hash)) = n.log_get(i) else {
                return Err(format!(
                    "leader {} of term {term} committed {i}, which is not in its log [{}, {}]",
                    n.id,
                    n.log_base(),
                    n.log_last()
                ));
            };
            self.committed.push(Committed {
                hash,
                by_term: term,
            });
        }
        let mut i = c as usize;
        while i > 0 && self.committed[i - 1].by_term > term {
            self.committed[i - 1].by_term = term;
            i -= 1;
        }
        self.leader_commit.insert(term, c);
        Ok(())
    }

    /// Right after `ready()` the application sees the node's whole log:
    /// it must agree with the committed log up to the node's commit index.
    pub fn log_at_ready(&self, n: &SimNode, commit: u64) -> Result<(), String> {
        if commit > self.commit_index() {
            return Ok(()); // a leader's fresh commit, recorded at the end of the step
        }
        self.check_prefix(n, commit, "log at Ready")
    }

    /// State Machine Safety: the applied entry at `index` (chain `hash`)
    /// is the committed one.
    pub fn applied(&self, node: NodeId, index: u64, hash: u64, how: &str) -> Result<(), String> {
        if index == 0 {
            return Ok(());
        }
        match self.committed.get(index as usize - 1) {
            None => Err(format!(
                "State Machine Safety: node {node} {how} {index}, but nothing past {} is committed",
                self.commit_index()
            )),
            Some(c) if c.hash != hash => Err(format!(
                "State Machine Safety: node {node} {how} {index} with a history that \
                 differs from the committed log"
            )),
            Some(_) => Ok(()),
        }
    }

    pub fn read_issued(&mut self, node: NodeId, context: Vec<u8>) {
        let at = self.commit_index();
        self.reads.insert(context, (node, at));
    }

    /// A read is linearizable if its index is at least every commit index
    /// known anywhere when it was issued (and is itself committed).
    pub fn read_answered(&mut self, node: NodeId, rs: &ReadState) -> Result<(), String> {
        let ctx = String::from_utf8_lossy(&rs.context).into_owned();
        let Some(&(asker, min)) = self.reads.get(&rs.context) else {
            return Err(format!(
                "node {node} got an answer to read {ctx} nobody asked"
            ));
        };
        if asker != node {
            return Err(format!(
                "node {node} got the answer to read {ctx}, which {asker} asked"
            ));
        }
        if rs.index < min {
            return Err(format!(
                "read {ctx} answered at index {}, but {min} was committed when it was issued",
                rs.index
            ));
        }
        if rs.index > self.commit_index() {
            return Err(format!(
                "read {ctx} answered at index {}, which is not committed",
                rs.index
            ));
        }
        self.reads_answered += 1;
        Ok(())
    }
}
