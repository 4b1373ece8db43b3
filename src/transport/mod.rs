//! Peer-to-peer transport: one listener, a reader thread per inbound
//! connection, and a sender thread per peer, all plain OS threads.
//!
//! ```text
//!            ready thread ──send()──► [bounded queue] ─► sender thread ─► TCP ─► peer
//!  peer ─► TCP ─► reader thread ─► inbound channel ─► node thread
//! ```
//!
//! Each connection carries messages one way, from dialer to listener, after
//! a handshake naming both ids (`codec.rs` has the frame format). Identity is
//! the id in the handshake, never the address.
//!
//! Sending never blocks the ready thread: a full queue drops the message (Raft
//! retransmits), and a sender that cannot reach its peer drops what it has,
//! reports the peer unreachable, and redials with exponential backoff. A
//! sender writes every queued message into one buffer and flushes once per
//! batch, with `TCP_NODELAY`, so a burst costs one syscall.
//!
//! Snapshots never pass through memory whole: a sender streams the node's
//! current snapshot file in 1 MiB chunks (whatever snapshot the core asked
//! for, the newest one on disk is at least as good), and a reader writes the
//! chunks to a file of the snapshot [`Inbox`], checks the CRC, and hands the
//! core a snapshot message whose data is the inbox ticket for that file.
//!
//! Readers treat the network as hostile: a bad handshake, an unknown frame,
//! a frame over the size limit or a message that claims another sender
//! closes that connection with a warning; the node keeps running.

pub mod codec;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use log::{debug, info, warn};

use crate::datadir::from_wal_meta;
use crate::raft::{Message, MessageBody, NodeId};
use crate::shared::Shared;
use crate::snapshots::{Inbox, ReceivedSnapshot};
use codec::{DecodeError, SnapshotHeader};

/// Messages waiting for one peer; beyond this they are dropped.
const QUEUE: usize = 4096;
/// Longest wait for a TCP connect or a blocked write.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What the transport tells the node about delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Messages to this peer were dropped: it is unreachable.
    Unreachable(NodeId),
    /// A snapshot to this peer was written out (true) or lost (false).
    Snapshot(NodeId, bool),
}

struct Peer {
    queue: Sender<Message>,
    addr: Arc<Mutex<String>>,
}

/// The transport of one node. Cheap to share: all methods take `&self`.
pub struct Transport {
    id: NodeId,
    peers: Mutex<HashMap<NodeId, Peer>>,
    reports: Sender<Report>,
    /// Where the current snapshot file is published, for streaming it.
    shared: Arc<Shared>,
    /// Nodes we were asked to message but have no address for (warned once).
    unknown: Mutex<std::collections::HashSet<NodeId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport {
    /// Starts accepting peers on `listener`; inbound messages go to
    /// `inbound`, received snapshot files to `inbox`.
    pub fn start(
        id: NodeId,
        listener: TcpListener,
        inbound: Sender<Message>,
        reports: Sender<Report>,
        shared: Arc<Shared>,
        inbox: Arc<Inbox>,
    ) -> io::Result<Arc<Transport>> {
        info!("listening for peers on {}", listener.local_addr()?);
        let t = Arc::new(Transport {
            id,
            peers: Mutex::new(HashMap::new()),
            reports,
            shared,
            unknown: Mutex::default(),
        });
        thread::Builder::new()
            .name("peer-listener".into())
            .spawn(move || accept_loop(id, listener, inbound, inbox))?;
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
        let me = self.id;
        let reports = self.reports.clone();
        let a = addr.clone();
        let shared = self.shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("peer-send-{id}"))
            .spawn(move || send_loop(me, id, a, rx, reports, &shared));
        match spawned {
            Ok(_) => {
                peers.insert(id, Peer { queue: tx, addr });
            }
            Err(e) => warn!("cannot start sender thread for peer {id}: {e}"),
        }
    }

    /// Stops sending to `id` (its thread ends when its queue is dropped).
    pub fn remove_peer(&self, id: NodeId) {
        lock(&self.peers).remove(&id);
    }

    pub fn has_peer(&self, id: NodeId) -> bool {
        lock(&self.peers).contains_key(&id)
    }

    /// Queues messages for their peers without blocking.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = lock(&self.peers);
        for m in msgs {
            let to = m.to;
            let Some(p) = peers.get(&to) else {
                if lock(&self.unknown).insert(to) {
                    warn!(
                        "no address for node {to}: cannot answer it; give its address in --peers \
                         (a joining node needs every member's address)"
                    );
                }
                continue;
            };
            match p.queue.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => {
                    debug!("queue to node {to} is full; dropping {}", m.body.name());
                    let report = match m.body {
                        MessageBody::Snapshot { .. } => Report::Snapshot(to, false),
                        _ => Report::Unreachable(to),
                    };
                    let _ = self.reports.try_send(report);
                }
            }
        }
    }
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        )
    })
}

