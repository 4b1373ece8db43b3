//! Bytes on disk: the segment header and the record frame.
//!
//! This module owns the encoding of everything that goes into a segment file
//! and nothing else: no file handles, no recovery policy. `FORMAT.md` at the
//! root of the crate describes the same layout byte by byte in prose; the two
//! must be changed together.
//!
//! A record is a *frame*: a 16-byte header followed by a payload and zero
//! padding up to the next multiple of 8. Because every frame starts at an
//! 8-byte-aligned file offset, its first 8 bytes (the length word) never
//! straddle a disk sector, so a crash can leave a frame's body torn but never
//! half a length word. The length word also carries a constant tag byte and
//! the padding count, which lets a scanner reject almost any random 8 bytes
//! before computing a CRC, and makes it impossible for a single flipped bit to
//! turn a real length word into the all-zero "end of data" word.
//!
//! Segment format version 2 adds two things to the length word, in bits that
//! version 1 requires to be zero, so that recovery can tell a torn write from
//! a flipped bit exactly (see `tear`):
//!
//! - a 15-bit check (CRC-15/CAN) of the word's other bits, so that no single
//!   flipped bit leaves a well-formed length word (which could otherwise make
//!   the record look longer and run into the zeros after it);
//! - the `TEAR_AMBIGUOUS` flag, set when some 512-byte sector of the frame,
//!   at the file offset where it is written, holds at most one set bit: one
//!   flip could make that sector look never written. The flag depends on the
//!   frame's final position, so it is set by [`seal_frames`] once the writer
//!   knows it, not when the frame is built.
//!
//! Version-1 segments are still read (and appended to in version 1).
//!
//! The CRC32 (IEEE polynomial, `crc32fast`) covers the length word, the type
//! byte, the three reserved bytes and the payload: everything in the frame
//! except the CRC itself and the padding.
//!
//! What this module does not do: decide whether a bad frame is a torn tail or
//! corruption (that is `tear` and `recovery`), or know about files (that is
//! `segment`).

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::damage::DamageReason;
use crate::{Entry, HardState};

/// First 8 bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"RNWALSEG";
/// Version of the snapshot file format described in `FORMAT.md`.
pub(crate) const SNAPSHOT_VERSION: u32 = 1;
/// Size of the segment header; the first record starts here.
pub(crate) const SEGMENT_HEADER_LEN: usize = 40;
/// The unit in which a disk writes atomically, aligned to the file offset.
pub(crate) const SECTOR: usize = 512;

/// Size of a frame header (length word, CRC, type, reserved).
pub(crate) const FRAME_HEADER_LEN: usize = 16;
/// Constant in byte 6 of every length word.
pub(crate) const FRAME_TAG: u8 = 0x5A;
/// Length-word bit 32 (version 2): a sector of the frame holds at most one
/// set bit, so a damaged copy of it is never taken for a torn write.
pub(crate) const TEAR_AMBIGUOUS: u64 = 1 << 32;
/// Length-word bits 33..47 (version 2): the check of the other bits.
const CHECK_SHIFT: u32 = 33;
const CHECK_MASK: u64 = 0x7FFF << CHECK_SHIFT;

/// Record type: one `save`, a hard state and/or a batch of consecutive entries.
pub(crate) const REC_SAVE: u8 = 1;
/// Record type: a snapshot marker.
pub(crate) const REC_SNAPSHOT: u8 = 2;

/// Payload prefix of a save record: flags (4), entry count (4), first index (8).
pub(crate) const SAVE_HEADER_LEN: usize = 16;
/// Save-record flag: a hard state follows the prefix.
pub(crate) const SAVE_HAS_HARD_STATE: u32 = 1;
/// Size of an encoded hard state.
pub(crate) const HARD_STATE_LEN: usize = 24;
/// Per-entry prefix inside a save record: term (8), data length (4), kind (1).
pub(crate) const ENTRY_HEADER_LEN: usize = 13;
/// Payload size of a snapshot-marker record.
pub(crate) const MARKER_LEN: usize = 24;
/// Snapshot-marker flag: the log after the snapshot index was discarded.
pub(crate) const MARKER_RESET: u32 = 1;

