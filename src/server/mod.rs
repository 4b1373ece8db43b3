//! The client server: the line protocol of `docs/PROTOCOL.md` §2, on one
//! I/O thread for every connection.
//!
//! The thread waits on `epoll` (through `mio`) for three things: new
//! connections, bytes from clients, and replies (the [`Outbox`] wakes it).
//! Each round it
//!
//! 1. accepts (over `--max-clients`, a connection gets `ERR BUSY` and is
//!    closed);
//! 2. reads complete request lines from every readable connection that has
//!    room (`conn.rs` bounds what a client can make the node hold) and
//!    starts each request: PING, STATUS and errors at once, writes and reads
//!    into one batch for the node thread;
//! 3. hands the whole batch to the node thread in one channel send;
//! 4. puts the replies that arrived into their connections' slots, answers
//!    requests whose deadline passed with `ERR TIMEOUT` (or `ERR NO_LEADER`),
//!    and writes every connection's answered replies in request order.
//!
//! No thread is woken per request: a burst of pipelined requests costs one
//! read, one channel send and one write, and a Ready that answers many
//! requests wakes this thread once. A Ready that answers only a few, while
//! this thread sleeps in `epoll`, does not wake it at all: the ready thread
//! writes those replies itself ([`IoState::deliver`]). Everything but the
//! poll lives in [`IoState`] under one lock, which this thread holds for a
//! whole round and another thread only ever tries.
//!
//! Before a connection may do anything else, it completes TLS (with
//! `--cert-file`) and, with `--auth-token-file`, sends `AUTH <token>`: any
//! other first request gets `ERR NOAUTH`. The token is compared in constant
//! time. A wrong token is answered [`AUTH_FAIL_DELAY`] later (a timer of
//! this thread's poll loop, which never sleeps) and closes the connection,
//! and it sets its address back: `guard.rs` refuses that address's next
//! attempts, unchecked, for a time that doubles with each failure.
//!
//! **Connections that do not authenticate lose their slot.** Until it has
//! finished the TLS handshake and `AUTH` (what of the two is configured),
//! a connection is *unauthenticated*: it is counted apart, and closed if it
//! is not done within [`AUTH_DEADLINE`] of its accept. When `--max-clients`
//! connections are open, a new one evicts the oldest unauthenticated
//! connection; only when every open connection is authenticated is it
//! refused with `ERR BUSY`. So connections that never authenticate cannot
//! keep an authenticated client out. Line and RESP connections count
//! alike. With neither TLS nor a token, every connection is authenticated
//! from its accept.
//!
//! A connection reads its own writes: a `GET` waits, with everything read
//! after it, until the connection's earlier writes are answered.
//!
//! When the node stops, new connections and requests are refused with
//! `ERR UNAVAILABLE`, and [`Server::close`] stops reading every connection
//! so the last answers can be written out.
//!
//! With `--resp-addr`, a second listener takes Redis clients into the same
//! thread: their connections frame RESP2 requests instead of lines and map
//! them onto the same requests (`resp.rs`), so that everything above holds
//! for them too.

mod conn;
mod guard;
mod resp;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::io::{self, Write};
use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::bell::Waking;
use crate::kv::{encode_command, encode_conf_context, Command, RequestId};
use crate::metrics::{ClientMetrics, Cmd};
use crate::policy::NodeRequest;
use crate::protocol::{self, ErrorCode, Framed, Reply, Request, SessionSecret, MAX_LINE};
use crate::raft::{ConfChange, ConfChangeKind, NodeId};
use crate::reads::Query;
use crate::reply::{Addressee, Outbox, ReplyTx};
use crate::sessions::SessionLimits;
use crate::shared::Shared;
use crate::tls::ClientTls;
use conn::{Conn, Deferred, Incoming, Slot, Waiting};
use guard::{Admission, AuthGuard};
use resp::Shape;

pub use conn::{MAX_IN_FLIGHT, OUTPUT_LIMIT};
pub use resp::REDIS_VERSION;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const RESP_LISTENER: Token = Token(2);
const FIRST_CONN: usize = 3;

