//! The one error type of the crate.
//!
//! Every failure the WAL can report is a variant of [`Error`], and every
//! message is written for the person who has to act on it: a corrupted file is
//! named with its path and byte offset together with what to do next, an I/O
//! failure names the file and the operation that failed, and a misuse of the
//! API (an append that would leave a hole in the log) names the indexes
//! involved.
//!
//! Two families matter to callers:
//!
//! - Errors from [`Wal::open`](crate::Wal::open) ([`Error::Corrupt`],
//!   [`Error::Locked`], [`Error::Io`]) mean the node must not start. With
//!   [`OnDamage::Salvage`](crate::OnDamage::Salvage), damage is reported in
//!   [`Recovered::damage`](crate::Recovered::damage) instead of
//!   [`Error::Corrupt`].
//! - Errors from the write path ([`Error::Gap`], [`Error::NotContiguous`],
//!   [`Error::BelowSnapshot`], [`Error::StaleSnapshot`], [`Error::TooLarge`])
//!   reject one call and change nothing. An [`Error::Io`] from the write path
//!   leaves the file in an unknown state, so the `Wal` refuses every later
//!   write with [`Error::Broken`]; reopening it recovers whatever reached the
//!   disk.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What the recovery advice in [`Error::Corrupt`] says, kept in one place.
const CORRUPT_ADVICE: &str = "The WAL refuses to open so that no acknowledged data is dropped \
     silently; nothing was modified. To recover, keep a copy of the data directory for \
     analysis, then move it aside and let this node rejoin the cluster so that it is \
     caught up from a peer (or restore the directory from a backup).";

/// Everything that can go wrong in this crate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed on `path`. `op` says which one
    /// ("open", "write", "fdatasync", "rename", ...).
    Io {
        /// The file or directory the call was made on.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A file's content is not what this crate wrote, and the difference
    /// cannot be the torn tail of a crash. `offset` is the byte offset inside
    /// `path` where the bad data starts.
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the first bad byte (or of the bad record).
        offset: u64,
        /// What exactly is wrong.
        reason: String,
    },
    /// Another `Wal` (in this process or another one) holds the lock file.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An append would leave a hole in the log: the first new entry is
    /// `first_index` but the log ends at `last_index`, and no snapshot covers
    /// the indexes in between.
    Gap {
        /// The last index in the log before the append.
        last_index: u64,
        /// The index of the first entry of the rejected batch.
        first_index: u64,
    },
    /// The entries of one batch do not have consecutive indexes.
    NotContiguous {
        /// Position in the batch of the offending entry.
        position: usize,
        /// The index it should have had.
        expected: u64,
        /// The index it had.
        found: u64,
    },
    /// An append tried to write an entry at or below the snapshot index; those
    /// entries are compacted and can no longer change.
    BelowSnapshot {
        /// The index of the first entry of the rejected batch.
        index: u64,
        /// The index of the current snapshot.
        snapshot_index: u64,
    },
    /// A snapshot older than the current one was offered.
    StaleSnapshot {
        /// Index of the offered snapshot.
        index: u64,
        /// Term of the offered snapshot.
        term: u64,
        /// Index of the current snapshot.
        current_index: u64,
        /// Term of the current snapshot.
        current_term: u64,
    },
    /// One record would exceed the 4 GiB limit of the length word.
    TooLarge {
        /// Size the record would have had, in bytes.
        bytes: u64,
    },
    /// The [`Options`](crate::Options) cannot be used.
    InvalidOptions {
        /// Which option and why.
        reason: String,
    },
    /// An earlier write or fsync failed, so what is on disk is unknown. The
    /// `Wal` accepts no more writes; drop it and open the directory again.
    Broken {
        /// The failure that broke it.
        reason: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`]; a helper for `map_err`.
    pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
        move |source| Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => {
                write!(f, "{op} failed on {}: {source}", path.display())
            }
            Error::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{} is corrupt at byte offset {offset}: {reason}. {CORRUPT_ADVICE}",
                path.display()
            ),
            Error::Locked { path } => write!(
                f,
                "the WAL directory is locked by another process (lock file {}); \
                 stop the other node using this data directory, or use another directory",
                path.display()
            ),
            Error::Gap {
                last_index,
                first_index,
            } => write!(
                f,
                "append would leave a gap: the log ends at index {last_index} but the batch \
                 starts at index {first_index}; entries must start at or below {}",
                last_index + 1
            ),
            Error::NotContiguous {
                position,
                expected,
                found,
            } => write!(
                f,
                "entries in a batch must have consecutive indexes: entry {position} has index \
                 {found}, expected {expected}"
            ),
            Error::BelowSnapshot {
                index,
                snapshot_index,
            } => write!(
                f,
                "cannot write entry {index}: entries up to {snapshot_index} are covered by the \
                 snapshot and can no longer change"
            ),
            Error::StaleSnapshot {
                index,
                term,
                current_index,
                current_term,
            } => write!(
                f,
                "snapshot at index {index} term {term} is older than the current snapshot at \
                 index {current_index} term {current_term}"
            ),
            Error::TooLarge { bytes } => write!(
                f,
                "a record of {bytes} bytes exceeds the 4 GiB record limit; save fewer entries \
                 per call"
            ),
            Error::InvalidOptions { reason } => write!(f, "invalid WAL options: {reason}"),
            Error::Broken { reason } => write!(
                f,
                "the WAL stopped accepting writes after an earlier failure ({reason}); drop it \
                 and open the directory again to recover what reached the disk"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
