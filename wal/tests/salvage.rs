//! Salvage (`OnDamage::Salvage`): a damaged log opens with its good prefix,
//! reports the damage exactly, takes new writes, and keeps reporting the
//! damage (`pending`) until `clear_damage`. With `OnDamage::Refuse` the same
//! directories fail to open and nothing in the log is touched.
//!
//! One log serves every case: entries 1..=100 over several 4 KiB segments,
//! each saved with a hard state (term `1 + i / 30`), snapshots at 30 and 60.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{frames, opts, segments, Frame, Record, Rng, TempDir};
use wal::{Damage, DamageReason, Entry, Error, HardState, OnDamage, Options, SnapshotMeta, Wal};

const SEG: u64 = 4096;
const LAST: u64 = 100;

fn term_of(i: u64) -> u64 {
    1 + i / 30
}

fn hs_of(i: u64) -> HardState {
    HardState {
        term: term_of(i),
        vote: 1 + term_of(i) % 3,
        commit: i - 1,
    }
}

fn entry(i: u64) -> Entry {
    let mut rng = Rng::new(i);
    common::entry(&mut rng, i, term_of(i), 200)
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: term_of(index),
        voters: vec![1, 2, 3],
        learners: vec![],
    }
}

fn salvage() -> Options {
    Options {
        on_damage: OnDamage::Salvage,
        preallocate_in_background: false,
        ..opts(SEG)
    }
}

fn refuse() -> Options {
    Options {
        preallocate_in_background: false,
        ..opts(SEG)
    }
}

fn snap_path(dir: &Path, index: u64) -> PathBuf {
    dir.join("snap")
        .join(format!("{index:016x}-{:016x}.snap", term_of(index)))
}

/// Writes the log; `release` is passed to `release_to` at the end (0: none).
fn build(dir: &Path, release: u64) {
    let (mut w, _) = Wal::open(dir, opts(SEG)).unwrap();
    for i in 1..=LAST {
        w.save(Some(&hs_of(i)), &[entry(i)], true).unwrap();
        if i == 40 {
            w.save_snapshot(&meta(30), b"state at 30").unwrap();
        }
        if i == 70 {
            w.save_snapshot(&meta(60), b"state at 60").unwrap();
        }
    }
    if release > 0 {
        w.release_to(release).unwrap();
    }
    assert!(w.segment_paths().len() >= 4);
}

/// The segment and frame holding entry `i`.
fn record_of(dir: &Path, i: u64) -> (PathBuf, Frame) {
    for p in segments(dir) {
        for f in frames(&fs::read(&p).unwrap()) {
            let holds = f
                .records
                .iter()
                .any(|r| matches!(r, Record::Entries(es) if es.iter().any(|e| e.index == i)));
            if holds {
                return (p, f);
            }
        }
    }
    panic!("no record holds entry {i}");
}

fn flip(path: &Path, at: usize) {
    let mut b = fs::read(path).unwrap();
    b[at] ^= 0x20;
    fs::write(path, b).unwrap();
}

/// Names and bytes of the files directly in `dir` (but the lock file, which
/// the first open creates).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with("LOCK"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// What a salvage must give back.
struct Expect {
    file: PathBuf,
    offset: u64,
    reason: DamageReason,
    snapshot: Option<u64>,
    /// Entries kept: `(snapshot, kept_last]`.
    kept_last: u64,
    hard_state: HardState,
    intact: bool,
    max_term: u64,
    snapshot_lost: bool,
}

