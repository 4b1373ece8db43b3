//! The raft port's admission (`raftnode::transport::admission`): the state
//! machine that takes a connection's opening frame and decides, and the
//! table of seats.
//!
//! ```text
//! input := plan u8 | stream
//! ```
//!
//! The stream is what a dialer sends before it is admitted: a handshake
//! frame, a probe frame, garbage, a frame cut short. It goes to
//! [`Admission::push`] four ways: whole; in pieces of the sizes `plan`
//! picks ([`Pieces`]); in those pieces capped at [`Admission::wants`], as
//! the admission thread reads a socket; and a byte at a time, as a dialer
//! that trickles. The node judging it is node [`ME`] of a cluster with ID
//! [`CLUSTER`], members 1 to 3, node 4 removed, `--peers` ids 1 to 3 and 9;
//! the dialer's certificate names every id but [`BAD_CERT`].
//!
//! The whole input is also read as operations on a [`Table`], one per
//! byte ([`table_ops`]): a connection arrives, a pending one is admitted
//! as some id, one leaves, time passes (deadlines and newcomer seats run
//! out). A model kept here says which connection each operation must
//! evict.
//!
//! Promises checked:
//! - nothing panics or allocates beyond [`ALLOC_LIMIT`] (the opening frame
//!   is at most 64 bytes, the seats are bounded);
//! - the outcome, bytes taken and decision, is the same however the
//!   stream is cut;
//! - a decision with a reply only after a complete opening frame, and not a
//!   byte of the stream after it taken; without a complete frame, no
//!   decision and every byte taken; a bad header refused after its 5
//!   bytes, without a reply;
//! - a verdict carries the cluster ID only when it welcomes, a welcome is
//!   for the id of the handshake, a removed node or another cluster's ID
//!   is never welcomed, and a probe is told the node's state only by a
//!   member or `--peers` id;
//! - the table keeps its bounds after every operation (16 pending, 64 in
//!   all, 4 per id, 8 newcomers) and evicts exactly the oldest of the
//!   seats that are full.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use raftnode::raft::NodeId;
use raftnode::shared::Membership;
use raftnode::transport::admission::{
    Admission, Arrival, ConnId, Decision, Gate, Refused, Table, DEADLINE, MAX_CONNECTIONS,
    MAX_NEWCOMERS, MAX_PER_PEER, MAX_UNAUTHENTICATED, NEWCOMER_TTL,
};
use raftnode::transport::codec::{self, DecodeError, ProbeReply, Verdict};

/// The node the fuzzed connections dial.
pub const ME: NodeId = 2;
pub const CLUSTER: u64 = 7;
/// The one id the dialer's certificate does not name.
pub const BAD_CERT: NodeId = 13;
const MEMBERS: [NodeId; 3] = [1, 2, 3];
const REMOVED: NodeId = 4;
const LISTED: [NodeId; 4] = [1, 2, 3, 9];
const PERSISTED: (u64, u64) = (5, 50);
/// A 64-byte frame, a reply of 32, the table's at most 64 seats of 40
/// bytes (5 KiB once a `VecDeque` of them doubles): nothing justifies more.
pub const ALLOC_LIMIT: usize = 16 << 10;

fn membership() -> Membership {
    Membership {
        cluster_id: CLUSTER,
        members: MEMBERS.into(),
        removed: [REMOVED].into(),
    }
}

fn certificate(id: NodeId) -> Result<(), String> {
    if id == BAD_CERT {
        Err(format!("the certificate does not name node {id}"))
    } else {
        Ok(())
    }
}

/// Piece sizes from 1 to 16, picked by `plan`.
struct Pieces {
    plan: u8,
    n: usize,
}

impl Pieces {
    fn next(&mut self) -> usize {
        self.n += 1;
        1 + (usize::from(self.plan).wrapping_mul(self.n * 7 + 3) >> 2) % 16
    }
}

/// Pushes `stream` in pieces of `size()` bytes (each capped at what the
/// machine wants if `capped`); returns the bytes taken and the decision.
fn feed(
    stream: &[u8],
    gate: &Gate,
    capped: bool,
    mut size: impl FnMut() -> usize,
) -> (usize, Option<Decision>) {
    let mut a = Admission::new();
    let mut used = 0;
    while used < stream.len() {
        let wants = a.wants();
        assert!(
            (1..=codec::MAX_HANDSHAKE).contains(&wants),
            "wants {wants} bytes before a decision"
        );
        let mut n = size().min(stream.len() - used);
        if capped {
            n = n.min(wants);
        }
        let (took, decision) = a.push(&stream[used..used + n], gate, &certificate);
        assert!(took <= n, "took {took} of {n} bytes");
        if decision.is_some() {
            assert_eq!(a.wants(), 0, "wants more after its decision");
            let rest = &stream[used + took..];
            assert_eq!(
                a.push(rest, gate, &certificate),
                (0, None),
                "a second decision"
            );
            return (used + took, decision);
        }
        assert_eq!(took, n, "left bytes of a piece before deciding");
        used += took;
    }
    (used, None)
}

