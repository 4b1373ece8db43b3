//! A synchronous client for raftnode's line protocol, on `std::net`.
//!
//! ```no_run
//! use raftnode::client::Client;
//!
//! let mut c = Client::connect(["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"])?;
//! c.put("greeting", "hello world")?;
//! assert_eq!(c.get("greeting")?.as_deref(), Some(&b"hello world"[..]));
//! let n = c.incr("visits")?; // exactly once, even if a node dies meanwhile
//! println!("visit number {n}");
//! # Ok::<(), raftnode::client::Error>(())
//! ```
//!
//! # Endpoints and failover
//!
//! A [`Client`] holds one connection at a time, to one of its endpoints
//! (any node takes any request; a follower forwards writes to the leader).
//! When a connection fails, or the node answers that it cannot serve now
//! (`ERR TIMEOUT`, `NO_LEADER`, `LEADER_CHANGED`, `UNAVAILABLE`,
//! `INTERNAL`, `BUSY`, `REMOVED`), the client drops the connection and
//! tries the next endpoint. After one round of failures it waits between
//! attempts, 20 ms doubling up to 500 ms. Every call has an overall
//! [`deadline`](Builder::deadline) (30 s by default); each connect has a
//! [`connect_timeout`](Builder::connect_timeout) (1 s), each reply a
//! [`request_timeout`](Builder::request_timeout) (6 s, longer than the
//! node's own 5 s `--request-timeout-ms`, so the node's `ERR TIMEOUT`
//! normally comes first).
//!
//! # What is retried, and what that guarantees
//!
//! - **Reads and local commands** (`GET`, `STATUS`, `PING`, `SNAPSHOT`)
//!   change nothing when repeated: they are retried until a definite
//!   answer or the deadline.
//! - **Key-value writes** (`PUT`, `DEL`, `CAS`, `INCR`, `APPEND`) go
//!   through a *session* (the Raft thesis, §6.3). Before its first write
//!   the client opens one (`SESSION` → `SESSION <id>`), then tags each
//!   write with the next sequence number, `#<seq> PUT k v`. The cluster
//!   remembers, per session, the last number it applied and its reply. A
//!   write whose outcome is unknown (a dropped connection, no reply in
//!   time, `ERR TIMEOUT`/`NO_LEADER`/`LEADER_CHANGED`/...) is sent again
//!   with the *same* number, on a new connection that first resumes the
//!   session (`SESSION <id>`), to any node, until a definite answer comes:
//!   the original reply if it had been applied, the write applied now if
//!   it had not. Either way it is applied exactly once. A number is never
//!   used for two different requests.
//! - If the session has expired when a retry arrives (`ERR
//!   SESSION_EXPIRED`), the cluster can no longer say whether the write
//!   was applied, and the client does **not** send it again under a new
//!   session: the call fails with [`Error::OutcomeUnknown`]. Only a write
//!   that was never sent in the old session (the session expired while the
//!   client was idle) goes out in a new one.
//! - If the deadline passes before a definite answer, a write that was
//!   sent fails with [`Error::OutcomeUnknown`]; one that never left the
//!   client fails with the error that stopped it, and was not applied.
//! - **Membership changes and raw lines** (`ADD_NODE`, `REMOVE_NODE`,
//!   `TRANSFER_LEADER`, [`Client::request`]) are not repeatable: they are
//!   retried only while they were certainly not applied (connecting
//!   failed, or the node refused before running them with `ERR BUSY` or
//!   `ERR REMOVED`), and an unknown outcome is [`Error::OutcomeUnknown`].
//! - With [`Builder::sessions`]`(false)` writes are sent untagged, as
//!   plain clients do, and an unknown outcome is reported at once, never
//!   retried.
//!
//! A [`Client`] has at most one request in flight (it takes `&mut self`);
//! use one client per thread. Its session is its own: two clients never
//! share sequence numbers. A session id is `<index>-<32 hex digits>`: the
//! hex digits are a random secret, and only a client that holds the whole
//! id can resume the session, so the id is a credential. [`Session`]'s
//! `Debug` shows the index only; [`Client::open_session`] hands the whole
//! id to its caller, to keep as safely as the auth token.
//!
//! # Refused before sending
//!
//! Keys are 1 to 1024 bytes of UTF-8 without whitespace or control
//! characters; values at most 1 MiB of UTF-8 without `\n` or NUL and not
//! ending in `\r`; the expected value of `CAS` holds no space. Anything
//! else is [`Error::Invalid`] and nothing is sent.
//!
//! # Hostile nodes
//!
//! Replies are read into a buffer of at most 1 MiB + 2 KiB per line and
//! parsed strictly; a reply that breaks the protocol is
//! [`Error::Protocol`] (and the connection is dropped), never a panic.
//!
//! # Security
//!
//! [`Builder::token`] sends `AUTH <token>` first on every connection
//! (nodes run with `--auth-token-file`); [`Builder::tls`] speaks TLS 1.3
//! to nodes run with `--cert-file` (with a client certificate for
//! `--client-cert-auth`).
//!
//! # Not done
//!
//! No pipelining (one request at a time per client), no connection pool,
//! no leader tracking (any node serves any request), no async API.

