//! The simulated cluster: nodes, network, faults and workload, driven one
//! random event per step from a seed.
//!
//! A run has two phases. In the *chaos* phase every step is one event:
//! deliver a message, run one stage of some node's Ready loop, tick, propose,
//! read, transfer leadership, change membership, snapshot and compact, crash
//! or restart a node, partition or heal the network. After every step the
//! nodes the event touched are checked (see `checks.rs`). In the *liveness*
//! phase the network is healed and calmed, every node is restarted, and a
//! leader must get a new proposal applied on every voter within
//! [`LIVENESS_TICKS`] ticks ([`LIVENESS_TICKS_WITHOUT_PREVOTE`] if PreVote is off).
//!
//! Everything random comes from one [`Rng`] seeded with the run's seed, so a
//! run replays exactly.

use std::collections::BTreeMap;

use raftnode::raft::{
    ConfChange, ConfChangeKind, ConfState, Config, EntryKind, HardState, MemStorage, Message,
    MessageBody, NodeId, RawNode, RecoveryStart, Rng, Role, Status, Storage,
};
use raftnode_testkit::ready;
use raftnode_testkit::rng::mix;

use crate::checks::Checker;
use crate::network::{Network, Packet};
use crate::node::{fingerprint, Outstanding, PendingLog, SimNode};

/// Ticks the healed cluster gets to elect a leader and commit a proposal everywhere.
pub const LIVENESS_TICKS: u64 = 200;

/// The same without PreVote. Then a candidate whose log is too old to win
/// still bumps everyone's term, and a term bump resets the election timer
/// (as in etcd), so the one up-to-date node wins only the races in which it
/// draws the shortest timeout; seed 6570 needed more than 200 ticks.
pub const LIVENESS_TICKS_WITHOUT_PREVOTE: u64 = 1000;

/// Fewest voters a membership change may leave.
const MIN_VOTERS: usize = 3;

/// The knobs of one run, all derived from its seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Initial voters: 3 or 5.
    pub nodes: u64,
    /// Steps of the chaos phase.
    pub steps: u64,
    pub drop_permille: u64,
    pub dup_permille: u64,
    pub max_delay: u64,
    /// Weights of the fault events (0 turns them off).
    pub crash_weight: u64,
    pub partition_weight: u64,
    /// Weight of membership changes: some runs churn the membership hard.
    pub conf_weight: u64,
    pub max_inflight: usize,
    pub max_msg_size: u64,
    pub max_ready_size: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Weight of "a node loses durable state" (0 turns it off).
    pub loss_weight: u64,
}

impl SimConfig {
    pub fn from_seed(seed: u64, steps: u64) -> SimConfig {
        let mut rng = Rng::new(mix(seed ^ 0x5eed));
        let pick = |rng: &mut Rng, xs: &[u64]| xs[rng.below(xs.len() as u64) as usize];
        SimConfig {
            seed,
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            steps,
            drop_permille: pick(&mut rng, &[0, 10, 50, 150]),
            dup_permille: pick(&mut rng, &[0, 20, 100]),
            max_delay: pick(&mut rng, &[0, 5, 30]),
            crash_weight: pick(&mut rng, &[0, 1, 3]),
            partition_weight: pick(&mut rng, &[0, 1, 3]),
            max_inflight: pick(&mut rng, &[2, 16, 256]) as usize,
            max_msg_size: pick(&mut rng, &[64, 1 << 20]),
            max_ready_size: pick(&mut rng, &[64, 16 << 20]),
            election_ticks: pick(&mut rng, &[5, 10, 10]) as usize,
            heartbeat_ticks: pick(&mut rng, &[1, 1, 2]) as usize,
            pre_vote: rng.below(4) != 0,
            check_quorum: rng.below(4) != 0,
            // Drawn last, so earlier seeds keep their other knobs.
            conf_weight: pick(&mut rng, &[2, 4, 20]),
            loss_weight: pick(&mut rng, &[0, 1, 3]),
        }
    }
}

/// Counters over a run, to see what a batch of seeds exercised.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub leader_terms: u64,
    pub committed: u64,
    pub snapshots_sent: u64,
    pub crashes: u64,
    /// Nodes that lost durable state, and recoveries that finished.
    pub losses: u64,
    pub recoveries: u64,
    pub conf_changes: u64,
    pub reads: u64,
    pub partitions: u64,
    pub liveness_ticks: u64,
    pub max_liveness_ticks: u64,
    /// Ids a node began to hear because a member vouched for them
    /// (`raft/strangers.rs`): a stale node catching up to a newer member.
    pub vouched: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.leader_terms += o.leader_terms;
        self.committed += o.committed;
        self.snapshots_sent += o.snapshots_sent;
        self.crashes += o.crashes;
        self.losses += o.losses;
        self.recoveries += o.recoveries;
        self.conf_changes += o.conf_changes;
        self.reads += o.reads;
        self.partitions += o.partitions;
        self.liveness_ticks += o.liveness_ticks;
        self.vouched += o.vouched;
        self.max_liveness_ticks = self.max_liveness_ticks.max(o.liveness_ticks);
    }
}

