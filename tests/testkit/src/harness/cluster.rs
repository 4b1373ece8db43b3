//! [`Cluster`]: Raft nodes over [`MemStorage`] and a simulated network.
//!
//! The network is one FIFO queue of messages in flight. Nothing moves unless
//! a test says so: `process_ready` runs one node's Ready/Advance cycle
//! (persist, queue its messages, apply, advance), `deliver` hands queued
//! messages to their recipients, `stabilize` alternates the two until the
//! cluster is quiet. Partitions and explicit drops lose messages at delivery
//! time. A restart rebuilds a node's `RawNode` over the same storage, losing
//! whatever the node had not yet handed to storage in a Ready.
//!
//! Every action appends to a human-readable trace (`take_trace`). The
//! cluster also checks two safety properties as it goes and records any
//! violation in `anomalies` (and as an `error:` line in the trace): at most
//! one leader per term (Election Safety) and no two nodes applying different
//! entries at the same index (State Machine Safety).

use std::collections::{BTreeMap, BTreeSet};

use raftnode::raft::{
    ConfChange, ConfChangeKind, ConfState, Config, Entry, EntryKind, Error, HardState, MemStorage,
    Message, NodeId, RawNode, ReadState, RecoveryStart, Role, Snapshot, Status, Storage,
};

use super::fmt;
use crate::ready;

/// Per-node configuration knobs a test may change; the rest are `Config::new`'s.
#[derive(Clone, Debug)]
pub struct Options {
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// The ids an operator would list in `--peers`: heard while a node's
    /// log holds no configuration. A node added to a cluster lists every
    /// node that exists when it is added.
    pub listed: BTreeSet<NodeId>,
}

impl Default for Options {
    fn default() -> Options {
        let c = Config::new(1);
        Options {
            pre_vote: c.pre_vote,
            check_quorum: c.check_quorum,
            election_ticks: c.election_ticks,
            heartbeat_ticks: c.heartbeat_ticks,
            max_size_per_msg: c.max_size_per_msg,
            max_inflight_msgs: c.max_inflight_msgs,
            listed: BTreeSet::new(),
        }
    }
}

impl Options {
    /// The config of node `id`, seeded with its id so runs replay exactly.
    pub fn config(&self, id: NodeId, applied: u64) -> Config {
        let mut c = Config::new(id);
        c.pre_vote = self.pre_vote;
        c.check_quorum = self.check_quorum;
        c.election_ticks = self.election_ticks;
        c.heartbeat_ticks = self.heartbeat_ticks;
        c.max_size_per_msg = self.max_size_per_msg;
        c.max_inflight_msgs = self.max_inflight_msgs;
        c.listed = self.listed.clone();
        c.applied = applied;
        c
    }
}

/// The application's durable state machine: keys and membership.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    pub kv: BTreeMap<String, String>,
    pub conf: ConfState,
}

impl Machine {
    /// Snapshot data: `k=v` lines in key order.
    fn encode(&self) -> Vec<u8> {
        let lines: Vec<String> = self.kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.join("\n").into_bytes()
    }

    fn decode(data: &[u8], conf: ConfState) -> Machine {
        let text = String::from_utf8_lossy(data);
        let kv = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Machine { kv, conf }
    }
}

/// One node: its core, its storage and its application.
pub struct Node {
    pub id: NodeId,
    pub raw: RawNode<MemStorage>,
    pub storage: MemStorage,
    pub opts: Options,
    /// Last index applied to `machine`.
    pub applied: u64,
    pub machine: Machine,
    /// The machine after each applied index, for snapshots at any applied index.
    history: BTreeMap<u64, Machine>,
    /// Entries applied since the node was created (or last installed a snapshot).
    pub applied_entries: Vec<Entry>,
    /// Read states handed out, oldest first.
    pub reads: Vec<ReadState>,
    /// Role line last written to the trace.
    seen: String,
}

/// What a node loses in [`Cluster::lose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Durable entries after this index (the snapshot stays); the hard
    /// state survives, its commit clipped.
    Suffix(u64),
    /// The same, and the hard state too: only the kept entries' terms are
    /// known.
    SuffixAndHardState(u64),
    /// Everything: a wiped data dir (no snapshot, no log, no membership).
    Everything,
}

