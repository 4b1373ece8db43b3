//! The client line protocol (`docs/PROTOCOL.md` §2): request lines in,
//! reply lines out.
//!
//! One request per line; tokens separated by one space; the value of `PUT`
//! and the new value of `CAS` are the rest of the line and may contain
//! spaces or be empty. Parsing never fails the connection: every bad line
//! becomes a [`ParseError`] that the server answers with `ERR BAD_REQUEST`.
//! Every request gets exactly one [`Reply`], written by [`Reply::write_line`].
//!
//! [`LineFramer`] cuts a connection's byte stream into those lines: the
//! server pushes what it reads and takes lines out, and the `client_frames`
//! fuzz target drives the same type with bytes cut at random.

use std::fmt;
use std::io::Write;
use std::sync::Arc;

use crate::kv::Command;
use crate::raft::NodeId;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Longest request line, without its `\n`; longer lines close the connection.
pub const MAX_LINE: usize = (1 << 20) + 2048;

/// Bytes of a session's secret: 128 random bits.
pub const SESSION_SECRET_LEN: usize = 16;

/// A session's secret, drawn by the node that proposes the registration.
pub type SessionSecret = [u8; SESSION_SECRET_LEN];

/// A session id as clients hold it: the log index of the entry that
/// registered the session, and the session's random secret. Written
/// `<index>-<32 lowercase hex digits>` (at most 53 printable ASCII bytes);
/// only a client that was given the whole token can resume the session.
/// `Debug` shows the index only, so that logs never carry a secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionId {
    /// The index of the registering entry: unique, and easy to guess.
    pub index: u64,
    /// What makes the id impossible to guess.
    pub secret: SessionSecret,
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}-<secret>)", self.index)
    }
}

impl SessionId {
    /// The token a client sends back: `<index>-<32 hex digits>`.
    pub fn token(&self) -> String {
        let mut s = format!("{}-", self.index);
        for b in self.secret {
            let _ = fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
        }
        s
    }

