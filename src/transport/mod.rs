//! Peer-to-peer transport: one admission thread for every inbound
//! connection not yet admitted, a reader thread per admitted one, and a
//! sender thread per peer, all plain OS threads.
//!
//! ```text
//!            ready thread ──send()──┬──────────── direct write ───────────► TCP ─► peer
//!                                   └► [bounded queue] ─► sender thread ─► TCP/TLS ─► peer
//!  peer ─► TCP/TLS ─► admission thread ─(welcome)─► reader thread ─► inbound channel ─► node thread
//! ```
//!
//! Each connection carries messages one way, from dialer to listener. It
//! opens with a handshake naming both ids and the dialer's cluster ID,
//! which the listener answers with a verdict (`codec.rs` has the frames,
//! `listener.rs` who is let in, `admission.rs` the seats and deadlines that
//! keep slow dialers from crowding out the rest). With peer TLS on, the
//! handshake runs inside mutual TLS and the dialer's certificate must name
//! the id it claims (`tls.rs`). Identity is never the address.
//!
//! Sending never blocks the ready thread. When a plain TCP connection is up
//! and nothing is queued for the peer, the ready thread writes the Ready's
//! messages to the socket itself, in one non-blocking write: no thread is
//! woken, which matters because a wake-up costs more CPU here than the
//! write. Whatever does not fit into the socket buffer goes to the sender
//! thread, tagged with its connection, and everything after it queues
//! behind it, so messages stay in order. Otherwise (TLS, a snapshot, no
//! connection, a busy sender) the messages queue: a full queue drops the
//! message (Raft retransmits), and a sender that cannot reach its peer drops
//! what it has, reports the peer unreachable, and redials with exponential
//! backoff. A sender writes every queued message into one buffer and
//! flushes once per batch, with `TCP_NODELAY`, so a burst costs one syscall.
//!
//! Snapshots never pass through memory whole: a sender streams the node's
//! current snapshot file in 1 MiB chunks (whatever snapshot the core asked
//! for, the newest one on disk is at least as good), and a reader writes the
//! chunks to a file of the snapshot [`Inbox`], checks the CRC, and hands the
//! core a snapshot message whose data is the inbox ticket for that file.

pub mod admission;
pub mod codec;
mod listener;
mod probe;

pub use probe::probe;

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use log::{debug, info, warn};

use crate::bell::Waking;
use crate::datadir::from_wal_meta;
use crate::metrics::{NetworkMetrics, PeerMetrics};
use crate::raft::{Message, MessageBody, NodeId};
use crate::shared::Shared;
use crate::snapshots::Inbox;
use crate::tls::{PeerStream, PeerTls};
use codec::{FrameError, Verdict};

/// Messages waiting for one peer; beyond this they are dropped.
const QUEUE: usize = 4096;
/// Longest wait for a TCP connect or a blocked write.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a dialer waits for its TLS handshake and its verdict (the
/// listener gives it [`admission::DEADLINE`]).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What the transport tells the node about delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Messages to this peer were dropped: it is unreachable.
    Unreachable(NodeId),
    /// A snapshot to this peer was written out (true) or lost (false).
    Snapshot(NodeId, bool),
}

/// How the transport is set up.
pub struct Config {
    pub id: NodeId,
    /// Mutual TLS between peers, or plain TCP when `None`.
    pub tls: Option<Arc<PeerTls>>,
    /// The ids named in `--peers`: always let in (unless removed), so that a
    /// node whose configuration has not arrived yet can hear its cluster.
    pub listed: BTreeSet<NodeId>,
    /// Where the traffic of each peer is counted.
    pub metrics: Arc<NetworkMetrics>,
}

struct Peer {
    queue: Sender<Outgoing>,
    addr: Arc<Mutex<String>>,
    link: Arc<Link>,
    metrics: Arc<PeerMetrics>,
}

/// What the sender thread of a peer is handed.
enum Outgoing {
    Message(Message),
    /// The end of a direct write that did not fit into the socket buffer of
    /// connection `generation`; it belongs to that connection only.
    Rest {
        generation: u64,
        bytes: Vec<u8>,
    },
}

