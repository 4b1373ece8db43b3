//! The writer: appending to the log, rolling segments, taking snapshots,
//! releasing old segments.
//!
//! A [`Wal`] owns the directory (through the `LOCK` file) and keeps a small
//! in-memory summary of the log so that it can check every call before
//! writing: the current snapshot, the last index, the terms of the live
//! entries as runs (one pair per term change, so memory does not grow with
//! the log), and the last hard state.
//!
//! The hot path is [`Wal::save`]: the batch (entries and hard state) is
//! encoded as a single record into one reused buffer, written with one
//! `pwrite`, and, if asked, made durable with one `fdatasync`. A single
//! record per write matters for recovery: a crash mid-write then leaves one
//! damaged record with nothing valid after it, the signature of a torn
//! tail, whatever order the pages reached the disk in; and entries and the
//! hard state that may commit them survive or vanish together.
//! When the batch does not fit in the current segment, the segment is synced
//! and the next one (prepared in the background) is installed first; it
//! starts with the current hard state and snapshot marker, so that older
//! segments can later be deleted without losing either.
//!
//! After any failed write or sync the on-disk state is unknown, and the
//! `Wal` refuses further writes ([`Error::Broken`]); reopening recovers.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::damage::{self, DamageReason, DamageRecord};
use crate::format::{self, Marker, Version, SEGMENT_HEADER_LEN};
use crate::recovery::{self, SegmentInfo};
use crate::remover::{Removal, Remover};
use crate::segment::{self, Preallocator};
use crate::snapshot::{self, SnapshotReader, SnapshotWriter};
use crate::{failpoint, fsutil};
use crate::{Entry, Error, HardState, Options, Recovered, SnapshotMeta};

/// Smallest segment size accepted: room for the header, the head records and
/// a few small batches.
const MIN_SEGMENT_SIZE: u64 = 4096;

/// Terms of the live entries, one `(first index, term)` pair per run of equal
/// terms. Covers exactly `(snapshot index, last index]`.
#[derive(Debug, Default)]
struct TermRuns {
    runs: Vec<(u64, u64)>,
}

impl TermRuns {
    /// Term of entry `index`, if it is live.
    fn term_of(&self, index: u64, last: u64) -> Option<u64> {
        if index > last {
            return None;
        }
        let pos = self.runs.partition_point(|&(start, _)| start <= index);
        pos.checked_sub(1).map(|p| self.runs[p].1)
    }

    /// Forgets entries at `index` and above.
    fn truncate_from(&mut self, index: u64) {
        let keep = self.runs.partition_point(|&(start, _)| start < index);
        self.runs.truncate(keep);
    }

    /// Records that entry `index` has `term` (index follows the last one).
    fn push(&mut self, index: u64, term: u64) {
        if self.runs.last().map(|r| r.1) != Some(term) {
            self.runs.push((index, term));
        }
    }

    /// Forgets entries at `index` and below (they are now in a snapshot).
    fn compact_through(&mut self, index: u64) {
        let pos = self.runs.partition_point(|&(start, _)| start <= index);
        if pos == 0 {
            return;
        }
        let term = self.runs[pos - 1].1;
        self.runs.drain(..pos);
        self.runs.insert(0, (index + 1, term));
    }
}