/// How long a connection may take, from its accept, to finish the TLS
/// handshake and `AUTH` (where configured) before it is closed.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// How long after a refused `AUTH` its answer is written and the
/// connection closed.
pub const AUTH_FAIL_DELAY: Duration = Duration::from_millis(500);
/// The shortest `--auth-token-file` token a node starts with.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why an `AUTH` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthRefusal {
    /// No `--auth-token-file`.
    NoToken,
    /// The token was checked and is wrong.
    Wrong,
    /// The address failed too recently: refused without a check, for this
    /// much longer.
    TooSoon(Duration),
}

impl std::fmt::Display for AuthRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthRefusal::NoToken => f.write_str("no auth token is configured"),
            AuthRefusal::Wrong => f.write_str("wrong token; closing the connection"),
            AuthRefusal::TooSoon(w) => write!(
                f,
                "too many wrong tokens from this address: AUTH is refused unchecked for \
                 another {} ms; closing the connection",
                w.as_millis().max(1)
            ),
        }
    }
}

/// Something the I/O thread must do at a set time.
enum Timer {
    /// Fill slot `seq` of connection `token` (a refused `AUTH`'s answer).
    Answer {
        token: usize,
        seq: u64,
        reply: Reply,
    },
    /// Close connection `token` if it is still unauthenticated.
    AuthDeadline { token: usize },
}

/// How the client server is set up.
pub struct Config {
    pub id: NodeId,
    /// Requests for the node thread, a batch at a time.
    pub requests: Waking<Vec<NodeRequest>>,
    /// STATUS requests for the node thread.
    pub status: Waking<ReplyTx>,
    /// SNAPSHOT requests for the ready thread.
    pub snapshots: Sender<ReplyTx>,
    pub shared: Arc<Shared>,
    /// Where requests and connections are counted.
    pub metrics: Arc<ClientMetrics>,
    /// `--request-timeout-ms`.
    pub timeout: Duration,
    /// `--cert-file`/`--key-file` (and client certificates).
    pub tls: Option<Arc<ClientTls>>,
    /// `--auth-token-file`: the token `AUTH` must present.
    pub auth_token: Option<Vec<u8>>,
    /// `--max-clients` (line and RESP connections together).
    pub max_clients: usize,
    /// `--session-ttl-ms` and `--max-sessions`, put into every session
    /// this node registers.
    pub session_limits: SessionLimits,
    /// `--resp-addr`, already bound: Redis clients (RESP2).
    pub resp: Option<StdListener>,
    /// Raft address of each member named in `--peers`, for RESP's `INFO`.
    pub raft_addrs: Arc<BTreeMap<NodeId, String>>,
}

/// The running client server.
pub struct Server {
    outbox: Arc<Outbox>,
    close: Sender<Sender<()>>,
}

impl Server {
    /// Where replies to this server's clients go; the ready thread holds
    /// it while it applies a batch (`Outbox::hold`).
    pub fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// Stops reading from every connection (requests already read are
    /// still answered) and waits up to `within` for them to be written out
    /// and closed.
    pub fn close(&self, within: Duration) {
        let (done_tx, done_rx) = bounded(1);
        if self.close.send(done_tx).is_ok() {
            self.outbox.nudge();
            let _ = done_rx.recv_timeout(within);
        }
    }
}

/// Starts serving clients on an already bound listener (and Redis clients
/// on `cfg.resp`).
pub fn serve(listener: StdListener, mut cfg: Config) -> io::Result<Server> {
    info!(
        "serving clients on {} ({}{})",
        listener.local_addr()?,
        if cfg.tls.is_some() {
            "TLS"
        } else {
            "plain TCP"
        },
        if cfg.auth_token.is_some() {
            ", AUTH required"
        } else {
            ""
        }
    );
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut resp_port = 0;
    let resp_listener = match cfg.resp.take() {
        Some(l) => {
            info!("serving Redis clients (RESP2) on {}", l.local_addr()?);
            resp_port = l.local_addr()?.port();
            l.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, RESP_LISTENER, Interest::READABLE)?;
            Some(l)
        }
        None => None,
    };
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let outbox = Arc::new(Outbox::new(move || {
        let _ = waker.wake();
    }));
    let (close_tx, close_rx) = bounded(1);
    let state = Arc::new(Mutex::new(IoState {
        registry: poll.registry().try_clone()?,
        listener,
        resp_listener,
        resp_port,
        started: Instant::now(),
        conns: HashMap::new(),
        next_token: FIRST_CONN,
        outbox: outbox.clone(),
        cfg,
        deadlines: BinaryHeap::new(),
        batch: Vec::new(),
        close: close_rx,
        closing: None,
        delivered: Vec::new(),
        to_pump: Vec::new(),
        timers: BTreeMap::new(),
        timer_seq: 0,
        unauthenticated: BTreeSet::new(),
        guard: AuthGuard::default(),
    }));
    // A thread that answers a few requests while the I/O thread sleeps
    // writes them itself (`IoState::deliver`).
    let st = state.clone();
    outbox.set_direct(move || match st.try_lock() {
        Ok(mut st) => st.deliver(),
        Err(_) => false,
    });
    let mut io = IoThread { poll, state };
    thread::Builder::new()
        .name("client-io".into())
        .spawn(move || io.run())?;
    Ok(Server {
        outbox,
        close: close_tx,
    })
}

