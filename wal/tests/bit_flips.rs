//! Every flipped bit is noticed (after etcd's `repair_test.go`, but for every
//! bit). A flip in the last record of the last segment is indistinguishable
//! from a write torn by a crash, and is cut as a torn tail; a flip anywhere
//! else (an earlier record of the last segment, any record of an earlier
//! segment, a segment header) makes `open` refuse with `Error::Corrupt`
//! naming the file and the record's offset, and leaves every file untouched.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{apply, entry, frames, opts, segments, Frame, Record, Rng, TempDir};
use wal::{Error, HardState, Options, Wal};

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
    for p in segments(dir)
        .iter()
        .chain(&common::files_matching(dir, ".torn-"))
    {
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
fn a_flip_in_the_last_record_of_the_last_segment_is_cut_as_a_torn_tail() {
    let layout = layout();
    let last = layout.last().unwrap().last().unwrap().clone();
    let mut before: Vec<&Frame> = layout.iter().flatten().collect();
    before.pop();
    let all: Vec<Record> = before.iter().flat_map(|f| f.records.clone()).collect();
    let (want_hs, want_entries) = apply(&all);
    flip_each_bit(
        layout.len() - 1,
        last.offset,
        last.offset + last.len,
        |bit, outcome, _| {
            let rec = outcome.unwrap_or_else(|e| panic!("bit {bit}: {e}"));
            let torn = rec
                .torn_tail
                .unwrap_or_else(|| panic!("bit {bit}: no torn tail reported"));
            assert_eq!(torn.offset as usize, last.offset, "bit {bit}");
            assert_eq!(rec.entries, want_entries, "bit {bit}");
            assert_eq!(rec.hard_state, want_hs, "bit {bit}");
        },
    );
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
