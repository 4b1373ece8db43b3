//! CPU time and memory of other processes, read from Linux `/proc`.
//!
//! CPU seconds are `utime + stime` of `/proc/<pid>/stat` (fields 14 and 15,
//! all threads of the process together) divided by the clock tick rate; RSS is
//! `VmRSS` of `/proc/<pid>/status`. Context switches are the sum of
//! `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` over every
//! thread in `/proc/<pid>/task/*/status` (the process's own `status` counts
//! its main thread only); a thread that exits between two samples takes its
//! switches with it, so the difference is a lower bound when threads come and
//! go. Reading can fail (the process exited, or this is not Linux): the
//! caller gets `None` and prints a dash.

use std::fs;

/// Clock ticks per second for `/proc/<pid>/stat`. `sysconf(_SC_CLK_TCK)` is
/// 100 on every Linux architecture raftbench will meet; `getconf` confirms it
/// when available (no libc crate in the dependency set).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// One reading of one process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Voluntary and involuntary context switches of all live threads.
    pub ctx_switches: u64,
}

/// `pid` may be `"self"`.
pub fn sample(pid: &str) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: split after the last ')'. Field 3 is then index 0.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Sample {
        cpu_ticks: utime + stime,
        rss_kib,
        ctx_switches: ctx_switches(pid),
    })
}

fn ctx_switches(pid: &str) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue; // the thread exited while we listed them
        };
        for line in status.lines() {
            let value = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
            if let Some(n) = value.and_then(|v| v.trim().parse::<u64>().ok()) {
                total += n;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample("self").expect("/proc/self is readable on Linux");
        assert!(s.rss_kib > 0);
        // A sleep blocks the thread, which is one voluntary switch at least.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = sample("self").expect("readable");
        assert!(later.ctx_switches > s.ctx_switches, "{s:?} then {later:?}");
    }

    #[test]
    fn a_missing_process_is_none() {
        assert!(sample("999999999").is_none());
    }
}
