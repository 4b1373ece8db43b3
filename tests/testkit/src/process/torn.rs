//! Torn WAL tails: damage that a crash can legitimately leave behind.
//!
//! Only bytes that were never covered by an fdatasync may be damaged, since
//! anything synced may already have been promised to someone. Two sound
//! sources of such bytes (the segment layout is in `wal/FORMAT.md`: a 40-byte
//! header, then 8-aligned frames whose first 8 bytes are a length word, and
//! zeros after the last frame):
//!
//! - [`tear_next_record`], for any node killed with SIGKILL: the bytes
//!   after the last valid frame of the newest segment are the place of a
//!   write that had not happened yet. Writing part of a frame there (a
//!   length word and some of the body) or garbage is what a crash in the
//!   middle of that next, never acknowledged, write leaves.
//! - [`tear_unsynced`], for a node that aborted at the `before_wal_fsync`
//!   failpoint (failpoint build): the node printed the segment, offset and
//!   length of the write whose fdatasync never ran; that write, and nothing
//!   else, is cut at a random offset inside it, or its end is overwritten
//!   with zeros or with garbage.
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
}

/// Writes a partial next frame (or garbage) after the last frame of the
/// newest segment of a node that is not running.
pub fn tear_next_record(data_dir: &Path, rng: &mut Rng) -> Option<Tear> {
    let seg = newest_segment(data_dir)?;
    let bytes = fs::read(&seg).ok()?;
    let (_, end) = frames(&bytes);
    let room = (bytes.len() as u64).saturating_sub(end);
    if room < 64 {
        return None;
    }
    let f = OpenOptions::new().write(true).open(&seg).ok()?;
    let how = if rng.chance(50) {
        // A length word for a frame of plausible size, and only part of
        // the body: the crash came in the middle of the write.
        let body = rng.range(16, 2000).min(room - 16);
        let pad = (8 - body % 8) % 8;
        let word = body | (TAG << 48) | (pad << 56);
        let written = rng.range(1, body.saturating_sub(1).max(1));
        let mut b = word.to_le_bytes().to_vec();
        b.extend(rng.bytes(written as usize));
        f.write_all_at(&b, end).ok()?;
        format!("partial frame at {end}: length word for {body} bytes, {written} written")
    } else {
        let n = rng.range(8, 1024).min(room);
        let mut g = rng.bytes(n as usize);
        g[0] |= 1;
        f.write_all_at(&g, end).ok()?;
        format!("{n} garbage bytes at {end}")
    };
    f.sync_all().ok()?;
    Some(Tear { segment: seg, how })
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

/// Tears the unsynced write `[offset, offset + len)` of `segment`: cuts the
/// file at a random offset inside it, or overwrites its end with zeros or
/// garbage. The length word of its first frame is kept or lost whole (an
/// aligned 8-byte word never straddles a sector).
pub fn tear_unsynced(segment: &Path, offset: u64, len: u64, rng: &mut Rng) -> Option<Tear> {
    let f = OpenOptions::new().write(true).open(segment).ok()?;
    let size = f.metadata().ok()?.len();
    if offset + len > size || len < 16 {
        return None;
    }
    let at = if rng.chance(10) {
        offset
    } else {
        rng.range(offset + 8, offset + len - 1)
    };
    let how = match rng.below(3) {
        0 => {
            f.set_len(at).ok()?;
            format!("cut at {at} (write was {offset}+{len})")
        }
        1 => {
            f.write_all_at(&vec![0u8; (offset + len - at) as usize], at)
                .ok()?;
            format!("zeroed {at}..{} (write was {offset}+{len})", offset + len)
        }
        _ => {
            let mut g = rng.bytes((offset + len - at) as usize);
            g[0] |= 1;
            f.write_all_at(&g, at).ok()?;
            format!("garbage {at}..{} (write was {offset}+{len})", offset + len)
        }
    };
    f.sync_all().ok()?;
    Some(Tear {
        segment: segment.to_path_buf(),
        how,
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
        how: format!(
            "power cut: kept {keep} of {} frames, zeroed {at}..{end}",
            fr.len()
        ),
    })
}
