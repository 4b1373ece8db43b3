//! Snapshots: what a snapshot does to the log (raft paper §7), how its file
//! is written and read back, and what recovery does when a snapshot file is
//! damaged or missing: set it aside, never delete it, and fall back to the
//! next older snapshot while the log still covers the difference.

mod common;

use std::fs;
use std::io::{Read, Write};

use common::{entry, files_matching, opts, Rng, TempDir};
use wal::{Entry, Error, Options, SnapshotMeta, Wal};

const SEG: u64 = 4096;

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        voters: vec![1, 2, 3],
        learners: vec![7],
    }
}

/// Opens a log holding entries 1..=n in term 1 (every save unsynced).
fn log_of(dir: &std::path::Path, n: u64, rng: &mut Rng) -> (Wal, Vec<Entry>) {
    let (mut w, _) = Wal::open(dir, opts(SEG)).unwrap();
    let es: Vec<Entry> = (1..=n).map(|i| entry(rng, i, 1, 100)).collect();
    for e in &es {
        w.save(None, std::slice::from_ref(e), false).unwrap();
    }
    (w, es)
}

#[test]
fn a_saved_snapshot_comes_back_with_its_metadata_data_and_the_entries_after_it() {
    let d = TempDir::new("snap-roundtrip");
    let mut rng = Rng::new(31);
    let (mut w, es) = log_of(d.path(), 20, &mut rng);
    w.save_snapshot(&meta(12, 1), b"state at 12").unwrap();
    assert_eq!(w.first_index(), 13);
    assert_eq!(w.last_index(), 20);
    drop(w);
    let (w, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.snapshot, Some(meta(12, 1)));
    assert_eq!(rec.entries, es[12..].to_vec());
    assert_eq!(
        w.load_snapshot().unwrap(),
        Some((meta(12, 1), b"state at 12".to_vec()))
    );
    assert_eq!(w.term(12), Some(1));
}

#[test]
fn a_large_snapshot_streams_in_and_out_with_bounded_buffers() {
    let d = TempDir::new("snap-stream");
    let mut rng = Rng::new(32);
    let (mut w, _) = log_of(d.path(), 3, &mut rng);
    let chunk = rng.bytes(1 << 20);
    let mut sw = w.snapshot_writer(&meta(3, 1)).unwrap();
    for i in 0..12u8 {
        let mut c = chunk.clone();
        c[0] = i;
        sw.write_all(&c).unwrap();
    }
    assert_eq!(sw.len(), 12 << 20);
    w.commit_snapshot(sw).unwrap();
    drop(w);
    let (w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
    let mut r = w.snapshot_reader().unwrap().unwrap();
    assert_eq!(r.len(), 12 << 20);
    let mut buf = vec![0u8; 100_000];
    let mut total = 0usize;
    let mut firsts = Vec::new();
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            let pos = (total + k) % (1 << 20);
            if pos == 0 {
                firsts.push(b);
            } else {
                assert_eq!(b, chunk[pos]);
            }
        }
        total += n;
    }
    assert_eq!(total, 12 << 20);
    assert_eq!(firsts, (0..12).collect::<Vec<u8>>());
}

#[test]
fn a_reader_reports_damaged_data_when_it_reaches_the_end() {
    let d = TempDir::new("snap-reader-crc");
    let mut rng = Rng::new(33);
    let (mut w, _) = log_of(d.path(), 3, &mut rng);
    w.save_snapshot(&meta(3, 1), &rng.bytes(5000)).unwrap();
    let path = files_matching(&d.path().join("snap"), ".snap")[0].clone();
    let mut bytes = fs::read(&path).unwrap();
    bytes[2000] ^= 4;
    fs::write(&path, bytes).unwrap();
    let mut data = Vec::new();
    let err = w
        .snapshot_reader()
        .unwrap()
        .unwrap()
        .read_to_end(&mut data)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("CRC mismatch"), "{err}");
    assert!(matches!(w.load_snapshot(), Err(Error::Corrupt { .. })));
}

