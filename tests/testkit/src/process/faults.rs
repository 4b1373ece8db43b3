//! The nemesis: a cluster behind link proxies, faults injected into it,
//! and the checks after healing.
//!
//! [`FaultCluster`] starts `n` real nodes whose peer traffic all goes
//! through a [`Net`] of link proxies, and offers the faults of the suite:
//! kill -9 and restart (the leader or any node), SIGSTOP/SIGCONT, partitions
//! (random halves, the leader isolated, a bridge), slow links, torn WAL
//! tails (see `torn.rs`), and disk faults (see `damage.rs` and
//! [`FaultCluster::disk_fault_cycle`]). [`FaultCluster::settle`] heals everything and
//! checks that every node converges; [`FaultCluster::final_reads`] reads
//! every key on every node and checks that they agree.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rng::Rng;

use super::damage::{self, DiskFault};
use super::history::{History, Op, OpKind, Outcome};
use super::proxy::Net;
use super::torn;
use super::{Client, Cluster, Status};

/// How long a node may take, from its restart after a disk fault, to be a
/// serving voter again (issue 13). A run in which one takes longer fails.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// What was injected, for the summary line.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultCounts {
    pub kills: usize,
    pub leader_kills: usize,
    pub partitions: usize,
    pub pauses: usize,
    pub torn_tails: usize,
    pub slow_links: usize,
    /// Torn tails that the restarted node reported repairing.
    pub repairs_seen: usize,
    /// Nodes that stopped at a failpoint.
    pub failpoint_crashes: usize,
    /// Snapshots nodes installed from their leader (from the node logs).
    pub snapshots_installed: usize,
    /// Disk faults: a flipped byte in the written part of a WAL segment.
    pub disk_flips: usize,
    /// A flipped byte in the preallocated zeros after a segment's data.
    pub zero_flips: usize,
    /// A flipped byte in a snapshot file.
    pub snapshot_flips: usize,
    /// A data dir deleted.
    pub wipes: usize,
    /// Disk faults after which the node recovered from its peers (STATUS
    /// said `recovering=1`, or its log said it started or ended a recovery).
    pub recoveries_seen: usize,
    /// The longest time from the restart after a disk fault to serving
    /// voter, in seconds.
    pub max_recovery_secs: f64,
}

impl FaultCounts {
    pub fn total(&self) -> usize {
        self.kills
            + self.partitions
            + self.pauses
            + self.torn_tails
            + self.slow_links
            + self.disk_faults()
    }

    /// Disk faults of every kind.
    pub fn disk_faults(&self) -> usize {
        self.disk_flips + self.zero_flips + self.snapshot_flips + self.wipes
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "faults={} (kill9={} of which leader={}, partitions={}, pauses={}, torn_tails={} \
             repaired={}, slow_links={}, failpoint_crashes={}, snapshots_installed={}, \
             disk_flips={} zero_flips={} snapshot_flips={} wipes={} recoveries_seen={} \
             max_recovery_secs={:.2})",
            self.total(),
            self.kills,
            self.leader_kills,
            self.partitions,
            self.pauses,
            self.torn_tails,
            self.repairs_seen,
            self.slow_links,
            self.failpoint_crashes,
            self.snapshots_installed,
            self.disk_flips,
            self.zero_flips,
            self.snapshot_flips,
            self.wipes,
            self.recoveries_seen,
            self.max_recovery_secs
        )
    }
}

/// The seed of a fault run: `RAFTNODE_FAULT_SEED` to replay one, else the clock.
pub fn seed() -> u64 {
    std::env::var("RAFTNODE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
        })
}

