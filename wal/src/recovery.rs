//! Recovery: turning a directory of segments and snapshots back into a log.
//!
//! Recovery runs once, inside [`Wal::open`](crate::Wal::open), in four steps,
//! and modifies nothing on disk until the last one has decided what to do:
//!
//! 1. **Inventory.** Leftover temp files are removed (they never count). The
//!    segments are listed and must form an unbroken sequence. A last segment
//!    whose header is missing or partial and whose body is all zeros is an
//!    interrupted creation and is removed.
//!
//! 2. **Scan** (pass 1). Each segment is mapped read-only with `memmap2` and
//!    its frames are checked in place: header, length word, CRC, payload
//!    structure. Scanning stops at the first all-zero length word (the
//!    preallocated tail) or at the first bad frame. The first fault in file
//!    order decides:
//!    - only zeros after the last record everywhere: a clean end;
//!    - a bad last record in the **last** segment whose bytes show an
//!      unfinished write (`tear`): a **torn tail**, the normal result of a
//!      crash in the middle of an unsynced write;
//!    - anything else is **damage**: a bad record (or stray bytes) in an
//!      earlier segment, a bad last record that does not look unfinished, a
//!      record with a valid CRC but an impossible payload, a bad header, a
//!      missing segment.
//!
//! 3. **Replay** (pass 2, `replay`) of the log before the first fault,
//!    applying the raft log rules; a hole in the indexes is damage too.
//!
//! 4. **Choose the snapshot.** The last snapshot marker names the snapshot
//!    in force. Snapshot files newer than it are unfinished saves and are
//!    renamed `*.orphan`. Files are verified newest first (streaming CRC); a
//!    damaged one is renamed `*.broken` with a warning, and the next older
//!    one is tried. Falling back works only while the log still holds the
//!    entries between the older snapshot and the newer one; otherwise that is
//!    damage as well.
//!
//! Then, without damage, the entries after the snapshot are copied out and
//! the torn tail (if any) is cut: its bytes are saved to
//! `<segment>.torn-<offset>`, the region is overwritten with zeros and the
//! segment fsynced. With damage, [`OnDamage::Refuse`] fails naming the file
//! and the offset, having modified nothing in the log; [`OnDamage::Salvage`]
//! hands over to `salvage`, which keeps the good prefix.
//!
//! Pass 1 runs on several segments at once; it only reads.
//!
//! What recovery deliberately does not do without `Salvage`: repair damage,
//! guess, or drop anything it cannot prove was never acknowledged. A power
//! cut that persisted a later page of an unsynced write but not an earlier
//! one looks exactly like a damaged record followed by valid ones, and is
//! reported as damage rather than silently truncated; see `FORMAT.md`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use crate::damage::{self, Damage, DamageReason, DamageRecord, OnDamage};
use crate::format::{
    check_frame, parse_marker, parse_save, parse_segment_header, Fault, Marker, Version, REC_SAVE,
    REC_SNAPSHOT, SEGMENT_HEADER_LEN,
};
use crate::replay::{self, LogFault, Replay};
use crate::segment::parse_segment_file_name;
use crate::snapshot::{self, SnapFile};
use crate::tear::{self, all_zero};
use crate::{fsutil, salvage, Entry, Error, HardState, Options, SnapshotMeta, TornTail};

/// One live segment as the writer tracks it.
#[derive(Clone, Debug)]
pub(crate) struct SegmentInfo {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
}

/// Everything the writer needs after recovery.
pub(crate) struct Recovery {
    pub segments: Vec<SegmentInfo>,
    /// Open handle, size, append offset and format of the last segment.
    pub tail_file: File,
    pub tail_len: u64,
    pub tail_end: u64,
    pub tail_version: Version,
    /// Whether the last segment holds at least one record.
    pub tail_has_records: bool,
    pub hard_state: HardState,
    pub snapshot: Option<(SnapshotMeta, PathBuf)>,
    pub entries: Vec<Entry>,
    pub torn_tail: Option<TornTail>,
    pub set_aside: Vec<PathBuf>,
    pub damage: Option<Damage>,
    /// The last writes of a salvage, which `Wal::open` makes through its
    /// append path (it knows how to roll over when the tail is full).
    pub finish: Option<salvage::Finish>,
}

