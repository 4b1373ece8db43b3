//! The listening side of the transport: who is let in, and reading what
//! they send.
//!
//! Every byte from the network is hostile until the sender is known. One
//! thread, the *admission thread*, holds every connection that is not yet
//! admitted: it accepts, drives each one's TLS handshake and opening frame
//! on a non-blocking socket from one `mio` poll, answers probes, and closes
//! what is late, bad or turned away. The rules are `admission.rs`'s: one
//! deadline for the whole handshake, seats whose oldest holder makes room
//! when they are full, newcomer seats that expire. A slow or silent dialer
//! costs a socket and a table entry, never a thread, and keeps nobody out.
//!
//! A welcomed connection gets a reader thread of its own, which
//! - checks each frame kind's size limit, and that a message names the
//!   connection's dialer as sender and this node as receiver;
//! - takes a snapshot only from the leader this node follows, and only if
//!   that leader is a known id (a member or in `--peers`), within its
//!   announced size and the free disk space;
//! - ends when the dialer is removed from the cluster, or when the
//!   admission thread ends its seat (evicted to make room, a newcomer whose
//!   time is up, a removed member): it shuts the socket down under the
//!   reader, through a clone of the socket kept with the seat.
//!
//! What is kept per dialer is bounded by the configuration, not by who
//! dials: a metrics series only for a known id ([`known`]), log lines
//! rate-limited per cause (and per known id), never per address or per
//! claimed id. Refusals are logged at most once a second per cause.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::{Events, Interest, Poll, Token};
use rustls::{ServerConnection, StreamOwned};

use super::admission::{
    Admission, Arrival, ConnId, Decision, Gate, Refused, Table, DEADLINE, MAX_CONNECTIONS,
    MAX_UNAUTHENTICATED,
};
use super::codec::{self, read_frame, DecodeError, FrameError, SnapshotHeader, Verdict};
use crate::bell::Waking;
use crate::metrics::{NetworkMetrics, PeerMetrics};
use crate::raft::{Message, MessageBody, NodeId};
use crate::shared::{Membership, Shared};
use crate::snapshots::{Inbox, ReceivedSnapshot};
use crate::tls::{PeerStream, PeerTls};

/// Disk space a received snapshot must leave free.
const DISK_RESERVE: u64 = 64 << 20;
/// The longest the admission thread sleeps; it then ends the seats of
/// members removed meanwhile.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A reader thread's wait to finish writing the welcome verdict.
const VERDICT_WRITE: Duration = Duration::from_secs(1);
/// After a failed accept (out of file descriptors, say), how soon the
/// admission thread tries again: the listener's readiness is reported
/// once per new connection, not while some are waiting.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
const LISTENER: Token = Token(0);

/// What the admission thread and the readers share.
pub struct Context {
    pub me: NodeId,
    pub tls: Option<Arc<PeerTls>>,
    pub listed: BTreeSet<NodeId>,
    pub inbound: Waking<Message>,
    pub inbox: Arc<Inbox>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<NetworkMetrics>,
    /// The seats of the raft port: the admission thread takes them, a
    /// reader gives its own back when it ends. An admitted seat holds a
    /// clone of its socket, to shut the connection down when it must end.
    pub seats: Mutex<Table<TcpStream>>,
}