    /// Reads [`token`](SessionId::token)'s form: a decimal index >= 1,
    /// `-`, and exactly 32 hex digits (either case).
    pub fn parse(tok: &str) -> Option<SessionId> {
        let (index, hex) = tok.split_once('-')?;
        let index = positive(index)?;
        let hex = hex.as_bytes();
        if hex.len() != 2 * SESSION_SECRET_LEN {
            return None;
        }
        let mut secret = [0u8; SESSION_SECRET_LEN];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            secret[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(SessionId { index, secret })
    }

    /// Whether `given` is this session's secret, in time that does not
    /// depend on where they differ.
    pub fn secret_is(&self, given: &SessionSecret) -> bool {
        let diff = self
            .secret
            .iter()
            .zip(given)
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Write(Command),
    Get {
        key: Vec<u8>,
    },
    Status,
    AddNode {
        id: NodeId,
        addr: String,
    },
    RemoveNode {
        id: NodeId,
    },
    TransferLeader {
        id: NodeId,
    },
    Snapshot,
    Ping,
    /// `AUTH <token>`: the first request when `--auth-token-file` is set.
    Auth {
        token: Vec<u8>,
    },
    /// `SESSION`: open a session.
    OpenSession,
    /// `SESSION <id>`: make session `id` this connection's session, if
    /// its secret is right.
    ResumeSession {
        id: SessionId,
    },
    /// `#<seq> <write>`: a write tagged with a sequence number of the
    /// connection's session; `cmd` is a client write, never tagged itself.
    Tagged {
        seq: u64,
        cmd: Command,
    },
}

/// The outcome of a request, as the client will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    OkIndex(u64),
    /// A value, shared with the store rather than copied out of it.
    Value(Arc<[u8]>),
    NotFound,
    Deleted,
    Mismatch(Vec<u8>),
    Pong,
    Status(String),
    /// `SESSION <id>`: a session was opened or resumed.
    Session(SessionId),
    Error(ErrorCode, String),
    /// A count (keys removed, keys present, keys held): only RESP requests
    /// get one.
    Count(u64),
    /// The values of several keys, in request order (RESP's `MGET`).
    Values(Vec<Option<Arc<[u8]>>>),
    /// A conditional write that did not apply (RESP's `SET NX`/`XX`).
    Unchanged,
}

/// The error codes of the client protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Timeout,
    NoLeader,
    /// The leader changed while the request was in flight.
    LeaderChanged,
    /// The request was refused (a conf change is pending, the node is
    /// shutting down, ...).
    Unavailable,
    /// The node failed internally (e.g. a disk error).
    Internal,
    /// The connection has not authenticated (`AUTH <token>` first).
    NoAuth,
    /// Too many clients are connected.
    Busy,
    /// This node was removed from the cluster.
    Removed,
    /// The session is unknown or expired.
    SessionExpired,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::NoLeader => "NO_LEADER",
            ErrorCode::LeaderChanged => "LEADER_CHANGED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::NoAuth => "NOAUTH",
            ErrorCode::Busy => "BUSY",
            ErrorCode::Removed => "REMOVED",
            ErrorCode::SessionExpired => "SESSION_EXPIRED",
        }
    }

    /// Every code, in the order of their stable numbers ([`to_u8`](ErrorCode::to_u8)).
    const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Timeout,
        ErrorCode::NoLeader,
        ErrorCode::LeaderChanged,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::NoAuth,
        ErrorCode::Busy,
        ErrorCode::Removed,
        ErrorCode::SessionExpired,
    ];

    /// A stable number for the code, as snapshots store it (kept replies).
    pub fn to_u8(self) -> u8 {
        ErrorCode::ALL.iter().position(|&c| c == self).unwrap_or(0) as u8
    }

    /// The code numbered `n` by [`to_u8`](ErrorCode::to_u8), if any.
    pub fn from_u8(n: u8) -> Option<ErrorCode> {
        ErrorCode::ALL.get(n as usize).copied()
    }
}

/// The answer, on the line protocol, to a read of a value with a `\n`.
const NEWLINE_IN_VALUE: &[u8] = b"ERR BAD_REQUEST the value holds a newline byte, which the \
    line protocol cannot carry; read it over RESP (--resp-addr)";

impl Reply {
    pub fn error(code: ErrorCode, msg: impl Into<String>) -> Reply {
        Reply::Error(code, msg.into())
    }

    /// Appends the reply line, with its `\n`, to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Ok => out.extend_from_slice(b"OK"),
            Reply::OkIndex(i) => {
                let _ = write!(out, "OK {i}");
            }
            // Written over RESP, which is binary-safe; one line cannot carry it.
            Reply::Value(v) if v.contains(&b'\n') => out.extend_from_slice(NEWLINE_IN_VALUE),
            Reply::Mismatch(v) if v.contains(&b'\n') => out.extend_from_slice(NEWLINE_IN_VALUE),
            Reply::Value(v) => {
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(v);
            }
            Reply::NotFound => out.extend_from_slice(b"NOT_FOUND"),
            Reply::Deleted => out.extend_from_slice(b"DELETED"),
            Reply::Mismatch(v) => {
                out.extend_from_slice(b"MISMATCH ");
                out.extend_from_slice(v);
            }
            Reply::Count(n) => {
                let _ = write!(out, "VALUE {n}");
            }
            Reply::Values(_) | Reply::Unchanged => {
                // No line request is answered with these.
                out.extend_from_slice(b"ERR INTERNAL a RESP reply on the line protocol");
            }
            Reply::Pong => out.extend_from_slice(b"PONG"),
            Reply::Status(s) => out.extend_from_slice(s.as_bytes()),
            Reply::Session(id) => {
                let _ = write!(out, "SESSION {}", id.token());
            }
            Reply::Error(code, msg) => {
                let _ = write!(out, "ERR {} {}", code.as_str(), msg);
            }
        }
        out.push(b'\n');
    }
}

