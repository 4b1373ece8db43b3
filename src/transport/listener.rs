//! The listening side of the transport: who is let in, and reading what
//! they send.
//!
//! Every byte from the network is hostile until the sender is known:
//! - at most [`MAX_CONNECTIONS`] inbound peer connections at a time, and at
//!   most [`MAX_UNAUTHENTICATED`] of them still authenticating;
//! - authentication (TLS if configured, then the handshake frame of at most
//!   [`codec::MAX_HANDSHAKE`] bytes) must finish within the handshake
//!   timeout;
//! - then the dialer is judged ([`judge`]) and told the verdict; only a
//!   welcome keeps the connection open;
//! - afterwards each frame kind has its own size limit, a message must name
//!   the connection's dialer as sender and this node as receiver, a
//!   snapshot is taken only from the leader this node follows, within its
//!   announced size and the free disk space, and a dialer that is removed
//!   meanwhile is cut off.
//!
//! Refusals are logged at most once a second per condition.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info};

use super::codec::{
    self, read_frame, DecodeError, FrameError, ProbeReply, SnapshotHeader, Verdict,
};
use super::HANDSHAKE_TIMEOUT;
use crate::bell::Waking;
use crate::metrics::{NetworkMetrics, PeerMetrics};
use crate::raft::{Message, MessageBody, NodeId};
use crate::shared::{Membership, Shared};
use crate::snapshots::{Inbox, ReceivedSnapshot};
use crate::tls::{PeerStream, PeerTls};

/// Inbound peer connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Inbound peer connections still authenticating, at most.
pub const MAX_UNAUTHENTICATED: usize = 16;
/// Connections one member may hold open at once (it needs one).
pub const MAX_PER_PEER: usize = 4;
/// Connections, all together, of ids this node does not know as members
/// but let in because they present the cluster ID (members added after
/// this node's configuration).
pub const MAX_NEWCOMERS: usize = 8;
/// Disk space a received snapshot must leave free.
const DISK_RESERVE: u64 = 64 << 20;

/// What the accept loop and the readers share.
pub struct Context {
    pub me: NodeId,
    pub tls: Option<Arc<PeerTls>>,
    pub listed: BTreeSet<NodeId>,
    pub inbound: Waking<Message>,
    pub inbox: Arc<Inbox>,
    pub shared: Arc<Shared>,
    pub open: Counts,
    pub metrics: Arc<NetworkMetrics>,
}

/// Inbound connections open, and those of them still authenticating.
#[derive(Default)]
pub struct Counts {
    open: AtomicUsize,
    unauthenticated: AtomicUsize,
    /// Open connections per authenticated id, and of newcomers together.
    per_peer: std::sync::Mutex<std::collections::HashMap<NodeId, usize>>,
    newcomers: AtomicUsize,
}

/// One authenticated connection's share of [`Counts`], given back on drop.
struct PeerSlot<'a> {
    counts: &'a Counts,
    id: NodeId,
    newcomer: Option<Slot<'a>>,
}

impl<'a> PeerSlot<'a> {
    /// Takes a slot for `id`, within [`MAX_PER_PEER`] (and [`MAX_NEWCOMERS`]
    /// for an id that is not a known member).
    fn take(counts: &'a Counts, id: NodeId, known: bool) -> Option<PeerSlot<'a>> {
        let newcomer = match known {
            true => None,
            false => Some(Slot::take(&counts.newcomers, MAX_NEWCOMERS)?),
        };
        let mut per = counts.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(id).or_default();
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts,
            id,
            newcomer,
        })
    }
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut per = self
            .counts
            .per_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.id);
            }
        }
        drop(self.newcomer.take());
    }
}

/// Holds one unit of a counter while it lives.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(counter: &'a AtomicUsize, max: usize) -> Option<Slot<'a>> {
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(counter))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn accept_loop(listener: TcpListener, ctx: Arc<Context>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                crate::warn_every!("peer-accept", "accepting a peer connection failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let ctx2 = ctx.clone();
        let spawned = thread::Builder::new()
            .name("peer-recv".into())
            .stack_size(256 << 10)
            .spawn(move || serve(stream, &peer, &ctx2));
        if let Err(e) = spawned {
            crate::warn_every!("peer-thread", "cannot start a peer reader thread: {e}");
        }
    }
}