/// Why a request gets `ERR NO_LEADER` before the data dir is open.
const STARTING: &str = "this node is starting: it opens its data dir, or, as a member of a new \
                        cluster, waits until every member in --peers has been started once \
                        (its log says which); try again or ask another member";

fn shutting_down() -> Reply {
    Reply::error(ErrorCode::Unavailable, "node is shutting down")
}

/// Whether `given` is the `expected` token, in time that depends only on
/// the expected token's length: every byte is compared, wherever the first
/// difference is.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, &e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

/// A fresh session secret from the OS's secure random source (through
/// ring, which rustls already links); `None` if the OS gave none.
fn draw_secret() -> Option<SessionSecret> {
    let mut secret = SessionSecret::default();
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut secret)
        .ok()?;
    Some(secret)
}

/// The client I/O thread: it sleeps in `poll` and does everything else
/// under the state's lock, which it holds for a whole round.
struct IoThread {
    poll: Poll,
    state: Arc<Mutex<IoState>>,
}

/// Everything of the client server but the poll.
struct IoState {
    registry: Registry,
    listener: TcpListener,
    /// `--resp-addr`: Redis clients.
    resp_listener: Option<TcpListener>,
    resp_port: u16,
    started: Instant,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    outbox: Arc<Outbox>,
    cfg: Config,
    /// Request deadlines: (when, connection, sequence).
    deadlines: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Requests for the node thread, sent once per round.
    batch: Vec<NodeRequest>,
    close: Receiver<Sender<()>>,
    /// Set once the node is stopping: who to tell when all is written.
    closing: Option<Sender<()>>,
    /// Replies taken from the outbox (kept for its capacity).
    delivered: Vec<(Addressee, Reply)>,
    /// Connections a direct delivery left for the I/O thread to move on.
    to_pump: Vec<usize>,
    /// What is due when, in order; the `u64` tells apart timers due at once.
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    /// Connections that have not finished TLS and `AUTH` yet, by token:
    /// tokens grow, so the first is the oldest.
    unauthenticated: BTreeSet<usize>,
    /// Failed `AUTH` attempts per address.
    guard: AuthGuard,
}

fn lock(m: &Mutex<IoState>) -> MutexGuard<'_, IoState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IoThread {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = lock(&self.state).next_deadline();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("client poll failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if lock(&self.state).round(&events) {
                return;
            }
        }
    }
}

impl IoState {
    /// How long the poll may sleep: until the next request deadline or
    /// timer.
    fn next_deadline(&self) -> Option<Duration> {
        let request = self.deadlines.peek().map(|Reverse((t, _, _))| *t);
        let timer = self.timers.keys().next().map(|(t, _)| *t);
        let next = match (request, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn add_timer(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    /// Runs the timers that are due.
    fn fire_timers(&mut self, answered: &mut Vec<usize>) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Timer::Answer { token, seq, reply } => {
                    if let Some(c) = self.conns.get_mut(&token) {
                        c.fill(seq, reply);
                        answered.push(token);
                    }
                }
                Timer::AuthDeadline { token } => {
                    if self.unauthenticated.contains(&token) {
                        self.drop_conn(token, "did not authenticate in time");
                    }
                }
            }
        }
    }