/// Checks one damaged directory: refused untouched, salvaged as expected,
/// writable, reported until cleared.
fn check(dir: &Path, want: Expect) {
    // Refuse: fails, and no log file changed.
    let before = files(dir);
    match Wal::open(dir, refuse()) {
        Err(Error::Corrupt { .. }) => {}
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("Refuse opened a damaged log"),
    }
    assert!(files(dir) == before, "Refuse changed the log");

    // Salvage.
    let (mut w, rec) = Wal::open(dir, salvage()).unwrap();
    let d: Damage = rec.damage.clone().expect("damage reported");
    assert_eq!(d.file, want.file);
    assert_eq!(d.offset, want.offset);
    assert_eq!(d.reason, want.reason);
    assert_eq!(d.kept_last_index, want.kept_last);
    assert_eq!(d.hard_state_intact, want.intact);
    assert_eq!(d.max_term_seen, want.max_term);
    assert_eq!(d.snapshot_lost, want.snapshot_lost);
    assert!(!d.pending);
    for p in &d.set_aside {
        assert!(p.exists(), "{p:?}");
        assert!(p.to_string_lossy().contains(".corrupt"), "{p:?}");
    }
    assert!(dir.join("DAMAGE").exists());
    assert_eq!(rec.snapshot.as_ref().map(|m| m.index), want.snapshot);
    let first = want.snapshot.unwrap_or(0) + 1;
    let expected: Vec<Entry> = (first..=want.kept_last).map(entry).collect();
    assert_eq!(rec.entries, expected);
    assert_eq!(rec.hard_state, want.hard_state);
    assert_eq!(w.last_index(), want.kept_last);
    if let Some(s) = want.snapshot {
        let data = w.load_snapshot().unwrap().unwrap().1;
        assert_eq!(data, format!("state at {s}").into_bytes());
    }

    // It takes new writes.
    let next = Entry {
        index: want.kept_last + 1,
        term: want.hard_state.term.max(1),
        kind: 0,
        data: b"after the salvage".to_vec(),
    };
    w.save(None, std::slice::from_ref(&next), true).unwrap();
    drop(w);

    // Reopened (in either mode): the same state, the damage still pending,
    // and nothing more set aside: the log itself is clean now.
    let mut kept = expected.clone();
    kept.push(next.clone());
    let aside = common::leftovers(dir);
    for o in [salvage(), refuse()] {
        let (_, again) = Wal::open(dir, o).unwrap();
        assert_eq!(common::leftovers(dir), aside);
        let d2 = again.damage.expect("still reported");
        assert!(d2.pending);
        assert_eq!(
            (d2.file, d2.offset, d2.reason),
            (d.file.clone(), d.offset, d.reason)
        );
        assert_eq!(d2.hard_state_intact, want.intact);
        assert_eq!(d2.max_term_seen, want.max_term);
        assert_eq!(d2.kept_last_index, next.index);
        assert_eq!(again.entries, kept);
        assert_eq!(again.hard_state, want.hard_state);
        assert_eq!(again.snapshot.map(|m| m.index), want.snapshot);
        assert_eq!(again.torn_tail, None);
    }

    // Cleared: clean from then on.
    let (mut w, _) = Wal::open(dir, salvage()).unwrap();
    w.clear_damage().unwrap();
    drop(w);
    let (_, clean) = Wal::open(dir, refuse()).unwrap();
    assert_eq!(clean.damage, None);
    assert_eq!(clean.entries, kept);
    assert_eq!(clean.hard_state, want.hard_state);
    assert!(!dir.join("DAMAGE").exists());
}

#[test]
fn a_flip_in_an_old_segment_after_the_newest_marker_keeps_the_entries_before_it() {
    let d = TempDir::new("old-segment");
    build(d.path(), 0);
    let (seg, f) = record_of(d.path(), 80);
    assert_ne!(seg, *segments(d.path()).last().unwrap());
    flip(&seg, f.offset + 40);
    check(
        d.path(),
        Expect {
            file: seg,
            offset: f.offset as u64,
            reason: DamageReason::ChecksumMismatch,
            snapshot: Some(60),
            kept_last: 79,
            // Term and vote from the last record (after the damage); commit
            // from the prefix.
            hard_state: HardState {
                commit: 78,
                ..hs_of(LAST)
            },
            intact: true,
            max_term: term_of(LAST),
            snapshot_lost: false,
        },
    );
}

#[test]
fn a_flip_before_the_newest_snapshot_keeps_that_snapshot_from_its_marker_after_the_damage() {
    // Entry 50 is damaged: the prefix holds entries 1..49 and the marker of
    // snapshot 30; the marker of snapshot 60 lies after the damage, but its
    // CRC proves it, and its file is intact: the state is snapshot 60, and no
    // entry (those after 60 were written after the damage).
    let d = TempDir::new("before-snapshot");
    build(d.path(), 0);
    let (seg, f) = record_of(d.path(), 50);
    flip(&seg, f.offset + 100);
    check(
        d.path(),
        Expect {
            file: seg,
            offset: f.offset as u64,
            reason: DamageReason::ChecksumMismatch,
            snapshot: Some(60),
            kept_last: 60,
            hard_state: HardState {
                commit: 60,
                ..hs_of(LAST)
            },
            intact: true,
            max_term: term_of(LAST),
            snapshot_lost: false,
        },
    );
}

