//! WAL recovery (`wal::Wal::open`) over a damaged directory.
//!
//! A small but complete WAL directory is built once per process with the
//! crate's public API: segments of which the first are released, two snapshots, both
//! entry kinds, a hard state, in 4 KiB segments so that each run is cheap.
//! Its files are kept in memory. Each input is then read as a list of
//! mutations ([`Op`]) applied to a fresh copy of those files, written to a
//! scratch directory on tmpfs (`/dev/shm`, reused by the process), and
//! the WAL is opened there.
//!
//! Promises checked:
//! - `open` returns `Ok` or a typed `Err` whose message formats, and never
//!   panics, allocates beyond [`ALLOC_LIMIT`] or hangs;
//! - when it returns `Ok`, the log it recovered keeps the documented shape
//!   (`Recovered::entries`: contiguous, first at snapshot index + 1), and
//!   the snapshot, if any, streams to its end without a panic;
//! - the undamaged directory (the empty input) recovers exactly what was
//!   written;
//! - on the same damaged files, `open` with `OnDamage::Salvage` always
//!   returns `Ok`, with the same shape, and a [`Damage`](wal::Damage) whose
//!   `kept_last_index` is the recovered log's end whenever the default
//!   `OnDamage::Refuse` failed; a reopen (with `Refuse`) recovers the same
//!   state and still reports the damage, as pending, until
//!   `Wal::clear_damage`, after which it reports none.
//!
//! Damage can legitimately pass the CRCs (the fuzzer sees the comparison
//! and can write the expected CRC), so a recovered entry is not compared
//! with what was written: the promise there is the shape, not the content.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use wal::{Entry, HardState, OnDamage, Options, Recovered, SnapshotMeta, Wal};

/// Segment recovery maps files and reads snapshots through a 256 KiB
/// buffer; preallocating a segment writes zeros from a 1 MiB buffer.
pub const ALLOC_LIMIT: usize = 8 << 20;

/// Segment size of the template: the smallest the WAL accepts.
const SEGMENT: u64 = 4096;

/// The mutations an input is read as, one after another: an opcode byte,
/// a file byte (an index into the template's files, sorted by path, modulo
/// their number), a `u16` offset (modulo the file's length), then the
/// opcode's arguments. Bytes that run out end the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `xor u8`: flips bits of one byte.
    Flip = 0,
    /// Cuts the file at the offset (modulo length + 1).
    Truncate = 1,
    /// `n u8, n bytes`: appends garbage.
    Append = 2,
    /// `n u16`: zeroes up to `n` bytes from the offset.
    Zero = 3,
    /// `n u8, n bytes`: overwrites from the offset, within the file.
    Write = 4,
    /// Deletes the file.
    Delete = 5,
}

const OPS: [Op; 6] = [
    Op::Flip,
    Op::Truncate,
    Op::Append,
    Op::Zero,
    Op::Write,
    Op::Delete,
];

fn opts() -> Options {
    Options {
        segment_size: SEGMENT,
        keep_snapshots: 2,
        preallocate_in_background: false,
        remove_in_background: false,
        on_damage: OnDamage::Refuse,
    }
}

fn salvage_opts() -> Options {
    Options {
        on_damage: OnDamage::Salvage,
        ..opts()
    }
}

/// The template: its files (relative path, bytes), sorted by path, and what
/// opening it recovers.
struct Template {
    files: Vec<(PathBuf, Vec<u8>)>,
    expected: Recovered,
}

struct Scratch {
    template: Template,
    work: PathBuf,
}

static SCRATCH: OnceLock<Mutex<Scratch>> = OnceLock::new();

const PREFIX: &str = "raftnode-fuzz-wal-";

/// `/dev/shm/raftnode-fuzz-wal-<pid>` (or under the temp dir without a
/// `/dev/shm`); those left by dead processes are removed first.
fn scratch_root() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    if let Ok(dir) = fs::read_dir(&base) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    base.join(format!("{PREFIX}{}", std::process::id()))
}

/// Removes this process's scratch directory (the corpus test calls it; the
/// fuzzer exits without cleaning up, and the next run removes it).
pub fn cleanup() {
    let _ = fs::remove_dir_all(scratch_root());
}

fn entry(index: u64, term: u64) -> Entry {
    let len = 20 + (index * 37 % 90) as usize;
    Entry {
        index,
        term,
        kind: u8::from(index.is_multiple_of(10)),
        data: (0..len)
            .map(|i| (index as u8).wrapping_mul(31) ^ i as u8)
            .collect(),
    }
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        voters: vec![1, 2, 3],
        learners: vec![4],
    }
}

