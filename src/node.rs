//! The node thread: the one thread that owns the consensus core.
//!
//! This is etcd's `node.run`, one to one. A single loop selects over
//!
//! - the tick channel (the only clock the core ever sees);
//! - client requests: proposals, reads, conf changes, transfers. This arm is
//!   switched off with `never()` while no leader is known, as etcd sets
//!   `propc = nil`, so requests wait in the channel rather than being dropped;
//! - inbound peer messages and transport reports;
//! - advance, from the ready-handling thread (`apply.rs`), armed only while
//!   a Ready is out;
//! - conf-change applications from the ready-handling thread;
//! - status requests and stop.
//!
//! At the top of every iteration, if the core has a Ready and none is out,
//! it is handed to the ready-handling thread, so there is at most one Ready
//! in flight and everything the core produced meanwhile (all proposals that
//! arrived while the disk was busy) goes into the next one: group commit.
//!
//! Proposals are batched: the loop drains every request already queued and
//! proposes all writes in one `propose_batch`, and all reads under one
//! read-index context, so one heartbeat round confirms many reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, tick, Receiver, Sender};
use log::{debug, info};

use crate::kv::{ErrorCode, Reply, RequestId};
use crate::raft::{
    ConfChange, ConfState, Error as RaftError, MemStorage, Message, NodeId, RawNode, Ready, Role,
    NO_LEADER, NO_NODE,
};
use crate::reply::ReplyTx;
use crate::transport::Report;

/// Reply channels of requests this node owns, by request sequence number.
/// The ready-handling thread answers them when their entry is applied.
#[derive(Default)]
pub struct Shared {
    /// Known leader, 0 if none (for `ERR NO_LEADER` decisions).
    pub leader: AtomicU64,
    /// Index of the newest snapshot, for STATUS.
    pub snapshot_index: AtomicU64,
    /// Learners waiting to be promoted to voters, with the context (client
    /// request and address) of the ADD_NODE that added them. Kept by the ready
    /// thread as conf changes apply; read by the leader's node thread.
    pub promotions: Mutex<BTreeMap<NodeId, Vec<u8>>>,
    /// The newest snapshot file, which peer senders stream from.
    pub snapshot_path: Mutex<Option<std::path::PathBuf>>,
    next_seq: AtomicU64,
    pending: Mutex<HashMap<u64, ReplyTx>>,
}

