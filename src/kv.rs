//! The replicated key-value state machine and the commands that drive it.
//!
//! A command travels inside a normal Raft entry in a compact binary form
//! (little-endian, via byteorder):
//!
//! ```text
//! kind u8 (1 put, 2 delete, 3 compare-and-set, 5 incr, 6 append,
//!          7 open session, 8 resume session, 9 clock, 10 tagged write)
//! origin node id u64, request id u64   -- who waits for the answer
//! put, append: key (len u32 + bytes), then the value: the rest of the entry
//! delete, incr: key (len u32 + bytes), nothing more
//! cas:     key, expected (len u32 + bytes each), then the new value: the rest
//! open:    ttl ms u64, max sessions u64,  -- the registering node's settings
//!          secret 16 bytes                -- drawn by the proposing node
//! resume:  session id u64, secret 16 bytes
//! clock:   the leader's wall clock, ms since the epoch, u64
//! tagged:  session id u64, seq u64, then a put/delete/cas/incr/append
//!          as kind u8 + its body
//! ```
//!
//! A session's id is the index of the entry that opened it; sessions,
//! their kept replies and log time are in `sessions.rs`. Entries of the
//! older format, an open or a resume without the secret (16 and 8 bytes of
//! body), still decode: such a session has no secret and is never resumed.
//!
//! A conf-change entry's context is `origin node id u64, request id u64`
//! followed by the member's raft address (empty for a removal); see
//! [`encode_conf_context`].
//!
//! Applying a command yields the [`Reply`] for the client that sent it. Every
//! node applies every command; only the node named as origin answers.
//! An entry that does not decode is skipped with a warning on every node
//! alike, so the replicas stay identical.
//!
//! Besides the map, the state machine holds the [`Cluster`] record: the
//! cluster ID, the member address book and the ids removed for good. An
//! entry of kind 4 (`origin, request id, cluster id u64`) sets the cluster
//! ID once; the first leader proposes it right after the bootstrap.
//!
//! Kinds 16 to 18 carry the Redis commands that the line protocol has no
//! word for (`--resp-addr`, `src/server/resp.rs`); each is one entry, so
//! it applies atomically:
//!
//! ```text
//! 16 put-if:      origin, request id, key: len u32 + bytes,
//!                 condition u8 (0 only if absent, 1 only if present), value: the rest
//! 17 put-many:    origin, request id, pairs u32, per pair key and value, each len u32 + bytes
//! 18 delete-many: origin, request id, keys u32, per key len u32 + bytes
//! ```
//!
//! Snapshots serialise the cluster record and the whole map:
//!
//! ```text
//! magic "RNKV" (4 bytes), version u32 = 4
//! cluster id u64
//! members u64, then per member: id u64, address len u32 + bytes
//! removed u64, then per removed node: id u64
//! keys u64, then per key: key len u32 + bytes, value len u32 + bytes
//! the session table (layout in `sessions.rs`, with the sessions' secrets)
//! ```
//!
//! Version 3 (a session table without secrets: its sessions still
//! deduplicate retries but can no longer be resumed), version 2 (no session
//! table) and version 1 (no cluster id, no removed list either) are still
//! read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian, ReadBytesExt, WriteBytesExt};

use crate::protocol::{ErrorCode, Reply, SessionSecret, MAX_VALUE};
use crate::raft::NodeId;
use crate::sessions::{read_bytes, SessionLimits, Sessions};