mod conn;
mod error;
mod reply;
mod request;

use std::thread;
use std::time::{Duration, Instant};

pub use conn::Tls;
pub use error::{Code, Error, Invalid};
pub use reply::{
    parse_reply, ProtocolError, Reply, Role, Status, StatusField, MAX_REPLY_LINE, MAX_SESSION_ID,
};

use conn::Conn;
use request::{Request, Retry};

use crate::raft::NodeId;

/// Shortest and longest wait between attempts, once every endpoint failed.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Settings of a [`Client`]; see the module documentation for their use.
///
/// ```no_run
/// use std::time::Duration;
/// use raftnode::client::Client;
///
/// let mut c = Client::builder(["10.0.0.1:8001", "10.0.0.2:8001"])
///     .connect_timeout(Duration::from_millis(500))
///     .request_timeout(Duration::from_secs(2))
///     .deadline(Duration::from_secs(10))
///     .token("s3cret")
///     .connect()?;
/// c.put("k", "v")?;
/// # Ok::<(), raftnode::client::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    deadline: Duration,
    token: Option<String>,
    tls: Option<Tls>,
    sessions: bool,
}

impl Builder {
    /// How long one TCP connect (and TLS handshake) may take. Default 1 s.
    pub fn connect_timeout(mut self, d: Duration) -> Builder {
        self.connect_timeout = d;
        self
    }

    /// How long one attempt waits for its reply. Default 6 s.
    pub fn request_timeout(mut self, d: Duration) -> Builder {
        self.request_timeout = d;
        self
    }

    /// How long one call may take in all, retries included. Default 30 s.
    pub fn deadline(mut self, d: Duration) -> Builder {
        self.deadline = d;
        self
    }

    /// Sends `AUTH <token>` first on every connection.
    pub fn token(mut self, token: impl Into<String>) -> Builder {
        self.token = Some(token.into());
        self
    }

    /// Speaks TLS 1.3 to every endpoint.
    pub fn tls(mut self, tls: Tls) -> Builder {
        self.tls = Some(tls);
        self
    }

    /// Whether writes go through a session (default) and are retried
    /// safely, or are sent untagged and never retried once sent.
    pub fn sessions(mut self, on: bool) -> Builder {
        self.sessions = on;
        self
    }

    /// The client, not connected yet: the first call connects.
    pub fn build(self) -> Result<Client, Error> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Invalid::NoEndpoints.into());
        }
        if let Some(t) = &self.token {
            if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Invalid::Token.into());
            }
        }
        Ok(Client {
            cfg: self,
            conn: None,
            next: 0,
            session: None,
            retries: 0,
        })
    }

    /// The client, connected to the first endpoint that answers `PING`.
    pub fn connect(self) -> Result<Client, Error> {
        let mut c = self.build()?;
        c.ping()?;
        Ok(c)
    }
}

/// The client's session: its id (secret included, as the node gave it)
/// and the number its next new write gets.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub next_seq: u64,
}

impl std::fmt::Debug for Session {
    /// The id up to its secret: logs and panics never show the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.id.split('-').next().unwrap_or_default();
        f.debug_struct("Session")
            .field("id", &format_args!("{shown}-<secret>"))
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

/// The answer to `CAS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was the expected one and is now the new one.
    Swapped,
    /// The value differs; here is the current one.
    Mismatch(Vec<u8>),
    /// The key does not exist.
    NotFound,
}

/// The members as one node sees them (from its `STATUS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// The node that answered.
    pub seen_by: NodeId,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// One endpoint's answer to `STATUS`, from [`Client::status_each`].