/// Largest body a length word can describe.
const MAX_BODY: u64 = u32::MAX as u64;

/// A segment format version this build reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// Length-word bits 32..47 are zero.
    V1,
    /// Length-word bit 32 is `TEAR_AMBIGUOUS`, bits 33..47 the check.
    V2,
}

impl Version {
    /// The version new segments are written in.
    pub(crate) const CURRENT: Version = Version::V2;

    pub(crate) fn number(self) -> u32 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    fn from_number(n: u32) -> Option<Version> {
        match n {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }
}

/// Why a frame (or a segment header) is not valid: a typed reason for
/// reports, and a sentence for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fault {
    pub reason: DamageReason,
    pub detail: String,
}

impl Fault {
    pub(crate) fn new(reason: DamageReason, detail: impl Into<String>) -> Fault {
        Fault {
            reason,
            detail: detail.into(),
        }
    }
}

/// CRC-15/CAN (polynomial 0x4599, initial value 0, not reflected), as a
/// byte-wise table.
const CRC15_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 7;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 0x4000 != 0 {
                (crc << 1) ^ 0x4599
            } else {
                crc << 1
            };
            k += 1;
        }
        t[i] = crc & 0x7FFF;
        i += 1;
    }
    t
};

fn crc15(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        ((crc << 8) & 0x7FFF) ^ CRC15_TABLE[usize::from(((crc >> 7) as u8) ^ b)]
    })
}

/// The 15-bit check of a version-2 length word: CRC-15/CAN of its 8
/// little-endian bytes with the check bits zeroed.
fn word_check(word: u64) -> u64 {
    u64::from(crc15(&(word & !CHECK_MASK).to_le_bytes()))
}

/// A length word with its check filled in (version 2) or not (version 1).
fn make_word(body: u64, pad: u64, ambiguous: bool, v: Version) -> u64 {
    let word = body | (u64::from(FRAME_TAG) << 48) | (pad << 56);
    match v {
        Version::V1 => word,
        Version::V2 => {
            let word = if ambiguous {
                word | TEAR_AMBIGUOUS
            } else {
                word
            };
            word | (word_check(word) << CHECK_SHIFT)
        }
    }
}

/// What a well-formed length word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    /// Body length: bytes after the length word, padding excluded.
    pub body: u64,
    /// Padding bytes after the body.
    pub pad: u64,
    /// The `TEAR_AMBIGUOUS` flag (always false in version 1).
    pub ambiguous: bool,
}

impl Word {
    /// Size of the whole frame, padding included.
    pub(crate) fn total(&self) -> usize {
        8 + self.body as usize + self.pad as usize
    }
}

/// Parses a length word of a version-`v` segment; `None` if it is not well
/// formed (zero included).
pub(crate) fn parse_word(word: u64, v: Version) -> Option<Word> {
    let body = word & 0xFFFF_FFFF;
    let tag = ((word >> 48) & 0xFF) as u8;
    let pad = word >> 56;
    if tag != FRAME_TAG || body < 8 || pad != (8 - body % 8) % 8 {
        return None;
    }
    let ambiguous = match v {
        Version::V1 => {
            if (word >> 32) & 0xFFFF != 0 {
                return None;
            }
            false
        }
        Version::V2 => {
            if (word & CHECK_MASK) >> CHECK_SHIFT != word_check(word) {
                return None;
            }
            word & TEAR_AMBIGUOUS != 0
        }
    };
    Some(Word {
        body,
        pad,
        ambiguous,
    })
}

/// Whether `bytes` holds at most one set bit. Stops at the second one, so
/// a sector of ordinary data costs a few bytes.
fn at_most_one_bit(bytes: &[u8]) -> bool {
    let mut ones = 0;
    let words = bytes.chunks_exact(8);
    let rest = words.remainder();
    for w in words {
        ones += LE::read_u64(w).count_ones();
        if ones > 1 {
            return false;
        }
    }
    ones + rest.iter().map(|b| b.count_ones()).sum::<u32>() <= 1
}

