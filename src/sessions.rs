//! Client sessions: the state that makes a retried write apply at most once
//! (Raft thesis §6.3, "Implementing linearizable semantics").
//!
//! A session is registered through Raft; its id is the log index of the
//! entry that registered it, so every replica gives it the same id, and a
//! random 128-bit secret that the registering entry carries (the node that
//! proposes it draws the secret from the OS, so every replica holds the
//! same one). Clients get both as one token, `<index>-<32 hex digits>`
//! ([`SessionId`]); resuming a session needs the whole token, and the
//! secret is compared in constant time. An index is easy to guess, the
//! secret is not, so only the holder of a session can resume it, see its
//! kept replies or use its sequence numbers. A wrong secret gets the same
//! `ERR SESSION_EXPIRED` as an unknown session, and does not mark the
//! session active. A session without a secret (registered by an entry of
//! the older format, or loaded from a version 3 snapshot) cannot be
//! resumed at all. A write
//! tagged `#<seq>` on a session is applied through [`Sessions::check`] and
//! [`Sessions::record`]: the first time a sequence number is applied, its
//! reply is kept; a retry of it (on any node, after a leader change, a
//! restart or a snapshot, since all of this lives in the replicated state)
//! gets the kept reply and changes nothing.
//!
//! **The reply window.** Per session, the replies of the last
//! [`REPLY_WINDOW`] applied sequence numbers are kept, as long as they add
//! up to at most [`REPLY_BYTES`] (the newest is always kept, whatever its
//! size). Older ones are dropped lowest first, and `min_kept` rises past
//! them. Every applied sequence number >= `min_kept` has its reply here, so
//! a number >= `min_kept` without a reply was never applied and is applied
//! now (a pipelined request whose predecessor was lost may come first); a
//! number below `min_kept` that has no reply is refused, never applied: it
//! may have been applied already.
//!
//! **Log time.** Nothing here reads a clock. Log time is the largest
//! wall-clock stamp (milliseconds) a leader put into a clock entry
//! ([`Sessions::advance_clock`]); every replica applies the same entries, so
//! every replica expires the same sessions at the same entry. A session
//! idle (no registration, resume or tagged write applied) for longer than
//! the TTL is dropped at the next clock entry, or when it is next used.
//! A session registered before the first clock entry of a fresh cluster
//! counts as active at that entry's time.
//!
//! **Bound.** At most `max` sessions are kept; registering one more evicts
//! the least recently active first. The TTL and the bound travel in every
//! registration entry (from the registering node's flags), and the newest
//! registration's values are in force: replicas never disagree on them,
//! even when their flags differ.
//!
//! **Snapshot layout** (inside the KV snapshot, see `kv.rs`), little-endian:
//!
//! ```text
//! log time u64, ttl ms u64, max sessions u64
//! sessions u64, then per session:
//!   id u64, [secret: has u8 (0 or 1), then 16 bytes if 1,]
//!   last active u64, min kept u64,
//!   replies u32, then per reply: seq u64, reply (see encode_reply)
//! ```
//!
//! The bracketed secret is in snapshots of version 4 on; a version 3
//! table is read with no secrets (`read_from`'s `with_secrets`).
//!
//! Decoding checks every count and length against its bound before it
//! reads on, and allocates nothing by a count it read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::sync::Arc;

use byteorder::{LittleEndian, ReadBytesExt, WriteBytesExt};

use crate::protocol::{ErrorCode, Reply, SessionId, SessionSecret, MAX_VALUE};

/// Replies kept per session, at most.
pub const REPLY_WINDOW: usize = 64;
/// Bytes of kept replies per session beyond which older ones are dropped
/// (the newest reply is kept whatever its size).
pub const REPLY_BYTES: usize = 64 << 10;
/// Default idle time after which a session expires (`--session-ttl-ms`).
pub const DEFAULT_TTL_MS: u64 = 60_000;
/// Default bound on the number of sessions (`--max-sessions`).
pub const DEFAULT_MAX_SESSIONS: u64 = 10_000;
/// The largest `--max-sessions` accepted, and the most sessions a snapshot
/// may hold.
pub const MAX_SESSIONS_LIMIT: u64 = 1_000_000;
/// Longest error message a snapshot may hold in a kept reply.
const MAX_MESSAGE: u32 = 64 << 10;

