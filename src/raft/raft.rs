//! The Raft state machine: elections, replication, commitment, reads,
//! leadership transfer and membership, for one node.
//!
//! [`Raft::step`] is the single entry point for messages. It applies the term
//! rule of Figure 2 once (adopt a higher term and become follower; ignore or
//! answer a lower one), handles vote requests, which every role answers the
//! same way, and then dispatches to `step_leader`, `step_candidate` or
//! `step_follower`. Time enters only through [`Raft::tick`]; randomness only
//! through the seeded generator in [`Config`].
//!
//! Outgoing messages are queued, never sent: the application takes them from
//! the `Ready` (see `rawnode.rs`). A leader's messages go out at once, so it
//! can write its log in parallel with replication (thesis §10.2.1). Every
//! other node's messages wait until the state they depend on (a vote, a term,
//! appended entries) is durable, so a crash can never make a node take back
//! a vote or an acknowledgement.
//!
//! Paper sections: §5.2 elections (with PreVote from thesis §9.6 and the
//! CheckQuorum lease of §6.2), §5.3 replication with the fast-backtracking
//! hint, §5.4 safety (the up-to-date vote check and the current-term commit
//! rule of Figure 8), §6.4 read index, §3.10 leadership transfer and
//! thesis §4.1 single-server membership changes.
//!
//! Implementation caveats (what this deliberately does not do):
//! - joint consensus: one voter is added or removed at a time;
//! - lease-based reads: reads always confirm leadership with a heartbeat round;
//! - flow control by bytes: only message count (inflights) and size per message;
//! - forwarded requests are forwarded one hop; a node that is not the leader
//!   drops requests forwarded to it, and the client's request times out.

use super::log::RaftLog;
use super::message::{Message, MessageBody};
use super::progress::{ProgressState, ProgressTracker, VoteResult};
use super::read_only::{ReadIndexStatus, ReadOnly};
use super::recovery::{Acked, Recovery, RecoveryPhase, RecoveryStart, VOTE_LOST};
use super::rng::Rng;
use super::storage::Storage;
use super::strangers::{Hearing, Strangers, MAX_TERM_JUMP};
use super::types::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, HardState, NodeId, ReadState, Role,
    SoftState, NO_NODE,
};

/// How a node behaves; the same for every restart of the node except `applied`.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id, >= 1.
    pub id: NodeId,
    /// Ticks without hearing from a leader before a follower campaigns; the
    /// actual timeout is drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats; must be < `election_ticks`.
    pub heartbeat_ticks: usize,
    /// The last index the application has applied (its snapshot index on
    /// restart); 0 lets the core start from the storage's compaction point.
    pub applied: u64,
    /// Upper bound on the bytes of entries in one append message.
    pub max_size_per_msg: u64,
    /// How many append messages may be in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Upper bound on the bytes of committed entries in one Ready.
    pub max_committed_size_per_ready: u64,
    /// A leader steps down if a quorum was silent for an election timeout,
    /// and followers ignore vote requests while they have a live leader.
    pub check_quorum: bool,
    /// Run a PreVote round before bumping the term (thesis §9.6).
    pub pre_vote: bool,
    /// Seed of the election-timeout generator.
    pub seed: u64,
    /// Set when the node lost durable state and must be repaired before
    /// it votes or counts again (`recovery.rs`).
    pub recovery: Option<RecoveryStart>,
    /// The ids the operator named at start-up (`--peers`), less those the
    /// application knows were removed: heard though they may be outside
    /// the configuration (see `strangers.rs`).
    pub listed: std::collections::BTreeSet<NodeId>,
    /// TEST ONLY, breaks safety: step every message, from members or not,
    /// at any term (the membership filter of `hears` is off). Lets the
    /// security tests show that their checks catch a node without it.
    pub trust_every_peer: bool,
}

