//! One client connection as the I/O thread sees it: bytes in, requests
//! out of them (lines, or RESP2 requests on the `--resp-addr` port),
//! replies in request order, bytes out, each encoded as its request's
//! [`Shape`] says.
//!
//! Every resource a client can make the node hold is bounded:
//! - **input**: a line is executed only once its `\n` has arrived; the
//!   partial line held is at most
//!   [`MAX_LINE`](crate::protocol::MAX_LINE) bytes, and a longer one is
//!   answered `ERR BAD_REQUEST` and closes the connection (the
//!   [`LineFramer`] cuts the lines; a RESP request is bounded the same
//!   way by the [`RespFramer`]);
//! - **requests in flight**: at most [`MAX_IN_FLIGHT`] unanswered;
//! - **output**: replies are serialised only while fewer than
//!   [`OUTPUT_LIMIT`] bytes wait to be sent. Values are shared with the
//!   store until then, so a thousand pipelined reads of a large value hold
//!   a thousand reference counts, not a thousand copies.
//!
//! When in flight or output is full, the connection is not read until the
//! client drains it: TCP then pushes back on the client, as Redis's
//! `client-output-buffer-limit` does.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use rustls::ServerConnection;

use super::resp::{write_reply, Shape};
use crate::metrics::{ClientMetrics, Cmd};
use crate::protocol::{ErrorCode, Framed, LineFramer, Reply, Request};
use crate::reads::Query;
use crate::resp::{ProtocolError, RespFramer};

/// Unanswered requests of one connection, at most.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Serialised, unsent reply bytes of one connection, at most (one reply
/// may go past it).
pub const OUTPUT_LIMIT: usize = 4 << 20;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// The reply owed to one request.
pub struct Slot {
    pub reply: Option<Reply>,
    /// The request's id in [`Pending`](crate::reply::Pending), forgotten
    /// if it times out.
    pub pending_id: Option<u64>,
    /// A write: a later `GET` on this connection waits for it.
    pub write: bool,
    /// A `SESSION` open or resume: its reply sets the connection's session
    /// (none, unless it is `SESSION <id>`).
    pub opens_session: bool,
    /// The request's command and when it was read, for the metrics; set
    /// by [`Conn::open_slot`] from [`Conn::begin`].
    pub meta: Option<(Cmd, Instant)>,
    /// How the reply is written.
    pub shape: Shape,
}

/// A request waiting: a `GET` for this connection's earlier writes to be
/// answered, or a session request for the connection's `SESSION` open.
pub struct Deferred {
    pub waiting: Waiting,
    pub shape: Shape,
    pub deadline: Instant,
    /// When the request was read.
    pub started: Instant,
}

/// What a deferred request is.
pub enum Waiting {
    /// A read, for the connection's writes.
    Read(Query),
    /// `SESSION`, `SESSION <id>` or a tagged write, for the session open.
    Session(Request),
}

/// The request stream of one connection, by the port it came in on.
enum Input {
    Line(LineFramer),
    Resp(RespFramer),
}

/// What [`Conn::next_input`] found.
pub enum Incoming {
    Line(Framed),
    /// A RESP request's arguments, or the error that ends the stream.
    Resp(Result<Vec<Vec<u8>>, ProtocolError>),
}

pub struct Conn {
    pub sock: TcpStream,
    pub tls: Option<Box<ServerConnection>>,
    pub peer: String,
    /// The client's address, which failed `AUTH` attempts count against.
    pub ip: IpAddr,
    /// Whether `AUTH` succeeded (or no token is configured).
    pub authed: bool,
    /// Bytes read and not yet cut into requests.
    input: Input,
    /// RESP's `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    outbuf: Vec<u8>,
    out_pos: usize,
    /// Replies owed, in request order: `slots[0]` is request `first_seq`.
    slots: VecDeque<Slot>,
    first_seq: u64,
    pub writes_in_flight: usize,
    pub deferred: Option<Deferred>,
    /// The socket may have bytes we have not read (edge-triggered polling).
    pub maybe_readable: bool,
    /// A readiness event said the client closed its side: read on to the
    /// end of the stream even after a short read, since no later event
    /// will announce it.
    pub peer_closed: bool,
    /// No more requests will be read: EOF, an error, or a stop.
    pub read_closed: bool,
    /// Close once everything owed is written (a refused or broken client).
    pub close_when_flushed: bool,
    /// The connection's current session (its index), if any: set only by
    /// a `SESSION` reply, so only after the secret was checked.
    pub session: Option<u64>,
    /// A `SESSION` open or resume is in flight: session requests wait
    /// for it.
    pub opening_session: bool,
    /// The request in flight that `opening_session` waits for is a resume.
    pub resuming: bool,
    /// The last session request was a resume refused with
    /// `ERR SESSION_EXPIRED`: tagged writes get that too (not "no
    /// session") until the next session request is answered.
    pub resume_refused: bool,
    /// The request being started: its command and when it was read.
    current: Option<(Cmd, Instant)>,
}