/// The bytes of one segment: mapped, or read into memory when too short to map.
pub(crate) enum SegBytes {
    Map(Mmap),
    Small(Vec<u8>),
}

impl std::ops::Deref for SegBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SegBytes::Map(m) => m,
            SegBytes::Small(v) => v,
        }
    }
}

fn load(path: &Path) -> Result<SegBytes, Error> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let len = file.metadata().map_err(Error::io("stat", path))?.len();
    if len < 4096 {
        return fs::read(path)
            .map(SegBytes::Small)
            .map_err(Error::io("read", path));
    }
    // SAFETY: the directory lock is held, so no cooperating process writes the
    // file while it is mapped; the map is read-only and dropped before this
    // process writes to the file.
    let map =
        unsafe { MmapOptions::new().populate().map(&file) }.map_err(Error::io("mmap", path))?;
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(SegBytes::Map(map))
}

/// Reads the first [`SEGMENT_HEADER_LEN`] bytes of a file (fewer if shorter).
fn read_header(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let file = File::open(path).map_err(Error::io("open", path))?;
    let mut buf = Vec::with_capacity(SEGMENT_HEADER_LEN);
    file.take(SEGMENT_HEADER_LEN as u64)
        .read_to_end(&mut buf)
        .map_err(Error::io("read", path))?;
    Ok(buf)
}

/// Offset just past the last non-zero byte in `bytes[from..]`, or `from`.
pub(crate) fn nonzero_end(bytes: &[u8], from: usize) -> usize {
    let region = &bytes[from..];
    let mut end = region.len();
    while end > 0 {
        let start = end.saturating_sub(4096);
        let chunk = &region[start..end];
        if !all_zero(chunk) {
            let last = chunk.iter().rposition(|&b| b != 0).unwrap_or(0);
            return from + start + last + 1;
        }
        end = start;
    }
    from
}

/// Pass-1 result for the records of one segment.
pub(crate) struct Scan {
    /// Offset just past the last valid record.
    pub end: usize,
    pub records: usize,
    /// End of the non-zero bytes after `end`, rounded up to 8 and capped at
    /// the file size (`end` when only zeros follow).
    pub to: usize,
    /// Why scanning stopped before `to`, and whether the record there has a
    /// valid CRC (then its payload is impossible: never a tear). `None` when
    /// the data ends cleanly.
    pub stop: Option<(Fault, bool)>,
}

/// Pass-1 result for one segment.
pub(crate) struct Checked {
    pub bytes: SegBytes,
    /// The header's format version, or why the header is bad.
    pub header: Result<Version, Fault>,
    /// The records (empty when the header is bad).
    pub scan: Scan,
}

/// The first fault of the log in file order.
pub(crate) type Site = LogFault;

/// Checks every frame of a segment of version `v` (header already checked).
fn scan(bytes: &[u8], v: Version) -> Scan {
    let mut off = SEGMENT_HEADER_LEN;
    let mut records = 0;
    let stop = loop {
        if bytes.len() - off < 8 {
            break Some((
                Fault::new(
                    DamageReason::RecordPastEnd,
                    "the file ends inside a length word",
                ),
                false,
            ));
        }
        if bytes[off..off + 8] == [0u8; 8] {
            break None;
        }
        let f = match check_frame(bytes, off, v) {
            Ok(f) => f,
            Err(fault) => break Some((fault, false)),
        };
        let payload = &bytes[f.payload_start..f.payload_start + f.payload_len];
        let parsed = match f.kind {
            REC_SAVE => parse_save(payload).map(|_| ()),
            REC_SNAPSHOT => parse_marker(payload).map(|_| ()),
            other => Err(format!(
                "record type {other} is unknown (written by a newer version?)"
            )),
        };
        if let Err(r) = parsed {
            break Some((Fault::new(DamageReason::BadPayload, r), true));
        }
        records += 1;
        off += f.total;
    };
    let to = ((nonzero_end(bytes, off) + 7) & !7).min(bytes.len());
    let stop = if to == off {
        None
    } else {
        Some(stop.unwrap_or_else(|| {
            (
                Fault::new(
                    DamageReason::DataAfterEnd,
                    "non-zero bytes follow the end-of-data marker",
                ),
                false,
            )
        }))
    };
    Scan {
        end: off,
        records,
        to,
        stop,
    }
}