impl Config {
    /// Defaults in the spirit of etcd, for node `id`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            applied: 0,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_committed_size_per_ready: 16 << 20,
            check_quorum: true,
            pre_vote: true,
            seed: id,
            recovery: None,
            listed: std::collections::BTreeSet::new(),
            trust_every_peer: false,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.id == NO_NODE || self.id == VOTE_LOST {
            return Err(Error::InvalidConfig(
                "node id must be >= 1 and below 2^64 - 1".into(),
            ));
        }
        if self.recovery.is_some_and(|r| r.id == 0) {
            return Err(Error::InvalidConfig("a recovery id must not be 0".into()));
        }
        if self.heartbeat_ticks == 0 {
            return Err(Error::InvalidConfig("heartbeat ticks must be >= 1".into()));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(Error::InvalidConfig(format!(
                "election ticks ({}) must be greater than heartbeat ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if self.max_inflight_msgs == 0 {
            return Err(Error::InvalidConfig(
                "max inflight messages must be >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why a proposal (or a read or transfer request) was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// No leader is known to take the request.
    NoLeader,
    /// This node was removed from the configuration.
    NotAMember,
    /// The leader is handing over leadership and takes no proposals meanwhile.
    TransferInProgress,
    /// A conf-change entry that does not decode.
    MalformedConfChange,
    /// Another conf change is proposed and not yet applied.
    ConfChangePending,
    /// A removal of a node that is not a member.
    UnknownMember,
    /// A removal of the last voter, which would leave nobody to elect.
    LastVoter,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropReason::NoLeader => "no leader is known",
            DropReason::NotAMember => "this node is no longer a member",
            DropReason::TransferInProgress => "leadership transfer in progress",
            DropReason::MalformedConfChange => "malformed conf change",
            DropReason::ConfChangePending => "a conf change is already pending",
            DropReason::UnknownMember => "the node is not a member",
            DropReason::LastVoter => "the last voter cannot be removed",
        })
    }
}

/// The `campaign` of a vote request (0 for any other message).
fn vote_campaign(m: &Message) -> u64 {
    match m.body {
        MessageBody::RequestVote { campaign, .. } => campaign,
        _ => 0,
    }
}

/// Terms end here: a message at or above it is dropped, and no node
/// campaigns into it (see [`Raft::hears`]). Real clusters stay far below.
pub const MAX_TERM: u64 = 1 << 63;

/// Errors the core returns to its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The proposal was not accepted; nothing was appended.
    ProposalDropped(DropReason),
    /// The configuration or the recovered state is inconsistent.
    InvalidConfig(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::ProposalDropped(why) => write!(f, "proposal dropped: {why}"),
            Error::InvalidConfig(why) => write!(f, "invalid raft configuration: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// One node's Raft state.
pub struct Raft<S: Storage> {
    pub id: NodeId,
    /// Current term (persisted).
    pub term: u64,
    /// Vote in the current term (persisted).
    pub vote: NodeId,
    pub log: RaftLog<S>,
    /// Membership and, on a leader, per-peer progress.
    pub prs: ProgressTracker,
    pub role: Role,
    /// Known leader of the current term, or [`NO_NODE`].
    pub leader: NodeId,
    /// Messages that may be sent at once (a leader's).
    pub msgs: Vec<Message>,
    /// Messages that may be sent only once the pending state is durable.
    pub msgs_after_persist: Vec<Message>,
    /// Answered read requests for the application.
    pub read_states: Vec<ReadState>,
    read_only: ReadOnly,
    /// Reads that arrived before this leader committed an entry of its term;
    /// until then its commit index may be behind its predecessor's.
    pending_read_index: Vec<(NodeId, Vec<u8>)>,
    /// Target of an ongoing leadership transfer, or [`NO_NODE`].
    pub lead_transferee: NodeId,
    /// Index of the latest conf change appended by this leader; no new one
    /// is accepted until it is applied.
    pending_conf_index: u64,
    election_elapsed: usize,
    heartbeat_elapsed: usize,
    randomized_election_timeout: usize,
    election_timeout: usize,
    heartbeat_timeout: usize,
    check_quorum: bool,
    pre_vote: bool,
    max_msg_size: u64,
    max_inflight: usize,
    pub max_committed_size_per_ready: u64,
    rng: Rng,
    /// Set while this node repairs lost state (`recovery.rs`).
    recovery: Option<Recovery>,
    /// The recovery id this process started with (0: none); it tags every
    /// answer to a leader for the life of the process.
    recovery_tag: u64,
    /// A recovery finished and the application has not been told.
    pub recovered: bool,
    /// Ticks since start, to rate-limit warnings (the core reads no clock).
    ticks: u64,
    /// When each repeatable warning was last logged, in ticks.
    warned: std::collections::HashMap<&'static str, u64>,
    /// Listed and vouched ids, and the terms voters reported (`strangers.rs`).
    strangers: Strangers,
    /// See [`Config::trust_every_peer`].
    trust_every_peer: bool,
}

impl<S: Storage> Raft<S> {
    /// Builds a node from its storage: hard state and membership come from
    /// `storage.initial_state()`.
    pub fn new(config: &Config, storage: S) -> Result<Raft<S>, Error> {
        config.validate()?;
        let (hs, cs) = storage.initial_state();
        let log = RaftLog::new(storage);
        let mut prs = ProgressTracker::new(config.max_inflight_msgs);
        prs.set_conf(&cs, log.last_index() + 1);
        let mut r = Raft {
            id: config.id,
            term: 0,
            vote: NO_NODE,
            log,
            prs,
            role: Role::Follower,
            leader: NO_NODE,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            read_only: ReadOnly::default(),
            pending_read_index: Vec::new(),
            lead_transferee: NO_NODE,
            pending_conf_index: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_ticks,
            election_timeout: config.election_ticks,
            heartbeat_timeout: config.heartbeat_ticks,
            check_quorum: config.check_quorum,
            pre_vote: config.pre_vote,
            max_msg_size: config.max_size_per_msg,
            max_inflight: config.max_inflight_msgs,
            max_committed_size_per_ready: config.max_committed_size_per_ready,
            rng: Rng::new(config.seed),
            recovery: config.recovery.map(Recovery::new),
            recovery_tag: config.recovery.map_or(0, |r| r.id),
            recovered: false,
            ticks: 0,
            warned: std::collections::HashMap::new(),
            strangers: Strangers::new(config.listed.clone()),
            trust_every_peer: config.trust_every_peer,
        };
        if hs != HardState::default() {
            if hs.commit < r.log.committed || hs.commit > r.log.last_index() {
                return Err(Error::InvalidConfig(format!(
                    "persisted commit index {} is outside the log [{}, {}]",
                    hs.commit,
                    r.log.committed,
                    r.log.last_index()
                )));
            }
            r.log.committed = hs.commit;
            r.term = hs.term;
            r.vote = hs.vote;
        }
        if config.applied > 0 {
            if config.applied > r.log.committed || config.applied < r.log.applied {
                return Err(Error::InvalidConfig(format!(
                    "applied index {} is outside [{}, {}]",
                    config.applied, r.log.applied, r.log.committed
                )));
            }
            r.log.applied_to(config.applied);
        }
        let term = r.term;
        r.become_follower(term, NO_NODE);
        if let Some(start) = config.recovery {
            log::warn!(
                "{} starts recovering lost state (hard state {}): it will not vote or count \
                 until a leader has repaired it",
                r.id,
                if start.hard_state_lost {
                    "lost"
                } else {
                    "intact"
                }
            );
            if start.hard_state_lost {
                r.vote = VOTE_LOST;
            }
            r.query_terms();
        }
        Ok(r)
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    /// A node may campaign only if it is a voter and not recovering.
    pub fn promotable(&self) -> bool {
        self.prs.is_voter(self.id) && self.recovery.is_none()
    }

    /// Where a recovery is, or `None` when the node is not recovering.
    pub fn recovery_phase(&self) -> Option<RecoveryPhase> {
        let r = self.recovery.as_ref()?;
        if let Some(reports) = &r.reports {
            let missing = self
                .prs
                .voters()
                .filter(|v| *v != self.id && !reports.contains_key(v))
                .collect();
            return Some(RecoveryPhase::AwaitingTerms { missing });
        }
        Some(match r.acked {
            Some(a) if a.term == self.term => RecoveryPhase::CatchingUp {
                matched: r.matched,
                target: a.target,
            },
            _ => RecoveryPhase::AwaitingLeader,
        })
    }

    // ---- sending -------------------------------------------------------

    fn send(&mut self, m: Message) {
        if self.role == Role::Leader {
            self.msgs.push(m);
        } else {
            self.msgs_after_persist.push(m);
        }
    }

    /// Sends `body` to `to` in the current term.
    fn send_to(&mut self, to: NodeId, body: MessageBody) {
        let m = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.send(m);
    }

    /// Sends an append (or a snapshot if the needed entries are compacted)
    /// to `to`, if its progress allows. With `send_if_empty` false, nothing
    /// is sent when there are no new entries. Returns whether it sent.
    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.prs.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let entries = self.log.entries(next, self.max_msg_size);
        match (prev_term, entries) {
            (Ok(prev_term), Ok(entries)) => {
                if entries.is_empty() && !send_if_empty {
                    return false;
                }
                let last = entries.last().map(|e| e.index);
                if let (Some(last), Some(pr)) = (last, self.prs.progress.get_mut(&to)) {
                    match pr.state {
                        ProgressState::Replicate => {
                            pr.optimistic_update(last);
                            pr.inflights.add(last);
                        }
                        ProgressState::Probe => pr.probe_sent = true,
                        ProgressState::Snapshot => {}
                    }
                }
                let commit = self.log.committed;
                self.send_to(
                    to,
                    MessageBody::Append {
                        prev_index,
                        prev_term,
                        entries,
                        commit,
                    },
                );
                true
            }
            _ => {
                // The entries are compacted: only a snapshot helps.
                if !self.prs.progress.get(&to).is_some_and(|p| p.recent_active) {
                    return false;
                }
                let snapshot = match self.log.snapshot() {
                    Ok(s) if !s.is_empty() => s,
                    _ => return false,
                };
                if let Some(pr) = self.prs.progress.get_mut(&to) {
                    pr.become_snapshot(snapshot.meta.index);
                }
                log::debug!(
                    "{} sends snapshot {} to {}",
                    self.id,
                    snapshot.meta.index,
                    to
                );
                self.send_to(to, MessageBody::Snapshot { snapshot });
                true
            }
        }
    }

    fn send_append(&mut self, to: NodeId) {
        self.maybe_send_append(to, true);
    }

    fn peers(&self) -> Vec<NodeId> {
        self.prs
            .progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    fn bcast_append(&mut self) {
        for id in self.peers() {
            self.send_append(id);
        }
    }

    fn bcast_heartbeat(&mut self) {
        let ctx = self
            .read_only
            .last_pending()
            .map(|c| c.to_vec())
            .unwrap_or_default();
        self.bcast_heartbeat_with_ctx(ctx);
    }

    fn bcast_heartbeat_with_ctx(&mut self, context: Vec<u8>) {
        for id in self.peers() {
            let matched = self.prs.progress.get(&id).map_or(0, |p| p.matched);
            // Never tell a follower to commit past what it is known to hold.
            let commit = matched.min(self.log.committed);
            self.send_to(
                id,
                MessageBody::Heartbeat {
                    commit,
                    context: context.clone(),
                },
            );
        }
    }

    // ---- role transitions ---------------------------------------------

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            // A node that does not know every voter's term yet may have
            // voted in this one.
            let terms_unknown = self.recovery.as_ref().is_some_and(|r| r.reports.is_some());
            self.vote = if terms_unknown { VOTE_LOST } else { NO_NODE };
        }
        self.leader = NO_NODE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout =
            self.election_timeout + self.rng.below(self.election_timeout as u64) as usize;
        self.lead_transferee = NO_NODE;
        self.prs.reset_votes();
        let next = self.log.last_index() + 1;
        let persisted = self.log.persisted_index();
        let (id, max_inflight) = (self.id, self.max_inflight);
        for (&pid, pr) in self.prs.progress.iter_mut() {
            let is_learner = pr.is_learner;
            *pr = super::progress::Progress::new(next, max_inflight);
            pr.is_learner = is_learner;
            if pid == id {
                pr.matched = persisted;
                pr.next = pr.next.max(persisted + 1);
            }
        }
        self.pending_conf_index = 0;
        self.read_only = ReadOnly::default();
        self.pending_read_index.clear();
    }

    pub fn become_follower(&mut self, term: u64, leader: NodeId) {
        self.reset(term);
        self.leader = leader;
        if self.role != Role::Follower {
            log::info!("{} became follower at term {}", self.id, self.term);
        }
        self.role = Role::Follower;
    }

    fn become_pre_candidate(&mut self) {
        // PreVote changes neither the term nor the vote.
        self.role = Role::PreCandidate;
        self.prs.reset_votes();
        self.leader = NO_NODE;
        log::info!("{} became pre-candidate at term {}", self.id, self.term);
    }

    fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Candidate;
        log::info!("{} became candidate at term {}", self.id, self.term);
    }

    fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        if let Some(pr) = self.prs.progress.get_mut(&self.id) {
            pr.state = ProgressState::Replicate;
        }
        // Entries of earlier terms may include an unapplied conf change; hold
        // off new ones until everything up to here is applied.
        self.pending_conf_index = self.log.last_index();
        // An empty entry of our own term lets us commit (and learn the commit
        // index of) everything before it (§5.4.2, §8).
        self.append_entries(vec![Entry::normal(Vec::new())]);
        log::info!("{} became leader at term {}", self.id, self.term);
    }

    // ---- time ----------------------------------------------------------

    /// Whether a warning that may repeat (`key`) may be logged now: at most
    /// once per election timeout of ticks, so a peer that keeps sending the
    /// same bad message cannot flood the log.
    fn may_warn(&mut self, key: &'static str) -> bool {
        let now = self.ticks;
        let every = self.election_timeout as u64;
        match self.warned.get(key) {
            Some(&at) if now < at + every => false,
            _ => {
                self.warned.insert(key, now);
                true
            }
        }
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.role == Role::Leader {
            self.tick_heartbeat();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        if let Some(r) = self.recovery.as_mut() {
            r.query_elapsed += 1;
            if r.reports.is_some() && r.query_elapsed >= self.election_timeout {
                self.query_terms();
            }
        }
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout {
            self.election_elapsed = 0;
            if self.check_quorum && !self.prs.quorum_active(self.id) {
                log::warn!(
                    "{} stepped down at term {}: no quorum heard from",
                    self.id,
                    self.term
                );
                let term = self.term;
                self.become_follower(term, NO_NODE);
                return;
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = NO_NODE;
        }
        if self.heartbeat_elapsed >= self.heartbeat_timeout {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    // ---- elections -----------------------------------------------------

    /// Starts an election (a PreVote round first if enabled), unless this node
    /// is the leader, cannot vote, or has committed conf changes to apply.
    pub fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        if self.term + 1 >= MAX_TERM {
            // Only a malformed message can have brought us here; the term
            // space ends at MAX_TERM (see `hears`).
            if self.may_warn("term space") {
                log::warn!("{} cannot campaign: the term space is exhausted", self.id);
            }
            return;
        }
        if self.has_unapplied_conf_changes() {
            if self.may_warn("unapplied conf changes") {
                log::warn!(
                    "{} cannot campaign: committed conf changes are not applied yet",
                    self.id
                );
            }
            return;
        }
        if self.pre_vote && !transfer {
            self.campaign_pre();
        } else {
            self.campaign(transfer);
        }
    }

    fn has_unapplied_conf_changes(&self) -> bool {
        if self.log.applied >= self.log.committed {
            return false;
        }
        let lo = (self.log.applied + 1).max(self.log.first_index());
        match self.log.slice(lo, self.log.committed + 1, u64::MAX) {
            Ok(ents) => ents.iter().any(|e| e.kind == EntryKind::ConfChange),
            Err(_) => false,
        }
    }

    fn campaign_pre(&mut self) {
        self.become_pre_candidate();
        self.prs.record_vote(self.id, true);
        if self.prs.tally_votes().2 == VoteResult::Won {
            self.campaign(false);
            return;
        }
        self.request_votes(true, false, self.term + 1);
    }

    fn campaign(&mut self, transfer: bool) {
        self.become_candidate();
        self.prs.record_vote(self.id, true);
        if self.prs.tally_votes().2 == VoteResult::Won {
            self.become_leader();
            return;
        }
        let term = self.term;
        self.request_votes(false, transfer, term);
    }

    fn request_votes(&mut self, pre: bool, transfer: bool, term: u64) {
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        let voters: Vec<NodeId> = self.prs.voters().filter(|&v| v != self.id).collect();
        for to in voters {
            let body = MessageBody::RequestVote {
                pre,
                last_index,
                last_term,
                transfer,
                campaign: self.recovery_tag,
            };
            self.send(Message {
                from: self.id,
                to,
                term,
                body,
            });
        }
    }

    fn handle_vote(&mut self, m: &Message, pre: bool, last_index: u64, last_term: u64) {
        // We may vote for whom we already voted for, for anyone if we have
        // neither voted nor know a leader, and in a PreVote for anyone whose
        // future term is ahead of ours.
        // A recovering node grants nothing (it may have lost a vote, and it
        // may lack entries it once acknowledged).
        // `VOTE_LOST` matches no candidate: no vote in that term.
        let can_vote = self.recovery.is_none()
            && (self.vote == m.from
                || (self.vote == NO_NODE && self.leader == NO_NODE)
                || (pre && m.term > self.term));
        if can_vote && self.log.is_up_to_date(last_index, last_term) {
            let body = MessageBody::RequestVoteResponse {
                pre,
                reject: false,
                campaign: vote_campaign(m),
            };
            // A granted PreVote answers in the candidate's future term.
            self.send(Message {
                from: self.id,
                to: m.from,
                term: m.term,
                body,
            });
            if !pre {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            self.send_to(
                m.from,
                MessageBody::RequestVoteResponse {
                    pre,
                    reject: true,
                    campaign: vote_campaign(m),
                },
            );
        }
    }

    // ---- the entry point ------------------------------------------------

    /// Whether this node listens to `m` at all (defence in depth: the
    /// transport already refuses removed nodes and most strangers). The
    /// rule, argued in `strangers.rs`:
    ///
    /// - a term at or above [`MAX_TERM`] is dropped from anyone: no cluster
    ///   gets there, and a term at the top of the space would stop elections
    ///   for good;
    /// - a message from a voter or learner of this node's configuration, a
    ///   listed id or a vouched id is heard, and so is one from the leader this node follows in the
    ///   message's term (a removed leader's last words: the commit of its own
    ///   removal, and the `TimeoutNow` that hands its leadership over), as
    ///   long as its term is within reach ([`MAX_TERM_JUMP`]);
    /// - from anyone else nothing that could touch the term, the vote, the
    ///   log, the leader or a snapshot is heard, whether or not this node
    ///   has a leader. A stale `Append` or `Heartbeat` (lower term) is only
    ///   answered with this node's term (see `step`), so that a leader this
    ///   node does not know can learn that term; a `TermQuery` and a
    ///   `MemberQuery` are only answered likewise. A
    ///   stranger's `Append`, `Heartbeat`, `Snapshot` or `RequestVote` at
    ///   this node's term or above, while it hears no leader of its own, is
    ///   dropped as [`Hearing::Stranger`]: the members are asked about it.
    fn hears(&self, m: &Message) -> Hearing {
        if self.trust_every_peer {
            return Hearing::Heard;
        }
        if m.term >= MAX_TERM {
            return Hearing::Dropped;
        }
        if self.knows(m.from) || (m.from == self.leader && m.term == self.term) {
            if m.term > self.term.saturating_add(MAX_TERM_JUMP) && m.term > self.term_reach() {
                return Hearing::OutOfReach;
            }
            return Hearing::Heard;
        }
        match m.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } if m.term < self.term => {
                Hearing::Heard
            }
            // Only answered, with this node's term: a recovering node may
            // not know yet that the asker is a member.
            MessageBody::TermQuery | MessageBody::MemberQuery { .. } => Hearing::Heard,
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. }
            | MessageBody::RequestVote { .. } => {
                let in_lease = self.role == Role::Leader
                    || (self.leader != NO_NODE && self.election_elapsed < self.election_timeout);
                if in_lease || m.term < self.term {
                    Hearing::Dropped
                } else {
                    Hearing::Stranger
                }
            }
            _ => Hearing::Dropped,
        }
    }

    /// Whether `id` is one this node listens to: a voter or learner of its
    /// configuration, an id its operator listed, or one a member vouched
    /// for.
    fn knows(&self, id: NodeId) -> bool {
        self.prs.progress.contains_key(&id)
            || self.strangers.listed().contains(&id)
            || self.strangers.is_vouched(id)
    }

    /// Whether `id` may vouch for others: a node of this node's own
    /// configuration, or a listed one (never a vouched one).
    fn may_vouch(&self, id: NodeId) -> bool {
        self.prs.progress.contains_key(&id) || self.strangers.listed().contains(&id)
    }

    /// The voters whose terms count toward the quorum term: those of the
    /// configuration, or the listed ids while it has none.
    fn voters_to_ask(&self) -> std::collections::BTreeSet<NodeId> {
        if self.prs.progress.is_empty() {
            return self.strangers.listed().clone();
        }
        self.prs.voters().collect()
    }

    /// Whom to ask about strangers: the voters of the configuration and
    /// the listed ids, but this node.
    fn vouchers(&self) -> std::collections::BTreeSet<NodeId> {
        let mut ids: std::collections::BTreeSet<NodeId> = self.prs.voters().collect();
        ids.extend(self.strangers.listed().iter().copied());
        ids.remove(&self.id);
        ids
    }

    /// The highest term one message may bring this node to: its own term or
    /// the term a quorum of its voters reported, whichever is higher, plus
    /// [`MAX_TERM_JUMP`] (below [`MAX_TERM`]).
    fn term_reach(&self) -> u64 {
        let voters = self.voters_to_ask();
        let quorum = self.strangers.quorum_term(self.id, self.term, &voters);
        self.term
            .max(quorum)
            .saturating_add(MAX_TERM_JUMP)
            .min(MAX_TERM - 1)
    }

    /// Sends `body` (outside the term conversation) to each of `ids`.
    fn ask(&mut self, ids: std::collections::BTreeSet<NodeId>, body: MessageBody) {
        for to in ids {
            self.send(Message {
                from: self.id,
                to,
                term: 0,
                body: body.clone(),
            });
        }
    }

    /// A stranger would have led this node or won its vote: ask the
    /// members, at most once per election timeout, whether it is one of
    /// theirs.
    fn stranger_dropped(&mut self, m: &Message) {
        self.strangers.saw(m.from);
        let every = self.election_timeout as u64;
        let Some(ids) = self.strangers.due_query(self.ticks, every) else {
            return;
        };
        log::info!(
            "{} dropped a {} from {}, which is not in its configuration; asking its voters \
             whether {ids:?} are members",
            self.id,
            m.body.name(),
            m.from
        );
        let vouchers = self.vouchers();
        self.ask(vouchers, MessageBody::MemberQuery { ids });
    }

    /// A heard message whose term is too far ahead: drop it and ask the
    /// voters for their terms, which may bring it within reach.
    fn term_out_of_reach(&mut self, m: &Message) {
        if self.may_warn("term out of reach") {
            log::warn!(
                "{} dropped a {} from {} at term {}: more than {MAX_TERM_JUMP} above its term {} \
                 and its voters' (asking them for their terms)",
                self.id,
                m.body.name(),
                m.from,
                m.term,
                self.term
            );
        }
        let every = self.election_timeout as u64;
        if self.strangers.due_term_query(self.ticks, every) {
            let mut voters = self.voters_to_ask();
            voters.remove(&self.id);
            self.ask(voters, MessageBody::TermQuery);
        }
    }

    /// A node asks which of `ids` are members here: answer with those that
    /// are, and the leader this node follows if it is one. Anyone may ask
    /// (membership is no secret, and the asker may be a member this node
    /// does not know yet); the answer touches nothing here.
    fn member_query(&mut self, from: NodeId, ids: &[NodeId]) {
        let mut members: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|id| self.prs.progress.contains_key(id))
            .collect();
        if self.leader != NO_NODE
            && self.prs.progress.contains_key(&self.leader)
            && !members.contains(&self.leader)
        {
            members.push(self.leader);
        }
        if members.is_empty() {
            return;
        }
        self.send(Message {
            from: self.id,
            to: from,
            term: 0,
            body: MessageBody::MemberReport { members },
        });
    }

    /// A node of this node's configuration, or a listed one (never a
    /// vouched one), reports members of its configuration: vouch for those
    /// this node lacks.
    fn member_report(&mut self, from: NodeId, members: &[NodeId]) {
        if !self.may_vouch(from) {
            return;
        }
        for &id in members {
            if id == NO_NODE || id == self.id || self.prs.progress.contains_key(&id) {
                continue;
            }
            if self.strangers.vouch(id) {
                log::info!(
                    "{} listens to {id} from now on: member {from} has it in its configuration",
                    self.id
                );
            }
        }
    }

    /// The configuration changed: vouched ids that became members, or were
    /// removed, are forgotten.
    fn strangers_reconfigured(&mut self, removed: Option<NodeId>) {
        let members = self.prs.progress.keys().copied().collect();
        let voters = self.prs.voters().collect();
        self.strangers
            .configuration_changed(&members, &voters, removed);
    }

    /// The ids heard though they are not in the configuration, because a
    /// member vouched for them (the transport lets them in too).
    pub fn vouched(&self) -> Vec<NodeId> {
        self.strangers.vouched().collect()
    }

    /// Changes whenever [`Raft::vouched`] does.
    pub fn vouched_generation(&self) -> u64 {
        self.strangers.generation()
    }

    /// Processes one message from a peer. Malformed or unexpected messages
    /// are ignored; this never panics on what a peer sends.
    pub fn step(&mut self, m: Message) {
        if m.from == NO_NODE || m.from == self.id || m.to != self.id {
            return;
        }
        match self.hears(&m) {
            Hearing::Heard => {}
            Hearing::Dropped => {
                log::debug!(
                    "{} drops {} from {}: not a member, or term {} out of range",
                    self.id,
                    m.body.name(),
                    m.from,
                    m.term
                );
                return;
            }
            Hearing::Stranger => return self.stranger_dropped(&m),
            Hearing::OutOfReach => return self.term_out_of_reach(&m),
        }
        if m.body.outside_terms() {
            // Term 0: outside the term conversation.
        } else if m.term > self.term {
            if let MessageBody::RequestVote { transfer, .. } = m.body {
                // CheckQuorum lease: while we hear from a leader, ignore
                // candidates, unless the leader itself asked for this election.
                let in_lease = self.check_quorum
                    && self.leader != NO_NODE
                    && self.election_elapsed < self.election_timeout;
                if in_lease && !transfer {
                    return;
                }
            }
            match m.body {
                MessageBody::RequestVote { pre: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre: true,
                    reject: false,
                    ..
                } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Snapshot { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NO_NODE),
            }
        } else if m.term < self.term {
            match m.body {
                // A stale leader (e.g. after a partition) learns our term
                // from the answer and steps down. Without CheckQuorum and
                // PreVote our vote requests would carry our term to it, but
                // only if our membership has it as a voter: a far-behind
                // node that does not know the leader must answer it, or it
                // could never rejoin.
                // A node that cannot campaign (not a voter of its own,
                // perhaps stale, configuration) must answer too: no vote
                // request of its own will ever carry its term.
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.check_quorum
                        || self.pre_vote
                        || !self.prs.is_voter(m.from)
                        || !self.promotable() =>
                {
                    self.send_to(
                        m.from,
                        MessageBody::AppendResponse {
                            index: 0,
                            reject: false,
                            reject_hint: 0,
                            hint_term: 0,
                            recovery: self.recovery_tag,
                        },
                    );
                }
                MessageBody::RequestVote {
                    pre: true,
                    campaign,
                    ..
                } => {
                    self.send_to(
                        m.from,
                        MessageBody::RequestVoteResponse {
                            pre: true,
                            reject: true,
                            campaign,
                        },
                    );
                }
                _ => {}
            }
            return;
        }

        if let MessageBody::RequestVote {
            pre,
            last_index,
            last_term,
            ..
        } = m.body
        {
            self.handle_vote(&m, pre, last_index, last_term);
            return;
        }
        match m.body {
            MessageBody::TermQuery => {
                let term = self.term;
                self.send(Message {
                    from: self.id,
                    to: m.from,
                    term: 0,
                    body: MessageBody::TermReport { term },
                });
                return;
            }
            MessageBody::TermReport { term } => {
                self.term_reported(m.from, term);
                return;
            }
            MessageBody::MemberQuery { ref ids } => return self.member_query(m.from, ids),
            MessageBody::MemberReport { ref members } => {
                return self.member_report(m.from, members)
            }
            _ => {}
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        match m.body {
            MessageBody::Propose { entries } => {
                let _ = self.propose(entries);
            }
            MessageBody::ReadIndex { context } => self.leader_read_index(from, context),
            MessageBody::TransferLeader { target } => self.leader_transfer(target),
            MessageBody::AppendResponse {
                index,
                reject,
                reject_hint,
                hint_term,
                recovery,
            } if self.takes_answer(from, recovery) => {
                self.handle_append_response(from, index, reject, reject_hint, hint_term)
            }
            MessageBody::HeartbeatResponse { context, recovery }
                if self.takes_answer(from, recovery) =>
            {
                self.handle_heartbeat_response(from, context)
            }
            MessageBody::Recovering {
                id,
                last_index,
                last_term,
            } => self.handle_recovering(from, id, last_index, last_term),
            MessageBody::RecoveryDone { id } => self.handle_recovery_done(from, id),
            _ => {}
        }
    }

    /// A repaired follower says its recovery is over: it durably holds our
    /// log up to the target and knows every voter's term. Its answers count
    /// again from now on (what it acknowledged meanwhile, tagged, already
    /// moved its progress).
    fn handle_recovery_done(&mut self, from: NodeId, id: u64) {
        let Some(pr) = self.prs.progress.get_mut(&from) else {
            return;
        };
        let Some(target) = pr.finish_recovery(id) else {
            return;
        };
        log::info!("{} repaired {from}: it holds index {target} again", self.id);
        if self.maybe_commit() {
            self.on_leader_commit();
        }
    }

    /// Whether an answer of `from` tagged `tag` counts: while `from` is
    /// being repaired, only the answers of the acknowledged recovery do (the
    /// others may acknowledge what it has since lost). It counts as a sign
    /// of life either way.
    fn takes_answer(&mut self, from: NodeId, tag: u64) -> bool {
        let Some(pr) = self.prs.progress.get_mut(&from) else {
            return false;
        };
        pr.recent_active = true;
        pr.takes_answer(tag)
    }

    /// A follower lost durable state: forget what we knew of it, leave it
    /// out of every quorum until it holds our whole log, and probe it from
    /// where its log really ends.
    fn handle_recovering(&mut self, from: NodeId, id: u64, last_index: u64, last_term: u64) {
        let own_last = self.log.last_index();
        let Some(pr) = self.prs.progress.get_mut(&from) else {
            return;
        };
        if pr.retired_recoveries.contains(&id) {
            return; // a late copy of an announcement already handled
        }
        let target = match pr.recovery {
            Some(r) if r.id == id => r.target, // a repeat: answer it again
            _ => {
                log::warn!(
                    "{} repairs {from}: it lost durable state (its log ends at {last_index}/\
                     {last_term}); it counts in no quorum until it holds index {own_last}",
                    self.id
                );
                pr.start_recovery(id, last_index.min(own_last) + 1, own_last);
                own_last
            }
        };
        self.send_to(from, MessageBody::RecoveryAck { id, target });
        self.send_append(from);
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        index: u64,
        reject: bool,
        reject_hint: u64,
        hint_term: u64,
    ) {
        let last_index = self.log.last_index();
        let Some(pr) = self.prs.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if reject {
            // Skip every entry of a term the follower does not have.
            let hint = if hint_term > 0 {
                self.log.find_conflict_by_term(reject_hint, hint_term).0
            } else {
                reject_hint
            };
            let Some(pr) = self.prs.progress.get_mut(&from) else {
                return;
            };
            if pr.maybe_decr_to(index, hint) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from);
            }
            return;
        }
        if index > last_index {
            return; // cannot acknowledge what we never had
        }
        let old_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_le(index),
        }
        if self.maybe_commit() {
            self.on_leader_commit();
        } else if old_paused {
            self.send_append(from);
        }
        // Fill the window while there is something to send.
        while self.maybe_send_append(from, false) {}
        if from == self.lead_transferee
            && self
                .prs
                .progress
                .get(&from)
                .is_some_and(|p| p.matched == self.log.last_index())
        {
            log::info!("{} sends timeout-now to {}: it is caught up", self.id, from);
            self.send_to(from, MessageBody::TimeoutNow);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, context: Vec<u8>) {
        let last_index = self.log.last_index();
        let Some(pr) = self.prs.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first_one();
        }
        let repaired = pr.recovery.filter(|r| pr.matched >= r.target);
        if pr.matched < last_index {
            self.send_append(from);
        }
        // A node that holds its target and still has not said it is done:
        // maybe its RecoveryDone was lost (or it still waits for terms).
        if let Some(r) = repaired {
            self.send_to(
                from,
                MessageBody::RecoveryAck {
                    id: r.id,
                    target: r.target,
                },
            );
        }
        // A recovering node may have voted for a newer leader and forgotten
        // it: its ack cannot confirm our leadership for a read.
        let recovering = self
            .prs
            .progress
            .get(&from)
            .is_some_and(|p| p.recovery.is_some());
        if context.is_empty() || recovering {
            return;
        }
        let Some(acks) = self.read_only.recv_ack(from, &context) else {
            return;
        };
        if !self.prs.has_quorum(acks) {
            return;
        }
        for rs in self.read_only.advance(&context) {
            self.answer_read(rs);
        }
    }

