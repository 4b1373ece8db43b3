//! Admission to the raft port, decided without IO: what one connection
//! has to send before it is judged, what it is answered, and which
//! connections make room when the seats are taken.
//!
//! A dialer that is slow or silent must not keep anyone else out, so
//! nothing here waits for a dialer, and nothing grows with what dialers
//! claim:
//! - [`Admission`] takes the bytes of one connection in whatever pieces
//!   they arrive, never more than the opening frame still needs (what
//!   follows stays in the stream for the reader thread), and decides once
//!   that frame is complete: a handshake is judged (`listener::judge`) and
//!   answered with a verdict, a probe (`discovery.rs`) with a probe reply.
//!   The opening frame is at most [`codec::MAX_HANDSHAKE`] bytes, so one
//!   connection costs at most that before it is judged.
//! - [`Table`] keeps the seats: at most [`MAX_UNAUTHENTICATED`] connections
//!   not yet admitted, each with [`DEADLINE`] from its accept to its
//!   verdict (TLS handshake, opening frame and verdict together); at most
//!   [`MAX_PER_PEER`] admitted connections per id, and [`MAX_NEWCOMERS`]
//!   admitted together for ids that are not known members (let in for
//!   presenting the cluster ID), each for [`NEWCOMER_TTL`]. When a kind of
//!   seat is full the **oldest** holder makes room, never the newcomer
//!   turned away: an attacker who holds seats by being slow loses them to
//!   the next dialer, and a member that restarts gets in at once.
//!
//! The listener's admission thread (`listener.rs`) drives both for every
//! connection from one `mio` loop, and starts a reader thread only for a
//! connection that is welcomed. The `peer_admission` fuzz target feeds
//! [`Admission`] and [`Table`] arbitrary input (`tests/fuzz/checks`).
//!
//! What this module does not do: read sockets, run TLS, or close anything;
//! it says which connection to close and the caller does it.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::codec::{self, DecodeError, Frame, ProbeReply, Verdict};
use super::listener::{judge, known};
use crate::raft::NodeId;
use crate::shared::Membership;

/// Inbound peer connections open at once, admitted or not, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Inbound connections not yet admitted, at most; the oldest makes room.
pub const MAX_UNAUTHENTICATED: usize = 16;
/// Admitted connections of one id at most (a member needs one); the
/// oldest of them makes room.
pub const MAX_PER_PEER: usize = 4;
/// Admitted connections, all together, of ids this node does not know as
/// members but let in because they present the cluster ID (members added
/// after this node's configuration); the oldest makes room.
pub const MAX_NEWCOMERS: usize = 8;
/// From accept to verdict: the TLS handshake, the opening frame and the
/// verdict must all be done within this, however the bytes trickle in.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// How long a newcomer's connection is kept while its id is still not a
/// known member. It then redials and takes a seat again, unless it has
/// become a member meanwhile (then its connection stays).
pub const NEWCOMER_TTL: Duration = Duration::from_secs(10);

/// What this node knows when it judges a dialer.
pub struct Gate<'a> {
    /// This node's id: the opening frame must name it.
    pub me: NodeId,
    pub membership: &'a Membership,
    /// The ids of `--peers`.
    pub listed: &'a BTreeSet<NodeId>,
    /// The ids a member vouched for (the core listens to them).
    pub vouched: &'a BTreeSet<NodeId>,
    /// The term and last index this node has persisted; `None` while it is
    /// deciding whether to bootstrap. Only probes are told.
    pub persisted: Option<(u64, u64)>,
}

/// Why a connection is turned away before it is admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The opening frame is neither a handshake nor a probe.
    Kind(u8),
    /// An opening frame of length 0 or over its limit.
    Length {
        kind: u8,
        len: usize,
        max: usize,
    },
    Decode(DecodeError),
    /// The dialer was judged and turned away.
    Judged {
        from: NodeId,
        verdict: Verdict,
    },
    /// The dialer's certificate does not name the id it claims.
    Certificate {
        from: NodeId,
        why: String,
    },
    /// Not a refusal: a probe was answered, and its connection ends.
    Probed(NodeId),
}

