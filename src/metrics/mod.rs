//! Metrics: counters the node's threads bump as they work, and their
//! rendering in the Prometheus text format for `--metrics-addr`.
//!
//! The registry is split by the thread that writes each part, and each
//! part is handed to its writer as a typed handle:
//!
//! | part | written by |
//! | --- | --- |
//! | [`ServerMetrics`] | the node thread (leadership), the ready thread (term, commit, applied) |
//! | [`DiskMetrics`] | the ready thread (WAL writes and fsyncs), the snapshot code |
//! | [`NetworkMetrics`] | the transport's sender and reader threads, one [`PeerMetrics`] per peer |
//! | [`ClientMetrics`] | the client I/O thread |
//!
//! Everything on a hot path is a relaxed atomic add or store, and the
//! histograms are fixed arrays of atomic buckets ([`histogram`]): no lock
//! is taken per request, per message or per fsync. The one lock,
//! [`NetworkMetrics`]' map of peers, is taken when a sender or a reader
//! thread starts and at scrape. Values that are cheap to read where they
//! live (whether a leader is known, requests pending, bytes on disk) are
//! not copied into the registry but read at scrape ([`Scraped`]).
//!
//! Names follow etcd's where the meaning is the same (`etcd_server_*`
//! becomes `raftnode_server_*`), so dashboards and alerts translate; the
//! README has the table of every metric. [`http`] serves them.
//!
//! What this module does not do: per-key or per-client labels (label sets
//! are fixed: commands, reply codes, peer ids), or any metric that costs a
//! syscall on the hot path.

pub mod fsync_log;
pub mod histogram;
pub mod http;
pub mod text;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::{ErrorCode, Reply, Request};
use crate::raft::NodeId;
use histogram::{Histogram, Unit};
use text::Kind;

/// The whole registry.
pub struct Metrics {
    pub server: Arc<ServerMetrics>,
    pub disk: Arc<DiskMetrics>,
    pub network: Arc<NetworkMetrics>,
    pub clients: Arc<ClientMetrics>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// What the scrape reads from where it lives rather than from counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scraped {
    pub has_leader: bool,
    /// Writes of this node's clients waiting for their entry to apply.
    pub proposals_pending: u64,
    /// Bytes of WAL segment files (and the preallocated next one).
    pub wal_bytes: u64,
    /// Bytes of snapshot files.
    pub snapshot_bytes: u64,
}

impl Scraped {
    /// Reads the sizes of the WAL and snapshot files under `data_dir`.
    pub fn disk_usage(&mut self, data_dir: &Path) {
        let wal = data_dir.join("wal");
        self.wal_bytes = dir_bytes(&wal, |n| n.ends_with(".wal") || n.ends_with(".wal.tmp"));
        self.snapshot_bytes = dir_bytes(&wal.join("snap"), |_| true);
    }
}

