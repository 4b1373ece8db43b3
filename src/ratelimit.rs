//! Rate-limited log lines: a condition that repeats (a peer refused every
//! few milliseconds, a flood of bad connections) logs at most one line per
//! second, with a count of the lines it held back. A log flood is a fault
//! too: it fills disks and hides the first, useful line.
//!
//! ```
//! raftnode::warn_every!("refused", "refused a peer: {}", "a reason");
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// At most one line per condition in this long.
pub const EVERY: Duration = Duration::from_secs(1);

/// Conditions remembered at most; older ones are forgotten first.
const MAX_KEYS: usize = 4096;

#[derive(Default)]
struct Limiter {
    /// Per condition: when it last logged, and lines held back since.
    last: HashMap<String, (Instant, u64)>,
}

fn limiter() -> &'static Mutex<Limiter> {
    static L: OnceLock<Mutex<Limiter>> = OnceLock::new();
    L.get_or_init(Mutex::default)
}

/// Whether a line for condition `key` may be logged now; if so, also how
/// many were suppressed since the last one.
pub fn allow(key: &str) -> Option<u64> {
    let now = Instant::now();
    let mut l = limiter().lock().unwrap_or_else(|e| e.into_inner());
    if l.last.len() >= MAX_KEYS && !l.last.contains_key(key) {
        l.last.retain(|_, (t, _)| now.duration_since(*t) < EVERY);
        if l.last.len() >= MAX_KEYS {
            return None;
        }
    }
    match l.last.get_mut(key) {
        Some((t, held)) if now.duration_since(*t) < EVERY => {
            *held += 1;
            None
        }
        Some((t, held)) => {
            let n = *held;
            *t = now;
            *held = 0;
            Some(n)
        }
        None => {
            l.last.insert(key.to_string(), (now, 0));
            Some(0)
        }
    }
}

/// `log::warn!`, at most once per second per condition `key`.
#[macro_export]
macro_rules! warn_every {
    ($key:expr, $($arg:tt)+) => {
        if let Some(held) = $crate::ratelimit::allow(&$key) {
            if held > 0 {
                log::warn!("{} ({} more like it)", format_args!($($arg)+), held);
            } else {
                log::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_per_condition() {
        assert_eq!(allow("test-a"), Some(0));
        assert_eq!(allow("test-a"), None);
        assert_eq!(allow("test-a"), None);
        assert_eq!(allow("test-b"), Some(0), "conditions are separate");
        // Age the condition instead of sleeping.
        limiter().lock().unwrap().last.get_mut("test-a").unwrap().0 -= EVERY;
        assert_eq!(allow("test-a"), Some(2), "the held-back lines are counted");
    }
}
