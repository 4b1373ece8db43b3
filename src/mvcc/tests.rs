//! The store's behaviour, one property per test: revisions, versions,
//! reads at a revision, ranges, compaction, events, views, leases and the
//! snapshot format. The randomized comparison with a naive model and the
//! decoder fuzzing are in `model_tests.rs`.

use super::*;

fn put(s: &mut Store, k: &str, v: &str) -> u64 {
    let mut b = s.begin();
    b.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
    b.commit().revision
}

fn del(s: &mut Store, k: &str) -> Committed {
    let mut b = s.begin();
    b.delete_range(k.as_bytes(), b"").unwrap();
    b.commit()
}

fn get(s: &Store, k: &str, rev: u64) -> Option<KeyValue> {
    s.get(k.as_bytes(), rev).unwrap()
}

fn value(kv: &KeyValue) -> &str {
    std::str::from_utf8(&kv.value).unwrap()
}

fn keys(r: &RangeResult) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn range<'a>(key: &'a [u8], end: &'a [u8]) -> RangeRequest<'a> {
    RangeRequest {
        key,
        end,
        ..Default::default()
    }
}

fn all_events(s: &Store, from: u64, prev_kv: bool) -> Vec<Event> {
    let req = EventRequest {
        from: Rev::at(from),
        key: b"\0",
        end: b"\0",
        prev_kv,
        ..Default::default()
    };
    s.events(&req).unwrap().events
}

#[test]
fn an_empty_store_is_at_revision_1_and_each_change_adds_one() {
    let mut s = Store::new();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compacted_revision(), 0);
    assert_eq!(put(&mut s, "a", "1"), 2);
    assert_eq!(
        put(&mut s, "a", "1"),
        3,
        "a put always changes, even to the same value"
    );
    assert_eq!(put(&mut s, "b", "1"), 4);
}

#[test]
fn a_batch_is_one_revision_and_its_changes_are_ordered_within_it() {
    let mut s = Store::new();
    let mut b = s.begin();
    assert_eq!(b.revision(), 2);
    b.put(b"x", &b"1"[..], 0).unwrap();
    b.put(b"y", &b"2"[..], 0).unwrap();
    b.put(b"x", &b"3"[..], 0).unwrap();
    assert_eq!(b.delete_range(b"y", b"").unwrap().len(), 1);
    assert_eq!(
        b.commit(),
        Committed {
            revision: 2,
            changes: 4
        }
    );
    assert_eq!(s.current_revision(), 2);
    let x = get(&s, "x", 0).unwrap();
    assert_eq!((x.create_revision, x.mod_revision, x.version), (2, 2, 2));
    assert_eq!(value(&x), "3");
    assert_eq!(get(&s, "y", 0), None);
    let evs = all_events(&s, 2, true);
    let subs: Vec<_> = evs.iter().map(|e| (e.rev.main, e.rev.sub)).collect();
    assert_eq!(subs, [(2, 0), (2, 1), (2, 2), (2, 3)]);
    assert_eq!(value(evs[2].prev.as_ref().unwrap()), "1");
    assert_eq!(evs[3].kind, EventKind::Delete);
}

#[test]
fn a_batch_that_changes_nothing_keeps_the_revision() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    assert_eq!(
        del(&mut s, "absent"),
        Committed {
            revision: 2,
            changes: 0
        }
    );
    drop(s.begin());
    assert_eq!(s.current_revision(), 2);
    // Dropping a batch commits it, like commit().
    {
        let mut b = s.begin();
        b.put(b"a", &b"2"[..], 0).unwrap();
    }
    assert_eq!(s.current_revision(), 3);
}

#[test]
fn a_leaked_batch_is_committed_by_the_next_one_and_revisions_never_repeat() {
    let mut s = Store::new();
    let mut b = s.begin();
    b.put(b"a", &b"1"[..], 0).unwrap();
    std::mem::forget(b);
    assert_eq!(put(&mut s, "b", "2"), 3);
    assert_eq!(get(&s, "a", 2).unwrap().mod_revision, 2);
}