/// Sets `TEAR_AMBIGUOUS` (recomputing check and CRC) on every frame in `buf`
/// that has a sector chunk with at most one set bit, given that `buf` will be
/// written at file offset `at`. `buf` holds whole frames back to back, as
/// built by [`push_save`] and [`push_marker`]. Version 1 has no flag.
///
/// The first chunk of a frame holds the length word, whose tag alone has four
/// set bits, so only later chunks can qualify; the CRC may sit in the second
/// chunk, which is why the chunks are checked with the CRC already in place.
/// Setting the flag changes the length word and the CRC, and may make that
/// chunk no longer qualify: the flag then errs on the safe side.
pub(crate) fn seal_frames(buf: &mut [u8], at: u64, v: Version) {
    if v == Version::V1 {
        return;
    }
    let mut off = 0;
    while buf.len() - off >= FRAME_HEADER_LEN {
        let Some(w) = parse_word(LE::read_u64(&buf[off..off + 8]), v) else {
            debug_assert!(false, "seal_frames on a buffer that is not whole frames");
            return;
        };
        let total = w.total().min(buf.len() - off);
        let frame_at = at as usize + off;
        let mut start = 0;
        let mut ambiguous = false;
        while start < total {
            let sector_end = (frame_at + start) / SECTOR * SECTOR + SECTOR;
            let end = (sector_end - frame_at).min(total);
            if at_most_one_bit(&buf[off + start..off + end]) {
                ambiguous = true;
                break;
            }
            start = end;
        }
        if ambiguous && !w.ambiguous {
            let word = make_word(w.body, w.pad, true, v);
            LE::write_u64(&mut buf[off..off + 8], word);
            let crc = frame_crc(&buf[off..off + total], w.body as usize);
            LE::write_u32(&mut buf[off + 8..off + 12], crc);
        }
        off += total;
    }
}

/// Rewrites the length words (and CRCs) of the frames in `buf`, built for a
/// version-`from` segment, for a version-`to` one: a batch built for a
/// version-1 tail that rolls over into a new segment.
pub(crate) fn reframe(buf: &mut [u8], from: Version, to: Version) {
    if from == to {
        return;
    }
    let mut off = 0;
    while buf.len() - off >= FRAME_HEADER_LEN {
        let Some(w) = parse_word(LE::read_u64(&buf[off..off + 8]), from) else {
            debug_assert!(false, "reframe on a buffer that is not whole frames");
            return;
        };
        let total = w.total().min(buf.len() - off);
        LE::write_u64(&mut buf[off..off + 8], make_word(w.body, w.pad, false, to));
        let crc = frame_crc(&buf[off..off + total], w.body as usize);
        LE::write_u32(&mut buf[off + 8..off + 12], crc);
        off += total;
    }
}

/// The CRC of a frame whose body is `body` bytes long.
fn frame_crc(frame: &[u8], body: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[0..8]);
    h.update(&frame[12..8 + body]);
    h.finalize()
}

/// Total on-disk size of a frame carrying `payload_len` payload bytes.
#[cfg(test)]
pub(crate) fn frame_len(payload_len: usize) -> usize {
    (FRAME_HEADER_LEN + payload_len + 7) & !7
}

/// On-disk size of the save record for `entries` without a hard state.
#[cfg(test)]
pub(crate) fn entries_frame_len(entries: &[Entry]) -> usize {
    let payload: usize = SAVE_HEADER_LEN
        + entries
            .iter()
            .map(|e| ENTRY_HEADER_LEN + e.data.len())
            .sum::<usize>();
    frame_len(payload)
}

/// Builds the 40-byte header of a segment.
pub(crate) fn segment_header(seq: u64, first_index: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    LE::write_u32(&mut h[8..12], Version::CURRENT.number());
    LE::write_u64(&mut h[16..24], seq);
    LE::write_u64(&mut h[24..32], first_index);
    let crc = crc32fast::hash(&h[0..32]);
    LE::write_u32(&mut h[32..36], crc);
    h
}

