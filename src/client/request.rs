//! Requests as the client sends them: checked against the line protocol's
//! rules before anything goes on the wire, then written as one line.

use super::error::Invalid;
use crate::protocol::{MAX_KEY, MAX_LINE, MAX_VALUE};
use crate::raft::NodeId;

/// How a request may be retried after a failure that left its outcome
/// unknown (see the module documentation of [`crate::client`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// A read or a local command: sending it again changes nothing.
    Freely,
    /// A key-value write: tagged `#<seq>` in the client's session, and
    /// retried with the same number, which the cluster applies once.
    InSession,
    /// Not repeatable (membership changes, raw lines): retried only if it
    /// was certainly never sent.
    Never,
}

/// One request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The line without tag and without `\n`.
    line: Vec<u8>,
    retry: Retry,
    /// The command word, for error messages.
    pub(crate) name: &'static str,
}

impl Request {
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// The bytes to send: `#<seq> ` when tagged, the line, `\n`.
    pub fn wire(&self, seq: Option<u64>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.line.len() + 24);
        if let Some(seq) = seq {
            out.extend_from_slice(format!("#{seq} ").as_bytes());
        }
        out.extend_from_slice(&self.line);
        out.push(b'\n');
        out
    }

    fn new(name: &'static str, retry: Retry, parts: &[&[u8]]) -> Result<Request, Invalid> {
        let mut line = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        line.extend_from_slice(name.as_bytes());
        for p in parts {
            line.push(b' ');
            line.extend_from_slice(p);
        }
        // Room for the longest tag, `#18446744073709551615 `.
        if line.len() + 22 > MAX_LINE {
            return Err(Invalid::LineTooLong(line.len() + 22));
        }
        Ok(Request { line, retry, name })
    }

    pub fn put(key: &[u8], value: &[u8]) -> Result<Request, Invalid> {
        Request::new(
            "PUT",
            Retry::InSession,
            &[check_key(key)?, check_value(value)?],
        )
    }

    pub fn get(key: &[u8]) -> Result<Request, Invalid> {
        Request::new("GET", Retry::Freely, &[check_key(key)?])
    }

    pub fn del(key: &[u8]) -> Result<Request, Invalid> {
        Request::new("DEL", Retry::InSession, &[check_key(key)?])
    }

    pub fn cas(key: &[u8], expected: &[u8], new: &[u8]) -> Result<Request, Invalid> {
        let expected = check_value(expected)?;
        if expected.contains(&b' ') {
            return Err(Invalid::ExpectedHasSpace);
        }
        Request::new(
            "CAS",
            Retry::InSession,
            &[check_key(key)?, expected, check_value(new)?],
        )
    }

    pub fn incr(key: &[u8]) -> Result<Request, Invalid> {
        Request::new("INCR", Retry::InSession, &[check_key(key)?])
    }

    pub fn append(key: &[u8], value: &[u8]) -> Result<Request, Invalid> {
        Request::new(
            "APPEND",
            Retry::InSession,
            &[check_key(key)?, check_value(value)?],
        )
    }

    pub fn status() -> Request {
        Request::fixed("STATUS")
    }

    pub fn ping() -> Request {
        Request::fixed("PING")
    }

    /// `SNAPSHOT` is retried freely: a second snapshot only compacts again.
    pub fn snapshot() -> Request {
        Request::fixed("SNAPSHOT")
    }

    fn fixed(name: &'static str) -> Request {
        Request {
            line: name.as_bytes().to_vec(),
            retry: Retry::Freely,
            name,
        }
    }

    pub fn add_node(id: NodeId, raft_addr: &str) -> Result<Request, Invalid> {
        let id = check_id(id)?;
        let valid = raft_addr.contains(':')
            && !raft_addr.starts_with(':')
            && raft_addr.len() <= 256
            && !raft_addr
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(Invalid::Address(raft_addr.chars().take(64).collect()));
        }
        Request::new(
            "ADD_NODE",
            Retry::Never,
            &[id.as_bytes(), raft_addr.as_bytes()],
        )
    }

    pub fn remove_node(id: NodeId) -> Result<Request, Invalid> {
        Request::new("REMOVE_NODE", Retry::Never, &[check_id(id)?.as_bytes()])
    }

    pub fn transfer_leader(id: NodeId) -> Result<Request, Invalid> {
        Request::new("TRANSFER_LEADER", Retry::Never, &[check_id(id)?.as_bytes()])
    }

    /// `SESSION` (open) or `SESSION <id>` (resume).
    pub fn session(id: Option<&str>) -> Request {
        let mut line = b"SESSION".to_vec();
        if let Some(id) = id {
            line.push(b' ');
            line.extend_from_slice(id.as_bytes());
        }
        Request {
            line,
            retry: Retry::Freely,
            name: "SESSION",
        }
    }

    /// `AUTH <token>`; the token was checked when the client was built.
    pub fn auth(token: &str) -> Request {
        Request {
            line: format!("AUTH {token}").into_bytes(),
            retry: Retry::Freely,
            name: "AUTH",
        }
    }

    /// Any line, sent as it is and never retried once sent.
    pub fn raw(line: &str) -> Result<Request, Invalid> {
        if line.is_empty() || line.contains('\n') {
            return Err(Invalid::RawLine);
        }
        if line.len() > MAX_LINE {
            return Err(Invalid::LineTooLong(line.len()));
        }
        Ok(Request {
            line: line.as_bytes().to_vec(),
            retry: Retry::Never,
            name: "raw request",
        })
    }
}

