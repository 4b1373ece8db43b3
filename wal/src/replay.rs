//! Pass 2 of recovery: the raft log rules applied record by record.
//!
//! Frames already checked by pass 1 are walked again, without re-checking
//! CRCs: entries at index `i` discard every entry at `>= i`; a snapshot marker
//! flagged *reset* discards the whole log after its index (paper §7, a
//! follower whose log did not contain the snapshot's last entry); the last
//! hard state wins. The survivors are kept as runs (record, skip, take) and
//! only copied out into `Entry` values at the end, split over the available
//! cores: allocating the entries' memory is most of the cost of opening a
//! large log.
//!
//! The replay does not depend on which snapshot recovery starts from: it
//! builds the raw log, and [`Replay::covers`] and [`Replay::live`] apply a
//! snapshot afterwards. That order lets recovery read the snapshot markers
//! of the whole directory (salvage reads them even after damage) before it
//! chooses.
//!
//! What it does not do: check CRCs (pass 1 did), or decide what to do about a
//! hole (recovery refuses, salvage keeps the prefix before it).

use crate::damage::DamageReason;
use crate::format::{
    self, parse_marker, trusted_frame, Fault, Marker, REC_SAVE, REC_SNAPSHOT, SEGMENT_HEADER_LEN,
};
use crate::{Entry, HardState};

/// The surviving entries of one save record: `take` entries starting
/// `skip` entries into the record, the first of them at index `first`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub seg: usize,
    pub payload_start: usize,
    pub payload_len: usize,
    pub first: u64,
    pub skip: u32,
    pub take: u32,
}

/// A record that breaks the log rules, found during replay.
#[derive(Clone, Debug)]
pub(crate) struct LogFault {
    /// Position of the segment in the list.
    pub pos: usize,
    /// Offset of the record (0 for a segment that starts at the wrong index).
    pub offset: usize,
    /// The whole segment is at fault, not a record in it.
    pub whole: bool,
    pub fault: Fault,
}

/// Why the raw log cannot follow a given snapshot.
pub(crate) enum Uncovered {
    /// A later snapshot reset the log to `index`, above the snapshot.
    Reset {
        index: u64,
        pos: usize,
        offset: usize,
    },
    /// The log starts at `log_start`, beyond the snapshot index + 1.
    Hole {
        log_start: u64,
        pos: usize,
        offset: usize,
    },
}

/// Pass-2 state: the raw log, before any snapshot is applied.
pub(crate) struct Replay {
    /// Live entries, contiguous, as runs of records.
    pub runs: Vec<Run>,
    /// The last hard state (all zeros if none).
    pub hard_state: HardState,
    /// Last index of the raw log.
    pub log_last: u64,
    /// Every snapshot marker, in file order.
    pub markers: Vec<Marker>,
    /// The last marker flagged reset, and where it is.
    last_reset: Option<(Marker, usize, usize)>,
    /// Where the first segment replayed starts, for error messages.
    start_pos: usize,
}

impl Replay {
    /// A replay of a log whose first segment starts at `first_index`.
    pub(crate) fn new(first_index: u64, start_pos: usize) -> Replay {
        Replay {
            runs: Vec::new(),
            hard_state: HardState::default(),
            log_last: first_index.saturating_sub(1),
            markers: Vec::new(),
            last_reset: None,
            start_pos,
        }
    }

