//! Torn or corrupt: whether the bad last record of the last segment is the
//! unfinished write of a crash, or damage.
//!
//! The rule (`FORMAT.md`, "Torn tail or corruption") rests on two facts about
//! the disk: segments are preallocated with zeros, and a 512-byte sector,
//! aligned to the file offset, is written whole or not at all. A write that
//! did not finish therefore leaves sectors of its record that are still all
//! zero, and nothing after the record (every append is one record). Damage
//! leaves anything else.
//!
//! Scanning stopped at `end`, and some byte after it is not zero. The record
//! at `end` is *torn* in exactly two shapes:
//!
//! 1. the 8 bytes at `end` and the rest of their sector are zero (the first
//!    sector of the record never reached the disk), and no 8-aligned offset
//!    after `end` starts a valid frame;
//! 2. the length word at `end` is well formed and the record fits in the file,
//!    giving `R = [end, end + total)`, and (a) `TEAR_AMBIGUOUS` is clear,
//!    (b) some sector chunk of `R` (the part of `R` inside one sector) is all
//!    zero, (c) every byte after `R` is zero.
//!
//! In version 2 no single flipped bit of a record can pass for a tear: in the
//! length word the 15-bit check fails; elsewhere in `R` no chunk can become
//! zero, because every chunk of an unflagged record holds at least two set
//! bits; after `R`, (c) fails. Version-1 segments have neither the check nor
//! the flag and get etcd's plain zero-sector rule (the same shapes).
//!
//! What this does not do: look at anything but the last segment (damage
//! anywhere else is never a tear), or repair anything.

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::format::{self, parse_word, Version, FRAME_TAG, SECTOR};

/// Whether `bytes` is all zeros (written to vectorise).
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// The first 8-aligned offset in `[from, to)` where a frame with a valid CRC
/// starts (in either version: a version-1 frame in a version-2 segment is
/// still a record that was written).
pub(crate) fn find_valid_frame(bytes: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut off = from;
    while off < to && bytes.len() - off >= 8 {
        // Cheap filter first: the tag byte of a length word.
        if bytes[off + 6] == FRAME_TAG
            && (format::check_frame(bytes, off, Version::V2).is_ok()
                || format::check_frame(bytes, off, Version::V1).is_ok())
        {
            return Some(off);
        }
        off += 8;
    }
    None
}

/// Whether some sector chunk of `[from, to)` is all zero.
fn has_zero_chunk(bytes: &[u8], from: usize, to: usize) -> bool {
    let mut start = from;
    while start < to {
        let end = ((start / SECTOR + 1) * SECTOR).min(to);
        if all_zero(&bytes[start..end]) {
            return true;
        }
        start = end;
    }
    false
}