/// Serves one inbound connection to its end.
fn serve(stream: TcpStream, peer: &str, ctx: &Context) {
    let Some(_open) = Slot::take(&ctx.open.open, MAX_CONNECTIONS) else {
        crate::warn_every!(
            "peer-busy",
            "refused a peer connection from {peer}: {MAX_CONNECTIONS} are open"
        );
        refuse_busy(stream, ctx.tls.is_some());
        return;
    };
    let authed = {
        let Some(_pending) = Slot::take(&ctx.open.unauthenticated, MAX_UNAUTHENTICATED) else {
            crate::warn_every!(
                "peer-busy",
                "refused a peer connection from {peer}: {MAX_UNAUTHENTICATED} are authenticating"
            );
            refuse_busy(stream, ctx.tls.is_some());
            return;
        };
        authenticate(stream, ctx)
    };
    let (stream, from, _slot) = match authed {
        Ok(a) => a,
        Err(Refusal::Probed(from)) => {
            debug!("answered a probe from node {from} ({peer})");
            return;
        }
        Err(e) => {
            crate::warn_every!(
                format!("peer-refused-{peer}-{}", e.key()),
                "refused a peer connection from {peer}: {e}"
            );
            return;
        }
    };
    debug!("peer {from} connected from {peer}");
    if let Err(e) = read_loop(stream, from, ctx) {
        crate::warn_every!(
            format!("peer-closed-{from}"),
            "closed the connection from peer {from} ({peer}): {e}"
        );
    }
}

/// Tells a dialer we are full, without waiting on it. A TLS dialer could
/// not read a plain verdict: it is just closed.
fn refuse_busy(stream: TcpStream, tls: bool) {
    if tls {
        return;
    }
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut out = Vec::new();
    codec::encode_verdict(&mut out, Verdict::Busy, 0);
    let _ = (&stream).write_all(&out);
}

/// Why a connection was refused or closed.
#[derive(Debug)]
pub enum Refusal {
    Io(io::Error),
    Frame(FrameError),
    Decode(DecodeError),
    /// The dialer was judged and turned away.
    Judged {
        from: NodeId,
        verdict: Verdict,
    },
    /// The dialer's certificate does not name the id it claims.
    Certificate {
        from: NodeId,
        why: String,
    },
    /// A message or snapshot whose envelope names other nodes than the
    /// connection's handshake.
    Misrouted {
        from: NodeId,
        to: NodeId,
        peer: NodeId,
    },
    /// The dialer was removed from the cluster while connected.
    RemovedMeanwhile(NodeId),
    /// Not a refusal: a probe was answered, and its connection ends.
    Probed(NodeId),
    /// A snapshot from a node this node does not follow as leader.
    SnapshotNotFromLeader {
        from: NodeId,
        leader: NodeId,
    },
    /// A snapshot larger than the disk can take.
    SnapshotNoSpace {
        total: u64,
        free: u64,
    },
    /// Snapshot chunks past the size the header announced.
    SnapshotOverrun,
    /// A snapshot that ended short of its announced size.
    SnapshotShort {
        received: u64,
        total: u64,
    },
    SnapshotCrc {
        sent: u32,
        computed: u32,
    },
    /// Snapshot frames out of order.
    SnapshotFrame(u8),
}

impl Refusal {
    /// A short name of the cause, to rate-limit log lines per cause.
    fn key(&self) -> &'static str {
        match self {
            Refusal::Io(_) => "io",
            Refusal::Frame(_) => "frame",
            Refusal::Decode(_) => "decode",
            Refusal::Judged { .. } => "judged",
            Refusal::Certificate { .. } => "certificate",
            _ => "other",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Io(e) => write!(f, "{e}"),
            Refusal::Frame(e) => write!(f, "bad data: {e}"),
            Refusal::Decode(e) => write!(f, "bad data: {e}"),
            Refusal::Judged { from, verdict } => write!(f, "node {from}: {verdict}"),
            Refusal::Certificate { from, why } => write!(f, "claims node {from}, but {why}"),
            Refusal::Misrouted { from, to, peer } => write!(
                f,
                "bad data: message {from}->{to} on the connection from {peer}"
            ),
            Refusal::RemovedMeanwhile(id) => write!(f, "node {id} was removed"),
            Refusal::Probed(id) => write!(f, "answered the probe of node {id}"),
            Refusal::SnapshotNotFromLeader { from, leader } => write!(
                f,
                "a snapshot from {from}, but this node follows leader {leader}"
            ),
            Refusal::SnapshotNoSpace { total, free } => write!(
                f,
                "a snapshot of {total} bytes does not fit the {free} bytes free on disk"
            ),
            Refusal::SnapshotOverrun => f.write_str("snapshot chunk past the announced size"),
            Refusal::SnapshotShort { received, total } => {
                write!(f, "snapshot ended after {received} of {total} bytes")
            }
            Refusal::SnapshotCrc { sent, computed } => write!(
                f,
                "snapshot CRC mismatch: sent {sent:#010x}, received {computed:#010x}"
            ),
            Refusal::SnapshotFrame(k) => write!(f, "snapshot frame of kind {k} out of order"),
        }
    }
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

