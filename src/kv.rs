//! The replicated key-value state machine and the commands that drive it.
//!
//! A command travels inside a normal Raft entry in a compact binary form
//! (little-endian, via byteorder):
//!
//! ```text
//! kind u8 (1 put, 2 delete, 3 compare-and-set)
//! origin node id u64, request id u64   -- who waits for the answer
//! key: len u32 + bytes
//! put:    value: the rest of the entry
//! delete: nothing more
//! cas:    expected: len u32 + bytes, then the new value: the rest
//! ```
//!
//! Applying a command yields the [`Reply`] for the client that sent it. Every
//! node applies every command; only the node named as origin answers.
//! An entry that does not decode is skipped with a warning on every node
//! alike, so the replicas stay identical.
//!
//! Snapshots serialise the whole map and the member address book:
//!
//! ```text
//! magic "RNKV" (4 bytes), version u32 = 1
//! members u64, then per member: id u64, address len u32 + bytes
//! keys u64, then per key: key len u32 + bytes, value len u32 + bytes
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian, ReadBytesExt, WriteBytesExt};

use crate::raft::NodeId;

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
}

/// Who is waiting for a command's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub node: NodeId,
    pub seq: u64,
}

/// The outcome of a request, as the client will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    OkIndex(u64),
    Value(Vec<u8>),
    NotFound,
    Deleted,
    Mismatch(Vec<u8>),
    Pong,
    Status(String),
    Error(ErrorCode, String),
}

/// The error codes of the client protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Timeout,
    NoLeader,
    /// The leader changed while the request was in flight.
    LeaderChanged,
    /// The request was refused by Raft (e.g. a conf change is pending).
    Unavailable,
    /// The node failed internally (e.g. a disk error).
    Internal,
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
        }
    }
}

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
            Reply::Pong => out.extend_from_slice(b"PONG"),
            Reply::Status(s) => out.extend_from_slice(s.as_bytes()),
            Reply::Error(code, msg) => {
                let _ = write!(out, "ERR {} {}", code.as_str(), msg);
            }
        }
        out.push(b'\n');
    }
}

const PUT: u8 = 1;
const DELETE: u8 = 2;
const CAS: u8 = 3;