#[test]
fn versions_count_puts_and_a_delete_starts_a_new_generation() {
    let mut s = Store::new();
    put(&mut s, "k", "a"); // 2
    put(&mut s, "k", "b"); // 3
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(del(&mut s, "k").revision, 4);
    assert_eq!(get(&s, "k", 0), None);
    put(&mut s, "k", "c"); // 5
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // The old generation is still there at its revisions.
    let old = get(&s, "k", 3).unwrap();
    assert_eq!((old.create_revision, old.version, value(&old)), (2, 2, "b"));
    assert_eq!(get(&s, "k", 4), None);
}

#[test]
fn reads_at_a_past_revision_see_the_store_as_it_was() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "b", "1"); // 3
    put(&mut s, "a", "2"); // 4
    del(&mut s, "b"); // 5
    let at = |rev| {
        let r = s
            .range(&RangeRequest {
                rev,
                ..range(b"a", b"z")
            })
            .unwrap();
        assert_eq!(r.read_at, if rev == 0 { 5 } else { rev });
        assert_eq!(r.current, 5);
        r.kvs
            .iter()
            .map(|kv| format!("{}={}", String::from_utf8_lossy(&kv.key), value(kv)))
            .collect::<Vec<_>>()
    };
    assert_eq!(at(1), Vec::<String>::new());
    assert_eq!(at(2), ["a=1"]);
    assert_eq!(at(3), ["a=1", "b=1"]);
    assert_eq!(at(4), ["a=2", "b=1"]);
    assert_eq!(at(5), ["a=2"]);
    assert_eq!(at(0), ["a=2"]);
    assert_eq!(
        s.get(b"a", 6),
        Err(Error::FutureRevision {
            requested: 6,
            current: 5
        })
    );
}

#[test]
fn a_range_honours_limit_more_count_keys_only_and_count_only() {
    let mut s = Store::new();
    for k in ["a", "b", "c", "d", "e"] {
        put(&mut s, k, "value");
    }
    let r = s
        .range(&RangeRequest {
            limit: 2,
            ..range(b"a", b"e")
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".into(), "b".into()], true, 4)
    );
    let r = s
        .range(&RangeRequest {
            limit: 4,
            ..range(b"a", b"e")
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (4, false, 4));
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            ..range(b"b", b"d")
        })
        .unwrap();
    assert_eq!(keys(&r), ["b", "c"]);
    assert!(r
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
    let r = s
        .range(&RangeRequest {
            count_only: true,
            ..range(b"a", b"\0")
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 5, false));
    // An empty key, or an end at or before the start, matches nothing.
    assert_eq!(s.range(&range(b"", b"\0")).unwrap().count, 0);
    assert_eq!(s.range(&range(b"c", b"b")).unwrap().count, 0);
}

#[test]
fn a_key_with_many_versions_is_read_at_every_revision_by_range_and_get() {
    let mut s = Store::new();
    put(&mut s, "a", "first");
    for i in 0..50 {
        put(&mut s, "m", &i.to_string()); // revisions 3..=52
    }
    put(&mut s, "z", "last");
    for i in 0..50u64 {
        let r = s
            .range(&RangeRequest {
                rev: 3 + i,
                ..range(b"a", b"\0")
            })
            .unwrap();
        assert_eq!(keys(&r), ["a", "m"]);
        assert_eq!(value(&r.kvs[1]), i.to_string());
        assert_eq!(r.kvs[1].version, i + 1);
    }
    let r = s.range(&range(b"a", b"\0")).unwrap();
    assert_eq!(keys(&r), ["a", "m", "z"]);
}

#[test]
fn prefix_ranges_work_with_0xff_bytes() {
    assert_eq!(prefix_end(b"ab"), b"ac");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"a\xff\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), [0]);
    assert_eq!(prefix_end(b""), [0]);
    let mut s = Store::new();
    let all: [&[u8]; 7] = [
        b"a",
        b"a\xff",
        b"a\xff\x00",
        b"a\xff\xff",
        b"b",
        b"\xff",
        b"\xff\xff\x01",
    ];
    let mut b = s.begin();
    for k in all {
        b.put(k, &b"v"[..], 0).unwrap();
    }
    b.commit();
    let found = |p: &[u8]| -> Vec<Vec<u8>> {
        let end = prefix_end(p);
        let r = s.range(&range(p, &end)).unwrap();
        r.kvs.iter().map(|kv| kv.key.to_vec()).collect()
    };
    assert_eq!(found(b"a\xff"), [&b"a\xff"[..], b"a\xff\x00", b"a\xff\xff"]);
    assert_eq!(
        found(b"a"),
        [&b"a"[..], b"a\xff", b"a\xff\x00", b"a\xff\xff"]
    );
    assert_eq!(found(b"\xff"), [&b"\xff"[..], b"\xff\xff\x01"]);
    assert_eq!(found(b"\xff\xff"), [b"\xff\xff\x01"]);
}

#[test]
fn compaction_keeps_reads_at_and_after_it_and_refuses_below() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    put(&mut s, "b", "1"); // 4
    del(&mut s, "b"); // 5
    put(&mut s, "a", "3"); // 6
    put(&mut s, "c", "1"); // 7
    assert_eq!(s.sizes().versions, 6);
    // At 5: a=2 (3) is the newest at or below, b's delete drops b entirely.
    assert_eq!(s.compact(5), Ok(3), "a@2, b@4 and b's tombstone @5");
    assert_eq!(s.compacted_revision(), 5);
    assert_eq!(s.sizes().versions, 3);
    assert_eq!(value(&get(&s, "a", 5).unwrap()), "2");
    assert_eq!(get(&s, "b", 5), None);
    assert_eq!(value(&get(&s, "a", 6).unwrap()), "3");
    let compacted = Err(Error::Compacted {
        requested: 4,
        compacted: 5,
    });
    assert_eq!(s.get(b"a", 4), compacted);
    // Events need a start above the compacted revision.
    let from = |rev| EventRequest {
        from: Rev::at(rev),
        key: b"a",
        end: b"\0",
        prev_kv: true,
        ..Default::default()
    };
    assert_eq!(
        s.events(&from(5)),
        Err(Error::Compacted {
            requested: 5,
            compacted: 5
        })
    );
    let evs = s.events(&from(6)).unwrap().events;
    assert_eq!(evs.len(), 2);
    assert_eq!(
        value(evs[0].prev.as_ref().unwrap()),
        "2",
        "the previous value survives"
    );
    // Compacting the past again, or the future, is refused.
    assert_eq!(
        s.compact(5),
        Err(Error::Compacted {
            requested: 5,
            compacted: 5
        })
    );
    assert_eq!(
        s.compact(8),
        Err(Error::FutureRevision {
            requested: 8,
            current: 7
        })
    );
    assert_eq!(s.compact(7), Ok(1), "a@3 is superseded by a@6");
    assert_eq!(s.sizes().versions, 2);
    assert_eq!(s.events(&from(8)).unwrap().events, []);
}