impl Refused {
    /// A fixed name per cause, to rate-limit log lines per cause (never
    /// per dialer: that would keep state per stranger).
    pub fn key(&self) -> &'static str {
        match self {
            Refused::Kind(_) | Refused::Length { .. } => "peer-refused-frame",
            Refused::Decode(_) => "peer-refused-decode",
            Refused::Judged { .. } => "peer-refused-judged",
            Refused::Certificate { .. } => "peer-refused-certificate",
            Refused::Probed(_) => "peer-probed",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Kind(k) => write!(f, "bad data: opening frame of kind {k}"),
            Refused::Length { kind, len, max } => write!(
                f,
                "bad data: opening frame of kind {kind} is {len} bytes, the limit is {max}"
            ),
            Refused::Decode(e) => write!(f, "bad data: {e}"),
            Refused::Judged { from, verdict } => write!(f, "node {from}: {verdict}"),
            Refused::Certificate { from, why } => write!(f, "claims node {from}, but {why}"),
            Refused::Probed(id) => write!(f, "answered the probe of node {id}"),
        }
    }
}

/// What becomes of a connection once its opening frame is in (or cannot
/// be).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let in; `reply` is the welcome verdict, the only one that carries
    /// this node's cluster ID. `known`: the id is a member or in `--peers`
    /// (otherwise it takes a newcomer's seat).
    Welcome {
        from: NodeId,
        known: bool,
        reply: Vec<u8>,
    },
    /// Turned away: `reply` (a verdict or a probe reply, when the dialer
    /// can be told) is written, then the connection is closed.
    Refuse {
        reply: Option<Vec<u8>>,
        why: Refused,
    },
}

/// One connection's way to its [`Decision`]: the opening frame, taken in
/// pieces of any size.
#[derive(Debug, Default)]
pub struct Admission {
    head: [u8; 5],
    /// Bytes of `head` received.
    got: usize,
    /// The body's length, once the header was found good.
    body_len: usize,
    body: Vec<u8>,
    decided: bool,
}

impl Admission {
    pub fn new() -> Admission {
        Admission::default()
    }

    /// How many bytes the next read may take: what the opening frame
    /// still needs, 0 once decided. Never more than
    /// [`codec::MAX_HANDSHAKE`].
    pub fn wants(&self) -> usize {
        if self.decided {
            0
        } else if self.got < self.head.len() {
            self.head.len() - self.got
        } else {
            self.body_len - self.body.len()
        }
    }

    /// Takes up to [`Admission::wants`] bytes of `data`; returns how many
    /// it took, and the decision once the opening frame is complete or
    /// found bad. After the decision it takes nothing.
    ///
    /// `certificate` checks that the dialer's TLS certificate names the id
    /// it claims (always `Ok` without TLS).
    pub fn push(
        &mut self,
        data: &[u8],
        gate: &Gate,
        certificate: &dyn Fn(NodeId) -> Result<(), String>,
    ) -> (usize, Option<Decision>) {
        if self.decided {
            return (0, None);
        }
        let mut used = 0;
        if self.got < self.head.len() {
            let n = (self.head.len() - self.got).min(data.len());
            self.head[self.got..self.got + n].copy_from_slice(&data[..n]);
            self.got += n;
            used = n;
            if self.got < self.head.len() {
                return (used, None);
            }
            match opening_header(self.head) {
                Ok(len) => {
                    self.body_len = len;
                    self.body = Vec::with_capacity(len);
                }
                Err(why) => {
                    self.decided = true;
                    return (used, Some(Decision::Refuse { reply: None, why }));
                }
            }
        }
        let n = (self.body_len - self.body.len()).min(data.len() - used);
        self.body.extend_from_slice(&data[used..used + n]);
        used += n;
        if self.body.len() < self.body_len {
            return (used, None);
        }
        self.decided = true;
        let frame = Frame {
            kind: self.head[4],
            body: &self.body,
        };
        (used, Some(decide(frame, gate, certificate)))
    }
}

/// Checks the header of an opening frame; returns its body's length.
fn opening_header(head: [u8; 5]) -> Result<usize, Refused> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = head[4];
    let max = match kind {
        codec::KIND_HANDSHAKE | codec::KIND_PROBE => codec::max_frame(kind),
        _ => None,
    };
    let Some(max) = max else {
        return Err(Refused::Kind(kind));
    };
    if len == 0 || len > max {
        return Err(Refused::Length { kind, len, max });
    }
    Ok(len - 1)
}