/// Parses a segment header; returns `(sequence, first_index, version)` or why
/// it is invalid.
pub(crate) fn parse_segment_header(bytes: &[u8]) -> Result<(u64, u64, Version), String> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "file is {} bytes long, shorter than the {SEGMENT_HEADER_LEN}-byte segment header",
            bytes.len()
        ));
    }
    let h = &bytes[..SEGMENT_HEADER_LEN];
    if h[0..8] != SEGMENT_MAGIC {
        return Err("segment header magic is not \"RNWALSEG\"".into());
    }
    let stored = LE::read_u32(&h[32..36]);
    let computed = crc32fast::hash(&h[0..32]);
    if stored != computed {
        return Err(format!(
            "segment header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    if h[36..40] != [0u8; 4] {
        return Err("segment header reserved bytes 36..40 are not zero".into());
    }
    let number = LE::read_u32(&h[8..12]);
    let Some(version) = Version::from_number(number) else {
        return Err(format!(
            "segment format version {number} is not supported (this build reads versions 1 \
             and 2)"
        ));
    };
    Ok((LE::read_u64(&h[16..24]), LE::read_u64(&h[24..32]), version))
}

/// Appends one complete frame to `buf`: reserves the header, lets `payload`
/// write the payload, then pads and fills in length word and CRC. The
/// `TEAR_AMBIGUOUS` flag is left clear; [`seal_frames`] sets it once the
/// frame's file offset is known.
fn push_frame(
    buf: &mut Vec<u8>,
    kind: u8,
    v: Version,
    payload: impl FnOnce(&mut Vec<u8>),
) -> Result<(), crate::Error> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    payload(buf);
    let body = (buf.len() - start - 8) as u64;
    if body > MAX_BODY {
        let bytes = buf.len() - start;
        buf.truncate(start);
        return Err(crate::Error::TooLarge {
            bytes: bytes as u64,
        });
    }
    let pad = (8 - (body % 8)) % 8;
    buf.resize(buf.len() + pad as usize, 0);
    LE::write_u64(&mut buf[start..start + 8], make_word(body, pad, false, v));
    buf[start + 12] = kind;
    let crc = frame_crc(&buf[start..], body as usize);
    LE::write_u32(&mut buf[start + 8..start + 12], crc);
    Ok(())
}

/// Appends a save record: the hard state (if any) and `entries` (consecutive,
/// possibly none; at least one of the two must be given).
pub(crate) fn push_save(
    buf: &mut Vec<u8>,
    v: Version,
    hs: Option<&HardState>,
    entries: &[Entry],
) -> Result<(), crate::Error> {
    debug_assert!(hs.is_some() || !entries.is_empty());
    push_frame(buf, REC_SAVE, v, |b| {
        let mut w = [0u8; SAVE_HEADER_LEN + HARD_STATE_LEN];
        LE::write_u32(
            &mut w[0..4],
            if hs.is_some() { SAVE_HAS_HARD_STATE } else { 0 },
        );
        LE::write_u32(&mut w[4..8], entries.len() as u32);
        LE::write_u64(&mut w[8..16], entries.first().map_or(0, |e| e.index));
        let mut n = SAVE_HEADER_LEN;
        if let Some(hs) = hs {
            LE::write_u64(&mut w[16..24], hs.term);
            LE::write_u64(&mut w[24..32], hs.vote);
            LE::write_u64(&mut w[32..40], hs.commit);
            n += HARD_STATE_LEN;
        }
        b.extend_from_slice(&w[..n]);
        for e in entries {
            let mut h = [0u8; ENTRY_HEADER_LEN];
            LE::write_u64(&mut h[0..8], e.term);
            LE::write_u32(&mut h[8..12], e.data.len() as u32);
            h[12] = e.kind;
            b.extend_from_slice(&h);
            b.extend_from_slice(&e.data);
        }
    })
}