#[test]
fn compaction_of_a_key_rewritten_within_one_batch_keeps_only_the_last_change() {
    let mut s = Store::new();
    let mut b = s.begin();
    b.put(b"k", &b"1"[..], 0).unwrap();
    b.put(b"k", &b"2"[..], 0).unwrap();
    b.commit();
    let mut b = s.begin();
    b.put(b"j", &b"1"[..], 0).unwrap();
    b.delete_range(b"j", b"").unwrap();
    b.commit();
    assert_eq!(s.compact(3), Ok(3));
    assert_eq!(value(&get(&s, "k", 3).unwrap()), "2");
    assert_eq!(s.sizes().versions, 1);
}

#[test]
fn events_come_in_revision_order_each_once_with_previous_values_and_continue_where_cut() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "b", "1"); // 3
    put(&mut s, "a", "2"); // 4
    del(&mut s, "a"); // 5
    put(&mut s, "a", "3"); // 6
    let evs = all_events(&s, 2, true);
    let seen: Vec<_> = evs
        .iter()
        .map(|e| {
            (
                e.rev.main,
                e.kind,
                value(&e.kv).to_string(),
                e.prev.as_ref().map(|p| value(p).to_string()),
            )
        })
        .collect();
    use EventKind::*;
    let some = |v: &str| Some(v.to_string());
    assert_eq!(
        seen,
        [
            (2, Put, "1".into(), None),
            (3, Put, "1".into(), None),
            (4, Put, "2".into(), some("1")),
            (5, Delete, "".into(), some("2")),
            (6, Put, "3".into(), None),
        ]
    );
    assert_eq!((evs[3].kv.mod_revision, evs[3].kv.version), (5, 0));
    assert!(all_events(&s, 2, false).iter().all(|e| e.prev.is_none()));
    // Only key "a", two at a time, following `next`.
    let mut from = Rev::at(1);
    let mut revs = Vec::new();
    loop {
        let req = EventRequest {
            from,
            key: b"a",
            max_events: 2,
            ..Default::default()
        };
        let got = s.events(&req).unwrap();
        assert!(got.events.len() <= 2);
        revs.extend(got.events.iter().map(|e| e.rev.main));
        if got.events.is_empty() {
            assert_eq!(got.next, Rev::at(7));
            break;
        }
        from = got.next;
    }
    assert_eq!(revs, [2, 4, 5, 6]);
    // A byte limit still gives one event; a scan limit bounds the work.
    let req = EventRequest {
        from: Rev::at(2),
        key: b"a",
        end: b"\0",
        max_bytes: 1,
        ..Default::default()
    };
    let got = s.events(&req).unwrap();
    assert_eq!((got.events.len(), got.next), (1, Rev::at(3)));
    let req = EventRequest {
        from: Rev::at(2),
        key: b"a",
        max_scanned: 2,
        ..Default::default()
    };
    let got = s.events(&req).unwrap();
    assert_eq!((got.events.len(), got.next), (1, Rev::at(4)));
    // From the future: nothing yet, continue there.
    let got = s
        .events(&EventRequest {
            from: Rev::at(9),
            key: b"a",
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (got.events.len(), got.next, got.current),
        (0, Rev::at(7), 6)
    );
}

