//! The peer wire format: length-prefixed binary frames (little-endian).
//!
//! ```text
//! frame     := len u32 | kind u8 | body          (len counts kind + body; limits per kind below)
//! kind 1    handshake: magic u32 "RFTN" | version u16 = 2 | from u64 | to u64 | cluster id u64
//! kind 2    message:   from u64 | to u64 | term u64 | tag u8 | fields of the tag
//! kind 3    snapshot header: from | to | term | index u64 | term u64
//!                      | voters (count u32, ids u64...) | learners (same) | data len u64
//! kind 4    snapshot chunk: bytes (the next part of the data)
//! kind 5    snapshot end: crc32 u32 of all data bytes
//! kind 6    verdict (listener to dialer, once, after the handshake):
//!           status u8 (0 welcome, 1 wrong cluster, 2 removed, 3 stranger,
//!           4 wrong node, 5 busy, 6 certificate names another node)
//!           | the listener's cluster id u64
//! kind 7    probe (instead of a handshake, from a node with an empty data
//!           dir deciding whether to bootstrap): magic u32 | version u16 | from u64 | to u64
//! kind 8    probe reply (listener to prober, once, then closed): state u8
//!           (0 refused, 1 deciding too, 2 running) | verdict u8 (when refused)
//!           | cluster id u64 | term u64 | last index u64 | lists the prober u8
//! entries   := count u32, then per entry: index u64 | term u64 | kind u8 | len u32 | data
//! bytes     := len u32 | data
//! ```
//!
//! A connection opens with one handshake frame from the dialer (over TLS
//! when peer TLS is on), answered by one verdict frame; after a welcome it
//! carries frames one way (dialer to listener), otherwise it is closed. A
//! probe connection carries one probe and its reply, then closes.
//! Limits: a handshake is at most [`MAX_HANDSHAKE`] bytes, a message
//! [`MAX_FRAME`], a snapshot header [`MAX_SNAPSHOT_HEADER`], a chunk
//! [`CHUNK`] + 1, a probe as a handshake, a probe reply 28 ([`max_frame`]
//! has them all). [`read_frame`] cuts frames
//! out of a byte stream and applies these limits: it is the only frame
//! reader, for the dialer, the listener and the `peer_frame` fuzz target
//! alike, and it allocates as bytes arrive, never by a length it was told.
//!
//! A snapshot is a header frame,
//! chunk frames until `data len` bytes have arrived, and an end frame with the
//! CRC of the data; no other frame may come in between. The sender streams the
//! chunks from its snapshot file and the receiver writes them to a file, so
//! neither side holds the snapshot in memory. Every decode error is reported,
//! never a panic: the reader closes the connection and the node keeps running.

use std::io::{self, Read};

use byteorder::{ByteOrder, LittleEndian};

use crate::raft::{
    ConfState, Entry, EntryKind, Message, MessageBody, NodeId, Snapshot, SnapshotMeta,
};

pub const MAGIC: u32 = u32::from_le_bytes(*b"RFTN");
pub const VERSION: u16 = 2;
/// Largest message frame accepted, kind byte included.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest handshake frame (before the peer is authenticated).
pub const MAX_HANDSHAKE: usize = 64;
/// Largest snapshot header frame.
pub const MAX_SNAPSHOT_HEADER: usize = 64 << 10;
/// Snapshot data is sent in chunks of this size.
pub const CHUNK: usize = 1 << 20;

pub const KIND_HANDSHAKE: u8 = 1;
pub const KIND_MESSAGE: u8 = 2;
pub const KIND_SNAPSHOT_HEADER: u8 = 3;
pub const KIND_SNAPSHOT_CHUNK: u8 = 4;
pub const KIND_SNAPSHOT_END: u8 = 5;
pub const KIND_VERDICT: u8 = 6;
pub const KIND_PROBE: u8 = 7;
pub const KIND_PROBE_REPLY: u8 = 8;

/// The largest frame of each kind, kind byte included; `None` for a kind
/// that does not exist.
pub fn max_frame(kind: u8) -> Option<usize> {
    match kind {
        KIND_HANDSHAKE => Some(MAX_HANDSHAKE),
        KIND_MESSAGE => Some(MAX_FRAME),
        KIND_SNAPSHOT_HEADER => Some(MAX_SNAPSHOT_HEADER),
        KIND_SNAPSHOT_CHUNK => Some(CHUNK + 1),
        KIND_SNAPSHOT_END => Some(5),
        KIND_VERDICT => Some(10),
        KIND_PROBE => Some(MAX_HANDSHAKE),
        KIND_PROBE_REPLY => Some(PROBE_REPLY_LEN),
        _ => None,
    }
}