#[test]
fn a_dropped_snapshot_writer_leaves_nothing_behind() {
    let d = TempDir::new("snap-drop");
    let mut rng = Rng::new(34);
    let (w, _) = log_of(d.path(), 3, &mut rng);
    let mut sw = w.snapshot_writer(&meta(3, 1)).unwrap();
    sw.write_all(b"half").unwrap();
    drop(sw);
    assert!(fs::read_dir(d.path().join("snap"))
        .unwrap()
        .next()
        .is_none());
    assert_eq!(w.snapshot(), None);
}

#[test]
fn a_follower_that_installs_a_snapshot_beyond_its_log_continues_after_it() {
    let d = TempDir::new("snap-install");
    let mut rng = Rng::new(35);
    let (mut w, _) = log_of(d.path(), 5, &mut rng);
    w.save_snapshot(&meta(100, 3), b"leader state").unwrap();
    assert_eq!(w.last_index(), 100);
    let err = w
        .save(None, &[entry(&mut rng, 50, 3, 5)], true)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowSnapshot {
                index: 50,
                snapshot_index: 100
            }
        ),
        "{err}"
    );
    let next = entry(&mut rng, 101, 3, 5);
    w.save(None, std::slice::from_ref(&next), true).unwrap();
    drop(w);
    let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.snapshot, Some(meta(100, 3)));
    assert_eq!(rec.entries, vec![next]);
}

#[test]
fn a_snapshot_whose_last_entry_matches_the_log_keeps_the_entries_after_it() {
    let d = TempDir::new("snap-keep");
    let mut rng = Rng::new(36);
    let (mut w, es) = log_of(d.path(), 10, &mut rng);
    w.save_snapshot(&meta(8, 1), b"s").unwrap();
    assert_eq!(w.last_index(), 10);
    drop(w);
    assert_eq!(
        Wal::open(d.path(), opts(SEG)).unwrap().1.entries,
        es[8..].to_vec()
    );
}

#[test]
fn a_snapshot_whose_last_entry_conflicts_with_the_log_discards_the_whole_log() {
    // Raft paper §7: the follower's entry 8 has another term, so everything
    // after the snapshot is from a different history.
    let d = TempDir::new("snap-reset");
    let mut rng = Rng::new(37);
    let (mut w, _) = log_of(d.path(), 10, &mut rng);
    w.save_snapshot(&meta(8, 2), b"s").unwrap();
    assert_eq!(w.last_index(), 8);
    assert_eq!(w.term(9), None);
    drop(w);
    let (mut w, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert!(rec.entries.is_empty());
    assert_eq!(w.last_index(), 8);
    w.save(None, &[entry(&mut rng, 9, 2, 5)], true).unwrap();
}

#[test]
fn an_older_snapshot_is_refused() {
    let d = TempDir::new("snap-stale");
    let mut rng = Rng::new(38);
    let (mut w, _) = log_of(d.path(), 10, &mut rng);
    w.save_snapshot(&meta(8, 1), b"s").unwrap();
    for m in [meta(5, 1), meta(8, 2)] {
        let err = w.save_snapshot(&m, b"old").unwrap_err();
        assert!(matches!(err, Error::StaleSnapshot { .. }), "{err}");
    }
    // The same snapshot again is harmless.
    w.save_snapshot(&meta(8, 1), b"s").unwrap();
}

#[test]
fn only_the_newest_keep_snapshots_files_are_kept() {
    let d = TempDir::new("snap-retain");
    let mut rng = Rng::new(39);
    let (mut w, _) = log_of(d.path(), 10, &mut rng);
    for i in 3..=7 {
        w.save_snapshot(&meta(i, 1), b"s").unwrap();
    }
    let names: Vec<String> = files_matching(&d.path().join("snap"), ".snap")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "0000000000000006-0000000000000001.snap",
            "0000000000000007-0000000000000001.snap"
        ]
    );
    drop(w);
    let o = Options {
        keep_snapshots: 1,
        ..opts(SEG)
    };
    let (mut w, _) = Wal::open(d.path(), o).unwrap();
    w.save_snapshot(&meta(9, 1), b"s").unwrap();
    assert_eq!(files_matching(&d.path().join("snap"), ".snap").len(), 1);
}

