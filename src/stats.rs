//! Group-commit figures: how many entries each fsync made durable, logged
//! every [`STATS_EVERY`] so the batching can be seen at work.

use std::time::{Duration, Instant};

use log::info;

/// How often the figures are logged.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Counts fsyncs and the entries they made durable.
pub struct FsyncStats {
    since: Instant,
    fsyncs: u64,
    entries: u64,
    readies: u64,
}

impl Default for FsyncStats {
    fn default() -> FsyncStats {
        FsyncStats {
            since: Instant::now(),
            fsyncs: 0,
            entries: 0,
            readies: 0,
        }
    }
}

impl FsyncStats {
    /// Records one Ready; `synced` when its write was fsynced.
    pub fn record(&mut self, synced: bool, entries: usize) {
        self.readies += 1;
        if synced {
            self.fsyncs += 1;
            self.entries += entries as u64;
        }
        let elapsed = self.since.elapsed();
        if elapsed >= STATS_EVERY {
            if self.fsyncs > 0 {
                info!(
                    "fsync stats: {} fsyncs, {} entries, {:.1} entries/fsync, {:.0} fsyncs/s over {:.0} s ({} readies)",
                    self.fsyncs,
                    self.entries,
                    self.entries as f64 / self.fsyncs as f64,
                    self.fsyncs as f64 / elapsed.as_secs_f64(),
                    elapsed.as_secs_f64(),
                    self.readies
                );
            }
            *self = FsyncStats::default();
        }
    }
}