#[test]
fn a_limit_may_cut_a_revision_and_the_rest_follows_from_its_sub_revision() {
    let mut s = Store::new();
    let mut b = s.begin();
    for k in ["a", "b", "c"] {
        b.put(k.as_bytes(), &b"v"[..], 0).unwrap();
    }
    b.commit();
    let req = |from| EventRequest {
        from,
        key: b"a",
        end: b"\0",
        max_events: 2,
        ..Default::default()
    };
    let first = s.events(&req(Rev::at(2))).unwrap();
    assert_eq!(first.next, Rev { main: 2, sub: 2 });
    let rest = s.events(&req(first.next)).unwrap();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(&*rest.events[0].kv.key, b"c");
}

#[test]
fn a_view_is_frozen_while_the_store_goes_on() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    let view = s.view();
    put(&mut s, "a", "2");
    put(&mut s, "b", "1");
    s.compact(4).unwrap();
    assert_eq!(view.current_revision(), 2);
    assert_eq!(view.compacted_revision(), 0);
    assert_eq!(value(&view.get(b"a", 0).unwrap().unwrap()), "1");
    assert_eq!(view.get(b"b", 0).unwrap(), None);
    assert_eq!(view.sizes().versions, 1);
    let handle = std::thread::spawn(move || {
        let mut out = Vec::new();
        view.encode(&mut out).unwrap();
        out
    });
    let bytes = handle.join().unwrap();
    assert_eq!(decode(&bytes).unwrap().current_revision(), 2);
    assert_eq!(value(&get(&s, "a", 0).unwrap()), "2");
}

#[test]
fn a_batch_reads_its_own_writes() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    let mut b = s.begin();
    b.put(b"b", &b"2"[..], 0).unwrap();
    let r = b.range(&range(b"a", b"\0")).unwrap();
    assert_eq!((keys(&r), r.read_at), (vec!["a".into(), "b".into()], 3));
    let r = b
        .range(&RangeRequest {
            rev: 2,
            ..range(b"a", b"\0")
        })
        .unwrap();
    assert_eq!(keys(&r), ["a"]);
    let gone = b.delete_range(b"a", b"\0").unwrap();
    assert_eq!(gone.len(), 2);
    assert_eq!(b.range(&range(b"a", b"\0")).unwrap().count, 0);
}

