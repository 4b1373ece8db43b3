//! A member whose disk was damaged or replaced repairs itself from its
//! peers when restarted with the same command line (README, "Storage
//! faults"); a lone voter, or an empty node the cluster does not list,
//! refuses to start instead. The random version of these runs in the fault
//! suite's disk nemesis; here each case is driven once, on purpose.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raftnode_testkit::process::{serial, torn, Client, Cluster, Node};

const FAST: &[&str] = &["--tick-ms", "20"];
const LONG: Duration = Duration::from_secs(30);

/// Writes `n` keys through node `id`, pipelined; every reply must be OK.
fn load(c: &Cluster, id: u64, prefix: &str, n: usize) {
    let mut cl = c.node(id).client().expect("connect");
    cl.set_timeout(Duration::from_secs(10));
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut buf = Vec::new();
        for i in chunk {
            buf.extend_from_slice(format!("PUT {prefix}{i} value-{i}\n").as_bytes());
        }
        cl.send_raw(&buf).unwrap();
        for _ in chunk {
            assert_eq!(cl.read_line().unwrap(), "OK");
        }
    }
}

/// Every key `load` wrote reads back through node `id`.
fn check(c: &Cluster, id: u64, prefix: &str, n: usize) {
    let mut cl = c.node(id).client().expect("connect");
    cl.set_timeout(Duration::from_secs(10));
    for i in (0..n).step_by(7).chain([n - 1]) {
        assert_eq!(
            cl.request(&format!("GET {prefix}{i}")).unwrap(),
            format!("VALUE value-{i}"),
            "key {prefix}{i} through node {id}\n{}",
            c.logs()
        );
    }
}

fn follower_of(c: &Cluster, leader: u64) -> u64 {
    *c.nodes.keys().find(|&&id| id != leader).unwrap()
}

