//! Salvage: keeping the good prefix of a damaged log ([`OnDamage::Salvage`]).
//!
//! Recovery found damage (`recovery`): the first fault in file order, which
//! is not a torn tail. Salvage decides what to keep, records the decision in
//! the `DAMAGE` marker (`damage`), and only then changes the directory.
//!
//! # What is kept
//!
//! - **The log**: every record before the damage, in file order. Entries
//!   after it are dropped, since they may depend on the damaged record.
//! - **The snapshot**: the newest intact snapshot file not newer than the
//!   last marker readable anywhere, before or after the damage (a record's
//!   CRC proves it was written). Entries at or below it are skipped. If the
//!   kept log does not reach back to it, or does not hold its last entry
//!   while its marker was lost with the damage, no entry is kept. With no
//!   usable snapshot and a log that does not start at index 1, nothing is
//!   kept: the state is lost ([`Damage::snapshot_lost`]).
//! - **The hard state**: term and vote of the last valid record carrying a
//!   hard state *after* the damage, if there is one (every segment head
//!   restates it, so damage in an older segment keeps the newest vote); then
//!   they are intact. Otherwise those of the last one before the damage, a
//!   lower bound only. The commit index is the kept prefix's, clipped to the
//!   kept log and raised to the snapshot.
//!
//! # In what order the directory changes
//!
//! 1. The `DAMAGE` marker is written (flagged *in progress*), holding the
//!    term, vote and snapshot chosen: from here on, every open reports the
//!    damage, and an interrupted salvage is resumed with the same decisions
//!    even though the records that proved them may be set aside already.
//! 2. Damaged snapshot files and orphans are renamed aside.
//! 3. If no segment can stay the tail (the first segment's header is the
//!    damage, or the state is lost), a fresh segment is installed after the
//!    last one, starting with the hard state and the snapshot marker.
//! 4. The segments after the tail are renamed `<name>.corrupt`, newest
//!    first, so that a crash leaves an unbroken run.
//! 5. The damaged segment's bytes from the damage to its last non-zero byte
//!    are copied to `<segment>.corrupt-<offset>` (fsynced) and zeroed.
//! 6. `Wal::open` appends the snapshot marker (flagged reset when the kept
//!    log does not hold its last entry) and the hard state, each synced, and
//!    rewrites the marker without the in-progress flag.
//!
//! What salvage does not do: fetch anything from peers, or decide when the
//! damage is repaired. The caller does both, then calls
//! [`Wal::clear_damage`](crate::Wal::clear_damage).
//!
//! [`OnDamage::Salvage`]: crate::OnDamage::Salvage

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::damage::{self, relative, Damage, DamageReason, DamageRecord};
use crate::format::{
    self, check_frame, parse_marker, parse_save, Marker, Version, FRAME_TAG, REC_SAVE,
    REC_SNAPSHOT, SEGMENT_HEADER_LEN,
};
use crate::recovery::{
    apply_set_aside, finish_tail, nonzero_end, Checked, Choice, Recovery, SegmentInfo, Site,
};
use crate::replay::{materialise, Replay};
use crate::{failpoint, fsutil, segment, snapshot, Error, HardState, Options};

/// What the readable records of a region hold.
#[derive(Debug, Default)]
pub(crate) struct Survey {
    /// The last hard state, in file order.
    pub last_hs: Option<HardState>,
    /// The highest term of any hard state, entry or snapshot marker.
    pub max_term: u64,
    /// The snapshot markers, in file order.
    pub markers: Vec<Marker>,
}

/// The records before the damage and after it.
#[derive(Debug, Default)]
pub(crate) struct Surveyed {
    pub before: Survey,
    pub after: Survey,
}

/// Reads every record that can be read in `bytes[from..to)`: a frame whose
/// length word, CRC and payload check out, at any 8-aligned offset. Damaged
/// stretches are skipped 8 bytes at a time. `v` is the segment's version, or
/// `None` when its header is damaged (then either version is accepted).
fn survey_region(bytes: &[u8], from: usize, to: usize, v: Option<Version>, out: &mut Survey) {
    let stop = nonzero_end(bytes, from.min(bytes.len())).min(to);
    let mut off = (from + 7) & !7;
    while off < stop && bytes.len() - off >= 16 {
        if bytes[off + 6] == FRAME_TAG {
            let frame = match v {
                Some(v) => check_frame(bytes, off, v).ok(),
                None => check_frame(bytes, off, Version::V2)
                    .or_else(|_| check_frame(bytes, off, Version::V1))
                    .ok(),
            };
            if let Some(f) = frame {
                let payload = &bytes[f.payload_start..f.payload_start + f.payload_len];
                let read = match f.kind {
                    REC_SAVE => parse_save(payload).is_ok_and(|sv| {
                        if let Some(hs) = sv.hard_state {
                            out.last_hs = Some(hs);
                            out.max_term = out.max_term.max(hs.term);
                        }
                        for e in format::entries_iter(payload) {
                            out.max_term = out.max_term.max(e.term);
                        }
                        true
                    }),
                    REC_SNAPSHOT => parse_marker(payload).is_ok_and(|m| {
                        out.max_term = out.max_term.max(m.term);
                        out.markers.push(m);
                        true
                    }),
                    _ => false,
                };
                if read {
                    off += f.total;
                    continue;
                }
            }
        }
        off += 8;
    }
}