/// Appends a snapshot-marker record.
pub(crate) fn push_marker(buf: &mut Vec<u8>, v: Version, m: &Marker) -> Result<(), crate::Error> {
    push_frame(buf, REC_SNAPSHOT, v, |b| {
        let mut w = [0u8; MARKER_LEN];
        LE::write_u64(&mut w[0..8], m.index);
        LE::write_u64(&mut w[8..16], m.term);
        LE::write_u32(&mut w[16..20], if m.reset { MARKER_RESET } else { 0 });
        b.extend_from_slice(&w);
    })
}

/// A snapshot marker as stored in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    /// Last index covered by the snapshot.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Whether every entry after `index` was discarded when the snapshot was
    /// installed (the log did not contain `index` at `term`).
    pub reset: bool,
}

/// A frame that passed every check, located inside a segment's bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    /// Record type byte.
    pub kind: u8,
    /// Offset of the payload within the segment.
    pub payload_start: usize,
    /// Length of the payload.
    pub payload_len: usize,
    /// Size of the whole frame including padding.
    pub total: usize,
}

/// Checks the frame at `off` of a version-`v` segment (`off` must be
/// 8-aligned and leave at least 8 bytes). Returns the frame, or why it is not
/// a valid one.
pub(crate) fn check_frame(bytes: &[u8], off: usize, v: Version) -> Result<Frame, Fault> {
    let word = LE::read_u64(&bytes[off..off + 8]);
    if word == 0 {
        return Err(Fault::new(
            DamageReason::DataAfterEnd,
            "length word is zero but non-zero bytes follow",
        ));
    }
    let Some(w) = parse_word(word, v) else {
        return Err(Fault::new(
            DamageReason::BadLengthWord,
            format!("length word {word:#018x} is not a valid frame header"),
        ));
    };
    let total = w.total();
    if bytes.len() - off < total {
        return Err(Fault::new(
            DamageReason::RecordPastEnd,
            format!(
                "record of {total} bytes extends past the end of the file ({} bytes left)",
                bytes.len() - off
            ),
        ));
    }
    let payload_start = off + FRAME_HEADER_LEN;
    let payload_end = off + 8 + w.body as usize;
    if bytes[off + 13..off + 16] != [0u8; 3]
        || bytes[payload_end..off + total].iter().any(|&b| b != 0)
    {
        return Err(Fault::new(
            DamageReason::NonZeroPadding,
            "reserved or padding bytes are not zero",
        ));
    }
    let stored = LE::read_u32(&bytes[off + 8..off + 12]);
    let computed = frame_crc(&bytes[off..off + total], w.body as usize);
    if stored != computed {
        return Err(Fault::new(
            DamageReason::ChecksumMismatch,
            format!("record CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"),
        ));
    }
    Ok(Frame {
        kind: bytes[off + 12],
        payload_start,
        payload_len: payload_end - payload_start,
        total,
    })
}

/// Reads the frame at `off` of a region already validated by [`check_frame`].
pub(crate) fn trusted_frame(bytes: &[u8], off: usize) -> Frame {
    let word = LE::read_u64(&bytes[off..off + 8]);
    let body = (word & 0xFFFF_FFFF) as usize;
    let pad = (word >> 56) as usize;
    debug_assert!(body >= 8);
    Frame {
        kind: bytes[off + 12],
        payload_start: off + FRAME_HEADER_LEN,
        payload_len: body - 8,
        total: 8 + body + pad,
    }
}

/// One entry of a save record, borrowed from the segment bytes.
pub(crate) struct EntryView<'a> {
    pub index: u64,
    pub term: u64,
    pub kind: u8,
    pub data: &'a [u8],
}

/// What a save record holds, apart from the entries themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SaveView {
    pub hard_state: Option<HardState>,
    /// Index of the first entry (meaningless when `count` is 0).
    pub first: u64,
    pub count: u32,
}

