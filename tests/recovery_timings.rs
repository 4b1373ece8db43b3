//! How long a member takes to serve again after a disk fault, by the size
//! of the state (issue 13, "Measure"). Not a check of speed: a measurement
//! that prints a table, run by hand.
//!
//! ```text
//! cargo test --release --test recovery_timings -- --ignored --nocapture
//! RAFTNODE_TIMING_MB=1024 cargo test --release --test recovery_timings -- --ignored --nocapture
//! ```
//!
//! A 3-node cluster with the default timing flags is loaded with
//! `RAFTNODE_TIMING_MB` (default 10) megabytes of state: keys with values
//! of 4,000 bytes, written to the leader over 8 pipelining connections,
//! with `--snapshot-entries` at a quarter of the keys so that snapshot
//! files exist and the log has a tail after them. Then, one after the
//! other, a follower (the two take turns) is killed and restarted with
//! exactly the same command line after: a flipped byte in the middle of
//! its log (the middle of the written part of its middle segment), a
//! flipped byte in its newest snapshot file, and a wiped data dir. Each
//! row is the time from the restart to serving voter (as the fault suite
//! defines it: STATUS without `recovering=1`, role follower, listed in
//! `members=`, applied at least the leader's commit at the restart, and a
//! GET through it answered; `RAFTNODE_TIMING_LIMIT_SECS`, default 1800,
//! is how long it may take), with what the node's log says it did. After
//! each fault, sampled keys read through the repaired node must have
//! their values.
//!
//! The data dirs are under `target/tmp` (about 3 times the state per node
//! at the peak: the store, two snapshot files, the log); check the free
//! space first for large runs. The cluster is idle while a node recovers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftnode_testkit::process::damage::{self, dir_size, DiskFault};
use raftnode_testkit::process::faults::wait_serving_voter;
use raftnode_testkit::process::{serial, Client, Cluster};
use raftnode_testkit::rng::Rng;

const VALUE_LEN: usize = 4000;
const CONNS: u64 = 8;
const BATCH: u64 = 64;

fn key(i: u64) -> String {
    format!("k{i:09}")
}

/// The value of key `i`: its number, then filler that differs per key.
fn value(i: u64, filler: &str) -> String {
    let head = format!("{i:09}-");
    let off = (i as usize * 7) % (filler.len() - VALUE_LEN);
    format!("{head}{}", &filler[off..off + VALUE_LEN - head.len()])
}