    /// Closes connection `token` at once, whatever it still owes (only
    /// unauthenticated connections, which owe nothing the node holds).
    fn drop_conn(&mut self, token: usize, why: &str) {
        self.unauthenticated.remove(&token);
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = self.registry.deregister(&mut c.sock);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
            debug!("client {} closed: {why}", c.peer);
        }
    }

    /// Checks `given` against the token for connection `c`, if its
    /// address may try now; on success the connection is authenticated.
    fn check_token(&mut self, c: &mut Conn, given: &[u8]) -> Result<(), AuthRefusal> {
        let Some(expected) = &self.cfg.auth_token else {
            return Err(AuthRefusal::NoToken);
        };
        let now = Instant::now();
        match self.guard.admit(c.ip, now) {
            Admission::Wait(w) => {
                crate::warn_every!(
                    "client-auth-throttled",
                    "client {} tried AUTH again too soon after wrong tokens; refused unchecked",
                    c.peer
                );
                Err(AuthRefusal::TooSoon(w))
            }
            Admission::Check if same_token(given, expected) => {
                self.guard.succeeded(c.ip);
                c.authed = true;
                Ok(())
            }
            Admission::Check => {
                self.guard.failed(c.ip, now);
                crate::warn_every!("client-auth", "client {} sent a wrong token", c.peer);
                Err(AuthRefusal::Wrong)
            }
        }
    }

    /// Opens a slot for a refused `AUTH` and answers it with `slot`'s
    /// reply [`AUTH_FAIL_DELAY`] from now; the connection reads nothing
    /// more and closes once that is written.
    fn refuse_later(&mut self, c: &mut Conn, token: usize, mut slot: Slot) {
        let reply = slot.reply.take().unwrap_or(Reply::Ok);
        let seq = c.open_slot(slot);
        c.close_when_flushed = true;
        self.add_timer(
            Instant::now() + AUTH_FAIL_DELAY,
            Timer::Answer { token, seq, reply },
        );
    }

    /// Puts the replies waiting in the outbox into their connections'
    /// slots, and adds those connections to `answered`.
    fn take_replies(&mut self, answered: &mut Vec<usize>) {
        let mut replies = std::mem::take(&mut self.delivered);
        self.outbox.drain(&mut replies);
        for (to, reply) in replies.drain(..) {
            if let Some(c) = self.conns.get_mut(&to.conn) {
                c.fill(to.seq, reply);
                answered.push(to.conn);
            }
        }
        self.delivered = replies;
    }

    /// Writes the replies in the outbox from the calling thread, while the
    /// I/O thread sleeps: a reply then costs no wake-up of the I/O thread,
    /// one thread hand-off fewer on every request's path. Returns false if
    /// the I/O thread must still look: a connection that waits to start a
    /// deferred request, has bytes it could not write, broke, or is to be
    /// closed; the caller then wakes it.
    fn deliver(&mut self) -> bool {
        let mut answered = Vec::new();
        self.take_replies(&mut answered);
        answered.sort_unstable();
        answered.dedup();
        let mut done = true;
        for t in answered {
            let Some(c) = self.conns.get_mut(&t) else {
                continue;
            };
            if c.flush(&self.cfg.metrics).is_err()
                || c.deferred.is_some()
                || c.close_when_flushed
                || c.read_closed
                || !c.output_empty()
            {
                self.to_pump.push(t);
                done = false;
            }
        }
        done
    }

    /// One round after a poll; true when the server has closed.
    fn round(&mut self, events: &Events) -> bool {
        let mut touched = Vec::new();
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept(false),
                RESP_LISTENER => self.accept(true),
                WAKER => {}
                Token(t) => {
                    if let Some(c) = self.conns.get_mut(&t) {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.maybe_readable = true;
                        }
                        if ev.is_read_closed() || ev.is_error() {
                            c.peer_closed = true;
                        }
                        touched.push(t);
                    }
                }
            }
        }
        if self.closing.is_none() {
            if let Ok(done) = self.close.try_recv() {
                self.begin_close(done);
            }
        }
        for t in touched {
            self.pump(t);
        }
        // Connections a direct delivery left, and those answered now.
        let mut answered = std::mem::take(&mut self.to_pump);
        self.take_replies(&mut answered);
        self.expire(&mut answered);
        self.fire_timers(&mut answered);
        answered.sort_unstable();
        answered.dedup();
        for t in answered {
            // A deferred GET or a full connection may go on now.
            self.pump(t);
        }
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            if self.cfg.requests.send(batch).is_err() {
                debug!("the node thread is gone");
            }
        }
        self.cfg.metrics.set_connections(self.conns.len());
        if let Some(done) = &self.closing {
            if self.conns.is_empty() {
                let _ = done.send(());
                return true;
            }
        }
        false
    }

    /// Accepts every waiting connection, of the line port or (`resp`) the
    /// RESP port.
    fn accept(&mut self, resp: bool) {
        loop {
            let accepted = match (resp, &self.resp_listener) {
                (false, _) => self.listener.accept(),
                (true, Some(l)) => l.accept(),
                (true, None) => return,
            };
            let (mut sock, addr) = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    crate::warn_every!("client-accept", "accepting a client failed: {e}");
                    return;
                }
            };
            let plain = self.cfg.tls.is_none();
            if self.closing.is_some() || self.cfg.shared.stopping() {
                refuse(&mut sock, plain, resp, &shutting_down());
                continue;
            }
            if self.conns.len() >= self.cfg.max_clients {
                if let Some(&oldest) = self.unauthenticated.first() {
                    crate::warn_every!(
                        "client-evict",
                        "--max-clients reached: closing the oldest connection that has not \
                         authenticated yet to take client {addr}"
                    );
                    self.drop_conn(oldest, "evicted for a new connection");
                }
            }
            if self.conns.len() >= self.cfg.max_clients {
                crate::warn_every!(
                    "client-busy",
                    "refused client {addr}: {} clients are connected (--max-clients)",
                    self.conns.len()
                );
                let msg = format!(
                    "too many clients ({} connected, --max-clients)",
                    self.conns.len()
                );
                refuse(&mut sock, plain, resp, &Reply::error(ErrorCode::Busy, msg));
                continue;
            }
            let _ = sock.set_nodelay(true);
            let tls = match &self.cfg.tls {
                Some(t) => match rustls::ServerConnection::new(t.config.clone()) {
                    Ok(mut c) => {
                        c.set_buffer_limit(Some(256 << 10));
                        Some(Box::new(c))
                    }
                    Err(e) => {
                        warn!("cannot start TLS for client {addr}: {e}");
                        continue;
                    }
                },
                None => None,
            };
            let token = self.next_token;
            self.next_token += 1;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.registry.register(&mut sock, Token(token), interest) {
                warn!("cannot watch client {addr}: {e}");
                continue;
            }
            debug!("client {addr} connected");
            let authed = self.cfg.auth_token.is_none();
            if self.cfg.tls.is_some() || !authed {
                self.unauthenticated.insert(token);
                self.add_timer(
                    Instant::now() + AUTH_DEADLINE,
                    Timer::AuthDeadline { token },
                );
            }
            self.conns
                .insert(token, Conn::new(sock, tls, addr, authed, resp));
        }
    }

    /// Stops reading every connection; the loop ends once all are written
    /// out and closed.
    fn begin_close(&mut self, done: Sender<()>) {
        for c in self.conns.values_mut() {
            c.read_closed = true;
        }
        self.closing = Some(done);
        let tokens: Vec<usize> = self.conns.keys().copied().collect();
        for t in tokens {
            self.pump(t);
        }
    }

    /// Moves one connection along: reads and starts what it may, writes
    /// what is answered, closes it when it is done.
    fn pump(&mut self, token: usize) {
        let Some(mut c) = self.conns.remove(&token) else {
            return;
        };
        let now = Instant::now();
        let mut broken = false;
        // A request waiting for this connection's writes (a read) or its
        // session open goes first.
        if c.deferred_ready() {
            if let Some(d) = c.deferred.take() {
                self.start_deferred(&mut c, token, d);
            }
        }
        loop {
            let mut full = false;
            loop {
                if !c.accepting() {
                    full = true;
                    break;
                }
                match c.next_input() {
                    Ok(Some(Incoming::Line(Framed::Line(line)))) => {
                        self.start(&mut c, token, &line, now)
                    }
                    Ok(Some(Incoming::Line(Framed::TooLong))) => {
                        c.begin(Cmd::Invalid, now);
                        let msg =
                            format!("line longer than {MAX_LINE} bytes; closing the connection");
                        c.open_slot(answered(Reply::error(ErrorCode::BadRequest, msg)));
                        c.close_when_flushed = true;
                    }
                    Ok(Some(Incoming::Resp(Ok(args)))) => self.start_resp(&mut c, token, args, now),
                    Ok(Some(Incoming::Resp(Err(e)))) => {
                        debug!("client {}: {e}", c.peer);
                        c.open_slot(resp::protocol_error(&e));
                        c.close_when_flushed = true;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!("client {}: {e}", c.peer);
                        broken = true;
                        break;
                    }
                }
            }
            if !broken {
                if let Err(e) = c.flush(&self.cfg.metrics) {
                    debug!("client {}: {e}", c.peer);
                    broken = true;
                }
            }
            // Writing may have made room to read again. Polling is
            // edge-triggered: no event will say so for bytes already
            // waiting in the socket, so read on now.
            if broken || !full || !c.accepting() {
                break;
            }
        }
        let done = c.drained() && (c.read_closed || c.close_when_flushed);
        if c.authenticated() {
            self.unauthenticated.remove(&token);
        }
        if broken || done {
            self.unauthenticated.remove(&token);
            if !broken {
                c.close_tls();
            }
            let _ = self.registry.deregister(&mut c.sock);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
            debug!("client {} disconnected", c.peer);
            return;
        }
        self.conns.insert(token, c);
    }

    /// Answers requests whose deadline passed.
    fn expire(&mut self, answered: &mut Vec<usize>) {
        let now = Instant::now();
        while let Some(Reverse((t, token, seq))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let Some(c) = self.conns.get_mut(&token) else {
                continue;
            };
            let reply = if self.cfg.shared.has_leader() {
                Reply::error(
                    ErrorCode::Timeout,
                    "request timed out; the outcome is unknown",
                )
            } else {
                Reply::error(
                    ErrorCode::NoLeader,
                    "no leader is known; the outcome is unknown",
                )
            };
            let (took, pending_id) = c.fill(seq, reply);
            if took {
                if let Some(id) = pending_id {
                    self.cfg.shared.pending().forget(id);
                }
                answered.push(token);
            }
        }
    }

    fn reply_to(&self, token: usize, seq: u64) -> ReplyTx {
        ReplyTx::new(self.outbox.clone(), Addressee { conn: token, seq })
    }

    /// Opens a slot that a later reply fills, due by `deadline`, written
    /// as `shape` says.
    fn await_reply(
        &mut self,
        c: &mut Conn,
        token: usize,
        write: bool,
        shape: Shape,
        deadline: Instant,
    ) -> (u64, ReplyTx) {
        let seq = c.open_slot(Slot {
            reply: None,
            pending_id: None,
            write,
            opens_session: false,
            meta: None,
            shape,
        });
        self.deadlines.push(Reverse((deadline, token, seq)));
        (seq, self.reply_to(token, seq))
    }

    /// The answer to `req` before the data dir is open, when no Raft runs
    /// yet: `PING` and `STATUS` are answered (liveness, and a local view
    /// that says `starting=1`), everything else gets `ERR NO_LEADER` at once
    /// instead of waiting, and nothing is queued for later.
    fn while_starting(&self, req: &Request) -> Reply {
        match req {
            Request::Ping => Reply::Pong,
            Request::Status => Reply::Status(self.starting_status()),
            _ => Reply::error(ErrorCode::NoLeader, STARTING),
        }
    }

    /// The STATUS line of a node that has not opened its data dir: no term,
    /// no log, no leader; `members` are the ids of `--peers`.
    fn starting_status(&self) -> String {
        let peers: Vec<String> = self
            .cfg
            .raft_addrs
            .keys()
            .map(|id| id.to_string())
            .collect();
        format!(
            "STATUS id={} role=follower term=0 leader=0 commit=0 applied=0 last=0 snapshot=0 \
             members={} starting=1",
            self.cfg.id,
            peers.join(",")
        )
    }

    /// Starts one request line.
    fn start(&mut self, c: &mut Conn, token: usize, line: &[u8], now: Instant) {
        let parsed = protocol::parse(line);
        c.begin(parsed.as_ref().map_or(Cmd::Invalid, Cmd::of), now);
        let req = match parsed {
            Ok(r) => r,
            Err(e) if c.authed => {
                c.open_slot(answered(Reply::error(ErrorCode::BadRequest, e.to_string())));
                return;
            }
            Err(_) => {
                c.open_slot(answered(noauth()));
                return;
            }
        };
        if let Request::Auth { token: given } = &req {
            if self.cfg.auth_token.is_none() {
                let msg = "no auth token is configured";
                c.open_slot(answered(Reply::error(ErrorCode::BadRequest, msg)));
                return;
            }
            match self.check_token(c, given) {
                Ok(()) => {
                    c.open_slot(answered(Reply::Ok));
                }
                Err(why) => {
                    let reply = Reply::error(ErrorCode::NoAuth, why.to_string());
                    self.refuse_later(c, token, answered(reply));
                }
            }
            return;
        }
        if !c.authed {
            c.open_slot(answered(noauth()));
            return;
        }
        if !self.cfg.shared.started() {
            c.open_slot(answered(self.while_starting(&req)));
            return;
        }
        let local = matches!(req, Request::Ping | Request::Status);
        if !local && self.cfg.shared.stopping() {
            c.open_slot(answered(shutting_down()));
            return;
        }
        if !local && self.cfg.shared.removed() {
            let msg = "this node was removed from the cluster; use another member";
            c.open_slot(answered(Reply::error(ErrorCode::Removed, msg)));
            return;
        }
        let deadline = now + self.cfg.timeout;
        match req {
            Request::Ping => {
                c.open_slot(answered(Reply::Pong));
            }
            Request::Auth { .. } => {} // handled above
            Request::Status => {
                let (seq, tx) = self.await_reply(c, token, false, Shape::Line, deadline);
                if self.cfg.status.send(tx).is_err() {
                    c.fill(seq, shutting_down());
                }
            }
            Request::Write(cmd) => {
                self.propose(c, token, &cmd, Shape::Line, deadline);
            }
            Request::OpenSession | Request::ResumeSession { .. } | Request::Tagged { .. }
                if c.opening_session =>
            {
                c.deferred = Some(Deferred {
                    waiting: Waiting::Session(req),
                    shape: Shape::Line,
                    deadline,
                    started: now,
                });
            }
            Request::OpenSession | Request::ResumeSession { .. } | Request::Tagged { .. } => {
                self.session_request(c, token, req, deadline)
            }
            Request::Get { key } => {
                self.read_after_writes(c, token, Query::Get(key), Shape::Line, deadline)
            }
            Request::AddNode { id, addr } => {
                // Joins as a learner; the leader promotes it once it caught
                // up, and the reply comes when the promotion is applied.
                self.conf_change(c, token, ConfChangeKind::AddLearner, id, &addr, deadline)
            }
            Request::RemoveNode { id } => {
                self.conf_change(c, token, ConfChangeKind::RemoveNode, id, "", deadline)
            }
            Request::TransferLeader { id } => {
                let (_, tx) = self.await_reply(c, token, false, Shape::Line, deadline);
                self.batch.push(NodeRequest::Transfer {
                    target: id,
                    reply: tx,
                    deadline,
                });
            }
            Request::Snapshot => {
                let (seq, tx) = self.await_reply(c, token, false, Shape::Line, deadline);
                if self.cfg.snapshots.send(tx).is_err() {
                    c.fill(seq, shutting_down());
                }
            }
        }
    }

    /// Proposes a write; its reply comes when it applies, written as
    /// `shape` says.
    pub(super) fn propose(
        &mut self,
        c: &mut Conn,
        token: usize,
        cmd: &Command,
        shape: Shape,
        deadline: Instant,
    ) -> u64 {
        let (seq, tx) = self.await_reply(c, token, true, shape, deadline);
        let id = self.cfg.shared.pending().register(tx);
        c.set_pending_id(seq, id);
        let data = encode_command(
            RequestId {
                node: self.cfg.id,
                seq: id,
            },
            cmd,
        );
        self.batch.push(NodeRequest::Propose { data, id, deadline });
        seq
    }

    /// `SESSION`, `SESSION <id>` or `#<seq> <write>`, with no session open
    /// in flight. All three go through Raft: the session table is part of
    /// the replicated state, so any node answers the same.
    fn session_request(&mut self, c: &mut Conn, token: usize, req: Request, deadline: Instant) {
        match req {
            Request::OpenSession => {
                let Some(secret) = draw_secret() else {
                    let msg = "the OS gave no random bytes for a session secret; try again";
                    c.open_slot(answered(Reply::error(ErrorCode::Internal, msg)));
                    return;
                };
                let cmd = Command::OpenSession {
                    limits: self.cfg.session_limits,
                    secret: Some(secret),
                };
                let seq = self.propose(c, token, &cmd, Shape::Line, deadline);
                c.mark_session_open(seq);
                c.session = None;
                c.opening_session = true;
            }
            Request::ResumeSession { id } => {
                // The connection takes the session only if the resume
                // succeeds (the secret was right): until then, and after a
                // refusal, it has none.
                let cmd = Command::ResumeSession {
                    id: id.index,
                    secret: Some(id.secret),
                };
                let seq = self.propose(c, token, &cmd, Shape::Line, deadline);
                c.mark_session_open(seq);
                c.session = None;
                c.opening_session = true;
                c.resuming = true;
            }
            Request::Tagged { .. } if c.session.is_none() && c.resume_refused => {
                let msg = "this connection's SESSION <id> was refused: the session is unknown \
                           or expired, or the id is wrong; nothing was applied";
                c.open_slot(answered(Reply::error(ErrorCode::SessionExpired, msg)));
            }
            Request::Tagged { seq, cmd } => {
                let Some(session) = c.session else {
                    let msg = "a #<seq> tag needs a session: send SESSION or SESSION <id> first";
                    c.open_slot(answered(Reply::error(ErrorCode::BadRequest, msg)));
                    return;
                };
                if crate::debug::ignore_sessions() {
                    self.propose(c, token, &cmd, Shape::Line, deadline);
                    return;
                }
                let cmd = Command::Tagged {
                    session,
                    seq,
                    cmd: Box::new(cmd),
                };
                self.propose(c, token, &cmd, Shape::Line, deadline);
            }
            _ => {
                let msg = "not a session request";
                c.open_slot(answered(Reply::error(ErrorCode::Internal, msg)));
            }
        }
    }

    /// Starts a deferred request once what it waits for is done.
    fn start_deferred(&mut self, c: &mut Conn, token: usize, d: Deferred) {
        match d.waiting {
            Waiting::Read(query) => {
                c.begin(Cmd::Get, d.started);
                self.read(c, token, query, d.shape, d.deadline);
            }
            Waiting::Session(req) => {
                c.begin(Cmd::of(&req), d.started);
                self.session_request(c, token, req, d.deadline);
            }
        }
    }

    fn read(&mut self, c: &mut Conn, token: usize, query: Query, shape: Shape, deadline: Instant) {
        let (_, tx) = self.await_reply(c, token, false, shape, deadline);
        self.batch.push(NodeRequest::Read {
            query,
            reply: tx,
            deadline,
        });
    }

    fn conf_change(
        &mut self,
        c: &mut Conn,
        token: usize,
        kind: ConfChangeKind,
        node: NodeId,
        addr: &str,
        deadline: Instant,
    ) {
        let (seq, tx) = self.await_reply(c, token, false, Shape::Line, deadline);
        let id = self.cfg.shared.pending().register(tx);
        c.set_pending_id(seq, id);
        let context = encode_conf_context(
            RequestId {
                node: self.cfg.id,
                seq: id,
            },
            addr,
        );
        let cc = ConfChange {
            kind,
            node_id: node,
            context,
        };
        self.batch
            .push(NodeRequest::ConfChange { cc, id, deadline });
    }
}

