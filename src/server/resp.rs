//! The Redis commands of the `--resp-addr` port, mapped onto the requests
//! of the line protocol, and their replies encoded as RESP2.
//!
//! A RESP connection lives in the same I/O thread as a line connection and
//! gets the same guarantees: the same bounds (input, requests in flight,
//! output), timeouts, `--max-clients`, TLS and `AUTH`; linearizable reads
//! at any node; writes forwarded to the leader; a read waits for the
//! connection's earlier writes. Only the parsing of a request and the
//! encoding of its reply differ. Each request opens one slot whose
//! [`Shape`] says how its [`Reply`] is written.
//!
//! | Redis | runs as | reply |
//! | --- | --- | --- |
//! | `GET k` | linearizable read | bulk, or nil |
//! | `SET k v` | `PUT` | `+OK` |
//! | `SET k v NX`/`XX` | put-if entry | `+OK`, or nil when not set |
//! | `DEL k...` | delete-many entry | how many were there |
//! | `MSET k v...` | put-many entry | `+OK` |
//! | `MGET k...`, `EXISTS k...`, `DBSIZE` | one linearizable read | array / integer |
//! | `INFO` | `STATUS` (local) | bulk text |
//! | `PING`, `ECHO`, `SELECT 0`, `CLIENT`, `COMMAND`, `HELLO`, `QUIT`, `AUTH` | answered at once | |
//!
//! Writes of several keys are one Raft entry each, so they apply at once
//! or not at all (`src/kv.rs`, kinds 16 to 18).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{Conn, Deferred, Slot, Waiting};
use super::{shutting_down, AuthRefusal, IoState};
use crate::kv::Command;
use crate::protocol::{ErrorCode, Reply, MAX_KEY, MAX_VALUE};
use crate::raft::NodeId;
use crate::reads::Query;
use crate::resp::{
    write_array_header, write_bulk, write_error, write_int, write_nil, write_simple,
};

/// The Redis release whose command behaviour these commands follow, as
/// `INFO` and `HELLO` report it to clients that check a version.
pub const REDIS_VERSION: &str = "7.0.0";

/// The commands this port knows, as `COMMAND COUNT` counts them.
const COMMANDS: &[&str] = &[
    "AUTH", "CLIENT", "COMMAND", "DBSIZE", "DEL", "ECHO", "EXISTS", "GET", "HELLO", "INCR", "INFO",
    "MGET", "MSET", "PING", "QUIT", "SELECT", "SET",
];

/// How a request's [`Reply`] is written to its client.
#[derive(Clone, Debug)]
pub enum Shape {
    /// A line of the line protocol ([`Reply::write_line`]).
    Line,
    /// Answered on the spot: these bytes are the answer, whatever the reply.
    Fixed(Vec<u8>),
    /// `Ok` as `+OK`.
    Ok,
    /// A value as a bulk string, `NotFound` as nil.
    Bulk,
    /// A count as an integer; `Deleted` as 1 and `NotFound` as 0.
    Int,
    /// `Ok` as `+OK`, `Unchanged` as nil (`SET NX`/`XX`).
    SetIf,
    /// Values as an array of bulk strings and nils.
    Array,
    /// A `STATUS` line turned into `INFO` text.
    Info(Box<InfoCtx>),
}

/// What `INFO` knows before the `STATUS` answer comes.
#[derive(Clone, Debug)]
pub struct InfoCtx {
    server: bool,
    replication: bool,
    keyspace: bool,
    resp_port: u16,
    uptime: Duration,
    keys: u64,
    clients: usize,
    raft_addrs: Arc<BTreeMap<NodeId, String>>,
}

