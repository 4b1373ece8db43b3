//! WAL benchmark: append-and-fdatasync throughput against raw `pwrite` +
//! `fdatasync` of the same bytes on the same disk, and replay speed on open.
//!
//! Run: `cargo run -p wal --release --example wal_bench [-- --quick]`
//! (or `WAL_BENCH_QUICK=1`); `--replay-only` skips the append part. Works in a temp directory under `/tmp` (or
//! `$WAL_BENCH_DIR`), removed at the end.
//!
//! The raw baseline writes, per operation, exactly as many bytes as the WAL
//! writes for the batch (the entries record as `FORMAT.md` frames it) into a
//! preallocated, fsynced file, wrapping around at its end. WAL and raw
//! operations alternate one by one, so that both see the same disk
//! conditions; the load average is printed because the disk and CPUs may be
//! shared with other work.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wal::{Entry, Options, Wal};

const ENTRY_BYTES: usize = 256;
const RAW_FILE: u64 = 64 << 20;

/// Bytes the WAL writes for one save record of `n` entries of
/// `ENTRY_BYTES` and no hard state (frame header 16, save prefix 16, per
/// entry 13 + data, padded to 8; see FORMAT.md).
fn frame_bytes(n: usize) -> usize {
    (16 + 16 + n * (13 + ENTRY_BYTES) + 7) & !7
}

struct Stats {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            ops: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            lat: Vec::new(),
        }
    }
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.lat.sort_unstable();
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        self.lat[i].as_secs_f64() * 1e6
    }
}

fn append_bench(dir: &Path, batch: usize, ops: u64, rounds: u64) -> (Stats, Stats) {
    let wal_dir = dir.join(format!("wal-{batch}"));
    let (mut w, _) = Wal::open(&wal_dir, Options::default()).expect("open wal");
    let mut entries: Vec<Entry> = (0..batch)
        .map(|i| Entry {
            index: 0,
            term: 1,
            kind: 0,
            data: vec![(i as u8) | 1; ENTRY_BYTES],
        })
        .collect();
    let mut next = 1u64;

    let raw_path = dir.join(format!("raw-{batch}"));
    let raw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw_path)
        .expect("create raw file");
    let zeros = vec![0u8; 1 << 20];
    for off in (0..RAW_FILE).step_by(zeros.len()) {
        raw.write_all_at(&zeros, off).unwrap();
    }
    raw.sync_all().unwrap();
    let raw_buf = vec![0xA5u8; frame_bytes(batch)];
    let mut raw_off = 0u64;

    let (mut ws, mut rs) = (Stats::new(), Stats::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..ops / rounds {
            for (k, e) in entries.iter_mut().enumerate() {
                e.index = next + k as u64;
            }
            let s = Instant::now();
            w.save(None, &entries, true).expect("save");
            ws.lat.push(s.elapsed());
            next += batch as u64;
            ws.ops += 1;
            ws.bytes += frame_bytes(batch) as u64;
        }
        ws.elapsed += t.elapsed();

        let t = Instant::now();
        for _ in 0..ops / rounds {
            if raw_off + raw_buf.len() as u64 > RAW_FILE {
                raw_off = 0;
            }
            let s = Instant::now();
            raw.write_all_at(&raw_buf, raw_off).unwrap();
            raw.sync_data().unwrap();
            rs.lat.push(s.elapsed());
            raw_off += raw_buf.len() as u64;
            rs.ops += 1;
            rs.bytes += raw_buf.len() as u64;
        }
        rs.elapsed += t.elapsed();
    }
    drop(w);
    let _ = fs::remove_dir_all(&wal_dir);
    let _ = fs::remove_file(&raw_path);
    (ws, rs)
}

