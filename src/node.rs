//! The node thread: the one thread that owns the consensus core, as etcd's
//! `node.run` does.
//!
//! A single loop selects over
//!
//! - the clock (the only one the core ever sees), one tick per interval;
//! - client requests. Like etcd's `propc = nil`, this arm is switched off
//!   while no leader is known, and while this node is handing its
//!   leadership over, so requests wait in the channel rather than being
//!   refused;
//! - inbound peer messages and transport reports;
//! - advance, from the ready thread (`apply.rs`), armed only while a Ready
//!   is out;
//! - conf changes the ready thread is applying;
//! - status requests and stop.
//!
//! The select is a sweep over the channels with `try_recv`, and the thread
//! parks when all are empty; every sender rings the node's bell after it
//! sends (`bell.rs` says why this beats crossbeam's `select!` here).
//!
//! At the top of every iteration, if the core has a Ready and none is out,
//! it is handed to the ready thread, so there is at most one Ready in flight
//! and everything the core produced meanwhile (all proposals that arrived
//! while the disk was busy) goes into the next one: group commit.
//!
//! What the node decides beyond Raft (batching, transfers, leader changes,
//! learner promotion) lives in `policy.rs`; this file only routes.
//!
//! **Stopping** (SIGTERM, Ctrl-C) goes through the same loop: the node
//! refuses new requests, hands its leadership to the most up-to-date voter
//! if it leads, waits a little for the requests in flight to be answered,
//! fails the rest with `ERR UNAVAILABLE`, and returns. The ready thread then
//! finishes its Ready and closes the WAL.

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::{info, warn};

use crate::bell::Bell;
use crate::policy::{NodeRequest, Policy};
use crate::protocol::{ErrorCode, Reply};
use crate::raft::{
    ConfChange, ConfState, MemStorage, Message, NodeId, RawNode, Ready, RecoveryPhase, Role,
    NO_NODE,
};
use crate::reply::ReplyTx;
use crate::shared::Shared;
use crate::transport::Report;
use std::sync::Arc;

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
    /// Where a recovery of lost state is, if the node is recovering.
    pub recovery: Option<RecoveryPhase>,
}

impl StatusInfo {
    /// The STATUS line of `docs/PROTOCOL.md`.
    pub fn line(&self, snapshot_index: u64) -> String {
        let ids = |ids: &[NodeId]| {
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let role = if self.conf_state.learners.contains(&self.id) {
            "learner".to_string()
        } else {
            self.role.to_string()
        };
        let mut line = format!(
            "STATUS id={} role={} term={} leader={} commit={} applied={} last={} snapshot={} members={}",
            self.id,
            role,
            self.term,
            self.leader,
            self.commit,
            self.applied,
            self.last,
            snapshot_index,
            ids(&self.conf_state.voters)
        );
        if !self.conf_state.learners.is_empty() {
            line.push_str(&format!(" learners={}", ids(&self.conf_state.learners)));
        }
        if let Some(phase) = &self.recovery {
            let phase = match phase {
                RecoveryPhase::AwaitingTerms { missing } => {
                    format!("terms-from-{}", ids(missing))
                }
                RecoveryPhase::AwaitingLeader => "waiting-for-leader".to_string(),
                RecoveryPhase::CatchingUp { matched, target } => {
                    format!("catching-up-{matched}-of-{target}")
                }
            };
            line.push_str(&format!(" recovering=1 recovery={phase}"));
        }
        line
    }
}

/// Channels between the node thread and everyone else.
pub struct NodeChannels {
    /// Client requests, a batch per round of the client I/O thread.
    pub requests: Receiver<Vec<NodeRequest>>,
    pub inbound: Receiver<Message>,
    pub reports: Receiver<Report>,
    pub ready: Sender<Ready>,
    pub advance: Receiver<()>,
    pub conf: Receiver<(ConfChange, Sender<ConfState>)>,
    /// STATUS requests, answered with the STATUS line.
    pub status: Receiver<ReplyTx>,
    pub stop: Receiver<()>,
    /// Rung by every sender to the channels above (`bell.rs`).
    pub bell: Arc<Bell>,
}

/// How many queued inbound messages one iteration steps at most before it
/// builds a Ready.
const MAX_INBOUND_BATCH: usize = 8192;

/// How long a stopping node waits for requests in flight to be answered.
const DRAIN: Duration = Duration::from_secs(2);

/// What one look at every source found.
enum Sweep {
    Worked,
    /// Nothing to do: park until a bell or the next tick.
    Idle,
    ReadyThreadGone,
}

/// Where a graceful stop is.
enum Stopping {
    /// Waiting for leadership to move to another voter.
    Transferring { until: Instant },
    /// Waiting for requests in flight to be answered.
    Draining { until: Instant },
}

pub struct NodeLoop {
    raw: RawNode<MemStorage>,
    ch: NodeChannels,
    policy: Policy,
    shared: Arc<Shared>,
    tick: Duration,
    /// Ticks of an election timeout, to bound a leadership hand-over.
    election_ticks: u32,
    /// A Ready is with the ready thread.
    outstanding: bool,
    /// The core's vouched ids as last published to the transport.
    vouched_generation: u64,
    stopping: Option<Stopping>,
}

impl NodeLoop {
    pub fn new(
        raw: RawNode<MemStorage>,
        ch: NodeChannels,
        policy: Policy,
        shared: Arc<Shared>,
        tick: Duration,
        election_ticks: u32,
    ) -> NodeLoop {
        NodeLoop {
            raw,
            ch,
            policy,
            shared,
            tick,
            election_ticks,
            outstanding: false,
            vouched_generation: 0,
            stopping: None,
        }
    }