/// What [`LineFramer::next_line`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    /// A complete request line, without its `\n`.
    Line(Vec<u8>),
    /// The next line is longer than the limit ([`MAX_LINE`] for the
    /// server): answer it and close the connection. The framer says so
    /// again on every later call.
    TooLong,
}

/// Cuts a byte stream into request lines, as they arrive.
///
/// - A line ends at `\n` only (a `\r` before it stays in the line, for
///   [`parse`] to ignore), and is handed out only once its `\n` is here.
/// - A line longer than the limit ([`MAX_LINE`] bytes, unless made
///   [`with_limit`](LineFramer::with_limit)) is [`Framed::TooLong`], as
///   soon as one byte more than the limit is held, whether its `\n` came
///   or not.
/// - What is left unterminated when the stream ends is never a line: the
///   caller drops the framer (or [`clear`](LineFramer::clear)s it).
///
/// The caller pushes more bytes only when [`next_line`](LineFramer::next_line)
/// returns `None`; then the framer holds at most the limit, plus the chunk
/// pushed next. The work is linear in the bytes pushed, however they are
/// cut: each byte is searched for `\n` once (a line trickled a byte at a
/// time is not rescanned), and lines handed out are not moved out of the
/// buffer one by one (64 KiB of empty lines would move 2 GB) but dropped
/// together once no whole line is left.
#[derive(Debug)]
pub struct LineFramer {
    /// The longest line, without its `\n`.
    max_line: usize,
    /// Bytes received; those before `start` were handed out as lines.
    buf: Vec<u8>,
    start: usize,
    /// `buf[start..start + scanned]` holds no `\n`: where the search resumes.
    scanned: usize,
}

impl Default for LineFramer {
    fn default() -> LineFramer {
        LineFramer::new()
    }
}

impl LineFramer {
    /// The client protocol's framer: lines of at most [`MAX_LINE`] bytes.
    pub fn new() -> LineFramer {
        LineFramer::with_limit(MAX_LINE)
    }

    /// A framer for lines of at most `max_line` bytes. The server uses
    /// [`new`](LineFramer::new); the `client_frames` fuzz target uses small
    /// limits too, so that short inputs reach them.
    pub fn with_limit(max_line: usize) -> LineFramer {
        LineFramer {
            max_line,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line, if one is here; `None` when more bytes are
    /// needed.
    pub fn next_line(&mut self) -> Option<Framed> {
        let pending = &self.buf[self.start..];
        let window = pending.len().min(self.max_line.saturating_add(1));
        match pending[self.scanned..window]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(p) => {
                let end = self.scanned + p;
                let line = pending[..end].to_vec();
                self.start += end + 1;
                self.scanned = 0;
                Some(Framed::Line(line))
            }
            None if pending.len() > self.max_line => Some(Framed::TooLong),
            None => {
                self.scanned = window;
                self.compact();
                None
            }
        }
    }

    /// Drops the lines handed out from the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// The bytes held: after `next_line` said `None`, the start of a line
    /// not complete yet; after a push, also the lines not taken yet, and
    /// until the next `None`, those taken.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Drops what is held: the stream ended, and an unterminated last line
    /// is never executed.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
    }
}

