//! A multi-version key-value store with etcd's v3 data model: the state
//! machine that revisions, range reads, transactions, watches and leases
//! are built on. It depends on nothing else in the crate.
//!
//! # The model (etcd's `server/mvcc`)
//!
//! - The store has a **revision**: 1 when empty, +1 for every committed
//!   [`Batch`] that changed something. The changes of one batch share the
//!   revision and are ordered within it by a sub-revision: a change is at
//!   [`Rev`] `{ main, sub }`. A put always changes; a delete of an absent
//!   key does not; a batch without changes does not bump the revision.
//! - Each live key has a [`KeyValue`]: `create_revision` (main revision of
//!   the put that created it), `mod_revision` (of its last put), `version`
//!   (1 at creation, +1 per put), `lease` (0 for none) and the value, as a
//!   shared `Arc<[u8]>` that reads hand out without copying. A delete ends
//!   the key's generation: a later put starts again at version 1.
//! - Old versions are kept, so a [`range`](Store::range) can read the store
//!   as it was at any revision from the compacted one on, and
//!   [`events`](Store::events) replays every change after a revision, in
//!   order, each once, with the previous value if asked: what a watcher
//!   catches up from.
//! - [`compact`](Store::compact)`(r)` drops what no read at `r` or later can
//!   reach: per key, every version at or below `r` but the newest, and that
//!   one too if it is a delete. Reads at `r` still work; events need a
//!   start above `r` (etcd keeps a delete at exactly `r` and so lets a
//!   watch start at `r`; here a reader reads at `r` and watches from
//!   `r + 1`, which needs nothing of `r`'s own changes).
//!
//! Everything is deterministic: no clock, no randomness, no hash order.
//! The same operations give the same state, revisions and answers on
//! every replica.
//!
//! # The structures, and what they cost
//!
//! The state (`state.rs`) is two persistent structures from `imbl`, whose
//! nodes are reference-counted and copied on write:
//!
//! - `versions`, an `OrdMap` (a B-tree of 16-entry nodes): one entry per
//!   retained version, keyed by `(key, revision)` with the key ascending
//!   and the revision *descending*, so a key's newest version comes first
//!   and "the newest version at or below r" is one seek. The value is the
//!   version's record (create revision, version, lease, value) or a
//!   tombstone. Every version of a key shares one `Arc<[u8]>` of the key.
//! - `log`, a `Vector` (an RRB tree of 64-entry chunks): `(revision, key)`
//!   of every change above the compacted revision, in revision order,
//!   appended at the back. Events binary-search their start and walk it,
//!   filtering by range (as etcd reads its backend by revision); compaction
//!   walks its head and cuts it off in O(log n).
//!
//! plus `leases`, the set of `(lease, key)` of live keys with a lease, so
//! that a revoke finds its keys without a scan.
//!
//! Costs, with n retained versions: a put or delete is a seek for the key's
//! newest version, an insert, O(log n), and an append; a point read is one
//! seek; a range read of k keys costs a seek per key whose newest version
//! is above the read revision or that has more than four versions, else a
//! step. A range counts every key in it even past its limit (as etcd
//! does), so `count` costs the whole range. `compact(r)` looks only at the
//! changes logged up to `r`: each drops the version it superseded, and
//! itself if it is a delete; so it costs O(removed × log n), not O(store).
//! Events cost O(changes scanned), bounded by `max_scanned`.
//!
//! A [`View`] is a clone of the three structures: O(1), three reference
//! counts, whatever the size. It is `Send + Sync` and frozen: the snapshot
//! writer encodes it on another thread, and reads at any revision it holds
//! can be served from it off the apply thread. While a view shares a node,
//! the first write to it copies it (16 entries: reference counts, not
//! bytes) and the path above it, once per node, until the store owns its
//! nodes again; appends to the log copy one chunk per view. So puts right
//! after a view cost more, by a factor the bench measures: with a view
//! every 1,000 puts, 1.9 for puts of new keys into a million (today's
//! `KvStore` slows 5-fold there, copying 244-key hash shards) and 3.2 for
//! puts that each touch another of 1,000 hot keys in a million versions
//! (every put copies its own leaf and path). Taking views less often, or
//! sharing one view among the reads of many applied entries, pays less.
//!
//! A version costs its value (an `Arc<[u8]>`: 16 bytes of header plus the
//! bytes), its `versions` entry (key pointer, revision, record: 72 bytes,
//! in nodes that are not all full) and its `log` entry (32 bytes); the
//! bench measures about 180 bytes per version besides the value.
//!
//! # Snapshot format
//!
//! [`View::encode`] streams the whole store, history included, to an
//! `io::Write`; [`decode_from`] reads it back from an `io::Read` and
//! [`decode`] from a byte slice. All integers are little-endian.
//!
//! ```text
//! offset 0   magic "RNMV" (4 bytes)
//!        4   format version u32 = 1
//!        8   current revision u64        (1 ..= 2^62)
//!       16   compacted revision u64      (<= current)
//!       24   key records, in strictly ascending key order, each:
//!              tag u8 = 1
//!              key length u32 (1 ..= MAX_KEY), key bytes
//!              the key's versions, newest first, each:
//!                tag u8 = 1 (put):    main u64, sub u32, create revision u64,
//!                                     version u64, lease u64,
//!                                     value length u32 (<= MAX_VALUE), value bytes
//!                tag u8 = 2 (delete): main u64, sub u32
//!              tag u8 = 0            (end of the key's versions)
//!            tag u8 = 0              (end of the key records)
//!            trailer: keys u64, versions u64 (counts of the records above),
//!                     CRC-32 u32 (crc32fast, IEEE) of every byte before it
//! ```
//!
//! The decoder checks every length against its bound, and against the
//! bytes left when it knows them (`decode`), before reading: it allocates
//! only for bytes it has read. It checks every invariant the store relies
//! on (key order, revision order and range, one change per revision,
//! versions and create revisions that follow from the version before, no
//! delete of an absent key, nothing below the compacted revision but a
//! key's oldest version), then the counts and the CRC. Any failure is a
//! typed [`SnapshotError`]; no input panics it.
//!
//! # Deliberately not done
//!
//! - No persistence of its own: the store lives in memory and reaches disk
//!   as a snapshot plus the Raft log, like the rest of raftnode's state.
//! - No watcher registry: [`events`](Store::events) is the history that
//!   catching-up watchers read in bounded batches; who watches what, and
//!   feeding synced watchers after each commit, belong to the integrator
//!   (etcd's `watchable_store.go`).
//! - No lease clock: a lease is a number attached to keys. Granting,
//!   expiring and revoking belong to a lessor; [`Batch::revoke`] deletes a
//!   lease's keys when it decides to.
//! - No compare-and-swap here: a transaction's compares read the store
//!   (a [`Batch`] can read its own writes), then write; a batch cannot be
//!   rolled back, so decide before writing, as etcd's `Txn` does.
//! - No hash of the key space for corruption checks (etcd's `HashKV`).