/// Decodes the prefix of a save payload without walking the entries; the
/// payload must be at least as long as the prefix says.
fn save_prefix(payload: &[u8]) -> Result<(SaveView, usize), String> {
    if payload.len() < SAVE_HEADER_LEN {
        return Err("save record is shorter than its 16-byte prefix".into());
    }
    let flags = LE::read_u32(&payload[0..4]);
    if flags & !SAVE_HAS_HARD_STATE != 0 {
        return Err(format!("save record has unknown flags {flags:#x}"));
    }
    let count = LE::read_u32(&payload[4..8]);
    let first = LE::read_u64(&payload[8..16]);
    let mut pos = SAVE_HEADER_LEN;
    let hard_state = if flags & SAVE_HAS_HARD_STATE != 0 {
        if payload.len() < pos + HARD_STATE_LEN {
            return Err("save record is too short for its hard state".into());
        }
        let h = &payload[pos..pos + HARD_STATE_LEN];
        pos += HARD_STATE_LEN;
        Some(HardState {
            term: LE::read_u64(&h[0..8]),
            vote: LE::read_u64(&h[8..16]),
            commit: LE::read_u64(&h[16..24]),
        })
    } else {
        None
    };
    Ok((
        SaveView {
            hard_state,
            first,
            count,
        },
        pos,
    ))
}

/// Checks the whole structure of a save payload; `Err` says what is
/// malformed.
pub(crate) fn parse_save(payload: &[u8]) -> Result<SaveView, String> {
    let (v, mut pos) = save_prefix(payload)?;
    if v.count == 0 {
        if v.hard_state.is_none() {
            return Err("save record holds neither a hard state nor entries".into());
        }
        if v.first != 0 {
            return Err(format!(
                "save record without entries has first index {}",
                v.first
            ));
        }
    } else if v.first == 0 || v.first.checked_add(u64::from(v.count)).is_none() {
        return Err(format!(
            "save record has impossible first index {}",
            v.first
        ));
    }
    for i in 0..v.count {
        if payload.len() - pos < ENTRY_HEADER_LEN {
            return Err(format!("entry {i} of {} is cut short", v.count));
        }
        let len = LE::read_u32(&payload[pos + 8..pos + 12]) as usize;
        pos += ENTRY_HEADER_LEN;
        if payload.len() - pos < len {
            return Err(format!(
                "entry {i} of {} claims {len} data bytes past the record",
                v.count
            ));
        }
        pos += len;
    }
    if pos != payload.len() {
        return Err(format!(
            "save record has {} unexplained trailing bytes",
            payload.len() - pos
        ));
    }
    Ok(v)
}

/// The prefix of a save payload already checked by [`parse_save`]; reads
/// only the prefix, not the entries.
pub(crate) fn trusted_save(payload: &[u8]) -> SaveView {
    save_prefix(payload).map_or(
        SaveView {
            hard_state: None,
            first: 0,
            count: 0,
        },
        |(v, _)| v,
    )
}

/// Iterates the entries of a save payload already checked by [`parse_save`].
pub(crate) fn entries_iter(payload: &[u8]) -> impl Iterator<Item = EntryView<'_>> {
    let (v, start) = save_prefix(payload).unwrap_or((
        SaveView {
            hard_state: None,
            first: 0,
            count: 0,
        },
        payload.len(),
    ));
    let mut pos = start;
    (0..u64::from(v.count)).map(move |i| {
        let term = LE::read_u64(&payload[pos..pos + 8]);
        let len = LE::read_u32(&payload[pos + 8..pos + 12]) as usize;
        let kind = payload[pos + 12];
        let data = &payload[pos + ENTRY_HEADER_LEN..pos + ENTRY_HEADER_LEN + len];
        pos += ENTRY_HEADER_LEN + len;
        EntryView {
            index: v.first + i,
            term,
            kind,
            data,
        }
    })
}