/// Surveys the log before `site` (the kept prefix: all of it if `None`) and
/// after it (everything readable, to the end of the last segment).
pub(crate) fn survey(checked: &[Checked], site: Option<&Site>) -> Surveyed {
    let mut s = Surveyed::default();
    let version = |c: &Checked| c.header.clone().ok();
    let split = site.map_or(checked.len(), |s| s.pos);
    for c in &checked[..split] {
        survey_region(
            &c.bytes,
            SEGMENT_HEADER_LEN,
            c.scan.end,
            version(c),
            &mut s.before,
        );
    }
    let Some(site) = site else {
        return s;
    };
    let c = &checked[site.pos];
    let from = if site.whole {
        SEGMENT_HEADER_LEN
    } else {
        survey_region(
            &c.bytes,
            SEGMENT_HEADER_LEN,
            site.offset,
            version(c),
            &mut s.before,
        );
        site.offset
    };
    survey_region(&c.bytes, from, c.bytes.len(), version(c), &mut s.after);
    for c in &checked[site.pos + 1..] {
        let len = c.bytes.len();
        survey_region(&c.bytes, SEGMENT_HEADER_LEN, len, version(c), &mut s.after);
    }
    s
}

/// The writes that complete a salvage, made by `Wal::open` through its
/// append path.
pub(crate) struct Finish {
    /// The snapshot marker to append (restating, or reset).
    pub marker: Option<Marker>,
    /// The hard state to append.
    pub hard_state: Option<HardState>,
    /// The `DAMAGE` marker to write once both are durable (not in progress).
    pub record: DamageRecord,
}

/// Everything recovery knows when it hands over to salvage.
pub(crate) struct Context<'a> {
    pub dir: &'a Path,
    pub snap_dir: &'a Path,
    pub opts: &'a Options,
    pub segs: Vec<SegmentInfo>,
    pub checked: Vec<Checked>,
    /// The first damage in the log, if the log itself is damaged.
    pub site: Option<Site>,
    /// A torn tail (only when the log itself is not damaged).
    pub torn: Option<(usize, usize)>,
    pub survey: Surveyed,
    pub replay: Replay,
    pub choice: Choice,
    /// The marker that named the snapshot in force (the last one readable).
    pub newest: Option<Marker>,
    /// The `DAMAGE` marker found at open.
    pub marker: Option<DamageRecord>,
}

/// Which segment appends go to after the salvage.
enum Tail {
    /// A new segment after every existing one, starting at `first_index`.
    Fresh { first_index: u64 },
    /// Segment `pos`, whose records end at `end`; the bytes in
    /// `zero = (from, to)` are damaged and get zeroed.
    Keep {
        pos: usize,
        end: usize,
        zero: Option<(usize, usize)>,
    },
}

/// The tail once step 3 ran.
enum Placed {
    Fresh {
        seq: u64,
        first_index: u64,
        inst: segment::Installed,
        head_len: usize,
    },
    Keep {
        pos: usize,
        end: usize,
    },
}

/// `path` with `suffix` appended, or with `suffix.1`, `suffix.2`, ... if
/// that name is taken: a file set aside never replaces another.
fn unused_name(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    let base = PathBuf::from(name);
    if !base.exists() {
        return base;
    }
    (1u64..)
        .map(|n| {
            let mut name = base.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        })
        .find(|p| !p.exists())
        .unwrap_or(base)
}

