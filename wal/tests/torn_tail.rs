//! Crash cuts by brute force (after toydb's bitcask tests): write a log, then
//! cut its last segment at every byte offset, once by truncating the file and
//! once by zero-filling from the offset on. Every reopen must give back
//! exactly the records that the cut left whole (all of which were fsynced)
//! and accept new writes.
//!
//! Which cuts are torn tails follows the rule of `FORMAT.md`, computed here
//! from the document (`common::is_torn`): a zero-filled cut that leaves a
//! whole sector of the partial record zero is the signature of a crash (the
//! segment is preallocated with zeros and sectors are written whole), and is
//! cut as a torn tail. A partial record that no crash could leave (zeros
//! starting inside a sector, or a file cut short: segments are preallocated)
//! is damage: `Refuse` fails naming the record's offset and changes nothing,
//! `Salvage` keeps the same whole records and reports the damage.

mod common;

use std::fs;
use std::path::Path;

use common::{apply, entry, frames, opts, segments, Frame, Record, Rng, TempDir};
use wal::{Error, HardState, OnDamage, Wal};

const SEG: u64 = 4096;

/// Reopened hundreds of times: skip preparing a spare segment on each open.
fn reopen_opts() -> wal::Options {
    wal::Options {
        preallocate_in_background: false,
        ..opts(SEG)
    }
}

fn salvage_opts() -> wal::Options {
    wal::Options {
        on_damage: OnDamage::Salvage,
        ..reopen_opts()
    }
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    Truncate,
    ZeroFill,
}

/// Writes a log over a few segments (every save synced) and returns the
/// pristine bytes of every segment.
fn build(dir: &Path, seed: u64, saves: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let (mut w, _) = Wal::open(dir, opts(SEG)).unwrap();
    let mut next = 1u64;
    for s in 0..saves {
        let n = rng.range(0, 3);
        // Now and then overwrite the last two entries, as a new leader would.
        if n > 0 && next > 3 && rng.chance(20) {
            next -= 2;
        }
        let es: Vec<_> = (0..n)
            .map(|k| {
                let len = rng.range(1, 120) as usize;
                entry(&mut rng, next + k, 1 + s / 4, len)
            })
            .collect();
        next += n;
        let hs = (n == 0 || rng.chance(50)).then(|| HardState {
            term: 1 + s / 4,
            vote: 1,
            commit: next.saturating_sub(2),
        });
        w.save(hs.as_ref(), &es, true).unwrap();
    }
    drop(w);
    segments(dir).iter().map(|p| fs::read(p).unwrap()).collect()
}