/// Appends `reply`, encoded as `shape` says.
pub fn write_reply(shape: &Shape, reply: &Reply, out: &mut Vec<u8>) {
    match (shape, reply) {
        (Shape::Line, r) => r.write_line(out),
        (Shape::Fixed(bytes), _) => out.extend_from_slice(bytes),
        (_, Reply::Error(code, msg)) => write_error(out, &error_text(*code, msg)),
        (Shape::Ok | Shape::SetIf, Reply::Ok) => write_simple(out, "OK"),
        (Shape::SetIf, Reply::Unchanged) | (Shape::Bulk, Reply::NotFound) => write_nil(out),
        (Shape::Bulk, Reply::Value(v)) => write_bulk(out, v),
        (Shape::Int, Reply::Count(n)) => write_int(out, i64::try_from(*n).unwrap_or(i64::MAX)),
        (Shape::Int, Reply::Deleted) => write_int(out, 1),
        (Shape::Int, Reply::NotFound) => write_int(out, 0),
        // `INCR`'s new value, which the state machine wrote as decimal.
        (Shape::Int, Reply::Value(v)) => {
            match std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()) {
                Some(n) => write_int(out, n),
                None => write_error(
                    out,
                    "ERR internal: INCR answered a value that is no integer",
                ),
            }
        }
        (Shape::Array, Reply::Values(values)) => {
            write_array_header(out, values.len());
            for v in values {
                match v {
                    Some(v) => write_bulk(out, v),
                    None => write_nil(out),
                }
            }
        }
        (Shape::Info(ctx), Reply::Status(line)) => write_bulk(out, info_text(ctx, line).as_bytes()),
        (shape, reply) => write_error(
            out,
            &format!("ERR internal: reply {reply:?} does not fit request shape {shape:?}"),
        ),
    }
}

/// A node error as a RESP error: Redis's `ERR` for a bad request, the
/// line protocol's code as the error's first word otherwise.
fn error_text(code: ErrorCode, msg: &str) -> String {
    match code {
        ErrorCode::BadRequest => format!("ERR {msg}"),
        code => format!("{} {msg}", code.as_str()),
    }
}

/// An answer written at once.
fn fixed(bytes: Vec<u8>) -> Slot {
    Slot {
        reply: Some(Reply::Ok),
        pending_id: None,
        write: false,
        opens_session: false,
        meta: None,
        shape: Shape::Fixed(bytes),
    }
}

fn simple(text: &str) -> Slot {
    let mut out = Vec::new();
    write_simple(&mut out, text);
    fixed(out)
}

fn error(text: &str) -> Slot {
    let mut out = Vec::new();
    write_error(&mut out, text);
    fixed(out)
}

fn bulk(bytes: &[u8]) -> Slot {
    let mut out = Vec::new();
    write_bulk(&mut out, bytes);
    fixed(out)
}

fn int(n: i64) -> Slot {
    let mut out = Vec::new();
    write_int(&mut out, n);
    fixed(out)
}

fn nil() -> Slot {
    let mut out = Vec::new();
    write_nil(&mut out);
    fixed(out)
}

fn empty_array() -> Slot {
    fixed(b"*0\r\n".to_vec())
}