/// Decodes a snapshot-marker payload.
pub(crate) fn parse_marker(payload: &[u8]) -> Result<Marker, String> {
    if payload.len() != MARKER_LEN {
        return Err(format!(
            "snapshot-marker record has {} payload bytes, expected {MARKER_LEN}",
            payload.len()
        ));
    }
    let flags = LE::read_u32(&payload[16..20]);
    if flags & !MARKER_RESET != 0 || LE::read_u32(&payload[20..24]) != 0 {
        return Err(format!(
            "snapshot-marker record has unknown flags {flags:#x}"
        ));
    }
    Ok(Marker {
        index: LE::read_u64(&payload[0..8]),
        term: LE::read_u64(&payload[8..16]),
        reset: flags & MARKER_RESET != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term: 7,
            kind: 2,
            data: data.to_vec(),
        }
    }

    #[test]
    fn frames_are_8_aligned_and_round_trip_in_both_versions() {
        for v in [Version::V1, Version::V2] {
            for n in 0..20 {
                let mut buf = Vec::new();
                let e = [entry(5, &vec![0xAB; n])];
                push_save(&mut buf, v, None, &e).unwrap();
                assert_eq!(buf.len() % 8, 0);
                assert_eq!(buf.len(), entries_frame_len(&e));
                let f = check_frame(&buf, 0, v).unwrap();
                assert_eq!(f.total, buf.len());
                let p = &buf[f.payload_start..f.payload_start + f.payload_len];
                let v = parse_save(p).unwrap();
                assert_eq!((v.hard_state, v.first, v.count), (None, 5, 1));
                let got: Vec<_> = entries_iter(p).map(|v| v.data.to_vec()).collect();
                assert_eq!(got, vec![vec![0xAB; n]]);
            }
        }
    }

    #[test]
    fn crc15_is_crc_15_can() {
        // The catalogue's check value for CRC-15/CAN.
        assert_eq!(crc15(b"123456789"), 0x059E);
    }

    /// Length words of every shape: short and long bodies, each padding
    /// count, with and without the flag.
    fn sample_words() -> Vec<u64> {
        let mut words = Vec::new();
        for body in [8u64, 9, 13, 15, 16, 100, 4095, 1 << 20, u32::MAX as u64] {
            let pad = (8 - body % 8) % 8;
            for flag in [false, true] {
                words.push(make_word(body, pad, flag, Version::V2));
            }
        }
        words
    }

    #[test]
    fn every_single_bit_flip_of_a_length_word_makes_it_invalid() {
        for word in sample_words() {
            assert!(parse_word(word, Version::V2).is_some(), "{word:#x}");
            for bit in 0..64 {
                let flipped = word ^ (1 << bit);
                assert_ne!(flipped, 0);
                assert_eq!(
                    parse_word(flipped, Version::V2),
                    None,
                    "word {word:#018x} bit {bit}"
                );
            }
        }
        // The check is linear, so the flips of one word stand for all: but
        // prove the flag bit and every body bit on random-looking words too.
        let mut x = 0x1234_5678_9ABC_DEF0u64;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let body = 8 + (x >> 33) % (u32::MAX as u64 - 8);
            let word = make_word(body, (8 - body % 8) % 8, x & 1 == 1, Version::V2);
            for bit in 0..64 {
                assert_eq!(parse_word(word ^ (1 << bit), Version::V2), None);
            }
        }
    }

    #[test]
    fn frames_can_be_moved_between_versions() {
        let mut buf = Vec::new();
        push_save(&mut buf, Version::V1, Some(&HardState::default()), &[]).unwrap();
        push_save(&mut buf, Version::V1, None, &[entry(4, b"four")]).unwrap();
        reframe(&mut buf, Version::V1, Version::V2);
        let f = check_frame(&buf, 0, Version::V2).unwrap();
        assert!(check_frame(&buf, f.total, Version::V2).is_ok());
    }

    #[test]
    fn version_1_words_have_no_check_and_no_flag() {
        let w = make_word(100, 4, true, Version::V1);
        assert_eq!(w >> 32 & 0xFFFF, 0);
        assert_eq!(
            parse_word(w, Version::V1),
            Some(Word {
                body: 100,
                pad: 4,
                ambiguous: false
            })
        );
        assert_eq!(parse_word(w | TEAR_AMBIGUOUS, Version::V1), None);
    }

    #[test]
    fn no_single_bit_flip_turns_a_length_word_into_end_of_data() {
        for v in [Version::V1, Version::V2] {
            let mut buf = Vec::new();
            push_save(&mut buf, v, Some(&HardState::default()), &[]).unwrap();
            let word = LE::read_u64(&buf[0..8]);
            for bit in 0..64 {
                assert_ne!(word ^ (1 << bit), 0);
            }
        }
    }

    #[test]
    fn a_frame_with_a_nearly_empty_sector_is_flagged_where_it_lands() {
        // 1024 zero bytes of data: whatever the offset, a whole sector of the
        // frame is zero.
        let mut buf = Vec::new();
        push_save(&mut buf, Version::V2, None, &[entry(1, &[0u8; 1024])]).unwrap();
        for at in (40..2048u64).step_by(8) {
            let mut b = buf.clone();
            seal_frames(&mut b, at, Version::V2);
            let w = parse_word(LE::read_u64(&b[0..8]), Version::V2).unwrap();
            assert!(w.ambiguous, "at {at}");
            assert!(check_frame(&b, 0, Version::V2).is_ok(), "at {at}");
        }
        // Data with a single set bit per sector is flagged too.
        let mut data = vec![0u8; 2000];
        for i in (0..2000).step_by(512) {
            data[i] = 0x10;
        }
        let mut buf = Vec::new();
        push_save(&mut buf, Version::V2, None, &[entry(1, &data)]).unwrap();
        seal_frames(&mut buf, 512, Version::V2);
        assert!(
            parse_word(LE::read_u64(&buf[0..8]), Version::V2)
                .unwrap()
                .ambiguous
        );
        // Dense data is not; nor is anything in version 1.
        let mut buf = Vec::new();
        push_save(&mut buf, Version::V2, None, &[entry(1, &[0x11u8; 3000])]).unwrap();
        let before = buf.clone();
        seal_frames(&mut buf, 40, Version::V2);
        assert_eq!(buf, before);
        let mut buf = Vec::new();
        push_save(&mut buf, Version::V1, None, &[entry(1, &[0u8; 1024])]).unwrap();
        let before = buf.clone();
        seal_frames(&mut buf, 40, Version::V1);
        assert_eq!(buf, before);
    }

    #[test]
    fn at_most_one_bit_counts_every_byte() {
        assert!(at_most_one_bit(&[]));
        assert!(at_most_one_bit(&[0; 13]));
        for len in [1, 7, 8, 9, 512] {
            for at in 0..len {
                let mut b = vec![0u8; len];
                b[at] = 0x80;
                assert!(at_most_one_bit(&b));
                b[(at + 1) % len] |= 1;
                assert!(!at_most_one_bit(&b), "len {len} at {at}");
            }
        }
    }

    #[test]
    fn a_frame_whose_short_last_sector_is_padding_is_flagged() {
        // The frame ends 8 bytes into a sector, and those 8 bytes are the
        // data's zero tail and padding.
        let mut data = vec![0x33u8; 512 - 16 - 16 - 13 + 5];
        let n = data.len();
        data[n - 5..].fill(0);
        let mut buf = Vec::new();
        push_save(&mut buf, Version::V2, None, &[entry(1, &data)]).unwrap();
        assert_eq!(buf.len(), 520);
        seal_frames(&mut buf, 0, Version::V2);
        assert!(
            parse_word(LE::read_u64(&buf[0..8]), Version::V2)
                .unwrap()
                .ambiguous
        );
        assert!(check_frame(&buf, 0, Version::V2).is_ok());
    }

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let h = segment_header(3, 12345);
        assert_eq!(parse_segment_header(&h), Ok((3, 12345, Version::V2)));
        let mut bad = h;
        bad[20] ^= 1;
        assert!(parse_segment_header(&bad).is_err());
        assert!(parse_segment_header(&[0u8; 40]).is_err());
    }
}