/// What the stream holds at its start, by the format alone.
enum Opening<'a> {
    /// Not a whole header, or a good header and not its whole body.
    Incomplete,
    /// A header that no opening frame has.
    BadHeader(Refused),
    /// A complete opening frame of `len` bytes with its length prefix.
    Frame {
        kind: u8,
        body: &'a [u8],
        len: usize,
    },
}

fn opening(stream: &[u8]) -> Opening<'_> {
    let Some((head, rest)) = stream.split_first_chunk::<5>() else {
        return Opening::Incomplete;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = head[4];
    if kind != codec::KIND_HANDSHAKE && kind != codec::KIND_PROBE {
        return Opening::BadHeader(Refused::Kind(kind));
    }
    // The documented limit: a handshake is at most 64 bytes, a probe too.
    let max = 64;
    if len == 0 || len > max {
        return Opening::BadHeader(Refused::Length { kind, len, max });
    }
    match rest.get(..len - 1) {
        Some(body) => Opening::Frame {
            kind,
            body,
            len: 4 + len,
        },
        None => Opening::Incomplete,
    }
}

fn verdict_of(reply: &[u8]) -> (Verdict, u64) {
    assert_eq!(reply.len(), 14, "a verdict frame is 14 bytes: {reply:?}");
    assert_eq!(reply[4], codec::KIND_VERDICT);
    codec::decode_verdict(&reply[5..]).expect("a verdict that decodes")
}

/// Checks a decision against the frame it was made on.
fn judged_right(kind: u8, body: &[u8], decision: &Decision) {
    let known = |id| LISTED.contains(&id) || MEMBERS.contains(&id);
    if kind == codec::KIND_PROBE {
        let from = match codec::decode_probe(body, ME) {
            Ok(from) => from,
            Err(e) => {
                let want = Decision::Refuse {
                    reply: None,
                    why: Refused::Decode(e),
                };
                assert_eq!(decision, &want);
                return;
            }
        };
        let Decision::Refuse {
            reply: Some(reply),
            why,
        } = decision
        else {
            panic!("a probe from {from} got {decision:?}");
        };
        assert_eq!(reply[4], codec::KIND_PROBE_REPLY);
        let answer = codec::decode_probe_reply(&reply[5..]).expect("a probe reply");
        if from == BAD_CERT {
            assert!(matches!(why, Refused::Certificate { from: f, .. } if *f == from));
            assert_eq!(answer, ProbeReply::Refused(Verdict::WrongCertificate));
        } else if known(from) {
            assert_eq!(why, &Refused::Probed(from));
            let running = ProbeReply::Running {
                cluster_id: CLUSTER,
                term: PERSISTED.0,
                last_index: PERSISTED.1,
                lists_prober: MEMBERS.contains(&from),
            };
            assert_eq!(answer, running, "probe from known node {from}");
        } else {
            assert_eq!(why, &Refused::Probed(from));
            assert!(
                matches!(answer, ProbeReply::Refused(v) if v != Verdict::Welcome),
                "a probe from {from} was told {answer:?}"
            );
        }
        return;
    }
    let hello = match codec::decode_handshake(body, ME) {
        Ok(h) => h,
        Err(e @ DecodeError::WrongTarget { .. }) => {
            let Decision::Refuse {
                reply: Some(reply),
                why,
            } = decision
            else {
                panic!("a handshake for another node got {decision:?}");
            };
            assert_eq!(verdict_of(reply), (Verdict::WrongNode, 0));
            assert_eq!(why, &Refused::Decode(e));
            return;
        }
        Err(e) => {
            let want = Decision::Refuse {
                reply: None,
                why: Refused::Decode(e),
            };
            assert_eq!(decision, &want);
            return;
        }
    };
    let from = hello.from;
    match decision {
        Decision::Welcome {
            from: f,
            known: k,
            reply,
        } => {
            assert_eq!(*f, from, "welcomed another id than the handshake's");
            assert_eq!(*k, known(from), "node {from} known");
            assert_eq!(verdict_of(reply), (Verdict::Welcome, CLUSTER));
            assert_ne!(from, BAD_CERT, "welcomed a certificate of another node");
            assert_ne!(from, REMOVED, "welcomed a removed node");
            assert!(
                hello.cluster_id == 0 || hello.cluster_id == CLUSTER,
                "welcomed cluster ID {:#x}",
                hello.cluster_id
            );
        }
        Decision::Refuse {
            reply: Some(reply),
            why,
        } => {
            let (verdict, cluster) = verdict_of(reply);
            assert_eq!(cluster, 0, "a refusal told the cluster ID");
            assert_ne!(verdict, Verdict::Welcome);
            if from == BAD_CERT {
                assert_eq!(verdict, Verdict::WrongCertificate);
                return;
            }
            assert_eq!(why, &Refused::Judged { from, verdict });
            let member = MEMBERS.contains(&from) && hello.cluster_id == CLUSTER;
            assert!(
                !member,
                "member {from} with the cluster ID refused: {verdict:?}"
            );
        }
        Decision::Refuse { reply: None, .. } => panic!("a handshake refused without a verdict"),
    }
}