pub struct Sim {
    pub cfg: SimConfig,
    rng: Rng,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Network,
    check: Checker,
    /// Steps taken so far (the chaos phase's, then the liveness phase's).
    pub step: u64,
    trace: bool,
    next_id: NodeId,
    next_payload: u64,
    next_read: u64,
    /// Nodes the current step may have changed, to be checked after it.
    touched: Vec<NodeId>,
    /// Index at which the liveness marker was first applied.
    marker: Option<(u64, u64)>,
    stats: Stats,
}

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.trace {
            println!("[{:>6}] {}", $sim.step, format!($($arg)*));
        }
    };
}

/// Whether a message carries a membership change (proposed or replicated).
fn carries_conf_change(m: &Message) -> bool {
    let entries = match &m.body {
        MessageBody::Propose { entries } | MessageBody::Append { entries, .. } => entries,
        _ => return false,
    };
    entries.iter().any(|e| e.kind == EntryKind::ConfChange)
}

/// A short description of a message for the trace.
fn describe(m: &Message) -> String {
    let what = match &m.body {
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => match (entries.first(), entries.last()) {
            (Some(a), Some(b)) => format!(
                "append after {prev_index}/{prev_term} [{}/{}..{}/{}] commit {commit}",
                a.index, a.term, b.index, b.term
            ),
            _ => format!("append after {prev_index}/{prev_term} (probe) commit {commit}"),
        },
        MessageBody::AppendResponse {
            index,
            reject,
            reject_hint,
            hint_term,
            ..
        } if *reject => format!("append rejected at {index} hint {reject_hint}/{hint_term}"),
        MessageBody::AppendResponse { index, .. } => format!("append ok to {index}"),
        MessageBody::Heartbeat { commit, .. } => format!("heartbeat commit {commit}"),
        MessageBody::RequestVote {
            pre,
            last_index,
            last_term,
            ..
        } => format!(
            "{} last {last_index}/{last_term}",
            if *pre { "prevote" } else { "vote" }
        ),
        MessageBody::RequestVoteResponse { pre, reject, .. } => format!(
            "{} {}",
            if *pre { "prevote" } else { "vote" },
            if *reject { "rejected" } else { "granted" }
        ),
        MessageBody::Snapshot { snapshot } => format!("{snapshot:?}"),
        MessageBody::ReadIndexResponse { index, .. } => format!("read index {index}"),
        MessageBody::TransferLeader { target } => format!("transfer leader to {target}"),
        body => body.name().to_string(),
    };
    format!("{}->{} t{} {}", m.from, m.to, m.term, what)
}

impl Sim {
    pub fn new(cfg: SimConfig, trace: bool) -> Sim {
        let mut nodes = BTreeMap::new();
        let conf = ConfState::with_voters((1..=cfg.nodes).collect());
        for id in 1..=cfg.nodes {
            let storage = MemStorage::new_with_conf_state(conf.clone());
            nodes.insert(id, SimNode::new(id, storage, conf.clone()));
        }
        let mut net = Network::default();
        net.drop_permille = cfg.drop_permille;
        net.dup_permille = cfg.dup_permille;
        net.max_delay = cfg.max_delay;
        let mut sim = Sim {
            rng: Rng::new(mix(cfg.seed)),
            next_id: cfg.nodes + 1,
            cfg,
            nodes,
            net,
            check: Checker::default(),
            step: 0,
            trace,
            next_payload: 1,
            next_read: 1,
            touched: Vec::new(),
            marker: None,
            stats: Stats::default(),
        };
        let ids: Vec<NodeId> = sim.nodes.keys().copied().collect();
        for id in ids {
            // Cannot fail for a fresh node; if it does, the first check says so.
            let _ = sim.start(id);
        }
        sim
    }

    /// Runs the chaos phase and then the liveness phase.
    pub fn run(&mut self) -> Result<Stats, String> {
        trace!(self, "config {:?}", self.cfg);
        for _ in 0..self.cfg.steps {
            self.step += 1;
            self.chaos_event()?;
            self.check_touched()?;
        }
        self.liveness()?;
        self.final_checks()?;
        self.stats.steps = self.step;
        self.stats.leader_terms = self.check.leader_terms() as u64;
        self.stats.committed = self.check.commit_index();
        self.stats.reads = self.check.reads_answered;
        Ok(self.stats.clone())
    }