/// One peer's connection, shared by the ready thread (direct writes) and
/// the peer's sender thread (everything else).
#[derive(Default)]
struct Link {
    state: Mutex<LinkState>,
    /// Items handed to the sender thread and not yet written or dropped. The
    /// sender lowers it under the `state` lock once a batch is out, so a
    /// direct write that sees zero under the lock comes after all of them.
    queued: AtomicUsize,
}

#[derive(Default)]
struct LinkState {
    conn: Option<PeerStream>,
    /// Counts connections, so that the rest of a direct write never goes
    /// out on a later connection, in the middle of nothing.
    generation: u64,
    /// The ready thread's encoding buffer.
    scratch: Vec<u8>,
}

/// The transport of one node. Cheap to share: all methods take `&self`.
pub struct Transport {
    id: NodeId,
    tls: Option<Arc<PeerTls>>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    reports: Waking<Report>,
    /// Where the current snapshot file and the cluster ID are published.
    shared: Arc<Shared>,
    /// Nodes we were asked to message but have no address for (warned
    /// once each, for the first [`MAX_UNKNOWN`]).
    unknown: Mutex<std::collections::HashSet<NodeId>>,
    metrics: Arc<NetworkMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport {
    /// Starts accepting peers on `listener`; inbound messages go to
    /// `inbound`, received snapshot files to `inbox`.
    pub fn start(
        cfg: Config,
        listener: TcpListener,
        inbound: Waking<Message>,
        reports: Waking<Report>,
        shared: Arc<Shared>,
        inbox: Arc<Inbox>,
    ) -> io::Result<Arc<Transport>> {
        info!(
            "listening for peers on {} ({})",
            listener.local_addr()?,
            if cfg.tls.is_some() {
                "mutual TLS"
            } else {
                "plain TCP, no peer authentication"
            }
        );
        let t = Arc::new(Transport {
            id: cfg.id,
            tls: cfg.tls.clone(),
            peers: Mutex::new(HashMap::new()),
            reports,
            shared: shared.clone(),
            unknown: Mutex::default(),
            metrics: cfg.metrics.clone(),
        });
        let ctx = Arc::new(listener::Context {
            me: cfg.id,
            tls: cfg.tls,
            listed: cfg.listed,
            inbound,
            inbox,
            shared,
            metrics: cfg.metrics,
            seats: Default::default(),
        });
        thread::Builder::new()
            .name("peer-listener".into())
            .spawn(move || listener::admission_loop(listener, ctx))?;
        Ok(t)
    }

    /// Starts (or re-addresses) the sender for peer `id`.
    pub fn add_peer(&self, id: NodeId, addr: &str) {
        if id == self.id {
            return;
        }
        let mut peers = lock(&self.peers);
        if let Some(p) = peers.get(&id) {
            *lock(&p.addr) = addr.to_string();
            return;
        }
        let (tx, rx) = bounded(QUEUE);
        let addr = Arc::new(Mutex::new(addr.to_string()));
        let link = Arc::new(Link::default());
        let metrics = self.metrics.peer(id);
        let sender = PeerSender {
            metrics: metrics.clone(),
            me: self.id,
            to: id,
            addr: addr.clone(),
            tls: self.tls.clone(),
            reports: self.reports.clone(),
            shared: self.shared.clone(),
            link: link.clone(),
        };
        let spawned = thread::Builder::new()
            .name(format!("peer-send-{id}"))
            .spawn(move || sender.run(rx));
        match spawned {
            Ok(_) => {
                peers.insert(
                    id,
                    Peer {
                        queue: tx,
                        addr,
                        link,
                        metrics,
                    },
                );
            }
            Err(e) => warn!("cannot start sender thread for peer {id}: {e}"),
        }
    }

    /// Stops sending to `id` (its thread ends when its queue is dropped)
    /// and drops its metrics series.
    pub fn remove_peer(&self, id: NodeId) {
        lock(&self.peers).remove(&id);
        self.metrics.remove(id);
    }

    pub fn has_peer(&self, id: NodeId) -> bool {
        lock(&self.peers).contains_key(&id)
    }

    /// Sends messages to their peers without blocking: written directly
    /// when the peer's connection allows it, queued otherwise. Only the
    /// ready thread calls this, so each peer's messages keep their order.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = lock(&self.peers);
        for (to, group) in by_peer(msgs) {
            let Some(p) = peers.get(&to) else {
                if remember_unknown(&mut lock(&self.unknown), to) {
                    warn!(
                        "no address for node {to}: cannot answer it; give its address in --peers \
                         (a joining node needs every member's address)"
                    );
                }
                continue;
            };
            let group = match self.write_directly(to, p, group) {
                Ok(()) => continue,
                Err(group) => group,
            };
            for m in group {
                self.enqueue(to, p, Outgoing::Message(m));
            }
        }
    }