#[test]
fn a_flip_in_the_last_record_keeps_everything_before_it_but_may_have_lost_the_vote() {
    let d = TempDir::new("last-record");
    build(d.path(), 0);
    let (seg, f) = record_of(d.path(), LAST);
    flip(&seg, f.offset + f.len - 30);
    check(
        d.path(),
        Expect {
            file: seg,
            offset: f.offset as u64,
            reason: DamageReason::ChecksumMismatch,
            snapshot: Some(60),
            kept_last: LAST - 1,
            hard_state: hs_of(LAST - 1),
            intact: false,
            max_term: term_of(LAST - 1),
            snapshot_lost: false,
        },
    );
}

#[test]
fn a_flip_in_a_segment_header_sets_that_segment_and_the_later_ones_aside() {
    let d = TempDir::new("header");
    build(d.path(), 0);
    let segs = segments(d.path());
    let k = segs.len() - 2;
    flip(&segs[k], 20);
    let originals: Vec<Vec<u8>> = segs[k..].iter().map(|s| fs::read(s).unwrap()).collect();
    // The kept log ends with the segment before it.
    let kept_last = frames(&fs::read(&segs[k - 1]).unwrap())
        .iter()
        .flat_map(|f| f.records.clone())
        .filter_map(|r| match r {
            Record::Entries(es) => es.last().map(|e| e.index),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(kept_last > 60);
    check(
        d.path(),
        Expect {
            file: segs[k].clone(),
            offset: 0,
            reason: DamageReason::BadSegmentHeader,
            snapshot: Some(60),
            kept_last,
            hard_state: HardState {
                commit: kept_last - 1,
                ..hs_of(LAST)
            },
            intact: true,
            max_term: term_of(LAST),
            snapshot_lost: false,
        },
    );
    // Set aside byte for byte, and never overwritten: appending after the
    // salvage rolls into a new segment `k` with the same name as the old one.
    for (s, bytes) in segs[k..].iter().zip(&originals) {
        let aside = PathBuf::from(format!("{}.corrupt", s.display()));
        assert_eq!(&fs::read(aside).unwrap(), bytes);
    }
}

#[test]
fn a_deleted_middle_segment_keeps_the_segments_before_the_hole() {
    let d = TempDir::new("missing");
    build(d.path(), 0);
    let segs = segments(d.path());
    let k = segs.len() - 2;
    let kept_last = frames(&fs::read(&segs[k - 1]).unwrap())
        .iter()
        .flat_map(|f| f.records.clone())
        .filter_map(|r| match r {
            Record::Entries(es) => es.last().map(|e| e.index),
            _ => None,
        })
        .max()
        .unwrap();
    fs::remove_file(&segs[k]).unwrap();
    check(
        d.path(),
        Expect {
            file: segs[k + 1].clone(),
            offset: 0,
            reason: DamageReason::MissingSegment { sequence: k as u64 },
            snapshot: Some(60),
            kept_last,
            hard_state: HardState {
                commit: kept_last - 1,
                ..hs_of(LAST)
            },
            intact: true,
            max_term: term_of(LAST),
            snapshot_lost: false,
        },
    );
}

#[test]
fn a_last_segment_cut_inside_a_record_header_is_damage() {
    let d = TempDir::new("truncated");
    build(d.path(), 0);
    let (seg, f) = record_of(d.path(), LAST);
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..f.offset + 10]).unwrap();
    check(
        d.path(),
        Expect {
            file: seg,
            offset: f.offset as u64,
            reason: DamageReason::RecordPastEnd,
            snapshot: Some(60),
            kept_last: LAST - 1,
            hard_state: hs_of(LAST - 1),
            intact: false,
            max_term: term_of(LAST - 1),
            snapshot_lost: false,
        },
    );
}

fn damage_snapshot(dir: &Path, index: u64) {
    let p = snap_path(dir, index);
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n - 20] ^= 1;
    fs::write(&p, b).unwrap();
}

#[test]
fn a_damaged_newest_snapshot_with_a_covering_older_one_is_no_damage() {
    // Today's fallback: the log still holds every entry after snapshot 30.
    let d = TempDir::new("snap-fallback");
    build(d.path(), 30);
    damage_snapshot(d.path(), 60);
    let (_, rec) = Wal::open(d.path(), salvage()).unwrap();
    assert_eq!(rec.damage, None);
    assert_eq!(rec.snapshot.map(|m| m.index), Some(30));
    assert_eq!(rec.entries, (31..=LAST).map(entry).collect::<Vec<_>>());
    assert_eq!(rec.set_aside.len(), 1);
}

