//! Reply lines from a node, parsed defensively.
//!
//! A reply comes from the network, so nothing in it is trusted: every
//! number is strict decimal, every field is checked, and a line that does
//! not parse is a [`ProtocolError`], never a panic. Lines are bounded
//! before they get here (the connection's [`LineFramer`] refuses a longer
//! one), so no allocation is sized by the node.
//!
//! [`LineFramer`]: crate::protocol::LineFramer

use std::fmt;

use super::error::Code;
use crate::raft::NodeId;

/// The longest reply line this client reads, without its `\n`: `MISMATCH `
/// or `VALUE ` and a value of 1 MiB fit, with room to spare.
pub const MAX_REPLY_LINE: usize = crate::protocol::MAX_LINE;

/// Longest session id taken from a node.
pub const MAX_SESSION_ID: usize = 128;

/// One parsed reply line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// `OK <index>` (`SNAPSHOT`).
    OkIndex(u64),
    /// `VALUE <value>`; the value may be empty.
    Value(Vec<u8>),
    NotFound,
    Deleted,
    /// `MISMATCH <current value>`.
    Mismatch(Vec<u8>),
    Pong,
    Status(Status),
    /// `SESSION <id>`.
    Session(String),
    /// `ERR <code> <message>`.
    Err {
        code: Code,
        message: String,
    },
}

/// How a reply line breaks the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The line is longer than [`MAX_REPLY_LINE`].
    TooLong,
    /// The line starts with no reply word this client knows.
    UnknownReply(String),
    /// `OK <index>`, `VALUE <n>` or a `STATUS` field that is not a number.
    BadNumber(String),
    /// An `ERR` line without a code, or with a code that is not a token of
    /// capitals, digits and `_`.
    BadError,
    /// A `SESSION` reply whose id is empty, too long, not printable ASCII,
    /// or not the one asked for.
    BadSession,
    /// A `STATUS` line without one of its fields, with a field twice, or
    /// with a token that is not `name=value`.
    BadStatus(StatusField),
    /// A well-formed reply that does not answer this request (`OK` to a
    /// `GET`, say): the first 32 characters of the line.
    Unexpected(String),
}