/// What one read from the socket gave.
enum ReadOutcome {
    /// Bytes; `drained` when the socket had no more, so that reading again
    /// before the next readiness event would only return `EAGAIN`.
    Data { drained: bool },
    /// Nothing now: wait for the next readiness event.
    Drained,
    /// The client closed its side.
    End,
}

impl Conn {
    pub fn new(
        sock: TcpStream,
        tls: Option<Box<ServerConnection>>,
        peer: SocketAddr,
        authed: bool,
        resp: bool,
    ) -> Conn {
        Conn {
            sock,
            tls,
            peer: peer.to_string(),
            ip: peer.ip(),
            authed,
            input: if resp {
                Input::Resp(RespFramer::new())
            } else {
                Input::Line(LineFramer::new())
            },
            name: None,
            outbuf: Vec::new(),
            out_pos: 0,
            slots: VecDeque::new(),
            first_seq: 0,
            writes_in_flight: 0,
            deferred: None,
            maybe_readable: true,
            peer_closed: false,
            read_closed: false,
            close_when_flushed: false,
            session: None,
            opening_session: false,
            resuming: false,
            resume_refused: false,
            current: None,
        }
    }

    /// Whether the connection has finished TLS (if any) and `AUTH` (if a
    /// token is configured).
    pub fn authenticated(&self) -> bool {
        self.authed && !self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Whether the deferred request may start now.
    pub fn deferred_ready(&self) -> bool {
        match &self.deferred {
            None => false,
            Some(Deferred {
                waiting: Waiting::Session(_),
                ..
            }) => !self.opening_session,
            Some(_) => self.writes_in_flight == 0,
        }
    }

    /// Names the request whose slot is opened next, for the metrics.
    pub fn begin(&mut self, cmd: Cmd, read_at: Instant) {
        self.current = Some((cmd, read_at));
    }

    /// Whether this connection may take another request now.
    pub fn accepting(&self) -> bool {
        !self.read_closed
            && !self.close_when_flushed
            && self.deferred.is_none()
            && self.slots.len() < MAX_IN_FLIGHT
            && self.outbuf.len() - self.out_pos < OUTPUT_LIMIT
    }

    /// The next complete request (or the news that the stream is bad),
    /// reading from the socket as needed; `None` when there is nothing
    /// more for now.
    pub fn next_input(&mut self) -> io::Result<Option<Incoming>> {
        loop {
            let next = match &mut self.input {
                Input::Line(f) => f.next_line().map(Incoming::Line),
                Input::Resp(f) => f.next_request().map(Incoming::Resp),
            };
            if next.is_some() {
                return Ok(next);
            }
            if self.read_closed || !self.maybe_readable {
                return Ok(None);
            }
            match self.read_some()? {
                ReadOutcome::Data { drained } => {
                    if drained {
                        self.maybe_readable = false;
                    }
                }
                ReadOutcome::Drained => {
                    self.maybe_readable = false;
                    return Ok(None);
                }
                ReadOutcome::End => {
                    // An unterminated last request is never executed.
                    self.read_closed = true;
                    match &mut self.input {
                        Input::Line(f) => f.clear(),
                        Input::Resp(f) => f.clear(),
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Reads what the socket has, up to [`READ_CHUNK`] bytes.
    ///
    /// A plain TCP read that returns less than asked took everything the
    /// socket held (Linux copies the whole receive queue up to the
    /// buffer's size), and bytes arriving after it raise a new readiness
    /// event. So a short read counts as drained, which saves the `recv`
    /// that would only say `EAGAIN`: one system call in three per request
    /// when clients wait for each reply. TLS reads go on to `EAGAIN`,
    /// because rustls may hold decrypted bytes the socket no longer has.
    fn read_some(&mut self) -> io::Result<ReadOutcome> {
        let mut chunk = [0u8; 16 << 10];
        let mut total = 0;
        let mut drained = false;
        while total < READ_CHUNK {
            let n = match self.tls.as_deref_mut() {
                None => match self.sock.read(&mut chunk) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
                Some(tls) => match read_tls(tls, &mut self.sock, &mut chunk)? {
                    Some(n) => n,
                    None => {
                        drained = true;
                        break;
                    }
                },
            };
            if n == 0 {
                return Ok(if total > 0 {
                    ReadOutcome::Data { drained: false }
                } else {
                    ReadOutcome::End
                });
            }
            match &mut self.input {
                Input::Line(f) => f.push(&chunk[..n]),
                Input::Resp(f) => f.push(&chunk[..n]),
            }
            total += n;
            if self.tls.is_none() && n < chunk.len() && !self.peer_closed {
                drained = true;
                break;
            }
        }
        Ok(if total > 0 {
            ReadOutcome::Data { drained }
        } else {
            ReadOutcome::Drained
        })
    }

    /// Opens a slot for the next request; returns its sequence number.
    pub fn open_slot(&mut self, mut slot: Slot) -> u64 {
        slot.meta = self.current.take();
        if slot.write && slot.reply.is_none() {
            self.writes_in_flight += 1;
        }
        self.slots.push_back(slot);
        self.first_seq + self.slots.len() as u64 - 1
    }

    /// Marks slot `seq` as a `SESSION` open (see [`Slot::opens_session`]).
    pub fn mark_session_open(&mut self, seq: u64) {
        if let Some(slot) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| self.slots.get_mut(i as usize))
        {
            slot.opens_session = true;
        }
    }

    /// Records the pending id of the request in slot `seq`.
    pub fn set_pending_id(&mut self, seq: u64, id: u64) {
        if let Some(slot) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| self.slots.get_mut(i as usize))
        {
            slot.pending_id = Some(id);
        }
    }

    /// Fills slot `seq` unless it is filled or gone; returns whether it
    /// took the reply, and the slot's pending id.
    pub fn fill(&mut self, seq: u64, reply: Reply) -> (bool, Option<u64>) {
        let Some(i) = seq.checked_sub(self.first_seq) else {
            return (false, None);
        };
        let Some(slot) = self.slots.get_mut(i as usize) else {
            return (false, None);
        };
        if slot.reply.is_some() {
            return (false, None);
        }
        if slot.opens_session {
            self.opening_session = false;
            self.session = match reply {
                Reply::Session(id) => Some(id.index),
                _ => None,
            };
            // Refused, not merely unanswered (a timeout leaves no session
            // and says nothing of this one).
            let refused = matches!(reply, Reply::Error(ErrorCode::SessionExpired, _));
            self.resume_refused = self.resuming && refused;
            self.resuming = false;
        }
        slot.reply = Some(reply);
        if slot.write {
            self.writes_in_flight -= 1;
        }
        (true, slot.pending_id)
    }

    /// Whether every request read has been answered and written out.
    pub fn drained(&self) -> bool {
        self.slots.is_empty() && self.out_pos == self.outbuf.len() && !self.tls_wants_write()
    }

    /// Whether every serialised reply byte has been written.
    pub fn output_empty(&self) -> bool {
        self.out_pos == self.outbuf.len() && !self.tls_wants_write()
    }

    fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Serialises answered replies in order and writes what the socket
    /// takes. Returns an error when the connection is broken.
    ///
    /// Goes on until the socket is full or no answered reply is left: the
    /// socket signals room again (edge-triggered) only after a write that
    /// did not fit, so stopping at [`OUTPUT_LIMIT`] with everything written
    /// would leave the rest owed for good.
    pub fn flush(&mut self, metrics: &ClientMetrics) -> io::Result<()> {
        let mut now = None;
        loop {
            while self.outbuf.len() - self.out_pos < OUTPUT_LIMIT {
                match self.slots.front() {
                    Some(s) if s.reply.is_some() => {}
                    _ => break,
                }
                if let Some(Slot {
                    reply: Some(reply),
                    meta,
                    shape,
                    ..
                }) = self.slots.pop_front()
                {
                    if let Some((cmd, read_at)) = meta {
                        let now = *now.get_or_insert_with(Instant::now);
                        metrics.replied(cmd, &reply, now.saturating_duration_since(read_at));
                    }
                    // Drop what was written: the buffer holds at most the
                    // unsent bytes, OUTPUT_LIMIT of written ones and a reply.
                    if self.out_pos == self.outbuf.len() || self.out_pos >= OUTPUT_LIMIT {
                        self.outbuf.drain(..self.out_pos);
                        self.out_pos = 0;
                    }
                    write_reply(&shape, &reply, &mut self.outbuf);
                    self.first_seq += 1;
                }
            }
            self.write_out()?;
            let all_written = self.out_pos == self.outbuf.len() && !self.tls_wants_write();
            let more = self.slots.front().is_some_and(|s| s.reply.is_some());
            if !(all_written && more) {
                return Ok(());
            }
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        loop {
            if let Some(tls) = self.tls.as_deref_mut() {
                while tls.wants_write() {
                    match tls.write_tls(&mut self.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if self.out_pos == self.outbuf.len() {
                self.outbuf.clear();
                self.out_pos = 0;
                if self.outbuf.capacity() > OUTPUT_LIMIT * 2 {
                    self.outbuf = Vec::new();
                }
                return Ok(());
            }
            let pending = &self.outbuf[self.out_pos..];
            let n = match self.tls.as_deref_mut() {
                Some(tls) => tls.writer().write(pending)?,
                None => match self.sock.write(pending) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
            };
            if n == 0 {
                if self.tls.is_some() {
                    continue; // rustls's buffer is full: send it first
                }
                return Err(io::Error::new(io::ErrorKind::WriteZero, "client closed"));
            }
            self.out_pos += n;
        }
    }

    /// Starts a TLS close (when the connection is closed by the node).
    pub fn close_tls(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.sock);
        }
    }
}

/// One TLS read: plaintext bytes into `buf`; `Ok(None)` when the socket
/// has nothing more, `Ok(Some(0))` at the end of the stream.
fn read_tls(
    tls: &mut ServerConnection,
    sock: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(0)),
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(0) => return Ok(Some(0)),
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    let _ = tls.write_tls(sock); // the alert, best effort
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