/// Why the next frame could not be cut out of a stream. Each ends the
/// connection: after any of them the stream is no longer at a frame
/// boundary.
#[derive(Debug)]
pub enum FrameError {
    /// The stream failed, or ended inside a frame (`UnexpectedEof`).
    Io(io::Error),
    /// A length of 0, or over the limit of its kind (`max`).
    Length { kind: u8, len: usize, max: usize },
    /// A kind that does not exist, or is not expected here.
    Kind(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Length { kind, len, max } => {
                write!(f, "frame of kind {kind} is {len} bytes, the limit is {max}")
            }
            FrameError::Kind(k) => write!(f, "unexpected frame kind {k}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// One frame read by [`read_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: u8,
    /// The bytes after the kind; at most [`max_frame`]`(kind) - 1` of them.
    pub body: &'a [u8],
}

/// Reads the next frame of `r`, its body into `buf`. Returns `Ok(None)` at
/// a clean end: the stream ends before the first byte of a frame.
///
/// Only the kinds in `allowed` are accepted, each up to its
/// [`max_frame`] (a kind with no limit is refused even if allowed). The
/// header is checked before any of the body is read, and `buf` grows with
/// the bytes that actually arrive, never with the length announced: a
/// peer that announces 16 MiB and sends nothing costs nothing.
pub fn read_frame<'b>(
    r: &mut impl Read,
    buf: &'b mut Vec<u8>,
    allowed: &[u8],
) -> Result<Option<Frame<'b>>, FrameError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    r.read_exact(&mut head[1..]).map_err(FrameError::Io)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = head[4];
    let max = match max_frame(kind) {
        Some(max) if allowed.contains(&kind) => max,
        _ => return Err(FrameError::Kind(kind)),
    };
    if len == 0 || len > max {
        return Err(FrameError::Length { kind, len, max });
    }
    buf.clear();
    let want = (len - 1) as u64;
    let got = r.take(want).read_to_end(buf).map_err(FrameError::Io)?;
    if got as u64 != want {
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a frame",
        )));
    }
    Ok(Some(Frame { kind, body: buf }))
}

/// Why a frame body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ends before its last field.
    Truncated,
    /// Bytes follow the last field.
    TrailingBytes,
    /// A boolean that is neither 0 nor 1.
    BadBool(u8),
    UnknownEntryKind(u8),
    UnknownTag(u8),
    /// A handshake that does not start with [`MAGIC`].
    BadMagic,
    /// A handshake of another protocol version.
    Version(u16),
    /// A handshake meant for another node.
    WrongTarget {
        from: NodeId,
        to: NodeId,
        me: NodeId,
    },
    /// A handshake from node id 0.
    ZeroId,
    /// A snapshot header listing more members than any cluster has.
    TooManyMembers(usize),
    /// A snapshot header announcing more than [`MAX_SNAPSHOT`] bytes.
    SnapshotTooLarge(u64),
    /// A member query or report naming more ids than a node ever asks
    /// about at once.
    TooManyIds(usize),
    /// A verdict status this version does not know.
    UnknownVerdict(u8),
    /// A probe reply with a field its state does not carry set to other
    /// than 0: each reply has exactly one encoding.
    UnusedField,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("frame ends early"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes in frame"),
            DecodeError::BadBool(b) => write!(f, "bad boolean {b}"),
            DecodeError::UnknownEntryKind(k) => write!(f, "unknown entry kind {k}"),
            DecodeError::UnknownTag(t) => write!(f, "unknown message tag {t}"),
            DecodeError::BadMagic => f.write_str("wrong magic: not a raftnode peer"),
            DecodeError::Version(v) => {
                write!(f, "protocol version {v}, this node speaks {VERSION}")
            }
            DecodeError::WrongTarget { from, to, me } => {
                write!(f, "peer {from} dialled node {to}, but this is node {me}")
            }
            DecodeError::ZeroId => f.write_str("peer id 0 or 2^64 - 1 (not a node id)"),
            DecodeError::TooManyMembers(n) => write!(f, "snapshot lists {n} members"),
            DecodeError::SnapshotTooLarge(n) => {
                write!(
                    f,
                    "snapshot of {n} bytes is over the limit of {MAX_SNAPSHOT}"
                )
            }
            DecodeError::UnknownVerdict(v) => write!(f, "unknown verdict {v}"),
            DecodeError::TooManyIds(n) => write!(f, "a member query or report of {n} ids"),
            DecodeError::UnusedField => f.write_str("probe reply sets a field its state has not"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over a frame body that fails instead of panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(LittleEndian::read_u16(self.take(2)?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(LittleEndian::read_u32(self.take(4)?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(LittleEndian::read_u64(self.take(8)?))
    }
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::BadBool(b)),
        }
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// Starts a frame of `kind` in `out`; [`end_frame`] fills in its length.
pub fn begin_frame(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    start
}

pub fn end_frame(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    LittleEndian::write_u32(&mut out[start..start + 4], len);
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}
fn put_ids(out: &mut Vec<u8>, ids: &[NodeId]) {
    put_u32(out, ids.len() as u32);
    for &id in ids {
        put_u64(out, id);
    }
}

/// What a dialer says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub from: NodeId,
    /// The dialer's cluster ID, 0 if it has not learned it yet.
    pub cluster_id: u64,
}

/// The opening of a handshake and of a probe: magic, version, both ids.
fn put_opening(out: &mut Vec<u8>, from: NodeId, to: NodeId) {
    put_u32(out, MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    put_u64(out, from);
    put_u64(out, to);
}

/// Reads the opening of a body meant for node `me` (the rest of the body
/// is `then`'s to read, all of it) and returns the sender's id. The ids are
/// checked after the whole body, so that a malformed body is reported as
/// such first.
fn read_opening<T>(
    body: &[u8],
    me: NodeId,
    then: impl FnOnce(&mut Reader) -> Result<T, DecodeError>,
) -> Result<(NodeId, T), DecodeError> {
    let mut r = Reader::new(body);
    if r.u32()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let from = r.u64()?;
    let to = r.u64()?;
    let rest = then(&mut r)?;
    r.finish()?;
    if to != me {
        return Err(DecodeError::WrongTarget { from, to, me });
    }
    if from == 0 || from == u64::MAX {
        return Err(DecodeError::ZeroId);
    }
    Ok((from, rest))
}

pub fn encode_handshake(out: &mut Vec<u8>, from: NodeId, to: NodeId, cluster_id: u64) {
    let start = begin_frame(out, KIND_HANDSHAKE);
    put_opening(out, from, to);
    put_u64(out, cluster_id);
    end_frame(out, start);
}

/// Checks a handshake body meant for node `me`.
pub fn decode_handshake(body: &[u8], me: NodeId) -> Result<Handshake, DecodeError> {
    let (from, cluster_id) = read_opening(body, me, |r| r.u64())?;
    Ok(Handshake { from, cluster_id })
}

/// The listener's answer to a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Welcome,
    /// The dialer presented another cluster's ID.
    WrongCluster,
    /// The dialer was removed from the cluster.
    Removed,
    /// The dialer is not known as a member, and its cluster ID does not
    /// vouch for it.
    Stranger,
    /// The dialer meant to reach another node.
    WrongNode,
    /// Too many peer connections.
    Busy,
    /// The dialer's certificate names another node than its handshake.
    WrongCertificate,
}

impl Verdict {
    fn code(self) -> u8 {
        match self {
            Verdict::Welcome => 0,
            Verdict::WrongCluster => 1,
            Verdict::Removed => 2,
            Verdict::Stranger => 3,
            Verdict::WrongNode => 4,
            Verdict::Busy => 5,
            Verdict::WrongCertificate => 6,
        }
    }

    fn from_code(c: u8) -> Result<Verdict, DecodeError> {
        Ok(match c {
            0 => Verdict::Welcome,
            1 => Verdict::WrongCluster,
            2 => Verdict::Removed,
            3 => Verdict::Stranger,
            4 => Verdict::WrongNode,
            5 => Verdict::Busy,
            6 => Verdict::WrongCertificate,
            c => return Err(DecodeError::UnknownVerdict(c)),
        })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Welcome => "welcome",
            Verdict::WrongCluster => "it belongs to another cluster",
            Verdict::Removed => "it was removed from the cluster",
            Verdict::Stranger => "it is not a member",
            Verdict::WrongNode => "it dialled another node",
            Verdict::Busy => "too many peer connections",
            Verdict::WrongCertificate => "its certificate names another node",
        })
    }
}