/// The session settings a node puts into the registrations it proposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Idle time, in log-time milliseconds, after which a session expires.
    pub ttl_ms: u64,
    /// Most sessions kept at once.
    pub max: u64,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max: DEFAULT_MAX_SESSIONS,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Session {
    /// What a resume must present; `None` for a session registered
    /// without one (older format), which cannot be resumed.
    secret: Option<SessionSecret>,
    /// Log time of the last registration, resume or tagged write.
    last_active: u64,
    /// Sequence numbers below this without a kept reply are refused.
    min_kept: u64,
    /// Replies of the most recent applied sequence numbers.
    replies: BTreeMap<u64, Reply>,
    /// Rough bytes of `replies`.
    reply_bytes: usize,
}

impl Session {
    /// Keeps `reply` for `seq` and drops the oldest replies past the window.
    fn keep(&mut self, seq: u64, reply: Reply) {
        self.reply_bytes += reply_size(&reply);
        if let Some(old) = self.replies.insert(seq, reply) {
            self.reply_bytes -= reply_size(&old);
        }
        while self.replies.len() > REPLY_WINDOW
            || (self.replies.len() > 1 && self.reply_bytes > REPLY_BYTES)
        {
            let Some((old_seq, old)) = self.replies.pop_first() else {
                break;
            };
            self.reply_bytes -= reply_size(&old);
            self.min_kept = self.min_kept.max(old_seq.saturating_add(1));
        }
    }
}

/// Bytes a kept reply costs, roughly: its payload plus a fixed overhead.
fn reply_size(r: &Reply) -> usize {
    32 + match r {
        Reply::Value(v) => v.len(),
        Reply::Mismatch(v) => v.len(),
        Reply::Error(_, m) | Reply::Status(m) => m.len(),
        _ => 0,
    }
}

fn expired() -> Reply {
    Reply::error(
        ErrorCode::SessionExpired,
        "unknown or expired session; open a new one with SESSION",
    )
}

/// The session table, part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    table: BTreeMap<u64, Session>,
    /// `(last_active, id)` of every session: the least recently active first.
    by_activity: BTreeSet<(u64, u64)>,
    /// The largest clock stamp applied; 0 before the first.
    log_time: u64,
    /// From the newest registration applied.
    limits: SessionLimits,
}

impl Sessions {
    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The log time, in milliseconds (0 before the first clock entry).
    pub fn log_time(&self) -> u64 {
        self.log_time
    }

    /// Whether session `id` is open.
    pub fn contains(&self, id: u64) -> bool {
        self.table.contains_key(&id)
    }

    /// Applies a leader's clock stamp: log time moves forward (never back)
    /// and sessions idle past the TTL expire.
    pub fn advance_clock(&mut self, ms: u64) {
        if ms <= self.log_time {
            return;
        }
        if self.log_time == 0 {
            // Sessions registered before any clock: active as of now.
            let ids: Vec<u64> = self.table.keys().copied().collect();
            for id in ids {
                self.touch(id, ms);
            }
        }
        self.log_time = ms;
        while let Some(&(last, id)) = self.by_activity.first() {
            if !self.is_stale(last) {
                break;
            }
            self.remove(id);
        }
    }

    fn is_stale(&self, last_active: u64) -> bool {
        last_active.saturating_add(self.limits.ttl_ms) < self.log_time
    }

    fn remove(&mut self, id: u64) {
        if let Some(s) = self.table.remove(&id) {
            self.by_activity.remove(&(s.last_active, id));
        }
    }

