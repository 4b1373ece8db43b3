//! The linearizability checker on hand-written histories: it must accept
//! what a correct register may do, reject what it may not, treat
//! indeterminate writes as "some time after invocation, or never", and give
//! up with "unknown" rather than search forever.

use std::collections::BTreeMap;

use raftnode_testkit::process::checker::{
    check, check_history, lost_writes, prepare, Budget, Verdict,
};
use raftnode_testkit::process::history::{Op, OpKind, Outcome};

/// An operation on key "k": `[invoke, complete]` in ms (None: indeterminate).
fn op(process: u64, invoke: u64, complete: Option<u64>, kind: OpKind, outcome: Outcome) -> Op {
    Op {
        process,
        node: 1,
        key: "k".into(),
        kind,
        invoke: invoke * 1_000_000,
        complete: complete.map(|c| c * 1_000_000),
        outcome,
        reply: String::new(),
    }
}

fn put(p: u64, i: u64, c: Option<u64>, v: &str) -> Op {
    let out = if c.is_some() {
        Outcome::Ok
    } else {
        Outcome::Unknown
    };
    op(p, i, c, OpKind::Put(v.into()), out)
}

fn get(p: u64, i: u64, c: u64, v: Option<&str>) -> Op {
    op(
        p,
        i,
        Some(c),
        OpKind::Get,
        Outcome::Read(v.map(String::from)),
    )
}

fn cas(p: u64, i: u64, c: Option<u64>, e: &str, n: &str, out: Outcome) -> Op {
    op(
        p,
        i,
        c,
        OpKind::Cas {
            expected: e.into(),
            new: n.into(),
        },
        out,
    )
}

fn verdict(ops: &[Op]) -> Verdict {
    let refs: Vec<&Op> = ops.iter().collect();
    check(&prepare(&refs), Budget::default())
}

fn linearizable(ops: &[Op]) -> bool {
    verdict(ops) == Verdict::Linearizable
}

#[test]
fn sequential_register_histories() {
    assert!(linearizable(&[
        get(0, 0, 1, None),
        put(0, 2, Some(3), "a"),
        get(1, 4, 5, Some("a")),
    ]));
    assert!(!linearizable(&[
        put(0, 0, Some(1), "a"),
        get(1, 2, 3, None)
    ]));
    assert!(!linearizable(&[
        put(0, 0, Some(1), "a"),
        get(1, 2, 3, Some("b"))
    ]));
}

#[test]
fn concurrent_writes_may_take_effect_in_either_order_but_reads_must_agree() {
    // Two overlapping writes, then two reads that see them in opposite
    // orders: the classic stale read.
    let h = [
        put(0, 0, Some(10), "a"),
        put(1, 0, Some(10), "b"),
        get(2, 11, 12, Some("a")),
        get(3, 13, 14, Some("b")),
    ];
    assert!(!linearizable(&h));
    // Reads inside the writes' window may see either.
    let h = [
        put(0, 0, Some(10), "a"),
        put(1, 0, Some(10), "b"),
        get(2, 1, 2, Some("b")),
        get(3, 3, 4, Some("a")),
    ];
    assert!(linearizable(&h));
}

#[test]
fn cas_outcomes_follow_the_register() {
    let h = [
        put(0, 0, Some(1), "a"),
        cas(1, 2, Some(3), "a", "b", Outcome::Ok),
        cas(2, 4, Some(5), "a", "c", Outcome::Mismatch("b".into())),
        get(3, 6, 7, Some("b")),
    ];
    assert!(linearizable(&h));
    let h = [
        put(0, 0, Some(1), "a"),
        cas(1, 2, Some(3), "x", "b", Outcome::Ok),
    ];
    assert!(!linearizable(&h));
    assert!(linearizable(&[cas(
        1,
        0,
        Some(1),
        "x",
        "b",
        Outcome::NotFound
    )]));
    assert!(!linearizable(&[
        put(0, 0, Some(1), "a"),
        cas(1, 2, Some(3), "x", "b", Outcome::NotFound)
    ]));
}