/// A cluster whose peer links all go through proxies.
pub struct FaultCluster {
    pub cluster: Cluster,
    pub net: Net,
    pub rng: Rng,
    pub counts: FaultCounts,
    /// One line per fault, with its time, for failure reports.
    pub journal: Vec<String>,
    /// Every disk fault and how the node came back from it.
    pub disk_faults: Vec<DiskFaultRecord>,
    /// Checks that failed while the faults played (a node that did not
    /// recover in time); [`super::run::run`] fails the run on any.
    pub failures: Vec<String>,
    /// The recovery being watched: the last node given a disk fault, until
    /// it serves as a voter again.
    watch: Option<RecoveryWatch>,
    start: Instant,
}

/// What a node logs when it starts recovering (`src/datadir.rs`,
/// `src/discovery.rs`) and when it is done (`src/apply.rs`).
const RECOVERY_STARTS: [&str; 2] = [
    "starts recovering: it will not vote",
    "recovering from its peers instead of bootstrapping",
];
const RECOVERY_DONE: &str = "recovery done: the damage marker is cleared";

/// One disk fault and what came of it.
#[derive(Clone, Debug)]
pub struct DiskFaultRecord {
    pub node: u64,
    pub kind: DiskFault,
    /// The file and offset, or the wipe.
    pub how: String,
    /// Seconds into the run when the node restarted.
    pub at: f64,
    /// The leader's commit index when the node restarted: the node has
    /// caught up once it has applied that much.
    pub target: u64,
    /// What the watch saw.
    pub serving: Serving,
    /// The node reported cutting a torn WAL tail on restart (a flip in the
    /// zeros after the last record of its newest segment reads as one).
    pub torn_tail_cut: bool,
    /// The node's log says it started recovering (damage found, or a
    /// running cluster lists it while its data dir is empty).
    pub recovery_started: bool,
    /// The node's log says its recovery finished (the marker is cleared).
    pub recovery_done: bool,
    /// The node's log says it set a damaged snapshot file aside
    /// (`*.snap.broken`).
    pub snapshot_set_aside: bool,
}

impl DiskFaultRecord {
    /// The node recovered from its peers, as STATUS or its log showed.
    pub fn recovered(&self) -> bool {
        self.serving.recovering_seen || self.recovery_started || self.recovery_done
    }
}

impl fmt::Display for DiskFaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "disk fault at {:.1}s on node {}: {} -> ",
            self.at, self.node, self.how
        )?;
        match self.serving.after {
            Some(d) => write!(f, "serving voter after {:.2}s", d.as_secs_f64())?,
            None => write!(
                f,
                "NOT a serving voter within {}s (last STATUS: {})",
                RECOVERY_LIMIT.as_secs(),
                self.serving.last_status
            )?,
        }
        if self.serving.recovering_seen {
            write!(f, ", STATUS said recovering=1")?;
        }
        if self.recovery_started {
            write!(f, ", logged the start of a recovery")?;
        }
        if self.recovery_done {
            write!(f, ", logged its end")?;
        }
        if self.torn_tail_cut {
            write!(f, ", cut a torn tail")?;
        }
        if self.snapshot_set_aside {
            write!(f, ", set a damaged snapshot aside")?;
        }
        Ok(())
    }
}

/// What [`wait_serving_voter`] saw of a restarted node.
#[derive(Clone, Debug, Default)]
pub struct Serving {
    /// Time from the restart to serving voter: STATUS without
    /// `recovering=1`, role follower or leader, listed in `members=`,
    /// applied at least the target, and a `GET` through it answered.
    /// `None` if that did not happen within the limit.
    pub after: Option<Duration>,
    /// Time from the restart to the first STATUS answer: the node has
    /// opened its data dir (and, if it was empty, heard from its peers).
    pub answering_after: Option<Duration>,
    /// Some STATUS said `recovering=1`.
    pub recovering_seen: bool,
    /// The last STATUS line (or why there was none).
    pub last_status: String,
}