    /// Replays the frames of segment `pos` in `[header, end)`, which pass 1
    /// checked. `first_index` is the segment's; `continues` says that
    /// segments were replayed before it, so it must start where they end.
    /// On a fault, the records before it are applied and the rest are not.
    pub(crate) fn segment(
        &mut self,
        pos: usize,
        bytes: &[u8],
        end: usize,
        first_index: u64,
        continues: bool,
    ) -> Result<(), LogFault> {
        if continues && first_index != self.log_last.saturating_add(1) {
            return Err(LogFault {
                pos,
                offset: 0,
                whole: true,
                fault: Fault::new(
                    DamageReason::SegmentIndexMismatch {
                        expected: self.log_last.saturating_add(1),
                        found: first_index,
                    },
                    format!(
                        "segment starts at index {first_index} but the segments before it end \
                         at index {}",
                        self.log_last
                    ),
                ),
            });
        }
        let mut off = SEGMENT_HEADER_LEN;
        while off < end {
            let f = trusted_frame(bytes, off);
            let payload = &bytes[f.payload_start..f.payload_start + f.payload_len];
            let at = |fault| LogFault {
                pos,
                offset: off,
                whole: false,
                fault,
            };
            match f.kind {
                REC_SAVE => {
                    let v = format::trusted_save(payload);
                    if v.count > 0 {
                        self.entries_record(pos, &f, v).map_err(at)?;
                    }
                    if let Some(hs) = v.hard_state {
                        self.hard_state = hs;
                    }
                }
                REC_SNAPSHOT => {
                    let m = parse_marker(payload)
                        .map_err(|r| at(Fault::new(DamageReason::BadPayload, r)))?;
                    self.marker(m, pos, off).map_err(at)?;
                }
                other => {
                    return Err(at(Fault::new(
                        DamageReason::BadPayload,
                        format!("record type {other} is unknown"),
                    )))
                }
            }
            off += f.total;
        }
        Ok(())
    }

    /// Raft's overwrite rule: an entry at `index` discards all at >= index.
    fn truncate_from(&mut self, index: u64) {
        while let Some(last) = self.runs.last_mut() {
            if last.first >= index {
                self.runs.pop();
                continue;
            }
            let end = last.first + u64::from(last.take);
            if end > index {
                last.take = (index - last.first) as u32;
            }
            break;
        }
    }

    fn entries_record(
        &mut self,
        seg: usize,
        f: &format::Frame,
        v: format::SaveView,
    ) -> Result<(), Fault> {
        // Pass 1 checked the whole payload; walking every entry header again
        // would touch every cache line of the log.
        let (first, count) = (v.first, v.count);
        if first > self.log_last.saturating_add(1) {
            return Err(Fault::new(
                DamageReason::EntryGap {
                    expected: self.log_last.saturating_add(1),
                    found: first,
                },
                format!(
                    "entries start at index {first} but the log before them ends at index {}: \
                     the entries in between are missing",
                    self.log_last
                ),
            ));
        }
        self.truncate_from(first);
        self.runs.push(Run {
            seg,
            payload_start: f.payload_start,
            payload_len: f.payload_len,
            first,
            skip: 0,
            take: count,
        });
        self.log_last = first + u64::from(count) - 1;
        Ok(())
    }

    fn marker(&mut self, m: Marker, pos: usize, off: usize) -> Result<(), Fault> {
        if m.reset {
            self.runs.clear();
            self.log_last = m.index;
            self.last_reset = Some((m, pos, off));
        } else if m.index > self.log_last {
            return Err(Fault::new(
                DamageReason::MarkerBeyondLog {
                    index: m.index,
                    last_index: self.log_last,
                },
                format!(
                    "snapshot marker at index {} lies beyond the end of the log (index {}) \
                     without resetting it",
                    m.index, self.log_last
                ),
            ));
        }
        self.markers.push(m);
        Ok(())
    }

    /// The index of the first entry the raw log holds (last index + 1 if it
    /// holds none).
    fn log_start(&self) -> u64 {
        self.runs
            .first()
            .map_or(self.log_last.saturating_add(1), |r| r.first)
    }

    /// Whether the log can follow a snapshot at `base`: every entry after it
    /// is there, from `base + 1` on. `Err` says why not and where.
    pub(crate) fn covers(&self, base: u64) -> Result<(), Uncovered> {
        if self.log_start() <= base.saturating_add(1) {
            return Ok(());
        }
        Err(match self.last_reset {
            Some((m, pos, offset)) if m.index > base => Uncovered::Reset {
                index: m.index,
                pos,
                offset,
            },
            _ => {
                let (pos, offset) = self.runs.first().map_or((self.start_pos, 0), |r| {
                    (r.seg, r.payload_start - format::FRAME_HEADER_LEN)
                });
                Uncovered::Hole {
                    log_start: self.log_start(),
                    pos,
                    offset,
                }
            }
        })
    }