/// Sum of the sizes of the files in `dir` whose name passes `keep`; 0 for
/// what cannot be read.
fn dir_bytes(dir: &Path, keep: impl Fn(&str) -> bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            server: Arc::new(ServerMetrics::default()),
            disk: Arc::new(DiskMetrics::default()),
            network: Arc::new(NetworkMetrics::default()),
            clients: Arc::new(ClientMetrics::default()),
        }
    }

    /// The whole exposition, in the text format 0.0.4.
    pub fn render(&self, scraped: &Scraped) -> String {
        let mut out = String::with_capacity(16 << 10);
        self.server.render(&mut out, scraped, &self.clients);
        self.disk.render(&mut out, scraped);
        self.network.render(&mut out);
        self.clients.render(&mut out);
        out
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Raft state, etcd's `etcd_server_*`.
#[derive(Default)]
pub struct ServerMetrics {
    is_leader: AtomicU64,
    leader_changes: AtomicU64,
    committed: AtomicU64,
    applied_entries: AtomicU64,
    term: AtomicU64,
    commit_index: AtomicU64,
    applied_index: AtomicU64,
}

impl ServerMetrics {
    /// The state a node starts from, not counted as committed or applied.
    pub fn recovered(&self, term: u64, commit: u64, applied: u64) {
        self.term.store(term, Ordering::Relaxed);
        self.commit_index.store(commit, Ordering::Relaxed);
        self.applied_index.store(applied, Ordering::Relaxed);
    }

    /// This node's role changed (node thread).
    pub fn set_leader(&self, is_leader: bool) {
        self.is_leader
            .store(u64::from(is_leader), Ordering::Relaxed);
    }

    /// This node saw a new leader: another node, or a new term (node thread).
    pub fn leader_changed(&self) {
        add(&self.leader_changes, 1);
    }

    /// A hard state was persisted (ready thread): the commit index's rise
    /// counts as committed entries.
    pub fn hard_state(&self, term: u64, commit: u64) {
        self.term.store(term, Ordering::Relaxed);
        let before = self.commit_index.swap(commit, Ordering::Relaxed);
        if commit > before {
            add(&self.committed, commit - before);
        }
    }

    /// An entry was applied to the state machine (ready thread).
    pub fn applied(&self, index: u64) {
        self.applied_index.store(index, Ordering::Relaxed);
        add(&self.applied_entries, 1);
    }

    /// A snapshot moved the applied index without applying entries.
    pub fn applied_snapshot(&self, index: u64) {
        self.applied_index.store(index, Ordering::Relaxed);
        let commit = &self.commit_index;
        if index > load(commit) {
            commit.store(index, Ordering::Relaxed);
        }
    }

    pub fn term(&self) -> u64 {
        load(&self.term)
    }

    fn render(&self, out: &mut String, s: &Scraped, clients: &ClientMetrics) {
        use text::single;
        let p = "raftnode_server_";
        single(
            out,
            &format!("{p}has_leader"),
            Kind::Gauge,
            "Whether a leader is known to this node (1) or not (0).",
            u64::from(s.has_leader),
        );
        single(
            out,
            &format!("{p}is_leader"),
            Kind::Gauge,
            "Whether this node is the leader (1) or not (0).",
            load(&self.is_leader),
        );
        single(out, &format!("{p}leader_changes_seen_total"), Kind::Counter,
            "Times this node saw a new leader (another node, or the same one in a new term), the first included.",
            load(&self.leader_changes));
        single(out, &format!("{p}proposals_committed_total"), Kind::Counter,
            "Log entries this node learned to be committed since it started (the rise of its commit index).",
            load(&self.committed));
        single(out, &format!("{p}proposals_applied_total"), Kind::Counter,
            "Log entries applied to the key-value store since this node started (snapshots not counted).",
            load(&self.applied_entries));
        single(out, &format!("{p}proposals_pending"), Kind::Gauge,
            "Writes and membership changes of this node's clients waiting for their entry to apply.",
            s.proposals_pending);
        single(out, &format!("{p}proposals_failed_total"), Kind::Counter,
            "Writes and membership changes of this node's clients answered with an error (timeout, leader change, no leader, ...).",
            clients.proposals_failed());
        single(
            out,
            &format!("{p}term"),
            Kind::Gauge,
            "The current term, as persisted.",
            load(&self.term),
        );
        single(
            out,
            &format!("{p}commit_index"),
            Kind::Gauge,
            "The commit index, as persisted.",
            load(&self.commit_index),
        );
        single(
            out,
            &format!("{p}applied_index"),
            Kind::Gauge,
            "The index of the last entry applied to the key-value store.",
            load(&self.applied_index),
        );
    }
}

/// The WAL and snapshots, etcd's `etcd_disk_*`.
pub struct DiskMetrics {
    fsync: Histogram,
    entries_per_fsync: Histogram,
    wal_write_bytes: AtomicU64,
    snapshot: Histogram,
}

impl Default for DiskMetrics {
    fn default() -> DiskMetrics {
        DiskMetrics {
            fsync: Histogram::new(&histogram::FAST_NS, Unit::Nanos),
            entries_per_fsync: Histogram::new(&histogram::BATCH, Unit::Count),
            wal_write_bytes: AtomicU64::new(0),
            snapshot: Histogram::new(&histogram::SLOW_NS, Unit::Nanos),
        }
    }
}

impl DiskMetrics {
    /// One `fdatasync` of the WAL that made `entries` entries durable.
    pub fn fsynced(&self, took: Duration, entries: usize) {
        self.fsync.observe_duration(took);
        self.entries_per_fsync.observe(entries as u64);
    }

    /// The WAL's count of bytes written since it was opened.
    pub fn wal_written(&self, total: u64) {
        self.wal_write_bytes.store(total, Ordering::Relaxed);
    }

    /// A snapshot this node took, from its start to its commit.
    pub fn snapshot_taken(&self, took: Duration) {
        self.snapshot.observe_duration(took);
    }

    /// `(fsyncs, entries they made durable)` so far.
    pub fn fsync_totals(&self) -> (u64, u64) {
        (self.entries_per_fsync.count(), self.entries_per_fsync.sum())
    }

    fn render(&self, out: &mut String, s: &Scraped) {
        let p = "raftnode_disk_";
        let name = format!("{p}wal_fsync_duration_seconds");
        text::family(
            out,
            &name,
            Kind::Histogram,
            "Time of one fdatasync of the WAL that made a Ready's entries and hard state durable.",
        );
        self.fsync.render(out, &name, &[]);
        let name = format!("{p}wal_entries_per_fsync");
        text::family(out, &name, Kind::Histogram,
            "Log entries made durable by one WAL fdatasync: the group commit at work (0 for a hard state alone).");
        self.entries_per_fsync.render(out, &name, &[]);
        text::single(
            out,
            &format!("{p}wal_write_bytes_total"),
            Kind::Counter,
            "Bytes of records written to the WAL since this node started.",
            load(&self.wal_write_bytes),
        );
        let name = format!("{p}snapshot_duration_seconds");
        text::family(out, &name, Kind::Histogram,
            "Time to take a snapshot, from its start to its commit in the WAL (written in the background).");
        self.snapshot.render(out, &name, &[]);
        text::single(
            out,
            &format!("{p}wal_size_bytes"),
            Kind::Gauge,
            "Bytes of WAL segment files on disk, the preallocated next segment included.",
            s.wal_bytes,
        );
        text::single(
            out,
            &format!("{p}snapshot_size_bytes"),
            Kind::Gauge,
            "Bytes of snapshot files on disk.",
            s.snapshot_bytes,
        );
    }
}

/// Per-peer traffic, etcd's `etcd_network_peer_*`.
#[derive(Default)]
pub struct NetworkMetrics {
    peers: Mutex<BTreeMap<NodeId, Arc<PeerMetrics>>>,
}

impl NetworkMetrics {
    /// The counters of peer `id`, made on first use. Only for members and
    /// `--peers` ids (the transport's `known`): a series is never removed
    /// but by [`NetworkMetrics::remove`].
    pub fn peer(&self, id: NodeId) -> Arc<PeerMetrics> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(id)
            .or_insert_with(|| Arc::new(PeerMetrics::new()))
            .clone()
    }

    /// Drops the series of peer `id` (a removed member): the series are
    /// bounded by the configuration, not by every id ever seen.
    pub fn remove(&self, id: NodeId) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.remove(&id);
    }

    fn render(&self, out: &mut String) {
        let peers: Vec<(String, Arc<PeerMetrics>)> = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, m)| (id.to_string(), m.clone()))
            .collect();
        let p = "raftnode_network_peer_";
        let counters: [(&str, &str, &str, PeerCounter); 3] = [
            ("sent_bytes_total", "to", "Bytes sent to the peer (message frames, snapshot data included).", |m| &m.sent_bytes),
            ("received_bytes_total", "from", "Bytes received from the peer.", |m| &m.received_bytes),
            ("sent_failures_total", "to",
             "Messages to the peer that were dropped: its queue was full, it could not be reached, or the write failed.",
             |m| &m.sent_failures),
        ];
        for (suffix, label, help, field) in counters {
            let name = format!("{p}{suffix}");
            text::family(out, &name, Kind::Counter, help);
            for (id, m) in &peers {
                text::sample(out, &name, &[(label, id)], &load(field(m)).to_string());
            }
        }
        let name = format!("{p}round_trip_time_seconds");
        text::family(out, &name, Kind::Histogram,
            "Time from sending a heartbeat to the peer to receiving its answer, measured by the leader; \
             it includes the peer's handling of the heartbeat.");
        for (id, m) in &peers {
            m.rtt.render(out, &name, &[("to", id)]);
        }
    }
}