#[derive(Debug)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// The status and the round-trip time of the `STATUS` request (the
    /// connect not included), or why there is none.
    pub result: Result<(Status, Duration), Error>,
}

/// A raftnode client; see the [module documentation](self).
#[derive(Debug)]
pub struct Client {
    cfg: Builder,
    conn: Option<Conn>,
    /// The endpoint the next connection goes to.
    next: usize,
    session: Option<Session>,
    /// Attempts that failed and were retried, over the client's life.
    retries: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("endpoint", &self.endpoint)
            .field(
                "session",
                &self.session.as_ref().map(|id| id.split('-').next()),
            )
            .finish_non_exhaustive()
    }
}

/// What one call has learnt so far.
struct Progress {
    deadline: Instant,
    /// Failed attempts.
    failures: u32,
    /// Whether an earlier attempt may have reached a node and been applied.
    maybe_applied: bool,
    /// Whether the request line went out tagged with the session's number.
    seq_used: bool,
    /// The last failure a node caused, reported if the deadline itself
    /// ends the call.
    last: Option<Error>,
}

/// How one attempt failed: before its request line went out, or after.
struct Failed {
    error: Error,
    sent: bool,
}

impl Failed {
    fn before(error: Error) -> Failed {
        Failed { error, sent: false }
    }
}

/// What a call returns: a parsed reply, or for a raw request the line.
enum Answer {
    Reply(Reply),
    Line(Vec<u8>),
}

