//! Crash-and-fault runs in the manner of Jepsen: real `raftnode` processes
//! behind link proxies, a client workload recording a history, a nemesis
//! killing, pausing, partitioning and tearing WAL tails, and after healing,
//! a linearizability check of every key plus a check that no acknowledged
//! write was lost.
//!
//! - `fault_smoke_run` (CI): 3 nodes, about 80 s, at least 10 kill -9
//!   cycles (leader included), 5 partitions, 3 pauses and 2 torn tails.
//!   With `RAFTNODE_SOAK_SECS=N` it becomes the soak: 5 nodes for N
//!   seconds, faults drawn at random (>= 300 kill cycles and >= 100
//!   partitions in 1800 s).
//! - `fault_smoke_run_with_peer_tls` (CI): the same smoke schedule with
//!   mutual TLS between the nodes (certificates from `bin/certs.sh`).
//! - `disk_fault_smoke_run` (CI): 3 nodes snapshotting every 300 entries,
//!   about 45 s: every kind of disk fault (a flipped byte in a WAL
//!   segment's records, in its preallocated zeros, in a snapshot file, and
//!   a wiped data dir), twice a wipe or flip of a node of a lagging
//!   majority, among kills and partitions. Each damaged node must be a
//!   serving voter again within 20 s of its restart. The soak mixes disk
//!   faults into its schedule too.
//! - `session_counters_smoke_run` (CI): 3 nodes, about 50 s, a shorter
//!   shuffle of the same faults (kills of the leader and of any node, a
//!   whole-cluster kill, partitions, pauses, a torn tail). Session clients
//!   `INCR` counters and retry every unknown outcome in their session
//!   until it is answered; plain clients `INCR` other counters without
//!   sessions and count their unknown outcomes. After healing every
//!   session counter must equal the increments issued on it, its `VALUE`
//!   replies must be 1..=n each once, and each plain counter must lie
//!   between its acknowledged and its possible increments
//!   (`process/counters.rs`).
//! - `broken_node_*` (ignored, run with `--ignored`): nodes broken on
//!   purpose through test-only switches, which the checks must catch.
//! - `disk_fault_recovery_timings` (in `tests/recovery_timings.rs`,
//!   ignored; `RAFTNODE_TIMING_MB`): how long a follower with 10 MB (or
//!   more) of state takes to serve again after each kind of disk fault;
//!   prints a table.
//!
//! Every run prints its seed; `RAFTNODE_FAULT_SEED=<seed>` replays the same
//! schedule (the timing of real processes is not replayable).
//! `RAFTNODE_FAULT_VERBOSE=1` prints the fault journal as it happens;
//! `RAFTNODE_FAULT_SNAPSHOT_ENTRIES=N` makes the nodes snapshot every N
//! entries (default 2000).

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use raftnode_testkit::process::counters::{CounterConfig, CounterReport, Counters};
use raftnode_testkit::process::damage::DiskFault;
use raftnode_testkit::process::faults::{seed, FaultCluster};
use raftnode_testkit::process::history::History;
use raftnode_testkit::process::run::{fault_args, run, Outcome};
use raftnode_testkit::process::workload::WorkloadConfig;
use raftnode_testkit::process::{make_certs, peer_tls_args, serial, torn};
use raftnode_testkit::rng::Rng;

/// One fault of a schedule.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    KillAny,
    /// A node down long enough to fall behind the leader's log, so that it
    /// must catch up from a snapshot.
    LongKill,
    /// Every node at once.
    KillAll,
    Partition,
    Pause,
    TornTail,
    Slow,
    /// A flipped byte or a wiped data dir (`damage.rs`).
    Disk(DiskFault),
    /// A node of a lagging majority damaged, its leader killed.
    DiskLaggingMajority(DiskFault),
}

