//! The node thread's policy: what etcd keeps in its server rather than in
//! `node.run`, and this node keeps next to the core on the node thread.
//!
//! - **Batching.** Every client request already queued is taken at once:
//!   all writes go to the core in one `propose_batch` (one append, one
//!   broadcast), all reads under one read-index context (one heartbeat round
//!   confirms them all).
//! - **Leader changes.** Requests forwarded to (or accepted by) an old
//!   leader may be lost or may still commit; once a *different* leader is
//!   known they are failed with `ERR LEADER_CHANGED`, as etcd does, rather
//!   than left to time out.
//! - **Forwarded reads.** A follower's read-index request goes to the
//!   leader in one message, which a link that is down loses without a
//!   word. Until its read state comes back, the batch is sent again every
//!   [`READ_RESEND`] (as etcd's `readIndexRetryTime`), and as soon as the
//!   transport reports the leader unreachable (at most every
//!   [`READ_RESEND_MIN`]), which covers a link that broke and came back.
//!   When the leader is still reported unreachable [`READ_GIVE_UP`] after
//!   the first such report, the link is down: the batch's reads are failed
//!   with `ERR UNAVAILABLE` (nothing was read; retry here or on another
//!   node) instead of waiting out their timeout.
//! - **Transfers.** A `TRANSFER_LEADER` is answered when its target is seen
//!   to lead, or left to time out.
//! - **Learner promotion.** `ADD_NODE` adds a learner; the leader promotes
//!   it to voter once its log is within [`PROMOTE_GAP`] entries of its own
//!   (etcd leaves this to the operator).
//! - **Certain refusals at once.** `REMOVE_NODE` of a non-member or of the
//!   last voter, and `TRANSFER_LEADER` to a node that is not a voter, are
//!   refused with `ERR BAD_REQUEST` from this node's view of the membership
//!   (the leader's core refuses them too, should that view be stale).
//! - **The cluster ID.** A leader of a cluster that has none yet (right
//!   after the bootstrap) proposes a random one; the first applied wins.
//! - **Log time.** While client sessions exist, a leader proposes a clock
//!   entry with its wall clock every [`CLOCK_EVERY`]; sessions expire in
//!   the log time these entries make (`sessions.rs`). Only a leader stamps,
//!   so a follower's clock never matters, and the state machine takes the
//!   largest stamp, so a new leader whose clock is behind cannot move log
//!   time back.
//!
//! All of it is driven by the node thread: `node.rs` calls in at the points
//! named after the loop's arms, and nothing here is shared with another
//! thread except through the channels and [`Shared`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info};

use crate::kv::{encode_command, encode_conf_context, Command, RequestId};
use crate::metrics::ServerMetrics;
use crate::protocol::{ErrorCode, Reply};
use crate::raft::{
    ConfChange, ConfChangeKind, ConfState, DropReason, Error as RaftError, MemStorage, NodeId,
    ProgressState, RawNode, ReadState, Role, SoftState, NO_NODE,
};
use crate::reads::{Query, ReadNotice, ReadWaiter};
use crate::reply::ReplyTx;
use crate::shared::Shared;

/// A learner is promoted once its log is within this many entries of the
/// leader's (and it is being replicated to normally).
pub const PROMOTE_GAP: u64 = 100;

/// How many queued requests one round of the node loop takes at most.
const MAX_BATCH: usize = 8192;

/// A promotion is proposed again only after this long without effect.
const PROMOTE_RETRY: Duration = Duration::from_secs(1);

/// How often a leader stamps log time while client sessions exist.
pub const CLOCK_EVERY: Duration = Duration::from_secs(1);

/// How long a follower waits for the answer to a forwarded read-index
/// request before it sends the request again.
pub const READ_RESEND: Duration = Duration::from_millis(500);

/// The shortest time between two sends of one forwarded read index
/// prompted by unreachable reports (each failed send makes one).
pub const READ_RESEND_MIN: Duration = Duration::from_millis(100);

