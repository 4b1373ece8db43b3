//! The ready-handling thread and the node's durable storage.
//!
//! This is etcd's `raftNode.start` plus `applyAll`. For every Ready, in order:
//!
//! 1. send `messages` (a leader's appends go out before its own disk write,
//!    thesis §10.2.1);
//! 2. persist: the snapshot first, then entries and hard state in one WAL
//!    write with one fdatasync when `must_sync` (group commit: every entry of
//!    the Ready shares that fsync); then make them visible in `MemStorage`;
//! 3. send `persisted_messages` (acknowledgements and votes, which promise
//!    durability);
//! 4. apply the snapshot and committed entries to the KV store, answering
//!    the clients of this node; conf changes go to the node thread, which
//!    owns the core, and their addresses to the transport;
//! 5. serve reads whose read index is now applied, maybe take a snapshot,
//!    and signal advance.
//!
//! A WAL write that fails stops the process: a node that cannot persist must
//! not acknowledge anything, and a restart recovers from what is on disk.
//!
//! Snapshots stream: taking one writes the KV state straight into the WAL's
//! snapshot file, installing one received from the leader reads the file the
//! transport wrote and feeds it to the WAL and the KV store in one pass, and
//! a restart restores from the file. None of them holds the serialised state
//! in memory, and the in-memory log's snapshot carries metadata only.
//!
//! Data dir layout: `node-id` (the id this dir belongs to), `wal/` (the
//! `wal` crate's segments and snapshot files) and `incoming/` (snapshots
//! being received; emptied at start-up).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use log::{error, info, warn};

use crate::kv::ErrorCode;
use crate::kv::RequestId;
use crate::kv::{decode_command, KvStore, Reply};
use crate::node::{decode_conf_context, encode_conf_context, ReadNotice, ReadWaiter, Shared};
use crate::raft::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, HardState, MemStorage, NodeId, Ready,
    Snapshot, SnapshotMeta, Storage,
};
use crate::reply::ReplyTx;
use crate::transport::Transport;

/// Entries kept in memory behind a snapshot, for slow followers.
pub const KEEP_TAIL: u64 = 5000;

/// Subdirectory of the data dir for snapshots being received.
pub const INCOMING_DIR: &str = "incoming";

/// A reader that copies everything it reads into a writer: a received
/// snapshot goes to the WAL and the KV store in one pass.
struct Tee<'a, R, W> {
    r: R,
    w: &'a mut W,
}

impl<R: std::io::Read, W: Write> std::io::Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Why the node could not start; printed as one line.
pub type StartError = String;

fn to_wal_entry(e: &Entry) -> wal::Entry {
    wal::Entry {
        index: e.index,
        term: e.term,
        kind: e.kind.to_byte(),
        data: e.data.clone(),
    }
}

fn to_wal_meta(m: &SnapshotMeta) -> wal::SnapshotMeta {
    wal::SnapshotMeta {
        index: m.index,
        term: m.term,
        voters: m.conf_state.voters.clone(),
        learners: m.conf_state.learners.clone(),
    }
}

/// What a node starts from.
pub struct Recovered {
    pub wal: wal::Wal,
    pub storage: MemStorage,
    pub kv: KvStore,
    /// Index the KV store reflects (its snapshot's).
    pub applied: u64,
    pub conf_state: ConfState,
    pub snapshot_index: u64,
    pub snapshot_path: Option<PathBuf>,
    /// True when the data dir was empty and this start created it.
    pub fresh: bool,
}