mod codec;
mod error;
mod state;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::sync::Arc;

// Unused until the store is wired into the state machine.
#[allow(unused_imports)]
pub use codec::{decode, decode_from};
#[allow(unused_imports)]
pub use error::{Error, Field, Problem, SnapshotError};
use state::{Span, State};

/// The longest key a store takes, in bytes.
pub const MAX_KEY: usize = 1 << 16;
/// The longest value a store takes, in bytes.
pub const MAX_VALUE: usize = 1 << 24;

/// The position of one change: `main` is the store revision of its batch,
/// `sub` its place within the batch (0 for the first change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rev {
    pub main: u64,
    pub sub: u32,
}

impl Rev {
    /// Below every real change (the first is `{ 2, 0 }`).
    pub const ZERO: Rev = Rev { main: 0, sub: 0 };

    /// The first change of revision `main`.
    pub fn at(main: u64) -> Rev {
        Rev { main, sub: 0 }
    }

    /// The last possible change of revision `main`.
    pub(super) fn top(main: u64) -> Rev {
        Rev {
            main,
            sub: u32::MAX,
        }
    }
}

/// A key as it is at some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Arc<[u8]>,
    /// Main revision of the put that created this generation of the key.
    pub create_revision: u64,
    /// Main revision of the last put (for a delete event: of the delete).
    pub mod_revision: u64,
    /// 1 at creation, +1 per put since (0 in a delete event).
    pub version: u64,
    /// The lease the key is attached to; 0 for none.
    pub lease: u64,
    /// Empty for `keys_only` reads and delete events.
    pub value: Arc<[u8]>,
}

/// A range read. `end` follows etcd: empty for `key` alone, `[0]` for every
/// key from `key` on, else the keys in `[key, end)`; for a prefix `p` use
/// `end = prefix_end(p)`. An empty `key` matches nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct RangeRequest<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
    /// The revision to read at; 0 for the current one.
    pub rev: u64,
    /// At most this many key-values; 0 for no limit.
    pub limit: usize,
    /// Leave the values out (empty).
    pub keys_only: bool,
    /// Return no key-values, only `count`.
    pub count_only: bool,
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResult {
    /// In key order.
    pub kvs: Vec<KeyValue>,
    /// The limit cut the answer: more keys are in the range.
    pub more: bool,
    /// How many keys are in the range at `read_at`, limit or not.
    pub count: u64,
    /// The revision read at.
    pub read_at: u64,
    /// The store's current revision when read (etcd's header revision).
    pub current: u64,
}

