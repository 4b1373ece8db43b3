//! Damage: what recovery reports when the log lost data that was written,
//! and the durable `DAMAGE` marker that keeps reporting it until the caller
//! has repaired itself.
//!
//! A *torn tail* is the normal result of a crash and is not damage: the write
//! never finished, so nothing in it was acknowledged. Everything else that is
//! wrong with the files is damage: a record that fails its checks and does not
//! look unfinished (see `tear`), a bad segment header, a missing segment, a
//! hole in the entries, a snapshot that the log needs but that cannot be read.
//!
//! With [`OnDamage::Refuse`] damage makes [`Wal::open`](crate::Wal::open) fail,
//! as it always did. With [`OnDamage::Salvage`] recovery keeps the good prefix
//! of the log and returns a [`Damage`] report instead (see `salvage`). Before
//! it changes a single byte it writes the `DAMAGE` file described here: from
//! then on every open reports the damage, until [`Wal::clear_damage`]
//! removes the file. A caller that crashes in the middle of repairing itself
//! therefore never forgets that it is damaged.
//!
//! The file also carries what the salvage decided and must not forget if it
//! is interrupted: the newest term and vote it found and the snapshot it
//! chose. The records that proved them may sit in the part of the log the
//! salvage sets aside, so a second attempt after a crash could not find them
//! again; it reads them from here. Its bytes are specified in `FORMAT.md`.
//!
//! What this module does not do: decide what is damaged (`recovery`, `tear`)
//! or what is kept (`salvage`).
//!
//! [`Wal::clear_damage`]: crate::Wal::clear_damage

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::{fsutil, Error};

/// What [`Wal::open`](crate::Wal::open) does when it finds damage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDamage {
    /// Fail with [`Error::Corrupt`] and change nothing (the default).
    #[default]
    Refuse,
    /// Keep the good prefix of the log, set the rest aside, write the
    /// `DAMAGE` marker and report a [`Damage`] in
    /// [`Recovered::damage`](crate::Recovered::damage).
    Salvage,
}

/// Why a file counts as damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DamageReason {
    /// A record's length word is neither zero nor a valid frame header (for
    /// format version 2: its 15-bit check fails, or tag, length or padding
    /// count are wrong).
    BadLengthWord,
    /// A record extends past the end of the file, or the file ends inside a
    /// length word: the file was cut short.
    RecordPastEnd,
    /// A record's CRC does not match its bytes.
    ChecksumMismatch,
    /// Reserved or padding bytes of a record are not zero.
    NonZeroPadding,
    /// Non-zero bytes follow the zero length word that ends the data.
    DataAfterEnd,
    /// A record with a valid CRC whose payload cannot be parsed or whose type
    /// is unknown.
    BadPayload,
    /// The segment header is invalid (magic, CRC, version, reserved bytes) or
    /// disagrees with the file name.
    BadSegmentHeader,
    /// The segment with this sequence number is missing.
    MissingSegment {
        /// The sequence number of the missing segment.
        sequence: u64,
    },
    /// A segment does not start where the segments before it end.
    SegmentIndexMismatch {
        /// The index the segment should start at.
        expected: u64,
        /// The index its header names.
        found: u64,
    },
    /// Entries start beyond the end of the log: the entries in between are
    /// missing.
    EntryGap {
        /// The highest index the entries could have started at.
        expected: u64,
        /// The index they start at.
        found: u64,
    },
    /// A snapshot marker without the reset flag names an index beyond the end
    /// of the log.
    MarkerBeyondLog {
        /// The marker's snapshot index.
        index: u64,
        /// The last index of the log at that point.
        last_index: u64,
    },
    /// The snapshot the log needs (the newest one it names) is missing or
    /// damaged, and the log does not reach back to an older usable one.
    SnapshotUnusable {
        /// Index of the snapshot the log names.
        index: u64,
    },
    /// Recorded by the caller with [`Wal::mark_damaged`](crate::Wal::mark_damaged).
    ReportedByCaller,
    /// The `DAMAGE` file itself cannot be read; the damage it recorded is
    /// assumed to be the worst (hard state may be lost).
    DamageMarkerUnreadable,
}