    /// Writes `msgs` to `to`'s socket from this thread, if the connection is
    /// plain TCP, up, not in use, and nothing is queued before them. Hands
    /// the messages back when it cannot.
    fn write_directly(&self, to: NodeId, p: &Peer, msgs: Vec<Message>) -> Result<(), Vec<Message>> {
        if p.link.queued.load(Ordering::Acquire) != 0
            || msgs
                .iter()
                .any(|m| matches!(m.body, MessageBody::Snapshot { .. }))
        {
            return Err(msgs);
        }
        let Ok(mut guard) = p.link.state.try_lock() else {
            return Err(msgs); // the sender is writing or dialling
        };
        let st = &mut *guard;
        let Some(PeerStream::Plain(sock)) = st.conn.as_mut() else {
            return Err(msgs);
        };
        if p.link.queued.load(Ordering::Acquire) != 0 {
            return Err(msgs);
        }
        st.scratch.clear();
        let mut heartbeat = false;
        for m in &msgs {
            heartbeat |= matches!(m.body, MessageBody::Heartbeat { .. });
            codec::encode_message(&mut st.scratch, m);
        }
        if heartbeat {
            p.metrics.heartbeat_sent();
        }
        match write_some(sock, &st.scratch) {
            Ok(n) if n == st.scratch.len() => p.metrics.sent(n as u64),
            Ok(n) => {
                p.metrics.sent(n as u64);
                let rest = Outgoing::Rest {
                    generation: st.generation,
                    bytes: st.scratch[n..].to_vec(),
                };
                self.enqueue(to, p, rest);
            }
            Err(e) => {
                warn!("lost connection to peer {to}: {e}");
                st.conn = None;
                p.metrics.failed(msgs.len() as u64);
                p.metrics.heartbeats_lost();
                let _ = self.reports.try_send(Report::Unreachable(to));
            }
        }
        if st.scratch.capacity() > (8 << 20) {
            st.scratch = Vec::new(); // don't keep a huge buffer around
        }
        Ok(())
    }

    fn enqueue(&self, to: NodeId, p: &Peer, item: Outgoing) {
        p.link.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = p.queue.try_send(item) {
            p.link.queued.fetch_sub(1, Ordering::AcqRel);
            p.metrics.failed(1);
            let (TrySendError::Full(item) | TrySendError::Disconnected(item)) = e;
            let report = match item {
                Outgoing::Message(m) => {
                    debug!("queue to node {to} is full; dropping {}", m.body.name());
                    match m.body {
                        MessageBody::Snapshot { .. } => Report::Snapshot(to, false),
                        _ => Report::Unreachable(to),
                    }
                }
                Outgoing::Rest { .. } => Report::Unreachable(to),
            };
            let _ = self.reports.try_send(report);
        }
    }
}

/// Ids without an address remembered at most: the core answers strangers'
/// term queries, so these ids are chosen by whoever dials.
const MAX_UNKNOWN: usize = 64;

/// Whether to warn about `id`, which has no address: once per id, and
/// once a second for any id past the first [`MAX_UNKNOWN`].
fn remember_unknown(unknown: &mut std::collections::HashSet<NodeId>, id: NodeId) -> bool {
    if unknown.contains(&id) {
        return false;
    }
    if unknown.len() < MAX_UNKNOWN {
        unknown.insert(id);
        return true;
    }
    crate::ratelimit::allow("no-address").is_some()
}

/// Groups messages by destination, keeping each peer's order.
fn by_peer(msgs: Vec<Message>) -> Vec<(NodeId, Vec<Message>)> {
    let mut groups: Vec<(NodeId, Vec<Message>)> = Vec::new();
    for m in msgs {
        match groups.iter_mut().find(|(to, _)| *to == m.to) {
            Some((_, g)) => g.push(m),
            None => groups.push((m.to, vec![m])),
        }
    }
    groups
}

