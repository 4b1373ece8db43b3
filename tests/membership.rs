//! Membership at runtime (`docs/PROTOCOL.md`: ADD_NODE, REMOVE_NODE,
//! TRANSFER_LEADER, --join), each under two running loads: a write stream
//! whose acknowledged writes must all be there at the end, and the fault
//! suite's GET/PUT/CAS workload, whose history must be linearizable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use raftnode_testkit::process::checker::{self, Budget};
use raftnode_testkit::process::history::counts;
use raftnode_testkit::process::workload::{Workload, WorkloadConfig};
use raftnode_testkit::process::{serial, Client, Cluster};

const FAST: &[&str] = &["--tick-ms", "20", "--request-timeout-ms", "2000"];
const LONG: Duration = Duration::from_secs(15);

/// The fault suite's workload on `ids`: 5 clients doing GET, PUT and CAS on
/// rotating keys, each on a connection to a random one of those nodes.
fn checked_workload(c: &Cluster, ids: &[u64], seed: u64) -> Workload {
    let nodes = ids
        .iter()
        .map(|&id| (id, c.node(id).client_addr.clone()))
        .collect();
    let cfg = WorkloadConfig {
        clients: 5,
        seed,
        ..WorkloadConfig::default()
    };
    Workload::start(cfg, nodes)
}

/// Stops the workload and checks its history key by key.
fn assert_linearizable(w: Workload, what: &str) {
    let ops = w.stop().ops();
    let n = counts(&ops);
    let report = checker::check_history(&ops, Budget::default());
    println!(
        "{what}: checked workload ops ok={} failed={} indeterminate={} keys={} linearizable={}",
        n.ok,
        n.failed,
        n.indeterminate,
        report.keys,
        report.verdict()
    );
    assert!(n.ok > 50, "{what}: the checked workload hardly ran: {n:?}");
    let mut why = String::new();
    for (key, v) in report.violations.iter().chain(&report.unknown).take(3) {
        why.push_str(&checker::explain(&ops, key, v));
        why.push('\n');
    }
    assert!(
        report.linearizable(),
        "{what}: history not linearizable\n{why}"
    );
}

/// A cluster of `initial` bootstrapped nodes plus `total - initial` nodes
/// prepared (not started) to join with `--join`.
fn cluster_with_joiners(initial: u64, total: u64) -> Cluster {
    let mut c = Cluster::new(total, FAST);
    let first: Vec<String> = (1..=initial)
        .map(|id| format!("{id}={}", c.node(id).peer_addr))
        .collect();
    let first = first.join(",");
    for id in 1..=total {
        let n = c.node_mut(id);
        if id <= initial {
            n.peers = first.clone();
            n.spawn();
        } else {
            n.args.push("--join".into());
        }
    }
    c
}

