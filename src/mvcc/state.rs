//! The persistent maps behind a store and a view, and every read, write and
//! compaction on them. `mod.rs` explains the design; this file keeps the
//! invariants.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};

use super::{
    Error, Event, EventKind, EventRequest, Events, KeyValue, RangeRequest, RangeResult, Rev, Sizes,
};

/// The place of one version in [`State::versions`]: ordered by key
/// ascending, then by revision *descending*, so that a key's newest version
/// comes first and "the newest version at or below r" is the first entry at
/// or after `(key, r)`.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    /// Shared by every version of the key (and by the log): one allocation
    /// per key, not per version.
    pub(super) key: Arc<[u8]>,
    pub(super) rev: Rev,
}

/// What [`Slot`] and a borrowed probe have in common, so that the map can
/// be searched with a `&[u8]` key without allocating an `Arc` for it.
pub(super) trait Place {
    fn key(&self) -> &[u8];
    fn rev(&self) -> Rev;
}

impl Place for Slot {
    fn key(&self) -> &[u8] {
        &self.key
    }
    fn rev(&self) -> Rev {
        self.rev
    }
}

/// A borrowed position to search [`State::versions`] from.
pub(super) struct Probe<'a> {
    pub(super) key: &'a [u8],
    pub(super) rev: Rev,
}

impl Place for Probe<'_> {
    fn key(&self) -> &[u8] {
        self.key
    }
    fn rev(&self) -> Rev {
        self.rev
    }
}

impl Ord for dyn Place + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key()
            .cmp(other.key())
            .then_with(|| other.rev().cmp(&self.rev()))
    }
}
impl PartialOrd for dyn Place + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for dyn Place + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for dyn Place + '_ {}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        (self as &dyn Place).cmp(other as &dyn Place)
    }
}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Slot {}

impl<'a> Borrow<dyn Place + 'a> for Slot {
    fn borrow(&self) -> &(dyn Place + 'a) {
        self
    }
}

type Versions = OrdMap<Slot, Record>;

/// The versions from a borrowed position on (`inclusive`: at it, else
/// after it).
fn seek<'m>(
    map: &'m Versions,
    p: &dyn Place,
    inclusive: bool,
) -> imbl::ordmap::RangedIter<'m, Slot, Record, imbl::shared_ptr::DefaultSharedPtr> {
    let start = if inclusive {
        Bound::Included(p)
    } else {
        Bound::Excluded(p)
    };
    map.range::<_, dyn Place>((start, Bound::Unbounded))
}

/// One version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Record {
    Put(Put),
    /// A tombstone: the key was deleted at this revision.
    Delete,
}

/// A put: the key's value from this revision on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Put {
    /// Main revision of the put that began this generation of the key.
    pub(super) create: u64,
    /// 1 for the put that created the key, +1 for each put since.
    pub(super) version: u64,
    /// The lease the key is attached to; 0 for none.
    pub(super) lease: u64,
    pub(super) value: Arc<[u8]>,
}

