//! How the node thread sleeps and is woken.
//!
//! Every thread that hands the node thread work (the client I/O thread,
//! the peer readers, the ready thread, the transport's reports, a stop)
//! sends on a channel and then rings the node's [`Bell`]; the node thread
//! drains its channels with `try_recv` and parks when all are empty.
//!
//! Why not crossbeam's `select!`, which does the same job? A thread blocked
//! in `select!` is woken by the sender while the sender still holds the
//! channel's waker lock, and the first thing the woken thread does is take
//! that lock to unregister from every channel. On two cores it nearly
//! always arrives first and sleeps once more on the lock: measured on the
//! leader at 1 client, 1.1 extra futex sleeps and wake-ups per write on the
//! node thread alone, about a sixth of its context switches. A park token
//! has no lock: `unpark` is one atomic swap, plus one `futex` wake only if
//! the thread is asleep.
//!
//! No wake-up is lost: a ring between the node's last empty `try_recv` and
//! its `park` leaves the token set, and `park` then returns at once.

use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};

use crossbeam_channel::{SendError, Sender, TrySendError};

/// Wakes the node thread.
#[derive(Default)]
pub struct Bell {
    /// The node thread, once it runs; rings before that are not needed,
    /// since it looks at every channel before it first parks.
    thread: OnceLock<Thread>,
}

impl Bell {
    /// Makes the calling thread the one woken.
    pub fn attach(&self) {
        let _ = self.thread.set(thread::current());
    }

    /// A sender on `tx` that rings this bell.
    pub fn waking<T>(self: &Arc<Self>, tx: Sender<T>) -> Waking<T> {
        Waking::new(tx, self.clone())
    }

    /// Wakes the attached thread, or makes its next park return at once.
    pub fn ring(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// A sender to the node thread: every send rings its bell.
pub struct Waking<T> {
    tx: Sender<T>,
    bell: Arc<Bell>,
}

impl<T> Clone for Waking<T> {
    fn clone(&self) -> Self {
        Waking {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> Waking<T> {
    pub fn new(tx: Sender<T>, bell: Arc<Bell>) -> Waking<T> {
        Waking { tx, bell }
    }

    /// Sends (blocking while a bounded channel is full), then rings.
    pub fn send(&self, v: T) -> Result<(), SendError<T>> {
        let sent = self.tx.send(v);
        self.bell.ring();
        sent
    }

    /// Sends if there is room, then rings.
    pub fn try_send(&self, v: T) -> Result<(), TrySendError<T>> {
        let sent = self.tx.try_send(v);
        if sent.is_ok() {
            self.bell.ring();
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;
    use std::time::{Duration, Instant};

    #[test]
    fn a_send_wakes_a_parked_thread_at_once() {
        let bell = Arc::new(Bell::default());
        let (tx, rx) = unbounded::<u32>();
        let (attached_tx, attached_rx) = unbounded();
        let b = bell.clone();
        let waiter = thread::spawn(move || {
            b.attach();
            attached_tx.send(()).expect("test channel");
            let start = Instant::now();
            loop {
                if let Ok(v) = rx.try_recv() {
                    return (v, start.elapsed());
                }
                thread::park_timeout(Duration::from_secs(10));
            }
        });
        attached_rx.recv().expect("test channel");
        thread::sleep(Duration::from_millis(50));
        Waking::new(tx, bell).send(7).expect("receiver alive");
        let (v, waited) = waiter.join().expect("waiter");
        assert_eq!(v, 7);
        assert!(
            waited < Duration::from_secs(5),
            "woken only by the timeout: {waited:?}"
        );
    }

    #[test]
    fn a_ring_before_the_park_is_not_lost() {
        let bell = Arc::new(Bell::default());
        bell.attach();
        bell.ring();
        let start = Instant::now();
        thread::park_timeout(Duration::from_secs(10));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_full_channel_neither_sends_nor_rings_and_says_so() {
        let bell = Arc::new(Bell::default());
        let (tx, rx) = crossbeam_channel::bounded::<u32>(1);
        let w = Waking::new(tx, bell);
        w.try_send(1).expect("room for one");
        assert!(matches!(w.try_send(2), Err(TrySendError::Full(2))));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1]);
    }
}