/// Salvages the directory: keeps the good prefix, sets the rest aside, and
/// returns what the writer needs, with the [`Damage`] report.
pub(crate) fn run(cx: Context) -> Result<Recovery, Error> {
    let Context {
        dir,
        snap_dir,
        opts,
        segs,
        checked,
        site,
        torn,
        survey,
        replay,
        choice,
        newest,
        marker,
    } = cx;
    let maps: Vec<&[u8]> = checked.iter().map(|c| &c.bytes[..]).collect();
    let last_pos = segs.len() - 1;

    // The snapshot, and whether the entries of the prefix can follow it.
    let (b_index, b_term) = choice
        .chosen
        .as_ref()
        .map_or((0, 0), |(m, _)| (m.index, m.term));
    let covered = replay.covers(b_index).is_ok();
    let marker_in_prefix = b_index > 0
        && replay
            .markers
            .iter()
            .any(|m| (m.index, m.term) == (b_index, b_term));
    let contains_b = b_index > 0 && replay.term_at(b_index, &maps) == Some(b_term);
    let keep_entries = covered && (b_index == 0 || marker_in_prefix || contains_b);
    let state_lost = !covered && b_index == 0;
    let entries = if keep_entries {
        materialise(&replay.live(b_index), &maps)
    } else {
        Vec::new()
    };
    let kept_last = entries.last().map_or(b_index, |e| e.index);

    // The hard state: the newest term and vote readable after the damage.
    let prefix_hs = replay.hard_state;
    let (intact, newest_hs) = match (&site, survey.after.last_hs) {
        (Some(_), Some(h)) => (true, h),
        (Some(_), None) => (false, prefix_hs),
        (None, _) => (true, prefix_hs),
    };
    let max_term = survey
        .before
        .max_term
        .max(survey.after.max_term)
        .max(newest_hs.term);

    // Where the damage is.
    let (file, offset, reason) = match (&site, &marker) {
        (_, Some(old)) if old.in_progress => (dir.join(&old.file), old.offset, old.reason),
        (Some(s), _) => (segs[s.pos].path.clone(), s.offset as u64, s.fault.reason),
        (None, _) => {
            let index = newest.map_or(0, |m| m.index);
            let file = newest.map_or(snap_dir.to_path_buf(), |m| {
                snap_dir.join(snapshot::snapshot_file_name(m.index, m.term))
            });
            (file, 0, DamageReason::SnapshotUnusable { index })
        }
    };
    let mut record = DamageRecord {
        in_progress: true,
        hard_state_intact: intact,
        max_term_seen: max_term,
        term: newest_hs.term,
        vote: newest_hs.vote,
        snapshot: (b_index, b_term),
        file: relative(dir, &file),
        offset,
        reason,
    };
    if let Some(old) = &marker {
        record.merge_older(old);
    }
    let hs = HardState {
        term: record.term,
        vote: record.vote,
        commit: prefix_hs.commit.min(kept_last).max(b_index),
    };

    // Which segment becomes the tail, and which are set aside.
    let (tail, set_aside_from) = if state_lost {
        (Tail::Fresh { first_index: 1 }, 0)
    } else {
        match &site {
            Some(s) if s.whole && s.pos == 0 => (
                Tail::Fresh {
                    first_index: b_index.saturating_add(1),
                },
                0,
            ),
            Some(s) if s.whole => (
                Tail::Keep {
                    pos: s.pos - 1,
                    end: checked[s.pos - 1].scan.end,
                    zero: None,
                },
                s.pos,
            ),
            Some(s) => (
                Tail::Keep {
                    pos: s.pos,
                    end: s.offset,
                    zero: Some((s.offset, checked[s.pos].scan.to.max(s.offset))),
                },
                s.pos + 1,
            ),
            None => (
                Tail::Keep {
                    pos: last_pos,
                    end: checked[last_pos].scan.end,
                    zero: None,
                },
                segs.len(),
            ),
        }
    };
    let snap_marker = (b_index > 0).then_some(Marker {
        index: b_index,
        term: b_term,
        reset: !keep_entries,
    });

    // Copy out what the writes below would change, then let go of the maps.
    let damaged_bytes = match &tail {
        Tail::Keep {
            pos,
            zero: Some((from, to)),
            ..
        } => maps[*pos][*from..*to].to_vec(),
        _ => Vec::new(),
    };
    let torn_region = match (&tail, torn) {
        (Tail::Keep { pos, .. }, Some((at, to))) if *pos == last_pos => {
            Some((at, maps[last_pos][at..to].to_vec()))
        }
        _ => None,
    };
    let tail_info = match &tail {
        Tail::Keep { pos, .. } => Some((
            checked[*pos].header.clone().unwrap_or(Version::CURRENT),
            checked[*pos].bytes.len() as u64,
        )),
        Tail::Fresh { .. } => None,
    };
    drop(maps);
    drop(checked);

    // 1. The marker, before anything changes.
    damage::write(dir, &record)?;
    failpoint::hit("salvage:after-marker")?;
    // 2. Snapshot files.
    let snap_set_aside = apply_set_aside(&choice.set_aside)?;
    // 3. A fresh tail, if no segment can be one.
    let placed = match &tail {
        Tail::Fresh { first_index } => {
            let seq = segs.last().map_or(0, |s| s.seq + 1);
            let mut head = Vec::new();
            format::push_save(&mut head, Version::CURRENT, Some(&hs), &[])?;
            if let Some(m) = snap_marker {
                let m = Marker { reset: false, ..m };
                format::push_marker(&mut head, Version::CURRENT, &m)?;
            }
            let size = opts.segment_size;
            let prepared = segment::prepare(dir, seq, size)?;
            let inst = segment::install(prepared, dir, seq, *first_index, &head, size)?;
            failpoint::hit("salvage:after-fresh")?;
            Placed::Fresh {
                seq,
                first_index: *first_index,
                inst,
                head_len: head.len(),
            }
        }
        Tail::Keep { pos, end, .. } => Placed::Keep {
            pos: *pos,
            end: *end,
        },
    };
    // 4. The segments after the tail, newest first.
    let mut set_aside = Vec::new();
    for seg in segs[set_aside_from..].iter().rev() {
        let to = unused_name(&seg.path, ".corrupt");
        fsutil::rename_durable(&seg.path, &to, dir)?;
        set_aside.push(to);
        failpoint::hit("salvage:after-rename")?;
    }
    set_aside.reverse();
    // 5. The damaged region of the tail.
    if let Tail::Keep {
        pos,
        zero: Some((from, to)),
        ..
    } = &tail
    {
        let path = &segs[*pos].path;
        let side = unused_name(path, &format!(".corrupt-{from}"));
        let f = fsutil::create_rw(&side)?;
        fsutil::write_at(&f, &side, &damaged_bytes, 0)?;
        f.sync_all().map_err(Error::io("fsync", &side))?;
        fsutil::fsync_dir(dir)?;
        set_aside.push(side);
        failpoint::hit("salvage:after-side-file")?;
        let file = fsutil::open_rw(path)?;
        fsutil::write_zeros(&file, path, *from as u64, *to as u64)?;
        fsutil::sync_data(&file, path)?;
        failpoint::hit("salvage:after-zero")?;
    }

    let report = Damage {
        file: dir.join(&record.file),
        offset: record.offset,
        reason: record.reason,
        kept_last_index: kept_last,
        hard_state_intact: record.hard_state_intact,
        max_term_seen: record.max_term_seen,
        snapshot_lost: state_lost,
        set_aside,
        pending: marker.is_some(),
    };
    log::warn!(
        "{}: damage at byte offset {} ({:?}); salvaged the log: kept {} up to index {} \
         (snapshot {}), hard state term {} vote {} {}, highest term seen {}, {} files set \
         aside. The node must be repaired from its peers before it votes again.",
        report.file.display(),
        report.offset,
        report.reason,
        if entries.is_empty() {
            "no entries"
        } else {
            "entries"
        },
        kept_last,
        b_index,
        hs.term,
        hs.vote,
        if report.hard_state_intact {
            "(intact)"
        } else {
            "(may be older than the newest)"
        },
        report.max_term_seen,
        report.set_aside.len()
    );
    let finished = DamageRecord {
        in_progress: false,
        ..record
    };

    Ok(match placed {
        Placed::Fresh {
            seq,
            first_index,
            inst,
            head_len,
        } => Recovery {
            segments: vec![SegmentInfo {
                seq,
                first_index,
                path: inst.path,
            }],
            tail_file: inst.file,
            tail_len: inst.size,
            tail_end: (SEGMENT_HEADER_LEN + head_len) as u64,
            tail_version: Version::CURRENT,
            tail_has_records: true,
            hard_state: hs,
            snapshot: choice.chosen,
            entries,
            torn_tail: None,
            set_aside: snap_set_aside,
            damage: Some(report),
            finish: Some(Finish {
                marker: None,
                hard_state: None,
                record: finished,
            }),
        },
        Placed::Keep { pos, end } => {
            let (tail_version, tail_len) = tail_info.unwrap_or((Version::CURRENT, 0));
            let mut segments = segs;
            segments.truncate(pos + 1);
            let (tail_file, tail_len, torn_tail) =
                finish_tail(dir, &segments[pos].path, tail_len, torn_region, opts)?;
            Recovery {
                segments,
                tail_file,
                tail_len,
                tail_end: end as u64,
                tail_version,
                tail_has_records: true,
                hard_state: hs,
                snapshot: choice.chosen,
                entries,
                torn_tail,
                set_aside: snap_set_aside,
                damage: Some(report),
                finish: Some(Finish {
                    marker: snap_marker,
                    hard_state: Some(hs),
                    record: finished,
                }),
            }
        }
    })
}