/// The keys `[start, end)` of a request, in etcd's convention.
#[derive(Clone, Copy)]
pub(super) struct Span<'a> {
    start: &'a [u8],
    end: End<'a>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End<'a> {
    /// `start` alone (the request's end was empty).
    Only,
    /// Keys below this one.
    Before(&'a [u8]),
    /// Every key from `start` on (the request's end was `[0]`).
    Unbounded,
}

impl<'a> Span<'a> {
    pub(super) fn new(start: &'a [u8], end: &'a [u8]) -> Span<'a> {
        let end = match end {
            [] => End::Only,
            [0] => End::Unbounded,
            e => End::Before(e),
        };
        Span { start, end }
    }

    /// Whether `key` (at or after `start`) is past the end of the span.
    fn past(&self, key: &[u8]) -> bool {
        match self.end {
            End::Only => key != self.start,
            End::Before(e) => key >= e,
            End::Unbounded => false,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        key >= self.start && !self.past(key)
    }
}

/// The store's state, shared between the store and its views. Cloning it
/// is O(1): three reference counts.
#[derive(Clone, Debug)]
pub(super) struct State {
    /// Every retained version. Invariants: a key's versions alternate
    /// between runs of puts and single deletes (never two deletes in a
    /// row); its oldest retained version is a put; only its oldest may
    /// have a main revision `<= compacted`.
    pub(super) versions: Versions,
    /// The key changed at each revision `> compacted`, in revision order:
    /// every version in `versions` with a main revision above `compacted`
    /// has exactly one entry here, and nothing else does.
    pub(super) log: Vector<(Rev, Arc<[u8]>)>,
    /// `(lease, key)` for every live key attached to a lease (not 0).
    pub(super) leases: OrdSet<(u64, Arc<[u8]>)>,
    /// The revision of the last committed batch (1 for an empty store).
    /// Invariant: `compacted <= current`.
    pub(super) current: u64,
    /// Reads below it fail; events need revisions above it. 0 until the
    /// first compaction.
    pub(super) compacted: u64,
    /// Changes written at revision `current + 1` by the open batch; 0 when
    /// no batch is open (or it changed nothing).
    pub(super) pending: u32,
    pub(super) sizes: Sizes,
}

impl State {
    pub(super) fn new() -> State {
        State {
            versions: OrdMap::new(),
            log: Vector::new(),
            leases: OrdSet::new(),
            current: 1,
            compacted: 0,
            pending: 0,
            sizes: Sizes::default(),
        }
    }

    /// The revision a read asks for (0: current), checked.
    pub(super) fn resolve(&self, rev: u64) -> Result<u64, Error> {
        match rev {
            0 => Ok(self.current),
            r if r < self.compacted => Err(Error::Compacted {
                requested: r,
                compacted: self.compacted,
            }),
            r if r > self.current => Err(Error::FutureRevision {
                requested: r,
                current: self.current,
            }),
            r => Ok(r),
        }
    }

    /// The newest version of `key` at or below `at`, with its slot.
    pub(super) fn newest(&self, key: &[u8], at: Rev) -> Option<(&Slot, &Record)> {
        let probe = Probe { key, rev: at };
        let (slot, rec) = seek(&self.versions, &probe, true).next()?;
        (*slot.key == *key).then_some((slot, rec))
    }

    /// Calls `f` with each key of `span` that is live at main revision
    /// `at`, in key order, until it returns false.
    pub(super) fn visit(&self, span: Span, at: u64, mut f: impl FnMut(&Slot, &Put) -> bool) {
        let top = Rev::top(at);
        if span.end == End::Only {
            if let Some((slot, Record::Put(put))) = self.newest(span.start, top) {
                f(slot, put);
            }
            return;
        }
        let start = Probe {
            key: span.start,
            rev: Rev::top(u64::MAX),
        };
        let mut it = seek(&self.versions, &start, true);
        let mut next = it.next();
        while let Some((slot, rec)) = next {
            if span.past(&slot.key) {
                return;
            }
            // The first entry of a key is its newest version; when that is
            // above `at`, seek to the newest at or below it.
            let found = if slot.rev <= top {
                Some((slot, rec))
            } else {
                self.newest(&slot.key, top)
            };
            if let Some((s, Record::Put(put))) = found {
                if !f(s, put) {
                    return;
                }
            }
            // Step over the key's older versions: a few steps, then a seek
            // past them all (a key may have thousands).
            let mut steps = 0;
            loop {
                next = it.next();
                match next {
                    Some((s, _)) if s.key == slot.key => {
                        steps += 1;
                        if steps == 4 {
                            let past = Probe {
                                key: &slot.key,
                                rev: Rev::ZERO,
                            };
                            it = seek(&self.versions, &past, false);
                            next = it.next();
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
    }

    /// A range read at main revision `at` (already resolved).
    pub(super) fn range(&self, req: &RangeRequest, at: u64) -> RangeResult {
        let mut kvs = Vec::new();
        let mut count = 0u64;
        let mut more = false;
        let empty: Arc<[u8]> = Arc::from(&[][..]);
        if req.key.is_empty() {
            return RangeResult {
                kvs,
                more,
                count,
                read_at: at,
                current: self.current,
            };
        }
        self.visit(Span::new(req.key, req.end), at, |slot, put| {
            count += 1;
            if req.count_only {
                return true;
            }
            if req.limit != 0 && kvs.len() >= req.limit {
                more = true;
                return true; // go on counting
            }
            let mut kv = kv_of(slot, put);
            if req.keys_only {
                kv.value = empty.clone();
            }
            kvs.push(kv);
            true
        });
        RangeResult {
            kvs,
            more,
            count,
            read_at: at,
            current: self.current,
        }
    }

    /// The changes from `req.from` on, in revision order.
    pub(super) fn events(&self, req: &EventRequest) -> Result<Events, Error> {
        if self.compacted > 0 && req.from.main <= self.compacted {
            return Err(Error::Compacted {
                requested: req.from.main,
                compacted: self.compacted,
            });
        }
        let span = Span::new(req.key, req.end);
        let limit = |n: usize| if n == 0 { usize::MAX } else { n };
        let (max_events, max_bytes, max_scanned) = (
            limit(req.max_events),
            limit(req.max_bytes),
            limit(req.max_scanned),
        );
        let mut out = Events {
            events: Vec::new(),
            next: Rev::at(self.current + 1),
            current: self.current,
        };
        let (mut bytes, mut scanned) = (0usize, 0usize);
        let end = Rev::top(self.current);
        if req.from > end {
            return Ok(out);
        }
        let first = self.log_index(req.from);
        let mut log = self.log.focus();
        for i in first..self.log.len() {
            let Some((rev, key)) = log.get(i) else { break };
            if *rev > end {
                break; // an open batch's changes
            }
            let full =
                !out.events.is_empty() && (out.events.len() >= max_events || bytes >= max_bytes);
            if full || scanned >= max_scanned {
                out.next = *rev;
                return Ok(out);
            }
            scanned += 1;
            if req.key.is_empty() || !span.contains(key) {
                continue;
            }
            let here = Probe { key, rev: *rev };
            let mut it = seek(&self.versions, &here, true);
            // The log and the versions hold the same changes (invariant of
            // `log`); a miss would be a bug, and is skipped, not a panic.
            let Some((slot, rec)) = it.next().filter(|(s, _)| s.rev == *rev) else {
                debug_assert!(false, "log entry {rev:?} without its version");
                continue;
            };
            let prev = match it.next() {
                Some((s, Record::Put(p))) if req.prev_kv && s.key == slot.key => Some(kv_of(s, p)),
                _ => None,
            };
            let (kind, kv) = match rec {
                Record::Put(p) => (EventKind::Put, kv_of(slot, p)),
                Record::Delete => (EventKind::Delete, tombstone_kv(slot)),
            };
            bytes += kv.key.len() + kv.value.len() + prev.as_ref().map_or(0, |p| p.value.len());
            out.events.push(Event {
                kind,
                rev: *rev,
                kv,
                prev,
            });
        }
        Ok(out)
    }

    /// Puts `value` at `key` as change `rev`; returns the value it replaced.
    pub(super) fn put(
        &mut self,
        key: &[u8],
        value: Arc<[u8]>,
        lease: u64,
        rev: Rev,
    ) -> Option<KeyValue> {
        let (key, prev) = match self.newest(key, Rev::top(u64::MAX)) {
            Some((slot, Record::Put(p))) => (slot.key.clone(), Some(kv_of(slot, p))),
            Some((slot, Record::Delete)) => (slot.key.clone(), None),
            None => (Arc::from(key), None),
        };
        let (create, version) = match &prev {
            Some(p) => (p.create_revision, p.version.saturating_add(1)),
            None => (rev.main, 1),
        };
        let klen = key.len() as u64;
        let vlen = value.len() as u64;
        let s = &mut self.sizes;
        match &prev {
            Some(p) => s.bytes = s.bytes - p.value.len() as u64 + vlen,
            None => {
                s.keys += 1;
                s.bytes += klen + vlen;
            }
        }
        s.versions += 1;
        s.history_bytes += klen + vlen;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.leases.remove(&(old_lease, key.clone()));
            }
            if lease != 0 {
                self.leases.insert((lease, key.clone()));
            }
        }
        let put = Put {
            create,
            version,
            lease,
            value,
        };
        self.log.push_back((rev, key.clone()));
        self.versions.insert(Slot { key, rev }, Record::Put(put));
        prev
    }

    /// Deletes `key` as change `rev` if it is live; returns what it held.
    pub(super) fn delete(&mut self, key: &[u8], rev: Rev) -> Option<KeyValue> {
        let prev = match self.newest(key, Rev::top(u64::MAX)) {
            Some((slot, Record::Put(p))) => kv_of(slot, p),
            _ => return None,
        };
        let s = &mut self.sizes;
        s.keys -= 1;
        s.bytes -= (prev.key.len() + prev.value.len()) as u64;
        s.versions += 1;
        s.history_bytes += prev.key.len() as u64;
        if prev.lease != 0 {
            self.leases.remove(&(prev.lease, prev.key.clone()));
        }
        self.log.push_back((rev, prev.key.clone()));
        self.versions.insert(
            Slot {
                key: prev.key.clone(),
                rev,
            },
            Record::Delete,
        );
        Some(prev)
    }

    /// Drops every version no read at `rev` or later can reach: per key,
    /// all versions at or below `rev` but the newest, and that one too if
    /// it is a delete. Returns how many versions were dropped.
    ///
    /// Only the changes logged at or below `rev` are looked at: each drops
    /// the version it superseded (the one just older), and itself if it is
    /// a delete. So the cost is O(changes dropped from the log × log n),
    /// whatever the size of the store.
    pub(super) fn compact(&mut self, rev: u64) -> Result<u64, Error> {
        if rev > self.current {
            return Err(Error::FutureRevision {
                requested: rev,
                current: self.current,
            });
        }
        if rev <= self.compacted {
            return Err(Error::Compacted {
                requested: rev,
                compacted: self.compacted,
            });
        }
        let upto = self.log_index(Rev::at(rev + 1));
        let mut dropped = 0;
        let mut log = self.log.focus();
        for i in 0..upto {
            let Some((change, key)) = log.get(i) else {
                break;
            };
            let here = Probe { key, rev: *change };
            let mut it = seek(&self.versions, &here, true);
            let this = it.next().filter(|(s, _)| s.rev == *change && s.key == *key);
            let is_delete = matches!(this, Some((_, Record::Delete)));
            let older = it.next().filter(|(s, _)| s.key == *key).map(|(s, _)| s.rev);
            if let Some(older) = older {
                dropped += drop_version(&mut self.versions, &mut self.sizes, key, older);
            }
            if is_delete {
                dropped += drop_version(&mut self.versions, &mut self.sizes, key, *change);
            }
        }
        self.log = self.log.skip(upto);
        self.compacted = rev;
        Ok(dropped)
    }

    /// The index of the first log entry at or after `rev`.
    fn log_index(&self, rev: Rev) -> usize {
        match self.log.binary_search_by(|(r, _)| r.cmp(&rev)) {
            Ok(i) | Err(i) => i,
        }
    }

    /// The live keys attached to `lease`, in key order.
    pub(super) fn leased_keys(&self, lease: u64) -> Vec<Arc<[u8]>> {
        let empty: Arc<[u8]> = Arc::from(&[][..]);
        let mut keys = Vec::new();
        for (l, key) in self.leases.range((lease, empty)..) {
            if *l != lease {
                break;
            }
            keys.push(key.clone());
        }
        keys
    }
}

/// Removes one version; returns 1 if it was there.
fn drop_version(versions: &mut Versions, sizes: &mut Sizes, key: &[u8], rev: Rev) -> u64 {
    let probe = Probe { key, rev };
    let Some(rec) = versions.remove(&probe as &dyn Place) else {
        return 0;
    };
    let vlen = match rec {
        Record::Put(p) => p.value.len(),
        Record::Delete => 0,
    };
    sizes.versions -= 1;
    sizes.history_bytes -= (key.len() + vlen) as u64;
    1
}

/// The key-value a put wrote.
pub(super) fn kv_of(slot: &Slot, put: &Put) -> KeyValue {
    KeyValue {
        key: slot.key.clone(),
        create_revision: put.create,
        mod_revision: slot.rev.main,
        version: put.version,
        lease: put.lease,
        value: put.value.clone(),
    }
}

/// What an event of a delete carries, as etcd: the key and the revision.
fn tombstone_kv(slot: &Slot) -> KeyValue {
    KeyValue {
        key: slot.key.clone(),
        create_revision: 0,
        mod_revision: slot.rev.main,
        version: 0,
        lease: 0,
        value: Arc::from(&[][..]),
    }
}
