//! The WAL against an in-memory model, driven by a seeded PRNG.
//!
//! Each seed runs a random sequence of appends (including overwrites of the
//! log's tail, as a new leader forces them), hard-state-only saves,
//! snapshots (compactions that keep the entries after them, and installs
//! from a leader that reset the log), releases, syncs, rejected calls and
//! reopens, with small segments so that rolls and releases happen all the
//! time. After every reopen, the recovered hard state, snapshot (metadata
//! and data) and entries must equal the model's.
//!
//! `WAL_MODEL_SEEDS=N` runs N seeds (default 200); `WAL_MODEL_SEED=S` runs
//! only seed S. A failure prints its seed and the command that replays it.

mod common;

use common::{entry, Rng, TempDir};
use wal::{Entry, Error, HardState, OnDamage, Options, SnapshotMeta, Wal};

/// What the log should hold, maintained with raft's rules.
#[derive(Default)]
struct Model {
    hs: HardState,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// Live entries after the snapshot, contiguous.
    entries: Vec<Entry>,
}

impl Model {
    fn snap_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.0.index)
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snap_index(), |e| e.index)
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        match &self.snapshot {
            Some((m, _)) if m.index == index => Some(m.term),
            _ => self
                .entries
                .iter()
                .find(|e| e.index == index)
                .map(|e| e.term),
        }
    }

    fn append(&mut self, es: &[Entry]) {
        if let Some(first) = es.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend_from_slice(es);
        }
    }

    fn install(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
        if self.term_of(meta.index) == Some(meta.term) {
            self.entries.retain(|e| e.index > meta.index);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some((meta, data));
    }
}

/// Half the seeds delete released files on the background thread, so that
/// reopening right after a release is checked with deletions in flight; half
/// open with `Salvage`, which on an undamaged log must change nothing.
fn options(seed: u64) -> Options {
    Options {
        segment_size: 4096,
        keep_snapshots: 2,
        // Reopened often: skip preparing a spare segment on every open.
        preallocate_in_background: false,
        remove_in_background: seed % 4 >= 2,
        on_damage: if seed % 8 >= 4 {
            OnDamage::Salvage
        } else {
            OnDamage::Refuse
        },
    }
}

fn check(w: &Wal, rec: &wal::Recovered, m: &Model, step: usize) {
    assert_eq!(rec.damage, None, "step {step}: damage");
    assert_eq!(rec.hard_state, m.hs, "step {step}: hard state");
    assert_eq!(
        rec.snapshot.as_ref(),
        m.snapshot.as_ref().map(|s| &s.0),
        "step {step}: snapshot"
    );
    assert_eq!(rec.entries, m.entries, "step {step}: entries");
    assert_eq!(rec.torn_tail, None, "step {step}");
    assert_eq!(w.last_index(), m.last(), "step {step}: last index");
    let data = w.load_snapshot().unwrap().map(|(_, d)| d);
    assert_eq!(
        data.as_ref(),
        m.snapshot.as_ref().map(|s| &s.1),
        "step {step}: snapshot data"
    );
}