    fn touch(&mut self, id: u64, now: u64) {
        if let Some(s) = self.table.get_mut(&id) {
            self.by_activity.remove(&(s.last_active, id));
            s.last_active = now;
            self.by_activity.insert((now, id));
        }
    }

    /// The open, unexpired session `id`, dropping it if it is expired.
    fn live(&mut self, id: u64) -> bool {
        match self.table.get(&id) {
            None => false,
            Some(s) if self.is_stale(s.last_active) => {
                self.remove(id);
                false
            }
            Some(_) => true,
        }
    }

    /// Registers session `id` (the index of the registering entry) with
    /// `secret` under `limits`, evicting the least recently active sessions
    /// over the bound. Without a secret (an entry of the older format) the
    /// session is registered alike, so tagged writes behave the same on
    /// every replica, but it can never be resumed, and the reply says so.
    pub fn open(&mut self, id: u64, limits: SessionLimits, secret: Option<SessionSecret>) -> Reply {
        self.limits = SessionLimits {
            ttl_ms: limits.ttl_ms.max(1),
            max: limits.max.clamp(1, MAX_SESSIONS_LIMIT),
        };
        self.remove(id);
        while self.table.len() as u64 >= self.limits.max {
            let Some(&(_, oldest)) = self.by_activity.first() else {
                break;
            };
            self.remove(oldest);
        }
        self.table.insert(
            id,
            Session {
                secret,
                last_active: self.log_time,
                min_kept: 1,
                ..Session::default()
            },
        );
        self.by_activity.insert((self.log_time, id));
        match secret {
            Some(secret) => Reply::Session(SessionId { index: id, secret }),
            None => Reply::error(
                ErrorCode::SessionExpired,
                "the session was registered without a secret (an older entry format) \
                 and cannot be used; open a new one with SESSION",
            ),
        }
    }

    /// Resumes session `id` if `secret` is its secret: `SESSION <id>` (and
    /// the session is now active). Otherwise `ERR SESSION_EXPIRED`, the
    /// same for an unknown session, an expired one, a wrong secret and a
    /// session that has none, and nothing changes.
    pub fn resume(&mut self, id: u64, secret: Option<&SessionSecret>) -> Reply {
        if !self.live(id) {
            return expired();
        }
        let Some(held) = self.table.get(&id).and_then(|s| s.secret) else {
            return expired();
        };
        let held = SessionId {
            index: id,
            secret: held,
        };
        // A missing secret is compared too (against zeros), and refused.
        let given = secret.copied();
        if !held.secret_is(&given.unwrap_or_default()) || given.is_none() {
            return expired();
        }
        self.touch(id, self.log_time);
        Reply::Session(held)
    }

    /// Before applying write `seq` of session `id`: `Ok` to apply it, or
    /// the reply to give instead (the kept one for a retry, or an error).
    pub fn check(&mut self, id: u64, seq: u64) -> Result<(), Reply> {
        if !self.live(id) {
            return Err(expired());
        }
        self.touch(id, self.log_time);
        let Some(s) = self.table.get(&id) else {
            return Err(expired());
        };
        if let Some(kept) = s.replies.get(&seq) {
            return Err(kept.clone());
        }
        if seq < s.min_kept {
            return Err(Reply::error(
                ErrorCode::BadRequest,
                format!(
                    "#{seq} is older than the replies session {id} keeps (from #{}); \
                     it was not applied now, and whether it was before is unknown",
                    s.min_kept
                ),
            ));
        }
        Ok(())
    }

    /// After applying write `seq` of session `id`: keeps its reply.
    pub fn record(&mut self, id: u64, seq: u64, reply: &Reply) {
        if let Some(s) = self.table.get_mut(&id) {
            s.keep(seq, reply.clone());
        }
    }