/// Why a line is not a valid request; its text goes after `ERR BAD_REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    NotUtf8,
    Nul,
    /// The command word, cut to 32 characters.
    UnknownCommand(String),
    MissingArgument {
        usage: &'static str,
    },
    /// `PUT` without a value (an empty value is `PUT <key> `).
    MissingValue {
        usage: &'static str,
    },
    /// `CAS` without its new value.
    MissingNewValue {
        usage: &'static str,
    },
    TooManyArguments {
        usage: &'static str,
    },
    EmptyKey,
    KeyTooLong(usize),
    KeyHasWhitespace,
    ValueTooLong(usize),
    BadNodeId(String),
    BadAddress(String),
    /// `SESSION <id>` whose id is not `<index>-<32 hex digits>`.
    BadSessionId(String),
    /// `#<seq>` whose sequence number is not a decimal integer >= 1.
    BadSequence(String),
    /// A tag on something that is not a write (or on a tagged write).
    NotTaggable,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty request"),
            ParseError::NotUtf8 => f.write_str("request is not valid UTF-8"),
            ParseError::Nul => f.write_str("request contains a NUL byte"),
            ParseError::UnknownCommand(cmd) => write!(
                f,
                "unknown command {cmd:?}; known: PUT GET DEL CAS INCR APPEND STATUS \
                 ADD_NODE REMOVE_NODE TRANSFER_LEADER SNAPSHOT PING AUTH SESSION"
            ),
            ParseError::MissingArgument { usage } => {
                write!(f, "missing argument; usage: {usage}")
            }
            ParseError::MissingValue { usage } => write!(
                f,
                "missing value; usage: {usage} (an empty value is \"PUT <key> \")"
            ),
            ParseError::MissingNewValue { usage } => {
                write!(f, "missing new value; usage: {usage}")
            }
            ParseError::TooManyArguments { usage } => {
                write!(f, "too many arguments; usage: {usage}")
            }
            ParseError::EmptyKey => f.write_str("empty key (keys are 1 to 1024 bytes)"),
            ParseError::KeyTooLong(n) => write!(f, "key is {n} bytes, the limit is {MAX_KEY}"),
            ParseError::KeyHasWhitespace => {
                f.write_str("key contains whitespace or a control character")
            }
            ParseError::ValueTooLong(n) => {
                write!(f, "value is {n} bytes, the limit is {MAX_VALUE}")
            }
            ParseError::BadNodeId(tok) => write!(
                f,
                "{tok:?} is not a node id (a decimal integer >= 1, digits only)"
            ),
            ParseError::BadAddress(addr) => write!(f, "{addr:?} is not a host:port address"),
            ParseError::BadSessionId(tok) => write!(
                f,
                "{tok:?} is not a session id (<index>-<32 hex digits>, as SESSION \
                 returned it; an index alone names no secret and resumes nothing)"
            ),
            ParseError::BadSequence(tok) => write!(
                f,
                "{tok:?} is not a sequence number; usage: #<seq> <write>, seq a decimal \
                 integer >= 1"
            ),
            ParseError::NotTaggable => f.write_str(
                "only a write (PUT DEL CAS INCR APPEND) takes a #<seq> tag, and only one",
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// Splits off the next space-separated token; the rest follows the space.
fn next_token(s: &str) -> (&str, Option<&str>) {
    match s.find(' ') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

fn key(tok: &str) -> Result<Vec<u8>, ParseError> {
    if tok.is_empty() {
        return Err(ParseError::EmptyKey);
    }
    if tok.len() > MAX_KEY {
        return Err(ParseError::KeyTooLong(tok.len()));
    }
    if tok.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ParseError::KeyHasWhitespace);
    }
    Ok(tok.as_bytes().to_vec())
}

fn value(v: &str) -> Result<Vec<u8>, ParseError> {
    if v.len() > MAX_VALUE {
        return Err(ParseError::ValueTooLong(v.len()));
    }
    Ok(v.as_bytes().to_vec())
}

/// A node id: strict decimal, digits only (no sign, no spaces), >= 1.
/// Leading zeros are allowed (`007` is node 7). 2^64 - 1 is refused too:
/// the transport does not take it as a node id either.
fn node_id(tok: &str) -> Result<NodeId, ParseError> {
    let digits = !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit());
    match tok.parse::<NodeId>() {
        Ok(id) if digits && (1..u64::MAX).contains(&id) => Ok(id),
        _ => Err(ParseError::BadNodeId(tok.chars().take(32).collect())),
    }
}