/// Judges a complete opening frame.
fn decide(
    frame: Frame,
    gate: &Gate,
    certificate: &dyn Fn(NodeId) -> Result<(), String>,
) -> Decision {
    if frame.kind == codec::KIND_PROBE {
        return answer_probe(frame.body, gate, certificate);
    }
    let hello = match codec::decode_handshake(frame.body, gate.me) {
        Ok(h) => h,
        Err(e @ DecodeError::WrongTarget { .. }) => {
            return refuse(Verdict::WrongNode, Refused::Decode(e));
        }
        Err(e) => {
            return Decision::Refuse {
                reply: None,
                why: Refused::Decode(e),
            }
        }
    };
    let from = hello.from;
    if let Err(why) = certificate(from) {
        return refuse(
            Verdict::WrongCertificate,
            Refused::Certificate { from, why },
        );
    }
    match judge(gate.membership, gate.listed, from, hello.cluster_id) {
        Verdict::Welcome => {
            // Only a welcomed dialer learns our cluster ID.
            let mut reply = Vec::new();
            codec::encode_verdict(&mut reply, Verdict::Welcome, gate.membership.cluster_id);
            Decision::Welcome {
                from,
                known: known(gate.membership, gate.listed, gate.vouched, from),
                reply,
            }
        }
        verdict => refuse(verdict, Refused::Judged { from, verdict }),
    }
}

/// A refusal told with a verdict that carries no cluster ID.
fn refuse(verdict: Verdict, why: Refused) -> Decision {
    let mut reply = Vec::new();
    codec::encode_verdict(&mut reply, verdict, 0);
    Decision::Refuse {
        reply: Some(reply),
        why,
    }
}

/// Answers a node with an empty data dir that asks whether a cluster
/// already runs (`discovery.rs`). Members and `--peers` ids learn this
/// node's term, last index and whether it lists them; anyone else only
/// that it is turned away.
fn answer_probe(
    body: &[u8],
    gate: &Gate,
    certificate: &dyn Fn(NodeId) -> Result<(), String>,
) -> Decision {
    let from = match codec::decode_probe(body, gate.me) {
        Ok(from) => from,
        Err(e) => {
            return Decision::Refuse {
                reply: None,
                why: Refused::Decode(e),
            }
        }
    };
    let (reply, why) = match certificate(from) {
        Err(why) => (
            ProbeReply::Refused(Verdict::WrongCertificate),
            Refused::Certificate { from, why },
        ),
        Ok(()) => {
            let m = gate.membership;
            let reply = match judge(m, gate.listed, from, 0) {
                Verdict::Welcome => match gate.persisted {
                    None => ProbeReply::Deciding,
                    Some((term, last_index)) => ProbeReply::Running {
                        cluster_id: m.cluster_id,
                        term,
                        last_index,
                        lists_prober: m.members.contains(&from),
                    },
                },
                refused => ProbeReply::Refused(refused),
            };
            (reply, Refused::Probed(from))
        }
    };
    let mut out = Vec::new();
    codec::encode_probe_reply(&mut out, reply);
    Decision::Refuse {
        reply: Some(out),
        why,
    }
}

/// Names one inbound connection for the life of the listener.
pub type ConnId = u64;

/// What [`Table::arrive`] makes of a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Seated as `conn`; `evicted`, the oldest connection not yet
    /// admitted, made room and is to be closed.
    Seated {
        conn: ConnId,
        evicted: Option<ConnId>,
    },
    /// [`MAX_CONNECTIONS`] are admitted: refused.
    Full,
}

/// An admitted connection's seat.
#[derive(Debug)]
struct Seat<H> {
    conn: ConnId,
    id: NodeId,
    /// Until when a newcomer's seat lasts; `None` for a known id.
    newcomer_until: Option<Instant>,
    /// What the caller needs to close the connection.
    handle: H,
}

/// The seats of the raft port (see the module docs). `H` is what closes an
/// admitted connection (a clone of its socket); evicting a seat hands it
/// back to the caller.
///
/// Invariants, after every call: at most [`MAX_UNAUTHENTICATED`] pending,
/// at most [`MAX_CONNECTIONS`] pending and admitted together, at most
/// [`MAX_PER_PEER`] seats per id, at most [`MAX_NEWCOMERS`] newcomers.
#[derive(Debug)]
pub struct Table<H> {
    next: ConnId,
    /// Connections not yet admitted and their deadlines, oldest first
    /// (deadlines are in the same order: each is its accept + [`DEADLINE`]).
    pending: VecDeque<(ConnId, Instant)>,
    /// Admitted connections, oldest first.
    admitted: VecDeque<Seat<H>>,
}