pub fn encode_verdict(out: &mut Vec<u8>, verdict: Verdict, cluster_id: u64) {
    let start = begin_frame(out, KIND_VERDICT);
    out.push(verdict.code());
    put_u64(out, cluster_id);
    end_frame(out, start);
}

/// Decodes a verdict body: the verdict and the listener's cluster ID.
pub fn decode_verdict(body: &[u8]) -> Result<(Verdict, u64), DecodeError> {
    let mut r = Reader::new(body);
    let verdict = Verdict::from_code(r.u8()?)?;
    let cluster_id = r.u64()?;
    r.finish()?;
    Ok((verdict, cluster_id))
}

/// A probe reply frame's size, kind byte included.
const PROBE_REPLY_LEN: usize = 28;

/// What a node says about itself to a prober (`discovery.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeReply {
    /// The prober is turned away, for this reason.
    Refused(Verdict),
    /// This node has an empty data dir too and is deciding.
    Deciding,
    /// This node runs a cluster.
    Running {
        /// 0 until the cluster's first leader has set it.
        cluster_id: u64,
        term: u64,
        last_index: u64,
        /// Whether the prober is a member of this node's configuration.
        lists_prober: bool,
    },
}

pub fn encode_probe(out: &mut Vec<u8>, from: NodeId, to: NodeId) {
    let start = begin_frame(out, KIND_PROBE);
    put_opening(out, from, to);
    end_frame(out, start);
}

/// Checks a probe body meant for node `me`; returns the prober's id.
pub fn decode_probe(body: &[u8], me: NodeId) -> Result<NodeId, DecodeError> {
    read_opening(body, me, |_| Ok(())).map(|(from, ())| from)
}

pub fn encode_probe_reply(out: &mut Vec<u8>, reply: ProbeReply) {
    let start = begin_frame(out, KIND_PROBE_REPLY);
    let (state, verdict, cluster_id, term, last_index, lists) = match reply {
        ProbeReply::Refused(v) => (0, v.code(), 0, 0, 0, false),
        ProbeReply::Deciding => (1, 0, 0, 0, 0, false),
        ProbeReply::Running {
            cluster_id,
            term,
            last_index,
            lists_prober,
        } => (2, 0, cluster_id, term, last_index, lists_prober),
    };
    out.push(state);
    out.push(verdict);
    put_u64(out, cluster_id);
    put_u64(out, term);
    put_u64(out, last_index);
    out.push(u8::from(lists));
    end_frame(out, start);
}