fn run(seed: u64) {
    let d = TempDir::new(&format!("model-{seed}"));
    let mut rng = Rng::new(seed);
    let mut m = Model::default();
    // The current raft term, used for new entries and hard states.
    let mut term = 1;
    let (mut w, rec) = Wal::open(d.path(), options(seed)).unwrap();
    check(&w, &rec, &m, 0);
    let steps = rng.range(60, 160) as usize;
    for step in 1..=steps {
        let roll = rng.range(0, 99);
        match roll {
            // Append, sometimes overwriting the tail, sometimes with a hard state.
            0..=44 => {
                if rng.chance(10) {
                    term += 1;
                }
                let lo = m.snap_index() + 1;
                let first = if rng.chance(20) {
                    rng.range(lo, m.last() + 1)
                } else {
                    m.last() + 1
                };
                let n = rng.range(1, 4);
                let es: Vec<Entry> = (0..n)
                    .map(|k| {
                        let len = if rng.chance(3) {
                            rng.range(3000, 9000)
                        } else {
                            rng.range(0, 200)
                        };
                        entry(&mut rng, first + k, term, len as usize)
                    })
                    .collect();
                let hs = rng.chance(40).then(|| HardState {
                    term,
                    vote: m.hs.vote,
                    commit: m.hs.commit + rng.range(0, 2),
                });
                w.save(hs.as_ref(), &es, rng.chance(30)).unwrap();
                m.append(&es);
                if let Some(h) = hs {
                    m.hs = h;
                }
            }
            // A hard state alone.
            45..=52 => {
                term += rng.range(0, 1);
                let h = HardState {
                    term,
                    vote: rng.range(0, 5),
                    commit: m.hs.commit,
                };
                w.save(Some(&h), &[], rng.chance(50)).unwrap();
                m.hs = h;
            }
            // A snapshot: compaction, or an install from a leader.
            53..=64 => {
                let install = rng.chance(30) || m.last() == m.snap_index();
                let (index, term) = if install {
                    let index = if m.last() > m.snap_index() && rng.chance(30) {
                        rng.range(m.snap_index() + 1, m.last())
                    } else {
                        m.last() + rng.range(1, 3)
                    };
                    // The term may or may not match the log's entry there.
                    (index, term + rng.range(0, 1))
                } else {
                    let index = rng.range(m.snap_index() + 1, m.last());
                    (index, m.term_of(index).unwrap())
                };
                let meta = SnapshotMeta {
                    index,
                    term,
                    voters: (1..=rng.range(1, 5)).collect(),
                    learners: (10..rng.range(10, 12)).collect(),
                };
                let len = rng.range(0, 3000) as usize;
                let data = rng.bytes(len);
                w.save_snapshot(&meta, &data).unwrap();
                m.install(meta, data);
            }
            // Release: anything from nothing to more than the snapshot covers.
            65..=74 => w.release_to(rng.range(0, m.last() + 5)).unwrap(),
            75..=79 => w.sync().unwrap(),
            // Calls that must be rejected without changing anything.
            80..=87 => match rng.range(0, 2) {
                0 => {
                    let at = m.last() + rng.range(2, 5);
                    let e = entry(&mut rng, at, 1, 10);
                    assert!(
                        matches!(w.save(None, &[e], true), Err(Error::Gap { .. })),
                        "step {step}"
                    );
                }
                1 if m.snap_index() > 0 => {
                    let at = rng.range(1, m.snap_index());
                    let e = entry(&mut rng, at, 1, 10);
                    let r = w.save(None, &[e], true);
                    assert!(matches!(r, Err(Error::BelowSnapshot { .. })), "step {step}");
                }
                _ if m.snap_index() > 1 => {
                    let meta = SnapshotMeta {
                        index: rng.range(1, m.snap_index() - 1),
                        term: 1,
                        ..Default::default()
                    };
                    let r = w.save_snapshot(&meta, b"stale");
                    assert!(matches!(r, Err(Error::StaleSnapshot { .. })), "step {step}");
                }
                _ => {}
            },
            // Reopen (a drop without sync, as after kill -9: the page cache
            // still holds every write).
            _ => {
                drop(w);
                let (w2, rec) = Wal::open(d.path(), options(seed)).unwrap();
                check(&w2, &rec, &m, step);
                w = w2;
            }
        }
        assert_eq!(w.last_index(), m.last(), "step {step}: last index");
        assert_eq!(w.hard_state(), m.hs, "step {step}");
    }
    drop(w);
    let (w, rec) = Wal::open(d.path(), options(seed)).unwrap();
    check(&w, &rec, &m, steps + 1);
}

fn seeds(part: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("WAL_MODEL_SEED") {
        let seed: u64 = s.parse().expect("WAL_MODEL_SEED must be a number");
        return if part == 0 { vec![seed] } else { vec![] };
    }
    let n: u64 = std::env::var("WAL_MODEL_SEEDS")
        .ok()
        .map(|s| s.parse().expect("WAL_MODEL_SEEDS must be a number"))
        .unwrap_or(200);
    (0..n).filter(|s| s % 2 == part).collect()
}

fn run_seeds(part: u64) {
    for seed in seeds(part) {
        if let Err(panic) = std::panic::catch_unwind(|| run(seed)) {
            eprintln!(
                "\nmodel test failed for seed {seed}; replay it with:\n  \
                 WAL_MODEL_SEED={seed} cargo test -p wal --release --test model -- --nocapture\n"
            );
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn the_wal_matches_the_model_for_even_seeds() {
    run_seeds(0);
}

#[test]
fn the_wal_matches_the_model_for_odd_seeds() {
    run_seeds(1);
}

/// The model itself follows raft's rules (a check of the checker).
#[test]
fn the_model_applies_overwrites_and_snapshots_like_raft() {
    let mut rng = Rng::new(1);
    let mut m = Model::default();
    let es: Vec<Entry> = (1..=5).map(|i| entry(&mut rng, i, 1, 1)).collect();
    m.append(&es);
    m.append(&[entry(&mut rng, 3, 2, 1)]);
    assert_eq!(m.last(), 3);
    m.install(
        SnapshotMeta {
            index: 2,
            term: 1,
            ..Default::default()
        },
        vec![],
    );
    assert_eq!(m.entries.len(), 1);
    m.install(
        SnapshotMeta {
            index: 3,
            term: 3,
            ..Default::default()
        },
        vec![],
    );
    assert!(m.entries.is_empty());
    assert_eq!(m.last(), 3);
}
