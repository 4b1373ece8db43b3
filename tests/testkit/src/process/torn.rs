//! Torn WAL tails: damage that a crash can legitimately leave behind.
//!
//! Only bytes that were never covered by an fdatasync may be damaged, since
//! anything synced may already have been promised to someone. And they are
//! damaged the way a crash damages them (the layout is in `wal/FORMAT.md`):
//! segments are preallocated with zeros, a 512-byte sector is written whole
//! or not at all, and every append is one record. So a torn write is the
//! record with some of its sectors still zero, never garbage, never a file
//! cut short. Anything else is corruption, which the WAL rightly reports as
//! damage; the disk nemesis (`damage.rs`) does that on purpose.
//!
//! - [`tear_next_record`], for any node killed with SIGKILL: after the last
//!   valid frame of the newest segment is where the next, never
//!   acknowledged, write would have gone. A crash in it leaves either the
//!   record's first sector unwritten and a later one written, or the first
//!   sector written and a later one not.
//! - [`tear_unsynced`], for a node that aborted at the `before_wal_fsync`
//!   failpoint (failpoint build): the node printed the segment, offset and
//!   length of the write whose fdatasync never ran; some of that write's
//!   sectors, and nothing else, are zeroed.
//!
//! [`power_cut`] is for a node known to skip its fdatasyncs (the test-only
//! `RAFTNODE_DEBUG_ACK_BEFORE_FSYNC` switch): nothing it wrote after its
//! bootstrap was ever synced, so a power cut may keep any prefix of it.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::rng::Rng;

const HEADER: u64 = 40;
const TAG: u64 = 0x5A;
const SECTOR: u64 = 512;
/// Bit 32 of a version-2 length word: the record has a sector that one
/// flipped bit could make look unwritten, so a tear of it is damage.
const TEAR_AMBIGUOUS: u64 = 1 << 32;

/// The newest segment of the WAL in `data_dir`.
pub fn newest_segment(data_dir: &Path) -> Option<PathBuf> {
    let wal = data_dir.join("wal");
    let mut segs: Vec<PathBuf> = fs::read_dir(&wal)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop()
}

/// Offsets of the frames of a segment, in order, and the end of the data.
/// Frames are followed by their length words only; CRCs are not checked
/// (recovery does that), so this is a reading of the layout, not a verdict.
pub fn frames(bytes: &[u8]) -> (Vec<u64>, u64) {
    let mut off = HEADER;
    let mut out = Vec::new();
    while off + 8 <= bytes.len() as u64 {
        let o = off as usize;
        let word = u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        if word == 0 || (word >> 48) & 0xFF != TAG {
            break;
        }
        let body = word & 0xFFFF_FFFF;
        let pad = word >> 56;
        let total = 8 + body + pad;
        if off + total > bytes.len() as u64 {
            break;
        }
        out.push(off);
        off += total;
    }
    (out, off)
}

/// What a tear did, for the report.
#[derive(Debug)]
pub struct Tear {
    pub segment: PathBuf,
    pub how: String,
    /// Some of the record's sectors survived and some did not: the WAL
    /// must find a torn tail there and cut it. (A write lost whole reads
    /// as a clean end instead.)
    pub partial: bool,
}

/// The pieces of `[start, end)` that fall in distinct sectors, in order.
fn sector_chunks(start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let next = ((at / SECTOR) + 1) * SECTOR;
        out.push((at, next.min(end)));
        at = next;
    }
    out
}

