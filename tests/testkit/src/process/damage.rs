//! Disk faults: damage that no crash can cause, done on purpose to a
//! stopped node's data dir.
//!
//! `torn.rs` only ever damages what a crash may damage (unsynced sectors of
//! the last record). This module does what a bad disk, a bad cable or an
//! operator does: it flips a byte that was written and synced long ago, or
//! deletes everything. The node must notice (the WAL's CRCs and the rules of
//! `wal/FORMAT.md` catch every single flipped byte), keep what it can prove,
//! and repair the rest from its peers before it votes again (issue 13).
//!
//! - [`flip_segment`]: one byte of a WAL segment `wal/*.wal`, xored with a
//!   random non-zero value, at a random offset in the written part of the
//!   file: the header or a record ([`torn::frames`] reads the layout). With
//!   `zeros`, the offset is in the preallocated zeros after the last record
//!   instead: in the last segment that reads as a torn tail and is cut; in
//!   an earlier one it is damage (data after the end of the data).
//! - [`flip_mid_log`]: the same, in the middle of the written part of the
//!   middle segment, for measurements that want the same damage each time.
//! - [`flip_snapshot`]: one byte of the newest snapshot file
//!   `wal/snap/*.snap` (the one a restart reads; the node must notice and
//!   fall back to an older one that its log still covers, or recover).
//! - [`wipe`]: the whole data dir removed, as on a replaced disk.
//!
//! Each returns a [`Inflicted`] saying which kind of damage it did and where,
//! for the fault journal. None of them looks at a running node; the caller
//! stops the node first (a flip under a live WAL would be overwritten or
//! never read).
//!
//! [`torn::frames`]: super::torn::frames

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::rng::Rng;

use super::torn;

/// The kinds of disk fault, as counted in the summary line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFault {
    /// A flipped byte in the written part of a WAL segment.
    SegmentFlip,
    /// A flipped byte in the preallocated zeros after a segment's data.
    ZeroFlip,
    /// A flipped byte in a snapshot file.
    SnapshotFlip,
    /// The data dir deleted.
    Wipe,
}

impl fmt::Display for DiskFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFault::SegmentFlip => "segment flip",
            DiskFault::ZeroFlip => "flip in the preallocated zeros",
            DiskFault::SnapshotFlip => "snapshot flip",
            DiskFault::Wipe => "wipe",
        })
    }
}

/// What was done to a data dir.
#[derive(Clone, Debug)]
pub struct Inflicted {
    /// What kind of damage it turned out to be: a flip asked for in a
    /// snapshot falls back to a segment when the node has no snapshot yet.
    pub kind: DiskFault,
    /// The file and offset, for the journal.
    pub how: String,
}

/// The WAL segments of the node with `data_dir`, oldest first.
pub fn segments(data_dir: &Path) -> Vec<PathBuf> {
    files_with_extension(&data_dir.join("wal"), "wal")
}

/// The snapshot files of the node with `data_dir`, oldest first (names
/// start with the index in fixed-width hex, so name order is index order).
pub fn snapshots(data_dir: &Path) -> Vec<PathBuf> {
    files_with_extension(&data_dir.join("wal").join("snap"), "snap")
}

fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext) && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Xors the byte at `offset` of `path` with `mask` (non-zero) and syncs
/// the file. Returns the byte before and after.
pub fn flip_byte(path: &Path, offset: u64, mask: u8) -> io::Result<(u8, u8)> {
    assert_ne!(mask, 0, "a flip must change the byte");
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    let before = b[0];
    b[0] ^= mask;
    f.write_all_at(&b, offset)?;
    f.sync_all()?;
    Ok((before, b[0]))
}

/// A random non-zero xor mask.
fn mask(rng: &mut Rng) -> u8 {
    rng.range(1, 255) as u8
}

/// Where a segment's data ends: the offset after its last well-formed
/// frame (the preallocated zeros start there), and its size.
fn data_end(seg: &Path) -> Option<(u64, u64)> {
    let bytes = fs::read(seg).ok()?;
    let (_, end) = torn::frames(&bytes);
    Some((end, bytes.len() as u64))
}

fn flip_at(
    kind: DiskFault,
    path: &Path,
    offset: u64,
    rng: &mut Rng,
    what: &str,
) -> Option<Inflicted> {
    let m = mask(rng);
    let (before, after) = flip_byte(path, offset, m).ok()?;
    Some(Inflicted {
        kind,
        how: format!(
            "{kind}: byte {offset} of {} ({what}) {before:#04x} -> {after:#04x}",
            path.display()
        ),
    })
}

/// Flips one byte of a random segment: in its written part (header and
/// records), or with `zeros` in the preallocated zeros after its data.
/// `None` if the node has no segment (or, with `zeros`, no segment with
/// zeros left).
pub fn flip_segment(data_dir: &Path, rng: &mut Rng, zeros: bool) -> Option<Inflicted> {
    let segs = segments(data_dir);
    if segs.is_empty() {
        return None;
    }
    let mut order: Vec<usize> = (0..segs.len()).collect();
    // Try a random segment first, then the others (newest first), for
    // a segment with a part of the kind asked for.
    let first = rng.below(segs.len() as u64) as usize;
    order.swap(0, first);
    order[1..].sort_by(|a, b| b.cmp(a));
    for i in order {
        let seg = &segs[i];
        let Some((end, len)) = data_end(seg) else {
            continue;
        };
        if zeros {
            if end < len {
                // Mostly near the end of the data, where the next append
                // goes, sometimes anywhere in the zeros.
                let hi = if rng.chance(70) {
                    len.min(end + 4096)
                } else {
                    len
                };
                let off = rng.range(end, hi - 1);
                let what = format!("zeros after the data, which ends at {end}");
                return flip_at(DiskFault::ZeroFlip, seg, off, rng, &what);
            }
        } else if end > 0 {
            let off = rng.below(end);
            let what = format!(
                "{}, data ends at {end}",
                if off < 40 {
                    "segment header"
                } else {
                    "a record"
                }
            );
            return flip_at(DiskFault::SegmentFlip, seg, off, rng, &what);
        }
    }
    None
}