impl From<FrameError> for Refusal {
    fn from(e: FrameError) -> Self {
        Refusal::Frame(e)
    }
}

impl From<DecodeError> for Refusal {
    fn from(e: DecodeError) -> Self {
        Refusal::Decode(e)
    }
}

/// Who may connect. `listed` are the ids of `--peers`.
///
/// - A removed node never (ids are never reused).
/// - A dialer that presents another cluster's ID never; an ID of 0 is a
///   member that has not learned it yet (a new or joining node).
/// - A voter, learner, address-book member or `--peers` id, yes.
/// - Any other id only if it presents this cluster's (known, non-zero) ID:
///   it is a member added after this node's configuration, which this node
///   must hear to catch up. The core then decides what it listens to.
pub fn judge(m: &Membership, listed: &BTreeSet<NodeId>, from: NodeId, cluster_id: u64) -> Verdict {
    if crate::debug::trust_every_peer() {
        return Verdict::Welcome;
    }
    if m.removed.contains(&from) {
        return Verdict::Removed;
    }
    if cluster_id != 0 && m.cluster_id != 0 && cluster_id != m.cluster_id {
        return Verdict::WrongCluster;
    }
    if m.members.contains(&from) || listed.contains(&from) {
        return Verdict::Welcome;
    }
    if cluster_id != 0 && cluster_id == m.cluster_id {
        return Verdict::Welcome;
    }
    Verdict::Stranger
}

/// TLS (if configured), the handshake, the identity check and the verdict,
/// all within the handshake timeout. Returns the stream and the dialer's id.
fn authenticate(
    stream: TcpStream,
    ctx: &Context,
) -> Result<(PeerStream, NodeId, PeerSlot<'_>), Refusal> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut stream = match &ctx.tls {
        Some(tls) => crate::tls::accept_peer(stream, tls, HANDSHAKE_TIMEOUT)?,
        None => PeerStream::Plain(stream),
    };
    let mut buf = Vec::new();
    let mut before = Before {
        stream: &mut stream,
        deadline,
    };
    let allowed = [codec::KIND_HANDSHAKE, codec::KIND_PROBE];
    let Some(frame) = read_frame(&mut before, &mut buf, &allowed)? else {
        return Err(
            io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its handshake").into(),
        );
    };
    if frame.kind == codec::KIND_PROBE {
        return Err(answer_probe(&mut stream, frame.body, ctx));
    }
    let membership = ctx.shared.membership();
    // Only a welcomed dialer learns our cluster ID.
    let verdict_for = |stream: &mut PeerStream, v: Verdict| -> Result<(), Refusal> {
        let mut out = Vec::new();
        let cluster_id = if v == Verdict::Welcome {
            membership.cluster_id
        } else {
            0
        };
        codec::encode_verdict(&mut out, v, cluster_id);
        stream.write_all(&out)?;
        stream.flush()?;
        Ok(())
    };
    let hello = match codec::decode_handshake(frame.body, ctx.me) {
        Ok(h) => h,
        Err(e @ DecodeError::WrongTarget { from, .. }) => {
            let _ = verdict_for(&mut stream, Verdict::WrongNode);
            debug!("node {from} dialled the wrong node");
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let from = hello.from;
    if let Some(conn) = stream.accepted_tls() {
        if let Err(why) = crate::tls::verify_node_id(conn, from) {
            let _ = verdict_for(&mut stream, Verdict::WrongCertificate);
            return Err(Refusal::Certificate { from, why });
        }
    }
    let mut verdict = judge(&membership, &ctx.listed, from, hello.cluster_id);
    let mut slot = None;
    if verdict == Verdict::Welcome {
        let known = membership.members.contains(&from) || ctx.listed.contains(&from);
        slot = PeerSlot::take(&ctx.open, from, known);
        if slot.is_none() {
            verdict = Verdict::Busy;
        }
    }
    verdict_for(&mut stream, verdict)?;
    let Some(slot) = slot else {
        return Err(Refusal::Judged { from, verdict });
    };
    stream.tcp().set_read_timeout(None)?;
    stream.tcp().set_write_timeout(None)?;
    Ok((stream, from, slot))
}

/// Answers a node with an empty data dir that asks whether a cluster
/// already runs (`discovery.rs`). Members and `--peers` ids learn this
/// node's term, last index and whether it lists them; anyone else only
/// that it is turned away. Always returns why the connection ends.
fn answer_probe(stream: &mut PeerStream, body: &[u8], ctx: &Context) -> Refusal {
    let from = match codec::decode_probe(body, ctx.me) {
        Ok(from) => from,
        Err(e) => return e.into(),
    };
    if let Some(conn) = stream.accepted_tls() {
        if let Err(why) = crate::tls::verify_node_id(conn, from) {
            let _ = send_probe_reply(stream, ProbeReply::Refused(Verdict::WrongCertificate));
            return Refusal::Certificate { from, why };
        }
    }
    let membership = ctx.shared.membership();
    let reply = match judge(&membership, &ctx.listed, from, 0) {
        Verdict::Welcome => match ctx.shared.persisted() {
            None => ProbeReply::Deciding,
            Some((term, last_index)) => ProbeReply::Running {
                cluster_id: membership.cluster_id,
                term,
                last_index,
                lists_prober: membership.members.contains(&from),
            },
        },
        refused => ProbeReply::Refused(refused),
    };
    match send_probe_reply(stream, reply) {
        Ok(()) => Refusal::Probed(from),
        Err(e) => e.into(),
    }
}

fn send_probe_reply(stream: &mut PeerStream, reply: ProbeReply) -> io::Result<()> {
    let mut out = Vec::new();
    codec::encode_probe_reply(&mut out, reply);
    stream.write_all(&out)?;
    stream.flush()
}

/// Reads a connection that must be done by `deadline`: the handshake
/// timeout bounds the whole handshake, not each read of it.
struct Before<'a> {
    stream: &'a mut PeerStream,
    deadline: Instant,
}