/// Writes a torn next record after the last frame of the newest segment of
/// a node that is not running. The record is a copy of one already in the
/// segment (a real frame, so its CRC holds), placed where the next append
/// would go, with some of its sectors left zero. When the segment holds no
/// frame that spans two sectors there, the tear is a first sector never
/// written with a later one that was: some random bytes one sector on.
pub fn tear_next_record(data_dir: &Path, rng: &mut Rng) -> Option<Tear> {
    let seg = newest_segment(data_dir)?;
    let bytes = fs::read(&seg).ok()?;
    let (starts, end) = frames(&bytes);
    let room = (bytes.len() as u64).saturating_sub(end);
    let first_sector_end = (end / SECTOR + 1) * SECTOR;
    // Frames whose copy at `end` fits, spans two sectors and is not
    // flagged TEAR_AMBIGUOUS (a flagged record's tear is damage).
    let mut bounds: Vec<(u64, u64)> = starts
        .iter()
        .zip(starts.iter().skip(1).chain(std::iter::once(&end)))
        .map(|(&a, &b)| (a, b))
        .filter(|&(a, b)| {
            let word = u64::from_le_bytes(bytes[a as usize..a as usize + 8].try_into().unwrap());
            b - a <= room && end + (b - a) > first_sector_end && word & TEAR_AMBIGUOUS == 0
        })
        .collect();
    let f = OpenOptions::new().write(true).open(&seg).ok()?;
    let how = if !bounds.is_empty() && rng.chance(50) {
        let (a, b) = bounds.swap_remove(rng.below(bounds.len() as u64) as usize);
        let mut frame = bytes[a as usize..b as usize].to_vec();
        let chunks = sector_chunks(end, end + frame.len() as u64);
        // Keep the first chunk (it holds the length word) and lose at
        // least one of the others.
        let lost: Vec<(u64, u64)> = chunks[1..]
            .iter()
            .copied()
            .enumerate()
            .filter(|&(i, _)| i == 0 || rng.chance(50))
            .map(|(_, c)| c)
            .collect();
        for &(x, y) in &lost {
            frame[(x - end) as usize..(y - end) as usize].fill(0);
        }
        f.write_all_at(&frame, end).ok()?;
        format!(
            "copy of the frame at {a} written at {end} ({} bytes) with {} of {} sectors lost",
            frame.len(),
            lost.len(),
            chunks.len()
        )
    } else {
        if room < first_sector_end - end + SECTOR {
            return None;
        }
        let n = rng.range(8, SECTOR);
        let mut g = rng.bytes(n as usize);
        g[0] |= 1;
        f.write_all_at(&g, first_sector_end).ok()?;
        format!("first sector at {end} unwritten, {n} bytes of a later one at {first_sector_end}")
    };
    f.sync_all().ok()?;
    Some(Tear {
        segment: seg,
        how,
        partial: true,
    })
}

/// The unsynced write a `before_wal_fsync` failpoint reported in `log`
/// (the last such line): segment, offset, length.
pub fn unsynced_write(log: &str) -> Option<(PathBuf, u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("failpoint before_wal_fsync fired"))?;
    let field = |name: &str| -> Option<&str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    Some((
        PathBuf::from(field("segment")?),
        field("offset")?.parse().ok()?,
        field("len")?.parse().ok()?,
    ))
}

/// Tears the unsynced write `[offset, offset + len)` of `segment`: zeroes
/// a random non-empty set of its sector pieces, which is what a crash
/// leaves of a write none of whose sectors were forced to disk. If the
/// record is flagged TEAR_AMBIGUOUS, the write is lost whole or kept whole:
/// a partial tear of it would be reported as damage, rightly.
pub fn tear_unsynced(segment: &Path, offset: u64, len: u64, rng: &mut Rng) -> Option<Tear> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .ok()?;
    let size = f.metadata().ok()?.len();
    if offset + len > size || len < 16 {
        return None;
    }
    let mut word = [0u8; 8];
    f.read_exact_at(&mut word, offset).ok()?;
    let chunks = sector_chunks(offset, offset + len);
    let lost: Vec<(u64, u64)> = if u64::from_le_bytes(word) & TEAR_AMBIGUOUS != 0 {
        if rng.chance(50) {
            chunks.clone()
        } else {
            Vec::new()
        }
    } else {
        let pick = rng.below(chunks.len() as u64) as usize;
        chunks
            .iter()
            .copied()
            .enumerate()
            .filter(|&(i, _)| i == pick || rng.chance(50))
            .map(|(_, c)| c)
            .collect()
    };
    for &(x, y) in &lost {
        f.write_all_at(&vec![0u8; (y - x) as usize], x).ok()?;
    }
    f.sync_all().ok()?;
    Some(Tear {
        segment: segment.to_path_buf(),
        partial: !lost.is_empty() && lost.len() < chunks.len(),
        how: format!(
            "zeroed {} of the {} sectors of the write at {offset}+{len}",
            lost.len(),
            chunks.len()
        ),
    })
}

/// Simulates a power cut on a node that never fsyncs: keeps the first
/// `keep_percent` of the frames written after `after_frames` frames of the
/// newest segment, and zeroes the rest.
pub fn power_cut(data_dir: &Path, after_frames: usize, keep_percent: u64) -> Option<Tear> {
    let seg = newest_segment(data_dir)?;
    let bytes = fs::read(&seg).ok()?;
    let (fr, end) = frames(&bytes);
    if fr.len() <= after_frames {
        return None;
    }
    let unsynced = fr.len() - after_frames;
    let keep = after_frames + (unsynced as u64 * keep_percent / 100) as usize;
    let at = fr.get(keep).copied().unwrap_or(end);
    let f = OpenOptions::new().write(true).open(&seg).ok()?;
    f.write_all_at(&vec![0u8; (end - at) as usize], at).ok()?;
    f.sync_all().ok()?;
    Some(Tear {
        segment: seg,
        partial: false,
        how: format!(
            "power cut: kept {keep} of {} frames, zeroed {at}..{end}",
            fr.len()
        ),
    })
}
