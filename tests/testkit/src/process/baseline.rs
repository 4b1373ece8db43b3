//! What an attack must leave as it was, for the security tests: a 3-node
//! cluster's data, term, leader and members, and a bound on each node's
//! memory while the attack runs.
//!
//! [`Baseline::take`] writes a few base keys and records the agreed state;
//! [`Baseline::check`], after an attack, waits [`SETTLE`], then asserts
//! that every node reports the same term, leader and members, that a fresh
//! write commits and every node reads it and the base keys back (a node
//! that took an attacker's entry at that index would not), and that no
//! node's RSS grew by more than [`RSS_LIMIT_KIB`] at any moment of the
//! attack, as sampled by the [`Watch`] started before it (every 20 ms from
//! `/proc/<pid>/status`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::attack::{self, Certs};
use super::{Cluster, Node, Status};

/// The most a node's RSS may grow during an attack, KiB.
pub const RSS_LIMIT_KIB: u64 = 64 << 10;
/// Long enough for any effect of an accepted attack to show: a proposal
/// commits, a term moves, an election starts, all within milliseconds.
pub const SETTLE: Duration = Duration::from_millis(500);
const BASE_KEYS: usize = 5;
const LONG: Duration = Duration::from_secs(20);

/// Starts 3 nodes with `args` (and peer TLS from `certs` if given), waits
/// until one leads and all logged the same cluster ID, and returns it.
pub fn start(args: &[&str], certs: Option<&Certs>) -> (Cluster, u64) {
    start_with_env(args, certs, &[])
}

/// [`start`], with environment variables for every node (the test-only
/// switches of `src/debug.rs`).
pub fn start_with_env(
    args: &[&str],
    certs: Option<&Certs>,
    env: &[(&str, &str)],
) -> (Cluster, u64) {
    start_prepared(args, certs, |n| {
        n.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    })
}

/// [`start`], with `prepare` applied to each node before it is spawned
/// (flags of its own, such as `--metrics-addr`).
pub fn start_prepared(
    args: &[&str],
    certs: Option<&Certs>,
    mut prepare: impl FnMut(&mut Node),
) -> (Cluster, u64) {
    let mut c = Cluster::new(3, args);
    for n in c.nodes.values_mut() {
        if let Some(certs) = certs {
            n.args.extend(certs.peer_args(n.id));
        }
        prepare(n);
        n.spawn();
    }
    if c.wait_leader(LONG).is_none() {
        panic!("no leader within {LONG:?}\n{}", c.logs());
    }
    let ids: Vec<u64> = (1..=3)
        .map(|id| attack::cluster_id(c.node(id), LONG).expect("a cluster id in the log"))
        .collect();
    assert!(
        ids.iter().all(|&i| i == ids[0] && i != 0),
        "cluster ids {ids:?}"
    );
    (c, ids[0])
}

/// Node `id`'s STATUS, retried for a while: a node that stops answering
/// fails the test.
pub fn status_of(c: &Cluster, id: u64) -> Status {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(s) = c.node(id).status() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} does not answer STATUS\n{}",
            c.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of running node `id`.
pub fn pid(c: &Cluster, id: u64) -> u32 {
    c.node(id).pid().expect("running")
}

/// What the attacks must leave as it was.
pub struct Baseline {
    pub leader: u64,
    pub term: u64,
    /// The voters, as STATUS lists them.
    pub members: String,
    /// The base keys and their values.
    pub keys: Vec<(String, String)>,
    probes: u64,
    /// Largest RSS growth seen over all attacks, KiB, and where.
    pub worst_rss: (u64, String),
}

impl Baseline {
    /// Writes the base keys and waits until all nodes agree on one leader
    /// and term, and have applied the same index.
    pub fn take(c: &Cluster) -> Baseline {
        let leader = c.expect_leader(LONG, "a leader");
        let keys: Vec<(String, String)> = (0..BASE_KEYS)
            .map(|i| (format!("base{i}"), format!("value {i}")))
            .collect();
        let mut cl = c.node(leader).client().unwrap();
        for (k, v) in &keys {
            assert_eq!(cl.request(&format!("PUT {k} {v}")).unwrap(), "OK");
        }
        c.wait_converged(1, LONG).expect("nodes converge");
        let s = status_of(c, leader);
        let b = Baseline {
            leader,
            term: s.num("term"),
            members: s.fields["members"].clone(),
            keys,
            probes: 0,
            worst_rss: (0, String::new()),
        };
        for id in 1..=3 {
            let s = status_of(c, id);
            assert_eq!(
                (s.num("term"), s.num("leader")),
                (b.term, b.leader),
                "node {id} disagrees before any attack\n{}",
                c.logs()
            );
        }
        b
    }