    /// Serialises the table (see the module docs), secrets included.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_u64::<LittleEndian>(self.log_time)?;
        w.write_u64::<LittleEndian>(self.limits.ttl_ms)?;
        w.write_u64::<LittleEndian>(self.limits.max)?;
        w.write_u64::<LittleEndian>(self.table.len() as u64)?;
        for (id, s) in &self.table {
            w.write_u64::<LittleEndian>(*id)?;
            match &s.secret {
                Some(secret) => {
                    w.write_u8(1)?;
                    w.write_all(secret)?;
                }
                None => w.write_u8(0)?,
            }
            w.write_u64::<LittleEndian>(s.last_active)?;
            w.write_u64::<LittleEndian>(s.min_kept)?;
            w.write_u32::<LittleEndian>(s.replies.len() as u32)?;
            for (seq, reply) in &s.replies {
                w.write_u64::<LittleEndian>(*seq)?;
                encode_reply(reply, w)?;
            }
        }
        Ok(())
    }

    /// Reads what [`write_to`](Sessions::write_to) wrote; refuses counts
    /// and lengths out of bounds with `InvalidData`. Without `with_secrets`
    /// it reads the version 3 layout, whose sessions have no secret (they
    /// keep deduplicating tagged writes but can no longer be resumed).
    pub fn read_from(r: &mut impl Read, with_secrets: bool) -> io::Result<Sessions> {
        let log_time = r.read_u64::<LittleEndian>()?;
        let ttl_ms = r.read_u64::<LittleEndian>()?;
        let max = r.read_u64::<LittleEndian>()?;
        if ttl_ms == 0 || !(1..=MAX_SESSIONS_LIMIT).contains(&max) {
            return Err(bad("session limits out of range"));
        }
        let n = r.read_u64::<LittleEndian>()?;
        if n > max {
            return Err(bad("more sessions than the bound"));
        }
        let mut out = Sessions {
            log_time,
            limits: SessionLimits { ttl_ms, max },
            ..Sessions::default()
        };
        for _ in 0..n {
            let id = r.read_u64::<LittleEndian>()?;
            let secret = if with_secrets {
                match r.read_u8()? {
                    0 => None,
                    1 => {
                        let mut secret = SessionSecret::default();
                        r.read_exact(&mut secret)?;
                        Some(secret)
                    }
                    _ => return Err(bad("secret flag")),
                }
            } else {
                None
            };
            let mut s = Session {
                secret,
                last_active: r.read_u64::<LittleEndian>()?,
                min_kept: r.read_u64::<LittleEndian>()?,
                ..Session::default()
            };
            let replies = r.read_u32::<LittleEndian>()?;
            if replies as usize > REPLY_WINDOW {
                return Err(bad("more kept replies than the window"));
            }
            for _ in 0..replies {
                let seq = r.read_u64::<LittleEndian>()?;
                let reply = decode_reply(r)?;
                s.reply_bytes += reply_size(&reply);
                if seq < s.min_kept || s.replies.insert(seq, reply).is_some() {
                    return Err(bad("kept replies out of order"));
                }
            }
            if out.table.contains_key(&id) {
                return Err(bad("a session id twice"));
            }
            out.by_activity.insert((s.last_active, id));
            out.table.insert(id, s);
        }
        Ok(out)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot sessions: {what}"),
    )
}

const R_OK: u8 = 0;
const R_DELETED: u8 = 1;
const R_NOT_FOUND: u8 = 2;
const R_VALUE: u8 = 3;
const R_MISMATCH: u8 = 4;
const R_ERROR: u8 = 5;
const R_SESSION: u8 = 6;
const R_OK_INDEX: u8 = 7;
const R_PONG: u8 = 8;
const R_STATUS: u8 = 9;

