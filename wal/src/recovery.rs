//! Recovery: turning a directory of segments and snapshots back into a log.
//!
//! Recovery runs once, inside [`Wal::open`](crate::Wal::open), in four steps,
//! and modifies nothing on disk until the last one has decided that the
//! directory is usable:
//!
//! 1. **Inventory.** Leftover temp files are removed (they never count). The
//!    segments are listed and must form an unbroken sequence. A last segment
//!    whose header is missing or partial and whose body is all zeros is an
//!    interrupted creation and is removed; any other bad header is corruption.
//!
//! 2. **Scan** (pass 1). Each segment is mapped read-only with `memmap2` and
//!    its frames are checked in place: length word, CRC, payload structure.
//!    Scanning stops at the first all-zero length word (the preallocated
//!    tail) or at the first bad frame. What follows that point decides the
//!    verdict:
//!    - only zeros: a clean end;
//!    - in the **last** segment, non-zero bytes of which no 8-byte-aligned
//!      offset starts a frame with a valid CRC: a **torn tail**, the normal
//!      result of a crash in the middle of an unsynced write;
//!    - anything else (a bad frame or stray bytes in an earlier segment, or a
//!      bad region followed by a valid frame anywhere): **corruption**. A valid
//!      frame after the damage proves the damage is not the end of what was
//!      written, so it may hide acknowledged data; the WAL refuses to open.
//!
//! 3. **Choose the snapshot.** The last snapshot marker in the log names the
//!    snapshot in force. Snapshot files newer than it are unfinished saves and
//!    are renamed `*.orphan`. Files are verified newest first (streaming CRC);
//!    a damaged one is renamed `*.broken` with a warning, and the next older
//!    one is tried. Falling back works only while the log still holds the
//!    entries between the older snapshot and the newer one.
//!
//! 4. **Replay** (pass 2). Frames are walked again, without re-checking
//!    CRCs, applying the raft log rules record by record: entries at index
//!    `i` discard every entry at `>= i`; a marker flagged *reset* discards
//!    the whole log after its index (paper §7, a follower whose log did not
//!    contain the snapshot's last entry); entries at or below the chosen
//!    snapshot are skipped. Any hole is corruption. The survivors are kept
//!    as runs (record, skip, take) and only then copied out into `Entry`
//!    values, split over the available cores: allocating the entries'
//!    memory is most of the cost of opening a large log. Only when replay
//!    succeeded is the torn tail cut: its bytes are saved to
//!    `<segment>.torn-<offset>`, the region is overwritten with zeros and
//!    the segment fsynced.
//!
//! Pass 1 also runs on several segments at once; both passes only read.
//!
//! What recovery deliberately does not do: repair corruption, guess, or drop
//! anything it cannot prove was never acknowledged. A power cut that
//! persisted a later page of an unsynced write but not an earlier one looks
//! exactly like a damaged record followed by valid ones, and is reported as
//! corruption rather than silently truncated; see `FORMAT.md`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use crate::format::{
    self, check_frame, parse_marker, parse_save, parse_segment_header, trusted_frame, Marker,
    REC_SAVE, REC_SNAPSHOT, SEGMENT_HEADER_LEN,
};
use crate::segment::parse_segment_file_name;
use crate::snapshot::{self, SnapFile};
use crate::{fsutil, Entry, Error, HardState, Options, SnapshotMeta, TornTail};

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
    /// Open handle, size and append offset of the last segment.
    pub tail_file: File,
    pub tail_len: u64,
    pub tail_end: u64,
    /// Whether the last segment holds at least one record.
    pub tail_has_records: bool,
    pub hard_state: HardState,
    pub snapshot: Option<(SnapshotMeta, PathBuf)>,
    pub entries: Vec<Entry>,
    pub torn_tail: Option<TornTail>,
    pub set_aside: Vec<PathBuf>,
}