/// The segments found, oldest first, and the first hole in their sequence.
struct Inventory {
    segs: Vec<SegmentInfo>,
    /// Position of the first segment after a hole, and the missing sequence.
    gap: Option<(usize, u64)>,
}

/// Lists the segments, drops an interrupted last creation, checks the
/// sequence (a hole fails unless `salvage`).
fn inventory(dir: &Path, salvage: bool) -> Result<Inventory, Error> {
    let mut segs: Vec<SegmentInfo> = fsutil::list_names(dir)?
        .into_iter()
        .filter_map(|name| {
            let (seq, first_index) = parse_segment_file_name(&name)?;
            Some(SegmentInfo {
                seq,
                first_index,
                path: dir.join(name),
            })
        })
        .collect();
    segs.sort_by_key(|s| s.seq);
    if let Some(last) = segs.last() {
        if parse_segment_header(&read_header(&last.path)?).is_err() {
            let bytes = load(&last.path)?;
            let body = bytes.get(SEGMENT_HEADER_LEN..).unwrap_or(&[]);
            if all_zero(body) {
                log::warn!(
                    "removing {}: its header is incomplete and it holds no records \
                     (a segment creation was interrupted)",
                    last.path.display()
                );
                drop(bytes);
                fs::remove_file(&last.path).map_err(Error::io("remove", &last.path))?;
                fsutil::fsync_dir(dir)?;
                segs.pop();
            }
        }
    }
    let mut gap = None;
    for (pos, pair) in segs.windows(2).enumerate() {
        if pair[1].seq != pair[0].seq + 1 {
            if !salvage {
                return Err(Error::corrupt(
                    &pair[1].path,
                    0,
                    format!(
                        "segment sequence jumps from {} to {}: segment {} is missing",
                        pair[0].seq,
                        pair[1].seq,
                        pair[0].seq + 1
                    ),
                ));
            }
            gap = Some((pos + 1, pair[0].seq + 1));
            break;
        }
    }
    Ok(Inventory { segs, gap })
}

/// Reads and checks segment `seg` (pass 1).
fn check_segment(seg: &SegmentInfo) -> Result<Checked, Error> {
    let bytes = load(&seg.path)?;
    let empty = Scan {
        end: SEGMENT_HEADER_LEN,
        records: 0,
        to: SEGMENT_HEADER_LEN,
        stop: None,
    };
    let bad = |detail: String| Fault::new(DamageReason::BadSegmentHeader, detail);
    let header = match parse_segment_header(&bytes) {
        Err(detail) => Err(bad(detail)),
        Ok((seq, first, _)) if (seq, first) != (seg.seq, seg.first_index) => Err(bad(format!(
            "header says sequence {seq} first index {first}, but the file name says \
             sequence {} first index {}",
            seg.seq, seg.first_index
        ))),
        Ok((_, _, v)) => Ok(v),
    };
    let scan = match header {
        Ok(v) => scan(&bytes, v),
        Err(_) => empty,
    };
    Ok(Checked {
        bytes,
        header,
        scan,
    })
}

/// The first fault in file order, and the torn tail if the log ends in one.
fn first_fault(
    segs: &[SegmentInfo],
    checked: &[Checked],
    gap: Option<(usize, u64)>,
) -> (Option<Site>, Option<(usize, usize)>) {
    let last_pos = segs.len() - 1;
    for (pos, c) in checked.iter().enumerate() {
        if let Some((g, missing)) = gap {
            if g == pos {
                let fault = Fault::new(
                    DamageReason::MissingSegment { sequence: missing },
                    format!(
                        "segment sequence jumps from {} to {}: segment {missing} is missing",
                        missing - 1,
                        segs[pos].seq
                    ),
                );
                return (Some(whole(pos, fault)), None);
            }
        }
        let v = match &c.header {
            Ok(v) => *v,
            Err(fault) => return (Some(whole(pos, fault.clone())), None),
        };
        let Some((fault, valid_crc)) = &c.scan.stop else {
            continue;
        };
        let detail = if *valid_crc {
            fault.detail.clone()
        } else if pos != last_pos {
            format!(
                "{}, in a segment that is not the last one (later segments exist, so this one \
                 was complete and synced)",
                fault.detail
            )
        } else {
            match tear::classify(&c.bytes, c.scan.end, v) {
                Ok(()) => return (None, Some((c.scan.end, c.scan.to))),
                Err(why) => format!(
                    "{}, and the bytes do not show an unfinished write: {why}; so this is not \
                     the torn tail of a crash",
                    fault.detail
                ),
            }
        };
        let site = LogFault {
            pos,
            offset: c.scan.end,
            whole: false,
            fault: Fault::new(fault.reason, detail),
        };
        return (Some(site), None);
    }
    (None, None)
}