/// Picks one counter of a peer.
type PeerCounter = fn(&PeerMetrics) -> &AtomicU64;

/// A heartbeat unanswered for this long is forgotten: the next answer
/// starts nothing and is not timed against it.
const HEARTBEAT_STALE: Duration = Duration::from_secs(1);

/// One peer's counters.
pub struct PeerMetrics {
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
    sent_failures: AtomicU64,
    rtt: Histogram,
    /// When the oldest unanswered heartbeat was sent, in nanoseconds since
    /// `epoch` plus one; 0 when none is outstanding.
    heartbeat_sent: AtomicU64,
    epoch: Instant,
}

impl PeerMetrics {
    fn new() -> PeerMetrics {
        PeerMetrics {
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            sent_failures: AtomicU64::new(0),
            rtt: Histogram::new(&histogram::FAST_NS, Unit::Nanos),
            heartbeat_sent: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    pub fn sent(&self, bytes: u64) {
        add(&self.sent_bytes, bytes);
    }

    pub fn received(&self, bytes: u64) {
        add(&self.received_bytes, bytes);
    }

    pub fn failed(&self, messages: u64) {
        add(&self.sent_failures, messages);
    }

    /// A heartbeat to this peer is about to be written (its sender
    /// thread). Only the oldest unanswered one is timed.
    pub fn heartbeat_sent(&self) {
        let now = self.now();
        let at = load(&self.heartbeat_sent);
        if at == 0 || now - at > HEARTBEAT_STALE.as_nanos() as u64 {
            self.heartbeat_sent.store(now, Ordering::Relaxed);
        }
    }

    /// The peer's connection was lost: its heartbeats will not be answered.
    pub fn heartbeats_lost(&self) {
        self.heartbeat_sent.store(0, Ordering::Relaxed);
    }

    /// The peer answered a heartbeat (the reader thread of its connection).
    pub fn heartbeat_answered(&self) {
        let at = self.heartbeat_sent.swap(0, Ordering::Relaxed);
        if at != 0 {
            self.rtt.observe(self.now().saturating_sub(at));
        }
    }

    pub fn sent_bytes(&self) -> u64 {
        load(&self.sent_bytes)
    }

    pub fn rtt_count(&self) -> u64 {
        self.rtt.count()
    }
}

/// The commands of the line protocol, as the `command` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Put,
    Get,
    Del,
    Cas,
    Status,
    AddNode,
    RemoveNode,
    TransferLeader,
    Snapshot,
    Ping,
    Auth,
    Incr,
    Append,
    /// `SESSION` and `SESSION <id>`.
    Session,
    /// A line that is no request (answered `ERR BAD_REQUEST`).
    Invalid,
}

const CMDS: [Cmd; 15] = [
    Cmd::Put,
    Cmd::Get,
    Cmd::Del,
    Cmd::Cas,
    Cmd::Status,
    Cmd::AddNode,
    Cmd::RemoveNode,
    Cmd::TransferLeader,
    Cmd::Snapshot,
    Cmd::Ping,
    Cmd::Auth,
    Cmd::Incr,
    Cmd::Append,
    Cmd::Session,
    Cmd::Invalid,
];

impl Cmd {
    pub fn of(req: &Request) -> Cmd {
        use crate::kv::Command;
        fn write(cmd: &Command) -> Cmd {
            match cmd {
                Command::Put { .. } => Cmd::Put,
                Command::Delete { .. } => Cmd::Del,
                Command::Cas { .. } => Cmd::Cas,
                Command::Incr { .. } => Cmd::Incr,
                Command::Append { .. } => Cmd::Append,
                // Never sent by a client; counted with the refusals.
                Command::SetClusterId { .. }
                | Command::OpenSession { .. }
                | Command::ResumeSession { .. }
                | Command::Clock { .. } => Cmd::Invalid,
                // The Redis port's writes; its requests are not counted.
                Command::PutIf { .. } | Command::PutMany { .. } | Command::DeleteMany { .. } => {
                    Cmd::Invalid
                }
                Command::Tagged { cmd, .. } => write(cmd),
            }
        }
        match req {
            Request::Write(cmd) | Request::Tagged { cmd, .. } => write(cmd),
            Request::OpenSession | Request::ResumeSession { .. } => Cmd::Session,
            Request::Get { .. } => Cmd::Get,
            Request::Status => Cmd::Status,
            Request::AddNode { .. } => Cmd::AddNode,
            Request::RemoveNode { .. } => Cmd::RemoveNode,
            Request::TransferLeader { .. } => Cmd::TransferLeader,
            Request::Snapshot => Cmd::Snapshot,
            Request::Ping => Cmd::Ping,
            Request::Auth { .. } => Cmd::Auth,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cmd::Put => "PUT",
            Cmd::Get => "GET",
            Cmd::Del => "DEL",
            Cmd::Cas => "CAS",
            Cmd::Status => "STATUS",
            Cmd::AddNode => "ADD_NODE",
            Cmd::RemoveNode => "REMOVE_NODE",
            Cmd::TransferLeader => "TRANSFER_LEADER",
            Cmd::Snapshot => "SNAPSHOT",
            Cmd::Ping => "PING",
            Cmd::Auth => "AUTH",
            Cmd::Incr => "INCR",
            Cmd::Append => "APPEND",
            Cmd::Session => "SESSION",
            Cmd::Invalid => "invalid",
        }
    }