/// Writes a reply: kind u8, then `len u32 + bytes` for a value, a
/// mismatch or a status line; `code u8, len u32 + message` for an error;
/// `u64` for an index, `u64` and the 16-byte secret for a session id.
fn encode_reply(reply: &Reply, w: &mut impl Write) -> io::Result<()> {
    let bytes = |w: &mut dyn Write, kind: u8, b: &[u8]| -> io::Result<()> {
        w.write_u8(kind)?;
        w.write_u32::<LittleEndian>(b.len() as u32)?;
        w.write_all(b)
    };
    match reply {
        Reply::Ok => w.write_u8(R_OK),
        Reply::Deleted => w.write_u8(R_DELETED),
        Reply::NotFound => w.write_u8(R_NOT_FOUND),
        Reply::Pong => w.write_u8(R_PONG),
        Reply::Value(v) => bytes(w, R_VALUE, v),
        Reply::Mismatch(v) => bytes(w, R_MISMATCH, v),
        Reply::Status(s) => bytes(w, R_STATUS, s.as_bytes()),
        Reply::Error(code, msg) => {
            w.write_u8(R_ERROR)?;
            bytes(w, code.to_u8(), msg.as_bytes())
        }
        Reply::Session(id) => {
            w.write_u8(R_SESSION)?;
            w.write_u64::<LittleEndian>(id.index)?;
            w.write_all(&id.secret)
        }
        Reply::OkIndex(i) => {
            w.write_u8(R_OK_INDEX)?;
            w.write_u64::<LittleEndian>(*i)
        }
        // Replies of the Redis port's commands: those are never tagged
        // (`Command::is_client_write`), so no session keeps one.
        Reply::Count(_) | Reply::Values(_) | Reply::Unchanged => {
            Err(bad("a Redis-protocol reply is never kept in a session"))
        }
    }
}