/// Two snapshots (at 10 and 20) over entries 1..=30, nothing released.
fn two_snapshots(dir: &std::path::Path) -> Vec<Entry> {
    let mut rng = Rng::new(40);
    let (mut w, es) = log_of(dir, 30, &mut rng);
    w.save_snapshot(&meta(10, 1), b"state at 10").unwrap();
    w.save_snapshot(&meta(20, 1), b"state at 20").unwrap();
    es
}

fn snap_path(dir: &std::path::Path, index: u64) -> std::path::PathBuf {
    dir.join("snap")
        .join(format!("{index:016x}-{:016x}.snap", 1))
}

#[test]
fn a_damaged_newest_snapshot_is_set_aside_and_the_older_one_used() {
    let d = TempDir::new("snap-fallback");
    let es = two_snapshots(d.path());
    let newest = snap_path(d.path(), 20);
    let mut bytes = fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x80; // in the data
    fs::write(&newest, &bytes).unwrap();

    let (w, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.snapshot, Some(meta(10, 1)));
    assert_eq!(rec.entries, es[10..].to_vec());
    let broken = newest.with_extension("snap.broken");
    assert_eq!(rec.set_aside, vec![broken.clone()]);
    assert_eq!(
        fs::read(&broken).unwrap(),
        bytes,
        "set aside, never deleted"
    );
    assert!(!newest.exists());
    assert_eq!(w.load_snapshot().unwrap().unwrap().1, b"state at 10");
}

#[test]
fn a_missing_newest_snapshot_falls_back_to_the_older_one() {
    let d = TempDir::new("snap-missing");
    let es = two_snapshots(d.path());
    fs::remove_file(snap_path(d.path(), 20)).unwrap();
    let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.snapshot, Some(meta(10, 1)));
    assert_eq!(rec.entries, es[10..].to_vec());
}

#[test]
fn every_flipped_bit_of_a_snapshot_file_is_detected() {
    let d = TempDir::new("snap-flips");
    let es = two_snapshots(d.path());
    let newest = snap_path(d.path(), 20);
    let pristine = fs::read(&newest).unwrap();
    let broken = newest.with_extension("snap.broken");
    for bit in 0..pristine.len() * 8 {
        let mut b = pristine.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        fs::write(&newest, &b).unwrap();
        let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap_or_else(|e| panic!("bit {bit}: {e}"));
        assert_eq!(rec.snapshot, Some(meta(10, 1)), "bit {bit}");
        assert_eq!(rec.entries.len(), es.len() - 10, "bit {bit}");
        assert!(broken.exists(), "bit {bit}");
        fs::remove_file(&broken).unwrap();
    }
}

#[test]
fn falling_back_is_refused_when_the_log_no_longer_covers_the_older_snapshot() {
    let d = TempDir::new("snap-no-fallback");
    let mut rng = Rng::new(41);
    let (mut w, _) = log_of(d.path(), 60, &mut rng);
    w.save_snapshot(&meta(10, 1), b"a").unwrap();
    w.save_snapshot(&meta(55, 1), b"b").unwrap();
    w.release_to(55).unwrap();
    drop(w);
    let newest = snap_path(d.path(), 55);
    let mut bytes = fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 17] ^= 1;
    fs::write(&newest, &bytes).unwrap();
    let err = Wal::open(d.path(), opts(SEG)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Corrupt { .. }), "{msg}");
    assert!(msg.contains("does not reach back"), "{msg}");
    assert!(msg.contains("index 55) is unusable"), "{msg}");
    // The damaged file was set aside, not deleted.
    assert!(newest.with_extension("snap.broken").exists());
}

