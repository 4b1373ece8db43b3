//! Slowing down token guessing: failed `AUTH` attempts, per client address.
//!
//! Every wrong token sets the address back: after its `n`-th failure in a
//! row, the address's next attempt is checked only [`FIRST_BACKOFF`] ×
//! 2^(n-1) later, at most [`MAX_BACKOFF`]; an attempt before then is refused
//! without looking at the token (so it tells nothing), and does not count
//! as a failure. Connections do not help: the table is per address, so one
//! address gets 7 checked guesses in its first 6.3 s, then one per
//! [`MAX_BACKOFF`] (17 in its first minute, 0.2 a second after that),
//! however many connections it opens. A right token clears
//! the address's entry, and an entry idle for [`FORGET_AFTER`] is dropped.
//!
//! IPv6 addresses count by their /64 prefix, which one host usually holds
//! whole. The table holds at most [`TRACKED`] addresses: a new one over the
//! bound replaces the one whose last failure is oldest, so a spray of
//! addresses cannot grow memory (it can only make the guard forget; each
//! address it uses still gets its own few guesses).
//!
//! The guard reads no clock: the caller passes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The wait after an address's first wrong token; it doubles with each.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two checked attempts of one address.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// An address with no failure for this long starts afresh.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses tracked at most.
pub const TRACKED: usize = 4096;

/// Which addresses count as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => Key::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Key::V4(u32::from(v4)),
                None => Key::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Wrong tokens in a row.
    failures: u32,
    /// No attempt is checked before this.
    until: Instant,
    /// The last failure.
    last: Instant,
}

/// What to do with an `AUTH` attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Check the token.
    Check,
    /// Refuse it unchecked: the address must wait this much longer.
    Wait(Duration),
}

/// Failed attempts per address; see the module docs.
#[derive(Debug, Default)]
pub struct AuthGuard {
    table: HashMap<Key, Entry>,
}

impl AuthGuard {
    /// Whether an attempt from `ip` is checked now.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admission {
        let key = Key::from(ip);
        match self.table.get(&key) {
            Some(e) if now.saturating_duration_since(e.last) >= FORGET_AFTER => {
                self.table.remove(&key);
                Admission::Check
            }
            Some(e) if now < e.until => Admission::Wait(e.until - now),
            _ => Admission::Check,
        }
    }

    /// A checked attempt from `ip` had the wrong token.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let key = Key::from(ip);
        if !self.table.contains_key(&key) && self.table.len() >= TRACKED {
            self.make_room(now);
        }
        let e = self.table.entry(key).or_insert(Entry {
            failures: 0,
            until: now,
            last: now,
        });
        e.failures = e.failures.saturating_add(1);
        let doublings = (e.failures - 1).min(16);
        e.until = now + (FIRST_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF);
        e.last = now;
    }

    /// A checked attempt from `ip` had the right token.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.table.remove(&Key::from(ip));
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    /// Drops the entries forgotten by now, or else the one whose last
    /// failure is oldest.
    fn make_room(&mut self, now: Instant) {
        self.table
            .retain(|_, e| now.saturating_duration_since(e.last) < FORGET_AFTER);
        if self.table.len() < TRACKED {
            return;
        }
        if let Some(oldest) = self
            .table
            .iter()
            .min_by_key(|(_, e)| e.last)
            .map(|(k, _)| *k)
        {
            self.table.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn each_failure_doubles_the_wait_up_to_the_cap_and_a_success_clears_it() {
        let mut g = AuthGuard::default();
        let ip = v4(0x7f00_0001);
        let t0 = Instant::now();
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert_eq!(g.admit(ip, now), Admission::Check);
            g.failed(ip, now);
            let Admission::Wait(w) = g.admit(ip, now) else {
                panic!("checked right after a failure");
            };
            waits.push(w.as_millis());
            now += w;
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(
            g.admit(ip, now - Duration::from_millis(1)),
            Admission::Wait(Duration::from_millis(1))
        );
        // Another address is not held back.
        assert_eq!(
            g.admit(v4(0x7f00_0002), now - Duration::from_millis(1)),
            Admission::Check
        );
        g.succeeded(ip);
        g.failed(ip, now);
        assert_eq!(
            g.admit(ip, now),
            Admission::Wait(FIRST_BACKOFF),
            "a success starts the count afresh"
        );
    }

    #[test]
    fn guesses_per_minute_from_one_address_are_few() {
        // An attacker that tries again the moment it may.
        let mut g = AuthGuard::default();
        let ip = v4(1);
        let t0 = Instant::now();
        let mut now = t0;
        let mut checked = 0;
        while now < t0 + Duration::from_secs(60) {
            match g.admit(ip, now) {
                Admission::Check => {
                    checked += 1;
                    g.failed(ip, now);
                }
                Admission::Wait(w) => now += w,
            }
        }
        assert_eq!(checked, 17, "7 in the first 6.3 s, then one per 5 s");
    }

    #[test]
    fn an_idle_address_is_forgotten() {
        let mut g = AuthGuard::default();
        let ip = v4(9);
        let t0 = Instant::now();
        for i in 0..10 {
            g.failed(ip, t0 + Duration::from_millis(i));
        }
        assert!(matches!(
            g.admit(ip, t0 + Duration::from_secs(6)),
            Admission::Check
        ));
        g.failed(ip, t0 + Duration::from_secs(6));
        assert!(matches!(
            g.admit(ip, t0 + Duration::from_secs(6)),
            Admission::Wait(_)
        ));
        assert_eq!(
            g.admit(ip, t0 + Duration::from_secs(6) + FORGET_AFTER),
            Admission::Check
        );
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn a_spray_of_addresses_stays_within_the_bound_and_drops_the_oldest() {
        let mut g = AuthGuard::default();
        let t0 = Instant::now();
        for n in 0..(3 * TRACKED as u32) {
            g.failed(v4(n), t0 + Duration::from_micros(n as u64));
            assert!(g.len() <= TRACKED);
        }
        assert_eq!(g.len(), TRACKED);
        let late = t0 + Duration::from_micros(3 * TRACKED as u64);
        assert_eq!(
            g.admit(v4(0), late),
            Admission::Check,
            "the oldest went first"
        );
        assert!(matches!(
            g.admit(v4(3 * TRACKED as u32 - 1), late),
            Admission::Wait(_)
        ));
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix_and_mapped_v4_as_v4() {
        let mut g = AuthGuard::default();
        let now = Instant::now();
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        g.failed(IpAddr::V6(a), now);
        assert!(matches!(g.admit(IpAddr::V6(b), now), Admission::Wait(_)));
        assert_eq!(g.admit(IpAddr::V6(other), now), Admission::Check);
        g.failed(v4(0x0a00_0001), now);
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        assert!(matches!(
            g.admit(IpAddr::V6(mapped), now),
            Admission::Wait(_)
        ));
    }
}
