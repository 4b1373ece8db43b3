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
//! magic "RNKV" (4 bytes), version u32 = 2
//! cluster id u64
//! members u64, then per member: id u64, address len u32 + bytes
//! removed u64, then per removed node: id u64
//! keys u64, then per key: key len u32 + bytes, value len u32 + bytes
//! ```
//!
//! Version 1 (no cluster id, no removed list) is still read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian, ReadBytesExt, WriteBytesExt};

use crate::protocol::Reply;
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

/// Appends `len u32 + bytes`.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes the commands of kinds 16 to 18 (called by [`encode_command`]
/// for those only).
fn encode_redis_command(id: RequestId, cmd: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    let head = |out: &mut Vec<u8>, kind: u8| {
        out.push(kind);
        out.extend_from_slice(&id.node.to_le_bytes());
        out.extend_from_slice(&id.seq.to_le_bytes());
    };
    match cmd {
        Command::PutIf {
            key,
            value,
            present,
        } => {
            out.reserve(22 + key.len() + value.len());
            head(&mut out, PUT_IF);
            put_bytes(&mut out, key);
            out.push(u8::from(*present));
            out.extend_from_slice(value);
        }
        Command::PutMany { pairs } => {
            let size: usize = pairs.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
            out.reserve(21 + size);
            head(&mut out, PUT_MANY);
            out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
            for (k, v) in pairs {
                put_bytes(&mut out, k);
                put_bytes(&mut out, v);
            }
        }
        Command::DeleteMany { keys } => {
            head(&mut out, DELETE_MANY);
            out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            for k in keys {
                put_bytes(&mut out, k);
            }
        }
        Command::Put { .. }
        | Command::Delete { .. }
        | Command::Cas { .. }
        | Command::SetClusterId { .. } => {}
    }
    out
}

/// Decodes the commands of kinds 16 to 18 from what follows the request
/// id; `None` if malformed.
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
    let (kind, key) = match cmd {
        Command::Put { key, .. } => (PUT, key),
        Command::Delete { key } => (DELETE, key),
        Command::Cas { key, .. } => (CAS, key),
        Command::SetClusterId { id: cluster } => {
            let mut out = Vec::with_capacity(25);
            out.push(CLUSTER_ID);
            out.extend_from_slice(&id.node.to_le_bytes());
            out.extend_from_slice(&id.seq.to_le_bytes());
            out.extend_from_slice(&cluster.to_le_bytes());
            return out;
        }
        Command::PutIf { .. } | Command::PutMany { .. } | Command::DeleteMany { .. } => {
            return encode_redis_command(id, cmd)
        }
    };
    let extra = match cmd {
        Command::Put { value, .. } => value.len(),
        Command::Cas {
            expected, value, ..
        } => 4 + expected.len() + value.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(21 + key.len() + extra);
    out.push(kind);
    out.extend_from_slice(&id.node.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    match cmd {
        Command::Put { value, .. } => out.extend_from_slice(value),
        Command::Cas {
            expected, value, ..
        } => {
            out.extend_from_slice(&(expected.len() as u32).to_le_bytes());
            out.extend_from_slice(expected);
            out.extend_from_slice(value);
        }
        _ => {}
    }
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
    let kind = data[0];
    let id = id_of(data);
    let mut rest = &data[17..];
    if kind == CLUSTER_ID {
        let id = u64::from_le_bytes(rest.try_into().ok()?);
        return Some((id_of(data), Command::SetClusterId { id }));
    }
    if matches!(kind, PUT_IF | PUT_MANY | DELETE_MANY) {
        return Some((id, decode_redis_command(kind, rest)?));
    }
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

/// The state machine: keys to values, plus the [`Cluster`] record.
#[derive(Default, Debug)]
pub struct KvStore {
    map: Map,
    pub cluster: Cluster,
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

    /// Applies a command and returns the reply for its client.
    pub fn apply(&mut self, cmd: Command) -> Reply {
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
            Command::SetClusterId { id } => {
                if self.cluster.id == 0 {
                    self.cluster.id = id;
                }
                Reply::Ok
            }
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
        }
    }

    /// Serialises the whole state (see the module docs for the layout).
    pub fn write_snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        write_snapshot(&self.cluster, &self.map, w)
    }

    /// A frozen copy of the state to serialise on another thread while
    /// this one goes on applying. Cheap: it shares every key and value.
    pub fn view(&self) -> KvView {
        KvView {
            cluster: self.cluster.clone(),
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
        let version = r.read_u32::<LittleEndian>()?;
        if &magic != b"RNKV" || !(1..=2).contains(&version) {
            return Err(bad("unknown format"));
        }
        self.map = Map::default();
        self.cluster = Cluster::default();
        let mut cluster = Cluster::default();
        if version >= 2 {
            cluster.id = r.read_u64::<LittleEndian>()?;
        }
        for _ in 0..r.read_u64::<LittleEndian>()? {
            let id = r.read_u64::<LittleEndian>()?;
            let addr = String::from_utf8(read_vec(r, 4096)?).map_err(|_| bad("address"))?;
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
            let k = read_vec(r, 1 << 16)?;
            let v = read_vec(r, 1 << 24)?;
            self.map.put(k, v);
        }
        Ok(())
    }
}

/// A frozen copy of a [`KvStore`], see [`KvStore::view`].
pub struct KvView {
    cluster: Cluster,
    map: Map,
}

impl KvView {
    pub fn write_snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        write_snapshot(&self.cluster, &self.map, w)
    }
}

fn write_snapshot(cluster: &Cluster, map: &Map, w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"RNKV")?;
    w.write_u32::<LittleEndian>(2)?;
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
}