pub fn decode_probe_reply(body: &[u8]) -> Result<ProbeReply, DecodeError> {
    let mut r = Reader::new(body);
    let state = r.u8()?;
    let verdict = r.u8()?;
    let cluster_id = r.u64()?;
    let term = r.u64()?;
    let last_index = r.u64()?;
    let lists_prober = r.bool()?;
    r.finish()?;
    // The fields a state does not carry are encoded as 0 and must be 0, so
    // that a reply decodes only from the bytes it encodes to.
    let running_fields_unset = cluster_id == 0 && term == 0 && last_index == 0 && !lists_prober;
    Ok(match state {
        0 if running_fields_unset => ProbeReply::Refused(Verdict::from_code(verdict)?),
        1 if verdict == 0 && running_fields_unset => ProbeReply::Deciding,
        0 | 1 => return Err(DecodeError::UnusedField),
        2 if verdict != 0 => return Err(DecodeError::UnusedField),
        2 => ProbeReply::Running {
            cluster_id,
            term,
            last_index,
            lists_prober,
        },
        s => return Err(DecodeError::UnknownTag(s)),
    })
}

const TAG_APPEND: u8 = 1;
const TAG_APPEND_RESPONSE: u8 = 2;
const TAG_HEARTBEAT: u8 = 3;
const TAG_HEARTBEAT_RESPONSE: u8 = 4;
const TAG_VOTE: u8 = 5;
const TAG_VOTE_RESPONSE: u8 = 6;
const TAG_TIMEOUT_NOW: u8 = 7;
const TAG_PROPOSE: u8 = 8;
const TAG_READ_INDEX: u8 = 9;
const TAG_READ_INDEX_RESPONSE: u8 = 10;
const TAG_TRANSFER_LEADER: u8 = 11;
const TAG_TERM_QUERY: u8 = 12;
const TAG_TERM_REPORT: u8 = 13;
const TAG_RECOVERING: u8 = 14;
const TAG_RECOVERY_ACK: u8 = 15;
const TAG_RECOVERY_DONE: u8 = 16;
const TAG_MEMBER_QUERY: u8 = 17;
const TAG_MEMBER_REPORT: u8 = 18;

fn put_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    put_u32(out, entries.len() as u32);
    for e in entries {
        put_u64(out, e.index);
        put_u64(out, e.term);
        out.push(e.kind.to_byte());
        put_bytes(out, &e.data);
    }
}

fn get_entries(r: &mut Reader<'_>) -> Result<Vec<Entry>, DecodeError> {
    let n = r.u32()? as usize;
    // Each entry takes at least 21 bytes: don't trust the count for capacity.
    let mut entries = Vec::with_capacity(n.min(r.buf.len() / 21));
    for _ in 0..n {
        let index = r.u64()?;
        let term = r.u64()?;
        let k = r.u8()?;
        let kind = EntryKind::from_byte(k).ok_or(DecodeError::UnknownEntryKind(k))?;
        let data = r.bytes()?;
        entries.push(Entry {
            index,
            term,
            kind,
            data,
        });
    }
    Ok(entries)
}

/// Appends the header frame of a snapshot of `total` data bytes.
pub fn encode_snapshot_header(
    out: &mut Vec<u8>,
    from: NodeId,
    to: NodeId,
    term: u64,
    meta: &SnapshotMeta,
    total: u64,
) {
    let start = begin_frame(out, KIND_SNAPSHOT_HEADER);
    put_u64(out, from);
    put_u64(out, to);
    put_u64(out, term);
    put_u64(out, meta.index);
    put_u64(out, meta.term);
    put_ids(out, &meta.conf_state.voters);
    put_ids(out, &meta.conf_state.learners);
    put_u64(out, total);
    end_frame(out, start);
}

/// The 5-byte frame header of a chunk of `len` bytes (the bytes follow).
pub fn chunk_frame_header(len: usize) -> [u8; 5] {
    let mut h = [0u8; 5];
    LittleEndian::write_u32(&mut h[..4], len as u32 + 1);
    h[4] = KIND_SNAPSHOT_CHUNK;
    h
}

/// Appends the end frame of a snapshot whose data has CRC32 `crc`.
pub fn encode_snapshot_end(out: &mut Vec<u8>, crc: u32) {
    let start = begin_frame(out, KIND_SNAPSHOT_END);
    put_u32(out, crc);
    end_frame(out, start);
}

