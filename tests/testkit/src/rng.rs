//! The tests' seeded generator: the core's SplitMix64
//! ([`raftnode::raft::Rng`], the one implementation in the workspace outside
//! `wal`) with the helpers tests draw from, so that a failing run replays
//! from the seed it prints.
//!
//! Seeds are transformed exactly as they were before this crate existed:
//! [`Rng::new`] xors the seed with SplitMix64's increment, as the fault
//! suite's generator always did, so seeds printed by earlier failures still
//! replay; `golden_values_of_old_seeds` below pins that. The simulation and
//! the malformed-message fuzzer seed the core's `Rng` directly and keep doing
//! so, for the same reason.
//!
//! `wal/tests/common` keeps its own ten-line SplitMix64: the `wal` crate is
//! a dependency of `raftnode`, and its tests should not build the whole node
//! (through this crate) for a generator.

use raftnode::raft;

/// SplitMix64's increment ("golden gamma").
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A seeded generator with the draws tests need.
#[derive(Clone, Debug)]
pub struct Rng(raft::Rng);

impl Rng {
    /// The generator of `seed` (xored with [`GAMMA`], see the module docs).
    pub fn new(seed: u64) -> Rng {
        Rng(raft::Rng::new(seed ^ GAMMA))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below(n.max(1))
    }

    /// Uniform in `lo..=hi` (`lo <= hi`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `xs` (not empty), uniformly.
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// SplitMix64's output function applied to `z`: a good 64-bit mixing
/// function, for deriving seeds from seeds and for hash chains. It is the
/// first output of the core's generator at state `z - GAMMA`, so that the
/// constants live in one place (`src/raft/rng.rs`).
pub fn mix(z: u64) -> u64 {
    raft::Rng::new(z.wrapping_sub(GAMMA)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values the fault suite's own generator (`tests/support/rng.rs`, now
    /// removed) and the simulation's `mix` gave, so pinned and printed seeds
    /// replay unchanged.
    #[test]
    fn golden_values_of_old_seeds() {
        let cases: [(u64, u64, u64, bool, u64, [u8; 5]); 4] = [
            (
                0,
                0x6e78_9e6a_a1b9_65f4,
                28,
                true,
                2,
                [234, 225, 60, 195, 166],
            ),
            (
                1,
                0xe99f_f867_dbf6_82c9,
                54,
                true,
                1,
                [51, 165, 100, 132, 28],
            ),
            (
                42,
                0x28ef_e333_b266_f103,
                47,
                false,
                2,
                [6, 93, 164, 213, 174],
            ),
            (
                1234567,
                0xfdbb_9a45_0124_4e9a,
                47,
                false,
                2,
                [66, 99, 83, 77, 64],
            ),
        ];
        for (seed, next, range, chance, pick, bytes) in cases {
            let mut r = Rng::new(seed);
            assert_eq!(r.next_u64(), next, "seed {seed}");
            assert_eq!(r.range(5, 60), range, "seed {seed}");
            assert_eq!(r.chance(50), chance, "seed {seed}");
            assert_eq!(r.pick(&[1, 2, 3]), pick, "seed {seed}");
            assert_eq!(r.bytes(5), bytes, "seed {seed}");
            assert_eq!(r.below(0), 0, "seed {seed}");
        }
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161d_100b_05e5);
        assert_eq!(mix(0x5eed), 0xa18f_67d4_db95_243f);
        assert_eq!(mix(u64::MAX), 0xb4d0_55fc_f2cb_bd7b);
    }
}