fn dial(me: NodeId, to: NodeId, addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&resolve(addr)?, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut hello = Vec::new();
    codec::encode_handshake(&mut hello, me, to);
    (&stream).write_all(&hello)?;
    Ok(stream)
}

fn send_loop(
    me: NodeId,
    to: NodeId,
    addr: Arc<Mutex<String>>,
    rx: Receiver<Message>,
    reports: Sender<Report>,
    shared: &Shared,
) {
    let mut conn: Option<TcpStream> = None;
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
        if conn.is_none() && Instant::now() >= next_dial {
            let a = lock(&addr).clone();
            match dial(me, to, &a) {
                Ok(s) => {
                    info!("connected to peer {to} at {a}");
                    conn = Some(s);
                    backoff = Duration::from_millis(20);
                }
                Err(e) => {
                    debug!("cannot reach peer {to} at {a}: {e}");
                    next_dial = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let mut unreachable = false;
        buf.clear();
        for m in batch.drain(..) {
            let MessageBody::Snapshot { .. } = m.body else {
                codec::encode_message(&mut buf, &m);
                continue;
            };
            // Flush what came before, then stream the snapshot.
            let ok = match conn.as_mut() {
                Some(stream) => {
                    let r = stream
                        .write_all(&buf)
                        .and_then(|_| stream_snapshot(stream, &m, shared));
                    buf.clear();
                    match r {
                        Ok(bytes) => {
                            info!("sent snapshot to peer {to} ({bytes} bytes)");
                            true
                        }
                        Err(e) => {
                            warn!("sending a snapshot to peer {to} failed: {e}");
                            conn = None;
                            false
                        }
                    }
                }
                None => false,
            };
            let _ = reports.try_send(Report::Snapshot(to, ok));
        }
        if !buf.is_empty() {
            match conn.as_mut() {
                Some(stream) => {
                    if let Err(e) = stream.write_all(&buf) {
                        warn!("lost connection to peer {to}: {e}");
                        conn = None;
                        unreachable = true;
                    }
                }
                None => unreachable = true,
            }
        }
        if unreachable {
            let _ = reports.try_send(Report::Unreachable(to));
        }
        if buf.capacity() > (8 << 20) {
            buf = Vec::with_capacity(64 << 10); // don't keep a huge buffer around
        }
    }
}

/// Streams the node's current snapshot file to `stream`: header, chunks,
/// end. Returns the number of data bytes sent.
fn stream_snapshot(stream: &mut TcpStream, m: &Message, shared: &Shared) -> io::Result<u64> {
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
    Ok(total)
}

fn accept_loop(me: NodeId, listener: TcpListener, inbound: Sender<Message>, inbox: Arc<Inbox>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!("accepting a peer connection failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let inbound = inbound.clone();
        let inbox = inbox.clone();
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let spawned = thread::Builder::new()
            .name("peer-recv".into())
            .spawn(move || {
                if let Err(e) = read_loop(me, stream, &inbound, &inbox) {
                    warn!("closed peer connection from {peer}: {e}");
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start a reader thread: {e}");
        }
    }
}

/// Why a reader closed its connection.
#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    /// A frame body that does not decode.
    Decode(DecodeError),
    /// A length prefix of 0 or over [`codec::MAX_FRAME`].
    FrameLength(usize),
    /// The first frame was not a handshake.
    NoHandshake(u8),
    /// A frame of a kind not expected here (e.g. a chunk outside a snapshot).
    UnexpectedFrame(u8),
    /// A message or snapshot whose envelope names other nodes than the
    /// connection's handshake.
    Misrouted {
        from: NodeId,
        to: NodeId,
        peer: NodeId,
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
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Decode(e) => write!(f, "bad data: {e}"),
            ReadError::FrameLength(n) => write!(f, "bad data: frame length {n} out of range"),
            ReadError::NoHandshake(k) => {
                write!(f, "bad data: expected a handshake, got frame kind {k}")
            }
            ReadError::UnexpectedFrame(k) => write!(f, "bad data: unexpected frame kind {k}"),
            ReadError::Misrouted { from, to, peer } => write!(
                f,
                "bad data: message {from}->{to} on the connection from {peer}"
            ),
            ReadError::SnapshotOverrun => {
                f.write_str("bad data: snapshot chunk past the announced size")
            }
            ReadError::SnapshotShort { received, total } => write!(
                f,
                "bad data: snapshot ended after {received} of {total} bytes"
            ),
            ReadError::SnapshotCrc { sent, computed } => write!(
                f,
                "bad data: snapshot CRC mismatch: sent {sent:#010x}, received {computed:#010x}"
            ),
        }
    }
}

impl From<DecodeError> for ReadError {
    fn from(e: DecodeError) -> Self {
        ReadError::Decode(e)
    }
}

/// Reads one frame into `buf`; returns its kind, or `None` at a clean end.
fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<u8>, ReadError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > codec::MAX_FRAME {
        return Err(ReadError::FrameLength(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf).map_err(ReadError::Io)?;
    Ok(Some(buf[0]))
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
    fn start(header: SnapshotHeader, inbox: &Inbox) -> Result<Receiving, ReadError> {
        let (path, out) = inbox
            .create(header.from, header.meta.index)
            .map_err(ReadError::Io)?;
        Ok(Receiving {
            header,
            file: ReceivedSnapshot::new(path),
            out: BufWriter::with_capacity(256 << 10, out),
            hasher: crc32fast::Hasher::new(),
            received: 0,
        })
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), ReadError> {
        if self.received + chunk.len() as u64 > self.header.total {
            return Err(ReadError::SnapshotOverrun);
        }
        self.hasher.update(chunk);
        self.out.write_all(chunk).map_err(ReadError::Io)?;
        self.received += chunk.len() as u64;
        Ok(())
    }

    /// Checks size and CRC; on success the file is complete and closed.
    fn finish(mut self, crc: u32) -> Result<(SnapshotHeader, ReceivedSnapshot), ReadError> {
        if self.received != self.header.total {
            return Err(ReadError::SnapshotShort {
                received: self.received,
                total: self.header.total,
            });
        }
        let computed = self.hasher.clone().finalize();
        if computed != crc {
            return Err(ReadError::SnapshotCrc {
                sent: crc,
                computed,
            });
        }
        self.out.flush().map_err(ReadError::Io)?;
        Ok((self.header, self.file))
    }
}

fn read_loop(
    me: NodeId,
    stream: TcpStream,
    inbound: &Sender<Message>,
    inbox: &Inbox,
) -> Result<(), ReadError> {
    let _ = stream.set_nodelay(true);
    let mut r = BufReader::with_capacity(64 << 10, stream);
    let mut buf = Vec::new();
    let from = match read_frame(&mut r, &mut buf)? {
        Some(codec::KIND_HANDSHAKE) => codec::decode_handshake(&buf[1..], me)?,
        Some(k) => return Err(ReadError::NoHandshake(k)),
        None => return Ok(()),
    };
    debug!("peer {from} connected");
    let mut receiving: Option<Receiving> = None;
    while let Some(kind) = read_frame(&mut r, &mut buf)? {
        let body = &buf[1..];
        let msg = match (kind, receiving.as_mut()) {
            (codec::KIND_MESSAGE, None) => Some(codec::decode_message(body)?),
            (codec::KIND_SNAPSHOT_HEADER, None) => {
                let h = codec::decode_snapshot_header(body)?;
                if h.from != from || h.to != me {
                    return Err(ReadError::Misrouted {
                        from: h.from,
                        to: h.to,
                        peer: from,
                    });
                }
                info!(
                    "receiving snapshot {} ({} bytes) from peer {from}",
                    h.meta.index, h.total
                );
                receiving = Some(Receiving::start(h, inbox)?);
                None
            }
            (codec::KIND_SNAPSHOT_CHUNK, Some(rcv)) => {
                rcv.push(body)?;
                None
            }
            (codec::KIND_SNAPSHOT_END, Some(_)) => {
                let crc = codec::decode_snapshot_end(body)?;
                let Some(rcv) = receiving.take() else {
                    return Err(ReadError::UnexpectedFrame(codec::KIND_SNAPSHOT_END));
                };
                let (h, file) = rcv.finish(crc)?;
                Some(codec::snapshot_message(&h, inbox.deliver(file)))
            }
            (k, _) => return Err(ReadError::UnexpectedFrame(k)),
        };
        if let Some(m) = msg {
            if m.from != from || m.to != me {
                return Err(ReadError::Misrouted {
                    from: m.from,
                    to: m.to,
                    peer: from,
                });
            }
            if inbound.send(m).is_err() {
                return Ok(()); // node is shutting down
            }
        }
        if buf.capacity() > (8 << 20) {
            buf = Vec::new();
        }
    }
    Ok(())
}