/// Cuts the last segment of a log built from `seed` at every byte offset of
/// its last `last_frames` records (all of it if it has fewer).
fn cut_everywhere(seed: u64, saves: u64, last_records: usize, mode: Cut) {
    let d = TempDir::new("torn");
    let pristine = build(d.path(), seed, saves);
    assert!(pristine.len() >= 2, "the log should span segments");
    let paths = segments(d.path());
    let last_path = paths.last().unwrap().clone();
    let last = pristine.last().unwrap();
    let earlier: Vec<Record> = pristine[..pristine.len() - 1]
        .iter()
        .flat_map(|s| frames(s))
        .flat_map(|f| f.records)
        .collect();
    let last_frames: Vec<Frame> = frames(last);
    let data_end = last_frames.last().map_or(40, |f| f.offset + f.len);

    let from = if last_frames.len() > last_records {
        last_frames[last_frames.len() - last_records].offset
    } else {
        0
    };
    let mut torn_seen = 0;
    let mut damage_seen = 0;
    for cut in from..=data_end {
        // Restore the pristine directory, then apply the cut.
        for p in segments(d.path())
            .iter()
            .chain(&common::leftovers(d.path()))
        {
            fs::remove_file(p).unwrap();
        }
        for (p, bytes) in paths.iter().zip(&pristine) {
            fs::write(p, bytes).unwrap();
        }
        let damaged: Vec<u8> = match mode {
            Cut::Truncate => last[..cut].to_vec(),
            Cut::ZeroFill => {
                let mut b = last.clone();
                b[cut..data_end].fill(0);
                b
            }
        };
        fs::write(&last_path, &damaged).unwrap();

        // Expected: every record the cut left whole.
        // (Zero-filling may leave a record unchanged if it ended in zeros.)
        let intact: Vec<&Frame> = last_frames
            .iter()
            .take_while(|f| {
                damaged.get(f.offset..f.offset + f.len) == Some(&last[f.offset..f.offset + f.len])
            })
            .collect();
        let mut records = earlier.clone();
        let header_intact = cut >= 40;
        if header_intact {
            records.extend(intact.iter().flat_map(|f| f.records.clone()));
        }
        let (want_hs, want_entries) = apply(&records);
        let intact_end = intact.last().map_or(40, |f| f.offset + f.len);
        let leftover_nonzero = header_intact && damaged[intact_end..].iter().any(|&b| b != 0);
        let torn = leftover_nonzero && common::is_torn(&damaged, intact_end);

        let ctx = format!("seed {seed} {mode:?} at byte {cut} of {data_end}");
        let (mut w, rec) = if leftover_nonzero && !torn {
            damage_seen += 1;
            // Refused, naming the record, and nothing was touched.
            match Wal::open(d.path(), reopen_opts()) {
                Err(Error::Corrupt { path, offset, .. }) => {
                    assert_eq!(path, last_path, "{ctx}");
                    assert_eq!(offset as usize, intact_end, "{ctx}");
                }
                Err(e) => panic!("{ctx}: expected Corrupt, got {e}"),
                Ok(_) => panic!("{ctx}: expected Corrupt, it opened"),
            }
            assert_eq!(fs::read(&last_path).unwrap(), damaged, "{ctx}");
            assert!(common::leftovers(d.path()).is_empty(), "{ctx}");
            // Salvaged: the same whole records, and the damage reported.
            let (w, rec) =
                Wal::open(d.path(), salvage_opts()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let damage = rec
                .damage
                .clone()
                .unwrap_or_else(|| panic!("{ctx}: no damage"));
            assert_eq!(damage.file, last_path, "{ctx}");
            assert_eq!(damage.offset as usize, intact_end, "{ctx}");
            assert!(
                !damage.hard_state_intact,
                "{ctx}: nothing follows the damage"
            );
            assert!(!damage.pending, "{ctx}");
            assert_eq!(
                damage.kept_last_index,
                want_entries.last().map_or(0, |e| e.index),
                "{ctx}"
            );
            let side = &damage.set_aside[0];
            assert!(
                side.to_string_lossy()
                    .ends_with(&format!(".corrupt-{intact_end}")),
                "{ctx}: {side:?}"
            );
            let kept = fs::read(side).unwrap();
            assert_eq!(
                &kept[..],
                &damaged[intact_end..intact_end + kept.len()],
                "{ctx}"
            );
            assert_eq!(
                rec.hard_state,
                HardState {
                    commit: want_hs.commit.min(damage.kept_last_index),
                    ..want_hs
                },
                "{ctx}"
            );
            (w, rec)
        } else {
            Wal::open(d.path(), reopen_opts()).unwrap_or_else(|e| panic!("{ctx}: {e}"))
        };
        assert_eq!(rec.entries, want_entries, "{ctx}");
        if !leftover_nonzero || torn {
            assert_eq!(rec.hard_state, want_hs, "{ctx}");
            assert_eq!(rec.damage, None, "{ctx}");
        }
        assert_eq!(rec.torn_tail.is_some(), torn, "{ctx}: {:?}", rec.torn_tail);
        if let Some(t) = &rec.torn_tail {
            torn_seen += 1;
            assert_eq!(t.offset as usize, intact_end, "{ctx}");
            let side = fs::read(&t.side_file).unwrap();
            assert_eq!(side.len() as u64, t.bytes_cut, "{ctx}");
            assert_eq!(
                &side[..],
                &damaged[intact_end..intact_end + side.len()],
                "{ctx}"
            );
        }

        // The repaired log takes new writes, and they survive a reopen.
        if cut % 5 == 0 {
            let next = w.last_index() + 1;
            let e = entry(&mut Rng::new(cut as u64), next, 99, 30);
            w.save(None, std::slice::from_ref(&e), true).unwrap();
            drop(w);
            let (_, again) =
                Wal::open(d.path(), reopen_opts()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(again.entries.last(), Some(&e), "{ctx}");
            assert_eq!(again.torn_tail, None, "{ctx}");
            // A salvaged log keeps reporting its damage.
            assert_eq!(
                again.damage.map(|d| d.pending),
                (leftover_nonzero && !torn).then_some(true),
                "{ctx}"
            );
        }
    }
    // Both outcomes occur (truncation is never a tear: segments are
    // preallocated, so a crash cannot shorten one).
    assert!(damage_seen > 0, "seed {seed} {mode:?}");
    if let Cut::ZeroFill = mode {
        assert!(torn_seen > 0, "seed {seed} {mode:?}");
    }
}

#[test]
fn truncating_the_last_segment_at_any_byte_keeps_exactly_the_whole_records_before_it() {
    cut_everywhere(11, 40, 6, Cut::Truncate);
}

#[test]
fn zero_filling_the_last_segment_from_any_byte_keeps_exactly_the_whole_records_before_it() {
    cut_everywhere(12, 40, 6, Cut::ZeroFill);
}

#[test]
fn cuts_work_the_same_when_the_last_segment_has_just_rolled_over() {
    // Few saves after the roll: the cut sweeps the header and head records too.
    cut_everywhere(13, 25, usize::MAX, Cut::Truncate);
    cut_everywhere(13, 25, usize::MAX, Cut::ZeroFill);
}

#[test]
fn a_power_cut_that_loses_a_middle_page_of_the_last_append_is_a_torn_tail() {
    // The last append spans several 4 KiB pages; the disk persisted its last
    // page but not one in the middle (pages reach the disk in any order).
    let d = TempDir::new("page-order");
    let mut rng = Rng::new(14);
    let o = opts(256 * 1024);
    let (mut w, _) = Wal::open(d.path(), o.clone()).unwrap();
    let first: Vec<_> = (1..=3).map(|i| entry(&mut rng, i, 1, 100)).collect();
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: 3,
    };
    w.save(Some(&hs), &first, true).unwrap();
    let big: Vec<_> = (4..=6).map(|i| entry(&mut rng, i, 1, 5000)).collect();
    let hs2 = HardState { commit: 6, ..hs };
    w.save(Some(&hs2), &big, true).unwrap();
    drop(w);
    let seg = segments(d.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let last = frames(&bytes).pop().unwrap();
    let page = (last.offset / 4096 + 2) * 4096;
    assert!(
        page + 4096 < last.offset + last.len,
        "the append must span the page"
    );
    bytes[page..page + 4096].fill(0);
    fs::write(&seg, &bytes).unwrap();

    let (_, rec) = Wal::open(d.path(), o).unwrap();
    assert_eq!(rec.entries, first);
    assert_eq!(rec.hard_state, hs);
    assert_eq!(rec.torn_tail.unwrap().offset as usize, last.offset);
}