impl Context {
    fn seats(&self) -> MutexGuard<'_, Table<TcpStream>> {
        self.seats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a connection was refused or closed.
#[derive(Debug)]
pub enum Refusal {
    Io(io::Error),
    Frame(FrameError),
    Decode(DecodeError),
    /// Turned away at the door (`admission.rs`), or a probe answered.
    Admission(Refused),
    /// Closed by the dialer before its opening frame was complete.
    ClosedEarly,
    /// A first byte that cannot start a TLS handshake, on a TLS port.
    NotTls(u8),
    Tls(rustls::Error),
    /// TLS, the opening frame and the verdict took longer than [`DEADLINE`].
    TimedOut,
    /// A message or snapshot whose envelope names other nodes than the
    /// connection's handshake.
    Misrouted {
        from: NodeId,
        to: NodeId,
        peer: NodeId,
    },
    /// The dialer was removed from the cluster while connected.
    RemovedMeanwhile(NodeId),
    /// A snapshot from a node this node does not follow as leader.
    SnapshotNotFromLeader {
        from: NodeId,
        leader: NodeId,
    },
    /// A snapshot from the leader this node follows, which is neither a
    /// member nor in `--peers`.
    SnapshotFromStranger(NodeId),
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
    /// A fixed name of the cause, to rate-limit log lines per cause.
    fn key(&self) -> &'static str {
        match self {
            Refusal::Io(_) | Refusal::ClosedEarly => "peer-refused-io",
            Refusal::Frame(_) => "peer-refused-frame",
            Refusal::Decode(_) => "peer-refused-decode",
            Refusal::Admission(r) => r.key(),
            Refusal::NotTls(_) | Refusal::Tls(_) => "peer-refused-tls",
            Refusal::TimedOut => "peer-refused-timeout",
            _ => "peer-refused-other",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Io(e) => write!(f, "{e}"),
            Refusal::Frame(e) => write!(f, "bad data: {e}"),
            Refusal::Decode(e) => write!(f, "bad data: {e}"),
            Refusal::Admission(r) => write!(f, "{r}"),
            Refusal::ClosedEarly => f.write_str("closed before its handshake"),
            Refusal::NotTls(b) => write!(
                f,
                "not TLS (first byte {b:#04x}): a plaintext peer on a TLS port?"
            ),
            Refusal::Tls(e) => write!(f, "TLS: {e}"),
            Refusal::TimedOut => write!(
                f,
                "no handshake within {DEADLINE:?} (TLS, handshake frame and verdict together)"
            ),
            Refusal::Misrouted { from, to, peer } => write!(
                f,
                "bad data: message {from}->{to} on the connection from {peer}"
            ),
            Refusal::RemovedMeanwhile(id) => write!(f, "node {id} was removed"),
            Refusal::SnapshotNotFromLeader { from, leader } => write!(
                f,
                "a snapshot from {from}, but this node follows leader {leader}"
            ),
            Refusal::SnapshotFromStranger(from) => write!(
                f,
                "a snapshot from {from}, which is neither a member nor in --peers"
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

fn log_refusal(peer: IpAddr, why: &Refusal) {
    match why {
        Refusal::Admission(Refused::Probed(from)) => {
            debug!("answered a probe from node {from} ({peer})")
        }
        _ => crate::warn_every!(why.key(), "refused a peer connection from {peer}: {why}"),
    }
}

/// Runs the admission thread (see the module docs) until the listener
/// fails.
pub fn admission_loop(listener: TcpListener, ctx: Arc<Context>) {
    if let Err(e) = Doorway::new(listener, ctx).and_then(|mut d| d.run()) {
        log::error!("the raft port stopped admitting peers: {e}");
    }
}

/// The admission thread's state: the poll, and every connection not yet
/// admitted.
struct Doorway {
    poll: Poll,
    listener: mio::net::TcpListener,
    doors: HashMap<ConnId, Door>,
    ctx: Arc<Context>,
    /// An accept failed: connections may be waiting without a new event.
    accept_again: bool,
}

impl Doorway {
    fn new(listener: TcpListener, ctx: Arc<Context>) -> io::Result<Doorway> {
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Doorway {
            poll,
            listener,
            doors: HashMap::new(),
            ctx,
            accept_again: false,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let mut wait = match self.ctx.seats().next_deadline() {
                Some(d) => d.saturating_duration_since(now).min(SWEEP_EVERY),
                None => SWEEP_EVERY,
            };
            if self.accept_again {
                wait = wait.min(ACCEPT_RETRY);
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if std::mem::take(&mut self.accept_again) {
                self.accept();
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    Token(conn) => self.drive(conn as ConnId),
                }
            }
            self.expire(Instant::now());
        }
    }

    /// Accepts every waiting connection, each into a seat.
    fn accept(&mut self) {
        loop {
            let (sock, addr) = match self.listener.accept() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::warn_every!("peer-accept", "accepting a peer connection failed: {e}");
                    // Out of file descriptors, say: try again shortly.
                    self.accept_again = true;
                    return;
                }
            };
            let peer = addr.ip();
            let arrival = self.ctx.seats().arrive(Instant::now());
            let conn = match arrival {
                Arrival::Full => {
                    crate::warn_every!(
                        "peer-busy",
                        "refused a peer connection from {peer}: {MAX_CONNECTIONS} are open"
                    );
                    refuse_busy(sock, self.ctx.tls.is_some());
                    continue;
                }
                Arrival::Seated { conn, evicted } => {
                    if let Some(oldest) = evicted {
                        self.evict(oldest);
                    }
                    conn
                }
            };
            match self.open_door(conn, sock, peer) {
                Ok(door) => {
                    self.doors.insert(conn, door);
                }
                Err(e) => {
                    self.ctx.seats().leave(conn);
                    crate::warn_every!(
                        "peer-accept",
                        "cannot take a peer connection from {peer}: {e}"
                    );
                }
            }
        }
    }

    fn open_door(
        &mut self,
        conn: ConnId,
        mut sock: mio::net::TcpStream,
        peer: IpAddr,
    ) -> io::Result<Door> {
        sock.set_nodelay(true)?;
        let tls = match &self.ctx.tls {
            Some(t) => Some(Box::new(t.accepting().map_err(io::Error::other)?)),
            None => None,
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut sock, Token(conn as usize), interest)?;
        Ok(Door {
            sock,
            tls,
            admission: Admission::new(),
            peer,
            tls_checked: false,
            out: Vec::new(),
            decided: None,
        })
    }

    /// Closes a connection not yet admitted, to make room for a newer one.
    fn evict(&mut self, conn: ConnId) {
        if let Some(mut door) = self.doors.remove(&conn) {
            let _ = self.poll.registry().deregister(&mut door.sock);
            crate::warn_every!(
                "peer-evicted",
                "closed a peer connection from {} that was still authenticating: the oldest \
                 of {MAX_UNAUTHENTICATED}, it made room for a new one",
                door.peer
            );
            door.tell_busy();
        }
    }

    fn drive(&mut self, conn: ConnId) {
        let Some(door) = self.doors.get_mut(&conn) else {
            return;
        };
        let progress = door.drive(&self.ctx);
        if let Progress::Wait = progress {
            return;
        }
        let Some(mut door) = self.doors.remove(&conn) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut door.sock);
        match progress {
            Progress::Wait => {}
            Progress::Closed(why) => {
                self.ctx.seats().leave(conn);
                log_refusal(door.peer, &why);
            }
            Progress::Welcome { from, known } => self.welcome(conn, door, from, known),
        }
    }