    pub fn followers(&self) -> Vec<u64> {
        (1..=3).filter(|&id| id != self.leader).collect()
    }

    /// Starts sampling every node's RSS and threads for one attack.
    pub fn watch(&self, c: &Cluster) -> Watch {
        Watch::start((1..=3).map(|id| (id, pid(c, id))).collect())
    }

    /// Asserts that the attack `what` changed nothing (see the module docs).
    pub fn check(&mut self, c: &Cluster, what: &str, watch: Watch) {
        let started = Instant::now();
        thread::sleep(SETTLE);
        let seen = |c: &Cluster| -> Vec<String> {
            (1..=3)
                .map(|id| {
                    let s = status_of(c, id);
                    format!(
                        "node {id}: term={} leader={} members={}",
                        s.num("term"),
                        s.num("leader"),
                        s.fields.get("members").cloned().unwrap_or_default()
                    )
                })
                .collect()
        };
        let want: Vec<String> = (1..=3)
            .map(|id| {
                format!(
                    "node {id}: term={} leader={} members={}",
                    self.term, self.leader, self.members
                )
            })
            .collect();
        assert_eq!(seen(c), want, "after {what}\n{}", c.logs());
        // A fresh write at the next index, then every key on every node.
        self.probes += 1;
        let probe = format!("probe{}", self.probes);
        let mut cl = c.node(self.leader).client().unwrap();
        assert_eq!(
            cl.request(&format!("PUT {probe} after {what}")).unwrap(),
            "OK",
            "after {what}\n{}",
            c.logs()
        );
        for id in 1..=3 {
            let mut cl = c.node(id).client().unwrap();
            for (k, v) in &self.keys {
                let r = cl.request(&format!("GET {k}")).unwrap();
                assert_eq!(r, format!("VALUE {v}"), "GET {k} on node {id} after {what}");
            }
            let r = cl.request(&format!("GET {probe}")).unwrap();
            assert_eq!(
                r,
                format!("VALUE after {what}"),
                "GET {probe} on node {id} after {what}: the node diverged\n{}",
                c.logs()
            );
        }
        assert_eq!(
            seen(c),
            want,
            "after the probe write of {what}\n{}",
            c.logs()
        );
        let peaks = watch.stop();
        let mut growth = Vec::new();
        for (id, p) in &peaks {
            let grew = p.peak_rss.saturating_sub(p.rss_before);
            growth.push(format!("node {id} +{} KiB", grew));
            if grew >= self.worst_rss.0 {
                self.worst_rss = (grew, format!("node {id} during {what}"));
            }
            assert!(
                grew <= RSS_LIMIT_KIB,
                "node {id}'s RSS grew by {grew} KiB (from {} KiB) during {what}",
                p.rss_before
            );
        }
        println!(
            "  {what}: unchanged (checked in {:?}); peak RSS growth {}",
            started.elapsed(),
            growth.join(", ")
        );
    }
}

/// Peak RSS and threads of each node during one attack.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak {
    pub rss_before: u64,
    pub peak_rss: u64,
    pub peak_threads: u64,
}

pub struct Watch {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<BTreeMap<u64, Peak>>>,
    handle: JoinHandle<()>,
}

impl Watch {
    pub fn start(pids: Vec<(u64, u32)>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: BTreeMap<u64, Peak> = pids
            .iter()
            .map(|&(id, pid)| {
                let rss = attack::rss_kib(pid).expect("VmRSS");
                let th = attack::threads(pid).expect("Threads");
                let p = Peak {
                    rss_before: rss,
                    peak_rss: rss,
                    peak_threads: th,
                };
                (id, p)
            })
            .collect();
        let peaks = Arc::new(Mutex::new(peaks));
        let (s, shared) = (stop.clone(), peaks.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for &(id, pid) in &pids {
                    let (rss, th) = (attack::rss_kib(pid), attack::threads(pid));
                    let mut all = shared.lock().unwrap();
                    let p = all.get_mut(&id).unwrap();
                    p.peak_rss = p.peak_rss.max(rss.unwrap_or(0));
                    p.peak_threads = p.peak_threads.max(th.unwrap_or(0));
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        Watch {
            stop,
            peaks,
            handle,
        }
    }

    /// The peaks so far.
    pub fn peek(&self) -> BTreeMap<u64, Peak> {
        self.peaks.lock().unwrap().clone()
    }

    pub fn stop(self) -> BTreeMap<u64, Peak> {
        self.stop.store(true, Ordering::Relaxed);
        let peaks = self.peaks.clone();
        self.handle.join().expect("watch thread");
        let all = peaks.lock().unwrap().clone();
        all
    }
}
