//! mvcc_bench: what the multi-version store (`src/mvcc/`) costs, next to
//! today's state machine (`raftnode::kv::KvStore`, a map of the latest
//! values in 4,096 copy-on-write hash shards).
//!
//! - puts per second of 8-byte keys and 256-byte values, one revision
//!   each, into a fresh store; and the same with a live view taken every
//!   1,000 puts (the snapshot writer's case: the previous view is dropped
//!   when the next is taken);
//! - a range read of 1,000 keys at a past revision, wall and CPU time;
//! - heap bytes per retained revision, counted by a counting allocator, for
//!   N revisions of distinct keys and for N overwrites of the same 1,000
//!   keys;
//! - compaction: versions dropped per second.
//!
//! The store module is not public yet (it is not wired in), so this file
//! compiles it in itself: it depends on nothing else in the crate.
//!
//! Run with `cargo run --release --example mvcc_bench`; `MVCC_BENCH_N`
//! sets N (default 1,000,000). CPU time is the thread's, from
//! `/proc/thread-self/schedstat`, since two other builds may share the
//! machine's two cores.

#[allow(dead_code, unused_imports)]
#[path = "../src/mvcc/mod.rs"]
mod mvcc;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use mvcc::{RangeRequest, Store};
use raftnode::kv::{Command, KvStore};

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

const VALUE: usize = 256;
const VIEW_EVERY: u64 = 1_000;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

/// Nanoseconds this thread has run on a CPU; `None` off Linux.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Wall and CPU seconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, Option<f64>) {
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let out = f();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1e9),
        _ => None,
    };
    (out, wall, cpu)
}