fn wrong_arity(name: &str) -> Slot {
    error(&format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Redis's text for a command it does not know: the name and the first
/// arguments, each cut to 128 bytes.
fn unknown_command(args: &[Vec<u8>]) -> Slot {
    let shown = |a: &[u8]| String::from_utf8_lossy(&a[..a.len().min(128)]).into_owned();
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        shown(&args[0])
    );
    for a in args.iter().skip(1).take(16) {
        let _ = write!(msg, "'{}' ", shown(a));
    }
    error(&msg)
}

fn unknown_subcommand(sub: &[u8], cmd: &str) -> Slot {
    error(&format!(
        "ERR unknown subcommand '{}'. Try {cmd} HELP.",
        String::from_utf8_lossy(&sub[..sub.len().min(128)])
    ))
}

/// A key as the store takes it: 1 to [`MAX_KEY`] bytes, any bytes.
fn check_key(key: &[u8]) -> Result<(), Slot> {
    if key.is_empty() {
        return Err(error("ERR empty key (keys are 1 to 1024 bytes)"));
    }
    if key.len() > MAX_KEY {
        return Err(error(&format!(
            "ERR key is {} bytes, the limit is {MAX_KEY}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Slot> {
    if value.len() > MAX_VALUE {
        return Err(error(&format!(
            "ERR value is {} bytes, the limit is {MAX_VALUE}",
            value.len()
        )));
    }
    Ok(())
}

fn check_keys(keys: &[Vec<u8>]) -> Result<(), Slot> {
    keys.iter().try_for_each(|k| check_key(k))
}

/// What a request turns into.
enum Action {
    /// Answered at once.
    Answer(Slot),
    /// Answered at once; then the connection closes.
    AnswerAndClose(Slot),
    /// A refused `AUTH`: answered a little later, then the connection
    /// closes (`IoState::refuse_later`).
    RefuseLater(Slot),
    Write(Command, Shape),
    Read(Query, Shape),
    Info(Box<InfoCtx>),
}

impl IoState {
    /// Starts one RESP request.
    pub(super) fn start_resp(
        &mut self,
        c: &mut Conn,
        token: usize,
        args: Vec<Vec<u8>>,
        now: Instant,
    ) {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let action = match name.as_str() {
            "AUTH" => self.auth(c, &args[1..]),
            "HELLO" => self.hello(c, token, &args),
            "QUIT" => Action::AnswerAndClose(simple("OK")),
            _ if !c.authed => Action::Answer(error("NOAUTH Authentication required.")),
            _ => self.command(c, &name, args),
        };
        let local = matches!(
            action,
            Action::Answer(_)
                | Action::AnswerAndClose(_)
                | Action::RefuseLater(_)
                | Action::Info(_)
        );
        let action = if !self.cfg.shared.started() {
            match action {
                Action::Info(ctx) => {
                    let deadline = now + self.cfg.timeout;
                    let (seq, _) = self.await_reply(c, token, false, Shape::Info(ctx), deadline);
                    c.fill(seq, Reply::Status(self.starting_status()));
                    return;
                }
                a @ (Action::Answer(_) | Action::AnswerAndClose(_) | Action::RefuseLater(_)) => a,
                _ => Action::Answer(slot_for(Reply::error(ErrorCode::NoLeader, super::STARTING))),
            }
        } else if !local && self.cfg.shared.stopping() {
            Action::Answer(slot_for(shutting_down()))
        } else if !local && self.cfg.shared.removed() {
            let msg = "this node was removed from the cluster; use another member";
            Action::Answer(slot_for(Reply::error(ErrorCode::Removed, msg)))
        } else {
            action
        };
        let deadline = now + self.cfg.timeout;
        match action {
            Action::Answer(slot) => {
                c.open_slot(slot);
            }
            Action::AnswerAndClose(slot) => {
                c.open_slot(slot);
                c.close_when_flushed = true;
            }
            Action::RefuseLater(slot) => self.refuse_later(c, token, slot),
            Action::Write(cmd, shape) => {
                self.propose(c, token, &cmd, shape, deadline);
            }
            Action::Read(query, shape) => self.read_after_writes(c, token, query, shape, deadline),
            Action::Info(ctx) => {
                let (seq, tx) = self.await_reply(c, token, false, Shape::Info(ctx), deadline);
                if self.cfg.status.send(tx).is_err() {
                    c.fill(seq, shutting_down());
                }
            }
        }
    }

    /// A command of an authenticated connection.
    fn command(&mut self, c: &mut Conn, name: &str, mut args: Vec<Vec<u8>>) -> Action {
        let n = args.len();
        let answer = |slot| Action::Answer(slot);
        match (name, n) {
            ("PING", 1) => answer(simple("PONG")),
            ("PING", 2) => answer(bulk(&args[1])),
            ("ECHO", 2) => answer(bulk(&args[1])),
            ("GET", 2) => {
                let key = args.swap_remove(1);
                match check_key(&key) {
                    Ok(()) => Action::Read(Query::Get(key), Shape::Bulk),
                    Err(e) => answer(e),
                }
            }
            ("SET", 3..) => set(args),
            ("INCR", 2) => {
                let key = args.swap_remove(1);
                match check_key(&key) {
                    Ok(()) => Action::Write(Command::Incr { key }, Shape::Int),
                    Err(e) => answer(e),
                }
            }
            ("DEL", 2..) => {
                let keys = args.split_off(1);
                match check_keys(&keys) {
                    Ok(()) => Action::Write(Command::DeleteMany { keys }, Shape::Int),
                    Err(e) => answer(e),
                }
            }
            ("EXISTS", 2..) | ("MGET", 2..) => {
                let keys = args.split_off(1);
                match check_keys(&keys) {
                    Err(e) => answer(e),
                    Ok(()) if name == "MGET" => Action::Read(Query::MGet(keys), Shape::Array),
                    Ok(()) => Action::Read(Query::Exists(keys), Shape::Int),
                }
            }
            ("MSET", 3..) if n % 2 == 1 => mset(args),
            ("DBSIZE", 1) => Action::Read(Query::Len, Shape::Int),
            ("INFO", _) => self.info(&args[1..]),
            ("SELECT", 2) => answer(select(&args[1])),
            ("CLIENT", 2..) => answer(client(c, &args)),
            ("COMMAND", _) => answer(command_command(&args)),
            (
                "PING" | "ECHO" | "GET" | "SET" | "INCR" | "DEL" | "EXISTS" | "MGET" | "MSET"
                | "DBSIZE" | "SELECT" | "CLIENT",
                _,
            ) => answer(wrong_arity(name)),
            _ => answer(unknown_command(&args)),
        }
    }

    /// `AUTH <token>` or `AUTH default <token>`: the line protocol's
    /// `AUTH`. A wrong token closes the connection.
    fn auth(&mut self, c: &mut Conn, args: &[Vec<u8>]) -> Action {
        let given = match args {
            [token] => token,
            [user, token] if user.as_slice() == b"default" => token,
            [_, _] => {
                crate::warn_every!("client-auth", "client {} sent AUTH for a user", c.peer);
                return wrong_pass();
            }
            _ => return Action::Answer(wrong_arity("AUTH")),
        };
        if self.cfg.auth_token.is_none() {
            return Action::Answer(error(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?",
            ));
        }
        match self.check_token(c, given) {
            Ok(()) => Action::Answer(simple("OK")),
            // Throttled: the token was not checked.
            Err(why @ AuthRefusal::TooSoon(_)) => {
                Action::RefuseLater(error(&format!("WRONGPASS {why}")))
            }
            Err(_) => wrong_pass(),
        }
    }

    /// `HELLO [2 [AUTH user token] [SETNAME name]]`; `HELLO 3` is refused
    /// so that clients fall back to RESP2.
    fn hello(&mut self, c: &mut Conn, token: usize, args: &[Vec<u8>]) -> Action {
        if let Some(ver) = args.get(1) {
            match std::str::from_utf8(ver)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(2) => {}
                Some(3) => {
                    return Action::Answer(error(
                        "NOPROTO sorry, this protocol version is not supported; use RESP2",
                    ))
                }
                Some(_) => {
                    return Action::Answer(error("NOPROTO unsupported protocol version; use RESP2"))
                }
                None => {
                    return Action::Answer(error(
                        "ERR Protocol version is not an integer or out of range",
                    ))
                }
            }
        }
        let mut rest = args.get(2..).unwrap_or_default();
        let mut name = None;
        while let Some(opt) = rest.first() {
            let opt = String::from_utf8_lossy(opt).to_ascii_uppercase();
            match (opt.as_str(), rest) {
                ("AUTH", [_, user, pass, tail @ ..]) => {
                    match self.auth(c, &[user.clone(), pass.clone()]) {
                        Action::Answer(_) if c.authed => {}
                        refused => return refused,
                    }
                    rest = tail;
                }
                ("SETNAME", [_, n, tail @ ..]) => {
                    name = Some(n.clone());
                    rest = tail;
                }
                _ => {
                    return Action::Answer(error(&format!(
                        "ERR Syntax error in HELLO option '{}'",
                        opt.chars().take(64).collect::<String>()
                    )))
                }
            }
        }
        if !c.authed {
            return Action::Answer(error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time",
            ));
        }
        if let Some(n) = name {
            if let Err(e) = valid_client_name(&n) {
                return Action::Answer(e);
            }
            c.name = Some(n);
        }
        let role = if self.cfg.shared.leader() == self.cfg.id {
            "master"
        } else {
            "replica"
        };
        let mut out = Vec::new();
        write_array_header(&mut out, 14);
        for (k, v) in [("server", "raftnode"), ("version", REDIS_VERSION)] {
            write_bulk(&mut out, k.as_bytes());
            write_bulk(&mut out, v.as_bytes());
        }
        write_bulk(&mut out, b"proto");
        write_int(&mut out, 2);
        write_bulk(&mut out, b"id");
        write_int(&mut out, token as i64);
        for (k, v) in [("mode", "standalone"), ("role", role)] {
            write_bulk(&mut out, k.as_bytes());
            write_bulk(&mut out, v.as_bytes());
        }
        write_bulk(&mut out, b"modules");
        write_array_header(&mut out, 0);
        Action::Answer(fixed(out))
    }

    /// `INFO [section...]`: `server`, `replication`, `keyspace`; none, or
    /// `all`, `default`, `everything`, mean the three.
    fn info(&self, sections: &[Vec<u8>]) -> Action {
        let wants = |name: &str| {
            sections.is_empty()
                || sections.iter().any(|s| {
                    let s = String::from_utf8_lossy(s).to_ascii_lowercase();
                    s == name || matches!(s.as_str(), "all" | "default" | "everything")
                })
        };
        Action::Info(Box::new(InfoCtx {
            server: wants("server"),
            replication: wants("replication"),
            keyspace: wants("keyspace"),
            resp_port: self.resp_port,
            uptime: self.started.elapsed(),
            keys: self.cfg.shared.keys(),
            clients: self.conns.len() + 1,
            raft_addrs: self.cfg.raft_addrs.clone(),
        }))
    }

    /// Starts a read now, or once the connection's writes are answered.
    pub(super) fn read_after_writes(
        &mut self,
        c: &mut Conn,
        token: usize,
        query: Query,
        shape: Shape,
        deadline: Instant,
    ) {
        if c.writes_in_flight > 0 {
            c.deferred = Some(Deferred {
                waiting: Waiting::Read(query),
                shape,
                deadline,
                started: Instant::now(),
            });
        } else {
            self.read(c, token, query, shape, deadline);
        }
    }
}

/// The answer to a malformed request, after which the connection closes.
pub(super) fn protocol_error(e: &crate::resp::ProtocolError) -> Slot {
    error(&format!("ERR {e}"))
}

/// A node reply answered at once, as RESP.
/// A refused `AUTH`, answered later; then the connection closes.
fn wrong_pass() -> Action {
    Action::RefuseLater(error(
        "WRONGPASS invalid username-password pair or user is disabled.",
    ))
}

fn slot_for(reply: Reply) -> Slot {
    let mut out = Vec::new();
    write_reply(&Shape::Ok, &reply, &mut out);
    fixed(out)
}

/// `SET key value [NX|XX]`; the expiry options and `GET` are refused.
fn set(mut args: Vec<Vec<u8>>) -> Action {
    let mut present = None;
    for opt in &args[3..] {
        let opt = String::from_utf8_lossy(opt).to_ascii_uppercase();
        match opt.as_str() {
            "NX" | "XX" if present.is_some() => return Action::Answer(error("ERR syntax error")),
            "NX" => present = Some(false),
            "XX" => present = Some(true),
            "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" => {
                return Action::Answer(error(&format!(
                    "ERR SET option {opt} is not supported: raftnode keys never expire"
                )))
            }
            "GET" => {
                return Action::Answer(error(
                    "ERR SET option GET is not supported; GET the key first",
                ))
            }
            _ => return Action::Answer(error("ERR syntax error")),
        }
    }
    args.truncate(3);
    let value = args.pop().unwrap_or_default();
    let key = args.pop().unwrap_or_default();
    if let Err(e) = check_key(&key).and_then(|_| check_value(&value)) {
        return Action::Answer(e);
    }
    match present {
        None => Action::Write(Command::Put { key, value }, Shape::Ok),
        Some(present) => Action::Write(
            Command::PutIf {
                key,
                value,
                present,
            },
            Shape::SetIf,
        ),
    }
}

/// `MSET k v [k v ...]`, one entry.
fn mset(args: Vec<Vec<u8>>) -> Action {
    let mut pairs = Vec::with_capacity(args.len() / 2);
    let mut it = args.into_iter().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Err(e) = check_key(&k).and_then(|_| check_value(&v)) {
            return Action::Answer(e);
        }
        pairs.push((k, v));
    }
    Action::Write(Command::PutMany { pairs }, Shape::Ok)
}

/// `SELECT 0`: there is one database.
fn select(db: &[u8]) -> Slot {
    match std::str::from_utf8(db)
        .ok()
        .and_then(|d| d.parse::<i64>().ok())
    {
        Some(0) => simple("OK"),
        Some(_) => error("ERR DB index is out of range"),
        None => error("ERR value is not an integer or out of range"),
    }
}

fn valid_client_name(name: &[u8]) -> Result<(), Slot> {
    if name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        Ok(())
    } else {
        Err(error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

/// `CLIENT SETNAME name` and `CLIENT GETNAME`.
fn client(c: &mut Conn, args: &[Vec<u8>]) -> Slot {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    match (sub.as_str(), args.len()) {
        ("SETNAME", 3) => match valid_client_name(&args[2]) {
            Ok(()) => {
                c.name = (!args[2].is_empty()).then(|| args[2].clone());
                simple("OK")
            }
            Err(e) => e,
        },
        ("GETNAME", 2) => match &c.name {
            Some(n) => bulk(n),
            None => nil(),
        },
        ("SETNAME" | "GETNAME", _) => error(&format!(
            "ERR wrong number of arguments for 'client|{}' command",
            sub.to_ascii_lowercase()
        )),
        _ => unknown_subcommand(&args[1], "CLIENT"),
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO`: enough for
/// redis-cli and client libraries, which use them for hints only.
fn command_command(args: &[Vec<u8>]) -> Slot {
    let Some(sub) = args.get(1) else {
        return empty_array();
    };
    match String::from_utf8_lossy(sub).to_ascii_uppercase().as_str() {
        "COUNT" if args.len() == 2 => int(COMMANDS.len() as i64),
        "DOCS" => empty_array(),
        "INFO" => {
            // Redis answers nil for a command it does not know; these
            // answer nil for every one, which clients take as "no hints".
            let mut out = Vec::new();
            write_array_header(&mut out, args.len() - 2);
            for _ in 2..args.len() {
                write_nil(&mut out);
            }
            fixed(out)
        }
        "COUNT" => wrong_arity("command|count"),
        _ => unknown_subcommand(sub, "COMMAND"),
    }
}

/// The `INFO` text: `STATUS`'s fields under Redis's section names.
fn info_text(ctx: &InfoCtx, status: &str) -> String {
    let field = |name: &str| {
        status
            .split(' ')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
    };
    let mut out = String::new();
    if ctx.server {
        let _ = write!(
            out,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nraftnode_version:{}\r\n\
             redis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
             raft_node_id:{}\r\nconnected_clients:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            ctx.resp_port,
            ctx.uptime.as_secs(),
            field("id"),
            ctx.clients,
        );
    }
    if ctx.replication {
        let raft_role = field("role");
        let leader = field("leader");
        let role = if raft_role == "leader" {
            "master"
        } else {
            "slave"
        };
        let _ = write!(
            out,
            "# Replication\r\nrole:{role}\r\nraft_role:{raft_role}\r\nraft_term:{}\r\n\
             raft_leader_id:{leader}\r\n",
            field("term"),
        );
        let leader_addr = leader
            .parse::<NodeId>()
            .ok()
            .and_then(|id| ctx.raft_addrs.get(&id));
        if let Some(addr) = leader_addr {
            let _ = write!(out, "raft_leader_raft_addr:{addr}\r\n");
        }
        let _ = write!(
            out,
            "raft_leader_resp_addr:unknown (peers do not exchange RESP addresses; any node \
             serves any request)\r\nraft_commit_index:{}\r\nraft_applied_index:{}\r\n\
             raft_members:{}\r\nconnected_slaves:0\r\n\r\n",
            field("commit"),
            field("applied"),
            field("members"),
        );
    }
    if ctx.keyspace {
        out.push_str("# Keyspace\r\n");
        if ctx.keys > 0 {
            let _ = write!(out, "db0:keys={},expires=0,avg_ttl=0\r\n", ctx.keys);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn encoded(shape: Shape, reply: Reply) -> String {
        let mut out = Vec::new();
        write_reply(&shape, &reply, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn replies_take_their_requests_shape() {
        let v: Arc<[u8]> = Arc::from(&b"a b"[..]);
        assert_eq!(encoded(Shape::Ok, Reply::Ok), "+OK\r\n");
        assert_eq!(
            encoded(Shape::Int, Reply::Value(Arc::from(&b"-12"[..]))),
            ":-12\r\n"
        );
        assert!(encoded(Shape::Int, Reply::Value(v.clone())).starts_with("-ERR internal"));
        assert_eq!(
            encoded(Shape::Bulk, Reply::Value(v.clone())),
            "$3\r\na b\r\n"
        );
        assert_eq!(encoded(Shape::Bulk, Reply::NotFound), "$-1\r\n");
        assert_eq!(encoded(Shape::SetIf, Reply::Unchanged), "$-1\r\n");
        assert_eq!(encoded(Shape::SetIf, Reply::Ok), "+OK\r\n");
        assert_eq!(encoded(Shape::Int, Reply::Count(3)), ":3\r\n");
        assert_eq!(
            encoded(Shape::Array, Reply::Values(vec![Some(v), None])),
            "*2\r\n$3\r\na b\r\n$-1\r\n"
        );
        assert_eq!(
            encoded(Shape::Bulk, Reply::error(ErrorCode::Timeout, "late")),
            "-TIMEOUT late\r\n"
        );
        assert_eq!(
            encoded(Shape::Int, Reply::error(ErrorCode::BadRequest, "no")),
            "-ERR no\r\n"
        );
        assert!(encoded(Shape::Int, Reply::Ok).starts_with("-ERR internal"));
        assert_eq!(encoded(Shape::Line, Reply::Ok), "OK\n");
    }

    fn text(slot: Slot) -> String {
        match slot.shape {
            Shape::Fixed(b) => String::from_utf8(b).unwrap(),
            other => panic!("not answered at once: {other:?}"),
        }
    }

    fn answer_of(a: Action) -> Slot {
        match a {
            Action::Answer(slot) => slot,
            _ => panic!("not refused"),
        }
    }

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn set_refuses_expiry_get_and_conflicting_options() {
        for (words, want) in [
            (
                &["SET", "k", "v", "EX", "10"][..],
                "-ERR SET option EX is not supported",
            ),
            (
                &["SET", "k", "v", "px", "10"],
                "-ERR SET option PX is not supported",
            ),
            (&["SET", "k", "v", "KEEPTTL"], "-ERR SET option KEEPTTL"),
            (&["SET", "k", "v", "GET"], "-ERR SET option GET"),
            (&["SET", "k", "v", "NX", "XX"], "-ERR syntax error"),
            (&["SET", "k", "v", "bogus"], "-ERR syntax error"),
            (&["SET", "", "v"], "-ERR empty key"),
        ] {
            match set(args(words)) {
                Action::Answer(slot) => {
                    let t = text(slot);
                    assert!(t.starts_with(want), "{words:?}: {t}");
                }
                _ => panic!("{words:?} was not refused"),
            }
        }
        let long_key = "k".repeat(MAX_KEY + 1);
        let refused = |a: Action, want: &str| {
            let t = text(answer_of(a));
            assert!(t.starts_with(want), "{t}");
        };
        refused(
            set(args(&["SET", &long_key, "v"])),
            "-ERR key is 1025 bytes",
        );
        let long_value = "v".repeat(MAX_VALUE + 1);
        refused(set(args(&["SET", "k", &long_value])), "-ERR value is");
        refused(mset(args(&["MSET", "k", "v", "", "w"])), "-ERR empty key");
        refused(mset(args(&["MSET", "k", &long_value])), "-ERR value is");
        assert!(check_keys(&args(&["a", &long_key])).is_err());
        match set(args(&["SET", "k", "v", "nx"])) {
            Action::Write(Command::PutIf { present: false, .. }, Shape::SetIf) => {}
            _ => panic!("SET NX is not a put-if"),
        }
        match set(args(&["SET", "k", "v"])) {
            Action::Write(Command::Put { key, value }, Shape::Ok) => {
                assert_eq!((key, value), (b"k".to_vec(), b"v".to_vec()));
            }
            _ => panic!("SET is not a put"),
        }
    }

    #[test]
    fn local_commands_answer_like_redis() {
        assert_eq!(text(select(b"0")), "+OK\r\n");
        assert_eq!(text(select(b"1")), "-ERR DB index is out of range\r\n");
        assert_eq!(
            text(select(b"x")),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(text(command_command(&args(&["COMMAND"]))), "*0\r\n");
        assert_eq!(
            text(command_command(&args(&["COMMAND", "COUNT"]))),
            format!(":{}\r\n", COMMANDS.len())
        );
        assert_eq!(text(command_command(&args(&["COMMAND", "DOCS"]))), "*0\r\n");
        assert_eq!(
            text(command_command(&args(&["COMMAND", "INFO", "get", "set"]))),
            "*2\r\n$-1\r\n$-1\r\n"
        );
        assert!(text(command_command(&args(&["COMMAND", "LIST"])))
            .starts_with("-ERR unknown subcommand 'LIST'"));
        assert_eq!(
            text(unknown_command(&args(&["FLUSHALL", "a", "b"]))),
            "-ERR unknown command 'FLUSHALL', with args beginning with: 'a' 'b' \r\n"
        );
        assert_eq!(
            text(wrong_arity("GET")),
            "-ERR wrong number of arguments for 'get' command\r\n"
        );
    }

    #[test]
    fn info_text_names_role_leader_and_keys() {
        let ctx = InfoCtx {
            server: true,
            replication: true,
            keyspace: true,
            resp_port: 6380,
            uptime: Duration::from_secs(5),
            keys: 42,
            clients: 1,
            raft_addrs: Arc::new(BTreeMap::from([(2, "127.0.0.1:7002".to_string())])),
        };
        let t = info_text(
            &ctx,
            "STATUS id=1 role=follower term=3 leader=2 commit=9 applied=9 last=9 snapshot=0 \
             members=1,2,3",
        );
        for want in [
            "# Server\r\n",
            "tcp_port:6380\r\n",
            "raft_node_id:1\r\n",
            "role:slave\r\n",
            "raft_role:follower\r\n",
            "raft_leader_id:2\r\n",
            "raft_leader_raft_addr:127.0.0.1:7002\r\n",
            "raft_members:1,2,3\r\n",
            "db0:keys=42,expires=0,avg_ttl=0\r\n",
        ] {
            assert!(t.contains(want), "{want:?} missing from {t}");
        }
        let leader = info_text(&ctx, "STATUS id=2 role=leader term=3 leader=2");
        assert!(leader.contains("role:master\r\n"));
    }
}