/// PUTs keys `0..keys` through `addr` over [`CONNS`] connections, each
/// pipelining batches of [`BATCH`]; a batch with a reply other than `OK`
/// is sent again (a PUT of the same value is idempotent).
fn load(addr: &str, keys: u64, filler: &Arc<String>) {
    let next = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CONNS)
        .map(|_| {
            let (addr, next, filler) = (addr.to_string(), next.clone(), filler.clone());
            std::thread::spawn(move || {
                let mut c: Option<Client> = None;
                loop {
                    let start = next.fetch_add(BATCH, Ordering::Relaxed);
                    if start >= keys {
                        return;
                    }
                    let end = (start + BATCH).min(keys);
                    let mut req = String::new();
                    for i in start..end {
                        req.push_str(&format!("PUT {} {}\n", key(i), value(i, &filler)));
                    }
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        assert!(tries <= 20, "batch at {start} kept failing");
                        let conn = match c.as_mut() {
                            Some(conn) => conn,
                            None => match Client::connect(&addr) {
                                Ok(conn) => c.insert(conn),
                                Err(_) => {
                                    std::thread::sleep(Duration::from_millis(200));
                                    continue;
                                }
                            },
                        };
                        conn.set_timeout(Duration::from_secs(30));
                        let ok = conn.send_raw(req.as_bytes()).is_ok()
                            && (start..end).all(|_| conn.read_line().is_ok_and(|r| r == "OK"));
                        if ok {
                            break;
                        }
                        c = None;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("loader thread");
    }
}

/// What the node's log says it did since `from` (a byte offset).
fn what_it_did(log: &std::path::Path, from: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let new = text.get(from..).unwrap_or("");
    let mut out = Vec::new();
    if let Some(i) = new.find("kept the log up to index ") {
        let n: String = new[i + 25..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        out.push(format!("salvage kept the log to {n}"));
    }
    if new.contains("a corrupt snapshot was set aside") {
        out.push("snapshot set aside, older one used".to_string());
    }
    if new.contains("recovering from its peers instead of bootstrapping") {
        out.push("empty dir: peers list it".to_string());
    }
    let installs = new.matches("installed snapshot at").count();
    if installs > 0 {
        out.push(format!("installed {installs} snapshot(s) from the leader"));
    }
    if new.contains("recovery done: the damage marker is cleared") {
        out.push(if installs == 0 {
            "repaired with log entries".to_string()
        } else {
            "repaired".to_string()
        });
    }
    if out.is_empty() {
        out.push("-".into());
    }
    out.join("; ")
}

struct Row {
    fault: &'static str,
    how: String,
    secs: Option<f64>,
    answering: Option<f64>,
    recovering: bool,
    did: String,
}

#[test]
#[ignore = "a measurement (minutes at 1 GB), run by hand; prints a table"]
fn disk_fault_recovery_timings() {
    let _g = serial();
    let mb: u64 = std::env::var("RAFTNODE_TIMING_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let keys = (mb << 20) / VALUE_LEN as u64;
    let limit = Duration::from_secs(
        std::env::var("RAFTNODE_TIMING_LIMIT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1800),
    );
    let snapshot_entries = (keys / 4).max(200).to_string();
    let args = [
        "--snapshot-entries",
        snapshot_entries.as_str(),
        "--request-timeout-ms",
        "20000",
    ];
    let mut cluster = Cluster::start(3, &args);
    let mut rng = Rng::new(mb);
    let filler: Arc<String> = Arc::new(
        (0..VALUE_LEN * 2)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect(),
    );
    let leader = cluster.expect_leader(Duration::from_secs(10), "a leader");
    let t = Instant::now();
    load(&cluster.node(leader).client_addr, keys, &filler);
    let load_secs = t.elapsed().as_secs_f64();
    let applied = cluster
        .wait_converged(1, Duration::from_secs(600))
        .expect("the nodes converge after the load");
    println!(
        "loaded {keys} keys of {VALUE_LEN} bytes ({mb} MiB) in {load_secs:.1}s \
         ({:.1} MiB/s); applied {applied}; --snapshot-entries {snapshot_entries}",
        mb as f64 / load_secs
    );
    for n in cluster.nodes.values() {
        println!(
            "node {}: data dir {:.1} MiB, {} segment(s), {} snapshot file(s)",
            n.id,
            dir_size(&n.data_dir) as f64 / (1 << 20) as f64,
            damage::segments(&n.data_dir).len(),
            damage::snapshots(&n.data_dir).len()
        );
    }

    let faults: [(&'static str, DiskFault); 3] = [
        ("byte flip mid-log (segment)", DiskFault::SegmentFlip),
        ("byte flip in the newest snapshot", DiskFault::SnapshotFlip),
        ("wipe of the data dir", DiskFault::Wipe),
    ];
    let mut rows = Vec::new();
    for (i, (name, kind)) in faults.into_iter().enumerate() {
        let leader = cluster.expect_leader(Duration::from_secs(30), "a leader");
        // The followers take turns: a node repaired from a mid-log flip
        // lost its log before the newest snapshot, so a flip in that
        // snapshot would find no older one its log covers.
        let followers: Vec<u64> = cluster
            .nodes
            .keys()
            .copied()
            .filter(|&id| id != leader)
            .collect();
        let f = followers[i % followers.len()];
        cluster.node_mut(f).kill();
        let dir = cluster.node(f).data_dir.clone();
        let done = match kind {
            DiskFault::SegmentFlip => damage::flip_mid_log(&dir, &mut rng),
            DiskFault::SnapshotFlip => damage::flip_snapshot(&dir, &mut rng),
            _ => damage::wipe(&dir).ok(),
        };
        let how = done
            .map(|d| d.how)
            .unwrap_or_else(|| "nothing to damage".into());
        println!("node {f}: {how}");
        let log_from = std::fs::metadata(&cluster.node(f).log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let target = cluster
            .node(leader)
            .status()
            .map(|s| s.num("commit"))
            .unwrap_or(0);
        cluster.node_mut(f).spawn();
        let since = Instant::now();
        let addr = cluster.node(f).client_addr.clone();
        let serving = wait_serving_voter(f, &addr, target, since, limit);
        let secs = serving.after.map(|d| d.as_secs_f64());
        println!(
            "  -> {secs:?} s, recovering seen: {}",
            serving.recovering_seen
        );
        if secs.is_some() {
            // Sampled keys read through the repaired node have their values.
            let mut c = Client::connect(&addr).expect("connect to the repaired node");
            c.set_timeout(Duration::from_secs(30));
            for _ in 0..50 {
                let i = rng.below(keys);
                let got = c.request(&format!("GET {}", key(i))).expect("GET");
                assert!(
                    got.strip_prefix("VALUE ") == Some(value(i, &filler).as_str()),
                    "node {f} lost key {} after a {name}: {:.80}",
                    key(i),
                    got
                );
            }
        }
        rows.push(Row {
            fault: name,
            how,
            secs,
            answering: serving.answering_after.map(|d| d.as_secs_f64()),
            recovering: serving.recovering_seen,
            did: what_it_did(&cluster.node(f).log, log_from),
        });
    }

    println!();
    println!("state {mb} MiB ({keys} keys x {VALUE_LEN} B), 3 nodes, default --tick-ms/--election-ticks:");
    println!(
        "| fault | restart -> serving voter | of which opening (to first STATUS) | recovering=1 seen | the node's log |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for r in &rows {
        let secs = r
            .secs
            .map(|s| format!("{s:.2} s"))
            .unwrap_or_else(|| format!("not within {} s", limit.as_secs()));
        let answering = r
            .answering
            .map(|s| format!("{s:.2} s"))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {secs} | {answering} | {} | {} |",
            r.fault,
            if r.recovering { "yes" } else { "no" },
            r.did
        );
    }
    for r in &rows {
        println!("  {}: {}", r.fault, r.how);
    }
    for r in &rows {
        assert!(
            r.secs.is_some(),
            "a node did not serve again after a {}",
            r.fault
        );
    }
}