/// Encodes a command with the id of the request waiting for it.
pub fn encode_command(id: RequestId, cmd: &Command) -> Vec<u8> {
    let (kind, key) = match cmd {
        Command::Put { key, .. } => (PUT, key),
        Command::Delete { key } => (DELETE, key),
        Command::Cas { key, .. } => (CAS, key),
    };
    let extra = match cmd {
        Command::Put { value, .. } => value.len(),
        Command::Delete { .. } => 0,
        Command::Cas {
            expected, value, ..
        } => 4 + expected.len() + value.len(),
    };
    let mut out = Vec::with_capacity(21 + key.len() + extra);
    out.push(kind);
    out.extend_from_slice(&id.node.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    match cmd {
        Command::Put { value, .. } => out.extend_from_slice(value),
        Command::Delete { .. } => {}
        Command::Cas {
            expected, value, ..
        } => {
            out.extend_from_slice(&(expected.len() as u32).to_le_bytes());
            out.extend_from_slice(expected);
            out.extend_from_slice(value);
        }
    }
    out
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

/// Decodes [`encode_command`]'s output; `None` if it is malformed.
pub fn decode_command(data: &[u8]) -> Option<(RequestId, Command)> {
    if data.len() < 17 {
        return None;
    }
    let kind = data[0];
    let id = RequestId {
        node: LittleEndian::read_u64(&data[1..9]),
        seq: LittleEndian::read_u64(&data[9..17]),
    };
    let mut rest = &data[17..];
    let key = take_bytes(&mut rest)?.to_vec();
    let cmd = match kind {
        PUT => Command::Put {
            key,
            value: rest.to_vec(),
        },
        DELETE if rest.is_empty() => Command::Delete { key },
        CAS => {
            let expected = take_bytes(&mut rest)?.to_vec();
            Command::Cas {
                key,
                expected,
                value: rest.to_vec(),
            }
        }
        _ => return None,
    };
    Some((id, cmd))
}

/// Keys and values are shared slices, so that a frozen copy of the whole
/// map for a snapshot costs two reference counts per key, not a copy.
type Map = HashMap<Arc<[u8]>, Arc<[u8]>>;

/// The state machine: keys to values, plus where each member listens.
#[derive(Default, Debug)]
pub struct KvStore {
    map: Map,
    /// Raft address of each member, learned from conf changes.
    pub members: BTreeMap<NodeId, String>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| &**v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Applies a command and returns the reply for its client.
    pub fn apply(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Put { key, value } => {
                match self.map.get_mut(key.as_slice()) {
                    Some(v) => *v = value.into(),
                    None => {
                        self.map.insert(key.into(), value.into());
                    }
                }
                Reply::Ok
            }
            Command::Delete { key } => match self.map.remove(key.as_slice()) {
                Some(_) => Reply::Deleted,
                None => Reply::NotFound,
            },
            Command::Cas {
                key,
                expected,
                value,
            } => match self.map.get_mut(key.as_slice()) {
                None => Reply::NotFound,
                Some(current) if **current == *expected => {
                    *current = value.into();
                    Reply::Ok
                }
                Some(current) => Reply::Mismatch(current.to_vec()),
            },
        }
    }

    /// Serialises the whole state (see the module docs for the layout).
    pub fn write_snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        write_snapshot(&self.members, &self.map, w)
    }

    /// A frozen copy of the state to serialise on another thread while
    /// this one goes on applying. Cheap: it shares every key and value.
    pub fn view(&self) -> KvView {
        KvView {
            members: self.members.clone(),
            map: self.map.clone(),
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
        fn read_vec(r: &mut impl Read, max: u32) -> io::Result<Vec<u8>> {
            let n = r.read_u32::<LittleEndian>()?;
            if n > max {
                return Err(bad("length out of range"));
            }
            let mut v = vec![0; n as usize];
            r.read_exact(&mut v)?;
            Ok(v)
        }
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        if &magic != b"RNKV" || r.read_u32::<LittleEndian>()? != 1 {
            return Err(bad("unknown format"));
        }
        self.map = HashMap::new();
        self.members.clear();
        let mut members = BTreeMap::new();
        for _ in 0..r.read_u64::<LittleEndian>()? {
            let id = r.read_u64::<LittleEndian>()?;
            let addr = String::from_utf8(read_vec(r, 4096)?).map_err(|_| bad("address"))?;
            members.insert(id, addr);
        }
        self.members = members;
        let n = r.read_u64::<LittleEndian>()?;
        self.map.reserve(n.min(1 << 20) as usize);
        for _ in 0..n {
            let k = read_vec(r, 1 << 16)?;
            let v = read_vec(r, 1 << 24)?;
            self.map.insert(k.into(), v.into());
        }
        Ok(())
    }
}

/// A frozen copy of a [`KvStore`], see [`KvStore::view`].
pub struct KvView {
    members: BTreeMap<NodeId, String>,
    map: Map,
}

impl KvView {
    pub fn write_snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        write_snapshot(&self.members, &self.map, w)
    }
}

fn write_snapshot(
    members: &BTreeMap<NodeId, String>,
    map: &Map,
    w: &mut impl Write,
) -> io::Result<()> {
    w.write_all(b"RNKV")?;
    w.write_u32::<LittleEndian>(1)?;
    w.write_u64::<LittleEndian>(members.len() as u64)?;
    for (id, addr) in members {
        w.write_u64::<LittleEndian>(*id)?;
        w.write_u32::<LittleEndian>(addr.len() as u32)?;
        w.write_all(addr.as_bytes())?;
    }
    w.write_u64::<LittleEndian>(map.len() as u64)?;
    for (k, v) in map {
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
        kv.members.insert(2, "127.0.0.1:7002".into());
        let bytes = kv.snapshot_bytes();
        let mut other = KvStore::new();
        other.restore(&mut &bytes[..]).unwrap();
        assert_eq!(other.get(b"a"), Some(&b"1"[..]));
        let mut via_view = Vec::new();
        kv.view().write_snapshot(&mut via_view).unwrap();
        assert_eq!(via_view, bytes);
        assert_eq!(other.members, kv.members);
        for cut in 0..bytes.len() {
            let mut fresh = KvStore::new();
            assert!(fresh.restore(&mut &bytes[..cut]).is_err());
        }
    }
}