#[test]
fn a_damaged_newest_snapshot_whose_log_is_released_falls_back_to_the_older_snapshot_alone() {
    // Released up to 60: the log starts after entry 60, so snapshot 30
    // cannot be followed by it. Keep snapshot 30 and nothing after it.
    let d = TempDir::new("snap-older");
    build(d.path(), 60);
    damage_snapshot(d.path(), 60);
    check(
        d.path(),
        Expect {
            file: snap_path(d.path(), 60),
            offset: 0,
            reason: DamageReason::SnapshotUnusable { index: 60 },
            snapshot: Some(30),
            kept_last: 30,
            hard_state: HardState {
                commit: 30,
                ..hs_of(LAST)
            },
            intact: true,
            max_term: term_of(LAST),
            snapshot_lost: false,
        },
    );
}

#[test]
fn a_damaged_newest_snapshot_without_a_usable_older_one_loses_the_state_but_not_the_vote() {
    let d = TempDir::new("snap-lost");
    build(d.path(), 30);
    damage_snapshot(d.path(), 60);
    damage_snapshot(d.path(), 30);
    check(
        d.path(),
        Expect {
            file: snap_path(d.path(), 60),
            offset: 0,
            reason: DamageReason::SnapshotUnusable { index: 60 },
            snapshot: None,
            kept_last: 0,
            hard_state: HardState {
                commit: 0,
                ..hs_of(LAST)
            },
            intact: true,
            max_term: term_of(LAST),
            snapshot_lost: true,
        },
    );
}

#[test]
fn a_flip_in_every_segment_salvages_to_the_first_one() {
    // Damage in several places: the first one in file order decides.
    let d = TempDir::new("many");
    build(d.path(), 0);
    let (seg20, f20) = record_of(d.path(), 20);
    let (seg90, f90) = record_of(d.path(), 90);
    flip(&seg20, f20.offset + 50);
    flip(&seg90, f90.offset + 50);
    let (_, rec) = Wal::open(d.path(), salvage()).unwrap();
    let dmg = rec.damage.unwrap();
    assert_eq!((dmg.file, dmg.offset as usize), (seg20, f20.offset));
    // Snapshot 60's marker (after the damage) is readable: the state is it.
    assert_eq!(rec.snapshot.map(|m| m.index), Some(60));
    assert!(rec.entries.is_empty());
    assert!(dmg.hard_state_intact);
    assert_eq!(rec.hard_state.term, term_of(LAST));
}

#[test]
fn mark_damaged_is_reported_until_cleared_and_merges_with_later_damage() {
    let d = TempDir::new("mark");
    build(d.path(), 0);
    let (mut w, _) = Wal::open(d.path(), refuse()).unwrap();
    w.mark_damaged(false, 9).unwrap();
    drop(w);
    let (mut w, rec) = Wal::open(d.path(), refuse()).unwrap();
    let dmg = rec.damage.unwrap();
    assert!(dmg.pending);
    assert_eq!(dmg.reason, DamageReason::ReportedByCaller);
    assert_eq!(dmg.file, d.path());
    assert!(!dmg.hard_state_intact);
    assert_eq!(dmg.max_term_seen, 9);
    assert_eq!(rec.entries.len(), (LAST - 60) as usize);
    // Later damage whose hard state is intact: still not intact (anded), and
    // the highest term seen stays the highest.
    w.mark_damaged(true, 2).unwrap();
    drop(w);
    let (_, seg_f) = (0, record_of(d.path(), 90));
    flip(&seg_f.0, seg_f.1.offset + 60);
    let (mut w, rec) = Wal::open(d.path(), salvage()).unwrap();
    let dmg = rec.damage.unwrap();
    assert!(dmg.pending);
    assert_eq!(dmg.reason, DamageReason::ChecksumMismatch);
    assert!(!dmg.hard_state_intact);
    assert_eq!(dmg.max_term_seen, 9);
    w.clear_damage().unwrap();
    w.clear_damage().unwrap(); // idempotent
    drop(w);
    assert_eq!(Wal::open(d.path(), refuse()).unwrap().1.damage, None);
}

#[test]
fn a_wiped_log_marked_damaged_reports_it_on_every_open() {
    let d = TempDir::new("wiped");
    let (mut w, rec) = Wal::open(d.path(), refuse()).unwrap();
    assert_eq!(rec.damage, None);
    w.mark_damaged(false, 0).unwrap();
    drop(w);
    let (_, rec) = Wal::open(d.path(), refuse()).unwrap();
    let dmg = rec.damage.unwrap();
    assert!(dmg.pending && !dmg.hard_state_intact);
    assert_eq!(dmg.kept_last_index, 0);
}