pub fn check(data: &[u8]) {
    table_ops(data);
    let Some((&plan, stream)) = data.split_first() else {
        return;
    };
    let m = membership();
    let listed: BTreeSet<NodeId> = LISTED.into();
    let vouched = BTreeSet::new();
    let gate = Gate {
        me: ME,
        membership: &m,
        listed: &listed,
        vouched: &vouched,
        persisted: Some(PERSISTED),
    };
    let whole = feed(stream, &gate, false, || usize::MAX);
    let mut p = Pieces { plan, n: 0 };
    let pieces = feed(stream, &gate, false, || p.next());
    let mut p = Pieces { plan, n: 0 };
    let read = feed(stream, &gate, true, || p.next());
    let trickled = feed(stream, &gate, false, || 1);
    assert_eq!(pieces, whole, "cut in pieces, the stream decides otherwise");
    assert_eq!(
        read, whole,
        "read as a socket is, the stream decides otherwise"
    );
    assert_eq!(
        trickled, whole,
        "a byte at a time, the stream decides otherwise"
    );
    let (used, decision) = whole;
    match opening(stream) {
        Opening::Incomplete => {
            assert_eq!(
                decision, None,
                "a decision before the opening frame was complete"
            );
            assert_eq!(used, stream.len());
        }
        Opening::BadHeader(why) => {
            assert_eq!(used, 5);
            assert_eq!(decision, Some(Decision::Refuse { reply: None, why }));
        }
        Opening::Frame { kind, body, len } => {
            assert_eq!(used, len, "took other bytes than the opening frame's");
            let decision = decision.expect("no decision on a complete opening frame");
            judged_right(kind, body, &decision);
        }
    }
}

/// An admitted seat, as the model sees it.
#[derive(Clone, Copy, Debug)]
struct Seat {
    conn: ConnId,
    id: NodeId,
    newcomer_until: Option<Instant>,
}

/// Reads each byte of `data` as one operation on a [`Table`] and checks
/// the table's evictions against a model of the rules.
///
/// ```text
/// op := b % 4 == 0  a connection arrives
///       b % 4 == 1  pending connection (b >> 2) % pending is admitted
///                   as id (b >> 2) % 24 + 1 (ids 1 to 16 known, so that
///                   their 64 seats can fill the house)
///       b % 4 == 2  connection (b >> 2) % held leaves
///       b % 4 == 3  (b >> 2) * 100 ms pass; deadlines and seats run out
///                   (id 20 has become a member by then, id 24 is removed)
/// ```
fn table_ops(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut t = Table::<ConnId>::default();
    // The model: pending in accept order with deadlines, seats in
    // admission order.
    let mut pending: Vec<(ConnId, Instant)> = Vec::new();
    let mut seats: Vec<Seat> = Vec::new();
    let known = |id: NodeId| id <= 16;
    for &b in data {
        match b % 4 {
            0 => match t.arrive(now) {
                Arrival::Full => {
                    assert!(pending.is_empty() && seats.len() >= MAX_CONNECTIONS);
                }
                Arrival::Seated { conn, evicted } => {
                    let full = pending.len() >= MAX_UNAUTHENTICATED
                        || pending.len() + seats.len() >= MAX_CONNECTIONS;
                    let oldest = full.then(|| pending.remove(0).0);
                    assert_eq!(evicted, oldest, "the oldest pending makes room, or none");
                    pending.push((conn, now + DEADLINE));
                }
            },
            1 if !pending.is_empty() => {
                let (conn, _) = pending.remove(usize::from(b >> 2) % pending.len());
                let id = NodeId::from(b >> 2) % 24 + 1;
                let mut want = Vec::new();
                while seats.iter().filter(|s| s.id == id).count() >= MAX_PER_PEER {
                    let i = seats.iter().position(|s| s.id == id).unwrap();
                    want.push(seats.remove(i).conn);
                }
                if !known(id) {
                    while seats.iter().filter(|s| s.newcomer_until.is_some()).count()
                        >= MAX_NEWCOMERS
                    {
                        let i = seats
                            .iter()
                            .position(|s| s.newcomer_until.is_some())
                            .unwrap();
                        want.push(seats.remove(i).conn);
                    }
                }
                let evicted = t.admit(conn, id, known(id), now, conn);
                assert_eq!(evicted, Ok(want), "admitting node {id}");
                assert!(t.seats_of(id) <= MAX_PER_PEER, "node {id} holds more seats");
                seats.push(Seat {
                    conn,
                    id,
                    newcomer_until: (!known(id)).then(|| now + NEWCOMER_TTL),
                });
            }
            2 => {
                let held = pending.len() + seats.len();
                if held == 0 {
                    continue;
                }
                let i = usize::from(b >> 2) % held;
                let (conn, admitted) = match i.checked_sub(pending.len()) {
                    None => (pending.remove(i).0, false),
                    Some(j) => (seats.remove(j).conn, true),
                };
                assert_eq!(t.leave(conn), admitted.then_some(conn));
                assert!(!t.holds(conn));
            }
            3 => {
                now += Duration::from_millis(u64::from(b >> 2) * 100);
                let late: Vec<ConnId> = pending
                    .iter()
                    .filter(|&&(_, d)| d <= now)
                    .map(|&(c, _)| c)
                    .collect();
                pending.retain(|&(_, d)| d > now);
                assert_eq!(t.overdue(now), late, "pending past their deadline");
                let became = |id: NodeId| known(id) || id == 20;
                let removed = |id: NodeId| id == 24;
                let mut ended = Vec::new();
                seats.retain_mut(|s| {
                    let end = removed(s.id)
                        || matches!(s.newcomer_until, Some(u) if u <= now && !became(s.id));
                    if end {
                        ended.push(s.conn);
                    } else if matches!(s.newcomer_until, Some(u) if u <= now) {
                        s.newcomer_until = None;
                    }
                    !end
                });
                assert_eq!(t.sweep(now, became, removed), ended, "seats ended");
            }
            _ => {}
        }
        let taken = t.taken();
        assert_eq!(
            (taken.pending, taken.admitted),
            (pending.len(), seats.len())
        );
        assert!(taken.pending <= MAX_UNAUTHENTICATED);
        assert!(taken.pending + taken.admitted <= MAX_CONNECTIONS);
        assert!(taken.newcomers <= MAX_NEWCOMERS);
        let next = pending
            .first()
            .map(|&(_, d)| d)
            .into_iter()
            .chain(seats.iter().filter_map(|s| s.newcomer_until))
            .min();
        assert_eq!(t.next_deadline(), next);
    }
}