fn whole(pos: usize, fault: Fault) -> Site {
    LogFault {
        pos,
        offset: 0,
        whole: true,
        fault,
    }
}

/// Runs recovery on `dir`. Returns `None` if there is no segment at all (a
/// new directory, or one whose initialisation never completed).
pub(crate) fn recover(
    dir: &Path,
    snap_dir: &Path,
    opts: &Options,
) -> Result<Option<Recovery>, Error> {
    fsutil::remove_temp_files(dir)?;
    fsutil::remove_temp_files(snap_dir)?;
    let marker = damage::read(dir)?;
    // A salvage that a crash interrupted is always finished, whatever the
    // options say: its marker is written and parts of the log may be set
    // aside already.
    let salvage =
        opts.on_damage == OnDamage::Salvage || marker.as_ref().is_some_and(|m| m.in_progress);
    let Inventory { segs, gap } = inventory(dir, salvage)?;
    if segs.is_empty() {
        let mut set_aside = Vec::new();
        for f in snapshot::list(snap_dir)? {
            log::warn!(
                "snapshot {} has no log recording it; setting it aside",
                f.path.display()
            );
            set_aside.push(snapshot::set_aside(&f.path, "orphan")?);
        }
        if !set_aside.is_empty() {
            log::warn!("the WAL has no segments; starting an empty log");
        }
        return Ok(None);
    }

    // Pass 1: map and check every segment, several at a time.
    let checked = parallel(segs.len(), |pos| check_segment(&segs[pos]))
        .into_iter()
        .collect::<Result<Vec<Checked>, Error>>()?;
    let (mut site, mut torn) = first_fault(&segs, &checked, gap);
    if let (Some(s), false) = (&site, salvage) {
        return Err(Error::corrupt(
            &segs[s.pos].path,
            s.offset as u64,
            s.fault.detail.clone(),
        ));
    }

    // Pass 2: replay the log before the first fault.
    let mut replay = Replay::new(segs[0].first_index, 0);
    let limit = site
        .as_ref()
        .map_or(segs.len(), |s| if s.whole { s.pos } else { s.pos + 1 });
    for pos in 0..limit {
        let end = match &site {
            Some(s) if s.pos == pos => s.offset,
            _ => checked[pos].scan.end,
        };
        let first = segs[pos].first_index;
        if let Err(f) = replay.segment(pos, &checked[pos].bytes, end, first, pos > 0) {
            if !salvage {
                return Err(Error::corrupt(
                    &segs[f.pos].path,
                    f.offset as u64,
                    f.fault.detail,
                ));
            }
            torn = None;
            site = Some(f);
            break;
        }
    }

    // Choose the snapshot: the one the last marker names, or an older one.
    // After damage, markers are read from every readable record, before or
    // after it.
    let survey = site.as_ref().map(|s| salvage::survey(&checked, Some(s)));
    let mut markers: Vec<Marker> = replay.markers.clone();
    if let Some(sv) = &survey {
        markers.extend(sv.after.markers.iter().copied());
    }
    if let Some(m) = marker
        .as_ref()
        .filter(|m| m.in_progress && m.snapshot.0 > 0)
    {
        // The snapshot an interrupted salvage chose; its marker may have been
        // set aside with the damaged region.
        markers.push(Marker {
            index: m.snapshot.0,
            term: m.snapshot.1,
            reset: false,
        });
    }
    let newest = markers.last().copied();
    let choice = choose_snapshot(snap_dir, newest)?;
    let base = choice.chosen.as_ref().map_or(0, |(m, _)| m.index);
    let covered = replay.covers(base);

    let in_progress = marker.as_ref().is_some_and(|m| m.in_progress);
    if salvage && (site.is_some() || covered.is_err() || in_progress) {
        let survey = survey.unwrap_or_else(|| salvage::survey(&checked, None));
        return salvage::run(salvage::Context {
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
        })
        .map(Some);
    }
    let set_aside = apply_set_aside(&choice.set_aside)?;
    if let Err(u) = covered {
        let (pos, offset) = replay::uncovered_site(&u);
        let context = choice
            .note
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})"));
        return Err(Error::corrupt(
            &segs[pos].path,
            offset as u64,
            Replay::uncovered_message(&u, base, &context),
        ));
    }
    let maps: Vec<&[u8]> = checked.iter().map(|c| &c.bytes[..]).collect();
    let entries = replay::materialise(&replay.live(base), &maps);
    let last_pos = segs.len() - 1;
    let tail_end = checked[last_pos].scan.end as u64;
    let tail_version = checked[last_pos].header.clone().unwrap_or(Version::CURRENT);
    let tail_has_records = checked[last_pos].scan.records > 0;
    let tail_path = segs[last_pos].path.clone();
    let tail_len = checked[last_pos].bytes.len() as u64;
    let torn_region = torn.map(|(at, to)| (at, checked[last_pos].bytes[at..to].to_vec()));
    drop(maps);
    drop(checked);
    let (tail_file, tail_len, torn_tail) =
        finish_tail(dir, &tail_path, tail_len, torn_region, opts)?;
    let last_index = entries.last().map_or(base, |e| e.index);
    let damage = marker.map(|m| pending_report(dir, &m, last_index));
    Ok(Some(Recovery {
        tail_has_records,
        segments: segs,
        tail_file,
        tail_len,
        tail_end,
        tail_version,
        hard_state: replay.hard_state,
        snapshot: choice.chosen,
        entries,
        torn_tail,
        set_aside,
        damage,
        finish: None,
    }))
}