/// Writes as much of `buf` as the non-blocking socket takes now.
fn write_some(sock: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match sock.write(&buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Runs `f` on `stream` in blocking mode: a plain connection is otherwise
/// left non-blocking for the ready thread's direct writes.
fn blocking<T>(
    stream: &mut PeerStream,
    f: impl FnOnce(&mut PeerStream) -> io::Result<T>,
) -> io::Result<T> {
    let plain = matches!(stream, PeerStream::Plain(_));
    if plain {
        stream.tcp().set_nonblocking(false)?;
    }
    let r = f(stream)?;
    if plain {
        stream.tcp().set_nonblocking(true)?;
    }
    Ok(r)
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        )
    })
}

/// Why a dial did not give a connection.
enum DialError {
    Io(io::Error),
    /// The peer answered the handshake with a refusal.
    Refused(Verdict),
}

impl From<io::Error> for DialError {
    fn from(e: io::Error) -> Self {
        DialError::Io(e)
    }
}

/// The sender thread of one peer.
struct PeerSender {
    me: NodeId,
    to: NodeId,
    addr: Arc<Mutex<String>>,
    tls: Option<Arc<PeerTls>>,
    reports: Waking<Report>,
    shared: Arc<Shared>,
    link: Arc<Link>,
    metrics: Arc<PeerMetrics>,
}

