//! A log-linear latency histogram in the style of HdrHistogram.
//!
//! Values are unsigned integers (raftbench records microseconds). Values below
//! [`SUB_BUCKETS`] (256) get a counter each and are exact. Above that, every
//! power-of-two range `[2^k, 2^(k+1))` is split into 128 equal sub-buckets, so a
//! recorded value is known to within 1/128 of itself: better than two
//! significant decimal digits (under 0.8 % relative error) everywhere in range.
//!
//! The counter index of a value `v >= 256` is `shift * 128 + (v >> shift)`,
//! where `shift = msb(v) - 7` puts `v >> shift` in `[128, 256)`; the ranges
//! line up with the exact counters below 256, so the index is continuous.
//!
//! The range is 0 to [`MAX_TRACKABLE`] (2^32 - 1, 71 minutes in microseconds),
//! which covers microsecond to minute latencies with room to spare. A larger
//! value is counted in the top bucket (`saturated` says how many were); the
//! exact minimum and maximum are kept beside the counters.
//!
//! Percentiles follow the usual nearest-rank definition: the value at
//! percentile `p` is the smallest recorded value `v` such that at least
//! `ceil(p/100 * count)` values are `<= v`. The histogram answers with the
//! highest value of that value's bucket, clamped to the exact min and max,
//! so it never reports less than the true percentile.
//!
//! What it does not do: concurrent recording (each thread keeps its own and
//! they are merged at the end), auto-resizing, or floating-point values.

/// Number of exact counters at the bottom; also twice the sub-buckets per
/// power of two above them.
pub const SUB_BUCKETS: u64 = 256;
const HALF: u64 = SUB_BUCKETS / 2;
const HALF_BITS: u32 = 7;

/// The largest value counted in its own bucket.
pub const MAX_TRACKABLE: u64 = u32::MAX as u64;

/// Number of counters needed to reach [`MAX_TRACKABLE`].
const COUNTERS: usize = index_of(MAX_TRACKABLE) + 1;

/// The counter index of `v` (`v <= MAX_TRACKABLE`).
const fn index_of(v: u64) -> usize {
    if v < SUB_BUCKETS {
        v as usize
    } else {
        let msb = 63 - v.leading_zeros();
        let shift = msb - HALF_BITS;
        (shift as u64 * HALF + (v >> shift)) as usize
    }
}

/// The lowest and highest value that land in counter `i`.
fn bounds_of(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB_BUCKETS {
        (i, i)
    } else {
        let shift = i / HALF - 1;
        let sub = i % HALF + HALF;
        (sub << shift, ((sub + 1) << shift) - 1)
    }
}

