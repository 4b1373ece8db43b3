//! Every flipped bit is noticed and called damage (after etcd's
//! `repair_test.go`, but for every bit), including a flip in the last record
//! of the last segment: a record that was written whole is never mistaken
//! for the torn tail of a crash (the length word's check and the
//! `TEAR_AMBIGUOUS` flag of `FORMAT.md`). With `OnDamage::Refuse`, `open`
//! fails with `Error::Corrupt` naming the file and the record's offset, and
//! leaves every file untouched. Only a sector that never reached the disk
//! makes a torn tail.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{apply, entry, frames, opts, segments, Frame, Record, Rng, TempDir};
use wal::{DamageReason, Entry, Error, HardState, OnDamage, Options, Wal};

const SEG: u64 = 4096;

fn reopen_opts() -> Options {
    Options {
        preallocate_in_background: false,
        ..opts(SEG)
    }
}

/// A log of three segments, every save synced. Returns paths and bytes.
fn build(dir: &Path) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    let mut rng = Rng::new(21);
    let (mut w, _) = Wal::open(dir, opts(SEG)).unwrap();
    let mut i = 1;
    while segments(dir).len() < 3 || rng.chance(30) {
        let es = [entry(&mut rng, i, 1, 40)];
        let hs = HardState {
            term: 1,
            vote: 2,
            commit: i,
        };
        w.save(rng.chance(50).then_some(&hs), &es, true).unwrap();
        i += 1;
    }
    drop(w);
    let paths = segments(dir);
    let bytes = paths.iter().map(|p| fs::read(p).unwrap()).collect();
    (paths, bytes)
}

fn restore(dir: &Path, paths: &[PathBuf], pristine: &[Vec<u8>]) {
    for p in segments(dir).iter().chain(&common::leftovers(dir)) {
        fs::remove_file(p).unwrap();
    }
    for (p, b) in paths.iter().zip(pristine) {
        fs::write(p, b).unwrap();
    }
}

/// Flips every bit of `bytes[from..to]` of segment `seg` in turn and hands
/// the outcome of reopening to `check`, with the segment paths.
fn flip_each_bit(
    seg: usize,
    from: usize,
    to: usize,
    check: impl Fn(usize, Result<wal::Recovered, Error>, &[PathBuf]),
) {
    let d = TempDir::new("flips");
    let (paths, pristine) = build(d.path());
    for byte in from..to {
        for bit in 0..8 {
            restore(d.path(), &paths, &pristine);
            let mut damaged = pristine.clone();
            damaged[seg][byte] ^= 1 << bit;
            fs::write(&paths[seg], &damaged[seg]).unwrap();
            let outcome = Wal::open(d.path(), reopen_opts()).map(|(_, r)| r);
            if outcome.is_err() {
                // Refusing to open must not have touched anything.
                let after: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
                assert!(after == damaged, "bit {}: files changed", byte * 8 + bit);
                assert!(common::files_matching(d.path(), ".torn-").is_empty());
                assert_eq!(segments(d.path()), paths);
            }
            check(byte * 8 + bit, outcome, &paths);
        }
    }
}

fn records_of(segs: &[Vec<u8>]) -> Vec<Vec<Frame>> {
    segs.iter().map(|s| frames(s)).collect()
}

fn assert_corrupt_at(
    outcome: Result<wal::Recovered, Error>,
    path: &Path,
    offset: usize,
    bit: usize,
) {
    match outcome {
        Err(Error::Corrupt {
            path: p,
            offset: o,
            ref reason,
        }) => {
            assert_eq!(p, path, "bit {bit}: {reason}");
            assert_eq!(o as usize, offset, "bit {bit}: {reason}");
        }
        Err(e) => panic!("bit {bit}: expected Corrupt, got {e}"),
        Ok(r) => panic!(
            "bit {bit}: expected Corrupt, opened with torn tail {:?}",
            r.torn_tail
        ),
    }
}

/// Records of the log `build` makes (it is deterministic), per segment.
fn layout() -> Vec<Vec<Frame>> {
    let d = TempDir::new("layout");
    records_of(&build(d.path()).1)
}

#[test]
fn a_flip_in_the_last_record_of_the_last_segment_is_corruption_not_a_torn_tail() {
    // The case: the last record was fsynced (and often holds the
    // newest vote); cutting it as a tear would forget it.
    let layout = layout();
    let last = layout.last().unwrap().last().unwrap().clone();
    let seg = layout.len() - 1;
    flip_each_bit(
        seg,
        last.offset,
        last.offset + last.len,
        |bit, outcome, paths| {
            assert_corrupt_at(outcome, &paths[seg], last.offset, bit);
        },
    );
}