impl PeerSender {
    /// Connects, authenticates, and waits for the listener's verdict.
    fn dial(&self, addr: &str) -> Result<PeerStream, DialError> {
        let sock = TcpStream::connect_timeout(&resolve(addr)?, IO_TIMEOUT)?;
        sock.set_nodelay(true)?;
        let mut stream = match &self.tls {
            Some(tls) => crate::tls::dial_peer(sock, tls, self.to, HANDSHAKE_TIMEOUT)?,
            None => PeerStream::Plain(sock),
        };
        stream.tcp().set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.tcp().set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut hello = Vec::new();
        let cluster_id = self.shared.membership().cluster_id;
        codec::encode_handshake(&mut hello, self.me, self.to, cluster_id);
        stream.write_all(&hello)?;
        stream.flush()?;
        let mut buf = Vec::new();
        let frame = codec::read_frame(&mut stream, &mut buf, &[codec::KIND_VERDICT]).map_err(
            |e| match e {
                FrameError::Io(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
            },
        )?;
        let Some(frame) = frame else {
            return Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its verdict").into(),
            );
        };
        let (verdict, _) = codec::decode_verdict(frame.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if verdict != Verdict::Welcome {
            return Err(DialError::Refused(verdict));
        }
        stream.tcp().set_read_timeout(None)?;
        stream.tcp().set_write_timeout(Some(IO_TIMEOUT))?;
        if let PeerStream::Plain(sock) = &stream {
            sock.set_nonblocking(true)?; // for the ready thread's direct writes
        }
        Ok(stream)
    }

    fn run(self, rx: Receiver<Outgoing>) {
        let to = self.to;
        let mut backoff = Duration::from_millis(20);
        let mut next_dial = Instant::now();
        let mut buf = Vec::with_capacity(64 << 10);
        let mut batch = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let items = batch.len();
            let mut guard = lock(&self.link.state);
            let st = &mut *guard;
            if st.conn.is_none() && Instant::now() >= next_dial {
                let a = lock(&self.addr).clone();
                match self.dial(&a) {
                    Ok(s) => {
                        info!("connected to peer {to} at {a}");
                        st.conn = Some(s);
                        st.generation += 1;
                        backoff = Duration::from_millis(20);
                    }
                    Err(e) => {
                        match e {
                            DialError::Io(e) => debug!("cannot reach peer {to} at {a}: {e}"),
                            DialError::Refused(v) => {
                                crate::warn_every!(
                                    format!("refused-by-{to}-{v:?}"),
                                    "peer {to} at {a} refused this node: {v}"
                                );
                                if v == Verdict::Removed {
                                    self.shared.set_removed();
                                }
                            }
                        }
                        next_dial = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            let mut unreachable = false;
            let mut heartbeat = false;
            buf.clear();
            let mut in_buf = 0u64;
            for item in batch.drain(..) {
                let m = match item {
                    Outgoing::Message(m) => m,
                    Outgoing::Rest { generation, bytes } => {
                        // A direct write's end: only on its own connection.
                        if generation == st.generation && st.conn.is_some() {
                            buf.extend_from_slice(&bytes);
                        }
                        continue;
                    }
                };
                let MessageBody::Snapshot { .. } = m.body else {
                    heartbeat |= matches!(m.body, MessageBody::Heartbeat { .. });
                    codec::encode_message(&mut buf, &m);
                    in_buf += 1;
                    continue;
                };
                // Flush what came before, then stream the snapshot.
                let ok = match st.conn.as_mut() {
                    Some(stream) => {
                        let r = blocking(stream, |s| match s.write_all(&buf) {
                            Ok(()) => {
                                self.metrics.sent(buf.len() as u64);
                                stream_snapshot(s, &m, &self.shared)
                            }
                            Err(e) => {
                                self.metrics.failed(in_buf);
                                Err(e)
                            }
                        });
                        buf.clear();
                        in_buf = 0;
                        match r {
                            Ok(bytes) => {
                                self.metrics.sent(bytes);
                                info!("sent snapshot to peer {to} ({bytes} bytes)");
                                true
                            }
                            Err(e) => {
                                warn!("sending a snapshot to peer {to} failed: {e}");
                                st.conn = None;
                                self.metrics.heartbeats_lost();
                                false
                            }
                        }
                    }
                    None => false,
                };
                if !ok {
                    self.metrics.failed(1);
                }
                let _ = self.reports.try_send(Report::Snapshot(to, ok));
            }
            if !buf.is_empty() {
                match st.conn.as_mut() {
                    Some(stream) => {
                        if heartbeat {
                            self.metrics.heartbeat_sent();
                        }
                        match blocking(stream, |s| {
                            s.write_all(&buf)?;
                            s.flush()
                        }) {
                            Ok(()) => self.metrics.sent(buf.len() as u64),
                            Err(e) => {
                                warn!("lost connection to peer {to}: {e}");
                                st.conn = None;
                                unreachable = true;
                            }
                        }
                    }
                    None => unreachable = true,
                }
            }
            // Under the lock: a direct write that sees zero comes after these.
            self.link.queued.fetch_sub(items, Ordering::AcqRel);
            drop(guard);
            if unreachable {
                self.metrics.failed(in_buf);
                self.metrics.heartbeats_lost();
                let _ = self.reports.try_send(Report::Unreachable(to));
            }
            if buf.capacity() > (8 << 20) {
                buf = Vec::with_capacity(64 << 10); // don't keep a huge buffer around
            }
        }
    }
}

/// Streams the node's current snapshot file to `stream`: header, chunks,
/// end. Returns the number of data bytes sent.
fn stream_snapshot(stream: &mut PeerStream, m: &Message, shared: &Shared) -> io::Result<u64> {
    let path = shared
        .snapshot_file()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no snapshot file"))?;
    let mut r = wal::open_snapshot_file(&path).map_err(io::Error::other)?;
    let meta = from_wal_meta(r.meta());
    let total = r.len();
    let mut head = Vec::new();
    codec::encode_snapshot_header(&mut head, m.from, m.to, m.term, &meta, total);
    stream.write_all(&head)?;
    let mut chunk = vec![0u8; codec::CHUNK];
    let mut hasher = crc32fast::Hasher::new();
    let mut sent = 0u64;
    while sent < total {
        let want = ((total - sent) as usize).min(chunk.len());
        r.read_exact(&mut chunk[..want])?;
        hasher.update(&chunk[..want]);
        stream.write_all(&codec::chunk_frame_header(want))?;
        stream.write_all(&chunk[..want])?;
        sent += want as u64;
    }
    // Reading to the end makes the reader verify the file's own CRC.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    let mut end = Vec::new();
    codec::encode_snapshot_end(&mut end, hasher.finalize());
    stream.write_all(&end)?;
    stream.flush()?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_without_an_address_are_remembered_up_to_a_bound() {
        let mut unknown = std::collections::HashSet::new();
        assert!(remember_unknown(&mut unknown, 1000), "the first time warns");
        assert!(!remember_unknown(&mut unknown, 1000), "the second does not");
        for id in 1001..5000 {
            remember_unknown(&mut unknown, id);
        }
        assert_eq!(unknown.len(), MAX_UNKNOWN, "strangers' ids fill no table");
    }
}
