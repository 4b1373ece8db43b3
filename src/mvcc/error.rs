//! The errors of the multi-version store: [`Error`] for a read, a write or
//! a compaction the store refuses, [`SnapshotError`] for a snapshot that
//! does not decode. Each names the numbers involved and says what to do;
//! none carries its reason as text to be compared.

use std::fmt;
use std::io;

/// A read, write or compaction the store refused. It changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The revision asked for is below the compacted revision: the versions
    /// it needs are gone. Reads may ask for `compacted` or later; events
    /// may start at `compacted + 1` or later.
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The store's compacted revision.
        compacted: u64,
    },
    /// The revision asked for has not happened yet.
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's current revision.
        current: u64,
    },
    /// A key must have at least one byte.
    EmptyKey,
    /// A key is longer than [`MAX_KEY`](super::MAX_KEY).
    KeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A value is longer than [`MAX_VALUE`](super::MAX_VALUE).
    ValueTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// One batch already holds `u32::MAX` changes, the most one revision
    /// can number.
    BatchFull,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Compacted {
                requested,
                compacted,
            } => write!(
                f,
                "revision {requested} is compacted: history starts at revision {compacted}; \
                 read at {compacted} or later, and watch from {} or later",
                compacted + 1
            ),
            Error::FutureRevision { requested, current } => write!(
                f,
                "revision {requested} is in the future: the store is at revision {current}"
            ),
            Error::EmptyKey => write!(f, "a key must have at least one byte"),
            Error::KeyTooLong { len } => {
                write!(f, "the key is {len} bytes, the limit is {}", super::MAX_KEY)
            }
            Error::ValueTooLong { len } => write!(
                f,
                "the value is {len} bytes, the limit is {}",
                super::MAX_VALUE
            ),
            Error::BatchFull => write!(
                f,
                "one batch holds at most {} changes; split it into several",
                u32::MAX
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Which length field of a snapshot was out of bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A key's length.
    Key,
    /// A value's length.
    Value,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Key => "key",
            Field::Value => "value",
        })
    }
}

/// What is wrong with a record of a snapshot that has the right shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A tag byte that is none of those the format defines.
    UnknownTag(u8),
    /// The compacted revision is above the current one.
    CompactedAboveCurrent,
    /// Keys must come in strictly ascending order.
    KeysOutOfOrder,
    /// A key with no version.
    KeyWithoutVersions,
    /// A version's main revision is not in `2..=current`.
    RevisionOutOfRange,
    /// A key's versions must come newest first, revisions strictly falling.
    RevisionsOutOfOrder,
    /// Two changes claim the same revision.
    DuplicateRevision,
    /// A key's oldest retained version is a delete, or a delete follows a
    /// delete: a delete of an absent key is no change.
    DeleteOfAbsentKey,
    /// A version's create revision or version number does not follow from
    /// the versions before it.
    GenerationMismatch,
    /// Below the compacted revision only a key's oldest retained version
    /// may remain.
    CompactedVersionRetained,
    /// The counts in the trailer differ from the records read.
    CountMismatch,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownTag(t) => write!(f, "unknown tag byte {t}"),
            Problem::CompactedAboveCurrent => f.write_str("compacted revision above current"),
            Problem::KeysOutOfOrder => f.write_str("keys out of order"),
            Problem::KeyWithoutVersions => f.write_str("a key without versions"),
            Problem::RevisionOutOfRange => f.write_str("a revision outside 2..=current"),
            Problem::RevisionsOutOfOrder => f.write_str("a key's revisions out of order"),
            Problem::DuplicateRevision => f.write_str("two changes at one revision"),
            Problem::DeleteOfAbsentKey => f.write_str("a delete of an absent key"),
            Problem::GenerationMismatch => {
                f.write_str("a create revision or version inconsistent with the one before")
            }
            Problem::CompactedVersionRetained => {
                f.write_str("more than one version at or below the compacted revision")
            }
            Problem::CountMismatch => f.write_str("trailer counts differ from the records"),
        }
    }
}

/// Why a snapshot did not decode. The store being decoded is dropped; the
/// caller keeps whatever it had (the node fetches the snapshot again, or
/// stops, as for any corrupt snapshot).
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading the input failed (not at its end: see `Truncated`).
    Io {
        /// Bytes read before the failure.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// The input ended inside the snapshot.
    Truncated {
        /// Bytes read when it ended, or the offset of the field that
        /// claimed more bytes than remain.
        offset: u64,
    },
    /// The input does not start with `RNMV`: not a snapshot of this store.
    BadMagic,
    /// A format version this code does not read.
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// A length above its bound: corrupt, or written by a store with
    /// larger limits.
    TooLong {
        /// Which length.
        field: Field,
        /// The length found.
        len: u64,
        /// Offset of the length field.
        offset: u64,
    },
    /// A record that breaks an invariant of the store.
    Invalid {
        /// What is wrong.
        problem: Problem,
        /// Offset of the record (or field) that breaks it.
        offset: u64,
    },
    /// The CRC-32 trailer does not match: the bytes were damaged.
    Checksum {
        /// The CRC stored in the trailer.
        stored: u32,
        /// The CRC of the bytes read.
        computed: u32,
    },
    /// Bytes follow the snapshot's trailer ([`decode`](super::decode) only).
    TrailingBytes {
        /// Where the snapshot ended.
        offset: u64,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io { offset, source } => {
                write!(
                    f,
                    "reading the store snapshot failed at byte {offset}: {source}"
                )
            }
            SnapshotError::Truncated { offset } => write!(
                f,
                "the store snapshot ends early (at byte {offset}); fetch it again"
            ),
            SnapshotError::BadMagic => {
                f.write_str("not a store snapshot (it does not start with RNMV)")
            }
            SnapshotError::UnsupportedVersion { version } => write!(
                f,
                "store snapshot format {version} is not readable by this version (it reads {})",
                super::codec::FORMAT_VERSION
            ),
            SnapshotError::TooLong { field, len, offset } => write!(
                f,
                "the store snapshot is corrupt at byte {offset}: a {field} of {len} bytes is \
                 beyond the limit"
            ),
            SnapshotError::Invalid { problem, offset } => write!(
                f,
                "the store snapshot is corrupt at byte {offset}: {problem}"
            ),
            SnapshotError::Checksum { stored, computed } => write!(
                f,
                "the store snapshot is corrupt: its CRC-32 is {stored:#010x} but its bytes give \
                 {computed:#010x}; fetch it again"
            ),
            SnapshotError::TrailingBytes { offset } => write!(
                f,
                "the store snapshot ends at byte {offset} but more bytes follow"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