/// A write command, as proposed to Raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Cas {
        key: Vec<u8>,
        expected: Vec<u8>,
        value: Vec<u8>,
    },
    /// Adds one to the decimal integer at `key` (absent counts as 0).
    Incr {
        key: Vec<u8>,
    },
    /// Appends `value` to the value at `key` (absent counts as empty).
    Append {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Sets the cluster ID unless one is set (proposed by a leader, never
    /// by a client).
    SetClusterId {
        id: u64,
    },
    /// Sets `key` only if it is absent (`present: false`, Redis's `SET NX`)
    /// or only if it is there (`present: true`, `SET XX`).
    PutIf {
        key: Vec<u8>,
        value: Vec<u8>,
        present: bool,
    },
    /// Sets every pair, in order, at once (`MSET`).
    PutMany {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Removes every key at once; answers how many were there (`DEL`).
    DeleteMany {
        keys: Vec<Vec<u8>>,
    },
    /// Registers a session; its id is the index of this entry. Carries the
    /// registering node's session settings (see `sessions.rs`) and the
    /// session's secret (`None` only in an entry of the older format).
    OpenSession {
        limits: SessionLimits,
        secret: Option<SessionSecret>,
    },
    /// Resumes session `id` (and marks it active) if `secret` is its
    /// secret (`None` only in an entry of the older format: refused).
    ResumeSession {
        id: u64,
        secret: Option<SessionSecret>,
    },
    /// A leader's wall-clock stamp, in milliseconds since the epoch: the
    /// only source of log time (proposed by a leader, never by a client).
    Clock {
        ms: u64,
    },
    /// A client write tagged with sequence number `seq` of `session`;
    /// `cmd` is a put, delete, cas, incr or append.
    Tagged {
        session: u64,
        seq: u64,
        cmd: Box<Command>,
    },
}

impl Command {
    /// Whether a client may send this command, and tag it.
    pub fn is_client_write(&self) -> bool {
        matches!(
            self,
            Command::Put { .. }
                | Command::Delete { .. }
                | Command::Cas { .. }
                | Command::Incr { .. }
                | Command::Append { .. }
        )
    }
}

/// Who is waiting for a command's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub node: NodeId,
    pub seq: u64,
}

const PUT: u8 = 1;
const DELETE: u8 = 2;
const CAS: u8 = 3;
const CLUSTER_ID: u8 = 4;
const PUT_IF: u8 = 16;
const PUT_MANY: u8 = 17;
const DELETE_MANY: u8 = 18;

const INCR: u8 = 5;
const APPEND: u8 = 6;
const OPEN_SESSION: u8 = 7;
const RESUME_SESSION: u8 = 8;
const CLOCK: u8 = 9;
const TAGGED: u8 = 10;

fn kind_of(cmd: &Command) -> u8 {
    match cmd {
        Command::Put { .. } => PUT,
        Command::Delete { .. } => DELETE,
        Command::Cas { .. } => CAS,
        Command::Incr { .. } => INCR,
        Command::Append { .. } => APPEND,
        Command::SetClusterId { .. } => CLUSTER_ID,
        Command::OpenSession { .. } => OPEN_SESSION,
        Command::ResumeSession { .. } => RESUME_SESSION,
        Command::Clock { .. } => CLOCK,
        Command::Tagged { .. } => TAGGED,
        Command::PutIf { .. } => PUT_IF,
        Command::PutMany { .. } => PUT_MANY,
        Command::DeleteMany { .. } => DELETE_MANY,
    }
}

/// Bytes of a command's body (what follows the kind and request id).
fn body_len(cmd: &Command) -> usize {
    match cmd {
        Command::Put { key, value } | Command::Append { key, value } => 4 + key.len() + value.len(),
        Command::Delete { key } | Command::Incr { key } => 4 + key.len(),
        Command::Cas {
            key,
            expected,
            value,
        } => 8 + key.len() + expected.len() + value.len(),
        Command::SetClusterId { .. } | Command::Clock { .. } => 8,
        Command::ResumeSession { secret, .. } => 8 + secret.map_or(0, |s| s.len()),
        Command::OpenSession { secret, .. } => 16 + secret.map_or(0, |s| s.len()),
        Command::Tagged { cmd, .. } => 17 + body_len(cmd),
        Command::PutIf { key, value, .. } => 5 + key.len() + value.len(),
        Command::PutMany { pairs } => {
            4 + pairs
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>()
        }
        Command::DeleteMany { keys } => 4 + keys.iter().map(|k| 4 + k.len()).sum::<usize>(),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn write_body(cmd: &Command, out: &mut Vec<u8>) {
    match cmd {
        Command::Put { key, value } | Command::Append { key, value } => {
            put_bytes(out, key);
            out.extend_from_slice(value);
        }
        Command::Delete { key } | Command::Incr { key } => put_bytes(out, key),
        Command::Cas {
            key,
            expected,
            value,
        } => {
            put_bytes(out, key);
            put_bytes(out, expected);
            out.extend_from_slice(value);
        }
        Command::SetClusterId { id } => out.extend_from_slice(&id.to_le_bytes()),
        Command::ResumeSession { id, secret } => {
            out.extend_from_slice(&id.to_le_bytes());
            if let Some(secret) = secret {
                out.extend_from_slice(secret);
            }
        }
        Command::Clock { ms } => out.extend_from_slice(&ms.to_le_bytes()),
        Command::OpenSession { limits, secret } => {
            out.extend_from_slice(&limits.ttl_ms.to_le_bytes());
            out.extend_from_slice(&limits.max.to_le_bytes());
            if let Some(secret) = secret {
                out.extend_from_slice(secret);
            }
        }
        Command::Tagged { session, seq, cmd } => {
            out.extend_from_slice(&session.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.push(kind_of(cmd));
            write_body(cmd, out);
        }
        Command::PutIf {
            key,
            value,
            present,
        } => {
            put_bytes(out, key);
            out.push(u8::from(*present));
            out.extend_from_slice(value);
        }
        Command::PutMany { pairs } => {
            out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
            for (k, v) in pairs {
                put_bytes(out, k);
                put_bytes(out, v);
            }
        }
        Command::DeleteMany { keys } => {
            out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            for k in keys {
                put_bytes(out, k);
            }
        }
    }
}

/// Decodes the body of a command of kinds 16 to 18 (the Redis protocol's
/// writes); `None` if malformed.
fn decode_redis_command(kind: u8, mut rest: &[u8]) -> Option<Command> {
    // A count is believed only as far as the bytes can hold its items
    // (each at least 4 bytes), so it never sizes an allocation alone.
    let count = |rest: &mut &[u8]| -> Option<usize> {
        let (n, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        let n = u32::from_le_bytes(*n) as usize;
        (n <= rest.len() / 4).then_some(n)
    };
    let cmd = match kind {
        PUT_IF => {
            let key = take_bytes(&mut rest)?.to_vec();
            let (&cond, value) = rest.split_first()?;
            if cond > 1 {
                return None;
            }
            return Some(Command::PutIf {
                key,
                value: value.to_vec(),
                present: cond == 1,
            });
        }
        PUT_MANY => {
            let n = count(&mut rest)?;
            let mut pairs = Vec::with_capacity(n);
            for _ in 0..n {
                let k = take_bytes(&mut rest)?.to_vec();
                let v = take_bytes(&mut rest)?.to_vec();
                pairs.push((k, v));
            }
            Command::PutMany { pairs }
        }
        DELETE_MANY => {
            let n = count(&mut rest)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push(take_bytes(&mut rest)?.to_vec());
            }
            Command::DeleteMany { keys }
        }
        _ => return None,
    };
    rest.is_empty().then_some(cmd)
}

/// Encodes a command with the id of the request waiting for it.
pub fn encode_command(id: RequestId, cmd: &Command) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + body_len(cmd));
    out.push(kind_of(cmd));
    out.extend_from_slice(&id.node.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    write_body(cmd, &mut out);
    out
}

/// Encodes the context of a conf-change entry: who waits for it, and the
/// member's raft address (empty for a removal).
pub fn encode_conf_context(id: RequestId, addr: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + addr.len());
    out.extend_from_slice(&id.node.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    out.extend_from_slice(addr.as_bytes());
    out
}

/// Decodes [`encode_conf_context`]; `None` if malformed.
pub fn decode_conf_context(ctx: &[u8]) -> Option<(RequestId, String)> {
    if ctx.len() < 16 {
        return None;
    }
    let node = LittleEndian::read_u64(&ctx[..8]);
    let seq = LittleEndian::read_u64(&ctx[8..16]);
    let addr = String::from_utf8(ctx[16..].to_vec()).ok()?;
    Some((RequestId { node, seq }, addr))
}

/// Splits `len u32 + bytes` off the front of `buf`.
fn take_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    if buf.len() < 4 {
        return None;
    }
    let n = LittleEndian::read_u32(&buf[..4]) as usize;
    let rest = &buf[4..];
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *buf = tail;
    Some(head)
}

/// The rest of a session entry's body: nothing (the older format, no
/// secret) or exactly a secret; `None` (malformed) otherwise.
fn take_secret(rest: &[u8]) -> Option<Option<SessionSecret>> {
    match rest.len() {
        0 => Some(None),
        _ => Some(Some(rest.try_into().ok()?)),
    }
}

/// Splits a u64 off the front of `buf`.
fn take_u64(buf: &mut &[u8]) -> Option<u64> {
    let (head, tail) = buf.split_first_chunk::<8>()?;
    *buf = tail;
    Some(u64::from_le_bytes(*head))
}

/// The request id of an encoded command of at least 17 bytes.
fn id_of(data: &[u8]) -> RequestId {
    RequestId {
        node: LittleEndian::read_u64(&data[1..9]),
        seq: LittleEndian::read_u64(&data[9..17]),
    }
}

/// Decodes [`encode_command`]'s output; `None` if it is malformed.
pub fn decode_command(data: &[u8]) -> Option<(RequestId, Command)> {
    if data.len() < 17 {
        return None;
    }
    let cmd = decode_body(data[0], &data[17..])?;
    Some((id_of(data), cmd))
}

/// Decodes the body of a command of `kind`, which must use all of `rest`.
fn decode_body(kind: u8, mut rest: &[u8]) -> Option<Command> {
    let fixed = |rest: &[u8]| Some(u64::from_le_bytes(rest.try_into().ok()?));
    let cmd = match kind {
        CLUSTER_ID => Command::SetClusterId { id: fixed(rest)? },
        RESUME_SESSION => {
            let id = take_u64(&mut rest)?;
            Command::ResumeSession {
                id,
                secret: take_secret(rest)?,
            }
        }
        CLOCK => Command::Clock { ms: fixed(rest)? },
        OPEN_SESSION => {
            let ttl_ms = take_u64(&mut rest)?;
            let max = take_u64(&mut rest)?;
            Command::OpenSession {
                limits: SessionLimits { ttl_ms, max },
                secret: take_secret(rest)?,
            }
        }
        TAGGED => {
            let session = take_u64(&mut rest)?;
            let seq = take_u64(&mut rest)?;
            let (&inner, rest) = rest.split_first()?;
            let cmd = decode_body(inner, rest)?;
            if !cmd.is_client_write() {
                return None;
            }
            Command::Tagged {
                session,
                seq,
                cmd: Box::new(cmd),
            }
        }
        PUT_IF | PUT_MANY | DELETE_MANY => decode_redis_command(kind, rest)?,
        PUT | DELETE | CAS | INCR | APPEND => {
            let key = take_bytes(&mut rest)?.to_vec();
            match kind {
                PUT => Command::Put {
                    key,
                    value: rest.to_vec(),
                },
                APPEND => Command::Append {
                    key,
                    value: rest.to_vec(),
                },
                DELETE if rest.is_empty() => Command::Delete { key },
                INCR if rest.is_empty() => Command::Incr { key },
                CAS => {
                    let expected = take_bytes(&mut rest)?.to_vec();
                    Command::Cas {
                        key,
                        expected,
                        value: rest.to_vec(),
                    }
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(cmd)
}

type Shard = HashMap<Arc<[u8]>, Arc<[u8]>>;

/// Number of [`Map`] shards: a power of two.
const SHARDS: usize = 4096;

/// The key-value map, split into shards that are copied on write.
///
/// A snapshot needs a frozen copy of the whole map, taken between two
/// applied entries. Cloning one big map holding a million keys takes a
/// quarter of a second, and the Ready loop (heartbeats included) would wait
/// for it. Cloning a `Map` instead copies [`SHARDS`] reference counts; a
/// shard is copied only when it is next written while a frozen copy still
/// shares it, so the work is spread over many entries, one small shard at
/// a time. Keys and values are shared slices, so even a copied shard copies
/// two reference counts per key, never the bytes.
#[derive(Clone, Debug)]
struct Map {
    shards: Vec<Arc<Shard>>,
    len: usize,
    /// Bytes of keys and values held, roughly the size of a snapshot.
    bytes: u64,
}

impl Default for Map {
    fn default() -> Map {
        Map {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::new())).collect(),
            len: 0,
            bytes: 0,
        }
    }
}

impl Map {
    fn shard_of(key: &[u8]) -> usize {
        crc32fast::hash(key) as usize & (SHARDS - 1)
    }

    fn get(&self, key: &[u8]) -> Option<&Arc<[u8]>> {
        self.shards[Map::shard_of(key)].get(key)
    }

    /// The shard holding `key` for writing, or `None` if the key is absent.
    /// A shard a frozen copy shares is copied first, but only for a key that
    /// is there: a miss is not worth a copy.
    fn shard_with<'a>(shards: &'a mut [Arc<Shard>], key: &[u8]) -> Option<&'a mut Shard> {
        let shard = &mut shards[Map::shard_of(key)];
        if Arc::strong_count(shard) > 1 && !shard.contains_key(key) {
            return None;
        }
        Some(Arc::make_mut(shard))
    }

    /// Sets `key` to `value`; returns the old value.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Arc<[u8]>> {
        let shard = Arc::make_mut(&mut self.shards[Map::shard_of(&key)]);
        let added = value.len() as u64;
        // Overwriting keeps the key's allocation; only a new key is copied in.
        if let Some(v) = shard.get_mut(key.as_slice()) {
            self.bytes = self.bytes - v.len() as u64 + added;
            return Some(std::mem::replace(v, value.into()));
        }
        self.bytes += key.len() as u64 + added;
        self.len += 1;
        shard.insert(key.into(), value.into());
        None
    }

    /// Sets `key` to `value` if it holds `expected`. `Err` carries the value
    /// found, `None` if the key is absent.
    fn compare_and_set(
        &mut self,
        key: &[u8],
        expected: &[u8],
        value: Vec<u8>,
    ) -> Result<(), Option<Vec<u8>>> {
        let Some(current) = Map::shard_with(&mut self.shards, key).and_then(|s| s.get_mut(key))
        else {
            return Err(None);
        };
        if **current != *expected {
            return Err(Some(current.to_vec()));
        }
        self.bytes = self.bytes - current.len() as u64 + value.len() as u64;
        *current = value.into();
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Option<Arc<[u8]>> {
        let old = Map::shard_with(&mut self.shards, key)?.remove(key)?;
        self.len -= 1;
        self.bytes -= (key.len() + old.len()) as u64;
        Some(old)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<[u8]>, &Arc<[u8]>)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

/// What the state machine knows of the cluster itself, replicated like
/// the data.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Random, set once right after the bootstrap; 0 until then.
    pub id: u64,
    /// Raft address of each member, learned from conf changes.
    pub members: BTreeMap<NodeId, String>,
    /// Nodes removed from the cluster: ids are never reused, so these are
    /// refused for good.
    pub removed: BTreeSet<NodeId>,
}

/// The state machine: keys to values, plus the [`Cluster`] record and the
/// client [`Sessions`].
#[derive(Default, Debug)]
pub struct KvStore {
    map: Map,
    pub cluster: Cluster,
    sessions: Sessions,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| &**v)
    }

    /// The value of `key`, shared with the store: no copy of the bytes.
    pub fn get_shared(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        self.map.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Bytes of keys and values held: about the size of a snapshot.
    pub fn data_bytes(&self) -> u64 {
        self.map.bytes
    }

    /// The client sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Applies a command that is not in a log entry (tests, tools): as if
    /// it were entry 0.
    pub fn apply(&mut self, cmd: Command) -> Reply {
        self.apply_at(0, cmd)
    }

    /// Applies the command of log entry `index` and returns the reply for
    /// its client. Deterministic: the same entries give the same state and
    /// replies on every replica.
    pub fn apply_at(&mut self, index: u64, cmd: Command) -> Reply {
        match cmd {
            Command::SetClusterId { id } => {
                if self.cluster.id == 0 {
                    self.cluster.id = id;
                }
                Reply::Ok
            }
            Command::OpenSession { limits, secret } => self.sessions.open(index, limits, secret),
            Command::ResumeSession { id, secret } => self.sessions.resume(id, secret.as_ref()),
            Command::Clock { ms } => {
                self.sessions.advance_clock(ms);
                Reply::Ok
            }
            Command::Tagged { session, seq, cmd } => match self.sessions.check(session, seq) {
                Err(reply) => reply,
                Ok(()) => {
                    let reply = self.apply_write(*cmd);
                    self.sessions.record(session, seq, &reply);
                    reply
                }
            },
            cmd => self.apply_write(cmd),
        }
    }

    /// Applies a client write to the map.
    fn apply_write(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Put { key, value } => {
                self.map.put(key, value);
                Reply::Ok
            }
            Command::Delete { key } => match self.map.remove(&key) {
                Some(_) => Reply::Deleted,
                None => Reply::NotFound,
            },
            Command::Cas {
                key,
                expected,
                value,
            } => match self.map.compare_and_set(&key, &expected, value) {
                Ok(()) => Reply::Ok,
                Err(None) => Reply::NotFound,
                Err(Some(current)) => Reply::Mismatch(current),
            },
            Command::PutIf {
                key,
                value,
                present,
            } => {
                if self.map.get(&key).is_some() != present {
                    return Reply::Unchanged;
                }
                self.map.put(key, value);
                Reply::Ok
            }
            Command::PutMany { pairs } => {
                for (k, v) in pairs {
                    self.map.put(k, v);
                }
                Reply::Ok
            }
            Command::DeleteMany { keys } => {
                let gone = keys.iter().filter(|k| self.map.remove(k).is_some());
                Reply::Count(gone.count() as u64)
            }
            Command::Incr { key } => self.incr(key),
            Command::Append { key, value } => self.append(key, value),
            other => Reply::error(
                ErrorCode::Internal,
                format!("not a client write: {:?}", kind_of(&other)),
            ),
        }
    }

    /// `INCR`: the value must be a decimal integer in the i64 range (an
    /// optional `-`, then digits); absent counts as 0.
    fn incr(&mut self, key: Vec<u8>) -> Reply {
        let current = match self.map.get(&key) {
            None => 0,
            Some(v) => match parse_i64(v) {
                Some(n) => n,
                None => {
                    return Reply::error(
                        ErrorCode::BadRequest,
                        "INCR: the value is not a decimal integer in the 64-bit signed range; \
                         it is unchanged",
                    )
                }
            },
        };
        let Some(next) = current.checked_add(1) else {
            return Reply::error(
                ErrorCode::BadRequest,
                "INCR: the value would overflow 9223372036854775807; it is unchanged",
            );
        };
        let text: Arc<[u8]> = Arc::from(next.to_string().into_bytes());
        self.map.put(key, text.to_vec());
        Reply::Value(text)
    }

    /// `APPEND`: refused, changing nothing, if the value would grow past
    /// the value limit.
    fn append(&mut self, key: Vec<u8>, value: Vec<u8>) -> Reply {
        let current = self.map.get(&key).map(|v| &v[..]).unwrap_or_default();
        let len = current.len() + value.len();
        if len > MAX_VALUE {
            return Reply::error(
                ErrorCode::BadRequest,
                format!(
                    "APPEND: the value would grow to {len} bytes, the limit is {MAX_VALUE}; \
                     it is unchanged"
                ),
            );
        }
        let mut joined = Vec::with_capacity(len);
        joined.extend_from_slice(current);
        joined.extend_from_slice(&value);
        self.map.put(key, joined);
        Reply::Ok
    }

    /// Serialises the whole state (see the module docs for the layout).
    pub fn write_snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        write_snapshot(&self.cluster, &self.map, w)?;
        self.sessions.write_to(w)
    }

    /// A frozen copy of the state to serialise on another thread while
    /// this one goes on applying. Cheap: it shares every key and value.
    pub fn view(&self) -> KvView {
        let mut sessions = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.sessions.write_to(&mut sessions);
        KvView {
            cluster: self.cluster.clone(),
            map: self.map.clone(),
            sessions,
        }
    }

    pub fn snapshot_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_snapshot(&mut out);
        out
    }

    /// Replaces the state with a snapshot's. The old state is dropped first,
    /// so memory never holds both; on error the store is left empty or
    /// partial and the caller must not serve from it (the node stops).
    pub fn restore(&mut self, r: &mut impl Read) -> io::Result<()> {
        fn bad(what: &str) -> io::Error {
            io::Error::new(io::ErrorKind::InvalidData, format!("snapshot data: {what}"))
        }
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        let version = r.read_u32::<LittleEndian>()?;
        if &magic != b"RNKV" || !(1..=SNAPSHOT_VERSION).contains(&version) {
            return Err(bad("unknown format"));
        }
        self.map = Map::default();
        self.cluster = Cluster::default();
        self.sessions = Sessions::default();
        let mut cluster = Cluster::default();
        if version >= 2 {
            cluster.id = r.read_u64::<LittleEndian>()?;
        }
        for _ in 0..r.read_u64::<LittleEndian>()? {
            let id = r.read_u64::<LittleEndian>()?;
            let addr = String::from_utf8(read_bytes(r, 4096, bad)?).map_err(|_| bad("address"))?;
            cluster.members.insert(id, addr);
        }
        if version >= 2 {
            for _ in 0..r.read_u64::<LittleEndian>()? {
                cluster.removed.insert(r.read_u64::<LittleEndian>()?);
            }
        }
        self.cluster = cluster;
        let n = r.read_u64::<LittleEndian>()?;
        for _ in 0..n {
            let k = read_bytes(r, 1 << 16, bad)?;
            let v = read_bytes(r, 1 << 24, bad)?;
            self.map.put(k, v);
        }
        if version >= 3 {
            self.sessions = Sessions::read_from(r, version >= 4)?;
        }
        Ok(())
    }
}