    /// The runs of the entries above `base`.
    pub(crate) fn live(&self, base: u64) -> Vec<Run> {
        let keep = self
            .runs
            .partition_point(|r| r.first + u64::from(r.take) - 1 <= base);
        let mut runs = self.runs[keep..].to_vec();
        if let Some(r) = runs.first_mut() {
            if r.first <= base {
                let skip = (base + 1 - r.first) as u32;
                r.skip += skip;
                r.take -= skip;
                r.first = base + 1;
            }
        }
        runs
    }

    /// The term of entry `index` in the raw log, if it holds it.
    pub(crate) fn term_at(&self, index: u64, maps: &[&[u8]]) -> Option<u64> {
        let pos = self.runs.partition_point(|r| r.first <= index);
        let r = self.runs.get(pos.checked_sub(1)?)?;
        if index >= r.first + u64::from(r.take) {
            return None;
        }
        let payload = &maps[r.seg][r.payload_start..r.payload_start + r.payload_len];
        format::entries_iter(payload)
            .nth((r.skip as u64 + index - r.first) as usize)
            .map(|e| e.term)
    }

    /// An error message for `Uncovered`, as [`Error::Corrupt`](crate::Error::Corrupt)
    /// gives it: the file, offset and reason.
    pub(crate) fn uncovered_message(u: &Uncovered, base: u64, context: &str) -> String {
        match u {
            Uncovered::Reset { index, .. } => format!(
                "the log was reset to the snapshot at index {index} (installed from the \
                 leader), so no older snapshot can stand in for it{context}"
            ),
            Uncovered::Hole { log_start, .. } => format!(
                "the log does not reach back to the snapshot: the first entry after snapshot \
                 index {base} is {log_start}, entries {}..{} are missing{context}",
                base.saturating_add(1),
                log_start.saturating_sub(1)
            ),
        }
    }
}

/// Where `Uncovered` points: the position of the segment and the offset.
pub(crate) fn uncovered_site(u: &Uncovered) -> (usize, usize) {
    match *u {
        Uncovered::Reset { pos, offset, .. } | Uncovered::Hole { pos, offset, .. } => (pos, offset),
    }
}

/// Copies the entries of `runs` out of the segments, splitting the work
/// over the available cores.
pub(crate) fn materialise(runs: &[Run], maps: &[&[u8]]) -> Vec<Entry> {
    let total: u64 = runs.iter().map(|r| u64::from(r.take)).sum();
    // Contiguous groups of runs with roughly equal numbers of entries.
    let parts = crate::recovery::threads().min(runs.len()).max(1);
    let mut bounds = vec![0];
    let mut acc = 0u64;
    for (i, r) in runs.iter().enumerate() {
        acc += u64::from(r.take);
        if acc * parts as u64 >= total * bounds.len() as u64 && bounds.len() < parts {
            bounds.push(i + 1);
        }
    }
    if *bounds.last().unwrap_or(&0) != runs.len() {
        bounds.push(runs.len());
    }
    let chunks = crate::recovery::parallel(bounds.len() - 1, |p| {
        let group = &runs[bounds[p]..bounds[p + 1]];
        let n: usize = group.iter().map(|r| r.take as usize).sum();
        let mut out = Vec::with_capacity(n);
        for r in group {
            let payload = &maps[r.seg][r.payload_start..r.payload_start + r.payload_len];
            out.extend(
                format::entries_iter(payload)
                    .skip(r.skip as usize)
                    .take(r.take as usize)
                    .map(|e| Entry {
                        index: e.index,
                        term: e.term,
                        kind: e.kind,
                        data: e.data.to_vec(),
                    }),
            );
        }
        out
    });
    let mut chunks = chunks.into_iter();
    let mut entries = chunks.next().unwrap_or_default();
    entries.reserve(total as usize - entries.len());
    for mut c in chunks {
        entries.append(&mut c);
    }
    entries
}