impl Read for Before<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read_before(buf, self.deadline)
    }
}

/// A snapshot being received into a file of the inbox.
struct Receiving {
    header: SnapshotHeader,
    /// Deletes the file unless the transfer completes.
    file: ReceivedSnapshot,
    out: BufWriter<File>,
    hasher: crc32fast::Hasher,
    received: u64,
}

impl Receiving {
    fn start(header: SnapshotHeader, inbox: &Inbox) -> Result<Receiving, Refusal> {
        let (path, out) = inbox.create(header.from, header.meta.index)?;
        Ok(Receiving {
            header,
            file: ReceivedSnapshot::new(path),
            out: BufWriter::with_capacity(256 << 10, out),
            hasher: crc32fast::Hasher::new(),
            received: 0,
        })
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        if self.received + chunk.len() as u64 > self.header.total {
            return Err(Refusal::SnapshotOverrun);
        }
        self.hasher.update(chunk);
        self.out.write_all(chunk)?;
        self.received += chunk.len() as u64;
        Ok(())
    }

    /// Checks size and CRC; on success the file is complete and closed.
    fn finish(mut self, crc: u32) -> Result<(SnapshotHeader, ReceivedSnapshot), Refusal> {
        if self.received != self.header.total {
            return Err(Refusal::SnapshotShort {
                received: self.received,
                total: self.header.total,
            });
        }
        let computed = self.hasher.clone().finalize();
        if computed != crc {
            return Err(Refusal::SnapshotCrc {
                sent: crc,
                computed,
            });
        }
        self.out.flush()?;
        Ok((self.header, self.file))
    }
}

/// Checks that a snapshot may be received: from the leader this node
/// follows, and small enough for the disk.
fn admit_snapshot(h: &SnapshotHeader, from: NodeId, ctx: &Context) -> Result<(), Refusal> {
    let leader = ctx.shared.leader();
    if leader != from {
        return Err(Refusal::SnapshotNotFromLeader { from, leader });
    }
    let free = ctx.inbox.free_bytes()?;
    if h.total.saturating_add(DISK_RESERVE) > free {
        return Err(Refusal::SnapshotNoSpace {
            total: h.total,
            free,
        });
    }
    Ok(())
}