/// How long after the first unreachable report for the leader a forwarded
/// read that still waits, while the reports go on, is failed.
pub const READ_GIVE_UP: Duration = Duration::from_secs(1);

/// A read-index request this node forwarded to the leader, not answered yet.
struct Forwarded {
    /// When it was last sent.
    sent: Instant,
    /// The latest deadline of its reads: past it, nobody waits.
    deadline: Instant,
    /// The first unreachable report for the leader while it waited.
    first_loss: Option<Instant>,
}

/// A client request for the node thread.
pub enum NodeRequest {
    /// An encoded command with the id it was registered under in
    /// [`Pending`](crate::reply::Pending); answered when applied.
    Propose {
        data: Vec<u8>,
        id: u64,
        deadline: Instant,
    },
    /// A linearizable read.
    Read {
        query: Query,
        reply: ReplyTx,
        deadline: Instant,
    },
    /// A membership change, registered like a proposal.
    ConfChange {
        cc: ConfChange,
        id: u64,
        deadline: Instant,
    },
    /// Move leadership; answered when `target` is known to lead.
    Transfer {
        target: NodeId,
        reply: ReplyTx,
        deadline: Instant,
    },
}

/// A `TRANSFER_LEADER` waiting for its target to lead.
struct Transfer {
    target: NodeId,
    reply: ReplyTx,
    deadline: Instant,
}

pub struct Policy {
    shared: Arc<Shared>,
    read_notices: Sender<ReadNotice>,
    read_seq: u64,
    /// Read-index requests forwarded to the leader, by context.
    forwarded: HashMap<Vec<u8>, Forwarded>,
    transfers: Vec<Transfer>,
    /// The last leader known (never reset to none), and its term.
    leader: NodeId,
    leader_term: u64,
    /// Context of the `ADD_NODE` that added each learner, so that its
    /// client is answered when the promotion applies.
    learner_context: BTreeMap<NodeId, Vec<u8>>,
    /// Promotions proposed, and when.
    promoting: HashMap<NodeId, Instant>,
    /// When this node last proposed a cluster ID.
    cluster_id_proposed: Option<Instant>,
    /// When this node last proposed a clock entry.
    clock_proposed: Option<Instant>,
    metrics: Arc<ServerMetrics>,
}

/// A random id, never 0 (a cluster ID, a recovery id). Not a secret: it
/// tells clusters, and process starts, apart.
pub(crate) fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// A refusal that is certain from this node's view of the membership.
fn refuse_conf_change(cs: &ConfState, cc: &ConfChange) -> Option<Reply> {
    let id = cc.node_id;
    match cc.kind {
        ConfChangeKind::RemoveNode if !cs.contains(id) => Some(Reply::error(
            ErrorCode::BadRequest,
            format!("node {id} is not a member"),
        )),
        ConfChangeKind::RemoveNode if cs.voters == [id] => Some(Reply::error(
            ErrorCode::BadRequest,
            format!("node {id} is the last voter; without it nobody could elect a leader"),
        )),
        _ => None,
    }
}

/// The client-facing error for a request the core refused.
pub fn refusal(e: &RaftError) -> Reply {
    match e {
        RaftError::ProposalDropped(DropReason::NoLeader) => {
            Reply::error(ErrorCode::NoLeader, "no leader is known; retry shortly")
        }
        RaftError::ProposalDropped(
            why @ (DropReason::UnknownMember
            | DropReason::LastVoter
            | DropReason::MalformedConfChange),
        ) => Reply::error(ErrorCode::BadRequest, why.to_string()),
        RaftError::ProposalDropped(why) => Reply::error(ErrorCode::Unavailable, why.to_string()),
        RaftError::InvalidConfig(why) => Reply::error(ErrorCode::Internal, why.clone()),
    }
}