fn apply(fc: &mut FaultCluster, f: Fault, fast: bool) {
    let ms = |fc: &mut FaultCluster, lo: u64, hi: u64| {
        let (lo, hi) = if fast { (lo / 2, hi / 2) } else { (lo, hi) };
        Duration::from_millis(fc.rng.range(lo, hi))
    };
    match f {
        Fault::KillLeader => {
            let d = ms(fc, 300, 2000);
            fc.kill_cycle(true, d)
        }
        Fault::KillAny => {
            let d = ms(fc, 300, 2000);
            fc.kill_cycle(false, d)
        }
        Fault::LongKill => {
            let d = Duration::from_millis(fc.rng.range(8000, 10000));
            fc.kill_cycle(false, d)
        }
        Fault::KillAll => {
            let d = ms(fc, 200, 1000);
            fc.kill_all_cycle(d)
        }
        Fault::Partition => {
            let d = ms(fc, 2000, 4000);
            fc.partition_cycle(d)
        }
        Fault::Pause => {
            let d = ms(fc, 1000, 2500);
            fc.pause_cycle(d)
        }
        Fault::TornTail => {
            let d = ms(fc, 200, 600);
            fc.torn_tail_cycle(d)
        }
        Fault::Slow => {
            let d = ms(fc, 1000, 2000);
            fc.slow_cycle(d)
        }
        Fault::Disk(kind) => {
            let d = ms(fc, 300, 1500);
            fc.disk_fault_cycle(kind, d)
        }
        Fault::DiskLaggingMajority(kind) => {
            let isolated = ms(fc, 1500, 3000);
            let down = ms(fc, 1000, 3000);
            fc.disk_fault_lagging_majority(kind, isolated, down)
        }
    }
    let quiet = ms(fc, 800, 2000);
    std::thread::sleep(quiet);
}

/// The CI schedule: the minimum of each fault, shuffled.
fn smoke_schedule(rng: &mut Rng) -> Vec<Fault> {
    let mut s = Vec::new();
    s.extend([Fault::KillLeader; 5]);
    s.extend([Fault::KillAny; 4]);
    s.push(Fault::LongKill);
    s.push(Fault::KillAll);
    s.extend([Fault::Partition; 5]);
    s.extend([Fault::Pause; 3]);
    s.extend([Fault::TornTail; 2]);
    s.extend([Fault::Slow; 2]);
    for i in (1..s.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        s.swap(i, j);
    }
    s
}

/// The disk smoke schedule: every kind of disk fault, twice a lagging
/// majority, and a few other faults between them, shuffled.
fn disk_smoke_schedule(rng: &mut Rng) -> Vec<Fault> {
    let mut s = vec![
        Fault::Disk(DiskFault::SegmentFlip),
        Fault::Disk(DiskFault::SegmentFlip),
        Fault::Disk(DiskFault::ZeroFlip),
        Fault::Disk(DiskFault::SnapshotFlip),
        Fault::Disk(DiskFault::SnapshotFlip),
        Fault::Disk(DiskFault::Wipe),
        Fault::Disk(DiskFault::Wipe),
        Fault::DiskLaggingMajority(DiskFault::Wipe),
        Fault::DiskLaggingMajority(DiskFault::SegmentFlip),
        Fault::KillLeader,
        Fault::KillAny,
        Fault::Partition,
        Fault::Pause,
    ];
    for i in (1..s.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        s.swap(i, j);
    }
    s
}

/// A soak fault: kills most often, then partitions, then disk faults.
fn soak_fault(rng: &mut Rng) -> Fault {
    match rng.below(100) {
        0..=25 => Fault::KillLeader,
        26..=52 => Fault::KillAny,
        53 => Fault::LongKill,
        54 => Fault::KillAll,
        55..=76 => Fault::Partition,
        77..=83 => Fault::Pause,
        84..=88 => Fault::TornTail,
        89..=92 => Fault::Slow,
        93..=98 => Fault::Disk(disk_fault(rng)),
        _ => Fault::DiskLaggingMajority(disk_fault(rng)),
    }
}

/// A disk fault kind: flips in records most often.
fn disk_fault(rng: &mut Rng) -> DiskFault {
    match rng.below(100) {
        0..=39 => DiskFault::SegmentFlip,
        40..=49 => DiskFault::ZeroFlip,
        50..=74 => DiskFault::SnapshotFlip,
        _ => DiskFault::Wipe,
    }
}