/// Appends the frame for `m` to `out`. Snapshot messages are not encoded
/// here: the transport streams them from the snapshot file (see above).
pub fn encode_message(out: &mut Vec<u8>, m: &Message) {
    if let MessageBody::Snapshot { .. } = &m.body {
        debug_assert!(false, "snapshots are streamed, not encoded");
        return;
    }
    let start = begin_frame(out, KIND_MESSAGE);
    put_u64(out, m.from);
    put_u64(out, m.to);
    put_u64(out, m.term);
    match &m.body {
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            out.push(TAG_APPEND);
            put_u64(out, *prev_index);
            put_u64(out, *prev_term);
            put_u64(out, *commit);
            put_entries(out, entries);
        }
        MessageBody::AppendResponse {
            index,
            reject,
            reject_hint,
            hint_term,
            recovery,
        } => {
            out.push(TAG_APPEND_RESPONSE);
            put_u64(out, *index);
            out.push(*reject as u8);
            put_u64(out, *reject_hint);
            put_u64(out, *hint_term);
            put_u64(out, *recovery);
        }
        MessageBody::Heartbeat { commit, context } => {
            out.push(TAG_HEARTBEAT);
            put_u64(out, *commit);
            put_bytes(out, context);
        }
        MessageBody::HeartbeatResponse { context, recovery } => {
            out.push(TAG_HEARTBEAT_RESPONSE);
            put_bytes(out, context);
            put_u64(out, *recovery);
        }
        MessageBody::RequestVote {
            pre,
            last_index,
            last_term,
            transfer,
            campaign,
        } => {
            out.push(TAG_VOTE);
            out.push(*pre as u8);
            put_u64(out, *last_index);
            put_u64(out, *last_term);
            out.push(*transfer as u8);
            put_u64(out, *campaign);
        }
        MessageBody::RequestVoteResponse {
            pre,
            reject,
            campaign,
        } => {
            out.push(TAG_VOTE_RESPONSE);
            out.push(*pre as u8);
            out.push(*reject as u8);
            put_u64(out, *campaign);
        }
        MessageBody::TimeoutNow => out.push(TAG_TIMEOUT_NOW),
        MessageBody::Propose { entries } => {
            out.push(TAG_PROPOSE);
            put_entries(out, entries);
        }
        MessageBody::ReadIndex { context } => {
            out.push(TAG_READ_INDEX);
            put_bytes(out, context);
        }
        MessageBody::ReadIndexResponse { index, context } => {
            out.push(TAG_READ_INDEX_RESPONSE);
            put_u64(out, *index);
            put_bytes(out, context);
        }
        MessageBody::TransferLeader { target } => {
            out.push(TAG_TRANSFER_LEADER);
            put_u64(out, *target);
        }
        MessageBody::TermQuery => out.push(TAG_TERM_QUERY),
        MessageBody::TermReport { term } => {
            out.push(TAG_TERM_REPORT);
            put_u64(out, *term);
        }
        MessageBody::Recovering {
            id,
            last_index,
            last_term,
        } => {
            out.push(TAG_RECOVERING);
            put_u64(out, *id);
            put_u64(out, *last_index);
            put_u64(out, *last_term);
        }
        MessageBody::RecoveryAck { id, target } => {
            out.push(TAG_RECOVERY_ACK);
            put_u64(out, *id);
            put_u64(out, *target);
        }
        MessageBody::RecoveryDone { id } => {
            out.push(TAG_RECOVERY_DONE);
            put_u64(out, *id);
        }
        MessageBody::MemberQuery { ids } => {
            out.push(TAG_MEMBER_QUERY);
            put_ids(out, ids);
        }
        MessageBody::MemberReport { members } => {
            out.push(TAG_MEMBER_REPORT);
            put_ids(out, members);
        }
        MessageBody::Snapshot { .. } => {}
    }
    end_frame(out, start);
}

/// Decodes a message frame body.
pub fn decode_message(body: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(body);
    let from = r.u64()?;
    let to = r.u64()?;
    let term = r.u64()?;
    let body = match r.u8()? {
        TAG_APPEND => {
            let prev_index = r.u64()?;
            let prev_term = r.u64()?;
            let commit = r.u64()?;
            let entries = get_entries(&mut r)?;
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            }
        }
        TAG_APPEND_RESPONSE => MessageBody::AppendResponse {
            index: r.u64()?,
            reject: r.bool()?,
            reject_hint: r.u64()?,
            hint_term: r.u64()?,
            recovery: r.u64()?,
        },
        TAG_HEARTBEAT => MessageBody::Heartbeat {
            commit: r.u64()?,
            context: r.bytes()?,
        },
        TAG_HEARTBEAT_RESPONSE => MessageBody::HeartbeatResponse {
            context: r.bytes()?,
            recovery: r.u64()?,
        },
        TAG_VOTE => MessageBody::RequestVote {
            pre: r.bool()?,
            last_index: r.u64()?,
            last_term: r.u64()?,
            transfer: r.bool()?,
            campaign: r.u64()?,
        },
        TAG_VOTE_RESPONSE => MessageBody::RequestVoteResponse {
            pre: r.bool()?,
            reject: r.bool()?,
            campaign: r.u64()?,
        },
        TAG_TIMEOUT_NOW => MessageBody::TimeoutNow,
        TAG_PROPOSE => MessageBody::Propose {
            entries: get_entries(&mut r)?,
        },
        TAG_READ_INDEX => MessageBody::ReadIndex {
            context: r.bytes()?,
        },
        TAG_READ_INDEX_RESPONSE => MessageBody::ReadIndexResponse {
            index: r.u64()?,
            context: r.bytes()?,
        },
        TAG_TRANSFER_LEADER => MessageBody::TransferLeader { target: r.u64()? },
        TAG_TERM_QUERY => MessageBody::TermQuery,
        TAG_TERM_REPORT => MessageBody::TermReport { term: r.u64()? },
        TAG_RECOVERING => MessageBody::Recovering {
            id: r.u64()?,
            last_index: r.u64()?,
            last_term: r.u64()?,
        },
        TAG_RECOVERY_ACK => MessageBody::RecoveryAck {
            id: r.u64()?,
            target: r.u64()?,
        },
        TAG_RECOVERY_DONE => MessageBody::RecoveryDone { id: r.u64()? },
        TAG_MEMBER_QUERY => MessageBody::MemberQuery {
            ids: get_ids(&mut r, crate::raft::MAX_VOUCHED)?,
        },
        TAG_MEMBER_REPORT => MessageBody::MemberReport {
            members: get_ids(&mut r, crate::raft::MAX_VOUCHED)?,
        },
        t => return Err(DecodeError::UnknownTag(t)),
    };
    r.finish()?;
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