/// Opens (or creates) the data dir of node `id`, recovering snapshot, hard
/// state and log; on a fresh start without `join`, bootstraps the cluster
/// from `peers` by writing one AddNode entry per member, committed at term 1.
pub fn open_data_dir(
    dir: &Path,
    id: NodeId,
    peers: &BTreeMap<NodeId, String>,
    join: bool,
) -> Result<Recovered, StartError> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    let id_file = dir.join("node-id");
    match fs::read_to_string(&id_file) {
        Ok(s) => {
            let found: NodeId = s.trim().parse().map_err(|_| {
                format!(
                    "{} is not a node id file (holds {:?})",
                    id_file.display(),
                    s.trim()
                )
            })?;
            if found != id {
                return Err(format!(
                    "data dir {} belongs to node {found}, not node {id}",
                    dir.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_durably(&id_file, format!("{id}\n").as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", id_file.display()))?;
        }
        Err(e) => return Err(format!("cannot read {}: {e}", id_file.display())),
    }
    let wal_dir = dir.join("wal");
    let (mut wal, rec) = wal::Wal::open(&wal_dir, wal_options()?).map_err(|e| e.to_string())?;
    if let Some(t) = &rec.torn_tail {
        warn!(
            "repaired a torn WAL tail in {} at offset {} ({} bytes kept in {})",
            t.segment.display(),
            t.offset,
            t.bytes_cut,
            t.side_file.display()
        );
    }
    for p in &rec.set_aside {
        warn!("a corrupt snapshot was set aside: {}", p.display());
    }
    let storage = MemStorage::new();
    let mut kv = KvStore::new();
    let mut applied = 0;
    let mut conf_state = ConfState::default();
    let mut snapshot_index = 0;
    let mut snapshot_path = None;
    if rec.snapshot.is_some() {
        let mut r = match wal.snapshot_reader().map_err(|e| e.to_string())? {
            Some(r) => r,
            None => {
                return Err(format!(
                    "snapshot in {} vanished during start-up",
                    wal_dir.display()
                ))
            }
        };
        let meta = r.meta().clone();
        let path = r.path().to_path_buf();
        let mut br = std::io::BufReader::with_capacity(256 << 10, &mut r);
        kv.restore(&mut br)
            .map_err(|e| format!("snapshot {}: {e}", path.display()))?;
        drop(br);
        // Read to the end so the reader verifies the data CRC.
        std::io::copy(&mut r, &mut std::io::sink())
            .map_err(|e| format!("snapshot {}: {e}", path.display()))?;
        conf_state = ConfState {
            voters: meta.voters.clone(),
            learners: meta.learners.clone(),
        };
        let snap = Snapshot {
            meta: SnapshotMeta {
                index: meta.index,
                term: meta.term,
                conf_state: conf_state.clone(),
            },
            data: Vec::new(),
        };
        storage
            .apply_snapshot(snap)
            .map_err(|e| format!("installing snapshot: {e}"))?;
        applied = meta.index;
        snapshot_index = meta.index;
        snapshot_path = Some(path);
    }
    // Transfers a crash interrupted are of no use.
    let _ = fs::remove_dir_all(dir.join(INCOMING_DIR));
    let entries: Vec<Entry> = rec
        .entries
        .iter()
        .map(|e| {
            let kind = EntryKind::from_byte(e.kind).ok_or_else(|| {
                format!(
                    "WAL in {} holds entry {} of unknown kind {}",
                    wal_dir.display(),
                    e.index,
                    e.kind
                )
            })?;
            Ok(Entry {
                index: e.index,
                term: e.term,
                kind,
                data: e.data.clone(),
            })
        })
        .collect::<Result<_, StartError>>()?;
    storage
        .append(&entries)
        .map_err(|e| format!("WAL entries do not follow the snapshot: {e}"))?;
    let hs = rec.hard_state;
    let fresh = rec.snapshot.is_none() && entries.is_empty() && hs == wal::HardState::default();
    if fresh && !join {
        // Bootstrap: every member started with the same list writes the same entries.
        let boot: Vec<Entry> = peers
            .iter()
            .enumerate()
            .map(|(i, (&pid, addr))| {
                let cc = ConfChange {
                    kind: ConfChangeKind::AddNode,
                    node_id: pid,
                    context: encode_conf_context(RequestId { node: 0, seq: 0 }, addr),
                };
                Entry {
                    index: i as u64 + 1,
                    term: 1,
                    kind: EntryKind::ConfChange,
                    data: cc.encode(),
                }
            })
            .collect();
        let hs = HardState {
            term: 1,
            vote: 0,
            commit: boot.len() as u64,
        };
        let whs = wal::HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        };
        let went: Vec<wal::Entry> = boot.iter().map(to_wal_entry).collect();
        wal.save(Some(&whs), &went, true)
            .map_err(|e| e.to_string())?;
        storage.append(&boot).map_err(|e| e.to_string())?;
        storage.set_hard_state(hs);
        info!(
            "bootstrapped a new cluster of {:?}",
            peers.keys().collect::<Vec<_>>()
        );
    } else {
        let commit = hs.commit.max(snapshot_index);
        storage.set_hard_state(HardState {
            term: hs.term,
            vote: hs.vote,
            commit,
        });
        if !fresh {
            info!(
                "recovered: snapshot {}, log up to {}, term {}, commit {}",
                snapshot_index,
                storage.last_index(),
                hs.term,
                commit
            );
        }
    }
    // The core starts from the snapshot's membership; the bootstrap entries
    // (or later conf changes) are re-applied as committed entries.
    if fresh && !join {
        conf_state = ConfState::with_voters(peers.keys().copied().collect());
    }
    storage.set_conf_state(conf_state.clone());
    Ok(Recovered {
        wal,
        storage,
        kv,
        applied,
        conf_state,
        snapshot_index,
        snapshot_path,
        fresh,
    })
}

/// WAL settings. `RAFTNODE_WAL_SEGMENT_BYTES` overrides the segment size
/// (64 MiB), for tests that need to see segments roll over and be released.
/// Released files are deleted in the background: the Ready loop calls
/// `release_to`, and must not wait for a busy disk to unlink them.
fn wal_options() -> Result<wal::Options, StartError> {
    let mut opts = wal::Options {
        remove_in_background: true,
        ..wal::Options::default()
    };
    if let Ok(v) = std::env::var("RAFTNODE_WAL_SEGMENT_BYTES") {
        opts.segment_size = v
            .parse()
            .ok()
            .filter(|&n: &u64| n >= 4096 && n % 8 == 0)
            .ok_or_else(|| {
                format!("RAFTNODE_WAL_SEGMENT_BYTES={v:?}: need a multiple of 8, at least 4096")
            })?;
    }
    Ok(opts)
}

/// Writes a small file so that it survives a crash: temp file, fsync, rename, fsync dir.
fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// How often the group-commit figures are logged.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Counts fsyncs and the entries they made durable, to show the batching.
struct FsyncStats {
    since: Instant,
    fsyncs: u64,
    entries: u64,
    readies: u64,
}

impl FsyncStats {
    fn new() -> FsyncStats {
        FsyncStats {
            since: Instant::now(),
            fsyncs: 0,
            entries: 0,
            readies: 0,
        }
    }

    fn record(&mut self, synced: bool, entries: usize) {
        self.readies += 1;
        if synced {
            self.fsyncs += 1;
            self.entries += entries as u64;
        }
        let elapsed = self.since.elapsed();
        if elapsed >= STATS_EVERY {
            if self.fsyncs > 0 {
                info!(
                    "fsync stats: {} fsyncs, {} entries, {:.1} entries/fsync, {:.0} fsyncs/s over {:.0} s ({} readies)",
                    self.fsyncs,
                    self.entries,
                    self.entries as f64 / self.fsyncs as f64,
                    self.fsyncs as f64 / elapsed.as_secs_f64(),
                    elapsed.as_secs_f64(),
                    self.readies
                );
            }
            *self = FsyncStats::new();
        }
    }
}

/// Channels of the ready-handling thread.
pub struct ApplyChannels {
    pub ready: Receiver<Ready>,
    pub advance: Sender<()>,
    pub conf: Sender<(ConfChange, Sender<ConfState>)>,
    pub read_batches: Receiver<ReadNotice>,
    pub snapshot_requests: Receiver<ReplyTx>,
}

pub struct Applier {
    pub id: NodeId,
    pub wal: wal::Wal,
    pub storage: MemStorage,
    pub kv: KvStore,
    pub applied: u64,
    pub conf_state: ConfState,
    pub transport: Arc<Transport>,
    pub shared: Arc<Shared>,
    pub ch: ApplyChannels,
    /// Addresses given on the command line; they win over the log's.
    pub peer_overrides: BTreeMap<NodeId, String>,
    pub snapshot_entries: u64,
    pub snapshot_index: u64,
    /// Bytes of entries applied since the newest snapshot's index.
    applied_bytes: u64,
    /// Index of the snapshot before the newest, which the WAL keeps entries for.
    pub prev_snapshot_index: u64,
    read_batches: HashMap<Vec<u8>, Vec<ReadWaiter>>,
    /// The snapshot being written, if any, and SNAPSHOT requests waiting.
    snapshotting: Option<Snapshotting>,
    snapshot_waiters: Vec<ReplyTx>,
    /// Group-commit figures, logged every [`STATS_EVERY`].
    stats: FsyncStats,
    /// Reads waiting for their index to be applied, in read-index order.
    waiting_reads: Vec<(u64, Vec<ReadWaiter>)>,
}

/// Work in the Ready loop longer than this is logged as a warning: the
/// loop sends heartbeats, so a long stall can cost the leadership.
const SLOW_STEP: Duration = Duration::from_millis(100);

/// From this size on, snapshots are also spaced by bytes written; see
/// [`Applier::snapshot_due`].
const LARGE_STATE: u64 = 8 << 20;

/// Stops the process after a storage failure; see the module docs.
fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    error!("{what}: {e}; stopping (a restart recovers from the WAL)");
    eprintln!("raftnode: {what}: {e}");
    std::process::exit(1);
}

impl Applier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        rec: Recovered,
        transport: Arc<Transport>,
        shared: Arc<Shared>,
        ch: ApplyChannels,
        peer_overrides: BTreeMap<NodeId, String>,
        snapshot_entries: u64,
    ) -> Applier {
        shared.set_snapshot(rec.snapshot_index, rec.snapshot_path.clone());
        let a = Applier {
            id,
            wal: rec.wal,
            storage: rec.storage,
            kv: rec.kv,
            applied: rec.applied,
            conf_state: rec.conf_state,
            transport,
            shared,
            ch,
            peer_overrides,
            snapshot_entries,
            snapshot_index: rec.snapshot_index,
            applied_bytes: 0,
            prev_snapshot_index: 0,
            read_batches: HashMap::new(),
            stats: FsyncStats::new(),
            snapshotting: None,
            snapshot_waiters: Vec::new(),
            waiting_reads: Vec::new(),
        };
        a.connect_members();
        a.track_learners();
        a
    }

    /// Points the transport at every member: command-line address first,
    /// else the one recorded in the log or snapshot.
    fn connect_members(&self) {
        let mut ids: Vec<NodeId> = self.kv.members.keys().copied().collect();
        ids.extend(
            self.conf_state
                .voters
                .iter()
                .chain(&self.conf_state.learners),
        );
        ids.extend(self.peer_overrides.keys());
        for id in ids {
            if let Some(addr) = self
                .peer_overrides
                .get(&id)
                .or_else(|| self.kv.members.get(&id))
            {
                self.transport.add_peer(id, addr);
            }
        }
    }

    pub fn run(mut self) {
        let never = crossbeam_channel::never();
        loop {
            let done = match &self.snapshotting {
                Some(s) => s.done.clone(),
                None => never.clone(),
            };
            select! {
                recv(self.ch.ready) -> rd => match rd {
                    Ok(rd) => self.handle_ready(rd),
                    Err(_) => return,
                },
                recv(self.ch.snapshot_requests) -> r => {
                    if let Ok(reply) = r {
                        self.snapshot_waiters.push(reply);
                        self.start_snapshot();
                    }
                }
                recv(done) -> r => {
                    if let Ok(written) = r {
                        self.finish_snapshot(written);
                    }
                }
            }
        }
    }

    fn handle_ready(&mut self, rd: Ready) {
        let start = Instant::now();
        let n_entries = rd.entries.len();
        let n_committed = rd.committed_entries.len();
        // 1. A leader's messages do not wait for its own disk.
        self.transport.send(rd.messages);
        // 2. Persist.
        if let Some(snap) = &rd.snapshot {
            self.persist_received_snapshot(snap);
        }
        if !rd.entries.is_empty() || rd.hard_state.is_some() {
            let hs = rd.hard_state.map(|h| wal::HardState {
                term: h.term,
                vote: h.vote,
                commit: h.commit,
            });
            let entries: Vec<wal::Entry> = rd.entries.iter().map(to_wal_entry).collect();
            let sync = rd.must_sync && !crate::debug::ack_before_fsync();
            if let Err(e) = self.wal.save(hs.as_ref(), &entries, sync) {
                fatal("writing the WAL", e);
            }
            self.stats.record(rd.must_sync, entries.len());
            if rd.must_sync {
                crate::debug::crash_point("after_wal_fsync");
            }
            if let Err(e) = self.storage.append(&rd.entries) {
                fatal("appending to the in-memory log", e);
            }
            if let Some(h) = rd.hard_state {
                self.storage.set_hard_state(h);
            }
        }
        let persisted = Instant::now();
        // 3. What promises durability goes out only now.
        self.transport.send(rd.persisted_messages);
        // 4. Apply.
        if let Some(snap) = rd.snapshot {
            self.installed_snapshot(snap.meta);
        }
        for e in rd.committed_entries {
            self.apply_entry(e);
        }
        // 5. Reads, snapshots, advance.
        while let Ok(notice) = self.ch.read_batches.try_recv() {
            match notice {
                ReadNotice::Batch(ctx, waiters) => {
                    self.read_batches.insert(ctx, waiters);
                }
                ReadNotice::Local(waiters) => self.waiting_reads.push((0, waiters)),
                ReadNotice::LeaderChanged => {
                    // Read states already received stay valid; requests
                    // whose answer has not come may never come.
                    let msg = "leader changed while the read was in flight; retry";
                    let reply = Reply::error(ErrorCode::LeaderChanged, msg);
                    for (_, ws) in self.read_batches.drain() {
                        for w in ws {
                            w.reply.send(reply.clone());
                        }
                    }
                }
            }
        }
        for rs in rd.read_states {
            if let Some(w) = self.read_batches.remove(&rs.context) {
                self.waiting_reads.push((rs.index, w));
            }
        }
        self.serve_reads();
        if self.snapshot_due() {
            self.start_snapshot();
        }
        let took = start.elapsed();
        if took > SLOW_STEP {
            warn!(
                "a Ready took {took:?}: {:?} to persist {n_entries} entries, \
                 {:?} to apply {n_committed}; heartbeats wait meanwhile",
                persisted - start,
                took - (persisted - start)
            );
        }
        let _ = self.ch.advance.send(());
    }

    /// Makes a snapshot received from the leader durable and loads it into
    /// the KV store, reading the received file once. Its `data` is the path
    /// of that file (see `transport`).
    fn persist_received_snapshot(&mut self, snap: &Snapshot) {
        let path = PathBuf::from(String::from_utf8_lossy(&snap.data).into_owned());
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => fatal(&format!("opening received snapshot {}", path.display()), e),
        };
        let mut writer = match self.wal.snapshot_writer(&to_wal_meta(&snap.meta)) {
            Ok(w) => w,
            Err(e) => fatal("starting a snapshot file", e),
        };
        // Restored in place: the old state is dropped before the new one is built.
        let kv = &mut self.kv;
        {
            let tee = Tee {
                r: std::io::BufReader::with_capacity(256 << 10, file),
                w: &mut writer,
            };
            let mut tee = std::io::BufReader::with_capacity(256 << 10, tee);
            if let Err(e) = kv.restore(&mut tee) {
                fatal("loading a received snapshot", e);
            }
            if let Err(e) = std::io::copy(&mut tee, &mut std::io::sink()) {
                fatal("copying a received snapshot", e);
            }
        }
        if let Err(e) = self.wal.commit_snapshot(writer) {
            fatal("saving a received snapshot", e);
        }
        let _ = fs::remove_file(&path);
        let meta = snap.meta.clone();
        if let Err(e) = self.storage.apply_snapshot(Snapshot {
            meta,
            data: Vec::new(),
        }) {
            fatal("installing a received snapshot", e);
        }
    }

    /// Bookkeeping once a received snapshot is persisted and loaded.
    fn installed_snapshot(&mut self, meta: SnapshotMeta) {
        self.applied = meta.index;
        self.applied_bytes = 0;
        self.conf_state = meta.conf_state.clone();
        self.prev_snapshot_index = self.snapshot_index;
        self.snapshot_index = meta.index;
        self.publish_snapshot();
        self.connect_members();
        self.track_learners();
        info!("installed snapshot at {} from the leader", meta.index);
    }

    fn publish_snapshot(&self) {
        let path = self
            .wal
            .snapshot_reader()
            .ok()
            .flatten()
            .map(|r| r.path().to_path_buf());
        self.shared.set_snapshot(self.snapshot_index, path);
    }

    fn apply_entry(&mut self, e: Entry) {
        if e.index <= self.applied {
            return;
        }
        self.applied = e.index;
        self.applied_bytes += e.data.len() as u64;
        match e.kind {
            EntryKind::Normal if e.data.is_empty() => {} // a new leader's no-op
            EntryKind::Normal => match decode_command(&e.data) {
                Some((rid, cmd)) => {
                    let reply = self.kv.apply(cmd);
                    crate::debug::crash_point("mid_apply");
                    if rid.node == self.id {
                        self.shared.answer(rid.seq, reply);
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

    fn apply_conf_change(&mut self, cc: ConfChange) {
        let (tx, rx) = bounded(1);
        if self.ch.conf.send((cc.clone(), tx)).is_err() {
            return;
        }
        let Ok(cs) = rx.recv() else { return };
        self.conf_state = cs;
        let id = cc.node_id;
        let ctx = decode_conf_context(&cc.context);
        if let Some((_, addr)) = &ctx {
            if !addr.is_empty() && cc.kind != ConfChangeKind::RemoveNode {
                self.kv.members.insert(id, addr.clone());
            }
        }
        // Whether the client that asked for this change can be answered now.
        let done = match cc.kind {
            ConfChangeKind::AddLearner => {
                if self.conf_state.voters.contains(&id) {
                    true // already a voter: nothing to promote
                } else {
                    self.shared.promotions().insert(id, cc.context.clone());
                    false // answered when the promotion applies
                }
            }
            ConfChangeKind::AddNode => {
                self.shared.promotions().remove(&id);
                true
            }
            ConfChangeKind::RemoveNode => {
                self.shared.promotions().remove(&id);
                self.kv.members.remove(&id);
                self.transport.remove_peer(id);
                if id == self.id {
                    warn!(
                        "this node ({}) was removed from the cluster; it no longer takes part",
                        self.id
                    );
                }
                true
            }
        };
        if cc.kind != ConfChangeKind::RemoveNode {
            if let Some(addr) = self
                .peer_overrides
                .get(&id)
                .or_else(|| self.kv.members.get(&id))
            {
                self.transport.add_peer(id, addr);
            }
        }
        info!(
            "membership now voters={:?} learners={:?}",
            self.conf_state.voters, self.conf_state.learners
        );
        if let Some((rid, _)) = ctx {
            if done && rid.node == self.id {
                self.shared.answer(rid.seq, Reply::Ok);
            }
        }
    }

    /// After a restart or a snapshot install, learners named by the
    /// snapshot are still to be promoted; their ADD_NODE clients are gone.
    fn track_learners(&self) {
        let mut p = self.shared.promotions();
        p.retain(|id, _| self.conf_state.learners.contains(id));
        for id in &self.conf_state.learners {
            let addr = self.kv.members.get(id).cloned().unwrap_or_default();
            p.entry(*id)
                .or_insert_with(|| encode_conf_context(RequestId { node: 0, seq: 0 }, &addr));
        }
    }

    fn serve_reads(&mut self) {
        let now = Instant::now();
        let applied = self.applied;
        let kv = &self.kv;
        self.waiting_reads.retain(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters {
                if w.deadline > now {
                    let reply = match kv.get(&w.key) {
                        Some(v) => Reply::Value(v.to_vec()),
                        None => Reply::NotFound,
                    };
                    w.reply.send(reply);
                }
            }
            false
        });
        // Batches whose read state never came (leader change) are dropped
        // once all their clients have timed out.
        self.read_batches
            .retain(|_, ws| ws.iter().any(|w| w.deadline > now));
    }

    /// Whether `--snapshot-entries` entries were applied since the newest
    /// snapshot. A snapshot rewrites the whole state, so once the state is
    /// large ([`LARGE_STATE`]) it also waits until the entries applied since
    /// add up to a quarter of the state's size: otherwise a 1 GiB state would
    /// be rewritten every few MiB of writes, and the disk would do little
    /// else. The log held in memory meanwhile stays under a quarter of the
    /// state. `SNAPSHOT` does not wait.
    fn snapshot_due(&self) -> bool {
        if self.snapshot_entries == 0 || self.applied < self.snapshot_index + self.snapshot_entries
        {
            return false;
        }
        let state = self.kv.data_bytes();
        state < LARGE_STATE || self.applied_bytes >= state / 4
    }

    /// Starts a snapshot of the applied state unless one is being written.
    /// The data is written, synced and renamed into place on a background
    /// thread from a frozen view of the store, so the Ready loop (and with it
    /// heartbeats and appends) never waits for a large snapshot;
    /// [`Applier::finish_snapshot`] commits it with one fsync of the log.
    fn start_snapshot(&mut self) {
        if self.snapshotting.is_some() {
            return;
        }
        let index = self.applied;
        if index <= self.snapshot_index {
            let reply = Reply::OkIndex(self.snapshot_index);
            for w in self.snapshot_waiters.drain(..) {
                w.send(reply.clone());
            }
            return;
        }
        let term = match self.storage.term(index) {
            Ok(t) => t,
            Err(e) => {
                warn!("cannot snapshot at {index}: {e}");
                return;
            }
        };
        let meta = SnapshotMeta {
            index,
            term,
            conf_state: self.conf_state.clone(),
        };
        self.applied_bytes = 0;
        let mut writer = match self.wal.snapshot_writer(&to_wal_meta(&meta)) {
            Ok(w) => w,
            Err(e) => fatal("starting a snapshot file", e),
        };
        let view = self.kv.view();
        let (tx, rx) = bounded(1);
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let r = view
                    .write_snapshot(&mut writer)
                    .map_err(|e| e.to_string())
                    .and_then(|_| writer.seal().map_err(|e| e.to_string()));
                let _ = tx.send(r.map(|_| writer));
            });
        if let Err(e) = spawned {
            warn!("cannot start the snapshot thread: {e}");
            return;
        }
        self.snapshotting = Some(Snapshotting { meta, done: rx });
    }

    /// Commits a snapshot the background thread has written: records it in
    /// the WAL, compacts the in-memory log behind it (keeping a tail for slow
    /// followers) and releases WAL segments.
    fn finish_snapshot(&mut self, written: Result<wal::SnapshotWriter, String>) {
        let Some(s) = self.snapshotting.take() else {
            return;
        };
        let writer = match written {
            Ok(w) => w,
            Err(e) => fatal("writing a snapshot", e),
        };
        let index = s.meta.index;
        if index <= self.snapshot_index {
            // A snapshot from the leader overtook this one; drop it.
            drop(writer);
        } else {
            let t0 = Instant::now();
            if let Err(e) = self.wal.commit_snapshot(writer) {
                fatal("saving a snapshot", e);
            }
            let t1 = Instant::now();
            crate::debug::crash_point("before_segment_release");
            if let Err(e) =
                self.storage
                    .create_snapshot(index, s.meta.conf_state.clone(), Vec::new())
            {
                warn!("in-memory snapshot at {index}: {e}");
            }
            let compact_to = index.saturating_sub(KEEP_TAIL);
            if compact_to >= self.storage.first_index() {
                if let Err(e) = self.storage.compact(compact_to) {
                    warn!("compacting the in-memory log to {compact_to}: {e}");
                }
            }
            self.prev_snapshot_index = self.snapshot_index;
            self.snapshot_index = index;
            self.publish_snapshot();
            let t2 = Instant::now();
            // Keep the entries after the previous snapshot, so that recovery
            // can fall back to it should the newest snapshot file be damaged.
            if let Err(e) = self
                .wal
                .release_to(self.prev_snapshot_index.min(compact_to))
            {
                warn!("releasing WAL segments: {e}");
            }
            let t3 = Instant::now();
            info!("snapshot at {index} ({} keys)", self.kv.len());
            if t3 - t0 > SLOW_STEP {
                warn!(
                    "committing the snapshot at {index} held the Ready loop for {:?} \
                     (commit {:?}, compact {:?}, release {:?})",
                    t3 - t0,
                    t1 - t0,
                    t2 - t1,
                    t3 - t2
                );
            }
        }
        let reply = Reply::OkIndex(self.snapshot_index);
        for w in self.snapshot_waiters.drain(..) {
            w.send(reply.clone());
        }
        // Requests that came while this one was written want a newer one.
        if self.snapshot_due() {
            self.start_snapshot();
        }
    }
}

/// A snapshot being written on a background thread.
struct Snapshotting {
    meta: SnapshotMeta,
    done: Receiver<Result<wal::SnapshotWriter, String>>,
}