    /// Closes the connections past their deadline and ends the seats whose
    /// time is up.
    fn expire(&mut self, now: Instant) {
        let late = self.ctx.seats().overdue(now);
        for conn in late {
            if let Some(mut door) = self.doors.remove(&conn) {
                let _ = self.poll.registry().deregister(&mut door.sock);
                log_refusal(door.peer, &Refusal::TimedOut);
            }
        }
        let m = self.ctx.shared.membership();
        let vouched = self.ctx.shared.vouched();
        let listed = &self.ctx.listed;
        let ended = self.ctx.seats().sweep(
            now,
            |id| known(&m, listed, &vouched, id),
            |id| m.removed.contains(&id),
        );
        for sock in ended {
            debug!("ended the seat of a peer connection (a newcomer's time is up, or removed)");
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    /// Hands a welcomed connection to a reader thread of its own.
    fn welcome(&mut self, conn: ConnId, door: Door, from: NodeId, known: bool) {
        let Door {
            sock,
            tls,
            peer,
            out,
            ..
        } = door;
        let sock: TcpStream = sock.into();
        let handle = match sock.set_nonblocking(false).and_then(|()| sock.try_clone()) {
            Ok(h) => h,
            Err(e) => {
                self.ctx.seats().leave(conn);
                crate::warn_every!(
                    "peer-thread",
                    "cannot take the connection of peer {from}: {e}"
                );
                return;
            }
        };
        let evicted = match self
            .ctx
            .seats()
            .admit(conn, from, known, Instant::now(), handle)
        {
            Ok(evicted) => evicted,
            Err(_) => return, // no longer seated: cannot happen, its door held the seat
        };
        for old in evicted {
            debug!("closed an older connection of a peer to make room for node {from}");
            let _ = old.shutdown(Shutdown::Both);
        }
        let stream = match tls {
            Some(c) => PeerStream::Accepted(Box::new(StreamOwned::new(*c, sock))),
            None => PeerStream::Plain(sock),
        };
        let ctx = self.ctx.clone();
        let spawned = thread::Builder::new()
            .name("peer-recv".into())
            .stack_size(256 << 10)
            .spawn(move || serve(stream, &out, conn, from, peer, &ctx));
        if let Err(e) = spawned {
            drop(self.ctx.seats().leave(conn));
            crate::warn_every!("peer-thread", "cannot start a peer reader thread: {e}");
        }
    }
}

/// Tells a dialer we are full, without waiting on it. A TLS dialer could
/// not read a plain verdict: it is just closed.
fn refuse_busy(mut sock: mio::net::TcpStream, tls: bool) {
    if !tls {
        let mut out = Vec::new();
        codec::encode_verdict(&mut out, Verdict::Busy, 0);
        let _ = sock.write(&out);
    }
}

/// What a [`Door`] came to.
enum Progress {
    /// Waiting for the socket.
    Wait,
    Closed(Refusal),
    Welcome {
        from: NodeId,
        known: bool,
    },
}

/// What was decided for a door, its reply aside.
enum Outcome {
    Welcome { from: NodeId, known: bool },
    Refuse(Refused),
}

/// One connection on its way through admission, on a non-blocking socket.
struct Door {
    sock: mio::net::TcpStream,
    tls: Option<Box<ServerConnection>>,
    admission: Admission,
    peer: IpAddr,
    /// Whether the first byte was found to start a TLS handshake.
    tls_checked: bool,
    /// Without TLS: the reply not yet written.
    out: Vec<u8>,
    decided: Option<Outcome>,
}

/// Takes bytes of the opening frame, judged by what this node knows now.
fn push(
    admission: &mut Admission,
    data: &[u8],
    ctx: &Context,
    certificate: &dyn Fn(NodeId) -> Result<(), String>,
) -> Option<Decision> {
    let membership = ctx.shared.membership();
    let vouched = ctx.shared.vouched();
    let gate = Gate {
        me: ctx.me,
        membership: &membership,
        listed: &ctx.listed,
        vouched: &vouched,
        persisted: ctx.shared.persisted(),
    };
    let (used, decision) = admission.push(data, &gate, certificate);
    debug_assert_eq!(used, data.len(), "read at most what it wants");
    decision
}

/// Splits a decision into its outcome and its reply.
fn outcome(d: Decision) -> (Outcome, Vec<u8>) {
    match d {
        Decision::Welcome { from, known, reply } => (Outcome::Welcome { from, known }, reply),
        Decision::Refuse { reply, why } => (Outcome::Refuse(why), reply.unwrap_or_default()),
    }
}

impl Door {
    fn drive(&mut self, ctx: &Context) -> Progress {
        let r = match self.tls.is_some() {
            true => self.drive_tls(ctx),
            false => self.drive_plain(ctx),
        };
        r.unwrap_or_else(Progress::Closed)
    }

    /// Once decided: a welcome goes to its reader (which writes what is
    /// left of the verdict), a refusal closes once its reply is out.
    fn after_decision(&mut self, flushed: bool) -> Result<Progress, Refusal> {
        match &self.decided {
            Some(Outcome::Welcome { from, known }) => Ok(Progress::Welcome {
                from: *from,
                known: *known,
            }),
            Some(Outcome::Refuse(why)) if flushed => Err(Refusal::Admission(why.clone())),
            _ => Ok(Progress::Wait),
        }
    }

    fn drive_plain(&mut self, ctx: &Context) -> Result<Progress, Refusal> {
        let mut buf = [0u8; codec::MAX_HANDSHAKE];
        while self.decided.is_none() {
            let want = self.admission.wants().min(buf.len());
            let n = match self.sock.read(&mut buf[..want]) {
                Ok(0) => return Err(Refusal::ClosedEarly),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Wait),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(d) = push(&mut self.admission, &buf[..n], ctx, &|_| Ok(())) {
                let (o, reply) = outcome(d);
                self.decided = Some(o);
                self.out = reply;
            }
        }
        let flushed = loop {
            match self.sock.write(&self.out) {
                Ok(n) if n > 0 => {
                    self.out.drain(..n);
                    if self.out.is_empty() {
                        break true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Nothing to write, or the dialer is gone: nothing to wait for.
                _ => break true,
            }
        };
        self.after_decision(flushed)
    }

    fn drive_tls(&mut self, ctx: &Context) -> Result<Progress, Refusal> {
        if !self.tls_checked {
            // A first byte that cannot start a TLS handshake is reported as
            // a plaintext peer, in one line.
            let mut first = [0u8; 1];
            match self.sock.peek(&mut first) {
                Ok(0) => return Err(Refusal::ClosedEarly),
                Ok(_) if first[0] != 0x16 => return Err(Refusal::NotTls(first[0])),
                Ok(_) => self.tls_checked = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Wait),
                Err(e) => return Err(e.into()),
            }
        }
        let Some(conn) = self.tls.as_deref_mut() else {
            return Err(Refusal::ClosedEarly);
        };
        let mut buf = [0u8; codec::MAX_HANDSHAKE];
        loop {
            let flushed = loop {
                if !conn.wants_write() {
                    break true;
                }
                match conn.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) if self.decided.is_some() => break true,
                    Err(e) => return Err(e.into()),
                }
            };
            if self.decided.is_some() {
                return self.after_decision(flushed);
            }
            match conn.read_tls(&mut self.sock) {
                Ok(0) => return Err(Refusal::ClosedEarly),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Wait),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            if let Err(e) = conn.process_new_packets() {
                let _ = conn.write_tls(&mut self.sock); // best effort: the alert
                return Err(Refusal::Tls(e));
            }
            if conn.is_handshaking() {
                continue;
            }
            while self.decided.is_none() {
                let want = self.admission.wants().min(buf.len());
                let n = match conn.reader().read(&mut buf[..want]) {
                    Ok(0) => return Err(Refusal::ClosedEarly),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                };
                let certificate = |id| crate::tls::verify_node_id(conn, id);
                if let Some(d) = push(&mut self.admission, &buf[..n], ctx, &certificate) {
                    let (o, reply) = outcome(d);
                    self.decided = Some(o);
                    conn.writer().write_all(&reply)?;
                }
            }
        }
    }

    /// Tells an evicted dialer it was turned away for room (best effort,
    /// without waiting): in plain or, once TLS is up, inside TLS.
    fn tell_busy(mut self) {
        if self.decided.is_some() {
            return;
        }
        let mut busy = Vec::new();
        codec::encode_verdict(&mut busy, Verdict::Busy, 0);
        match self.tls.as_deref_mut() {
            None => {
                let _ = self.sock.write(&busy);
            }
            Some(conn) if !conn.is_handshaking() => {
                if conn.writer().write_all(&busy).is_ok() {
                    let _ = conn.write_tls(&mut self.sock);
                }
            }
            Some(_) => {}
        }
    }
}

/// Gives an admitted connection's seat back when its reader ends.
struct Seated<'a> {
    ctx: &'a Context,
    conn: ConnId,
}

impl Drop for Seated<'_> {
    fn drop(&mut self) {
        // Dropping the seat's clone of the socket closes it for good.
        drop(self.ctx.seats().leave(self.conn));
    }
}

