//! The peer frame reader and decoders (`raftnode::transport::codec`).
//!
//! The input is a byte stream as a peer would send it. The transport's own
//! reader, [`codec::read_frame`], cuts it into frames until the stream ends
//! or the reader refuses it, and each frame goes to the decoder of its
//! kind. The fuzzed reader allows every kind, each up to its limit; the
//! transport allows fewer at a time (a handshake first, then messages or
//! snapshot frames; a verdict on the dialer's side only) and closes the
//! connection at an out-of-place frame, so that one input here reaches
//! every decoder.
//!
//! Promises checked:
//! - neither the reader nor a decoder panics, allocates beyond
//!   [`ALLOC_LIMIT`], or hangs; a frame announcing 16 MiB and bringing
//!   nothing costs nothing;
//! - the reader cuts exactly as the format says: [`reference_cut`] reads
//!   `len u32 | kind u8 | body` with the limits of the codec's module doc,
//!   written out again here, and must agree on every frame, on the clean
//!   end, and on why a stream is refused;
//! - the same frames come out when the stream arrives a few bytes per read;
//! - whatever decodes re-encodes to exactly the bytes it came from, frame
//!   header included. Every field is fixed-width or length-prefixed,
//!   booleans are 0 or 1 and trailing bytes are refused, so a frame has one
//!   encoding; re-encoding proves the decoder read every field the encoder
//!   writes, and the second decode of [`codec::decode_message`] proves the
//!   round trip gives back the same message.

use std::io::{self, Read};

use raftnode::raft::{ConfState, Entry, EntryKind, Message, MessageBody, SnapshotMeta};
use raftnode::transport::codec::{self, Frame, FrameError, ProbeReply, SnapshotHeader, Verdict};

/// The node the fuzzed connection dialled.
pub const ME: u64 = 2;
/// The node the seeds speak as.
pub const PEER: u64 = 1;
/// Inputs are at most a few hundred KiB (libFuzzer's `-max_len`); no frame
/// of them justifies a single allocation over this.
pub const ALLOC_LIMIT: usize = 4 << 20;

/// Every kind byte: the fuzzed reader refuses only what the format refuses.
const ANY_KIND: [u8; 256] = {
    let mut kinds = [0u8; 256];
    let mut k = 0;
    while k < 256 {
        kinds[k] = k as u8;
        k += 1;
    }
    kinds
};

/// The largest frame of each kind, as the codec's module doc states them.
fn documented_limit(kind: u8) -> Option<usize> {
    match kind {
        1 => Some(64),                // handshake
        2 => Some(16 << 20),          // message
        3 => Some(64 << 10),          // snapshot header
        4 => Some((1 << 20) + 1),     // snapshot chunk: 1 MiB of data
        5 => Some(1 + 4),             // snapshot end: a CRC
        6 => Some(1 + 1 + 8),         // verdict: status and cluster id
        7 => Some(64),                // probe: as a handshake
        8 => Some(1 + 2 + 3 * 8 + 1), // probe reply: state, verdict, three u64s, a flag
        _ => None,
    }
}

/// Where the next frame of a stream ends, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut<'a> {
    /// The stream ends before a frame starts.
    End,
    /// A frame `len` bytes long with its 4-byte length.
    Frame(Frame<'a>, usize),
    /// The stream ends inside a frame.
    Short,
    BadKind(u8),
    BadLength {
        kind: u8,
        len: usize,
        max: usize,
    },
}

/// Reads the next frame of `data` by the format alone.
pub fn reference_cut(data: &[u8]) -> Cut<'_> {
    if data.is_empty() {
        return Cut::End;
    }
    let Some((head, rest)) = data.split_first_chunk::<5>() else {
        return Cut::Short;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = head[4];
    let Some(max) = documented_limit(kind) else {
        return Cut::BadKind(kind);
    };
    if len == 0 || len > max {
        return Cut::BadLength { kind, len, max };
    }
    match rest.get(..len - 1) {
        Some(body) => Cut::Frame(Frame { kind, body }, 4 + len),
        None => Cut::Short,
    }
}

/// What [`codec::read_frame`] said, as a [`Cut`]; `used` is how many bytes
/// it took for a frame.
fn as_cut<'a>(read: &Result<Option<Frame<'a>>, FrameError>, used: usize) -> Cut<'a> {
    match read {
        Ok(None) => Cut::End,
        Ok(Some(f)) => Cut::Frame(*f, used),
        Err(FrameError::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            Cut::Short
        }
        Err(FrameError::Kind(k)) => Cut::BadKind(*k),
        Err(FrameError::Length { kind, len, max }) => Cut::BadLength {
            kind: *kind,
            len: *len,
            max: *max,
        },
    }
}

/// A stream that arrives 1 to 7 bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    reads: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        let n = buf.len().min(self.data.len()).min(1 + self.reads % 7);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