    /// Whether the command goes through the log as a proposal.
    fn proposes(self) -> bool {
        matches!(
            self,
            Cmd::Put
                | Cmd::Del
                | Cmd::Cas
                | Cmd::Incr
                | Cmd::Append
                | Cmd::Session
                | Cmd::AddNode
                | Cmd::RemoveNode
        )
    }
}

/// Reply codes, as the `code` label names them: the reply's first word,
/// or the error code of an `ERR` reply.
const CODES: [&str; 21] = [
    "OK",
    "VALUE",
    "NOT_FOUND",
    "DELETED",
    "MISMATCH",
    "PONG",
    "STATUS",
    "BAD_REQUEST",
    "TIMEOUT",
    "NO_LEADER",
    "LEADER_CHANGED",
    "UNAVAILABLE",
    "INTERNAL",
    "NOAUTH",
    "BUSY",
    "REMOVED",
    "SESSION",
    "SESSION_EXPIRED",
    "COUNT",
    "VALUES",
    "UNCHANGED",
];

fn code_index(reply: &Reply) -> usize {
    match reply {
        Reply::Ok | Reply::OkIndex(_) => 0,
        Reply::Value(_) => 1,
        Reply::NotFound => 2,
        Reply::Deleted => 3,
        Reply::Mismatch(_) => 4,
        Reply::Pong => 5,
        Reply::Status(_) => 6,
        Reply::Session(_) => 16,
        Reply::Count(_) => 18,
        Reply::Values(_) => 19,
        Reply::Unchanged => 20,
        Reply::Error(code, _) => match code {
            ErrorCode::BadRequest => 7,
            ErrorCode::Timeout => 8,
            ErrorCode::NoLeader => 9,
            ErrorCode::LeaderChanged => 10,
            ErrorCode::Unavailable => 11,
            ErrorCode::Internal => 12,
            ErrorCode::NoAuth => 13,
            ErrorCode::Busy => 14,
            ErrorCode::Removed => 15,
            ErrorCode::SessionExpired => 17,
        },
    }
}

/// Client requests, by command and reply (the client I/O thread).
pub struct ClientMetrics {
    /// `[command][code]`.
    requests: Vec<[AtomicU64; CODES.len()]>,
    /// By command.
    latency: Vec<Histogram>,
    connections: AtomicU64,
    proposals_failed: AtomicU64,
}

impl Default for ClientMetrics {
    fn default() -> ClientMetrics {
        ClientMetrics {
            requests: CMDS
                .iter()
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            latency: CMDS
                .iter()
                .map(|_| Histogram::new(&histogram::REQUEST_NS, Unit::Nanos))
                .collect(),
            connections: AtomicU64::new(0),
            proposals_failed: AtomicU64::new(0),
        }
    }
}

impl ClientMetrics {
    /// A request's reply goes out, `took` after the request was read.
    pub fn replied(&self, cmd: Cmd, reply: &Reply, took: Duration) {
        let c = cmd as usize;
        add(&self.requests[c][code_index(reply)], 1);
        self.latency[c].observe_duration(took);
        if cmd.proposes() && matches!(reply, Reply::Error(..)) {
            add(&self.proposals_failed, 1);
        }
    }