impl DamageReason {
    /// `(code, a, b)` as stored in the `DAMAGE` file.
    fn encode(self) -> (u32, u64, u64) {
        use DamageReason::*;
        match self {
            BadLengthWord => (1, 0, 0),
            RecordPastEnd => (2, 0, 0),
            ChecksumMismatch => (3, 0, 0),
            NonZeroPadding => (4, 0, 0),
            DataAfterEnd => (5, 0, 0),
            BadPayload => (6, 0, 0),
            BadSegmentHeader => (7, 0, 0),
            MissingSegment { sequence } => (8, sequence, 0),
            SegmentIndexMismatch { expected, found } => (9, expected, found),
            EntryGap { expected, found } => (10, expected, found),
            MarkerBeyondLog { index, last_index } => (11, index, last_index),
            SnapshotUnusable { index } => (12, index, 0),
            ReportedByCaller => (13, 0, 0),
            DamageMarkerUnreadable => (14, 0, 0),
        }
    }

    fn decode(code: u32, a: u64, b: u64) -> Option<DamageReason> {
        use DamageReason::*;
        Some(match code {
            1 => BadLengthWord,
            2 => RecordPastEnd,
            3 => ChecksumMismatch,
            4 => NonZeroPadding,
            5 => DataAfterEnd,
            6 => BadPayload,
            7 => BadSegmentHeader,
            8 => MissingSegment { sequence: a },
            9 => SegmentIndexMismatch {
                expected: a,
                found: b,
            },
            10 => EntryGap {
                expected: a,
                found: b,
            },
            11 => MarkerBeyondLog {
                index: a,
                last_index: b,
            },
            12 => SnapshotUnusable { index: a },
            13 => ReportedByCaller,
            14 => DamageMarkerUnreadable,
            _ => return None,
        })
    }
}

/// Damage that recovery salvaged around, or that an earlier open (or the
/// caller) recorded in the `DAMAGE` marker and that is not cleared yet.
///
/// The node must treat its state as possibly missing writes it acknowledged:
/// it must not vote or count toward a quorum until a peer has brought it back
/// up to date, and it calls [`Wal::clear_damage`](crate::Wal::clear_damage)
/// after that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The damaged file (a segment, a snapshot file, or the WAL directory for
    /// [`DamageReason::ReportedByCaller`]).
    pub file: PathBuf,
    /// Byte offset in `file` where the damage starts (0 for a whole file).
    pub offset: u64,
    /// What is wrong.
    pub reason: DamageReason,
    /// The log kept ends here: the entries are `(snapshot index,
    /// kept_last_index]` (equal to the snapshot index, or 0, when no entry is
    /// kept). On a later open of a repaired log (`pending`), the last index of
    /// the log as it is now.
    pub kept_last_index: u64,
    /// Whether the hard state's term and vote are known to be the newest ones
    /// written: a valid record restating them was found after the damage. If
    /// false, they are only a lower bound; the node may have voted in a later
    /// term than [`Recovered::hard_state`](crate::Recovered::hard_state) says,
    /// up to at least `max_term_seen`.
    pub hard_state_intact: bool,
    /// The highest term in any readable record, before or after the damage
    /// (and in every earlier report still pending).
    pub max_term_seen: u64,
    /// The state machine has to start empty: no usable snapshot covers the
    /// log that was kept, so nothing was kept.
    pub snapshot_lost: bool,
    /// Log files that this open set aside: later segments renamed
    /// `<name>.corrupt`, and the damaged bytes copied to
    /// `<segment>.corrupt-<offset>`. Never deleted by the WAL.
    pub set_aside: Vec<PathBuf>,
    /// True when the `DAMAGE` marker already existed when the WAL was opened
    /// (the damage was found, or reported, by an earlier open); false when
    /// this open found the damage and created the marker.
    pub pending: bool,
}

/// Name of the marker file in the WAL directory.
pub(crate) const DAMAGE_FILE: &str = "DAMAGE";
/// First 8 bytes of the marker file.
const MAGIC: [u8; 8] = *b"RNDAMAGE";
/// Version of the marker's format.
const VERSION: u32 = 1;
/// Size of the fixed part, before the file name.
const FIXED_LEN: usize = 88;
/// Flag bit: the hard state's term and vote are the newest written.
const FLAG_INTACT: u32 = 1;
/// Flag bit: a salvage started and has not finished all its writes.
const FLAG_IN_PROGRESS: u32 = 2;

/// The content of the `DAMAGE` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DamageRecord {
    /// A salvage was started with this record and has not finished.
    pub in_progress: bool,
    pub hard_state_intact: bool,
    pub max_term_seen: u64,
    /// Newest term and vote known (a lower bound unless intact).
    pub term: u64,
    pub vote: u64,
    /// The snapshot the salvage chose, `(index, term)`; `(0, 0)` for none.
    pub snapshot: (u64, u64),
    /// The damaged file, relative to the WAL directory when inside it.
    pub file: PathBuf,
    pub offset: u64,
    pub reason: DamageReason,
}