/// The report for a `DAMAGE` marker found at open, on a log that needed no
/// salvage now.
pub(crate) fn pending_report(dir: &Path, m: &DamageRecord, last_index: u64) -> Damage {
    log::warn!(
        "{}: damage found earlier ({:?} in {} at offset {}) is not repaired yet; the DAMAGE \
         marker stays until the node has caught up from its peers (Wal::clear_damage)",
        dir.display(),
        m.reason,
        m.file.display(),
        m.offset
    );
    Damage {
        file: dir.join(&m.file),
        offset: m.offset,
        reason: m.reason,
        kept_last_index: last_index,
        hard_state_intact: m.hard_state_intact,
        max_term_seen: m.max_term_seen,
        snapshot_lost: false,
        set_aside: Vec::new(),
        pending: true,
    }
}

/// Opens the tail segment for appending: cuts the torn tail `torn` (its
/// offset and bytes) if there is one, and restores the preallocation of a
/// tail that was shortened.
pub(crate) fn finish_tail(
    dir: &Path,
    tail: &Path,
    mut tail_len: u64,
    torn: Option<(usize, Vec<u8>)>,
    opts: &Options,
) -> Result<(File, u64, Option<TornTail>), Error> {
    let tail_file = fsutil::open_rw(tail)?;
    let mut torn_tail = None;
    if let Some((at, cut)) = torn {
        let mut side = tail.to_path_buf().into_os_string();
        side.push(format!(".torn-{at}"));
        let side = PathBuf::from(side);
        log::warn!(
            "{}: torn tail of {} bytes at offset {at} (an unfinished write from a crash); \
             truncating to the last valid record and keeping the cut bytes in {}",
            tail.display(),
            cut.len(),
            side.display()
        );
        let f = fsutil::create_rw(&side)?;
        fsutil::write_at(&f, &side, &cut, 0)?;
        f.sync_all().map_err(Error::io("fsync", &side))?;
        fsutil::fsync_dir(dir)?;
        let to = at as u64 + cut.len() as u64;
        fsutil::write_zeros(&tail_file, tail, at as u64, to)?;
        torn_tail = Some(TornTail {
            segment: tail.to_path_buf(),
            offset: at as u64,
            bytes_cut: cut.len() as u64,
            side_file: side,
        });
    }
    if tail_len < opts.segment_size {
        // A tail shortened by truncation: restore the preallocation so that
        // later appends do not have to grow the file.
        fsutil::write_zeros(&tail_file, tail, tail_len, opts.segment_size)?;
        tail_len = opts.segment_size;
        tail_file.sync_all().map_err(Error::io("fsync", tail))?;
    } else if torn_tail.is_some() {
        fsutil::sync_data(&tail_file, tail)?;
    }
    Ok((tail_file, tail_len, torn_tail))
}

