//! The client library's reply parser (`raftnode::client::parse_reply`):
//! what a node, or anything posing as one, sends back to `raftctl` and to
//! every program built on `raftnode::client`.
//!
//! The input is the bytes a node sends, cut at every `\n` as the client's
//! line reader cuts them (the cutting itself is the server's `LineFramer`,
//! which `client_frames` fuzzes); each piece is parsed.
//!
//! Promises checked:
//! - nothing panics, allocates beyond [`ALLOC_LIMIT`], or hangs; a refused
//!   line has a non-empty reason;
//! - `VALUE` and `MISMATCH` carry exactly the bytes after their word;
//! - an `ERR` reply's code is the token after `ERR` and its message the
//!   rest of the line;
//! - `OK <index>` is the decimal value of its token, computed here without
//!   `str::parse`;
//! - a `STATUS` reply, written out again in its canonical form, parses to
//!   the same status (nothing is invented or lost between the fields);
//! - a session id is the rest of the line, printable ASCII, at most
//!   [`MAX_SESSION_ID`] bytes; the one-word replies are exactly their word.

use raftnode::client::{parse_reply, Code, Reply, Status, MAX_REPLY_LINE, MAX_SESSION_ID};

/// A reply line is at most [`MAX_REPLY_LINE`] bytes and parsing copies it
/// a few times; nothing needs a single allocation over this.
pub const ALLOC_LIMIT: usize = 4 * MAX_REPLY_LINE;

pub fn check(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        check_line(line);
    }
}

/// The value of a token of decimal digits, if it fits in a u64.
fn decimal(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || !tok.iter().all(u8::is_ascii_digit) {
        return None;
    }
    tok.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// `STATUS ...` as a node writes it, from the parsed fields.
fn render(s: &Status) -> String {
    let mut out = format!(
        "STATUS id={} role={} term={} leader={} commit={} applied={} last={} snapshot={} members={}",
        s.id,
        s.role,
        s.term,
        s.leader.unwrap_or(0),
        s.commit,
        s.applied,
        s.last,
        s.snapshot,
        list(&s.members)
    );
    if !s.learners.is_empty() {
        out.push_str(&format!(" learners={}", list(&s.learners)));
    }
    if s.recovering {
        out.push_str(" recovering=1");
    }
    for (k, v) in &s.other {
        out.push_str(&format!(" {k}={v}"));
    }
    out
}

pub fn check_line(line: &[u8]) {
    let reply = match parse_reply(line) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    match reply {
        Reply::Value(v) => assert_eq!(line.strip_prefix(b"VALUE "), Some(&v[..])),
        Reply::Mismatch(v) => assert_eq!(line.strip_prefix(b"MISMATCH "), Some(&v[..])),
        Reply::Err { code, message } => {
            let text = String::from_utf8_lossy(&line[4..]);
            let (tok, rest) = text.split_once(' ').unwrap_or((text.as_ref(), ""));
            assert_eq!(code.as_str(), tok);
            assert_eq!(code, Code::from_wire(tok));
            assert_eq!(message, rest);
        }
        Reply::OkIndex(i) => assert_eq!(decimal(&line[3..]), Some(i)),
        Reply::Status(s) => {
            let again = parse_reply(render(&s).as_bytes());
            assert_eq!(again, Ok(Reply::Status(s)));
        }
        Reply::Session(id) => {
            assert_eq!(&line[8..], id.as_bytes());
            assert!(id.len() <= MAX_SESSION_ID && id.bytes().all(|b| b.is_ascii_graphic()));
        }
        Reply::Ok => assert_eq!(line, b"OK"),
        Reply::NotFound => assert_eq!(line, b"NOT_FOUND"),
        Reply::Deleted => assert_eq!(line, b"DELETED"),
        Reply::Pong => assert_eq!(line, b"PONG"),
    }
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let big = format!("VALUE {}", "v".repeat(4096));
    let lines: Vec<(&str, &[u8])> = vec![
        ("ok", b"OK"),
        ("ok_index", b"OK 18446744073709551615"),
        ("ok_index_overflow", b"OK 18446744073709551616"),
        ("value", b"VALUE hello world"),
        ("value_empty", b"VALUE "),
        ("value_big", big.as_bytes()),
        ("not_found", b"NOT_FOUND"),
        ("deleted", b"DELETED"),
        ("mismatch", b"MISMATCH current value"),
        ("pong", b"PONG"),
        ("session", b"SESSION 42"),
        ("session_secret", b"SESSION 42-000102030405060708090a0b0c0d0e0f"),
        ("session_bad", b"SESSION 4 2"),
        ("err", b"ERR NO_LEADER no leader is known"),
        ("err_expired", b"ERR SESSION_EXPIRED session 7 is unknown or expired"),
        ("err_unknown_code", b"ERR SOMETHING_NEW later"),
        ("err_no_message", b"ERR BUSY"),
        ("err_lower", b"ERR busy x"),
        (
            "status",
            b"STATUS id=2 role=follower term=7 leader=1 commit=40 applied=39 last=41 snapshot=0 members=1,2,3",
        ),
        (
            "status_recovering",
            b"STATUS id=4 role=learner term=1 leader=0 commit=0 applied=0 last=0 snapshot=0 members=1 learners=4 recovering=1 recovery=catching-up-3-of-9",
        ),
        ("status_repeated", b"STATUS id=1 id=2"),
        ("not_utf8", b"\xff\xfe\xfd"),
        ("pipelined", b"OK\nVALUE a\nERR TIMEOUT slow\nPONG"),
    ];
    lines
        .into_iter()
        .map(|(n, l)| (n.to_string(), l.to_vec()))
        .collect()
}