    pub fn run(mut self) {
        self.ch.bell.attach();
        let mut next_tick = Instant::now() + self.tick;
        loop {
            if !self.outstanding && self.raw.has_ready() {
                let rd = self.raw.ready();
                self.policy.read_states_out(&rd.read_states);
                if let Some(ss) = rd.soft_state {
                    let term = self.raw.status().hard_state.term;
                    self.policy
                        .soft_state_changed(ss, term, self.stopping.is_some());
                }
                if self.ch.ready.send(rd).is_err() {
                    return; // the ready thread is gone: its error stops the node
                }
                self.outstanding = true;
            }
            if self.stop_progressed() {
                return;
            }
            match self.sweep(&mut next_tick) {
                Sweep::Worked => {}
                Sweep::Idle => {
                    thread::park_timeout(next_tick.saturating_duration_since(Instant::now()))
                }
                Sweep::ReadyThreadGone => return,
            }
        }
    }

    /// Looks at every source once, in this order, and takes what it has:
    /// the clock, advance, conf changes, inbound messages, transport
    /// reports, client requests, STATUS and stop. This is etcd's
    /// `node.run` select, with the same arms switched off: advance while
    /// no Ready is out, requests while no leader is known or leadership is
    /// being handed over (they wait in their channel, like etcd's
    /// `propc = nil`). One sweep may take several arms, so what they all
    /// produced goes into one Ready.
    fn sweep(&mut self, next_tick: &mut Instant) -> Sweep {
        let mut worked = false;
        let now = Instant::now();
        if now >= *next_tick {
            self.raw.tick();
            self.policy.tick(&mut self.raw);
            *next_tick += self.tick;
            if *next_tick <= now {
                *next_tick = now + self.tick; // fell behind: no burst of ticks
            }
            worked = true;
        }
        if self.outstanding {
            match self.ch.advance.try_recv() {
                Ok(()) => {
                    self.raw.advance();
                    self.outstanding = false;
                    worked = true;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Sweep::ReadyThreadGone,
            }
        }
        if let Ok((cc, reply)) = self.ch.conf.try_recv() {
            let cs = self.raw.apply_conf_change(&cc);
            self.policy.conf_change_applied(&cc, &cs);
            let _ = reply.send(cs);
            worked = true;
        }
        for m in self.ch.inbound.try_iter().take(MAX_INBOUND_BATCH) {
            self.raw.step(m);
            worked = true;
        }
        if self.raw.vouched_generation() != self.vouched_generation {
            self.vouched_generation = self.raw.vouched_generation();
            self.shared
                .publish_vouched(self.raw.vouched().into_iter().collect());
        }
        for r in self.ch.reports.try_iter() {
            match r {
                Report::Unreachable(id) => {
                    self.raw.report_unreachable(id);
                    self.policy.peer_unreachable(&mut self.raw, id);
                }
                Report::Snapshot(id, ok) => self.raw.report_snapshot(id, ok),
            }
            worked = true;
        }
        // After the inbound messages: they may have named a leader.
        let accepting =
            self.raw.soft_state().leader != NO_NODE && self.raw.lead_transferee() == NO_NODE;
        if accepting {
            if let Ok(r) = self.ch.requests.try_recv() {
                self.policy.requests(&mut self.raw, r, &self.ch.requests);
                worked = true;
            }
        }
        for reply in self.ch.status.try_iter() {
            let line = self.status().line(self.shared.snapshot_index());
            reply.send(Reply::Status(line));
            worked = true;
        }
        match self.ch.stop.try_recv() {
            Ok(()) => {
                self.begin_stop();
                worked = true;
            }
            // Whoever could stop the node is gone: stop, as `select!` did.
            Err(TryRecvError::Disconnected) => self.begin_stop(),
            Err(TryRecvError::Empty) => {}
        }
        if worked {
            Sweep::Worked
        } else {
            Sweep::Idle
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
            recovery: st.recovery,
        }
    }

    /// Starts a graceful stop: refuse new requests, and if this node leads,
    /// hand leadership to the voter whose log is longest, so that a rolling
    /// restart costs no election timeout.
    fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.shared.begin_stop();
        let st = self.raw.status();
        let target = st
            .progress
            .iter()
            .filter(|(id, p)| **id != st.id && !p.is_learner && p.recent_active)
            .max_by_key(|(_, p)| p.matched)
            .map(|(id, _)| *id);
        let now = Instant::now();
        match target {
            Some(target) if st.soft_state.role == Role::Leader => {
                info!("stopping: handing leadership to {target} first");
                if let Err(e) = self.raw.transfer_leader(target) {
                    warn!("cannot hand leadership to {target}: {e}");
                }
                let until = now + self.tick * 2 * self.election_ticks;
                self.stopping = Some(Stopping::Transferring { until });
            }
            _ => {
                info!("stopping");
                self.stopping = Some(Stopping::Draining { until: now + DRAIN });
            }
        }
    }

    /// Moves a graceful stop along; true when the loop should end.
    fn stop_progressed(&mut self) -> bool {
        let now = Instant::now();
        match self.stopping {
            None => false,
            Some(Stopping::Transferring { until }) => {
                let ss = self.raw.soft_state();
                if ss.role != Role::Leader || now >= until {
                    if ss.role == Role::Leader {
                        warn!("leadership did not move in time; stopping anyway");
                    }
                    self.stopping = Some(Stopping::Draining { until: now + DRAIN });
                }
                false
            }
            Some(Stopping::Draining { until }) => {
                if !self.shared.pending().is_empty() && now < until {
                    return false;
                }
                let reply = Reply::error(ErrorCode::Unavailable, "node is shutting down");
                self.shared.pending().answer_all(&reply);
                self.policy.fail_waiting(&reply);
                for r in self.ch.requests.try_iter().flatten() {
                    match r {
                        NodeRequest::Read { reply: tx, .. }
                        | NodeRequest::Transfer { reply: tx, .. } => tx.send(reply.clone()),
                        // Registered, so answered above.
                        NodeRequest::Propose { .. } | NodeRequest::ConfChange { .. } => {}
                    }
                }
                info!("node loop stopped");
                true
            }
        }
    }
}