/// Reads a `u32` length and that many bytes, refusing a length over `max`
/// before allocating. `bad` makes the error, so that it says which part of
/// a snapshot is damaged (the KV store's restore uses this too).
pub(crate) fn read_bytes(
    r: &mut impl Read,
    max: u32,
    bad: fn(&str) -> io::Error,
) -> io::Result<Vec<u8>> {
    let n = r.read_u32::<LittleEndian>()?;
    if n > max {
        return Err(bad("length out of range"));
    }
    let mut v = vec![0; n as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn read_text(r: &mut impl Read) -> io::Result<String> {
    String::from_utf8(read_bytes(r, MAX_MESSAGE, bad)?).map_err(|_| bad("text is not UTF-8"))
}

fn decode_reply(r: &mut impl Read) -> io::Result<Reply> {
    Ok(match r.read_u8()? {
        R_OK => Reply::Ok,
        R_DELETED => Reply::Deleted,
        R_NOT_FOUND => Reply::NotFound,
        R_PONG => Reply::Pong,
        R_VALUE => Reply::Value(Arc::from(read_bytes(r, MAX_VALUE as u32, bad)?)),
        R_MISMATCH => Reply::Mismatch(read_bytes(r, MAX_VALUE as u32, bad)?),
        R_STATUS => Reply::Status(read_text(r)?),
        R_ERROR => {
            let code = ErrorCode::from_u8(r.read_u8()?).ok_or_else(|| bad("error code"))?;
            Reply::Error(code, read_text(r)?)
        }
        R_SESSION => {
            let index = r.read_u64::<LittleEndian>()?;
            let mut secret = SessionSecret::default();
            r.read_exact(&mut secret)?;
            Reply::Session(SessionId { index, secret })
        }
        R_OK_INDEX => Reply::OkIndex(r.read_u64::<LittleEndian>()?),
        _ => return Err(bad("unknown reply kind")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SessionLimits = SessionLimits {
        ttl_ms: 1000,
        max: 3,
    };

    /// A secret that differs per session (tests only: nodes draw theirs).
    fn secret(id: u64) -> SessionSecret {
        let mut s = [0x5a; 16];
        s[..8].copy_from_slice(&id.to_le_bytes());
        s
    }

    fn sid(id: u64) -> Reply {
        Reply::Session(SessionId {
            index: id,
            secret: secret(id),
        })
    }

    fn value(n: i64) -> Reply {
        Reply::Value(Arc::from(n.to_string().into_bytes()))
    }

    #[test]
    fn a_retry_gets_the_kept_reply_and_an_unknown_session_is_expired() {
        let mut s = Sessions::default();
        assert_eq!(s.open(7, LIMITS, Some(secret(7))), sid(7));
        assert_eq!(s.check(7, 1), Ok(()));
        s.record(7, 1, &value(1));
        assert_eq!(s.check(7, 1), Err(value(1)));
        assert_eq!(s.check(7, 2), Ok(()));
        match s.check(8, 1) {
            Err(Reply::Error(ErrorCode::SessionExpired, _)) => {}
            other => panic!("unknown session gave {other:?}"),
        }
        assert!(matches!(
            s.resume(8, Some(&secret(8))),
            Reply::Error(ErrorCode::SessionExpired, _)
        ));
        assert_eq!(s.resume(7, Some(&secret(7))), sid(7));
    }

    #[test]
    fn a_gap_below_the_newest_is_applied_but_a_number_below_the_window_is_refused() {
        let mut s = Sessions::default();
        s.open(1, LIMITS, Some(secret(1)));
        // #2 applied before #1 (#1's first attempt was lost): #1 still applies.
        s.record(1, 2, &Reply::Ok);
        assert_eq!(s.check(1, 1), Ok(()));
        s.record(1, 1, &Reply::Deleted);
        for seq in 3..3 + REPLY_WINDOW as u64 {
            assert_eq!(s.check(1, seq), Ok(()));
            s.record(1, seq, &Reply::Ok);
        }
        // #1 and #2 fell out of the window: refused, never applied again.
        for seq in [1, 2] {
            match s.check(1, seq) {
                Err(Reply::Error(ErrorCode::BadRequest, m)) => assert!(m.contains("older")),
                other => panic!("#{seq} gave {other:?}"),
            }
        }
        assert_eq!(s.check(1, 3), Err(Reply::Ok), "#3 is still kept");
    }

    #[test]
    fn kept_replies_are_bounded_in_bytes_but_the_newest_stays() {
        let mut s = Sessions::default();
        s.open(1, LIMITS, Some(secret(1)));
        let big = Reply::Mismatch(vec![b'x'; REPLY_BYTES]);
        s.record(1, 1, &Reply::Ok);
        s.record(1, 2, &big);
        assert_eq!(s.check(1, 2), Err(big));
        assert!(s.check(1, 1).is_err());
        assert!(matches!(
            s.check(1, 1),
            Err(Reply::Error(ErrorCode::BadRequest, _))
        ));
        s.record(1, 3, &Reply::Ok);
        assert_eq!(s.check(1, 3), Err(Reply::Ok));
        assert!(
            matches!(s.check(1, 2), Err(Reply::Error(ErrorCode::BadRequest, _))),
            "the big reply went once a newer one came"
        );
    }

    #[test]
    fn sessions_expire_in_log_time_only() {
        let mut s = Sessions::default();
        s.open(1, LIMITS, Some(secret(1))); // before any clock: active as of the first one
        s.advance_clock(10_000);
        assert!(s.contains(1));
        s.open(2, LIMITS, Some(secret(2)));
        s.advance_clock(10_900);
        assert_eq!(s.check(2, 1), Ok(())); // session 2 active at 10_900
        s.advance_clock(11_001);
        assert!(!s.contains(1), "idle since 10_000, TTL 1000");
        assert!(s.contains(2));
        s.advance_clock(5_000); // a stamp from the past changes nothing
        assert_eq!(s.log_time(), 11_001);
        assert!(s.contains(2));
        s.advance_clock(11_901);
        assert!(!s.contains(2));
        assert!(s.is_empty());
    }

    #[test]
    fn a_session_found_expired_on_use_is_dropped() {
        let mut s = Sessions::default();
        s.advance_clock(1);
        s.open(1, LIMITS, Some(secret(1)));
        s.log_time = 5000; // as if clock entries came without a sweep
        assert!(matches!(
            s.check(1, 1),
            Err(Reply::Error(ErrorCode::SessionExpired, _))
        ));
        assert!(!s.contains(1));
    }

    #[test]
    fn registering_past_the_bound_evicts_the_least_recently_active() {
        let mut s = Sessions::default();
        s.advance_clock(100);
        s.open(1, LIMITS, Some(secret(1)));
        s.advance_clock(200);
        s.open(2, LIMITS, Some(secret(2)));
        s.advance_clock(300);
        s.open(3, LIMITS, Some(secret(3)));
        s.advance_clock(400);
        assert_eq!(s.check(1, 1), Ok(())); // 1 is now the most recent
        s.open(4, LIMITS, Some(secret(4)));
        assert_eq!(s.len(), 3);
        assert!(!s.contains(2), "2 was the least recently active");
        assert!(s.contains(1) && s.contains(3) && s.contains(4));
    }

    #[test]
    fn the_newest_registration_sets_the_limits() {
        let mut s = Sessions::default();
        s.open(1, LIMITS, Some(secret(1)));
        s.open(2, SessionLimits { ttl_ms: 10, max: 1 }, Some(secret(2)));
        assert_eq!(s.len(), 1);
        assert!(s.contains(2));
    }

    fn sample() -> Sessions {
        let mut s = Sessions::default();
        s.advance_clock(1000);
        s.open(5, LIMITS, Some(secret(5)));
        s.open(9, LIMITS, Some(secret(9)));
        s.record(5, 1, &value(-3));
        s.record(5, 2, &Reply::Mismatch(b"cur".to_vec()));
        s.record(9, 4, &Reply::error(ErrorCode::BadRequest, "not an integer"));
        s.record(9, 5, &Reply::NotFound);
        s.record(9, 6, &Reply::Deleted);
        s
    }

    #[test]
    fn the_table_round_trips_and_every_cut_is_refused() {
        let s = sample();
        let mut bytes = Vec::new();
        s.write_to(&mut bytes).unwrap();
        let back = Sessions::read_from(&mut &bytes[..], true).unwrap();
        assert_eq!(back, s);
        for cut in 0..bytes.len() {
            assert!(
                Sessions::read_from(&mut &bytes[..cut], true).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn damaged_tables_are_refused() {
        let mut bytes = Vec::new();
        sample().write_to(&mut bytes).unwrap();
        let with = |at: usize, b: &[u8]| {
            let mut d = bytes.clone();
            d[at..at + b.len()].copy_from_slice(b);
            Sessions::read_from(&mut &d[..], true)
        };
        // ttl 0; max 0; max over the limit; a count over the bound.
        assert!(with(8, &0u64.to_le_bytes()).is_err());
        assert!(with(16, &0u64.to_le_bytes()).is_err());
        assert!(with(16, &(MAX_SESSIONS_LIMIT + 1).to_le_bytes()).is_err());
        assert!(with(24, &u64::MAX.to_le_bytes()).is_err());
        // The first session's reply count over the window.
        assert!(with(32 + 41, &(REPLY_WINDOW as u32 + 1).to_le_bytes()).is_err());
        // Its first reply's kind.
        assert!(with(32 + 45 + 8, &[200]).is_err());
        // Its secret flag.
        assert!(with(32 + 8, &[2]).is_err());
        // Its first reply's value length over the value limit.
        assert!(with(32 + 45 + 9, &u32::MAX.to_le_bytes()).is_err());
        // Session 9's id made 5: a duplicate.
        let second = bytes.len() - (8 + 17 + 8 + 8 + 4 + (8 + 1 + 1 + 4 + 14) + (8 + 1) + (8 + 1));
        assert_eq!(bytes[second], 9, "layout of the sample changed");
        assert!(with(second, &[5]).is_err());
        // An unknown error code.
        assert!(with(second + 45 + 9, &[250]).is_err());
    }

    #[test]
    fn every_reply_kind_round_trips() {
        for r in [
            Reply::Ok,
            Reply::Deleted,
            Reply::NotFound,
            Reply::Pong,
            value(42),
            Reply::Mismatch(vec![]),
            Reply::Status("STATUS id=1".into()),
            Reply::error(ErrorCode::SessionExpired, "gone"),
            sid(77),
            Reply::OkIndex(3),
        ] {
            let mut b = Vec::new();
            encode_reply(&r, &mut b).unwrap();
            assert_eq!(decode_reply(&mut &b[..]).unwrap(), r);
        }
    }

    #[test]
    fn only_the_holder_of_the_secret_resumes_a_session() {
        let mut s = Sessions::default();
        s.advance_clock(1000);
        s.open(5, LIMITS, Some(secret(5)));
        s.record(5, 1, &value(1));
        s.advance_clock(1500);
        // The index alone, a wrong secret, a secret one bit off: all refused
        // like an unknown session, and none of them marks it active.
        let mut off = secret(5);
        off[15] ^= 1;
        for guess in [None, Some([0u8; 16]), Some(secret(6)), Some(off)] {
            assert!(
                matches!(
                    s.resume(5, guess.as_ref()),
                    Reply::Error(ErrorCode::SessionExpired, _)
                ),
                "{guess:?}"
            );
        }
        s.advance_clock(2001);
        assert!(
            !s.contains(5),
            "the guesses kept it alive: idle since 1000, TTL 1000"
        );
        s.open(7, LIMITS, Some(secret(7)));
        assert_eq!(s.resume(7, Some(&secret(7))), sid(7));
    }

    #[test]
    fn a_session_without_a_secret_dedupes_but_cannot_be_resumed() {
        let mut s = Sessions::default();
        assert!(matches!(
            s.open(3, LIMITS, None),
            Reply::Error(ErrorCode::SessionExpired, _)
        ));
        assert!(s.contains(3));
        assert_eq!(s.check(3, 1), Ok(()));
        s.record(3, 1, &Reply::Ok);
        assert_eq!(
            s.check(3, 1),
            Err(Reply::Ok),
            "a retry is still not applied"
        );
        for guess in [None, Some([0u8; 16])] {
            assert!(matches!(
                s.resume(3, guess.as_ref()),
                Reply::Error(ErrorCode::SessionExpired, _)
            ));
        }
    }

    #[test]
    fn secrets_round_trip_and_a_version_3_table_loads_without_them() {
        let mut s = sample();
        s.open(11, LIMITS, None);
        let mut bytes = Vec::new();
        s.write_to(&mut bytes).unwrap();
        let mut back = Sessions::read_from(&mut &bytes[..], true).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.resume(9, Some(&secret(9))), sid(9));
        // The version 3 layout: the same table without the secret fields.
        let mut v3 = Vec::new();
        v3.extend_from_slice(&bytes[..32]);
        let mut at = 32;
        for _ in 0..s.len() {
            v3.extend_from_slice(&bytes[at..at + 8]);
            at += 8;
            at += if bytes[at] == 1 { 17 } else { 1 };
            // last active, min kept, replies: copied through to the next id.
            let start = at;
            at += 16;
            let replies = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            at += 4;
            for _ in 0..replies {
                at += 8;
                let mut r = &bytes[at..];
                let before = r.len();
                decode_reply(&mut r).unwrap();
                at += before - r.len();
            }
            v3.extend_from_slice(&bytes[start..at]);
        }
        assert_eq!(at, bytes.len());
        let mut old = Sessions::read_from(&mut &v3[..], false).unwrap();
        assert_eq!(old.len(), 3);
        assert_eq!(old.check(5, 2), Err(Reply::Mismatch(b"cur".to_vec())));
        for id in [5, 9, 11] {
            assert!(matches!(
                old.resume(id, Some(&secret(id))),
                Reply::Error(ErrorCode::SessionExpired, _)
            ));
        }
    }
}