fn replay_bench(dir: &Path, log_bytes: u64, entry_bytes: usize) {
    let wal_dir = dir.join(format!("replay-{entry_bytes}"));
    let batch = (256 * 1024 / entry_bytes).max(1);
    let mut written = 0u64;
    let mut next = 1u64;
    {
        let (mut w, _) = Wal::open(&wal_dir, Options::default()).expect("open wal");
        let mut entries: Vec<Entry> = (0..batch)
            .map(|i| Entry {
                index: 0,
                term: 1,
                kind: 0,
                data: vec![(i as u8) | 1; entry_bytes],
            })
            .collect();
        while written < log_bytes {
            for (k, e) in entries.iter_mut().enumerate() {
                e.index = next + k as u64;
            }
            w.save(None, &entries, false).expect("save");
            next += batch as u64;
            written += (16 + 16 + batch * (13 + entry_bytes)) as u64;
        }
        w.sync().expect("sync");
    }
    let segs = fs::read_dir(&wal_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wal")
        })
        .count();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let (w, rec) = Wal::open(&wal_dir, Options::default()).expect("reopen");
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(rec.entries.len() as u64, next - 1);
    let n = rec.entries.len();
    drop(rec);
    drop(w);
    println!(
        "replay  {:>5} MiB log, {entry_bytes:>4}-byte entries, {segs:>3} segments: \
         open took {:>7.1} ms = {:>6.0} MB/s, {:>5.2} M entries/s \
         (CPU {:>6.1} ms on all threads = {:>6.0} MB per CPU-second)",
        written >> 20,
        elapsed * 1e3,
        written as f64 / elapsed / 1e6,
        n as f64 / elapsed / 1e6,
        cpu * 1e3,
        written as f64 / cpu / 1e6,
    );
    let _ = fs::remove_dir_all(&wal_dir);
}

fn main() {
    let quick =
        std::env::args().any(|a| a == "--quick") || std::env::var_os("WAL_BENCH_QUICK").is_some();
    let base =
        std::env::var_os("WAL_BENCH_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let dir = base.join(format!("wal-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let _guard = Cleanup(dir.clone());
    let load = || fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load().trim());
    println!(
        "wal_bench{} in {} ({}-byte entries, default options: 64 MiB segments, background preallocation)",
        if quick { " --quick" } else { "" },
        dir.display(),
        ENTRY_BYTES
    );
    println!(
        "append+fdatasync  {:>5} {:>9} {:>8} {:>9} {:>9} | {:>9} {:>8} {:>9} {:>9} | {:>5} {:>5}",
        "batch",
        "wal op/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "raw op/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "ratio",
        "p50"
    );
    let replay_only = std::env::args().any(|a| a == "--replay-only");
    for (batch, ops) in [(1usize, 10_000u64), (16, 10_000), (256, 4_000)] {
        if replay_only {
            break;
        }
        let ops = if quick { ops / 10 } else { ops };
        // One WAL op, then one raw op, and so on: both see the same disk.
        let (mut w, mut r) = append_bench(&dir, batch, ops, ops);
        println!(
            "append+fdatasync  {batch:>5} {:>9.0} {:>8.1} {:>9.0} {:>9.0} | {:>9.0} {:>8.1} {:>9.0} {:>9.0} | {:>5.2} {:>5.2}",
            w.ops_per_s(),
            w.mb_per_s(),
            w.pct(0.5),
            w.pct(0.99),
            r.ops_per_s(),
            r.mb_per_s(),
            r.pct(0.5),
            r.pct(0.99),
            w.ops_per_s() / r.ops_per_s(),
            r.pct(0.5) / w.pct(0.5)
        );
    }
    let log = if quick { 64 << 20 } else { 1 << 30 };
    replay_bench(&dir, log, 256);
    replay_bench(&dir, log, 4096);
    println!("load average at end: {}", load().trim());
    println!("ratio = wal op/s / raw op/s; p50 = raw p50 / wal p50 (1.00 = as fast as raw)");
}

/// User + system CPU time of this process so far (all threads), from
/// `/proc/self/stat` (clock ticks, assumed 100 per second); 0 if unavailable.
fn cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Removes the bench directory however `main` ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
