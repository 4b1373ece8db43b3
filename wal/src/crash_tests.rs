//! Crashes at the named points of every multi-step operation.
//!
//! Each test arms a failpoint (see `failpoint`), runs the operation until it
//! stops there, drops the `Wal` without another write (what `kill -9` leaves
//! behind: everything written so far, since the page cache survives), and
//! checks that the directory reopens with everything that had been saved
//! before the interrupted operation, and keeps working.

use std::fs;
use std::path::{Path, PathBuf};

use crate::failpoint::arm;
use crate::{Entry, Error, HardState, Options, SnapshotMeta, Wal};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let p = base.join(format!("wal-crash-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn opts() -> Options {
    Options {
        segment_size: 4096,
        ..Options::default()
    }
}

fn e(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        kind: 0,
        data: vec![index as u8 | 1; 300],
    }
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 1,
        voters: vec![1],
        learners: vec![],
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Saves entries `from..=to`, one per call, unsynced.
fn fill(w: &mut Wal, from: u64, to: u64) {
    for i in from..=to {
        w.save(None, &[e(i)], false).unwrap();
    }
}

fn indexes(es: &[Entry]) -> Vec<u64> {
    es.iter().map(|e| e.index).collect()
}

#[test]
fn a_crash_at_any_step_of_a_segment_roll_loses_nothing_saved_before_it() {
    for point in [
        "roll:before-prepare",
        "segment:before-rename",
        "segment:after-rename",
    ] {
        let d = TempDir::new(point);
        let (mut w, _) = Wal::open(&d.0, opts()).unwrap();
        fill(&mut w, 1, 8);
        let segs = w.segment_paths().len();
        arm(point);
        // Keep saving until the roll hits the failpoint.
        let mut i = 9;
        let err = loop {
            match w.save(
                Some(&HardState {
                    term: 1,
                    vote: 1,
                    commit: i,
                }),
                &[e(i)],
                false,
            ) {
                Ok(()) => i += 1,
                Err(err) => break err,
            }
        };
        assert!(err.to_string().contains(point), "{point}: {err}");
        assert!(w.segment_paths().len() == segs || i > 9);
        // A failed write leaves the WAL unusable until reopened.
        assert!(matches!(
            w.save(None, &[e(i)], true),
            Err(Error::Broken { .. })
        ));
        drop(w);

        let (mut w, rec) = Wal::open(&d.0, opts()).unwrap();
        assert_eq!(indexes(&rec.entries), (1..i).collect::<Vec<_>>(), "{point}");
        assert_eq!(rec.hard_state.commit, i - 1, "{point}");
        assert!(!names(&d.0)
            .iter()
            .any(|n| n.ends_with(".tmp") && n.starts_with("0000000000000000")));
        fill(&mut w, i, i + 20);
        drop(w);
        let (_, rec) = Wal::open(&d.0, opts()).unwrap();
        assert_eq!(rec.entries.last().unwrap().index, i + 20, "{point}");
    }
}

#[test]
fn a_crash_during_the_first_open_leaves_a_directory_that_opens_empty() {
    for point in ["segment:before-rename", "segment:after-rename"] {
        let d = TempDir::new(&format!("init-{point}"));
        arm(point);
        let err = Wal::open(&d.0, opts()).unwrap_err();
        assert!(err.to_string().contains(point), "{err}");
        let (mut w, rec) = Wal::open(&d.0, opts()).unwrap();
        assert_eq!(rec, crate::Recovered::default(), "{point}");
        fill(&mut w, 1, 3);
        drop(w);
        let (_, rec) = Wal::open(&d.0, opts()).unwrap();
        assert_eq!(indexes(&rec.entries), [1, 2, 3]);
    }
}

#[test]
fn a_crash_before_the_snapshot_rename_leaves_the_previous_snapshot_in_force() {
    let d = TempDir::new("snap-before-rename");
    let (mut w, _) = Wal::open(&d.0, opts()).unwrap();
    fill(&mut w, 1, 20);
    w.save_snapshot(&meta(5), b"five").unwrap();
    arm("snapshot:before-rename");
    assert!(w.save_snapshot(&meta(15), b"fifteen").is_err());
    drop(w);
    let (w, rec) = Wal::open(&d.0, opts()).unwrap();
    assert_eq!(rec.snapshot, Some(meta(5)));
    assert_eq!(indexes(&rec.entries), (6..=20).collect::<Vec<_>>());
    assert_eq!(
        names(&d.0.join("snap")),
        ["0000000000000005-0000000000000001.snap"]
    );
    assert_eq!(w.load_snapshot().unwrap().unwrap().1, b"five");
}

#[test]
fn a_crash_between_the_snapshot_rename_and_its_marker_sets_the_new_file_aside() {
    let d = TempDir::new("snap-after-rename");
    let (mut w, _) = Wal::open(&d.0, opts()).unwrap();
    fill(&mut w, 1, 20);
    w.save_snapshot(&meta(5), b"five").unwrap();
    arm("snapshot:after-rename");
    assert!(w.save_snapshot(&meta(15), b"fifteen").is_err());
    drop(w);
    let (mut w, rec) = Wal::open(&d.0, opts()).unwrap();
    assert_eq!(rec.snapshot, Some(meta(5)));
    assert_eq!(indexes(&rec.entries), (6..=20).collect::<Vec<_>>());
    let orphan =
        d.0.join("snap/000000000000000f-0000000000000001.snap.orphan");
    assert_eq!(rec.set_aside, vec![orphan.clone()]);
    assert!(orphan.exists());
    // Taking the snapshot again works.
    w.save_snapshot(&meta(15), b"fifteen").unwrap();
    drop(w);
    assert_eq!(Wal::open(&d.0, opts()).unwrap().1.snapshot, Some(meta(15)));
}

#[test]
fn a_crash_between_the_snapshot_marker_and_retention_keeps_one_file_too_many() {
    let d = TempDir::new("snap-before-retain");
    let (mut w, _) = Wal::open(&d.0, opts()).unwrap();
    fill(&mut w, 1, 20);
    w.save_snapshot(&meta(5), b"5").unwrap();
    w.save_snapshot(&meta(10), b"10").unwrap();
    arm("snapshot:before-retain");
    assert!(w.save_snapshot(&meta(15), b"15").is_err());
    drop(w);
    assert_eq!(names(&d.0.join("snap")).len(), 3);
    let (mut w, rec) = Wal::open(&d.0, opts()).unwrap();
    assert_eq!(rec.snapshot, Some(meta(15)));
    assert_eq!(indexes(&rec.entries), (16..=20).collect::<Vec<_>>());
    w.save_snapshot(&meta(18), b"18").unwrap();
    assert_eq!(names(&d.0.join("snap")).len(), 2);
}

#[test]
fn a_crash_after_the_snapshot_but_before_release_recovers_and_release_still_works() {
    let d = TempDir::new("snap-no-release");
    let (mut w, _) = Wal::open(&d.0, opts()).unwrap();
    fill(&mut w, 1, 40);
    w.save_snapshot(&meta(30), b"30").unwrap();
    let segs = w.segment_paths().len();
    drop(w);
    let (mut w, rec) = Wal::open(&d.0, opts()).unwrap();
    assert_eq!(indexes(&rec.entries), (31..=40).collect::<Vec<_>>());
    assert_eq!(w.segment_paths().len(), segs);
    w.release_to(30).unwrap();
    assert!(w.segment_paths().len() < segs);
    drop(w);
    let (_, rec) = Wal::open(&d.0, opts()).unwrap();
    assert_eq!(indexes(&rec.entries), (31..=40).collect::<Vec<_>>());
}

#[test]
fn a_crash_in_the_middle_of_a_release_leaves_an_unbroken_run_of_segments() {
    let run = |name: &str, crash: bool| {
        let d = TempDir::new(name);
        let (mut w, _) = Wal::open(&d.0, opts()).unwrap();
        fill(&mut w, 1, 60);
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 60,
        };
        w.save(Some(&hs), &[], false).unwrap();
        fill(&mut w, 61, 70);
        w.save_snapshot(&meta(65), b"65").unwrap();
        let before = w.segment_paths().len();
        if crash {
            arm("release:after-delete");
            assert!(w.release_to(65).is_err());
            drop(w);
            let (w2, rec) = Wal::open(&d.0, opts()).unwrap();
            assert_eq!(w2.segment_paths().len(), before - 1);
            assert_eq!(rec.snapshot, Some(meta(65)));
            assert_eq!(rec.hard_state, hs);
            assert_eq!(indexes(&rec.entries), (66..=70).collect::<Vec<_>>());
            w = w2;
        }
        w.release_to(65).unwrap();
        let after = w.segment_paths().len();
        assert!(after < before - 1);
        drop(w);
        let (_, rec) = Wal::open(&d.0, opts()).unwrap();
        assert_eq!(rec.hard_state, hs);
        assert_eq!(indexes(&rec.entries), (66..=70).collect::<Vec<_>>());
        after
    };
    // Finishing the release after the crash ends where an uninterrupted one does.
    assert_eq!(run("release-crash", true), run("release-control", false));
}