impl Policy {
    pub fn new(
        shared: Arc<Shared>,
        read_notices: Sender<ReadNotice>,
        metrics: Arc<ServerMetrics>,
    ) -> Policy {
        Policy {
            metrics,
            shared,
            read_notices,
            read_seq: 0,
            forwarded: HashMap::new(),
            transfers: Vec::new(),
            leader: NO_NODE,
            leader_term: 0,
            learner_context: BTreeMap::new(),
            promoting: HashMap::new(),
            cluster_id_proposed: None,
            clock_proposed: None,
        }
    }

    /// Takes `first` and every batch already queued behind it (up to
    /// [`MAX_BATCH`] requests), and feeds them to the core in as few calls
    /// as possible.
    pub fn requests(
        &mut self,
        raw: &mut RawNode<MemStorage>,
        first: Vec<NodeRequest>,
        queued: &Receiver<Vec<NodeRequest>>,
    ) {
        let now = Instant::now();
        let shared = self.shared.clone();
        let pending = shared.pending();
        let mut writes: Vec<Vec<u8>> = Vec::new();
        let mut ids: Vec<u64> = Vec::new();
        let mut reads: Vec<ReadWaiter> = Vec::new();
        let mut taken = first.len();
        let more = std::iter::from_fn(|| {
            if taken >= MAX_BATCH {
                return None;
            }
            let b = queued.try_recv().ok()?;
            taken += b.len();
            Some(b)
        });
        for req in first.into_iter().chain(more.flatten()) {
            match req {
                // A request whose client already gave up is not proposed.
                NodeRequest::Propose { id, deadline, .. }
                | NodeRequest::ConfChange { id, deadline, .. }
                    if deadline <= now =>
                {
                    pending.forget(id)
                }
                NodeRequest::Propose { data, id, .. } => {
                    writes.push(data);
                    ids.push(id);
                }
                NodeRequest::Read {
                    query,
                    reply,
                    deadline,
                } => {
                    if deadline > now {
                        reads.push(ReadWaiter {
                            query,
                            reply,
                            deadline,
                        });
                    }
                }
                NodeRequest::ConfChange { cc, id, .. } => {
                    let refused = refuse_conf_change(&raw.status().conf_state, &cc);
                    if let Some(reply) = refused {
                        pending.answer(id, reply);
                    } else if let Err(e) = raw.propose_conf_change(&cc) {
                        pending.answer(id, refusal(&e));
                    }
                }
                NodeRequest::Transfer {
                    target,
                    reply,
                    deadline,
                } => {
                    if raw.soft_state().leader == target {
                        reply.send(Reply::Ok);
                    } else if !raw.status().conf_state.voters.contains(&target) {
                        reply.send(Reply::error(
                            ErrorCode::BadRequest,
                            format!("node {target} is not a voter"),
                        ));
                    } else if let Err(e) = raw.transfer_leader(target) {
                        reply.send(refusal(&e));
                    } else {
                        self.transfers.push(Transfer {
                            target,
                            reply,
                            deadline,
                        });
                    }
                }
            }
        }
        if !writes.is_empty() {
            debug!("proposing a batch of {}", writes.len());
            if let Err(e) = raw.propose_batch(writes) {
                let reply = refusal(&e);
                for id in ids {
                    pending.answer(id, reply.clone());
                }
            }
        }
        if !reads.is_empty() {
            self.read(raw, reads);
        }
    }

    /// Issues one read index for a batch of reads.
    fn read(&mut self, raw: &mut RawNode<MemStorage>, reads: Vec<ReadWaiter>) {
        if crate::debug::unsafe_local_reads() {
            let _ = self.read_notices.send(ReadNotice::Local(reads));
            return;
        }
        self.read_seq += 1;
        let mut ctx = raw.id().to_le_bytes().to_vec();
        ctx.extend_from_slice(&self.read_seq.to_le_bytes());
        let deadline = reads.iter().map(|r| r.deadline).max();
        match raw.read_index(ctx.clone()) {
            // The batch reaches the ready thread before the Ready that
            // carries its read state.
            Ok(()) => {
                if raw.soft_state().role != Role::Leader {
                    if let Some(deadline) = deadline {
                        let sent = Instant::now();
                        let f = Forwarded {
                            sent,
                            deadline,
                            first_loss: None,
                        };
                        self.forwarded.insert(ctx.clone(), f);
                    }
                }
                let _ = self.read_notices.send(ReadNotice::Batch(ctx, reads));
            }
            Err(e) => {
                let reply = refusal(&e);
                for r in reads {
                    r.reply.send(reply.clone());
                }
            }
        }
    }

