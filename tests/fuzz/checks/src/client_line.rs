//! The client line parser (`raftnode::protocol::parse`) and the reply path
//! behind it.
//!
//! The input is what a client sends: it is cut at every `\n`, as the server
//! cuts requests, and each piece (the last one too, terminated or not) is
//! parsed. A request then takes the path the server gives it, without a
//! cluster: a write is encoded as a log entry, decoded as the state machine
//! decodes it, applied to a small store and answered (a `#<seq>` tagged
//! write on a session of that store, then once more as a retry); a read is answered
//! from that store; a membership change's entry context is encoded and
//! decoded; a refused line gets its `ERR BAD_REQUEST` reply.
//!
//! Promises checked:
//! - nothing panics, allocates beyond [`ALLOC_LIMIT`], or hangs;
//! - a request satisfies the limits the protocol states (key length and
//!   characters, value length, an address with a port);
//! - a node id (`ADD_NODE`, `REMOVE_NODE`, `TRANSFER_LEADER`) is exactly
//!   what `node_id` in `protocol.rs` promises: the token is decimal digits
//!   only (no sign, no spaces; leading zeros allowed) whose value, computed
//!   here without `str::parse`, is the id, between 1 and 2^64 - 2; and a
//!   token refused as `BadNodeId` has no such value;
//! - an `AUTH` token is the rest of the line, byte for byte, and the line
//!   `AUTH <token>\r` parses back to it (so does `AUTH <token>` unless the
//!   token ends in `\r`, which that form would strip);
//! - the command and conf-change encodings round-trip;
//! - a tagged write retried gets the same reply and changes nothing;
//! - a sequence number or a session id is >= 1;
//! - every reply is exactly one line.
//!
//! This target fuzzes one line at a time; the server's framing (line length,
//! an unterminated last line, pipelining) is `client_frames`'s, which sends
//! each line it cuts through [`check_line`].

use std::cell::RefCell;

use raftnode::kv::{self, Command, KvStore, RequestId};
use raftnode::protocol::{
    self, ErrorCode, ParseError, Reply, Request, SessionId, SessionSecret, MAX_KEY, MAX_VALUE,
};
use raftnode::sessions::SessionLimits;

/// A line is at most [`protocol::MAX_LINE`] bytes, and a request copies it
/// a few times; nothing needs a single allocation over this.
pub const ALLOC_LIMIT: usize = 4 * protocol::MAX_LINE;

const ID: RequestId = RequestId { node: 7, seq: 42 };
/// The secret of the session every tagged line is applied in.
const SECRET: SessionSecret = [0x5a; 16];

thread_local! {
    /// Keys `k` (value `v`), `e` (empty value) and `n` (`41`), so that
    /// reads, deletes, both outcomes of CAS and INCR are reachable. Every write applied to it is
    /// undone before the next line, so each input sees the same store.
    static STORE: RefCell<KvStore> = RefCell::new({
        let mut kv = KvStore::new();
        for (k, v) in [("k", "v"), ("e", ""), ("n", "41")] {
            kv.apply(Command::Put {
                key: k.into(),
                value: v.into(),
            });
        }
        kv
    });
}

pub fn check(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        check_line(line);
    }
}

/// Parses one line (without its `\n`), checks what came out, and answers
/// it as the server would.
pub fn check_line(line: &[u8]) {
    let parsed = protocol::parse(line);
    check_tokens(line, &parsed);
    let reply = match parsed {
        Ok(req) => {
            check_request(&req);
            answer(req)
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty(), "{e:?} has no message");
            Reply::error(ErrorCode::BadRequest, msg)
        }
    };
    let mut out = Vec::new();
    reply.write_line(&mut out);
    assert_eq!(
        out.iter().position(|&b| b == b'\n'),
        Some(out.len() - 1),
        "the reply to {line:?} is not one line: {out:?}"
    );
}