pub fn check(data: &[u8]) {
    let mut rest = data;
    let mut buf = Vec::new();
    let mut slow = Trickle { data, reads: 0 };
    let mut slow_buf = Vec::new();
    loop {
        let before = rest;
        let expected = reference_cut(before);
        let read = codec::read_frame(&mut rest, &mut buf, &ANY_KIND);
        let cut = as_cut(&read, before.len() - rest.len());
        assert_eq!(cut, expected, "read_frame and the format disagree");
        let slow_read = codec::read_frame(&mut slow, &mut slow_buf, &ANY_KIND);
        assert_eq!(
            as_cut(&slow_read, before.len() - slow.data.len()),
            expected,
            "read a few bytes at a time, the stream cuts differently"
        );
        let Cut::Frame(Frame { kind, body }, used) = cut else {
            break;
        };
        decodes_to_itself(kind, body, &before[..used]);
    }
}

/// Decodes a frame by its kind; what decodes must re-encode to `frame`.
fn decodes_to_itself(kind: u8, body: &[u8], frame: &[u8]) {
    match kind {
        codec::KIND_HANDSHAKE => {
            if let Ok(h) = codec::decode_handshake(body, ME) {
                let mut again = Vec::new();
                codec::encode_handshake(&mut again, h.from, ME, h.cluster_id);
                assert_eq!(again, frame, "handshake {h:?} re-encodes differently");
            }
        }
        codec::KIND_MESSAGE => {
            if let Ok(m) = codec::decode_message(body) {
                let mut again = Vec::new();
                codec::encode_message(&mut again, &m);
                assert_eq!(again, frame, "{m:?} re-encodes differently");
                assert_eq!(codec::decode_message(&again[5..]), Ok(m));
            }
        }
        codec::KIND_SNAPSHOT_HEADER => {
            if let Ok(h) = codec::decode_snapshot_header(body) {
                let mut again = Vec::new();
                codec::encode_snapshot_header(&mut again, h.from, h.to, h.term, &h.meta, h.total);
                assert_eq!(again, frame, "{h:?} re-encodes differently");
                assert!(h.total <= codec::MAX_SNAPSHOT);
            }
        }
        codec::KIND_SNAPSHOT_CHUNK => {
            // The body is raw snapshot data; only the header is encoded.
            assert_eq!(codec::chunk_frame_header(body.len()), frame[..5]);
        }
        codec::KIND_SNAPSHOT_END => {
            if let Ok(crc) = codec::decode_snapshot_end(body) {
                let mut again = Vec::new();
                codec::encode_snapshot_end(&mut again, crc);
                assert_eq!(again, frame);
            }
        }
        codec::KIND_VERDICT => {
            if let Ok((verdict, cluster_id)) = codec::decode_verdict(body) {
                let mut again = Vec::new();
                codec::encode_verdict(&mut again, verdict, cluster_id);
                assert_eq!(again, frame, "{verdict:?} re-encodes differently");
            }
        }
        codec::KIND_PROBE => {
            if let Ok(from) = codec::decode_probe(body, ME) {
                let mut again = Vec::new();
                codec::encode_probe(&mut again, from, ME);
                assert_eq!(again, frame, "probe from {from} re-encodes differently");
            }
        }
        codec::KIND_PROBE_REPLY => {
            if let Ok(reply) = codec::decode_probe_reply(body) {
                let mut again = Vec::new();
                codec::encode_probe_reply(&mut again, reply);
                assert_eq!(again, frame, "{reply:?} re-encodes differently");
            }
        }
        _ => unreachable!("read_frame gave a frame of kind {kind}"),
    }
}

fn entry(index: u64, term: u64, kind: EntryKind, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        kind,
        data: data.to_vec(),
    }
}

/// One message of every kind, with fields that exercise each decoder path.
fn messages() -> Vec<(&'static str, MessageBody)> {
    let e = entry(5, 2, EntryKind::Normal, b"\x01put-command");
    let cc = entry(6, 2, EntryKind::ConfChange, b"\x02conf");
    vec![
        (
            "append",
            MessageBody::Append {
                prev_index: 4,
                prev_term: 1,
                entries: vec![e.clone(), cc.clone()],
                commit: 3,
            },
        ),
        (
            "append_empty",
            MessageBody::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![],
                commit: 0,
            },
        ),
        (
            "append_response_reject",
            MessageBody::AppendResponse {
                index: 5,
                reject: true,
                reject_hint: 2,
                hint_term: 1,
                recovery: 0,
            },
        ),
        (
            "append_response_ok",
            MessageBody::AppendResponse {
                index: 6,
                reject: false,
                reject_hint: 0,
                hint_term: 0,
                recovery: 0,
            },
        ),
        (
            "heartbeat",
            MessageBody::Heartbeat {
                commit: 3,
                context: b"ctx".to_vec(),
            },
        ),
        // The issue-12 wedge: one heartbeat at the last term.
        (
            "heartbeat_max_term",
            MessageBody::Heartbeat {
                commit: u64::MAX,
                context: vec![],
            },
        ),
        (
            "heartbeat_response",
            MessageBody::HeartbeatResponse {
                context: b"ctx".to_vec(),
                recovery: 7,
            },
        ),
        (
            "vote",
            MessageBody::RequestVote {
                pre: false,
                last_index: 9,
                last_term: 2,
                transfer: true,
                campaign: 0,
            },
        ),
        (
            "prevote",
            MessageBody::RequestVote {
                pre: true,
                last_index: 9,
                last_term: 2,
                transfer: false,
                campaign: 0,
            },
        ),
        (
            "vote_response",
            MessageBody::RequestVoteResponse {
                pre: true,
                reject: false,
                campaign: 0,
            },
        ),
        ("timeout_now", MessageBody::TimeoutNow),
        (
            "propose",
            MessageBody::Propose {
                entries: vec![e, cc],
            },
        ),
        (
            "read_index",
            MessageBody::ReadIndex {
                context: b"r1".to_vec(),
            },
        ),
        (
            "read_index_response",
            MessageBody::ReadIndexResponse {
                index: 7,
                context: b"r1".to_vec(),
            },
        ),
        ("transfer_leader", MessageBody::TransferLeader { target: 3 }),
        ("term_query", MessageBody::TermQuery),
        ("term_report", MessageBody::TermReport { term: 9 }),
        (
            "recovering",
            MessageBody::Recovering {
                id: 11,
                last_index: 4,
                last_term: 2,
            },
        ),
        (
            "recovery_ack",
            MessageBody::RecoveryAck { id: 11, target: 9 },
        ),
        ("recovery_done", MessageBody::RecoveryDone { id: 11 }),
    ]
}

