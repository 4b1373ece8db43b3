//! The store against a naive model, and the snapshot decoder against
//! mutated input.
//!
//! The model keeps the full state at every revision (a `Vec` of
//! `BTreeMap`s) and the list of every change; it answers each read, event
//! query, compaction and size question the obvious way. A seeded generator
//! drives thousands of random batches of puts, deletes and revokes over a
//! small key space full of 0x00 and 0xff bytes, with compactions, reads at
//! random revisions, event queries with random limits, views and snapshot
//! round trips, and every answer is compared. A failure names its seed;
//! `MVCC_MODEL_SEED=<seed>` replays that seed alone.

use std::collections::BTreeMap;

use super::tests::{reseal, round_trip, sample};
use super::*;

/// splitmix64: small, seeded, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// A key of 1 to 3 bytes from {a, b, 0x00, 0xff}: 84 keys.
    fn key(&mut self) -> Vec<u8> {
        let len = 1 + self.below(3) as usize;
        (0..len)
            .map(|_| [b'a', b'b', 0, 0xff][self.below(4) as usize])
            .collect()
    }
    /// A `[key, end)` in any of the request conventions.
    fn span(&mut self) -> (Vec<u8>, Vec<u8>) {
        let k = self.key();
        match self.below(6) {
            0 => (k, vec![]),
            1 => (k.clone(), prefix_end(&k)),
            2 => (k, vec![0]),
            3 => (vec![], vec![0]),
            _ => (k, self.key()),
        }
    }
}

/// What the model holds for a live key.
#[derive(Clone, Debug, PartialEq)]
struct MKv {
    create: u64,
    modr: u64,
    version: u64,
    lease: u64,
    value: Vec<u8>,
}

/// One change: key, what it wrote (`None`: delete), what was there.
#[derive(Clone, Debug)]
struct MChange {
    rev: Rev,
    key: Vec<u8>,
    new: Option<MKv>,
    prev: Option<MKv>,
}

type MState = BTreeMap<Vec<u8>, MKv>;

struct Model {
    /// `states[r]`: the store at revision r (`states[0]` is unused).
    states: Vec<MState>,
    changes: Vec<MChange>,
    compacted: u64,
}

fn in_span(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if start.is_empty() {
        return false;
    }
    match end {
        [] => key == start,
        [0] => key >= start,
        e => key >= start && key < e,
    }
}

fn to_kv(key: &[u8], m: &MKv) -> KeyValue {
    KeyValue {
        key: Arc::from(key),
        create_revision: m.create,
        mod_revision: m.modr,
        version: m.version,
        lease: m.lease,
        value: Arc::from(&m.value[..]),
    }
}