/// Which part of a `STATUS` line is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusField {
    /// A required field is absent.
    Missing(&'static str),
    /// A field appears twice (its name, cut to 32 characters).
    Repeated(String),
    /// A token without `=`.
    NotAField,
    /// A field's value does not parse (its name).
    BadValue(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::TooLong => write!(f, "a reply line over {MAX_REPLY_LINE} bytes"),
            ProtocolError::UnknownReply(s) => write!(f, "unknown reply {s:?}"),
            ProtocolError::BadNumber(s) => write!(f, "{s:?} is not a decimal number"),
            ProtocolError::BadError => f.write_str("an ERR reply without a valid code"),
            ProtocolError::BadSession => f.write_str("a SESSION reply with a bad or foreign id"),
            ProtocolError::BadStatus(s) => match s {
                StatusField::Missing(n) => write!(f, "STATUS lacks {n}="),
                StatusField::Repeated(n) => write!(f, "STATUS has {n}= twice"),
                StatusField::NotAField => f.write_str("STATUS has a token that is not name=value"),
                StatusField::BadValue(n) => write!(f, "STATUS has a bad {n}= value"),
            },
            ProtocolError::Unexpected(s) => write!(f, "{s:?} does not answer this request"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A node's role, from `STATUS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    PreCandidate,
    Leader,
    Learner,
    /// A role this client does not know (at most 32 characters of it).
    Other(String),
}

impl Role {
    fn parse(s: &str) -> Role {
        match s {
            "follower" => Role::Follower,
            "candidate" => Role::Candidate,
            "precandidate" => Role::PreCandidate,
            "leader" => Role::Leader,
            "learner" => Role::Learner,
            other => Role::Other(other.chars().take(32).collect()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "precandidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
            Role::Other(s) => s,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's own view of the cluster: its `STATUS` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    /// `None` when the node knows no leader (`leader=0`).
    pub leader: Option<NodeId>,
    pub commit: u64,
    pub applied: u64,
    pub last: u64,
    pub snapshot: u64,
    /// The voters.
    pub members: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// `recovering=1`: the node repairs lost state (README, "Storage faults").
    pub recovering: bool,
    /// Fields this client does not interpret, in the order they came.
    pub other: Vec<(String, String)>,
}

/// Strict decimal: digits only, no sign, fits in a u64.
pub(crate) fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Strict decimal with an optional leading `-`, for `INCR` results.
pub(crate) fn signed(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn cut(s: &str) -> String {
    s.chars().take(32).collect()
}

fn id_list(v: &str, name: &'static str) -> Result<Vec<NodeId>, ProtocolError> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|t| number(t).ok_or(ProtocolError::BadStatus(StatusField::BadValue(name))))
        .collect()
}

impl Status {
    /// Parses the fields after `STATUS `.
    pub fn parse_fields(rest: &str) -> Result<Status, ProtocolError> {
        let bad = |e| ProtocolError::BadStatus(e);
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for tok in rest.split(' ').filter(|t| !t.is_empty()) {
            let (k, v) = tok.split_once('=').ok_or(bad(StatusField::NotAField))?;
            if fields.iter().any(|(seen, _)| *seen == k) {
                return Err(bad(StatusField::Repeated(cut(k))));
            }
            fields.push((k, v));
        }
        let get = |name: &'static str| {
            fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .ok_or(bad(StatusField::Missing(name)))
        };
        let num = |name: &'static str| {
            get(name).and_then(|v| number(v).ok_or(bad(StatusField::BadValue(name))))
        };
        const KNOWN: [&str; 11] = [
            "id",
            "role",
            "term",
            "leader",
            "commit",
            "applied",
            "last",
            "snapshot",
            "members",
            "learners",
            "recovering",
        ];
        let leader = num("leader")?;
        Ok(Status {
            id: num("id")?,
            role: Role::parse(get("role")?),
            term: num("term")?,
            leader: (leader != 0).then_some(leader),
            commit: num("commit")?,
            applied: num("applied")?,
            last: num("last")?,
            snapshot: num("snapshot")?,
            members: id_list(get("members")?, "members")?,
            learners: match get("learners") {
                Ok(v) => id_list(v, "learners")?,
                Err(_) => Vec::new(),
            },
            recovering: matches!(get("recovering"), Ok("1")),
            other: fields
                .iter()
                .filter(|(k, _)| !KNOWN.contains(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }
}

fn error_reply(rest: &str) -> Result<Reply, ProtocolError> {
    let (code, message) = match rest.split_once(' ') {
        Some((c, m)) => (c, m),
        None => (rest, ""),
    };
    let valid = !code.is_empty()
        && code.len() <= 32
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(ProtocolError::BadError);
    }
    Ok(Reply::Err {
        code: Code::from_wire(code),
        message: message.to_string(),
    })
}

fn session_reply(id: &str) -> Result<Reply, ProtocolError> {
    let valid =
        !id.is_empty() && id.len() <= MAX_SESSION_ID && id.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(ProtocolError::BadSession);
    }
    Ok(Reply::Session(id.to_string()))
}

/// Parses one reply line (without its `\n`).
///
/// Values are taken as bytes, as they came; everything else must be UTF-8
/// (an error message that is not is read lossily).
pub fn parse_reply(line: &[u8]) -> Result<Reply, ProtocolError> {
    if let Some(v) = line.strip_prefix(b"VALUE ") {
        return Ok(Reply::Value(v.to_vec()));
    }
    if let Some(v) = line.strip_prefix(b"MISMATCH ") {
        return Ok(Reply::Mismatch(v.to_vec()));
    }
    if let Some(rest) = line.strip_prefix(b"ERR ") {
        return error_reply(&String::from_utf8_lossy(rest));
    }
    let Ok(text) = std::str::from_utf8(line) else {
        let start = String::from_utf8_lossy(&line[..line.len().min(32)]).into_owned();
        return Err(ProtocolError::UnknownReply(cut(&start)));
    };
    match text {
        "OK" => return Ok(Reply::Ok),
        "NOT_FOUND" => return Ok(Reply::NotFound),
        "DELETED" => return Ok(Reply::Deleted),
        "PONG" => return Ok(Reply::Pong),
        _ => {}
    }
    if let Some(i) = text.strip_prefix("OK ") {
        return number(i)
            .map(Reply::OkIndex)
            .ok_or_else(|| ProtocolError::BadNumber(cut(i)));
    }
    if let Some(rest) = text.strip_prefix("STATUS ") {
        return Status::parse_fields(rest).map(Reply::Status);
    }
    if let Some(id) = text.strip_prefix("SESSION ") {
        return session_reply(id);
    }
    Err(ProtocolError::UnknownReply(cut(text)))
}

/// The reply as a short printable text, for [`ProtocolError::Unexpected`].
pub(crate) fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Ok => "OK".into(),
        Reply::OkIndex(i) => format!("OK {i}"),
        Reply::Value(v) => cut(&format!("VALUE {}", String::from_utf8_lossy(v))),
        Reply::NotFound => "NOT_FOUND".into(),
        Reply::Deleted => "DELETED".into(),
        Reply::Mismatch(_) => "MISMATCH".into(),
        Reply::Pong => "PONG".into(),
        Reply::Status(_) => "STATUS".into(),
        Reply::Session(id) => cut(&format!("SESSION {id}")),
        Reply::Err { code, .. } => format!("ERR {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &[u8] = b"STATUS id=2 role=follower term=7 leader=1 commit=40 applied=39 \
last=41 snapshot=0 members=1,2,3";

    #[test]
    fn every_reply_word_parses() {
        assert_eq!(parse_reply(b"OK"), Ok(Reply::Ok));
        assert_eq!(parse_reply(b"OK 17"), Ok(Reply::OkIndex(17)));
        assert_eq!(
            parse_reply(b"VALUE a b "),
            Ok(Reply::Value(b"a b ".to_vec()))
        );
        assert_eq!(parse_reply(b"VALUE "), Ok(Reply::Value(vec![])));
        assert_eq!(parse_reply(b"NOT_FOUND"), Ok(Reply::NotFound));
        assert_eq!(parse_reply(b"DELETED"), Ok(Reply::Deleted));
        assert_eq!(
            parse_reply(b"MISMATCH x y"),
            Ok(Reply::Mismatch(b"x y".to_vec()))
        );
        assert_eq!(parse_reply(b"PONG"), Ok(Reply::Pong));
        assert_eq!(parse_reply(b"SESSION 42"), Ok(Reply::Session("42".into())));
        assert_eq!(
            parse_reply(b"ERR NO_LEADER no leader known"),
            Ok(Reply::Err {
                code: Code::NoLeader,
                message: "no leader known".into()
            })
        );
        assert_eq!(
            parse_reply(b"ERR SESSION_EXPIRED gone"),
            Ok(Reply::Err {
                code: Code::SessionExpired,
                message: "gone".into()
            })
        );
    }

    #[test]
    fn a_status_line_gives_every_field() {
        let Ok(Reply::Status(s)) = parse_reply(STATUS) else {
            panic!("not a status")
        };
        assert_eq!(s.id, 2);
        assert_eq!(s.role, Role::Follower);
        assert_eq!(
            (s.term, s.leader, s.commit, s.applied),
            (7, Some(1), 40, 39)
        );
        assert_eq!((s.last, s.snapshot), (41, 0));
        assert_eq!(s.members, vec![1, 2, 3]);
        assert!(s.learners.is_empty() && !s.recovering && s.other.is_empty());

        let line = b"STATUS id=4 role=learner term=1 leader=0 commit=0 applied=0 last=0 \
snapshot=0 members=1 learners=4,5 recovering=1 recovery=waiting-for-leader";
        let Ok(Reply::Status(s)) = parse_reply(line) else {
            panic!("not a status")
        };
        assert_eq!(s.leader, None);
        assert_eq!(s.learners, vec![4, 5]);
        assert!(s.recovering);
        assert_eq!(
            s.other,
            vec![("recovery".to_string(), "waiting-for-leader".to_string())]
        );
    }

    #[test]
    fn hostile_replies_are_protocol_errors_not_panics() {
        let long_code = format!("ERR {} x", "A".repeat(33));
        let cases: Vec<&[u8]> = vec![
            b"",
            b"ok",
            b"OK ",
            b"OK -1",
            b"OK +1",
            b"OK 18446744073709551616",
            b"OK 1 2",
            b"VALUE",
            b"MISMATCH",
            b"ERR",
            b"ERR ",
            b"ERR lower case",
            b"ERR \xff\xfe x",
            long_code.as_bytes(),
            b"SESSION ",
            b"SESSION a b",
            b"SESSION \x01",
            b"STATUS",
            b"STATUS ",
            b"STATUS id=1",
            b"STATUS id=x role=leader term=1 leader=1 commit=1 applied=1 last=1 snapshot=0 members=1",
            b"STATUS id=1 id=1 role=leader term=1 leader=1 commit=1 applied=1 last=1 snapshot=0 members=1",
            b"STATUS id=1 role=leader term=1 leader=1 commit=1 applied=1 last=1 snapshot=0 members=1,,2",
            b"STATUS id=1 role=leader term=1 leader=1 commit=1 applied=1 last=1 snapshot=0 members=1 junk",
            b"\xff\xff\xff",
            b"PONG!",
            b"\0",
        ];
        for line in cases {
            let r = parse_reply(line);
            assert!(r.is_err(), "{:?} gave {r:?}", String::from_utf8_lossy(line));
            assert!(!r.unwrap_err().to_string().is_empty());
        }
        let long_session = format!("SESSION {}", "1".repeat(MAX_SESSION_ID + 1));
        assert_eq!(
            parse_reply(long_session.as_bytes()),
            Err(ProtocolError::BadSession)
        );
    }

    #[test]
    fn unknown_codes_and_roles_are_kept_not_refused() {
        assert_eq!(
            parse_reply(b"ERR NEW_CODE2 later"),
            Ok(Reply::Err {
                code: Code::Other("NEW_CODE2".into()),
                message: "later".into()
            })
        );
        assert_eq!(
            parse_reply(b"ERR BUSY"),
            Ok(Reply::Err {
                code: Code::Busy,
                message: String::new()
            })
        );
        let line = b"STATUS id=1 role=observer term=1 leader=1 commit=1 applied=1 last=1 \
snapshot=0 members=1";
        let Ok(Reply::Status(s)) = parse_reply(line) else {
            panic!()
        };
        assert_eq!(s.role, Role::Other("observer".into()));
    }

    #[test]
    fn values_are_bytes_as_they_came() {
        assert_eq!(
            parse_reply(b"VALUE \xff\x00\r"),
            Ok(Reply::Value(b"\xff\x00\r".to_vec()))
        );
    }

    #[test]
    fn numbers_are_strict_decimal() {
        assert_eq!(number("007"), Some(7));
        for s in ["", "-1", "+1", " 1", "1 ", "0x1", "1e3"] {
            assert_eq!(number(s), None, "{s:?}");
        }
        assert_eq!(signed("-12"), Some(-12));
        assert_eq!(signed("12"), Some(12));
        for s in ["-", "--1", "+1", "", "1-"] {
            assert_eq!(signed(s), None, "{s:?}");
        }
    }
}
