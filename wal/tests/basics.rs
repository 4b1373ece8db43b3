//! The WAL's contract for callers, one behaviour per test: what goes in comes
//! back, raft's overwrite rule, misuse rejected with typed errors, segments
//! roll and are released, the directory lock.

mod common;

use common::{entry, opts, segments, Rng, TempDir};
use wal::{Entry, Error, HardState, Options, SnapshotMeta, Wal};

const SEG: u64 = 16 * 1024;

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

fn reopen(dir: &TempDir) -> wal::Recovered {
    Wal::open(dir.path(), opts(SEG)).expect("reopen").1
}

#[test]
fn a_missing_directory_is_created_as_an_empty_log() {
    let d = TempDir::new("empty");
    let (w, rec) = Wal::open(&d.path().join("a/b"), opts(SEG)).unwrap();
    assert_eq!(rec, wal::Recovered::default());
    assert_eq!(w.last_index(), 0);
    assert_eq!(w.first_index(), 1);
    assert_eq!(segments(&d.path().join("a/b")).len(), 1);
}

#[test]
fn entries_and_hard_state_come_back_after_reopen() {
    let d = TempDir::new("roundtrip");
    let mut rng = Rng::new(1);
    let es: Vec<Entry> = (1..=5).map(|i| entry(&mut rng, i, 1, 50)).collect();
    {
        let (mut w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
        w.save(Some(&hs(1, 2, 3)), &es[..2], true).unwrap();
        w.save(None, &es[2..], false).unwrap();
        w.sync().unwrap();
    }
    let rec = reopen(&d);
    assert_eq!(rec.entries, es);
    assert_eq!(rec.hard_state, hs(1, 2, 3));
    assert_eq!(rec.torn_tail, None);
}

#[test]
fn bytes_written_and_fsync_times_are_reported_for_the_metrics() {
    let d = TempDir::new("io-figures");
    let mut rng = Rng::new(2);
    let (mut w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
    let _ = w.take_fsync_time();
    let before = w.bytes_written();
    w.save(None, &[entry(&mut rng, 1, 1, 100)], false).unwrap();
    let after_one = w.bytes_written();
    assert!(after_one > before + 100, "{before} -> {after_one}");
    assert_eq!(w.take_fsync_time(), None, "an unsynced save did no fsync");
    w.save(None, &[entry(&mut rng, 2, 1, 100)], true).unwrap();
    assert!(w.bytes_written() > after_one);
    assert!(w.take_fsync_time().is_some(), "a synced save fsyncs");
    assert_eq!(w.take_fsync_time(), None, "taken once");
    w.save(None, &[entry(&mut rng, 3, 1, 10)], false).unwrap();
    w.sync().unwrap();
    assert!(
        w.take_fsync_time().is_some(),
        "sync() fsyncs what is unsynced"
    );
    w.sync().unwrap();
    assert_eq!(w.take_fsync_time(), None, "nothing to sync, no fsync");
}

#[test]
fn a_batch_with_only_a_hard_state_is_saved_and_the_last_one_wins() {
    let d = TempDir::new("hs-only");
    {
        let (mut w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
        for t in 1..=50 {
            w.save(Some(&hs(t, t % 3, 0)), &[], t % 2 == 0).unwrap();
        }
        w.sync().unwrap();
        assert_eq!(w.hard_state(), hs(50, 2, 0));
    }
    let rec = reopen(&d);
    assert_eq!(rec.hard_state, hs(50, 2, 0));
    assert!(rec.entries.is_empty());
}

#[test]
fn an_empty_save_changes_nothing() {
    let d = TempDir::new("noop");
    let (mut w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
    w.save(None, &[], true).unwrap();
    drop(w);
    assert_eq!(reopen(&d), wal::Recovered::default());
}

#[test]
fn appending_at_index_i_discards_every_entry_from_i_on() {
    let d = TempDir::new("overwrite");
    let mut rng = Rng::new(2);
    let old: Vec<Entry> = (1..=10).map(|i| entry(&mut rng, i, 1, 20)).collect();
    let new: Vec<Entry> = (5..=6).map(|i| entry(&mut rng, i, 2, 20)).collect();
    {
        let (mut w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
        w.save(None, &old, true).unwrap();
        w.save(None, &new, true).unwrap();
        assert_eq!(w.last_index(), 6);
        assert_eq!(w.term(6), Some(2));
        assert_eq!(w.term(4), Some(1));
        assert_eq!(w.term(7), None);
    }
    let rec = reopen(&d);
    let mut want = old[..4].to_vec();
    want.extend(new);
    assert_eq!(rec.entries, want);
}

#[test]
fn an_append_that_would_leave_a_gap_is_an_error_and_changes_nothing() {
    let d = TempDir::new("gap");
    let mut rng = Rng::new(3);
    let (mut w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
    w.save(None, &[entry(&mut rng, 1, 1, 5)], true).unwrap();
    let err = w.save(None, &[entry(&mut rng, 3, 1, 5)], true).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Gap {
                last_index: 1,
                first_index: 3
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("gap"), "{err}");
    let err = w
        .save(
            None,
            &[entry(&mut rng, 2, 1, 5), entry(&mut rng, 4, 1, 5)],
            true,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotContiguous {
                position: 1,
                expected: 3,
                found: 4
            }
        ),
        "{err}"
    );
    // Still usable, and nothing of the rejected batches reached the disk.
    w.save(None, &[entry(&mut rng, 2, 1, 5)], true).unwrap();
    drop(w);
    let rec = reopen(&d);
    assert_eq!(
        rec.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn the_first_entry_of_a_new_log_must_be_index_1() {
    let d = TempDir::new("first");
    let mut rng = Rng::new(4);
    let (mut w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
    let err = w.save(None, &[entry(&mut rng, 2, 1, 5)], true).unwrap_err();
    assert!(matches!(
        err,
        Error::Gap {
            last_index: 0,
            first_index: 2
        }
    ));
}

#[test]
fn writes_roll_over_into_segments_named_by_sequence_and_first_index() {
    let d = TempDir::new("roll");
    let mut rng = Rng::new(5);
    let mut all = Vec::new();
    {
        let (mut w, _) = Wal::open(d.path(), opts(4096)).unwrap();
        for i in 1..=100 {
            let e = entry(&mut rng, i, 1, 200);
            w.save(
                Some(&hs(1, 0, i - 1)),
                std::slice::from_ref(&e),
                i % 10 == 0,
            )
            .unwrap();
            all.push(e);
        }
        w.sync().unwrap();
    }
    let segs = segments(d.path());
    assert!(segs.len() > 5, "{segs:?}");
    let names: Vec<String> = segs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[0], "0000000000000000-0000000000000001.wal");
    for (i, n) in names.iter().enumerate() {
        assert!(n.starts_with(&format!("{i:016x}-")), "{n}");
        assert_eq!(std::fs::metadata(&segs[i]).unwrap().len(), 4096);
    }
    let rec = reopen(&d);
    assert_eq!(rec.entries, all);
    assert_eq!(rec.hard_state, hs(1, 0, 99));
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let d = TempDir::new("big");
    let mut rng = Rng::new(6);
    let es: Vec<Entry> = (1..=3).map(|i| entry(&mut rng, i, 1, 10_000)).collect();
    {
        let (mut w, _) = Wal::open(d.path(), opts(4096)).unwrap();
        w.save(None, &es, true).unwrap();
        w.save(None, &[entry(&mut rng, 4, 1, 10)], true).unwrap();
    }
    let rec = reopen(&d);
    assert_eq!(&rec.entries[..3], &es[..]);
    assert_eq!(rec.entries.len(), 4);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_as_locked() {
    let d = TempDir::new("lock");
    let (_w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
    let err = Wal::open(d.path(), opts(SEG)).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    drop(_w);
    Wal::open(d.path(), opts(SEG)).expect("the lock is released on drop");
}

#[test]
fn invalid_options_are_refused_with_a_reason() {
    let d = TempDir::new("opts");
    for o in [
        Options {
            segment_size: 1000,
            ..Options::default()
        },
        Options {
            segment_size: 4097,
            ..Options::default()
        },
        Options {
            keep_snapshots: 0,
            ..Options::default()
        },
    ] {
        let err = Wal::open(d.path(), o).unwrap_err();
        assert!(matches!(err, Error::InvalidOptions { .. }), "{err}");
    }
}

#[test]
fn release_deletes_only_segments_the_snapshot_covers_and_never_the_current_one() {
    let d = TempDir::new("release");
    let mut rng = Rng::new(7);
    let (mut w, _) = Wal::open(d.path(), opts(4096)).unwrap();
    for i in 1..=60 {
        w.save(None, &[entry(&mut rng, i, 1, 300)], false).unwrap();
    }
    let before = w.segment_paths();
    assert!(before.len() > 4);
    // Without a snapshot nothing is covered.
    w.release_to(60).unwrap();
    assert_eq!(w.segment_paths(), before);
    w.save_snapshot(
        &SnapshotMeta {
            index: 30,
            term: 1,
            voters: vec![1],
            learners: vec![],
        },
        b"state",
    )
    .unwrap();
    // Asking for more than the snapshot covers releases only what it covers.
    w.release_to(1000).unwrap();
    let after = w.segment_paths();
    assert!(after.len() < before.len());
    assert_eq!(after.last(), before.last());
    drop(w);
    let rec = reopen(&d);
    assert_eq!(rec.snapshot.unwrap().index, 30);
    assert_eq!(
        rec.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        (31..=60).collect::<Vec<_>>()
    );
    // Releasing everything a snapshot at the last index covers leaves one segment.
    let (mut w, _) = Wal::open(d.path(), opts(4096)).unwrap();
    w.save_snapshot(
        &SnapshotMeta {
            index: 60,
            term: 1,
            ..Default::default()
        },
        b"s",
    )
    .unwrap();
    w.release_to(60).unwrap();
    assert_eq!(w.segment_paths().len(), 1);
    drop(w);
    let rec = reopen(&d);
    assert!(rec.entries.is_empty());
    assert_eq!(rec.snapshot.unwrap().index, 60);
}

#[test]
fn writes_after_release_and_reopen_continue_the_log() {
    let d = TempDir::new("release-continue");
    let mut rng = Rng::new(8);
    {
        let (mut w, _) = Wal::open(d.path(), opts(4096)).unwrap();
        for i in 1..=40 {
            w.save(Some(&hs(1, 1, i)), &[entry(&mut rng, i, 1, 300)], false)
                .unwrap();
        }
        w.save_snapshot(
            &SnapshotMeta {
                index: 35,
                term: 1,
                ..Default::default()
            },
            b"x",
        )
        .unwrap();
        w.release_to(35).unwrap();
    }
    {
        let (mut w, rec) = Wal::open(d.path(), opts(4096)).unwrap();
        assert_eq!(rec.hard_state, hs(1, 1, 40));
        assert_eq!(rec.entries.first().unwrap().index, 36);
        for i in 41..=80 {
            w.save(None, &[entry(&mut rng, i, 2, 300)], false).unwrap();
        }
        w.sync().unwrap();
    }
    let rec = reopen(&d);
    assert_eq!(rec.hard_state, hs(1, 1, 40));
    assert_eq!(rec.entries.len(), 45);
    assert_eq!(rec.entries.last().unwrap().index, 80);
}