/// A reader thread: finishes the welcome verdict, then reads the
/// connection to its end.
fn serve(
    mut stream: PeerStream,
    verdict_rest: &[u8],
    conn: ConnId,
    from: NodeId,
    peer: IpAddr,
    ctx: &Context,
) {
    let _seat = Seated { ctx, conn };
    debug!("peer {from} connected from {peer}");
    let r = finish_verdict(&mut stream, verdict_rest)
        .map_err(Refusal::from)
        .and_then(|()| read_loop(stream, from, ctx));
    let m = ctx.shared.membership();
    if m.removed.contains(&from) {
        ctx.metrics.remove(from);
    }
    if let Err(e) = r {
        if known(&m, &ctx.listed, &ctx.shared.vouched(), from) {
            crate::warn_every!(
                format!("peer-closed-{from}"),
                "closed the connection from peer {from} ({peer}): {e}"
            );
        } else {
            crate::warn_every!(
                "peer-closed-newcomer",
                "closed the connection from newcomer {from} ({peer}): {e}"
            );
        }
    }
}

/// Writes what the admission thread could not of the welcome verdict.
fn finish_verdict(stream: &mut PeerStream, rest: &[u8]) -> io::Result<()> {
    stream.tcp().set_write_timeout(Some(VERDICT_WRITE))?;
    if let PeerStream::Plain(s) = stream {
        s.write_all(rest)?;
    }
    stream.flush()?;
    stream.tcp().set_write_timeout(None)
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

/// Whether node `id` is known to this node: a voter, learner or
/// address-book member, named in `--peers`, or vouched for by a member
/// (the core listens to it: `raft/strangers.rs`). A known id has seats of
/// its own (not a newcomer's), a metrics series, and may send a snapshot.
pub fn known(
    m: &Membership,
    listed: &BTreeSet<NodeId>,
    vouched: &BTreeSet<NodeId>,
    id: NodeId,
) -> bool {
    m.members.contains(&id) || listed.contains(&id) || vouched.contains(&id)
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
/// follows, which must be a known id (defence in depth: the core follows
/// only a leader it heard, but a snapshot replaces the whole state), and
/// small enough for the disk.
fn admit_snapshot(h: &SnapshotHeader, from: NodeId, ctx: &Context) -> Result<(), Refusal> {
    let leader = ctx.shared.leader();
    if leader != from {
        return Err(Refusal::SnapshotNotFromLeader { from, leader });
    }
    if !known(
        &ctx.shared.membership(),
        &ctx.listed,
        &ctx.shared.vouched(),
        from,
    ) {
        return Err(Refusal::SnapshotFromStranger(from));
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

/// Counts the bytes read from a peer's connection, in the peer's series
/// if it has one.
struct Counted {
    stream: PeerStream,
    peer: Option<Arc<PeerMetrics>>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        if let Some(p) = &self.peer {
            p.received(n as u64);
        }
        Ok(n)
    }
}

/// The metrics series of node `from`: only a known id has one, so that
/// the series are bounded by the configuration, not by who dials.
fn series(m: &Membership, from: NodeId, ctx: &Context) -> Option<Arc<PeerMetrics>> {
    known(m, &ctx.listed, &ctx.shared.vouched(), from).then(|| ctx.metrics.peer(from))
}

fn read_loop(stream: PeerStream, from: NodeId, ctx: &Context) -> Result<(), Refusal> {
    let counted = Counted {
        stream,
        peer: series(&ctx.shared.membership(), from, ctx),
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
            let m = ctx.shared.membership();
            if m.removed.contains(&from) {
                return Err(Refusal::RemovedMeanwhile(from));
            }
            // A newcomer that became a member is counted from now on.
            r.get_mut().peer = series(&m, from, ctx);
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
            if let (MessageBody::HeartbeatResponse { .. }, Some(p)) = (&m.body, &r.get_ref().peer) {
                p.heartbeat_answered();
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
    use crate::bell::Bell;
    use crate::raft::SnapshotMeta;

    #[test]
    fn a_snapshot_comes_only_from_the_followed_leader_and_only_from_a_known_one() {
        let dir = std::env::temp_dir().join(format!("raftnode-admit-snap-{}", std::process::id()));
        let shared = Arc::new(Shared::default());
        shared.publish_membership(Membership {
            cluster_id: 7,
            members: [1, 2, 3].into(),
            removed: BTreeSet::new(),
        });
        let (tx, _rx) = crossbeam_channel::unbounded();
        let ctx = Context {
            me: 2,
            tls: None,
            listed: [1, 2, 3, 9].into(),
            inbound: Arc::new(Bell::default()).waking(tx),
            inbox: Arc::new(Inbox::new(dir.clone())),
            shared: shared.clone(),
            metrics: Arc::default(),
            seats: Mutex::default(),
        };
        let header = |from| SnapshotHeader {
            from,
            to: 2,
            term: 5,
            meta: SnapshotMeta::default(),
            total: 0,
        };
        shared.set_leader(3);
        assert!(
            admit_snapshot(&header(3), 3, &ctx).is_ok(),
            "the leader, a member"
        );
        let r = admit_snapshot(&header(1), 1, &ctx);
        assert!(
            matches!(
                r,
                Err(Refusal::SnapshotNotFromLeader { from: 1, leader: 3 })
            ),
            "{r:?}"
        );
        shared.set_leader(9);
        assert!(
            admit_snapshot(&header(9), 9, &ctx).is_ok(),
            "the leader, in --peers"
        );
        // A newcomer this node follows as leader (it let it in for the
        // cluster ID, and the core heard it) still sends no snapshot.
        shared.set_leader(99);
        let r = admit_snapshot(&header(99), 99, &ctx);
        assert!(matches!(r, Err(Refusal::SnapshotFromStranger(99))), "{r:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

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