/// The opening frames of every case: welcomed, refused for each reason,
/// probes, garbage, a frame cut short or followed by more.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let hello = |from, to, cluster| {
        let mut b = Vec::new();
        codec::encode_handshake(&mut b, from, to, cluster);
        b
    };
    let probe = |from, to| {
        let mut b = Vec::new();
        codec::encode_probe(&mut b, from, to);
        b
    };
    let mut message = Vec::new();
    let query = raftnode::raft::Message {
        from: 1,
        to: ME,
        term: 3,
        body: raftnode::raft::MessageBody::TermQuery,
    };
    codec::encode_message(&mut message, &query);
    let member = hello(1, ME, CLUSTER);
    let streams: Vec<(&str, Vec<u8>)> = vec![
        ("member", member.clone()),
        ("member_no_cluster_id", hello(1, ME, 0)),
        ("listed", hello(9, ME, 0)),
        ("newcomer", hello(99, ME, CLUSTER)),
        ("stranger", hello(99, ME, 0)),
        ("other_cluster", hello(1, ME, CLUSTER + 1)),
        ("removed", hello(REMOVED, ME, CLUSTER)),
        ("wrong_node", hello(1, 3, CLUSTER)),
        ("wrong_certificate", hello(BAD_CERT, ME, CLUSTER)),
        ("zero_id", hello(0, ME, CLUSTER)),
        ("probe_member", probe(1, ME)),
        ("probe_listed", probe(9, ME)),
        ("probe_stranger", probe(99, ME)),
        ("probe_wrong_certificate", probe(BAD_CERT, ME)),
        ("probe_wrong_node", probe(1, 3)),
        ("member_then_message", [&member[..], &message[..]].concat()),
        ("member_cut_short", member[..member.len() - 1].to_vec()),
        ("header_only", member[..5].to_vec()),
        ("message_first", message),
        ("length_zero", vec![0, 0, 0, 0, codec::KIND_HANDSHAKE]),
        ("length_65", vec![65, 0, 0, 0, codec::KIND_HANDSHAKE]),
        (
            "length_huge",
            vec![0xff, 0xff, 0xff, 0xff, codec::KIND_PROBE],
        ),
        ("tls_client_hello", vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    streams
        .into_iter()
        .enumerate()
        .map(|(i, (name, s))| {
            // Plans of several piece patterns across the seeds.
            let plan = (i as u8).wrapping_mul(37);
            (name.to_string(), [&[plan][..], &s[..]].concat())
        })
        .collect()
}