fn build_template(dir: &Path) -> Template {
    let _ = fs::remove_dir_all(dir);
    let (mut w, _) = Wal::open(dir, opts()).expect("create the template WAL");
    let hs = |term, commit| HardState {
        term,
        vote: 1,
        commit,
    };
    for i in 1..=60 {
        w.save(Some(&hs(1, i - 1)), &[entry(i, 1)], false).unwrap();
    }
    w.save_snapshot(&meta(40, 1), b"state machine at 40")
        .unwrap();
    let batch: Vec<Entry> = (61..=75).map(|i| entry(i, 2)).collect();
    w.save(Some(&hs(2, 60)), &batch, true).unwrap();
    w.save_snapshot(&meta(70, 2), &[0x5a; 300]).unwrap();
    w.release_to(40).unwrap();
    // Entries from 74 on overwritten in term 3, as a new leader would.
    for i in 74..=100 {
        w.save(Some(&hs(3, 73)), &[entry(i, 3)], i == 100).unwrap();
    }
    drop(w);

    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    files.sort();
    let (w, expected) = Wal::open(dir, opts()).expect("reopen the template WAL");
    drop(w);
    assert_eq!(expected.entries.first().map(|e| e.index), Some(71));
    assert_eq!(expected.entries.last().map(|e| e.index), Some(100));
    let names: Vec<_> = files.iter().map(|(p, b)| (p, b.len())).collect();
    assert!(expected.snapshot.is_some() && files.len() >= 5, "{names:?}");
    Template { files, expected }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            collect(root, &path, out);
        } else if e.file_name() != "LOCK" {
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            out.push((rel, fs::read(&path).unwrap()));
        }
    }
}

fn scratch() -> &'static Mutex<Scratch> {
    SCRATCH.get_or_init(|| {
        let root = scratch_root();
        let template = build_template(&root.join("template"));
        Mutex::new(Scratch {
            template,
            work: root.join("work"),
        })
    })
}

/// The template's files with the input's mutations applied (`None`: deleted).
fn mutate(template: &[(PathBuf, Vec<u8>)], mut input: &[u8]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut files: Vec<(PathBuf, Option<Vec<u8>>)> = template
        .iter()
        .map(|(p, b)| (p.clone(), Some(b.clone())))
        .collect();
    let mut take = |n: usize| -> Option<&[u8]> {
        if input.len() < n {
            return None;
        }
        let (head, tail) = input.split_at(n);
        input = tail;
        Some(head)
    };
    while let Some(head) = take(4) {
        let op = OPS[head[0] as usize % OPS.len()];
        let file = &mut files[head[1] as usize % template.len()].1;
        let at = u16::from_le_bytes([head[2], head[3]]) as usize;
        let arg: &[u8] = match op {
            Op::Flip => match take(1) {
                Some(x) => x,
                None => break,
            },
            Op::Zero => match take(2) {
                Some(n) => n,
                None => break,
            },
            Op::Append | Op::Write => match take(1).and_then(|n| take(n[0] as usize)) {
                Some(b) => b,
                None => break,
            },
            Op::Truncate | Op::Delete => &[],
        };
        let Some(bytes) = file else {
            continue; // deleted earlier
        };
        let len = bytes.len();
        let from = at % len.max(1);
        match op {
            Op::Flip if len > 0 => bytes[from] ^= arg[0],
            Op::Truncate => bytes.truncate(at % (len + 1)),
            Op::Append => bytes.extend_from_slice(arg),
            Op::Zero => {
                let to = (from + u16::from_le_bytes([arg[0], arg[1]]) as usize).min(len);
                bytes[from.min(to)..to].fill(0);
            }
            Op::Write => {
                let to = (from + arg.len()).min(len);
                bytes[from.min(to)..to].copy_from_slice(&arg[..to - from.min(to)]);
            }
            Op::Delete => *file = None,
            Op::Flip => {}
        }
    }
    files
}

/// Makes `work` hold exactly `files` (and the lock file). Cheaper than
/// deleting and recreating the whole directory at every run: only what the
/// last run left behind beyond the template is removed.
fn restore(work: &Path, files: &[(PathBuf, Option<Vec<u8>>)]) {
    fs::create_dir_all(work.join("snap")).expect("create the scratch dir");
    for dir in [work.to_path_buf(), work.join("snap")] {
        for e in fs::read_dir(&dir).expect("list the scratch dir").flatten() {
            let path = e.path();
            let rel = path.strip_prefix(work).unwrap_or(&path);
            let known = rel == Path::new("LOCK")
                || rel == Path::new("snap")
                || files.iter().any(|(p, b)| p == rel && b.is_some());
            if !known {
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
            }
        }
    }
    for (rel, bytes) in files {
        if let Some(bytes) = bytes {
            fs::write(work.join(rel), bytes).expect("write a scratch file");
        }
    }
}

