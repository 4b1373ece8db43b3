//! One fault run, start to verdict: start the cluster, run the workload
//! while a fault schedule plays, heal, check convergence, read everything
//! back, check the history, and print the summary line.

use std::time::{Duration, Instant};

use super::checker::{self, Budget, Report};
use super::faults::FaultCluster;
use super::history::{counts, History, Op};
use super::workload::{Workload, WorkloadConfig};

/// Node flags for fault runs: fast elections, short request timeouts, and
/// snapshots often enough to be exercised.
pub const FAULT_ARGS: &[&str] = &[
    "--tick-ms",
    "20",
    "--election-ticks",
    "10",
    "--request-timeout-ms",
    "1500",
    "--snapshot-entries",
    "2000",
];

/// [`FAULT_ARGS`], with `--snapshot-entries` taken from
/// `RAFTNODE_FAULT_SNAPSHOT_ENTRIES` if set (to stress snapshots and
/// compaction in exploratory runs).
pub fn fault_args() -> Vec<&'static str> {
    let mut args = FAULT_ARGS.to_vec();
    if let Ok(n) = std::env::var("RAFTNODE_FAULT_SNAPSHOT_ENTRIES") {
        if let Some(i) = args.iter().position(|a| *a == "--snapshot-entries") {
            args[i + 1] = Box::leak(n.into_boxed_str());
        }
    }
    args
}

/// Everything a finished run found.
pub struct Outcome {
    pub summary: String,
    pub report: Report,
    pub lost: Vec<String>,
    /// Convergence or agreement failures after healing.
    pub errors: Vec<String>,
    pub ops: Vec<Op>,
    pub fc: FaultCluster,
    pub ok_ops: usize,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.report.linearizable() && self.lost.is_empty() && self.errors.is_empty()
    }

    /// What went wrong, with the evidence: the checker's explanation of
    /// up to three keys, lost writes, errors, and the fault journal. The
    /// full history is written to a file named in the text.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.report.violations.iter().take(3) {
            out.push_str(&checker::explain(&self.ops, k, v));
        }
        for (k, v) in self.report.unknown.iter().take(3) {
            out.push_str(&format!("key {k}: search budget exhausted: {v:?}\n"));
        }
        for l in self.lost.iter().take(20) {
            out.push_str(l);
            out.push('\n');
        }
        for e in &self.errors {
            out.push_str(e);
            out.push('\n');
        }
        let path =
            std::env::temp_dir().join(format!("raftnode-fault-history-{}.txt", std::process::id()));
        let text: Vec<String> = self.ops.iter().map(|o| o.describe()).collect();
        if std::fs::write(&path, text.join("\n")).is_ok() {
            out.push_str(&format!("full history: {}\n", path.display()));
        }
        out.push_str("fault journal (last 40):\n");
        let j = &self.fc.journal;
        for l in &j[j.len().saturating_sub(40)..] {
            out.push_str(&format!("  {l}\n"));
        }
        out
    }
}

/// Runs the workload on a started cluster while `nemesis` injects faults,
/// then heals and checks. `label` names the run in the summary line.
pub fn run(
    mut fc: FaultCluster,
    wcfg: WorkloadConfig,
    label: &str,
    nemesis: impl FnOnce(&mut FaultCluster),
) -> Outcome {
    let t0 = Instant::now();
    let mut errors = Vec::new();
    if fc.cluster.wait_leader(Duration::from_secs(10)).is_none() {
        errors.push(format!("no first leader\n{}", fc.cluster.logs()));
    }
    let workload = Workload::start(wcfg, fc.client_addrs());
    nemesis(&mut fc);
    // The last disk fault's node must recover while the clients still run.
    fc.finish_disk_watch();
    let history: History = workload.stop();
    errors.append(&mut fc.failures);
    let applied = match fc.settle(Duration::from_secs(10)) {
        Ok(i) => i,
        Err(e) => {
            errors.push(format!("after healing: {e}"));
            0
        }
    };
    let mut keys: Vec<String> = history.ops().iter().map(|o| o.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let finals = match fc.final_reads(&keys, &history) {
        Ok(f) => Some(f),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let ops = history.ops();
    // A reply that is not an error and makes no sense for its request (a PUT
    // answered MISMATCH, say) was recorded as indeterminate; it is a bug.
    let nonsense: Vec<String> = ops
        .iter()
        .filter(|o| {
            (o.is_indeterminate()
                && !o.reply.starts_with("ERR ")
                && !o.reply.starts_with("connection:"))
                || o.reply.starts_with("ERR BAD_REQUEST")
        })
        .map(|o| format!("reply does not fit its request: {}", o.describe()))
        .collect();
    errors.extend(nonsense.into_iter().take(20));
    let check_t = Instant::now();
    let report = checker::check_history(&ops, Budget::default());
    let lost = finals
        .as_ref()
        .map(|f| checker::lost_writes(&ops, f))
        .unwrap_or_default();
    fc.count_snapshot_installs();
    let c = counts(&ops);
    let summary = format!(
        "{label} summary: nodes={} secs={:.1} ops ok={} failed={} indeterminate={} | {} | \
         keys={} max_ops_per_key={} unobserved_indeterminate_dropped={} check_secs={:.1} | \
         converged_applied={} | linearizable={} lost_acknowledged_writes={}",
        fc.cluster.nodes.len(),
        t0.elapsed().as_secs_f64(),
        c.ok,
        c.failed,
        c.indeterminate,
        fc.counts,
        report.keys,
        report.max_ops_per_key,
        report.dropped_indeterminate,
        check_t.elapsed().as_secs_f64(),
        applied,
        report.verdict(),
        lost.len()
    );
    // Straight to stderr, past the test harness's capture, so that the
    // summary line shows in CI logs of passing runs too; with each disk
    // fault's recovery before it.
    use std::io::Write as _;
    for d in &fc.disk_faults {
        let _ = writeln!(std::io::stderr(), "{label} {d}");
    }
    let _ = writeln!(std::io::stderr(), "{summary}");
    Outcome {
        summary,
        report,
        lost,
        errors,
        ops,
        fc,
        ok_ops: c.ok,
    }
}