impl<H> Default for Table<H> {
    fn default() -> Table<H> {
        Table {
            next: 1,
            pending: VecDeque::new(),
            admitted: VecDeque::new(),
        }
    }
}

/// How many seats are taken, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub pending: usize,
    pub admitted: usize,
    pub newcomers: usize,
}

impl<H> Table<H> {
    /// Seats a connection accepted at `now`, making room if needed.
    pub fn arrive(&mut self, now: Instant) -> Arrival {
        let mut evicted = None;
        if self.pending.len() >= MAX_UNAUTHENTICATED
            || self.pending.len() + self.admitted.len() >= MAX_CONNECTIONS
        {
            match self.pending.pop_front() {
                Some((oldest, _)) => evicted = Some(oldest),
                None => return Arrival::Full,
            }
        }
        let conn = self.next;
        self.next += 1;
        self.pending.push_back((conn, now + DEADLINE));
        Arrival::Seated { conn, evicted }
    }

    /// Admits pending connection `conn` of node `id`, making room among
    /// the seats of `id` and, for an id that is not `known`, among the
    /// newcomers. Returns the handles of the evicted, to be closed; hands
    /// `handle` back if `conn` is not pending.
    pub fn admit(
        &mut self,
        conn: ConnId,
        id: NodeId,
        known: bool,
        now: Instant,
        handle: H,
    ) -> Result<Vec<H>, H> {
        let Some(at) = self.pending.iter().position(|&(c, _)| c == conn) else {
            return Err(handle);
        };
        self.pending.remove(at);
        let mut evicted = Vec::new();
        while self.admitted.iter().filter(|s| s.id == id).count() >= MAX_PER_PEER {
            if let Some(i) = self.admitted.iter().position(|s| s.id == id) {
                evicted.extend(self.admitted.remove(i).map(|s| s.handle));
            }
        }
        if !known {
            while self.newcomers() >= MAX_NEWCOMERS {
                if let Some(i) = self
                    .admitted
                    .iter()
                    .position(|s| s.newcomer_until.is_some())
                {
                    evicted.extend(self.admitted.remove(i).map(|s| s.handle));
                }
            }
        }
        self.admitted.push_back(Seat {
            conn,
            id,
            newcomer_until: (!known).then(|| now + NEWCOMER_TTL),
            handle,
        });
        Ok(evicted)
    }

    /// Frees the seat of `conn` (pending or admitted): it was refused, or
    /// its reader ended. Returns its handle if it was admitted.
    pub fn leave(&mut self, conn: ConnId) -> Option<H> {
        if let Some(i) = self.pending.iter().position(|&(c, _)| c == conn) {
            self.pending.remove(i);
            return None;
        }
        let i = self.admitted.iter().position(|s| s.conn == conn)?;
        self.admitted.remove(i).map(|s| s.handle)
    }

    /// Removes and returns the pending connections whose deadline is past.
    pub fn overdue(&mut self, now: Instant) -> Vec<ConnId> {
        let mut late = Vec::new();
        while let Some(&(conn, deadline)) = self.pending.front() {
            if deadline > now {
                break;
            }
            self.pending.pop_front();
            late.push(conn);
        }
        late
    }

    /// Ends the seats that must end by `now`: a newcomer's whose time is
    /// up, unless its id has become `known` (it then keeps its seat as a
    /// member), and any seat of an id now `removed`. Returns their handles.
    pub fn sweep(
        &mut self,
        now: Instant,
        known: impl Fn(NodeId) -> bool,
        removed: impl Fn(NodeId) -> bool,
    ) -> Vec<H> {
        let mut ended = Vec::new();
        let mut kept = VecDeque::with_capacity(self.admitted.len());
        for mut s in self.admitted.drain(..) {
            if removed(s.id) {
                ended.push(s.handle);
                continue;
            }
            match s.newcomer_until {
                Some(until) if until <= now && known(s.id) => s.newcomer_until = None,
                Some(until) if until <= now => {
                    ended.push(s.handle);
                    continue;
                }
                _ => {}
            }
            kept.push_back(s);
        }
        self.admitted = kept;
        ended
    }