    fn answer_read(&mut self, rs: ReadIndexStatus) {
        if rs.from == self.id {
            self.read_states.push(ReadState {
                index: rs.index,
                context: rs.context,
            });
        } else {
            let body = MessageBody::ReadIndexResponse {
                index: rs.index,
                context: rs.context,
            };
            self.send_to(rs.from, body);
        }
    }

    fn leader_read_index(&mut self, from: NodeId, context: Vec<u8>) {
        let index = self.log.committed;
        if self.prs.is_singleton() && self.prs.is_voter(self.id) {
            if self.committed_entry_in_current_term() {
                let acks = Default::default();
                self.answer_read(ReadIndexStatus {
                    from,
                    context,
                    index,
                    acks,
                });
            } else {
                self.pending_read_index.push((from, context));
            }
            return;
        }
        if !self.committed_entry_in_current_term() {
            self.pending_read_index.push((from, context));
            return;
        }
        if self.read_only.add_request(index, from, context.clone()) {
            self.read_only.recv_ack(self.id, &context);
            self.bcast_heartbeat_with_ctx(context);
        }
    }

    fn committed_entry_in_current_term(&self) -> bool {
        self.log.term_or_zero(self.log.committed) == self.term
    }

    fn maybe_commit(&mut self) -> bool {
        let index = self.prs.committed();
        let term = self.term;
        self.log.maybe_commit(index, term)
    }