#[test]
fn leases_attach_keys_and_a_revoke_deletes_them() {
    let mut s = Store::new();
    let mut b = s.begin();
    b.put(b"x", &b"1"[..], 7).unwrap();
    b.put(b"y", &b"1"[..], 7).unwrap();
    b.put(b"z", &b"1"[..], 8).unwrap();
    b.commit();
    let names = |v: Vec<Arc<[u8]>>| v.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
    assert_eq!(names(s.leased_keys(7)), [b"x".to_vec(), b"y".to_vec()]);
    assert_eq!(get(&s, "x", 0).unwrap().lease, 7);
    // A put moves the key to its new lease (0: none).
    let mut b = s.begin();
    b.put(b"y", &b"2"[..], 0).unwrap();
    b.commit();
    assert_eq!(names(s.leased_keys(7)), [b"x".to_vec()]);
    let mut b = s.begin();
    let gone = b.revoke(7).unwrap();
    assert_eq!(b.commit().revision, 4);
    assert_eq!(gone.len(), 1);
    assert_eq!(get(&s, "x", 0), None);
    assert!(s.leased_keys(7).is_empty());
    assert_eq!(names(s.leased_keys(8)), [b"z".to_vec()]);
    // The lease index survives a snapshot.
    let restored = round_trip(&s);
    assert_eq!(names(restored.leased_keys(8)), [b"z".to_vec()]);
}

#[test]
fn bad_keys_and_values_are_refused_and_change_nothing() {
    let mut s = Store::new();
    let mut b = s.begin();
    assert_eq!(b.put(b"", &b"v"[..], 0), Err(Error::EmptyKey));
    let long = vec![b'k'; MAX_KEY + 1];
    assert_eq!(
        b.put(&long, &b"v"[..], 0),
        Err(Error::KeyTooLong { len: MAX_KEY + 1 })
    );
    let big = vec![0u8; MAX_VALUE + 1];
    assert_eq!(
        b.put(b"k", big, 0),
        Err(Error::ValueTooLong { len: MAX_VALUE + 1 })
    );
    assert_eq!(b.commit().changes, 0);
    assert_eq!(s.current_revision(), 1);
}

#[test]
fn sizes_count_live_keys_and_retained_history() {
    let mut s = Store::new();
    put(&mut s, "ab", "1234");
    put(&mut s, "ab", "12");
    put(&mut s, "c", "x");
    assert_eq!(
        s.sizes(),
        Sizes {
            keys: 2,
            bytes: 2 + 2 + 1 + 1,
            versions: 3,
            history_bytes: 6 + 4 + 2
        }
    );
    del(&mut s, "c");
    assert_eq!(
        (s.sizes().keys, s.sizes().bytes, s.sizes().versions),
        (1, 4, 4)
    );
    s.compact(5).unwrap();
    assert_eq!(
        s.sizes(),
        Sizes {
            keys: 1,
            bytes: 4,
            versions: 1,
            history_bytes: 4
        }
    );
}

pub(super) fn round_trip(s: &Store) -> Store {
    let mut bytes = Vec::new();
    s.encode(&mut bytes).unwrap();
    let back = decode(&bytes).unwrap();
    let mut again = Vec::new();
    back.encode(&mut again).unwrap();
    assert_eq!(bytes, again, "decode then encode gives the same bytes");
    back
}

/// A store with some history: overwrites, deletes, re-creates, leases and
/// one compaction.
pub(super) fn sample() -> Store {
    let mut s = Store::new();
    for i in 0..30u64 {
        let mut b = s.begin();
        let k = format!("key{}", i % 7);
        b.put(k.as_bytes(), format!("value{i}").into_bytes(), i % 3)
            .unwrap();
        if i % 5 == 4 {
            b.delete_range(format!("key{}", (i + 3) % 7).as_bytes(), b"")
                .unwrap();
        }
        b.commit();
    }
    s.compact(12).unwrap();
    s
}

#[test]
fn a_snapshot_keeps_the_history_reads_and_events_work_after_decoding() {
    let s = sample();
    let back = round_trip(&s);
    assert_eq!(back.current_revision(), s.current_revision());
    assert_eq!(back.compacted_revision(), 12);
    assert_eq!(back.sizes(), s.sizes());
    for rev in 12..=s.current_revision() {
        let req = RangeRequest {
            rev,
            ..range(b"a", b"\0")
        };
        assert_eq!(back.range(&req), s.range(&req), "read at {rev}");
    }
    let req = EventRequest {
        from: Rev::at(13),
        key: b"\0",
        end: b"\0",
        prev_kv: true,
        ..Default::default()
    };
    assert_eq!(back.events(&req), s.events(&req));
    assert!(!back.events(&req).unwrap().events.is_empty());
    // The decoded store goes on: writes, compaction.
    let mut back = back;
    put(&mut back, "key1", "after");
    assert_eq!(back.current_revision(), s.current_revision() + 1);
    assert!(back.compact(back.current_revision()).unwrap() > 0);
    // decode_from reads exactly the snapshot, leaving what follows.
    let mut bytes = Vec::new();
    s.encode(&mut bytes).unwrap();
    bytes.extend_from_slice(b"next");
    let mut r = &bytes[..];
    let from_reader = decode_from(&mut r).unwrap();
    assert_eq!(from_reader.sizes(), s.sizes());
    assert_eq!(r, b"next");
}