#[test]
fn an_indeterminate_write_may_take_effect_late_or_never() {
    // It took effect long after its invocation...
    let h = [
        put(0, 0, None, "a"),
        get(1, 10, 11, None),
        get(1, 20, 21, Some("a")),
        get(1, 30, 31, Some("a")),
    ];
    assert!(linearizable(&h));
    // ...or never...
    let h = [put(0, 0, None, "a"), get(1, 10, 11, None)];
    assert!(linearizable(&h));
    // ...but not before it was invoked, and only once.
    let h = [get(1, 0, 1, Some("a")), put(0, 2, None, "a")];
    assert!(!linearizable(&h));
    let h = [
        put(0, 0, None, "a"),
        get(1, 10, 11, Some("a")),
        put(2, 12, Some(13), "b"),
        get(1, 14, 15, Some("a")),
    ];
    assert!(!linearizable(&h));
}

#[test]
fn an_indeterminate_cas_takes_effect_only_if_it_matched() {
    let h = [
        put(0, 0, Some(1), "a"),
        cas(1, 2, None, "a", "b", Outcome::Unknown),
        get(2, 10, 11, Some("b")),
    ];
    assert!(linearizable(&h));
    let h = [
        put(0, 0, Some(1), "x"),
        cas(1, 2, None, "a", "b", Outcome::Unknown),
        get(2, 10, 11, Some("b")),
    ];
    assert!(!linearizable(&h));
}

#[test]
fn unobserved_indeterminate_writes_are_dropped_without_changing_the_verdict() {
    let mut h = vec![put(0, 0, Some(1), "a")];
    for i in 0..200 {
        h.push(put(10 + i, 2 + i, None, &format!("lost{i}")));
    }
    h.push(get(1, 500, 501, Some("a")));
    let refs: Vec<&Op> = h.iter().collect();
    let p = prepare(&refs);
    assert_eq!(p.dropped_indeterminate, 200);
    assert_eq!(check(&p, Budget::default()), Verdict::Linearizable);
    h.push(get(1, 502, 503, Some("lost7")));
    h.push(get(1, 504, 505, Some("a")));
    assert!(
        !linearizable(&h),
        "lost7 took effect after a, so a cannot come back"
    );
}

#[test]
fn a_search_that_outgrows_its_budget_is_unknown_not_a_pass() {
    // Many concurrent observed indeterminate writes and reads that force
    // the search to try orders.
    let mut h = Vec::new();
    for i in 0..40 {
        h.push(put(i, i, None, &format!("v{i}")));
    }
    for i in 0..40 {
        h.push(get(
            100 + i,
            1000 + 2 * i,
            1001 + 2 * i,
            Some(&format!("v{}", (i * 7) % 40)),
        ));
    }
    let refs: Vec<&Op> = h.iter().collect();
    let tiny = Budget {
        steps: 1000,
        memo: 1000,
    };
    assert!(matches!(
        check(&prepare(&refs), tiny),
        Verdict::Unknown { .. }
    ));
}

#[test]
fn a_violation_points_at_the_operation_that_could_not_be_placed() {
    let h = vec![
        put(0, 0, Some(1), "a"),
        put(0, 2, Some(3), "b"),
        get(1, 4, 5, Some("a")),
    ];
    let r = check_history(&h, Budget::default());
    assert_eq!(r.verdict(), "no");
    match &r.violations[0].1 {
        Verdict::Violation { stuck, .. } => assert_eq!(h[*stuck].kind, OpKind::Get),
        v => panic!("{v:?}"),
    }
}

#[test]
fn lost_writes_are_acknowledged_writes_nobody_overwrote() {
    let h = vec![
        put(0, 0, Some(1), "a"),
        put(0, 2, Some(3), "b"),
        put(1, 2, None, "c"),
    ];
    let fin = |v: &str| BTreeMap::from([("k".to_string(), Some(v.to_string()))]);
    assert!(lost_writes(&h, &fin("b")).is_empty());
    // "c" may have come after "b".
    assert!(lost_writes(&h, &fin("c")).is_empty());
    // "a" as the final value, with no write that may follow "b": "b" was
    // acknowledged after "a" and is lost.
    let lost = lost_writes(&h[..2], &fin("a"));
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(lost[0].contains("PUT b"));
}