/// Waits until node `id` is a voter that is not recovering and has applied
/// `at_least`; returns how long that took.
fn wait_serving_voter(c: &Cluster, id: u64, at_least: u64) -> Duration {
    let start = Instant::now();
    while start.elapsed() < LONG {
        if let Some(s) = c.node(id).status() {
            let voter = s.fields["members"].split(',').any(|m| m == id.to_string());
            if voter && !s.fields.contains_key("recovering") && s.num("applied") >= at_least {
                return start.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "node {id} is not a serving voter after {LONG:?}\n{}",
        c.logs()
    );
}

/// Starts `n` and waits for it to exit (it must refuse to start); returns
/// what it logged.
fn refused_start(n: &mut Node, what: &str) -> String {
    let from = log_len(n);
    n.spawn();
    let deadline = Instant::now() + LONG;
    while !n.exited() {
        assert!(Instant::now() < deadline, "{what} started");
        std::thread::sleep(Duration::from_millis(20));
    }
    log_since(n, from)
}

/// The log text of node `id` since byte `from`.
fn log_since(n: &Node, from: u64) -> String {
    let text = std::fs::read(&n.log).unwrap_or_default();
    String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned()
}

/// The log text of node `id` since byte `from`, once it says the damage
/// marker is cleared. STATUS drops `recovering=1` as soon as the core ends
/// the recovery; the ready thread removes `wal/DAMAGE` and logs it once the
/// Ready that says so is persisted, a moment later.
fn log_once_recovered(n: &Node, from: u64) -> String {
    let start = Instant::now();
    loop {
        let log = log_since(n, from);
        if log.contains("recovery done") || start.elapsed() > LONG {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_len(n: &Node) -> u64 {
    std::fs::metadata(&n.log).map(|m| m.len()).unwrap_or(0)
}

/// Flips one bit of a record in the middle of the written part of the
/// newest segment.
fn flip_mid_log(data_dir: &Path) -> PathBuf {
    let seg = torn::newest_segment(data_dir).expect("a segment");
    let bytes = std::fs::read(&seg).unwrap();
    let (frames, _) = torn::frames(&bytes);
    assert!(
        frames.len() >= 3,
        "too few records to damage one in the middle of {}: {frames:?}",
        seg.display()
    );
    let at = frames[frames.len() / 2] as usize + 20;
    let mut damaged = bytes;
    damaged[at] ^= 0x10;
    std::fs::write(&seg, damaged).unwrap();
    seg
}

/// Files of `dir` (recursively) whose name contains `part`.
fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_named(&p, part));
        } else if p.file_name().unwrap().to_string_lossy().contains(part) {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_wiped_follower_recovers_instead_of_bootstrapping() {
    let _g = serial();
    let mut c = Cluster::start(3, FAST);
    let leader = c.expect_leader(LONG, "a leader");
    load(&c, leader, "w", 500);
    let f = follower_of(&c, leader);
    c.node_mut(f).kill();
    std::fs::remove_dir_all(&c.node(f).data_dir).unwrap();
    let commit = c.node(leader).status().unwrap().num("commit");
    let from = log_len(c.node(f));
    c.node_mut(f).spawn();
    let took = wait_serving_voter(&c, f, commit);
    let log = log_once_recovered(c.node(f), from);
    assert!(
        log.contains("recovering from its peers instead of bootstrapping"),
        "{log}"
    );
    assert!(!log.contains("bootstrapped a new cluster"), "{log}");
    assert!(log.contains("recovery done"), "{log}");
    println!("wiped follower {f}: serving voter {took:?} after its restart");
    check(&c, f, "w", 500);
    // It counts again: with the other follower down, writes still commit.
    let other = *c.nodes.keys().find(|&&id| id != leader && id != f).unwrap();
    c.node_mut(other).kill();
    load(&c, f, "after", 50);
    assert!(!c.node(f).data_dir.join("wal").join("DAMAGE").exists());
}

#[test]
fn a_flipped_bit_mid_log_is_set_aside_and_repaired_from_the_leader() {
    let _g = serial();
    let mut c = Cluster::start(3, FAST);
    let leader = c.expect_leader(LONG, "a leader");
    load(&c, leader, "m", 400);
    let f = follower_of(&c, leader);
    c.node_mut(f).kill();
    let seg = flip_mid_log(&c.node(f).data_dir);
    let commit = c.node(leader).status().unwrap().num("commit");
    let from = log_len(c.node(f));
    c.node_mut(f).spawn();
    let took = wait_serving_voter(&c, f, commit);
    let log = log_once_recovered(c.node(f), from);
    assert!(log.contains("damaged data in"), "{log}");
    assert!(log.contains("recovery done"), "{log}");
    println!(
        "follower {f} with a flipped bit in {}: serving voter {took:?} after its restart",
        seg.display()
    );
    let aside = files_named(&c.node(f).data_dir, ".corrupt");
    assert!(!aside.is_empty(), "the damaged bytes were not kept aside");
    check(&c, f, "m", 400);
    assert!(!c.node(f).data_dir.join("wal").join("DAMAGE").exists());
}

#[test]
fn two_followers_wiped_at_once_are_both_repaired_by_the_leader() {
    let _g = serial();
    // A long election timeout: the leader keeps leading while both
    // followers restart (they count as active for CheckQuorum while
    // recovering, but not while they are down).
    let mut c = Cluster::start(3, &["--tick-ms", "20", "--election-ticks", "100"]);
    let leader = c.expect_leader(LONG, "a leader");
    load(&c, leader, "t", 300);
    let commit = c.node(leader).status().unwrap().num("commit");
    let followers: Vec<u64> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    for &f in &followers {
        c.node_mut(f).kill();
        std::fs::remove_dir_all(&c.node(f).data_dir).unwrap();
    }
    for &f in &followers {
        c.node_mut(f).spawn();
    }
    for &f in &followers {
        wait_serving_voter(&c, f, commit);
    }
    assert_eq!(c.wait_leader(LONG), Some(leader), "{}", c.logs());
    for &f in &followers {
        check(&c, f, "t", 300);
    }
}

#[test]
fn a_damaged_lone_voter_refuses_to_start_until_told_to_accept_the_loss() {
    let _g = serial();
    let mut c = Cluster::start(1, FAST);
    c.expect_leader(LONG, "a leader");
    load(&c, 1, "s", 200);
    c.node_mut(1).kill();
    flip_mid_log(&c.node(1).data_dir);
    for attempt in 0..2 {
        let log = refused_start(c.node_mut(1), "a damaged lone voter");
        assert!(log.contains("only voter"), "attempt {attempt}: {log}");
        assert!(log.contains("DAMAGE"), "attempt {attempt}: {log}");
    }
    // The operator accepts the loss: the node starts with the good prefix.
    std::fs::remove_file(c.node(1).data_dir.join("wal").join("DAMAGE")).unwrap();
    c.node_mut(1).spawn();
    c.expect_leader(LONG, "the node starts once DAMAGE is removed");
    // What it kept is a prefix of the writes (they were applied in order),
    // shorter than all of them, and the node takes writes again.
    let mut cl = c.node(1).client().unwrap();
    let present: Vec<bool> = (0..200)
        .map(
            |i| match cl.request(&format!("GET s{i}")).unwrap().as_str() {
                "NOT_FOUND" => false,
                v => {
                    assert_eq!(v, format!("VALUE value-{i}"));
                    true
                }
            },
        )
        .collect();
    let kept = present.iter().take_while(|&&p| p).count();
    assert!(
        present[kept..].iter().all(|&p| !p),
        "not a prefix: {present:?}"
    );
    assert!(kept < 200, "the damaged record was not lost?");
    assert_eq!(cl.request("PUT after yes").unwrap(), "OK");
}

#[test]
fn an_empty_node_the_cluster_does_not_list_or_removed_refuses_to_start() {
    let _g = serial();
    let mut c = Cluster::start(3, FAST);
    let leader = c.expect_leader(LONG, "a leader");
    load(&c, leader, "r", 50);
    // Removed: node 3 (or 2) is removed, then started again on an empty dir.
    let gone = follower_of(&c, leader);
    c.node_mut(gone).kill();
    let mut cl: Client = c.node(leader).client().unwrap();
    assert_eq!(cl.request(&format!("REMOVE_NODE {gone}")).unwrap(), "OK");
    std::fs::remove_dir_all(&c.node(gone).data_dir).unwrap();
    let log = refused_start(c.node_mut(gone), "a removed node");
    assert!(log.contains("was removed from the cluster"), "{log}");
    assert!(!log.contains("bootstrapped"), "{log}");

    // Not listed: a node 4 whose --peers names the members, started
    // without --join, is a stranger to them.
    let port = |n: &Node| n.peer_addr.clone();
    let peers = format!(
        "{},4=127.0.0.1:{}",
        c.nodes
            .values()
            .map(|n| format!("{}={}", n.id, port(n)))
            .collect::<Vec<_>>()
            .join(","),
        raftnode_testkit::process::free_port()
    );
    let mut stranger = Node {
        id: 4,
        client_addr: format!("127.0.0.1:{}", raftnode_testkit::process::free_port()),
        peer_addr: peers.rsplit('=').next().unwrap().to_string(),
        data_dir: c.path().join("node-4"),
        log: c.path().join("node-4.log"),
        peers,
        args: FAST.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        child: None,
        paused: false,
    };
    let log = refused_start(&mut stranger, "an unlisted node");
    assert!(log.contains("refuses node 4"), "{log}");
    assert!(!log.contains("bootstrapped"), "{log}");
}
