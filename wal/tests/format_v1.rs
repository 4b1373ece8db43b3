//! Segments of format version 1 (written by older builds, laid out here from
//! `FORMAT.md`) are still read, appended to in version 1, and their bad last
//! record is judged by etcd's plain zero-sector rule: torn when a sector of it
//! is all zero, corrupt otherwise.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{entry, frames, opts, save_record_v1, segment_v1, segments, Rng, TempDir};
use wal::{Entry, Error, HardState, Wal};

const SEG: usize = 8192;

fn hs(commit: u64) -> HardState {
    HardState {
        term: 2,
        vote: 1,
        commit,
    }
}

/// A version-1 directory: one segment holding a head and entries 1..=4, the
/// last one `last_len` bytes long. Returns its path and entries.
fn v1_dir(dir: &Path, last_len: usize) -> (PathBuf, Vec<Entry>) {
    fs::create_dir_all(dir.join("snap")).unwrap();
    let mut rng = Rng::new(61);
    let es: Vec<Entry> = (1..=4)
        .map(|i| entry(&mut rng, i, 2, if i == 4 { last_len } else { 100 }))
        .collect();
    let mut records = vec![save_record_v1(Some(&HardState::default()), &[])];
    for e in &es {
        records.push(save_record_v1(
            Some(&hs(e.index - 1)),
            std::slice::from_ref(e),
        ));
    }
    let path = dir.join("0000000000000000-0000000000000001.wal");
    fs::write(&path, segment_v1(0, 1, SEG, &records)).unwrap();
    (path, es)
}

#[test]
fn a_version_1_log_is_read_and_appended_to_in_version_1() {
    let d = TempDir::new("v1-read");
    let (path, es) = v1_dir(d.path(), 100);
    let (mut w, rec) = Wal::open(d.path(), opts(SEG as u64)).unwrap();
    assert_eq!(rec.entries, es);
    assert_eq!(rec.hard_state, hs(3));
    assert_eq!(rec.damage, None);
    let mut rng = Rng::new(62);
    let more: Vec<Entry> = (5..=80).map(|i| entry(&mut rng, i, 3, 150)).collect();
    for e in &more {
        w.save(Some(&hs(e.index - 1)), std::slice::from_ref(e), true)
            .unwrap();
    }
    drop(w);
    // The old segment is still version 1 and parses as such (its appended
    // frames have bits 32..47 zero); the new ones are version 2.
    let segs = segments(d.path());
    assert!(segs.len() >= 2);
    assert_eq!(segs[0], path);
    let old = fs::read(&segs[0]).unwrap();
    assert_eq!(common::version(&old), 1);
    assert!(frames(&old).len() > 5);
    for s in &segs[1..] {
        let b = fs::read(s).unwrap();
        assert_eq!(common::version(&b), 2);
        frames(&b);
    }
    let (_, rec) = Wal::open(d.path(), opts(SEG as u64)).unwrap();
    let all: Vec<Entry> = es.into_iter().chain(more).collect();
    assert_eq!(rec.entries, all);
    assert_eq!(rec.hard_state, hs(79));
}

#[test]
fn a_version_1_last_record_with_a_zero_sector_is_torn() {
    let d = TempDir::new("v1-torn");
    let (path, es) = v1_dir(d.path(), 3000);
    let mut b = fs::read(&path).unwrap();
    let last = frames(&b).pop().unwrap();
    let s = (last.offset / 512 + 2) * 512;
    b[s..s + 512].fill(0);
    fs::write(&path, &b).unwrap();
    let (_, rec) = Wal::open(d.path(), opts(SEG as u64)).unwrap();
    assert_eq!(rec.torn_tail.unwrap().offset as usize, last.offset);
    assert_eq!(rec.entries, es[..3].to_vec());
}

#[test]
fn a_version_1_last_record_with_a_flipped_bit_is_corruption() {
    let d = TempDir::new("v1-flip");
    let (path, _) = v1_dir(d.path(), 3000);
    let mut b = fs::read(&path).unwrap();
    let last = frames(&b).pop().unwrap();
    b[last.offset + 1000] ^= 0x04;
    fs::write(&path, &b).unwrap();
    match Wal::open(d.path(), opts(SEG as u64)) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset as usize, last.offset),
        other => panic!("expected Corrupt, got {:?}", other.map(|r| r.1)),
    }
}