    fn rand(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    fn up_ids(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect()
    }

    fn status(&self, id: NodeId) -> Option<Status> {
        self.nodes.get(&id)?.raw.as_ref().map(|r| r.status())
    }

    /// The running leader of the highest term, if any.
    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| {
                let st = n.raw.as_ref()?.status();
                (st.soft_state.role == Role::Leader).then_some((st.hard_state.term, n.id))
            })
            .max()
            .map(|(_, id)| id)
    }

    fn check_touched(&mut self) -> Result<(), String> {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            let Some(raw) = &n.raw else { continue };
            let st = raw.status();
            self.check.observe(n, &st)?;
        }
        Ok(())
    }

    // ---- the chaos phase ---------------------------------------------------

    fn chaos_event(&mut self) -> Result<(), String> {
        let c = &self.cfg;
        let partitioned = self.net.is_partitioned();
        let any_down = self.nodes.values().any(|n| !n.is_up());
        // Weights per thousand steps, roughly.
        let weights: [(u8, u64); 16] = [
            (0, 500),                              // deliver a message
            (1, 300),                              // a Ready stage on some node
            (2, 20),                               // tick one node
            (3, 40),                               // tick every node
            (4, 30),                               // propose
            (5, 10),                               // read index
            (6, 8),                                // snapshot and compact
            (7, 3),                                // leadership transfer
            (8, c.conf_weight),                    // membership change
            (9, c.crash_weight),                   // crash
            (10, if any_down { 5 } else { 0 }),    // restart
            (11, c.partition_weight),              // partition
            (12, if partitioned { 5 } else { 0 }), // heal
            (13, 2),                               // report a peer unreachable
            (14, 2),                               // the application forces an election
            (15, c.loss_weight),                   // a node loses durable state
        ];
        let total: u64 = weights.iter().map(|w| w.1).sum();
        let mut r = self.rng.below(total);
        let mut ev = 0;
        for (e, w) in weights {
            if r < w {
                ev = e;
                break;
            }
            r -= w;
        }
        match ev {
            0 => self.deliver_one(),
            1 => self.ready_stage_somewhere(),
            2 => {
                let ids = self.up_ids();
                if !ids.is_empty() {
                    let id = ids[self.rand(ids.len())];
                    trace!(self, "tick node {id}");
                    self.tick(id);
                }
                Ok(())
            }
            3 => {
                trace!(self, "tick every node");
                for id in self.up_ids() {
                    self.tick(id);
                }
                Ok(())
            }
            4 => self.propose(),
            5 => self.read(),
            6 => self.snapshot_somewhere(),
            7 => self.transfer(),
            8 => self.change_membership(),
            9 => self.crash_one(),
            10 => self.restart_one(),
            11 => self.partition(),
            12 => {
                trace!(self, "heal the network");
                self.net.heal();
                Ok(())
            }
            15 => self.lose_state(),
            14 => {
                let ids = self.up_ids();
                if !ids.is_empty() {
                    let id = ids[self.rand(ids.len())];
                    trace!(self, "node {id} is told to campaign");
                    if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                        raw.campaign();
                    }
                    self.touched.push(id);
                }
                Ok(())
            }
            _ => {
                if let Some(l) = self.leader() {
                    let peers: Vec<NodeId> = self.nodes.keys().copied().collect();
                    let p = peers[self.rand(peers.len())];
                    trace!(self, "{l} is told {p} is unreachable");
                    if let Some(raw) = self.nodes.get_mut(&l).and_then(|n| n.raw.as_mut()) {
                        raw.report_unreachable(p);
                    }
                    self.touched.push(l);
                }
                Ok(())
            }
        }
    }

    fn tick(&mut self, id: NodeId) {
        if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
            raw.tick();
            self.touched.push(id);
        }
    }

    fn deliver_one(&mut self) -> Result<(), String> {
        match self.net.pick(&mut self.rng, self.step) {
            Some(p) => self.deliver(p),
            None => Ok(()),
        }
    }

    fn deliver(&mut self, p: Packet) -> Result<(), String> {
        let (from, to) = (p.msg.from, p.msg.to);
        let is_snapshot = matches!(p.msg.body, MessageBody::Snapshot { .. });
        let blocked = self.net.blocked(from, to);
        let up = self.nodes.get(&to).is_some_and(|n| n.is_up());
        if blocked || !up {
            trace!(self, "lost {}", describe(&p.msg));
            if is_snapshot {
                self.report(from, p.from_inc, |r| r.report_snapshot(to, false));
            } else if blocked && self.rng.below(4) == 0 {
                self.report(from, p.from_inc, |r| r.report_unreachable(to));
            }
            return Ok(());
        }
        // A membership change proposed before a node was damaged may still
        // be on its way to the leader (forwarded, delayed, duplicated); the
        // harness makes no membership change while a node is damaged (see
        // `lose_state`), so it drops such a proposal.
        let conf_proposal =
            matches!(&p.msg.body, MessageBody::Propose { .. }) && carries_conf_change(&p.msg);
        if conf_proposal && self.nodes.values().any(|n| n.damaged.is_some()) {
            trace!(self, "drop {} (a node is damaged)", describe(&p.msg));
            return Ok(());
        }
        trace!(self, "deliver {}", describe(&p.msg));
        if is_snapshot {
            self.stats.snapshots_sent += 1;
            self.report(from, p.from_inc, |r| r.report_snapshot(to, true));
        }
        let conf = carries_conf_change(&p.msg);
        if let Some(n) = self.nodes.get_mut(&to) {
            if let Some(raw) = n.raw.as_mut() {
                let before = raw.vouched().len();
                let generation = raw.vouched_generation();
                raw.step(p.msg);
                n.conf_unstable |= conf;
                if raw.vouched_generation() != generation && raw.vouched().len() > before {
                    self.stats.vouched += 1;
                }
            }
        }
        self.touched.push(to);
        Ok(())
    }

    /// A transport report to the sender of a message, if it still runs as
    /// the same process.
    fn report(&mut self, to: NodeId, inc: u64, f: impl FnOnce(&mut RawNode<MemStorage>)) {
        if let Some(n) = self.nodes.get_mut(&to) {
            if n.incarnation == inc {
                if let Some(raw) = n.raw.as_mut() {
                    f(raw);
                    self.touched.push(to);
                }
            }
        }
    }

    fn send_all(&mut self, from: NodeId, msgs: Vec<Message>) {
        let inc = self.nodes.get(&from).map_or(0, |n| n.incarnation);
        for m in msgs {
            let to = m.to;
            let is_snapshot = matches!(m.body, MessageBody::Snapshot { .. });
            if !self.net.send(&mut self.rng, self.step, m, inc) && is_snapshot {
                self.report(from, inc, |r| r.report_snapshot(to, false));
            }
        }
    }

    fn ready_stage_somewhere(&mut self) -> Result<(), String> {
        let busy: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.has_work())
            .map(|n| n.id)
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        let id = busy[self.rand(busy.len())];
        self.ready_stage(id)
    }

    /// Runs the next stage of `id`'s Ready loop: take, persist or apply.
    fn ready_stage(&mut self, id: NodeId) -> Result<(), String> {
        let Some(n) = self.nodes.get(&id) else {
            return Ok(());
        };
        self.touched.push(id);
        match &n.outstanding {
            None => self.take_ready(id),
            Some(o) if !o.persisted => self.persist(id),
            Some(_) => self.apply(id),
        }
    }

    fn take_ready(&mut self, id: NodeId) -> Result<(), String> {
        let n = self.nodes.get_mut(&id).expect("node exists");
        let Some(raw) = n.raw.as_mut() else {
            return Ok(());
        };
        if !raw.has_ready() {
            return Ok(());
        }
        let mut rd = raw.ready();
        let commit = raw.status().hard_state.commit;
        let log = PendingLog::build(&n.log, &rd).map_err(|e| format!("node {id}: {e}"))?;
        let msgs = std::mem::take(&mut rd.messages);
        let reads = std::mem::take(&mut rd.read_states);
        if let Some(ss) = rd.soft_state {
            trace!(self, "node {id} is {} (leader {})", ss.role, ss.leader);
        }
        trace!(
            self,
            "node {id} takes a Ready: {} entries, snapshot {:?}, {} committed, {}+{} messages",
            rd.entries.len(),
            rd.snapshot.as_ref().map(|s| s.meta.index),
            rd.committed_entries.len(),
            msgs.len(),
            rd.persisted_messages.len()
        );
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.conf_unstable = false;
        n.outstanding = Some(Outstanding {
            rd,
            log,
            persisted: false,
        });
        let n = &self.nodes[&id];
        self.check.log_at_ready(n, commit)?;
        for rs in &reads {
            self.check.read_answered(id, rs)?;
        }
        self.send_all(id, msgs);
        Ok(())
    }

    fn persist(&mut self, id: NodeId) -> Result<(), String> {
        let n = self.nodes.get_mut(&id).expect("node exists");
        let Some(o) = n.outstanding.as_mut() else {
            return Ok(());
        };
        trace!(self, "node {id} persists its Ready");
        // The same storage step as every other driver's; what is particular
        // to the simulation is *when* it runs (a stage of its own, so a crash
        // can strike before it) and the chain-hash mirror of the durable log
        // that the checks read, updated right after.
        ready::persist(&n.storage, &o.rd).map_err(|e| format!("node {id}: {e}"))?;
        if o.rd.snapshot.is_some() {
            let (si, st, sh) = o.log.snap.expect("built with the snapshot");
            n.log.install(si, st, sh);
            n.snap_index = si;
            self.check.durable_entry(id, si, st, sh)?;
        }
        n.log.append(o.log.first, &o.log.ents);
        for (k, &(t, h)) in o.log.ents.iter().enumerate() {
            self.check.durable_entry(id, o.log.first + k as u64, t, h)?;
        }
        if let Some(hs) = o.rd.hard_state {
            self.check.hard_state(id, crate::checks::DURABLE, hs)?;
        }
        if o.rd.recovery_done {
            // As the node layer clears the WAL's damage marker.
            trace!(self, "node {id} finished recovering");
            n.damaged = None;
            self.stats.recoveries += 1;
        }
        o.persisted = true;
        let msgs = std::mem::take(&mut o.rd.persisted_messages);
        self.send_all(id, msgs);
        Ok(())
    }

    fn apply(&mut self, id: NodeId) -> Result<(), String> {
        let n = self.nodes.get_mut(&id).expect("node exists");
        let Some(o) = n.outstanding.take() else {
            return Ok(());
        };
        let Some(raw) = n.raw.as_mut() else {
            return Ok(());
        };
        let rd = o.rd;
        if let Some(s) = &rd.snapshot {
            n.sm = crate::node::StateMachine::decode(&s.data)
                .map_err(|e| format!("node {id}: {e}"))?;
            n.conf = s.meta.conf_state.clone();
            self.check
                .applied(id, n.sm.applied, n.sm.hash, "restored a snapshot at")?;
        }
        for e in &rd.committed_entries {
            let hash = n.sm.apply(e).map_err(|err| format!("node {id}: {err}"))?;
            self.check.applied(id, e.index, hash, "applied")?;
            if e.kind == EntryKind::ConfChange {
                let cc = ConfChange::decode(&e.data)
                    .map_err(|err| format!("node {id}: entry {}: {err}", e.index))?;
                n.conf = raw.apply_conf_change(&cc);
                if self.trace {
                    println!(
                        "[{:>6}] node {id} applies {:?} {} at {}: voters {:?} learners {:?}",
                        self.step, cc.kind, cc.node_id, e.index, n.conf.voters, n.conf.learners
                    );
                }
            } else if self.marker.is_none()
                && fingerprint(e.kind, &e.data) == fingerprint(EntryKind::Normal, b"liveness")
            {
                self.marker = Some((e.index, e.term));
            }
        }
        raw.advance();
        trace!(
            self,
            "node {id} applied to {} and advanced",
            self.nodes[&id].sm.applied
        );
        Ok(())
    }

    fn propose(&mut self) -> Result<(), String> {
        let ids = self.up_ids();
        if ids.is_empty() {
            return Ok(());
        }
        let id = ids[self.rand(ids.len())];
        let k = if self.rng.below(4) == 0 {
            1 + self.rand(8)
        } else {
            1
        };
        let mut batch = Vec::with_capacity(k);
        for _ in 0..k {
            let mut data = b"p".to_vec();
            data.extend_from_slice(&self.next_payload.to_le_bytes());
            self.next_payload += 1;
            batch.push(data);
        }
        let raw = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.raw.as_mut())
            .expect("up");
        let res = if k == 1 {
            raw.propose(batch.pop().expect("one"))
        } else {
            raw.propose_batch(batch)
        };
        trace!(self, "propose {k} entries at {id}: {res:?}");
        self.touched.push(id);
        Ok(())
    }

    fn read(&mut self) -> Result<(), String> {
        let ids = self.up_ids();
        if ids.is_empty() {
            return Ok(());
        }
        let id = ids[self.rand(ids.len())];
        let ctx = format!("r{}", self.next_read).into_bytes();
        self.next_read += 1;
        let raw = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.raw.as_mut())
            .expect("up");
        let res = raw.read_index(ctx.clone());
        trace!(self, "read index at {id}: {res:?}");
        if res.is_ok() {
            self.check.read_issued(id, ctx);
        }
        self.touched.push(id);
        Ok(())
    }

    fn transfer(&mut self) -> Result<(), String> {
        let ids = self.up_ids();
        if ids.is_empty() {
            return Ok(());
        }
        let id = ids[self.rand(ids.len())];
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let target = all[self.rand(all.len())];
        let raw = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.raw.as_mut())
            .expect("up");
        let res = raw.transfer_leader(target);
        trace!(
            self,
            "transfer leadership to {target}, asked at {id}: {res:?}"
        );
        self.touched.push(id);
        Ok(())
    }

    /// Proposes one membership change at the leader, keeping between
    /// [`MIN_VOTERS`] and initial + 1 voters. New members start empty.
    fn change_membership(&mut self) -> Result<(), String> {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        if self.nodes.values().any(|n| n.damaged.is_some()) {
            return Ok(()); // see `lose_state`
        }
        let cs = self.status(l).expect("leader is up").conf_state;
        let max_voters = self.cfg.nodes as usize + 1;
        let roll = self.rng.below(4);
        let cc = if !cs.learners.is_empty() && roll == 0 {
            let id = cs.learners[self.rand(cs.learners.len())];
            let kind = if cs.voters.len() < max_voters {
                ConfChangeKind::AddNode
            } else {
                ConfChangeKind::RemoveNode
            };
            ConfChange {
                kind,
                node_id: id,
                context: vec![],
            }
        } else if cs.voters.len() > MIN_VOTERS && (roll == 1 || cs.voters.len() >= max_voters) {
            let id = cs.voters[self.rand(cs.voters.len())];
            ConfChange {
                kind: ConfChangeKind::RemoveNode,
                node_id: id,
                context: vec![],
            }
        } else {
            let kind = if cs.voters.len() < max_voters && roll != 2 {
                ConfChangeKind::AddNode
            } else {
                ConfChangeKind::AddLearner
            };
            ConfChange {
                kind,
                node_id: self.next_id,
                context: vec![],
            }
        };
        let raw = self
            .nodes
            .get_mut(&l)
            .and_then(|n| n.raw.as_mut())
            .expect("up");
        let res = raw.propose_conf_change(&cc);
        if let Some(n) = self.nodes.get_mut(&l) {
            n.conf_unstable |= res.is_ok();
        }
        trace!(self, "propose {:?} {} at {l}: {res:?}", cc.kind, cc.node_id);
        self.touched.push(l);
        if res.is_ok() {
            self.stats.conf_changes += 1;
            if cc.node_id == self.next_id {
                // The new server starts with an empty log and the founding
                // membership, which is not in the log (see
                // MemStorage::new_with_conf_state), and waits to be contacted.
                self.next_id += 1;
                let id = cc.node_id;
                let founders = ConfState::with_voters((1..=self.cfg.nodes).collect());
                let storage = MemStorage::new_with_conf_state(founders.clone());
                let node = SimNode::new(id, storage, founders);
                self.nodes.insert(id, node);
                self.start(id)?;
            }
        }
        Ok(())
    }

    /// The application snapshots its state machine at the applied index and
    /// compacts the log, keeping a short tail.
    fn snapshot_somewhere(&mut self) -> Result<(), String> {
        let ids = self.up_ids();
        if ids.is_empty() {
            return Ok(());
        }
        let id = ids[self.rand(ids.len())];
        let tail = self.rng.below(6);
        let n = self.nodes.get_mut(&id).expect("node exists");
        let at = n.sm.applied;
        if at <= n.snap_index {
            return Ok(());
        }
        n.storage
            .create_snapshot(at, n.conf.clone(), n.sm.encode())
            .map_err(|e| format!("node {id}: snapshot at applied index {at}: {e}"))?;
        n.snap_index = at;
        let compact_to = at.saturating_sub(tail);
        if compact_to > n.log.base {
            n.storage
                .compact(compact_to)
                .map_err(|e| format!("node {id}: compacting to {compact_to}: {e}"))?;
            n.log.compact(compact_to);
        }
        trace!(
            self,
            "node {id} snapshots at {at} and compacts to {compact_to}"
        );
        self.touched.push(id);
        Ok(())
    }

    fn crash_one(&mut self) -> Result<(), String> {
        let ids = self.up_ids();
        if ids.len() <= 1 {
            return Ok(());
        }
        // Half the time the leader: that is where most of the state is.
        let id = match self.leader() {
            Some(l) if self.rng.below(2) == 0 => l,
            _ => ids[self.rand(ids.len())],
        };
        self.crash(id);
        Ok(())
    }

    /// Loses everything the node had not made durable.
    fn crash(&mut self, id: NodeId) {
        trace!(self, "node {id} crashes");
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.raw = None;
        n.outstanding = None;
        n.conf_unstable = false;
        n.incarnation += 1;
        self.net.lose_outbox(&mut self.rng, id);
        self.stats.crashes += 1;
    }

    /// A node loses durable state (a damaged or wiped disk), then restarts
    /// recovering, as the node layer does when its WAL reports damage: its
    /// log after a random index, its hard state too, everything, or its
    /// snapshot and log. One node at a time carries damage: membership
    /// changes may leave as few as [`MIN_VOTERS`] voters, which can spare
    /// only one and still elect a leader, and the liveness phase needs one.
    /// Two damaged at once is covered by a scenario script (the cluster
    /// then waits, unavailable, and loses nothing).
    ///
    /// Nor is state lost while the membership is in flux (some node has not
    /// applied the leader's configuration): a voter that has not applied a
    /// removal still counts the removed node in its quorum, and with one
    /// more node abstaining no candidate may be able to win until the
    /// damaged node is repaired, which needs a leader. The cluster then
    /// waits, safely; the liveness phase could not end. For the same reason
    /// no membership change is proposed while a node is damaged, and one
    /// proposed before and still in the network is dropped (`deliver`).
    fn lose_state(&mut self) -> Result<(), String> {
        if self.nodes.values().any(|n| n.damaged.is_some()) || !self.membership_settled() {
            return Ok(());
        }
        let ids: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.damaged.is_none())
            .map(|n| n.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let id = ids[self.rand(ids.len())];
        if self.nodes[&id].is_up() {
            self.crash(id);
        }
        let kind = self.rand(4);
        let founders = ConfState::with_voters((1..=self.cfg.nodes).collect());
        let n = self.nodes.get_mut(&id).expect("node exists");
        let old = n.storage.clone();
        let (hs, cs) = old.initial_state();
        let snap = old.snapshot().map_err(|e| format!("node {id}: {e}"))?;
        let (what, lost_hs) = match kind {
            0 | 1 => {
                // The log after a random index k (and the hard state).
                let lo = old.first_index().saturating_sub(1);
                let hi = old.last_index();
                let k = lo + self.rng.below(hi - lo + 1);
                let s = MemStorage::new_with_conf_state(cs);
                if !snap.is_empty() {
                    s.apply_snapshot(snap.clone())
                        .map_err(|e| format!("node {id}: {e}"))?;
                }
                if k >= old.first_index() {
                    let kept = old
                        .entries(old.first_index(), k + 1, u64::MAX)
                        .map_err(|e| format!("node {id}: {e}"))?;
                    s.append(&kept).map_err(|e| format!("node {id}: {e}"))?;
                }
                let kept_last = s.last_index();
                let lost_hs = kind == 1;
                let term = if lost_hs {
                    s.term(kept_last).unwrap_or(0)
                } else {
                    hs.term
                };
                s.set_hard_state(HardState {
                    term,
                    vote: if lost_hs { 0 } else { hs.vote },
                    commit: hs.commit.min(kept_last).max(snap.meta.index),
                });
                n.storage = s;
                n.log.truncate(kept_last);
                // The chain follows the storage's compaction point.
                let base = n.storage.first_index() - 1;
                if base > n.log.base {
                    n.log.compact(base);
                }
                (format!("its log after {k}"), lost_hs)
            }
            2 => {
                n.storage = MemStorage::new_with_conf_state(founders);
                n.log = Default::default();
                n.snap_index = 0;
                ("everything".to_string(), true)
            }
            _ => {
                let s = MemStorage::new_with_conf_state(founders);
                s.set_hard_state(HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: 0,
                });
                n.storage = s;
                n.log = Default::default();
                n.snap_index = 0;
                ("its snapshot and log".to_string(), false)
            }
        };
        n.damaged = Some(lost_hs);
        self.stats.losses += 1;
        self.check.lost_state(id);
        trace!(
            self,
            "node {id} loses {what}{}",
            if lost_hs { " and its hard state" } else { "" }
        );
        self.start(id)
    }

    /// Whether every member has applied the leader's configuration and no
    /// membership change waits anywhere: in any node's log past what that
    /// node has applied (not only the leader's: a change that reached only
    /// a follower can be committed later, when that follower leads), in a
    /// Ready being persisted, or in a message in flight.
    fn membership_settled(&self) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let Some(cs) = self.status(l).map(|st| st.conf_state) else {
            return false;
        };
        let members: Vec<&SimNode> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .filter_map(|id| self.nodes.get(id))
            .collect();
        if members.len() != cs.voters.len() + cs.learners.len()
            || members.iter().any(|n| n.conf != cs)
        {
            return false;
        }
        if self.net.any(carries_conf_change) {
            return false;
        }
        self.nodes.values().all(|n| {
            // Entries not yet durable (an outstanding Ready, or not even
            // taken yet) may hold a membership change storage does not show.
            let outstanding = n
                .outstanding
                .as_ref()
                .is_some_and(|o| o.rd.entries.iter().any(|e| e.kind == EntryKind::ConfChange));
            if n.conf_unstable || outstanding {
                return false;
            }
            let lo = (n.sm.applied + 1).max(n.storage.first_index());
            let hi = n.storage.last_index() + 1;
            lo >= hi
                || n.storage
                    .entries(lo, hi, u64::MAX)
                    .is_ok_and(|es| es.iter().all(|e| e.kind != EntryKind::ConfChange))
        })
    }

    fn restart_one(&mut self) -> Result<(), String> {
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| !n.is_up())
            .map(|n| n.id)
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        let id = down[self.rand(down.len())];
        self.start(id)
    }

    /// The `--peers` an operator would give node `id` when starting it: the
    /// members of the most advanced membership any node has applied, and
    /// the node itself.
    fn operator_peers(&self, id: NodeId) -> std::collections::BTreeSet<NodeId> {
        let newest = self.nodes.values().max_by_key(|n| n.sm.applied);
        let mut ids: std::collections::BTreeSet<NodeId> = newest
            .map(|n| {
                n.conf
                    .voters
                    .iter()
                    .chain(&n.conf.learners)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        ids.insert(id);
        ids
    }

    /// Starts (or restarts) a node from its durable storage: the state
    /// machine from the snapshot, the core with `applied` at its index.
    fn start(&mut self, id: NodeId) -> Result<(), String> {
        let listed = self.operator_peers(id);
        let n = self.nodes.get_mut(&id).expect("node exists");
        n.recover_state_machine()
            .map_err(|e| format!("node {id}: {e}"))?;
        let mut config = Config::new(id);
        config.applied = n.sm.applied;
        config.seed = mix(self.cfg.seed ^ mix(id ^ mix(n.incarnation)));
        config.max_inflight_msgs = self.cfg.max_inflight;
        config.max_size_per_msg = self.cfg.max_msg_size;
        config.max_committed_size_per_ready = self.cfg.max_ready_size;
        config.election_ticks = self.cfg.election_ticks;
        config.heartbeat_ticks = self.cfg.heartbeat_ticks;
        config.pre_vote = self.cfg.pre_vote;
        config.check_quorum = self.cfg.check_quorum;
        config.listed = listed;
        config.recovery = n.damaged.map(|hard_state_lost| RecoveryStart {
            id: mix(self.cfg.seed ^ mix(id ^ mix(n.incarnation ^ 0x4ec0))).max(1),
            hard_state_lost,
        });
        let raw = RawNode::new(&config, n.storage.clone())
            .map_err(|e| format!("node {id} cannot restart: {e}"))?;
        n.raw = Some(raw);
        let (applied, hash) = (n.sm.applied, n.sm.hash);
        trace!(self, "node {id} starts, applied {applied}");
        self.check
            .applied(id, applied, hash, "restarted from a snapshot at")?;
        self.touched.push(id);
        Ok(())
    }

    /// Splits the cluster in two; half the time the leader ends up alone
    /// or in a minority.
    fn partition(&mut self) -> Result<(), String> {
        let mut ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for i in (1..ids.len()).rev() {
            let j = self.rand(i + 1);
            ids.swap(i, j);
        }
        if let (Some(l), true) = (self.leader(), self.rng.below(2) == 0) {
            ids.retain(|&x| x != l);
            ids.insert(0, l);
        }
        let k = 1 + self.rand((ids.len() - 1).max(1)).min(ids.len() / 2);
        let (a, b) = ids.split_at(k.min(ids.len() - 1));
        trace!(self, "partition {a:?} | {b:?}");
        self.net.partition(a, b);
        self.stats.partitions += 1;
        Ok(())
    }

    // ---- the liveness phase ------------------------------------------------

    /// Heals everything, restarts every node, and requires a new proposal
    /// to be applied on every voter within [`LIVENESS_TICKS`] ticks (or
    /// [`LIVENESS_TICKS_WITHOUT_PREVOTE`]).
    fn liveness(&mut self) -> Result<(), String> {
        trace!(self, "liveness: heal, calm the network, restart every node");
        self.net.heal();
        self.net.calm();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &id in &ids {
            self.step += 1;
            if self.nodes[&id].is_up() {
                self.crash(id);
            }
            self.start(id)?;
            self.check_touched()?;
        }
        self.marker = None;
        let mut proposed_at: Option<u64> = None;
        let ticks = if self.cfg.pre_vote {
            LIVENESS_TICKS
        } else {
            LIVENESS_TICKS_WITHOUT_PREVOTE
        };
        for t in 0..ticks {
            self.step += 1;
            trace!(self, "liveness: tick {} of every node", t + 1);
            for id in self.up_ids() {
                self.tick(id);
            }
            self.check_touched()?;
            self.stabilize()?;
            if let Some(l) = self.leader() {
                if proposed_at.is_none_or(|p| t >= p + 20) && self.marker.is_none() {
                    self.step += 1;
                    let raw = self
                        .nodes
                        .get_mut(&l)
                        .and_then(|n| n.raw.as_mut())
                        .expect("up");
                    let res = raw.propose(b"liveness".to_vec());
                    trace!(self, "liveness: propose at leader {l}: {res:?}");
                    if res.is_ok() {
                        proposed_at = Some(t);
                    }
                    self.touched.push(l);
                    self.check_touched()?;
                    self.stabilize()?;
                }
            }
            if self.marker_everywhere() {
                self.stats.liveness_ticks = t + 1;
                trace!(self, "liveness: done after {} ticks", t + 1);
                return Ok(());
            }
        }
        let views: Vec<String> = self
            .nodes
            .values()
            .filter_map(|n| {
                let st = n.raw.as_ref()?.status();
                Some(format!(
                    "{}: {} term {} leader {} commit {} applied {} voters {:?}",
                    n.id,
                    st.soft_state.role,
                    st.hard_state.term,
                    st.soft_state.leader,
                    st.hard_state.commit,
                    st.applied,
                    st.conf_state.voters
                ))
            })
            .collect();
        Err(format!(
            "liveness: no proposal applied on every voter within {ticks} ticks \
             of healing (marker {:?}); nodes: {}",
            self.marker,
            views.join("; ")
        ))
    }

    fn marker_everywhere(&self) -> bool {
        let (Some((m, _)), Some(l)) = (self.marker, self.leader()) else {
            return false;
        };
        let Some(st) = self.status(l) else {
            return false;
        };
        st.conf_state.voters.iter().all(|v| {
            self.nodes
                .get(v)
                .is_some_and(|n| n.sm.applied >= m && n.damaged.is_none())
        })
    }

    /// Runs every node's Ready loop and delivers every message until the
    /// cluster is quiet; each action is a step, checked.
    fn stabilize(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            let mut quiet = true;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                while self.nodes[&id].has_work() {
                    quiet = false;
                    self.step += 1;
                    self.ready_stage(id)?;
                    self.check_touched()?;
                }
            }
            while let Some(p) = self.net.pop_oldest() {
                quiet = false;
                self.step += 1;
                self.deliver(p)?;
                self.check_touched()?;
            }
            if quiet {
                return Ok(());
            }
        }
        Err("liveness: the cluster does not quiesce without ticks".into())
    }

    /// State Machine Safety once more, directly: the applied sequences of
    /// any two nodes are prefixes of one another.
    fn final_checks(&self) -> Result<(), String> {
        let nodes: Vec<&SimNode> = self.nodes.values().filter(|n| n.is_up()).collect();
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                if !a.sm.agrees_with(&b.sm) {
                    return Err(format!(
                        "State Machine Safety: nodes {} and {} applied different sequences",
                        a.id, b.id
                    ));
                }
            }
        }
        Ok(())
    }
}