/// Classifies the bad record at `end` of the last segment of version `v`:
/// `Ok(())` if it is torn, else `Err` saying why the bytes do not show an
/// unfinished write. `end` is 8-aligned, and some byte after it is not zero.
pub(crate) fn classify(bytes: &[u8], end: usize, v: Version) -> Result<(), String> {
    let len = bytes.len();
    if len - end < 8 {
        return Err("the file ends inside a length word, so it was cut short".into());
    }
    let word = LE::read_u64(&bytes[end..end + 8]);
    if word == 0 {
        let sector_end = ((end / SECTOR + 1) * SECTOR).min(len);
        if !all_zero(&bytes[end..sector_end]) {
            return Err(
                "the length word is zero but the rest of its sector is not, so the sector \
                 was written"
                    .into(),
            );
        }
        if let Some(at) = find_valid_frame(bytes, end + 8, len) {
            return Err(format!(
                "a valid record follows at offset {at}, so this is not the end of what was \
                 written"
            ));
        }
        return Ok(());
    }
    let Some(w) = parse_word(word, v) else {
        return Err(format!(
            "its length word {word:#018x} is not zero and not well formed, and sector writes \
             are atomic"
        ));
    };
    let r_end = match end.checked_add(w.total()) {
        Some(e) if e <= len => e,
        _ => {
            return Err(format!(
                "the record ({} bytes) extends past the end of the file, so the file was cut \
                 short",
                w.total()
            ))
        }
    };
    if w.ambiguous {
        return Err(
            "the record is flagged TEAR_AMBIGUOUS (one of its sectors holds at most one set \
             bit, so a flipped bit could pass for an unwritten sector)"
                .into(),
        );
    }
    if !has_zero_chunk(bytes, end, r_end) {
        return Err("none of its sectors is all zeros, so every sector of it was written".into());
    }
    if !all_zero(&bytes[r_end..]) {
        return Err(match find_valid_frame(bytes, r_end, len) {
            Some(at) => format!(
                "a valid record follows at offset {at}, so this is not the end of what was \
                 written"
            ),
            None => format!("non-zero bytes follow the record (which ends at offset {r_end})"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{push_save, seal_frames, SEGMENT_HEADER_LEN};
    use crate::{Entry, HardState};

    /// A segment of `len` bytes holding a head record and then one record of
    /// `data_len` pseudo-random bytes; returns the bytes and that record's span.
    fn segment(v: Version, data_len: usize, len: usize) -> (Vec<u8>, usize, usize) {
        let mut seg = vec![0u8; len];
        seg[..SEGMENT_HEADER_LEN].copy_from_slice(&format::segment_header(1, 1));
        let mut at = SEGMENT_HEADER_LEN;
        let mut buf = Vec::new();
        push_save(&mut buf, v, Some(&HardState::default()), &[]).unwrap();
        seal_frames(&mut buf, at as u64, v);
        seg[at..at + buf.len()].copy_from_slice(&buf);
        at += buf.len();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..data_len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let e = Entry {
            index: 1,
            term: 3,
            kind: 0,
            data,
        };
        let mut buf = Vec::new();
        push_save(&mut buf, v, Some(&HardState::default()), &[e]).unwrap();
        seal_frames(&mut buf, at as u64, v);
        seg[at..at + buf.len()].copy_from_slice(&buf);
        (seg, at, at + buf.len())
    }

    #[test]
    fn every_single_bit_flip_of_a_large_last_record_is_corruption() {
        // A record of several KiB, and one of a few hundred bytes, in a
        // version-2 segment: exhaustively, each flip is classified corrupt.
        for data_len in [6000, 300] {
            let (seg, from, to) = segment(Version::V2, data_len, 16384);
            for bit in 0..(to - from) * 8 {
                let mut b = seg.clone();
                b[from + bit / 8] ^= 1 << (bit % 8);
                // The scanner stops at the record: its CRC (or word) is bad.
                assert!(format::check_frame(&b, from, Version::V2).is_err());
                assert!(
                    classify(&b, from, Version::V2).is_err(),
                    "data {data_len}, bit {bit}"
                );
            }
        }
    }

    #[test]
    fn a_record_with_an_unwritten_sector_is_torn() {
        let (seg, from, to) = segment(Version::V2, 6000, 16384);
        // Each whole sector of the record but the first, lost in turn.
        let mut s = (from / SECTOR + 1) * SECTOR;
        while s + SECTOR <= to {
            let mut b = seg.clone();
            b[s..s + SECTOR].fill(0);
            assert_eq!(classify(&b, from, Version::V2), Ok(()), "sector at {s}");
            s += SECTOR;
        }
        // The last, partial chunk lost.
        let mut b = seg.clone();
        b[(to - 1) / SECTOR * SECTOR..to].fill(0);
        assert_eq!(classify(&b, from, Version::V2), Ok(()));
        // The first sector lost, the rest written.
        let mut b = seg.clone();
        let first_end = (from / SECTOR + 1) * SECTOR;
        b[from..first_end].fill(0);
        assert_eq!(classify(&b, from, Version::V2), Ok(()));
        // The first sector lost, but a byte of it survived: not a tear.
        b[first_end - 1] = 1;
        assert!(classify(&b, from, Version::V2).is_err());
    }

    #[test]
    fn a_torn_record_with_bytes_after_it_is_corruption() {
        let (seg, from, to) = segment(Version::V2, 6000, 16384);
        let mut b = seg.clone();
        let s = (from / SECTOR + 2) * SECTOR;
        b[s..s + SECTOR].fill(0);
        b[to + 700] = 4;
        assert!(classify(&b, from, Version::V2).is_err());
    }

    #[test]
    fn a_record_cut_short_by_the_end_of_the_file_is_corruption() {
        let (seg, from, to) = segment(Version::V2, 6000, 16384);
        for cut in [from + 4, from + 8, from + 600, to - 8] {
            assert!(classify(&seg[..cut], from, Version::V2).is_err(), "{cut}");
        }
    }

    #[test]
    fn version_1_uses_the_plain_zero_sector_rule() {
        let (seg, from, _) = segment(Version::V1, 6000, 16384);
        let mut b = seg.clone();
        let s = (from / SECTOR + 3) * SECTOR;
        b[s..s + SECTOR].fill(0);
        assert_eq!(classify(&b, from, Version::V1), Ok(()));
        let mut b = seg.clone();
        b[from + 100] ^= 8;
        assert!(classify(&b, from, Version::V1).is_err());
    }
}