#[test]
fn releasing_to_the_older_snapshot_keeps_the_fallback_possible() {
    let d = TempDir::new("snap-release-older");
    let mut rng = Rng::new(42);
    let (mut w, es) = log_of(d.path(), 60, &mut rng);
    w.save_snapshot(&meta(10, 1), b"a").unwrap();
    w.save_snapshot(&meta(55, 1), b"b").unwrap();
    w.release_to(10).unwrap();
    assert!(w.segment_paths().len() > 1);
    drop(w);
    fs::remove_file(snap_path(d.path(), 55)).unwrap();
    let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.snapshot, Some(meta(10, 1)));
    assert_eq!(rec.entries, es[10..].to_vec());
}

#[test]
fn a_sealed_snapshot_that_was_never_committed_is_set_aside() {
    // A writer sealed on another thread, then a crash before the commit: the
    // file is complete and in place, but the log has no marker for it, so
    // recovery sets it aside and the log, which still holds every entry, wins.
    let d = TempDir::new("snap-sealed");
    let mut rng = Rng::new(41);
    let (w, es) = log_of(d.path(), 20, &mut rng);
    let mut sw = w.snapshot_writer(&meta(12, 1)).unwrap();
    sw.write_all(b"state at 12").unwrap();
    sw.seal().unwrap();
    sw.seal().unwrap(); // sealing twice is harmless
    assert!(
        sw.write_all(b"more").is_err(),
        "a sealed writer takes no data"
    );
    drop(sw);
    assert_eq!(files_matching(&d.path().join("snap"), ".snap").len(), 1);
    drop(w);
    let (w, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.snapshot, None);
    assert_eq!(rec.entries, es);
    assert_eq!(w.load_snapshot().unwrap(), None);
    assert_eq!(files_matching(&d.path().join("snap"), ".orphan").len(), 1);
}

#[test]
fn a_sealed_snapshot_commits_like_an_unsealed_one() {
    let d = TempDir::new("snap-sealed-commit");
    let mut rng = Rng::new(43);
    let (mut w, es) = log_of(d.path(), 20, &mut rng);
    let mut sw = w.snapshot_writer(&meta(15, 1)).unwrap();
    sw.write_all(b"state at 15").unwrap();
    sw.seal().unwrap();
    w.commit_snapshot(sw).unwrap();
    assert_eq!(w.first_index(), 16);
    drop(w);
    let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.snapshot, Some(meta(15, 1)));
    assert_eq!(rec.entries, es[15..].to_vec());
}

#[test]
fn background_removal_finishes_before_the_wal_is_dropped() {
    let d = TempDir::new("snap-bg-remove");
    let mut rng = Rng::new(45);
    let o = Options {
        remove_in_background: true,
        ..opts(SEG)
    };
    let (mut w, _) = Wal::open(d.path(), o.clone()).unwrap();
    for i in 1..=200 {
        w.save(None, &[entry(&mut rng, i, 1, 100)], false).unwrap();
    }
    let segments_before = files_matching(d.path(), ".wal").len();
    assert!(segments_before >= 4, "{segments_before} segments");
    for i in [50, 100, 150, 190] {
        w.save_snapshot(&meta(i, 1), b"s").unwrap();
        w.release_to(i).unwrap();
    }
    drop(w);
    // Dropping waited for the deletions: exactly what the inline mode leaves.
    assert_eq!(files_matching(&d.path().join("snap"), ".snap").len(), 2);
    let segments_after = files_matching(d.path(), ".wal").len();
    assert!(
        segments_after < segments_before,
        "{segments_after} segments left"
    );
    let (w, rec) = Wal::open(d.path(), o).unwrap();
    assert_eq!(rec.snapshot, Some(meta(190, 1)));
    assert_eq!(w.last_index(), 200);
}