impl DamageRecord {
    /// The record that stands for an unreadable `DAMAGE` file: the worst case.
    fn unreadable() -> DamageRecord {
        DamageRecord {
            in_progress: false,
            hard_state_intact: false,
            max_term_seen: 0,
            term: 0,
            vote: 0,
            snapshot: (0, 0),
            file: PathBuf::from(DAMAGE_FILE),
            offset: 0,
            reason: DamageReason::DamageMarkerUnreadable,
        }
    }

    /// Folds in `older`, the record that was on disk before: a salvage that
    /// was interrupted saw more of the log than this attempt can (it may have
    /// set parts aside already), so its conclusions about the hard state
    /// stand; otherwise the damages add up (intact only if both were).
    pub(crate) fn merge_older(&mut self, older: &DamageRecord) {
        self.hard_state_intact = if older.in_progress {
            older.hard_state_intact
        } else {
            older.hard_state_intact && self.hard_state_intact
        };
        self.max_term_seen = self.max_term_seen.max(older.max_term_seen);
        (self.term, self.vote) = newest_vote((self.term, self.vote), (older.term, older.vote));
    }

    /// The bytes of the file (layout in `FORMAT.md`).
    fn encode(&self) -> Vec<u8> {
        let name = self.file.to_string_lossy();
        let name = name.as_bytes();
        let mut b = vec![0u8; FIXED_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        LE::write_u32(&mut b[8..12], VERSION);
        let flags = if self.hard_state_intact {
            FLAG_INTACT
        } else {
            0
        } | if self.in_progress {
            FLAG_IN_PROGRESS
        } else {
            0
        };
        LE::write_u32(&mut b[12..16], flags);
        LE::write_u64(&mut b[16..24], self.max_term_seen);
        LE::write_u64(&mut b[24..32], self.term);
        LE::write_u64(&mut b[32..40], self.vote);
        LE::write_u64(&mut b[40..48], self.snapshot.0);
        LE::write_u64(&mut b[48..56], self.snapshot.1);
        LE::write_u64(&mut b[56..64], self.offset);
        let (code, a, c) = self.reason.encode();
        LE::write_u32(&mut b[64..68], code);
        LE::write_u32(&mut b[68..72], name.len() as u32);
        LE::write_u64(&mut b[72..80], a);
        LE::write_u64(&mut b[80..88], c);
        b.extend_from_slice(name);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&[0u8; 4]);
        b
    }

    /// Parses the file's bytes; `None` if they are not a valid record.
    fn decode(b: &[u8]) -> Option<DamageRecord> {
        if b.len() < FIXED_LEN + 8 || b[0..8] != MAGIC || LE::read_u32(&b[8..12]) != VERSION {
            return None;
        }
        let n = LE::read_u32(&b[68..72]) as usize;
        if b.len() != FIXED_LEN + n + 8 {
            return None;
        }
        let crc_at = FIXED_LEN + n;
        if LE::read_u32(&b[crc_at..crc_at + 4]) != crc32fast::hash(&b[..crc_at])
            || b[crc_at + 4..] != [0u8; 4]
        {
            return None;
        }
        let flags = LE::read_u32(&b[12..16]);
        if flags & !(FLAG_INTACT | FLAG_IN_PROGRESS) != 0 {
            return None;
        }
        let reason = DamageReason::decode(
            LE::read_u32(&b[64..68]),
            LE::read_u64(&b[72..80]),
            LE::read_u64(&b[80..88]),
        )?;
        let file = std::str::from_utf8(&b[FIXED_LEN..crc_at]).ok()?;
        Some(DamageRecord {
            in_progress: flags & FLAG_IN_PROGRESS != 0,
            hard_state_intact: flags & FLAG_INTACT != 0,
            max_term_seen: LE::read_u64(&b[16..24]),
            term: LE::read_u64(&b[24..32]),
            vote: LE::read_u64(&b[32..40]),
            snapshot: (LE::read_u64(&b[40..48]), LE::read_u64(&b[48..56])),
            file: PathBuf::from(file),
            offset: LE::read_u64(&b[56..64]),
            reason,
        })
    }
}

