//! The group-commit figures in the log: every [`EVERY`], how many fsyncs
//! the WAL did and how many entries each made durable, from the same
//! counts `raftnode_disk_wal_entries_per_fsync` exposes. `bin/bench.sh`
//! reads the `entries/fsync` figure from this line.

use std::time::{Duration, Instant};

use log::info;

use super::DiskMetrics;

/// How often the figures are logged.
const EVERY: Duration = Duration::from_secs(10);

/// Where the last logged interval ended.
pub struct FsyncLog {
    since: Instant,
    fsyncs: u64,
    entries: u64,
    readies: u64,
}

impl FsyncLog {
    pub fn new(disk: &DiskMetrics) -> FsyncLog {
        let (fsyncs, entries) = disk.fsync_totals();
        FsyncLog {
            since: Instant::now(),
            fsyncs,
            entries,
            readies: 0,
        }
    }

    /// Counts a Ready that wrote to the WAL, and logs the interval's
    /// figures when it is over. Only writes end an interval, so a period
    /// without any (reads only) logs nothing.
    pub fn saved(&mut self, disk: &DiskMetrics) {
        self.readies += 1;
        let elapsed = self.since.elapsed();
        if elapsed < EVERY {
            return;
        }
        let (fsyncs, entries) = disk.fsync_totals();
        let (df, de) = (fsyncs - self.fsyncs, entries - self.entries);
        if df > 0 {
            info!(
                "fsync stats: {df} fsyncs, {de} entries, {:.1} entries/fsync, {:.0} fsyncs/s over {:.0} s ({} readies)",
                de as f64 / df as f64,
                df as f64 / elapsed.as_secs_f64(),
                elapsed.as_secs_f64(),
                self.readies
            );
        }
        *self = FsyncLog::new(disk);
    }
}