fn noauth() -> Reply {
    Reply::error(
        ErrorCode::NoAuth,
        "authentication required: send AUTH <token> first",
    )
}

/// A slot of the line protocol answered on the spot.
fn answered(reply: Reply) -> Slot {
    Slot {
        reply: Some(reply),
        pending_id: None,
        write: false,
        opens_session: false,
        meta: None,
        shape: Shape::Line,
    }
}

/// Answers a connection that will not be served with one line or RESP
/// error (a TLS client could not read it, so it is just closed), and
/// closes it; never waits for the client.
fn refuse(sock: &mut TcpStream, plain: bool, resp: bool, reply: &Reply) {
    if plain {
        let mut line = Vec::new();
        match (resp, reply) {
            (true, Reply::Error(ErrorCode::Busy, _)) => {
                crate::resp::write_error(&mut line, "ERR max number of clients reached")
            }
            (true, _) => resp::write_reply(&Shape::Ok, reply, &mut line),
            (false, _) => reply.write_line(&mut line),
        }
        let _ = sock.write(&line);
    }
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3cres", b"s3cret"));
        assert!(!same_token(b"s3cre", b"s3cret"));
        assert!(!same_token(b"s3cret!", b"s3cret"));
        assert!(!same_token(b"", b"s3cret"));
    }
}