#[test]
fn an_empty_store_round_trips() {
    let s = round_trip(&Store::new());
    assert_eq!((s.current_revision(), s.sizes()), (1, Sizes::default()));
}

#[test]
fn a_truncated_snapshot_is_refused_at_every_length() {
    let mut bytes = Vec::new();
    sample().encode(&mut bytes).unwrap();
    for len in 0..bytes.len() {
        match decode(&bytes[..len]) {
            Err(SnapshotError::Truncated { .. }) => {}
            other => panic!("cut at {len} of {}: {other:?}", bytes.len()),
        }
        let mut r = &bytes[..len];
        assert!(decode_from(&mut r).is_err(), "reader cut at {len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        decode(&longer),
        Err(SnapshotError::TrailingBytes { .. })
    ));
}

#[test]
fn every_flipped_bit_of_a_snapshot_is_detected() {
    let mut bytes = Vec::new();
    sample().encode(&mut bytes).unwrap();
    for i in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut bad = bytes.clone();
            bad[i] ^= bit;
            assert!(
                decode(&bad).is_err(),
                "flip {bit:#x} at byte {i} went unnoticed"
            );
        }
    }
}

/// Re-seals a snapshot whose body was edited: fixes the CRC.
pub(super) fn reseal(bytes: &mut [u8]) {
    let n = bytes.len();
    if n < 4 {
        return;
    }
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn a_well_sealed_snapshot_that_breaks_an_invariant_is_refused_with_its_reason() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "b", "2"); // 3
    let mut good = Vec::new();
    s.encode(&mut good).unwrap();
    // Layout: 24 header bytes; key "a" record: tag(1) len(4) "a"(1), then
    // its put: tag(1) main(8) sub(4) create(8) version(8) lease(8) len(4) "1".
    let key_a = 24;
    let put_a = key_a + 6;
    let main_a = put_a + 1;
    let case = |edit: &dyn Fn(&mut Vec<u8>), want: Problem| {
        let mut bad = good.clone();
        edit(&mut bad);
        reseal(&mut bad);
        match decode(&bad) {
            Err(SnapshotError::Invalid { problem, .. }) => assert_eq!(problem, want),
            other => panic!("want {want:?}, got {other:?}"),
        }
    };
    case(&|b| b[key_a + 5] = b'c', Problem::KeysOutOfOrder);
    case(
        &|b| b[main_a..main_a + 8].copy_from_slice(&9u64.to_le_bytes()),
        Problem::RevisionOutOfRange,
    );
    case(
        &|b| {
            b[main_a..main_a + 8].copy_from_slice(&3u64.to_le_bytes());
            b[main_a + 12..main_a + 20].copy_from_slice(&3u64.to_le_bytes());
        },
        Problem::DuplicateRevision,
    );
    case(&|b| b[main_a + 20] = 2, Problem::GenerationMismatch); // version 2 at creation
    case(&|b| b[put_a] = 9, Problem::UnknownTag(9));
    case(&|b| b[16] = 9, Problem::CompactedAboveCurrent);
    let n = good.len();
    case(&|b| b[n - 20] = 5, Problem::CountMismatch);
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(decode(&bad), Err(SnapshotError::BadMagic)));
    let mut bad = good.clone();
    bad[4] = 2;
    assert!(matches!(
        decode(&bad),
        Err(SnapshotError::UnsupportedVersion { version: 2 })
    ));
    let mut bad = good.clone();
    bad[key_a + 1..key_a + 5].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&bad),
        Err(SnapshotError::TooLong {
            field: Field::Key,
            ..
        })
    ));
}