/// The bytes of one segment: mapped, or read into memory when too short to map.
enum SegBytes {
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

/// Whether `bytes` is all zeros (written to vectorise).
fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// Offset just past the last non-zero byte in `bytes[from..]`, or `from`.
fn nonzero_end(bytes: &[u8], from: usize) -> usize {
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

/// How the records of a segment end.
#[derive(Debug)]
enum Tail {
    /// Zeros (or nothing) after the last record.
    Clean,
    /// Non-zero bytes after the last valid record at `at`, up to `to`.
    Bad {
        at: usize,
        to: usize,
        reason: String,
        /// Offset of a valid frame after the damage, if any.
        valid_after: Option<usize>,
    },
}

/// Pass-1 result for one segment.
struct Scan {
    /// Offset just past the last valid record.
    end: usize,
    records: usize,
    markers: Vec<Marker>,
    tail: Tail,
}

/// Checks every frame of a segment (header already checked). `Err` is a frame
/// with a valid CRC but an impossible payload: `(offset, reason)`.
fn scan(bytes: &[u8]) -> Result<Scan, (usize, String)> {
    let mut off = SEGMENT_HEADER_LEN;
    let mut records = 0;
    let mut markers = Vec::new();
    let bad = loop {
        if bytes.len() - off < 8 {
            break Some("the file ends inside a length word".to_string());
        }
        if bytes[off..off + 8] == [0u8; 8] {
            break None;
        }
        let f = match check_frame(bytes, off) {
            Ok(f) => f,
            Err(reason) => break Some(reason),
        };
        let payload = &bytes[f.payload_start..f.payload_start + f.payload_len];
        match f.kind {
            REC_SAVE => {
                parse_save(payload).map_err(|r| (off, r))?;
            }
            REC_SNAPSHOT => markers.push(parse_marker(payload).map_err(|r| (off, r))?),
            other => {
                return Err((
                    off,
                    format!("record type {other} is unknown (written by a newer version?)"),
                ))
            }
        }
        records += 1;
        off += f.total;
    };
    let to = nonzero_end(bytes, off);
    let tail = if to == off {
        Tail::Clean
    } else {
        let reason =
            bad.unwrap_or_else(|| "non-zero bytes follow the end-of-data marker".to_string());
        Tail::Bad {
            at: off,
            to: ((to + 7) & !7).min(bytes.len()),
            valid_after: find_valid_frame(bytes, off + 8, to),
            reason,
        }
    };
    Ok(Scan {
        end: off,
        records,
        markers,
        tail,
    })
}

/// The first 8-aligned offset in `[from, to)` where a frame with a valid CRC
/// starts.
fn find_valid_frame(bytes: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut off = from;
    while off < to && bytes.len() - off >= 8 {
        // Cheap filter first: the tag byte of a length word.
        if bytes[off + 6] == format::FRAME_TAG && check_frame(bytes, off).is_ok() {
            return Some(off);
        }
        off += 8;
    }
    None
}

/// Lists the segments, drops an interrupted last creation, checks the
/// sequence. Returns them oldest first.
fn inventory(dir: &Path) -> Result<Vec<SegmentInfo>, Error> {
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
    for pair in segs.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
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
    }
    Ok(segs)
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
    let segs = inventory(dir)?;
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
    let checked = parallel(segs.len(), |pos| -> Result<(SegBytes, Scan), Error> {
        let seg = &segs[pos];
        let bytes = load(&seg.path)?;
        let (seq, first) =
            parse_segment_header(&bytes).map_err(|reason| Error::corrupt(&seg.path, 0, reason))?;
        if (seq, first) != (seg.seq, seg.first_index) {
            return Err(Error::corrupt(
                &seg.path,
                0,
                format!(
                    "header says sequence {seq} first index {first}, but the file name says \
                     sequence {} first index {}",
                    seg.seq, seg.first_index
                ),
            ));
        }
        let s = scan(&bytes).map_err(|(off, r)| Error::corrupt(&seg.path, off as u64, r))?;
        Ok((bytes, s))
    });
    let mut maps = Vec::with_capacity(segs.len());
    let mut scans = Vec::with_capacity(segs.len());
    let last_pos = segs.len() - 1;
    let mut torn: Option<(usize, usize)> = None;
    for (pos, (seg, result)) in segs.iter().zip(checked).enumerate() {
        let (bytes, s) = result?;
        if let Tail::Bad {
            at,
            to,
            reason,
            valid_after,
        } = &s.tail
        {
            if let Some(v) = valid_after {
                return Err(Error::corrupt(
                    &seg.path,
                    *at as u64,
                    format!(
                        "{reason}, but a valid record follows at offset {v}, so this is not \
                         the torn tail of a crash"
                    ),
                ));
            }
            if pos != last_pos {
                return Err(Error::corrupt(
                    &seg.path,
                    *at as u64,
                    format!(
                        "{reason}, in a segment that is not the last one (later segments \
                         exist, so this one was complete and synced)"
                    ),
                ));
            }
            torn = Some((*at, *to));
        }
        maps.push(bytes);
        scans.push(s);
    }

    // Step 3: choose the snapshot.
    let newest = scans.iter().flat_map(|s| s.markers.last()).last().copied();
    let (snapshot, set_aside, fallback_note) = choose_snapshot(snap_dir, newest)?;
    let base = snapshot.as_ref().map_or(0, |(m, _)| m.index);

    // Pass 2: replay the log rules record by record, tracking which entries
    // survive as runs; then copy the surviving entries out, several runs at
    // a time (allocating the entries' memory is most of the cost).
    let mut st = Replay {
        base,
        runs: Vec::new(),
        hard_state: HardState::default(),
        log_last: segs[0].first_index.saturating_sub(1),
        note: fallback_note,
    };
    for (pos, seg) in segs.iter().enumerate() {
        if pos > 0 && seg.first_index != st.log_last + 1 {
            return Err(Error::corrupt(
                &seg.path,
                0,
                format!(
                    "segment starts at index {} but the segments before it end at index {}",
                    seg.first_index, st.log_last
                ),
            ));
        }
        st.segment(pos, &maps[pos], scans[pos].end, &seg.path)?;
    }
    let hard_state = st.hard_state;
    let entries = materialise(&st.runs, &maps);

    // Step 4: cut the torn tail, now that the directory is known to be usable.
    let tail = &segs[last_pos];
    let tail_file = fsutil::open_rw(&tail.path)?;
    let mut tail_len = maps[last_pos].len() as u64;
    let tail_end = scans[last_pos].end as u64;
    let mut torn_tail = None;
    if let Some((at, to)) = torn {
        let mut side = tail.path.clone().into_os_string();
        side.push(format!(".torn-{at}"));
        let side = PathBuf::from(side);
        let cut = &maps[last_pos][at..to];
        log::warn!(
            "{}: torn tail of {} bytes at offset {at} (an unfinished write from a crash); \
             truncating to the last valid record and keeping the cut bytes in {}",
            tail.path.display(),
            cut.len(),
            side.display()
        );
        let f = fsutil::create_rw(&side)?;
        fsutil::write_at(&f, &side, cut, 0)?;
        f.sync_all().map_err(Error::io("fsync", &side))?;
        fsutil::fsync_dir(dir)?;
        fsutil::write_zeros(&tail_file, &tail.path, at as u64, to as u64)?;
        torn_tail = Some(TornTail {
            segment: tail.path.clone(),
            offset: at as u64,
            bytes_cut: (to - at) as u64,
            side_file: side,
        });
    }
    drop(maps);
    if tail_len < opts.segment_size {
        // A tail shortened by truncation: restore the preallocation so that
        // later appends do not have to grow the file.
        fsutil::write_zeros(&tail_file, &tail.path, tail_len, opts.segment_size)?;
        tail_len = opts.segment_size;
        tail_file
            .sync_all()
            .map_err(Error::io("fsync", &tail.path))?;
    } else if torn_tail.is_some() {
        fsutil::sync_data(&tail_file, &tail.path)?;
    }

    Ok(Some(Recovery {
        tail_has_records: scans[last_pos].records > 0,
        segments: segs,
        tail_file,
        tail_len,
        tail_end,
        hard_state,
        snapshot,
        entries,
        torn_tail,
        set_aside,
    }))
}

type Chosen = (
    Option<(SnapshotMeta, PathBuf)>,
    Vec<PathBuf>,
    Option<String>,
);

/// Picks the snapshot to recover from, given the last marker in the log.
/// Sets aside orphans and damaged files. The third value explains a fallback
/// (for error messages if the log then turns out not to cover it).
fn choose_snapshot(snap_dir: &Path, newest: Option<Marker>) -> Result<Chosen, Error> {
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
            set_aside.push(snapshot::set_aside(&f.path, "orphan")?);
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
                let to = snapshot::set_aside(&f.path, "broken")?;
                log::warn!(
                    "snapshot {} is damaged ({reason}); renamed it to {} and trying the next \
                     older snapshot",
                    f.path.display(),
                    to.display()
                );
                problems.push(format!("{} is damaged ({reason})", f.path.display()));
                set_aside.push(to);
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
    Ok((chosen, set_aside, note))
}

/// The surviving entries of one save record: `take` entries starting
/// `skip` entries into the record, the first of them at index `first`.
#[derive(Clone, Copy, Debug)]
struct Run {
    seg: usize,
    payload_start: usize,
    payload_len: usize,
    first: u64,
    skip: u32,
    take: u32,
}

/// Pass-2 state.
struct Replay {
    /// Index of the chosen snapshot; entries at or below it are skipped.
    base: u64,
    /// Live entries above `base`, contiguous, as runs of records.
    runs: Vec<Run>,
    hard_state: HardState,
    /// Last index of the raw log (including skipped entries).
    log_last: u64,
    /// Why recovery fell back to an older snapshot, for error messages.
    note: Option<String>,
}

impl Replay {
    fn context(&self) -> String {
        match &self.note {
            Some(n) => format!(" ({n})"),
            None => String::new(),
        }
    }

