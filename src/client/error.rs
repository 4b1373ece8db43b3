//! What can go wrong in a client call, typed so that a caller can tell a
//! refused request from one whose outcome is unknown.

use std::fmt;
use std::io;

use super::reply::ProtocolError;
use crate::tls::TlsError;

/// The code of an `ERR <CODE> <message>` reply (`docs/PROTOCOL.md` §2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// Malformed or unknown request; nothing was done.
    BadRequest,
    /// The node gave up waiting (`--request-timeout-ms`); a write may still
    /// take effect.
    Timeout,
    /// No leader is known.
    NoLeader,
    /// The leader changed while the request was in flight.
    LeaderChanged,
    /// Refused for now (a membership change is pending, the node is stopping).
    Unavailable,
    /// The node failed (a disk error, say).
    Internal,
    /// `AUTH <token>` missing or wrong; nothing was done.
    NoAuth,
    /// Too many clients; the node closes the connection.
    Busy,
    /// This node was removed from the cluster.
    Removed,
    /// The session is unknown to the cluster or expired.
    SessionExpired,
    /// A code this client does not know (at most 32 bytes of it).
    Other(String),
}

impl Code {
    /// The code as it is written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Code::BadRequest => "BAD_REQUEST",
            Code::Timeout => "TIMEOUT",
            Code::NoLeader => "NO_LEADER",
            Code::LeaderChanged => "LEADER_CHANGED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "INTERNAL",
            Code::NoAuth => "NOAUTH",
            Code::Busy => "BUSY",
            Code::Removed => "REMOVED",
            Code::SessionExpired => "SESSION_EXPIRED",
            Code::Other(s) => s,
        }
    }

    /// The code of a wire token; unknown ones become [`Code::Other`].
    pub fn from_wire(tok: &str) -> Code {
        match tok {
            "BAD_REQUEST" => Code::BadRequest,
            "TIMEOUT" => Code::Timeout,
            "NO_LEADER" => Code::NoLeader,
            "LEADER_CHANGED" => Code::LeaderChanged,
            "UNAVAILABLE" => Code::Unavailable,
            "INTERNAL" => Code::Internal,
            "NOAUTH" => Code::NoAuth,
            "BUSY" => Code::Busy,
            "REMOVED" => Code::Removed,
            "SESSION_EXPIRED" => Code::SessionExpired,
            other => Code::Other(other.chars().take(32).collect()),
        }
    }

    /// Whether another attempt (on another node, or later) may succeed:
    /// the node is alive but cannot serve the request now. These codes
    /// leave a write's outcome unknown.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Code::Timeout
                | Code::NoLeader
                | Code::LeaderChanged
                | Code::Unavailable
                | Code::Internal
                | Code::Busy
                | Code::Removed
        )
    }

    /// Whether the node refuses with this code before doing anything with
    /// the request: `BUSY` at accept, `REMOVED` and `NOAUTH` before the
    /// request runs, `BAD_REQUEST` when it does not parse. Any other code
    /// to a write leaves its outcome unknown.
    pub fn nothing_done(&self) -> bool {
        matches!(
            self,
            Code::BadRequest | Code::NoAuth | Code::Busy | Code::Removed
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An argument the line protocol cannot carry. Nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Keys are 1 to 1024 bytes.
    KeyLength(usize),
    /// Keys hold no whitespace and no control characters.
    KeyCharacter,
    /// Values are at most 1 MiB.
    ValueLength(usize),
    /// Keys and values must be UTF-8: the node refuses other lines.
    NotUtf8,
    /// A value may not hold `\n` or NUL, nor end in `\r` (the node strips
    /// one `\r` before the `\n`).
    ValueCharacter,
    /// The expected value of `CAS` is one token: no space.
    ExpectedHasSpace,
    /// The request line would be longer than the node takes (1 MiB + 2 KiB).
    LineTooLong(usize),
    /// Node ids are integers from 1 to 2^64 - 2.
    NodeId(u64),
    /// A raft address is `host:port`, without whitespace.
    Address(String),
    /// A raw request line holds a `\n`, or is empty.
    RawLine,
    /// No endpoint was given, or one of them is empty.
    NoEndpoints,
    /// The auth token is empty or holds whitespace.
    Token,
    /// A session was asked for from a client built without sessions.
    SessionsOff,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::KeyLength(n) => write!(f, "a key is 1 to 1024 bytes, this one {n}"),
            Invalid::KeyCharacter => {
                f.write_str("a key may not hold whitespace or control characters")
            }
            Invalid::ValueLength(n) => write!(f, "a value is at most 1 MiB, this one {n} bytes"),
            Invalid::NotUtf8 => f.write_str("keys and values must be UTF-8"),
            Invalid::ValueCharacter => {
                f.write_str("a value may not hold a newline or NUL, nor end in a carriage return")
            }
            Invalid::ExpectedHasSpace => {
                f.write_str("the expected value of CAS is one token and may not hold a space")
            }
            Invalid::LineTooLong(n) => write!(
                f,
                "the request would be {n} bytes, over the node's limit of 1,050,624"
            ),
            Invalid::NodeId(id) => write!(f, "{id} is not a node id (1 to 2^64-2)"),
            Invalid::Address(a) => write!(f, "{a:?} is not a host:port address"),
            Invalid::RawLine => f.write_str("a request is one non-empty line, without newline"),
            Invalid::NoEndpoints => f.write_str("no endpoint given, or an empty one"),
            Invalid::Token => f.write_str("the auth token is empty or holds whitespace"),
            Invalid::SessionsOff => f.write_str("this client was built with sessions off"),
        }
    }
}

