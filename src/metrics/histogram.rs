//! A histogram for the hot path: a fixed array of bucket counters, each an
//! `AtomicU64` bumped with a relaxed add, plus the sum of the values.
//!
//! Values are whole numbers of a unit the histogram is made with
//! (nanoseconds for durations, entries for a batch size); the bounds are
//! given in the same unit and rendered in the base unit Prometheus wants
//! (seconds) by moving the decimal point, so `le` labels are exact
//! ("0.0001", never "0.00010000000000000002").
//!
//! Buckets hold the count of their own range; the cumulative counts of the
//! exposition format are summed at scrape. The `+Inf` bucket and `_count`
//! are the same sum, so they always agree; `_sum` is read apart and may
//! trail a concurrent observation by one value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::text::{self, Labels};

/// Upper bounds `start, start*2, ..., start*2^(N-1)`.
pub const fn doubling<const N: usize>(start: u64) -> [u64; N] {
    let mut b = [0u64; N];
    let mut i = 0;
    while i < N {
        b[i] = start << i;
        i += 1;
    }
    b
}

/// Durations from 100 µs to 3.3 s (in nanoseconds), doubling: fsyncs,
/// peer round trips.
pub static FAST_NS: [u64; 16] = doubling(100_000);
/// Durations from 100 µs to 6.6 s: client requests (which time out after
/// `--request-timeout-ms`, 5 s by default).
pub static REQUEST_NS: [u64; 17] = doubling(100_000);
/// Durations from 1 ms to 33 s: snapshots.
pub static SLOW_NS: [u64; 16] = doubling(1_000_000);
/// Counts from 1 to 4096, doubling: entries per fsync.
pub static BATCH: [u64; 13] = doubling(1);

/// How the values of a histogram are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds, rendered as seconds.
    Nanos,
    /// Plain counts.
    Count,
}

impl Unit {
    /// Decimal places to move when rendering.
    fn decimals(self) -> u32 {
        match self {
            Unit::Nanos => 9,
            Unit::Count => 0,
        }
    }
}

pub struct Histogram {
    bounds: &'static [u64],
    unit: Unit,
    /// One counter per bound, then the overflow (`+Inf` only).
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64], unit: Unit) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            unit,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one value (in the histogram's unit).
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Counts one duration (for a histogram in [`Unit::Nanos`]).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// How many values were observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the values observed (in the histogram's unit).
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Appends the `_bucket`, `_sum` and `_count` samples of `name` with
    /// `labels` (the family's HELP and TYPE lines are the caller's).
    pub fn render(&self, out: &mut String, name: &str, labels: Labels<'_>) {
        let decimals = self.unit.decimals();
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(&bound) => text::decimal(bound, decimals),
                None => "+Inf".to_string(),
            };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            text::sample(out, &bucket, &with_le, &cumulative.to_string());
        }
        let sum = text::decimal(self.sum(), decimals);
        text::sample(out, &format!("{name}_sum"), labels, &sum);
        text::sample(
            out,
            &format!("{name}_count"),
            labels,
            &cumulative.to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        static B: [u64; 3] = [1, 2, 4];
        let h = Histogram::new(&B, Unit::Count);
        for v in [0, 1, 2, 3, 4, 5, 1000] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", &[]);
        assert_eq!(
            out,
            "x_bucket{le=\"1\"} 2\n\
             x_bucket{le=\"2\"} 3\n\
             x_bucket{le=\"4\"} 5\n\
             x_bucket{le=\"+Inf\"} 7\n\
             x_sum 1015\n\
             x_count 7\n"
        );
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum(), 1015);
    }

    #[test]
    fn durations_render_in_seconds_with_exact_bounds() {
        let h = Histogram::new(&FAST_NS, Unit::Nanos);
        h.observe_duration(Duration::from_micros(150));
        h.observe_duration(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "d_seconds", &[("to", "2")]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "d_seconds_bucket{to=\"2\",le=\"0.0001\"} 0");
        assert_eq!(lines[1], "d_seconds_bucket{to=\"2\",le=\"0.0002\"} 1");
        assert_eq!(lines[15], "d_seconds_bucket{to=\"2\",le=\"3.2768\"} 1");
        assert_eq!(lines[16], "d_seconds_bucket{to=\"2\",le=\"+Inf\"} 2");
        assert_eq!(lines[17], "d_seconds_sum{to=\"2\"} 10.00015");
        assert_eq!(lines[18], "d_seconds_count{to=\"2\"} 2");
        assert_eq!(lines.len(), 19);
    }

    #[test]
    fn cumulative_counts_never_decrease() {
        let h = Histogram::new(&REQUEST_NS, Unit::Nanos);
        for i in 0..1000u64 {
            h.observe(i * i * 7919);
        }
        let mut out = String::new();
        h.render(&mut out, "r", &[]);
        let counts: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("r_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert_eq!(*counts.last().unwrap(), 1000);
    }
}
