//! The nemesis: a cluster behind link proxies, faults injected into it,
//! and the checks after healing.
//!
//! [`FaultCluster`] starts `n` real nodes whose peer traffic all goes
//! through a [`Net`] of link proxies, and offers the faults of the suite:
//! kill -9 and restart (the leader or any node), SIGSTOP/SIGCONT, partitions
//! (random halves, the leader isolated, a bridge), slow links, and torn WAL
//! tails (see `torn.rs`). [`FaultCluster::settle`] heals everything and
//! checks that every node converges; [`FaultCluster::final_reads`] reads
//! every key on every node and checks that they agree.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::rng::Rng;

use super::history::{History, Op, OpKind, Outcome};
use super::proxy::Net;
use super::torn;
use super::{Client, Cluster};

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
}

impl FaultCounts {
    pub fn total(&self) -> usize {
        self.kills + self.partitions + self.pauses + self.torn_tails + self.slow_links
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "faults={} (kill9={} of which leader={}, partitions={}, pauses={}, torn_tails={} \
             repaired={}, slow_links={}, failpoint_crashes={}, snapshots_installed={})",
            self.total(),
            self.kills,
            self.leader_kills,
            self.partitions,
            self.pauses,
            self.torn_tails,
            self.repairs_seen,
            self.slow_links,
            self.failpoint_crashes,
            self.snapshots_installed
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
    start: Instant,
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

fn repairs_in(log: &std::path::Path) -> usize {
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
