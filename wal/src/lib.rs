//! A segmented, CRC-checked, fsynced write-ahead log with snapshot files, for
//! a raft node.
//!
//! # What it owns
//!
//! Everything a raft node must persist before it may answer: log entries
//! (index, term, a kind byte and opaque bytes), the hard state (term, vote,
//! commit) and snapshots (metadata plus the state machine's bytes). It knows
//! nothing about raft messages or the state machine; the node maps its types
//! onto [`Entry`], [`HardState`] and [`SnapshotMeta`].
//!
//! The promise: after a `kill -9` or a power cut at any instant,
//! [`Wal::open`] gives back exactly what was fsynced (and possibly some of
//! what was written but not yet synced), never a record that was not written,
//! and never silently less. A crash's torn tail is cut and reported; it is
//! recognised by its bytes (sectors that never reached the disk), so that a
//! flipped bit in a record that was written is never mistaken for one. Any
//! other damage makes `open` fail with an error that names the file and the
//! byte offset, or, with [`OnDamage::Salvage`], keeps the good prefix and
//! says exactly what may be missing ([`Damage`]): a raft node then repairs
//! itself from its peers before it votes again.
//!
//! # How it works
//!
//! A directory holds a `LOCK` file, numbered segment files and a `snap/`
//! subdirectory (layout byte by byte in `FORMAT.md`):
//!
//! - **Segments** (`segment`) are preallocated files of fixed size
//!   ([`Options::segment_size`]) holding 8-byte-aligned, CRC-checked records
//!   (`format`): one per save (entries and/or hard state), and snapshot
//!   markers. A zero
//!   length word marks the end of the written data. When a batch does not
//!   fit, the segment is synced and a new one, prepared in the background,
//!   is renamed into place; it starts by restating the hard state and the
//!   snapshot marker.
//! - **Records follow raft's log rules** on replay: writing entry `i`
//!   discards every entry at `>= i`; a snapshot marker at `s` makes entries
//!   up to `s` disappear and lets the next entry be `s + 1` even if the log
//!   was shorter.
//! - **Snapshots** (`snapshot`) are files written to a temp name, fsynced
//!   and renamed; only then is their marker appended to the log, and only
//!   then does recovery use them. Damaged ones are renamed aside and the next
//!   older one is used.
//! - **Recovery** (`recovery`) maps each segment read-only, checks every
//!   frame, tells a torn tail from damage (`tear`), replays the log
//!   (`replay`) and picks the snapshot.
//! - **Damage** (`damage`, `salvage`): with [`OnDamage::Salvage`] the log
//!   before the first damage is kept, the rest set aside (never deleted),
//!   and a durable `DAMAGE` marker reports it on every open until
//!   [`Wal::clear_damage`].
//! - **Releasing** ([`Wal::release_to`]) deletes old segments once a snapshot
//!   covers them.
//!
//! # Example
//!
//! ```
//! use wal::{Entry, HardState, Options, Wal};
//! # let dir = std::env::temp_dir().join(format!("wal-doc-{}", std::process::id()));
//! let opts = Options { segment_size: 64 * 1024, ..Options::default() };
//! let (mut w, recovered) = Wal::open(&dir, opts.clone())?;
//! assert!(recovered.entries.is_empty());
//! let e = Entry { index: 1, term: 1, kind: 0, data: b"put a=1".to_vec() };
//! let hs = HardState { term: 1, vote: 1, commit: 0 };
//! w.save(Some(&hs), &[e.clone()], true)?;
//! drop(w);
//! let (_w, recovered) = Wal::open(&dir, opts)?;
//! assert_eq!(recovered.entries, vec![e]);
//! assert_eq!(recovered.hard_state, hs);
//! # drop(_w); std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), wal::Error>(())
//! ```
//!
//! # Performance
//!
//! `examples/wal_bench.rs` measures both paths. An append with `sync` costs
//! what a raw `pwrite` + `fdatasync` of the same bytes costs (ratio 0.93 to
//! 1.00 on the development machine): the record is built in a reused
//! buffer, and segments are preallocated off the critical path. Opening a
//! large log is dominated not by reading or checking it (pass 1 runs at
//! several GB/s) but by allocating memory for every entry's `Vec<u8>`;
//! that part is spread over the available cores. With glibc, a larger
//! allocator top pad (for example
//! `GLIBC_TUNABLES=glibc.malloc.top_pad=67108864` in the node's
//! environment) cut the CPU time of opening a 1 GiB log by 20 to 55% there,
//! because the heap then grows in fewer steps.
//!
//! # What it deliberately does not do
//!
//! - **No repair of damage.** Damage that is not a torn tail stops the node
//!   ([`OnDamage::Refuse`]), or is salvaged around ([`OnDamage::Salvage`]):
//!   the WAL keeps what it can prove and reports what may be lost; bringing
//!   the lost part back is the caller's job (from its peers).
//! - **No reordering tolerance across appends.** Each append is one record,
//!   so a power cut inside one append is always a torn tail. But if several
//!   unsynced appends are in flight and a power cut persists a later one
//!   while damaging an earlier one, the result is indistinguishable from a
//!   damaged record followed by valid ones, and `open` reports corruption
//!   rather than guess.
//! - **No concurrency.** A `Wal` is used from one thread at a time (`&mut`);
//!   only the preparation of the next segment runs on a helper thread.
//! - **No automatic compaction.** The caller decides when to snapshot and
//!   what to release.
//! - **No durability on drop.** Dropping a `Wal` does not sync; call
//!   [`Wal::sync`] (or save with `sync`) before acknowledging anything.
//! - **No `fallocate`.** Preallocation writes zeros, which costs disk
//!   bandwidth once per segment.

