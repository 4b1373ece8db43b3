//! What a client session costs: heap bytes and snapshot bytes per session,
//! measured with a counting allocator around the real state machine. The
//! README's figures come from this test's output
//! (`cargo test --release --test session_memory -- --nocapture`).
//!
//! It also holds the state machine to the README's bound: a session whose
//! window is full of small replies (`VALUE <n>`, `OK`) costs under 16 KiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use raftnode::kv::{Command, KvStore};
use raftnode::sessions::{SessionLimits, REPLY_WINDOW};

/// Counts the bytes held by live allocations.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HELD.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SESSIONS: u64 = 10_000;

/// Heap and snapshot bytes per session, for sessions that each applied
/// `writes` tagged INCRs on their own counter.
fn per_session(writes: u64) -> (f64, f64) {
    let mut kv = KvStore::new();
    kv.apply_at(1, Command::Clock { ms: 1_000 });
    // The counters exist before, so that only the sessions are counted.
    for s in 0..SESSIONS {
        for _ in 0..writes.min(1) {
            kv.apply(Command::Incr {
                key: format!("c{s}").into_bytes(),
            });
        }
    }
    let snapshot_before = kv.snapshot_bytes().len();
    let before = HELD.load(Ordering::Relaxed);
    let limits = SessionLimits {
        ttl_ms: 60_000,
        max: SESSIONS,
    };
    let mut index = 10;
    for s in 0..SESSIONS {
        index += 1;
        let id = index;
        let mut secret = [0x5a; 16];
        secret[..8].copy_from_slice(&u64::to_le_bytes(id));
        kv.apply_at(
            id,
            Command::OpenSession {
                limits,
                secret: Some(secret),
            },
        );
        for seq in 1..=writes {
            index += 1;
            let cmd = Command::Incr {
                key: format!("c{s}").into_bytes(),
            };
            let reply = kv.apply_at(
                index,
                Command::Tagged {
                    session: id,
                    seq,
                    cmd: Box::new(cmd),
                },
            );
            assert!(format!("{reply:?}").starts_with("Value"), "{reply:?}");
        }
    }
    assert_eq!(kv.sessions().len() as u64, SESSIONS);
    let after = HELD.load(Ordering::Relaxed);
    // The counters' values changed length a little; that is noise here.
    let heap = (after - before) as f64 / SESSIONS as f64;
    let snapshot = (kv.snapshot_bytes().len() - snapshot_before) as f64 / SESSIONS as f64;
    (heap, snapshot)
}

#[test]
fn memory_per_session() {
    let (empty_heap, empty_snap) = per_session(0);
    let (full_heap, full_snap) = per_session(REPLY_WINDOW as u64);
    let (over_heap, _) = per_session(3 * REPLY_WINDOW as u64);
    println!(
        "per session ({SESSIONS} sessions): no writes {empty_heap:.0} B heap, \
         {empty_snap:.0} B snapshot; {REPLY_WINDOW} kept INCR replies {full_heap:.0} B heap, \
         {full_snap:.0} B snapshot; after {} writes {over_heap:.0} B heap",
        3 * REPLY_WINDOW
    );
    assert!(full_heap < 16.0 * 1024.0, "{full_heap} B per session");
    assert!(
        over_heap < full_heap * 1.2,
        "the window must bound a session's memory: {over_heap} vs {full_heap}"
    );
}
