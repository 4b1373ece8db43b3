//! Graceful stop (`docs/PROTOCOL.md` §1, "Stopping"): SIGTERM hands
//! leadership over, answers or fails the requests in flight, closes the WAL
//! and exits 0; a rolling restart of a whole cluster under load never
//! leaves clients without a leader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use raftnode_testkit::process::{serial, Client, Cluster};

const FAST: &[&str] = &["--tick-ms", "20"];

#[test]
fn sigterm_exits_0_and_a_restart_finds_every_acknowledged_write() {
    let _g = serial();
    let mut c = Cluster::start(1, FAST);
    c.expect_leader(Duration::from_secs(10), "a leader");
    let mut cl = c.node(1).client().unwrap();
    for i in 0..100 {
        assert_eq!(cl.request(&format!("PUT k{i} v{i}")).unwrap(), "OK");
    }
    let status = c.node_mut(1).terminate(Duration::from_secs(10));
    let status = status.expect("the node did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", c.logs());
    assert!(
        c.node(1).log_tail(20).contains("closing the WAL"),
        "{}",
        c.logs()
    );
    // The connection was closed by the stop.
    assert!(cl.request("PING").is_err());
    c.node_mut(1).spawn();
    c.expect_leader(Duration::from_secs(10), "a leader again");
    let mut cl = c.node(1).client().unwrap();
    for i in 0..100 {
        assert_eq!(
            cl.request(&format!("GET k{i}")).unwrap(),
            format!("VALUE v{i}")
        );
    }
}

#[test]
fn a_follower_stops_cleanly_and_its_open_connection_sees_no_wrong_answer() {
    let _g = serial();
    let mut c = Cluster::start(3, FAST);
    let leader = c.expect_leader(Duration::from_secs(10), "a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    // Hold a connection open to see what it is told once the node stops.
    let mut cl = c.node(follower).client().unwrap();
    assert_eq!(cl.request("PUT a 1").unwrap(), "OK");
    let status = c.node_mut(follower).terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "follower did not stop cleanly: {status:?}\n{}",
        c.logs()
    );
    // Whatever the connection saw, it was never a wrong answer (an error
    // means the stop closed it).
    if let Ok(r) = cl.request("GET a") {
        assert!(
            r == "VALUE 1" || r.starts_with("ERR UNAVAILABLE"),
            "unexpected {r:?}"
        );
    }
}

/// What the load saw during a rolling restart.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    /// Errors by code.
    errors: BTreeMap<String, u64>,
    /// Times at which a write was acknowledged.
    acks_at: Vec<Instant>,
}

#[test]
fn rolling_restart_under_load_never_leaves_clients_without_a_leader() {
    let _g = serial();
    let mut c = Cluster::start(3, FAST);
    c.expect_leader(Duration::from_secs(10), "a leader");
    let addrs: Vec<String> = c.nodes.values().map(|n| n.client_addr.clone()).collect();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6usize {
        let (addrs, seen, stop) = (addrs.clone(), seen.clone(), stop.clone());
        writers.push(thread::spawn(move || {
            let mut at = w % addrs.len();
            let mut cl: Option<Client> = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Some(conn) = cl.as_mut() else {
                    cl = Client::connect_timeout(&addrs[at], Duration::from_millis(300)).ok();
                    if cl.is_none() {
                        at = (at + 1) % addrs.len();
                        thread::sleep(Duration::from_millis(10));
                    }
                    continue;
                };
                conn.set_timeout(Duration::from_secs(6));
                let key = format!("w{w}-{i}");
                match conn.request(&format!("PUT {key} x")) {
                    Ok(r) if r == "OK" => {
                        let mut s = seen.lock().unwrap();
                        s.acked.push(key);
                        s.acks_at.push(Instant::now());
                        i += 1;
                    }
                    Ok(r) => {
                        let code = r.split(' ').take(2).collect::<Vec<_>>().join(" ");
                        *seen.lock().unwrap().errors.entry(code).or_default() += 1;
                        i += 1; // the outcome may be unknown: use a fresh key
                        if r.starts_with("ERR UNAVAILABLE") {
                            cl = None; // this node is stopping: go elsewhere
                            at = (at + 1) % addrs.len();
                        }
                    }
                    Err(_) => {
                        i += 1;
                        cl = None;
                        at = (at + 1) % addrs.len();
                    }
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(500));
    let mut stops = Vec::new();
    for id in 1..=3u64 {
        let was_leader = c.node(id).status().is_some_and(|s| s.role() == "leader");
        let t0 = Instant::now();
        let status = c.node_mut(id).terminate(Duration::from_secs(15));
        let took = t0.elapsed();
        assert!(
            status.is_some_and(|s| s.success()),
            "node {id} did not stop cleanly: {status:?}\n{}",
            c.logs()
        );
        stops.push((id, was_leader, took));
        c.node_mut(id).spawn();
        let applied = c.wait_converged(1, Duration::from_secs(20));
        assert!(
            applied.is_some(),
            "node {id} did not catch up\n{}",
            c.logs()
        );
        thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let mut acks = seen.acks_at.clone();
    acks.sort();
    let stall = acks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "rolling restart: {} writes acknowledged, errors {:?}, longest write stall {:?}, stops {:?}",
        seen.acked.len(),
        seen.errors,
        stall,
        stops
    );
    assert!(
        !seen.errors.keys().any(|k| k.starts_with("ERR NO_LEADER")),
        "a request saw no leader: {:?}\n{}",
        seen.errors,
        c.logs()
    );
    assert!(
        stops.iter().any(|(_, leader, _)| *leader),
        "no leader was stopped"
    );
    assert!(
        seen.acked.len() > 100,
        "too few writes: {}",
        seen.acked.len()
    );
    // Every acknowledged write is there, on every node.
    for n in c.nodes.values() {
        let mut cl = n.client().unwrap();
        for key in seen.acked.iter().step_by(7) {
            assert_eq!(
                cl.request(&format!("GET {key}")).unwrap(),
                "VALUE x",
                "{key} on node {}",
                n.id
            );
        }
    }
}
