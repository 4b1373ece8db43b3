//! Regression tests for bugs the crash-and-fault suite (`tests/fault.rs`,
//! `tests/failpoints.rs`) found, one test per bug, each as small and as
//! deterministic as a process test can be.

use std::time::Duration;

use raftnode_testkit::process::{serial, Cluster};

/// Bug: request ids restarted at 1 with every process, so after a restart
/// a node answered a new client's request with the outcome of an entry its
/// previous incarnation had proposed under the same id (the fault suite saw
/// a `PUT` answered `MISMATCH v4`, and a `CAS` answered `OK` that never
/// applied).
///
/// Five nodes, so that the leader cannot commit while three are paused:
/// node F (a follower, freshly started, so its ids start at 1) forwards
/// writes that the leader appends but cannot commit; F is killed and
/// restarted and forwards new requests, which get the same ids; then the
/// paused nodes resume, everything commits, and F applies its old entries
/// first. Elections are slow (5 s) so the leader stays in place meanwhile.
#[test]
fn after_a_restart_entries_of_the_old_incarnation_do_not_answer_new_requests() {
    let _g = serial();
    let mut c = Cluster::start(5, &["--tick-ms", "100", "--election-ticks", "50"]);
    let leader = c.expect_leader(Duration::from_secs(20), "a leader");
    let f = if leader == 1 { 2 } else { 1 };
    let others: Vec<u64> = (1..=5).filter(|&i| i != leader && i != f).collect();
    c.wait_converged(5, Duration::from_secs(10))
        .expect("all caught up");
    for &o in &others {
        c.node_mut(o).pause();
    }
    let mut old = c.node(f).client().unwrap();
    let mut lines = String::new();
    for i in 0..20 {
        lines.push_str(&format!("PUT old-{i} x\n"));
    }
    old.send_raw(lines.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.node_mut(f).kill();
    drop(old);
    c.node_mut(f).spawn();
    // Wait until F knows the leader, so its requests are forwarded at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.node(f).status().map(|s| s.num("leader")) != Some(leader) {
        assert!(
            std::time::Instant::now() < deadline,
            "F never learned the leader"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cl = c.node(f).client().unwrap();
    let mut lines = String::new();
    for i in 0..20 {
        lines.push_str(&format!("CAS new-{i} nothing y\n"));
    }
    cl.send_raw(lines.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for &o in &others {
        c.node_mut(o).resume();
    }
    for i in 0..20 {
        let r = cl.read_line().unwrap();
        assert!(
            r == "NOT_FOUND" || r.starts_with("ERR "),
            "CAS new-{i} on an absent key got another request's answer: {r}"
        );
    }
    for i in 0..20 {
        let r = c.request_until(
            f,
            &format!("GET new-{i}"),
            |r| !r.starts_with("ERR"),
            Duration::from_secs(10),
        );
        assert_eq!(r.as_deref(), Some("NOT_FOUND"));
    }
}