impl Client {
    /// A client with default settings, connected to the first of
    /// `endpoints` (`host:port` of the nodes' client ports) that answers.
    pub fn connect<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::builder(endpoints).connect()
    }

    /// Settings to adjust before [`Builder::connect`] or [`Builder::build`].
    pub fn builder<I, S>(endpoints: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Builder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(6),
            deadline: Duration::from_secs(30),
            token: None,
            tls: None,
            sessions: true,
        }
    }

    /// `PUT key value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        let req = Request::put(key.as_ref(), value.as_ref())?;
        match self.call(&req)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// `GET key`: the value, or `None` if the key does not exist.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        let req = Request::get(key.as_ref())?;
        match self.call(&req)? {
            Reply::Value(v) => Ok(Some(v)),
            Reply::NotFound => Ok(None),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// `DEL key`: whether the key existed.
    pub fn del(&mut self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        let req = Request::del(key.as_ref())?;
        match self.call(&req)? {
            Reply::Deleted => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// `CAS key expected new`: sets `new` if the value is `expected`.
    ///
    /// ```no_run
    /// # let mut c = raftnode::client::Client::connect(["127.0.0.1:8001"])?;
    /// use raftnode::client::CasOutcome;
    /// match c.cas("leader-lock", "free", "me")? {
    ///     CasOutcome::Swapped => println!("got it"),
    ///     CasOutcome::Mismatch(holder) => println!("held: {}", String::from_utf8_lossy(&holder)),
    ///     CasOutcome::NotFound => println!("no lock"),
    /// }
    /// # Ok::<(), raftnode::client::Error>(())
    /// ```
    pub fn cas(
        &mut self,
        key: impl AsRef<[u8]>,
        expected: impl AsRef<[u8]>,
        new: impl AsRef<[u8]>,
    ) -> Result<CasOutcome, Error> {
        let req = Request::cas(key.as_ref(), expected.as_ref(), new.as_ref())?;
        match self.call(&req)? {
            Reply::Ok => Ok(CasOutcome::Swapped),
            Reply::Mismatch(v) => Ok(CasOutcome::Mismatch(v)),
            Reply::NotFound => Ok(CasOutcome::NotFound),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// `INCR key`: adds one to a decimal counter (a missing key counts as
    /// 0) and returns the new value.
    pub fn incr(&mut self, key: impl AsRef<[u8]>) -> Result<i64, Error> {
        let req = Request::incr(key.as_ref())?;
        match self.call(&req)? {
            Reply::Value(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(reply::signed)
                .ok_or_else(|| {
                    written(ProtocolError::BadNumber(
                        String::from_utf8_lossy(&v).chars().take(32).collect(),
                    ))
                }),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// `APPEND key value`: appends to the value (a missing key counts as
    /// empty).
    pub fn append(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        let req = Request::append(key.as_ref(), value.as_ref())?;
        match self.call(&req)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// `STATUS` of the node this client is connected to (or reaches next).
    pub fn status(&mut self) -> Result<Status, Error> {
        let req = Request::status();
        match self.call(&req)? {
            Reply::Status(s) => Ok(s),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// `STATUS` of every endpoint, each on a connection of its own, in the
    /// order of the endpoints, with the round-trip time of each. An
    /// endpoint that does not answer within the connect and request
    /// timeouts has an error instead; nothing is retried.
    pub fn status_each(&mut self) -> Vec<EndpointStatus> {
        (0..self.cfg.endpoints.len())
            .map(|i| EndpointStatus {
                endpoint: self.cfg.endpoints[i].clone(),
                result: self.status_of(i),
            })
            .collect()
    }

    fn status_of(&self, i: usize) -> Result<(Status, Duration), Error> {
        let mut conn = self.open(i, Instant::now() + self.cfg.deadline)?;
        let start = Instant::now();
        let reply = conn.exchange(&Request::status().wire(None), self.reply_deadline(start));
        let rtt = start.elapsed();
        conn.close();
        match reply? {
            Reply::Status(s) => Ok((s, rtt)),
            Reply::Err { code, message } => Err(Error::Server { code, message }),
            other => Err(Error::Protocol(ProtocolError::Unexpected(reply::describe(
                &other,
            )))),
        }
    }

    /// The voters, learners and leader, as the node this client reaches
    /// sees them.
    pub fn members(&mut self) -> Result<Members, Error> {
        let s = self.status()?;
        Ok(Members {
            seen_by: s.id,
            leader: s.leader,
            voters: s.members,
            learners: s.learners,
        })
    }

    /// `ADD_NODE id raft_addr`: adds a voter; returns once applied.
    pub fn add_node(&mut self, id: NodeId, raft_addr: &str) -> Result<(), Error> {
        let req = Request::add_node(id, raft_addr)?;
        self.expect_ok(&req)
    }

    /// `REMOVE_NODE id`; returns once applied.
    pub fn remove_node(&mut self, id: NodeId) -> Result<(), Error> {
        let req = Request::remove_node(id)?;
        self.expect_ok(&req)
    }

    /// `TRANSFER_LEADER id`; returns once `id` leads.
    pub fn transfer_leader(&mut self, id: NodeId) -> Result<(), Error> {
        let req = Request::transfer_leader(id)?;
        self.expect_ok(&req)
    }

    /// `SNAPSHOT` on the node this client reaches: the index it covers.
    pub fn snapshot(&mut self) -> Result<u64, Error> {
        let req = Request::snapshot();
        match self.call(&req)? {
            Reply::OkIndex(i) => Ok(i),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// `PING`: whether a node answers.
    pub fn ping(&mut self) -> Result<(), Error> {
        let req = Request::ping();
        match self.call(&req)? {
            Reply::Pong => Ok(()),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Sends one line as it is (without its `\n`) and returns the reply
    /// line as it came, `ERR` lines included. It is never tagged and never
    /// retried once sent.
    ///
    /// ```no_run
    /// # let mut c = raftnode::client::Client::connect(["127.0.0.1:8001"])?;
    /// let line = c.request("STATUS")?;
    /// assert!(line.starts_with(b"STATUS "));
    /// # Ok::<(), raftnode::client::Error>(())
    /// ```
    pub fn request(&mut self, line: &str) -> Result<Vec<u8>, Error> {
        let req = Request::raw(line)?;
        match self.run(&req, true)? {
            Answer::Line(l) => Ok(l),
            Answer::Reply(r) => Ok(reply::describe(&r).into_bytes()),
        }
    }

    /// Opens a session now, if the client has none, and returns its id.
    /// Writes open one by themselves; this only moves the cost earlier.
    pub fn open_session(&mut self) -> Result<String, Error> {
        if self.cfg.sessions {
            // A PING-like round that only attaches the session.
            let deadline = Instant::now() + self.cfg.deadline;
            let mut p = Progress {
                deadline,
                failures: 0,
                maybe_applied: false,
                seq_used: false,
                last: None,
            };
            loop {
                let r = self
                    .connection(deadline)
                    .and_then(|()| self.attach(deadline));
                match r {
                    Ok(_) => break,
                    Err(e) if e.is_transient() => {
                        self.drop_connection();
                        self.backoff(&mut p, e)?
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.session
            .as_ref()
            .map(|s| s.id.clone())
            .ok_or(Error::Invalid(Invalid::SessionsOff))
    }

    /// The client's session, if one is open.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The endpoint of the open connection, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.conn
            .as_ref()
            .map(|c| self.cfg.endpoints[c.endpoint].as_str())
    }

    /// Attempts that failed and were retried, over this client's life.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    fn expect_ok(&mut self, req: &Request) -> Result<(), Error> {
        match self.call(req)? {
            Reply::Ok => Ok(()),
            other => Err(unexpected(req, &other)),
        }
    }

    fn call(&mut self, req: &Request) -> Result<Reply, Error> {
        match self.run(req, false)? {
            Answer::Reply(r) => Ok(r),
            Answer::Line(_) => Err(Error::Protocol(ProtocolError::Unexpected(String::new()))),
        }
    }

    fn reply_deadline(&self, now: Instant) -> Instant {
        now + self.cfg.request_timeout
    }

    /// Opens a connection to endpoint `i` and authenticates it.
    fn open(&self, i: usize, deadline: Instant) -> Result<Conn, Error> {
        let now = Instant::now();
        let connect_by = deadline.min(now + self.cfg.connect_timeout);
        let mut conn = Conn::open(&self.cfg.endpoints[i], i, self.cfg.tls.as_ref(), connect_by)?;
        if let Some(token) = &self.cfg.token {
            let by = deadline.min(self.reply_deadline(Instant::now()));
            match conn.exchange(&Request::auth(token).wire(None), by)? {
                Reply::Ok => {}
                Reply::Err { code, message } => return Err(Error::Server { code, message }),
                other => {
                    return Err(Error::Protocol(ProtocolError::Unexpected(reply::describe(
                        &other,
                    ))))
                }
            }
        }
        Ok(conn)
    }

    /// Makes sure a connection is open, to the next endpoint if none is.
    fn connection(&mut self, deadline: Instant) -> Result<(), Error> {
        if self.conn.is_none() {
            let i = self.next % self.cfg.endpoints.len();
            self.next = i + 1;
            self.conn = Some(self.open(i, deadline)?);
        }
        Ok(())
    }

    /// Drops the connection; the next one goes to the next endpoint.
    fn drop_connection(&mut self) {
        if let Some(c) = self.conn.take() {
            self.next = c.endpoint + 1;
            c.close();
        }
    }

    /// Makes sure the open connection uses the client's session, opening
    /// one if the client has none; returns the next sequence number.
    fn attach(&mut self, deadline: Instant) -> Result<u64, Error> {
        let by = deadline.min(self.reply_deadline(Instant::now()));
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::Io(std::io::ErrorKind::NotConnected.into()));
        };
        let want = self.session.as_ref().map(|s| s.id.clone());
        if want.is_some() && conn.session == want {
            return Ok(self.session.as_ref().map_or(1, |s| s.next_seq));
        }
        let reply = conn.exchange(&Request::session(want.as_deref()).wire(None), by)?;
        let id = match (reply, &want) {
            (Reply::Session(got), Some(w)) if &got == w => got,
            (Reply::Session(_), Some(_)) => return Err(ProtocolError::BadSession.into()),
            (Reply::Session(got), None) => got,
            (Reply::Err { code, message }, _) => return Err(Error::Server { code, message }),
            (other, _) => {
                return Err(Error::Protocol(ProtocolError::Unexpected(reply::describe(
                    &other,
                ))))
            }
        };
        conn.session = Some(id.clone());
        let session = self.session.get_or_insert(Session { id, next_seq: 1 });
        Ok(session.next_seq)
    }

    /// Runs one request to a definite answer or the deadline; see the
    /// module documentation for the rules.
    fn run(&mut self, req: &Request, raw: bool) -> Result<Answer, Error> {
        let tagged = req.retry() == Retry::InSession && self.cfg.sessions;
        let mut p = Progress {
            deadline: Instant::now() + self.cfg.deadline,
            failures: 0,
            maybe_applied: false,
            seq_used: false,
            last: None,
        };
        let result = loop {
            let failed = match self.attempt(req, tagged, raw, &mut p) {
                Ok(answer) => break Ok(answer),
                Err(f) => f,
            };
            if let Err(e) = self.after_failure(req, tagged, &mut p, failed) {
                break Err(e);
            }
        };
        if tagged && p.seq_used {
            // Answered, or given up on: this number is never used again.
            if let Some(s) = self.session.as_mut() {
                s.next_seq += 1;
            }
        }
        result
    }

    /// One attempt: connect if needed, attach the session if tagged, send,
    /// read the reply. An `ERR` reply is a failure here.
    fn attempt(
        &mut self,
        req: &Request,
        tagged: bool,
        raw: bool,
        p: &mut Progress,
    ) -> Result<Answer, Failed> {
        self.connection(p.deadline).map_err(Failed::before)?;
        let seq = match tagged {
            true => Some(self.attach(p.deadline).map_err(Failed::before)?),
            false => None,
        };
        let by = p.deadline.min(self.reply_deadline(Instant::now()));
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failed::before(Error::Io(
                std::io::ErrorKind::NotConnected.into(),
            )));
        };
        p.seq_used |= tagged;
        let sent = |error| Failed { error, sent: true };
        let line = conn.exchange_line(&req.wire(seq), by).map_err(sent)?;
        if raw {
            return Ok(Answer::Line(line));
        }
        match parse_reply(&line).map_err(|e| sent(e.into()))? {
            Reply::Err { code, message } => Err(sent(Error::Server { code, message })),
            reply => Ok(Answer::Reply(reply)),
        }
    }

    /// Decides what a failed attempt means: `Ok` to try again, `Err` to
    /// give up with that error.
    fn after_failure(
        &mut self,
        req: &Request,
        tagged: bool,
        p: &mut Progress,
        f: Failed,
    ) -> Result<(), Error> {
        let write = req.retry() != Retry::Freely;
        let expired = f.error.code() == Some(&Code::SessionExpired);
        if expired && tagged {
            if p.maybe_applied {
                self.session = None;
                return Err(Error::OutcomeUnknown {
                    last: Box::new(f.error),
                });
            }
            // Expired while idle: this write never went out in it, so it
            // may go out in a new session.
            self.session = None;
            p.seq_used = false;
            self.drop_connection();
            return self.backoff(p, f.error);
        }
        let transient = f.error.is_transient();
        let refused = f.error.code().is_some_and(Code::nothing_done);
        if f.sent && write && !refused {
            p.maybe_applied = true;
        }
        if !transient {
            if p.maybe_applied && write {
                return Err(Error::OutcomeUnknown {
                    last: Box::new(f.error),
                });
            }
            return Err(f.error);
        }
        self.drop_connection();
        let retry_safe = !p.maybe_applied || req.retry() == Retry::Freely || tagged;
        if !retry_safe {
            return Err(Error::OutcomeUnknown {
                last: Box::new(f.error),
            });
        }
        self.backoff(p, f.error).map_err(|e| {
            if p.maybe_applied && write {
                Error::OutcomeUnknown { last: Box::new(e) }
            } else {
                e
            }
        })
    }

    /// Counts a failure and waits before the next attempt: not at all while
    /// endpoints of this round are untried, then 20 ms doubling to 500 ms.
    /// `Err(last)` once the deadline leaves no time for another attempt;
    /// if the deadline cut the last attempt short, the failure before it.
    fn backoff(&mut self, p: &mut Progress, last: Error) -> Result<(), Error> {
        p.failures += 1;
        let now = Instant::now();
        if now >= p.deadline {
            return Err(match (last, p.last.take()) {
                (Error::Timeout, Some(earlier)) => earlier,
                (last, _) => last,
            });
        }
        p.last = Some(last);
        self.retries += 1;
        let n = self.cfg.endpoints.len() as u32;
        if p.failures >= n {
            let exp = (p.failures - n).min(8);
            let wait = (BACKOFF_MIN * 2u32.pow(exp)).min(BACKOFF_MAX);
            let wait = wait.min(p.deadline - now);
            thread::sleep(wait);
        }
        Ok(())
    }
}

/// A reply that does not answer `req`: for a write the outcome is unknown.
fn unexpected(req: &Request, reply: &Reply) -> Error {
    let e = Error::Protocol(ProtocolError::Unexpected(reply::describe(reply)));
    match req.retry() {
        Retry::Freely => e,
        Retry::InSession | Retry::Never => Error::OutcomeUnknown { last: Box::new(e) },
    }
}

/// A bad reply to a write that was answered: its outcome is unknown.
fn written(e: ProtocolError) -> Error {
    Error::OutcomeUnknown {
        last: Box::new(Error::Protocol(e)),
    }
}

#[cfg(test)]
mod tests;
