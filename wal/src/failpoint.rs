//! Named crash points for the crate's own crash tests.
//!
//! A crash of the process at any instant leaves on disk exactly what was
//! written before it (the page cache survives `kill -9`). The unit tests
//! simulate such a crash by arming a named point: the operation returns an
//! error right there, the test drops the `Wal` without any further write, and
//! reopens the directory. In non-test builds [`hit`] compiles to nothing.
//!
//! Points are armed per thread, so tests running in parallel do not see each
//! other's points, and the background preallocation thread never fails.

use crate::Error;

#[cfg(test)]
thread_local! {
    static ARMED: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Arms `name` on this thread: the next [`hit`] of that name fails (once).
#[cfg(test)]
pub(crate) fn arm(name: &'static str) {
    ARMED.with(|a| a.set(Some(name)));
}

/// Fails with an injected I/O error if `name` is armed on this thread.
#[cfg(test)]
pub(crate) fn hit(name: &'static str) -> Result<(), Error> {
    if ARMED.with(|a| a.get()) == Some(name) {
        ARMED.with(|a| a.set(None));
        return Err(Error::Io {
            path: std::path::PathBuf::from("<failpoint>"),
            op: name,
            source: std::io::Error::other("injected crash"),
        });
    }
    Ok(())
}

/// Does nothing outside the crate's own tests.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn hit(_name: &'static str) -> Result<(), Error> {
    Ok(())
}

/// Process-level crash points for the `failpoints` build (tests only).
///
/// With the cargo feature `failpoints`, [`crash_point`] counts the hits of
/// each named point and calls `std::process::abort` on the configured hit,
/// after printing one line to stderr naming the point and what it was doing
/// (`info`), so that a test can find, say, the byte range of the write whose
/// fdatasync never ran. Points are configured by the environment variable
/// `RAFTNODE_FAILPOINTS`, a comma-separated list of `name:N` (abort on the
/// N-th hit, N >= 1), read once. Without the feature the function is empty
/// and inlined away, and `info` is never called.
#[cfg(feature = "failpoints")]
pub mod crash {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// The environment variable that arms crash points.
    pub const ENV: &str = "RAFTNODE_FAILPOINTS";

    fn armed() -> &'static HashMap<String, (u64, AtomicU64)> {
        static ARMED: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();
        ARMED.get_or_init(|| {
            let spec = std::env::var(ENV).unwrap_or_default();
            spec.split(',')
                .filter_map(|item| {
                    let (name, n) = item.trim().split_once(':')?;
                    let n: u64 = n.trim().parse().ok().filter(|&n| n >= 1)?;
                    Some((name.trim().to_string(), (n, AtomicU64::new(0))))
                })
                .collect()
        })
    }

    /// The hit number if this is the configured hit of `name`.
    fn fires(name: &str) -> Option<u64> {
        let (at, hits) = armed().get(name)?;
        (hits.fetch_add(1, Ordering::SeqCst) + 1 == *at).then_some(*at)
    }

    /// Aborts the process if this is the configured hit of `name`.
    pub fn crash_point(name: &str, info: impl FnOnce() -> String) {
        if let Some(at) = fires(name) {
            eprintln!("raftnode: failpoint {name} fired at hit {at}: {}", info());
            std::process::abort();
        }
    }

    /// True on the configured hit of `name`: the caller then fails the
    /// operation as if the disk had returned an error.
    pub fn error_point(name: &str) -> bool {
        fires(name).is_some()
    }
}

/// Without the `failpoints` feature: nothing.
#[cfg(not(feature = "failpoints"))]
pub mod crash {
    /// Does nothing; see the `failpoints` build.
    #[inline(always)]
    pub fn crash_point(_name: &str, _info: impl FnOnce() -> String) {}

    /// Never fires; see the `failpoints` build.
    #[inline(always)]
    pub fn error_point(_name: &str) -> bool {
        false
    }
}