#![deny(missing_docs)]

mod damage;
mod error;
mod failpoint;
mod format;
mod fsutil;
mod recovery;
mod remover;
mod replay;
mod salvage;
mod segment;
mod snapshot;
mod tear;
mod wal;

#[cfg(test)]
mod crash_tests;

/// Crash points for process-level fault tests (see `failpoint.rs`); they
/// compile to nothing without the `failpoints` feature.
#[doc(hidden)]
pub use crate::failpoint::crash::{crash_point, error_point};

use std::path::PathBuf;

pub use crate::damage::{Damage, DamageReason, OnDamage};
pub use crate::error::Error;
pub use crate::snapshot::{open_snapshot_file, SnapshotReader, SnapshotWriter};
pub use crate::wal::Wal;

/// Settings for [`Wal::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Size of each segment file, in bytes: a multiple of 8, at least 4096.
    /// Segments are preallocated to this size; a single batch larger than a
    /// segment gets a segment of its own, as large as needed. Default 64 MiB.
    pub segment_size: u64,
    /// How many snapshot files to keep (at least 1); older ones are deleted
    /// once a newer one is durable. Default 2.
    pub keep_snapshots: usize,
    /// Prepare the next segment on a background thread (default), so that
    /// rolling over costs a rename instead of writing a whole segment of
    /// zeros inline.
    pub preallocate_in_background: bool,
    /// Delete released segments and old snapshot files on a background
    /// thread, in order, instead of inside [`Wal::release_to`] and
    /// [`Wal::commit_snapshot`]. Default off; a caller whose thread must not
    /// stall on a busy disk (a Raft Ready loop) turns it on.
    pub remove_in_background: bool,
    /// What [`Wal::open`] does when the log is damaged (anything but the torn
    /// tail of a crash): refuse to open (the default), or keep the good
    /// prefix and report a [`Damage`].
    pub on_damage: OnDamage,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_size: 64 << 20,
            keep_snapshots: 2,
            preallocate_in_background: true,
            remove_in_background: false,
            on_damage: OnDamage::Refuse,
        }
    }
}

/// The part of raft's state that is not the log: current term, vote, commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term seen.
    pub term: u64,
    /// Candidate voted for in `term` (0 for none).
    pub vote: u64,
    /// Highest index known to be committed.
    pub commit: u64,
}

/// One log entry. The WAL stores `kind` and `data` without interpreting them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 1.
    pub index: u64,
    /// Term in which the entry was created.
    pub term: u64,
    /// Caller-defined type tag (normal entry, configuration change, ...).
    pub kind: u8,
    /// Payload.
    pub data: Vec<u8>,
}

/// What a snapshot covers: the log up to `index` (whose entry had `term`),
/// and the membership at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index included in the snapshot.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Non-voting members.
    pub learners: Vec<u64>,
}

/// A torn tail that recovery cut off: the unfinished end of a write that a
/// crash interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment that was cut (always the last one).
    pub segment: PathBuf,
    /// Byte offset of the cut: the end of the last valid record.
    pub offset: u64,
    /// How many bytes were cut (and replaced by zeros).
    pub bytes_cut: u64,
    /// File holding a copy of the cut bytes, for forensics.
    pub side_file: PathBuf,
}

/// What [`Wal::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last hard state written (all zeros if none).
    pub hard_state: HardState,
    /// The snapshot recovery starts from; read its data with
    /// [`Wal::snapshot_reader`] or [`Wal::load_snapshot`].
    pub snapshot: Option<SnapshotMeta>,
    /// The log after the snapshot: contiguous, the first at snapshot index + 1.
    pub entries: Vec<Entry>,
    /// The torn tail that was cut, if the last run ended in a crash mid-write.
    pub torn_tail: Option<TornTail>,
    /// Snapshot files renamed aside (`*.broken`: damaged; `*.orphan`: a save
    /// that never reached the log). Never deleted by the WAL.
    pub set_aside: Vec<PathBuf>,
    /// Damage that was salvaged around ([`OnDamage::Salvage`]), or that an
    /// earlier open or [`Wal::mark_damaged`] recorded and
    /// [`Wal::clear_damage`] has not cleared yet. `None` means the state is
    /// complete: every record that was fsynced is here.
    pub damage: Option<Damage>,
}