/// A request for history: every change from `from` on to keys in
/// `[key, end)` (same convention as [`RangeRequest`]), in revision order.
/// Each limit is 0 for none; one event is always given when there is one,
/// whatever the limits, so a caller always makes progress.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventRequest<'a> {
    /// The first change wanted; its `main` must be above the compacted
    /// revision (any will do before the first compaction).
    pub from: Rev,
    pub key: &'a [u8],
    pub end: &'a [u8],
    /// Attach each change's previous key-value (if the key was live).
    pub prev_kv: bool,
    /// Stop after this many events.
    pub max_events: usize,
    /// Stop once the events hold this many key and value bytes.
    pub max_bytes: usize,
    /// Stop after looking at this many changes, matching or not: bounds
    /// the work of a narrow range over a busy history.
    pub max_scanned: usize,
}

/// Whether an event is a put or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// Where the change is in the history.
    pub rev: Rev,
    /// The key-value it wrote; for a delete only `key` and `mod_revision`.
    pub kv: KeyValue,
    /// The key-value before the change, when asked for and the key was
    /// live.
    pub prev: Option<KeyValue>,
}

/// The answer to an [`EventRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Events {
    pub events: Vec<Event>,
    /// Where to continue: the next request's `from`. It is
    /// `Rev::at(current + 1)` when the history was read to its end; it may
    /// be inside a revision (`sub > 0`) when a limit cut one.
    pub next: Rev,
    /// The store's current revision when read.
    pub current: u64,
}

/// What a store holds, for snapshot pacing and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Live keys at the current revision.
    pub keys: u64,
    /// Bytes of their keys and values.
    pub bytes: u64,
    /// Retained versions (puts and tombstones), current ones included.
    pub versions: u64,
    /// Bytes of keys and values of all retained versions: about the size
    /// of a snapshot.
    pub history_bytes: u64,
}

/// What [`Batch::commit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The store's revision after the batch: a new one if it changed
    /// anything, else the one before.
    pub revision: u64,
    /// How many changes it made.
    pub changes: u32,
}

/// `end` for the range of every key that starts with `prefix`: the prefix
/// with its trailing 0xff bytes removed and its last byte incremented;
/// `[0]` (no end) when the prefix is empty or all 0xff.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The multi-version store. Written by one thread (the apply thread);
/// [`view`](Store::view) hands frozen copies to others.
#[derive(Debug)]
pub struct Store {
    state: State,
}

impl Default for Store {
    fn default() -> Store {
        Store::new()
    }
}

/// Reads shared by [`Store`] and [`View`].
macro_rules! reads {
    () => {
        /// The revision of the last committed change (1 when empty).
        pub fn current_revision(&self) -> u64 {
            self.state.current
        }

        /// Reads below this revision fail; 0 until the first compaction.
        pub fn compacted_revision(&self) -> u64 {
            self.state.compacted
        }

        pub fn sizes(&self) -> Sizes {
            self.state.sizes
        }

        /// `key` at revision `rev` (0: current).
        pub fn get(&self, key: &[u8], rev: u64) -> Result<Option<KeyValue>, Error> {
            let req = RangeRequest {
                key,
                rev,
                ..Default::default()
            };
            Ok(self.range(&req)?.kvs.pop())
        }

        /// A range read; see [`RangeRequest`].
        pub fn range(&self, req: &RangeRequest) -> Result<RangeResult, Error> {
            let at = self.state.resolve(req.rev)?;
            Ok(self.state.range(req, at))
        }

        /// History; see [`EventRequest`].
        pub fn events(&self, req: &EventRequest) -> Result<Events, Error> {
            self.state.events(req)
        }

        /// The live keys attached to `lease`, in key order.
        pub fn leased_keys(&self, lease: u64) -> Vec<Arc<[u8]>> {
            self.state.leased_keys(lease)
        }
    };
}

impl Store {
    /// An empty store, at revision 1.
    pub fn new() -> Store {
        Store {
            state: State::new(),
        }
    }

    reads!();

