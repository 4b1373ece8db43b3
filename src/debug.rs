//! Test-only switches: crash points and deliberately broken behaviour.
//!
//! Nothing here is part of the outside contract. The fault-injection suite
//! (`tests/fault.rs`, `tests/failpoints.rs`) uses it to prove two things:
//! that the node survives crashes at the worst instants, and that its
//! checker notices when the node is broken on purpose.
//!
//! - [`crash_point`]: with the cargo feature `failpoints`, aborts the process
//!   at a named point on the N-th hit, as configured by
//!   `RAFTNODE_FAILPOINTS=name:N,...` (the hook lives in the `wal` crate,
//!   whose own points are in its write path). Without the feature it is an
//!   empty inline function. Points: `before_wal_fsync` (wal: a synced write
//!   is in the page cache, its fdatasync has not run), `after_snapshot_rename`
//!   (wal: the snapshot file is in place, its marker is not in the log),
//!   `after_wal_fsync` (a Ready is durable, its acknowledgements are not
//!   sent), `before_segment_release` (a snapshot is durable, old segments are
//!   not released), `mid_apply` (a committed entry is applied, its client is
//!   not answered, later entries of the Ready are not applied).
//! - [`error_point`]: the same switch, but the operation fails as if the
//!   disk had returned an error, instead of aborting. Points: `wal_save` (a
//!   Ready's WAL write fails: the node must stop without acknowledging it).
//! - `RAFTNODE_DEBUG_UNSAFE_LOCAL_READS=1` (TEST ONLY, breaks
//!   linearizability): `GET` is served from local state without a
//!   read-index round trip, so a partitioned or lagging node answers stale
//!   values.
//! - `RAFTNODE_DEBUG_ACK_BEFORE_FSYNC=1` (TEST ONLY, breaks durability): WAL
//!   writes skip their fdatasync, so entries are acknowledged (and votes
//!   granted) before they are durable; a power cut then loses them.
//! - `RAFTNODE_DEBUG_NO_RECOVERY=1` (TEST ONLY, breaks safety): a node
//!   that lost durable state starts as if it had not. Damage is salvaged
//!   as usual, but the core starts without a recovery (so the node votes
//!   and counts toward quorums with a log that lost what it acknowledged),
//!   and a wiped data dir bootstraps anew instead of asking its peers.
//! - `RAFTNODE_DEBUG_TRUST_EVERY_PEER=1` (TEST ONLY, breaks security): the
//!   raft port lets in any dialer that speaks the protocol, and the core
//!   steps every message, from members or not, at any term. The security
//!   tests run their attacks against it to show that they would notice.
//! - `RAFTNODE_DEBUG_IGNORE_SESSIONS=1` (TEST ONLY, breaks exactly-once):
//!   a `#<seq>` tag is dropped and the write proposed as if untagged, so a
//!   retried write applies again. The sessions fault test runs against it
//!   to show that its counters would notice.

use std::sync::OnceLock;

/// Aborts the process at crash point `name` if the `failpoints` build armed
/// it for this hit; otherwise (and always without the feature) does nothing.
#[inline(always)]
pub fn crash_point(name: &str) {
    wal::crash_point(name, String::new);
}

/// True if the `failpoints` build armed error point `name` for this hit;
/// always false without the feature.
#[inline(always)]
pub fn error_point(name: &str) -> bool {
    wal::error_point(name)
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// TEST ONLY: serve reads from local state (see the module docs).
pub fn unsafe_local_reads() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = flag("RAFTNODE_DEBUG_UNSAFE_LOCAL_READS");
        if on {
            log::warn!(
                "RAFTNODE_DEBUG_UNSAFE_LOCAL_READS=1: reads are NOT linearizable (test only)"
            );
        }
        on
    })
}

/// TEST ONLY: skip the WAL's fdatasync (see the module docs).
pub fn ack_before_fsync() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = flag("RAFTNODE_DEBUG_ACK_BEFORE_FSYNC");
        if on {
            log::warn!("RAFTNODE_DEBUG_ACK_BEFORE_FSYNC=1: writes are NOT durable (test only)");
        }
        on
    })
}

/// TEST ONLY: start without recovering after lost state (see the module docs).
pub fn no_recovery() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = flag("RAFTNODE_DEBUG_NO_RECOVERY");
        if on {
            log::warn!(
                "RAFTNODE_DEBUG_NO_RECOVERY=1: lost state is NOT recovered from the peers (test only)"
            );
        }
        on
    })
}

/// TEST ONLY: trust every peer (see the module docs).
pub fn trust_every_peer() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = flag("RAFTNODE_DEBUG_TRUST_EVERY_PEER");
        if on {
            log::warn!(
                "RAFTNODE_DEBUG_TRUST_EVERY_PEER=1: any peer is let in and believed (test only)"
            );
        }
        on
    })
}

/// TEST ONLY: drop session tags from writes (see the module docs).
pub fn ignore_sessions() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = flag("RAFTNODE_DEBUG_IGNORE_SESSIONS");
        if on {
            log::warn!(
                "RAFTNODE_DEBUG_IGNORE_SESSIONS=1: retried writes may apply twice (test only)"
            );
        }
        on
    })
}