/// A positive integer: strict decimal, digits only, >= 1.
fn positive(tok: &str) -> Option<u64> {
    let digits = !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit());
    tok.parse::<u64>().ok().filter(|&n| digits && n >= 1)
}

/// Parses `#<seq> <write>`, `line` without its `#`.
fn tagged(line: &str) -> Result<Request, ParseError> {
    let (seq, rest) = next_token(line);
    let seq =
        positive(seq).ok_or_else(|| ParseError::BadSequence(seq.chars().take(32).collect()))?;
    let rest = rest.ok_or(ParseError::NotTaggable)?;
    if rest.starts_with('#') {
        return Err(ParseError::NotTaggable);
    }
    match parse_str(rest)? {
        Request::Write(cmd) => Ok(Request::Tagged { seq, cmd }),
        _ => Err(ParseError::NotTaggable),
    }
}

/// Requires that nothing follows the last expected argument.
fn done(rest: Option<&str>, usage: &'static str) -> Result<(), ParseError> {
    match rest {
        None => Ok(()),
        Some(_) => Err(ParseError::TooManyArguments { usage }),
    }
}

/// The next token of `rest` and what follows it; the token must be there.
fn arg<'a>(
    rest: Option<&'a str>,
    usage: &'static str,
) -> Result<(&'a str, Option<&'a str>), ParseError> {
    match rest {
        Some(r) if !r.is_empty() => Ok(next_token(r)),
        _ => Err(ParseError::MissingArgument { usage }),
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
pub fn parse(line: &[u8]) -> Result<Request, ParseError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(ParseError::NotUtf8);
    };
    if line.contains('\0') {
        return Err(ParseError::Nul);
    }
    match line.strip_prefix('#') {
        Some(tail) => tagged(tail),
        None => parse_str(line),
    }
}

