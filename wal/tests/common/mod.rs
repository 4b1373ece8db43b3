//! Helpers shared by the integration tests: temp directories, a seeded PRNG,
//! and an independent reader of the record format written from `FORMAT.md`
//! (so the tests check the document as well as the code).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use wal::{Entry, HardState, Options};

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Under `$WAL_TEST_TMPDIR` if set, else `/dev/shm` if present (the
    /// brute-force tests reopen the log thousands of times, and each cut and
    /// repair fsyncs; on tmpfs that is free), else the system temp dir.
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = match std::env::var_os("WAL_TEST_TMPDIR") {
            Some(d) => PathBuf::from(d),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let p = base.join(format!(
            "wal-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// SplitMix64: tiny, seeded, good enough to drive tests.
///
/// The same algorithm as the core's `raftnode::raft::Rng`, which the rest of
/// the workspace's tests use (through `raftnode-testkit`). It is written
/// again here on purpose: `wal` is a dependency of `raftnode`, and its tests
/// should not build the node they sit under, nor the test crate on top of
/// it, for ten lines. The seed transform (xor with `0x5DEE_CE66_D1CE_4E5B`)
/// and the draws stay as they are, so the seeds in these tests replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.next_u64() % 100 < pct
    }

    /// `len` bytes, never all zero for len > 0.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|_| self.next_u64() as u8).collect();
        if let Some(b) = v.first_mut() {
            *b |= 1;
        }
        v
    }
}

/// Options with a small segment size, inline preallocation off by default.
pub fn opts(segment_size: u64) -> Options {
    Options {
        segment_size,
        ..Options::default()
    }
}

/// An entry with `len` random bytes.
pub fn entry(rng: &mut Rng, index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        kind: (index % 3) as u8,
        data: rng.bytes(len),
    }
}

/// Segment files in `dir`, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// Segment files set aside and side files in `dir`: everything a test that
/// restores a pristine directory must remove besides the segments.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut v = files_matching(dir, ".torn-");
    v.extend(files_matching(dir, ".corrupt"));
    v.extend(files_matching(dir, "DAMAGE"));
    v
}

/// Files in `dir` whose name contains `pat`.
pub fn files_matching(dir: &Path, pat: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(pat))
        .collect();
    v.sort();
    v
}

/// One record as `FORMAT.md` describes it.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Offset of the frame in its segment.
    pub offset: usize,
    /// Total size including padding.
    pub len: usize,
    /// Offset just past the payload (padding starts here).
    pub payload_end: usize,
    /// What the record does, in order (a save record holds entries, then a
    /// hard state).
    pub records: Vec<Record>,
}

#[derive(Clone, Debug)]
pub enum Record {
    Entries(Vec<Entry>),
    HardState(HardState),
    Snapshot { index: u64, term: u64, reset: bool },
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// CRC-15/CAN (polynomial 0x4599, initial value 0, most significant bit
/// first, no final xor), bit by bit as `FORMAT.md` defines it.
pub fn crc15(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        for i in (0..8).rev() {
            let feed = u16::from((b >> i) & 1) ^ ((crc >> 14) & 1);
            crc = (crc << 1) & 0x7FFF;
            if feed == 1 {
                crc ^= 0x4599;
            }
        }
    }
    crc
}

/// What a well-formed length word says: body length, padding, and the
/// `TEAR_AMBIGUOUS` flag.
#[derive(Clone, Copy, Debug)]
pub struct Word {
    pub body: usize,
    pub pad: usize,
    pub ambiguous: bool,
}

/// Parses a length word of a segment of format `version`, per `FORMAT.md`.
pub fn parse_word(word: u64, version: u32) -> Option<Word> {
    let body = (word & 0xFFFF_FFFF) as usize;
    let pad = (word >> 56) as usize;
    if (word >> 48) & 0xFF != 0x5A || body < 8 || pad != (8 - body % 8) % 8 {
        return None;
    }
    let high = (word >> 32) & 0xFFFF;
    let ambiguous = match version {
        1 if high == 0 => false,
        2 => {
            let check = high >> 1;
            let rest = word & !(0x7FFF << 33);
            if u64::from(crc15(&rest.to_le_bytes())) != check {
                return None;
            }
            high & 1 == 1
        }
        _ => return None,
    };
    Some(Word {
        body,
        pad,
        ambiguous,
    })
}

/// The format version in a segment's header.
pub fn version(seg: &[u8]) -> u32 {
    u32_at(seg, 8)
}

/// Whether the bad record at `end` of a last segment is torn, by the rule of
/// `FORMAT.md` ("Torn tail or corruption"), written from the document
/// without looking at the crate: sectors are the 512-byte chunks aligned to
/// the file offset. The caller knows `end` is where the valid records stop
/// and that some byte after it is not zero.
pub fn is_torn(seg: &[u8], end: usize) -> bool {
    let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    if seg.len() - end < 8 {
        return false;
    }
    let word = u64_at(seg, end);
    if word == 0 {
        let sector_end = ((end / 512 + 1) * 512).min(seg.len());
        // (and no valid frame after it: not checked here, the tests that use
        // this never leave one)
        return zero(&seg[end..sector_end]);
    }
    let Some(w) = parse_word(word, version(seg)) else {
        return false;
    };
    let r_end = end + 8 + w.body + w.pad;
    if r_end > seg.len() || w.ambiguous || !zero(&seg[r_end..]) {
        return false;
    }
    let mut s = end;
    while s < r_end {
        let e = ((s / 512 + 1) * 512).min(r_end);
        if zero(&seg[s..e]) {
            return true;
        }
        s = e;
    }
    false
}