impl Node {
    pub fn status(&self) -> Status {
        self.raw.status()
    }

    pub fn role(&self) -> Role {
        self.raw.status().soft_state.role
    }

    pub fn term(&self) -> u64 {
        self.raw.status().hard_state.term
    }

    pub fn leader(&self) -> NodeId {
        self.raw.status().soft_state.leader
    }

    pub fn commit(&self) -> u64 {
        self.raw.status().hard_state.commit
    }

    /// Every durable entry, from storage.
    pub fn log(&self) -> Vec<Entry> {
        let s = &self.storage;
        s.entries(s.first_index(), s.last_index() + 1, u64::MAX)
            .unwrap_or_default()
    }

    /// `(index, term)` of each durable entry.
    pub fn log_terms(&self) -> Vec<(u64, u64)> {
        self.log().iter().map(|e| (e.index, e.term)).collect()
    }
}

/// Which queued messages a `deliver` or `drop` concerns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub from: Option<Vec<NodeId>>,
    pub to: Option<Vec<NodeId>>,
    /// Message type names as in traces: `append`, `vote`, `heartbeat_response`...
    pub types: Option<Vec<String>>,
    /// On `deliver`: matching messages to these nodes are dropped instead.
    pub drop_to: Vec<NodeId>,
}

impl Filter {
    pub fn to(id: NodeId) -> Filter {
        Filter {
            to: Some(vec![id]),
            ..Filter::default()
        }
    }

    pub fn from(id: NodeId) -> Filter {
        Filter {
            from: Some(vec![id]),
            ..Filter::default()
        }
    }

    fn matches(&self, m: &Message) -> bool {
        self.from.as_ref().is_none_or(|f| f.contains(&m.from))
            && self.to.as_ref().is_none_or(|t| t.contains(&m.to))
            && self
                .types
                .as_ref()
                .is_none_or(|ts| ts.iter().any(|t| t == fmt::message_type(m)))
    }
}

/// Nodes, the network between them, and the trace.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered or dropped, oldest first.
    pub queue: Vec<Message>,
    /// Connectivity: nodes talk only within their group. `None`: fully connected.
    groups: Option<Vec<BTreeSet<NodeId>>>,
    pub opts: Options,
    trace: Vec<String>,
    /// Safety violations seen so far.
    pub anomalies: Vec<String>,
    leaders: BTreeMap<u64, NodeId>,
    applied_at: BTreeMap<u64, Entry>,
}

impl Cluster {
    /// An empty cluster; add nodes with [`Cluster::add_node`].
    pub fn empty(opts: Options) -> Cluster {
        Cluster {
            nodes: BTreeMap::new(),
            queue: Vec::new(),
            groups: None,
            opts,
            trace: Vec::new(),
            anomalies: Vec::new(),
            leaders: BTreeMap::new(),
            applied_at: BTreeMap::new(),
        }
    }

    /// Nodes `1..=n`, all voters, with empty logs.
    pub fn new(n: u64, opts: Options) -> Cluster {
        let mut c = Cluster::empty(opts);
        c.opts.listed.extend(1..=n);
        let cs = ConfState::with_voters((1..=n).collect());
        for id in 1..=n {
            c.add_node(id, cs.clone());
        }
        c
    }

    /// Adds node `id` with an empty log and initial membership `cs` (empty
    /// for a node that waits to be added by a conf change).
    pub fn add_node(&mut self, id: NodeId, cs: ConfState) {
        let storage = MemStorage::new_with_conf_state(cs);
        self.add_node_with_storage(id, storage);
    }