/// Parses an untagged request line.
fn parse_str(line: &str) -> Result<Request, ParseError> {
    let (cmd, rest) = next_token(line);
    match cmd.to_ascii_uppercase().as_str() {
        "PUT" => {
            let usage = "PUT <key> <value>";
            let (k, v) = arg(rest, usage)?;
            let v = v.ok_or(ParseError::MissingValue { usage })?;
            Ok(Request::Write(Command::Put {
                key: key(k)?,
                value: value(v)?,
            }))
        }
        "GET" => {
            let usage = "GET <key>";
            let (k, more) = arg(rest, usage)?;
            done(more, usage)?;
            Ok(Request::Get { key: key(k)? })
        }
        "DEL" => {
            let usage = "DEL <key>";
            let (k, more) = arg(rest, usage)?;
            done(more, usage)?;
            Ok(Request::Write(Command::Delete { key: key(k)? }))
        }
        "CAS" => {
            let usage = "CAS <key> <expected> <new value>";
            let (k, more) = arg(rest, usage)?;
            let (expected, new) = arg(more, usage)?;
            let new = new.ok_or(ParseError::MissingNewValue { usage })?;
            Ok(Request::Write(Command::Cas {
                key: key(k)?,
                expected: value(expected)?,
                value: value(new)?,
            }))
        }
        "INCR" => {
            let usage = "INCR <key>";
            let (k, more) = arg(rest, usage)?;
            done(more, usage)?;
            Ok(Request::Write(Command::Incr { key: key(k)? }))
        }
        "APPEND" => {
            let usage = "APPEND <key> <value>";
            let (k, v) = arg(rest, usage)?;
            let v = v.ok_or(ParseError::MissingValue { usage })?;
            Ok(Request::Write(Command::Append {
                key: key(k)?,
                value: value(v)?,
            }))
        }
        "SESSION" => match rest {
            None => Ok(Request::OpenSession),
            Some(_) => {
                let usage = "SESSION [<id>]";
                let (id, more) = arg(rest, usage)?;
                done(more, usage)?;
                let id = SessionId::parse(id)
                    .ok_or_else(|| ParseError::BadSessionId(id.chars().take(64).collect()))?;
                Ok(Request::ResumeSession { id })
            }
        },
        "STATUS" => done(rest, "STATUS").map(|_| Request::Status),
        "PING" => done(rest, "PING").map(|_| Request::Ping),
        "SNAPSHOT" => done(rest, "SNAPSHOT").map(|_| Request::Snapshot),
        "ADD_NODE" => {
            let usage = "ADD_NODE <id> <host:port>";
            let (id, more) = arg(rest, usage)?;
            let (addr, more) = arg(more, usage)?;
            done(more, usage)?;
            if addr.is_empty() || !addr.contains(':') {
                return Err(ParseError::BadAddress(addr.to_string()));
            }
            Ok(Request::AddNode {
                id: node_id(id)?,
                addr: addr.to_string(),
            })
        }
        "REMOVE_NODE" => {
            let usage = "REMOVE_NODE <id>";
            let (id, more) = arg(rest, usage)?;
            done(more, usage)?;
            Ok(Request::RemoveNode { id: node_id(id)? })
        }
        "TRANSFER_LEADER" => {
            let usage = "TRANSFER_LEADER <id>";
            let (id, more) = arg(rest, usage)?;
            done(more, usage)?;
            Ok(Request::TransferLeader { id: node_id(id)? })
        }
        "AUTH" => {
            let usage = "AUTH <token>";
            let (token, more) = arg(rest, usage)?;
            done(more, usage)?;
            Ok(Request::Auth {
                token: token.as_bytes().to_vec(),
            })
        }
        "" => Err(ParseError::Empty),
        _ => Err(ParseError::UnknownCommand(cmd.chars().take(32).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Request {
        Request::Write(Command::Put {
            key: k.into(),
            value: v.into(),
        })
    }

    #[test]
    fn put_value_is_rest_of_line_and_may_be_empty() {
        assert_eq!(parse(b"PUT k hello world"), Ok(put("k", "hello world")));
        assert_eq!(parse(b"PUT k "), Ok(put("k", "")));
        assert_eq!(parse(b"PUT k v\r"), Ok(put("k", "v")));
        assert!(parse(b"PUT k").is_err());
        assert!(parse(b"PUT").is_err());
    }

    #[test]
    fn cas_expected_is_one_token() {
        assert_eq!(
            parse(b"CAS k old new value"),
            Ok(Request::Write(Command::Cas {
                key: "k".into(),
                expected: "old".into(),
                value: "new value".into()
            }))
        );
        assert!(parse(b"CAS k old").is_err());
    }

    #[test]
    fn bad_requests_are_rejected_with_a_reason() {
        for line in [
            &b""[..],
            b"FOO bar",
            b"GET",
            b"GET a b",
            b"GET k\0ey",
            b"PUT \xff\xfe v",
            b"ADD_NODE x 1.2.3.4:5",
            b"ADD_NODE 0 1.2.3.4:5",
            b"REMOVE_NODE +2",
            b"REMOVE_NODE -1",
            b"REMOVE_NODE 0x2",
            b"TRANSFER_LEADER 18446744073709551616",
            b"AUTH",
            b"ADD_NODE 4",
            b"REMOVE_NODE",
            b"STATUS now",
        ] {
            let e = parse(line).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        let long_key = format!("GET {}", "k".repeat(MAX_KEY + 1));
        assert!(parse(long_key.as_bytes()).is_err());
    }

    fn lines(f: &mut LineFramer) -> Vec<Framed> {
        std::iter::from_fn(|| f.next_line()).take(10).collect()
    }

    #[test]
    fn framer_hands_out_lines_only_once_their_newline_is_here() {
        let mut f = LineFramer::new();
        f.push(b"PING\nGET k\r\nPUT k");
        assert_eq!(
            lines(&mut f),
            [
                Framed::Line(b"PING".to_vec()),
                Framed::Line(b"GET k\r".to_vec())
            ]
        );
        f.push(b" v");
        assert_eq!(f.next_line(), None);
        f.push(b"\n\n");
        assert_eq!(
            lines(&mut f),
            [Framed::Line(b"PUT k v".to_vec()), Framed::Line(vec![])]
        );
        f.push(b"unterminated");
        assert_eq!(f.next_line(), None);
        f.clear();
        assert_eq!(f.held(), 0);
    }

    #[test]
    fn framer_takes_a_line_of_max_line_and_refuses_one_byte_more_before_its_newline() {
        let mut f = LineFramer::new();
        f.push(&vec![b'x'; MAX_LINE]);
        assert_eq!(f.next_line(), None);
        f.push(b"\n");
        assert_eq!(f.next_line(), Some(Framed::Line(vec![b'x'; MAX_LINE])));
        f.push(&vec![b'x'; MAX_LINE]);
        assert_eq!(f.next_line(), None);
        f.push(b"x");
        assert_eq!(f.next_line(), Some(Framed::TooLong));
        f.push(b"\nPING\n");
        assert_eq!(f.next_line(), Some(Framed::TooLong), "it stays too long");
    }

    #[test]
    fn framer_with_a_limit_of_3_takes_3_bytes_and_refuses_4() {
        let mut f = LineFramer::with_limit(3);
        f.push(b"abc\n\nabcd");
        assert_eq!(f.next_line(), Some(Framed::Line(b"abc".to_vec())));
        assert_eq!(f.next_line(), Some(Framed::Line(vec![])));
        assert_eq!(f.next_line(), Some(Framed::TooLong));
    }

    #[test]
    fn framer_work_is_linear_in_the_bytes_pushed() {
        // A million empty lines in one push. Draining each line from the
        // front of the buffer, as the framer once did, moves half a
        // terabyte here: about a minute, not milliseconds.
        let mut f = LineFramer::new();
        f.push(&vec![b'\n'; 1 << 20]);
        let started = std::time::Instant::now();
        let n = std::iter::from_fn(|| f.next_line()).count();
        assert_eq!(n, 1 << 20);
        assert_eq!(f.held(), 0);
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_value_with_a_newline_is_refused_on_the_line_not_split() {
        let mut out = Vec::new();
        Reply::Value(Arc::from(&b"two\nlines"[..])).write_line(&mut out);
        Reply::Mismatch(b"a\nb".to_vec()).write_line(&mut out);
        Reply::Value(Arc::from(&b"one\rline"[..])).write_line(&mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert!(lines[0].starts_with("ERR BAD_REQUEST the value holds a newline"));
        assert!(lines[1].starts_with("ERR BAD_REQUEST the value holds a newline"));
        assert_eq!(lines[2], "VALUE one\rline");
    }

    #[test]
    fn membership_commands_parse() {
        assert_eq!(
            parse(b"ADD_NODE 4 127.0.0.1:7004"),
            Ok(Request::AddNode {
                id: 4,
                addr: "127.0.0.1:7004".into()
            })
        );
        assert_eq!(parse(b"REMOVE_NODE 2"), Ok(Request::RemoveNode { id: 2 }));
        assert_eq!(
            parse(b"TRANSFER_LEADER 3"),
            Ok(Request::TransferLeader { id: 3 })
        );
        assert_eq!(parse(b"ping"), Ok(Request::Ping));
    }

    #[test]
    fn session_requests_and_tags_parse() {
        assert_eq!(parse(b"SESSION"), Ok(Request::OpenSession));
        let id = SessionId {
            index: 42,
            secret: *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\xcd\xef\xff",
        };
        assert_eq!(id.token(), "42-000102030405060708090a0b0ccdefff");
        assert_eq!(
            parse(b"session 42-000102030405060708090a0b0ccdefff\r"),
            Ok(Request::ResumeSession { id })
        );
        assert_eq!(
            parse(b"SESSION 42-000102030405060708090A0B0CCDEFFF"),
            Ok(Request::ResumeSession { id }),
            "hex digits of either case"
        );
        assert!(
            !format!("{id:?}").contains("0a0b"),
            "Debug hides the secret"
        );
        assert_eq!(
            parse(b"INCR k"),
            Ok(Request::Write(Command::Incr { key: "k".into() }))
        );
        assert_eq!(
            parse(b"APPEND k a b"),
            Ok(Request::Write(Command::Append {
                key: "k".into(),
                value: "a b".into()
            }))
        );
        assert_eq!(
            parse(b"#7 INCR k"),
            Ok(Request::Tagged {
                seq: 7,
                cmd: Command::Incr { key: "k".into() }
            })
        );
        assert_eq!(
            parse(b"#1 PUT k a b"),
            Ok(Request::Tagged {
                seq: 1,
                cmd: Command::Put {
                    key: "k".into(),
                    value: "a b".into()
                }
            })
        );
        let mut out = Vec::new();
        Reply::Session(SessionId {
            index: 9,
            secret: [0xab; SESSION_SECRET_LEN],
        })
        .write_line(&mut out);
        Reply::error(ErrorCode::SessionExpired, "gone").write_line(&mut out);
        assert_eq!(
            out,
            b"SESSION 9-abababababababababababababababab\nERR SESSION_EXPIRED gone\n"
        );
    }

    #[test]
    fn bad_session_requests_and_tags_are_refused_with_a_reason() {
        for (line, want) in [
            (
                &b"SESSION 0-00000000000000000000000000000000"[..],
                "not a session id",
            ),
            (b"SESSION x", "not a session id"),
            (b"SESSION 42", "an index alone names no secret"),
            (
                b"SESSION +1-00000000000000000000000000000000",
                "not a session id",
            ),
            (
                b"SESSION 1-0000000000000000000000000000000",
                "not a session id",
            ),
            (
                b"SESSION 1-000000000000000000000000000000000",
                "not a session id",
            ),
            (
                b"SESSION 1-0000000000000000000000000000000g",
                "not a session id",
            ),
            (
                b"SESSION 1-+0000000000000000000000000000000",
                "not a session id",
            ),
            (
                b"SESSION 1-000000000000000000000000000000\xc3\xa9",
                "not a session id",
            ),
            (
                b"SESSION -00000000000000000000000000000000",
                "not a session id",
            ),
            (
                b"SESSION 18446744073709551616-00000000000000000000000000000000",
                "not a session id",
            ),
            (b"SESSION 1 2", "too many"),
            (b"SESSION ", "missing argument"),
            (b"#0 INCR k", "not a sequence number"),
            (b"#-1 INCR k", "not a sequence number"),
            (b"# INCR k", "not a sequence number"),
            (b"#x INCR k", "not a sequence number"),
            (b"#1", "only a write"),
            (b"#1 GET k", "only a write"),
            (b"#1 SESSION", "only a write"),
            (b"#1 #2 INCR k", "only a write"),
            (b"#1 PING", "only a write"),
            (b"#1 FOO", "unknown command"),
            (b"#1 INCR", "missing argument"),
            (b"INCR", "missing argument"),
            (b"INCR a b", "too many"),
            (b"APPEND k", "missing value"),
        ] {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn error_codes_have_stable_numbers() {
        for n in 0..=255u8 {
            if let Some(code) = ErrorCode::from_u8(n) {
                assert_eq!(code.to_u8(), n);
            }
        }
        assert_eq!(ErrorCode::from_u8(9), Some(ErrorCode::SessionExpired));
        assert_eq!(ErrorCode::from_u8(10), None);
    }
}