impl Shared {
    /// Starts this incarnation's request ids at `base`. Entries proposed by
    /// an earlier incarnation of the node can still be applied after a
    /// restart, and they would answer whichever request of this incarnation
    /// had the same id; ids must therefore never repeat across restarts.
    pub fn start_seq_at(&self, base: u64) {
        self.next_seq.store(base, Ordering::Relaxed);
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ReplyTx>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a request that will be answered when its entry applies.
    pub fn register(&self, seq: u64, reply: ReplyTx) {
        self.pending().insert(seq, reply);
    }

    /// Answers request `seq`, if someone still waits for it.
    pub fn answer(&self, seq: u64, reply: Reply) {
        if let Some(tx) = self.pending().remove(&seq) {
            tx.send(reply);
        }
    }

    /// Answers every waiting request with `reply` (used when the leader
    /// changes: forwarded proposals may have been lost with the old leader).
    pub fn answer_all(&self, reply: &Reply) {
        for (_, tx) in self.pending().drain() {
            tx.send(reply.clone());
        }
    }

    pub fn set_snapshot(&self, index: u64, path: Option<std::path::PathBuf>) {
        self.snapshot_index.store(index, Ordering::Relaxed);
        *self.snapshot_path.lock().unwrap_or_else(|e| e.into_inner()) = path;
    }

    pub fn promotions(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Vec<u8>>> {
        self.promotions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot_file(&self) -> Option<std::path::PathBuf> {
        self.snapshot_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets request `seq` (its client gave up).
    pub fn forget(&self, seq: u64) {
        self.pending().remove(&seq);
    }
}

/// A client request for the node thread.
pub enum NodeRequest {
    /// An encoded command; answered through [`Shared`] when applied.
    Propose {
        data: Vec<u8>,
        seq: u64,
        deadline: Instant,
    },
    /// A linearizable read of `key`.
    Read {
        key: Vec<u8>,
        reply: ReplyTx,
        deadline: Instant,
    },
    /// A membership change; answered through [`Shared`] when applied.
    ConfChange {
        cc: ConfChange,
        seq: u64,
        deadline: Instant,
    },
    /// Move leadership; answered when `target` is known to lead.
    Transfer {
        target: NodeId,
        reply: ReplyTx,
        deadline: Instant,
    },
}

/// What the node thread tells the ready thread about reads.
pub enum ReadNotice {
    /// Reads issued under read-index context `ctx`.
    Batch(Vec<u8>, Vec<ReadWaiter>),
    /// The leader changed: read-index requests in flight may be lost.
    LeaderChanged,
    /// TEST ONLY (`RAFTNODE_DEBUG_UNSAFE_LOCAL_READS`): reads to serve from
    /// local state without a read index.
    Local(Vec<ReadWaiter>),
}

/// A read waiting for its read index to be applied.
pub struct ReadWaiter {
    pub key: Vec<u8>,
    pub reply: ReplyTx,
    pub deadline: Instant,
}

/// The node's local view, for STATUS.
#[derive(Clone, Debug)]
pub struct StatusInfo {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: NodeId,
    pub commit: u64,
    pub applied: u64,
    pub last: u64,
    pub conf_state: ConfState,
}

/// Channels between the node thread and everyone else.
pub struct NodeChannels {
    pub requests: Receiver<NodeRequest>,
    pub inbound: Receiver<Message>,
    pub reports: Receiver<Report>,
    pub ready: Sender<Ready>,
    pub advance: Receiver<()>,
    pub conf: Receiver<(ConfChange, Sender<ConfState>)>,
    pub read_batches: Sender<ReadNotice>,
    pub status: Receiver<Sender<StatusInfo>>,
    pub stop: Receiver<()>,
}

pub struct NodeLoop {
    raw: RawNode<MemStorage>,
    ch: NodeChannels,
    shared: Arc<Shared>,
    tick_ms: u64,
    /// A Ready is with the ready-handling thread.
    outstanding: bool,
    read_seq: u64,
    transfers: Vec<(NodeId, ReplyTx, Instant)>,
    /// The last leader known (never reset to none), and its term.
    leader: NodeId,
    leader_term: u64,
    /// Promotions proposed and when, so they are not proposed every tick.
    promoting: HashMap<NodeId, Instant>,
}

/// A learner is promoted once its log is within this many entries of the
/// leader's (and it is being replicated to normally).
pub const PROMOTE_GAP: u64 = 100;

/// How many queued requests one iteration takes in at most.
const MAX_BATCH: usize = 8192;

impl NodeLoop {
    pub fn new(
        raw: RawNode<MemStorage>,
        ch: NodeChannels,
        shared: Arc<Shared>,
        tick_ms: u64,
    ) -> NodeLoop {
        NodeLoop {
            raw,
            ch,
            shared,
            tick_ms,
            outstanding: false,
            read_seq: 0,
            transfers: Vec::new(),
            leader: NO_NODE,
            leader_term: 0,
            promoting: HashMap::new(),
        }
    }

    pub fn run(mut self) {
        let ticker = tick(Duration::from_millis(self.tick_ms));
        let never_req = never::<NodeRequest>();
        let never_adv = never::<()>();
        loop {
            if !self.outstanding && self.raw.has_ready() {
                let rd = self.raw.ready();
                if let Some(ss) = rd.soft_state {
                    self.shared.leader.store(ss.leader, Ordering::Relaxed);
                    self.leader_changed(ss.leader);
                    self.check_transfers(ss.leader);
                }
                if self.ch.ready.send(rd).is_err() {
                    return; // ready-handling thread is gone: shutting down
                }
                self.outstanding = true;
            }
            let leader_known = self.raw.soft_state().leader != NO_NODE;
            let requests = if leader_known {
                &self.ch.requests
            } else {
                &never_req
            };
            let advance = if self.outstanding {
                &self.ch.advance
            } else {
                &never_adv
            };
            select! {
                recv(ticker) -> _ => {
                    self.raw.tick();
                    self.expire_transfers();
                    self.maybe_promote_learners();
                }
                recv(requests) -> r => {
                    if let Ok(r) = r {
                        self.handle_requests(r);
                    }
                }
                recv(self.ch.inbound) -> m => {
                    if let Ok(m) = m {
                        self.raw.step(m);
                        // Take in everything already queued before building a Ready.
                        for _ in 0..MAX_BATCH {
                            match self.ch.inbound.try_recv() {
                                Ok(m) => self.raw.step(m),
                                Err(_) => break,
                            }
                        }
                    }
                }
                recv(self.ch.reports) -> r => match r {
                    Ok(Report::Unreachable(id)) => self.raw.report_unreachable(id),
                    Ok(Report::Snapshot(id, ok)) => self.raw.report_snapshot(id, ok),
                    Err(_) => {}
                },
                recv(advance) -> _ => {
                    self.raw.advance();
                    self.outstanding = false;
                }
                recv(self.ch.conf) -> c => {
                    if let Ok((cc, reply)) = c {
                        let cs = self.raw.apply_conf_change(&cc);
                        let _ = reply.send(cs);
                    }
                }
                recv(self.ch.status) -> s => {
                    if let Ok(reply) = s {
                        let _ = reply.send(self.status());
                    }
                }
                recv(self.ch.stop) -> _ => return,
            }
        }
    }

    fn status(&self) -> StatusInfo {
        let st = self.raw.status();
        StatusInfo {
            id: st.id,
            role: st.soft_state.role,
            term: st.hard_state.term,
            leader: st.soft_state.leader,
            commit: st.hard_state.commit,
            applied: st.applied,
            last: st.last_index,
            conf_state: st.conf_state,
        }
    }

    /// Takes `first` and every request already queued, and feeds them to
    /// the core in as few calls as possible.
    fn handle_requests(&mut self, first: NodeRequest) {
        let now = Instant::now();
        let mut writes: Vec<Vec<u8>> = Vec::new();
        let mut seqs: Vec<u64> = Vec::new();
        let mut reads: Vec<ReadWaiter> = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(req) = next.take() {
            taken += 1;
            match req {
                // A request whose client already gave up is not proposed.
                NodeRequest::Propose { deadline, seq, .. } if deadline <= now => {
                    self.shared.forget(seq)
                }
                NodeRequest::Propose { data, seq, .. } => {
                    writes.push(data);
                    seqs.push(seq);
                }
                NodeRequest::Read {
                    key,
                    reply,
                    deadline,
                } => {
                    if deadline > now {
                        reads.push(ReadWaiter {
                            key,
                            reply,
                            deadline,
                        });
                    }
                }
                NodeRequest::ConfChange { cc, seq, deadline } => {
                    if deadline <= now {
                        self.shared.forget(seq);
                    } else if let Err(e) = self.raw.propose_conf_change(&cc) {
                        self.shared.answer(seq, refusal(&e));
                    }
                }
                NodeRequest::Transfer {
                    target,
                    reply,
                    deadline,
                } => {
                    if self.raw.soft_state().leader == target {
                        reply.send(Reply::Ok);
                    } else if let Err(e) = self.raw.transfer_leader(target) {
                        reply.send(refusal(&e));
                    } else {
                        self.transfers.push((target, reply, deadline));
                    }
                }
            }
            if taken < MAX_BATCH {
                next = self.ch.requests.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            debug!("proposing a batch of {}", writes.len());
            if let Err(e) = self.raw.propose_batch(writes) {
                let reply = refusal(&e);
                for seq in seqs {
                    self.shared.answer(seq, reply.clone());
                }
            }
        }
        if !reads.is_empty() && crate::debug::unsafe_local_reads() {
            let _ = self.ch.read_batches.send(ReadNotice::Local(reads));
        } else if !reads.is_empty() {
            self.read_seq += 1;
            let mut ctx = self.raw.id().to_le_bytes().to_vec();
            ctx.extend_from_slice(&self.read_seq.to_le_bytes());
            match self.raw.read_index(ctx.clone()) {
                Ok(()) => {
                    // The batch reaches the ready-handling thread before the
                    // Ready that carries its read state.
                    let _ = self.ch.read_batches.send(ReadNotice::Batch(ctx, reads));
                }
                Err(e) => {
                    let reply = refusal(&e);
                    for r in reads {
                        r.reply.send(reply.clone());
                    }
                }
            }
        }
    }

    /// Requests forwarded to (or accepted by) the old leader may be lost or
    /// may still commit: once a *different* leader is known, answer them,
    /// as etcd does, with an error that says the outcome is unknown, rather
    /// than let them wait for the timeout. Losing track of the leader for a
    /// moment (a PreVote round that goes back to the same leader) fails
    /// nothing. Requests still queued in the channel are not affected.
    fn leader_changed(&mut self, leader: NodeId) {
        if leader == NO_NODE {
            return;
        }
        let term = self.raw.status().hard_state.term;
        if (leader, term) == (self.leader, self.leader_term) {
            return;
        }
        let had_leader = self.leader != NO_NODE;
        self.leader = leader;
        self.leader_term = term;
        if had_leader {
            info!("leader changed to {leader}; failing requests in flight");
            let msg = "leader changed while the request was in flight; the outcome is unknown";
            self.shared
                .answer_all(&Reply::error(ErrorCode::LeaderChanged, msg));
            let _ = self.ch.read_batches.send(ReadNotice::LeaderChanged);
        }
    }

    /// On the leader: proposes to promote every learner whose log has caught
    /// up (etcd leaves this to the operator; here ADD_NODE does it).
    fn maybe_promote_learners(&mut self) {
        if self.raw.soft_state().role != Role::Leader {
            return;
        }
        let waiting: Vec<(NodeId, Vec<u8>)> = self
            .shared
            .promotions()
            .iter()
            .map(|(id, ctx)| (*id, ctx.clone()))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let st = self.raw.status();
        let now = Instant::now();
        for (id, context) in waiting {
            let Some(p) = st.progress.get(&id) else {
                continue;
            };
            let caught_up = p.is_learner
                && p.state == crate::raft::ProgressState::Replicate
                && p.matched + PROMOTE_GAP >= st.last_index;
            let recently = self
                .promoting
                .get(&id)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1));
            if !caught_up || recently {
                continue;
            }
            let cc = ConfChange {
                kind: crate::raft::ConfChangeKind::AddNode,
                node_id: id,
                context,
            };
            match self.raw.propose_conf_change(&cc) {
                Ok(()) => {
                    info!(
                        "learner {id} caught up (match {} of {}); promoting it to voter",
                        p.matched, st.last_index
                    );
                    self.promoting.insert(id, now);
                }
                Err(e) => debug!("cannot promote learner {id} yet: {e}"),
            }
        }
    }

    fn check_transfers(&mut self, leader: NodeId) {
        self.transfers.retain(|(target, reply, _)| {
            if *target == leader {
                info!("leadership transferred to {target}");
                reply.send(Reply::Ok);
                false
            } else {
                true
            }
        });
    }

    fn expire_transfers(&mut self) {
        let now = Instant::now();
        self.transfers.retain(|(_, _, deadline)| *deadline > now);
    }
}

/// The client-facing error for a request the core refused.
pub fn refusal(e: &RaftError) -> Reply {
    match e {
        RaftError::ProposalDropped(why) if *why == NO_LEADER => {
            Reply::error(ErrorCode::NoLeader, "no leader is known; retry shortly")
        }
        RaftError::ProposalDropped(why) => Reply::error(ErrorCode::Unavailable, *why),
        RaftError::InvalidConfig(why) => Reply::error(ErrorCode::Internal, why.clone()),
    }
}

/// Encodes the context of a conf-change entry: who waits for it, and the
/// member's raft address (empty for a removal).
pub fn encode_conf_context(id: RequestId, addr: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + addr.len());
    out.extend_from_slice(&id.node.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    out.extend_from_slice(addr.as_bytes());
    out
}

/// Decodes [`encode_conf_context`]; `None` if malformed.
pub fn decode_conf_context(ctx: &[u8]) -> Option<(RequestId, String)> {
    if ctx.len() < 16 {
        return None;
    }
    let node = u64::from_le_bytes(ctx[..8].try_into().ok()?);
    let seq = u64::from_le_bytes(ctx[8..16].try_into().ok()?);
    let addr = String::from_utf8(ctx[16..].to_vec()).ok()?;
    Some((RequestId { node, seq }, addr))
}