/// Flips one byte in the middle of the log: the middle of the written part
/// of the middle segment (the newest one when there are only one or two).
pub fn flip_mid_log(data_dir: &Path, rng: &mut Rng) -> Option<Inflicted> {
    let segs = segments(data_dir);
    let seg = segs.get(segs.len() / 2)?;
    let (end, _) = data_end(seg)?;
    if end <= 40 {
        return None;
    }
    let off = 40 + (end - 40) / 2;
    let what = format!("middle of the log, data ends at {end}");
    flip_at(DiskFault::SegmentFlip, seg, off, rng, &what)
}

/// Flips one byte of the newest snapshot file, the one a restart reads
/// first (an older one is read only if the newest is bad). `None` if the
/// node has no snapshot file.
pub fn flip_snapshot(data_dir: &Path, rng: &mut Rng) -> Option<Inflicted> {
    let snaps = snapshots(data_dir);
    let snap = snaps.last()?;
    let len = fs::metadata(snap).ok()?.len();
    if len == 0 {
        return None;
    }
    let off = rng.below(len);
    let what = format!("the newest snapshot, {len} bytes");
    flip_at(DiskFault::SnapshotFlip, snap, off, rng, &what)
}

/// Removes the whole data dir.
pub fn wipe(data_dir: &Path) -> io::Result<Inflicted> {
    let bytes = dir_size(data_dir);
    match fs::remove_dir_all(data_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(Inflicted {
        kind: DiskFault::Wipe,
        how: format!("wipe: removed {} ({bytes} bytes)", data_dir.display()),
    })
}

/// Bytes under `dir` (best effort).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Does `kind` to the stopped node with `data_dir`: a segment flip, a
/// flip in the zeros, a snapshot flip (a segment flip if the node has no
/// snapshot yet), or a wipe. `None` if nothing could be done (no segment).
pub fn inflict(data_dir: &Path, kind: DiskFault, rng: &mut Rng) -> Option<Inflicted> {
    match kind {
        DiskFault::SegmentFlip => flip_segment(data_dir, rng, false),
        DiskFault::ZeroFlip => {
            flip_segment(data_dir, rng, true).or_else(|| flip_segment(data_dir, rng, false))
        }
        DiskFault::SnapshotFlip => {
            flip_snapshot(data_dir, rng).or_else(|| flip_segment(data_dir, rng, false))
        }
        DiskFault::Wipe => wipe(data_dir).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "raftnode-damage-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(p.join("wal").join("snap")).unwrap();
        p
    }

    /// A fake segment: a 40-byte header of ones, one frame of 16 bytes as
    /// `torn::frames` reads it, then zeros to `len`.
    fn segment(dir: &Path, name: &str, len: usize) -> PathBuf {
        let mut b = vec![0u8; len];
        b[..40].fill(1);
        let word: u64 = 8 | (0x5A << 48); // body 8, no padding
        b[40..48].copy_from_slice(&word.to_le_bytes());
        b[48..56].fill(2);
        let p = dir.join("wal").join(name);
        fs::write(&p, &b).unwrap();
        p
    }

    fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    #[test]
    fn a_segment_flip_changes_one_written_byte_and_a_zero_flip_one_zero() {
        let dir = tmp("seg");
        let p = segment(&dir, "0000000000000000-0000000000000001.wal", 8192);
        let mut rng = Rng::new(7);
        for zeros in [false, true] {
            for _ in 0..50 {
                let before = fs::read(&p).unwrap();
                let d = flip_segment(&dir, &mut rng, zeros).expect("a flip");
                let after = fs::read(&p).unwrap();
                let changed = diff(&before, &after);
                assert_eq!(changed.len(), 1, "{}", d.how);
                if zeros {
                    assert_eq!(d.kind, DiskFault::ZeroFlip);
                    assert!(changed[0] >= 56, "{}", d.how);
                } else {
                    assert_eq!(d.kind, DiskFault::SegmentFlip);
                    assert!(changed[0] < 56, "{}", d.how);
                }
                // Undo, so that the layout stays as built.
                fs::write(&p, &before).unwrap();
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_snapshot_flip_falls_back_to_a_segment_and_a_wipe_removes_everything() {
        let dir = tmp("snap");
        segment(&dir, "0000000000000000-0000000000000001.wal", 4096);
        let mut rng = Rng::new(9);
        let d = inflict(&dir, DiskFault::SnapshotFlip, &mut rng).unwrap();
        assert_eq!(d.kind, DiskFault::SegmentFlip, "no snapshot yet: {}", d.how);
        let snap = dir.join("wal/snap/0000000000000010-0000000000000002.snap");
        fs::write(&snap, [5u8; 100]).unwrap();
        let d = flip_snapshot(&dir, &mut rng).unwrap();
        assert_eq!(d.kind, DiskFault::SnapshotFlip);
        assert_eq!(diff(&[5u8; 100], &fs::read(&snap).unwrap()).len(), 1);
        let d = inflict(&dir, DiskFault::Wipe, &mut rng).unwrap();
        assert_eq!(d.kind, DiskFault::Wipe);
        assert!(!dir.exists());
        assert!(inflict(&dir, DiskFault::SegmentFlip, &mut rng).is_none());
    }
}