    /// The commit index moved on a leader: tell everyone, and serve reads
    /// that waited for the first commit of this term.
    fn on_leader_commit(&mut self) {
        if self.committed_entry_in_current_term() && !self.pending_read_index.is_empty() {
            for (from, context) in std::mem::take(&mut self.pending_read_index) {
                self.leader_read_index(from, context);
            }
        }
        self.bcast_append();
    }

    fn leader_transfer(&mut self, target: NodeId) {
        let Some(pr) = self.prs.progress.get(&target) else {
            return;
        };
        if pr.is_learner || pr.recovery.is_some() || target == self.id {
            return;
        }
        if self.lead_transferee == target {
            return;
        }
        let matched = pr.matched;
        self.election_elapsed = 0;
        self.lead_transferee = target;
        log::info!("{} starts transferring leadership to {}", self.id, target);
        if matched == self.log.last_index() {
            self.send_to(target, MessageBody::TimeoutNow);
        } else {
            self.send_append(target);
        }
    }

    fn step_candidate(&mut self, m: Message) {
        let from = m.from;
        let term = m.term;
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.become_follower(term, from);
                self.handle_append(from, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, context } => {
                self.become_follower(term, from);
                self.handle_heartbeat(from, commit, context);
            }
            MessageBody::Snapshot { snapshot } => {
                self.become_follower(term, from);
                self.handle_snapshot(from, snapshot);
            }
            MessageBody::RequestVoteResponse {
                pre,
                reject,
                campaign,
            } => {
                if pre != (self.role == Role::PreCandidate) || campaign != self.recovery_tag {
                    return; // an answer to an earlier round, or process
                }
                self.prs.record_vote(from, !reject);
                match self.prs.tally_votes().2 {
                    VoteResult::Won if pre => self.campaign(false),
                    VoteResult::Won => {
                        self.become_leader();
                        self.bcast_append();
                    }
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, NO_NODE);
                    }
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        let from = m.from;
        if let Some(r) = &self.recovery {
            let from_leader = matches!(
                m.body,
                MessageBody::Append { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::Snapshot { .. }
            );
            if from_leader && !r.acked_by(from, self.term) {
                // Until this leader knows we lost state, take nothing from
                // it: ask it to reset us.
                self.election_elapsed = 0;
                self.leader = from;
                let body = MessageBody::Recovering {
                    id: r.id,
                    last_index: self.log.last_index(),
                    last_term: self.log.last_term(),
                };
                self.send_to(from, body);
                return;
            }
        }
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.election_elapsed = 0;
                self.leader = from;
                self.handle_append(from, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, context } => {
                self.election_elapsed = 0;
                self.leader = from;
                self.handle_heartbeat(from, commit, context);
            }
            MessageBody::Snapshot { snapshot } => {
                self.election_elapsed = 0;
                self.leader = from;
                self.handle_snapshot(from, snapshot);
            }
            MessageBody::TimeoutNow => {
                log::info!(
                    "{} campaigns at once: leadership transferred by {}",
                    self.id,
                    from
                );
                self.hup(true);
            }
            MessageBody::ReadIndexResponse { index, context } if from == self.leader => {
                self.read_states.push(ReadState { index, context });
            }
            MessageBody::RecoveryAck { id, .. }
                if from == self.leader && self.recovery.is_none() && id == self.recovery_tag =>
            {
                // Our RecoveryDone was lost: say it again.
                self.send_to(from, MessageBody::RecoveryDone { id });
            }
            MessageBody::RecoveryAck { id, target } if from == self.leader => {
                let term = self.term;
                if let Some(r) = self.recovery.as_mut().filter(|r| r.id == id) {
                    if !r.acked_by(from, term) {
                        // What matched an earlier leader's log says nothing
                        // of this one's.
                        r.matched = 0;
                    }
                    r.acked = Some(Acked {
                        leader: from,
                        term,
                        target,
                    });
                    log::info!(
                        "{} is being repaired by leader {from}: it must reach index {target}",
                        self.id
                    );
                    self.maybe_finish_recovery();
                }
            }
            _ => {}
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) {
        // Entries must follow prev_index contiguously, with terms that never
        // decrease and never exceed the sender's term. No entry can sit at
        // the largest index: nothing could ever follow it.
        let mut expected_term = prev_term;
        for (i, e) in entries.iter().enumerate() {
            if prev_index.checked_add(1 + i as u64) != Some(e.index)
                || e.index == u64::MAX
                || e.term < expected_term
                || e.term > self.term
            {
                if self.may_warn("malformed append") {
                    log::warn!("{} ignores a malformed append from {}", self.id, from);
                }
                return;
            }
            expected_term = e.term;
        }
        if prev_index < self.log.committed {
            let index = self.log.committed;
            self.recovery_matched(index);
            let body = MessageBody::AppendResponse {
                index,
                reject: false,
                reject_hint: 0,
                hint_term: 0,
                recovery: self.recovery_tag,
            };
            self.send_to(from, body);
            return;
        }
        match self
            .log
            .maybe_append(prev_index, prev_term, commit, entries)
        {
            Ok(Some(last)) => {
                self.recovery_matched(last);
                let body = MessageBody::AppendResponse {
                    index: last,
                    reject: false,
                    reject_hint: 0,
                    hint_term: 0,
                    recovery: self.recovery_tag,
                };
                self.send_to(from, body);
            }
            Ok(None) => {
                let probe = prev_index.min(self.log.last_index());
                let (reject_hint, hint_term) = self.log.find_conflict_by_term(probe, prev_term);
                let body = MessageBody::AppendResponse {
                    index: prev_index,
                    reject: true,
                    reject_hint,
                    hint_term,
                    recovery: self.recovery_tag,
                };
                self.send_to(from, body);
            }
            Err(why) => {
                if self.may_warn("bad append") {
                    log::warn!("{} ignores an append from {}: {}", self.id, from, why)
                }
            }
        }
    }

    fn handle_heartbeat(&mut self, from: NodeId, commit: u64, context: Vec<u8>) {
        // The leader caps a heartbeat's commit at what we are known to hold,
        // so one past our last entry is malformed. Clamping it to our last
        // entry could commit entries the leader does not have; ignore it.
        if commit <= self.log.last_index() {
            self.log.commit_to(commit);
        } else if self.may_warn("commit past last index") {
            log::warn!(
                "{} ignores commit {} from {}: past its last index {} (warned at most \
                 once per election timeout)",
                self.id,
                commit,
                from,
                self.log.last_index()
            );
        }
        let recovery = self.recovery_tag;
        self.send_to(from, MessageBody::HeartbeatResponse { context, recovery });
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: super::types::Snapshot) {
        // A snapshot at the largest index is malformed: the log after it
        // would start at an index that does not exist.
        let malformed = snapshot.meta.index == u64::MAX;
        let index = if !malformed && self.restore(snapshot) {
            log::info!("{} restored snapshot at {}", self.id, self.log.committed);
            self.log.last_index()
        } else {
            self.log.committed
        };
        self.recovery_matched(index);
        let body = MessageBody::AppendResponse {
            index,
            reject: false,
            reject_hint: 0,
            hint_term: 0,
            recovery: self.recovery_tag,
        };
        self.send_to(from, body);
    }

    /// Installs a snapshot newer than our commit index. Returns false if it
    /// was not needed (our log already has it, or it is old).
    fn restore(&mut self, snapshot: super::types::Snapshot) -> bool {
        let meta = &snapshot.meta;
        if meta.index <= self.log.committed {
            return false;
        }
        if self.log.match_term(meta.index, meta.term) {
            // We already have the entries: just fast-forward the commit index.
            self.log.commit_to(meta.index);
            return false;
        }
        let cs = meta.conf_state.clone();
        self.log.restore(snapshot);
        let mut prs = ProgressTracker::new(self.max_inflight);
        prs.set_conf(&cs, self.log.last_index() + 1);
        self.prs = prs;
        self.strangers_reconfigured(None);
        // A recovering node may only now know whom to ask for terms.
        self.query_terms();
        true
    }

    // ---- proposals and requests from the application -----------------------

    /// Proposes entries. On a leader they are appended and replicated; on a
    /// follower they are forwarded to the leader (and may still be lost: the
    /// application learns the outcome only when an entry is applied).
    pub fn propose(&mut self, mut entries: Vec<Entry>) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        match self.role {
            Role::Leader => {}
            Role::Follower if self.leader != NO_NODE => {
                let leader = self.leader;
                let body = MessageBody::Propose { entries };
                self.send(Message {
                    from: self.id,
                    to: leader,
                    term: 0,
                    body,
                });
                return Ok(());
            }
            _ => return Err(Error::ProposalDropped(DropReason::NoLeader)),
        }
        if !self.prs.progress.contains_key(&self.id) {
            return Err(Error::ProposalDropped(DropReason::NotAMember));
        }
        if self.lead_transferee != NO_NODE {
            return Err(Error::ProposalDropped(DropReason::TransferInProgress));
        }
        let mut conf_at = None;
        for (i, e) in entries.iter_mut().enumerate() {
            if e.kind != EntryKind::ConfChange {
                continue;
            }
            let Ok(cc) = ConfChange::decode(&e.data) else {
                return Err(Error::ProposalDropped(DropReason::MalformedConfChange));
            };
            if cc.kind == ConfChangeKind::RemoveNode {
                if !self.prs.progress.contains_key(&cc.node_id) {
                    return Err(Error::ProposalDropped(DropReason::UnknownMember));
                }
                if self.prs.is_voter(cc.node_id) && self.prs.voters().count() == 1 {
                    return Err(Error::ProposalDropped(DropReason::LastVoter));
                }
            }
            if conf_at.is_some() || self.pending_conf_index > self.log.applied {
                return Err(Error::ProposalDropped(DropReason::ConfChangePending));
            }
            conf_at = Some(i);
        }
        let first = self.log.last_index() + 1;
        self.append_entries(entries);
        if let Some(i) = conf_at {
            self.pending_conf_index = first + i as u64;
        }
        self.bcast_append();
        Ok(())
    }

