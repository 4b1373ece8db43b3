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