/// The newer of two `(term, vote)` pairs: the higher term; in the same term
/// the one that holds a vote (a vote, once cast in a term, is never taken
/// back), `a` first.
pub(crate) fn newest_vote(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    if a.0 > b.0 || (a.0 == b.0 && (a.1 != 0 || b.1 == 0)) {
        a
    } else {
        b
    }
}

/// `path` relative to `dir` if it lies inside it.
pub(crate) fn relative(dir: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(dir).unwrap_or(path).to_path_buf()
}

/// Reads the `DAMAGE` file of `dir`, if there is one. A file that exists but
/// cannot be parsed counts as damage of the worst kind, never as no damage.
pub(crate) fn read(dir: &Path) -> Result<Option<DamageRecord>, Error> {
    let path = dir.join(DAMAGE_FILE);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(DamageRecord::decode(&bytes).unwrap_or_else(|| {
            log::warn!(
                "{} cannot be read (damaged or written by a newer version); assuming the \
                 worst damage",
                path.display()
            );
            DamageRecord::unreadable()
        }))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &path)(e)),
    }
}

/// Writes the `DAMAGE` file durably: a temp file, fsynced, renamed over the
/// old one, and the directory fsynced.
pub(crate) fn write(dir: &Path, rec: &DamageRecord) -> Result<(), Error> {
    let tmp = dir.join(format!("{DAMAGE_FILE}.tmp"));
    let f = fsutil::create_rw(&tmp)?;
    fsutil::write_at(&f, &tmp, &rec.encode(), 0)?;
    f.sync_all().map_err(Error::io("fsync", &tmp))?;
    drop(f);
    fsutil::rename_durable(&tmp, &dir.join(DAMAGE_FILE), dir)
}

/// Removes the `DAMAGE` file durably (nothing if there is none).
pub(crate) fn remove(dir: &Path) -> Result<(), Error> {
    let path = dir.join(DAMAGE_FILE);
    match fs::remove_file(&path) {
        Ok(()) => fsutil::fsync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DamageRecord {
        DamageRecord {
            in_progress: true,
            hard_state_intact: true,
            max_term_seen: 9,
            term: 7,
            vote: 3,
            snapshot: (40, 6),
            file: PathBuf::from("0000000000000001-0000000000000010.wal"),
            offset: 4096,
            reason: DamageReason::EntryGap {
                expected: 12,
                found: 15,
            },
        }
    }

    #[test]
    fn the_marker_round_trips_and_every_flipped_bit_is_detected() {
        let rec = sample();
        let bytes = rec.encode();
        assert_eq!(DamageRecord::decode(&bytes), Some(rec));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(DamageRecord::decode(&b), None, "bit {bit}");
        }
        assert_eq!(DamageRecord::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn every_reason_round_trips() {
        use DamageReason::*;
        for r in [
            BadLengthWord,
            RecordPastEnd,
            ChecksumMismatch,
            NonZeroPadding,
            DataAfterEnd,
            BadPayload,
            BadSegmentHeader,
            MissingSegment { sequence: 4 },
            SegmentIndexMismatch {
                expected: 1,
                found: 2,
            },
            EntryGap {
                expected: 3,
                found: 4,
            },
            MarkerBeyondLog {
                index: 5,
                last_index: 6,
            },
            SnapshotUnusable { index: 7 },
            ReportedByCaller,
            DamageMarkerUnreadable,
        ] {
            let (c, a, b) = r.encode();
            assert_eq!(DamageReason::decode(c, a, b), Some(r));
        }
    }

    #[test]
    fn merging_keeps_the_worst_and_the_newest() {
        let older = DamageRecord {
            in_progress: false,
            hard_state_intact: false,
            max_term_seen: 12,
            term: 5,
            vote: 2,
            ..sample()
        };
        let mut new = sample();
        new.merge_older(&older);
        assert!(!new.hard_state_intact);
        assert_eq!(new.max_term_seen, 12);
        assert_eq!((new.term, new.vote), (7, 3));
        // An interrupted salvage's conclusions stand.
        let interrupted = DamageRecord {
            in_progress: true,
            hard_state_intact: true,
            term: 8,
            vote: 1,
            snapshot: (50, 6),
            ..sample()
        };
        let mut new = DamageRecord {
            hard_state_intact: false,
            ..sample()
        };
        new.merge_older(&interrupted);
        assert!(new.hard_state_intact);
        assert_eq!((new.term, new.vote), (8, 1));
        assert_eq!(newest_vote((4, 0), (4, 2)), (4, 2));
        assert_eq!(newest_vote((4, 3), (4, 2)), (4, 3));
    }
}