    /// Starts a write batch: its changes become one new revision when it
    /// is committed (or dropped).
    pub fn begin(&mut self) -> Batch<'_> {
        // A batch that was leaked (mem::forget) left its changes pending:
        // they are committed now, so revisions never repeat.
        finish(&mut self.state);
        Batch {
            state: &mut self.state,
        }
    }

    /// Compacts at `rev` (see the module docs); returns how many versions
    /// were dropped. Fails, changing nothing, if `rev` is above the current
    /// revision or not above the compacted one.
    pub fn compact(&mut self, rev: u64) -> Result<u64, Error> {
        self.state.compact(rev)
    }

    /// A frozen copy of the whole store, in O(1).
    pub fn view(&self) -> View {
        View {
            state: self.state.clone(),
        }
    }

    /// Replaces the store with a decoded snapshot.
    pub fn restore(&mut self, snapshot: Store) {
        *self = snapshot;
    }

    /// Writes the snapshot of the store; see [`View::encode`].
    pub fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        codec::encode(&self.state, w)
    }

    fn from_state(state: State) -> Store {
        Store { state }
    }
}

/// A frozen copy of a [`Store`]: reads at any revision it held, and its
/// snapshot. Cheap to clone and to send to another thread.
#[derive(Clone, Debug)]
pub struct View {
    state: State,
}

impl View {
    reads!();

    /// Writes the snapshot (module docs: "Snapshot format"). It writes many
    /// small pieces: give it a buffered writer.
    pub fn encode(&self, w: &mut impl Write) -> io::Result<()> {
        codec::encode(&self.state, w)
    }
}

/// Commits the open batch's changes, if any.
fn finish(state: &mut State) -> Committed {
    let changes = state.pending;
    if changes > 0 {
        state.current += 1;
        state.pending = 0;
    }
    Committed {
        revision: state.current,
        changes,
    }
}

/// A write batch: every change it makes is at revision
/// [`revision`](Batch::revision), in the order made. Reads through it see
/// its own writes. Dropping it commits it, like [`commit`](Batch::commit).
pub struct Batch<'a> {
    state: &'a mut State,
}

impl Batch<'_> {
    /// The revision this batch's changes get.
    pub fn revision(&self) -> u64 {
        self.state.current + 1
    }

    fn next_rev(&mut self) -> Result<Rev, Error> {
        let sub = self.state.pending;
        if sub == u32::MAX {
            return Err(Error::BatchFull);
        }
        Ok(Rev {
            main: self.state.current + 1,
            sub,
        })
    }

    /// Sets `key` to `value`, attached to `lease` (0: none); returns the
    /// key-value it replaced, if the key was live.
    pub fn put(
        &mut self,
        key: &[u8],
        value: impl Into<Arc<[u8]>>,
        lease: u64,
    ) -> Result<Option<KeyValue>, Error> {
        let value = value.into();
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if key.len() > MAX_KEY {
            return Err(Error::KeyTooLong { len: key.len() });
        }
        if value.len() > MAX_VALUE {
            return Err(Error::ValueTooLong { len: value.len() });
        }
        let rev = self.next_rev()?;
        let prev = self.state.put(key, value, lease, rev);
        self.state.pending += 1;
        Ok(prev)
    }

    /// Deletes the live keys in `[key, end)` (convention of
    /// [`RangeRequest`]); returns what they held, in key order. Deleting
    /// nothing is no change.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, Error> {
        let mut keys = Vec::new();
        if !key.is_empty() {
            let at = self.read_revision();
            self.state.visit(Span::new(key, end), at, |slot, _| {
                keys.push(slot.key.clone());
                true
            });
        }
        self.delete_keys(keys)
    }

    /// Deletes every live key attached to `lease`; returns what they held.
    pub fn revoke(&mut self, lease: u64) -> Result<Vec<KeyValue>, Error> {
        let keys = self.state.leased_keys(lease);
        self.delete_keys(keys)
    }

    fn delete_keys(&mut self, keys: Vec<Arc<[u8]>>) -> Result<Vec<KeyValue>, Error> {
        let mut deleted = Vec::with_capacity(keys.len());
        for key in keys {
            let rev = self.next_rev()?;
            if let Some(kv) = self.state.delete(&key, rev) {
                self.state.pending += 1;
                deleted.push(kv);
            }
        }
        Ok(deleted)
    }

    /// The revision reads through the batch see: its own if it changed
    /// something.
    fn read_revision(&self) -> u64 {
        self.state.current + u64::from(self.state.pending > 0)
    }

    /// A range read that sees this batch's writes when `req.rev` is 0.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult, Error> {
        let at = match req.rev {
            0 => self.read_revision(),
            r => self.state.resolve(r)?,
        };
        Ok(self.state.range(req, at))
    }

    /// Ends the batch: one new revision if it changed anything.
    pub fn commit(self) -> Committed {
        let mut this = std::mem::ManuallyDrop::new(self);
        finish(this.state)
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        finish(self.state);
    }
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("revision", &self.revision())
            .field("changes", &self.state.pending)
            .finish()
    }
}