/// Polls the node `id` at `client_addr`, restarted at `since`, until it is
/// a serving voter that has applied at least `target` (see [`Serving`]), or
/// until `limit` after `since`.
pub fn wait_serving_voter(
    id: u64,
    client_addr: &str,
    target: u64,
    since: Instant,
    limit: Duration,
) -> Serving {
    let mut out = Serving {
        last_status: "none yet".into(),
        ..Serving::default()
    };
    while since.elapsed() < limit {
        let line =
            Client::connect_timeout(client_addr, Duration::from_millis(300)).and_then(|mut c| {
                c.set_timeout(Duration::from_millis(1000));
                c.request("STATUS")
            });
        match line {
            Ok(line) => {
                let st = Status::parse(&line);
                let starting = st
                    .as_ref()
                    .is_some_and(|st| st.fields.get("starting").is_some_and(|v| v == "1"));
                out.last_status = line;
                if starting {
                    // Answered before the data dir is open: not yet.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                if out.answering_after.is_none() {
                    out.answering_after = Some(since.elapsed());
                }
                if let Some(st) = st {
                    if st.fields.get("recovering").is_some_and(|v| v == "1") {
                        out.recovering_seen = true;
                    } else if is_caught_up_voter(&st, id, target) && serves_a_get(client_addr) {
                        out.after = Some(since.elapsed());
                        return out;
                    }
                }
            }
            Err(e) => out.last_status = format!("no STATUS: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    out
}

/// A STATUS of a voter (listed in `members=`, role follower or leader, not
/// recovering) that has applied at least `target`.
fn is_caught_up_voter(st: &Status, id: u64, target: u64) -> bool {
    let voter = st
        .fields
        .get("members")
        .is_some_and(|m| m.split(',').any(|x| x == id.to_string()));
    voter
        && matches!(st.role(), "follower" | "leader")
        && !st.fields.contains_key("recovering")
        && st.num("applied") >= target
}

/// A linearizable read through the node gets an answer.
fn serves_a_get(client_addr: &str) -> bool {
    let Ok(mut c) = Client::connect_timeout(client_addr, Duration::from_millis(300)) else {
        return false;
    };
    c.set_timeout(Duration::from_secs(3));
    match c.request("GET disk-nemesis-probe") {
        Ok(r) => r == "NOT_FOUND" || r.starts_with("VALUE "),
        Err(_) => false,
    }
}

/// A recovery being watched on a thread of its own, so that other faults
/// can play meanwhile.
struct RecoveryWatch {
    d: Damaged,
    at: f64,
    target: u64,
    thread: JoinHandle<Serving>,
}

/// A node given a disk fault, not restarted yet.
struct Damaged {
    node: u64,
    kind: DiskFault,
    how: String,
    log: PathBuf,
    /// Torn-tail repairs in its log before the fault.
    repairs_before: usize,
    /// Length of its log before the fault.
    log_len: usize,
}

impl FaultCluster {
    /// Prepares `n` nodes (not started) with `args`, wired through proxies.
    pub fn new(n: u64, args: &[&str], seed: u64) -> FaultCluster {
        let mut cluster = Cluster::new(n, args);
        let addrs: BTreeMap<u64, String> = cluster
            .nodes
            .iter()
            .map(|(id, node)| (*id, node.peer_addr.clone()))
            .collect();
        let net = Net::start(&addrs);
        for (id, node) in cluster.nodes.iter_mut() {
            node.peers = net.peers_for(*id, &node.peer_addr);
        }
        FaultCluster {
            cluster,
            net,
            rng: Rng::new(seed),
            counts: FaultCounts::default(),
            journal: Vec::new(),
            disk_faults: Vec::new(),
            failures: Vec::new(),
            watch: None,
            start: Instant::now(),
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.cluster.nodes.keys().copied().collect()
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        for n in self.cluster.nodes.values_mut() {
            n.env.retain(|(k, _)| k != key);
            n.env.push((key.to_string(), value.to_string()));
        }
    }

    pub fn start_all(&mut self) {
        for n in self.cluster.nodes.values_mut() {
            n.spawn();
        }
    }

    /// `(id, client address)` of every node, for the workload.
    pub fn client_addrs(&self) -> Vec<(u64, String)> {
        self.cluster
            .nodes
            .values()
            .map(|n| (n.id, n.client_addr.clone()))
            .collect()
    }

    pub fn note(&mut self, what: String) {
        let line = format!("{:8.3}s {what}", self.start.elapsed().as_secs_f64());
        if std::env::var_os("RAFTNODE_FAULT_VERBOSE").is_some() {
            println!("{line}");
        }
        self.journal.push(line);
    }

    /// The current leader, if a running node says it leads (quick look).
    pub fn leader(&self) -> Option<u64> {
        self.cluster.wait_leader(Duration::from_millis(300))
    }

    fn running(&self) -> Vec<u64> {
        self.cluster
            .nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// kill -9 of the leader (or of a random node if there is none, or if
    /// `leader` is false), then a restart after `down`.
    pub fn kill_cycle(&mut self, leader: bool, down: Duration) {
        let target = if leader { self.leader() } else { None };
        let was_leader = target.is_some();
        let ids = self.running();
        if ids.is_empty() {
            return;
        }
        let id = target.unwrap_or_else(|| self.rng.pick(&ids));
        self.cluster.node_mut(id).kill();
        self.counts.kills += 1;
        if was_leader {
            self.counts.leader_kills += 1;
        }
        self.note(format!(
            "kill -9 node {id}{}",
            if was_leader { " (leader)" } else { "" }
        ));
        std::thread::sleep(down);
        self.cluster.node_mut(id).spawn();
        self.note(format!("restart node {id}"));
    }

    /// kill -9 of every node at once (a whole-cluster crash), a torn tail
    /// after the last record of some of them, and a restart of all.
    pub fn kill_all_cycle(&mut self, down: Duration) {
        let ids = self.running();
        for &id in &ids {
            self.cluster.node_mut(id).kill();
            self.counts.kills += 1;
        }
        self.note(format!("kill -9 of every node {ids:?}"));
        let mut torn = Vec::new();
        for &id in &ids {
            if self.rng.chance(50) {
                let dir = self.cluster.node(id).data_dir.clone();
                if let Some(t) = torn::tear_next_record(&dir, &mut self.rng) {
                    self.counts.torn_tails += 1;
                    self.note(format!("torn tail on node {id}: {}", t.how));
                    torn.push(id);
                }
            }
        }
        std::thread::sleep(down);
        for &id in &ids {
            if torn.contains(&id) {
                self.restart_counting_repairs(id);
            } else {
                self.cluster.node_mut(id).spawn();
                self.note(format!("restart node {id}"));
            }
        }
    }

    /// kill -9 of a node, a torn tail written into its newest segment after
    /// its last record, and a restart; checks that the node reports the
    /// repair.
    pub fn torn_tail_cycle(&mut self, down: Duration) {
        let ids = self.running();
        if ids.is_empty() {
            return;
        }
        let id = self.rng.pick(&ids);
        self.cluster.node_mut(id).kill();
        let dir = self.cluster.node(id).data_dir.clone();
        match torn::tear_next_record(&dir, &mut self.rng) {
            Some(t) => {
                self.counts.torn_tails += 1;
                self.note(format!(
                    "kill -9 node {id}, torn tail in {}: {}",
                    t.segment.display(),
                    t.how
                ));
            }
            None => self.note(format!("kill -9 node {id}, no room for a torn tail")),
        }
        std::thread::sleep(down);
        self.restart_counting_repairs(id);
    }

    /// Starts node `id` and counts a torn-tail repair if its log shows one
    /// that was not there before.
    pub fn restart_counting_repairs(&mut self, id: u64) {
        let before = repairs_in(&self.cluster.node(id).log);
        self.cluster.node_mut(id).spawn();
        self.note(format!("restart node {id}"));
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if repairs_in(&self.cluster.node(id).log) > before {
                self.counts.repairs_seen += 1;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The leader's commit index, as the leader says (not asking `except`);
    /// without a leader, the highest any running node reports.
    pub fn leader_commit(&self, except: u64) -> u64 {
        let mut best = 0;
        for n in self.cluster.nodes.values() {
            if n.id == except || n.child.is_none() || n.paused {
                continue;
            }
            if let Some(st) = n.status() {
                if st.role() == "leader" {
                    return st.num("commit");
                }
                best = best.max(st.num("commit"));
            }
        }
        best
    }

    /// A disk fault: kill -9 of a random node (or one that is down), then
    /// `kind` done to its data dir (`damage.rs`), and after `down` a
    /// restart with exactly the same command line.
    ///
    /// Only one node at a time carries damage: this first waits until the
    /// node of the previous disk fault is a serving voter again (see
    /// [`wait_serving_voter`]); if it never became one, the run has failed
    /// already and no more damage is done. The new node's recovery is then
    /// watched on a thread while the other faults go on; the time from its
    /// restart to serving voter is recorded, and a run where it exceeds
    /// [`RECOVERY_LIMIT`] fails.
    pub fn disk_fault_cycle(&mut self, kind: DiskFault, down: Duration) {
        if !self.finish_disk_watch() {
            self.note(format!("{kind} skipped: a damaged node never recovered"));
            return;
        }
        let ids = self.ids();
        let stopped: Vec<u64> = self
            .cluster
            .nodes
            .values_mut()
            .filter_map(|n| (n.exited() || n.child.is_none()).then_some(n.id))
            .collect();
        let id = if stopped.is_empty() {
            self.rng.pick(&ids)
        } else {
            self.rng.pick(&stopped)
        };
        let Some(damaged) = self.damage_node(id, kind) else {
            std::thread::sleep(down);
            self.cluster.node_mut(id).spawn();
            self.note(format!("restart node {id}"));
            return;
        };
        std::thread::sleep(down);
        let target = self.leader_commit(id);
        self.restart_watched(damaged, target);
    }

    /// The case recovery exists for, a lagging majority (FAST'18): a
    /// minority without the leader is cut off while the leader and node
    /// `w` commit writes for `isolated_for`; then `w` gets a disk fault of
    /// `kind` and the leader is killed, the partition heals and `w`
    /// restarts. Now the nodes that hold the new writes are the leader
    /// (down) and `w` (damaged). A `w` that voted as if nothing had
    /// happened would elect a node without them, and acknowledged writes
    /// would be lost; a recovering `w` abstains, and nobody is elected
    /// until the leader is back, `down` later. `w`'s recovery is watched
    /// as in [`FaultCluster::disk_fault_cycle`].
    pub fn disk_fault_lagging_majority(
        &mut self,
        kind: DiskFault,
        isolated_for: Duration,
        down: Duration,
    ) {
        if !self.finish_disk_watch() {
            self.note(format!("{kind} skipped: a damaged node never recovered"));
            return;
        }
        let Some(l) = self.cluster.wait_leader(Duration::from_secs(5)) else {
            self.note("lagging majority skipped: no leader".into());
            return;
        };
        let mut others: Vec<u64> = self.ids().into_iter().filter(|&i| i != l).collect();
        let w = others.swap_remove(self.rng.below(others.len() as u64) as usize);
        // The majority is the leader, w and as many more as needed.
        let minority = (self.ids().len() - 1) / 2;
        let cut: Vec<u64> = others[..minority].to_vec();
        self.net.split(&cut);
        self.counts.partitions += 1;
        self.note(format!(
            "lagging majority: {cut:?} cut off, leader {l} and node {w} commit [{}]",
            self.net.describe()
        ));
        std::thread::sleep(isolated_for);
        let Some(damaged) = self.damage_node(w, kind) else {
            self.net.heal();
            self.cluster.node_mut(w).spawn();
            self.note(format!("heal; restart node {w}"));
            return;
        };
        let target = self.cluster.node(l).status().map(|s| s.num("commit"));
        self.cluster.node_mut(l).kill();
        self.counts.kills += 1;
        self.counts.leader_kills += 1;
        self.note(format!("kill -9 node {l} (leader, commit {target:?})"));
        self.net.heal();
        self.note("heal".into());
        let target = target.unwrap_or(0).max(self.leader_commit(w));
        self.restart_watched(damaged, target);
        std::thread::sleep(down);
        self.cluster.node_mut(l).spawn();
        self.note(format!("restart node {l}"));
    }

    /// kill -9 of node `id` (if it runs) and `kind` done to its data dir,
    /// counted and noted. `None` if there was nothing to damage.
    fn damage_node(&mut self, id: u64, kind: DiskFault) -> Option<Damaged> {
        let was_running = self.cluster.node(id).child.is_some();
        self.cluster.node_mut(id).kill();
        let dir = self.cluster.node(id).data_dir.clone();
        let log = self.cluster.node(id).log.clone();
        let repairs_before = repairs_in(&log);
        let log_len = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let Some(done) = damage::inflict(&dir, kind, &mut self.rng) else {
            self.note(format!("{kind} on node {id}: nothing to damage"));
            return None;
        };
        match done.kind {
            DiskFault::SegmentFlip => self.counts.disk_flips += 1,
            DiskFault::ZeroFlip => self.counts.zero_flips += 1,
            DiskFault::SnapshotFlip => self.counts.snapshot_flips += 1,
            DiskFault::Wipe => self.counts.wipes += 1,
        }
        self.note(format!(
            "{}node {id}, {}",
            if was_running { "kill -9 " } else { "" },
            done.how
        ));
        Some(Damaged {
            node: id,
            kind: done.kind,
            how: done.how,
            log,
            repairs_before,
            log_len,
        })
    }

    /// Restarts a damaged node with its usual command line and watches it
    /// until it is a serving voter that applied `target`.
    fn restart_watched(&mut self, d: Damaged, target: u64) {
        let id = d.node;
        self.cluster.node_mut(id).spawn();
        let since = Instant::now();
        let at = self.start.elapsed().as_secs_f64();
        self.note(format!(
            "restart node {id} after {}; target commit {target}",
            d.kind
        ));
        let addr = self.cluster.node(id).client_addr.clone();
        let thread = std::thread::Builder::new()
            .name(format!("recovery-watch-{id}"))
            .spawn(move || wait_serving_voter(id, &addr, target, since, RECOVERY_LIMIT))
            .expect("recovery watch thread");
        self.watch = Some(RecoveryWatch {
            d,
            at,
            target,
            thread,
        });
    }

    /// Waits for the recovery being watched, if any, and records it; a
    /// recovery over the limit becomes a failure of the run. Returns
    /// whether the node recovered in time (true if nothing was watched).
    pub fn finish_disk_watch(&mut self) -> bool {
        let Some(w) = self.watch.take() else {
            return true;
        };
        let serving = w.thread.join().unwrap_or_else(|_| Serving {
            last_status: "the watch thread panicked".into(),
            ..Serving::default()
        });
        let text = std::fs::read_to_string(&w.d.log).unwrap_or_default();
        let since_fault = text.get(w.d.log_len..).unwrap_or("");
        let rec = DiskFaultRecord {
            node: w.d.node,
            kind: w.d.kind,
            torn_tail_cut: repairs_in(&w.d.log) > w.d.repairs_before,
            recovery_started: RECOVERY_STARTS.iter().any(|l| since_fault.contains(l)),
            recovery_done: since_fault.contains(RECOVERY_DONE),
            snapshot_set_aside: since_fault.contains(".snap.broken"),
            how: w.d.how,
            at: w.at,
            target: w.target,
            serving,
        };
        if rec.recovered() {
            self.counts.recoveries_seen += 1;
        }
        let ok = rec.serving.after.is_some();
        if let Some(d) = rec.serving.after {
            self.counts.max_recovery_secs = self.counts.max_recovery_secs.max(d.as_secs_f64());
        } else {
            self.failures.push(format!(
                "{rec}\n--- node {} log ---\n{}",
                rec.node,
                self.cluster.node(rec.node).log_tail(40)
            ));
        }
        self.note(rec.to_string());
        self.disk_faults.push(rec);
        ok
    }

    /// SIGSTOP of a node (the leader half of the time) for `for_`.
    pub fn pause_cycle(&mut self, for_: Duration) {
        let ids = self.running();
        if ids.is_empty() {
            return;
        }
        let leader = if self.rng.chance(50) {
            self.leader()
        } else {
            None
        };
        let id = leader.unwrap_or_else(|| self.rng.pick(&ids));
        self.cluster.node_mut(id).pause();
        self.counts.pauses += 1;
        self.note(format!(
            "SIGSTOP node {id}{}",
            if leader.is_some() { " (leader)" } else { "" }
        ));
        std::thread::sleep(for_);
        self.cluster.node_mut(id).resume();
        self.note(format!("SIGCONT node {id}"));
    }

    /// One of the partition shapes, held for `for_`, then healed.
    pub fn partition_cycle(&mut self, for_: Duration) {
        let ids = self.ids();
        let shape = self.counts.partitions % 3;
        let what = match shape {
            0 => {
                let mut side: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|_| self.rng.chance(50))
                    .collect();
                if side.is_empty() || side.len() == ids.len() {
                    side = vec![self.rng.pick(&ids)];
                }
                self.net.split(&side);
                format!("partition: random halves {side:?} | rest")
            }
            1 => {
                let l = self.leader().unwrap_or_else(|| self.rng.pick(&ids));
                self.net.split(&[l]);
                format!("partition: leader {l} isolated")
            }
            _ => {
                let bridge = self.leader().unwrap_or_else(|| self.rng.pick(&ids));
                let others: Vec<u64> = ids.iter().copied().filter(|&i| i != bridge).collect();
                let half = others.len() / 2;
                let left = others[..half.max(1)].to_vec();
                self.net.bridge(&left, bridge);
                format!("partition: bridge {bridge} between {left:?} and the rest")
            }
        };
        self.counts.partitions += 1;
        self.note(format!("{what} [{}]", self.net.describe()));
        std::thread::sleep(for_);
        self.net.heal();
        self.note("heal".into());
    }

    /// Every link from and to one node delayed, for `for_`.
    pub fn slow_cycle(&mut self, for_: Duration) {
        let ids = self.ids();
        let id = self.rng.pick(&ids);
        let d = Duration::from_millis(self.rng.range(5, 60));
        self.net.slow(id, d);
        self.counts.slow_links += 1;
        self.note(format!("slow links of node {id}: {d:?}"));
        std::thread::sleep(for_);
        self.net.heal();
        self.note("heal".into());
    }

    /// Heals the network, resumes and restarts every node, and waits until
    /// all have applied the same index. Returns it, or an error with logs.
    pub fn settle(&mut self, within: Duration) -> Result<u64, String> {
        self.net.heal();
        for n in self.cluster.nodes.values_mut() {
            if n.paused {
                n.resume();
            }
            n.exited();
            if n.child.is_none() {
                n.spawn();
            }
        }
        self.note("settle: healed, all nodes running".into());
        let t = Instant::now();
        // A leader must have committed something in its term for every node
        // to agree; wait_converged then needs every node to answer with the
        // same applied index.
        let Some(_) = self.cluster.wait_leader(within) else {
            return Err(format!(
                "no leader within {within:?}\n{}",
                self.cluster.logs()
            ));
        };
        let left = within.saturating_sub(t.elapsed());
        match self.cluster.wait_converged(1, left) {
            Some(i) => Ok(i),
            None => {
                let st: Vec<String> = self
                    .cluster
                    .nodes
                    .values()
                    .map(|n| format!("{:?}", n.status().map(|s| s.fields)))
                    .collect();
                Err(format!(
                    "nodes did not converge within {within:?}: {}\n{}",
                    st.join("\n"),
                    self.cluster.logs()
                ))
            }
        }
    }

    /// Counts the snapshots nodes installed from a leader, from their logs.
    pub fn count_snapshot_installs(&mut self) {
        self.counts.snapshots_installed = self
            .cluster
            .nodes
            .values()
            .map(|n| {
                std::fs::read_to_string(&n.log)
                    .unwrap_or_default()
                    .matches("installed snapshot at")
                    .count()
            })
            .sum();
    }

    /// Reads every key on every node (pipelined). Returns the agreed values,
    /// or a description of the disagreement.
    /// Every read goes into `history` too (as process 1_000_000 + node id),
    /// so the linearizability check covers the final state.
    pub fn final_reads(
        &self,
        keys: &[String],
        history: &History,
    ) -> Result<BTreeMap<String, Option<String>>, String> {
        let mut per_node: BTreeMap<u64, Vec<Option<String>>> = BTreeMap::new();
        for n in self.cluster.nodes.values() {
            let vals = read_all(&n.client_addr, keys, n.id, history)
                .map_err(|e| format!("final reads on node {}: {e}", n.id))?;
            per_node.insert(n.id, vals);
        }
        let mut out = BTreeMap::new();
        let mut bad = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let first = per_node.values().next().and_then(|v| v[i].clone());
            let all: Vec<(u64, Option<String>)> =
                per_node.iter().map(|(id, v)| (*id, v[i].clone())).collect();
            if all.iter().any(|(_, v)| *v != first) {
                bad.push(format!("{k}: {all:?}"));
            }
            out.insert(k.clone(), first);
        }
        if bad.is_empty() {
            Ok(out)
        } else {
            Err(format!(
                "nodes disagree on {} keys: {}",
                bad.len(),
                bad.join("; ")
            ))
        }
    }
}

fn repairs_in(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("repaired a torn WAL tail")
        .count()
}

/// GETs every key on one node, pipelined in chunks, retrying a chunk whose
/// replies are errors (a read right after healing may meet a leader change).
fn read_all(
    addr: &str,
    keys: &[String],
    node: u64,
    history: &History,
) -> Result<Vec<Option<String>>, String> {
    let mut out = Vec::with_capacity(keys.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    for chunk in keys.chunks(500) {
        loop {
            if Instant::now() > deadline {
                return Err("reads kept failing for 30 s".into());
            }
            let invoke = history.now();
            let attempt = (|| -> std::io::Result<Option<Vec<Option<String>>>> {
                let mut c = Client::connect(addr)?;
                c.set_timeout(Duration::from_secs(10));
                let mut req = String::new();
                for k in chunk {
                    req.push_str(&format!("GET {k}\n"));
                }
                c.send_raw(req.as_bytes())?;
                let mut vals = Vec::with_capacity(chunk.len());
                for _ in chunk {
                    let r = c.read_line()?;
                    if r == "NOT_FOUND" {
                        vals.push(None);
                    } else if let Some(v) = r.strip_prefix("VALUE ") {
                        vals.push(Some(v.to_string()));
                    } else {
                        return Ok(None);
                    }
                }
                Ok(Some(vals))
            })();
            match attempt {
                Ok(Some(v)) => {
                    let complete = history.now();
                    for (k, val) in chunk.iter().zip(&v) {
                        history.record(Op {
                            process: 1_000_000 + node,
                            node,
                            key: k.clone(),
                            kind: OpKind::Get,
                            invoke,
                            complete: Some(complete),
                            outcome: Outcome::Read(val.clone()),
                            reply: match val {
                                Some(x) => format!("VALUE {x} (final read)"),
                                None => "NOT_FOUND (final read)".into(),
                            },
                        });
                    }
                    out.extend(v);
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    Ok(out)
}