    /// The Ready about to go out carries these read states: their
    /// requests need no resending.
    pub fn read_states_out(&mut self, states: &[ReadState]) {
        if self.forwarded.is_empty() {
            return;
        }
        for rs in states {
            self.forwarded.remove(&rs.context);
        }
    }

    /// The transport could not deliver messages to `peer`. If it is the
    /// leader, forwarded read-index requests may be lost: each is sent
    /// again, or failed if the leader has been unreachable since
    /// [`READ_GIVE_UP`] ago.
    pub fn peer_unreachable(&mut self, raw: &mut RawNode<MemStorage>, peer: NodeId) {
        if self.forwarded.is_empty() || raw.soft_state().leader != peer {
            return;
        }
        let now = Instant::now();
        let mut failed = Vec::new();
        for (ctx, f) in &mut self.forwarded {
            let first = *f.first_loss.get_or_insert(now);
            if now.saturating_duration_since(first) >= READ_GIVE_UP {
                failed.push(ctx.clone());
            } else if now.saturating_duration_since(f.sent) >= READ_RESEND_MIN
                && raw.read_index(ctx.clone()).is_ok()
            {
                f.sent = now;
            }
        }
        for ctx in failed {
            self.forwarded.remove(&ctx);
            let msg = format!(
                "the leader (node {peer}) cannot be reached from this node; the read was not \
                 served; retry, here or on another node"
            );
            let reply = Reply::error(ErrorCode::Unavailable, msg);
            let _ = self.read_notices.send(ReadNotice::Fail(ctx, reply));
        }
    }

    /// Sends again the forwarded read-index requests unanswered for
    /// [`READ_RESEND`]; forgets those nobody waits for.
    fn resend_reads(&mut self, raw: &mut RawNode<MemStorage>, now: Instant) {
        self.forwarded.retain(|_, f| f.deadline > now);
        for (ctx, f) in &mut self.forwarded {
            if now.saturating_duration_since(f.sent) >= READ_RESEND
                && raw.read_index(ctx.clone()).is_ok()
            {
                debug!("read index unanswered for {READ_RESEND:?}; sending it again");
                f.sent = now;
            }
        }
    }

    /// The Ready about to go out says the leader or role changed. While
    /// the node `stopping` hands its leadership over, requests in flight
    /// are not failed: the new leader has every entry of this one, and the
    /// stop waits for them to apply.
    pub fn soft_state_changed(&mut self, ss: SoftState, term: u64, stopping: bool) {
        self.shared.set_leader(ss.leader);
        self.metrics.set_leader(ss.role == Role::Leader);
        self.transfers.retain(|t| {
            if t.target != ss.leader {
                return true;
            }
            info!("leadership transferred to {}", t.target);
            t.reply.send(Reply::Ok);
            false
        });
        // Losing track of the leader for a moment (a PreVote round that goes
        // back to the same leader) fails nothing; requests still queued in
        // the channel are not affected either.
        if ss.leader == NO_NODE || (ss.leader, term) == (self.leader, self.leader_term) {
            return;
        }
        let had_leader = self.leader != NO_NODE;
        self.metrics.leader_changed();
        self.leader = ss.leader;
        self.leader_term = term;
        if had_leader && !stopping {
            info!(
                "leader changed to {}; failing requests in flight",
                ss.leader
            );
            let msg = "leader changed while the request was in flight; the outcome is unknown";
            self.shared
                .pending()
                .answer_all(&Reply::error(ErrorCode::LeaderChanged, msg));
        }
        if had_leader {
            self.forwarded.clear();
            let _ = self.read_notices.send(ReadNotice::LeaderChanged);
        }
    }