/// A handshake, then one frame of each message kind per seed; a whole
/// snapshot stream; and the frames the issue-12 probe sent.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut hello = Vec::new();
    codec::encode_handshake(&mut hello, PEER, ME, 0x5eed);
    let mut out = vec![("handshake".to_string(), hello.clone())];
    for (name, body) in messages() {
        let term = if name == "heartbeat_max_term" {
            u64::MAX
        } else {
            4
        };
        let m = Message {
            from: PEER,
            to: ME,
            term,
            body,
        };
        let mut s = hello.clone();
        codec::encode_message(&mut s, &m);
        out.push((format!("message_{name}"), s));
    }

    let meta = SnapshotMeta {
        index: 9,
        term: 3,
        conf_state: ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
        },
    };
    let data = b"snapshot data in two chunks";
    let mut s = hello.clone();
    codec::encode_snapshot_header(&mut s, PEER, ME, 4, &meta, data.len() as u64);
    for part in data.chunks(14) {
        s.extend_from_slice(&codec::chunk_frame_header(part.len()));
        s.extend_from_slice(part);
    }
    codec::encode_snapshot_end(&mut s, crc32fast::hash(data));
    out.push(("snapshot_stream".to_string(), s));

    let mut s = hello.clone();
    let huge = SnapshotHeader {
        from: PEER,
        to: ME,
        term: 4,
        meta,
        total: codec::MAX_SNAPSHOT,
    };
    codec::encode_snapshot_header(
        &mut s, huge.from, huge.to, huge.term, &huge.meta, huge.total,
    );
    out.push(("snapshot_header_at_limit".to_string(), s));

    // A length prefix of 16 MiB with nothing behind it.
    let mut s = hello.clone();
    s.extend_from_slice(&(codec::MAX_FRAME as u32).to_le_bytes());
    s.push(codec::KIND_MESSAGE);
    out.push(("frame_length_at_limit".to_string(), s));

    // A handshake padded to its limit, and one byte over it.
    for (name, len) in [
        ("handshake_at_limit", codec::MAX_HANDSHAKE),
        ("handshake_over_limit", codec::MAX_HANDSHAKE + 1),
    ] {
        let mut s = (len as u32).to_le_bytes().to_vec();
        s.push(codec::KIND_HANDSHAKE);
        s.extend_from_slice(&hello[5..]);
        s.resize(4 + len, 0);
        out.push((name.to_string(), s));
    }

    // What a dialer reads: one verdict, each status.
    for (name, verdict) in [
        ("welcome", Verdict::Welcome),
        ("wrong_cluster", Verdict::WrongCluster),
        ("removed", Verdict::Removed),
        ("stranger", Verdict::Stranger),
        ("wrong_node", Verdict::WrongNode),
        ("busy", Verdict::Busy),
        ("wrong_certificate", Verdict::WrongCertificate),
    ] {
        let mut s = Vec::new();
        codec::encode_verdict(&mut s, verdict, 0x5eed);
        out.push((format!("verdict_{name}"), s));
    }

    // A discovery probe, and each answer to one.
    let mut s = Vec::new();
    codec::encode_probe(&mut s, PEER, ME);
    out.push(("probe".to_string(), s));
    for (name, reply) in [
        ("refused", ProbeReply::Refused(Verdict::Stranger)),
        ("deciding", ProbeReply::Deciding),
        (
            "running",
            ProbeReply::Running {
                cluster_id: 0x5eed,
                term: 7,
                last_index: 1234,
                lists_prober: true,
            },
        ),
    ] {
        let mut s = Vec::new();
        codec::encode_probe_reply(&mut s, reply);
        out.push((format!("probe_reply_{name}"), s));
    }
    out
}