/// A frozen copy of a [`KvStore`], see [`KvStore::view`].
pub struct KvView {
    cluster: Cluster,
    map: Map,
    /// The session table, serialised when the view was taken.
    sessions: Vec<u8>,
}

impl KvView {
    pub fn write_snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        write_snapshot(&self.cluster, &self.map, w)?;
        w.write_all(&self.sessions)
    }
}

/// A decimal i64: an optional `-`, then 1 to 19 digits (no `+`, no spaces).
fn parse_i64(v: &[u8]) -> Option<i64> {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The snapshot format written; 1 to 3 are still read.
const SNAPSHOT_VERSION: u32 = 4;

fn write_snapshot(cluster: &Cluster, map: &Map, w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"RNKV")?;
    w.write_u32::<LittleEndian>(SNAPSHOT_VERSION)?;
    w.write_u64::<LittleEndian>(cluster.id)?;
    w.write_u64::<LittleEndian>(cluster.members.len() as u64)?;
    for (id, addr) in &cluster.members {
        w.write_u64::<LittleEndian>(*id)?;
        w.write_u32::<LittleEndian>(addr.len() as u32)?;
        w.write_all(addr.as_bytes())?;
    }
    w.write_u64::<LittleEndian>(cluster.removed.len() as u64)?;
    for id in &cluster.removed {
        w.write_u64::<LittleEndian>(*id)?;
    }
    w.write_u64::<LittleEndian>(map.len() as u64)?;
    for (k, v) in map.iter() {
        w.write_u32::<LittleEndian>(k.len() as u32)?;
        w.write_all(k)?;
        w.write_u32::<LittleEndian>(v.len() as u32)?;
        w.write_all(v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let id = RequestId { node: 3, seq: 99 };
        let cmds = [
            Command::Put {
                key: b"k".to_vec(),
                value: b"v v".to_vec(),
            },
            Command::Put {
                key: b"k".to_vec(),
                value: vec![],
            },
            Command::Delete {
                key: b"key".to_vec(),
            },
            Command::Cas {
                key: b"k".to_vec(),
                expected: b"a".to_vec(),
                value: b"b c".to_vec(),
            },
        ];
        for cmd in cmds {
            assert_eq!(decode_command(&encode_command(id, &cmd)), Some((id, cmd)));
        }
    }

    #[test]
    fn redis_commands_round_trip_and_truncations_do_not_decode() {
        let id = RequestId { node: 2, seq: 7 };
        let cmds = [
            Command::PutIf {
                key: b"k".to_vec(),
                value: b"v\r\n\0".to_vec(),
                present: false,
            },
            Command::PutIf {
                key: vec![],
                value: vec![],
                present: true,
            },
            Command::PutMany {
                pairs: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])],
            },
            Command::PutMany { pairs: vec![] },
            Command::DeleteMany {
                keys: vec![b"a".to_vec(), b"a".to_vec(), b"zz".to_vec()],
            },
        ];
        for cmd in cmds {
            let data = encode_command(id, &cmd);
            assert_eq!(decode_command(&data), Some((id, cmd.clone())));
            if matches!(cmd, Command::PutIf { .. }) {
                continue; // the value is the rest: a cut inside it is a shorter value
            }
            for cut in 0..data.len() {
                assert_eq!(decode_command(&data[..cut]), None, "{cmd:?} cut at {cut}");
            }
            let mut longer = data.clone();
            longer.push(0);
            assert_eq!(decode_command(&longer), None, "{cmd:?} with a byte more");
        }
        // A count the bytes cannot hold is refused without allocating for it.
        let mut huge = encode_command(id, &Command::DeleteMany { keys: vec![] });
        huge[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_command(&huge), None);
        let mut bad_cond = encode_command(
            id,
            &Command::PutIf {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                present: true,
            },
        );
        bad_cond[22] = 2;
        assert_eq!(decode_command(&bad_cond), None);
    }

    #[test]
    fn redis_commands_apply_atomically_with_their_replies() {
        let mut kv = KvStore::new();
        let put_if = |k: &[u8], v: &[u8], present| Command::PutIf {
            key: k.to_vec(),
            value: v.to_vec(),
            present,
        };
        assert_eq!(kv.apply(put_if(b"k", b"1", true)), Reply::Unchanged);
        assert_eq!(kv.get(b"k"), None);
        assert_eq!(kv.apply(put_if(b"k", b"1", false)), Reply::Ok);
        assert_eq!(kv.apply(put_if(b"k", b"2", false)), Reply::Unchanged);
        assert_eq!(kv.get(b"k"), Some(&b"1"[..]));
        assert_eq!(kv.apply(put_if(b"k", b"3", true)), Reply::Ok);
        assert_eq!(kv.get(b"k"), Some(&b"3"[..]));
        let pairs = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
            (b"a".to_vec(), b"last".to_vec()),
        ];
        assert_eq!(kv.apply(Command::PutMany { pairs }), Reply::Ok);
        assert_eq!(kv.get(b"a"), Some(&b"last"[..]));
        assert_eq!(kv.len(), 3);
        let keys = vec![
            b"a".to_vec(),
            b"a".to_vec(),
            b"nope".to_vec(),
            b"b".to_vec(),
        ];
        assert_eq!(kv.apply(Command::DeleteMany { keys }), Reply::Count(2));
        assert_eq!(kv.len(), 1);
        assert_eq!(kv.data_bytes(), 2);
    }

    #[test]
    fn truncated_commands_do_not_decode() {
        let id = RequestId { node: 1, seq: 1 };
        let data = encode_command(
            id,
            &Command::Cas {
                key: b"key".to_vec(),
                expected: b"x".to_vec(),
                value: vec![],
            },
        );
        for cut in 0..data.len() - 1 {
            if cut >= 28 {
                continue; // a cut inside the new value is still a valid (shorter) value
            }
            assert_eq!(decode_command(&data[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn cas_semantics() {
        let mut kv = KvStore::new();
        let cas = |e: &[u8], v: &[u8]| Command::Cas {
            key: b"k".to_vec(),
            expected: e.to_vec(),
            value: v.to_vec(),
        };
        assert_eq!(kv.apply(cas(b"a", b"b")), Reply::NotFound);
        kv.apply(Command::Put {
            key: b"k".to_vec(),
            value: b"a".to_vec(),
        });
        assert_eq!(kv.apply(cas(b"x", b"b")), Reply::Mismatch(b"a".to_vec()));
        assert_eq!(kv.apply(cas(b"a", b"b")), Reply::Ok);
        assert_eq!(kv.get(b"k"), Some(&b"b"[..]));
    }

    #[test]
    fn snapshot_round_trip_and_garbage_is_refused() {
        let mut kv = KvStore::new();
        kv.apply(Command::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        });
        kv.cluster.members.insert(2, "127.0.0.1:7002".into());
        kv.cluster.removed.insert(5);
        kv.apply(Command::SetClusterId { id: 77 });
        kv.apply(Command::SetClusterId { id: 78 });
        assert_eq!(kv.cluster.id, 77, "the first cluster id wins");
        let bytes = kv.snapshot_bytes();
        let mut other = KvStore::new();
        other.restore(&mut &bytes[..]).unwrap();
        assert_eq!(other.get(b"a"), Some(&b"1"[..]));
        let mut via_view = Vec::new();
        kv.view().write_snapshot(&mut via_view).unwrap();
        assert_eq!(via_view, bytes);
        assert_eq!(other.cluster, kv.cluster);
        for cut in 0..bytes.len() {
            let mut fresh = KvStore::new();
            assert!(fresh.restore(&mut &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn data_bytes_follows_every_command_and_a_restore() {
        let mut kv = KvStore::new();
        let put = |k: &[u8], v: &[u8]| Command::Put {
            key: k.to_vec(),
            value: v.to_vec(),
        };
        let sum =
            |kv: &KvStore| -> u64 { kv.map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum() };
        kv.apply(put(b"ab", b"1234"));
        kv.apply(put(b"c", b"56"));
        assert_eq!(kv.data_bytes(), 9);
        kv.apply(put(b"ab", b"1"));
        assert_eq!(kv.data_bytes(), 6);
        kv.apply(Command::Cas {
            key: b"c".to_vec(),
            expected: b"56".to_vec(),
            value: b"7890".to_vec(),
        });
        assert_eq!(kv.data_bytes(), 8);
        kv.apply(Command::Delete {
            key: b"ab".to_vec(),
        });
        kv.apply(Command::Delete {
            key: b"zz".to_vec(),
        });
        assert_eq!(kv.data_bytes(), sum(&kv));
        assert_eq!(kv.data_bytes(), 5);
        let mut other = KvStore::new();
        other.apply(put(b"old", b"state"));
        other.restore(&mut &kv.snapshot_bytes()[..]).unwrap();
        assert_eq!(other.data_bytes(), 5);
    }

    #[test]
    fn a_view_stays_frozen_while_the_store_moves_on() {
        let put = |k: String, v: &str| Command::Put {
            key: k.into_bytes(),
            value: v.as_bytes().to_vec(),
        };
        let mut kv = KvStore::new();
        for i in 0..2000 {
            kv.apply(put(format!("k{i}"), "old"));
        }
        let frozen = kv.snapshot_bytes();
        let view = kv.view();
        for i in 0..1000 {
            kv.apply(put(format!("k{i}"), "new"));
            kv.apply(Command::Delete {
                key: format!("k{}", 1000 + i).into_bytes(),
            });
            kv.apply(put(format!("fresh{i}"), "x"));
        }
        let mut from_view = Vec::new();
        view.write_snapshot(&mut from_view).unwrap();
        assert_eq!(from_view, frozen, "the view saw later writes");
        let mut restored = KvStore::new();
        restored.restore(&mut &from_view[..]).unwrap();
        assert_eq!(restored.len(), 2000);
        assert_eq!(restored.get(b"k5"), Some(&b"old"[..]));
        assert_eq!(kv.len(), 2000);
        assert_eq!(kv.get(b"k5"), Some(&b"new"[..]));
        assert_eq!(kv.get(b"k1500"), None);
    }

    fn incr(k: &str) -> Command {
        Command::Incr { key: k.into() }
    }

    fn value(s: &str) -> Reply {
        Reply::Value(Arc::from(s.as_bytes()))
    }

    fn is_bad_request(r: &Reply) -> bool {
        matches!(r, Reply::Error(ErrorCode::BadRequest, m) if !m.is_empty())
    }

    #[test]
    fn incr_counts_from_zero_and_refuses_non_integers_and_overflow() {
        let mut kv = KvStore::new();
        assert_eq!(kv.apply(incr("n")), value("1"));
        assert_eq!(kv.apply(incr("n")), value("2"));
        let put = |v: &str| Command::Put {
            key: b"n".to_vec(),
            value: v.into(),
        };
        kv.apply(put("-5"));
        assert_eq!(kv.apply(incr("n")), value("-4"));
        for bad in [
            "x",
            "",
            "1.5",
            "+3",
            " 3",
            "3 ",
            "--1",
            "99999999999999999999",
        ] {
            kv.apply(put(bad));
            assert!(is_bad_request(&kv.apply(incr("n"))), "{bad:?}");
            assert_eq!(kv.get(b"n"), Some(bad.as_bytes()), "unchanged");
        }
        kv.apply(put("9223372036854775807"));
        assert!(is_bad_request(&kv.apply(incr("n"))));
        assert_eq!(kv.get(b"n"), Some(&b"9223372036854775807"[..]));
        kv.apply(put("9223372036854775806"));
        assert_eq!(kv.apply(incr("n")), value("9223372036854775807"));
        kv.apply(put("-9223372036854775808"));
        assert_eq!(kv.apply(incr("n")), value("-9223372036854775807"));
    }

    #[test]
    fn append_creates_grows_and_refuses_to_pass_the_value_limit() {
        let mut kv = KvStore::new();
        let append = |v: &[u8]| Command::Append {
            key: b"a".to_vec(),
            value: v.to_vec(),
        };
        assert_eq!(kv.apply(append(b"ab")), Reply::Ok);
        assert_eq!(kv.apply(append(b" c")), Reply::Ok);
        assert_eq!(kv.get(b"a"), Some(&b"ab c"[..]));
        assert_eq!(kv.data_bytes(), 5);
        let fill = vec![b'x'; MAX_VALUE - 4];
        assert_eq!(kv.apply(append(&fill)), Reply::Ok);
        assert_eq!(kv.get(b"a").map(<[u8]>::len), Some(MAX_VALUE));
        assert!(is_bad_request(&kv.apply(append(b"y"))));
        assert_eq!(kv.get(b"a").map(<[u8]>::len), Some(MAX_VALUE), "unchanged");
        assert_eq!(kv.apply(append(b"")), Reply::Ok);
    }

    fn tagged(session: u64, seq: u64, cmd: Command) -> Command {
        Command::Tagged {
            session,
            seq,
            cmd: Box::new(cmd),
        }
    }

    const SECRET: SessionSecret = [7; 16];

    fn open() -> Command {
        Command::OpenSession {
            limits: LIMITS,
            secret: Some(SECRET),
        }
    }

    fn resume(id: u64) -> Command {
        Command::ResumeSession {
            id,
            secret: Some(SECRET),
        }
    }

    fn session(index: u64) -> Reply {
        Reply::Session(crate::protocol::SessionId {
            index,
            secret: SECRET,
        })
    }

    const LIMITS: SessionLimits = SessionLimits {
        ttl_ms: 60_000,
        max: 100,
    };

    #[test]
    fn a_retried_tagged_write_is_answered_from_memory_and_not_applied_again() {
        let mut kv = KvStore::new();
        kv.apply_at(1, Command::Clock { ms: 1_000 });
        assert_eq!(kv.apply_at(2, open()), session(2));
        assert_eq!(kv.apply_at(3, tagged(2, 1, incr("c"))), value("1"));
        assert_eq!(kv.apply_at(4, tagged(2, 1, incr("c"))), value("1"));
        assert_eq!(kv.get(b"c"), Some(&b"1"[..]), "the retry did not apply");
        assert_eq!(kv.apply_at(5, tagged(2, 2, incr("c"))), value("2"));
        // An untagged INCR is not deduplicated.
        assert_eq!(kv.apply_at(6, incr("c")), value("3"));
        // A failed write's reply is kept too.
        kv.apply_at(
            7,
            Command::Put {
                key: b"c".to_vec(),
                value: b"x".to_vec(),
            },
        );
        let err = kv.apply_at(8, tagged(2, 3, incr("c")));
        assert!(is_bad_request(&err));
        kv.apply_at(
            9,
            Command::Put {
                key: b"c".to_vec(),
                value: b"10".to_vec(),
            },
        );
        assert_eq!(kv.apply_at(10, tagged(2, 3, incr("c"))), err);
        assert_eq!(kv.get(b"c"), Some(&b"10"[..]));
    }

    #[test]
    fn unknown_and_expired_sessions_get_session_expired_and_change_nothing() {
        let mut kv = KvStore::new();
        let expired = |r: &Reply| matches!(r, Reply::Error(ErrorCode::SessionExpired, _));
        assert!(expired(&kv.apply_at(1, tagged(99, 1, incr("c")))));
        assert!(expired(&kv.apply_at(2, resume(99))));
        kv.apply_at(3, Command::Clock { ms: 1_000 });
        kv.apply_at(4, open());
        assert_eq!(kv.apply_at(5, resume(4)), session(4));
        kv.apply_at(6, Command::Clock { ms: 61_000 });
        assert_eq!(kv.sessions().len(), 1, "idle exactly the TTL: still open");
        kv.apply_at(7, Command::Clock { ms: 61_001 });
        assert!(kv.sessions().is_empty());
        assert!(expired(&kv.apply_at(8, tagged(4, 1, incr("c")))));
        assert_eq!(kv.get(b"c"), None);
    }

    #[test]
    fn commands_with_sessions_round_trip_and_nested_tags_do_not_decode() {
        let id = RequestId { node: 2, seq: 5 };
        let cmds = [
            incr("k"),
            Command::Append {
                key: b"k".to_vec(),
                value: b"x y".to_vec(),
            },
            open(),
            resume(17),
            // The older format: no secret.
            Command::OpenSession {
                limits: LIMITS,
                secret: None,
            },
            Command::ResumeSession {
                id: 17,
                secret: None,
            },
            Command::Clock { ms: 1234 },
            tagged(3, 9, incr("k")),
            tagged(
                3,
                10,
                Command::Cas {
                    key: b"k".to_vec(),
                    expected: b"1".to_vec(),
                    value: b"2".to_vec(),
                },
            ),
        ];
        for cmd in cmds {
            let data = encode_command(id, &cmd);
            assert_eq!(decode_command(&data), Some((id, cmd.clone())));
            if !matches!(cmd, Command::Append { .. } | Command::Tagged { .. }) {
                for cut in 0..data.len() {
                    let old = match &cmd {
                        // Cut just before its secret: the older format.
                        Command::OpenSession { limits, secret } if secret.is_some() => {
                            Command::OpenSession {
                                limits: *limits,
                                secret: None,
                            }
                        }
                        Command::ResumeSession { id, secret } if secret.is_some() => {
                            Command::ResumeSession {
                                id: *id,
                                secret: None,
                            }
                        }
                        _ => {
                            assert_eq!(decode_command(&data[..cut]), None, "{cmd:?} cut at {cut}");
                            continue;
                        }
                    };
                    let want = (cut == data.len() - 16).then_some((id, old));
                    assert_eq!(decode_command(&data[..cut]), want, "{cmd:?} cut at {cut}");
                }
            }
        }
        let nested = encode_command(id, &tagged(1, 1, tagged(1, 2, incr("k"))));
        assert_eq!(decode_command(&nested), None);
        let clock_inside = encode_command(id, &tagged(1, 1, Command::Clock { ms: 5 }));
        assert_eq!(decode_command(&clock_inside), None);
    }

    #[test]
    fn a_snapshot_keeps_the_session_table_and_a_retry_after_restore_is_not_applied() {
        let mut kv = KvStore::new();
        kv.apply_at(1, Command::Clock { ms: 5_000 });
        kv.apply_at(2, open());
        kv.apply_at(3, tagged(2, 1, incr("c")));
        kv.apply_at(4, tagged(2, 2, incr("c")));
        let bytes = kv.snapshot_bytes();
        let mut via_view = Vec::new();
        kv.view().write_snapshot(&mut via_view).unwrap();
        assert_eq!(via_view, bytes);
        let mut other = KvStore::new();
        other.restore(&mut &bytes[..]).unwrap();
        assert_eq!(other.sessions(), kv.sessions());
        assert_eq!(other.apply_at(5, tagged(2, 2, incr("c"))), value("2"));
        assert_eq!(other.apply_at(6, tagged(2, 3, incr("c"))), value("3"));
        assert_eq!(other.get(b"c"), Some(&b"3"[..]));
        for cut in 0..bytes.len() {
            assert!(
                KvStore::new().restore(&mut &bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_version_2_snapshot_loads_with_no_sessions() {
        let mut kv = KvStore::new();
        kv.apply(Command::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        });
        kv.apply_at(2, open());
        let mut v2 = Vec::new();
        write_snapshot(&kv.cluster, &kv.map, &mut v2).unwrap();
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        let mut other = KvStore::new();
        other.apply_at(9, open());
        other.restore(&mut &v2[..]).unwrap();
        assert_eq!(other.get(b"a"), Some(&b"1"[..]));
        assert!(other.sessions().is_empty());
        let mut v5 = kv.snapshot_bytes();
        v5[4..8].copy_from_slice(&5u32.to_le_bytes());
        assert!(KvStore::new().restore(&mut &v5[..]).is_err());
    }

    #[test]
    fn a_version_3_snapshot_loads_its_sessions_without_secrets() {
        let mut kv = KvStore::new();
        kv.apply_at(1, Command::Clock { ms: 5_000 });
        kv.apply_at(2, open());
        kv.apply_at(3, tagged(2, 1, incr("c")));
        // Version 3: the same, but the session (id u64) has no secret field.
        let v4 = kv.snapshot_bytes();
        let mut sessions = Vec::new();
        kv.sessions().write_to(&mut sessions).unwrap();
        let table_at = v4.len() - sessions.len();
        let mut v3 = v4[..table_at].to_vec();
        v3[4..8].copy_from_slice(&3u32.to_le_bytes());
        v3.extend_from_slice(&sessions[..40]); // limits, count, the session's id
        assert_eq!(sessions[40], 1, "the secret flag");
        v3.extend_from_slice(&sessions[40 + 17..]);
        let mut other = KvStore::new();
        other.restore(&mut &v3[..]).unwrap();
        assert_eq!(other.sessions().len(), 1);
        assert!(matches!(
            other.apply_at(4, resume(2)),
            Reply::Error(ErrorCode::SessionExpired, _)
        ));
        // Its kept replies still stop a retry.
        assert_eq!(other.apply_at(5, tagged(2, 1, incr("c"))), value("1"));
        assert_eq!(other.get(b"c"), Some(&b"1"[..]));
    }

    #[test]
    fn a_resume_with_a_wrong_secret_or_none_is_refused() {
        let mut kv = KvStore::new();
        kv.apply_at(2, open());
        let expired = |r: &Reply| matches!(r, Reply::Error(ErrorCode::SessionExpired, _));
        for secret in [None, Some([0; 16]), Some([8; 16])] {
            assert!(expired(
                &kv.apply_at(3, Command::ResumeSession { id: 2, secret })
            ));
        }
        assert_eq!(kv.apply_at(4, resume(2)), session(2));
    }
}