    /// Answers every `TRANSFER_LEADER` still waiting with `reply`.
    pub fn fail_waiting(&mut self, reply: &Reply) {
        for t in self.transfers.drain(..) {
            t.reply.send(reply.clone());
        }
    }

    /// A conf change was applied; `cs` is the membership it made.
    pub fn conf_change_applied(&mut self, cc: &ConfChange, cs: &ConfState) {
        if cc.kind == ConfChangeKind::AddLearner && cs.learners.contains(&cc.node_id) {
            self.learner_context.insert(cc.node_id, cc.context.clone());
        }
        self.learner_context
            .retain(|id, _| cs.learners.contains(id));
        self.promoting.retain(|id, _| cs.learners.contains(id));
    }

    /// One tick of the clock: expire transfers, promote learners, give a
    /// new cluster its ID.
    pub fn tick(&mut self, raw: &mut RawNode<MemStorage>) {
        let now = Instant::now();
        self.transfers.retain(|t| t.deadline > now);
        if !self.forwarded.is_empty() {
            self.resend_reads(raw, now);
        }
        if raw.soft_state().role == Role::Leader {
            self.promote_learners(raw, now);
            self.propose_cluster_id(raw, now);
            self.propose_clock(raw, now);
        }
    }

    /// On the leader, while sessions exist: stamps log time with the wall
    /// clock every [`CLOCK_EVERY`].
    fn propose_clock(&mut self, raw: &mut RawNode<MemStorage>, now: Instant) {
        let recently = self
            .clock_proposed
            .is_some_and(|t| now.duration_since(t) < CLOCK_EVERY);
        if recently || self.shared.sessions() == 0 {
            return;
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let data = encode_command(
            RequestId {
                node: raw.id(),
                seq: 0,
            },
            &Command::Clock { ms },
        );
        if raw.propose(data).is_ok() {
            self.clock_proposed = Some(now);
        }
    }

    fn propose_cluster_id(&mut self, raw: &mut RawNode<MemStorage>, now: Instant) {
        let recently = self
            .cluster_id_proposed
            .is_some_and(|t| now.duration_since(t) < PROMOTE_RETRY);
        if recently || self.shared.membership().cluster_id != 0 {
            return;
        }
        let cmd = Command::SetClusterId { id: random_id() };
        let data = encode_command(
            RequestId {
                node: raw.id(),
                seq: 0,
            },
            &cmd,
        );
        if raw.propose(data).is_ok() {
            self.cluster_id_proposed = Some(now);
        }
    }

    /// On the leader: proposes to promote every learner whose log has
    /// caught up. A learner known only from a snapshot or a restart (its
    /// `ADD_NODE` client is gone) is promoted with an empty context.
    fn promote_learners(&mut self, raw: &mut RawNode<MemStorage>, now: Instant) {
        let st = raw.status();
        for id in &st.conf_state.learners {
            let Some(p) = st.progress.get(id) else {
                continue;
            };
            let caught_up =
                p.state == ProgressState::Replicate && p.matched + PROMOTE_GAP >= st.last_index;
            let recently = self
                .promoting
                .get(id)
                .is_some_and(|t| now.duration_since(*t) < PROMOTE_RETRY);
            if !caught_up || recently {
                continue;
            }
            let context = self
                .learner_context
                .get(id)
                .cloned()
                .unwrap_or_else(|| encode_conf_context(RequestId { node: 0, seq: 0 }, ""));
            let cc = ConfChange {
                kind: ConfChangeKind::AddNode,
                node_id: *id,
                context,
            };
            match raw.propose_conf_change(&cc) {
                Ok(()) => {
                    info!(
                        "learner {id} caught up (match {} of {}); promoting it to voter",
                        p.matched, st.last_index
                    );
                    self.promoting.insert(*id, now);
                }
                Err(e) => debug!("cannot promote learner {id} yet: {e}"),
            }
        }
    }
}