/// A log whose last record is `last` (saved with a hard state), in a segment
/// large enough for it; returns the segment's path, bytes and that record.
fn log_ending_with(dir: &Path, last: Entry) -> (PathBuf, Vec<u8>, Frame) {
    let mut rng = Rng::new(22);
    let (mut w, _) = Wal::open(dir, opts(64 * 1024)).unwrap();
    for i in 1..last.index {
        w.save(None, &[entry(&mut rng, i, 1, 100)], true).unwrap();
    }
    let hs = HardState {
        term: 2,
        vote: 3,
        commit: last.index - 1,
    };
    w.save(Some(&hs), &[last], true).unwrap();
    drop(w);
    let seg = segments(dir).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    let frame = frames(&bytes).pop().unwrap();
    (seg, bytes, frame)
}

/// Flips every bit of `frame` in `seg` (restoring it after each) and checks
/// that each flip is refused as corruption at the frame.
fn every_flip_is_corruption(dir: &Path, seg: &Path, pristine: &[u8], frame: &Frame) {
    let o = Options {
        segment_size: 64 * 1024,
        ..reopen_opts()
    };
    for bit in 0..frame.len * 8 {
        let mut b = pristine.to_vec();
        b[frame.offset + bit / 8] ^= 1 << (bit % 8);
        fs::write(seg, &b).unwrap();
        assert_corrupt_at(
            Wal::open(dir, o.clone()).map(|r| r.1),
            seg,
            frame.offset,
            bit,
        );
    }
    fs::write(seg, pristine).unwrap();
}

#[test]
fn every_flip_of_a_last_record_of_a_few_hundred_bytes_is_corruption() {
    let d = TempDir::new("flips-300");
    let mut rng = Rng::new(23);
    let (seg, pristine, frame) = log_ending_with(d.path(), entry(&mut rng, 4, 2, 300));
    assert!(frame.len > 300);
    every_flip_is_corruption(d.path(), &seg, &pristine, &frame);
}

#[test]
fn a_record_that_naturally_holds_a_zero_sector_is_flagged_and_a_flip_in_it_is_corruption() {
    // A value of 1500 zero bytes: whatever its offset, a whole sector of the
    // record is zero, exactly what a torn write leaves. The writer flags it
    // TEAR_AMBIGUOUS, so a flip elsewhere in it is not taken for a tear.
    let d = TempDir::new("flips-zero-sector");
    let mut rng = Rng::new(24);
    let mut zeros = entry(&mut rng, 3, 2, 1500);
    zeros.data.iter_mut().skip(1).for_each(|b| *b = 0);
    let (seg, pristine, frame) = log_ending_with(d.path(), zeros.clone());
    let word = u64::from_le_bytes(pristine[frame.offset..frame.offset + 8].try_into().unwrap());
    let w = common::parse_word(word, 2).unwrap();
    assert!(w.ambiguous, "the record must carry TEAR_AMBIGUOUS");
    // Flips in the record's first 64 bytes (header, hard state, entry
    // header) and in its last 64: each is corruption.
    let o = Options {
        segment_size: 64 * 1024,
        ..reopen_opts()
    };
    for byte in (0..64).chain(frame.len - 64..frame.len) {
        for bit in 0..8 {
            let mut b = pristine.clone();
            b[frame.offset + byte] ^= 1 << bit;
            fs::write(&seg, &b).unwrap();
            let outcome = Wal::open(d.path(), o.clone()).map(|r| r.1);
            assert_corrupt_at(outcome, &seg, frame.offset, byte * 8 + bit);
        }
    }
    // Intact, it reads back.
    fs::write(&seg, &pristine).unwrap();
    let (_, rec) = Wal::open(d.path(), o).unwrap();
    assert_eq!(rec.entries.last(), Some(&zeros));
}