    pub fn set_connections(&self, n: usize) {
        self.connections.store(n as u64, Ordering::Relaxed);
    }

    fn proposals_failed(&self) -> u64 {
        load(&self.proposals_failed)
    }

    /// Requests of `cmd` answered so far, whatever the reply.
    pub fn requests(&self, cmd: Cmd) -> u64 {
        self.requests[cmd as usize].iter().map(load).sum()
    }

    fn render(&self, out: &mut String) {
        let name = "raftnode_client_requests_total";
        text::family(out, name, Kind::Counter,
            "Client requests answered, by command and by reply code (the reply's first word, or the code of an ERR reply).");
        for (cmd, row) in CMDS.iter().zip(&self.requests) {
            for (code, n) in CODES.iter().zip(row) {
                let n = load(n);
                if n > 0 {
                    let labels = [("command", cmd.as_str()), ("code", *code)];
                    text::sample(out, name, &labels, &n.to_string());
                }
            }
        }
        let name = "raftnode_client_request_duration_seconds";
        text::family(out, name, Kind::Histogram,
            "Time from reading a client request to writing its reply into the connection's buffer, by command.");
        for (cmd, h) in CMDS.iter().zip(&self.latency) {
            if h.count() > 0 {
                h.render(out, name, &[("command", cmd.as_str())]);
            }
        }
        text::single(
            out,
            "raftnode_client_connections",
            Kind::Gauge,
            "Open client connections.",
            load(&self.connections),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse;

    #[test]
    fn a_removed_peer_leaves_no_series_behind() {
        let m = Metrics::new();
        m.network.peer(2).sent(10);
        m.network.peer(3).received(20);
        m.network.remove(3);
        let text = m.render(&Scraped::default());
        assert!(text.contains("raftnode_network_peer_sent_bytes_total{to=\"2\"} 10"));
        assert!(
            !text.contains("\"3\""),
            "node 3's series outlived its removal"
        );
    }

    #[test]
    fn every_command_maps_to_its_label() {
        for (line, label) in [
            ("PUT k v", "PUT"),
            ("GET k", "GET"),
            ("DEL k", "DEL"),
            ("CAS k a b", "CAS"),
            ("STATUS", "STATUS"),
            ("PING", "PING"),
            ("SNAPSHOT", "SNAPSHOT"),
            ("REMOVE_NODE 2", "REMOVE_NODE"),
            ("TRANSFER_LEADER 2", "TRANSFER_LEADER"),
            ("ADD_NODE 4 127.0.0.1:7004", "ADD_NODE"),
            ("AUTH t", "AUTH"),
        ] {
            let req = parse(line.as_bytes()).unwrap();
            assert_eq!(Cmd::of(&req).as_str(), label, "{line}");
        }
        for (i, c) in CMDS.iter().enumerate() {
            assert_eq!(*c as usize, i, "CMDS is in declaration order");
        }
    }

    #[test]
    fn replies_count_by_command_and_code_and_failed_writes_count_as_failed_proposals() {
        let m = Metrics::new();
        let d = Duration::from_micros(300);
        m.clients.replied(Cmd::Put, &Reply::Ok, d);
        m.clients
            .replied(Cmd::Put, &Reply::error(ErrorCode::Timeout, "t"), d);
        m.clients
            .replied(Cmd::Get, &Reply::error(ErrorCode::NoLeader, "n"), d);
        m.clients.replied(Cmd::Get, &Reply::NotFound, d);
        let out = m.render(&Scraped::default());
        assert!(out.contains("raftnode_client_requests_total{command=\"PUT\",code=\"OK\"} 1\n"));
        assert!(
            out.contains("raftnode_client_requests_total{command=\"PUT\",code=\"TIMEOUT\"} 1\n")
        );
        assert!(
            out.contains("raftnode_client_requests_total{command=\"GET\",code=\"NO_LEADER\"} 1\n")
        );
        assert!(
            out.contains("raftnode_client_requests_total{command=\"GET\",code=\"NOT_FOUND\"} 1\n")
        );
        assert!(
            !out.contains("command=\"DEL\""),
            "no series for a command never seen"
        );
        // A failed read is no failed proposal.
        assert!(out.contains("raftnode_server_proposals_failed_total 1\n"));
        assert!(out.contains(
            "raftnode_client_request_duration_seconds_bucket{command=\"PUT\",le=\"0.0004\"} 2\n"
        ));
        assert!(out.contains("raftnode_client_request_duration_seconds_count{command=\"GET\"} 2\n"));
        assert_eq!(m.clients.requests(Cmd::Put), 2);
    }

    #[test]
    fn commit_index_rises_count_as_committed_entries() {
        let s = ServerMetrics::default();
        s.recovered(3, 100, 90);
        s.hard_state(3, 100);
        assert_eq!(load(&s.committed), 0, "the recovered state is not counted");
        s.hard_state(4, 105);
        s.hard_state(4, 105);
        s.hard_state(4, 107);
        assert_eq!(load(&s.committed), 7);
        assert_eq!(s.term(), 4);
        s.applied(91);
        s.applied(92);
        assert_eq!(load(&s.applied_entries), 2);
        assert_eq!(load(&s.applied_index), 92);
    }

    #[test]
    fn heartbeats_are_timed_from_the_oldest_unanswered_one() {
        let p = PeerMetrics::new();
        p.heartbeat_answered();
        assert_eq!(
            p.rtt_count(),
            0,
            "an answer to nothing timed is not counted"
        );
        p.heartbeat_sent();
        p.heartbeat_sent();
        p.heartbeat_answered();
        p.heartbeat_answered();
        assert_eq!(p.rtt_count(), 1);
        p.heartbeat_sent();
        p.heartbeats_lost();
        p.heartbeat_answered();
        assert_eq!(p.rtt_count(), 1, "a lost connection forgets its heartbeat");
    }

    #[test]
    fn every_family_has_help_and_type_and_every_sample_a_family() {
        let m = Metrics::new();
        m.network.peer(2).sent(10);
        m.network.peer(3).heartbeat_sent();
        m.network.peer(3).heartbeat_answered();
        m.disk.fsynced(Duration::from_millis(2), 5);
        m.clients
            .replied(Cmd::Ping, &Reply::Pong, Duration::from_micros(5));
        let out = m.render(&Scraped {
            has_leader: true,
            proposals_pending: 4,
            wal_bytes: 1 << 20,
            snapshot_bytes: 0,
        });
        let mut families: Vec<&str> = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                families.push(rest.split(' ').next().unwrap());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert_eq!(rest.split(' ').next(), families.last().copied(), "{line}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let fam = families.last().unwrap();
                let ok = name == *fam
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{fam}{s}"));
                assert!(ok, "{line} outside its family {fam}");
            }
        }
        assert_eq!(families.len(), 23, "{families:?}");
        let mut sorted = families.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), families.len(), "a family appears twice");
        assert!(out.contains("raftnode_server_has_leader 1\n"));
        assert!(out.contains("raftnode_server_proposals_pending 4\n"));
        assert!(out.contains("raftnode_network_peer_sent_bytes_total{to=\"2\"} 10\n"));
        assert!(out.contains("raftnode_network_peer_round_trip_time_seconds_count{to=\"3\"} 1\n"));
        assert!(out.contains("raftnode_disk_wal_entries_per_fsync_bucket{le=\"4\"} 0\n"));
        assert!(out.contains("raftnode_disk_wal_entries_per_fsync_bucket{le=\"8\"} 1\n"));
        assert!(out.contains("raftnode_disk_wal_fsync_duration_seconds_sum 0.002\n"));
        assert!(out.ends_with('\n'));
    }
}