    /// Adds node `id` over prepared storage (a recovered node).
    pub fn add_node_with_storage(&mut self, id: NodeId, storage: MemStorage) {
        let mut opts = self.opts.clone();
        opts.listed.extend(self.nodes.keys().copied().chain([id]));
        let raw = match RawNode::new(&opts.config(id, 0), storage.clone()) {
            Ok(raw) => raw,
            Err(e) => panic!("test setup: node {id} does not start: {e}"),
        };
        let snap = storage.snapshot().unwrap_or_default();
        let conf = storage.initial_state().1;
        let machine = Machine::decode(&snap.data, conf);
        let applied = snap.meta.index;
        let seen = fmt::role_line(&raw.status());
        let mut history = BTreeMap::new();
        history.insert(applied, machine.clone());
        self.nodes.insert(
            id,
            Node {
                id,
                raw,
                storage,
                opts,
                applied,
                machine,
                history,
                applied_entries: Vec::new(),
                reads: Vec::new(),
                seen,
            },
        );
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(&id).expect("no such node")
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The trace written since the last call.
    pub fn take_trace(&mut self) -> Vec<String> {
        std::mem::take(&mut self.trace)
    }

    fn say(&mut self, line: String) {
        self.trace.push(line);
    }

    fn anomaly(&mut self, what: String) {
        self.trace.push(format!("error: {what}"));
        self.anomalies.push(what);
    }

    /// Reports a change of node `id`'s role, term, vote or leader, prefixed
    /// by `prefix`, and checks Election Safety.
    fn observe(&mut self, id: NodeId, prefix: &str) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let st = node.raw.status();
        let line = fmt::role_line(&st);
        if line == node.seen {
            return;
        }
        node.seen = line.clone();
        self.say(format!("{prefix}{id} is {line}"));
        if st.soft_state.role == Role::Leader {
            let term = st.hard_state.term;
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    self.anomaly(format!("two leaders in term {term}: {other} and {id}"))
                }
                _ => {
                    self.leaders.insert(term, id);
                }
            }
        }
    }

    // ---- driving nodes ----------------------------------------------------

    pub fn campaign(&mut self, id: NodeId) {
        self.node_mut(id).raw.campaign();
        self.observe(id, "");
    }

    pub fn tick(&mut self, id: NodeId, n: usize) {
        for i in 1..=n {
            self.node_mut(id).raw.tick();
            self.observe(id, &format!("tick {i}: "));
        }
    }

    /// Ticks every node `n` times, round by round in id order.
    pub fn tick_all(&mut self, n: usize) {
        for i in 1..=n {
            for id in self.ids() {
                self.node_mut(id).raw.tick();
                self.observe(id, &format!("tick {i}: "));
            }
        }
    }

    fn result(&mut self, id: NodeId, r: Result<(), Error>) -> Result<(), Error> {
        if let Err(e) = &r {
            self.say(format!("error: {e}"));
        }
        self.observe(id, "");
        r
    }

    pub fn propose(&mut self, id: NodeId, data: &str) -> Result<(), Error> {
        let r = self.node_mut(id).raw.propose(data.as_bytes().to_vec());
        self.result(id, r)
    }

    pub fn propose_conf(&mut self, id: NodeId, cc: ConfChange) -> Result<(), Error> {
        let r = self.node_mut(id).raw.propose_conf_change(&cc);
        self.result(id, r)
    }

    pub fn read_index(&mut self, id: NodeId, ctx: &str) -> Result<(), Error> {
        let r = self.node_mut(id).raw.read_index(ctx.as_bytes().to_vec());
        self.result(id, r)
    }

    pub fn transfer(&mut self, id: NodeId, target: NodeId) -> Result<(), Error> {
        let r = self.node_mut(id).raw.transfer_leader(target);
        self.result(id, r)
    }

    pub fn report_unreachable(&mut self, id: NodeId, peer: NodeId) {
        self.node_mut(id).raw.report_unreachable(peer);
    }

    pub fn report_snapshot(&mut self, id: NodeId, peer: NodeId, ok: bool) {
        self.node_mut(id).raw.report_snapshot(peer, ok);
    }

    /// Steps a message straight into node `m.to`, bypassing the network.
    pub fn step(&mut self, m: Message) {
        let to = m.to;
        self.say(format!("{} (injected)", fmt::message(&m)));
        if let Some(n) = self.nodes.get_mut(&to) {
            n.raw.step(m);
            self.observe(to, "  ");
        }
    }

    /// Steps a message into node `id` whatever its `to` says (for feeding
    /// misaddressed messages), without tracing it.
    pub fn step_raw(&mut self, id: NodeId, m: Message) {
        self.node_mut(id).raw.step(m);
        self.observe(id, "  ");
    }

    // ---- Ready / Advance ----------------------------------------------------

    /// Runs one Ready/Advance cycle of node `id`: persist the snapshot, the
    /// entries and the hard state; queue every message; install the snapshot
    /// and apply committed entries; advance. Returns false if there was no Ready.
    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        if !node.raw.has_ready() {
            return false;
        }
        let rd = node.raw.ready();
        let mut out = vec![format!("> {id} ready")];
        let mut errors = Vec::new();
        if let Some(hs) = rd.hard_state {
            out.push(format!(
                "  hardstate term={} vote={} commit={}",
                hs.term,
                fmt::vote(hs.vote),
                hs.commit
            ));
        }
        if let Some(snap) = &rd.snapshot {
            out.push(format!("  snapshot {}", fmt::snapshot(snap)));
        }
        if !rd.entries.is_empty() {
            out.push(format!("  persist {}", fmt::entries(&rd.entries)));
        }
        if let Err(e) = ready::persist(&node.storage, &rd) {
            errors.push(format!("node {id}: {e}"));
        }
        for m in &rd.messages {
            out.push(format!("  {}", fmt::message(m)));
        }
        for m in &rd.persisted_messages {
            out.push(format!("  {}", fmt::after_persist(m)));
        }
        self.queue.extend(rd.messages);
        self.queue.extend(rd.persisted_messages);
        if let Some(snap) = &rd.snapshot {
            install_snapshot(node, snap);
        }
        if !rd.committed_entries.is_empty() {
            out.push(format!("  apply {}", fmt::entries(&rd.committed_entries)));
        }
        let mut applied = Vec::new();
        for e in rd.committed_entries {
            if e.index != node.applied + 1 {
                errors.push(format!(
                    "node {id}: applies {} after {}",
                    e.index, node.applied
                ));
            }
            if e.kind == EntryKind::ConfChange {
                match ConfChange::decode(&e.data) {
                    Ok(cc) => {
                        let cs = node.raw.apply_conf_change(&cc);
                        node.storage.set_conf_state(cs.clone());
                        out.push(format!(
                            "  conf-change {} -> {}",
                            fmt::conf_change(&cc),
                            fmt::conf_state(&cs)
                        ));
                        node.machine.conf = cs;
                    }
                    Err(err) => errors.push(format!("node {id}: {err} at {}", e.index)),
                }
            } else if let Some(kv) = std::str::from_utf8(&e.data)
                .ok()
                .and_then(|s| s.strip_prefix("put "))
                .and_then(|s| s.split_once('='))
            {
                node.machine.kv.insert(kv.0.to_string(), kv.1.to_string());
            }
            node.applied = e.index;
            node.history.insert(e.index, node.machine.clone());
            node.applied_entries.push(e.clone());
            applied.push(e);
        }
        for rs in &rd.read_states {
            out.push(format!(
                "  read-state index={} ctx={}",
                rs.index,
                String::from_utf8_lossy(&rs.context)
            ));
        }
        if rd.recovery_done {
            out.push("  recovered".to_string());
        }
        node.reads.extend(rd.read_states);
        node.raw.advance();
        // A Ready that only changed the soft state has nothing to show: the
        // role change was reported when it happened.
        if out.len() > 1 {
            self.trace.extend(out);
        }
        for e in errors {
            self.anomaly(e);
        }
        for e in applied {
            self.check_applied(id, e);
        }
        self.observe(id, "  ");
        true
    }

    /// State Machine Safety: every node applies the same entry at an index.
    fn check_applied(&mut self, id: NodeId, e: Entry) {
        match self.applied_at.get(&e.index) {
            Some(prev) if *prev != e => self.anomaly(format!(
                "node {id} applied {} where another node applied {}",
                fmt::entry(&e),
                fmt::entry(prev)
            )),
            Some(_) => {}
            None => {
                self.applied_at.insert(e.index, e);
            }
        }
    }

    pub fn process_ready_all(&mut self) -> bool {
        let mut any = false;
        for id in self.ids() {
            any |= self.process_ready(id);
        }
        any
    }

    // ---- the network ------------------------------------------------------

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        match &self.groups {
            None => true,
            Some(groups) => groups.iter().any(|g| g.contains(&a) && g.contains(&b)),
        }
    }

    /// Splits the cluster: nodes talk only within their group; nodes in no
    /// listed group form one more group together.
    pub fn partition(&mut self, groups: Vec<Vec<NodeId>>) {
        let mut gs: Vec<BTreeSet<NodeId>> = groups
            .into_iter()
            .map(|g| g.into_iter().collect())
            .collect();
        let rest: BTreeSet<NodeId> = self
            .ids()
            .into_iter()
            .filter(|id| !gs.iter().any(|g| g.contains(id)))
            .collect();
        if !rest.is_empty() {
            gs.push(rest);
        }
        self.groups = Some(gs);
    }

    pub fn heal(&mut self) {
        self.groups = None;
    }

    /// Delivers the queued messages `f` selects, grouped by recipient in id
    /// order, each recipient's in the order sent. Messages across a
    /// partition, to a node in `f.drop_to`, or to an unknown node are
    /// dropped. Returns how many were delivered.
    pub fn deliver(&mut self, f: &Filter) -> usize {
        let (selected, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|m| f.matches(m));
        self.queue = rest;
        let mut dropped = Vec::new();
        let mut by_to: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        for m in selected {
            if f.drop_to.contains(&m.to)
                || !self.connected(m.from, m.to)
                || !self.nodes.contains_key(&m.to)
            {
                dropped.push(m);
            } else {
                by_to.entry(m.to).or_default().push(m);
            }
        }
        if !dropped.is_empty() {
            self.say("> dropped".to_string());
            for m in &dropped {
                self.say(format!("  {}", fmt::message(m)));
            }
        }
        let mut n = 0;
        for (to, msgs) in by_to {
            self.say(format!("> {to} receives"));
            for m in msgs {
                self.say(format!("  {}", fmt::message(&m)));
                self.node_mut(to).raw.step(m);
                self.observe(to, "  ");
                n += 1;
            }
        }
        n
    }

    /// Removes the queued messages `f` selects without delivering them.
    pub fn drop(&mut self, f: &Filter) -> usize {
        let (selected, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|m| f.matches(m));
        self.queue = rest;
        for m in &selected {
            self.say(format!("dropped {}", fmt::message(m)));
        }
        selected.len()
    }

    /// Alternates Ready handling on every node and delivery of every queued
    /// message until neither has anything left to do.
    pub fn stabilize(&mut self) {
        self.stabilize_only(&Filter::default());
    }

    /// Like [`Cluster::stabilize`], but delivers only the messages `f`
    /// selects; the others stay queued.
    pub fn stabilize_only(&mut self, f: &Filter) {
        for _ in 0..1000 {
            let mut busy = self.process_ready_all();
            if self.queue.iter().any(|m| f.matches(m)) {
                self.deliver(f);
                busy = true;
            }
            if !busy {
                return;
            }
        }
        self.anomaly("stabilize did not converge in 1000 rounds".to_string());
    }

    // ---- crashes, logs and snapshots --------------------------------------

    /// Crashes and restarts node `id`: a new `RawNode` over the same storage.
    /// Whatever the old one had not handed out in a Ready is lost; the
    /// state machine and its applied index survive.
    pub fn restart(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let config = node.opts.config(id, node.applied);
        match RawNode::new(&config, node.storage.clone()) {
            Ok(raw) => {
                node.raw = raw;
                let st = node.raw.status();
                node.seen = fmt::role_line(&st);
                let line = format!(
                    "{id} restarted: {} commit={} applied={} last={}",
                    node.seen, st.hard_state.commit, st.applied, st.last_index
                );
                self.say(line);
            }
            Err(e) => self.anomaly(format!("node {id} does not restart: {e}")),
        }
    }

    /// Node `id` crashes and loses durable state as `loss` says, then
    /// restarts recovering (`raftnode::raft::RecoveryStart`, with a recovery
    /// id of `1000 + id`), as the node layer does when its WAL reports damage.
    pub fn lose(&mut self, id: NodeId, loss: Loss) {
        let node = self.node_mut(id);
        let old = node.storage.clone();
        let (hs, cs) = old.initial_state();
        let snap = old.snapshot().unwrap_or_default();
        let storage = match loss {
            Loss::Everything => MemStorage::new(),
            Loss::Suffix(k) | Loss::SuffixAndHardState(k) => {
                let s = MemStorage::new_with_conf_state(cs.clone());
                if !snap.is_empty() {
                    s.apply_snapshot(snap.clone()).expect("the old snapshot");
                }
                let last = old.last_index().min(k);
                let first = old.first_index();
                if last >= first {
                    let kept = old
                        .entries(first, last + 1, u64::MAX)
                        .expect("kept entries");
                    s.append(&kept).expect("contiguous entries");
                }
                let kept_last = s.last_index();
                let term = match loss {
                    Loss::Suffix(_) => hs.term,
                    _ => s.term(kept_last).unwrap_or(0),
                };
                let vote = if matches!(loss, Loss::Suffix(_)) {
                    hs.vote
                } else {
                    0
                };
                let commit = hs.commit.min(kept_last).max(snap.meta.index);
                s.set_hard_state(HardState { term, vote, commit });
                s
            }
        };
        node.storage = storage;
        // The state machine restarts from the snapshot it keeps (if any).
        let (applied, machine) = match loss {
            Loss::Everything => (0, Machine::default()),
            _ => (
                snap.meta.index,
                Machine::decode(&snap.data, snap.meta.conf_state.clone()),
            ),
        };
        node.applied = applied;
        node.machine = machine;
        node.history = BTreeMap::from([(applied, node.machine.clone())]);
        node.applied_entries.clear();
        let mut config = node.opts.config(id, applied);
        config.recovery = Some(RecoveryStart {
            id: 1000 + id,
            hard_state_lost: !matches!(loss, Loss::Suffix(_)),
        });
        self.say(format!("{id} lost {loss:?}"));
        let node = self.node_mut(id);
        match RawNode::new(&config, node.storage.clone()) {
            Ok(raw) => {
                node.raw = raw;
                let st = node.raw.status();
                node.seen = fmt::role_line(&st);
                let line = format!(
                    "{id} restarted recovering: {} commit={} applied={} last={}",
                    node.seen, st.hard_state.commit, st.applied, st.last_index
                );
                self.say(line);
            }
            Err(e) => self.anomaly(format!("node {id} does not restart: {e}")),
        }
    }

    /// Replaces node `id`'s durable log by entries of the given terms
    /// (indexes 1, 2, ...) and restarts it: a node recovered with that log.
    /// `term` defaults to the last entry's term.
    pub fn set_log(
        &mut self,
        id: NodeId,
        terms: &[u64],
        term: Option<u64>,
        vote: NodeId,
        commit: u64,
    ) {
        let node = self.node_mut(id);
        let cs = node.storage.initial_state().1;
        let storage = MemStorage::new_with_conf_state(cs.clone());
        let ents: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| super::ent(i as u64 + 1, t))
            .collect();
        storage.append(&ents).expect("contiguous entries");
        let last_term = terms.last().copied().unwrap_or(0);
        storage.set_hard_state(HardState {
            term: term.unwrap_or(last_term),
            vote,
            commit,
        });
        node.storage = storage;
        node.applied = 0;
        node.machine = Machine {
            kv: BTreeMap::new(),
            conf: cs.clone(),
        };
        node.history = BTreeMap::from([(0, node.machine.clone())]);
        node.applied_entries.clear();
        self.say(format!("{id} log {}", fmt::entries(&ents)));
        self.restart(id);
    }

    /// Node `id` snapshots its state machine at `index` (which it must have
    /// applied) and compacts its log up to there.
    pub fn compact(&mut self, id: NodeId, index: u64) {
        let node = self.node_mut(id);
        if index > node.applied {
            let applied = node.applied;
            self.say(format!(
                "error: cannot compact to {index}: applied only {applied}"
            ));
            return;
        }
        let machine = node
            .history
            .range(..=index)
            .next_back()
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let snap = node
            .storage
            .create_snapshot(index, machine.conf.clone(), machine.encode())
            .and_then(|s| node.storage.compact(index).map(|()| s));
        match snap {
            Ok(s) => {
                let line = format!("{id} compacted to {index}: snapshot {}", fmt::snapshot(&s));
                self.say(line);
            }
            Err(e) => self.say(format!("error: {e}")),
        }
    }

    // ---- views ------------------------------------------------------------

    /// `1: leader term=1 vote=1 lead=1 commit=2 applied=2 last=2`, per node.
    pub fn raft_state(&self) -> Vec<String> {
        self.nodes
            .values()
            .map(|n| {
                let st = n.raw.status();
                format!(
                    "{}: {} commit={} applied={} last={}",
                    n.id,
                    fmt::role_line(&st),
                    st.hard_state.commit,
                    st.applied,
                    st.last_index
                )
            })
            .collect()
    }

    /// A node's state, membership, keys and (on a leader) its peers' progress.
    pub fn status(&self, id: NodeId) -> Vec<String> {
        let n = self.node(id);
        let st = n.raw.status();
        let mut out = vec![
            format!("{id}: {}", fmt::role_line(&st)),
            format!(
                "  commit={} applied={} first={} last={} {}",
                st.hard_state.commit,
                st.applied,
                st.first_index,
                st.last_index,
                fmt::conf_state(&st.conf_state)
            ),
        ];
        let kv: Vec<String> = n
            .machine
            .kv
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push(format!("  kv {{{}}}", kv.join(", ")));
        if st.lead_transferee != 0 {
            out.push(format!("  transferring to {}", st.lead_transferee));
        }
        for (peer, p) in &st.progress {
            let mut line = format!(
                "  progress {peer}: match={} next={} {:?}",
                p.matched, p.next, p.state
            );
            if p.is_learner {
                line.push_str(" learner");
            }
            if p.inflight > 0 {
                line.push_str(&format!(" inflight={}", p.inflight));
            }
            out.push(line.to_lowercase());
        }
        out
    }

    /// Node `id`'s durable log: its snapshot, if any, then one entry per line.
    pub fn log(&self, id: NodeId) -> Vec<String> {
        let n = self.node(id);
        let mut out = Vec::new();
        let snap: Snapshot = n.storage.snapshot().unwrap_or_default();
        if !snap.is_empty() {
            out.push(format!("snapshot {}", fmt::snapshot(&snap)));
        }
        for e in n.log() {
            out.push(fmt::entry(&e));
        }
        let last = n.raw.status().last_index;
        if last != n.storage.last_index() {
            out.push(format!("(unstable up to {last})"));
        }
        if out.is_empty() {
            out.push("(empty)".to_string());
        }
        out
    }

    // ---- invariants -------------------------------------------------------

    /// `applied <= committed <= last_index` and `first_index - 1 <= applied`
    /// on every node; returns the violations.
    pub fn invariant_violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for n in self.nodes.values() {
            let st = n.raw.status();
            let (applied, commit) = (st.applied, st.hard_state.commit);
            if !(applied <= commit && commit <= st.last_index && st.first_index <= applied + 1) {
                v.push(format!(
                    "node {}: first={} applied={} commit={} last={}",
                    n.id, st.first_index, applied, commit, st.last_index
                ));
            }
        }
        v
    }

    /// The leader with the highest term, if any node thinks it leads.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.role() == Role::Leader)
            .max_by_key(|n| n.term())
            .map(|n| n.id)
    }
}

fn install_snapshot(node: &mut Node, snap: &Snapshot) {
    node.machine = Machine::decode(&snap.data, snap.meta.conf_state.clone());
    node.applied = snap.meta.index;
    node.history.insert(node.applied, node.machine.clone());
    node.applied_entries.clear();
}

/// A conf change of `kind` for `id`.
pub fn conf(kind: ConfChangeKind, id: NodeId) -> ConfChange {
    ConfChange {
        kind,
        node_id: id,
        context: Vec::new(),
    }
}