#[test]
fn fault_smoke_run() {
    smoke(false);
}

#[test]
fn fault_smoke_run_with_peer_tls() {
    if std::env::var_os("RAFTNODE_SOAK_SECS").is_some() {
        return; // the soak is the plain run's
    }
    smoke(true);
}

fn smoke(peer_tls: bool) {
    let _g = serial();
    let soak_secs: Option<u64> = std::env::var("RAFTNODE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let seed = seed();
    let nodes = if soak_secs.is_some() { 5 } else { 3 };
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "fault run: seed {seed} (replay the schedule with RAFTNODE_FAULT_SEED={seed})"
    );
    let mut fc = FaultCluster::new(nodes, &fault_args(), seed);
    if peer_tls {
        let certs = make_certs(&fc.cluster.path().join("certs"), nodes);
        for id in fc.ids() {
            let args = peer_tls_args(&certs, id);
            fc.cluster.node_mut(id).args.extend(args);
        }
    }
    fc.start_all();
    let wcfg = WorkloadConfig {
        seed,
        ..WorkloadConfig::default()
    };
    let label = match (soak_secs, peer_tls) {
        (Some(_), _) => "soak",
        (None, false) => "smoke",
        (None, true) => "smoke with peer TLS",
    };
    let out = run(fc, wcfg, label, |fc| match soak_secs {
        None => {
            let mut rng = Rng::new(seed ^ 0x5EED);
            for f in smoke_schedule(&mut rng) {
                apply(fc, f, false);
            }
        }
        Some(secs) => {
            let start = Instant::now();
            let end = start + Duration::from_secs(secs);
            let mut rng = Rng::new(seed ^ 0x50A4);
            let mut next_report = start + Duration::from_secs(60);
            while Instant::now() < end {
                let f = soak_fault(&mut rng);
                apply(fc, f, true);
                if Instant::now() >= next_report {
                    next_report += Duration::from_secs(60);
                    println!("soak {:.0}s: {}", start.elapsed().as_secs_f64(), fc.counts);
                }
            }
        }
    });
    assert!(out.passed(), "{}\n{}", out.summary, out.explain());
    let c = out.fc.counts;
    assert!(
        out.ok_ops > 500,
        "the workload made too little progress: {}",
        out.summary
    );
    assert_eq!(
        c.repairs_seen,
        c.torn_tails,
        "every torn tail must be reported repaired on restart\n{}",
        out.explain()
    );
    match soak_secs {
        None => {
            assert!(c.kills >= 10 && c.partitions >= 5 && c.pauses >= 3 && c.torn_tails >= 2);
            assert!(c.leader_kills >= 1, "no leader was killed: {}", out.summary);
        }
        Some(secs) if secs >= 1800 => {
            assert!(c.kills >= 300 && c.partitions >= 100, "{}", out.summary);
        }
        Some(_) => {}
    }
    if soak_secs.is_some_and(|s| s >= 600) {
        assert!(
            c.disk_flips >= 1 && c.snapshot_flips >= 1 && c.wipes >= 1,
            "the soak did too few disk faults: {}",
            out.summary
        );
    }
}

/// Node flags of the disk smoke run: snapshots every 300 entries (unless
/// `RAFTNODE_FAULT_SNAPSHOT_ENTRIES` says otherwise), so that there are
/// snapshot files to damage and wiped nodes catch up from a snapshot.
fn disk_fault_args() -> Vec<&'static str> {
    let mut args = fault_args();
    if std::env::var_os("RAFTNODE_FAULT_SNAPSHOT_ENTRIES").is_none() {
        if let Some(i) = args.iter().position(|a| *a == "--snapshot-entries") {
            args[i + 1] = "300";
        }
    }
    args
}