pub fn check(input: &[u8]) {
    let scratch = scratch().lock().unwrap_or_else(|e| e.into_inner());
    let work = &scratch.work;
    let files = mutate(&scratch.template.files, input);
    restore(work, &files);
    let refused = match Wal::open(work, opts()) {
        Ok((w, rec)) => {
            if input.is_empty() {
                assert_eq!(rec, scratch.template.expected, "the undamaged WAL");
            }
            check_shape(&w, &rec);
            false
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            true
        }
    };

    // The same damage, salvaged.
    restore(work, &files);
    let (w, rec) = match Wal::open(work, salvage_opts()) {
        Ok(opened) => opened,
        Err(e) => panic!("salvage failed: {e}"),
    };
    check_shape(&w, &rec);
    let last = w.last_index();
    match &rec.damage {
        Some(d) => {
            assert!(!d.pending, "damage found now is not pending");
            assert_eq!(d.kept_last_index, last, "{d:?}");
            assert!(d.max_term_seen >= rec.hard_state.term, "{d:?}");
            if d.snapshot_lost {
                assert!(rec.snapshot.is_none() && rec.entries.is_empty(), "{d:?}");
            }
        }
        None => assert!(!refused, "Refuse failed where Salvage saw no damage"),
    }
    drop(w);

    // The salvaged directory opens as it was left, damage still reported.
    let (mut w, again) = match Wal::open(work, opts()) {
        Ok(opened) => opened,
        Err(e) => panic!("reopen after salvage failed: {e}"),
    };
    assert_eq!(again.entries, rec.entries, "reopen after salvage");
    assert_eq!(again.snapshot, rec.snapshot, "reopen after salvage");
    assert_eq!(again.hard_state, rec.hard_state, "reopen after salvage");
    assert_eq!(again.damage.is_some(), rec.damage.is_some());
    if let Some(d) = &again.damage {
        assert!(d.pending, "{d:?}");
        w.clear_damage().expect("clear the damage marker");
        drop(w);
        match Wal::open(work, opts()) {
            Ok((_, cleared)) => assert!(cleared.damage.is_none(), "{:?}", cleared.damage),
            Err(e) => panic!("reopen after clear_damage failed: {e}"),
        }
    }
}

/// The log shape `Recovered` promises, and a snapshot that streams.
fn check_shape(w: &Wal, rec: &Recovered) {
    let start = rec.snapshot.as_ref().map_or(1, |s| s.index + 1);
    for (k, e) in rec.entries.iter().enumerate() {
        assert_eq!(e.index, start + k as u64, "recovered log is not contiguous");
    }
    let last = rec.entries.last().map_or(start - 1, |e| e.index);
    assert_eq!(w.last_index(), last);
    if let Ok(Some(mut r)) = w.snapshot_reader() {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

/// The undamaged directory; then, for every file of the template, each
/// kind of damage at the places that matter (magic, first record, middle,
/// end).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let files: Vec<String> = {
        let s = scratch().lock().unwrap_or_else(|e| e.into_inner());
        s.template
            .files
            .iter()
            .map(|(p, _)| match p.parent() {
                Some(d) if d == Path::new("snap") => "snapshot",
                _ => "segment",
            })
            .scan((0, 0), |(segs, snaps), kind| {
                let n = if kind == "segment" { segs } else { snaps };
                *n += 1;
                Some(format!("{kind}{n}"))
            })
            .collect()
    };
    let mut out = vec![("undamaged".to_string(), Vec::new())];
    for (f, name) in files.iter().enumerate() {
        let f = f as u8;
        let op = |op: Op, at: u16, args: &[u8]| {
            let mut v = vec![op as u8, f];
            v.extend_from_slice(&at.to_le_bytes());
            v.extend_from_slice(args);
            v
        };
        let cases = [
            ("flip_magic", op(Op::Flip, 0, &[0x01])),
            ("flip_header_crc", op(Op::Flip, 32, &[0x80])),
            ("flip_first_record_length", op(Op::Flip, 40, &[0x04])),
            ("flip_middle", op(Op::Flip, 1000, &[0xff])),
            ("flip_last_byte", op(Op::Flip, u16::MAX, &[0x10])),
            ("truncate_half", op(Op::Truncate, 2048, &[])),
            ("truncate_empty", op(Op::Truncate, 0, &[])),
            (
                "append_garbage",
                op(Op::Append, 0, &[8, 1, 2, 3, 4, 5, 6, 7, 8]),
            ),
            ("zero_records", op(Op::Zero, 40, &[0, 2])),
            (
                "write_over_record",
                op(Op::Write, 48, &[4, 0xde, 0xad, 0xbe, 0xef]),
            ),
            ("delete", op(Op::Delete, 0, &[])),
        ];
        for (what, input) in cases {
            out.push((format!("{name}-{what}"), input));
        }
    }
    out
}