/// Why a client call failed.
///
/// The variant says what is known about the request:
/// - [`Error::Invalid`]: refused locally, nothing was sent;
/// - [`Error::Server`] with a code that is not [`Code::is_transient`]
///   (`BAD_REQUEST`, `NOAUTH`): refused by the node, nothing was done;
/// - [`Error::OutcomeUnknown`]: a write was sent and may or may not have
///   been applied (see the module documentation for when that happens);
/// - anything else ([`Error::Io`], [`Error::Timeout`], [`Error::Protocol`],
///   a transient [`Error::Server`]): no definite answer came before the
///   deadline, and the request was a read or was never sent, so nothing
///   changed because of it.
#[derive(Debug)]
pub enum Error {
    /// Refused locally; nothing was sent.
    Invalid(Invalid),
    /// The node answered `ERR <code> <message>`.
    Server { code: Code, message: String },
    /// Connecting, reading or writing failed, or the node closed the
    /// connection before its reply.
    Io(io::Error),
    /// No reply within the request timeout.
    Timeout,
    /// The node's reply breaks the protocol.
    Protocol(ProtocolError),
    /// The TLS configuration could not be loaded.
    Tls(TlsError),
    /// A write was sent and then no definite answer came: it may or may not
    /// have been applied. `last` is the failure that ended the attempts;
    /// [`Code::SessionExpired`] there means that the session ended before
    /// a retry could learn the outcome.
    OutcomeUnknown { last: Box<Error> },
}

impl Error {
    /// Whether a write may have been applied although no reply said so.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// The server's code, if the node answered `ERR` (also inside
    /// [`Error::OutcomeUnknown`]).
    pub fn code(&self) -> Option<&Code> {
        match self {
            Error::Server { code, .. } => Some(code),
            Error::OutcomeUnknown { last } => last.code(),
            _ => None,
        }
    }

    /// Whether another attempt of the same request may get a definite
    /// answer: the failure was about reaching a node, not about the request.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Io(_) | Error::Timeout | Error::Protocol(_) => true,
            Error::Server { code, .. } => code.is_transient(),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(i) => write!(f, "invalid request: {i}"),
            Error::Server { code, message } => write!(f, "ERR {code} {message}"),
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Timeout => f.write_str("no reply within the request timeout"),
            Error::Protocol(e) => write!(f, "bad reply: {e}"),
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::OutcomeUnknown { last } => {
                write!(
                    f,
                    "outcome unknown, the write may have been applied ({last})"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Protocol(e) => Some(e),
            Error::Tls(e) => Some(e),
            Error::OutcomeUnknown { last } => Some(last.as_ref()),
            _ => None,
        }
    }
}

impl From<Invalid> for Error {
    fn from(i: Invalid) -> Error {
        Error::Invalid(i)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Error {
        Error::Protocol(e)
    }
}
