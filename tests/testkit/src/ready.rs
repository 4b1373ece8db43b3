//! The storage half of the Ready/Advance contract over [`MemStorage`].
//!
//! `src/raft/rawnode.rs` lists what an application does with a [`Ready`]:
//! persist the snapshot (if any), then the entries and the hard state; send
//! `persisted_messages` only after that; apply; advance. [`persist`] is the
//! first step and nothing else: it does not send, apply or advance, so each
//! driver keeps those (and its tracing) where its own loop needs them.
//!
//! `MemStorage` has no fsync, so `must_sync` needs nothing here; a driver
//! that models a disk (the simulation in `tests/sim/`) decides what survives
//! a crash by *when* it calls [`persist`], not by calling something else.

use std::fmt;

use raftnode::raft::{MemStorage, Ready, StorageError};

/// Why `MemStorage` refused part of a Ready. Either is a bug in the core (it
/// handed out something that does not fit the log it built) or in the driver
/// (it skipped or reordered Readies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistError {
    /// The snapshot at `index` is older than the one storage holds.
    Snapshot { index: u64, source: StorageError },
    /// The entries starting at `first` leave a gap after storage's last index.
    Entries { first: u64, source: StorageError },
}

impl fmt::Display for PersistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::Snapshot { index, source } => {
                write!(f, "storage refused the snapshot at {index}: {source}")
            }
            PersistError::Entries { first, source } => {
                write!(f, "storage refused the entries from {first}: {source}")
            }
        }
    }
}

impl std::error::Error for PersistError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PersistError::Snapshot { source, .. } | PersistError::Entries { source, .. } => {
                Some(source)
            }
        }
    }
}

/// Persists `rd`'s snapshot, then its entries, then its hard state into
/// `storage`: after this returns `Ok`, `rd.persisted_messages` may be sent.
/// Stops at the first refusal, leaving the hard state unwritten.
pub fn persist(storage: &MemStorage, rd: &Ready) -> Result<(), PersistError> {
    if let Some(s) = &rd.snapshot {
        storage
            .apply_snapshot(s.clone())
            .map_err(|source| PersistError::Snapshot {
                index: s.meta.index,
                source,
            })?;
    }
    if let Some(first) = rd.entries.first() {
        storage
            .append(&rd.entries)
            .map_err(|source| PersistError::Entries {
                first: first.index,
                source,
            })?;
    }
    if let Some(hs) = rd.hard_state {
        storage.set_hard_state(hs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use raftnode::raft::{ConfState, HardState, Snapshot, SnapshotMeta, Storage, StorageError};

    use super::*;
    use crate::harness::ent;

    #[test]
    fn snapshot_then_entries_then_hard_state() {
        let storage = MemStorage::new_with_conf_state(ConfState::with_voters(vec![1, 2, 3]));
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 6,
        };
        let rd = Ready {
            snapshot: Some(Snapshot {
                meta: SnapshotMeta {
                    index: 5,
                    term: 2,
                    conf_state: ConfState::with_voters(vec![1, 2, 3]),
                },
                data: Vec::new(),
            }),
            // The entries follow the snapshot: they only fit once it is in.
            entries: vec![ent(6, 3), ent(7, 3)],
            hard_state: Some(hs),
            ..Ready::default()
        };
        persist(&storage, &rd).unwrap();
        assert_eq!(storage.first_index(), 6);
        assert_eq!(storage.last_index(), 7);
        assert_eq!(storage.term(5), Ok(2));
        // Written after the snapshot, which raises the commit to its index.
        assert_eq!(storage.initial_state().0, hs);
    }

    #[test]
    fn a_gap_is_refused_and_the_hard_state_not_written() {
        let storage = MemStorage::new();
        let rd = Ready {
            entries: vec![ent(3, 1)],
            hard_state: Some(HardState {
                term: 1,
                vote: 1,
                commit: 3,
            }),
            ..Ready::default()
        };
        assert_eq!(
            persist(&storage, &rd),
            Err(PersistError::Entries {
                first: 3,
                source: StorageError::Unavailable
            })
        );
        assert_eq!(storage.initial_state().0, HardState::default());
    }
}
