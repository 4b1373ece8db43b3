//! What raftbench sends and how it reads the answers: the key and value
//! generator, the request lines, the reply classification and the per-thread
//! recorder that keeps the figures.
//!
//! Keys are `<prefix><base-62 number>`, zero-padded to exactly `--key-size`
//! bytes. With `--keyspace 0` the number comes from one counter shared by all
//! clients, so every key is new; otherwise it is drawn uniformly from
//! `[0, keyspace)`. Key `n` is the same bytes in both modes, so a unique-key
//! run of `n` operations writes exactly the keyspace a later `--keyspace n`
//! run reads (that is what `--prefill` does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::histogram::Histogram;

const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Error code for a connection that dropped (or could not be written) before
/// the reply arrived.
pub const CONN_DROPPED: &str = "CONN_DROPPED";
/// Error code for a failed connection attempt.
pub const CONNECT_FAILED: &str = "CONNECT_FAILED";
/// Error code for no reply within `--timeout` (the connection is then reset).
pub const CLIENT_TIMEOUT: &str = "CLIENT_TIMEOUT";
/// Error code for a reply line that does not fit the request.
pub const UNEXPECTED: &str = "UNEXPECTED_REPLY";

/// A seeded xorshift64* generator: one per client, so runs replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        // splitmix64 of (seed, stream) so neighbouring clients differ at once.
        let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
}

/// The request mix; shared read-only by all clients (plus one atomic).
pub struct Workload {
    prefix: Vec<u8>,
    /// Digits after the prefix.
    digits: usize,
    /// How many distinct keys `digits` base-62 digits can name (saturating).
    capacity: u64,
    value: Vec<u8>,
    /// Fraction of PUTs.
    ratio: f64,
    /// 0: unique keys from `next_unique`.
    keyspace: u64,
    next_unique: AtomicU64,
}

impl Workload {
    /// Checks that the keys fit: `needed` is how many distinct keys the run
    /// may use (for unique keys, an upper bound on the operations).
    pub fn new(
        prefix: &str,
        key_size: usize,
        value_size: usize,
        ratio: f64,
        keyspace: u64,
        needed: u64,
    ) -> Result<Workload, String> {
        if prefix.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err("--key-prefix must not contain whitespace".into());
        }
        if prefix.len() >= key_size {
            return Err(format!(
                "--key-size {key_size} leaves no room after the {}-byte --key-prefix",
                prefix.len()
            ));
        }
        let digits = key_size - prefix.len();
        let capacity = (0..digits)
            .try_fold(1u64, |c, _| c.checked_mul(62))
            .unwrap_or(u64::MAX);
        if capacity < needed {
            return Err(format!(
                "{digits} key digits name only {capacity} distinct keys, the run needs up to {needed}: \
                 raise --key-size or shorten --key-prefix"
            ));
        }
        // A value that shows its length when read back by hand: a repeating alphabet.
        let value = (0..value_size).map(|i| b'a' + (i % 26) as u8).collect();
        Ok(Workload {
            prefix: prefix.as_bytes().to_vec(),
            digits,
            capacity,
            value,
            ratio,
            keyspace,
            next_unique: AtomicU64::new(0),
        })
    }

    fn push_key(&self, n: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        let start = out.len();
        out.resize(start + self.digits, b'0');
        let mut n = n % self.capacity.max(1);
        for slot in out[start..].iter_mut().rev() {
            if n == 0 {
                break;
            }
            *slot = DIGITS[(n % 62) as usize];
            n /= 62;
        }
    }

    /// Appends the next request line (with its `\n`) to `out`.
    pub fn next_request(&self, rng: &mut Rng, out: &mut Vec<u8>) -> Op {
        let op = if self.ratio >= 1.0 || (self.ratio > 0.0 && rng.unit() < self.ratio) {
            Op::Put
        } else {
            Op::Get
        };
        let key = if self.keyspace == 0 {
            self.next_unique.fetch_add(1, Ordering::Relaxed)
        } else {
            rng.next() % self.keyspace
        };
        match op {
            Op::Put => {
                out.extend_from_slice(b"PUT ");
                self.push_key(key, out);
                out.push(b' ');
                out.extend_from_slice(&self.value);
            }
            Op::Get => {
                out.extend_from_slice(b"GET ");
                self.push_key(key, out);
            }
        }
        out.push(b'\n');
        op
    }
}