/// A histogram of `u64` values; see the module documentation.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    /// Sum of all values, for the mean (saturating; u128 cannot overflow here).
    sum: u128,
    min: u64,
    max: u64,
    saturated: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; COUNTERS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
            saturated: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        let i = if v > MAX_TRACKABLE {
            self.saturated += 1;
            COUNTERS - 1
        } else {
            index_of(v)
        };
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.saturated += other.saturated;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The exact smallest value, 0 when empty.
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// The exact largest value, 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// How many values were above [`MAX_TRACKABLE`].
    pub fn saturated(&self) -> u64 {
        self.saturated
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at percentile `p` (0 to 100), 0 when empty; see the module
    /// documentation for the definition and the error bound.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let p = p.clamp(0.0, 100.0);
        let rank = ((p / 100.0) * self.count as f64).ceil() as u64;
        let rank = rank.clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                if i == COUNTERS - 1 {
                    // The top counter also holds the saturated values.
                    return self.max;
                }
                let (_, hi) = bounds_of(i);
                return hi.clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator so the tests need no crate and replay exactly.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn exact_percentile(sorted: &[u64], p: f64) -> u64 {
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    /// The histogram answer is never below the true percentile and at most
    /// 1/128 (plus one unit, for the exact range) above it.
    fn check_against_exact(values: &[u64]) {
        let mut h = Histogram::new();
        for &v in values {
            h.record(v);
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        for p in [0.0, 1.0, 10.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0] {
            let exact = exact_percentile(&sorted, p);
            let got = h.percentile(p);
            assert!(got >= exact, "p{p}: got {got} below exact {exact}");
            let bound = exact + exact / 128 + 1;
            assert!(
                got <= bound,
                "p{p}: got {got}, exact {exact}, bound {bound}"
            );
        }
        assert_eq!(h.min(), sorted[0]);
        assert_eq!(h.max(), *sorted.last().unwrap());
        assert_eq!(h.count(), values.len() as u64);
    }

    #[test]
    fn index_is_continuous_and_bounds_invert_it() {
        let mut prev_hi = None;
        for i in 0..COUNTERS {
            let (lo, hi) = bounds_of(i);
            assert!(lo <= hi);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "gap before counter {i}");
            }
            assert_eq!(index_of(lo), i);
            assert_eq!(index_of(hi), i);
            prev_hi = Some(hi);
        }
        assert_eq!(prev_hi, Some(MAX_TRACKABLE));
    }

    #[test]
    fn every_bucket_is_narrower_than_one_128th_of_its_values() {
        for i in SUB_BUCKETS as usize..COUNTERS {
            let (lo, hi) = bounds_of(i);
            assert!((hi - lo + 1) * 128 <= lo, "counter {i}: [{lo}, {hi}]");
        }
    }

    #[test]
    fn small_values_are_exact() {
        let values: Vec<u64> = (0..256).collect();
        let mut h = Histogram::new();
        for &v in &values {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 127);
        assert_eq!(h.percentile(100.0), 255);
        assert_eq!(h.percentile(0.0), 0);
    }

    #[test]
    fn uniform_microseconds_to_a_minute() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let values: Vec<u64> = (0..200_000).map(|_| 1 + r.next() % 60_000_000).collect();
        check_against_exact(&values);
    }

    #[test]
    fn log_uniform_latencies() {
        // Spread evenly over the orders of magnitude, as latencies are.
        let mut r = Rng(12345);
        let values: Vec<u64> = (0..200_000)
            .map(|_| 10f64.powf(r.unit() * 7.8) as u64)
            .collect();
        check_against_exact(&values);
    }

    #[test]
    fn heavy_tail_of_rare_stalls() {
        // Mostly around 2 ms, one in a thousand stalls of ~1 s: p99.9 must see them.
        let mut r = Rng(777);
        let values: Vec<u64> = (0..100_000)
            .map(|_| {
                if r.next().is_multiple_of(1000) {
                    900_000 + r.next() % 200_000
                } else {
                    1_500 + r.next() % 1_000
                }
            })
            .collect();
        check_against_exact(&values);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut r = Rng(42);
        let values: Vec<u64> = (0..50_000).map(|_| r.next() % 5_000_000).collect();
        let mut whole = Histogram::new();
        let mut parts = [Histogram::new(), Histogram::new(), Histogram::new()];
        for (i, &v) in values.iter().enumerate() {
            whole.record(v);
            parts[i % 3].record(v);
        }
        let mut merged = Histogram::new();
        for p in &parts {
            merged.merge(p);
        }
        for p in [50.0, 90.0, 99.0, 99.9, 100.0] {
            assert_eq!(merged.percentile(p), whole.percentile(p));
        }
        assert_eq!(merged.count(), whole.count());
        assert_eq!(merged.min(), whole.min());
        assert!((merged.mean() - whole.mean()).abs() < 1e-6);
    }

    #[test]
    fn values_beyond_the_range_saturate_but_keep_the_exact_max() {
        let mut h = Histogram::new();
        h.record(10);
        h.record(u64::MAX);
        assert_eq!(h.saturated(), 1);
        assert_eq!(h.max(), u64::MAX);
        assert_eq!(h.percentile(100.0), u64::MAX);
        assert_eq!(h.percentile(50.0), 10);
    }

    #[test]
    fn empty_histogram_answers_zero() {
        let h = Histogram::new();
        assert_eq!(h.percentile(99.0), 0);
        assert_eq!(h.min(), 0);
        assert_eq!(h.max(), 0);
        assert_eq!(h.mean(), 0.0);
    }
}