/// A key as the node takes it: 1 to 1024 bytes of UTF-8, without
/// whitespace or control characters (`protocol::parse` checks the same).
pub fn check_key(key: &[u8]) -> Result<&[u8], Invalid> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Invalid::KeyLength(key.len()));
    }
    let s = std::str::from_utf8(key).map_err(|_| Invalid::NotUtf8)?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::KeyCharacter);
    }
    Ok(key)
}

/// A value the line can carry: at most 1 MiB of UTF-8, no `\n` or NUL, and
/// no `\r` at its end (the node strips one before the `\n`).
pub fn check_value(value: &[u8]) -> Result<&[u8], Invalid> {
    if value.len() > MAX_VALUE {
        return Err(Invalid::ValueLength(value.len()));
    }
    std::str::from_utf8(value).map_err(|_| Invalid::NotUtf8)?;
    if value.contains(&b'\n') || value.contains(&0) || value.last() == Some(&b'\r') {
        return Err(Invalid::ValueCharacter);
    }
    Ok(value)
}

fn check_id(id: NodeId) -> Result<String, Invalid> {
    if id == 0 || id == u64::MAX {
        return Err(Invalid::NodeId(id));
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Command;
    use crate::protocol::{self, Request as Parsed};

    #[test]
    fn what_the_client_accepts_the_node_parses_to_the_same_request() {
        let key = "k".repeat(MAX_KEY);
        let big = "v".repeat(MAX_VALUE);
        let cases: Vec<(Request, Parsed)> = vec![
            (
                Request::put(b"k", b"hello world").unwrap(),
                Parsed::Write(Command::Put {
                    key: b"k".to_vec(),
                    value: b"hello world".to_vec(),
                }),
            ),
            (
                Request::put(b"k", b"").unwrap(),
                Parsed::Write(Command::Put {
                    key: b"k".to_vec(),
                    value: vec![],
                }),
            ),
            (
                Request::put(key.as_bytes(), big.as_bytes()).unwrap(),
                Parsed::Write(Command::Put {
                    key: key.clone().into_bytes(),
                    value: big.clone().into_bytes(),
                }),
            ),
            (
                Request::cas("é".as_bytes(), b"", b" a ").unwrap(),
                Parsed::Write(Command::Cas {
                    key: "é".as_bytes().to_vec(),
                    expected: vec![],
                    value: b" a ".to_vec(),
                }),
            ),
            (
                Request::put(b"k", b"a\rb\t").unwrap(),
                Parsed::Write(Command::Put {
                    key: b"k".to_vec(),
                    value: b"a\rb\t".to_vec(),
                }),
            ),
            (
                Request::get(b"k").unwrap(),
                Parsed::Get { key: b"k".to_vec() },
            ),
            (
                Request::add_node(4, "127.0.0.1:7004").unwrap(),
                Parsed::AddNode {
                    id: 4,
                    addr: "127.0.0.1:7004".into(),
                },
            ),
        ];
        for (req, parsed) in cases {
            let wire = req.wire(None);
            assert_eq!(wire.last(), Some(&b'\n'));
            let line = &wire[..wire.len() - 1];
            assert!(line.len() <= MAX_LINE);
            assert_eq!(protocol::parse(line), Ok(parsed));
        }
    }

    #[test]
    fn what_the_node_would_refuse_is_refused_before_sending() {
        let long_key = vec![b'k'; MAX_KEY + 1];
        let long_value = vec![b'v'; MAX_VALUE + 1];
        let refused: Vec<(Result<Request, Invalid>, Invalid)> = vec![
            (Request::get(b""), Invalid::KeyLength(0)),
            (Request::get(&long_key), Invalid::KeyLength(MAX_KEY + 1)),
            (Request::get(b"a b"), Invalid::KeyCharacter),
            (Request::get(b"a\tb"), Invalid::KeyCharacter),
            (Request::get("a\u{a0}b".as_bytes()), Invalid::KeyCharacter),
            (Request::get(b"a\0"), Invalid::KeyCharacter),
            (Request::get(b"\xff"), Invalid::NotUtf8),
            (Request::put(b"k", b"\xfe"), Invalid::NotUtf8),
            (Request::put(b"k", b"a\nb"), Invalid::ValueCharacter),
            (Request::put(b"k", b"a\0"), Invalid::ValueCharacter),
            (Request::put(b"k", b"a\r"), Invalid::ValueCharacter),
            (
                Request::put(b"k", &long_value),
                Invalid::ValueLength(MAX_VALUE + 1),
            ),
            (Request::cas(b"k", b"a b", b"c"), Invalid::ExpectedHasSpace),
            (Request::remove_node(0), Invalid::NodeId(0)),
            (
                Request::transfer_leader(u64::MAX),
                Invalid::NodeId(u64::MAX),
            ),
            (
                Request::add_node(2, "nowhere"),
                Invalid::Address("nowhere".into()),
            ),
            (
                Request::add_node(2, "h :1"),
                Invalid::Address("h :1".into()),
            ),
            (Request::raw(""), Invalid::RawLine),
            (Request::raw("PING\nPING"), Invalid::RawLine),
        ];
        for (got, want) in refused {
            assert_eq!(got, Err(want));
        }
        // Both CAS values at the limit do not fit in one line.
        let big = vec![b'v'; MAX_VALUE];
        assert!(matches!(
            Request::cas(b"k", &big, &big),
            Err(Invalid::LineTooLong(_))
        ));
        // What the client refuses as a key, the node refuses too.
        for key in [&b"a b"[..], b"a\tb", b"a\0", "a\u{a0}b".as_bytes()] {
            let mut line = b"GET ".to_vec();
            line.extend_from_slice(key);
            assert!(protocol::parse(&line).is_err());
        }
    }

    #[test]
    fn a_tag_goes_before_the_command() {
        let r = Request::incr(b"c").unwrap();
        assert_eq!(r.wire(Some(12)), b"#12 INCR c\n");
        assert_eq!(r.wire(None), b"INCR c\n");
        assert_eq!(r.retry(), Retry::InSession);
        assert_eq!(Request::get(b"c").unwrap().retry(), Retry::Freely);
        assert_eq!(Request::remove_node(2).unwrap().retry(), Retry::Never);
    }
}