/// A count of node ids, then the ids; more than `max` is refused before
/// anything is allocated.
fn get_ids(r: &mut Reader<'_>, max: usize) -> Result<Vec<NodeId>, DecodeError> {
    let n = r.u32()? as usize;
    if n > max {
        return Err(DecodeError::TooManyIds(n));
    }
    (0..n).map(|_| r.u64()).collect()
}

/// A snapshot header: who sends it, what it covers, how much data follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub meta: SnapshotMeta,
    pub total: u64,
}

/// Largest snapshot a peer may announce.
pub const MAX_SNAPSHOT: u64 = 64 << 30;

pub fn decode_snapshot_header(body: &[u8]) -> Result<SnapshotHeader, DecodeError> {
    let mut r = Reader::new(body);
    let from = r.u64()?;
    let to = r.u64()?;
    let term = r.u64()?;
    let index = r.u64()?;
    let sterm = r.u64()?;
    let ids = |r: &mut Reader<'_>| -> Result<Vec<NodeId>, DecodeError> {
        let n = r.u32()? as usize;
        if n > 4096 {
            return Err(DecodeError::TooManyMembers(n));
        }
        (0..n).map(|_| r.u64()).collect()
    };
    let voters = ids(&mut r)?;
    let learners = ids(&mut r)?;
    let total = r.u64()?;
    r.finish()?;
    if total > MAX_SNAPSHOT {
        return Err(DecodeError::SnapshotTooLarge(total));
    }
    let meta = SnapshotMeta {
        index,
        term: sterm,
        conf_state: ConfState { voters, learners },
    };
    Ok(SnapshotHeader {
        from,
        to,
        term,
        meta,
        total,
    })
}

pub fn decode_snapshot_end(body: &[u8]) -> Result<u32, DecodeError> {
    let mut r = Reader::new(body);
    let crc = r.u32()?;
    r.finish()?;
    Ok(crc)
}

