//! The ready thread: etcd's `raftNode.start` with `applyAll`.
//!
//! For every Ready the node thread hands over, in order:
//!
//! 1. send `messages`: a leader's appends go out before its own disk write
//!    (thesis §10.2.1);
//! 2. apply the committed entries this node had already persisted to the
//!    KV store, answering this node's clients, and serve the reads this
//!    unlocks: none of it waits for this Ready's fsync. Conf changes go to
//!    the node thread, which owns the core, and their addresses to the
//!    transport;
//! 3. persist: a received snapshot first, then entries and hard state in one
//!    WAL write with one fdatasync when `must_sync` (group commit: every
//!    entry of the Ready shares that fsync); then make them visible in
//!    `MemStorage`;
//! 4. send `persisted_messages`: acknowledgements and votes, which promise
//!    durability;
//! 5. apply committed entries that were persisted only in step 3, serve
//!    reads, maybe start a snapshot, and signal advance.
//!
//! Between Readies the loop also commits snapshots written in the
//! background and takes `SNAPSHOT` requests (`snapshots.rs`).
//!
//! A storage failure ends the loop with a [`Fatal`] error: a node that
//! cannot persist must not acknowledge anything more. The loop also ends,
//! cleanly, when the node thread is gone (a graceful stop); dropping the
//! WAL then closes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use log::{info, warn};

use crate::bell::Waking;
use crate::datadir::{to_wal_entry, to_wal_hard_state, Recovered};
use crate::error::Fatal;
use crate::kv::{decode_command, decode_conf_context, Command, KvStore};
use crate::metrics::fsync_log::FsyncLog;
use crate::metrics::{DiskMetrics, Metrics, ServerMetrics};
use crate::protocol::{ErrorCode, Reply};
use crate::raft::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, MemStorage, NodeId, ReadState, Ready,
    Storage,
};
use crate::reads::{ReadNotice, ReadQueue};
use crate::reply::{Outbox, ReplyTx};
use crate::shared::{Membership, Shared};
use crate::snapshots::{Inbox, Snapshots};
use crate::transport::Transport;

/// Work in the Ready loop longer than this is logged as a warning: the
/// loop sends heartbeats, so a long stall can cost the leadership.
const SLOW_READY: Duration = Duration::from_millis(100);

/// Channels of the ready thread.
pub struct ApplyChannels {
    pub ready: Receiver<Ready>,
    pub advance: Waking<()>,
    /// Conf changes to apply on the node thread, with where to send the
    /// resulting membership.
    pub conf: Waking<(ConfChange, Sender<ConfState>)>,
    pub read_notices: Receiver<ReadNotice>,
    pub snapshot_requests: Receiver<ReplyTx>,
    /// Where client replies go: held while a batch is applied, so that its
    /// replies leave together (`reply.rs`).
    pub replies: Arc<Outbox>,
}

/// What the ready thread owns: the WAL, the state machine and the reads.
pub struct Applier {
    id: NodeId,
    wal: wal::Wal,
    storage: MemStorage,
    kv: KvStore,
    /// applied <= commit; the KV store reflects exactly the entries up to it.
    applied: u64,
    conf_state: ConfState,
    transport: Arc<Transport>,
    shared: Arc<Shared>,
    inbox: Arc<Inbox>,
    ch: ApplyChannels,
    /// Addresses given on the command line; they win over the log's.
    peer_overrides: BTreeMap<NodeId, String>,
    snapshots: Snapshots,
    reads: ReadQueue,
    server_metrics: Arc<ServerMetrics>,
    disk_metrics: Arc<DiskMetrics>,
    fsync_log: FsyncLog,
}