/// Key `i` of a spread-out sequence of distinct 8-byte keys.
fn key(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![0u8; VALUE];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn rate(n: u64, secs: f64) -> String {
    format!("{:>10.0}/s", n as f64 / secs)
}

fn cpu_rate(n: u64, cpu: Option<f64>) -> String {
    match cpu {
        Some(c) => format!("{:>10.0}/CPU-s", n as f64 / c),
        None => "CPU unknown".into(),
    }
}

fn puts_mvcc(n: u64, keys: u64, views: bool) -> Store {
    let mut s = Store::new();
    let mut view = None;
    for i in 0..n {
        let mut b = s.begin();
        b.put(&key(i % keys), value(i), 0).expect("valid put");
        b.commit();
        if views && i % VIEW_EVERY == 0 {
            view = Some(s.view());
        }
    }
    drop(view);
    s
}

fn puts_kv(n: u64, keys: u64, views: bool) -> KvStore {
    let mut kv = KvStore::new();
    let mut view = None;
    for i in 0..n {
        kv.apply(Command::Put {
            key: key(i % keys).to_vec(),
            value: value(i),
        });
        if views && i % VIEW_EVERY == 0 {
            view = Some(kv.view());
        }
    }
    drop(view);
    kv
}

fn main() {
    let n: u64 = std::env::var("MVCC_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!("mvcc_bench: N = {n}, 8-byte keys, {VALUE}-byte values, one revision per put");

    println!("\nputs of N distinct keys into a new store");
    for views in [false, true] {
        let label = if views {
            "with a view every 1,000"
        } else {
            "no view"
        };
        let (kv, wall, cpu) = timed(|| puts_kv(n, n, views));
        println!(
            "  KvStore  {label:<24} {}  {}",
            rate(n, wall),
            cpu_rate(n, cpu)
        );
        drop(kv);
        let (s, wall, cpu) = timed(|| puts_mvcc(n, n, views));
        println!(
            "  mvcc     {label:<24} {}  {}",
            rate(n, wall),
            cpu_rate(n, cpu)
        );
        drop(s);
    }
    println!("\nputs overwriting the same 1,000 keys (N revisions retained)");
    for views in [false, true] {
        let label = if views {
            "with a view every 1,000"
        } else {
            "no view"
        };
        let (kv, wall, cpu) = timed(|| puts_kv(n, 1_000, views));
        println!(
            "  KvStore  {label:<24} {}  {}",
            rate(n, wall),
            cpu_rate(n, cpu)
        );
        drop(kv);
        let (s, wall, cpu) = timed(|| puts_mvcc(n, 1_000, views));
        println!(
            "  mvcc     {label:<24} {}  {}",
            rate(n, wall),
            cpu_rate(n, cpu)
        );
        drop(s);
    }

    println!("\nheap bytes per retained revision ({VALUE}-byte value, 8-byte key)");
    for (label, keys) in [
        ("N distinct keys", n),
        ("N overwrites of 1,000 keys", 1_000),
    ] {
        let before = held();
        let s = puts_mvcc(n, keys, false);
        let per = (held() - before) as f64 / n as f64;
        let versions = s.sizes().versions;
        println!(
            "  mvcc     {label:<28} {per:>7.0} B/revision ({versions} versions, {:.0} MiB)",
            (held() - before) as f64 / (1 << 20) as f64
        );
        drop(s);
        let before = held();
        let kv = puts_kv(n, keys, false);
        let per = (held() - before) as f64 / kv.len() as f64;
        println!(
            "  KvStore  {label:<28} {per:>7.0} B/live key (latest only, {} keys)",
            kv.len()
        );
        drop(kv);
    }

    println!("\nrange read of 1,000 keys (of 100,000, each written 4 times)");
    // Sequential keys, so that [start, start + 1,000) holds 1,000 keys: a
    // range counts every key in it, limit or not (as etcd's does).
    let keys = 100_000u64;
    let mut s = Store::new();
    for i in 0..4 * keys {
        let mut b = s.begin();
        b.put(&(i % keys).to_be_bytes(), value(i), 0)
            .expect("valid put");
        b.commit();
    }
    let reads = 1_000u64;
    // At the revision after the second round every key's newest version is
    // too new, so each key costs a seek; at the current one, a step.
    for (label, rev) in [
        ("at a past revision", 2 * keys + 1),
        ("at the current revision", 0),
    ] {
        let (found, wall, cpu) = timed(|| {
            let mut found = 0usize;
            for i in 0..reads {
                let start = i * 97 % (keys - 1_000);
                let (from, to) = (start.to_be_bytes(), (start + 1_000).to_be_bytes());
                let req = RangeRequest {
                    key: &from,
                    end: &to,
                    rev,
                    ..Default::default()
                };
                found += s
                    .range(&req)
                    .expect("read at a retained revision")
                    .kvs
                    .len();
            }
            found
        });
        let per_read = |t: f64| t / reads as f64 * 1e6;
        println!(
            "  mvcc     {label:<24} {:>6.0} us wall, {} per read of {} keys",
            per_read(wall),
            cpu.map_or("CPU unknown".into(), |c| format!(
                "{:.0} us CPU",
                per_read(c)
            )),
            found / reads as usize
        );
    }

    println!("\ncompaction");
    let total = s.sizes().versions;
    let cur = s.current_revision();
    let (dropped, wall, cpu) = timed(|| s.compact(cur).expect("compact at current"));
    println!(
        "  mvcc     {} versions dropped of {total}: {} wall, {}",
        dropped,
        rate(dropped, wall),
        cpu_rate(dropped, cpu)
    );
    drop(s);
    let mut s = puts_mvcc(n, 1_000, false);
    let cur = s.current_revision();
    let (dropped, wall, cpu) = timed(|| {
        let mut dropped = 0;
        let mut at = s.compacted_revision() + 10_000;
        while at <= cur {
            dropped += s.compact(at).expect("compact forward");
            at += 10_000;
        }
        dropped
    });
    println!(
        "  mvcc     {} versions dropped in steps of 10,000 revisions (1,000 hot keys): {} wall, {}",
        dropped,
        rate(dropped, wall),
        cpu_rate(dropped, cpu)
    );
    let (_, wall, _) = timed(|| {
        for _ in 0..1_000 {
            std::hint::black_box(s.view());
        }
    });
    println!("  mvcc     a view costs {:.0} ns", wall / 1_000.0 * 1e9);
    drop(s);
    let kv = puts_kv(n, 1_000, false);
    let (_, wall, _) = timed(|| {
        for _ in 0..1_000 {
            std::hint::black_box(kv.view());
        }
    });
    println!("  KvStore  a view costs {:.0} ns", wall / 1_000.0 * 1e9);
}
