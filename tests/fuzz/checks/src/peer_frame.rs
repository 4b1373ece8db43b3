//! The peer frame decoder (`raftnode::transport::codec`).
//!
//! The input is a byte stream as a peer would send it. It is cut into
//! frames the way the transport's reader cuts them (`len u32 | kind u8 |
//! body`, `len` counting kind and body, 0 and anything over `MAX_FRAME`
//! ending the stream), and each frame goes to the decoder of its kind.
//! Unlike the reader, every kind is decoded wherever it appears (the reader
//! would close the connection at the first out-of-place frame), so one
//! input reaches all decoders.
//!
//! Promises checked:
//! - no decoder panics, allocates beyond [`ALLOC_LIMIT`], or hangs;
//! - whatever decodes re-encodes to exactly the bytes it came from, frame
//!   header included. Every field is fixed-width or length-prefixed,
//!   booleans are 0 or 1 and trailing bytes are refused, so a frame has one
//!   encoding; re-encoding proves the decoder read every field the encoder
//!   writes, and the second decode of [`codec::decode_message`] proves the
//!   round trip gives back the same message.

use raftnode::raft::{ConfState, Entry, EntryKind, Message, MessageBody, SnapshotMeta};
use raftnode::transport::codec::{self, SnapshotHeader};

/// The node the fuzzed connection dialled.
pub const ME: u64 = 2;
/// The node the seeds speak as.
pub const PEER: u64 = 1;
/// Inputs are at most a few hundred KiB (libFuzzer's `-max_len`); no frame
/// of them justifies a single allocation over this.
pub const ALLOC_LIMIT: usize = 4 << 20;

/// Splits `data` into `(kind, body, whole frame)` as the reader does; stops
/// where the reader would close the connection.
pub fn frames(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
        if len == 0 || len > codec::MAX_FRAME || data.len() - 4 < len {
            return None;
        }
        let (frame, rest) = data.split_at(4 + len);
        data = rest;
        Some((frame[4], &frame[5..], frame))
    })
}

pub fn check(data: &[u8]) {
    for (kind, body, frame) in frames(data) {
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
                    codec::encode_snapshot_header(
                        &mut again, h.from, h.to, h.term, &h.meta, h.total,
                    );
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
            _ => {}
        }
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
    out
}