    /// Replays the frames of segment `seg` in `[header, end)`, which pass 1 checked.
    fn segment(&mut self, seg: usize, bytes: &[u8], end: usize, path: &Path) -> Result<(), Error> {
        let mut off = SEGMENT_HEADER_LEN;
        while off < end {
            let f = trusted_frame(bytes, off);
            let payload = &bytes[f.payload_start..f.payload_start + f.payload_len];
            match f.kind {
                REC_SAVE => {
                    let v = format::trusted_save(payload);
                    if v.count > 0 {
                        self.entries_record(seg, &f, v, path, off)?;
                    }
                    if let Some(hs) = v.hard_state {
                        self.hard_state = hs;
                    }
                }
                REC_SNAPSHOT => {
                    let m =
                        parse_marker(payload).map_err(|r| Error::corrupt(path, off as u64, r))?;
                    self.marker(m, path, off)?;
                }
                other => {
                    return Err(Error::corrupt(
                        path,
                        off as u64,
                        format!("record type {other} is unknown"),
                    ))
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
        path: &Path,
        off: usize,
    ) -> Result<(), Error> {
        // Pass 1 checked the whole payload; walking every entry header again
        // would touch every cache line of the log.
        let (first, count) = (v.first, v.count);
        if first > self.log_last + 1 {
            return Err(Error::corrupt(
                path,
                off as u64,
                format!(
                    "entries start at index {first} but the log before them ends at index {}: \
                     the entries in between are missing",
                    self.log_last
                ),
            ));
        }
        let last = first + u64::from(count) - 1;
        self.log_last = last;
        self.truncate_from(first);
        if last <= self.base {
            return Ok(());
        }
        // Entries at or below the snapshot are skipped.
        let live_first = first.max(self.base + 1);
        if self.runs.is_empty() && live_first != self.base + 1 {
            return Err(Error::corrupt(
                path,
                off as u64,
                format!(
                    "the log does not reach back to the snapshot: the first entry after \
                     snapshot index {} is {live_first}, entries {}..{} are missing{}",
                    self.base,
                    self.base + 1,
                    live_first - 1,
                    self.context()
                ),
            ));
        }
        self.runs.push(Run {
            seg,
            payload_start: f.payload_start,
            payload_len: f.payload_len,
            first: live_first,
            skip: (live_first - first) as u32,
            take: (last - live_first + 1) as u32,
        });
        Ok(())
    }

    fn marker(&mut self, m: Marker, path: &Path, off: usize) -> Result<(), Error> {
        if m.reset {
            if m.index > self.base {
                return Err(Error::corrupt(
                    path,
                    off as u64,
                    format!(
                        "the log was reset to the snapshot at index {} (installed from the \
                         leader), so no older snapshot can stand in for it{}",
                        m.index,
                        self.context()
                    ),
                ));
            }
            self.runs.clear();
            self.log_last = m.index;
        } else if m.index > self.log_last {
            return Err(Error::corrupt(
                path,
                off as u64,
                format!(
                    "snapshot marker at index {} lies beyond the end of the log (index {}) \
                     without resetting it",
                    m.index, self.log_last
                ),
            ));
        }
        Ok(())
    }
}

/// Copies the entries of `runs` out of the mapped segments, splitting the
/// work over the available cores.
fn materialise(runs: &[Run], maps: &[SegBytes]) -> Vec<Entry> {
    let total: u64 = runs.iter().map(|r| u64::from(r.take)).sum();
    // Contiguous groups of runs with roughly equal numbers of entries.
    let parts = threads().min(runs.len()).max(1);
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
    let chunks = parallel(bounds.len() - 1, |p| {
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

/// How many threads recovery uses.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// `(0..n).map(f).collect()`, spread over [`threads`] scoped threads.
fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
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