/// A write-ahead log in a directory. See the [crate documentation](crate).
pub struct Wal {
    dir: PathBuf,
    snap_dir: PathBuf,
    opts: Options,
    /// Deletes released files; declared before the lock so that dropping a
    /// `Wal` finishes its deletions before another may open the directory.
    remover: Remover,
    /// Held for the lifetime of the `Wal`; the OS releases the lock on close.
    _lock: File,
    /// Live segments, oldest first; the last one is being appended to.
    segments: Vec<SegmentInfo>,
    file: File,
    file_len: u64,
    /// Format of the current segment: version-1 segments found at open are
    /// appended to in version 1; every new segment is the current version.
    tail_version: Version,
    /// Append offset in the current segment.
    cursor: u64,
    /// Whether the current segment has writes not yet covered by fdatasync.
    unsynced: bool,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    hard_state: HardState,
    snapshot: Option<(SnapshotMeta, PathBuf)>,
    last_index: u64,
    terms: TermRuns,
    prealloc: Preallocator,
    broken: Option<String>,
    /// Bytes appended to segments by this `Wal` (records only, not the
    /// preallocation), for the node's metrics.
    bytes_written: u64,
    /// How long the last `fdatasync` of a save or [`Wal::sync`] took, until
    /// [`Wal::take_fsync_time`] takes it.
    last_fsync: Option<Duration>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("last_index", &self.last_index)
            .field("snapshot_index", &self.snapshot_index())
            .field("hard_state", &self.hard_state)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens the WAL in `dir`, creating the directory and an empty log if
    /// needed, and recovers its content.
    ///
    /// Recovery gives back every record that was fsynced and cuts a torn
    /// tail left by a crash (reported in [`Recovered::torn_tail`]). Damage
    /// anywhere else makes `open` fail with [`Error::Corrupt`], naming the
    /// file and the offset and modifying no segment, unless
    /// [`Options::on_damage`] is [`OnDamage::Salvage`](crate::OnDamage): then
    /// the good prefix is kept and the damage reported in
    /// [`Recovered::damage`] (see `FORMAT.md`, "Salvage"). While a `DAMAGE`
    /// marker exists, every open reports it. A directory left behind by a
    /// crash at any point of its initialisation opens as an empty log. Fails
    /// with [`Error::Locked`] while another `Wal` has the same directory
    /// open.
    pub fn open(dir: &Path, opts: Options) -> Result<(Wal, Recovered), Error> {
        if opts.segment_size < MIN_SEGMENT_SIZE || !opts.segment_size.is_multiple_of(8) {
            return Err(Error::InvalidOptions {
                reason: format!(
                    "segment_size must be a multiple of 8 and at least {MIN_SEGMENT_SIZE}, \
                     got {}",
                    opts.segment_size
                ),
            });
        }
        if opts.keep_snapshots == 0 {
            return Err(Error::InvalidOptions {
                reason: "keep_snapshots must be at least 1".into(),
            });
        }
        fsutil::create_dir_durable(dir)?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path)(e)),
        }
        let snap_dir = dir.join("snap");
        fsutil::create_dir_durable(&snap_dir)?;

        let mut prealloc = Preallocator::new(opts.preallocate_in_background);
        let remover = Remover::new(opts.remove_in_background);
        let rec = recovery::recover(dir, &snap_dir, &opts)?;
        let (mut wal, recovered) = match rec {
            Some(r) => {
                let last_index = r
                    .entries
                    .last()
                    .map(|e| e.index)
                    .or(r.snapshot.as_ref().map(|s| s.0.index))
                    .unwrap_or(0);
                let mut terms = TermRuns::default();
                for e in &r.entries {
                    terms.push(e.index, e.term);
                }
                let recovered = Recovered {
                    hard_state: r.hard_state,
                    snapshot: r.snapshot.as_ref().map(|s| s.0.clone()),
                    entries: r.entries,
                    torn_tail: r.torn_tail,
                    set_aside: r.set_aside,
                    damage: r.damage,
                };
                let mut wal = Wal {
                    dir: dir.to_path_buf(),
                    snap_dir,
                    remover,
                    opts,
                    _lock: lock,
                    segments: r.segments,
                    file: r.tail_file,
                    file_len: r.tail_len,
                    tail_version: r.tail_version,
                    cursor: r.tail_end,
                    unsynced: false,
                    buf: Vec::new(),
                    hard_state: r.hard_state,
                    snapshot: r.snapshot,
                    last_index,
                    terms,
                    prealloc,
                    broken: None,
                    bytes_written: 0,
                    last_fsync: None,
                };
                if let Some(finish) = r.finish {
                    wal.finish_salvage(finish)?;
                } else if !r.tail_has_records {
                    // The head records are what lets older segments be
                    // released; a tail segment without them gets them now,
                    // one synced write per record (see `save`).
                    let hs = wal.hard_state;
                    let v = wal.tail_version;
                    wal.buf.clear();
                    format::push_save(&mut wal.buf, v, Some(&hs), &[])?;
                    wal.append_buf(true)?;
                    if let Some((m, _)) = &wal.snapshot {
                        let marker = Marker {
                            index: m.index,
                            term: m.term,
                            reset: false,
                        };
                        wal.buf.clear();
                        format::push_marker(&mut wal.buf, v, &marker)?;
                        wal.append_buf(true)?;
                    }
                }
                (wal, recovered)
            }
            None => {
                let size = opts.segment_size;
                let prepared = prealloc.take(dir, 0, size)?;
                let mut head = Vec::new();
                format::push_save(
                    &mut head,
                    Version::CURRENT,
                    Some(&HardState::default()),
                    &[],
                )?;
                let inst = segment::install(prepared, dir, 0, 1, &head, size)?;
                log::info!("created a new WAL in {}", dir.display());
                let wal = Wal {
                    dir: dir.to_path_buf(),
                    snap_dir,
                    remover,
                    opts,
                    _lock: lock,
                    segments: vec![SegmentInfo {
                        seq: 0,
                        first_index: 1,
                        path: inst.path,
                    }],
                    file: inst.file,
                    file_len: inst.size,
                    tail_version: Version::CURRENT,
                    cursor: (SEGMENT_HEADER_LEN + head.len()) as u64,
                    unsynced: false,
                    buf: Vec::new(),
                    hard_state: HardState::default(),
                    snapshot: None,
                    last_index: 0,
                    terms: TermRuns::default(),
                    prealloc,
                    broken: None,
                    bytes_written: 0,
                    last_fsync: None,
                };
                // A marker without segments: the caller recorded damage (a
                // wiped log) and the segments are gone again.
                let damage = damage::read(dir)?.map(|m| recovery::pending_report(dir, &m, 0));
                (
                    wal,
                    Recovered {
                        damage,
                        ..Recovered::default()
                    },
                )
            }
        };
        wal.maybe_prepare_next();
        Ok((wal, recovered))
    }

    /// Appends `entries` and/or a hard state, as one write.
    ///
    /// `entries` must have consecutive indexes. The first one may be at most
    /// `last_index() + 1` ([`Error::Gap`] otherwise) and must be above the
    /// snapshot ([`Error::BelowSnapshot`]); an entry at index `i` discards
    /// every entry at `i` and above (raft's log overwrite). The hard state, if
    /// any, is written after the entries. With `sync`, the data is durable
    /// when this returns (one `fdatasync`); without it, a later [`sync`]
    /// or synced save covers it. Rejected calls change nothing.
    ///
    /// [`sync`]: Wal::sync
    pub fn save(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
        sync: bool,
    ) -> Result<(), Error> {
        self.usable()?;
        if let Some(first) = entries.first() {
            let snap = self.snapshot_index();
            if first.index <= snap {
                return Err(Error::BelowSnapshot {
                    index: first.index,
                    snapshot_index: snap,
                });
            }
            if first.index > self.last_index + 1 {
                return Err(Error::Gap {
                    last_index: self.last_index,
                    first_index: first.index,
                });
            }
            for (pos, pair) in entries.windows(2).enumerate() {
                if pair[1].index != pair[0].index + 1 {
                    return Err(Error::NotContiguous {
                        position: pos + 1,
                        expected: pair[0].index + 1,
                        found: pair[1].index,
                    });
                }
            }
        }
        if entries.is_empty() && hard_state.is_none() {
            return if sync { self.sync() } else { Ok(()) };
        }
        // One record per save, so that one write never holds two records: a
        // crash can then tear a write only into a bad record with nothing
        // valid after it, which recovery recognises as a torn tail.
        self.buf.clear();
        format::push_save(&mut self.buf, self.tail_version, hard_state, entries)?;
        self.append_buf(sync)?;
        if let Some(first) = entries.first() {
            self.terms.truncate_from(first.index);
            for e in entries {
                self.terms.push(e.index, e.term);
            }
            self.last_index = first.index + entries.len() as u64 - 1;
        }
        if let Some(hs) = hard_state {
            self.hard_state = *hs;
        }
        Ok(())
    }

    /// Makes everything saved so far durable (`fdatasync`; nothing if
    /// everything already is).
    pub fn sync(&mut self) -> Result<(), Error> {
        self.usable()?;
        if self.unsynced {
            let path = self.tail_path().to_path_buf();
            let start = Instant::now();
            if let Err(e) = fsutil::sync_data(&self.file, &path) {
                return Err(self.fail(e));
            }
            self.last_fsync = Some(start.elapsed());
            self.unsynced = false;
        }
        Ok(())
    }

    /// Bytes of records this `Wal` appended since it was opened.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// How long the last `fdatasync` of a synced [`save`](Wal::save) or of
    /// [`sync`](Wal::sync) took, once: `None` if there was none since the
    /// last call. (The syncs of a segment roll and of snapshots are not
    /// counted.)
    pub fn take_fsync_time(&mut self) -> Option<Duration> {
        self.last_fsync.take()
    }

    /// Starts a snapshot file for `meta`; write the data into the returned
    /// writer, then pass it to [`commit_snapshot`](Wal::commit_snapshot).
    /// Memory use is bounded whatever the size of the data.
    pub fn snapshot_writer(&self, meta: &SnapshotMeta) -> Result<SnapshotWriter, Error> {
        self.usable()?;
        self.check_not_stale(meta)?;
        SnapshotWriter::create(&self.snap_dir, meta)
    }

    /// Makes the snapshot in `writer` durable and records it in the log.
    ///
    /// In order: the file is fsynced, renamed into place and the directory
    /// fsynced; a snapshot marker is appended to the log and synced; snapshot
    /// files beyond the newest [`Options::keep_snapshots`] are deleted.
    /// After this returns, recovery starts from this snapshot: entries at or
    /// below its index are gone from the log, and the next entry may be at
    /// `meta.index + 1` even if the log was shorter. If the log did not hold
    /// entry `meta.index` with term `meta.term` (a follower installing a
    /// snapshot from its leader), every entry after it is discarded too
    /// (raft paper §7). Segments are not released here: call
    /// [`release_to`](Wal::release_to).
    pub fn commit_snapshot(&mut self, writer: SnapshotWriter) -> Result<(), Error> {
        self.usable()?;
        let meta = writer.meta().clone();
        self.check_not_stale(&meta)?;
        let path = writer.finish()?;
        failpoint::hit("snapshot:after-rename")?;
        failpoint::crash::crash_point("after_snapshot_rename", || {
            format!("snapshot={}", path.display())
        });
        let reset = self.terms.term_of(meta.index, self.last_index) != Some(meta.term)
            && self.snapshot.as_ref().map(|s| (s.0.index, s.0.term))
                != Some((meta.index, meta.term));
        self.buf.clear();
        format::push_marker(
            &mut self.buf,
            self.tail_version,
            &Marker {
                index: meta.index,
                term: meta.term,
                reset,
            },
        )?;
        self.append_buf(true)?;
        if reset {
            self.terms = TermRuns::default();
            self.last_index = meta.index;
        } else {
            self.terms.compact_through(meta.index);
        }
        log::info!(
            "snapshot at index {} term {} is durable ({})",
            meta.index,
            meta.term,
            path.display()
        );
        self.snapshot = Some((meta, path));
        failpoint::hit("snapshot:before-retain")?;
        snapshot::retain(&self.snap_dir, self.opts.keep_snapshots, &self.remover)
    }

    /// Writes a snapshot held in memory: [`snapshot_writer`], the data,
    /// [`commit_snapshot`].
    ///
    /// [`snapshot_writer`]: Wal::snapshot_writer
    /// [`commit_snapshot`]: Wal::commit_snapshot
    pub fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), Error> {
        let mut w = self.snapshot_writer(meta)?;
        let tmp = self.snap_dir.clone();
        w.write_all(data)
            .map_err(Error::io("write snapshot", &tmp))?;
        self.commit_snapshot(w)
    }

    /// Metadata of the current snapshot, if any.
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref().map(|s| &s.0)
    }

    /// The current snapshot's file, if any.
    pub fn snapshot_path(&self) -> Option<&Path> {
        self.snapshot.as_ref().map(|s| s.1.as_path())
    }

    /// Opens the current snapshot's data for streaming. The reader checks the
    /// CRC when it reaches the end of the data.
    pub fn snapshot_reader(&self) -> Result<Option<SnapshotReader>, Error> {
        let Some((_, path)) = &self.snapshot else {
            return Ok(None);
        };
        match SnapshotReader::open(path)? {
            Ok(r) => Ok(Some(r)),
            Err(reason) => Err(Error::corrupt(path, 0, reason)),
        }
    }

    /// Reads the current snapshot into memory, CRC verified. For large
    /// snapshots prefer [`snapshot_reader`](Wal::snapshot_reader).
    pub fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, Error> {
        let Some(mut r) = self.snapshot_reader()? else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(r.len().min(1 << 30) as usize);
        let path = r.path().to_path_buf();
        r.read_to_end(&mut data).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::corrupt(&path, 0, e.to_string())
            } else {
                Error::io("read", &path)(e)
            }
        })?;
        Ok(Some((r.meta().clone(), data)))
    }

    /// Deletes the segments whose entries all lie at or below
    /// `min(index, snapshot index)`, oldest first. Never deletes the segment
    /// being appended to, nor anything the current snapshot does not cover.
    ///
    /// To keep falling back to an older snapshot possible (should the newest
    /// snapshot file ever be damaged), pass the index of the oldest snapshot
    /// you keep rather than the newest: recovery from an older snapshot needs
    /// the log entries after it.
    pub fn release_to(&mut self, index: u64) -> Result<(), Error> {
        self.usable()?;
        let floor = index.min(self.snapshot_index());
        if floor == 0 || self.segments.len() < 2 {
            return Ok(());
        }
        // The current segment's head records take over from the ones about to
        // be deleted; they must be durable first.
        self.sync()?;
        while self.segments.len() > 1 && self.segments[1].first_index <= floor + 1 {
            let seg = self.segments.remove(0);
            log::debug!("releasing {}", seg.path.display());
            // One directory fsync per deletion, so that deletions become
            // durable oldest first and never leave a hole in the sequence
            // (the remover keeps that order when it works in the background).
            self.remover.remove(Removal {
                path: seg.path,
                dir: self.dir.clone(),
            })?;
            failpoint::hit("release:after-delete")?;
        }
        Ok(())
    }

    /// Records that this node's state is damaged in a way the WAL cannot see
    /// (for example, its data directory was wiped and the log created anew):
    /// writes the durable `DAMAGE` marker, merged with one already there, so
    /// that every later open reports it until [`clear_damage`] is called.
    /// `hard_state_intact` says whether the current term and vote are known
    /// to be the newest the node ever persisted; `max_term_seen` is the
    /// highest term it knows it saw.
    ///
    /// [`clear_damage`]: Wal::clear_damage
    pub fn mark_damaged(
        &mut self,
        hard_state_intact: bool,
        max_term_seen: u64,
    ) -> Result<(), Error> {
        self.usable()?;
        let mut rec = DamageRecord {
            in_progress: false,
            hard_state_intact,
            max_term_seen: max_term_seen.max(self.hard_state.term),
            term: self.hard_state.term,
            vote: self.hard_state.vote,
            snapshot: (0, 0),
            file: PathBuf::new(),
            offset: 0,
            reason: DamageReason::ReportedByCaller,
        };
        if let Some(old) = damage::read(&self.dir)? {
            rec.merge_older(&old);
        }
        log::warn!(
            "{}: damage recorded by the caller (hard state {}, highest term seen {})",
            self.dir.display(),
            if rec.hard_state_intact {
                "intact"
            } else {
                "may be lost"
            },
            rec.max_term_seen
        );
        damage::write(&self.dir, &rec)
    }

    /// Removes the `DAMAGE` marker durably: the caller has repaired its state
    /// (caught up from its peers) and later opens report no damage. Nothing
    /// happens if there is no marker.
    pub fn clear_damage(&mut self) -> Result<(), Error> {
        self.usable()?;
        damage::remove(&self.dir)?;
        log::info!("{}: damage cleared", self.dir.display());
        Ok(())
    }

    /// Completes a salvage: appends the snapshot marker and the hard state it
    /// decided on (each synced), then marks the salvage finished.
    fn finish_salvage(&mut self, finish: crate::salvage::Finish) -> Result<(), Error> {
        let v = self.tail_version;
        if let Some(m) = finish.marker {
            self.buf.clear();
            format::push_marker(&mut self.buf, v, &m)?;
            self.append_buf(true)?;
            failpoint::hit("salvage:after-snapshot-marker")?;
        }
        if let Some(hs) = finish.hard_state {
            self.buf.clear();
            format::push_save(&mut self.buf, v, Some(&hs), &[])?;
            self.append_buf(true)?;
            failpoint::hit("salvage:after-hard-state")?;
        }
        damage::write(&self.dir, &finish.record)
    }

    /// The last hard state saved.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Index of the last entry (or of the snapshot, if no entry follows it;
    /// 0 for an empty log).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Index of the first entry the log can hold: snapshot index + 1.
    pub fn first_index(&self) -> u64 {
        self.snapshot_index() + 1
    }

    /// Term of entry `index` if it is in the log, or of the snapshot if
    /// `index` is the snapshot index.
    pub fn term(&self, index: u64) -> Option<u64> {
        match &self.snapshot {
            Some((m, _)) if m.index == index => Some(m.term),
            _ if index == 0 => Some(0),
            _ => self.terms.term_of(index, self.last_index),
        }
    }

    /// The directory this WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Paths of the live segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.0.index)
    }

    fn tail_path(&self) -> &Path {
        // `segments` is never empty once open() has returned.
        self.segments
            .last()
            .map_or(self.dir.as_path(), |s| s.path.as_path())
    }

    fn usable(&self) -> Result<(), Error> {
        match &self.broken {
            Some(reason) => Err(Error::Broken {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the WAL broken after a failed write, and returns the error.
    fn fail(&mut self, e: Error) -> Error {
        log::error!("WAL write path failed: {e}");
        self.broken = Some(e.to_string());
        e
    }

    fn check_not_stale(&self, meta: &SnapshotMeta) -> Result<(), Error> {
        if let Some((cur, _)) = &self.snapshot {
            if meta.index < cur.index || (meta.index == cur.index && meta.term != cur.term) {
                return Err(Error::StaleSnapshot {
                    index: meta.index,
                    term: meta.term,
                    current_index: cur.index,
                    current_term: cur.term,
                });
            }
        }
        Ok(())
    }

    /// Appends the records restating the current state, for the head of a new
    /// segment: hard state, then the snapshot marker (never flagged reset:
    /// restating changes nothing).
    fn push_head(&mut self) -> Result<(), Error> {
        let v = Version::CURRENT;
        format::push_save(&mut self.buf, v, Some(&self.hard_state), &[])?;
        if let Some((m, _)) = &self.snapshot {
            format::push_marker(
                &mut self.buf,
                v,
                &Marker {
                    index: m.index,
                    term: m.term,
                    reset: false,
                },
            )?;
        }
        Ok(())
    }

    /// Writes `self.buf` at the append offset (rolling over first if it does
    /// not fit), and fdatasyncs if asked. Any failure breaks the WAL.
    fn append_buf(&mut self, sync: bool) -> Result<(), Error> {
        let need = self.buf.len() as u64;
        if self.cursor + need > self.file_len {
            let built_for = self.tail_version;
            if let Err(e) = self.roll(need) {
                return Err(self.fail(e));
            }
            // Built for a version-1 tail, written into a new segment.
            format::reframe(&mut self.buf, built_for, self.tail_version);
        }
        // The position is decided: the flags that depend on it can be set.
        format::seal_frames(&mut self.buf, self.cursor, self.tail_version);
        let path = self.tail_path().to_path_buf();
        if let Err(e) = fsutil::write_at(&self.file, &path, &self.buf, self.cursor) {
            return Err(self.fail(e));
        }
        self.cursor += need;
        self.bytes_written += need;
        self.unsynced = true;
        self.maybe_prepare_next();
        if sync {
            let at = self.cursor - need;
            failpoint::crash::crash_point("before_wal_fsync", || {
                format!("segment={} offset={at} len={need}", path.display())
            });
            let start = Instant::now();
            if let Err(e) = fsutil::sync_data(&self.file, &path) {
                return Err(self.fail(e));
            }
            self.last_fsync = Some(start.elapsed());
            self.unsynced = false;
        }
        Ok(())
    }

    /// Starts preparing the next segment once a quarter of the current one
    /// is used: early enough to be ready in time, and no spare segment of
    /// zeros is written for a log that is opened and closed again.
    fn maybe_prepare_next(&mut self) {
        if self.prealloc.can_start() && self.cursor * 4 >= self.file_len {
            let next = self.segments.last().map_or(0, |s| s.seq + 1);
            self.prealloc.start(&self.dir, next, self.opts.segment_size);
        }
    }

    /// Seals the current segment and installs the next one, big enough for a
    /// write of `need` bytes after its head records.
    fn roll(&mut self, need: u64) -> Result<(), Error> {
        // Everything in the current segment must be durable before anything
        // in the next one can be: recovery treats damage in a non-last
        // segment as corruption.
        if self.unsynced {
            fsutil::sync_data(&self.file, self.tail_path())?;
            self.unsynced = false;
        }
        let body = std::mem::take(&mut self.buf);
        let head = self
            .push_head()
            .map(|()| std::mem::replace(&mut self.buf, body))?;
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        let first_index = self.last_index + 1;
        let size = self.opts.segment_size;
        let min_size = (SEGMENT_HEADER_LEN as u64 + head.len() as u64 + need).max(size);
        failpoint::hit("roll:before-prepare")?;
        let prepared = self.prealloc.take(&self.dir, seq, size)?;
        let inst = segment::install(prepared, &self.dir, seq, first_index, &head, min_size)?;
        log::debug!("rolled over to {}", inst.path.display());
        self.file = inst.file;
        self.file_len = inst.size;
        self.tail_version = Version::CURRENT;
        self.cursor = (SEGMENT_HEADER_LEN + head.len()) as u64;
        self.segments.push(SegmentInfo {
            seq,
            first_index,
            path: inst.path,
        });
        Ok(())
    }
}