/// A frame of record type `kind` around `payload`, in format version 1
/// (length-word bits 32..47 zero), written from `FORMAT.md`.
pub fn frame_v1(kind: u8, payload: &[u8]) -> Vec<u8> {
    let body = 8 + payload.len() as u64;
    let pad = (8 - body % 8) % 8;
    let word = body | (0x5A << 48) | (pad << 56);
    let mut f = Vec::new();
    f.extend_from_slice(&word.to_le_bytes());
    f.extend_from_slice(&[0u8; 4]);
    f.extend_from_slice(&[kind, 0, 0, 0]);
    f.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new();
    h.update(&f[0..8]);
    h.update(&f[12..]);
    let crc = h.finalize();
    f[8..12].copy_from_slice(&crc.to_le_bytes());
    f.resize(f.len() + pad as usize, 0);
    f
}

/// A save record framed in format version 1.
pub fn save_record_v1(hs: Option<&HardState>, entries: &[Entry]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&u32::from(hs.is_some()).to_le_bytes());
    payload.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    payload.extend_from_slice(&entries.first().map_or(0, |e| e.index).to_le_bytes());
    if let Some(h) = hs {
        for x in [h.term, h.vote, h.commit] {
            payload.extend_from_slice(&x.to_le_bytes());
        }
    }
    for e in entries {
        payload.extend_from_slice(&e.term.to_le_bytes());
        payload.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        payload.push(e.kind);
        payload.extend_from_slice(&e.data);
    }
    frame_v1(1, &payload)
}

/// A version-1 segment of `size` bytes holding `records` (already framed).
pub fn segment_v1(seq: u64, first_index: u64, size: usize, records: &[Vec<u8>]) -> Vec<u8> {
    let mut seg = vec![0u8; size];
    seg[0..8].copy_from_slice(b"RNWALSEG");
    seg[8..12].copy_from_slice(&1u32.to_le_bytes());
    seg[16..24].copy_from_slice(&seq.to_le_bytes());
    seg[24..32].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&seg[0..32]);
    seg[32..36].copy_from_slice(&crc.to_le_bytes());
    let mut off = 40;
    for r in records {
        seg[off..off + r.len()].copy_from_slice(r);
        off += r.len();
    }
    seg
}

/// Reads the frames of a well-formed segment, following `FORMAT.md`.
pub fn frames(seg: &[u8]) -> Vec<Frame> {
    assert_eq!(&seg[0..8], b"RNWALSEG");
    let v = version(seg);
    let mut out = Vec::new();
    let mut off = 40;
    while off + 8 <= seg.len() {
        let word = u64_at(seg, off);
        if word == 0 {
            break;
        }
        let w = parse_word(word, v)
            .unwrap_or_else(|| panic!("length word {word:#018x} at {off} (version {v})"));
        let (body, pad) = (w.body, w.pad);
        let len = 8 + body + pad;
        assert_eq!(len % 8, 0);
        let payload = &seg[off + 16..off + 8 + body];
        let crc = {
            let mut h = crc32fast::Hasher::new();
            h.update(&seg[off..off + 8]);
            h.update(&seg[off + 12..off + 8 + body]);
            h.finalize()
        };
        assert_eq!(crc, u32_at(seg, off + 8), "crc at {off}");
        let records = match seg[off + 12] {
            1 => {
                let flags = u32_at(payload, 0);
                let count = u32_at(payload, 4) as u64;
                let first = u64_at(payload, 8);
                let mut pos = 16;
                let hs = (flags & 1 == 1).then(|| {
                    pos += 24;
                    HardState {
                        term: u64_at(payload, 16),
                        vote: u64_at(payload, 24),
                        commit: u64_at(payload, 32),
                    }
                });
                let mut es = Vec::new();
                for i in 0..count {
                    let term = u64_at(payload, pos);
                    let n = u32_at(payload, pos + 8) as usize;
                    let kind = payload[pos + 12];
                    es.push(Entry {
                        index: first + i,
                        term,
                        kind,
                        data: payload[pos + 13..pos + 13 + n].to_vec(),
                    });
                    pos += 13 + n;
                }
                assert_eq!(pos, payload.len());
                let mut rs = Vec::new();
                if !es.is_empty() {
                    rs.push(Record::Entries(es));
                }
                rs.extend(hs.map(Record::HardState));
                rs
            }
            2 => vec![Record::Snapshot {
                index: u64_at(payload, 0),
                term: u64_at(payload, 8),
                reset: u32_at(payload, 16) & 1 == 1,
            }],
            t => panic!("unknown type {t}"),
        };
        out.push(Frame {
            offset: off,
            len,
            payload_end: off + 8 + body,
            records,
        });
        off += len;
    }
    out
}

/// Applies records with raft's log rules (no snapshots): the expected
/// recovery of a log made of `records`.
pub fn apply(records: &[Record]) -> (HardState, Vec<Entry>) {
    let mut hs = HardState::default();
    let mut log: Vec<Entry> = Vec::new();
    for r in records {
        match r {
            Record::Entries(es) => {
                let first = es[0].index;
                log.retain(|e| e.index < first);
                log.extend(es.iter().cloned());
            }
            Record::HardState(h) => hs = *h,
            Record::Snapshot { .. } => panic!("apply() does not model snapshots"),
        }
    }
    (hs, log)
}