impl Applier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        rec: Recovered,
        transport: Arc<Transport>,
        shared: Arc<Shared>,
        inbox: Arc<Inbox>,
        ch: ApplyChannels,
        peer_overrides: BTreeMap<NodeId, String>,
        snapshot_entries: u64,
        metrics: &Metrics,
    ) -> Applier {
        shared.publish_snapshot(rec.snapshot_index, rec.snapshot_path.clone());
        let hs = rec.storage.hard_state();
        metrics.server.recovered(hs.term, hs.commit, rec.applied);
        let a = Applier {
            id,
            wal: rec.wal,
            storage: rec.storage,
            kv: rec.kv,
            applied: rec.applied,
            conf_state: rec.conf_state,
            transport,
            shared,
            inbox,
            ch,
            peer_overrides,
            snapshots: Snapshots::new(snapshot_entries, rec.snapshot_index, metrics.disk.clone()),
            reads: ReadQueue::default(),
            server_metrics: metrics.server.clone(),
            disk_metrics: metrics.disk.clone(),
            fsync_log: FsyncLog::new(&metrics.disk),
        };
        a.connect_members();
        a.publish_membership();
        a.publish_persisted();
        a.shared.publish_sessions(a.kv.sessions().len());
        a
    }

    /// Tells probing peers (`discovery.rs`) what this node holds.
    fn publish_persisted(&self) {
        self.shared
            .publish_persisted(self.storage.hard_state().term, self.storage.last_index());
    }

    /// Tells the transport who may connect.
    fn publish_membership(&self) {
        let cs = &self.conf_state;
        let cluster = &self.kv.cluster;
        let members = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(cluster.members.keys())
            .copied()
            .collect();
        self.shared.publish_membership(Membership {
            cluster_id: cluster.id,
            members,
            removed: cluster.removed.clone(),
        });
        if cluster.removed.contains(&self.id) {
            self.shared.set_removed();
        }
    }

    /// Runs until the node thread stops (`Ok`) or the disk fails (`Err`).
    pub fn run(mut self) -> Result<(), Fatal> {
        loop {
            let written = self.snapshots.written();
            select! {
                recv(self.ch.ready) -> rd => match rd {
                    Ok(rd) => self.handle_ready(rd)?,
                    Err(_) => break,
                },
                recv(self.ch.snapshot_requests) -> r => {
                    if let Ok(reply) = r {
                        self.snapshots.request(reply);
                        self.start_snapshot()?;
                    }
                }
                recv(written) -> w => {
                    if let Ok(w) = w {
                        self.snapshots.finish(w, &mut self.wal, &self.storage, &self.shared)?;
                        // Requests that came meanwhile may want a newer one.
                        if self.snapshots.due(self.applied, &self.kv) {
                            self.start_snapshot()?;
                        }
                    }
                }
            }
        }
        let reply = Reply::error(ErrorCode::Unavailable, "node is shutting down");
        self.take_read_notices();
        self.reads.fail_all(&reply);
        info!("ready loop stopped; closing the WAL");
        Ok(())
    }

    fn handle_ready(&mut self, rd: Ready) -> Result<(), Fatal> {
        let start = Instant::now();
        let (n_entries, n_committed) = (rd.entries.len(), rd.committed_entries.len());
        // 1. A leader's messages do not wait for its own disk.
        self.transport.send(rd.messages);
        // 2. Committed entries this node had persisted before this Ready
        //    are applied, and their clients answered, before its disk
        //    write: etcd's raftNode hands them to the apply loop first,
        //    too. The rest (entries that arrive and commit in one Ready: a
        //    one-node cluster, a follower catching up, or anything after a
        //    snapshot) wait for the write, so that the applied index never
        //    passes what the WAL holds and a snapshot never covers an
        //    entry the log could lose.
        self.take_read_states(rd.read_states);
        let mut committed = rd.committed_entries;
        let after_write = if rd.snapshot.is_none() {
            // In the WAL as they are: below this Ready's first entry, which
            // may overwrite a conflicting tail.
            let mut in_wal = self.storage.last_index();
            if let Some(first) = rd.entries.first() {
                in_wal = in_wal.min(first.index.saturating_sub(1));
            }
            let first_unstable = committed
                .iter()
                .position(|e| e.index > in_wal)
                .unwrap_or(committed.len());
            let later = committed.split_off(first_unstable);
            self.apply_and_serve(committed);
            later
        } else {
            committed
        };
        // 3. Persist.
        if let Some(snap) = &rd.snapshot {
            let file = self.inbox.take(&snap.data).ok_or_else(|| {
                Fatal::new(
                    "installing a received snapshot",
                    "its file is no longer in the incoming dir",
                )
            })?;
            self.snapshots.install(
                snap,
                file,
                &mut self.wal,
                &self.storage,
                &mut self.kv,
                &self.shared,
            )?;
            self.applied = snap.meta.index;
            self.server_metrics.applied_snapshot(self.applied);
            self.conf_state = snap.meta.conf_state.clone();
            self.connect_members();
            self.publish_membership();
            self.publish_persisted();
        }
        if !rd.entries.is_empty() || rd.hard_state.is_some() {
            let hs = rd.hard_state.as_ref().map(to_wal_hard_state);
            let entries: Vec<wal::Entry> = rd.entries.iter().map(to_wal_entry).collect();
            let sync = rd.must_sync && !crate::debug::ack_before_fsync();
            if crate::debug::error_point("wal_save") {
                let injected = std::io::Error::other("injected by failpoint wal_save");
                return Err(Fatal::new("writing the WAL", injected));
            }
            self.wal
                .save(hs.as_ref(), &entries, sync)
                .map_err(|e| Fatal::new("writing the WAL", e))?;
            if let Some(took) = self.wal.take_fsync_time() {
                self.disk_metrics.fsynced(took, entries.len());
            }
            self.disk_metrics.wal_written(self.wal.bytes_written());
            self.fsync_log.saved(&self.disk_metrics);
            if rd.must_sync {
                crate::debug::crash_point("after_wal_fsync");
            }
            self.storage
                .append(&rd.entries)
                .map_err(|e| Fatal::new("appending to the in-memory log", e))?;
            if let Some(h) = rd.hard_state {
                self.server_metrics.hard_state(h.term, h.commit);
                self.storage.set_hard_state(h);
            }
            self.publish_persisted();
        }
        if rd.recovery_done {
            // The hard state that ends the recovery is durable (the Ready
            // that carries it must sync): only now may a restart forget
            // that this node lost state.
            self.wal
                .clear_damage()
                .map_err(|e| Fatal::new("clearing the WAL's damage marker", e))?;
            info!("recovery done: the damage marker is cleared");
        }
        let persisted = start.elapsed();
        // 4. What promises durability goes out only now.
        self.transport.send(rd.persisted_messages);
        // 5. Apply the rest; reads, snapshots, advance.
        self.apply_and_serve(after_write);
        if self.snapshots.due(self.applied, &self.kv) {
            self.start_snapshot()?;
        }
        let took = start.elapsed();
        if took > SLOW_READY {
            warn!(
                "a Ready took {took:?}: {persisted:?} to persist {n_entries} entries, \
                 {:?} to apply {n_committed} and serve reads; heartbeats wait meanwhile",
                took - persisted
            );
        }
        let _ = self.ch.advance.send(());
        Ok(())
    }

    /// Applies committed entries and serves the reads they unlock, with the
    /// client outbox held, so that all their replies leave together.
    fn apply_and_serve(&mut self, entries: Vec<Entry>) {
        self.ch.replies.hold();
        if !entries.is_empty() {
            for e in entries {
                self.apply_entry(e);
            }
            self.shared.publish_sessions(self.kv.sessions().len());
            self.shared.publish_keys(self.kv.len() as u64);
        }
        self.serve_reads();
        self.ch.replies.release();
    }

    /// Takes the read indexes of a Ready. The node thread announced their
    /// batches before it built the Ready, so the notices are read first.
    fn take_read_states(&mut self, states: Vec<ReadState>) {
        self.take_read_notices();
        for rs in states {
            self.reads.read_state(rs);
        }
    }

    fn take_read_notices(&mut self) {
        while let Ok(n) = self.ch.read_notices.try_recv() {
            self.reads.notice(n);
        }
    }

    /// Serves the reads whose read index is applied.
    fn serve_reads(&mut self) {
        self.take_read_notices();
        self.reads.serve(self.applied, &self.kv);
    }

    fn start_snapshot(&mut self) -> Result<(), Fatal> {
        self.snapshots.start(
            &self.wal,
            &self.storage,
            &self.kv,
            self.applied,
            &self.conf_state,
        )
    }

    fn apply_entry(&mut self, e: Entry) {
        if e.index <= self.applied {
            return;
        }
        self.applied = e.index;
        self.server_metrics.applied(e.index);
        self.snapshots.applied(e.data.len());
        match e.kind {
            EntryKind::Normal if e.data.is_empty() => {} // a new leader's no-op
            EntryKind::Normal => match decode_command(&e.data) {
                Some((rid, cmd)) => {
                    let sets_cluster_id = matches!(cmd, Command::SetClusterId { .. });
                    let clock = matches!(cmd, Command::Clock { .. });
                    let reply = self.kv.apply_at(e.index, cmd);
                    crate::debug::crash_point("mid_apply");
                    if sets_cluster_id {
                        info!("cluster id is {:016x}", self.kv.cluster.id);
                        self.publish_membership();
                    } else if rid.node == self.id && !clock {
                        self.shared.pending().answer(rid.seq, reply);
                    }
                }
                None => warn!("skipping entry {}: not a valid command", e.index),
            },
            EntryKind::ConfChange => match ConfChange::decode(&e.data) {
                Ok(cc) => self.apply_conf_change(cc),
                Err(err) => warn!("skipping entry {}: {err}", e.index),
            },
        }
    }

    /// Applies a conf change: the core takes it on the node thread, which
    /// answers with the new membership; the address book and the transport
    /// follow here.
    fn apply_conf_change(&mut self, cc: ConfChange) {
        let (tx, rx) = bounded(1);
        if self.ch.conf.send((cc.clone(), tx)).is_err() {
            return;
        }
        let Ok(cs) = rx.recv() else { return };
        self.conf_state = cs;
        let id = cc.node_id;
        let ctx = decode_conf_context(&cc.context);
        match cc.kind {
            ConfChangeKind::AddLearner | ConfChangeKind::AddNode => {
                if let Some((_, addr)) = ctx.as_ref().filter(|(_, a)| !a.is_empty()) {
                    self.kv.cluster.members.insert(id, addr.clone());
                }
                if let Some(addr) = self.address_of(id) {
                    self.transport.add_peer(id, &addr);
                }
            }
            ConfChangeKind::RemoveNode => {
                self.kv.cluster.members.remove(&id);
                self.kv.cluster.removed.insert(id);
                self.transport.remove_peer(id);
                if id == self.id {
                    warn!(
                        "this node ({}) was removed from the cluster; it no longer takes part",
                        self.id
                    );
                }
            }
        }
        self.publish_membership();
        info!(
            "membership now voters={:?} learners={:?}",
            self.conf_state.voters, self.conf_state.learners
        );
        // ADD_NODE adds a learner and answers once the node thread's
        // promotion of it applies; the other changes answer now.
        let done = cc.kind != ConfChangeKind::AddLearner || self.conf_state.voters.contains(&id);
        if let Some((rid, _)) = ctx {
            if done && rid.node == self.id {
                self.shared.pending().answer(rid.seq, Reply::Ok);
            }
        }
    }

    /// A member's raft address: the command line's, else the log's.
    fn address_of(&self, id: NodeId) -> Option<String> {
        self.peer_overrides
            .get(&id)
            .or_else(|| self.kv.cluster.members.get(&id))
            .cloned()
    }

    /// Points the transport at every member known.
    fn connect_members(&self) {
        let mut ids: Vec<NodeId> = self.kv.cluster.members.keys().copied().collect();
        ids.extend(
            self.conf_state
                .voters
                .iter()
                .chain(&self.conf_state.learners),
        );
        ids.extend(self.peer_overrides.keys());
        for id in ids {
            if let Some(addr) = self.address_of(id) {
                self.transport.add_peer(id, &addr);
            }
        }
    }
}