#[test]
fn a_torn_write_still_repairs_as_a_torn_tail() {
    // A record of several sectors: its last sector lost, or its first sector
    // lost while later ones were written. Both are cut, the bytes kept in a
    // `.torn-*` side file, and the log before them comes back.
    let d = TempDir::new("torn-shapes");
    let mut rng = Rng::new(25);
    let (seg, pristine, frame) = log_ending_with(d.path(), entry(&mut rng, 5, 2, 3000));
    let end = frame.offset + frame.len;
    let first_sector_end = (frame.offset / 512 + 1) * 512;
    for (name, from, to) in [
        ("last sector", (end - 1) / 512 * 512, end),
        ("first sector", frame.offset, first_sector_end),
    ] {
        for p in common::leftovers(d.path()) {
            fs::remove_file(p).unwrap();
        }
        let mut b = pristine.clone();
        b[from..to].fill(0);
        fs::write(&seg, &b).unwrap();
        let (_, rec) =
            Wal::open(d.path(), opts(64 * 1024)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let torn = rec.torn_tail.unwrap_or_else(|| panic!("{name}: not torn"));
        assert_eq!(torn.offset as usize, frame.offset, "{name}");
        assert!(
            torn.side_file.to_string_lossy().contains(".torn-"),
            "{name}"
        );
        assert_eq!(rec.entries.len(), 4, "{name}");
        assert_eq!(rec.damage, None, "{name}");
    }
}

#[test]
fn a_flip_in_an_earlier_record_of_the_last_segment_is_corruption() {
    let layout = layout();
    let seg = layout.len() - 1;
    let target = layout[seg][layout[seg].len() - 2].clone();
    flip_each_bit(
        seg,
        target.offset,
        target.offset + target.len,
        |bit, outcome, paths| {
            assert_corrupt_at(outcome, &paths[seg], target.offset, bit);
        },
    );
}

#[test]
fn a_flip_in_any_record_of_an_earlier_segment_is_corruption() {
    let layout = layout();
    // The first segment's records: a middle one, and its very last one (which
    // has nothing valid after it, but later segments prove it was complete).
    for target in [
        layout[0][layout[0].len() / 2].clone(),
        layout[0].last().unwrap().clone(),
    ] {
        flip_each_bit(
            0,
            target.offset,
            target.offset + target.len,
            |bit, outcome, paths| {
                assert_corrupt_at(outcome, &paths[0], target.offset, bit);
            },
        );
    }
}

#[test]
fn a_flip_in_a_segment_header_is_corruption() {
    let segs = layout().len();
    for seg in [0, segs - 1] {
        flip_each_bit(seg, 0, 40, |bit, outcome, paths| {
            assert_corrupt_at(outcome, &paths[seg], 0, bit);
        });
    }
}

#[test]
fn the_corruption_message_names_file_offset_and_remedy() {
    let d = TempDir::new("message");
    let (paths, mut bytes) = build(d.path());
    let target = frames(&bytes[0])[1].clone();
    bytes[0][target.offset + 20] ^= 0x10;
    fs::write(&paths[0], &bytes[0]).unwrap();
    let msg = Wal::open(d.path(), opts(SEG)).unwrap_err().to_string();
    assert!(msg.contains(&paths[0].display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("byte offset {}", target.offset)),
        "{msg}"
    );
    assert!(msg.contains("CRC mismatch"), "{msg}");
    assert!(msg.contains("rejoin"), "{msg}");
}

/// Salvage of the same flips: the log before the damaged record comes back,
/// the damage is reported at its offset, and the directory is usable.
#[test]
fn with_salvage_a_flip_in_an_earlier_segment_keeps_the_records_before_it() {
    let layout = layout();
    let target = layout[0][layout[0].len() / 2].clone();
    let before: Vec<Record> = layout[0]
        .iter()
        .take_while(|f| f.offset < target.offset)
        .flat_map(|f| f.records.clone())
        .collect();
    let (want_hs, want_entries) = apply(&before);
    let d = TempDir::new("flips-salvage");
    let (paths, pristine) = build(d.path());
    let o = Options {
        on_damage: OnDamage::Salvage,
        ..reopen_opts()
    };
    for bit in (0..target.len * 8).step_by(7) {
        restore(d.path(), &paths, &pristine);
        let mut b = pristine[0].clone();
        b[target.offset + bit / 8] ^= 1 << (bit % 8);
        fs::write(&paths[0], &b).unwrap();
        let (mut w, rec) =
            Wal::open(d.path(), o.clone()).unwrap_or_else(|e| panic!("bit {bit}: {e}"));
        let dmg = rec.damage.expect("damage");
        assert_eq!(
            (dmg.file.as_path(), dmg.offset as usize),
            (paths[0].as_path(), target.offset)
        );
        assert!(
            matches!(
                dmg.reason,
                DamageReason::ChecksumMismatch
                    | DamageReason::BadLengthWord
                    | DamageReason::NonZeroPadding
            ),
            "bit {bit}: {:?}",
            dmg.reason
        );
        // Later segments restate the hard state: it is intact.
        assert!(dmg.hard_state_intact, "bit {bit}");
        assert_eq!(rec.entries, want_entries, "bit {bit}");
        let kept = want_entries.last().map_or(0, |e| e.index);
        assert_eq!(dmg.kept_last_index, kept, "bit {bit}");
        assert_eq!(dmg.max_term_seen, 1, "bit {bit}");
        assert!(!dmg.pending, "bit {bit}");
        assert_eq!(
            rec.hard_state,
            HardState {
                term: 1,
                vote: 2,
                commit: want_hs.commit.min(kept)
            },
            "bit {bit}"
        );
        let next = w.last_index() + 1;
        let e = entry(&mut Rng::new(bit as u64), next, 1, 10);
        w.save(None, std::slice::from_ref(&e), true).unwrap();
        drop(w);
        let (_, again) = Wal::open(d.path(), o.clone()).unwrap();
        assert_eq!(again.entries.last(), Some(&e), "bit {bit}");
        assert!(again.damage.expect("still reported").pending, "bit {bit}");
    }
}