/// A node id as `protocol.rs` promises to read it, computed without
/// `str::parse`: digits only, any leading zeros, a value from 1 to 2^64 - 2.
fn strict_node_id(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || !tok.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = tok.iter().try_fold(0u64, |v, &d| {
        v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    (1..u64::MAX).contains(&value).then_some(value)
}

/// Checks the node id and `AUTH` token of a line against its raw tokens.
fn check_tokens(line: &[u8], parsed: &Result<Request, ParseError>) {
    // As `parse` reads it: one `\r` stripped, tokens split at one space.
    let body = line.strip_suffix(b"\r").unwrap_or(line);
    let mut tokens = body.split(|&b| b == b' ');
    let mut cmd = tokens.next().unwrap_or_default();
    // `#<seq> <request>`: the request after the tag is parsed the same
    // way (and refused as untaggable only if it parses), so a bad node id
    // there is reported as such.
    if cmd.starts_with(b"#") {
        cmd = tokens.next().unwrap_or_default();
    }
    let cmd = cmd.to_ascii_uppercase();
    let id_token = match cmd.as_slice() {
        b"ADD_NODE" | b"REMOVE_NODE" | b"TRANSFER_LEADER" => tokens.next(),
        _ => None,
    };
    match parsed {
        Ok(Request::AddNode { id, .. })
        | Ok(Request::RemoveNode { id })
        | Ok(Request::TransferLeader { id }) => {
            let tok = id_token.expect("a membership request has an id token");
            assert_eq!(
                strict_node_id(tok),
                Some(*id),
                "node id {id} parsed from the token {tok:?}"
            );
        }
        Err(ParseError::BadNodeId(shown)) => {
            let tok = id_token.expect("BadNodeId from a line without an id token");
            assert_eq!(strict_node_id(tok), None, "the node id {tok:?} was refused");
            let tok = std::str::from_utf8(tok).expect("a refused id of a UTF-8 line");
            assert_eq!(*shown, tok.chars().take(32).collect::<String>());
        }
        Ok(Request::Auth { token }) => {
            assert_eq!(&body[5..], token.as_slice(), "AUTH token of {line:?}");
            let mut again = b"AUTH ".to_vec();
            again.extend_from_slice(token);
            if !token.ends_with(b"\r") {
                assert_eq!(protocol::parse(&again).as_ref(), Ok(&parsed_auth(token)));
            }
            again.push(b'\r');
            assert_eq!(protocol::parse(&again).as_ref(), Ok(&parsed_auth(token)));
        }
        _ => {}
    }
}

fn parsed_auth(token: &[u8]) -> Request {
    Request::Auth {
        token: token.to_vec(),
    }
}

fn check_key(key: &[u8]) {
    assert!(!key.is_empty() && key.len() <= MAX_KEY, "key {key:?}");
    let key = std::str::from_utf8(key).expect("a key is UTF-8");
    assert!(
        !key.chars().any(|c| c.is_whitespace() || c.is_control()),
        "key {key:?}"
    );
}

fn check_request(req: &Request) {
    match req {
        Request::Write(cmd) => check_write(cmd),
        Request::Tagged { seq, cmd } => {
            assert!(*seq >= 1, "sequence number 0 parsed");
            check_write(cmd);
        }
        Request::Get { key } => check_key(key),
        Request::ResumeSession { id } => {
            assert!(id.index >= 1, "session id 0 parsed");
            let token = id.token();
            assert!(token.len() <= 128 && token.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(SessionId::parse(&token), Some(*id), "{token} round trip");
        }
        Request::OpenSession => {}
        Request::AddNode { id, addr } => {
            assert!(*id >= 1);
            assert!(addr.contains(':'), "address {addr:?}");
        }
        Request::RemoveNode { id } | Request::TransferLeader { id } => assert!(*id >= 1),
        Request::Auth { token } => {
            assert!(!token.is_empty(), "an empty AUTH token parsed");
            assert!(!token.contains(&b' '), "AUTH token {token:?} holds a space");
        }
        Request::Status | Request::Snapshot | Request::Ping => {}
    }
}

/// A client write: within the limits, and never an internal command.
fn check_write(cmd: &Command) {
    match cmd {
        Command::Put { key, value } | Command::Append { key, value } => {
            check_key(key);
            assert!(value.len() <= MAX_VALUE);
        }
        Command::Delete { key } | Command::Incr { key } => check_key(key),
        Command::Cas {
            key,
            expected,
            value,
        } => {
            check_key(key);
            assert!(expected.len() <= MAX_VALUE && value.len() <= MAX_VALUE);
        }
        other => panic!("a client line parsed into the internal command {other:?}"),
    }
}

fn key_of(cmd: &Command) -> Vec<u8> {
    match cmd {
        Command::Put { key, .. }
        | Command::Delete { key }
        | Command::Cas { key, .. }
        | Command::Incr { key }
        | Command::Append { key, .. } => key.clone(),
        _ => unreachable!("refused by check_write"),
    }
}

/// Applies `cmd` (whose entry must round-trip) to the store as entry
/// `index`, and puts `key` back as it was.
fn apply_and_undo(kv: &mut KvStore, index: u64, cmd: Command, key: Vec<u8>) -> Reply {
    let entry = kv::encode_command(ID, &cmd);
    assert_eq!(
        kv::decode_command(&entry),
        Some((ID, cmd.clone())),
        "the log entry of {cmd:?} does not decode to it"
    );
    let before = kv.get(&key).map(<[u8]>::to_vec);
    let reply = kv.apply_at(index, cmd);
    kv.apply(match before {
        Some(value) => Command::Put { key, value },
        None => Command::Delete { key },
    });
    reply
}

/// The reply the request would get from a cluster holding [`STORE`].
fn answer(req: Request) -> Reply {
    match req {
        Request::Write(cmd) => STORE.with(|s| {
            let key = key_of(&cmd);
            apply_and_undo(&mut s.borrow_mut(), 0, cmd, key)
        }),
        Request::Tagged { seq, cmd } => STORE.with(|s| {
            let mut kv = s.borrow_mut();
            // Session 1, opened afresh for every line: the same input
            // always meets the same table.
            let limits = SessionLimits::default();
            assert_eq!(
                kv.apply_at(
                    1,
                    Command::OpenSession {
                        limits,
                        secret: Some(SECRET)
                    }
                ),
                Reply::Session(SessionId {
                    index: 1,
                    secret: SECRET
                })
            );
            let key = key_of(&cmd);
            let before = kv.get(&key).map(<[u8]>::to_vec);
            let tagged = Command::Tagged {
                session: 1,
                seq,
                cmd: Box::new(cmd),
            };
            let entry = kv::encode_command(ID, &tagged);
            assert_eq!(kv::decode_command(&entry), Some((ID, tagged.clone())));
            let reply = kv.apply_at(2, tagged.clone());
            let after = kv.get(&key).map(<[u8]>::to_vec);
            // A retry gets the same reply and changes nothing.
            assert_eq!(kv.apply_at(3, tagged), reply, "a retry of seq {seq}");
            assert_eq!(kv.get(&key).map(<[u8]>::to_vec), after);
            kv.apply(match before {
                Some(value) => Command::Put { key, value },
                None => Command::Delete { key },
            });
            reply
        }),
        Request::OpenSession => Reply::Session(SessionId {
            index: 1,
            secret: SECRET,
        }),
        Request::ResumeSession { id } => Reply::Session(id),
        Request::Get { key } => STORE.with(|s| match s.borrow().get(&key) {
            Some(v) => Reply::Value(v.to_vec().into()),
            None => Reply::NotFound,
        }),
        Request::AddNode { addr, .. } => {
            let ctx = kv::encode_conf_context(ID, &addr);
            assert_eq!(kv::decode_conf_context(&ctx), Some((ID, addr)));
            Reply::OkIndex(u64::MAX)
        }
        Request::RemoveNode { .. } | Request::TransferLeader { .. } | Request::Snapshot => {
            Reply::Ok
        }
        Request::Status => Reply::Status("STATUS id=1 role=leader".into()),
        Request::Ping => Reply::Pong,
        Request::Auth { .. } => Reply::Ok,
    }
}

/// Every command, in its valid forms and its edge cases, and the careless
/// inputs issue 12 lists.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let long_key = "k".repeat(MAX_KEY);
    let lines: Vec<(&str, Vec<u8>)> = vec![
        ("put", b"PUT k hello world".to_vec()),
        ("put_empty_value", b"PUT k ".to_vec()),
        ("put_crlf", b"PUT k v\r".to_vec()),
        ("put_no_value", b"PUT k".to_vec()),
        ("put_key_at_limit", format!("PUT {long_key} v").into_bytes()),
        (
            "put_key_over_limit",
            format!("PUT {long_key}k v").into_bytes(),
        ),
        ("get", b"GET k".to_vec()),
        ("get_missing", b"GET nokey".to_vec()),
        ("get_two_keys", b"GET a b".to_vec()),
        ("get_nul", b"GET k\0ey".to_vec()),
        ("get_unicode_space", "GET k\u{2003}y".as_bytes().to_vec()),
        ("del", b"DEL k".to_vec()),
        ("del_missing", b"DEL nokey".to_vec()),
        ("cas_match", b"CAS k v new value".to_vec()),
        ("cas_mismatch", b"CAS k x y".to_vec()),
        ("cas_missing", b"CAS nokey x y".to_vec()),
        ("cas_no_new_value", b"CAS k v".to_vec()),
        ("status", b"STATUS".to_vec()),
        ("auth", b"AUTH s3cret".to_vec()),
        ("auth_no_token", b"AUTH".to_vec()),
        ("auth_two_tokens", b"AUTH a b".to_vec()),
        ("status_arg", b"STATUS now".to_vec()),
        ("ping_lower", b"ping".to_vec()),
        ("snapshot", b"SNAPSHOT".to_vec()),
        ("add_node", b"ADD_NODE 4 127.0.0.1:7004".to_vec()),
        ("add_node_zero", b"ADD_NODE 0 127.0.0.1:7004".to_vec()),
        ("add_node_no_port", b"ADD_NODE 4 localhost".to_vec()),
        ("remove_node", b"REMOVE_NODE 2".to_vec()),
        ("remove_node_plus", b"REMOVE_NODE +2".to_vec()),
        ("remove_node_leading_zeros", b"REMOVE_NODE 0002".to_vec()),
        (
            "remove_node_huge",
            b"REMOVE_NODE 18446744073709551616".to_vec(),
        ),
        (
            "remove_node_max",
            b"REMOVE_NODE 18446744073709551615".to_vec(),
        ),
        (
            "remove_node_max_minus_one",
            b"REMOVE_NODE 18446744073709551614".to_vec(),
        ),
        ("transfer_leader", b"TRANSFER_LEADER 3".to_vec()),
        ("transfer_leader_space", b"TRANSFER_LEADER  3".to_vec()),
        ("auth_crlf", b"AUTH s3cret\r".to_vec()),
        ("auth_token_ends_in_cr", b"auth s3cret\r\r".to_vec()),
        ("unknown", b"FOO bar".to_vec()),
        ("empty", b"".to_vec()),
        ("not_utf8", b"PUT \xff\xfe v".to_vec()),
        ("incr", b"INCR n".to_vec()),
        ("incr_not_integer", b"INCR k".to_vec()),
        ("incr_missing", b"INCR nokey".to_vec()),
        ("append", b"APPEND k more text".to_vec()),
        ("append_empty", b"APPEND e ".to_vec()),
        ("session_open", b"SESSION".to_vec()),
        ("session_resume", b"SESSION 17-000102030405060708090a0b0c0d0e0f".to_vec()),
        ("session_resume_upper", b"SESSION 17-ABCDEF0123456789ABCDEF0123456789".to_vec()),
        ("session_index_only", b"SESSION 17".to_vec()),
        ("session_short_secret", b"SESSION 17-0001020304".to_vec()),
        ("session_bad_hex", b"SESSION 17-0001020304050607080g0a0b0c0d0e0f".to_vec()),
        ("session_zero", b"SESSION 0".to_vec()),
        ("session_two_ids", b"SESSION 1 2".to_vec()),
        ("tagged_incr", b"#1 INCR n".to_vec()),
        ("tagged_put", b"#18446744073709551615 PUT k a b".to_vec()),
        ("tagged_cas", b"#3 CAS k v w".to_vec()),
        ("tagged_zero", b"#0 INCR n".to_vec()),
        ("tagged_get", b"#2 GET k".to_vec()),
        ("tagged_twice", b"#2 #3 DEL k".to_vec()),
        ("tag_alone", b"#5".to_vec()),
        (
            "session_pipelined",
            b"SESSION\n#1 INCR n\n#1 INCR n\n#2 APPEND k x\nSESSION 9-5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\n".to_vec(),
        ),
        (
            "pipelined",
            b"PUT a 1\nGET a\nCAS a 1 2\nDEL a\nPING\nSTATUS\n".to_vec(),
        ),
    ];
    lines
        .into_iter()
        .map(|(name, line)| (name.to_string(), line))
        .collect()
}
