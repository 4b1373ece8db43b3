//! The client line protocol of INTERFACE.md §2: parsing request lines.
//!
//! One request per line; tokens separated by one space; the value of `PUT`
//! and the new value of `CAS` are the rest of the line and may contain
//! spaces or be empty. Parsing never fails the connection: every bad line
//! becomes a [`ParseError`] that the server answers with `ERR BAD_REQUEST`.

use crate::kv::Command;
use crate::raft::NodeId;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Longest request line, without its `\n`; longer lines close the connection.
pub const MAX_LINE: usize = (1 << 20) + 2048;

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Write(Command),
    Get { key: Vec<u8> },
    Status,
    AddNode { id: NodeId, addr: String },
    RemoveNode { id: NodeId },
    TransferLeader { id: NodeId },
    Snapshot,
    Ping,
}

/// Why a line is not a valid request; the text goes after `ERR BAD_REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// Splits off the next space-separated token; the rest follows the space.
fn next_token(s: &str) -> (&str, Option<&str>) {
    match s.find(' ') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

fn key(tok: &str) -> Result<Vec<u8>, ParseError> {
    if tok.is_empty() {
        return err("empty key (keys are 1 to 1024 bytes)");
    }
    if tok.len() > MAX_KEY {
        return err(format!(
            "key is {} bytes, the limit is {MAX_KEY}",
            tok.len()
        ));
    }
    if tok.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err("key contains whitespace or a control character");
    }
    Ok(tok.as_bytes().to_vec())
}

fn value(v: &str) -> Result<Vec<u8>, ParseError> {
    if v.len() > MAX_VALUE {
        return err(format!(
            "value is {} bytes, the limit is {MAX_VALUE}",
            v.len()
        ));
    }
    Ok(v.as_bytes().to_vec())
}

fn node_id(tok: &str) -> Result<NodeId, ParseError> {
    match tok.parse::<NodeId>() {
        Ok(id) if id >= 1 => Ok(id),
        _ => err(format!("{tok:?} is not a node id (an integer >= 1)")),
    }
}

/// Requires that nothing follows the last expected argument.
fn done(rest: Option<&str>, usage: &str) -> Result<(), ParseError> {
    match rest {
        None => Ok(()),
        Some(_) => err(format!("too many arguments; usage: {usage}")),
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
pub fn parse(line: &[u8]) -> Result<Request, ParseError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return err("request is not valid UTF-8");
    };
    if line.contains('\0') {
        return err("request contains a NUL byte");
    }
    let (cmd, rest) = next_token(line);
    let arg = |rest: Option<&str>, usage: &str| -> Result<(String, Option<String>), ParseError> {
        match rest {
            Some(r) if !r.is_empty() => {
                let (tok, more) = next_token(r);
                Ok((tok.to_string(), more.map(str::to_string)))
            }
            _ => err(format!("missing argument; usage: {usage}")),
        }
    };
    match cmd.to_ascii_uppercase().as_str() {
        "PUT" => {
            let usage = "PUT <key> <value>";
            let (k, v) = arg(rest, usage)?;
            let Some(v) = v else {
                return err(format!("missing value; usage: {usage} (an empty value is \"PUT <key> \")"));
            };
            Ok(Request::Write(Command::Put { key: key(&k)?, value: value(&v)? }))
        }
        "GET" => {
            let usage = "GET <key>";
            let (k, more) = arg(rest, usage)?;
            done(more.as_deref(), usage)?;
            Ok(Request::Get { key: key(&k)? })
        }
        "DEL" => {
            let usage = "DEL <key>";
            let (k, more) = arg(rest, usage)?;
            done(more.as_deref(), usage)?;
            Ok(Request::Write(Command::Delete { key: key(&k)? }))
        }
        "CAS" => {
            let usage = "CAS <key> <expected> <new value>";
            let (k, more) = arg(rest, usage)?;
            let (expected, new) = arg(more.as_deref(), usage)?;
            let Some(new) = new else {
                return err(format!("missing new value; usage: {usage}"));
            };
            Ok(Request::Write(Command::Cas {
                key: key(&k)?,
                expected: value(&expected)?,
                value: value(&new)?,
            }))
        }
        "STATUS" => done(rest, "STATUS").map(|_| Request::Status),
        "PING" => done(rest, "PING").map(|_| Request::Ping),
        "SNAPSHOT" => done(rest, "SNAPSHOT").map(|_| Request::Snapshot),
        "ADD_NODE" => {
            let usage = "ADD_NODE <id> <host:port>";
            let (id, more) = arg(rest, usage)?;
            let (addr, more) = arg(more.as_deref(), usage)?;
            done(more.as_deref(), usage)?;
            if addr.is_empty() || !addr.contains(':') {
                return err(format!("{addr:?} is not a host:port address"));
            }
            Ok(Request::AddNode { id: node_id(&id)?, addr })
        }
        "REMOVE_NODE" => {
            let usage = "REMOVE_NODE <id>";
            let (id, more) = arg(rest, usage)?;
            done(more.as_deref(), usage)?;
            Ok(Request::RemoveNode { id: node_id(&id)? })
        }
        "TRANSFER_LEADER" => {
            let usage = "TRANSFER_LEADER <id>";
            let (id, more) = arg(rest, usage)?;
            done(more.as_deref(), usage)?;
            Ok(Request::TransferLeader { id: node_id(&id)? })
        }
        "" => err("empty request"),
        _ => err(format!(
            "unknown command {:?}; known: PUT GET DEL CAS STATUS ADD_NODE REMOVE_NODE TRANSFER_LEADER SNAPSHOT PING",
            cmd.chars().take(32).collect::<String>()
        )),
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
            b"ADD_NODE 4",
            b"REMOVE_NODE",
            b"STATUS now",
        ] {
            let e = parse(line).unwrap_err();
            assert!(!e.0.is_empty());
        }
        let long_key = format!("GET {}", "k".repeat(MAX_KEY + 1));
        assert!(parse(long_key.as_bytes()).is_err());
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
}