#[test]
fn disk_fault_smoke_run() {
    if std::env::var_os("RAFTNODE_SOAK_SECS").is_some() {
        return; // the soak has disk faults of its own
    }
    let _g = serial();
    let seed = seed();
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "disk fault run: seed {seed} (replay the schedule with RAFTNODE_FAULT_SEED={seed})"
    );
    let mut fc = FaultCluster::new(3, &disk_fault_args(), seed);
    // 1 MiB segments roll over and are released every few seconds, so that
    // flips land in older segments too, and a node whose newest snapshot
    // is damaged may find that its log no longer covers the older one.
    fc.set_env("RAFTNODE_WAL_SEGMENT_BYTES", "1048576");
    fc.start_all();
    let wcfg = WorkloadConfig {
        seed,
        ..WorkloadConfig::default()
    };
    let out = run(fc, wcfg, "disk smoke", |fc| {
        // Time for the first snapshots, so that there are files to flip.
        std::thread::sleep(Duration::from_secs(3));
        let mut rng = Rng::new(seed ^ 0xD15C);
        for f in disk_smoke_schedule(&mut rng) {
            apply(fc, f, false);
        }
    });
    assert!(out.passed(), "{}\n{}", out.summary, out.explain());
    let c = out.fc.counts;
    assert!(
        out.ok_ops > 300,
        "the workload made too little progress: {}",
        out.summary
    );
    // A snapshot flip on a node without a snapshot falls back to a
    // segment flip, so this also shows that snapshots were taken.
    assert!(
        c.disk_flips >= 3 && c.zero_flips >= 1 && c.snapshot_flips >= 2 && c.wipes >= 3,
        "not every kind of disk fault was done: {}",
        out.summary
    );
    let serving = out
        .fc
        .disk_faults
        .iter()
        .filter(|d| d.serving.after.is_some());
    assert_eq!(serving.count(), c.disk_faults(), "{}", out.summary);
    // Every flipped byte in a record and every wipe loses state that the
    // node must get back from its peers; it must not simply carry on. A
    // flip in the newest snapshot must be noticed: the node sets the file
    // aside and falls back to an older one, or recovers.
    for d in &out.fc.disk_faults {
        let noticed = match d.kind {
            DiskFault::SegmentFlip | DiskFault::Wipe => d.recovered(),
            DiskFault::SnapshotFlip => d.snapshot_set_aside || d.recovered(),
            DiskFault::ZeroFlip => true,
        };
        assert!(noticed, "the damage went unnoticed: {d}\n{}", out.explain());
    }
}

/// Runs the standard workload on 3 nodes started with the test-only switch
/// `env` (see `src/debug.rs`) under `nemesis`, and prints what the checks
/// found; each broken-node test then asserts that they found something.
fn run_broken(env: &str, label: &str, nemesis: impl FnOnce(&mut FaultCluster)) -> Outcome {
    let _g = serial();
    let seed = seed();
    let mut fc = FaultCluster::new(3, &fault_args(), seed);
    fc.set_env(env, "1");
    fc.start_all();
    let out = run(
        fc,
        WorkloadConfig {
            seed,
            ..Default::default()
        },
        label,
        nemesis,
    );
    println!("{}", out.explain());
    out
}

/// A node that serves GET from local state (no read index) must be caught
/// returning stale values: the old leader, isolated, keeps answering reads
/// while the majority moves on, and a lagging follower answers before it has
/// applied what the leader acknowledged.
#[test]
#[ignore = "slow (about 40 s); demonstrates the checker on a deliberately broken node"]
fn broken_node_unsafe_local_reads_is_caught() {
    let out = run_broken(
        "RAFTNODE_DEBUG_UNSAFE_LOCAL_READS",
        "broken(local reads)",
        |fc| {
            for _ in 0..4 {
                fc.partition_cycle(Duration::from_millis(3000));
                std::thread::sleep(Duration::from_millis(700));
                fc.kill_cycle(true, Duration::from_millis(500));
                std::thread::sleep(Duration::from_millis(700));
            }
        },
    );
    assert!(
        !out.report.violations.is_empty(),
        "the checker missed stale reads: {}",
        out.summary
    );
}