#[test]
fn a_damaged_damage_marker_is_reported_as_the_worst_damage() {
    let d = TempDir::new("bad-marker");
    let (mut w, _) = Wal::open(d.path(), refuse()).unwrap();
    w.mark_damaged(true, 4).unwrap();
    drop(w);
    flip(&d.path().join("DAMAGE"), 20);
    let (_, rec) = Wal::open(d.path(), refuse()).unwrap();
    let dmg = rec.damage.unwrap();
    assert_eq!(dmg.reason, DamageReason::DamageMarkerUnreadable);
    assert!(!dmg.hard_state_intact);
}

#[test]
fn a_salvaged_log_that_is_damaged_again_salvages_again() {
    let d = TempDir::new("twice");
    build(d.path(), 0);
    let (seg, f) = record_of(d.path(), 80);
    flip(&seg, f.offset + 40);
    let (mut w, _) = Wal::open(d.path(), salvage()).unwrap();
    // Fill past a few segments, then damage one of the new records.
    for i in 80..=140 {
        w.save(Some(&hs_of(i)), &[entry(i)], true).unwrap();
    }
    drop(w);
    let (seg, f) = record_of(d.path(), 120);
    flip(&seg, f.offset + 40);
    let (_, rec) = Wal::open(d.path(), salvage()).unwrap();
    let dmg = rec.damage.unwrap();
    assert!(dmg.pending);
    assert_eq!((dmg.file, dmg.offset as usize), (seg, f.offset));
    assert_eq!(rec.entries.last().map(|e| e.index), Some(119));
    assert!(dmg.hard_state_intact);
    assert_eq!(rec.hard_state.term, term_of(140));
    // Nothing set aside was overwritten: every .corrupt file is distinct.
    let corrupt = common::files_matching(d.path(), ".corrupt");
    assert!(corrupt.len() >= 3, "{corrupt:?}");
}

/// A version-1 directory (laid out from `FORMAT.md`) holding `records`
/// after a head, in one segment. Returns the segment and the offset of each
/// record (the head's first).
fn crafted(dir: &Path, records: Vec<Vec<u8>>) -> (PathBuf, Vec<u64>) {
    fs::create_dir_all(dir.join("snap")).unwrap();
    let mut all = vec![common::save_record_v1(Some(&hs_of(1)), &[])];
    all.extend(records);
    let offsets = all
        .iter()
        .scan(40u64, |at, r| {
            let this = *at;
            *at += r.len() as u64;
            Some(this)
        })
        .collect();
    let path = dir.join("0000000000000000-0000000000000001.wal");
    fs::write(&path, common::segment_v1(0, 1, SEG as usize, &all)).unwrap();
    (path, offsets)
}

#[test]
fn a_hole_in_the_entries_keeps_the_entries_before_it() {
    let d = TempDir::new("hole");
    let (path, offsets) = crafted(
        d.path(),
        vec![
            common::save_record_v1(Some(&hs_of(4)), &[entry(1), entry(2), entry(3)]),
            common::save_record_v1(Some(&hs_of(7)), &[entry(6), entry(7)]),
            common::save_record_v1(Some(&hs_of(8)), &[entry(8)]),
        ],
    );
    check(
        d.path(),
        Expect {
            file: path.clone(),
            offset: offsets[2],
            reason: DamageReason::EntryGap {
                expected: 4,
                found: 6,
            },
            snapshot: None,
            kept_last: 3,
            // The damaged record (valid, but after the hole) and the one
            // after it are readable: the hard state is intact.
            hard_state: HardState {
                commit: 3,
                ..hs_of(8)
            },
            intact: true,
            max_term: 1,
            snapshot_lost: false,
        },
    );
}

#[test]
fn a_record_with_a_valid_crc_and_an_unknown_type_is_damage() {
    let d = TempDir::new("bad-type");
    let (path, offsets) = crafted(
        d.path(),
        vec![
            common::save_record_v1(Some(&hs_of(2)), &[entry(1), entry(2)]),
            common::frame_v1(9, b"from the future"),
            common::save_record_v1(Some(&hs_of(3)), &[entry(3)]),
        ],
    );
    check(
        d.path(),
        Expect {
            file: path.clone(),
            offset: offsets[2],
            reason: DamageReason::BadPayload,
            snapshot: None,
            kept_last: 2,
            hard_state: HardState {
                commit: 1,
                ..hs_of(3)
            },
            intact: true,
            max_term: 1,
            snapshot_lost: false,
        },
    );
}