/// What [`choose_snapshot`] decided, before anything is renamed.
pub(crate) struct Choice {
    /// The snapshot recovery starts from.
    pub chosen: Option<(SnapshotMeta, PathBuf)>,
    /// Files to set aside, with the suffix (`orphan` or `broken`).
    pub set_aside: Vec<(PathBuf, &'static str)>,
    /// Why recovery fell back to an older snapshot, for error messages.
    pub note: Option<String>,
}

/// Renames the files `choose_snapshot` set aside; returns their new paths.
pub(crate) fn apply_set_aside(files: &[(PathBuf, &'static str)]) -> Result<Vec<PathBuf>, Error> {
    files
        .iter()
        .map(|(path, suffix)| snapshot::set_aside(path, suffix))
        .collect()
}

/// Picks the snapshot to recover from, given the newest marker. Reads and
/// verifies, but renames nothing: the files to set aside (orphans newer than
/// the marker, damaged files) are listed in the result.
fn choose_snapshot(snap_dir: &Path, newest: Option<Marker>) -> Result<Choice, Error> {
    let mut set_aside = Vec::new();
    let mut candidates: Vec<SnapFile> = Vec::new();
    for f in snapshot::list(snap_dir)? {
        let orphan = match newest {
            None => true,
            Some(m) => f.index > m.index || (f.index == m.index && f.term != m.term),
        };
        if orphan {
            log::warn!(
                "snapshot {} is not recorded in the log (a snapshot save was interrupted); \
                 setting it aside",
                f.path.display()
            );
            set_aside.push((f.path, "orphan"));
        } else {
            candidates.push(f);
        }
    }
    let mut problems = Vec::new();
    if let Some(m) = newest {
        if !candidates.iter().any(|f| f.index == m.index) {
            problems.push(format!(
                "the snapshot file {} recorded in the log is missing",
                snapshot::snapshot_file_name(m.index, m.term)
            ));
        }
    }
    let mut chosen = None;
    for f in candidates {
        match snapshot::check(&f)? {
            Ok(meta) => {
                chosen = Some((meta, f.path));
                break;
            }
            Err(reason) => {
                log::warn!(
                    "snapshot {} is damaged ({reason}); setting it aside as .broken and trying \
                     the next older snapshot",
                    f.path.display(),
                );
                problems.push(format!("{} is damaged ({reason})", f.path.display()));
                set_aside.push((f.path, "broken"));
            }
        }
    }
    let chosen_index = chosen
        .as_ref()
        .map_or(0, |(m, _): &(SnapshotMeta, _)| m.index);
    let note = match newest {
        Some(m) if m.index != chosen_index => {
            let note = format!(
                "the newest snapshot (index {}) is unusable: {}; recovering from {} instead",
                m.index,
                problems.join("; "),
                if chosen_index == 0 {
                    "an empty state".to_string()
                } else {
                    format!("the snapshot at index {chosen_index}")
                }
            );
            log::warn!("{note}");
            Some(note)
        }
        _ => None,
    };
    Ok(Choice {
        chosen,
        set_aside,
        note,
    })
}

/// How many threads recovery uses.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// `(0..n).map(f).collect()`, spread over [`threads`] scoped threads.
pub(crate) fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let k = threads().min(n);
    if k <= 1 {
        return (0..n).map(f).collect();
    }
    let f = &f;
    let mut out: Vec<(usize, T)> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..k)
            .map(|t| s.spawn(move || (t..n).step_by(k).map(|i| (i, f(i))).collect::<Vec<_>>()))
            .collect();
        let mut out: Vec<(usize, T)> = (0..n).step_by(k).map(|i| (i, f(i))).collect();
        for h in helpers {
            match h.join() {
                Ok(part) => out.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    });
    out.sort_by_key(|p| p.0);
    out.into_iter().map(|p| p.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_end_finds_the_last_set_byte() {
        let mut v = vec![0u8; 10_000];
        assert_eq!(nonzero_end(&v, 0), 0);
        v[5000] = 1;
        assert_eq!(nonzero_end(&v, 0), 5001);
        assert_eq!(nonzero_end(&v, 6000), 6000);
        v[9999] = 1;
        assert_eq!(nonzero_end(&v, 100), 10_000);
    }
}