    /// The next instant at which [`Table::overdue`] or [`Table::sweep`]
    /// has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.front().map(|&(_, d)| d);
        let newcomer = self.admitted.iter().filter_map(|s| s.newcomer_until).min();
        pending.into_iter().chain(newcomer).min()
    }

    pub fn taken(&self) -> Taken {
        Taken {
            pending: self.pending.len(),
            admitted: self.admitted.len(),
            newcomers: self.newcomers(),
        }
    }

    /// Admitted seats of node `id`.
    pub fn seats_of(&self, id: NodeId) -> usize {
        self.admitted.iter().filter(|s| s.id == id).count()
    }

    /// Whether `conn` holds a seat, pending or admitted.
    pub fn holds(&self, conn: ConnId) -> bool {
        self.pending.iter().any(|&(c, _)| c == conn) || self.admitted.iter().any(|s| s.conn == conn)
    }

    fn newcomers(&self) -> usize {
        self.admitted
            .iter()
            .filter(|s| s.newcomer_until.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> Membership {
        Membership {
            cluster_id: 7,
            members: [1, 2, 3].into(),
            removed: [4].into(),
        }
    }

    fn seat(t: &mut Table<ConnId>, now: Instant) -> ConnId {
        match t.arrive(now) {
            Arrival::Seated {
                conn,
                evicted: None,
            } => conn,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_door_evicts_the_oldest_pending_connection_not_the_newcomer() {
        let t0 = Instant::now();
        let mut t = Table::<ConnId>::default();
        let first: Vec<ConnId> = (0..MAX_UNAUTHENTICATED)
            .map(|i| seat(&mut t, t0 + Duration::from_millis(i as u64)))
            .collect();
        for (i, &oldest) in first.iter().enumerate() {
            match t.arrive(t0 + Duration::from_secs(1)) {
                Arrival::Seated { conn, evicted } => {
                    assert_eq!(evicted, Some(oldest), "arrival {i} evicts the oldest");
                    assert!(t.holds(conn) && !t.holds(oldest));
                }
                Arrival::Full => panic!("refused"),
            }
            assert_eq!(t.taken().pending, MAX_UNAUTHENTICATED);
        }
    }

    #[test]
    fn pending_connections_expire_at_their_deadline_in_accept_order() {
        let t0 = Instant::now();
        let mut t = Table::<ConnId>::default();
        let a = seat(&mut t, t0);
        let b = seat(&mut t, t0 + Duration::from_millis(500));
        assert_eq!(t.next_deadline(), Some(t0 + DEADLINE));
        assert!(t
            .overdue(t0 + DEADLINE - Duration::from_millis(1))
            .is_empty());
        assert_eq!(t.overdue(t0 + DEADLINE), vec![a]);
        assert_eq!(t.overdue(t0 + DEADLINE * 2), vec![b]);
        assert_eq!(t.taken(), Taken::default());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_member_takes_a_seat_past_a_full_door_and_keeps_at_most_four() {
        let t0 = Instant::now();
        let mut t = Table::<ConnId>::default();
        let mut conns = Vec::new();
        for i in 0..MAX_PER_PEER + 2 {
            let c = seat(&mut t, t0);
            let want = match i.checked_sub(MAX_PER_PEER) {
                None => vec![],
                Some(oldest) => vec![conns[oldest]],
            };
            assert_eq!(t.admit(c, 2, true, t0, c), Ok(want), "admission {i}");
            conns.push(c);
        }
        assert_eq!(t.seats_of(2), MAX_PER_PEER);
        assert!(
            !t.holds(conns[0]) && !t.holds(conns[1]),
            "the oldest two made room"
        );
        assert!(conns[2..].iter().all(|&c| t.holds(c)));
        assert_eq!(t.taken().newcomers, 0);
    }

    #[test]
    fn newcomers_make_room_oldest_first_and_expire_unless_they_became_members() {
        let t0 = Instant::now();
        let mut t = Table::<ConnId>::default();
        let mut by_id = Vec::new();
        for id in 100..100 + MAX_NEWCOMERS as u64 {
            let c = seat(&mut t, t0);
            let at = t0 + Duration::from_millis(id - 100);
            assert_eq!(t.admit(c, id, false, at, c), Ok(vec![]));
            by_id.push((id, c));
        }
        // One more: the oldest newcomer (id 100) makes room.
        let c = seat(&mut t, t0);
        let late = t0 + Duration::from_secs(1);
        assert_eq!(t.admit(c, 200, false, late, c), Ok(vec![by_id[0].1]));
        assert_eq!(t.taken().newcomers, MAX_NEWCOMERS);
        // A known member is no newcomer: it takes no newcomer's seat.
        let m = seat(&mut t, t0);
        assert_eq!(t.admit(m, 1, true, late, m), Ok(vec![]));
        assert_eq!(
            t.next_deadline(),
            Some(t0 + Duration::from_millis(1) + NEWCOMER_TTL)
        );
        // Time is up for ids 101..=107; 103 has become a member meanwhile.
        let ended = t.sweep(
            t0 + NEWCOMER_TTL + Duration::from_millis(500),
            |id| id == 103,
            |_| false,
        );
        let want: Vec<ConnId> = by_id[1..]
            .iter()
            .filter(|(id, _)| *id != 103)
            .map(|&(_, c)| c)
            .collect();
        assert_eq!(ended, want);
        assert!(t.holds(by_id[3].1) && t.holds(c) && t.holds(m));
        assert_eq!(t.taken().newcomers, 1, "only 200 is still a newcomer");
        assert_eq!(t.sweep(late + NEWCOMER_TTL, |_| false, |_| false), vec![c]);
        assert_eq!(
            t.sweep(late + NEWCOMER_TTL * 9, |_| false, |_| false),
            Vec::<ConnId>::new()
        );
    }

    #[test]
    fn a_removed_member_loses_its_seats_at_the_next_sweep() {
        let t0 = Instant::now();
        let mut t = Table::<ConnId>::default();
        let a = seat(&mut t, t0);
        let b = seat(&mut t, t0);
        t.admit(a, 2, true, t0, a).unwrap();
        t.admit(b, 3, true, t0, b).unwrap();
        assert_eq!(t.sweep(t0, |_| true, |id| id == 3), vec![b]);
        assert_eq!(t.leave(a), Some(a));
        assert_eq!(t.leave(a), None, "a seat is given back once");
    }

    #[test]
    fn admitted_connections_count_against_the_total_and_a_full_house_refuses() {
        let t0 = Instant::now();
        let mut t = Table::<ConnId>::default();
        for id in 0..(MAX_CONNECTIONS / MAX_PER_PEER) as u64 {
            for _ in 0..MAX_PER_PEER {
                let c = seat(&mut t, t0);
                t.admit(c, id + 1, true, t0, c).unwrap();
            }
        }
        assert_eq!(t.taken().admitted, MAX_CONNECTIONS);
        assert_eq!(t.arrive(t0), Arrival::Full);
        assert_eq!(t.admit(999, 1, true, t0, 999), Err(999), "not pending");
    }

    fn gate<'a>(m: &'a Membership, listed: &'a BTreeSet<NodeId>) -> Gate<'a> {
        static NONE: BTreeSet<NodeId> = BTreeSet::new();
        Gate {
            me: 2,
            membership: m,
            listed,
            vouched: &NONE,
            persisted: Some((5, 50)),
        }
    }

    fn any_cert(_: NodeId) -> Result<(), String> {
        Ok(())
    }

    /// Feeds `bytes` `step` bytes at a time.
    fn feed(bytes: &[u8], step: usize, g: &Gate) -> (usize, Option<Decision>) {
        let mut a = Admission::new();
        let mut used = 0;
        while used < bytes.len() {
            let end = (used + step).min(bytes.len());
            let (n, d) = a.push(&bytes[used..end], g, &any_cert);
            assert!(n <= end - used);
            if d.is_some() {
                assert_eq!(a.wants(), 0);
                return (used + n, d);
            }
            assert_eq!(n, end - used, "all of a piece is taken before the decision");
            assert!(a.wants() > 0 && a.wants() <= codec::MAX_HANDSHAKE);
            used += n;
        }
        (used, None)
    }

    #[test]
    fn a_handshake_is_judged_once_complete_and_not_a_byte_later() {
        let (m, listed) = (membership(), [1, 2, 3, 9].into());
        let g = gate(&m, &listed);
        let mut hello = Vec::new();
        codec::encode_handshake(&mut hello, 1, 2, 7);
        let trailing = [&hello[..], &[0xAA; 10]].concat();
        for step in [1, 3, 5, 64] {
            assert_eq!(
                feed(&hello[..hello.len() - 1], step, &g),
                (hello.len() - 1, None)
            );
            let (used, d) = feed(&trailing, step, &g);
            assert_eq!(
                used,
                hello.len(),
                "bytes after the frame stay in the stream"
            );
            let Some(Decision::Welcome {
                from: 1,
                known: true,
                reply,
            }) = d
            else {
                panic!("{d:?}");
            };
            assert_eq!(
                codec::decode_verdict(&reply[5..]),
                Ok((Verdict::Welcome, 7))
            );
        }
    }

    #[test]
    fn refusals_carry_no_cluster_id_and_newcomers_are_not_known() {
        let (m, listed) = (membership(), [1, 2, 3, 9].into());
        let g = gate(&m, &listed);
        let verdict_of = |from, to, cluster| {
            let mut hello = Vec::new();
            codec::encode_handshake(&mut hello, from, to, cluster);
            match feed(&hello, 64, &g).1 {
                Some(Decision::Welcome { known, reply, .. }) => {
                    (codec::decode_verdict(&reply[5..]).unwrap(), Some(known))
                }
                Some(Decision::Refuse { reply: Some(r), .. }) => {
                    (codec::decode_verdict(&r[5..]).unwrap(), None)
                }
                d => panic!("{d:?}"),
            }
        };
        assert_eq!(verdict_of(99, 2, 7), ((Verdict::Welcome, 7), Some(false)));
        assert_eq!(verdict_of(9, 2, 0), ((Verdict::Welcome, 7), Some(true)));
        assert_eq!(verdict_of(99, 2, 0), ((Verdict::Stranger, 0), None));
        assert_eq!(verdict_of(4, 2, 7), ((Verdict::Removed, 0), None));
        assert_eq!(verdict_of(1, 3, 7), ((Verdict::WrongNode, 0), None));
        let mut hello = Vec::new();
        codec::encode_handshake(&mut hello, 3, 2, 7);
        let (_, d) = Admission::new().push(&hello, &g, &|id| Err(format!("not {id}")));
        assert!(
            matches!(
                &d,
                Some(Decision::Refuse {
                    why: Refused::Certificate { from: 3, .. },
                    ..
                })
            ),
            "{d:?}"
        );
    }

    #[test]
    fn a_bad_header_is_refused_after_five_bytes_without_a_reply() {
        let (m, listed) = (membership(), BTreeSet::new());
        let g = gate(&m, &listed);
        let msg = [5, 0, 0, 0, codec::KIND_MESSAGE, 1, 2, 3];
        assert_eq!(
            feed(&msg, 1, &g),
            (
                5,
                Some(Decision::Refuse {
                    reply: None,
                    why: Refused::Kind(codec::KIND_MESSAGE)
                })
            )
        );
        let big = [65, 0, 0, 0, codec::KIND_HANDSHAKE];
        assert_eq!(
            feed(&big, 2, &g).1,
            Some(Decision::Refuse {
                reply: None,
                why: Refused::Length {
                    kind: 1,
                    len: 65,
                    max: codec::MAX_HANDSHAKE
                }
            })
        );
        let empty = [1, 0, 0, 0, codec::KIND_PROBE];
        assert_eq!(
            feed(&empty, 5, &g).1,
            Some(Decision::Refuse {
                reply: None,
                why: Refused::Decode(DecodeError::Truncated)
            })
        );
    }

    #[test]
    fn probes_tell_the_state_only_to_known_ids() {
        let (m, listed) = (membership(), [1, 2, 3, 9].into());
        let g = gate(&m, &listed);
        let reply_to = |from| {
            let mut probe = Vec::new();
            codec::encode_probe(&mut probe, from, 2);
            match feed(&probe, 4, &g).1 {
                Some(Decision::Refuse {
                    reply: Some(r),
                    why: Refused::Probed(f),
                }) if f == from => codec::decode_probe_reply(&r[5..]).unwrap(),
                d => panic!("{d:?}"),
            }
        };
        assert_eq!(
            reply_to(1),
            ProbeReply::Running {
                cluster_id: 7,
                term: 5,
                last_index: 50,
                lists_prober: true
            }
        );
        assert_eq!(
            reply_to(9),
            ProbeReply::Running {
                cluster_id: 7,
                term: 5,
                last_index: 50,
                lists_prober: false
            }
        );
        assert_eq!(reply_to(99), ProbeReply::Refused(Verdict::Stranger));
    }
}