/// Counts the bytes read from a peer's connection.
struct Counted {
    stream: PeerStream,
    peer: Arc<PeerMetrics>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.peer.received(n as u64);
        Ok(n)
    }
}

fn read_loop(stream: PeerStream, from: NodeId, ctx: &Context) -> Result<(), Refusal> {
    let peer = ctx.metrics.peer(from);
    let counted = Counted {
        stream,
        peer: peer.clone(),
    };
    let mut r = BufReader::with_capacity(64 << 10, counted);
    let mut buf = Vec::new();
    let mut receiving: Option<Receiving> = None;
    let mut generation = ctx.shared.membership_generation();
    loop {
        let allowed: &[u8] = match receiving {
            None => &[codec::KIND_MESSAGE, codec::KIND_SNAPSHOT_HEADER],
            Some(_) => &[codec::KIND_SNAPSHOT_CHUNK, codec::KIND_SNAPSHOT_END],
        };
        let Some(codec::Frame { kind, body }) = read_frame(&mut r, &mut buf, allowed)? else {
            return Ok(());
        };
        let g = ctx.shared.membership_generation();
        if g != generation {
            generation = g;
            if ctx.shared.membership().removed.contains(&from) {
                return Err(Refusal::RemovedMeanwhile(from));
            }
        }
        let msg = match kind {
            codec::KIND_MESSAGE => Some(codec::decode_message(body)?),
            codec::KIND_SNAPSHOT_HEADER => {
                let h = codec::decode_snapshot_header(body)?;
                if h.from != from || h.to != ctx.me {
                    return Err(Refusal::Misrouted {
                        from: h.from,
                        to: h.to,
                        peer: from,
                    });
                }
                admit_snapshot(&h, from, ctx)?;
                info!(
                    "receiving snapshot {} ({} bytes) from peer {from}",
                    h.meta.index, h.total
                );
                receiving = Some(Receiving::start(h, &ctx.inbox)?);
                None
            }
            codec::KIND_SNAPSHOT_CHUNK => {
                match receiving.as_mut() {
                    Some(rcv) => rcv.push(body)?,
                    None => return Err(Refusal::SnapshotFrame(kind)),
                }
                None
            }
            codec::KIND_SNAPSHOT_END => {
                let crc = codec::decode_snapshot_end(body)?;
                let Some(rcv) = receiving.take() else {
                    return Err(Refusal::SnapshotFrame(kind));
                };
                let (h, file) = rcv.finish(crc)?;
                Some(codec::snapshot_message(&h, ctx.inbox.deliver(file)))
            }
            k => return Err(Refusal::SnapshotFrame(k)),
        };
        if let Some(m) = msg {
            if let MessageBody::HeartbeatResponse { .. } = m.body {
                peer.heartbeat_answered();
            }
            if m.from != from || m.to != ctx.me {
                return Err(Refusal::Misrouted {
                    from: m.from,
                    to: m.to,
                    peer: from,
                });
            }
            if ctx.inbound.send(m).is_err() {
                return Ok(()); // node is shutting down
            }
        }
        if buf.capacity() > (8 << 20) {
            buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_lets_in_members_and_vouched_newcomers_only() {
        let m = Membership {
            cluster_id: 7,
            members: [1, 2, 3].into(),
            removed: [4].into(),
        };
        let listed: BTreeSet<NodeId> = [1, 2, 3, 9].into();
        assert_eq!(judge(&m, &listed, 2, 7), Verdict::Welcome);
        assert_eq!(
            judge(&m, &listed, 2, 0),
            Verdict::Welcome,
            "not learned yet"
        );
        assert_eq!(
            judge(&m, &listed, 9, 0),
            Verdict::Welcome,
            "named in --peers"
        );
        assert_eq!(judge(&m, &listed, 2, 8), Verdict::WrongCluster);
        assert_eq!(judge(&m, &listed, 4, 7), Verdict::Removed);
        assert_eq!(judge(&m, &listed, 99, 0), Verdict::Stranger);
        assert_eq!(judge(&m, &listed, 99, 8), Verdict::WrongCluster);
        assert_eq!(judge(&m, &listed, 5, 7), Verdict::Welcome, "added after us");
        let fresh = Membership::default();
        assert_eq!(judge(&fresh, &listed, 5, 7), Verdict::Stranger);
        assert_eq!(judge(&fresh, &listed, 1, 7), Verdict::Welcome);
    }
}