/// Writers that put unique keys through the given nodes until stopped,
/// remembering every write that was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addrs: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let threads = addrs
            .into_iter()
            .enumerate()
            .map(|(w, addr)| {
                let (stop, acked) = (stop.clone(), acked.clone());
                thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut c) = Client::connect(&addr) else {
                            thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        c.set_timeout(Duration::from_secs(4));
                        while !stop.load(Ordering::Relaxed) {
                            i += 1;
                            let (k, v) = (format!("w{w}-{i}"), format!("v{i}"));
                            match c.request(&format!("PUT {k} {v}")) {
                                Ok(r) if r == "OK" => {
                                    acked.lock().unwrap().insert(k, v);
                                }
                                Ok(_) => thread::sleep(Duration::from_millis(10)),
                                Err(_) => break, // node gone: reconnect
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            threads,
        }
    }

    fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.acked)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

fn members(c: &Cluster, id: u64) -> String {
    c.node(id)
        .status()
        .map(|s| s.fields.get("members").cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// Waits until every listed node reports `want` as its voters.
fn wait_members(c: &Cluster, ids: &[u64], want: &str) {
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline {
        if ids.iter().all(|&id| members(c, id) == want) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let seen: Vec<String> = ids
        .iter()
        .map(|&id| format!("{id}: {}", members(c, id)))
        .collect();
    panic!("members never became {want}: {seen:?}\n{}", c.logs());
}

/// Every acknowledged write is readable with its value on every listed node.
fn check_acked(c: &Cluster, ids: &[u64], acked: &BTreeMap<String, String>) {
    assert!(!acked.is_empty(), "the load made no progress");
    for &id in ids {
        let mut cl = c.node(id).client().unwrap();
        for (k, v) in acked {
            let r = cl.request(&format!("GET {k}")).unwrap();
            assert_eq!(
                r,
                format!("VALUE {v}"),
                "node {id}: acknowledged write {k} missing\n{}",
                c.logs()
            );
        }
    }
}

fn request_ok(c: &Cluster, via: u64, line: &str) {
    let r = c.request_until(via, line, |r| r == "OK", LONG);
    assert_eq!(
        r.as_deref(),
        Some("OK"),
        "{line} via node {via}\n{}",
        c.logs()
    );
}

fn restart_all(c: &mut Cluster, ids: &[u64]) {
    for &id in ids {
        c.node_mut(id).kill();
    }
    for &id in ids {
        c.node_mut(id).spawn();
    }
    c.expect_leader(LONG, "a leader after restarting everyone");
}

/// Reference: Raft thesis §4.1 (single-server changes); the learner step is
/// this project's addition (ADD_NODE returns once the learner is promoted).
#[test]
fn grow_3_to_5_then_shrink_to_3_removing_the_leader_under_load() {
    let _g = serial();
    let mut c = cluster_with_joiners(3, 5);
    c.expect_leader(LONG, "a leader");
    let load = Load::start((1..=3).map(|id| c.node(id).client_addr.clone()).collect());
    let checked = checked_workload(&c, &[1, 2, 3], 11);
    thread::sleep(Duration::from_millis(300));

    for id in [4, 5] {
        c.node_mut(id).spawn();
        let line = format!("ADD_NODE {id} {}", c.node(id).peer_addr);
        request_ok(&c, 1, &line);
    }
    wait_members(&c, &[1, 2, 3, 4, 5], "1,2,3,4,5");

    let leader = c.expect_leader(LONG, "a leader");
    let via = if leader == 1 { 2 } else { 1 };
    request_ok(&c, via, &format!("REMOVE_NODE {leader}"));
    let other = (1..=3).find(|&id| id != leader && id != via).unwrap();
    request_ok(&c, via, &format!("REMOVE_NODE {other}"));
    let mut remaining: Vec<u64> = (1..=5).filter(|&id| id != leader && id != other).collect();
    remaining.sort();
    let want = remaining
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    wait_members(&c, &remaining, &want);
    let new_leader = c.expect_leader(LONG, "a leader after removing the old one");
    assert!(remaining.contains(&new_leader));
    let acked = load.finish();
    assert_linearizable(checked, "grow/shrink");
    c.node_mut(leader).kill();
    c.node_mut(other).kill();

    check_acked(&c, &remaining, &acked);
    // Membership is recovered from the log (and snapshot) after a restart.
    restart_all(&mut c, &remaining);
    wait_members(&c, &remaining, &want);
    check_acked(&c, &remaining, &acked);
    println!(
        "grow/shrink: {} acknowledged writes checked on {want}",
        acked.len()
    );
}

#[test]
fn replace_a_member_and_restart_everyone() {
    let _g = serial();
    let mut c = cluster_with_joiners(3, 4);
    c.expect_leader(LONG, "a leader");
    let load = Load::start((1..=3).map(|id| c.node(id).client_addr.clone()).collect());
    let checked = checked_workload(&c, &[1, 2, 3], 12);
    c.node_mut(4).spawn();
    request_ok(&c, 2, &format!("ADD_NODE 4 {}", c.node(4).peer_addr));
    request_ok(&c, 2, "REMOVE_NODE 1");
    wait_members(&c, &[2, 3, 4], "2,3,4");
    thread::sleep(Duration::from_millis(300));
    let acked = load.finish();
    assert_linearizable(checked, "replace");
    c.node_mut(1).kill();
    check_acked(&c, &[2, 3, 4], &acked);
    restart_all(&mut c, &[2, 3, 4]);
    wait_members(&c, &[2, 3, 4], "2,3,4");
    check_acked(&c, &[2, 3, 4], &acked);
}

#[test]
fn a_conf_change_commits_while_a_member_is_cut_off_and_it_catches_up_after() {
    let _g = serial();
    let mut c = cluster_with_joiners(3, 4);
    let leader = c.expect_leader(LONG, "a leader");
    let cut = (1..=3).find(|&id| id != leader).unwrap();
    let via = (1..=3).find(|&id| id != leader && id != cut).unwrap();
    let load = Load::start(vec![
        c.node(leader).client_addr.clone(),
        c.node(via).client_addr.clone(),
    ]);
    let checked = checked_workload(&c, &[leader, via], 13);
    c.node_mut(cut).pause(); // a partition of one: no traffic in or out
    c.node_mut(4).spawn();
    request_ok(&c, via, &format!("ADD_NODE 4 {}", c.node(4).peer_addr));
    wait_members(&c, &[leader, via, 4], "1,2,3,4");
    c.node_mut(cut).resume();
    wait_members(&c, &[1, 2, 3, 4], "1,2,3,4");
    let acked = load.finish();
    assert_linearizable(checked, "conf change with a member cut off");
    c.wait_converged(1, LONG).expect("all four converge");
    check_acked(&c, &[1, 2, 3, 4], &acked);
}

#[test]
fn transfer_leader_moves_leadership_and_a_removed_node_stays_quiet() {
    let _g = serial();
    let mut c = cluster_with_joiners(3, 3);
    let leader = c.expect_leader(LONG, "a leader");
    let target = (1..=3).find(|&id| id != leader).unwrap();
    let via = (1..=3).find(|&id| id != leader && id != target).unwrap();
    request_ok(&c, via, &format!("TRANSFER_LEADER {target}"));
    assert_eq!(c.wait_leader(LONG), Some(target));

    // Remove a follower; it must not disturb the others afterwards.
    let removed = (1..=3).find(|&id| id != target).unwrap();
    request_ok(&c, target, &format!("REMOVE_NODE {removed}"));
    let rest: Vec<u64> = (1..=3).filter(|&id| id != removed).collect();
    let want = rest
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    wait_members(&c, &rest, &want);
    let term = c.node(target).status().unwrap().num("term");
    thread::sleep(Duration::from_millis(1500)); // many election timeouts
    let s = c.node(target).status().unwrap();
    assert_eq!(s.role(), "leader");
    assert_eq!(
        s.num("term"),
        term,
        "the removed node disrupted the cluster"
    );
    assert!(c
        .node(removed)
        .log_tail(200)
        .contains("was removed from the cluster"));
    c.node_mut(removed).kill();
}
