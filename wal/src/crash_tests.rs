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

/// Copies the files of `from` (and of its `snap/`) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to.join("snap")).unwrap();
    for sub in ["", "snap"] {
        for e in fs::read_dir(from.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                fs::copy(&p, to.join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
}

/// A log of entries 1..=100 over 4 KiB segments, each save with a hard state
/// whose term rises every 30 entries; snapshots at 30 and 60.
fn damaged_log(dir: &Path, damage: impl FnOnce(&Path)) {
    let (mut w, _) = Wal::open(dir, opts()).unwrap();
    for i in 1..=100u64 {
        let hs = HardState {
            term: 1 + i / 30,
            vote: 2,
            commit: i - 1,
        };
        let e = Entry {
            term: 1 + i / 30,
            ..e(i)
        };
        w.save(Some(&hs), &[e], true).unwrap();
        if i == 40 || i == 70 {
            let index = i - 10;
            let m = SnapshotMeta {
                term: 1 + index / 30,
                ..meta(index)
            };
            w.save_snapshot(&m, format!("state at {index}").as_bytes())
                .unwrap();
        }
    }
    drop(w);
    damage(dir);
}

/// Flips a byte of the record holding entry `index` (found by its data,
/// which is 300 bytes of `index | 1`).
fn flip_entry(dir: &Path, index: u64) {
    let pattern = vec![index as u8 | 1; 300];
    for name in names(dir).iter().filter(|n| n.ends_with(".wal")) {
        let p = dir.join(name);
        let mut b = fs::read(&p).unwrap();
        // The segment holding the entry's data right after its entry header.
        let hit = b
            .windows(300)
            .position(|w| w == &pattern[..])
            .filter(|&at| at >= 13 && b[at - 13..at - 5] == (1 + index / 30).to_le_bytes());
        if let Some(at) = hit {
            b[at + 100] ^= 0x40;
            fs::write(&p, b).unwrap();
            return;
        }
    }
    panic!("entry {index} not found");
}

fn salvage_opts() -> Options {
    Options {
        on_damage: crate::OnDamage::Salvage,
        preallocate_in_background: false,
        ..opts()
    }
}

/// What must not depend on whether the salvage was interrupted.
fn outcome(rec: &crate::Recovered) -> impl PartialEq + std::fmt::Debug {
    let d = rec.damage.clone().expect("damage reported");
    (
        rec.hard_state,
        rec.snapshot.clone(),
        rec.entries.clone(),
        (
            d.file.file_name().map(|n| n.to_owned()),
            d.offset,
            d.reason,
            d.kept_last_index,
        ),
        (d.hard_state_intact, d.max_term_seen, d.snapshot_lost),
    )
}

/// For each crash point, a salvage interrupted there leaves the `DAMAGE`
/// marker, and the next open (in either mode) finishes it with exactly the
/// result of an uninterrupted salvage, and reports it as pending.
fn crash_during_salvage(name: &str, points: &[&'static str], damage: impl Fn(&Path)) {
    let pristine = TempDir::new(&format!("salvage-{name}-pristine"));
    damaged_log(&pristine.0, damage);
    let control = TempDir::new(&format!("salvage-{name}-control"));
    copy_dir(&pristine.0, &control.0);
    let (_, want) = Wal::open(&control.0, salvage_opts()).unwrap();
    for (k, &point) in points.iter().enumerate() {
        let d = TempDir::new(&format!("salvage-{name}-{k}"));
        copy_dir(&pristine.0, &d.0);
        arm(point);
        let err = Wal::open(&d.0, salvage_opts()).unwrap_err();
        assert!(err.to_string().contains(point), "{point}: {err}");
        assert!(d.0.join("DAMAGE").exists(), "{point}: the marker was lost");
        // Odd points reopen with Refuse: an interrupted salvage is finished
        // whatever the options say.
        let o = if k % 2 == 1 { opts() } else { salvage_opts() };
        let (mut w, rec) = Wal::open(&d.0, o).unwrap_or_else(|e| panic!("{point}: {e}"));
        assert_eq!(outcome(&rec), outcome(&want), "{point}");
        assert!(rec.damage.as_ref().unwrap().pending, "{point}");
        let next = w.last_index() + 1;
        w.save(None, &[e(next)], true).unwrap();
        drop(w);
        let (mut w, again) = Wal::open(&d.0, opts()).unwrap();
        assert_eq!(again.entries.last().map(|e| e.index), Some(next), "{point}");
        assert!(again.damage.unwrap().pending, "{point}");
        w.clear_damage().unwrap();
        drop(w);
        assert_eq!(Wal::open(&d.0, opts()).unwrap().1.damage, None, "{point}");
    }
}

#[test]
fn a_crash_at_any_step_of_a_salvage_keeps_the_marker_and_its_decisions() {
    // Entry 50 damaged: the snapshot kept (60) is named only by a marker
    // after the damage, and the newest term and vote only by records after
    // it; both sit in the segments the salvage sets aside.
    crash_during_salvage(
        "mid",
        &[
            "salvage:after-marker",
            "salvage:after-rename",
            "salvage:after-side-file",
            "salvage:after-zero",
            "salvage:after-snapshot-marker",
            "salvage:after-hard-state",
        ],
        |dir| flip_entry(dir, 50),
    );
}

#[test]
fn a_crash_while_salvaging_into_a_fresh_segment_keeps_the_marker_and_its_decisions() {
    // The first segment's header is damaged: a fresh segment takes over.
    crash_during_salvage(
        "fresh",
        &[
            "salvage:after-marker",
            "salvage:after-fresh",
            "salvage:after-rename",
        ],
        |dir| {
            let first = dir.join(&names(dir)[0]);
            let mut b = fs::read(&first).unwrap();
            b[3] ^= 1;
            fs::write(&first, b).unwrap();
        },
    );
}