/// A node that acknowledges before its WAL write is durable must be caught
/// losing acknowledged writes when the power fails: the whole cluster is
/// killed, each node loses the unsynced end of its WAL (for this node,
/// everything written after its bootstrap was unsynced; half of it is
/// kept), and after the restart acknowledged values are gone.
#[test]
#[ignore = "slow (about 20 s); demonstrates the checker on a deliberately broken node"]
fn broken_node_ack_before_fsync_is_caught() {
    let out = run_broken(
        "RAFTNODE_DEBUG_ACK_BEFORE_FSYNC",
        "broken(ack before fsync)",
        |fc| {
            std::thread::sleep(Duration::from_secs(6));
            // Power cut of the whole cluster while the clients run.
            for id in fc.ids() {
                fc.cluster.node_mut(id).kill();
            }
            for id in fc.ids() {
                let dir = fc.cluster.node(id).data_dir.clone();
                // Frames 1..=3 (segment head, bootstrap entries and hard state)
                // were synced at creation; nothing after them ever was.
                let cut = torn::power_cut(&dir, 3, 50);
                fc.note(format!("power cut on node {id}: {cut:?}"));
            }
            for id in fc.ids() {
                fc.cluster.node_mut(id).spawn();
            }
            std::thread::sleep(Duration::from_secs(3));
        },
    );
    assert!(
        !out.lost.is_empty() || !out.report.violations.is_empty(),
        "the checks missed lost acknowledged writes: {}",
        out.summary
    );
}

/// A node that starts as if its disk were intact, after a flipped byte or a
/// wiped data dir, must be caught: it votes with a log that lost entries it
/// had acknowledged (or, wiped, bootstraps anew and votes with an empty
/// one). In a lagging majority (see
/// `FaultCluster::disk_fault_lagging_majority`) that elects a leader
/// without the writes the old majority committed, and they are lost.
#[test]
#[ignore = "slow (about 30 s); demonstrates the checker on a deliberately broken node"]
fn broken_node_no_recovery_is_caught() {
    let out = run_broken("RAFTNODE_DEBUG_NO_RECOVERY", "broken(no recovery)", |fc| {
        std::thread::sleep(Duration::from_secs(2));
        for kind in [DiskFault::Wipe, DiskFault::SegmentFlip, DiskFault::Wipe] {
            fc.disk_fault_lagging_majority(
                kind,
                Duration::from_millis(3000),
                Duration::from_millis(3000),
            );
            std::thread::sleep(Duration::from_millis(2000));
        }
    });
    assert!(
        !out.lost.is_empty() || !out.report.violations.is_empty() || !out.errors.is_empty(),
        "the checks missed a node that skipped its recovery: {}",
        out.summary
    );
}

/// The sessions smoke schedule: one or more of each fault of the smoke
/// schedule but slow links, shuffled; about 35 s.
fn session_schedule(rng: &mut Rng) -> Vec<Fault> {
    let mut s = vec![
        Fault::KillLeader,
        Fault::KillLeader,
        Fault::KillLeader,
        Fault::KillAny,
        Fault::KillAll,
        Fault::Partition,
        Fault::Partition,
        Fault::Partition,
        Fault::Pause,
        Fault::Pause,
        Fault::TornTail,
    ];
    for i in (1..s.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        s.swap(i, j);
    }
    s
}

/// What a counters run found.
struct CounterOutcome {
    report: CounterReport,
    /// Discrepancies of the final counters, convergence failures, anomalies.
    errors: Vec<String>,
    /// The final counters agreed by every node.
    finals: BTreeMap<String, Option<i64>>,
    summary: String,
}

