//! core_bench: how many entries per second the Raft core alone commits.
//!
//! A 3-node cluster runs in one thread over `MemStorage`, with messages
//! delivered in-process. Every round the leader is given proposals of 16
//! bytes each, then every node runs one Ready/Advance cycle (persist to
//! `MemStorage`, hand its messages over, apply the committed entries) and the
//! messages of the round are delivered. No ticks: this measures replication,
//! not elections. The figures are entries applied by the leader per second,
//! all three nodes' work included: of wall-clock time, and of the thread's
//! CPU time (what one core does when others share the machine).
//!
//! The storage step is the tests' own (`raftnode_testkit::ready::persist`),
//! so this is an example with a dev-dependency, not a shipped binary.
//!
//! Run with `cargo run --release --example core_bench`; `CORE_BENCH_SECS`
//! sets the time per configuration (default 1.5 s), and `CORE_BENCH_ENTRIES`
//! a fixed number of proposals instead (for comparing profiles, where
//! instruction counts are steadier than a shared machine's clock);
//! `CORE_BENCH_BATCHES=1,256` picks the configurations.

use std::time::{Duration, Instant};

use raftnode::raft::{ConfState, Config, MemStorage, Message, RawNode, Role};
use raftnode_testkit::ready;

const NODES: u64 = 3;
const PAYLOAD: usize = 16;
/// Each node compacts its storage once it has applied this many entries
/// past the last compaction, keeping memory flat over a long run.
const COMPACT_EVERY: u64 = 1 << 16;

struct Node {
    raw: RawNode<MemStorage>,
    storage: MemStorage,
    applied: u64,
    compacted: u64,
}

struct Cluster {
    nodes: Vec<Node>,
    /// Messages sent in the current round, delivered at its end.
    in_flight: Vec<Message>,
}

impl Cluster {
    fn new() -> Cluster {
        let cs = ConfState::with_voters((1..=NODES).collect());
        let nodes = (1..=NODES)
            .map(|id| {
                let storage = MemStorage::new_with_conf_state(cs.clone());
                let raw = RawNode::new(&Config::new(id), storage.clone()).expect("valid config");
                Node {
                    raw,
                    storage,
                    applied: 0,
                    compacted: 0,
                }
            })
            .collect();
        let mut c = Cluster {
            nodes,
            in_flight: Vec::new(),
        };
        c.nodes[0].raw.campaign();
        for _ in 0..10 {
            c.round();
        }
        assert_eq!(c.nodes[0].raw.status().soft_state.role, Role::Leader);
        c
    }

    /// One Ready/Advance cycle on every node, then delivery of the messages.
    fn round(&mut self) {
        for n in &mut self.nodes {
            if !n.raw.has_ready() {
                continue;
            }
            let mut rd = n.raw.ready();
            self.in_flight.append(&mut rd.messages);
            if let Err(e) = ready::persist(&n.storage, &rd) {
                panic!("node {}: {e}", n.raw.id());
            }
            self.in_flight.append(&mut rd.persisted_messages);
            if let Some(e) = rd.committed_entries.last() {
                n.applied = e.index;
            }
            n.raw.advance();
            if n.applied >= n.compacted + COMPACT_EVERY {
                n.storage.compact(n.applied).expect("applied entries exist");
                n.compacted = n.applied;
            }
        }
        for m in std::mem::take(&mut self.in_flight) {
            let to = m.to as usize - 1;
            self.nodes[to].raw.step(m);
        }
    }
}

/// How long to run each configuration.
#[derive(Clone, Copy)]
enum Budget {
    Time(Duration),
    /// A fixed number of rounds, for comparing profiles.
    Rounds(u64),
}

/// Nanoseconds this thread has run on a CPU, from Linux's
/// `/proc/thread-self/schedstat`; `None` elsewhere. On a shared machine
/// this says what one core does, where the wall clock also counts the
/// time other processes held it.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// What one configuration achieved.
struct Figures {
    committed: u64,
    /// Entries per second of wall-clock time.
    per_sec: f64,
    /// Entries per second of this thread's CPU time, if known.
    per_cpu_sec: Option<f64>,
}

/// Runs rounds with `batch` proposals each (1: `propose`, else
/// `propose_batch`) within `budget`.
fn measure(batch: usize, budget: Budget) -> Figures {
    let mut c = Cluster::new();
    let start_applied = c.nodes[0].applied;
    let start_cpu = thread_cpu_ns();
    let start = Instant::now();
    let mut rounds = 0u64;
    loop {
        if batch == 1 {
            c.nodes[0].raw.propose(vec![7; PAYLOAD]).expect("leader");
        } else {
            let data = (0..batch).map(|_| vec![7; PAYLOAD]).collect();
            c.nodes[0].raw.propose_batch(data).expect("leader");
        }
        c.round();
        rounds += 1;
        let done = match budget {
            Budget::Time(t) => rounds.is_multiple_of(64) && start.elapsed() >= t,
            Budget::Rounds(n) => rounds >= n,
        };
        if done {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (start_cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some((b - a) as f64 / 1e9),
        _ => None,
    };
    let committed = c.nodes[0].applied - start_applied;
    Figures {
        committed,
        per_sec: committed as f64 / elapsed,
        per_cpu_sec: cpu.map(|t| committed as f64 / t),
    }
}

fn main() {
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<f64>().ok());
    let budget = match env("CORE_BENCH_ENTRIES") {
        Some(n) => Budget::Rounds(n as u64),
        None => Budget::Time(Duration::from_secs_f64(
            env("CORE_BENCH_SECS").unwrap_or(1.5),
        )),
    };
    println!("core_bench: 3 nodes, one thread, MemStorage, {PAYLOAD}-byte proposals");
    let batches: Vec<usize> = match std::env::var("CORE_BENCH_BATCHES") {
        Ok(list) => list
            .split(',')
            .filter_map(|b| b.trim().parse().ok())
            .collect(),
        Err(_) => vec![1, 64, 256, 1024],
    };
    for batch in batches {
        let budget = match budget {
            Budget::Rounds(entries) => Budget::Rounds((entries / batch as u64).max(1)),
            b => b,
        };
        let f = measure(batch, budget);
        let label = if batch == 1 {
            "single (1 per round)".to_string()
        } else {
            format!("batched ({batch} per round)")
        };
        let cpu = match f.per_cpu_sec {
            Some(r) => format!("{r:>10.0} per CPU-second"),
            None => "CPU time unknown".to_string(),
        };
        println!(
            "  {label:<24} {:>10.0} entries/s  {cpu}  ({} committed)",
            f.per_sec, f.committed
        );
    }
}
