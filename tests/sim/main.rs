//! A seeded simulation of whole Raft clusters with drops, duplicates,
//! reordering, delays, partitions, crashes, losses of durable state (a damaged
//! or wiped disk, repaired by the leader), snapshots and membership changes,
//! checking Raft's safety properties after every step.
//!
//! - `cargo test --release --test sim` runs [`DEFAULT_SEEDS`] seeds, half
//!   with 3 nodes and half with 5;
//! - `RAFT_SIM_SEEDS=N` runs seeds `0..N` instead, and `RAFT_SIM_FROM=F` shifts
//!   that range to `F..F+N`, so that a long run can be split across processes;
//! - `RAFT_SIM_SEED=S` runs seed `S` alone and prints every step;
//! - `RAFT_SIM_STEPS=N` changes the length of the chaos phase.
//!
//! A failing seed is printed with the command that replays it.
//!
//! Layout: `cluster.rs` drives the run (workload, faults, the Ready loop),
//! `node.rs` models one server, `network.rs` the network, `checks.rs` the
//! properties checked.

mod checks;
mod cluster;
mod network;
mod node;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use cluster::{Sim, SimConfig, Stats};

/// Seeds run by a plain `cargo test`.
const DEFAULT_SEEDS: u64 = 2000;

/// Steps of the chaos phase per seed.
const DEFAULT_STEPS: u64 = 10_000;

/// Seeds that find a bug in the core when its fix is reverted (with this
/// harness at [`DEFAULT_STEPS`]), kept as regression runs.
const PINNED: &[(u64, &str)] = &[
    (7, BOOTSTRAP_MEMBERSHIP),
    (18, BOOTSTRAP_MEMBERSHIP),
    (4, SNAPSHOT_MEMBERSHIP),
    (16, SNAPSHOT_MEMBERSHIP),
    (94000, UNKNOWN_LEADER),
    (64118, STALE_REPAIR),
    (27260, CONF_CHANGE_WHILE_DAMAGED),
    (1451, MATCHED_ANOTHER_LEADER),
    (121, STALE_NEEDS_VOUCHING),
];

const BOOTSTRAP_MEMBERSHIP: &str =
    "a new member rebuilt its membership from a log without the bootstrap one";
const SNAPSHOT_MEMBERSHIP: &str = "initial_state returned the membership of an older snapshot";
const STALE_REPAIR: &str = "a stale leader counted a repaired node that had lost its vote for a \
     newer leader, and committed what that leader's log contradicts";
const CONF_CHANGE_WHILE_DAMAGED: &str =
    "a membership change waiting in a leader's unpersisted log \
     committed while a node was damaged (harness: no losses then)";
const MATCHED_ANOTHER_LEADER: &str = "a recovering node counted what matched an earlier \
     leader's log toward the new leader's target";
const STALE_NEEDS_VOUCHING: &str = "with strangers no longer heard, a node that missed a \
     member's addition never heard that member lead (it must ask its own members about it)";
const UNKNOWN_LEADER: &str =
    "a far-behind voter ignored the stale heartbeats of a leader it did not know";

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

fn replay_command(seed: u64) -> String {
    let steps = match env_u64("RAFT_SIM_STEPS") {
        Some(n) if n != DEFAULT_STEPS => format!("RAFT_SIM_STEPS={n} "),
        _ => String::new(),
    };
    format!("{steps}RAFT_SIM_SEED={seed} cargo test --release --test sim -- --nocapture")
}

/// Runs one seed; a panic in the core counts as a failure of that seed.
fn run_seed(seed: u64, trace: bool) -> Result<Stats, String> {
    let steps = env_u64("RAFT_SIM_STEPS").unwrap_or(DEFAULT_STEPS);
    let mut sim = Sim::new(SimConfig::from_seed(seed, steps), trace);
    let out = catch_unwind(AssertUnwindSafe(|| sim.run()));
    let nodes = sim.cfg.nodes;
    match out {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(why)) => Err(format!("{nodes} nodes, step {}: {why}", sim.step)),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("{nodes} nodes, step {}: panic: {why}", sim.step))
        }
    }
}

fn failure_report(failures: &[(u64, String)]) -> String {
    let mut out = format!("{} seed(s) failed:\n", failures.len());
    for (seed, why) in failures {
        out += &format!(
            "  seed {seed}: {why}\n    replay: {}\n",
            replay_command(*seed)
        );
    }
    out
}

#[test]
fn simulated_clusters_stay_safe_and_live() {
    if let Some(seed) = env_u64("RAFT_SIM_SEED") {
        match run_seed(seed, true) {
            Ok(stats) => println!("seed {seed} passed: {stats:?}"),
            Err(why) => panic!(
                "seed {seed} failed: {why}\nreplay: {}",
                replay_command(seed)
            ),
        }
        return;
    }
    let seeds = env_u64("RAFT_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let from = env_u64("RAFT_SIM_FROM").unwrap_or(0);
    let start = Instant::now();
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for seed in from..from + seeds {
        match run_seed(seed, false) {
            Ok(stats) => total.add(&stats),
            Err(why) => {
                eprintln!(
                    "seed {seed} failed: {why}\n  replay: {}",
                    replay_command(seed)
                );
                failures.push((seed, why));
                if failures.len() >= 20 {
                    break;
                }
            }
        }
    }
    println!(
        "{seeds} seeds ({from}..{}) in {:.1} s: {} steps, {} leader terms, {} entries committed, \
         {} snapshots delivered, {} crashes, {} losses of state ({} recovered), {} partitions, \
         {} conf changes proposed, {} reads answered, {} ids vouched for, {:.1} ticks to \
         liveness on average ({} at most)",
        from + seeds,
        start.elapsed().as_secs_f64(),
        total.steps,
        total.leader_terms,
        total.committed,
        total.snapshots_sent,
        total.crashes,
        total.losses,
        total.recoveries,
        total.partitions,
        total.conf_changes,
        total.reads,
        total.vouched,
        total.liveness_ticks as f64 / seeds.max(1) as f64,
        total.max_liveness_ticks,
    );
    assert!(failures.is_empty(), "{}", failure_report(&failures));
}

#[test]
fn pinned_seeds_that_once_found_bugs() {
    let failures: Vec<(u64, String)> = PINNED
        .iter()
        .filter_map(|&(seed, _bug)| run_seed(seed, false).err().map(|why| (seed, why)))
        .collect();
    assert!(failures.is_empty(), "{}", failure_report(&failures));
}