    fn append_entries(&mut self, mut entries: Vec<Entry>) {
        let first = self.log.last_index() + 1;
        for (i, e) in entries.iter_mut().enumerate() {
            e.index = first + i as u64;
            e.term = self.term;
        }
        self.log.append(entries);
    }

    /// Requests a read index for `context`. The answer arrives as a
    /// [`ReadState`] in a later Ready (or never, if leadership changes: the
    /// application times the request out).
    pub fn read_index(&mut self, context: Vec<u8>) -> Result<(), Error> {
        match self.role {
            Role::Leader => {
                self.leader_read_index(self.id, context);
                Ok(())
            }
            Role::Follower if self.leader != NO_NODE => {
                let leader = self.leader;
                let body = MessageBody::ReadIndex { context };
                self.send(Message {
                    from: self.id,
                    to: leader,
                    term: 0,
                    body,
                });
                Ok(())
            }
            _ => Err(Error::ProposalDropped(DropReason::NoLeader)),
        }
    }

    /// Asks for leadership to move to `target`.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), Error> {
        match self.role {
            Role::Leader => {
                self.leader_transfer(target);
                Ok(())
            }
            Role::Follower if self.leader != NO_NODE => {
                let leader = self.leader;
                let body = MessageBody::TransferLeader { target };
                self.send(Message {
                    from: self.id,
                    to: leader,
                    term: 0,
                    body,
                });
                Ok(())
            }
            _ => Err(Error::ProposalDropped(DropReason::NoLeader)),
        }
    }

    /// Applies a committed conf change to the membership and returns the new
    /// configuration. The application calls this when it applies the entry.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> ConfState {
        let mut cs = self.prs.conf_state();
        let id = cc.node_id;
        match cc.kind {
            ConfChangeKind::AddNode => {
                cs.learners.retain(|&l| l != id);
                if !cs.voters.contains(&id) {
                    cs.voters.push(id);
                    cs.voters.sort_unstable();
                }
            }
            ConfChangeKind::AddLearner => {
                if !cs.voters.contains(&id) && !cs.learners.contains(&id) {
                    cs.learners.push(id);
                    cs.learners.sort_unstable();
                }
            }
            ConfChangeKind::RemoveNode => {
                cs.voters.retain(|&v| v != id);
                cs.learners.retain(|&l| l != id);
            }
        }
        self.switch_to_config(&cs);
        if cc.kind == ConfChangeKind::RemoveNode {
            self.strangers_reconfigured(Some(id));
        }
        cs
    }

    fn switch_to_config(&mut self, cs: &ConfState) {
        self.prs.set_conf(cs, self.log.last_index() + 1);
        self.strangers_reconfigured(None);
        self.query_terms();
        if self.role != Role::Leader {
            return;
        }
        if !self.prs.is_voter(self.id) {
            // Removed: hand over to a caught-up voter, then step down.
            let last = self.log.last_index();
            let target = self
                .prs
                .progress
                .iter()
                .filter(|(id, p)| **id != self.id && !p.is_learner && p.matched == last)
                .map(|(id, _)| *id)
                .next();
            if let Some(target) = target {
                self.send_to(target, MessageBody::TimeoutNow);
            }
            log::info!("{} removed from the cluster, stepping down", self.id);
            let term = self.term;
            self.become_follower(term, NO_NODE);
            return;
        }
        if self.lead_transferee != NO_NODE && !self.prs.is_voter(self.lead_transferee) {
            self.lead_transferee = NO_NODE;
        }
        if self.maybe_commit() {
            self.on_leader_commit();
        } else {
            for id in self.peers() {
                self.maybe_send_append(id, false);
            }
        }
    }

    // ---- recovery of lost state (see recovery.rs) ----------------------------

    /// Asks every voter that has not reported its term yet.
    fn query_terms(&mut self) {
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        r.query_elapsed = 0;
        let Some(reports) = &r.reports else {
            return;
        };
        let ask: Vec<NodeId> = self
            .prs
            .voters()
            .filter(|v| *v != self.id && !reports.contains_key(v))
            .collect();
        for to in ask {
            self.send(Message {
                from: self.id,
                to,
                term: 0,
                body: MessageBody::TermQuery,
            });
        }
    }

    /// A voter reported its term. Once every other voter has, this node
    /// knows a term `U` at least as high as any it can have voted in: it
    /// moves there, keeping `VOTE_LOST`, and votes again only above it.
    fn term_reported(&mut self, from: NodeId, term: u64) {
        if !self.voters_to_ask().contains(&from) || term >= MAX_TERM {
            return;
        }
        self.strangers.reported(from, term);
        if !self.prs.is_voter(from) {
            return;
        }
        // One report alone moves the term no further than a message may.
        let term = term.min(self.term_reach());
        let Some(reports) = self.recovery.as_mut().and_then(|r| r.reports.as_mut()) else {
            return;
        };
        reports.insert(from, term);
        if term > self.term {
            self.become_follower(term, NO_NODE);
        }
        let Some(reports) = self.recovery.as_ref().and_then(|r| r.reports.as_ref()) else {
            return;
        };
        let all_known = self.prs.voters().count() > 0
            && self
                .prs
                .voters()
                .all(|v| v == self.id || reports.contains_key(&v));
        if !all_known {
            return;
        }
        let u = reports.values().copied().max().unwrap_or(0).max(self.term);
        if let Some(r) = self.recovery.as_mut() {
            r.reports = None;
        }
        if u > self.term {
            self.become_follower(u, NO_NODE);
        }
        self.vote = VOTE_LOST;
        log::info!(
            "{} learned every voter's term: it will vote again only above term {u}",
            self.id
        );
        self.maybe_finish_recovery();
    }

    /// A recovering node now knows its log matches the acknowledging
    /// leader's up to `index`.
    fn recovery_matched(&mut self, index: u64) {
        let (leader, term) = (self.leader, self.term);
        if let Some(r) = self.recovery.as_mut() {
            if r.acked_by(leader, term) {
                r.matched = r.matched.max(index);
            }
        }
        self.maybe_finish_recovery();
    }

    /// Ends the recovery once the terms are known, the current leader
    /// acknowledged it, and its target is durably held.
    pub(super) fn maybe_finish_recovery(&mut self) {
        let persisted = self.log.persisted_index();
        let (leader, term) = (self.leader, self.term);
        let Some(r) = &self.recovery else {
            return;
        };
        let done = r.reports.is_none()
            && r.acked_by(leader, term)
            && r.acked
                .is_some_and(|a| r.matched >= a.target && persisted >= a.target);
        if done {
            log::info!(
                "{} is repaired: it holds the leader's log and votes and counts again",
                self.id
            );
            let id = r.id;
            self.recovery = None;
            self.recovered = true;
            // Only now may the leader count us: it waits for this, not for
            // our acks, since only we know whether the terms are known.
            self.send_to(leader, MessageBody::RecoveryDone { id });
        }
    }

    /// The application persisted entries up to `(index, term)`. A leader now
    /// counts itself towards the quorum for them.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        if self.recovery.is_some() {
            self.maybe_finish_recovery();
        }
        if self.role != Role::Leader || !self.log.match_term(index, term) {
            return;
        }
        let updated = match self.prs.progress.get_mut(&self.id) {
            Some(pr) => pr.maybe_update(index),
            None => false,
        };
        if updated && self.maybe_commit() {
            self.on_leader_commit();
        }
    }

    /// The transport could not reach `id`: stop pipelining to it.
    pub fn report_unreachable(&mut self, id: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.prs.progress.get_mut(&id) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// The transport finished (or failed) sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.prs.progress.get_mut(&id) {
            if pr.state != ProgressState::Snapshot {
                return;
            }
            if !success {
                pr.pending_snapshot = 0;
            }
            pr.become_probe();
            // Wait for the follower's answer (or the next heartbeat) before probing.
            pr.probe_sent = true;
        }
    }
}
