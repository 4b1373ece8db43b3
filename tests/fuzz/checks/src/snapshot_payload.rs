//! The state machine's snapshot payload (`raftnode::kv::KvStore::restore`):
//! the bytes a node loads from its snapshot file at start, and from a
//! snapshot its leader streamed to it.
//!
//! The input is the payload itself (what follows the WAL's snapshot
//! header): `RNKV`, the format version, the cluster record, the keys, and
//! from version 3 on the session table (`src/kv.rs`, `src/sessions.rs`),
//! with each session's secret from version 4 on.
//!
//! Promises checked:
//! - nothing panics, allocates beyond [`ALLOC_LIMIT`], or hangs, whatever
//!   the counts and lengths claim;
//! - a payload that loads is written back (in the current format) into one
//!   that loads again to the same state: the same cluster record, session
//!   table, number of keys and bytes held, and the same bytes when written
//!   a second time but for the order of the keys (so, the same length).

use raftnode::kv::{Command, KvStore};
use raftnode::sessions::SessionLimits;

/// A value may be 16 MiB in the format (the node's own limit is 1 MiB),
/// and is read into one buffer; nothing else needs as much.
pub const ALLOC_LIMIT: usize = 32 << 20;

pub fn check(data: &[u8]) {
    let mut kv = KvStore::new();
    if kv.restore(&mut &data[..]).is_err() {
        return;
    }
    let bytes = kv.snapshot_bytes();
    let mut again = KvStore::new();
    if let Err(e) = again.restore(&mut &bytes[..]) {
        panic!("a payload written from a loaded one does not load: {e}");
    }
    assert_eq!(again.cluster, kv.cluster, "the cluster record changed");
    assert_eq!(again.sessions(), kv.sessions(), "the session table changed");
    assert_eq!(again.len(), kv.len(), "the number of keys changed");
    assert_eq!(
        again.data_bytes(),
        kv.data_bytes(),
        "the bytes held changed"
    );
    assert_eq!(again.snapshot_bytes().len(), bytes.len());
}

fn tagged(session: u64, seq: u64, cmd: Command) -> Command {
    Command::Tagged {
        session,
        seq,
        cmd: Box::new(cmd),
    }
}

/// A store with keys, a cluster record and two sessions with kept replies.
fn sample() -> KvStore {
    let mut kv = KvStore::new();
    kv.apply_at(1, Command::SetClusterId { id: 0xC1 });
    kv.cluster.members.insert(1, "127.0.0.1:7001".into());
    kv.cluster.members.insert(2, "127.0.0.1:7002".into());
    kv.cluster.removed.insert(3);
    kv.apply_at(
        2,
        Command::Clock {
            ms: 1_700_000_000_000,
        },
    );
    let limits = SessionLimits {
        ttl_ms: 60_000,
        max: 100,
    };
    kv.apply_at(
        3,
        Command::OpenSession {
            limits,
            secret: Some([0x33; 16]),
        },
    );
    kv.apply_at(
        4,
        Command::OpenSession {
            limits,
            secret: Some([0x44; 16]),
        },
    );
    // An entry of the older format: a session without a secret.
    kv.apply_at(
        8,
        Command::OpenSession {
            limits,
            secret: None,
        },
    );
    let incr = || Command::Incr { key: b"n".to_vec() };
    kv.apply_at(5, tagged(3, 1, incr()));
    kv.apply_at(6, tagged(3, 2, incr()));
    kv.apply_at(
        7,
        tagged(
            4,
            1,
            Command::Cas {
                key: b"n".to_vec(),
                expected: b"0".to_vec(),
                value: b"1".to_vec(),
            },
        ),
    );
    kv.apply_at(
        8,
        tagged(
            4,
            2,
            Command::Put {
                key: b"s".to_vec(),
                value: b"text".to_vec(),
            },
        ),
    );
    kv.apply_at(9, tagged(4, 3, Command::Incr { key: b"s".to_vec() }));
    kv.apply_at(
        10,
        tagged(
            4,
            4,
            Command::Delete {
                key: b"gone".to_vec(),
            },
        ),
    );
    kv
}

/// A payload of format version `version` (1 or 2), written by hand: those
/// formats are only read now.
fn old_format(version: u32) -> Vec<u8> {
    let mut out = b"RNKV".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    if version >= 2 {
        out.extend_from_slice(&0xC1u64.to_le_bytes());
    }
    out.extend_from_slice(&1u64.to_le_bytes()); // one member
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&14u32.to_le_bytes());
    out.extend_from_slice(b"127.0.0.1:7001");
    if version >= 2 {
        out.extend_from_slice(&0u64.to_le_bytes()); // none removed
    }
    out.extend_from_slice(&1u64.to_le_bytes()); // one key
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(b"k");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(b"v");
    out
}

/// Valid payloads of every version, and a few damaged on purpose.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let full = sample().snapshot_bytes();
    let empty = KvStore::new().snapshot_bytes();
    // One session without replies: the table ends with its reply count,
    // here claimed as 2^32 - 1.
    let mut one = KvStore::new();
    one.apply_at(
        7,
        Command::OpenSession {
            limits: SessionLimits::default(),
            secret: Some([0x77; 16]),
        },
    );
    let one_bytes = one.snapshot_bytes();
    let mut huge_count = one_bytes.clone();
    let len = huge_count.len();
    huge_count[len - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    // The session's secret flag (after its id) made 2.
    let flag_at = len - (4 + 8 + 8 + 16 + 1);
    assert_eq!(
        one_bytes[flag_at], 1,
        "layout of the one-session seed changed"
    );
    let mut bad_flag = one_bytes.clone();
    bad_flag[flag_at] = 2;
    // The same store in version 3: no secret fields.
    let mut v3_one = one_bytes.clone();
    v3_one.drain(flag_at..flag_at + 17);
    v3_one[4..8].copy_from_slice(&3u32.to_le_bytes());
    let mut bad_version = full.clone();
    bad_version[4..8].copy_from_slice(&9u32.to_le_bytes());
    vec![
        ("v4_sessions".into(), full.clone()),
        ("v4_empty".into(), empty),
        ("v4_bad_secret_flag".into(), bad_flag),
        ("v3_one_session".into(), v3_one),
        ("v2".into(), old_format(2)),
        ("v1".into(), old_format(1)),
        ("v4_cut".into(), full[..full.len() - 5].to_vec()),
        ("v4_reply_count_huge".into(), huge_count),
        ("unknown_version".into(), bad_version),
    ]
}