/// Runs the counter clients on 3 nodes (with the test-only switch `env`
/// if given) while the sessions schedule plays, heals, reads every counter
/// on every node and checks them.
fn counters_run(env: Option<&str>, label: &str) -> CounterOutcome {
    let _g = serial();
    let seed = seed();
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "{label}: seed {seed} (replay the schedule with RAFTNODE_FAULT_SEED={seed})"
    );
    let t0 = Instant::now();
    let mut fc = FaultCluster::new(3, &fault_args(), seed);
    if let Some(env) = env {
        fc.set_env(env, "1");
    }
    fc.start_all();
    let mut errors = Vec::new();
    if fc.cluster.wait_leader(Duration::from_secs(10)).is_none() {
        errors.push(format!("no first leader\n{}", fc.cluster.logs()));
    }
    let counters = Counters::start(
        CounterConfig {
            seed,
            ..CounterConfig::default()
        },
        fc.client_addrs(),
    );
    let keys = counters.keys();
    let mut rng = Rng::new(seed ^ 0x5E55);
    for f in session_schedule(&mut rng) {
        apply(&mut fc, f, false);
    }
    let report = counters.stop();
    if let Err(e) = fc.settle(Duration::from_secs(10)) {
        errors.push(format!("after healing: {e}"));
    }
    let finals: BTreeMap<String, Option<i64>> = match fc.final_reads(&keys, &History::new()) {
        Ok(f) => f
            .into_iter()
            .map(|(k, v)| (k, v.and_then(|v| v.parse().ok())))
            .collect(),
        Err(e) => {
            errors.push(e);
            BTreeMap::new()
        }
    };
    if !finals.is_empty() {
        errors.extend(report.check(&finals));
    }
    errors.extend(
        report
            .anomalies
            .iter()
            .take(20)
            .map(|a| format!("anomaly: {a}")),
    );
    if !report.unresolved.is_empty() {
        errors.push(format!(
            "{} session increments were never answered: {:?}",
            report.unresolved.len(),
            report.unresolved
        ));
    }
    let over: i64 = report
        .issued
        .iter()
        .map(|(k, n)| finals.get(k).copied().flatten().unwrap_or(0) - *n as i64)
        .sum();
    let summary = format!(
        "{label} summary: nodes=3 secs={:.1} | with sessions: counters={} increments={} \
         retried_unknown_outcomes={} unknown_left={} sessions_opened={} counters_over_by={} | \
         without sessions: increments_acknowledged={} indeterminate={} | unknown causes {:?} | \
         {} | errors={}",
        t0.elapsed().as_secs_f64(),
        report.issued.len(),
        report.session_increments(),
        report.retries,
        report.unresolved.len(),
        report.sessions_opened,
        over,
        report.plain_increments(),
        report.plain_indeterminate_total(),
        report.unknown_causes,
        fc.counts,
        errors.len()
    );
    let _ = writeln!(std::io::stderr(), "{summary}");
    if !errors.is_empty() {
        let journal = &fc.journal;
        let _ = writeln!(
            std::io::stderr(),
            "{}\nfault journal:\n  {}",
            errors.join("\n"),
            journal.join("\n  ")
        );
    }
    CounterOutcome {
        report,
        errors,
        finals,
        summary,
    }
}

/// Retried writes apply exactly once under the suite's faults: every
/// session counter ends equal to the increments its clients issued.
#[test]
fn session_counters_smoke_run() {
    let out = counters_run(None, "session counters smoke");
    assert!(
        out.errors.is_empty(),
        "{}\n{}",
        out.summary,
        out.errors.join("\n")
    );
    let r = &out.report;
    assert!(
        r.session_increments() > 300 && r.plain_increments() > 100,
        "the clients made too little progress: {}",
        out.summary
    );
    assert_eq!(out.finals.len(), 6, "every counter was read back");
}

/// A node that drops session tags (so a retry applies again) must be
/// caught: a retry after a leader kill or a partition, of an increment
/// that had applied, makes its counter end above the increments issued.
#[test]
#[ignore = "slow (about 50 s); demonstrates the counter check on a deliberately broken node"]
fn broken_node_ignore_sessions_is_caught() {
    let out = counters_run(
        Some("RAFTNODE_DEBUG_IGNORE_SESSIONS"),
        "broken(ignore sessions)",
    );
    let over = out
        .errors
        .iter()
        .any(|e| e.contains("applied twice or lost"));
    assert!(
        over,
        "the counter check missed duplicated increments: {}",
        out.summary
    );
}