/// What one reply meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    Ok,
    NotFound,
    /// The error code: the server's (`TIMEOUT`, ...) or one of this module's.
    Error(&'a str),
}

/// Classifies one reply line (without its line end) to a request of kind `op`.
pub fn classify(op: Op, line: &[u8]) -> Outcome<'_> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(rest) = line.strip_prefix(b"ERR ") {
        let code = rest.split(|&b| b == b' ').next().unwrap_or(b"");
        return match std::str::from_utf8(code) {
            Ok(c) if !c.is_empty() => Outcome::Error(c),
            _ => Outcome::Error(UNEXPECTED),
        };
    }
    match op {
        Op::Put if line == b"OK" => Outcome::Ok,
        Op::Get if line.starts_with(b"VALUE ") => Outcome::Ok,
        Op::Get if line == b"NOT_FOUND" => Outcome::NotFound,
        _ => Outcome::Error(UNEXPECTED),
    }
}

/// The figures one thread gathers; merged at the end.
#[derive(Default)]
pub struct Recorder {
    /// Latency of successful measured operations, microseconds.
    pub latency: Histogram,
    pub puts: u64,
    pub gets: u64,
    /// GETs answered NOT_FOUND (also counted in `gets`).
    pub not_found: u64,
    /// Measured failures by code.
    pub errors: BTreeMap<String, u64>,
    /// Earliest intended start of a measured operation.
    pub first: Option<Instant>,
    /// Latest completion of a measured operation.
    pub last: Option<Instant>,
}

impl Recorder {
    /// Records one operation. `measured` was decided when it was issued
    /// (warmup and the end of the run); `intended` is when it should have
    /// been sent, which in `--rate` mode may be before it was.
    pub fn record(
        &mut self,
        measured: bool,
        op: Op,
        intended: Instant,
        done: Instant,
        outcome: Outcome<'_>,
    ) {
        if !measured {
            return;
        }
        self.first = Some(self.first.map_or(intended, |f| f.min(intended)));
        self.last = Some(self.last.map_or(done, |l| l.max(done)));
        match outcome {
            Outcome::Error(code) => self.error(code),
            ok => {
                let us = done.saturating_duration_since(intended).as_micros();
                self.latency.record(u64::try_from(us).unwrap_or(u64::MAX));
                match op {
                    Op::Put => self.puts += 1,
                    Op::Get => self.gets += 1,
                }
                if ok == Outcome::NotFound {
                    self.not_found += 1;
                }
            }
        }
    }