impl Model {
    fn current(&self) -> u64 {
        self.states.len() as u64 - 1
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResult, Error> {
        let cur = self.current();
        let at = match req.rev {
            0 => cur,
            r if r < self.compacted => {
                return Err(Error::Compacted {
                    requested: r,
                    compacted: self.compacted,
                })
            }
            r if r > cur => {
                return Err(Error::FutureRevision {
                    requested: r,
                    current: cur,
                })
            }
            r => r,
        };
        Ok(self.range_at(req, at, cur))
    }

    /// A range read at `at`, unchecked, as a store at `cur` answers it.
    fn range_at(&self, req: &RangeRequest, at: u64, cur: u64) -> RangeResult {
        let all: Vec<KeyValue> = self.states[at as usize]
            .iter()
            .filter(|(k, _)| in_span(k, req.key, req.end))
            .map(|(k, m)| {
                let mut kv = to_kv(k, m);
                if req.keys_only {
                    kv.value = Arc::from(&[][..]);
                }
                kv
            })
            .collect();
        let count = all.len() as u64;
        let (kvs, more) = if req.count_only {
            (vec![], false)
        } else if req.limit != 0 && all.len() > req.limit {
            (all[..req.limit].to_vec(), true)
        } else {
            (all, false)
        };
        RangeResult {
            kvs,
            more,
            count,
            read_at: at,
            current: cur,
        }
    }

    /// Every event from `from` (whole history, no limits).
    fn events(&self, from: Rev, upto: u64, key: &[u8], end: &[u8], prev_kv: bool) -> Vec<Event> {
        self.changes
            .iter()
            .filter(|c| c.rev >= from && c.rev.main <= upto && in_span(&c.key, key, end))
            .map(|c| {
                let (kind, kv) = match &c.new {
                    Some(m) => (EventKind::Put, to_kv(&c.key, m)),
                    None => (
                        EventKind::Delete,
                        KeyValue {
                            key: Arc::from(&c.key[..]),
                            create_revision: 0,
                            mod_revision: c.rev.main,
                            version: 0,
                            lease: 0,
                            value: Arc::from(&[][..]),
                        },
                    ),
                };
                let prev = if prev_kv {
                    c.prev.as_ref().map(|p| to_kv(&c.key, p))
                } else {
                    None
                };
                Event {
                    kind,
                    rev: c.rev,
                    kv,
                    prev,
                }
            })
            .collect()
    }

    /// Sizes by the compaction rule: a change is retained if it is above
    /// the compacted revision, or it is its key's newest change at or
    /// below it and a put.
    fn sizes(&self) -> Sizes {
        let cur = &self.states[self.current() as usize];
        let mut s = Sizes {
            keys: cur.len() as u64,
            bytes: cur
                .iter()
                .map(|(k, m)| (k.len() + m.value.len()) as u64)
                .sum(),
            ..Sizes::default()
        };
        let mut newest_below: BTreeMap<&[u8], &MChange> = BTreeMap::new();
        for c in &self.changes {
            if c.rev.main > self.compacted {
                s.versions += 1;
                s.history_bytes +=
                    (c.key.len() + c.new.as_ref().map_or(0, |m| m.value.len())) as u64;
            } else {
                newest_below.insert(&c.key, c);
            }
        }
        for c in newest_below.values() {
            if let Some(m) = &c.new {
                s.versions += 1;
                s.history_bytes += (c.key.len() + m.value.len()) as u64;
            }
        }
        s
    }
}

/// One random batch on both the store and the model.
fn random_batch(rng: &mut Rng, store: &mut Store, model: &mut Model) {
    let mut work = model.states.last().unwrap().clone();
    let main = model.current() + 1;
    let mut sub = 0u32;
    let mut b = store.begin();
    let mut changes = Vec::new();
    let delete = |work: &mut MState, key: Vec<u8>, sub: &mut u32, changes: &mut Vec<MChange>| {
        let prev = work.remove(&key);
        changes.push(MChange {
            rev: Rev { main, sub: *sub },
            key,
            new: None,
            prev,
        });
        *sub += 1;
    };
    for _ in 0..1 + rng.below(4) {
        match rng.below(10) {
            0..=5 => {
                let key = rng.key();
                let value = format!("v{}", rng.below(1000)).into_bytes();
                let lease = rng.below(4);
                let got = b.put(&key, &value[..], lease).unwrap();
                let prev = work.get(&key).cloned();
                assert_eq!(got, prev.as_ref().map(|p| to_kv(&key, p)));
                let new = MKv {
                    create: prev.as_ref().map_or(main, |p| p.create),
                    modr: main,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    lease,
                    value,
                };
                work.insert(key.clone(), new.clone());
                changes.push(MChange {
                    rev: Rev { main, sub },
                    key,
                    new: Some(new),
                    prev,
                });
                sub += 1;
            }
            6..=8 => {
                let (k, e) = rng.span();
                let got = b.delete_range(&k, &e).unwrap();
                let doomed: Vec<Vec<u8>> = work
                    .keys()
                    .filter(|x| in_span(x, &k, &e))
                    .cloned()
                    .collect();
                let want: Vec<KeyValue> = doomed.iter().map(|x| to_kv(x, &work[x])).collect();
                assert_eq!(got, want);
                for key in doomed {
                    delete(&mut work, key, &mut sub, &mut changes);
                }
            }
            _ => {
                let lease = 1 + rng.below(3);
                let got = b.revoke(lease).unwrap();
                let doomed: Vec<Vec<u8>> = work
                    .iter()
                    .filter(|(_, m)| m.lease == lease)
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(got.len(), doomed.len());
                for key in doomed {
                    delete(&mut work, key, &mut sub, &mut changes);
                }
            }
        }
    }
    let done = b.commit();
    assert_eq!(done.changes, sub);
    if sub > 0 {
        model.states.push(work);
        model.changes.extend(changes);
    }
    assert_eq!(done.revision, model.current());
}

/// Reads every event through `events` in pieces with random limits.
fn events_in_pieces(
    rng: &mut Rng,
    read: &dyn Fn(&EventRequest) -> Result<Events, Error>,
    from: Rev,
    key: &[u8],
    end: &[u8],
    prev_kv: bool,
) -> Result<Vec<Event>, Error> {
    let mut out = Vec::new();
    let mut from = from;
    for _ in 0..10_000 {
        let req = EventRequest {
            from,
            key,
            end,
            prev_kv,
            max_events: rng.below(4) as usize,
            max_bytes: rng.below(3) as usize * 8,
            max_scanned: rng.below(3) as usize * 5,
        };
        let got = read(&req)?;
        assert!(
            got.next > from || got.next.main > got.current,
            "no progress at {from:?}"
        );
        out.extend(got.events);
        if got.next.main > got.current {
            return Ok(out);
        }
        from = got.next;
    }
    panic!("events did not reach the end");
}

fn check_reads(rng: &mut Rng, store: &Store, model: &Model) {
    let cur = model.current();
    for _ in 0..3 {
        let (key, end) = rng.span();
        let rev = match rng.below(4) {
            0 => 0,
            _ => model.compacted.saturating_sub(1) + rng.below(cur + 3 - model.compacted),
        };
        let req = RangeRequest {
            key: &key,
            end: &end,
            rev,
            limit: rng.below(4) as usize,
            keys_only: rng.chance(20),
            count_only: rng.chance(10),
        };
        assert_eq!(store.range(&req), model.range(&req), "{req:?}");
    }
    let (key, end) = rng.span();
    let from = Rev::at(model.compacted.saturating_sub(1) + rng.below(cur + 3 - model.compacted));
    let prev_kv = rng.chance(50);
    let got = events_in_pieces(rng, &|r| store.events(r), from, &key, &end, prev_kv);
    if model.compacted > 0 && from.main <= model.compacted {
        assert_eq!(
            got,
            Err(Error::Compacted {
                requested: from.main,
                compacted: model.compacted
            })
        );
    } else {
        assert_eq!(got.unwrap(), model.events(from, cur, &key, &end, prev_kv));
    }
}

fn run_seed(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut store = Store::new();
    let mut model = Model {
        states: vec![MState::new(), MState::new()],
        changes: Vec::new(),
        compacted: 0,
    };
    // Views taken along the way, with the model's revision and compaction
    // at that moment.
    let mut views: Vec<(View, u64, u64)> = Vec::new();
    for step in 0..steps {
        random_batch(&mut rng, &mut store, &mut model);
        let cur = model.current();
        if rng.chance(6) {
            let rev = model.compacted + 1 + rng.below(cur - model.compacted);
            let dropped = store.compact(rev);
            let before = model.sizes().versions;
            model.compacted = rev;
            assert_eq!(
                dropped,
                Ok(before - model.sizes().versions),
                "seed {seed} step {step}"
            );
            assert!(store.compact(rev).is_err());
            assert!(store.compact(cur + 1).is_err());
        }
        check_reads(&mut rng, &store, &model);
        assert_eq!(store.sizes(), model.sizes(), "seed {seed} step {step}");
        if rng.chance(3) {
            views.push((store.view(), cur, model.compacted));
        }
        if rng.chance(5) && !views.is_empty() {
            let (view, at, compacted) = &views[rng.below(views.len() as u64) as usize];
            let rev = compacted.max(&1) + rng.below(at + 1 - compacted.max(&1));
            let req = RangeRequest {
                key: b"\0",
                end: b"\0",
                rev,
                ..Default::default()
            };
            let want = model.range_at(&req, rev, *at);
            assert_eq!(view.range(&req).unwrap(), want, "view at {at}");
            let from = Rev::at(compacted + 1);
            let evs = view.events(&EventRequest {
                from,
                key: b"\0",
                end: b"\0",
                ..Default::default()
            });
            assert_eq!(
                evs.unwrap().events,
                model.events(from, *at, b"\0", b"\0", false)
            );
        }
        if rng.chance(2) {
            store = round_trip(&store);
        }
    }
}

#[test]
fn the_store_answers_like_a_naive_model_over_thousands_of_random_batches() {
    if let Some(seed) = std::env::var("MVCC_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_seed(seed, 600);
        return;
    }
    for seed in 0..16 {
        let result = std::panic::catch_unwind(|| run_seed(seed, 600));
        if result.is_err() {
            panic!("seed {seed} failed; replay: MVCC_MODEL_SEED={seed} cargo test --release --lib mvcc::model_tests");
        }
    }
}

/// Checks that a store that decoded can be used: every read, events,
/// a write and a compaction, without a panic.
fn exercise(store: Store) {
    let view = store.view();
    for rev in view.compacted_revision().max(1)
        ..=view.current_revision().min(view.compacted_revision() + 50)
    {
        let req = RangeRequest {
            key: b"\0",
            end: b"\0",
            rev,
            ..Default::default()
        };
        let r = view.range(&req).unwrap();
        assert_eq!(r.kvs.len() as u64, r.count);
    }
    let from = Rev::at(view.compacted_revision() + 1);
    view.events(&EventRequest {
        from,
        key: b"\0",
        end: b"\0",
        prev_kv: true,
        ..Default::default()
    })
    .unwrap();
    let mut store = round_trip(&store);
    let mut b = store.begin();
    b.put(b"a", &b"x"[..], 1).unwrap();
    b.delete_range(b"\0", b"\0").unwrap();
    b.commit();
    let cur = store.current_revision();
    store.compact(cur).unwrap();
    assert_eq!(store.sizes().versions, 0);
}

#[test]
fn the_decoder_never_panics_on_mutated_snapshots() {
    let mut sources = Vec::new();
    for s in [Store::new(), sample()] {
        let mut bytes = Vec::new();
        s.encode(&mut bytes).unwrap();
        sources.push(bytes);
    }
    let mut rng = Rng(7);
    let (mut decoded, mut refused) = (0, 0);
    for i in 0..20_000 {
        let mut m = sources[i % sources.len()].clone();
        for _ in 0..1 + rng.below(3) {
            let n = m.len() as u64;
            let kind = if n == 0 { 3 } else { rng.below(6) };
            match kind {
                0 => {
                    let at = rng.below(n) as usize;
                    m[at] ^= 1 << rng.below(8);
                }
                1 => {
                    let at = rng.below(n) as usize;
                    m[at] = [0, 1, 2, 0xff][rng.below(4) as usize];
                }
                2 => m.truncate(rng.below(n + 1) as usize),
                3 => m.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                4 => {
                    let at = rng.below(n + 1) as usize;
                    let len = rng.below(12) as usize;
                    let piece: Vec<u8> = m[at..(at + len).min(m.len())].to_vec();
                    m.splice(at..at, piece);
                }
                _ => {
                    let at = rng.below(n + 1) as usize;
                    let end = (at + rng.below(12) as usize).min(m.len());
                    m.drain(at..end);
                }
            }
        }
        // Half the time the damage is sealed, so the checks behind the
        // CRC are reached too.
        if rng.chance(50) {
            reseal(&mut m);
        }
        match decode(&m) {
            Ok(store) => {
                decoded += 1;
                exercise(store);
            }
            Err(_) => refused += 1,
        }
        let mut r = &m[..];
        let _ = decode_from(&mut r);
    }
    assert!(refused > 10_000, "{refused} refused");
    assert!(
        decoded > 0,
        "some sealed edits (a value byte) are valid snapshots"
    );
}