/// The message that hands a received snapshot to the core: its data is the
/// [`Inbox`](crate::snapshots::Inbox) ticket of the file holding it.
pub fn snapshot_message(h: &SnapshotHeader, ticket: Vec<u8>) -> Message {
    let data = ticket;
    let snapshot = Snapshot {
        meta: h.meta.clone(),
        data,
    };
    Message {
        from: h.from,
        to: h.to,
        term: h.term,
        body: MessageBody::Snapshot { snapshot },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(buf: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut r = buf;
        while !r.is_empty() {
            let len = LittleEndian::read_u32(&r[..4]) as usize;
            out.push((r[4], &r[5..4 + len]));
            r = &r[4 + len..];
        }
        out
    }

    fn sample_messages() -> Vec<Message> {
        let e = Entry {
            index: 5,
            term: 2,
            kind: EntryKind::Normal,
            data: b"xyz".to_vec(),
        };
        let bodies = vec![
            MessageBody::Append {
                prev_index: 4,
                prev_term: 1,
                entries: vec![e.clone()],
                commit: 3,
            },
            MessageBody::AppendResponse {
                index: 5,
                reject: true,
                reject_hint: 2,
                hint_term: 1,
                recovery: 9,
            },
            MessageBody::Heartbeat {
                commit: 3,
                context: b"c".to_vec(),
            },
            MessageBody::HeartbeatResponse {
                context: vec![],
                recovery: 0,
            },
            MessageBody::RequestVote {
                pre: true,
                last_index: 9,
                last_term: 2,
                transfer: false,
                campaign: 5,
            },
            MessageBody::RequestVoteResponse {
                pre: false,
                reject: true,
                campaign: 5,
            },
            MessageBody::TimeoutNow,
            MessageBody::Propose { entries: vec![e] },
            MessageBody::ReadIndex {
                context: b"r".to_vec(),
            },
            MessageBody::ReadIndexResponse {
                index: 7,
                context: b"r".to_vec(),
            },
            MessageBody::TransferLeader { target: 3 },
            MessageBody::TermQuery,
            MessageBody::TermReport { term: 7 },
            MessageBody::Recovering {
                id: 11,
                last_index: 4,
                last_term: 2,
            },
            MessageBody::RecoveryAck { id: 11, target: 9 },
            MessageBody::RecoveryDone { id: 11 },
            MessageBody::MemberQuery { ids: vec![4, 99] },
            MessageBody::MemberReport { members: vec![4] },
        ];
        bodies
            .into_iter()
            .map(|body| Message {
                from: 1,
                to: 2,
                term: 4,
                body,
            })
            .collect()
    }

    #[test]
    fn every_message_round_trips() {
        for m in sample_messages() {
            let mut buf = Vec::new();
            encode_message(&mut buf, &m);
            let f = frames(&buf);
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].0, KIND_MESSAGE);
            assert_eq!(decode_message(f[0].1), Ok(m));
        }
    }

    #[test]
    fn snapshot_header_and_end_round_trip() {
        let meta = SnapshotMeta {
            index: 9,
            term: 3,
            conf_state: ConfState::with_voters(vec![1, 2, 3]),
        };
        let mut buf = Vec::new();
        encode_snapshot_header(&mut buf, 1, 2, 3, &meta, 12345);
        encode_snapshot_end(&mut buf, 0xdead_beef);
        let f = frames(&buf);
        assert_eq!(f[0].0, KIND_SNAPSHOT_HEADER);
        let h = decode_snapshot_header(f[0].1).unwrap();
        assert_eq!(
            h,
            SnapshotHeader {
                from: 1,
                to: 2,
                term: 3,
                meta,
                total: 12345
            }
        );
        assert_eq!(decode_snapshot_end(f[1].1), Ok(0xdead_beef));
        for cut in 0..f[0].1.len() {
            assert!(decode_snapshot_header(&f[0].1[..cut]).is_err());
        }
        assert_eq!(chunk_frame_header(10), [11, 0, 0, 0, KIND_SNAPSHOT_CHUNK]);
    }

    #[test]
    fn truncated_or_garbled_frames_are_errors_not_panics() {
        for m in sample_messages() {
            let mut buf = Vec::new();
            encode_message(&mut buf, &m);
            let body = &buf[5..];
            for cut in 0..body.len() {
                assert!(decode_message(&body[..cut]).is_err());
            }
            let mut rng = crate::raft::Rng::new(7);
            for _ in 0..200 {
                let mut g = body.to_vec();
                let i = rng.below(g.len() as u64) as usize;
                g[i] ^= 1 << rng.below(8);
                let _ = decode_message(&g); // must not panic
            }
        }
        assert!(decode_handshake(b"garbage", 1).is_err());
    }

    /// Gives one byte per read, as a slow network might.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn read_frame_cuts_a_stream_into_its_frames_however_the_bytes_arrive() {
        let mut stream = Vec::new();
        encode_handshake(&mut stream, 3, 1, 77);
        for m in sample_messages() {
            encode_message(&mut stream, &m);
        }
        encode_snapshot_end(&mut stream, 5);
        let all: Vec<u8> = (0..=u8::MAX).collect();
        let expected = frames(&stream);
        let mut buf = Vec::new();
        let mut r = &stream[..];
        let mut slow = Trickle(&stream);
        for (kind, body) in expected {
            let f = read_frame(&mut r, &mut buf, &all).unwrap();
            assert_eq!(f, Some(Frame { kind, body }));
            let f = read_frame(&mut slow, &mut buf, &all).unwrap();
            assert_eq!(f, Some(Frame { kind, body }));
        }
        assert_eq!(read_frame(&mut r, &mut buf, &all).unwrap(), None);
        assert_eq!(read_frame(&mut slow, &mut buf, &all).unwrap(), None);
    }

    #[test]
    fn read_frame_refuses_a_kind_or_a_length_before_reading_the_body() {
        let mut buf = Vec::new();
        let mut hello = Vec::new();
        encode_handshake(&mut hello, 3, 1, 77);
        let err = read_frame(&mut &hello[..], &mut buf, &[KIND_MESSAGE]).unwrap_err();
        assert!(matches!(err, FrameError::Kind(KIND_HANDSHAKE)), "{err}");
        let err = read_frame(&mut &[0u8, 0, 0, 0, 9][..], &mut buf, &[9]).unwrap_err();
        assert!(matches!(err, FrameError::Kind(9)), "a kind without a limit");
        for len in [0, MAX_HANDSHAKE + 1] {
            let mut s = (len as u32).to_le_bytes().to_vec();
            s.push(KIND_HANDSHAKE);
            match read_frame(&mut &s[..], &mut buf, &[KIND_HANDSHAKE]) {
                Err(FrameError::Length { kind, len: l, max }) => {
                    assert_eq!((kind, l, max), (KIND_HANDSHAKE, len, MAX_HANDSHAKE))
                }
                other => panic!("a handshake of {len} bytes: {other:?}"),
            }
        }
        // 16 MiB announced, 3 bytes sent: an error, and no 16 MiB buffer.
        let mut s = (MAX_FRAME as u32).to_le_bytes().to_vec();
        s.extend_from_slice(&[KIND_MESSAGE, 1, 2, 3]);
        let err = read_frame(&mut &s[..], &mut buf, &[KIND_MESSAGE]).unwrap_err();
        assert!(matches!(&err, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
        assert!(buf.capacity() < 1 << 10, "{}", buf.capacity());
        // A stream that ends inside the header is cut, not cleanly ended.
        let err = read_frame(&mut &[5u8, 0][..], &mut buf, &[KIND_MESSAGE]).unwrap_err();
        assert!(matches!(&err, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn verdicts_round_trip() {
        for v in [
            Verdict::Welcome,
            Verdict::WrongCluster,
            Verdict::Removed,
            Verdict::Stranger,
            Verdict::WrongNode,
            Verdict::Busy,
            Verdict::WrongCertificate,
        ] {
            let mut buf = Vec::new();
            encode_verdict(&mut buf, v, 42);
            assert_eq!(buf[4], KIND_VERDICT);
            assert!(buf.len() - 4 <= max_frame(KIND_VERDICT).unwrap());
            assert_eq!(decode_verdict(&buf[5..]), Ok((v, 42)));
        }
        assert!(decode_verdict(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn handshake_checks_magic_version_and_target() {
        let mut buf = Vec::new();
        encode_handshake(&mut buf, 3, 1, 77);
        assert!(buf.len() - 4 <= MAX_HANDSHAKE);
        assert_eq!(
            decode_handshake(&buf[5..], 1),
            Ok(Handshake {
                from: 3,
                cluster_id: 77
            })
        );
        assert!(decode_handshake(&buf[5..], 2).is_err());
        let mut wrong = buf[5..].to_vec();
        wrong[4] = 9; // version
        assert!(decode_handshake(&wrong, 1).is_err());
    }

    #[test]
    fn probes_and_their_replies_round_trip() {
        let mut buf = Vec::new();
        encode_probe(&mut buf, 3, 1);
        assert_eq!(buf[4], KIND_PROBE);
        assert!(buf.len() - 4 <= max_frame(KIND_PROBE).unwrap());
        assert_eq!(decode_probe(&buf[5..], 1), Ok(3));
        assert!(decode_probe(&buf[5..], 2).is_err());
        assert!(decode_probe(&buf[5..buf.len() - 1], 1).is_err());
        for reply in [
            ProbeReply::Refused(Verdict::Removed),
            ProbeReply::Deciding,
            ProbeReply::Running {
                cluster_id: 9,
                term: u64::MAX,
                last_index: 12,
                lists_prober: true,
            },
        ] {
            let mut buf = Vec::new();
            encode_probe_reply(&mut buf, reply);
            assert_eq!(buf[4], KIND_PROBE_REPLY);
            assert_eq!(buf.len() - 4, max_frame(KIND_PROBE_REPLY).unwrap());
            assert_eq!(decode_probe_reply(&buf[5..]), Ok(reply));
        }
        let mut bad = Vec::new();
        encode_probe_reply(&mut bad, ProbeReply::Deciding);
        bad[5] = 3; // no such state
        assert!(decode_probe_reply(&bad[5..]).is_err());
        bad[5] = 2;
        let last = bad.len() - 1;
        bad[last] = 2; // not a boolean
        assert!(decode_probe_reply(&bad[5..]).is_err());
    }

    /// Found by the `peer_frame` fuzz target (corpus file
    /// `regress-probe-reply-unused-field`): a `Refused` reply with a
    /// non-zero term decoded, and re-encoded to other bytes. A field the
    /// reply's state does not carry must be 0.
    #[test]
    fn probe_reply_fields_its_state_does_not_carry_must_be_zero() {
        let refused = ProbeReply::Refused(Verdict::Stranger);
        let running = ProbeReply::Running {
            cluster_id: 1,
            term: 2,
            last_index: 3,
            lists_prober: true,
        };
        for reply in [refused, ProbeReply::Deciding] {
            let mut good = Vec::new();
            encode_probe_reply(&mut good, reply);
            // cluster_id, term, last_index, lists_prober
            for at in [7, 15, 23, 31] {
                let mut bad = good.clone();
                bad[at] = 1;
                assert_eq!(
                    decode_probe_reply(&bad[5..]),
                    Err(DecodeError::UnusedField),
                    "{reply:?} with byte {at} set"
                );
            }
        }
        let mut deciding = Vec::new();
        encode_probe_reply(&mut deciding, ProbeReply::Deciding);
        deciding[6] = 3; // a verdict
        assert_eq!(
            decode_probe_reply(&deciding[5..]),
            Err(DecodeError::UnusedField)
        );
        let mut buf = Vec::new();
        encode_probe_reply(&mut buf, running);
        buf[6] = 3;
        assert_eq!(decode_probe_reply(&buf[5..]), Err(DecodeError::UnusedField));
        buf[6] = 0;
        assert_eq!(decode_probe_reply(&buf[5..]), Ok(running));
    }
}