    /// Counts a failure that belongs to no operation (a failed reconnect).
    pub fn error(&mut self, code: &str) {
        match self.errors.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(code.to_owned(), 1);
            }
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latency.merge(&other.latency);
        self.puts += other.puts;
        self.gets += other.gets;
        self.not_found += other.not_found;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_insert(0) += n;
        }
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, other.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    pub fn ok_ops(&self) -> u64 {
        debug_assert_eq!(self.latency.count(), self.puts + self.gets);
        self.puts + self.gets
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(w: &Workload, rng: &mut Rng) -> (Op, String) {
        let mut out = Vec::new();
        let op = w.next_request(rng, &mut out);
        (op, String::from_utf8(out).unwrap())
    }

    #[test]
    fn unique_keys_are_padded_to_the_key_size_and_never_repeat() {
        let w = Workload::new("k", 8, 4, 1.0, 0, 1_000_000).unwrap();
        let mut rng = Rng::new(1, 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let (op, l) = line(&w, &mut rng);
            assert_eq!(op, Op::Put);
            let key = l.split(' ').nth(1).unwrap().to_owned();
            assert_eq!(key.len(), 8);
            assert!(key.starts_with('k'));
            assert!(seen.insert(key));
            assert!(l.ends_with(" abcd\n"), "{l:?}");
        }
        assert_eq!(line(&w, &mut rng).1, "PUT k00002bI abcd\n"); // key 10000
    }

    #[test]
    fn key_n_is_the_same_in_unique_and_keyspace_mode() {
        let unique = Workload::new("", 3, 0, 1.0, 0, 10).unwrap();
        let mut rng = Rng::new(7, 0);
        let written: Vec<String> = (0..50).map(|_| line(&unique, &mut rng).1).collect();
        let reads = Workload::new("", 3, 0, 0.0, 50, 50).unwrap();
        for _ in 0..200 {
            let (op, l) = line(&reads, &mut rng);
            assert_eq!(op, Op::Get);
            let key = l.trim_end().strip_prefix("GET ").unwrap();
            assert!(
                written.iter().any(|w| w == &format!("PUT {key} \n")),
                "{key}"
            );
        }
    }

    #[test]
    fn the_ratio_sets_the_put_fraction() {
        let w = Workload::new("", 8, 1, 0.25, 100, 100).unwrap();
        let mut rng = Rng::new(3, 3);
        let puts = (0..40_000)
            .filter(|_| line(&w, &mut rng).0 == Op::Put)
            .count();
        assert!((9_000..11_000).contains(&puts), "{puts}");
    }

    #[test]
    fn too_few_key_digits_are_refused() {
        assert!(Workload::new("abc", 3, 1, 1.0, 0, 1).is_err());
        assert!(Workload::new("", 2, 1, 1.0, 0, 62 * 62 + 1).is_err());
        assert!(Workload::new("", 2, 1, 1.0, 0, 62 * 62).is_ok());
        assert!(Workload::new("a b", 8, 1, 1.0, 0, 1).is_err());
    }

    #[test]
    fn replies_are_classified_by_request_kind() {
        assert_eq!(classify(Op::Put, b"OK"), Outcome::Ok);
        assert_eq!(classify(Op::Put, b"OK\r\n"), Outcome::Ok);
        assert_eq!(classify(Op::Get, b"VALUE abc"), Outcome::Ok);
        assert_eq!(classify(Op::Get, b"VALUE "), Outcome::Ok);
        assert_eq!(classify(Op::Get, b"NOT_FOUND"), Outcome::NotFound);
        assert_eq!(
            classify(Op::Put, b"ERR TIMEOUT no answer in 5s"),
            Outcome::Error("TIMEOUT")
        );
        assert_eq!(
            classify(Op::Get, b"ERR NO_LEADER x"),
            Outcome::Error("NO_LEADER")
        );
        assert_eq!(classify(Op::Put, b"VALUE x"), Outcome::Error(UNEXPECTED));
        assert_eq!(classify(Op::Get, b"OK"), Outcome::Error(UNEXPECTED));
        assert_eq!(classify(Op::Put, b"ERR "), Outcome::Error(UNEXPECTED));
        assert_eq!(classify(Op::Put, b""), Outcome::Error(UNEXPECTED));
    }

    #[test]
    fn errors_and_warmup_stay_out_of_the_latency_figures() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(3);
        let mut r = Recorder::default();
        r.record(false, Op::Put, t0, t1, Outcome::Ok);
        r.record(true, Op::Put, t0, t1, Outcome::Error("TIMEOUT"));
        r.record(true, Op::Get, t0, t1, Outcome::NotFound);
        assert_eq!(r.latency.count(), 1);
        assert_eq!(r.latency.max(), 3000);
        assert_eq!((r.puts, r.gets, r.not_found), (0, 1, 1));
        assert_eq!(r.errors.get("TIMEOUT"), Some(&1));
    }
}
