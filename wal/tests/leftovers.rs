//! Directories as a crash during initialisation or segment creation can
//! leave them, laid out by hand: each either opens (with nothing saved lost)
//! or, when the state cannot come from a crash, is refused as corruption.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{entry, opts, segments, Rng, TempDir};
use wal::{Error, HardState, SnapshotMeta, Wal};

const SEG: u64 = 4096;

/// A WAL with entries 1..=n over several segments, hard state commit = n.
fn written(dir: &Path, n: u64) -> Vec<wal::Entry> {
    let mut rng = Rng::new(51);
    let (mut w, _) = Wal::open(dir, opts(SEG)).unwrap();
    let es: Vec<_> = (1..=n).map(|i| entry(&mut rng, i, 1, 300)).collect();
    for e in &es {
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: e.index,
        };
        w.save(Some(&hs), std::slice::from_ref(e), false).unwrap();
    }
    w.sync().unwrap();
    es
}

fn next_segment_path(dir: &Path) -> PathBuf {
    let segs = segments(dir);
    let n = segs.len() as u64;
    dir.join(format!("{n:016x}-{:016x}.wal", 999))
}

#[test]
fn a_directory_with_only_a_lock_file_opens_as_an_empty_log() {
    let d = TempDir::new("only-lock");
    fs::create_dir_all(d.path()).unwrap();
    fs::write(d.path().join("LOCK"), b"").unwrap();
    let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec, wal::Recovered::default());
}

#[test]
fn leftover_temp_files_are_removed() {
    let d = TempDir::new("tmp-files");
    let es = written(d.path(), 5);
    fs::write(d.path().join("0000000000000007.wal.tmp"), vec![0u8; 100]).unwrap();
    fs::write(
        d.path()
            .join("snap/0000000000000003-0000000000000001.snap.tmp"),
        b"half",
    )
    .unwrap();
    let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.entries, es);
    assert!(!d.path().join("0000000000000007.wal.tmp").exists());
    assert!(fs::read_dir(d.path().join("snap"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_last_segment_with_a_zero_or_partial_header_and_no_records_is_dropped() {
    for header_bytes in [0usize, 1, 8, 20, 33] {
        let d = TempDir::new("bad-last-header");
        let es = written(d.path(), 40);
        let good = fs::read(&segments(d.path())[0]).unwrap();
        let mut fake = vec![0u8; SEG as usize];
        fake[..header_bytes].copy_from_slice(&good[..header_bytes]);
        let extra = next_segment_path(d.path());
        fs::write(&extra, &fake).unwrap();
        let (mut w, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
        assert_eq!(rec.entries, es, "header bytes {header_bytes}");
        assert_eq!(rec.hard_state.commit, 40);
        assert!(!extra.exists());
        // The log goes on, and rolls over into the freed sequence number.
        let mut rng = Rng::new(52);
        for i in 41..=60 {
            w.save(None, &[entry(&mut rng, i, 1, 300)], false).unwrap();
        }
        drop(w);
        assert_eq!(Wal::open(d.path(), opts(SEG)).unwrap().1.entries.len(), 60);
    }
}

#[test]
fn a_lone_segment_with_a_zero_header_opens_as_an_empty_log() {
    let d = TempDir::new("lone-zero");
    fs::create_dir_all(d.path()).unwrap();
    let p = d.path().join("0000000000000000-0000000000000001.wal");
    fs::write(&p, vec![0u8; SEG as usize]).unwrap();
    let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec, wal::Recovered::default());
    assert_eq!(segments(d.path()).len(), 1);
}

#[test]
fn a_zero_header_in_a_segment_that_is_not_the_last_is_corruption() {
    let d = TempDir::new("mid-zero");
    written(d.path(), 40);
    let segs = segments(d.path());
    assert!(segs.len() >= 3);
    fs::write(&segs[1], vec![0u8; SEG as usize]).unwrap();
    let err = Wal::open(d.path(), opts(SEG)).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, offset: 0, .. } if *path == segs[1]),
        "{err}"
    );
}

#[test]
fn a_last_segment_with_a_bad_header_but_records_in_it_is_corruption() {
    let d = TempDir::new("bad-header-data");
    written(d.path(), 40);
    let last = segments(d.path()).pop().unwrap();
    let mut b = fs::read(&last).unwrap();
    b[..40].fill(0);
    fs::write(&last, &b).unwrap();
    let err = Wal::open(d.path(), opts(SEG)).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, offset: 0, .. } if *path == last),
        "{err}"
    );
}

#[test]
fn a_missing_segment_in_the_sequence_is_corruption() {
    let d = TempDir::new("missing-seg");
    written(d.path(), 40);
    let segs = segments(d.path());
    fs::remove_file(&segs[1]).unwrap();
    let err = Wal::open(d.path(), opts(SEG)).unwrap_err();
    assert!(err.to_string().contains("segment 1 is missing"), "{err}");
}

#[test]
fn a_segment_whose_header_disagrees_with_its_name_is_corruption() {
    let d = TempDir::new("renamed-seg");
    written(d.path(), 40);
    let segs = segments(d.path());
    let name = segs[1].file_name().unwrap().to_string_lossy().into_owned();
    let wrong = d.path().join(format!("{}{:016x}.wal", &name[..17], 12345));
    fs::rename(&segs[1], &wrong).unwrap();
    let err = Wal::open(d.path(), opts(SEG)).unwrap_err();
    assert!(err.to_string().contains("file name says"), "{err}");
}

#[test]
fn a_last_segment_without_head_records_gets_them_so_release_keeps_the_hard_state() {
    let d = TempDir::new("no-head");
    written(d.path(), 40);
    // Keep only the header of the last segment: it holds no records at all.
    let last = segments(d.path()).pop().unwrap();
    let mut b = fs::read(&last).unwrap();
    let first_index = u64::from_le_bytes(b[24..32].try_into().unwrap());
    b[40..].fill(0);
    fs::write(&last, &b).unwrap();
    let (mut w, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.entries.len() as u64, first_index - 1);
    let hs = rec.hard_state;
    w.save_snapshot(
        &SnapshotMeta {
            index: first_index - 1,
            term: 1,
            ..Default::default()
        },
        b"s",
    )
    .unwrap();
    w.release_to(first_index - 1).unwrap();
    assert_eq!(w.segment_paths(), vec![last]);
    drop(w);
    let (_, rec) = Wal::open(d.path(), opts(SEG)).unwrap();
    assert_eq!(rec.hard_state, hs);
    assert!(rec.entries.is_empty());
}
