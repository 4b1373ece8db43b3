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
//! The CRC32 (IEEE polynomial, `crc32fast`) covers the length word, the type
//! byte, the three reserved bytes and the payload: everything in the frame
//! except the CRC itself and the padding.
//!
//! What this module does not do: decide whether a bad frame is a torn tail or
//! corruption (that is `recovery`), or know about files (that is `segment`).

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::{Entry, HardState};

/// First 8 bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"RNWALSEG";
/// Version of the segment and snapshot formats described in `FORMAT.md`.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Size of the segment header; the first record starts here.
pub(crate) const SEGMENT_HEADER_LEN: usize = 40;

/// Size of a frame header (length word, CRC, type, reserved).
pub(crate) const FRAME_HEADER_LEN: usize = 16;
/// Constant in byte 6 of every length word.
pub(crate) const FRAME_TAG: u8 = 0x5A;

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
    LE::write_u32(&mut h[8..12], FORMAT_VERSION);
    LE::write_u64(&mut h[16..24], seq);
    LE::write_u64(&mut h[24..32], first_index);
    let crc = crc32fast::hash(&h[0..32]);
    LE::write_u32(&mut h[32..36], crc);
    h
}

/// Parses a segment header; returns `(sequence, first_index)` or why it is invalid.
pub(crate) fn parse_segment_header(bytes: &[u8]) -> Result<(u64, u64), String> {
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
    let version = LE::read_u32(&h[8..12]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "segment format version {version} is not supported (this build reads version \
             {FORMAT_VERSION})"
        ));
    }
    Ok((LE::read_u64(&h[16..24]), LE::read_u64(&h[24..32])))
}

/// Appends one complete frame to `buf`: reserves the header, lets `payload`
/// write the payload, then pads and fills in length word and CRC.
fn push_frame(
    buf: &mut Vec<u8>,
    kind: u8,
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
    let word = body | (u64::from(FRAME_TAG) << 48) | (pad << 56);
    LE::write_u64(&mut buf[start..start + 8], word);
    buf[start + 12] = kind;
    let payload_end = buf.len() - pad as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[start..start + 8]);
    h.update(&buf[start + 12..payload_end]);
    let crc = h.finalize();
    LE::write_u32(&mut buf[start + 8..start + 12], crc);
    Ok(())
}

/// Appends a save record: the hard state (if any) and `entries` (consecutive,
/// possibly none; at least one of the two must be given).
pub(crate) fn push_save(
    buf: &mut Vec<u8>,
    hs: Option<&HardState>,
    entries: &[Entry],
) -> Result<(), crate::Error> {
    debug_assert!(hs.is_some() || !entries.is_empty());
    push_frame(buf, REC_SAVE, |b| {
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
pub(crate) fn push_marker(buf: &mut Vec<u8>, m: &Marker) -> Result<(), crate::Error> {
    push_frame(buf, REC_SNAPSHOT, |b| {
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

/// Checks the frame at `off` (which must be 8-aligned and leave at least 8
/// bytes). Returns the frame, or why it is not a valid one.
pub(crate) fn check_frame(bytes: &[u8], off: usize) -> Result<Frame, String> {
    let word = LE::read_u64(&bytes[off..off + 8]);
    if word == 0 {
        return Err("length word is zero".into());
    }
    let body = word & 0xFFFF_FFFF;
    let tag = ((word >> 48) & 0xFF) as u8;
    let pad = word >> 56;
    let reserved = (word >> 32) & 0xFFFF;
    if tag != FRAME_TAG || reserved != 0 || body < 8 || pad != (8 - body % 8) % 8 {
        return Err(format!(
            "length word {word:#018x} is not a valid frame header"
        ));
    }
    let total = 8 + body as usize + pad as usize;
    if bytes.len() - off < total {
        return Err(format!(
            "record of {total} bytes extends past the end of the file ({} bytes left)",
            bytes.len() - off
        ));
    }
    let payload_start = off + FRAME_HEADER_LEN;
    let payload_end = off + 8 + body as usize;
    if bytes[off + 13..off + 16] != [0u8; 3]
        || bytes[payload_end..off + total].iter().any(|&b| b != 0)
    {
        return Err("reserved or padding bytes are not zero".into());
    }
    let stored = LE::read_u32(&bytes[off + 8..off + 12]);
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[off..off + 8]);
    h.update(&bytes[off + 12..payload_end]);
    let computed = h.finalize();
    if stored != computed {
        return Err(format!(
            "record CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
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
    fn frames_are_8_aligned_and_round_trip() {
        for n in 0..20 {
            let mut buf = Vec::new();
            let e = [entry(5, &vec![0xAB; n])];
            push_save(&mut buf, None, &e).unwrap();
            assert_eq!(buf.len() % 8, 0);
            assert_eq!(buf.len(), entries_frame_len(&e));
            let f = check_frame(&buf, 0).unwrap();
            assert_eq!(f.total, buf.len());
            let p = &buf[f.payload_start..f.payload_start + f.payload_len];
            let v = parse_save(p).unwrap();
            assert_eq!((v.hard_state, v.first, v.count), (None, 5, 1));
            let got: Vec<_> = entries_iter(p).map(|v| v.data.to_vec()).collect();
            assert_eq!(got, vec![vec![0xAB; n]]);
        }
    }

    #[test]
    fn no_single_bit_flip_turns_a_length_word_into_end_of_data() {
        let mut buf = Vec::new();
        push_save(&mut buf, Some(&HardState::default()), &[]).unwrap();
        let word = LE::read_u64(&buf[0..8]);
        for bit in 0..64 {
            assert_ne!(word ^ (1 << bit), 0);
        }
    }

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let h = segment_header(3, 12345);
        assert_eq!(parse_segment_header(&h), Ok((3, 12345)));
        let mut bad = h;
        bad[20] ^= 1;
        assert!(parse_segment_header(&bad).is_err());
        assert!(parse_segment_header(&[0u8; 40]).is_err());
    }
}
